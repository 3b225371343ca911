//! The detector's configuration (TOML file, `TRACEFOLD__...` overrides, flags).

use crate::engine::EngineConfig;
use crate::notify::{Channel, RateLimit, Retry};
use crate::storm::StormConfig;
use serde::{Deserialize, Serialize};
use tracefold_runtime::config::{ClickHouseConfig, KafkaConfig, TelemetryConfig, TopicsConfig};

/// Everything the detector reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka connection.
    pub kafka: KafkaConfig,
    /// Topic names.
    pub topics: TopicsConfig,
    /// ClickHouse (state at start-up: known issues, statuses, recent counts; signal
    /// deliveries, written while running and read at start-up).
    pub clickhouse: ClickHouseConfig,
    /// Detection and notification.
    pub detector: DetectorSection,
    /// Logs.
    pub telemetry: TelemetryConfig,
}

/// The `[detector]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorSection {
    /// Consumer group.
    pub group_id: String,
    /// Address of `/metrics`, `/healthz`, `/readyz`; empty for none.
    pub listen: String,
    /// Minutes of per-minute counts read from ClickHouse at start-up for the baselines.
    pub history_minutes: u32,
    /// Milliseconds between two reads of the issue statuses from ClickHouse while running: a
    /// resolution (`tracefold issue resolve`) or a reopening is taken into account within this
    /// delay (at start-up, at once).
    pub status_refresh_ms: u64,
    /// Detection settings: `[detector.engine.spike]`, `[[detector.engine.thresholds]]`.
    pub engine: EngineConfig,
    /// Notification channels: `[[detector.channels]]`.
    pub channels: Vec<Channel>,
    /// Notification retries with backoff, and redelivery at start-up of the signals a channel
    /// never took: `[detector.retry]`.
    pub retry: Retry,
    /// Alert storms, new issues folded into a digest: `[detector.storm]`.
    pub storm: StormConfig,
    /// Notifications per minute per channel: `[detector.rate_limit]`.
    pub rate_limit: RateLimit,
}

impl Default for DetectorSection {
    fn default() -> Self {
        Self {
            group_id: "tracefold-detector".into(),
            listen: "127.0.0.1:9103".into(),
            history_minutes: 180,
            status_refresh_ms: 5000,
            engine: EngineConfig::default(),
            channels: Vec::new(),
            retry: Retry::default(),
            storm: StormConfig::default(),
            rate_limit: RateLimit::default(),
        }
    }
}

tracefold_runtime::service_config!(Config, listen: detector.listen, clickhouse);
