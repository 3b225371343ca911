//! `tracefold bench-storage`: bytes on disk per event in tracefold's tables and in a raw-row
//! table shaped like Snuba's `errors` table, for the same generated events.
//!
//! For every case (issues per hour x arrival pattern) the benchmark makes a scratch database,
//! runs the generated events through the grouper's aggregation ([`BatchBuilder`], batches of
//! `batch_events` as one grouper partition closes them) and inserts the records as the writer
//! does ([`tracefold_store::aggregates::insert`]); the same events, parsed, go one row each
//! into `raw_errors`. Then every table is merged (`OPTIMIZE ... FINAL`) and measured from
//! `system.parts`, and the scratch database is dropped.

use crate::gen;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Instant;
use tracefold_grouper::batch::{BatchBuilder, BatchOptions};
use tracefold_runtime::config::ClickHouseConfig;
use tracefold_store::rows::AggregateRow;
use tracefold_store::storage::{self, RawErrorRow, TableSize};

/// What `bench-storage` loads.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// Events per case.
    pub events: u64,
    /// Issues per hour of the cases.
    pub issues: Vec<usize>,
    /// Zipf exponent of issue popularity (0: every issue equally likely).
    pub zipf_s: f64,
    /// Events per grouper batch.
    pub batch_events: u64,
    /// The ClickHouse server; scratch databases are named after `database` and the process id.
    pub clickhouse: ClickHouseConfig,
    /// Issues per hour of the memory cases ([`memory`]); empty for none.
    pub memory_issues: Vec<usize>,
    /// Events per issue in the memory cases.
    pub memory_events_per_issue: u64,
    /// Print progress to stderr.
    pub progress: bool,
}

/// How event times arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    /// Event times within the last minute.
    Live,
    /// Event times spread over the last hour.
    Backfill,
}

impl Arrival {
    fn spread_secs(self) -> i64 {
        match self {
            Arrival::Live => 60,
            Arrival::Backfill => 3600,
        }
    }
}

/// One measured case.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StorageCase {
    /// Issues the generator draws from.
    pub issues: usize,
    /// Distinct issues among the events.
    pub issues_seen: usize,
    /// Arrival pattern.
    pub arrival: Arrival,
    /// Events loaded.
    pub events: u64,
    /// Aggregate records the grouper made of them.
    pub aggregate_rows: u64,
    /// Bytes of all tracefold tables.
    pub tracefold_bytes: u64,
    /// Bytes of `raw_errors`.
    pub raw_bytes: u64,
    /// Every table with data.
    pub tables: Vec<TableSize>,
}

impl StorageCase {
    /// Events per aggregate row.
    pub fn events_per_row(&self) -> f64 {
        self.events as f64 / self.aggregate_rows.max(1) as f64
    }
    /// tracefold bytes per event.
    pub fn tracefold_per_event(&self) -> f64 {
        self.tracefold_bytes as f64 / self.events.max(1) as f64
    }
    /// raw-row bytes per event.
    pub fn raw_per_event(&self) -> f64 {
        self.raw_bytes as f64 / self.events.max(1) as f64
    }
    /// How many times less tracefold stores than raw rows.
    pub fn ratio(&self) -> f64 {
        self.raw_bytes as f64 / self.tracefold_bytes.max(1) as f64
    }
}

/// What `bench-storage` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StorageReport {
    /// ClickHouse version.
    pub server: String,
    /// Events per grouper batch.
    pub batch_events: u64,
    /// Zipf exponent.
    pub zipf_s: f64,
    /// The cases.
    pub cases: Vec<StorageCase>,
    /// The memory cases (grouper aggregation and writer rows), run first.
    pub memory: Vec<MemoryCase>,
}

impl StorageReport {
    /// The report as JSON.
    pub fn json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(cases) = v.get_mut("cases").and_then(Value::as_array_mut) {
            for (c, r) in cases.iter_mut().zip(&self.cases) {
                c["events_per_row"] = serde_json::json!(r.events_per_row());
                c["tracefold_bytes_per_event"] = serde_json::json!(r.tracefold_per_event());
                c["raw_bytes_per_event"] = serde_json::json!(r.raw_per_event());
                c["ratio"] = serde_json::json!(r.ratio());
            }
        }
        if let Some(cases) = v.get_mut("memory").and_then(Value::as_array_mut) {
            for (c, r) in cases.iter_mut().zip(&self.memory) {
                c["growth_bytes_per_issue"] = serde_json::json!(r.growth_per_issue());
            }
        }
        v
    }

    /// The report as a Markdown table, then the largest tracefold tables of every case.
    pub fn table(&self) -> String {
        let mut s = format!(
            "ClickHouse {}, grouper batches of {} events, Zipf {}\n\n\
             | issues/h (seen) | arrival | events | events/agg row | tracefold B/event | raw B/event | raw / tracefold |\n\
             |---|---|---|---|---|---|---|\n",
            self.server, self.batch_events, self.zipf_s
        );
        for c in &self.cases {
            s.push_str(&format!(
                "| {} ({}) | {:?} | {} | {:.1} | {:.1} | {:.1} | {:.1}x |\n",
                c.issues,
                c.issues_seen,
                c.arrival,
                c.events,
                c.events_per_row(),
                c.tracefold_per_event(),
                c.raw_per_event(),
                c.ratio()
            ));
        }
        s.push_str("\nBytes per event by table:\n\n");
        for c in &self.cases {
            let parts: Vec<String> = c
                .tables
                .iter()
                .map(|t| format!("{} {:.1}", t.table, t.bytes as f64 / c.events.max(1) as f64))
                .collect();
            s.push_str(&format!("- {} issues/h, {:?}: {}\n", c.issues, c.arrival, parts.join(", ")));
        }
        if !self.memory.is_empty() {
            s.push_str(
                "\nGrouper aggregation + writer rows over an hour (RSS, MB):\n\n\
                 | issues/h | events | batches | records | before | after batch 1 | peak | end | growth per issue (B) |\n\
                 |---|---|---|---|---|---|---|---|---|\n",
            );
            for m in &self.memory {
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                    m.issues,
                    m.events,
                    m.batches,
                    m.records,
                    m.rss_before as f64 / 1048576.0,
                    m.rss_first_batch as f64 / 1048576.0,
                    m.rss_peak as f64 / 1048576.0,
                    m.rss_end as f64 / 1048576.0,
                    m.growth_per_issue()
                ));
            }
        }
        s
    }
}

/// Runs every case (issues x live/backfill).
///
/// # Errors
/// When ClickHouse refuses or is unreachable.
pub async fn storage(opts: &StorageOptions) -> anyhow::Result<StorageReport> {
    super::quiet_logging();
    let client = tracefold_store::client::client(&opts.clickhouse);
    let server = tracefold_store::client::server_version(&client).await?;
    let mut memory_cases = Vec::new();
    for &issues in &opts.memory_issues {
        if opts.progress {
            eprintln!("bench-storage: memory, {issues} issues/h");
        }
        memory_cases.push(memory(issues, opts.memory_events_per_issue, opts.progress));
    }
    let mut cases = Vec::new();
    let n = opts.issues.len() * 2;
    for &issues in &opts.issues {
        for arrival in [Arrival::Live, Arrival::Backfill] {
            if opts.progress {
                eprintln!("bench-storage: case {} of {n}: {issues} issues/h, {arrival:?}", cases.len() + 1);
            }
            cases.push(case(opts, issues, arrival).await?);
        }
    }
    Ok(StorageReport { server, batch_events: opts.batch_events, zipf_s: opts.zipf_s, cases, memory: memory_cases })
}

async fn case(opts: &StorageOptions, issues: usize, arrival: Arrival) -> anyhow::Result<StorageCase> {
    let mut ch = opts.clickhouse.clone();
    ch.database = format!("{}_benchs_{}", ch.database, std::process::id());
    let client = tracefold_store::client::client(&ch);
    tracefold_store::client::drop_database(&client, &ch.database).await?;
    tracefold_store::migrate::migrate(&ch, |_, _| {}).await?;
    storage::create_raw_table(&client, &ch.database).await?;
    let dbc = tracefold_store::client::database_client(&ch)?;
    let now = gen::now_secs();
    let mut g = gen::Generator::new(gen::GenOptions {
        issues,
        zipf_s: opts.zipf_s,
        now_secs: now,
        spread_secs: arrival.spread_secs(),
        ..Default::default()
    });
    let mut builder = BatchBuilder::new(BatchOptions::default());
    let batch = opts.batch_events.max(1);
    let (mut offset, mut agg_offset, mut rows_total) = (0i64, 0i64, 0u64);
    let mut seen = HashSet::new();
    let mut raw = Vec::with_capacity(batch as usize);
    let started = Instant::now();
    while (offset as u64) < opts.events {
        let first = offset;
        let end = (offset as u64 + batch).min(opts.events) as i64;
        raw.clear();
        while offset < end {
            let e = g.next_event();
            seen.insert(e.issue);
            builder.add(e.json.as_bytes(), offset, now * 1000);
            raw.push(raw_row(&e, offset, now));
            offset += 1;
        }
        let out = builder.finish("bench", "tracefold.events", 0, first, end - 1);
        let rows: Vec<AggregateRow<'_>> = out
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| AggregateRow::new(r, "tracefold.aggregates", 0, agg_offset + i as i64))
            .collect();
        agg_offset += rows.len() as i64;
        rows_total += rows.len() as u64;
        let timeout = std::time::Duration::from_secs(120);
        tracefold_store::aggregates::insert(&dbc, "aggregates", &rows, timeout, None).await?;
        storage::insert_raw(&dbc, &raw).await?;
        if opts.progress {
            eprintln!(
                "  {offset} / {} events, {rows_total} aggregate rows, {:.0} s",
                opts.events,
                started.elapsed().as_secs_f64()
            );
        }
    }
    if opts.progress {
        eprintln!("  merging, {:.0} s", started.elapsed().as_secs_f64());
    }
    storage::optimize_all(&client, &ch.database).await?;
    let tables = storage::table_sizes(&client, &ch.database).await?;
    tracefold_store::client::drop_database(&client, &ch.database).await?;
    let raw_bytes = tables.iter().filter(|t| t.table == "raw_errors").map(|t| t.bytes).sum();
    let tables: Vec<TableSize> = tables.into_iter().filter(|t| t.table != "raw_errors").collect();
    let tracefold_bytes = tables.iter().map(|t| t.bytes).sum();
    Ok(StorageCase {
        issues,
        issues_seen: seen.len(),
        arrival,
        events: opts.events,
        aggregate_rows: rows_total,
        tracefold_bytes,
        raw_bytes,
        tables,
    })
}

fn s(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn hex16(h: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = h.get(2 * i..2 * i + 2).and_then(|x| u8::from_str_radix(x, 16).ok()).unwrap_or(0);
    }
    out
}

/// The raw row of a generated event, as a Snuba-like consumer would write it.
fn raw_row(e: &gen::Generated, offset: i64, now: i64) -> RawErrorRow {
    let v: Value = serde_json::from_str(&e.json).unwrap_or(Value::Null);
    let exc = &v["exception"][0];
    let frames = exc["stacktrace"]["frames"].as_array().cloned().unwrap_or_default();
    let fs = |k: &str| frames.iter().map(|f| s(f, k)).collect::<Vec<_>>();
    let fu = |k: &str| frames.iter().map(|f| f[k].as_u64().unwrap_or(0) as u32).collect::<Vec<_>>();
    let (ty, value) = (s(exc, "type"), s(exc, "value"));
    let culprit = frames
        .iter()
        .rev()
        .find(|f| f["in_app"].as_bool() == Some(true))
        .map(|f| format!("{} in {}", s(f, "function"), s(f, "filename")))
        .unwrap_or_default();
    let map = |o: &Value| -> (Vec<String>, Vec<String>) {
        o.as_object()
            .map(|m| {
                m.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned))).unzip()
            })
            .unwrap_or_default()
    };
    let (tags_key, tags_value) = map(&v["tags"]);
    // Contexts flattened as Snuba does: `browser.name`, `os.version`, ...
    let (mut contexts_key, mut contexts_value) = (Vec::new(), Vec::new());
    if let Some(m) = v["contexts"].as_object() {
        for (c, inner) in m {
            let (k, vals) = map(inner);
            contexts_key.extend(k.into_iter().map(|k| format!("{c}.{k}")));
            contexts_value.extend(vals);
        }
    }
    let ip = s(&v["user"], "ip_address").split('.').fold(0u32, |a, o| (a << 8) | o.parse::<u32>().unwrap_or(0));
    let key = format!("{}/{}", e.project, e.issue);
    RawErrorRow {
        project: e.project.to_owned(),
        timestamp: v["timestamp"].as_i64().unwrap_or(now) as u32,
        event_id: hex16(&e.event_id),
        primary_hash: xxhash_rust::xxh3::xxh3_128(key.as_bytes()).to_le_bytes(),
        platform: s(&v, "platform"),
        environment: s(&v, "environment"),
        release: s(&v, "release"),
        level: s(&v, "level"),
        server_name: s(&v, "server_name"),
        user_id: s(&v["user"], "id"),
        user_email: s(&v["user"], "email"),
        ip_address_v4: ip,
        sdk_name: s(&v["sdk"], "name"),
        sdk_version: s(&v["sdk"], "version"),
        http_method: s(&v["request"], "method"),
        http_url: s(&v["request"], "url"),
        tags_key,
        tags_value,
        contexts_key,
        contexts_value,
        title: format!("{ty}: {value}"),
        message: value.clone(),
        culprit,
        r#type: ty.clone(),
        exc_type: vec![ty],
        exc_value: vec![value],
        exc_mechanism_type: vec![s(&exc["mechanism"], "type")],
        exc_mechanism_handled: vec![u8::from(exc["mechanism"]["handled"].as_bool().unwrap_or(false))],
        frame_abs_path: fs("abs_path"),
        frame_filename: fs("filename"),
        frame_function: fs("function"),
        frame_module: fs("module"),
        frame_lineno: fu("lineno"),
        frame_colno: fu("colno"),
        frame_in_app: frames.iter().map(|f| u8::from(f["in_app"].as_bool().unwrap_or(false))).collect(),
        received: now as u32,
        partition: 0,
        offset: offset as u64,
        retention_days: 90,
        deleted: 0,
    }
}

/// Memory of the grouper's aggregation and the writer's row mapping over an hour of traffic
/// with many distinct issues (item 4 of issue 19).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemoryCase {
    /// Distinct issues in the hour (every one occurs: popularity is uniform).
    pub issues: usize,
    /// Events fed.
    pub events: u64,
    /// Grouper batches (of the grouper's default bound, 50,000 events).
    pub batches: u64,
    /// Aggregate records made (and mapped to writer rows).
    pub records: u64,
    /// Resident memory before the first event, bytes.
    pub rss_before: u64,
    /// Resident memory after the first batch.
    pub rss_first_batch: u64,
    /// Largest resident memory after any batch.
    pub rss_peak: u64,
    /// Resident memory after the last batch.
    pub rss_end: u64,
}

impl MemoryCase {
    /// Growth from the first batch to the end of the hour, bytes per distinct issue of the
    /// hour: what state kept across batches costs per tracked issue (0 when nothing is kept).
    pub fn growth_per_issue(&self) -> f64 {
        self.rss_end.saturating_sub(self.rss_first_batch) as f64 / self.issues.max(1) as f64
    }
}

/// Feeds `events_per_issue` events of each of `issues` issues (uniform popularity, times over
/// an hour) through a grouper [`BatchBuilder`] in batches of the grouper's default bound, and
/// maps every batch's records to the writer's rows ([`AggregateRow`] and its sample row), as
/// the two services do; measures the process's RSS after every batch.
pub fn memory(issues: usize, events_per_issue: u64, progress: bool) -> MemoryCase {
    let batch = tracefold_grouper::Config::default().grouper.batch_max_events.max(1);
    let events = issues as u64 * events_per_issue;
    let now = gen::now_secs();
    let mut g = gen::Generator::new(gen::GenOptions {
        issues,
        zipf_s: 0.0,
        now_secs: now,
        spread_secs: 3600,
        ..Default::default()
    });
    let mut builder = BatchBuilder::new(BatchOptions::default());
    let rss_before = super::cpu::rss().0;
    let (mut offset, mut batches, mut records) = (0i64, 0u64, 0u64);
    let (mut rss_first_batch, mut rss_peak) = (0, 0);
    while (offset as u64) < events {
        let first = offset;
        let end = (offset as u64 + batch).min(events) as i64;
        while offset < end {
            builder.add(g.next_event().json.as_bytes(), offset, now * 1000);
            offset += 1;
        }
        let out = builder.finish("bench", "tracefold.events", 0, first, end - 1);
        let rows: Vec<AggregateRow<'_>> = out
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| AggregateRow::new(r, "tracefold.aggregates", 0, i as i64))
            .collect();
        let samples = rows.iter().filter_map(AggregateRow::sample_row).count();
        std::hint::black_box((&rows, samples));
        records += rows.len() as u64;
        batches += 1;
        let now_rss = super::cpu::rss().0;
        if batches == 1 {
            rss_first_batch = now_rss;
        }
        rss_peak = rss_peak.max(now_rss);
        if progress && batches.is_multiple_of(4) {
            eprintln!("  {issues} issues: {offset} / {events} events, RSS {} MB", now_rss >> 20);
        }
    }
    MemoryCase { issues, events, batches, records, rss_before, rss_first_batch, rss_peak, rss_end: super::cpu::rss().0 }
}
