//! `tracefold-detector`: the detector as its own process.

use clap::Parser;
use std::path::PathBuf;
use tracefold_runtime::telemetry::{self, Health};
use tracefold_runtime::Shutdown;

#[derive(Parser)]
#[command(version, about = "tracefold detector: new-issue, regression, spike and threshold signals")]
struct Args {
    /// TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides the config).
    #[arg(long)]
    bootstrap_servers: Option<String>,
    /// ClickHouse HTTP URL (overrides the config).
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// Address for /metrics, /healthz and /readyz (overrides the config).
    #[arg(long)]
    listen: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cfg: tracefold_detector::Config =
        tracefold_runtime::config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(b) = args.bootstrap_servers {
        cfg.kafka.bootstrap_servers = b;
    }
    if let Some(u) = args.clickhouse_url {
        cfg.clickhouse.url = u;
    }
    if let Some(l) = args.listen {
        cfg.detector.listen = l;
    }
    telemetry::init_logging(&cfg.telemetry);
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let health = Health::default();
    telemetry::spawn_ops(&cfg.detector.listen, health.clone(), shutdown.clone())?;
    let (s, h) = (shutdown.clone(), health.clone());
    let result = tokio::task::spawn_blocking(move || tracefold_detector::service::run(&cfg, &s, &h)).await?;
    shutdown.trigger();
    result
}
