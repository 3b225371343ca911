//! Outcomes: what became of events, per project, minute and reason, for users (as Sentry's
//! outcomes dataset). Producers of outcomes (the producer's HTTP edge, the grouper) publish
//! [`OutcomeRecord`]s to the outcomes topic; the writer stores them in ClickHouse
//! (`outcomes` table), where `tracefold outcomes` reads them.
//!
//! A record is identified by (project, minute, outcome, reason, source): `source` names who
//! counted it and which unit of work it covers (a producer instance and flush number; a
//! grouper batch), so that a record published twice, or re-emitted by a rebuilt batch, is the
//! same record and is stored once (ClickHouse `ReplacingMergeTree` on that key).
//! JSON Schema in `schemas/outcome.v1.schema.json`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What became of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Published to the events topic by the producer (Kafka acknowledged them).
    Accepted,
    /// Refused by a rate limit or by overload (HTTP 429 or 503); the client may retry.
    RateLimited,
    /// Refused as invalid (HTTP 400), with the [`crate::Reason`] code.
    Invalid,
    /// Refused as too large (HTTP 413).
    TooLarge,
    /// Read by the grouper and sent to the DLQ, with the [`crate::Reason`] code.
    Dlq,
    /// Deleted by Kafka's retention before a consumer read them.
    Lost,
    /// Recognised as a duplicate and not counted again.
    Duplicate,
}

impl Outcome {
    /// Every outcome, in display order.
    pub const ALL: [Outcome; 7] =
        [Self::Accepted, Self::RateLimited, Self::Invalid, Self::TooLarge, Self::Dlq, Self::Lost, Self::Duplicate];

    /// The stored value: lower-case, stable.
    pub fn code(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::RateLimited => "rate_limited",
            Self::Invalid => "invalid",
            Self::TooLarge => "too_large",
            Self::Dlq => "dlq",
            Self::Lost => "lost",
            Self::Duplicate => "duplicate",
        }
    }

    /// The outcome of a code, the inverse of [`Outcome::code`].
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.code() == code)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Reason codes of outcomes that are not a [`crate::Reason`] (refusals of whole requests).
pub mod reasons {
    /// Accepted events carry no reason.
    pub const NONE: &str = "";
    /// Over the per-project rate limit (429).
    pub const PROJECT_RATE: &str = "project_rate";
    /// Over the per-key rate limit (429).
    pub const KEY_RATE: &str = "key_rate";
    /// Over the shared limit of unregistered projects (429).
    pub const UNREGISTERED_RATE: &str = "unregistered_rate";
    /// The producer was overloaded or Kafka did not keep up (503).
    pub const OVERLOADED: &str = "overloaded";
    /// The producer pushed back because the pipeline behind it lags (503).
    pub const BACKPRESSURE: &str = "backpressure";
    /// More events in one request than a rate limit's burst, or than
    /// `http.max_events_per_request` (413).
    pub const TOO_MANY_EVENTS: &str = "too_many_events";
    /// The request body was over `http.max_body_bytes` (413).
    pub const REQUEST_TOO_LARGE: &str = "request_too_large";
    /// The request could not be read as events at all (400: not UTF-8, empty, a malformed
    /// envelope, bad compression).
    pub const BAD_REQUEST: &str = "bad_request";
    /// Valid events refused with the invalid ones of the same request (a batch is all or
    /// nothing).
    pub const WITH_INVALID: &str = "refused_with_batch";
    /// Deleted by retention before the grouper read them.
    pub const RETENTION: &str = "retention";
    /// A copy of an event read shortly before it (same project and `event_id`), not counted.
    pub const RESENT: &str = "resent";
}

/// One outcome record on the outcomes topic: `quantity` events of `project` had `outcome`
/// (for `reason`) in the minute starting at `minute`, as counted by `source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeRecord {
    /// Format version, 1.
    pub v: u8,
    /// Project slug; empty when unknown (an event too broken to name one).
    pub project: String,
    /// Start of the minute, Unix seconds.
    pub minute: i64,
    /// What became of the events.
    pub outcome: Outcome,
    /// Why: a [`crate::Reason`] code, one of [`reasons`], or empty.
    pub reason: String,
    /// How many events.
    pub quantity: u64,
    /// Who counted them and which unit of work this is: unique per record and the same when
    /// the record is published again (`producer/<instance>/<flush>`,
    /// `grouper/<epoch>/<topic>/<partition>/<first offset>`).
    pub source: String,
}

impl OutcomeRecord {
    /// The Kafka message key: the project (a project's outcomes stay in one partition).
    pub fn key(&self) -> &str {
        &self.project
    }
}

/// The start of the minute of `ms` (Unix milliseconds), in Unix seconds.
pub fn minute_of_ms(ms: i64) -> i64 {
    ms.div_euclid(60_000) * 60
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_use_codes() {
        let r = OutcomeRecord {
            v: 1,
            project: "checkout-ü".into(),
            minute: 1_700_000_040,
            outcome: Outcome::RateLimited,
            reason: reasons::PROJECT_RATE.into(),
            quantity: 3,
            source: "producer/abc/7".into(),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"outcome\":\"rate_limited\""), "{json}");
        assert_eq!(serde_json::from_str::<OutcomeRecord>(&json).unwrap(), r);
        assert!(serde_json::from_str::<OutcomeRecord>(&json.replace("rate_limited", "eaten")).is_err());
    }

    #[test]
    fn codes_round_trip() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_code(o.code()), Some(o));
            assert_eq!(serde_json::to_string(&o).unwrap(), format!("\"{}\"", o.code()));
        }
        assert_eq!(Outcome::from_code("nope"), None);
    }

    #[test]
    fn minutes_start_on_the_minute_also_before_1970() {
        assert_eq!(minute_of_ms(1_700_000_059_999), 1_700_000_040);
        assert_eq!(minute_of_ms(-1), -60);
        assert_eq!(minute_of_ms(0), 0);
    }
}
