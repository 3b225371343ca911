//! Grouping: turns an error event into a fingerprint (xxh3-128 over length-prefixed, tagged
//! components), so that events of one bug share an issue. See `GROUPING.md` in the design
//! notes for the target behaviour; this is grouping config `v1`.
//!
//! Fingerprinting is total: any event, validated or not, is fingerprinted without panicking,
//! in time linear in its size, with bounded work and output per event. The bounds are the
//! constants of [`limits`]; ordinary events are far inside them.
#![warn(missing_docs)]

mod cache;
pub mod limits;
pub mod memo;
pub mod normalize;
pub mod rules;

use limits::{
    MAX_COMPONENT_LEN, MAX_CULPRIT_LEN, MAX_EXCEPTIONS, MAX_EXC_TYPE_LEN, MAX_EXPLAIN_VALUE_LEN,
    MAX_FINGERPRINT_ENTRIES, MAX_FINGERPRINT_ENTRY_LEN, MAX_FRAMES_PER_EXCEPTION, MAX_TITLE_LEN,
};
use rules::{FingerprintRule, StackAction, StackRule};
use serde::{Deserialize, Serialize};
use tracefold_model::event::{Event, Exception, Frame, Stacktrace, Thread};

/// The grouping config version this crate implements; recorded with every fingerprint.
pub const GROUPING_VERSION: &str = "v1";

/// Grouping options (the `[grouping]` section of the grouper's config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupingConfig {
    /// Most frames (nearest the crash) that contribute per exception.
    pub max_frames: usize,
    /// Server-side fingerprint rules; the first that matches gives the fingerprint (a client
    /// fingerprint still wins).
    pub fingerprint_rules: Vec<FingerprintRule>,
    /// Stack-trace rules, applied in order to every frame (later rules win).
    pub stack_rules: Vec<StackRule>,
}

impl Default for GroupingConfig {
    fn default() -> Self {
        Self { max_frames: 10, fingerprint_rules: Vec::new(), stack_rules: Vec::new() }
    }
}

/// A fingerprint: the issue identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub u128);

impl Fingerprint {
    /// 32 lower-case hex digits (by [`Fingerprint::hex_in`]: `format!("{:032x}")` costs about
    /// 900 instructions more, once for every new bucket of the grouper).
    pub fn to_hex(self) -> String {
        self.hex_in(&mut [0u8; 32]).to_owned()
    }

    /// The 32 lower-case hex digits written into `buf`, without formatting machinery or
    /// allocation.
    pub fn hex_in(self, buf: &mut [u8; 32]) -> &str {
        // Eight digits at a time in one word (the grouper writes one an event for a mapped
        // event's secondary fingerprint): about a third of the instructions of a digit by a
        // table lookup each.
        for (i, chunk) in buf.chunks_exact_mut(8).enumerate() {
            let word = (self.0 >> (32 * (3 - i))) as u32;
            chunk.copy_from_slice(&hex8(word));
        }
        std::str::from_utf8(buf).expect("hex digits are ASCII")
    }
}

/// The eight lowercase hex digits of `x`, most significant first: each nibble spread into a
/// byte of its own, then `b'0'` added to every byte and `b'a' - b'0' - 10` more to those of
/// nibbles from 10 up (found without a branch: a nibble plus 6 carries into bit 4 exactly
/// when it is 10 or more).
#[inline]
fn hex8(x: u32) -> [u8; 8] {
    let x = u64::from(x);
    let x = ((x & 0xffff_0000) << 16) | (x & 0xffff);
    let x = ((x & 0x0000_ff00_0000_ff00) << 8) | (x & 0x0000_00ff_0000_00ff);
    let x = ((x & 0x00f0_00f0_00f0_00f0) << 4) | (x & 0x000f_000f_000f_000f);
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * u64::from(b'a' - b'0' - 10)).to_be_bytes()
}

/// One component considered for the fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// What it is: `type`, `module`, `filename`, `function`, `value`, `message`, `custom`, ...
    pub kind: String,
    /// The normalized value (or the raw one, for dropped components).
    pub value: String,
    /// Whether it went into the hash.
    pub contributes: bool,
    /// Why it was dropped, or a note on how it was normalized.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Receives components as fingerprinting walks the event. The hashing sink ignores drops;
/// the explaining sink records everything.
trait Sink {
    fn add(&mut self, kind: &'static str, value: &str);
    fn drop_component(&mut self, kind: &'static str, value: &str, reason: &'static str);
    fn wants_drops(&self) -> bool;
    /// Whether [`Sink::exception`] and [`Sink::frame`] are wanted (only by the frames sink:
    /// the hashing and explaining sinks never pay for them).
    #[inline]
    fn wants_frames(&self) -> bool {
        false
    }
    /// The stack of the exception at `index` (in the event's list) is walked next.
    #[inline]
    fn exception(&mut self, _index: usize, _stack: StackSource) {}
    /// The frame at `index` (in the frames of the stack being walked) contributed.
    #[inline]
    fn frame(&mut self, _index: usize) {}
    /// A frame's location (unless empty) and function (unless empty) contribute, in that
    /// order (what [`cache::FrameCache::encoded`] holds as [`put_component`] writes them).
    #[inline]
    fn add_frame(&mut self, loc_kind: &'static str, cache: &cache::FrameCache, info: &cache::FrameInfo) {
        let (loc, func) = (cache.loc(info), cache.func(info));
        if !loc.is_empty() {
            self.add(loc_kind, loc);
        }
        if !func.is_empty() {
            self.add("function", func);
        }
    }
    /// An exception's value was looked at (no frame of its stack contributed), whether or
    /// not it had one: only the hashing sink records it (for [`memo::FingerprintMemo`]).
    #[inline]
    fn consults_value(&mut self) {}
    /// Whether a stack's walk may be replayed from the frame cache's memo of whole stacks
    /// (only the hashing sink: what it records of a walk is the bytes it appended).
    #[inline]
    fn replays_stacks(&self) -> bool {
        false
    }
    /// Where the bytes of the next components begin (for [`Sink::written_since`]).
    #[inline]
    fn mark(&self) -> usize {
        0
    }
    /// The bytes written since `mark`.
    #[inline]
    fn written_since(&self, _mark: usize) -> &[u8] {
        &[]
    }
    /// Writes the bytes a remembered walk wrote.
    #[inline]
    fn replay(&mut self, _bytes: &[u8]) {}
}

/// Collects the tagged, length-prefixed components into one buffer, hashed once at the end
/// (one xxh3-128 call instead of four small updates per component).
struct HashSink {
    buf: Vec<u8>,
    /// Whether [`Sink::consults_value`] was called.
    consulted_value: bool,
}

impl HashSink {
    fn new(mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.extend_from_slice(&(GROUPING_VERSION.len() as u32).to_le_bytes());
        buf.extend_from_slice(GROUPING_VERSION.as_bytes());
        Self { buf, consulted_value: false }
    }

    fn digest(&self) -> u128 {
        xxhash_rust::xxh3::xxh3_128(&self.buf)
    }
}

/// A component as the hashing sink writes it: length-prefixed and tagged, so that ("ab", "c")
/// and ("a", "bc") hash differently.
#[inline]
pub(crate) fn put_component(buf: &mut Vec<u8>, kind: &'static str, value: &str) {
    buf.push(kind.len() as u8);
    buf.extend_from_slice(kind.as_bytes());
    buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
    buf.extend_from_slice(value.as_bytes());
}

impl Sink for HashSink {
    #[inline]
    fn add(&mut self, kind: &'static str, value: &str) {
        put_component(&mut self.buf, kind, value);
    }
    /// The frame cache wrote the frame's components once ([`cache::FrameCache::encoded`]).
    #[inline]
    fn add_frame(&mut self, _: &'static str, cache: &cache::FrameCache, info: &cache::FrameInfo) {
        self.buf.extend_from_slice(cache.encoded(info));
    }
    #[inline]
    fn drop_component(&mut self, _: &'static str, _: &str, _: &'static str) {}
    #[inline]
    fn wants_drops(&self) -> bool {
        false
    }
    #[inline]
    fn consults_value(&mut self) {
        self.consulted_value = true;
    }
    #[inline]
    fn replays_stacks(&self) -> bool {
        true
    }
    #[inline]
    fn mark(&self) -> usize {
        self.buf.len()
    }
    #[inline]
    fn written_since(&self, mark: usize) -> &[u8] {
        &self.buf[mark..]
    }
    #[inline]
    fn replay(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
}

struct ExplainSink {
    hash: HashSink,
    components: Vec<Component>,
}

impl Sink for ExplainSink {
    fn add(&mut self, kind: &'static str, value: &str) {
        self.hash.add(kind, value);
        self.components.push(Component { kind: kind.into(), value: value.into(), contributes: true, hint: None });
    }
    fn drop_component(&mut self, kind: &'static str, value: &str, reason: &'static str) {
        self.components.push(Component {
            kind: kind.into(),
            value: limits::prefix(value, MAX_EXPLAIN_VALUE_LEN).into(),
            contributes: false,
            hint: Some(reason.into()),
        });
    }
    fn wants_drops(&self) -> bool {
        true
    }
}

/// Records which frames contributed, per exception, over a hashing sink.
struct FramesSink {
    hash: HashSink,
    exceptions: Vec<ExceptionFrames>,
}

impl Sink for FramesSink {
    #[inline]
    fn add(&mut self, kind: &'static str, value: &str) {
        self.hash.add(kind, value);
    }
    #[inline]
    fn add_frame(&mut self, loc_kind: &'static str, cache: &cache::FrameCache, info: &cache::FrameInfo) {
        self.hash.add_frame(loc_kind, cache, info);
    }
    #[inline]
    fn drop_component(&mut self, _: &'static str, _: &str, _: &'static str) {}
    #[inline]
    fn wants_drops(&self) -> bool {
        false
    }
    fn wants_frames(&self) -> bool {
        true
    }
    fn exception(&mut self, index: usize, stack: StackSource) {
        self.exceptions.push(ExceptionFrames { exception: index, stack, frames: Vec::new() });
    }
    fn frame(&mut self, index: usize) {
        if let Some(e) = self.exceptions.last_mut() {
            e.frames.push(index);
        }
    }
}

/// Reusable scratch buffers; keep one per thread and pass it to every call. Its size is
/// bounded (see [`limits::MAX_CACHE_ENTRIES`] and [`limits::MAX_CACHE_ARENA_BYTES`]).
#[derive(Debug, Default)]
pub struct Scratch {
    a: String,
    hash: Vec<u8>,
    cache: cache::FrameCache,
    infos: Vec<u32>,
    in_app: Vec<bool>,
    dropped: Vec<Option<&'static str>>,
}

impl Scratch {
    /// Scratch whose frame cache has smaller bounds, to exercise its resets.
    #[cfg(test)]
    fn with_cache_limits(entries: usize, arena: usize) -> Self {
        Self { cache: cache::FrameCache::with_limits(entries, arena), ..Self::default() }
    }
}

/// How an event was fingerprinted, for `tracefold fingerprint --explain` and snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The fingerprint as hex.
    pub fingerprint: String,
    /// The grouping config version.
    pub grouping_version: String,
    /// Which rule produced the hash: `custom`, `exception`, `message`, `fallback`.
    pub basis: String,
    /// Components in the order they were considered.
    pub components: Vec<Component>,
}

/// Where the frames of an exception's grouping stack are (see [`FrameContributions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackSource {
    /// The exception's own `stacktrace.frames`.
    Own,
    /// The exception has no stack: the frames of `threads[i]` stood in for it (see GROUPING.md,
    /// "Exceptions").
    Thread(usize),
}

/// The frames of one exception that went into the fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionFrames {
    /// The exception's index in the event's `exception` list.
    pub exception: usize,
    /// Whose frames [`ExceptionFrames::frames`] index.
    pub stack: StackSource,
    /// Indices into that stack's frames (oldest first, as sent) of the frames that
    /// contributed, innermost first; empty when none did (the type and message group it).
    pub frames: Vec<usize>,
}

/// Which frames made an event's fingerprint: what a stack-trace view marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameContributions {
    /// The fingerprint (the same as [`fingerprint`] gives).
    pub fingerprint: Fingerprint,
    /// Which rule produced the hash, as [`Explanation::basis`]: `custom`, `rule`, `exception`,
    /// `message`, `fallback`.
    pub basis: &'static str,
    /// Per exception whose stack was walked (the considered ones, oldest first): its
    /// contributing frames. Empty when no stack was walked (a message, or a custom or rule
    /// fingerprint without `{{ default }}`).
    pub exceptions: Vec<ExceptionFrames>,
}

/// Computes the fingerprint of an event (validated or not: any event is fingerprinted, within
/// the bounds of [`limits`]).
pub fn fingerprint(event: &Event<'_>, cfg: &GroupingConfig, scratch: &mut Scratch) -> Fingerprint {
    fingerprint_and_reads(event, cfg, scratch).0
}

/// [`fingerprint`], and whether an exception's value was looked at (what
/// [`memo::FingerprintMemo`] must know: its key leaves the values out).
pub(crate) fn fingerprint_and_reads(
    event: &Event<'_>,
    cfg: &GroupingConfig,
    scratch: &mut Scratch,
) -> (Fingerprint, bool) {
    let mut sink = HashSink::new(std::mem::take(&mut scratch.hash));
    walk(event, cfg, scratch, &mut sink);
    let fp = Fingerprint(sink.digest());
    let consulted = sink.consulted_value;
    scratch.hash = sink.buf;
    (fp, consulted)
}

/// Computes the fingerprint and says which components contributed and which were dropped.
pub fn explain(event: &Event<'_>, cfg: &GroupingConfig) -> Explanation {
    let mut sink = ExplainSink { hash: HashSink::new(Vec::new()), components: Vec::new() };
    let basis = walk(event, cfg, &mut Scratch::default(), &mut sink);
    Explanation {
        fingerprint: Fingerprint(sink.hash.digest()).to_hex(),
        grouping_version: GROUPING_VERSION.into(),
        basis: basis.into(),
        components: sink.components,
    }
}

/// Computes the fingerprint and says which frames contributed to it, by the same walk as
/// [`fingerprint`] (the grouping rules are not repeated anywhere else). Not for the hot path:
/// it allocates its answer.
pub fn contributing_frames(event: &Event<'_>, cfg: &GroupingConfig) -> FrameContributions {
    let mut sink = FramesSink { hash: HashSink::new(Vec::new()), exceptions: Vec::new() };
    let basis = walk(event, cfg, &mut Scratch::default(), &mut sink);
    FrameContributions { fingerprint: Fingerprint(sink.hash.digest()), basis, exceptions: sink.exceptions }
}

fn is_default_marker(s: &str) -> bool {
    let t = s.trim();
    t.strip_prefix("{{")
        .and_then(|r| r.strip_suffix("}}"))
        .is_some_and(|inner| matches!(inner.trim(), "default" | " default_hash"))
}

/// Every part of the event (and of `cfg`) this walk reads must be covered by the key of
/// [`memo::FingerprintMemo`] (`memo::walk`), or make it decline the event: two events of
/// one key must get one fingerprint (its tests compare the memo with this walk).
fn walk<S: Sink>(event: &Event<'_>, cfg: &GroupingConfig, scratch: &mut Scratch, sink: &mut S) -> &'static str {
    if !event.fingerprint.is_empty() {
        if is_only_default(&event.fingerprint) {
            return default_components(event, cfg, scratch, sink);
        }
        custom_components("custom", &event.fingerprint, event, cfg, scratch, sink);
        return "custom";
    }
    if let Some(rule) = cfg.fingerprint_rules.iter().find(|r| r.matcher.matches(event)) {
        if is_only_default(&rule.fingerprint) {
            return default_components(event, cfg, scratch, sink);
        }
        custom_components("rule", &rule.fingerprint, event, cfg, scratch, sink);
        return "rule";
    }
    default_components(event, cfg, scratch, sink)
}

/// Whether a client or rule fingerprint is `["{{ default }}"]` alone: the default grouping
/// itself, as in Sentry (an SDK or a `before_send` that sets it, or a rule that only stops
/// later rules, keeps the event in the issue it has without it).
fn is_only_default<T: AsRef<str>>(values: &[T]) -> bool {
    matches!(values, [one] if is_default_marker(limits::prefix(one.as_ref(), MAX_FINGERPRINT_ENTRY_LEN)))
}

/// A client or rule fingerprint: its first [`MAX_FINGERPRINT_ENTRIES`] values, each cut to
/// [`MAX_FINGERPRINT_ENTRY_LEN`] bytes. The first `{{ default }}` splices the default
/// components; a repeated marker is hashed as the marker alone (the default components are
/// walked at most once per event).
fn custom_components<S: Sink, T: AsRef<str>>(
    kind: &'static str,
    values: &[T],
    event: &Event<'_>,
    cfg: &GroupingConfig,
    scratch: &mut Scratch,
    sink: &mut S,
) {
    let mut spliced = false;
    for value in values.iter().take(MAX_FINGERPRINT_ENTRIES) {
        let value = limits::prefix(value.as_ref(), MAX_FINGERPRINT_ENTRY_LEN);
        if is_default_marker(value) {
            sink.add(kind, "{{ default }}");
            if !spliced {
                spliced = true;
                default_components(event, cfg, scratch, sink);
            } else if sink.wants_drops() {
                sink.drop_component(
                    "default",
                    "{{ default }}",
                    "repeated {{ default }}: the default components count once",
                );
            }
        } else {
            sink.add(kind, value);
        }
    }
    if values.len() > MAX_FINGERPRINT_ENTRIES && sink.wants_drops() {
        let more = format!("{} more entries", values.len() - MAX_FINGERPRINT_ENTRIES);
        sink.drop_component(kind, &more, "beyond MAX_FINGERPRINT_ENTRIES");
    }
}

/// The exceptions of `event` that fingerprinting considers: the last [`MAX_EXCEPTIONS`] of the
/// chain (nearest the raised exception).
pub(crate) fn considered_exceptions<'e, 'a>(event: &'e Event<'a>) -> &'e [Exception<'a>] {
    let all = &event.exception;
    &all[all.len().saturating_sub(MAX_EXCEPTIONS)..]
}

/// The frames of a stack that fingerprinting considers: the last [`MAX_FRAMES_PER_EXCEPTION`]
/// (nearest the crash).
pub(crate) fn considered_frames<'e, 'a>(stack: Option<&'e Stacktrace<'a>>) -> &'e [Frame<'a>] {
    let all: &[Frame<'a>] = stack.map_or(&[], |s| &s.frames);
    &all[all.len().saturating_sub(MAX_FRAMES_PER_EXCEPTION)..]
}

/// Which thread's stack stands in for an exception without one, and why.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StandIn<'e, 'a> {
    thread: &'e Thread<'a>,
    why: &'static str,
}

/// The stack that groups `exc`: its own when it has frames; else, when the event has
/// threads, the stack of the thread whose `id` is the exception's `thread_id`, else (for the
/// raised exception, `primary`) of the thread marked `crashed`, else of the one marked
/// `current` (the first with frames of each kind); else none. At most [`MAX_THREADS`] threads
/// are looked at (the parsers keep no more).
///
/// [`MAX_THREADS`]: tracefold_model::event::MAX_THREADS
pub(crate) fn exception_stack<'e, 'a>(
    event: &'e Event<'a>,
    exc: &'e Exception<'a>,
    primary: bool,
) -> (Option<&'e Stacktrace<'a>>, Option<StandIn<'e, 'a>>) {
    let own = exc.stacktrace.as_ref();
    if own.is_some_and(|s| !s.frames.is_empty()) || event.threads.is_empty() {
        return (own, None);
    }
    let threads = &event.threads[..event.threads.len().min(tracefold_model::event::MAX_THREADS)];
    let with_frames = |t: &&Thread<'a>| t.stacktrace.as_ref().is_some_and(|s| !s.frames.is_empty());
    let by_id = exc
        .thread_id
        .as_deref()
        .and_then(|id| threads.iter().filter(|t| t.id.as_deref() == Some(id)).find(with_frames))
        .map(|thread| StandIn {
            thread,
            why: "the exception has no stack: the stack of its thread (thread_id) groups it",
        });
    let fallback = || {
        if !primary {
            return None;
        }
        let crashed = threads.iter().filter(|t| t.crashed == Some(true)).find(with_frames).map(|thread| StandIn {
            thread,
            why: "the exception has no stack: the stack of the crashed thread groups it",
        });
        crashed.or_else(|| {
            threads.iter().filter(|t| t.current == Some(true)).find(with_frames).map(|thread| StandIn {
                thread,
                why: "the exception has no stack: the stack of the current thread groups it",
            })
        })
    };
    match by_id.or_else(fallback) {
        Some(s) => (s.thread.stacktrace.as_ref(), Some(s)),
        None => (own, None),
    }
}

/// `thread <id> (<name>)`, bounded, for the explanation.
fn thread_label(t: &Thread<'_>) -> String {
    let mut out = String::from("thread ");
    limits::push_bounded(&mut out, t.id.as_deref().unwrap_or("?"), MAX_EXPLAIN_VALUE_LEN);
    if let Some(name) = t.name.as_deref().filter(|n| !n.is_empty()) {
        limits::push_bounded(&mut out, " (", MAX_EXPLAIN_VALUE_LEN);
        limits::push_bounded(&mut out, name, MAX_EXPLAIN_VALUE_LEN);
        limits::push_bounded(&mut out, ")", MAX_EXPLAIN_VALUE_LEN);
    }
    out
}

fn default_components<S: Sink>(
    event: &Event<'_>,
    cfg: &GroupingConfig,
    scratch: &mut Scratch,
    sink: &mut S,
) -> &'static str {
    if !event.exception.is_empty() {
        let js = matches!(event.platform.as_deref(), Some("javascript" | "node"));
        let exceptions = considered_exceptions(event);
        if exceptions.len() < event.exception.len() && sink.wants_drops() {
            let older = format!("{} older exceptions", event.exception.len() - exceptions.len());
            sink.drop_component("exception", &older, "beyond MAX_EXCEPTIONS: not considered");
        }
        let last = exceptions.len() - 1;
        let first = event.exception.len() - exceptions.len();
        for (i, exc) in exceptions.iter().enumerate() {
            let (stack, stand_in) = exception_stack(event, exc, i == last);
            if sink.wants_frames() {
                let source = stand_in
                    .and_then(|s| event.threads.iter().position(|t| std::ptr::eq(t, s.thread)))
                    .map_or(StackSource::Own, StackSource::Thread);
                sink.exception(first + i, source);
            }
            exception_components(exc, stack, stand_in, event.platform.as_deref(), js, cfg, scratch, sink);
        }
        return "exception";
    }
    if let Some(m) = message_source(event) {
        normalize::message(m, &mut scratch.a);
        sink.add("message", &scratch.a);
        return "message";
    }
    sink.add("fallback", "no exception and no message");
    "fallback"
}

/// The message that groups best: the log template, else the formatted message.
pub fn message_source<'e>(event: &'e Event<'_>) -> Option<&'e str> {
    event
        .logentry
        .as_ref()
        .and_then(|l| l.message.as_deref().or(l.formatted.as_deref()))
        .or(event.message.as_deref())
        .filter(|m| !m.trim().is_empty())
}

/// Per frame: whether it is in-app after the stack rules, and why it does not contribute.
/// Fills the caller's buffers (no allocation once they have grown).
fn classify_frames(
    frames: &[Frame<'_>],
    infos: &[u32],
    cache: &cache::FrameCache,
    platform: Option<&str>,
    cfg: &GroupingConfig,
    in_app: &mut Vec<bool>,
    dropped: &mut Vec<Option<&'static str>>,
) {
    in_app.clear();
    in_app.extend(frames.iter().map(|f| f.in_app == Some(true)));
    dropped.clear();
    dropped.extend(infos.iter().map(|&i| cache.info(i).machinery));
    if !cfg.stack_rules.is_empty() {
        let mut cut_at: Option<usize> = None;
        for (i, f) in frames.iter().enumerate() {
            for rule in &cfg.stack_rules {
                if rule.matcher.matches(f, platform) {
                    match rule.action {
                        StackAction::App => in_app[i] = true,
                        StackAction::NotApp => in_app[i] = false,
                        StackAction::Exclude => dropped[i] = Some("excluded by a stack rule"),
                        StackAction::Cut => cut_at = Some(cut_at.map_or(i, |c| c.min(i))),
                    }
                }
            }
        }
        // Error-reporting helpers: the helper and everything it called do not contribute.
        if let Some(c) = cut_at {
            for d in &mut dropped[c..] {
                *d = Some("error-reporting helper (cut by a stack rule)");
            }
        }
    }
    // Panic and throw machinery at the crash end.
    for i in (0..frames.len()).rev() {
        let border = cache.info(infos[i]).panic_border;
        if dropped[i].is_none() && !border {
            break;
        }
        if dropped[i].is_none() {
            dropped[i] = Some("panic or throw machinery");
        }
    }
    // Frames below the runtime's entry point (main, the event loop).
    if let Some(entry) = infos.iter().rposition(|&i| cache.info(i).entry) {
        for d in &mut dropped[..entry] {
            d.get_or_insert("below the runtime entry point (main or the event loop)");
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn exception_components<S: Sink>(
    exc: &Exception<'_>,
    stack: Option<&Stacktrace<'_>>,
    stand_in: Option<StandIn<'_, '_>>,
    platform: Option<&str>,
    js: bool,
    cfg: &GroupingConfig,
    scratch: &mut Scratch,
    sink: &mut S,
) {
    let synthetic = exc.mechanism.as_ref().and_then(|m| m.synthetic).unwrap_or(false);
    match exc.ty.as_deref().filter(|t| !t.is_empty()) {
        Some(t) if synthetic => sink.drop_component("type", t, "mechanism says the type is synthetic"),
        Some(t) => sink.add("type", limits::prefix(t, MAX_COMPONENT_LEN)),
        None => {}
    }
    if let Some(s) = stand_in {
        if sink.wants_drops() {
            sink.drop_component("stack", &thread_label(s.thread), s.why);
        }
    }
    let frames = considered_frames(stack);
    // The indices of the frame cache must stay valid until this exception is done: the cache
    // may start over here, never during the lookups.
    scratch.cache.make_room(frames.len());
    // Without stack rules, the hashing walk reads of a stack only what its key covers (the
    // frames' names, in-app marks and, in JavaScript, columns; `max_frames`), and what it
    // writes is the same bytes whenever they are equal: a stack seen before is replayed.
    let memo = (sink.replays_stacks() && cfg.stack_rules.is_empty())
        .then(|| scratch.cache.stack_key(frames, js, cfg.max_frames));
    let remembered = memo.and_then(|key| scratch.cache.stack(key));
    let contributed = if let Some((bytes, contributed)) = remembered {
        sink.replay(bytes);
        contributed
    } else {
        let mark = sink.mark();
        let contributed = stack_components(stack, frames, platform, js, cfg, scratch, sink);
        if let Some(key) = memo {
            scratch.cache.remember_stack(key, sink.written_since(mark), contributed);
        }
        contributed
    };
    if contributed == 0 {
        sink.consults_value();
        if let Some(v) = exc.value.as_deref().filter(|v| !v.is_empty()) {
            normalize::exception_value(v, &mut scratch.a);
            sink.add("value", &scratch.a);
        }
    } else if let Some(v) = exc.value.as_deref() {
        if sink.wants_drops() {
            let why = if stand_in.is_some() {
                "its thread's stack groups the exception; its message does not contribute"
            } else {
                "the exception has a stack; its message does not contribute"
            };
            sink.drop_component("value", v, why);
        }
    }
}

/// The components of an exception's considered `frames` (of `stack`), and how many frames
/// contributed.
#[allow(clippy::too_many_arguments)]
fn stack_components<S: Sink>(
    stack: Option<&Stacktrace<'_>>,
    frames: &[Frame<'_>],
    platform: Option<&str>,
    js: bool,
    cfg: &GroupingConfig,
    scratch: &mut Scratch,
    sink: &mut S,
) -> usize {
    // Where the considered frames begin in the stack (for the frames sink).
    let first_frame = stack.map_or(0, |s| s.frames.len()) - frames.len();
    let mut infos = std::mem::take(&mut scratch.infos);
    infos.clear();
    for f in frames {
        infos.push(scratch.cache.lookup(f, js));
    }
    let (mut in_app, mut dropped) = (std::mem::take(&mut scratch.in_app), std::mem::take(&mut scratch.dropped));
    classify_frames(frames, &infos, &scratch.cache, platform, cfg, &mut in_app, &mut dropped);
    let cache = &scratch.cache;
    let mut prev: Option<u32> = None;
    let any_in_app = in_app.iter().zip(&dropped).any(|(a, d)| *a && d.is_none());
    let mut contributed = 0usize;
    // Walk from the crash outwards so that the cap keeps the frames nearest the crash; the
    // components are emitted in that order (innermost first): a stable, documented order.
    for (i, frame) in frames.iter().enumerate().rev() {
        if let Some(reason) = dropped[i] {
            if sink.wants_drops() {
                sink.drop_component("frame", &frame_label(frame), reason);
            }
            continue;
        }
        if contributed >= cfg.max_frames {
            if sink.wants_drops() {
                sink.drop_component("frame", &frame_label(frame), "beyond max_frames");
                continue;
            }
            break;
        }
        if any_in_app && !in_app[i] {
            if sink.wants_drops() {
                sink.drop_component("frame", &frame_label(frame), "not in-app");
            }
            continue;
        }
        let info = cache.info(infos[i]);
        let loc_kind = if info.module_loc { "module" } else { "filename" };
        if info.loc_is_empty() && info.func_is_empty() {
            if sink.wants_drops() {
                sink.drop_component("frame", &frame_label(frame), "no usable function, module or file name");
            }
            continue;
        }
        // A minified bundle has no usable names: within one build, the column tells functions
        // apart (a weak signal: a new build moves it).
        let weak_col = if info.minified { frame.colno } else { None };
        // Collapse direct recursion: the same (location, function) as the previous frame.
        if let Some(p) = prev {
            let pi = cache.info(infos[p as usize]);
            let prev_col = if pi.minified { frames[p as usize].colno } else { None };
            // One cache entry has one location and function; two entries may have equal ones.
            let same = infos[p as usize] == infos[i]
                || (cache.loc(pi) == cache.loc(info) && cache.func(pi) == cache.func(info));
            if prev_col == weak_col && same {
                if sink.wants_drops() {
                    sink.drop_component("frame", &frame_label(frame), "direct recursion collapsed");
                }
                continue;
            }
        }
        prev = Some(i as u32);
        sink.add_frame(loc_kind, cache, info);
        if info.func_is_empty() {
            if let Some(col) = weak_col {
                let mut buf = [0u8; 10];
                sink.add("colno", itoa_str(&mut buf, col));
            }
            if sink.wants_drops() {
                sink.drop_component(
                    "function",
                    frame.function.as_deref().unwrap_or(""),
                    if info.minified {
                        "minified: no usable function name; the file name and column contribute (weak signal)"
                    } else {
                        "anonymous or missing function: only the file name contributes (weak)"
                    },
                );
            }
        }
        if sink.wants_drops() && weak_col.is_none() && (frame.lineno.is_some() || frame.colno.is_some()) {
            let at = match (frame.lineno, frame.colno) {
                (Some(l), Some(c)) => format!("{l}:{c}"),
                (Some(l), None) => l.to_string(),
                (None, Some(c)) => format!("?:{c}"),
                (None, None) => String::new(),
            };
            sink.drop_component("lineno", &at, "line and column never contribute");
        }
        if sink.wants_frames() {
            sink.frame(first_frame + i);
        }
        contributed += 1;
    }
    let total = stack.map_or(0, |s| s.frames.len());
    if total > frames.len() && sink.wants_drops() {
        let older = format!("{} older frames", total - frames.len());
        sink.drop_component("frame", &older, "beyond MAX_FRAMES_PER_EXCEPTION: not considered");
    }
    scratch.in_app = in_app;
    scratch.dropped = dropped;
    scratch.infos = infos;
    contributed
}

/// Formats `n` into `buf` without allocating.
fn itoa_str(buf: &mut [u8; 10], mut n: u32) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("ascii digits")
}

/// `module-or-file in function` as reported, at most `max` bytes.
fn frame_location(f: &Frame<'_>, max: usize) -> String {
    let loc = f.module.as_deref().or(f.filename.as_deref()).or(f.abs_path.as_deref()).unwrap_or("?");
    let mut out = String::with_capacity(max.min(loc.len() + 4 + f.function.as_deref().map_or(0, str::len)));
    limits::push_bounded(&mut out, loc, max);
    if let Some(func) = f.function.as_deref() {
        limits::push_bounded(&mut out, " in ", max);
        limits::push_bounded(&mut out, func, max);
    }
    out
}

fn frame_label(f: &Frame<'_>) -> String {
    let mut label = frame_location(f, MAX_EXPLAIN_VALUE_LEN);
    if f.function.is_none() && label.len() < MAX_EXPLAIN_VALUE_LEN {
        limits::push_bounded(&mut label, " in ?", MAX_EXPLAIN_VALUE_LEN);
    }
    label
}

/// Human-facing description of an issue, computed once per new aggregate, not per event.
/// Every field is bounded ([`MAX_TITLE_LEN`], [`MAX_CULPRIT_LEN`], [`MAX_EXC_TYPE_LEN`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssueMeta {
    /// `Type: parameterized message`, or the parameterized message.
    pub title: String,
    /// `module-or-file in function` of the frame nearest the crash that is in-app.
    pub culprit: String,
    /// Exception type of the raised (last) exception.
    pub exc_type: String,
}

/// Builds the issue title, culprit and type of an event, each cut on a character boundary to
/// its bound; it looks at a bounded part of the event only.
pub fn describe(event: &Event<'_>) -> IssueMeta {
    let mut meta = IssueMeta::default();
    let mut buf = String::new();
    if let Some(exc) = event.exception.last() {
        meta.exc_type = limits::prefix(exc.ty.as_deref().unwrap_or(""), MAX_EXC_TYPE_LEN).to_owned();
        let value = exc.value.as_deref().unwrap_or("");
        // Room for the usual output at once (placeholders are a few bytes longer than what
        // they replace), instead of growing it two or three times.
        buf.reserve(value.len().min(limits::MAX_MESSAGE_INPUT) + 32);
        normalize::exception_value(value, &mut buf);
        let first_line = buf.lines().next().unwrap_or("");
        // The title's three parts in one allocation.
        meta.title.reserve((meta.exc_type.len() + 2 + first_line.len()).min(MAX_TITLE_LEN));
        limits::push_bounded(&mut meta.title, &meta.exc_type, MAX_TITLE_LEN);
        if !meta.exc_type.is_empty() && !first_line.is_empty() {
            limits::push_bounded(&mut meta.title, ": ", MAX_TITLE_LEN);
        }
        limits::push_bounded(&mut meta.title, first_line, MAX_TITLE_LEN);
        let frames = considered_frames(exception_stack(event, exc, true).0);
        let any_in_app = frames.iter().any(|f| f.in_app == Some(true));
        if let Some(f) = frames.iter().rev().find(|f| !any_in_app || f.in_app == Some(true)) {
            meta.culprit = frame_location(f, MAX_CULPRIT_LEN);
        }
    } else if let Some(m) = message_source(event) {
        normalize::message(m, &mut buf);
        limits::push_bounded(&mut meta.title, buf.lines().next().unwrap_or(""), MAX_TITLE_LEN);
        meta.culprit = limits::prefix(event.logger.as_deref().unwrap_or(""), MAX_CULPRIT_LEN).to_owned();
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracefold_model::parse_event_str;

    fn fp(json: &str) -> Fingerprint {
        let ev = parse_event_str(json).unwrap();
        fingerprint(&ev, &GroupingConfig::default(), &mut Scratch::default())
    }

    fn js(func: &str, line: u32, col: u32, bundle: &str, msg: &str) -> String {
        format!(
            r#"{{"exception":[{{"type":"TypeError","value":"{msg}","stacktrace":{{"frames":[
            {{"function":"dispatch","filename":"https://cdn.x.com/js/vendor.aaaa1111.js","lineno":1,"colno":5,"in_app":false}},
            {{"function":"{func}","filename":"https://cdn.x.com/js/main.{bundle}.js","lineno":{line},"colno":{col},"in_app":true}}]}}}}]}}"#
        )
    }

    #[test]
    fn hex_in_and_to_hex_are_the_formatted_digits() {
        let mut buf = [0u8; 32];
        for v in [0u128, 1, 0xf, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210, 1 << 127, u64::MAX as u128] {
            assert_eq!(Fingerprint(v).hex_in(&mut buf), format!("{v:032x}"));
            assert_eq!(Fingerprint(v).to_hex(), format!("{v:032x}"));
        }
        let mut x = 0x9e37_79b9_7f4a_7c15_u128;
        for _ in 0..1000 {
            x = x.wrapping_mul(0x2545_f491_4f6c_dd1d_0000_0000_0000_0001).wrapping_add(0x1234_5678_9abc_def1);
            assert_eq!(Fingerprint(x).hex_in(&mut buf), format!("{x:032x}"));
            assert_eq!(Fingerprint(x).to_hex(), format!("{x:032x}"));
        }
    }

    #[test]
    fn ignores_lines_columns_bundle_hashes_and_message_ids() {
        let a = fp(&js("renderCart", 10, 20, "3f9a2c1b", "item 42 missing"));
        let b = fp(&js("renderCart", 99, 7, "8d1e2f3a", "item 7 missing"));
        assert_eq!(a, b);
    }

    #[test]
    fn changes_with_function_and_type() {
        let a = fp(&js("renderCart", 10, 20, "3f9a2c1b", "m"));
        assert_ne!(a, fp(&js("renderCheckout", 10, 20, "3f9a2c1b", "m")));
        let other_type = js("renderCart", 10, 20, "3f9a2c1b", "m").replace("TypeError", "RangeError");
        assert_ne!(a, fp(&other_type));
    }

    #[test]
    fn client_fingerprint_with_default_splices_the_default_hash() {
        let base = js("renderCart", 10, 20, "3f9a2c1b", "m");
        let with = |fpv: &str| base.replacen('{', &format!("{{\"fingerprint\":{fpv},"), 1);
        let only_custom = fp(&with(r#"["checkout-down"]"#));
        let custom_plus_default = fp(&with(r#"["{{ default }}","checkout-down"]"#));
        assert_ne!(only_custom, custom_plus_default);
        assert_ne!(custom_plus_default, fp(&base));
        // Without {{ default }}, the stack no longer matters.
        let other = js("renderCheckout", 1, 1, "00000000", "x");
        let other_custom = fp(&other.replacen('{', "{\"fingerprint\":[\"checkout-down\"],", 1));
        assert_eq!(only_custom, other_custom);
    }

    /// `fingerprint: ["{{ default }}"]` alone is the default grouping, as in Sentry: the event
    /// is in the issue it has without it (it was in one of its own, the same bug split in two
    /// by whether a code path set the fingerprint). The same for a rule's fingerprint.
    #[test]
    fn a_fingerprint_of_only_default_is_the_default_grouping() {
        let base = js("renderCart", 10, 20, "3f9a2c1b", "m");
        let with = |fpv: &str| base.replacen('{', &format!("{{\"fingerprint\":{fpv},"), 1);
        for only in [r#"["{{ default }}"]"#, r#"["{{default}}"]"#, r#"[" {{ default }} "]"#] {
            assert_eq!(fp(&with(only)), fp(&base), "{only}");
        }
        let msg = r#"{"message":"user 42 not found"}"#;
        assert_eq!(fp(&msg.replacen('{', r#"{"fingerprint":["{{ default }}"],"#, 1)), fp(msg));
        // With anything beside it, it still splices.
        assert_ne!(fp(&with(r#"["{{ default }}","checkout"]"#)), fp(&base));
        assert_ne!(fp(&with(r#"["default"]"#)), fp(&base));
        let only = with(r#"["{{ default }}"]"#);
        let ev = parse_event_str(&only).unwrap();
        assert_eq!(explain(&ev, &GroupingConfig::default()).basis, "exception");
        // A rule of only {{ default }}: the default grouping, and later rules do not match.
        let rules = |fps: &[&str]| GroupingConfig {
            fingerprint_rules: fps
                .iter()
                .map(|f| toml::from_str(&format!("match = {{ type = \"TypeError\" }}\nfingerprint = {f}")).unwrap())
                .collect(),
            ..GroupingConfig::default()
        };
        let plain = parse_event_str(&base).unwrap();
        let with_rules = |cfg: &GroupingConfig| fingerprint(&plain, cfg, &mut Scratch::default());
        assert_eq!(with_rules(&rules(&[r#"["{{ default }}"]"#, r#"["later"]"#])), fp(&base));
        assert_ne!(with_rules(&rules(&[r#"["later"]"#])), fp(&base));
    }

    /// A Sentry exception without a stack whose stack came at the event's top level groups by
    /// that stack (the mapping keeps it as the current thread's), as Sentry moves it into the
    /// exception: two different crash sites with one type and value are two issues.
    #[test]
    fn a_sentry_top_level_stack_groups_a_stackless_exception() {
        let sentry = |func: &str, line: u32| {
            serde_json::json!({
                "exception": {"values": [{"type": "RuntimeException", "value": "failed"}]},
                "stacktrace": {"frames": [{"function": "main", "module": "App"}, {"function": func, "module": "App", "lineno": line}]}
            })
        };
        let fp_of = |v: &serde_json::Value| {
            let ev = tracefold_model::sentry::map(v, Some("web")).unwrap();
            fingerprint(&ev, &GroupingConfig::default(), &mut Scratch::default())
        };
        assert_ne!(fp_of(&sentry("charge", 10)), fp_of(&sentry("refund", 10)));
        assert_eq!(fp_of(&sentry("charge", 10)), fp_of(&sentry("charge", 99)));
    }

    #[test]
    fn message_events_group_by_parameterized_message() {
        let a = fp(r#"{"message":"user 42 not found"}"#);
        let b = fp(r#"{"message":"user 1337 not found"}"#);
        let c = fp(r#"{"message":"order 42 not found"}"#);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn components_are_length_prefixed() {
        let a = fp(r#"{"fingerprint":["ab","c"],"message":"m"}"#);
        let b = fp(r#"{"fingerprint":["a","bc"],"message":"m"}"#);
        assert_ne!(a, b);
    }

    #[test]
    fn explanation_matches_hash_and_lists_drops() {
        let json = js("renderCart", 10, 20, "3f9a2c1b", "item 42 missing");
        let ev = parse_event_str(&json).unwrap();
        let ex = explain(&ev, &GroupingConfig::default());
        assert_eq!(ex.fingerprint, fp(&json).to_hex());
        assert_eq!(ex.basis, "exception");
        let contributing: Vec<_> =
            ex.components.iter().filter(|c| c.contributes).map(|c| (c.kind.as_str(), c.value.as_str())).collect();
        assert_eq!(contributing, [("type", "TypeError"), ("filename", "main.<hash>.js"), ("function", "renderCart")]);
        assert!(ex.components.iter().any(|c| !c.contributes && c.hint.as_deref() == Some("not in-app")));
    }

    fn frame(i: usize, tag: &str, long: bool) -> Frame<'static> {
        let pad = if long { "x".repeat(200) } else { String::new() };
        Frame {
            function: Some(format!("{tag}_fn{i}{pad}").into()),
            module: Some(format!("{tag}.mod{}{pad}", i % 7).into()),
            lineno: Some(i as u32),
            in_app: Some(i % 3 < 2),
            ..Frame::default()
        }
    }

    /// An event of `exceptions` exceptions of `frames` frames each, distinct per `tag`, with a
    /// few frames shared by all events (cache hits among the misses).
    fn wide_event(tag: &str, exceptions: usize, frames: usize, long: bool) -> Event<'static> {
        let exception =
            (0..exceptions)
                .map(|e| Exception {
                    ty: Some(format!("E{e}").into()),
                    stacktrace: Some(tracefold_model::event::Stacktrace {
                        frames: (0..frames)
                            .map(|i| {
                                if i % 10 == 0 {
                                    frame(i, "shared", long)
                                } else {
                                    frame(i, &format!("{tag}e{e}"), long)
                                }
                            })
                            .collect(),
                    }),
                    ..Exception::default()
                })
                .collect();
        Event { platform: Some("python".into()), exception, ..Event::default() }
    }

    /// The frame cache starts over when full, but never in the middle of an exception: the
    /// fingerprints of a long-lived scratch equal those of a fresh one, and the bounds hold.
    #[test]
    fn frame_cache_resets_never_change_fingerprints() {
        let cfg = GroupingConfig { max_frames: 300, ..GroupingConfig::default() };
        // (entries, arena bytes): the entry bound bites, then the arena bound bites.
        for (entries, arena, long) in [(300, usize::MAX, false), (100_000, 320 * 1024, true)] {
            let mut shared = Scratch::with_cache_limits(entries, arena);
            for n in 0..12 {
                // More distinct frames in one event than the cache holds, and across events.
                let ev = wide_event(&format!("ev{n}"), 1 + n % 4, 180 + 20 * n, long);
                let want = fingerprint(&ev, &cfg, &mut Scratch::default());
                assert_eq!(fingerprint(&ev, &cfg, &mut shared), want, "event {n}");
                assert_eq!(explain(&ev, &cfg).fingerprint, want.to_hex());
                let (used, bytes) = shared.cache.usage();
                assert!(used <= entries && bytes <= arena, "event {n}: {used} entries, {bytes} bytes");
            }
        }
        // The real bounds: 32 x 256 distinct frames per event, nine events (73 728 frames).
        let mut shared = Scratch::default();
        for n in 0..9 {
            let ev = wide_event(&format!("big{n}"), 32, 256, false);
            assert_eq!(fingerprint(&ev, &cfg, &mut shared), fingerprint(&ev, &cfg, &mut Scratch::default()), "{n}");
            let (used, bytes) = shared.cache.usage();
            assert!(used <= limits::MAX_CACHE_ENTRIES && bytes <= limits::MAX_CACHE_ARENA_BYTES);
        }
    }

    /// A long-lived scratch gives every event the fingerprint a fresh one gives, for frames of
    /// short names that differ only in their last byte, in where one name ends and the next
    /// begins, or in the JavaScript bit: the frame cache's key before fp-33 (three seeded xxh3
    /// calls, the seed `js + 1`) gave ("cab" in JavaScript) and ("cac" elsewhere), and
    /// ("abb", "", "c") and ("abc", "c", ""), one key, so the second of such a pair took the
    /// first one's cached components.
    #[test]
    fn short_names_never_share_a_cached_frame() {
        let cfg = GroupingConfig::default();
        let mut names = vec![String::new()];
        for len in 1..=3u32 {
            for n in 0..3usize.pow(len) {
                let name: String = (0..len).map(|i| char::from(b'a' + (n / 3usize.pow(i) % 3) as u8)).collect();
                names.push(name);
            }
        }
        let mut shared = Scratch::default();
        let mut seen = 0;
        for module in &names {
            for file in ["", "c"] {
                for function in &names {
                    for platform in ["javascript", "python"] {
                        let frame = Frame {
                            module: (!module.is_empty()).then(|| module.clone().into()),
                            filename: (!file.is_empty()).then(|| file.into()),
                            function: (!function.is_empty()).then(|| function.clone().into()),
                            in_app: Some(true),
                            ..Frame::default()
                        };
                        let ev = Event {
                            platform: Some(platform.into()),
                            exception: vec![Exception {
                                ty: Some("E".into()),
                                stacktrace: Some(tracefold_model::event::Stacktrace { frames: vec![frame] }),
                                ..Exception::default()
                            }],
                            ..Event::default()
                        };
                        let want = fingerprint(&ev, &cfg, &mut Scratch::default());
                        assert_eq!(
                            fingerprint(&ev, &cfg, &mut shared),
                            want,
                            "{platform} {module:?} {file:?} {function:?}"
                        );
                        seen += 1;
                    }
                }
            }
        }
        assert_eq!(seen, 40 * 2 * 40 * 2);
    }

    /// A stack drawn as picks: per frame (module, file, function, column, in-app, rest)
    /// indices; `rest` sets the fields the walk does not read without stack rules (package,
    /// line, absolute path beside a file name).
    type StackPicks = Vec<(usize, usize, usize, usize, usize, usize)>;

    /// An event of the picks: its platform and stacks (see
    /// `remembered_stacks_answer_as_the_walk`).
    fn picked_event(platform: usize, stacks: &[StackPicks]) -> Event<'static> {
        // Few values per field, so that stacks repeat and nearly repeat; non-ASCII names, a
        // minified bundle (its frames' columns contribute in JavaScript), empty names.
        let names = ["", "a", "app.min.js", "\u{e7}a/\u{e9}t\u{e9}.js", "main", "\u{65e5}\u{672c}::\u{95a2}\u{6570}"];
        let cols = [None, Some(1), Some(17_944), Some(u32::MAX)];
        let in_app = [None, Some(true), Some(false)];
        let name = |i: usize| (i > 0).then(|| names[i].into());
        let exception = stacks
            .iter()
            .map(|frames| Exception {
                ty: Some("E".into()),
                value: Some("v".into()),
                stacktrace: Some(tracefold_model::event::Stacktrace {
                    frames: frames
                        .iter()
                        .map(|&(m, f, g, c, a, r)| Frame {
                            module: name(m),
                            filename: name(f),
                            function: name(g),
                            colno: cols[c],
                            in_app: in_app[a],
                            package: name(r % 6),
                            lineno: [None, Some(0), Some(7), Some(u32::MAX)][r % 4],
                            abs_path: name((r / 2) % 6),
                            ..Frame::default()
                        })
                        .collect(),
                }),
                ..Exception::default()
            })
            .collect();
        let platforms = [Some("javascript"), Some("node"), Some("python"), None];
        Event { platform: platforms[platform].map(Into::into), exception, ..Event::default() }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// The memo of whole stacks (`FrameCache::stack_key`): one long-lived scratch gives
        /// every event of a sequence the fingerprint of the walk without the memo (`explain`,
        /// whose sink never replays) and of a fresh scratch. The events share few names, so
        /// their stacks repeat and differ in one frame's in-app mark, column, one name, the
        /// platform or `max_frames` alone, or in fields the walk does not read today (package,
        /// line, absolute path): a part the key left out that the walk reads, now or after a
        /// change of the rules, would give a remembered stack's answer to another.
        #[test]
        fn remembered_stacks_answer_as_the_walk(
            base in (
                0usize..4,
                proptest::collection::vec(
                    proptest::collection::vec((0usize..6, 0usize..6, 0usize..6, 0usize..4, 0usize..3, 0usize..12), 0..5),
                    1..3,
                ),
            ),
            changes in proptest::collection::vec((0usize..9, 0usize..3, proptest::prelude::any::<usize>(), proptest::prelude::any::<usize>(), 0usize..12), 1..24),
        ) {
            let cfgs = [1, 2, 10].map(|max_frames| GroupingConfig { max_frames, ..GroupingConfig::default() });
            let mut shared = Scratch::default();
            // The base event, then events that differ from it in one part each, the base
            // again between them (its stacks are remembered by then).
            for (what, cfg, i, j, to) in std::iter::once((8, 2, 0, 0, 0)).chain(changes) {
                let (mut platform, mut stacks) = base.clone();
                let n = stacks.len();
                let frames = &mut stacks[i % n];
                let m = frames.len();
                match what {
                    0 => platform = to % 4,
                    1..=6 if m > 0 => {
                        let f = &mut frames[j % m];
                        match what {
                            1 => f.0 = to % 6,
                            2 => f.1 = to % 6,
                            3 => f.2 = to % 6,
                            4 => f.3 = to % 4,
                            5 => f.4 = to % 3,
                            _ => f.5 = to,
                        }
                    }
                    _ => {}
                }
                for (platform, stacks) in [(platform, &stacks), (base.0, &base.1)] {
                    let ev = picked_event(platform, stacks);
                    let cfg = &cfgs[cfg];
                    let got = fingerprint(&ev, cfg, &mut shared);
                    proptest::prop_assert_eq!(got.to_hex(), explain(&ev, cfg).fingerprint, "{:?}", ev);
                    proptest::prop_assert_eq!(got, fingerprint(&ev, cfg, &mut Scratch::default()));
                }
            }
        }
    }

    /// A stack seen before is replayed, and stays within the cache's bounds: the second
    /// fingerprint of an event reads no frame from the frame cache (no new entry) and equals
    /// the first.
    #[test]
    fn a_stack_seen_before_is_replayed() {
        let ev = picked_event(0, &[vec![(1, 2, 0, 1, 1, 0), (0, 3, 4, 2, 1, 5), (5, 1, 5, 0, 0, 11)]]);
        let cfg = GroupingConfig::default();
        let mut scratch = Scratch::default();
        let first = fingerprint(&ev, &cfg, &mut scratch);
        let (entries, bytes) = scratch.cache.usage();
        assert_eq!(entries, 3 + 1, "three frames and one stack");
        assert_eq!(fingerprint(&ev, &cfg, &mut scratch), first);
        assert_eq!(scratch.cache.usage(), (entries, bytes));
        assert_eq!(first.to_hex(), explain(&ev, &cfg).fingerprint);
    }

    /// Only the last exceptions and frames count; extra custom entries and long values are cut.
    #[test]
    fn oversized_events_are_cut_to_the_limits() {
        let cfg = GroupingConfig { max_frames: 1000, ..GroupingConfig::default() };
        let mut scratch = Scratch::default();
        let mut ev = wide_event("a", 40, 300, false);
        let fp_all = fingerprint(&ev, &cfg, &mut scratch);
        // Exceptions older than the last 32 and frames older than the last 256 do not count.
        ev.exception[0].ty = Some("Other".into());
        ev.exception[20].stacktrace.as_mut().unwrap().frames[0].function = Some("other".into());
        assert_eq!(fingerprint(&ev, &cfg, &mut scratch), fp_all);
        ev.exception[39].stacktrace.as_mut().unwrap().frames[298].function = Some("other".into());
        assert_ne!(fingerprint(&ev, &cfg, &mut scratch), fp_all);
        let ex = explain(&ev, &cfg);
        assert_eq!(ex.fingerprint, fingerprint(&ev, &cfg, &mut scratch).to_hex());
        assert!(ex.components.iter().any(|c| c.value == "8 older exceptions"));
        assert!(ex.components.iter().any(|c| c.value == "44 older frames"));
        // Component values are bounded.
        ev.exception[39].ty = Some("T".repeat(10_000).into());
        ev.exception[39].value = Some("v".repeat(1 << 20).into());
        let ex = explain(&ev, &cfg);
        assert!(ex.components.iter().all(|c| c.value.len() <= MAX_EXPLAIN_VALUE_LEN));
        assert_eq!(ex.fingerprint, fingerprint(&ev, &cfg, &mut scratch).to_hex());

        // Client fingerprints: 32 entries of at most 256 bytes.
        let custom = |values: Vec<String>| {
            let ev = Event { fingerprint: values.into_iter().map(Into::into).collect(), ..Event::default() };
            let fp = fingerprint(&ev, &cfg, &mut Scratch::default());
            assert_eq!(explain(&ev, &cfg).fingerprint, fp.to_hex());
            fp
        };
        let base: Vec<String> = (0..32).map(|i| i.to_string()).collect();
        let more: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
        assert_eq!(custom(base.clone()), custom(more));
        let long = format!("{}é{}", "a".repeat(255), "b".repeat(1000));
        assert_eq!(custom(vec![long]), custom(vec!["a".repeat(255)]));
    }

    /// `{{ default }}` splices the default components once, however often it is repeated.
    #[test]
    fn repeated_default_marker_walks_the_default_once() {
        let cfg = GroupingConfig::default();
        let mut ev = wide_event("d", 32, 256, false);
        ev.fingerprint = vec!["{{ default }}".into(); 100_000];
        let ex = explain(&ev, &cfg);
        assert_eq!(ex.fingerprint, fingerprint(&ev, &cfg, &mut Scratch::default()).to_hex());
        let spliced = ex.components.iter().filter(|c| c.kind == "type").count();
        assert_eq!(spliced, 32);
        let markers = ex.components.iter().filter(|c| c.kind == "custom" && c.value == "{{ default }}").count();
        assert_eq!(markers, MAX_FINGERPRINT_ENTRIES);
        // The same marker once more changes the fingerprint (it is hashed), the stack does not
        // get hashed twice.
        ev.fingerprint.truncate(2);
        let two = fingerprint(&ev, &cfg, &mut Scratch::default());
        ev.fingerprint.truncate(1);
        assert_ne!(two, fingerprint(&ev, &cfg, &mut Scratch::default()));
    }

    /// Non-ASCII names that used to panic fingerprint, explain and describe like any other.
    #[test]
    fn non_ascii_frames_fingerprint() {
        let json = r#"{"platform":"rust","exception":[{"type":"Ошибка","value":"заказ 42 не найден","stacktrace":{"frames":[
            {"function":"обработатьЗаказПользователя","filename":"src/заказы.rs","in_app":true},
            {"function":"日本語::関数::h0123456789abcdef","filename":"src/関数.rs","in_app":true},
            {"function":"é$1","module":"é$1"},
            {"function":"<Ма>b__0","module":"Магазин"}]}}]}"#;
        let ev = parse_event_str(json).unwrap();
        let ex = explain(&ev, &GroupingConfig::default());
        assert_eq!(ex.fingerprint, fp(json).to_hex());
        let funcs: Vec<_> = ex.components.iter().filter(|c| c.kind == "function").map(|c| c.value.as_str()).collect();
        assert_eq!(funcs, ["日本語::関数", "обработатьЗаказПользователя"]);
        let m = describe(&ev);
        assert_eq!(m.title, "Ошибка: заказ <int> не найден");
        assert_eq!(m.culprit, "src/関数.rs in 日本語::関数::h0123456789abcdef");
    }

    #[test]
    fn describe_is_bounded() {
        let long = "é".repeat(10_000);
        let json = serde_json::json!({"exception":[{"type": long, "value": long, "stacktrace":{"frames":[
            {"function": long, "module": long}]}}]})
        .to_string();
        let ev = parse_event_str(&json).unwrap();
        let m = describe(&ev);
        assert_eq!(
            (m.title.len(), m.culprit.len(), m.exc_type.len()),
            (MAX_TITLE_LEN, MAX_CULPRIT_LEN, MAX_EXC_TYPE_LEN)
        );
        let json = serde_json::json!({"message": "日本".repeat(100_000), "logger": long}).to_string();
        let m = describe(&parse_event_str(&json).unwrap());
        assert!(m.title.len() <= MAX_TITLE_LEN && m.culprit.len() <= MAX_CULPRIT_LEN);
        assert!(m.title.starts_with("日本"));
    }

    /// Which thread stands in for a stackless exception: the one its `thread_id` names (with
    /// frames), else for the raised exception the crashed one, else the current one; a cause
    /// takes a thread only by id; an exception with frames keeps its own.
    #[test]
    fn thread_stand_in_order() {
        let t = |id: &str, flags: &str, func: &str| {
            format!(r#"{{"id":"{id}",{flags}"stacktrace":{{"frames":[{{"function":"{func}","module":"m"}}]}}}}"#)
        };
        let ev = |exceptions: &str, threads: &[String]| {
            format!(r#"{{"exception":[{exceptions}],"threads":[{}]}}"#, threads.join(","))
        };
        let empty = r#"{"id":"9","crashed":true,"stacktrace":{"frames":[]}}"#.to_owned();
        let all =
            [t("1", r#""current":true,"#, "idle"), t("2", r#""crashed":true,"#, "crash"), t("3", "", "named"), empty];
        let funcs = |json: &str| -> Vec<String> {
            let e = explain(&parse_event_str(json).unwrap(), &GroupingConfig::default());
            e.components.iter().filter(|c| c.kind == "function" && c.contributes).map(|c| c.value.clone()).collect()
        };
        assert_eq!(funcs(&ev(r#"{"type":"E","thread_id":"3"}"#, &all)), ["named"]);
        assert_eq!(funcs(&ev(r#"{"type":"E","thread_id":"9"}"#, &all)), ["crash"], "no frames on 9: crashed");
        assert_eq!(funcs(&ev(r#"{"type":"E","thread_id":"404"}"#, &all)), ["crash"]);
        assert_eq!(describe(&parse_event_str(&ev(r#"{"type":"E"}"#, &all)).unwrap()).culprit, "m in crash");
        assert_eq!(funcs(&ev(r#"{"type":"E"}"#, &all[..1])), ["idle"]);
        assert_eq!(funcs(&ev(r#"{"type":"E"}"#, &all[2..])), Vec::<String>::new(), "neither crashed nor current");
        // Causes take a thread by id only.
        assert_eq!(funcs(&ev(r#"{"type":"C"},{"type":"E"}"#, &all)), ["crash"]);
        assert_eq!(funcs(&ev(r#"{"type":"C","thread_id":3},{"type":"E"}"#, &all)), ["named", "crash"]);
        // Own frames win; without threads nothing changes.
        let own = r#"{"type":"E","thread_id":"3","stacktrace":{"frames":[{"function":"own","module":"m"}]}}"#;
        assert_eq!(funcs(&ev(own, &all)), ["own"]);
        let bare = r#"{"exception":[{"type":"E","value":"v","thread_id":"3"}]}"#;
        assert_eq!(fp(bare), fp(r#"{"exception":[{"type":"E","value":"v"}]}"#));
    }

    /// The frames that made the fingerprint: in-app ones only when there are some, none for a
    /// message or a custom fingerprint without `{{ default }}`, a thread's when it stood in.
    #[test]
    fn contributing_frames_are_those_the_hash_walked() {
        let cfg = GroupingConfig::default();
        let of = |json: &str| {
            let ev = parse_event_str(json).unwrap();
            let c = contributing_frames(&ev, &cfg);
            assert_eq!(c.fingerprint, fingerprint(&ev, &cfg, &mut Scratch::default()), "{json}");
            c
        };
        let c = of(&js("renderCart", 10, 20, "3f9a2c1b", "m"));
        assert_eq!(c.basis, "exception");
        assert_eq!(c.exceptions, [ExceptionFrames { exception: 0, stack: StackSource::Own, frames: vec![1] }]);
        // A cause and its exception; frames without in-app marks all count, innermost first,
        // the recursion collapsed and the panic machinery left out.
        let chain = r#"{"platform":"rust","exception":[
            {"type":"Cause","stacktrace":{"frames":[{"function":"a","module":"m"},{"function":"b","module":"m"}]}},
            {"type":"E","stacktrace":{"frames":[{"function":"main","module":"app"},{"function":"go","module":"app"},
              {"function":"go","module":"app"},{"function":"core::panicking::panic","module":"core::panicking"}]}}]}"#;
        let c = of(chain);
        let got: Vec<_> = c.exceptions.iter().map(|e| (e.exception, e.frames.clone())).collect();
        assert_eq!(got, [(0, vec![1, 0]), (1, vec![2, 0])]);
        let c = of(r#"{"message":"user 42 not found"}"#);
        assert_eq!((c.basis, c.exceptions.len()), ("message", 0));
        let custom = js("renderCart", 1, 1, "0", "m").replacen('{', r#"{"fingerprint":["x"],"#, 1);
        assert_eq!(of(&custom).exceptions.len(), 0);
        let spliced = js("renderCart", 1, 1, "0", "m").replacen('{', r#"{"fingerprint":["{{ default }}","x"],"#, 1);
        let c = of(&spliced);
        assert_eq!((c.basis, c.exceptions[0].frames.clone()), ("custom", vec![1]));
        let stand_in = r#"{"exception":[{"type":"E","thread_id":"7"}],"threads":[{"id":"1","stacktrace":{"frames":[]}},
            {"id":"7","stacktrace":{"frames":[{"function":"run","module":"w"},{"function":"work","module":"w"}]}}]}"#;
        let c = of(stand_in);
        assert_eq!(c.exceptions, [ExceptionFrames { exception: 0, stack: StackSource::Thread(1), frames: vec![1, 0] }]);
    }

    #[test]
    fn describe_builds_title_and_culprit() {
        let json = js("renderCart", 10, 20, "3f9a2c1b", "item 42 missing");
        let ev = parse_event_str(&json).unwrap();
        let m = describe(&ev);
        assert_eq!(m.title, "TypeError: item <int> missing");
        assert_eq!(m.culprit, "https://cdn.x.com/js/main.3f9a2c1b.js in renderCart");
        assert_eq!(m.exc_type, "TypeError");
    }
}
