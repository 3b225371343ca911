//! Source maps for minified JavaScript: bounded parsing of uploaded maps, resolution of a
//! minified frame (1-based line and column, as browsers and Node report them) to the original
//! file, line, column, function and a few lines of source context, Sentry's debug-id
//! convention, a bounded cache of parsed maps, and the object store that holds uploaded maps
//! ([`store`]). [`symbolicate_frames`] is the pure, synchronous core that maps an event's
//! frames given a lookup of parsed maps (the grouper and the grouping-quality benchmark both
//! call it); [`fetch::Symbolicator`] feeds it from the object store with a bounded cache,
//! bounded concurrency and a per-event time budget. See docs/sourcemaps.md.
//!
//! Nothing here panics on any input: a map that is too large, malformed, or of a kind we do
//! not support (indexed, Hermes) is rejected with a [`MapError`] that says why.
#![warn(missing_docs)]

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use sourcemap::{SourceMap, SourceView};

pub mod fetch;
pub mod frames;
pub mod store;

pub use frames::{is_minified_js, locate_frames, map_key, symbolicate_frames, DebugImage, Located, MinifiedFrame};

/// Limits that keep one upload or one event from costing unbounded memory or time.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted map, in bytes (before parsing).
    pub max_map_bytes: usize,
    /// Largest accepted minified file, in bytes; a larger one is ignored (function names then
    /// come from the map's `names` alone).
    pub max_minified_bytes: usize,
    /// Lines of source context on each side of the frame's line.
    pub context_lines: u32,
    /// A context line longer than this (in bytes) is cut at a character boundary and ends in `…`.
    pub max_context_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_map_bytes: 64 << 20, max_minified_bytes: 32 << 20, context_lines: 5, max_context_line_bytes: 200 }
    }
}

/// Why a map was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapError {
    /// The map is larger than [`Limits::max_map_bytes`].
    TooLarge {
        /// Size of the map in bytes.
        size: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// The map is not a valid source map (JSON or mappings); the text says where.
    Malformed(String),
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::TooLarge { size, limit } => {
                write!(f, "source map is {size} bytes, larger than the limit of {limit} bytes")
            }
            MapError::Malformed(why) => write!(f, "not a usable source map: {why}"),
        }
    }
}

impl std::error::Error for MapError {}

/// A minified frame mapped to its original position.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OriginalFrame {
    /// Original source file as the map names it (with the map's `sourceRoot` applied).
    pub file: String,
    /// 1-based original line.
    pub line: u32,
    /// 1-based original column.
    pub col: u32,
    /// Original function name, when the map (and the minified file) allow recovering it.
    pub function: Option<String>,
    /// Lines before `context_line` (oldest first), when the map has `sourcesContent`.
    pub pre_context: Vec<String>,
    /// The original line itself, when the map has `sourcesContent`.
    pub context_line: Option<String>,
    /// Lines after `context_line`.
    pub post_context: Vec<String>,
}

/// A parsed source map, optionally with its minified file (for original function names).
pub struct ParsedMap {
    map: SourceMap,
    minified: Option<SourceView>,
    bytes: usize,
    context_lines: u32,
    max_context_line_bytes: usize,
    /// Positions already located, by position and reported function name (see
    /// [`PositionMemo`]): finding an original function name scans the minified file backwards
    /// token by token, which costs a hundred times the rest of a frame's resolution, and the
    /// same crash sites repeat.
    located: Mutex<PositionMemo>,
    /// Source contexts already read, by minified position (see [`ParsedMap::context`]).
    contexts: Mutex<ContextMemo>,
}

/// Source contexts by minified position (1-based line and column), `None` where there is none,
/// and the bytes they hold.
#[derive(Default)]
struct ContextMemo {
    by_position: HashMap<(u32, u32), Option<Arc<SourceContext>>>,
    bytes: usize,
}

/// Most source contexts memoized per map ([`ParsedMap::context`]); a full memo is emptied.
/// An entry holds at most `2 * context_lines + 1` lines of at most `max_context_line_bytes`
/// bytes each, twice (the lines and their JSON, where an escaped control character takes six
/// bytes): with the default [`Limits`] about 4.5 KiB, at most about 16 KiB, an entry.
pub const MAX_MEMOIZED_CONTEXTS: usize = 256;

/// Most bytes of source context memoized per map ([`ParsedMap::context`]), lines and JSON
/// counted: a memo that would pass it is emptied first. Many positions can share one context
/// (every column of a token, control characters escaped six times over), so the count of
/// entries alone would let one small map hold megabytes; with this bound the memos of the
/// cache's maps hold at most `MAX_MEMOIZED_CONTEXT_BYTES` plus one entry each, beside the
/// cache's own byte budget.
pub const MAX_MEMOIZED_CONTEXT_BYTES: usize = 256 << 10;

/// The source context of a mapped position, as [`ParsedMap::add_context`] fills it, with the
/// same three fields as JSON (for a sample's frame), read once per position
/// ([`ParsedMap::context`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceContext {
    /// Lines before `context_line` (oldest first).
    pub pre_context: Vec<String>,
    /// The original line itself.
    pub context_line: String,
    /// Lines after `context_line`.
    pub post_context: Vec<String>,
    /// The three as members of a JSON object, written as `serde_json` writes them (compact):
    /// `"pre_context":[...],"context_line":"...","post_context":[...]`.
    pub json: String,
}

impl SourceContext {
    fn new(pre_context: Vec<String>, context_line: String, post_context: Vec<String>) -> Self {
        // `serde_json` writes the values (compact, as a sample's other members are written).
        let json = format!(
            r#""pre_context":{},"context_line":{},"post_context":{}"#,
            serde_json::Value::from(pre_context.clone()),
            serde_json::Value::from(context_line.as_str()),
            serde_json::Value::from(post_context.clone())
        );
        Self { pre_context, context_line, post_context, json }
    }

    /// Bytes the context holds (its lines and its JSON), for the memo's bound.
    fn bytes(&self) -> usize {
        self.json.len()
            + self.context_line.len()
            + self.pre_context.iter().chain(&self.post_context).map(|l| l.len() + 24).sum::<usize>()
            + 128
    }
}

/// Bytes of one parsed mapping segment (`sourcemap::RawToken`), for [`ParsedMap::cost`].
pub const PARSED_TOKEN_BYTES: usize = std::mem::size_of::<sourcemap::RawToken>();

/// Bytes of one parsed name or source beside its text, for [`ParsedMap::cost`]: its pointer (16)
/// and its allocation's header and rounding (about 32).
pub const PARSED_ENTRY_BYTES: usize = 48;

/// Bytes of one source's slot for its contents (`Option<SourceView>`), for [`ParsedMap::cost`].
pub const PARSED_SOURCE_BYTES: usize = std::mem::size_of::<Option<SourceView>>();

/// Most memoized positions per map; a full memo is emptied (the positions are located
/// again). About 150 bytes an entry (the shared strings included): at most about 150 KiB per
/// cached map.
pub const MAX_MEMOIZED_POSITIONS: usize = 1024;

/// Longest reported function name a memoized position keeps ([`ParsedMap::position`]): a
/// frame with a longer one is located each time (real minified names are a few bytes, V8's
/// `Object.a [as run]` forms a few dozen), so hostile names cannot fill the memo with their
/// bytes.
pub const MAX_MEMOIZED_FUNCTION_BYTES: usize = 256;

/// A minified position located in the original source (file, line, column and function,
/// no source context), as [`ParsedMap::position`] memoizes it: the strings are shared by every
/// frame at that position, so a repeated crash site costs reference counts, not copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Original source file as the map names it (with the map's `sourceRoot` applied).
    pub file: Arc<str>,
    /// 1-based original line.
    pub line: u32,
    /// 1-based original column.
    pub col: u32,
    /// Original function name, when the map (and the minified file) allow recovering it.
    pub function: Option<Arc<str>>,
}

impl Position {
    /// The position as an [`OriginalFrame`] without source context.
    pub fn to_original(&self) -> OriginalFrame {
        OriginalFrame {
            file: self.file.to_string(),
            line: self.line,
            col: self.col,
            function: self.function.as_deref().map(str::to_owned),
            ..OriginalFrame::default()
        }
    }
}

/// One memoized position: the exact key (the table is by its hash) and what it located to.
#[derive(Debug)]
struct MemoEntry {
    line: u32,
    col: u32,
    function: Option<Box<str>>,
    found: Option<Arc<Position>>,
}

/// Memoized positions by an xxh3 of `(line, column, reported function)`: a hash table whose
/// keys are already hashes needs no second hash function.
type PositionMemo = HashMap<u64, MemoEntry, std::hash::BuildHasherDefault<Prehashed>>;

/// The identity hasher for keys that are xxh3 hashes already.
#[derive(Debug, Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by the memo; anything else is folded in, never lost.
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The memo's key for a position and reported function name (`None` and `Some("")` differ).
fn memo_key(line: u32, col: u32, function: Option<&str>) -> u64 {
    let seed = (u64::from(line) << 32) | u64::from(col);
    match function {
        Some(f) => xxhash_rust::xxh3::xxh3_64_with_seed(f.as_bytes(), seed),
        None => xxhash_rust::xxh3::xxh3_64_with_seed(b"", !seed),
    }
}

impl fmt::Debug for ParsedMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedMap")
            .field("bytes", &self.bytes)
            .field("sources", &self.map.get_source_count())
            .field("minified", &self.minified.is_some())
            .finish()
    }
}

impl ParsedMap {
    /// Parses `map` (the `.js.map` bytes), with the minified file's text when it is known.
    pub fn parse(map: &[u8], minified: Option<&str>, limits: &Limits) -> Result<Self, MapError> {
        if map.len() > limits.max_map_bytes {
            return Err(MapError::TooLarge { size: map.len(), limit: limits.max_map_bytes });
        }
        // The sourcemap crate reports bad input as errors; the guard is for any panic it may
        // still have on input nobody tried, so that one upload can never take a process down.
        let parsed = std::panic::catch_unwind(|| SourceMap::from_slice(map))
            .map_err(|_| MapError::Malformed("the parser failed on this input".into()))?
            .map_err(|e| MapError::Malformed(e.to_string()))?;
        let minified =
            minified.filter(|m| m.len() <= limits.max_minified_bytes).map(|m| SourceView::from_string(m.to_owned()));
        Ok(Self {
            map: parsed,
            minified,
            bytes: map.len(),
            context_lines: limits.context_lines,
            max_context_line_bytes: limits.max_context_line_bytes,
            located: Mutex::new(PositionMemo::default()),
            contexts: Mutex::new(ContextMemo::default()),
        })
    }

    /// Approximate memory cost, for the cache's budget: the map's size in bytes, what parsing
    /// made of it (a token per mapping segment, [`PARSED_TOKEN_BYTES`] each; a shared string per
    /// name and source, [`PARSED_ENTRY_BYTES`] each beside its text), and the minified file's
    /// size. The parsed form is what the cache holds: a segment is 1 to 5 bytes of JSON (`A,`)
    /// and 28 bytes parsed, so a map of 64 MiB can hold a gigabyte of tokens, which counting its
    /// bytes alone would have let the cache keep several of within a 512 MiB budget.
    pub fn cost(&self) -> usize {
        let count = |n: u32, each: usize| usize::try_from(n).unwrap_or(usize::MAX).saturating_mul(each);
        self.bytes
            .saturating_add(count(self.map.get_token_count(), PARSED_TOKEN_BYTES))
            .saturating_add(count(self.map.get_name_count(), PARSED_ENTRY_BYTES))
            .saturating_add(count(self.map.get_source_count(), PARSED_ENTRY_BYTES + PARSED_SOURCE_BYTES))
            .saturating_add(self.minified.as_ref().map_or(0, |m| m.source().len()))
    }

    /// The map's debug id (`debug_id` or `debugId`), lower-case hyphenated, if it has one.
    pub fn debug_id(&self) -> Option<String> {
        self.map.get_debug_id().map(|d| d.to_string().to_ascii_lowercase())
    }

    /// Maps a minified position (1-based `line` and `col`, as in a JavaScript stack trace) to
    /// the original. `minified_function` is the frame's reported function name (as V8 writes
    /// it: `Object.a [as run]` is read as `a`), used to find the original name in the minified
    /// file; a map parsed without its minified file can only name what the mapping at the
    /// position names (often the callee, not the enclosing function). `None` when the map has no mapping on that line
    /// at or before that column, or the mapping has no source.
    pub fn resolve(&self, line: u32, col: u32, minified_function: Option<&str>) -> Option<OriginalFrame> {
        let mut out = self.locate(line, col, minified_function)?;
        self.add_context(line, col, &mut out);
        Some(out)
    }

    /// [`Self::resolve`] without the source context: file, line, column and function only
    /// (what grouping needs; the context lines are for display, see [`Self::add_context`]).
    pub fn locate(&self, line: u32, col: u32, minified_function: Option<&str>) -> Option<OriginalFrame> {
        self.position(line, col, minified_function).map(|p| p.to_original())
    }

    /// [`Self::locate`], shared and memoized: the first sight of a position (1-based `line`
    /// and `col`) with a reported function name locates it; later ones cost a hash lookup
    /// (at most [`MAX_MEMOIZED_POSITIONS`] per map, emptied when full; names past
    /// [`MAX_MEMOIZED_FUNCTION_BYTES`] are not kept).
    pub fn position(&self, line: u32, col: u32, minified_function: Option<&str>) -> Option<Arc<Position>> {
        let key = memo_key(line, col, minified_function);
        {
            let memo = self.located.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(e) = memo.get(&key) {
                if e.line == line && e.col == col && e.function.as_deref() == minified_function {
                    return e.found.clone();
                }
            }
        }
        let found = self.locate_uncached(line, col, minified_function).map(Arc::new);
        if minified_function.is_some_and(|f| f.len() > MAX_MEMOIZED_FUNCTION_BYTES) {
            return found;
        }
        let mut memo = self.located.lock().unwrap_or_else(PoisonError::into_inner);
        if memo.len() >= MAX_MEMOIZED_POSITIONS {
            memo.clear();
        }
        let entry = MemoEntry { line, col, function: minified_function.map(Into::into), found: found.clone() };
        memo.insert(key, entry);
        found
    }

    fn locate_uncached(&self, line: u32, col: u32, minified_function: Option<&str>) -> Option<Position> {
        let (line0, col0, token) = self.token(line, col)?;
        let file = token.get_source()?.into();
        let function = self.function_name(line0, col0, minified_function).or_else(|| {
            // Without the minified file, the name at the position (the callee or identifier
            // the mapping names) is the best the map alone can say.
            self.minified.is_none().then(|| token.get_name().map(Into::into)).flatten()
        });
        Some(Position {
            file,
            line: token.get_src_line().saturating_add(1),
            col: token.get_src_col().saturating_add(1),
            function,
        })
    }

    /// Fills `out`'s `pre_context`, `context_line` and `post_context` from the map's
    /// `sourcesContent` for the minified position (1-based `line`, `col`) that [`Self::locate`]
    /// mapped to `out`; leaves them empty where the map has no sources.
    pub fn add_context(&self, line: u32, col: u32, out: &mut OriginalFrame) {
        if let Some((_, _, token)) = self.token(line, col) {
            if let Some(view) = token.get_source_view() {
                self.fill_context(view, token.get_src_line(), out);
            }
        }
    }

    /// The source context [`Self::add_context`] gives for the minified position (1-based `line`,
    /// `col`), with its JSON, memoized per position (at most [`MAX_MEMOIZED_CONTEXTS`] entries
    /// and [`MAX_MEMOIZED_CONTEXT_BYTES`] per map, emptied when full): a sample of a repeated crash site costs a lookup, not the lines read,
    /// cut and escaped again. `None` where [`Self::add_context`] leaves the context empty.
    pub fn context(&self, line: u32, col: u32) -> Option<Arc<SourceContext>> {
        if let Some(found) = self.contexts.lock().unwrap_or_else(PoisonError::into_inner).by_position.get(&(line, col))
        {
            return found.clone();
        }
        let mut read = OriginalFrame::default();
        self.add_context(line, col, &mut read);
        let OriginalFrame { pre_context, context_line, post_context, .. } = read;
        let found = context_line.map(|l| Arc::new(SourceContext::new(pre_context, l, post_context)));
        let bytes = found.as_ref().map_or(0, |c| c.bytes()) + 32;
        let mut memo = self.contexts.lock().unwrap_or_else(PoisonError::into_inner);
        if memo.by_position.len() >= MAX_MEMOIZED_CONTEXTS || memo.bytes + bytes > MAX_MEMOIZED_CONTEXT_BYTES {
            memo.by_position.clear();
            memo.bytes = 0;
        }
        if memo.by_position.insert((line, col), found.clone()).is_none() {
            memo.bytes += bytes;
        }
        found
    }

    /// The mapping of a 1-based minified position: its 0-based line and column and the token,
    /// `None` unless the map has a mapping with a source on that line at or before the column.
    fn token(&self, line: u32, col: u32) -> Option<(u32, u32, sourcemap::Token<'_>)> {
        let (line0, col0) = (line.checked_sub(1)?, col.saturating_sub(1));
        let token = self.map.lookup_token(line0, col0)?;
        // The nearest token before the position may be on an earlier line: that is not a
        // mapping of this position.
        if token.get_dst_line() != line0 || !token.has_source() {
            return None;
        }
        Some((line0, col0, token))
    }

    fn function_name(&self, line0: u32, col0: u32, minified_function: Option<&str>) -> Option<Arc<str>> {
        let view = self.minified.as_ref()?;
        // V8 writes `Object.a [as run]` for a method called by another name: the function is
        // `a`. Only the last segment of `a.b` names the function in the minified file.
        let reported = minified_function?;
        let reported = reported.split(" [as ").next().unwrap_or(reported);
        let name = reported.rsplit('.').next().filter(|n| !n.is_empty())?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.map.get_original_function_name(line0, col0, name, view).map(Into::into)
        }))
        .ok()
        .flatten()
    }

    fn fill_context(&self, view: &SourceView, src_line: u32, out: &mut OriginalFrame) {
        let Some(line) = view.get_line(src_line) else { return };
        let cut = |s: &str| cut_line(s, self.max_context_line_bytes);
        out.context_line = Some(cut(line));
        let first = src_line.saturating_sub(self.context_lines);
        out.pre_context = (first..src_line).filter_map(|i| view.get_line(i)).map(cut).collect();
        out.post_context = (src_line.saturating_add(1)..=src_line.saturating_add(self.context_lines))
            .map_while(|i| view.get_line(i))
            .map(cut)
            .collect();
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary, ending in `…` when cut.
pub fn cut_line(s: &str, max: usize) -> String {
    let s = s.trim_end_matches(['\r', '\n']);
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The debug id of a minified file: the last `//# debugId=<uuid>` comment (Sentry's
/// convention), lower-case hyphenated. Only the file's last 64 KiB are searched, as the
/// comment sits at its end.
pub fn debug_id_of_minified(src: &str) -> Option<String> {
    last_comment(src, "debugId=").and_then(normalize_debug_id)
}

/// The `//# sourceMappingURL=` of a minified file (the last one), unless it is a `data:` URL.
pub fn source_mapping_url(src: &str) -> Option<&str> {
    last_comment(src, "sourceMappingURL=").filter(|u| !u.starts_with("data:"))
}

fn last_comment<'s>(src: &'s str, key: &str) -> Option<&'s str> {
    let mut start = src.len().saturating_sub(64 << 10);
    while !src.is_char_boundary(start) {
        start += 1;
    }
    src[start..].lines().rev().find_map(|l| {
        let l = l.trim();
        let rest = l.strip_prefix("//#").or_else(|| l.strip_prefix("//@"))?;
        let value = rest.trim_start().strip_prefix(key)?.trim();
        (!value.is_empty()).then_some(value)
    })
}

/// A debug id in canonical form (lower-case, hyphenated UUID), or `None` if `s` is not one.
pub fn normalize_debug_id(s: &str) -> Option<String> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let h = hex.to_ascii_lowercase();
    Some(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
}

/// The release-relative form of a frame's URL, as uploads name files: scheme and host become
/// `~` (`https://example.com/static/js/main.js?v=1` → `~/static/js/main.js`); a query and
/// fragment are dropped; a path without scheme is kept as it is.
pub fn url_key(abs_path: &str) -> String {
    let no_frag = abs_path.split(['#', '?']).next().unwrap_or("");
    match no_frag.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => format!("~{}", &rest[i..]),
            None => "~/".to_owned(),
        },
        None => no_frag.to_owned(),
    }
}

/// What a cached map is found by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MapKey {
    /// A project's release and the file's [`url_key`].
    Url {
        /// Project slug (as events and the artifact store name it).
        project: String,
        /// Release name.
        release: String,
        /// The minified file's [`url_key`].
        url: String,
    },
    /// A project's debug id (canonical form).
    DebugId {
        /// Project slug.
        project: String,
        /// Debug id, see [`normalize_debug_id`].
        id: String,
    },
}

/// A bounded least-recently-used cache of parsed maps, by entry count and by total
/// [`ParsedMap::cost`]. A map larger than the whole byte budget is not cached (it is still
/// returned to the caller that parsed it). Eviction scans the entries, which is fine for the
/// few hundred entries it is meant to hold.
#[derive(Debug)]
pub struct MapCache {
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    tick: u64,
    entries: HashMap<MapKey, (Arc<ParsedMap>, u64)>,
    evictions: u64,
}

impl MapCache {
    /// A cache of at most `max_entries` maps and `max_bytes` of map cost.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self { max_entries, max_bytes, bytes: 0, tick: 0, entries: HashMap::new(), evictions: 0 }
    }

    /// The map for `key`, marked as recently used.
    pub fn get(&mut self, key: &MapKey) -> Option<Arc<ParsedMap>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|(m, t)| {
            *t = tick;
            Arc::clone(m)
        })
    }

    /// Adds (or replaces) the map for `key`, evicting the least recently used maps to stay
    /// within the budget.
    pub fn insert(&mut self, key: MapKey, map: Arc<ParsedMap>) {
        let cost = map.cost();
        if cost > self.max_bytes || self.max_entries == 0 {
            return;
        }
        if let Some((old, _)) = self.entries.remove(&key) {
            self.bytes -= old.cost();
        }
        while !self.entries.is_empty() && (self.entries.len() >= self.max_entries || self.bytes + cost > self.max_bytes)
        {
            let oldest = self.entries.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                if let Some((old, _)) = self.entries.remove(&k) {
                    self.bytes -= old.cost();
                    self.evictions += 1;
                }
            }
        }
        self.tick += 1;
        self.bytes += cost;
        self.entries.insert(key, (map, self.tick));
    }

    /// Number of cached maps.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total cost of the cached maps.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Maps evicted so far (for a metric).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
mod tests;
