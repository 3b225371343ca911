//! The source-map fixtures (tests/fixtures/sourcemaps, made by esbuild through
//! scripts/build-sourcemap-fixtures.sh): six minified builds of one app, their maps, and the
//! real minified stacks V8 reported for each of their bugs, plus the same bugs' frames from the
//! unbundled sources. The grouping-quality corpus draws its JavaScript bugs' frames from here.
//!
//! [`symbolicate_frame`] is the one place that maps a minified frame through a map (the
//! grouper's own hook may replace it).

use serde::Deserialize;
use std::sync::OnceLock;
use tracefold_symbolicate::{Limits, ParsedMap};

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

/// The builds' maps (each with its minified file, for original function names), by URL.
pub fn maps() -> &'static [(String, ParsedMap)] {
    static M: OnceLock<Vec<(String, ParsedMap)>> = OnceLock::new();
    M.get_or_init(|| {
        let t = table();
        fixtures::BUILDS
            .iter()
            .map(|(file, js, map)| {
                let build = t.builds.iter().find(|b| b.file == *file).expect("builds.rs and stacks.json agree");
                let parsed =
                    ParsedMap::parse(map.as_bytes(), Some(js), &Limits::default()).expect("fixture map parses");
                (build.url.clone(), parsed)
            })
            .collect()
    })
}

/// A frame after symbolication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedFrame {
    /// Original file, as the map names it (`src/cart.js`).
    pub file: String,
    /// 1-based original line.
    pub line: u32,
    /// 1-based original column.
    pub col: u32,
    /// Original function name; the reported one when the map cannot say.
    pub function: Option<String>,
}

/// Maps a minified frame (`file` URL, 1-based `line` and `col`, the `function` as the stack
/// gave it) through the map among `maps` whose URL is `file`; `None` when there is no such
/// map or the position has no mapping.
pub fn symbolicate_frame(
    maps: &[(String, ParsedMap)],
    file: &str,
    line: u32,
    col: u32,
    function: Option<&str>,
) -> Option<MappedFrame> {
    let (_, map) = maps.iter().find(|(url, _)| url == file)?;
    // V8 writes `Object.a [as run]` for a method called by another name: the name is `a`.
    let reported = function.map(|f| f.split(" [as ").next().unwrap_or(f));
    let o = map.resolve(line, col, reported)?;
    Some(MappedFrame {
        file: o.file,
        line: o.line,
        col: o.col,
        function: o.function.or_else(|| reported.map(str::to_owned)),
    })
}

/// The event JSON with every frame of a fixture build symbolicated (`filename`, `function`,
/// `lineno`, `colno` replaced by the original's); the JSON unchanged when none is.
pub fn symbolicate_event(json: &str) -> String {
    let t = table();
    if !t.builds.iter().any(|b| json.contains(&b.url)) {
        return json.to_owned();
    }
    let mut v: serde_json::Value = serde_json::from_str(json).expect("corpus events are JSON");
    let maps = maps();
    let stacks =
        v["exception"].as_array_mut().into_iter().flatten().filter_map(|e| e["stacktrace"]["frames"].as_array_mut());
    for frames in stacks {
        for f in frames.iter_mut() {
            let (Some(file), Some(line), Some(col)) =
                (f["filename"].as_str(), f["lineno"].as_u64(), f["colno"].as_u64())
            else {
                continue;
            };
            let Some(m) = symbolicate_frame(maps, file, line as u32, col as u32, f["function"].as_str()) else {
                continue;
            };
            f["filename"] = m.file.into();
            f["lineno"] = m.line.into();
            f["colno"] = m.col.into();
            if let Some(func) = m.function {
                f["function"] = func.into();
            }
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
                for (min, orig) in stack.frames.iter().zip(&original.frames) {
                    let m = symbolicate_frame(maps(), &build.url, min.1, min.2, Some(&min.0))
                        .unwrap_or_else(|| panic!("build {b} bug {bug}: {min:?} resolves"));
                    assert_eq!(m.function.as_deref(), Some(orig.0.as_str()), "build {b} bug {bug}: {min:?}");
                    assert!(orig.1.ends_with(&m.file), "{} vs {}", orig.1, m.file);
                }
            }
        }
    }
}
