//! `bench-pipeline --processes`: the grouper, the writer and the detector as separate
//! processes (their service binaries, beside the `tracefold` executable) against the embedded
//! broker of this process, so that each one's peak RSS (`VmHWM`) and CPU seconds can be read
//! from `/proc/<pid>`. This process keeps the broker and the load generator.

use super::cpu::stat_ticks;
use crate::dev::DevConfig;
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use tracefold_runtime::config::KafkaConfig;
use tracefold_runtime::devbroker::{DevBroker, DevBrokerOptions};

/// The service binaries run as processes, in start order.
pub const SERVICES: [&str; 3] = ["grouper", "writer", "detector"];

/// Environment variables the benchmark owns for its children (the scratch database, the
/// embedded broker, the topics it created): a `TRACEFOLD__...` override of these would point a
/// service elsewhere. Every other override (batch sizes, `[kafka.librdkafka]` options) reaches
/// the services, as it would in a deployment.
fn owned_by_the_bench(var: &str) -> bool {
    let v = var.to_ascii_uppercase();
    v.starts_with("TRACEFOLD__CLICKHOUSE__")
        || v.starts_with("TRACEFOLD__TOPICS__")
        || v == "TRACEFOLD__KAFKA__BOOTSTRAP_SERVERS"
        || v.ends_with("__LISTEN")
}

/// The `TRACEFOLD__...` variables the services get: this process's, less the ones the bench owns.
fn service_env() -> Vec<(String, String)> {
    std::env::vars().filter(|(k, _)| !owned_by_the_bench(k)).collect()
}

/// One figure of librdkafka's consumer config as the service builds it (tracefold's default or
/// the `[kafka.librdkafka]` override).
fn consumer_setting(kafka: &KafkaConfig, key: &str) -> String {
    tracefold_runtime::kafka::consumer_config(kafka, "g").get(key).unwrap_or("librdkafka's default").to_owned()
}

/// Same for producers.
fn producer_setting(kafka: &KafkaConfig, key: &str) -> String {
    tracefold_runtime::kafka::producer_config(kafka, 0).get(key).unwrap_or("librdkafka's default").to_owned()
}

/// The settings that bound a service's memory, in the config it runs with.
fn grouper_bounds(c: &tracefold_grouper::Config) -> String {
    let g = &c.grouper;
    format!(
        "per assigned partition: batch_max_events {} / batch_max_bytes {} MiB, dedup_window_events {}; \
         per consumer loop ({}): queued.max.messages.kbytes {}; producer queue.buffering.max.kbytes {}",
        g.batch_max_events,
        g.batch_max_bytes >> 20,
        g.dedup_window_events,
        g.consumers.max(1),
        consumer_setting(&c.kafka, "queued.max.messages.kbytes"),
        producer_setting(&c.kafka, "queue.buffering.max.kbytes"),
    )
}

fn writer_bounds(c: &tracefold_writer::Config) -> String {
    let w = &c.writer;
    format!(
        "batch_max_rows {} / batch_max_bytes {} MiB (one insert in flight beside the next batch); \
         queued.max.messages.kbytes {}",
        w.batch_max_rows,
        w.batch_max_bytes >> 20,
        consumer_setting(&c.kafka, "queued.max.messages.kbytes"),
    )
}

fn detector_bounds(c: &tracefold_detector::Config) -> String {
    let d = &c.detector;
    format!(
        "engine.max_issues {} / evict_idle_min {}, history_minutes {}; queued.max.messages.kbytes {}",
        d.engine.max_issues,
        d.engine.evict_idle_min,
        d.history_minutes,
        consumer_setting(&c.kafka, "queued.max.messages.kbytes"),
    )
}

/// What one process used: peak and final resident set, CPU ticks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcFigures {
    /// `VmHWM`, bytes.
    pub peak_rss_bytes: u64,
    /// `VmRSS`, bytes.
    pub rss_bytes: u64,
    /// User + system ticks of all its threads, living and exited (`USER_HZ`).
    pub cpu_ticks: u64,
}

/// The figures of process `pid` now (zeros where /proc is not there).
pub fn proc_figures(pid: &str) -> ProcFigures {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    let cpu_ticks =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| stat_ticks(&s)).map_or(0, |x| x.1);
    ProcFigures { peak_rss_bytes: field("VmHWM:"), rss_bytes: field("VmRSS:"), cpu_ticks }
}

struct Proc {
    name: &'static str,
    bounds: String,
    child: Child,
}

/// The embedded broker in this process and the three services as child processes.
pub struct ServiceProcesses {
    /// The embedded Kafka.
    pub broker: DevBroker,
    /// The grouper's consumer group, as the grouper runs with it (what the load is paced by).
    pub grouper_group: String,
    procs: Mutex<Vec<Proc>>,
    dir: PathBuf,
}

/// Where the service binaries are: beside the running `tracefold` executable.
fn service_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("where is this executable")?;
    let path = exe.parent().unwrap_or_else(|| Path::new(".")).join(format!("tracefold-{name}"));
    if !path.exists() {
        anyhow::bail!(
            "{} not found: --processes runs the service binaries beside tracefold (cargo build --release \
             -p tracefold -p tracefold-grouper -p tracefold-writer -p tracefold-detector)",
            path.display()
        );
    }
    Ok(path)
}

impl ServiceProcesses {
    /// Starts the embedded broker with `partitions`, writes each service's config (from `cfg`,
    /// as the in-process pipeline builds them) and checks it loads with the environment the
    /// service gets, applies the migrations to `cfg`'s database and starts the three services.
    ///
    /// # Errors
    /// When a binary is missing, the broker or ClickHouse is unusable, or a process cannot start.
    pub async fn start(cfg: &DevConfig, partitions: i32) -> anyhow::Result<Self> {
        let bins: Vec<PathBuf> = SERVICES.iter().map(|s| service_binary(s)).collect::<anyhow::Result<_>>()?;
        let broker = DevBroker::start_with(
            &cfg.topics,
            &DevBrokerOptions { partitions: Some(partitions), ..Default::default() },
        )?;
        let bootstrap = broker.bootstrap_servers();
        let kafka = KafkaConfig { bootstrap_servers: bootstrap.clone(), ..KafkaConfig::default() };
        // The password goes in the environment of the two services that use it, not in a file.
        let password = cfg.clickhouse.password.clone();
        let clickhouse =
            tracefold_runtime::config::ClickHouseConfig { password: String::new(), ..cfg.clickhouse.clone() };
        let mut gcfg = cfg.grouper_config(&kafka, "bench");
        gcfg.grouper.listen = String::new();
        let wcfg = tracefold_writer::Config {
            kafka: kafka.clone(),
            topics: cfg.topics.clone(),
            clickhouse: clickhouse.clone(),
            writer: tracefold_writer::config::WriterSection { listen: String::new(), ..cfg.writer.clone() },
            // Off: the pipeline's figures are the insert path's (a ranking's CPU is measured apart,
            // by bench-queries).
            rankings: tracefold_writer::config::RankingsSection { refresh_seconds: 0, ..Default::default() },
            telemetry: cfg.telemetry.clone(),
        };
        let dcfg = tracefold_detector::Config {
            kafka,
            topics: cfg.topics.clone(),
            clickhouse,
            detector: tracefold_detector::config::DetectorSection { listen: String::new(), ..cfg.detector.clone() },
            telemetry: cfg.telemetry.clone(),
        };
        let dir = std::env::temp_dir().join(format!("tracefold-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let env = service_env();
        let files = [toml::to_string(&gcfg)?, toml::to_string(&wcfg)?, toml::to_string(&dcfg)?];
        let mut paths = Vec::new();
        for (name, text) in SERVICES.iter().zip(&files) {
            let path = dir.join(format!("{name}.toml"));
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
            paths.push(path);
        }
        // The configs the services will run with (file, then the environment they get): what
        // the load paces by and the bounds the report names.
        let g: tracefold_grouper::Config = tracefold_runtime::config::load(Some(&paths[0]), env.clone())?;
        let w: tracefold_writer::Config = tracefold_runtime::config::load(Some(&paths[1]), env.clone())?;
        let d: tracefold_detector::Config = tracefold_runtime::config::load(Some(&paths[2]), env)?;
        let bounds = [grouper_bounds(&g), writer_bounds(&w), detector_bounds(&d)];
        // The scratch database only once the configs are known to load (an error above leaves
        // nothing behind).
        tracefold_store::migrate::migrate(&cfg.clickhouse, |_, _| {}).await?;
        let me = Self { broker, grouper_group: g.grouper.group_id.clone(), procs: Mutex::new(Vec::new()), dir };
        for ((name, bin), (path, bounds)) in SERVICES.iter().zip(&bins).zip(paths.iter().zip(bounds)) {
            let mut cmd = Command::new(bin);
            cmd.arg("--config").arg(path).arg("--bootstrap-servers").arg(&bootstrap);
            for (k, _) in std::env::vars().filter(|(k, _)| owned_by_the_bench(k)) {
                cmd.env_remove(k);
            }
            if *name != "grouper" && !password.is_empty() {
                cmd.env("TRACEFOLD__CLICKHOUSE__PASSWORD", &password);
            }
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
            let child = cmd.spawn().with_context(|| format!("cannot start {}", bin.display()))?;
            me.procs.lock().unwrap_or_else(PoisonError::into_inner).push(Proc { name, bounds, child });
        }
        Ok(me)
    }

    /// The embedded Kafka's bootstrap servers.
    pub fn bootstrap_servers(&self) -> String {
        self.broker.bootstrap_servers()
    }

    /// Per service: name, the settings that bound its memory, its figures now.
    pub fn figures(&self) -> Vec<(&'static str, String, ProcFigures)> {
        let procs = self.procs.lock().unwrap_or_else(PoisonError::into_inner);
        procs.iter().map(|p| (p.name, p.bounds.clone(), proc_figures(&p.child.id().to_string()))).collect()
    }

    /// Returns once a service process has exited (never while they all run), with an error
    /// that names it and its status. Cancel safe: it only polls.
    pub async fn watch(&self) -> anyhow::Error {
        loop {
            {
                let mut procs = self.procs.lock().unwrap_or_else(PoisonError::into_inner);
                for p in procs.iter_mut() {
                    match p.child.try_wait() {
                        Ok(None) => {}
                        Ok(Some(st)) => {
                            return anyhow::anyhow!("the {} process exited during the benchmark: {st}", p.name)
                        }
                        Err(e) => return anyhow::anyhow!("cannot check the {} process: {e}", p.name),
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// SIGTERM to every service, then waits for them (60 s each at most, then SIGKILL).
    ///
    /// # Errors
    /// A service that did not exit cleanly.
    pub async fn stop(self) -> anyhow::Result<()> {
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(PoisonError::into_inner));
        let result = tokio::task::spawn_blocking(move || {
            let mut first_err = None;
            for p in &procs {
                let _ = Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status();
            }
            for mut p in procs {
                let deadline = Instant::now() + Duration::from_secs(60);
                let st = loop {
                    match p.child.try_wait() {
                        Ok(Some(st)) => break Some(st),
                        Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                        _ => {
                            let _ = p.child.kill();
                            let _ = p.child.wait();
                            break None;
                        }
                    }
                };
                match st {
                    Some(st) if st.success() => {}
                    Some(st) => first_err = first_err.or(Some(anyhow::anyhow!("{} exited with {st}", p.name))),
                    None => first_err = first_err.or(Some(anyhow::anyhow!("{} did not stop within 60 s", p.name))),
                }
            }
            first_err.map_or(Ok(()), Err)
        })
        .await?;
        // The broker and the config folder go with `self` (see Drop).
        result
    }
}

impl Drop for ServiceProcesses {
    /// A benchmark that failed half-way leaves no service running.
    fn drop(&mut self) {
        for p in self.procs.get_mut().unwrap_or_else(PoisonError::into_inner).iter_mut() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_keeps_its_own_connections_from_the_services_environment() {
        assert!(owned_by_the_bench("TRACEFOLD__CLICKHOUSE__DATABASE"));
        assert!(owned_by_the_bench("TRACEFOLD__KAFKA__BOOTSTRAP_SERVERS"));
        assert!(owned_by_the_bench("TRACEFOLD__GROUPER__LISTEN"));
        assert!(!owned_by_the_bench("TRACEFOLD__GROUPER__BATCH_MAX_EVENTS"));
        assert!(!owned_by_the_bench("TRACEFOLD__KAFKA__LIBRDKAFKA__queued.max.messages.kbytes"));
    }

    #[test]
    fn bounds_name_the_settings_in_force() {
        let mut g = tracefold_grouper::Config::default();
        g.kafka.librdkafka.insert("queued.max.messages.kbytes".into(), "16384".into());
        g.grouper.consumers = 2;
        let b = grouper_bounds(&g);
        assert!(b.contains("queued.max.messages.kbytes 16384"), "{b}");
        assert!(b.contains("consumer loop (2)"), "{b}");
        assert!(b.contains("batch_max_events 50000"), "{b}");
        assert!(b.contains("queue.buffering.max.kbytes 262144"), "{b}");
    }

    #[test]
    fn figures_of_this_process() {
        let f = proc_figures("self");
        if cfg!(target_os = "linux") {
            assert!(f.peak_rss_bytes >= f.rss_bytes && f.rss_bytes > 0, "{f:?}");
        }
    }
}
