//! `tracefold bench-ingest`: the HTTP ingest rate of the producer on the embedded Kafka.

use crate::{gen, loadgen};
use std::time::Duration;
use tracefold_runtime::devbroker::DevBroker;

/// What `bench-ingest` sends.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Events to send.
    pub events: u64,
    /// Events per request.
    pub batch: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Show a progress bar.
    pub progress: bool,
}

/// What `bench-ingest` measured.
#[derive(Debug, Clone)]
pub struct IngestReport {
    /// The options it ran with.
    pub opts: IngestOptions,
    /// The load's summary.
    pub load: loadgen::LoadSummary,
}

impl IngestReport {
    /// HTTP requests sent.
    pub fn requests(&self) -> u64 {
        self.load.sent.div_ceil(self.opts.batch.max(1) as u64)
    }

    /// The report as JSON.
    pub fn json(&self) -> serde_json::Value {
        let (s, batch, concurrency) = (&self.load, self.opts.batch, self.opts.concurrency);
        serde_json::json!({
            "events": s.sent, "accepted": s.accepted, "failed": s.failed, "batch": batch, "concurrency": concurrency,
            "seconds": s.elapsed_secs, "events_per_sec": s.events_per_sec, "requests_per_sec": self.requests() as f64 / s.elapsed_secs,
        })
    }

    /// The report as one line of text.
    pub fn table(&self) -> String {
        let (s, batch, concurrency) = (&self.load, self.opts.batch, self.opts.concurrency);
        let requests = self.requests();
        format!(
            "{} events in {} requests of {batch} ({concurrency} in flight): {:.2}s, {:.0} events/s, {:.0} requests/s, {} failed\n",
            s.accepted,
            requests,
            s.elapsed_secs,
            s.events_per_sec,
            requests as f64 / s.elapsed_secs,
            s.failed
        )
    }
}

/// Starts a producer on a one-broker embedded Kafka and sends it generated events over HTTP.
///
/// # Errors
/// When the broker or the producer cannot start, or the load cannot reach it.
pub async fn ingest(opts: &IngestOptions) -> anyhow::Result<IngestReport> {
    super::quiet_logging();
    let broker = DevBroker::start(1, &Default::default(), Some(6))?;
    let cfg = tracefold_producer::Config {
        kafka: tracefold_runtime::config::KafkaConfig {
            bootstrap_servers: broker.bootstrap_servers(),
            ..Default::default()
        },
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let shutdown = tracefold_runtime::Shutdown::new();
    let health = tracefold_runtime::telemetry::Health::default();
    let server = tokio::spawn(tracefold_producer::serve(cfg, listener, shutdown.clone(), health.clone(), Vec::new()));
    while !health.is_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Pre-generate nothing: the generator runs in the same process, as a real client would.
    let load = loadgen::LoadOptions {
        events: opts.events,
        rate: loadgen::Rate::Unpaced,
        batch: opts.batch,
        concurrency: opts.concurrency,
        progress: opts.progress,
        max_lag: None,
        max_retries: loadgen::DEFAULT_MAX_RETRIES,
        gen: gen::GenOptions { issues: 200, now_secs: gen::now_secs(), spread_secs: 60, ..Default::default() },
    };
    let s = loadgen::run(&loadgen::Target::Http(url), &load).await?;
    shutdown.trigger();
    server.await??;
    Ok(IngestReport { opts: opts.clone(), load: s })
}
