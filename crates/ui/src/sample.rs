//! The sample event of an issue as a reader wants it: the exception and its stack trace
//! (innermost frame first, in-app frames highlighted), the request, the browser and OS; then
//! the whole event as JSON. Anything the event lacks is left out; nothing here trusts its shape.

use crate::html::Page;
use serde_json::Value;

fn s(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Most exceptions and frames shown (the whole event follows as JSON anyway).
const MAX_EXCEPTIONS: usize = 16;
const MAX_FRAMES: usize = 256;

/// Writes the sample `json` (the stored event).
pub fn render(p: &mut Page, json: &str) {
    let Ok(v) = serde_json::from_str::<Value>(json) else {
        p.raw("<pre id=\"sample\">").text(json).raw("</pre>");
        return;
    };
    // Ours: `exception` is a list; Sentry's: `exception.values`.
    let excs = match &v["exception"] {
        Value::Array(a) => a.as_slice(),
        Value::Object(o) => o.get("values").and_then(Value::as_array).map_or(&[][..], Vec::as_slice),
        _ => &[],
    };
    for e in excs.iter().take(MAX_EXCEPTIONS) {
        p.raw("<h3 class=\"t\">")
            .user(&s(&e["type"]).unwrap_or_default())
            .raw(": ")
            .user(&s(&e["value"]).unwrap_or_default())
            .raw("</h3>");
        let frames = e["stacktrace"]["frames"].as_array().map_or(&[][..], Vec::as_slice);
        if frames.is_empty() {
            continue;
        }
        p.raw("<ol class=\"frames\">");
        // Innermost (last) first.
        for f in frames.iter().rev().take(MAX_FRAMES) {
            let in_app = f["in_app"].as_bool().unwrap_or(false);
            p.raw(if in_app { "<li class=\"frame inapp\">" } else { "<li class=\"frame\">" });
            let file = s(&f["filename"]).or_else(|| s(&f["module"])).or_else(|| s(&f["abs_path"])).unwrap_or_default();
            p.raw("<code>").user(&s(&f["function"]).unwrap_or_else(|| "?".into())).raw("</code> in ").user(&file);
            if let Some(l) = s(&f["lineno"]) {
                p.raw(":").text(&l);
                if let Some(c) = s(&f["colno"]) {
                    p.raw(":").text(&c);
                }
            }
            if in_app {
                p.raw(" <small>in app</small>");
            }
            p.raw("</li>");
        }
        p.raw("</ol>");
    }
    let req = &v["request"];
    let ctx = &v["contexts"];
    let facts = [
        ("Request", [s(&req["method"]), s(&req["url"])].into_iter().flatten().collect::<Vec<_>>().join(" ")),
        (
            "Browser",
            [s(&ctx["browser"]["name"]), s(&ctx["browser"]["version"])]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("OS", [s(&ctx["os"]["name"]), s(&ctx["os"]["version"])].into_iter().flatten().collect::<Vec<_>>().join(" ")),
        ("Release", s(&v["release"]).unwrap_or_default()),
        ("Environment", s(&v["environment"]).unwrap_or_default()),
        ("Server", s(&v["server_name"]).unwrap_or_default()),
    ];
    p.raw("<table id=\"context\"><tbody>");
    for (k, val) in facts.iter().filter(|(_, val)| !val.is_empty()) {
        p.raw("<tr><th>").text(k).raw("</th><td class=\"t\">").user(val).raw("</td></tr>");
    }
    p.raw("</tbody></table>");
    let pretty = serde_json::to_string_pretty(&v).unwrap_or_else(|_| json.to_owned());
    p.raw("<details><summary>Whole event (JSON)</summary><pre id=\"sample\">").text(&pretty).raw("</pre></details>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_innermost_first_in_app_marked_everything_escaped() {
        let ev = r#"{"exception":[{"type":"<T>","value":"v'\"","stacktrace":{"frames":[
            {"function":"outer","filename":"lib.js","lineno":1,"in_app":false},
            {"function":"<inner>","filename":"app.js","lineno":7,"colno":3,"in_app":true}]}}],
            "request":{"method":"POST","url":"https://x/?a=<b>"},"contexts":{"os":{"name":"Android","version":"15"}}}"#;
        let mut p = Page::default();
        render(&mut p, ev);
        let h = p.finish();
        assert!(
            h.contains("<li class=\"frame inapp\"><code><bdi>&lt;inner&gt;</bdi></code> in <bdi>app.js</bdi>:7:3"),
            "{h}"
        );
        assert!(h.find("&lt;inner&gt;").unwrap() < h.find("outer").unwrap(), "innermost first");
        assert!(h.contains("<bdi>&lt;T&gt;</bdi>: <bdi>v&#39;&quot;</bdi>"));
        assert!(h.contains("<bdi>POST https://x/?a=&lt;b&gt;</bdi>") && h.contains("<bdi>Android 15</bdi>"));
        assert!(!h.contains("<b>") && !h.contains("<T>"));
        for odd in [
            "",
            "null",
            "[1,2]",
            "{\"exception\":5}",
            "{\"exception\":{\"values\":[{\"stacktrace\":7}]}}",
            "not json <x>",
        ] {
            let mut p = Page::default();
            render(&mut p, odd);
            assert!(!p.finish().contains("<x>"), "{odd}");
        }
    }
}
