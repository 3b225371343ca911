//! Storage measurement for `tracefold bench-storage`: a raw-row comparison table shaped like
//! Snuba's `errors` table (one row per event), created only in the benchmark's scratch
//! database, and the on-disk size of every table of a database.

use crate::client::db;
use crate::error::{step, Result};
use clickhouse::Client;

/// The comparison table: one row per event, as Snuba's `errors` table keeps them (ids, title,
/// message, tags, contexts, exception and frame arrays, the fingerprint), with types and an
/// `ORDER BY` chosen for compression (project, day, fingerprint). Nested columns are spelt
/// `tags_key` rather than `tags.key`: the bytes are the same.
const RAW_TABLE: &str = "CREATE TABLE IF NOT EXISTS {db}.raw_errors
(
    project            String,
    timestamp          DateTime,
    event_id           FixedString(16),
    primary_hash       FixedString(16),
    platform           String,
    environment        String,
    release            String,
    level              String,
    server_name        String,
    user_id            String,
    user_email         String,
    ip_address_v4      UInt32,
    sdk_name           String,
    sdk_version        String,
    http_method        String,
    http_url           String,
    tags_key           Array(String),
    tags_value         Array(String),
    contexts_key       Array(String),
    contexts_value     Array(String),
    title              String,
    message            String,
    culprit            String,
    type               String,
    exc_type           Array(String),
    exc_value          Array(String),
    exc_mechanism_type Array(String),
    exc_mechanism_handled Array(UInt8),
    frame_abs_path     Array(String),
    frame_filename     Array(String),
    frame_function     Array(String),
    frame_module       Array(String),
    frame_lineno       Array(UInt32),
    frame_colno        Array(UInt32),
    frame_in_app       Array(UInt8),
    received           DateTime,
    partition          UInt16,
    offset             UInt64,
    retention_days     UInt16,
    deleted            UInt8
)
ENGINE = MergeTree
PARTITION BY toMonday(timestamp)
ORDER BY (project, toStartOfDay(timestamp), primary_hash, cityHash64(event_id))";

/// One row of the comparison table.
#[allow(missing_docs)]
#[derive(Debug, Default, Clone, clickhouse::Row, serde::Serialize)]
pub struct RawErrorRow {
    pub project: String,
    pub timestamp: u32,
    pub event_id: [u8; 16],
    pub primary_hash: [u8; 16],
    pub platform: String,
    pub environment: String,
    pub release: String,
    pub level: String,
    pub server_name: String,
    pub user_id: String,
    pub user_email: String,
    pub ip_address_v4: u32,
    pub sdk_name: String,
    pub sdk_version: String,
    pub http_method: String,
    pub http_url: String,
    pub tags_key: Vec<String>,
    pub tags_value: Vec<String>,
    pub contexts_key: Vec<String>,
    pub contexts_value: Vec<String>,
    pub title: String,
    pub message: String,
    pub culprit: String,
    pub r#type: String,
    pub exc_type: Vec<String>,
    pub exc_value: Vec<String>,
    pub exc_mechanism_type: Vec<String>,
    pub exc_mechanism_handled: Vec<u8>,
    pub frame_abs_path: Vec<String>,
    pub frame_filename: Vec<String>,
    pub frame_function: Vec<String>,
    pub frame_module: Vec<String>,
    pub frame_lineno: Vec<u32>,
    pub frame_colno: Vec<u32>,
    pub frame_in_app: Vec<u8>,
    pub received: u32,
    pub partition: u16,
    pub offset: u64,
    pub retention_days: u16,
    pub deleted: u8,
}

/// Creates the comparison table `raw_errors` in `database`.
///
/// # Errors
/// When the name is not an identifier or ClickHouse refuses.
pub async fn create_raw_table(client: &Client, database: &str) -> Result<()> {
    let db = db(database)?;
    client.query(&RAW_TABLE.replace("{db}", db)).execute().await.map_err(step("create raw_errors"))
}

/// Inserts `rows` into `raw_errors` of the client's database
/// ([`crate::client::database_client`]) in one INSERT.
///
/// # Errors
/// When ClickHouse refuses.
pub async fn insert_raw(client: &Client, rows: &[RawErrorRow]) -> Result<()> {
    let written = async {
        let mut ins = client.insert::<RawErrorRow>("raw_errors").await?;
        for r in rows {
            ins.write(r).await?;
        }
        ins.end().await
    };
    written.await.map_err(step("insert raw_errors rows"))
}

/// The size of one table.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Deserialize, serde::Serialize)]
pub struct TableSize {
    /// Table name.
    pub table: String,
    /// Rows in its active parts.
    pub rows: u64,
    /// Bytes on disk of its active parts (data, marks, index).
    pub bytes: u64,
}

/// Merges every MergeTree table of `database` (`OPTIMIZE ... FINAL`), so that sizes are those
/// after the background merges a long-running server does.
///
/// # Errors
/// When the name is not an identifier or ClickHouse refuses.
pub async fn optimize_all(client: &Client, database: &str) -> Result<()> {
    for t in table_sizes(client, database).await? {
        let sql = format!("OPTIMIZE TABLE {}.{} FINAL", db(database)?, crate::client::ident("table", &t.table)?);
        client.query(&sql).execute().await.map_err(step(format!("optimize {}", t.table)))?;
    }
    Ok(())
}

/// Rows and bytes on disk of every table of `database` with data, largest first.
///
/// # Errors
/// When the name is not an identifier or ClickHouse refuses.
pub async fn table_sizes(client: &Client, database: &str) -> Result<Vec<TableSize>> {
    let db = db(database)?;
    client
        .query(
            "SELECT table, sum(rows) AS rows, sum(bytes_on_disk) AS bytes FROM system.parts \
             WHERE database = ? AND active GROUP BY table ORDER BY bytes DESC, table",
        )
        .bind(db)
        .fetch_all::<TableSize>()
        .await
        .map_err(step("read table sizes"))
}
