//! Logs (tracing), metrics (Prometheus) and the operational HTTP endpoints.

use crate::config::{LogFormat, TelemetryConfig};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber once; later calls are no-ops.
pub fn init_logging(cfg: &TelemetryConfig) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log_level));
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
        let _ = match cfg.log_format {
            LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
            LogFormat::Text => builder.compact().try_init(),
        };
    });
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

/// Readiness of a service, shown by `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    /// Marks the service ready or not ready.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether the service is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct OpsState {
    health: Vec<Health>,
    metrics: PrometheusHandle,
}

/// `/metrics`, `/healthz` (the process answers) and `/readyz` (every service is ready).
pub fn ops_router(health: Vec<Health>) -> Router {
    let state = OpsState { health, metrics: metrics_handle() };
    Router::new()
        .route("/metrics", get(|State(s): State<OpsState>| async move { s.metrics.render() }))
        .route("/healthz", get(|| async { "ok\n" }))
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
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, ops_router(health)).with_graceful_shutdown(async move { shutdown.wait().await }).await?;
    Ok(())
}

/// Serves the ops endpoints on `listen` in the background (nothing when it is empty), for
/// services that have no HTTP server of their own.
///
/// # Errors
/// When `listen` is not a socket address.
pub fn spawn_ops(listen: &str, health: Health, shutdown: crate::Shutdown) -> anyhow::Result<()> {
    if listen.is_empty() {
        return Ok(());
    }
    let addr: SocketAddr = listen.parse().map_err(|e| anyhow::anyhow!("invalid listen address {listen:?}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = serve_ops(addr, vec![health], shutdown).await {
            tracing::error!(error = %e, "ops endpoint failed");
        }
    });
    Ok(())
}
