//! Rankings computed ahead of time (`issue_ranking_rows` and their runs, `issue_ranking_runs`,
//! migration 0015): each project's issues of the long windows ([`WINDOWS`]) by
//! affected users, up to `top_k` of them, written every few minutes by the writer's rankings
//! loop ([`refresh`]) and read by `tracefold top --by users|events` while fresh
//! ([`top_cached`]), as PostHog shows cached insight results with their age.
//!
//! A ranking is computed by the query of the live `top --by users` itself ([`crate::issues`]'s
//! `ranked_sql` cut per project instead of overall, in `top_sql`), against the server's clock
//! as `top` reads it: its rows are what a live `top --project P --limit K --by users` answered
//! at `computed_at` (numbers, details and the last hour), for every project P. They stream from
//! that query into one INSERT with one `computed_at` (the writer holds no list); once they are
//! all in, one row of
//! `issue_ranking_runs` says the run is whole (with its row count and the projects whose list
//! was cut at `top_k`), so a reader never takes a part of one. A project whose list was not
//! cut has every issue of the window in it: its ranking by events, of any length, is read from
//! it too.

use crate::client::{db, ident};
use crate::error::{step, Result};
use crate::issues::{
    clock, hour_start, order_by, ranked_sql, top_sql, Aliases, Limit, MapAt, RankedFrom, TopBy, TopIssue, TopQuery,
    TopRow, EXACT_USERS_SECS, META_COLUMNS,
};
use crate::sql::Sql;
use clickhouse::Client;
use serde::{Deserialize, Serialize};

/// The windows ranked ahead of time: 7 and 30 days (`top --since 7d`, `--since 30d`).
pub const WINDOWS: [u64; 2] = [7 * 86_400, 30 * 86_400];

/// Issues kept per project and window by default (`rankings.top_k`): enough for a whole list
/// (every issue of the window) in all but the largest projects.
pub const DEFAULT_TOP_K: u32 = 100_000;

/// The table of the rankings' rows.
const TABLE: &str = "issue_ranking_rows";

/// The table of the whole computations (one row each, written after its rows).
const RUNS: &str = "issue_ranking_runs";

/// Migration 0014's table of rankings, no longer written or read: its partitions are dropped
/// with the old ones of [`TABLE`].
const LEGACY: &str = "issue_rankings";

/// The partitions' length (seconds of `computed_at`: `toStartOfFiveMinute`).
const PARTITION_SECS: u32 = 300;

/// What [`refresh`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshSpec {
    /// Issues kept per project and window (`rankings.top_k`): `top --by users --limit` up to
    /// this is answered from the ranking, and of a project with fewer issues in the window
    /// every ranking by events or users of any length.
    pub top_k: u32,
    /// How often the rankings are computed (`rankings.refresh_seconds`), stored with them: a
    /// ranking is fresh for twice this.
    pub refresh_seconds: u32,
    /// A window whose latest complete ranking is younger than this many seconds is not
    /// computed again (another writer did it a moment ago); 0 computes always.
    pub skip_younger_than: u32,
}

/// What [`refresh`] did for one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// Computed and written: `rows` rows (every project's list), ranked at `computed_at`.
    Written {
        /// The window, seconds.
        window_seconds: u64,
        /// The server's clock the window was aligned to (Unix seconds).
        computed_at: u32,
        /// Rows written.
        rows: u64,
        /// Projects whose list was cut at `top_k`.
        cut: usize,
    },
    /// Not computed: the latest complete ranking is `age` seconds old.
    Skipped {
        /// The window, seconds.
        window_seconds: u64,
        /// Its age, seconds.
        age: u32,
    },
}

/// One row of `issue_ranking_rows`.
#[derive(clickhouse::Row, Serialize)]
struct RankingRow<'a> {
    computed_at: u32,
    run: u64,
    window_seconds: u32,
    project: &'a str,
    issue_id: &'a str,
    users: u64,
    events: u64,
    users_approximate: u8,
    title: &'a str,
    culprit: &'a str,
    level: &'a str,
    first_seen: u32,
    last_seen: u32,
    merged: &'a [String],
    minutes: &'a [u32],
    minute_counts: &'a [u64],
}

/// One row of `issue_ranking_runs`: a whole computation.
#[derive(clickhouse::Row, Serialize)]
struct RunRow<'a> {
    computed_at: u32,
    run: u64,
    window_seconds: u32,
    rows: u64,
    cut: &'a [String],
    top_k: u32,
    refresh_seconds: u32,
}

/// The latest whole ranking of a window.
#[derive(clickhouse::Row, Deserialize, Debug, Clone, PartialEq, Eq)]
struct Latest {
    computed_at: u32,
    run: u64,
    rows: u64,
    cut: Vec<String>,
    top_k: u32,
    refresh_seconds: u32,
    now: u32,
}

/// The latest computation of `window` whose rows are all there, with the server's clock.
/// Runs stamped after the server's clock are not taken: a clock that went back stamped them
/// (their age would read 0 s until the clock caught up with them, and the loop would skip
/// every computation until then as "computed a moment ago"); [`drop_old`] drops them.
async fn latest(client: &Client, db: &str, window: u64) -> Result<Option<Latest>> {
    let mut s = Sql::default();
    s.push(&format!(
        "SELECT toUInt32(computed_at) AS computed_at, run, rows, cut, top_k, refresh_seconds, toUInt32(now()) AS now \
         FROM {db}.{RUNS} WHERE computed_at <= now() AND window_seconds = "
    ))
    .u32(u32::try_from(window).unwrap_or(u32::MAX))
    .push(" ORDER BY computed_at DESC, run LIMIT 1");
    Ok(s.query(client).fetch_all::<Latest>().await.map_err(step("latest ranking"))?.into_iter().next())
}

/// A random id of one computation (the process, a counter and the clock, hashed).
fn run_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_i64(tracefold_model::time::now_ms());
    h.finish()
}

/// Computes each window of [`WINDOWS`] whose latest complete ranking is not younger than
/// `spec.skip_younger_than`: every project's top `spec.top_k` issues by users, as the live
/// `top --by users` shows them (its single query, the alias map read by subqueries, as a
/// `readonly` user's `top`: the same answer), streamed into one INSERT per window, then its run
/// row; then drops the partitions older than every window's second newest run ([`drop_old`]).
/// Several writers computing at once each write a computation of their own (a run id apart),
/// and readers take one whole computation: harmless. Memory: one row at a time and a count per
/// project.
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer or refuses.
pub async fn refresh(client: &Client, database: &str, spec: &RefreshSpec) -> Result<Vec<Refreshed>> {
    let db = db(database)?;
    // (A list of 0 would be taken for a whole one of a project without issues.)
    let top_k = spec.top_k.max(1);
    let mut out = Vec::with_capacity(WINDOWS.len());
    let mut wrote = false;
    for window in WINDOWS {
        if spec.skip_younger_than > 0 {
            if let Some(l) = latest(client, db, window).await? {
                let age = l.now.saturating_sub(l.computed_at);
                if age < spec.skip_younger_than {
                    out.push(Refreshed::Skipped { window_seconds: window, age });
                    continue;
                }
            }
        }
        let q = TopQuery { since_secs: window, limit: u64::from(top_k), project: None, by: TopBy::Users };
        let c = clock(client, db, window, None).await?;
        let aliases = if c.aliases == 0 { Aliases::None } else { Aliases::Some };
        // `top --by users`'s own query (as the single query a `readonly` user's `top` runs),
        // the ranked set cut per project.
        let ranked = ranked_sql(db, &c, &q, aliases, MapAt::Subquery, Limit::PerProject);
        let (sql, _) = top_sql(db, &c, &q, &ranked, RankedFrom::Computed, aliases, None);
        let mut cursor = sql.query(client).fetch::<TopRow>().map_err(step("compute ranking"))?;
        let run = run_id();
        let window_seconds = u32::try_from(window).unwrap_or(u32::MAX);
        let approximate = u8::from(window > EXACT_USERS_SECS);
        let mut ins =
            client.clone().with_database(db).insert::<RankingRow<'_>>(TABLE).await.map_err(step("insert ranking"))?;
        // Rows per project (a project whose list reached `top_k` was cut).
        let mut per_project: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
        while let Some(r) = cursor.next().await.map_err(step("compute ranking"))? {
            ins.write(&RankingRow {
                computed_at: c.now,
                run,
                window_seconds,
                project: &r.project,
                issue_id: &r.issue_id,
                users: r.users,
                events: r.events,
                users_approximate: approximate,
                title: &r.title,
                culprit: &r.culprit,
                level: &r.level,
                first_seen: r.first_seen,
                last_seen: r.last_seen,
                merged: &r.merged,
                minutes: &r.minutes,
                minute_counts: &r.minute_counts,
            })
            .await
            .map_err(step("insert ranking"))?;
            *per_project.entry(r.project).or_insert(0) += 1;
        }
        ins.end().await.map_err(step("insert ranking"))?;
        let rows = per_project.values().map(|&n| u64::from(n)).sum();
        let mut cut: Vec<String> = per_project.into_iter().filter(|&(_, n)| n >= top_k).map(|(p, _)| p).collect();
        cut.sort_unstable();
        let mut runs =
            client.clone().with_database(db).insert::<RunRow<'_>>(RUNS).await.map_err(step("insert ranking run"))?;
        runs.write(&RunRow {
            computed_at: c.now,
            run,
            window_seconds,
            rows,
            cut: &cut,
            top_k,
            refresh_seconds: spec.refresh_seconds,
        })
        .await
        .map_err(step("insert ranking run"))?;
        runs.end().await.map_err(step("insert ranking run"))?;
        wrote = true;
        out.push(Refreshed::Written { window_seconds: window, computed_at: c.now, rows, cut: cut.len() });
    }
    if wrote {
        drop_old(client, db).await?;
    }
    Ok(out)
}

#[derive(clickhouse::Row, Deserialize)]
struct TablePartitionRow {
    table: String,
    partition_id: String,
}

#[derive(clickhouse::Row, Deserialize)]
struct KeepRow {
    keep: u32,
    windows: u64,
    now: u32,
}

/// Drops the partitions of `issue_ranking_runs` and `issue_ranking_rows` (five minutes of
/// `computed_at`) older than the one that holds the second newest run of some window (its
/// newest when it has only one), the runs first (a run's rows go after it: a reader never finds a
/// run without its rows). What stays: each window's newest run, which readers take, and the
/// one before it, which a reader may have picked a moment ago; rows of abandoned INSERTs go
/// with their partition. So do all of migration 0014's `issue_rankings` (hours of
/// `computed_at` before this version). Dropping a partition another writer dropped a moment
/// ago does nothing.
///
/// Runs stamped after the server's clock (by a clock that went back) do not count as newer
/// than those computed since (else each new run would be dropped as soon as it is written),
/// and partitions that start more than a partition's length ahead of the clock are dropped:
/// no writer's clock is that far ahead now, and [`latest`] would take their runs as fresh once
/// the clock reached them.
async fn drop_old(client: &Client, db: &str) -> Result<()> {
    let keep = client
        .query(&format!(
            "SELECT toUInt32(min(c)) AS keep, count() AS windows, toUInt32(now()) AS now FROM (\
             SELECT window_seconds, min(computed_at) AS c FROM (\
             SELECT window_seconds, computed_at FROM {db}.{RUNS} WHERE computed_at <= now() \
             ORDER BY window_seconds, computed_at DESC LIMIT 2 BY window_seconds) \
             GROUP BY window_seconds)"
        ))
        .fetch_all::<KeepRow>()
        .await
        .map_err(step("oldest ranking kept"))?;
    let Some(KeepRow { keep, windows: 1.., now }) = keep.into_iter().next() else { return Ok(()) };
    let cut = keep / PARTITION_SECS * PARTITION_SECS;
    let ahead = now.saturating_add(PARTITION_SECS);
    let parts = client
        .query(
            "SELECT DISTINCT table, partition_id FROM system.parts WHERE database = ? AND table IN (?, ?, ?) AND active \
             ORDER BY table != ?, partition_id",
        )
        .bind(db)
        .bind(RUNS)
        .bind(TABLE)
        .bind(LEGACY)
        .bind(RUNS)
        .fetch_all::<TablePartitionRow>()
        .await
        .map_err(step("list ranking partitions"))?;
    for p in parts {
        // A partition's start, in Unix seconds: all digits (checked, as it is formatted in).
        let Ok(start) = p.partition_id.parse::<u32>() else { continue };
        if start >= cut && start <= ahead {
            continue;
        }
        let id = ident("partition", &p.partition_id)?;
        let table = match p.table.as_str() {
            RUNS => RUNS,
            LEGACY => LEGACY,
            _ => TABLE,
        };
        client
            .query(&format!("ALTER TABLE {db}.{table} DROP PARTITION ID '{id}'"))
            .execute()
            .await
            .map_err(step(format!("drop ranking partition {id} of {table}")))?;
    }
    Ok(())
}

/// Whether any row of run `l` of window `window` is there.
async fn run_has_rows(client: &Client, db: &str, window: u64, l: &Latest) -> Result<bool> {
    #[derive(clickhouse::Row, Deserialize)]
    struct N {
        n: u64,
    }
    let mut s = Sql::default();
    s.push(&format!("SELECT count() AS n FROM (SELECT 1 FROM {db}.{TABLE} WHERE window_seconds = "))
        .u32(u32::try_from(window).unwrap_or(u32::MAX))
        .push(" AND computed_at = toDateTime(")
        .u32(l.computed_at)
        .push(") AND run = ")
        .u64(l.run)
        .push(" LIMIT 1)");
    Ok(s.query(client).fetch_one::<N>().await.map_err(step("rows of the ranking"))?.n > 0)
}

/// A ranking [`top_cached`] answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ranked {
    /// When it was computed: the server's clock its window was aligned to (Unix seconds).
    pub computed_at: u32,
    /// The server's clock when it was read (Unix seconds).
    pub now: u32,
    /// How often rankings are computed (`rankings.refresh_seconds` of the writer that did).
    pub refresh_seconds: u32,
    /// Issues it kept per project.
    pub top_k: u32,
}

impl Ranked {
    /// Its age when read, seconds.
    pub fn age(&self) -> u32 {
        self.now.saturating_sub(self.computed_at)
    }

    /// When it was ranked, how long ago and how often rankings are computed: `ranked at
    /// 18:00:12 UTC, 1 min 35 s ago, refreshed every 5 min` (the CLI and the UI say how to count
    /// now after it).
    pub fn describe(&self) -> String {
        let at = tracefold_model::time::format_rfc3339(i64::from(self.computed_at) * 1000);
        // `YYYY-MM-DDTHH:MM:SS.mmmZ`: the time of day (ASCII, so the byte range is a char range).
        let time = at.get(11..19).unwrap_or(&at);
        format!("ranked at {time} UTC, {} ago, refreshed every {}", span(self.age()), span(self.refresh_seconds))
    }
}

/// Seconds as `42 s`, `5 min`, `5 min 30 s`, `2 h`, `2 h 5 min`.
fn span(secs: u32) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m, s) {
        (0, 0, s) => format!("{s} s"),
        (0, m, 0) => format!("{m} min"),
        (0, m, s) => format!("{m} min {s} s"),
        (h, 0, _) => format!("{h} h"),
        (h, m, _) => format!("{h} h {m} min"),
    }
}

/// Why [`top_cached`] did not answer (the live query does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCached {
    /// Not a ranking by users or events over a window of [`WINDOWS`].
    NotRanked,
    /// No complete ranking of the window (none computed yet, the table is missing, or the
    /// rows of the latest run were dropped while it was read).
    Missing,
    /// The latest is older than twice its refresh interval (seconds old).
    Stale(u32),
    /// A list the answer reads was cut at this many issues (`top_k`), and the answer may lie
    /// beyond it: more issues asked by users, or any ranking by events.
    BeyondTopK(u32),
}

/// Whether `q` is a ranking the loop computes ahead (by users or events, over a window of
/// [`WINDOWS`]): the only queries [`top_cached`] may answer.
pub fn is_ranked(q: &TopQuery<'_>) -> bool {
    matches!(q.by, TopBy::Users | TopBy::Events) && WINDOWS.contains(&q.since_secs)
}

/// `top --by users|events` over a window of [`WINDOWS`] from the latest complete ranking, when
/// it is younger than twice its refresh interval and holds the answer: by users, the first
/// `q.limit` issues of the projects' lists merged (of `q.project`'s alone with one) in the live
/// ranking's order (users, then events, project, id), when `q.limit` is at most the issues
/// kept per project or no list it reads was cut (each list holds its project's top `top_k`, so
/// the first `q.limit <= top_k` of all are among them); by events (then project, id), when no
/// list it reads was cut (each then holds every issue of its project with events in the
/// window). Every row is the ranking's, as `top` showed it at `computed_at` (events, users,
/// title, culprit, level, first and last seen, merged aliases, the last hour): one table read.
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn top_cached(
    client: &Client,
    database: &str,
    q: &TopQuery<'_>,
) -> Result<std::result::Result<(Vec<TopIssue>, Ranked), NotCached>> {
    let db = db(database)?;
    if !is_ranked(q) {
        return Ok(Err(NotCached::NotRanked));
    }
    // A database not migrated to 0015 has no table: the live query answers.
    let Ok(Some(l)) = latest(client, db, q.since_secs).await else { return Ok(Err(NotCached::Missing)) };
    let ranked = Ranked { computed_at: l.computed_at, now: l.now, refresh_seconds: l.refresh_seconds, top_k: l.top_k };
    if u64::from(ranked.age()) >= 2 * u64::from(l.refresh_seconds) {
        return Ok(Err(NotCached::Stale(ranked.age())));
    }
    let whole = match q.project {
        Some(p) => !l.cut.iter().any(|c| c == p),
        None => l.cut.is_empty(),
    };
    if !whole && (q.by == TopBy::Events || q.limit > u64::from(l.top_k)) {
        return Ok(Err(NotCached::BeyondTopK(l.top_k)));
    }
    let mut set = Sql::default();
    set.push(&format!(
        "SELECT project, issue_id, {META_COLUMNS}, events, toUInt64(0) AS previous, users, minutes, minute_counts, \
         merged FROM {db}.{TABLE} WHERE window_seconds = "
    ))
    .u32(u32::try_from(q.since_secs).unwrap_or(u32::MAX))
    .push(" AND computed_at = toDateTime(")
    .u32(l.computed_at)
    .push(") AND run = ")
    .u64(l.run);
    if let Some(p) = q.project {
        set.push(" AND project = ").str(p);
    }
    set.push(" ORDER BY ").push(order_by(q.by, "users")).push(" LIMIT ").u64(q.limit);
    let rows = set.query(client).fetch_all::<TopRow>().await.map_err(step("top issues from the ranking"))?;
    // No row of a run that has some: its rows may be gone (a refresh dropped their partition
    // after `latest` picked the run, when two newer runs came meanwhile: two writers computing
    // at once). Not an empty answer, then: the live query answers.
    if rows.is_empty() && l.rows > 0 && q.limit > 0 && !run_has_rows(client, db, q.since_secs, &l).await? {
        return Ok(Err(NotCached::Missing));
    }
    let hour_start = hour_start(l.computed_at);
    let approximate = q.since_secs > EXACT_USERS_SECS;
    let rows: Vec<TopIssue> = rows
        .into_iter()
        .map(|r| TopIssue { users_approximate: approximate, ..r.into_issue(hour_start, false) })
        .collect();
    Ok(Ok((rows, ranked)))
}

#[cfg(test)]
mod tests {
    use super::Ranked;

    #[test]
    fn a_ranking_says_when_it_was_ranked_how_long_ago_and_how_often() {
        let r = Ranked { computed_at: 1_795_888_812, now: 1_795_888_812, refresh_seconds: 300, top_k: 1000 };
        let later =
            |age: u32, refresh_seconds: u32| Ranked { now: r.computed_at + age, refresh_seconds, ..r }.describe();
        assert_eq!(later(95, 300), "ranked at 18:00:12 UTC, 1 min 35 s ago, refreshed every 5 min");
        assert_eq!(later(7_260, 3_600), "ranked at 18:00:12 UTC, 2 h 1 min ago, refreshed every 1 h");
        assert_eq!(later(0, 330), "ranked at 18:00:12 UTC, 0 s ago, refreshed every 5 min 30 s");
        assert_eq!(later(42, 60), "ranked at 18:00:12 UTC, 42 s ago, refreshed every 1 min");
        // A clock read before the ranking's (another server's): no age, not a wrapped one.
        assert_eq!(
            Ranked { now: r.computed_at - 5, ..r }.describe(),
            "ranked at 18:00:12 UTC, 0 s ago, refreshed every 5 min"
        );
    }
}
