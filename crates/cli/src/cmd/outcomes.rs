//! `tracefold outcomes` and `tracefold dlq`: why events did or did not show up.

use crate::args::{DlqArgs, Format, OutcomesArgs};
use crate::out::{out, outln};
use tracefold_cli::outcomes;

/// Runs `tracefold outcomes`.
///
/// # Errors
/// When ClickHouse does not answer.
pub async fn outcomes(a: OutcomesArgs) -> anyhow::Result<()> {
    let cfg = a.ch.config();
    let client = tracefold_store::client::client(&cfg);
    let r =
        tracefold_store::outcomes::outcomes(&client, &cfg.database, a.since.as_secs(), a.project.as_deref()).await?;
    if a.json || a.format == Format::Json {
        outln!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        out!("{}", outcomes::render_outcomes(&r));
    }
    Ok(())
}

/// Runs `tracefold dlq`.
///
/// # Errors
/// When Kafka cannot be reached or the topic is unknown.
pub fn dlq(a: &DlqArgs) -> anyhow::Result<()> {
    let kafka =
        tracefold_runtime::config::KafkaConfig { bootstrap_servers: a.bootstrap_servers.clone(), ..Default::default() };
    let entries = outcomes::read_dlq(&kafka, &a.topic, a.limit)?;
    if a.json || a.format == Format::Json {
        outln!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        out!("{}", outcomes::render_dlq(&entries));
    }
    Ok(())
}
