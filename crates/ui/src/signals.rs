//! Recent signals, read back from the signals topic (the detector writes them there): what
//! `tracefold signals` and the UI's signals page show.

use std::time::{Duration, Instant};
use tracefold_detector::signal::Signal;
use tracefold_runtime::config::KafkaConfig;

/// Where the signals are.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The Kafka they are on.
    pub kafka: KafkaConfig,
    /// The signals topic.
    pub topic: String,
}

/// The last `limit` signals of every partition of `src.topic`, merged, oldest first, the most
/// recent `limit` kept. Reads for at most `deadline` (then returns what it has); blocking.
///
/// # Errors
/// When Kafka cannot be reached or the topic is unknown.
pub fn recent(src: &Source, group: &str, limit: usize, deadline: Duration) -> anyhow::Result<Vec<Signal>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let topic = src.topic.as_str();
    let limit_i = i64::try_from(limit).unwrap_or(i64::MAX);
    let c: BaseConsumer = tracefold_runtime::kafka::consumer_config(&src.kafka, group).create()?;
    let parts = tracefold_runtime::kafka::partitions_of(c.client(), topic, Duration::from_secs(10))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut remaining = 0i64;
    for p in parts {
        let (low, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if high > low {
            let from = high.saturating_sub(limit_i).max(low);
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(from))?;
            remaining += high - from;
        }
    }
    let mut all: Vec<Signal> = Vec::new();
    if remaining > 0 {
        c.assign(&tpl)?;
        let until = Instant::now() + deadline;
        while remaining > 0 && Instant::now() < until {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                remaining -= 1;
                if let Some(s) = m.payload().and_then(|p| serde_json::from_slice(p).ok()) {
                    all.push(s);
                }
            }
        }
    }
    all.sort_by(|a, b| (&a.minute, &a.issue_id).cmp(&(&b.minute, &b.issue_id)));
    let start = all.len().saturating_sub(limit);
    Ok(all.split_off(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A topic the cluster does not have is an error naming it, as the doc says (and as
    /// `tracefold dlq` answers): a typo in `--signals-topic` or `tracefold signals --topic`
    /// read as an empty topic ("No signals yet."), which looks like a quiet system.
    #[test]
    fn an_unknown_topic_is_an_error_not_an_empty_list() {
        let topics = tracefold_runtime::config::TopicsConfig::default();
        let broker = tracefold_runtime::devbroker::DevBroker::start(1, &topics, Some(1)).unwrap();
        let kafka = KafkaConfig { bootstrap_servers: broker.bootstrap_servers(), ..KafkaConfig::default() };
        let read = |topic: &str| {
            recent(&Source { kafka: kafka.clone(), topic: topic.into() }, "t", 10, Duration::from_secs(2))
        };
        let e = read("tracefold.signal").unwrap_err().to_string();
        assert!(e.contains("tracefold.signal") && e.contains("does not exist"), "{e}");
        assert!(read(&topics.signals).unwrap().is_empty(), "the configured topic exists, empty");
    }
}
