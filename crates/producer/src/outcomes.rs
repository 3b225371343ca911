//! Outcomes at the HTTP edge: per (project, minute, outcome, reason), how many events were
//! accepted (after Kafka acknowledged them) or refused (rate limited, too large, invalid,
//! overloaded), counted in memory and published to the outcomes topic every
//! [`FLUSH_INTERVAL`] and at shutdown.
//!
//! The request path pays one mutex and a few map lookups per request (not per event); a
//! project's map is allocated once per flush interval. Each flush's records carry the source
//! `producer/<instance>/<flush>` (a random instance id per process), so that a flush sent again
//! after a failed delivery is the same records and the writer stores them once.
//!
//! What can be lost, and where it shows: a producer killed with `-9` loses the counts of up to
//! one flush interval (outcome counts, not events); more than [`MAX_PROJECTS`] projects in one
//! interval, or more than [`MAX_UNSENT`] records waiting while Kafka is down, drop counts. Both
//! are counted in `tracefold_producer_outcomes_dropped_total` and logged.

use crate::metrics as m;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tracefold_model::outcome::{minute_of_ms, reasons};
use tracefold_model::{Outcome, OutcomeRecord, Reason};

/// How often counts are published.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Most distinct projects counted per flush interval (refusals of random project names must
/// not grow memory without bound).
pub const MAX_PROJECTS: usize = 10_000;
/// Most records kept for a retry while the outcomes topic does not acknowledge.
pub const MAX_UNSENT: usize = 100_000;

type Counts = HashMap<String, HashMap<(i64, Outcome, &'static str), u64>>;

/// The producer's outcome counters.
#[derive(Debug)]
pub struct Outcomes {
    instance: String,
    seq: AtomicU64,
    counts: Mutex<Counts>,
    /// Records of earlier flushes that Kafka did not acknowledge: sent again, as they are.
    unsent: Mutex<Vec<OutcomeRecord>>,
}

impl Default for Outcomes {
    fn default() -> Self {
        Self::new()
    }
}

impl Outcomes {
    /// Counters of a new producer instance (a random instance id).
    pub fn new() -> Self {
        metrics::counter!(m::OUTCOMES_DROPPED_TOTAL).increment(0);
        Self {
            instance: format!("{:016x}", rand::random::<u64>()),
            seq: AtomicU64::new(0),
            counts: Mutex::new(HashMap::new()),
            unsent: Mutex::new(Vec::new()),
        }
    }

    /// Counts `n` events of `project` with `outcome` for `reason`, now.
    pub fn record(&self, project: &str, outcome: Outcome, reason: &'static str, n: u64) {
        self.record_at(project, outcome, reason, n, tracefold_model::time::now_ms());
    }

    fn record_at(&self, project: &str, outcome: Outcome, reason: &'static str, n: u64, now_ms: i64) {
        if n == 0 {
            return;
        }
        let key = (minute_of_ms(now_ms), outcome, reason);
        let mut counts = self.counts.lock().expect("not poisoned");
        if let Some(per) = counts.get_mut(project) {
            *per.entry(key).or_default() += n;
        } else if counts.len() < MAX_PROJECTS {
            counts.entry(project.to_owned()).or_default().insert(key, n);
        } else {
            drop(counts);
            metrics::counter!(m::OUTCOMES_DROPPED_TOTAL).increment(n);
            tracing::warn!(project, outcome = %outcome, reason, n, "too many projects in one outcome interval; count dropped");
        }
    }

    /// Counts the events of a refused request of `project`: `status` the HTTP status,
    /// `reason` the refusal's own reason (rate-limit scope, ...), `details` the per-event
    /// problems and `events` how many events the request held, when that is known (a request
    /// refused before its body was read counts as one).
    pub fn record_refusal(
        &self,
        project: &str,
        status: u16,
        reason: Option<&'static str>,
        details: &[Reason],
        events: Option<usize>,
    ) {
        let n = events.map_or(1, |e| e as u64);
        match status {
            429 => self.record(project, Outcome::RateLimited, reason.unwrap_or(reasons::PROJECT_RATE), n),
            503 => self.record(project, Outcome::RateLimited, reason.unwrap_or(reasons::OVERLOADED), n),
            400 | 413 if !details.is_empty() => {
                for r in Reason::ALL {
                    let k = details.iter().filter(|d| **d == r).count() as u64;
                    let outcome = if r == Reason::TooLarge { Outcome::TooLarge } else { Outcome::Invalid };
                    self.record(project, outcome, r.code(), k);
                }
                // A batch is all or nothing: its good events were refused with the bad ones.
                let rest = n.saturating_sub(details.len() as u64);
                self.record(project, Outcome::Invalid, reasons::WITH_INVALID, rest);
            }
            413 => self.record(project, Outcome::TooLarge, reason.unwrap_or(reasons::REQUEST_TOO_LARGE), n),
            400 => self.record(project, Outcome::Invalid, reason.unwrap_or(reasons::BAD_REQUEST), n),
            // 401, 403, 404, 408, 415, 500: not about events of a known project.
            _ => {}
        }
    }

    /// Takes the counts so far as records of a new flush (with the records of earlier
    /// flushes that were not acknowledged, first).
    pub fn take(&self) -> Vec<OutcomeRecord> {
        let counts = std::mem::take(&mut *self.counts.lock().expect("not poisoned"));
        let mut out = std::mem::take(&mut *self.unsent.lock().expect("not poisoned"));
        if counts.is_empty() {
            return out;
        }
        let source = format!("producer/{}/{}", self.instance, self.seq.fetch_add(1, Ordering::SeqCst));
        for (project, per) in counts {
            for ((minute, outcome, reason), quantity) in per {
                out.push(OutcomeRecord {
                    v: 1,
                    project: project.clone(),
                    minute,
                    outcome,
                    reason: reason.to_owned(),
                    quantity,
                    source: source.clone(),
                });
            }
        }
        out
    }

    /// Keeps `records` to be sent again with the next flush (bounded by [`MAX_UNSENT`]). Those
    /// beyond the bound are dropped: counted in `tracefold_producer_outcomes_dropped_total` (by
    /// their events) and in one WARN line. Returns how many records were dropped.
    pub fn put_back(&self, records: Vec<OutcomeRecord>) -> usize {
        let mut unsent = self.unsent.lock().expect("not poisoned");
        let (mut dropped, mut events) = (0usize, 0u64);
        for r in records {
            if unsent.len() < MAX_UNSENT {
                unsent.push(r);
            } else {
                dropped += 1;
                events = events.saturating_add(r.quantity);
            }
        }
        drop(unsent);
        if dropped > 0 {
            metrics::counter!(m::OUTCOMES_DROPPED_TOTAL).increment(events);
            tracing::warn!(
                records = dropped,
                events,
                max_unsent = MAX_UNSENT,
                "outcome records dropped: too many wait for Kafka already; those events are missing from the outcomes"
            );
        }
        dropped
    }

    /// Publishes what was counted to `topic` and waits for Kafka's acknowledgements; what is
    /// not acknowledged is kept and sent again next time.
    pub async fn flush(&self, producer: &FutureProducer, topic: &str) {
        let records = self.take();
        if records.is_empty() {
            return;
        }
        // Strings and integers only: serializing into memory cannot fail.
        let payloads: Vec<Vec<u8>> =
            records.iter().map(|r| serde_json::to_vec(r).expect("an outcome record serializes")).collect();
        let mut futures = Vec::with_capacity(records.len());
        for (r, payload) in records.iter().zip(&payloads) {
            let rec = FutureRecord::to(topic).key(r.key()).payload(payload.as_slice());
            futures.push(producer.send(rec, Duration::from_secs(5)));
        }
        let results = futures::future::join_all(futures).await;
        let mut failed = Vec::new();
        let mut error = None;
        for (r, res) in records.into_iter().zip(results) {
            if let Err((e, _)) = res {
                error = Some(e.to_string());
                failed.push(r);
            }
        }
        if !failed.is_empty() {
            tracing::warn!(
                records = failed.len(),
                error = error.unwrap_or_default(),
                topic,
                "outcome records not acknowledged; sending them again with the next flush"
            );
            self.put_back(failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(recs: &[OutcomeRecord]) -> Vec<(String, i64, &'static str, String, u64)> {
        let mut v: Vec<_> = recs
            .iter()
            .map(|r| (r.project.clone(), r.minute, r.outcome.code(), r.reason.clone(), r.quantity))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn counts_merge_per_project_minute_outcome_and_reason() {
        let o = Outcomes::new();
        o.record_at("a", Outcome::Accepted, reasons::NONE, 3, 60_000);
        o.record_at("a", Outcome::Accepted, reasons::NONE, 2, 119_999);
        o.record_at("a", Outcome::Accepted, reasons::NONE, 1, 120_000);
        o.record_at("b", Outcome::RateLimited, reasons::KEY_RATE, 4, 60_000);
        o.record_at("b", Outcome::RateLimited, reasons::KEY_RATE, 0, 60_000);
        let recs = o.take();
        assert_eq!(
            totals(&recs),
            [
                ("a".into(), 60, "accepted", String::new(), 5),
                ("a".into(), 120, "accepted", String::new(), 1),
                ("b".into(), 60, "rate_limited", "key_rate".into(), 4),
            ]
        );
        assert!(recs.iter().all(|r| r.source == recs[0].source && r.source.starts_with("producer/")));
        assert!(o.take().is_empty(), "taken once");
        o.record("a", Outcome::Accepted, reasons::NONE, 1);
        assert_ne!(o.take()[0].source, recs[0].source, "each flush is its own source");
    }

    #[test]
    fn refusals_count_every_event_of_the_request() {
        let o = Outcomes::new();
        // Two bad lines of five: the three good ones were refused with them.
        o.record_refusal("p", 400, None, &[Reason::Invalid, Reason::Malformed], Some(5));
        o.record_refusal("p", 413, None, &[Reason::TooLarge], Some(1));
        o.record_refusal("p", 429, Some(reasons::KEY_RATE), &[], Some(7));
        o.record_refusal("p", 429, None, &[], None);
        o.record_refusal("p", 503, None, &[], Some(2));
        o.record_refusal("p", 413, Some(reasons::TOO_MANY_EVENTS), &[], Some(9));
        o.record_refusal("p", 403, None, &[], Some(9));
        let got: Vec<(&str, String, u64)> = totals(&o.take()).into_iter().map(|(_, _, oc, r, q)| (oc, r, q)).collect();
        let mut want = vec![
            ("invalid", "invalid".to_string(), 1),
            ("invalid", "malformed".to_string(), 1),
            ("invalid", "refused_with_batch".to_string(), 3),
            ("too_large", "too_large".to_string(), 1),
            ("rate_limited", "key_rate".to_string(), 7),
            ("rate_limited", "project_rate".to_string(), 1),
            ("rate_limited", "overloaded".to_string(), 2),
            ("too_large", "too_many_events".to_string(), 9),
        ];
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn unsent_records_are_sent_again_unchanged_and_bounded() {
        let o = Outcomes::new();
        o.record("p", Outcome::Accepted, reasons::NONE, 2);
        let first = o.take();
        assert_eq!(o.put_back(first.clone()), 0);
        o.record("p", Outcome::Accepted, reasons::NONE, 1);
        let again = o.take();
        assert_eq!(&again[..first.len()], &first[..], "the same records, the same sources");
        assert_eq!(again.len(), first.len() + 1);
        assert_eq!(o.put_back(vec![first[0].clone(); MAX_UNSENT + 3]), 3, "the three beyond the bound are dropped");
        assert_eq!(o.take().len(), MAX_UNSENT);
    }

    #[test]
    fn projects_are_bounded_per_interval() {
        let o = Outcomes::new();
        for i in 0..MAX_PROJECTS + 5 {
            o.record_at(&format!("p{i}"), Outcome::RateLimited, reasons::UNREGISTERED_RATE, 1, 0);
        }
        assert_eq!(o.take().len(), MAX_PROJECTS);
    }
}
