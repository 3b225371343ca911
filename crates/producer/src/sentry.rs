//! Sentry's ingestion protocol: the store endpoint (one event) and the envelope endpoint
//! (items; `event` items are ingested, others are skipped and counted), compressed bodies,
//! and the mapping of Sentry payloads onto tracefold's event model.

use flate2::read::{DeflateDecoder, GzDecoder, ZlibDecoder};
use serde_json::Value;
use std::io::Read;

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
        // "deflate" is zlib-wrapped by the HTTP spec; some clients send raw deflate.
        "deflate" => read_limited(Box::new(ZlibDecoder::new(body)))
            .or_else(|_| read_limited(Box::new(DeflateDecoder::new(body)))),
        other => Err(BodyError::Unsupported(other.to_owned())),
    }
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
/// of `length` bytes (or up to the next newline when the header has no length).
///
/// # Errors
/// What is malformed, with the item's position.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope<'_>, String> {
    let (head, mut rest) = split_line(body);
    let header: Value = serde_json::from_slice(head).map_err(|e| format!("envelope header: {e}"))?;
    if !header.is_object() {
        return Err("envelope header must be a JSON object".into());
    }
    let mut items = Vec::new();
    while !rest.iter().all(u8::is_ascii_whitespace) {
        let n = items.len();
        let (ih, after) = split_line(rest);
        let ih: Value = serde_json::from_slice(ih).map_err(|e| format!("item {n} header: {e}"))?;
        let ty =
            ih.get("type").and_then(Value::as_str).ok_or_else(|| format!("item {n} header has no type"))?.to_owned();
        let (payload, next) = match ih.get("length").and_then(Value::as_u64) {
            Some(len) => {
                let len = usize::try_from(len).map_err(|_| format!("item {n}: length too large"))?;
                if len > after.len() {
                    return Err(format!("item {n}: length {len} runs past the end of the envelope"));
                }
                let (p, r) = after.split_at(len);
                (p, r.strip_prefix(b"\n").unwrap_or(r))
            }
            None => split_line(after),
        };
        items.push(Item { ty, payload });
        rest = next;
        if items.len() > 1000 {
            return Err("more than 1000 items in one envelope".into());
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

/// Maps one Sentry event payload onto tracefold's event JSON for project `slug`.
///
/// # Errors
/// When the payload is not a JSON object (nesting deeper than serde_json's limit of 128 is an
/// error too, never a crash).
pub fn to_tracefold(payload: &[u8], slug: &str) -> Result<String, String> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| format!("malformed sentry event json: {e}"))?;
    let ev = tracefold_model::sentry::to_event(&v, Some(slug)).map_err(|e| e.to_string())?;
    Ok(ev.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn malformed_envelopes_are_errors() {
        assert!(parse_envelope(b"not json\n").is_err());
        assert!(parse_envelope(b"{}\n{\"length\":3}\nabc").unwrap_err().contains("no type"));
        assert!(parse_envelope(b"{}\n{\"type\":\"event\",\"length\":99}\n{}").unwrap_err().contains("past the end"));
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes never crash a request parser (the cargo-fuzz target in fuzz/ goes
        /// deeper; this runs with every test run).
        #[test]
        fn parsers_survive_arbitrary_bytes(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_envelope(&data);
            let _ = decode_body(Some("gzip"), &data, 4096);
            let _ = decode_body(Some("deflate"), &data, 4096);
            let _ = to_tracefold(&data, "web");
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
                    let _ = to_tracefold(item.payload, "web");
                }
            }
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(to_tracefold(deep.as_bytes(), "web").is_err());
        let deep_obj = format!("{{\"a\":{}1{}}}", "{\"b\":".repeat(50_000), "}".repeat(50_000));
        assert!(to_tracefold(deep_obj.as_bytes(), "web").is_err());
    }
}
