//! The two counts the dev tools poll while they wait for the pipeline: events counted and
//! aggregate rows stored.
//!
//! `total_events` is the same query as the CLI's `tracefold_cli::query::total_events`; the dev
//! tools cannot use the CLI's crate (the CLI depends on them), so they keep their own copy
//! until a storage crate owns every query.

use clickhouse::Client;
use serde::Deserialize;

#[derive(clickhouse::Row, Deserialize)]
struct N {
    n: u64,
}

/// Total events stored (all issues, all time).
///
/// # Errors
/// When ClickHouse does not answer.
pub async fn total_events(client: &Client, db: &str) -> anyhow::Result<u64> {
    Ok(client.query(&format!("SELECT sum(count) AS n FROM {db}.aggregates")).fetch_one::<N>().await?.n)
}

/// Aggregate rows stored (before any merge of the table's parts).
///
/// # Errors
/// When ClickHouse does not answer.
pub async fn aggregate_rows(client: &Client, db: &str) -> anyhow::Result<u64> {
    Ok(client.query(&format!("SELECT count() AS n FROM {db}.aggregates")).fetch_one::<N>().await?.n)
}
