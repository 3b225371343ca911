//! Exact counts under failure, with the services as child processes against a mock cluster
//! hosted by the test: SIGKILL mid-stream, ClickHouse stopped and restarted, scaling from one
//! to three replicas and back (rebalances), and a clean SIGTERM drain. ClickHouse is a private
//! server of this test (scripts/clickhouse-local.sh on other ports), so stopping it does not
//! disturb other tests.

use std::time::{Duration, Instant};
use tracefold_runtime::devbroker::DevBroker;
use tracefold_tests::procs::{Env, PrivateClickHouse};
use tracefold_tests::{generate, publish, Truth};

const PARTITIONS: i32 = 4;

// Fields drop in this order: the database before its server.
struct Setup {
    db: tracefold_tests::TestDb,
    broker: DevBroker,
    ch: PrivateClickHouse,
    env: Env,
}

async fn setup(name: &str) -> Setup {
    let ch = PrivateClickHouse::start(name);
    let db = tracefold_tests::TestDb::at(&ch.url(), name).await;
    let broker = DevBroker::start(1, &Default::default(), Some(PARTITIONS)).unwrap();
    let config_dir = std::env::temp_dir().join(format!("tracefold-crash-cfg-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&config_dir).unwrap();
    // Small batches and short session timeouts: many batches to die in, quick rebalances.
    std::fs::write(
        config_dir.join("grouper.toml"),
        "[grouper]\nbatch_max_events = 400\nbatch_max_age_ms = 200\n\n[kafka.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n",
    )
    .unwrap();
    std::fs::write(
        config_dir.join("writer.toml"),
        "[writer]\nbatch_max_rows = 500\nbatch_max_age_ms = 200\nretry_initial_ms = 100\nretry_max_ms = 1000\ninsert_timeout_ms = 5000\n\n[kafka.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n",
    )
    .unwrap();
    let env =
        Env { bootstrap: broker.bootstrap_servers(), ch_url: ch.url(), database: db.cfg.database.clone(), config_dir };
    Setup { db, broker, ch, env }
}

/// Publishes `n` events in `waves` waves, calling `between` after each wave.
async fn publish_waves(s: &Setup, n: usize, waves: usize, seed: u64, mut between: impl FnMut(usize)) -> Truth {
    let (events, truth) = generate(n, 30, seed);
    let payloads: Vec<Vec<u8>> = events.into_iter().map(|e| e.json.into_bytes()).collect();
    for (i, chunk) in payloads.chunks(n.div_ceil(waves)).enumerate() {
        publish(&s.broker.bootstrap_servers(), "tracefold.events", chunk).await;
        between(i);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    truth
}

async fn assert_exact(s: &Setup, truth: &Truth) {
    let got = s.db.wait_for_total(truth.total, Duration::from_secs(120)).await;
    assert_eq!(got, truth.total, "every event exactly once");
    // Stays exact: nothing arrives late and twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.db.total_events().await, truth.total);
    assert_eq!(s.db.per_issue().await, truth.expected(), "per-issue counts and users");
}

/// Publishes `n` events in the background, 300 at a time every 150 ms.
fn publish_in_background(bootstrap: String, n: usize, seed: u64) -> (tokio::task::JoinHandle<()>, Truth) {
    let (events, truth) = generate(n, 30, seed);
    let payloads: Vec<Vec<u8>> = events.into_iter().map(|e| e.json.into_bytes()).collect();
    let task = tokio::spawn(async move {
        for chunk in payloads.chunks(300) {
            publish(&bootstrap, "tracefold.events", chunk).await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    (task, truth)
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

/// Records on the aggregates topic, over all partitions.
fn aggregate_records(bootstrap: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer =
        tracefold_runtime::kafka::consumer_config(&tracefold_tests::kafka(bootstrap), "count").create().unwrap();
    (0..PARTITIONS).map(|p| c.fetch_watermarks("tracefold.aggregates", p, Duration::from_secs(5)).unwrap().1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_and_a_clickhouse_outage_keep_counts_exact() {
    let s = setup("kill").await;
    let mut grouper = s.env.spawn_with("grouper", "grouper.after_produce=4");
    let mut writer = s.env.spawn_with("writer", "writer.after_insert=3");
    // Let the grouper and the writer die at the worst moments (failpoints: a grouper right
    // after its aggregates were acknowledged and before it committed past them, a writer right
    // after ClickHouse stored its rows and before it committed its offsets) and kill -9 them
    // at random moments, while events keep arriving; restart whatever died, as a supervisor
    // would. (A killed member holds its partitions until its session times out: 6 s here.)
    let (publisher, truth) = publish_in_background(s.env.bootstrap.clone(), 16_000, 3);
    let (mut grouper_crashes, mut writer_crashes) = (0, 0);
    for i in 0..40u64 {
        tokio::time::sleep(Duration::from_millis(250 + (i * 137) % 300)).await;
        if grouper.exited() {
            grouper_crashes += 1;
            grouper = s.env.spawn_with("grouper", if grouper_crashes < 2 { "grouper.after_produce=4" } else { "" });
        }
        if writer.exited() {
            writer_crashes += 1;
            writer = s.env.spawn_with("writer", if writer_crashes < 2 { "writer.after_insert=3" } else { "" });
        }
        match i {
            25 => {
                grouper.kill9();
                grouper = s.env.spawn("grouper");
            }
            30 => {
                writer.kill9();
                writer = s.env.spawn("writer");
            }
            _ => {}
        }
    }
    publisher.await.unwrap();
    assert!(
        grouper_crashes + writer_crashes >= 2,
        "failpoints fired: grouper {grouper_crashes}, writer {writer_crashes}"
    );
    // ClickHouse goes away for a while; the writer pauses, keeps memory bounded, commits
    // nothing, and carries on when it is back.
    s.ch.run("stop");
    let (publisher, more) = publish_in_background(s.env.bootstrap.clone(), 4_000, 4);
    // Wait until the writer has tried and failed a few times (a restarted grouper first waits
    // for the group to settle), watching its memory.
    let mut peak_rss = 0;
    let deadline = Instant::now() + Duration::from_secs(45);
    while writer.metric("tracefold_writer_inserts_total", "outcome=\"error\"") < 3.0 {
        assert!(Instant::now() < deadline, "the writer did not run into the outage");
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak_rss = peak_rss.max(writer.rss_kb());
    }
    assert!(peak_rss < 512 * 1024, "writer memory stays bounded during the outage: {peak_rss} kB");
    publisher.await.unwrap();
    s.ch.run("start");
    // And once more right after ClickHouse is back.
    tokio::time::sleep(Duration::from_millis(700)).await;
    writer.kill9();
    let _writer = s.env.spawn("writer");
    let all = merge(&truth, &more);
    assert_exact(&s, &all).await;
    // The kills did cause replays: the topic holds more aggregate records than ClickHouse
    // holds rows (re-emitted batches and re-read records were recognised and skipped).
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct N {
        n: u64,
    }
    let rows =
        s.db.client
            .query(&format!("SELECT count() AS n FROM {}.aggregates", s.db.cfg.database))
            .fetch_one::<N>()
            .await
            .unwrap()
            .n;
    let records = aggregate_records(&s.env.bootstrap);
    assert!(records as u64 > rows, "the kills caused replays ({records} records, {rows} rows)");
    drop(grouper);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_one_to_three_replicas_and_back_keeps_counts_exact() {
    let s = setup("scale").await;
    let mut groupers = vec![s.env.spawn("grouper")];
    let mut writers = vec![s.env.spawn("writer")];
    let truth = publish_waves(&s, 12_000, 8, 5, |wave| match wave {
        1 | 2 => {
            groupers.push(s.env.spawn("grouper"));
            writers.push(s.env.spawn("writer"));
        }
        5 | 6 => {
            let st = groupers.pop().unwrap().term(Duration::from_secs(45));
            assert!(st.success(), "grouper drained: {st}");
            let st = writers.pop().unwrap().term(Duration::from_secs(45));
            assert!(st.success(), "writer drained: {st}");
        }
        _ => {}
    })
    .await;
    assert_eq!((groupers.len(), writers.len()), (1, 1));
    assert_exact(&s, &truth).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_cleanly_and_nothing_is_replayed() {
    let s = setup("drain").await;
    let grouper = s.env.spawn("grouper");
    let writer = s.env.spawn("writer");
    let first = publish_waves(&s, 5_000, 2, 6, |_| {}).await;
    assert_eq!(s.db.wait_for_total(first.total, Duration::from_secs(60)).await, first.total);
    // Mid-stream: more events are arriving when both are asked to stop.
    let (events, second) = generate(3_000, 30, 7);
    let payloads: Vec<Vec<u8>> = events.into_iter().map(|e| e.json.into_bytes()).collect();
    publish(&s.broker.bootstrap_servers(), "tracefold.events", &payloads).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (g, w) = (grouper.term(Duration::from_secs(45)), writer.term(Duration::from_secs(45)));
    assert!(g.success() && w.success(), "exit 0 after SIGTERM: grouper {g}, writer {w}");
    // Restarted, they pick up exactly where they stopped: no batch is rebuilt, no aggregate
    // is read twice.
    let grouper = s.env.spawn("grouper");
    let writer = s.env.spawn("writer");
    let mut all = first.clone();
    for (k, (n, users)) in second.per_issue {
        let e = all.per_issue.entry(k).or_default();
        e.0 += n;
        e.1.extend(users);
    }
    all.total += second.total;
    assert_exact(&s, &all).await;
    assert_eq!(
        grouper.metric("tracefold_grouper_batches_total", "kind=\"replay\""),
        0.0,
        "no batch rebuilt after a clean drain"
    );
    assert_eq!(
        writer.metric("tracefold_writer_rows_duplicate_total", ""),
        0.0,
        "no aggregate read twice after a clean drain"
    );
}
