//! The services as child processes (the real binaries, built with the tests), a private
//! ClickHouse server per test, and what a test needs to prove that a failure really happened:
//! every line a child writes to stderr is kept (failpoint lines, logs), its ops endpoint is
//! bound on port 0 and read back from its log, and a metric read that fails fails the test.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Runs a heavy end-to-end test body on a runtime of its own, one such test at a time in this
/// test binary: on 2 cores, several private ClickHouse servers and service processes at once
/// starve each other. A test that panicked poisons the lock; the next one takes it anyway (its
/// servers and children were dropped while unwinding).
pub fn serial<F: Future<Output = ()>>(body: F) {
    static HEAVY: Mutex<()> = Mutex::new(());
    let _one_at_a_time = HEAVY.lock().unwrap_or_else(PoisonError::into_inner);
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(body);
}

/// Polls `check` every 100 ms until it yields a value; panics with `what` (and the last
/// state `check` reported through `last`) after `timeout`.
pub async fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut(&mut String) -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        if let Some(v) = check(&mut last) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?} (last seen: {last})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A port that was free a moment ago. Only for servers that cannot bind port 0 themselves and
/// report it (ClickHouse's config takes fixed ports); the services bind port 0.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A ClickHouse server of the test's own, data in a temporary folder (stopping it does not
/// disturb other tests).
pub struct PrivateClickHouse {
    dir: PathBuf,
    http: u16,
    tcp: u16,
}

impl PrivateClickHouse {
    pub fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tracefold-ch-{name}-{}", std::process::id()));
        let me = Self { dir, http: free_port(), tcp: free_port() };
        me.run("start");
        me
    }

    pub fn run(&self, what: &str) {
        let out = Command::new("bash")
            .arg(repo().join("scripts/clickhouse-local.sh"))
            .arg(what)
            .env("TRACEFOLD_CH_DIR", &self.dir)
            .env("TRACEFOLD_CH_HTTP_PORT", self.http.to_string())
            .env("TRACEFOLD_CH_TCP_PORT", self.tcp.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "clickhouse-local.sh {what}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        self.run("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The service binary built with the tests (`<kind>-under-test`, see tests/Cargo.toml), next to
/// the test executable's `deps/` folder.
fn bin(kind: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let path = dir.join(format!("{kind}-under-test"));
    assert!(path.exists(), "{} is built with the tests (cargo test builds it)", path.display());
    path
}

/// Where the services of a test connect, and their config files.
pub struct Env {
    pub bootstrap: String,
    pub ch_url: String,
    pub database: String,
    pub config_dir: PathBuf,
}

/// A service as a child process.
pub struct Svc {
    pub kind: &'static str,
    child: Child,
    ops: std::net::SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    /// Reads the child's stderr until it closes (joined once the child exited, so that every
    /// line it wrote is kept).
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Env {
    /// Writes `grouper.toml` and `writer.toml` (contents as given) into a fresh folder and
    /// returns the environment that uses them.
    pub fn create(name: &str, bootstrap: &str, ch_url: &str, database: &str, grouper: &str, writer: &str) -> Self {
        let config_dir = std::env::temp_dir().join(format!("tracefold-cfg-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&config_dir).unwrap();
        std::fs::write(config_dir.join("grouper.toml"), grouper).unwrap();
        std::fs::write(config_dir.join("writer.toml"), writer).unwrap();
        Self { bootstrap: bootstrap.to_owned(), ch_url: ch_url.to_owned(), database: database.to_owned(), config_dir }
    }

    pub fn spawn(&self, kind: &'static str) -> Svc {
        self.spawn_with(kind, "")
    }

    /// Spawns with failpoints armed (`TRACEFOLD_FAILPOINTS`, see tracefold_runtime::failpoint),
    /// and waits until its ops endpoint answers.
    pub fn spawn_with(&self, kind: &'static str, failpoints: &str) -> Svc {
        let cfg = match kind {
            "grouper" | "writer" | "detector" => format!("{kind}.toml"),
            other => panic!("no such service {other}"),
        };
        let mut cmd = Command::new(bin(kind));
        cmd.arg("--config")
            .arg(self.config_dir.join(cfg))
            .arg("--bootstrap-servers")
            .arg(&self.bootstrap)
            .arg("--listen")
            .arg("127.0.0.1:0")
            // JSON logs: the bound ops address is read back from the start-up line.
            .env("RUST_LOG", "warn,tracefold_runtime::telemetry=info,tracefold_runtime::consumer=info")
            .env("TRACEFOLD__TELEMETRY__LOG_FORMAT", "json")
            .env("TRACEFOLD_FAILPOINTS", failpoints)
            .env_remove("RUST_BACKTRACE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if kind != "grouper" {
            cmd.arg("--clickhouse-url").arg(&self.ch_url).env("TRACEFOLD__CLICKHOUSE__DATABASE", &self.database);
        }
        let mut child = cmd.spawn().unwrap();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let stderr = child.stderr.take().expect("piped");
        let keep = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{kind}] {line}");
                keep.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let ops = loop {
            let found = lines.lock().unwrap().iter().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["message"].as_str()? == "serving /metrics, /healthz, /readyz")
                    .then(|| v["addr"].as_str()?.parse().ok())?
            });
            if let Some(a) = found {
                break a;
            }
            if let Some(st) = child.try_wait().unwrap() {
                panic!("{kind} exited before serving its ops endpoint: {st}");
            }
            assert!(Instant::now() < deadline, "{kind} did not log its ops address within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        Svc { kind, child, ops, lines, reader: Some(reader) }
    }
}

impl Svc {
    /// The exit status, if it exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub fn exited(&mut self) -> bool {
        self.exit_status().is_some()
    }

    /// Whether a stderr line contains `needle` (a failpoint's "reached" line, a log message).
    pub fn logged(&self, needle: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// The JSON log lines whose `message` is `message`.
    pub fn logged_json(&self, message: &str) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"].as_str() == Some(message))
            .collect()
    }

    /// SIGKILL; returns the exit status (killed by signal 9, unless it had exited before).
    pub fn kill9(mut self) -> ExitStatus {
        self.child.kill().unwrap();
        self.wait_exit(Duration::from_secs(30))
    }

    /// Sends SIGTERM and returns at once (see [`Svc::wait_exit`]).
    pub fn send_term(&self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    }

    /// SIGTERM, then the exit status within `timeout`.
    pub fn term(mut self, timeout: Duration) -> ExitStatus {
        self.send_term();
        self.wait_exit(timeout)
    }

    /// Waits for the child to exit (panics after `timeout`) and for its last stderr lines.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {timeout:?}", self.kind);
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(r) = self.reader.take() {
            r.join().expect("stderr reader");
        }
        st
    }

    /// Waits (up to `timeout`) for the child to die at failpoint `name`, and proves it did:
    /// the exit status is SIGABRT and stderr holds `failpoint <name> reached: aborting`.
    pub fn expect_abort_at(&mut self, name: &str, timeout: Duration) {
        let st = self.wait_exit(timeout);
        assert_eq!(st.signal(), Some(6), "{} ended by SIGABRT at failpoint {name}, not {st}", self.kind);
        let line = format!("failpoint {name} reached: aborting");
        assert!(self.logged(&line), "{} logged `{line}`", self.kind);
    }

    /// The service's whole `/metrics` text. Panics when the endpoint cannot be read or is not
    /// a tracefold service's: a test must not mistake "unreachable" for "zero".
    pub fn metrics_text(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.ops)
            .unwrap_or_else(|e| panic!("{}: cannot reach /metrics on {}: {e}", self.kind, self.ops));
        write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        assert!(
            body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
            "{}: /metrics: {body}",
            self.kind
        );
        body
    }

    /// A metric from the service's /metrics, summing the label sets whose line contains
    /// `filter`. Absent means zero (a counter appears on its first increment); an unreadable
    /// endpoint panics.
    pub fn metric(&self, name: &str, filter: &str) -> f64 {
        self.metrics_text()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(filter))
            .map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).expect("a metric value"))
            .sum()
    }

    pub fn rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }
}

/// Proves that `st` is a SIGKILL's.
pub fn assert_killed(kind: &str, st: ExitStatus) {
    assert_eq!(st.signal(), Some(9), "{kind} was ended by SIGKILL, not {st}");
}

impl Drop for Svc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// The Kafka message timestamp (ms).
    pub timestamp: i64,
    pub payload: Vec<u8>,
}

/// Reads what Kafka holds: high watermarks, a group's committed offsets (with their metadata),
/// whole topics. For tests that prove where a stop happened and what was replayed.
pub struct Observer {
    bootstrap: String,
    meta: BaseConsumer,
    groups: Mutex<HashMap<String, BaseConsumer>>,
}

impl Observer {
    pub fn new(bootstrap: &str) -> Self {
        Self {
            bootstrap: bootstrap.to_owned(),
            meta: Self::client(bootstrap, "tracefold-test-observer"),
            groups: Mutex::default(),
        }
    }

    fn client(bootstrap: &str, group: &str) -> BaseConsumer {
        tracefold_runtime::kafka::consumer_config(&crate::kafka(bootstrap), group).create().expect("a Kafka client")
    }

    /// The cluster id: the grouper's default epoch.
    pub fn cluster_id(&self) -> String {
        self.meta.client().fetch_cluster_id(Duration::from_secs(10)).expect("a cluster id")
    }

    pub fn partitions(&self, topic: &str) -> i32 {
        let md = self.meta.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("topic metadata");
        md.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len() as i32)
    }

    /// The end (next offset) of every partition of `topic`.
    pub fn high_watermarks(&self, topic: &str) -> Vec<i64> {
        (0..self.partitions(topic))
            .map(|p| self.meta.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks").1)
            .collect()
    }

    /// `group`'s committed offset (-1: none) and commit metadata, per partition of `topic`.
    /// Only reads (OffsetFetch): it does not join the group.
    pub fn committed(&self, group: &str, topic: &str) -> Vec<(i64, String)> {
        let mut groups = self.groups.lock().unwrap();
        let c = groups.entry(group.to_owned()).or_insert_with(|| Self::client(&self.bootstrap, group));
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions(topic) {
            tpl.add_partition(topic, p);
        }
        let got = c.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
        got.elements()
            .iter()
            .map(|e| {
                let o = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                };
                (o, e.metadata().to_owned())
            })
            .collect()
    }

    /// Offsets only, -1 counted as 0 (nothing committed yet: nothing consumed).
    pub fn committed_offsets(&self, group: &str, topic: &str) -> Vec<i64> {
        self.committed(group, topic).into_iter().map(|(o, _)| o.max(0)).collect()
    }

    /// Whether `group` has committed to the end of `topic` with no pending batch range.
    pub fn caught_up(&self, group: &str, topic: &str, last: &mut String) -> bool {
        let end = self.high_watermarks(topic);
        let cm = self.committed(group, topic);
        *last = format!("{group} committed {cm:?}, {topic} ends at {end:?}");
        cm.len() == end.len() && cm.iter().zip(&end).all(|((o, meta), e)| (*o).max(0) == *e && meta.is_empty())
    }

    /// Waits until `group` has committed to the end of `topic` with no pending range.
    pub async fn wait_caught_up(&self, group: &str, topic: &str, timeout: Duration) {
        eventually(&format!("{group} commits to the end of {topic}"), timeout, |last| {
            self.caught_up(group, topic, last).then_some(())
        })
        .await;
    }

    /// Every record of `topic` from `from` (per partition; empty: the beginning) up to the
    /// high watermarks as they are now.
    pub fn read(&self, topic: &str, from: &[i64]) -> Vec<Record> {
        let end = self.high_watermarks(topic);
        let c = Self::client(&self.bootstrap, "tracefold-test-reader");
        let mut tpl = TopicPartitionList::new();
        for (p, _) in end.iter().enumerate() {
            let start = from.get(p).copied().unwrap_or(0);
            tpl.add_partition_offset(topic, p as i32, Offset::Offset(start)).unwrap();
        }
        c.assign(&tpl).unwrap();
        let mut next: Vec<i64> = (0..end.len()).map(|p| from.get(p).copied().unwrap_or(0)).collect();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while next.iter().zip(&end).any(|(n, e)| n < e) {
            assert!(Instant::now() < deadline, "reading {topic}: at {next:?} of {end:?} after 60 s");
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let p = m.partition() as usize;
                    if m.offset() < end[p] {
                        out.push(Record {
                            partition: m.partition(),
                            offset: m.offset(),
                            // As the grouper reads it.
                            timestamp: m.timestamp().to_millis().unwrap_or(0),
                            payload: m.payload().unwrap_or(&[]).to_vec(),
                        });
                    }
                    next[p] = next[p].max(m.offset() + 1);
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
        out
    }
}

/// Rows of `<db>.aggregates` and how many distinct record identities (epoch, source topic,
/// partition, first offset, index) they hold: equal when no record was stored twice.
pub async fn stored_rows_and_identities(db: &crate::TestDb) -> (u64, u64) {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct N {
        rows: u64,
        ids: u64,
    }
    let n: N = db
        .client
        .query(&format!(
            "SELECT count() AS rows, uniqExact(src_epoch, src_topic, src_partition, src_first_offset, rec_index) AS ids FROM {}.aggregates",
            db.cfg.database
        ))
        .fetch_one()
        .await
        .expect("count the stored rows");
    (n.rows, n.ids)
}

/// The sum of `v`.
pub fn sum(v: &[i64]) -> i64 {
    v.iter().sum()
}
