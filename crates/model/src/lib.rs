//! tracefold's event model: the error event as it travels on Kafka, its validation, and the
//! partial aggregates the grouper emits.
#![warn(missing_docs)]

pub mod aggregate;
pub mod event;
pub mod sentry;
pub mod time;
pub mod validate;

pub use aggregate::{AggregateRecord, BatchRef, UserSet};
pub use event::Event;
pub use validate::{validate, Level, Validated, ValidationError};

/// Why bytes could not be read as an event.
#[derive(Debug, thiserror::Error)]
#[error("malformed event json: {0}")]
pub struct ParseError(pub String);

/// Parses one event with simd-json. The buffer is modified in place (strings are unescaped
/// into it) and the event borrows from it.
///
/// # Errors
/// [`ParseError`] when the bytes are not a JSON object of the event's shape.
pub fn parse_event_slice(buf: &mut [u8]) -> Result<Event<'_>, ParseError> {
    check_object(buf)?;
    simd_json::serde::from_slice::<Event<'_>>(buf).map_err(|e| ParseError(e.to_string()))
}

/// Parses one event with serde_json (used where the input is not ours to modify).
///
/// # Errors
/// [`ParseError`] when the text is not a JSON object of the event's shape.
pub fn parse_event_str(s: &str) -> Result<Event<'_>, ParseError> {
    check_object(s.as_bytes())?;
    serde_json::from_str::<Event<'_>>(s).map_err(|e| ParseError(e.to_string()))
}

/// An event is a JSON object; serde would also take an array for a struct.
fn check_object(buf: &[u8]) -> Result<(), ParseError> {
    match buf.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        Some(_) => Err(ParseError("an event must be a JSON object".into())),
        None => Err(ParseError("empty input".into())),
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
    fn malformed_json_is_an_error_not_a_panic() {
        for bad in ["", "{", "[]", "null", r#"{"exception": 5}"#, r#"{"timestamp": "yesterday"}"#, "\u{0}"] {
            let mut buf = bad.as_bytes().to_vec();
            assert!(parse_event_slice(&mut buf).is_err(), "{bad:?}");
            assert!(parse_event_str(bad).is_err(), "{bad:?}");
        }
    }
}
