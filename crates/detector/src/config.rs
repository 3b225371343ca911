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

/// Longest span, in minutes, a detector setting may name: 100 years. The detector works in
/// seconds of event time (`60 * minutes`), which a larger value could overflow (a panic, or in a
/// release build a wrapped span that evaluates, keeps or cools down the wrong minutes).
pub const MAX_MINUTES: u64 = 100 * 366 * 24 * 60;

impl Config {
    /// Checks the values the types allow but the detector cannot use: spans in minutes below 0
    /// or above [`MAX_MINUTES`], a threshold window of 0 minutes (it would never fire), a
    /// negative idle time, spike parameters that are not finite numbers of their range (a
    /// baseline of NaN never spikes).
    ///
    /// # Errors
    /// The dotted key and what is wrong with its value.
    pub fn check(&self) -> Result<(), (String, String)> {
        let d = &self.detector;
        let e = &d.engine;
        let span = |key: String, v: i128, least: i128| {
            if (least..=i128::from(MAX_MINUTES)).contains(&v) {
                Ok(())
            } else {
                Err((key, format!("{v} minutes: must be {least} to {MAX_MINUTES}")))
            }
        };
        span("detector.engine.lateness_min".into(), e.lateness_min.into(), 0)?;
        span("detector.engine.allowed_lateness_min".into(), e.allowed_lateness_min.into(), 0)?;
        span("detector.engine.evict_idle_min".into(), e.evict_idle_min.into(), 0)?;
        span("detector.retry.redeliver_max_age_min".into(), d.retry.redeliver_max_age_min.into(), 0)?;
        for (i, r) in e.thresholds.iter().enumerate() {
            span(format!("detector.engine.thresholds[{i}].minutes"), r.minutes.into(), 1)?;
        }
        for (i, c) in d.channels.iter().enumerate() {
            span(format!("detector.channels[{i}].cooldown_min"), c.cooldown_min.into(), 0)?;
        }
        if e.idle_ms < 0 {
            return Err(("detector.engine.idle_ms".into(), format!("{}: must not be negative", e.idle_ms)));
        }
        let s = &e.spike;
        if !(s.half_life_min.is_finite() && s.half_life_min > 0.0) {
            return Err((
                "detector.engine.spike.half_life_min".into(),
                format!("{}: must be above 0", s.half_life_min),
            ));
        }
        for (key, v) in [("ratio", s.ratio), ("sigmas", s.sigmas), ("min_events", s.min_events)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err((format!("detector.engine.spike.{key}"), format!("{v}: must be a number of 0 or more")));
            }
        }
        Ok(())
    }
}

tracefold_runtime::service_config!(Config, listen: detector.listen, clickhouse, check);

#[cfg(test)]
mod tests {
    use tracefold_runtime::service::ServiceArgs;

    fn load(toml: &str) -> Result<super::Config, String> {
        let dir = std::env::temp_dir().join(format!("tracefold-detector-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("detector-{}.toml", toml.len()));
        std::fs::write(&path, toml).unwrap();
        let args = ServiceArgs { config: Some(path.clone()), ..ServiceArgs::default() };
        let r = args.load::<super::Config>().map_err(|e| format!("{e:#}"));
        let _ = std::fs::remove_file(&path);
        r
    }

    /// Values whose arithmetic overflows (a panic in a debug build, a wrapped span in a release
    /// one) or that silently turn detection off are refused at start, naming the key and the
    /// file, as a mistyped key is.
    #[test]
    fn spans_out_of_range_and_unusable_spike_parameters_name_key_and_file() {
        for (toml, key) in [
            ("[detector.engine]\nallowed_lateness_min = 4611686018427387904\n", "detector.engine.allowed_lateness_min"),
            ("[detector.engine]\nlateness_min = -5\n", "detector.engine.lateness_min"),
            ("[detector.engine]\nevict_idle_min = 9223372036854775807\n", "detector.engine.evict_idle_min"),
            ("[detector.engine]\nidle_ms = -1\n", "detector.engine.idle_ms"),
            ("[detector.retry]\nredeliver_max_age_min = 1000000000000000000\n", "detector.retry.redeliver_max_age_min"),
            (
                "[[detector.engine.thresholds]]\nname = \"t\"\nevents = 5\nminutes = 0\n",
                "detector.engine.thresholds[0].minutes",
            ),
            (
                "[[detector.channels]]\nname = \"c\"\ncooldown_min = 1000000000000000000\n[detector.channels.target]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\n",
                "detector.channels[0].cooldown_min",
            ),
            ("[detector.engine.spike]\nhalf_life_min = 0.0\n", "detector.engine.spike.half_life_min"),
            ("[detector.engine.spike]\nratio = nan\n", "detector.engine.spike.ratio"),
            ("[detector.engine.spike]\nsigmas = -1.0\n", "detector.engine.spike.sigmas"),
        ] {
            let err = load(toml).map(drop).expect_err(toml);
            assert!(err.contains(&format!("invalid config value {key} in ")), "{toml}: {err}");
            assert!(err.contains(".toml"), "the file is named: {err}");
        }
        let ok = load("[detector.engine]\nlateness_min = 0\nallowed_lateness_min = 525600\n").unwrap();
        assert_eq!(ok.detector.engine.allowed_lateness_min, 525_600);
        assert!(super::Config::default().check().is_ok());
    }
}
