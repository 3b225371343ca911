//! Logs (tracing), metrics (Prometheus) and the operational HTTP endpoints.

use crate::config::{LogFormat, TelemetryConfig};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;

/// Set once the global tracing subscriber is installed (by either function below).
static LOGGING: OnceLock<()> = OnceLock::new();

/// Installs the global tracing subscriber once; later calls are no-ops. Services (the
/// binaries, containers) log this way: everything `cfg.log_level` (or `RUST_LOG`) lets
/// through, to stderr, as text or JSON.
pub fn init_logging(cfg: &TelemetryConfig) {
    LOGGING.get_or_init(|| {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log_level));
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
        let _ = match cfg.log_format {
            LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
            LogFormat::Text => builder.compact().try_init(),
        };
    });
}

/// Installs the global tracing subscriber of an interactive command (`tracefold dev`), once:
/// `log_file` (appended to; created with its directory) gets everything `cfg.log_level` (or
/// `RUST_LOG`) lets through, in `cfg.log_format` without colours, and the terminal (stderr)
/// only WARN and above. Call [`init_logging`] instead for everything on the terminal.
///
/// # Errors
/// When the file cannot be opened; nothing is installed then.
pub fn init_interactive_logging(cfg: &TelemetryConfig, log_file: &std::path::Path) -> std::io::Result<()> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    if let Some(dir) = log_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log_file)?;
    LOGGING.get_or_init(|| {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log_level));
        let to_file = tracing_subscriber::fmt::layer().with_writer(Mutex::new(file)).with_ansi(false);
        let to_file = match cfg.log_format {
            LogFormat::Json => to_file.json().flatten_event(true).with_current_span(true).with_filter(filter).boxed(),
            LogFormat::Text => to_file.with_filter(filter).boxed(),
        };
        let to_terminal = tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(std::io::stderr)
            .with_filter(tracing_subscriber::filter::LevelFilter::WARN);
        let _ = tracing_subscriber::registry().with(to_file).with(to_terminal).try_init();
    });
    Ok(())
}

/// Installs the Prometheus recorder once and returns its handle (shared by all services of
/// one process).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests): then ours only renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// How long a work loop may go without a heartbeat before `/healthz` fails and the watchdog
/// stops the process.
pub const LIVENESS_DEADLINE: Duration = Duration::from_secs(60);

/// Exit code of a process whose work loop stalled or died.
pub const EXIT_UNHEALTHY: i32 = 70;

fn uptime_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Readiness and liveness of one service's work loop.
///
/// Readiness (`/readyz`) is what the service says. Liveness (`/healthz`) is measured: the loop
/// calls [`Health::beat`] every iteration (and while it waits on Kafka or ClickHouse); when no
/// beat came within the deadline, or the loop's thread died, the service is not live. Clones
/// share state.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug)]
struct HealthInner {
    name: String,
    ready: AtomicBool,
    /// Milliseconds since process start of the last beat.
    last_beat: AtomicU64,
    deadline_ms: AtomicU64,
    /// The loop ended on purpose (drained): no more beats expected.
    stopped: AtomicBool,
    dead: Mutex<Option<String>>,
    /// Other loops of the same service (see [`Health::child`]): their liveness is part of this
    /// one's.
    children: Mutex<Vec<Health>>,
    /// Messages the loop has taken from its source (a consumer loop: delivered to its
    /// strategy), for what watches its progress in the same process.
    consumed: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Self::named("service")
    }
}

impl Health {
    /// The health of the loop called `name` (`grouper`, `writer`, ...), live from now on for
    /// one deadline.
    pub fn named(name: &str) -> Self {
        Self {
            inner: Arc::new(HealthInner {
                name: name.to_owned(),
                ready: AtomicBool::new(false),
                last_beat: AtomicU64::new(uptime_ms()),
                deadline_ms: AtomicU64::new(LIVENESS_DEADLINE.as_millis() as u64),
                stopped: AtomicBool::new(false),
                dead: Mutex::new(None),
                children: Mutex::new(Vec::new()),
                consumed: AtomicU64::new(0),
            }),
        }
    }

    /// The health of another work loop of the same service, called `name`: it beats on its
    /// own, and this health is not live while it is not (so that `/healthz` and the watchdog
    /// see every loop of a service that runs two, such as the writer's outcomes consumer). It
    /// starts with this health's deadline.
    pub fn child(&self, name: &str) -> Health {
        let child = Health::named(name);
        child.inner.deadline_ms.store(self.inner.deadline_ms.load(Ordering::Relaxed), Ordering::Relaxed);
        self.inner.children.lock().expect("not poisoned").push(child.clone());
        child
    }

    /// The loop's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Sets the liveness deadline.
    pub fn set_deadline(&self, d: Duration) {
        self.inner.deadline_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Marks the service ready or not ready.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether the service is ready.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    /// The loop made progress (cheap: one clock read and one store).
    pub fn beat(&self) {
        self.inner.last_beat.store(uptime_ms(), Ordering::Relaxed);
    }

    /// The loop took a message from its source.
    pub fn consumed_one(&self) {
        self.inner.consumed.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages the loop and its children ([`Health::child`]) have taken from their source so
    /// far: how far they have read, for an in-process load that paces itself by the reads
    /// (`bench-pipeline`). A sum over the loops, so not a measure of health: one loop reading
    /// hides another that is stuck. Health is each loop's own liveness ([`Health::problems`]).
    pub fn consumed(&self) -> u64 {
        let children: u64 = self.inner.children.lock().expect("not poisoned").iter().map(Health::consumed).sum();
        self.inner.consumed.load(Ordering::Relaxed) + children
    }

    /// The loop ended on purpose; it is no longer expected to beat.
    pub fn set_stopped(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.set_ready(false);
    }

    /// The loop's thread died (a panic, or an error it cannot recover from).
    pub fn set_dead(&self, why: &str) {
        *self.inner.dead.lock().expect("not poisoned") = Some(why.to_owned());
        self.set_ready(false);
    }

    /// `Ok` while the loop is live; else what is wrong.
    ///
    /// # Errors
    /// The loop died, or made no progress within its deadline.
    pub fn liveness(&self) -> Result<(), String> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// What is wrong with each loop of the service, children first: every loop that died or
    /// made no progress within its deadline, each on its own (one stalled loop of several is
    /// named even while the others progress).
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> =
            self.inner.children.lock().expect("not poisoned").iter().flat_map(Health::problems).collect();
        if let Some(why) = self.inner.dead.lock().expect("not poisoned").as_deref() {
            out.push(format!("{}: died: {why}", self.inner.name));
            return out;
        }
        if self.inner.stopped.load(Ordering::SeqCst) {
            return out;
        }
        let idle = uptime_ms().saturating_sub(self.inner.last_beat.load(Ordering::Relaxed));
        let deadline = self.inner.deadline_ms.load(Ordering::Relaxed);
        if idle > deadline {
            out.push(format!(
                "{}: no progress for {} s (deadline {} s)",
                self.inner.name,
                idle / 1000,
                deadline / 1000
            ));
        }
        out
    }
}

/// The message of a caught panic (`panic!` with a string or a format), else `unknown panic`.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs a service loop, turning a panic into an error and marking `health` dead when the loop
/// fails, so that `/healthz` and the watchdog see it.
///
/// # Errors
/// What `run` returns, or the panic as an error.
pub fn run_guarded(health: &Health, run: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(r) => r,
        Err(panic) => Err(anyhow::anyhow!("{} panicked: {}", health.name(), panic_message(panic.as_ref()))),
    };
    match &result {
        Ok(()) => health.set_stopped(),
        Err(e) => health.set_dead(&format!("{e:#}")),
    }
    result
}

/// Checks every loop once a second; when one died or stalled, logs why and exits the process
/// with [`EXIT_UNHEALTHY`] so that the supervisor (Kubernetes, systemd) restarts it. For the
/// service binaries and `tracefold dev`, not for tests that host services in-process.
pub fn spawn_watchdog(healths: Vec<Health>) {
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let problems: Vec<String> = healths.iter().flat_map(Health::problems).collect();
            if !problems.is_empty() {
                tracing::error!(problems = ?problems, "a work loop died or stalled; exiting so that it is restarted");
                eprintln!("tracefold: unhealthy: {}", problems.join("; "));
                std::process::exit(EXIT_UNHEALTHY);
            }
        })
        .expect("can start the watchdog thread");
}

#[derive(Clone)]
struct OpsState {
    health: Vec<Health>,
    metrics: PrometheusHandle,
}

/// `/metrics`, `/healthz` (every work loop is live: 200 `ok`, else 503 with a JSON body that
/// names the loop and the problem) and `/readyz` (every service is ready).
pub fn ops_router(health: Vec<Health>) -> Router {
    let state = OpsState { health, metrics: metrics_handle() };
    Router::new()
        .route("/metrics", get(|State(s): State<OpsState>| async move { s.metrics.render() }))
        .route(
            "/healthz",
            get(|State(s): State<OpsState>| async move {
                let problems: Vec<String> = s.health.iter().flat_map(Health::problems).collect();
                if problems.is_empty() {
                    (StatusCode::OK, "ok\n".to_owned()).into_response()
                } else {
                    let body = serde_json::json!({"status": "unhealthy", "problems": problems});
                    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
                }
            }),
        )
        .route(
            "/readyz",
            get(|State(s): State<OpsState>| async move {
                if s.health.iter().all(Health::is_ready) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .with_state(state)
}

/// Serves [`ops_router`] on `addr` until `shutdown` fires.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve_ops(addr: SocketAddr, health: Vec<Health>, shutdown: crate::Shutdown) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    serve_ops_on(listener, health, shutdown).await
}

/// Serves [`ops_router`] on a bound `listener` until `shutdown` fires.
async fn serve_ops_on(
    listener: tokio::net::TcpListener,
    health: Vec<Health>,
    shutdown: crate::Shutdown,
) -> anyhow::Result<()> {
    // The bound address: with port 0 the system picks one, and tests read it from this line.
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    crate::server::serve(listener, ops_router(health), crate::server::DEFAULT_HEADER_TIMEOUT, async move {
        shutdown.wait().await;
    })
    .await?;
    Ok(())
}

/// Serves the ops endpoints on `listen` in the background (nothing when it is empty), for
/// services that have no HTTP server of their own; the address of the endpoints (`None`
/// when `listen` is empty). The address is bound before this returns, so that a service whose
/// ops address is taken does not start: it would run with no `/healthz` for its supervisor
/// and no `/metrics`, which is how every drop is counted. Call it inside a Tokio runtime.
///
/// # Errors
/// When `listen` is not a socket address, or it cannot be bound (in use, not local): the
/// error names the address.
pub fn spawn_ops(listen: &str, health: Health, shutdown: crate::Shutdown) -> anyhow::Result<Option<SocketAddr>> {
    if listen.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = listen.parse().map_err(|e| anyhow::anyhow!("invalid listen address {listen:?}: {e}"))?;
    let bound = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for /metrics, /healthz and /readyz (--listen): {e}"))?;
    let local = bound.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = serve_ops_on(bound, vec![health], shutdown).await {
            tracing::error!(error = %e, "ops endpoint failed");
        }
    });
    Ok(Some(local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_follows_beats_deaths_and_stops() {
        let h = Health::named("grouper");
        assert_eq!(h.liveness(), Ok(()));
        h.set_deadline(Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(120));
        let err = h.liveness().unwrap_err();
        assert!(err.starts_with("grouper: no progress for"), "{err}");
        h.beat();
        assert_eq!(h.liveness(), Ok(()));
        h.set_stopped();
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(h.liveness(), Ok(()), "a drained loop is not stalled");
        // A second loop of the service: its stall or death is the service's.
        let w = Health::named("writer");
        let outcomes = w.child("writer-outcomes");
        outcomes.set_deadline(Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(120));
        let err = w.liveness().unwrap_err();
        assert!(err.starts_with("writer-outcomes: no progress for"), "{err}");
        outcomes.beat();
        assert_eq!(w.liveness(), Ok(()));
        outcomes.set_dead("fatal consumer error");
        assert_eq!(w.liveness().unwrap_err(), "writer-outcomes: died: fatal consumer error");
        let d = Health::named("writer");
        let r = run_guarded(&d, || panic!("boom"));
        assert!(r.unwrap_err().to_string().contains("writer panicked: boom"));
        assert!(d.liveness().unwrap_err().contains("writer: died: writer panicked: boom"));
        assert!(!d.is_ready());
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn healthz_names_the_one_stalled_loop_while_the_others_progress() {
        // A service of three loops (the grouper with `consumers = 3`); the children start with
        // the service's deadline.
        let service = Health::named("grouper");
        service.set_deadline(Duration::from_millis(500));
        let (one, two) = (service.child("grouper-1"), service.child("grouper-2"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = ops_router(vec![service.clone()]);
        tokio::spawn(async move { axum::serve(listener, router).await });
        let problems = |body: &str| -> Vec<String> {
            assert!(body.starts_with("HTTP/1.1 503"), "{body}");
            let json = &body[body.find("\r\n\r\n").unwrap() + 4..];
            let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {body}"));
            v["problems"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_owned()).collect()
        };
        let stalled =
            |p: &[String]| -> Vec<String> { p.iter().map(|p| p.split(':').next().unwrap().to_owned()).collect() };
        // grouper-2 stalls; the main loop and grouper-1 go on.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        service.beat();
        one.beat();
        let p = problems(&get(addr, "/healthz").await);
        assert_eq!(stalled(&p), ["grouper-2"], "{p:?}");
        assert!(p[0].starts_with("grouper-2: no progress for"), "{p:?}");
        // The reverse: the children go on while the main loop is stuck.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        one.beat();
        two.beat();
        assert_eq!(stalled(&problems(&get(addr, "/healthz").await)), ["grouper"]);
        // Two of them stuck: both named.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        two.beat();
        assert_eq!(stalled(&problems(&get(addr, "/healthz").await)), ["grouper-1", "grouper"]);
        service.beat();
        one.beat();
        two.beat();
        let ok = get(addr, "/healthz").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "every loop beat: {ok}");
    }

    /// A service whose ops address is taken does not start without its `/healthz` and
    /// `/metrics`: the error names the address (it used to log an ERROR line from a task and
    /// run on, with nothing for its supervisor to probe).
    #[tokio::test]
    async fn an_ops_address_in_use_is_an_error_naming_it() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let e = spawn_ops(&addr.to_string(), Health::named("grouper"), crate::Shutdown::new()).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains(&format!("cannot listen on {addr}")) && e.contains("/healthz"), "{e}");
        // A free address is served once the call returns.
        let shutdown = crate::Shutdown::new();
        let served = spawn_ops("127.0.0.1:0", Health::named("grouper"), shutdown.clone()).unwrap().unwrap();
        assert!(get(served, "/healthz").await.starts_with("HTTP/1.1 200"));
        shutdown.trigger();
        assert_eq!(spawn_ops("", Health::named("grouper"), shutdown).unwrap(), None, "no address: no endpoint");
    }

    #[tokio::test]
    async fn healthz_fails_when_a_loop_dies() {
        let (live, dying) = (Health::named("writer"), Health::named("grouper"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = ops_router(vec![live.clone(), dying.clone()]);
        tokio::spawn(async move { axum::serve(listener, router).await });
        let ok = get(addr, "/healthz").await;
        assert!(ok.starts_with("HTTP/1.1 200") && ok.ends_with("ok\n"), "{ok}");
        let _ = run_guarded(&dying, || Err(anyhow::anyhow!("fatal consumer error")));
        let bad = get(addr, "/healthz").await;
        assert!(bad.starts_with("HTTP/1.1 503"), "{bad}");
        assert!(bad.contains(r#""problems":["grouper: died: fatal consumer error"]"#), "{bad}");
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
    }
}
