//! `tracefold-detector`: the detector as its own process.

use clap::Parser;
use tracefold_runtime::service::{run_blocking, ServiceArgs};

#[derive(Parser)]
#[command(version, about = "tracefold detector: new-issue, regression, spike and threshold signals")]
struct Args {
    #[command(flatten)]
    common: ServiceArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    run_blocking::<tracefold_detector::Config>("detector", &args.common, tracefold_detector::service::run).await
}
