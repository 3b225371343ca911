//! `tracefold-grouper`: the grouper as its own process.

use clap::Parser;
use tracefold_runtime::service::{run_blocking, ServiceArgs};

#[derive(Parser)]
#[command(version, about = "tracefold grouper: raw events -> issues -> partial aggregates")]
struct Args {
    #[command(flatten)]
    common: ServiceArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    run_blocking::<tracefold_grouper::Config>("grouper", &args.common, tracefold_grouper::service::run).await
}
