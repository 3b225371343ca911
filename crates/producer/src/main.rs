//! `tracefold-producer`: the HTTP ingestion endpoint as its own process.

use clap::Parser;
use tracefold_runtime::service::{ServiceArgs, ServiceConfig as _};
use tracefold_runtime::telemetry::{self, Health};
use tracefold_runtime::Shutdown;

#[derive(Parser)]
#[command(version, about = "tracefold producer: HTTP error events -> Kafka")]
struct Args {
    #[command(flatten)]
    common: ServiceArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cfg = tracefold_producer::load_config(&args.common)?;
    telemetry::init_logging(cfg.telemetry());
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let listen = cfg.listen().clone();
    let listener =
        tokio::net::TcpListener::bind(&listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let health = Health::named("producer");
    telemetry::spawn_watchdog(vec![health.clone()]);
    tracefold_producer::serve(cfg, listener, shutdown, health, Vec::new()).await
}
