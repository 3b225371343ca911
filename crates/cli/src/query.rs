//! The analyst views of the command line (`tracefold top`, `tracefold issue`): choosing the
//! issue an id names, and rendering for the terminal. The queries are `tracefold-store`'s.

pub use tracefold_store::issues::{IssueDetail, TopIssue};
use tracefold_store::Client;

/// Renders top issues as a terminal table (every cell [printable](crate::render::printable)).
/// Rows of `--by growth` carry the previous window's events: a `BEFORE` column shows them.
pub fn render_top(rows: &[TopIssue]) -> String {
    use crate::render::{prefix, rebucket, sparkline, table, thousands, Align};
    if rows.is_empty() {
        return "no issues in this window\n".into();
    }
    let growth = rows.iter().any(|r| r.previous.is_some());
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row =
                vec![prefix(&r.issue_id, 12).to_owned(), r.project.clone(), r.title.clone(), thousands(r.count)];
            if growth {
                row.push(r.previous.map(thousands).unwrap_or_default());
            }
            row.extend([
                if r.users_approximate { format!("~{}", thousands(r.users)) } else { thousands(r.users) },
                r.first_seen.replace('T', " ").trim_end_matches('Z').to_owned(),
                r.last_seen.replace('T', " ").trim_end_matches('Z').to_owned(),
                sparkline(&rebucket(&r.last_hour, 30)),
            ]);
            row
        })
        .collect();
    let mut headers =
        vec![("ISSUE", Align::Left), ("PROJECT", Align::Left), ("TITLE", Align::Left), ("EVENTS", Align::Right)];
    if growth {
        headers.push(("BEFORE", Align::Right));
    }
    headers.extend([
        ("USERS", Align::Right),
        ("FIRST SEEN", Align::Left),
        ("LAST SEEN", Align::Left),
        ("LAST HOUR", Align::Left),
    ]);
    let mut out = table(&headers, &body, 60);
    if rows.iter().any(|r| r.users_approximate) {
        out.push_str(&format!(
            "~ users estimated from daily sketches: {}\n",
            tracefold_store::issues::USERS_SKETCH_ERROR
        ));
    }
    out
}

/// The line under a table answered from a precomputed ranking: when it was ranked, how long
/// ago, how often rankings are computed, and how to count now instead.
pub fn ranked_note(r: &tracefold_store::rankings::Ranked) -> String {
    format!("{}: the answer as of then; --fresh to compute now", r.describe())
}

/// One row of `top --format json` answered from a precomputed ranking: the row as the live
/// query's, with `cached`, `ranked_at` (RFC 3339), `ranked_age_seconds` and `refresh_seconds`.
#[derive(serde::Serialize)]
pub struct CachedRow<'a> {
    #[serde(flatten)]
    row: &'a TopIssue,
    cached: bool,
    ranked_at: String,
    ranked_age_seconds: u32,
    refresh_seconds: u32,
}

/// The rows of `top --format json` answered from a precomputed ranking ([`CachedRow`]).
pub fn cached_json<'a>(rows: &'a [TopIssue], r: &tracefold_store::rankings::Ranked) -> Vec<CachedRow<'a>> {
    let at = tracefold_model::time::format_rfc3339(i64::from(r.computed_at) * 1000).replace(".000Z", "Z");
    rows.iter()
        .map(|row| CachedRow {
            row,
            cached: true,
            ranked_at: at.clone(),
            ranked_age_seconds: r.age(),
            refresh_seconds: r.refresh_seconds,
        })
        .collect()
}

/// Looks up one issue (`project` disambiguates an id seen in several projects).
///
/// # Errors
/// When ClickHouse does not answer, the issue is unknown, or the id is ambiguous.
pub async fn issue_detail(
    client: &Client,
    db: &str,
    issue_id: &str,
    project: Option<&str>,
    window_hours: u32,
) -> anyhow::Result<IssueDetail> {
    let issue = tracefold_store::issues::resolve_issue(client, db, issue_id, project).await?;
    Ok(tracefold_store::issues::issue_detail(client, db, issue, window_hours).await?)
}

/// Renders an issue for the terminal: every event-derived text
/// [printable](crate::render::printable).
pub fn render_issue(d: &IssueDetail) -> String {
    use crate::render::{printable as p, sparkline, table, thousands, Align};
    let mut out = format!(
        "{}  [{}] {}\n{}\n\n  project   {}\n  level     {}   platform {}   grouping {}\n  seen      {} .. {}\n  events    {}   users {}\n\n  last {} hours  {}\n\n",
        p(&d.issue_id),
        d.status,
        p(&d.title),
        p(&d.culprit),
        p(&d.project),
        p(&d.level),
        p(&d.platform),
        p(&d.grouping_version),
        p(&d.first_seen),
        p(&d.last_seen),
        thousands(d.count),
        thousands(d.users),
        d.hourly.len(),
        sparkline(&d.hourly),
    );
    // Issues merged into this one by a late source map: their events are counted above.
    if let Some(alias) = &d.asked_alias {
        out.push_str(&format!("  {} was merged into this issue (its events came before a source map)\n", p(alias)));
    }
    if !d.merged.is_empty() {
        let list: Vec<String> = d
            .merged
            .iter()
            .map(|m| format!("{} ({} events, first seen {})", p(&m.issue_id), thousands(m.count), p(&m.first_seen)))
            .collect();
        out.push_str(&format!("  merged:   {}\n", list.join(", ")));
    }
    if d.asked_alias.is_some() || !d.merged.is_empty() {
        out.push('\n');
    }
    let rows = |v: &[(String, u64)]| -> Vec<Vec<String>> {
        v.iter().map(|(k, n)| vec![if k.is_empty() { "(none)".into() } else { k.clone() }, thousands(*n)]).collect()
    };
    // A list cut at its bound says how many events the values left out have.
    let rest = |out: &mut String, what: &str, rest: Option<u64>| {
        if let Some(n) = rest {
            out.push_str(&format!(
                "  ... {} events of other {what} (the first {} listed)\n",
                thousands(n),
                thousands(tracefold_store::issues::MAX_BREAKDOWN_ROWS)
            ));
        }
    };
    out.push_str(&table(&[("RELEASE", Align::Left), ("EVENTS", Align::Right)], &rows(&d.by_release), 40));
    rest(&mut out, "releases", d.by_release_rest);
    out.push('\n');
    out.push_str(&table(&[("ENVIRONMENT", Align::Left), ("EVENTS", Align::Right)], &rows(&d.by_environment), 40));
    rest(&mut out, "environments", d.by_environment_rest);
    // Browsers, operating systems and URLs: the top values, with their share of the events
    // that have the field (left out when no event has it).
    for (head, top) in [("BROWSER", &d.by_browser), ("OS", &d.by_os), ("URL", &d.by_url)] {
        if top.values.is_empty() {
            continue;
        }
        let rows: Vec<Vec<String>> =
            top.values.iter().map(|(k, n)| vec![k.clone(), thousands(*n), top.share(*n)]).collect();
        out.push('\n');
        out.push_str(&table(&[(head, Align::Left), ("EVENTS", Align::Right), ("SHARE", Align::Right)], &rows, 60));
    }
    if let Some(s) = &d.sample {
        out.push_str(&render_stack(s));
        let pretty = serde_json::from_str::<serde_json::Value>(s)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| s.clone());
        let lines: Vec<&str> = pretty.lines().collect();
        out.push_str("\nsample event:\n");
        for l in lines.iter().take(40) {
            out.push_str("  ");
            // The pretty JSON escapes C0 controls, not DEL, C1 or bidi controls; the raw
            // fallback escapes nothing.
            out.push_str(&p(l));
            out.push('\n');
        }
        if lines.len() > 40 {
            out.push_str(&format!("  ... ({} more lines; --format json shows it all)\n", lines.len() - 40));
        }
    }
    out
}

/// Frames of a stack shown by [`render_issue`] (innermost first).
const STACK_FRAMES: usize = 10;

/// The raised exception's stack of the sample `json`, innermost frame first: `function in
/// file:line:col`; for a frame mapped by a source map, the original source line (`>`) and the
/// minified position it came from. Empty when the sample has no such stack.
fn render_stack(json: &str) -> String {
    use crate::render::printable as p;
    use serde_json::Value;
    let Ok(v) = serde_json::from_str::<Value>(json) else { return String::new() };
    let excs = match &v["exception"] {
        Value::Array(a) => a.as_slice(),
        Value::Object(o) => o.get("values").and_then(Value::as_array).map_or(&[][..], Vec::as_slice),
        _ => &[],
    };
    let Some(frames) = excs.last().and_then(|e| e["stacktrace"]["frames"].as_array()).filter(|f| !f.is_empty()) else {
        return String::new();
    };
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let place = |file: Option<String>, line: &Value, col: &Value| {
        let mut s = file.unwrap_or_else(|| "?".into());
        if let Some(l) = text(line) {
            s.push(':');
            s.push_str(&l);
            if let Some(c) = text(col) {
                s.push(':');
                s.push_str(&c);
            }
        }
        s
    };
    let mut out = String::from(
        "
stack (innermost first):
",
    );
    for f in frames.iter().rev().take(STACK_FRAMES) {
        let file = text(&f["filename"]).or_else(|| text(&f["module"])).or_else(|| text(&f["abs_path"]));
        let func = text(&f["function"]).unwrap_or_else(|| "?".into());
        out.push_str(&format!("  {} in {}\n", p(&func), p(&place(file, &f["lineno"], &f["colno"]))));
        if let Some(line) = text(&f["context_line"]) {
            out.push_str(&format!("      > {}\n", p(line.trim())));
        }
        if f.get("raw_filename").is_some() || f.get("raw_function").is_some() {
            let raw_func = text(&f["raw_function"]).unwrap_or_else(|| "?".into());
            let raw = place(text(&f["raw_filename"]), &f["raw_lineno"], &f["raw_colno"]);
            out.push_str(&format!("      (minified: {} in {})\n", p(&raw_func), p(&raw)));
        }
    }
    if frames.len() > STACK_FRAMES {
        out.push_str(&format!("  ... {} more frames\n", frames.len() - STACK_FRAMES));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_show_mapped_frames_with_their_source_line_and_minified_position() {
        let sample = r#"{"exception":[{"type":"Error","stacktrace":{"frames":[
            {"function":"main","filename":"lib.py","lineno":3},
            {"function":"fail","filename":"src/checkout.ts","lineno":2,"colno":3,"context_line":"  throw new Error('x');\u001b[2J",
             "raw_function":"a","raw_filename":"https://shop.example/static/js/main.3f9a.js","raw_lineno":1,"raw_colno":14}]}}]}"#;
        let out = render_stack(sample);
        assert_eq!(
            out,
            "\nstack (innermost first):\n  fail in src/checkout.ts:2:3\n      > throw new Error('x');\u{FFFD}[2J\n      (minified: a in https://shop.example/static/js/main.3f9a.js:1:14)\n  main in lib.py:3\n",
            "{out}"
        );
        assert_eq!(render_stack("not json"), "");
        assert_eq!(render_stack(r#"{"message":"m"}"#), "");
    }

    const HOSTILE: &str = "\x1b[2J\x1b]0;pwned\x07title\r\n\u{202E}gnp.exe";

    fn no_controls(out: &str) {
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert!(!out.contains('\u{202E}'), "{out:?}");
    }

    #[test]
    fn top_table_prints_event_text_inert() {
        let row = TopIssue {
            project: "web".into(),
            issue_id: "日本語日本語日本語日本語日本語".into(),
            title: HOSTILE.into(),
            culprit: HOSTILE.into(),
            level: "error".into(),
            count: 3,
            previous: None,
            users: 1,
            users_approximate: false,
            first_seen: "2026-11-25T00:00:00Z".into(),
            last_seen: "2026-11-26T05:00:59Z".into(),
            last_hour: vec![0; 60],
            merged: Vec::new(),
        };
        let out = render_top(&[row]);
        no_controls(&out);
        assert!(out.contains("日本語日本語日本語日本語 "), "a 12-character id, cut between characters: {out}");
        assert!(out.contains("\u{FFFD}[2J\u{FFFD}]0;pwned\u{FFFD}title  \u{FFFD}gnp.exe"), "{out}");
    }

    /// A plain row of `top` for the rendering tests.
    fn plain_row() -> TopIssue {
        TopIssue {
            project: "web".into(),
            issue_id: "abc".into(),
            title: "t".into(),
            culprit: "c".into(),
            level: "error".into(),
            count: 3,
            previous: None,
            users: 0,
            users_approximate: false,
            first_seen: "2026-11-25T00:00:00Z".into(),
            last_seen: "2026-11-26T05:00:59Z".into(),
            last_hour: vec![0; 60],
            merged: Vec::new(),
        }
    }

    #[test]
    fn approximate_users_are_marked_and_the_bound_stated() {
        let row = TopIssue { users: 12_345, users_approximate: false, ..plain_row() };
        let exact = render_top(std::slice::from_ref(&row));
        assert!(exact.contains(" 12,345 ") && !exact.contains('~'), "{exact}");
        let approx = render_top(&[TopIssue { users_approximate: true, ..row }]);
        assert!(approx.contains("~12,345"), "{approx}");
        assert!(approx.contains(tracefold_store::issues::USERS_SKETCH_ERROR), "{approx}");
    }

    #[test]
    fn cached_answers_say_when_they_were_ranked() {
        let r = tracefold_store::rankings::Ranked {
            computed_at: 1_795_888_812,
            now: 1_795_888_907,
            refresh_seconds: 300,
            top_k: 1000,
        };
        assert_eq!(
            ranked_note(&r),
            "ranked at 18:00:12 UTC, 1 min 35 s ago, refreshed every 5 min: the answer as of then; --fresh to compute now"
        );
        let row = TopIssue { users: 2, users_approximate: true, ..plain_row() };
        let v = serde_json::to_value(cached_json(std::slice::from_ref(&row), &r)).unwrap();
        assert_eq!(v[0]["cached"], true);
        assert_eq!(v[0]["ranked_at"], "2026-11-28T18:00:12Z");
        assert_eq!(v[0]["ranked_age_seconds"], 95);
        assert_eq!(v[0]["refresh_seconds"], 300);
        assert_eq!(v[0]["issue_id"], "abc");
        assert_eq!(serde_json::from_value::<TopIssue>(v[0].clone()).unwrap(), row, "the live row's fields, unchanged");
    }

    #[test]
    fn issue_view_prints_event_text_inert() {
        let d = IssueDetail {
            project: "web".into(),
            issue_id: "abc".into(),
            title: HOSTILE.into(),
            culprit: HOSTILE.into(),
            exc_type: "TypeError".into(),
            level: "error\x1b[31m".into(),
            platform: "javascript".into(),
            grouping_version: "v1".into(),
            status: tracefold_store::IssueStatus::Active,
            first_seen: "2026-11-25T00:00:00Z".into(),
            last_seen: "2026-11-26T05:00:59Z".into(),
            count: 3,
            users: 1,
            hourly: vec![1, 2],
            by_release: vec![(HOSTILE.into(), 2)],
            by_environment: vec![("prod\u{2066}uction".into(), 2)],
            by_release_rest: Some(12_345),
            by_environment_rest: None,
            by_browser: tracefold_store::issues::Top { values: vec![("Chrome 120".into(), 2)], total: 3 },
            by_os: tracefold_store::issues::Top::default(),
            by_url: tracefold_store::issues::Top { values: vec![(HOSTILE.into(), 1)], total: 3 },
            sample: Some(format!("{{\"message\":\"{}\"}}\nnot json \x1b[2J", "\u{9b}\u{7f}")),
            merged: vec![tracefold_store::issues::MergedAlias {
                issue_id: "s1\x1b[2J".into(),
                count: 1_234,
                first_seen: "2026-11-24T00:00:00Z".into(),
                last_seen: "2026-11-24T01:00:00Z".into(),
            }],
            asked_alias: Some("s1\x1b[2J".into()),
        };
        let out = render_issue(&d);
        no_controls(&out);
        assert!(out.starts_with("abc  [active] \u{FFFD}[2J\u{FFFD}]0;pwned\u{FFFD}title  \u{FFFD}gnp.exe\n"), "{out}");
        assert!(out.contains("prod\u{FFFD}uction"), "{out}");
        assert!(out.contains("\n  ... 12,345 events of other releases (the first 10,000 listed)\n"), "{out}");
        assert!(!out.contains("other environments"), "{out}");
        assert!(out.contains("\n  merged:   s1\u{FFFD}[2J (1,234 events, first seen 2026-11-24T00:00:00Z)\n"), "{out}");
        assert!(out.contains("\n  s1\u{FFFD}[2J was merged into this issue"), "{out}");
        assert!(out.contains("Chrome 120       2  66.7%"), "{out}");
        assert!(out.contains("\nURL ") && !out.contains("\nOS "), "no OS table without values: {out}");
        assert!(out.contains("not json \u{FFFD}[2J"), "{out}");
        // JSON output keeps the text as it is (serde escapes what JSON must).
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<IssueDetail>(&json).unwrap().title, HOSTILE);
    }
}
