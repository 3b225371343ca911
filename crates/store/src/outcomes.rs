//! The `outcomes` table: what became of events, per project, minute, outcome and reason.
//!
//! Idempotence: a row is identified by (project, minute, outcome, reason, source), the
//! table's sorting key (`ReplacingMergeTree`): a record inserted twice collapses into one when
//! parts merge, and every query here reads with `FINAL`, so it counts each record once also
//! before that merge.

use crate::client::{db, ident, now};
use crate::error::{step, Result};
use clickhouse::Client;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tracefold_model::OutcomeRecord;

/// One row of the `outcomes` table.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct OutcomeRow {
    /// Project slug (empty: unknown).
    pub project: String,
    /// Start of the minute, Unix seconds.
    pub minute: u32,
    /// [`tracefold_model::Outcome::code`].
    pub outcome: String,
    /// Reason code (empty for `accepted`).
    pub reason: String,
    /// The record's source identity.
    pub source: String,
    /// Events.
    pub quantity: u64,
}

impl OutcomeRow {
    /// The row of a record; minutes outside `DateTime`'s range are clamped to it.
    pub fn from_record(r: &OutcomeRecord) -> Self {
        Self {
            project: r.project.clone(),
            minute: u32::try_from(r.minute.max(0)).unwrap_or(u32::MAX),
            outcome: r.outcome.code().to_owned(),
            reason: r.reason.clone(),
            source: r.source.clone(),
            quantity: r.quantity,
        }
    }
}

/// Inserts `rows` into `table` (`outcomes`) of the client's database in one INSERT.
///
/// # Errors
/// When the name is not an identifier, ClickHouse refuses, or `timeout` passes (the outcome
/// is then unknown; inserting the same rows again is harmless).
pub async fn insert(client: &Client, table: &str, rows: &[OutcomeRow], timeout: Duration) -> Result<()> {
    let table = ident("outcomes table", table)?;
    let written = async {
        let mut ins = client.insert::<OutcomeRow>(table).await?.with_timeouts(Some(timeout), Some(timeout));
        for row in rows {
            ins.write(row).await?;
        }
        ins.end().await
    };
    written.await.map_err(step("insert outcome rows"))
}

/// Totals of one (project, outcome, reason) over a time range, with its per-minute series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutcomeTotal {
    /// Project slug (empty: unknown).
    pub project: String,
    /// Outcome code.
    pub outcome: String,
    /// Reason code.
    pub reason: String,
    /// Events over the whole range.
    pub quantity: u64,
    /// Events per minute, oldest first, one entry per minute of the range (zeros included).
    pub per_minute: Vec<u64>,
}

/// What [`outcomes`] returns: the range and its totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutcomeReport {
    /// First minute of the range, Unix seconds.
    pub from_minute: u32,
    /// Minutes in the range (the length of every `per_minute`).
    pub minutes: u32,
    /// Per (project, outcome, reason), ordered by project, then outcome, then reason.
    pub totals: Vec<OutcomeTotal>,
}

#[derive(clickhouse::Row, Deserialize)]
struct MinuteRow {
    project: String,
    outcome: String,
    reason: String,
    minute: u32,
    quantity: u64,
}

/// Most rows (one per project, outcome, reason and minute) [`outcomes`] reads: a million
/// rows are, e.g., 700 (project, outcome, reason) series over a day. Beyond it the query
/// fails with [`crate::Error::TooManyRows`] instead of showing part of the answer.
pub const MAX_OUTCOME_ROWS: u64 = 1_000_000;

/// Most entries the per-minute series of one [`outcomes`] answer hold together (series times
/// minutes of the range: 40 MB of counts): e.g. 115 (project, outcome, reason) series over 30
/// days, or 3,472 over a day. Beyond it the query fails with [`crate::Error::TooManyRows`]
/// before the series are made: each series has an entry for every minute of the range, so
/// without this bound a long `--since` (one series since the epoch is 29 million minutes) or
/// many projects in the outcomes took memory that no row count bounded.
pub const MAX_OUTCOME_CELLS: u64 = 5_000_000;

/// Outcomes of the last `since_secs` (by the server's clock; optionally of one project): per
/// (project, outcome, reason) the total and the per-minute series. Each record counts once
/// (`FINAL`).
///
/// # Errors
/// When the database name is not an identifier, ClickHouse does not answer, or the answer
/// has more than [`MAX_OUTCOME_ROWS`] rows or its series more than [`MAX_OUTCOME_CELLS`]
/// entries.
pub async fn outcomes(
    client: &Client,
    database: &str,
    since_secs: u64,
    project: Option<&str>,
) -> Result<OutcomeReport> {
    let db = db(database)?;
    let now = now(client).await?;
    let from = now.saturating_sub(u32::try_from(since_secs).unwrap_or(u32::MAX));
    let from_minute = from / 60 * 60;
    let minutes = (now / 60 * 60 - from_minute) / 60 + 1;
    let proj_filter = if project.is_some() { "AND project = ?" } else { "" };
    let q = format!(
        "SELECT project, outcome, reason, toUInt32(minute) AS minute, sum(quantity) AS quantity \
         FROM {db}.outcomes FINAL WHERE minute >= toDateTime(?) {proj_filter} \
         GROUP BY project, outcome, reason, minute ORDER BY project, outcome, reason, minute LIMIT ?"
    );
    let mut q = client.query(&q).bind(from_minute);
    if let Some(p) = project {
        q = q.bind(p);
    }
    let rows = q.bind(MAX_OUTCOME_ROWS + 1).fetch_all::<MinuteRow>().await.map_err(step("outcomes per minute"))?;
    if rows.len() as u64 > MAX_OUTCOME_ROWS {
        return Err(crate::Error::TooManyRows { what: "outcomes per minute", limit: MAX_OUTCOME_ROWS });
    }
    // The series are counted before any is made: each holds an entry per minute of the range.
    let series = rows
        .iter()
        .map(|r| (r.project.as_str(), r.outcome.as_str(), r.reason.as_str()))
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    if series.saturating_mul(u64::from(minutes)) > MAX_OUTCOME_CELLS {
        return Err(crate::Error::TooManyRows {
            what: "outcome series, a row per (project, outcome, reason) and minute of the window",
            limit: MAX_OUTCOME_CELLS,
        });
    }
    let mut by_key: BTreeMap<(String, String, String), OutcomeTotal> = BTreeMap::new();
    for r in rows {
        let t =
            by_key.entry((r.project.clone(), r.outcome.clone(), r.reason.clone())).or_insert_with(|| OutcomeTotal {
                project: r.project,
                outcome: r.outcome,
                reason: r.reason,
                quantity: 0,
                per_minute: vec![0; minutes as usize],
            });
        t.quantity += r.quantity;
        // A minute past the server's now (a producer clock ahead) counts in the last one.
        let i = ((r.minute.saturating_sub(from_minute)) / 60).min(minutes - 1) as usize;
        t.per_minute[i] += r.quantity;
    }
    let mut totals: Vec<OutcomeTotal> = by_key.into_values().collect();
    // Display order: outcomes in their documented order, not alphabetical.
    let rank = |o: &str| tracefold_model::Outcome::from_code(o).map_or(usize::MAX, |o| o as usize);
    totals.sort_by(|a, b| (&a.project, rank(&a.outcome), &a.reason).cmp(&(&b.project, rank(&b.outcome), &b.reason)));
    Ok(OutcomeReport { from_minute, minutes, totals })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the real ClickHouse: each series holds an entry per minute of the window, so the
    /// series times the minutes are bounded, not only the rows read. A window back to the epoch
    /// (`tracefold outcomes --since 100000d`: 29 million minutes) made two vectors of that
    /// length from two rows, and `--format json` printed 330 MB per series; 200 projects over
    /// 30 days, 8.6 million entries from 200 rows. Both are refused with the bound named; a
    /// project of them, or a day, is answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn series_times_minutes_are_bounded_not_only_rows() {
        let cfg = crate::testdb::scratch("outcome_cells");
        crate::migrate::migrate(&cfg, |_, _| {}).await.expect("ClickHouse is needed for this test");
        let client = crate::client::database_client(&cfg).unwrap();
        let now = crate::client::now(&client).await.unwrap();
        let rows: Vec<OutcomeRow> = (0..200)
            .map(|i| OutcomeRow {
                project: format!("p{i}"),
                minute: now / 60 * 60 - 120,
                outcome: "accepted".into(),
                reason: String::new(),
                source: "s".into(),
                quantity: 1,
            })
            .collect();
        insert(&client, "outcomes", &rows, Duration::from_secs(30)).await.unwrap();
        let epoch = outcomes(&client, &cfg.database, u64::MAX, Some("p1")).await;
        let month = outcomes(&client, &cfg.database, 30 * 86_400, None).await;
        let one = outcomes(&client, &cfg.database, 30 * 86_400, Some("p1")).await;
        let day = outcomes(&client, &cfg.database, 86_400, None).await;
        let _ = crate::client::drop_database(&client, &cfg.database).await;
        for refused in [epoch.map(|r| r.minutes), month.map(|r| r.minutes)] {
            match refused {
                Err(e @ crate::Error::TooManyRows { limit: MAX_OUTCOME_CELLS, .. }) => {
                    assert!(e.to_string().contains("narrow the window or name a project"), "{e}");
                }
                other => panic!("not refused: {other:?}"),
            }
        }
        let one = one.unwrap();
        assert_eq!((one.totals.len(), one.totals[0].quantity), (1, 1));
        assert_eq!(one.totals[0].per_minute.len(), one.minutes as usize);
        let day = day.unwrap();
        assert_eq!(day.totals.len(), 200);
        assert!(day.totals.iter().all(|t| t.quantity == 1 && t.per_minute.len() == day.minutes as usize));
    }
}
