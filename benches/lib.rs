//! Shared pieces of the benchmarks: the checked-in fixture events.
#![allow(missing_docs)]

/// Realistic events (1-3 KB each, nine platforms), made by
/// `tracefold gen --events 500 --issues 60 --seed 2026 --now 1795671540`.
pub const EVENTS_NDJSON: &str = include_str!("fixtures/events.ndjson");

/// The Kafka message timestamp the fixtures were made for (ms).
pub const FIXTURE_NOW_MS: i64 = 1_795_671_540_000;

/// The fixture events as byte strings.
pub fn events() -> Vec<Vec<u8>> {
    EVENTS_NDJSON.lines().filter(|l| !l.is_empty()).map(|l| l.as_bytes().to_vec()).collect()
}
