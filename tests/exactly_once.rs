//! Exactly-once counting without Kafka transactions, each case made to happen on purpose:
//! - a grouper aborted (failpoints) right after recording a batch range and before producing,
//!   or after part of a batch was acknowledged, restarted later: it rebuilds exactly the
//!   recorded range and emits byte-identical records (timestamps clamped relative to the Kafka
//!   message time, not the wall clock), and ClickHouse counts every event once;
//! - a writer whose insert landed but was reported as failed: the retry learns from
//!   ClickHouse that the rows are stored and does not insert them again;
//! - a batch rebuilt after a simulated crash and a writer that re-reads the whole topic.

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tracefold_grouper::batch::{BatchBuilder, BatchOptions};
use tracefold_grouper::service::{decode_pending, encode_pending};
use tracefold_model::AggregateRecord;
use tracefold_runtime::devbroker::DevBroker;
use tracefold_tests::procs::{eventually, serial, stored_rows_and_identities, sum, Env, Observer};
use tracefold_tests::{generate, grouper_config, kafka, publish, topics, writer_config, ServiceThread, TestDb, Truth};

const PARTITIONS: i32 = 2;
const EVENTS: &str = "tracefold.events";
const AGGREGATES: &str = "tracefold.aggregates";
const GROUPER: &str = "tracefold-grouper";
const WRITER: &str = "tracefold-writer";

/// Generous: two cores shared with other test runs.
const LONG: Duration = Duration::from_secs(120);

const GROUPER_TOML: &str = "[grouper]\nbatch_max_events = 400\nbatch_max_age_ms = 300\n\n\
                            [kafka.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n";
const WRITER_TOML: &str = "[writer]\nbatch_max_age_ms = 300\nretry_initial_ms = 100\n\n\
                           [kafka.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n";

/// `n` generated events; of every four, one has no timestamp, one is dated 1970 and one ten
/// days ahead: the grouper clamps those to the Kafka message timestamp.
fn events_with_bad_timestamps(n: usize, seed: u64) -> (Vec<Vec<u8>>, Truth) {
    let (events, _) = generate(n, 12, seed);
    let ahead = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 10 * 86_400;
    let mut truth = Truth::default();
    let payloads = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut v: serde_json::Value = serde_json::from_str(&e.json).unwrap();
            match i % 4 {
                1 => drop(v.as_object_mut().unwrap().remove("timestamp")),
                2 => v["timestamp"] = 0.into(),
                3 => v["timestamp"] = ahead.into(),
                _ => {}
            }
            let json = v.to_string();
            truth.add(&json, e.user);
            json.into_bytes()
        })
        .collect();
    (payloads, truth)
}

/// Where the grouper dies.
#[derive(Clone, Copy)]
enum Crash {
    /// Right after committing its batch ranges as pending, before producing anything.
    AfterPendingCommit,
    /// Once this many delivery acknowledgements of the batch's records arrived.
    AfterAcks(usize),
}

/// A grouper dies while emitting its first batch (`crash`) and is restarted later. Proves: the
/// crash happened where asked (SIGABRT, the failpoint's line, the range recorded as pending,
/// what the topic held); the successor rebuilt exactly the recorded ranges, once each; every
/// copy of a record identity on the topic is byte-identical, and the rebuilt batches are
/// byte for byte what the grouper's batch builder makes of the range's events with their
/// Kafka timestamps; ClickHouse counts every event once and the writer skipped every copy.
async fn grouper_crash_reemits_identically(name: &str, crash: Crash) {
    let db = TestDb::new(name).await;
    let broker = DevBroker::start(1, &topics(), Some(PARTITIONS)).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let kafka = Observer::new(&bootstrap);
    let env = Env::create(name, &bootstrap, &db.cfg.url, &db.cfg.database, GROUPER_TOML, WRITER_TOML);
    let (payloads, truth) = events_with_bad_timestamps(2000, 21);
    publish(&bootstrap, EVENTS, &payloads).await;

    let writer = env.spawn("writer");
    let (failpoint, armed) = match crash {
        Crash::AfterPendingCommit => ("grouper.after_pending_commit", "grouper.after_pending_commit=1".to_owned()),
        Crash::AfterAcks(k) => ("grouper.after_acks", format!("grouper.after_acks={k}")),
    };
    let mut grouper = env.spawn_with("grouper", &armed);
    grouper.expect_abort_at(failpoint, LONG);
    let died = Instant::now();
    // What the crash left: the ranges of the batch it died in, recorded as pending.
    let pending: Vec<(i32, i64, i64)> = kafka
        .committed(GROUPER, EVENTS)
        .iter()
        .enumerate()
        .filter_map(|(p, (offset, meta))| {
            let (first, last) = decode_pending(meta)?;
            assert_eq!(*offset, first, "a pending range is committed at its first offset");
            Some((p as i32, first, last))
        })
        .collect();
    assert!(!pending.is_empty(), "the aborted grouper left a pending range");

    // Restarted later: a timestamp clamped relative to the wall clock would now differ (the
    // records carry milliseconds; ClickHouse keeps seconds). The successor also waits for the
    // dead member's session to time out (6 s) before it gets the partitions.
    tokio::time::sleep_until((died + Duration::from_secs(2)).into()).await;
    // What the dead grouper published of the batch it died in (read only now: a produce
    // request it sent just before dying has been appended by the in-process broker since).
    let in_pending =
        |r: &AggregateRecord| pending.iter().any(|&(p, f, _)| r.batch.partition == p && r.batch.first_offset == f);
    let first_emission: Vec<AggregateRecord> = kafka
        .read(AGGREGATES, &[])
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).expect("an aggregate record"))
        .filter(|r| in_pending(r))
        .collect();
    match crash {
        Crash::AfterPendingCommit => {
            assert!(first_emission.is_empty(), "nothing of the batch was produced before the abort");
        }
        Crash::AfterAcks(k) => {
            assert!(first_emission.len() >= k, "at least {k} records were acknowledged: {}", first_emission.len());
        }
    }
    let grouper = env.spawn("grouper");
    kafka.wait_caught_up(GROUPER, EVENTS, LONG).await;
    kafka.wait_caught_up(WRITER, AGGREGATES, LONG).await;
    assert_eq!(
        grouper.metric("tracefold_grouper_batches_total", "kind=\"replay\""),
        pending.len() as f64,
        "the successor rebuilt each recorded range once"
    );

    // Every copy of a record identity is byte-identical, and the copies are exactly the first
    // emission's records of the pending ranges, emitted again.
    let all = kafka.read(AGGREGATES, &[]);
    let mut by_id: BTreeMap<(i32, i64, u32), Vec<&[u8]>> = BTreeMap::new();
    for r in &all {
        let rec: AggregateRecord = serde_json::from_slice(&r.payload).expect("an aggregate record");
        by_id.entry((rec.batch.partition, rec.batch.first_offset, rec.batch.index)).or_default().push(&r.payload);
    }
    for (id, copies) in &by_id {
        assert!(
            copies.iter().all(|c| c == &copies[0]),
            "copies of record {id:?} differ:\n{}",
            copies.iter().map(|c| String::from_utf8_lossy(c)).collect::<Vec<_>>().join("\n")
        );
    }
    let copies = all.len() - by_id.len();
    assert_eq!(copies, first_emission.len(), "each record of the first emission was emitted again, and nothing else");

    // The rebuilt batches are the deterministic function of their recorded ranges.
    let events = kafka.read(EVENTS, &[]);
    let epoch = kafka.cluster_id();
    for &(p, first, last) in &pending {
        let mut b = BatchBuilder::new(BatchOptions::default());
        for e in events.iter().filter(|e| e.partition == p && (first..=last).contains(&e.offset)) {
            b.add(&e.payload, e.offset, e.timestamp);
        }
        let want = b.finish(&epoch, EVENTS, p, first, last);
        assert!(want.clamped > 0, "the range holds events whose timestamps were clamped");
        let emitted: Vec<&[u8]> =
            by_id.range((p, first, 0)..=(p, first, u32::MAX)).map(|(_, copies)| copies[0]).collect();
        assert_eq!(emitted.len(), want.records.len(), "partition {p}: the batch [{first}, {last}] has every record");
        for (got, r) in emitted.iter().zip(&want.records) {
            assert_eq!(
                String::from_utf8_lossy(got),
                serde_json::to_string(r).unwrap(),
                "partition {p}: the re-emitted record is what the range's events make"
            );
        }
    }

    // Downstream: every event counted once, every record stored once, every copy skipped.
    assert_eq!(db.wait_for_total(truth.total, LONG).await, truth.total, "every event exactly once");
    assert_eq!(db.per_issue().await, truth.expected(), "per-issue counts and users");
    let (rows, ids) = stored_rows_and_identities(&db).await;
    assert_eq!((rows, ids), (by_id.len() as u64, by_id.len() as u64), "every record identity stored once");
    assert_eq!(
        writer.metric("tracefold_writer_rows_duplicate_total", ""),
        copies as f64,
        "the writer recognised every re-emitted copy"
    );
}

#[test]
fn a_grouper_that_died_after_recording_its_range_rebuilds_exactly_that_range() {
    serial(grouper_crash_reemits_identically("eo_pending", Crash::AfterPendingCommit));
}

#[test]
fn a_grouper_that_died_with_part_of_a_batch_acknowledged_reemits_identical_records() {
    serial(grouper_crash_reemits_identically("eo_acks", Crash::AfterAcks(40)));
}

#[test]
fn a_retried_insert_that_had_landed_is_not_stored_twice() {
    serial(async {
        let db = TestDb::new("eo_insert").await;
        let broker = DevBroker::start(1, &topics(), Some(PARTITIONS)).unwrap();
        let bootstrap = broker.bootstrap_servers();
        let kafka = Observer::new(&bootstrap);
        let env = Env::create("eo_insert", &bootstrap, &db.cfg.url, &db.cfg.database, GROUPER_TOML, WRITER_TOML);
        let (events, truth) = generate(2500, 12, 31);
        let payloads: Vec<Vec<u8>> = events.into_iter().map(|e| e.json.into_bytes()).collect();
        publish(&bootstrap, EVENTS, &payloads).await;
        // The second insert lands in ClickHouse, but the writer is told it failed.
        let mut writer = env.spawn_with("writer", "writer.insert_lands_then_fails=2");
        let _grouper = env.spawn("grouper");
        let line = "failpoint writer.insert_lands_then_fails reached: injecting a fault";
        eventually("the insert failpoint fired", LONG, |_| writer.logged(line).then_some(())).await;
        kafka.wait_caught_up(GROUPER, EVENTS, LONG).await;
        kafka.wait_caught_up(WRITER, AGGREGATES, LONG).await;
        assert_eq!(db.wait_for_total(truth.total, LONG).await, truth.total, "every event exactly once");
        assert_eq!(db.per_issue().await, truth.expected(), "per-issue counts and users");
        // The failure was seen as one (one failed insert, of `landed` rows)...
        let failed = writer.logged_json("insert failed; pausing and retrying");
        assert_eq!(failed.len(), 1, "one failed insert: {failed:?}");
        let landed = failed[0]["rows"].as_u64().expect("the failed insert's rows");
        assert!(landed > 0);
        assert_eq!(writer.metric("tracefold_writer_inserts_total", "outcome=\"error\""), 1.0);
        // ...and the retry recognised every one of its rows as stored.
        assert_eq!(
            writer.metric("tracefold_writer_rows_duplicate_total", ""),
            landed as f64,
            "the retry re-read the watermarks and skipped the landed rows"
        );
        let (rows, ids) = stored_rows_and_identities(&db).await;
        let records = sum(&kafka.high_watermarks(AGGREGATES)) as u64;
        assert_eq!((rows, ids), (records, records), "every aggregate record stored exactly once");
        assert_eq!(
            writer.metric("tracefold_writer_rows_inserted_total", "") as u64 + landed,
            rows,
            "stored: what the writer counts as inserted plus the landed insert"
        );
        // ...and said so: the views may lack what a failed INSERT stored in the base table.
        assert_eq!(
            writer.metric("tracefold_writer_failed_insert_rows_stored_total", ""),
            landed as f64,
            "the rows the failed insert had stored are counted"
        );
        assert!(writer.logged("an insert reported as failed had stored these rows in the base table"));
        assert!(!writer.exited(), "the writer carried on");
    });
}

#[test]
fn a_writer_whose_insert_task_panicked_stops_and_its_restart_stores_the_batch() {
    serial(async {
        let db = TestDb::new("eo_panic").await;
        let broker = DevBroker::start(1, &topics(), Some(PARTITIONS)).unwrap();
        let bootstrap = broker.bootstrap_servers();
        let kafka = Observer::new(&bootstrap);
        let env = Env::create("eo_panic", &bootstrap, &db.cfg.url, &db.cfg.database, GROUPER_TOML, WRITER_TOML);
        let (events, truth) = generate(2500, 12, 37);
        let payloads: Vec<Vec<u8>> = events.into_iter().map(|e| e.json.into_bytes()).collect();
        publish(&bootstrap, EVENTS, &payloads).await;
        // The second INSERT's task panics before it stores anything, taking its batch with it.
        let mut writer = env.spawn_with("writer", "writer.insert_task_panics=2");
        let _grouper = env.spawn("grouper");
        // The loop ends (it went on, and committed the next batches past the lost one).
        let status = writer.wait_exit(LONG);
        assert!(!status.success(), "the writer stopped with an error: {status}");
        assert!(writer.logged("failpoint writer.insert_task_panics reached"));
        assert!(writer.logged("the insert task ended abnormally"), "the reason is logged");
        // Its restart reads the lost batch again from the last commit.
        let _writer = env.spawn("writer");
        kafka.wait_caught_up(GROUPER, EVENTS, LONG).await;
        kafka.wait_caught_up(WRITER, AGGREGATES, LONG).await;
        assert_eq!(db.wait_for_total(truth.total, LONG).await, truth.total, "every event exactly once");
        assert_eq!(db.per_issue().await, truth.expected(), "per-issue counts and users");
    });
}

fn group_client(bootstrap: &str, group: &str) -> BaseConsumer {
    tracefold_runtime::kafka::consumer_config(&kafka(bootstrap), group).create().unwrap()
}

/// Commits `tpl` for `group` by joining it: librdkafka's mock cluster (unlike Kafka) refuses
/// commits from non-members once a group exists.
async fn commit_as_member(bootstrap: &str, group: &str, topic: &str, tpl: &TopicPartitionList) {
    let c = group_client(bootstrap, group);
    c.subscribe(&[topic]).unwrap();
    eventually(&format!("the partitions of {group}"), LONG, |_| {
        let _ = c.poll(Duration::from_millis(100));
        (c.assignment().unwrap().count() == PARTITIONS as usize).then_some(())
    })
    .await;
    c.commit(tpl, CommitMode::Sync).unwrap();
    c.unsubscribe();
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct LastBatch {
    src_partition: i32,
    first: i64,
    last: i64,
}

#[test]
fn replayed_batches_and_reread_aggregates_are_counted_once() {
    replayed_and_reread_counted_once(1);
}

/// The same with two writer loops in one process (`writer.consumers = 2`): each owns one of the
/// partitions, with its own batch, INSERT in flight and watermarks.
#[test]
fn replayed_batches_and_reread_aggregates_are_counted_once_by_two_writer_loops() {
    replayed_and_reread_counted_once(2);
}

fn replayed_and_reread_counted_once(writer_consumers: usize) {
    serial(async move {
        let db = TestDb::new("exactly_once").await;
        let t = topics();
        let broker = DevBroker::start(1, &t, Some(PARTITIONS)).unwrap();
        let bootstrap = broker.bootstrap_servers();
        let kafka = Observer::new(&bootstrap);
        let (events, truth) = generate(2500, 12, 99);
        let payloads: Vec<Vec<u8>> = events.iter().map(|e| e.json.clone().into_bytes()).collect();
        publish(&bootstrap, &t.events, &payloads).await;

        let gcfg = grouper_config(&bootstrap);
        let mut wcfg = writer_config(&bootstrap, &db);
        wcfg.writer.consumers = writer_consumers;
        let grouper = ServiceThread::grouper(gcfg.clone());
        let writer = ServiceThread::writer(wcfg.clone());
        assert_eq!(db.wait_for_total(truth.total, LONG).await, truth.total);
        kafka.wait_caught_up(&gcfg.grouper.group_id, &t.events, LONG).await;
        kafka.wait_caught_up(&wcfg.writer.group_id, &t.aggregates, LONG).await;
        grouper.stop().unwrap();

        // 1. The grouper "crashed" after its last batch of each partition was published but
        //    before it committed past it: the committed state is the batch's first offset with
        //    the range.
        let last: Vec<LastBatch> = db
            .client
            .query(&format!(
                "SELECT src_partition, max(src_first_offset) AS first, max(src_last_offset) AS last FROM {}.aggregates GROUP BY src_partition ORDER BY src_partition",
                db.cfg.database
            ))
            .fetch_all()
            .await
            .unwrap();
        assert_eq!(last.len(), PARTITIONS as usize, "both partitions had batches");
        let mut tpl = TopicPartitionList::new();
        for b in &last {
            tpl.add_partition_offset(&t.events, b.src_partition, Offset::Offset(b.first)).unwrap();
            tpl.find_partition(&t.events, b.src_partition).unwrap().set_metadata(encode_pending(b.first, b.last));
        }
        commit_as_member(&bootstrap, &gcfg.grouper.group_id, &t.events, &tpl).await;
        let cm = kafka.committed(&gcfg.grouper.group_id, &t.events);
        assert!(cm.iter().all(|(_, m)| m.starts_with("tracefold:v1:")), "{cm:?}");
        let aggregates_before = sum(&kafka.high_watermarks(&t.aggregates));

        let grouper = ServiceThread::grouper(gcfg.clone());
        kafka.wait_caught_up(&gcfg.grouper.group_id, &t.events, LONG).await;
        let aggregates_after = sum(&kafka.high_watermarks(&t.aggregates));
        assert!(aggregates_after > aggregates_before, "the pending batches were rebuilt and re-emitted");
        kafka.wait_caught_up(&wcfg.writer.group_id, &t.aggregates, LONG).await;
        assert_eq!(db.total_events().await, truth.total, "re-emitted aggregates are not counted twice");
        assert_eq!(db.per_issue().await, truth.expected());

        // 2. The writer restarts from the very beginning of the aggregates topic (as after
        //    losing its committed offsets): everything it reads is already stored.
        writer.stop().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&t.aggregates, p, Offset::Offset(0)).unwrap();
        }
        commit_as_member(&bootstrap, &wcfg.writer.group_id, &t.aggregates, &tpl).await;
        let writer = ServiceThread::writer(wcfg.clone());
        kafka.wait_caught_up(&wcfg.writer.group_id, &t.aggregates, LONG).await;
        assert_eq!(db.total_events().await, truth.total, "re-read aggregates are not counted twice");
        assert_eq!(db.per_issue().await, truth.expected());
        let (rows, ids) = stored_rows_and_identities(&db).await;
        assert_eq!(rows, ids, "no aggregate record stored twice");

        grouper.stop().unwrap();
        writer.stop().unwrap();
    });
}

/// A batch whose range commit fails while its partition stays ours (failpoint
/// `grouper.range_commit_fails`) is read again from its first offset: the grouper seeks back
/// (through the consumer runtime, which then delivers those offsets again) and rebuilds it.
/// With `seek_failures` failed seeks back (failpoint `grouper.rewind_seek_fails`): a few are
/// tried again and the grouper carries on; five in a row stop it (exit non-zero) and its
/// restart reads the batch again from the last commit. Before, a failed seek was a WARN line:
/// the grouper read on past the batch, its next range commit passed over it, and its events
/// were never counted. Either way ClickHouse counts every event once.
async fn range_commit_fails_then_rewind(name: &str, seek_failures: u32) {
    let db = TestDb::new(name).await;
    let broker = DevBroker::start(1, &topics(), Some(PARTITIONS)).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let kafka = Observer::new(&bootstrap);
    let env = Env::create(name, &bootstrap, &db.cfg.url, &db.cfg.database, GROUPER_TOML, WRITER_TOML);
    let (events, truth) = generate(2500, 12, 41);
    let payloads: Vec<Vec<u8>> = events.into_iter().map(|e| e.json.into_bytes()).collect();
    publish(&bootstrap, EVENTS, &payloads).await;
    let _writer = env.spawn("writer");
    let armed = format!("grouper.range_commit_fails=2,grouper.rewind_seek_fails={seek_failures}");
    let mut grouper = env.spawn_with("grouper", &armed);
    let line = "failpoint grouper.range_commit_fails reached: injecting a fault";
    eventually("the range commit failpoint fired", LONG, |_| grouper.logged(line).then_some(())).await;
    let _restarted;
    if seek_failures >= 5 {
        let st = grouper.wait_exit(LONG);
        assert!(!st.success(), "the grouper stopped: {st}");
        let stopped = "cannot seek back to a batch whose range was not recorded; stopping";
        assert!(grouper.logged(stopped), "an ERROR line says why");
        _restarted = env.spawn("grouper");
    } else {
        kafka.wait_caught_up(GROUPER, EVENTS, LONG).await;
        assert!(!grouper.exited(), "the grouper carried on");
        _restarted = grouper;
    }
    kafka.wait_caught_up(GROUPER, EVENTS, LONG).await;
    kafka.wait_caught_up(WRITER, AGGREGATES, LONG).await;
    assert_eq!(db.wait_for_total(truth.total, LONG).await, truth.total, "every event exactly once");
    assert_eq!(db.per_issue().await, truth.expected(), "per-issue counts and users");
    if seek_failures < 5 {
        let failed = _restarted.metric("tracefold_grouper_rewind_seek_failures_total", "");
        assert_eq!(failed, f64::from(seek_failures), "each failed seek counted");
    }
}

#[test]
fn a_batch_whose_range_commit_failed_is_read_again_after_a_seek_back_that_failed_once() {
    serial(range_commit_fails_then_rewind("eo_rewind", 1));
}

#[test]
fn a_grouper_that_cannot_seek_back_to_an_unrecorded_batch_stops_and_its_restart_counts_it() {
    serial(range_commit_fails_then_rewind("eo_rewind_stop", 5));
}
