//! The consumer runtime: one poll loop for every consumer service (grouper, writer, detector).
//!
//! The loop owns what every consumer must get right, once:
//!
//! - **Polling** on a dedicated thread (a synchronous [`BaseConsumer`]), with a liveness beat
//!   ([`Health::beat`]) every round, also while it waits.
//! - **Assignment and revocation**: the [`GroupContext`] queues rebalance events; after each
//!   poll the loop hands them to the strategy ([`Strategy::on_assign`],
//!   [`Strategy::on_revoke`]) and forgets the commits wanted for revoked partitions.
//! - **Commits** through the [`CommitQueue`]: synchronous, one at a time, a failed one kept
//!   and tried again from the loop every 500 ms until it succeeds, is superseded, or the
//!   partition is revoked. Commits with metadata ([`Ctx::commit_ranges`]) serve the grouper's
//!   replayable batch ranges; [`Ctx::committed`] reads offsets and metadata back on
//!   assignment.
//! - **The DLQ**: records sent with [`Ctx::send_dlq`] are acknowledged by the broker before
//!   any commit the strategy asks for ([`Ctx::commit`]): a DLQ record that never arrived is
//!   read again from its source, not skipped.
//! - **Back-off**: a strategy whose sink is down returns [`Step::Backoff`] from
//!   [`Strategy::on_tick`]; the loop pauses every assigned partition (and those assigned
//!   meanwhile), reports not-ready, keeps polling so that the group keeps its member (a message
//!   that slips through is sought back to and not delivered), and ticks again after the delay.
//!   The first [`Step::Continue`] resumes the partitions.
//! - **Loss is never silent**: the loop knows each partition's next offset (the group's commit
//!   on assignment, then the last message delivered plus one). When a message arrives past it,
//!   the consumer skipped ahead; if the skipped offsets are below the broker's log start, retention
//!   deleted them before the group read them (it was behind or down), and the loop logs an ERROR
//!   with the exact number lost and counts it in the service's
//!   `..._events_lost_total{topic, partition}`. Skipped offsets above the log start are still
//!   on the broker: the loop seeks back and reads them before the message after the gap (a
//!   gap that is still there when read again is real, transaction markers or compaction, and
//!   is passed). A group that never committed starts at the log start (`earliest`) and has
//!   lost nothing.
//! - **Fatal errors**: a fatal consumer error, or an error returned by the strategy, ends the
//!   loop with `Err` (the service exits and is restarted).
//! - **Graceful drain**: when the shutdown signal fires, readiness goes false,
//!   [`Strategy::on_shutdown`] finishes or abandons its work (and commits what it finished),
//!   the DLQ is flushed, a failed commit gets a last try, and the consumer leaves the group.
//!
//! A service is a [`Strategy`]: what to do with a message, what to do periodically (cut a
//! batch by age, flush, evaluate), what to keep or drop on a rebalance, how to drain.
//! The strategy never polls the consumer itself.

use crate::config::KafkaConfig;
use crate::kafka::{CommitQueue, DlqRecord, GroupContext, RebalanceEvent};
use crate::telemetry::Health;
use crate::Shutdown;
use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// How long one poll waits for a message: also the longest time between two ticks.
const POLL: Duration = Duration::from_millis(100);
/// How long the DLQ may take to acknowledge what was sent to it before a commit.
const DLQ_ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a strategy's periodic step asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Go on polling (and resume the partitions if they were paused).
    Continue,
    /// The sink is unavailable: pause every partition, keep the group membership, and tick
    /// again after this delay.
    Backoff(Duration),
}

/// A partition's committed position, as [`Ctx::committed`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The partition.
    pub partition: i32,
    /// The committed offset (`Offset::Invalid` when the group committed none).
    pub offset: Offset,
    /// The commit metadata (empty when none).
    pub metadata: String,
}

/// A consumer service's logic, driven by [`ConsumerRuntime::run`]. Every method runs on the
/// loop's thread, between two polls; none may poll the consumer.
pub trait Strategy {
    /// `partitions` are now ours; reading starts at their committed offsets.
    ///
    /// # Errors
    /// Ends the loop (a restart handles it).
    fn on_assign(&mut self, cx: &mut Ctx<'_>, partitions: &[i32]) -> anyhow::Result<()>;

    /// `partitions` are no longer ours: drop their uncommitted work (the next owner reads it
    /// again from the last commit). Their wanted commits are forgotten after this returns.
    fn on_revoke(&mut self, cx: &mut Ctx<'_>, partitions: &[i32]);

    /// One message of an assigned, unpaused partition.
    ///
    /// # Errors
    /// Ends the loop. A bad message is not an error: send it to the DLQ ([`Ctx::send_dlq`]).
    fn on_message(&mut self, cx: &mut Ctx<'_>, msg: &BorrowedMessage<'_>) -> anyhow::Result<()>;

    /// Periodic work, after every poll (at least every 100 ms): cut batches by age, flush,
    /// evaluate, commit.
    ///
    /// # Errors
    /// Ends the loop.
    fn on_tick(&mut self, cx: &mut Ctx<'_>) -> anyhow::Result<Step>;

    /// Shutdown: finish (or abandon) the work held and commit what was finished.
    ///
    /// # Errors
    /// Returned by [`ConsumerRuntime::run`] (after the consumer left the group).
    fn on_shutdown(&mut self, cx: &mut Ctx<'_>) -> anyhow::Result<()>;
}

/// What a strategy may do with the consumer: commit, read commits, seek, publish to the DLQ,
/// and beat while it waits.
pub struct Ctx<'a> {
    consumer: &'a BaseConsumer<GroupContext>,
    commits: &'a mut CommitQueue,
    dlq: Option<&'a Dlq>,
    health: &'a Health,
    topic: &'a str,
    /// The commits of the partitions being assigned, read once by the loop for its own offset
    /// tracking and handed to [`Strategy::on_assign`] through [`Ctx::committed`].
    assigned: Vec<Committed>,
    /// The loop's next offset per partition ([`Tracking::next`]): a seek back through
    /// [`Ctx::seek`] lowers it, so that what the seek reads again is delivered again.
    next: &'a mut std::collections::HashMap<i32, i64>,
    /// The service's shutdown signal ([`Ctx::stopping`]).
    shutdown: &'a Shutdown,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("topic", &self.topic).field("commits", &self.commits).finish_non_exhaustive()
    }
}

impl Ctx<'_> {
    /// The consumer (for metadata; never poll it, and seek with [`Self::seek`]: the loop does
    /// not deliver again offsets it delivered that a seek of the consumer's own reads again).
    pub fn consumer(&self) -> &BaseConsumer<GroupContext> {
        self.consumer
    }

    /// The topic this loop consumes.
    pub fn topic(&self) -> &str {
        self.topic
    }

    /// A liveness beat: waiting on Kafka or a sink is progress of a kind.
    pub fn beat(&self) {
        self.health.beat();
    }

    /// Whether the service was asked to stop (also during [`Strategy::on_shutdown`]): a
    /// strategy that waits on Kafka or a sink without end while running bounds that wait once
    /// it is stopping, and leaves what it did not finish (uncommitted) to the next start.
    pub fn stopping(&self) -> bool {
        self.shutdown.is_triggered()
    }

    /// Commits `offsets` (partition, next offset to read): first waits for the DLQ to
    /// acknowledge what was sent to it, then commits synchronously. A failed commit is kept
    /// and tried again by the loop. Returns whether the commit succeeded now.
    ///
    /// # Errors
    /// The DLQ did not acknowledge: nothing is committed (the caller retries later).
    pub fn commit(&mut self, offsets: &[(i32, i64)]) -> anyhow::Result<bool> {
        self.flush_dlq()?;
        for (p, o) in offsets {
            self.commits.set(*p, *o);
        }
        Ok(self.commits.commit(self.consumer))
    }

    /// Whether commits wait to be made (a failed one that the loop tries again).
    pub fn commits_pending(&self) -> bool {
        !self.commits.is_empty()
    }

    /// Commits (partition, offset, metadata) synchronously, now, without retries: a record of
    /// work about to be done (the grouper's pending batch ranges). On success it supersedes
    /// the wanted commits of those partitions.
    ///
    /// # Errors
    /// The commit failed (most likely a partition was revoked), or the DLQ did not acknowledge.
    pub fn commit_ranges(&mut self, ranges: &[(i32, i64, String)]) -> anyhow::Result<()> {
        self.flush_dlq()?;
        self.commits.commit_now(self.consumer, ranges)?;
        Ok(())
    }

    /// The committed offsets and metadata of `partitions`.
    ///
    /// # Errors
    /// The group coordinator did not answer.
    pub fn committed(&self, partitions: &[i32]) -> anyhow::Result<Vec<Committed>> {
        // Inside `on_assign` the loop has just read them: no second round trip.
        if partitions.iter().all(|p| self.assigned.iter().any(|c| c.partition == *p)) {
            return Ok(self.assigned.iter().filter(|c| partitions.contains(&c.partition)).cloned().collect());
        }
        read_committed(self.consumer, self.topic, partitions)
    }

    /// Moves the read position of `partition` back to `offset`: the messages from there on are
    /// delivered again. Seek back only: a jump forward over offsets the broker holds is taken
    /// for a skip, and the loop reads them again.
    ///
    /// # Errors
    /// The seek failed (the partition was revoked meanwhile, or the consumer did not answer in
    /// time): the position may be unchanged, and the loop does not deliver again what it
    /// delivered.
    pub fn seek(&mut self, partition: i32, offset: i64) -> anyhow::Result<()> {
        self.consumer
            .seek(self.topic, partition, Offset::Offset(offset), Duration::from_secs(5))
            .with_context(|| format!("cannot seek partition {partition} to offset {offset}"))?;
        if let Some(next) = self.next.get_mut(&partition) {
            *next = (*next).min(offset);
        }
        Ok(())
    }

    /// Sends a record to the DLQ (non-blocking); [`Self::commit`] waits for its
    /// acknowledgement.
    ///
    /// # Errors
    /// No DLQ was configured, or the record cannot be enqueued.
    pub fn send_dlq(&self, rec: DlqRecord<'_>) -> anyhow::Result<()> {
        let dlq = self.dlq.context("this consumer has no DLQ")?;
        dlq.producer
            .send(BaseRecord::to(&dlq.topic).key(&rec.key).payload(rec.payload).headers(rec.headers))
            .map_err(|(e, _)| e)
            .context("cannot enqueue a DLQ message")
    }

    fn flush_dlq(&self) -> anyhow::Result<()> {
        if let Some(dlq) = self.dlq {
            if dlq.producer.in_flight_count() > 0 {
                dlq.producer.flush(DLQ_ACK_TIMEOUT).context("the DLQ did not acknowledge its records")?;
            }
        }
        Ok(())
    }
}

struct Dlq {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
}

/// One consumer of one topic in one group, with its commit queue and optional DLQ producer.
pub struct ConsumerRuntime {
    consumer: BaseConsumer<GroupContext>,
    commits: CommitQueue,
    dlq: Option<Dlq>,
    topic: String,
    group: String,
    /// What the loop knows of each partition's offsets, and the losses it found.
    track: Tracking,
}

/// What a consumer loop knows of its partitions' offsets, and the losses it found.
#[derive(Debug)]
struct Tracking {
    /// Next offset per assigned partition: the last message delivered here plus one.
    next: std::collections::HashMap<i32, i64>,
    /// The counter of messages lost to retention (labels `topic`, `partition`).
    lost_metric: &'static str,
    /// Messages lost to retention since this runtime started (also in `lost_metric`).
    lost: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Each loss, for strategies that report them further (the grouper's outcome records).
    losses: LossLog,
    /// Per partition, the gap above the log start the loop sought back over to read it again:
    /// (first offset skipped, offset delivered after the gap). A gap still there when read
    /// again is real (transaction markers, compaction) and is passed.
    rereads: std::collections::HashMap<i32, (i64, i64)>,
    /// Per partition, the next offset when the consumer went back to offsets it had delivered
    /// without a seek of ours (an offset reset, say): until it is back there, nothing is
    /// delivered again (see [`behind`]).
    behind: std::collections::HashMap<i32, i64>,
}

/// One gap of messages deleted by retention before the group read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loss {
    /// The partition.
    pub partition: i32,
    /// The offset the group was to read next: the first one lost (the gap's identity, the same
    /// when a restart from the same commit finds the same gap).
    pub expected: i64,
    /// How many messages were lost.
    pub lost: u64,
    /// The timestamp of the first message read after the gap, Unix milliseconds (0 when the
    /// broker gave none).
    pub next_timestamp_ms: i64,
}

/// The losses a runtime found, queued for its strategy ([`LossLog::take`]); they are queued
/// before the message after the gap reaches [`Strategy::on_message`].
pub type LossLog = std::sync::Arc<std::sync::Mutex<Vec<Loss>>>;

/// Takes the losses queued in `log`, oldest first.
pub fn take_losses(log: &LossLog) -> Vec<Loss> {
    std::mem::take(&mut *log.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// The messages of `topic` partition `partition` that a consumer will never see: its next
/// offset `next` is below the broker's log start `low`.
pub fn lost_to_retention(next: i64, low: i64) -> u64 {
    u64::try_from(low.saturating_sub(next)).unwrap_or(0)
}

impl std::fmt::Debug for ConsumerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerRuntime")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl ConsumerRuntime {
    /// A consumer of `topic` in group `group` with tracefold's consumer defaults (manual
    /// commits, no automatic offset store). It subscribes in [`Self::run`].
    ///
    /// # Errors
    /// librdkafka refused the configuration.
    pub fn new(kafka: &KafkaConfig, group: &str, topic: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer<GroupContext> = crate::kafka::consumer_config(kafka, group)
            .create_with_context(GroupContext::new(group))
            .with_context(|| format!("cannot create the consumer of group {group}"))?;
        Ok(Self {
            consumer,
            commits: CommitQueue::new(topic, group),
            dlq: None,
            topic: topic.to_owned(),
            group: group.to_owned(),
            track: Tracking {
                next: std::collections::HashMap::new(),
                lost_metric: "tracefold_kafka_events_lost_total",
                lost: Default::default(),
                losses: Default::default(),
                rereads: std::collections::HashMap::new(),
                behind: std::collections::HashMap::new(),
            },
        })
    }

    /// Messages this runtime found deleted by retention before it read them (a handle that
    /// stays valid after [`Self::run`] consumed the runtime).
    pub fn lost(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.track.lost.clone()
    }

    /// Every loss this runtime finds, queued (a handle that stays valid after [`Self::run`]
    /// consumed the runtime): drain it with [`take_losses`].
    pub fn losses(&self) -> LossLog {
        self.track.losses.clone()
    }

    /// Names the counter of messages lost to retention (`tracefold_<service>_events_lost_total`).
    pub fn with_lost_metric(mut self, name: &'static str) -> Self {
        self.track.lost_metric = name;
        self
    }

    /// Adds a DLQ producer (idempotent, retrying until delivered) for `dlq_topic`.
    ///
    /// # Errors
    /// librdkafka refused the configuration.
    pub fn with_dlq(mut self, kafka: &KafkaConfig, dlq_topic: &str) -> anyhow::Result<Self> {
        let producer = crate::kafka::producer_config(kafka, 0).create().context("cannot create the DLQ producer")?;
        self.dlq = Some(Dlq { producer, topic: dlq_topic.to_owned() });
        Ok(self)
    }

    /// The consumer, for what a service reads before it runs (cluster id, topic checks).
    pub fn consumer(&self) -> &BaseConsumer<GroupContext> {
        &self.consumer
    }

    /// Subscribes, marks `health` ready, and drives `strategy` until `shutdown` fires; then
    /// drains (see the module docs). Blocking: call it from a dedicated thread.
    ///
    /// # Errors
    /// A fatal consumer error, or an error of the strategy.
    pub fn run<S: Strategy>(mut self, strategy: &mut S, shutdown: &Shutdown, health: &Health) -> anyhow::Result<()> {
        self.consumer.subscribe(&[&self.topic]).context("cannot subscribe")?;
        health.set_ready(true);
        tracing::info!(topic = %self.topic, group = %self.group, "consumer started");
        let result = self.poll_loop(strategy, shutdown, health);
        health.set_ready(false);
        let drained = match result {
            Ok(()) => {
                tracing::info!(group = %self.group, "draining");
                let mut cx = Ctx {
                    consumer: &self.consumer,
                    commits: &mut self.commits,
                    dlq: self.dlq.as_ref(),
                    health,
                    topic: &self.topic,
                    assigned: Vec::new(),
                    next: &mut self.track.next,
                    shutdown,
                };
                strategy.on_shutdown(&mut cx)
            }
            Err(e) => Err(e),
        };
        if let Some(dlq) = &self.dlq {
            if let Err(e) = dlq.producer.flush(DLQ_ACK_TIMEOUT) {
                tracing::warn!(error = %e, "the DLQ did not acknowledge every record before the end");
            }
        }
        if drained.is_ok() && !self.commits.is_empty() && !self.commits.commit(&self.consumer) {
            tracing::warn!(group = %self.group, "final commit failed; a restart reads those messages again");
        }
        self.consumer.unsubscribe();
        tracing::info!(group = %self.group, "consumer stopped");
        drained
    }

    fn poll_loop<S: Strategy>(&mut self, strategy: &mut S, shutdown: &Shutdown, health: &Health) -> anyhow::Result<()> {
        let mut paused = false;
        // While backing off: when to tick again.
        let mut retry_at: Option<Instant> = None;
        while !shutdown.is_triggered() {
            health.beat();
            let msg = self.consumer.poll(POLL);
            let mut cx = Ctx {
                consumer: &self.consumer,
                commits: &mut self.commits,
                dlq: self.dlq.as_ref(),
                health,
                topic: &self.topic,
                assigned: Vec::new(),
                next: &mut self.track.next,
                shutdown,
            };
            for ev in self.consumer.context().take_events() {
                match ev {
                    RebalanceEvent::Revoked(ps) => {
                        strategy.on_revoke(&mut cx, &ps);
                        cx.commits.forget(&ps);
                        for p in &ps {
                            cx.next.remove(p);
                            self.track.rereads.remove(p);
                            self.track.behind.remove(p);
                        }
                        tracing::info!(partitions = ?ps, "partitions revoked");
                    }
                    RebalanceEvent::Assigned(ps) => {
                        for p in &ps {
                            self.track.rereads.remove(p);
                            self.track.behind.remove(p);
                        }
                        cx.assigned = expect_committed(&self.consumer, &self.topic, &ps, cx.next);
                        if paused {
                            pause_all(&self.consumer);
                        }
                        strategy.on_assign(&mut cx, &ps)?;
                        cx.assigned.clear();
                        tracing::info!(partitions = ?ps, "partitions assigned");
                    }
                }
            }
            // A message past its partition's next offset: checked before the strategy sees it.
            let mut deliver = true;
            if let Some(Ok(m)) = msg.as_ref().filter(|_| !paused) {
                let p = m.partition();
                // The gap this partition was sought back over, if any: settled by this message.
                // (Almost always none: no hash of the partition for every message then.)
                let reread = if self.track.rereads.is_empty() { None } else { self.track.rereads.remove(&p) };
                if let Some(&expected) = self.track.next.get(&p) {
                    // When the skipped offsets are read again, this message is not delivered
                    // now: it comes again after them. One already delivered is not delivered
                    // again (unless the strategy sought back to it).
                    deliver = if m.offset() < expected {
                        behind(&self.topic, &self.group, &mut self.track, p, m.offset(), expected);
                        false
                    } else {
                        m.offset() == expected
                            || gap(&self.consumer, &self.topic, &self.group, &mut self.track, m, expected, reread)
                                == Gap::Pass
                    };
                    if let Some((from, got)) = reread.filter(|&(from, _)| m.offset() == from) {
                        tracing::warn!(
                            group = %self.group,
                            topic = %self.topic,
                            partition = p,
                            from,
                            to = got - 1,
                            "offsets the consumer had skipped were read again"
                        );
                    }
                }
            }
            let mut cx = Ctx {
                consumer: &self.consumer,
                commits: &mut self.commits,
                dlq: self.dlq.as_ref(),
                health,
                topic: &self.topic,
                assigned: Vec::new(),
                next: &mut self.track.next,
                shutdown,
            };
            match msg {
                Some(Ok(m)) if paused => {
                    // Assigned during the pause and not paused yet: read it again later (the
                    // next offset stays: this message was not delivered).
                    let (p, o) = (m.partition(), m.offset());
                    if let Err(e) = self.consumer.seek(&self.topic, p, Offset::Offset(o), Duration::from_secs(5)) {
                        tracing::warn!(error = %e, partition = p, offset = o, "cannot seek");
                    }
                    pause_all(&self.consumer);
                }
                // Not delivered when the skipped offsets are read again first, or when it was
                // delivered already.
                Some(Ok(m)) if deliver => {
                    if !self.track.behind.is_empty() {
                        self.track.behind.remove(&m.partition());
                    }
                    cx.next.insert(m.partition(), m.offset() + 1);
                    health.consumed_one();
                    strategy.on_message(&mut cx, &m)?;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if let KafkaError::MessageConsumptionFatal(_) = e {
                        return Err(e).context("fatal consumer error");
                    }
                    tracing::warn!(error = %e, "consumer error");
                }
                None => {}
            }
            cx.commits.retry_due(&self.consumer);
            if retry_at.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            match strategy.on_tick(&mut cx)? {
                Step::Continue => {
                    retry_at = None;
                    if paused {
                        if let Ok(a) = self.consumer.assignment() {
                            let _ = self.consumer.resume(&a);
                        }
                        paused = false;
                        health.set_ready(true);
                        tracing::info!(group = %self.group, "sink is back; partitions resumed");
                    }
                }
                Step::Backoff(d) => {
                    if !paused {
                        pause_all(&self.consumer);
                        paused = true;
                        tracing::warn!(group = %self.group, "partitions paused");
                    }
                    health.set_ready(false);
                    retry_at = Some(Instant::now() + d);
                }
            }
        }
        Ok(())
    }
}

/// What the loop does with a message that arrived past its partition's next offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gap {
    /// Deliver it: the offsets before it are gone (retention, counted as lost), were skipped
    /// and are not there when read again (transaction markers, compaction), or could not be
    /// read again (counted as lost).
    Pass,
    /// The consumer skipped offsets that the broker still holds: it was sought back to read
    /// them; this message comes again after them.
    ReadAgain,
}

/// Message `m` arrived where offset `expected` was next. Offsets below the broker's log
/// start were deleted by retention before the group read them: counted and logged as lost.
/// Offsets from the log start up to `m` are still on the broker: the consumer skipped them
/// (a topic that is neither compacted nor written in transactions has no gaps), and
/// delivering `m` would pass them over silently. They are read again once (a seek back);
/// when the same gap comes back (`reread`), the offsets really are absent (transaction
/// markers, aborted transactions, compaction) and `m` is delivered. A seek that fails
/// counts the skipped offsets as lost.
fn gap(
    consumer: &BaseConsumer<GroupContext>,
    topic: &str,
    group: &str,
    track: &mut Tracking,
    m: &BorrowedMessage<'_>,
    expected: i64,
    reread: Option<(i64, i64)>,
) -> Gap {
    let (p, got) = (m.partition(), m.offset());
    let low = match consumer.fetch_watermarks(topic, p, Duration::from_secs(10)) {
        Ok((low, _)) => Some(low),
        Err(e) => {
            // The broker says nothing now; the gap itself is the best estimate, and counting
            // it is better than staying silent.
            tracing::warn!(error = %e, partition = p, "cannot read the log start to check a gap in the offsets");
            None
        }
    };
    let mut lost_to = low.map_or(got, |low| low.min(got));
    let from = expected.max(lost_to);
    let mut verdict = Gap::Pass;
    if low.is_some() && from < got {
        if reread == Some((from, got)) {
            metrics::counter!(SKIPPED_OFFSETS_TOTAL, "group" => group.to_owned(), "outcome" => "absent").increment(1);
            tracing::info!(
                group,
                topic,
                partition = p,
                from,
                to = got - 1,
                "a gap in the offsets is still there when read again: transaction markers or compaction, nothing lost"
            );
        } else {
            match consumer.seek(topic, p, Offset::Offset(from), Duration::from_secs(5)) {
                Ok(()) => {
                    tracing::warn!(
                        group,
                        topic,
                        partition = p,
                        from,
                        to = got - 1,
                        "the consumer skipped offsets that the broker still holds; reading them again"
                    );
                    metrics::counter!(SKIPPED_OFFSETS_TOTAL, "group" => group.to_owned(), "outcome" => "read_again")
                        .increment(1);
                    track.rereads.insert(p, (from, got));
                    track.next.insert(p, from);
                    verdict = Gap::ReadAgain;
                }
                Err(e) => {
                    tracing::warn!(error = %e, partition = p, from, "cannot seek back to read skipped offsets again");
                    lost_to = got;
                }
            }
        }
    }
    let lost = lost_to_retention(expected, lost_to);
    if lost > 0 {
        tracing::error!(
            group,
            topic,
            partition = p,
            next_offset = expected,
            first_offset_read = got,
            log_start = low,
            lost,
            "messages deleted by the broker's retention before this group read them (or skipped and not read again): {lost} lost"
        );
        metrics::counter!(track.lost_metric, "topic" => topic.to_owned(), "partition" => p.to_string()).increment(lost);
        track.lost.fetch_add(lost, std::sync::atomic::Ordering::Relaxed);
        let next_timestamp_ms = m.timestamp().to_millis().unwrap_or(0);
        let loss = Loss { partition: p, expected, lost, next_timestamp_ms };
        track.losses.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(loss);
    }
    verdict
}

/// Message `offset` of partition `p` arrived while `expected` was next: the consumer went back
/// to offsets it had delivered without a seek of ours (an offset reset after the broker's log
/// was truncated, a seek that timed out and happened anyway). Delivering them again would count
/// them twice (the grouper's open batch has no way to tell a second delivery from the first), so
/// they are passed until the consumer is back at `expected`; counted in
/// [`REDELIVERED_OFFSETS_TOTAL`], with one WARN line per jump back.
fn behind(topic: &str, group: &str, track: &mut Tracking, p: i32, offset: i64, expected: i64) {
    metrics::counter!(REDELIVERED_OFFSETS_TOTAL, "group" => group.to_owned()).increment(1);
    if track.behind.insert(p, expected) != Some(expected) {
        tracing::warn!(
            group,
            topic,
            partition = p,
            from = offset,
            next_offset = expected,
            "the consumer went back to offsets it had already delivered; not delivering them again"
        );
    }
}

/// Counter: messages of offsets a consumer had already delivered that it delivered again
/// without a seek of the service's own (label `group`), passed instead of delivered twice.
pub const REDELIVERED_OFFSETS_TOTAL: &str = "tracefold_kafka_redelivered_offsets_total";

/// Counter: gaps in a partition's offsets above the log start (labels `group`, `outcome`):
/// `read_again` when the loop sought back to read the skipped offsets, `absent` when the same
/// gap came back after that (transaction markers, compaction) and was passed.
pub const SKIPPED_OFFSETS_TOTAL: &str = "tracefold_kafka_skipped_offsets_total";

/// The group's committed offsets (and metadata) of `partitions`.
fn read_committed(
    consumer: &BaseConsumer<GroupContext>,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<Vec<Committed>> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let got = consumer.committed_offsets(tpl, Duration::from_secs(10)).context("cannot read committed offsets")?;
    Ok(got
        .elements()
        .iter()
        .map(|e| Committed { partition: e.partition(), offset: e.offset(), metadata: e.metadata().to_owned() })
        .collect())
}

/// Reads the group's commits of newly assigned `partitions`: their offsets go into
/// `next_offsets` (what the first messages must have if nothing was skipped), and the commits
/// are returned for the strategy's `on_assign` (empty when they could not be read: the strategy
/// then asks, and fails, itself).
fn expect_committed(
    consumer: &BaseConsumer<GroupContext>,
    topic: &str,
    partitions: &[i32],
    next_offsets: &mut std::collections::HashMap<i32, i64>,
) -> Vec<Committed> {
    for p in partitions {
        next_offsets.remove(p);
    }
    match read_committed(consumer, topic, partitions) {
        Ok(commits) => {
            for c in &commits {
                if let Offset::Offset(o) = c.offset {
                    next_offsets.insert(c.partition, o);
                }
            }
            commits
        }
        // Without the commit, a loss at the start of this assignment goes uncounted: say so.
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot read committed offsets; a retention loss before the first message would not be counted");
            Vec::new()
        }
    }
}

fn pause_all(consumer: &BaseConsumer<GroupContext>) {
    if let Ok(a) = consumer.assignment() {
        let _ = consumer.pause(&a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TopicsConfig;
    use crate::devbroker::DevBroker;
    use std::sync::{Arc, Mutex};

    /// What a recording strategy saw, in order.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Assign(Vec<i32>),
        Revoke(Vec<i32>),
        Message(i32, i64),
        Backoff,
        Resumed,
        Shutdown,
    }

    /// The offsets of partition 0 delivered to a [`Recorder`], in order.
    fn delivered_on_0(calls: &Mutex<Vec<Call>>) -> Vec<i64> {
        let calls = calls.lock().unwrap();
        calls.iter().filter_map(|c| if let Call::Message(0, o) = c { Some(*o) } else { None }).collect()
    }

    /// Records the calls; commits past each message on the next tick; stops the loop once it
    /// saw `stop_after` messages (when set). With `dlq`, sends every message to the DLQ and
    /// checks, right after each commit, that the DLQ holds every record sent before it.
    /// With `backoff_once`, answers the first tick after the first message with a back-off.
    struct Recorder {
        calls: Arc<Mutex<Vec<Call>>>,
        next: BTreeMapOffsets,
        seen: usize,
        stop_after: Option<usize>,
        shutdown: Shutdown,
        dlq: Option<String>,
        dlq_sent: i64,
        backoff_once: bool,
        backing_off: bool,
        /// After delivering (partition, offset), move the consumer's position forward to the
        /// third value, as a client that skips records would (once).
        skip: Option<(i32, i64, i64)>,
        /// Stops the loop once it delivered this (partition, offset).
        stop_at: Option<(i32, i64)>,
        /// After delivering (partition, offset), seek back to the third value with
        /// [`Ctx::seek`], as the grouper's rewind does (once).
        rewind: Option<(i32, i64, i64)>,
    }

    type BTreeMapOffsets = std::collections::BTreeMap<i32, i64>;

    impl Recorder {
        fn new(shutdown: &Shutdown, calls: &Arc<Mutex<Vec<Call>>>) -> Self {
            Self {
                calls: calls.clone(),
                next: Default::default(),
                seen: 0,
                stop_after: None,
                shutdown: shutdown.clone(),
                dlq: None,
                dlq_sent: 0,
                backoff_once: false,
                backing_off: false,
                skip: None,
                stop_at: None,
                rewind: None,
            }
        }

        fn push(&self, c: Call) {
            self.calls.lock().unwrap().push(c);
        }
    }

    impl Strategy for Recorder {
        fn on_assign(&mut self, _: &mut Ctx<'_>, partitions: &[i32]) -> anyhow::Result<()> {
            self.push(Call::Assign(partitions.to_vec()));
            Ok(())
        }

        fn on_revoke(&mut self, _: &mut Ctx<'_>, partitions: &[i32]) {
            for p in partitions {
                self.next.remove(p);
            }
            self.push(Call::Revoke(partitions.to_vec()));
        }

        fn on_message(&mut self, cx: &mut Ctx<'_>, msg: &BorrowedMessage<'_>) -> anyhow::Result<()> {
            self.push(Call::Message(msg.partition(), msg.offset()));
            self.next.insert(msg.partition(), msg.offset() + 1);
            if self.dlq.is_some() {
                let rec = DlqRecord::new(
                    msg.payload().unwrap_or(&[]),
                    cx.topic(),
                    msg.partition(),
                    msg.offset(),
                    tracefold_model::Reason::Malformed,
                    "test",
                    1 << 20,
                );
                cx.send_dlq(rec)?;
                self.dlq_sent += 1;
            }
            if let Some((p, _, to)) = self.skip.filter(|&(p, o, _)| (p, o) == (msg.partition(), msg.offset())) {
                self.skip = None;
                cx.consumer().seek(cx.topic(), p, Offset::Offset(to), Duration::from_secs(5))?;
            }
            if let Some((p, _, to)) = self.rewind.filter(|&(p, o, _)| (p, o) == (msg.partition(), msg.offset())) {
                self.rewind = None;
                cx.seek(p, to)?;
            }
            self.seen += 1;
            if self.stop_after.is_some_and(|n| self.seen >= n) || self.stop_at == Some((msg.partition(), msg.offset()))
            {
                self.shutdown.trigger();
            }
            Ok(())
        }

        fn on_tick(&mut self, cx: &mut Ctx<'_>) -> anyhow::Result<Step> {
            if self.backoff_once && self.seen > 0 {
                self.backoff_once = false;
                self.backing_off = true;
                self.push(Call::Backoff);
                return Ok(Step::Backoff(Duration::from_millis(300)));
            }
            if std::mem::take(&mut self.backing_off) {
                self.push(Call::Resumed);
            }
            let offsets: Vec<(i32, i64)> = self.next.iter().map(|(p, o)| (*p, *o)).collect();
            if !offsets.is_empty() {
                cx.commit(&offsets)?;
                if let Some(dlq) = &self.dlq {
                    let (low, high) = cx.consumer().fetch_watermarks(dlq, 0, Duration::from_secs(10))?;
                    assert_eq!(high - low, self.dlq_sent, "every DLQ record is acknowledged before the commit");
                }
            }
            Ok(Step::Continue)
        }

        fn on_shutdown(&mut self, cx: &mut Ctx<'_>) -> anyhow::Result<()> {
            self.push(Call::Shutdown);
            let offsets: Vec<(i32, i64)> = self.next.iter().map(|(p, o)| (*p, *o)).collect();
            cx.commit(&offsets)?;
            Ok(())
        }
    }

    fn kafka(bootstrap: &str) -> KafkaConfig {
        KafkaConfig { bootstrap_servers: bootstrap.to_owned(), ..KafkaConfig::default() }
    }

    /// Publishes `n` messages to each of `partitions` partitions of `topic`.
    fn publish(bootstrap: &str, topic: &str, partitions: i32, n: usize) {
        let p: ThreadedProducer<DefaultProducerContext> =
            crate::kafka::producer_config(&kafka(bootstrap), 0).create().unwrap();
        for part in 0..partitions {
            for i in 0..n {
                let payload = format!("message {i} of partition {part}");
                p.send(BaseRecord::<(), _>::to(topic).partition(part).payload(&payload)).unwrap();
            }
        }
        p.flush(Duration::from_secs(30)).unwrap();
    }

    /// The group's committed offset of every partition of `topic`.
    fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<Offset> {
        let c: BaseConsumer = crate::kafka::consumer_config(&kafka(bootstrap), group).create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        got.elements().iter().map(|e| e.offset()).collect()
    }

    /// Publishes `n` messages of `size` bytes to partition 0 of `topic`, waiting when the
    /// queue is full.
    fn publish_many(bootstrap: &str, topic: &str, n: usize, size: usize) {
        let p: ThreadedProducer<DefaultProducerContext> =
            crate::kafka::producer_config(&kafka(bootstrap), 0).create().unwrap();
        for i in 0..n {
            // Incompressible (the producer compresses): a xorshift stream of letters.
            let mut payload = format!("m{i} ");
            let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ (i as u64 + 1);
            while payload.len() < size {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                payload.push(char::from(b'a' + (x % 26) as u8));
            }
            let mut rec = BaseRecord::<(), _>::to(topic).partition(0).payload(&payload);
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => panic!("cannot publish: {e}"),
                }
            }
        }
        p.flush(Duration::from_secs(60)).unwrap();
    }

    /// Messages deleted by the broker before the group read them are counted as lost (the
    /// exact number: the log start minus the group's commit), and the loop goes on from the log
    /// start with every message that is still there. librdkafka's mock cluster keeps about
    /// 5 MB per partition, so 12 MB push the oldest out.
    #[test]
    fn messages_deleted_by_retention_before_they_were_read_are_counted_exactly_and_the_rest_delivered() {
        let topics = TopicsConfig::default();
        let broker = DevBroker::start(1, &topics, Some(1)).unwrap();
        let bootstrap = broker.bootstrap_servers();
        let group = "runtime-retention";
        // The group read nothing yet, but it has a commit: the start of the partition.
        let c: BaseConsumer = crate::kafka::consumer_config(&kafka(&bootstrap), group).create().unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topics.events, 0, Offset::Offset(0)).unwrap();
        c.commit(&tpl, rdkafka::consumer::CommitMode::Sync).unwrap();
        drop(c);
        publish_many(&bootstrap, &topics.events, 240, 50_000);
        let probe: BaseConsumer = crate::kafka::consumer_config(&kafka(&bootstrap), "probe").create().unwrap();
        let (low, high) = probe.fetch_watermarks(&topics.events, 0, Duration::from_secs(10)).unwrap();
        assert_eq!(high, 240);
        assert!(low > 0, "the mock cluster deleted the oldest messages: log start {low}");

        let (shutdown, health) = (Shutdown::new(), Health::named("test"));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut s = Recorder::new(&shutdown, &calls);
        s.stop_after = Some(usize::try_from(high - low).unwrap());
        let rt = ConsumerRuntime::new(&kafka(&bootstrap), group, &topics.events).unwrap();
        let lost = rt.lost();
        let losses = rt.losses();
        rt.run(&mut s, &shutdown, &health).unwrap();
        assert_eq!(
            lost.load(std::sync::atomic::Ordering::Relaxed),
            u64::try_from(low).unwrap(),
            "lost = log start - commit"
        );
        let gaps = take_losses(&losses);
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert_eq!((gaps[0].partition, gaps[0].expected, gaps[0].lost), (0, 0, u64::try_from(low).unwrap()));
        assert!(gaps[0].next_timestamp_ms > 0);
        let got = messages(&calls.lock().unwrap());
        assert_eq!(got.len() as i64, high - low, "every message still on the broker is delivered once");
        assert_eq!(got.first(), Some(&(0, low)));
        assert_eq!(got.last(), Some(&(0, high - 1)));
        assert_eq!(committed(&bootstrap, group, &topics.events, 1), [Offset::Offset(high)]);
    }

    /// Offsets the consumer skipped while the broker still holds them (a gap above the log
    /// start, in a topic that is neither compacted nor transactional) are read again before
    /// the message after the gap: the strategy sees every message once, in order, and nothing
    /// is counted as lost. Before, the message after the gap was delivered and the skipped ones
    /// passed over without a word (the grouper's open batch then covered offsets it never read).
    #[test]
    fn offsets_the_consumer_skipped_above_the_log_start_are_read_again() {
        let topics = TopicsConfig::default();
        let broker = DevBroker::start(1, &topics, Some(1)).unwrap();
        let bootstrap = broker.bootstrap_servers();
        publish(&bootstrap, &topics.events, 1, 40);
        let (shutdown, health) = (Shutdown::new(), Health::named("test"));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut s = Recorder::new(&shutdown, &calls);
        s.stop_at = Some((0, 39));
        // After offset 9 the consumer jumps to 15: offsets 10 to 14 are skipped.
        s.skip = Some((0, 9, 15));
        let rt = ConsumerRuntime::new(&kafka(&bootstrap), "runtime-skip", &topics.events).unwrap();
        let (lost, losses) = (rt.lost(), rt.losses());
        rt.run(&mut s, &shutdown, &health).unwrap();
        let delivered = delivered_on_0(&calls);
        assert_eq!(delivered, (0..40).collect::<Vec<_>>(), "every message once, in order");
        assert_eq!(lost.load(std::sync::atomic::Ordering::Relaxed), 0, "nothing was lost");
        assert_eq!(take_losses(&losses), []);
        assert_eq!(committed(&bootstrap, "runtime-skip", &topics.events, 1), [Offset::Offset(40)]);
    }

    /// The consumer going back to offsets it had delivered without a seek of ours (an offset
    /// reset after the broker truncated its log, a timed-out seek that happened anyway): the
    /// strategy does not see them again, and the loop goes on from where it was. Before, they
    /// were delivered a second time, and the grouper counted them twice into its open batch (its
    /// deduplication window only calls an event a copy when it saw it at a smaller offset).
    #[test]
    fn offsets_delivered_again_without_a_seek_of_ours_are_not_delivered_twice() {
        let topics = TopicsConfig::default();
        let broker = DevBroker::start(1, &topics, Some(1)).unwrap();
        let bootstrap = broker.bootstrap_servers();
        publish(&bootstrap, &topics.events, 1, 40);
        let (shutdown, health) = (Shutdown::new(), Health::named("test"));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut s = Recorder::new(&shutdown, &calls);
        s.stop_at = Some((0, 39));
        // After offset 19 the consumer goes back to 10 by itself.
        s.skip = Some((0, 19, 10));
        let rt = ConsumerRuntime::new(&kafka(&bootstrap), "runtime-back", &topics.events).unwrap();
        let lost = rt.lost();
        rt.run(&mut s, &shutdown, &health).unwrap();
        let delivered = delivered_on_0(&calls);
        assert_eq!(delivered, (0..40).collect::<Vec<_>>(), "every message once, in order");
        assert_eq!(lost.load(std::sync::atomic::Ordering::Relaxed), 0, "nothing was lost");
        assert_eq!(committed(&bootstrap, "runtime-back", &topics.events, 1), [Offset::Offset(40)]);
    }

    /// A seek back of the strategy's own ([`Ctx::seek`], the grouper's rewind) delivers again
    /// what it reads again.
    #[test]
    fn a_seek_back_of_the_strategy_delivers_those_offsets_again() {
        let topics = TopicsConfig::default();
        let broker = DevBroker::start(1, &topics, Some(1)).unwrap();
        let bootstrap = broker.bootstrap_servers();
        publish(&bootstrap, &topics.events, 1, 30);
        let (shutdown, health) = (Shutdown::new(), Health::named("test"));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut s = Recorder::new(&shutdown, &calls);
        s.stop_at = Some((0, 29));
        s.rewind = Some((0, 19, 10));
        let rt = ConsumerRuntime::new(&kafka(&bootstrap), "runtime-rewind", &topics.events).unwrap();
        rt.run(&mut s, &shutdown, &health).unwrap();
        let delivered = delivered_on_0(&calls);
        let want: Vec<i64> = (0..20).chain(10..30).collect();
        assert_eq!(delivered, want, "10 to 19 again after the seek back");
    }

    /// A group that never committed starts at the log start and counts nothing as lost.
    #[test]
    fn a_new_group_starts_at_the_log_start_and_loses_nothing() {
        let topics = TopicsConfig::default();
        let broker = DevBroker::start(1, &topics, Some(1)).unwrap();
        let bootstrap = broker.bootstrap_servers();
        publish(&bootstrap, &topics.events, 1, 50);
        let (shutdown, health) = (Shutdown::new(), Health::named("test"));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut s = Recorder::new(&shutdown, &calls);
        s.stop_after = Some(50);
        let rt = ConsumerRuntime::new(&kafka(&bootstrap), "runtime-new-group", &topics.events).unwrap();
        let lost = rt.lost();
        rt.run(&mut s, &shutdown, &health).unwrap();
        assert_eq!(lost.load(std::sync::atomic::Ordering::Relaxed), 0);
        let got = messages(&calls.lock().unwrap());
        assert_eq!(got, (0..50).map(|o| (0, o)).collect::<Vec<_>>());
    }

    fn messages(calls: &[Call]) -> Vec<(i32, i64)> {
        let mut m: Vec<(i32, i64)> =
            calls.iter().filter_map(|c| if let Call::Message(p, o) = c { Some((*p, *o)) } else { None }).collect();
        m.sort_unstable();
        m
    }

    #[test]
    fn a_strategy_sees_assign_messages_and_shutdown_in_order_and_its_commits_land() {
        let topics = TopicsConfig::default();
        let broker = DevBroker::start(1, &topics, Some(2)).unwrap();
        let bootstrap = broker.bootstrap_servers();
        publish(&bootstrap, &topics.events, 2, 5);
        let (shutdown, health) = (Shutdown::new(), Health::named("test"));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut s = Recorder::new(&shutdown, &calls);
        s.stop_after = Some(10);
        let rt = ConsumerRuntime::new(&kafka(&bootstrap), "runtime-order", &topics.events).unwrap();
        rt.run(&mut s, &shutdown, &health).unwrap();
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.first(), Some(&Call::Assign(vec![0, 1])), "{calls:?}");
        assert_eq!(calls.last(), Some(&Call::Shutdown), "{calls:?}");
        let want: Vec<(i32, i64)> = (0..2).flat_map(|p| (0..5).map(move |o| (p, o))).collect();
        assert_eq!(messages(&calls), want, "each message once");
        assert_eq!(health.consumed(), 10, "the health counts every message delivered");
        assert_eq!(committed(&bootstrap, "runtime-order", &topics.events, 2), [Offset::Offset(5), Offset::Offset(5)]);
        assert!(!health.is_ready(), "not ready once stopped");
    }

    #[test]
    fn a_member_joining_the_group_revokes_and_a_restart_continues_from_the_commits() {
        let topics = TopicsConfig::default();
        let broker = DevBroker::start(1, &topics, Some(2)).unwrap();
        let bootstrap = broker.bootstrap_servers();
        publish(&bootstrap, &topics.events, 2, 3);
        let group = "runtime-rebalance";
        let calls_a = Arc::new(Mutex::new(Vec::new()));
        let (shutdown_a, health_a) = (Shutdown::new(), Health::named("a"));
        let a = {
            let (calls, shutdown, bootstrap, topic) =
                (calls_a.clone(), shutdown_a.clone(), bootstrap.clone(), topics.events.clone());
            std::thread::spawn(move || {
                let mut s = Recorder::new(&shutdown, &calls);
                let rt = ConsumerRuntime::new(&kafka(&bootstrap), group, &topic).unwrap();
                rt.run(&mut s, &shutdown, &health_a).unwrap();
            })
        };
        let wait = |what: &str, cond: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !cond() {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        wait("a to read every message", &|| messages(&calls_a.lock().unwrap()).len() == 6);
        wait("a's commits", &|| {
            committed(&bootstrap, group, &topics.events, 2) == [Offset::Offset(3), Offset::Offset(3)]
        });
        // A second member joins: a's partitions are revoked, then shared out.
        let calls_b = Arc::new(Mutex::new(Vec::new()));
        let (shutdown_b, health_b) = (Shutdown::new(), Health::named("b"));
        let b = {
            let (calls, shutdown, bootstrap, topic) =
                (calls_b.clone(), shutdown_b.clone(), bootstrap.clone(), topics.events.clone());
            std::thread::spawn(move || {
                let mut s = Recorder::new(&shutdown, &calls);
                let rt = ConsumerRuntime::new(&kafka(&bootstrap), group, &topic).unwrap();
                rt.run(&mut s, &shutdown, &health_b).unwrap();
            })
        };
        wait("b's assignment", &|| calls_b.lock().unwrap().iter().any(|c| matches!(c, Call::Assign(_))));
        wait("a's revocation", &|| calls_a.lock().unwrap().iter().any(|c| matches!(c, Call::Revoke(_))));
        // New messages go to whoever holds their partition, once.
        publish(&bootstrap, &topics.events, 2, 2);
        wait("the new messages", &|| {
            messages(&calls_a.lock().unwrap()).len() + messages(&calls_b.lock().unwrap()).len() == 10
        });
        shutdown_a.trigger();
        shutdown_b.trigger();
        a.join().unwrap();
        b.join().unwrap();
        let (ca, cb) = (calls_a.lock().unwrap().clone(), calls_b.lock().unwrap().clone());
        let mut all = messages(&ca);
        all.extend(messages(&cb));
        all.sort_unstable();
        let want: Vec<(i32, i64)> = (0..2).flat_map(|p| (0..5).map(move |o| (p, o))).collect();
        assert_eq!(all, want, "each message once, none re-read after the revoke: a's commits held");
        assert_eq!(ca.first(), Some(&Call::Assign(vec![0, 1])), "{ca:?}");
        let revoke = ca.iter().position(|c| matches!(c, Call::Revoke(_))).unwrap();
        assert!(ca[..revoke].iter().all(|c| !matches!(c, Call::Revoke(_))));
        assert_eq!(ca.last(), Some(&Call::Shutdown), "{ca:?}");
        assert_eq!(cb.last(), Some(&Call::Shutdown), "{cb:?}");
        assert_eq!(committed(&bootstrap, group, &topics.events, 2), [Offset::Offset(5), Offset::Offset(5)]);
    }

    #[test]
    fn dlq_records_are_acknowledged_before_the_commit_past_them() {
        let topics = TopicsConfig::default();
        let broker = DevBroker::start(1, &topics, Some(1)).unwrap();
        let bootstrap = broker.bootstrap_servers();
        publish(&bootstrap, &topics.aggregates, 1, 20);
        let (shutdown, health) = (Shutdown::new(), Health::named("test"));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut s = Recorder::new(&shutdown, &calls);
        s.stop_after = Some(20);
        s.dlq = Some(topics.dlq.clone());
        let rt = ConsumerRuntime::new(&kafka(&bootstrap), "runtime-dlq", &topics.aggregates)
            .unwrap()
            .with_dlq(&kafka(&bootstrap), &topics.dlq)
            .unwrap();
        rt.run(&mut s, &shutdown, &health).unwrap();
        assert_eq!(s.dlq_sent, 20);
        assert_eq!(committed(&bootstrap, "runtime-dlq", &topics.aggregates, 1), [Offset::Offset(20)]);
        let c: BaseConsumer = crate::kafka::consumer_config(&kafka(&bootstrap), "x").create().unwrap();
        let (low, high) = c.fetch_watermarks(&topics.dlq, 0, Duration::from_secs(10)).unwrap();
        assert_eq!(high - low, 20);
    }

    #[test]
    fn a_back_off_pauses_delivery_until_the_strategy_continues() {
        let topics = TopicsConfig::default();
        let broker = DevBroker::start(1, &topics, Some(1)).unwrap();
        let bootstrap = broker.bootstrap_servers();
        publish(&bootstrap, &topics.events, 1, 50);
        let (shutdown, health) = (Shutdown::new(), Health::named("test"));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut s = Recorder::new(&shutdown, &calls);
        s.stop_after = Some(50);
        s.backoff_once = true;
        let rt = ConsumerRuntime::new(&kafka(&bootstrap), "runtime-backoff", &topics.events).unwrap();
        rt.run(&mut s, &shutdown, &health).unwrap();
        let calls = calls.lock().unwrap().clone();
        let from = calls.iter().position(|c| *c == Call::Backoff).expect("backed off");
        let to = calls.iter().position(|c| *c == Call::Resumed).expect("resumed");
        assert!(
            calls[from..to].iter().all(|c| !matches!(c, Call::Message(..))),
            "nothing delivered while paused: {calls:?}"
        );
        let want: Vec<(i32, i64)> = (0..50).map(|o| (0, o)).collect();
        assert_eq!(messages(&calls), want, "each message once: those refused while paused come again");
        assert_eq!(committed(&bootstrap, "runtime-backoff", &topics.events, 1), [Offset::Offset(50)]);
    }
}
