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
    with_round(events(), round)
}

/// The events of `ndjson` ([`JS_MINIFIED_NDJSON`] or [`JS_ORIGINAL_NDJSON`]) with their event
/// ids changed for `round`, as [`events_of_round`] does.
pub fn js_events_of_round(ndjson: &str, round: u8) -> Vec<Vec<u8>> {
    with_round(ndjson.lines().filter(|l| !l.is_empty()).map(|l| l.as_bytes().to_vec()).collect(), round)
}

fn with_round(events: Vec<Vec<u8>>, round: u8) -> Vec<Vec<u8>> {
    const KEY: &[u8] = b"\"event_id\":\"";
    const HEX: &[u8; 16] = b"0123456789abcdef";
    events
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

mod fixture_builds {
    include!("../tests/fixtures/sourcemaps/builds.rs");
}

/// The grouper's source-map hook with the maps (and minified files) of the six builds of
/// [`JS_MINIFIED_NDJSON`] uploaded to an in-memory artifact store and already parsed into the
/// symbolicator's cache, as a grouper has them after the first events of a release: adding an
/// event fetches nothing.
pub fn js_sourcemap_hook() -> tracefold_grouper::symbolicate::Hook {
    use std::sync::Arc;
    use tracefold_symbolicate::fetch::{FetchOptions, Found, Symbolicator};
    use tracefold_symbolicate::store::{ArtifactKind, ArtifactStore};
    use tracefold_symbolicate::{url_key, MapKey};

    #[derive(serde::Deserialize)]
    struct Build {
        release: String,
        file: String,
        url: String,
    }
    #[derive(serde::Deserialize)]
    struct Table {
        builds: Vec<Build>,
    }
    let table: Table = serde_json::from_str(include_str!("../tests/fixtures/sourcemaps/stacks.json"))
        .expect("stacks.json is the fixture script's output");
    let store = ArtifactStore::new(Arc::new(object_store::memory::InMemory::new()));
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let mut keys = Vec::new();
    for (file, js, map) in fixture_builds::BUILDS {
        let b = table.builds.iter().find(|b| b.file == *file).expect("builds.rs and stacks.json agree");
        let url = url_key(&b.url);
        rt.block_on(async {
            for (kind, bytes) in [(ArtifactKind::Map, map), (ArtifactKind::Minified, js)] {
                let bytes = bytes::Bytes::from_static(bytes.as_bytes());
                store.put("shop-web", &b.release, &url, None, kind, bytes).await.expect("in-memory upload");
            }
        });
        keys.push(MapKey::Url { project: "shop-web".into(), release: b.release.clone(), url });
    }
    let symbolicator = Symbolicator::new(store, FetchOptions::default()).expect("symbolicator");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    for found in symbolicator.maps(&keys, deadline) {
        assert!(matches!(found, Found::Map(_)), "every fixture map parses and is cached: {found:?}");
    }
    // A budget no cached lookup comes near: the outcome never depends on timing.
    tracefold_grouper::symbolicate::Hook {
        symbolicator: Arc::new(symbolicator),
        budget: std::time::Duration::from_secs(600),
    }
}
