//! Grouping quality, measured: a seeded generator of labeled events (the true bug of every
//! event is known) with the variation real traffic has, scored by pairwise precision, recall
//! and F1 for tracefold's grouping and for two baselines on the same corpus.
//!
//! Variation within one bug: line and column shifts between releases, new bundle hashes,
//! compiler-generated name suffixes that change per build (Java lambdas and CGLIB proxies,
//! Go closures, .NET async state machines, Rust symbol hashes, Ruby ERB methods), ids,
//! timestamps and addresses in messages, different distant callers, recursion depth,
//! Chrome/Firefox/Safari naming, an extra `<anonymous>` frame, library versions in vendor
//! paths, and minified builds. Across bugs: bugs that share an exception type and message
//! template, bugs reported through the same error helper, bugs that differ only in the
//! exception type, and log messages that differ only in their template.
//!
//! Two families of what grouping used to miss: crashes whose exception carries no stack (native
//! and JVM SDKs put it on the crashed thread, in `threads`), where distinct bugs raise the same
//! type and message from different code; and log lines without a template whose quoted values
//! and file paths (`'Zoë'`, `/var/data/user8812/export_77.csv`) vary per event.

mod baselines;
pub mod sourcemaps;

pub use baselines::{posthog_key, swetrix_key};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;

const PLATFORMS: &[&str] = &["javascript", "node", "python", "java", "go", "ruby", "php", "csharp", "rust"];
const WORDS: &[&str] = &[
    "cart", "order", "invoice", "user", "session", "payment", "report", "shipment", "coupon", "profile", "search",
    "token", "ledger", "refund", "basket", "review", "stock", "quote",
];
const VERBS: &[&str] = &["load", "save", "render", "validate", "fetch", "apply", "parse", "sync", "resolve", "charge"];

/// One true bug.
#[derive(Debug, Clone)]
struct Bug {
    platform: &'static str,
    ty: String,
    /// Message template with `{id}`, `{ms}`, `{ts}`, `{addr}` holes.
    template: String,
    /// (module or file stem, function), oldest first; the last is the crash site.
    frames: Vec<(String, String)>,
    /// Reported through a shared helper (frames of the helper are at the crash end).
    helper: bool,
    /// A log message without an exception.
    message_only: bool,
    /// A crash whose exception has no stack: the crashed thread's stack (in `threads`) is
    /// the bug's; every such bug of one family raises the same type and message.
    thread_crash: bool,
    /// A log line without a template, with quoted values and file paths in it.
    log_values: bool,
    /// A JavaScript bug whose frames are a real bug of the source-map fixtures (its index
    /// there): original frames from the unbundled app, or, in minified events, the frames V8
    /// reported in one of the six minified builds.
    fixture: Option<usize>,
}

/// Corpus options.
#[derive(Debug, Clone)]
pub struct CorpusOptions {
    /// True bugs.
    pub bugs: usize,
    /// Events.
    pub events: usize,
    /// Seed.
    pub seed: u64,
}

fn make_bugs(n: usize, rng: &mut SmallRng) -> Vec<Bug> {
    let mut bugs = Vec::with_capacity(n);
    for k in 0..n {
        let platform = PLATFORMS[k % PLATFORMS.len()];
        let noun = WORDS[(k / PLATFORMS.len()) % WORDS.len()];
        let verb = VERBS[(k / (PLATFORMS.len() * WORDS.len())) % VERBS.len()];
        // Families of three: same type and message template, different code paths.
        let family = k / 3;
        let ty = match platform {
            "javascript" | "node" => ["TypeError", "RangeError", "Error"][family % 3].to_string(),
            "python" => ["KeyError", "ValueError", "TimeoutError"][family % 3].to_string(),
            "java" => ["java.lang.NullPointerException", "java.lang.IllegalStateException"][family % 2].to_string(),
            "go" => "*errors.errorString".to_string(),
            "ruby" => ["NoMethodError", "ActiveRecord::RecordNotFound"][family % 2].to_string(),
            "php" => ["ErrorException", "TypeError"][family % 2].to_string(),
            "csharp" => ["System.NullReferenceException", "System.InvalidOperationException"][family % 2].to_string(),
            _ => "panic".to_string(),
        };
        let template = format!("{} {{id}} failed after {{ms}}ms at {{ts}} (0x{{addr}})", WORDS[family % WORDS.len()]);
        let depth = 3 + rng.gen_range(0..4);
        let mut frames: Vec<(String, String)> =
            (0..depth).map(|d| (format!("{noun}_{}", d % 2), format!("{verb}{}{d}k{k}", capitalize(noun)))).collect();
        let helper = k % 5 == 1;
        if helper {
            frames.push(("errors".into(), "reportError".into()));
            frames.push(("errors".into(), "buildReport".into()));
        }
        let message_only = k % 11 == 7;
        let log_values = !message_only && k % 11 == 5;
        let thread_crash = !message_only && !log_values && k % 10 == 3;
        let (ty, template) = if thread_crash {
            // Families of three same-message crashes (k = 3, 13, 23; 33, 43, 53; ...), told
            // apart only by the crashed thread's stack.
            ("SIGSEGV".to_string(), format!("{} worker crashed at 0x{{addr}}", WORDS[(k / 30) % WORDS.len()]))
        } else if log_values {
            let (noun, verb) = (WORDS[(k / 11) % WORDS.len()], VERBS[(k / 11 / WORDS.len()) % VERBS.len()]);
            (
                String::new(),
                format!(
                    "could not {verb} {noun} '{{name}}': open /var/data/{noun}/user{{id}}/export_{{ms}}.csv failed"
                ),
            )
        } else {
            (ty, template)
        };
        // JavaScript exceptions take a real bug of the fixtures while there are enough (60:
        // the first 540 bugs).
        let fixture = (platform == "javascript" && !message_only && !log_values && !thread_crash)
            .then_some(k / PLATFORMS.len())
            .filter(|i| *i < sourcemaps::table().original.len());
        let ty = fixture.map_or(ty, |i| sourcemaps::table().original[i].ty.clone());
        bugs.push(Bug { platform, ty, template, frames, helper, message_only, thread_crash, log_values, fixture });
    }
    bugs
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
}

/// A labeled event.
#[derive(Debug, Clone)]
pub struct Labeled {
    /// True bug index.
    pub bug: usize,
    /// Event JSON.
    pub json: String,
}

/// Generates the corpus.
pub fn corpus(opts: &CorpusOptions) -> Vec<Labeled> {
    let mut rng = SmallRng::seed_from_u64(opts.seed);
    let bugs = make_bugs(opts.bugs, &mut rng);
    (0..opts.events)
        .map(|_| {
            let b = rng.gen_range(0..bugs.len());
            Labeled { bug: b, json: render_event(&bugs[b], b, &mut rng) }
        })
        .collect()
}

fn render_event(bug: &Bug, k: usize, rng: &mut SmallRng) -> String {
    let release: u32 = rng.gen_range(0..6);
    let build_hash = xxhash_rust::xxh3::xxh3_64(&[k as u8, release as u8]);
    let message = bug
        .template
        .replace("{id}", &rng.gen_range(1..1_000_000u32).to_string())
        .replace("{ms}", &rng.gen_range(5..30_000u32).to_string())
        .replace(
            "{ts}",
            &format!("2026-11-{:02}T{:02}:{:02}:00Z", rng.gen_range(1..28), rng.gen_range(0..24), rng.gen_range(0..60)),
        )
        .replace("{addr}", &format!("{:x}", rng.gen::<u32>() | 0x1000_0000));
    const NAMES: &[&str] = &["alice", "Zoë Ørsted", "山田 太郎", "o'brien", "bob.smith", "Łukasz", "😀 fan", "x"];
    let message =
        if bug.log_values { message.replace("{name}", NAMES[rng.gen_range(0..NAMES.len())]) } else { message };
    let mut j = String::with_capacity(2048);
    let _ = write!(j, r#"{{"platform":"{}","release":"r{release}","#, bug.platform);
    if bug.log_values {
        // Logs without a template: only the formatted line, its values in quotes and paths.
        let text = serde_json::to_string(&message).expect("a string serializes");
        let _ = write!(j, r#""message":{text}}}"#);
        return j;
    }
    if bug.message_only {
        // Logs: the template groups, the formatted text varies.
        let _ = write!(j, r#""logentry":{{"message":"{} %s failed","formatted":"{}"}}}}"#, bug.frames[0].1, message);
        return j;
    }
    let browser = rng.gen_range(0..3);
    // (Thread crashes come from native and JVM SDKs, whose frames have names.)
    let minified = bug.platform == "javascript" && !bug.thread_crash && rng.gen_bool(0.1);
    if let Some(fx) = bug.fixture {
        let t = sourcemaps::table();
        let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
        let frames: Vec<String> = if minified {
            let url = quote(&t.builds[release as usize].url);
            t.stacks[release as usize][fx]
                .frames
                .iter()
                .map(|(f, l, c)| {
                    format!(r#"{{"function":{},"filename":{url},"lineno":{l},"colno":{c},"in_app":true}}"#, quote(f))
                })
                .collect()
        } else {
            t.original[fx]
                .frames
                .iter()
                .map(|(f, file, l, c)| {
                    format!(
                        r#"{{"function":{},"filename":{},"lineno":{l},"colno":{c},"in_app":true}}"#,
                        quote(f),
                        quote(file)
                    )
                })
                .collect()
        };
        let _ = write!(
            j,
            r#""exception":[{{"type":"{}","value":"{}","stacktrace":{{"frames":[{}]}}}}]}}"#,
            bug.ty,
            message,
            frames.join(",")
        );
        return j;
    }
    let mut frames: Vec<String> = Vec::new();
    // Distant callers: 0-4 random outer frames beyond the cap, then a fixed pad of callers.
    for _ in 0..rng.gen_range(0..5) {
        let caller = format!("route{}", rng.gen_range(0..50));
        frames.push(frame(bug.platform, "routes", &caller, true, release, build_hash, browser, minified, rng));
    }
    for i in 0..10 {
        frames.push(frame(
            bug.platform,
            "server",
            &format!("dispatch{i}"),
            true,
            release,
            build_hash,
            browser,
            minified,
            rng,
        ));
    }
    if bug.platform == "javascript" && rng.gen_bool(0.3) {
        frames.push(r#"{"function":"<anonymous>","filename":"<anonymous>","in_app":false}"#.into());
    }
    let last = bug.frames.len() - 1 - if bug.helper { 2 } else { 0 };
    for (i, (module, func)) in bug.frames.iter().enumerate() {
        let repeat = if i == last { 1 + rng.gen_range(0..4) } else { 1 };
        for _ in 0..repeat {
            frames.push(frame(bug.platform, module, func, true, release, build_hash, browser, minified, rng));
        }
    }
    // A library frame at the crash end, its version changing between releases.
    frames.push(frame(
        bug.platform,
        &format!("vendor@1.{release}.0"),
        "invoke",
        false,
        release,
        build_hash,
        browser,
        minified,
        rng,
    ));
    if bug.thread_crash {
        // The exception has no stack; the crashed thread has it, named by the exception's
        // `thread_id` in half the events and only marked `crashed` in the others. Thread ids
        // and names change from event to event; the main thread idles, marked `current`.
        let tid = rng.gen_range(2..100_000u32);
        let by_id = rng.gen_bool(0.5);
        let idle: Vec<String> = [("runtime", "main"), ("runtime", "park"), ("runtime", "wait")]
            .iter()
            .map(|(m, f)| frame(bug.platform, m, f, false, release, build_hash, browser, false, rng))
            .collect();
        let crashed = if by_id { "" } else { r#""crashed":true,"# };
        let thread_id = if by_id { format!(r#","thread_id":{tid}"#) } else { String::new() };
        let _ = write!(
            j,
            r#""exception":[{{"type":"{}","value":"{}"{thread_id}}}],"threads":[{{"id":1,"name":"main","current":true,"stacktrace":{{"frames":[{}]}}}},{{"id":{tid},"name":"worker-{}",{crashed}"stacktrace":{{"frames":[{}]}}}}]}}"#,
            bug.ty,
            message,
            idle.join(","),
            tid % 16,
            frames.join(",")
        );
        return j;
    }
    let _ = write!(
        j,
        r#""exception":[{{"type":"{}","value":"{}","stacktrace":{{"frames":[{}]}}}}]}}"#,
        bug.ty,
        message,
        frames.join(",")
    );
    j
}

#[allow(clippy::too_many_arguments)]
fn frame(
    platform: &str,
    module: &str,
    func: &str,
    in_app: bool,
    release: u32,
    build: u64,
    browser: u32,
    minified: bool,
    rng: &mut SmallRng,
) -> String {
    let line = 10 + rng.gen_range(0..4) * 3 + release * 17;
    let col = rng.gen_range(1..80);
    let short = (build % 1000) as u32;
    match platform {
        "javascript" => {
            let f = if minified && in_app {
                String::from_utf8(vec![b'a' + ((build ^ func.len() as u64) % 26) as u8]).expect("ascii")
            } else {
                match browser {
                    0 => format!("Object.{func}"),
                    1 => format!("{func}/<"),
                    _ => func.to_string(),
                }
            };
            let bundle = if in_app { "main" } else { "vendor" };
            let col = if minified { 100 + (func.len() as u32 * 37) + release * 11 } else { col };
            format!(
                r#"{{"function":"{f}","filename":"https://cdn.example.com/static/js/{bundle}.{:08x}.js","lineno":1,"colno":{col},"in_app":{in_app}}}"#,
                build as u32
            )
        }
        "node" => format!(
            r#"{{"function":"async Service.{func}","filename":"/app/{}/{module}.js","lineno":{line},"colno":{col},"in_app":{in_app}}}"#,
            if in_app { "src" } else { "node_modules" }
        ),
        "python" => format!(
            r#"{{"function":"{func}","module":"app.{module}","filename":"app/{module}.py","lineno":{line},"in_app":{in_app}}}"#
        ),
        "java" => {
            // Whether a method is a lambda body or proxied is a property of the code; the
            // generated suffixes change from build to build.
            let (m, f) = match xxhash_rust::xxh3::xxh3_64(func.as_bytes()) % 3 {
                0 => (format!("com.example.{module}.Service$$EnhancerBySpringCGLIB$${short:x}"), func.to_string()),
                1 => (format!("com.example.{module}.Service"), format!("lambda${func}${}", release % 3)),
                _ => (format!("com.example.{module}.Service"), func.to_string()),
            };
            format!(
                r#"{{"function":"{f}","module":"{m}","filename":"Service.java","lineno":{line},"in_app":{in_app}}}"#
            )
        }
        "go" => format!(
            r#"{{"function":"{module}.{func}.func{}","module":"example.com/svc/{module}","filename":"{module}.go","lineno":{line},"in_app":{in_app}}}"#,
            1 + release % 3
        ),
        "ruby" => format!(
            r#"{{"function":"block in {func}","filename":"app/models/{module}.rb","lineno":{line},"in_app":{in_app}}}"#
        ),
        "php" => format!(
            r#"{{"function":"App\\{module}::{func}","filename":"app/Http/{module}.php","lineno":{line},"in_app":{in_app}}}"#
        ),
        "csharp" => format!(
            r#"{{"function":"MoveNext","module":"Shop.{module}+<{func}>d__{}","lineno":{line},"in_app":{in_app}}}"#,
            release + 3
        ),
        _ => format!(
            r#"{{"function":"svc::{module}::{func}::h{build:016x}","filename":"src/{module}.rs","lineno":{line},"in_app":{in_app}}}"#
        ),
    }
}

/// Pairwise scores of one grouping.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Scores {
    /// Of the pairs put together, the share that are the same bug.
    pub precision: f64,
    /// Of the pairs of the same bug, the share put together.
    pub recall: f64,
    /// Harmonic mean.
    pub f1: f64,
    /// Distinct keys (issues).
    pub issues: usize,
}

/// Scores `keys[i]` (predicted issue of event i) against `truth[i]`.
pub fn score<K: std::hash::Hash + Eq>(truth: &[usize], keys: &[K]) -> Scores {
    let pairs = |n: u64| n * n.saturating_sub(1) / 2;
    let mut cell: HashMap<(usize, &K), u64> = HashMap::new();
    let mut by_key: HashMap<&K, u64> = HashMap::new();
    let mut by_bug: HashMap<usize, u64> = HashMap::new();
    for (t, k) in truth.iter().zip(keys) {
        *cell.entry((*t, k)).or_default() += 1;
        *by_key.entry(k).or_default() += 1;
        *by_bug.entry(*t).or_default() += 1;
    }
    let tp: u64 = cell.values().map(|n| pairs(*n)).sum();
    let predicted: u64 = by_key.values().map(|n| pairs(*n)).sum();
    let actual: u64 = by_bug.values().map(|n| pairs(*n)).sum();
    let precision = if predicted == 0 { 1.0 } else { tp as f64 / predicted as f64 };
    let recall = if actual == 0 { 1.0 } else { tp as f64 / actual as f64 };
    let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
    Scores { precision, recall, f1, issues: by_key.len() }
}

/// The three groupings scored on one corpus.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Events in the corpus.
    pub events: usize,
    /// True bugs.
    pub bugs: usize,
    /// Seed.
    pub seed: u64,
    /// tracefold's grouping.
    pub tracefold: Scores,
    /// tracefold's grouping with minified frames first symbolicated with the fixtures' maps.
    pub tracefold_maps: Scores,
    /// The JavaScript bugs drawn from the source-map fixtures.
    pub minified: MinifiedFamily,
    /// Swetrix-style key.
    pub swetrix: Scores,
    /// PostHog-style key.
    pub posthog: Scores,
}

/// The bugs of the corpus drawn from the source-map fixtures: how many issues their events make
/// without and with the maps.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct MinifiedFamily {
    /// Bugs drawn from the fixtures.
    pub bugs: usize,
    /// Their events.
    pub events: usize,
    /// Of those, events with minified frames.
    pub minified_events: usize,
    /// Issues their events make without maps.
    pub issues_without_maps: usize,
    /// Issues their events make with every minified frame symbolicated first.
    pub issues_with_maps: usize,
}

/// Generates a corpus and scores tracefold (without and with source maps) and both baselines
/// on it.
pub fn evaluate(opts: &CorpusOptions) -> Report {
    let events = corpus(opts);
    let fixture_bug: Vec<bool> =
        make_bugs(opts.bugs, &mut SmallRng::seed_from_u64(opts.seed)).iter().map(|b| b.fixture.is_some()).collect();
    let cfg = tracefold_fingerprint::GroupingConfig::default();
    let mut scratch = tracefold_fingerprint::Scratch::default();
    let truth: Vec<usize> = events.iter().map(|e| e.bug).collect();
    let (mut ours, mut mapped, mut swetrix, mut posthog) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut family = MinifiedFamily::default();
    let (mut fam_truth, mut fam_ours, mut fam_mapped) = (Vec::new(), Vec::new(), Vec::new());
    for e in &events {
        let ev = tracefold_model::parse_event_str(&e.json).unwrap_or_else(|err| panic!("{err}: {}", e.json));
        let key = tracefold_fingerprint::fingerprint(&ev, &cfg, &mut scratch).0;
        let symbolicated = sourcemaps::symbolicate_event(&e.json);
        let key_mapped = if symbolicated == e.json {
            key
        } else {
            let ev =
                tracefold_model::parse_event_str(&symbolicated).unwrap_or_else(|err| panic!("{err}: {symbolicated}"));
            tracefold_fingerprint::fingerprint(&ev, &cfg, &mut scratch).0
        };
        if fixture_bug[e.bug] {
            family.events += 1;
            family.minified_events += usize::from(symbolicated != e.json);
            fam_truth.push(e.bug);
            fam_ours.push(key);
            fam_mapped.push(key_mapped);
        }
        ours.push(key);
        mapped.push(key_mapped);
        swetrix.push(swetrix_key(&ev));
        posthog.push(posthog_key(&ev));
    }
    family.bugs = fixture_bug.iter().filter(|b| **b).count();
    family.issues_without_maps = score(&fam_truth, &fam_ours).issues;
    family.issues_with_maps = score(&fam_truth, &fam_mapped).issues;
    Report {
        events: events.len(),
        bugs: opts.bugs,
        seed: opts.seed,
        tracefold: score(&truth, &ours),
        tracefold_maps: score(&truth, &mapped),
        minified: family,
        swetrix: score(&truth, &swetrix),
        posthog: score(&truth, &posthog),
    }
}

/// The report as a terminal table.
pub fn render(r: &Report) -> String {
    use crate::render::{table, Align};
    let row = |name: &str, s: &Scores| {
        vec![
            name.to_owned(),
            format!("{:.4}", s.precision),
            format!("{:.4}", s.recall),
            format!("{:.4}", s.f1),
            s.issues.to_string(),
        ]
    };
    let mut out = format!("{} events of {} true bugs (seed {})\n\n", r.events, r.bugs, r.seed);
    out.push_str(&table(
        &[
            ("grouping", Align::Left),
            ("precision", Align::Right),
            ("recall", Align::Right),
            ("F1", Align::Right),
            ("issues", Align::Right),
        ],
        &[
            row("tracefold v1", &r.tracefold),
            row("tracefold v1 + source maps", &r.tracefold_maps),
            row("Swetrix-style", &r.swetrix),
            row("PostHog-style", &r.posthog),
        ],
        40,
    ));
    let m = &r.minified;
    let _ = write!(
        out,
        "\nJavaScript bugs from the source-map fixtures: {} bugs, {} events ({} minified, six builds): {} issues without maps, {} with\n",
        m.bugs, m.events, m.minified_events, m.issues_without_maps, m.issues_with_maps
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_scores() {
        let s = score(&[0, 0, 1, 1], &["a", "a", "b", "b"]);
        assert_eq!((s.precision, s.recall, s.f1), (1.0, 1.0, 1.0));
        let merged = score(&[0, 0, 1, 1], &["a", "a", "a", "a"]);
        assert!((merged.precision - 2.0 / 6.0).abs() < 1e-9 && merged.recall == 1.0);
        let split = score(&[0, 0, 0], &["a", "b", "c"]);
        assert_eq!((split.precision, split.recall), (1.0, 0.0));
    }

    /// The two families grouping used to miss, scored alone: crashes without an exception
    /// stack are told apart by the crashed thread's stack, and log lines with quoted values and
    /// paths make one issue per template.
    #[test]
    fn thread_crashes_and_log_values_group_by_bug() {
        let events = corpus(&CorpusOptions { bugs: 220, events: 8000, seed: 5 });
        let bugs = make_bugs(220, &mut SmallRng::seed_from_u64(5));
        let cfg = tracefold_fingerprint::GroupingConfig::default();
        let mut scratch = tracefold_fingerprint::Scratch::default();
        for family in [|b: &Bug| b.thread_crash, |b: &Bug| b.log_values] {
            let picked: Vec<&Labeled> = events.iter().filter(|e| family(&bugs[e.bug])).collect();
            assert!(picked.len() > 300, "{}", picked.len());
            let truth: Vec<usize> = picked.iter().map(|e| e.bug).collect();
            let keys: Vec<u128> = picked
                .iter()
                .map(|e| {
                    let ev = tracefold_model::parse_event_str(&e.json).unwrap();
                    tracefold_fingerprint::fingerprint(&ev, &cfg, &mut scratch).0
                })
                .collect();
            let s = score(&truth, &keys);
            assert_eq!((s.precision, s.recall), (1.0, 1.0), "{s:?}");
        }
    }

    /// The JavaScript bugs drawn from the source-map fixtures: without maps each minified
    /// build of a bug is an issue of its own; with the maps a bug seen in all six builds (and
    /// unminified) is one issue, and no two bugs share one.
    #[test]
    fn with_source_maps_a_bug_in_six_builds_is_one_issue() {
        let opts = CorpusOptions { bugs: 60, events: 24000, seed: 11 };
        let events = corpus(&opts);
        let bugs = make_bugs(opts.bugs, &mut SmallRng::seed_from_u64(opts.seed));
        let cfg = tracefold_fingerprint::GroupingConfig::default();
        let mut scratch = tracefold_fingerprint::Scratch::default();
        let mut keys: HashMap<usize, (std::collections::HashSet<u128>, std::collections::HashSet<u128>)> =
            HashMap::new();
        let mut builds: HashMap<usize, std::collections::HashSet<String>> = HashMap::new();
        for e in events.iter().filter(|e| bugs[e.bug].fixture.is_some()) {
            let fp = |json: &str, scratch: &mut tracefold_fingerprint::Scratch| {
                tracefold_fingerprint::fingerprint(&tracefold_model::parse_event_str(json).unwrap(), &cfg, scratch).0
            };
            let entry = keys.entry(e.bug).or_default();
            entry.0.insert(fp(&e.json, &mut scratch));
            entry.1.insert(fp(&sourcemaps::symbolicate_event(&e.json), &mut scratch));
            for b in &sourcemaps::table().builds {
                if e.json.contains(&b.url) {
                    builds.entry(e.bug).or_default().insert(b.url.clone());
                }
            }
        }
        let in_six: Vec<usize> = builds.iter().filter(|(_, b)| b.len() == 6).map(|(k, _)| *k).collect();
        assert!(in_six.len() >= 3, "bugs seen in all six builds: {in_six:?} of {builds:?}");
        for k in &in_six {
            let (without, with) = &keys[k];
            assert!(without.len() >= 7, "bug {k} without maps: {} issues", without.len());
            assert_eq!(with.len(), 1, "bug {k} with maps: {} issues", with.len());
        }
        let all_mapped: std::collections::HashSet<u128> = keys.values().flat_map(|(_, w)| w.iter().copied()).collect();
        assert_eq!(all_mapped.len(), keys.len(), "one issue per bug, none shared");
        let r = evaluate(&opts);
        assert!(r.tracefold_maps.f1 >= 0.995, "{}", render(&r));
        assert_eq!(r.minified.issues_with_maps, r.minified.bugs, "{}", render(&r));
    }

    #[test]
    fn tracefold_meets_the_target_and_beats_both_baselines() {
        let r = evaluate(&CorpusOptions { bugs: 120, events: 6000, seed: 11 });
        assert!(r.tracefold.f1 >= 0.97, "{}", render(&r));
        assert!(r.tracefold.f1 > r.swetrix.f1 && r.tracefold.f1 > r.posthog.f1, "{}", render(&r));
    }
}
