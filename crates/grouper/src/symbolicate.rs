//! The grouper's source-map hook (docs/sourcemaps.md, "Grouper hook"): before an event with
//! minified JavaScript frames is fingerprinted, its frames are mapped to their original file,
//! line, column and function with [`tracefold_symbolicate::symbolicate_frames`], from maps the
//! [`Symbolicator`] fetches from the artifact store within a time budget. The mapped frames
//! replace the minified ones in the event (so the fingerprint, title and culprit use them);
//! the minified values are kept, with the source context, for the sample ([`rewrite_sample`]).
//!
//! Within one batch, a map once found is kept for the rest of the batch ([`BatchMaps`]), so a
//! key's availability only ever goes from "not yet" to "yes" at one offset: what the batch's
//! range metadata records so that a replay decides exactly as the first run did.

mod sample;
pub use sample::{assert_rewrite_paths_agree, rewrite_via_value};

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracefold_model::event::{Event, Frame, Stacktrace};
use tracefold_symbolicate::fetch::{Found, Symbolicator};
use tracefold_symbolicate::{locate_frames, map_key, DebugImage, Located, MapKey, MinifiedFrame, ParsedMap, Position};

/// Most files [`BatchMaps`] remembers the map of within a batch (emptied when full).
pub const MAX_FILES_PER_BATCH: usize = 4096;

/// Most positions [`BatchMaps`] remembers within a batch in front of the maps' own memos
/// (emptied when full; about 80 bytes an entry and its function name, at most
/// [`MAX_REMEMBERED_FUNCTION_BYTES`]: at most about 1.4 MiB).
pub const MAX_POSITIONS_PER_BATCH: usize = 4096;

/// Longest reported function name [`BatchMaps`]' positions remember; a frame with a longer one
/// goes to the map's memo each time (real minified names are a few bytes, V8's `Object.a [as
/// run]` forms a few dozen).
pub const MAX_REMEMBERED_FUNCTION_BYTES: usize = tracefold_symbolicate::MAX_MEMOIZED_FUNCTION_BYTES;

/// Most distinct maps one event may need; frames of further files stay minified (the same
/// on a replay: the order of frames decides which).
pub const MAX_KEYS_PER_EVENT: usize = 32;
/// Most distinct maps one batch may use (what its range metadata can record); events that
/// need others are grouped as without maps, counted `missing`.
pub const MAX_KEYS_PER_BATCH: usize = 64;

/// What symbolication did to one event (the `outcome` label of
/// [`crate::metrics::SYMBOLICATION_TOTAL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// At least one frame was mapped.
    Resolved,
    /// No map for its frames (none uploaded, no release, or no mapping at the positions).
    Missing,
    /// The maps were still being fetched when the event's budget ran out.
    Timeout,
    /// A map of its frames is not usable.
    Malformed,
}

impl Outcome {
    /// Every outcome, in the order of [`Outcome::index`].
    pub const ALL: [Outcome; 4] = [Outcome::Resolved, Outcome::Missing, Outcome::Timeout, Outcome::Malformed];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Resolved => "resolved",
            Outcome::Missing => "missing",
            Outcome::Timeout => "timeout",
            Outcome::Malformed => "malformed",
        }
    }

    /// Position in [`Outcome::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The hook: a shared [`Symbolicator`] and the per-event budget.
#[derive(Debug, Clone)]
pub struct Hook {
    /// Fetches and caches maps.
    pub symbolicator: Arc<Symbolicator>,
    /// How long one event may wait for its maps.
    pub budget: Duration,
}

/// Which stack a mapped frame is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// `exception[i].stacktrace`.
    Exception(usize),
    /// `threads[i].stacktrace`.
    Thread(usize),
}

/// A frame that was mapped: where it is, its original position, and its minified values. It
/// borrows the event's strings (`'e`): the minified values are the frame's own, moved out of
/// it, and the mapped file and function are the strings the frame now borrows.
#[derive(Debug, Clone)]
pub struct Mapped<'e> {
    /// Its stack.
    pub stack: Stack,
    /// Index in the stack's frames.
    pub frame: usize,
    /// The original position (without the source context: that is added from `map` for the
    /// sample only, see [`rewrite_sample`]).
    pub original: Original<'e>,
    /// The map that mapped it; `None` when `original` already holds all there is to show.
    pub map: Option<Arc<ParsedMap>>,
    /// Minified `filename` (or `abs_path` when there was no filename).
    pub raw_filename: Option<Cow<'e, str>>,
    /// Minified `abs_path`.
    pub raw_abs_path: Option<Cow<'e, str>>,
    /// Minified function.
    pub raw_function: Option<Cow<'e, str>>,
    /// Minified line.
    pub raw_lineno: Option<u32>,
    /// Minified column.
    pub raw_colno: Option<u32>,
}

/// An event's [`Mapped`] records, in the event's arena (no allocation of their own).
pub type MappedList<'e> = bumpalo::collections::Vec<'e, Mapped<'e>>;

/// A mapped frame's original position, as [`OriginalFrame`] with the file and function
/// borrowed where they can be (the hook borrows them from the event's arena).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Original<'e> {
    /// Original source file.
    pub file: Cow<'e, str>,
    /// 1-based original line.
    pub line: u32,
    /// 1-based original column.
    pub col: u32,
    /// Original function name.
    pub function: Option<Cow<'e, str>>,
    /// Lines before `context_line` (oldest first), when known.
    pub pre_context: Vec<String>,
    /// The original line itself, when known.
    pub context_line: Option<String>,
    /// Lines after `context_line`.
    pub post_context: Vec<String>,
}

/// The maps one batch has used, each with the offset of the first event that used it. A
/// replay is given the recorded keys and offsets ([`BatchMaps::replaying`]) and uses exactly
/// those: a recorded key from its offset on (waiting for it without a budget), nothing else.
#[derive(Debug, Default)]
pub struct BatchMaps {
    used: HashMap<MapKey, Arc<ParsedMap>>,
    /// Hash of each key and the offset it was first used at, in that order.
    first_use: Vec<(u64, i64)>,
    /// On a replay: the recorded keys and offsets.
    replay: Option<HashMap<u64, i64>>,
    /// The files of events without debug images seen in this batch, with their key and, once
    /// `used` has it, their map: what [`apply`]'s cached path reads instead of building keys.
    /// Keyed by [`file_hash`], an xxh3 value already: hashed by one keyed multiply, not SipHash.
    files: HashMap<u64, FileMap, crate::dedup::KeyedIdState>,
    /// Per event, each minified frame (its stack and index) with the map of its file (the
    /// cached path's scratch: its second pass reads these instead of checking every frame
    /// again).
    runs: Vec<(Stack, usize, Option<Arc<ParsedMap>>)>,
    /// The positions the cached path located in this batch, by map, line and column, with the
    /// reported function they were located for ([`batch_position`]).
    positions: HashMap<(usize, u32, u32), FrontPosition, std::hash::BuildHasherDefault<PositionHasher>>,
    /// Turns [`apply`]'s cached path off, for the tests that compare it with the full one
    /// (always `false` otherwise).
    full_path_only: bool,
}

/// A file's map key within a batch (see [`BatchMaps::files`]).
#[derive(Debug)]
struct FileMap {
    project: Box<str>,
    release: Box<str>,
    url: Box<str>,
    /// What [`map_key`] gives for the file in an event without debug images.
    key: Option<MapKey>,
    /// The key's map once the batch uses it.
    map: Option<Arc<ParsedMap>>,
}

/// A position [`batch_position`] remembers: what `map.position(line, col, function)` gave.
#[derive(Debug)]
struct FrontPosition {
    map: Arc<ParsedMap>,
    function: Option<Box<str>>,
    found: Option<Arc<Position>>,
}

/// Hashes the key of [`BatchMaps::positions`] (a map's address, a line, a column: integers,
/// so a multiply and rotate each, no general-purpose hash).
#[derive(Debug, Default)]
struct PositionHasher(u64);

impl std::hash::Hasher for PositionHasher {
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0xbf58_476d_1ce4_e5b9).rotate_left(26);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// `map.position(line, col, function)` through the batch's table in front of the map's memo:
/// a position the batch saw with the same reported function costs a probe by integers and one
/// comparison of the name (no lock, no hash of the name). Exact: the entry holds the map it
/// was located in and the function it was located for, and both are compared.
fn batch_position(
    positions: &mut HashMap<(usize, u32, u32), FrontPosition, std::hash::BuildHasherDefault<PositionHasher>>,
    map: &Arc<ParsedMap>,
    line: u32,
    col: u32,
    function: Option<&str>,
) -> Option<Arc<Position>> {
    let key = (Arc::as_ptr(map) as usize, line, col);
    if let Some(e) = positions.get(&key) {
        if Arc::ptr_eq(&e.map, map) && e.function.as_deref() == function {
            return e.found.clone();
        }
    }
    let found = map.position(line, col, function);
    if function.is_some_and(|f| f.len() > MAX_REMEMBERED_FUNCTION_BYTES) {
        return found;
    }
    if positions.len() >= MAX_POSITIONS_PER_BATCH {
        positions.clear();
    }
    let entry = FrontPosition { map: Arc::clone(map), function: function.map(Into::into), found: found.clone() };
    positions.insert(key, entry);
    found
}

/// The hash of a map key recorded in range metadata.
pub fn key_hash(key: &MapKey) -> u64 {
    let text = match key {
        MapKey::Url { project, release, url } => format!("u\0{project}\0{release}\0{url}"),
        MapKey::DebugId { project, id } => format!("d\0{project}\0{id}"),
    };
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

impl BatchMaps {
    /// Forgets the batch (a new one starts), leaving replay mode.
    pub fn clear(&mut self) {
        self.used.clear();
        self.first_use.clear();
        self.replay = None;
        self.files.clear();
        self.runs.clear();
        self.positions.clear();
    }

    /// The next batch rebuilds a recorded range: use exactly `recorded` (key hash, first offset).
    pub fn replaying(&mut self, recorded: &[(u64, i64)]) {
        self.clear();
        self.replay = Some(recorded.iter().copied().collect());
    }

    /// Keys used so far with their first offsets (for the range metadata).
    pub fn first_use(&self) -> &[(u64, i64)] {
        &self.first_use
    }
}

fn view<'e>(f: &'e Frame<'_>) -> MinifiedFrame<'e> {
    MinifiedFrame {
        abs_path: f.abs_path.as_deref(),
        filename: f.filename.as_deref(),
        function: f.function.as_deref(),
        lineno: f.lineno,
        colno: f.colno,
    }
}

fn stacks<'e, 'a>(event: &'e Event<'a>) -> impl Iterator<Item = (Stack, &'e Stacktrace<'a>)> {
    let exc =
        event.exception.iter().enumerate().filter_map(|(i, e)| Some((Stack::Exception(i), e.stacktrace.as_ref()?)));
    let thr = event.threads.iter().enumerate().filter_map(|(i, t)| Some((Stack::Thread(i), t.stacktrace.as_ref()?)));
    exc.chain(thr)
}

/// Whether the event has a frame symbolication could map (the one check every event pays).
pub fn has_minified_js(event: &Event<'_>) -> bool {
    stacks(event).any(|(_, s)| s.frames.iter().any(|f| tracefold_symbolicate::is_minified_js(&view(f))))
}

/// The event's `debug_meta.images[]` of type `sourcemap` with a code file and a debug id (the
/// model reads at most [`tracefold_model::event::MAX_DEBUG_IMAGES`]; the producer keeps only
/// these, within bounds), at most [`MAX_KEYS_PER_EVENT`].
fn debug_images(event: &Event<'_>) -> Vec<DebugImage> {
    let Some(meta) = event.debug_meta.as_ref() else { return Vec::new() };
    meta.images
        .iter()
        .filter(|i| i.ty.as_deref() == Some("sourcemap"))
        .filter_map(|i| {
            Some(DebugImage {
                code_file: i.code_file.as_deref()?.to_owned(),
                debug_id: i.debug_id.as_deref()?.to_owned(),
            })
        })
        .take(MAX_KEYS_PER_EVENT)
        .collect()
}

/// Maps the event's minified frames in place (see the module docs), writing what it mapped to
/// `mapped`. `None` when the event has no minified JavaScript frame (nothing was done).
///
/// When a frame is about to be mapped, `before_mapping` is called once with the event as
/// received (no frame changed yet): the grouper takes its secondary fingerprint there
/// (docs/sourcemaps.md "Late maps"). It is not called for events no map resolved.
pub fn apply<'e>(
    hook: &Hook,
    batch: &mut BatchMaps,
    event: &mut Event<'e>,
    arena: &'e bumpalo::Bump,
    offset: i64,
    mapped: &mut MappedList<'e>,
    before_mapping: &mut dyn FnMut(&Event<'_>),
) -> Option<Outcome> {
    mapped.clear();
    let images = debug_images(event);
    if images.is_empty() && !batch.full_path_only {
        // The cached path finds the minified frames itself: no separate check first.
        match apply_cached(batch, event, arena, mapped, before_mapping) {
            Cached::NoMinifiedFrame => return None,
            Cached::Done(outcome) => return Some(outcome),
            // It stopped at a minified frame: the full path has one.
            Cached::Full => {}
        }
    } else if !has_minified_js(event) {
        return None;
    }
    let project = event.project.as_deref().unwrap_or("");
    let release = event.release.as_deref().unwrap_or("");
    // The keys the event needs, in frame order, at most MAX_KEYS_PER_EVENT.
    let mut keys: Vec<MapKey> = Vec::new();
    for (_, s) in stacks(event) {
        let mut last_url = None;
        for f in &s.frames {
            // A minified frame of the file of the one before needs no key built again.
            let v = view(f);
            if !tracefold_symbolicate::is_minified_js(&v) {
                continue;
            }
            let url = v.url();
            if url == last_url {
                continue;
            }
            last_url = url;
            if let Some(k) = map_key(project, release, &images, &v) {
                if !keys.contains(&k) && keys.len() < MAX_KEYS_PER_EVENT {
                    keys.push(k);
                }
            }
        }
    }
    let (mut timeout, mut malformed) = (false, false);
    let mut have: HashMap<MapKey, Arc<ParsedMap>> = HashMap::new();
    let mut fetch: Vec<MapKey> = Vec::new();
    for k in keys {
        if let Some(m) = batch.used.get(&k) {
            have.insert(k, Arc::clone(m));
            continue;
        }
        let allowed = match &batch.replay {
            // A replay uses a key only where the first run did.
            Some(rec) => rec.get(&key_hash(&k)).is_some_and(|first| *first <= offset),
            None => batch.used.len() + fetch.len() < MAX_KEYS_PER_BATCH,
        };
        if allowed {
            fetch.push(k);
        }
    }
    if !fetch.is_empty() {
        let found = if batch.replay.is_some() {
            // The first run had these maps: wait for them as for any store (see docs/sourcemaps.md).
            replay_fetch(&hook.symbolicator, &fetch)
        } else {
            hook.symbolicator.maps(&fetch, Instant::now() + hook.budget)
        };
        for (k, f) in fetch.into_iter().zip(found) {
            match f {
                Found::Map(m) => {
                    batch.first_use.push((key_hash(&k), offset));
                    batch.used.insert(k.clone(), Arc::clone(&m));
                    have.insert(k, m);
                }
                Found::Timeout => timeout = true,
                Found::Malformed => malformed = true,
                Found::Missing => {}
            }
        }
    }
    if !have.is_empty() {
        let mut results: Vec<(Stack, Vec<Option<Located>>)> = Vec::new();
        for (stack, s) in stacks(event) {
            let frames: Vec<MinifiedFrame<'_>> = s.frames.iter().map(view).collect();
            let got = locate_frames(project, release, &images, &frames, |k| have.get(k).cloned());
            if got.iter().any(Option::is_some) {
                results.push((stack, got));
            }
        }
        if !results.is_empty() {
            before_mapping(event);
        }
        for (stack, got) in results {
            let s = match stack {
                Stack::Exception(i) => event.exception.get_mut(i).and_then(|e| e.stacktrace.as_mut()),
                Stack::Thread(i) => event.threads.get_mut(i).and_then(|t| t.stacktrace.as_mut()),
            };
            let Some(s) = s else { continue };
            for (i, (f, o)) in s.frames.iter_mut().zip(got).enumerate() {
                let Some((o, map)) = o else { continue };
                let at =
                    Place { stack, frame: i, file: &o.file, line: o.line, col: o.col, function: o.function.as_deref() };
                write_mapped(f, &at, map, arena, mapped);
            }
        }
    }
    Some(if !mapped.is_empty() {
        Outcome::Resolved
    } else if timeout {
        Outcome::Timeout
    } else if malformed {
        Outcome::Malformed
    } else {
        Outcome::Missing
    })
}

/// Where a frame was mapped to, borrowed (from a [`Located`] or a memoized
/// [`tracefold_symbolicate::Position`]).
struct Place<'p> {
    stack: Stack,
    frame: usize,
    file: &'p str,
    line: u32,
    col: u32,
    function: Option<&'p str>,
}

/// Writes the mapped position into the frame and records the frame's minified values in a
/// [`Mapped`]: the frame's own strings moved into it (no copy), the mapped file and function
/// written once into the event's arena and borrowed by both.
fn write_mapped<'e>(
    f: &mut Frame<'e>,
    at: &Place<'_>,
    map: Arc<ParsedMap>,
    arena: &'e bumpalo::Bump,
    out: &mut MappedList<'e>,
) {
    // One copy of the file for both fields and the record, no allocation of their own.
    let file: &'e str = arena.alloc_str(at.file);
    let function: Option<&'e str> = at.function.map(|s| &*arena.alloc_str(s));
    if out.capacity() == 0 {
        // One allocation for the usual event's frames.
        out.reserve(8);
    }
    let raw_abs_path = f.abs_path.take();
    let raw_filename = match f.filename.take() {
        Some(name) => Some(name),
        None => raw_abs_path.clone(),
    };
    out.push(Mapped {
        stack: at.stack,
        frame: at.frame,
        // No context: `rewrite_sample` adds it from the map for the one event that is a sample.
        original: Original {
            file: Cow::Borrowed(file),
            line: at.line,
            col: at.col,
            function: function.map(Cow::Borrowed),
            ..Original::default()
        },
        map: Some(map),
        raw_filename,
        raw_abs_path,
        raw_function: f.function.take(),
        raw_lineno: f.lineno,
        raw_colno: f.colno,
    });
    f.filename = Some(Cow::Borrowed(file));
    f.abs_path = Some(Cow::Borrowed(file));
    // A minified name says nothing stable: without an original one, none.
    f.function = function.map(Cow::Borrowed);
    f.lineno = Some(at.line);
    f.colno = Some(at.col);
}

/// What [`apply_cached`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cached {
    /// The event has no minified JavaScript frame (nothing was done: [`has_minified_js`] is false).
    NoMinifiedFrame,
    /// Mapped as the full path would have.
    Done(Outcome),
    /// A file needs the full path; nothing was changed.
    Full,
}

/// [`apply`] for an event without debug images whose every minified frame's file has a map the
/// batch already uses, or none at all: each file's map found by its text (no key built, no
/// fetch), each position through the map's memo ([`ParsedMap::position`]). [`Cached::Full`]
/// when a file needs the full path (a map not used yet, or more than [`MAX_KEYS_PER_EVENT`]
/// maps); then nothing was changed. Decides exactly as the full path would (the tests compare
/// them), and calls `before_mapping` as it does: once, before any frame changes, when a frame
/// has a map.
fn apply_cached<'e>(
    batch: &mut BatchMaps,
    event: &mut Event<'e>,
    arena: &'e bumpalo::Bump,
    mapped: &mut MappedList<'e>,
    before_mapping: &mut dyn FnMut(&Event<'_>),
) -> Cached {
    let project = event.project.as_deref().unwrap_or("");
    let release = event.release.as_deref().unwrap_or("");
    let mut runs = std::mem::take(&mut batch.runs);
    runs.clear();
    // The distinct maps of the event in frame order (the full path's keys), as pointers.
    let mut distinct: [*const ParsedMap; MAX_KEYS_PER_EVENT] = [std::ptr::null(); MAX_KEYS_PER_EVENT];
    let mut n_distinct = 0;
    let mut cached = true;
    'frames: for (stack, s) in stacks(event) {
        let mut last: Option<(&str, Option<Arc<ParsedMap>>)> = None;
        for (i, f) in s.frames.iter().enumerate() {
            let v = view(f);
            // A frame of the file of the minified frame before it passes `is_minified_js`'s test
            // of the url as that one did: only its line and column are left to check. The url is
            // read and compared once a frame.
            let url = v.url();
            let same_file = matches!((&last, url), (Some((u, _)), Some(url)) if *u == url);
            let minified = if same_file {
                v.lineno.is_some() && v.colno.is_some()
            } else {
                tracefold_symbolicate::is_minified_js(&v)
            };
            if !minified {
                continue;
            }
            // A minified frame has a url (is_minified_js); frames of one file follow each other.
            let url = url.unwrap_or("");
            let map = match &last {
                Some((_, m)) if same_file => m.clone(),
                _ => {
                    let Some(m) = file_map(batch, project, release, &v, url) else {
                        cached = false;
                        break 'frames;
                    };
                    if let Some(m) = &m {
                        let p = Arc::as_ptr(m);
                        if !distinct[..n_distinct].contains(&p) {
                            // The full path maps only the first MAX_KEYS_PER_EVENT keys' frames.
                            let Some(slot) = distinct.get_mut(n_distinct) else {
                                cached = false;
                                break 'frames;
                            };
                            *slot = p;
                            n_distinct += 1;
                        }
                    }
                    last = Some((url, m.clone()));
                    m
                }
            };
            runs.push((stack, i, map));
        }
    }
    if !cached {
        runs.clear();
        batch.runs = runs;
        return Cached::Full;
    }
    if runs.is_empty() {
        // No frame passed `is_minified_js` (the frames of a file after the first only skip its
        // url test, which they pass): what `has_minified_js` would have said.
        batch.runs = runs;
        return Cached::NoMinifiedFrame;
    }
    if runs.iter().any(|(_, _, m)| m.is_some()) {
        before_mapping(event);
    }
    // Every minified frame in the same order as above, with its map: no frame is checked again.
    for (stack, i, map) in runs.drain(..) {
        let Some(map) = map else { continue };
        let s = match stack {
            Stack::Exception(k) => event.exception.get_mut(k).and_then(|e| e.stacktrace.as_mut()),
            Stack::Thread(k) => event.threads.get_mut(k).and_then(|t| t.stacktrace.as_mut()),
        };
        let Some(f) = s.and_then(|s| s.frames.get_mut(i)) else { continue };
        let (Some(line), Some(col)) = (f.lineno, f.colno) else { continue };
        let Some(pos) = batch_position(&mut batch.positions, &map, line, col, f.function.as_deref()) else { continue };
        let at =
            Place { stack, frame: i, file: &pos.file, line: pos.line, col: pos.col, function: pos.function.as_deref() };
        write_mapped(f, &at, map, arena, mapped);
    }
    batch.runs = runs;
    Cached::Done(if mapped.is_empty() { Outcome::Missing } else { Outcome::Resolved })
}

/// The map of `url`'s file for an event without debug images: `Some(None)` when the file has
/// no key (no release), `Some(Some(map))` when the batch uses its key's map, `None` when the
/// full path must decide (a key the batch has not used yet).
fn file_map(
    batch: &mut BatchMaps,
    project: &str,
    release: &str,
    frame: &MinifiedFrame<'_>,
    url: &str,
) -> Option<Option<Arc<ParsedMap>>> {
    let h = file_hash(project, release, url);
    let same = |e: &FileMap| &*e.project == project && &*e.release == release && &*e.url == url;
    if !batch.files.get(&h).is_some_and(same) {
        if batch.files.len() >= MAX_FILES_PER_BATCH {
            batch.files.clear();
        }
        let key = map_key(project, release, &[], frame);
        let entry = FileMap { project: project.into(), release: release.into(), url: url.into(), key, map: None };
        batch.files.insert(h, entry);
    }
    let entry = batch.files.get_mut(&h)?;
    let Some(key) = &entry.key else { return Some(None) };
    if entry.map.is_none() {
        entry.map = Some(Arc::clone(batch.used.get(key)?));
    }
    Some(entry.map.clone())
}

/// The hash [`BatchMaps::files`] is keyed by (the entry's strings are compared too).
fn file_hash(project: &str, release: &str, url: &str) -> u64 {
    use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};
    xxh3_64_with_seed(url.as_bytes(), xxh3_64_with_seed(release.as_bytes(), xxh3_64(project.as_bytes())))
}

/// How long a replay waits for a map its first run used before grouping without it.
pub const REPLAY_WAIT: Duration = Duration::from_secs(300);

/// On a replay: the maps the first run used, waiting for them up to [`REPLAY_WAIT`] (the store
/// being down is an outage: the partition waits). A map that is gone from the store (or still
/// unreadable after the wait) stays unused, with an error logged: the one case where a replay
/// cannot decide as the first run.
fn replay_fetch(sym: &Symbolicator, keys: &[MapKey]) -> Vec<Found> {
    let mut pause = Duration::from_millis(100);
    let give_up = Instant::now() + REPLAY_WAIT;
    loop {
        let found = sym.maps(keys, Instant::now() + Duration::from_secs(30));
        if found.iter().all(|f| !matches!(f, Found::Timeout)) || Instant::now() >= give_up {
            for (k, f) in keys.iter().zip(&found) {
                if !matches!(f, Found::Map(_)) {
                    tracing::error!(?k, "a source map used by the first run of this batch is no longer usable; its replay groups differently");
                }
            }
            return found;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// The sample payload with the mapped frames written in, Sentry's way: mapped `filename`,
/// `abs_path`, `function`, `lineno`, `colno`, `pre_context`/`context_line`/`post_context`
/// (when the map has sources), and the minified values as `raw_filename`, `raw_abs_path`,
/// `raw_function`, `raw_lineno`, `raw_colno`. A frame whose minified line and column do not
/// match what was mapped (the payload is not what the parser read) is left alone; a payload
/// that is not a JSON object is returned as it is.
///
/// Written on the payload's bytes: the mapped frames' objects are written again and the rest
/// is copied as it is (the same JSON value as [`rewrite_via_value`], which answers the rare
/// documents the bytes path leaves to it: see the `sample` module).
pub fn rewrite_sample(payload: &[u8], mapped: &[Mapped<'_>]) -> Vec<u8> {
    sample::rewrite(payload, mapped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, BatchOptions, BatchOutput};
    use bytes::Bytes;
    use tracefold_symbolicate::fetch::FetchOptions;
    use tracefold_symbolicate::store::{ArtifactKind, ArtifactStore};

    const NOW: i64 = 1_795_671_540_000;
    const ORIGINAL: &str = "function fail() {\n  throw new Error('x');\n}\n";

    /// A build of `src/app.ts`: the minified file puts `function <name>(){throw ...}` at column
    /// `at` (0-based) of line 1, so the throw is at 1-based column `at + 14`.
    struct Build {
        release: &'static str,
        url: &'static str,
        name: &'static str,
        at: u32,
    }

    const A: Build = Build { release: "1.0", url: "~/static/js/main.aaaa1111.js", name: "a", at: 0 };
    const B: Build = Build { release: "1.1", url: "~/static/js/main.bbbb2222.js", name: "b", at: 8 };

    impl Build {
        fn minified(&self) -> String {
            format!("{}function {}(){{throw new Error('x')}}\n", "var z=1;".repeat(self.at as usize / 8), self.name)
        }

        /// Tokens: the function keyword, its name (original `fail`), the throw.
        fn map(&self) -> Vec<u8> {
            let mut b = sourcemap::SourceMapBuilder::new(Some("main.js"));
            let src = b.add_source("src/app.ts");
            b.set_source_contents(src, Some(ORIGINAL));
            b.add(0, self.at, 0, 0, Some("src/app.ts"), None, false);
            b.add(0, self.at + 9, 0, 9, Some("src/app.ts"), Some("fail"), false);
            b.add(0, self.at + 13, 1, 2, Some("src/app.ts"), None, false);
            let mut out = Vec::new();
            b.into_sourcemap().to_writer(&mut out).unwrap();
            out
        }

        fn event(&self, i: u64) -> String {
            format!(
                r#"{{"event_id":"{i:032x}","project":"shop","timestamp":{ts},"release":"{r}","platform":"javascript",
                "exception":[{{"type":"Error","value":"x","stacktrace":{{"frames":[{{"function":"{f}","filename":"https://shop.example{u}","lineno":1,"colno":{c},"in_app":true}}]}}}}]}}"#,
                ts = NOW / 1000 - 60,
                r = self.release,
                f = self.name,
                u = &self.url[1..],
                c = self.at + 14,
            )
        }
    }

    fn new_store() -> (ArtifactStore, tokio::runtime::Runtime) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        (ArtifactStore::new(Arc::new(object_store::memory::InMemory::new())), rt)
    }

    fn upload(store: &ArtifactStore, rt: &tokio::runtime::Runtime, b: &Build) {
        rt.block_on(async {
            store.put("shop", b.release, b.url, None, ArtifactKind::Map, Bytes::from(b.map())).await.unwrap();
            store.put("shop", b.release, b.url, None, ArtifactKind::Minified, Bytes::from(b.minified())).await.unwrap();
        });
    }

    fn builder(store: &ArtifactStore) -> BatchBuilder {
        let symbolicator = Symbolicator::new(store.clone(), FetchOptions::default()).unwrap();
        // A budget no fetch from memory comes near: the outcome does not depend on timing.
        let hook = Hook { symbolicator: Arc::new(symbolicator), budget: Duration::from_secs(60) };
        BatchBuilder::new(BatchOptions::default()).with_sourcemaps(hook)
    }

    fn run(b: &mut BatchBuilder, events: &[String]) -> BatchOutput {
        for (i, e) in events.iter().enumerate() {
            b.add(e.as_bytes(), i as i64, NOW);
        }
        b.finish("e1", "t", 0, 0, events.len() as i64 - 1)
    }

    #[test]
    fn two_builds_with_maps_are_one_issue_with_original_frames() {
        let (store, rt) = new_store();
        upload(&store, &rt, &A);
        upload(&store, &rt, &B);
        let plain = r#"{"event_id":"00000000000000000000000000000009","project":"shop","exception":[{"type":"E","value":"v","stacktrace":{"frames":[{"function":"f","filename":"app.py","lineno":3}]}}]}"#;
        let out = run(&mut builder(&store), &[A.event(1), B.event(2), plain.to_owned()]);
        assert_eq!(out.accepted, 3);
        assert_eq!(out.symbolication, [2, 0, 0, 0], "two resolved; the Python event is not counted");
        let issues: std::collections::BTreeSet<_> = out.records.iter().map(|r| r.issue_id.clone()).collect();
        assert_eq!(issues.len(), 2, "both builds in one issue, the Python event in another");
        let js = out.records.iter().find(|r| r.release == "1.0").unwrap();
        assert_eq!(js.culprit, "src/app.ts in fail", "{js:?}");
        let sample: serde_json::Value = serde_json::from_str(&js.sample).unwrap();
        let f = &sample["exception"][0]["stacktrace"]["frames"][0];
        assert_eq!((f["filename"].as_str(), f["function"].as_str()), (Some("src/app.ts"), Some("fail")));
        assert_eq!((f["lineno"].as_u64(), f["colno"].as_u64()), (Some(2), Some(3)));
        assert_eq!(f["raw_filename"], "https://shop.example/static/js/main.aaaa1111.js");
        assert_eq!((f["raw_function"].as_str(), f["raw_colno"].as_u64()), (Some("a"), Some(14)));
        assert_eq!(f["context_line"], "  throw new Error('x');");
        assert_eq!(out.maps_used.len(), 2);

        // Without maps: as today, one issue per build, counted missing.
        let (bare, _rt) = new_store();
        let out = run(&mut builder(&bare), &[A.event(1), B.event(2)]);
        assert_eq!(out.symbolication, [0, 2, 0, 0]);
        assert_eq!(out.records.len(), 2);
        assert_ne!(out.records[0].issue_id, out.records[1].issue_id);
        assert!(out.maps_used.is_empty());
    }

    #[test]
    fn a_replay_uses_exactly_the_maps_its_first_run_used() {
        let (store, rt) = new_store();
        upload(&store, &rt, &A);
        let events = [B.event(1), A.event(2), B.event(3), A.event(4)];
        let first = run(&mut builder(&store), &events);
        assert_eq!(first.symbolication, [2, 2, 0, 0]);
        assert_eq!(first.maps_used.len(), 1);
        assert_eq!(first.maps_used[0].1, 1, "first used at offset 1");
        // B's map arrives before the replay: the replay still groups as the first run did.
        upload(&store, &rt, &B);
        let mut again = builder(&store);
        again.replay_maps(&first.maps_used);
        assert_eq!(run(&mut again, &events), first);
        // A new batch of the same events does use it.
        let fresh = run(&mut again, &events);
        assert_eq!(fresh.symbolication, [4, 0, 0, 0]);
        assert_eq!(fresh.records.iter().map(|r| &r.issue_id).collect::<std::collections::BTreeSet<_>>().len(), 1);
    }

    /// The issue of `events` grouped without any map (a fresh store).
    fn issues_without_maps(events: &[String]) -> Vec<String> {
        let (bare, _rt) = new_store();
        run(&mut builder(&bare), events).records.iter().map(|r| r.issue_id.clone()).collect()
    }

    #[test]
    fn a_mapped_event_names_its_issue_as_received_in_merged_from() {
        let (store, rt) = new_store();
        // Before any map: each build its own (secondary) issue, no merge facts.
        let s = issues_without_maps(&[A.event(1), B.event(2)]);
        assert_eq!(s.len(), 2);
        assert_ne!(s[0], s[1]);
        upload(&store, &rt, &A);
        upload(&store, &rt, &B);
        // Two minutes of A, one of B, and a Python event (no frames to map).
        let mut later_a = A.event(4);
        later_a = later_a
            .replace(&format!("\"timestamp\":{}", NOW / 1000 - 60), &format!("\"timestamp\":{}", NOW / 1000 - 120));
        let plain = r#"{"event_id":"00000000000000000000000000000009","project":"shop","exception":[{"type":"E","value":"v","stacktrace":{"frames":[{"function":"f","filename":"app.py","lineno":3}]}}]}"#;
        let events = [A.event(1), B.event(2), A.event(3), later_a, plain.to_owned()];
        let first = run(&mut builder(&store), &events);
        assert_eq!(first.symbolication, [4, 0, 0, 0]);
        let js: Vec<_> = first.records.iter().filter(|r| r.platform == "javascript").collect();
        assert_eq!(js.len(), 3, "A and B in one issue, in two minutes and two releases");
        assert_eq!(js.iter().map(|r| &r.issue_id).collect::<std::collections::BTreeSet<_>>().len(), 1);
        let p = &js[0].issue_id;
        assert!(!s.contains(p), "the mapped issue is neither build's minified one");
        // Each record names the secondaries of its own events, sorted.
        let of = |release: &str, minute: i64| {
            js.iter().find(|r| r.release == release && r.minute == minute).unwrap().merged_from.clone()
        };
        let m = js[0].minute.max(js[1].minute).max(js[2].minute);
        assert_eq!(of("1.0", m), [s[0].clone()]);
        assert_eq!(of("1.0", m - 60), [s[0].clone()]);
        assert_eq!(of("1.1", m), [s[1].clone()]);
        let python = first.records.iter().find(|r| r.platform != "javascript").unwrap();
        assert!(python.merged_from.is_empty());
        assert!(!serde_json::to_string(python).unwrap().contains("merged_from"), "no field without mapped frames");
        assert_eq!(first.merged_from_dropped, 0);

        // A replay of the range, with the maps recorded, emits the same facts.
        let mut again = builder(&store);
        again.replay_maps(&first.maps_used);
        assert_eq!(run(&mut again, &events), first);
    }

    #[test]
    fn a_replay_emits_the_same_merged_from_whatever_maps_arrived_since() {
        let (store, rt) = new_store();
        upload(&store, &rt, &A);
        let events = [B.event(1), A.event(2), B.event(3), A.event(4)];
        let first = run(&mut builder(&store), &events);
        let merged: Vec<_> = first.records.iter().filter(|r| !r.merged_from.is_empty()).collect();
        assert_eq!(merged.len(), 1, "only A's events were mapped: {:?}", first.records);
        assert_eq!(merged[0].merged_from, issues_without_maps(&[A.event(2)]));
        // B's map is uploaded before the replay: the replay does not use it, and emits what the
        // first run emitted (the same records, the same merge facts).
        upload(&store, &rt, &B);
        let mut again = builder(&store);
        again.replay_maps(&first.maps_used);
        let replay = run(&mut again, &events);
        assert_eq!(
            replay.records.iter().map(|r| (&r.issue_id, &r.merged_from)).collect::<Vec<_>>(),
            first.records.iter().map(|r| (&r.issue_id, &r.merged_from)).collect::<Vec<_>>()
        );
        assert_eq!(replay, first);
    }

    /// Events of the same frames with other messages share a batch, with a stack rule that
    /// takes the minified file out of grouping, so that as received their messages group
    /// them: each one's secondary is what it gets alone (the batch's memo of secondaries
    /// answers only where frames decide, and frames decide the mapped issue).
    #[test]
    fn secondaries_of_one_batch_are_those_of_each_event_alone() {
        use tracefold_fingerprint::rules::{FrameMatcher, StackAction, StackRule};
        let minified_out = StackRule {
            matcher: FrameMatcher { path: Some("*/main.*.js".into()), ..FrameMatcher::default() },
            action: StackAction::Exclude,
        };
        let with_rules =
            tracefold_fingerprint::GroupingConfig { stack_rules: vec![minified_out], ..Default::default() };
        let built = |store: &ArtifactStore| {
            let symbolicator = Symbolicator::new(store.clone(), FetchOptions::default()).unwrap();
            let hook = Hook { symbolicator: Arc::new(symbolicator), budget: Duration::from_secs(60) };
            BatchBuilder::new(BatchOptions { grouping: with_rules.clone(), ..BatchOptions::default() })
                .with_sourcemaps(hook)
        };
        let (store, rt) = new_store();
        upload(&store, &rt, &A);
        let with_value = |i: u64, v: &str| A.event(i).replace(r#""value":"x""#, &format!(r#""value":"{v}""#));
        let events = vec![
            with_value(1, "x"),
            with_value(2, "coupon 1 failed"),
            with_value(3, "order 2 failed"),
            with_value(4, "coupon 1 failed"),
            with_value(5, "x"),
        ];
        let out = run(&mut built(&store), &events);
        assert_eq!(out.symbolication, [5, 0, 0, 0]);
        assert_eq!(out.records.len(), 1, "the mapped frame groups them all");
        let (bare, _rt) = new_store();
        let mut expected: Vec<String> = events
            .iter()
            .flat_map(|e| run(&mut built(&bare), std::slice::from_ref(e)).records)
            .map(|r| r.issue_id)
            .collect();
        expected.sort();
        expected.dedup();
        assert_eq!(expected.len(), 3, "as received, the messages group them: {expected:?}");
        assert_eq!(out.records[0].merged_from, expected);
    }

    /// The memo of secondaries is kept across batches: a later batch of the same stacks (other
    /// events) through the same builder emits what a fresh builder emits for it.
    #[test]
    fn a_later_batch_emits_the_secondaries_a_fresh_builder_emits() {
        let (store, rt) = new_store();
        upload(&store, &rt, &A);
        let plain = |i: u64| {
            format!(
                r#"{{"event_id":"{i:032x}","project":"shop","exception":[{{"type":"E","value":"v","stacktrace":{{"frames":[{{"function":"f","filename":"app.py","lineno":3}}]}}}}]}}"#
            )
        };
        let mut kept = builder(&store);
        let first = run(&mut kept, &[A.event(1), B.event(2), plain(3), A.event(4)]);
        assert_eq!(first.symbolication, [2, 1, 0, 0]);
        let later = [A.event(11), plain(12), B.event(13), A.event(14)];
        let again = run(&mut kept, &later);
        let fresh = run(&mut builder(&store), &later);
        assert_eq!(again, fresh);
        assert_eq!(again.records.iter().filter(|r| !r.merged_from.is_empty()).count(), 1, "{again:?}");
    }

    /// Ten builds of one release whose minified files differ in name, uploaded: ten
    /// secondaries, one mapped issue.
    fn ten_builds(store: &ArtifactStore, rt: &tokio::runtime::Runtime) -> Vec<Build> {
        let builds: Vec<Build> = (0..10u32)
            .map(|i| Build {
                release: "1.0",
                url: Box::leak(format!("~/static/js/main.{i:08}.js").into_boxed_str()),
                name: "a",
                at: 8 * i,
            })
            .collect();
        for b in &builds {
            upload(store, rt, b);
        }
        builds
    }

    #[test]
    fn past_eight_secondaries_an_aggregate_leaves_the_others_out_and_counts_them() {
        let (store, rt) = new_store();
        let builds = ten_builds(&store, &rt);
        let events: Vec<String> = builds.iter().enumerate().map(|(i, b)| b.event(i as u64 + 1)).collect();
        let out = run(&mut builder(&store), &events);
        assert_eq!(out.records.len(), 1);
        let r = &out.records[0];
        assert_eq!(r.merged_from.len(), tracefold_model::aggregate::MAX_MERGED_FROM);
        assert!(r.merged_from.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
        assert_eq!(out.merged_from_dropped, 2);
    }

    /// The builder skips writing and searching a secondary that repeats the bucket's last one
    /// (kept per bucket, forgotten at the batch's end): repeats, alternations and ids left out
    /// count as without the shortcut, and the next batch of the same builder starts afresh.
    #[test]
    fn repeated_secondaries_name_and_count_as_each_alone() {
        let (store, rt) = new_store();
        let builds = ten_builds(&store, &rt);
        let issues: Vec<String> = builds.iter().map(|b| issues_without_maps(&[b.event(1)]).remove(0)).collect();
        // The first batch ends on build 0 (its last secondary named); the second starts with
        // it, once: a memory of it kept past the batch would leave it out.
        let batches: [&[usize]; 2] =
            [&[0, 0, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 9, 0, 9], &[0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 1]];
        let mut b = builder(&store);
        let mut id = 0u64;
        for (n, order) in batches.into_iter().enumerate() {
            let events: Vec<String> = order
                .iter()
                .map(|&i| {
                    id += 1;
                    builds[i].event(id)
                })
                .collect();
            let out = run(&mut b, &events);
            assert_eq!(out.records.len(), 1);
            // The first eight builds named in order of arrival, sorted; the events of the
            // others each counted as left out.
            let mut named: Vec<usize> = Vec::new();
            for &i in order {
                if !named.contains(&i) && named.len() < tracefold_model::aggregate::MAX_MERGED_FROM {
                    named.push(i);
                }
            }
            let mut want: Vec<String> = named.iter().map(|&i| issues[i].clone()).collect();
            want.sort();
            assert_eq!(out.records[0].merged_from, want, "batch {n}");
            let left_out = order.iter().filter(|i| !named.contains(i)).count() as u64;
            assert_eq!(out.merged_from_dropped, left_out, "batch {n}");
        }
    }

    /// A frame of `url` (a path under https://shop.example) at line 1, `col`, named `function`.
    fn frame(url: &str, function: Option<&str>, line: u32, col: u32) -> String {
        let f = function.map_or(String::new(), |f| format!(r#""function":"{f}","#));
        format!(r#"{{{f}"filename":"https://shop.example{url}","lineno":{line},"colno":{col}}}"#)
    }

    /// The cached path (files found by their text, positions through the maps' memo) decides
    /// exactly as the full one (keys built, maps looked up per event) over events of every kind:
    /// mapped and unmapped positions, two builds, a file without a map, other frames, threads,
    /// no release, more files than one event may map.
    #[test]
    fn the_cached_path_maps_as_the_full_path() {
        let (store, rt) = new_store();
        upload(&store, &rt, &A);
        upload(&store, &rt, &B);
        let symbolicator = Symbolicator::new(store.clone(), FetchOptions::default()).unwrap();
        let hook = Hook { symbolicator: Arc::new(symbolicator), budget: Duration::from_secs(60) };
        let (a, b) = (&A.url[1..], &B.url[1..]);
        let many: Vec<String> =
            (0..MAX_KEYS_PER_EVENT + 2).map(|i| frame(&format!("/x{i}.js"), Some("a"), 1, 14)).collect();
        // A frame of the same file without a column: not minified (`is_minified_js`).
        let no_column = format!(r#"{{"function":"a","filename":"https://shop.example{a}","lineno":1}}"#);
        let stacks: Vec<(Option<&str>, Vec<String>, Vec<String>)> = vec![
            (Some("1.0"), vec![frame(a, Some("a"), 1, 14), no_column, frame(a, Some("a"), 1, 14)], vec![]),
            (Some("1.1"), vec![frame(b, Some("b"), 1, 22)], vec![]),
            (
                Some("1.0"),
                vec![
                    frame(a, Some("Object.a [as run]"), 1, 14),
                    frame(a, None, 1, 1),
                    r#"{"function":"f","filename":"app.py","lineno":3}"#.to_owned(),
                    frame(a, Some("é"), 1, 40),
                    frame(a, Some("a"), 2, 1),
                    frame("/static/js/other.js", Some("a"), 1, 14),
                    frame(a, Some("a"), 1, 14),
                ],
                vec![frame(a, Some("a"), 1, 30), frame(b, Some("b"), 1, 22)],
            ),
            (None, vec![frame(a, Some("a"), 1, 14)], vec![]),
            (Some("1.0"), many, vec![frame(a, Some("a"), 1, 14)]),
            // No minified frame: nothing done, on both paths.
            (Some("1.0"), vec![r#"{"function":"f","filename":"app.py","lineno":3}"#.to_owned()], vec![]),
            (Some("1.0"), vec![r#"{"function":"f","filename":"app.js","lineno":3}"#.to_owned()], vec![]),
        ];
        let events: Vec<String> = stacks
            .iter()
            .enumerate()
            .map(|(i, (release, exc, thr))| {
                let release = release.map_or(String::new(), |r| format!(r#""release":"{r}","#));
                format!(
                    r#"{{"event_id":"{i:032x}","project":"shop",{release}"exception":[{{"type":"E","stacktrace":{{"frames":[{}]}}}}],"threads":[{{"stacktrace":{{"frames":[{}]}}}}]}}"#,
                    exc.join(","),
                    thr.join(",")
                )
            })
            .collect();
        let mut full = BatchMaps { full_path_only: true, ..BatchMaps::default() };
        let mut cached = BatchMaps::default();
        let (mut taken, mut resolved) = (0, 0);
        // Three times over: the first time every file is new to the batch, then known.
        for (offset, text) in events.iter().chain(&events).chain(&events).enumerate() {
            let (arena_full, arena_cached) = (bumpalo::Bump::new(), bumpalo::Bump::new());
            let (mut x, mut y) = (text.as_bytes().to_vec(), text.as_bytes().to_vec());
            let mut ev_full = tracefold_model::parse_event_slice(&mut x).unwrap();
            let mut ev_cached = tracefold_model::parse_event_slice(&mut y).unwrap();
            let as_received = format!("{ev_full:?}");
            let (mut seen_full, mut seen_cached) = (None, None);
            let (mut m_full, mut m_cached) = (MappedList::new_in(&arena_full), MappedList::new_in(&arena_cached));
            let o_full = apply(&hook, &mut full, &mut ev_full, &arena_full, offset as i64, &mut m_full, &mut |e| {
                seen_full = Some(format!("{e:?}"));
            });
            {
                let mut z = text.as_bytes().to_vec();
                let mut probe = tracefold_model::parse_event_slice(&mut z).unwrap();
                let arena = bumpalo::Bump::new();
                let mut m = MappedList::new_in(&arena);
                taken +=
                    usize::from(apply_cached(&mut cached, &mut probe, &arena, &mut m, &mut |_| {}) != Cached::Full);
            }
            let o_cached =
                apply(&hook, &mut cached, &mut ev_cached, &arena_cached, offset as i64, &mut m_cached, &mut |e| {
                    seen_cached = Some(format!("{e:?}"));
                });
            assert_eq!(o_full, o_cached, "{text}");
            if o_full == Some(Outcome::Resolved) {
                // Both paths show the late-maps hook the event before any frame changed.
                assert_eq!(seen_full.as_deref(), Some(as_received.as_str()), "{text}");
                assert_eq!(seen_cached.as_deref(), Some(as_received.as_str()), "{text}");
            }
            resolved += usize::from(o_cached == Some(Outcome::Resolved));
            assert_eq!(ev_full, ev_cached, "{text}");
            assert_eq!(format!("{m_full:?}"), format!("{m_cached:?}"), "{text}");
            assert_eq!(full.first_use(), cached.first_use());
        }
        // Decided without the full path: the event without a release and the two without a
        // minified frame each time, the two single-build events once their maps are used (the
        // others have a file without a map).
        assert_eq!(taken, 13);
        // Mapped: the two builds' events and the mixed one (the last event's mapped file is
        // its 35th, past what one event may map; the one without a release has no key).
        assert_eq!(resolved, 9);
    }

    #[test]
    fn samples_keep_the_mapped_and_the_raw_frame() {
        let payload = br#"{"exception":[{"type":"E","stacktrace":{"frames":[{"filename":"https://x/main.js","function":"a","lineno":1,"colno":14}]}}],"x":"\u00e9"}"#;
        let m = Mapped {
            stack: Stack::Exception(0),
            frame: 0,
            original: Original {
                file: "src/app.ts".into(),
                line: 2,
                col: 3,
                function: Some("fail".into()),
                pre_context: vec!["function fail() {".into()],
                context_line: Some("  throw new Error('x');".into()),
                post_context: vec!["}".into()],
            },
            raw_filename: Some("https://x/main.js".into()),
            raw_abs_path: None,
            raw_function: Some("a".into()),
            raw_lineno: Some(1),
            raw_colno: Some(14),
            map: None,
        };
        let out: serde_json::Value =
            serde_json::from_slice(&rewrite_sample(payload, std::slice::from_ref(&m))).unwrap();
        let f = &out["exception"][0]["stacktrace"]["frames"][0];
        assert_eq!(f["filename"], "src/app.ts");
        assert_eq!(f["function"], "fail");
        assert_eq!((f["lineno"].as_u64(), f["colno"].as_u64()), (Some(2), Some(3)));
        assert_eq!(f["raw_filename"], "https://x/main.js");
        assert_eq!(f["raw_function"], "a");
        assert_eq!((f["raw_lineno"].as_u64(), f["raw_colno"].as_u64()), (Some(1), Some(14)));
        assert_eq!(f["context_line"], "  throw new Error('x');");
        assert_eq!(out["x"], "é");
        // Not the frame that was read: left alone. Not JSON: unchanged.
        let moved = Mapped { raw_colno: Some(99), ..m.clone() };
        let same: serde_json::Value = serde_json::from_slice(&rewrite_sample(payload, &[moved])).unwrap();
        assert_eq!(same["exception"][0]["stacktrace"]["frames"][0]["function"], "a");
        assert_eq!(rewrite_sample(b"[1,", &[m]), b"[1,");
    }

    /// The batch's positions answer as the maps do: for two maps, every position near their
    /// tokens, reported functions that differ at one position, each asked twice (the second time
    /// from the table); and the table stays within its bound.
    #[test]
    fn batch_positions_are_the_maps_positions() {
        let limits = tracefold_symbolicate::Limits::default();
        let parse = |b: &Build| Arc::new(ParsedMap::parse(&b.map(), Some(&b.minified()), &limits).unwrap());
        let (a, b) = (parse(&A), parse(&B));
        let (fresh_a, fresh_b) = (parse(&A), parse(&B));
        let mut positions = HashMap::default();
        let functions = [None, Some(""), Some("a"), Some("b"), Some("Object.a [as run]"), Some("é")];
        for _ in 0..2 {
            for (map, fresh) in [(&a, &fresh_a), (&b, &fresh_b)] {
                for line in 0..3 {
                    for col in 0..40 {
                        for f in functions {
                            let got = batch_position(&mut positions, map, line, col, f);
                            assert_eq!(got, fresh.position(line, col, f), "{line}:{col} {f:?}");
                        }
                    }
                }
            }
        }
        assert!(positions.len() <= MAX_POSITIONS_PER_BATCH);
        for col in 0..MAX_POSITIONS_PER_BATCH as u32 + 10 {
            assert_eq!(batch_position(&mut positions, &a, 1, col, None), fresh_a.position(1, col, None));
            assert!(positions.len() <= MAX_POSITIONS_PER_BATCH);
        }
        // A name past the bound is answered, not remembered.
        positions.clear();
        let long = "ä".repeat(MAX_REMEMBERED_FUNCTION_BYTES);
        for col in 0..40 {
            let got = batch_position(&mut positions, &a, 1, col, Some(&long));
            assert_eq!(got, fresh_a.position(1, col, Some(&long)));
        }
        assert!(positions.is_empty());
    }

    /// A record whose map has sources: the sample's context is the map's (memoized per
    /// position), the same JSON value from the bytes path as from the `Value` path, the second
    /// time from the memo as the first.
    #[test]
    fn the_samples_context_comes_from_the_map() {
        let limits = tracefold_symbolicate::Limits::default();
        let map = Arc::new(ParsedMap::parse(&A.map(), Some(&A.minified()), &limits).unwrap());
        let payload = br#"{"exception":[{"type":"E","stacktrace":{"frames":[{"filename":"https://x/main.js","function":"a","lineno":1,"colno":14,"context_line":"x"}]}}]}"#;
        let m = Mapped {
            stack: Stack::Exception(0),
            frame: 0,
            original: Original {
                file: "src/app.ts".into(),
                line: 2,
                col: 3,
                function: Some("fail".into()),
                ..Original::default()
            },
            raw_filename: Some("https://x/main.js".into()),
            raw_abs_path: None,
            raw_function: Some("a".into()),
            raw_lineno: Some(1),
            raw_colno: Some(14),
            map: Some(map),
        };
        for _ in 0..2 {
            let m = std::slice::from_ref(&m);
            assert_rewrite_paths_agree(payload, m);
            let out: serde_json::Value = serde_json::from_slice(&rewrite_sample(payload, m)).unwrap();
            let f = &out["exception"][0]["stacktrace"]["frames"][0];
            assert_eq!(f["context_line"], "  throw new Error('x');");
            assert_eq!(f["pre_context"], serde_json::json!(["function fail() {"]));
            assert_eq!(f["post_context"], serde_json::json!(["}", ""]));
            assert_eq!((f["function"].as_str(), f["lineno"].as_u64()), (Some("fail"), Some(2)));
        }
    }
}
