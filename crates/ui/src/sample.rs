//! The sample event of an issue as a reader wants it: the exception and its stack trace
//! (innermost frame first, in-app frames highlighted, the frames that made the fingerprint
//! marked), the request, the browser and OS; then the whole event as JSON. Anything the event
//! lacks is left out; nothing here trusts its shape.

use crate::html::Page;
use serde_json::Value;
use tracefold_fingerprint::{contributing_frames, GroupingConfig, StackSource};

fn s(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Most exceptions and frames shown (the whole event follows as JSON anyway; the page says how
/// many it left out).
const MAX_EXCEPTIONS: usize = 16;
const MAX_FRAMES: usize = 256;

/// The marker of a frame that made the fingerprint: a symbol and a word, readable without CSS.
const FP_MARK: &str =
    "<small class=\"fpm\" title=\"this frame made the issue&#39;s fingerprint\">◆ fingerprint</small>";

/// How the issue's fingerprint comes out of the sample, as far as the page shows it.
#[derive(Debug, Default)]
struct Grouping {
    /// Per exception (index in the sample's `exception` list): per frame (index in its
    /// `stacktrace.frames`), whether it made the fingerprint. Empty: nothing marked.
    marked: Vec<Vec<bool>>,
    /// Per exception whose stack came from a thread: that thread's id.
    thread: Vec<(usize, String)>,
    /// The line above the stack traces: how the issue was grouped (static text only).
    note: &'static str,
}

/// Which frames of the sample made the fingerprint `issue_id`, by the fingerprint crate's own
/// walk ([`contributing_frames`]) with `cfg`, the grouper's `[grouping]` section as the UI was
/// given it (`tracefold ui --grouping-from`; `tracefold dev` passes its own). The sample is
/// read by the grouper's parser; the marks are trusted only when the fingerprint it gives is
/// the issue's (else another config, a cut sample or an older grouping version made the issue,
/// and nothing is marked), and when the parsed event's exceptions and frames line up with the
/// JSON the page shows.
fn grouping(json: &str, shown: &[Value], issue_id: &str, cfg: &GroupingConfig) -> Grouping {
    let mut buf = json.as_bytes().to_vec();
    let Ok(event) = tracefold_model::parse_event_slice(&mut buf) else {
        return Grouping {
            note: "The sample is not an event the grouper reads: no frames are marked.",
            ..Grouping::default()
        };
    };
    let c = contributing_frames(&event, cfg);
    if !c.fingerprint.to_hex().eq_ignore_ascii_case(issue_id) {
        return Grouping {
            note: "This sample does not give the issue&#39;s fingerprint with the grouping config the UI was given \
                   (the grouper&#39;s rules not given to the UI, a cut sample or an older grouping version): \
                   no frames are marked.",
            ..Grouping::default()
        };
    }
    let frames_of = |e: &Value| e["stacktrace"]["frames"].as_array().map_or(0, Vec::len);
    let lined_up = shown.len() == event.exception.len()
        && shown
            .iter()
            .zip(&event.exception)
            .all(|(v, e)| frames_of(v) == e.stacktrace.as_ref().map_or(0, |s| s.frames.len()));
    if !lined_up {
        return Grouping {
            note: "The sample&#39;s stack traces could not be lined up with its fingerprint: no frames are marked.",
            ..Grouping::default()
        };
    }
    let mut g = Grouping { marked: shown.iter().map(|v| vec![false; frames_of(v)]).collect(), ..Grouping::default() };
    for e in &c.exceptions {
        match e.stack {
            StackSource::Own => {
                let Some(marks) = g.marked.get_mut(e.exception) else { continue };
                for &i in &e.frames {
                    if let Some(m) = marks.get_mut(i) {
                        *m = true;
                    }
                }
            }
            StackSource::Thread(t) if !e.frames.is_empty() => {
                let id = event.threads.get(t).and_then(|t| t.id.as_deref()).unwrap_or("?");
                g.thread.push((e.exception, id.to_owned()));
            }
            StackSource::Thread(_) => {}
        }
    }
    let any = g.marked.iter().flatten().any(|&m| m) || !g.thread.is_empty();
    g.note = match (c.basis, any) {
        ("exception", true) => "Grouped by the stack trace: the frames marked ◆ fingerprint made the fingerprint.",
        ("exception", false) => "Grouped by the exception type and message (no frame contributed).",
        ("custom", true) => {
            "Grouped by a custom fingerprint with the default grouping: the frames marked ◆ fingerprint contributed."
        }
        ("custom", false) => "Grouped by a custom fingerprint.",
        ("rule", _) => "Grouped by a fingerprint rule.",
        ("message", _) => "Grouped by message.",
        _ => "Grouped as an event without exception or message.",
    };
    g
}

/// Writes the sample `json` (the stored event) of the issue `issue_id`, marking the frames
/// that made its fingerprint under `cfg`.
pub fn render(p: &mut Page, json: &str, issue_id: &str, cfg: &GroupingConfig) {
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
    let g = grouping(json, excs, issue_id, cfg);
    p.raw("<p id=\"grouping\" class=\"c\">").raw(g.note).raw("</p>");
    for (n, e) in excs.iter().take(MAX_EXCEPTIONS).enumerate() {
        p.raw("<h3 class=\"t\">")
            .user(&s(&e["type"]).unwrap_or_default())
            .raw(": ")
            .user(&s(&e["value"]).unwrap_or_default())
            .raw("</h3>");
        if let Some((_, id)) = g.thread.iter().find(|(x, _)| *x == n) {
            p.raw("<p class=\"c\">Without a stack of its own: the stack of thread ")
                .user(id)
                .raw(" (in the whole event below) made the fingerprint.</p>");
        }
        let frames = e["stacktrace"]["frames"].as_array().map_or(&[][..], Vec::as_slice);
        if frames.is_empty() {
            continue;
        }
        let marked = g.marked.get(n).map_or(&[][..], Vec::as_slice);
        p.raw("<ol class=\"frames\">");
        // Innermost (last) first.
        for (i, f) in frames.iter().enumerate().rev().take(MAX_FRAMES) {
            let in_app = f["in_app"].as_bool().unwrap_or(false);
            let fp = marked.get(i).copied().unwrap_or(false);
            p.raw(match (in_app, fp) {
                (true, true) => "<li class=\"frame inapp fp\">",
                (true, false) => "<li class=\"frame inapp\">",
                (false, true) => "<li class=\"frame fp\">",
                (false, false) => "<li class=\"frame\">",
            });
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
            if fp {
                p.raw(" ").raw(FP_MARK);
            }
            // Mapped by a source map: the original lines and the minified position.
            if let Some(line) = s(&f["context_line"]) {
                let lines =
                    |k: &str| f[k].as_array().map_or(Vec::new(), |a| a.iter().filter_map(s).collect::<Vec<_>>());
                p.raw("<pre class=\"context\">");
                for l in lines("pre_context") {
                    p.user(&l).raw("\n");
                }
                p.raw("<strong>").user(&line).raw("</strong>");
                for l in lines("post_context") {
                    p.raw("\n").user(&l);
                }
                p.raw("</pre>");
            }
            if f.get("raw_filename").is_some() || f.get("raw_function").is_some() {
                p.raw("<small class=\"raw\">minified: <code>")
                    .user(&s(&f["raw_function"]).unwrap_or_else(|| "?".into()))
                    .raw("</code> in ")
                    .user(&s(&f["raw_filename"]).unwrap_or_default());
                if let Some(l) = s(&f["raw_lineno"]) {
                    p.raw(":").text(&l);
                    if let Some(c) = s(&f["raw_colno"]) {
                        p.raw(":").text(&c);
                    }
                }
                p.raw("</small>");
            }
            p.raw("</li>");
        }
        p.raw("</ol>");
        if frames.len() > MAX_FRAMES {
            // The outermost frames are left out: said, not hidden.
            p.raw("<p class=\"c more-frames\">")
                .num(frames.len() - MAX_FRAMES)
                .raw(" outer frames not shown (the whole event below has them).</p>");
        }
    }
    if excs.len() > MAX_EXCEPTIONS {
        p.raw("<p class=\"c\" id=\"more-exceptions\">")
            .num(excs.len() - MAX_EXCEPTIONS)
            .raw(" more exceptions not shown (the whole event below has them).</p>");
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
    fn mapped_frames_show_their_source_lines_and_minified_position() {
        let ev = r#"{"exception":[{"type":"Error","value":"x","stacktrace":{"frames":[
            {"function":"fail","filename":"src/checkout.ts","lineno":2,"colno":3,"in_app":true,
             "pre_context":["function fail() {"],"context_line":"  throw new Error('<x>');","post_context":["}"],
             "raw_function":"a","raw_filename":"https://shop.example/static/js/main.3f9a.js","raw_lineno":1,"raw_colno":14}]}}]}"#;
        let mut p = Page::default();
        render(&mut p, ev, &issue_id(ev), &GroupingConfig::default());
        let h = p.finish();
        assert!(h.contains("<code><bdi>fail</bdi></code> in <bdi>src/checkout.ts</bdi>:2:3"), "{h}");
        assert!(
            h.contains("<pre class=\"context\"><bdi>function fail() {</bdi>\n<strong><bdi>  throw new Error(&#39;&lt;x&gt;&#39;);</bdi></strong>\n<bdi>}</bdi></pre>"),
            "{h}"
        );
        assert!(
            h.contains(
                "minified: <code><bdi>a</bdi></code> in <bdi>https://shop.example/static/js/main.3f9a.js</bdi>:1:14"
            ),
            "{h}"
        );
    }

    #[test]
    fn frames_innermost_first_in_app_marked_everything_escaped() {
        let ev = r#"{"exception":[{"type":"<T>","value":"v'\"","stacktrace":{"frames":[
            {"function":"outer","filename":"lib.js","lineno":1,"in_app":false},
            {"function":"<inner>","filename":"app.js","lineno":7,"colno":3,"in_app":true}]}}],
            "request":{"method":"POST","url":"https://x/?a=<b>"},"contexts":{"os":{"name":"Android","version":"15"}}}"#;
        let mut p = Page::default();
        render(&mut p, ev, &issue_id(ev), &GroupingConfig::default());
        let h = p.finish();
        assert!(
            h.contains("<li class=\"frame inapp fp\"><code><bdi>&lt;inner&gt;</bdi></code> in <bdi>app.js</bdi>:7:3"),
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
            for id in ["", "0", "not an id <x>"] {
                let mut p = Page::default();
                render(&mut p, odd, id, &GroupingConfig::default());
                let h = p.finish();
                assert!(!h.contains("<x>") && !h.contains("fpm"), "{odd}");
            }
        }
    }

    /// A stack longer than the page shows (a deep recursion: frames of a few bytes each fit in
    /// a sample by the thousand) or more exceptions than it shows: the page says how many it
    /// left out; it cut them in silence, so the stack looked whole.
    #[test]
    fn frames_and_exceptions_left_out_are_counted() {
        let frames: Vec<_> =
            (0..MAX_FRAMES + 44).map(|i| serde_json::json!({"function": format!("f{i}"), "lineno": i})).collect();
        let ev = serde_json::json!({"exception": [{"type": "RecursionError", "stacktrace": {"frames": frames}}]});
        let h = page(&ev.to_string(), "");
        assert_eq!(items(&h).len(), MAX_FRAMES);
        // Innermost first: the outermost 44 (f0 to f43) are the ones left out.
        assert!(h.contains("<bdi>f44</bdi>") && !h.contains("<bdi>f43</bdi>"), "{h}");
        assert!(h.contains("<p class=\"c more-frames\">44 outer frames not shown"), "{h}");
        assert!(!h.contains("more-exceptions"));
        let excs: Vec<_> = (0..MAX_EXCEPTIONS + 3)
            .map(|i| serde_json::json!({"type": format!("E{i}"), "stacktrace": {"frames": [{"function": "f"}]}}))
            .collect();
        let h = page(&serde_json::json!({ "exception": { "values": excs } }).to_string(), "");
        assert_eq!(h.matches("<h3 ").count(), MAX_EXCEPTIONS);
        assert!(h.contains("id=\"more-exceptions\">3 more exceptions not shown"), "{h}");
        assert!(!h.contains("more-frames"), "{h}");
        // Exactly as many as shown: nothing said.
        let frames: Vec<_> = (0..MAX_FRAMES).map(|i| serde_json::json!({ "function": format!("f{i}") })).collect();
        let h = page(&serde_json::json!({"exception": [{"stacktrace": {"frames": frames}}]}).to_string(), "");
        assert!(!h.contains("more-frames") && !h.contains("not shown"), "{h}");
    }

    /// The issue id the grouper gives `json` (default grouping config).
    fn issue_id(json: &str) -> String {
        let ev = tracefold_model::parse_event_str(json).unwrap();
        tracefold_fingerprint::fingerprint(&ev, &GroupingConfig::default(), &mut Default::default()).to_hex()
    }

    fn page(json: &str, id: &str) -> String {
        let mut p = Page::default();
        render(&mut p, json, id, &GroupingConfig::default());
        p.finish()
    }

    /// The `<li>` of each shown frame, innermost first.
    fn items(h: &str) -> Vec<&str> {
        h.split("<li ").skip(1).map(|li| li.split("</li>").next().unwrap()).collect()
    }

    /// A typical event: library frames around application frames. The in-app frames made the
    /// fingerprint (the grouper's rules say so, not the page's): they are marked, each with its
    /// class and a text marker, under a line saying what the marker means; the others are not.
    #[test]
    fn frames_that_made_the_fingerprint_are_marked() {
        let ev = r#"{"platform":"python","exception":[{"type":"KeyError","value":"'cart'","stacktrace":{"frames":[
            {"function":"run","module":"gunicorn.workers.sync","lineno":1,"in_app":false},
            {"function":"dispatch","module":"django.core.handlers","lineno":2,"in_app":false},
            {"function":"checkout","module":"shop.views","lineno":30,"in_app":true},
            {"function":"load_cart","module":"shop.cart","lineno":12,"in_app":true},
            {"function":"__getitem__","module":"django.utils.datastructures","lineno":9,"in_app":false}]}}]}"#;
        let h = page(ev, &issue_id(ev));
        let li = items(&h);
        assert_eq!(li.len(), 5);
        let fp: Vec<bool> = li.iter().map(|l| l.contains(" fp\"") && l.contains(FP_MARK)).collect();
        // Innermost first: __getitem__, load_cart, checkout, dispatch, run.
        assert_eq!(fp, [false, true, true, false, false], "{h}");
        assert!(li[1].starts_with("class=\"frame inapp fp\"><code><bdi>load_cart</bdi></code>"), "{}", li[1]);
        assert!(li[0].starts_with("class=\"frame\">") && !li[0].contains("fpm"));
        assert_eq!(h.matches("◆ fingerprint</small>").count(), 2);
        assert!(
            h.contains("<p id=\"grouping\" class=\"c\">Grouped by the stack trace: the frames marked ◆ fingerprint")
        );
        // Not the issue's fingerprint (another grouping config made it): nothing marked, said so.
        let h = page(ev, "0123456789abcdef0123456789abcdef");
        assert!(!h.contains("fpm") && !h.contains(" fp\"") && h.contains("no frames are marked"), "{h}");
        // Without in-app marks every frame with a name counts.
        let all = ev.replace("\"in_app\":true", "\"in_app\":false");
        let h = page(&all, &issue_id(&all));
        assert_eq!(h.matches(FP_MARK).count(), 5, "{h}");
    }

    /// With the grouper's stack rules given to the UI, the frames those rules let into the
    /// fingerprint are marked; with the default config the same issue marks nothing (its
    /// fingerprint is not the default one).
    #[test]
    fn the_groupers_rules_given_to_the_ui_decide_the_marks() {
        use tracefold_fingerprint::rules::{FrameMatcher, StackAction, StackRule};
        let ev = r#"{"platform":"python","exception":[{"type":"KeyError","stacktrace":{"frames":[
            {"function":"checkout","module":"shop.views","lineno":30,"in_app":true},
            {"function":"load_cart","module":"shop.cart","lineno":12,"in_app":true},
            {"function":"get","module":"shop.cache","lineno":5,"in_app":true}]}}]}"#;
        // The grouper keeps `shop.cache` out of the fingerprint.
        let rules = GroupingConfig {
            stack_rules: vec![StackRule {
                matcher: FrameMatcher { module: Some("shop.cache".into()), ..FrameMatcher::default() },
                action: StackAction::Exclude,
            }],
            ..GroupingConfig::default()
        };
        let parsed = tracefold_model::parse_event_str(ev).unwrap();
        let id = tracefold_fingerprint::fingerprint(&parsed, &rules, &mut Default::default()).to_hex();
        let mut p = Page::default();
        render(&mut p, ev, &id, &rules);
        let h = p.finish();
        let fp: Vec<bool> = items(&h).iter().map(|l| l.contains(FP_MARK)).collect();
        // Innermost first: get (excluded by the rule), load_cart, checkout.
        assert_eq!(fp, [false, true, true], "{h}");
        let h = page(ev, &id);
        assert!(!h.contains("fpm") && h.contains("no frames are marked"), "{h}");
    }

    /// A message or a custom fingerprint marks no frame; the page says how it was grouped.
    #[test]
    fn message_and_custom_fingerprints_mark_nothing() {
        let msg = r#"{"message":"user 42 not found","level":"error"}"#;
        let h = page(msg, &issue_id(msg));
        assert!(h.contains(">Grouped by message.</p>") && !h.contains("fpm"), "{h}");
        let custom = r#"{"fingerprint":["checkout-down"],"exception":[{"type":"E","stacktrace":{"frames":[
            {"function":"f","module":"m","in_app":true}]}}]}"#;
        let h = page(custom, &issue_id(custom));
        assert!(h.contains(">Grouped by a custom fingerprint.</p>") && !h.contains("fpm"), "{h}");
        // With `{{ default }}` the stack is part of the fingerprint again.
        let spliced = custom.replace("[\"checkout-down\"]", "[\"{{ default }}\",\"x\"]");
        let h = page(&spliced, &issue_id(&spliced));
        assert_eq!(h.matches(FP_MARK).count(), 1, "{h}");
        // An exception without a stack groups by its thread's: the page names the thread.
        let thread = r#"{"exception":[{"type":"E","thread_id":"7<"}],"threads":[
            {"id":"7<","stacktrace":{"frames":[{"function":"work","module":"w"}]}}]}"#;
        let h = page(thread, &issue_id(thread));
        assert!(h.contains("the stack of thread <bdi>7&lt;</bdi>"), "{h}");
    }

    /// Hostile and non-ASCII names in marked frames are escaped and isolated like the others.
    #[test]
    fn marked_frames_stay_escaped() {
        let names = [
            "<script>alert(1)</script>",
            "обработатьЗаказ",
            "日本語::関数",
            "\u{202E}evil\u{202C}",
            "x\"'&y",
            "🙈é\u{0301}",
        ];
        let frames: Vec<_> = names
            .iter()
            .map(|n| serde_json::json!({"function": n, "filename": format!("<{n}>.js"), "in_app": true}))
            .collect();
        let ev = serde_json::json!({"platform":"node","exception":[{"type":"<E>","value":"<v>","stacktrace":{"frames":frames}}]})
            .to_string();
        let h = page(&ev, &issue_id(&ev));
        assert!(!h.contains("<script>") && !h.contains("<E>") && !h.contains("<v>"), "{h}");
        assert!(h.contains("<code><bdi>&lt;script&gt;alert(1)&lt;/script&gt;</bdi></code>"), "{h}");
        assert!(h.contains("<code><bdi>обработатьЗаказ</bdi></code> in <bdi>&lt;обработатьЗаказ&gt;.js</bdi>"));
        assert!(h.contains("<bdi>x&quot;&#39;&amp;y</bdi>"));
        // Every frame has a function name: all of them made the fingerprint.
        assert_eq!(h.matches(FP_MARK).count(), names.len(), "{h}");
    }
}
