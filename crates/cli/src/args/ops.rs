//! Flags of the commands that run the pipeline, send load and manage the schema.

use super::{ChArgs, Format};
use std::path::PathBuf;

// `tracefold dev`.
#[derive(clap::Args)]
pub struct DevArgs {
    /// Combined config file (sections of every service).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// ClickHouse HTTP URL.
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    pub clickhouse_url: String,
    /// ClickHouse database.
    #[arg(long)]
    pub database: Option<String>,
    /// HTTP listen address of the producer.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Listen address of the web UI (`tracefold ui`), started with the pipeline; `off`: none.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub ui_listen: String,
    /// Only run the embedded Kafka and print its bootstrap servers.
    #[arg(long)]
    pub broker_only: bool,
    /// Brokers of the embedded Kafka (librdkafka's mock cluster). With more than one, topics
    /// are replicated min(3, N) times and partition leaders spread over the brokers, so
    /// leader moves and broker outages can be tried (see tests/broker_faults.rs).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=64))]
    pub brokers: i32,
    /// Partitions of the events and aggregates topics (default 32: each partition of the
    /// embedded Kafka keeps its own 5 MiB, which the producer's backpressure bound is half of).
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Send this many sample events once started, then show the top issues.
    #[arg(long, default_value_t = 0)]
    pub sample_events: u64,
    /// Distinct issues in the sample load.
    #[arg(long, default_value_t = 40)]
    pub sample_issues: usize,
    /// Exit once the sample load is stored and shown.
    #[arg(long)]
    pub exit: bool,
    /// Send every signal (new issue, regression, spike, threshold) to this webhook.
    #[arg(long)]
    pub webhook: Option<String>,
    /// Every service log line on the terminal (and migration steps). Without it, the terminal
    /// gets WARN and above and the full log goes to .tracefold/logs/dev.log.
    #[arg(short, long)]
    pub verbose: bool,
}

// `tracefold signals`.
#[derive(clap::Args)]
pub struct SignalsArgs {
    /// Kafka bootstrap servers (tracefold dev prints them).
    #[arg(long)]
    pub bootstrap_servers: String,
    /// Signals topic.
    #[arg(long, default_value = "tracefold.signals")]
    pub topic: String,
    /// Most recent signals shown.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

// `tracefold migrate`.
#[derive(clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub ch: ChArgs,
    /// Cluster name: ON CLUSTER, Replicated*MergeTree, and Distributed `<table>_all` tables.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Days kept by TTL on servers that support it (21+).
    #[arg(long, default_value_t = 90)]
    pub retention_days: u32,
    /// Print the statements for a server of this version instead of applying them.
    #[arg(long, value_name = "VERSION")]
    pub print_for: Option<String>,
}

// `tracefold retention`.
#[derive(clap::Args)]
pub struct RetentionArgs {
    #[command(flatten)]
    pub ch: ChArgs,
    /// Days to keep.
    #[arg(long)]
    pub days: u32,
    /// Only list what would be dropped.
    #[arg(long)]
    pub dry_run: bool,
}

// `tracefold loadgen`.
#[derive(clap::Args)]
pub struct LoadgenArgs {
    /// Producer base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, conflicts_with = "bootstrap_servers", required_unless_present = "bootstrap_servers")]
    pub http: Option<String>,
    /// Kafka bootstrap servers (publishes to the events topic directly).
    #[arg(long)]
    pub bootstrap_servers: Option<String>,
    /// Events topic (with --bootstrap-servers).
    #[arg(long, default_value = "tracefold.events")]
    pub topic: String,
    /// Events to send.
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,
    /// Events per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Distinct issues.
    #[arg(long, default_value_t = 50)]
    pub issues: usize,
    /// Distinct users.
    #[arg(long, default_value_t = 5_000)]
    pub users: u64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Events per HTTP request.
    #[arg(long, default_value_t = 200)]
    pub batch: usize,
    /// HTTP requests in flight.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// With --http: most times one request is sent again (same events, same ids) after the
    /// producer answered 503 or 429 with Retry-After (backpressure, limits); it waits the time
    /// Retry-After names each time. The summary counts the waits.
    #[arg(long, default_value_t = 300)]
    pub max_retries: u32,
    /// With --bootstrap-servers: pause whenever the consumer group --lag-group is more than
    /// this many events behind (librdkafka's mock cluster keeps only 5 MB per partition).
    #[arg(long)]
    pub max_lag: Option<i64>,
    /// The consumer group whose lag --max-lag bounds.
    #[arg(long, default_value = "tracefold-grouper")]
    pub lag_group: String,
    /// Summary format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

// `tracefold gen`.
#[derive(clap::Args)]
pub struct GenArgs {
    /// Events.
    #[arg(long, default_value_t = 1000)]
    pub events: u64,
    /// Distinct issues.
    #[arg(long, default_value_t = 50)]
    pub issues: usize,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Reference time, Unix seconds (default: now); events fall in the hour before it.
    #[arg(long)]
    pub now: Option<i64>,
}

// `tracefold sourcemaps`.
#[derive(clap::Args)]
pub struct SourcemapsArgs {
    #[command(subcommand)]
    pub action: SourcemapsAction,
}

#[derive(clap::Subcommand)]
pub enum SourcemapsAction {
    /// Upload a build's source maps (`*.js.map` under DIR) and the minified files beside them
    /// (`*.js`) for a release. Every map is checked before anything is sent.
    Upload(SourcemapsUploadArgs),
}

// `tracefold sourcemaps upload`.
#[derive(clap::Args)]
pub struct SourcemapsUploadArgs {
    /// Project slug (or its registered numeric id).
    #[arg(long)]
    pub project: String,
    /// Release the build belongs to (as the events' `release`).
    #[arg(long)]
    pub release: String,
    /// Where DIR is served from, as the frames' URLs show it without scheme and host:
    /// `~/static/js` makes DIR/main.js `~/static/js/main.js`.
    #[arg(long, default_value = "~")]
    pub url_prefix: String,
    /// The producer's URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "TRACEFOLD_ENDPOINT")]
    pub endpoint: String,
    /// One of the project's keys (`tracefold dev` keeps the dev project's in .tracefold/dev-key).
    #[arg(long, env = "TRACEFOLD_KEY", hide_env_values = true)]
    pub key: String,
    /// The build's output directory.
    pub dir: PathBuf,
}
