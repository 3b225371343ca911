//! Sentry event payloads (what Sentry SDKs send to `/store/` or inside envelopes), mapped
//! onto tracefold's event model: [`map`] builds the typed [`Event`], borrowing the payload's
//! strings; serializing it gives the event JSON of `schemas/event.v1.schema.json`.

use crate::event::{
    Contexts, DebugImage, DebugMeta, Device, Event, Exception, Frame, LogEntry, Mechanism, NameVersion, Request, Sdk,
    Stacktrace, Str, Thread, User, MAX_DEBUG_IMAGES, MAX_THREADS,
};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Why a Sentry payload could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sentry event: {0}")]
pub struct SentryError(pub String);

/// A string field; numbers are taken as their decimal text.
fn str_field<'a>(v: &'a Value, key: &str) -> Option<Str<'a>> {
    match v.get(key)? {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

/// String pairs from a Sentry object or list of `[key, value]` pairs, by key (the last value
/// of a repeated key wins); non-string values as their JSON text, `null` values dropped.
fn pairs(v: Option<&Value>) -> Vec<(Str<'_>, Str<'_>)> {
    let mut out: BTreeMap<&str, Str<'_>> = BTreeMap::new();
    match v {
        Some(Value::Object(m)) => {
            for (k, val) in m {
                match val {
                    Value::String(s) => out.insert(k, Cow::Borrowed(s)),
                    Value::Null => None,
                    other => out.insert(k, Cow::Owned(other.to_string())),
                };
            }
        }
        Some(Value::Array(items)) => {
            for it in items {
                if let (Some(Value::String(k)), Some(val)) = (it.get(0), it.get(1)) {
                    let s = val.as_str().map_or_else(|| Cow::Owned(val.to_string()), Cow::Borrowed);
                    out.insert(k, s);
                }
            }
        }
        _ => {}
    }
    out.into_iter().map(|(k, v)| (Cow::Borrowed(k), v)).collect()
}

/// A line or column number; one that does not fit the model is an error (as it was when the
/// mapped JSON was read back).
fn position(f: &Value, key: &str) -> Result<Option<u32>, SentryError> {
    match f.get(key).and_then(Value::as_u64) {
        None => Ok(None),
        Some(n) => u32::try_from(n).map(Some).map_err(|_| SentryError(format!("frame {key} {n} is out of range"))),
    }
}

fn frame(f: &Value) -> Result<Frame<'_>, SentryError> {
    Ok(Frame {
        function: str_field(f, "function"),
        module: str_field(f, "module"),
        filename: str_field(f, "filename"),
        abs_path: str_field(f, "abs_path"),
        package: str_field(f, "package"),
        lineno: position(f, "lineno")?,
        colno: position(f, "colno")?,
        in_app: f.get("in_app").and_then(Value::as_bool),
        instruction_addr: str_field(f, "instruction_addr"),
    })
}

fn stacktrace(s: Option<&Value>) -> Result<Option<Stacktrace<'_>>, SentryError> {
    match s.and_then(|s| s.get("frames")).and_then(Value::as_array) {
        Some(frames) => Ok(Some(Stacktrace { frames: frames.iter().map(frame).collect::<Result<_, _>>()? })),
        None => Ok(None),
    }
}

/// A thread of Sentry's `threads.values`; `None` for a value that is not an object.
fn thread(t: &Value) -> Result<Option<Thread<'_>>, SentryError> {
    if !t.is_object() {
        return Ok(None);
    }
    Ok(Some(Thread {
        id: str_field(t, "id"),
        name: str_field(t, "name"),
        crashed: t.get("crashed").and_then(Value::as_bool),
        current: t.get("current").and_then(Value::as_bool),
        stacktrace: stacktrace(t.get("stacktrace"))?,
    }))
}

fn exception(e: &Value) -> Result<Exception<'_>, SentryError> {
    let mechanism = e.get("mechanism").filter(|m| m.is_object()).map(|m| Mechanism {
        ty: str_field(m, "type"),
        handled: m.get("handled").and_then(Value::as_bool),
        synthetic: m.get("synthetic").and_then(Value::as_bool),
    });
    Ok(Exception {
        ty: str_field(e, "type"),
        value: str_field(e, "value"),
        module: str_field(e, "module"),
        mechanism,
        stacktrace: stacktrace(e.get("stacktrace"))?,
        thread_id: str_field(e, "thread_id"),
    })
}

/// The event's level: a string as it is (validation checks it), or a Python logging level
/// number as its name (`40` is `error`), which Sentry reads (Python clients send
/// `logging.ERROR`); any other number as its decimal text (refused by validation, as before).
fn level(sentry: &Value) -> Option<Str<'_>> {
    let name = match sentry.get("level").and_then(Value::as_u64) {
        Some(10) => "debug",
        Some(20) => "info",
        Some(30) => "warning",
        Some(40) => "error",
        Some(50) => "fatal",
        _ => return str_field(sentry, "level"),
    };
    Some(Cow::Borrowed(name))
}

/// One value of Sentry's `fingerprint` as the string it stands for, as Sentry reads it: a
/// string as it is, an integer as its decimal text (`1` and `"1"` are one value), a float with
/// no fraction as that integer (`3.0` is `3`; other floats as their JSON text, not truncated
/// as Sentry does, so that `3.5` and `3` stay two values), `true` and `false` as `True` and
/// `False`; `null` is no value. An array or object (Sentry drops those) is its JSON text: two
/// fingerprints that differ only there stay two issues.
fn fingerprint_value(v: &Value) -> Option<Str<'_>> {
    /// Floats from here on are not all integers (2^53).
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Null => None,
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "True" } else { "False" })),
        Value::Number(n) => Some(Cow::Owned(match n.as_f64() {
            Some(f) if !n.is_i64() && !n.is_u64() && f.fract() == 0.0 && f.abs() < EXACT => (f as i64).to_string(),
            _ => n.to_string(),
        })),
        other => Some(Cow::Owned(other.to_string())),
    }
}

/// The values of a Sentry list interface (`exception`, `threads`) in each form Sentry reads:
/// `{"values": [...]}`, a bare list, or one value given as the object itself (`{"type": ...}`,
/// as older clients send one exception); `{}` and anything else are none.
fn values(v: Option<&Value>) -> &[Value] {
    match v {
        Some(Value::Array(a)) => a,
        Some(one @ Value::Object(m)) => match m.get("values") {
            Some(list) => list.as_array().map_or(&[], Vec::as_slice),
            None if m.is_empty() => &[],
            None => std::slice::from_ref(one),
        },
        _ => &[],
    }
}

fn name_version(v: Option<&Value>) -> Option<NameVersion<'_>> {
    let v = v?;
    let nv = NameVersion { name: str_field(v, "name"), version: str_field(v, "version") };
    (nv != NameVersion::default()).then_some(nv)
}

/// Maps a Sentry event payload onto a tracefold event, borrowing its strings. `project` is
/// set when given; `event_id` loses its dashes; fields tracefold does not model are left out.
///
/// # Errors
/// When the payload is not a JSON object, its timestamp is neither Unix seconds nor RFC 3339,
/// or a frame's line or column does not fit 32 bits.
pub fn map<'a>(sentry: &'a Value, project: Option<&'a str>) -> Result<Event<'a>, SentryError> {
    if !sentry.is_object() {
        return Err(SentryError("the payload must be a JSON object".into()));
    }
    let event_id = sentry.get("event_id").and_then(Value::as_str).map(|id| {
        if id.contains('-') {
            Cow::Owned(id.replace('-', ""))
        } else {
            Cow::Borrowed(id)
        }
    });
    let timestamp = match sentry.get("timestamp").filter(|t| t.is_number() || t.is_string()) {
        Some(t) => crate::time::deserialize_opt_millis(t).map_err(|e| SentryError(format!("timestamp: {e}")))?,
        None => None,
    };
    let message = match sentry.get("message") {
        Some(Value::String(s)) => Some(Cow::Borrowed(s.as_str())),
        Some(m @ Value::Object(_)) => {
            m.get("formatted").or_else(|| m.get("message")).and_then(Value::as_str).map(Cow::Borrowed)
        }
        _ => None,
    };
    let logentry = sentry
        .get("logentry")
        .or_else(|| sentry.get("sentry.interfaces.Message"))
        .filter(|l| l.is_object())
        .map(|l| LogEntry { message: str_field(l, "message"), formatted: str_field(l, "formatted") })
        .filter(|l| *l != LogEntry::default());
    let exceptions = values(sentry.get("exception").or_else(|| sentry.get("sentry.interfaces.Exception")));
    // Threads: as exceptions, the first MAX_THREADS objects.
    let threads = values(sentry.get("threads"));
    let mut mapped_threads = Vec::with_capacity(threads.len().min(MAX_THREADS));
    for t in threads {
        if mapped_threads.len() == MAX_THREADS {
            break;
        }
        if let Some(t) = thread(t)? {
            mapped_threads.push(t);
        }
    }
    // A stack at the top level (`stacktrace`, as SDKs attach one to a message event, or the
    // legacy `sentry.interfaces.Stacktrace`) is the stack of the thread that captured the
    // event: the model has threads, not a top-level stack, so it becomes a `current` thread
    // after the others rather than being left out. Grouping reads it as any current thread's:
    // for an exception without a stack of its own (as Sentry moves such a stack into the
    // exception). A frame position out of range leaves it out, as before (the event is not
    // refused for a part it was accepted without).
    let top = sentry.get("stacktrace").or_else(|| sentry.get("sentry.interfaces.Stacktrace"));
    if let Some(stack) = stacktrace(top).ok().flatten().filter(|s| !s.frames.is_empty()) {
        if mapped_threads.len() < MAX_THREADS {
            mapped_threads.push(Thread { current: Some(true), stacktrace: Some(stack), ..Thread::default() });
        }
    }
    let fingerprint = match sentry.get("fingerprint").and_then(Value::as_array) {
        Some(fp) => fp.iter().filter_map(fingerprint_value).collect(),
        None => Vec::new(),
    };
    let user = sentry
        .get("user")
        .filter(|u| u.is_object())
        .map(|u| User {
            id: str_field(u, "id"),
            email: str_field(u, "email"),
            username: str_field(u, "username"),
            ip_address: str_field(u, "ip_address"),
        })
        .filter(|u| *u != User::default());
    let request = sentry.get("request").filter(|r| r.is_object()).map(|r| Request {
        url: str_field(r, "url"),
        method: str_field(r, "method"),
        query_string: match r.get("query_string") {
            Some(Value::String(q)) => Some(Cow::Borrowed(q.as_str())),
            Some(q @ (Value::Array(_) | Value::Object(_))) => {
                let qs = pairs(Some(q));
                (!qs.is_empty())
                    .then(|| Cow::Owned(qs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")))
            }
            _ => None,
        },
        headers: pairs(r.get("headers")),
    });
    let contexts = sentry
        .get("contexts")
        .filter(|c| c.is_object())
        .map(|c| Contexts {
            browser: name_version(c.get("browser")),
            os: name_version(c.get("os")),
            runtime: name_version(c.get("runtime")),
            device: c
                .get("device")
                .map(|d| Device { family: str_field(d, "family"), model: str_field(d, "model") })
                .filter(|d| *d != Device::default()),
        })
        .filter(|c| *c != Contexts::default());
    let sdk = sentry
        .get("sdk")
        .map(|s| Sdk { name: str_field(s, "name"), version: str_field(s, "version") })
        .filter(|s| *s != Sdk::default());
    let debug_meta = debug_meta(sentry.get("debug_meta"));
    Ok(Event {
        event_id,
        project: project.map(Cow::Borrowed),
        timestamp,
        platform: str_field(sentry, "platform"),
        level: level(sentry),
        release: str_field(sentry, "release"),
        environment: str_field(sentry, "environment"),
        logger: str_field(sentry, "logger"),
        server_name: str_field(sentry, "server_name"),
        message,
        logentry,
        exception: exceptions.iter().map(exception).collect::<Result<_, _>>()?,
        threads: mapped_threads,
        fingerprint,
        user,
        tags: pairs(sentry.get("tags")),
        request,
        contexts,
        sdk,
        debug_meta,
    })
}

/// Longest `code_file` and `debug_id` of a debug image kept (a URL, a UUID); longer ones are
/// left out.
pub const MAX_CODE_FILE_LEN: usize = 2048;
/// See [`MAX_CODE_FILE_LEN`].
pub const MAX_DEBUG_ID_LEN: usize = 64;

/// `debug_meta.images` of type `sourcemap` (what the source-map hook reads): at most
/// [`MAX_DEBUG_IMAGES`], each with a string `code_file` and `debug_id` within the bounds;
/// other images (native debug files) are left out.
fn debug_meta(v: Option<&Value>) -> Option<DebugMeta<'_>> {
    let images: Vec<DebugImage<'_>> = v?
        .get("images")?
        .as_array()?
        .iter()
        .filter(|i| i.get("type").and_then(Value::as_str) == Some("sourcemap"))
        .filter_map(|i| {
            let code_file = i.get("code_file")?.as_str().filter(|s| !s.is_empty() && s.len() <= MAX_CODE_FILE_LEN)?;
            let debug_id = i.get("debug_id")?.as_str().filter(|s| !s.is_empty() && s.len() <= MAX_DEBUG_ID_LEN)?;
            Some(DebugImage {
                ty: Some(Cow::Borrowed("sourcemap")),
                code_file: Some(Cow::Borrowed(code_file)),
                debug_id: Some(Cow::Borrowed(debug_id)),
            })
        })
        .take(MAX_DEBUG_IMAGES)
        .collect();
    (!images.is_empty()).then_some(DebugMeta { images })
}

/// [`map`], as the event's JSON (for tools that print or re-read it).
///
/// # Errors
/// As [`map`].
pub fn to_event(sentry: &Value, project: Option<&str>) -> Result<Value, SentryError> {
    let ev = map(sentry, project)?;
    serde_json::to_value(&ev).map_err(|e| SentryError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_sourcemap_debug_images_within_bounds() {
        let long = "x".repeat(MAX_CODE_FILE_LEN + 1);
        let mut images = vec![
            json!({"type": "sourcemap", "code_file": "https://cdn.example.com/main.js", "debug_id": "C0FFEE00-0000-4000-8000-000000000001"}),
            json!({"type": "macho", "code_file": "/usr/lib/x", "debug_id": "abc"}),
            json!({"type": "sourcemap", "code_file": long, "debug_id": "d"}),
            json!({"type": "sourcemap", "code_file": "~/b.js", "debug_id": 7}),
            json!({"type": "sourcemap", "code_file": "~/c.js", "debug_id": "e".repeat(MAX_DEBUG_ID_LEN + 1)}),
        ];
        images
            .extend((0..40).map(
                |i| json!({"type": "sourcemap", "code_file": format!("~/f{i}.js"), "debug_id": format!("id{i}")}),
            ));
        let payload = json!({"message": "m", "debug_meta": {"images": images}});
        let ev = map(&payload, None).unwrap();
        let got = ev.debug_meta.unwrap().images;
        assert_eq!(got.len(), MAX_DEBUG_IMAGES);
        assert_eq!(got[0].code_file.as_deref(), Some("https://cdn.example.com/main.js"));
        assert_eq!(got[0].debug_id.as_deref(), Some("C0FFEE00-0000-4000-8000-000000000001"));
        assert_eq!(got[1].code_file.as_deref(), Some("~/f0.js"));
        for bad in [json!({"message": "m", "debug_meta": {"images": "x"}}), json!({"message": "m", "debug_meta": null})]
        {
            assert_eq!(map(&bad, None).unwrap().debug_meta, None);
        }
    }

    #[test]
    fn maps_a_python_sdk_event() {
        let sentry = json!({
            "event_id": "fc6d8c0c-43fc-4630-8ea5-bc7a3b7d3c64",
            "timestamp": 1795671540.25,
            "platform": "python",
            "level": "error",
            "release": "api@1.4.0",
            "environment": "production",
            "exception": {"values": [{
                "type": "KeyError", "value": "'user'", "module": null,
                "mechanism": {"type": "django", "handled": false},
                "stacktrace": {"frames": [
                    {"function": "get_response", "module": "django.core.handlers.base", "filename": "django/core/handlers/base.py", "lineno": 181, "in_app": false},
                    {"function": "profile", "module": "app.views", "filename": "app/views.py", "lineno": 42, "in_app": true, "vars": {"x": 1}}
                ]}
            }]},
            "user": {"id": 7, "ip_address": "10.0.0.1"},
            "tags": [["route", "/profile"], ["region", "eu"]],
            "request": {"url": "https://api.example.com/profile", "method": "GET", "query_string": [["a", "1"]], "headers": {"User-Agent": "curl"}},
            "contexts": {"browser": {"name": "Chrome", "version": "131"}, "os": {"name": "Linux"}, "trace": {"trace_id": "x"}},
            "sdk": {"name": "sentry.python", "version": "2.19.0"},
            "fingerprint": ["{{ default }}", "profile"]
        });
        let ev = map(&sentry, Some("api")).unwrap();
        assert_eq!(ev.event_id.as_deref(), Some("fc6d8c0c43fc46308ea5bc7a3b7d3c64"));
        assert_eq!(ev.project.as_deref(), Some("api"));
        assert_eq!(ev.timestamp, Some(1_795_671_540_250));
        let frames = &ev.exception[0].stacktrace.as_ref().unwrap().frames;
        assert_eq!(
            (frames[1].function.as_deref(), frames[1].lineno, frames[1].in_app),
            (Some("profile"), Some(42), Some(true))
        );
        assert_eq!(ev.exception[0].mechanism.as_ref().unwrap().handled, Some(false));
        assert_eq!(ev.user.as_ref().unwrap().id.as_deref(), Some("7"));
        assert_eq!(ev.tags, [("region".into(), "eu".into()), ("route".into(), "/profile".into())]);
        let req = ev.request.as_ref().unwrap();
        assert_eq!(req.query_string.as_deref(), Some("a=1"));
        assert_eq!(req.headers, [("User-Agent".into(), "curl".into())]);
        let ctx = ev.contexts.as_ref().unwrap();
        assert_eq!(ctx.browser.as_ref().unwrap().name.as_deref(), Some("Chrome"));
        assert_eq!(ctx.runtime, None);
        assert!(matches!(ev.release, Some(Cow::Borrowed("api@1.4.0"))), "strings borrow from the payload");
        crate::validate(&ev, 1_795_671_540_000).unwrap();
        assert_eq!(ev.fingerprint.len(), 2);
        // Serialized, it reads back as the same event, with both parsers.
        let text = serde_json::to_string(&ev).unwrap();
        assert_eq!(crate::parse_event_str(&text).unwrap(), ev);
        assert_eq!(crate::parse_event_slice(&mut text.clone().into_bytes()).unwrap(), ev);
        let v = to_event(&sentry, Some("api")).unwrap();
        assert_eq!(v["exception"][0]["stacktrace"]["frames"][1].get("vars"), None);
        assert_eq!(v["timestamp"], "2026-11-26T05:39:00.250Z");
    }

    #[test]
    fn maps_message_events_and_rejects_non_objects() {
        let payload = json!({"message": {"formatted": "disk full"}, "logentry": {"message": "disk %s full"}});
        let ev = map(&payload, None).unwrap();
        assert_eq!(ev.message.as_deref(), Some("disk full"));
        assert_eq!(ev.logentry.unwrap().message.as_deref(), Some("disk %s full"));
        assert!(map(&json!([1]), None).is_err());
    }

    #[test]
    fn maps_threads_and_thread_ids() {
        let payload = json!({
            "exception": {"values": [{"type": "SIGSEGV", "value": "Segfault", "thread_id": 2}]},
            "threads": {"values": [
                {"id": 1, "name": "main", "current": true, "stacktrace": {"frames": [{"function": "main"}]}},
                {"id": 2, "name": "вычислитель", "crashed": true, "state": "RUNNABLE",
                 "stacktrace": {"frames": [{"function": "run"}, {"function": "crash", "lineno": 3}], "registers": {}}},
                "not a thread",
                {"id": "worker-3"}
            ]}
        });
        let ev = map(&payload, None).unwrap();
        assert_eq!(ev.exception[0].thread_id.as_deref(), Some("2"));
        assert_eq!(ev.threads.len(), 3);
        let t = &ev.threads[1];
        assert_eq!(
            (t.id.as_deref(), t.name.as_deref(), t.crashed, t.current),
            (Some("2"), Some("вычислитель"), Some(true), None)
        );
        assert_eq!(t.stacktrace.as_ref().unwrap().frames[1].function.as_deref(), Some("crash"));
        assert_eq!(ev.threads[2].id.as_deref(), Some("worker-3"));
        let text = serde_json::to_string(&ev).unwrap();
        assert_eq!(crate::parse_event_str(&text).unwrap(), ev);
        assert_eq!(crate::parse_event_slice(&mut text.clone().into_bytes()).unwrap(), ev);
        // A bare list, bounded; a bad line number in a thread's frame is an error as elsewhere.
        let many: Vec<Value> = (0..MAX_THREADS + 5).map(|i| json!({"id": i})).collect();
        assert_eq!(map(&json!({"message": "m", "threads": many}), None).unwrap().threads.len(), MAX_THREADS);
        let bad = json!({"message": "m", "threads": [{"stacktrace": {"frames": [{"lineno": 5_000_000_000u64}]}}]});
        assert!(map(&bad, None).is_err());
    }

    #[test]
    fn bad_timestamps_and_positions_are_errors() {
        assert!(map(&json!({"message": "m", "timestamp": "yesterday"}), None).is_err());
        assert!(map(&json!({"message": "m", "timestamp": 1e300}), None).is_err());
        let big = json!({"exception": [{"type": "E", "stacktrace": {"frames": [{"lineno": 5_000_000_000u64}]}}]});
        assert!(map(&big, None).unwrap_err().0.contains("lineno"));
        // Ignored, as before: a timestamp of another type, non-object parts.
        let odd = json!({"message": "m", "timestamp": [1], "user": 5, "contexts": {"os": 3}});
        let ev = map(&odd, None).unwrap();
        assert_eq!((ev.timestamp, ev.user, ev.contexts), (None, None, None));
    }

    /// One exception given as the `exception` object itself (older clients; Sentry reads it as
    /// a list of one), or under the legacy `sentry.interfaces.Exception` key, is that exception:
    /// it was no exception at all (the event grouped by its message, or refused without one).
    #[test]
    fn one_exception_as_an_object_is_a_list_of_one() {
        let one = json!({"type": "ZeroDivisionError", "value": "division by zero",
            "stacktrace": {"frames": [{"function": "divide", "module": "calc"}]}});
        for key in ["exception", "sentry.interfaces.Exception"] {
            let mut payload = json!({"message": "m"});
            payload[key] = one.clone();
            let ev = map(&payload, None).unwrap();
            assert_eq!(ev.exception.len(), 1, "{key}");
            assert_eq!(ev.exception[0].ty.as_deref(), Some("ZeroDivisionError"));
            assert_eq!(ev.exception[0].stacktrace.as_ref().unwrap().frames[0].function.as_deref(), Some("divide"));
        }
        // Without a message it is an event (it was refused: no exception, no message).
        let bare = json!({"event_id": "0123456789abcdef0123456789abcdef", "exception": one});
        crate::validate(&map(&bare, Some("web")).unwrap(), 1_795_671_540_000).unwrap();
        // The other forms as before; `{}` and `{"values": null}` are none.
        assert_eq!(
            map(&json!({"exception": {"values": [one.clone(), one.clone()]}}), None).unwrap().exception.len(),
            2
        );
        assert_eq!(map(&json!({"exception": [one.clone()]}), None).unwrap().exception.len(), 1);
        for none in [json!({}), json!({"values": null}), json!("E"), json!(null)] {
            assert!(map(&json!({"message": "m", "exception": none}), None).unwrap().exception.is_empty());
        }
        // A thread as the object itself, too.
        let threads = json!({"message": "m", "threads": {"id": 7, "crashed": true}});
        let t = map(&threads, None).unwrap();
        assert_eq!((t.threads.len(), t.threads[0].crashed), (1, Some(true)));
    }

    /// A top-level `stacktrace` (a message event with a stack attached, or an exception whose
    /// stack the client sent beside it) is kept as the current thread's stack: it was left out,
    /// so the event's stack was lost, and an exception without a stack of its own grouped by
    /// its type and value instead of that stack.
    #[test]
    fn a_top_level_stacktrace_is_the_current_threads() {
        let frames =
            json!({"frames": [{"function": "main", "module": "app"}, {"function": "report", "module": "app.log"}]});
        let msg = json!({"message": "disk full", "stacktrace": frames});
        let ev = map(&msg, None).unwrap();
        assert_eq!(ev.threads.len(), 1);
        assert_eq!(ev.threads[0].current, Some(true));
        assert_eq!(ev.threads[0].stacktrace.as_ref().unwrap().frames[1].function.as_deref(), Some("report"));
        let legacy = json!({"message": "m", "sentry.interfaces.Stacktrace": frames, "threads": [{"id": 1}]});
        let ev = map(&legacy, None).unwrap();
        assert_eq!((ev.threads.len(), ev.threads[1].current), (2, Some(true)));
        // Read back as the same event; no frames or a bad position: no thread, still accepted.
        let text = serde_json::to_string(&map(&msg, None).unwrap()).unwrap();
        assert_eq!(crate::parse_event_str(&text).unwrap(), map(&msg, None).unwrap());
        for odd in [json!({"frames": []}), json!("x"), json!({"frames": [{"lineno": 5_000_000_000u64}]})] {
            let payload = json!({"message": "m", "stacktrace": odd});
            assert!(map(&payload, None).unwrap().threads.is_empty());
        }
    }

    /// A Python logging level number is the level it names, as Sentry reads it: the event is
    /// accepted at that level instead of refused for a level of `"40"`.
    #[test]
    fn python_level_numbers_are_their_names() {
        let level = |v: Value| map(&json!({"message": "m", "level": v}), None).unwrap().level.map(|l| l.into_owned());
        for (n, name) in [(10, "debug"), (20, "info"), (30, "warning"), (40, "error"), (50, "fatal")] {
            assert_eq!(level(json!(n)).as_deref(), Some(name));
            let payload = json!({"event_id": "0123456789abcdef0123456789abcdef", "message": "m", "level": n});
            let ev = map(&payload, Some("web")).unwrap();
            assert_eq!(crate::validate(&ev, 1_795_671_540_000).unwrap().level.as_str(), name);
        }
        // Anything else as before: strings as they are, other numbers as text (refused).
        assert_eq!(level(json!("warning")).as_deref(), Some("warning"));
        assert_eq!(level(json!(45)).as_deref(), Some("45"));
        assert_eq!(level(json!(true)), None);
    }

    /// Numbers and booleans in a fingerprint are values, as Sentry reads them: `["order", 1]`
    /// and `["order", 2]` are two fingerprints (they were both `["order"]`, one issue), and
    /// `[42]` is a custom fingerprint (it was none: the default grouping).
    #[test]
    fn fingerprint_values_that_are_not_strings_are_kept() {
        let fp = |v: Value| {
            let payload = json!({"message": "m", "fingerprint": v});
            map(&payload, None).unwrap().fingerprint.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(fp(json!(["order", 1])), ["order", "1"]);
        assert_ne!(fp(json!(["order", 1])), fp(json!(["order", 2])));
        assert_eq!(fp(json!([42])), ["42"]);
        assert_eq!(fp(json!([-22, 18_446_744_073_709_551_615u64])), ["-22", "18446744073709551615"]);
        assert_eq!(fp(json!([3.0, 3.5, -0.0, 1e300])), ["3", "3.5", "0", "1e+300"]);
        assert_eq!(fp(json!([true, false, null, "{{ default }}"])), ["True", "False", "{{ default }}"]);
        assert_eq!(fp(json!(["a", {"k": 1}, [1, "x"]])), ["a", r#"{"k":1}"#, r#"[1,"x"]"#]);
        assert_eq!(fp(json!([null])), Vec::<String>::new());
        assert_eq!(fp(json!("not a list")), Vec::<String>::new());
        // What the producer publishes reads back as the same event.
        let payload = json!({"message": "m", "fingerprint": ["{{ default }}", 7, true, 2.5]});
        let ev = map(&payload, None).unwrap();
        let text = serde_json::to_string(&ev).unwrap();
        assert_eq!(crate::parse_event_str(&text).unwrap(), ev);
    }

    /// Seconds read from text are the nearest double, whichever parser reads them: serde_json
    /// without `float_roundtrip` read `1795670315.4194999` one unit in the last place high
    /// (`...4195`, 420 ms) where simd-json and the double the SDK meant give 419 ms, so the
    /// producer's Sentry path and the typed event disagreed by a millisecond (a proptest found it).
    #[test]
    fn fractional_seconds_from_text_are_read_exactly() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"message": "m", "timestamp": 1795670315.4194999}"#).unwrap();
        assert_eq!(map(&v, None).unwrap().timestamp, Some(1_795_670_315_419));
    }
}
