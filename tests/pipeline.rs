//! End to end: events through the HTTP endpoint (or straight into Kafka) end up as issues
//! with exact counts and users in a real ClickHouse; bad events and bad aggregate records land
//! in the DLQ with their reason and their exact source position.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tracefold_devtools::dev::{DevConfig, Pipeline};
use tracefold_tests::{generate, post_ndjson, TestDb};

/// Partitions of the events and aggregates topics in these tests.
const PARTITIONS: i32 = 3;

async fn start(db: &TestDb) -> Pipeline {
    let cfg = DevConfig { clickhouse: db.cfg.clone(), ..DevConfig::default() };
    Pipeline::start(cfg, "127.0.0.1:0", Some(PARTITIONS), true).await.expect("pipeline starts")
}

fn reader(bootstrap: &str, group: &str) -> BaseConsumer {
    tracefold_runtime::kafka::consumer_config(&tracefold_tests::kafka(bootstrap), group).create().unwrap()
}

/// End offset of every partition of `topic`.
fn end_offsets(bootstrap: &str, topic: &str) -> BTreeMap<i32, i64> {
    let c = reader(bootstrap, "end-offsets");
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    assert!(!parts.is_empty(), "{topic} has partitions");
    parts.into_iter().map(|p| (p, c.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1)).collect()
}

/// The offsets `group` committed on `topic`'s partitions.
fn committed(bootstrap: &str, group: &str, topic: &str, partitions: impl Iterator<Item = i32>) -> BTreeMap<i32, i64> {
    // Fetching a group's committed offsets does not join the group.
    let c = reader(bootstrap, group);
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    // Nothing committed yet reads as 0: nothing consumed.
    got.elements().iter().map(|e| (e.partition(), e.offset().to_raw().unwrap_or(0).max(0))).collect()
}

/// Waits until the grouper has committed to the end of the events topic and the writer to the
/// end of the aggregates topic: every event published so far is grouped, every aggregate
/// inserted, and nothing is left to (re)play.
async fn wait_settled(pipeline: &Pipeline, timeout: Duration) {
    let bootstrap = pipeline.bootstrap_servers();
    let topics = &pipeline.cfg.topics;
    let groups =
        [(&pipeline.cfg.grouper.group_id, &topics.events), (&pipeline.cfg.writer.group_id, &topics.aggregates)];
    let deadline = Instant::now() + timeout;
    loop {
        let mut behind = Vec::new();
        for (group, topic) in groups {
            let end = end_offsets(&bootstrap, topic);
            let done = committed(&bootstrap, group, topic, end.keys().copied());
            if done != end {
                behind.push(format!("{group} on {topic}: committed {done:?}, end {end:?}"));
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "the pipeline did not settle in {timeout:?}: {behind:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Publishes `payloads` to `topic` (keyed by index, or to the given partition) and returns
/// where each one landed.
async fn publish_at(bootstrap: &str, topic: &str, payloads: &[(Option<i32>, Vec<u8>)]) -> Vec<(i32, i64)> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer =
        tracefold_runtime::kafka::producer_config(&tracefold_tests::kafka(bootstrap), 30_000).create().unwrap();
    let mut futs = Vec::with_capacity(payloads.len());
    for (i, (partition, p)) in payloads.iter().enumerate() {
        let key = i.to_string();
        let mut rec = FutureRecord::to(topic).key(&key).payload(p.as_slice());
        if let Some(partition) = partition {
            rec = rec.partition(*partition);
        }
        futs.push(producer.send_result(rec).expect("enqueue"));
    }
    let mut at = Vec::with_capacity(futs.len());
    for f in futs {
        let d = f.await.expect("delivery future").expect("delivered");
        at.push((d.partition, d.offset));
    }
    at
}

/// A DLQ record: payload, key and headers.
#[derive(Debug)]
struct DlqRecord {
    payload: Vec<u8>,
    key: String,
    headers: BTreeMap<String, String>,
}

/// Every record of the DLQ (one partition), read to its end, once it holds `expect`.
async fn read_dlq(pipeline: &Pipeline, expect: usize) -> Vec<DlqRecord> {
    let bootstrap = pipeline.bootstrap_servers();
    let dlq = &pipeline.cfg.topics.dlq;
    let deadline = Instant::now() + Duration::from_secs(30);
    let end = loop {
        let end = end_offsets(&bootstrap, dlq);
        assert_eq!(end.keys().copied().collect::<Vec<_>>(), [0], "the DLQ has one partition");
        if end[&0] >= expect as i64 {
            break end[&0];
        }
        assert!(Instant::now() < deadline, "the DLQ holds {} records, not {expect}", end[&0]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let consumer = reader(&bootstrap, "dlq-reader");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(dlq, 0, rdkafka::Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut got = Vec::new();
    while (got.len() as i64) < end {
        assert!(Instant::now() < deadline, "read {} of {end} DLQ records", got.len());
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            let headers = m
                .headers()
                .expect("DLQ records carry headers")
                .iter()
                .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                .collect();
            got.push(DlqRecord {
                payload: m.payload().unwrap_or_default().to_vec(),
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                headers,
            });
        }
    }
    got
}

/// Checks that `dlq` holds exactly `bad` (payload, where it was published, reason code), each
/// with headers that name its source position in `topic` and its reason.
fn assert_dlq_holds(dlq: &[DlqRecord], topic: &str, bad: &[(Vec<u8>, (i32, i64), &str)]) {
    assert_eq!(dlq.len(), bad.len(), "exactly the bad messages are in the DLQ: {dlq:?}");
    for (payload, (partition, offset), reason) in bad {
        let what = String::from_utf8_lossy(payload);
        let r = dlq.iter().find(|r| r.payload == *payload).unwrap_or_else(|| panic!("{what} is in the DLQ, verbatim"));
        let h = |k: &str| r.headers.get(k).map(String::as_str).unwrap_or_else(|| panic!("{what}: header {k}"));
        assert_eq!(h("tracefold-source-topic"), topic, "{what}");
        assert_eq!(h("tracefold-source-partition"), partition.to_string(), "{what}");
        assert_eq!(h("tracefold-source-offset"), offset.to_string(), "{what}");
        assert_eq!(h("tracefold-reason"), *reason, "{what}: {}", h("tracefold-error"));
        assert!(!h("tracefold-error").is_empty(), "{what}");
        assert_eq!(r.key, format!("{topic}/{partition}/{offset}"), "{what}");
        assert!(!r.headers.contains_key("tracefold-truncated-from"), "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_events_become_exact_issue_counts_in_clickhouse() {
    let db = TestDb::new("e2e").await;
    let pipeline = start(&db).await;
    let (events, truth) = generate(3000, 25, 42);
    let accepted_ids = post_ndjson(pipeline.http_addr, &events, 250).await;
    assert_eq!(accepted_ids, events.len());

    let stored = db.wait_for_total(truth.total, Duration::from_secs(60)).await;
    assert_eq!(stored, truth.total, "ClickHouse holds every accepted event exactly once");
    let got = db.per_issue().await;
    assert_eq!(got.len(), 25, "25 known bugs are 25 issues");
    assert_eq!(got, truth.expected(), "per-issue counts and distinct users match the ground truth");

    // The analyst query behind `tracefold top` agrees, ordered by count.
    let secs = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let asked = secs();
    let top = tracefold_store::issues::top_issues(&db.client, &db.cfg.database, 24 * 3600, 100, None).await.unwrap();
    let answered = secs();
    assert_eq!(top.len(), 25);
    assert!(top.windows(2).all(|w| w[0].count >= w[1].count));
    for row in &top {
        let (count, users) = truth.expected()[&row.issue_id];
        assert_eq!((row.count, row.users), (count, users), "{}", row.issue_id);
        assert!(!row.title.is_empty() && !row.first_seen.is_empty() && row.first_seen <= row.last_seen);
    }
    // The sparkline: per minute, the events of the 60 minutes up to the query's clock, which
    // read a second between `asked` and `answered`.
    let sparklines = |now: u64| -> BTreeMap<String, Vec<u64>> {
        let start = (now / 60) * 60 - 59 * 60;
        let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for e in &events {
            let ev = tracefold_model::parse_event_str(&e.json).unwrap();
            let issue = tracefold_fingerprint::fingerprint(&ev, &Default::default(), &mut Default::default()).to_hex();
            let line = out.entry(issue).or_insert_with(|| vec![0; 60]);
            let minute = (ev.timestamp.unwrap() / 60_000 * 60) as u64;
            if minute >= start {
                line[((minute - start) / 60) as usize] += 1;
            }
        }
        out
    };
    let got: BTreeMap<String, Vec<u64>> = top.iter().map(|r| (r.issue_id.clone(), r.last_hour.clone())).collect();
    assert!((asked..=answered).any(|now| sparklines(now) == got), "last-hour sparklines: {got:?}");
    let json = serde_json::to_value(&top).unwrap();
    for key in ["issue_id", "title", "count", "users", "first_seen", "last_seen"] {
        assert!(json[0].get(key).is_some(), "top JSON has {key}");
    }
    // Nothing more arrives (no double counting by late replays): once the grouper and the
    // writer have committed to the end of their topics there is nothing left to replay, and
    // the total is still exact.
    wait_settled(&pipeline, Duration::from_secs(60)).await;
    assert_eq!(db.total_events().await, truth.total);
    assert_eq!(db.per_issue().await, truth.expected());
    breakdowns_match_the_events(&db, &events).await;
    pipeline.stop().await.unwrap();
}

/// The breakdown table holds, per issue, key and value, the events sent with that browser,
/// OS or URL: the events of each (issue, key) add up exactly; where no aggregate row had to
/// fold values into "(other)" every value is exact, else no value has more than was sent. The
/// issue page's query (top values and totals over a window) agrees.
async fn breakdowns_match_the_events(db: &TestDb, events: &[tracefold_devtools::gen::Generated]) {
    use tracefold_model::breakdown::{self, Key, OTHER};
    type Counts = BTreeMap<(String, String, &'static str), BTreeMap<String, u64>>;
    let mut sent: Counts = BTreeMap::new();
    for e in events {
        let ev = tracefold_model::parse_event_str(&e.json).unwrap();
        let issue = tracefold_fingerprint::fingerprint(&ev, &Default::default(), &mut Default::default()).to_hex();
        let project = ev.project.as_deref().unwrap().to_owned();
        let mut route = String::new();
        for k in Key::ALL {
            if let Some(v) = breakdown::value(&ev, k, &mut route) {
                *sent.entry((project.clone(), issue.clone(), k.as_str())).or_default().entry(v.text()).or_default() +=
                    1;
            }
        }
    }
    assert!(sent.keys().any(|k| k.2 == "browser") && sent.keys().any(|k| k.2 == "url"), "the load has breakdowns");
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct R {
        project: String,
        issue_id: String,
        key: String,
        value: String,
        count: u64,
    }
    let rows: Vec<R> = db
        .client
        .query(&format!(
            "SELECT project, issue_id, key, value, sum(count) AS count FROM {}.issue_breakdown_1h \
             GROUP BY project, issue_id, key, value",
            db.cfg.database
        ))
        .fetch_all()
        .await
        .unwrap();
    let mut stored: Counts = BTreeMap::new();
    for r in rows {
        let k = Key::parse(&r.key).unwrap_or_else(|| panic!("unknown key {}", r.key)).as_str();
        stored.entry((r.project, r.issue_id, k)).or_default().insert(r.value, r.count);
    }
    assert_eq!(stored.keys().collect::<Vec<_>>(), sent.keys().collect::<Vec<_>>(), "the same issues and keys");
    let mut exact = 0;
    for (at, want) in &sent {
        let got = &stored[at];
        assert_eq!(got.values().sum::<u64>(), want.values().sum::<u64>(), "{at:?}: every event counted once");
        if got.contains_key(OTHER) {
            for (v, n) in got.iter().filter(|(v, _)| v.as_str() != OTHER) {
                assert!(want.get(v).is_some_and(|w| n <= w), "{at:?}: {v} {n} of {want:?}");
            }
        } else {
            assert_eq!(got, want, "{at:?}");
            exact += 1;
        }
    }
    assert!(exact * 2 >= sent.len(), "most (issue, key) pairs fit the bound: {exact} of {}", sent.len());
    // The issue page's query: for every issue, the top values by count (then value) and the
    // events with a value, of each key.
    for (project, issue) in
        sent.keys().map(|(p, i, _)| (p.clone(), i.clone())).collect::<std::collections::BTreeSet<_>>()
    {
        let tops =
            tracefold_store::issues::breakdowns(&db.client, &db.cfg.database, &project, &issue, 0).await.unwrap();
        for (k, top) in Key::ALL.into_iter().zip(tops) {
            let got = stored.get(&(project.clone(), issue.clone(), k.as_str())).cloned().unwrap_or_default();
            let mut want: Vec<(String, u64)> = got.into_iter().collect();
            want.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            assert_eq!(top.total, want.iter().map(|v| v.1).sum::<u64>(), "{issue} {k:?}");
            want.truncate(tracefold_store::issues::TOP_VALUES as usize);
            assert_eq!(top.values, want, "{issue} {k:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_go_to_the_dlq_with_their_source_position_and_reason_and_the_rest_are_counted() {
    let db = TestDb::new("dlq").await;
    let pipeline = start(&db).await;
    let (events, truth) = generate(400, 8, 7);
    let deep = format!(
        r#"{{"event_id":"{}","project":"web","message":"m","extra":{}1{}}}"#,
        "d".repeat(32),
        "[".repeat(64),
        "]".repeat(64)
    );
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (b"{this is not json".to_vec(), "malformed"),
        (br#"{"event_id":"0123456789abcdef0123456789abcdef","message":"no project"}"#.to_vec(), "invalid"),
        (
            br#"{"event_id":"1123456789abcdef0123456789abcdef","project":"web","exception":"not a list"}"#.to_vec(),
            "malformed",
        ),
        (b"[1,2,3]".to_vec(), "malformed"),
        (
            br#"{"event_id":"2123456789abcdef0123456789abcdef","project":"web","message":"m","level":"loud"}"#.to_vec(),
            "invalid",
        ),
        (deep.into_bytes(), "too_deep"),
    ];
    // Interleave: bad messages sit between valid ones in the same partitions.
    let mut payloads: Vec<(Option<i32>, Vec<u8>)> = Vec::new();
    let mut bad_at = Vec::new();
    for (i, e) in events.iter().enumerate() {
        payloads.push((None, e.json.clone().into_bytes()));
        if i % 60 == 30 {
            if let Some((p, _)) = bad.get(i / 60) {
                bad_at.push(payloads.len());
                payloads.push((Some((i / 60) as i32 % PARTITIONS), p.clone()));
            }
        }
    }
    assert_eq!(bad_at.len(), bad.len());
    let positions = publish_at(&pipeline.bootstrap_servers(), &pipeline.cfg.topics.events, &payloads).await;

    wait_settled(&pipeline, Duration::from_secs(60)).await;
    assert_eq!(db.wait_for_total(truth.total, Duration::from_secs(30)).await, truth.total);
    assert_eq!(db.per_issue().await, truth.expected());

    let expected: Vec<(Vec<u8>, (i32, i64), &str)> =
        bad.iter().zip(&bad_at).map(|((p, reason), &i)| (p.clone(), positions[i], *reason)).collect();
    assert_dlq_holds(&read_dlq(&pipeline, bad.len()).await, &pipeline.cfg.topics.events, &expected);
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_aggregate_records_go_to_the_dlq_and_the_writer_carries_on() {
    let db = TestDb::new("writer_dlq").await;
    let pipeline = start(&db).await;
    let bootstrap = pipeline.bootstrap_servers();
    let topics = pipeline.cfg.topics.clone();
    let (events, truth) = generate(600, 9, 11);
    let (first, second) = events.split_at(300);
    let as_payloads = |es: &[tracefold_devtools::gen::Generated]| -> Vec<(Option<i32>, Vec<u8>)> {
        es.iter().map(|e| (None, e.json.clone().into_bytes())).collect()
    };
    // Valid aggregates first, so that bad records sit between valid ones.
    publish_at(&bootstrap, &topics.events, &as_payloads(first)).await;
    wait_settled(&pipeline, Duration::from_secs(60)).await;
    let mut record = serde_json::to_value(tracefold_model::AggregateRecord {
        v: 1,
        batch: tracefold_model::BatchRef {
            epoch: "elsewhere".into(),
            topic: topics.events.clone(),
            count: 1,
            ..Default::default()
        },
        project: "web".into(),
        issue_id: "e".repeat(32),
        count: 1,
        ..Default::default()
    })
    .unwrap();
    record.as_object_mut().unwrap().remove("count");
    let bad: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        b"[]".to_vec(),
        br#"{"v":1}"#.to_vec(),
        // A whole record but for its count.
        serde_json::to_vec(&record).unwrap(),
        Vec::new(),
    ];
    let bad_payloads: Vec<(Option<i32>, Vec<u8>)> =
        bad.iter().enumerate().map(|(i, p)| (Some(i as i32 % PARTITIONS), p.clone())).collect();
    let positions = publish_at(&bootstrap, &topics.aggregates, &bad_payloads).await;
    // And more valid aggregates behind them.
    publish_at(&bootstrap, &topics.events, &as_payloads(second)).await;

    wait_settled(&pipeline, Duration::from_secs(60)).await;
    assert_eq!(db.wait_for_total(truth.total, Duration::from_secs(30)).await, truth.total);
    assert_eq!(db.per_issue().await, truth.expected(), "the valid aggregates are counted exactly");
    let expected: Vec<(Vec<u8>, (i32, i64), &str)> =
        bad.iter().zip(&positions).map(|(p, at)| (p.clone(), *at, "malformed")).collect();
    assert_dlq_holds(&read_dlq(&pipeline, bad.len()).await, &topics.aggregates, &expected);
    pipeline.stop().await.unwrap();
}

/// `tracefold dev --sample-events N --exit | head -1`: the reader is gone when the top issues
/// are printed. The command used `println!`, which panics on a closed pipe (exit status 101,
/// the pipeline not drained); now it prints nothing more, stops the pipeline as `--exit` asks,
/// and exits 0. The reader is gone before anything is written, so the outcome does not depend
/// on how much was written before it went away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_exit_ends_cleanly_when_its_reader_is_gone() {
    let db = TestDb::new("dev_closed_pipe").await;
    let dir = std::env::temp_dir().join(format!("tracefold-dev-closed-pipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let args = [
        "dev",
        "--clickhouse-url",
        &db.cfg.url,
        "--database",
        &db.cfg.database,
        "--listen",
        "127.0.0.1:0",
        "--ui-listen",
        "off",
        "--partitions",
        "2",
        "--sample-events",
        "300",
        "--exit",
    ]
    .map(str::to_owned);
    let cwd = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tracefold-under-test"))
            .args(args)
            .current_dir(cwd)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("tracefold runs")
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}, stderr: {stderr}", out.status);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
    assert!(stderr.contains("sample load:"), "the sample load ran: {stderr}");
    assert!(stderr.contains("stopping ..."), "the pipeline was stopped, not abandoned: {stderr}");
}

/// A pipeline whose producer cannot start (here a value it refuses, `http.max_concurrent_requests
/// = 0`, which `tracefold dev` does not check before) stops, and its health names the producer
/// and why. The producer's error used to wait in its task: the pipeline ran on with no ingest,
/// `tracefold dev` printed "running" and its watchdog exited 70 a minute later with "producer:
/// no progress", the reason never shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_cannot_start_stops_the_pipeline_and_says_why() {
    let db = TestDb::new("dev_producer_fails").await;
    let mut cfg = DevConfig { clickhouse: db.cfg.clone(), ..DevConfig::default() };
    cfg.http.max_concurrent_requests = 0;
    let pipeline = Pipeline::start(cfg, "127.0.0.1:0", Some(1), true).await.expect("pipeline starts");
    // A guard, not a timing assertion: the pipeline stops at once, or (before) never.
    let stopped = tokio::time::timeout(Duration::from_secs(30), pipeline.shutdown.wait()).await;
    let problems: Vec<String> =
        pipeline.healths().iter().flat_map(tracefold_runtime::telemetry::Health::problems).collect();
    assert!(stopped.is_ok(), "the pipeline runs on without its producer: {problems:?}");
    assert!(
        problems.iter().any(|p| p.starts_with("producer: died:") && p.contains("http.max_concurrent_requests")),
        "{problems:?}"
    );
    let e = pipeline.stop().await.expect_err("the producer's error is the pipeline's");
    assert!(format!("{e:#}").contains("http.max_concurrent_requests"), "{e:#}");
}
