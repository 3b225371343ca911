//! The web UI (`tracefold ui`) against a real ClickHouse with known data: the issues list and
//! the issue page show the numbers ClickHouse holds, hostile titles come out escaped, the list
//! pages, and resolve / ignore / reopen change the status only with the operator token.

use tracefold_model::aggregate::{UserSet, DEFAULT_MAX_USERS};
use tracefold_model::{AggregateRecord, BatchRef};
use tracefold_tests::TestDb;

const TOKEN: &str = "s3cret-operator";

#[allow(clippy::too_many_arguments)]
fn rec(
    project: &str,
    issue: &str,
    title: &str,
    at: i64,
    release: &str,
    count: u64,
    users: &[u64],
    n: i64,
) -> AggregateRecord {
    let mut set = UserSet::default();
    for u in users {
        set.insert(u.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, DEFAULT_MAX_USERS);
    }
    AggregateRecord {
        v: 1,
        batch: BatchRef {
            epoch: "t".into(),
            topic: "tracefold.events".into(),
            partition: 0,
            first_offset: n * 100,
            last_offset: n * 100 + 99,
            index: 0,
            count: 1,
        },
        project: project.into(),
        issue_id: issue.into(),
        minute: at.div_euclid(60) * 60,
        release: release.into(),
        environment: "production".into(),
        count,
        users: set,
        first_seen_ms: at * 1000,
        last_seen_ms: at * 1000,
        title: title.into(),
        culprit: format!("{title} in handler"),
        exc_type: "Error".into(),
        level: "error".into(),
        platform: "python".into(),
        grouping_version: "v1".into(),
        sample: format!("{{\"message\":{}}}", serde_json::to_string(title).unwrap()),
        breakdown: Default::default(),
        merged_from: Vec::new(),
    }
}

/// Events of one issue in the last 24 hours and distinct users, as ClickHouse's base table
/// holds them.
async fn truth(db: &TestDb, project: &str, issue: &str) -> (u64, u64) {
    truth_of(db, project, issue, 86_400, None, None).await
}

/// The text of the element with `class="n {class}"` in the list row of `issue`.
fn row_cell(html: &str, issue: &str, class: &str) -> String {
    let row_start = html.find(&format!("data-issue=\"{issue}\"")).unwrap_or_else(|| panic!("no row for {issue}"));
    let row = &html[row_start..];
    let row = &row[..row.find("</tr>").unwrap()];
    let cell = &row[row.find(&format!("class=\"n {class}\">")).unwrap_or_else(|| panic!("no {class} in {row}"))..];
    cell[cell.find('>').unwrap() + 1..cell.find('<').unwrap()].to_owned()
}

/// The text of the element with `id="{id}"`.
fn by_id(html: &str, id: &str) -> String {
    let s = &html[html.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id}"))..];
    s[s.find('>').unwrap() + 1..s.find('<').unwrap()].to_owned()
}

fn hex(i: u64) -> String {
    format!("{i:032x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_show_clickhouse_numbers_escape_hostile_text_and_change_status_with_the_token() {
    let db = TestDb::new("ui").await;
    let t = db.server_now().await;
    let long = "Ü".repeat(20_000);
    let hostile = [
        "<script>alert(\"x\")</script>",
        "\"><img src=x onerror=alert(1)> ' & \"quoted\"",
        "مرحبا \u{202E}evil\u{202C} שלום",
        "中文 ✓ 🙈 e\u{301}",
        long.as_str(),
    ];
    let mut recs = Vec::new();
    for (i, title) in hostile.iter().enumerate() {
        let id = hex(i as u64 + 1);
        let i = i as i64;
        recs.push(rec("web", &id, title, t - 30 * 60, "web@1", 10 + i as u64, &[1, 2, 3], 2 * i));
        recs.push(rec("web", &id, title, t - 5 * 3600, "web@2", 3, &[3, 4 + i as u64], 2 * i + 1));
    }
    // Breakdowns of issue 1: the recent row (10 events) and the one 5 hours ago (3 events).
    {
        use tracefold_model::breakdown::Key;
        let [recent, older, ..] = &mut recs[..] else { unreachable!() };
        let (recent, older) = (&mut recent.breakdown, &mut older.breakdown);
        recent.add(Key::Browser, "Chrome 120", 6);
        recent.add(Key::Browser, hostile[0], 4);
        recent.add(Key::Os, hostile[2], 10);
        for i in 0..10 {
            recent.add(Key::Url, &format!("https://shop.example/日本/{i}"), 1);
        }
        older.add(Key::Browser, "Chrome 120", 3);
        older.add(Key::Url, "https://shop.example/日本/10", 2);
        older.add(Key::Url, "https://shop.example/日本/0", 1);
    }
    recs.push(rec("api", &hex(100), "ApiError", t - 60, "api@1", 7, &[9], 50));
    // 60 issues in one project: more than a page.
    for i in 0..60u64 {
        recs.push(rec("many", &hex(1000 + i), &format!("Many {i}"), t - 120, "m@1", 100 + i, &[i], 100 + i as i64));
    }
    db.insert_records(&recs).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Signals on an embedded Kafka's signals topic, one with a hostile title.
    let topics = tracefold_tests::topics();
    let broker = tracefold_runtime::devbroker::DevBroker::start(1, &topics, Some(2)).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let sig = |minute: &str, issue: &str, title: &str, count: u64| {
        serde_json::to_vec(&tracefold_detector::signal::Signal {
            project: "web".into(),
            issue_id: issue.into(),
            title: title.into(),
            minute: minute.into(),
            count,
            ..Default::default()
        })
        .unwrap()
    };
    let payloads = vec![
        sig("2026-01-01T00:01:00Z", &hex(1), hostile[0], 11),
        sig("2026-01-01T00:02:00Z", &hex(2), "Second", 22),
        b"not a signal".to_vec(),
    ];
    tracefold_tests::publish(&bootstrap, &topics.signals, &payloads).await;
    let signals =
        tracefold_ui::signals::Source { kafka: tracefold_tests::kafka(&bootstrap), topic: topics.signals.clone() };
    let cfg = tracefold_ui::Config {
        clickhouse: db.cfg.clone(),
        signals: Some(signals),
        operator_token: Some(TOKEN.into()),
        ..Default::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tracefold_ui::serve(listener, cfg, async {
        let _ = stop_rx.await;
    }));
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let get = |path: String| {
        let http = http.clone();
        async move {
            let r = http.get(format!("http://{addr}{path}")).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };

    // The list of project web: every issue, with ClickHouse's numbers, titles escaped.
    let (st, html) = get("/?project=web&window=24h".into()).await;
    assert_eq!(st, 200, "{html}");
    assert!(!html.contains("<script>alert") && !html.contains("<img src=x"), "unescaped title");
    assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"));
    assert!(html.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt; &#39; &amp; &quot;quoted&quot;"));
    assert!(html.contains("<bdi>مرحبا \u{202E}evil\u{202C} שלום</bdi>"), "RTL text isolated");
    assert!(html.contains("中文 ✓ 🙈 e\u{301}"));
    assert!(html.contains(&long), "a long title whole");
    assert!(!html.contains("ApiError") && !html.contains("Many 1"), "other projects filtered out");
    for i in 0..hostile.len() as u64 {
        let id = hex(i + 1);
        let (events, users) = truth(&db, "web", &id).await;
        assert_eq!(events, 13 + i);
        assert_eq!(row_cell(&html, &id, "events"), events.to_string(), "{id}");
        assert_eq!(row_cell(&html, &id, "users"), users.to_string(), "{id}");
    }
    // The 1h window holds only the recent aggregates.
    let (_, html) = get("/?project=web&window=1h".into()).await;
    assert_eq!(row_cell(&html, &hex(1), "events"), "10");

    // Pages of 50: the second page holds the other 10, links keep the state.
    let (_, p0) = get("/?project=many&by=events&window=24h".into()).await;
    assert_eq!(p0.matches("<tr data-issue=").count(), 50);
    assert!(p0.contains("href=\"/?by=events&amp;window=24h&amp;project=many&amp;page=1\""), "next link");
    assert!(p0.find("Many 59").unwrap() < p0.find("Many 58").unwrap(), "most events first");
    let (_, p1) = get("/?project=many&by=events&window=24h&page=1".into()).await;
    assert_eq!(p1.matches("<tr data-issue=").count(), 10);
    assert!(p1.contains("Many 0<") && !p1.contains("rel=\"next\""));
    // Pages out of range or not numbers give the last or the first page.
    let (st, last) = get("/?project=many&by=events&window=24h&page=25".into()).await;
    assert_eq!(st, 200);
    assert!(last.contains("No issues in this window.") && last.contains("rel=\"prev\""), "page 20 of 2 is empty");
    for bad in ["-1", "x", "99999999999999999999"] {
        let (st, first) = get(format!("/?project=many&by=events&window=24h&page={bad}")).await;
        assert_eq!((st, first.matches("<tr data-issue=").count()), (200, 50), "{bad}");
    }
    // Hostile parameters are escaped, not run.
    let (st, html) = get("/?project=%22%3E%3Cscript%3E&window=%3Cx%3E&by=%27".into()).await;
    assert_eq!(st, 200);
    assert!(!html.contains("<script>") && html.contains("value=\"&quot;&gt;&lt;script&gt;\""));

    // The signals page: newest first, linked to their issues, titles escaped, the record
    // that is no signal left out.
    let (st, html) = get("/signals".into()).await;
    assert_eq!(st, 200, "{html}");
    let table = &html[html.find("id=\"signals\"").unwrap()..];
    assert_eq!(table.matches("<tr><td>").count(), 2, "{table}");
    assert!(table.find("Second").unwrap() < table.find("&lt;script&gt;").unwrap(), "newest first");
    assert!(table.contains(&format!("href=\"/issues/web/{}?window=24h\"", hex(2))));
    assert!(!html.contains("<script>alert"));

    // The issue page: numbers, escaped title and sample, then status changes.
    let id = hex(1);
    let path = format!("/issues/web/{id}?window=24h");
    let (st, html) = get(path.clone()).await;
    assert_eq!(st, 200, "{html}");
    let (events, users) = truth(&db, "web", &id).await;
    assert_eq!(by_id(&html, "window-events"), events.to_string());
    assert_eq!(by_id(&html, "users"), users.to_string());
    assert_eq!(by_id(&html, "status"), "active");
    assert!(!html.contains("<script>alert"));
    assert!(html.contains("<svg class=\"bars\""), "chart");
    assert!(html.contains("<bdi>web@1</bdi>") && html.contains("<bdi>web@2</bdi>"), "releases");
    assert!(by_id(&html, "sample").contains("&lt;script&gt;"), "sample escaped");
    // Releases: the first one, and a marker where each begins in the window.
    assert!(html.contains("id=\"first-release\"><bdi>web@2</bdi>"), "web@2 came 5 hours ago, web@1 30 minutes ago");
    assert!(html.contains("<title>release web@2</title>") && html.contains("<title>release web@1</title>"));
    assert!(html.find("release web@2<").unwrap() < html.find("release web@1<").unwrap(), "oldest first");
    // Browsers, operating systems, URLs: the top values over the window, with their share of
    // the events that have the field, escaped and isolated.
    let rows_of = |html: &str, id: &str| -> Vec<(String, String, String)> {
        let t = &html[html.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id}"))..];
        let t = &t[t.find("<tbody>").unwrap() + 7..t.find("</tbody>").unwrap()];
        let cell = |c: &str| c[c.find('>').unwrap() + 1..].replace("<bdi>", "").replace("</bdi>", "");
        t.split("<tr>")
            .filter(|r| r.contains("class=\"n\""))
            .map(|r| {
                let c: Vec<&str> = r.split("</td>").collect();
                (cell(c[0]), cell(c[1]), cell(c[2]))
            })
            .collect()
    };
    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        rows_of(&html, "browsers"),
        [s("Chrome 120", "9", "69.2%"), s("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;", "4", "30.8%")]
    );
    assert_eq!(by_id(&html, "browsers-total"), "13");
    assert!(
        html.contains("<bdi>مرحبا \u{202E}evil\u{202C} שלום</bdi></td><td class=\"n\">10</td><td class=\"n\">100.0%")
    );
    let urls = rows_of(&html, "urls");
    assert_eq!(urls.len(), 10, "the top 10 of 11 URLs: {urls:?}");
    assert_eq!(
        urls[..2],
        [s("https://shop.example/日本/0", "2", "15.4%"), s("https://shop.example/日本/10", "2", "15.4%")]
    );
    assert_eq!(
        urls[2..],
        (1..=8).map(|i| s(&format!("https://shop.example/日本/{i}"), "1", "7.7%")).collect::<Vec<_>>()
    );
    assert_eq!(by_id(&html, "urls-total"), "13");
    // The page's 1h window is the current hour (whole hours): the recent row (30 minutes
    // ago) when it fell in this hour, nothing otherwise.
    let (_, recent) = get(format!("/issues/web/{id}?window=1h")).await;
    if (t - 30 * 60) / 3600 == t / 3600 {
        assert_eq!(
            rows_of(&recent, "browsers"),
            [s("Chrome 120", "6", "60.0%"), s("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;", "4", "40.0%")]
        );
        assert_eq!(by_id(&recent, "urls-total"), "10");
    } else {
        assert!(rows_of(&recent, "browsers").is_empty());
        assert_eq!(by_id(&recent, "urls-total"), "0");
    }
    // An issue without breakdowns says so.
    let (_, other) = get(format!("/issues/web/{}?window=24h", hex(2))).await;
    assert!(rows_of(&other, "os").is_empty() && other.contains("No events with this field in the window."));

    let post = |token: &'static str, status: &'static str| {
        let http = http.clone();
        let id = id.clone();
        async move {
            let r = http
                .post(format!("http://{addr}/issues/web/{id}/status"))
                .form(&[("status", status), ("token", token), ("window", "24h"), ("res", "minute")])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.headers().get("location").map(|l| l.to_str().unwrap().to_owned()))
        }
    };
    assert_eq!(post("", "resolved").await.0, 403);
    assert_eq!(post("wrong", "resolved").await.0, 403);
    assert_eq!(post(TOKEN, "deleted").await.0, 400);
    assert_eq!(by_id(&get(path.clone()).await.1, "status"), "active", "refused changes change nothing");
    let (st, loc) = post(TOKEN, "resolved").await;
    // Back to the page as it was: its window and its chart's resolution.
    assert_eq!((st, loc), (303, Some(format!("{path}&res=minute"))));
    let html = get(path.clone()).await.1;
    assert_eq!(by_id(&html, "status"), "resolved");
    assert!(html.contains("<td><bdi>resolved</bdi></td><td><bdi>ui</bdi></td>"), "history");
    let list = get("/?project=web&window=24h".into()).await.1;
    assert!(list.contains(&format!("data-issue=\"{id}\"")));
    let row = &list[list.find(&format!("data-issue=\"{id}\"")).unwrap()..];
    assert!(row[..row.find("</tr>").unwrap()].contains("class=\"s-resolved\">resolved<"), "list shows the status");
    assert_eq!(post(TOKEN, "active").await.0, 303);
    assert_eq!(by_id(&get(path.clone()).await.1, "status"), "active");

    // Unknown issues and projects: 404, also for status changes.
    assert_eq!(get(format!("/issues/api/{id}")).await.0, 404);
    assert_eq!(get("/issues/web/%3Cscript%3E".into()).await.0, 404);
    let r = http
        .post(format!("http://{addr}/issues/nope/{id}/status"))
        .form(&[("status", "resolved"), ("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_operator_token_the_ui_is_read_only() {
    let db = TestDb::new("ui_ro").await;
    let t = db.server_now().await;
    db.insert_records(&[rec("web", &hex(1), "E", t - 60, "r", 1, &[1], 0)]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg =
        tracefold_ui::Config { clickhouse: db.cfg.clone(), signals: None, operator_token: None, ..Default::default() };
    let server = tokio::spawn(tracefold_ui::serve(listener, cfg, std::future::pending()));
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for token in ["", "anything"] {
        let r = http
            .post(format!("http://{addr}/issues/web/{}/status", hex(1)))
            .form(&[("status", "resolved"), ("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403);
    }
    let html = http.get(format!("http://{addr}/issues/web/{}", hex(1))).send().await.unwrap().text().await.unwrap();
    assert_eq!(by_id(&html, "status"), "active");
    server.abort();
}

/// Events and distinct users of one issue since `since` seconds ago, of the events of
/// `environment` and `release` when given, as the base table holds them.
async fn truth_of(
    db: &TestDb,
    project: &str,
    issue: &str,
    since: u64,
    environment: Option<&str>,
    release: Option<&str>,
) -> (u64, u64) {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct T {
        c: u64,
        u: u64,
    }
    let t = db
        .client
        .query(
            "SELECT sum(count) AS c, toUInt64(uniqExactArray(users)) AS u FROM aggregates \
             WHERE project = ? AND issue_id = ? AND minute >= now() - ? \
             AND (? = '' OR environment = ?) AND (? = '' OR release = ?)",
        )
        .bind(project)
        .bind(issue)
        .bind(since)
        .bind(environment.unwrap_or(""))
        .bind(environment.unwrap_or(""))
        .bind(release.unwrap_or(""))
        .bind(release.unwrap_or(""))
        .fetch_one::<T>()
        .await
        .unwrap();
    (t.c, t.u)
}

/// The issue ids of the list's rows, in order.
fn row_ids(html: &str) -> Vec<String> {
    html.split("<tr data-issue=\"").skip(1).map(|r| r[..r.find('"').unwrap()].to_owned()).collect()
}

/// The text of the cell with class `class` (not a number) in the row of `issue`.
fn row_text(html: &str, issue: &str, class: &str) -> String {
    let row = &html[html.find(&format!("data-issue=\"{issue}\"")).unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    let cell = &row[row.find(&format!("class=\"{class}\">")).unwrap_or_else(|| panic!("no {class} in {row}"))..];
    let cell = &cell[cell.find('>').unwrap() + 1..cell.find("</td>").unwrap()];
    cell.replace("<bdi>", "").replace("</bdi>", "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_filters_by_environment_release_status_and_text_sorts_by_last_seen_and_shows_first_releases() {
    let db = TestDb::new("ui_filters").await;
    let t = db.server_now().await;
    let env = |mut r: AggregateRecord, e: &str| {
        r.environment = e.into();
        r
    };
    let (a, b, c, d) = (hex(1), hex(2), hex(3), hex(4));
    let mut recs = vec![
        // A: École, three days ago in r1 (outside 24h), now in r1 (production) and r2 (staging).
        rec("f", &a, "École crash", t - 3 * 86_400, "r1", 11, &[1], 0),
        rec("f", &a, "École crash", t - 600, "r1", 5, &[1, 2], 1),
        env(rec("f", &a, "École crash", t - 7200, "r2", 3, &[3], 2), "staging"),
        // B: Cyrillic title, culprit with ß (rec: "{title} in handler"), first in r3.
        rec("f", &b, "ИВАН Straße failed", t - 3 * 3600, "r3", 1, &[4], 3),
        rec("f", &b, "ИВАН Straße failed", t - 1200, "r1", 6, &[4, 5, 6], 4),
        // C: CJK and emoji, staging r2, the latest.
        env(rec("f", &c, "中文 🙈 crash", t - 60, "r2", 2, &[7], 5), "staging"),
        // D: resolved below.
        rec("f", &d, "plain 100% done_", t - 1800, "r1", 4, &[8], 6),
    ];
    // 60 issues of environment x: more than a page.
    for i in 0..60u64 {
        recs.push(env(rec("g", &hex(1000 + i), &format!("G {i}"), t - 120, "g@1", 100 + i, &[i], 100 + i as i64), "x"));
    }
    db.insert_records(&recs).await;
    let change = tracefold_store::issues::StatusChange {
        project: "f",
        issue_id: &d,
        status: tracefold_store::IssueStatus::Resolved,
        actor: "test",
        release: "",
        note: "",
    };
    tracefold_store::issues::set_status(&db.client, &db.cfg.database, &change).await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg =
        tracefold_ui::Config { clickhouse: db.cfg.clone(), signals: None, operator_token: None, ..Default::default() };
    let server = tokio::spawn(tracefold_ui::serve(listener, cfg, std::future::pending()));
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        async move {
            let r = http.get(format!("http://{addr}{path}")).send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert_eq!(status, 200, "{path}: {body}");
            body
        }
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };

    // Environment: counts, users and rows of that environment's events only.
    let html = get("/?project=f&environment=staging".into()).await;
    assert_eq!(row_ids(&html), [a.clone(), c.clone()], "most events first");
    for (id, want) in [(&a, 3), (&c, 2)] {
        let (events, users) = truth_of(&db, "f", id, 86_400, Some("staging"), None).await;
        assert_eq!(events, want);
        assert_eq!(row_cell(&html, id, "events"), events.to_string());
        assert_eq!(row_cell(&html, id, "users"), users.to_string());
    }
    assert!(html.contains("name=\"environment\" value=\"staging\""), "the form keeps the filter");

    // Release, over 24 hours and over 7 days (whole hours from the hourly rollup).
    for (window, since) in [("24h", 86_400), ("7d", 7 * 86_400)] {
        let html = get(format!("/?project=f&release=r1&window={window}")).await;
        assert_eq!(sorted(row_ids(&html)), [a.clone(), b.clone(), d.clone()], "{window}");
        for id in [&a, &b, &d] {
            let (events, users) = truth_of(&db, "f", id, since, None, Some("r1")).await;
            assert_eq!(row_cell(&html, id, "events"), events.to_string(), "{window} {id}");
            assert_eq!(row_cell(&html, id, "users"), users.to_string(), "{window} {id}");
        }
        assert_eq!(row_cell(&html, &a, "events"), if window == "7d" { "16" } else { "5" });
    }

    // Status: the current one; no recorded status is active.
    assert_eq!(row_ids(&get("/?project=f&status=resolved".into()).await), vec![d.clone()]);
    assert_eq!(sorted(row_ids(&get("/?project=f&status=active".into()).await)), [a.clone(), b.clone(), c.clone()]);
    assert!(row_ids(&get("/?project=f&status=ignored".into()).await).is_empty());

    // Search: title or culprit, case-insensitive, any script; the text is a value, never SQL
    // nor a pattern.
    for (q, want) in [
        ("%C3%A9cole", vec![a.clone()]),               // école
        ("%C3%89COLE", vec![a.clone()]),               // ÉCOLE
        ("%D0%B8%D0%B2%D0%B0%D0%BD", vec![b.clone()]), // иван
        ("STRA%C3%9FE", vec![b.clone()]),              // STRAßE, in the culprit
        ("%F0%9F%99%88", vec![c.clone()]),             // 🙈
        ("%E4%B8%AD%E6%96%87", vec![c.clone()]),       // 中文
        ("crash", vec![a.clone(), c.clone()]),
        ("100%25", vec![d.clone()]),
        ("%25", vec![d.clone()]),
        ("_", vec![d.clone()]),
        ("%27%29%20OR%201%3D1%20--", vec![]), // ') OR 1=1 --
        ("%3F", vec![]),                      // ?
        ("%5C", vec![]),                      // backslash
        ("nothing-like-it", vec![]),
        ("%00", vec![]),
        ("%E2%80%AE%0A%09", vec![]), // a direction override, a newline, a tab
    ] {
        let html = get(format!("/?project=f&q={q}")).await;
        assert_eq!(sorted(row_ids(&html)), want, "q={q}");
        if want.is_empty() {
            assert!(html.contains("match the filters"), "q={q}");
        }
    }
    // A long search (its first 200 characters are used) and hostile filter values answer.
    let long = "%C3%A9".repeat(5_000);
    assert!(row_ids(&get(format!("/?project=f&q={long}")).await).is_empty());
    assert_eq!(row_ids(&get("/?project=f&q=%C3%A9".into()).await), vec![a.clone()]);
    for bad in ["environment=%27%3B%20DROP%20TABLE%20aggregates%3B%20--", "release=%5C%27", "environment=%F0%9F%99%88"]
    {
        assert!(row_ids(&get(format!("/?project=f&{bad}")).await).is_empty(), "{bad}");
    }
    assert_eq!(row_ids(&get("/?project=f&status=deleted".into()).await).len(), 4, "an unknown status is no filter");
    let html = get("/?project=f&q=%3Cscript%3E%22".into()).await;
    assert!(!html.contains("<script>") && html.contains("value=\"&lt;script&gt;&quot;\""), "echoed escaped");
    // Filters combine.
    assert_eq!(
        row_ids(&get("/?project=f&q=crash&environment=staging&release=r2".into()).await),
        [a.clone(), c.clone()]
    );
    assert_eq!(row_ids(&get("/?project=f&q=crash&status=active&release=r1".into()).await), vec![a.clone()]);

    // By last seen, with the same numbers as the default order (those of tracefold top), in
    // every window.
    for window in ["1h", "24h", "7d", "30d"] {
        let by_events = get(format!("/?project=f&window={window}")).await;
        let by_last = get(format!("/?project=f&by=last_seen&window={window}")).await;
        assert_eq!(sorted(row_ids(&by_last)), sorted(row_ids(&by_events)), "{window}");
        // Users of windows longer than a day come from daily sketches (marked; here exact, as
        // the sketch is at these sizes); the filtered list counts exactly.
        let long = matches!(window, "7d" | "30d");
        assert_eq!(by_events.contains("class=\"approx\""), long, "{window}");
        assert!(!by_last.contains("class=\"approx\""), "{window}");
        for id in row_ids(&by_events) {
            for class in ["events", "users"] {
                assert_eq!(row_cell(&by_last, &id, class), row_cell(&by_events, &id, class), "{window} {id} {class}");
            }
            assert_eq!(row_text(&by_last, &id, "wide last-seen"), row_text(&by_events, &id, "wide last-seen"));
        }
    }
    let by_events = get("/?project=f".into()).await;
    let by_last = get("/?project=f&by=last_seen".into()).await;
    assert_eq!(row_ids(&by_last), [c.clone(), a.clone(), b.clone(), d.clone()]);
    assert!(by_last.contains("<option selected>last_seen</option>"));
    // Every other order with a filter answers, with the filtered rows (new: A was first seen
    // three days ago).
    for (by, want) in
        [("users", vec![a.clone(), c.clone()]), ("growth", vec![a.clone(), c.clone()]), ("new", vec![c.clone()])]
    {
        let html = get(format!("/?project=f&environment=staging&by={by}")).await;
        assert_eq!(row_ids(&html), want, "{by}");
    }
    // Users: B has the most in r1.
    assert_eq!(row_ids(&get("/?project=f&release=r1&by=users".into()).await), [b.clone(), a.clone(), d.clone()]);

    // The release of each issue's first events, with and without filters.
    for html in [&by_events, &by_last] {
        assert_eq!(row_text(html, &b, "wide first-release"), "r3");
        assert_eq!(row_text(html, &c, "wide first-release"), "r2");
        assert_eq!(row_text(html, &d, "wide first-release"), "r1");
        // A's first events (three days ago) are older than the window, its release is known.
        assert_eq!(row_text(html, &a, "wide first-release"), "r1");
    }

    // Pages keep the filters.
    let p0 = get("/?project=g&environment=x&by=last_seen".into()).await;
    assert_eq!(row_ids(&p0).len(), 50);
    let next = "/?by=last_seen&amp;window=24h&amp;project=g&amp;environment=x&amp;page=1";
    assert!(p0.contains(&format!("href=\"{next}\"")), "next link keeps the filters");
    let p1 = get(next.replace("&amp;", "&")).await;
    assert_eq!(row_ids(&p1).len(), 10);
    assert!(p1.contains("href=\"/?by=last_seen&amp;window=24h&amp;project=g&amp;environment=x\""), "prev link");
    let p0e = get("/?project=g&environment=x".into()).await;
    assert_eq!(row_ids(&p0e)[0], hex(1059), "most events first");
    assert!(row_ids(&get("/?project=g&environment=production".into()).await).is_empty());

    // The issue chart: its resolution by the window (or `res` when it fits), bars with the
    // issue's events, and a release marker on the bar where each release's events begin.
    for (query, heading, bars, total, marked) in [
        ("window=1h", "minute", 60, 5, vec![("r1", 5)]),
        ("window=24h", "hour", 24, 8, vec![("r2", 3), ("r1", 5)]),
        ("window=7d", "hour", 168, 19, vec![("r1", 11), ("r2", 3)]),
        ("window=30d", "day", 31, 19, vec![("r1", 11)]),
        ("window=24h&res=minute", "minute", 1440, 8, vec![("r2", 3), ("r1", 5)]),
        ("window=7d&res=day", "day", 8, 19, vec![("r1", 11)]),
        ("window=30d&res=minute", "day", 31, 19, vec![("r1", 11)]),
        ("window=24h&res=%3Cx%3E", "hour", 24, 8, vec![("r2", 3), ("r1", 5)]),
    ] {
        let html = get(format!("/issues/f/{a}?{query}")).await;
        assert!(html.contains(&format!("Events per {heading}, last ")), "{query}");
        let (counts, markers) = chart(&html);
        assert_eq!((counts.len(), counts.iter().sum::<u64>()), (bars, total), "{query}");
        for (release, count) in marked {
            let bar = markers.iter().find(|m| m.1 == release).unwrap_or_else(|| panic!("{query}: no {release}")).0;
            assert_eq!(counts[bar], count, "{query}: the marker of {release} is on its first bar");
        }
        let order: Vec<&str> = markers.iter().map(|m| m.1.as_str()).collect();
        if query.starts_with("window=24h") {
            assert_eq!(order, ["r2", "r1"], "{query}: oldest first");
        }
    }
    let html = get(format!("/issues/f/{a}?window=24h")).await;
    assert!(html.contains(&format!("href=\"/issues/f/{a}?window=24h&amp;res=minute\">per minute<")));
    assert!(html.contains(&format!("href=\"/issues/f/{a}?window=24h&amp;res=day\">per day<")));
    assert!(!html.contains("&amp;res=hour"), "the chosen resolution is no link");
    let html = get(format!("/issues/f/{a}?window=30d")).await;
    assert!(!html.contains("res=minute"), "no minute bars over 30 days");
    server.abort();
}

/// The bars (counts, oldest first) and release markers (bar, release) of the issue chart.
fn chart(html: &str) -> (Vec<u64>, Vec<(usize, String)>) {
    let svg = &html[html.find("<svg class=\"bars\"").unwrap()..];
    let svg = &svg[..svg.find("</svg>").unwrap()];
    let counts = svg
        .split("<rect ")
        .skip(1)
        .map(|r| {
            let title = &r[r.find("<title>").unwrap() + 7..r.find("</title>").unwrap()];
            title.rsplit(": ").next().unwrap().parse().unwrap()
        })
        .collect();
    let markers = svg
        .split("<line class=\"release\" data-bucket=\"")
        .skip(1)
        .map(|l| {
            let i = l[..l.find('"').unwrap()].parse().unwrap();
            let name = &l[l.find("<title>release ").unwrap() + 15..l.find("</title>").unwrap()];
            (i, name.to_owned())
        })
        .collect();
    (counts, markers)
}

/// Without a filter, the list over 7 and 30 days is `tracefold top`'s: from the precomputed
/// ranking while it is fresh (saying when it was ranked, with a link that counts now), live with
/// `&fresh=1`, a filter or a window of a day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_over_days_reads_the_precomputed_ranking_and_counts_now_when_asked() {
    use tracefold_store::rankings::{refresh, RefreshSpec};
    let db = TestDb::new("ui_ranked").await;
    let t = db.server_now().await;
    let (a, b) = (hex(1), hex(2));
    db.insert_records(&[
        rec("r", &a, "A failed", t - 2 * 86_400, "r1", 10, &[1], 0),
        rec("r", &b, "B failed", t - 3600, "r1", 4, &[2, 3], 1),
    ])
    .await;
    let spec = RefreshSpec { top_k: 100, refresh_seconds: 300, skip_younger_than: 0 };
    refresh(&db.client, &db.cfg.database, &spec).await.unwrap();
    // After the ranking: B gains 20 events, which the ranking does not hold.
    db.insert_records(&[rec("r", &b, "B failed", t - 60, "r1", 20, &[4], 2)]).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg =
        tracefold_ui::Config { clickhouse: db.cfg.clone(), signals: None, operator_token: None, ..Default::default() };
    let server = tokio::spawn(tracefold_ui::serve(listener, cfg, std::future::pending()));
    let get = |path: &'static str| async move {
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        r.text().await.unwrap()
    };
    let events = |html: &str, id: &str| row_cell(html, id, "events");

    for path in ["/?window=7d", "/?window=30d", "/?window=7d&by=users"] {
        let html = get(path).await;
        assert_eq!((events(&html, &a), events(&html, &b)), ("10".into(), "4".into()), "{path}: the ranking's");
        let note = by_id(&html, "ranked");
        assert!(note.starts_with("ranked at ") && note.contains(" ago, refreshed every 5 min"), "{path}: {note}");
        assert!(html.contains("&amp;fresh=1\">Count now</a>"), "{path}");
    }
    // Counted now: B's new events.
    for path in ["/?window=7d&fresh=1", "/?window=24h", "/?window=7d&environment=production"] {
        let html = get(path).await;
        assert_eq!(events(&html, &b), "24", "{path}: live");
        assert!(!html.contains("id=\"ranked\""), "{path}");
    }
    let html = get("/?window=7d&fresh=1").await;
    assert_eq!(events(&html, &a), "10");
    assert!(html.contains("id=\"counted\">Counted now. <a href=\"/?by=events&amp;window=7d\">"), "a way back");
    for path in
        ["/?window=24h", "/?window=7d&environment=production", "/?window=24h&fresh=1", "/?window=7d&by=growth&fresh=1"]
    {
        assert!(!get(path).await.contains("id=\"counted\""), "{path}: no ranking to go back to");
    }
    server.abort();
}
