//! Synthetic analytics data generated inside ClickHouse (`INSERT ... SELECT FROM numbers()`)
//! for `tracefold bench-queries`: aggregate rows straight into the base table of a scratch
//! database (its materialized views fill the rollups as they would from the writer), outcome
//! rows and a few status changes. Nothing here runs against a real database: the benchmark
//! makes its own and drops it.

use crate::client::db;
use crate::error::{step, Result};
use clickhouse::Client;

/// The shape of the generated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Aggregate rows in all.
    pub rows: u64,
    /// Mean events per aggregate row (each row's count is 1 ..= 2 * mean - 1, uniformly).
    pub events_per_row: u64,
    /// Distinct issues with events in every hour (every day a tenth of them are replaced by
    /// new issues, so windows hold new issues and growth).
    pub issues_per_hour: u64,
    /// Hours the rows are spread over, ending at the server's current minute.
    pub hours: u64,
    /// Projects the issues are spread over (`p0`, `p1`, ...).
    pub projects: u64,
}

impl Shape {
    /// Rows in each hour (the last hour may hold fewer).
    pub fn rows_per_hour(&self) -> u64 {
        self.rows.div_ceil(self.hours.max(1)).max(1)
    }
}

/// Inserts aggregate rows `offset .. offset + count` of `shape` into `database.aggregates`.
/// Row `n` falls in hour `n / rows_per_hour` (oldest first) at a pseudo-random minute; its
/// issue is `n % issues_per_hour` shifted by a tenth of the issues per day; two user hashes
/// (out of about 540 per issue); releases `r0`, `r1`, ... change every 3 days; 1 in 10 rows
/// is `staging`, the rest `production`; 1 in 100 has a sample; each row's events have one of 5
/// browsers, 4 operating systems and 20 URL routes (its breakdown).
///
/// # Errors
/// When the database name is not an identifier or ClickHouse refuses.
pub async fn insert_aggregates(client: &Client, database: &str, shape: &Shape, offset: u64, count: u64) -> Result<()> {
    let db = db(database)?;
    let sql = format!(
        "INSERT INTO {db}.aggregates (project, issue_id, minute, release, environment, count, users, users_saturated, \
         first_seen, last_seen, title, culprit, exc_type, level, platform, grouping_version, sample, src_epoch, src_topic, \
         src_partition, src_first_offset, src_last_offset, rec_index, rec_count, agg_topic, agg_partition, agg_offset, \
         breakdown.key, breakdown.value, breakdown.count) \
         SELECT concat('p', toString(idx % ?)), lower(hex(MD5(toString(idx)))), at, concat('r', toString(intDiv(h, 72))), \
         if(n % 10 = 0, 'staging', 'production'), 1 + cityHash64(n, 2) % (2 * ? - 1) AS c, \
         [cityHash64(idx, n % 503), cityHash64(idx, n % 37)], 0, at, at + 59, concat('BenchError ', toString(idx)), \
         'bench.py in handler', 'BenchError', 'error', 'python', 'v1', if(n % 100 = 0, '{{\"bench\":true}}', ''), \
         'bench', 'bench.events', 0, toInt64(n), toInt64(n), 0, 1, 'bench.aggregates', 0, toInt64(n), \
         ['browser', 'os', 'url'], \
         [['Chrome 120', 'Firefox 121', 'Safari 17', 'Edge 120', 'Chrome 119'][n % 5 + 1], \
          ['Windows', 'macOS', 'iOS', 'Android'][n % 4 + 1], \
          concat('https://app.example.com/page', toString(n % 20), '/<int>')], \
         [c, c, c] \
         FROM (SELECT n, h, (n % rph) % ipr + intDiv(h, 24) * intDiv(ipr, 10) AS idx, \
         toDateTime(start + h * 3600 + (cityHash64(n, 1) % 60) * 60) AS at \
         FROM (SELECT number + ? AS n, ? AS rph, ? AS ipr, intDiv(n, rph) AS h, \
         toUInt32(toStartOfMinute(now())) - ? * 3600 + 60 AS start FROM numbers(?)))"
    );
    client
        .query(&sql)
        .bind(shape.projects.max(1))
        .bind(shape.events_per_row.max(1))
        .bind(offset)
        .bind(shape.rows_per_hour())
        .bind(shape.issues_per_hour.max(1))
        .bind(shape.hours.max(1))
        .bind(count)
        .execute()
        .await
        .map_err(step("insert synthetic aggregates"))
}

/// Inserts outcome rows for every minute of `shape`'s hours: per project and minute an
/// `accepted`, a `rate_limited` and an `invalid` row.
///
/// # Errors
/// When the database name is not an identifier or ClickHouse refuses.
pub async fn insert_outcomes(client: &Client, database: &str, shape: &Shape) -> Result<()> {
    let db = db(database)?;
    let sql = format!(
        "INSERT INTO {db}.outcomes (project, minute, outcome, reason, source, quantity) \
         SELECT concat('p', toString(k % p)), toDateTime(toUInt32(toStartOfMinute(now())) - intDiv(n, p * 3) * 60), \
         ['accepted', 'rate_limited', 'invalid'][1 + intDiv(k, p) % 3], ['', 'project_rate', 'malformed'][1 + intDiv(k, p) % 3], \
         'bench', 1 + cityHash64(n) % 1000 \
         FROM (SELECT number AS n, n % (p * 3) AS k, ? AS p FROM numbers(?))"
    );
    let p = shape.projects.max(1);
    client
        .query(&sql)
        .bind(p)
        .bind(shape.hours.max(1) * 60 * p * 3)
        .execute()
        .await
        .map_err(step("insert synthetic outcomes"))
}

/// Marks every `every`-th issue resolved a day ago (in release `r0`): those with later events
/// are regressions.
///
/// # Errors
/// When the database name is not an identifier or ClickHouse refuses.
pub async fn resolve_some(client: &Client, database: &str, every: u64) -> Result<()> {
    let db = db(database)?;
    let sql = format!(
        "INSERT INTO {db}.issue_status_log (project, issue_id, status, changed_at, changed_ms, actor, release, note) \
         SELECT project, issue_id, 'resolved', now() - 86400, (toUInt64(toUInt32(now())) - 86400) * 1000, 'bench', 'r0', '' \
         FROM {db}.issues WHERE cityHash64(issue_id) % ? = 0 GROUP BY project, issue_id"
    );
    client.query(&sql).bind(every.max(1)).execute().await.map_err(step("insert synthetic statuses"))
}

/// Events and aggregate rows in `database.aggregates`.
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn totals(client: &Client, database: &str) -> Result<(u64, u64)> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct T {
        events: u64,
        rows: u64,
    }
    let db = db(database)?;
    let t = client
        .query(&format!("SELECT sum(count) AS events, count() AS rows FROM {db}.aggregates"))
        .fetch_one::<T>()
        .await
        .map_err(step("count synthetic rows"))?;
    Ok((t.events, t.rows))
}

/// Merges the parts of every table of `database` but the base table (`OPTIMIZE ... FINAL`),
/// as background merges would over time: queries then read merged rollups.
///
/// # Errors
/// When the database name is not an identifier or ClickHouse refuses.
pub async fn optimize_rollups(client: &Client, database: &str) -> Result<()> {
    let db = db(database)?;
    for t in [
        "issues",
        "issue_first_release",
        "issue_counts_1m",
        "issue_counts_1h",
        "issue_counts_1d",
        "issue_users_1h",
        "issue_users_1d_v2",
        "release_users_1d",
        "issue_samples",
        "issue_breakdown_1h",
        "outcomes",
    ] {
        client
            .query(&format!("OPTIMIZE TABLE {db}.{t} FINAL"))
            .execute()
            .await
            .map_err(step(format!("optimize {t}")))?;
    }
    Ok(())
}

/// Runs a cookbook query (text from the docs, run as written) and returns the rows it
/// answered with.
///
/// # Errors
/// When ClickHouse refuses it.
pub async fn run_counting_rows(client: &Client, sql: &str) -> Result<u64> {
    let mut cursor = client.query(sql).fetch_bytes("TabSeparated").map_err(step("cookbook query"))?;
    let mut rows = 0u64;
    while let Some(chunk) = cursor.next().await.map_err(step("cookbook query"))? {
        rows += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
    }
    Ok(rows)
}
