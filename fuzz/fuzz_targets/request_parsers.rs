//! Everything the producer does with request bytes before they reach Kafka: decompression
//! (whole bodies and the envelope header alone), envelope parsing, Sentry payload mapping,
//! event preparation (depth check, lone-surrogate repair, ids filled in) and validation. Any
//! input must be refused or accepted, never crash, hang or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracefold_producer::sentry::{decode_body, decode_first_line, envelope_dsn_key, parse_envelope, to_tracefold};

fuzz_target!(|data: &[u8]| {
    let _ = decode_body(Some("gzip"), data, 1 << 20);
    let _ = decode_body(Some("deflate"), data, 1 << 20);
    if let Ok(line) = decode_first_line(Some("gzip"), data, 16 << 10) {
        let _ = envelope_dsn_key(&line);
    }
    let _ = envelope_dsn_key(data);
    if let Ok(envelope) = parse_envelope(data) {
        for item in envelope.items {
            if let Ok(json) = to_tracefold(item.payload, "web") {
                let _ = tracefold_producer::http::check_line(&json, "web", 1_795_671_540_000);
            }
        }
    }
    if let Ok(json) = to_tracefold(data, "web") {
        let _ = tracefold_producer::http::check_line(&json, "web", 1_795_671_540_000);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tracefold_producer::http::check_line(text, "web", 1_795_671_540_000);
    }
    // Any bytes, not only UTF-8: the producer repairs escapes in place before parsing.
    if let Ok(ready) = tracefold_producer::http::prepare(data, "web", 1_795_671_540_000, 1 << 20) {
        assert!(grouper_reads(&ready.payload), "the grouper reads what the producer publishes");
    }
    let mut buf = data.to_vec();
    if let Ok(ev) = tracefold_model::parse_event_slice(&mut buf) {
        let _ = tracefold_model::validate(&ev, 1_795_671_540_000);
    }
});

/// What is published must parse with the grouper's parser (no lone surrogates, no duplicates of
/// the ids the producer sets).
fn grouper_reads(b: &[u8]) -> bool {
    let mut buf = b.to_vec();
    tracefold_model::parse_event_slice(&mut buf).is_ok_and(|ev| ev.project.as_deref() == Some("web"))
}
