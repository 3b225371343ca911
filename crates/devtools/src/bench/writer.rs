//! `tracefold bench-writer`: aggregate rows per second from Kafka into the local ClickHouse.

use crate::gen;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::{Duration, Instant};
use tracefold_model::aggregate::{UserSet, DEFAULT_MAX_USERS};
use tracefold_runtime::config::ClickHouseConfig;

/// What `bench-writer` sends, and where.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Aggregate records.
    pub records: u64,
    /// The writer's `batch_max_rows` (rows per INSERT at most).
    pub batch_max_rows: usize,
    /// The writer's `batch_max_bytes` (bytes of aggregate JSON per INSERT at most).
    pub batch_max_bytes: usize,
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
    /// Seconds from the first record sent to the last row stored.
    pub seconds: f64,
    /// The writer's `batch_max_rows`.
    pub batch_max_rows: usize,
    /// The writer's `batch_max_bytes`.
    pub batch_max_bytes: usize,
}

impl WriterReport {
    /// The report as JSON.
    pub fn json(&self) -> serde_json::Value {
        let (records, stored, secs) = (self.records, self.stored, self.seconds);
        serde_json::json!({"records": records, "stored": stored, "seconds": secs, "rows_per_sec": stored as f64 / secs, "batch_max_rows": self.batch_max_rows, "batch_max_bytes": self.batch_max_bytes})
    }

    /// The report as one line of text.
    pub fn table(&self) -> String {
        let (records, stored, secs) = (self.records, self.stored, self.seconds);
        format!("{stored} of {records} aggregate rows stored in {secs:.2}s: {:.0} rows/s\n", stored as f64 / secs)
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

/// Runs a writer on a one-broker embedded Kafka against a scratch database, sends it
/// `records` realistic aggregate records and waits until ClickHouse holds them (at most ten
/// minutes); drops the scratch database.
///
/// # Errors
/// When Kafka or ClickHouse is unusable.
pub async fn writer(opts: &WriterOptions) -> anyhow::Result<WriterReport> {
    super::quiet_logging();
    let records = opts.records;
    let mut ch = opts.clickhouse.clone();
    ch.database = format!("{}_benchw_{}", ch.database, std::process::id());
    tracefold_store::migrate::migrate(&ch, |_, _| {}).await?;
    let topics = tracefold_runtime::config::TopicsConfig::default();
    let broker = tracefold_runtime::devbroker::DevBroker::start(1, &topics, Some(6))?;
    let kafka =
        tracefold_runtime::config::KafkaConfig { bootstrap_servers: broker.bootstrap_servers(), ..Default::default() };
    let mut wcfg = tracefold_writer::Config { kafka: kafka.clone(), clickhouse: ch.clone(), ..Default::default() };
    wcfg.writer.listen = String::new();
    wcfg.writer.batch_max_rows = opts.batch_max_rows;
    wcfg.writer.batch_max_bytes = opts.batch_max_bytes;
    let shutdown = tracefold_runtime::Shutdown::new();
    let read = tracefold_runtime::telemetry::Health::named("writer");
    let (s, h) = (shutdown.clone(), read.clone());
    let writer = std::thread::spawn(move || tracefold_writer::service::run(&wcfg, &s, &h));
    let producer: FutureProducer = tracefold_runtime::kafka::producer_config(&kafka, 30_000).create()?;
    let client = tracefold_store::client::client(&ch);
    let now = gen::now_secs();
    // Realistic records: 2,000 issues, a few users each, one sample in twenty.
    let sample = gen::Generator::new(gen::GenOptions { now_secs: now, ..Default::default() }).next_event().json;
    // A warm-up before the clock starts: the writer joins its group (seconds on the embedded
    // broker) and reads the schema once. Its records come first in every partition, so that
    // the measured ones are never taken for replays of them.
    send_wave(&producer, &topics, 0, WARMUP_RECORDS, now, &sample).await?;
    let warm = wait_stored(&client, &ch.database, WARMUP_RECORDS, Duration::from_secs(120)).await?;
    anyhow::ensure!(warm >= WARMUP_RECORDS, "the warm-up stored {warm} of {WARMUP_RECORDS} records within 2 minutes");
    let t0 = Instant::now();
    let mut sent = 0u64;
    while sent < records {
        let wave = (records - sent).min(5_000);
        send_wave(&producer, &topics, WARMUP_RECORDS + sent, wave, now, &sample).await?;
        sent += wave;
        // The mock cluster keeps 5 MB per partition: stay within 30,000 records of what the
        // writer has read (not of what ClickHouse holds: that would wait on every insert and
        // keep the writer from batching ahead).
        while (WARMUP_RECORDS + sent).saturating_sub(read.consumed()) > 30_000 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let stored = wait_stored(&client, &ch.database, WARMUP_RECORDS + records, Duration::from_secs(600))
        .await?
        .saturating_sub(WARMUP_RECORDS);
    let seconds = t0.elapsed().as_secs_f64();
    shutdown.trigger();
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    tracefold_store::client::drop_database(&client, &ch.database).await?;
    Ok(WriterReport {
        records,
        stored,
        seconds,
        batch_max_rows: opts.batch_max_rows,
        batch_max_bytes: opts.batch_max_bytes,
    })
}

/// Records sent and stored before the clock starts.
const WARMUP_RECORDS: u64 = 600;

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
        let r = record(i, now, &topics.events, sample);
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

/// Record `i` of the benchmark: one of 2,000 issues over three projects, `i % 7` users, a
/// sample in one record of twenty.
fn record(i: u64, now: i64, events_topic: &str, sample: &str) -> tracefold_model::AggregateRecord {
    let mut users = UserSet::default();
    for u in 0..(i % 7) {
        users.insert(xxhash_rust::xxh3::xxh3_64(&(i * 31 + u).to_le_bytes()), DEFAULT_MAX_USERS);
    }
    tracefold_model::AggregateRecord {
        v: 1,
        batch: tracefold_model::BatchRef {
            epoch: "bench".into(),
            topic: events_topic.to_owned(),
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
        sample: if i.is_multiple_of(20) { sample.to_owned() } else { String::new() },
        breakdown: Default::default(),
        merged_from: Vec::new(),
    }
}
