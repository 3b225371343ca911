//! `tracefold dev`: the whole pipeline in one process on an embedded Kafka (librdkafka's mock
//! cluster) against a ClickHouse server.

use crate::loadgen::{LoadOptions, LoadSummary, Target};
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracefold_runtime::config::{ClickHouseConfig, KafkaConfig, TelemetryConfig, TopicsConfig};
use tracefold_runtime::devbroker::{DevBroker, DevBrokerOptions};
use tracefold_runtime::telemetry::Health;
use tracefold_runtime::Shutdown;

/// The config file of `tracefold dev`: every service's sections in one file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevConfig {
    /// Topic names.
    pub topics: TopicsConfig,
    /// ClickHouse connection.
    pub clickhouse: ClickHouseConfig,
    /// HTTP endpoint.
    pub http: tracefold_producer::config::HttpSection,
    /// Registered projects (Sentry ids, keys, rate limits).
    pub projects: Vec<tracefold_producer::config::ProjectConfig>,
    /// Grouper options.
    pub grouper: tracefold_grouper::config::GrouperSection,
    /// Grouping options.
    pub grouping: tracefold_fingerprint::GroupingConfig,
    /// Writer options.
    pub writer: tracefold_writer::config::WriterSection,
    /// Detector options: spike settings, threshold rules, notification channels.
    pub detector: tracefold_detector::config::DetectorSection,
    /// Logs.
    pub telemetry: TelemetryConfig,
}

/// Options of `tracefold dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Combined config file.
    pub config: Option<PathBuf>,
    /// ClickHouse URL (overrides the config).
    pub clickhouse_url: Option<String>,
    /// ClickHouse database (overrides the config).
    pub database: Option<String>,
    /// HTTP listen address.
    pub listen: String,
    /// Only run the embedded Kafka.
    pub broker_only: bool,
    /// Brokers of the embedded Kafka (topics replicated `min(3, brokers)` times).
    pub brokers: i32,
    /// Partitions of the events and aggregates topics.
    pub partitions: Option<i32>,
    /// Send this many sample events once started, then show the top issues.
    pub sample_events: u64,
    /// Issues in the sample load.
    pub sample_issues: usize,
    /// Stop after the sample load is stored and shown.
    pub exit_after_sample: bool,
    /// A generic webhook that gets every signal.
    pub webhook: Option<String>,
}

/// A running pipeline: broker, grouper, writer and producer.
pub struct Pipeline {
    /// The embedded Kafka.
    pub broker: DevBroker,
    /// The config in force.
    pub cfg: DevConfig,
    /// Fires to stop everything.
    pub shutdown: Shutdown,
    /// Where the producer listens.
    pub http_addr: SocketAddr,
    threads: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
    producer: tokio::task::JoinHandle<anyhow::Result<()>>,
    healths: Vec<Health>,
}

impl Pipeline {
    /// Starts a one-broker Kafka, migrations, grouper, writer and producer (see
    /// [`Pipeline::start_with`]).
    ///
    /// # Errors
    /// When Kafka, ClickHouse or the listen address is unusable.
    pub async fn start(cfg: DevConfig, listen: &str, partitions: Option<i32>, quiet: bool) -> anyhow::Result<Self> {
        let broker = DevBrokerOptions { partitions, ..DevBrokerOptions::default() };
        Self::start_with(cfg, listen, &broker, quiet).await
    }

    /// Starts the embedded Kafka `broker` describes (brokers, partitions), migrations,
    /// grouper, writer and producer.
    ///
    /// # Errors
    /// When Kafka, ClickHouse or the listen address is unusable.
    pub async fn start_with(
        cfg: DevConfig,
        listen: &str,
        broker: &DevBrokerOptions,
        quiet: bool,
    ) -> anyhow::Result<Self> {
        let broker = DevBroker::start_with(&cfg.topics, broker)?;
        let bootstrap = broker.bootstrap_servers();
        let kafka = KafkaConfig { bootstrap_servers: bootstrap.clone(), ..KafkaConfig::default() };
        let report = tracefold_store::migrate::migrate(&cfg.clickhouse, |m, done| {
            if !quiet && !done {
                eprintln!("  migration {:04}_{} ...", m.version, m.name);
            }
        })
        .await?;
        if !quiet {
            eprintln!(
                "ClickHouse {} at {}: database {} ({} migrations applied, {} already there)",
                report.server_version,
                cfg.clickhouse.url,
                cfg.clickhouse.database,
                report.applied.len(),
                report.skipped.len()
            );
        }
        let shutdown = Shutdown::new();
        let (gh, wh, dh, ph) =
            (Health::named("grouper"), Health::named("writer"), Health::named("detector"), Health::named("producer"));
        let mut grouper_section = cfg.grouper.clone();
        if grouper_section.epoch.is_empty() {
            // The embedded Kafka is new on every start; its offsets restart at 0.
            grouper_section.epoch = format!("dev-{:016x}", rand::random::<u64>());
        }
        let gcfg = tracefold_grouper::Config {
            kafka: kafka.clone(),
            topics: cfg.topics.clone(),
            grouper: grouper_section,
            grouping: cfg.grouping.clone(),
            telemetry: cfg.telemetry.clone(),
        };
        let wcfg = tracefold_writer::Config {
            kafka: kafka.clone(),
            topics: cfg.topics.clone(),
            clickhouse: cfg.clickhouse.clone(),
            writer: cfg.writer.clone(),
            telemetry: cfg.telemetry.clone(),
        };
        let dcfg = tracefold_detector::Config {
            kafka: kafka.clone(),
            topics: cfg.topics.clone(),
            clickhouse: cfg.clickhouse.clone(),
            detector: tracefold_detector::config::DetectorSection { listen: String::new(), ..cfg.detector.clone() },
            telemetry: cfg.telemetry.clone(),
        };
        let pcfg = tracefold_producer::Config {
            kafka,
            topics: cfg.topics.clone(),
            http: cfg.http.clone(),
            projects: cfg.projects.clone(),
            telemetry: cfg.telemetry.clone(),
        };
        let mut threads = Vec::new();
        for (name, run) in [
            (
                "grouper",
                Box::new(move |s: Shutdown, h: Health| tracefold_grouper::service::run(&gcfg, &s, &h))
                    as Box<dyn FnOnce(Shutdown, Health) -> anyhow::Result<()> + Send>,
            ),
            ("writer", Box::new(move |s: Shutdown, h: Health| tracefold_writer::service::run(&wcfg, &s, &h))),
            ("detector", Box::new(move |s: Shutdown, h: Health| tracefold_detector::service::run(&dcfg, &s, &h))),
        ] {
            let s = shutdown.clone();
            let h = match name {
                "grouper" => gh.clone(),
                "writer" => wh.clone(),
                _ => dh.clone(),
            };
            threads.push(std::thread::Builder::new().name(name.into()).spawn(move || {
                // A panic or an error marks the loop dead (`/healthz` fails) and stops the rest.
                let r = tracefold_runtime::telemetry::run_guarded(&h.clone(), || run(s.clone(), h));
                if let Err(e) = &r {
                    tracing::error!(service = name, error = %format!("{e:#}"), "service failed; stopping");
                    s.trigger();
                }
                r
            })?);
        }
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let http_addr = listener.local_addr()?;
        let mut healths = vec![gh, wh, dh];
        let producer =
            tokio::spawn(tracefold_producer::serve(pcfg, listener, shutdown.clone(), ph.clone(), healths.clone()));
        healths.push(ph);
        Ok(Self { broker, cfg, shutdown, http_addr, threads, producer, healths })
    }

    /// The health of every service (grouper, writer, detector, producer), for a watchdog.
    pub fn healths(&self) -> Vec<Health> {
        self.healths.clone()
    }

    /// The embedded Kafka's bootstrap servers.
    pub fn bootstrap_servers(&self) -> String {
        self.broker.bootstrap_servers()
    }

    /// Stops every service and waits for them.
    ///
    /// # Errors
    /// The first service error.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        let mut first_err = None;
        match self.producer.await {
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(e) => first_err = first_err.or(Some(e.into())),
            Ok(Ok(())) => {}
        }
        for t in self.threads {
            match tokio::task::spawn_blocking(move || t.join()).await? {
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => first_err = first_err.or(Some(anyhow::anyhow!("a service thread panicked"))),
                Ok(Ok(())) => {}
            }
        }
        drop(self.broker);
        first_err.map_or(Ok(()), Err)
    }
}

/// Waits until ClickHouse holds `expected` events (or `timeout` passes); returns the count.
///
/// # Errors
/// When ClickHouse does not answer.
pub async fn wait_for_events(
    ch: &ClickHouseConfig,
    expected: u64,
    timeout: Duration,
    progress: bool,
) -> anyhow::Result<u64> {
    let client = tracefold_store::client::client(ch);
    let deadline = Instant::now() + timeout;
    let mut last = u64::MAX;
    loop {
        let n = tracefold_store::aggregates::total_events(&client, &ch.database).await?;
        if progress && n != last {
            eprintln!("  {n} of {expected} events stored in ClickHouse");
            last = n;
        }
        if n >= expected || Instant::now() >= deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs `tracefold dev`.
///
/// # Errors
/// When the pipeline cannot start, or a service fails.
pub async fn run(opts: DevOptions) -> anyhow::Result<()> {
    let mut cfg: DevConfig = tracefold_runtime::config::load(opts.config.as_deref(), std::env::vars())?;
    if let Some(u) = &opts.clickhouse_url {
        cfg.clickhouse.url.clone_from(u);
    }
    if let Some(d) = &opts.database {
        cfg.clickhouse.database.clone_from(d);
    }
    if let Some(url) = &opts.webhook {
        cfg.detector.channels.push(tracefold_detector::notify::Channel {
            name: "dev-webhook".into(),
            target: tracefold_detector::notify::Target::Webhook { url: url.clone(), secret: String::new() },
            types: Vec::new(),
            projects: Vec::new(),
            rules: Vec::new(),
            cooldown_min: 30,
        });
    }
    tracefold_runtime::telemetry::init_logging(&cfg.telemetry);
    let broker_opts = DevBrokerOptions { brokers: opts.brokers, partitions: opts.partitions, track_requests: false };
    if opts.broker_only {
        let broker = DevBroker::start_with(&cfg.topics, &broker_opts)?;
        println!("{}", broker.bootstrap_servers());
        eprintln!(
            "embedded Kafka running: {} (topics {}, {}, {}); Ctrl-C stops it",
            describe_broker(&broker),
            cfg.topics.events,
            cfg.topics.aggregates,
            cfg.topics.dlq
        );
        let s = Shutdown::new();
        s.trigger_on_signals();
        s.wait().await;
        return Ok(());
    }
    let pipeline = Pipeline::start_with(cfg.clone(), &opts.listen, &broker_opts, false).await?;
    pipeline.shutdown.trigger_on_signals();
    // A stalled loop ends the process (non-zero) instead of answering `ok` with a dead worker.
    tracefold_runtime::telemetry::spawn_watchdog(pipeline.healths());
    let url = format!("http://{}", pipeline.http_addr);
    eprintln!("\ntracefold dev is running");
    eprintln!("  ingest:    POST {url}/api/v1/projects/{{project}}/events   (one JSON event or NDJSON)");
    eprintln!("  ops:       {url}/metrics  {url}/healthz  {url}/readyz");
    eprintln!("  kafka:     {}  ({})", pipeline.bootstrap_servers(), describe_broker(&pipeline.broker));
    eprintln!("  try:       tracefold loadgen --http {url} --events 10000");
    eprintln!("             tracefold top --since 1h --clickhouse-url {}", cfg.clickhouse.url);
    eprintln!("  Ctrl-C stops it\n");
    if opts.sample_events > 0 {
        let summary = sample_load(&url, &opts).await?;
        eprintln!(
            "sample load: {} events sent, {} accepted, {} failed in {:.1}s ({:.0} events/s)",
            summary.sent, summary.accepted, summary.failed, summary.elapsed_secs, summary.events_per_sec
        );
        let stored = wait_for_events(&cfg.clickhouse, summary.accepted, Duration::from_secs(120), true).await?;
        let client = tracefold_store::client::client(&cfg.clickhouse);
        let rows = tracefold_store::issues::top_issues(&client, &cfg.clickhouse.database, 2 * 3600, 15, None).await?;
        println!("\nTop issues (last 2 hours), {stored} events stored:\n");
        print!("{}", crate::query::render_top(&rows));
        if opts.exit_after_sample {
            pipeline.shutdown.trigger();
        }
    }
    pipeline.shutdown.wait().await;
    eprintln!("stopping ...");
    pipeline.stop().await
}

/// "3 brokers, replication factor 3", for the banners.
fn describe_broker(broker: &DevBroker) -> String {
    match broker.brokers() {
        1 => "1 broker".to_owned(),
        n => format!("{n} brokers, replication factor {}", broker.replication_factor()),
    }
}

async fn sample_load(url: &str, opts: &DevOptions) -> anyhow::Result<LoadSummary> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let load = LoadOptions {
        events: opts.sample_events,
        rate: 0,
        batch: 200,
        concurrency: 4,
        progress: true,
        max_lag: None,
        gen: crate::gen::GenOptions {
            issues: opts.sample_issues,
            now_secs: now,
            seed: rand::random(),
            ..Default::default()
        },
    };
    crate::loadgen::run(&Target::Http(url.to_owned()), &load).await
}
