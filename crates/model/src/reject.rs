//! Why an event or a record was refused: one bounded set of reasons, used as the metric label
//! (`reason`), the DLQ header (`tracefold-reason`), and in HTTP error bodies.

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
