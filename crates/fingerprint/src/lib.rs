//! Grouping: turns an error event into a fingerprint (xxh3-128 over length-prefixed, tagged
//! components), so that events of one bug share an issue. See `GROUPING.md` in the design
//! notes for the target behaviour; this is grouping config `v1`.
#![warn(missing_docs)]

mod cache;
pub mod normalize;
pub mod rules;

use rules::{FingerprintRule, StackAction, StackRule};
use serde::{Deserialize, Serialize};
use tracefold_model::event::{Event, Exception, Frame};

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
    /// 32 lower-case hex digits.
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }
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
}

/// Collects the tagged, length-prefixed components into one buffer, hashed once at the end
/// (one xxh3-128 call instead of four small updates per component).
struct HashSink {
    buf: Vec<u8>,
}

impl HashSink {
    fn new(mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.extend_from_slice(&(GROUPING_VERSION.len() as u32).to_le_bytes());
        buf.extend_from_slice(GROUPING_VERSION.as_bytes());
        Self { buf }
    }

    fn digest(&self) -> u128 {
        xxhash_rust::xxh3::xxh3_128(&self.buf)
    }
}

impl Sink for HashSink {
    #[inline]
    fn add(&mut self, kind: &'static str, value: &str) {
        // Length-prefixed and tagged: ("ab","c") and ("a","bc") hash differently.
        self.buf.push(kind.len() as u8);
        self.buf.extend_from_slice(kind.as_bytes());
        self.buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(value.as_bytes());
    }
    #[inline]
    fn drop_component(&mut self, _: &'static str, _: &str, _: &'static str) {}
    #[inline]
    fn wants_drops(&self) -> bool {
        false
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
            value: value.into(),
            contributes: false,
            hint: Some(reason.into()),
        });
    }
    fn wants_drops(&self) -> bool {
        true
    }
}

/// Reusable scratch buffers; keep one per thread and pass it to every call.
#[derive(Debug, Default)]
pub struct Scratch {
    a: String,
    hash: Vec<u8>,
    cache: cache::FrameCache,
    infos: Vec<u32>,
    in_app: Vec<bool>,
    dropped: Vec<Option<&'static str>>,
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

/// Computes the fingerprint of a (validated) event.
pub fn fingerprint(event: &Event<'_>, cfg: &GroupingConfig, scratch: &mut Scratch) -> Fingerprint {
    let mut sink = HashSink::new(std::mem::take(&mut scratch.hash));
    walk(event, cfg, scratch, &mut sink);
    let fp = Fingerprint(sink.digest());
    scratch.hash = sink.buf;
    fp
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

fn is_default_marker(s: &str) -> bool {
    let t = s.trim();
    t.strip_prefix("{{")
        .and_then(|r| r.strip_suffix("}}"))
        .is_some_and(|inner| matches!(inner.trim(), "default" | " default_hash"))
}

fn walk<S: Sink>(event: &Event<'_>, cfg: &GroupingConfig, scratch: &mut Scratch, sink: &mut S) -> &'static str {
    if !event.fingerprint.is_empty() {
        for value in &event.fingerprint {
            if is_default_marker(value) {
                sink.add("custom", "{{ default }}");
                default_components(event, cfg, scratch, sink);
            } else {
                sink.add("custom", value);
            }
        }
        return "custom";
    }
    if let Some(rule) = cfg.fingerprint_rules.iter().find(|r| r.matcher.matches(event)) {
        for value in &rule.fingerprint {
            if is_default_marker(value) {
                sink.add("rule", "{{ default }}");
                default_components(event, cfg, scratch, sink);
            } else {
                sink.add("rule", value);
            }
        }
        return "rule";
    }
    default_components(event, cfg, scratch, sink)
}

fn default_components<S: Sink>(
    event: &Event<'_>,
    cfg: &GroupingConfig,
    scratch: &mut Scratch,
    sink: &mut S,
) -> &'static str {
    if !event.exception.is_empty() {
        let js = matches!(event.platform.as_deref(), Some("javascript" | "node"));
        for exc in &event.exception {
            exception_components(exc, event.platform.as_deref(), js, cfg, scratch, sink);
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

fn exception_components<S: Sink>(
    exc: &Exception<'_>,
    platform: Option<&str>,
    js: bool,
    cfg: &GroupingConfig,
    scratch: &mut Scratch,
    sink: &mut S,
) {
    let synthetic = exc.mechanism.as_ref().and_then(|m| m.synthetic).unwrap_or(false);
    match exc.ty.as_deref().filter(|t| !t.is_empty()) {
        Some(t) if synthetic => sink.drop_component("type", t, "mechanism says the type is synthetic"),
        Some(t) => sink.add("type", t),
        None => {}
    }
    let frames: &[Frame<'_>] = exc.stacktrace.as_ref().map_or(&[], |s| &s.frames);
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
        let (loc, func) = (cache.loc(info), cache.func(info));
        let loc_kind = if info.module_loc { "module" } else { "filename" };
        if loc.is_empty() && func.is_empty() {
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
            if prev_col == weak_col && cache.loc(pi) == loc && cache.func(pi) == func {
                if sink.wants_drops() {
                    sink.drop_component("frame", &frame_label(frame), "direct recursion collapsed");
                }
                continue;
            }
        }
        prev = Some(i as u32);
        if !loc.is_empty() {
            sink.add(loc_kind, loc);
        }
        if func.is_empty() {
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
        } else {
            sink.add("function", func);
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
        contributed += 1;
    }
    scratch.in_app = in_app;
    scratch.dropped = dropped;
    scratch.infos = infos;
    if contributed == 0 {
        if let Some(v) = exc.value.as_deref().filter(|v| !v.is_empty()) {
            normalize::message(v, &mut scratch.a);
            sink.add("value", &scratch.a);
        }
    } else if let Some(v) = exc.value.as_deref() {
        if sink.wants_drops() {
            sink.drop_component("value", v, "the exception has a stack; its message does not contribute");
        }
    }
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

fn frame_label(f: &Frame<'_>) -> String {
    format!(
        "{} in {}",
        f.module.as_deref().or(f.filename.as_deref()).or(f.abs_path.as_deref()).unwrap_or("?"),
        f.function.as_deref().unwrap_or("?")
    )
}

/// Human-facing description of an issue, computed once per new aggregate, not per event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssueMeta {
    /// `Type: parameterized message`, or the parameterized message.
    pub title: String,
    /// `module-or-file in function` of the frame nearest the crash that is in-app.
    pub culprit: String,
    /// Exception type of the raised (last) exception.
    pub exc_type: String,
}

/// Builds the issue title, culprit and type of an event.
pub fn describe(event: &Event<'_>) -> IssueMeta {
    let mut meta = IssueMeta::default();
    let mut buf = String::new();
    if let Some(exc) = event.exception.last() {
        meta.exc_type = exc.ty.as_deref().unwrap_or("").to_owned();
        normalize::message(exc.value.as_deref().unwrap_or(""), &mut buf);
        let first_line = buf.lines().next().unwrap_or("");
        meta.title = match (meta.exc_type.is_empty(), first_line.is_empty()) {
            (false, false) => format!("{}: {}", meta.exc_type, first_line),
            (false, true) => meta.exc_type.clone(),
            _ => first_line.to_owned(),
        };
        if let Some(st) = &exc.stacktrace {
            let any_in_app = st.frames.iter().any(|f| f.in_app == Some(true));
            if let Some(f) = st.frames.iter().rev().find(|f| !any_in_app || f.in_app == Some(true)) {
                let loc = f.module.as_deref().or(f.filename.as_deref()).or(f.abs_path.as_deref()).unwrap_or("?");
                meta.culprit = match f.function.as_deref() {
                    Some(func) => format!("{loc} in {func}"),
                    None => loc.to_owned(),
                };
            }
        }
    } else if let Some(m) = message_source(event) {
        normalize::message(m, &mut buf);
        meta.title = buf.lines().next().unwrap_or("").to_owned();
        meta.culprit = event.logger.as_deref().unwrap_or("").to_owned();
    }
    if meta.title.len() > 200 {
        let mut cut = 200;
        while !meta.title.is_char_boundary(cut) {
            cut -= 1;
        }
        meta.title.truncate(cut);
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
