//! Kafka delivery reports counted per request.
//!
//! A request's events share one [`Acks`]: each event's delivery report (on the producer's
//! polling thread) counts down, and the last one wakes the request once. No channel and no
//! wake-up per event, as a `DeliveryFuture` per event would take.

use rdkafka::client::ClientContext;
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// The events producer: delivery reports go to the [`Acks`] of the request that sent them.
pub type EventsProducer = ThreadedProducer<AckContext>;

/// The events producer's context: counts each delivery report into its request's [`Acks`].
#[derive(Debug, Default, Clone, Copy)]
pub struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Arc<Acks>;

    fn delivery(&self, result: &DeliveryResult<'_>, acks: Arc<Acks>) {
        acks.report(result.is_ok());
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

    #[tokio::test]
    async fn a_wait_after_the_last_report_returns_at_once() {
        let acks = Acks::new(1);
        acks.report(true);
        acks.wait().await;
        assert_eq!(acks.failed(), 0);
    }
}
