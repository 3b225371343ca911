//! Flags of the quality scores and the benchmarks.

use super::{ChArgs, Format};

// `tracefold detection-quality`.
#[derive(clap::Args)]
pub struct DetectionQualityArgs {
    /// Issues simulated.
    #[arg(long, default_value_t = 500)]
    pub issues: usize,
    /// Weeks simulated.
    #[arg(long, default_value_t = 1)]
    pub weeks: u32,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Which code path is scored: `model`, the spike model on each issue's per-minute counts;
    /// `engine`, the detector's engine fed the same traffic as partial aggregates, out of order
    /// across partitions, evaluated every 500 ms of a simulated clock, as the detector service
    /// runs it.
    #[arg(long, value_enum, default_value = "model")]
    pub path: DetectionPath,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// `tracefold bench-pipeline --pace-by`.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum PaceBy {
    /// Events the grouper has read (in this process).
    Read,
    /// Events the grouper has committed.
    Committed,
}

/// `tracefold detection-quality --path`.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum DetectionPath {
    /// The spike model on per-minute counts.
    Model,
    /// The detector's engine, fed as the service feeds it.
    Engine,
}

// `tracefold grouping-quality`.
#[derive(clap::Args)]
pub struct GroupingQualityArgs {
    /// Events in the corpus.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// True bugs.
    #[arg(long, default_value_t = 300)]
    pub bugs: usize,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

// `tracefold bench-ingest`.
#[derive(clap::Args)]
pub struct BenchIngestArgs {
    /// Events to send.
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// A librdkafka property for the producer, `KEY=VALUE` (repeatable), as under
    /// `[kafka.librdkafka]`: e.g. `compression.type=zstd` to compare codecs.
    #[arg(long = "librdkafka", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub librdkafka: Vec<(String, String)>,
    /// Result format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// `KEY=VALUE`, split at the first `=`; the key must not be empty.
fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

// `tracefold bench-writer`.
#[derive(clap::Args)]
pub struct BenchWriterArgs {
    /// Aggregate records.
    #[arg(long, default_value_t = 200_000)]
    pub records: u64,
    /// Partitions of the aggregates topic (the embedded broker keeps 5 MB of compressed
    /// records per partition; the benchmark fails when it dropped any).
    #[arg(long, default_value_t = 12)]
    pub partitions: i32,
    /// Rows per INSERT at most (the writer's `batch_max_rows`).
    #[arg(long, default_value_t = tracefold_writer::config::WriterSection::default().batch_max_rows)]
    pub batch_max_rows: usize,
    /// Bytes of aggregate JSON per INSERT at most (the writer's `batch_max_bytes`).
    #[arg(long, default_value_t = tracefold_writer::config::WriterSection::default().batch_max_bytes)]
    pub batch_max_bytes: usize,
    /// The writer's consumer loops (`writer.consumers`: each its own partitions and INSERT in
    /// flight).
    #[arg(long, default_value_t = tracefold_writer::config::WriterSection::default().consumers)]
    pub writer_consumers: usize,
    /// Result format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    #[command(flatten)]
    pub ch: ChArgs,
}

// `tracefold bench-pipeline`.
#[derive(clap::Args)]
pub struct BenchPipelineArgs {
    /// Events to send.
    #[arg(long, default_value_t = 500_000)]
    pub events: u64,
    /// Distinct issues.
    #[arg(long, default_value_t = 200)]
    pub issues: usize,
    /// Partitions of the events and aggregates topics.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Most events produced and not yet committed by the grouper, per partition (the load
    /// waits above it; the embedded broker keeps 5 MB of compressed messages per partition).
    #[arg(long, default_value_t = 8_000)]
    pub max_lag_per_partition: i64,
    /// The grouper's batch age (ms): what its committed offsets, and so the load, trail by.
    #[arg(long, default_value_t = 500)]
    pub batch_max_age_ms: u64,
    /// The writer's batch age (ms, `writer.batch_max_age_ms`): with the grouper's, what the
    /// last events wait after the load ends.
    #[arg(long, default_value_t = tracefold_writer::config::WriterSection::default().batch_max_age_ms)]
    pub writer_batch_max_age_ms: u64,
    /// What the lag bound counts: events the grouper has not read (the loosest the embedded
    /// broker's retention allows) or not committed (what a load in another process can see).
    /// Default: `read`; `committed` with `--processes` (the only one it allows).
    #[arg(long, value_enum)]
    pub pace_by: Option<PaceBy>,
    /// The grouper's consumer loops (threads sharing the partitions, `grouper.consumers`).
    #[arg(long, default_value_t = 2)]
    pub grouper_consumers: usize,
    /// Run the grouper, the writer and the detector as processes of their own (the
    /// tracefold-grouper, tracefold-writer and tracefold-detector binaries beside this one)
    /// and report each one's peak RSS and CPU seconds; this process keeps the embedded broker
    /// and the load. They read their usual `TRACEFOLD__...` variables (batch sizes,
    /// `[kafka.librdkafka]` options).
    #[arg(long)]
    pub processes: bool,
    /// Result format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    #[command(flatten)]
    pub ch: ChArgs,
}

// `tracefold bench-detector`.
#[derive(clap::Args)]
pub struct BenchDetectorArgs {
    /// Distinct issues, all new, spread evenly over the minutes.
    #[arg(long, default_value_t = 1_000_000)]
    pub issues: u64,
    /// Minutes they arrive over.
    #[arg(long, default_value_t = 60)]
    pub minutes: u64,
    /// The engine's `max_issues` (default: the detector's default).
    #[arg(long)]
    pub max_issues: Option<usize>,
    /// Result format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

// `tracefold bench-queries`.
#[derive(clap::Args)]
pub struct BenchQueriesArgs {
    /// Events in all (generated as aggregate rows with counts, inside ClickHouse).
    #[arg(long, default_value_t = 10_000_000)]
    pub events: u64,
    /// Distinct issues with events in every hour.
    #[arg(long, default_value_t = 2_000)]
    pub issues: u64,
    /// Aggregate rows (default: events / 20).
    #[arg(long)]
    pub rows: Option<u64>,
    /// Days of data at most (fewer when the rows cannot give every hour --issues rows).
    #[arg(long, default_value_t = 30)]
    pub days: u64,
    /// Timed runs of each query, after one warm-up run.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Keep the scratch database (its name is printed) instead of dropping it.
    #[arg(long)]
    pub keep: bool,
    /// Result format (table: a Markdown table, then the JSON line).
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    #[command(flatten)]
    pub ch: ChArgs,
}

// `tracefold bench-storage`.
#[derive(clap::Args)]
pub struct BenchStorageArgs {
    /// Events per case.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Issues per hour of the cases, comma-separated (each runs live and backfill).
    #[arg(long, value_delimiter = ',', default_values_t = [50usize, 2_000, 20_000])]
    pub issues: Vec<usize>,
    /// Zipf exponent of issue popularity (0: every issue equally likely).
    #[arg(long, default_value_t = 1.1)]
    pub zipf: f64,
    /// Events per grouper batch.
    #[arg(long, default_value_t = 10_000)]
    pub batch_events: u64,
    /// Issues per hour of the memory cases (grouper aggregation and writer rows), comma-separated;
    /// 0 for none.
    #[arg(long, value_delimiter = ',', default_values_t = [20_000usize, 200_000])]
    pub memory_issues: Vec<usize>,
    /// Events per issue in the memory cases.
    #[arg(long, default_value_t = 3)]
    pub memory_events_per_issue: u64,
    /// Result format (table: a Markdown table, then the JSON line).
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    #[command(flatten)]
    pub ch: ChArgs,
}
