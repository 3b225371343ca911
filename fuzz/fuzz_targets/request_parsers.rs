//! Everything the producer does with request bytes before they reach Kafka: decompression
//! (whole bodies and the envelope header alone), envelope parsing, Sentry payload mapping,
//! event preparation (depth check, lone-surrogate repair, ids filled in) and validation. Any
//! input must be refused or accepted, never crash, hang or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracefold_producer::http::prepare_sentry;
use tracefold_producer::sentry::{decode_body, decode_first_line, envelope_dsn_key, parse_envelope, read_event};

use tracefold_model::event::MAX_TAGS;

const NOW: i64 = 1_795_671_540_000;

fuzz_target!(|data: &[u8]| {
    let _ = decode_body(Some("gzip"), data, 1 << 20);
    let _ = decode_body(Some("deflate"), data, 1 << 20);
    if let Ok(line) = decode_first_line(Some("gzip"), data, 16 << 10) {
        let _ = envelope_dsn_key(&line);
    }
    let _ = envelope_dsn_key(data);
    if let Ok(envelope) = parse_envelope(data) {
        for item in envelope.items {
            sentry_event(item.payload);
        }
    }
    sentry_event(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tracefold_producer::http::check_line(text, "web", NOW);
    }
    native_body(data);
    // Any bytes, not only UTF-8: the producer repairs escapes in place before parsing.
    if let Ok(ready) = tracefold_producer::http::prepare(data, "web", NOW, 1 << 20) {
        assert!(grouper_reads(&ready.payload), "the grouper reads what the producer publishes");
    }
    let mut buf = data.to_vec();
    if let Ok(ev) = tracefold_model::parse_event_slice(&mut buf) {
        let _ = tracefold_model::validate(&ev, NOW);
    }
});

/// A native request's body split into its events: as lines, exactly the non-blank lines of
/// `str::lines`, trimmed and numbered, refused past the event limit; as one value or lines,
/// each event a non-blank trimmed piece of the body; refused when the body is not UTF-8.
fn native_body(data: &[u8]) {
    const MAX: usize = 50;
    let text = std::str::from_utf8(data);
    let want: Vec<(usize, &str)> = text
        .iter()
        .flat_map(|t| t.lines().enumerate())
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty())
        .collect();
    match tracefold_producer::http::native_lines(data, true, MAX) {
        Ok(lines) => assert_eq!(lines, want),
        Err(e) => assert!(text.is_err() || want.is_empty() || want.len() > MAX, "{}", e.error),
    }
    if let Ok(events) = tracefold_producer::http::native_lines(data, false, MAX) {
        assert!(!events.is_empty() && events.len() <= MAX);
        for (_, e) in events {
            assert!(!e.is_empty() && e == e.trim() && text.is_ok_and(|t| t.contains(e)));
        }
    }
}

/// A Sentry event payload: when the producer accepts it, it publishes the typed event the
/// payload maps to, and the grouper reads back that very event (parse(serialize(e)) == e; a
/// parser keeps the first MAX_TAGS tags and headers).
fn sentry_event(payload: &[u8]) {
    let Ok(ready) = prepare_sentry(payload, "web", NOW, 1 << 20) else { return };
    assert!(grouper_reads(&ready.payload), "the grouper reads what the producer publishes");
    let sentry = read_event(payload).expect("the producer read it");
    let mut want = tracefold_model::sentry::map(&sentry, Some("web")).expect("the producer mapped it");
    want.event_id.get_or_insert(std::borrow::Cow::Borrowed(ready.id.as_str()));
    want.tags.truncate(MAX_TAGS);
    if let Some(r) = want.request.as_mut() {
        r.headers.truncate(MAX_TAGS);
    }
    let mut buf = ready.payload.to_vec();
    assert_eq!(tracefold_model::parse_event_slice(&mut buf).as_ref(), Ok(&want), "parse(serialize(e)) == e");
}

/// What is published must parse with the grouper's parser (no lone surrogates, no duplicates of
/// the ids the producer sets).
fn grouper_reads(b: &[u8]) -> bool {
    let mut buf = b.to_vec();
    tracefold_model::parse_event_slice(&mut buf).is_ok_and(|ev| ev.project.as_deref() == Some("web"))
}
