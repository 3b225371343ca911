//! tracefold's event model: the error event as it travels on Kafka, its validation, and the
//! partial aggregates the grouper emits.
#![warn(missing_docs)]

pub mod aggregate;
pub mod breakdown;
pub mod event;
pub mod json;
pub mod outcome;
pub mod reject;
pub mod sample;
pub mod sentry;
mod tape;
pub mod text;
pub mod time;
pub mod validate;

pub use aggregate::{AggregateRecord, BatchRef, UserSet};
pub use breakdown::Breakdown;
pub use event::Event;
pub use outcome::{Outcome, OutcomeRecord};
pub use reject::{Reason, Rejection};
pub use validate::{validate, Level, Validated, ValidationError};

/// Why bytes could not be read as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Objects and arrays nested deeper than [`json::MAX_DEPTH`].
    #[error("event nested deeper than {0} levels of objects and arrays")]
    TooDeep(usize),
    /// Not a JSON object of the event's shape.
    #[error("malformed event json: {0}")]
    Malformed(String),
}

impl ParseError {
    /// The rejection reason for the DLQ and the HTTP answer.
    pub fn reason(&self) -> Reason {
        match self {
            Self::TooDeep(_) => Reason::TooDeep,
            Self::Malformed(_) => Reason::Malformed,
        }
    }
}

impl From<json::PrescanError> for ParseError {
    fn from(e: json::PrescanError) -> Self {
        match e {
            json::PrescanError::TooDeep(n) => Self::TooDeep(n),
        }
    }
}

/// Parses one event with simd-json. Lone surrogate escapes are repaired in place
/// ([`json::repair_surrogates`]), the event is read off simd-json's tape by a reader that
/// follows the event's shape (serde deserializes the tape where that reader leaves the answer
/// to it), the nesting depth is checked on the tape ([`json::tape_depth`]) before anything
/// recurses over it, and the event borrows from the buffer (strings are unescaped into it).
///
/// # Errors
/// [`ParseError`] when the bytes are nested too deep or are not a JSON object of the event's
/// shape.
pub fn parse_event_slice(buf: &mut [u8]) -> Result<Event<'_>, ParseError> {
    parse_event_slice_with(buf, &mut simd_json::Buffers::default())
}

/// [`parse_event_slice`] with simd-json's scratch buffers kept by the caller (no allocation
/// for them per event).
///
/// # Errors
/// As [`parse_event_slice`].
pub fn parse_event_slice_with<'a>(
    buf: &'a mut [u8],
    buffers: &mut simd_json::Buffers,
) -> Result<Event<'a>, ParseError> {
    let mut tape = simd_json::Tape(Vec::new());
    let mut event = Event::default();
    parse_into(buf, true, buffers, &mut tape, &mut tape::Spare::default(), &mut event)?;
    Ok(event)
}

fn malformed(e: simd_json::Error) -> ParseError {
    ParseError::Malformed(e.to_string())
}

/// The parse itself: the tape is built into `tape` (its allocation reused) and the event read
/// off it by [`tape::event`]; when that reader leaves the decision to serde, the whole tape's
/// depth is checked and serde deserializes it (consuming the tape: `tape` is left empty).
/// The reader fills its lists into the allocations in `spare`, and the event into `out`
/// (empty on entry; unspecified after an error).
fn parse_into<'a>(
    buf: &'a mut [u8],
    repair: bool,
    buffers: &mut simd_json::Buffers,
    tape: &mut simd_json::Tape<'a>,
    spare: &mut tape::Spare,
    out: &mut Event<'a>,
) -> Result<(), ParseError> {
    check_object(buf)?;
    if repair {
        json::repair_surrogates(buf);
    }
    let built;
    (*tape, built) = build_tape(buf, buffers, std::mem::replace(tape, simd_json::Tape(Vec::new())));
    built.map_err(malformed)?;
    // The tape reader checks the depth of what it skips (the rest has the event's shape).
    if tape::event(&tape.0, spare, out).is_some() {
        return Ok(());
    }
    json::tape_depth(&tape.0, json::MAX_DEPTH)?;
    *out = std::mem::replace(tape, simd_json::Tape(Vec::new())).deserialize::<Event<'_>>().map_err(malformed)?;
    Ok(())
}

/// simd-json's tape of `buf`, out of line: inlined into [`parse_into`], simd-json's second
/// stage compiled to about 700 to 1,300 instructions an event more than the same call on its
/// own (the bare parse's), and moved by that much with unrelated changes to this crate
/// (benches/README.md, "The tape built out of line"). The tape is moved in and out (three
/// words), not borrowed: a local tape, as the bare parse has, compiles the second stage to
/// about 780 instructions an event fewer than a tape behind a `&mut` (benches/README.md,
/// "The tape moved into its builder"); most likely its length and pointer stay in registers
/// across the stage's calls, which the machine code was not read to confirm.
#[inline(never)]
fn build_tape<'a>(
    buf: &'a mut [u8],
    buffers: &mut simd_json::Buffers,
    mut tape: simd_json::Tape<'a>,
) -> (simd_json::Tape<'a>, Result<(), simd_json::Error>) {
    let built = simd_json::fill_tape(buf, buffers, &mut tape);
    (tape, built)
}

/// A reusable event parser: keeps simd-json's scratch buffers and tape across events, so that
/// parsing one allocates nothing for them, and the lists of the events given back with
/// [`EventParser::recycle`]. The hot path's parser (the grouper's batch builder); it answers
/// exactly as [`parse_event_slice`].
#[derive(Default)]
pub struct EventParser {
    buffers: simd_json::Buffers,
    /// The tape's allocation, empty between events.
    tape: Option<simd_json::Tape<'static>>,
    /// Allocations of recycled events' lists (exceptions, frames, tags, headers), empty.
    spare: tape::Spare,
}

impl std::fmt::Debug for EventParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventParser").finish_non_exhaustive()
    }
}

impl EventParser {
    /// [`parse_event_slice`], with this parser's buffers.
    ///
    /// # Errors
    /// As [`parse_event_slice`].
    pub fn parse<'a>(&mut self, buf: &'a mut [u8]) -> Result<Event<'a>, ParseError> {
        let mut event = Event::default();
        self.parse_to(buf, &mut event)?;
        Ok(event)
    }

    /// [`EventParser::parse`] into `out`, which must be empty ([`Event::default`]): the hot
    /// path's form, without moving the event (about 600 bytes) through return values.
    ///
    /// # Errors
    /// As [`parse_event_slice`]; `out` then holds an unspecified part of the event.
    pub fn parse_to<'a>(&mut self, buf: &'a mut [u8], out: &mut Event<'a>) -> Result<(), ParseError> {
        self.parse_to_with(buf, true, out)
    }

    /// [`EventParser::parse`] of a `buf` whose lone surrogate escapes the caller has repaired
    /// already ([`json::repair_surrogates`]): that pass over the bytes is not made again.
    /// (Given a `buf` that still has one, the answer is an error, as simd-json refuses it.)
    ///
    /// # Errors
    /// As [`parse_event_slice`].
    pub fn parse_repaired<'a>(&mut self, buf: &'a mut [u8]) -> Result<Event<'a>, ParseError> {
        let mut event = Event::default();
        self.parse_to_with(buf, false, &mut event)?;
        Ok(event)
    }

    fn parse_to_with<'a>(&mut self, buf: &'a mut [u8], repair: bool, out: &mut Event<'a>) -> Result<(), ParseError> {
        let mut tape = self.tape.take().map_or_else(|| simd_json::Tape(Vec::new()), simd_json::Tape::reset);
        let answer = parse_into(buf, repair, &mut self.buffers, &mut tape, &mut self.spare, out);
        // The event borrows from `buf`, not from the tape: the tape's nodes can go.
        self.tape = Some(tape.reset());
        answer
    }

    /// Gives back an event this parser (or any) produced, once done with it: the allocations
    /// of its lists (exceptions, frames, tags, headers) are kept, empty, for the next events'
    /// lists, within a bound (a few lists of at most 256 elements each). Dropping the event
    /// instead is always correct; this only saves the allocations.
    pub fn recycle(&mut self, mut event: Event<'_>) {
        self.recycle_lists(&mut event);
    }

    /// [`EventParser::recycle`] of an event the caller goes on owning (and drops where it
    /// lies): its lists are taken out, left empty, and kept as `recycle` keeps them. The hot
    /// path's form, without moving the event (about 600 bytes) into the call.
    pub fn recycle_lists(&mut self, event: &mut Event<'_>) {
        self.spare.keep(event);
    }
}

/// Parses one event with serde_json (used where the input is not ours to modify). The depth
/// is checked first; lone surrogate escapes are refused (repair them with [`json::prescan`]
/// on a copy, or use [`parse_event_slice`]).
///
/// # Errors
/// [`ParseError`] when the text is nested too deep or is not a JSON object of the event's shape.
pub fn parse_event_str(s: &str) -> Result<Event<'_>, ParseError> {
    check_object(s.as_bytes())?;
    json::check(s.as_bytes(), json::MAX_DEPTH)?;
    serde_json::from_str::<Event<'_>>(s).map_err(|e| ParseError::Malformed(e.to_string()))
}

/// An event is a JSON object; serde would also take an array for a struct.
fn check_object(buf: &[u8]) -> Result<(), ParseError> {
    match buf.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        Some(_) => Err(ParseError::Malformed("an event must be a JSON object".into())),
        None => Err(ParseError::Malformed("empty input".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    const FULL: &str = r#"{
        "event_id": "0123456789abcdef0123456789abcdef", "project": "web", "timestamp": "2026-11-26T05:39:00Z",
        "platform": "javascript", "level": "error", "release": "web@1.2.3", "environment": "production",
        "exception": [{"type": "TypeError", "value": "Cannot read properties of undefined (reading \"id\")",
            "mechanism": {"type": "onerror", "handled": false},
            "stacktrace": {"frames": [
                {"function": "dispatch", "filename": "https://cdn.example.com/static/js/vendor.3f9a2c1b.js", "lineno": 1, "colno": 4242, "in_app": false},
                {"function": "renderCart", "filename": "https://cdn.example.com/static/js/main.8d1e2f3a.js", "lineno": 12, "colno": 99, "in_app": true}
            ]}}],
        "user": {"id": 42, "email": "a@example.com"},
        "tags": {"browser": "Chrome 131", "route": "/cart"},
        "request": {"url": "https://shop.example.com/cart?x=1", "method": "GET"},
        "contexts": {"browser": {"name": "Chrome", "version": "131.0"}, "os": {"name": "Windows", "version": "11"},
                     "device": {"family": "Desktop"}},
        "fingerprint": ["{{ default }}", "cart"],
        "extra_field_we_do_not_know": {"nested": [1, 2, 3]}
    }"#;

    #[test]
    fn simd_json_borrows_strings_even_with_escapes() {
        let mut buf = FULL.as_bytes().to_vec();
        let ev = parse_event_slice(&mut buf).unwrap();
        let exc = &ev.exception[0];
        assert!(matches!(exc.value, Some(Cow::Borrowed(_))), "escaped string should borrow from the buffer");
        assert_eq!(exc.value.as_deref(), Some("Cannot read properties of undefined (reading \"id\")"));
        assert!(matches!(ev.project, Some(Cow::Borrowed("web"))));
        assert_eq!(ev.user.as_ref().unwrap().id.as_deref(), Some("42"));
        assert_eq!(ev.tags.len(), 2);
        assert_eq!(ev.fingerprint.len(), 2);
        assert_eq!(ev.timestamp, Some(1_795_671_540_000));
        let frames = &exc.stacktrace.as_ref().unwrap().frames;
        assert_eq!(frames[1].function.as_deref(), Some("renderCart"));
        assert_eq!(frames[1].in_app, Some(true));
        assert_eq!(ev.contexts.as_ref().unwrap().browser.as_ref().unwrap().name.as_deref(), Some("Chrome"));
    }

    #[test]
    fn serde_json_and_simd_json_agree() {
        let mut buf = FULL.as_bytes().to_vec();
        let a = parse_event_slice(&mut buf).unwrap();
        let b = parse_event_str(FULL).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn lone_surrogates_and_depth() {
        let mut buf = br#"{"message":"cut \ud83d","exception":[{"type":"E\udc00"}]}"#.to_vec();
        let ev = parse_event_slice(&mut buf).unwrap();
        assert_eq!(ev.message.as_deref(), Some("cut \u{fffd}"));
        assert_eq!(ev.exception[0].ty.as_deref(), Some("E\u{fffd}"));
        let deep = format!("{{\"message\":\"m\",\"extra\":{}1{}}}", "[".repeat(64), "]".repeat(64));
        let mut buf = deep.clone().into_bytes();
        assert_eq!(parse_event_slice(&mut buf).unwrap_err(), ParseError::TooDeep(json::MAX_DEPTH));
        assert_eq!(parse_event_str(&deep).unwrap_err().reason(), Reason::TooDeep);
        let ok = format!("{{\"message\":\"m\",\"extra\":{}1{}}}", "[".repeat(63), "]".repeat(63));
        assert!(parse_event_slice(&mut ok.clone().into_bytes()).is_ok());
        assert!(parse_event_str(&ok).is_ok());
    }

    #[test]
    fn null_reads_as_absent_everywhere() {
        let json = r#"{"event_id":null,"project":null,"timestamp":null,"platform":null,"level":null,
            "release":null,"environment":null,"logger":null,"server_name":null,"message":"m",
            "logentry":null,"fingerprint":null,"user":{"id":null,"email":null,"username":null,"ip_address":null},
            "tags":null,"request":{"url":null,"method":null,"query_string":null,"headers":null},
            "contexts":{"browser":null,"os":{"name":null,"version":null},"runtime":null,"device":null},"sdk":null,
            "exception":[{"type":"E","value":null,"module":null,"mechanism":{"type":null,"handled":null,"synthetic":null},
              "stacktrace":{"frames":[{"function":null,"module":null,"filename":null,"abs_path":null,"package":null,
                "lineno":null,"colno":null,"in_app":null,"instruction_addr":null}]}},
              {"type":"F","stacktrace":{"frames":null}},{"type":"G","stacktrace":null,"mechanism":null}]}"#;
        let mut buf = json.as_bytes().to_vec();
        let a = parse_event_slice(&mut buf).unwrap();
        let b = parse_event_str(json).unwrap();
        assert_eq!(a, b);
        assert_eq!((a.project, a.event_id, a.timestamp, a.tags.len()), (None, None, None, 0));
        assert_eq!(a.exception.len(), 3);
        assert_eq!(a.exception[0].stacktrace.as_ref().unwrap().frames[0], event::Frame::default());
        let none = parse_event_str(r#"{"message":"m","exception":null}"#).unwrap();
        assert!(none.exception.is_empty());
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        for bad in ["", "{", "[]", "null", r#"{"exception": 5}"#, r#"{"timestamp": "yesterday"}"#, "\u{0}"] {
            let mut buf = bad.as_bytes().to_vec();
            assert!(parse_event_slice(&mut buf).is_err(), "{bad:?}");
            assert!(parse_event_str(bad).is_err(), "{bad:?}");
        }
    }
}
