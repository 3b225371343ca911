//! The services as child processes (the real binaries, built with the tests), a private
//! ClickHouse server per test, and what a test needs to prove that a failure really happened:
//! every line a child writes to stderr is kept (failpoint lines, logs), its ops endpoint is
//! bound on port 0 and read back from its log, and a metric read that fails fails the test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
}

impl Env {
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
            .env("RUST_LOG", "warn,tracefold_runtime::telemetry=info")
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
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{kind}] {line}");
                keep.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let ops = loop {
            let found = lines.lock().unwrap().iter().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["message"].as_str()? == "serving /metrics, /healthz, /readyz").then(|| v["addr"].as_str()?.parse().ok())?
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
        Svc { kind, child, ops, lines }
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

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status within `timeout`.
    pub fn term(mut self, timeout: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "{} did not stop within {timeout:?} after SIGTERM", self.kind);
            std::thread::sleep(Duration::from_millis(100));
        }
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
        assert!(body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"), "{}: /metrics: {body}", self.kind);
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

impl Drop for Svc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
