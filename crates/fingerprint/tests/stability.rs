//! Property tests: the fingerprint ignores what must not split an issue and follows what
//! must separate two issues.

use proptest::prelude::*;
use tracefold_fingerprint::{fingerprint, GroupingConfig, Scratch};

#[derive(Debug, Clone)]
struct Shape {
    platform: &'static str,
    ty: String,
    funcs: Vec<String>,
    files: Vec<String>,
}

#[derive(Debug, Clone)]
struct Noise {
    lines: Vec<(u32, u32)>,
    bundle: u32,
    id: u64,
    recursion: usize,
    extra_outer: Vec<String>,
}

fn platform() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["javascript", "node", "python", "java", "go", "ruby", "php", "csharp", "rust"])
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        platform(),
        "[A-Z][a-z]{3,8}Error",
        prop::collection::vec("[a-z]{3,10}", 2..6),
        prop::collection::vec("[a-z]{3,8}", 2..6),
    )
        .prop_map(|(platform, ty, funcs, files)| Shape { platform, ty, funcs, files })
}

fn noise() -> impl Strategy<Value = Noise> {
    (
        prop::collection::vec((1u32..5000, 1u32..300), 30),
        any::<u32>(),
        any::<u64>(),
        0usize..6,
        prop::collection::vec("[a-z]{4,9}", 0..6),
    )
        .prop_map(|(lines, bundle, id, recursion, extra_outer)| Noise {
            lines,
            bundle,
            id,
            recursion,
            extra_outer,
        })
}

/// Builds an event: `extra_outer` frames are callers far from the crash (outside the cap),
/// the shape's frames are the failing code, the last one recursing `recursion` times.
fn event(s: &Shape, n: &Noise, max_frames: usize) -> String {
    let file = |f: &str| match s.platform {
        "javascript" => format!("https://cdn.example.com/js/{f}.{:08x}.js", n.bundle | 0x1000_0000),
        "python" => format!("app/{f}.py"),
        "java" => format!("{f}.java"),
        "go" => format!("{f}.go"),
        "ruby" => format!("app/models/{f}.rb"),
        "php" => format!("app/{f}.php"),
        "csharp" => format!("{f}.cs"),
        "rust" => format!("src/{f}.rs"),
        _ => format!("/srv/app/src/{f}.js"),
    };
    let mut frames = Vec::new();
    let mut line = n.lines.iter().cycle();
    // Enough distant callers to fill the cap, so that `extra_outer` is beyond it.
    for (i, f) in n.extra_outer.iter().enumerate() {
        let (l, c) = line.next().unwrap();
        frames.push(format!(
            r#"{{"function":"outer_{f}{i}","filename":"{}","lineno":{l},"colno":{c},"in_app":true}}"#,
            file("outer")
        ));
    }
    let pad = max_frames.saturating_sub(s.funcs.len());
    for i in 0..pad {
        let (l, c) = line.next().unwrap();
        frames.push(format!(
            r#"{{"function":"caller{i}","filename":"{}","lineno":{l},"colno":{c},"in_app":true}}"#,
            file("callers")
        ));
    }
    for (i, f) in s.funcs.iter().enumerate() {
        let repeat = if i + 1 == s.funcs.len() { 1 + n.recursion } else { 1 };
        for _ in 0..repeat {
            let (l, c) = line.next().unwrap();
            let fname = &s.files[i % s.files.len()];
            frames.push(format!(
                r#"{{"function":"{f}","filename":"{}","lineno":{l},"colno":{c},"in_app":true}}"#,
                file(fname)
            ));
        }
    }
    format!(
        r#"{{"platform":"{}","exception":[{{"type":"{}","value":"item {} missing at 0x{:x}","stacktrace":{{"frames":[{}]}}}}]}}"#,
        s.platform,
        s.ty,
        n.id,
        n.id,
        frames.join(",")
    )
}

fn fp(json: &str) -> u128 {
    let ev = tracefold_model::parse_event_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    fingerprint(&ev, &GroupingConfig::default(), &mut Scratch::default()).0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Lines, columns, bundle hashes, ids in messages, recursion depth and callers beyond the
    /// frame cap never change the fingerprint.
    #[test]
    fn stable_under_noise(s in shape(), a in noise(), b in noise()) {
        let max = GroupingConfig::default().max_frames;
        prop_assert_eq!(fp(&event(&s, &a, max)), fp(&event(&s, &b, max)));
    }

    /// A different failing function or exception type is a different issue.
    #[test]
    fn follows_the_failing_function_and_type(s in shape(), n in noise(), other in "[a-z]{3,10}", ty in "[A-Z][a-z]{3,8}Error") {
        let max = GroupingConfig::default().max_frames;
        let base = fp(&event(&s, &n, max));
        let mut f = s.clone();
        let last = f.funcs.len() - 1;
        prop_assume!(f.funcs[last] != other && other.len() > 2);
        f.funcs[last] = other;
        prop_assert_ne!(base, fp(&event(&f, &n, max)));
        let mut t = s.clone();
        prop_assume!(t.ty != ty);
        t.ty = ty;
        prop_assert_ne!(base, fp(&event(&t, &n, max)));
    }
}

/// The exception of `event(s, n, max)` without its stack, and the stack on a thread: the
/// crashed one, or the one the exception names by `thread_id` (`how`), among other threads.
fn on_thread(s: &Shape, n: &Noise, max: usize, how: u8, tid: u32, name: &str) -> String {
    let full: serde_json::Value = serde_json::from_str(&event(s, n, max)).unwrap();
    let mut exc = full["exception"][0].clone();
    let stack = exc.as_object_mut().unwrap().remove("stacktrace").unwrap();
    let idle = serde_json::json!({"frames": [{"function": "park", "module": "runtime", "in_app": false}]});
    let mut crashed = serde_json::json!({"id": tid, "name": name, "stacktrace": stack});
    match how % 3 {
        0 => crashed["crashed"] = true.into(),
        1 => exc["thread_id"] = tid.into(),
        _ => {
            crashed["crashed"] = true.into();
            exc["thread_id"] = tid.to_string().into();
        }
    }
    let threads = serde_json::json!([
        {"id": tid.wrapping_add(1), "name": "main", "current": true, "stacktrace": idle},
        crashed,
    ]);
    serde_json::json!({"platform": s.platform, "exception": [exc], "threads": threads}).to_string()
}

/// A log line with quoted values and a path with ids in it.
fn log_line(template: &str, value: &str, id: u32) -> String {
    let msg = format!("{template} '{value}' at /var/data/{template}/user{id}/export_{id}.csv and \"{value}\"");
    serde_json::json!({ "message": msg }).to_string()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// An exception whose stack is on its thread groups as the same exception with the stack
    /// (whichever way the thread is found, whatever its id and name); another stack on the
    /// thread is another issue.
    #[test]
    fn thread_stacks_stand_in_for_missing_exception_stacks(
        s in shape(), n in noise(), how in 0u8..3, tid in any::<u32>(), name in "\\PC{0,12}",
        other in "[a-z]{3,10}",
    ) {
        let max = GroupingConfig::default().max_frames;
        let with_stack = fp(&event(&s, &n, max));
        prop_assert_eq!(fp(&on_thread(&s, &n, max, how, tid, &name)), with_stack);
        let mut t = s.clone();
        let last = t.funcs.len() - 1;
        t.funcs[last] = format!("{other}_x");
        prop_assert_ne!(fp(&on_thread(&t, &n, max, how, tid, &name)), with_stack);
    }

    /// Log lines group by template whatever the quoted values (any Unicode) and ids in paths.
    #[test]
    fn log_lines_group_by_template(
        a in "\\PC{1,16}", b in "\\PC{1,16}", ia in any::<u32>(), ib in any::<u32>(),
    ) {
        // Values without the quote that delimits them (a quote inside is another literal).
        prop_assume!(!a.contains(['\'', '"']) && !b.contains(['\'', '"']));
        prop_assert_eq!(fp(&log_line("sync", &a, ia)), fp(&log_line("sync", &b, ib)));
        prop_assert_ne!(fp(&log_line("sync", &a, ia)), fp(&log_line("load", &a, ia)));
    }
}
