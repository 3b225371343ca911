//! Sentry event payloads (what Sentry SDKs send to `/store/` or inside envelopes), mapped
//! onto tracefold's event model.

use serde_json::{json, Map, Value};

/// Why a Sentry payload could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sentry event: {0}")]
pub struct SentryError(pub String);

fn str_field(v: &Value, key: &str) -> Option<Value> {
    match v.get(key)? {
        Value::String(s) => Some(Value::String(s.clone())),
        Value::Number(n) => Some(Value::String(n.to_string())),
        _ => None,
    }
}

fn copy_strs(from: &Value, to: &mut Map<String, Value>, keys: &[&str]) {
    for k in keys {
        if let Some(v) = str_field(from, k) {
            to.insert((*k).into(), v);
        }
    }
}

/// An object of strings from a Sentry object or list of `[key, value]` pairs.
fn pairs(v: Option<&Value>) -> Option<Value> {
    let mut out = Map::new();
    match v? {
        Value::Object(m) => {
            for (k, val) in m {
                match val {
                    Value::String(s) => out.insert(k.clone(), Value::String(s.clone())),
                    Value::Null => None,
                    other => out.insert(k.clone(), Value::String(other.to_string())),
                };
            }
        }
        Value::Array(items) => {
            for it in items {
                if let (Some(Value::String(k)), Some(val)) = (it.get(0), it.get(1)) {
                    let s = val.as_str().map_or_else(|| val.to_string(), str::to_owned);
                    out.insert(k.clone(), Value::String(s));
                }
            }
        }
        _ => return None,
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

fn frame(f: &Value) -> Value {
    let mut o = Map::new();
    copy_strs(f, &mut o, &["function", "module", "filename", "abs_path", "package", "instruction_addr"]);
    for k in ["lineno", "colno"] {
        if let Some(n) = f.get(k).and_then(Value::as_u64) {
            o.insert(k.into(), json!(n));
        }
    }
    if let Some(b) = f.get("in_app").and_then(Value::as_bool) {
        o.insert("in_app".into(), Value::Bool(b));
    }
    Value::Object(o)
}

fn exception(e: &Value) -> Value {
    let mut o = Map::new();
    copy_strs(e, &mut o, &["type", "value", "module"]);
    if let Some(m) = e.get("mechanism").filter(|m| m.is_object()) {
        let mut mo = Map::new();
        copy_strs(m, &mut mo, &["type"]);
        for k in ["handled", "synthetic"] {
            if let Some(b) = m.get(k).and_then(Value::as_bool) {
                mo.insert(k.into(), Value::Bool(b));
            }
        }
        o.insert("mechanism".into(), Value::Object(mo));
    }
    if let Some(frames) = e.get("stacktrace").and_then(|s| s.get("frames")).and_then(Value::as_array) {
        o.insert("stacktrace".into(), json!({ "frames": frames.iter().map(frame).collect::<Vec<_>>() }));
    }
    Value::Object(o)
}

/// Maps a Sentry event payload onto a tracefold event (as JSON). `project` is set when given.
///
/// # Errors
/// When the payload is not a JSON object.
pub fn to_event(sentry: &Value, project: Option<&str>) -> Result<Value, SentryError> {
    if !sentry.is_object() {
        return Err(SentryError("the payload must be a JSON object".into()));
    }
    let mut o = Map::new();
    if let Some(id) = sentry.get("event_id").and_then(Value::as_str) {
        o.insert("event_id".into(), Value::String(id.replace('-', "")));
    }
    if let Some(p) = project {
        o.insert("project".into(), Value::String(p.into()));
    }
    if let Some(ts) = sentry.get("timestamp").filter(|t| t.is_number() || t.is_string()) {
        o.insert("timestamp".into(), ts.clone());
    }
    copy_strs(sentry, &mut o, &["platform", "level", "release", "environment", "logger", "server_name", "dist"]);
    o.remove("dist");
    match sentry.get("message") {
        Some(Value::String(s)) => {
            o.insert("message".into(), Value::String(s.clone()));
        }
        Some(m @ Value::Object(_)) => {
            if let Some(f) = m.get("formatted").or_else(|| m.get("message")).and_then(Value::as_str) {
                o.insert("message".into(), Value::String(f.into()));
            }
        }
        _ => {}
    }
    if let Some(le) =
        sentry.get("logentry").or_else(|| sentry.get("sentry.interfaces.Message")).filter(|l| l.is_object())
    {
        let mut lo = Map::new();
        copy_strs(le, &mut lo, &["message", "formatted"]);
        if !lo.is_empty() {
            o.insert("logentry".into(), Value::Object(lo));
        }
    }
    let excs = match sentry.get("exception") {
        Some(Value::Object(m)) => m.get("values").and_then(Value::as_array).cloned().unwrap_or_default(),
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    if !excs.is_empty() {
        o.insert("exception".into(), Value::Array(excs.iter().map(exception).collect()));
    }
    if let Some(fp) = sentry.get("fingerprint").and_then(Value::as_array) {
        let fp: Vec<Value> = fp.iter().filter_map(|v| v.as_str().map(|s| Value::String(s.into()))).collect();
        if !fp.is_empty() {
            o.insert("fingerprint".into(), Value::Array(fp));
        }
    }
    if let Some(u) = sentry.get("user").filter(|u| u.is_object()) {
        let mut uo = Map::new();
        copy_strs(u, &mut uo, &["id", "email", "username", "ip_address"]);
        if !uo.is_empty() {
            o.insert("user".into(), Value::Object(uo));
        }
    }
    if let Some(t) = pairs(sentry.get("tags")) {
        o.insert("tags".into(), t);
    }
    if let Some(r) = sentry.get("request").filter(|r| r.is_object()) {
        let mut ro = Map::new();
        copy_strs(r, &mut ro, &["url", "method"]);
        match r.get("query_string") {
            Some(Value::String(q)) => {
                ro.insert("query_string".into(), Value::String(q.clone()));
            }
            Some(q @ (Value::Array(_) | Value::Object(_))) => {
                if let Some(Value::Object(m)) = pairs(Some(q)) {
                    let qs: Vec<String> = m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
                    ro.insert("query_string".into(), Value::String(qs.join("&")));
                }
            }
            _ => {}
        }
        if let Some(h) = pairs(r.get("headers")) {
            ro.insert("headers".into(), h);
        }
        o.insert("request".into(), Value::Object(ro));
    }
    if let Some(c) = sentry.get("contexts").filter(|c| c.is_object()) {
        let mut co = Map::new();
        for k in ["browser", "os", "runtime"] {
            if let Some(x) = c.get(k) {
                let mut xo = Map::new();
                copy_strs(x, &mut xo, &["name", "version"]);
                if !xo.is_empty() {
                    co.insert(k.into(), Value::Object(xo));
                }
            }
        }
        if let Some(d) = c.get("device") {
            let mut dobj = Map::new();
            copy_strs(d, &mut dobj, &["family", "model"]);
            if !dobj.is_empty() {
                co.insert("device".into(), Value::Object(dobj));
            }
        }
        if !co.is_empty() {
            o.insert("contexts".into(), Value::Object(co));
        }
    }
    if let Some(s) = sentry.get("sdk") {
        let mut so = Map::new();
        copy_strs(s, &mut so, &["name", "version"]);
        if !so.is_empty() {
            o.insert("sdk".into(), Value::Object(so));
        }
    }
    Ok(Value::Object(o))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let ev = to_event(&sentry, Some("api")).unwrap();
        assert_eq!(ev["event_id"], "fc6d8c0c43fc46308ea5bc7a3b7d3c64");
        assert_eq!(ev["exception"][0]["stacktrace"]["frames"][1]["function"], "profile");
        assert_eq!(ev["exception"][0]["stacktrace"]["frames"][1].get("vars"), None);
        assert_eq!(ev["user"]["id"], "7");
        assert_eq!(ev["tags"]["route"], "/profile");
        assert_eq!(ev["request"]["query_string"], "a=1");
        assert_eq!(ev["contexts"]["browser"]["name"], "Chrome");
        let text = ev.to_string();
        let parsed = crate::parse_event_str(&text).unwrap();
        crate::validate(&parsed, 1_795_671_540_000).unwrap();
        assert_eq!(parsed.fingerprint.len(), 2);
    }

    #[test]
    fn maps_message_events_and_rejects_non_objects() {
        let ev =
            to_event(&json!({"message": {"formatted": "disk full"}, "logentry": {"message": "disk %s full"}}), None)
                .unwrap();
        assert_eq!(ev["message"], "disk full");
        assert_eq!(ev["logentry"]["message"], "disk %s full");
        assert!(to_event(&json!([1]), None).is_err());
    }
}
