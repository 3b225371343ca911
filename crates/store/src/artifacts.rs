//! The `artifacts` table: one row per uploaded source map or minified file
//! (`schemas/clickhouse/0007_artifacts.sql`). The producer's upload endpoint writes a row
//! after the object is stored; the bytes are in the object store (`tracefold-symbolicate`'s
//! `store`), this table says what was uploaded, when, and its size and digest.

use crate::client::{db, ident};
use crate::error::{step, Result};
use clickhouse::Client;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One row of `artifacts`.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct ArtifactRow {
    /// Project slug.
    pub project: String,
    /// Release name.
    pub release: String,
    /// The minified file's release-relative URL (`~/static/js/main.js`).
    pub url_key: String,
    /// `map` or `minified`.
    pub kind: String,
    /// Canonical debug id, or empty.
    pub debug_id: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the bytes.
    pub sha256: String,
    /// When, Unix seconds.
    pub uploaded_at: u32,
}

/// Inserts `row` into `artifacts` of `database`.
///
/// # Errors
/// When the database name is not an identifier, ClickHouse refuses, or `timeout` passes
/// (inserting the same row again is harmless: merges keep one per key).
pub async fn insert(client: &Client, database: &str, row: &ArtifactRow, timeout: Duration) -> Result<()> {
    let client = client.clone().with_database(ident("clickhouse.database", database)?);
    let written = async {
        let mut ins = client.insert::<ArtifactRow>("artifacts").await?.with_timeouts(Some(timeout), Some(timeout));
        ins.write(row).await?;
        ins.end().await
    };
    written.await.map_err(step("insert artifact row"))
}

/// The artifacts of `release` of `project` (the newest row of each url key and kind), by url
/// key and kind.
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn of_release(client: &Client, database: &str, project: &str, release: &str) -> Result<Vec<ArtifactRow>> {
    let db = db(database)?;
    client
        .query(&format!(
            "SELECT project, release, url_key, kind, debug_id, size, sha256, toUInt32(uploaded_at) AS uploaded_at_secs \
             FROM {db}.artifacts FINAL WHERE project = ? AND release = ? ORDER BY url_key, kind"
        ))
        .bind(project)
        .bind(release)
        .fetch_all::<ArtifactRow>()
        .await
        .map_err(step("artifacts of a release"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_upload_of_a_key_replaces_the_first() {
        let cfg = crate::testdb::scratch("artifacts");
        crate::migrate::migrate(&cfg, |_, _| {}).await.expect("ClickHouse is needed for this test");
        let client = crate::client::client(&cfg);
        let row = |url_key: &str, kind: &str, size: u64, at: u32| ArtifactRow {
            project: "web".into(),
            release: "版本 1.0 🚀".into(),
            url_key: url_key.into(),
            kind: kind.into(),
            debug_id: String::new(),
            size,
            sha256: "ab".repeat(32),
            uploaded_at: at,
        };
        let t = Duration::from_secs(10);
        let mut written = Vec::new();
        for r in [row("~/a.js", "map", 1, 1_000), row("~/a.js", "map", 2, 2_000), row("~/a.js", "minified", 3, 1_000)] {
            written.push(insert(&client, &cfg.database, &r, t).await);
        }
        let read = of_release(&client, &cfg.database, "web", "版本 1.0 🚀").await;
        let other = of_release(&client, &cfg.database, "web", "1.0").await;
        let _ = crate::client::drop_database(&client, &cfg.database).await;
        written.into_iter().for_each(|w| w.unwrap());
        assert_eq!(read.unwrap(), [row("~/a.js", "map", 2, 2_000), row("~/a.js", "minified", 3, 1_000)]);
        assert!(other.unwrap().is_empty());
    }
}
