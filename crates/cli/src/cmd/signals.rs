//! `tracefold signals`: recent signals read back from the signals topic.

use crate::args::{Format, SignalsArgs};
use crate::out::{out, outln};
use std::time::Duration;

/// Runs `tracefold signals`: the last `--limit` signals of every partition, merged, the most
/// recent `--limit` shown.
///
/// # Errors
/// When Kafka cannot be reached or the topic is unknown.
pub fn run(a: &SignalsArgs) -> anyhow::Result<()> {
    let (limit, format) = (a.limit, a.format);
    let src = tracefold_ui::signals::Source {
        kafka: tracefold_runtime::config::KafkaConfig {
            bootstrap_servers: a.bootstrap_servers.clone(),
            ..Default::default()
        },
        topic: a.topic.clone(),
    };
    let all = tracefold_ui::signals::recent(&src, "tracefold-signals-cli", limit, Duration::from_secs(15))?;
    let all = all.as_slice();
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
