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
    /// Source map uploads. `tracefold dev` stores them under `.tracefold/artifacts` when
    /// `store_url` is empty; the pipeline of the tests keeps uploads off then.
    pub sourcemaps: tracefold_producer::config::SourcemapsSection,
    /// Grouper options.
    pub grouper: tracefold_grouper::config::GrouperSection,
    /// The grouper's use of source maps (its `[sourcemaps]` section): the grouper reads the
    /// store the producer writes (`sourcemaps.store_url`) unless `store_url` here names another.
    pub symbolication: tracefold_grouper::config::SourcemapsSection,
    /// Grouping options.
    pub grouping: tracefold_fingerprint::GroupingConfig,
    /// Writer options.
    pub writer: tracefold_writer::config::WriterSection,
    /// Detector options: spike settings, threshold rules, notification channels.
    pub detector: tracefold_detector::config::DetectorSection,
    /// Logs.
    pub telemetry: TelemetryConfig,
}

impl DevConfig {
    /// The grouper's `[sourcemaps]` section: `[symbolication]`, reading the producer's store
    /// unless `symbolication.store_url` names another.
    pub fn grouper_sourcemaps(&self) -> tracefold_grouper::config::SourcemapsSection {
        let store_url = if self.symbolication.store_url.is_empty() {
            self.sourcemaps.store_url.clone()
        } else {
            self.symbolication.store_url.clone()
        };
        tracefold_grouper::config::SourcemapsSection { store_url, ..self.symbolication.clone() }
    }

    /// The grouper's config in a pipeline on `kafka`: this config's sections, and an epoch of
    /// its own (`<epoch_prefix>-<random>`) unless one is set: the embedded Kafka is new on every
    /// start, its offsets restart at 0.
    pub fn grouper_config(&self, kafka: &KafkaConfig, epoch_prefix: &str) -> tracefold_grouper::Config {
        let mut grouper = self.grouper.clone();
        if grouper.epoch.is_empty() {
            grouper.epoch = format!("{epoch_prefix}-{:016x}", rand::random::<u64>());
        }
        tracefold_grouper::Config {
            kafka: kafka.clone(),
            topics: self.topics.clone(),
            grouper,
            grouping: self.grouping.clone(),
            sourcemaps: self.grouper_sourcemaps(),
            telemetry: self.telemetry.clone(),
        }
    }
}

/// Where `tracefold dev` keeps its state (the generated project key, logs), relative to the
/// working directory, like the local ClickHouse of `scripts/clickhouse-local.sh`.
pub const STATE_DIR: &str = ".tracefold";
/// The slug of the project `tracefold dev` registers for Sentry SDKs.
pub const DEV_PROJECT_SLUG: &str = "dev";
/// Its numeric id (the last part of the DSN).
pub const DEV_PROJECT_ID: u64 = 1;
/// The file under [`STATE_DIR`] that keeps its key, so that a DSN stays valid across starts.
pub const DEV_KEY_FILE: &str = "dev-key";

/// The project a Sentry SDK reports to in `tracefold dev`: the one registered with id
/// [`DEV_PROJECT_ID`] (or slug [`DEV_PROJECT_SLUG`]) by the config file, else the default one
/// [`add_default_project`] adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevProject {
    /// Project slug.
    pub slug: String,
    /// Numeric id.
    pub id: u64,
    /// The public key for the DSN; `None` when the config's project has no id or no key.
    pub key: Option<String>,
    /// Where the project and its key come from.
    pub origin: DevProjectOrigin,
}

/// Where [`DevProject`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevProjectOrigin {
    /// Added with a key generated on this start and saved in [`DEV_KEY_FILE`].
    NewKey,
    /// Added with the key read back from [`DEV_KEY_FILE`].
    KeptKey,
    /// Registered by the config file.
    Config,
}

impl DevProject {
    /// The Sentry DSN for a producer at `addr`: `http://KEY@ADDR/ID`, when there is a key.
    pub fn dsn(&self, addr: SocketAddr) -> Option<String> {
        self.key.as_ref().map(|k| format!("http://{k}@{addr}/{}", self.id))
    }
}

/// Registers the default project (`dev`, id 1) in `cfg` with the key kept in
/// `state_dir/dev-key` (generated on the first start: 32 hex characters from the operating
/// system's random source via `rand`), unless the config already registers a project with id
/// 1 or slug `dev`: then that one is kept as it is and reported. Projects of the config file
/// are never changed.
///
/// # Errors
/// When the key file cannot be read or written, or holds something that is not a key.
pub fn add_default_project(cfg: &mut DevConfig, state_dir: &std::path::Path) -> anyhow::Result<DevProject> {
    let existing = cfg
        .projects
        .iter()
        .find(|p| p.id == Some(DEV_PROJECT_ID))
        .or_else(|| cfg.projects.iter().find(|p| p.slug == DEV_PROJECT_SLUG));
    if let Some(p) = existing {
        return Ok(DevProject {
            slug: p.slug.clone(),
            id: p.id.unwrap_or(DEV_PROJECT_ID),
            key: p.id.and(p.keys.first().cloned()),
            origin: DevProjectOrigin::Config,
        });
    }
    let (key, new_key) = dev_key(state_dir)?;
    cfg.projects.push(tracefold_producer::config::ProjectConfig {
        slug: DEV_PROJECT_SLUG.into(),
        id: Some(DEV_PROJECT_ID),
        keys: vec![key.clone()],
        rate_per_sec: 0.0,
        burst: 0.0,
        key_rate_per_sec: 0.0,
        key_burst: 0.0,
    });
    let origin = if new_key { DevProjectOrigin::NewKey } else { DevProjectOrigin::KeptKey };
    Ok(DevProject { slug: DEV_PROJECT_SLUG.into(), id: DEV_PROJECT_ID, key: Some(key), origin })
}

/// The key in `state_dir/dev-key`, created (with the directory) when missing; `true` when it
/// was created now.
fn dev_key(state_dir: &std::path::Path) -> anyhow::Result<(String, bool)> {
    let path = state_dir.join(DEV_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let k = s.trim();
            anyhow::ensure!(
                k.len() >= 8 && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
                "{} does not hold a project key (at least 8 of [A-Za-z0-9_-]); delete it to get a new one",
                path.display()
            );
            Ok((k.to_owned(), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(state_dir).with_context(|| format!("cannot create {}", state_dir.display()))?;
            let key = format!("{:032x}", rand::random::<u128>());
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            match opts.open(&path) {
                Ok(mut f) => {
                    use std::io::Write as _;
                    writeln!(f, "{key}").with_context(|| format!("cannot write {}", path.display()))?;
                    Ok((key, true))
                }
                // Another `tracefold dev` started at the same moment: use its key.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => dev_key(state_dir),
                Err(e) => Err(anyhow::Error::new(e).context(format!("cannot create {}", path.display()))),
            }
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display()))),
    }
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
    /// What the migrations at start found and did.
    pub migrations: tracefold_store::migrate::Report,
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
        let gcfg = cfg.grouper_config(&kafka, "dev");
        let wcfg = tracefold_writer::Config {
            kafka: kafka.clone(),
            topics: cfg.topics.clone(),
            clickhouse: cfg.clickhouse.clone(),
            writer: cfg.writer.clone(),
            rankings: tracefold_writer::config::RankingsSection::default(),
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
            sourcemaps: cfg.sourcemaps.clone(),
            clickhouse: cfg.clickhouse.clone(),
            telemetry: cfg.telemetry.clone(),
        };
        // Bound before any service starts: an address in use is an error with nothing running.
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let http_addr = listener.local_addr()?;
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
        let mut healths = vec![gh, wh, dh];
        let serving =
            tokio::spawn(tracefold_producer::serve(pcfg, listener, shutdown.clone(), ph.clone(), healths.clone()));
        // The producer failing (at start: a config value it cannot use, its Kafka producer) is
        // a service failing like the others: marked dead (`/healthz`, the watchdog, which
        // prints why) and the rest stopped. Unwatched, its error waited in the task until the
        // end while the pipeline ran on with no ingest and `tracefold dev` exited 70 a minute
        // later with "producer: no progress", the reason never shown.
        let (s, h) = (shutdown.clone(), ph.clone());
        let producer = tokio::spawn(async move {
            let r = serving.await.unwrap_or_else(|e| Err(anyhow::anyhow!("the producer task ended abnormally: {e}")));
            // (An error of a stop already under way, such as its last flush, is the stop's
            // result, as before: the other services' drains are not cut short by the watchdog.)
            match &r {
                Err(e) if !s.is_triggered() => {
                    let why = format!("{e:#}");
                    tracing::error!(service = "producer", error = %why, "service failed; stopping");
                    h.set_dead(&why);
                    s.trigger();
                }
                _ => {}
            }
            r
        });
        healths.push(ph);
        Ok(Self { broker, cfg, shutdown, http_addr, migrations: report, threads, producer, healths })
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
/// load, as [`tracefold_store::aggregates::visible_events`] counts: a database that already
/// holds events from an earlier run does not count as done) in the base table and in every
/// count its views derive (so that a query right after sees them all), or `timeout` passes;
/// returns how many more it holds.
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
    // A bar on a terminal; nothing otherwise (indicatif draws only on a terminal).
    let pb = if progress { indicatif::ProgressBar::new(expected) } else { indicatif::ProgressBar::hidden() };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events stored")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    loop {
        let n = tracefold_store::aggregates::visible_events(&client, &ch.database).await?.saturating_sub(baseline);
        pb.set_position(n.min(expected));
        if n >= expected || Instant::now() >= deadline {
            pb.finish_and_clear();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("tracefold-devkey-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_default_project_keeps_its_key_across_starts() {
        let dir = scratch("keep");
        let mut a = DevConfig::default();
        let first = add_default_project(&mut a, &dir).unwrap();
        assert_eq!(first.origin, DevProjectOrigin::NewKey);
        let key = first.key.clone().unwrap();
        assert_eq!(key.len(), 32);
        assert!(key.bytes().all(|c| c.is_ascii_hexdigit()), "{key}");
        assert_eq!(a.projects.len(), 1);
        assert_eq!((a.projects[0].slug.as_str(), a.projects[0].id), ("dev", Some(1)));
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(first.dsn(addr).unwrap(), format!("http://{key}@127.0.0.1:8080/1"));
        let mut b = DevConfig::default();
        let second = add_default_project(&mut b, &dir).unwrap();
        assert_eq!(second.origin, DevProjectOrigin::KeptKey);
        assert_eq!(second.key, Some(key), "the same key on the next start");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn projects_of_the_config_are_kept() {
        let dir = scratch("kept");
        let p = |slug: &str, id: Option<u64>, keys: &[&str]| tracefold_producer::config::ProjectConfig {
            slug: slug.into(),
            id,
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            rate_per_sec: 0.0,
            burst: 0.0,
            key_rate_per_sec: 0.0,
            key_burst: 0.0,
        };
        let mut cfg = DevConfig { projects: vec![p("web", Some(1), &["webkey123"])], ..DevConfig::default() };
        let d = add_default_project(&mut cfg, &dir).unwrap();
        assert_eq!(cfg.projects, vec![p("web", Some(1), &["webkey123"])]);
        assert_eq!((d.slug.as_str(), d.id, d.key.as_deref()), ("web", 1, Some("webkey123")));
        assert!(!dir.exists(), "no key generated when the config has project 1");

        let mut cfg = DevConfig { projects: vec![p("api", Some(2), &["apikey123"])], ..DevConfig::default() };
        let d = add_default_project(&mut cfg, &dir).unwrap();
        assert_eq!(cfg.projects.len(), 2);
        assert_eq!((d.slug.as_str(), d.id), ("dev", 1));

        let mut cfg = DevConfig { projects: vec![p("dev", None, &[])], ..DevConfig::default() };
        let d = add_default_project(&mut cfg, &dir).unwrap();
        assert_eq!(cfg.projects.len(), 1, "a slug `dev` of the config is not registered twice");
        assert_eq!(d.key, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_key_file_is_an_error_not_a_new_key() {
        let dir = scratch("bad");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(DEV_KEY_FILE), "not a key!\n").unwrap();
        let err = add_default_project(&mut DevConfig::default(), &dir).unwrap_err();
        assert!(format!("{err:#}").contains("dev-key"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
