//! Queries of the web UI (`tracefold ui`) that the command line does not run: the statuses of
//! a page of issues at once, and one issue's status history. Every value bound, every query
//! LIMITed.

use crate::client::db;
use crate::error::{step, Result};
use crate::issues::IssueStatus;
use clickhouse::Client;
use serde::Deserialize;

/// Most issues [`statuses`] asks about at once (a page of the issues list is smaller).
pub const MAX_STATUS_IDS: usize = 1_000;

/// Most status changes [`status_history`] returns.
pub const MAX_HISTORY: u64 = 200;

/// The current status of each of `issue_ids` in `project`; issues without a recorded status
/// are left out (they are active). At most [`MAX_STATUS_IDS`] ids are asked about (the rest
/// count as active).
///
/// # Errors
/// When the database name is not an identifier, ClickHouse does not answer, or a stored
/// status is not one of the three.
pub async fn statuses(
    client: &Client,
    database: &str,
    project: &str,
    issue_ids: &[&str],
) -> Result<Vec<(String, IssueStatus)>> {
    #[derive(clickhouse::Row, Deserialize)]
    struct S {
        issue_id: String,
        current_status: String,
    }
    let db = db(database)?;
    let ids: Vec<&str> = issue_ids.iter().copied().take(MAX_STATUS_IDS).collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client
        .query(&format!(
            "SELECT issue_id, argMax(status, changed_ms) AS current_status FROM {db}.issue_status_log \
             WHERE project = ? AND has(?, issue_id) GROUP BY issue_id LIMIT ?"
        ))
        .bind(project)
        .bind(&ids)
        .bind(ids.len() as u64)
        .fetch_all::<S>()
        .await
        .map_err(step("statuses"))?;
    rows.into_iter().map(|r| Ok((r.issue_id, r.current_status.parse()?))).collect()
}

/// One status change of an issue.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct StatusEntry {
    /// The status set (as stored).
    pub status: String,
    /// When, Unix seconds (ClickHouse's clock).
    pub changed_at: u32,
    /// Who.
    pub actor: String,
    /// The fixing release (resolutions).
    pub release: String,
    /// Why.
    pub note: String,
}

/// The latest [`MAX_HISTORY`] status changes of an issue, newest first.
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn status_history(
    client: &Client,
    database: &str,
    project: &str,
    issue_id: &str,
) -> Result<Vec<StatusEntry>> {
    let db = db(database)?;
    client
        .query(&format!(
            "SELECT status, toUInt32(changed_at) AS changed_at, actor, release, note FROM {db}.issue_status_log \
             WHERE project = ? AND issue_id = ? ORDER BY changed_ms DESC LIMIT ?"
        ))
        .bind(project)
        .bind(issue_id)
        .bind(MAX_HISTORY)
        .fetch_all::<StatusEntry>()
        .await
        .map_err(step("status history"))
}

/// Most releases [`release_starts`] returns.
pub const MAX_RELEASES: u64 = 1_000;

/// Each release's first hour (Unix seconds) with events of an issue at or after `from` (Unix
/// seconds), oldest first: the release markers of the issue's chart. At most [`MAX_RELEASES`].
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn release_starts(
    client: &Client,
    database: &str,
    project: &str,
    issue_id: &str,
    from: u32,
) -> Result<Vec<(String, u32)>> {
    #[derive(clickhouse::Row, Deserialize)]
    struct R {
        release: String,
        first: u32,
    }
    let db = db(database)?;
    let rows = client
        .query(&format!(
            "SELECT release, toUInt32(min(hour)) AS first FROM {db}.issue_counts_1h \
             WHERE project = ? AND issue_id = ? AND hour >= toDateTime(?) GROUP BY release ORDER BY first, release LIMIT ?"
        ))
        .bind(project)
        .bind(issue_id)
        .bind(from)
        .bind(MAX_RELEASES)
        .fetch_all::<R>()
        .await
        .map_err(step("release starts"))?;
    Ok(rows.into_iter().map(|r| (r.release, r.first)).collect())
}

/// The release of an issue's first events: the release of the minute it was first seen
/// (`first_seen`, Unix seconds; the first in release order when several share that minute).
/// `None` when that minute holds no row (data older than the minute rollup keeps).
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn first_release(
    client: &Client,
    database: &str,
    project: &str,
    issue_id: &str,
    first_seen: u32,
) -> Result<Option<String>> {
    #[derive(clickhouse::Row, Deserialize)]
    struct R {
        release: String,
    }
    let db = db(database)?;
    let minute = first_seen / 60 * 60;
    let rows = client
        .query(&format!(
            "SELECT release FROM {db}.issue_counts_1m WHERE project = ? AND issue_id = ? \
             AND minute >= toDateTime(?) AND minute < toDateTime(?) ORDER BY minute, release LIMIT 1"
        ))
        .bind(project)
        .bind(issue_id)
        .bind(minute)
        .bind(minute.saturating_add(60))
        .fetch_all::<R>()
        .await
        .map_err(step("first release"))?;
    Ok(rows.into_iter().next().map(|r| r.release))
}
