//! `tracefold-producer`: the HTTP ingestion endpoint as its own process.

use clap::Parser;
use std::path::PathBuf;
use tracefold_runtime::telemetry::{self, Health};
use tracefold_runtime::Shutdown;

#[derive(Parser)]
#[command(version, about = "tracefold producer: HTTP error events -> Kafka")]
struct Args {
    /// TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides the config).
    #[arg(long)]
    bootstrap_servers: Option<String>,
    /// Listen address (overrides the config).
    #[arg(long)]
    listen: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cfg: tracefold_producer::Config =
        tracefold_runtime::config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(b) = args.bootstrap_servers {
        cfg.kafka.bootstrap_servers = b;
    }
    if let Some(l) = args.listen {
        cfg.http.listen = l;
    }
    telemetry::init_logging(&cfg.telemetry);
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let listener = tokio::net::TcpListener::bind(&cfg.http.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.http.listen))?;
    tracefold_producer::serve(cfg, listener, shutdown, Health::default(), Vec::new()).await
}
