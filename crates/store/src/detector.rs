//! What the detector reads at start-up and while it runs: known issues, issue statuses and
//! recent per-minute counts.

use crate::client::db;
use crate::error::{step, Result};
use crate::issues::IssueStatus;
use clickhouse::Client;
use serde::Deserialize;

/// An issue's key.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct IssueKey {
    /// Project slug.
    pub project: String,
    /// Issue id.
    pub issue_id: String,
}

/// Every issue ever stored (the detector does not call them new again).
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn known_issues(client: &Client, database: &str) -> Result<Vec<IssueKey>> {
    let db = db(database)?;
    client
        .query(&format!("SELECT DISTINCT project, issue_id FROM {db}.issues"))
        .fetch_all::<IssueKey>()
        .await
        .map_err(step("known issues"))
}

/// An issue's current status, as `issue_status_v` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRow {
    /// Project slug.
    pub project: String,
    /// Issue id.
    pub issue_id: String,
    /// The latest status set.
    pub current_status: IssueStatus,
    /// When it was set, Unix seconds.
    pub at: u32,
    /// The release it was set for (resolutions), else empty.
    pub release: String,
}

#[derive(clickhouse::Row, Deserialize)]
struct RawStatus {
    project: String,
    issue_id: String,
    current_status: String,
    at: u32,
    release: String,
}

/// The current status of every issue that has one.
///
/// # Errors
/// When the database name is not an identifier, ClickHouse does not answer, or a stored
/// status is not one of the three.
pub async fn statuses(client: &Client, database: &str) -> Result<Vec<StatusRow>> {
    let db = db(database)?;
    let rows = client
        .query(&format!(
            "SELECT project, issue_id, current_status, toUInt32(status_changed_at) AS at, status_release AS release \
             FROM {db}.issue_status_v"
        ))
        .fetch_all::<RawStatus>()
        .await
        .map_err(step("issue statuses"))?;
    rows.into_iter()
        .map(|r| {
            Ok(StatusRow {
                current_status: r.current_status.parse()?,
                project: r.project,
                issue_id: r.issue_id,
                at: r.at,
                release: r.release,
            })
        })
        .collect()
}

/// Events of one issue in one minute.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct MinuteCount {
    /// Project slug.
    pub project: String,
    /// Issue id.
    pub issue_id: String,
    /// Start of the minute, Unix seconds.
    pub minute: u32,
    /// Events.
    pub count: u64,
}

/// Per-minute counts of every issue over the last `minutes` minutes up to 3 minutes ago
/// (later minutes may still be filling), oldest first: the baselines of spike detection.
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn minute_history(client: &Client, database: &str, minutes: u32) -> Result<Vec<MinuteCount>> {
    let db = db(database)?;
    client
        .query(&format!(
            "SELECT project, issue_id, toUInt32(minute) AS minute, sum(count) AS count FROM {db}.issue_counts_1m \
             WHERE minute >= now() - ? AND minute < now() - 180 GROUP BY project, issue_id, minute ORDER BY minute"
        ))
        .bind(u64::from(minutes) * 60)
        .fetch_all::<MinuteCount>()
        .await
        .map_err(step("per-minute history"))
}
