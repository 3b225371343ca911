//! Fingerprinting any input: every normalizer on the raw text, `fingerprint`, `explain` and
//! `describe` on whatever parses as an event, and on an event built directly from the bytes
//! (so that the fuzzer reaches deep frames and long chains without having to write JSON).
//! Nothing may panic; `fingerprint`, `explain` and `contributing_frames` must agree; a long-lived scratch must give
//! the fresh result; every output must stay within its bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::borrow::Cow;
use std::cell::RefCell;
use tracefold_fingerprint::limits::{
    MAX_COMPONENT_LEN, MAX_CULPRIT_LEN, MAX_EXC_TYPE_LEN, MAX_MESSAGE_LEN, MAX_TITLE_LEN,
};
use tracefold_fingerprint::rules::{EventMatcher, FingerprintRule, FrameMatcher, StackAction, StackRule};
use tracefold_fingerprint::{
    contributing_frames, describe, explain, fingerprint, normalize, GroupingConfig, Scratch, StackSource,
};
use tracefold_model::event::{Event, Exception, Frame, LogEntry, Mechanism, Stacktrace, Thread};

thread_local! {
    /// One scratch for the whole run, as a grouper thread keeps one: its frame cache fills up
    /// and starts over across inputs.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn stack_rule(matcher: FrameMatcher, action: StackAction) -> StackRule {
    StackRule { matcher, action }
}

/// The default config, and one with every kind of rule; `pattern` (from the input) is used as
/// a glob too.
fn configs(pattern: &str) -> [GroupingConfig; 2] {
    let frames = |function: &str| FrameMatcher { function: Some(function.into()), ..FrameMatcher::default() };
    let ruled = GroupingConfig {
        max_frames: 1000,
        stack_rules: vec![
            stack_rule(frames("report*"), StackAction::Cut),
            stack_rule(
                FrameMatcher { path: Some("*/VENDOR/*".into()), ..FrameMatcher::default() },
                StackAction::NotApp,
            ),
            stack_rule(FrameMatcher { module: Some("app.?*".into()), ..FrameMatcher::default() }, StackAction::App),
            stack_rule(frames("*$*"), StackAction::Exclude),
            stack_rule(frames(pattern), StackAction::NotApp),
            stack_rule(FrameMatcher { path: Some(pattern.into()), ..FrameMatcher::default() }, StackAction::Exclude),
        ],
        fingerprint_rules: vec![
            FingerprintRule {
                matcher: EventMatcher { ty: Some("*Db*".into()), ..EventMatcher::default() },
                fingerprint: vec!["{{ default }}".into(), "db".into(), "{{ default }}".into()],
            },
            FingerprintRule {
                matcher: EventMatcher {
                    function: Some(pattern.into()),
                    message: Some("?*".into()),
                    ..EventMatcher::default()
                },
                fingerprint: vec![pattern.into(), "{{default}}".into()],
            },
        ],
    };
    [GroupingConfig::default(), ruled]
}

fn check(ev: &Event<'_>, pattern: &str) {
    for cfg in configs(pattern) {
        let fp = SCRATCH.with(|s| fingerprint(ev, &cfg, &mut s.borrow_mut()));
        assert_eq!(fp, fingerprint(ev, &cfg, &mut Scratch::default()), "a warm scratch differs from a fresh one");
        assert_eq!(explain(ev, &cfg).fingerprint, fp.to_hex(), "explain differs from fingerprint");
        // The frames the UI marks: the same hash, and every index inside its stack.
        let marked = contributing_frames(ev, &cfg);
        assert_eq!(marked.fingerprint, fp, "contributing_frames differs from fingerprint");
        for e in &marked.exceptions {
            let stack = match e.stack {
                StackSource::Own => ev.exception[e.exception].stacktrace.as_ref().map_or(0, |s| s.frames.len()),
                StackSource::Thread(t) => ev.threads[t].stacktrace.as_ref().map_or(0, |s| s.frames.len()),
            };
            assert!(e.frames.iter().all(|&i| i < stack), "a marked frame outside its stack");
        }
    }
    let meta = describe(ev);
    assert!(meta.title.len() <= MAX_TITLE_LEN);
    assert!(meta.culprit.len() <= MAX_CULPRIT_LEN);
    assert!(meta.exc_type.len() <= MAX_EXC_TYPE_LEN);
}

fn normalizers(s: &str) {
    let mut out = String::new();
    for n in [normalize::filename, normalize::module, normalize::function] {
        n(s, &mut out);
        assert!(out.len() <= MAX_COMPONENT_LEN);
    }
    let mut js = s.to_owned();
    normalize::js_function(&mut js);
    assert!(js.len() <= MAX_COMPONENT_LEN && s.contains(js.as_str()));
    normalize::message(s, &mut out);
    assert!(out.len() <= MAX_MESSAGE_LEN);
    normalize::exception_value(s, &mut out);
    assert!(out.len() <= MAX_MESSAGE_LEN);
    let _ = normalize::dotnet_async(s, "MoveNext");
    let _ = normalize::dotnet_async(s, s);
}

fn opt(s: Option<&str>) -> Option<Cow<'_, str>> {
    s.filter(|s| !s.is_empty()).map(Cow::Borrowed)
}

/// An event straight from the text: exceptions separated by `\x1e`, fields by `\x1f`
/// (`type`, `value`, then `function`, `module`, `filename` per frame). The first byte picks
/// the platform, whether the first exception's fields are also a client fingerprint, and how
/// often the frames repeat (to cross the frame and cache limits from a short input). Every
/// second exception's stack is on a thread instead (in `threads`): the crashed one, or the
/// one its `thread_id` names, or (for the raised exception) the current one.
fn structured(flags: u8, text: &str) -> Event<'_> {
    const PLATFORMS: [&str; 8] = ["javascript", "node", "python", "java", "rust", "csharp", "go", "ruby"];
    let repeat = 1 + usize::from(flags >> 4) * 24;
    let mut ev = Event { platform: Some(PLATFORMS[usize::from(flags & 7)].into()), ..Event::default() };
    for (e, chunk) in text.split('\x1e').enumerate().take(64) {
        let mut fields = chunk.split('\x1f');
        let (ty, value) = (fields.next(), fields.next());
        let names: Vec<&str> = fields.collect();
        let mut frames = Vec::new();
        for _ in 0..repeat {
            for (i, f) in names.chunks(3).enumerate() {
                frames.push(Frame {
                    function: opt(f.first().copied()),
                    module: opt(f.get(1).copied()),
                    filename: opt(f.get(2).copied()),
                    abs_path: opt(f.get(2).copied()).filter(|_| i % 2 == 1),
                    lineno: Some(i as u32),
                    colno: Some(e as u32),
                    in_app: [None, Some(true), Some(false)][(i + e) % 3],
                    ..Frame::default()
                });
            }
        }
        let stacktrace = if frames.is_empty() { None } else { Some(Stacktrace { frames }) };
        let (stacktrace, thread_id) = if e % 2 == 1 {
            let id: Cow<'_, str> = Cow::Owned(e.to_string());
            ev.threads.push(Thread {
                id: Some(id.clone()),
                name: opt(ty),
                crashed: Some(e % 6 == 1),
                current: Some(e % 6 == 5),
                stacktrace,
            });
            (None, (e % 6 == 3).then_some(id))
        } else {
            (stacktrace, None)
        };
        ev.exception.push(Exception {
            ty: opt(ty),
            value: opt(value),
            mechanism: Some(Mechanism { synthetic: Some(e % 4 == 3), ..Mechanism::default() }),
            stacktrace,
            thread_id,
            ..Exception::default()
        });
        if e == 0 && flags & 8 != 0 {
            ev.fingerprint = chunk.split('\x1f').map(Cow::Borrowed).collect();
        }
    }
    if flags & 0x80 != 0 {
        ev.message = opt(Some(text));
        ev.logentry = Some(LogEntry { message: opt(text.split('\x1e').last()), ..LogEntry::default() });
        ev.exception.clear();
        ev.threads.clear();
    }
    ev
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        normalizers(s);
    }
    let text = String::from_utf8_lossy(data.get(1..).unwrap_or_default());
    let pattern = text.split('\x1f').next().unwrap_or("");
    let mut buf = data.to_vec();
    if let Ok(ev) = tracefold_model::parse_event_slice(&mut buf) {
        check(&ev, pattern);
    }
    if let Some(&flags) = data.first() {
        check(&structured(flags, &text), pattern);
    }
});
