//! Retries count once: an SDK that re-sends a request the producer answered with 503 after
//! Kafka had acknowledged part of it does not make those events count twice. The grouper
//! deduplicates by `(project, event_id)` within a window of offsets per partition, rebuilt from
//! the log when a partition is assigned, so a restart decides as a grouper that never stopped.

use rdkafka::consumer::Consumer;
use std::time::{Duration, Instant};
use tracefold_producer::Config;
use tracefold_runtime::devbroker::{DevBroker, DevBrokerOptions};
use tracefold_runtime::telemetry::Health;
use tracefold_runtime::Shutdown;
use tracefold_tests::{generate, grouper_config, kafka, publish, topics, writer_config, ServiceThread, TestDb, Truth};

/// One test at a time: each runs a cluster and services on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Messages ever published to the events topic (sum of the partitions' end offsets).
fn published(bootstrap: &str) -> i64 {
    let c: rdkafka::consumer::BaseConsumer =
        tracefold_runtime::kafka::consumer_config(&kafka(bootstrap), "test-reader").create().unwrap();
    let topic = topics().events;
    let md = c.fetch_metadata(Some(&topic), Duration::from_secs(10)).unwrap();
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| c.fetch_watermarks(&topic, p.id(), Duration::from_secs(10)).unwrap().1)
        .sum()
}

async fn post(client: &reqwest::Client, url: &str, lines: &[&str]) -> (u16, serde_json::Value) {
    let r = client
        .post(url)
        .header("content-type", "application/x-ndjson")
        .body(lines.join("\n"))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("JSON body ({e}): {text}")))
}

/// Kafka acknowledges part of a request (the partitions led by a broker that is down time
/// out), the producer answers 503, the client sends the whole request again once the broker
/// is back: ClickHouse holds every event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_partial_publish_counts_every_event_once() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new("retry_partial").await;
    let broker =
        DevBroker::start_with(&topics(), &DevBrokerOptions { brokers: 3, partitions: Some(6), track_requests: false })
            .unwrap();
    let bootstrap = broker.bootstrap_servers();
    let mut cfg = Config { kafka: kafka(&bootstrap), ..Config::default() };
    cfg.http.delivery_timeout_ms = 2000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url_of = |project: &str| format!("http://{addr}/api/v1/projects/{project}/events");
    let (shutdown, health) = (Shutdown::new(), Health::default());
    tokio::spawn(tracefold_producer::serve(cfg, listener, shutdown.clone(), health.clone(), Vec::new()));
    let t0 = Instant::now();
    while !health.is_ready() {
        assert!(t0.elapsed() < Duration::from_secs(20), "producer ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = reqwest::Client::new();
    // Connected and warm: one event goes through while every broker is up.
    let (warm, truth_warm) = generate(1, 1, 7);
    let warm_line: Vec<&str> = warm.iter().map(|e| e.json.as_str()).collect();
    assert_eq!(post(&client, &url_of(warm[0].project), &warm_line).await.0, 200);

    // One project's events (a request carries one project's).
    let (mut events, _) = generate(600, 12, 8);
    let project = events[0].project;
    events.retain(|e| e.project == project);
    events.truncate(300);
    let url = url_of(project);
    let mut truth = truth_warm;
    for e in &events {
        truth.add(&e.json, e.user);
    }
    let lines: Vec<&str> = events.iter().map(|e| e.json.as_str()).collect();

    // Broker 2 leads two of the six partitions: their events time out, the others are stored.
    broker.cluster().broker_down(2).expect("broker down");
    let (status, body) = post(&client, &url, &lines).await;
    assert_eq!(status, 503, "{body}");
    broker.cluster().broker_up(2).expect("broker up");
    let partial = published(&bootstrap) - 1;
    assert!(partial > 0 && partial < lines.len() as i64, "part of the request was published: {partial}; {body}");

    // The client's retry: the whole request again (until the producer takes it).
    let t0 = Instant::now();
    loop {
        let (status, body) = post(&client, &url, &lines).await;
        if status == 200 {
            assert_eq!(body["accepted"], lines.len());
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the retry is accepted once the broker is back: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let copies = published(&bootstrap) - 1 - lines.len() as i64;
    assert!(copies >= partial, "the retry published the acknowledged events again: {copies} copies");

    let grouper = ServiceThread::grouper(grouper_config(&bootstrap));
    let writer = ServiceThread::writer(writer_config(&bootstrap, &db));
    assert_exact(&db, &truth).await;
    // The copies of what the first attempt published are duplicate outcomes of the project.
    let t0 = Instant::now();
    loop {
        let r =
            tracefold_store::outcomes::outcomes(&db.client, &db.cfg.database, 3 * 3600, Some(project)).await.unwrap();
        let dup: u64 = r.totals.iter().filter(|t| t.outcome == "duplicate").map(|t| t.quantity).sum();
        if dup == partial as u64 {
            assert!(r.totals.iter().filter(|t| t.outcome == "duplicate").all(|t| t.reason == "resent"));
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "duplicate outcomes: {dup} of {partial}: {:?}", r.totals);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    grouper.stop().unwrap();
    writer.stop().unwrap();
    shutdown.trigger();
}

/// Waits for `truth.total` events, then checks that no more arrive and that every issue has
/// its exact count and users.
async fn assert_exact(db: &TestDb, truth: &Truth) {
    let got = db.wait_for_total(truth.total, Duration::from_secs(90)).await;
    assert_eq!(got, truth.total, "every event once");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(db.total_events().await, truth.total, "and no copy later");
    assert_eq!(db.per_issue().await, truth.expected());
}

/// Copies of events the grouper counted before it stopped: the next grouper reads the window
/// before its start offset again and recognises them. A copy further back than the window
/// counts again, as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_grouper_recognises_copies_of_what_it_counted_before() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new("retry_restart").await;
    let broker = DevBroker::start(1, &Default::default(), Some(1)).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let topic = topics().events;
    let (events, mut truth) = generate(400, 10, 9);
    let payloads: Vec<Vec<u8>> = events.iter().map(|e| e.json.clone().into_bytes()).collect();
    let window = 300;
    let mut gcfg = grouper_config(&bootstrap);
    gcfg.grouper.dedup_window_events = window;
    let writer = ServiceThread::writer(writer_config(&bootstrap, &db));

    // The first grouper counts 400 events and stops (committing past them).
    publish(&bootstrap, &topic, &payloads).await;
    let grouper = ServiceThread::grouper(gcfg.clone());
    assert_eq!(db.wait_for_total(400, Duration::from_secs(60)).await, 400);
    grouper.stop().unwrap();

    // Copies: of the last 50 (offsets 350..400, within the window of the next offsets) and of
    // the first 20 (offsets 0..20, further back than 300 offsets): those count again.
    let mut copies: Vec<Vec<u8>> = payloads[350..].to_vec();
    copies.extend(payloads[..20].iter().cloned());
    for e in &events[..20] {
        truth.add(&e.json, e.user);
    }
    publish(&bootstrap, &topic, &copies).await;
    let grouper = ServiceThread::grouper(gcfg);
    assert_exact(&db, &truth).await;
    assert_eq!(truth.total, 420);
    grouper.stop().unwrap();
    writer.stop().unwrap();
}

/// A ClickHouse that accepts connections and never answers (a hung server, or a proxy whose
/// backend is gone): every request of the writer's insert loop is bounded by
/// `writer.insert_timeout_ms`, so the loop keeps trying (the watermark read fails, is counted
/// and tried again after a backoff, with its health beating) instead of hanging in it, and a
/// shutdown ends within the writer's drain deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clickhouse_that_never_answers_times_out_each_request_and_the_writer_keeps_trying() {
    use std::io::Read as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let _serial = SERIAL.lock().await;
    // Reads each request and never answers; counts the watermark reads it was sent.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let watermark_reads = Arc::new(AtomicUsize::new(0));
    let reads = watermark_reads.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let reads = reads.clone();
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                    Err(_) => {}
                }
                if seen.windows(16).any(|w| w == b"src_first_offset") {
                    reads.fetch_add(1, Ordering::SeqCst);
                    break;
                }
            }
            held.push(s);
        }
    });
    let broker = DevBroker::start(1, &topics(), Some(1)).unwrap();
    let b = broker.bootstrap_servers();
    let mut cfg = tracefold_writer::Config { kafka: kafka(&b), ..Default::default() };
    cfg.clickhouse.url = format!("http://{addr}");
    cfg.clickhouse.database = "hunta_never_answers".into();
    cfg.writer.batch_max_age_ms = 100;
    cfg.writer.retry_initial_ms = 100;
    cfg.writer.retry_max_ms = 200;
    cfg.writer.insert_timeout_ms = 500;
    cfg.writer.listen = String::new();
    cfg.rankings.refresh_seconds = 0;
    let writer = ServiceThread::writer(cfg);
    let rec = tracefold_model::AggregateRecord {
        v: 1,
        batch: tracefold_model::BatchRef {
            epoch: "x".into(),
            topic: "e".into(),
            partition: 0,
            first_offset: 0,
            last_offset: 0,
            index: 0,
            count: 1,
        },
        project: "p".into(),
        issue_id: "i".into(),
        minute: 1_795_671_540,
        count: 1,
        first_seen_ms: 1_795_671_540_000,
        last_seen_ms: 1_795_671_540_000,
        ..Default::default()
    };
    publish(&b, &topics().aggregates, &[serde_json::to_vec(&rec).unwrap()]).await;
    // Tried, timed out, and tried again (well within the loop's liveness deadline).
    let start = Instant::now();
    while watermark_reads.load(Ordering::SeqCst) < 3 {
        if start.elapsed() > Duration::from_secs(40) {
            let why = writer.describe();
            // Not joined: a writer hung in a request would never stop.
            std::mem::forget(writer);
            panic!("the watermark read is tried again after a timeout: {watermark_reads:?} reads; {why}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(writer.health.liveness().is_ok(), "{:?}", writer.health.liveness());
    // A shutdown ends (the drain gives up on a ClickHouse that never answers after 20 s).
    let stopped = tokio::task::spawn_blocking(move || writer.stop());
    let stopped = tokio::time::timeout(Duration::from_secs(60), stopped).await;
    assert!(stopped.is_ok(), "the writer stops although ClickHouse never answers");
}
