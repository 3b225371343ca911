//! Outcome records of a batch: per (project, minute received, reason), how many of its events
//! went to the DLQ. They are produced with the batch's other records, before the commit past
//! it, and are a deterministic function of the batch: a rebuilt batch re-emits identical
//! records, which the writer stores once.

use crate::batch::BatchOutput;
use std::collections::BTreeMap;
use tracefold_model::outcome::{minute_of_ms, reasons};
use tracefold_model::validate::is_project_slug;
use tracefold_model::{Outcome, OutcomeRecord};
use tracefold_runtime::consumer::Loss;

/// The project an event names, when it names a valid one; empty otherwise (a malformed event).
/// Total on any bytes: a failed parse is "unknown".
pub fn project_of(payload: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Named<'a> {
        #[serde(borrow, default)]
        project: Option<std::borrow::Cow<'a, str>>,
    }
    match serde_json::from_slice::<Named<'_>>(payload) {
        Ok(Named { project: Some(p) }) if is_project_slug(&p) => p.into_owned(),
        _ => String::new(),
    }
}

/// The DLQ outcome records of `out`, a batch of `topic` partition `partition` read under
/// `epoch`. Their source is `grouper/<epoch>/<topic>/<partition>/<first rejected offset>`: the
/// rejected offsets of a range are the same whenever the range is rebuilt, and belong to no
/// other batch.
pub fn dlq_outcomes(out: &BatchOutput, epoch: &str, topic: &str, partition: i32) -> Vec<OutcomeRecord> {
    let Some(first) = out.rejected.iter().map(|r| r.offset).min() else { return Vec::new() };
    let mut counts: BTreeMap<(String, i64, &'static str), u64> = BTreeMap::new();
    for r in &out.rejected {
        let key = (project_of(&r.payload), minute_of_ms(r.received_ms), r.rejection.reason.code());
        *counts.entry(key).or_default() += 1;
    }
    let source = format!("grouper/{epoch}/{topic}/{partition}/{first}");
    counts
        .into_iter()
        .map(|((project, minute, reason), quantity)| OutcomeRecord {
            v: 1,
            project,
            minute,
            outcome: Outcome::Dlq,
            reason: reason.to_owned(),
            quantity,
            source: source.clone(),
        })
        .collect()
}

/// The duplicate outcome records of `out` (re-sent copies, not counted), per (project, minute
/// received), reason `resent`. Their source is
/// `grouper-dup/<epoch>/<topic>/<partition>/<first duplicate offset>`: deterministic, like the
/// DLQ records.
pub fn duplicate_outcomes(out: &BatchOutput, epoch: &str, topic: &str, partition: i32) -> Vec<OutcomeRecord> {
    let Some(first) = out.duplicates.iter().map(|d| d.offset).min() else { return Vec::new() };
    let mut counts: BTreeMap<(&str, i64), u64> = BTreeMap::new();
    for d in &out.duplicates {
        *counts.entry((d.project.as_str(), minute_of_ms(d.received_ms))).or_default() += 1;
    }
    let source = format!("grouper-dup/{epoch}/{topic}/{partition}/{first}");
    counts
        .into_iter()
        .map(|((project, minute), quantity)| OutcomeRecord {
            v: 1,
            project: project.to_owned(),
            minute,
            outcome: Outcome::Duplicate,
            reason: reasons::RESENT.to_owned(),
            quantity,
            source: source.clone(),
        })
        .collect()
}

/// The outcome records of events lost to retention before the grouper read them (project
/// unknown, reason `retention`), one per gap. Their source is
/// `grouper-lost/<epoch>/<topic>/<partition>/<first offset lost>`: a restart from the same
/// commit finds the same gap and re-emits the same record.
pub fn lost_outcomes(losses: &[Loss], epoch: &str, topic: &str) -> Vec<OutcomeRecord> {
    losses
        .iter()
        .filter(|l| l.lost > 0)
        .map(|l| OutcomeRecord {
            v: 1,
            project: String::new(),
            minute: minute_of_ms(l.next_timestamp_ms),
            outcome: Outcome::Lost,
            reason: reasons::RETENTION.to_owned(),
            quantity: l.lost,
            source: format!("grouper-lost/{epoch}/{topic}/{}/{}", l.partition, l.expected),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Rejected;
    use tracefold_model::{Reason, Rejection};

    fn rej(offset: i64, payload: &str, reason: Reason, received_ms: i64) -> Rejected {
        Rejected { offset, rejection: Rejection::new(reason, "x"), payload: payload.as_bytes().to_vec(), received_ms }
    }

    #[test]
    fn projects_are_read_when_valid_and_unknown_otherwise() {
        assert_eq!(project_of(br#"{"project":"shop","message":1}"#), "shop");
        assert_eq!(project_of(br#"{"project":"Not A Slug"}"#), "");
        assert_eq!(project_of(br#"{"project":"sh\u00f6p"}"#), "");
        assert_eq!(project_of(b"not json \xff"), "");
        assert_eq!(project_of(&b"[".repeat(100_000)), "");
        assert_eq!(project_of(br#"{"message":"no project"}"#), "");
    }

    #[test]
    fn rejected_events_are_counted_per_project_minute_and_reason_deterministically() {
        let out = BatchOutput {
            rejected: vec![
                rej(12, r#"{"project":"a"}"#, Reason::Invalid, 60_000),
                rej(10, "{", Reason::Malformed, 61_000),
                rej(15, r#"{"project":"a"}"#, Reason::Invalid, 119_999),
                rej(17, r#"{"project":"a"}"#, Reason::Invalid, 120_000),
            ],
            ..BatchOutput::default()
        };
        let recs = dlq_outcomes(&out, "e", "t", 3);
        let got: Vec<(&str, i64, &str, u64)> =
            recs.iter().map(|r| (r.project.as_str(), r.minute, r.reason.as_str(), r.quantity)).collect();
        assert_eq!(got, [("", 60, "malformed", 1), ("a", 60, "invalid", 2), ("a", 120, "invalid", 1)]);
        assert!(recs.iter().all(|r| r.source == "grouper/e/t/3/10" && r.outcome == Outcome::Dlq));
        assert_eq!(dlq_outcomes(&out, "e", "t", 3), recs, "a rebuilt batch emits the same records");
        assert!(dlq_outcomes(&BatchOutput::default(), "e", "t", 3).is_empty());
    }

    #[test]
    fn duplicates_are_counted_per_project_and_minute_deterministically() {
        use crate::batch::Duplicate;
        let dup = |offset, project: &str, received_ms| Duplicate { offset, project: project.into(), received_ms };
        let out = BatchOutput {
            duplicates: vec![dup(20, "a", 60_000), dup(22, "a", 61_000), dup(23, "b", 130_000)],
            ..BatchOutput::default()
        };
        let recs = duplicate_outcomes(&out, "e", "t", 1);
        let got: Vec<(&str, i64, u64)> = recs.iter().map(|r| (r.project.as_str(), r.minute, r.quantity)).collect();
        assert_eq!(got, [("a", 60, 2), ("b", 120, 1)]);
        assert!(recs
            .iter()
            .all(|r| r.source == "grouper-dup/e/t/1/20" && r.outcome == Outcome::Duplicate && r.reason == "resent"));
        assert_eq!(duplicate_outcomes(&out, "e", "t", 1), recs);
        assert!(duplicate_outcomes(&BatchOutput::default(), "e", "t", 1).is_empty());
    }

    #[test]
    fn each_gap_is_one_lost_record_named_by_its_first_offset() {
        let losses = [
            Loss { partition: 2, expected: 100, lost: 40, next_timestamp_ms: 125_000 },
            Loss { partition: 0, expected: 5, lost: 0, next_timestamp_ms: 0 },
        ];
        let recs = lost_outcomes(&losses, "e", "t");
        assert_eq!(recs.len(), 1);
        let r = &recs[0];
        assert_eq!(
            (r.project.as_str(), r.minute, r.outcome, r.reason.as_str(), r.quantity),
            ("", 120, Outcome::Lost, "retention", 40)
        );
        assert_eq!(r.source, "grouper-lost/e/t/2/100");
    }
}
