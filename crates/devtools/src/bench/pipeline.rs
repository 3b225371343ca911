//! `tracefold bench-pipeline`: load into Kafka -> grouper -> writer -> ClickHouse, end to end.

use super::procs::{ProcFigures, ServiceProcesses};
use crate::{dev, gen, loadgen};
use anyhow::Context as _;
use std::time::{Duration, Instant};
use tracefold_runtime::config::ClickHouseConfig;

/// What `bench-pipeline` sends, and where.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Events to send.
    pub events: u64,
    /// Distinct issues.
    pub issues: usize,
    /// Partitions of the events and aggregates topics.
    pub partitions: i32,
    /// Most events produced and not yet committed by the grouper, per partition: the load
    /// waits above it (librdkafka's mock cluster keeps 5 MB of compressed messages per
    /// partition and deletes older ones whether read or not).
    pub max_lag_per_partition: i64,
    /// The grouper's batch age, ms (its committed offsets trail the reads by about as much).
    pub batch_max_age_ms: u64,
    /// The writer's batch age, ms: with the grouper's, what the last events wait after the
    /// load ends (the run's tail).
    pub writer_batch_max_age_ms: u64,
    /// Whether the lag bound counts the events the grouper has not read (the loosest pacing
    /// the mock cluster's retention allows in a run without crashes) or not committed (the
    /// bound a load in another process can measure; the commits trail the reads by a batch).
    pub pace_by_commits: bool,
    /// The grouper's consumer loops (`grouper.consumers`).
    pub grouper_consumers: usize,
    /// Run the grouper, the writer and the detector as processes of their own (their service
    /// binaries, beside this executable), each measured apart; this process keeps the
    /// embedded broker and the load. The load is then paced by the grouper's commits.
    pub processes: bool,
    /// The ClickHouse server; the benchmark makes and drops a scratch database named after
    /// `database` and the process id.
    pub clickhouse: ClickHouseConfig,
}

/// Distinct generated events the load takes in turn (each sent with a fresh event id): the
/// load then costs a copy per event, not a generation, and the CPU goes to the pipeline.
pub const POOL_EVENTS: usize = 20_000;

/// Events sent and stored before the clock starts: the consumer groups have joined, the
/// producers have their ids, the schema is warm.
pub const WARMUP_EVENTS: u64 = 2_000;

/// What `bench-pipeline` measured.
#[derive(Debug, Clone)]
pub struct PipelineReport {
    /// The options it ran with.
    pub opts: PipelineOptions,
    /// Events Kafka acknowledged.
    pub accepted: u64,
    /// Events counted in ClickHouse at the end.
    pub stored: u64,
    /// Seconds to load the events into Kafka.
    pub produce_secs: f64,
    /// Of those, seconds the load waited for the grouper's committed lag to fall under the bound.
    pub lag_waited_secs: f64,
    /// Seconds from the first event sent to the last one counted.
    pub total_secs: f64,
    /// The machine's busy share (all cores, 0 to 1) while the load ran, and after it (the
    /// tail: the last batches waiting for their age, inserted, counted).
    pub busy_load_phase: f64,
    /// See `busy_load_phase`.
    pub busy_tail: f64,
    /// CPU seconds over the same span, per stage ([`super::cpu::CpuSnapshot::since`]).
    pub cpu: serde_json::Value,
    /// Peak resident set size of the whole process (load generator, embedded broker and the
    /// services together), bytes.
    pub peak_rss_bytes: u64,
    /// With `processes`: per service process, its name, the settings that bound its memory and
    /// what it used (peak RSS over its whole life, warm-up included; CPU over the measured span).
    pub services: Vec<ServiceFigures>,
    /// Aggregate rows the measured events made (the warm-up's not counted): events per row is how much
    /// the grouper's batches aggregate, and what the writer and ClickHouse are spared.
    pub aggregate_rows: u64,
}

/// What one service process used.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceFigures {
    /// `grouper`, `writer`, `detector`.
    pub name: String,
    /// The settings that bound its memory, with their values in force.
    pub bounds: String,
    /// Peak RSS (`VmHWM`), bytes.
    pub peak_rss_bytes: u64,
    /// RSS at the end of the measured span, bytes.
    pub rss_bytes: u64,
    /// CPU seconds (user + system, all its threads) over the measured span.
    pub cpu_seconds: f64,
}

/// What the bound of this process (the embedded broker and the load) is made of.
const BENCH_PROCESS_BOUNDS: &str = "embedded broker: 5 MB of compressed messages per partition and topic; \
     load: 20,000 pre-generated events, its producer's queue.buffering.max.kbytes";

impl PipelineReport {
    /// The report as JSON.
    pub fn json(&self) -> serde_json::Value {
        let (accepted, stored, produced, total) = (self.accepted, self.stored, self.produce_secs, self.total_secs);
        serde_json::json!({
            "events": self.opts.events,
            "accepted": accepted,
            "stored": stored,
            "produce_seconds": produced,
            "produce_events_per_sec": accepted as f64 / produced,
            "load_waited_on_lag_seconds": self.lag_waited_secs,
            "end_to_end_seconds": total,
            "end_to_end_events_per_sec": stored as f64 / total,
            "tail_seconds": total - produced,
            "machine_busy_share_load_phase": self.busy_load_phase,
            "machine_busy_share_tail": self.busy_tail,
            "partitions": self.opts.partitions,
            "issues": self.opts.issues,
            "cpu": self.cpu,
            "events_per_cpu_second": self.events_per_cpu_second(),
            "pipeline_cpu_seconds": self.pipeline_cpu_seconds(),
            "pipeline_cpu_us_per_event": self.pipeline_cpu_us_per_event(),
            "max_lag_per_partition": self.opts.max_lag_per_partition,
            "batch_max_age_ms": self.opts.batch_max_age_ms,
            "writer_batch_max_age_ms": self.opts.writer_batch_max_age_ms,
            "grouper_consumers": self.opts.grouper_consumers,
            "paced_by": if self.opts.pace_by_commits { "committed" } else { "read" },
            "peak_rss_bytes": self.peak_rss_bytes,
            "aggregate_rows": self.aggregate_rows,
            "processes": self.opts.processes,
            "services": self.services.iter().map(|s| serde_json::json!({
                "service": s.name,
                "peak_rss_bytes": s.peak_rss_bytes,
                "rss_bytes_at_end": s.rss_bytes,
                "cpu_seconds": s.cpu_seconds,
                "bounded_by": s.bounds,
            })).collect::<Vec<_>>(),
        })
    }

    /// CPU seconds of the service processes together (0 in one process).
    pub fn services_cpu_seconds(&self) -> f64 {
        self.services.iter().map(|s| s.cpu_seconds).sum()
    }

    /// Events stored per CPU-second of this process, the service processes (with
    /// `processes`) and the ClickHouse server together.
    pub fn events_per_cpu_second(&self) -> f64 {
        let cpu = self.cpu["process_seconds"].as_f64().unwrap_or(0.0)
            + self.services_cpu_seconds()
            + self.cpu["clickhouse_seconds"].as_f64().unwrap_or(0.0);
        if cpu > 0.0 {
            self.stored as f64 / cpu
        } else {
            0.0
        }
    }

    /// CPU seconds of the pipeline alone: this process, the service processes and ClickHouse,
    /// less the load (its generation and its Kafka producer), which in a deployment is the
    /// senders' and the HTTP producer's work in other processes.
    pub fn pipeline_cpu_seconds(&self) -> f64 {
        let stage = |k: &str| self.cpu["stages"][k].as_f64().unwrap_or(0.0);
        let all = self.cpu["process_seconds"].as_f64().unwrap_or(0.0)
            + self.services_cpu_seconds()
            + self.cpu["clickhouse_seconds"].as_f64().unwrap_or(0.0);
        ((all - stage("load generation") - stage(LOAD_PRODUCER)) * 100.0).round().max(0.0) / 100.0
    }

    /// Microseconds of the pipeline's CPU ([`Self::pipeline_cpu_seconds`]) per stored event: 100,000
    /// events/s on two cores allows 20.
    pub fn pipeline_cpu_us_per_event(&self) -> f64 {
        if self.stored == 0 {
            0.0
        } else {
            self.pipeline_cpu_seconds() * 1e6 / self.stored as f64
        }
    }

    /// The report as lines of text: counts, times, then CPU seconds per stage.
    pub fn table(&self) -> String {
        let (accepted, stored, produced, total) = (self.accepted, self.stored, self.produce_secs, self.total_secs);
        let mut out = format!(
            "events accepted by Kafka   {accepted}\n\
             events stored in ClickHouse {stored}\n\
             load (into Kafka)           {produced:.2}s  {:.0} events/s  (waited {:.2}s on the lag bound)\n\
             end to end                  {total:.2}s  {:.0} events/s\n\
             tail (load done -> stored)  {:.2}s  (batch ages: grouper {} ms, writer {} ms)\n\
             machine busy                {:.0}% while loading, {:.0}% in the tail\n\
             peak RSS of {:<16}{:.0} MB\n\
             aggregate rows              {}  ({:.1} events per row)\n",
            accepted as f64 / produced,
            self.lag_waited_secs,
            stored as f64 / total,
            total - produced,
            self.opts.batch_max_age_ms,
            self.opts.writer_batch_max_age_ms,
            self.busy_load_phase * 100.0,
            self.busy_tail * 100.0,
            if self.opts.processes { "broker + load" } else { "the process" },
            self.peak_rss_bytes as f64 / 1e6,
            self.aggregate_rows,
            stored as f64 / self.aggregate_rows.max(1) as f64
        );
        if let Some(stages) = self.cpu["stages"].as_object() {
            for (stage, secs) in stages {
                out += &format!("{:<48}{:.2}s\n", format!("cpu {stage}"), secs.as_f64().unwrap_or(0.0));
            }
        }
        let f = |k: &str| self.cpu[k].as_f64().unwrap_or(0.0);
        for s in &self.services {
            out += &format!(
                "{:<48}{:.2}s  peak RSS {:.0} MB (at the end {:.0} MB)\n{:<48}bounded by {}\n",
                format!("cpu {} process", s.name),
                s.cpu_seconds,
                s.peak_rss_bytes as f64 / 1e6,
                s.rss_bytes as f64 / 1e6,
                "",
                s.bounds
            );
        }
        if self.opts.processes {
            out += &format!("{:<48}bounded by {BENCH_PROCESS_BOUNDS}\n", "broker + load process");
        }
        out += &format!(
            "{:<48}{:.2}s\n{:<48}{:.2}s\n{:<48}{:.0}%\n{:<48}{:.0}\n{:<48}{:.1} µs\n",
            if self.opts.processes { "cpu this process (broker + load)" } else { "cpu this process" },
            f("process_seconds"),
            "cpu clickhouse-server",
            f("clickhouse_seconds"),
            "machine busy (all cores)",
            f("machine_busy_share") * 100.0,
            if self.opts.processes {
                "events per CPU-second (processes + ClickHouse)"
            } else {
                "events per CPU-second (process + ClickHouse)"
            },
            self.events_per_cpu_second(),
            "pipeline CPU per event (less the load)",
            self.pipeline_cpu_us_per_event()
        );
        out
    }

    /// # Errors
    /// When ClickHouse counts another number of events than Kafka accepted.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.stored != self.accepted {
            anyhow::bail!("ClickHouse holds {} events, {} were accepted", self.stored, self.accepted);
        }
        Ok(())
    }
}

/// The stage of the load's Kafka producer in the report's `cpu.stages`.
pub const LOAD_PRODUCER: &str = "load generation: its Kafka producer";

/// Moves the load producer's CPU (`producer_secs`, read before it was dropped) out of "exited
/// threads", where its threads' time lands once they are gone, into a stage of its own. What
/// stays in "exited threads" is the rest: the producer's last moments after the reading, and
/// any other thread that ended during the run.
fn attribute_load_producer(cpu: &mut serde_json::Value, producer_secs: f64) {
    let Some(stages) = cpu.get_mut("stages").and_then(|s| s.as_object_mut()) else { return };
    let exited = stages.get("exited threads").and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    // Ticks are read at 10 ms: the two readings can disagree by a tick or two either way.
    let moved = producer_secs.min(exited).max(0.0);
    stages.insert("exited threads".into(), (((exited - moved) * 100.0).round() / 100.0).max(0.0).into());
    stages.insert(LOAD_PRODUCER.into(), moved.into());
}

/// The services under measurement: in this process, or as processes of their own.
enum Running {
    InProcess(Box<dev::Pipeline>),
    Processes(ServiceProcesses),
}

impl Running {
    fn bootstrap_servers(&self) -> String {
        match self {
            Self::InProcess(p) => p.bootstrap_servers(),
            Self::Processes(p) => p.bootstrap_servers(),
        }
    }

    /// `fut`, cut short with an error when a service process exits meanwhile.
    async fn guard<T>(&self, fut: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
        match self {
            Self::InProcess(_) => fut.await,
            Self::Processes(p) => tokio::select! {
                r = fut => r,
                e = p.watch() => Err(e),
            },
        }
    }

    fn figures(&self) -> Vec<(&'static str, String, ProcFigures)> {
        match self {
            Self::InProcess(_) => Vec::new(),
            Self::Processes(p) => p.figures(),
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Self::InProcess(p) => p.stop().await,
            Self::Processes(p) => p.stop().await,
        }
    }
}

/// Runs the dev pipeline (in this process, or with `processes` the grouper, the writer and
/// the detector as processes of their own) against a scratch database, loads `events`
/// generated events straight into Kafka (paced by the grouper's lag) and waits until
/// ClickHouse counts them (at most 30 minutes); drops the scratch database.
///
/// # Errors
/// When the pipeline cannot start, Kafka or ClickHouse is unusable, or a service fails.
pub async fn pipeline(opts: &PipelineOptions) -> anyhow::Result<PipelineReport> {
    super::quiet_logging();
    if opts.processes && !opts.pace_by_commits {
        anyhow::bail!("with the services in processes of their own the load can only be paced by the committed lag");
    }
    let mut ch = opts.clickhouse.clone();
    ch.database = format!("{}_bench_{}", ch.database, std::process::id());
    let mut cfg = dev::DevConfig { clickhouse: ch.clone(), ..Default::default() };
    // Short batches keep the committed lag (what the load is paced by) close to the read lag.
    cfg.grouper.batch_max_age_ms = opts.batch_max_age_ms;
    cfg.grouper.consumers = opts.grouper_consumers;
    cfg.writer.batch_max_age_ms = opts.writer_batch_max_age_ms;
    cfg.telemetry.log_level = "warn".into();
    // librdkafka's mock cluster keeps at most 5 MB per partition: stay well inside it.
    let lag_limit = i64::from(opts.partitions) * opts.max_lag_per_partition;
    let (running, group, lag_by) = if opts.processes {
        let p = ServiceProcesses::start(&cfg, opts.partitions).await?;
        let group = p.grouper_group.clone();
        (Running::Processes(p), group, loadgen::LagBy::Committed)
    } else {
        let pipeline = dev::Pipeline::start(cfg.clone(), "127.0.0.1:0", Some(opts.partitions), true).await?;
        let grouper =
            pipeline.healths().into_iter().find(|h| h.name() == "grouper").context("no grouper in the pipeline")?;
        let by = if opts.pace_by_commits { loadgen::LagBy::Committed } else { loadgen::LagBy::Read(grouper) };
        (Running::InProcess(Box::new(pipeline)), cfg.grouper.group_id.clone(), by)
    };
    let bootstrap = running.bootstrap_servers();
    let target = loadgen::Target::Kafka { bootstrap_servers: bootstrap.clone(), topic: cfg.topics.events.clone() };
    let load = |events: u64, seed: u64, progress: bool| loadgen::LoadOptions {
        events,
        rate: loadgen::Rate::Unpaced,
        batch: 0,
        concurrency: 0,
        progress,
        max_lag: Some(loadgen::LagLimit { group: group.clone(), events: lag_limit, by: lag_by.clone() }),
        max_retries: loadgen::DEFAULT_MAX_RETRIES,
        // Event times within the last minute, as in live traffic (the generator's default
        // spreads them over an hour: a backfill, one aggregate row per event or so).
        gen: gen::GenOptions {
            issues: opts.issues,
            now_secs: gen::now_secs(),
            spread_secs: 60,
            seed,
            ..Default::default()
        },
    };
    eprintln!("pipeline up (database {}); warming up with {WARMUP_EVENTS} events ...", ch.database);
    // Its own seed, so other event ids than the measured load's (which would be duplicates).
    let warm = running
        .guard(loadgen::run(&target, &load(WARMUP_EVENTS, gen::GenOptions::default().seed ^ 0x5eed, false)))
        .await?;
    let baseline = running.guard(dev::wait_for_events(&ch, 0, warm.accepted, Duration::from_secs(300), false)).await?;
    if baseline != warm.accepted {
        anyhow::bail!("the warm-up stored {baseline} of {} events", warm.accepted);
    }
    let client = tracefold_store::client::client(&ch);
    let warm_rows = tracefold_store::aggregates::row_count(&client, &ch.database).await?;
    let measured = load(opts.events, gen::GenOptions::default().seed, true);
    let mut g = gen::Generator::new(measured.gen.clone());
    let pool: Vec<gen::Generated> = (0..POOL_EVENTS.min(opts.events as usize)).map(|_| g.next_event()).collect();
    eprintln!("loading {} events straight into Kafka ({} distinct bodies, fresh ids) ...", opts.events, pool.len());
    // Only the server the pipeline writes to: another one on the machine (a developer's, with
    // its own merges) would count in the figure otherwise.
    let ch_pid = super::cpu::clickhouse_pid(&ch.url);
    let cpu0 = super::cpu::CpuSnapshot::now_by_for(super::cpu::stage_of, ch_pid);
    let services0 = running.figures();
    let t0 = Instant::now();
    let s = running.guard(loadgen::run_kafka_pool(&bootstrap, &cfg.topics.events, &measured, &pool)).await?;
    let produce_secs = t0.elapsed().as_secs_f64();
    let cpu_loaded = super::cpu::CpuSnapshot::now_by_for(super::cpu::stage_of, ch_pid);
    let stored =
        running.guard(dev::wait_for_events(&ch, baseline, s.accepted, Duration::from_secs(1800), false)).await?;
    let total_secs = t0.elapsed().as_secs_f64();
    let cpu_end = super::cpu::CpuSnapshot::now_by_for(super::cpu::stage_of, ch_pid);
    let busy = |j: serde_json::Value| j["machine_busy_share"].as_f64().unwrap_or(0.0);
    let (busy_load_phase, busy_tail) = (busy(cpu_loaded.since(&cpu0)), busy(cpu_end.since(&cpu_loaded)));
    let mut cpu = cpu_end.since(&cpu0);
    attribute_load_producer(&mut cpu, s.producer_cpu_secs);
    let services = running
        .figures()
        .into_iter()
        .map(|(name, bounds, f)| {
            let start = services0.iter().find(|x| x.0 == name).map_or(0, |x| x.2.cpu_ticks);
            ServiceFigures {
                name: name.to_owned(),
                bounds,
                peak_rss_bytes: f.peak_rss_bytes,
                rss_bytes: f.rss_bytes,
                cpu_seconds: f.cpu_ticks.saturating_sub(start) as f64 / 100.0,
            }
        })
        .collect();
    let peak_rss_bytes = super::cpu::rss().1;
    running.stop().await?;
    let aggregate_rows = tracefold_store::aggregates::row_count(&client, &ch.database).await?.saturating_sub(warm_rows);
    tracefold_store::client::drop_database(&client, &ch.database).await?;
    Ok(PipelineReport {
        opts: opts.clone(),
        accepted: s.accepted,
        stored,
        produce_secs,
        lag_waited_secs: s.lag_waited_secs,
        total_secs,
        busy_load_phase,
        busy_tail,
        cpu,
        peak_rss_bytes,
        services,
        aggregate_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_producer_moves_out_of_exited_threads_never_below_zero() {
        let mut cpu = serde_json::json!({"stages": {"exited threads": 1.18, "grouper": 2.4}});
        attribute_load_producer(&mut cpu, 0.95);
        assert_eq!(cpu["stages"]["exited threads"], 0.23);
        assert_eq!(cpu["stages"][LOAD_PRODUCER], 0.95);
        assert_eq!(cpu["stages"]["grouper"], 2.4);
        // Read a tick later than the process total: at most what exited is moved.
        let mut cpu = serde_json::json!({"stages": {"exited threads": 0.5}});
        attribute_load_producer(&mut cpu, 0.52);
        assert_eq!(cpu["stages"]["exited threads"], 0.0);
        assert_eq!(cpu["stages"][LOAD_PRODUCER], 0.5);
    }
}
