//! Analyst queries against ClickHouse used by the command line (`tracefold top`).

use anyhow::Context as _;
use clickhouse::Client;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

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

#[derive(clickhouse::Row, Deserialize)]
struct NowRow {
    now: u32,
}

fn rfc3339(secs: u32) -> String {
    let s = tracefold_model::time::format_rfc3339(i64::from(secs) * 1000);
    s.replace(".000Z", "Z")
}

/// The `limit` issues with the most events since `now - since_secs` (optionally of one
/// project), with metadata, users and the last hour per minute.
///
/// # Errors
/// When ClickHouse does not answer.
pub async fn top_issues(
    client: &Client,
    db: &str,
    since_secs: u64,
    limit: u64,
    project: Option<&str>,
) -> anyhow::Result<Vec<TopIssue>> {
    let now = client
        .query("SELECT toUInt32(now()) AS now")
        .fetch_one::<NowRow>()
        .await
        .context("cannot reach ClickHouse")?
        .now;
    let from = now.saturating_sub(u32::try_from(since_secs).unwrap_or(u32::MAX));
    let proj_filter = if project.is_some() { "AND project = ?" } else { "" };
    let mut q = client
        .query(&format!(
            "SELECT project, issue_id, sum(count) AS count FROM {db}.issue_counts_1m \
             WHERE minute >= toDateTime(?) {proj_filter} GROUP BY project, issue_id ORDER BY count DESC, issue_id LIMIT ?"
        ))
        .bind(from);
    if let Some(p) = project {
        q = q.bind(p);
    }
    let counts = q.bind(limit).fetch_all::<CountRow>().await.context("top issue counts")?;
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
        .context("issue metadata")?;
    let users = client
        .query(&format!(
            "SELECT project, issue_id, uniqExactMerge(users_state) AS users FROM {db}.issue_users_1h \
             WHERE has(?, issue_id) AND hour >= toStartOfHour(toDateTime(?)) GROUP BY project, issue_id"
        ))
        .bind(&ids)
        .bind(from)
        .fetch_all::<UsersRow>()
        .await
        .context("affected users")?;
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
        .context("last hour")?;
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

/// Total events stored (all issues, all time).
///
/// # Errors
/// When ClickHouse does not answer.
pub async fn total_events(client: &Client, db: &str) -> anyhow::Result<u64> {
    #[derive(clickhouse::Row, Deserialize)]
    struct N {
        n: u64,
    }
    Ok(client.query(&format!("SELECT sum(count) AS n FROM {db}.aggregates")).fetch_one::<N>().await?.n)
}

/// Renders top issues as a terminal table.
pub fn render_top(rows: &[TopIssue]) -> String {
    use crate::render::{rebucket, sparkline, table, thousands, Align};
    if rows.is_empty() {
        return "no issues in this window\n".into();
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.issue_id[..12.min(r.issue_id.len())].to_owned(),
                r.project.clone(),
                r.title.clone(),
                thousands(r.count),
                thousands(r.users),
                r.first_seen.replace('T', " ").trim_end_matches('Z').to_owned(),
                r.last_seen.replace('T', " ").trim_end_matches('Z').to_owned(),
                sparkline(&rebucket(&r.last_hour, 30)),
            ]
        })
        .collect();
    table(
        &[
            ("ISSUE", Align::Left),
            ("PROJECT", Align::Left),
            ("TITLE", Align::Left),
            ("EVENTS", Align::Right),
            ("USERS", Align::Right),
            ("FIRST SEEN", Align::Left),
            ("LAST SEEN", Align::Left),
            ("LAST HOUR", Align::Left),
        ],
        &body,
        60,
    )
}
