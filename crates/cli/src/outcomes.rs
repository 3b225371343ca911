//! `tracefold outcomes` and `tracefold dlq`: why events did or did not show up. Outcomes come
//! from ClickHouse (`tracefold-store`'s query); DLQ records are read straight from Kafka.

use serde::Serialize;
use std::time::Duration;
pub use tracefold_store::outcomes::{OutcomeReport, OutcomeTotal};

/// Renders outcomes as a terminal table: one row per (project, outcome, reason) with its total
/// and a sparkline of the per-minute series (every cell printable).
pub fn render_outcomes(r: &OutcomeReport) -> String {
    use crate::render::{rebucket, sparkline, table, thousands, Align};
    if r.totals.is_empty() {
        return "no outcomes in this window\n".into();
    }
    let body: Vec<Vec<String>> = r
        .totals
        .iter()
        .map(|t| {
            vec![
                if t.project.is_empty() { "(unknown)".to_owned() } else { t.project.clone() },
                t.outcome.clone(),
                if t.reason.is_empty() { "-".to_owned() } else { t.reason.clone() },
                thousands(t.quantity),
                sparkline(&rebucket(&t.per_minute, 30)),
            ]
        })
        .collect();
    table(
        &[
            ("PROJECT", Align::Left),
            ("OUTCOME", Align::Left),
            ("REASON", Align::Left),
            ("EVENTS", Align::Right),
            ("PER MINUTE", Align::Left),
        ],
        &body,
        60,
    )
}

/// One DLQ record as `tracefold dlq` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DlqEntry {
    /// DLQ partition.
    pub partition: i32,
    /// DLQ offset.
    pub offset: i64,
    /// When the DLQ record was written, RFC 3339 (empty when the broker gave no time).
    pub time: String,
    /// The reason code (`tracefold-reason`).
    pub reason: String,
    /// What exactly was wrong (`tracefold-error`).
    pub error: String,
    /// Where the record came from: topic, partition and offset.
    pub source_topic: String,
    /// Source partition (-1 when the header is missing).
    pub source_partition: i32,
    /// Source offset (-1 when the header is missing).
    pub source_offset: i64,
    /// Size of the payload in the DLQ, bytes.
    pub payload_bytes: usize,
    /// The original size when the payload was cut to fit the broker's limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated_from: Option<u64>,
    /// The payload's start: lossy UTF-8, control characters replaced, at most
    /// [`PREVIEW_CHARS`] characters.
    pub preview: String,
}

/// Characters of a payload shown by `tracefold dlq`.
pub const PREVIEW_CHARS: usize = 120;

/// The start of `payload` for a terminal: lossy UTF-8, cut at a character boundary to `max`
/// characters (an ellipsis when cut), control and bidi characters replaced.
pub fn preview(payload: &[u8], max: usize) -> String {
    // Only the bytes that can make `max` characters are decoded (4 bytes per character at most).
    let head = &payload[..payload.len().min(max.saturating_mul(4).saturating_add(4))];
    let text = String::from_utf8_lossy(head);
    let cut = crate::render::truncate(&text, max);
    let mut s = crate::render::printable(&cut).into_owned();
    if head.len() < payload.len() && !s.ends_with('…') {
        s.push('…');
    }
    s
}

/// Reads the most recent `limit` records of the DLQ topic `topic` (the tail of every
/// partition, merged by time, newest last).
///
/// # Errors
/// When Kafka cannot be reached or the topic is unknown.
pub fn read_dlq(
    kafka: &tracefold_runtime::config::KafkaConfig,
    topic: &str,
    limit: usize,
) -> anyhow::Result<Vec<DlqEntry>> {
    use rdkafka::message::{Headers, Message};
    use tracefold_runtime::kafka::dlq_headers as h;
    let mut all = Vec::new();
    tracefold_runtime::kafka::read_last(kafka, "tracefold-dlq-cli", topic, limit, Duration::from_secs(15), |m| {
        let header = |name: &str| -> String {
            m.headers()
                .and_then(|hs| hs.iter().find(|x| x.key == name).and_then(|x| x.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let payload = m.payload().unwrap_or(&[]);
        all.push((
            m.timestamp().to_millis().unwrap_or(0),
            DlqEntry {
                partition: m.partition(),
                offset: m.offset(),
                time: m.timestamp().to_millis().map(tracefold_model::time::format_rfc3339).unwrap_or_default(),
                reason: header(h::REASON),
                error: header(h::ERROR),
                source_topic: header(h::SOURCE_TOPIC),
                source_partition: header(h::SOURCE_PARTITION).parse().unwrap_or(-1),
                source_offset: header(h::SOURCE_OFFSET).parse().unwrap_or(-1),
                payload_bytes: payload.len(),
                truncated_from: header(h::TRUNCATED).parse().ok(),
                preview: preview(payload, PREVIEW_CHARS),
            },
        ));
    })?;
    all.sort_by_key(|(ts, e)| (*ts, e.partition, e.offset));
    let start = all.len().saturating_sub(limit);
    Ok(all.into_iter().skip(start).map(|(_, e)| e).collect())
}

/// Renders DLQ records as a terminal table (every cell printable).
pub fn render_dlq(entries: &[DlqEntry]) -> String {
    use crate::render::{table, Align};
    if entries.is_empty() {
        return "the DLQ is empty\n".into();
    }
    let body: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.time.replace('T', " ").trim_end_matches('Z').to_owned(),
                e.reason.clone(),
                format!("{}/{}/{}", e.source_topic, e.source_partition, e.source_offset),
                e.error.clone(),
                e.preview.clone(),
            ]
        })
        .collect();
    table(
        &[
            ("TIME", Align::Left),
            ("REASON", Align::Left),
            ("SOURCE", Align::Left),
            ("ERROR", Align::Left),
            ("PAYLOAD", Align::Left),
        ],
        &body,
        60,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A limit past `i64::MAX` (asking for everything) lists every record; it listed none.
    #[test]
    fn a_limit_beyond_i64_lists_every_record() {
        use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
        let topics = tracefold_runtime::config::TopicsConfig::default();
        let broker = tracefold_runtime::devbroker::DevBroker::start(1, &topics, Some(1)).unwrap();
        let kafka = tracefold_runtime::config::KafkaConfig {
            bootstrap_servers: broker.bootstrap_servers(),
            ..tracefold_runtime::config::KafkaConfig::default()
        };
        let p: ThreadedProducer<DefaultProducerContext> =
            tracefold_runtime::kafka::producer_config(&kafka, 10_000).create().unwrap();
        for i in 0..3 {
            let payload = format!("{{\"bad\":{i}}}");
            p.send(BaseRecord::<str, str>::to(&topics.dlq).key("k").payload(&payload)).unwrap();
        }
        p.flush(Duration::from_secs(10)).unwrap();
        for limit in [2, 3, 1000, usize::MAX, 1 << 63, (1 << 63) - 1] {
            let got = read_dlq(&kafka, &topics.dlq, limit).unwrap();
            assert_eq!(got.len(), limit.min(3), "limit {limit}");
        }
    }

    #[test]
    fn previews_cut_at_characters_and_strip_controls() {
        assert_eq!(preview(b"{\"a\":1}", 120), "{\"a\":1}");
        assert_eq!(preview("héllo\u{1b}[2J wörld".as_bytes(), 120), "héllo\u{FFFD}[2J wörld");
        let emoji = "😀".repeat(200);
        let p = preview(emoji.as_bytes(), 10);
        assert_eq!(p.chars().count(), 10);
        assert!(p.ends_with('…'));
        // A payload cut inside a character, and invalid UTF-8: no panic, replacement shown.
        assert_eq!(preview(&emoji.as_bytes()[..5], 10), "😀\u{FFFD}");
        assert_eq!(preview(b"\xff\xfe", 10), "\u{FFFD}\u{FFFD}");
        assert_eq!(preview(b"", 10), "");
        assert_eq!(preview(b"line1\nline2\r\t", 120), "line1 line2  ");
    }

    #[test]
    fn outcome_tables_name_unknown_projects_and_show_series() {
        let r = OutcomeReport {
            from_minute: 0,
            minutes: 3,
            totals: vec![OutcomeTotal {
                project: String::new(),
                outcome: "dlq".into(),
                reason: "malformed".into(),
                quantity: 1234,
                per_minute: vec![0, 1000, 234],
            }],
        };
        let t = render_outcomes(&r);
        assert!(t.contains("(unknown)") && t.contains("1,234") && t.contains("malformed"), "{t}");
        assert!(t.contains(" █▂"), "{t}");
    }
}
