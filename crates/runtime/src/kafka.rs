//! Kafka client construction with tracefold's defaults and the user's pass-through options.

use crate::config::KafkaConfig;
use rdkafka::client::{Client, ClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::TopicPartitionList;
use std::sync::Mutex;
use std::time::Duration;

/// The kind of librdkafka client a config is for: librdkafka logs a `CONFWARN` for every
/// property set on a client of the other kind ("... is a consumer property and will be ignored
/// by this producer instance").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// A consumer: producer-only properties are left out.
    Consumer,
    /// A producer: consumer-only properties are left out.
    Producer,
    /// Both kinds of properties are kept (an admin or metadata client).
    Any,
}

/// Properties librdkafka marks consumer-only (`C` in its CONFIGURATION.md, global and topic
/// tables; callbacks, which cannot be set as strings, left out).
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
    "group.protocol",
    "group.remote.assignor",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "offset.store.method",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "auto.commit.enable",
    "auto.offset.reset",
    "offset.store.path",
    "offset.store.sync.interval.ms",
    "consume.callback.max.messages",
];

/// Properties librdkafka marks producer-only (`P`), likewise.
const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queuing.strategy",
    "produce.offset.report",
    "partitioner",
];

impl ClientKind {
    /// Whether a client of this kind takes property `key` (librdkafka ignores it otherwise,
    /// with a `CONFWARN`). Unknown keys are kept, so that librdkafka still refuses typos.
    pub fn takes(self, key: &str) -> bool {
        match self {
            Self::Consumer => !PRODUCER_ONLY.contains(&key),
            Self::Producer => !CONSUMER_ONLY.contains(&key),
            Self::Any => true,
        }
    }
}

/// A client config with the bootstrap servers and, last, the pass-through options (both
/// kinds of properties: see [`client_config_for`]).
pub fn client_config(kafka: &KafkaConfig, defaults: &[(&str, &str)]) -> ClientConfig {
    client_config_for(ClientKind::Any, kafka, defaults)
}

/// A client config for a client of `kind`: the bootstrap servers, `defaults` and, last, the
/// pass-through options that such a client takes. One `[kafka.librdkafka]` table serves a
/// service's consumers and producers alike, so a consumer-only key there (such as
/// `session.timeout.ms`) reaches the consumers and is left out of the producers' configs.
pub fn client_config_for(kind: ClientKind, kafka: &KafkaConfig, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in kafka.librdkafka.iter().filter(|(k, _)| kind.takes(k)) {
        c.set(k, v);
    }
    c
}

/// Consumer defaults: manual offset handling (commit only what is durable downstream).
pub fn consumer_config(kafka: &KafkaConfig, group_id: &str) -> ClientConfig {
    client_config_for(
        ClientKind::Consumer,
        kafka,
        &[
            ("group.id", group_id),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "1000"),
            ("max.poll.interval.ms", "300000"),
            ("fetch.wait.max.ms", "50"),
            // The local queue holds at most 64 MiB of fetched messages (about 30,000 events of
            // 2 KB); when it is full, librdkafka waits `fetch.queue.backoff.ms` before it fetches
            // again, 1000 ms by default: a consumer that drains a full queue in a few hundred
            // milliseconds then sits idle for the rest of the second (the grouper read ~37,000
            // events/s with data waiting on the broker). 10 ms keeps it fetching.
            ("queued.max.messages.kbytes", "65536"),
            ("fetch.queue.backoff.ms", "10"),
            // Statistics feed the consumer-lag gauge (see record_consumer_lag).
            ("statistics.interval.ms", "5000"),
        ],
    )
}

/// tracefold's `queue.buffering.max.kbytes` for producers (256 MiB).
const PRODUCER_QUEUE_KBYTES: &str = "262144";
/// librdkafka's default `queue.buffering.max.messages`.
const LIBRDKAFKA_QUEUE_MESSAGES: usize = 100_000;

/// How much a producer built by [`producer_config`] from `kafka` queues at most: (messages,
/// bytes), from `queue.buffering.max.messages` and `queue.buffering.max.kbytes` (the
/// pass-through options win). A message counts its payload and key.
pub fn producer_queue_limits(kafka: &KafkaConfig) -> (usize, usize) {
    let get = |k: &str| kafka.librdkafka.get(k).and_then(|v| v.trim().parse::<usize>().ok());
    let messages = get("queue.buffering.max.messages").unwrap_or(LIBRDKAFKA_QUEUE_MESSAGES);
    let kbytes = get("queue.buffering.max.kbytes").unwrap_or_else(|| PRODUCER_QUEUE_KBYTES.parse().expect("a number"));
    (messages, kbytes.saturating_mul(1024))
}

/// Producer defaults: idempotent (ordered, no duplicates from retries), batching, lz4.
/// `message_timeout_ms` 0 means "retry until delivered", which services that must not
/// lose or reorder output use.
pub fn producer_config(kafka: &KafkaConfig, message_timeout_ms: u64) -> ClientConfig {
    producer_config_with(kafka, message_timeout_ms, &[])
}

/// [`producer_config`] with a service's own defaults `own` over tracefold's (the
/// pass-through options still win over both): e.g. the HTTP producer's shorter `linger.ms`.
pub fn producer_config_with(kafka: &KafkaConfig, message_timeout_ms: u64, own: &[(&str, &str)]) -> ClientConfig {
    let timeout = message_timeout_ms.to_string();
    let mut defaults = vec![
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("compression.type", "lz4"),
        ("linger.ms", "5"),
        ("batch.num.messages", "10000"),
        ("queue.buffering.max.kbytes", PRODUCER_QUEUE_KBYTES),
        ("message.timeout.ms", timeout.as_str()),
    ];
    for (k, v) in own {
        match defaults.iter_mut().find(|(d, _)| d == k) {
            Some(d) => d.1 = v,
            None => defaults.push((k, v)),
        }
    }
    client_config_for(ClientKind::Producer, kafka, &defaults)
}

/// Checks that each topic exists, with a message that says how to create it.
///
/// # Errors
/// Names the first missing topic, or the metadata error.
pub fn check_topics<C: ClientContext>(client: &Client<C>, topics: &[&str], timeout: Duration) -> anyhow::Result<()> {
    for t in topics {
        let md = client
            .fetch_metadata(Some(t), timeout)
            .map_err(|e| anyhow::anyhow!("cannot fetch metadata of topic {t}: {e}"))?;
        let ok = md.topics().iter().any(|mt| mt.name() == *t && mt.error().is_none() && !mt.partitions().is_empty());
        if !ok {
            anyhow::bail!("topic {t} does not exist; create it as schemas/topics.toml describes");
        }
    }
    Ok(())
}

/// The partition ids of `topic`, from the cluster's metadata.
///
/// # Errors
/// When the metadata cannot be fetched, the cluster reports an error for the topic (named), or
/// the topic has no partitions: "topic T does not exist" (a cluster answers for an unknown
/// topic too, with no partitions), so that a mistyped topic is not read as an empty one.
pub fn partitions_of<C: ClientContext>(client: &Client<C>, topic: &str, timeout: Duration) -> anyhow::Result<Vec<i32>> {
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| anyhow::anyhow!("cannot fetch metadata of topic {topic}: {e}"))?;
    let mut parts = Vec::new();
    for t in md.topics().iter().filter(|t| t.name() == topic) {
        match t.error() {
            Some(e) if t.partitions().is_empty() => {
                if e != rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART {
                    anyhow::bail!("cannot read topic {topic}: {}", rdkafka::types::RDKafkaErrorCode::from(e));
                }
            }
            _ => parts.extend(t.partitions().iter().map(|p| p.id())),
        }
    }
    if parts.is_empty() {
        anyhow::bail!("topic {topic} does not exist");
    }
    Ok(parts)
}

/// Reads the last `limit` messages of each partition of `topic` (fewer where a partition holds
/// fewer) with a consumer of `group` that commits nothing, handing each to `each`; stops after
/// `deadline` once they are assigned, whatever is left.
///
/// # Errors
/// Kafka cannot be reached, the topic is unknown or unreadable ([`partitions_of`]), or the
/// assignment is refused.
pub fn read_last(
    kafka: &KafkaConfig,
    group: &str,
    topic: &str,
    limit: usize,
    deadline: Duration,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> anyhow::Result<()> {
    let c: BaseConsumer = consumer_config(kafka, group).create()?;
    let parts = partitions_of(c.client(), topic, Duration::from_secs(10))?;
    // A limit past i64::MAX is all of them (a cast would make it negative: none).
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0i64;
    for p in parts {
        let (low, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        let from = high.saturating_sub(limit).max(low);
        if high > from {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(from))?;
            remaining += high - from;
        }
    }
    if remaining == 0 {
        return Ok(());
    }
    c.assign(&tpl)?;
    let until = std::time::Instant::now() + deadline;
    while remaining > 0 && std::time::Instant::now() < until {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            remaining -= 1;
            each(&m);
        }
    }
    Ok(())
}

/// Consumer lag per partition, from librdkafka's statistics: messages between the
/// partition's end and the group's committed offset.
pub const CONSUMER_LAG: &str = "tracefold_kafka_consumer_lag";

/// Sets the [`CONSUMER_LAG`] gauge (labels `group`, `topic`, `partition`) from a
/// statistics report. Call it from a consumer context's `stats` callback.
pub fn record_consumer_lag(group: &str, stats: &rdkafka::Statistics) {
    for (topic, t) in &stats.topics {
        for (p, part) in &t.partitions {
            // -1 is librdkafka's "unknown" (not assigned here, or nothing committed yet);
            // the internal partition -1 is not a real one.
            if *p < 0 || part.consumer_lag < 0 {
                continue;
            }
            metrics::gauge!(CONSUMER_LAG, "group" => group.to_owned(), "topic" => topic.clone(), "partition" => p.to_string())
                .set(part.consumer_lag as f64);
        }
    }
}

/// Partitions currently assigned to this process's consumer of a group (label `group`):
/// shows that a replica took part in the work after a rebalance.
pub const ASSIGNED_PARTITIONS: &str = "tracefold_kafka_assigned_partitions";

/// A partition assignment change, seen by a consumer's poll loop after `poll` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// These partitions are now ours.
    Assigned(Vec<i32>),
    /// These partitions are no longer ours (before the group moves them on).
    Revoked(Vec<i32>),
}

/// Consumer context of tracefold's consumer groups: queues rebalance events for the poll
/// loop (callbacks stay short and never touch service state) and feeds librdkafka's
/// statistics into the consumer-lag gauge.
#[derive(Debug)]
pub struct GroupContext {
    group: String,
    events: Mutex<Vec<RebalanceEvent>>,
    /// Partitions assigned now, kept from the rebalance callbacks themselves: asking the
    /// consumer (`assignment()`) from inside a callback deadlocks while it closes.
    assigned: Mutex<std::collections::BTreeSet<i32>>,
}

impl GroupContext {
    /// A context for consumer group `group`.
    pub fn new(group: &str) -> Self {
        metrics::gauge!(ASSIGNED_PARTITIONS, "group" => group.to_owned()).set(0.0);
        Self { group: group.to_owned(), events: Mutex::new(Vec::new()), assigned: Mutex::default() }
    }

    /// The rebalance events since the last call, oldest first.
    pub fn take_events(&self) -> Vec<RebalanceEvent> {
        std::mem::take(&mut *self.events.lock().expect("not poisoned"))
    }

    fn push(&self, e: RebalanceEvent) {
        self.events.lock().expect("not poisoned").push(e);
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        record_consumer_lag(&self.group, &statistics);
    }
}

impl ConsumerContext for GroupContext {
    // Callbacks never call back into the consumer: they run inside `poll`, and also inside
    // the consumer's `Drop` (its close), where a request such as `assignment()` waits forever.
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            self.push(RebalanceEvent::Revoked(tpl.elements().iter().map(|e| e.partition()).collect()));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        // What is assigned now: partitions added by an assignment, removed by a revocation
        // (eager protocols revoke everything first; cooperative ones only what moves).
        let n = {
            let mut assigned = self.assigned.lock().expect("not poisoned");
            match r {
                Rebalance::Assign(tpl) => assigned.extend(tpl.elements().iter().map(|e| e.partition())),
                Rebalance::Revoke(tpl) => {
                    for e in tpl.elements() {
                        assigned.remove(&e.partition());
                    }
                }
                Rebalance::Error(_) => {}
            }
            assigned.len()
        };
        metrics::gauge!(ASSIGNED_PARTITIONS, "group" => self.group.clone()).set(n as f64);
        if let Rebalance::Assign(tpl) = r {
            self.push(RebalanceEvent::Assigned(tpl.elements().iter().map(|e| e.partition()).collect()));
        }
    }
}

/// librdkafka's default `message.max.bytes`.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// The largest message a producer built from `kafka` may send: `message.max.bytes` from the
/// pass-through options, else librdkafka's default.
pub fn message_max_bytes(kafka: &KafkaConfig) -> usize {
    kafka.librdkafka.get("message.max.bytes").and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
}

/// Room kept under `message.max.bytes` for the key, the headers and the record overhead of a
/// DLQ record.
const DLQ_HEADROOM: usize = 16 << 10;

/// Header names of DLQ records.
pub mod dlq_headers {
    /// The full reason, human-readable.
    pub const ERROR: &str = "tracefold-error";
    /// The bounded reason code (`too_large`, `malformed`, `invalid`, `internal`, ...).
    pub const REASON: &str = "tracefold-reason";
    /// Where the record came from.
    pub const SOURCE_TOPIC: &str = "tracefold-source-topic";
    /// Source partition.
    pub const SOURCE_PARTITION: &str = "tracefold-source-partition";
    /// Source offset.
    pub const SOURCE_OFFSET: &str = "tracefold-source-offset";
    /// Present when the payload was cut to fit the broker's limit: the original size in bytes.
    pub const TRUNCATED: &str = "tracefold-truncated-from";
}

/// A DLQ record: what was refused, why, and where it came from. The payload is cut to fit
/// under `message_max_bytes` (with a header saying so), so that a DLQ record can always be
/// published and never blocks the partition it came from.
#[derive(Debug)]
pub struct DlqRecord<'a> {
    /// Record key: `topic/partition/offset` of the source.
    pub key: String,
    /// The payload, cut when needed.
    pub payload: &'a [u8],
    /// The headers.
    pub headers: rdkafka::message::OwnedHeaders,
}

impl<'a> DlqRecord<'a> {
    /// Builds the record for `payload` from `topic`/`partition`/`offset`.
    pub fn new(
        payload: &'a [u8],
        topic: &str,
        partition: i32,
        offset: i64,
        reason: tracefold_model::Reason,
        detail: &str,
        message_max_bytes: usize,
    ) -> Self {
        use rdkafka::message::Header;
        let max_payload = message_max_bytes.saturating_sub(DLQ_HEADROOM).max(1024);
        let cut = payload.len() > max_payload;
        let (p, o) = (partition.to_string(), offset.to_string());
        // Details come from parsers and may quote input: bound them too.
        let detail = tracefold_model::text::prefix(detail, 1024);
        let mut headers = rdkafka::message::OwnedHeaders::new()
            .insert(Header { key: dlq_headers::ERROR, value: Some(detail.as_bytes()) })
            .insert(Header { key: dlq_headers::REASON, value: Some(reason.code().as_bytes()) })
            .insert(Header { key: dlq_headers::SOURCE_TOPIC, value: Some(topic.as_bytes()) })
            .insert(Header { key: dlq_headers::SOURCE_PARTITION, value: Some(p.as_bytes()) })
            .insert(Header { key: dlq_headers::SOURCE_OFFSET, value: Some(o.as_bytes()) });
        if cut {
            metrics::counter!(DLQ_TRUNCATED).increment(1);
            let n = payload.len().to_string();
            headers = headers.insert(Header { key: dlq_headers::TRUNCATED, value: Some(n.as_bytes()) });
        }
        Self {
            key: format!("{topic}/{partition}/{offset}"),
            payload: if cut { &payload[..max_payload] } else { payload },
            headers,
        }
    }
}

/// Counter: DLQ records whose payload was cut to fit under the broker's message limit (the
/// record's `tracefold-truncated-from` header has the original size).
pub const DLQ_TRUNCATED: &str = "tracefold_kafka_dlq_truncated_total";

/// Offset commits that failed (label `group`): each is kept and tried again until one
/// succeeds or the partition is revoked.
pub const COMMIT_FAILURES: &str = "tracefold_kafka_commit_failures_total";

/// How long a failed commit waits before it is tried again.
const COMMIT_RETRY: Duration = Duration::from_millis(500);

/// The offsets a consumer wants committed, held until a commit of them succeeds.
///
/// Commits are synchronous, one at a time, so a commit that librdkafka retries internally
/// can never land after a newer one and move a partition's committed offset back. A commit
/// that fails (after librdkafka's own retries) is kept and tried again by [`Self::retry_due`]
/// from the poll loop: a consumer whose last commit failed does not leave its partition
/// uncommitted (lag that never reaches zero, a batch rebuilt on restart) while no new
/// messages arrive.
#[derive(Debug)]
pub struct CommitQueue {
    topic: String,
    group: String,
    want: std::collections::BTreeMap<i32, i64>,
    retry_at: Option<std::time::Instant>,
}

impl CommitQueue {
    /// A queue for commits of `topic` by consumer group `group`.
    pub fn new(topic: &str, group: &str) -> Self {
        metrics::counter!(COMMIT_FAILURES, "group" => group.to_owned()).increment(0);
        Self { topic: topic.to_owned(), group: group.to_owned(), want: Default::default(), retry_at: None }
    }

    /// Wants `offset` (the next offset to read) committed for `partition`; replaces an older
    /// wish for it.
    pub fn set(&mut self, partition: i32, offset: i64) {
        self.want.insert(partition, offset);
    }

    /// Forgets the wishes for `partitions`: revoked, or superseded by a commit made elsewhere.
    pub fn forget(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.want.remove(p);
        }
        if self.want.is_empty() {
            self.retry_at = None;
        }
    }

    /// Nothing waits to be committed.
    pub fn is_empty(&self) -> bool {
        self.want.is_empty()
    }

    /// Commits every wish synchronously. On success they are forgotten; on failure they are
    /// kept, counted in [`COMMIT_FAILURES`] and logged, and [`Self::retry_due`] tries again.
    pub fn commit<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> bool {
        if self.want.is_empty() {
            return true;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &self.want {
            if let Err(e) = tpl.add_partition_offset(&self.topic, *p, rdkafka::Offset::Offset(*o)) {
                tracing::warn!(error = %e, partition = p, offset = o, "cannot list an offset to commit");
            }
        }
        match consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync) {
            Ok(()) => {
                self.want.clear();
                self.retry_at = None;
                true
            }
            Err(e) => {
                metrics::counter!(COMMIT_FAILURES, "group" => self.group.clone()).increment(1);
                tracing::warn!(error = %e, group = %self.group, offsets = ?self.want, "offset commit failed; trying again");
                self.retry_at = Some(std::time::Instant::now() + COMMIT_RETRY);
                false
            }
        }
    }

    /// Commits `(partition, offset, metadata)` synchronously, now, without keeping it for a
    /// retry: a record of work about to be done, which the caller undoes when it fails. On
    /// success it supersedes the wishes of those partitions (an older "past the batch" commit
    /// that failed must not land after it). An empty metadata string commits none.
    ///
    /// # Errors
    /// The commit failed (after librdkafka's own retries). Not counted in
    /// [`COMMIT_FAILURES`], which counts the commits that are kept and tried again.
    pub fn commit_now<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        offsets: &[(i32, i64, String)],
    ) -> rdkafka::error::KafkaResult<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o, meta) in offsets {
            let mut e = tpl.add_partition(&self.topic, *p);
            e.set_offset(rdkafka::Offset::Offset(*o))?;
            if !meta.is_empty() {
                e.set_metadata(meta.as_str());
            }
        }
        consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync)?;
        let done: Vec<i32> = offsets.iter().map(|(p, _, _)| *p).collect();
        self.forget(&done);
        Ok(())
    }

    /// Tries a failed commit again once its pause is over.
    pub fn retry_due<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if self.retry_at.is_some_and(|t| std::time::Instant::now() >= t) {
            self.commit(consumer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::RDKafkaLogLevel;
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::producer::{BaseProducer, Producer as _};

    /// Keeps what librdkafka logs.
    #[derive(Default)]
    struct Capture(Mutex<Vec<String>>);

    impl ClientContext for Capture {
        fn log(&self, _: RDKafkaLogLevel, fac: &str, message: &str) {
            self.0.lock().expect("not poisoned").push(format!("{fac} {message}"));
        }
    }

    impl rdkafka::producer::ProducerContext for Capture {
        type DeliveryOpaque = ();
        fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
    }

    impl ConsumerContext for Capture {}

    /// One pass-through table with keys of both kinds, as services and tests configure it.
    fn mixed() -> KafkaConfig {
        let mut k = KafkaConfig { bootstrap_servers: "127.0.0.1:9".into(), ..KafkaConfig::default() };
        for (key, v) in [
            ("session.timeout.ms", "6000"),
            ("queued.max.messages.kbytes", "1024"),
            ("queue.buffering.max.messages", "1000"),
            ("linger.ms", "1"),
            ("socket.keepalive.enable", "true"),
        ] {
            k.librdkafka.insert(key.into(), v.into());
        }
        k
    }

    fn confwarns(c: &Capture) -> Vec<String> {
        c.0.lock().expect("not poisoned").iter().filter(|l| l.contains("CONFWARN")).cloned().collect()
    }

    fn producer_logs(mut cfg: ClientConfig) -> Vec<String> {
        cfg.set_log_level(RDKafkaLogLevel::Debug);
        let p: BaseProducer<Capture> = cfg.create_with_context(Capture::default()).expect("a producer");
        // librdkafka checks the properties inside rd_kafka_new and queues its logs for the
        // client's queue, where they are once `create` returned; each poll serves one event.
        for _ in 0..1000 {
            p.poll(Duration::ZERO);
        }
        confwarns(p.context())
    }

    #[test]
    fn each_client_gets_only_its_own_kind_of_properties() {
        let k = mixed();
        assert_eq!(producer_logs(producer_config(&k, 0)), Vec::<String>::new());
        let mut cfg = consumer_config(&k, "g");
        cfg.set_log_level(RDKafkaLogLevel::Debug);
        let c: BaseConsumer<Capture> = cfg.create_with_context(Capture::default()).expect("a consumer");
        for _ in 0..1000 {
            let _ = c.poll(Duration::ZERO);
        }
        assert_eq!(confwarns(c.context()), Vec::<String>::new());
        // The capture does see them: the same table unfiltered makes librdkafka warn.
        let unfiltered = producer_logs(client_config(&k, &[]));
        assert!(unfiltered.iter().any(|l| l.contains("session.timeout.ms")), "{unfiltered:?}");
        // What is kept: the other kind's keys only go.
        let p = producer_config(&k, 0);
        assert_eq!(p.get("linger.ms"), Some("1"));
        assert_eq!(p.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(p.get("session.timeout.ms"), None);
        let c = consumer_config(&k, "g");
        assert_eq!(c.get("session.timeout.ms"), Some("6000"));
        assert_eq!(c.get("queue.buffering.max.messages"), None);
    }

    #[test]
    fn a_service_default_replaces_tracefolds_and_the_pass_through_wins() {
        let mut k = KafkaConfig { bootstrap_servers: "127.0.0.1:9".into(), ..KafkaConfig::default() };
        let own = [("linger.ms", "1"), ("batch.size", "500000")];
        let c = producer_config_with(&k, 0, &own);
        assert_eq!(c.get("linger.ms"), Some("1"));
        assert_eq!(c.get("batch.size"), Some("500000"));
        assert_eq!(c.get("compression.type"), Some("lz4"));
        assert_eq!(producer_config(&k, 0).get("linger.ms"), Some("5"), "other producers keep theirs");
        k.librdkafka.insert("linger.ms".into(), "7".into());
        assert_eq!(producer_config_with(&k, 0, &own).get("linger.ms"), Some("7"));
    }

    #[test]
    fn unknown_keys_still_reach_librdkafka() {
        assert!(ClientKind::Producer.takes("sesion.timeout.ms"));
        assert!(ClientKind::Consumer.takes("lingr.ms"));
    }
}
