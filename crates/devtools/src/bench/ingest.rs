//! `tracefold bench-ingest`: the HTTP ingest rate of the producer on the embedded Kafka.
//!
//! The request bodies are generated before the clock starts, and a client thread of its own
//! (`loadgen-http`, one async runtime on one thread) sends them: the measured time and the
//! CPU per event are the producer's (its HTTP server, parsing and validation, librdkafka) and
//! the embedded broker's, plus the HTTP client's, which is reported apart.

use super::cpu::CpuSnapshot;
use crate::{gen, loadgen};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracefold_runtime::devbroker::DevBroker;

/// What `bench-ingest` sends.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Events to send.
    pub events: u64,
    /// Events per request.
    pub batch: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Show a progress bar.
    pub progress: bool,
    /// librdkafka properties for the producer (`[kafka.librdkafka]`), e.g.
    /// `compression.type` to compare codecs.
    pub librdkafka: Vec<(String, String)>,
}

/// What `bench-ingest` measured.
#[derive(Debug, Clone)]
pub struct IngestReport {
    /// The options it ran with.
    pub opts: IngestOptions,
    /// The load's summary (the clock runs from the first request sent to the last answer).
    pub load: loadgen::LoadSummary,
    /// Seconds spent generating the request bodies, before the clock.
    pub generate_secs: f64,
    /// CPU seconds while the clock ran, per part of the process (see [`part_of`]).
    pub cpu: serde_json::Value,
    /// CPU seconds of the whole process while the clock ran.
    pub process_cpu_secs: f64,
    /// CPU seconds of the HTTP client (the `loadgen-http` thread) while the clock ran.
    pub client_cpu_secs: f64,
    /// Share of the whole machine (all cores, 0 to 1) busy while the clock ran: this process
    /// and everything else running.
    pub machine_busy_share: f64,
    /// Each request's time from sent to answered at the client, milliseconds, sorted.
    pub request_ms: Vec<f64>,
    /// The producer's own view (its `tracefold_producer_request_seconds` and
    /// `tracefold_producer_kafka_seconds` while the clock ran): mean request time and mean
    /// Kafka part, milliseconds.
    pub server_ms: ServerTimes,
    /// Bytes fetched from the events topic per event, after the clock, by a consumer reading
    /// what the embedded broker still holds (its log is bounded): the batches as stored,
    /// compressed with the producer's `compression.type`, protocol overhead included.
    pub fetched_bytes_per_event: f64,
}

/// Mean times of the producer's requests while the clock ran, from its metrics.
#[derive(Debug, Clone, Default)]
pub struct ServerTimes {
    /// Requests the producer timed.
    pub requests: f64,
    /// Mean request time (reading, parsing, checking, publishing, Kafka's acknowledgement), ms.
    pub request_mean: f64,
    /// Mean Kafka part: from the first event handed to librdkafka to the last delivery report, ms.
    pub kafka_mean: f64,
}

/// `(sum, count)` of the summary or histogram `name` in Prometheus text `text` (zeros when
/// it is not there).
fn sum_count(text: &str, name: &str) -> (f64, f64) {
    let value = |suffix: &str| {
        let key = format!("{name}_{suffix}");
        text.lines()
            .filter_map(|l| l.strip_prefix(key.as_str()))
            .filter(|rest| rest.starts_with([' ', '{']))
            .filter_map(|rest| rest.rsplit(' ').next()?.trim().parse::<f64>().ok())
            .sum::<f64>()
    };
    (value("sum"), value("count"))
}

/// The producer's request and Kafka times between two renderings of its metrics.
fn server_times(before: &str, after: &str) -> ServerTimes {
    use tracefold_producer::metrics::{KAFKA_SECONDS, REQUEST_SECONDS};
    let delta = |name: &str| {
        let ((s0, c0), (s1, c1)) = (sum_count(before, name), sum_count(after, name));
        (s1 - s0, c1 - c0)
    };
    let ((rs, rc), (ks, kc)) = (delta(REQUEST_SECONDS), delta(KAFKA_SECONDS));
    let mean = |s: f64, c: f64| if c > 0.0 { (s / c * 1e3 * 100.0).round() / 100.0 } else { 0.0 };
    ServerTimes { requests: rc, request_mean: mean(rs, rc), kafka_mean: mean(ks, kc) }
}

/// The `q` quantile (0 to 1) of sorted `v`, rounded to 0.01 (0 when empty).
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    (v[i.min(v.len() - 1)] * 100.0).round() / 100.0
}

impl IngestReport {
    /// HTTP requests sent.
    pub fn requests(&self) -> u64 {
        self.load.sent.div_ceil(self.opts.batch.max(1) as u64)
    }

    /// CPU microseconds per accepted event of `secs` CPU seconds.
    fn per_event(&self, secs: f64) -> f64 {
        let us = secs * 1e6 / self.load.accepted.max(1) as f64;
        (us * 100.0).round() / 100.0
    }

    /// CPU µs per event of the whole process (producer, embedded broker, HTTP client).
    pub fn cpu_us_per_event(&self) -> f64 {
        self.per_event(self.process_cpu_secs)
    }

    /// CPU µs per event of everything but the HTTP client: the producer and the embedded broker.
    pub fn server_cpu_us_per_event(&self) -> f64 {
        self.per_event((self.process_cpu_secs - self.client_cpu_secs).max(0.0))
    }

    /// The report as JSON.
    pub fn json(&self) -> serde_json::Value {
        let (s, batch, concurrency) = (&self.load, self.opts.batch, self.opts.concurrency);
        let librdkafka: serde_json::Map<String, serde_json::Value> =
            self.opts.librdkafka.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
        serde_json::json!({
            "events": s.sent, "accepted": s.accepted, "failed": s.failed, "batch": batch, "concurrency": concurrency,
            "load": "pre-generated", "generate_seconds": self.generate_secs,
            "seconds": s.elapsed_secs, "events_per_sec": s.events_per_sec, "requests_per_sec": self.requests() as f64 / s.elapsed_secs,
            "cpu_us_per_event": self.cpu_us_per_event(), "server_cpu_us_per_event": self.server_cpu_us_per_event(),
            "cpu_seconds": self.cpu, "fetched_bytes_per_event": self.fetched_bytes_per_event, "librdkafka": librdkafka,
            "process_cores": ((self.process_cpu_secs / s.elapsed_secs.max(1e-9)) * 100.0).round() / 100.0,
            "machine_busy_share": (self.machine_busy_share * 100.0).round() / 100.0,
            "request_ms": self.request_ms_json(),
            "server_ms": {"requests": self.server_ms.requests, "request_mean": self.server_ms.request_mean,
                "kafka_mean": self.server_ms.kafka_mean,
                "before_kafka_mean": ((self.server_ms.request_mean - self.server_ms.kafka_mean) * 100.0).round() / 100.0},
        })
    }

    /// The client's request times: mean and quantiles, ms.
    fn request_ms_json(&self) -> serde_json::Value {
        let v = &self.request_ms;
        let mean = if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
        serde_json::json!({
            "mean": (mean * 100.0).round() / 100.0, "p50": quantile(v, 0.5), "p90": quantile(v, 0.9),
            "p99": quantile(v, 0.99), "max": quantile(v, 1.0),
        })
    }

    /// The report as one line of text.
    pub fn table(&self) -> String {
        let (s, batch, concurrency) = (&self.load, self.opts.batch, self.opts.concurrency);
        let requests = self.requests();
        format!(
            "{} events in {} requests of {batch} ({concurrency} in flight, bodies made before the clock): {:.2}s, {:.0} events/s, {:.0} requests/s, {} failed; CPU {:.1} µs/event ({:.1} without the HTTP client); request {:.1} ms at the client, {:.1} ms in the producer of which {:.1} ms Kafka (means)\n",
            s.accepted,
            requests,
            s.elapsed_secs,
            s.events_per_sec,
            requests as f64 / s.elapsed_secs,
            s.failed,
            self.cpu_us_per_event(),
            self.server_cpu_us_per_event(),
            self.request_ms_json()["mean"].as_f64().unwrap_or(0.0),
            self.server_ms.request_mean,
            self.server_ms.kafka_mean,
        )
    }
}

/// The part of the bench process a thread works for, by its name.
pub fn part_of(thread: &str) -> &'static str {
    if thread.starts_with("loadgen") {
        "http client"
    } else if thread.starts_with("rdk:mock") {
        "embedded broker (mock cluster)"
    } else if thread.starts_with("rdk:") || thread.starts_with("producer pollin") {
        "producer: librdkafka"
    } else if thread.starts_with("tokio-r") || thread.starts_with("tracefold") {
        // tokio's workers ("tokio-rt-worker", "tokio-runtime-worker" before tokio 1.44) and
        // the command's own thread (named after the binary) run the producer's HTTP server.
        "producer: http and validation"
    } else {
        "other"
    }
}

/// The request bodies of the run, made before the clock: (project, NDJSON body, events).
/// Events are grouped per project as the load generator groups them.
fn bodies(opts: &IngestOptions) -> Vec<(&'static str, Bytes, u64)> {
    let mut g = gen::Generator::new(gen::GenOptions {
        issues: 200,
        now_secs: gen::now_secs(),
        spread_secs: 60,
        ..Default::default()
    });
    let batch = opts.batch.max(1);
    let mut open: HashMap<&'static str, (Vec<u8>, u64)> = HashMap::new();
    let mut out = Vec::with_capacity(usize::try_from(opts.events / batch as u64 + 8).unwrap_or(0));
    for _ in 0..opts.events {
        let e = g.next_event();
        let (body, n) = open.entry(e.project).or_default();
        if *n > 0 {
            body.push(b'\n');
        }
        body.extend_from_slice(e.json.as_bytes());
        *n += 1;
        if *n >= batch as u64 {
            out.push((e.project, Bytes::from(std::mem::take(body)), std::mem::take(n)));
        }
    }
    let mut rest: Vec<_> = open.into_iter().filter(|(_, (_, n))| *n > 0).collect();
    rest.sort_by_key(|(p, _)| *p);
    out.extend(rest.into_iter().map(|(p, (body, n))| (p, Bytes::from(body), n)));
    out
}

/// What the client thread measured.
struct Sent {
    load: loadgen::LoadSummary,
    start: CpuSnapshot,
    end: CpuSnapshot,
    client_ticks: u64,
    /// Each request's time, ms, sorted.
    request_ms: Vec<f64>,
}

/// This thread's CPU ticks (user + system).
fn thread_ticks() -> u64 {
    std::fs::read_to_string("/proc/thread-self/stat").ok().and_then(|s| super::cpu::stat_ticks(&s)).map_or(0, |x| x.1)
}

/// Sends `bodies` to `url` from a thread of its own, `concurrency` requests in flight.
fn send(url: String, bodies: Vec<(&'static str, Bytes, u64)>, opts: &IngestOptions) -> anyhow::Result<Sent> {
    let (concurrency, progress, events) = (opts.concurrency.max(1), opts.progress, opts.events);
    let client = std::thread::Builder::new().name("loadgen-http".into()).spawn(move || -> anyhow::Result<Sent> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
            let pb = if progress { indicatif::ProgressBar::new(events) } else { indicatif::ProgressBar::hidden() };
            let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
            let mut tasks = tokio::task::JoinSet::new();
            let mut load = loadgen::LoadSummary::default();
            let mut request_ms = Vec::new();
            let (start, ticks0) = (CpuSnapshot::now_by(part_of), thread_ticks());
            let t0 = Instant::now();
            for (project, body, n) in bodies {
                let permit = sem.clone().acquire_owned().await?;
                let (client, pb) = (client.clone(), pb.clone());
                let url = format!("{url}/api/v1/projects/{project}/events");
                tasks.spawn(async move {
                    let _permit = permit;
                    let t = Instant::now();
                    let out = loadgen::post_with_retries(&client, &url, body, n, loadgen::DEFAULT_MAX_RETRIES).await;
                    pb.inc(n);
                    (out, t.elapsed().as_secs_f64() * 1e3)
                });
                load.sent += n;
                while let Some(done) = tasks.try_join_next() {
                    let (out, ms) = done?;
                    loadgen::account(&mut load, out);
                    request_ms.push(ms);
                }
            }
            while let Some(done) = tasks.join_next().await {
                let (out, ms) = done?;
                loadgen::account(&mut load, out);
                request_ms.push(ms);
            }
            request_ms.sort_by(f64::total_cmp);
            loadgen::finish(&mut load, t0);
            let (end, ticks1) = (CpuSnapshot::now_by(part_of), thread_ticks());
            pb.finish_and_clear();
            Ok(Sent { load, start, end, client_ticks: ticks1.saturating_sub(ticks0), request_ms })
        })
    })?;
    client.join().map_err(|_| anyhow::anyhow!("the load's client thread panicked"))?
}

/// Starts a producer on a one-broker embedded Kafka and sends it generated events over HTTP.
///
/// # Errors
/// When the broker or the producer cannot start, or the load cannot reach it.
pub async fn ingest(opts: &IngestOptions) -> anyhow::Result<IngestReport> {
    super::quiet_logging();
    let broker = DevBroker::start(1, &Default::default(), Some(6))?;
    let cfg = tracefold_producer::Config {
        kafka: tracefold_runtime::config::KafkaConfig {
            bootstrap_servers: broker.bootstrap_servers(),
            librdkafka: opts.librdkafka.iter().cloned().collect(),
        },
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let shutdown = tracefold_runtime::Shutdown::new();
    let health = tracefold_runtime::telemetry::Health::default();
    let server = tokio::spawn(tracefold_producer::serve(cfg, listener, shutdown.clone(), health.clone(), Vec::new()));
    while !health.is_ready() {
        // A producer that could not start (a config librdkafka refuses) is never ready.
        if server.is_finished() {
            server.await??;
            anyhow::bail!("the producer stopped before it was ready");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The bodies before the clock, so that the figures are the producer's, not the generator's.
    let t = Instant::now();
    let bodies = bodies(opts);
    let generate_secs = t.elapsed().as_secs_f64();
    let o = opts.clone();
    // The producer's metrics (its router installed the recorder), before and after the load.
    let metrics = tracefold_runtime::telemetry::metrics_handle();
    let before = metrics.render();
    let sent = tokio::task::spawn_blocking(move || send(url, bodies, &o)).await??;
    let server_ms = server_times(&before, &metrics.render());
    let (bootstrap, topic) = (broker.bootstrap_servers(), tracefold_runtime::config::TopicsConfig::default().events);
    let fetched_bytes_per_event =
        tokio::task::spawn_blocking(move || fetched_bytes_per_event(&bootstrap, &topic)).await??;
    shutdown.trigger();
    server.await??;
    let cpu = sent.end.since(&sent.start);
    let process_cpu_secs = cpu["process_seconds"].as_f64().unwrap_or(0.0);
    Ok(IngestReport {
        opts: opts.clone(),
        load: sent.load,
        generate_secs,
        cpu: cpu["stages"].clone(),
        process_cpu_secs,
        client_cpu_secs: sent.client_ticks as f64 / 100.0,
        machine_busy_share: cpu["machine_busy_share"].as_f64().unwrap_or(0.0),
        request_ms: sent.request_ms,
        server_ms,
        fetched_bytes_per_event,
    })
}

/// Keeps the consumer's latest statistics.
#[derive(Default)]
struct KeepStats(std::sync::Mutex<Option<rdkafka::Statistics>>);

impl rdkafka::ClientContext for KeepStats {
    fn stats(&self, s: rdkafka::Statistics) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(s);
    }
}

impl rdkafka::consumer::ConsumerContext for KeepStats {}

/// Reads `topic` from its start (what the broker still holds) and gives the bytes received
/// from the brokers per message read.
fn fetched_bytes_per_event(bootstrap: &str, topic: &str) -> anyhow::Result<f64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let kafka =
        tracefold_runtime::config::KafkaConfig { bootstrap_servers: bootstrap.to_owned(), ..Default::default() };
    let c: BaseConsumer<KeepStats> = tracefold_runtime::kafka::consumer_config(&kafka, "bench-ingest-readback")
        .set("statistics.interval.ms", "100")
        .create_with_context(KeepStats::default())?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let (mut read, mut idle) = (0u64, 0);
    // Until the topic is drained: a few empty polls in a row.
    while idle < 5 {
        match c.poll(Duration::from_millis(200)) {
            Some(m) => {
                m?;
                read += 1;
                idle = 0;
            }
            None => idle += 1,
        }
    }
    let stats = c.context().0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let bytes: u64 = stats.as_ref().map_or(0, |s| s.brokers.values().map(|b| b.rxbytes).sum());
    Ok(if read == 0 { 0.0 } else { (bytes as f64 / read as f64 * 10.0).round() / 10.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer that cannot start (a codec librdkafka refuses) ends the bench with its error;
    /// it used to wait for readiness forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_producer_that_cannot_start_is_an_error_not_a_wait() {
        let librdkafka = vec![("compression.type".to_owned(), "brotli".to_owned())];
        let opts = IngestOptions { events: 10, batch: 5, concurrency: 1, progress: false, librdkafka };
        // A guard against the old hang only: the error comes as soon as the producer starts.
        let ended = tokio::time::timeout(Duration::from_secs(120), ingest(&opts)).await;
        let err = ended.expect("the bench ended").unwrap_err();
        assert!(format!("{err:#}").contains(r#"kafka.librdkafka."compression.type""#), "{err:#}");
    }

    #[test]
    fn bodies_hold_every_event_once_in_batches() {
        let opts = IngestOptions { events: 1_234, batch: 100, concurrency: 1, progress: false, librdkafka: Vec::new() };
        let b = bodies(&opts);
        assert_eq!(b.iter().map(|(_, _, n)| n).sum::<u64>(), 1_234);
        for (_, body, n) in &b {
            assert!(*n >= 1 && *n <= 100);
            assert_eq!(body.split(|c| *c == b'\n').count() as u64, *n);
        }
    }

    #[test]
    fn sums_and_counts_of_a_rendered_summary() {
        let text = "# TYPE a_seconds summary\na_seconds{quantile=\"0.5\"} 0.01\na_seconds_sum 1.5\na_seconds_count 30\na_seconds_total_sum 9\n";
        assert_eq!(sum_count(text, "a_seconds"), (1.5, 30.0));
        assert_eq!(sum_count(text, "b_seconds"), (0.0, 0.0));
        use tracefold_producer::metrics::{KAFKA_SECONDS as K, REQUEST_SECONDS as R};
        let before = format!("{R}_sum 1\n{R}_count 10\n{K}_sum 0.5\n{K}_count 10\n");
        let after = format!("{R}_sum 1.2\n{R}_count 30\n{K}_sum 0.6\n{K}_count 30\n");
        let t = server_times(&before, &after);
        assert_eq!((t.requests, t.request_mean, t.kafka_mean), (20.0, 10.0, 5.0), "the deltas' means, ms");
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5), 3.0);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 1.0), 5.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn parts_by_thread_name() {
        assert_eq!(part_of("loadgen-http"), "http client");
        assert_eq!(part_of("rdk:mock"), "embedded broker (mock cluster)");
        assert_eq!(part_of("rdk:broker1"), "producer: librdkafka");
        assert_eq!(part_of("tokio-runtime-w"), "producer: http and validation");
        assert_eq!(part_of("tokio-rt-worker"), "producer: http and validation");
    }
}
