//! Metric names of the producer (Prometheus).

/// HTTP requests to the ingestion endpoint, by `status` (the HTTP status code).
pub const REQUESTS_TOTAL: &str = "tracefold_producer_requests_total";
/// Events, by `outcome` (`accepted`, `invalid`, `failed`).
pub const EVENTS_TOTAL: &str = "tracefold_producer_events_total";
/// Request handling time including Kafka acknowledgement, seconds.
pub const REQUEST_SECONDS: &str = "tracefold_producer_request_seconds";

/// Every metric this service emits (for documentation and dashboard checks).
pub const ALL: &[&str] = &[REQUESTS_TOTAL, EVENTS_TOTAL, REQUEST_SECONDS];
