//! Backpressure: the producer refuses new events while the watched consumer group's lag on a
//! partition of the events topic is over the bound (native 503, Sentry 429 with
//! X-Sentry-Rate-Limits, both with Retry-After), and accepts again once the lag is back under
//! it; `loadgen` waits as told and counts every event once. Real producer, real grouper,
//! librdkafka's mock cluster; no ClickHouse.

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::time::Duration;
use tracefold_devtools::{gen, loadgen};
use tracefold_producer::config::{BackpressureSection, ProjectConfig};
use tracefold_producer::Config;
use tracefold_runtime::devbroker::DevBroker;
use tracefold_runtime::telemetry::Health;
use tracefold_runtime::Shutdown;
use tracefold_tests::procs::{eventually, Observer};

const EVENTS: &str = "tracefold.events";
const PARTITIONS: i32 = 2;
const KEY: &str = "0123456789abcdef0123456789abcdef";

/// The metrics recorder is one per test process: the tests that read counter increments run
/// one at a time.
static METRICS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Server {
    url: String,
    shutdown: Shutdown,
    broker: DevBroker,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A producer on a fresh two-partition broker, refusing while `group` is more than `bound`
/// events behind on a partition.
async fn server(group: &str, bound: u64) -> Server {
    let broker = DevBroker::start(1, &Default::default(), Some(PARTITIONS)).unwrap();
    let mut cfg = Config { kafka: tracefold_tests::kafka(&broker.bootstrap_servers()), ..Config::default() };
    cfg.projects = vec![ProjectConfig {
        slug: "sentry-app".into(),
        id: Some(42),
        keys: vec![KEY.into()],
        rate_per_sec: 0.0,
        burst: 0.0,
        key_rate_per_sec: 0.0,
        key_burst: 0.0,
    }];
    cfg.backpressure = BackpressureSection {
        max_lag_events: Some(bound),
        group_id: group.into(),
        check_interval_ms: 100,
        retry_after_secs: 1,
        ..BackpressureSection::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (shutdown, health) = (Shutdown::new(), Health::default());
    tokio::spawn(tracefold_producer::serve(cfg, listener, shutdown.clone(), health.clone(), Vec::new()));
    eventually("the producer is ready", Duration::from_secs(30), |_| health.is_ready().then_some(())).await;
    Server { url, shutdown, broker }
}

async fn post(
    url: &str,
    headers: &[(&str, &str)],
    body: String,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut r = reqwest::Client::new().post(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.body(body).send().await.unwrap();
    let (status, h) = (resp.status().as_u16(), resp.headers().clone());
    let text = resp.text().await.unwrap();
    (status, h, serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is JSON ({e}): {text}")))
}

fn ndjson(n: usize) -> String {
    (0..n)
        .map(|i| format!(r#"{{"message":"boom {i}","exception":[{{"type":"E","value":"v"}}]}}"#))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn metrics(url: &str) -> String {
    reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap()
}

/// The value of an unlabelled metric (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn commit_to_end(bootstrap: &str, group: &str, ends: &[i64]) {
    let c: BaseConsumer =
        tracefold_runtime::kafka::consumer_config(&tracefold_tests::kafka(bootstrap), group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for (p, end) in ends.iter().enumerate() {
        tpl.add_partition_offset(EVENTS, p as i32, Offset::Offset(*end)).unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_while_the_group_is_behind_and_accepts_once_it_caught_up() {
    let _m = METRICS.lock().await;
    let group = "bp-watched";
    let s = server(group, 50).await;
    let bootstrap = s.broker.bootstrap_servers();
    let observer = Observer::new(&bootstrap);
    let native = format!("{}/api/v1/projects/web/events", s.url);
    let nd = [("content-type", "application/x-ndjson")];

    // Nobody consumes: the lag grows with every accepted request until the producer refuses.
    let mut accepted = 0u64;
    let (h, body) = loop {
        let (status, h, body) = post(&native, &nd, ndjson(20)).await;
        match status {
            200 => accepted += 20,
            503 => break (h, body),
            other => panic!("unexpected {other}: {body}"),
        }
        assert!(accepted < 20_000, "no refusal after {accepted} events with a bound of 50 per partition");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(accepted > 50, "refused only once a partition was more than 50 behind ({accepted} accepted)");
    assert_eq!(h["retry-after"], "1");
    assert_eq!(body["code"], "backpressure", "{body}");
    assert!(body["error"].as_str().unwrap().contains("backpressure"), "{body}");
    // What was refused was not published.
    let published = tracefold_tests::procs::sum(&observer.high_watermarks(EVENTS));
    assert_eq!(published as u64, accepted);
    let (status, _, _) = post(&native, &nd, ndjson(5)).await;
    assert_eq!(status, 503);
    assert_eq!(tracefold_tests::procs::sum(&observer.high_watermarks(EVENTS)), published, "nothing of it published");

    // The Sentry endpoints: 429 as Sentry rate-limits, with the reason.
    let auth = format!("Sentry sentry_version=7, sentry_key={KEY}");
    let sentry_h = [("x-sentry-auth", auth.as_str()), ("content-type", "application/json")];
    let event = r#"{"event_id":"fc6d8c0c43fc46308ea5bc7a3b7d3c64","platform":"python","level":"error","message":"x"}"#;
    let (status, h, body) = post(&format!("{}/api/42/store/", s.url), &sentry_h, event.into()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(h["retry-after"], "1");
    assert_eq!(h["x-sentry-rate-limits"], "1::organization:backpressure");
    assert_eq!(body["code"], "backpressure");
    let envelope = format!("{{\"event_id\":\"fc6d8c0c43fc46308ea5bc7a3b7d3c64\"}}\n{{\"type\":\"event\"}}\n{event}\n");
    let (status, h, _) = post(&format!("{}/api/42/envelope/", s.url), &sentry_h, envelope).await;
    assert_eq!(status, 429);
    assert_eq!(h["x-sentry-rate-limits"], "1::organization:backpressure");
    assert_eq!(h["retry-after"], "1");
    assert_eq!(tracefold_tests::procs::sum(&observer.high_watermarks(EVENTS)), published);
    let m = metrics(&s.url).await;
    assert_eq!(metric(&m, "tracefold_producer_backpressure_refusing"), 1.0, "{m}");
    assert!(metric(&m, "tracefold_producer_backpressure_refused_events_total") >= 7.0, "{m}");
    assert!(metric(&m, "tracefold_producer_backpressure_max_lag_events") > 50.0, "{m}");

    // The group catches up: accepted again.
    commit_to_end(&bootstrap, group, &observer.high_watermarks(EVENTS));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, body) = post(&native, &nd, ndjson(5)).await;
        if status == 200 {
            assert_eq!(body["accepted"], 5);
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(std::time::Instant::now() < deadline, "still refused 60 s after the group caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, body) = post(&format!("{}/api/42/store/", s.url), &sentry_h, event.into()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(metric(&metrics(&s.url).await, "tracefold_producer_backpressure_refusing"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_waits_when_told_and_counts_each_event_once() {
    let _m = METRICS.lock().await;
    let group = tracefold_grouper::config::GrouperSection::default().group_id;
    let s = server(&group, 100).await;
    let bootstrap = s.broker.bootstrap_servers();
    let before = metric(&metrics(&s.url).await, "tracefold_producer_backpressure_refused_events_total");
    // Paced so that the load is still running when the bound (about 200 events over both
    // partitions) is reached, however fast the machine: 3,000 events take 1.5 s unrefused.
    const N: u64 = 3000;
    let opts = loadgen::LoadOptions {
        events: N,
        rate: loadgen::Rate::per_second(2000),
        batch: 50,
        concurrency: 2,
        progress: false,
        gen: gen::GenOptions { issues: 10, now_secs: gen::now_secs(), seed: 7, ..Default::default() },
        max_lag: None,
        max_retries: loadgen::DEFAULT_MAX_RETRIES,
    };
    let target = loadgen::Target::Http(s.url.clone());
    let load = tokio::spawn(async move { loadgen::run(&target, &opts).await });

    // No grouper yet: the load runs into the bound and is told to wait.
    let url = s.url.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while metric(&metrics(&url).await, "tracefold_producer_backpressure_refused_events_total") <= before {
        assert!(std::time::Instant::now() < deadline, "the load was never refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Now the grouper drains the topic, and the load goes on.
    let grouper = tracefold_tests::ServiceThread::grouper(tracefold_tests::grouper_config(&bootstrap));
    let summary =
        tokio::time::timeout(Duration::from_secs(300), load).await.expect("the load finishes").unwrap().unwrap();
    assert_eq!(summary.failed, 0, "{summary:?}");
    assert_eq!(summary.accepted, N, "{summary:?}");
    assert!(summary.waits > 0, "{summary:?}");
    assert!(summary.waited_secs >= summary.waits as f64, "Retry-After is 1 s: {summary:?}");

    // Exactly the accepted events reached the topic, each once.
    let observer = Observer::new(&bootstrap);
    let records = observer.read(EVENTS, &[]);
    assert_eq!(records.len() as u64, summary.accepted);
    let ids: BTreeSet<String> = records
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap()["event_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len() as u64, N, "every event once");
    grouper.stop().unwrap();
}
