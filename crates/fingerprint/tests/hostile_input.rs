//! Property tests: fingerprinting is total on hostile input. Every normalizer takes any
//! string (non-ASCII text cut anywhere, mixed with the ASCII markers the normalizers look
//! for) without panicking and into a bounded output; `fingerprint` and `explain` agree on any
//! event; a long-lived scratch gives the same fingerprints as a fresh one.

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tracefold_fingerprint::limits::{
    MAX_COMPONENT_LEN, MAX_CULPRIT_LEN, MAX_EXC_TYPE_LEN, MAX_MESSAGE_LEN, MAX_TITLE_LEN,
};
use tracefold_fingerprint::{
    contributing_frames, describe, explain, fingerprint, normalize, GroupingConfig, Scratch, StackSource,
};

/// Strings that stress character boundaries: any printable text, CJK, Cyrillic, combining
/// marks, emoji, and the separators and markers the normalizers search for.
fn hostile() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "\\PC{0,8}",
        "[\u{4e00}-\u{4fff}]{1,6}",
        "[а-яА-Я]{1,8}",
        "[a-z\u{0300}-\u{036f}]{1,6}",
        "[\u{1F600}-\u{1F64F}\u{1F980}-\u{1F9AF}]{1,4}",
        "[0-9a-f]{1,20}",
        "[0-9]{1,4}",
        prop::sample::select(vec![
            ".",
            "/",
            "\\",
            "$",
            "$$",
            ":",
            "::",
            "::h",
            "(",
            ")",
            "<",
            ">",
            "@",
            "?",
            "#",
            "=",
            "\"",
            "'",
            "`",
            "'x'",
            " ",
            "\n",
            "__",
            "_",
            "-",
            ",",
            "+<",
            ">d__",
            "b__",
            "$$Lambda$",
            "$fn__",
            ".func",
            ".glob",
            "block in ",
            "block (",
            " in ",
            "class@anonymous",
            "Object.",
            "new ",
            "://",
            "0x",
            "é",
            "ü",
            "日",
            "🦀",
            "\u{301}",
            "Tue,",
            "Nov",
            "GMT",
            "05:39:00",
            "2026-11-26",
            "<anonymous>",
            "[native code]",
            "MoveNext",
        ])
        .prop_map(str::to_owned),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

/// A normalizer of names: input, reusable output buffer.
type Normalizer = fn(&str, &mut String);

fn name_normalizers() -> [(&'static str, Normalizer); 3] {
    [("filename", normalize::filename), ("module", normalize::module), ("function", normalize::function)]
}

fn frame() -> impl Strategy<Value = Value> {
    (
        proptest::option::of(hostile()),
        proptest::option::of(hostile()),
        proptest::option::of(hostile()),
        proptest::option::of(hostile()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(|(function, module, filename, abs_path, in_app, lineno, colno)| {
            let mut o = Map::new();
            let fields = [("function", function), ("module", module), ("filename", filename), ("abs_path", abs_path)];
            for (k, v) in fields {
                if let Some(v) = v {
                    o.insert(k.into(), json!(v));
                }
            }
            if let Some(a) = in_app {
                o.insert("in_app".into(), json!(a));
            }
            if let Some(l) = lineno {
                o.insert("lineno".into(), json!(l));
            }
            if let Some(c) = colno {
                o.insert("colno".into(), json!(c));
            }
            Value::Object(o)
        })
}

fn exception() -> impl Strategy<Value = Value> {
    (
        proptest::option::of(hostile()),
        proptest::option::of(hostile()),
        proptest::option::of(prop::collection::vec(frame(), 0..12)),
        proptest::option::of(any::<bool>()),
        proptest::option::of(thread_id()),
    )
        .prop_map(|(ty, value, frames, synthetic, thread_id)| {
            let mut o = Map::new();
            if let Some(t) = thread_id {
                o.insert("thread_id".into(), t);
            }
            if let Some(t) = ty {
                o.insert("type".into(), json!(t));
            }
            if let Some(v) = value {
                o.insert("value".into(), json!(v));
            }
            if let Some(f) = frames {
                o.insert("stacktrace".into(), json!({ "frames": f }));
            }
            if let Some(s) = synthetic {
                o.insert("mechanism".into(), json!({ "type": "generic", "synthetic": s }));
            }
            Value::Object(o)
        })
}

/// A thread id: a small integer (so that exceptions and threads meet) or a hostile string.
fn thread_id() -> impl Strategy<Value = Value> {
    prop_oneof![(0u32..4).prop_map(|n| json!(n)), hostile().prop_map(|s| json!(s))]
}

/// A thread of Sentry's `threads` interface, with a hostile name and stack.
fn thread() -> impl Strategy<Value = Value> {
    (
        proptest::option::of(thread_id()),
        proptest::option::of(hostile()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(prop::collection::vec(frame(), 0..8)),
    )
        .prop_map(|(id, name, crashed, current, frames)| {
            let mut o = Map::new();
            if let Some(id) = id {
                o.insert("id".into(), id);
            }
            if let Some(n) = name {
                o.insert("name".into(), json!(n));
            }
            if let Some(c) = crashed {
                o.insert("crashed".into(), json!(c));
            }
            if let Some(c) = current {
                o.insert("current".into(), json!(c));
            }
            if let Some(f) = frames {
                o.insert("stacktrace".into(), json!({ "frames": f }));
            }
            Value::Object(o)
        })
}

/// Event JSON built from hostile strings (not validated: fingerprinting must not need it).
fn event() -> impl Strategy<Value = String> {
    (
        proptest::option::of(prop::sample::select(vec![
            "javascript",
            "node",
            "python",
            "rust",
            "java",
            "csharp",
            "go",
        ])),
        prop::collection::vec(exception(), 0..4),
        proptest::option::of(hostile()),
        proptest::option::of(prop::collection::vec(
            prop_oneof![hostile(), Just("{{ default }}".to_owned()), Just(" {{default}} ".to_owned())],
            0..5,
        )),
        proptest::option::of(hostile()),
        prop::collection::vec(thread(), 0..4),
    )
        .prop_map(|(platform, exceptions, message, fp, logger, threads)| {
            let mut o = Map::new();
            if !threads.is_empty() {
                o.insert("threads".into(), json!(threads));
            }
            if let Some(p) = platform {
                o.insert("platform".into(), json!(p));
            }
            if !exceptions.is_empty() {
                o.insert("exception".into(), json!(exceptions));
            }
            if let Some(m) = message {
                o.insert("message".into(), json!(m));
            }
            if let Some(f) = fp {
                o.insert("fingerprint".into(), json!(f));
            }
            if let Some(l) = logger {
                o.insert("logger".into(), json!(l));
            }
            Value::Object(o).to_string()
        })
}

/// A config with every kind of rule, matching some of the hostile strings.
fn ruled_config() -> GroupingConfig {
    serde_json::from_value(json!({
        "max_frames": 4,
        "stack_rules": [
            {"match": {"function": "*::h*"}, "action": "cut"},
            {"match": {"path": "*日*"}, "action": "-app"},
            {"match": {"module": "?*"}, "action": "+app"},
            {"match": {"function": "*$*"}, "action": "-group"},
        ],
        "fingerprint_rules": [
            {"match": {"type": "*я*"}, "fingerprint": ["{{ default }}", "cyrillic"]},
            {"match": {"function": "?"}, "fingerprint": ["one-char"]},
        ],
    }))
    .expect("valid config")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Name normalizers never panic and stay within MAX_COMPONENT_LEN; `js_function` keeps a
    /// part of its input; `dotnet_async` returns parts of its inputs.
    #[test]
    fn name_normalizers_are_total_and_bounded(s in hostile(), t in hostile()) {
        let mut out = String::new();
        for (name, n) in name_normalizers() {
            n(&s, &mut out);
            prop_assert!(out.len() <= MAX_COMPONENT_LEN, "{} of {:?}: {} bytes", name, s, out.len());
        }
        normalize::function(&s, &mut out);
        let before = out.clone();
        normalize::js_function(&mut out);
        prop_assert!(before.contains(out.as_str()), "{:?} -> {:?}", before, out);
        // Idempotent: the last segment of a last segment is itself.
        let once = out.clone();
        normalize::js_function(&mut out);
        prop_assert_eq!(&out, &once);
        let mut raw = s.clone();
        normalize::js_function(&mut raw);
        prop_assert!(raw.len() <= MAX_COMPONENT_LEN);
        if let Some((m, f)) = normalize::dotnet_async(&s, &t) {
            prop_assert!(s.starts_with(m) && s.contains(f));
        }
        if let Some((m, f)) = normalize::dotnet_async(&s, "MoveNext") {
            prop_assert!(s.starts_with(m) && s.contains(f));
        }
    }

    /// Messages: never panic, at most MAX_MESSAGE_LEN bytes, at most two lines, none empty.
    #[test]
    fn message_is_total_and_bounded(parts in prop::collection::vec(hostile(), 0..40)) {
        let s = parts.join(" ");
        for n in [normalize::message, normalize::exception_value] {
            let mut out = String::new();
            n(&s, &mut out);
            prop_assert!(out.len() <= MAX_MESSAGE_LEN);
            prop_assert!(out.split('\n').count() <= 2);
            prop_assert!(out.is_empty() || out.split('\n').all(|l| !l.is_empty()), "{:?}", out);
            // A message is normalized the same whatever the buffer held before.
            let mut dirty = "leftover".repeat(100);
            n(&s, &mut dirty);
            prop_assert_eq!(&dirty, &out);
        }
    }

    /// Parameterizing twice gives the same as once, for messages short enough not to be cut
    /// (a cut can split a token, which then reads differently).
    #[test]
    fn message_is_idempotent_when_not_cut(parts in prop::collection::vec(hostile(), 0..12)) {
        let s = parts.join(" ");
        for n in [normalize::message, normalize::exception_value] {
            let (mut once, mut twice) = (String::new(), String::new());
            n(&s, &mut once);
            prop_assume!(once.len() < MAX_MESSAGE_LEN / 2);
            n(&once, &mut twice);
            prop_assert_eq!(&twice, &once, "input {:?}", s);
        }
    }

    /// `fingerprint` and `explain` agree on any event, with and without rules; a long-lived
    /// scratch gives the fresh result; `describe` is bounded.
    #[test]
    fn fingerprint_and_explain_agree(json in event(), other in event()) {
        let ev = tracefold_model::parse_event_str(&json).expect("generated events parse");
        let ev2 = tracefold_model::parse_event_str(&other).expect("generated events parse");
        for cfg in [GroupingConfig::default(), ruled_config()] {
            let mut scratch = Scratch::default();
            // Warm the scratch with another event first.
            let _ = fingerprint(&ev2, &cfg, &mut scratch);
            let fp = fingerprint(&ev, &cfg, &mut scratch);
            prop_assert_eq!(fp, fingerprint(&ev, &cfg, &mut Scratch::default()));
            prop_assert_eq!(explain(&ev, &cfg).fingerprint, fp.to_hex(), "{}", json);
            // The frames walk is the same walk: same hash, indices within their stacks.
            let c = contributing_frames(&ev, &cfg);
            prop_assert_eq!(c.fingerprint, fp);
            for e in &c.exceptions {
                let stack = match e.stack {
                    StackSource::Own => ev.exception[e.exception].stacktrace.as_ref(),
                    StackSource::Thread(t) => ev.threads[t].stacktrace.as_ref(),
                };
                let n = stack.map_or(0, |s| s.frames.len());
                prop_assert!(e.frames.iter().all(|&i| i < n), "{:?} of {} frames", e, n);
            }
        }
        let meta = describe(&ev);
        prop_assert!(meta.title.len() <= MAX_TITLE_LEN);
        prop_assert!(meta.culprit.len() <= MAX_CULPRIT_LEN);
        prop_assert!(meta.exc_type.len() <= MAX_EXC_TYPE_LEN);
    }
}
