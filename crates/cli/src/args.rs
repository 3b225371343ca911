//! The command line's arguments: every command, flag and default of `tracefold` (clap
//! derive). The doc comments are the help text. Command bodies are in `crate::cmd`.
//!
//! The per-command flag structs are in [`ops`] (pipeline and schema), [`analyst`] (issues,
//! fingerprints) and [`measure`] (quality and benchmarks). They carry plain `//` comments:
//! a doc comment on them would become help text (the command's is on its `Cmd` variant).

use clap::{Parser, Subcommand, ValueEnum};
use std::time::Duration;
use tracefold_runtime::config::ClickHouseConfig;

mod analyst;
mod measure;
mod ops;

pub use analyst::{DlqArgs, FingerprintArgs, IssueArgs, OutcomesArgs, TopArgs, UiArgs};
pub use measure::{
    BenchDetectorArgs, BenchIngestArgs, BenchPipelineArgs, BenchQueriesArgs, BenchStorageArgs, BenchWriterArgs,
    DetectionPath, DetectionQualityArgs, GroupingQualityArgs, PaceBy,
};
pub use ops::{
    DevArgs, GenArgs, LoadgenArgs, MigrateArgs, RetentionArgs, SignalsArgs, SourcemapsAction, SourcemapsArgs,
};

#[derive(Parser)]
#[command(name = "tracefold", version, about = "Error events -> issues, counted in ClickHouse")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum IssueAction {
    /// Mark resolved (a later event is a regression).
    Resolve {
        /// Issue id.
        id: String,
        /// The release that fixes it.
        #[arg(long, default_value = "")]
        release: String,
        /// Why.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Mark ignored.
    Ignore {
        /// Issue id.
        id: String,
        /// Why.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Mark active again.
    Reopen {
        /// Issue id.
        id: String,
        /// Why.
        #[arg(long, default_value = "")]
        note: String,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum InputFormat {
    Tracefold,
    Sentry,
}

#[derive(clap::Args, Clone)]
pub struct ChArgs {
    /// ClickHouse HTTP URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8123", env = "TRACEFOLD_CLICKHOUSE_URL")]
    pub clickhouse_url: String,
    /// ClickHouse database.
    #[arg(long, global = true, default_value = "tracefold", env = "TRACEFOLD_CLICKHOUSE_DATABASE")]
    pub database: String,
    /// ClickHouse user.
    #[arg(long, global = true, default_value = "default", env = "TRACEFOLD_CLICKHOUSE_USER")]
    pub user: String,
    /// ClickHouse password.
    #[arg(long, global = true, default_value = "", env = "TRACEFOLD_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    pub password: String,
}

impl ChArgs {
    /// The connection these flags describe.
    pub fn config(&self) -> ClickHouseConfig {
        ClickHouseConfig {
            url: self.clickhouse_url.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            database: self.database.clone(),
        }
    }
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the whole pipeline in one process on an embedded Kafka, until Ctrl-C.
    ///
    /// The embedded Kafka is librdkafka's mock cluster on loopback ports. `--brokers 3` runs
    /// three brokers with topics replicated three times and leaders spread over them;
    /// `--broker-only` runs just the Kafka and prints its bootstrap servers.
    Dev(DevArgs),
    /// Show recent signals from the signals topic.
    Signals(SignalsArgs),
    /// Create or upgrade the ClickHouse schema (idempotent).
    Migrate(MigrateArgs),
    /// Drop time partitions older than a number of days (for servers without TTL).
    Retention(RetentionArgs),
    /// Send synthetic error events to the HTTP endpoint or straight to Kafka.
    Loadgen(LoadgenArgs),
    /// Show one issue (time series, releases, environments, users, sample), or change its status.
    Issue(IssueArgs),
    /// Print generated events as NDJSON (for fixtures, or to pipe into curl).
    Gen(GenArgs),
    /// Show the top issues of a recent window: most events, most users, most growth over the
    /// window before, or new in the window (--by).
    Top(TopArgs),
    /// Serve the web UI: issues of a window, one issue in detail, resolve / ignore / reopen.
    Ui(UiArgs),
    /// Show what became of events per project, outcome and reason (accepted, rate limited,
    /// invalid, too large, sent to the DLQ, lost), with a per-minute sparkline.
    Outcomes(OutcomesArgs),
    /// Source maps: `upload` a build's maps and minified files for a release (the producer
    /// stores them; see docs/sourcemaps.md).
    Sourcemaps(SourcemapsArgs),
    /// Show the most recent DLQ records: reason, error, source offset and a payload preview.
    Dlq(DlqArgs),
    /// Fingerprint events read as NDJSON from files or stdin; one JSON line per event.
    Fingerprint(FingerprintArgs),
    /// Score spike detection on simulated traffic against a baseline rule.
    DetectionQuality(DetectionQualityArgs),
    /// Score grouping quality on a labeled corpus against Swetrix- and PostHog-style baselines,
    /// tracefold's also with minified JavaScript frames mapped through the fixtures' source maps.
    GroupingQuality(GroupingQualityArgs),
    /// Measure the HTTP ingest rate of the producer (embedded Kafka, no ClickHouse needed).
    BenchIngest(BenchIngestArgs),
    /// Measure the writer: aggregate rows per second from Kafka into the local ClickHouse.
    BenchWriter(BenchWriterArgs),
    /// Measure the whole pipeline: load into Kafka -> grouper -> writer -> ClickHouse.
    BenchPipeline(BenchPipelineArgs),
    /// Measure the detector's memory with many distinct issues (its engine alone).
    BenchDetector(BenchDetectorArgs),
    /// Time the analyst queries (top, issue, outcomes, the cookbooks) on a large database
    /// generated inside ClickHouse (a scratch database, dropped at the end).
    BenchQueries(BenchQueriesArgs),
    /// Measure bytes on disk per event in tracefold's tables against a raw-row table shaped
    /// like Snuba's errors table, for the same generated events (scratch databases, dropped).
    BenchStorage(BenchStorageArgs),
}

/// Parses `90s`, `15m`, `1h`, `2d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}: expected e.g. 15m, 1h, 2d"))?;
    let per: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("invalid duration unit {unit:?} in {s:?}: use s, m, h, d or w")),
    };
    // Checked: an unchecked product wraps in a release build (a huge `--since` silently
    // became a few seconds) and panics in a debug one.
    let secs = n.checked_mul(per).ok_or_else(|| format!("duration {s:?} is too large"))?;
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("1y").unwrap_err().contains("unit"));
        assert!(parse_duration("h").is_err());
    }

    /// A duration whose seconds do not fit in a u64 is an error, not a wrapped (release) or
    /// panicking (debug) product.
    #[test]
    fn durations_too_large_are_errors() {
        // 307445734561825861 minutes wraps to 44 seconds in u64 arithmetic.
        let e = parse_duration("307445734561825861m").unwrap_err();
        assert!(e.contains("too large"), "{e}");
        assert!(parse_duration("18446744073709551615w").unwrap_err().contains("too large"));
        assert_eq!(parse_duration("18446744073709551615s"), Ok(Duration::from_secs(u64::MAX)));
        assert_eq!(parse_duration("307445734561825860m"), Ok(Duration::from_secs(307_445_734_561_825_860 * 60)));
    }
}
