//! Why an event or a record was refused: one bounded set of reasons, used end to end. The same
//! [`Reason::code`] is
//!
//! - the `code` of each entry of an HTTP error body's `details` (the producer),
//! - the `tracefold-reason` header of a DLQ record (grouper and writer, built by
//!   `tracefold_runtime::kafka::DlqRecord`),
//! - the `reason` label of `tracefold_producer_events_total{outcome="invalid"}` and
//!   `tracefold_grouper_dlq_total`,
//! - a row of the "Rejection reasons" table in `docs/operations.md` (a test compares them).
//!
//! A reason says what is wrong with one event or record. Refusals of a whole request (401
//! without a key, 403, 408, 413 for a request body or too many events, 415, 429 rate limited,
//! 503 overloaded) are not reasons: they say nothing about an event, never reach the DLQ, and
//! are told by the HTTP status alone (and counted by `tracefold_producer_requests_total{status}`).

use std::fmt;

/// A bounded rejection reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Larger than the size limit.
    TooLarge,
    /// Nested deeper than [`crate::json::MAX_DEPTH`].
    TooDeep,
    /// Not a JSON object of the event's shape.
    Malformed,
    /// Breaks a validation rule (the detail names the field).
    Invalid,
    /// Processing failed unexpectedly (the per-event fault barrier caught it).
    Internal,
    /// An aggregate record that cannot be published (over the broker's message size).
    AggregateTooLarge,
}

impl Reason {
    /// Every reason, for docs and dashboards.
    pub const ALL: [Reason; 6] =
        [Self::TooLarge, Self::TooDeep, Self::Malformed, Self::Invalid, Self::Internal, Self::AggregateTooLarge];

    /// The reason of a code, the inverse of [`Reason::code`] (for readers of DLQ headers).
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The label value: lower-case, stable.
    pub fn code(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::TooDeep => "too_deep",
            Self::Malformed => "malformed",
            Self::Invalid => "invalid",
            Self::Internal => "internal",
            Self::AggregateTooLarge => "aggregate_too_large",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A refusal: the reason and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Rejection {
    /// The bounded reason.
    pub reason: Reason,
    /// What exactly is wrong (field, sizes, parser message).
    pub detail: String,
}

impl Rejection {
    /// A rejection with a detail.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_bounded_and_read_back() {
        let mut seen = std::collections::BTreeSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.code()), "{r:?}");
            assert!(r.code().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{r:?}");
            assert_eq!(Reason::from_code(r.code()), Some(r));
            assert_eq!(r.to_string(), r.code());
        }
        assert_eq!(Reason::from_code("rate_limited"), None);
    }
}
