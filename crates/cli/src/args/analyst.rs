//! Flags of the commands that look at issues and fingerprints.

use super::{parse_duration, ChArgs, Format, InputFormat, IssueAction};
use std::path::PathBuf;
use std::time::Duration;

// `tracefold issue`.
#[derive(clap::Args)]
pub struct IssueArgs {
    #[command(subcommand)]
    pub action: Option<IssueAction>,
    /// Issue id (fingerprint hex), when showing.
    pub id: Option<String>,
    /// Project, when the id exists in several.
    #[arg(long, global = true)]
    pub project: Option<String>,
    /// Hours of history.
    #[arg(long, default_value_t = 24)]
    pub hours: u32,
    /// Output format.
    #[arg(long, value_enum, default_value = "table", global = true)]
    pub format: Format,
    #[command(flatten)]
    pub ch: ChArgs,
}

// `tracefold top`.
#[derive(clap::Args)]
pub struct TopArgs {
    /// Window, e.g. 15m, 1h, 2d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub since: Duration,
    /// Most issues shown.
    #[arg(long, default_value_t = 20)]
    pub limit: u64,
    /// Only this project.
    #[arg(long)]
    pub project: Option<String>,
    /// Ranking: events (most events in the window), users (most affected users), growth (most
    /// events gained over the previous window of the same length), new (first seen in the
    /// window, most events first).
    #[arg(long, value_enum, default_value = "events")]
    pub by: TopByArg,
    /// Count now, never from the precomputed ranking: `--by users` or `--by events` over 7d or
    /// 30d is otherwise answered from the writer's latest ranking while it is fresh
    /// (docs/operations.md, "Precomputed rankings"), and the output says when it was ranked.
    #[arg(long)]
    pub fresh: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    #[command(flatten)]
    pub ch: ChArgs,
}

// `tracefold top --by`.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum TopByArg {
    Events,
    Users,
    Growth,
    New,
}

impl From<TopByArg> for tracefold_store::issues::TopBy {
    fn from(b: TopByArg) -> Self {
        use tracefold_store::issues::TopBy;
        match b {
            TopByArg::Events => TopBy::Events,
            TopByArg::Users => TopBy::Users,
            TopByArg::Growth => TopBy::Growth,
            TopByArg::New => TopBy::New,
        }
    }
}

// `tracefold fingerprint`.
#[derive(clap::Args)]
pub struct FingerprintArgs {
    /// Files (default: stdin).
    pub files: Vec<PathBuf>,
    /// Include the contributing and dropped components.
    #[arg(long)]
    pub explain: bool,
    /// Input format: tracefold events, or Sentry event payloads.
    #[arg(long, value_enum, default_value = "tracefold")]
    pub input: InputFormat,
    /// Grouper config file whose [grouping] section (rules, frame cap) applies.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

// `tracefold outcomes`.
#[derive(clap::Args)]
pub struct OutcomesArgs {
    /// Window, e.g. 15m, 1h, 2d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub since: Duration,
    /// Only this project.
    #[arg(long)]
    pub project: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Print JSON (the same as --format json).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub ch: ChArgs,
}

// `tracefold dlq`.
#[derive(clap::Args)]
pub struct DlqArgs {
    /// Kafka bootstrap servers (tracefold dev prints them).
    #[arg(long, env = "TRACEFOLD_BOOTSTRAP_SERVERS")]
    pub bootstrap_servers: String,
    /// DLQ topic.
    #[arg(long, default_value = "tracefold.dlq")]
    pub topic: String,
    /// Most recent records shown.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Print JSON (the same as --format json).
    #[arg(long)]
    pub json: bool,
}

// `tracefold ui`.
#[derive(clap::Args)]
pub struct UiArgs {
    /// Address to serve the UI on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: String,
    /// Token that allows resolve / ignore / reopen from the UI; without it the UI is read-only.
    #[arg(long, env = "TRACEFOLD_UI_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<String>,
    /// Kafka bootstrap servers, for the signals page (without: no signals page).
    #[arg(long, env = "TRACEFOLD_UI_BOOTSTRAP_SERVERS")]
    pub bootstrap_servers: Option<String>,
    /// Signals topic.
    #[arg(long, default_value = "tracefold.signals")]
    pub signals_topic: String,
    /// A config file whose `[grouping]` section is the grouper's (its `grouper.toml`, or a
    /// `tracefold dev` config): the issue page marks the frames that made the fingerprint under
    /// those rules. Without it, the default grouping config.
    #[arg(long, env = "TRACEFOLD_UI_GROUPING_FROM")]
    pub grouping_from: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub ch: ChArgs,
}
