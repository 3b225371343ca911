//! Backpressure: refuse new events while the grouper's lag puts accepted events at risk.
//!
//! A Kafka log with bounded retention (librdkafka's mock cluster keeps 5 MB or 100,000
//! message sets per partition; a real topic keeps `retention.bytes` / `retention.ms`) deletes
//! old messages whether the grouper read them or not. When the grouper's lag on any partition
//! of the events topic exceeds a bound, the producer refuses new events (native endpoint:
//! 503 with `Retry-After`; Sentry endpoints: 429 with `Retry-After` and
//! `X-Sentry-Rate-Limits`) until the lag is back under [`RESUME_RATIO`] of the bound.
//!
//! A watcher thread ([`spawn_watcher`]) reads, every `check_interval_ms`, each partition's
//! high watermark and the watched group's committed offset (the low watermark when it has
//! none), and sets one flag that the request path reads with one atomic load
//! ([`Gate::refusing`]). Bytes are estimated as lag times the average size of the events this
//! producer published lately (payload and key; the broker stores them compressed, so the
//! estimate is on the safe side).
//!
//! When the offsets cannot be read, the last decision is kept for `max_failed_checks`
//! checks in a row; after that the gate opens (stale data must not refuse events for ever),
//! with a WARN log line and [`crate::metrics::BACKPRESSURE_CHECK_FAILURES_TOTAL`] counting
//! every failed check.

use crate::metrics as m;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracefold_runtime::config::KafkaConfig;
use tracefold_runtime::telemetry::{run_guarded, Health, LIVENESS_DEADLINE};
use tracefold_runtime::Shutdown;

/// Below this share of every bound, a refusing gate opens again (hysteresis: the gate does
/// not flap at the bound).
pub const RESUME_RATIO: f64 = 0.8;

/// The `[backpressure]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackpressureSection {
    /// Most events the watched group may be behind on any one partition of the events topic
    /// before new events are refused. Unset or 0: no bound on events.
    pub max_lag_events: Option<u64>,
    /// Most bytes (estimated: lag times the average published event size) the watched group
    /// may be behind on any one partition. Unset or 0: no bound on bytes.
    pub max_lag_bytes: Option<u64>,
    /// The consumer group whose lag is watched: the grouper's `grouper.group_id`.
    pub group_id: String,
    /// How often the lag is read (ms).
    pub check_interval_ms: u64,
    /// `Retry-After` of a refusal, seconds.
    pub retry_after_secs: u64,
    /// Failed reads of the offsets in a row after which a refusing gate opens (its data is
    /// stale); every failure is counted and logged.
    pub max_failed_checks: u32,
}

impl Default for BackpressureSection {
    fn default() -> Self {
        Self {
            max_lag_events: None,
            max_lag_bytes: None,
            group_id: "tracefold-grouper".into(),
            check_interval_ms: 500,
            retry_after_secs: 1,
            max_failed_checks: 10,
        }
    }
}

impl BackpressureSection {
    /// The bounds in force (0 and unset both mean "no bound").
    pub fn bounds(&self) -> Bounds {
        Bounds { events: self.max_lag_events.unwrap_or(0), bytes: self.max_lag_bytes.unwrap_or(0) }
    }

    /// Checks values the types allow but the watcher cannot use.
    ///
    /// # Errors
    /// Names the key and what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.bounds().is_off() {
            return Ok(());
        }
        if self.group_id.trim().is_empty() {
            return Err("backpressure.group_id must name the grouper's consumer group".into());
        }
        if self.check_interval_ms == 0 {
            return Err("backpressure.check_interval_ms must be at least 1".into());
        }
        if self.retry_after_secs == 0 {
            return Err("backpressure.retry_after_secs must be at least 1".into());
        }
        if self.max_failed_checks == 0 {
            return Err("backpressure.max_failed_checks must be at least 1".into());
        }
        Ok(())
    }
}

/// Bounds on one partition's lag; 0 means no bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bounds {
    /// Events.
    pub events: u64,
    /// Estimated bytes.
    pub bytes: u64,
}

impl Bounds {
    /// Whether neither bound is set (backpressure off).
    pub fn is_off(&self) -> bool {
        self.events == 0 && self.bytes == 0
    }

    /// Whether a partition `lag` events behind, of `avg_bytes` per event, is over a bound.
    fn over(&self, lag: u64, avg_bytes: f64, ratio: f64) -> bool {
        let over_events = self.events > 0 && lag as f64 > self.events as f64 * ratio;
        let over_bytes = self.bytes > 0 && lag as f64 * avg_bytes > self.bytes as f64 * ratio;
        over_events || over_bytes
    }
}

/// What the gate does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Events are accepted.
    Open,
    /// Events are refused.
    Refusing,
}

/// The next state, given the largest lag of any partition (events) and the average event
/// size: refuse above a bound; once refusing, open again only when the lag is under
/// [`RESUME_RATIO`] of every bound.
pub fn decide(state: State, bounds: Bounds, max_lag: u64, avg_bytes: f64) -> State {
    if bounds.is_off() {
        return State::Open;
    }
    match state {
        State::Open if bounds.over(max_lag, avg_bytes, 1.0) => State::Refusing,
        State::Refusing if !bounds.over(max_lag, avg_bytes, RESUME_RATIO) => State::Open,
        s => s,
    }
}

/// What the request path reads, and what it feeds back (sizes of published events).
#[derive(Debug, Default)]
pub struct Gate {
    refusing: AtomicBool,
    published_bytes: AtomicU64,
    published_events: AtomicU64,
    retry_after_secs: AtomicU64,
}

impl Gate {
    /// A gate that is open, with `retry_after_secs` for its refusals.
    pub fn new(retry_after_secs: u64) -> Arc<Self> {
        let g = Self::default();
        g.retry_after_secs.store(retry_after_secs.max(1), Ordering::Relaxed);
        Arc::new(g)
    }

    /// Whether new events are refused now (one atomic load).
    pub fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// `Retry-After` for a refusal, seconds.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_secs.load(Ordering::Relaxed)
    }

    /// Counts events published (`bytes` in all, payloads and keys), for the size average.
    pub fn record_published(&self, events: usize, bytes: usize) {
        self.published_events.fetch_add(events as u64, Ordering::Relaxed);
        self.published_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Events and bytes published since the last call.
    fn take_published(&self) -> (u64, u64) {
        (self.published_events.swap(0, Ordering::Relaxed), self.published_bytes.swap(0, Ordering::Relaxed))
    }

    pub(crate) fn set(&self, state: State) {
        self.refusing.store(state == State::Refusing, Ordering::Relaxed);
    }
}

/// The watcher's memory between checks.
#[derive(Debug)]
pub struct Watch {
    bounds: Bounds,
    max_failed: u32,
    state: State,
    failed: u32,
    /// Average published event size (bytes), a moving average over check intervals.
    avg_bytes: f64,
}

/// What one check changed, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing.
    None,
    /// The gate started refusing.
    Started,
    /// The gate opened again: the lag is back under the bounds.
    Ended,
    /// The gate opened because the offsets could not be read for too long.
    OpenedStale,
}

impl Watch {
    /// A watch of `bounds` that opens after `max_failed` failed reads in a row.
    pub fn new(bounds: Bounds, max_failed: u32) -> Self {
        Self { bounds, max_failed: max_failed.max(1), state: State::Open, failed: 0, avg_bytes: 0.0 }
    }

    /// The state now.
    pub fn state(&self) -> State {
        self.state
    }

    /// The average published event size used for the byte estimate.
    pub fn avg_bytes(&self) -> f64 {
        self.avg_bytes
    }

    /// Feeds the events and bytes published since the last check into the average.
    pub fn published(&mut self, events: u64, bytes: u64) {
        if events == 0 {
            return;
        }
        let now = bytes as f64 / events as f64;
        self.avg_bytes = if self.avg_bytes == 0.0 { now } else { 0.7 * self.avg_bytes + 0.3 * now };
    }

    /// A successful read: the largest lag of any partition.
    pub fn observed(&mut self, max_lag: u64) -> Change {
        self.failed = 0;
        let before = self.state;
        self.state = decide(self.state, self.bounds, max_lag, self.avg_bytes);
        match (before, self.state) {
            (State::Open, State::Refusing) => Change::Started,
            (State::Refusing, State::Open) => Change::Ended,
            _ => Change::None,
        }
    }

    /// A failed read: the last state holds until `max_failed` failures in a row, then the
    /// gate opens.
    pub fn failed(&mut self) -> Change {
        self.failed = self.failed.saturating_add(1);
        if self.state == State::Refusing && self.failed >= self.max_failed {
            self.state = State::Open;
            return Change::OpenedStale;
        }
        Change::None
    }
}

/// Lag of `group` on every partition of `topic`: high watermark minus the committed offset
/// (the low watermark when the group committed none).
///
/// # Errors
/// When metadata, watermarks or committed offsets cannot be read within `timeout`.
pub fn partition_lags(c: &BaseConsumer, topic: &str, timeout: Duration) -> anyhow::Result<Vec<(i32, u64)>> {
    let md = c.fetch_metadata(Some(topic), timeout)?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .ok_or_else(|| anyhow::anyhow!("no metadata for topic {topic}"))?;
    let mut tpl = TopicPartitionList::new();
    for p in t.partitions() {
        tpl.add_partition(topic, p.id());
    }
    let committed = c.committed_offsets(tpl, timeout)?;
    let mut out = Vec::with_capacity(committed.count());
    for e in committed.elements() {
        let (low, high) = c.fetch_watermarks(topic, e.partition(), timeout)?;
        let done = match e.offset() {
            Offset::Offset(o) => o.max(low),
            _ => low,
        };
        out.push((e.partition(), u64::try_from(high - done).unwrap_or(0)));
    }
    Ok(out)
}

/// Starts the watcher thread for `cfg` on the events `topic`, feeding `gate`, until
/// `shutdown`. Does nothing (and returns `None`) when both bounds are off.
///
/// The watcher is a work loop of the producer: its health is a child of `health`
/// (`producer-backpressure`), beaten every check, so that a watcher that died (a panic) or
/// hangs, and left the gate as it was, turns the producer unhealthy. Its deadline covers a
/// check interval and the reads of a check that time out (each up to the larger of the
/// interval and 2 s), and is at least `health`'s.
///
/// # Errors
/// When the Kafka client cannot be created or the thread cannot start.
pub fn spawn_watcher(
    cfg: &BackpressureSection,
    kafka: &KafkaConfig,
    topic: &str,
    gate: Arc<Gate>,
    shutdown: Shutdown,
    health: &Health,
) -> anyhow::Result<Option<std::thread::JoinHandle<()>>> {
    let bounds = cfg.bounds();
    if bounds.is_off() {
        return Ok(None);
    }
    // A consumer of the watched group that never subscribes: it reads the group's committed
    // offsets (OffsetFetch) without joining the group.
    let consumer: BaseConsumer =
        tracefold_runtime::kafka::consumer_config(kafka, &cfg.group_id).set("statistics.interval.ms", "0").create()?;
    let interval = Duration::from_millis(cfg.check_interval_ms);
    let timeout = interval.max(Duration::from_secs(2));
    let (topic, group) = (topic.to_owned(), cfg.group_id.clone());
    let mut watch = Watch::new(bounds, cfg.max_failed_checks);
    tracing::info!(
        group = %group, topic = %topic, max_lag_events = bounds.events, max_lag_bytes = bounds.bytes,
        "backpressure on: new events are refused while the group's lag on a partition is over a bound"
    );
    metrics::gauge!(m::BACKPRESSURE_REFUSING).set(0.0);
    let watcher = health.child("producer-backpressure");
    // A check that fails makes three reads at most (metadata, commits, a watermark), each up
    // to `timeout`; one more for the margin.
    let longest = interval + 4 * timeout;
    if longest > LIVENESS_DEADLINE {
        watcher.set_deadline(longest);
    }
    let handle = std::thread::Builder::new().name("backpressure".into()).spawn(move || {
        let run =
            || watch_loop(&watcher, &shutdown, &gate, &consumer, &topic, &group, interval, timeout, bounds, &mut watch);
        if let Err(e) = run_guarded(&watcher, run) {
            // Fail open, as when the lag stays unreadable; /healthz names the dead loop.
            tracing::error!(error = %format!("{e:#}"), "backpressure: the watcher died; accepting events without it");
        }
        gate.set(State::Open);
    })?;
    Ok(Some(handle))
}

/// The watcher's loop (see [`spawn_watcher`]).
#[allow(clippy::too_many_arguments)]
fn watch_loop(
    health: &Health,
    shutdown: &Shutdown,
    gate: &Gate,
    consumer: &BaseConsumer,
    topic: &str,
    group: &str,
    interval: Duration,
    timeout: Duration,
    bounds: Bounds,
    watch: &mut Watch,
) -> anyhow::Result<()> {
    while !shutdown.is_triggered() {
        health.beat();
        let (events, bytes) = gate.take_published();
        watch.published(events, bytes);
        match partition_lags(consumer, topic, timeout) {
            Ok(lags) => {
                let max = lags.iter().map(|(_, l)| *l).max().unwrap_or(0);
                metrics::gauge!(m::BACKPRESSURE_MAX_LAG_EVENTS).set(max as f64);
                metrics::gauge!(m::BACKPRESSURE_MAX_LAG_BYTES).set(max as f64 * watch.avg_bytes());
                match watch.observed(max) {
                    Change::Started => tracing::warn!(
                        group = %group, topic = %topic, max_lag_events = max,
                        estimated_bytes = (max as f64 * watch.avg_bytes()) as u64,
                        bound_events = bounds.events, bound_bytes = bounds.bytes,
                        "backpressure: the grouper is too far behind; refusing new events"
                    ),
                    Change::Ended => tracing::info!(
                        group = %group, topic = %topic, max_lag_events = max,
                        "backpressure ended: accepting events again"
                    ),
                    _ => {}
                }
            }
            Err(e) => {
                metrics::counter!(m::BACKPRESSURE_CHECK_FAILURES_TOTAL).increment(1);
                tracing::warn!(group = %group, topic = %topic, error = %format!("{e:#}"), "backpressure: cannot read the group's lag");
                if watch.failed() == Change::OpenedStale {
                    tracing::warn!(
                        group = %group, topic = %topic,
                        "backpressure: lag unreadable for too long; accepting events again without knowing the lag"
                    );
                }
            }
        }
        gate.set(watch.state());
        metrics::gauge!(m::BACKPRESSURE_REFUSING).set(f64::from(u8::from(watch.state() == State::Refusing)));
        // Sleep in short steps so that shutdown is prompt.
        let mut left = interval;
        while !left.is_zero() && !shutdown.is_triggered() {
            let step = left.min(Duration::from_millis(50));
            std::thread::sleep(step);
            left -= step;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds { events: 1000, bytes: 0 };

    #[test]
    fn off_never_refuses() {
        assert_eq!(decide(State::Open, Bounds::default(), u64::MAX, 1e9), State::Open);
        assert_eq!(decide(State::Refusing, Bounds::default(), u64::MAX, 1e9), State::Open);
    }

    #[test]
    fn refuses_above_the_bound_and_resumes_under_eighty_percent() {
        assert_eq!(decide(State::Open, B, 1000, 100.0), State::Open, "at the bound is not over it");
        assert_eq!(decide(State::Open, B, 1001, 100.0), State::Refusing);
        assert_eq!(decide(State::Refusing, B, 900, 100.0), State::Refusing, "between 80% and the bound: no change");
        assert_eq!(decide(State::Open, B, 900, 100.0), State::Open, "between 80% and the bound: no change");
        assert_eq!(decide(State::Refusing, B, 800, 100.0), State::Open);
    }

    #[test]
    fn bytes_are_lag_times_the_average_size() {
        let b = Bounds { events: 0, bytes: 1_000_000 };
        assert_eq!(decide(State::Open, b, 999, 1000.0), State::Open);
        assert_eq!(decide(State::Open, b, 1001, 1000.0), State::Refusing);
        assert_eq!(decide(State::Refusing, b, 801, 1000.0), State::Refusing);
        assert_eq!(decide(State::Refusing, b, 799, 1000.0), State::Open);
        // Either bound refuses; both must be under 80% to resume.
        let both = Bounds { events: 10_000, bytes: 1_000_000 };
        assert_eq!(decide(State::Open, both, 2000, 1000.0), State::Refusing, "bytes over, events under");
        assert_eq!(decide(State::Refusing, both, 900, 1000.0), State::Refusing, "bytes at 90%");
        assert_eq!(decide(State::Refusing, both, 700, 1000.0), State::Open);
        assert_eq!(decide(State::Open, both, 10_001, 1.0), State::Refusing, "events over, bytes under");
    }

    #[test]
    fn transitions_are_reported_once() {
        let mut w = Watch::new(B, 3);
        assert_eq!(w.observed(10), Change::None);
        assert_eq!(w.observed(2000), Change::Started);
        assert_eq!(w.observed(3000), Change::None);
        assert_eq!(w.observed(100), Change::Ended);
        assert_eq!(w.observed(100), Change::None);
    }

    #[test]
    fn stale_data_opens_the_gate_after_max_failed_checks() {
        let mut w = Watch::new(B, 3);
        assert_eq!(w.observed(2000), Change::Started);
        assert_eq!(w.failed(), Change::None);
        assert_eq!(w.failed(), Change::None);
        assert_eq!(w.state(), State::Refusing, "the last state holds for a while");
        assert_eq!(w.failed(), Change::OpenedStale);
        assert_eq!(w.state(), State::Open);
        assert_eq!(w.failed(), Change::None, "open stays open");
        // A good read resets the count and decides on fresh data.
        assert_eq!(w.observed(2000), Change::Started);
        assert_eq!(w.failed(), Change::None);
        assert_eq!(w.observed(2000), Change::None);
        assert_eq!(w.failed(), Change::None);
        assert_eq!(w.failed(), Change::None);
        assert_eq!(w.state(), State::Refusing, "failures counted in a row only");
    }

    #[test]
    fn the_average_size_follows_what_was_published() {
        let mut w = Watch::new(Bounds { events: 0, bytes: 10_000 }, 1);
        w.published(0, 0);
        assert_eq!(w.avg_bytes(), 0.0, "nothing published: no estimate, no refusal on bytes");
        assert_eq!(w.observed(1_000_000), Change::None);
        w.published(10, 10_000);
        assert_eq!(w.avg_bytes(), 1000.0);
        w.published(10, 20_000);
        assert!(w.avg_bytes() > 1000.0 && w.avg_bytes() < 2000.0);
        assert_eq!(w.observed(11), Change::Started);
    }

    #[test]
    fn the_gate_counts_published_sizes_and_resets() {
        let g = Gate::new(0);
        assert_eq!(g.retry_after_secs(), 1, "at least one second");
        g.record_published(3, 300);
        g.record_published(1, 100);
        assert_eq!(g.take_published(), (4, 400));
        assert_eq!(g.take_published(), (0, 0));
        assert!(!g.refusing());
        g.set(State::Refusing);
        assert!(g.refusing());
    }

    #[test]
    fn checks_name_the_key() {
        let mut s = BackpressureSection { check_interval_ms: 0, ..Default::default() };
        assert!(s.check().is_ok(), "off: nothing to check");
        s.max_lag_events = Some(10);
        assert!(s.check().unwrap_err().contains("check_interval_ms"));
        let s = BackpressureSection { max_lag_bytes: Some(1), group_id: " ".into(), ..Default::default() };
        assert!(s.check().unwrap_err().contains("group_id"));
        let s = BackpressureSection { max_lag_bytes: Some(1), retry_after_secs: 0, ..Default::default() };
        assert!(s.check().unwrap_err().contains("retry_after_secs"));
    }
}
