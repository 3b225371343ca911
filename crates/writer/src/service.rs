//! The writer service: consumes partial aggregates and inserts them into ClickHouse in
//! batches, exactly once.
//!
//! - One INSERT into one table per batch (atomic); derived tables follow by materialized views.
//! - Before inserting, records at or below the stored watermark of their (aggregates partition,
//!   source partition) are dropped: replays from the grouper or from this consumer's own
//!   restart are recognised (see [`tracefold_store::aggregates`]).
//! - Offsets are committed only after ClickHouse acknowledged the insert.
//! - When an insert fails its outcome is unknown: the partitions are paused, and after a
//!   backoff the watermarks are read again from ClickHouse and the batch is filtered anew.
//! - Every request to ClickHouse is bounded by `writer.insert_timeout_ms` (a server that
//!   accepts connections and never answers fails it, as a refused connection does).
//! - Inserts are pipelined: a batch's INSERT runs on the writer's runtime thread while the
//!   loop reads and decodes the next batch; at most one INSERT is in flight, and the next
//!   batch is filtered and inserted only once the one before has been stored and committed.

use crate::batch::Batch;
use crate::config::Config;
use crate::metrics as m;
use anyhow::Context as _;
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Message};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tracefold_model::Reason;
use tracefold_runtime::consumer::{ConsumerRuntime, Ctx, Step, Strategy};
use tracefold_runtime::kafka::DlqRecord;
use tracefold_runtime::service::wait_bounded;
use tracefold_runtime::telemetry::Health;
use tracefold_runtime::Shutdown;
use tracefold_store::aggregates::{load_watermarks, Watermarks};
use tracefold_store::rows::AggregateRow;

/// The state of the writer loop.
struct Writer<'a> {
    cfg: &'a Config,
    client: tracefold_store::Client,
    rt: tokio::runtime::Runtime,
    /// Watermarks per aggregates partition; absent means "read from ClickHouse first".
    watermarks: HashMap<i32, Watermarks>,
    /// The records read since the last INSERT began (decoded into one arena, [`Batch`]).
    pending: Batch,
    /// The buffers of the batch stored last, cleared, for the next one: a batch's decoding
    /// then allocates nothing once the buffers have grown to a batch's size.
    spare: Option<Batch>,
    oldest: Option<Instant>,
    /// Next offset to commit per partition, once the pending batch is stored.
    next_offsets: HashMap<i32, i64>,
    /// The server supports `insert_deduplication_token` (22+): a second guard against a
    /// retried insert whose first try did land.
    dedup_tokens: bool,
    /// While inserts fail: the delay before the next try (doubles up to `retry_max_ms`).
    retry_delay: Option<Duration>,
    /// The batch whose INSERT runs now (see [`Writer::settle`]).
    in_flight: Option<InFlight>,
    /// Rows of the batch whose INSERT failed last (for the log line of the failure).
    failed_rows: Option<usize>,
    /// The rows (aggregates partition and offset) the INSERT that failed last was to store,
    /// until the next filter, against watermarks read afresh, tells how many of them it had
    /// stored all the same (not the batch's other copies: those were never part of it).
    failed_rows_sent: HashSet<(i32, i64)>,
    /// The INSERT task ended abnormally (a panic): its batch and offsets are gone, so the loop
    /// must end before anything later is committed (the restart reads them again).
    task_died: Option<String>,
}

/// The INSERT task ended abnormally: the loop ends (see [`Writer::task_died`]).
#[derive(Debug, thiserror::Error)]
#[error("the insert task ended abnormally ({0}); its rows were not given back: stopping, so that nothing past them is committed (the restart reads them again)")]
struct InsertTaskDied(String);

/// A batch being inserted: its rows (given back when the INSERT ends, so that a failed one
/// can be tried again), the offsets to commit and the watermarks to keep once it is stored.
struct InFlight {
    task: tokio::task::JoinHandle<(Batch, Vec<usize>, anyhow::Result<()>)>,
    offsets: HashMap<i32, i64>,
    watermarks: HashMap<i32, Watermarks>,
    rows: usize,
    duplicates: usize,
    started: Instant,
}

/// Runs the writer until `shutdown` fires, then stores what it holds and commits.
/// Blocking: call it from a dedicated thread (it runs its own small async runtime).
///
/// # Errors
/// Kafka fatal errors; ClickHouse errors are retried, not returned.
pub fn run(cfg: &Config, shutdown: &Shutdown, health: &Health) -> anyhow::Result<()> {
    tracing::info!(topic = %cfg.topics.aggregates, group = %cfg.writer.group_id, consumers = cfg.writer.consumers.max(1), "writer started");
    // The outcomes consumer runs beside the aggregates loops, in its own thread and group; any
    // loop ending ends the others (a failed one makes the process exit non-zero and be
    // restarted). Their health is part of the writer's: /healthz and the watchdog see a stall
    // of any loop.
    let outcomes_health = health.child("writer-outcomes");
    let rankings_health = health.child("writer-rankings");
    let extra: Vec<Health> = (1..cfg.writer.consumers.max(1)).map(|i| health.child(&format!("writer-{i}"))).collect();
    // Named, so that CPU profiles tell them from the main loop (`bench-writer`).
    let mut others: Vec<tracefold_runtime::service::Beside<'_>> = vec![(
        "writer-outcomes".into(),
        &outcomes_health,
        Box::new(|| crate::outcomes::run(cfg, shutdown, &outcomes_health).context("outcomes consumer")),
    )];
    for (i, h) in extra.iter().enumerate() {
        others.push((format!("writer-loop-{}", i + 1), h, Box::new(move || run_consumer(cfg, shutdown, h))));
    }
    // The precomputed rankings (`[rankings]`), off the insert path: a failed computation is
    // retried inside the loop, which ends only at shutdown.
    if cfg.rankings.refresh_seconds > 0 {
        others.push((
            "writer-rankings".into(),
            &rankings_health,
            Box::new(|| crate::rankings::run(cfg, shutdown, &rankings_health)),
        ));
    } else {
        rankings_health.set_stopped();
    }
    let result = tracefold_runtime::service::run_loops(shutdown, others, || run_consumer(cfg, shutdown, health));
    tracing::info!("writer stopped");
    result
}

/// One consumer loop of the aggregates topic: reads, decodes and inserts its partitions'
/// batches until `shutdown` fires, then stores what it holds and commits.
fn run_consumer(cfg: &Config, shutdown: &Shutdown, health: &Health) -> anyhow::Result<()> {
    let (runtime, rt, client) =
        start_consumer(cfg, &cfg.writer.group_id, &cfg.topics.aggregates, m::EVENTS_LOST_TOTAL)?;
    let mut w = Writer {
        cfg,
        client,
        rt,
        watermarks: HashMap::new(),
        pending: Batch::default(),
        spare: None,
        oldest: None,
        next_offsets: HashMap::new(),
        dedup_tokens: false,
        retry_delay: None,
        in_flight: None,
        failed_rows: None,
        failed_rows_sent: HashSet::new(),
        task_died: None,
    };
    // Bounded as every request of the loop (a server that accepts and never answers would hold
    // the start here for ever), beating meanwhile; a stop ends the start.
    let timeout = Duration::from_millis(cfg.writer.insert_timeout_ms);
    let version = tracefold_store::client::server_version(&w.client);
    w.dedup_tokens = match wait_bounded(&w.rt, "ClickHouse", timeout, Some(shutdown), &|| health.beat(), version) {
        Ok(Some(v)) => tracefold_store::client::major_version(&v) >= 22,
        Ok(None) => return Ok(()),
        Err(e) => {
            let error = format!("{e:#}");
            tracing::warn!(%error, "cannot read the ClickHouse version; inserts go without deduplication tokens");
            false
        }
    };
    runtime.run(&mut w, shutdown, health)
}

/// What each of the writer's loops starts from: a consumer of `topic` in `group` (losses
/// counted in `lost_metric`, malformed records to the DLQ, topics checked), a small async
/// runtime and a ClickHouse client.
pub(crate) fn start_consumer(
    cfg: &Config,
    group: &str,
    topic: &str,
    lost_metric: &'static str,
) -> anyhow::Result<(ConsumerRuntime, tokio::runtime::Runtime, tracefold_store::Client)> {
    let runtime = ConsumerRuntime::new(&cfg.kafka, group, topic)?
        .with_lost_metric(lost_metric)
        .with_dlq(&cfg.kafka, &cfg.topics.dlq)?;
    tracefold_runtime::kafka::check_topics(
        runtime.consumer().client(),
        &[topic, &cfg.topics.dlq],
        Duration::from_secs(10),
    )?;
    // One worker thread: an INSERT runs there while the consumer loop reads the next batch.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("{group}-io"))
        .enable_all()
        .build()?;
    let client = tracefold_store::client::database_client(&cfg.clickhouse)?;
    Ok((runtime, rt, client))
}

impl Strategy for Writer<'_> {
    fn on_assign(&mut self, _: &mut Ctx<'_>, partitions: &[i32]) -> anyhow::Result<()> {
        for p in partitions {
            self.watermarks.remove(p);
        }
        Ok(())
    }

    fn on_revoke(&mut self, cx: &mut Ctx<'_>, partitions: &[i32]) {
        // The INSERT in flight ends first (stored and committed where the group still lets
        // us, or given back to `pending` when it failed).
        if let Err(e) = self.settle(cx, true) {
            if e.is::<InsertTaskDied>() {
                // `task_died` ends the loop at its next tick, before any commit.
                tracing::error!(error = %format!("{e:#}"), "insert task ended abnormally while partitions were revoked");
                return;
            }
            let rows = self.failed_rows.take().unwrap_or(0);
            metrics::counter!(m::INSERTS_TOTAL, "outcome" => "error").increment(1);
            tracing::warn!(error = %format!("{e:#}"), rows, "insert failed while partitions were revoked; what is still ours is tried again");
            self.watermarks.clear();
        }
        // Not stored, not committed: the next owner reads them again.
        self.pending.retain(|p| !partitions.contains(&p));
        for p in partitions {
            self.watermarks.remove(p);
            self.next_offsets.remove(p);
        }
        if self.pending.is_empty() {
            self.oldest = None;
        }
    }

    fn on_message(&mut self, cx: &mut Ctx<'_>, msg: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        let (p, o) = (msg.partition(), msg.offset());
        let payload = msg.payload().unwrap_or(&[]);
        match self.pending.push_plausible(payload, p, o) {
            Ok(()) => {
                self.oldest.get_or_insert_with(Instant::now);
            }
            Err(e) => self.to_dlq(cx, payload, p, o, &format!("malformed aggregate: {e}"))?,
        }
        self.next_offsets.insert(p, o + 1);
        Ok(())
    }

    fn on_tick(&mut self, cx: &mut Ctx<'_>) -> anyhow::Result<Step> {
        if let Some(e) = self.task_died.take() {
            return Err(InsertTaskDied(e).into());
        }
        if self.in_flight.as_ref().is_some_and(|f| f.task.is_finished()) {
            if let Err(e) = self.settle(cx, false) {
                return self.failed(e);
            }
        }
        let max_age = Duration::from_millis(self.cfg.writer.batch_max_age_ms);
        let full = self.pending.len() >= self.cfg.writer.batch_max_rows
            || self.pending.bytes() >= self.cfg.writer.batch_max_bytes;
        let old = self.oldest.is_some_and(|t| t.elapsed() >= max_age);
        let retrying = self.retry_delay.is_some();
        if !(full || old || retrying || (self.pending.is_empty() && !self.next_offsets.is_empty())) {
            return Ok(Step::Continue);
        }
        // While retrying, the next try waits for its outcome: the backoff applies to it.
        match self.try_flush(cx, retrying) {
            Ok(()) => {
                if self.in_flight.is_none() && self.retry_delay.take().is_some() {
                    tracing::info!("ClickHouse is back; resumed");
                }
                Ok(Step::Continue)
            }
            Err(e) => self.failed(e),
        }
    }

    fn on_shutdown(&mut self, cx: &mut Ctx<'_>) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        // Store what is held and commit it; a failed commit is tried again until the deadline.
        while (!self.next_offsets.is_empty() || self.in_flight.is_some() || cx.commits_pending())
            && Instant::now() < deadline
        {
            cx.beat();
            if let Some(e) = self.task_died.take() {
                return Err(InsertTaskDied(e).into());
            }
            let failed = match self.try_flush(cx, true) {
                Err(e) if e.is::<InsertTaskDied>() => return Err(e),
                r => r.is_err(),
            };
            if failed {
                // The outcome is unknown: read the watermarks again before the next try.
                self.watermarks.clear();
            }
            if failed || cx.commits_pending() {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }
}

impl Writer<'_> {
    /// A failed INSERT: counted and logged, the watermarks forgotten (its outcome is unknown:
    /// they are read again before the next try), and the loop told to back off. An INSERT task
    /// that ended abnormally ends the loop instead.
    fn failed(&mut self, e: anyhow::Error) -> anyhow::Result<Step> {
        if e.is::<InsertTaskDied>() {
            return Err(e);
        }
        let delay = match self.retry_delay {
            None => Duration::from_millis(self.cfg.writer.retry_initial_ms),
            Some(d) => (d * 2).min(Duration::from_millis(self.cfg.writer.retry_max_ms)),
        };
        self.retry_delay = Some(delay);
        metrics::counter!(m::INSERTS_TOTAL, "outcome" => "error").increment(1);
        // The failed batch's rows (not those read since, which wait behind them).
        let rows = self.failed_rows.take().unwrap_or(self.pending.len());
        tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, rows, "insert failed; pausing and retrying");
        self.watermarks.clear();
        Ok(Step::Backoff(delay))
    }

    /// Settles the INSERT in flight, then starts one of the pending rows that ClickHouse does
    /// not hold yet (or commits at once when there are none). With `wait`, also waits for the
    /// new INSERT and commits it before returning.
    fn try_flush(&mut self, cx: &mut Ctx<'_>, wait: bool) -> anyhow::Result<()> {
        self.settle(cx, true)?;
        let _span =
            tracing::info_span!("insert", group = %self.cfg.writer.group_id, rows = self.pending.len()).entered();
        let db = self.cfg.clickhouse.database.clone();
        let agg_topic = self.cfg.topics.aggregates.clone();
        let timeout = Duration::from_millis(self.cfg.writer.insert_timeout_ms);
        for p in self.pending.partitions() {
            if !self.watermarks.contains_key(&p) {
                let read = load_watermarks(&self.client, &db, &self.cfg.writer.table, &agg_topic, p);
                let wm = wait_bounded(&self.rt, "ClickHouse", timeout, None, &|| cx.beat(), read)
                    .and_then(|w| w.context("stopped"))
                    .with_context(|| format!("cannot read watermarks of partition {p}"))?;
                self.watermarks.insert(p, wm);
            }
        }
        // Filter against a copy: the real watermarks advance only once the insert succeeded.
        let mut wms = self.watermarks.clone();
        let batch = std::mem::replace(&mut self.pending, self.spare.take().unwrap_or_default());
        let mut keep = Vec::with_capacity(batch.len());
        let failed_sent = std::mem::take(&mut self.failed_rows_sent);
        let mut stored_by_failed = 0usize;
        for i in 0..batch.len() {
            if batch.admit(i, wms.get_mut(&batch.source(i).0).expect("loaded above")) {
                keep.push(i);
            } else if failed_sent.contains(&batch.source(i)) {
                stored_by_failed += 1;
            }
        }
        let duplicates = batch.len() - keep.len();
        if stored_by_failed > 0 {
            // Not silent: the views may be short of these rows (they are not inserted again).
            metrics::counter!(m::FAILED_INSERT_ROWS_STORED_TOTAL).increment(stored_by_failed as u64);
            tracing::warn!(
                rows = stored_by_failed,
                "an insert reported as failed had stored these rows in the base table; they are not inserted again. \
                 ClickHouse writes the materialized views one by one after the base table: if the failure was one \
                 of them (not a timeout or a lost connection), the derived tables lack these rows' counts \
                 (docs/operations.md, Reliability)"
            );
        }
        let offsets = std::mem::take(&mut self.next_offsets);
        self.oldest = None;
        let rows = keep.len();
        if keep.is_empty() {
            self.recycle(batch);
            // Nothing to store (all copies, or only DLQ'd messages): commit now.
            metrics::counter!(m::ROWS_DUPLICATE_TOTAL).increment(duplicates as u64);
            self.watermarks = wms;
            let offsets: Vec<(i32, i64)> = offsets.into_iter().collect();
            cx.commit(&offsets)?;
            return Ok(());
        }
        let timeout = Duration::from_millis(self.cfg.writer.insert_timeout_ms);
        let client = self.client.clone();
        let table = self.cfg.writer.table.clone();
        // The same rows always make the same token: the first and last record identities.
        let token = self.dedup_tokens.then(|| {
            let (a, b) = (batch.source(keep[0]), batch.source(keep[keep.len() - 1]));
            format!("{agg_topic}/{}:{}-{}:{}/{}", a.0, a.1, b.0, b.1, keep.len())
        });
        let task = self.rt.spawn(async move {
            let result = {
                let rows: Vec<AggregateRow<'_>> = keep.iter().map(|&i| batch.row(i, &agg_topic)).collect();
                insert_rows(&client, &table, &rows, timeout, token.as_deref()).await
            };
            (batch, keep, result)
        });
        self.in_flight = Some(InFlight { task, offsets, watermarks: wms, rows, duplicates, started: Instant::now() });
        if wait {
            self.settle(cx, true)?;
        }
        Ok(())
    }

    /// Ends the INSERT in flight, if any, once it has finished (waiting for it when `wait`):
    /// stored, it advances the watermarks and commits its offsets; failed, its rows go back to
    /// the front of `pending` (and its offsets to `next_offsets`) for the next try.
    ///
    /// # Errors
    /// The INSERT failed (its outcome is unknown).
    fn settle(&mut self, cx: &mut Ctx<'_>, wait: bool) -> anyhow::Result<()> {
        let Some(f) = self.in_flight.as_ref() else { return Ok(()) };
        if !wait && !f.task.is_finished() {
            return Ok(());
        }
        let mut f = self.in_flight.take().expect("checked above");
        let (batch, sent, result) = loop {
            // Waiting for ClickHouse is not a stall of this loop.
            cx.beat();
            let task = &mut f.task;
            // The timer is made inside the runtime (it needs its reactor).
            let poll = self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(1), task).await });
            match poll {
                Ok(Ok(done)) => break done,
                Ok(Err(e)) => {
                    self.task_died = Some(e.to_string());
                    return Err(InsertTaskDied(e.to_string()).into());
                }
                Err(_) => {}
            }
        };
        if let Err(e) = result {
            self.failed_rows = Some(batch.len());
            self.failed_rows_sent = sent.iter().map(|&i| batch.source(i)).collect();
            // Given back, oldest first, for the next try.
            let newer = std::mem::replace(&mut self.pending, batch);
            self.pending.append(&newer);
            self.recycle(newer);
            self.oldest.get_or_insert_with(Instant::now);
            for (p, o) in f.offsets {
                let next = self.next_offsets.entry(p).or_insert(o);
                *next = (*next).max(o);
            }
            return Err(e);
        }
        metrics::counter!(m::INSERTS_TOTAL, "outcome" => "ok").increment(1);
        metrics::histogram!(m::INSERT_SECONDS).record(f.started.elapsed().as_secs_f64());
        metrics::histogram!(m::INSERT_ROWS).record(f.rows as f64);
        metrics::counter!(m::ROWS_INSERTED_TOTAL).increment(f.rows as u64);
        metrics::counter!(m::ROWS_DUPLICATE_TOTAL).increment(f.duplicates as u64);
        tracing::debug!(rows = f.rows, duplicates = f.duplicates, "inserted");
        self.watermarks = f.watermarks;
        self.recycle(batch);
        // Malformed aggregates sent to the DLQ are acknowledged before their offsets are
        // committed (the runtime flushes the DLQ first): a DLQ record that never arrived must be
        // read again, not skipped. A failed commit is kept and tried again by the runtime;
        // stored rows that a restart reads again are recognised by the watermarks.
        let offsets: Vec<(i32, i64)> = f.offsets.into_iter().collect();
        cx.commit(&offsets)?;
        Ok(())
    }

    /// Keeps `batch`'s buffers, cleared, for the next batch; not when they grew past twice
    /// `batch_max_bytes` (a backlog given back through failed INSERTs, or one huge record):
    /// those are freed, so the two batches' memory stays bounded by the batch settings.
    fn recycle(&mut self, mut batch: Batch) {
        if batch.capacity_bytes() > self.cfg.writer.batch_max_bytes.saturating_mul(2) {
            self.spare = None;
            return;
        }
        batch.clear();
        self.spare = Some(batch);
    }

    fn to_dlq(&self, cx: &Ctx<'_>, payload: &[u8], p: i32, o: i64, reason: &str) -> anyhow::Result<()> {
        metrics::counter!(m::MALFORMED_TOTAL).increment(1);
        tracing::warn!(partition = p, offset = o, reason, "malformed aggregate sent to the DLQ");
        let max = tracefold_runtime::kafka::message_max_bytes(&self.cfg.kafka);
        cx.send_dlq(DlqRecord::new(payload, &self.cfg.topics.aggregates, p, o, Reason::Malformed, reason, max))
    }
}

/// One INSERT of `rows` (samples first, see [`tracefold_store::aggregates::insert`]), with the
/// crash tests' failpoints after it.
async fn insert_rows(
    client: &tracefold_store::Client,
    table: &str,
    rows: &[AggregateRow<'_>],
    timeout: Duration,
    token: Option<&str>,
) -> anyhow::Result<()> {
    // Crash tests: the INSERT task panics before anything is stored (a bug in the rows' encoding
    // would): the loop must end, not commit past the batch the task took with it.
    if tracefold_runtime::failpoint::trip("writer.insert_task_panics") {
        panic!("failpoint writer.insert_task_panics");
    }
    tracefold_store::aggregates::insert(client, table, rows, timeout, token).await.context("insert into aggregates")?;
    // Crash tests: die after ClickHouse stored the rows, before the offsets are committed.
    tracefold_runtime::failpoint::hit("writer.after_insert");
    // Crash tests: the rows landed, but the writer is told the insert failed (as after a
    // timeout): the retry must learn from ClickHouse that they are stored.
    if tracefold_runtime::failpoint::trip("writer.insert_lands_then_fails") {
        anyhow::bail!("failpoint writer.insert_lands_then_fails: the insert is reported as failed");
    }
    Ok(())
}
