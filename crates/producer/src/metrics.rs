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

/// Outcome counts dropped (more projects in one flush interval than the producer keeps, or more
/// unacknowledged outcome records than it keeps for a retry); events themselves are not lost.
pub const OUTCOMES_DROPPED_TOTAL: &str = "tracefold_producer_outcomes_dropped_total";

/// Every metric this service emits (for documentation and dashboard checks).
pub const ALL: &[&str] = &[REQUESTS_TOTAL, EVENTS_TOTAL, ENVELOPE_ITEMS_TOTAL, REQUEST_SECONDS, OUTCOMES_DROPPED_TOTAL];
