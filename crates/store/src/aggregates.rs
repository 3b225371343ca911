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
use crate::rows::{AggregateRow, AliasRow, SampleRow};
use clickhouse::Client;
use std::collections::HashMap;
use std::time::Duration;
use tracefold_model::AggregateRecord;

/// Position of a record within its source partition's batches.
pub type Mark = (i64, u32);

/// Watermarks of one aggregates partition: source -> largest stored.
pub type Watermarks = HashMap<Source, Mark>;

/// A source partition of the aggregates: (source epoch, topic, partition), the key of the
/// watermarks. Looked up by its borrowed parts ([`admit_at`]): the replay check of a record
/// allocates only for a source not seen before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Source epoch.
    pub epoch: String,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
}

/// A [`Source`] as its borrowed parts: what both the owned key and a lookup hash and compare.
trait SourceKey {
    fn key(&self) -> (&str, &str, i32);
}

impl SourceKey for Source {
    fn key(&self) -> (&str, &str, i32) {
        (&self.epoch, &self.topic, self.partition)
    }
}

impl SourceKey for (&str, &str, i32) {
    fn key(&self) -> (&str, &str, i32) {
        *self
    }
}

impl<'a> std::borrow::Borrow<dyn SourceKey + 'a> for Source {
    fn borrow(&self) -> &(dyn SourceKey + 'a) {
        self
    }
}

impl std::hash::Hash for dyn SourceKey + '_ {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.key().hash(h);
    }
}

impl PartialEq for dyn SourceKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for dyn SourceKey + '_ {}

/// Hashed as its borrowed form, [`SourceKey`] (the `Borrow` contract).
impl std::hash::Hash for Source {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.key().hash(h);
    }
}

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
    Ok(rows
        .into_iter()
        .map(|r| (Source { epoch: r.src_epoch, topic: r.src_topic, partition: r.src_partition }, (r.first, r.index)))
        .collect())
}

/// Whether `r` is new relative to `wm`; if so, advances `wm` past it.
pub fn admit(wm: &mut Watermarks, r: &AggregateRecord) -> bool {
    admit_at(wm, &r.batch.epoch, &r.batch.topic, r.batch.partition, (r.batch.first_offset, r.batch.index))
}

/// Whether a record of source (`epoch`, `topic`, `partition`) at `mark` is new relative to
/// `wm`; if so, advances `wm` past it ([`admit`] of a record's parts).
pub fn admit_at(wm: &mut Watermarks, epoch: &str, topic: &str, partition: i32, mark: Mark) -> bool {
    let key: &dyn SourceKey = &(epoch, topic, partition);
    match wm.get_mut(key) {
        Some(m) if *m >= mark => false,
        Some(m) => {
            *m = mark;
            true
        }
        None => {
            wm.insert(Source { epoch: epoch.to_owned(), topic: topic.to_owned(), partition }, mark);
            true
        }
    }
}

/// Inserts `rows` into `table` of the client's database ([`crate::client::database_client`])
/// in one INSERT, which ClickHouse applies atomically; `token` (22+) lets the server drop a
/// retried insert whose first try landed. The rows' samples go into the samples table
/// ([`samples_table`]) and their merge facts (`merged_from`) into the aliases table
/// ([`aliases_table`]), each in an INSERT before it.
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
    // Into a `Distributed` table (the cluster flavour's `*_all`), the INSERT returns once the
    // shards stored the rows, not once they were queued on this node: the watermarks read
    // through the same table (after a restart, or before the retry of an insert whose outcome
    // was not learnt) must see every row that was acknowledged, or a batch is stored twice.
    // The setting on the client, so that every INSERT below has it.
    let synced;
    let client = if table.ends_with("_all") {
        synced = client.clone().with_setting("insert_distributed_sync", "1");
        &synced
    } else {
        client
    };
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
    // Merge facts of late source maps (docs/sourcemaps.md "Late maps"), before the aggregate
    // rows for the same reason: the watermark that makes a replay skip the records is only
    // written with the aggregate rows, so a crash before them replays the facts too, and a
    // replayed fact is the same row (`issue_aliases` is a ReplacingMergeTree keyed by it).
    let aliases: Vec<AliasRow<'_>> = rows.iter().flat_map(AggregateRow::alias_rows).collect();
    if !aliases.is_empty() {
        let written = async {
            let mut ins =
                client.insert::<AliasRow<'_>>(aliases_table(table)).await?.with_timeouts(Some(timeout), Some(timeout));
            for row in &aliases {
                ins.write(row).await?;
            }
            ins.end().await
        };
        written.await.map_err(step("insert issue alias rows"))?;
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

/// The aliases table beside aggregates table `table`: `issue_aliases`, or `issue_aliases_all`
/// on a cluster (as [`samples_table`]).
pub fn aliases_table(table: &str) -> &'static str {
    if table.ends_with("_all") {
        "issue_aliases_all"
    } else {
        "issue_aliases"
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

/// Events stored and visible to every query: the smallest of the sums of `count` over the
/// base table and the tables its materialized views fill (`issues_v`, the per-minute, hourly
/// and daily counts). An INSERT commits the base table's part before it writes the views'
/// parts, so for a moment after [`total_events`] counts a batch, `tracefold top` may not see
/// it yet; whoever waits for events in order to query them waits on this.
///
/// # Errors
/// When the name is not an identifier or ClickHouse does not answer.
pub async fn visible_events(client: &Client, database: &str) -> Result<u64> {
    let db = db(database)?;
    let sum = |t: &str| format!("(SELECT sum(count) FROM {db}.{t})");
    let q = format!(
        "SELECT least(least(least({}, {}), least({}, {})), {}) AS n",
        sum("aggregates"),
        sum("issues_v"),
        sum("issue_counts_1m"),
        sum("issue_counts_1h"),
        sum("issue_counts_1d")
    );
    Ok(client.query(&q).fetch_one::<N>().await.map_err(step("visible events"))?.n)
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
        assert_eq!(aliases_table("aggregates"), "issue_aliases");
        assert_eq!(aliases_table("aggregates_all"), "issue_aliases_all");
    }

    #[derive(Debug, PartialEq, Eq, clickhouse::Row, serde::Deserialize)]
    struct Alias {
        project: String,
        alias: String,
        issue_id: String,
        first_seen: u32,
        n: u64,
    }

    /// With the real ClickHouse: `visible_events` counts what the base table and every count
    /// table derived from it hold once an insert returned, and nothing before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn visible_events_are_those_every_count_table_holds() {
        let cfg = crate::testdb::scratch("visible");
        crate::migrate::migrate(&cfg, |_, _| {}).await.expect("ClickHouse is needed for this test");
        let client = crate::client::database_client(&cfg).unwrap();
        let empty = visible_events(&client, &cfg.database).await;
        let (mut a, mut b) = (rec(0, 0, 0), rec(1, 0, 0));
        (a.count, b.count) = (3, 4);
        b.issue_id = "j".into();
        b.minute = 1_795_671_540;
        let rows = [AggregateRow::new(&a, "a", 0, 0), AggregateRow::new(&b, "a", 1, 0)];
        let inserted = insert(&client, "aggregates", &rows, Duration::from_secs(30), None).await;
        let after = visible_events(&client, &cfg.database).await;
        let bad = visible_events(&client, "no such; db").await;
        let _ = crate::client::drop_database(&client, &cfg.database).await;
        inserted.unwrap();
        assert_eq!(empty.unwrap(), 0);
        assert_eq!(after.unwrap(), 7);
        assert!(bad.is_err(), "a name that is not an identifier is refused");
    }

    /// With the real ClickHouse: a record's merge facts arrive in `issue_aliases` with its
    /// aggregate row, and a replay of the same records (the writer's retry of an insert whose
    /// outcome it did not learn, or a grouper's rebuilt batch) adds the same rows, which the
    /// table's key folds into one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn merge_facts_arrive_with_their_aggregates_and_replays_fold_into_them() {
        let cfg = crate::testdb::scratch("aliases");
        crate::migrate::migrate(&cfg, |_, _| {}).await.expect("ClickHouse is needed for this test");
        let client = crate::client::database_client(&cfg).unwrap();
        let (s1, s2, p) = ("1".repeat(32), "2".repeat(32), "f".repeat(32));
        let mut merged = rec(0, 0, 0);
        merged.project = "ウェブ".into();
        merged.issue_id = p.clone();
        merged.first_seen_ms = 1_795_671_540_250;
        merged.merged_from = vec![s1.clone(), s2.clone()];
        let plain = rec(0, 0, 1);
        let recs = [merged, plain];
        let t = Duration::from_secs(30);
        let insert_all = || async {
            let rows: Vec<AggregateRow<'_>> = recs.iter().map(|r| AggregateRow::new(r, "a", 0, 0)).collect();
            insert(&client, "aggregates", &rows, t, None).await
        };
        let first = insert_all().await;
        let again = insert_all().await;
        let q = format!(
            "SELECT project, alias, issue_id, toUInt32(first_seen) AS first_seen, count() AS n \
             FROM {}.issue_aliases FINAL GROUP BY project, alias, issue_id, first_seen ORDER BY alias",
            cfg.database
        );
        let read = client.query(&q).fetch_all::<Alias>().await;
        let events = total_events(&client, &cfg.database).await;
        let _ = crate::client::drop_database(&client, &cfg.database).await;
        first.unwrap();
        again.unwrap();
        let fact = |alias: &str| Alias {
            project: "ウェブ".into(),
            alias: alias.into(),
            issue_id: p.clone(),
            first_seen: 1_795_671_540,
            n: 1,
        };
        assert_eq!(read.unwrap(), [fact(&s1), fact(&s2)], "one row per fact, however often it was written");
        assert_eq!(events.unwrap(), 4, "the aggregate rows went in as well (twice: no watermark here)");
    }

    /// An insert into the `Distributed` table of the cluster flavour (`aggregates_all`) is
    /// synchronous (`insert_distributed_sync=1`): by default ClickHouse acknowledges it once the
    /// rows are queued on the node the writer talks to, and a read of the watermarks through the
    /// same table right after (a restart, or the retry of an insert that timed out) does not see
    /// them yet, so the batch would be stored twice (seen on 18.16: an acknowledged INSERT into a
    /// `Distributed` table over another server was invisible to a `SELECT count()` through it
    /// for a moment; with the setting it was visible at once). Here: the settings each INSERT
    /// is sent with, as a server that records them sees them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inserts_into_a_distributed_table_wait_until_the_shards_stored_them() {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let _ = s.set_read_timeout(Some(std::time::Duration::from_millis(300)));
                let mut req = Vec::new();
                let mut buf = [0u8; 8192];
                // The whole request: its body is streamed, so read until it pauses.
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    req.extend_from_slice(&buf[..n]);
                }
                let line = String::from_utf8_lossy(&req).lines().next().unwrap_or("").to_owned();
                log.lock().unwrap().push(line);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        let client = Client::default().with_url(format!("http://{addr}")).with_validation(false);
        let mut with_sample = rec(0, 0, 0);
        with_sample.sample = "{}".into();
        with_sample.merged_from = vec!["1".repeat(32)];
        let recs = [with_sample];
        let rows: Vec<AggregateRow<'_>> = recs.iter().map(|r| AggregateRow::new(r, "a", 0, 0)).collect();
        let t = Duration::from_secs(30);
        insert(&client, "aggregates_all", &rows, t, None).await.unwrap();
        insert(&client, "aggregates", &rows, t, None).await.unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 6, "{seen:#?}");
        for (i, line) in seen.iter().enumerate() {
            let distributed = i < 3;
            assert!(line.contains("_all") == distributed, "{line}");
            assert_eq!(line.contains("insert_distributed_sync=1"), distributed, "{line}");
        }
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
