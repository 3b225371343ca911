//! `tracefold signals`: recent signals read back from the signals topic.

use crate::args::{Format, SignalsArgs};
use crate::out::{out, outln};
use std::time::{Duration, Instant};

/// Runs `tracefold signals`: the last `--limit` signals of every partition, merged, the most
/// recent `--limit` shown.
///
/// # Errors
/// When Kafka cannot be reached or the topic is unknown.
pub fn run(a: &SignalsArgs) -> anyhow::Result<()> {
    let (bootstrap, topic, limit, format) = (a.bootstrap_servers.as_str(), a.topic.as_str(), a.limit, a.format);
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let kafka =
        tracefold_runtime::config::KafkaConfig { bootstrap_servers: bootstrap.to_owned(), ..Default::default() };
    let c: BaseConsumer = tracefold_runtime::kafka::consumer_config(&kafka, "tracefold-signals-cli").create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut remaining = 0i64;
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        if high > low {
            tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Offset((high - limit as i64).max(low)))?;
            remaining += high - (high - limit as i64).max(low);
        }
    }
    let mut all: Vec<tracefold_detector::signal::Signal> = Vec::new();
    if remaining > 0 {
        c.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while remaining > 0 && Instant::now() < deadline {
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
    let all = &all[start..];
    match format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(all)?),
        Format::Table => {
            use tracefold_devtools::render::{prefix, table, Align};
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|s| {
                    vec![
                        s.minute.replace('T', " ").trim_end_matches('Z').to_owned(),
                        s.kind.as_str().to_owned(),
                        s.project.clone(),
                        prefix(&s.issue_id, 12).to_owned(),
                        s.title.clone(),
                        s.count.to_string(),
                        s.users.to_string(),
                        format!("{}", s.baseline_per_minute),
                    ]
                })
                .collect();
            out!(
                "{}",
                table(
                    &[
                        ("MINUTE", Align::Left),
                        ("SIGNAL", Align::Left),
                        ("PROJECT", Align::Left),
                        ("ISSUE", Align::Left),
                        ("TITLE", Align::Left),
                        ("EVENTS", Align::Right),
                        ("USERS", Align::Right),
                        ("BASELINE/MIN", Align::Right),
                    ],
                    &rows,
                    60,
                )
            );
        }
    }
    Ok(())
}
