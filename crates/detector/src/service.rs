//! The detector service: its own consumer group on the aggregates topic; signals to the
//! signals topic (keyed by issue) and to the notification channels.
//!
//! It runs on the consumer runtime ([`tracefold_runtime::consumer`]) and commits its offsets:
//! every 500 ms it closes the minutes that are due, waits for the signals topic to acknowledge
//! every signal produced, then commits past the records that nothing to come needs (their
//! minute was evaluated and no threshold window reaches back to it, [`Engine::needed_from`]).
//! A restart continues from that commit: it reads again only the records of minutes still
//! open or inside a window; spike baselines come back from ClickHouse.
//!
//! Restarts do not re-alert: known issues, resolutions and recent per-minute counts come from
//! ClickHouse at start-up, and the ids of the signals already on the signals topic (the last
//! 10,000 per partition) are skipped; signal ids are deterministic. Issue statuses are read
//! again every `status_refresh_ms` while running, so that an issue resolved after start-up
//! regresses too.
//!
//! New-issue storms ([`crate::storm`]): every `new_issue` signal goes to the signals topic;
//! beyond `storm.max_new_issues` per project and window they are not notified one by one but
//! counted in one `new_issue_digest`, produced and notified when the window closes.

use crate::config::Config;
use crate::deliveries::{self, OnTopic};
use crate::engine::{effective_minute, Arrival, Engine};
use crate::metrics::{
    FUTURE_RECORDS_TOTAL, LATE_RECORDS_TOTAL, RECORDS_TOTAL, RESOLVED_ISSUES, SIGNALS_DEDUPLICATED_TOTAL,
    STORM_FOLDED_TOTAL, WATERMARK_SECONDS,
};
use crate::notify::Notifier;
use crate::signal::{Kind, Signal};
use crate::storm::{Admit, Storm};
use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};
use tracefold_model::AggregateRecord;
use tracefold_runtime::consumer::{ConsumerRuntime, Ctx, Step, Strategy};
use tracefold_runtime::telemetry::Health;
use tracefold_runtime::Shutdown;
use tracefold_store::detector::StatusRow as Status;
use tracefold_store::IssueStatus;

/// Signals produced, by `type`.
pub use crate::metrics::SIGNALS_TOTAL;

/// The resolutions handed to the engine: (project, issue) -> (resolved at, in release).
type Applied = HashMap<(String, String), (u32, String)>;

async fn read_statuses(cfg: &Config) -> anyhow::Result<Vec<Status>> {
    let client = tracefold_store::client::client(&cfg.clickhouse);
    Ok(tracefold_store::detector::statuses(&client, &cfg.clickhouse.database).await?)
}

/// Hands new resolutions and reopenings to the engine. A resolution already handed over is not
/// handed over again (its regression may have fired since); a new `resolve` (a later time or
/// another release) is.
fn apply_statuses(engine: &mut Engine, applied: &mut Applied, statuses: Vec<Status>) -> bool {
    let mut changed = false;
    for s in statuses {
        let key = (s.project, s.issue_id);
        if s.current_status == IssueStatus::Resolved {
            let v = (s.at, s.release);
            if applied.get(&key) != Some(&v) {
                engine.resolved(&key.0, &key.1, i64::from(v.0) * 1000, &v.1);
                applied.insert(key, v);
                changed = true;
            }
        } else if applied.remove(&key).is_some() {
            engine.reopened(&key.0, &key.1);
            changed = true;
        }
    }
    changed
}

async fn load_state(cfg: &Config, engine: &mut Engine, applied: &mut Applied) -> anyhow::Result<()> {
    let client = tracefold_store::client::client(&cfg.clickhouse);
    let db = &cfg.clickhouse.database;
    for k in tracefold_store::detector::known_issues(&client, db).await? {
        engine.known(&k.project, &k.issue_id);
    }
    let _ = apply_statuses(engine, applied, read_statuses(cfg).await?);
    let history = tracefold_store::detector::minute_history(&client, db, cfg.detector.history_minutes).await?;
    for h in history {
        engine.history(&h.project, &h.issue_id, i64::from(h.minute), h.count);
    }
    Ok(())
}

/// The signals already on the signals topic (the last 10,000 per partition): every id with
/// when it was produced, and whole the signals produced within `recent` (for redelivery).
fn sent_signals(cfg: &Config, recent: Duration) -> anyhow::Result<OnTopic> {
    let c: BaseConsumer =
        tracefold_runtime::kafka::consumer_config(&cfg.kafka, &format!("{}-replay", cfg.detector.group_id)).create()?;
    let md = c.fetch_metadata(Some(&cfg.topics.signals), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = c.fetch_watermarks(&cfg.topics.signals, p.id(), Duration::from_secs(10))?;
        if high > low {
            tpl.add_partition_offset(&cfg.topics.signals, p.id(), Offset::Offset((high - 10_000).max(low)))?;
            ends.insert(p.id(), high);
        }
    }
    let mut found = OnTopic::default();
    if ends.is_empty() {
        return Ok(found);
    }
    c.assign(&tpl)?;
    let now_ms = tracefold_model::time::now_ms();
    let since_ms = now_ms.saturating_sub(i64::try_from(recent.as_millis()).unwrap_or(i64::MAX));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut done: HashSet<i32> = HashSet::new();
    while done.len() < ends.len() && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            if let Some(s) = m.payload().and_then(|p| serde_json::from_slice::<Signal>(p).ok()) {
                // Without a timestamp: as if produced now (young enough to be handed again).
                let produced = m.timestamp().to_millis().unwrap_or(now_ms);
                found.produced.insert(s.signal_id.clone(), produced);
                if produced >= since_ms {
                    found.recent.push(s);
                }
            }
            if m.offset() + 1 >= ends[&m.partition()] {
                done.insert(m.partition());
            }
        }
    }
    Ok(found)
}

/// Runs the detector until `shutdown` fires. Blocking: call it from a dedicated thread.
///
/// # Errors
/// Kafka or ClickHouse unusable at start-up; a fatal consumer error.
pub fn run(cfg: &Config, shutdown: &Shutdown, health: &Health) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let mut engine = Engine::new(cfg.detector.engine.clone());
    let mut applied = Applied::new();
    rt.block_on(load_state(cfg, &mut engine, &mut applied))
        .context("cannot load the detector's state from ClickHouse")?;
    metrics::gauge!(RESOLVED_ISSUES).set(engine.resolved_count() as f64);
    // No watermark until records arrive.
    metrics::gauge!(WATERMARK_SECONDS).set(0.0);
    let max_age = Duration::from_secs(60 * cfg.detector.retry.redeliver_max_age_min);
    let on_topic = sent_signals(cfg, max_age).context("cannot read the signals topic")?;
    let sent: HashSet<String> = on_topic.produced.keys().cloned().collect();
    let runtime = ConsumerRuntime::new(&cfg.kafka, &cfg.detector.group_id, &cfg.topics.aggregates)?
        .with_lost_metric(crate::metrics::EVENTS_LOST_TOTAL);
    let producer: ThreadedProducer<DefaultProducerContext> = tracefold_runtime::kafka::producer_config(&cfg.kafka, 0)
        .create()
        .context("cannot create the signals producer")?;
    tracefold_runtime::kafka::check_topics(
        runtime.consumer().client(),
        &[&cfg.topics.aggregates, &cfg.topics.signals],
        Duration::from_secs(10),
    )?;
    // Delivery rows go to ClickHouse; the signals a channel never took go to it again.
    let (recorder, record_writer) = {
        let _guard = rt.enter();
        deliveries::start_writer(&cfg.clickhouse)
    };
    let mut notifier = {
        let _guard = rt.enter();
        Notifier::start_recorded(cfg.detector.channels.clone(), cfg.detector.retry, Some(recorder.clone()))
            .with_rate_limit(&cfg.detector.rate_limit)
    };
    rt.block_on(deliveries::redeliver(&cfg.clickhouse, &mut notifier, &recorder, &on_topic, max_age))
        .context("cannot read the signal deliveries from ClickHouse (is the schema migrated?)")?;
    drop((recorder, on_topic));
    // Statuses are read on the runtime, off the consumer loop, which takes what was read.
    let (status_tx, status_rx) = std::sync::mpsc::channel::<Vec<Status>>();
    let refresh = Duration::from_millis(cfg.detector.status_refresh_ms.max(1));
    let status_cfg = cfg.clone();
    let status_task = rt.spawn(async move {
        loop {
            tokio::time::sleep(refresh).await;
            match read_statuses(&status_cfg).await {
                Ok(statuses) => {
                    if status_tx.send(statuses).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot read issue statuses; retrying"),
            }
        }
    });
    tracing::info!(group = %cfg.detector.group_id, channels = cfg.detector.channels.len(), "detector started");
    let mut d = Detector {
        cfg,
        engine,
        applied,
        sent,
        producer: &producer,
        notifier,
        storm: Storm::new(cfg.detector.storm, cfg.detector.engine.lateness_min),
        status_rx,
        last_advance: Instant::now(),
        consumed: 0,
        resolutions_changed: false,
        read: HashMap::new(),
    };
    let result = runtime.run(&mut d, shutdown, health);
    status_task.abort();
    let _ = producer.flush(Duration::from_secs(10));
    // Give the channels a moment to deliver what is queued (what is not has its `queued`
    // row: the next start hands it again), then write the last delivery rows.
    rt.block_on(async {
        d.notifier.close(Duration::from_millis(500)).await;
        if tokio::time::timeout(Duration::from_secs(15), record_writer).await.is_err() {
            tracing::warn!("delivery rows still unwritten at shutdown");
        }
    });
    result
}

/// What was read from one aggregates partition and not committed yet.
#[derive(Debug, Default)]
struct Read {
    /// (offset, minute) of the records read since the commit, oldest first; no minute for an
    /// unreadable record (it causes nothing).
    held: VecDeque<(i64, Option<i64>)>,
    /// The offset after the last record read.
    next: i64,
    /// The last offset this process committed.
    committed: Option<i64>,
}

struct Detector<'a> {
    cfg: &'a Config,
    engine: Engine,
    applied: Applied,
    /// Ids of the signals produced (by this process or found on the signals topic).
    sent: HashSet<String>,
    producer: &'a ThreadedProducer<DefaultProducerContext>,
    notifier: Notifier,
    /// Which new issues are notified one by one, and the digests of the others.
    storm: Storm,
    status_rx: std::sync::mpsc::Receiver<Vec<Status>>,
    last_advance: Instant,
    /// Records consumed and not counted yet: counted once their minutes were evaluated and
    /// nothing waits for the next evaluation.
    consumed: u64,
    resolutions_changed: bool,
    /// Per assigned partition: what a commit may move past.
    read: HashMap<i32, Read>,
}

impl Strategy for Detector<'_> {
    fn on_assign(&mut self, _: &mut Ctx<'_>, partitions: &[i32]) -> anyhow::Result<()> {
        // Each holds the watermark back until it has records or is idle.
        self.engine.assign(partitions, tracefold_model::time::now_ms());
        Ok(())
    }

    fn on_revoke(&mut self, _: &mut Ctx<'_>, partitions: &[i32]) {
        // What was read past the commit is read again by the next owner. The engine keeps
        // the counts it took from them (it is per process, not per partition); their
        // watermarks no longer hold it back.
        self.engine.revoke(partitions);
        for p in partitions {
            self.read.remove(p);
        }
    }

    fn on_message(&mut self, _: &mut Ctx<'_>, m: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        self.consumed += 1;
        let now_ms = tracefold_model::time::now_ms();
        // When the grouper produced it: about when its events were received.
        let received_ms = m.timestamp().to_millis().unwrap_or(now_ms);
        let minute = match m.payload().map(serde_json::from_slice::<AggregateRecord>) {
            Some(Ok(r)) => {
                let at = Arrival { partition: m.partition(), received_ms, now_ms };
                let signals = self.engine.ingest(&r, at);
                self.resolutions_changed |= signals.iter().any(|s| s.kind == Kind::Regression);
                self.emit(signals);
                // The minute it counts in: a future-dated record does not hold commits back.
                Some(effective_minute(r.minute, received_ms))
            }
            _ => {
                metrics::counter!(crate::metrics::UNREADABLE_RECORDS_TOTAL).increment(1);
                tracing::warn!(partition = m.partition(), offset = m.offset(), "unreadable aggregate skipped");
                None
            }
        };
        let read = self.read.entry(m.partition()).or_default();
        read.held.push_back((m.offset(), minute));
        read.next = m.offset() + 1;
        Ok(())
    }

    fn on_tick(&mut self, cx: &mut Ctx<'_>) -> anyhow::Result<Step> {
        while let Ok(statuses) = self.status_rx.try_recv() {
            self.resolutions_changed |= apply_statuses(&mut self.engine, &mut self.applied, statuses);
        }
        if self.last_advance.elapsed() >= Duration::from_millis(500) {
            self.last_advance = Instant::now();
            self.evaluate(cx, Duration::from_secs(5))?;
        }
        Ok(Step::Continue)
    }

    fn on_shutdown(&mut self, cx: &mut Ctx<'_>) -> anyhow::Result<()> {
        self.evaluate(cx, Duration::from_secs(10))
    }
}

impl Detector<'_> {
    /// Closes the minutes that are due, produces their signals, waits (up to `ack`) for the
    /// signals topic to acknowledge every signal, then commits past the records that nothing
    /// to come needs.
    fn evaluate(&mut self, cx: &mut Ctx<'_>, ack: Duration) -> anyhow::Result<()> {
        let now_ms = tracefold_model::time::now_ms();
        let signals = self.engine.advance(now_ms);
        self.emit(signals);
        let digests = self.storm.close(now_ms);
        self.emit(digests);
        let (late, future) = self.engine.take_counts();
        if late > 0 {
            tracing::warn!(
                records = late,
                "aggregate records beyond the allowed lateness: stored, not used for detection"
            );
        }
        metrics::counter!(LATE_RECORDS_TOTAL).increment(late);
        metrics::counter!(FUTURE_RECORDS_TOTAL).increment(future);
        if let Some(w) = self.engine.watermark() {
            metrics::gauge!(WATERMARK_SECONDS).set(w as f64);
        }
        if std::mem::take(&mut self.resolutions_changed) {
            metrics::gauge!(RESOLVED_ISSUES).set(self.engine.resolved_count() as f64);
        }
        // Last: a reader that sees the records counted sees what they caused (judgements that
        // wait for the next evaluation are signalled by then).
        if !self.engine.pending() {
            metrics::counter!(RECORDS_TOTAL).increment(std::mem::take(&mut self.consumed));
        }
        if let Err(e) = self.producer.flush(ack) {
            tracing::warn!(error = %e, "the signals topic did not acknowledge yet; not committing");
            return Ok(());
        }
        let needed_from = self.engine.needed_from();
        let mut offsets = Vec::new();
        for (p, read) in &mut self.read {
            while let Some((_, minute)) = read.held.front() {
                if minute.is_some_and(|m| needed_from.is_none_or(|n| m >= n)) {
                    break;
                }
                read.held.pop_front();
            }
            let at = read.held.front().map_or(read.next, |(o, _)| *o);
            if read.committed != Some(at) {
                offsets.push((*p, at));
                read.committed = Some(at);
            }
        }
        if !offsets.is_empty() {
            // A failed commit is kept and tried again by the runtime.
            cx.commit(&offsets)?;
        }
        Ok(())
    }

    fn emit(&mut self, signals: Vec<Signal>) {
        for s in signals {
            if !self.sent.insert(s.signal_id.clone()) {
                metrics::counter!(SIGNALS_DEDUPLICATED_TOTAL, "type" => s.kind.as_str()).increment(1);
                continue;
            }
            metrics::counter!(SIGNALS_TOTAL, "type" => s.kind.as_str()).increment(1);
            tracing::info!(kind = s.kind.as_str(), project = %s.project, issue = %s.issue_id, count = s.count, "signal");
            let key = format!("{}/{}", s.project, s.issue_id);
            if let Ok(payload) = serde_json::to_vec(&s) {
                let _ = self.producer.send(BaseRecord::to(&self.cfg.topics.signals).key(&key).payload(&payload));
            }
            if s.kind == Kind::NewIssue {
                // Its minute, no later than now (a future-dated record counts as received).
                let now = tracefold_model::time::now_secs();
                let minute =
                    tracefold_model::time::parse_rfc3339(&s.minute).map_or(now, |ms| ms.div_euclid(1000).min(now));
                if self.storm.admit(&s, minute) == Admit::Fold {
                    metrics::counter!(STORM_FOLDED_TOTAL).increment(1);
                    continue;
                }
            }
            self.notifier.notify(&s);
        }
    }
}
