//! Recent signals, read back from the signals topic (the detector writes them there): what
//! `tracefold signals` and the UI's signals page show.

use std::time::Duration;
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
    use rdkafka::Message;
    let mut all: Vec<Signal> = Vec::new();
    tracefold_runtime::kafka::read_last(&src.kafka, group, &src.topic, limit, deadline, |m| {
        if let Some(s) = m.payload().and_then(|p| serde_json::from_slice(p).ok()) {
            all.push(s);
        }
    })?;
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
