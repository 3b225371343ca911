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
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::Offset;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracefold_model::{AggregateRecord, Reason};
use tracefold_runtime::kafka::{CommitQueue, DlqRecord, GroupContext, RebalanceEvent};
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
    consumer: &'a BaseConsumer<GroupContext>,
    dlq: &'a ThreadedProducer<DefaultProducerContext>,
    client: tracefold_store::Client,
    rt: tokio::runtime::Runtime,
    /// Watermarks per aggregates partition; absent means "read from ClickHouse first".
    watermarks: HashMap<i32, Watermarks>,
    pending: Vec<Pending>,
    pending_bytes: usize,
    oldest: Option<Instant>,
    /// Next offset to commit per partition, once the pending batch is stored.
    next_offsets: HashMap<i32, i64>,
    /// Offsets of stored rows whose commit has not succeeded yet.
    commits: CommitQueue,
    /// The server supports `insert_deduplication_token` (22+): a second guard against a
    /// retried insert whose first try did land.
    dedup_tokens: bool,
}

/// Runs the writer until `shutdown` fires, then stores what it holds and commits.
/// Blocking: call it from a dedicated thread (it runs its own small async runtime).
///
/// # Errors
/// Kafka fatal errors; ClickHouse errors are retried, not returned.
pub fn run(cfg: &Config, shutdown: &Shutdown, health: &Health) -> anyhow::Result<()> {
    let consumer: BaseConsumer<GroupContext> =
        tracefold_runtime::kafka::consumer_config(&cfg.kafka, &cfg.writer.group_id)
            .create_with_context(GroupContext::new(&cfg.writer.group_id))
            .context("cannot create the writer's consumer")?;
    let dlq: ThreadedProducer<DefaultProducerContext> =
        tracefold_runtime::kafka::producer_config(&cfg.kafka, 0).create().context("cannot create the DLQ producer")?;
    tracefold_runtime::kafka::check_topics(
        consumer.client(),
        &[&cfg.topics.aggregates, &cfg.topics.dlq],
        Duration::from_secs(10),
    )?;
    consumer.subscribe(&[&cfg.topics.aggregates]).context("cannot subscribe")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = tracefold_store::client::database_client(&cfg.clickhouse)?;
    let mut w = Writer {
        cfg,
        consumer: &consumer,
        dlq: &dlq,
        client,
        rt,
        watermarks: HashMap::new(),
        pending: Vec::new(),
        pending_bytes: 0,
        oldest: None,
        next_offsets: HashMap::new(),
        commits: CommitQueue::new(&cfg.topics.aggregates, &cfg.writer.group_id),
        dedup_tokens: false,
    };
    w.dedup_tokens = match w.rt.block_on(tracefold_store::client::server_version(&w.client)) {
        Ok(v) => tracefold_store::client::major_version(&v) >= 22,
        Err(e) => {
            let error = format!("{:#}", anyhow::Error::new(e));
            tracing::warn!(%error, "cannot read the ClickHouse version; inserts go without deduplication tokens");
            false
        }
    };
    health.set_ready(true);
    tracing::info!(topic = %cfg.topics.aggregates, group = %cfg.writer.group_id, "writer started");
    let max_age = Duration::from_millis(cfg.writer.batch_max_age_ms);
    while !shutdown.is_triggered() {
        health.beat();
        let msg = consumer.poll(Duration::from_millis(100));
        w.handle_rebalances();
        match msg {
            Some(Ok(msg)) => {
                let (p, o) = (msg.partition(), msg.offset());
                let payload = msg.payload().unwrap_or(&[]);
                match serde_json::from_slice::<AggregateRecord>(payload) {
                    Ok(record) => {
                        w.pending_bytes += payload.len();
                        w.pending.push(Pending { record, partition: p, offset: o, bytes: payload.len() });
                        w.oldest.get_or_insert_with(Instant::now);
                    }
                    Err(e) => w.to_dlq(payload, p, o, &format!("malformed aggregate: {e}"))?,
                }
                w.next_offsets.insert(p, o + 1);
            }
            Some(Err(e)) => {
                if let rdkafka::error::KafkaError::MessageConsumptionFatal(_) = e {
                    return Err(e).context("fatal consumer error");
                }
                tracing::warn!(error = %e, "consumer error");
            }
            None => {}
        }
        let full = w.pending.len() >= cfg.writer.batch_max_rows || w.pending_bytes >= cfg.writer.batch_max_bytes;
        let old = w.oldest.is_some_and(|t| t.elapsed() >= max_age);
        if full || old || (w.pending.is_empty() && !w.next_offsets.is_empty()) {
            w.flush_with_retry(shutdown, health)?;
        }
        w.commits.retry_due(&consumer);
    }
    health.set_ready(false);
    tracing::info!("writer draining");
    let deadline = Instant::now() + Duration::from_secs(20);
    while (!w.next_offsets.is_empty() || !w.commits.is_empty()) && Instant::now() < deadline {
        if w.try_flush().is_err() || !w.commits.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let _ = dlq.flush(Duration::from_secs(10));
    consumer.unsubscribe();
    tracing::info!("writer stopped");
    Ok(())
}

impl Writer<'_> {
    fn handle_rebalances(&mut self) {
        let events = self.consumer.context().take_events();
        for ev in events {
            match ev {
                RebalanceEvent::Revoked(ps) => {
                    // Not stored, not committed: the next owner reads them again.
                    self.pending.retain(|r| !ps.contains(&r.partition));
                    self.pending_bytes = self.pending.iter().map(|r| r.bytes).sum();
                    for p in &ps {
                        self.watermarks.remove(p);
                        self.next_offsets.remove(p);
                    }
                    self.commits.forget(&ps);
                    if self.pending.is_empty() {
                        self.oldest = None;
                    }
                    tracing::info!(partitions = ?ps, "partitions revoked");
                }
                RebalanceEvent::Assigned(ps) => {
                    for p in &ps {
                        self.watermarks.remove(p);
                    }
                    tracing::info!(partitions = ?ps, "partitions assigned");
                }
            }
        }
    }

    fn flush_with_retry(&mut self, shutdown: &Shutdown, health: &Health) -> anyhow::Result<()> {
        let mut delay = Duration::from_millis(self.cfg.writer.retry_initial_ms);
        let mut paused = false;
        loop {
            match self.try_flush() {
                Ok(()) => break,
                Err(e) => {
                    metrics::counter!(m::INSERTS_TOTAL, "outcome" => "error").increment(1);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, rows = self.pending.len(), "insert failed; pausing and retrying");
                    health.set_ready(false);
                    if !paused {
                        if let Ok(a) = self.consumer.assignment() {
                            let _ = self.consumer.pause(&a);
                        }
                        paused = true;
                    }
                    // The outcome is unknown: read the watermarks again before the next try.
                    self.watermarks.clear();
                    let until = Instant::now() + delay;
                    while Instant::now() < until {
                        // Waiting on ClickHouse with bounded retries is progress of a kind:
                        // restarting would not help.
                        health.beat();
                        // Keep group membership alive; nothing is delivered while paused.
                        if let Some(Ok(msg)) = self.consumer.poll(Duration::from_millis(100)) {
                            // A partition assigned during the outage is not paused yet.
                            let p = msg.partition();
                            let _ = self.consumer.seek(
                                msg.topic(),
                                p,
                                Offset::Offset(msg.offset()),
                                Duration::from_secs(1),
                            );
                            if let Ok(a) = self.consumer.assignment() {
                                let _ = self.consumer.pause(&a);
                            }
                        }
                        self.handle_rebalances();
                        if shutdown.is_triggered() {
                            return Ok(());
                        }
                    }
                    delay = (delay * 2).min(Duration::from_millis(self.cfg.writer.retry_max_ms));
                }
            }
        }
        if paused {
            if let Ok(a) = self.consumer.assignment() {
                let _ = self.consumer.resume(&a);
            }
            health.set_ready(true);
            tracing::info!("ClickHouse is back; resumed");
        }
        Ok(())
    }

    /// Inserts the pending rows that ClickHouse does not hold yet, then commits.
    fn try_flush(&mut self) -> anyhow::Result<()> {
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
        // committed: a DLQ record that never arrived must be read again, not skipped.
        if self.dlq.in_flight_count() > 0 {
            self.dlq.flush(Duration::from_secs(10)).context("the DLQ did not acknowledge malformed aggregates")?;
        }
        for (p, o) in &self.next_offsets {
            self.commits.set(*p, *o);
        }
        // A failed commit is kept and tried again from the poll loop; stored rows that a
        // restart reads again are recognised by the watermarks.
        self.commits.commit(self.consumer);
        self.pending.clear();
        self.pending_bytes = 0;
        self.oldest = None;
        self.next_offsets.clear();
        Ok(())
    }

    fn to_dlq(&self, payload: &[u8], p: i32, o: i64, reason: &str) -> anyhow::Result<()> {
        metrics::counter!(m::MALFORMED_TOTAL).increment(1);
        tracing::warn!(partition = p, offset = o, reason, "malformed aggregate sent to the DLQ");
        let max = tracefold_runtime::kafka::message_max_bytes(&self.cfg.kafka);
        let rec = DlqRecord::new(payload, &self.cfg.topics.aggregates, p, o, Reason::Malformed, reason, max);
        self.dlq
            .send(BaseRecord::to(&self.cfg.topics.dlq).key(&rec.key).payload(rec.payload).headers(rec.headers))
            .map_err(|(e, _)| e)
            .context("cannot enqueue a DLQ message")?;
        Ok(())
    }
}
