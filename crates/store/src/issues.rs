//! Issues as analysts see them (`tracefold top`, `tracefold issue`): the top issues of a
//! window, one issue in detail, and its status with its history.

use crate::client::{db, now};
use crate::error::{step, Error, Result};
use clickhouse::Client;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// An issue's status. Stored (and shown, and accepted) as `active`, `resolved`, `ignored`;
/// an issue without a recorded status is active.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IssueStatus {
    /// Open (the default, and what `tracefold issue reopen` sets).
    #[default]
    Active,
    /// Fixed, possibly in a release: a later event is a regression.
    Resolved,
    /// Muted.
    Ignored,
}

impl IssueStatus {
    /// Every status.
    pub const ALL: [IssueStatus; 3] = [IssueStatus::Active, IssueStatus::Resolved, IssueStatus::Ignored];

    /// The stored string.
    pub fn as_str(self) -> &'static str {
        match self {
            IssueStatus::Active => "active",
            IssueStatus::Resolved => "resolved",
            IssueStatus::Ignored => "ignored",
        }
    }
}

impl std::fmt::Display for IssueStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for IssueStatus {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| Error::UnknownStatus(s.to_owned()))
    }
}

/// One row of the top issues.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopIssue {
    /// Project slug.
    pub project: String,
    /// Issue id (fingerprint hex).
    pub issue_id: String,
    /// Title.
    pub title: String,
    /// Culprit.
    pub culprit: String,
    /// Level of the latest events.
    pub level: String,
    /// Events in the window.
    pub count: u64,
    /// Distinct affected users in the window (hour granularity at the window's start).
    pub users: u64,
    /// First seen ever, RFC 3339.
    pub first_seen: String,
    /// Last seen, RFC 3339.
    pub last_seen: String,
    /// Events per minute over the last 60 minutes, oldest first.
    pub last_hour: Vec<u64>,
}

#[derive(clickhouse::Row, Deserialize)]
struct CountRow {
    project: String,
    issue_id: String,
    count: u64,
}

#[derive(clickhouse::Row, Deserialize)]
struct MetaRow {
    project: String,
    issue_id: String,
    title: String,
    culprit: String,
    level: String,
    first_seen: u32,
    last_seen: u32,
}

#[derive(clickhouse::Row, Deserialize)]
struct UsersRow {
    project: String,
    issue_id: String,
    users: u64,
}

#[derive(clickhouse::Row, Deserialize)]
struct MinuteRow {
    project: String,
    issue_id: String,
    minute: u32,
    count: u64,
}

fn rfc3339(secs: u32) -> String {
    let s = tracefold_model::time::format_rfc3339(i64::from(secs) * 1000);
    s.replace(".000Z", "Z")
}

/// The `limit` issues with the most events since `now - since_secs` (optionally of one
/// project), with metadata, users and the last hour per minute.
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn top_issues(
    client: &Client,
    database: &str,
    since_secs: u64,
    limit: u64,
    project: Option<&str>,
) -> Result<Vec<TopIssue>> {
    let db = db(database)?;
    let now = now(client).await?;
    let from = now.saturating_sub(u32::try_from(since_secs).unwrap_or(u32::MAX));
    let proj_filter = if project.is_some() { "AND project = ?" } else { "" };
    let q = format!(
        "SELECT project, issue_id, sum(count) AS count FROM {db}.issue_counts_1m \
         WHERE minute >= toDateTime(?) {proj_filter} GROUP BY project, issue_id ORDER BY count DESC, issue_id LIMIT ?"
    );
    let mut q = client.query(&q).bind(from);
    if let Some(p) = project {
        q = q.bind(p);
    }
    let counts = q.bind(limit).fetch_all::<CountRow>().await.map_err(step("top issue counts"))?;
    if counts.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = counts.iter().map(|c| c.issue_id.as_str()).collect();
    let metas = client
        .query(&format!(
            "SELECT project, issue_id, argMinMerge(title_state) AS title, argMinMerge(culprit_state) AS culprit, \
             argMaxMerge(level_state) AS level, toUInt32(minMerge(first_seen_state)) AS first_seen, \
             toUInt32(maxMerge(last_seen_state)) AS last_seen \
             FROM {db}.issues WHERE has(?, issue_id) GROUP BY project, issue_id"
        ))
        .bind(&ids)
        .fetch_all::<MetaRow>()
        .await
        .map_err(step("issue metadata"))?;
    let users = client
        .query(&format!(
            "SELECT project, issue_id, uniqExactMerge(users_state) AS users FROM {db}.issue_users_1h \
             WHERE has(?, issue_id) AND hour >= toStartOfHour(toDateTime(?)) GROUP BY project, issue_id"
        ))
        .bind(&ids)
        .bind(from)
        .fetch_all::<UsersRow>()
        .await
        .map_err(step("affected users"))?;
    let hour_start = (now / 60) * 60 - 59 * 60;
    let minutes = client
        .query(&format!(
            "SELECT project, issue_id, toUInt32(minute) AS minute, sum(count) AS count FROM {db}.issue_counts_1m \
             WHERE has(?, issue_id) AND minute >= toDateTime(?) GROUP BY project, issue_id, minute"
        ))
        .bind(&ids)
        .bind(hour_start)
        .fetch_all::<MinuteRow>()
        .await
        .map_err(step("last hour"))?;
    let key = |p: &str, i: &str| format!("{p}/{i}");
    let metas: HashMap<String, MetaRow> = metas.into_iter().map(|m| (key(&m.project, &m.issue_id), m)).collect();
    let users: HashMap<String, u64> = users.into_iter().map(|u| (key(&u.project, &u.issue_id), u.users)).collect();
    let mut series: HashMap<String, Vec<u64>> = HashMap::new();
    for m in minutes {
        let idx = ((m.minute.saturating_sub(hour_start)) / 60) as usize;
        if idx < 60 {
            series.entry(key(&m.project, &m.issue_id)).or_insert_with(|| vec![0; 60])[idx] += m.count;
        }
    }
    Ok(counts
        .into_iter()
        .map(|c| {
            let k = key(&c.project, &c.issue_id);
            let meta = metas.get(&k);
            TopIssue {
                title: meta.map(|m| m.title.clone()).unwrap_or_default(),
                culprit: meta.map(|m| m.culprit.clone()).unwrap_or_default(),
                level: meta.map(|m| m.level.clone()).unwrap_or_default(),
                first_seen: meta.map(|m| rfc3339(m.first_seen)).unwrap_or_default(),
                last_seen: meta.map(|m| rfc3339(m.last_seen)).unwrap_or_default(),
                users: users.get(&k).copied().unwrap_or(0),
                last_hour: series.remove(&k).unwrap_or_else(|| vec![0; 60]),
                project: c.project,
                issue_id: c.issue_id,
                count: c.count,
            }
        })
        .collect())
}

/// An issue as the `issues` table knows it (all time), one per project that has the id.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct IssueSummary {
    /// Project slug.
    pub project: String,
    /// Issue id.
    pub issue_id: String,
    /// Title.
    pub title: String,
    /// Culprit.
    pub culprit: String,
    /// Exception type.
    pub exc_type: String,
    /// Level of the latest events.
    pub level: String,
    /// Platform.
    pub platform: String,
    /// Grouping version of the fingerprint.
    pub grouping_version: String,
    /// First seen, Unix seconds.
    pub first_seen: u32,
    /// Last seen, Unix seconds.
    pub last_seen: u32,
    /// Events, all time.
    pub count: u64,
}

/// The issue `issue_id` names: `project` chooses among projects that share the id.
///
/// # Errors
/// [`Error::UnknownIssue`], [`Error::AmbiguousIssue`], or when ClickHouse does not answer.
pub async fn resolve_issue(
    client: &Client,
    database: &str,
    issue_id: &str,
    project: Option<&str>,
) -> Result<IssueSummary> {
    let mut rows: Vec<IssueSummary> = find_issue(client, database, issue_id)
        .await?
        .into_iter()
        .filter(|r| project.is_none_or(|p| p == r.project))
        .collect();
    match rows.len() {
        0 => Err(Error::UnknownIssue { issue_id: issue_id.to_owned(), project: project.map(str::to_owned) }),
        1 => Ok(rows.remove(0)),
        _ => Err(Error::AmbiguousIssue {
            issue_id: issue_id.to_owned(),
            projects: rows.into_iter().map(|r| r.project).collect(),
        }),
    }
}

/// Every project's issue `issue_id` (the same id can exist in several projects).
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn find_issue(client: &Client, database: &str, issue_id: &str) -> Result<Vec<IssueSummary>> {
    let db = db(database)?;
    client
        .query(&format!(
            "SELECT project, issue_id, argMinMerge(title_state) AS title, argMinMerge(culprit_state) AS culprit, \
             argMinMerge(exc_type_state) AS exc_type, argMaxMerge(level_state) AS level, argMinMerge(platform_state) AS platform, \
             argMaxMerge(grouping_version_state) AS grouping_version, toUInt32(minMerge(first_seen_state)) AS first_seen, \
             toUInt32(maxMerge(last_seen_state)) AS last_seen, sumMerge(count_state) AS count \
             FROM {db}.issues WHERE issue_id = ? GROUP BY project, issue_id"
        ))
        .bind(issue_id)
        .fetch_all::<IssueSummary>()
        .await
        .map_err(step("issue"))
}

/// Everything `tracefold issue ID` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IssueDetail {
    /// Project slug.
    pub project: String,
    /// Issue id.
    pub issue_id: String,
    /// Title.
    pub title: String,
    /// Culprit.
    pub culprit: String,
    /// Exception type.
    pub exc_type: String,
    /// Level of the latest events.
    pub level: String,
    /// Platform.
    pub platform: String,
    /// Grouping version of the fingerprint.
    pub grouping_version: String,
    /// `active`, `resolved` or `ignored`.
    pub status: IssueStatus,
    /// First seen, RFC 3339.
    pub first_seen: String,
    /// Last seen, RFC 3339.
    pub last_seen: String,
    /// Events, all time.
    pub count: u64,
    /// Distinct affected users, all time.
    pub users: u64,
    /// Events per hour over the window, oldest first.
    pub hourly: Vec<u64>,
    /// Events in the window by release, most first.
    pub by_release: Vec<(String, u64)>,
    /// Events in the window by environment, most first.
    pub by_environment: Vec<(String, u64)>,
    /// The latest sample event (JSON), if any.
    pub sample: Option<String>,
}

#[derive(clickhouse::Row, Deserialize)]
struct KeyCount {
    key: String,
    count: u64,
}

#[derive(clickhouse::Row, Deserialize)]
struct HourCount {
    hour: u32,
    count: u64,
}

/// SQL (an aggregate over `aggregates` rows) for distinct affected users: exact while no row
/// dropped hashes (up to the bound, 4096 per aggregate), else the k-minimum-values estimate
/// over the union of the rows' smallest hashes (about 1.6% standard error).
fn users_estimate_sql() -> String {
    let k = tracefold_model::aggregate::DEFAULT_MAX_USERS;
    format!(
        "if(max(users_saturated) = 0, toUInt64(uniqExactArray(users)), \
         if(length(groupUniqArrayArray(users)) < {k}, toUInt64(length(groupUniqArrayArray(users))), \
         toUInt64(round(({k} - 1) / ((arraySort(groupUniqArrayArray(users))[{k}] + 1) / 18446744073709551616.0)))))"
    )
}

/// The detail of `issue` (one of [`find_issue`]'s): users, status, the last `window_hours`
/// hours per hour, by release and by environment, the latest sample.
///
/// # Errors
/// When the database name is not an identifier, ClickHouse does not answer, or the stored
/// status is not one of the three.
pub async fn issue_detail(
    client: &Client,
    database: &str,
    issue: IssueSummary,
    window_hours: u32,
) -> Result<IssueDetail> {
    let db = db(database)?;
    let (p, issue_id) = (issue.project.as_str(), issue.issue_id.as_str());
    #[derive(clickhouse::Row, Deserialize)]
    struct N {
        n: u64,
    }
    let users = client
        .query(&format!("SELECT {} AS n FROM {db}.aggregates WHERE project = ? AND issue_id = ?", users_estimate_sql()))
        .bind(p)
        .bind(issue_id)
        .fetch_one::<N>()
        .await
        .map_err(step("users"))?
        .n;
    let now = now(client).await?;
    let start = (now / 3600) * 3600 - (window_hours.saturating_sub(1)) * 3600;
    let hours = client
        .query(&format!(
            "SELECT toUInt32(hour) AS hour, sum(count) AS count FROM {db}.issue_counts_1h \
             WHERE project = ? AND issue_id = ? AND hour >= toDateTime(?) GROUP BY hour"
        ))
        .bind(p)
        .bind(issue_id)
        .bind(start)
        .fetch_all::<HourCount>()
        .await
        .map_err(step("hourly"))?;
    let mut hourly = vec![0u64; window_hours as usize];
    for h in hours {
        if let Some(slot) = hourly.get_mut(((h.hour.saturating_sub(start)) / 3600) as usize) {
            *slot += h.count;
        }
    }
    // `col` is one of two constants below, never input.
    let breakdown = |col: &str| {
        format!(
            "SELECT {col} AS key, sum(count) AS count FROM {db}.issue_counts_1h \
             WHERE project = ? AND issue_id = ? AND hour >= toDateTime(?) GROUP BY {col} ORDER BY count DESC, key"
        )
    };
    let by_release = client
        .query(&breakdown("release"))
        .bind(p)
        .bind(issue_id)
        .bind(start)
        .fetch_all::<KeyCount>()
        .await
        .map_err(step("by release"))?;
    let by_environment = client
        .query(&breakdown("environment"))
        .bind(p)
        .bind(issue_id)
        .bind(start)
        .fetch_all::<KeyCount>()
        .await
        .map_err(step("by environment"))?;
    #[derive(clickhouse::Row, Deserialize)]
    struct Sample {
        sample: String,
    }
    // No sample row is no sample, not an error.
    let sample = client
        .query(&format!(
            "SELECT argMax(sample, seen) AS sample FROM {db}.issue_samples WHERE project = ? AND issue_id = ?"
        ))
        .bind(p)
        .bind(issue_id)
        .fetch_one::<Sample>()
        .await
        .ok()
        .map(|s| s.sample)
        .filter(|s| !s.is_empty());
    let status = issue_status(client, db, p, issue_id).await?;
    Ok(IssueDetail {
        status,
        first_seen: rfc3339(issue.first_seen),
        last_seen: rfc3339(issue.last_seen),
        count: issue.count,
        users,
        hourly,
        by_release: by_release.into_iter().map(|k| (k.key, k.count)).collect(),
        by_environment: by_environment.into_iter().map(|k| (k.key, k.count)).collect(),
        sample,
        project: issue.project,
        issue_id: issue.issue_id,
        title: issue.title,
        culprit: issue.culprit,
        exc_type: issue.exc_type,
        level: issue.level,
        platform: issue.platform,
        grouping_version: issue.grouping_version,
    })
}

/// The current status of an issue: [`IssueStatus::Active`] unless a status was set.
///
/// # Errors
/// When the database name is not an identifier, ClickHouse does not answer, or the stored
/// status is not one of the three.
pub async fn issue_status(client: &Client, database: &str, project: &str, issue_id: &str) -> Result<IssueStatus> {
    #[derive(clickhouse::Row, Deserialize)]
    struct S {
        current_status: String,
    }
    let db = db(database)?;
    let rows = client
        .query(&format!("SELECT current_status FROM {db}.issue_status_v WHERE project = ? AND issue_id = ?"))
        .bind(project)
        .bind(issue_id)
        .fetch_all::<S>()
        .await
        .map_err(step("status"))?;
    rows.into_iter().next().map_or(Ok(IssueStatus::Active), |s| s.current_status.parse())
}

/// A status change: who set which status on which issue, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange<'a> {
    /// Project slug.
    pub project: &'a str,
    /// Issue id.
    pub issue_id: &'a str,
    /// The new status.
    pub status: IssueStatus,
    /// Who made the change.
    pub actor: &'a str,
    /// The release that fixes it (resolutions), else empty.
    pub release: &'a str,
    /// Why.
    pub note: &'a str,
}

/// Records a status change in `issue_status_log`, stamped with ClickHouse's clock (seconds)
/// and this machine's (milliseconds, which orders changes within a second).
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn set_status(client: &Client, database: &str, change: &StatusChange<'_>) -> Result<()> {
    #[derive(clickhouse::Row, serde::Serialize)]
    struct Change<'a> {
        project: &'a str,
        issue_id: &'a str,
        status: &'a str,
        changed_at: u32,
        changed_ms: u64,
        actor: &'a str,
        release: &'a str,
        note: &'a str,
    }
    let db = db(database)?;
    let now = now(client).await?;
    let client = client.clone().with_database(db);
    // A clock before 1970 counts as 1970: the order within the second is then lost, nothing else.
    let changed_ms = u64::try_from(tracefold_model::time::now_ms()).unwrap_or(0);
    let row = Change {
        project: change.project,
        issue_id: change.issue_id,
        status: change.status.as_str(),
        changed_at: now,
        changed_ms,
        actor: change.actor,
        release: change.release,
        note: change.note,
    };
    let write = async {
        let mut ins = client.insert::<Change<'_>>("issue_status_log").await?;
        ins.write(&row).await?;
        ins.end().await
    };
    write.await.map_err(step("record status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_their_strings_and_refuse_others() {
        for (st, s) in
            [(IssueStatus::Active, "active"), (IssueStatus::Resolved, "resolved"), (IssueStatus::Ignored, "ignored")]
        {
            assert_eq!(st.as_str(), s);
            assert_eq!(st.to_string(), s);
            assert_eq!(s.parse::<IssueStatus>().unwrap(), st);
            assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<IssueStatus>(&format!("\"{s}\"")).unwrap(), st);
        }
        assert_eq!(IssueStatus::default(), IssueStatus::Active);
        for bad in ["", "deleted", "Resolved", "RESOLVED", " active", "active ", "résolu", "已解决", "🙈"] {
            let err = bad.parse::<IssueStatus>().unwrap_err();
            assert!(matches!(&err, Error::UnknownStatus(s) if s == bad), "{bad:?}: {err}");
            assert!(err.to_string().contains("resolved, ignored or active"), "{err}");
            assert!(serde_json::from_str::<IssueStatus>(&serde_json::to_string(bad).unwrap()).is_err(), "{bad:?}");
        }
    }
}
