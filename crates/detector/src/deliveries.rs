//! Durable delivery state and redelivery at start-up.
//!
//! Every outcome of a signal on a channel is a row of ClickHouse's `signal_deliveries`
//! ([`tracefold_store::deliveries`]): `queued` when the notifier hands it to the channel's
//! queue, then `delivered` or `failed` (every attempt of this process life failed); `dropped`
//! (queue full), `cooled` and `rate_limited` when it is not queued. The notifier and the
//! channel tasks send their rows to one writer task ([`start_writer`]) over a bounded channel;
//! the writer inserts what has arrived in one INSERT (up to 1,000 rows), as soon as it
//! arrives. Recording never blocks delivery: a full channel drops the row, a failed insert is
//! logged and counted and its rows are kept (up to 10,000) and inserted again with backoff;
//! rows never written are counted (`tracefold_detector_delivery_records_dropped_total`).
//!
//! At start-up the detector reads the signals on the signals topic (the last 10,000 per
//! partition) and the delivery rows of their time ([`redeliver`]). A (signal, channel) whose
//! highest-ranked row is `queued`, `failed` or `dropped` (queued when the process stopped,
//! given up after the attempts of a process life, or dropped on a full queue) and never
//! `delivered` is handed to that channel again, oldest first, when the signal was produced
//! less than `[detector.retry] redeliver_max_age_min` ago and the channel still wants it:
//! cooldowns do not apply, the channel's rate limit does (a redelivered signal over it is
//! `rate_limited`, final), and `tracefold_detector_redelivered_total` counts it. An older one
//! gets an `expired` row (final), is counted in `tracefold_detector_redelivery_expired_total`
//! and logged: given up for good.
//!
//! A (signal, channel) without any row is not handed again: a channel that did not exist
//! then, a new issue folded into a storm digest, a signal produced just before a crash whose
//! `queued` row had not been written yet. Delivery is at least once: a receiver that took a
//! signal just before a crash, before its `delivered` row was written, gets it again.

use crate::metrics::{
    DELIVERY_RECORDS_DROPPED_TOTAL, DELIVERY_RECORDS_TOTAL, DELIVERY_RECORD_FAILURES_TOTAL, REDELIVERED_TOTAL,
    REDELIVERY_EXPIRED_TOTAL,
};
use crate::notify::{Channel, Notifier};
use crate::signal::Signal;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracefold_runtime::config::ClickHouseConfig;
pub use tracefold_store::deliveries::{DeliveryOutcome, DeliveryRow};

/// Rows waiting for the writer (in the channel) at most; more are dropped and counted.
const CHANNEL_ROWS: usize = 10_000;
/// Rows per INSERT at most.
const BATCH_ROWS: usize = 1_000;
/// Longest error text stored, in characters.
const ERROR_CHARS: usize = 1_000;
/// Inserts tried once the detector is stopping before the rows left are counted as dropped.
const FINAL_TRIES: u32 = 3;

/// Where the notifier and the channel tasks send delivery rows. Cloned into each task.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::Sender<DeliveryRow>,
}

impl Recorder {
    /// Records `outcome` of `s` on channel `c` after `attempts` attempts in all (never
    /// waits: when the writer is that far behind, the row is dropped and counted).
    /// `error` must be redacted already ([`crate::notify::error_text`]).
    pub fn record(&self, s: &Signal, c: &Channel, outcome: DeliveryOutcome, attempts: u32, error: &str) {
        self.record_row(DeliveryRow {
            project: s.project.clone(),
            issue_id: s.issue_id.clone(),
            signal_id: s.signal_id.clone(),
            channel: c.name.clone(),
            kind: c.target.label().to_owned(),
            outcome: outcome.code().to_owned(),
            attempts,
            error: error.chars().take(ERROR_CHARS).collect(),
            outcome_rank: outcome.rank(),
            at: u32::try_from(tracefold_model::time::now_secs().max(0)).unwrap_or(u32::MAX),
        });
    }

    fn record_row(&self, row: DeliveryRow) {
        if self.tx.try_send(row).is_err() {
            metrics::counter!(DELIVERY_RECORDS_DROPPED_TOTAL).increment(1);
            tracing::warn!("delivery row not recorded: the writer is behind (ClickHouse failing?)");
        }
    }
}

/// Starts the task that writes delivery rows to ClickHouse (inside a tokio runtime). It ends
/// once every [`Recorder`] is dropped and what they sent is written (or, after
/// [`FINAL_TRIES`] failed inserts, counted as dropped).
pub fn start_writer(ch: &ClickHouseConfig) -> (Recorder, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(CHANNEL_ROWS);
    let client = tracefold_store::client::client(ch);
    let database = ch.database.clone();
    let task = tokio::spawn(write_rows(client, database, rx));
    (Recorder { tx }, task)
}

async fn write_rows(client: tracefold_store::Client, database: String, mut rx: mpsc::Receiver<DeliveryRow>) {
    let mut pending: VecDeque<DeliveryRow> = VecDeque::new();
    let mut open = true;
    let mut backoff = Duration::from_millis(200);
    let mut final_tries = 0;
    loop {
        if pending.is_empty() {
            if !open {
                return;
            }
            match rx.recv().await {
                Some(row) => pending.push_back(row),
                None => return,
            }
        }
        // What has arrived, up to a batch; more waits in the channel (which, full, drops).
        while open && pending.len() < BATCH_ROWS {
            match rx.try_recv() {
                Ok(row) => pending.push_back(row),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        let n = pending.len().min(BATCH_ROWS);
        let batch: Vec<DeliveryRow> = pending.iter().take(n).cloned().collect();
        let timeout = if open { Duration::from_secs(10) } else { Duration::from_secs(3) };
        match tracefold_store::deliveries::insert(&client, &database, &batch, timeout).await {
            Ok(()) => {
                pending.drain(..n);
                metrics::counter!(DELIVERY_RECORDS_TOTAL).increment(n as u64);
                backoff = Duration::from_millis(200);
            }
            Err(e) => {
                metrics::counter!(DELIVERY_RECORD_FAILURES_TOTAL).increment(1);
                let error = format!("{:#}", anyhow::Error::new(e));
                tracing::warn!(error = %error, rows = n, "cannot record signal deliveries; retrying");
                if !open {
                    final_tries += 1;
                    if final_tries >= FINAL_TRIES {
                        metrics::counter!(DELIVERY_RECORDS_DROPPED_TOTAL).increment(pending.len() as u64);
                        tracing::warn!(rows = pending.len(), "delivery rows not recorded at shutdown");
                        return;
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The signals found on the signals topic at start-up.
#[derive(Debug, Default)]
pub struct OnTopic {
    /// Every signal id read, with when it was produced (Unix ms, the record's timestamp).
    pub produced: HashMap<String, i64>,
    /// The signals produced within the redelivery age, in the order read.
    pub recent: Vec<Signal>,
}

/// What a start-up does with the signals the channels never took.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// (channel index, signal, attempts so far), oldest signal first.
    pub redeliver: Vec<(usize, Signal, u32)>,
    /// Rows to write for the (signal, channel)s given up for good (`expired`).
    pub expired: Vec<DeliveryRow>,
}

/// The plan for `channels`, from the signals on the topic and the delivery rows read: see
/// the module docs. `now_ms` and `max_age_ms` by the detector's clock.
pub fn plan(channels: &[&Channel], on_topic: &OnTopic, rows: Vec<DeliveryRow>, now_ms: i64, max_age_ms: i64) -> Plan {
    // Per (signal, channel): its highest-ranked row.
    let mut best: BTreeMap<(String, String), DeliveryRow> = BTreeMap::new();
    for row in rows {
        let key = (row.signal_id.clone(), row.channel.clone());
        match best.get(&key) {
            Some(b) if (b.outcome_rank, b.attempts) >= (row.outcome_rank, row.attempts) => {}
            _ => {
                best.insert(key, row);
            }
        }
    }
    let recent: HashMap<&str, &Signal> = on_topic.recent.iter().map(|s| (s.signal_id.as_str(), s)).collect();
    let mut out = Plan::default();
    let mut again: Vec<(i64, usize, Signal, u32)> = Vec::new();
    for ((signal_id, channel), row) in best {
        let redeliverable = DeliveryOutcome::from_code(&row.outcome).is_some_and(DeliveryOutcome::redeliverable);
        // A channel no longer configured, a signal no longer among those read: nothing to do.
        let (Some(i), Some(&produced)) =
            (channels.iter().position(|c| c.name == channel), on_topic.produced.get(&signal_id))
        else {
            continue;
        };
        if !redeliverable {
            continue;
        }
        if now_ms.saturating_sub(produced) > max_age_ms {
            out.expired.push(DeliveryRow {
                outcome: DeliveryOutcome::Expired.code().to_owned(),
                outcome_rank: DeliveryOutcome::Expired.rank(),
                at: u32::try_from(now_ms.div_euclid(1000).max(0)).unwrap_or(u32::MAX),
                ..row
            });
        } else if let Some(s) = recent.get(signal_id.as_str()).filter(|s| channels[i].wants(s)) {
            again.push((produced, i, (*s).clone(), row.attempts));
        }
    }
    again.sort_by(|a, b| (a.0, a.1, &a.2.signal_id).cmp(&(b.0, b.1, &b.2.signal_id)));
    out.redeliver = again.into_iter().map(|(_, i, s, attempts)| (i, s, attempts)).collect();
    out
}

/// Hands again to their channels the signals on the topic that they never took (see the
/// module docs), and records the ones given up for good. Logs what it did, per channel.
///
/// # Errors
/// The delivery rows cannot be read from ClickHouse.
pub async fn redeliver(
    ch: &ClickHouseConfig,
    notifier: &mut Notifier,
    recorder: &Recorder,
    on_topic: &OnTopic,
    max_age: Duration,
) -> tracefold_store::Result<()> {
    let oldest = on_topic.produced.values().min().copied().unwrap_or_else(tracefold_model::time::now_ms);
    // From ten minutes before the oldest signal read: rows are written after their signal is
    // produced, by this clock or (after a move) another one.
    let from = u32::try_from((oldest.div_euclid(1000) - 600).max(0)).unwrap_or(u32::MAX);
    let client = tracefold_store::client::client(ch);
    let rows = tracefold_store::deliveries::since(&client, &ch.database, from).await?;
    let now_ms = tracefold_model::time::now_ms();
    let max_age_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
    let plan = plan(&notifier.channels(), on_topic, rows, now_ms, max_age_ms);
    let mut expired: BTreeMap<(String, String), u64> = BTreeMap::new();
    for row in plan.expired {
        metrics::counter!(REDELIVERY_EXPIRED_TOTAL, "channel" => kind_label(&row.kind)).increment(1);
        *expired.entry((row.channel.clone(), row.kind.clone())).or_default() += 1;
        recorder.record_row(row);
    }
    for ((channel, kind), signals) in expired {
        tracing::warn!(
            channel = %channel,
            kind = %kind,
            signals,
            max_age_min = max_age.as_secs() / 60,
            "signals this channel never took are older than redeliver_max_age_min: given up"
        );
    }
    let mut handed: BTreeMap<usize, u64> = BTreeMap::new();
    for (i, s, attempts) in &plan.redeliver {
        if notifier.redeliver(*i, s, *attempts) {
            metrics::counter!(REDELIVERED_TOTAL, "channel" => notifier.channels()[*i].target.label()).increment(1);
            *handed.entry(*i).or_default() += 1;
        }
    }
    let channels = notifier.channels();
    for (i, c) in channels.iter().enumerate() {
        // Every channel's series exist from here on: a zero says start-up redelivery is over.
        metrics::counter!(REDELIVERED_TOTAL, "channel" => c.target.label()).increment(0);
        metrics::counter!(REDELIVERY_EXPIRED_TOTAL, "channel" => c.target.label()).increment(0);
        let wanted = plan.redeliver.iter().filter(|(j, _, _)| *j == i).count();
        if wanted > 0 {
            tracing::info!(
                channel = %c.name,
                kind = c.target.label(),
                signals = wanted,
                handed = handed.get(&i).copied().unwrap_or(0),
                "signals this channel never took handed to it again"
            );
        }
    }
    Ok(())
}

/// A stored channel kind as a metric label: one of the four, never free text.
fn kind_label(kind: &str) -> &'static str {
    ["webhook", "slack", "discord", "telegram"].into_iter().find(|k| *k == kind).unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::Target;
    use crate::signal::Kind;

    fn signal(id: &str, kind: Kind) -> Signal {
        let mut s: Signal = serde_json::from_value(serde_json::json!({
            "v": 1, "signal_id": id, "type": kind, "project": "web", "issue_id": "i", "title": "t",
            "culprit": "", "level": "error", "platform": "", "minute": "2026-11-26T05:00:00Z",
            "window_minutes": 1, "count": 1, "users": 1, "baseline_per_minute": 0.0,
            "first_seen": "", "last_seen": "", "release": "", "environment": "",
            "top_frames": [], "request_url": "", "browser": "", "os": "", "rule": "",
            "folded": 0, "titles": [], "command": ""
        }))
        .unwrap();
        s.signal_id = id.to_owned();
        s
    }

    fn channel(name: &str, types: Vec<Kind>) -> Channel {
        Channel {
            name: name.into(),
            target: Target::Slack { url: String::new() },
            types,
            projects: vec![],
            rules: vec![],
            cooldown_min: 30,
        }
    }

    fn row(id: &str, channel: &str, outcome: DeliveryOutcome, attempts: u32) -> DeliveryRow {
        DeliveryRow {
            project: "web".into(),
            issue_id: "i".into(),
            signal_id: id.into(),
            channel: channel.into(),
            kind: "slack".into(),
            outcome: outcome.code().into(),
            attempts,
            error: if outcome == DeliveryOutcome::Failed { "status 500".into() } else { String::new() },
            outcome_rank: outcome.rank(),
            at: 1,
        }
    }

    #[test]
    fn only_signals_a_channel_never_took_go_again_and_old_ones_expire() {
        use DeliveryOutcome::*;
        let min = 60_000;
        let now = 1_000 * min;
        let (a, b) = (channel("a", vec![]), channel("b", vec![Kind::Spike]));
        let channels = [&a, &b];
        let mut on = OnTopic::default();
        // Produced 50, 40, 30, 20 and 10 minutes ago; "old" 90 minutes ago.
        for (i, id) in ["queued", "failed", "delivered", "cooled", "dropped"].iter().enumerate() {
            on.produced.insert((*id).into(), now - (50 - 10 * i as i64) * min);
            on.recent.push(signal(id, Kind::Spike));
        }
        on.produced.insert("old".into(), now - 90 * min);
        on.produced.insert("new".into(), now - min);
        on.recent.push(signal("new", Kind::NewIssue));
        let rows = vec![
            row("queued", "a", Queued, 0),
            // Failed in two process lives, never delivered.
            row("failed", "a", Queued, 0),
            row("failed", "a", Failed, 5),
            row("failed", "a", Queued, 5),
            row("failed", "a", Failed, 10),
            // Delivered on the second life: whatever came before.
            row("delivered", "a", Failed, 5),
            row("delivered", "a", Delivered, 6),
            row("delivered", "b", Queued, 0),
            row("cooled", "a", Cooled, 0),
            row("dropped", "b", Dropped, 0),
            row("old", "a", Failed, 5),
            row("old", "b", Delivered, 1),
            // A channel that is gone; a signal no longer on the topic.
            row("queued", "gone", Queued, 0),
            row("elsewhere", "a", Failed, 5),
            // "new" went nowhere: no row, not handed (a folded new issue looks like this).
        ];
        let p = plan(&channels, &on, rows, now, 60 * min);
        let got: Vec<(usize, &str, u32)> = p.redeliver.iter().map(|(i, s, n)| (*i, s.signal_id.as_str(), *n)).collect();
        assert_eq!(got, [(0, "queued", 0), (0, "failed", 10), (1, "delivered", 0), (1, "dropped", 0)]);
        assert_eq!(p.expired.len(), 1);
        let e = &p.expired[0];
        assert_eq!((e.signal_id.as_str(), e.channel.as_str(), e.outcome.as_str()), ("old", "a", "expired"));
        assert_eq!((e.attempts, e.error.as_str(), e.outcome_rank), (5, "status 500", Expired.rank()));
        // A channel that no longer wants the signal does not get it.
        let c = channel("b", vec![Kind::NewIssue]);
        let p = plan(&[&a, &c], &on, vec![row("dropped", "b", Dropped, 0)], now, 60 * min);
        assert!(p.redeliver.is_empty() && p.expired.is_empty(), "{p:?}");
    }
}
