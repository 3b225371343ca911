//! `tracefold`: run the pipeline locally, apply migrations, generate load, look at issues.

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use std::io::BufRead as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracefold_cli::{dev, gen, loadgen, query};
use tracefold_runtime::config::ClickHouseConfig;
use tracefold_store::issues::StatusChange;
use tracefold_store::IssueStatus;

#[derive(Parser)]
#[command(name = "tracefold", version, about = "Error events -> issues, counted in ClickHouse")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum IssueAction {
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
enum InputFormat {
    Tracefold,
    Sentry,
}

#[derive(clap::Args, Clone)]
struct ChArgs {
    /// ClickHouse HTTP URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8123", env = "TRACEFOLD_CLICKHOUSE_URL")]
    clickhouse_url: String,
    /// ClickHouse database.
    #[arg(long, global = true, default_value = "tracefold", env = "TRACEFOLD_CLICKHOUSE_DATABASE")]
    database: String,
    /// ClickHouse user.
    #[arg(long, global = true, default_value = "default", env = "TRACEFOLD_CLICKHOUSE_USER")]
    user: String,
    /// ClickHouse password.
    #[arg(long, global = true, default_value = "", env = "TRACEFOLD_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    password: String,
}

impl ChArgs {
    fn config(&self) -> ClickHouseConfig {
        ClickHouseConfig {
            url: self.clickhouse_url.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            database: self.database.clone(),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole pipeline in one process on an embedded Kafka, until Ctrl-C.
    ///
    /// The embedded Kafka is librdkafka's mock cluster on loopback ports. `--brokers 3` runs
    /// three brokers with topics replicated three times and leaders spread over them;
    /// `--broker-only` runs just the Kafka and prints its bootstrap servers.
    Dev {
        /// Combined config file (sections of every service).
        #[arg(long)]
        config: Option<PathBuf>,
        /// ClickHouse HTTP URL.
        #[arg(long, default_value = "http://127.0.0.1:8123")]
        clickhouse_url: String,
        /// ClickHouse database.
        #[arg(long)]
        database: Option<String>,
        /// HTTP listen address of the producer.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Only run the embedded Kafka and print its bootstrap servers.
        #[arg(long)]
        broker_only: bool,
        /// Brokers of the embedded Kafka (librdkafka's mock cluster). With more than one, topics
        /// are replicated min(3, N) times and partition leaders spread over the brokers, so
        /// leader moves and broker outages can be tried (see tests/broker_faults.rs).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=64))]
        brokers: i32,
        /// Partitions of the events and aggregates topics.
        #[arg(long)]
        partitions: Option<i32>,
        /// Send this many sample events once started, then show the top issues.
        #[arg(long, default_value_t = 0)]
        sample_events: u64,
        /// Distinct issues in the sample load.
        #[arg(long, default_value_t = 40)]
        sample_issues: usize,
        /// Exit once the sample load is stored and shown.
        #[arg(long)]
        exit: bool,
        /// Send every signal (new issue, regression, spike, threshold) to this webhook.
        #[arg(long)]
        webhook: Option<String>,
    },
    /// Show recent signals from the signals topic.
    Signals {
        /// Kafka bootstrap servers (tracefold dev prints them).
        #[arg(long)]
        bootstrap_servers: String,
        /// Signals topic.
        #[arg(long, default_value = "tracefold.signals")]
        topic: String,
        /// Most recent signals shown.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Create or upgrade the ClickHouse schema (idempotent).
    Migrate {
        #[command(flatten)]
        ch: ChArgs,
        /// Cluster name: ON CLUSTER, Replicated*MergeTree, and Distributed `<table>_all` tables.
        #[arg(long)]
        cluster: Option<String>,
        /// Days kept by TTL on servers that support it (21+).
        #[arg(long, default_value_t = 90)]
        retention_days: u32,
        /// Print the statements for a server of this version instead of applying them.
        #[arg(long, value_name = "VERSION")]
        print_for: Option<String>,
    },
    /// Drop time partitions older than a number of days (for servers without TTL).
    Retention {
        #[command(flatten)]
        ch: ChArgs,
        /// Days to keep.
        #[arg(long)]
        days: u32,
        /// Only list what would be dropped.
        #[arg(long)]
        dry_run: bool,
    },
    /// Send synthetic error events to the HTTP endpoint or straight to Kafka.
    Loadgen {
        /// Producer base URL, e.g. http://127.0.0.1:8080.
        #[arg(long, conflicts_with = "bootstrap_servers", required_unless_present = "bootstrap_servers")]
        http: Option<String>,
        /// Kafka bootstrap servers (publishes to the events topic directly).
        #[arg(long)]
        bootstrap_servers: Option<String>,
        /// Events topic (with --bootstrap-servers).
        #[arg(long, default_value = "tracefold.events")]
        topic: String,
        /// Events to send.
        #[arg(long, default_value_t = 10_000)]
        events: u64,
        /// Events per second (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Distinct issues.
        #[arg(long, default_value_t = 50)]
        issues: usize,
        /// Distinct users.
        #[arg(long, default_value_t = 5_000)]
        users: u64,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Events per HTTP request.
        #[arg(long, default_value_t = 200)]
        batch: usize,
        /// HTTP requests in flight.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// With --bootstrap-servers: pause whenever the consumer group --lag-group is more than
        /// this many events behind (librdkafka's mock cluster keeps only 5 MB per partition).
        #[arg(long)]
        max_lag: Option<i64>,
        /// The consumer group whose lag --max-lag bounds.
        #[arg(long, default_value = "tracefold-grouper")]
        lag_group: String,
        /// Summary format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show one issue (time series, releases, environments, users, sample), or change its status.
    Issue {
        #[command(subcommand)]
        action: Option<IssueAction>,
        /// Issue id (fingerprint hex), when showing.
        id: Option<String>,
        /// Project, when the id exists in several.
        #[arg(long, global = true)]
        project: Option<String>,
        /// Hours of history.
        #[arg(long, default_value_t = 24)]
        hours: u32,
        /// Output format.
        #[arg(long, value_enum, default_value = "table", global = true)]
        format: Format,
        #[command(flatten)]
        ch: ChArgs,
    },
    /// Print generated events as NDJSON (for fixtures, or to pipe into curl).
    Gen {
        /// Events.
        #[arg(long, default_value_t = 1000)]
        events: u64,
        /// Distinct issues.
        #[arg(long, default_value_t = 50)]
        issues: usize,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Reference time, Unix seconds (default: now); events fall in the hour before it.
        #[arg(long)]
        now: Option<i64>,
    },
    /// Show the issues with the most events in a recent window.
    Top {
        /// Window, e.g. 15m, 1h, 2d.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        since: Duration,
        /// Most issues shown.
        #[arg(long, default_value_t = 20)]
        limit: u64,
        /// Only this project.
        #[arg(long)]
        project: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        #[command(flatten)]
        ch: ChArgs,
    },
    /// Fingerprint events read as NDJSON from files or stdin; one JSON line per event.
    Fingerprint {
        /// Files (default: stdin).
        files: Vec<PathBuf>,
        /// Include the contributing and dropped components.
        #[arg(long)]
        explain: bool,
        /// Input format: tracefold events, or Sentry event payloads.
        #[arg(long, value_enum, default_value = "tracefold")]
        input: InputFormat,
        /// Grouper config file whose [grouping] section (rules, frame cap) applies.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Score spike detection on simulated traffic against a baseline rule.
    DetectionQuality {
        /// Issues simulated.
        #[arg(long, default_value_t = 500)]
        issues: usize,
        /// Weeks simulated.
        #[arg(long, default_value_t = 1)]
        weeks: u32,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Score grouping quality on a labeled corpus against Swetrix- and PostHog-style baselines.
    GroupingQuality {
        /// Events in the corpus.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        /// True bugs.
        #[arg(long, default_value_t = 300)]
        bugs: usize,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Measure the HTTP ingest rate of the producer (embedded Kafka, no ClickHouse needed).
    BenchIngest {
        /// Events to send.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Events per request.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Requests in flight.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Result format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Measure the writer: aggregate rows per second from Kafka into the local ClickHouse.
    BenchWriter {
        /// Aggregate records.
        #[arg(long, default_value_t = 200_000)]
        records: u64,
        /// Result format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        #[command(flatten)]
        ch: ChArgs,
    },
    /// Measure the whole pipeline: load into Kafka -> grouper -> writer -> ClickHouse.
    BenchPipeline {
        /// Events to send.
        #[arg(long, default_value_t = 500_000)]
        events: u64,
        /// Distinct issues.
        #[arg(long, default_value_t = 200)]
        issues: usize,
        /// Partitions of the events and aggregates topics.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Result format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        #[command(flatten)]
        ch: ChArgs,
    },
}

/// Parses `90s`, `15m`, `1h`, `2d` (a bare number is seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}: expected e.g. 15m, 1h, 2d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        "w" => n * 7 * 86_400,
        _ => return Err(format!("invalid duration unit {unit:?} in {s:?}: use s, m, h, d or w")),
    };
    Ok(Duration::from_secs(secs))
}

/// Benchmarks log warnings only: their own output is the result.
fn quiet_logging() {
    tracefold_runtime::telemetry::init_logging(&tracefold_runtime::config::TelemetryConfig {
        log_level: "warn".into(),
        ..Default::default()
    });
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Signals { bootstrap_servers, topic, limit, format } => signals(&bootstrap_servers, &topic, limit, format),
        Cmd::Dev {
            config,
            clickhouse_url,
            database,
            listen,
            broker_only,
            brokers,
            partitions,
            sample_events,
            sample_issues,
            exit,
            webhook,
        } => {
            dev::run(dev::DevOptions {
                config,
                clickhouse_url: Some(clickhouse_url),
                database,
                listen,
                broker_only,
                brokers,
                partitions,
                sample_events,
                sample_issues,
                exit_after_sample: exit,
                webhook,
            })
            .await
        }
        Cmd::Migrate { ch, cluster, retention_days, print_for: Some(version) } => {
            use tracefold_store::migrate::{flavored, statements, Flavor, MIGRATIONS};
            let flavor = Flavor::for_version(&version, cluster, retention_days);
            for m in MIGRATIONS {
                println!("-- {:04}_{}", m.version, m.name);
                for st in statements(m.sql, &ch.database).iter().flat_map(|st| flavored(st, &ch.database, &flavor)) {
                    println!("{st};\n");
                }
            }
            Ok(())
        }
        Cmd::Retention { ch, days, dry_run } => {
            let cfg = ch.config();
            let dropped = tracefold_store::migrate::retention(&cfg, days, dry_run).await?;
            for (table, partition) in &dropped {
                println!("{} {table} partition {partition}", if dry_run { "would drop" } else { "dropped" });
            }
            println!(
                "{} partitions older than {days} days {}",
                dropped.len(),
                if dry_run { "to drop" } else { "dropped" }
            );
            Ok(())
        }
        Cmd::Migrate { ch, cluster, retention_days, print_for: None } => {
            let cfg = ch.config();
            let report = tracefold_store::migrate::migrate_with(&cfg, cluster, retention_days, |m, done| {
                eprintln!("  {:04}_{:<24} {}", m.version, m.name, if done { "already applied" } else { "applying" });
            })
            .await?;
            println!(
                "ClickHouse {}: database {}: {} applied, {} already there",
                report.server_version,
                cfg.database,
                report.applied.len(),
                report.skipped.len()
            );
            Ok(())
        }
        Cmd::Loadgen {
            http,
            bootstrap_servers,
            topic,
            events,
            rate,
            issues,
            users,
            seed,
            batch,
            concurrency,
            max_lag,
            lag_group,
            format,
        } => {
            tracefold_runtime::telemetry::init_logging(&Default::default());
            let target = match (http, bootstrap_servers) {
                (Some(u), _) => loadgen::Target::Http(u),
                (None, Some(b)) => loadgen::Target::Kafka { bootstrap_servers: b, topic },
                (None, None) => anyhow::bail!("give --http URL or --bootstrap-servers"),
            };
            let opts = loadgen::LoadOptions {
                events,
                rate,
                batch,
                concurrency,
                progress: format == Format::Table,
                max_lag: max_lag.map(|events| loadgen::LagLimit { group: lag_group, events }),
                gen: gen::GenOptions { issues, users, seed, now_secs: now_secs(), ..Default::default() },
            };
            let s = loadgen::run(&target, &opts).await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string(&s)?),
                Format::Table => println!(
                    "{} events sent, {} accepted, {} failed in {:.2}s: {:.0} events/s",
                    s.sent, s.accepted, s.failed, s.elapsed_secs, s.events_per_sec
                ),
            }
            if s.failed > 0 {
                anyhow::bail!("{} events were not accepted", s.failed);
            }
            Ok(())
        }
        Cmd::Top { since, limit, project, format, ch } => {
            let cfg = ch.config();
            let client = tracefold_store::client::client(&cfg);
            let rows =
                tracefold_store::issues::top_issues(&client, &cfg.database, since.as_secs(), limit, project.as_deref())
                    .await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Format::Table => print!("{}", query::render_top(&rows)),
            }
            Ok(())
        }
        Cmd::Issue { action, id, project, hours, format, ch } => {
            let cfg = ch.config();
            let client = tracefold_store::client::client(&cfg);
            match action {
                None => {
                    let id = id.ok_or_else(|| anyhow::anyhow!("give an issue id (see tracefold top)"))?;
                    let d = query::issue_detail(&client, &cfg.database, &id, project.as_deref(), hours).await?;
                    match format {
                        Format::Json => println!("{}", serde_json::to_string_pretty(&d)?),
                        Format::Table => print!("{}", query::render_issue(&d)),
                    }
                }
                Some(a) => {
                    let (id, status, release, note) = match a {
                        IssueAction::Resolve { id, release, note } => (id, IssueStatus::Resolved, release, note),
                        IssueAction::Ignore { id, note } => (id, IssueStatus::Ignored, String::new(), note),
                        IssueAction::Reopen { id, note } => (id, IssueStatus::Active, String::new(), note),
                    };
                    let d = query::issue_detail(&client, &cfg.database, &id, project.as_deref(), 1).await?;
                    let actor = std::env::var("USER").unwrap_or_else(|_| "tracefold".into());
                    let change = StatusChange {
                        project: &d.project,
                        issue_id: &id,
                        status,
                        actor: &actor,
                        release: &release,
                        note: &note,
                    };
                    tracefold_store::issues::set_status(&client, &cfg.database, &change).await?;
                    match format {
                        Format::Json => println!(
                            "{}",
                            serde_json::json!({"project": d.project, "issue_id": id, "status": status, "release": release})
                        ),
                        Format::Table => {
                            use tracefold_cli::render::printable as p;
                            println!("{} {} ({}): {} -> {status}", p(&d.project), p(&id), p(&d.title), d.status);
                        }
                    }
                }
            }
            Ok(())
        }
        Cmd::Fingerprint { files, explain, input, config } => {
            let cfg: tracefold_grouper::Config = tracefold_runtime::config::load(config.as_deref(), std::env::vars())?;
            fingerprint(&files, explain, input, &cfg.grouping)
        }
        Cmd::Gen { events, issues, seed, now } => {
            use std::io::Write as _;
            let mut g = gen::Generator::new(gen::GenOptions {
                issues,
                seed,
                now_secs: now.unwrap_or_else(now_secs),
                ..Default::default()
            });
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for _ in 0..events {
                writeln!(out, "{}", g.next_event().json)?;
            }
            out.flush()?;
            Ok(())
        }
        Cmd::DetectionQuality { issues, weeks, seed, format } => {
            use tracefold_detector::simulate::{evaluate, SimOptions};
            let r = evaluate(
                &SimOptions { issues, minutes: weeks * 10_080, seed, ..SimOptions::default() },
                &tracefold_detector::spike::SpikeConfig::default(),
            );
            match format {
                Format::Json => println!("{}", serde_json::to_string(&r)?),
                Format::Table => {
                    use tracefold_cli::render::{table, Align};
                    let row = |n: &str, s: &tracefold_detector::simulate::Score| {
                        vec![
                            n.to_owned(),
                            format!("{:.3}", s.recall_5x),
                            format!("{:.3}", s.false_per_issue_week),
                            format!("{:.1}", s.median_detect_min),
                            s.detections.to_string(),
                        ]
                    };
                    println!(
                        "{} issues, {} minutes, {} bursts injected ({} of 5x or more, {} of those detectable), seed {seed}\n",
                        r.issues, r.minutes, r.bursts.0, r.bursts.1, r.bursts.2
                    );
                    print!(
                        "{}",
                        table(
                            &[
                                ("detector", Align::Left),
                                ("recall 5x+", Align::Right),
                                ("false/issue/week", Align::Right),
                                ("median min", Align::Right),
                                ("signals", Align::Right)
                            ],
                            &[row("tracefold", &r.tracefold), row("baseline (5 min > 10x prev 11)", &r.baseline)],
                            40
                        )
                    );
                }
            }
            Ok(())
        }
        Cmd::GroupingQuality { events, bugs, seed, format } => {
            let r = tracefold_cli::quality::evaluate(&tracefold_cli::quality::CorpusOptions { bugs, events, seed });
            match format {
                Format::Json => println!("{}", serde_json::to_string(&r)?),
                Format::Table => print!("{}", tracefold_cli::quality::render(&r)),
            }
            Ok(())
        }
        Cmd::BenchWriter { records, format, ch } => bench_writer(records, format, ch.config()).await,
        Cmd::BenchIngest { events, batch, concurrency, format } => {
            bench_ingest(events, batch, concurrency, format).await
        }
        Cmd::BenchPipeline { events, issues, partitions, format, ch } => {
            bench_pipeline(events, issues, partitions, format, ch.config()).await
        }
    }
}

fn signals(bootstrap: &str, topic: &str, limit: usize, format: Format) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let kafka =
        tracefold_runtime::config::KafkaConfig { bootstrap_servers: bootstrap.to_owned(), ..Default::default() };
    let c: BaseConsumer = tracefold_runtime::kafka::consumer_config(&kafka, "tracefold-signals-cli").create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut remaining = 0i64;
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        if high > low {
            tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Offset((high - limit as i64).max(low)))?;
            remaining += high - (high - limit as i64).max(low);
        }
    }
    let mut all: Vec<tracefold_detector::signal::Signal> = Vec::new();
    if remaining > 0 {
        c.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while remaining > 0 && Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                remaining -= 1;
                if let Some(s) = m.payload().and_then(|p| serde_json::from_slice(p).ok()) {
                    all.push(s);
                }
            }
        }
    }
    all.sort_by(|a, b| (&a.minute, &a.issue_id).cmp(&(&b.minute, &b.issue_id)));
    let start = all.len().saturating_sub(limit);
    let all = &all[start..];
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(all)?),
        Format::Table => {
            use tracefold_cli::render::{table, Align};
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|s| {
                    vec![
                        s.minute.replace('T', " ").trim_end_matches('Z').to_owned(),
                        s.kind.as_str().to_owned(),
                        s.project.clone(),
                        tracefold_cli::render::prefix(&s.issue_id, 12).to_owned(),
                        s.title.clone(),
                        s.count.to_string(),
                        s.users.to_string(),
                        format!("{}", s.baseline_per_minute),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        ("MINUTE", Align::Left),
                        ("SIGNAL", Align::Left),
                        ("PROJECT", Align::Left),
                        ("ISSUE", Align::Left),
                        ("TITLE", Align::Left),
                        ("EVENTS", Align::Right),
                        ("USERS", Align::Right),
                        ("BASELINE/MIN", Align::Right),
                    ],
                    &rows,
                    60,
                )
            );
        }
    }
    Ok(())
}

fn fingerprint(
    files: &[PathBuf],
    explain: bool,
    input: InputFormat,
    cfg: &tracefold_fingerprint::GroupingConfig,
) -> anyhow::Result<()> {
    let mut scratch = tracefold_fingerprint::Scratch::default();
    let mut errors = 0usize;
    let readers: Vec<(String, Box<dyn std::io::BufRead>)> = if files.is_empty() {
        vec![("<stdin>".into(), Box::new(std::io::stdin().lock()))]
    } else {
        files
            .iter()
            .map(|f| {
                Ok((
                    f.display().to_string(),
                    Box::new(std::io::BufReader::new(
                        std::fs::File::open(f).with_context(|| format!("cannot open {}", f.display()))?,
                    )) as Box<dyn std::io::BufRead>,
                ))
            })
            .collect::<anyhow::Result<_>>()?
    };
    for (name, reader) in readers {
        for (i, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let converted;
            let text = match input {
                InputFormat::Tracefold => line.as_str(),
                InputFormat::Sentry => {
                    match serde_json::from_str::<serde_json::Value>(&line)
                        .map_err(|e| e.to_string())
                        .and_then(|v| tracefold_model::sentry::to_event(&v, None).map_err(|e| e.to_string()))
                    {
                        Ok(v) => {
                            converted = v.to_string();
                            converted.as_str()
                        }
                        Err(e) => {
                            errors += 1;
                            eprintln!(
                                "{name}:{}: invalid sentry event: {}",
                                i + 1,
                                tracefold_cli::render::printable(&e)
                            );
                            println!(
                                "{}",
                                serde_json::json!({"line": i + 1, "error": format!("invalid sentry event: {e}")})
                            );
                            continue;
                        }
                    }
                }
            };
            let out = match tracefold_model::parse_event_str(text) {
                Ok(ev) => {
                    let meta = tracefold_fingerprint::describe(&ev);
                    if explain {
                        let ex = tracefold_fingerprint::explain(&ev, cfg);
                        serde_json::json!({"line": i + 1, "fingerprint": ex.fingerprint, "title": meta.title, "grouping_version": ex.grouping_version, "basis": ex.basis, "components": ex.components})
                    } else {
                        let fp = tracefold_fingerprint::fingerprint(&ev, cfg, &mut scratch);
                        serde_json::json!({"line": i + 1, "fingerprint": fp.to_hex(), "title": meta.title, "grouping_version": tracefold_fingerprint::GROUPING_VERSION})
                    }
                }
                Err(e) => {
                    errors += 1;
                    eprintln!("{name}:{}: {}", i + 1, tracefold_cli::render::printable(&e.to_string()));
                    serde_json::json!({"line": i + 1, "error": e.to_string()})
                }
            };
            println!("{out}");
        }
    }
    if errors > 0 {
        anyhow::bail!("{errors} lines could not be read");
    }
    Ok(())
}

async fn bench_writer(records: u64, format: Format, mut ch: ClickHouseConfig) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use tracefold_model::aggregate::{UserSet, DEFAULT_MAX_USERS};
    quiet_logging();
    ch.database = format!("{}_benchw_{}", ch.database, std::process::id());
    tracefold_store::migrate::migrate(&ch, |_, _| {}).await?;
    let topics = tracefold_runtime::config::TopicsConfig::default();
    let broker = tracefold_runtime::devbroker::DevBroker::start(1, &topics, Some(6))?;
    let kafka =
        tracefold_runtime::config::KafkaConfig { bootstrap_servers: broker.bootstrap_servers(), ..Default::default() };
    let mut wcfg = tracefold_writer::Config { kafka: kafka.clone(), clickhouse: ch.clone(), ..Default::default() };
    wcfg.writer.listen = String::new();
    let shutdown = tracefold_runtime::Shutdown::new();
    let (s, h) = (shutdown.clone(), tracefold_runtime::telemetry::Health::default());
    let writer = std::thread::spawn(move || tracefold_writer::service::run(&wcfg, &s, &h));
    let producer: FutureProducer = tracefold_runtime::kafka::producer_config(&kafka, 30_000).create()?;
    let client = tracefold_store::client::client(&ch);
    let now = now_secs();
    // Realistic records: 2,000 issues, a few users each, one sample in twenty.
    let sample = gen::Generator::new(gen::GenOptions { now_secs: now, ..Default::default() }).next_event().json;
    let t0 = Instant::now();
    let mut sent = 0u64;
    while sent < records {
        let wave = (records - sent).min(5_000);
        let mut futs = Vec::with_capacity(wave as usize);
        for i in sent..sent + wave {
            let mut users = UserSet::default();
            for u in 0..(i % 7) {
                users.insert(xxhash_rust::xxh3::xxh3_64(&(i * 31 + u).to_le_bytes()), DEFAULT_MAX_USERS);
            }
            let r = tracefold_model::AggregateRecord {
                v: 1,
                batch: tracefold_model::BatchRef {
                    epoch: "bench".into(),
                    topic: topics.events.clone(),
                    partition: (i % 6) as i32,
                    first_offset: i as i64,
                    last_offset: i as i64,
                    index: 0,
                    count: 1,
                },
                project: ["web", "api", "billing"][(i % 3) as usize].into(),
                issue_id: format!("{:032x}", i % 2000),
                minute: (now - (i % 60) as i64 * 60).div_euclid(60) * 60,
                release: format!("r{}", i % 4),
                environment: ["production", "staging"][(i % 2) as usize].into(),
                count: 1 + i % 50,
                users,
                first_seen_ms: now * 1000,
                last_seen_ms: now * 1000,
                title: format!("TypeError: thing {} failed", i % 2000),
                culprit: "app.js in handler".into(),
                exc_type: "TypeError".into(),
                level: "error".into(),
                platform: "javascript".into(),
                grouping_version: "v1".into(),
                sample: if i % 20 == 0 { sample.clone() } else { String::new() },
            };
            let payload = serde_json::to_vec(&r)?;
            futs.push(
                producer
                    .send_result(FutureRecord::to(&topics.aggregates).key(&r.key()).payload(&payload))
                    .map_err(|(e, _)| e)?,
            );
        }
        for f in futs {
            let _ = f.await;
        }
        sent += wave;
        // The mock cluster keeps 5 MB per partition: stay within ~30,000 records of the writer.
        loop {
            let stored = tracefold_store::aggregates::row_count(&client, &ch.database).await?;
            if sent.saturating_sub(stored) <= 30_000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut stored = 0;
    while Instant::now() < deadline {
        stored = tracefold_store::aggregates::row_count(&client, &ch.database).await?;
        if stored >= records {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    shutdown.trigger();
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    tracefold_store::client::drop_database(&client, &ch.database).await?;
    let result = serde_json::json!({"records": records, "stored": stored, "seconds": secs, "rows_per_sec": stored as f64 / secs});
    match format {
        Format::Json => println!("{result}"),
        Format::Table => {
            println!("{stored} of {records} aggregate rows stored in {secs:.2}s: {:.0} rows/s", stored as f64 / secs)
        }
    }
    if stored != records {
        anyhow::bail!("ClickHouse holds {stored} rows, {records} were sent");
    }
    Ok(())
}

async fn bench_ingest(events: u64, batch: usize, concurrency: usize, format: Format) -> anyhow::Result<()> {
    use tracefold_runtime::devbroker::DevBroker;
    quiet_logging();
    let broker = DevBroker::start(1, &Default::default(), Some(6))?;
    let cfg = tracefold_producer::Config {
        kafka: tracefold_runtime::config::KafkaConfig {
            bootstrap_servers: broker.bootstrap_servers(),
            ..Default::default()
        },
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let shutdown = tracefold_runtime::Shutdown::new();
    let health = tracefold_runtime::telemetry::Health::default();
    let server = tokio::spawn(tracefold_producer::serve(cfg, listener, shutdown.clone(), health.clone(), Vec::new()));
    while !health.is_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Pre-generate nothing: the generator runs in the same process, as a real client would.
    let load = loadgen::LoadOptions {
        events,
        rate: 0,
        batch,
        concurrency,
        progress: format == Format::Table,
        max_lag: None,
        gen: gen::GenOptions { issues: 200, now_secs: now_secs(), spread_secs: 60, ..Default::default() },
    };
    let s = loadgen::run(&loadgen::Target::Http(url), &load).await?;
    shutdown.trigger();
    server.await??;
    let requests = s.sent.div_ceil(batch.max(1) as u64);
    let result = serde_json::json!({
        "events": s.sent, "accepted": s.accepted, "failed": s.failed, "batch": batch, "concurrency": concurrency,
        "seconds": s.elapsed_secs, "events_per_sec": s.events_per_sec, "requests_per_sec": requests as f64 / s.elapsed_secs,
    });
    match format {
        Format::Json => println!("{result}"),
        Format::Table => println!(
            "{} events in {} requests of {batch} ({concurrency} in flight): {:.2}s, {:.0} events/s, {:.0} requests/s, {} failed",
            s.accepted,
            requests,
            s.elapsed_secs,
            s.events_per_sec,
            requests as f64 / s.elapsed_secs,
            s.failed
        ),
    }
    Ok(())
}

async fn bench_pipeline(
    events: u64,
    issues: usize,
    partitions: i32,
    format: Format,
    mut ch: ClickHouseConfig,
) -> anyhow::Result<()> {
    quiet_logging();
    ch.database = format!("{}_bench_{}", ch.database, std::process::id());
    let mut cfg = dev::DevConfig { clickhouse: ch.clone(), ..Default::default() };
    // Short batches keep the committed lag (what the load is paced by) close to the read lag.
    cfg.grouper.batch_max_age_ms = 500;
    // librdkafka's mock cluster keeps at most 5 MB per partition: stay well inside it.
    let lag_limit = i64::from(partitions) * 4000;
    let pipeline = dev::Pipeline::start(cfg.clone(), "127.0.0.1:0", Some(partitions), true).await?;
    eprintln!("pipeline up (database {}); loading {events} events straight into Kafka ...", ch.database);
    let t0 = Instant::now();
    let load = loadgen::LoadOptions {
        events,
        rate: 0,
        batch: 0,
        concurrency: 0,
        progress: true,
        max_lag: Some(loadgen::LagLimit { group: cfg.grouper.group_id.clone(), events: lag_limit }),
        gen: gen::GenOptions { issues, now_secs: now_secs(), ..Default::default() },
    };
    let target =
        loadgen::Target::Kafka { bootstrap_servers: pipeline.bootstrap_servers(), topic: cfg.topics.events.clone() };
    let s = loadgen::run(&target, &load).await?;
    let produced = t0.elapsed().as_secs_f64();
    let stored = dev::wait_for_events(&ch, s.accepted, Duration::from_secs(1800), false).await?;
    let total = t0.elapsed().as_secs_f64();
    pipeline.stop().await?;
    let client = tracefold_store::client::client(&ch);
    tracefold_store::client::drop_database(&client, &ch.database).await?;
    let result = serde_json::json!({
        "events": events,
        "accepted": s.accepted,
        "stored": stored,
        "produce_seconds": produced,
        "produce_events_per_sec": s.accepted as f64 / produced,
        "end_to_end_seconds": total,
        "end_to_end_events_per_sec": stored as f64 / total,
        "partitions": partitions,
        "issues": issues,
    });
    match format {
        Format::Json => println!("{result}"),
        Format::Table => {
            println!("events accepted by Kafka   {}", s.accepted);
            println!("events stored in ClickHouse {stored}");
            println!("load (into Kafka)           {produced:.2}s  {:.0} events/s", s.accepted as f64 / produced);
            println!("end to end                  {total:.2}s  {:.0} events/s", stored as f64 / total);
        }
    }
    if stored != s.accepted {
        anyhow::bail!("ClickHouse holds {stored} events, {} were accepted", s.accepted);
    }
    Ok(())
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
}
