//! The `aggregates` table: the writer's inserts, its replay watermarks, and totals.
//!
//! Idempotence: every row carries `(src_partition, src_first_offset, rec_index)` of the
//! grouper batch it came from and the aggregates-topic partition it was read from. Per
//! (aggregates partition, source topic, source partition), records arrive in batch order and a
//! replay repeats a prefix of what came before, so the largest `(src_first_offset, rec_index)`
//! stored is a watermark: anything at or below it is already in ClickHouse.

//!
//! [`admit`] lives here, beside [`load_watermarks`], because the two must agree exactly: the
//! watermark key is the query's `GROUP BY` and the mark its `max((src_first_offset,
//! rec_index))`.

use crate::client::{db, ident};
use crate::error::{step, Result};
use crate::rows::{AggregateRow, SampleRow};
use clickhouse::Client;
use std::collections::HashMap;
use std::time::Duration;
use tracefold_model::AggregateRecord;

/// Position of a record within its source partition's batches.
pub type Mark = (i64, u32);

/// Watermarks of one aggregates partition: (source epoch, topic, partition) -> largest stored.
pub type Watermarks = HashMap<(String, String, i32), Mark>;

#[derive(clickhouse::Row, serde::Deserialize)]
struct WatermarkRow {
    src_epoch: String,
    src_topic: String,
    src_partition: i32,
    first: i64,
    index: u32,
}

/// Reads the watermarks of aggregates partition `agg_partition` from `<database>.<table>`
/// (`aggregates`, or `aggregates_all` on a cluster).
///
/// # Errors
/// When a name is not an identifier or ClickHouse does not answer.
pub async fn load_watermarks(
    client: &Client,
    database: &str,
    table: &str,
    agg_topic: &str,
    agg_partition: i32,
) -> Result<Watermarks> {
    let (db, table) = (db(database)?, ident("writer.table", table)?);
    let rows = client
        .query(&format!(
            "SELECT src_epoch, src_topic, src_partition, m.1 AS first, m.2 AS index FROM ( \
               SELECT src_epoch, src_topic, src_partition, max((src_first_offset, rec_index)) AS m \
               FROM {db}.{table} WHERE agg_topic = ? AND agg_partition = ? \
               GROUP BY src_epoch, src_topic, src_partition)"
        ))
        .bind(agg_topic)
        .bind(agg_partition)
        .fetch_all::<WatermarkRow>()
        .await
        .map_err(step("read watermarks"))?;
    Ok(rows.into_iter().map(|r| ((r.src_epoch, r.src_topic, r.src_partition), (r.first, r.index))).collect())
}

/// Whether `r` is new relative to `wm`; if so, advances `wm` past it.
pub fn admit(wm: &mut Watermarks, r: &AggregateRecord) -> bool {
    let mark = (r.batch.first_offset, r.batch.index);
    // One small allocation per aggregate row (not per event): rows are few.
    match wm.entry((r.batch.epoch.clone(), r.batch.topic.clone(), r.batch.partition)) {
        std::collections::hash_map::Entry::Occupied(mut o) => {
            if *o.get() >= mark {
                false
            } else {
                o.insert(mark);
                true
            }
        }
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(mark);
            true
        }
    }
}

/// Inserts `rows` into `table` of the client's database ([`crate::client::database_client`])
/// in one INSERT, which ClickHouse applies atomically; `token` (22+) lets the server drop a
/// retried insert whose first try landed. The rows' samples go into the samples table
/// ([`samples_table`]) in an INSERT before it.
///
/// # Errors
/// When the name is not an identifier, ClickHouse refuses, or `timeout` passes (the outcome
/// is then unknown: read the watermarks again).
pub async fn insert(
    client: &Client,
    table: &str,
    rows: &[AggregateRow<'_>],
    timeout: Duration,
    token: Option<&str>,
) -> Result<()> {
    let table = ident("writer.table", table)?;
    // Samples first, in their own INSERT: a crash between the two inserts leaves samples
    // without their aggregate rows, and the replay that follows inserts them again, which
    // `issue_samples` (latest per issue and hour) collapses. No sample is lost that way.
    let samples: Vec<SampleRow<'_>> = rows.iter().filter_map(AggregateRow::sample_row).collect();
    if !samples.is_empty() {
        let samples_table = samples_table(table);
        let written = async {
            let mut ins =
                client.insert::<SampleRow<'_>>(samples_table).await?.with_timeouts(Some(timeout), Some(timeout));
            for row in &samples {
                ins.write(row).await?;
            }
            ins.end().await
        };
        written.await.map_err(step("insert sample rows"))?;
    }
    let ch = step("insert aggregate rows");
    let written = async {
        let mut ins = client.insert::<AggregateRow<'_>>(table).await?.with_timeouts(Some(timeout), Some(timeout));
        if let Some(t) = token {
            ins = ins.with_setting("insert_deduplication_token", t);
        }
        for row in rows {
            ins.write(row).await?;
        }
        ins.end().await
    };
    written.await.map_err(ch)
}

/// The samples table beside aggregates table `table`: `issue_samples`, or its `Distributed`
/// table `issue_samples_all` when the writer inserts into `aggregates_all` (the cluster flavour).
pub fn samples_table(table: &str) -> &'static str {
    if table.ends_with("_all") {
        "issue_samples_all"
    } else {
        "issue_samples"
    }
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct N {
    n: u64,
}

/// Events stored (the sum of `count` over all aggregates, all time).
///
/// # Errors
/// When the name is not an identifier or ClickHouse does not answer.
pub async fn total_events(client: &Client, database: &str) -> Result<u64> {
    let db = db(database)?;
    let q = format!("SELECT sum(count) AS n FROM {db}.aggregates");
    Ok(client.query(&q).fetch_one::<N>().await.map_err(step("total events"))?.n)
}

/// Aggregate rows stored.
///
/// # Errors
/// When the name is not an identifier or ClickHouse does not answer.
pub async fn row_count(client: &Client, database: &str) -> Result<u64> {
    let db = db(database)?;
    let q = format!("SELECT count() AS n FROM {db}.aggregates");
    Ok(client.query(&q).fetch_one::<N>().await.map_err(step("aggregate rows"))?.n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracefold_model::{BatchRef, UserSet};

    #[test]
    fn samples_go_to_the_table_beside_the_aggregates_table() {
        assert_eq!(samples_table("aggregates"), "issue_samples");
        assert_eq!(samples_table("aggregates_all"), "issue_samples_all");
    }

    fn rec(p: i32, first: i64, index: u32) -> AggregateRecord {
        AggregateRecord {
            v: 1,
            batch: BatchRef {
                epoch: "x".into(),
                topic: "e".into(),
                partition: p,
                first_offset: first,
                last_offset: first + 9,
                index,
                count: 3,
            },
            project: "p".into(),
            issue_id: "i".into(),
            minute: 0,
            release: String::new(),
            environment: String::new(),
            count: 1,
            users: UserSet::default(),
            first_seen_ms: 0,
            last_seen_ms: 0,
            title: String::new(),
            culprit: String::new(),
            exc_type: String::new(),
            level: String::new(),
            platform: String::new(),
            grouping_version: String::new(),
            sample: String::new(),
            breakdown: Default::default(),
            merged_from: Vec::new(),
        }
    }

    #[test]
    fn replayed_prefixes_are_rejected_and_new_records_admitted() {
        let mut wm = Watermarks::new();
        // Batch 0 of partition 1 arrives partly (index 0, 1), then is re-emitted whole, then batch 10.
        let seq = [(1, 0, 0), (1, 0, 1), (1, 0, 0), (1, 0, 1), (1, 0, 2), (2, 0, 0), (1, 10, 0), (1, 0, 2)];
        let admitted: Vec<bool> = seq.iter().map(|&(p, f, i)| admit(&mut wm, &rec(p, f, i))).collect();
        assert_eq!(admitted, [true, true, false, false, true, true, true, false]);
    }
}
