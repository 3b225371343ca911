//! The grouper's configuration (TOML file, `TRACEFOLD__...` overrides, flags).

use serde::{Deserialize, Serialize};
use tracefold_fingerprint::GroupingConfig;
use tracefold_runtime::config::{KafkaConfig, TelemetryConfig, TopicsConfig};

/// Everything the grouper reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka connection.
    pub kafka: KafkaConfig,
    /// Topic names.
    pub topics: TopicsConfig,
    /// Batching and the consumer group.
    pub grouper: GrouperSection,
    /// Grouping options.
    pub grouping: GroupingConfig,
    /// Source maps for minified JavaScript frames; off unless `store_url` is set.
    pub sourcemaps: SourcemapsSection,
    /// Logs.
    pub telemetry: TelemetryConfig,
}

/// The `[grouper]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrouperSection {
    /// Consumer group.
    pub group_id: String,
    /// A batch closes after this many events...
    pub batch_max_events: u64,
    /// ...or this many payload bytes...
    pub batch_max_bytes: u64,
    /// ...or when its first event is this old (ms).
    pub batch_max_age_ms: u64,
    /// Exact user hashes per aggregate before the sketch takes over.
    pub max_users: usize,
    /// An event whose project and `event_id` repeat a valid event read at most this many
    /// offsets earlier in the same partition is counted once (an SDK retrying a request whose
    /// events were partly published). About 64 bytes of memory per offset and partition, and
    /// as many messages read again when a partition is assigned; 0 turns it off.
    pub dedup_window_events: u64,
    /// Consumer loops in this process, each a member of the group on a thread of its own:
    /// Kafka shares the partitions out among them (a partition is only ever in one loop, so
    /// every partition's batches stay as one loop would cut them). 0 is taken as 1.
    pub consumers: usize,
    /// Address of `/metrics`, `/healthz`, `/readyz`; empty for none.
    pub listen: String,
    /// Incarnation of the events log, recorded with every aggregate so that offsets of a
    /// recreated topic are not mistaken for replays. Empty: the Kafka cluster id. Set a new
    /// value after deleting and recreating the events topic on the same cluster.
    pub epoch: String,
}

impl Default for GrouperSection {
    fn default() -> Self {
        Self {
            group_id: "tracefold-grouper".into(),
            batch_max_events: 50_000,
            batch_max_bytes: 64 << 20,
            batch_max_age_ms: 1000,
            max_users: tracefold_model::aggregate::DEFAULT_MAX_USERS,
            dedup_window_events: crate::batch::DEFAULT_DEDUP_WINDOW,
            consumers: 1,
            listen: "127.0.0.1:9101".into(),
            epoch: String::new(),
        }
    }
}

/// The `[sourcemaps]` section: where uploaded source maps are read from, and the bounds of
/// symbolication on the hot path (docs/sourcemaps.md, "Grouper hook").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourcemapsSection {
    /// Object store URL, the producer's `[sourcemaps] store_url` (`file:///...`, `s3://...`
    /// with the cargo features). Empty: frames stay minified (`tracefold dev` sets it).
    pub store_url: String,
    /// Longest an event waits for its maps, milliseconds; then it is grouped without them
    /// (counted `timeout`), and the fetch goes on for later events.
    pub budget_ms: u64,
    /// Most parsed maps kept in memory.
    pub cache_entries: usize,
    /// Most bytes of parsed maps (and their minified files) kept in memory.
    pub cache_bytes: usize,
    /// Most fetches from the store at once.
    pub max_concurrent_fetches: usize,
    /// How long a missing or unusable map is remembered as such, milliseconds.
    pub negative_ttl_ms: u64,
}

impl Default for SourcemapsSection {
    fn default() -> Self {
        Self {
            store_url: String::new(),
            budget_ms: 50,
            cache_entries: 256,
            cache_bytes: 512 << 20,
            max_concurrent_fetches: 4,
            negative_ttl_ms: 10_000,
        }
    }
}

tracefold_runtime::service_config!(Config, listen: grouper.listen);
