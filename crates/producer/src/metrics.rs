//! Metric names of the producer (Prometheus).

/// HTTP requests to the ingestion endpoint, by `status` (the HTTP status code).
pub const REQUESTS_TOTAL: &str = "tracefold_producer_requests_total";
/// Events, by `outcome` (`accepted`, `invalid`, `failed`); invalid ones also by `reason` (a
/// [`tracefold_model::Reason::code`], the same as the `code` of the HTTP error body's detail).
pub const EVENTS_TOTAL: &str = "tracefold_producer_events_total";
/// Sentry envelope items, by `type` (bounded: event, transaction, attachment, session, ...,
/// other) and `outcome` (`accepted`, `skipped`).
pub const ENVELOPE_ITEMS_TOTAL: &str = "tracefold_producer_envelope_items_total";
/// Request handling time including Kafka acknowledgement, seconds.
pub const REQUEST_SECONDS: &str = "tracefold_producer_request_seconds";
/// Of a request answered 200 or 503 after publishing: the time from handing its first event
/// to librdkafka until Kafka answered for its last (batching, `linger.ms`, the broker's
/// acknowledgement, the delivery report), seconds. The rest of
/// [`REQUEST_SECONDS`] is reading, parsing and checking the request.
pub const KAFKA_SECONDS: &str = "tracefold_producer_kafka_seconds";

/// Outcome counts dropped (more projects in one flush interval than the producer keeps, or more
/// unacknowledged outcome records than it keeps for a retry); events themselves are not lost.
pub const OUTCOMES_DROPPED_TOTAL: &str = "tracefold_producer_outcomes_dropped_total";

/// Backpressure: the largest lag (events) of the watched consumer group on any partition of
/// the events topic, as last read.
pub const BACKPRESSURE_MAX_LAG_EVENTS: &str = "tracefold_producer_backpressure_max_lag_events";
/// Backpressure: that lag in bytes, estimated as lag times the average published event size.
pub const BACKPRESSURE_MAX_LAG_BYTES: &str = "tracefold_producer_backpressure_max_lag_bytes";
/// Backpressure: 1 while new events are refused, else 0.
pub const BACKPRESSURE_REFUSING: &str = "tracefold_producer_backpressure_refusing";
/// Backpressure: events refused (503 native, 429 Sentry) while the lag was over a bound.
pub const BACKPRESSURE_REFUSED_EVENTS_TOTAL: &str = "tracefold_producer_backpressure_refused_events_total";
/// Backpressure: reads of the lag that failed (each also a WARN log line).
pub const BACKPRESSURE_CHECK_FAILURES_TOTAL: &str = "tracefold_producer_backpressure_check_failures_total";

/// Source map uploads, by `outcome` (`stored`; `refused`: a 4xx answer such as a bad map or
/// key; `failed`: a 5xx answer, the object store or ClickHouse failed or too many uploads at
/// once).
pub const SOURCEMAP_UPLOADS_TOTAL: &str = "tracefold_producer_sourcemap_uploads_total";

/// Every metric this service emits (for documentation and dashboard checks).
pub const ALL: &[&str] = &[
    REQUESTS_TOTAL,
    EVENTS_TOTAL,
    ENVELOPE_ITEMS_TOTAL,
    REQUEST_SECONDS,
    KAFKA_SECONDS,
    BACKPRESSURE_MAX_LAG_EVENTS,
    BACKPRESSURE_MAX_LAG_BYTES,
    BACKPRESSURE_REFUSING,
    BACKPRESSURE_REFUSED_EVENTS_TOTAL,
    BACKPRESSURE_CHECK_FAILURES_TOTAL,
    OUTCOMES_DROPPED_TOTAL,
    SOURCEMAP_UPLOADS_TOTAL,
];
