//! Kafka delivery reports counted per request.
//!
//! A request's events share one [`Acks`]: each event's delivery report (on the producer's
//! polling thread) counts down, and the last one wakes the request once. No channel and no
//! wake-up per event, as a `DeliveryFuture` per event would take.

use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Notify;

/// The events producer: delivery reports go to the [`Acks`] of the request that sent them.
pub type EventsProducer = ThreadedProducer<AckContext>;

/// The events producer's context: counts each delivery report into its request's [`Acks`]
/// and into the producer's [`DeliveryProgress`].
#[derive(Debug, Default, Clone)]
pub struct AckContext {
    /// Whether deliveries succeed, for the health of the producer.
    pub progress: Arc<DeliveryProgress>,
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Arc<Acks>;

    fn delivery(&self, result: &DeliveryResult<'_>, acks: Arc<Acks>) {
        match result {
            Ok(_) => self.progress.delivered(),
            Err((e, _)) => self.progress.failed(e),
        }
        acks.report(result.is_ok());
    }
}

/// How long after its last failed delivery report a producer counts as no longer failing
/// (no traffic since, or nothing left to fail): 10 s.
pub const FAILING_QUIET_MS: u64 = 10_000;

/// How often at most a WARN line reports failed deliveries (with how many failed since the
/// last line): every 10 s.
pub const FAILURE_LOG_EVERY_MS: u64 = 10_000;

/// Whether the events producer's deliveries make progress: Kafka acknowledged something
/// since the last failed delivery report, or no delivery failed within [`FAILING_QUIET_MS`]
/// (an idle producer makes progress). The producer's health ticker beats the
/// `producer-delivery` loop only while this holds, so that deliveries that keep failing with
/// no success (Kafka unreachable for longer than `http.delivery_timeout_ms`, a topic or codec
/// the brokers refuse) turn `/healthz` unhealthy after the liveness deadline. Each failure is
/// also counted (`tracefold_producer_events_total{outcome="failed"}`, by the request) and
/// logged (WARN, at most every [`FAILURE_LOG_EVERY_MS`], with librdkafka's error).
#[derive(Debug)]
pub struct DeliveryProgress {
    base: Instant,
    /// Milliseconds since `base`, plus one, of the last success (0: none yet).
    last_ok_ms: AtomicU64,
    /// Likewise, of the last failure.
    last_failure_ms: AtomicU64,
    /// Likewise, of the last WARN line.
    last_log_ms: AtomicU64,
    /// Failures not reported by a WARN line yet.
    unlogged: AtomicU64,
    /// A failure was logged and no success came since (for the INFO line when one does).
    failing: AtomicBool,
}

impl Default for DeliveryProgress {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            last_ok_ms: AtomicU64::new(0),
            last_failure_ms: AtomicU64::new(0),
            last_log_ms: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }
    }
}

impl DeliveryProgress {
    /// The clock of this progress: milliseconds since it was made, plus one.
    pub fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    /// Kafka acknowledged an event. A success only counts against a failure: while none was
    /// ever reported, the clock is not read (a clock read per acknowledged event was 2% of
    /// the HTTP bench's samples, on the delivery-report thread). Delivery reports come one
    /// at a time from that thread, so a failure is recorded before the successes after it.
    pub fn delivered(&self) {
        if self.last_failure_ms.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.delivered_at(self.now_ms());
    }

    /// An event was not delivered (`error`: librdkafka's reason).
    pub fn failed(&self, error: &KafkaError) {
        self.failed_at(self.now_ms(), error);
    }

    /// Whether deliveries make progress now.
    pub fn progressing(&self) -> bool {
        self.progressing_at(self.now_ms())
    }

    fn delivered_at(&self, now_ms: u64) {
        self.last_ok_ms.fetch_max(now_ms, Ordering::Relaxed);
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("Kafka acknowledges events again");
        }
    }

    fn failed_at(&self, now_ms: u64, error: &KafkaError) {
        self.last_failure_ms.fetch_max(now_ms, Ordering::Relaxed);
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        let last = self.last_log_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= FAILURE_LOG_EVERY_MS;
        // One reporter per period: whoever moves the log clock writes the line.
        if due && self.last_log_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.failing.store(true, Ordering::Relaxed);
            let failed = self.unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(error = %error, failed, "Kafka did not deliver events (their requests are answered 503 and retried by the senders); /healthz turns unhealthy when no delivery succeeds while failures go on");
        }
    }

    /// Whether deliveries make progress at `now_ms` (of [`Self::now_ms`]'s clock).
    pub fn progressing_at(&self, now_ms: u64) -> bool {
        let failure = self.last_failure_ms.load(Ordering::Relaxed);
        failure == 0
            || self.last_ok_ms.load(Ordering::Relaxed) >= failure
            || now_ms.saturating_sub(failure) > FAILING_QUIET_MS
    }
}

/// Kafka's answers for one request's events: how many are still unanswered, how many failed.
#[derive(Debug)]
pub struct Acks {
    pending: AtomicUsize,
    failed: AtomicUsize,
    done: Notify,
}

impl Acks {
    /// Waits for `n` delivery reports.
    pub fn new(n: usize) -> Arc<Self> {
        Arc::new(Self { pending: AtomicUsize::new(n), failed: AtomicUsize::new(0), done: Notify::new() })
    }

    /// Counts one delivery report (`ok`: acknowledged); the last wakes [`Acks::wait`].
    pub fn report(&self, ok: bool) {
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        // AcqRel: the failure count above is seen by whoever sees the count reach zero.
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    /// Delivery reports still to come.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Events Kafka refused or that failed (final once [`Acks::pending`] is zero).
    pub fn failed(&self) -> usize {
        self.failed.load(Ordering::Acquire)
    }

    /// Returns once every delivery report came. Cancel safe: a report that comes while no one
    /// waits leaves a permit, so that the next wait returns at once.
    pub async fn wait(&self) {
        while self.pending() > 0 {
            self.done.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_last_report_wakes_the_request_and_failures_are_counted() {
        let acks = Acks::new(3);
        let a = acks.clone();
        let reporter = std::thread::spawn(move || {
            a.report(true);
            a.report(false);
            a.report(true);
        });
        acks.wait().await;
        reporter.join().unwrap();
        assert_eq!(acks.pending(), 0);
        assert_eq!(acks.failed(), 1);
    }

    #[test]
    fn deliveries_make_progress_unless_failures_go_on_without_a_success() {
        let p = DeliveryProgress::default();
        let e = KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageTimedOut);
        assert!(p.progressing_at(1), "nothing sent yet");
        p.delivered_at(100);
        assert!(p.progressing_at(200));
        p.failed_at(300, &e);
        assert!(!p.progressing_at(300), "the last report failed");
        p.failed_at(5_000, &e);
        assert!(!p.progressing_at(5_000 + FAILING_QUIET_MS), "failures go on, no success since");
        p.delivered_at(6_000);
        assert!(p.progressing_at(6_000), "a success after the failures");
        p.failed_at(7_000, &e);
        assert!(!p.progressing_at(7_001));
        assert!(p.progressing_at(7_001 + FAILING_QUIET_MS), "no failure for a while: idle, or recovered");
        // Reports may come out of order across threads: the clocks only move forward.
        p.delivered_at(6_500);
        assert!(!p.progressing_at(7_002), "an older success does not hide a newer failure");
    }

    #[test]
    fn successes_read_the_clock_only_once_a_failure_was_reported() {
        let p = DeliveryProgress::default();
        let e = KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageTimedOut);
        p.delivered();
        assert_eq!(p.last_ok_ms.load(Ordering::Relaxed), 0, "no failure yet: nothing to compare with");
        assert!(p.progressing());
        p.failed(&e);
        assert!(!p.progressing(), "the last report failed");
        p.delivered();
        assert!(p.last_ok_ms.load(Ordering::Relaxed) > 0);
        assert!(p.progressing(), "a success after the failure counts");
    }

    #[tokio::test]
    async fn a_wait_after_the_last_report_returns_at_once() {
        let acks = Acks::new(1);
        acks.report(true);
        acks.wait().await;
        assert_eq!(acks.failed(), 0);
    }
}
