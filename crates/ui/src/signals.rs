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
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut remaining = 0i64;
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        if high > low {
            let from = high.saturating_sub(limit_i).max(low);
            tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Offset(from))?;
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
