//! The load generator of `tracefold loadgen` and the benchmarks: sends generated events to
//! the HTTP endpoint or straight to Kafka, with pacing, a progress bar and a summary.
//!
//! Over HTTP, a request answered 503 or 429 with `Retry-After` (the producer's backpressure,
//! its concurrency limit, a rate limit) is sent again, the same events with the same ids,
//! after the time it names, up to [`LoadOptions::max_retries`] times; the summary counts the
//! waits and the time waited. An event counts as accepted once, when a request carrying it
//! got 2xx.

use crate::gen::{GenOptions, Generator};
use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use serde::Serialize;
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The default of [`LoadOptions::max_retries`]: with the producer's default `Retry-After`
/// of 1 s, a request gives up after about five minutes of being told to wait.
pub const DEFAULT_MAX_RETRIES: u32 = 300;

/// Where events go.
#[derive(Debug, Clone)]
pub enum Target {
    /// Base URL of a producer, e.g. `http://127.0.0.1:8080`.
    Http(String),
    /// Kafka bootstrap servers and the events topic.
    Kafka {
        /// `host:port,...`
        bootstrap_servers: String,
        /// Events topic.
        topic: String,
    },
}

/// Load options.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Events to send.
    pub events: u64,
    /// How fast events are sent.
    pub rate: Rate,
    /// Events per HTTP request.
    pub batch: usize,
    /// HTTP requests in flight.
    pub concurrency: usize,
    /// Show a progress bar.
    pub progress: bool,
    /// Generator options.
    pub gen: GenOptions,
    /// Over HTTP: most times one request is sent again after a 503 or 429 with `Retry-After`
    /// (its events count as failed beyond that).
    pub max_retries: u32,
    /// With a Kafka target: keep the consumer group's lag on the events topic below this,
    /// pausing the load as needed (a sustained-rate measurement; also keeps a bounded log,
    /// such as librdkafka's mock cluster's, from dropping unread events).
    pub max_lag: Option<LagLimit>,
}

/// How fast a load run sends events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// As fast as the target takes them.
    Unpaced,
    /// At most this many events per second.
    PerSecond(NonZeroU64),
}

impl Rate {
    /// `events_per_sec` events per second, 0 meaning unpaced (the `--rate` flag's convention).
    pub fn per_second(events_per_sec: u64) -> Self {
        NonZeroU64::new(events_per_sec).map_or(Self::Unpaced, Self::PerSecond)
    }
}

/// A bound on how far a consumer group may fall behind the load.
#[derive(Debug, Clone)]
pub struct LagLimit {
    /// The consumer group (the grouper's).
    pub group: String,
    /// Most events produced but not yet committed (or read, see `by`) by the group, over all
    /// partitions.
    pub events: i64,
    /// How the lag is measured.
    pub by: LagBy,
}

/// What counts as done for a [`LagLimit`].
#[derive(Debug, Clone)]
pub enum LagBy {
    /// Committed by the group (asked of the broker: works for a group in any process).
    Committed,
    /// Read by a consumer loop of this process, from its read count ([`Health::consumed`]):
    /// a load beside an in-process pipeline (`bench-pipeline`) keeps the unread part of the
    /// topic bounded without waiting for the commits, which trail the reads by a batch.
    ///
    /// [`Health::consumed`]: tracefold_runtime::telemetry::Health::consumed
    Read(tracefold_runtime::telemetry::Health),
}

/// Measures a consumer group's lag on a thread of its own (a measurement is a few broker
/// round trips), so that the load never stops to ask: the sender compares the latest
/// measurement, plus what it had acknowledged since and what is in flight, with the bound.
struct LagWatch {
    max: i64,
    /// The latest lag, and the sender's acknowledged count when it was measured.
    latest: Arc<(AtomicI64, AtomicU64)>,
    /// The sender's acknowledged count, read by the watcher before each measurement.
    acked: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LagWatch {
    fn start(
        kafka: &tracefold_runtime::config::KafkaConfig,
        group: &str,
        topic: &str,
        max: i64,
    ) -> anyhow::Result<Self> {
        let c: rdkafka::consumer::BaseConsumer = tracefold_runtime::kafka::consumer_config(kafka, group).create()?;
        // The first measurement before any event: the load starts from a known lag.
        let first = group_lag(&c, topic)?;
        let latest = Arc::new((AtomicI64::new(first), AtomicU64::new(0)));
        let acked = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(std::sync::Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, a, f, s, topic) = (latest.clone(), acked.clone(), failed.clone(), stop.clone(), topic.to_owned());
        let thread = std::thread::Builder::new().name("loadgen-lag".into()).spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let before = a.load(Ordering::Acquire);
                match group_lag(&c, &topic) {
                    Ok(lag) => {
                        l.0.store(lag, Ordering::Release);
                        l.1.store(before, Ordering::Release);
                    }
                    Err(e) => {
                        *f.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(format!("{e:#}"));
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })?;
        Ok(Self { max, latest, acked, failed, stop, thread: Some(thread) })
    }

    /// Whether the group's lag, at most, is over the bound, `acked` events acknowledged and
    /// `in_flight` sent but not acknowledged by the sender so far.
    fn over(&self, acked: u64, in_flight: usize) -> anyhow::Result<bool> {
        self.acked.store(acked, Ordering::Release);
        if let Some(e) = self.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            anyhow::bail!("cannot measure the consumer group's lag: {e}");
        }
        let (lag, at) = (self.latest.0.load(Ordering::Acquire), self.latest.1.load(Ordering::Acquire));
        let since = i64::try_from(acked.saturating_sub(at)).unwrap_or(i64::MAX);
        let in_flight = i64::try_from(in_flight).unwrap_or(i64::MAX);
        Ok(lag.saturating_add(since).saturating_add(in_flight) > self.max)
    }
}

impl Drop for LagWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How the load keeps a consumer's lag bounded.
enum Pacer {
    Committed(LagWatch),
    /// `reader` had read `from` messages when the load began.
    Read {
        reader: tracefold_runtime::telemetry::Health,
        from: u64,
        max: i64,
    },
}

impl Pacer {
    /// Whether the lag is over the bound, with `sent` events sent so far, `ok` of them
    /// acknowledged and `failed` refused.
    fn over(&self, sent: u64, ok: u64, failed: u64) -> anyhow::Result<bool> {
        match self {
            // Events in flight are not in the broker's watermarks yet: counted as lag.
            Self::Committed(w) => w.over(ok + failed, usize::try_from(sent - ok - failed).unwrap_or(usize::MAX)),
            // Refused events never reach the topic; the rest (acknowledged or in flight) will.
            Self::Read { reader, from, max } => {
                let read = reader.consumed().saturating_sub(*from);
                let lag = sent.saturating_sub(failed).saturating_sub(read);
                Ok(i64::try_from(lag).unwrap_or(i64::MAX) > *max)
            }
        }
    }
}

/// Events on `topic` not yet committed by `group`, over all partitions.
fn group_lag(c: &rdkafka::consumer::BaseConsumer, topic: &str) -> anyhow::Result<i64> {
    use rdkafka::consumer::Consumer;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(5))?;
    let parts: Vec<i32> = md.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition(topic, *p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(5))?;
    let mut lag = 0;
    for e in committed.elements() {
        let (_, high) = c.fetch_watermarks(topic, e.partition(), Duration::from_secs(5))?;
        let done = match e.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => 0,
        };
        lag += (high - done).max(0);
    }
    Ok(lag)
}

/// What a load run did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LoadSummary {
    /// Events sent.
    pub sent: u64,
    /// Events acknowledged (HTTP 200 or Kafka ack).
    pub accepted: u64,
    /// Events refused or not acknowledged.
    pub failed: u64,
    /// Times a request was told to wait (503 or 429 with `Retry-After`) and sent again.
    pub waits: u64,
    /// Seconds waited for `Retry-After`, summed over requests (concurrent requests wait at
    /// the same time, so this can exceed the elapsed time).
    pub waited_secs: f64,
    /// Seconds the load waited because the consumer group was more than `--max-lag` events
    /// behind (straight to Kafka only): how much of the run the consumers paced.
    pub lag_waited_secs: f64,
    /// Seconds.
    pub elapsed_secs: f64,
    /// Accepted events per second.
    pub events_per_sec: f64,
    /// CPU seconds of the load's own Kafka producer (librdkafka's threads it started), straight
    /// to Kafka only: read before the producer is dropped, since its threads' counters go with
    /// them. A benchmark of the pipeline subtracts it: in a deployment this is the HTTP
    /// producer's work, in another process.
    pub producer_cpu_secs: f64,
}

/// The one-line summary: counts, rate, and how often the target said to wait.
pub fn describe(s: &LoadSummary) -> String {
    format!(
        "{} events sent, {} accepted, {} failed in {:.2}s: {:.0} events/s; told to wait {} times ({:.0}s waited over all requests)",
        s.sent, s.accepted, s.failed, s.elapsed_secs, s.events_per_sec, s.waits, s.waited_secs
    )
}

/// What one HTTP request (with its retries) came to.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) events: u64,
    pub(crate) ok: bool,
    waits: u64,
    waited: Duration,
}

/// `Retry-After` of a 503 or 429, as a duration (seconds; an HTTP date is not sent by
/// tracefold and counts as absent).
fn retry_after(r: &reqwest::Response) -> Option<Duration> {
    let s = r.status().as_u16();
    if s != 503 && s != 429 {
        return None;
    }
    let v = r.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Posts `body` until it gets 2xx, is refused for good, or was told to wait `max_retries`
/// times. A retry sends the same buffer again (`Bytes`: no copy).
pub(crate) async fn post_with_retries(
    client: &reqwest::Client,
    url: &str,
    body: bytes::Bytes,
    events: u64,
    max_retries: u32,
) -> Outcome {
    let mut out = Outcome { events, ok: false, waits: 0, waited: Duration::ZERO };
    loop {
        match client.post(url).header("content-type", "application/x-ndjson").body(body.clone()).send().await {
            Ok(r) if r.status().is_success() => {
                out.ok = true;
                return out;
            }
            Ok(r) => {
                let status = r.status();
                if let Some(wait) = retry_after(&r).filter(|_| out.waits < u64::from(max_retries)) {
                    out.waits += 1;
                    out.waited += wait;
                    tokio::time::sleep(wait).await;
                    continue;
                }
                let text = r.text().await.unwrap_or_default();
                tracing::warn!(%status, waits = out.waits, body = %text.chars().take(300).collect::<String>(), "request refused");
                return out;
            }
            Err(e) => {
                tracing::warn!(error = %e, "request failed");
                return out;
            }
        }
    }
}

fn bar(total: u64, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

async fn pace(start: Instant, sent: u64, rate: Rate) {
    if let Rate::PerSecond(rate) = rate {
        let due = start + Duration::from_secs_f64(sent as f64 / rate.get() as f64);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
    }
}

/// Runs the load.
///
/// # Errors
/// When the target cannot be reached at all.
pub async fn run(target: &Target, opts: &LoadOptions) -> anyhow::Result<LoadSummary> {
    match target {
        Target::Http(url) => run_http(url, opts).await,
        Target::Kafka { bootstrap_servers, topic } => run_kafka(bootstrap_servers, topic, opts).await,
    }
}

type Batch = Vec<String>;

async fn run_http(url: &str, opts: &LoadOptions) -> anyhow::Result<LoadSummary> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let mut g = Generator::new(opts.gen.clone());
    let pb = bar(opts.events, opts.progress);
    let sem = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut buckets: HashMap<&'static str, Batch> = HashMap::new();
    let start = Instant::now();
    let mut summary = LoadSummary::default();
    let base = url.trim_end_matches('/').to_owned();
    let max_retries = opts.max_retries;
    let send = |project: &'static str, batch: Batch, tasks: &mut tokio::task::JoinSet<Outcome>, permit| {
        let client = client.clone();
        let url = format!("{base}/api/v1/projects/{project}/events");
        let pb = pb.clone();
        tasks.spawn(async move {
            // The permit is held while waiting: a target that says "wait" slows the load.
            let _permit: tokio::sync::OwnedSemaphorePermit = permit;
            let events = batch.len() as u64;
            let out = post_with_retries(&client, &url, batch.join("\n").into(), events, max_retries).await;
            pb.inc(events);
            out
        });
    };
    for i in 0..opts.events {
        let e = g.next_event();
        let b = buckets.entry(e.project).or_default();
        b.push(e.json);
        if b.len() >= opts.batch || i + 1 == opts.events {
            let batch = std::mem::take(b);
            pace(start, i + 1, opts.rate).await;
            let permit = sem.clone().acquire_owned().await?;
            send(e.project, batch, &mut tasks, permit);
        }
        summary.sent += 1;
        while let Some(done) = tasks.try_join_next() {
            account(&mut summary, done?);
        }
    }
    for (project, batch) in buckets.drain() {
        if !batch.is_empty() {
            let permit = sem.clone().acquire_owned().await?;
            send(project, batch, &mut tasks, permit);
        }
    }
    while let Some(done) = tasks.join_next().await {
        account(&mut summary, done?);
    }
    pb.finish_and_clear();
    finish(&mut summary, start);
    Ok(summary)
}

pub(crate) fn account(s: &mut LoadSummary, o: Outcome) {
    if o.ok {
        s.accepted += o.events;
    } else {
        s.failed += o.events;
    }
    s.waits += o.waits;
    s.waited_secs += o.waited.as_secs_f64();
}

pub(crate) fn finish(s: &mut LoadSummary, start: Instant) {
    s.elapsed_secs = start.elapsed().as_secs_f64();
    s.events_per_sec = if s.elapsed_secs > 0.0 { s.accepted as f64 / s.elapsed_secs } else { 0.0 };
}

/// Sends `opts.events` events straight to Kafka, taken in turn from `pool` (events made
/// beforehand, e.g. by [`Generator`]), each with a fresh event id in place of its own: the
/// load then costs a copy per event instead of generating one, for benchmarks whose subject
/// is the pipeline, not the generator. `opts.gen` is not used.
///
/// # Errors
/// When Kafka cannot be reached, or an event of `pool` does not start with its event id.
pub async fn run_kafka_pool(
    bootstrap: &str,
    topic: &str,
    opts: &LoadOptions,
    pool: &[crate::gen::Generated],
) -> anyhow::Result<LoadSummary> {
    const PREFIX: &str = r#"{"event_id":""#;
    for e in pool {
        if !e.json.starts_with(PREFIX)
            || e.event_id.len() != 32
            || !e.event_id.bytes().all(|b| b.is_ascii_hexdigit())
            || !e.json[PREFIX.len()..].starts_with(&e.event_id)
        {
            anyhow::bail!("a pooled event does not start with its 32-hex-digit event id");
        }
    }
    if pool.is_empty() {
        anyhow::bail!("an empty pool of events");
    }
    run_kafka_with(bootstrap, topic, opts, |n, key, payload| {
        let e = &pool[(n % pool.len() as u64) as usize];
        // The first 16 digits become the sending order scrambled (a bijection, so every id
        // of the run is distinct); the rest stays the pooled event's.
        key.clear();
        key.extend_from_slice(e.event_id.as_bytes());
        let fresh = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for (i, d) in key.iter_mut().take(16).enumerate() {
            *d = b"0123456789abcdef"[((fresh >> (60 - 4 * i)) & 0xf) as usize];
        }
        payload.clear();
        payload.extend_from_slice(e.json.as_bytes());
        payload[PREFIX.len()..PREFIX.len() + 32].copy_from_slice(key);
    })
    .await
}

async fn run_kafka(bootstrap: &str, topic: &str, opts: &LoadOptions) -> anyhow::Result<LoadSummary> {
    let mut g = Generator::new(opts.gen.clone());
    run_kafka_with(bootstrap, topic, opts, |_, key, payload| {
        let e = g.next_event();
        (*key, *payload) = (e.event_id.into_bytes(), e.json.into_bytes());
    })
    .await
}

/// Delivery reports of the load's producer, counted (no future and no wake-up per event).
#[derive(Debug, Default)]
struct LoadAcks {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl rdkafka::ClientContext for LoadAcks {}

impl rdkafka::producer::ProducerContext for LoadAcks {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        let n = if r.is_ok() { &self.ok } else { &self.failed };
        n.fetch_add(1, Ordering::Release);
    }
}

impl LoadAcks {
    /// (acknowledged, failed) so far.
    fn counts(&self) -> (u64, u64) {
        (self.ok.load(Ordering::Acquire), self.failed.load(Ordering::Acquire))
    }
}

/// Most events sent and not yet acknowledged: the load waits above it.
const MAX_IN_FLIGHT: u64 = 100_000;

/// Sends `opts.events` events to Kafka, `next` writing the n-th event's key and payload into
/// the buffers it is given (kept from one event to the next; librdkafka copies what it sends).
async fn run_kafka_with(
    bootstrap: &str,
    topic: &str,
    opts: &LoadOptions,
    mut next: impl FnMut(u64, &mut Vec<u8>, &mut Vec<u8>),
) -> anyhow::Result<LoadSummary> {
    let (mut key, mut payload) = (Vec::with_capacity(64), Vec::with_capacity(4096));
    let threads_before = crate::bench::cpu::threads();
    let kafka =
        tracefold_runtime::config::KafkaConfig { bootstrap_servers: bootstrap.to_owned(), ..Default::default() };
    let producer: ThreadedProducer<LoadAcks> = tracefold_runtime::kafka::producer_config(&kafka, 30_000)
        .create_with_context(LoadAcks::default())
        .context("cannot create the Kafka producer")?;
    let pb = bar(opts.events, opts.progress);
    let start = Instant::now();
    let mut summary = LoadSummary::default();
    let watch = match &opts.max_lag {
        Some(LagLimit { group, events, by: LagBy::Committed }) => {
            Some(Pacer::Committed(LagWatch::start(&kafka, group, topic, *events)?))
        }
        Some(LagLimit { events, by: LagBy::Read(h), .. }) => {
            Some(Pacer::Read { reader: h.clone(), from: h.consumed(), max: *events })
        }
        None => None,
    };
    let answered = |p: &ThreadedProducer<LoadAcks>| {
        let (ok, failed) = p.context().counts();
        ok + failed
    };
    for i in 0..opts.events {
        next(i, &mut key, &mut payload);
        if i % 1000 == 0 {
            pace(start, i, opts.rate).await;
            pb.set_position(answered(&producer));
        }
        if let Some(w) = &watch {
            if i % 250 == 0 {
                let mut waiting: Option<Instant> = None;
                loop {
                    let (ok, failed) = producer.context().counts();
                    if !w.over(summary.sent, ok, failed)? {
                        break;
                    }
                    waiting.get_or_insert_with(Instant::now);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                summary.lag_waited_secs += waiting.map_or(0.0, |t| t.elapsed().as_secs_f64());
            }
        }
        let mut rec = BaseRecord::to(topic).key(key.as_slice()).payload(payload.as_slice());
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    rec = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((err, _)) => return Err(err).context("cannot enqueue an event"),
            }
        }
        summary.sent += 1;
        while summary.sent - answered(&producer) > MAX_IN_FLIGHT {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Every event is answered by an acknowledgement, a failure, or (after the flush's
    // deadline, past the 30 s message timeout) counted as failed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered(&producer) < summary.sent && Instant::now() < deadline {
        pb.set_position(answered(&producer));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = producer.flush(Duration::from_secs(1));
    summary.producer_cpu_secs =
        crate::bench::cpu::new_threads_secs(&threads_before, &crate::bench::cpu::threads(), "rdk:");
    let (ok, _) = producer.context().counts();
    summary.accepted = ok;
    summary.failed = summary.sent - ok;
    pb.set_position(summary.sent);
    pb.finish_and_clear();
    finish(&mut summary, start);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracefold_runtime::telemetry::Health;

    /// Paced by reads, the lag is what was sent and not refused minus what the reader took
    /// since the load began (reads before it do not count).
    #[test]
    fn a_read_paced_load_waits_while_sent_minus_refused_minus_read_is_over_the_bound() {
        let reader = Health::named("grouper");
        for _ in 0..7 {
            reader.consumed_one();
        }
        let pacer = Pacer::Read { reader: reader.clone(), from: reader.consumed(), max: 10 };
        assert!(!pacer.over(10, 0, 0).unwrap(), "10 unread: at the bound");
        assert!(pacer.over(11, 11, 0).unwrap(), "11 unread, acknowledged or not");
        assert!(!pacer.over(11, 5, 1).unwrap(), "a refused event never reaches the topic");
        for _ in 0..5 {
            reader.consumed_one();
        }
        assert!(!pacer.over(15, 15, 0).unwrap(), "5 read since the start: 10 unread");
        assert!(pacer.over(16, 15, 0).unwrap());
    }
}
