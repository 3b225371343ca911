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

/// Renders top issues as a terminal table (every cell [printable](crate::render::printable)).
pub fn render_top(rows: &[TopIssue]) -> String {
    use crate::render::{prefix, rebucket, sparkline, table, thousands, Align};
    if rows.is_empty() {
        return "no issues in this window\n".into();
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                prefix(&r.issue_id, 12).to_owned(),
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
    pub status: String,
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
struct DetailRow {
    project: String,
    issue_id: String,
    title: String,
    culprit: String,
    exc_type: String,
    level: String,
    platform: String,
    grouping_version: String,
    first_seen: u32,
    last_seen: u32,
    count: u64,
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
pub fn users_estimate_sql() -> String {
    let k = tracefold_model::aggregate::DEFAULT_MAX_USERS;
    format!(
        "if(max(users_saturated) = 0, toUInt64(uniqExactArray(users)), \
         if(length(groupUniqArrayArray(users)) < {k}, toUInt64(length(groupUniqArrayArray(users))), \
         toUInt64(round(({k} - 1) / ((arraySort(groupUniqArrayArray(users))[{k}] + 1) / 18446744073709551616.0)))))"
    )
}

/// Looks up one issue (`project` disambiguates an id seen in several projects).
///
/// # Errors
/// When ClickHouse does not answer, the issue is unknown, or the id is ambiguous.
pub async fn issue_detail(
    client: &Client,
    db: &str,
    issue_id: &str,
    project: Option<&str>,
    window_hours: u32,
) -> anyhow::Result<IssueDetail> {
    let rows = client
        .query(&format!(
            "SELECT project, issue_id, argMinMerge(title_state) AS title, argMinMerge(culprit_state) AS culprit, \
             argMinMerge(exc_type_state) AS exc_type, argMaxMerge(level_state) AS level, argMinMerge(platform_state) AS platform, \
             argMaxMerge(grouping_version_state) AS grouping_version, toUInt32(minMerge(first_seen_state)) AS first_seen, \
             toUInt32(maxMerge(last_seen_state)) AS last_seen, sumMerge(count_state) AS count \
             FROM {db}.issues WHERE issue_id = ? GROUP BY project, issue_id"
        ))
        .bind(issue_id)
        .fetch_all::<DetailRow>()
        .await
        .context("issue")?;
    let rows: Vec<DetailRow> = rows.into_iter().filter(|r| project.is_none_or(|p| p == r.project)).collect();
    let d = match rows.len() {
        0 => anyhow::bail!("no issue {issue_id}{}", project.map(|p| format!(" in project {p}")).unwrap_or_default()),
        1 => rows.into_iter().next().expect("one"),
        _ => anyhow::bail!(
            "issue {issue_id} exists in projects {}; name one with --project",
            rows.iter().map(|r| crate::render::printable(&r.project)).collect::<Vec<_>>().join(", ")
        ),
    };
    let p = d.project.as_str();
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
        .context("users")?
        .n;
    let now = client.query("SELECT toUInt32(now()) AS now").fetch_one::<NowRow>().await?.now;
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
        .context("hourly")?;
    let mut hourly = vec![0u64; window_hours as usize];
    for h in hours {
        if let Some(slot) = hourly.get_mut(((h.hour.saturating_sub(start)) / 3600) as usize) {
            *slot += h.count;
        }
    }
    let breakdown = |col: &str| {
        format!(
            "SELECT {col} AS key, sum(count) AS count FROM {db}.issue_counts_1h \
             WHERE project = ? AND issue_id = ? AND hour >= toDateTime(?) GROUP BY {col} ORDER BY count DESC, key"
        )
    };
    let by_release =
        client.query(&breakdown("release")).bind(p).bind(issue_id).bind(start).fetch_all::<KeyCount>().await?;
    let by_environment =
        client.query(&breakdown("environment")).bind(p).bind(issue_id).bind(start).fetch_all::<KeyCount>().await?;
    #[derive(clickhouse::Row, Deserialize)]
    struct Sample {
        sample: String,
    }
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
        project: d.project,
        issue_id: d.issue_id,
        title: d.title,
        culprit: d.culprit,
        exc_type: d.exc_type,
        level: d.level,
        platform: d.platform,
        grouping_version: d.grouping_version,
        status,
        first_seen: rfc3339(d.first_seen),
        last_seen: rfc3339(d.last_seen),
        count: d.count,
        users,
        hourly,
        by_release: by_release.into_iter().map(|k| (k.key, k.count)).collect(),
        by_environment: by_environment.into_iter().map(|k| (k.key, k.count)).collect(),
        sample,
    })
}

/// The current status of an issue: `active` unless a status was set.
///
/// # Errors
/// When ClickHouse does not answer.
pub async fn issue_status(client: &Client, db: &str, project: &str, issue_id: &str) -> anyhow::Result<String> {
    #[derive(clickhouse::Row, Deserialize)]
    struct S {
        current_status: String,
    }
    let rows = client
        .query(&format!("SELECT current_status FROM {db}.issue_status_v WHERE project = ? AND issue_id = ?"))
        .bind(project)
        .bind(issue_id)
        .fetch_all::<S>()
        .await
        .context("status")?;
    Ok(rows.into_iter().next().map_or_else(|| "active".to_owned(), |s| s.current_status))
}

#[allow(clippy::too_many_arguments)]
/// Records a status change (`resolved`, `ignored`, `active`) with who made it and why.
///
/// # Errors
/// When ClickHouse does not answer or the status is not one of the three.
pub async fn set_status(
    client: &Client,
    db: &str,
    project: &str,
    issue_id: &str,
    status: &str,
    actor: &str,
    release: &str,
    note: &str,
) -> anyhow::Result<()> {
    if !matches!(status, "resolved" | "ignored" | "active") {
        anyhow::bail!("status must be resolved, ignored or active, got {status:?}");
    }
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
    let now = client.query("SELECT toUInt32(now()) AS now").fetch_one::<NowRow>().await?.now;
    let client = client.clone().with_database(db);
    let mut ins = client.insert::<Change<'_>>("issue_status_log").await?;
    let changed_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    ins.write(&Change { project, issue_id, status, changed_at: now, changed_ms, actor, release, note }).await?;
    ins.end().await.context("record status")?;
    Ok(())
}

/// Renders an issue for the terminal: every event-derived text
/// [printable](crate::render::printable).
pub fn render_issue(d: &IssueDetail) -> String {
    use crate::render::{printable as p, sparkline, table, thousands, Align};
    let mut out = format!(
        "{}  [{}] {}\n{}\n\n  project   {}\n  level     {}   platform {}   grouping {}\n  seen      {} .. {}\n  events    {}   users {}\n\n  last {} hours  {}\n\n",
        p(&d.issue_id),
        p(&d.status),
        p(&d.title),
        p(&d.culprit),
        p(&d.project),
        p(&d.level),
        p(&d.platform),
        p(&d.grouping_version),
        p(&d.first_seen),
        p(&d.last_seen),
        thousands(d.count),
        thousands(d.users),
        d.hourly.len(),
        sparkline(&d.hourly),
    );
    let rows = |v: &[(String, u64)]| -> Vec<Vec<String>> {
        v.iter().map(|(k, n)| vec![if k.is_empty() { "(none)".into() } else { k.clone() }, thousands(*n)]).collect()
    };
    out.push_str(&table(&[("RELEASE", Align::Left), ("EVENTS", Align::Right)], &rows(&d.by_release), 40));
    out.push('\n');
    out.push_str(&table(&[("ENVIRONMENT", Align::Left), ("EVENTS", Align::Right)], &rows(&d.by_environment), 40));
    if let Some(s) = &d.sample {
        let pretty = serde_json::from_str::<serde_json::Value>(s)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| s.clone());
        let lines: Vec<&str> = pretty.lines().collect();
        out.push_str("\nsample event:\n");
        for l in lines.iter().take(40) {
            out.push_str("  ");
            // The pretty JSON escapes C0 controls, not DEL, C1 or bidi controls; the raw
            // fallback escapes nothing.
            out.push_str(&p(l));
            out.push('\n');
        }
        if lines.len() > 40 {
            out.push_str(&format!("  ... ({} more lines; --format json shows it all)\n", lines.len() - 40));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "\x1b[2J\x1b]0;pwned\x07title\r\n\u{202E}gnp.exe";

    fn no_controls(out: &str) {
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert!(!out.contains('\u{202E}'), "{out:?}");
    }

    #[test]
    fn top_table_prints_event_text_inert() {
        let row = TopIssue {
            project: "web".into(),
            issue_id: "日本語日本語日本語日本語日本語".into(),
            title: HOSTILE.into(),
            culprit: HOSTILE.into(),
            level: "error".into(),
            count: 3,
            users: 1,
            first_seen: "2026-11-25T00:00:00Z".into(),
            last_seen: "2026-11-26T05:00:59Z".into(),
            last_hour: vec![0; 60],
        };
        let out = render_top(&[row]);
        no_controls(&out);
        assert!(out.contains("日本語日本語日本語日本語 "), "a 12-character id, cut between characters: {out}");
        assert!(out.contains("\u{FFFD}[2J\u{FFFD}]0;pwned\u{FFFD}title  \u{FFFD}gnp.exe"), "{out}");
    }

    #[test]
    fn issue_view_prints_event_text_inert() {
        let d = IssueDetail {
            project: "web".into(),
            issue_id: "abc".into(),
            title: HOSTILE.into(),
            culprit: HOSTILE.into(),
            exc_type: "TypeError".into(),
            level: "error\x1b[31m".into(),
            platform: "javascript".into(),
            grouping_version: "v1".into(),
            status: "active".into(),
            first_seen: "2026-11-25T00:00:00Z".into(),
            last_seen: "2026-11-26T05:00:59Z".into(),
            count: 3,
            users: 1,
            hourly: vec![1, 2],
            by_release: vec![(HOSTILE.into(), 2)],
            by_environment: vec![("prod\u{2066}uction".into(), 2)],
            sample: Some(format!("{{\"message\":\"{}\"}}\nnot json \x1b[2J", "\u{9b}\u{7f}")),
        };
        let out = render_issue(&d);
        no_controls(&out);
        assert!(out.starts_with("abc  [active] \u{FFFD}[2J\u{FFFD}]0;pwned\u{FFFD}title  \u{FFFD}gnp.exe\n"), "{out}");
        assert!(out.contains("prod\u{FFFD}uction"), "{out}");
        assert!(out.contains("not json \u{FFFD}[2J"), "{out}");
        // JSON output keeps the text as it is (serde escapes what JSON must).
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<IssueDetail>(&json).unwrap().title, HOSTILE);
    }
}
