//! The producer's configuration (TOML file, `TRACEFOLD__...` overrides, flags).

use serde::{Deserialize, Serialize};
use tracefold_runtime::config::{KafkaConfig, TelemetryConfig, TopicsConfig};

/// Everything the producer reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka connection.
    pub kafka: KafkaConfig,
    /// Topic names.
    pub topics: TopicsConfig,
    /// The HTTP endpoint.
    pub http: HttpSection,
    /// Logs.
    pub telemetry: TelemetryConfig,
}

/// The `[http]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Listen address of the ingestion endpoint (also serves `/metrics`, `/healthz`, `/readyz`).
    pub listen: String,
    /// Largest request body, bytes; larger requests get 413.
    pub max_body_bytes: usize,
    /// Largest single event, bytes; larger events get 413.
    pub max_event_bytes: usize,
    /// Most events in one NDJSON request.
    pub max_events_per_request: usize,
    /// How long Kafka may take to acknowledge a request's events before the request gets
    /// 503 (ms).
    pub delivery_timeout_ms: u64,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 10 << 20,
            max_event_bytes: 1 << 20,
            max_events_per_request: 10_000,
            delivery_timeout_ms: 30_000,
        }
    }
}
