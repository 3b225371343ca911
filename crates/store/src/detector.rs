//! What the detector reads at start-up and while it runs: issue statuses, and for the issues
//! it starts to hold, whether they were seen before and their recent per-minute counts.

use crate::client::db;
use crate::error::{step, Result};
use crate::issues::IssueStatus;
use clickhouse::Client;
use serde::Deserialize;

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
    /// Issue id.
    pub issue_id: String,
    /// Start of the minute, Unix seconds.
    pub minute: u32,
    /// Events.
    pub count: u64,
}

#[derive(clickhouse::Row, Deserialize)]
struct FirstSeen {
    issue_id: String,
    first_seen: u32,
}

/// What ClickHouse knows of some issues of one project: when each was first seen (Unix
/// seconds; absent when never stored) and their per-minute counts since `since` (Unix seconds),
/// oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssuesKnown {
    /// First seen, by issue id.
    pub first_seen: std::collections::HashMap<String, u32>,
    /// Per-minute counts.
    pub history: Vec<MinuteCount>,
}

/// Issues per lookup query: the ids are bound parameters, and a query stays far below
/// ClickHouse's `max_query_size` (256 KiB) with this many.
pub const LOOKUP_CHUNK: usize = 1000;

/// Reads what ClickHouse knows of `issue_ids` of `project` (at most [`LOOKUP_CHUNK`] of them):
/// two queries on the primary key, each bounded by the ids given.
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn issues_known(
    client: &Client,
    database: &str,
    project: &str,
    issue_ids: &[&str],
    since: i64,
) -> Result<IssuesKnown> {
    let db = db(database)?;
    if issue_ids.is_empty() {
        return Ok(IssuesKnown::default());
    }
    let marks = vec!["?"; issue_ids.len().min(LOOKUP_CHUNK)].join(",");
    let mut q = client
        .query(&format!(
            "SELECT issue_id, toUInt32(minMerge(first_seen_state)) AS first_seen FROM {db}.issues \
             WHERE project = ? AND issue_id IN ({marks}) GROUP BY issue_id"
        ))
        .bind(project);
    for id in issue_ids.iter().take(LOOKUP_CHUNK) {
        q = q.bind(*id);
    }
    let first_seen = q.fetch_all::<FirstSeen>().await.map_err(step("issue lookup"))?;
    let mut q = client
        .query(&format!(
            "SELECT issue_id, toUInt32(minute) AS minute, sum(count) AS count FROM {db}.issue_counts_1m \
             WHERE project = ? AND issue_id IN ({marks}) AND minute >= toDateTime(?) \
             GROUP BY issue_id, minute ORDER BY minute"
        ))
        .bind(project);
    for id in issue_ids.iter().take(LOOKUP_CHUNK) {
        q = q.bind(*id);
    }
    let history = q
        .bind(u32::try_from(since.max(0)).unwrap_or(u32::MAX))
        .fetch_all::<MinuteCount>()
        .await
        .map_err(step("issue history"))?;
    Ok(IssuesKnown { first_seen: first_seen.into_iter().map(|f| (f.issue_id, f.first_seen)).collect(), history })
}
