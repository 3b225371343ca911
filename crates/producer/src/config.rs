//! The producer's configuration (TOML file, `TRACEFOLD__...` overrides, flags).

use serde::{Deserialize, Serialize};
use tracefold_runtime::config::{KafkaConfig, TelemetryConfig, TopicsConfig};

/// Everything the producer reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka connection.
    pub kafka: KafkaConfig,
    /// Topic names.
    pub topics: TopicsConfig,
    /// The HTTP endpoint.
    pub http: HttpSection,
    /// Registered projects: Sentry project ids, public keys and rate limits.
    pub projects: Vec<ProjectConfig>,
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
    /// Accept events on the native endpoint for projects without a `[[projects]]` entry, with
    /// no key. The Sentry endpoints always need a registered project and key.
    pub allow_unregistered_projects: bool,
}

/// One `[[projects]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Project slug (what events and ClickHouse rows carry).
    pub slug: String,
    /// Numeric project id, for Sentry DSNs (`https://KEY@host/ID`).
    #[serde(default)]
    pub id: Option<u64>,
    /// Public keys; a request must carry one of them (`X-Sentry-Auth`, `sentry_key`,
    /// `X-Tracefold-Key` or `Authorization: Bearer`). Empty: no key needed (native endpoint).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Events per second for the whole project; 0 for no limit.
    #[serde(default)]
    pub rate_per_sec: f64,
    /// Burst of the project's bucket; 0 for one second's worth.
    #[serde(default)]
    pub burst: f64,
    /// Events per second per key; 0 for no limit.
    #[serde(default)]
    pub key_rate_per_sec: f64,
    /// Burst of each key's bucket; 0 for one second's worth.
    #[serde(default)]
    pub key_burst: f64,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 10 << 20,
            max_event_bytes: 1 << 20,
            max_events_per_request: 10_000,
            delivery_timeout_ms: 30_000,
            allow_unregistered_projects: true,
        }
    }
}

tracefold_runtime::service_config!(Config, listen: http.listen);
