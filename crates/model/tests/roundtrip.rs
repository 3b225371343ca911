//! An event serializes to the event JSON and reads back as the same event, with either parser
//! (serde_json for tools, simd-json for the grouper): `parse(serialize(e)) == e`. This is what
//! lets the producer build events as values and serialize them once.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use std::borrow::Cow;
use tracefold_model::event::{
    Contexts, DebugImage, DebugMeta, Device, Event, Exception, Frame, LogEntry, Mechanism, NameVersion, Request, Sdk,
    Stacktrace, Str, Thread, MAX_TAGS, MAX_THREADS,
};
use tracefold_model::time::{RFC3339_MAX, RFC3339_MIN};
use tracefold_model::{parse_event_slice, parse_event_str};

/// Text as people and SDKs send it: any printable text, CJK, combining marks, emoji,
/// right-to-left scripts, and what JSON must escape (quotes, backslashes, control characters).
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        "\\PC{0,40}",
        "[\u{4e00}-\u{9fff}]{1,20}",
        "[a-z]{1,5}[\u{0300}-\u{036f}]{1,4}",
        "[\u{1f600}-\u{1f64f}\u{1f680}-\u{1f6ff}\u{200d}\u{fe0f}]{1,10}",
        "[\u{0590}-\u{05ff}\u{0600}-\u{06ff} ]{1,20}",
        "[\"\\\\/\u{0}-\u{1f}\u{7f}\u{2028}\u{2029}\u{feff}a-z]{0,12}",
    ]
    .boxed()
}

fn s() -> BoxedStrategy<Option<Str<'static>>> {
    option::of(text().prop_map(Cow::Owned)).boxed()
}

fn pairs(max: usize) -> BoxedStrategy<Vec<(Str<'static>, Str<'static>)>> {
    vec((text().prop_map(Cow::Owned), text().prop_map(Cow::Owned)), 0..max).boxed()
}

/// Timestamps as the parsers produce them: any millisecond of the RFC 3339 years, whole Unix
/// seconds of any size, fractional seconds as a client may send them.
fn timestamp() -> BoxedStrategy<Option<i64>> {
    prop_oneof![
        Just(None),
        (RFC3339_MIN..=RFC3339_MAX).prop_map(Some),
        ((i64::MIN / 1000)..=(i64::MAX / 1000)).prop_map(|secs| Some(secs * 1000)),
        (-9.99e13f64..9.99e13).prop_map(|v| Some((v * 1000.0).round() as i64)),
    ]
    .boxed()
}

fn frame() -> BoxedStrategy<Frame<'static>> {
    (s(), s(), s(), s(), s(), option::of(any::<u32>()), option::of(any::<u32>()), option::of(any::<bool>()), s())
        .prop_map(|(function, module, filename, abs_path, package, lineno, colno, in_app, instruction_addr)| Frame {
            function,
            module,
            filename,
            abs_path,
            package,
            lineno,
            colno,
            in_app,
            instruction_addr,
        })
        .boxed()
}

fn exception() -> BoxedStrategy<Exception<'static>> {
    let mechanism = option::of((s(), option::of(any::<bool>()), option::of(any::<bool>())))
        .prop_map(|m| m.map(|(ty, handled, synthetic)| Mechanism { ty, handled, synthetic }));
    let stacktrace = option::of(vec(frame(), 0..6)).prop_map(|f| f.map(|frames| Stacktrace { frames }));
    (s(), s(), s(), mechanism, stacktrace, s())
        .prop_map(|(ty, value, module, mechanism, stacktrace, thread_id)| Exception {
            ty,
            value,
            module,
            mechanism,
            stacktrace,
            thread_id,
        })
        .boxed()
}

fn thread() -> BoxedStrategy<Thread<'static>> {
    let stacktrace = option::of(vec(frame(), 0..4)).prop_map(|f| f.map(|frames| Stacktrace { frames }));
    (s(), s(), option::of(any::<bool>()), option::of(any::<bool>()), stacktrace)
        .prop_map(|(id, name, crashed, current, stacktrace)| Thread { id, name, crashed, current, stacktrace })
        .boxed()
}

fn name_version() -> BoxedStrategy<Option<NameVersion<'static>>> {
    option::of((s(), s()).prop_map(|(name, version)| NameVersion { name, version })).boxed()
}

fn event() -> BoxedStrategy<Event<'static>> {
    let head = (s(), s(), timestamp(), s(), s(), s(), s(), s(), s(), s());
    let logentry = option::of((s(), s()).prop_map(|(message, formatted)| LogEntry { message, formatted }));
    let user = option::of((s(), s(), s(), s()).prop_map(|(id, email, username, ip_address)| {
        tracefold_model::event::User { id, email, username, ip_address }
    }));
    let request = option::of((s(), s(), s(), pairs(8)).prop_map(|(url, method, query_string, headers)| Request {
        url,
        method,
        query_string,
        headers,
    }));
    let contexts = option::of((name_version(), name_version(), name_version(), option::of((s(), s()))).prop_map(
        |(browser, os, runtime, device)| Contexts {
            browser,
            os,
            runtime,
            device: device.map(|(family, model)| Device { family, model }),
        },
    ));
    let sdk = option::of((s(), s()).prop_map(|(name, version)| Sdk { name, version }));
    let debug_meta = option::of(
        vec((s(), s(), s()).prop_map(|(ty, code_file, debug_id)| DebugImage { ty, code_file, debug_id }), 0..4)
            .prop_map(|images| DebugMeta { images }),
    );
    let tail = (
        logentry,
        vec(exception(), 0..4),
        vec(thread(), 0..3),
        vec(text().prop_map(Cow::Owned), 0..4),
        user,
        pairs(12),
        request,
        contexts,
        sdk,
        debug_meta,
    );
    (head, tail)
        .prop_map(
            |(
                (event_id, project, timestamp, platform, level, release, environment, logger, server_name, message),
                (logentry, exception, threads, fingerprint, user, tags, request, contexts, sdk, debug_meta),
            )| Event {
                event_id,
                project,
                timestamp,
                platform,
                level,
                release,
                environment,
                logger,
                server_name,
                message,
                logentry,
                exception,
                threads,
                fingerprint,
                user,
                tags,
                request,
                contexts,
                sdk,
                debug_meta,
            },
        )
        .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Serialized and parsed again, with either parser, an event is the same event.
    #[test]
    fn events_round_trip(ev in event()) {
        let text = serde_json::to_string(&ev).unwrap();
        prop_assert_eq!(&parse_event_str(&text).unwrap(), &ev, "serde_json: {}", text);
        let mut buf = text.clone().into_bytes();
        prop_assert_eq!(&parse_event_slice(&mut buf).unwrap(), &ev, "simd-json: {}", text);
        // And serializing what was read gives the same bytes.
        prop_assert_eq!(serde_json::to_string(&parse_event_str(&text).unwrap()).unwrap(), text);
    }
}

#[test]
fn the_empty_event_and_empty_parts_round_trip() {
    let parts = Event {
        user: Some(Default::default()),
        request: Some(Default::default()),
        contexts: Some(Default::default()),
        sdk: Some(Default::default()),
        debug_meta: Some(DebugMeta { images: vec![DebugImage::default()] }),
        logentry: Some(Default::default()),
        exception: vec![Exception {
            mechanism: Some(Default::default()),
            stacktrace: Some(Stacktrace { frames: vec![Frame::default()] }),
            ..Default::default()
        }],
        threads: vec![Thread::default(), Thread { stacktrace: Some(Stacktrace::default()), ..Default::default() }],
        ..Default::default()
    };
    for ev in [Event::default(), parts] {
        let text = serde_json::to_string(&ev).unwrap();
        assert_eq!(parse_event_str(&text).unwrap(), ev, "{text}");
        assert_eq!(parse_event_slice(&mut text.clone().into_bytes()).unwrap(), ev, "{text}");
    }
}

#[test]
fn tags_past_the_bound_are_written_and_read_up_to_it() {
    // The one asymmetry: a parser keeps the first MAX_TAGS tags.
    let tags: Vec<(Str<'_>, Str<'_>)> = (0..MAX_TAGS + 10).map(|i| (i.to_string().into(), "v".into())).collect();
    let ev = Event { message: Some("m".into()), tags, ..Default::default() };
    let text = serde_json::to_string(&ev).unwrap();
    let back = parse_event_str(&text).unwrap();
    assert_eq!(back.tags[..], ev.tags[..MAX_TAGS]);
}

#[test]
fn threads_past_the_bound_are_written_and_read_up_to_it() {
    let threads: Vec<Thread<'_>> =
        (0..MAX_THREADS + 10).map(|i| Thread { id: Some(i.to_string().into()), ..Default::default() }).collect();
    let ev = Event { message: Some("m".into()), threads, ..Default::default() };
    let text = serde_json::to_string(&ev).unwrap();
    assert_eq!(parse_event_str(&text).unwrap().threads[..], ev.threads[..MAX_THREADS]);
    assert_eq!(parse_event_slice(&mut text.clone().into_bytes()).unwrap().threads[..], ev.threads[..MAX_THREADS]);
}
