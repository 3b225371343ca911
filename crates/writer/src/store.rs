//! The ClickHouse side of the writer: the row it inserts and the replay watermarks it reads.
//!
//! Idempotence: every row carries `(src_partition, src_first_offset, rec_index)` of the
//! grouper batch it came from and the aggregates-topic partition it was read from. Per
//! (aggregates partition, source topic, source partition), records arrive in batch order and a
//! replay repeats a prefix of what came before, so the largest `(src_first_offset, rec_index)`
//! stored is a watermark: anything at or below it is already in ClickHouse.

use clickhouse::Client;
use std::collections::HashMap;
use tracefold_model::AggregateRecord;

/// A row of `<db>.aggregates`, borrowed from the record it is made of.
#[derive(clickhouse::Row, serde::Serialize)]
pub struct AggregateRow<'a> {
    project: &'a str,
    issue_id: &'a str,
    minute: u32,
    release: &'a str,
    environment: &'a str,
    count: u64,
    users: &'a [u64],
    users_saturated: u8,
    first_seen: u32,
    last_seen: u32,
    title: &'a str,
    culprit: &'a str,
    exc_type: &'a str,
    level: &'a str,
    platform: &'a str,
    grouping_version: &'a str,
    sample: &'a str,
    src_epoch: &'a str,
    src_topic: &'a str,
    src_partition: i32,
    src_first_offset: i64,
    src_last_offset: i64,
    rec_index: u32,
    rec_count: u32,
    agg_topic: &'a str,
    agg_partition: i32,
    agg_offset: i64,
}

fn secs(ms: i64) -> u32 {
    u32::try_from(ms.div_euclid(1000)).unwrap_or(0)
}

impl<'a> AggregateRow<'a> {
    /// The row for `r`, read from `agg_topic`/`agg_partition` at `agg_offset`.
    pub fn new(r: &'a AggregateRecord, agg_topic: &'a str, agg_partition: i32, agg_offset: i64) -> Self {
        Self {
            project: &r.project,
            issue_id: &r.issue_id,
            minute: u32::try_from(r.minute).unwrap_or(0),
            release: &r.release,
            environment: &r.environment,
            count: r.count,
            users: &r.users.hashes,
            users_saturated: u8::from(r.users.saturated),
            first_seen: secs(r.first_seen_ms),
            last_seen: secs(r.last_seen_ms),
            title: &r.title,
            culprit: &r.culprit,
            exc_type: &r.exc_type,
            level: &r.level,
            platform: &r.platform,
            grouping_version: &r.grouping_version,
            sample: &r.sample,
            src_epoch: &r.batch.epoch,
            src_topic: &r.batch.topic,
            src_partition: r.batch.partition,
            src_first_offset: r.batch.first_offset,
            src_last_offset: r.batch.last_offset,
            rec_index: r.batch.index,
            rec_count: r.batch.count,
            agg_topic,
            agg_partition,
            agg_offset,
        }
    }
}

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

/// Reads the watermarks of aggregates partition `agg_partition` from ClickHouse.
///
/// # Errors
/// When ClickHouse does not answer.
pub async fn load_watermarks(
    client: &Client,
    db: &str,
    table: &str,
    agg_topic: &str,
    agg_partition: i32,
) -> clickhouse::error::Result<Watermarks> {
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
        .await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tracefold_model::{BatchRef, UserSet};

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
