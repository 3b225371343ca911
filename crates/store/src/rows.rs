//! Rows written to ClickHouse.

use tracefold_model::breakdown::Key;
use tracefold_model::AggregateRecord;

/// A row of `<db>.aggregates`, borrowed from the record it is made of.
///
/// The row's `sample` column stays empty: a record's sample goes to `issue_samples` alone
/// ([`SampleRow`], inserted by [`crate::aggregates::insert`] before the aggregate rows), so
/// the base table, which keeps every partial aggregate, does not keep a copy of every sample.
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
    /// The record's breakdown (`breakdown Nested(key, value, count)`): one entry per (key,
    /// value), key by key.
    #[serde(rename = "breakdown.key")]
    breakdown_key: Vec<&'static str>,
    #[serde(rename = "breakdown.value")]
    breakdown_value: Vec<&'a str>,
    #[serde(rename = "breakdown.count")]
    breakdown_count: Vec<u64>,
    /// The record's sample, for [`SampleRow`]; not a column of the row.
    #[serde(skip)]
    record_sample: &'a str,
    /// The issues merged into the record's, for [`AliasRow`]; not a column of the row.
    #[serde(skip)]
    merged_from: Vec<&'a str>,
}

/// The fields of an aggregate record that its rows are made of, borrowed from wherever the
/// record is held: an [`AggregateRecord`] ([`AggregateRow::new`]) or the writer's batch, which
/// decodes every record of a batch into one buffer ([`AggregateRow::of`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Fields<'a> {
    /// Project slug.
    pub project: &'a str,
    /// Issue id.
    pub issue_id: &'a str,
    /// Start of the minute bucket, Unix seconds.
    pub minute: i64,
    /// Release.
    pub release: &'a str,
    /// Environment.
    pub environment: &'a str,
    /// Number of events.
    pub count: u64,
    /// The user set's hashes.
    pub users: &'a [u64],
    /// Whether the user set is saturated.
    pub users_saturated: bool,
    /// Earliest event time, ms.
    pub first_seen_ms: i64,
    /// Latest event time, ms.
    pub last_seen_ms: i64,
    /// Issue title.
    pub title: &'a str,
    /// Culprit.
    pub culprit: &'a str,
    /// Exception type.
    pub exc_type: &'a str,
    /// Level.
    pub level: &'a str,
    /// Platform.
    pub platform: &'a str,
    /// Grouping config version.
    pub grouping_version: &'a str,
    /// The sample event's JSON (empty when none).
    pub sample: &'a str,
    /// The grouper batch: source epoch.
    pub src_epoch: &'a str,
    /// The grouper batch: source topic.
    pub src_topic: &'a str,
    /// The grouper batch: source partition.
    pub src_partition: i32,
    /// The grouper batch: first source offset.
    pub src_first_offset: i64,
    /// The grouper batch: last source offset.
    pub src_last_offset: i64,
    /// The record's index in its grouper batch.
    pub rec_index: u32,
    /// The number of records of its grouper batch.
    pub rec_count: u32,
}

impl<'a> Fields<'a> {
    /// The fields of `r`.
    pub fn of(r: &'a AggregateRecord) -> Self {
        Self {
            project: &r.project,
            issue_id: &r.issue_id,
            minute: r.minute,
            release: &r.release,
            environment: &r.environment,
            count: r.count,
            users: &r.users.hashes,
            users_saturated: r.users.saturated,
            first_seen_ms: r.first_seen_ms,
            last_seen_ms: r.last_seen_ms,
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
        }
    }
}

/// A row of `<db>.issue_aliases` (migration 0011): the fact that issue `alias` (an issue id of
/// events as received) is issue `issue_id` (the same events with their frames mapped by a
/// source map), learnt from a record's `merged_from` (docs/sourcemaps.md "Late maps").
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Serialize, serde::Deserialize)]
pub struct AliasRow<'a> {
    /// Project slug.
    pub project: &'a str,
    /// The merged (secondary) issue id.
    pub alias: &'a str,
    /// The issue it is merged into (the primary).
    pub issue_id: &'a str,
    /// The record's first seen, Unix seconds.
    pub first_seen: u32,
}

/// A row of `<db>.issue_samples`: the sample of one record, keyed by its issue and hour
/// (the table keeps the latest per issue and hour).
#[derive(clickhouse::Row, serde::Serialize)]
pub struct SampleRow<'a> {
    project: &'a str,
    issue_id: &'a str,
    hour: u32,
    seen: u32,
    release: &'a str,
    sample: &'a str,
}

fn secs(ms: i64) -> u32 {
    u32::try_from(ms.div_euclid(1000)).unwrap_or(0)
}

impl<'a> AggregateRow<'a> {
    /// The row for `r`, read from `agg_topic`/`agg_partition` at `agg_offset`.
    pub fn new(r: &'a AggregateRecord, agg_topic: &'a str, agg_partition: i32, agg_offset: i64) -> Self {
        Self::of(
            Fields::of(r),
            r.breakdown.iter(),
            r.merged_from.iter().map(String::as_str),
            agg_topic,
            agg_partition,
            agg_offset,
        )
    }

    /// The row of a record's `fields`, its `breakdown` (key by key, as
    /// [`tracefold_model::Breakdown::iter`]) and `merged_from`, read from
    /// `agg_topic`/`agg_partition` at `agg_offset`. Allocates only for a breakdown or merged
    /// issues that are not empty.
    pub fn of(
        f: Fields<'a>,
        breakdown: impl Iterator<Item = (Key, &'a str, u64)>,
        merged_from: impl Iterator<Item = &'a str>,
        agg_topic: &'a str,
        agg_partition: i32,
        agg_offset: i64,
    ) -> Self {
        let (mut breakdown_key, mut breakdown_value, mut breakdown_count) = (Vec::new(), Vec::new(), Vec::new());
        for (k, v, n) in breakdown {
            breakdown_key.push(k.as_str());
            breakdown_value.push(v);
            breakdown_count.push(n);
        }
        Self {
            project: f.project,
            issue_id: f.issue_id,
            minute: u32::try_from(f.minute).unwrap_or(0),
            release: f.release,
            environment: f.environment,
            count: f.count,
            users: f.users,
            users_saturated: u8::from(f.users_saturated),
            first_seen: secs(f.first_seen_ms),
            last_seen: secs(f.last_seen_ms),
            title: f.title,
            culprit: f.culprit,
            exc_type: f.exc_type,
            level: f.level,
            platform: f.platform,
            grouping_version: f.grouping_version,
            sample: "",
            src_epoch: f.src_epoch,
            src_topic: f.src_topic,
            src_partition: f.src_partition,
            src_first_offset: f.src_first_offset,
            src_last_offset: f.src_last_offset,
            rec_index: f.rec_index,
            rec_count: f.rec_count,
            agg_topic,
            agg_partition,
            agg_offset,
            breakdown_key,
            breakdown_value,
            breakdown_count,
            record_sample: f.sample,
            merged_from: merged_from.collect(),
        }
    }

    /// The `issue_aliases` rows of the record: one per `merged_from` entry (none for records
    /// without mapped frames).
    pub fn alias_rows(&self) -> impl Iterator<Item = AliasRow<'a>> + '_ {
        self.merged_from.iter().map(|&alias| AliasRow {
            project: self.project,
            alias,
            issue_id: self.issue_id,
            first_seen: self.first_seen,
        })
    }

    /// The `issue_samples` row of the record, if it carries a sample.
    pub fn sample_row(&self) -> Option<SampleRow<'a>> {
        (!self.record_sample.is_empty()).then(|| SampleRow {
            project: self.project,
            issue_id: self.issue_id,
            hour: self.minute - self.minute % 3600,
            seen: self.first_seen,
            release: self.release,
            sample: self.record_sample,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_goes_to_its_own_row_keyed_by_the_hour() {
        let mut r = AggregateRecord {
            project: "web".into(),
            issue_id: "a".into(),
            minute: 7_200 + 1_980,
            release: "r1".into(),
            first_seen_ms: 9_200_500,
            sample: "{\"x\":\"ü\"}".into(),
            ..Default::default()
        };
        let row = AggregateRow::new(&r, "t", 0, 0);
        assert_eq!(row.sample, "", "the aggregates row keeps no sample");
        let s = row.sample_row().expect("a sample row");
        assert_eq!(
            (s.project, s.issue_id, s.hour, s.seen, s.release, s.sample),
            ("web", "a", 7_200, 9_200, "r1", "{\"x\":\"ü\"}")
        );
        r.sample.clear();
        assert!(AggregateRow::new(&r, "t", 0, 0).sample_row().is_none());
    }

    #[test]
    fn each_merged_issue_is_an_alias_row_of_the_record_issue() {
        let mut r = AggregateRecord {
            project: "web".into(),
            issue_id: "p".into(),
            first_seen_ms: 9_200_500,
            ..Default::default()
        };
        assert_eq!(AggregateRow::new(&r, "t", 0, 0).alias_rows().count(), 0);
        r.merged_from = vec!["s1".into(), "s2".into()];
        let row = AggregateRow::new(&r, "t", 0, 0);
        let rows: Vec<AliasRow<'_>> = row.alias_rows().collect();
        assert_eq!(
            rows,
            [
                AliasRow { project: "web", alias: "s1", issue_id: "p", first_seen: 9_200 },
                AliasRow { project: "web", alias: "s2", issue_id: "p", first_seen: 9_200 },
            ]
        );
    }

    #[test]
    fn the_breakdown_goes_to_its_nested_columns_key_by_key() {
        use tracefold_model::breakdown::Key;
        let mut r = AggregateRecord::default();
        let row = AggregateRow::new(&r, "t", 0, 0);
        assert!(row.breakdown_key.is_empty() && row.breakdown_value.is_empty() && row.breakdown_count.is_empty());
        r.breakdown.add(Key::Url, "/日本", 2);
        r.breakdown.add(Key::Browser, "Chrome 120", 3);
        r.breakdown.add(Key::Browser, "Firefox 121", 1);
        let row = AggregateRow::new(&r, "t", 0, 0);
        assert_eq!(row.breakdown_key, ["browser", "browser", "url"]);
        assert_eq!(row.breakdown_value, ["Chrome 120", "Firefox 121", "/日本"]);
        assert_eq!(row.breakdown_count, [3, 1, 2]);
    }
}
