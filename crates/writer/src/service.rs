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

use crate::config::Config;
use crate::metrics as m;
use anyhow::Context as _;
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Message};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracefold_model::{AggregateRecord, Reason};
use tracefold_runtime::consumer::{ConsumerRuntime, Ctx, Step, Strategy};
use tracefold_runtime::kafka::DlqRecord;
use tracefold_runtime::telemetry::Health;
use tracefold_runtime::Shutdown;
use tracefold_store::aggregates::{admit, load_watermarks, Watermarks};
use tracefold_store::rows::AggregateRow;

struct Pending {
    record: AggregateRecord,
    partition: i32,
    offset: i64,
    /// Size of the message it was read from (counts toward `batch_max_bytes`).
    bytes: usize,
}

/// The state of the writer loop.
struct Writer<'a> {
    cfg: &'a Config,
    client: tracefold_store::Client,
    rt: tokio::runtime::Runtime,
    /// Watermarks per aggregates partition; absent means "read from ClickHouse first".
    watermarks: HashMap<i32, Watermarks>,
    pending: Vec<Pending>,
    pending_bytes: usize,
    oldest: Option<Instant>,
    /// Next offset to commit per partition, once the pending batch is stored.
    next_offsets: HashMap<i32, i64>,
    /// The server supports `insert_deduplication_token` (22+): a second guard against a
    /// retried insert whose first try did land.
    dedup_tokens: bool,
    /// While inserts fail: the delay before the next try (doubles up to `retry_max_ms`).
    retry_delay: Option<Duration>,
}

/// Runs the writer until `shutdown` fires, then stores what it holds and commits.
/// Blocking: call it from a dedicated thread (it runs its own small async runtime).
///
/// # Errors
/// Kafka fatal errors; ClickHouse errors are retried, not returned.
pub fn run(cfg: &Config, shutdown: &Shutdown, health: &Health) -> anyhow::Result<()> {
    let (runtime, rt, client) =
        start_consumer(cfg, &cfg.writer.group_id, &cfg.topics.aggregates, m::EVENTS_LOST_TOTAL)?;
    let mut w = Writer {
        cfg,
        client,
        rt,
        watermarks: HashMap::new(),
        pending: Vec::new(),
        pending_bytes: 0,
        oldest: None,
        next_offsets: HashMap::new(),
        dedup_tokens: false,
        retry_delay: None,
    };
    w.dedup_tokens = match w.rt.block_on(tracefold_store::client::server_version(&w.client)) {
        Ok(v) => tracefold_store::client::major_version(&v) >= 22,
        Err(e) => {
            let error = format!("{:#}", anyhow::Error::new(e));
            tracing::warn!(%error, "cannot read the ClickHouse version; inserts go without deduplication tokens");
            false
        }
    };
    tracing::info!(topic = %cfg.topics.aggregates, group = %cfg.writer.group_id, "writer started");
    // The outcomes consumer runs beside it, in its own thread and group; either loop ending
    // ends the other (a failed one makes the process exit non-zero and be restarted). Its
    // health is part of the writer's: /healthz and the watchdog see a stall of either loop.
    let outcomes_health = health.child("writer-outcomes");
    std::thread::scope(|scope| {
        let outcomes = scope.spawn(|| {
            let r = tracefold_runtime::telemetry::run_guarded(&outcomes_health, || {
                crate::outcomes::run(cfg, shutdown, &outcomes_health)
            });
            shutdown.trigger();
            r
        });
        let main = runtime.run(&mut w, shutdown, health);
        shutdown.trigger();
        let outcomes = outcomes.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the outcomes consumer panicked")));
        tracing::info!("writer stopped");
        main.and(outcomes.context("outcomes consumer"))
    })
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
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
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

    fn on_revoke(&mut self, _: &mut Ctx<'_>, partitions: &[i32]) {
        // Not stored, not committed: the next owner reads them again.
        self.pending.retain(|r| !partitions.contains(&r.partition));
        self.pending_bytes = self.pending.iter().map(|r| r.bytes).sum();
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
        match serde_json::from_slice::<AggregateRecord>(payload) {
            Ok(record) => {
                self.pending_bytes += payload.len();
                self.pending.push(Pending { record, partition: p, offset: o, bytes: payload.len() });
                self.oldest.get_or_insert_with(Instant::now);
            }
            Err(e) => self.to_dlq(cx, payload, p, o, &format!("malformed aggregate: {e}"))?,
        }
        self.next_offsets.insert(p, o + 1);
        Ok(())
    }

    fn on_tick(&mut self, cx: &mut Ctx<'_>) -> anyhow::Result<Step> {
        let max_age = Duration::from_millis(self.cfg.writer.batch_max_age_ms);
        let full = self.pending.len() >= self.cfg.writer.batch_max_rows
            || self.pending_bytes >= self.cfg.writer.batch_max_bytes;
        let old = self.oldest.is_some_and(|t| t.elapsed() >= max_age);
        let retrying = self.retry_delay.is_some();
        if !(full || old || retrying || (self.pending.is_empty() && !self.next_offsets.is_empty())) {
            return Ok(Step::Continue);
        }
        match self.try_flush(cx) {
            Ok(()) => {
                if self.retry_delay.take().is_some() {
                    tracing::info!("ClickHouse is back; resumed");
                }
                Ok(Step::Continue)
            }
            Err(e) => {
                let delay = match self.retry_delay {
                    None => Duration::from_millis(self.cfg.writer.retry_initial_ms),
                    Some(d) => (d * 2).min(Duration::from_millis(self.cfg.writer.retry_max_ms)),
                };
                self.retry_delay = Some(delay);
                metrics::counter!(m::INSERTS_TOTAL, "outcome" => "error").increment(1);
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, rows = self.pending.len(), "insert failed; pausing and retrying");
                // The outcome is unknown: read the watermarks again before the next try.
                self.watermarks.clear();
                Ok(Step::Backoff(delay))
            }
        }
    }

    fn on_shutdown(&mut self, cx: &mut Ctx<'_>) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        // Store what is held and commit it; a failed commit is tried again until the deadline.
        while (!self.next_offsets.is_empty() || cx.commits_pending()) && Instant::now() < deadline {
            cx.beat();
            let failed = self.try_flush(cx).is_err();
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
    /// Inserts the pending rows that ClickHouse does not hold yet, then commits.
    fn try_flush(&mut self, cx: &mut Ctx<'_>) -> anyhow::Result<()> {
        let _span =
            tracing::info_span!("insert", group = %self.cfg.writer.group_id, rows = self.pending.len()).entered();
        let db = self.cfg.clickhouse.database.clone();
        let agg_topic = self.cfg.topics.aggregates.clone();
        let mut parts: Vec<i32> = self.pending.iter().map(|r| r.partition).collect();
        parts.sort_unstable();
        parts.dedup();
        for p in parts {
            if !self.watermarks.contains_key(&p) {
                let wm = self
                    .rt
                    .block_on(load_watermarks(&self.client, &db, &self.cfg.writer.table, &agg_topic, p))
                    .with_context(|| format!("cannot read watermarks of partition {p}"))?;
                self.watermarks.insert(p, wm);
            }
        }
        // Filter against a copy: the real watermarks advance only once the insert succeeded.
        let mut wms = self.watermarks.clone();
        let mut keep = Vec::with_capacity(self.pending.len());
        for (i, r) in self.pending.iter().enumerate() {
            if admit(wms.get_mut(&r.partition).expect("loaded above"), &r.record) {
                keep.push(i);
            }
        }
        let duplicates = self.pending.len() - keep.len();
        if !keep.is_empty() {
            let t0 = Instant::now();
            let timeout = Duration::from_millis(self.cfg.writer.insert_timeout_ms);
            let rows: Vec<AggregateRow<'_>> = keep
                .iter()
                .map(|&i| {
                    let r = &self.pending[i];
                    AggregateRow::new(&r.record, &agg_topic, r.partition, r.offset)
                })
                .collect();
            let client = &self.client;
            let table = self.cfg.writer.table.as_str();
            // The same rows always make the same token: the first and last record identities.
            let token = self.dedup_tokens.then(|| {
                let (a, b) = (&self.pending[keep[0]], &self.pending[keep[keep.len() - 1]]);
                format!("{agg_topic}/{}:{}-{}:{}/{}", a.partition, a.offset, b.partition, b.offset, keep.len())
            });
            self.rt
                .block_on(tracefold_store::aggregates::insert(client, table, &rows, timeout, token.as_deref()))
                .context("insert into aggregates")?;
            // Crash tests: die after ClickHouse stored the rows, before the offsets are committed.
            tracefold_runtime::failpoint::hit("writer.after_insert");
            // Crash tests: the rows landed, but the writer is told the insert failed (as after a
            // timeout): the retry must learn from ClickHouse that they are stored.
            if tracefold_runtime::failpoint::trip("writer.insert_lands_then_fails") {
                anyhow::bail!("failpoint writer.insert_lands_then_fails: the insert is reported as failed");
            }
            metrics::counter!(m::INSERTS_TOTAL, "outcome" => "ok").increment(1);
            metrics::histogram!(m::INSERT_SECONDS).record(t0.elapsed().as_secs_f64());
            metrics::histogram!(m::INSERT_ROWS).record(rows.len() as f64);
            metrics::counter!(m::ROWS_INSERTED_TOTAL).increment(rows.len() as u64);
            tracing::debug!(rows = rows.len(), duplicates, "inserted");
        }
        metrics::counter!(m::ROWS_DUPLICATE_TOTAL).increment(duplicates as u64);
        self.watermarks = wms;
        // Malformed aggregates sent to the DLQ are acknowledged before their offsets are
        // committed (the runtime flushes the DLQ first): a DLQ record that never arrived must be
        // read again, not skipped. A failed commit is kept and tried again by the runtime;
        // stored rows that a restart reads again are recognised by the watermarks.
        let offsets: Vec<(i32, i64)> = self.next_offsets.iter().map(|(p, o)| (*p, *o)).collect();
        cx.commit(&offsets)?;
        self.pending.clear();
        self.pending_bytes = 0;
        self.oldest = None;
        self.next_offsets.clear();
        Ok(())
    }

    fn to_dlq(&self, cx: &Ctx<'_>, payload: &[u8], p: i32, o: i64, reason: &str) -> anyhow::Result<()> {
        metrics::counter!(m::MALFORMED_TOTAL).increment(1);
        tracing::warn!(partition = p, offset = o, reason, "malformed aggregate sent to the DLQ");
        let max = tracefold_runtime::kafka::message_max_bytes(&self.cfg.kafka);
        cx.send_dlq(DlqRecord::new(payload, &self.cfg.topics.aggregates, p, o, Reason::Malformed, reason, max))
    }
}
