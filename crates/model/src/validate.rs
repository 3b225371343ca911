//! Validation of events against the model's rules; the JSON Schema in `schemas/` says the same.

use crate::event::Event;
use crate::time::Millis;
use std::fmt;

/// Longest accepted project slug.
pub const MAX_PROJECT_LEN: usize = 64;
/// Longest accepted release string.
pub const MAX_RELEASE_LEN: usize = 200;
/// Longest accepted environment name.
pub const MAX_ENVIRONMENT_LEN: usize = 64;
/// Most exceptions in one chain.
pub const MAX_EXCEPTIONS: usize = 32;
/// Events dated further in the future than this (relative to when they were received) are
/// clamped to the receive time.
pub const MAX_FUTURE_MS: Millis = 24 * 3600 * 1000;
/// Events dated further in the past than this are clamped to the receive time.
pub const MAX_PAST_MS: Millis = 30 * 24 * 3600 * 1000;

/// Why an event was rejected. `field` is a JSON path into the event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// JSON path of the offending field, e.g. `exception[0].type`.
    pub field: String,
    /// What is wrong with it, lower-case.
    pub reason: String,
}

impl ValidationError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// Severity of an event, normalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Level {
    /// `debug`
    Debug,
    /// `info` (also `log`)
    Info,
    /// `warning` (also `warn`)
    Warning,
    /// `error`, the default
    #[default]
    Error,
    /// `fatal` (also `critical`)
    Fatal,
}

impl Level {
    /// Parses a level name, accepting the common aliases.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "debug" => Self::Debug,
            "info" | "log" => Self::Info,
            "warning" | "warn" => Self::Warning,
            "error" => Self::Error,
            "fatal" | "critical" => Self::Fatal,
            _ => return None,
        })
    }

    /// The canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
            Self::Fatal => "fatal",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What validation derives from a valid event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validated {
    /// The event time used for bucketing, clamped to a window around `received_ms`.
    pub timestamp_ms: Millis,
    /// True when the event's own timestamp was missing or out of the window.
    pub timestamp_clamped: bool,
    /// The normalized level.
    pub level: Level,
}

/// Checks `event` and derives its bucketing time relative to `received_ms` (the producer's
/// receive time, or the Kafka message timestamp in the grouper, so that replays decide alike).
///
/// # Errors
/// The first rule the event breaks, with the path of the field.
pub fn validate(event: &Event<'_>, received_ms: Millis) -> Result<Validated, ValidationError> {
    match event.event_id.as_deref() {
        None => return Err(ValidationError::new("event_id", "missing")),
        Some(id) if !is_event_id(id) => {
            return Err(ValidationError::new("event_id", "must be 32 hex digits or a UUID"))
        }
        _ => {}
    }
    match event.project.as_deref() {
        None => return Err(ValidationError::new("project", "missing")),
        Some(p) if !is_project_slug(p) => {
            return Err(ValidationError::new("project", "must match [a-z0-9][a-z0-9_-]* and be at most 64 characters"))
        }
        _ => {}
    }
    let level = match event.level.as_deref() {
        None => Level::Error,
        Some(l) => Level::parse(l)
            .ok_or_else(|| ValidationError::new("level", "must be one of fatal, error, warning, info, debug"))?,
    };
    check_len("release", event.release.as_deref(), MAX_RELEASE_LEN)?;
    check_len("environment", event.environment.as_deref(), MAX_ENVIRONMENT_LEN)?;
    if let Some(env) = event.environment.as_deref() {
        // Bytes, not chars: the four are ASCII, which no multi-byte character's bytes are.
        if env.bytes().any(|c| matches!(c, b'/' | b'\n' | b'\r' | b'\t')) {
            return Err(ValidationError::new("environment", "must not contain '/' or control characters"));
        }
    }
    if event.exception.len() > MAX_EXCEPTIONS {
        return Err(ValidationError::new("exception", format!("more than {MAX_EXCEPTIONS} exceptions in the chain")));
    }
    let has_message = event.message.as_deref().is_some_and(|m| !m.trim().is_empty())
        || event
            .logentry
            .as_ref()
            .is_some_and(|l| l.message.as_deref().or(l.formatted.as_deref()).is_some_and(|m| !m.trim().is_empty()));
    if event.exception.is_empty() && !has_message {
        return Err(ValidationError::new("exception", "an event needs an exception or a message"));
    }
    for (i, exc) in event.exception.iter().enumerate() {
        let has_type = exc.ty.as_deref().is_some_and(|t| !t.is_empty());
        let has_value = exc.value.as_deref().is_some_and(|v| !v.is_empty());
        if !has_type && !has_value {
            return Err(ValidationError::new(format!("exception[{i}]"), "needs a type or a value"));
        }
    }
    let (timestamp_ms, timestamp_clamped) = match event.timestamp {
        Some(ts) if ts <= received_ms + MAX_FUTURE_MS && ts >= received_ms - MAX_PAST_MS => (ts, false),
        _ => (received_ms, true),
    };
    Ok(Validated { timestamp_ms, timestamp_clamped, level })
}

/// Inlined (a comparison on every event), its error built out of line.
#[inline(always)]
fn check_len(field: &'static str, v: Option<&str>, max: usize) -> Result<(), ValidationError> {
    match v {
        Some(s) if s.len() > max => Err(too_long(field, max)),
        _ => Ok(()),
    }
}

#[cold]
#[inline(never)]
fn too_long(field: &'static str, max: usize) -> ValidationError {
    ValidationError::new(field, format!("longer than {max} bytes"))
}

/// 32 hex digits, or a UUID in its 36-character dashed form.
pub fn is_event_id(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        32 => all_hex(b),
        36 => {
            b[8] == b'-'
                && b[13] == b'-'
                && b[18] == b'-'
                && b[23] == b'-'
                && all_hex(&b[..8])
                && all_hex(&b[9..13])
                && all_hex(&b[14..18])
                && all_hex(&b[19..23])
                && all_hex(&b[24..])
        }
        _ => false,
    }
}

/// Whether every byte is an ASCII hex digit: without an early exit per byte, and 16 bytes at
/// a time as a fixed-size array (a 32-digit id is two), so that the compiler checks them with
/// vector instructions (an event id is checked for every event).
fn all_hex(b: &[u8]) -> bool {
    fn not_hex(c: u8) -> u8 {
        u8::from(!((c.wrapping_sub(b'0') < 10) | ((c | 0x20).wrapping_sub(b'a') < 6)))
    }
    let mut chunks = b.chunks_exact(16);
    let mut bad = 0u8;
    for chunk in &mut chunks {
        let mut block = [b'0'; 16];
        block.copy_from_slice(chunk);
        bad |= block.iter().fold(0, |bad, &c| bad | not_hex(c));
    }
    bad |= chunks.remainder().iter().fold(0, |bad, &c| bad | not_hex(c));
    bad == 0
}

/// `[a-z0-9][a-z0-9_-]*`, at most [`MAX_PROJECT_LEN`] bytes.
pub fn is_project_slug(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_PROJECT_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().fold(true, |ok, &c| ok & (c.is_ascii_lowercase() | c.is_ascii_digit() | (c == b'_') | (c == b'-')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_event_slice;

    /// `is_event_id` as it was before the branch-free check, the reference.
    fn is_event_id_reference(s: &str) -> bool {
        let b = s.as_bytes();
        match b.len() {
            32 => b.iter().all(u8::is_ascii_hexdigit),
            36 => {
                b.iter().enumerate().all(
                    |(i, c)| {
                        if matches!(i, 8 | 13 | 18 | 23) {
                            *c == b'-'
                        } else {
                            c.is_ascii_hexdigit()
                        }
                    },
                )
            }
            _ => false,
        }
    }

    /// `is_project_slug` as it was before the branch-free check, the reference.
    fn is_project_slug_reference(s: &str) -> bool {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= MAX_PROJECT_LEN
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
    }

    #[test]
    fn project_slugs_every_byte_and_length() {
        for c in 0..=255u8 {
            for at in [0, 1, 5] {
                let mut slug = *b"web-app_2";
                slug[at] = c;
                let s = String::from_utf8_lossy(&slug).into_owned();
                assert_eq!(is_project_slug(&s), is_project_slug_reference(&s), "{c} at {at}");
            }
        }
        for n in 0..70 {
            let s = "a".repeat(n);
            assert_eq!(is_project_slug(&s), is_project_slug_reference(&s), "{n}");
        }
    }

    proptest::proptest! {
        #[test]
        fn project_slug_check_agrees_with_the_reference(s in proptest::prop_oneof!["[a-z0-9_-]{0,66}", "[a-zA-Z0-9_./ -]{0,10}", "\\PC{0,10}"]) {
            proptest::prop_assert_eq!(is_project_slug(&s), is_project_slug_reference(&s), "{:?}", s);
        }

        #[test]
        fn environments_with_separators_are_refused_as_before(env in "[a-z/\\t\\r\\né日🦀 ]{0,12}") {
            let json = serde_json::json!({
                "event_id": "0123456789abcdef0123456789abcdef", "project": "web", "message": "m", "environment": env,
            })
            .to_string();
            let refused = check(&json).is_err_and(|e| e.field == "environment");
            let before = env.contains(['/', '\n', '\r', '\t']);
            proptest::prop_assert_eq!(refused, before, "{:?}", env);
        }

        #[test]
        fn event_id_check_agrees_with_the_reference(
            s in proptest::prop_oneof![
                "[0-9a-fA-F]{32}",
                "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
                "[0-9a-gA-G`@/:-]{30,37}",
                "\\PC{0,36}",
            ],
        ) {
            proptest::prop_assert_eq!(is_event_id(&s), is_event_id_reference(&s), "{:?}", s);
        }
    }

    #[test]
    fn event_ids_every_byte() {
        for c in 0..=255u8 {
            let mut id = *b"0123456789abcdef0123456789abcdef";
            id[17] = c;
            let s = String::from_utf8_lossy(&id).into_owned();
            assert_eq!(is_event_id(&s), is_event_id_reference(&s), "{c}");
            let mut uuid = *b"01234567-89ab-cdef-0123-456789abcdef";
            for at in [0, 8, 13, 20, 35] {
                let keep = uuid[at];
                uuid[at] = c;
                let s = String::from_utf8_lossy(&uuid).into_owned();
                assert_eq!(is_event_id(&s), is_event_id_reference(&s), "{c} at {at}");
                uuid[at] = keep;
            }
        }
    }

    const NOW: Millis = 1_795_671_540_000;

    fn check(json: &str) -> Result<Validated, ValidationError> {
        let mut buf = json.as_bytes().to_vec();
        let ev = parse_event_slice(&mut buf).expect("parses");
        validate(&ev, NOW)
    }

    #[test]
    fn accepts_a_minimal_exception_event() {
        let v = check(
            r#"{"event_id":"0123456789abcdef0123456789abcdef","project":"web","timestamp":1795671500,
            "exception":[{"type":"TypeError","value":"x is undefined"}]}"#,
        )
        .unwrap();
        assert_eq!(v.level, Level::Error);
        assert_eq!(v.timestamp_ms, 1_795_671_500_000);
        assert!(!v.timestamp_clamped);
    }

    #[test]
    fn names_the_field_that_is_wrong() {
        let cases = [
            (r#"{"project":"web","message":"m"}"#, "event_id"),
            (r#"{"event_id":"xyz","project":"web","message":"m"}"#, "event_id"),
            (r#"{"event_id":"0123456789abcdef0123456789abcdef","message":"m"}"#, "project"),
            (r#"{"event_id":"0123456789abcdef0123456789abcdef","project":"Web!","message":"m"}"#, "project"),
            (r#"{"event_id":"0123456789abcdef0123456789abcdef","project":"web"}"#, "exception"),
            (
                r#"{"event_id":"0123456789abcdef0123456789abcdef","project":"web","message":"m","level":"loud"}"#,
                "level",
            ),
            (
                r#"{"event_id":"0123456789abcdef0123456789abcdef","project":"web","exception":[{"module":"m"}]}"#,
                "exception[0]",
            ),
            (
                r#"{"event_id":"0123456789abcdef0123456789abcdef","project":"web","message":"m","environment":"a/b"}"#,
                "environment",
            ),
        ];
        for (json, field) in cases {
            assert_eq!(check(json).unwrap_err().field, field, "{json}");
        }
    }

    #[test]
    fn clamps_timestamps_out_of_window_to_receive_time() {
        let future = r#"{"event_id":"0123456789abcdef0123456789abcdef","project":"web","message":"m","timestamp":"2030-01-01T00:00:00Z"}"#;
        let v = check(future).unwrap();
        assert_eq!((v.timestamp_ms, v.timestamp_clamped), (NOW, true));
        let missing = r#"{"event_id":"01234567-89ab-cdef-0123-456789abcdef","project":"web","message":"m"}"#;
        assert_eq!(check(missing).unwrap().timestamp_ms, NOW);
    }

    #[test]
    fn level_aliases() {
        assert_eq!(Level::parse("warn"), Some(Level::Warning));
        assert_eq!(Level::parse("critical"), Some(Level::Fatal));
        assert_eq!(Level::parse("WARN"), None);
    }
}
