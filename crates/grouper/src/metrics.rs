//! Metric names of the grouper (Prometheus), emitted once per batch.

/// Events read, by `outcome` (`accepted`, `rejected`, `duplicate`: a repeat of an event read
/// shortly before, see the reliability section of docs/operations.md).
pub const EVENTS_TOTAL: &str = "tracefold_grouper_events_total";
/// Events whose timestamp was missing or out of range and was set to the receive time.
pub const CLAMPED_TOTAL: &str = "tracefold_grouper_timestamps_clamped_total";
/// Batches emitted, by `kind` (`new`, `replay`).
pub const BATCHES_TOTAL: &str = "tracefold_grouper_batches_total";
/// Aggregate records produced.
pub const AGGREGATES_TOTAL: &str = "tracefold_grouper_aggregates_total";
/// Messages sent to the DLQ, by `reason` (a [`tracefold_model::Reason::code`]; the same code is
/// the record's `tracefold-reason` header).
pub const DLQ_TOTAL: &str = "tracefold_grouper_dlq_total";
/// Events per batch.
pub const BATCH_EVENTS: &str = "tracefold_grouper_batch_events";
/// Time from a batch's cut to its commit, seconds.
pub const EMIT_SECONDS: &str = "tracefold_grouper_emit_seconds";

/// Counter (labels `topic`, `partition`): events deleted by the broker's retention before this
/// group read them; each loss is also an ERROR log line. See the reliability section of docs/operations.md.
pub const EVENTS_LOST_TOTAL: &str = "tracefold_grouper_events_lost_total";

/// Counter: sample events cut to 64 KiB (the sample carries `_tracefold_truncated`).
pub const SAMPLES_TRUNCATED_TOTAL: &str = "tracefold_grouper_samples_truncated_total";

/// Counter: times the deduplication window of an assigned partition could not be read
/// completely (the broker stopped answering); deduplication is weaker until it refills.
pub const DEDUP_WINDOW_INCOMPLETE_TOTAL: &str = "tracefold_grouper_dedup_window_incomplete_total";

/// Counter (label `outcome`: `resolved`, `missing`, `timeout`, `malformed`): counted events
/// with minified JavaScript frames, by what source maps did for them. `missing` and `timeout`
/// group the event as without maps (weaker grouping, no data lost).
pub const SYMBOLICATION_TOTAL: &str = "tracefold_grouper_symbolication_total";

/// Counter: issue ids left out of an aggregate's `merged_from` because it already named 8
/// (docs/sourcemaps.md "Late maps"): those secondaries are not folded into their mapped issue
/// by this batch (a later batch's record may still name them). Each batch that leaves some
/// out is also a WARN log line.
pub const MERGED_FROM_DROPPED_TOTAL: &str = "tracefold_grouper_merged_from_dropped_total";

/// Counter: failed seeks back to a batch whose range could not be recorded (the range commit
/// failed while the partition stayed ours). Each is a WARN line; after 5 in a row the loop
/// stops with an ERROR line and the process exits non-zero, so that the restart reads the
/// range again from the last commit instead of passing over it.
pub const REWIND_SEEK_FAILURES_TOTAL: &str = "tracefold_grouper_rewind_seek_failures_total";

/// Every metric this service emits (for documentation and dashboard checks).
pub const ALL: &[&str] = &[
    EVENTS_TOTAL,
    CLAMPED_TOTAL,
    BATCHES_TOTAL,
    AGGREGATES_TOTAL,
    DLQ_TOTAL,
    BATCH_EVENTS,
    EMIT_SECONDS,
    EVENTS_LOST_TOTAL,
    DEDUP_WINDOW_INCOMPLETE_TOTAL,
    SAMPLES_TRUNCATED_TOTAL,
    SYMBOLICATION_TOTAL,
    MERGED_FROM_DROPPED_TOTAL,
    REWIND_SEEK_FAILURES_TOTAL,
];
