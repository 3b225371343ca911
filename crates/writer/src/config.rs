//! The writer's configuration (TOML file, `TRACEFOLD__...` overrides, flags).

use serde::{Deserialize, Serialize};
use tracefold_runtime::config::{ClickHouseConfig, KafkaConfig, TelemetryConfig, TopicsConfig};

/// Everything the writer reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka connection.
    pub kafka: KafkaConfig,
    /// Topic names.
    pub topics: TopicsConfig,
    /// ClickHouse connection.
    pub clickhouse: ClickHouseConfig,
    /// Batching, retries and the consumer group.
    pub writer: WriterSection,
    /// The precomputed rankings of `tracefold top --by users` over long windows.
    pub rankings: RankingsSection,
    /// Logs.
    pub telemetry: TelemetryConfig,
}

/// The `[writer]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriterSection {
    /// Consumer group.
    pub group_id: String,
    /// An insert is sent after this many rows...
    ///
    /// Large by default: an INSERT into the aggregates table costs ClickHouse a fixed share
    /// (about 50 ms of CPU for the eight materialized views on 18.16) plus a share per row, so
    /// rows per insert decide its cost per row (`benches/README.md`, "Writer"). Below
    /// `batch_max_rows` rows a second, `batch_max_age_ms` cuts the batch first.
    pub batch_max_rows: usize,
    /// ...or this many bytes of aggregate JSON (what bounds the writer's memory: the batch being
    /// read and the one being inserted, each up to about this much decoded)...
    pub batch_max_bytes: usize,
    /// ...or when its oldest row waited this long (ms).
    ///
    /// Below `batch_max_rows` rows a second this bound cuts every batch: `bench-writer` at
    /// under 30,000 rows/s gave the same inserts with 100,000 and 200,000 rows as bounds, and
    /// a few more with 20,000 (`benches/README.md`, "The writer alone"). The consumer's fetch
    /// settings are the services' common ones (`tracefold_runtime::kafka::consumer_config`):
    /// with records waiting on the broker the writer's loop is busy decoding, not waiting on
    /// fetches.
    pub batch_max_age_ms: u64,
    /// First retry delay after a failed insert (ms); doubles up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    /// Longest retry delay (ms).
    pub retry_max_ms: u64,
    /// Timeout of one insert (ms), and of each other request of the insert loop (the read of
    /// its watermarks, the server's version at start).
    pub insert_timeout_ms: u64,
    /// Address of `/metrics`, `/healthz`, `/readyz`; empty for none.
    pub listen: String,
    /// Consumer loops of the aggregates topic in this process, each a member of the group with
    /// its own partitions, its own batch and its own INSERT in flight. ClickHouse runs an
    /// INSERT and its materialized views on about one core, so one loop stores at most what one
    /// core inserts; a second loop lets two INSERTs run at once (`benches/README.md`, "Writer").
    /// Each loop owns whole partitions, so every partition's batches are still stored in order
    /// and its watermark means what it did. Like running more writer processes in the group.
    pub consumers: usize,
    /// Table the writer inserts into and reads its watermarks from: `aggregates`, or
    /// `aggregates_all` on a cluster (the Distributed table of the cluster flavour).
    pub table: String,
}

impl Default for WriterSection {
    fn default() -> Self {
        Self {
            group_id: "tracefold-writer".into(),
            batch_max_rows: 100_000,
            batch_max_bytes: 64 << 20,
            batch_max_age_ms: 1000,
            retry_initial_ms: 200,
            retry_max_ms: 10_000,
            insert_timeout_ms: 30_000,
            consumers: 1,
            listen: "127.0.0.1:9102".into(),
            table: "aggregates".into(),
        }
    }
}

/// The `[rankings]` section: the loop that computes, off the insert path, each project's top
/// issues by affected users over 7 and 30 days into `issue_ranking_rows`, which `tracefold top
/// --since 7d|30d --by users|events` reads while fresh (docs/operations.md, "Precomputed
/// rankings").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RankingsSection {
    /// Seconds between computations; 0 disables the loop. A ranking is read while younger than
    /// twice this (older: `top` counts live).
    pub refresh_seconds: u64,
    /// Issues kept per project and window (at least 1): `top --by users --limit` up to this
    /// is answered from the ranking, and for a project with fewer issues in the window every
    /// `--by users|events` of any `--limit` (its list is whole); else live.
    pub top_k: u32,
    /// Longest a computation may take (ms) before it is abandoned, counted as failed and
    /// tried again.
    pub timeout_ms: u64,
}

impl Default for RankingsSection {
    fn default() -> Self {
        Self { refresh_seconds: 300, top_k: tracefold_store::rankings::DEFAULT_TOP_K, timeout_ms: 120_000 }
    }
}

impl Config {
    /// Checks the values the types allow but the writer cannot use: a retry delay of 0 (the
    /// delay doubles from it, so a failing ClickHouse would be asked again at once, for ever: a
    /// busy loop of requests and WARN lines) and an insert timeout of 0 (every insert would
    /// time out, and the writer would retry it for ever without storing a row).
    ///
    /// # Errors
    /// The dotted key and what is wrong with its value.
    pub fn check(&self) -> Result<(), (String, String)> {
        let w = &self.writer;
        for (key, v) in [
            ("writer.retry_initial_ms", w.retry_initial_ms),
            ("writer.retry_max_ms", w.retry_max_ms),
            ("writer.insert_timeout_ms", w.insert_timeout_ms),
        ] {
            if v == 0 {
                return Err((key.into(), "0: must be at least 1".into()));
            }
        }
        Ok(())
    }
}

tracefold_runtime::service_config!(Config, listen: writer.listen, clickhouse, check);

#[cfg(test)]
mod tests {
    use tracefold_runtime::service::ServiceArgs;

    /// A retry delay or insert timeout of 0 (a busy retry loop, or inserts that never succeed)
    /// is refused at start, naming the key and the file.
    #[test]
    fn zero_retry_delays_and_insert_timeout_name_key_and_file() {
        let dir = std::env::temp_dir().join(format!("tracefold-writer-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for key in ["retry_initial_ms", "retry_max_ms", "insert_timeout_ms"] {
            let path = dir.join(format!("writer-{key}.toml"));
            std::fs::write(&path, format!("[writer]\n{key} = 0\n")).unwrap();
            let args = ServiceArgs { config: Some(path.clone()), ..ServiceArgs::default() };
            let err = args.load::<super::Config>().map(drop).map_err(|e| format!("{e:#}"));
            let _ = std::fs::remove_file(&path);
            let err = err.expect_err(key);
            assert!(err.contains(&format!("invalid config value writer.{key} in ")), "{err}");
            assert!(err.contains(&format!("writer-{key}.toml")), "the file is named: {err}");
        }
        let _ = std::fs::remove_dir(&dir);
        assert!(super::Config::default().check().is_ok());
    }
}
