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
//! Restarts and replicas do not re-alert. The engine holds only active issues (bounded, see
//! [`crate::engine`]); the records of an issue it does not hold wait until the next evaluation
//! has read from ClickHouse whether the issue was seen before and its recent per-minute counts
//! (one query per 1,000 issues), so an issue is judged the same by a restarted detector, by the
//! replica that took its partition over, and after its state was evicted. Signal ids are
//! deterministic, and the signals already produced, by this process or another replica, are
//! skipped ([`crate::sent`]): the signals topic is read at start-up, on every tick, and up to
//! its end whenever partitions are assigned; a replica flushes its signals before it gives a
//! partition up. Partition ownership decides who evaluates an issue: an issue's aggregates
//! all go to one partition (keyed by issue), and a revoked partition's issues are dropped from
//! the engine. If ClickHouse cannot be read for 30 s, the waiting records are taken as of
//! known issues without history (`tracefold_detector_issue_lookups_total{outcome="failed"}`,
//! and a WARN line): no `new_issue` for them, rather than one for an old issue.
//! Issue statuses are read at start-up and again every `status_refresh_ms`, so that an issue
//! resolved after start-up regresses too.
//!
//! New-issue storms ([`crate::storm`]): every `new_issue` signal goes to the signals topic;
//! beyond `storm.max_new_issues` per project and window they are not notified one by one but
//! counted in one `new_issue_digest`, produced and notified when the window closes.

use crate::config::Config;
use crate::deliveries::{self, OnTopic};
use crate::engine::{effective_minute, Arrival, Engine, Restored};
use crate::metrics::{
    FUTURE_RECORDS_TOTAL, ISSUES_EVICTED_TOTAL, ISSUES_TRACKED, ISSUE_LOOKUPS_TOTAL, LATE_RECORDS_TOTAL, RECORDS_TOTAL,
    RESOLVED_ISSUES, SIGNALS_DEDUPLICATED_TOTAL, STORM_FOLDED_TOTAL, WATERMARK_SECONDS,
};
use crate::notify::Notifier;
use crate::sent::{Sent, SignalsTail};
use crate::signal::{Kind, Signal};
use crate::storm::{Admit, Storm};
use anyhow::Context as _;
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};
use tracefold_model::AggregateRecord;
use tracefold_runtime::consumer::{ConsumerRuntime, Ctx, Step, Strategy};
use tracefold_runtime::service::wait_bounded;
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

/// How long the detector waits for one read of ClickHouse: the statuses and the signal
/// deliveries at start-up, each status refresh, each lookup of the issues its records wait for.
/// The client has no deadline of its own: a server that takes the connection and never answers
/// (stopped, or a query stuck on a lock) held the read for ever.
pub const CLICKHOUSE_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads the issue statuses every `every` on `rt` (each read bounded by `limit`: a read that
/// hangs is given up and tried again, instead of ending the refreshes for the rest of the
/// process's life) and sends each snapshot on the channel; ends when the receiver is gone.
fn spawn_status_refresh(
    rt: &tokio::runtime::Runtime,
    cfg: Config,
    every: Duration,
    limit: Duration,
) -> (tokio::task::JoinHandle<()>, std::sync::mpsc::Receiver<Vec<Status>>) {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<Status>>();
    let task = rt.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let read = tokio::time::timeout(limit, read_statuses(&cfg))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("ClickHouse did not answer within {} ms", limit.as_millis())));
            match read {
                Ok(statuses) => {
                    if tx.send(statuses).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot read issue statuses; retrying"),
            }
        }
    });
    (task, rx)
}

/// Hands new resolutions and reopenings to the engine. A resolution already handed over is not
/// handed over again (its regression may have fired since); a new `resolve` (a later time or
/// another release) is. The issues with every other status replace the engine's issues with a
/// status of their own (an alias's resolution does not stand for theirs, docs/sourcemaps.md
/// "Late maps"): `statuses` is the whole snapshot, so the engine holds the last one's only.
fn apply_statuses(engine: &mut Engine, applied: &mut Applied, statuses: Vec<Status>) -> bool {
    engine.replace_unresolved(
        statuses
            .iter()
            .filter(|s| s.current_status != IssueStatus::Resolved)
            .map(|s| (s.project.as_str(), s.issue_id.as_str())),
    );
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
            // Reopened or ignored since its resolution was handed over.
            engine.reopened(&key.0, &key.1);
            changed = true;
        }
    }
    changed
}

/// What ClickHouse knows of the issues the engine waits for (see [`Engine::lookups`]), as
/// (project, issue, what to restore).
async fn look_up(
    client: &tracefold_store::Client,
    cfg: &Config,
    lookups: &[crate::engine::Lookup],
    sent: &Sent,
) -> anyhow::Result<Vec<(String, String, Restored)>> {
    let db = &cfg.clickhouse.database;
    let mut by_project: BTreeMap<&str, Vec<&crate::engine::Lookup>> = BTreeMap::new();
    for l in lookups {
        by_project.entry(&l.project).or_default().push(l);
    }
    let mut out = Vec::with_capacity(lookups.len());
    for (project, ls) in by_project {
        for chunk in ls.chunks(tracefold_store::detector::LOOKUP_CHUNK) {
            let ids: Vec<&str> = chunk.iter().map(|l| l.issue_id.as_str()).collect();
            let from = chunk.iter().map(|l| l.from_minute).min().unwrap_or(0);
            let history_minutes = i64::from(cfg.detector.history_minutes);
            let since = from - 60 * history_minutes;
            let known = tracefold_store::detector::issues_known(client, db, project, &ids, since).await?;
            let mut history: HashMap<&str, Vec<(i64, u64)>> = HashMap::new();
            for h in &known.history {
                history.entry(h.issue_id.as_str()).or_default().push((i64::from(h.minute), h.count));
            }
            // Issues the records name in `merged_from` (docs/sourcemaps.md "Late maps"): one
            // stored at all makes its primary a known bug whose map arrived late, and its
            // history before the records' minute is the primary's too.
            let mut merged: Vec<&str> = chunk.iter().flat_map(|l| l.merged_from.iter().map(String::as_str)).collect();
            merged.sort_unstable();
            merged.dedup();
            let mut merged_stored: HashMap<String, u32> = HashMap::new();
            let mut merged_history: HashMap<String, Vec<(i64, u64)>> = HashMap::new();
            for ids in merged.chunks(tracefold_store::detector::LOOKUP_CHUNK) {
                let aliases = tracefold_store::detector::issues_known(client, db, project, ids, since).await?;
                merged_stored.extend(aliases.first_seen);
                for h in aliases.history {
                    merged_history.entry(h.issue_id).or_default().push((i64::from(h.minute), h.count));
                }
            }
            for l in chunk {
                // Each issue's own window, whatever the chunk's earliest minute: the minutes
                // `history_minutes` before its records' first.
                let window = |m: &i64| *m < l.from_minute && *m >= l.from_minute - 60 * history_minutes;
                // Seen in an earlier second than these records' first: known.
                let known_before =
                    known.first_seen.get(&l.issue_id).is_some_and(|f| i64::from(*f) < l.first_seen_ms.div_euclid(1000))
                        || l.merged_from.iter().any(|s| merged_stored.contains_key(s));
                let history = history
                    .get(l.issue_id.as_str())
                    .map(|h| h.iter().copied().filter(|(m, _)| window(m)).collect())
                    .unwrap_or_default();
                let mut signalled = sent.signalled(&l.project, &l.issue_id);
                let mut aliases = Vec::new();
                let mut aliases_first_seen_ms = 0;
                for (s, first_seen) in l.merged_from.iter().filter_map(|s| Some((s, merged_stored.get(s)?))) {
                    let first_seen = i64::from(*first_seen) * 1000;
                    if aliases_first_seen_ms == 0 || first_seen < aliases_first_seen_ms {
                        aliases_first_seen_ms = first_seen;
                    }
                    let h = merged_history.get(s).map(|h| h.iter().copied().filter(|(m, _)| window(m)).collect());
                    aliases.push((s.clone(), h.unwrap_or_default()));
                    // What was signalled for the bug as its alias is not signalled again.
                    signalled.extend(sent.signalled(&l.project, s));
                }
                out.push((
                    l.project.clone(),
                    l.issue_id.clone(),
                    Restored { known: known_before, history, signalled, aliases, aliases_first_seen_ms },
                ));
            }
        }
    }
    Ok(out)
}

/// Runs the detector until `shutdown` fires. Blocking: call it from a dedicated thread.
///
/// # Errors
/// Kafka or ClickHouse unusable at start-up; a fatal consumer error.
pub fn run(cfg: &Config, shutdown: &Shutdown, health: &Health) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let mut engine = Engine::new(cfg.detector.engine.clone()).with_lookups();
    let mut applied = Applied::new();
    let beat = || health.beat();
    // A stop requested while ClickHouse does not answer ends the start-up (it waited for ever).
    let Some(statuses) =
        wait_bounded(&rt, "ClickHouse", CLICKHOUSE_READ_TIMEOUT, Some(shutdown), &beat, read_statuses(cfg))
            .context("cannot read the issue statuses from ClickHouse")?
    else {
        return Ok(());
    };
    let _ = apply_statuses(&mut engine, &mut applied, statuses);
    metrics::gauge!(RESOLVED_ISSUES).set(engine.resolved_count() as f64);
    // No watermark until records arrive.
    metrics::gauge!(WATERMARK_SECONDS).set(0.0);
    let mut sent = Sent::default();
    let mut tail =
        SignalsTail::start(&cfg.kafka, &format!("{}-replay", cfg.detector.group_id), &cfg.topics.signals, 10_000)
            .context("cannot read the signals topic")?;
    // Every signal id on the topic, with when it was produced, and the recent signals whole
    // (for redelivery).
    let max_age = Duration::from_secs(60 * cfg.detector.retry.redeliver_max_age_min);
    let since_ms =
        tracefold_model::time::now_ms().saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
    let mut on_topic = OnTopic::default();
    tail.catch_up_with(&mut sent, None, Duration::from_secs(30), |s, produced| {
        on_topic.produced.insert(s.signal_id.clone(), produced);
        if produced >= since_ms {
            on_topic.recent.push(s.clone());
        }
    });
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
    let redelivered = wait_bounded(
        &rt,
        "ClickHouse",
        CLICKHOUSE_READ_TIMEOUT,
        Some(shutdown),
        &beat,
        deliveries::redeliver(&cfg.clickhouse, &mut notifier, &recorder, &on_topic, max_age),
    )
    .context("cannot read the signal deliveries from ClickHouse (is the schema migrated?)")?;
    if redelivered.is_none() {
        return Ok(());
    }
    drop((recorder, on_topic));
    // Statuses are read on the runtime, off the consumer loop, which takes what was read.
    let refresh = Duration::from_millis(cfg.detector.status_refresh_ms.max(1));
    let (status_task, status_rx) = spawn_status_refresh(&rt, cfg.clone(), refresh, CLICKHOUSE_READ_TIMEOUT);
    tracing::info!(group = %cfg.detector.group_id, channels = cfg.detector.channels.len(), "detector started");
    let mut d = Detector {
        cfg,
        engine,
        applied,
        sent,
        tail,
        rt: &rt,
        client: tracefold_store::client::client(&cfg.clickhouse),
        lookups_failing_since: None,
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
    let notifier = d.notifier;
    rt.block_on(async {
        notifier.close(Duration::from_millis(500)).await;
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
    /// The signals produced (by this process or found on the signals topic).
    sent: Sent,
    /// The signals topic, read for what other replicas produce.
    tail: SignalsTail,
    rt: &'a tokio::runtime::Runtime,
    client: tracefold_store::Client,
    /// Since when ClickHouse could not be read for the issues the engine waits for.
    lookups_failing_since: Option<Instant>,
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
        self.storm.set_owner(&self.engine.owned());
        // What the previous owner signalled (it flushed before giving the partitions up).
        if !self.tail.catch_up(&mut self.sent, self.engine.watermark(), Duration::from_secs(10)) {
            tracing::warn!("could not read the signals topic to its end at assignment; a signal may repeat");
        }
        Ok(())
    }

    fn on_revoke(&mut self, _: &mut Ctx<'_>, partitions: &[i32]) {
        // Their issues' state goes with them: the next owner reads it back (from ClickHouse
        // and the signals topic), and what was read past the commit is read again. Signals
        // produced go to the topic first, so that the next owner sees them.
        self.engine.revoke(partitions);
        self.storm.set_owner(&self.engine.owned());
        for p in partitions {
            self.read.remove(p);
        }
        if let Err(e) = self.producer.flush(Duration::from_secs(10)) {
            tracing::warn!(error = %e, "signals not acknowledged before giving partitions up; the next owner may repeat them");
        }
    }

    fn on_message(&mut self, _: &mut Ctx<'_>, m: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        self.consumed += 1;
        let now_ms = tracefold_model::time::now_ms();
        // When the grouper produced it: about when its events were received.
        let received_ms = m.timestamp().to_millis().unwrap_or(now_ms);
        let minute = match read_record(m.payload()) {
            Ok(r) => {
                let at = Arrival { partition: m.partition(), received_ms, now_ms };
                let signals = self.engine.ingest(&r, at);
                self.resolutions_changed |= signals.iter().any(|s| s.kind == Kind::Regression);
                self.emit(signals);
                // The minute it counts in: a future-dated record does not hold commits back.
                Some(effective_minute(r.minute, received_ms))
            }
            Err(why) => {
                metrics::counter!(crate::metrics::UNREADABLE_RECORDS_TOTAL).increment(1);
                tracing::warn!(partition = m.partition(), offset = m.offset(), reason = %why, "unreadable aggregate skipped");
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
        // Signals of other replicas.
        self.tail.poll(&mut self.sent, self.engine.watermark(), 10_000);
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
        self.restore_waiting(cx);
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
            let ecfg = &self.cfg.detector.engine;
            self.sent.prune(w - 60 * (ecfg.allowed_lateness_min.max(ecfg.lateness_min) + 10));
        }
        let (idle, over) = self.engine.take_evictions();
        metrics::counter!(ISSUES_EVICTED_TOTAL, "reason" => "idle").increment(idle);
        if over > 0 {
            metrics::counter!(ISSUES_EVICTED_TOTAL, "reason" => "max_issues").increment(over);
            tracing::warn!(
                issues = over,
                max_issues = self.cfg.detector.engine.max_issues,
                "more issues active than max_issues: the least recently seen evicted (read back from ClickHouse when they return)"
            );
        }
        metrics::gauge!(ISSUES_TRACKED).set(self.engine.tracked() as f64);
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
        if self.engine.waiting() {
            // Records wait for ClickHouse: nothing is committed past them.
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

    /// Reads what ClickHouse knows of the issues whose records wait, and hands it to the engine
    /// (with the signals those records cause). After 30 s of failures, the waiting records are
    /// taken as of known issues without history.
    fn restore_waiting(&mut self, cx: &Ctx<'_>) {
        let lookups = self.engine.lookups();
        if lookups.is_empty() {
            return;
        }
        // Bounded: a lookup that hangs is a failure like one that errs (and after 30 s of them
        // the records are taken as known), not a loop stuck until the watchdog ends the process.
        let work = look_up(&self.client, self.cfg, &lookups, &self.sent);
        let read = wait_bounded(self.rt, "ClickHouse", CLICKHOUSE_READ_TIMEOUT, None, &|| cx.beat(), work);
        let restored = match read.map(Option::unwrap_or_default) {
            Ok(r) => {
                self.lookups_failing_since = None;
                let known = r.iter().filter(|(_, _, x)| x.known).count() as u64;
                metrics::counter!(ISSUE_LOOKUPS_TOTAL, "outcome" => "known").increment(known);
                metrics::counter!(ISSUE_LOOKUPS_TOTAL, "outcome" => "new").increment(r.len() as u64 - known);
                r
            }
            Err(e) => {
                let since = *self.lookups_failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() < Duration::from_secs(30) {
                    tracing::warn!(error = %format!("{e:#}"), issues = lookups.len(), "cannot read issues from ClickHouse; retrying");
                    return;
                }
                tracing::warn!(
                    error = %format!("{e:#}"),
                    issues = lookups.len(),
                    "cannot read issues from ClickHouse for 30 s: taking them as known, without history (no new_issue for them)"
                );
                metrics::counter!(ISSUE_LOOKUPS_TOTAL, "outcome" => "failed").increment(lookups.len() as u64);
                lookups
                    .into_iter()
                    .map(|l| {
                        let signalled = self.sent.signalled(&l.project, &l.issue_id);
                        (l.project, l.issue_id, Restored { known: true, signalled, ..Restored::default() })
                    })
                    .collect()
            }
        };
        for (project, issue_id, r) in restored {
            let signals = self.engine.restore(&project, &issue_id, r);
            self.resolutions_changed |= signals.iter().any(|s| s.kind == Kind::Regression);
            self.emit(signals);
        }
    }

    fn emit(&mut self, signals: Vec<Signal>) {
        for s in signals {
            if !self.sent.insert(&s, self.engine.watermark()) {
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

/// The aggregate record of a message's payload, or why it cannot be read: no payload, not an
/// aggregate record, or values no real record has ([`AggregateRecord::implausible`]: a minute
/// or time outside 1970 to 2106, an absurd count), which would overflow the engine's
/// arithmetic. The writer sends the same records to the DLQ.
pub fn read_record(payload: Option<&[u8]>) -> Result<AggregateRecord, String> {
    let payload = payload.ok_or("no payload")?;
    let r: AggregateRecord = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    match r.implausible() {
        Some(why) => Err(why),
        None => Ok(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracefold_model::{AggregateRecord, BatchRef};
    use tracefold_store::rows::AggregateRow;

    /// Records whose values no real record has are unreadable (a counted skip), not fed to
    /// the engine, whose sums and times they overflowed (a panic in a debug build, wrapped
    /// counts and times in a release one).
    #[test]
    fn records_with_absurd_values_are_unreadable() {
        let t0: i64 = 1_795_671_540;
        let good = AggregateRecord {
            v: 1,
            batch: BatchRef { count: 1, ..BatchRef::default() },
            project: "web".into(),
            issue_id: "a".into(),
            minute: t0,
            count: 3,
            first_seen_ms: t0 * 1000,
            last_seen_ms: t0 * 1000 + 5,
            ..AggregateRecord::default()
        };
        let bytes = |r: &AggregateRecord| serde_json::to_vec(r).unwrap();
        assert_eq!(read_record(Some(&bytes(&good))).unwrap(), good);
        assert!(read_record(None).unwrap_err().contains("no payload"));
        assert!(read_record(Some(b"{")).is_err());
        type Spoil = fn(&mut AggregateRecord);
        let cases: [(&str, Spoil); 4] = [
            ("minute", |r| r.minute = i64::MIN),
            ("minute", |r| r.minute = i64::MAX),
            ("count", |r| r.count = u64::MAX),
            ("last_seen_ms", |r| r.last_seen_ms = i64::MAX),
        ];
        for (word, spoil) in cases {
            let mut r = good.clone();
            spoil(&mut r);
            let why = read_record(Some(&bytes(&r))).unwrap_err();
            assert!(why.starts_with(word), "{why}");
        }
        // Two records whose counts are plausible add up in the engine without overflow.
        let mut e = Engine::new(crate::engine::EngineConfig::default());
        let mut big = good.clone();
        big.count = tracefold_model::aggregate::MAX_RECORD_COUNT;
        let at = crate::engine::Arrival { partition: 0, received_ms: t0 * 1000 + 59_000, now_ms: t0 * 1000 + 59_000 };
        for _ in 0..3 {
            e.ingest(&read_record(Some(&bytes(&big))).unwrap(), at);
        }
        let _ = e.advance(t0 * 1000 + 3_600_000);
    }

    /// Each status snapshot replaces the issues with a status of their own: an issue no longer
    /// in it (its status changed to resolved, or its row went) is not held as one any more, and
    /// a reopened issue's resolution is forgotten.
    #[test]
    fn each_status_snapshot_replaces_the_issues_with_a_status_of_their_own() {
        let status = |issue: &str, current_status: IssueStatus| Status {
            project: "web".into(),
            issue_id: issue.into(),
            current_status,
            at: 100,
            release: "1.0".into(),
        };
        let mut engine = Engine::new(crate::engine::EngineConfig::default());
        let mut applied = Applied::new();
        let snapshot = |n: usize| -> Vec<Status> {
            let mut v = vec![status("s", IssueStatus::Resolved)];
            v.extend((0..n).map(|i| status(&format!("i{i}"), IssueStatus::Active)));
            v
        };
        for _ in 0..3 {
            apply_statuses(&mut engine, &mut applied, snapshot(1000));
        }
        assert_eq!((engine.unresolved_count(), engine.resolved_count()), (1000, 1), "the last snapshot's, once");
        assert!(!apply_statuses(&mut engine, &mut applied, snapshot(10)));
        assert_eq!(engine.unresolved_count(), 10);
        assert!(apply_statuses(&mut engine, &mut applied, vec![status("s", IssueStatus::Ignored)]));
        assert_eq!((engine.unresolved_count(), engine.resolved_count()), (1, 0), "s reopened: its own status");
    }

    /// With the real ClickHouse: the lookup of an issue whose records name aliases in
    /// `merged_from` hands the engine the stored aliases' history (before the records' minute)
    /// and first seen, and the engine judges the issue on it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lookup_reads_the_stored_aliases_history_for_the_canonical_issue() {
        let url = std::env::var("TRACEFOLD_TEST_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into());
        let database = format!("tftest_detector_aliases_{}", std::process::id());
        let mut cfg = Config {
            clickhouse: tracefold_runtime::config::ClickHouseConfig { url, database, ..Default::default() },
            ..Config::default()
        };
        // 40 minutes of history: the alias's last 40 before "p"'s record (enough to be warm).
        cfg.detector.history_minutes = 40;
        tracefold_store::migrate::migrate(&cfg.clickhouse, |_, _| {})
            .await
            .expect("ClickHouse is needed for this test");
        let client = tracefold_store::client::database_client(&cfg.clickhouse).unwrap();
        let t0 = 1_795_600_000 / 60 * 60;
        let rec = |project: &str, issue: &str, m: i64, count: u64| AggregateRecord {
            v: 1,
            project: project.into(),
            issue_id: issue.into(),
            minute: t0 + m * 60,
            count,
            first_seen_ms: (t0 + m * 60) * 1000,
            last_seen_ms: (t0 + m * 60) * 1000 + 1000,
            batch: BatchRef { topic: "e".into(), index: 0, count: 1, ..Default::default() },
            ..Default::default()
        };
        // "s": 40 a minute for an hour; another project's "s" and an unrelated issue too.
        let mut recs: Vec<AggregateRecord> = (0..60).map(|m| rec("web", "s", m, 40)).collect();
        recs.push(rec("app", "s", 30, 7));
        recs.push(rec("web", "other", 30, 7));
        // "s" after the map's first records of "p" (minute 60): not "p"'s history.
        recs.push(rec("web", "s", 60, 5));
        let rows: Vec<AggregateRow<'_>> =
            recs.iter().enumerate().map(|(i, r)| AggregateRow::new(r, "a", 0, i as i64)).collect();
        let inserted =
            tracefold_store::aggregates::insert(&client, "aggregates", &rows, Duration::from_secs(30), None).await;
        let mut engine = Engine::new(cfg.detector.engine.clone()).with_lookups();
        let mut p = rec("web", "p", 60, 40);
        p.merged_from = vec!["nowhere".into(), "s".into()];
        p.users.insert(1, 16);
        let received_ms = (t0 + 60 * 60) * 1000 + 59_000;
        // An issue of the same project whose records are 50 minutes older: looked up in the
        // same chunk, it does not widen "p"'s window.
        let early = rec("web", "early", 10, 1);
        assert!(engine.ingest(&early, Arrival { partition: 0, received_ms: (t0 + 600) * 1000, now_ms: 0 }).is_empty());
        assert!(engine.ingest(&p, Arrival { partition: 0, received_ms, now_ms: 0 }).is_empty());
        let lookups = engine.lookups();
        let read = look_up(&tracefold_store::client::client(&cfg.clickhouse), &cfg, &lookups, &Sent::default()).await;
        let _ = tracefold_store::client::drop_database(&client, &cfg.clickhouse.database).await;
        inserted.unwrap();
        let read = read.unwrap();
        assert_eq!(read.len(), 2);
        let (project, issue, restored) = read.iter().find(|(_, i, _)| i == "p").unwrap();
        assert_eq!((project.as_str(), issue.as_str()), ("web", "p"));
        assert!(restored.known, "s is stored: p is a known bug");
        assert!(restored.history.is_empty(), "p itself has nothing stored");
        let s_history: Vec<(i64, u64)> = (20..60).map(|m| (t0 + m * 60, 40)).collect();
        assert_eq!(restored.aliases, [("s".to_owned(), s_history)], "only stored aliases, minutes 20 to 59");
        assert_eq!(restored.aliases_first_seen_ms, t0 * 1000);
        // Judged on it: no new issue, and warm with the bug's baseline (without it, "p" would
        // have no history and its project no baseline: a burst in its fifth minute would pass).
        assert!(engine.restore("web", "p", restored.clone()).is_empty());
        let at = |m: i64| Arrival { partition: 0, received_ms: (t0 + m * 60) * 1000 + 59_000, now_ms: 0 };
        let mut signals = Vec::new();
        for m in 61..68 {
            let mut r = rec("web", "p", m, if m == 64 { 400 } else { 40 });
            r.merged_from = vec!["s".into()];
            signals.extend(engine.ingest(&r, at(m)));
            signals.extend(engine.advance(0));
            signals.extend(engine.advance(0));
        }
        let spikes: Vec<(Kind, &str, u64)> = signals.iter().map(|s| (s.kind, s.minute.as_str(), s.count)).collect();
        assert_eq!(spikes, [(Kind::Spike, "2026-11-25T10:50:00Z", 400)]);
        assert!((35.0..=45.0).contains(&signals[0].baseline_per_minute), "{}", signals[0].baseline_per_minute);
        assert_eq!(signals[0].first_seen, "2026-11-25T09:46:00Z", "the bug's first seen, as s");
    }

    /// A "ClickHouse" on a local port that takes every connection and answers none of the
    /// first `silent` (it holds them open, as a stopped server or a query stuck on a lock
    /// does), then answers each request with an empty `200` (no rows).
    fn stuck_clickhouse(silent: usize) -> String {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for (i, conn) in listener.incoming().enumerate() {
                let Ok(mut conn) = conn else { continue };
                if i < silent {
                    held.push(conn);
                    continue;
                }
                std::thread::spawn(move || {
                    // The request head, then its body (Content-Length), then the answer.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                });
            }
        });
        url
    }

    fn config_at(url: String) -> Config {
        Config {
            clickhouse: tracefold_runtime::config::ClickHouseConfig {
                url,
                database: "tftest_detector_stuck".into(),
                ..Default::default()
            },
            ..Config::default()
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
    }

    /// A status read that never gets an answer is given up and tried again: the refreshes go on
    /// once ClickHouse answers. Unbounded, the first such read held the refresh task for the
    /// rest of the process's life, silently: an issue resolved after that never regressed.
    #[test]
    fn a_status_read_that_never_answers_does_not_end_the_refreshes() {
        let rt = runtime();
        let cfg = config_at(stuck_clickhouse(1));
        let (_task, statuses) = spawn_status_refresh(&rt, cfg, Duration::from_millis(10), Duration::from_millis(300));
        // A guard, not a timing assertion: the second read is answered at once.
        let got = statuses.recv_timeout(Duration::from_secs(30));
        assert!(got.as_ref().is_ok_and(Vec::is_empty), "no status read after the stuck one: {got:?}");
    }

    /// A wait for ClickHouse (a lookup, a start-up read) ends with an error after its limit, and
    /// the loop beats meanwhile.
    #[test]
    fn a_read_that_never_answers_is_an_error_after_the_limit_and_the_loop_beats_meanwhile() {
        let rt = runtime();
        let cfg = config_at(stuck_clickhouse(usize::MAX));
        let beats = std::sync::atomic::AtomicUsize::new(0);
        let beat = || {
            beats.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        let r = wait_bounded(&rt, "ClickHouse", Duration::from_millis(1500), None, &beat, read_statuses(&cfg));
        let e = format!("{:#}", r.unwrap_err());
        assert!(e.contains("ClickHouse did not answer within 1500 ms"), "{e}");
        assert!(beats.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    }

    /// A stop requested while ClickHouse does not answer the start-up reads ends the detector
    /// (without an error: it was asked to stop). It used to wait for the answer for ever, until
    /// the watchdog ended the process with code 70 a minute later.
    #[test]
    fn a_stop_while_clickhouse_does_not_answer_at_start_ends_the_detector() {
        let cfg = config_at(stuck_clickhouse(usize::MAX));
        let (shutdown, health) = (Shutdown::new(), Health::named("detector"));
        let (tx, rx) = std::sync::mpsc::channel();
        let (s, h) = (shutdown.clone(), health.clone());
        std::thread::spawn(move || {
            let _ = tx.send(run(&cfg, &s, &h).map_err(|e| format!("{e:#}")));
        });
        std::thread::sleep(Duration::from_millis(300));
        shutdown.trigger();
        // A guard, not a timing assertion: the detector ends at once, or (before) never.
        let ended = rx.recv_timeout(Duration::from_secs(20));
        assert_eq!(ended, Ok(Ok(())), "the detector did not end when told to stop");
    }
}
