//! Exact counts under failure, with the services as child processes against a mock cluster
//! hosted by the test: failpoint aborts and SIGKILL mid-stream, ClickHouse stopped and
//! restarted (with the writer's memory watched), scaling from one to three replicas and back
//! (rebalances), and a clean SIGTERM drain. Every test proves that the failure it is about
//! happened (exit statuses, failpoint lines, committed offsets against the topics' ends,
//! assignment gauges) and waits on conditions, never on fixed sleeps. ClickHouse is a private
//! server of each test (scripts/clickhouse-local.sh on other ports), so stopping it does not
//! disturb other tests; the tests of this file run one at a time (`procs::serial`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracefold_devtools::gen::{GenOptions, Generated, Generator};
use tracefold_runtime::devbroker::DevBroker;
use tracefold_tests::procs::{
    assert_killed, eventually, serial, stored_rows_and_identities, sum, Env, Observer, PrivateClickHouse, Svc,
};
use tracefold_tests::{generate, publish, Truth};

const PARTITIONS: i32 = 4;
const EVENTS: &str = "tracefold.events";
const AGGREGATES: &str = "tracefold.aggregates";
const GROUPER: &str = "tracefold-grouper";
const WRITER: &str = "tracefold-writer";

const GROUPER_EVENTS: &str = "tracefold_grouper_events_total";
const WRITER_ROWS: &str = "tracefold_writer_rows_inserted_total";
const WRITER_DUPLICATES: &str = "tracefold_writer_rows_duplicate_total";
const ASSIGNED: &str = "tracefold_kafka_assigned_partitions";

/// Generous: two cores shared with other test runs.
const LONG: Duration = Duration::from_secs(120);

/// The writer's batch bound in these tests (`batch_max_bytes`), and librdkafka's prefetch
/// bound (`queued.max.messages.kbytes`): together they bound what a paused writer holds.
const WRITER_BATCH_BYTES: usize = 1 << 20;
const WRITER_PREFETCH_KB: usize = 2048;

// Fields drop in this order: the database before its server, the observer's clients before
// the broker.
struct Setup {
    db: tracefold_tests::TestDb,
    kafka: Observer,
    // The mock cluster lives as long as the test.
    _broker: DevBroker,
    ch: PrivateClickHouse,
    env: Env,
}

async fn setup(name: &str) -> Setup {
    let ch = PrivateClickHouse::start(name);
    let db = tracefold_tests::TestDb::at(&ch.url(), name).await;
    let broker = DevBroker::start(1, &Default::default(), Some(PARTITIONS)).unwrap();
    // Small batches and short session timeouts: many batches to die in, quick rebalances.
    let grouper = "[grouper]\nbatch_max_events = 400\nbatch_max_age_ms = 200\n\n\
                   [kafka.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n";
    let writer = format!(
        "[writer]\nbatch_max_rows = 500\nbatch_max_bytes = {WRITER_BATCH_BYTES}\nbatch_max_age_ms = 200\n\
         retry_initial_ms = 100\nretry_max_ms = 1000\ninsert_timeout_ms = 5000\n\n\
         [kafka.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n\"queued.max.messages.kbytes\" = \"{WRITER_PREFETCH_KB}\"\n"
    );
    let env = Env::create(name, &broker.bootstrap_servers(), &ch.url(), &db.cfg.database, grouper, &writer);
    Setup { kafka: Observer::new(&broker.bootstrap_servers()), db, _broker: broker, ch, env }
}

/// Most events a [`Publisher`] sends: with about 475 bytes per lz4-compressed event, 24,000
/// events are under 3 MB per partition, well inside the mock cluster's 5 MB per partition
/// (beyond it, it deletes unread events and the counts could not be exact).
const MAX_PUBLISHED: usize = 24_000;

/// Publishes generated events in the background, 30 every 100 ms or so, until stopped: a
/// stream that is still flowing whenever a test stops or kills something.
struct Publisher {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Generated>>,
}

impl Publisher {
    fn start(bootstrap: &str, seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (bootstrap, stopped) = (bootstrap.to_owned(), stop.clone());
        let task = tokio::spawn(async move {
            let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
            let opts = GenOptions { issues: 30, seed, now_secs: now, users: 300, zipf_s: 0.8, ..GenOptions::default() };
            let mut g = Generator::new(opts);
            let mut sent: Vec<Generated> = Vec::new();
            while !stopped.load(Ordering::SeqCst) {
                assert!(
                    sent.len() < MAX_PUBLISHED,
                    "the test ran so long that the publisher reached {MAX_PUBLISHED} events"
                );
                // Every issue at least once, then by popularity.
                let chunk: Vec<Generated> = (sent.len()..sent.len() + 30)
                    .map(|i| if i < 30 { g.event_for(i, i as u64) } else { g.next_event() })
                    .collect();
                let payloads: Vec<Vec<u8>> = chunk.iter().map(|e| e.json.clone().into_bytes()).collect();
                publish(&bootstrap, EVENTS, &payloads).await;
                sent.extend(chunk);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sent
        });
        Self { stop, task }
    }

    /// Whether events are still being published.
    fn running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Stops publishing; the ground truth of everything published.
    async fn stop(self) -> Truth {
        self.stop.store(true, Ordering::SeqCst);
        let sent = self.task.await.expect("the publisher");
        let mut truth = Truth::default();
        for e in &sent {
            truth.add(&e.json, e.user);
        }
        truth
    }
}

fn merge(a: &Truth, b: &Truth) -> Truth {
    let mut all = a.clone();
    for (k, (n, users)) in &b.per_issue {
        let e = all.per_issue.entry(k.clone()).or_default();
        e.0 += n;
        e.1.extend(users.iter().copied());
    }
    all.total += b.total;
    all
}

/// Counts are exact and stay so: ClickHouse holds the truth, both groups committed to the ends
/// of their topics (nothing is in flight that could still arrive, late and twice), ClickHouse
/// still holds exactly the truth after that, and no record is stored twice.
async fn assert_exact(s: &Setup, truth: &Truth) {
    let got = s.db.wait_for_total(truth.total, LONG).await;
    assert_eq!(got, truth.total, "every event exactly once");
    s.kafka.wait_caught_up(GROUPER, EVENTS, LONG).await;
    s.kafka.wait_caught_up(WRITER, AGGREGATES, LONG).await;
    assert_eq!(s.db.total_events().await, truth.total, "still exact once both groups committed everything");
    assert_eq!(s.db.per_issue().await, truth.expected(), "per-issue counts and users");
    let (rows, ids) = stored_rows_and_identities(&s.db).await;
    assert_eq!(rows, ids, "no aggregate record stored twice");
}

/// Waits until `group` is behind the end of `topic` (work it has not committed), then kills
/// `svc` with SIGKILL at once and proves the kill: signal 9, and the group's committed offsets
/// still below the topic's end. Returns nothing: the successor must finish the rest.
async fn kill_mid_stream(s: &Setup, svc: Svc, group: &str, topic: &str) {
    let kind = svc.kind;
    eventually(&format!("{group} is behind the end of {topic}"), LONG, |last| {
        let (cm, end) = (s.kafka.committed_offsets(group, topic), s.kafka.high_watermarks(topic));
        *last = format!("committed {cm:?}, end {end:?}");
        (sum(&cm) < sum(&end)).then_some(())
    })
    .await;
    assert_killed(kind, svc.kill9());
    let (cm, end) = (s.kafka.committed_offsets(group, topic), s.kafka.high_watermarks(topic));
    assert!(sum(&cm) < sum(&end), "{kind} was killed mid-stream: {group} committed {cm:?}, {topic} ends at {end:?}");
}

/// Waits until `metric` of `svc` is above `above`.
async fn wait_metric_above(svc: &Svc, metric: &str, filter: &str, above: f64) {
    eventually(&format!("{} {metric}{{{filter}}} above {above}", svc.kind), LONG, |last| {
        let v = svc.metric(metric, filter);
        *last = v.to_string();
        (v > above).then_some(v)
    })
    .await;
}

/// The label filter of a service's main consumer group: the writer also runs a consumer of the
/// outcomes topic in a group of its own, whose partitions are not the ones counted here.
fn main_group(svc: &Svc) -> String {
    format!("group=\"{}\"", if svc.kind == "writer" { WRITER } else { GROUPER })
}

/// Waits until every replica in `svcs` owns partitions and together they own all of them: the
/// rebalance after a replica came or went is complete.
async fn wait_shared(svcs: &[Svc]) {
    let kind = svcs[0].kind;
    eventually(&format!("{} {kind} replicas share the {PARTITIONS} partitions", svcs.len()), LONG, |last| {
        let owned: Vec<f64> = svcs.iter().map(|s| s.metric(ASSIGNED, &main_group(s))).collect();
        *last = format!("assigned per replica: {owned:?}");
        (owned.iter().all(|n| *n > 0.0) && owned.iter().sum::<f64>() == f64::from(PARTITIONS)).then_some(())
    })
    .await;
}

/// Waits until both groups are behind the ends of their topics: a stop now is mid-stream.
async fn both_groups_behind(s: &Setup) {
    eventually("both groups are behind the ends of their topics", LONG, |last| {
        let behind_g = !s.kafka.caught_up(GROUPER, EVENTS, last);
        let g_state = last.clone();
        let behind_w = !s.kafka.caught_up(WRITER, AGGREGATES, last);
        *last = format!("{g_state}; {last}");
        (behind_g && behind_w).then_some(())
    })
    .await;
}

#[test]
fn sigkill_mid_stream_and_a_clickhouse_outage_keep_counts_exact() {
    serial(async {
        let s = setup("kill").await;
        let publisher = Publisher::start(&s.env.bootstrap, 3);
        let mut grouper = s.env.spawn_with("grouper", "grouper.after_produce=4");
        let mut writer = s.env.spawn_with("writer", "writer.after_insert=3");

        // 1. Both die at the worst moments, while events keep arriving. The grouper right after
        //    its 4th emit was acknowledged, before committing past it: its ranges are still
        //    pending, and its successor re-emits them.
        grouper.expect_abort_at("grouper.after_produce", LONG);
        let cm = s.kafka.committed(GROUPER, EVENTS);
        assert!(
            cm.iter().any(|(_, meta)| meta.starts_with("tracefold:v1:")),
            "the aborted grouper left pending ranges: {cm:?}"
        );
        grouper = s.env.spawn("grouper");
        //    The writer right after ClickHouse stored its 3rd insert, before committing it:
        //    ClickHouse holds rows past the group's committed offsets.
        writer.expect_abort_at("writer.after_insert", LONG);
        let cm = s.kafka.committed_offsets(WRITER, AGGREGATES);
        let stored = stored_ends(&s).await;
        assert!(
            stored.iter().zip(&cm).any(|(stored, committed)| stored > committed),
            "the aborted writer stored rows it had not committed: stored up to {stored:?}, committed {cm:?}"
        );
        writer = s.env.spawn("writer");

        // 2. SIGKILL mid-stream: each successor works (after the dead member's session timed
        //    out), then is killed while its group is behind the end of its topic.
        wait_metric_above(&grouper, GROUPER_EVENTS, "", 0.0).await;
        kill_mid_stream(&s, grouper, GROUPER, EVENTS).await;
        grouper = s.env.spawn("grouper");
        wait_metric_above(&writer, WRITER_ROWS, "", 0.0).await;
        kill_mid_stream(&s, writer, WRITER, AGGREGATES).await;
        writer = s.env.spawn("writer");
        assert!(publisher.running(), "events were arriving throughout the crashes");
        let truth = publisher.stop().await;
        assert_exact(&s, &truth).await;

        // 3. ClickHouse goes away while a backlog arrives; the writer pauses, holds a bounded
        //    amount of memory, commits nothing, and carries on when it is back.
        //    The bound: a paused writer holds its pending batch (at most `batch_max_bytes` = 1
        //    MiB of aggregate JSON, about twice that parsed) and librdkafka's prefetch (at most
        //    `queued.max.messages.kbytes` = 2 MiB, overshot by one fetch of at most 1 MiB per
        //    partition: 6 MiB), so its resident memory grows by well under 12 MiB. The backlog:
        //    4,000 events of 4,000 distinct issues, padded to about 6 KB, so that each aggregate
        //    carries its event as sample: about 26 MiB of aggregate records, asserted below to
        //    be at least 24 MiB. A writer that read on while it cannot store (unbounded memory)
        //    would hold at least their JSON bytes: twice the bound.
        const BOUND_KB: u64 = 12 << 10;
        const BACKLOG_MIN: usize = 24 << 20;
        let committed_before = s.kafka.committed_offsets(WRITER, AGGREGATES);
        let rows_before = writer.metric(WRITER_ROWS, "");
        let rss_before = writer.rss_kb();
        s.ch.run("stop");
        let (payloads, more) = padded_backlog(4_000, 4);
        let backlog_publisher = {
            let bootstrap = s.env.bootstrap.clone();
            tokio::spawn(async move {
                for chunk in payloads.chunks(200) {
                    publish(&bootstrap, EVENTS, chunk).await;
                }
            })
        };
        // Until the writer ran into the outage (three failed inserts) and the grouper turned
        // the whole backlog into aggregates: all of it was there to be read.
        let mut peak_rss = rss_before;
        eventually("the writer fails against the stopped ClickHouse and the backlog is grouped", LONG, |last| {
            peak_rss = peak_rss.max(writer.rss_kb());
            let errors = writer.metric("tracefold_writer_inserts_total", "outcome=\"error\"");
            let grouped = backlog_publisher.is_finished() && s.kafka.caught_up(GROUPER, EVENTS, last);
            *last = format!("{errors} failed inserts; {last}");
            (errors >= 3.0 && grouped).then_some(())
        })
        .await;
        peak_rss = peak_rss.max(writer.rss_kb());
        let committed = s.kafka.committed_offsets(WRITER, AGGREGATES);
        assert_eq!(committed, committed_before, "nothing is committed during the outage");
        let backlog: usize = s.kafka.read(AGGREGATES, &committed).iter().map(|r| r.payload.len()).sum();
        assert!(backlog >= BACKLOG_MIN, "the backlog is large enough to prove the bound: {backlog} bytes");
        let grew = peak_rss.saturating_sub(rss_before);
        eprintln!("outage: writer RSS {rss_before} kB, peak {peak_rss} kB; {backlog} bytes of aggregates waiting");
        assert!(
            grew < BOUND_KB,
            "writer memory stays bounded during the outage: grew by {grew} kB (from {rss_before} kB) with {backlog} bytes of aggregates waiting"
        );
        s.ch.run("start");
        // 4. And once more right after ClickHouse is back: killed while storing the backlog.
        wait_metric_above(&writer, WRITER_ROWS, "", rows_before).await;
        kill_mid_stream(&s, writer, WRITER, AGGREGATES).await;
        let _writer = s.env.spawn("writer");
        assert_exact(&s, &merge(&truth, &more)).await;
        // The crashes did cause replays: the topic holds more aggregate records than ClickHouse
        // holds rows (re-emitted batches and re-read records were recognised and skipped).
        let (rows, _) = stored_rows_and_identities(&s.db).await;
        let records = sum(&s.kafka.high_watermarks(AGGREGATES));
        assert!(records as u64 > rows, "the crashes caused replays ({records} records, {rows} rows)");
        drop(grouper);
    });
}

/// Per aggregates partition, the offset after the last row ClickHouse stores (0: none).
async fn stored_ends(s: &Setup) -> Vec<i64> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct R {
        p: i32,
        end: i64,
    }
    let rows: Vec<R> =
        s.db.client
            .query(&format!(
                "SELECT agg_partition AS p, max(agg_offset) + 1 AS end FROM {}.aggregates GROUP BY agg_partition",
                s.db.cfg.database
            ))
            .fetch_all()
            .await
            .unwrap();
    let mut ends = vec![0; PARTITIONS as usize];
    for r in rows {
        ends[r.p as usize] = r.end;
    }
    ends
}

/// `n` events of `n` distinct issues, each padded to about 6 KB (an `extra` field, which
/// grouping ignores): every aggregate of them carries its event as sample. Compressible, so
/// that they stay small in the mock cluster.
fn padded_backlog(n: usize, seed: u64) -> (Vec<Vec<u8>>, Truth) {
    let (events, _) = generate(n, n, seed);
    let mut truth = Truth::default();
    let payloads = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let pad = format!("{i:08}-").repeat(4000 / 9);
            let json = format!("{},\"extra\":{{\"padding\":\"{pad}\"}}}}", &e.json[..e.json.len() - 1]);
            truth.add(&json, e.user);
            json.into_bytes()
        })
        .collect();
    (payloads, truth)
}

#[test]
fn scaling_one_to_three_replicas_and_back_keeps_counts_exact() {
    serial(async {
        let s = setup("scale").await;
        let publisher = Publisher::start(&s.env.bootstrap, 5);
        let mut groupers = vec![s.env.spawn("grouper")];
        let mut writers = vec![s.env.spawn("writer")];
        wait_shared(&groupers).await;
        wait_shared(&writers).await;
        // Scale out while events flow: each added replica gets a share of the partitions and
        // does work with it.
        for _ in 0..2 {
            groupers.push(s.env.spawn("grouper"));
            writers.push(s.env.spawn("writer"));
            wait_shared(&groupers).await;
            wait_shared(&writers).await;
            wait_metric_above(groupers.last().unwrap(), GROUPER_EVENTS, "", 0.0).await;
            wait_metric_above(writers.last().unwrap(), WRITER_ROWS, "", 0.0).await;
        }
        // Scale back in with SIGTERM drains, mid-stream: each drained replica owned partitions,
        // its groups were behind the ends of their topics when it was asked to stop, and the
        // remaining replicas take its partitions over.
        for _ in 0..2 {
            let (mut g, mut w) = (groupers.pop().unwrap(), writers.pop().unwrap());
            assert!(
                g.metric(ASSIGNED, &main_group(&g)) > 0.0 && w.metric(ASSIGNED, &main_group(&w)) > 0.0,
                "the drained replicas owned partitions"
            );
            both_groups_behind(&s).await;
            g.send_term();
            w.send_term();
            let (gs, ws) = (g.wait_exit(LONG), w.wait_exit(LONG));
            assert!(gs.success() && ws.success(), "drained and exited 0: grouper {gs}, writer {ws}");
            wait_shared(&groupers).await;
            wait_shared(&writers).await;
        }
        assert!(publisher.running(), "events were arriving throughout the rebalances");
        let truth = publisher.stop().await;
        assert_eq!((groupers.len(), writers.len()), (1, 1));
        assert_exact(&s, &truth).await;
    });
}

#[test]
fn sigterm_drains_cleanly_and_nothing_is_replayed() {
    serial(async {
        let s = setup("drain").await;
        let publisher = Publisher::start(&s.env.bootstrap, 6);
        let mut grouper = s.env.spawn("grouper");
        let mut writer = s.env.spawn("writer");
        wait_metric_above(&grouper, GROUPER_EVENTS, "", 0.0).await;
        wait_metric_above(&writer, WRITER_ROWS, "", 0.0).await;
        // Mid-stream: both groups are behind the ends of their topics when both are asked to
        // stop, and events are still arriving once both have stopped.
        both_groups_behind(&s).await;
        grouper.send_term();
        writer.send_term();
        let (g, w) = (grouper.wait_exit(LONG), writer.wait_exit(LONG));
        assert!(g.success() && w.success(), "exit 0 after SIGTERM: grouper {g}, writer {w}");
        assert!(publisher.running(), "events were still arriving when both had stopped");
        // The drain left no batch half done: every committed offset is past a whole batch.
        let grouper_left = s.kafka.committed(GROUPER, EVENTS);
        assert!(
            grouper_left.iter().all(|(_, meta)| meta.is_empty()),
            "no pending range after a drain: {grouper_left:?}"
        );
        let grouper_left: Vec<i64> = grouper_left.iter().map(|(o, _)| (*o).max(0)).collect();
        let writer_left = s.kafka.committed_offsets(WRITER, AGGREGATES);
        // Restarted, they pick up exactly where they stopped and finish the rest.
        let grouper = s.env.spawn("grouper");
        let writer = s.env.spawn("writer");
        let truth = publisher.stop().await;
        assert_exact(&s, &truth).await;
        let (events_end, aggregates_end) = (s.kafka.high_watermarks(EVENTS), s.kafka.high_watermarks(AGGREGATES));
        assert!(sum(&events_end) > sum(&grouper_left), "the drained grouper left events to its successor");
        // No batch is rebuilt and no event read twice: the successor read exactly the events
        // after the drained grouper's commits...
        assert_eq!(grouper.metric("tracefold_grouper_batches_total", "kind=\"replay\""), 0.0, "no batch rebuilt");
        assert_eq!(
            grouper.metric(GROUPER_EVENTS, "") as i64,
            sum(&events_end) - sum(&grouper_left),
            "the restarted grouper read exactly the events after its predecessor's commits"
        );
        // ...and no aggregate is read twice: the successor stored exactly the records after the
        // drained writer's commits, none of them already stored.
        assert_eq!(writer.metric(WRITER_DUPLICATES, ""), 0.0, "no aggregate read twice after a clean drain");
        assert_eq!(
            writer.metric(WRITER_ROWS, "") as i64,
            sum(&aggregates_end) - sum(&writer_left),
            "the restarted writer stored exactly the records after its predecessor's commits"
        );
    });
}
