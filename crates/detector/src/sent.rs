//! The signals already produced, by this process or by another replica, kept for as long as
//! they can be produced again: so that a restart, a partition taken over from another replica
//! or an issue read back after eviction does not signal the same detection twice.
//!
//! Signal ids are deterministic ([`crate::signal::signal_id`]): the same detection has the same
//! id. Each id is kept as a 64-bit hash (16 bytes with its expiry) until the watermark is more
//! than the horizon past the later of its minute and the watermark when it was produced: a
//! record read again after a restart or a takeover is at most the allowed lateness behind the
//! watermark of its time. Spikes and thresholds are also kept per issue, so that an issue whose
//! state is read back does not signal again a burst already signalled ([`Sent::signalled`]).
//!
//! [`SignalsTail`] reads the signals topic: at start-up its last 10,000 signals per partition,
//! then, on every tick, what other replicas produced, and on every partition assignment up to
//! the topic's end (a replica giving a partition up flushes its signals first).

use crate::signal::{Kind, Signal};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracefold_runtime::config::KafkaConfig;

/// A spike or threshold signalled: (kind, rule, minute).
pub type Signalled = (Kind, String, i64);

/// Signals produced, bounded by a horizon of event time.
#[derive(Debug, Default)]
pub struct Sent {
    /// Id hash -> the minute after which it may go (Unix seconds).
    ids: HashMap<u64, i64>,
    /// Per (project, issue): spikes and thresholds signalled, (kind, rule, minute).
    signalled: HashMap<(String, String), Vec<Signalled>>,
}

fn id_hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

impl Sent {
    /// Records `s` as produced, `watermark` being the engine's (if any); false when it already
    /// was (the same detection).
    pub fn insert(&mut self, s: &Signal, watermark: Option<i64>) -> bool {
        let minute = tracefold_model::time::parse_rfc3339(&s.minute).map_or(0, |ms| ms.div_euclid(1000));
        let keep_until = minute.max(watermark.unwrap_or(i64::MIN));
        if self.ids.insert(id_hash(&s.signal_id), keep_until).is_some() {
            return false;
        }
        if matches!(s.kind, Kind::Spike | Kind::Threshold) {
            self.signalled.entry((s.project.clone(), s.issue_id.clone())).or_default().push((
                s.kind,
                s.rule.clone(),
                minute,
            ));
        }
        true
    }

    /// Whether a signal with this id was produced.
    pub fn contains(&self, signal_id: &str) -> bool {
        self.ids.contains_key(&id_hash(signal_id))
    }

    /// Spikes and thresholds signalled for an issue: (kind, rule, minute).
    pub fn signalled(&self, project: &str, issue_id: &str) -> Vec<Signalled> {
        self.signalled.get(&(project.to_owned(), issue_id.to_owned())).cloned().unwrap_or_default()
    }

    /// Forgets what may go before `minute` (Unix seconds).
    pub fn prune(&mut self, minute: i64) {
        self.ids.retain(|_, keep_until| *keep_until >= minute);
        self.signalled.retain(|_, v| {
            v.retain(|(_, _, m)| *m >= minute);
            !v.is_empty()
        });
    }

    /// Ids held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Reads the signals topic into a [`Sent`].
pub struct SignalsTail {
    consumer: BaseConsumer,
    topic: String,
}

impl SignalsTail {
    /// A reader of `topic` from its last `last` signals per partition (its own consumer
    /// group name, for librdkafka only: it commits nothing).
    ///
    /// # Errors
    /// Kafka unusable.
    pub fn start(kafka: &KafkaConfig, group: &str, topic: &str, last: i64) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = tracefold_runtime::kafka::consumer_config(kafka, group).create()?;
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let mut tpl = TopicPartitionList::new();
        for p in md.topics().iter().flat_map(|t| t.partitions()) {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            tpl.add_partition_offset(topic, p.id(), Offset::Offset((high - last).max(low)))?;
        }
        consumer.assign(&tpl)?;
        Ok(Self { consumer, topic: topic.to_owned() })
    }

    /// Reads what is there now, up to `max` signals, without waiting; returns how many.
    pub fn poll(&mut self, sent: &mut Sent, watermark: Option<i64>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            match self.consumer.poll(Duration::ZERO) {
                Some(Ok(m)) => {
                    if let Some(s) = m.payload().and_then(|p| serde_json::from_slice::<Signal>(p).ok()) {
                        sent.insert(&s, watermark);
                    }
                    n += 1;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the signals topic; retrying");
                    break;
                }
                None => break,
            }
        }
        n
    }

    /// Reads up to the topic's current end (waiting up to `timeout`); false when it could not.
    pub fn catch_up(&mut self, sent: &mut Sent, watermark: Option<i64>, timeout: Duration) -> bool {
        self.catch_up_with(sent, watermark, timeout, |_, _| {})
    }

    /// [`Self::catch_up`], handing every signal read, with when it was produced (Unix ms, the
    /// record's timestamp, or now), to `also`.
    pub fn catch_up_with(
        &mut self,
        sent: &mut Sent,
        watermark: Option<i64>,
        timeout: Duration,
        mut also: impl FnMut(&Signal, i64),
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut ends = HashMap::new();
        let Ok(assigned) = self.consumer.assignment() else { return false };
        for e in assigned.elements() {
            match self.consumer.fetch_watermarks(&self.topic, e.partition(), Duration::from_secs(5)) {
                Ok((_, high)) => {
                    ends.insert(e.partition(), high);
                }
                Err(_) => return false,
            }
        }
        loop {
            let Ok(pos) = self.consumer.position() else { return false };
            let behind = pos.elements().iter().any(|e| {
                let end = ends.get(&e.partition()).copied().unwrap_or(0);
                match e.offset() {
                    Offset::Offset(o) => o < end,
                    // Nothing read yet from it: behind if it holds anything.
                    _ => end > 0,
                }
            });
            if !behind {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    if let Some(s) = m.payload().and_then(|p| serde_json::from_slice::<Signal>(p).ok()) {
                        sent.insert(&s, watermark);
                        also(&s, m.timestamp().to_millis().unwrap_or_else(tracefold_model::time::now_ms));
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "cannot read the signals topic; retrying"),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(kind: Kind, issue: &str, minute: &str) -> Signal {
        Signal {
            v: 1,
            signal_id: crate::signal::signal_id(kind, "web", issue, 0, minute),
            kind,
            project: "web".into(),
            issue_id: issue.into(),
            minute: minute.into(),
            window_minutes: 1,
            count: 1,
            ..Signal::default()
        }
    }

    #[test]
    fn a_signal_is_new_once_and_kept_until_the_horizon_passes_it_and_its_watermark() {
        let mut sent = Sent::default();
        let spike = sig(Kind::Spike, "a", "2026-11-26T10:00:00Z");
        let t = 1_795_687_200; // 2026-11-26T10:00:00Z
        assert!(sent.insert(&spike, Some(t)));
        assert!(!sent.insert(&spike, Some(t + 600)), "the same detection");
        // A new issue dated long ago, produced at watermark t: kept as long as one of t.
        let old = sig(Kind::NewIssue, "b", "2026-11-20T10:00:00Z");
        assert!(sent.insert(&old, Some(t)));
        assert_eq!(sent.signalled("web", "a"), [(Kind::Spike, String::new(), t)]);
        assert!(sent.signalled("web", "b").is_empty(), "only spikes and thresholds");
        sent.prune(t);
        assert_eq!(sent.len(), 2);
        assert!(sent.contains(&spike.signal_id) && sent.contains(&old.signal_id));
        // Found again at watermark t + 600: kept as long as one produced then.
        sent.prune(t + 60);
        assert!(sent.contains(&spike.signal_id) && !sent.contains(&old.signal_id));
        assert!(sent.signalled("web", "a").is_empty(), "its minute is past");
        sent.prune(t + 601);
        assert!(sent.is_empty());
    }
}
