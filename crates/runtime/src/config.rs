//! Configuration: typed structs with documented defaults, read from a TOML file, then
//! overridden by environment variables, then by command-line flags. Unknown keys are errors
//! that name the key and the file.
//!
//! Environment overrides: `TRACEFOLD__SECTION__KEY=value` sets `[section] key = value`
//! (`__` separates levels; names are lower-cased; the value is read as a TOML value when it
//! parses as one and the key takes it, else as a string: `TRACEFOLD__CLICKHOUSE__PASSWORD=123`
//! is the text `123`). Example: `TRACEFOLD__CLICKHOUSE__URL=http://ch:8123`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "TRACEFOLD__";

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid config file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key, line and column.
        message: String,
    },
    /// An environment override has an unknown key or a value of the wrong type.
    #[error("invalid config from environment ({vars}): {message}")]
    Env {
        /// The overriding variables that were applied.
        vars: String,
        /// The deserializer's message, naming the key.
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error("invalid config value {key} in {source_name}: {message}")]
    Value {
        /// The key, dotted.
        key: String,
        /// The file name, or `defaults`.
        source_name: String,
        /// What is wrong.
        message: String,
    },
}

/// Loads a config: defaults, then the file (when given), then environment overrides taken
/// from `env` (pass `std::env::vars()` in binaries; tests pass their own pairs).
///
/// # Errors
/// [`ConfigError`] naming the file or variables and the offending key.
pub fn load<T, I>(path: Option<&Path>, env: I) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
    I: IntoIterator<Item = (String, String)>,
{
    load_checked(path, env, |_: &T| Ok(()))
}

/// Where a config came from, for its errors: the file, the environment when some `TRACEFOLD__`
/// variable overrides it, or the defaults.
pub fn source_name(path: Option<&Path>, env_overrides: bool) -> String {
    match (path, env_overrides) {
        (Some(p), false) => p.display().to_string(),
        (Some(p), true) => format!("{} or the TRACEFOLD__ environment", p.display()),
        (None, true) => "the defaults or the TRACEFOLD__ environment".to_owned(),
        (None, false) => "the defaults".to_owned(),
    }
}

/// [`load`], then `check` on the loaded config: the values its type allows but the service
/// cannot use, refused as [`ConfigError::Value`] with the dotted key `check` names and where
/// the config came from.
///
/// # Errors
/// As [`load`], or `check`'s refusal.
pub fn load_checked<T, I>(
    path: Option<&Path>,
    env: I,
    check: impl FnOnce(&T) -> Result<(), (String, String)>,
) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
    I: IntoIterator<Item = (String, String)>,
{
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_owned(), source })?,
        None => String::new(),
    };
    let from_file: T = toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.map(Path::to_owned).unwrap_or_default(),
        message: e.to_string().trim().replace('\n', " "),
    })?;
    let overrides: Vec<(String, String)> =
        env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.len() > ENV_PREFIX.len()).collect();
    let source_name = || source_name(path, !overrides.is_empty());
    let checked = |cfg: T| {
        check_librdkafka(&cfg, &source_name)?;
        check(&cfg).map_err(|(key, message)| ConfigError::Value { key, source_name: source_name(), message })?;
        Ok(cfg)
    };
    if overrides.is_empty() {
        return checked(from_file);
    }
    let base = toml::Table::try_from(&from_file)
        .map_err(|e| ConfigError::Env { vars: String::new(), message: format!("cannot re-serialize config: {e}") })?;
    let mut table = base.clone();
    for (k, v) in &overrides {
        let path = &k[ENV_PREFIX.len()..];
        set_path(&mut table, path, env_value::<T>(&base, path, v));
    }
    let vars = overrides.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ");
    let cfg = T::deserialize(toml::Value::Table(table))
        .map_err(|e| ConfigError::Env { vars, message: e.to_string().trim().replace('\n', " ") })?;
    checked(cfg)
}

/// Checks the `[kafka.librdkafka]` pass-through options of a loaded config (every tracefold
/// config keeps its [`KafkaConfig`] under `kafka`) with librdkafka itself, so that a value this
/// build refuses (a codec it was built without, a typo) stops the start with the key and the
/// file named, not later when a client is made.
fn check_librdkafka<T: Serialize>(cfg: &T, source_name: &dyn Fn() -> String) -> Result<(), ConfigError> {
    let Ok(table) = toml::Table::try_from(cfg) else { return Ok(()) };
    let Some(kafka) = table.get("kafka").cloned() else { return Ok(()) };
    let Ok(kafka) = kafka.try_into::<KafkaConfig>() else { return Ok(()) };
    kafka.check().map_err(|(key, message)| ConfigError::Value { key, source_name: source_name(), message })
}

/// The value of the override `raw` of the key at `path`: as TOML (a number, a boolean, an
/// array ...) when it parses as such and the key takes it so, else as the text itself. A key of
/// type string (a password of digits, a database named `true`, a librdkafka option such as
/// `linger.ms = "5"`) takes the text, where the TOML reading (an integer, a boolean) would be
/// refused. Whether the key takes a value is asked of `T` with this override alone over `base`
/// (the defaults and the file, which `T` takes).
fn env_value<T: DeserializeOwned>(base: &toml::Table, path: &str, raw: &str) -> toml::Value {
    let text = toml::Value::String(raw.to_owned());
    let Some(typed) = toml::from_str::<toml::Table>(&format!("v = {raw}")).ok().and_then(|mut t| t.remove("v")) else {
        return text;
    };
    if typed.is_str() {
        // A quoted value (`"16384"`) is the string it quotes.
        return typed;
    }
    let takes = |v: &toml::Value| {
        let mut one = base.clone();
        set_path(&mut one, path, v.clone());
        T::deserialize(toml::Value::Table(one)).is_ok()
    };
    if !takes(&typed) && takes(&text) {
        text
    } else {
        // Taken as TOML, or refused either way: the TOML reading's error names the key.
        typed
    }
}

fn set_path(table: &mut toml::Table, path: &str, value: toml::Value) {
    let parts: Vec<String> = path.split("__").map(str::to_lowercase).collect();
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        cur = entry.as_table_mut().expect("just made a table");
    }
    cur.insert(parts[parts.len() - 1].clone(), value);
}

/// Kafka connection settings shared by every service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `host:port,...` of the brokers.
    pub bootstrap_servers: String,
    /// Options passed through to librdkafka as they are (`security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `ssl.ca.location`, tuning ...). They win over
    /// tracefold's own settings.
    pub librdkafka: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self { bootstrap_servers: "127.0.0.1:9092".into(), librdkafka: BTreeMap::new() }
    }
}

/// Pass-through options that tracefold's correctness rests on: the values it accepts (compared
/// without regard to case) and why. Any other value is refused when the config is loaded.
const GUARDED: &[(&str, &[&str], &str)] = &[
    (
        "enable.idempotence",
        &["true"],
        "tracefold's producers must be idempotent: without it a retried request can write an event or an aggregate twice or out of order, and the writer's replay check would then skip records",
    ),
    ("acks", &["all", "-1"], "an event is accepted only once every in-sync replica has it (and idempotence needs acks=all)"),
    ("request.required.acks", &["all", "-1"], "an event is accepted only once every in-sync replica has it (and idempotence needs acks=all)"),
    (
        "enable.auto.commit",
        &["false"],
        "offsets are committed only after what was read is stored; automatic commits would skip unstored messages after a crash",
    ),
    (
        "enable.auto.offset.store",
        &["false"],
        "offsets are stored only after what was read is stored; automatic stores would skip unstored messages after a crash",
    ),
    (
        "auto.offset.reset",
        &["earliest", "smallest", "beginning"],
        "a new group starts at the log start; any other reset skips what the topic already holds without counting it",
    ),
];

impl KafkaConfig {
    /// Checks every pass-through option with librdkafka (as a client made from this config
    /// would set it): unknown properties, malformed values and values this build of librdkafka
    /// does not support (such as a `compression.type` whose codec it was built without); and
    /// refuses values of the options tracefold's counting rests on ([`GUARDED`]: idempotent
    /// producers with `acks=all`, manual offset commits, new groups from the log start).
    ///
    /// # Errors
    /// The first refused option: its dotted key (`kafka.librdkafka."compression.type"`) and
    /// librdkafka's reason, or why tracefold needs another value.
    pub fn check(&self) -> Result<(), (String, String)> {
        for (k, v) in &self.librdkafka {
            if let Some((_, allowed, why)) = GUARDED.iter().find(|(g, _, _)| g == k) {
                if !allowed.iter().any(|a| a.eq_ignore_ascii_case(v.trim())) {
                    return Err((
                        format!("kafka.librdkafka.{k:?}"),
                        format!("{v:?} is not allowed (only {}): {why}", allowed.join(" or ")),
                    ));
                }
            }
            let mut one = rdkafka::ClientConfig::new();
            one.set(k, v);
            if let Err(e) = one.create_native_config() {
                let reason = match e {
                    rdkafka::error::KafkaError::ClientConfig(_, reason, _, _) => reason,
                    other => other.to_string(),
                };
                // Secrets (`sasl.password`, `ssl.key.password`, ...) are not echoed.
                let secret = ["password", "secret", "key"].iter().any(|w| k.contains(w));
                let (shown, reason) = if secret && !v.is_empty() {
                    ("the value".to_owned(), reason.replace(v.as_str(), "***"))
                } else {
                    (format!("{v:?}"), reason)
                };
                return Err((format!("kafka.librdkafka.{k:?}"), format!("{shown} is refused by librdkafka: {reason}")));
            }
        }
        Ok(())
    }
}

/// Topic names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Raw events.
    pub events: String,
    /// Partial aggregates from the grouper.
    pub aggregates: String,
    /// Rejected events, with the reason.
    pub dlq: String,
    /// Signals from the detector.
    pub signals: String,
    /// Outcomes: what became of events, per project, minute and reason.
    pub outcomes: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            events: "tracefold.events".into(),
            aggregates: "tracefold.aggregates".into(),
            dlq: "tracefold.dlq".into(),
            signals: "tracefold.signals".into(),
            outcomes: "tracefold.outcomes".into(),
        }
    }
}

/// ClickHouse connection settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP interface URL.
    pub url: String,
    /// User name.
    pub user: String,
    /// Password (prefer the `TRACEFOLD__CLICKHOUSE__PASSWORD` variable to a file).
    pub password: String,
    /// Database that holds tracefold's tables.
    pub database: String,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            user: "default".into(),
            password: String::new(),
            database: "tracefold".into(),
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `tracefold_grouper=debug,info`; `RUST_LOG` wins.
    pub log_level: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { log_format: LogFormat::Text, log_level: "info".into() }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Cfg {
        kafka: KafkaConfig,
        clickhouse: ClickHouseConfig,
        batch: Batch,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Batch {
        max_events: usize,
    }

    impl Default for Batch {
        fn default() -> Self {
            Self { max_events: 10 }
        }
    }

    fn write(text: &str) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let p = dir.0.join("svc.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let p = std::env::temp_dir().join(format!(
                    "tracefold-config-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn defaults_file_and_env_layer_in_order() {
        let (_d, p) = write("[batch]\nmax_events = 500\n[kafka]\nbootstrap_servers = \"k:9092\"\n[kafka.librdkafka]\n\"security.protocol\" = \"SASL_SSL\"\n");
        let env = vec![
            ("TRACEFOLD__BATCH__MAX_EVENTS".to_string(), "700".to_string()),
            ("TRACEFOLD__CLICKHOUSE__PASSWORD".to_string(), "s3cret".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let c: Cfg = load(Some(&p), env).unwrap();
        assert_eq!(c.batch.max_events, 700);
        assert_eq!(c.kafka.bootstrap_servers, "k:9092");
        assert_eq!(c.kafka.librdkafka["security.protocol"], "SASL_SSL");
        assert_eq!(c.clickhouse.password, "s3cret");
        assert_eq!(c.clickhouse.url, "http://127.0.0.1:8123");
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let (_d, p) = write("[batch]\nmax_evnts = 5\n");
        let err = load::<Cfg, _>(Some(&p), Vec::new()).unwrap_err().to_string();
        assert!(err.contains("max_evnts"), "{err}");
        assert!(err.contains("svc.toml"), "{err}");
    }

    #[test]
    fn wrong_type_names_key_and_file() {
        let (_d, p) = write("[batch]\nmax_events = \"many\"\n");
        let err = load::<Cfg, _>(Some(&p), Vec::new()).unwrap_err().to_string();
        assert!(err.contains("max_events") && err.contains("svc.toml"), "{err}");
    }

    #[test]
    fn bad_env_override_names_the_variable() {
        let env = vec![("TRACEFOLD__BATCH__MAX_EVENTZ".to_string(), "1".to_string())];
        let err = load::<Cfg, _>(None, env).unwrap_err().to_string();
        assert!(err.contains("TRACEFOLD__BATCH__MAX_EVENTZ") && err.contains("max_eventz"), "{err}");
    }

    #[test]
    fn librdkafka_options_this_build_refuses_name_key_and_file() {
        for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
            let (_d, p) = write(&format!("[kafka.librdkafka]\n\"compression.type\" = \"{codec}\"\n"));
            let c = load::<Cfg, _>(Some(&p), Vec::new()).unwrap_or_else(|e| panic!("{codec} is built in: {e}"));
            assert_eq!(c.kafka.librdkafka["compression.type"], codec);
        }
        let (_d, p) = write("[kafka.librdkafka]\n\"compression.type\" = \"brotli\"\n");
        let err = load::<Cfg, _>(Some(&p), Vec::new()).unwrap_err().to_string();
        assert!(err.contains(r#"kafka.librdkafka."compression.type""#) && err.contains("svc.toml"), "{err}");
        assert!(err.contains(r#""brotli" is refused by librdkafka: Invalid value"#), "{err}");
        let (_d, p) = write("[kafka.librdkafka]\n\"compresion.type\" = \"lz4\"\n");
        let err = load::<Cfg, _>(Some(&p), Vec::new()).unwrap_err().to_string();
        assert!(err.contains("compresion.type") && err.contains("No such configuration property"), "{err}");
        let mut k = KafkaConfig::default();
        k.librdkafka.insert("compression.codec".into(), "zstd".into());
        assert_eq!(k.check(), Ok(()), "this build has zstd");
    }

    #[test]
    fn options_that_would_break_the_counting_are_refused_with_key_file_and_reason() {
        for (k, bad, good) in [
            ("enable.idempotence", "false", "true"),
            ("acks", "1", "all"),
            ("request.required.acks", "0", "-1"),
            ("enable.auto.commit", "true", "false"),
            ("enable.auto.offset.store", "true", "FALSE"),
            ("auto.offset.reset", "latest", "earliest"),
            ("auto.offset.reset", "ende", "smallest"),
        ] {
            let (_d, p) = write(&format!("[kafka.librdkafka]\n\"{k}\" = \"{bad}\"\n"));
            let err = load::<Cfg, _>(Some(&p), Vec::new()).unwrap_err().to_string();
            assert!(
                err.contains(&format!("kafka.librdkafka.{k:?}"))
                    && err.contains("svc.toml")
                    && err.contains(&format!("{bad:?} is not allowed")),
                "{err}"
            );
            let (_d, p) = write(&format!("[kafka.librdkafka]\n\"{k}\" = \"{good}\"\n"));
            let c = load::<Cfg, _>(Some(&p), Vec::new()).unwrap_or_else(|e| panic!("{k} = {good}: {e}"));
            assert_eq!(c.kafka.librdkafka[k], good);
        }
        // Through the environment too, where values that look like numbers or booleans stay
        // the strings librdkafka takes.
        let env = vec![("TRACEFOLD__KAFKA__LIBRDKAFKA__ENABLE.AUTO.COMMIT".to_owned(), "true".to_owned())];
        let err = load::<Cfg, _>(None, env).unwrap_err().to_string();
        assert!(err.contains(r#"kafka.librdkafka."enable.auto.commit""#) && err.contains("is not allowed"), "{err}");
        let env = vec![
            ("TRACEFOLD__KAFKA__LIBRDKAFKA__LINGER.MS".to_owned(), "20".to_owned()),
            ("TRACEFOLD__KAFKA__LIBRDKAFKA__ENABLE.AUTO.COMMIT".to_owned(), "false".to_owned()),
            ("TRACEFOLD__KAFKA__LIBRDKAFKA__BATCH.SIZE".to_owned(), "\"65536\"".to_owned()),
        ];
        let c = load::<Cfg, _>(None, env).unwrap();
        let got = |k: &str| c.kafka.librdkafka[k].clone();
        assert_eq!([got("linger.ms"), got("enable.auto.commit"), got("batch.size")], ["20", "false", "65536"]);
    }

    #[test]
    fn env_values_that_look_like_numbers_or_booleans_set_string_keys() {
        // A numeric password, a librdkafka option (every one is a string to librdkafka): read
        // as TOML they are an integer and a boolean, which these string keys refuse.
        let env = vec![
            ("TRACEFOLD__CLICKHOUSE__PASSWORD".to_string(), "123456".to_string()),
            ("TRACEFOLD__CLICKHOUSE__DATABASE".to_string(), "true".to_string()),
            ("TRACEFOLD__KAFKA__LIBRDKAFKA__LINGER.MS".to_string(), "5".to_string()),
            ("TRACEFOLD__KAFKA__LIBRDKAFKA__ENABLE.IDEMPOTENCE".to_string(), "true".to_string()),
            ("TRACEFOLD__BATCH__MAX_EVENTS".to_string(), "700".to_string()),
        ];
        let c: Cfg = load(None, env).unwrap();
        assert_eq!(c.clickhouse.password, "123456");
        assert_eq!(c.clickhouse.database, "true");
        assert_eq!(c.kafka.librdkafka["linger.ms"], "5");
        assert_eq!(c.kafka.librdkafka["enable.idempotence"], "true");
        assert_eq!(c.batch.max_events, 700, "a number key still takes the number");
        // A value the key takes neither as TOML nor as text is still refused, naming the variable.
        let env = vec![("TRACEFOLD__BATCH__MAX_EVENTS".to_string(), "many".to_string())];
        let err = load::<Cfg, _>(None, env).unwrap_err().to_string();
        assert!(err.contains("TRACEFOLD__BATCH__MAX_EVENTS") && err.contains("many"), "{err}");
    }

    #[test]
    fn missing_file_is_named() {
        let err = load::<Cfg, _>(Some(Path::new("/nonexistent/tracefold.toml")), Vec::new()).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/tracefold.toml"), "{err}");
    }
}
