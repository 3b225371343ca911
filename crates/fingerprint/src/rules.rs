//! Grouping rules from the grouper's config: server-side fingerprint rules (first match wins)
//! and stack-trace rules (in-app marking, frames excluded from grouping, cut at
//! error-reporting helpers), plus the built-in knowledge of error machinery (SDK frames,
//! panic and throw borders, runtime entry points, browser and native wrapper frames).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tracefold_model::event::{Event, Frame};

/// `*` matches any run of characters, `?` one character; everything else literally.
/// Time `O(pattern.len() * text.len())` at worst, no allocation; patterns come from the
/// config and are short, so this is linear in the event's text.
pub fn glob(pattern: &str, text: &str) -> bool {
    glob_bytes(pattern.as_bytes(), text.as_bytes(), false)
}

/// [`glob`], ignoring ASCII case.
pub fn glob_ignore_ascii_case(pattern: &str, text: &str) -> bool {
    glob_bytes(pattern.as_bytes(), text.as_bytes(), true)
}

/// Bytes in the UTF-8 character that starts with `lead`.
fn utf8_width(lead: u8) -> usize {
    match lead {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

/// Both inputs are UTF-8 (from `&str`), and `ti` and `mark` only ever rest on character
/// boundaries: `?` and a backtracking `*` step over whole characters, and a literal only
/// matches the same bytes.
fn glob_bytes(p: &[u8], t: &[u8], ignore_case: bool) -> bool {
    let eq = |a: u8, b: u8| if ignore_case { a.eq_ignore_ascii_case(&b) } else { a == b };
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'?' {
            pi += 1;
            ti = (ti + utf8_width(t[ti])).min(t.len());
        } else if pi < p.len() && p[pi] != b'*' && eq(p[pi], t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark = (mark + utf8_width(t[mark])).min(t.len());
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

fn opt_glob(pattern: &Option<String>, value: Option<&str>) -> bool {
    match pattern {
        None => true,
        Some(p) => value.is_some_and(|v| glob(p, v)),
    }
}

/// What a stack-trace rule matches on; every given field must match (globs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FrameMatcher {
    /// Module or package path of the frame.
    pub module: Option<String>,
    /// Function name as reported.
    pub function: Option<String>,
    /// File name or absolute path (either may match; case-insensitive).
    pub path: Option<String>,
    /// Package / binary image.
    pub package: Option<String>,
    /// Event platform.
    pub platform: Option<String>,
}

impl FrameMatcher {
    fn is_empty(&self) -> bool {
        self.module.is_none()
            && self.function.is_none()
            && self.path.is_none()
            && self.package.is_none()
            && self.platform.is_none()
    }

    /// Whether `frame` of an event on `platform` matches.
    pub fn matches(&self, frame: &Frame<'_>, platform: Option<&str>) -> bool {
        !self.is_empty()
            && frame_fields_match(&self.module, &self.function, &self.path, &self.package, frame)
            && opt_glob(&self.platform, platform)
    }
}

/// The frame fields of a matcher (shared by frame and event matchers; allocates nothing).
fn frame_fields_match(
    module: &Option<String>,
    function: &Option<String>,
    path: &Option<String>,
    package: &Option<String>,
    frame: &Frame<'_>,
) -> bool {
    let path_ok = match path {
        None => true,
        Some(p) => [frame.filename.as_deref(), frame.abs_path.as_deref()]
            .into_iter()
            .flatten()
            .any(|v| glob_ignore_ascii_case(p, v)),
    };
    path_ok
        && opt_glob(module, frame.module.as_deref())
        && opt_glob(function, frame.function.as_deref())
        && opt_glob(package, frame.package.as_deref())
}

/// What a stack-trace rule does to the frames it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StackAction {
    /// Mark in-app.
    #[serde(rename = "+app")]
    App,
    /// Mark not in-app.
    #[serde(rename = "-app")]
    NotApp,
    /// Never contributes to the fingerprint.
    #[serde(rename = "-group")]
    Exclude,
    /// An error-reporting helper: this frame and every frame nearer the crash do not contribute.
    #[serde(rename = "cut")]
    Cut,
}

/// `[[grouping.stack_rules]]`: `match = { function = "reportError" }`, `action = "cut"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackRule {
    /// Which frames.
    #[serde(rename = "match")]
    pub matcher: FrameMatcher,
    /// What to do with them.
    pub action: StackAction,
}

/// What a fingerprint rule matches on; every given field must match (globs). Frame fields
/// match when any frame of any exception matches (of the exceptions and frames that
/// fingerprinting considers: see [`crate::limits::MAX_EXCEPTIONS`] and
/// [`crate::limits::MAX_FRAMES_PER_EXCEPTION`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventMatcher {
    /// Exception type of any exception in the chain.
    #[serde(rename = "type")]
    pub ty: Option<String>,
    /// Exception value (message) of any exception in the chain.
    pub value: Option<String>,
    /// The event's message (log template or formatted).
    pub message: Option<String>,
    /// Module of any frame.
    pub module: Option<String>,
    /// Function of any frame.
    pub function: Option<String>,
    /// File name or path of any frame (case-insensitive).
    pub path: Option<String>,
    /// Package of any frame.
    pub package: Option<String>,
    /// Event platform.
    pub platform: Option<String>,
    /// Event level.
    pub level: Option<String>,
    /// Tags that must be present with matching values.
    pub tags: BTreeMap<String, String>,
}

impl EventMatcher {
    /// Whether `event` matches.
    pub fn matches(&self, event: &Event<'_>) -> bool {
        let exceptions = crate::considered_exceptions(event);
        let type_ok = self.ty.is_none() || exceptions.iter().any(|e| opt_glob(&self.ty, e.ty.as_deref()));
        let value_ok = self.value.is_none() || exceptions.iter().any(|e| opt_glob(&self.value, e.value.as_deref()));
        let no_frame_fields =
            self.module.is_none() && self.function.is_none() && self.path.is_none() && self.package.is_none();
        let frames_ok = no_frame_fields
            || exceptions
                .iter()
                .enumerate()
                .flat_map(|(i, e)| {
                    crate::considered_frames(crate::exception_stack(event, e, i + 1 == exceptions.len()).0)
                })
                .any(|f| frame_fields_match(&self.module, &self.function, &self.path, &self.package, f));
        type_ok
            && value_ok
            && frames_ok
            && opt_glob(&self.message, crate::message_source(event))
            && opt_glob(&self.platform, event.platform.as_deref())
            && opt_glob(&self.level, Some(event.level.as_deref().unwrap_or("error")))
            && self.tags.iter().all(|(k, v)| event.tags.iter().any(|(tk, tv)| tk == k && glob(v, tv)))
    }
}

/// `[[grouping.fingerprint_rules]]`: `match = { type = "DatabaseError*" }`,
/// `fingerprint = ["database-unavailable"]` (`{{ default }}` splices the computed one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FingerprintRule {
    /// Which events.
    #[serde(rename = "match")]
    pub matcher: EventMatcher,
    /// The fingerprint they get.
    pub fingerprint: Vec<String>,
}

/// Why a frame does not contribute, when built-in knowledge says so.
pub fn machinery(frame: &Frame<'_>) -> Option<&'static str> {
    let func = frame.function.as_deref().unwrap_or("");
    let module = frame.module.as_deref().unwrap_or("");
    let file = frame.filename.as_deref().or(frame.abs_path.as_deref()).unwrap_or("");
    const SDK_PREFIXES: &[&str] = &[
        "sentry_sdk",
        "raven",
        "io.sentry",
        "github.com/getsentry",
        "Sentry.",
        "sentry::",
        "sentry_core::",
        "tracefold_sdk",
    ];
    if SDK_PREFIXES.iter().any(|p| module.starts_with(p) || func.starts_with(p))
        || (file.contains('@') && file.contains("/@sentry/"))
    {
        return Some("error-reporting SDK frame");
    }
    if matches!(func, "sentryWrapped" | "captureException" | "captureMessage" | "Sentry.captureException") {
        return Some("error-reporting SDK frame");
    }
    if file.starts_with("node:internal") || file.starts_with("internal/") || file == "[native code]" || file == "native"
    {
        return Some("runtime-internal or native frame");
    }
    if func == "eval" || file.starts_with("eval at ") || file == "eval code" || file == "<eval>" {
        return Some("eval frame");
    }
    if is_runtime_start(frame) {
        return Some("runtime start-up frame");
    }
    None
}

/// Frames at the crash end that belong to panic or throw machinery.
pub fn is_panic_border(frame: &Frame<'_>) -> bool {
    let func = frame.function.as_deref().unwrap_or("");
    const PANIC: &[&str] = &[
        "core::panicking::",
        "std::panicking::",
        "rust_begin_unwind",
        "__rust_start_panic",
        "rust_panic",
        "core::result::unwrap_failed",
        "core::option::unwrap_failed",
        "core::option::expect_failed",
        "core::option::Option<T>::unwrap",
        "core::option::Option<T>::expect",
        "core::result::Result<T,E>::unwrap",
        "core::result::Result<T,E>::expect",
        "runtime.gopanic",
        "runtime.panicmem",
        "runtime.sigpanic",
        "runtime.panicIndex",
        "panic",
        "abort",
        "__cxa_throw",
        "_CxxThrowException",
        "RaiseException",
        "objc_exception_throw",
    ];
    PANIC.iter().any(|p| {
        if p.ends_with("::") {
            func.starts_with(p)
        } else {
            func == *p || (func.starts_with(p) && func[p.len()..].starts_with("::h"))
        }
    })
}

/// Frames of the runtime that starts the program (not the program's own `main`).
pub fn is_runtime_start(frame: &Frame<'_>) -> bool {
    let func = frame.function.as_deref().unwrap_or("");
    matches!(
        func,
        "runtime.main" | "runtime.goexit" | "__libc_start_main" | "__libc_start_call_main" | "_start" | "start"
    ) || func.starts_with("std::rt::lang_start")
        || func.starts_with("std::sys::backtrace::__rust_begin_short_backtrace")
        || func == "java.lang.Thread.run"
        || (frame.module.as_deref() == Some("java.lang.Thread") && func == "run")
}

/// Runtime entry points: frames older than the newest of these do not contribute.
pub fn is_entry_point(frame: &Frame<'_>) -> bool {
    let func = frame.function.as_deref().unwrap_or("");
    let file = frame.filename.as_deref().or(frame.abs_path.as_deref()).unwrap_or("");
    matches!(
        func,
        "main" | "main.main" | "runtime.main" | "__libc_start_main" | "_start" | "start" | "processTicksAndRejections"
    ) || func.starts_with("std::rt::lang_start")
        || func == "java.lang.Thread.run"
        || (frame.module.as_deref() == Some("java.lang.Thread") && func == "run")
        || ((file.ends_with("asyncio/base_events.py") || file.ends_with("asyncio/events.py"))
            && matches!(func, "run_until_complete" | "run_forever" | "_run_once" | "_run"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("report*", "reportError"));
        assert!(glob("*Error", "TypeError"));
        assert!(glob("a?c", "abc"));
        assert!(glob("*/vendor/*", "https://x/vendor/a.js"));
        assert!(!glob("report*", "xreport"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("**a*b", "xxaxxb"));
    }

    #[test]
    fn rules_deserialize_from_toml() {
        #[derive(Deserialize)]
        struct C {
            stack_rules: Vec<StackRule>,
            fingerprint_rules: Vec<FingerprintRule>,
        }
        let c: C = toml::from_str(
            r#"
            [[stack_rules]]
            match = { function = "reportError" }
            action = "cut"
            [[stack_rules]]
            match = { path = "*/node_modules/*" }
            action = "-app"
            [[fingerprint_rules]]
            match = { type = "ConnectionError", tags = { service = "db*" } }
            fingerprint = ["database-unavailable"]
            "#,
        )
        .unwrap();
        assert_eq!(c.stack_rules[0].action, StackAction::Cut);
        assert_eq!(c.stack_rules[1].action, StackAction::NotApp);
        assert_eq!(c.fingerprint_rules[0].matcher.tags["service"], "db*");
    }
}
