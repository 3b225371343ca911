//! Shared helpers of the end-to-end tests: a fresh ClickHouse database per test, services
//! run as threads against a mock cluster hosted by the test, ground truth from the generator.
#![allow(missing_docs)]

pub mod procs;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tracefold_devtools::gen::{GenOptions, Generated, Generator};
use tracefold_runtime::config::{ClickHouseConfig, KafkaConfig, TopicsConfig};
use tracefold_runtime::telemetry::Health;
use tracefold_runtime::Shutdown;

/// ClickHouse for tests: `TRACEFOLD_TEST_CLICKHOUSE_URL`, default `http://127.0.0.1:8123`
/// (start one with `scripts/clickhouse-local.sh start`).
pub fn clickhouse_url() -> String {
    std::env::var("TRACEFOLD_TEST_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// A fresh, migrated database; dropped when the value is dropped.
pub struct TestDb {
    pub cfg: ClickHouseConfig,
    pub client: clickhouse::Client,
}

impl TestDb {
    pub async fn new(name: &str) -> Self {
        Self::at(&clickhouse_url(), name).await
    }

    /// A fresh database on the ClickHouse server at `url`.
    pub async fn at(url: &str, name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let cfg = ClickHouseConfig {
            url: url.to_owned(),
            database: format!("tftest_{name}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)),
            ..ClickHouseConfig::default()
        };
        let report = tracefold_store::migrate::migrate(&cfg, |_, _| {}).await.unwrap_or_else(|e| {
            panic!("ClickHouse at {} is needed for this test (scripts/clickhouse-local.sh start): {e:#}", cfg.url)
        });
        assert!(!report.applied.is_empty(), "a fresh database gets every migration");
        let client = tracefold_store::client::database_client(&cfg).expect("a valid database name");
        Self { cfg, client }
    }

    /// The server's clock, Unix seconds.
    pub async fn server_now(&self) -> i64 {
        i64::from(tracefold_store::client::now(&self.client).await.expect("the server's clock"))
    }

    /// Inserts `recs` as the writer does (samples into `issue_samples`, then the aggregate
    /// rows), as batch records of partition 0 of `tracefold.aggregates` at offsets 0, 1, ...
    pub async fn insert_records(&self, recs: &[tracefold_model::AggregateRecord]) {
        use tracefold_store::rows::AggregateRow;
        let rows: Vec<AggregateRow<'_>> =
            recs.iter().enumerate().map(|(i, r)| AggregateRow::new(r, "tracefold.aggregates", 0, i as i64)).collect();
        tracefold_store::aggregates::insert(&self.client, "aggregates", &rows, Duration::from_secs(60), None)
            .await
            .expect("insert aggregate records");
    }

    pub async fn total_events(&self) -> u64 {
        tracefold_store::aggregates::total_events(&self.client, &self.cfg.database).await.expect("query total")
    }

    /// Waits until ClickHouse holds `n` events in the base table and in every derived count
    /// table (a SELECT can see an insert's base part a moment before its materialized views'
    /// parts); returns what the base table holds then (or at the timeout).
    pub async fn wait_for_total(&self, n: u64, timeout: Duration) -> u64 {
        let db = &self.cfg.database;
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.total_events().await;
            let derived_ok =
                got >= n && tracefold_store::aggregates::visible_events(&self.client, db).await.is_ok_and(|v| v >= got);
            if derived_ok || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Per issue: (events, distinct users) as ClickHouse's derived tables say, once two reads
    /// 200 ms apart agree (materialized views settle a moment after the base table).
    pub async fn per_issue(&self) -> BTreeMap<String, (u64, u64)> {
        let mut last = self.per_issue_once().await;
        for _ in 0..25 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = self.per_issue_once().await;
            if now == last {
                return now;
            }
            last = now;
        }
        last
    }

    async fn per_issue_once(&self) -> BTreeMap<String, (u64, u64)> {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct R {
            issue_id: String,
            count: u64,
        }
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct U {
            issue_id: String,
            users: u64,
        }
        let db = &self.cfg.database;
        let counts: Vec<R> = self
            .client
            .query(&format!("SELECT issue_id, count FROM {db}.issues_v"))
            .fetch_all()
            .await
            .expect("issues_v");
        let users: Vec<U> = self
            .client
            .query(&format!(
                "SELECT issue_id, uniqExactMerge(users_state) AS users FROM {db}.issue_users_1h GROUP BY issue_id"
            ))
            .fetch_all()
            .await
            .expect("issue_users_1h");
        let users: BTreeMap<String, u64> = users.into_iter().map(|u| (u.issue_id, u.users)).collect();
        counts
            .into_iter()
            .map(|r| (r.issue_id.clone(), (r.count, users.get(&r.issue_id).copied().unwrap_or(0))))
            .collect()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let client = tracefold_store::client::client(&self.cfg);
        let db = self.cfg.database.clone();
        // Best effort, on a runtime of its own (Drop cannot await).
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                let _ = rt.block_on(client.query(&format!("DROP DATABASE IF EXISTS {db}")).execute());
            }
        })
        .join();
    }
}

/// Ground truth of a generated load, keyed by fingerprint (issue id).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Truth {
    pub per_issue: BTreeMap<String, (u64, BTreeSet<u64>)>,
    pub total: u64,
}

impl Truth {
    pub fn add(&mut self, json: &str, user: u64) {
        let ev = tracefold_model::parse_event_str(json).expect("generated events parse");
        let fp = tracefold_fingerprint::fingerprint(&ev, &Default::default(), &mut Default::default());
        let e = self.per_issue.entry(fp.to_hex()).or_default();
        e.0 += 1;
        e.1.insert(user);
        self.total += 1;
    }

    pub fn expected(&self) -> BTreeMap<String, (u64, u64)> {
        self.per_issue.iter().map(|(k, (n, users))| (k.clone(), (*n, users.len() as u64))).collect()
    }
}

/// `n` generated events of `issues` issues, timestamps within the last hour.
pub fn generate(n: usize, issues: usize, seed: u64) -> (Vec<Generated>, Truth) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut g =
        Generator::new(GenOptions { issues, seed, now_secs: now, users: 300, zipf_s: 0.8, ..GenOptions::default() });
    let mut truth = Truth::default();
    let events: Vec<_> = (0..n)
        .map(|i| {
            // Every issue at least once, then by popularity.
            let e = if i < issues { g.event_for(i, i as u64) } else { g.next_event() };
            truth.add(&e.json, e.user);
            e
        })
        .collect();
    (events, truth)
}

/// A service running on its own thread with its own shutdown signal.
pub struct ServiceThread {
    pub shutdown: Shutdown,
    pub health: Health,
    handle: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl ServiceThread {
    pub fn grouper(cfg: tracefold_grouper::Config) -> Self {
        Self::spawn(move |s, h| tracefold_grouper::service::run(&cfg, &s, &h))
    }

    pub fn writer(cfg: tracefold_writer::Config) -> Self {
        Self::spawn(move |s, h| tracefold_writer::service::run(&cfg, &s, &h))
    }

    fn spawn(f: impl FnOnce(Shutdown, Health) -> anyhow::Result<()> + Send + 'static) -> Self {
        let (shutdown, health) = (Shutdown::new(), Health::default());
        let (s, h) = (shutdown.clone(), health.clone());
        Self { shutdown, health, handle: Some(std::thread::spawn(move || f(s, h))) }
    }

    /// Where the service stands, for a failure report: running or ended, the messages its
    /// consumer delivered, and what its health check would say.
    pub fn describe(&self) -> String {
        let ended = self.handle.as_ref().is_none_or(std::thread::JoinHandle::is_finished);
        let live = self.health.liveness().err().unwrap_or_else(|| "live".into());
        format!("{}, {} messages consumed, {live}", if ended { "ended" } else { "running" }, self.health.consumed())
    }

    /// Stops the service (clean drain) and returns its result.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        self.handle.take().expect("joined once").join().expect("service thread panicked")
    }
}

impl Drop for ServiceThread {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Service configs pointing at `bootstrap` and `db`, with small batches for tests.
pub fn grouper_config(bootstrap: &str) -> tracefold_grouper::Config {
    let mut c = tracefold_grouper::Config { kafka: kafka(bootstrap), ..Default::default() };
    c.grouper.batch_max_events = 500;
    c.grouper.batch_max_age_ms = 300;
    c.grouper.listen = String::new();
    c
}

pub fn writer_config(bootstrap: &str, db: &TestDb) -> tracefold_writer::Config {
    let mut c = tracefold_writer::Config { kafka: kafka(bootstrap), clickhouse: db.cfg.clone(), ..Default::default() };
    c.writer.batch_max_age_ms = 300;
    c.writer.retry_initial_ms = 100;
    c.writer.listen = String::new();
    c
}

pub fn kafka(bootstrap: &str) -> KafkaConfig {
    KafkaConfig { bootstrap_servers: bootstrap.to_owned(), ..KafkaConfig::default() }
}

pub fn topics() -> TopicsConfig {
    TopicsConfig::default()
}

/// Publishes `payloads` to the events topic (keyed by index) and waits for every ack.
pub async fn publish(bootstrap: &str, topic: &str, payloads: &[Vec<u8>]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer =
        tracefold_runtime::kafka::producer_config(&kafka(bootstrap), 30_000).create().expect("producer");
    let mut futs = Vec::with_capacity(payloads.len());
    for (i, p) in payloads.iter().enumerate() {
        let key = i.to_string();
        futs.push(producer.send_result(FutureRecord::to(topic).key(&key).payload(p.as_slice())).expect("enqueue"));
    }
    for f in futs {
        f.await.expect("delivery future").expect("delivered");
    }
}

/// Posts generated events to the producer at `addr` as NDJSON, per project in requests of
/// `chunk` events (as SDK relays send them), asserting each request's `200`; returns how many
/// ids the producer answered with.
pub async fn post_ndjson(addr: std::net::SocketAddr, events: &[Generated], chunk: usize) -> usize {
    let client = reqwest::Client::new();
    let mut by_project: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in events {
        by_project.entry(e.project).or_default().push(&e.json);
    }
    let mut ids = 0;
    for (project, lines) in &by_project {
        for part in lines.chunks(chunk) {
            let resp = client
                .post(format!("http://{addr}/api/v1/projects/{project}/events"))
                .header("content-type", "application/x-ndjson")
                .body(part.join("\n"))
                .send()
                .await
                .expect("request");
            assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap_or_default());
            let body: serde_json::Value = resp.json().await.expect("JSON answer");
            assert_eq!(body["accepted"], part.len());
            ids += body["ids"].as_array().map_or(0, Vec::len);
        }
    }
    ids
}

/// Polls `check` every 100 ms until it is done (`Ok`); after `deadline`, fails with what it
/// said last.
pub async fn wait_for<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) => assert!(start.elapsed() < deadline, "{what}: not within {deadline:?}; last: {last}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
