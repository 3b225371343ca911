//! An embedded Kafka for development and tests: librdkafka's mock cluster, speaking the real
//! protocol on loopback ports, with tracefold's topics created from their definitions.
//!
//! With several brokers the topics are replicated (factor `min(3, brokers)`, as librdkafka's
//! mock cluster defaults to) and partition leaders are spread round-robin over the brokers
//! (broker ids start at 1), so that moving a leader or taking a broker down affects a known
//! set of partitions. Fault injection is librdkafka's own ([`DevBroker::cluster`]:
//! `request_errors`, `broker_down`/`broker_up`, `partition_leader`, `coordinator`); with
//! [`DevBrokerOptions::track_requests`] the broker also counts the requests it receives, per
//! broker and API, so that a test can prove that an injected fault was served (see
//! [`DevBroker::mark_requests`]).

use crate::config::TopicsConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaApiKey;
use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The topic whose leader changes mark a point in the request stream (only with tracking).
const MARK_TOPIC: &str = "__tracefold_devbroker_marks";

/// Options of [`DevBroker::start_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevBrokerOptions {
    /// Brokers in the cluster (ids `1..=brokers`).
    pub brokers: i32,
    /// Partitions of every topic but the DLQ; `None`: the counts of `schemas/topics.toml`.
    pub partitions: Option<i32>,
    /// Count the requests the brokers receive (from librdkafka's mock debug log). Costs a log
    /// line per request: for tests, not for benchmarks.
    pub track_requests: bool,
}

impl Default for DevBrokerOptions {
    fn default() -> Self {
        Self { brokers: 1, partitions: None, track_requests: false }
    }
}

/// Requests received by the mock brokers, per broker id and API name (`Produce`, `Fetch`,
/// `OffsetCommit`, ... as librdkafka spells them, which is also [`RDKafkaApiKey`]'s `Debug`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts {
    by: BTreeMap<(i32, String), u64>,
}

impl RequestCounts {
    /// Requests of `api` received by `broker`, or by any broker with `None`.
    pub fn count(&self, broker: Option<i32>, api: RDKafkaApiKey) -> u64 {
        let name = format!("{api:?}");
        self.by
            .iter()
            .filter(|((b, a), _)| (broker.is_none() || broker == Some(*b)) && *a == name)
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests counted here and not in `earlier`.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        let by = self
            .by
            .iter()
            .map(|(k, n)| (k.clone(), n - earlier.by.get(k).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        RequestCounts { by }
    }

    /// Every (broker, API) with its count.
    pub fn iter(&self) -> impl Iterator<Item = (i32, &str, u64)> {
        self.by.iter().map(|((b, a), n)| (*b, a.as_str(), *n))
    }
}

/// A point in the brokers' request stream, from [`DevBroker::mark_requests`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestMark(u64);

#[derive(Debug, Default)]
struct Tally {
    counts: RequestCounts,
    /// Marks seen in the log so far.
    seen: u64,
    /// Counts as they were when the n-th mark passed through the log, by n.
    marks: BTreeMap<u64, RequestCounts>,
}

/// The context of the client that hosts the mock cluster: reads librdkafka's mock debug log
/// (served in order by the producer's polling thread) into request counts.
#[derive(Debug, Default)]
pub struct BrokerContext {
    tally: Mutex<Tally>,
    marked: Condvar,
}

impl BrokerContext {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, line: &str) {
        // "[thrd:mock]: Broker 2: Received FetchRequestV11 from 127.0.0.1:41234"
        let line = match line.strip_prefix("[thrd:") {
            Some(rest) => rest.split_once("]: ").map_or(rest, |(_, l)| l),
            None => line,
        };
        if let Some(rest) = line.strip_prefix("Broker ") {
            let Some((id, rest)) = rest.split_once(": Received ") else { return };
            let (Ok(id), Some((api, _))) = (id.parse::<i32>(), rest.split_once("RequestV")) else { return };
            *self.lock().counts.by.entry((id, api.to_owned())).or_default() += 1;
        } else if line.starts_with(&format!("Set {MARK_TOPIC} [0] leader to ")) {
            // Marks are made one at a time (see `mark_requests`): the n-th line is mark n.
            let mut t = self.lock();
            t.seen += 1;
            let (n, snapshot) = (t.seen, t.counts.clone());
            t.marks.insert(n, snapshot);
            self.marked.notify_all();
        }
    }
}

impl ClientContext for BrokerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, line: &str) {
        if fac == "MOCK" {
            self.record(line);
        } else if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            // The hosting client's own complaints (a broker taken down on purpose, say).
            tracing::debug!(fac, message = line, "embedded kafka");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "embedded kafka client");
    }
}

impl ProducerContext for BrokerContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// A running mock cluster. It lives as long as this value.
pub struct DevBroker {
    /// The client that hosts the mock cluster (`test.mock.num.brokers`); its polling thread
    /// serves the mock's log.
    host: ThreadedProducer<BrokerContext>,
    brokers: i32,
    replication: i32,
    tracking: bool,
    marks: Mutex<u64>,
}

impl DevBroker {
    /// Starts `brokers` mock brokers and creates the configured topics with the default
    /// partition counts of `schemas/topics.toml` (or `partitions` when given).
    ///
    /// # Errors
    /// When librdkafka cannot create the cluster or a topic.
    pub fn start(brokers: i32, topics: &TopicsConfig, partitions: Option<i32>) -> anyhow::Result<Self> {
        Self::start_with(topics, &DevBrokerOptions { brokers, partitions, track_requests: false })
    }

    /// Starts the cluster `opts` describes and creates the configured topics: replicated
    /// `min(3, brokers)` times, leaders spread round-robin (partition `p` on broker
    /// `p % brokers + 1`).
    ///
    /// # Errors
    /// When `opts` are out of range, or librdkafka cannot create the cluster or a topic.
    pub fn start_with(topics: &TopicsConfig, opts: &DevBrokerOptions) -> anyhow::Result<Self> {
        let brokers = opts.brokers;
        if !(1..=64).contains(&brokers) {
            anyhow::bail!("the embedded Kafka needs 1 to 64 brokers, not {brokers}");
        }
        if let Some(p) = opts.partitions.filter(|p| *p < 1) {
            anyhow::bail!("topics need at least 1 partition, not {p}");
        }
        let mut cfg = ClientConfig::new();
        cfg.set("test.mock.num.brokers", brokers.to_string());
        if opts.track_requests {
            cfg.set("debug", "mock").set_log_level(RDKafkaLogLevel::Debug);
        } else {
            cfg.set_log_level(RDKafkaLogLevel::Warning);
        }
        let host: ThreadedProducer<BrokerContext> = cfg
            .create_with_context(BrokerContext::default())
            .map_err(|e| anyhow::anyhow!("cannot start the mock cluster: {e}"))?;
        let replication = brokers.min(3);
        let this = Self { host, brokers, replication, tracking: opts.track_requests, marks: Mutex::new(0) };
        {
            let cluster = this.cluster();
            for def in crate::topics::configured(topics) {
                let n = if def.role == "dlq" { def.partitions } else { opts.partitions.unwrap_or(def.partitions) };
                cluster
                    .create_topic(&def.name, n, replication)
                    .map_err(|e| anyhow::anyhow!("cannot create topic {}: {e}", def.name))?;
                if brokers > 1 {
                    for p in 0..n {
                        cluster
                            .partition_leader(&def.name, p, Some(p % brokers + 1))
                            .map_err(|e| anyhow::anyhow!("cannot place the leader of {} [{p}]: {e}", def.name))?;
                    }
                }
            }
            if opts.track_requests {
                cluster
                    .create_topic(MARK_TOPIC, 1, 1)
                    .map_err(|e| anyhow::anyhow!("cannot create {MARK_TOPIC}: {e}"))?;
            }
        }
        Ok(this)
    }

    /// `host:port,...` to give clients.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster().bootstrap_servers()
    }

    /// How many brokers run (ids `1..=brokers`).
    pub fn brokers(&self) -> i32 {
        self.brokers
    }

    /// The replication factor of the topics created at start.
    pub fn replication_factor(&self) -> i32 {
        self.replication
    }

    /// The underlying mock cluster, for fault injection (`request_errors`, `broker_down`,
    /// `broker_up`, `partition_leader`, `coordinator`, ...).
    pub fn cluster(&self) -> MockCluster<'_, BrokerContext> {
        self.host.client().mock_cluster().expect("the host client was created with test.mock.num.brokers")
    }

    /// The leader broker of every partition of `topic`, as the cluster's metadata says.
    ///
    /// # Errors
    /// When the metadata cannot be read, or the topic does not exist.
    pub fn leaders(&self, topic: &str, timeout: Duration) -> anyhow::Result<Vec<i32>> {
        let md = self.host.client().fetch_metadata(Some(topic), timeout)?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .ok_or_else(|| anyhow::anyhow!("no metadata for topic {topic}"))?;
        let mut parts: Vec<(i32, i32)> = t.partitions().iter().map(|p| (p.id(), p.leader())).collect();
        parts.sort_unstable();
        Ok(parts.into_iter().map(|(_, leader)| leader).collect())
    }

    /// The requests received since start (empty unless started with `track_requests`).
    pub fn requests(&self) -> RequestCounts {
        self.host.context().lock().counts.clone()
    }

    /// Marks the current point in the request stream and waits (up to `timeout`) until the
    /// request log has caught up with it. Every request counted by
    /// [`requests_since`](Self::requests_since) this mark was received after everything the
    /// caller did before calling this (for example pushing request errors): the mock cluster
    /// handles requests and these marks on one thread, in order.
    ///
    /// # Errors
    /// Without `track_requests`, or when the log does not catch up in time.
    pub fn mark_requests(&self, timeout: Duration) -> anyhow::Result<RequestMark> {
        if !self.tracking {
            anyhow::bail!("the embedded Kafka was started without track_requests");
        }
        let n = {
            // One mark at a time: the n-th marker line in the log is mark n. Setting the
            // leader is synchronous (the mock thread has handled it when it returns).
            let mut marks = self.marks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.cluster()
                .partition_leader(MARK_TOPIC, 0, Some(1))
                .map_err(|e| anyhow::anyhow!("cannot mark the request stream: {e}"))?;
            *marks += 1;
            *marks
        };
        let ctx = self.host.context();
        let deadline = Instant::now() + timeout;
        let mut t = ctx.lock();
        loop {
            if t.marks.contains_key(&n) {
                return Ok(RequestMark(n));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                anyhow::bail!("the mock cluster's request log did not reach mark {n} within {timeout:?}");
            }
            t = ctx.marked.wait_timeout(t, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
    }

    /// The requests received after `mark`.
    pub fn requests_since(&self, mark: RequestMark) -> RequestCounts {
        let t = self.host.context().lock();
        let base = t.marks.get(&mark.0).cloned().unwrap_or_default();
        t.counts.since(&base)
    }
}
