//! Checks on event JSON that run before anything recursive sees the bytes:
//!
//! - nesting deeper than [`MAX_DEPTH`] is refused, so that no deserializer or visitor
//!   recurses over attacker-chosen depth. On the hot path ([`crate::parse_event_slice`]) the
//!   depth is read off simd-json's tape ([`tape_depth`]): simd-json builds the tape with an
//!   explicit stack (no recursion; `stage2.rs` in simd-json 0.15). The tape reader that builds
//!   the event (`tape.rs`) recurses over the event's fixed shape only and checks the depth of
//!   every value it skips; when it leaves the event to serde, the whole tape is checked
//!   before serde's recursive deserializer sees it. Elsewhere (serde_json paths) [`prescan`]
//!   and [`check`] scan the text in one pass;
//! - lone UTF-16 surrogate escapes (`"\ud83d"` without its low half, which `JSON.stringify`
//!   emits for a string cut inside an emoji) are replaced by `\ufffd` in place. Both escapes
//!   are six bytes, so the buffer keeps its length and every offset stays valid.
//!
//! Every function here is O(n) and allocates nothing.

/// Deepest nesting of objects and arrays accepted in an event.
pub const MAX_DEPTH: usize = 64;

/// What the pre-pass found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prescan {
    /// Deepest nesting seen.
    pub depth: usize,
    /// Lone surrogate escapes replaced by `\ufffd`.
    pub surrogates_replaced: usize,
}

/// Why the pre-pass refused a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrescanError {
    /// Objects and arrays nested deeper than the limit.
    #[error("nested deeper than {0} levels of objects and arrays")]
    TooDeep(usize),
}

/// Checks the nesting depth of `buf` and repairs lone surrogate escapes in place.
///
/// Malformed JSON is left for the parser to refuse with its own message: this pass only
/// looks at brackets outside strings and at escapes inside them.
///
/// # Errors
/// [`PrescanError::TooDeep`] when objects and arrays nest deeper than `max_depth`.
pub fn prescan(buf: &mut [u8], max_depth: usize) -> Result<Prescan, PrescanError> {
    scan(&mut Repair(buf), max_depth)
}

/// The same checks on a buffer that cannot be changed: counts lone surrogates without
/// replacing them (a strict parser will refuse them).
///
/// # Errors
/// [`PrescanError::TooDeep`] when objects and arrays nest deeper than `max_depth`.
pub fn check(buf: &[u8], max_depth: usize) -> Result<Prescan, PrescanError> {
    scan(&mut ReadOnly(buf), max_depth)
}

/// A buffer the scan reads, and may repair.
trait Buf {
    fn bytes(&self) -> &[u8];
    /// Replaces the four hex digits at `at..at + 4` by `fffd`.
    fn replace_unit(&mut self, at: usize);
}

struct Repair<'a>(&'a mut [u8]);
struct ReadOnly<'a>(&'a [u8]);

impl Buf for Repair<'_> {
    fn bytes(&self) -> &[u8] {
        self.0
    }
    fn replace_unit(&mut self, at: usize) {
        self.0[at..at + 4].copy_from_slice(b"fffd");
    }
}

impl Buf for ReadOnly<'_> {
    fn bytes(&self) -> &[u8] {
        self.0
    }
    fn replace_unit(&mut self, _: usize) {}
}

fn scan<B: Buf>(buf: &mut B, max_depth: usize) -> Result<Prescan, PrescanError> {
    let mut out = Prescan::default();
    let mut depth = 0usize;
    let mut i = 0;
    let len = buf.bytes().len();
    while i < len {
        match buf.bytes()[i] {
            b'"' => i = skip_string(buf, i + 1, &mut out.surrogates_replaced),
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(PrescanError::TooDeep(max_depth));
                }
                out.depth = out.depth.max(depth);
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    Ok(out)
}

/// Skips a string body starting at `i` (just after the opening quote); returns the index just
/// past the closing quote (or the end of the buffer).
fn skip_string<B: Buf>(buf: &mut B, mut i: usize, replaced: &mut usize) -> usize {
    let len = buf.bytes().len();
    loop {
        let Some(k) = buf.bytes().get(i..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) else {
            return len;
        };
        i += k;
        if buf.bytes()[i] == b'"' {
            return i + 1;
        }
        // A backslash: look at what it escapes.
        match buf.bytes().get(i + 1) {
            None => return len,
            Some(b'u') => i = unicode_escape(buf, i, replaced),
            Some(_) => i += 2,
        }
    }
}

fn hex4(b: &[u8]) -> Option<u16> {
    let mut v = 0u16;
    for &c in b.get(..4)? {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | u16::from(d);
    }
    Some(v)
}

/// `buf[i..]` starts with `\u`: replaces a lone surrogate's four hex digits by `fffd`; returns
/// the index after the escape (after both halves of a valid pair).
fn unicode_escape<B: Buf>(buf: &mut B, i: usize, replaced: &mut usize) -> usize {
    let b = buf.bytes();
    let Some(unit) = b.get(i + 2..).and_then(hex4) else {
        // Malformed escape: the parser refuses it with its own message.
        return i + 2;
    };
    let lone = match unit {
        0xD800..=0xDBFF => {
            let paired = b.get(i + 6) == Some(&b'\\')
                && b.get(i + 7) == Some(&b'u')
                && b.get(i + 8..).and_then(hex4).is_some_and(|lo| (0xDC00..=0xDFFF).contains(&lo));
            if paired {
                return i + 12;
            }
            true
        }
        0xDC00..=0xDFFF => true,
        _ => false,
    };
    if lone {
        buf.replace_unit(i + 2);
        *replaced += 1;
    }
    i + 6
}

/// Replaces lone surrogate escapes by `\ufffd` in place; returns how many. Fast on the common
/// case: it only looks at backslashes (one `memchr` pass when there are none). It does not
/// track strings: a backslash outside a string makes the document invalid anyway.
pub fn repair_surrogates(buf: &mut [u8]) -> usize {
    let mut replaced = 0;
    let mut i = 0;
    while let Some(k) = buf.get(i..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        i += k;
        match buf.get(i + 1) {
            None => break,
            Some(b'u') => i = unicode_escape(&mut Repair(buf), i, &mut replaced),
            Some(_) => i += 2,
        }
    }
    replaced
}

/// The nesting depth of a simd-json tape, or [`PrescanError::TooDeep`] past `max_depth`.
/// Iterative: one pass over the nodes with a stack of at most `max_depth` entries.
///
/// # Errors
/// [`PrescanError::TooDeep`] when containers nest deeper than `max_depth`.
pub fn tape_depth(nodes: &[simd_json::Node<'_>], max_depth: usize) -> Result<usize, PrescanError> {
    const STACK: usize = 256;
    let max_depth = max_depth.min(STACK);
    // Where each open container's nodes end (exclusive), innermost last.
    let mut ends = [0usize; STACK];
    let (mut sp, mut deepest) = (0usize, 0usize);
    for (i, n) in nodes.iter().enumerate() {
        while sp > 0 && i >= ends[sp - 1] {
            sp -= 1;
        }
        if let simd_json::Node::Object { count, .. } | simd_json::Node::Array { count, .. } = n {
            if sp == max_depth {
                return Err(PrescanError::TooDeep(max_depth));
            }
            ends[sp] = i + 1 + count;
            sp += 1;
            deepest = deepest.max(sp);
        }
    }
    Ok(deepest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(s: &str) -> (Result<Prescan, PrescanError>, String) {
        let mut b = s.as_bytes().to_vec();
        let r = prescan(&mut b, MAX_DEPTH);
        (r, String::from_utf8(b).unwrap())
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let (r, out) = run(r#"{"message":"cut \ud83d","b":"\udc00 x","ok":"\ud83d\ude00"}"#);
        assert_eq!(r.unwrap().surrogates_replaced, 2);
        assert_eq!(out, r#"{"message":"cut \ufffd","b":"\ufffd x","ok":"\ud83d\ude00"}"#);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["message"], "cut \u{fffd}");
        assert_eq!(v["ok"], "\u{1f600}");
        // Two high halves in a row: both lone.
        let (r, out) = run(r#"["\uD83D\uD83D\uDE00"]"#);
        assert_eq!(r.unwrap().surrogates_replaced, 1);
        assert_eq!(out, r#"["\ufffd\uD83D\uDE00"]"#);
        // An escaped backslash followed by text that looks like an escape is left alone.
        let (r, out) = run(r#"["\\ud83d"]"#);
        assert_eq!(r.unwrap().surrogates_replaced, 0);
        assert_eq!(out, r#"["\\ud83d"]"#);
    }

    #[test]
    fn depth_is_counted_outside_strings_only() {
        assert_eq!(run(r#"{"a":[{"b":"[[[[{{{{"}]}"#).0.unwrap().depth, 3);
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(run(&deep).0.unwrap().depth, MAX_DEPTH);
        let deeper = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(run(&deeper).0, Err(PrescanError::TooDeep(MAX_DEPTH)));
        // A million unclosed brackets: refused after 65, no recursion anywhere.
        assert!(run(&"{\"a\":[".repeat(1_000_000)).0.is_err());
    }

    #[test]
    fn tape_depth_agrees_with_the_text_scan() {
        let docs = [
            r#"{"a":[{"b":"[[[[{{{{"}],"c":{"d":[1,[2,[3]]]},"e":[]}"#.to_owned(),
            r#"[[],[[]],{},{"x":{}}]"#.to_owned(),
            "1".to_owned(),
            format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH)),
        ];
        for d in docs {
            let want = run(&d).0.unwrap().depth;
            let mut b = d.clone().into_bytes();
            let tape = simd_json::to_tape(&mut b).unwrap();
            assert_eq!(tape_depth(&tape.0, MAX_DEPTH), Ok(want), "{d}");
        }
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let mut b = deep.into_bytes();
        let tape = simd_json::to_tape(&mut b).unwrap();
        assert_eq!(tape_depth(&tape.0, MAX_DEPTH), Err(PrescanError::TooDeep(MAX_DEPTH)));
    }

    #[test]
    fn fast_repair_agrees_with_the_scan() {
        for s in [
            r#"{"message":"cut \ud83d","b":"\udc00 x","ok":"\ud83d\ude00","e":"\\ud83d","n":"a\nb\"c"}"#,
            r#"["\uD83D\uD83D\uDE00"]"#,
            "\"\\",
        ] {
            let (mut a, mut b) = (s.as_bytes().to_vec(), s.as_bytes().to_vec());
            let n = repair_surrogates(&mut a);
            let r = prescan(&mut b, MAX_DEPTH).unwrap();
            assert_eq!((n, &a), (r.surrogates_replaced, &b), "{s}");
        }
    }

    #[test]
    fn truncated_input_does_not_panic() {
        for s in ["\"", "\"\\", "\"\\u", "\"\\ud8", "\"\\ud83d\\", "\"\\ud83d\\u", "\"\\ud83d\\udc", "{\"a\":\"\\udc00"]
        {
            let _ = run(s);
            let _ = repair_surrogates(&mut s.as_bytes().to_vec());
        }
    }

    proptest! {
        /// Never panics, keeps the length, and after it serde_json reads every string that has
        /// only surrogate problems.
        #[test]
        fn total_and_length_preserving(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut b = data.clone();
            let _ = prescan(&mut b, MAX_DEPTH);
            prop_assert_eq!(b.len(), data.len());
            let mut c = data.clone();
            let _ = repair_surrogates(&mut c);
            prop_assert_eq!(c.len(), data.len());
        }

        #[test]
        fn any_utf16_cut_parses(s in "\\PC{0,40}", cut in 0usize..80) {
            // JSON.stringify of a string cut at any UTF-16 unit.
            let units: Vec<u16> = s.encode_utf16().collect();
            let cut = cut.min(units.len());
            let mut json = String::from("{\"message\":\"");
            for u in &units[..cut] {
                json.push_str(&format!("\\u{u:04x}"));
            }
            json.push_str("\"}");
            let mut b = json.into_bytes();
            prescan(&mut b, MAX_DEPTH).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            let want = String::from_utf16_lossy(&units[..cut]);
            prop_assert_eq!(v["message"].as_str().unwrap(), want.as_str());
        }
    }
}
