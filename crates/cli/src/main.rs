//! `tracefold`: run the pipeline locally, apply migrations, generate load, look at issues.
//!
//! This file parses the arguments (`args`) and dispatches to the command bodies (`cmd`); the
//! generators, the dev pipeline and the harnesses are in `tracefold_devtools`.

mod args;
mod cmd;
mod out;

use args::{Cli, Cmd};
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match run().await {
        // The reader of the output went away (`tracefold gen | head`): done, quietly.
        Err(e) if out::is_closed_pipe(&e) => Ok(()),
        r => r,
    }
}

async fn run() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Dev(a) => cmd::dev::run(a).await,
        Cmd::Signals(a) => cmd::signals::run(&a),
        Cmd::Migrate(a) => cmd::migrate::migrate(a).await,
        Cmd::Retention(a) => cmd::migrate::retention(a).await,
        Cmd::Loadgen(a) => cmd::load::loadgen(a).await,
        Cmd::Gen(a) => cmd::load::gen(&a),
        Cmd::Top(a) => cmd::issues::top(a).await,
        Cmd::Ui(a) => cmd::ui::run(a).await,
        Cmd::Outcomes(a) => cmd::outcomes::outcomes(a).await,
        Cmd::Dlq(a) => cmd::outcomes::dlq(&a),
        Cmd::Sourcemaps(a) => cmd::sourcemaps::run(a).await,
        Cmd::Issue(a) => cmd::issues::issue(a).await,
        Cmd::Fingerprint(a) => cmd::fingerprint::run(&a),
        Cmd::DetectionQuality(a) => cmd::measure::detection_quality(&a),
        Cmd::GroupingQuality(a) => cmd::measure::grouping_quality(&a),
        Cmd::BenchIngest(a) => cmd::measure::bench_ingest(&a).await,
        Cmd::BenchWriter(a) => cmd::measure::bench_writer(&a).await,
        Cmd::BenchPipeline(a) => cmd::measure::bench_pipeline(&a).await,
        Cmd::BenchDetector(a) => cmd::measure::bench_detector(&a),
        Cmd::BenchQueries(a) => cmd::measure::bench_queries(&a).await,
        Cmd::BenchStorage(a) => cmd::measure::bench_storage(&a).await,
    }
}
