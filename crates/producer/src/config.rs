//! The producer's configuration (TOML file, `TRACEFOLD__...` overrides, flags).

pub use crate::backpressure::BackpressureSection;
use serde::{Deserialize, Serialize};
use tracefold_runtime::config::{ClickHouseConfig, KafkaConfig, TelemetryConfig, TopicsConfig};

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
    /// Refusing new events while the grouper's lag puts accepted ones at risk (off unless a
    /// bound is set).
    pub backpressure: BackpressureSection,
    /// Source map uploads (`POST /api/{project}/sourcemaps`); off unless `store_url` is set.
    pub sourcemaps: SourcemapsSection,
    /// ClickHouse, for the `artifacts` table of source map uploads (nothing else of the
    /// producer talks to ClickHouse).
    pub clickhouse: ClickHouseConfig,
    /// Logs.
    pub telemetry: TelemetryConfig,
}

/// The `[sourcemaps]` section: where uploaded source maps and minified files are stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourcemapsSection {
    /// Object store URL (`file:///var/lib/tracefold/artifacts`; `s3://`, `gs://`, `az://`
    /// with the `tracefold-symbolicate` cargo features `s3`, `gcs`, `azure`). Empty: uploads
    /// are off and the endpoint answers 404 saying so.
    pub store_url: String,
    /// Largest source map accepted, bytes (the upload endpoint's body limit; 413 above it).
    pub max_map_bytes: usize,
    /// Largest minified file accepted, bytes (413 above it).
    pub max_minified_bytes: usize,
    /// Uploads handled at once (each parses a map of up to `max_map_bytes`); more get 503
    /// with `Retry-After`.
    pub max_concurrent_uploads: usize,
}

impl Default for SourcemapsSection {
    fn default() -> Self {
        let limits = tracefold_symbolicate::Limits::default();
        Self {
            store_url: String::new(),
            max_map_bytes: limits.max_map_bytes,
            max_minified_bytes: limits.max_minified_bytes,
            max_concurrent_uploads: 4,
        }
    }
}

/// The `[http]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Listen address of the ingestion endpoint (also serves `/metrics`, `/healthz`, `/readyz`).
    pub listen: String,
    /// Largest request body, bytes; larger requests get 413.
    pub max_body_bytes: usize,
    /// Largest single event, bytes; larger events get 413. The limit in force is the smaller
    /// of this and what Kafka takes (see [`Config::max_event_bytes`]).
    pub max_event_bytes: usize,
    /// Most events in one NDJSON request.
    pub max_events_per_request: usize,
    /// How long Kafka may take to acknowledge a request's events before the request gets
    /// 503 (ms).
    pub delivery_timeout_ms: u64,
    /// Accept events on the native endpoint for projects without a `[[projects]]` entry, with
    /// no key. The Sentry endpoints always need a registered project and key.
    pub allow_unregistered_projects: bool,
    /// Events per second for all unregistered projects together (one bucket shared by every
    /// project without a `[[projects]]` entry, per producer replica); 0 for no limit.
    pub unregistered_rate_per_sec: f64,
    /// Burst of the unregistered projects' bucket; 0 for one second's worth.
    pub unregistered_burst: f64,
    /// Ingest requests handled at once (reading, parsing, waiting for Kafka); more get 503
    /// with `Retry-After` instead of queueing.
    pub max_concurrent_requests: usize,
    /// The whole request body must arrive within this (ms), else 408: a slow or stalled client
    /// does not hold a request slot for longer.
    pub body_timeout_ms: u64,
    /// Each request head (request line and headers), and the wait for the next one on a
    /// kept-alive connection, must arrive within this (ms), else the connection is closed: a
    /// client that connects and sends nothing, or trickles its headers, holds no socket for
    /// longer.
    pub header_timeout_ms: u64,
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
    /// Burst of the project's bucket; 0 for one second's worth. A request with more events
    /// than the burst gets 413 (it could never pass).
    #[serde(default)]
    pub burst: f64,
    /// Events per second per key; 0 for no limit.
    #[serde(default)]
    pub key_rate_per_sec: f64,
    /// Burst of each key's bucket; 0 for one second's worth.
    #[serde(default)]
    pub key_burst: f64,
}

impl ProjectConfig {
    /// A project with an id and keys and no rate limits (rates of 0; bursts of 0 then mean
    /// nothing).
    pub fn unlimited(slug: &str, id: u64, keys: &[&str]) -> Self {
        Self {
            slug: slug.to_owned(),
            id: Some(id),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            rate_per_sec: 0.0,
            burst: 0.0,
            key_rate_per_sec: 0.0,
            key_burst: 0.0,
        }
    }
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
            unregistered_rate_per_sec: 0.0,
            unregistered_burst: 0.0,
            max_concurrent_requests: 256,
            body_timeout_ms: 10_000,
            header_timeout_ms: 30_000,
        }
    }
}

/// librdkafka's default `message.max.bytes` (the producer refuses larger records).
pub const KAFKA_DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Room left in a Kafka record for what is not the event: the key (an event id, at most 36
/// bytes), record headers and the record's own framing (librdkafka counts it against
/// `message.max.bytes`).
pub const KAFKA_RECORD_HEADROOM: usize = 512;

impl Config {
    /// The largest event the producer accepts, bytes: the smaller of `http.max_event_bytes`
    /// and Kafka's `message.max.bytes` (librdkafka's default 1,000,000, or the value under
    /// `[kafka.librdkafka]`) minus [`KAFKA_RECORD_HEADROOM`]. Larger events get 413 rather
    /// than a 503 from Kafka that no retry can fix.
    pub fn max_event_bytes(&self) -> usize {
        let kafka = self
            .kafka
            .librdkafka
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(KAFKA_DEFAULT_MESSAGE_MAX_BYTES);
        self.http.max_event_bytes.min(kafka.saturating_sub(KAFKA_RECORD_HEADROOM))
    }

    /// Checks values the types allow but the producer cannot use.
    ///
    /// # Errors
    /// Names the key and what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let h = &self.http;
        if h.max_concurrent_requests == 0 {
            return Err("http.max_concurrent_requests must be at least 1".into());
        }
        if h.body_timeout_ms == 0 {
            return Err("http.body_timeout_ms must be at least 1".into());
        }
        if h.header_timeout_ms == 0 {
            return Err("http.header_timeout_ms must be at least 1".into());
        }
        if !(h.unregistered_rate_per_sec >= 0.0 && h.unregistered_burst >= 0.0) {
            return Err("http.unregistered_rate_per_sec and http.unregistered_burst must not be negative".into());
        }
        if !crate::auth::is_usable_burst(h.unregistered_burst) {
            return Err(format!(
                "http.unregistered_burst = {} must be 0 (one second's worth) or at least 1",
                h.unregistered_burst
            ));
        }
        // A value librdkafka refuses (a codec this build lacks) stops the start, named.
        self.kafka.check().map_err(|(key, why)| format!("{key}: {why}"))?;
        if let Some(v) = self.kafka.librdkafka.get("message.max.bytes") {
            if v.trim().parse::<usize>().is_err() {
                return Err(format!("kafka.librdkafka.\"message.max.bytes\" = {v:?} is not a number of bytes"));
            }
        }
        if self.sourcemaps.max_concurrent_uploads == 0 {
            return Err("sourcemaps.max_concurrent_uploads must be at least 1".into());
        }
        if self.max_event_bytes() == 0 {
            return Err("http.max_event_bytes (or Kafka's message.max.bytes) leaves no room for an event".into());
        }
        self.backpressure.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_limit_is_what_kafka_takes() {
        let mut c = Config::default();
        assert_eq!(c.http.max_event_bytes, 1 << 20);
        assert_eq!(c.max_event_bytes(), 1_000_000 - KAFKA_RECORD_HEADROOM, "librdkafka's default wins over 1 MiB");
        c.kafka.librdkafka.insert("message.max.bytes".into(), "5000000".into());
        assert_eq!(c.max_event_bytes(), 1 << 20, "a larger Kafka limit leaves http.max_event_bytes in force");
        c.http.max_event_bytes = 4096;
        assert_eq!(c.max_event_bytes(), 4096);
        assert!(c.check().is_ok());
        c.kafka.librdkafka.insert("message.max.bytes".into(), "lots".into());
        assert!(c.check().unwrap_err().contains("message.max.bytes"));
    }

    #[test]
    fn a_codec_librdkafka_refuses_is_named() {
        let mut c = Config::default();
        c.kafka.librdkafka.insert("compression.type".into(), "zstd".into());
        assert_eq!(c.check(), Ok(()), "this build has zstd");
        c.kafka.librdkafka.insert("compression.type".into(), "brotli".into());
        let err = c.check().unwrap_err();
        assert!(err.starts_with(r#"kafka.librdkafka."compression.type": "brotli" is refused by librdkafka"#), "{err}");
    }

    #[test]
    fn unusable_values_are_named() {
        let mut c = Config::default();
        c.http.max_concurrent_requests = 0;
        assert!(c.check().unwrap_err().contains("max_concurrent_requests"));
        let mut c = Config::default();
        c.http.unregistered_rate_per_sec = -1.0;
        assert!(c.check().unwrap_err().contains("unregistered_rate_per_sec"));
        // A bucket of less than one event refuses every request with 413, for ever.
        let mut c = Config::default();
        c.http.unregistered_burst = 0.5;
        assert!(c.check().unwrap_err().contains("http.unregistered_burst"));
        c.http.unregistered_burst = 1.0;
        assert_eq!(c.check(), Ok(()));
        let mut c = Config::default();
        c.http.body_timeout_ms = 0;
        assert!(c.check().unwrap_err().contains("body_timeout_ms"));
        let mut c = Config::default();
        c.http.header_timeout_ms = 0;
        assert!(c.check().unwrap_err().contains("header_timeout_ms"));
    }
}

tracefold_runtime::service_config!(Config, listen: http.listen);
