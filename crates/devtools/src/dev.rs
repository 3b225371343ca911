//! The whole pipeline in one process on an embedded Kafka (librdkafka's mock cluster) against
//! a ClickHouse server: what `tracefold dev`, the end-to-end tests and `tracefold
//! bench-pipeline` run.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
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
    /// The producer's backpressure. `tracefold dev` fills unset bounds from the embedded
    /// broker's retention ([`embedded_broker_backpressure`]); the watched group is always the
    /// grouper's.
    pub backpressure: tracefold_producer::config::BackpressureSection,
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

/// What librdkafka's mock cluster keeps of each partition (hard-coded in `rdkafka_mock.c`,
/// `rd_kafka_mock_partition_init`): 5 MiB of stored (compressed) message sets ...
pub const EMBEDDED_BROKER_PARTITION_BYTES: u64 = 5 * 1024 * 1024;
/// ... or 100,000 message sets (each holds at least one message); older ones are deleted
/// whether read or not.
pub const EMBEDDED_BROKER_PARTITION_MESSAGE_SETS: u64 = 100_000;

/// Partitions of the events and aggregates topics of `tracefold dev`'s embedded broker
/// unless `--partitions` says otherwise. Each partition keeps its own 5 MiB, and the grouper
/// is always about one batch age behind per partition, so with few partitions a fast load
/// keeps tripping the backpressure bound (measured with an unpaced `loadgen --events
/// 100000`: 6 partitions were told to wait 18 times and stored 10k events/s end to end, 32
/// partitions 4 times and 16-17k/s, against 18-19k/s without backpressure at 6, 24 or 48
/// partitions). The grouper cuts batches per partition, so more partitions also mean more,
/// smaller aggregate rows: 32 is where the waits had mostly gone.
pub const DEV_PARTITIONS: i32 = 32;

/// `section` with unset bounds derived from the embedded broker's retention: half of what a
/// partition keeps, in events (a message set holds at least one event, so 50,000 events are
/// at most 50,000 message sets) and in bytes (2.5 MiB, compared with lag times the average
/// uncompressed event size; the broker stores lz4-compressed batches, so the real margin is
/// larger). A bound set to 0 stays off.
pub fn embedded_broker_backpressure(
    mut section: tracefold_producer::config::BackpressureSection,
) -> tracefold_producer::config::BackpressureSection {
    section.max_lag_events.get_or_insert(EMBEDDED_BROKER_PARTITION_MESSAGE_SETS / 2);
    section.max_lag_bytes.get_or_insert(EMBEDDED_BROKER_PARTITION_BYTES / 2);
    section
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
            // The grouper of this pipeline is the group whose lag matters.
            backpressure: tracefold_producer::config::BackpressureSection {
                group_id: gcfg.grouper.group_id.clone(),
                ..cfg.backpressure.clone()
            },
            telemetry: cfg.telemetry.clone(),
        };
        let mut threads = Vec::new();
        type Service = Box<dyn FnOnce(Shutdown, Health) -> anyhow::Result<()> + Send>;
        let services: [(&'static str, Health, Service); 3] = [
            (
                "grouper",
                gh.clone(),
                Box::new(move |s: Shutdown, h: Health| tracefold_grouper::service::run(&gcfg, &s, &h)),
            ),
            (
                "writer",
                wh.clone(),
                Box::new(move |s: Shutdown, h: Health| tracefold_writer::service::run(&wcfg, &s, &h)),
            ),
            (
                "detector",
                dh.clone(),
                Box::new(move |s: Shutdown, h: Health| tracefold_detector::service::run(&dcfg, &s, &h)),
            ),
        ];
        for (name, h, run) in services {
            let s = shutdown.clone();
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

/// Waits until ClickHouse holds `expected` events more than `baseline` (the total before the
/// load: a database that already holds events from an earlier run does not count as done), or
/// `timeout` passes; returns how many more it holds.
///
/// # Errors
/// When ClickHouse does not answer.
pub async fn wait_for_events(
    ch: &ClickHouseConfig,
    baseline: u64,
    expected: u64,
    timeout: Duration,
    progress: bool,
) -> anyhow::Result<u64> {
    let client = tracefold_store::client::client(ch);
    let deadline = Instant::now() + timeout;
    // The count last printed; `None` until the first report.
    let mut shown: Option<u64> = None;
    loop {
        let n = tracefold_store::aggregates::total_events(&client, &ch.database).await?.saturating_sub(baseline);
        if progress && shown != Some(n) {
            eprintln!("  {n} of {expected} events stored in ClickHouse");
            shown = Some(n);
        }
        if n >= expected || Instant::now() >= deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// "3 brokers, replication factor 3", for the banners.
pub fn describe_broker(broker: &DevBroker) -> String {
    match broker.brokers() {
        1 => "1 broker".to_owned(),
        n => format!("{n} brokers, replication factor {}", broker.replication_factor()),
    }
}
