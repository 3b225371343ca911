//! [`super::rewrite_sample`] on the payload's bytes: the mapped frames' objects are written
//! again, everything else is copied as it is. One iterative pass indexes the payload's values
//! (no recursion: any depth), then the frames are found by the same path the `Value` version
//! follows and spliced in.
//!
//! The bytes path gives the same JSON value as the `Value` path ([`rewrite_via_value`]): it
//! takes only documents `serde_json` reads into that same value and whose rewrite is never
//! shorter than the `Value` path's (so the sample bound cuts neither or both, see
//! [`MAX_SAMPLE_BYTES`]); anything else (not JSON, lone surrogate escapes, numbers with an
//! exponent or `-0`, nesting past [`MAX_DEPTH`], two records of one frame, a rewrite over the
//! bound) is handed to the `Value` path, which answers as it always did.

use super::{Mapped, Original, Stack};
use std::borrow::Cow;
use std::sync::Arc;
use tracefold_model::sample::MAX_SAMPLE_BYTES;
use tracefold_symbolicate::SourceContext;

/// Deepest nesting the bytes path takes (`serde_json` itself stops at 128).
const MAX_DEPTH: usize = 100;

/// Most integer digits of a number the bytes path takes, without and with a fraction: such a
/// number is an `i64`/`u64` written back as it is, or an `f64` that `serde_json` writes in
/// decimal notation no longer than it was (past these it may choose the exponent form, longer).
const MAX_INT_DIGITS: usize = 19;
const MAX_INT_DIGITS_WITH_FRACTION: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Object,
    Array,
    String,
    /// A number or a literal.
    Other,
}

/// One value of the payload: its bytes and, for a container, the index of the first node
/// after its last descendant (an object's children are key, value, key, value...).
#[derive(Debug, Clone, Copy)]
struct Node {
    kind: Kind,
    start: usize,
    end: usize,
    next: usize,
}

/// The sample with the mapped frames written in (see [`super::rewrite_sample`]).
pub(super) fn rewrite(payload: &[u8], mapped: &[Mapped<'_>]) -> Vec<u8> {
    bytes_path(payload, mapped).unwrap_or_else(|| rewrite_via_value(payload, mapped))
}

fn bytes_path(p: &[u8], mapped: &[Mapped<'_>]) -> Option<Vec<u8>> {
    std::str::from_utf8(p).ok()?;
    let mut nodes = Vec::with_capacity(p.len() / 16 + 4);
    index(p, &mut nodes)?;
    let doc = Doc { p, nodes: &nodes };
    let mut found: Vec<(usize, &Mapped<'_>)> = Vec::with_capacity(mapped.len());
    // The records of one stack follow each other: its frames array is found once for them.
    let mut frames: Option<(Stack, Option<usize>)> = None;
    for m in mapped {
        let list = match frames {
            Some((stack, list)) if stack == m.stack => list,
            _ => {
                let list = doc.frames_of(m.stack);
                frames = Some((m.stack, list));
                list
            }
        };
        if let Some(frame) = list.and_then(|l| doc.frame(l, m.frame)) {
            found.push((frame, m));
        }
    }
    found.sort_by_key(|(f, _)| *f);
    if found.windows(2).any(|w| w[0].0 == w[1].0) {
        // Two records of one frame: in the Value path the second one's check reads what the
        // first one wrote. Rare enough to leave to it.
        return None;
    }
    let edits = found.into_iter().filter(|(frame, m)| {
        doc.num(doc.member(*frame, "lineno")) == m.raw_lineno.map(u64::from)
            && doc.num(doc.member(*frame, "colno")) == m.raw_colno.map(u64::from)
    });
    let mut out = Vec::with_capacity(p.len() + 512 * mapped.len());
    let mut at = 0;
    for (frame, m) in edits {
        let n = nodes[frame];
        out.extend_from_slice(&p[at..n.start]);
        doc.write_frame(frame, m, &mut out)?;
        at = n.end;
    }
    out.extend_from_slice(&p[at..]);
    (out.len() <= MAX_SAMPLE_BYTES).then_some(out)
}

/// The original frame to write, with the source context added from the map when there is one
/// (for this one event of many: grouping needs none of it). The `Value` path's; the bytes path
/// writes the memoized context's JSON ([`context_of`]).
fn with_context<'m, 'e>(m: &'m Mapped<'e>) -> Cow<'m, Original<'e>> {
    match context_of(m) {
        Some(c) => Cow::Owned(Original {
            pre_context: c.pre_context.clone(),
            context_line: Some(c.context_line.clone()),
            post_context: c.post_context.clone(),
            ..m.original.clone()
        }),
        None => Cow::Borrowed(&m.original),
    }
}

/// The source context of the record's position from its map (memoized per position,
/// [`tracefold_symbolicate::ParsedMap::context`]), unless the record has its own.
fn context_of(m: &Mapped<'_>) -> Option<Arc<SourceContext>> {
    match (&m.map, m.raw_lineno, m.raw_colno) {
        (Some(map), Some(line), Some(col)) if m.original.context_line.is_none() => map.context(line, col),
        _ => None,
    }
}

/// The keys a rewrite sets or removes (the last three only when there is a source context).
const REWRITTEN: [&str; 13] = [
    "raw_filename",
    "raw_abs_path",
    "raw_function",
    "raw_lineno",
    "raw_colno",
    "filename",
    "abs_path",
    "function",
    "lineno",
    "colno",
    "pre_context",
    "context_line",
    "post_context",
];

struct Doc<'a> {
    p: &'a [u8],
    nodes: &'a [Node],
}

impl Doc<'_> {
    /// The key of an object member (a string node) as UTF-8 bytes, unescaped only when it has
    /// escapes.
    fn key(&self, k: usize) -> Cow<'_, [u8]> {
        let n = self.nodes[k];
        let inner = &self.p[n.start + 1..n.end - 1];
        if !inner.contains(&b'\\') {
            return Cow::Borrowed(inner);
        }
        let decoded = serde_json::from_slice::<String>(&self.p[n.start..n.end]).unwrap_or_default();
        Cow::Owned(decoded.into_bytes())
    }

    /// The members of object `obj` as (key node, value node).
    fn members(&self, obj: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let end = self.nodes[obj].next;
        let mut i = obj + 1;
        std::iter::from_fn(move || {
            if i >= end {
                return None;
            }
            let (k, v) = (i, i + 1);
            i = self.nodes[v].next;
            Some((k, v))
        })
    }

    /// The value of `key` in `obj` (the last one when repeated, as `serde_json` reads it);
    /// `None` when `obj` is not an object.
    fn member(&self, obj: usize, key: &str) -> Option<usize> {
        if self.nodes[obj].kind != Kind::Object {
            return None;
        }
        self.members(obj).filter(|(k, _)| *self.key(*k) == *key.as_bytes()).last().map(|(_, v)| v)
    }

    /// Element `n` of array `arr`.
    fn element(&self, arr: usize, n: usize) -> Option<usize> {
        if self.nodes[arr].kind != Kind::Array {
            return None;
        }
        let end = self.nodes[arr].next;
        let mut i = arr + 1;
        for _ in 0..n {
            if i >= end {
                return None;
            }
            i = self.nodes[i].next;
        }
        (i < end).then_some(i)
    }

    /// What `serde_json::Value::as_u64` gives for the value.
    fn num(&self, v: Option<usize>) -> Option<u64> {
        let n = self.nodes[v?];
        let text = &self.p[n.start..n.end];
        if n.kind != Kind::Other || text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
            return None;
        }
        text.iter().try_fold(0u64, |acc, d| acc.checked_mul(10)?.checked_add(u64::from(d - b'0')))
    }

    /// The `frames` value of `stack`, by the path the `Value` version follows.
    fn frames_of(&self, stack: Stack) -> Option<usize> {
        let (field, i) = match stack {
            Stack::Exception(i) => ("exception", i),
            Stack::Thread(i) => ("threads", i),
        };
        let list = self.member(0, field)?;
        let list = if self.nodes[list].kind == Kind::Object { self.member(list, "values")? } else { list };
        let stacktrace = self.member(self.element(list, i)?, "stacktrace")?;
        self.member(stacktrace, "frames")
    }

    /// Frame object `n` of the `frames` value `frames` (see [`Self::frames_of`]).
    fn frame(&self, frames: usize, n: usize) -> Option<usize> {
        let frame = self.element(frames, n)?;
        (self.nodes[frame].kind == Kind::Object).then_some(frame)
    }

    /// The frame object written again: its members but the rewritten ones as they are, then the
    /// rewritten ones.
    fn write_frame(&self, frame: usize, m: &Mapped<'_>, out: &mut Vec<u8>) -> Option<()> {
        // The context from the map is written as the JSON it keeps for the position; a record's
        // own context (none on the grouper's path) field by field.
        let context = context_of(m);
        let o = &m.original;
        let rewritten = if context.is_some() || o.context_line.is_some() { &REWRITTEN[..] } else { &REWRITTEN[..10] };
        out.push(b'{');
        let mut first = true;
        for (k, v) in self.members(frame) {
            let key = self.key(k);
            if rewritten.iter().any(|r| r.as_bytes() == &*key) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&self.p[self.nodes[k].start..self.nodes[v].end]);
        }
        let mut put = |key: &str, value: &dyn erased::Json| -> Option<()> {
            if !first {
                out.push(b',');
            }
            first = false;
            // The keys are plain ASCII without quotes, backslashes or controls: written as
            // `serde_json` writes them, without its escaping pass.
            debug_assert!(key.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'));
            out.push(b'"');
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            value.write(out)
        };
        let file = &*o.file;
        let fields: [(&str, Option<&dyn erased::Json>); 10] = [
            ("raw_filename", m.raw_filename.as_ref().map(|s| s as _)),
            ("raw_abs_path", m.raw_abs_path.as_ref().map(|s| s as _)),
            ("raw_function", m.raw_function.as_ref().map(|s| s as _)),
            ("raw_lineno", m.raw_lineno.as_ref().map(|s| s as _)),
            ("raw_colno", m.raw_colno.as_ref().map(|s| s as _)),
            ("filename", Some(&file)),
            ("abs_path", Some(&file)),
            ("function", o.function.as_ref().map(|s| s as _)),
            ("lineno", Some(&o.line)),
            ("colno", Some(&o.col)),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                put(key, value)?;
            }
        }
        match &context {
            Some(c) => {
                // `filename` was written: the members follow a comma.
                out.push(b',');
                out.extend_from_slice(c.json.as_bytes());
            }
            None if o.context_line.is_some() => {
                put("pre_context", &o.pre_context)?;
                put("context_line", &o.context_line)?;
                put("post_context", &o.post_context)?;
            }
            None => {}
        }
        out.push(b'}');
        Some(())
    }
}

mod erased {
    use std::borrow::Cow;

    /// A value written as `serde_json` writes it (compact), byte for byte.
    pub(super) trait Json {
        fn write(&self, out: &mut Vec<u8>) -> Option<()>;
    }

    /// A string as `serde_json` writes it: copied as it is when it has nothing to escape (the
    /// usual source line or name), else through `serde_json` itself.
    fn string(s: &str, out: &mut Vec<u8>) -> Option<()> {
        // No early exit: the check is one pass the compiler can vectorize.
        let escapes = s.bytes().fold(false, |any, b| any | (b < 0x20) | (b == b'"') | (b == b'\\'));
        if escapes {
            return serde_json::to_writer(out, s).ok();
        }
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        Some(())
    }

    impl Json for &str {
        fn write(&self, out: &mut Vec<u8>) -> Option<()> {
            string(self, out)
        }
    }

    impl Json for Cow<'_, str> {
        fn write(&self, out: &mut Vec<u8>) -> Option<()> {
            string(self, out)
        }
    }

    impl Json for Option<String> {
        fn write(&self, out: &mut Vec<u8>) -> Option<()> {
            match self {
                Some(s) => string(s, out),
                None => {
                    out.extend_from_slice(b"null");
                    Some(())
                }
            }
        }
    }

    impl Json for Vec<String> {
        fn write(&self, out: &mut Vec<u8>) -> Option<()> {
            out.push(b'[');
            for (i, s) in self.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(s, out)?;
            }
            out.push(b']');
            Some(())
        }
    }

    impl Json for u32 {
        fn write(&self, out: &mut Vec<u8>) -> Option<()> {
            serde_json::to_writer(out, self).ok()
        }
    }
}

fn ws(p: &[u8], mut i: usize) -> usize {
    while matches!(p.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Indexes the document's values into `nodes` (the top-level one first); `None` when it is not
/// JSON the bytes path takes (see the module docs). One pass, no recursion.
fn index(p: &[u8], nodes: &mut Vec<Node>) -> Option<()> {
    enum State {
        Value,
        Key,
        After,
    }
    let mut open: Vec<usize> = Vec::new();
    let mut state = State::Value;
    let mut i = ws(p, 0);
    loop {
        match state {
            State::Value => {
                let start = i;
                match *p.get(i)? {
                    c @ (b'{' | b'[') => {
                        if open.len() >= MAX_DEPTH {
                            return None;
                        }
                        let kind = if c == b'{' { Kind::Object } else { Kind::Array };
                        open.push(nodes.len());
                        nodes.push(Node { kind, start, end: 0, next: 0 });
                        i = ws(p, i + 1);
                        let close = if c == b'{' { b'}' } else { b']' };
                        if p.get(i) == Some(&close) {
                            close_container(nodes, &mut open, i);
                            i += 1;
                            state = State::After;
                        } else {
                            state = if c == b'{' { State::Key } else { State::Value };
                        }
                        continue;
                    }
                    b'"' => i = string(p, i)?,
                    b'-' | b'0'..=b'9' => i = number(p, i)?,
                    b't' => i = literal(p, i, b"true")?,
                    b'f' => i = literal(p, i, b"false")?,
                    b'n' => i = literal(p, i, b"null")?,
                    _ => return None,
                }
                let kind = if p[start] == b'"' { Kind::String } else { Kind::Other };
                nodes.push(Node { kind, start, end: i, next: nodes.len() + 1 });
                state = State::After;
            }
            State::Key => {
                if p.get(i) != Some(&b'"') {
                    return None;
                }
                let start = i;
                i = string(p, i)?;
                nodes.push(Node { kind: Kind::String, start, end: i, next: nodes.len() + 1 });
                i = ws(p, i);
                if p.get(i) != Some(&b':') {
                    return None;
                }
                i = ws(p, i + 1);
                state = State::Value;
            }
            State::After => {
                i = ws(p, i);
                let Some(&top) = open.last() else {
                    return (i == p.len()).then_some(());
                };
                let object = nodes[top].kind == Kind::Object;
                match (*p.get(i)?, object) {
                    (b',', _) => {
                        i = ws(p, i + 1);
                        state = if object { State::Key } else { State::Value };
                    }
                    (b'}', true) | (b']', false) => {
                        close_container(nodes, &mut open, i);
                        i += 1;
                    }
                    _ => return None,
                }
            }
        }
    }
}

fn close_container(nodes: &mut [Node], open: &mut Vec<usize>, at: usize) {
    if let Some(top) = open.pop() {
        let next = nodes.len();
        nodes[top].end = at + 1;
        nodes[top].next = next;
    }
}

fn literal(p: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    p.get(i..i + word.len()).filter(|w| *w == word).map(|_| i + word.len())
}

/// The end of the string starting at `p[i]` (a quote): `None` on a control character, a bad
/// escape or a lone surrogate escape (what `serde_json` rejects).
fn string(p: &[u8], i: usize) -> Option<usize> {
    let mut i = i + 1;
    loop {
        let rest = p.get(i..)?;
        let k = rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        i += k;
        match p[i] {
            b'"' => return Some(i + 1),
            b'\\' => match *p.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' => {
                    let unit = hex4(p, i + 2)?;
                    i += 6;
                    match unit {
                        0xD800..=0xDBFF => {
                            if p.get(i..i + 2) != Some(b"\\u") {
                                return None;
                            }
                            if !(0xDC00..=0xDFFF).contains(&hex4(p, i + 2)?) {
                                return None;
                            }
                            i += 6;
                        }
                        0xDC00..=0xDFFF => return None,
                        _ => {}
                    }
                }
                _ => return None,
            },
            _ => return None,
        }
    }
}

fn hex4(p: &[u8], i: usize) -> Option<u32> {
    let digits = p.get(i..i + 4)?;
    digits.iter().try_fold(0u32, |acc, &d| Some(acc * 16 + char::from(d).to_digit(16)?))
}

/// The end of the number starting at `p[i]`: `None` for what is not a JSON number, and for an
/// exponent, `-0` or more integer digits than [`MAX_INT_DIGITS`] (the `Value` path may write
/// those longer than they are, or not read them).
fn number(p: &[u8], i: usize) -> Option<usize> {
    let digits = |from: usize| p.get(from..).map_or(0, |r| r.iter().take_while(|b| b.is_ascii_digit()).count());
    let negative = p[i] == b'-';
    let mut j = i + usize::from(negative);
    let int = digits(j);
    if int == 0 || (int > 1 && p[j] == b'0') {
        return None;
    }
    let zero = int == 1 && p[j] == b'0';
    j += int;
    let mut fraction = false;
    if p.get(j) == Some(&b'.') {
        let frac = digits(j + 1);
        if frac == 0 {
            return None;
        }
        fraction = true;
        j += 1 + frac;
    }
    let most = if fraction { MAX_INT_DIGITS_WITH_FRACTION } else { MAX_INT_DIGITS };
    if matches!(p.get(j), Some(b'e' | b'E')) || (negative && zero && !fraction) || int > most {
        return None;
    }
    Some(j)
}

/// The `Value` version: the payload parsed into a `serde_json::Value`, the frames rewritten
/// there and the whole written again (what the bytes path is checked against; it answers the
/// documents the bytes path leaves to it).
#[doc(hidden)]
pub fn rewrite_via_value(payload: &[u8], mapped: &[Mapped<'_>]) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(payload) else { return payload.to_vec() };
    for m in mapped {
        let (field, i) = match m.stack {
            Stack::Exception(i) => ("exception", i),
            Stack::Thread(i) => ("threads", i),
        };
        let list = match v.get_mut(field) {
            Some(serde_json::Value::Object(o)) => o.get_mut("values"),
            other => other,
        };
        let Some(frame) = list
            .and_then(|l| l.get_mut(i))
            .and_then(|e| e.get_mut("stacktrace"))
            .and_then(|s| s.get_mut("frames"))
            .and_then(|f| f.get_mut(m.frame))
            .and_then(|f| f.as_object_mut())
        else {
            continue;
        };
        let num = |k: &str| frame.get(k).and_then(serde_json::Value::as_u64);
        if num("lineno") != m.raw_lineno.map(u64::from) || num("colno") != m.raw_colno.map(u64::from) {
            continue;
        }
        let o = with_context(m);
        let set = |frame: &mut serde_json::Map<String, serde_json::Value>, k: &str, v: Option<serde_json::Value>| {
            match v {
                Some(v) => frame.insert(k.to_owned(), v),
                None => frame.remove(k),
            };
        };
        let text = |s: &Option<Cow<'_, str>>| s.as_deref().map(|s| serde_json::Value::from(s.to_owned()));
        set(frame, "raw_filename", text(&m.raw_filename));
        set(frame, "raw_abs_path", text(&m.raw_abs_path));
        set(frame, "raw_function", text(&m.raw_function));
        set(frame, "raw_lineno", m.raw_lineno.map(Into::into));
        set(frame, "raw_colno", m.raw_colno.map(Into::into));
        set(frame, "filename", Some(o.file.to_string().into()));
        set(frame, "abs_path", Some(o.file.to_string().into()));
        set(frame, "function", text(&o.function));
        set(frame, "lineno", Some(o.line.into()));
        set(frame, "colno", Some(o.col.into()));
        if o.context_line.is_some() {
            set(frame, "pre_context", Some(o.pre_context.clone().into()));
            set(frame, "context_line", o.context_line.clone().map(Into::into));
            set(frame, "post_context", Some(o.post_context.clone().into()));
        }
    }
    serde_json::to_vec(&v).unwrap_or_else(|_| payload.to_vec())
}

/// Panics unless [`super::rewrite_sample`] (the bytes path where it applies) and
/// [`rewrite_via_value`] agree on `payload`: the same JSON value, the bytes path's never
/// shorter (so the sample bound cuts neither or both), and the payload as it is from both when
/// it is not JSON. For the fuzz target `batch_builder` and the tests.
#[doc(hidden)]
pub fn assert_rewrite_paths_agree(payload: &[u8], mapped: &[Mapped<'_>]) {
    let bytes = rewrite(payload, mapped);
    let value = rewrite_via_value(payload, mapped);
    if serde_json::from_slice::<serde_json::Value>(payload).is_err() {
        assert_eq!(bytes, payload, "not JSON: the payload as it is");
        assert_eq!(value, payload, "not JSON: the payload as it is");
        return;
    }
    let parsed = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).ok();
    assert!(parsed(&bytes).is_some() && parsed(&bytes) == parsed(&value), "the paths' JSON values differ");
    assert!(bytes.len() >= value.len(), "the bytes path's sample is shorter than the Value path's");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// A JSON document as a tree, written out by [`render`] with escapes and whitespace.
    #[derive(Debug, Clone)]
    enum J {
        Null,
        Bool(bool),
        Int(i64),
        /// Integer part and fraction digits.
        Float(i32, u16),
        Str(String),
        Arr(Vec<J>),
        Obj(Vec<(String, J)>),
    }

    /// A tiny deterministic generator of the writing's choices.
    struct Choices(u64);

    impl Choices {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn ws(c: &mut Choices, out: &mut String) {
        out.push_str(["", "", " ", "\n\t", "\r\n  "][c.next(5) as usize]);
    }

    fn render_str(s: &str, c: &mut Choices, out: &mut String) {
        out.push('"');
        for ch in s.chars() {
            match ch {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' if c.next(2) == 0 => out.push_str("\\n"),
                '/' if c.next(2) == 0 => out.push_str("\\/"),
                ch if (ch as u32) < 0x20 || c.next(4) == 0 => {
                    let mut units = [0u16; 2];
                    for u in ch.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
                ch => out.push(ch),
            }
        }
        out.push('"');
    }

    fn render(j: &J, c: &mut Choices, out: &mut String) {
        ws(c, out);
        match j {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Int(i) => out.push_str(&i.to_string()),
            J::Float(i, f) => out.push_str(&format!("{i}.{f}")),
            J::Str(s) => render_str(s, c, out),
            J::Arr(items) => {
                out.push('[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    render(item, c, out);
                }
                ws(c, out);
                out.push(']');
            }
            J::Obj(members) => {
                out.push('{');
                for (n, (k, v)) in members.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    ws(c, out);
                    render_str(k, c, out);
                    ws(c, out);
                    out.push(':');
                    render(v, c, out);
                }
                ws(c, out);
                out.push('}');
            }
        }
        ws(c, out);
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,6}",
            "[a-zé😀\"\\\\/\n\t\u{1}\u{7f}\u{2028}]{0,6}",
            Just("https://shop.example/static/js/main.aaaa1111.js".to_owned()),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        let known = REWRITTEN.iter().chain(&["frames", "stacktrace", "values", "exception", "threads", "x"]);
        prop_oneof![3 => proptest::sample::select(known.map(|k| k.to_string()).collect::<Vec<_>>()), 1 => text()]
    }

    fn value() -> impl Strategy<Value = J> {
        let leaf = prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            any::<i64>().prop_map(J::Int),
            (0i64..4).prop_map(J::Int),
            (any::<i32>(), any::<u16>()).prop_map(|(i, f)| J::Float(i, f)),
            text().prop_map(J::Str),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
                proptest::collection::vec((key(), inner), 0..4).prop_map(J::Obj),
            ]
        })
    }

    /// A frame: a line and a column that often match the records', other members of any kind.
    fn frame() -> impl Strategy<Value = J> {
        let pos = prop_oneof![6 => Just(J::Int(1)), 2 => (0i64..3).prop_map(J::Int), 1 => value()];
        (pos.clone(), pos, proptest::collection::vec((key(), value()), 0..4)).prop_map(|(l, c, rest)| {
            let mut m = vec![("lineno".to_owned(), l), ("colno".to_owned(), c)];
            m.extend(rest);
            J::Obj(m)
        })
    }

    fn stack_list() -> impl Strategy<Value = J> {
        let exc = (proptest::collection::vec(frame(), 1..4), proptest::collection::vec((key(), value()), 0..2))
            .prop_map(|(frames, rest)| {
                let mut m = vec![("stacktrace".to_owned(), J::Obj(vec![("frames".to_owned(), J::Arr(frames))]))];
                m.extend(rest);
                J::Obj(m)
            });
        (proptest::collection::vec(exc, 1..3), any::<bool>()).prop_map(|(list, values)| {
            if values {
                J::Obj(vec![("values".to_owned(), J::Arr(list))])
            } else {
                J::Arr(list)
            }
        })
    }

    fn event() -> impl Strategy<Value = J> {
        (stack_list(), stack_list(), proptest::collection::vec((key(), value()), 0..4)).prop_map(|(e, t, rest)| {
            let mut m = vec![("exception".to_owned(), e), ("threads".to_owned(), t)];
            m.extend(rest);
            J::Obj(m)
        })
    }

    fn record() -> impl Strategy<Value = Mapped<'static>> {
        let opt_text = || proptest::option::of(text());
        let pos = || prop_oneof![6 => Just(Some(1)), 1 => proptest::option::of(0u32..3)];
        let context = proptest::option::of((
            proptest::collection::vec(text(), 0..3),
            text(),
            proptest::collection::vec(text(), 0..3),
        ));
        (
            (0usize..4, 0usize..3),
            (opt_text(), opt_text(), opt_text(), pos(), pos()),
            (text(), any::<u32>(), any::<u32>(), opt_text(), context),
        )
            .prop_map(|((stack, frame), (rf, ra, rfn, rl, rc), (file, line, col, function, context))| {
                let stack = if stack < 2 { Stack::Exception(stack) } else { Stack::Thread(stack - 2) };
                let (pre_context, context_line, post_context) = match context {
                    Some((pre, line, post)) => (pre, Some(line), post),
                    None => (Vec::new(), None, Vec::new()),
                };
                Mapped {
                    stack,
                    frame,
                    original: Original {
                        file: file.into(),
                        line,
                        col,
                        function: function.map(Into::into),
                        pre_context,
                        context_line,
                        post_context,
                    },
                    map: None,
                    raw_filename: rf.map(Into::into),
                    raw_abs_path: ra.map(Into::into),
                    raw_function: rfn.map(Into::into),
                    raw_lineno: rl,
                    raw_colno: rc,
                }
            })
    }

    /// The bytes path's answer is the `Value` path's as a JSON value, never shorter; on what
    /// is not JSON both give the payload back.
    fn check(payload: &[u8], mapped: &[Mapped<'_>]) -> Vec<u8> {
        assert_rewrite_paths_agree(payload, mapped);
        super::super::rewrite_sample(payload, mapped)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Events of any Unicode, escapes and whitespace, frames with members of every kind
        /// (the rewritten keys among them, repeated), records naming frames that are and are
        /// not there: the same JSON value as the `Value` path, taken by the bytes path.
        #[test]
        fn the_bytes_path_gives_the_value_paths_json(
            doc in event(),
            seed in any::<u64>(),
            mapped in proptest::collection::vec(record(), 0..6),
        ) {
            let mut text = String::new();
            render(&doc, &mut Choices(seed | 1), &mut text);
            check(text.as_bytes(), &mapped);
            let mut frames: Vec<_> = mapped.iter().map(|m| (m.stack, m.frame)).collect();
            frames.sort_by_key(|(s, f)| (format!("{s:?}"), *f));
            frames.dedup();
            if frames.len() == mapped.len() {
                prop_assert!(bytes_path(text.as_bytes(), &mapped).is_some(), "{text}");
            }
        }

        /// Any bytes, and the events' text cut anywhere: total, and equal where it is JSON.
        #[test]
        fn any_bytes_are_answered(doc in event(), seed in any::<u64>(), cut in any::<usize>(), junk in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut text = String::new();
            render(&doc, &mut Choices(seed | 1), &mut text);
            let m = Mapped {
                stack: Stack::Exception(0),
                frame: 0,
                original: Original { file: "src/é.ts".into(), line: 2, col: 3, ..Original::default() },
                map: None,
                raw_filename: None,
                raw_abs_path: None,
                raw_function: None,
                raw_lineno: Some(1),
                raw_colno: Some(1),
            };
            let bytes = text.as_bytes();
            check(&bytes[..cut % (bytes.len() + 1)], std::slice::from_ref(&m));
            check(&junk, std::slice::from_ref(&m));
        }
    }

    /// The frame's values are written byte for byte as `serde_json` writes them (what keeps the
    /// bytes path's sample never shorter than the `Value` path's).
    #[test]
    fn values_are_written_as_serde_json_writes_them() {
        use super::erased::Json;
        let texts =
            ["", "plain", "a\"b", "a\\b", "\u{1}\u{8}\u{c}\n\r\t\u{1f}", "\u{7f}é😀\u{2028}", "</script>", "x/y"];
        let written = |v: &dyn Json| {
            let mut out = Vec::new();
            v.write(&mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        for t in texts {
            assert_eq!(written(&t), serde_json::to_string(t).unwrap());
            assert_eq!(written(&Cow::Borrowed(t)), serde_json::to_string(t).unwrap());
            assert_eq!(written(&Some(t.to_owned())), serde_json::to_string(&Some(t)).unwrap());
            let lines = vec![t.to_owned(), "b".to_owned(), t.to_owned()];
            assert_eq!(written(&lines), serde_json::to_string(&lines).unwrap());
        }
        assert_eq!(written(&None::<String>), "null");
        assert_eq!(written(&Vec::<String>::new()), "[]");
        assert_eq!(written(&u32::MAX), serde_json::to_string(&u32::MAX).unwrap());
    }

    fn mapped(line: u32, col: u32) -> Mapped<'static> {
        Mapped {
            stack: Stack::Exception(0),
            frame: 0,
            original: Original {
                file: "src/app.ts".into(),
                line: 2,
                col: 3,
                function: Some("fail".into()),
                pre_context: vec!["a".into()],
                context_line: Some("b".into()),
                post_context: vec![],
            },
            map: None,
            raw_filename: Some("https://x/main.js".into()),
            raw_abs_path: None,
            raw_function: Some("a".into()),
            raw_lineno: Some(line),
            raw_colno: Some(col),
        }
    }

    fn frame_doc(frame: &str) -> String {
        format!(r#"{{"exception":{{"values":[{{"type":"E","stacktrace":{{"frames":[{frame}]}}}}]}},"x":"\u00e9"}}"#)
    }

    #[test]
    fn escaped_and_repeated_keys_are_read_as_serde_json_reads_them() {
        let m = mapped(1, 14);
        // The last `colno` counts (14), the escaped `lineno` is `lineno`; `function` repeated.
        let doc = frame_doc(
            r#"{"line\u006eo": 1, "colno": 9, "colno": 14, "function": "a", "function": "b", "y": [1, {"z": null}]}"#,
        );
        assert!(bytes_path(doc.as_bytes(), std::slice::from_ref(&m)).is_some());
        let out: Value = serde_json::from_slice(&check(doc.as_bytes(), std::slice::from_ref(&m))).unwrap();
        let f = &out["exception"]["values"][0]["stacktrace"]["frames"][0];
        assert_eq!(
            (f["function"].as_str(), f["lineno"].as_u64(), f["colno"].as_u64()),
            (Some("fail"), Some(2), Some(3))
        );
        assert_eq!((f["raw_function"].as_str(), f["context_line"].as_str()), (Some("a"), Some("b")));
        assert_eq!(f["y"], serde_json::json!([1, {"z": null}]));
        assert_eq!(out["x"], "é");
        // The first `colno` does not count.
        let doc = frame_doc(r#"{"lineno": 1, "colno": 14, "colno": 9}"#);
        let out: Value = serde_json::from_slice(&check(doc.as_bytes(), &[m])).unwrap();
        assert_eq!(out["exception"]["values"][0]["stacktrace"]["frames"][0]["raw_colno"], Value::Null);
    }

    #[test]
    fn what_the_bytes_path_leaves_to_the_value_path_is_answered_as_before() {
        let m = mapped(1, 14);
        let frame = r#"{"lineno":1,"colno":14}"#;
        for doc in [
            // A lone surrogate escape: serde_json does not read it, the payload stays.
            frame_doc(frame).replace(r"\u00e9", r"\ud800"),
            // Numbers serde_json may write longer.
            frame_doc(frame).replace(r#""\u00e9""#, "1e5"),
            frame_doc(frame).replace(r#""\u00e9""#, "-0"),
            frame_doc(frame).replace(r#""\u00e9""#, "18446744073709551616"),
            frame_doc(frame).replace(r#""\u00e9""#, "12345678901234567.5"),
            // Nesting past what the bytes path takes, and past serde_json's limit.
            frame_doc(frame).replace(r#""\u00e9""#, &format!("{}{}", "[".repeat(110), "]".repeat(110))),
            frame_doc(frame).replace(r#""\u00e9""#, &format!("{}{}", "[".repeat(200_000), "]".repeat(200_000))),
            // Not JSON.
            "[1,".to_owned(),
            frame_doc(frame) + "x",
            "\u{feff}".to_owned() + &frame_doc(frame),
        ] {
            assert!(bytes_path(doc.as_bytes(), std::slice::from_ref(&m)).is_none(), "{}", &doc[..doc.len().min(200)]);
            assert_eq!(
                super::super::rewrite_sample(doc.as_bytes(), std::slice::from_ref(&m)),
                rewrite_via_value(doc.as_bytes(), std::slice::from_ref(&m))
            );
            check(doc.as_bytes(), std::slice::from_ref(&m));
        }
        // Two records of one frame: the Value path's order decides.
        let doc = frame_doc(frame);
        let twice = [m.clone(), Mapped { raw_lineno: Some(2), raw_colno: Some(3), ..m.clone() }];
        assert!(bytes_path(doc.as_bytes(), &twice).is_none());
        check(doc.as_bytes(), &twice);
        // A rewrite past the sample bound.
        let big = frame_doc(frame).replace(r#""\u00e9""#, &format!("\"{}\"", "é".repeat(MAX_SAMPLE_BYTES / 2)));
        assert!(bytes_path(big.as_bytes(), std::slice::from_ref(&m)).is_none());
        check(big.as_bytes(), &[m]);
    }
}
