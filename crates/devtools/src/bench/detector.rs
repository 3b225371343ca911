//! `tracefold bench-detector`: the detector's memory with many distinct issues (a bad deploy,
//! a cardinality attack): an hour of aggregates in which every issue is new, fed through the
//! detector's engine as the service feeds it (records of issues it does not hold wait for a
//! lookup, answered "new, no history" at once, as ClickHouse would for new issues), the
//! signals kept in the service's bounded set of produced signals; then the minutes after the
//! hour, with a trickle of traffic, until the idle issues are evicted. Reports peak RSS, bytes
//! per tracked issue and records per second.

use std::time::Instant;
use tracefold_detector::engine::{Arrival, Engine, EngineConfig, Restored};
use tracefold_detector::sent::Sent;
use tracefold_model::aggregate::{BatchRef, UserSet, DEFAULT_MAX_USERS};
use tracefold_model::AggregateRecord;

/// What `bench-detector` feeds.
#[derive(Debug, Clone)]
pub struct DetectorOptions {
    /// Distinct issues, all new, spread evenly over the hour.
    pub issues: u64,
    /// Minutes the issues arrive over.
    pub minutes: u64,
    /// Projects they belong to.
    pub projects: u64,
    /// Aggregates partitions.
    pub partitions: i32,
    /// Engine settings.
    pub engine: EngineConfig,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        Self { issues: 1_000_000, minutes: 60, projects: 10, partitions: 8, engine: EngineConfig::default() }
    }
}

/// What `bench-detector` measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DetectorReport {
    /// Distinct issues fed.
    pub issues: u64,
    /// Aggregate records fed.
    pub records: u64,
    /// Issues held at the end of the hour.
    pub tracked_at_hour: u64,
    /// Signal ids held at the end of the hour.
    pub signal_ids_at_hour: u64,
    /// Resident memory before the engine existed, bytes.
    pub rss_start: u64,
    /// Resident memory at the end of the hour, bytes.
    pub rss_at_hour: u64,
    /// Peak resident memory of the process, bytes.
    pub rss_peak: u64,
    /// (RSS at the hour - RSS at start) / issues held then.
    pub bytes_per_issue: u64,
    /// Issues held after the idle ones were evicted.
    pub tracked_after: u64,
    /// Issues evicted.
    pub evicted: u64,
    /// Records per second through the engine (lookups and evaluations included).
    pub records_per_sec: f64,
    /// Seconds of the whole run.
    pub seconds: f64,
}

impl DetectorReport {
    /// The report as a table.
    pub fn table(&self) -> String {
        let mb = |b: u64| b as f64 / 1_048_576.0;
        let mut t = String::new();
        t.push_str(&format!(
            "{} distinct issues, {} aggregate records, in {:.1}s ({:.0} records/s through the engine)\n",
            self.issues, self.records, self.seconds, self.records_per_sec
        ));
        t.push_str("| when | issues held | RSS MB |\n|---|---:|---:|\n");
        t.push_str(&format!("| start | 0 | {:.0} |\n", mb(self.rss_start)));
        t.push_str(&format!("| end of the hour | {} | {:.0} |\n", self.tracked_at_hour, mb(self.rss_at_hour)));
        t.push_str(&format!("| after eviction | {} | - |\n", self.tracked_after));
        t.push_str(&format!(
            "peak RSS {:.0} MB; {} bytes per issue held (signal ids held: {}); {} evicted\n",
            mb(self.rss_peak),
            self.bytes_per_issue,
            self.signal_ids_at_hour,
            self.evicted
        ));
        t
    }
}

fn record(i: u64, opts: &DetectorOptions, minute: i64, sample: &str) -> AggregateRecord {
    let mut users = UserSet::default();
    for u in 0..=(i % 3) {
        users.insert(i.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(u), DEFAULT_MAX_USERS);
    }
    AggregateRecord {
        v: 1,
        batch: BatchRef { count: 1, ..BatchRef::default() },
        project: format!("project-{}", i % opts.projects),
        issue_id: format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes())),
        minute,
        release: "web@2.14.1".into(),
        environment: "production".into(),
        count: 1 + i % 4,
        users,
        first_seen_ms: minute * 1000 + 1_000,
        last_seen_ms: minute * 1000 + 58_000,
        title: format!("TypeError: Cannot read properties of undefined (reading 'field_{i}')"),
        culprit: format!("app/components/widget_{}.tsx in render", i % 5000),
        exc_type: "TypeError".into(),
        level: "error".into(),
        platform: "javascript".into(),
        grouping_version: "v1".into(),
        sample: sample.replace("FUNC", &format!("handler_{i}")),
        breakdown: Default::default(),
        merged_from: Vec::new(),
    }
}

/// Keeps the signals in the set of produced signals, as the service does.
fn keep(engine: &Engine, sent: &mut Sent, signals: Vec<tracefold_detector::signal::Signal>) {
    let w = engine.watermark();
    for s in &signals {
        sent.insert(s, w);
    }
}

/// Runs the benchmark (one thread, no Kafka or ClickHouse: the engine alone, as the detector
/// service drives it).
pub fn detector(opts: &DetectorOptions) -> DetectorReport {
    let (rss_start, _) = super::cpu::rss();
    let t0 = Instant::now();
    let sample = r#"{"event_id":"0af3c5e3d1b04c2f9a8e7d6c5b4a3f21","platform":"javascript","exception":[{"type":"TypeError","value":"Cannot read properties of undefined","stacktrace":{"frames":[{"function":"dispatch","filename":"node_modules/react-dom/cjs/react-dom.production.js","lineno":4110,"in_app":false},{"function":"FUNC","filename":"app/components/widget.tsx","lineno":88,"colno":17,"in_app":true},{"function":"render","filename":"app/components/widget.tsx","lineno":41,"colno":9,"in_app":true}]}}],"request":{"url":"https://shop.example.com/checkout/payment"},"contexts":{"browser":{"name":"Chrome","version":"131.0.6778"},"os":{"name":"Windows","version":"11"}},"tags":{"route":"/checkout"}}"#;
    let mut engine = Engine::new(opts.engine.clone()).with_lookups();
    let parts: Vec<i32> = (0..opts.partitions.max(1)).collect();
    engine.assign(&parts, 0);
    let mut sent = Sent::default();
    let t_start = tracefold_model::time::now_secs() / 60 * 60 - 3 * 3600;
    let per_minute = opts.issues.div_ceil(opts.minutes.max(1));
    let bar = indicatif::ProgressBar::new(opts.issues);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} issues {per_sec} ({eta} left)")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut records = 0u64;
    let mut clock_ms = 0i64;
    // Twice per minute (the service evaluates every 500 ms; the clock here is event time).
    let evaluate = |engine: &mut Engine, sent: &mut Sent, now_ms: i64| {
        for l in engine.lookups() {
            let s = engine.restore(&l.project, &l.issue_id, Restored::default());
            keep(engine, sent, s);
        }
        let s = engine.advance(now_ms);
        keep(engine, sent, s);
        if let Some(w) = engine.watermark() {
            sent.prune(w - 60 * (opts.engine.allowed_lateness_min + 10));
        }
    };
    let mut i = 0u64;
    for m in 0..opts.minutes as i64 {
        let minute = t_start + m * 60;
        let end = (i + per_minute).min(opts.issues);
        let half = i + (end - i) / 2;
        while i < end {
            let r = record(i, opts, minute, sample);
            let partition = (i % parts.len() as u64) as i32;
            clock_ms += 1;
            let s = engine.ingest(&r, Arrival { partition, received_ms: minute * 1000 + 59_000, now_ms: clock_ms });
            keep(&engine, &mut sent, s);
            records += 1;
            i += 1;
            if i == half || i == end {
                evaluate(&mut engine, &mut sent, clock_ms);
            }
            if i.is_multiple_of(4096) {
                bar.set_position(i);
            }
        }
    }
    bar.finish_and_clear();
    let feed_secs = t0.elapsed().as_secs_f64();
    let tracked_at_hour = engine.tracked() as u64;
    let signal_ids_at_hour = sent.len() as u64;
    let (rss_at_hour, _) = super::cpu::rss();
    // After the hour: one issue keeps the watermark moving until the others are idle long
    // enough to be evicted.
    let mut evicted = engine.take_evictions();
    for m in 0..opts.engine.evict_idle_min.max(opts.engine.allowed_lateness_min + 10) + 5 {
        let minute = t_start + (opts.minutes as i64 + m) * 60;
        for p in &parts {
            let r = record(u64::MAX - *p as u64, opts, minute, sample);
            clock_ms += 1;
            engine.ingest(&r, Arrival { partition: *p, received_ms: minute * 1000 + 59_000, now_ms: clock_ms });
        }
        evaluate(&mut engine, &mut sent, clock_ms);
        let e = engine.take_evictions();
        evicted = (evicted.0 + e.0, evicted.1 + e.1);
    }
    let (_, rss_peak) = super::cpu::rss();
    DetectorReport {
        issues: opts.issues,
        records,
        tracked_at_hour,
        signal_ids_at_hour,
        rss_start,
        rss_at_hour,
        rss_peak,
        bytes_per_issue: rss_at_hour.saturating_sub(rss_start) / tracked_at_hour.max(1),
        tracked_after: engine.tracked() as u64,
        evicted: evicted.0 + evicted.1,
        records_per_sec: records as f64 / feed_secs,
        seconds: t0.elapsed().as_secs_f64(),
    }
}
