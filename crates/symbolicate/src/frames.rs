//! The pure, synchronous core of symbolication: which frames are minified JavaScript, which
//! map each needs, and the mapping of an event's frames given a lookup of parsed maps. No I/O
//! and no clock: the same frames and the same maps always give the same result, so the
//! grouper and the grouping-quality benchmark (which has its maps in memory) agree.

use crate::{normalize_debug_id, url_key, MapKey, OriginalFrame, ParsedMap};
use std::sync::Arc;

/// The fields of a frame that symbolication reads (borrowed from the event).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinifiedFrame<'a> {
    /// `abs_path`: the full URL of the minified file, when the SDK sent one.
    pub abs_path: Option<&'a str>,
    /// `filename`: the file (often the same URL, or its path).
    pub filename: Option<&'a str>,
    /// The minified function name (`a.b`).
    pub function: Option<&'a str>,
    /// 1-based line.
    pub lineno: Option<u32>,
    /// 1-based column.
    pub colno: Option<u32>,
}

/// One `debug_meta.images[]` entry of type `sourcemap` (Sentry's convention): the minified
/// file (`code_file`, a URL) and the debug id of its map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugImage {
    /// The minified file's URL as the SDK reports it.
    pub code_file: String,
    /// The debug id (any form [`normalize_debug_id`] reads).
    pub debug_id: String,
}

impl<'a> MinifiedFrame<'a> {
    /// The file's URL: `abs_path`, else `filename`.
    pub fn url(&self) -> Option<&'a str> {
        self.abs_path.filter(|p| !p.is_empty()).or(self.filename.filter(|f| !f.is_empty()))
    }
}

/// Whether `frame` is a minified JavaScript frame symbolication can map: its file ends in
/// `.js`, `.mjs` or `.cjs` (ignoring a query or fragment) and it has a line and a column.
pub fn is_minified_js(frame: &MinifiedFrame<'_>) -> bool {
    if frame.lineno.is_none() || frame.colno.is_none() {
        return false;
    }
    let Some(url) = frame.url() else { return false };
    // Bytes, not chars: `?`, `#` and the extensions are ASCII, so a match is one in the text
    // (every event's every frame is checked: this is on the hot path).
    let url = url.as_bytes();
    let path = &url[..memchr::memchr2(b'?', b'#', url).unwrap_or(url.len())];
    let ends = |ext: &[u8]| path.len() >= ext.len() && path[path.len() - ext.len()..].eq_ignore_ascii_case(ext);
    ends(b".js") || ends(b".mjs") || ends(b".cjs")
}

/// The map `frame` needs: by debug id when one of `images` names the frame's file, else by
/// `(project, release, url_key)` when the event has a release. `None` for a frame that is not
/// [`is_minified_js`] or that no key can name.
pub fn map_key(project: &str, release: &str, images: &[DebugImage], frame: &MinifiedFrame<'_>) -> Option<MapKey> {
    if !is_minified_js(frame) {
        return None;
    }
    let key = url_key(frame.url()?);
    if key.is_empty() {
        return None;
    }
    let by_id = images
        .iter()
        .filter(|i| url_key(&i.code_file) == key)
        .find_map(|i| normalize_debug_id(&i.debug_id))
        .map(|id| MapKey::DebugId { project: project.to_owned(), id });
    by_id.or_else(|| {
        (!release.is_empty()).then(|| MapKey::Url {
            project: project.to_owned(),
            release: release.to_owned(),
            url: key,
        })
    })
}

/// Maps an event's minified frames to their original positions: for each frame of `frames`,
/// `Some` with the original file, line, column, function and context when [`map_key`] names a
/// map, `lookup` has it, and the map has a mapping at the frame's line and column; `None`
/// otherwise (the frame stays as it is). `lookup` is called at most once per distinct key, in
/// frame order.
///
/// Pure and synchronous: no I/O, no clock. What the grouper applies before fingerprinting
/// ([`locate_frames`], the same without the context, with maps from
/// [`crate::fetch::Symbolicator`]) and what other code (the grouping-quality benchmark) can
/// call with maps it holds.
pub fn symbolicate_frames(
    project: &str,
    release: &str,
    images: &[DebugImage],
    frames: &[MinifiedFrame<'_>],
    lookup: impl FnMut(&MapKey) -> Option<Arc<ParsedMap>>,
) -> Vec<Option<OriginalFrame>> {
    each_mapped(project, release, images, frames, lookup, |map, f| map.resolve(f.lineno?, f.colno?, f.function))
}

/// A frame mapped without its source context, and the map that mapped it.
pub type Located = (OriginalFrame, Arc<ParsedMap>);

/// [`symbolicate_frames`] without the source context, each mapped frame with the map that
/// mapped it (to add the context later with [`ParsedMap::add_context`], for the one event in
/// many whose frames are displayed): the grouper's hot path.
pub fn locate_frames(
    project: &str,
    release: &str,
    images: &[DebugImage],
    frames: &[MinifiedFrame<'_>],
    lookup: impl FnMut(&MapKey) -> Option<Arc<ParsedMap>>,
) -> Vec<Option<Located>> {
    each_mapped(project, release, images, frames, lookup, |map, f| {
        map.locate(f.lineno?, f.colno?, f.function).map(|o| (o, Arc::clone(map)))
    })
}

/// Per frame: the map of a minified JavaScript frame (by [`map_key`], through `lookup`), given
/// to `resolve`; `None` for other frames and frames without a map.
fn each_mapped<T>(
    project: &str,
    release: &str,
    images: &[DebugImage],
    frames: &[MinifiedFrame<'_>],
    mut lookup: impl FnMut(&MapKey) -> Option<Arc<ParsedMap>>,
    mut resolve: impl FnMut(&Arc<ParsedMap>, &MinifiedFrame<'_>) -> Option<T>,
) -> Vec<Option<T>> {
    let mut seen: Vec<(MapKey, Option<Arc<ParsedMap>>)> = Vec::new();
    // A stack's frames are mostly of one file: the frame before's file names the same map
    // without building its key again.
    let mut last: Option<(&str, Option<Arc<ParsedMap>>)> = None;
    frames
        .iter()
        .map(|f| {
            if !is_minified_js(f) {
                return None;
            }
            let url = f.url()?;
            let map = match &last {
                Some((u, m)) if *u == url => m.clone(),
                _ => {
                    let m = map_key(project, release, images, f).and_then(|key| {
                        match seen.iter().find(|(k, _)| *k == key) {
                            Some((_, m)) => m.clone(),
                            None => {
                                let m = lookup(&key);
                                seen.push((key, m.clone()));
                                m
                            }
                        }
                    });
                    last = Some((url, m.clone()));
                    m
                }
            }?;
            resolve(&map, f)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;
    use sourcemap::SourceMapBuilder;

    fn map() -> Arc<ParsedMap> {
        let mut b = SourceMapBuilder::new(Some("main.js"));
        let src = b.add_source("src/app.ts");
        b.set_source_contents(src, Some("function fail() {\n  throw new Error('x');\n}\n"));
        b.add(0, 0, 0, 0, Some("src/app.ts"), Some("fail"), false);
        b.add(0, 13, 1, 2, Some("src/app.ts"), None, false);
        let mut out = Vec::new();
        b.into_sourcemap().to_writer(&mut out).unwrap();
        Arc::new(ParsedMap::parse(&out, None, &Limits::default()).unwrap())
    }

    fn frame(url: &str, line: u32, col: u32) -> MinifiedFrame<'_> {
        MinifiedFrame { abs_path: Some(url), filename: None, function: Some("a"), lineno: Some(line), colno: Some(col) }
    }

    #[test]
    fn only_js_files_with_line_and_column_are_candidates() {
        assert!(is_minified_js(&frame("https://x/static/main.3f9a.js?v=1", 1, 1)));
        assert!(is_minified_js(&frame("app:///bundle.MJS", 1, 1)));
        assert!(is_minified_js(&frame("/a/b.cjs#x", 1, 1)));
        assert!(!is_minified_js(&frame("https://x/main.ts", 1, 1)));
        assert!(!is_minified_js(&frame("é.js€", 1, 1)));
        assert!(!is_minified_js(&MinifiedFrame { colno: None, ..frame("a.js", 1, 1) }));
        assert!(!is_minified_js(&MinifiedFrame::default()));
    }

    proptest::proptest! {
        /// The byte-level check says what the first version (chars, `split`) said, for any text.
        #[test]
        fn the_minified_check_is_the_char_level_one(url in "(\\PC|[?#.]|js|JS|mjs|cJs){0,12}") {
            let old = |url: &str| {
                let path = url.split(['?', '#']).next().unwrap_or("");
                let ends = |ext: &str| {
                    path.len() >= ext.len()
                        && path.is_char_boundary(path.len() - ext.len())
                        && path[path.len() - ext.len()..].eq_ignore_ascii_case(ext)
                };
                !url.is_empty() && (ends(".js") || ends(".mjs") || ends(".cjs"))
            };
            proptest::prop_assert_eq!(is_minified_js(&frame(&url, 1, 1)), old(&url), "{:?}", url);
        }
    }

    #[test]
    fn debug_ids_win_over_release_and_url() {
        let images = [DebugImage {
            code_file: "https://cdn.example/static/main.js".into(),
            debug_id: "C0FFEE00-1234-4ABC-8DEF-0123456789AB".into(),
        }];
        let f = frame("https://x.example/static/main.js?v=2", 1, 14);
        assert_eq!(
            map_key("web", "1.0", &images, &f),
            Some(MapKey::DebugId { project: "web".into(), id: "c0ffee00-1234-4abc-8def-0123456789ab".into() })
        );
        let other = frame("https://x.example/static/other.js", 1, 14);
        assert_eq!(
            map_key("web", "1.0", &images, &other),
            Some(MapKey::Url { project: "web".into(), release: "1.0".into(), url: "~/static/other.js".into() })
        );
        assert_eq!(map_key("web", "", &images, &other), None, "no release, no debug id: no key");
    }

    /// `function a(){throw new Error('x')}` built from `fail` in src/app.ts: the mapping at the
    /// `new Error` call names the callee, `Error`.
    fn map_with_callee(minified: Option<&str>) -> Arc<ParsedMap> {
        let mut b = SourceMapBuilder::new(Some("main.js"));
        let src = b.add_source("src/app.ts");
        b.set_source_contents(src, Some("function fail() {\n  throw new Error('x');\n}\n"));
        b.add(0, 0, 0, 0, Some("src/app.ts"), None, false);
        b.add(0, 9, 0, 9, Some("src/app.ts"), Some("fail"), false);
        b.add(0, 13, 1, 2, Some("src/app.ts"), None, false);
        b.add(0, 19, 1, 8, Some("src/app.ts"), Some("Error"), false);
        let mut out = Vec::new();
        b.into_sourcemap().to_writer(&mut out).unwrap();
        Arc::new(ParsedMap::parse(&out, minified, &Limits::default()).unwrap())
    }

    #[test]
    fn v8_method_aliases_and_the_minified_file_give_the_enclosing_function() {
        let minified = "function a(){throw new Error('x')}\n";
        let with_file = map_with_callee(Some(minified));
        let without_file = map_with_callee(None);
        for name in ["a", "Object.a", "Object.a [as run]", "a [as é [as 💥]]"] {
            let f = MinifiedFrame { function: Some(name), ..frame("https://x/main.js", 1, 20) };
            let got = symbolicate_frames("web", "1", &[], &[f], |_| Some(Arc::clone(&with_file)));
            let o = got[0].as_ref().unwrap_or_else(|| panic!("{name} resolves"));
            assert_eq!((o.function.as_deref(), o.line, o.col), (Some("fail"), 2, 9), "{name}");
        }
        // Without the minified file, the map alone names the callee at the position.
        let f = MinifiedFrame { function: Some("Object.a [as run]"), ..frame("https://x/main.js", 1, 20) };
        let got = symbolicate_frames("web", "1", &[], &[f], |_| Some(Arc::clone(&without_file)));
        assert_eq!(got[0].as_ref().unwrap().function.as_deref(), Some("Error"));
    }

    #[test]
    fn memoized_function_names_are_those_found_afresh() {
        let minified = "function a(){throw new Error('x')}\n";
        let m = map_with_callee(Some(minified));
        for _ in 0..2 {
            for name in ["a", "b", "Object.a", "é", "a [as b]"] {
                for col in [1, 14, 20, 30] {
                    let fresh = map_with_callee(Some(minified)).resolve(1, col, Some(name));
                    assert_eq!(m.resolve(1, col, Some(name)), fresh, "{name} at {col}");
                }
            }
        }
    }

    #[test]
    fn frames_map_through_the_lookup_once_per_key() {
        let m = map();
        let frames =
            [frame("https://x/main.js", 1, 14), frame("https://x/main.js", 1, 1), frame("https://x/vendor.js", 1, 1)];
        let mut asked = Vec::new();
        let got = symbolicate_frames("web", "1", &[], &frames, |k| {
            asked.push(k.clone());
            matches!(k, MapKey::Url { url, .. } if url == "~/main.js").then(|| Arc::clone(&m))
        });
        assert_eq!(asked.len(), 2);
        let f0 = got[0].as_ref().unwrap();
        assert_eq!((f0.file.as_str(), f0.line, f0.col), ("src/app.ts", 2, 3));
        assert_eq!(f0.context_line.as_deref(), Some("  throw new Error('x');"));
        assert_eq!(got[1].as_ref().unwrap().line, 1);
        assert!(got[2].is_none());
    }

    /// The grouper's path (positions first, the context later for the sample) gives exactly
    /// what the whole resolution gives, at every position of the map and past it.
    #[test]
    fn located_frames_with_their_context_added_are_the_resolved_ones() {
        let minified = "function a(){throw new Error('x')}\n";
        for m in [map(), map_with_callee(Some(minified)), map_with_callee(None)] {
            let frames: Vec<MinifiedFrame<'_>> =
                (0..40).map(|col| frame("https://x/main.js", 1 + col / 36, col % 36)).collect();
            let whole = symbolicate_frames("web", "1", &[], &frames, |_| Some(Arc::clone(&m)));
            let located = locate_frames("web", "1", &[], &frames, |_| Some(Arc::clone(&m)));
            assert_eq!(whole.len(), located.len());
            for ((w, l), f) in whole.into_iter().zip(located).zip(&frames) {
                let l = l.map(|(mut o, map)| {
                    assert!(o.context_line.is_none() && o.pre_context.is_empty() && o.post_context.is_empty());
                    map.add_context(f.lineno.unwrap(), f.colno.unwrap(), &mut o);
                    o
                });
                assert_eq!(l, w, "{f:?}");
            }
        }
    }
}
