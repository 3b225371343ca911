//! The source-map fixtures (tests/fixtures/sourcemaps, made by esbuild through
//! scripts/build-sourcemap-fixtures.sh): six minified builds of one app, their maps, and the
//! real minified stacks V8 reported for each of their bugs, plus the same bugs' frames from the
//! unbundled sources. The grouping-quality corpus draws its JavaScript bugs' frames from here.
//!
//! [`symbolicate_event`] maps an event's frames as the grouper's hook does: through the shared
//! core [`tracefold_symbolicate::symbolicate_frames`], with each build's map parsed together
//! with its minified file, as the grouper's fetcher parses uploads.

use serde::Deserialize;
use std::sync::{Arc, OnceLock};
use tracefold_symbolicate::fetch::FetchOptions;
use tracefold_symbolicate::{symbolicate_frames, url_key, MapKey, MinifiedFrame, ParsedMap};

mod fixtures {
    include!("../../../../tests/fixtures/sourcemaps/builds.rs");
}

const STACKS_JSON: &str = include_str!("../../../../tests/fixtures/sourcemaps/stacks.json");

/// One build of the fixtures.
#[derive(Debug, Deserialize)]
pub struct Build {
    /// Release name, `shop@1.<k>.0`.
    pub release: String,
    /// Content-hashed file name, `main.<hash>.js`.
    pub file: String,
    /// The URL frames name it by.
    pub url: String,
}

/// A bug's stack as V8 reported it: the exception type and the app's frames, oldest first.
#[derive(Debug, Deserialize)]
pub struct Stack {
    /// Exception type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Minified: `(function, line, column)`; the file is the build's URL.
    pub frames: Vec<(String, u32, u32)>,
}

/// A bug's stack from the unbundled sources.
#[derive(Debug, Deserialize)]
pub struct OriginalStack {
    /// Exception type.
    #[serde(rename = "type")]
    pub ty: String,
    /// `(function, file URL, line, column)`, oldest first.
    pub frames: Vec<(String, String, u32, u32)>,
}

/// stacks.json.
#[derive(Debug, Deserialize)]
pub struct Table {
    /// The six builds, release order.
    pub builds: Vec<Build>,
    /// `stacks[build][bug]`.
    pub stacks: Vec<Vec<Stack>>,
    /// `original[bug]`.
    pub original: Vec<OriginalStack>,
}

/// The fixtures, parsed once.
pub fn table() -> &'static Table {
    static T: OnceLock<Table> = OnceLock::new();
    T.get_or_init(|| serde_json::from_str(STACKS_JSON).expect("stacks.json is the fixture script's output"))
}

/// The builds' maps, each parsed with its minified file (for original function names) and the
/// grouper's default limits, by the [`url_key`] of the build's URL.
pub fn maps() -> &'static [(String, Arc<ParsedMap>)] {
    static M: OnceLock<Vec<(String, Arc<ParsedMap>)>> = OnceLock::new();
    M.get_or_init(|| {
        let t = table();
        let limits = FetchOptions::default().limits;
        fixtures::BUILDS
            .iter()
            .map(|(file, js, map)| {
                let build = t.builds.iter().find(|b| b.file == *file).expect("builds.rs and stacks.json agree");
                let parsed = ParsedMap::parse(map.as_bytes(), Some(js), &limits).expect("fixture map parses");
                (url_key(&build.url), Arc::new(parsed))
            })
            .collect()
    })
}

/// The fixture map a key names (by its URL: the corpus's project and release names are its
/// own), as the grouper's cache would answer it.
pub fn lookup(key: &MapKey) -> Option<Arc<ParsedMap>> {
    let MapKey::Url { url, .. } = key else { return None };
    maps().iter().find(|(u, _)| u == url).map(|(_, m)| Arc::clone(m))
}

/// The event JSON with every frame of a fixture build symbolicated as the grouper's hook does
/// (`filename`, `lineno`, `colno` replaced by the original's; `function` by the original
/// name, removed when the map cannot say); the JSON unchanged when no frame is.
pub fn symbolicate_event(json: &str) -> String {
    let t = table();
    if !t.builds.iter().any(|b| json.contains(&b.url)) {
        return json.to_owned();
    }
    let mut v: serde_json::Value = serde_json::from_str(json).expect("corpus events are JSON");
    let project = v["project"].as_str().unwrap_or("").to_owned();
    // The hook needs a release (or a debug id) to name a map; the corpus's events have one.
    let release = v["release"].as_str().unwrap_or("").to_owned();
    let stacks =
        v["exception"].as_array_mut().into_iter().flatten().filter_map(|e| e["stacktrace"]["frames"].as_array_mut());
    for frames in stacks {
        let got = {
            let views: Vec<MinifiedFrame<'_>> = frames
                .iter()
                .map(|f| MinifiedFrame {
                    abs_path: f["abs_path"].as_str(),
                    filename: f["filename"].as_str(),
                    function: f["function"].as_str(),
                    lineno: f["lineno"].as_u64().and_then(|n| u32::try_from(n).ok()),
                    colno: f["colno"].as_u64().and_then(|n| u32::try_from(n).ok()),
                })
                .collect();
            symbolicate_frames(&project, &release, &[], &views, lookup)
        };
        for (f, o) in frames.iter_mut().zip(got) {
            let (Some(o), Some(f)) = (o, f.as_object_mut()) else { continue };
            f.insert("filename".into(), o.file.into());
            f.insert("lineno".into(), o.line.into());
            f.insert("colno".into(), o.col.into());
            // As the hook: a minified name says nothing stable; without an original one, none.
            match o.function {
                Some(func) => f.insert("function".into(), func.into()),
                None => f.remove("function"),
            };
        }
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The throughput fixtures: the same events, minified and original, each one a valid
    /// event; symbolicated, a minified one fingerprints as its original twin.
    #[test]
    fn the_throughput_fixtures_are_the_same_events_minified_and_not() {
        let minified = include_str!("../../../../tests/fixtures/sourcemaps/events-minified.ndjson");
        let original = include_str!("../../../../tests/fixtures/sourcemaps/events-original.ndjson");
        let (minified, original): (Vec<&str>, Vec<&str>) = (minified.lines().collect(), original.lines().collect());
        assert_eq!((minified.len(), original.len()), (300, 300));
        let cfg = tracefold_fingerprint::GroupingConfig::default();
        let mut scratch = tracefold_fingerprint::Scratch::default();
        let mut fp = |json: &str| {
            let ev = tracefold_model::parse_event_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
            (format!("{:?}", ev.event_id), tracefold_fingerprint::fingerprint(&ev, &cfg, &mut scratch).0)
        };
        for (m, o) in minified.iter().zip(&original) {
            let ((mid, _), (oid, ofp)) = (fp(m), fp(o));
            assert_eq!(mid, oid);
            let (_, mapped) = fp(&symbolicate_event(m));
            assert_eq!(mapped, ofp, "{m}");
        }
    }

    /// Every bug's minified crash frame, in every build, maps back to the function that
    /// throws in the unbundled run.
    #[test]
    fn every_build_maps_back_to_the_original_crash_site() {
        let t = table();
        assert_eq!((t.builds.len(), maps().len()), (6, 6));
        for (b, build) in t.builds.iter().enumerate() {
            for (bug, stack) in t.stacks[b].iter().enumerate() {
                let original = &t.original[bug];
                assert_eq!(stack.frames.len(), original.frames.len(), "build {b} bug {bug}");
                let views: Vec<MinifiedFrame<'_>> = stack
                    .frames
                    .iter()
                    .map(|(function, line, col)| MinifiedFrame {
                        abs_path: Some(&build.url),
                        filename: None,
                        function: Some(function),
                        lineno: Some(*line),
                        colno: Some(*col),
                    })
                    .collect();
                let mapped = symbolicate_frames("shop-web", &build.release, &[], &views, lookup);
                for ((min, orig), m) in stack.frames.iter().zip(&original.frames).zip(mapped) {
                    let m = m.unwrap_or_else(|| panic!("build {b} bug {bug}: {min:?} resolves"));
                    assert_eq!(m.function.as_deref(), Some(orig.0.as_str()), "build {b} bug {bug}: {min:?}");
                    assert!(orig.1.ends_with(&m.file), "{} vs {}", orig.1, m.file);
                }
            }
        }
    }
}
