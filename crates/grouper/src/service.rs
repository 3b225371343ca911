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
use crate::symbolicate::Hook;
use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::TopicPartitionList;
use rdkafka::{ClientContext, Offset};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracefold_model::Reason;
use tracefold_runtime::consumer::{ConsumerRuntime, Ctx, Step, Strategy};
use tracefold_runtime::kafka::DlqRecord;
use tracefold_runtime::telemetry::Health;
use tracefold_runtime::Shutdown;

const METADATA_PREFIX: &str = "tracefold:v1:";

/// Reading a partition's deduplication window gives up after this long without a message.
const PRIME_STALL: Duration = Duration::from_secs(30);

/// Room kept under the broker's message limit for an aggregate's key and record overhead.
const AGGREGATE_HEADROOM: usize = 1024;

/// How long a grouper that is stopping still waits for Kafka to acknowledge the aggregates in
/// flight before it gives up (exit non-zero, nothing committed past them).
const STOP_ACK_WAIT: Duration = Duration::from_secs(30);

/// Encodes a pending batch range as commit metadata.
pub fn encode_pending(first: i64, last: i64) -> String {
    format!("{METADATA_PREFIX}{first}:{last}")
}

/// Encodes a pending batch range with the source maps its first run used (key hash and
/// offset of first use, see [`crate::symbolicate::BatchMaps`]):
/// `tracefold:v1:<first>:<last>:m=<hash>@<offset - first>,...`; without maps, as
/// [`encode_pending`]. At most [`crate::symbolicate::MAX_KEYS_PER_BATCH`] maps: about 1.7 KB,
/// within Kafka's default `offset.metadata.max.bytes` (4096).
pub fn encode_pending_with_maps(first: i64, last: i64, maps: &[(u64, i64)]) -> String {
    use std::fmt::Write as _;
    let mut s = encode_pending(first, last);
    for (i, (hash, offset)) in maps.iter().enumerate() {
        s.push_str(if i == 0 { ":m=" } else { "," });
        let _ = write!(s, "{hash:016x}@{}", offset - first);
    }
    s
}

/// Decodes commit metadata written by [`encode_pending`].
pub fn decode_pending(meta: &str) -> Option<(i64, i64)> {
    decode_pending_with_maps(meta).map(|(first, last, _)| (first, last))
}

/// A pending range: first and last offset, and the source maps its first run used (key hash,
/// offset of first use).
pub type PendingRange = (i64, i64, Vec<(u64, i64)>);

/// Decodes commit metadata written by [`encode_pending_with_maps`] (or [`encode_pending`]).
pub fn decode_pending_with_maps(meta: &str) -> Option<PendingRange> {
    let rest = meta.strip_prefix(METADATA_PREFIX)?;
    let (a, rest) = rest.split_once(':')?;
    let (b, maps) = match rest.split_once(':') {
        Some((b, m)) => (b, Some(m.strip_prefix("m=")?)),
        None => (rest, None),
    };
    let (first, last): (i64, i64) = (a.parse().ok()?, b.parse().ok()?);
    if first > last {
        return None;
    }
    let mut used = Vec::new();
    for m in maps.into_iter().flat_map(|m| m.split(',')) {
        let (h, d) = m.split_once('@')?;
        used.push((u64::from_str_radix(h, 16).ok()?, first.checked_add(d.parse().ok()?)?));
    }
    Some((first, last, used))
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

/// Where a partition's current batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartState {
    /// No batch: the next message opens one.
    Idle,
    /// A new batch `[first, last]`, opened at `started`; cut by count, bytes or age.
    Open { first: i64, last: i64, started: Instant },
    /// A range `[committed, last]` recorded as pending by an earlier owner is to be rebuilt;
    /// nothing of it has been read yet.
    Pending { first: i64, last: i64 },
    /// Rebuilding a pending range: `first` and `last` are the range's recorded offsets (its
    /// identity; the batch is cut at `last` whatever comes after).
    Replaying { first: i64, last: i64 },
}

struct Part {
    builder: BatchBuilder,
    state: PartState,
}

/// Runs the grouper until `shutdown` fires (then drains: emits open batches and commits).
/// Blocking: call it from a dedicated thread.
///
/// # Errors
/// Infrastructure failures that a restart should handle (Kafka fatal errors, a producer that
/// could not deliver).
pub fn run(cfg: &Config, shutdown: &Shutdown, health: &Health) -> anyhow::Result<()> {
    let hook = sourcemaps_hook(cfg)?;
    let hook = &hook;
    let extra = cfg.grouper.consumers.max(1) - 1;
    if extra == 0 {
        return run_consumer(cfg, shutdown, health, hook.clone());
    }
    // More loops beside this one, each a member of the group: Kafka shares the partitions out.
    // Their health is part of this one's; either loop ending ends the others.
    let healths: Vec<Health> = (1..=extra).map(|i| health.child(&format!("grouper-{i}"))).collect();
    let others = healths
        .iter()
        .map(|h| -> tracefold_runtime::service::Beside<'_> {
            ("grouper".into(), h, Box::new(move || run_consumer(cfg, shutdown, h, hook.clone())))
        })
        .collect();
    tracefold_runtime::service::run_loops(shutdown, others, || run_consumer(cfg, shutdown, health, hook.clone()))
}

/// The source-map hook of `[sourcemaps]`, shared by the process's consumer loops; `None` when
/// `store_url` is empty.
///
/// # Errors
/// When the store URL cannot be used or the fetch runtime cannot start.
pub fn sourcemaps_hook(cfg: &Config) -> anyhow::Result<Option<Hook>> {
    let sm = &cfg.sourcemaps;
    if sm.store_url.is_empty() {
        return Ok(None);
    }
    let store = tracefold_symbolicate::store::ArtifactStore::from_url(&sm.store_url)
        .context("sourcemaps.store_url: cannot open the artifact store")?;
    let opts = tracefold_symbolicate::fetch::FetchOptions {
        cache_entries: sm.cache_entries,
        cache_bytes: sm.cache_bytes,
        max_concurrent_fetches: sm.max_concurrent_fetches.max(1),
        negative_ttl: Duration::from_millis(sm.negative_ttl_ms),
        limits: tracefold_symbolicate::Limits::default(),
    };
    let symbolicator =
        tracefold_symbolicate::fetch::Symbolicator::new(store, opts).context("cannot start the source map fetcher")?;
    tracing::info!(store = %sm.store_url, budget_ms = sm.budget_ms, "minified JavaScript frames are mapped with uploaded source maps");
    Ok(Some(Hook { symbolicator: std::sync::Arc::new(symbolicator), budget: Duration::from_millis(sm.budget_ms) }))
}

/// One consumer loop of the grouper (see [`run`]).
fn run_consumer(cfg: &Config, shutdown: &Shutdown, health: &Health, hook: Option<Hook>) -> anyhow::Result<()> {
    let runtime = ConsumerRuntime::new(&cfg.kafka, &cfg.grouper.group_id, &cfg.topics.events)?
        .with_lost_metric(m::EVENTS_LOST_TOTAL);
    let producer: ThreadedProducer<DeliveryCtx> = tracefold_runtime::kafka::producer_config(&cfg.kafka, 0)
        .create_with_context(DeliveryCtx::default())
        .context("cannot create the grouper's producer")?;
    tracefold_runtime::kafka::check_topics(
        runtime.consumer().client(),
        &[&cfg.topics.events, &cfg.topics.aggregates, &cfg.topics.dlq, &cfg.topics.outcomes],
        Duration::from_secs(10),
    )?;
    let epoch = if cfg.grouper.epoch.is_empty() {
        runtime
            .consumer()
            .client()
            .fetch_cluster_id(Duration::from_secs(10))
            .context("cannot read the Kafka cluster id (set grouper.epoch)")?
    } else {
        cfg.grouper.epoch.clone()
    };
    let mut g = Grouper {
        cfg,
        epoch: &epoch,
        producer: &producer,
        max_message: tracefold_runtime::kafka::message_max_bytes(&cfg.kafka),
        opts: BatchOptions {
            max_users: cfg.grouper.max_users,
            grouping: cfg.grouping.clone(),
            dedup_window: cfg.grouper.dedup_window_events,
        },
        reader: None,
        // Crash tests: `TRACEFOLD_FAILPOINTS=grouper.panic_marker=1` makes every event that
        // contains `tracefold-failpoint-panic` panic inside the per-event fault barrier.
        panic_marker: tracefold_runtime::failpoint::armed("grouper.panic_marker"),
        parts: HashMap::new(),
        max_age: Duration::from_millis(cfg.grouper.batch_max_age_ms),
        last_age_check: Instant::now(),
        losses: runtime.losses(),
        in_flight: None,
        deferred: None,
        hook,
        last_symbolication_log: None,
    };
    tracing::info!(topic = %cfg.topics.events, group = %cfg.grouper.group_id, "grouper started");
    runtime.run(&mut g, shutdown, health)?;
    tracing::info!("grouper stopped");
    Ok(())
}

struct Grouper<'a> {
    cfg: &'a Config,
    epoch: &'a str,
    producer: &'a ThreadedProducer<DeliveryCtx>,
    /// The broker's message size limit: larger aggregates go to the DLQ.
    max_message: usize,
    opts: BatchOptions,
    panic_marker: bool,
    /// Reads the deduplication window of a newly assigned partition (created when needed).
    reader: Option<BaseConsumer>,
    parts: HashMap<i32, Part>,
    max_age: Duration,
    last_age_check: Instant,
    /// Gaps the runtime found (events lost to retention), published as outcomes with the next emit.
    losses: tracefold_runtime::consumer::LossLog,
    /// The emit whose records were produced and whose acknowledgements are outstanding: the
    /// loop goes on reading and parsing meanwhile, and commits past it once every record is
    /// acknowledged (see [`Grouper::settle`]).
    in_flight: Option<InFlight>,
    /// A failure found while settling inside `on_revoke` (which cannot return one), returned by
    /// the next tick.
    deferred: Option<anyhow::Error>,
    /// Source maps, when `[sourcemaps] store_url` is set.
    hook: Option<Hook>,
    /// When degraded symbolication (timeouts, unusable maps) was last logged.
    last_symbolication_log: Option<Instant>,
}

/// One emitted batch: its range, and what it came to.
struct Done {
    partition: i32,
    first: i64,
    last: i64,
    replay: bool,
    events: u64,
    out: BatchOutput,
}

/// An emit produced but not yet acknowledged, and so not yet committed past.
struct InFlight {
    done: Vec<Done>,
    /// Failed deliveries counted before it was produced.
    failed_before: u64,
    /// When the emit began (for the emit-time histogram: cut to commit).
    started: Instant,
}

impl Strategy for Grouper<'_> {
    fn on_assign(&mut self, cx: &mut Ctx<'_>, partitions: &[i32]) -> anyhow::Result<()> {
        for c in cx.committed(partitions)? {
            let mut builder = self.new_builder();
            let state = match (decode_pending_with_maps(&c.metadata), c.offset) {
                (Some((first, last, maps)), Offset::Offset(o)) if o == first => {
                    tracing::info!(partition = c.partition, from = ?c.offset, to = last, maps = maps.len(), "rebuilding an unfinished batch");
                    // The rebuilt batch uses exactly the source maps the first run used.
                    builder.replay_maps(&maps);
                    PartState::Pending { first, last }
                }
                _ => PartState::Idle,
            };
            if let Offset::Offset(start) = c.offset {
                self.prime(cx, &mut builder, c.partition, start)?;
            }
            self.parts.insert(c.partition, Part { builder, state });
        }
        Ok(())
    }

    fn on_revoke(&mut self, cx: &mut Ctx<'_>, partitions: &[i32]) {
        // An emit in flight is finished first (acknowledged, then committed past where the
        // group still lets us): otherwise its next owner would rebuild and publish it again
        // (harmless, the writer drops the copies, but wasted).
        if let Err(e) = self.settle(cx, true) {
            self.deferred.get_or_insert(e);
        }
        // Not emitted, not committed: the next owner rebuilds from the commit.
        for p in partitions {
            self.parts.remove(p);
        }
    }

    fn on_message(&mut self, cx: &mut Ctx<'_>, msg: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        let p = msg.partition();
        let offset = msg.offset();
        if !self.parts.contains_key(&p) {
            let builder = self.new_builder();
            self.parts.insert(p, Part { builder, state: PartState::Idle });
        }
        // A replayed range ends at its recorded last offset, whatever comes after.
        if matches!(self.parts[&p].state, PartState::Replaying { last, .. } if offset > last) {
            self.emit(cx, &[p])?;
        }
        let (max_events, max_bytes) = (self.cfg.grouper.batch_max_events, self.cfg.grouper.batch_max_bytes);
        let part = self.parts.get_mut(&p).expect("inserted above");
        part.state = match part.state {
            PartState::Idle => PartState::Open { first: offset, last: offset, started: Instant::now() },
            PartState::Open { first, started, .. } => PartState::Open { first, last: offset, started },
            // Retention deleted the whole unfinished range (counted as lost): a new batch.
            PartState::Pending { first, last } if offset > last => {
                tracing::warn!(
                    partition = p,
                    first,
                    last,
                    read_from = offset,
                    "an unfinished batch was deleted by retention before it could be rebuilt"
                );
                // A new batch: not bound to the lost range's source maps.
                part.builder.reset();
                PartState::Open { first: offset, last: offset, started: Instant::now() }
            }
            // The batch keeps its recorded identity even when retention deleted the start of
            // the range (those events are counted as lost): the writer then recognises the
            // rebuilt records as the same batch and never stores the surviving part twice.
            PartState::Pending { first, last } => {
                if offset > first {
                    tracing::warn!(partition = p, first, read_from = offset, last, "the start of an unfinished batch was deleted by retention; rebuilding what is left under the batch's identity");
                }
                PartState::Replaying { first, last }
            }
            PartState::Replaying { first, last } => PartState::Replaying { first, last },
        };
        let ts = msg.timestamp().to_millis().unwrap_or(0);
        part.builder.add(msg.payload().unwrap_or(&[]), offset, ts);
        let cut = match part.state {
            PartState::Replaying { last, .. } => offset >= last,
            _ => part.builder.events() >= max_events || part.builder.bytes() >= max_bytes,
        };
        if cut {
            self.emit(cx, &[p])?;
        }
        Ok(())
    }

    fn on_tick(&mut self, cx: &mut Ctx<'_>) -> anyhow::Result<Step> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        self.settle(cx, false)?;
        if self.last_age_check.elapsed() >= Duration::from_millis(50) {
            self.last_age_check = Instant::now();
            let max_age = self.max_age;
            let age = |st: &PartState| match st {
                PartState::Open { started, .. } => Some(started.elapsed()),
                _ => None,
            };
            if self.parts.values().any(|pt| age(&pt.state).is_some_and(|a| a >= max_age)) {
                // Emit every partition that is at least half due with it: one commit, one flush.
                let due: Vec<i32> = self
                    .parts
                    .iter()
                    .filter(|(_, pt)| age(&pt.state).is_some_and(|a| a >= max_age / 2))
                    .map(|(p, _)| *p)
                    .collect();
                self.emit(cx, &due)?;
            }
        }
        Ok(Step::Continue)
    }

    fn on_shutdown(&mut self, cx: &mut Ctx<'_>) -> anyhow::Result<()> {
        let open: Vec<i32> =
            self.parts.iter().filter(|(_, pt)| matches!(pt.state, PartState::Open { .. })).map(|(p, _)| *p).collect();
        self.emit(cx, &open)?;
        self.settle(cx, true)?;
        self.producer.flush(Duration::from_secs(30)).context("final flush")?;
        // A "past the batch" commit that failed gets a last try from the runtime; if it fails
        // again, a restart rebuilds those batches and the writer recognises them as replays.
        Ok(())
    }
}

impl Grouper<'_> {
    /// Logs events grouped without their maps because of timeouts or unusable maps, at most
    /// once a minute (the metric counts every one; `missing` is normal and only logged at debug).
    fn log_symbolication(&mut self, out: &BatchOutput) {
        use crate::symbolicate::Outcome;
        let n = |o: Outcome| out.symbolication[o.index()];
        if n(Outcome::Missing) > 0 {
            tracing::debug!(missing = n(Outcome::Missing), "events with minified frames and no source map");
        }
        let (timeout, malformed) = (n(Outcome::Timeout), n(Outcome::Malformed));
        if timeout + malformed == 0
            || self.last_symbolication_log.is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        self.last_symbolication_log = Some(Instant::now());
        tracing::warn!(
            timeout,
            malformed,
            "events grouped without their source maps (fetch slower than sourcemaps.budget_ms, or unusable maps); see tracefold_grouper_symbolication_total"
        );
    }

    fn new_builder(&self) -> BatchBuilder {
        let mut b = BatchBuilder::new(self.opts.clone());
        if let Some(h) = &self.hook {
            b = b.with_sourcemaps(h.clone());
        }
        if self.panic_marker {
            b.inject_panic_on(b"tracefold-failpoint-panic");
        }
        b
    }

    /// Reads `[start - dedup_window, start)` of `partition` (what the broker still has of it)
    /// into `builder`'s deduplication window, so that it decides as a grouper that had read
    /// the partition from the start would.
    fn prime(&mut self, cx: &Ctx<'_>, builder: &mut BatchBuilder, partition: i32, start: i64) -> anyhow::Result<()> {
        let span = i64::try_from(self.opts.dedup_window).unwrap_or(i64::MAX);
        if span == 0 || start <= 0 {
            return Ok(());
        }
        let topic = &self.cfg.topics.events;
        if self.reader.is_none() {
            let reader: BaseConsumer = tracefold_runtime::kafka::consumer_config(
                &self.cfg.kafka,
                &format!("{}-dedup", self.cfg.grouper.group_id),
            )
            .set("enable.partition.eof", "true")
            .set("statistics.interval.ms", "0")
            .create()
            .context("cannot create the deduplication window's reader")?;
            self.reader = Some(reader);
        }
        let reader = self.reader.as_ref().expect("created above");
        let (low, _) = reader
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .context("cannot read the log start of a partition for the deduplication window")?;
        let from = start.saturating_sub(span).max(low);
        if from >= start {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(from)).context("deduplication window")?;
        reader.assign(&tpl).context("cannot read the deduplication window")?;
        let t0 = Instant::now();
        let (mut read, mut last_progress) = (0u64, Instant::now());
        loop {
            cx.beat();
            match reader.poll(Duration::from_millis(100)) {
                Some(Ok(msg)) => {
                    last_progress = Instant::now();
                    if msg.offset() >= start {
                        break;
                    }
                    builder.prime(msg.payload().unwrap_or(&[]), msg.offset(), msg.timestamp().to_millis().unwrap_or(0));
                    read += 1;
                    if msg.offset() + 1 >= start {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, partition, "reading the deduplication window");
                }
                None => {}
            }
            if last_progress.elapsed() > PRIME_STALL {
                // Deduplication is then weaker at the start of this assignment; counts are
                // still exact for every event read once.
                tracing::warn!(partition, from, start, read, "the deduplication window could not be read completely");
                metrics::counter!(m::DEDUP_WINDOW_INCOMPLETE_TOTAL).increment(1);
                break;
            }
        }
        reader.unassign().context("deduplication window")?;
        tracing::info!(
            partition,
            from,
            to = start,
            read,
            ids = builder.window().len(),
            ms = t0.elapsed().as_millis() as u64,
            "deduplication window read"
        );
        Ok(())
    }

    /// Emits the open batches of `which` partitions: records their ranges (one synchronous
    /// commit) and produces all their records. It does not wait for the acknowledgements: the
    /// loop reads on, and [`Self::settle`] commits past the ranges once they are all in. The
    /// emit before is settled first, so that a range is never recorded over an unacknowledged
    /// batch of the same partition.
    fn emit(&mut self, cx: &mut Ctx<'_>, which: &[i32]) -> anyhow::Result<()> {
        self.settle(cx, true)?;
        let t0 = Instant::now();
        let _span = tracing::info_span!("emit", group = %self.cfg.grouper.group_id, epoch = %self.epoch).entered();
        let topic = &self.cfg.topics.events;
        let mut done: Vec<Done> = Vec::with_capacity(which.len());
        for &partition in which {
            let Some(part) = self.parts.get_mut(&partition) else { continue };
            let (first, last, replay) = match part.state {
                PartState::Open { first, last, .. } => (first, last, false),
                PartState::Replaying { first, last } => (first, last, true),
                PartState::Idle | PartState::Pending { .. } => continue,
            };
            let events = part.builder.events();
            let out = part.builder.finish(self.epoch, topic, partition, first, last);
            done.push(Done { partition, first, last, replay, events, out });
            part.state = PartState::Idle;
        }
        if done.is_empty() {
            return Ok(());
        }
        let pending: Vec<(i32, i64, String)> = done
            .iter()
            .filter(|d| !d.replay)
            .map(|d| (d.partition, d.first, encode_pending_with_maps(d.first, d.last, &d.out.maps_used)))
            .collect();
        if !pending.is_empty() {
            let failed = if tracefold_runtime::failpoint::trip("grouper.range_commit_fails") {
                Err(anyhow::anyhow!("failpoint grouper.range_commit_fails"))
            } else {
                cx.commit_ranges(&pending)
            };
            if let Err(e) = failed {
                // Most likely a partition was revoked: its next owner reads from the last
                // commit. Rewind, so that these ranges are read again if they are still ours.
                tracing::warn!(error = %format!("{e:#}"), "cannot record the batch ranges; rewinding");
                for d in done.iter().filter(|d| !d.replay) {
                    if !rewind(cx, d.partition, d.first)? {
                        continue;
                    }
                    // The window moved past `first`: read it again up to there.
                    if let Some(mut part) = self.parts.remove(&d.partition) {
                        part.builder.clear_window();
                        let primed = self.prime(cx, &mut part.builder, d.partition, d.first);
                        self.parts.insert(d.partition, part);
                        primed?;
                    }
                }
                done.retain(|d| d.replay);
            } else {
                // The range commit superseded a failed "past the batch" commit of its partition.
                // Crash tests: die with the ranges recorded and nothing produced yet.
                tracefold_runtime::failpoint::hit("grouper.after_pending_commit");
            }
        }
        let failed_before = self.produce(&done.iter().map(|d| (&d.out, d.partition)).collect::<Vec<_>>())?;
        self.in_flight = Some(InFlight { done, failed_before, started: t0 });
        Ok(())
    }

    /// Finishes the emit in flight, if any: once every record it produced is acknowledged
    /// (waiting for them when `wait`, otherwise returning at once while some are outstanding),
    /// commits past its ranges and counts its batches.
    ///
    /// # Errors
    /// A record was not delivered (a restart rebuilds the batch from its recorded range).
    fn settle(&mut self, cx: &mut Ctx<'_>, wait: bool) -> anyhow::Result<()> {
        if self.in_flight.is_none() {
            return Ok(());
        }
        if wait {
            // Wait for every acknowledgement; the producer retries until delivered. Once the
            // service is stopping, for at most STOP_ACK_WAIT more: a stop must end while Kafka
            // does not acknowledge (it waited for ever, deaf to SIGTERM). Nothing is committed
            // past the batch then: the next start rebuilds it from its recorded range.
            let mut stopping_since: Option<Instant> = None;
            loop {
                // Waiting for Kafka is not a stall of this loop: restarting would not help.
                cx.beat();
                match self.producer.flush(Duration::from_secs(10)) {
                    Ok(()) => break,
                    Err(e) => {
                        let in_flight = self.producer.in_flight_count();
                        tracing::warn!(error = %e, in_flight, "waiting for Kafka to acknowledge aggregates");
                        if cx.stopping() && stopping_since.get_or_insert_with(Instant::now).elapsed() >= STOP_ACK_WAIT {
                            anyhow::bail!(
                                "stopping: Kafka did not acknowledge {in_flight} aggregate records within {} s ({e}); \
                                 nothing was committed past their batches, the next start rebuilds them",
                                STOP_ACK_WAIT.as_secs()
                            );
                        }
                    }
                }
            }
        } else if self.producer.in_flight_count() > 0 {
            return Ok(());
        }
        let InFlight { done, failed_before, started } = self.in_flight.take().expect("checked above");
        let failed = self.producer.context().failed.load(Ordering::SeqCst) - failed_before;
        if failed > 0 {
            let err = self.producer.context().last_error.lock().expect("not poisoned").clone();
            anyhow::bail!(
                "{failed} aggregate records were not delivered ({}); restarting rebuilds the batch",
                err.unwrap_or_default()
            );
        }
        // Crash tests: die after the aggregates are acknowledged, before committing past them.
        tracefold_runtime::failpoint::hit("grouper.after_produce");
        let past: Vec<(i32, i64)> = done.iter().map(|d| (d.partition, d.last + 1)).collect();
        // A failed commit is kept and tried again by the runtime until it succeeds or a newer
        // range commit supersedes it.
        cx.commit(&past)?;
        for d in &done {
            let out = &d.out;
            metrics::counter!(m::EVENTS_TOTAL, "outcome" => "accepted").increment(out.accepted);
            metrics::counter!(m::EVENTS_TOTAL, "outcome" => "rejected").increment(out.rejected.len() as u64);
            metrics::counter!(m::EVENTS_TOTAL, "outcome" => "duplicate").increment(out.duplicates.len() as u64);
            metrics::counter!(m::CLAMPED_TOTAL).increment(out.clamped);
            metrics::counter!(m::SAMPLES_TRUNCATED_TOTAL).increment(out.samples_truncated);
            for o in crate::symbolicate::Outcome::ALL {
                let n = out.symbolication[o.index()];
                if n > 0 {
                    metrics::counter!(m::SYMBOLICATION_TOTAL, "outcome" => o.label()).increment(n);
                }
            }
            self.log_symbolication(out);
            if out.merged_from_dropped > 0 {
                metrics::counter!(m::MERGED_FROM_DROPPED_TOTAL).increment(out.merged_from_dropped);
                tracing::warn!(
                    partition = d.partition,
                    dropped = out.merged_from_dropped,
                    "merge facts of late source maps left out (an aggregate names at most 8 merged issues); see tracefold_grouper_merged_from_dropped_total"
                );
            }
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
                duplicates = out.duplicates.len(),
                replay = d.replay,
                "batch emitted"
            );
        }
        metrics::histogram!(m::EMIT_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Produces the batches' records (and the outcomes of retention gaps found since the last
    /// emit) without waiting for acknowledgements. Returns the failed deliveries counted before.
    fn produce(&self, outs: &[(&BatchOutput, i32)]) -> anyhow::Result<u64> {
        let failed_before = self.producer.context().failed.load(Ordering::SeqCst);
        self.producer.context().acked.store(0, Ordering::SeqCst);
        let mut payload = Vec::with_capacity(4096);
        self.produce_lost(&mut payload)?;
        for (out, partition) in outs {
            self.produce_one(out, *partition, &mut payload)?;
        }
        Ok(failed_before)
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
        self.produce_outcomes(out, partition, payload)
    }

    /// Outcome records of the gaps found since the last emit (before the commit past them: a
    /// restart from the same commit finds the gap again).
    fn produce_lost(&self, payload: &mut Vec<u8>) -> anyhow::Result<()> {
        let losses = tracefold_runtime::consumer::take_losses(&self.losses);
        for r in crate::outcomes::lost_outcomes(&losses, self.epoch, &self.cfg.topics.events) {
            payload.clear();
            serde_json::to_writer(&mut *payload, &r).context("serialize outcome")?;
            self.send(BaseRecord::to(&self.cfg.topics.outcomes).key(&r.project).payload(payload.as_slice()))?;
        }
        Ok(())
    }

    /// The batch's outcome records (what went to the DLQ, the re-sent copies), produced with it.
    fn produce_outcomes(&self, out: &BatchOutput, partition: i32, payload: &mut Vec<u8>) -> anyhow::Result<()> {
        let topic = &self.cfg.topics.events;
        let dlq = crate::outcomes::dlq_outcomes(out, self.epoch, topic, partition);
        let dup = crate::outcomes::duplicate_outcomes(out, self.epoch, topic, partition);
        for r in dlq.into_iter().chain(dup) {
            payload.clear();
            serde_json::to_writer(&mut *payload, &r).context("serialize outcome")?;
            self.send(BaseRecord::to(&self.cfg.topics.outcomes).key(&r.project).payload(payload.as_slice()))?;
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

/// Seeks of a rewind tried before the loop gives up.
const REWIND_TRIES: u32 = 5;

/// Seeks `partition` back to `first`, the start of a batch whose range could not be recorded,
/// so that the range is read again: tried [`REWIND_TRIES`] times. Returns false when the
/// partition is no longer ours (revoked meanwhile: its next owner reads from the last commit).
///
/// # Errors
/// The partition is still ours and the seek keeps failing. Going on would read past the range
/// and commit over it (its events never counted); the loop ends instead (the process exits
/// non-zero and is restarted), and the restart reads the range again from the last commit.
fn rewind(cx: &mut Ctx<'_>, partition: i32, first: i64) -> anyhow::Result<bool> {
    let mut tries = 0;
    loop {
        tries += 1;
        let sought = if tracefold_runtime::failpoint::trip_first("grouper.rewind_seek_fails") {
            Err(anyhow::anyhow!("failpoint grouper.rewind_seek_fails"))
        } else {
            cx.seek(partition, first)
        };
        let Err(e) = sought else { return Ok(true) };
        let topic = cx.topic().to_owned();
        let ours = match cx.consumer().assignment() {
            Ok(a) => a.find_partition(&topic, partition).is_some(),
            // Unknown: taken for ours (ending the loop is safe, going on is not).
            Err(_) => true,
        };
        if !ours {
            tracing::info!(
                partition,
                first,
                "the partition of an unrecorded batch was revoked; its next owner reads it"
            );
            return Ok(false);
        }
        metrics::counter!(m::REWIND_SEEK_FAILURES_TOTAL).increment(1);
        if tries >= REWIND_TRIES {
            tracing::error!(error = %format!("{e:#}"), partition, first, tries, "cannot seek back to a batch whose range was not recorded; stopping, a restart reads it again from the last commit");
            return Err(e.context(format!(
                "cannot seek partition {partition} back to offset {first}, the start of a batch whose range was not recorded"
            )));
        }
        tracing::warn!(error = %format!("{e:#}"), partition, first, tries, "cannot seek back to a batch whose range was not recorded; trying again");
        cx.beat();
        std::thread::sleep(Duration::from_millis(200));
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
        let maps = [(u64::MAX, 10), (7, 57)];
        let meta = encode_pending_with_maps(10, 99, &maps);
        assert_eq!(meta, "tracefold:v1:10:99:m=ffffffffffffffff@0,0000000000000007@47");
        assert_eq!(decode_pending_with_maps(&meta), Some((10, 99, maps.to_vec())));
        assert_eq!(decode_pending(&meta), Some((10, 99)));
        assert_eq!(encode_pending_with_maps(10, 99, &[]), encode_pending(10, 99));
        assert_eq!(decode_pending_with_maps("tracefold:v1:1:2:x=1"), None);
        assert_eq!(decode_pending_with_maps("tracefold:v1:1:2:m=zz@1"), None);
        // The most maps a batch records fit Kafka's default metadata limit.
        let most: Vec<(u64, i64)> = (0..64).map(|i| (u64::MAX - i, i64::MAX - 1)).collect();
        assert!(encode_pending_with_maps(0, i64::MAX, &most).len() < 4096);
    }
}
