//! Queries of the web UI (`tracefold ui`) that the command line does not run: the statuses of
//! a page of issues at once, and one issue's status history. Every value bound, every query
//! LIMITed.

use crate::client::db;
use crate::error::{step, Result};
use crate::issues::{
    alias_map, aliases, fold, fold_once, members, meta_head, minutes_head, window_sums, Aliases, IssueStatus, TopIssue,
    TopRow, HOUR_COLUMNS, HOUR_FOLD, META_COLUMNS, META_FOLD, META_PLAIN,
};
use crate::sql::Sql;
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
/// `merged`: the issue has issues merged into it (late source maps), whose events count too.
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn release_starts(
    client: &Client,
    database: &str,
    project: &str,
    issue_id: &str,
    from: u32,
    merged: bool,
) -> Result<Vec<(String, u32)>> {
    #[derive(clickhouse::Row, Deserialize)]
    struct R {
        release: String,
        first: u32,
    }
    let db = db(database)?;
    let mut s = Sql::default();
    s.push(&format!(
        "SELECT release, toUInt32(min(hour)) AS first FROM {db}.issue_counts_1h WHERE hour >= toDateTime("
    ))
    .u32(from)
    .push(")")
    .sql(&members(db, project, issue_id, merged))
    .push(" GROUP BY release ORDER BY first, release LIMIT ")
    .u64(MAX_RELEASES);
    let rows = s.query(client).fetch_all::<R>().await.map_err(step("release starts"))?;
    Ok(rows.into_iter().map(|r| (r.release, r.first)).collect())
}

/// The release of an issue's first events: the release of its earliest event (the aggregate
/// row with the smallest `first_seen`, to the second; `argMin` kept per issue in
/// `issue_first_release`, so also after retention drops the rows; rows tied to the second give
/// any one of theirs). `None` for an issue without rows. `merged`: the issue has issues merged
/// into it (late source maps): the earliest of theirs and its own.
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn first_release(
    client: &Client,
    database: &str,
    project: &str,
    issue_id: &str,
    merged: bool,
) -> Result<Option<String>> {
    #[derive(clickhouse::Row, Deserialize)]
    struct R {
        release: String,
    }
    let db = db(database)?;
    let mut s = Sql::default();
    s.push(&format!("SELECT argMinMerge(release_state) AS release FROM {db}.issue_first_release WHERE 1"))
        .sql(&members(db, project, issue_id, merged))
        // Grouped, so that an issue without rows gives no row (not the empty string).
        .push(" GROUP BY project");
    let rows = s.query(client).fetch_all::<R>().await.map_err(step("first release"))?;
    Ok(rows.into_iter().next().map(|r| r.release))
}

/// How [`issue_list`] orders the issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListSort {
    /// Most events in the window.
    #[default]
    Events,
    /// Most distinct affected users in the window, then events.
    Users,
    /// Largest gain over the previous window of the same length, then events.
    Growth,
    /// Only issues first seen in the window, most events first.
    New,
    /// Latest last seen first.
    LastSeen,
}

impl ListSort {
    /// Every order.
    pub const ALL: [ListSort; 5] =
        [ListSort::Events, ListSort::Users, ListSort::Growth, ListSort::New, ListSort::LastSeen];

    /// The name (`events`, `users`, `growth`, `new` as `tracefold top --by`, and `last_seen`).
    pub fn as_str(self) -> &'static str {
        match self {
            ListSort::Events => "events",
            ListSort::Users => "users",
            ListSort::Growth => "growth",
            ListSort::New => "new",
            ListSort::LastSeen => "last_seen",
        }
    }
}

/// Most characters of a search text [`issue_list`] uses (the rest is cut off).
pub const MAX_SEARCH_CHARS: usize = 200;

/// What [`issue_list`] asks for: the issues with events in a window, each filter narrowing
/// the events (environment, release) or the issues (project, status, search).
#[derive(Debug, Clone, Copy, Default)]
pub struct ListQuery<'a> {
    /// The window: the last this many seconds (by the server's clock).
    pub since_secs: u64,
    /// Most rows returned.
    pub limit: u64,
    /// The order.
    pub sort: ListSort,
    /// Only this project.
    pub project: Option<&'a str>,
    /// Only events of this environment (counts, users and the last hour are of those events).
    pub environment: Option<&'a str>,
    /// Only events of this release (likewise).
    pub release: Option<&'a str>,
    /// Only issues with this current status (no recorded status: active).
    pub status: Option<IssueStatus>,
    /// Only issues whose title or culprit holds this text, case-insensitively (ClickHouse's
    /// `positionCaseInsensitiveUTF8`); empty: no search. At most [`MAX_SEARCH_CHARS`] used.
    pub search: Option<&'a str>,
}

/// The window's edges as the server aligns hours, Unix seconds.
#[derive(Debug, Clone, Copy, clickhouse::Row, Deserialize)]
struct ListClock {
    now: u32,
    from: u32,
    from_hour: u32,
    prev: u32,
    prev_hour: u32,
}

fn hour_up(t: u32, hour: u32) -> u32 {
    if hour == t {
        t
    } else {
        hour.saturating_add(3600)
    }
}

/// `SELECT project, issue_id, c, w` over `[lo, hi)` (`hi` `None`: open): whole hours from the
/// hourly rollup, the rest from the minute rollup (partitioned by day: only those days' parts
/// are read). The same counts as the minute rollup alone. `members`: a [`fold`] filter.
#[allow(clippy::too_many_arguments)]
fn count_parts(
    db: &str,
    q: &ListQuery<'_>,
    lo: u32,
    lo_hour: u32,
    hi: Option<(u32, u32)>,
    w: u8,
    members: Option<&Sql>,
    out: &mut Vec<Sql>,
) {
    let lo_up = hour_up(lo, lo_hour);
    let mut ranges: Vec<(&str, &str, u32, Option<u32>)> = Vec::new();
    match hi {
        None => {
            ranges.push(("issue_counts_1m", "minute", lo, Some(lo_up)));
            ranges.push(("issue_counts_1h", "hour", lo_up, None));
        }
        Some((hi, hi_hour)) => {
            if lo_up < hi_hour {
                ranges.push(("issue_counts_1m", "minute", lo, Some(lo_up)));
                ranges.push(("issue_counts_1h", "hour", lo_up, Some(hi_hour)));
                ranges.push(("issue_counts_1m", "minute", hi_hour, Some(hi)));
            } else {
                ranges.push(("issue_counts_1m", "minute", lo, Some(hi)));
            }
        }
    }
    for (table, col, a, b) in ranges {
        if b.is_some_and(|b| b <= a) {
            continue;
        }
        let mut s = Sql::default();
        s.push(&format!(
            "SELECT project, issue_id, sum(count) AS c, toUInt8({w}) AS w FROM {db}.{table} WHERE {col} >= toDateTime("
        ))
        .u32(a)
        .push(")");
        if let Some(b) = b {
            s.push(&format!(" AND {col} < toDateTime(")).u32(b).push(")");
        }
        event_filter(&mut s, q);
        if let Some(f) = members {
            s.sql(f);
        }
        s.push(" GROUP BY project, issue_id");
        out.push(s);
    }
}

/// ` AND project = ? AND environment = ? AND release = ?` for the filters that are set.
fn event_filter(s: &mut Sql, q: &ListQuery<'_>) {
    project_filter(s, q);
    if let Some(e) = q.environment {
        s.push(" AND environment = ").str(e);
    }
    if let Some(r) = q.release {
        s.push(" AND release = ").str(r);
    }
}

fn project_filter(s: &mut Sql, q: &ListQuery<'_>) {
    if let Some(p) = q.project {
        s.push(" AND project = ").str(p);
    }
}

/// `SELECT project, issue_id, users_n`: distinct users since `from` of the filtered events,
/// from the base table (partitioned by day), of the issues in `only` or of all; a canonical
/// issue's merged over its aliases (a user of both counts once).
fn list_users(db: &str, q: &ListQuery<'_>, from: u32, only: Option<&Sql>, aliases: Aliases) -> Sql {
    let inner = |members: Option<&Sql>| {
        let users = if members.is_some() {
            "uniqExactStateArray(users) AS st"
        } else {
            "toUInt64(uniqExactArray(users)) AS users_n"
        };
        let mut s = Sql::default();
        s.push(&format!("SELECT project, issue_id, {users} FROM {db}.aggregates WHERE minute >= toDateTime("))
            .u32(from)
            .push(")");
        event_filter(&mut s, q);
        match (members, only) {
            (Some(f), _) => {
                s.sql(f);
            }
            (None, Some(only)) => {
                s.push(" AND (project, issue_id) IN (SELECT project, issue_id FROM (").sql(only).push("))");
            }
            (None, None) => {}
        }
        s.push(" GROUP BY project, issue_id");
        s
    };
    fold(db, aliases, q.project, &inner, only, "users_n", "st", &[("toUInt64(uniqExactMerge(st))", "users_n")])
}

fn list_order(sort: ListSort) -> &'static str {
    match sort {
        ListSort::Events | ListSort::New => "events DESC, project, issue_id",
        ListSort::Users => "users DESC, events DESC, project, issue_id",
        ListSort::Growth => "toInt64(events) - toInt64(previous) DESC, events DESC, project, issue_id",
        ListSort::LastSeen => "last_seen DESC, project, issue_id",
    }
}

/// The SQL of [`issue_list`] for a clock reading, and the start of the last hour.
fn list_sql(db: &str, c: &ListClock, q: &ListQuery<'_>, aliases: Aliases) -> (Sql, u32) {
    // The issues with events in the window, filtered, with their metadata; canonical issues,
    // each folded over the issues merged into it (late source maps): status, search and `new`
    // are the canonical issue's. (ClickHouse 18.16: one JOIN per SELECT.)
    const COLUMNS: &str = "project, issue_id, events, previous, title, culprit, level, first_seen, last_seen, merged";
    let counts = |members: Option<&Sql>| {
        let mut parts = Vec::new();
        count_parts(db, q, c.from, c.from_hour, None, 1, members, &mut parts);
        if q.sort == ListSort::Growth {
            count_parts(db, q, c.prev, c.prev_hour, Some((c.from, c.from_hour)), 0, members, &mut parts);
        }
        window_sums(&parts)
    };
    let sums: &[(&str, &str)] = &[("sum(events)", "events"), ("sum(previous)", "previous")];
    // With aliases, folded in one pass: the count tables are read once.
    let folded = match aliases {
        Aliases::None => fold(db, aliases, q.project, &counts, None, "events, previous", "events, previous", sums),
        Aliases::Some => fold_once(&counts(None), &alias_map(db, q.project), "events, previous", sums),
    };
    let mut ranked = Sql::default();
    ranked.push("SELECT ").push(COLUMNS).push(" FROM (SELECT project, issue_id, events, previous FROM (");
    ranked.sql(&folded).push(") WHERE events > 0");
    if let Some(status) = q.status {
        let (op, cmp) = if status == IssueStatus::Active { ("NOT IN", "!=") } else { ("IN", "=") };
        ranked.push(&format!(
            " AND (project, issue_id) {op} (SELECT project, issue_id FROM (SELECT project, issue_id, \
             argMax(status, changed_ms) AS cur FROM {db}.issue_status_log WHERE 1"
        ));
        project_filter(&mut ranked, q);
        ranked.push(&format!(" GROUP BY project, issue_id) WHERE cur {cmp} ")).str(status.as_str()).push(")");
    }
    let meta = |members: Option<&Sql>| {
        let mut m = Sql::default();
        m.push(&meta_head(db));
        if let Some(f) = members {
            m.push("1").sql(f);
        } else {
            m.push(&format!(
                "(project, issue_id) IN (SELECT project, issue_id FROM {db}.issue_counts_1h WHERE hour >= toDateTime("
            ))
            .u32(c.from_hour)
            .push(")");
            project_filter(&mut m, q);
            m.push(")");
        }
        project_filter(&mut m, q);
        m.push(" GROUP BY project, issue_id");
        m
    };
    ranked.push(
        ") ANY INNER JOIN (SELECT project, issue_id, title, culprit, level, first_seen, last_seen, merged FROM (",
    );
    ranked.sql(&fold(db, aliases, q.project, &meta, None, META_PLAIN, META_COLUMNS, META_FOLD)).push(")");
    if let Some(text) = q.search.filter(|t| !t.is_empty()) {
        let text: String = text.chars().take(MAX_SEARCH_CHARS).collect();
        ranked
            .push(" WHERE positionCaseInsensitiveUTF8(title, ")
            .str(&text)
            .push(") > 0 OR positionCaseInsensitiveUTF8(culprit, ")
            .str(&text)
            .push(") > 0");
    }
    ranked.push(") USING (project, issue_id)");
    if q.sort == ListSort::New {
        ranked.push(" WHERE first_seen >= ").u32(c.from);
    }
    if q.sort == ListSort::Users {
        let mut with_users = Sql::default();
        with_users
            .push("SELECT ")
            .push(COLUMNS)
            .push(", users_n AS users FROM (")
            .sql(&ranked)
            .push(") ANY LEFT JOIN (")
            .sql(&list_users(db, q, c.from, None, aliases))
            .push(") USING (project, issue_id)");
        ranked = with_users;
    }
    ranked.push(" ORDER BY ").push(list_order(q.sort)).push(" LIMIT ").u64(q.limit);

    let hour_start = crate::issues::hour_start(c.now);
    let mut s = Sql::default();
    s.push(
        "SELECT project, issue_id, title, culprit, level, first_seen, last_seen, events, previous, users, minutes, minute_counts, merged FROM (",
    );
    if q.sort == ListSort::Users {
        s.push("SELECT ").push(COLUMNS).push(", users FROM (").sql(&ranked).push(")");
    } else {
        s.push("SELECT ")
            .push(COLUMNS)
            .push(", users_n AS users FROM (")
            .sql(&ranked)
            .push(") ANY LEFT JOIN (")
            .sql(&list_users(db, q, c.from, Some(&ranked), aliases))
            .push(") USING (project, issue_id)");
    }
    let hour = |members: Option<&Sql>| {
        let mut h = minutes_head(db, hour_start);
        event_filter(&mut h, q);
        if let Some(f) = members {
            h.sql(f);
        }
        h.push(" GROUP BY project, issue_id, minute) GROUP BY project, issue_id");
        h
    };
    s.push(") ANY LEFT JOIN (")
        .sql(&fold(db, aliases, q.project, &hour, None, HOUR_COLUMNS, HOUR_COLUMNS, HOUR_FOLD))
        .push(") USING (project, issue_id) ORDER BY ")
        .push(list_order(q.sort));
    (s, hour_start)
}

/// The issues of a window as `q` filters and orders them, at most `q.limit`, with metadata,
/// users and the last hour per minute (all of the filtered events): the issues list of
/// `tracefold ui` when a filter, a search or the `last_seen` order is chosen. One query after
/// reading the server's clock; events counted exactly (whole hours from the hourly rollup,
/// the rest per minute), users exactly over the user hashes the aggregates kept (base table).
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn issue_list(client: &Client, database: &str, q: &ListQuery<'_>) -> Result<Vec<TopIssue>> {
    let db = db(database)?;
    let since = q.since_secs.min(u64::from(u32::MAX));
    let c = client
        .query(
            "SELECT toUInt32(t) AS now, toUInt32(a) AS from, toUInt32(toStartOfHour(a)) AS from_hour, \
             toUInt32(p) AS prev, toUInt32(toStartOfHour(p)) AS prev_hour \
             FROM (SELECT t, a, toDateTime(greatest(2 * toInt64(toUInt32(a)) - toInt64(toUInt32(t)), 172800)) AS p \
             FROM (SELECT now() AS t, toDateTime(greatest(toInt64(toUInt32(now())) - toInt64(?), 172800)) AS a))",
        )
        .bind(since)
        .fetch_one::<ListClock>()
        .await
        .map_err(step("cannot reach ClickHouse"))?;
    let aliases = aliases(client, db, q.project).await?;
    let (sql, hour_start) = list_sql(db, &c, q, aliases);
    let rows = sql.query(client).fetch_all::<TopRow>().await.map_err(step("issue list"))?;
    Ok(rows.into_iter().map(|r| r.into_issue(hour_start, q.sort == ListSort::Growth)).collect())
}

/// Most issues [`first_releases`] asks about at once.
pub const MAX_FIRST_RELEASES: usize = 1_000;

/// The release of each issue's first events (as [`first_release`], of the issue's own rows:
/// the list does not fold merged issues in here), for `issues` given as `(project, issue_id)`:
/// one query for a page of the list, reading only those issues' rows of
/// `issue_first_release` (a key lookup; reading the minute rollup at each issue's first minute
/// read a granule of every day between the page's oldest and newest issue, 0.2-0.3 s at 100
/// million events). Issues without rows are left out. At most [`MAX_FIRST_RELEASES`] are
/// asked about.
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn first_releases(
    client: &Client,
    database: &str,
    issues: &[(&str, &str)],
) -> Result<Vec<(String, String, String)>> {
    #[derive(clickhouse::Row, Deserialize)]
    struct R {
        project: String,
        issue_id: String,
        release: String,
    }
    let db = db(database)?;
    let issues = &issues[..issues.len().min(MAX_FIRST_RELEASES)];
    if issues.is_empty() {
        return Ok(Vec::new());
    }
    let mut s = Sql::default();
    s.push(&format!(
        "SELECT project, issue_id, argMinMerge(release_state) AS release FROM {db}.issue_first_release \
         WHERE (project, issue_id) IN ("
    ));
    for (i, (p, id)) in issues.iter().enumerate() {
        if i > 0 {
            s.push(", ");
        }
        s.push("(").str(p).push(", ").str(id).push(")");
    }
    s.push(") GROUP BY project, issue_id LIMIT ").u64(issues.len() as u64);
    let rows = s.query(client).fetch_all::<R>().await.map_err(step("first releases"))?;
    Ok(rows.into_iter().map(|r| (r.project, r.issue_id, r.release)).collect())
}

/// The width of a bar of [`series`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// One bar a minute (`issue_counts_1m`).
    Minute,
    /// One bar an hour (`issue_counts_1h`).
    Hour,
    /// One bar a day, days as the server's time zone draws them (`issue_counts_1d`).
    Day,
}

impl Resolution {
    /// Every resolution, finest first.
    pub const ALL: [Resolution; 3] = [Resolution::Minute, Resolution::Hour, Resolution::Day];

    /// The name (`minute`, `hour`, `day`).
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Minute => "minute",
            Resolution::Hour => "hour",
            Resolution::Day => "day",
        }
    }

    /// Seconds a bar covers (a day: nominally; a bar is a calendar day of the server).
    pub fn secs(self) -> u32 {
        match self {
            Resolution::Minute => 60,
            Resolution::Hour => 3600,
            Resolution::Day => 86_400,
        }
    }
}

/// Most bars [`series`] draws.
pub const MAX_BUCKETS: u32 = 1_440;

/// Most releases [`series`] marks (the first to begin in the bars); more are cut there and
/// said ([`Series::more_releases`]): every release of an issue is event data, so the chart of
/// an issue with many (one client can send any) neither fails nor grows with them.
pub const MAX_RELEASE_MARKERS: u64 = 1_000;

/// One issue's events over the last `buckets` bars of `res` (the last one the current, partial
/// one), and where each release's events begin in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// Start of each bar, Unix seconds, oldest first.
    pub starts: Vec<u32>,
    /// Events of each bar.
    pub counts: Vec<u64>,
    /// Each release with events in the bars and the index of its first bar, oldest first
    /// (then by release): the first [`MAX_RELEASE_MARKERS`].
    pub release_starts: Vec<(String, usize)>,
    /// More releases than [`MAX_RELEASE_MARKERS`] begin in the bars: the later ones are not in
    /// `release_starts`.
    pub more_releases: bool,
}

/// The events of one issue per `res` over the last `buckets` bars (at most [`MAX_BUCKETS`]),
/// with each release's first bar (at most [`MAX_RELEASE_MARKERS`]): the issue page's chart.
/// Two queries (the bars, the releases' first bars) after reading the server's clock, from
/// the rollup of that resolution, each answer bounded whatever the number of releases.
/// `merged`: the issue has issues merged into it (late source maps), whose events count too.
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn series(
    client: &Client,
    database: &str,
    project: &str,
    issue_id: &str,
    res: Resolution,
    buckets: u32,
    merged: bool,
) -> Result<Series> {
    #[derive(clickhouse::Row, Deserialize)]
    struct C {
        first: u32,
        last: u32,
    }
    #[derive(clickhouse::Row, Deserialize)]
    struct B {
        t: u32,
        c: u64,
    }
    #[derive(clickhouse::Row, Deserialize)]
    struct R {
        release: String,
        t: u32,
    }
    let db = db(database)?;
    let n = buckets.clamp(1, MAX_BUCKETS);
    let back = n - 1;
    // The first and the current bar's start, as the server aligns them.
    let clock = match res {
        Resolution::Minute => {
            "SELECT toUInt32(toUInt32(toStartOfMinute(now())) - ? * 60) AS first, toUInt32(toStartOfMinute(now())) AS last"
        }
        Resolution::Hour => {
            "SELECT toUInt32(toUInt32(toStartOfHour(now())) - ? * 3600) AS first, toUInt32(toStartOfHour(now())) AS last"
        }
        Resolution::Day => {
            "SELECT toUInt32(toDateTime(toDate(now()) - ?)) AS first, toUInt32(toDateTime(toDate(now()))) AS last"
        }
    };
    let c = client.query(clock).bind(back).fetch_one::<C>().await.map_err(step("cannot reach ClickHouse"))?;
    let (table, col) = match res {
        Resolution::Minute => ("issue_counts_1m", "minute"),
        Resolution::Hour => ("issue_counts_1h", "hour"),
        Resolution::Day => ("issue_counts_1d", "day"),
    };
    // `FROM table WHERE` the bars' rows of the issue and its aliases (late source maps), and
    // the bar start of a row (`t`).
    let mut rows = Sql::default();
    let t = if res == Resolution::Day {
        rows.push(&format!(" FROM {db}.{table} WHERE day >= toDate(toDateTime(")).u32(c.first).push("))");
        "toUInt32(toDateTime(day))"
    } else {
        rows.push(&format!(" FROM {db}.{table} WHERE {col} >= toDateTime(")).u32(c.first).push(")");
        match res {
            Resolution::Minute => "toUInt32(minute)",
            _ => "toUInt32(hour)",
        }
    };
    rows.sql(&members(db, project, issue_id, merged));
    // One row a bar, and room for as many again from a clock ahead (left out below): the bars
    // are ordered by time, so no bar of the window is cut off by the limit.
    let mut bars = Sql::default();
    bars.push(&format!("SELECT {t} AS t, sum(count) AS c")).sql(&rows);
    bars.push(" GROUP BY t ORDER BY t LIMIT ").u64(2 * u64::from(n) + 2);
    let bars = bars.query(client).fetch_all::<B>().await.map_err(step("chart"))?;
    let mut firsts = Sql::default();
    firsts.push(&format!("SELECT release, min({t}) AS t")).sql(&rows);
    // A release first seen after the window's last bar (a clock ahead) takes no marker's place.
    firsts
        .push(" GROUP BY release HAVING t <= ")
        .u32(c.last + res.secs() / 2)
        .push(" ORDER BY t, release LIMIT ")
        .u64(MAX_RELEASE_MARKERS + 1);
    let mut firsts = firsts.query(client).fetch_all::<R>().await.map_err(step("chart releases"))?;
    let more_releases = firsts.len() as u64 > MAX_RELEASE_MARKERS;
    firsts.truncate(MAX_RELEASE_MARKERS as usize);
    // Nominal starts (a calendar day of the server is 23 to 25 hours at a daylight-saving
    // change; rows are placed by rounding).
    let starts: Vec<u32> = (0..n).map(|i| c.first + i * res.secs()).collect();
    let index = |t: u32| -> Option<usize> {
        if t < c.first || t > c.last + res.secs() / 2 {
            return None;
        }
        // Rounded: a calendar day is 23 to 25 hours long.
        let i = ((t - c.first) + res.secs() / 2) / res.secs();
        (i < n).then_some(i as usize)
    };
    let mut counts = vec![0u64; n as usize];
    for b in bars {
        if let Some(i) = index(b.t) {
            counts[i] += b.c;
        }
    }
    let release_starts = firsts.into_iter().filter_map(|r| Some((r.release, index(r.t)?))).collect();
    Ok(Series { starts, counts, release_starts, more_releases })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the real ClickHouse: an issue whose events name more releases and environments than
    /// are listed (a client can send any) is shown, its lists cut and saying what they left
    /// out. Both the detail (more than `MAX_BREAKDOWN_ROWS` releases) and the chart (more than
    /// 100,000 bar and release pairs) failed with `TooManyRows`, so the issue page could not
    /// be opened at all for any window that held them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_issue_with_more_releases_than_listed_is_shown_cut_not_refused() {
        use crate::issues::MAX_BREAKDOWN_ROWS;
        let cfg = crate::testdb::scratch("many_releases");
        crate::migrate::migrate(&cfg, |_, _| {}).await.expect("ClickHouse is needed for this test");
        let client = crate::client::database_client(&cfg).unwrap();
        let db = &cfg.database;
        // 10,001 releases and environments, 12 events each, one an hour over the last 12
        // hours (120,012 distinct hour and release pairs); and release `big`, 1,000 events in
        // the oldest of those hours.
        for q in [
            format!(
                "INSERT INTO {db}.issue_counts_1h SELECT 'p', 'i', toStartOfHour(now()) - 3600 * (number % 12), \
                 concat('r', toString(number % 10001)), concat('e', toString(number % 10001)), 1 FROM numbers(120012)"
            ),
            format!(
                "INSERT INTO {db}.issue_counts_1h SELECT 'p', 'i', toStartOfHour(now()) - 3600 * 11, 'big', 'production', 1000"
            ),
        ] {
            client.query(&q).execute().await.unwrap();
        }
        let summary = crate::issues::IssueSummary { project: "p".into(), issue_id: "i".into(), ..Default::default() };
        let detail = crate::issues::issue_detail(&client, db, summary, 24).await;
        let chart = series(&client, db, "p", "i", Resolution::Hour, 24, false).await;
        let _ = crate::client::drop_database(&client, db).await;
        let d = detail.unwrap();
        assert_eq!(d.hourly.iter().sum::<u64>(), 121_012);
        for (rows, rest, top) in
            [(&d.by_release, d.by_release_rest, "big"), (&d.by_environment, d.by_environment_rest, "production")]
        {
            assert_eq!(rows.len() as u64, MAX_BREAKDOWN_ROWS);
            assert_eq!(rows[0], (top.to_owned(), 1000));
            assert!(rows[1..].iter().all(|(_, n)| *n == 12));
            // 10,002 values, 10,000 listed: two of 12 events each left out.
            assert_eq!(rest, Some(24), "{top}");
        }
        let c = chart.unwrap();
        assert_eq!(c.counts.iter().sum::<u64>(), 121_012);
        assert_eq!(c.release_starts.len() as u64, MAX_RELEASE_MARKERS);
        assert!(c.more_releases);
        // Every release begins in the oldest of the 12 hours (the 13th bar of 24, or the 12th
        // when the hour turned between the insert and the chart); by name after that.
        assert_eq!(c.release_starts[0].0, "big");
        assert_eq!(c.release_starts[1].0, "r0");
        let first = c.release_starts[0].1;
        assert!(first == 12 || first == 11, "{first}");
        assert!(c.release_starts.iter().all(|(_, i)| *i == first));
    }
}
