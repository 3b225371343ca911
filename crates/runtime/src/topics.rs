//! Topic definitions, read from `schemas/topics.toml` (embedded at build time).

use serde::Deserialize;

/// The topic definitions file, as checked in.
pub const TOPICS_TOML: &str = include_str!("../../../schemas/topics.toml");

/// One topic definition.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicDef {
    /// Default topic name.
    pub name: String,
    /// `events`, `aggregates`, `dlq`, `signals` or `outcomes`: which [`crate::config::TopicsConfig`] field names it.
    pub role: String,
    /// Default partition count.
    pub partitions: i32,
    /// Retention in milliseconds.
    pub retention_ms: i64,
    /// `delete` or `compact`.
    pub cleanup_policy: String,
    /// What the message key is.
    pub key: String,
    /// What the message value is.
    pub value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    topic: Vec<TopicDef>,
}

/// All topic definitions.
pub fn definitions() -> Vec<TopicDef> {
    toml::from_str::<File>(TOPICS_TOML).expect("schemas/topics.toml is valid (checked by a test)").topic
}

/// The definitions with names replaced by the configured ones.
pub fn configured(topics: &crate::config::TopicsConfig) -> Vec<TopicDef> {
    definitions()
        .into_iter()
        .map(|mut d| {
            d.name = match d.role.as_str() {
                "events" => topics.events.clone(),
                "aggregates" => topics.aggregates.clone(),
                "dlq" => topics.dlq.clone(),
                "signals" => topics.signals.clone(),
                "outcomes" => topics.outcomes.clone(),
                _ => d.name,
            };
            d
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_cover_every_role_once() {
        let defs = definitions();
        let mut roles: Vec<_> = defs.iter().map(|d| d.role.as_str()).collect();
        roles.sort_unstable();
        assert_eq!(roles, ["aggregates", "dlq", "events", "outcomes", "signals"]);
        assert!(defs.iter().all(|d| d.partitions > 0 && d.retention_ms > 0));
        let defaults = crate::config::TopicsConfig::default();
        let names: Vec<_> = configured(&defaults).into_iter().map(|d| d.name).collect();
        assert!(
            names.contains(&defaults.events) && names.contains(&defaults.aggregates) && names.contains(&defaults.dlq)
        );
    }

    #[test]
    fn the_dlq_definition_names_every_header_records_carry() {
        use crate::kafka::dlq_headers::*;
        let dlq = definitions().into_iter().find(|d| d.role == "dlq").expect("a dlq topic");
        for h in [ERROR, REASON, SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET, TRUNCATED] {
            assert!(dlq.value.contains(h), "schemas/topics.toml's dlq value does not name the header {h}");
        }
    }
}
