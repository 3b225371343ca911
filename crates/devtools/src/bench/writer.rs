//! `tracefold bench-writer`: aggregate rows per second from Kafka into the local ClickHouse.

use crate::gen;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::{Duration, Instant};
use tracefold_runtime::config::ClickHouseConfig;

/// What `bench-writer` sends, and where.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Aggregate records.
    pub records: u64,
    /// Partitions of the aggregates topic (the embedded broker keeps at most 5 MB of
    /// compressed records per partition: the benchmark checks that it kept them all).
    pub partitions: i32,
    /// The writer's `batch_max_rows` (rows per INSERT at most).
    pub batch_max_rows: usize,
    /// The writer's `batch_max_bytes` (bytes of aggregate JSON per INSERT at most).
    pub batch_max_bytes: usize,
    /// The writer's consumer loops (`writer.consumers`).
    pub consumers: usize,
    /// The ClickHouse server; the benchmark makes and drops a scratch database named after
    /// `database` and the process id.
    pub clickhouse: ClickHouseConfig,
}

/// What `bench-writer` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct WriterReport {
    /// Records sent.
    pub records: u64,
    /// Rows ClickHouse held at the end.
    pub stored: u64,
    /// Seconds from the writer's first record read to the last row stored.
    pub seconds: f64,
    /// The writer's `batch_max_rows`.
    pub batch_max_rows: usize,
    /// The writer's `batch_max_bytes`.
    pub batch_max_bytes: usize,
    /// The writer's consumer loops.
    pub consumers: usize,
    /// Partitions of the aggregates topic.
    pub partitions: i32,
    /// Seconds to produce every record to the topic (before the writer starts; not timed).
    pub produce_seconds: f64,
    /// Seconds from the writer's start to its first record read (its group join; not timed).
    pub join_seconds: f64,
    /// CPU seconds over the timed span ([`super::CpuSnapshot::since`]): this process's threads by
    /// part ([`writer_part`]), the process, the ClickHouse server(s) on this machine, the
    /// machine's busy share.
    pub cpu: serde_json::Value,
}

impl WriterReport {
    /// CPU microseconds per stored row of the process's part `part` (0 when absent).
    pub fn part_us_per_row(&self, part: &str) -> f64 {
        let secs = self.cpu["stages"][part].as_f64().unwrap_or(0.0);
        ((secs * 1e6 / self.stored.max(1) as f64) * 100.0).round() / 100.0
    }

    /// CPU microseconds per stored row of `field` of [`Self::cpu`] (`process_seconds`,
    /// `clickhouse_seconds`).
    fn us_per_row(&self, field: &str) -> f64 {
        let secs = self.cpu[field].as_f64().unwrap_or(0.0);
        ((secs * 1e6 / self.stored.max(1) as f64) * 100.0).round() / 100.0
    }

    /// The writer's own CPU per row: its consumer loop, its insert thread and the librdkafka
    /// threads (the writer's clients; the broker's are apart).
    pub fn writer_us_per_row(&self) -> f64 {
        let us = [WRITER_LOOP, WRITER_INSERT, LIBRDKAFKA].iter().map(|p| self.part_us_per_row(p)).sum::<f64>();
        (us * 100.0).round() / 100.0
    }

    /// The report as JSON.
    pub fn json(&self) -> serde_json::Value {
        let (records, stored, secs) = (self.records, self.stored, self.seconds);
        serde_json::json!({"records": records, "stored": stored, "seconds": secs, "rows_per_sec": stored as f64 / secs,
            "batch_max_rows": self.batch_max_rows, "batch_max_bytes": self.batch_max_bytes,
            "writer_consumers": self.consumers,
            "load": "pre-produced", "partitions": self.partitions, "produce_seconds": self.produce_seconds,
            "join_seconds": self.join_seconds, "cpu": self.cpu,
            "writer_cpu_us_per_row": self.writer_us_per_row(),
            "writer_loop_cpu_us_per_row": self.part_us_per_row(WRITER_LOOP),
            "process_cpu_us_per_row": self.us_per_row("process_seconds"),
            "clickhouse_cpu_us_per_row": self.us_per_row("clickhouse_seconds")})
    }

    /// The report as one line of text.
    pub fn table(&self) -> String {
        let (records, stored, secs) = (self.records, self.stored, self.seconds);
        format!(
            "{stored} of {records} aggregate rows stored in {secs:.2}s: {:.0} rows/s (records produced before the clock); CPU per row: writer {:.2} us (consumer loop {:.2}), process {:.2} us, ClickHouse {:.2} us\n",
            stored as f64 / secs,
            self.writer_us_per_row(),
            self.part_us_per_row(WRITER_LOOP),
            self.us_per_row("process_seconds"),
            self.us_per_row("clickhouse_seconds"),
        )
    }

    /// # Errors
    /// When ClickHouse holds another number of rows than were sent.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.stored != self.records {
            anyhow::bail!("ClickHouse holds {} rows, {} were sent", self.stored, self.records);
        }
        Ok(())
    }
}

/// Parts of the process, by thread name ([`writer_part`]).
const WRITER_LOOP: &str = "writer consumer loop";
const WRITER_INSERT: &str = "writer insert";
const LIBRDKAFKA: &str = "librdkafka";

/// The part of the benchmark process a thread belongs to, by its name: the writer's consumer
/// loop (the thread this benchmark starts it on), its outcomes loop, its insert thread (the
/// runtime `tracefold-writer-io`, cut by the kernel to 15 bytes), the embedded broker
/// (librdkafka's mock cluster thread), the other librdkafka threads (the writer's consumers
/// and DLQ producer, and the client hosting the mock cluster), and the rest (the benchmark's
/// own runtime, polling ClickHouse for the row count).
pub fn writer_part(thread: &str) -> &'static str {
    if thread.starts_with("writer-loop") {
        WRITER_LOOP
    } else if thread.starts_with("writer-outcomes") {
        "writer outcomes loop"
    } else if thread.starts_with("tracefold-write") {
        WRITER_INSERT
    } else if thread.starts_with("rdk:mock") {
        "embedded broker (mock cluster)"
    } else if thread.starts_with("rdk:") {
        LIBRDKAFKA
    } else {
        "other"
    }
}

/// Runs a writer on a one-broker embedded Kafka against a scratch database: produces
/// `records` realistic aggregate records to the aggregates topic first (and checks that the
/// broker kept them all), then starts the writer and times it from its first record read until
/// ClickHouse holds every row (at most ten minutes); drops the scratch database.
///
/// # Errors
/// When Kafka or ClickHouse is unusable, or the embedded broker dropped records.
pub async fn writer(opts: &WriterOptions) -> anyhow::Result<WriterReport> {
    super::quiet_logging();
    let records = opts.records;
    let mut ch = opts.clickhouse.clone();
    ch.database = format!("{}_benchw_{}", ch.database, std::process::id());
    tracefold_store::migrate::migrate(&ch, |_, _| {}).await?;
    let topics = tracefold_runtime::config::TopicsConfig::default();
    let broker = tracefold_runtime::devbroker::DevBroker::start(1, &topics, Some(opts.partitions))?;
    let kafka =
        tracefold_runtime::config::KafkaConfig { bootstrap_servers: broker.bootstrap_servers(), ..Default::default() };
    let client = tracefold_store::client::client(&ch);
    let now = gen::now_secs();
    // Realistic records: 2,000 issues, a few users each, one sample in twenty.
    let sample = gen::Generator::new(gen::GenOptions { now_secs: now, ..Default::default() }).next_event().json;
    // Every record on the topic before the writer starts: the clock then measures the writer
    // alone, not the load generator and its producer beside it on the same cores.
    let t_produce = Instant::now();
    {
        let producer: FutureProducer = tracefold_runtime::kafka::producer_config(&kafka, 30_000).create()?;
        let mut sent = 0u64;
        while sent < records {
            let wave = (records - sent).min(5_000);
            send_wave(&producer, &topics, sent, wave, now, &sample).await?;
            sent += wave;
        }
    }
    let produce_seconds = t_produce.elapsed().as_secs_f64();
    check_kept(&kafka, &topics.aggregates, opts.partitions, records)?;
    let mut wcfg = tracefold_writer::Config { kafka: kafka.clone(), clickhouse: ch.clone(), ..Default::default() };
    wcfg.writer.listen = String::new();
    wcfg.writer.batch_max_rows = opts.batch_max_rows;
    wcfg.writer.batch_max_bytes = opts.batch_max_bytes;
    wcfg.writer.consumers = opts.consumers;
    // The insert path alone: no rankings computed while it is measured.
    wcfg.rankings.refresh_seconds = 0;
    let shutdown = tracefold_runtime::Shutdown::new();
    let read = tracefold_runtime::telemetry::Health::named("writer");
    let (s, h) = (shutdown.clone(), read.clone());
    let t_start = Instant::now();
    let writer = std::thread::Builder::new()
        .name("writer-loop".into())
        .spawn(move || tracefold_writer::service::run(&wcfg, &s, &h))?;
    // The clock starts at the writer's first record read: its group join (seconds on the
    // embedded broker) is not timed.
    while read.consumed() == 0 {
        anyhow::ensure!(t_start.elapsed() < Duration::from_secs(120), "the writer read nothing within 2 minutes");
        anyhow::ensure!(!writer.is_finished(), "the writer stopped before reading anything");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Only the server the writer inserts into (another one on the machine stays out).
    let ch_pid = super::cpu::clickhouse_pid(&ch.url);
    let (t0, cpu0) = (Instant::now(), super::cpu::CpuSnapshot::now_by_for(writer_part, ch_pid));
    let join_seconds = t_start.elapsed().as_secs_f64();
    // ClickHouse is asked for its row count (every 20 ms) only once the writer has read every
    // record: the queries would cost both processes CPU in the measured span otherwise.
    while read.consumed() < records && t0.elapsed() < Duration::from_secs(600) && !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stored = wait_stored(&client, &ch.database, records, Duration::from_secs(600)).await?;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = super::cpu::CpuSnapshot::now_by_for(writer_part, ch_pid).since(&cpu0);
    shutdown.trigger();
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    tracefold_store::client::drop_database(&client, &ch.database).await?;
    Ok(WriterReport {
        records,
        stored,
        seconds,
        batch_max_rows: opts.batch_max_rows,
        batch_max_bytes: opts.batch_max_bytes,
        consumers: opts.consumers,
        partitions: opts.partitions,
        produce_seconds,
        join_seconds,
        cpu,
    })
}

/// Checks that the aggregates topic holds all `records` from offset 0: librdkafka's mock
/// cluster drops a partition's oldest message sets past 5 MB.
fn check_kept(
    kafka: &tracefold_runtime::config::KafkaConfig,
    topic: &str,
    partitions: i32,
    records: u64,
) -> anyhow::Result<()> {
    let probe: rdkafka::consumer::BaseConsumer =
        tracefold_runtime::kafka::consumer_config(kafka, "bench-writer-probe").create()?;
    let mut held = 0u64;
    for p in 0..partitions {
        let (low, high) = rdkafka::consumer::Consumer::fetch_watermarks(&probe, topic, p, Duration::from_secs(10))?;
        anyhow::ensure!(
            low == 0,
            "the embedded broker dropped the first {low} records of partition {p} (it keeps 5 MB per partition): use more --partitions"
        );
        held += u64::try_from(high).unwrap_or(0);
    }
    anyhow::ensure!(held == records, "the aggregates topic holds {held} records, {records} were produced");
    Ok(())
}

/// Sends records `from..from + n` and waits for their acknowledgements.
async fn send_wave(
    producer: &FutureProducer,
    topics: &tracefold_runtime::config::TopicsConfig,
    from: u64,
    n: u64,
    now: i64,
    sample: &str,
) -> anyhow::Result<()> {
    let mut futs = Vec::with_capacity(n as usize);
    for i in from..from + n {
        let r = tracefold_writer::bench::record(i, now, &topics.events, sample);
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
    Ok(())
}

/// Waits until ClickHouse holds `want` aggregate rows (or `timeout` passed); returns the count.
async fn wait_stored(client: &tracefold_store::Client, db: &str, want: u64, timeout: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let stored = tracefold_store::aggregates::row_count(client, db).await?;
        if stored >= want || Instant::now() >= deadline {
            return Ok(stored);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_parts_of_the_writer_by_name() {
        assert_eq!(writer_part("writer-loop"), WRITER_LOOP);
        assert_eq!(writer_part("writer-outcomes"), "writer outcomes loop");
        // The writer's runtime thread `tracefold-writer-io`, cut to 15 bytes by the kernel.
        assert_eq!(writer_part("tracefold-write"), WRITER_INSERT);
        assert_eq!(writer_part("rdk:mock"), "embedded broker (mock cluster)");
        assert_eq!(writer_part("rdk:broker1"), LIBRDKAFKA);
        assert_eq!(writer_part("tokio-rt-worker"), "other");
    }

    #[test]
    fn cpu_per_row_of_each_part() {
        let r = WriterReport {
            records: 200_000,
            stored: 200_000,
            seconds: 2.0,
            batch_max_rows: 1,
            batch_max_bytes: 1,
            consumers: 1,
            partitions: 12,
            produce_seconds: 1.0,
            join_seconds: 1.0,
            cpu: serde_json::json!({"process_seconds": 3.0, "clickhouse_seconds": 1.0,
                "stages": {WRITER_LOOP: 1.0, WRITER_INSERT: 0.2, LIBRDKAFKA: 0.3, "other": 0.5}}),
        };
        assert_eq!(r.part_us_per_row(WRITER_LOOP), 5.0);
        assert_eq!(r.writer_us_per_row(), 7.5);
        let j = r.json();
        assert_eq!(j["process_cpu_us_per_row"], 15.0);
        assert_eq!(j["clickhouse_cpu_us_per_row"], 5.0);
        assert_eq!(j["rows_per_sec"], 100_000.0);
        assert_eq!(j["load"], "pre-produced");
        assert!(r.check().is_ok());
    }
}
