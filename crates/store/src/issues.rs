//! Issues as analysts see them (`tracefold top`, `tracefold issue`): the top issues of a
//! window, one issue in detail, and its status with its history.

use crate::client::{db, now};
use crate::error::{step, Error, Result};
use crate::sql::Sql;
use clickhouse::Client;
use serde::{Deserialize, Serialize};

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

/// How `tracefold top` ranks the issues of a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopBy {
    /// Most events in the window.
    #[default]
    Events,
    /// Most distinct affected users in the window, then events.
    Users,
    /// Largest gain in events over the previous window of the same length (this window's
    /// events minus that window's), then events. Only issues with events in this window.
    Growth,
    /// Only issues first seen in the window, most events first.
    New,
}

impl TopBy {
    /// Every ranking.
    pub const ALL: [TopBy; 4] = [TopBy::Events, TopBy::Users, TopBy::Growth, TopBy::New];

    /// The name (`events`, `users`, `growth`, `new`).
    pub fn as_str(self) -> &'static str {
        match self {
            TopBy::Events => "events",
            TopBy::Users => "users",
            TopBy::Growth => "growth",
            TopBy::New => "new",
        }
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
    /// Events in the previous window of the same length ([`TopBy::Growth`] only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<u64>,
    /// Distinct affected users in the window: exact over the user hashes the aggregates kept
    /// (up to 4096 per aggregate; `tracefold issue` estimates beyond that bound) for windows of
    /// up to a day; for longer ones merged from daily sketches ([`USERS_SKETCH_ERROR`]), and
    /// then `users_approximate` is true.
    pub users: u64,
    /// `users` is an estimate (windows longer than [`EXACT_USERS_SECS`]):
    /// [`USERS_SKETCH_ERROR`].
    #[serde(default)]
    pub users_approximate: bool,
    /// First seen ever, RFC 3339.
    pub first_seen: String,
    /// Last seen, RFC 3339.
    pub last_seen: String,
    /// Events per minute over the last 60 minutes, oldest first.
    pub last_hour: Vec<u64>,
    /// The issues merged into this one (late source maps, docs/sourcemaps.md "Late maps"),
    /// sorted: their events, users and first seen are counted here. Empty (and left out of
    /// the JSON) for most issues.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<String>,
}

/// What [`top`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopQuery<'a> {
    /// The window: the last this many seconds (by the server's clock).
    pub since_secs: u64,
    /// Most rows returned (any number: the issues are never listed in the SQL text).
    pub limit: u64,
    /// Only this project.
    pub project: Option<&'a str>,
    /// The ranking.
    pub by: TopBy,
}

/// The window's edges as the server aligns them (its time zone decides hours and days), Unix
/// seconds. `*_up`: the first day start at or after the instant; `*_down`: the day
/// start at or before it. `aliases`: 1 when the projects asked have an alias row, else 0.
#[derive(Debug, Clone, Copy, clickhouse::Row, Deserialize)]
pub(crate) struct Clock {
    pub(crate) now: u32,
    now_day: u32,
    from: u32,
    from_day_up: u32,
    from_day_down: u32,
    prev: u32,
    prev_day_up: u32,
    pub(crate) aliases: u64,
}

/// Reads the server's clock and aligns the window `[now - since, now]` and the one before it,
/// and whether `project` (or any project) has alias rows (as [`aliases`], in the same query).
/// Windows start no earlier than 1970-01-03 (no data is older; day arithmetic stays in range
/// in every time zone).
pub(crate) async fn clock(client: &Client, db: &str, since_secs: u64, project: Option<&str>) -> Result<Clock> {
    let since = since_secs.min(u64::from(u32::MAX));
    let mut s = Sql::default();
    s.push(
        "SELECT toUInt32(t) AS now, toUInt32(toStartOfDay(t)) AS now_day, toUInt32(a) AS from, \
         toUInt32(toDateTime(toDate(a) + if(toStartOfDay(a) = a, 0, 1))) AS from_day_up, \
         toUInt32(toStartOfDay(a)) AS from_day_down, toUInt32(p) AS prev, \
         toUInt32(toDateTime(toDate(p) + if(toStartOfDay(p) = p, 0, 1))) AS prev_day_up, ",
    );
    s.push(&format!("(SELECT count() FROM (SELECT 1 FROM {db}.issue_aliases"));
    if let Some(p) = project {
        s.push(" WHERE project = ").str(p);
    }
    s.push(
        " LIMIT 1)) AS aliases \
         FROM (SELECT t, a, toDateTime(greatest(2 * toInt64(toUInt32(a)) - toInt64(toUInt32(t)), 172800)) AS p \
         FROM (SELECT now() AS t, toDateTime(greatest(toInt64(toUInt32(now())) - toInt64(",
    )
    .u64(since)
    .push("), 172800)) AS a))");
    s.query(client).fetch_one::<Clock>().await.map_err(step("cannot reach ClickHouse"))
}

/// Which rollup a part of a time range is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Minute,
    Day,
}

/// Splits `[start, end)` (`end` `None`: open, up to now and beyond) into whole days (read from
/// `issue_counts_1d`) and the rest of the first and last day (`issue_counts_1m`, partitioned
/// by day: only those two days' parts are read): the same counts as the minute rollup alone,
/// from far fewer rows. `start_day_up` and `end_day` are the server-aligned day edges. An open
/// window with whole days before today reads today from the daily rollup too: every event from
/// today's start on is in today's daily row (or a later day's), so `day >= today` counts what
/// `minute >= today's start` does, from one row per issue instead of one per issue and minute
/// (at 20,000 issues an hour, 18 hours into the day: 22,000 rows instead of 360,000), in the
/// daily rollup's granules that the whole days read anyway (its key is issue first: a filter on
/// the day alone reads the month's partition). Windows within a day and a little beyond (24
/// hours) keep the minute rollup's day partitions.
fn tiers(start: u32, start_day_up: u32, end_day: u32, end: Option<u32>) -> Vec<(Tier, u32, Option<u32>)> {
    let mut out = match end {
        None if start_day_up < end_day => {
            vec![(Tier::Day, start_day_up, None), (Tier::Minute, start, Some(start_day_up))]
        }
        _ if start_day_up < end_day => vec![
            (Tier::Day, start_day_up, Some(end_day)),
            (Tier::Minute, start, Some(start_day_up)),
            (Tier::Minute, end_day, end),
        ],
        _ => vec![(Tier::Minute, start, end)],
    };
    out.retain(|&(_, lo, hi)| hi.is_none_or(|hi| lo < hi));
    out
}

/// `SELECT project, issue_id, canon`: each alias of `issue_aliases` (migration 0011, late
/// source maps) with its canonical issue, the smallest primary when one alias names several
/// (docs/sourcemaps.md "Late maps"). A small table: a few rows per (bug, build).
pub(crate) fn alias_map(db: &str, project: Option<&str>) -> Sql {
    let mut s = Sql::default();
    s.push(&format!(
        "SELECT project, a AS issue_id, canon FROM (SELECT project, alias AS a, min(issue_id) AS canon FROM {db}.issue_aliases"
    ));
    if let Some(p) = project {
        s.push(" WHERE project = ").str(p);
    }
    s.push(" GROUP BY project, alias)");
    s
}

/// Whether the projects a query reads have alias rows (late source maps). Without any, every
/// query is the plain one, as before aliases existed (no join, no second aggregation); with
/// some, only the issues that take part in an alias are folded ([`fold`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Aliases {
    /// No alias row for the projects asked: the plain queries.
    None,
    /// Some: the issues named by alias rows are folded, the others read as before.
    Some,
}

/// Whether `project` (or any project) has an alias row: one bounded query of the small
/// `issue_aliases` table (at most one row read back). An alias row written between this and
/// the query that follows is folded from the next query on.
///
/// # Errors
/// When ClickHouse does not answer.
pub(crate) async fn aliases(client: &Client, db: &str, project: Option<&str>) -> Result<Aliases> {
    #[derive(clickhouse::Row, Deserialize)]
    struct N {
        n: u64,
    }
    let mut s = Sql::default();
    s.push(&format!("SELECT count() AS n FROM (SELECT 1 FROM {db}.issue_aliases"));
    if let Some(p) = project {
        s.push(" WHERE project = ").str(p);
    }
    s.push(" LIMIT 1)");
    let n = s.query(client).fetch_one::<N>().await.map_err(step("aliases"))?.n;
    Ok(if n == 0 { Aliases::None } else { Aliases::Some })
}

/// `SELECT project, issue_id`: every issue that takes part in an alias row (the alias and
/// each primary it names), of `project` or of all: the issues [`fold`] folds.
fn participants(db: &str, project: Option<&str>) -> Sql {
    let mut s = Sql::default();
    s.push(&format!("SELECT project, arrayJoin([alias, issue_id]) AS issue_id FROM {db}.issue_aliases"));
    if let Some(p) = project {
        s.push(" WHERE project = ").str(p);
    }
    s
}

/// ` AND (project, issue_id) IN (participants)`: the filter [`fold`] hands its inner query
/// for the issues it folds (on the tables' key prefix: only their granules are read). With
/// `only` (a SELECT of `project, issue_id`: canonical issues), only the participants that
/// fold into one of those: the ones in it and the aliases of the ones in it (a few alias rows
/// name issues all over a table, each in a granule of its own: a ranking's 20 issues are
/// rarely among them, and then no granule is read).
fn participants_filter(db: &str, project: Option<&str>, only: Option<&Sql>) -> Sql {
    let mut s = Sql::default();
    s.push(" AND (project, issue_id) IN (").sql(&participants(db, project)).push(")");
    if let Some(only) = only {
        s.push(" AND ((project, issue_id) IN (SELECT project, issue_id FROM (")
            .sql(only)
            .push(")) OR (project, issue_id) IN (SELECT project, issue_id FROM (")
            .sql(&alias_map(db, project))
            .push(") WHERE (project, canon) IN (SELECT project, issue_id FROM (")
            .sql(only)
            .push("))))");
    }
    s
}

/// One row per canonical issue ([`alias_map`]) of a per-issue query: `SELECT project,
/// issue_id, <names>`.
///
/// `inner(None)` is the plain query (`SELECT project, issue_id, <cols>`, one row per issue,
/// final values); `plain` selects the output names from its columns (`emptyArrayString() AS
/// merged` where the plain query has no aliases to name). With [`Aliases::None`] that is the
/// whole answer: the query as it was before aliases existed. With [`Aliases::Some`] the plain
/// rows of issues that take part in no alias are kept as they are, and the others are read
/// again with `inner(Some(filter))` (the filter, ` AND (project, issue_id) IN (...)`, goes
/// where the inner query filters its table; the rows, `SELECT project, issue_id, <cols>`, then
/// hold mergeable states where the values do not add up, e.g. users) and folded: joined with the small alias map and
/// aggregated by canonical id with each `(expr, name)` of `aggs` (`canon` is empty on an
/// issue's own row, the alias's canonical id on an alias's). Only those few issues pay for
/// the join and the second aggregation. `only`: the query keeps only these canonical issues
/// (a SELECT of `project, issue_id`; [`participants_filter`]), else `None`. The sets are
/// subqueries of `issue_aliases` here; [`fold_in`] takes them from elsewhere (the session's
/// temporary tables of [`top`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn fold(
    db: &str,
    aliases: Aliases,
    project: Option<&str>,
    inner: &dyn Fn(Option<&Sql>) -> Sql,
    only: Option<&Sql>,
    plain: &str,
    cols: &str,
    aggs: &[(&str, &str)],
) -> Sql {
    if aliases == Aliases::None {
        let mut s = Sql::default();
        s.push("SELECT project, issue_id, ").push(plain).push(" FROM (").sql(&inner(None)).push(")");
        return s;
    }
    let sets = FoldSets {
        apart: participants(db, project),
        filter: participants_filter(db, project, only),
        map: alias_map(db, project),
    };
    fold_in(&sets, inner, plain, cols, aggs)
}

/// What a fold reads apart and folds ([`fold_in`]).
pub(crate) struct FoldSets {
    /// `SELECT project, issue_id`: the issues read apart and folded; the others are read plain.
    pub(crate) apart: Sql,
    /// ` AND ...`: the filter of the inner query that reads them (at least `IN apart`).
    pub(crate) filter: Sql,
    /// `SELECT project, issue_id, canon`: their canonical ids (no row, or `canon` empty: the
    /// issue's own).
    pub(crate) map: Sql,
}

/// [`fold`] with [`Aliases::Some`] over the given sets: the plain rows of the issues not in
/// `sets.apart`, `UNION ALL` the rows of those read again with `sets.filter` and folded by
/// canonical id through `sets.map`.
pub(crate) fn fold_in(
    sets: &FoldSets,
    inner: &dyn Fn(Option<&Sql>) -> Sql,
    plain: &str,
    cols: &str,
    aggs: &[(&str, &str)],
) -> Sql {
    let mut s = Sql::default();
    s.push("SELECT project, issue_id, ").push(plain).push(" FROM (").sql(&inner(None)).push(")");
    s.push(" WHERE (project, issue_id) NOT IN (").sql(&sets.apart).push(") UNION ALL ");
    let members = inner(Some(&sets.filter));
    s.sql(&fold_once(&members, &sets.map, &format!("canon, {cols}"), aggs));
    s
}

/// One row per canonical issue of a per-issue query whose values fold by plain aggregates
/// (events summed, first seen the earliest), in one pass: every row of `inner` (`SELECT
/// project, issue_id, <cols>`, one row per issue) joined with `map` (`SELECT project,
/// issue_id, canon`: the alias map, small) and aggregated again by canonical id with each
/// `(expr, name)` of `aggs`. Unlike [`fold`], the participants' rows are not read a second
/// time: the tables are read once, and the join and second aggregation run over per-issue
/// rows (tens of thousands at most), not over the tables' rows.
pub(crate) fn fold_once(inner: &Sql, map: &Sql, cols: &str, aggs: &[(&str, &str)]) -> Sql {
    let mut s = Sql::default();
    // The aggregates are named `f_<name>` where they are computed: an alias equal to a column
    // they read would be substituted into the other aggregates (ClickHouse 18.16).
    s.push("SELECT project, cid AS issue_id");
    for (_, name) in aggs {
        s.push(&format!(", f_{name} AS {name}"));
    }
    s.push(" FROM (SELECT project, cid");
    for (expr, name) in aggs {
        s.push(&format!(", {expr} AS f_{name}"));
    }
    s.push(&format!(" FROM (SELECT project, issue_id, {cols}, if(canon = '', issue_id, canon) AS cid FROM ("))
        .sql(inner)
        .push(") ANY LEFT JOIN (")
        .sql(map)
        .push(") USING (project, issue_id)) GROUP BY project, cid)");
    s
}

/// `SELECT project, issue_id, c, w`: the rollup rows of each part of `parts` (`c` their events,
/// `w` = `window`), of the issues `filter` keeps (a [`fold`] filter) or of all. Not grouped per
/// part: [`window_sums`] adds them up per issue in one aggregation over every part (measured
/// 20-30% faster than one per part and one more over their sums, for a week's 34,000 issues).
fn counts_parts(
    db: &str,
    parts: &[(Tier, u32, Option<u32>)],
    window: u8,
    project: Option<&str>,
    filter: Option<&Sql>,
) -> Vec<Sql> {
    parts
        .iter()
        .map(|&(tier, lo, hi)| {
            let (table, col, conv) = match tier {
                Tier::Minute => ("issue_counts_1m", "minute", "toDateTime"),
                Tier::Day => ("issue_counts_1d", "day", "toDate"),
            };
            let mut s = Sql::default();
            s.push(&format!(
                "SELECT project, issue_id, count AS c, toUInt8({window}) AS w FROM {db}.{table} WHERE {col} >= {conv}(toDateTime("
            ))
            .u32(lo)
            .push("))");
            if let Some(hi) = hi {
                s.push(&format!(" AND {col} < {conv}(toDateTime(")).u32(hi).push("))");
            }
            if let Some(p) = project {
                s.push(" AND project = ").str(p);
            }
            if let Some(f) = filter {
                s.sql(f);
            }
            s
        })
        .collect()
}

/// The start of a SELECT of issues' counts per minute since `hour_start` (Unix seconds), as
/// `minutes` and `minute_counts` arrays, up to where the caller adds its filters.
pub(crate) fn minutes_head(db: &str, hour_start: u32) -> Sql {
    let mut h = Sql::default();
    h.push(&format!(
        "SELECT project, issue_id, groupArray(m) AS minutes, groupArray(mc) AS minute_counts FROM (\
         SELECT project, issue_id, toUInt32(minute) AS m, sum(count) AS mc FROM {db}.issue_counts_1m WHERE minute >= toDateTime("
    ))
    .u32(hour_start)
    .push(")");
    h
}

/// The start of a SELECT of issues' metadata (title, culprit, level, first and last seen) from
/// the `issues` table, up to its `WHERE`.
pub(crate) fn meta_head(db: &str) -> String {
    format!(
        "SELECT project, issue_id, argMinMerge(title_state) AS title, argMinMerge(culprit_state) AS culprit, \
         argMaxMerge(level_state) AS level, toUInt32(minMerge(first_seen_state)) AS first_seen, \
         toUInt32(maxMerge(last_seen_state)) AS last_seen FROM {db}.issues WHERE "
    )
}

/// Per issue, the events of the window (`w = 1`) and of the one before (`w = 0`) over the
/// count parts given (each a SELECT of `project, issue_id, w, c`), as `events` and `previous`.
pub(crate) fn window_sums(parts: &[Sql]) -> Sql {
    let mut s = Sql::default();
    s.push("SELECT project, issue_id, sumIf(c, w = 1) AS events, sumIf(c, w = 0) AS previous FROM (");
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            s.push(" UNION ALL ");
        }
        s.sql(p);
    }
    s.push(") GROUP BY project, issue_id");
    s
}
/// The ranked issues of `q`: one SELECT of `project, issue_id, events, previous`, ordered and
/// LIMITed (used as the row source and, as a set, to restrict the other tables to its rows).
/// Issues are canonical ([`fold`]): an alias's events count for its canonical issue, and
/// ranking by `new` asks whether the canonical issue's first event (its aliases' included) is
/// in the window.
///
/// With aliases the events (and first seen, for `new`) are folded in one pass ([`fold_once`])
/// through `at`'s alias map, and the users of the ranking by users through `at`'s sets.
///
/// `limit`: [`Limit::Rows`] keeps the first `q.limit` rows (`top`); [`Limit::PerProject`] the
/// first `q.limit` of each project (`LIMIT n BY project`, the precomputed rankings of
/// [`crate::rankings`]: each project's list is what `top --project` answers, since the order is
/// the same and every count is per issue).
pub(crate) fn ranked_sql(db: &str, c: &Clock, q: &TopQuery<'_>, aliases: Aliases, at: MapAt, limit: Limit) -> Sql {
    let counts = |filter: Option<&Sql>| {
        let mut parts = counts_parts(db, &tiers(c.from, c.from_day_up, c.now_day, None), 1, q.project, filter);
        if q.by == TopBy::Growth {
            parts.extend(counts_parts(
                db,
                &tiers(c.prev, c.prev_day_up, c.from_day_down, Some(c.from)),
                0,
                q.project,
                filter,
            ));
        }
        window_sums(&parts)
    };
    let sums: &[(&str, &str)] = &[("sum(events)", "events"), ("sum(previous)", "previous")];
    let map = at.map(db, q.project);
    let folded = match aliases {
        Aliases::None => fold(db, aliases, q.project, &counts, None, "events, previous", "events, previous", sums),
        Aliases::Some => fold_once(&counts(None), &map, "events, previous", sums),
    };
    let mut s = Sql::default();
    s.push("SELECT project, issue_id, events, previous");
    if q.by == TopBy::Users {
        s.push(", users_all");
    }
    s.push(" FROM (SELECT project, issue_id, events, previous FROM (").sql(&folded).push(") WHERE events > 0");
    if q.by == TopBy::New {
        let first = |filter: Option<&Sql>| {
            let mut s = Sql::default();
            s.push(&format!(
                "SELECT project, issue_id, toUInt32(minMerge(first_seen_state)) AS fs FROM {db}.issues WHERE 1"
            ));
            if let Some(p) = q.project {
                s.push(" AND project = ").str(p);
            }
            if let Some(f) = filter {
                s.sql(f);
            }
            s.push(" GROUP BY project, issue_id");
            s
        };
        let firsts = match aliases {
            Aliases::None => fold(db, aliases, q.project, &first, None, "fs", "fs", &[("min(fs)", "fs")]),
            Aliases::Some => fold_once(&first(None), &map, "fs", &[("min(fs)", "fs")]),
        };
        s.push(" AND (project, issue_id) IN (SELECT project, issue_id FROM (")
            .sql(&firsts)
            .push(") WHERE fs >= ")
            .u32(c.from)
            .push(")");
    }
    s.push(")");
    if q.by == TopBy::Users {
        s.push(" ANY LEFT JOIN (SELECT project, issue_id, users_n AS users_all FROM (")
            .sql(&users_sql(db, c, q.since_secs, None, q.project, aliases, at.participants().as_ref()))
            .push(")) USING (project, issue_id)");
    }
    s.push(" ORDER BY ").push(order_by(q.by, "users_all")).push(" LIMIT ").u64(q.limit);
    if limit == Limit::PerProject {
        s.push(" BY project");
    }
    s
}

/// How [`ranked_sql`] cuts the ranked list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// The first `limit` rows.
    Rows,
    /// The first `limit` rows of each project.
    PerProject,
}

/// `SELECT project, issue_id, users_n`: distinct affected users per issue since `c.from`, of
/// the issues in `only` (a SELECT of `project, issue_id`; the result may hold other issues too)
/// or of all; a canonical issue's over its aliases too ([`fold`]: merged as states, a user of
/// both counts once). Windows of up to a day ([`EXACT_USERS_SECS`]) read the base table
/// (partitioned by day: only the window's days) and count exactly over the user hashes the
/// aggregates kept. Longer ones merge one sketch per issue and day (`issue_users_1d_v2`,
/// `uniqCombined`) for the whole days, and the same sketch of the base table's hashes for the
/// part of the first day: approximate ([`USERS_SKETCH_ERROR`]), at a cost that does not grow
/// with the users of each hour (merging every hour's exact set of a month was the slowest part
/// of `top`). The sketches' table has granules of 256 rows: the users of `only`'s few issues
/// read their granules alone (in granules of 8,192 rows, 20 issues read most of the table).
/// `sets`: what the fold reads apart (the session's temporary tables), else `issue_aliases`'
/// subqueries ([`fold`]).
fn users_sql(
    db: &str,
    c: &Clock,
    since_secs: u64,
    only: Option<&Sql>,
    project: Option<&str>,
    aliases: Aliases,
    sets: Option<&FoldSets>,
) -> Sql {
    // `members`: the issues a fold reads again (their rows hold states), else the plain query.
    let inner = |members: Option<&Sql>| {
        let filter = |s: &mut Sql| {
            match (members, only) {
                (Some(f), _) => {
                    s.sql(f);
                }
                (None, Some(only)) => {
                    s.push(" AND (project, issue_id) IN (SELECT project, issue_id FROM (").sql(only).push("))");
                }
                (None, None) => {}
            }
            if let Some(p) = project {
                s.push(" AND project = ").str(p);
            }
        };
        let mut s = Sql::default();
        if since_secs <= EXACT_USERS_SECS {
            let users = if members.is_some() {
                "uniqExactStateArray(users) AS st"
            } else {
                "toUInt64(uniqExactArray(users)) AS users_n"
            };
            s.push(&format!("SELECT project, issue_id, {users} FROM {db}.aggregates WHERE minute >= toDateTime("))
                .u32(c.from)
                .push(")");
            filter(&mut s);
            s.push(" GROUP BY project, issue_id");
            return s;
        }
        // Whole days (and today, up to now) from the daily sketches; the part of the first day
        // inside the window from the base table's hashes, as the same sketch state.
        let users = if members.is_some() {
            "uniqCombinedMergeState(st) AS ust"
        } else {
            "toUInt64(uniqCombinedMerge(st)) AS users_n"
        };
        s.push(&format!(
            "SELECT project, issue_id, {users} FROM (\
             SELECT project, issue_id, users_state AS st FROM {db}.issue_users_1d_v2 WHERE day >= toDate(toDateTime("
        ))
        .u32(c.from_day_up)
        .push("))");
        filter(&mut s);
        // The rest of the first day (up to a day of one day's part): the issues of `only` alone,
        // when given (a ranking by events over 7 days needs 20 issues' users, not every issue's).
        s.push(&format!(
            " UNION ALL SELECT project, issue_id, uniqCombinedState(u) AS st FROM {db}.aggregates ARRAY JOIN users AS u \
             WHERE minute >= toDateTime("
        ))
        .u32(c.from)
        .push(") AND minute < toDateTime(")
        .u32(c.from_day_up)
        .push(")");
        filter(&mut s);
        s.push(" GROUP BY project, issue_id) GROUP BY project, issue_id");
        s
    };
    let (col, merge) = if since_secs <= EXACT_USERS_SECS {
        ("st", "toUInt64(uniqExactMerge(st))")
    } else {
        ("ust", "toUInt64(uniqCombinedMerge(ust))")
    };
    match sets {
        Some(sets) if aliases == Aliases::Some => fold_in(sets, &inner, "users_n", col, &[(merge, "users_n")]),
        _ => fold(db, aliases, project, &inner, only, "users_n", col, &[(merge, "users_n")]),
    }
}

/// The longest window (seconds) whose users `top` counts exactly, from the base table's user
/// hashes; longer windows merge the daily sketches of `issue_users_1d_v2` (approximate).
pub const EXACT_USERS_SECS: u64 = 86_400;

/// The error bound of a users count merged from sketches, as the docs and the table output
/// state it. `uniqCombined` (ClickHouse 18.16) keeps up to 8,192 distinct 32-bit hashes of the
/// user hashes exactly (two users share a 32-bit hash with a chance of n^2 / 2^33: 1 in 8,600
/// at 1,000 users), then a HyperLogLog of 2^17 cells, relative standard error
/// 1.04 / sqrt(2^17) = 0.29%.
pub const USERS_SKETCH_ERROR: &str =
    "exact up to 8,192 users per issue (but for rare 32-bit hash collisions), 0.3% standard error beyond";

/// The ORDER BY of a ranking (`users`: the name of the users column at that level).
pub(crate) fn order_by(by: TopBy, users: &str) -> &'static str {
    match (by, users) {
        (TopBy::Events | TopBy::New, _) => "events DESC, project, issue_id",
        (TopBy::Users, "users_all") => "users_all DESC, events DESC, project, issue_id",
        (TopBy::Users, _) => "users DESC, events DESC, project, issue_id",
        (TopBy::Growth, _) => "toInt64(events) - toInt64(previous) DESC, events DESC, project, issue_id",
    }
}

/// A row of a ranked issue list (`top`, the UI's filtered lists).
#[derive(clickhouse::Row, Deserialize)]
pub(crate) struct TopRow {
    pub(crate) project: String,
    pub(crate) issue_id: String,
    pub(crate) title: String,
    pub(crate) culprit: String,
    pub(crate) level: String,
    pub(crate) first_seen: u32,
    pub(crate) last_seen: u32,
    pub(crate) events: u64,
    pub(crate) previous: u64,
    pub(crate) users: u64,
    pub(crate) minutes: Vec<u32>,
    pub(crate) minute_counts: Vec<u64>,
    pub(crate) merged: Vec<String>,
}

impl TopRow {
    /// The issue, its last hour per minute from `hour_start` on; `previous` kept when the
    /// ranking is by growth.
    pub(crate) fn into_issue(self, hour_start: u32, with_previous: bool) -> TopIssue {
        let mut last_hour = vec![0; 60];
        for (m, n) in self.minutes.iter().zip(&self.minute_counts) {
            if let Some(slot) = last_hour.get_mut((m.saturating_sub(hour_start) / 60) as usize) {
                *slot += n;
            }
        }
        let time = |t: u32| if t == 0 { String::new() } else { rfc3339(t) };
        TopIssue {
            first_seen: time(self.first_seen),
            last_seen: time(self.last_seen),
            previous: with_previous.then_some(self.previous),
            project: self.project,
            issue_id: self.issue_id,
            title: self.title,
            culprit: self.culprit,
            level: self.level,
            count: self.events,
            users: self.users,
            users_approximate: false,
            last_hour,
            merged: self.merged,
        }
    }
}

fn rfc3339(secs: u32) -> String {
    let s = tracefold_model::time::format_rfc3339(i64::from(secs) * 1000);
    s.replace(".000Z", "Z")
}

/// The SQL of [`top`] (one SELECT) for a clock reading: the ranked, LIMITed issues joined
/// with their metadata (`issues`), distinct users in the window ([`users_sql`]) and last hour
/// (`issue_counts_1m`). No list of ids is built on the client: users and metadata are read for
/// the ranked issues only (`IN` the ranked set; the users and the last hour not so for a whole list, see
/// [`RankedFrom::Whole`]).
///
/// `ranked` is the ranked set, read as `from` says ([`RankedFrom`]).
///
/// `members`: with aliases, what the parts fold (the session's table of the ranked issues'
/// participants: [`top`]), else the participants' subqueries of [`fold`].
pub(crate) fn top_sql(
    db: &str,
    c: &Clock,
    q: &TopQuery<'_>,
    ranked: &Sql,
    from: RankedFrom,
    aliases: Aliases,
    members: Option<&FoldSets>,
) -> (Sql, u32) {
    let hour_start = hour_start(c.now);
    let project = |s: &mut Sql| {
        if let Some(p) = q.project {
            s.push(" AND project = ").str(p);
        }
    };
    let mut s = Sql::default();
    s.push(
        "SELECT project, issue_id, title, culprit, level, first_seen, last_seen, events, previous, users, minutes, minute_counts, merged FROM (\
         SELECT project, issue_id, title, culprit, level, first_seen, last_seen, events, previous, users, merged FROM (",
    );
    // The ranked issues with their users (ranking by users: already in the ranked set).
    if q.by == TopBy::Users {
        s.push("SELECT project, issue_id, events, previous, users_all AS users FROM (").sql(ranked).push(")");
    } else {
        s.push("SELECT project, issue_id, events, previous, users_n AS users FROM (")
            .sql(ranked)
            .push(") ANY LEFT JOIN (")
            .sql(&users_sql(
                db,
                c,
                q.since_secs,
                (from != RankedFrom::Whole).then_some(ranked),
                q.project,
                aliases,
                members,
            ))
            .push(") USING (project, issue_id)");
    }
    let fold_part = |inner: &dyn Fn(Option<&Sql>) -> Sql, only: Option<&Sql>, plain, cols, aggs| match members {
        Some(sets) if aliases == Aliases::Some => fold_in(sets, inner, plain, cols, aggs),
        _ => fold(db, aliases, q.project, inner, only, plain, cols, aggs),
    };
    // Metadata of the ranked issues; of the canonical ones folded over their aliases.
    let meta = |members: Option<&Sql>| {
        let mut m = Sql::default();
        m.push(&meta_head(db));
        if let Some(f) = members {
            m.push("1").sql(f);
        } else {
            m.push("(project, issue_id) IN (SELECT project, issue_id FROM ");
            if q.by == TopBy::Users && from == RankedFrom::Computed {
                // The ranked set holds every issue's users: cheaper to take the window's issues.
                m.push(&format!("{db}.issue_counts_1d WHERE day >= toDate(toDateTime(")).u32(c.from).push("))");
                project(&mut m);
            } else {
                m.push("(").sql(ranked).push(")");
            }
            m.push(")");
        }
        project(&mut m);
        m.push(" GROUP BY project, issue_id");
        m
    };
    // (The window's issues when ranking by users in one query: every participant's metadata.)
    let meta_only = (q.by != TopBy::Users || from != RankedFrom::Computed).then_some(ranked);
    s.push(") ANY LEFT JOIN (")
        .sql(&fold_part(&meta, meta_only, META_PLAIN, META_COLUMNS, META_FOLD))
        .push(") USING (project, issue_id)");
    // The last hour per minute; a canonical issue's and its aliases' minutes together.
    let hour = |members: Option<&Sql>| {
        let mut h = minutes_head(db, hour_start);
        project(&mut h);
        if let Some(f) = members {
            h.sql(f);
        } else if from == RankedFrom::Table {
            // The ranked issues' minutes only (the set is a table read, not a computation).
            h.push(" AND (project, issue_id) IN (SELECT project, issue_id FROM (").sql(ranked).push("))");
        }
        h.push(" GROUP BY project, issue_id, minute) GROUP BY project, issue_id");
        h
    };
    s.push(") ANY LEFT JOIN (")
        .sql(&fold_part(&hour, (from != RankedFrom::Computed).then_some(ranked), HOUR_COLUMNS, HOUR_COLUMNS, HOUR_FOLD))
        .push(") USING (project, issue_id) ORDER BY ")
        .push(order_by(q.by, "users"));
    (s, hour_start)
}

/// Where [`top_sql`] reads the ranked set from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RankedFrom {
    /// [`ranked_sql`] itself, computed again in each `IN`: so metadata when ranking by users is
    /// read for the issues with events in the window, and the last hour for every issue of the
    /// last hour, instead.
    Computed,
    /// A temporary table [`top`] filled with [`ranked_sql`]: computed once and read in every
    /// `IN`, which also keeps the last hour to the ranked issues.
    Table,
    /// Such a table holding every issue with events in the window (fewer rows than the limit,
    /// no alias): the users and the last hour are read without the `IN` (they cover the same
    /// issues, and matching every row against a set of tens of thousands of issues took a
    /// third of the query). The metadata keep it: the `issues` table holds every issue ever
    /// seen, not only the window's.
    Whole,
}

/// The first minute of the last hour that [`top_sql`] reads per minute at the server's clock
/// `now` (the last hour's 60 minutes end with `now`'s).
pub(crate) fn hour_start(now: u32) -> u32 {
    (now / 60 * 60).saturating_sub(59 * 60)
}

/// The metadata columns of an issue list's rows, per issue.
pub(crate) const META_COLUMNS: &str = "title, culprit, level, first_seen, last_seen";

/// The metadata of an issue that takes part in no alias: its own, merging nothing.
pub(crate) const META_PLAIN: &str = "title, culprit, level, first_seen, last_seen, emptyArrayString() AS merged";

/// The metadata of a canonical issue: the title, culprit and level of its own row (the
/// primary's: mapped frames) when it has one, first seen the earliest and last seen the
/// latest of all, and its aliases, sorted (`canon` is not empty on an alias's row).
pub(crate) const META_FOLD: &[(&str, &str)] = &[
    ("argMin(title, canon != '')", "title"),
    ("argMin(culprit, canon != '')", "culprit"),
    ("argMin(level, canon != '')", "level"),
    ("min(first_seen)", "first_seen"),
    ("max(last_seen)", "last_seen"),
    ("arraySort(groupArrayIf(issue_id, canon != ''))", "merged"),
];

/// The last-hour columns of an issue list's rows, per issue.
pub(crate) const HOUR_COLUMNS: &str = "minutes, minute_counts";

/// The last hour of a canonical issue: its and its aliases' minutes, in the same order in both
/// arrays (a minute may appear more than once: [`TopRow::into_issue`] adds them up).
pub(crate) const HOUR_FOLD: &[(&str, &str)] =
    &[("groupArrayArray(minutes)", "minutes"), ("groupArrayArray(minute_counts)", "minute_counts")];

/// The temporary table that holds [`top`]'s ranked set within its session.
const RANKED_TABLE: &str = "tracefold_top_ranked";

/// [`top`]'s temporary table of the alias map ([`alias_map`]) of the projects asked, made
/// once per answer when they have alias rows.
const MAP_TABLE: &str = "tracefold_fold_map";

/// [`top`]'s temporary table of the participants: every alias and canonical issue of
/// [`MAP_TABLE`].
const PARTICIPANTS_TABLE: &str = "tracefold_fold_participants";

/// [`top`]'s temporary table of the participants that fold into a ranked issue: `project,
/// issue_id, canon` (the ranked canonical issue's own row with `canon` empty, each of its
/// aliases with `canon` it).
const MEMBERS_TABLE: &str = "tracefold_fold_members";

/// Where the folds of one [`top`] answer read the alias map: subqueries of `issue_aliases` in
/// every place (the single query, as a `readonly = 1` user can run it), or the session's
/// temporary tables, made once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapAt {
    Subquery,
    Session,
}

impl MapAt {
    /// `SELECT project, issue_id, canon`: the alias map.
    fn map(self, db: &str, project: Option<&str>) -> Sql {
        match self {
            MapAt::Subquery => alias_map(db, project),
            MapAt::Session => {
                let mut s = Sql::default();
                s.push(&format!("SELECT project, issue_id, canon FROM {MAP_TABLE}"));
                s
            }
        }
    }

    /// The sets of a fold over every participant: the session's tables, else `None` (the
    /// subqueries of [`fold`]).
    fn participants(self) -> Option<FoldSets> {
        (self == MapAt::Session).then(|| table_sets(PARTICIPANTS_TABLE, MAP_TABLE))
    }
}

/// The [`FoldSets`] of the temporary tables `apart` (`project, issue_id`) and `map`
/// (`project, issue_id, canon`).
fn table_sets(apart: &str, map: &str) -> FoldSets {
    let mut a = Sql::default();
    a.push(&format!("SELECT project, issue_id FROM {apart}"));
    let mut f = Sql::default();
    f.push(&format!(" AND (project, issue_id) IN (SELECT project, issue_id FROM {apart})"));
    let mut m = Sql::default();
    m.push(&format!("SELECT project, issue_id, canon FROM {map}"));
    FoldSets { apart: a, filter: f, map: m }
}

/// Whether ClickHouse refused a request because its session was still held by the previous
/// one (code 373, "Session is locked by a concurrent client": the server lets go of a session
/// only after it sent the answer, so the next request of the same session can arrive first).
fn session_locked(e: &clickhouse::error::Error) -> bool {
    let m = e.to_string();
    m.contains("Code: 373") || m.contains("SESSION_IS_LOCKED") || m.contains("Session is locked")
}

/// Runs `request` in [`top`]'s session: a refusal because the session is still locked
/// ([`session_locked`]) is tried again (7 times, 5 ms to 320 ms apart, 635 ms in all), so a
/// race with the server's release does not send `top` to its slower single query; any other
/// error, or the last refusal, is `None` (the single query answers).
async fn in_session<T, F, Fut>(mut request: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = clickhouse::error::Result<T>>,
{
    for attempt in 0..8u32 {
        match request().await {
            Ok(v) => return Some(v),
            Err(e) if attempt < 7 && session_locked(&e) => {
                tokio::time::sleep(std::time::Duration::from_millis(5 << attempt)).await;
            }
            Err(_) => return None,
        }
    }
    None
}

/// A session id no other call uses: this process, a counter, the clock.
fn session_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("tracefold_top_{}_{n}_{}", std::process::id(), tracefold_model::time::now_ms())
}

/// The `limit` issues with the most events since `now - since_secs` (optionally of one
/// project), with metadata, users and the last hour per minute: [`top`] ranked by events.
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
    top(client, database, &TopQuery { since_secs, limit, project, by: TopBy::Events }).await
}

/// The top issues of a window as `q` ranks them (`tracefold top`), with metadata, users and
/// the last hour per minute. Any `limit`, any number of issues: after reading the server's
/// clock, the ranked set is computed once into a temporary table of an HTTP session of this
/// call alone, and one query joins it with the rest (when the server refuses the temporary
/// table, under a `readonly = 1` user, or that query fails, e.g. behind a proxy that does not
/// keep sessions on one server, one query that computes the set where it is used gives the
/// same answer). Events are counted exactly (whole days from the daily rollup, the rest
/// of the first and last day per minute); users exactly for windows of up to a day, from daily
/// sketches beyond ([`TopIssue::users_approximate`]).
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn top(client: &Client, database: &str, q: &TopQuery<'_>) -> Result<Vec<TopIssue>> {
    let db = db(database)?;
    let c = clock(client, db, q.since_secs, q.project).await?;
    let aliases = if c.aliases == 0 { Aliases::None } else { Aliases::Some };
    // The ranked set is computed once, into a temporary table of an HTTP session of this call
    // alone, and read from there by the rows, the users, the metadata and the last hour (the
    // users and the last hour of a whole list need not: `RankedFrom::Whole`; ClickHouse 18.16 has
    // no common table expressions); with aliases, the alias map and the participants too.
    // When that fails (a `readonly = 1` user may not create temporary tables), one query that
    // computes the set in each place gives the same answer.
    let session = client.clone().with_setting("session_id", session_id());
    let mut made = Vec::new();
    let materialized = top_in_session(&session, db, &c, q, aliases, &mut made).await;
    // The session's end drops the tables too (after the server's `session_timeout`).
    for table in made.into_iter().rev() {
        let drop = format!("DROP TEMPORARY TABLE IF EXISTS {table}");
        let _ = in_session(|| session.query(&drop).execute()).await;
    }
    let (rows, hour_start) = match materialized {
        Some(done) => done,
        None => {
            let ranked = ranked_sql(db, &c, q, aliases, MapAt::Subquery, Limit::Rows);
            let (sql, hour_start) = top_sql(db, &c, q, &ranked, RankedFrom::Computed, aliases, None);
            (sql.query(client).fetch_all::<TopRow>().await.map_err(step("top issues"))?, hour_start)
        }
    };
    let approximate = q.since_secs > EXACT_USERS_SECS;
    Ok(rows
        .into_iter()
        .map(|r| TopIssue { users_approximate: approximate, ..r.into_issue(hour_start, q.by == TopBy::Growth) })
        .collect())
}

/// [`top`]'s rows from the temporary tables of `session` (their names pushed to `made` as they
/// are made), or `None` when the server refuses them or loses them between requests (a proxy
/// that sends one session's requests to different servers): the single query then answers.
///
/// With aliases: the alias map and the participants first, then the ranked set (folded in
/// one pass through them), then the participants that fold into a ranked issue. When none
/// does (a ranking's 20 issues are rarely among the few that alias rows name) the rest is the
/// plain query; else only those are read apart and folded.
async fn top_in_session(
    session: &Client,
    db: &str,
    c: &Clock,
    q: &TopQuery<'_>,
    aliases: Aliases,
    made: &mut Vec<&'static str>,
) -> Option<(Vec<TopRow>, u32)> {
    let create = |table: &'static str, select: &Sql| {
        let mut s = Sql::default();
        s.push(&format!("CREATE TEMPORARY TABLE {table} ENGINE = Memory AS ")).sql(select);
        s
    };
    if aliases == Aliases::Some {
        in_session(|| create(MAP_TABLE, &alias_map(db, q.project)).query(session).execute()).await?;
        made.push(MAP_TABLE);
        let mut p = Sql::default();
        p.push(&format!(
            "SELECT DISTINCT project, issue_id FROM (SELECT project, arrayJoin([issue_id, canon]) AS issue_id FROM {MAP_TABLE})"
        ));
        in_session(|| create(PARTICIPANTS_TABLE, &p).query(session).execute()).await?;
        made.push(PARTICIPANTS_TABLE);
    }
    let ranked = ranked_sql(db, c, q, aliases, MapAt::Session, Limit::Rows);
    in_session(|| create(RANKED_TABLE, &ranked).query(session).execute()).await?;
    made.push(RANKED_TABLE);
    let mut from = Sql::default();
    from.push("SELECT project, issue_id, events, previous");
    if q.by == TopBy::Users {
        from.push(", users_all");
    }
    from.push(&format!(" FROM {RANKED_TABLE}"));
    let members = if aliases == Aliases::Some {
        // The ranked issues' aliases, the ranked issues that have some (unless one is itself
        // an alias: only one level is followed, as in the ranking), and the ranked issues that
        // are aliases (in a chain A -> B -> C, a ranked B holds A's rows, its own are C's: read
        // apart, as the single query's fold reads them, not as B's plain rows).
        let mut m = Sql::default();
        m.push(&format!(
            "SELECT DISTINCT project, issue_id, canon FROM (\
             SELECT project, issue_id, canon FROM {MAP_TABLE} WHERE (project, canon) IN (SELECT project, issue_id FROM {RANKED_TABLE}) \
             UNION ALL SELECT project, issue_id, canon FROM {MAP_TABLE} WHERE (project, issue_id) IN (SELECT project, issue_id FROM {RANKED_TABLE}) \
             UNION ALL SELECT DISTINCT project, c AS issue_id, toString('') AS canon FROM (SELECT project, canon AS c FROM {MAP_TABLE} \
             WHERE (project, canon) IN (SELECT project, issue_id FROM {RANKED_TABLE}) \
             AND (project, canon) NOT IN (SELECT project, issue_id FROM {MAP_TABLE})))"
        ));
        in_session(|| create(MEMBERS_TABLE, &m).query(session).execute()).await?;
        made.push(MEMBERS_TABLE);
        (table_rows(session, MEMBERS_TABLE).await? > 0).then(|| table_sets(MEMBERS_TABLE, MEMBERS_TABLE))
    } else {
        None
    };
    // No ranked issue takes part in an alias: the plain query for the rest.
    let rest = if members.is_some() { Aliases::Some } else { Aliases::None };
    // A whole list (fewer rows than asked for) of every issue with events in the window
    // (`new` keeps only some of them): the users and the last hour need no filter.
    let whole = rest == Aliases::None && q.by != TopBy::New && table_rows(session, RANKED_TABLE).await? < q.limit;
    let read = if whole { RankedFrom::Whole } else { RankedFrom::Table };
    let (sql, hour_start) = top_sql(db, c, q, &from, read, rest, members.as_ref());
    let rows = in_session(|| sql.query(session).fetch_all::<TopRow>()).await?;
    Some((rows, hour_start))
}

/// The rows of `table`, a temporary table of `session`; `None` as [`in_session`].
async fn table_rows(session: &Client, table: &str) -> Option<u64> {
    #[derive(clickhouse::Row, Deserialize)]
    struct N {
        n: u64,
    }
    let count = format!("SELECT count() AS n FROM {table}");
    Some(in_session(|| session.query(&count).fetch_one::<N>()).await?.n)
}

/// Most releases (and environments) [`issue_detail`] lists for one issue's window, those with
/// most events; beyond it the list is cut there and says so ([`IssueDetail::by_release_rest`]):
/// releases and environments are event data, so an issue with many (one client can send any)
/// is still shown.
pub const MAX_BREAKDOWN_ROWS: u64 = 10_000;

/// Most projects [`find_issue`] returns for one id (ids are fingerprints: the same id in more
/// projects than this is not expected; [`resolve_issue`] asks for a project when there are
/// several).
pub const MAX_PROJECTS_PER_ID: u64 = 1_000;

/// An issue as the `issues` table knows it (all time), one per project that has the id:
/// the canonical issue, its counts folded over the issues merged into it (late source maps,
/// docs/sourcemaps.md "Late maps").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssueSummary {
    /// Project slug.
    pub project: String,
    /// Issue id: the canonical issue's (the one asked for, unless that one was merged).
    pub issue_id: String,
    /// Title (the canonical issue's own, when it has events).
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
    /// First seen, Unix seconds: the earliest of the issue and its merged issues.
    pub first_seen: u32,
    /// Last seen, Unix seconds: the latest.
    pub last_seen: u32,
    /// Events, all time, the merged issues' included.
    pub count: u64,
    /// The issues merged into this one, by id.
    pub merged: Vec<MergedIssue>,
    /// The id asked for, when it is one of `merged` (it names this issue).
    pub asked_alias: Option<String>,
}

/// An issue merged into another (an alias: its events were grouped before a source map
/// arrived), with its own counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergedIssue {
    /// The merged issue's id.
    pub issue_id: String,
    /// Its events, all time.
    pub count: u64,
    /// Its first event, Unix seconds.
    pub first_seen: u32,
    /// Its last event, Unix seconds.
    pub last_seen: u32,
}

/// One issue's row of [`find_issue`]'s query, with its canonical id (`canon`, empty when the
/// issue is no alias).
#[derive(clickhouse::Row, Deserialize)]
struct FoundRow {
    project: String,
    issue_id: String,
    canon: String,
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

impl FoundRow {
    fn canonical(&self) -> &str {
        if self.canon.is_empty() {
            &self.issue_id
        } else {
            &self.canon
        }
    }
}

/// Most ids a query names as values (an issue and its aliases in [`find_issue`] and
/// [`issue_detail`]); beyond it they are a subquery of `issue_aliases`.
const MAX_LISTED_IDS: usize = 1_000;

/// Most issues [`find_issue`] reads for one id: the id's canonical issues and their aliases in
/// every project (beyond it, [`Error::TooManyRows`]).
pub const MAX_FOUND_ROWS: u64 = 100_000;

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

/// Every project's issue `issue_id` (the same id can exist in several projects), as its
/// canonical issue: an alias names the issue it was merged into, and an issue's counts
/// include its aliases' ([`IssueSummary::merged`]).
///
/// # Errors
/// When the database name is not an identifier, ClickHouse does not answer, or the id's
/// issues and aliases are more than [`MAX_FOUND_ROWS`].
pub async fn find_issue(client: &Client, database: &str, issue_id: &str) -> Result<Vec<IssueSummary>> {
    #[derive(clickhouse::Row, Deserialize)]
    struct MapRow {
        project: String,
        issue_id: String,
        canon: String,
    }
    let db = db(database)?;
    // The alias rows that touch the id: it, its canonical issues, and their aliases (in one
    // bounded query of the small table; none for most ids, and then the id's own rows are
    // read, each its own canonical issue, as before aliases existed).
    let map = alias_map(db, None);
    let mut related = Sql::default();
    related.push("SELECT project, issue_id, canon FROM (").sql(&map).push(") WHERE issue_id = ").str(issue_id);
    related.push(" OR canon = ").str(issue_id);
    for col in ["issue_id", "canon"] {
        related.push(&format!(" OR {col} IN (SELECT canon FROM (")).sql(&map).push(") WHERE issue_id = ").str(issue_id);
        related.push(")");
    }
    let mut bounded = Sql::default();
    bounded.sql(&related).push(" LIMIT ").u64(MAX_FOUND_ROWS + 1);
    let found = bounded.query(client).fetch_all::<MapRow>().await.map_err(step("issue aliases"))?;
    if found.len() as u64 > MAX_FOUND_ROWS {
        return Err(Error::TooManyRows { what: "issues and aliases of one id", limit: MAX_FOUND_ROWS });
    }
    let mut ids: Vec<&str> = vec![issue_id];
    for r in &found {
        ids.push(&r.issue_id);
        ids.push(&r.canon);
    }
    ids.sort_unstable();
    ids.dedup();
    let mut s = Sql::default();
    s.push(
        "SELECT project, issue_id, '' AS canon, title, culprit, exc_type, level, platform, grouping_version, first_seen, last_seen, count FROM (\
         SELECT project, issue_id, argMinMerge(title_state) AS title, argMinMerge(culprit_state) AS culprit, \
         argMinMerge(exc_type_state) AS exc_type, argMaxMerge(level_state) AS level, argMinMerge(platform_state) AS platform, \
         argMaxMerge(grouping_version_state) AS grouping_version, toUInt32(minMerge(first_seen_state)) AS first_seen, \
         toUInt32(maxMerge(last_seen_state)) AS last_seen, sumMerge(count_state) AS count ",
    );
    s.push(&format!("FROM {db}.issues WHERE "));
    if let [only] = ids.as_slice() {
        s.push("issue_id = ").str(only);
    } else if ids.len() > MAX_LISTED_IDS {
        // Too many to list in the query's text: the same ids as a subquery.
        s.push("issue_id = ").str(issue_id);
        s.push(" OR issue_id IN (SELECT arrayJoin([issue_id, canon]) FROM (").sql(&related).push("))");
    } else {
        // The ids as values, not a subquery: the issues table is read as for one id.
        s.push("issue_id IN (");
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                s.push(", ");
            }
            s.str(id);
        }
        s.push(")");
    }
    s.push(" GROUP BY project, issue_id) ORDER BY project, issue_id LIMIT ").u64(MAX_FOUND_ROWS + 1);
    let mut rows = s.query(client).fetch_all::<FoundRow>().await.map_err(step("issue"))?;
    if rows.len() as u64 > MAX_FOUND_ROWS {
        return Err(Error::TooManyRows { what: "issues and aliases of one id", limit: MAX_FOUND_ROWS });
    }
    // Each row's canonical issue, from the alias rows read above.
    let canon: std::collections::HashMap<(&str, &str), &str> =
        found.iter().map(|m| ((m.project.as_str(), m.issue_id.as_str()), m.canon.as_str())).collect();
    for r in &mut rows {
        if let Some(c) = canon.get(&(r.project.as_str(), r.issue_id.as_str())) {
            r.canon = (*c).to_owned();
        }
    }
    Ok(fold_found(&rows, issue_id))
}

/// The canonical issues of `issue_id` among `rows` (sorted by project): one per project where
/// the id has a row, folded over the rows whose canonical id is the same.
fn fold_found(rows: &[FoundRow], issue_id: &str) -> Vec<IssueSummary> {
    let mut out: Vec<IssueSummary> = Vec::new();
    for asked in rows.iter().filter(|r| r.issue_id == issue_id) {
        let canon = asked.canonical();
        if out.iter().any(|o| o.project == asked.project && o.issue_id == canon) {
            continue;
        }
        let members: Vec<&FoundRow> =
            rows.iter().filter(|r| r.project == asked.project && r.canonical() == canon).collect();
        // The canonical issue's own row names it; without one (its events expired) an alias's.
        let Some(head) = members.iter().find(|r| r.issue_id == canon).or(members.first()) else {
            continue;
        };
        out.push(IssueSummary {
            project: head.project.clone(),
            issue_id: canon.to_owned(),
            title: head.title.clone(),
            culprit: head.culprit.clone(),
            exc_type: head.exc_type.clone(),
            level: head.level.clone(),
            platform: head.platform.clone(),
            grouping_version: head.grouping_version.clone(),
            first_seen: members.iter().map(|r| r.first_seen).min().unwrap_or(head.first_seen),
            last_seen: members.iter().map(|r| r.last_seen).max().unwrap_or(head.last_seen),
            count: members.iter().map(|r| r.count).fold(0u64, u64::saturating_add),
            merged: members
                .iter()
                .filter(|r| r.issue_id != canon)
                .map(|r| MergedIssue {
                    issue_id: r.issue_id.clone(),
                    count: r.count,
                    first_seen: r.first_seen,
                    last_seen: r.last_seen,
                })
                .collect(),
            asked_alias: (canon != issue_id).then(|| issue_id.to_owned()),
        });
    }
    out.truncate(MAX_PROJECTS_PER_ID as usize);
    out
}

/// ` AND project = ? AND issue_id = ?`, and with `merged` (the issue has aliases: late source
/// maps) ` OR issue_id IN (its aliases)`: the rows of a canonical issue and of the issues
/// merged into it.
pub(crate) fn members(db: &str, project: &str, issue_id: &str, merged: bool) -> Sql {
    let mut s = Sql::default();
    s.push(" AND project = ").str(project);
    if !merged {
        s.push(" AND issue_id = ").str(issue_id);
        return s;
    }
    s.push(" AND (issue_id = ").str(issue_id);
    s.push(" OR issue_id IN (SELECT issue_id FROM (").sql(&alias_map(db, Some(project))).push(") WHERE canon = ");
    s.str(issue_id).push("))");
    s
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
    /// Events in the window by release, most first: at most [`MAX_BREAKDOWN_ROWS`].
    pub by_release: Vec<(String, u64)>,
    /// Events in the window by environment, most first: at most [`MAX_BREAKDOWN_ROWS`].
    pub by_environment: Vec<(String, u64)>,
    /// When more releases than [`MAX_BREAKDOWN_ROWS`] have events in the window: the events of
    /// those left out of `by_release`. Left out of the JSON when none are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_release_rest: Option<u64>,
    /// The same for `by_environment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_environment_rest: Option<u64>,
    /// Events in the window by browser: the top [`TOP_VALUES`].
    #[serde(default)]
    pub by_browser: Top,
    /// Events in the window by operating system: the top [`TOP_VALUES`].
    #[serde(default)]
    pub by_os: Top,
    /// Events in the window by URL (without query string and fragment): the top [`TOP_VALUES`].
    #[serde(default)]
    pub by_url: Top,
    /// The latest sample event (JSON), if any.
    pub sample: Option<String>,
    /// The issues merged into this one (late source maps), sorted by id: their events are
    /// counted above. Left out of the JSON when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<MergedAlias>,
    /// The id asked for, when it is one of `merged`: it was merged into this issue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_alias: Option<String>,
}

/// An issue merged into the one shown, as [`IssueDetail`] lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MergedAlias {
    /// The merged issue's id.
    pub issue_id: String,
    /// Its events, all time.
    pub count: u64,
    /// Its first event, RFC 3339.
    pub first_seen: String,
    /// Its last event, RFC 3339.
    pub last_seen: String,
}

/// Most values [`IssueDetail::by_browser`], `by_os` and `by_url` list.
pub const TOP_VALUES: u64 = 10;

/// The most frequent values of one breakdown key (browser, OS, URL) over a window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Top {
    /// At most [`TOP_VALUES`] values with their events, most first (then by value). The value
    /// `(other)` stands for events whose aggregate had ten other values already
    /// ([`tracefold_model::breakdown::OTHER`]).
    pub values: Vec<(String, u64)>,
    /// Events in the window with a value of this key (listed or not): what shares are of.
    pub total: u64,
}

impl Top {
    /// `n` events as a share of [`Top::total`], a percentage with one decimal (`42.9%`),
    /// without floats; `0.0%` of nothing.
    pub fn share(&self, n: u64) -> String {
        if self.total == 0 {
            return "0.0%".into();
        }
        let tenths = (u128::from(n) * 1000 + u128::from(self.total) / 2) / u128::from(self.total);
        format!("{}.{}%", tenths / 10, tenths % 10)
    }
}

/// The top values of each breakdown key (browser, OS, URL) of an issue's events from `start`
/// (Unix seconds, an hour) on, its aliases' included (`issue_id` is canonical): one query for
/// the values (`LIMIT BY`), one for the totals.
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn breakdowns(
    client: &Client,
    database: &str,
    project: &str,
    issue_id: &str,
    start: u32,
) -> Result<[Top; 3]> {
    let db = db(database)?;
    let merged = aliases(client, db, Some(project)).await? == Aliases::Some;
    breakdowns_of(client, db, start, &members(db, project, issue_id, merged)).await
}

/// [`breakdowns`] of a checked database name, over the rows `of_issue` keeps ([`members`]).
async fn breakdowns_of(client: &Client, db: &str, start: u32, of_issue: &Sql) -> Result<[Top; 3]> {
    use tracefold_model::breakdown::Key;
    #[derive(clickhouse::Row, Deserialize)]
    struct R {
        key: String,
        value: String,
        count: u64,
    }
    // The issue's and its aliases' rows.
    let mut values = Sql::default();
    values.push(&format!(
        "SELECT key, value, sum(count) AS count FROM {db}.issue_breakdown_1h WHERE hour >= toDateTime("
    ));
    values.u32(start).push(")").sql(of_issue);
    values.push(" GROUP BY key, value ORDER BY key, count DESC, value LIMIT ").u64(TOP_VALUES).push(" BY key");
    let values = values.query(client).fetch_all::<R>().await.map_err(step("breakdowns"))?;
    let mut totals = Sql::default();
    totals.push(&format!("SELECT key, sum(count) AS count FROM {db}.issue_breakdown_1h WHERE hour >= toDateTime("));
    totals.u32(start).push(")").sql(of_issue);
    totals.push(" GROUP BY key ORDER BY key LIMIT 16");
    let totals = totals.query(client).fetch_all::<KeyCount>().await.map_err(step("breakdown totals"))?;
    let mut out: [Top; 3] = Default::default();
    for (i, k) in Key::ALL.into_iter().enumerate() {
        out[i].values = values.iter().filter(|r| r.key == k.as_str()).map(|r| (r.value.clone(), r.count)).collect();
        out[i].total = totals.iter().find(|t| t.key == k.as_str()).map_or(0, |t| t.count);
    }
    Ok(out)
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
/// hours per hour (at most back to the Unix epoch's hour), by release, environment, browser, OS and URL, the latest sample, each over
/// the issue and the issues merged into it (users merged: one in both counts once); the
/// status is the issue's own.
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
    // Every query reads the rows of the issue and of the issues merged into it, named as
    // values ([`find_issue`] read them). (Without aliases, the issue's own rows alone: the
    // queries as before aliases existed.)
    let of_issue = if issue.merged.len() > MAX_LISTED_IDS {
        members(db, p, issue_id, true)
    } else {
        let mut s = Sql::default();
        s.push(" AND project = ").str(p);
        if issue.merged.is_empty() {
            s.push(" AND issue_id = ").str(issue_id);
        } else {
            s.push(" AND issue_id IN (").str(issue_id);
            for m in &issue.merged {
                s.push(", ").str(&m.issue_id);
            }
            s.push(")");
        }
        s
    };
    #[derive(clickhouse::Row, Deserialize)]
    struct N {
        n: u64,
    }
    let mut users = Sql::default();
    users.push(&format!("SELECT {} AS n FROM {db}.aggregates WHERE 1", users_estimate_sql())).sql(&of_issue);
    let users = users.query(client).fetch_one::<N>().await.map_err(step("users"))?.n;
    let now = now(client).await?;
    // The window reaches back no further than the hour of the Unix epoch (no event is older):
    // a longer one (`tracefold issue --hours 4294967295`) would overflow the start's arithmetic
    // and ask for a slot per hour it names.
    let window_hours = window_hours.min(now / 3600 + 1);
    let start = (now / 3600) * 3600 - (window_hours.saturating_sub(1)) * 3600;
    let mut hours = Sql::default();
    hours
        .push(&format!(
            "SELECT toUInt32(hour) AS hour, sum(count) AS count FROM {db}.issue_counts_1h WHERE hour >= toDateTime("
        ))
        .u32(start)
        .push(")")
        .sql(&of_issue)
        .push(" GROUP BY hour ORDER BY hour LIMIT ")
        .u64(u64::from(window_hours) + 1);
    let hours = hours.query(client).fetch_all::<HourCount>().await.map_err(step("hourly"))?;
    let mut hourly = vec![0u64; window_hours as usize];
    for h in hours {
        if let Some(slot) = hourly.get_mut(((h.hour.saturating_sub(start)) / 3600) as usize) {
            *slot += h.count;
        }
    }
    // `col` is one of two constants below, never input.
    let breakdown = |col: &str| {
        let mut s = Sql::default();
        s.push(&format!(
            "SELECT {col} AS key, sum(count) AS count FROM {db}.issue_counts_1h WHERE hour >= toDateTime("
        ))
        .u32(start)
        .push(")")
        .sql(&of_issue)
        .push(&format!(" GROUP BY {col} ORDER BY count DESC, key LIMIT "))
        .u64(MAX_BREAKDOWN_ROWS + 1);
        s
    };
    let mut by_release =
        breakdown("release").query(client).fetch_all::<KeyCount>().await.map_err(step("by release"))?;
    let mut by_environment =
        breakdown("environment").query(client).fetch_all::<KeyCount>().await.map_err(step("by environment"))?;
    // More values than listed: the list is cut, and the events of the rest counted (the
    // window's events, as the lists sum them, less the listed ones).
    // The window's events are read once, when a list is cut (both lists sum the same rows).
    let mut rests = [None, None];
    let mut total: Option<u64> = None;
    for (rows, rest) in [&mut by_release, &mut by_environment].into_iter().zip(&mut rests) {
        if rows.len() as u64 > MAX_BREAKDOWN_ROWS {
            rows.truncate(MAX_BREAKDOWN_ROWS as usize);
            let total = match total {
                Some(n) => n,
                None => {
                    let mut q = Sql::default();
                    q.push(&format!("SELECT sum(count) AS n FROM {db}.issue_counts_1h WHERE hour >= toDateTime("))
                        .u32(start)
                        .push(")")
                        .sql(&of_issue);
                    let n = q.query(client).fetch_one::<N>().await.map_err(step("events in the window"))?.n;
                    *total.insert(n)
                }
            };
            *rest = Some(total.saturating_sub(rows.iter().map(|r| r.count).sum()));
        }
    }
    let [by_release_rest, by_environment_rest] = rests;
    let [by_browser, by_os, by_url] = breakdowns_of(client, db, start, &of_issue).await?;
    #[derive(clickhouse::Row, Deserialize)]
    struct Sample {
        sample: String,
    }
    // No sample row is no sample, not an error. The latest of the issue and its aliases (after
    // a merge the issue's own: events that arrive with the map are grouped there).
    let mut sample = Sql::default();
    sample.push(&format!("SELECT argMax(sample, seen) AS sample FROM {db}.issue_samples WHERE 1")).sql(&of_issue);
    let sample = sample.query(client).fetch_one::<Sample>().await.ok().map(|s| s.sample).filter(|s| !s.is_empty());
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
        by_release_rest,
        by_environment_rest,
        by_browser,
        by_os,
        by_url,
        sample,
        merged: issue
            .merged
            .into_iter()
            .map(|m| MergedAlias {
                issue_id: m.issue_id,
                count: m.count,
                first_seen: rfc3339(m.first_seen),
                last_seen: rfc3339(m.last_seen),
            })
            .collect(),
        asked_alias: issue.asked_alias,
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
        .query(&format!("SELECT current_status FROM {db}.issue_status_v WHERE project = ? AND issue_id = ? LIMIT 1"))
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
    /// With the real ClickHouse: a request of a session that another request still holds is
    /// refused as locked ([`super::session_locked`] knows the refusal), and
    /// [`super::in_session`] tries it again until the session is free instead of giving up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_of_a_locked_session_is_tried_again_until_the_session_is_free() {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct One {
            n: u8,
        }
        let cfg = crate::testdb::scratch("session");
        let session = crate::client::client(&cfg).with_setting("session_id", super::session_id());
        let hold = |secs: &'static str| {
            let s = session.clone();
            tokio::spawn(async move { s.query(&format!("SELECT sleep({secs}) AS z")).fetch_all::<u8>().await })
        };
        let one = || session.query("SELECT toUInt8(1) AS n").fetch_one::<One>();
        let held = hold("1");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let refused = one().await;
        held.await.unwrap().expect("ClickHouse is needed for this test");
        let e = refused.err().expect("a second request while the session is held is refused");
        assert!(super::session_locked(&e), "{e}");
        let held = hold("0.3");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let retried = super::in_session(one).await;
        held.await.unwrap().unwrap();
        assert_eq!(retried.map(|r| r.n), Some(1));
    }

    /// With the real ClickHouse: a window longer than the time since the Unix epoch (`tracefold
    /// issue --hours 4294967295`) reaches back to the epoch's hour, where its arithmetic
    /// overflowed (a panic, or in a release build a start in the future and a vector of four
    /// billion slots).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_issue_window_longer_than_the_epoch_reaches_back_to_it() {
        let cfg = crate::testdb::scratch("longwindow");
        crate::migrate::migrate(&cfg, |_, _| {}).await.expect("ClickHouse is needed for this test");
        let client = crate::client::database_client(&cfg).unwrap();
        let summary = super::IssueSummary { project: "p".into(), issue_id: "i".into(), ..Default::default() };
        let now = crate::client::now(&client).await.unwrap();
        let mut details = Vec::new();
        for hours in [u32::MAX, 1_000_000, 24] {
            details.push(super::issue_detail(&client, &cfg.database, summary.clone(), hours).await);
        }
        let _ = crate::client::drop_database(&client, &cfg.database).await;
        let since_epoch = (now / 3600 + 1) as usize;
        let lens: Vec<usize> = details.into_iter().map(|d| d.unwrap().hourly.len()).collect();
        assert!(lens[0] == since_epoch || lens[0] == since_epoch + 1, "{lens:?} {since_epoch}");
        assert_eq!(lens[1], lens[0]);
        assert_eq!(lens[2], 24);
    }

    #[test]
    fn tiers_cover_the_window_once_and_read_today_from_the_daily_rollup_past_a_day() {
        const DAY: u32 = 86_400;
        let today = 100 * DAY;
        // 7 days back from 18:00: the rest of the first day per minute, whole days and today
        // from the daily rollup, open ended (a later event counts as the minute rollup's would).
        let from = today + 18 * 3600 - 7 * DAY;
        assert_eq!(
            tiers(from, today - 6 * DAY, today, None),
            [(Tier::Day, today - 6 * DAY, None), (Tier::Minute, from, Some(today - 6 * DAY))]
        );
        // From a day start: no minute part.
        assert_eq!(tiers(today - 2 * DAY, today - 2 * DAY, today, None), [(Tier::Day, today - 2 * DAY, None)]);
        // 24 hours back from 18:00 (no whole day before today) and 1 hour: per minute only.
        let from = today - 6 * 3600;
        assert_eq!(tiers(from, today, today, None), [(Tier::Minute, from, None)]);
        let from = today + 17 * 3600;
        assert_eq!(tiers(from, today + DAY, today, None), [(Tier::Minute, from, None)]);
        // A closed window (the one before, for growth): its last day's part per minute.
        let (start, end) = (today - 13 * DAY - 6 * 3600, today - 6 * DAY - 6 * 3600);
        assert_eq!(
            tiers(start, today - 13 * DAY, today - 7 * DAY, Some(end)),
            [
                (Tier::Day, today - 13 * DAY, Some(today - 7 * DAY)),
                (Tier::Minute, start, Some(today - 13 * DAY)),
                (Tier::Minute, today - 7 * DAY, Some(end)),
            ]
        );
    }

    #[test]
    fn shares_round_to_a_tenth_of_a_percent() {
        let share = |n: u64, total: u64| Top { values: Vec::new(), total }.share(n);
        assert_eq!(share(3, 7), "42.9%");
        assert_eq!(share(1, 3), "33.3%");
        assert_eq!(share(2, 3), "66.7%");
        assert_eq!(share(7, 7), "100.0%");
        assert_eq!(share(0, 0), "0.0%");
        assert_eq!(share(u64::MAX, u64::MAX), "100.0%");
        assert_eq!(share(1, u64::MAX), "0.0%");
    }

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
