//! The detector's metric names (Prometheus, on `/metrics`).

/// Counter: signals produced (to the signals topic and the channels), by `type`.
pub const SIGNALS_TOTAL: &str = "tracefold_detector_signals_total";
/// Counter: signals found again (the same detection, the same id) that were already on the
/// signals topic or already produced by this process, so not sent again; by `type`. A
/// restarted detector that re-reads aggregates counts its recomputed signals here.
pub const SIGNALS_DEDUPLICATED_TOTAL: &str = "tracefold_detector_signals_deduplicated_total";
/// Counter: aggregate records consumed (readable or not). Counted once the minutes they
/// touch were evaluated (every 500 ms) and no judgement waits for the next evaluation, so a
/// count that reached the aggregates topic's end means every signal those records cause, up
/// to the watermark, has been produced.
pub const RECORDS_TOTAL: &str = "tracefold_detector_records_total";
/// Gauge: issues the detector holds as resolved and not seen since (from ClickHouse's issue
/// statuses, re-read while running).
pub const RESOLVED_ISSUES: &str = "tracefold_detector_resolved_issues";
/// Counter: notifications, by `channel` kind (`webhook`, `slack`, `discord`, `telegram`) and
/// `outcome` (`sent`, `failed`, `dropped` (queue full), `cooled`, `rate_limited`).
pub const NOTIFICATIONS_TOTAL: &str = "tracefold_detector_notifications_total";

/// Counter (labels `topic`, `partition`): aggregate records deleted by the broker's retention before this
/// group read them; each loss is also an ERROR log line. See the reliability section of docs/operations.md.
pub const EVENTS_LOST_TOTAL: &str = "tracefold_detector_events_lost_total";

/// Gauge: the detector's event-time watermark, Unix seconds (a minute start): the minimum over
/// its aggregates partitions that are not idle of the latest minute of their records, each
/// record's minute taken no later than when it was received. Minutes up to it minus
/// `lateness_min` are evaluated. 0 from start-up until the first records.
pub const WATERMARK_SECONDS: &str = "tracefold_detector_watermark_seconds";
/// Counter: aggregate records more than `allowed_lateness_min` behind the watermark, not used
/// for detection (their events are stored and counted in ClickHouse all the same); each
/// evaluation that finds some also logs a WARN line.
pub const LATE_RECORDS_TOTAL: &str = "tracefold_detector_late_records_total";
/// Counter: aggregate records dated after the minute they were received in (clocks ahead):
/// detection counts them in the minute they were received in, and they do not move the
/// watermark past it.
pub const FUTURE_RECORDS_TOTAL: &str = "tracefold_detector_future_records_total";

/// Counter: `new_issue` signals not notified one by one because their project had more than
/// `storm.max_new_issues` new issues in the storm window; they are on the signals topic, and
/// the window's `new_issue_digest` counts them.
pub const STORM_FOLDED_TOTAL: &str = "tracefold_detector_storm_folded_total";

/// Counter: aggregate records the detector could not read, or with implausible values, and
/// skipped (each also a WARN line; the writer sends the same record to the DLQ).
pub const UNREADABLE_RECORDS_TOTAL: &str = "tracefold_detector_unreadable_records_total";

/// Gauge: issues whose state the detector holds (active issues; see `evict_idle_min` and
/// `max_issues`).
pub const ISSUES_TRACKED: &str = "tracefold_detector_issues_tracked";
/// Counter: issues whose state was evicted, by `reason` (`idle`: no records for
/// `evict_idle_min`; `max_issues`: more issues active than that, the least recently seen
/// first). Their state is read back from ClickHouse when they return; nothing is lost.
pub const ISSUES_EVICTED_TOTAL: &str = "tracefold_detector_issues_evicted_total";
/// Counter: issues read from ClickHouse when their records arrived and the detector did not
/// hold them (after a start, a partition takeover or an eviction), by `outcome` (`known`: seen
/// before; `new`; `failed`: ClickHouse unreadable for 30 s, taken as known without history, so
/// no `new_issue` for them; each also a WARN line).
pub const ISSUE_LOOKUPS_TOTAL: &str = "tracefold_detector_issue_lookups_total";
/// Counter: signals handed to a channel again at start-up (a channel's delivery rows say it
/// never took them, and they are younger than `[detector.retry] redeliver_max_age_min`), by
/// `channel` kind. Their deliveries count in [`NOTIFICATIONS_TOTAL`] as usual.
pub const REDELIVERED_TOTAL: &str = "tracefold_detector_redelivered_total";
/// Counter: signals a channel never took and that were older than `redeliver_max_age_min`
/// when a detector started: given up for good (an `expired` delivery row, a WARN line), by
/// `channel` kind.
pub const REDELIVERY_EXPIRED_TOTAL: &str = "tracefold_detector_redelivery_expired_total";
/// Counter: delivery rows written to ClickHouse's `signal_deliveries`.
pub const DELIVERY_RECORDS_TOTAL: &str = "tracefold_detector_delivery_records_total";
/// Counter: inserts of delivery rows that failed (each a WARN line); the rows are kept and
/// inserted again.
pub const DELIVERY_RECORD_FAILURES_TOTAL: &str = "tracefold_detector_delivery_record_failures_total";
/// Counter: delivery rows never written (more than 10,000 waiting while ClickHouse fails, or
/// still unwritten at shutdown): a start-up may then hand such a signal again to a channel
/// that took it, or not hand again one it did not take.
pub const DELIVERY_RECORDS_DROPPED_TOTAL: &str = "tracefold_detector_delivery_records_dropped_total";

/// Every metric the detector emits (besides the Kafka consumer-lag gauge of the runtime).
pub const ALL: &[&str] = &[
    SIGNALS_TOTAL,
    SIGNALS_DEDUPLICATED_TOTAL,
    RECORDS_TOTAL,
    RESOLVED_ISSUES,
    NOTIFICATIONS_TOTAL,
    EVENTS_LOST_TOTAL,
    WATERMARK_SECONDS,
    LATE_RECORDS_TOTAL,
    FUTURE_RECORDS_TOTAL,
    STORM_FOLDED_TOTAL,
    UNREADABLE_RECORDS_TOTAL,
    ISSUES_TRACKED,
    ISSUES_EVICTED_TOTAL,
    ISSUE_LOOKUPS_TOTAL,
    REDELIVERED_TOTAL,
    REDELIVERY_EXPIRED_TOTAL,
    DELIVERY_RECORDS_TOTAL,
    DELIVERY_RECORD_FAILURES_TOTAL,
    DELIVERY_RECORDS_DROPPED_TOTAL,
];
