//! Everything the producer does with request bytes before they reach Kafka: decompression,
//! envelope parsing, Sentry payload mapping, event parsing and validation. Any input must be
//! refused or accepted, never crash, hang or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracefold_producer::sentry::{decode_body, parse_envelope, to_tracefold};

fuzz_target!(|data: &[u8]| {
    let _ = decode_body(Some("gzip"), data, 1 << 20);
    let _ = decode_body(Some("deflate"), data, 1 << 20);
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
    let mut buf = data.to_vec();
    if let Ok(ev) = tracefold_model::parse_event_slice(&mut buf) {
        let _ = tracefold_model::validate(&ev, 1_795_671_540_000);
    }
});
