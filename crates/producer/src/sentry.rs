//! Sentry's ingestion protocol: the store endpoint (one event) and the envelope endpoint
//! (items; `event` items are ingested, others are skipped and counted), compressed bodies,
//! and the mapping of Sentry payloads onto tracefold's event model.

use flate2::read::{DeflateDecoder, GzDecoder, ZlibDecoder};
use serde_json::Value;
use std::io::Read;
use tracefold_model::json::{prescan, MAX_DEPTH};
use tracefold_model::reject::{Reason, Rejection};

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// 413: the decompressed body is larger than the limit.
    TooLarge(usize),
    /// 415: an encoding we do not read.
    Unsupported(String),
    /// 400: not valid compressed data.
    Corrupt(String),
}

/// Decodes a request body by its `Content-Encoding` (gzip, deflate or none), reading at most
/// `limit` decompressed bytes.
///
/// # Errors
/// [`BodyError`] with the status to answer.
pub fn decode_body(encoding: Option<&str>, body: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    let enc = encoding.map(|e| e.trim().to_ascii_lowercase()).unwrap_or_default();
    let read_limited = |mut r: Box<dyn Read + '_>| -> Result<Vec<u8>, BodyError> {
        let mut out = Vec::new();
        r.by_ref().take(limit as u64 + 1).read_to_end(&mut out).map_err(|e| BodyError::Corrupt(e.to_string()))?;
        if out.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        Ok(out)
    };
    match enc.as_str() {
        "" | "identity" => Ok(body.to_vec()),
        "gzip" | "x-gzip" => read_limited(Box::new(GzDecoder::new(body))),
        // "deflate" is zlib-wrapped by the HTTP spec; some clients send raw deflate. Only a
        // body that is not zlib is tried as raw deflate: a zlib body over the limit is 413,
        // not the raw decoder's complaint about the zlib header.
        "deflate" => match read_limited(Box::new(ZlibDecoder::new(body))) {
            Err(BodyError::Corrupt(_)) => read_limited(Box::new(DeflateDecoder::new(body))),
            r => r,
        },
        other => Err(BodyError::Unsupported(other.to_owned())),
    }
}

/// Decodes only the first line of a body (an envelope's header), reading at most `max`
/// decompressed bytes and stopping at the first newline: enough to find the DSN's key before
/// the rest of the request is decompressed (the inflater runs at most its 32 KiB window
/// ahead). Without a newline within `max` bytes, what was read is returned (the caller finds
/// no header in it).
///
/// # Errors
/// [`BodyError`] when the encoding is not supported or the start of the data is corrupt.
pub fn decode_first_line(encoding: Option<&str>, body: &[u8], max: usize) -> Result<Vec<u8>, BodyError> {
    let enc = encoding.map(|e| e.trim().to_ascii_lowercase()).unwrap_or_default();
    let first_line = |mut r: Box<dyn Read + '_>| -> Result<Vec<u8>, BodyError> {
        let mut out = Vec::new();
        // Small reads: the decoder inflates no further than the line needs.
        let mut chunk = [0u8; 512];
        while out.len() < max {
            let want = chunk.len().min(max - out.len());
            let n = r.read(&mut chunk[..want]).map_err(|e| BodyError::Corrupt(e.to_string()))?;
            if n == 0 {
                break;
            }
            if let Some(i) = chunk[..n].iter().position(|&c| c == b'\n') {
                out.extend_from_slice(&chunk[..i]);
                return Ok(out);
            }
            out.extend_from_slice(&chunk[..n]);
        }
        Ok(out)
    };
    match enc.as_str() {
        "" | "identity" => {
            let head = &body[..body.len().min(max)];
            Ok(split_line(head).0.to_vec())
        }
        "gzip" | "x-gzip" => first_line(Box::new(GzDecoder::new(body))),
        "deflate" => {
            first_line(Box::new(ZlibDecoder::new(body))).or_else(|_| first_line(Box::new(DeflateDecoder::new(body))))
        }
        other => Err(BodyError::Unsupported(other.to_owned())),
    }
}

/// The key of the DSN in an envelope header line (`{"dsn":"https://KEY@host/ID",...}`), if
/// the line is a JSON object with one.
pub fn envelope_dsn_key(header_line: &[u8]) -> Option<String> {
    let header = parse_header(header_line).ok()?;
    header.get("dsn").and_then(Value::as_str).and_then(crate::auth::dsn_key)
}

/// Parses one JSON text of a request (an envelope header line, a Sentry event): depth checked
/// and lone surrogate escapes repaired first, on a copy, so that a JavaScript string cut inside
/// an emoji is accepted and nothing recurses deeper than [`MAX_DEPTH`]. `what` names it in
/// the detail.
fn parse_json(bytes: &[u8], what: &str) -> Result<Value, Rejection> {
    let mut buf = bytes.to_vec();
    prescan(&mut buf, MAX_DEPTH).map_err(|e| Rejection::new(Reason::TooDeep, format!("{what} {e}")))?;
    serde_json::from_slice(&buf).map_err(|e| Rejection::new(Reason::Malformed, format!("malformed {what} json: {e}")))
}

fn parse_header(line: &[u8]) -> Result<Value, Rejection> {
    parse_json(line, "header")
}

/// One envelope item.
#[derive(Debug, Clone, PartialEq)]
pub struct Item<'a> {
    /// `event`, `transaction`, `attachment`, `session`, ...
    pub ty: String,
    /// The payload bytes.
    pub payload: &'a [u8],
}

/// A parsed envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<'a> {
    /// The envelope header (`event_id`, `dsn`, `sent_at`, ...).
    pub header: Value,
    /// Its items, in order.
    pub items: Vec<Item<'a>>,
}

/// Parses an envelope: a JSON header line, then items, each a JSON header line and a payload
/// of `length` bytes (or up to the next newline when the header has no length). Whitespace
/// before an item header (an empty line between items) is skipped.
///
/// # Errors
/// [`Rejection`] with what is malformed and the item's position: [`Reason::TooDeep`] for a
/// header nested deeper than [`MAX_DEPTH`], else [`Reason::Malformed`].
pub fn parse_envelope(body: &[u8]) -> Result<Envelope<'_>, Rejection> {
    let malformed = |detail: String| Rejection::new(Reason::Malformed, detail);
    let at = |e: Rejection, place: String| Rejection::new(e.reason, format!("{place}: {}", e.detail));
    let (head, mut rest) = split_line(body);
    let header = parse_header(head).map_err(|e| at(e, "envelope header".into()))?;
    if !header.is_object() {
        return Err(malformed("envelope header must be a JSON object".into()));
    }
    let mut items = Vec::new();
    while !rest.iter().all(u8::is_ascii_whitespace) {
        let n = items.len();
        // Blank lines (and other whitespace) before an item header are skipped, as Sentry's
        // parser skips them: an envelope with an empty line between items is not refused.
        let (ih, after) = split_line(rest.trim_ascii_start());
        let ih = parse_header(ih).map_err(|e| at(e, format!("item {n} header")))?;
        let ty = ih
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(format!("item {n} header has no type")))?
            .to_owned();
        let (payload, next) = match ih.get("length").and_then(Value::as_u64) {
            Some(len) => {
                let len = usize::try_from(len).map_err(|_| malformed(format!("item {n}: length too large")))?;
                if len > after.len() {
                    return Err(malformed(format!("item {n}: length {len} runs past the end of the envelope")));
                }
                let (p, r) = after.split_at(len);
                (p, r.strip_prefix(b"\n").unwrap_or(r))
            }
            None => split_line(after),
        };
        items.push(Item { ty, payload });
        rest = next;
        if items.len() > 1000 {
            return Err(malformed("more than 1000 items in one envelope".into()));
        }
    }
    Ok(Envelope { header, items })
}

fn split_line(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == b'\n') {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

/// Item types counted by name in metrics; anything else is `other` (bounded label values).
pub fn item_label(ty: &str) -> &'static str {
    match ty {
        "event" => "event",
        "transaction" => "transaction",
        "attachment" => "attachment",
        "session" => "session",
        "sessions" => "sessions",
        "client_report" => "client_report",
        "check_in" => "check_in",
        "profile" => "profile",
        "replay_event" | "replay_recording" => "replay",
        "user_report" | "feedback" => "feedback",
        "statsd" | "metric_buckets" => "metrics",
        "span" | "otel_span" => "span",
        "log" => "log",
        _ => "other",
    }
}

/// Reads one Sentry event payload as JSON, for [`tracefold_model::sentry::map`] to turn into
/// a typed event. The payload is checked for depth and has lone UTF-16 surrogate escapes
/// replaced by U+FFFD (on a copy) before serde_json reads it.
///
/// # Errors
/// [`Rejection`] with [`Reason::TooDeep`] when nested deeper than [`MAX_DEPTH`], else
/// [`Reason::Malformed`] when the payload is not JSON.
pub fn read_event(payload: &[u8]) -> Result<Value, Rejection> {
    parse_json(payload, "sentry event")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::prepare_sentry;
    use flate2::write::{GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use std::io::Write;

    #[test]
    fn envelopes_with_and_without_lengths() {
        let body = b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\",\"dsn\":\"https://k@h/1\"}\n\
{\"type\":\"attachment\",\"length\":10,\"filename\":\"a.txt\"}\n\xef\xbb\xbfHello\r\n\n\
{\"type\":\"event\",\"length\":35}\n{\"message\":\"hello\",\"level\":\"error\"}\n\
{\"type\":\"session\"}\n{\"started\":\"2020-02-07T14:16:00Z\"}";
        let e = parse_envelope(body).unwrap();
        assert_eq!(e.header["event_id"], "9ec79c33ec9942ab8353589fcb2e04dc");
        let types: Vec<&str> = e.items.iter().map(|i| i.ty.as_str()).collect();
        assert_eq!(types, ["attachment", "event", "session"]);
        assert_eq!(e.items[0].payload.len(), 10);
        assert_eq!(e.items[1].payload, br#"{"message":"hello","level":"error"}"#);
        assert_eq!(e.items[2].payload, br#"{"started":"2020-02-07T14:16:00Z"}"#);
    }

    /// An empty line between items (after a payload with or without a length, before the first
    /// item) is skipped, as Sentry's parser skips whitespace before an item header: the
    /// envelope was refused 400 as malformed and its event lost.
    #[test]
    fn blank_lines_between_items_are_skipped() {
        let body = b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\"}\n\n\
{\"type\":\"attachment\",\"length\":5}\nhello\n\n\r\n\
{\"type\":\"event\"}\n{\"message\":\"hello\"}\n\n\
{\"type\":\"session\",\"length\":2}\n{}\n\n";
        let e = parse_envelope(body).unwrap();
        let types: Vec<&str> = e.items.iter().map(|i| i.ty.as_str()).collect();
        assert_eq!(types, ["attachment", "event", "session"]);
        assert_eq!(e.items[0].payload, b"hello");
        assert_eq!(e.items[1].payload, br#"{"message":"hello"}"#);
        assert_eq!(e.items[2].payload, b"{}");
        // A payload's own bytes are never skipped: a length counts from the header's newline.
        let e = parse_envelope(b"{}\n{\"type\":\"attachment\",\"length\":3}\n\n a\n").unwrap();
        assert_eq!(e.items[0].payload, b"\n a");
    }

    #[test]
    fn malformed_envelopes_are_errors() {
        assert!(parse_envelope(b"not json\n").is_err());
        assert!(parse_envelope(b"{}\n{\"length\":3}\nabc").unwrap_err().detail.contains("no type"));
        let e = parse_envelope(b"{}\n{\"type\":\"event\",\"length\":99}\n{}").unwrap_err();
        assert_eq!(e.reason, Reason::Malformed);
        assert!(e.detail.contains("past the end"), "{e}");
        let deep = format!("{{}}\n{{\"type\":\"event\",\"x\":{}1{}}}\n{{}}", "[".repeat(64), "]".repeat(64));
        let e = parse_envelope(deep.as_bytes()).unwrap_err();
        assert_eq!(e.reason, Reason::TooDeep);
        assert!(e.detail.starts_with("item 0 header: "), "{e}");
        assert_eq!(parse_envelope(b"{}\n").unwrap().items.len(), 0);
    }

    #[test]
    fn bodies_decompress_within_the_limit() {
        let data = br#"{"message":"compressed"}"#.repeat(10);
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(decode_body(Some("gzip"), &gz, 1 << 20).unwrap(), data);
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(&data).unwrap();
        assert_eq!(decode_body(Some("deflate"), &z.finish().unwrap(), 1 << 20).unwrap(), data);
        assert_eq!(decode_body(Some("gzip"), &gz, 100), Err(BodyError::TooLarge(100)));
        assert!(matches!(decode_body(Some("br"), b"x", 10), Err(BodyError::Unsupported(_))));
        assert!(matches!(decode_body(Some("gzip"), b"not gzip", 10), Err(BodyError::Corrupt(_))));
        // A gzip bomb stops at the limit instead of filling memory.
        let mut bomb = GzEncoder::new(Vec::new(), Compression::best());
        bomb.write_all(&vec![b'a'; 50 << 20]).unwrap();
        let bomb = bomb.finish().unwrap();
        assert_eq!(decode_body(Some("gzip"), &bomb, 1 << 20), Err(BodyError::TooLarge(1 << 20)));
    }

    /// A deflate body over the limit is 413 (too large), whether zlib-wrapped or raw, never
    /// 400 (corrupt): the client must learn that the body is too big, not that it is broken.
    #[test]
    fn deflate_bombs_are_too_large_not_corrupt() {
        let big = vec![b'a'; 4 << 20];
        let mut z = ZlibEncoder::new(Vec::new(), Compression::best());
        z.write_all(&big).unwrap();
        let z = z.finish().unwrap();
        assert_eq!(decode_body(Some("deflate"), &z, 1 << 20), Err(BodyError::TooLarge(1 << 20)));
        let mut d = flate2::write::DeflateEncoder::new(Vec::new(), Compression::best());
        d.write_all(&big).unwrap();
        let d = d.finish().unwrap();
        assert_eq!(decode_body(Some("deflate"), &d, 1 << 20), Err(BodyError::TooLarge(1 << 20)));
        // Both still decode within the limit, and garbage is still corrupt.
        assert_eq!(decode_body(Some("deflate"), &z, 8 << 20).unwrap(), big);
        assert_eq!(decode_body(Some("deflate"), &d, 8 << 20).unwrap(), big);
        assert!(matches!(decode_body(Some("deflate"), b"not deflate", 10), Err(BodyError::Corrupt(_))));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes never crash a request parser (the cargo-fuzz target in fuzz/ goes
        /// deeper; this runs with every test run).
        #[test]
        fn parsers_survive_arbitrary_bytes(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_envelope(&data);
            let _ = decode_body(Some("gzip"), &data, 4096);
            let _ = decode_body(Some("deflate"), &data, 4096);
            let _ = decode_first_line(Some("gzip"), &data, 4096);
            let _ = envelope_dsn_key(&data);
            let _ = prepare_sentry(&data, "web", NOW, 4096);
            if let Ok(s) = std::str::from_utf8(&data) {
                let _ = crate::http::check_line(s, "web", 0);
            }
        }

        /// Envelopes cut or corrupted anywhere are refused or parsed, never a crash.
        #[test]
        fn corrupted_envelopes(cut in 0usize..200, flip in 0usize..200, byte in proptest::prelude::any::<u8>()) {
            let mut e = b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\"}\n{\"type\":\"event\",\"length\":35}\n{\"message\":\"hello\",\"level\":\"error\"}\n{\"type\":\"attachment\",\"length\":5}\nhello\n".to_vec();
            let f = flip % e.len();
            e[f] = byte;
            e.truncate(cut.min(e.len()));
            if let Ok(env) = parse_envelope(&e) {
                for item in env.items {
                    let _ = prepare_sentry(item.payload, "web", NOW, 4096);
                }
            }
        }
    }

    #[test]
    fn sentry_payloads_with_lone_surrogates_are_repaired() {
        let payload = br#"{"event_id":"fc6d8c0c43fc46308ea5bc7a3b7d3c64","message":"cut \ud83d","exception":{"values":[{"type":"E\udc00","value":"v"}]}}"#;
        let r = prepare_sentry(payload, "web", NOW, 1 << 20).unwrap();
        let v: Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(v["message"], "cut \u{fffd}");
        assert_eq!(v["exception"][0]["type"], "E\u{fffd}");
        let deep = format!(r#"{{"message":"m","extra":{}1{}}}"#, "[".repeat(64), "]".repeat(64));
        assert_eq!(prepare_sentry(deep.as_bytes(), "web", NOW, 1 << 20).unwrap_err().code, Reason::TooDeep);
        assert_eq!(prepare_sentry(b"[1]", "web", NOW, 1 << 20).unwrap_err().code, Reason::Malformed);
        // Envelope headers too.
        let env = b"{\"dsn\":\"https://abcdefgh@h/1\",\"sdk\":{\"name\":\"x\\ud83d\"}}\n{\"type\":\"event\",\"length\":2}\n{}\n";
        assert_eq!(parse_envelope(env).unwrap().header["sdk"]["name"], "x\u{fffd}");
    }

    const NOW: i64 = 1_795_671_540_000;

    /// Bytes that do not compress (a fixed pseudo-random sequence).
    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn only_the_first_line_is_decompressed_for_the_key() {
        let mut body = b"{\"dsn\":\"https://abcdefgh@o1.example.com/42\",\"event_id\":\"x\"}\n".to_vec();
        body.extend_from_slice(&noise(200_000));
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&body).unwrap();
        let mut gz = gz.finish().unwrap();
        // Corrupt everything after the first 64 KiB of compressed data (the inflater works
        // up to its 32 KiB window ahead of what is read from it).
        for b in &mut gz[64 << 10..] {
            *b ^= 0x5a;
        }
        assert!(matches!(decode_body(Some("gzip"), &gz, 1 << 20), Err(BodyError::Corrupt(_))));
        let line = decode_first_line(Some("gzip"), &gz, 16 << 10).unwrap();
        assert_eq!(envelope_dsn_key(&line).as_deref(), Some("abcdefgh"));
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(&body).unwrap();
        let line = decode_first_line(Some("deflate"), &z.finish().unwrap(), 16 << 10).unwrap();
        assert_eq!(envelope_dsn_key(&line).as_deref(), Some("abcdefgh"));
        assert_eq!(envelope_dsn_key(&decode_first_line(None, &body, 16 << 10).unwrap()).as_deref(), Some("abcdefgh"));
        // No newline within the bound: at most the bound is read, and no key is found in it.
        let long = format!("{{\"dsn\":\"https://abcdefgh@h/1\",\"pad\":\"{}\"}}\n", "x".repeat(100_000));
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(long.as_bytes()).unwrap();
        let line = decode_first_line(Some("gzip"), &gz.finish().unwrap(), 16 << 10).unwrap();
        assert_eq!(line.len(), 16 << 10);
        assert_eq!(envelope_dsn_key(&line), None);
        assert!(matches!(decode_first_line(Some("br"), b"x", 10), Err(BodyError::Unsupported(_))));
        assert_eq!(envelope_dsn_key(b"{\"dsn\":5}"), None);
        assert_eq!(envelope_dsn_key(b"not json"), None);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(read_event(deep.as_bytes()).is_err());
        let deep_obj = format!("{{\"a\":{}1{}}}", "{\"b\":".repeat(50_000), "}".repeat(50_000));
        assert_eq!(read_event(deep_obj.as_bytes()).unwrap_err().reason, Reason::TooDeep);
    }
}
