//! Rows written to ClickHouse.

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
