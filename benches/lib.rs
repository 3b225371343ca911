//! Shared pieces of the benchmarks: the checked-in fixture events.
#![allow(missing_docs)]

/// Realistic events (1-3 KB each, nine platforms), made by
/// `tracefold gen --events 500 --issues 60 --seed 2026 --now 1795671540`.
pub const EVENTS_NDJSON: &str = include_str!("fixtures/events.ndjson");

/// The Kafka message timestamp the fixtures were made for (ms).
pub const FIXTURE_NOW_MS: i64 = 1_795_671_540_000;

/// JavaScript events for measuring symbolication (tests/fixtures/sourcemaps): 300 events of
/// the fixture app's 60 bugs with the minified frames V8 reported in its six esbuild builds
/// (maps in tests/fixtures/sourcemaps/builds), and the same events (ids, messages, timestamps)
/// with the frames of the unbundled sources. Same form and time window as [`EVENTS_NDJSON`].
pub const JS_MINIFIED_NDJSON: &str = include_str!("../tests/fixtures/sourcemaps/events-minified.ndjson");

/// See [`JS_MINIFIED_NDJSON`].
pub const JS_ORIGINAL_NDJSON: &str = include_str!("../tests/fixtures/sourcemaps/events-original.ndjson");

/// The fixture events as byte strings.
pub fn events() -> Vec<Vec<u8>> {
    EVENTS_NDJSON.lines().filter(|l| !l.is_empty()).map(|l| l.as_bytes().to_vec()).collect()
}

/// The fixture events with their event ids changed for `round` (0-255): the same issues and
/// sizes, other events, so that replaying the fixture several times per batch is live traffic
/// with repeating issues, not re-sent copies (which the grouper would count as duplicates).
pub fn events_of_round(round: u8) -> Vec<Vec<u8>> {
    const KEY: &[u8] = b"\"event_id\":\"";
    const HEX: &[u8; 16] = b"0123456789abcdef";
    events()
        .into_iter()
        .map(|mut e| {
            if let Some(at) = e.windows(KEY.len()).position(|w| w == KEY) {
                let id = at + KEY.len();
                e[id] = HEX[usize::from(round >> 4)];
                e[id + 1] = HEX[usize::from(round & 15)];
            }
            e
        })
        .collect()
}
