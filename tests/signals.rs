//! Signals end to end: events through the pipeline (HTTP producer or the events topic, grouper,
//! writer, librdkafka's mock cluster, a real ClickHouse) reach the detector, which signals to
//! the signals topic and to local receivers standing in for the webhook, Slack, Discord and
//! Telegram. Event times lie in the past (or a little ahead, after a resolution), so minutes
//! pass at once.
//!
//! No test sleeps for a fixed time: each waits, with a deadline, for a condition that says the
//! work is done. ClickHouse holds every event sent (so every aggregate record is on the
//! aggregates topic), then the detector has consumed every aggregate record and evaluated the
//! minutes they touch (`tracefold_detector_records_total` equal to the topic's end), so what it
//! signals for them has been signalled; a receiver holds what it should, or a notification
//! outcome was counted (`tracefold_detector_notifications_total`).
//!
//! Most tests run the dev pipeline (`tracefold_devtools::dev::Pipeline`, the detector on a thread of
//! this process: its metrics are this process's, compared with their values when the test
//! started). The restart tests run the real detector binary as a child process with the grouper
//! and writer on threads. Every test takes [`SERIAL`] first: they run one at a time.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracefold_detector::config::DetectorSection;
use tracefold_detector::engine::{EngineConfig, ThresholdRule};
use tracefold_detector::metrics::{
    FUTURE_RECORDS_TOTAL, LATE_RECORDS_TOTAL, NOTIFICATIONS_TOTAL, RECORDS_TOTAL, RESOLVED_ISSUES,
    SIGNALS_DEDUPLICATED_TOTAL, SIGNALS_TOTAL, WATERMARK_SECONDS,
};
use tracefold_detector::notify::{request, sign, Channel, Retry, Target};
use tracefold_detector::signal::{Kind, Signal};
use tracefold_devtools::dev::{DevConfig, Pipeline};
use tracefold_runtime::devbroker::DevBroker;
use tracefold_tests::procs::{Env, Svc};
use tracefold_tests::{ServiceThread, TestDb};

/// Taken first by every test: each starts a whole pipeline, and CI has two cores. A tokio
/// mutex has no poisoning: a failed test releases it like a passed one.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long any one awaited condition may take.
const DEADLINE: Duration = Duration::from_secs(120);

const EVENTS: &str = "tracefold.events";
const AGGREGATES: &str = "tracefold.aggregates";
const SIGNALS: &str = "tracefold.signals";

// ---------------------------------------------------------------------------------------------
// Waiting

/// Polls `check` until it is done (`Ok`); after [`DEADLINE`], fails with what it said last.
async fn wait_for<T>(what: &str, check: impl FnMut() -> Result<T, String>) -> T {
    tracefold_tests::wait_for(what, DEADLINE, check).await
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The start of the minute `secs` falls in.
fn minute_of(secs: i64) -> i64 {
    secs / 60 * 60
}

/// A minute as signals show it.
fn rfc3339(minute: i64) -> String {
    tracefold_model::time::format_rfc3339(minute * 1000).replace(".000Z", "Z")
}

// ---------------------------------------------------------------------------------------------
// Events

/// One event; its exception type (and function) makes its issue.
#[derive(Debug, Clone)]
struct Ev {
    project: &'static str,
    ty: &'static str,
    func: &'static str,
    ts: i64,
    user: u64,
    release: &'static str,
    env: &'static str,
    level: &'static str,
}

fn ev(ty: &'static str, ts: i64, user: u64) -> Ev {
    Ev { project: "web", ty, func: "handle", ts, user, release: "web@2.0", env: "production", level: "error" }
}

impl Ev {
    fn func(self, func: &'static str) -> Self {
        Self { func, ..self }
    }
    fn project(self, project: &'static str) -> Self {
        Self { project, ..self }
    }
    fn release(self, release: &'static str) -> Self {
        Self { release, ..self }
    }
    fn env(self, env: &'static str) -> Self {
        Self { env, ..self }
    }
    fn level(self, level: &'static str) -> Self {
        Self { level, ..self }
    }

    /// The event as an SDK sends it (one NDJSON line).
    fn json(&self) -> String {
        let Ev { ty, func, ts, user, release, env, level, .. } = self;
        format!(
            r#"{{"timestamp":{ts},"platform":"javascript","level":"{level}","release":"{release}","environment":"{env}","user":{{"id":"u{user}"}},"request":{{"url":"https://shop.example.com/cart"}},"contexts":{{"browser":{{"name":"Firefox","version":"133.0"}},"os":{{"name":"Linux","version":"6.8"}}}},"exception":[{{"type":"{ty}","value":"boom","stacktrace":{{"frames":[{{"function":"{func}","filename":"https://cdn.example.com/app.js","in_app":true}}]}}}}]}}"#
        )
    }

    /// The event as a service publishes it straight to the events topic: with `event_id` and
    /// `project`.
    fn kafka_json(&self) -> String {
        static N: AtomicU64 = AtomicU64::new(1);
        let id = N.fetch_add(1, Ordering::Relaxed);
        format!(r#"{{"event_id":"{id:032x}","project":"{}",{}"#, self.project, &self.json()[1..])
    }
}

/// `per_minute` events of `ty` in each minute of `minutes` from `t0`, users cycling over
/// `users`.
fn steady(ty: &'static str, t0: i64, minutes: std::ops::Range<i64>, per_minute: i64, users: u64) -> Vec<Ev> {
    let mut out = Vec::new();
    for m in minutes {
        for i in 0..per_minute {
            out.push(ev(ty, t0 + m * 60 + i * 60 / per_minute.max(1), (m * per_minute + i) as u64 % users));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Receivers

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Hit {
    at: Instant,
    headers: HeaderMap,
    body: Bytes,
    accepted: bool,
}

type Hits = Arc<Mutex<Vec<Hit>>>;

/// A local HTTP receiver (any path: the Telegram channel posts to `/bot<token>/sendMessage`).
#[derive(Clone)]
struct Receiver {
    /// `http://127.0.0.1:<port>/hook`.
    url: String,
    hits: Hits,
}

impl Receiver {
    async fn start() -> Self {
        Self::refusing_first(0).await
    }

    /// Answers 500 to its first `n` requests, 200 to the others.
    async fn refusing_first(n: usize) -> Self {
        let hits: Hits = Arc::default();
        let app = axum::Router::new()
            .fallback(axum::routing::post(
                |State((hits, n)): State<(Hits, usize)>, headers: HeaderMap, body: Bytes| async move {
                    let mut hits = hits.lock().unwrap();
                    let accepted = hits.len() >= n;
                    hits.push(Hit { at: Instant::now(), headers, body, accepted });
                    if accepted {
                        StatusCode::OK
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                },
            ))
            .with_state((hits.clone(), n));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        Self { url, hits }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// The bodies of the requests it answered 200.
    fn bodies(&self) -> Vec<serde_json::Value> {
        self.hits().iter().filter(|h| h.accepted).map(|h| serde_json::from_slice(&h.body).unwrap()).collect()
    }

    /// The signals it took (a webhook receiver).
    fn signals(&self) -> Vec<Signal> {
        self.hits().iter().filter(|h| h.accepted).map(|h| serde_json::from_slice(&h.body).unwrap()).collect()
    }
}

/// A URL whose port refuses connections at once (bound a moment ago, then closed).
fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("http://127.0.0.1:{port}/nothing")
}

fn channel(name: &str, target: Target, types: &[Kind]) -> Channel {
    Channel { name: name.into(), target, types: types.to_vec(), projects: vec![], rules: vec![], cooldown_min: 30 }
}

fn webhook(r: &Receiver) -> Target {
    Target::Webhook { url: r.url.clone(), secret: String::new() }
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// `name` in Prometheus text, summed over the series whose labels include each of `labels`
/// (`key="value"`). Absent is zero: a counter appears on its first increment.
fn metric_in(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && labels.iter().all(|x| l.contains(x)))
        .map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).expect("a metric value"))
        .sum()
}

fn label(k: &str, v: &str) -> String {
    format!("{k}=\"{v}\"")
}

/// This process's metrics (an in-process detector's), relative to the start of the test:
/// earlier tests' detectors counted into the same counters.
struct Counters {
    start: String,
}

impl Counters {
    /// Installs the process's recorder (before a detector counts anything) and takes the
    /// values to compare with.
    fn begin() -> Self {
        Self { start: tracefold_runtime::telemetry::metrics_handle().render() }
    }

    fn delta(&self, name: &str, labels: &[&str]) -> f64 {
        let now = tracefold_runtime::telemetry::metrics_handle().render();
        metric_in(&now, name, labels) - metric_in(&self.start, name, labels)
    }

    fn gauge(&self, name: &str) -> f64 {
        metric_in(&tracefold_runtime::telemetry::metrics_handle().render(), name, &[])
    }
}

/// Signals produced, by type, from metrics text or a delta function.
fn by_type(count: impl Fn(&[&str]) -> f64) -> BTreeMap<&'static str, u64> {
    [Kind::NewIssue, Kind::Regression, Kind::Spike, Kind::Threshold]
        .into_iter()
        .map(|k| (k.as_str(), count(&[label("type", k.as_str()).as_str()]) as u64))
        .filter(|(_, n)| *n > 0)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Kafka

fn kafka_client(bootstrap: &str, group: &str) -> BaseConsumer {
    tracefold_runtime::kafka::consumer_config(&tracefold_tests::kafka(bootstrap), group).create().unwrap()
}

/// Per partition: (low, high) watermarks of `topic`.
fn watermarks(bootstrap: &str, topic: &str) -> BTreeMap<i32, (i64, i64)> {
    let c = kafka_client(bootstrap, "signals-test-watermarks");
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    md.topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| (p.id(), c.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).unwrap()))
        .collect()
}

/// Records ever written to `topic` (the sum of its partitions' ends).
fn end_of(bootstrap: &str, topic: &str) -> i64 {
    watermarks(bootstrap, topic).values().map(|(_, high)| high).sum()
}

/// Everything on the signals topic: (key, signal).
fn signals_on_topic(bootstrap: &str) -> Vec<(String, Signal)> {
    let ends: BTreeMap<i32, (i64, i64)> =
        watermarks(bootstrap, SIGNALS).into_iter().filter(|(_, (low, high))| high > low).collect();
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    let c = kafka_client(bootstrap, "signals-test-reader");
    let mut tpl = TopicPartitionList::new();
    for (p, (low, _)) in &ends {
        tpl.add_partition_offset(SIGNALS, *p, Offset::Offset(*low)).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut done = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.len() < ends.len() {
        assert!(Instant::now() < deadline, "the signals topic could not be read to its end {ends:?}");
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
            out.push((key, serde_json::from_slice(m.payload().unwrap()).unwrap()));
            if m.offset() + 1 >= ends[&m.partition()].1 {
                done.insert(m.partition());
            }
        }
    }
    out
}

/// Waits until the signals topic holds `n` signals, and returns them.
async fn wait_topic(bootstrap: &str, n: usize) -> Vec<Signal> {
    let on = wait_for(&format!("{n} signals on the signals topic"), || {
        let on = signals_on_topic(bootstrap);
        if on.len() >= n {
            Ok(on)
        } else {
            Err(format!("{} so far", on.len()))
        }
    })
    .await;
    for (key, s) in &on {
        assert_eq!(key, &format!("{}/{}", s.project, s.issue_id), "keyed by issue");
    }
    let ids: BTreeSet<&str> = on.iter().map(|(_, s)| s.signal_id.as_str()).collect();
    assert_eq!(ids.len(), on.len(), "each signal once on the topic: {on:#?}");
    assert_eq!(on.len(), n, "exactly {n} signals on the topic: {on:#?}");
    on.into_iter().map(|(_, s)| s).collect()
}

// ---------------------------------------------------------------------------------------------
// The dev pipeline, detector inside

struct Stack {
    /// `None` once stopped.
    pipeline: Option<Pipeline>,
    db: TestDb,
    counters: Counters,
    /// Events sent so far.
    events: u64,
}

impl Stack {
    async fn start(name: &str, detector: DetectorSection) -> Self {
        // One partition keeps event time in order end to end.
        Self::start_with(name, detector, 1).await
    }

    async fn start_with(name: &str, detector: DetectorSection, partitions: i32) -> Self {
        let counters = Counters::begin();
        let db = TestDb::new(name).await;
        let mut cfg = DevConfig { clickhouse: db.cfg.clone(), detector, ..DevConfig::default() };
        cfg.grouper.batch_max_age_ms = 300;
        cfg.writer.batch_max_age_ms = 300;
        let pipeline = Pipeline::start(cfg, "127.0.0.1:0", Some(partitions), true).await.unwrap();
        Self { pipeline: Some(pipeline), db, counters, events: 0 }
    }

    fn bootstrap(&self) -> String {
        self.pipeline().bootstrap_servers()
    }

    /// Posts `events` to the producer, per project, as NDJSON.
    async fn post(&mut self, events: &[Ev]) {
        let client = reqwest::Client::new();
        let mut by_project: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for e in events {
            by_project.entry(e.project).or_default().push(e.json());
        }
        for (project, lines) in by_project {
            for chunk in lines.chunks(500) {
                let r = client
                    .post(format!("http://{}/api/v1/projects/{project}/events", self.pipeline().http_addr))
                    .header("content-type", "application/x-ndjson")
                    .body(chunk.join("\n"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
            }
        }
        self.events += events.len() as u64;
    }

    /// Publishes event JSON lines (with `event_id` and `project`) straight to the events topic.
    async fn publish(&mut self, payloads: Vec<Vec<u8>>) {
        tracefold_tests::publish(&self.bootstrap(), EVENTS, &payloads).await;
        self.events += payloads.len() as u64;
    }

    /// Waits until ClickHouse holds every event sent and the detector has consumed every
    /// aggregate record and evaluated their minutes: what it signals for them is signalled.
    async fn settle(&self) {
        assert_eq!(self.db.wait_for_total(self.events, DEADLINE).await, self.events, "every event stored");
        let end = end_of(&self.bootstrap(), AGGREGATES);
        wait_for("the detector consumed every aggregate record", || {
            let n = self.counters.delta(RECORDS_TOTAL, &[]) as i64;
            assert!(n <= end, "the detector consumed {n} records of {end}: some twice");
            if n == end {
                Ok(())
            } else {
                Err(format!("{n} of {end}"))
            }
        })
        .await;
    }

    /// Signals produced since the test started, by type.
    fn produced(&self) -> BTreeMap<&'static str, u64> {
        by_type(|l| self.counters.delta(SIGNALS_TOTAL, l))
    }

    fn notifications(&self, channel: &str, outcome: &str) -> u64 {
        let (c, o) = (label("channel", channel), label("outcome", outcome));
        self.counters.delta(NOTIFICATIONS_TOTAL, &[c.as_str(), o.as_str()]) as u64
    }

    async fn wait_notifications(&self, want: &[(&str, &str, u64)]) {
        wait_for("notification outcomes", || {
            let got: Vec<(&str, &str, u64)> = want.iter().map(|(c, o, _)| (*c, *o, self.notifications(c, o))).collect();
            assert!(got.iter().zip(want).all(|(g, w)| g.2 <= w.2), "more than expected: {got:?}, want {want:?}");
            if got.iter().zip(want).all(|(g, w)| g.2 >= w.2) {
                Ok(())
            } else {
                Err(format!("{got:?}, want {want:?}"))
            }
        })
        .await;
        for (c, o, n) in want {
            assert_eq!(self.notifications(c, o), *n, "{c} {o}");
        }
    }

    /// Waits until the detector holds `n` issues as resolved (it has read the statuses).
    async fn wait_resolved(&self, n: f64, what: &str) {
        wait_for(what, || match self.counters.gauge(RESOLVED_ISSUES) {
            g if (g - n).abs() < 0.5 => Ok(()),
            g => Err(format!("{g} resolved")),
        })
        .await;
    }

    fn pipeline(&self) -> &Pipeline {
        self.pipeline.as_ref().expect("running")
    }

    async fn stop(mut self) {
        self.pipeline.take().expect("running").stop().await.unwrap();
    }
}

impl Drop for Stack {
    /// A test that failed stops its services too: its detector must not count into the next
    /// test's metrics (notifications still being retried).
    fn drop(&mut self) {
        if let Some(p) = &self.pipeline {
            p.shutdown.trigger();
        }
    }
}

/// Records `status` for an issue of project `web` (as `tracefold issue resolve|reopen` does)
/// and returns when it was recorded, Unix seconds (ClickHouse's clock): an event after it is
/// "seen again".
async fn set_status(db: &TestDb, issue_id: &str, status: &str, release: &str) -> i64 {
    let change = tracefold_store::issues::StatusChange {
        project: "web",
        issue_id,
        status: status.parse().unwrap(),
        actor: "signals-test",
        release,
        note: "",
    };
    tracefold_store::issues::set_status(&db.client, &db.cfg.database, &change).await.unwrap();
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct At {
        at: u32,
    }
    let q = format!("SELECT toUInt32(max(changed_at)) AS at FROM {}.issue_status_log", db.cfg.database);
    i64::from(db.client.query(&q).fetch_one::<At>().await.unwrap().at)
}

/// Waits until ClickHouse records `n` signals delivered to the channel named `channel`: a
/// detector starting later hands again to a channel what it has no `delivered` row of.
async fn wait_delivered(db: &TestDb, channel: &str, n: u64) {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Count {
        n: u64,
    }
    let q = format!(
        "SELECT count(DISTINCT signal_id) AS n FROM {}.signal_deliveries WHERE channel = ? AND outcome = 'delivered'",
        db.cfg.database
    );
    let start = Instant::now();
    loop {
        let got = db.client.query(&q).bind(channel).fetch_one::<Count>().await.unwrap().n;
        assert!(got <= n, "{got} signals delivered to {channel}, more than {n}");
        if got == n {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "{n} deliveries to {channel} recorded: not within {DEADLINE:?}; {got}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn issue_of(signals: &[Signal], title: &str) -> String {
    signals
        .iter()
        .find(|s| s.title == title)
        .unwrap_or_else(|| panic!("no signal for {title}: {signals:#?}"))
        .issue_id
        .clone()
}

// ---------------------------------------------------------------------------------------------
// Pipeline tests

/// A steady hour of generated traffic (six issues of six projects, about 8 events a minute
/// each, event times spread over the past hour), one issue with ten times its rate in one
/// minute, and one event dated 23 hours ahead (a phone with a wrong clock), all sent at once
/// in shuffled order through three partitions: the detector signals each issue as new, the
/// burst as the only spike, and the event from the future moves no watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_hour_sent_at_once_in_any_order_raises_only_the_real_spike_and_a_future_event_moves_nothing() {
    let _serial = SERIAL.lock().await;
    let mut stack = Stack::start_with("signals_replay", DetectorSection::default(), 3).await;
    let now = now_secs();
    let mut gen = tracefold_devtools::gen::Generator::new(tracefold_devtools::gen::GenOptions {
        issues: 6,
        zipf_s: 0.0,
        seed: 13,
        spread_secs: 3600,
        now_secs: now,
        ..Default::default()
    });
    let mut payloads = Vec::new();
    let mut issues = BTreeSet::new();
    for _ in 0..6 * 60 * 8 {
        let g = gen.next_event();
        issues.insert(g.issue);
        payloads.push(g.json.into_bytes());
    }
    // The bursting issue: 8 a minute over the hour, and 80 more in one minute.
    let burst_minute = minute_of(now - 10 * 60);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64: a seeded order without another dependency.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..60 * 8 {
        let ts = now - 3600 + (next() % 3600) as i64;
        payloads.push(ev("BurstError", ts, i).func("burst").kafka_json().into_bytes());
    }
    for i in 0..80 {
        payloads
            .push(ev("BurstError", burst_minute + (i % 60) as i64, 1000 + i).func("burst").kafka_json().into_bytes());
    }
    payloads.push(ev("ClockError", now + 23 * 3600, 7).func("skewed").kafka_json().into_bytes());
    for i in (1..payloads.len()).rev() {
        payloads.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    stack.publish(payloads).await;
    stack.settle().await;
    // Every partition has reached the newest minute of the hour (the event from the future
    // counts as received, now): the minutes before it are evaluated. (The gauge is this
    // detector's: each detector sets it to 0 when it starts, and the tests run one at a time.)
    let latest = minute_of(now);
    wait_for("the watermark reached the newest minute", || match stack.counters.gauge(WATERMARK_SECONDS) as i64 {
        w if w >= latest => Ok(()),
        w => Err(format!("watermark {w}, want {latest}")),
    })
    .await;
    let watermark = stack.counters.gauge(WATERMARK_SECONDS) as i64;
    assert!(watermark <= now_secs(), "the event dated a day ahead did not move the watermark: {watermark}");
    // One more event, read after the watermark got there: once it is counted, every judgement
    // of the minutes before has been signalled.
    stack.publish(vec![ev("BurstError", now_secs(), 1).func("burst").kafka_json().into_bytes()]).await;
    stack.settle().await;
    let new_issues = issues.len() as u64 + 2;
    let said: Vec<(Kind, String, String, u64, u32)> = signals_on_topic(&stack.bootstrap())
        .into_iter()
        .map(|(_, s)| (s.kind, s.title, s.minute, s.count, s.window_minutes))
        .filter(|s| s.0 != Kind::NewIssue)
        .collect();
    assert_eq!(
        stack.produced(),
        BTreeMap::from([("new_issue", new_issues), ("spike", 1)]),
        "burst in {}: {said:?}",
        rfc3339(burst_minute)
    );
    let on_topic = wait_topic(&stack.bootstrap(), new_issues as usize + 1).await;
    let spike = on_topic.iter().find(|s| s.kind == Kind::Spike).unwrap();
    assert_eq!(spike.title, "BurstError: boom");
    let first = minute_of(tracefold_model::time::parse_rfc3339(&spike.minute).unwrap() / 1000)
        - 60 * (i64::from(spike.window_minutes) - 1);
    assert_eq!(first, burst_minute, "the burst's minute: {spike:?}");
    assert!(spike.count >= 80, "{spike:?}");
    let clock = on_topic.iter().find(|s| s.title == "ClockError: boom").expect("the phone's issue is new");
    assert_eq!(clock.kind, Kind::NewIssue);
    assert!(stack.counters.delta(FUTURE_RECORDS_TOTAL, &[]) >= 1.0, "the future-dated record was counted");
    assert_eq!(stack.counters.delta(LATE_RECORDS_TOTAL, &[]), 0.0, "nothing beyond the allowed lateness");
    stack.stop().await;
}

/// New issues, and spikes by the rule (at least 3x the issue's own baseline, 5 standard
/// deviations, 10 events; without 30 minutes of history, against the project's baseline)
/// reach every channel in its format and the signals topic; a detector starting over in a new
/// consumer group re-reads every aggregate and signals nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_issues_and_spikes_reach_every_channel_and_a_detector_starting_over_signals_nothing_again() {
    let _serial = SERIAL.lock().await;
    let hook = Receiver::start().await;
    let (slack, discord, telegram) = (Receiver::start().await, Receiver::start().await, Receiver::start().await);
    let telegram_api = telegram.url.trim_end_matches("/hook").to_owned();
    let tg = Target::Telegram { api: telegram_api, token: "X".into(), chat_id: "42".into() };
    let detector = DetectorSection {
        channels: vec![
            channel("hook", Target::Webhook { url: hook.url.clone(), secret: "s3cret".into() }, &[]),
            channel("slack", Target::Slack { url: slack.url.clone() }, &[Kind::Spike]),
            channel("discord", Target::Discord { url: discord.url.clone() }, &[Kind::Spike]),
            channel("telegram", tg.clone(), &[Kind::Spike]),
            // A dead endpoint, retried in the background.
            channel("dead", Target::Webhook { url: dead_url(), secret: String::new() }, &[]),
        ],
        ..DetectorSection::default()
    };
    let mut stack = Stack::start("signals", detector).await;
    let t0 = minute_of(now_secs() - 3 * 3600);
    let typeerror = |m: i64, n: i64, user0: u64| -> Vec<Ev> {
        (0..n).map(|i| ev("TypeError", t0 + m * 60 + i % 60, user0 + i as u64).func("renderCart")).collect()
    };
    // Each rule of a spike is needed: three minutes that fail one rule each are no spike.
    // 45 minutes of exactly 8 a minute; minute 30 at 24: 5 standard deviations above (23) and
    // 10 events, but under 3x (25.5); minute 45 at 400.
    let mut first = Vec::new();
    for m in 0..45 {
        first.extend(typeerror(m, if m == 30 { 24 } else { 8 }, (m as u64 * 8) % 50));
    }
    first.extend(typeerror(45, 400, 1000));
    // A rare issue (one event every ten minutes) with 9 in one minute: over 3x and 5 standard
    // deviations (about 3.4 and 7.5), under 10 events.
    for m in [0, 10, 20, 30, 40] {
        first.push(ev("SyntaxError", t0 + m * 60, 7).func("parseConfig"));
    }
    first.extend((0..9).map(|i| ev("SyntaxError", t0 + 44 * 60 + i, i as u64).func("parseConfig")));
    // A noisy issue of project api (20 and 0 in turn) with 55 in minute 40: over 3x its mean
    // (about 50) and 10 events, under 5 of its standard deviations (about 60).
    for m in 0..45 {
        let n = if m == 40 {
            55
        } else if m % 2 == 0 {
            20
        } else {
            0
        };
        first.extend((0..n).map(|i| ev("NoisyError", t0 + m * 60 + i % 60, i as u64).func("poll").project("api")));
    }
    stack.post(&first).await;
    // The issues of web have their history (the minutes up to 43 are closed) before a new
    // issue bursts: a cold issue is judged against the baselines of its project's warm issues.
    stack.settle().await;
    let mut second = Vec::new();
    for m in 46..51 {
        second.extend(typeerror(m, 8, 0));
    }
    second.extend((0..300).map(|i| ev("ReferenceError", t0 + 47 * 60 + i % 60, 5000 + i as u64).func("loadUser")));
    second.push(ev("RangeError", t0 + 48 * 60, 7).func("checkout"));
    stack.post(&second).await;
    stack.settle().await;
    assert_eq!(stack.produced(), BTreeMap::from([("new_issue", 5), ("spike", 2)]));

    stack
        .wait_notifications(&[
            ("webhook", "sent", 7),
            ("slack", "sent", 2),
            ("discord", "sent", 2),
            ("telegram", "sent", 2),
        ])
        .await;
    let signals = hook.signals();
    assert_eq!(signals.len(), 7, "{signals:#?}");
    // Every webhook body is signed with the channel's secret.
    for h in hook.hits() {
        let expected = format!("sha256={}", sign("s3cret", std::str::from_utf8(&h.body).unwrap()));
        assert_eq!(h.headers.get("x-tracefold-signature").unwrap().to_str().unwrap(), expected);
    }
    let mut new_titles: Vec<&str> =
        signals.iter().filter(|s| s.kind == Kind::NewIssue).map(|s| s.title.as_str()).collect();
    new_titles.sort_unstable();
    assert_eq!(
        new_titles,
        ["NoisyError: boom", "RangeError: boom", "ReferenceError: boom", "SyntaxError: boom", "TypeError: boom"]
    );
    let mut spikes: Vec<&Signal> = signals.iter().filter(|s| s.kind == Kind::Spike).collect();
    spikes.sort_by(|a, b| a.minute.cmp(&b.minute));
    let spiked: Vec<(&str, &str)> = spikes.iter().map(|s| (s.title.as_str(), s.minute.as_str())).collect();
    assert_eq!(
        spiked,
        [("TypeError: boom", rfc3339(t0 + 45 * 60).as_str()), ("ReferenceError: boom", rfc3339(t0 + 47 * 60).as_str())],
        "only the two bursts are spikes: not under 3x, not under 10 events, not under 5 standard deviations"
    );
    let s = spikes[0];
    assert_eq!((s.count, s.window_minutes), (400, 1));
    assert!(s.baseline_per_minute > 6.0 && s.baseline_per_minute < 10.0, "its own baseline: {}", s.baseline_per_minute);
    assert_eq!(s.top_frames, ["https://cdn.example.com/app.js in renderCart"]);
    assert_eq!(
        (s.request_url.as_str(), s.browser.as_str(), s.os.as_str()),
        ("https://shop.example.com/cart", "Firefox 133.0", "Linux 6.8")
    );
    assert_eq!((s.release.as_str(), s.environment.as_str()), ("web@2.0", "production"));
    assert_eq!(s.command, format!("tracefold issue {} --project web", s.issue_id));
    // The new issue had no history of its own: its project's baseline, the mean of TypeError's
    // (about 8) and the rare issue's (under 1), not api's noisy issue's (about 16).
    let cold = spikes[1];
    assert_eq!(cold.count, 300);
    assert!(
        cold.baseline_per_minute > 3.0 && cold.baseline_per_minute < 6.0,
        "the project's baseline: {}",
        cold.baseline_per_minute
    );
    // The chat channels only take spikes, each in its own format: exactly what the notifier's
    // request builder makes for each signal.
    let expect = |t: &Target| -> BTreeSet<String> { spikes.iter().map(|s| request(t, s).1.to_string()).collect() };
    let got = |r: &Receiver| -> BTreeSet<String> { r.bodies().iter().map(ToString::to_string).collect() };
    assert_eq!(got(&slack), expect(&Target::Slack { url: String::new() }));
    assert!(slack
        .bodies()
        .iter()
        .any(|b| b["text"].as_str().unwrap().starts_with("*Spike in web: TypeError: boom (400 events in 1 min")));
    assert_eq!(got(&discord), expect(&Target::Discord { url: String::new() }));
    assert_eq!(got(&telegram), expect(&tg));
    assert_eq!((slack.hits().len(), discord.hits().len(), telegram.hits().len()), (2, 2, 2));
    // The signals topic holds the same signals, keyed by issue.
    let on_topic = wait_topic(&stack.bootstrap(), 7).await;
    let ids = |v: &[Signal]| -> BTreeSet<String> { v.iter().map(|s| s.signal_id.clone()).collect() };
    assert_eq!(ids(&on_topic), ids(&signals));

    // A detector starting over in a new consumer group (the real binary) re-reads every
    // aggregate: known issues and recent counts come from ClickHouse, sent signals from the
    // topic; it signals nothing.
    // Nor does it notify again: the webhook's deliveries are recorded.
    wait_delivered(&stack.db, "hook", 7).await;
    let env = child_env("signals-restart", &stack.bootstrap(), &stack.db);
    write_detector_toml(
        &env,
        "tracefold-detector-restarted",
        "",
        &[("hook", Target::Webhook { url: hook.url.clone(), secret: "s3cret".into() })],
    );
    let restarted = env.spawn("detector");
    let end = end_of(&stack.bootstrap(), AGGREGATES);
    wait_child_consumed(&restarted, end).await;
    assert_eq!(child_produced(&restarted), BTreeMap::new(), "no signal again after a restart");
    assert_eq!(hook.hits().len(), 7);
    drop(restarted);
    let _ = std::fs::remove_dir_all(&env.config_dir);
    stack.stop().await;
}

/// Threshold rules: more than N events, or N distinct users, in M minutes, for issues of the
/// rule's project, environment and level only; each fires once per window, to the channels
/// routed to its rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_count_events_or_users_in_a_window_filtered_by_project_environment_and_level() {
    let _serial = SERIAL.lock().await;
    let (all, users_only) = (Receiver::start().await, Receiver::start().await);
    let detector = DetectorSection {
        engine: EngineConfig {
            thresholds: vec![
                ThresholdRule {
                    name: "web-prod-errors".into(),
                    project: Some("web".into()),
                    environment: Some("production".into()),
                    level: Some("error".into()),
                    events: Some(20),
                    users: None,
                    minutes: 3,
                },
                ThresholdRule {
                    name: "many-users".into(),
                    project: None,
                    environment: None,
                    level: None,
                    events: None,
                    users: Some(5),
                    minutes: 2,
                },
            ],
            ..EngineConfig::default()
        },
        channels: vec![
            channel("all", webhook(&all), &[Kind::Threshold]),
            Channel { rules: vec!["many-users".into()], ..channel("users", webhook(&users_only), &[Kind::Threshold]) },
        ],
        ..DetectorSection::default()
    };
    let mut stack = Stack::start("thresholds", detector).await;
    let t0 = minute_of(now_secs() - 2 * 3600);
    let two_users = |ty: &'static str, minutes: std::ops::Range<i64>, n: i64| steady(ty, t0, minutes, n, 2);
    let mut events = Vec::new();
    // 8 a minute for 4 minutes: 24 in minutes 0-2, more than 20: fires once (then cools for
    // its window).
    events.extend(two_users("CartError", 0..4, 8));
    // 30 a minute, but in staging, in project api, or warnings: not for the first rule.
    events.extend(two_users("StagingError", 0..3, 30).into_iter().map(|e| e.env("staging")));
    events.extend(two_users("ApiError", 0..3, 30).into_iter().map(|e| e.project("api")));
    events.extend(two_users("SlowWarning", 0..3, 30).into_iter().map(|e| e.level("warning")));
    // Exactly 20 events: not more than 20.
    events.extend(two_users("BoundaryError", 0..1, 20));
    // 7 users in minute 1: more than 5 (any project, environment, level); 5 users: not.
    events.extend((0..7).map(|u| ev("UsersError", t0 + 60 + u, 100 + u as u64)));
    events.extend((0..5).map(|u| ev("FewUsersError", t0 + 60 + u, 200 + u as u64)));
    // Closes the minutes up to 5.
    events.push(ev("CloserError", t0 + 7 * 60, 1));
    stack.post(&events).await;
    stack.settle().await;
    assert_eq!(stack.produced(), BTreeMap::from([("new_issue", 8), ("threshold", 2)]));
    stack.wait_notifications(&[("webhook", "sent", 3)]).await;
    let mut got: Vec<(String, String, String, u64, u64, u32)> =
        all.signals().into_iter().map(|s| (s.rule, s.title, s.minute, s.count, s.users, s.window_minutes)).collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("many-users".into(), "UsersError: boom".into(), rfc3339(t0 + 60), 7, 7, 2),
            ("web-prod-errors".into(), "CartError: boom".into(), rfc3339(t0 + 120), 24, 2, 3),
        ]
    );
    let routed: Vec<String> = users_only.signals().into_iter().map(|s| s.rule).collect();
    assert_eq!(routed, ["many-users"], "a channel routed to one rule gets that rule's signals only");
    let on_topic = wait_topic(&stack.bootstrap(), 10).await;
    assert_eq!(on_topic.iter().filter(|s| s.kind == Kind::Threshold).count(), 2);
    stack.stop().await;
}

/// An issue resolved (`tracefold issue resolve`, while the detector runs) and seen again is
/// one regression signal, however often it is seen; an issue reopened before it is seen again
/// is none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_issue_seen_again_is_one_regression() {
    let _serial = SERIAL.lock().await;
    let hook = Receiver::start().await;
    let detector = DetectorSection {
        status_refresh_ms: 200,
        channels: vec![channel("hook", webhook(&hook), &[])],
        ..Default::default()
    };
    let mut stack = Stack::start("regression", detector).await;
    let before = now_secs() - 600;
    stack
        .post(&[ev("CheckoutError", before, 1), ev("CheckoutError", before + 1, 2), ev("ReopenedError", before, 1)])
        .await;
    stack.settle().await;
    let signals =
        wait_for("two new issues", || if hook.signals().len() >= 2 { Ok(hook.signals()) } else { Err("".into()) })
            .await;
    let (checkout, reopened) = (issue_of(&signals, "CheckoutError: boom"), issue_of(&signals, "ReopenedError: boom"));
    set_status(&stack.db, &checkout, "resolved", "").await;
    set_status(&stack.db, &reopened, "resolved", "").await;
    stack.wait_resolved(2.0, "the detector holds both resolutions").await;
    let at = set_status(&stack.db, &reopened, "active", "").await;
    stack.wait_resolved(1.0, "the detector saw the reopening").await;
    // Seen again in two minutes after the resolution; the reopened issue too.
    stack
        .post(&[ev("CheckoutError", at + 1, 3), ev("CheckoutError", at + 61, 4), ev("ReopenedError", at + 1, 3)])
        .await;
    stack.settle().await;
    assert_eq!(stack.produced(), BTreeMap::from([("new_issue", 2), ("regression", 1)]));
    stack.wait_notifications(&[("webhook", "sent", 3)]).await;
    let regressions: Vec<Signal> = hook.signals().into_iter().filter(|s| s.kind == Kind::Regression).collect();
    assert_eq!(regressions.len(), 1, "{regressions:#?}");
    let r = &regressions[0];
    assert_eq!((r.issue_id.as_str(), r.title.as_str()), (checkout.as_str(), "CheckoutError: boom"));
    // Of whichever record revealed it (the two minutes may come in one batch, in any order).
    assert!([rfc3339(minute_of(at + 1)), rfc3339(minute_of(at + 61))].contains(&r.minute), "{r:#?}");
    assert_eq!((r.count, r.release.as_str()), (1, "web@2.0"));
    assert_eq!(stack.counters.gauge(RESOLVED_ISSUES), 0.0, "regressed: no longer resolved");
    let on_topic = wait_topic(&stack.bootstrap(), 3).await;
    assert!(on_topic.iter().any(|s| s.signal_id == r.signal_id));
    stack.stop().await;
}

/// With `regression_needs_newer_release`, an issue resolved in a release and seen again in that
/// release or an older one is no regression; seen in a newer release, it is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_regression_needs_newer_release_only_a_newer_release_regresses() {
    let _serial = SERIAL.lock().await;
    let hook = Receiver::start().await;
    let detector = DetectorSection {
        status_refresh_ms: 200,
        engine: EngineConfig { regression_needs_newer_release: true, ..EngineConfig::default() },
        channels: vec![channel("hook", webhook(&hook), &[])],
        ..Default::default()
    };
    let mut stack = Stack::start("newer_release", detector).await;
    stack.post(&[ev("PaymentError", now_secs() - 600, 1)]).await;
    stack.settle().await;
    let signals =
        wait_for("a new issue", || if hook.signals().len() == 1 { Ok(hook.signals()) } else { Err("".into()) }).await;
    let issue = issue_of(&signals, "PaymentError: boom");
    let at = set_status(&stack.db, &issue, "resolved", "web@2.0").await;
    stack.wait_resolved(1.0, "the detector holds the resolution").await;
    stack
        .post(&[ev("PaymentError", at + 1, 2).release("web@2.0"), ev("PaymentError", at + 2, 3).release("web@1.9")])
        .await;
    stack.settle().await;
    assert_eq!(stack.produced(), BTreeMap::from([("new_issue", 1)]), "the release it was fixed in, older ones");
    assert_eq!(stack.counters.gauge(RESOLVED_ISSUES), 1.0);
    stack.post(&[ev("PaymentError", at + 4, 5).release("web@2.1")]).await;
    stack.settle().await;
    assert_eq!(stack.produced(), BTreeMap::from([("new_issue", 1), ("regression", 1)]));
    stack.wait_notifications(&[("webhook", "sent", 2)]).await;
    let regressions: Vec<Signal> = hook.signals().into_iter().filter(|s| s.kind == Kind::Regression).collect();
    assert_eq!(regressions.len(), 1);
    assert_eq!((regressions[0].issue_id.as_str(), regressions[0].release.as_str()), (issue.as_str(), "web@2.1"));
    stack.stop().await;
}

/// A channel's cooldown is per issue and type: within it, a second signal of the same type for
/// the same issue is not sent (counted `cooled`); another issue, another type, or a channel
/// without cooldown gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_sends_one_signal_per_issue_and_type_within_its_cooldown() {
    let _serial = SERIAL.lock().await;
    let (cooling, every) = (Receiver::start().await, Receiver::start().await);
    let detector = DetectorSection {
        engine: EngineConfig {
            thresholds: vec![ThresholdRule {
                name: "busy".into(),
                project: None,
                environment: None,
                level: None,
                events: Some(5),
                users: None,
                minutes: 1,
            }],
            ..EngineConfig::default()
        },
        channels: vec![
            channel("cooling", Target::Slack { url: cooling.url.clone() }, &[Kind::NewIssue, Kind::Threshold]),
            Channel { cooldown_min: 0, ..channel("every", webhook(&every), &[Kind::Threshold]) },
        ],
        ..DetectorSection::default()
    };
    let mut stack = Stack::start("cooldown", detector).await;
    let t0 = minute_of(now_secs() - 2 * 3600);
    // Two issues over the threshold in each of four minutes: four threshold signals each.
    let mut events = steady("QuotaError", t0, 0..4, 10, 10);
    events.extend(steady("QueueError", t0, 0..4, 10, 10));
    events.push(ev("QuotaError", t0 + 6 * 60, 1));
    stack.post(&events).await;
    stack.settle().await;
    assert_eq!(stack.produced(), BTreeMap::from([("new_issue", 2), ("threshold", 8)]));
    stack
        .wait_notifications(&[
            ("slack", "sent", 4),
            ("slack", "cooled", 6),
            ("webhook", "sent", 8),
            ("webhook", "cooled", 0),
        ])
        .await;
    let on_topic = wait_topic(&stack.bootstrap(), 10).await;
    // The cooling channel got each issue's new_issue and first threshold signal, nothing more.
    let firsts: BTreeSet<String> = on_topic
        .iter()
        .filter(|s| s.kind == Kind::NewIssue || s.minute == rfc3339(t0))
        .map(|s| request(&Target::Slack { url: String::new() }, s).1.to_string())
        .collect();
    assert_eq!(firsts.len(), 4);
    let got: BTreeSet<String> = cooling.bodies().iter().map(ToString::to_string).collect();
    assert_eq!(got, firsts);
    assert_eq!(cooling.hits().len(), 4);
    let ids = |v: Vec<Signal>| -> BTreeSet<String> { v.into_iter().map(|s| s.signal_id).collect() };
    let thresholds: Vec<Signal> = on_topic.into_iter().filter(|s| s.kind == Kind::Threshold).collect();
    assert_eq!(ids(every.signals()), ids(thresholds), "no cooldown: every threshold signal");
    stack.stop().await;
}

/// A receiver that fails the first attempts (500) gets the notification once, after retries
/// with growing waits; it counts as `sent`, not `failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_the_notification_once_after_retries() {
    let _serial = SERIAL.lock().await;
    let flaky = Receiver::refusing_first(2).await;
    let detector = DetectorSection {
        retry: Retry { attempts: 4, initial_ms: 200, max_ms: 1000, ..Retry::default() },
        channels: vec![channel("flaky", webhook(&flaky), &[])],
        ..DetectorSection::default()
    };
    let mut stack = Stack::start("retry", detector).await;
    stack.post(&[ev("FlakyError", now_secs() - 600, 1)]).await;
    stack.settle().await;
    assert_eq!(stack.produced(), BTreeMap::from([("new_issue", 1)]));
    stack.wait_notifications(&[("webhook", "sent", 1)]).await;
    assert_eq!(stack.notifications("webhook", "failed"), 0);
    let hits = flaky.hits();
    assert_eq!(hits.iter().map(|h| h.accepted).collect::<Vec<_>>(), [false, false, true], "two refusals, then taken");
    assert!(hits.iter().all(|h| h.body == hits[0].body), "the same notification each time");
    let (w1, w2) = (hits[1].at - hits[0].at, hits[2].at - hits[1].at);
    assert!(w1 >= Duration::from_millis(200) && w2 >= Duration::from_millis(400), "backoff: {w1:?}, then {w2:?}");
    let on_topic = wait_topic(&stack.bootstrap(), 1).await;
    assert_eq!(flaky.signals()[0].signal_id, on_topic[0].signal_id);
    stack.stop().await;
}

/// A dead channel (its port refuses connections), first or last among good ones, blocks
/// neither detection nor the other channels: they get each signal while the dead ones are
/// still retrying it; the dead ones' notifications end `failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_channel_in_either_position_blocks_neither_detection_nor_the_others() {
    let _serial = SERIAL.lock().await;
    let (good_hook, good_slack) = (Receiver::start().await, Receiver::start().await);
    let detector = DetectorSection {
        // A dead channel gives a notification up 2 + 4 s after it was queued.
        retry: Retry { attempts: 3, initial_ms: 2000, max_ms: 30_000, ..Retry::default() },
        channels: vec![
            channel("dead-first", Target::Webhook { url: dead_url(), secret: String::new() }, &[]),
            channel("good-hook", webhook(&good_hook), &[]),
            channel("good-slack", Target::Slack { url: good_slack.url.clone() }, &[]),
            channel("dead-last", Target::Discord { url: dead_url() }, &[]),
        ],
        ..DetectorSection::default()
    };
    let mut stack = Stack::start("isolation", detector).await;
    let before = now_secs() - 600;
    stack.post(&[ev("IsolatedError", before, 1)]).await;
    wait_for("the good channels got the first signal", || {
        let (h, s) = (good_hook.signals().len(), good_slack.bodies().len());
        if h == 1 && s == 1 {
            Ok(())
        } else {
            Err(format!("hook {h}, slack {s}"))
        }
    })
    .await;
    assert_eq!(
        (stack.notifications("webhook", "failed"), stack.notifications("discord", "failed")),
        (0, 0),
        "the good channels did not wait for the dead ones, which are still retrying"
    );
    // Detection goes on while the dead channels retry.
    stack.post(&[ev("SecondError", before + 1, 1)]).await;
    stack.settle().await;
    assert_eq!(stack.produced(), BTreeMap::from([("new_issue", 2)]));
    wait_topic(&stack.bootstrap(), 2).await;
    stack
        .wait_notifications(&[
            ("webhook", "sent", 2),
            ("slack", "sent", 2),
            ("webhook", "failed", 2),
            ("discord", "failed", 2),
            ("discord", "sent", 0),
        ])
        .await;
    let titles: BTreeSet<String> = good_hook.signals().into_iter().map(|s| s.title).collect();
    assert_eq!(titles, BTreeSet::from(["IsolatedError: boom".to_owned(), "SecondError: boom".to_owned()]));
    assert_eq!((good_hook.hits().len(), good_slack.hits().len()), (2, 2));
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The real detector as a child process

/// A test's config folder for child processes.
fn child_env(name: &str, bootstrap: &str, db: &TestDb) -> Env {
    let config_dir = std::env::temp_dir().join(format!("tracefold-signals-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&config_dir).unwrap();
    Env { bootstrap: bootstrap.to_owned(), ch_url: db.cfg.url.clone(), database: db.cfg.database.clone(), config_dir }
}

/// Writes `detector.toml`: consumer group, extra `[detector]` keys and tables (TOML text), and
/// webhook channels.
fn write_detector_toml(env: &Env, group: &str, extra: &str, hooks: &[(&str, Target)]) {
    let mut t = format!(
        "[kafka.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n\n[detector]\ngroup_id = \"{group}\"\n{extra}\n"
    );
    for (name, target) in hooks {
        let Target::Webhook { url, secret } = target else { panic!("webhooks only") };
        t.push_str(&format!(
            "\n[[detector.channels]]\nname = \"{name}\"\ntarget = {{ kind = \"webhook\", url = \"{url}\", secret = \"{secret}\" }}\n"
        ));
    }
    std::fs::write(env.config_dir.join("detector.toml"), t).unwrap();
}

fn child_produced(d: &Svc) -> BTreeMap<&'static str, u64> {
    let text = d.metrics_text();
    by_type(|l| metric_in(&text, SIGNALS_TOTAL, l))
}

fn child_deduplicated(d: &Svc) -> BTreeMap<&'static str, u64> {
    let text = d.metrics_text();
    by_type(|l| metric_in(&text, SIGNALS_DEDUPLICATED_TOTAL, l))
}

/// Waits until the child detector has consumed `n` aggregate records (and evaluated them).
async fn wait_child_consumed(d: &Svc, n: i64) {
    wait_for(&format!("the detector consumed {n} aggregate records"), || {
        let got = d.metric(RECORDS_TOTAL, "") as i64;
        assert!(got <= n, "the detector consumed {got} records, more than {n}");
        if got == n {
            Ok(())
        } else {
            Err(format!("{got}"))
        }
    })
    .await;
}

/// Grouper and writer on threads, the events topic written directly, a mock cluster of the
/// test's own; the detector is the test's child process.
struct Bare {
    // Fields drop in this order: the services before their broker.
    grouper: ServiceThread,
    writer: ServiceThread,
    broker: DevBroker,
    db: TestDb,
    env: Env,
    events: u64,
}

impl Bare {
    async fn start(name: &str) -> Self {
        Self::start_with(name, 1).await
    }

    async fn start_with(name: &str, partitions: i32) -> Self {
        let db = TestDb::new(name).await;
        let broker = DevBroker::start(1, &tracefold_tests::topics(), Some(partitions)).unwrap();
        let b = broker.bootstrap_servers();
        let grouper = ServiceThread::grouper(tracefold_tests::grouper_config(&b));
        let writer = ServiceThread::writer(tracefold_tests::writer_config(&b, &db));
        let env = child_env(name, &b, &db);
        Self { grouper, writer, broker, db, env, events: 0 }
    }

    fn bootstrap(&self) -> String {
        self.broker.bootstrap_servers()
    }

    async fn publish(&mut self, events: &[Ev]) {
        let payloads: Vec<Vec<u8>> = events.iter().map(|e| e.kafka_json().into_bytes()).collect();
        tracefold_tests::publish(&self.bootstrap(), EVENTS, &payloads).await;
        self.events += events.len() as u64;
    }

    /// Waits until ClickHouse holds every event published (so every aggregate record is on
    /// the aggregates topic); returns the topic's end.
    async fn stored(&self) -> i64 {
        assert_eq!(self.db.wait_for_total(self.events, DEADLINE).await, self.events, "every event stored");
        end_of(&self.bootstrap(), AGGREGATES)
    }

    fn stop(self) {
        self.grouper.stop().unwrap();
        self.writer.stop().unwrap();
        let _ = std::fs::remove_dir_all(&self.env.config_dir);
    }
}

/// Commits `group`'s offsets at the end of `topic` (as a member: librdkafka's mock cluster
/// refuses commits from non-members once a group exists); returns the end.
///
/// In librdkafka's mock cluster a consumer that closed keeps its place in the group until its
/// session times out, and a newcomer with a shorter session timeout than that was never
/// assigned (not within 40 s): this member's session is the detector's (6 s).
fn commit_end(bootstrap: &str, group: &str, topic: &str) -> i64 {
    let c: BaseConsumer = tracefold_runtime::kafka::consumer_config(&tracefold_tests::kafka(bootstrap), group)
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let ends = watermarks(bootstrap, topic);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.assignment().unwrap().count() < ends.len() {
        assert!(Instant::now() < deadline, "did not get the partitions of {group}");
        let _ = c.poll(Duration::from_millis(100));
    }
    let mut tpl = TopicPartitionList::new();
    for (p, (_, high)) in &ends {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*high)).unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).unwrap();
    ends.values().map(|(_, high)| high).sum()
}

/// `group`'s committed offset on partition 0 of the aggregates topic (-1: none). Only reads.
fn committed_aggregates(bootstrap: &str, group: &str) -> i64 {
    let c = kafka_client(bootstrap, group);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(AGGREGATES, 0);
    match c.committed_offsets(tpl, Duration::from_secs(10)).unwrap().elements()[0].offset() {
        Offset::Offset(o) => o,
        _ => -1,
    }
}

/// The aggregate records on partition 0 of the aggregates topic, in offset order.
fn aggregates_on_topic(bootstrap: &str) -> Vec<tracefold_model::AggregateRecord> {
    let (low, high) = watermarks(bootstrap, AGGREGATES)[&0];
    let c = kafka_client(bootstrap, "signals-test-aggregates");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(AGGREGATES, 0, Offset::Offset(low)).unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while low + (out.len() as i64) < high {
        assert!(Instant::now() < deadline, "cannot read the aggregates topic");
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            out.push(serde_json::from_slice(m.unwrap().payload().unwrap()).unwrap());
        }
    }
    out
}

/// Where a detector with `lateness_min` 2 and threshold windows of at most 2 minutes commits
/// once it has read every record of a one-partition aggregates topic: at the first record of
/// a minute that evaluations to come still need (within 2 + 2 minutes of the latest minute).
fn expected_detector_commit(bootstrap: &str) -> i64 {
    let records = aggregates_on_topic(bootstrap);
    let latest = records.iter().map(|r| r.minute).max().expect("records");
    let needed_from = latest - 60 * (2 + 2);
    let (low, _) = watermarks(bootstrap, AGGREGATES)[&0];
    low + records.iter().position(|r| r.minute >= needed_from).expect("the latest minute is needed") as i64
}

/// The detector commits its offsets: once the minutes its records touch were evaluated and
/// its signals acknowledged, its group's commit moves past them (and stops before the records
/// still needed); a restart in the same group continues from that commit and reads only the
/// rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detector_commits_past_evaluated_records_and_a_restart_continues_from_the_commit() {
    let _serial = SERIAL.lock().await;
    let mut bare = Bare::start("commits").await;
    write_detector_toml(&bare.env, "tracefold-detector-commits", "", &[]);
    let first = bare.env.spawn("detector");
    // Four hours ago: twenty quiet minutes of one issue, then an old minute of another last.
    let t0 = minute_of(now_secs() - 4 * 3600);
    let mut events = steady("CommitError", t0, 0..20, 3, 5);
    events.push(ev("LateError", t0 + 60, 1));
    bare.publish(&events).await;
    let end = bare.stored().await;
    wait_child_consumed(&first, end).await;
    let want = expected_detector_commit(&bare.bootstrap());
    assert!(want > 0 && want < end, "some records are evaluated, the latest minutes are not: {want} of {end}");
    wait_for("the detector committed past the evaluated records", || {
        match committed_aggregates(&bare.bootstrap(), "tracefold-detector-commits") {
            c if c == want => Ok(()),
            c => Err(format!("committed {c}, want {want}")),
        }
    })
    .await;
    // A later minute closes the rest: the commit reaches the record that holds it.
    bare.publish(&[ev("CommitError", t0 + 30 * 60, 1)]).await;
    let end2 = bare.stored().await;
    wait_child_consumed(&first, end2).await;
    let want2 = expected_detector_commit(&bare.bootstrap());
    assert_eq!(want2, end2 - 1, "only the newest record is still needed");
    wait_for("the commit moved on", || match committed_aggregates(&bare.bootstrap(), "tracefold-detector-commits") {
        c if c == want2 => Ok(()),
        c => Err(format!("committed {c}, want {want2}")),
    })
    .await;
    // Stopped gracefully and started again: it reads from the commit, not from the start.
    assert!(first.term(DEADLINE).success());
    let second = bare.env.spawn("detector");
    wait_child_consumed(&second, end2 - want2).await;
    assert_eq!(child_produced(&second), BTreeMap::new(), "re-alerts nothing");
    drop(second);
    bare.stop();
}

/// A detector killed with SIGKILL and started again in the same consumer group continues from
/// its commit: it re-reads only the aggregates of minutes still needed and re-alerts nothing
/// (known issues from ClickHouse; the threshold it computes again is on the signals topic
/// already), then signals an issue resolved meanwhile and seen again once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detector_killed_with_sigkill_re_alerts_nothing_and_signals_a_later_regression_once() {
    let _serial = SERIAL.lock().await;
    let hook = Receiver::start().await;
    let mut bare = Bare::start("sigkill").await;
    write_detector_toml(
        &bare.env,
        "tracefold-detector",
        "status_refresh_ms = 200\n\n[detector.retry]\nattempts = 3\ninitial_ms = 100\n\n\
         [[detector.engine.thresholds]]\nname = \"hot\"\nproject = \"web\"\nevents = 100\nminutes = 1\n",
        &[("hook", webhook(&hook))],
    );
    let first = bare.env.spawn("detector");
    // Five hours ago (older than the history the detector reads back from ClickHouse, so a
    // restarted detector computes the spike again): 35 minutes of 8, 200 in minute 35.
    let t0 = minute_of(now_secs() - 5 * 3600);
    let mut events = steady("StockError", t0, 0..35, 8, 20);
    events.extend((0..200).map(|i| ev("StockError", t0 + 35 * 60 + i % 60, 1000 + i as u64)));
    events.extend(steady("StockError", t0, 36..38, 8, 20));
    // Published last, so read again after the restart: of a minute after the commit, so that
    // it is no issue with 30 minutes of history of its own (warm issues of the project are the
    // baseline StockError, without its own history after the restart, would be judged against).
    events.push(ev("ExpiredError", t0 + 36 * 60, 1));
    bare.publish(&events).await;
    let end = bare.stored().await;
    wait_child_consumed(&first, end).await;
    let signals = wait_topic(&bare.bootstrap(), 4).await;
    assert_eq!(child_produced(&first), BTreeMap::from([("new_issue", 2), ("spike", 1), ("threshold", 1)]));
    wait_for("the webhook got the four signals", || match hook.signals().len() {
        4 => Ok(()),
        n => Err(n.to_string()),
    })
    .await;
    // It committed past the records of the minutes it evaluated (minutes 0 to 32), not past
    // those still needed (33 on: open, or inside a threshold window).
    let committed = expected_detector_commit(&bare.bootstrap());
    assert!(committed > 0 && committed < end, "{committed} of {end}");
    wait_for("the detector committed past the evaluated records", || {
        match committed_aggregates(&bare.bootstrap(), "tracefold-detector") {
            c if c == committed => Ok(()),
            c => Err(format!("committed {c}, want {committed}")),
        }
    })
    .await;
    // The deliveries are recorded: the next start does not hand them to the webhook again.
    wait_delivered(&bare.db, "hook", 4).await;
    first.kill9();

    // Resolved while no detector runs.
    let expired = issue_of(&signals, "ExpiredError: boom");
    let at = set_status(&bare.db, &expired, "resolved", "").await;
    let second = bare.env.spawn("detector");
    // It continues from the commit (once the dead member's session has expired and the group
    // gave it the partition): minutes 33 to 37 again, and what follows them.
    wait_child_consumed(&second, end - committed).await;
    assert_eq!(child_produced(&second), BTreeMap::new(), "re-alerts nothing");
    // StockError's state is read back (its counts before minute 33 from ClickHouse, its spike
    // and threshold from the signals topic): neither is signalled again, nor computed as new.
    // ExpiredError's record, read again, finds the issue stored in ClickHouse as first seen in
    // that very record's second: its new_issue is computed again, and found on the topic.
    assert_eq!(
        child_deduplicated(&second),
        BTreeMap::from([("new_issue", 1)]),
        "the new issue computed again was found on the signals topic"
    );
    wait_topic(&bare.bootstrap(), 4).await;

    // Seen again, in two minutes: one regression.
    bare.publish(&[ev("ExpiredError", at + 1, 2), ev("ExpiredError", at + 61, 3)]).await;
    let end = bare.stored().await;
    wait_child_consumed(&second, end - committed).await;
    assert_eq!(child_produced(&second), BTreeMap::from([("regression", 1)]));
    let on_topic = wait_topic(&bare.bootstrap(), 5).await;
    let regression = on_topic.iter().find(|s| s.kind == Kind::Regression).expect("a regression on the topic");
    assert_eq!(regression.issue_id, expired);
    wait_for("the webhook got the regression", || match hook.signals().len() {
        5 => Ok(()),
        n => Err(n.to_string()),
    })
    .await;
    let got = hook.signals();
    let ids: BTreeSet<&str> = got.iter().map(|s| s.signal_id.as_str()).collect();
    assert_eq!(ids.len(), 5, "each signal once at the webhook: {got:#?}");
    let on_ids: BTreeSet<&str> = on_topic.iter().map(|s| s.signal_id.as_str()).collect();
    assert_eq!(ids, on_ids);
    let mut kinds: Vec<Kind> = got.iter().map(|s| s.kind).collect();
    kinds.sort();
    assert_eq!(kinds, [Kind::NewIssue, Kind::NewIssue, Kind::Regression, Kind::Spike, Kind::Threshold]);
    drop(second);
    bare.stop();
}

/// A detector that never read the old aggregates (its group's offsets are at their end) takes
/// what it needs from ClickHouse: resolutions at start-up (seen again: a regression), and when
/// an issue's records arrive, whether it is known (seen again: no new_issue)
/// and its recent per-minute counts (a burst is a spike
/// against the issue's own baseline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detector_past_the_old_aggregates_takes_known_issues_resolutions_and_baselines_from_clickhouse() {
    let _serial = SERIAL.lock().await;
    let hook = Receiver::start().await;
    let mut bare = Bare::start("state").await;
    // No detector yet: 40 minutes of 8 a minute, ending 6 minutes ago; two quiet issues.
    let now_min = minute_of(now_secs());
    let t0 = now_min - 45 * 60;
    let mut events = steady("WidgetError", t0, 0..40, 8, 20);
    events.push(ev("XhrError", t0, 1));
    events.push(ev("ZoneError", t0, 1));
    bare.publish(&events).await;
    let end = bare.stored().await;
    let zone = {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct Id {
            issue_id: String,
        }
        let q =
            format!("SELECT issue_id FROM {}.issues_v WHERE title = 'ZoneError: boom' LIMIT 1", bare.db.cfg.database);
        bare.db.client.query(&q).fetch_one::<Id>().await.unwrap().issue_id
    };
    let at = set_status(&bare.db, &zone, "resolved", "").await;
    let group = "tracefold-detector-state";
    assert_eq!(commit_end(&bare.bootstrap(), group, AGGREGATES), end);
    // Statuses only at start-up (no refresh within the test).
    write_detector_toml(&bare.env, group, "status_refresh_ms = 3600000\n", &[("hook", webhook(&hook))]);
    let d = bare.env.spawn("detector");
    wait_for("the detector loaded its state", || {
        if d.metrics_text().contains(RESOLVED_ISSUES) {
            Ok(())
        } else {
            Err("no resolved-issues gauge yet".into())
        }
    })
    .await;
    assert_eq!(d.metric(RESOLVED_ISSUES, ""), 1.0);
    // A burst in the minute after the history, closed two minutes later; the quiet issues
    // seen again.
    let mut more: Vec<Ev> = (0..200).map(|i| ev("WidgetError", t0 + 40 * 60 + i % 60, 1000 + i as u64)).collect();
    more.push(ev("WidgetError", t0 + 42 * 60, 1));
    more.push(ev("XhrError", t0 + 41 * 60, 1));
    more.push(ev("ZoneError", at + 1, 1));
    bare.publish(&more).await;
    let new_end = bare.stored().await;
    wait_child_consumed(&d, new_end - end).await;
    assert_eq!(child_produced(&d), BTreeMap::from([("regression", 1), ("spike", 1)]));
    wait_for("the webhook got both signals", || match hook.signals().len() {
        2 => Ok(()),
        n => Err(n.to_string()),
    })
    .await;
    let got = hook.signals();
    let spike = got.iter().find(|s| s.kind == Kind::Spike).unwrap();
    assert_eq!(
        (spike.title.as_str(), spike.count, spike.minute.as_str()),
        ("WidgetError: boom", 200, rfc3339(t0 + 40 * 60).as_str())
    );
    assert!(
        spike.baseline_per_minute > 6.0 && spike.baseline_per_minute < 10.0,
        "the issue's own baseline, from ClickHouse: {}",
        spike.baseline_per_minute
    );
    let regression = got.iter().find(|s| s.kind == Kind::Regression).unwrap();
    assert_eq!(regression.issue_id, zone);
    drop(d);
    bare.stop();
}

// ---------------------------------------------------------------------------------------------
// Alert storms

use tracefold_detector::metrics::STORM_FOLDED_TOTAL;
use tracefold_detector::storm::StormConfig;

/// A new-issue storm: 60 new issues of one project in one window reach the webhook as the first
/// 5 one by one and one `new_issue_digest` (count 60, 55 folded, 5 titles of folded issues)
/// when the window closes; every one of them is on the signals topic; another project's new
/// issues in the same window are notified as usual. Every webhook body carries the time it was
/// sent inside what is signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_issue_storm_becomes_five_notifications_and_one_digest_and_webhooks_sign_their_time() {
    let _serial = SERIAL.lock().await;
    let hook = Receiver::start().await;
    let detector = DetectorSection {
        channels: vec![channel("hook", Target::Webhook { url: hook.url.clone(), secret: "s3cret".into() }, &[])],
        storm: StormConfig { max_new_issues: 5, window_min: 1 },
        // The window closes at the end of its minute by the detector's clock.
        engine: EngineConfig { lateness_min: 0, ..EngineConfig::default() },
        ..DetectorSection::default()
    };
    let mut stack = Stack::start("storm", detector).await;
    // Events of the current minute, sent in its first 20 seconds, so that all of them are in
    // before the window closes (a condition, not a timing assertion: otherwise wait for the
    // next minute).
    wait_for("the first 20 seconds of a minute", || {
        if now_secs() % 60 < 20 {
            Ok(())
        } else {
            Err(format!("second {}", now_secs() % 60))
        }
    })
    .await;
    let started = now_secs();
    let minute = minute_of(started);
    let mut storm: Vec<Ev> = (0..60)
        .map(|i| {
            let ty: &'static str = Box::leak(format!("Storm{i}Error").into_boxed_str());
            ev(ty, minute + i % 20, i as u64)
        })
        .collect();
    storm.extend(["ApiAError", "ApiBError", "ApiCError"].map(|ty| ev(ty, minute + 1, 1).project("api")));
    stack.post(&storm).await;
    stack.settle().await;
    let digest = wait_for("the window's digest", || {
        let got = hook.signals();
        got.iter().find(|s| s.kind == Kind::NewIssueDigest).cloned().ok_or(format!("{} notifications", got.len()))
    })
    .await;
    assert_eq!(stack.produced(), BTreeMap::from([("new_issue", 63)]));
    let digests = label("type", "new_issue_digest");
    assert_eq!(stack.counters.delta(SIGNALS_TOTAL, &[digests.as_str()]), 1.0, "one digest");
    assert_eq!(stack.counters.delta(STORM_FOLDED_TOTAL, &[]), 55.0);
    stack.wait_notifications(&[("webhook", "sent", 9), ("webhook", "rate_limited", 0)]).await;
    let signals = hook.signals();
    let new_in = |project: &str| signals.iter().filter(|s| s.kind == Kind::NewIssue && s.project == project).count();
    assert_eq!((new_in("web"), new_in("api")), (5, 3), "the first 5 of web, every one of api");
    assert_eq!(signals.iter().filter(|s| s.kind == Kind::NewIssueDigest).count(), 1);
    assert_eq!((digest.project.as_str(), digest.count, digest.folded), ("web", 60, 55));
    assert_eq!((digest.minute.as_str(), digest.window_minutes), (rfc3339(minute).as_str(), 1));
    assert_eq!(
        digest.signal_id,
        tracefold_detector::signal::signal_id(Kind::NewIssueDigest, "web", "", minute, "0"),
        "derived from project, window start and the replica's partitions (partition 0)"
    );
    assert!(digest.command.starts_with("tracefold top --project web --since "), "{}", digest.command);
    // Its titles are of folded issues: on the topic, not notified one by one.
    let on_topic = wait_topic(&stack.bootstrap(), 64).await;
    let notified: BTreeSet<&str> = signals.iter().map(|s| s.title.as_str()).collect();
    let web_titles: BTreeSet<&str> =
        on_topic.iter().filter(|s| s.kind == Kind::NewIssue && s.project == "web").map(|s| s.title.as_str()).collect();
    assert_eq!(web_titles.len(), 60, "every new issue is on the signals topic");
    assert_eq!(digest.titles.len(), 5);
    for t in &digest.titles {
        assert!(web_titles.contains(t.as_str()) && !notified.contains(t.as_str()), "{t}");
    }
    // Every body is signed with its time of sending inside.
    let finished = now_secs();
    for h in hook.hits() {
        let raw = std::str::from_utf8(&h.body).unwrap();
        assert_eq!(h.headers["x-tracefold-signature"].to_str().unwrap(), format!("sha256={}", sign("s3cret", raw)));
        let body: serde_json::Value = serde_json::from_str(raw).unwrap();
        let t = body["timestamp"].as_i64().expect("a timestamp in the signed body");
        assert!(t >= started && t <= finished, "{t} not in {started}..={finished}");
        assert_eq!(h.headers["x-tracefold-timestamp"].to_str().unwrap(), t.to_string());
    }
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Replicas

/// Partitions of the aggregates topic the child detector owns.
fn assigned(d: &Svc) -> f64 {
    d.metric(tracefold_runtime::kafka::ASSIGNED_PARTITIONS, "group=\"tracefold-detector\"")
}

/// Two detectors in one group (the replicas of a deployment): each evaluates the issues of the
/// partitions it owns. When the second joins, and when the first is killed, partitions move;
/// the new owner reads their issues' state back (ClickHouse, the signals topic) before it
/// emits. Every detection is signalled exactly once, on the topic and at the webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_detector_replicas_signal_each_detection_once_across_a_join_and_a_kill() {
    let _serial = SERIAL.lock().await;
    let hook = Receiver::start().await;
    let mut bare = Bare::start_with("replicas", 4).await;
    write_detector_toml(&bare.env, "tracefold-detector", "", &[("hook", webhook(&hook))]);
    let first = bare.env.spawn("detector");
    wait_for("the first detector owns the 4 partitions", || match assigned(&first) {
        4.0 => Ok(()),
        n => Err(n.to_string()),
    })
    .await;
    const TYPES: [&str; 12] = [
        "AlphaError",
        "BetaError",
        "GammaError",
        "DeltaError",
        "EpsilonError",
        "ZetaError",
        "EtaError",
        "ThetaError",
        "IotaError",
        "KappaError",
        "LambdaError",
        "MuError",
    ];
    // Two hours ago: 35 minutes of 8 a minute per issue.
    let t0 = minute_of(now_secs() - 2 * 3600);
    let steady_part: Vec<Ev> = TYPES.iter().flat_map(|ty| steady(ty, t0, 0..35, 8, 20)).collect();
    bare.publish(&steady_part).await;
    let end = bare.stored().await;
    wait_child_consumed(&first, end).await;
    assert_eq!(child_produced(&first), BTreeMap::from([("new_issue", 12)]));
    // Delivered and recorded: a detector starting redelivers what no channel took.
    wait_delivered(&bare.db, "hook", 12).await;

    // The second joins: the partitions are shared.
    let second = bare.env.spawn("detector");
    wait_for("the two detectors share the 4 partitions", || {
        let (a, b) = (assigned(&first), assigned(&second));
        if a + b == 4.0 && a > 0.0 && b > 0.0 {
            Ok(())
        } else {
            Err(format!("{a} + {b}"))
        }
    })
    .await;
    // Each issue bursts: 200 in minute 35, then 8 a minute again.
    let mut burst: Vec<Ev> = Vec::new();
    for ty in TYPES {
        burst.extend((0..200).map(|i| ev(ty, t0 + 35 * 60 + i % 60, 1000 + i as u64)));
        burst.extend(steady(ty, t0, 36..40, 8, 20));
    }
    bare.publish(&burst).await;
    bare.stored().await;
    let on_topic = wait_topic(&bare.bootstrap(), 24).await;
    let spikes = |d: &Svc| child_produced(d).get("spike").copied().unwrap_or(0);
    let (a, b) = (spikes(&first), spikes(&second));
    let seen: Vec<(&str, &str, &str)> =
        on_topic.iter().map(|s| (s.kind.as_str(), s.title.as_str(), s.minute.as_str())).collect();
    let counts =
        [child_produced(&first), child_deduplicated(&first), child_produced(&second), child_deduplicated(&second)];
    assert_eq!(a + b, 12, "each issue's burst signalled once: {seen:#?}, produced/deduplicated {counts:?}");
    assert!(a > 0 && b > 0, "both replicas evaluated issues of their own partitions: {a} and {b} spikes");
    wait_for("the webhook got the 24 signals", || match hook.signals().len() {
        24 => Ok(()),
        n => Err(n.to_string()),
    })
    .await;

    // The first dies: the second takes its partitions over (once the dead member's session
    // expired) and reads again what the first had not committed.
    first.kill9();
    wait_for("the second detector owns the 4 partitions", || match assigned(&second) {
        4.0 => Ok(()),
        n => Err(n.to_string()),
    })
    .await;
    // New issues after the takeover, on every partition: 8 of them, signalled once each, after
    // the records read again (in each partition's order).
    const LATER: [&str; 8] =
        ["NuError", "XiError", "OmicronError", "PiError", "RhoError", "SigmaError", "TauError", "UpsilonError"];
    let later: Vec<Ev> = LATER.iter().map(|ty| ev(ty, t0 + 41 * 60, 1)).collect();
    bare.publish(&later).await;
    bare.stored().await;
    let all = wait_topic(&bare.bootstrap(), 32).await;
    assert!(on_topic.iter().all(|s| all.iter().any(|x| x.signal_id == s.signal_id)));
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &all {
        *kinds.entry(s.kind.as_str()).or_default() += 1;
    }
    assert_eq!(kinds, BTreeMap::from([("new_issue", 20), ("spike", 12)]));
    wait_for("the webhook got the 32 signals", || match hook.signals().len() {
        32 => Ok(()),
        n => Err(n.to_string()),
    })
    .await;
    let got = hook.signals();
    let ids: BTreeSet<&str> = got.iter().map(|s| s.signal_id.as_str()).collect();
    assert_eq!(ids.len(), 32, "each signal once at the webhook");
    // Nothing more comes: once the second has read every record (its count of records
    // evaluated stays put for 3 s), the topic and the webhook hold the same 32.
    let mut last = (-1.0, Instant::now());
    wait_for("the second detector is idle", || {
        let n = second.metric(RECORDS_TOTAL, "");
        if n != last.0 {
            last = (n, Instant::now());
        }
        if last.1.elapsed() >= Duration::from_secs(3) {
            Ok(())
        } else {
            Err(format!("{n} records evaluated"))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(signals_on_topic(&bare.bootstrap()).len(), 32, "no signal again after the takeover");
    assert_eq!(hook.signals().len(), 32);
    drop(second);
    bare.stop();
}
