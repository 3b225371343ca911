//! `tracefold-writer`: the writer as its own process.

use clap::Parser;
use tracefold_runtime::service::{run_blocking, ServiceArgs};

#[derive(Parser)]
#[command(version, about = "tracefold writer: partial aggregates -> ClickHouse, exactly once")]
struct Args {
    #[command(flatten)]
    common: ServiceArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    run_blocking::<tracefold_writer::Config>("writer", &args.common, tracefold_writer::service::run).await
}
