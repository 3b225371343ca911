//! The grouper service: consumes raw events, cuts replayable batches per source partition,
//! and emits their aggregates (and rejected events to the DLQ) before committing past them.
//!
//! Protocol per batch `[first, last]` of partition `p` (see ARCHITECTURE.md):
//! 1. commit offset `first` with metadata `tracefold:v1:<first>:<last>` (synchronous): the
//!    range is now durable;
//! 2. produce the batch's records with an idempotent producer that retries until delivered,
//!    and wait for every acknowledgement;
//! 3. commit `last + 1` without metadata (synchronous, so that a commit retried inside
//!    librdkafka never lands after the next batch's range; a failed one is tried again from
//!    the poll loop until it succeeds or a newer range commit supersedes it).
//!
//! A grouper that is assigned `p` and finds pending metadata rebuilds exactly that range and
//! re-emits identical records; the writer drops the copies it already stored.

use crate::batch::{BatchBuilder, BatchOptions, BatchOutput};
use crate::config::Config;
use crate::metrics as m;
use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracefold_model::Reason;
use tracefold_runtime::kafka::{CommitQueue, DlqRecord, GroupContext, RebalanceEvent};
use tracefold_runtime::telemetry::Health;
use tracefold_runtime::Shutdown;

const METADATA_PREFIX: &str = "tracefold:v1:";

/// Room kept under the broker's message limit for an aggregate's key and record overhead.
const AGGREGATE_HEADROOM: usize = 1024;

/// Encodes a pending batch range as commit metadata.
pub fn encode_pending(first: i64, last: i64) -> String {
    format!("{METADATA_PREFIX}{first}:{last}")
}

/// Decodes commit metadata written by [`encode_pending`].
pub fn decode_pending(meta: &str) -> Option<(i64, i64)> {
    let rest = meta.strip_prefix(METADATA_PREFIX)?;
    let (a, b) = rest.split_once(':')?;
    let (first, last) = (a.parse().ok()?, b.parse().ok()?);
    (first <= last).then_some((first, last))
}

#[derive(Default)]
struct DeliveryCtx {
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Acknowledgements of the current emit (for the `grouper.after_acks` failpoint).
    acked: AtomicU64,
}

impl ClientContext for DeliveryCtx {}

impl ProducerContext for DeliveryCtx {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::SeqCst);
                *self.last_error.lock().expect("not poisoned") = Some(e.to_string());
            }
            Ok(_) => {
                // Crash tests: die with part of the emit acknowledged, before the commit past it.
                let n = self.acked.fetch_add(1, Ordering::SeqCst) + 1;
                tracefold_runtime::failpoint::hit_at("grouper.after_acks", n);
            }
        }
    }
}

struct PartState {
    builder: BatchBuilder,
    first: Option<i64>,
    last: i64,
    started: Instant,
    /// Set while rebuilding a pending batch: its last offset.
    replay_last: Option<i64>,
}

/// Runs the grouper until `shutdown` fires (then drains: emits open batches and commits).
/// Blocking: call it from a dedicated thread.
///
/// # Errors
/// Infrastructure failures that a restart should handle (Kafka fatal errors, a producer that
/// could not deliver).
pub fn run(cfg: &Config, shutdown: &Shutdown, health: &Health) -> anyhow::Result<()> {
    let consumer: BaseConsumer<GroupContext> =
        tracefold_runtime::kafka::consumer_config(&cfg.kafka, &cfg.grouper.group_id)
            .create_with_context(GroupContext::new(&cfg.grouper.group_id))
            .context("cannot create the grouper's consumer")?;
    let producer: ThreadedProducer<DeliveryCtx> = tracefold_runtime::kafka::producer_config(&cfg.kafka, 0)
        .create_with_context(DeliveryCtx::default())
        .context("cannot create the grouper's producer")?;
    tracefold_runtime::kafka::check_topics(
        consumer.client(),
        &[&cfg.topics.events, &cfg.topics.aggregates, &cfg.topics.dlq],
        Duration::from_secs(10),
    )?;
    let epoch = if cfg.grouper.epoch.is_empty() {
        consumer
            .client()
            .fetch_cluster_id(Duration::from_secs(10))
            .context("cannot read the Kafka cluster id (set grouper.epoch)")?
    } else {
        cfg.grouper.epoch.clone()
    };
    consumer.subscribe(&[&cfg.topics.events]).context("cannot subscribe")?;
    health.set_ready(true);
    tracing::info!(topic = %cfg.topics.events, group = %cfg.grouper.group_id, "grouper started");

    let opts = BatchOptions { max_users: cfg.grouper.max_users, grouping: cfg.grouping.clone() };
    let mut parts: HashMap<i32, PartState> = HashMap::new();
    let max_age = Duration::from_millis(cfg.grouper.batch_max_age_ms);
    let mut last_age_check = Instant::now();
    let mut g = Grouper {
        past: CommitQueue::new(&cfg.topics.events, &cfg.grouper.group_id),
        cfg,
        epoch: &epoch,
        consumer: &consumer,
        producer: &producer,
        health,
        max_message: tracefold_runtime::kafka::message_max_bytes(&cfg.kafka),
    };
    // Crash tests: `TRACEFOLD_FAILPOINTS=grouper.panic_marker=1` makes every event that
    // contains `tracefold-failpoint-panic` panic inside the per-event fault barrier.
    let panic_marker = tracefold_runtime::failpoint::armed("grouper.panic_marker");
    let new_builder = || {
        let mut b = BatchBuilder::new(opts.clone());
        if panic_marker {
            b.inject_panic_on(b"tracefold-failpoint-panic");
        }
        b
    };

    while !shutdown.is_triggered() {
        health.beat();
        let msg = consumer.poll(Duration::from_millis(100));
        g.handle_rebalances(&mut parts, &new_builder)?;
        match msg {
            Some(Ok(msg)) => {
                let p = msg.partition();
                let offset = msg.offset();
                let st = parts.entry(p).or_insert_with(|| PartState {
                    builder: new_builder(),
                    first: None,
                    last: -1,
                    started: Instant::now(),
                    replay_last: None,
                });
                // A replayed range ends at its recorded last offset, whatever comes after.
                if let (Some(rl), Some(_)) = (st.replay_last, st.first) {
                    if offset > rl {
                        g.emit(&mut parts, &[p])?;
                    }
                }
                let st = parts.get_mut(&p).expect("inserted above");
                if st.first.is_none() {
                    st.first = Some(offset);
                    st.started = Instant::now();
                }
                st.last = offset;
                let ts = msg.timestamp().to_millis().unwrap_or(0);
                st.builder.add(msg.payload().unwrap_or(&[]), offset, ts);
                let cut = match st.replay_last {
                    Some(rl) => offset >= rl,
                    None => {
                        st.builder.events() >= cfg.grouper.batch_max_events
                            || st.builder.bytes() >= cfg.grouper.batch_max_bytes
                    }
                };
                if cut {
                    g.emit(&mut parts, &[p])?;
                }
            }
            Some(Err(e)) => {
                if let rdkafka::error::KafkaError::MessageConsumptionFatal(_) = e {
                    return Err(e).context("fatal consumer error");
                }
                tracing::warn!(error = %e, "consumer error");
            }
            None => {}
        }
        g.past.retry_due(&consumer);
        if last_age_check.elapsed() >= Duration::from_millis(50) {
            last_age_check = Instant::now();
            let open = |st: &PartState| st.first.is_some() && st.replay_last.is_none();
            if parts.values().any(|st| open(st) && st.started.elapsed() >= max_age) {
                // Emit every partition that is at least half due with it: one commit, one flush.
                let due: Vec<i32> = parts
                    .iter()
                    .filter(|(_, st)| open(st) && st.started.elapsed() >= max_age / 2)
                    .map(|(p, _)| *p)
                    .collect();
                g.emit(&mut parts, &due)?;
            }
        }
    }
    health.set_ready(false);
    tracing::info!("grouper draining");
    let open: Vec<i32> =
        parts.iter().filter(|(_, st)| st.first.is_some() && st.replay_last.is_none()).map(|(p, _)| *p).collect();
    g.emit(&mut parts, &open)?;
    producer.flush(Duration::from_secs(30)).context("final flush")?;
    // A "past the batch" commit that failed gets a last try; if it fails again, a restart
    // rebuilds those batches and the writer recognises them as replays.
    if !g.past.commit(&consumer) {
        tracing::warn!("final commit failed; the last batches will be rebuilt and recognised as replays");
    }
    consumer.unsubscribe();
    tracing::info!("grouper stopped");
    Ok(())
}

struct Grouper<'a> {
    /// Offsets past emitted batches whose commit has not succeeded yet.
    past: CommitQueue,
    cfg: &'a Config,
    epoch: &'a str,
    consumer: &'a BaseConsumer<GroupContext>,
    producer: &'a ThreadedProducer<DeliveryCtx>,
    health: &'a Health,
    /// The broker's message size limit: larger aggregates go to the DLQ.
    max_message: usize,
}

impl Grouper<'_> {
    fn handle_rebalances(
        &mut self,
        parts: &mut HashMap<i32, PartState>,
        new_builder: &dyn Fn() -> BatchBuilder,
    ) -> anyhow::Result<()> {
        let events = self.consumer.context().take_events();
        for ev in events {
            match ev {
                RebalanceEvent::Revoked(ps) => {
                    for p in ps {
                        // Not emitted, not committed: the next owner rebuilds from the commit.
                        parts.remove(&p);
                        self.past.forget(&[p]);
                    }
                    tracing::info!("partitions revoked");
                }
                RebalanceEvent::Assigned(ps) => {
                    let mut tpl = TopicPartitionList::new();
                    for p in &ps {
                        tpl.add_partition(&self.cfg.topics.events, *p);
                    }
                    let committed = self
                        .consumer
                        .committed_offsets(tpl, Duration::from_secs(10))
                        .context("cannot read committed offsets")?;
                    for e in committed.elements() {
                        let pending = decode_pending(e.metadata());
                        let replay_last = match (pending, e.offset()) {
                            (Some((first, last)), Offset::Offset(o)) if o == first => Some(last),
                            _ => None,
                        };
                        if let Some(last) = replay_last {
                            tracing::info!(partition = e.partition(), from = ?e.offset(), to = last, "rebuilding an unfinished batch");
                        }
                        parts.insert(
                            e.partition(),
                            PartState {
                                builder: new_builder(),
                                first: None,
                                last: -1,
                                started: Instant::now(),
                                replay_last,
                            },
                        );
                    }
                    tracing::info!(partitions = ?ps, "partitions assigned");
                }
            }
        }
        Ok(())
    }

    /// Emits the open batches of `which` partitions: records their ranges (one synchronous
    /// commit), produces all their records and waits for the acknowledgements (one flush), then
    /// commits past them (one synchronous commit, tried again later if it fails).
    fn emit(&mut self, parts: &mut HashMap<i32, PartState>, which: &[i32]) -> anyhow::Result<()> {
        struct Done {
            partition: i32,
            first: i64,
            last: i64,
            replay: bool,
            events: u64,
            out: BatchOutput,
        }
        let t0 = Instant::now();
        let _span = tracing::info_span!("emit", group = %self.cfg.grouper.group_id, epoch = %self.epoch).entered();
        let topic = &self.cfg.topics.events;
        let mut done: Vec<Done> = Vec::with_capacity(which.len());
        for &partition in which {
            let Some(st) = parts.get_mut(&partition) else { continue };
            let Some(first) = st.first else { continue };
            let last = st.replay_last.unwrap_or(st.last);
            let events = st.builder.events();
            let out = st.builder.finish(self.epoch, topic, partition, first, last);
            done.push(Done { partition, first, last, replay: st.replay_last.is_some(), events, out });
            st.first = None;
            st.replay_last = None;
        }
        if done.is_empty() {
            return Ok(());
        }
        let mut pending = TopicPartitionList::new();
        for d in done.iter().filter(|d| !d.replay) {
            pending.add_partition_offset(topic, d.partition, Offset::Offset(d.first))?;
            set_metadata(&mut pending, topic, d.partition, &encode_pending(d.first, d.last));
        }
        if pending.count() > 0 {
            if let Err(e) = self.consumer.commit(&pending, CommitMode::Sync) {
                // Most likely a partition was revoked: its next owner reads from the last
                // commit. Rewind, so that these ranges are read again if they are still ours.
                tracing::warn!(error = %e, "cannot record the batch ranges; rewinding");
                for d in done.iter().filter(|d| !d.replay) {
                    let _ = self.consumer.seek(topic, d.partition, Offset::Offset(d.first), Duration::from_secs(5));
                }
                done.retain(|d| d.replay);
            } else {
                // A range commit supersedes a failed "past the batch" commit of its partition.
                let recorded: Vec<i32> = done.iter().filter(|d| !d.replay).map(|d| d.partition).collect();
                self.past.forget(&recorded);
                // Crash tests: die with the ranges recorded and nothing produced yet.
                tracefold_runtime::failpoint::hit("grouper.after_pending_commit");
            }
        }
        self.produce(&done.iter().map(|d| (&d.out, d.partition)).collect::<Vec<_>>())?;
        // Crash tests: die after the aggregates are acknowledged, before committing past them.
        tracefold_runtime::failpoint::hit("grouper.after_produce");
        for d in &done {
            self.past.set(d.partition, d.last + 1);
        }
        self.past.commit(self.consumer);
        for d in &done {
            let out = &d.out;
            metrics::counter!(m::EVENTS_TOTAL, "outcome" => "accepted").increment(out.accepted);
            metrics::counter!(m::EVENTS_TOTAL, "outcome" => "rejected").increment(out.rejected.len() as u64);
            metrics::counter!(m::CLAMPED_TOTAL).increment(out.clamped);
            metrics::counter!(m::BATCHES_TOTAL, "kind" => if d.replay { "replay" } else { "new" }).increment(1);
            metrics::counter!(m::AGGREGATES_TOTAL).increment(out.records.len() as u64);
            for reason in Reason::ALL {
                let n = out.rejected.iter().filter(|r| r.rejection.reason == reason).count();
                if n > 0 {
                    metrics::counter!(m::DLQ_TOTAL, "reason" => reason.code()).increment(n as u64);
                }
            }
            metrics::histogram!(m::BATCH_EVENTS).record(d.events as f64);
            tracing::debug!(
                partition = d.partition,
                first = d.first,
                last = d.last,
                records = out.records.len(),
                rejected = out.rejected.len(),
                replay = d.replay,
                "batch emitted"
            );
        }
        metrics::histogram!(m::EMIT_SECONDS).record(t0.elapsed().as_secs_f64());
        Ok(())
    }

    fn produce(&self, outs: &[(&BatchOutput, i32)]) -> anyhow::Result<()> {
        let failed_before = self.producer.context().failed.load(Ordering::SeqCst);
        self.producer.context().acked.store(0, Ordering::SeqCst);
        let mut payload = Vec::with_capacity(4096);
        for (out, partition) in outs {
            self.produce_one(out, *partition, &mut payload)?;
        }
        // Wait for every acknowledgement; the producer retries until delivered.
        loop {
            // Waiting for Kafka is not a stall of this loop: restarting would not help.
            self.health.beat();
            match self.producer.flush(Duration::from_secs(10)) {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, in_flight = self.producer.in_flight_count(), "waiting for Kafka to acknowledge aggregates")
                }
            }
        }
        let failed = self.producer.context().failed.load(Ordering::SeqCst) - failed_before;
        if failed > 0 {
            let err = self.producer.context().last_error.lock().expect("not poisoned").clone();
            anyhow::bail!(
                "{failed} aggregate records were not delivered ({}); restarting rebuilds the batch",
                err.unwrap_or_default()
            );
        }
        Ok(())
    }

    fn produce_one(&self, out: &BatchOutput, partition: i32, payload: &mut Vec<u8>) -> anyhow::Result<()> {
        let events = &self.cfg.topics.events;
        for r in &out.records {
            let key = r.key();
            payload.clear();
            serde_json::to_writer(&mut *payload, r).context("serialize aggregate")?;
            if payload.len() + key.len() > self.max_message.saturating_sub(AGGREGATE_HEADROOM) {
                // Cannot be published (a huge max_users, say): to the DLQ rather than failing
                // the batch forever. Deterministic, so a replay decides the same.
                let detail = format!(
                    "aggregate record of {} bytes is larger than the broker's message limit ({} bytes)",
                    payload.len(),
                    self.max_message
                );
                tracing::error!(issue = %r.issue_id, count = r.count, bytes = payload.len(), "aggregate too large; sent to the DLQ");
                metrics::counter!(m::DLQ_TOTAL, "reason" => Reason::AggregateTooLarge.code()).increment(1);
                let rec = DlqRecord::new(
                    payload,
                    events,
                    partition,
                    r.batch.first_offset,
                    Reason::AggregateTooLarge,
                    &detail,
                    self.max_message,
                );
                self.send(
                    BaseRecord::to(&self.cfg.topics.dlq).key(&rec.key).payload(rec.payload).headers(rec.headers),
                )?;
                continue;
            }
            self.send(BaseRecord::to(&self.cfg.topics.aggregates).key(&key).payload(payload.as_slice()))?;
        }
        for rej in &out.rejected {
            let why = &rej.rejection;
            let rec =
                DlqRecord::new(&rej.payload, events, partition, rej.offset, why.reason, &why.detail, self.max_message);
            self.send(BaseRecord::to(&self.cfg.topics.dlq).key(&rec.key).payload(rec.payload).headers(rec.headers))?;
        }
        Ok(())
    }

    fn send(&self, mut rec: BaseRecord<'_, String, [u8]>) -> anyhow::Result<()> {
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e).context("cannot enqueue an aggregate"),
            }
        }
    }
}

fn set_metadata(tpl: &mut TopicPartitionList, topic: &str, partition: i32, meta: &str) {
    if let Some(mut e) = tpl.find_partition(topic, partition) {
        e.set_metadata(meta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_metadata_round_trips() {
        assert_eq!(decode_pending(&encode_pending(10, 99)), Some((10, 99)));
        assert_eq!(decode_pending(""), None);
        assert_eq!(decode_pending("tracefold:v1:9:3"), None);
        assert_eq!(decode_pending("other:v1:1:2"), None);
    }
}
