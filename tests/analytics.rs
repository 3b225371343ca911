//! The analyst interface against a real ClickHouse with known data: every cookbook query in
//! schemas/queries.md, `tracefold issue` (detail, resolve, reopen), affected users beyond the
//! exact bound, and retention.

use std::collections::BTreeMap;
use tracefold_model::aggregate::{UserSet, DEFAULT_MAX_USERS};
use tracefold_model::{AggregateRecord, BatchRef};
use tracefold_store::issues::{issue_status, resolve_issue, set_status, StatusChange};
use tracefold_store::IssueStatus;
use tracefold_tests::TestDb;

const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const C: &str = "cccccccccccccccccccccccccccccccc";
const D: &str = "dddddddddddddddddddddddddddddddd";

#[allow(clippy::too_many_arguments)]
fn rec(
    project: &str,
    issue: &str,
    at: i64,
    release: &str,
    env: &str,
    count: u64,
    users: UserSet,
    sample: &str,
    n: u32,
) -> AggregateRecord {
    AggregateRecord {
        v: 1,
        batch: BatchRef {
            epoch: "t".into(),
            topic: "tracefold.events".into(),
            partition: 0,
            first_offset: i64::from(n) * 100,
            last_offset: i64::from(n) * 100 + 99,
            index: 0,
            count: 1,
        },
        project: project.into(),
        issue_id: issue.into(),
        minute: at.div_euclid(60) * 60,
        release: release.into(),
        environment: env.into(),
        count,
        users,
        first_seen_ms: at * 1000,
        last_seen_ms: at * 1000,
        title: format!("Error {}", &issue[..1]),
        culprit: "app.py in handler".into(),
        exc_type: "Error".into(),
        level: "error".into(),
        platform: "python".into(),
        grouping_version: "v1".into(),
        sample: sample.into(),
        breakdown: Default::default(),
        merged_from: Vec::new(),
    }
}

fn users(ids: impl IntoIterator<Item = u64>) -> UserSet {
    let mut s = UserSet::default();
    for i in ids {
        s.insert(xxhash_rust_free_hash(i), DEFAULT_MAX_USERS);
    }
    s
}

/// A well-mixed 64-bit hash (splitmix64), standing in for the user hashes.
fn xxhash_rust_free_hash(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs SQL and returns the rows as JSON objects.
async fn rows(db: &TestDb, sql: &str) -> Vec<serde_json::Value> {
    let mut cursor = db.client.query(sql).fetch_bytes("JSONEachRow").unwrap();
    let bytes = cursor.collect().await.unwrap_or_else(|e| panic!("{e}\n{sql}"));
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The cookbook: name -> SQL.
fn cookbook() -> BTreeMap<String, String> {
    let md = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/queries.md"))
        .unwrap();
    let mut out = BTreeMap::new();
    for section in md.split("\n### ").skip(1) {
        let name = section.lines().next().unwrap().trim().to_owned();
        let sql = section.split("```sql\n").nth(1).unwrap().split("```").next().unwrap().to_owned();
        out.insert(name, sql);
    }
    out
}

fn num(v: &serde_json::Value) -> u64 {
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookbook_queries_issue_commands_and_retention_on_known_data() {
    let db = TestDb::new("analytics").await;
    let t = db.server_now().await;
    // 20,000 users over five saturated aggregates of issue D: beyond the exact bound.
    let big: Vec<AggregateRecord> = (0..5u64)
        .map(|k| {
            let mut r = rec(
                "big",
                D,
                t - 300,
                "big@1",
                "load",
                20,
                users((0..8000).map(|i| (k * 3000 + i) % 20_000)),
                "",
                50 + k as u32,
            );
            r.users.saturated = true;
            r
        })
        .collect();
    assert!(big.iter().all(|r| r.users.hashes.len() == DEFAULT_MAX_USERS));
    let mut recs = vec![
        rec("web", A, t - 90 * 60, "web@1.0", "staging", 5, users([3, 4]), "{\"old\":true}", 1),
        rec("web", A, t - 30 * 60, "web@1.1", "production", 10, users([1, 2, 3]), "{\"recent\":true}", 2),
        rec("web", B, t - 10 * 60, "web@1.1", "production", 3, users([9]), "{\"b\":1}", 3),
        rec("api", C, t - 2 * 86_400, "api@2", "production", 7, users([1]), "{\"c\":1}", 4),
        // Old enough for retention (200 days).
        rec("api", C, t - 200 * 86_400, "api@1", "production", 2, users([5]), "", 5),
    ];
    {
        // A's events by browser, OS and URL (B, C and D have none).
        use tracefold_model::breakdown::Key;
        recs[0].breakdown.add(Key::Browser, "Firefox 121", 2);
        recs[0].breakdown.add(Key::Browser, "Chrome 120", 3);
        recs[0].breakdown.add(Key::Url, "https://web.example/a", 5);
        recs[1].breakdown.add(Key::Browser, "Chrome 120", 10);
        recs[1].breakdown.add(Key::Os, "iOS", 4);
        recs[1].breakdown.add(Key::Url, "https://web.example/a", 2);
        recs[1].breakdown.add(Key::Url, "https://web.example/b", 8);
    }
    recs.extend(big);
    db.insert_records(&recs).await;
    let dbn = &db.cfg.database;
    // A was resolved 45 minutes ago and came back (a regression); B was resolved just now.
    db.client
        .query(&format!(
            "INSERT INTO {dbn}.issue_status_log (project, issue_id, status, changed_at, changed_ms, actor, release, note) VALUES \
             ('web', '{A}', 'resolved', toDateTime({}), {}, 'test', 'web@1.0', ''), \
             ('web', '{B}', 'resolved', toDateTime({t}), {}, 'test', 'web@1.1', '')",
            t - 45 * 60,
            (t - 45 * 60) * 1000,
            t * 1000
        ))
        .execute()
        .await
        .unwrap();

    let book = cookbook();
    let run = |name: &str| {
        let sql = book[name]
            .replace("tracefold.", &format!("{dbn}."))
            .replace("{issue_id}", A)
            .replace("{release}", "web@1.1")
            .replace("{project}", "web");
        (name.to_owned(), sql)
    };
    let mut seen = Vec::new();

    let (n, sql) = run("top_issues_last_hour");
    let r = rows(&db, &sql).await;
    // D (big, 5 minutes ago) leads, then A's recent events, then B; C is two days old.
    let got: Vec<(String, u64)> =
        r.iter().map(|v| (v["issue_id"].as_str().unwrap().to_owned(), num(&v["events"]))).collect();
    assert_eq!(got, vec![(D.to_owned(), 100), (A.to_owned(), 10), (B.to_owned(), 3)], "{n}");
    assert_eq!(r[1]["title"], "Error a");
    seen.push(n);
    // Folded over issue_aliases (none here): the same answer.
    let (n, sql) = run("top_issues_last_hour_folded");
    assert_eq!(rows(&db, &sql).await, r, "{n}");
    seen.push(n);

    let (n, sql) = run("issue_time_series");
    let r = rows(&db, &sql).await;
    assert_eq!(r.iter().map(|v| num(&v["events"])).collect::<Vec<_>>(), vec![5, 10], "{n}");
    seen.push(n);

    let (n, sql) = run("new_issues_in_release");
    let r = rows(&db, &sql).await;
    assert_eq!(
        r.iter().map(|v| v["issue_id"].as_str().unwrap()).collect::<Vec<_>>(),
        vec![B],
        "{n}: A began in web@1.0"
    );
    seen.push(n);

    let (n, sql) = run("users_affected");
    let r = rows(&db, &sql).await;
    let got: Vec<(String, u64)> =
        r.iter().map(|v| (v["issue_id"].as_str().unwrap().to_owned(), num(&v["users"]))).collect();
    assert_eq!(got, vec![(A.to_owned(), 4), (B.to_owned(), 1)], "{n}: exact below the bound");
    let big_sql = sql.replace("'web'", "'big'");
    let est = num(&rows(&db, &big_sql).await[0]["users"]) as f64;
    assert!((est - 20_000.0).abs() / 20_000.0 < 0.02, "{n}: 20,000 users beyond the bound estimated as {est}");
    seen.push(n);

    let (n, sql) = run("top_issues_by_users");
    let r = rows(&db, &sql).await;
    let got: Vec<&str> = r.iter().map(|v| v["issue_id"].as_str().unwrap()).collect();
    assert_eq!(got, vec![D, A, B], "{n}: C's users are two days old");
    assert_eq!(num(&r[1]["users"]), 4, "{n}");
    seen.push(n);

    // Over 7 days C's user joins in; the counts come from the daily sketches (exact at these
    // sizes). D's union of kept hashes is past the sketch's exact range: ranked first anyway.
    let (n, sql) = run("top_issues_by_users_7d");
    let r = rows(&db, &sql).await;
    let got: Vec<(&str, u64)> = r.iter().map(|v| (v["issue_id"].as_str().unwrap(), num(&v["users"]))).collect();
    assert_eq!(got[0].0, D, "{n}");
    assert_eq!(&got[1..], [(A, 4), (B, 1), (C, 1)], "{n}: ties by issue id");
    seen.push(n);
    // The writer's ranking of the same: empty before it runs, then the same issues and users,
    // ties by events (C's 7 before B's 3).
    let (n, sql) = run("top_issues_by_users_7d_ranked");
    assert!(rows(&db, &sql).await.is_empty(), "{n}: no run yet");
    let spec = tracefold_store::rankings::RefreshSpec { top_k: 1000, refresh_seconds: 300, skip_younger_than: 0 };
    tracefold_store::rankings::refresh(&db.client, dbn, &spec).await.unwrap();
    let ranked = rows(&db, &sql).await;
    let got_ranked: Vec<(&str, u64)> =
        ranked.iter().map(|v| (v["issue_id"].as_str().unwrap(), num(&v["users"]))).collect();
    assert_eq!(got_ranked, [got[0], (A, 4), (C, 1), (B, 1)], "{n}");
    seen.push(n);

    let (n, sql) = run("top_issues_by_growth");
    let r = rows(&db, &sql).await;
    let got: Vec<(&str, u64, u64)> =
        r.iter().map(|v| (v["issue_id"].as_str().unwrap(), num(&v["events"]), num(&v["previous"]))).collect();
    assert_eq!(got, vec![(D, 100, 0), (A, 15, 0), (B, 3, 0)], "{n}");
    seen.push(n);

    let (n, sql) = run("new_issues_last_day");
    let r = rows(&db, &sql).await;
    let got: Vec<(&str, u64)> = r.iter().map(|v| (v["issue_id"].as_str().unwrap(), num(&v["events"]))).collect();
    assert_eq!(got, vec![(D, 100), (A, 15), (B, 3)], "{n}: C was first seen 200 days ago");
    seen.push(n);

    let (n, sql) = run("users_affected_per_release");
    let r = rows(&db, &sql).await;
    let got: Vec<(&str, u64, u64)> =
        r.iter().map(|v| (v["release"].as_str().unwrap(), num(&v["events"]), num(&v["users"]))).collect();
    assert_eq!(got, vec![("web@1.1", 13, 4), ("web@1.0", 5, 2)], "{n}: users 1, 2, 3 (A) and 9 (B); 3, 4 (A)");
    let est = num(&rows(&db, &sql.replace("'web'", "'big'")).await[0]["users"]) as f64;
    assert!((est - 20_000.0).abs() / 20_000.0 < 0.02, "{n}: 20,000 users beyond the bound estimated as {est}");
    seen.push(n);

    let (n, sql) = run("regressions");
    let r = rows(&db, &sql).await;
    assert_eq!(r.iter().map(|v| v["issue_id"].as_str().unwrap()).collect::<Vec<_>>(), vec![A], "{n}");
    assert_eq!(r[0]["resolved_in"], "web@1.0");
    seen.push(n);

    let (n, sql) = run("issues_by_environment");
    let r = rows(&db, &sql).await;
    let got: Vec<(String, u64, u64)> = r
        .iter()
        .map(|v| (v["environment"].as_str().unwrap().to_owned(), num(&v["events"]), num(&v["issues"])))
        .collect();
    assert_eq!(
        got,
        vec![("load".to_owned(), 100, 1), ("production".to_owned(), 13, 2), ("staging".to_owned(), 5, 1)],
        "{n}"
    );
    seen.push(n);

    let (n, sql) = run("issue_breakdown");
    let r = rows(&db, &sql).await;
    let got: Vec<(&str, &str, u64)> =
        r.iter().map(|v| (v["key"].as_str().unwrap(), v["value"].as_str().unwrap(), num(&v["events"]))).collect();
    assert_eq!(
        got,
        vec![
            ("browser", "Chrome 120", 13),
            ("browser", "Firefox 121", 2),
            ("os", "iOS", 4),
            ("url", "https://web.example/b", 8),
            ("url", "https://web.example/a", 7)
        ],
        "{n}"
    );
    seen.push(n);

    let (n, sql) = run("latest_sample");
    let r = rows(&db, &sql).await;
    assert_eq!(r[0]["sample"], "{\"recent\":true}", "{n}");
    seen.push(n);
    // Samples are stored once, in issue_samples: the base table's rows keep none.
    let kept = rows(&db, &format!("SELECT count() AS n FROM {dbn}.aggregates WHERE sample != ''")).await;
    assert_eq!(kept[0]["n"], "0", "aggregates rows keep no sample");

    // Every folded variant, without alias rows: the plain query's answer (D's 20,000 users
    // estimated the same way too).
    for name in book.keys().filter(|n| n.ends_with("_folded") && *n != "top_issues_last_hour_folded") {
        let plain = name.strip_suffix("_folded").unwrap();
        let (n, sql) = run(name);
        let (_, plain_sql) = run(plain);
        let got = rows(&db, &sql).await;
        assert!(!got.is_empty(), "{n}");
        assert_eq!(got, rows(&db, &plain_sql).await, "{n}");
        if sql.contains("'web'") {
            let big = |s: &str| s.replace("'web'", "'big'");
            assert_eq!(rows(&db, &big(&sql)).await, rows(&db, &big(&plain_sql)).await, "{n}");
        }
        seen.push(n);
    }

    let mut all: Vec<String> = book.keys().cloned().collect();
    all.sort();
    seen.sort();
    assert_eq!(seen, all, "every cookbook query is checked");

    // tracefold issue: detail, then status changes with history.
    // The CLI's `tracefold issue ID [--project P]`: resolve the id, then the detail.
    let issue_detail = |id: &'static str, project: Option<&'static str>| {
        let client = db.client.clone();
        async move {
            let issue = resolve_issue(&client, dbn, id, project).await?;
            tracefold_store::issues::issue_detail(&client, dbn, issue, 24).await
        }
    };
    let d = issue_detail(A, None).await.unwrap();
    assert_eq!((d.project.as_str(), d.count, d.users, d.status), ("web", 15, 4, IssueStatus::Resolved));
    assert_eq!(d.hourly.iter().sum::<u64>(), 15);
    assert_eq!(d.by_release, vec![("web@1.1".to_owned(), 10), ("web@1.0".to_owned(), 5)]);
    assert_eq!(d.by_environment, vec![("production".to_owned(), 10), ("staging".to_owned(), 5)]);
    assert_eq!(d.sample.as_deref(), Some("{\"recent\":true}"));
    let big = issue_detail(D, Some("big")).await.unwrap();
    assert!((big.users as f64 - 20_000.0).abs() / 20_000.0 < 0.02, "issue detail estimates users too: {}", big.users);
    let change = |status, note| StatusChange { project: "web", issue_id: A, status, actor: "test", release: "", note };
    set_status(&db.client, dbn, &change(IssueStatus::Active, "reopened")).await.unwrap();
    assert_eq!(issue_status(&db.client, dbn, "web", A).await.unwrap(), IssueStatus::Active);
    set_status(&db.client, dbn, &change(IssueStatus::Ignored, "noise")).await.unwrap();
    assert_eq!(issue_status(&db.client, dbn, "web", A).await.unwrap(), IssueStatus::Ignored);
    // A status that is not one of the three cannot be recorded: it does not parse.
    assert!("deleted".parse::<IssueStatus>().is_err());
    let history =
        rows(&db, &format!("SELECT status FROM {dbn}.issue_status_log WHERE issue_id = '{A}' ORDER BY changed_ms"))
            .await;
    assert_eq!(
        history.iter().map(|v| v["status"].as_str().unwrap()).collect::<Vec<_>>(),
        ["resolved", "active", "ignored"]
    );
    assert!(issue_detail("nosuchissue", None).await.is_err());

    // Retention: the 200-day-old partition goes, everything recent stays.
    let dry = tracefold_store::migrate::retention(&db.cfg, 90, true).await.unwrap();
    // Exactly the day and month partitions (as the server computes them) of the 200-day-old
    // record, in every table it reached (it has no sample: not in issue_samples).
    let old = &rows(
        &db,
        &format!(
            "SELECT toString(toYYYYMMDD(toDateTime({0}))) AS day, toString(toYYYYMM(toDateTime({0}))) AS month",
            t - 200 * 86_400
        ),
    )
    .await[0];
    let (day, month) = (old["day"].as_str().unwrap(), old["month"].as_str().unwrap());
    let want: Vec<(String, String)> = [
        ("aggregates", day),
        ("issue_counts_1d", month),
        ("issue_counts_1h", month),
        ("issue_counts_1m", day),
        // (Not `issue_users_1d`: unfed since migration 0013.)
        ("issue_users_1d_v2", month),
        ("issue_users_1h", month),
        ("release_users_1d", month),
    ]
    .iter()
    .map(|(t, p)| ((*t).to_owned(), (*p).to_owned()))
    .collect();
    assert_eq!(dry, want);
    let before = db.total_events().await;
    let dropped = tracefold_store::migrate::retention(&db.cfg, 90, false).await.unwrap();
    assert_eq!(dropped, dry);
    assert_eq!(db.total_events().await, before - 2, "only the 200-day-old events are gone");
    assert!(tracefold_store::migrate::retention(&db.cfg, 90, true).await.unwrap().is_empty());
}

const E: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";
const F: &str = "ffffffffffffffffffffffffffffffff";
const G: &str = "00000000000000000000000000000000";
const H: &str = "11111111111111111111111111111111";
const I: &str = "22222222222222222222222222222222";

/// Five issues of project `rank` and one of `other`, around the server's time `t`, for the
/// rankings of `top` (each issue's part in them is told below).
fn ranking_records(t: i64) -> Vec<AggregateRecord> {
    // The window is the last hour; the one before it is [t - 2h, t - 1h).
    vec![
        // E: 50 events now (user 1), 45 in the hour before (user 1 again): +5, not new.
        rec("rank", E, t - 1800, "r2", "production", 50, users([1]), "", 1),
        rec("rank", E, t - 5400, "r1", "production", 45, users([1]), "", 2),
        // F: 30 events now (5 users), none the hour before, first seen 3 days ago: +30, not new.
        rec("rank", F, t - 1800, "r2", "production", 30, users(10..15), "", 3),
        rec("rank", F, t - 3 * 86_400, "r0", "production", 2, users([99]), "", 4),
        // G, H: new in the window: 20 events (3 users) and 10 events (2 users).
        rec("rank", G, t - 1200, "r2", "production", 20, users(20..23), "", 5),
        rec("rank", H, t - 600, "r2", "production", 10, users(30..32), "", 6),
        // I: 100 events the hour before, none now: in no ranking of this window.
        rec("rank", I, t - 5400, "r1", "production", 100, users(40..50), "", 7),
        // Another project's issue, to check --project.
        rec("other", I, t - 600, "r2", "production", 1000, users([1]), "", 8),
    ]
}

/// `tracefold top --by`: each ranking orders a known window exactly as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_ranks_by_events_users_growth_and_new() {
    use tracefold_store::issues::{top, TopBy, TopQuery};
    let db = TestDb::new("top_by").await;
    let t = db.server_now().await;
    let recs = ranking_records(t);
    db.insert_records(&recs).await;
    let dbn = &db.cfg.database;
    let client = &db.client;
    let ranked = |by: TopBy| async move {
        let q = TopQuery { since_secs: 3600, limit: 100, project: Some("rank"), by };
        top(client, dbn, &q).await.unwrap()
    };
    let ids = |rows: &[tracefold_store::issues::TopIssue]| rows.iter().map(|r| r.issue_id.clone()).collect::<Vec<_>>();

    let r = ranked(TopBy::Events).await;
    assert_eq!(ids(&r), [E, F, G, H]);
    assert_eq!(r.iter().map(|r| r.count).collect::<Vec<_>>(), [50, 30, 20, 10]);
    assert!(r.iter().all(|r| r.previous.is_none()));
    assert_eq!(r[0].title, "Error e");
    assert_eq!(r[1].first_seen.len(), "2026-11-26T00:00:00Z".len(), "{:?}", r[1].first_seen);
    assert_eq!(r.iter().map(|r| r.last_hour.iter().sum::<u64>()).collect::<Vec<_>>(), [50, 30, 20, 10]);

    let r = ranked(TopBy::Users).await;
    assert_eq!(ids(&r), [F, G, H, E]);
    assert_eq!(r.iter().map(|r| r.users).collect::<Vec<_>>(), [5, 3, 2, 1]);

    let r = ranked(TopBy::Growth).await;
    assert_eq!(ids(&r), [F, G, H, E]);
    assert_eq!(
        r.iter().map(|r| (r.count, r.previous)).collect::<Vec<_>>(),
        [(30, Some(0)), (20, Some(0)), (10, Some(0)), (50, Some(45))]
    );

    let r = ranked(TopBy::New).await;
    assert_eq!(ids(&r), [G, H]);

    // Without --project the other project's issue leads; --limit cuts after ranking.
    let q = TopQuery { since_secs: 3600, limit: 2, project: None, by: TopBy::Events };
    let r = top(&db.client, dbn, &q).await.unwrap();
    assert_eq!(
        r.iter().map(|r| (r.project.as_str(), r.issue_id.as_str())).collect::<Vec<_>>(),
        [("other", I), ("rank", E)]
    );
    // A window of days counts from the daily, hourly and minute rollups together: F's old
    // events join in, I's too, and nothing is counted twice.
    let q = TopQuery { since_secs: 7 * 86_400, limit: 100, project: Some("rank"), by: TopBy::Events };
    let r = top(&db.client, dbn, &q).await.unwrap();
    let got: Vec<(String, u64)> = r.iter().map(|r| (r.issue_id.clone(), r.count)).collect();
    assert_eq!(got, [(I.into(), 100), (E.into(), 95), (F.into(), 32), (G.into(), 20), (H.into(), 10)]);
    // Users over days: whole hours from the hourly user sets, the first minutes from the base
    // table; the same exact counts.
    let q = TopQuery { since_secs: 7 * 86_400, limit: 100, project: Some("rank"), by: TopBy::Users };
    let r = top(&db.client, dbn, &q).await.unwrap();
    let got: Vec<(String, u64)> = r.iter().map(|r| (r.issue_id.clone(), r.users)).collect();
    assert_eq!(got, [(I.into(), 10), (F.into(), 6), (G.into(), 3), (H.into(), 2), (E.into(), 1)]);
    let q = TopQuery { since_secs: 7 * 86_400, limit: 100, project: Some("rank"), by: TopBy::Events };
    let r = top(&db.client, dbn, &q).await.unwrap();
    assert_eq!(r.iter().map(|r| r.users).collect::<Vec<_>>(), [10, 1, 6, 3, 2], "the same users, ranked by events");
    // A `readonly = 1` user may not create the temporary table of the ranked set: `top` then
    // computes the set where it is used, with the same answer, in every ranking and window.
    let readonly = db.client.clone().with_setting("readonly", "1");
    for since_secs in [3600, 86_400, 7 * 86_400] {
        for by in TopBy::ALL {
            for (limit, project) in [(100, Some("rank")), (2, None)] {
                let q = TopQuery { since_secs, limit, project, by };
                // The answers carry the last hour by minute: both must be asked in the same
                // minute (asked again, at most twice more, when a minute began between them).
                let minute =
                    || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 60;
                let mut tries = 0;
                let (want, got) = loop {
                    let m = minute();
                    let want = top(&db.client, dbn, &q).await.unwrap();
                    let got = top(&readonly, dbn, &q).await.unwrap();
                    tries += 1;
                    if minute() == m || tries == 3 {
                        break (want, got);
                    }
                };
                assert!(!want.is_empty(), "{q:?}");
                assert_eq!(got, want, "{q:?}");
            }
        }
    }
}

/// The release of an issue's first events (the UI's list and issue page) is that of its
/// earliest row, to the second, not the smallest release name of its first minute; per project.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_releases_are_those_of_the_earliest_row_of_each_project() {
    use tracefold_store::ui::{first_release, first_releases};
    let db = TestDb::new("first_release").await;
    let m = db.server_now().await / 60 * 60 - 600;
    db.insert_records(&[
        rec("one", E, m + 30, "alpha", "production", 1, users([1]), "", 1),
        rec("one", E, m + 5, "zeta", "production", 1, users([2]), "", 2),
        rec("one", E, m + 300, "beta", "production", 1, users([2]), "", 3),
        rec("two", E, m + 40, "r9", "staging", 1, users([3]), "", 4),
    ])
    .await;
    let (client, dbn) = (&db.client, &db.cfg.database);
    assert_eq!(first_release(client, dbn, "one", E, false).await.unwrap().as_deref(), Some("zeta"));
    assert_eq!(first_release(client, dbn, "two", E, false).await.unwrap().as_deref(), Some("r9"));
    let mut got = first_releases(client, dbn, &[("two", E), ("one", E), ("three", E)]).await.unwrap();
    got.sort();
    let want = [("one", E, "zeta"), ("two", E, "r9")];
    assert_eq!(got, want.map(|(p, i, r)| (p.to_owned(), i.to_owned(), r.to_owned())));
}

/// Late source maps' fast path (docs/sourcemaps.md "Late maps", Queries): without alias rows
/// every query is the plain one; with some, only the issues they name are folded. Alias rows
/// that merge no events (an alias without rows into `E`, and two issues of a project without
/// data) send `top` (every ranking, window and path), the UI's list and `tracefold issue` down
/// the folded path for `E` and for every query without a project: each answer must be the
/// plain one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_rows_that_merge_no_events_change_no_answer() {
    use tracefold_store::issues::{find_issue, issue_detail, top, IssueDetail, TopBy, TopIssue, TopQuery};
    use tracefold_store::ui::{issue_list, ListQuery, ListSort};
    let db = TestDb::new("fold_same").await;
    let t = db.server_now().await;
    db.insert_records(&ranking_records(t)).await;
    let dbn = &db.cfg.database;
    let client = &db.client;
    let readonly = db.client.clone().with_setting("readonly", "1");
    // Every answer, asked within one server minute (the last hour is per minute): again, at
    // most twice more, when a minute began while asking.
    let answers = || async {
        let mut tries = 0;
        loop {
            let minute = db.server_now().await / 60;
            let mut tops: Vec<Vec<TopIssue>> = Vec::new();
            for since_secs in [3600, 7 * 86_400] {
                for by in TopBy::ALL {
                    for (limit, project) in [(100, Some("rank")), (2, None)] {
                        let q = TopQuery { since_secs, limit, project, by };
                        tops.push(top(client, dbn, &q).await.unwrap());
                        tops.push(top(&readonly, dbn, &q).await.unwrap());
                    }
                }
            }
            for sort in ListSort::ALL {
                for project in [Some("rank"), None] {
                    let q = ListQuery { since_secs: 3600, limit: 100, sort, project, ..Default::default() };
                    tops.push(issue_list(client, dbn, &q).await.unwrap());
                }
            }
            let mut details = Vec::new();
            for id in [E, I] {
                for found in find_issue(client, dbn, id).await.unwrap() {
                    details.push(format!("{found:?}"));
                    // By hour over a day: an hour may begin between the plain and the folded
                    // answers, moving the events within it (compared as their sum).
                    let d = issue_detail(client, dbn, found, 24).await.unwrap();
                    let d = IssueDetail { hourly: vec![d.hourly.iter().sum()], ..d };
                    details.push(format!("{d:?}"));
                }
            }
            tries += 1;
            if db.server_now().await / 60 == minute || tries == 3 {
                break (tops, details);
            }
        }
    };
    let (plain_tops, plain_details) = answers().await;
    assert!(plain_tops.iter().all(|r| r.iter().all(|r| r.merged.is_empty())));
    assert_eq!(plain_details.len(), 6, "E, and I in both projects: {plain_details:?}");
    const NONE: &str = "33333333333333333333333333333333";
    client
        .query(&format!(
            "INSERT INTO {dbn}.issue_aliases (project, alias, issue_id, first_seen) VALUES \
             ('rank', '{NONE}', '{E}', toDateTime({t})), ('nodata', '{F}', '{G}', toDateTime({t}))"
        ))
        .execute()
        .await
        .unwrap();
    let (folded_tops, folded_details) = answers().await;
    assert_eq!(folded_details, plain_details);
    // Minutes passed between the two: the last hour's events by minute have moved within it
    // (the newest event is 10 minutes old, the oldest of the window 30: none left it).
    let moved = |r: &[TopIssue]| -> Vec<TopIssue> {
        r.iter().map(|r| TopIssue { last_hour: vec![r.last_hour.iter().sum()], ..r.clone() }).collect()
    };
    assert_eq!(folded_tops.len(), plain_tops.len());
    for (i, (got, want)) in folded_tops.iter().zip(&plain_tops).enumerate() {
        assert!(!want.is_empty(), "answer {i}");
        assert_eq!(moved(got), moved(want), "answer {i}");
    }
}

/// `tracefold top --limit 100000` with 30,000 issues in the window: more ids than a query
/// text could list (ClickHouse's max_query_size is 256 KiB; 30,000 ids are about 1 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_answers_for_any_limit_and_any_number_of_issues() {
    use tracefold_store::synthetic::{insert_aggregates, Shape};
    let n = 30_000u64;
    // One row (one event, up to two users) per issue, all in the last hour: the 60 minutes up
    // to the server's minute at the insert. When the minute turns before `top` answers, the
    // first minute's rows are out of its last hour: then again on fresh data (rarely needed:
    // the insert and the query take a few seconds under load).
    let shape = Shape { rows: n, events_per_row: 1, issues_per_hour: n, hours: 1, projects: 4 };
    let mut attempt = 0;
    let (db, r) = loop {
        attempt += 1;
        let db = TestDb::new("top_many").await;
        let minute = db.server_now().await / 60;
        insert_aggregates(&db.client, &db.cfg.database, &shape, 0, n).await.unwrap();
        let r = tracefold_store::issues::top_issues(&db.client, &db.cfg.database, 30 * 86_400, 100_000, None)
            .await
            .unwrap();
        if db.server_now().await / 60 == minute || attempt == 5 {
            break (db, r);
        }
    };
    let dbn = &db.cfg.database;
    assert_eq!(r.len() as u64, n);
    let distinct: std::collections::BTreeSet<(&str, &str)> =
        r.iter().map(|r| (r.project.as_str(), r.issue_id.as_str())).collect();
    assert_eq!(distinct.len() as u64, n);
    assert_eq!(r.iter().map(|r| r.count).sum::<u64>(), n);
    for row in &r {
        // Issue i's row holds the user hashes of (i, i % 503) and (i, i % 37): one user when
        // those are the same.
        let i: u64 = row.title.strip_prefix("BenchError ").and_then(|i| i.parse().ok()).expect("every row joined");
        assert_eq!(row.users, if i % 503 == i % 37 { 1 } else { 2 }, "{row:?}");
    }
    assert!(r.iter().all(|r| r.last_hour.iter().sum::<u64>() == 1), "every row's last hour");
    // The order is the documented one: events, then project, then issue id.
    assert!(r.windows(2).all(|w| (&w[0].project, &w[0].issue_id) < (&w[1].project, &w[1].issue_id)));
    // A limit smaller than the issues: the first ones of the same order.
    // (Over 30 days the users come from the daily sketches, marked approximate; over the last
    // hour they are exact: the same numbers here.)
    assert!(r.iter().all(|r| r.users_approximate));
    let few = tracefold_store::issues::top_issues(&db.client, dbn, 3600, 7, None).await.unwrap();
    assert!(few.iter().all(|r| !r.users_approximate));
    let exact: Vec<_> =
        r[..7].iter().map(|r| tracefold_store::issues::TopIssue { users_approximate: false, ..r.clone() }).collect();
    assert_eq!(few, exact);
}

/// `tracefold top` over more than a day counts users from the daily sketches: within their
/// error bound on an issue past the sketch's exact range, exact on small ones, and marked
/// approximate; a window of a day stays exact and is not marked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_counts_long_windows_users_from_daily_sketches_within_the_bound() {
    use tracefold_store::issues::{top, TopBy, TopQuery};
    let db = TestDb::new("top_sketch").await;
    let t = db.server_now().await;
    const U: &str = "55555555555555555555555555555555";
    const V: &str = "66666666666666666666666666666666";
    // U: 10 rows 6 hours apart (54 hours), 2,500 users each, each row sharing 500 with the
    // next: 20,500 distinct users, 8,500 of them in the last day (rows 0 to 3).
    let mut recs: Vec<AggregateRecord> = (0..10u64)
        .map(|k| {
            let at = t - 60 - (k as i64) * 6 * 3600;
            rec("sk", U, at, "r1", "production", 1, users(k * 2000..k * 2000 + 2500), "", 100 + k as u32)
        })
        .collect();
    // V: 3 users over two days (one of them twice).
    recs.push(rec("sk", V, t - 120, "r1", "production", 5, users([1, 2]), "", 200));
    recs.push(rec("sk", V, t - 30 * 3600, "r1", "production", 5, users([2, 3]), "", 201));
    db.insert_records(&recs).await;
    let dbn = &db.cfg.database;
    for by in TopBy::ALL {
        let q = TopQuery { since_secs: 7 * 86_400, limit: 10, project: Some("sk"), by };
        let r = top(&db.client, dbn, &q).await.unwrap();
        let u = r.iter().find(|r| r.issue_id == U).unwrap_or_else(|| panic!("{by:?}: {r:?}"));
        let v = r.iter().find(|r| r.issue_id == V).unwrap();
        let err = (u.users as f64 - 20_500.0).abs() / 20_500.0;
        assert!(err < 0.01, "{by:?}: 20,500 users counted as {} ({:.2}% off)", u.users, err * 100.0);
        assert_eq!(v.users, 3, "{by:?}: exact at small sizes");
        assert!(r.iter().all(|r| r.users_approximate), "{by:?}");
        let q = TopQuery { since_secs: 86_400, ..q };
        let r = top(&db.client, dbn, &q).await.unwrap();
        let users: Vec<(&str, u64)> = r.iter().map(|r| (r.issue_id.as_str(), r.users)).collect();
        // Neither issue is new in the last day.
        if by != TopBy::New {
            assert!(users.contains(&(U, 8_500)) && users.contains(&(V, 2)), "{by:?}: exact over a day: {users:?}");
        }
        assert!(r.iter().all(|r| !r.users_approximate), "{by:?}");
    }
}

/// Late source maps (docs/sourcemaps.md "Late maps"): an issue merged into another by an
/// `issue_aliases` row counts for it everywhere an analyst looks: `top` in every ranking and
/// both query paths, `tracefold issue` of either id, the UI's list; without the row every
/// answer is the one of two issues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_fold_into_their_canonical_issue() {
    use tracefold_store::issues::{find_issue, issue_detail, top, TopBy, TopQuery};
    let db = TestDb::new("fold").await;
    let t = db.server_now().await;
    // P: the issue of mapped frames (new: first seen 10 minutes ago). S: the same bug grouped
    // by its minified frames before the map came (first seen 3 days ago). X: an unrelated new
    // issue. Q: a second primary S names (a replaced map): the smallest, P, wins.
    const P: &str = "11111111111111111111111111111111";
    const S: &str = "55555555555555555555555555555555";
    const Q: &str = "99999999999999999999999999999999";
    const X: &str = "77777777777777777777777777777777";
    let recs = vec![
        rec("fold", P, t - 600, "r2", "production", 10, users([1, 2]), "{\"p\":1}", 1),
        rec("fold", S, t - 3 * 86_400, "r1", "production", 4, users([2, 3]), "{\"s\":1}", 2),
        rec("fold", S, t - 1800, "r1", "staging", 5, users([3]), "{\"s\":2}", 3),
        rec("fold", X, t - 900, "r2", "production", 7, users([7]), "", 4),
        rec("fold", Q, t - 5 * 86_400, "r0", "production", 1, users([9]), "", 5),
        // Another project's S, not merged: aliases are per project.
        rec("else", S, t - 60, "r1", "production", 2, users([1]), "", 6),
    ];
    db.insert_records(&recs).await;
    let dbn = &db.cfg.database;
    let client = &db.client;
    let ranked = |by: TopBy, since_secs: u64| async move {
        let q = TopQuery { since_secs, limit: 100, project: Some("fold"), by };
        top(client, dbn, &q).await.unwrap()
    };
    let summary = |r: &[tracefold_store::issues::TopIssue]| {
        r.iter().map(|r| (r.issue_id.clone(), r.count, r.users)).collect::<Vec<_>>()
    };

    // Before any alias row: three issues, P new.
    let r = ranked(TopBy::Events, 3600).await;
    assert_eq!(summary(&r), [(P.into(), 10, 2), (X.into(), 7, 1), (S.into(), 5, 1)]);
    assert!(r.iter().all(|r| r.merged.is_empty()));
    let r = ranked(TopBy::New, 3600).await;
    assert_eq!(summary(&r), [(P.into(), 10, 2), (X.into(), 7, 1)]);
    let d = find_issue(client, dbn, S).await.unwrap();
    assert_eq!(
        d.iter().map(|d| (d.project.as_str(), d.issue_id.as_str(), d.count)).collect::<Vec<_>>(),
        [("else", S, 2), ("fold", S, 9)]
    );

    // The merge facts (a re-sent row is the same row), and S -> Q besides.
    client
        .query(&format!(
            "INSERT INTO {dbn}.issue_aliases (project, alias, issue_id, first_seen) VALUES \
             ('fold', '{S}', '{P}', toDateTime({t})), ('fold', '{S}', '{P}', toDateTime({t})), \
             ('fold', '{S}', '{Q}', toDateTime({t}))"
        ))
        .execute()
        .await
        .unwrap();

    // The release of the first events: of P's own (r2), or folded with S's (r1, 3 days ago);
    // the list's reads each issue's own rows, and leaves out an issue without any.
    let first = |id: &'static str, merged: bool| tracefold_store::ui::first_release(client, dbn, "fold", id, merged);
    assert_eq!(first(P, false).await.unwrap().as_deref(), Some("r2"));
    assert_eq!(first(P, true).await.unwrap().as_deref(), Some("r1"));
    assert_eq!(first(Q, false).await.unwrap().as_deref(), Some("r0"));
    assert_eq!(first("00000000000000000000000000000000", false).await.unwrap(), None);
    let mut firsts = tracefold_store::ui::first_releases(
        client,
        dbn,
        &[("fold", P), ("fold", X), ("else", S), ("fold", "00000000000000000000000000000000")],
    )
    .await
    .unwrap();
    firsts.sort();
    let want = [("else", S, "r1"), ("fold", P, "r2"), ("fold", X, "r2")];
    assert_eq!(firsts, want.map(|(p, i, r)| (p.to_owned(), i.to_owned(), r.to_owned())));

    // The cookbook's folded query: one row for P and S.
    let sql = cookbook()["top_issues_last_hour_folded"].replace("tracefold.", &format!("{dbn}."));
    let got: Vec<(String, u64)> = rows(&db, &sql)
        .await
        .iter()
        .filter(|v| v["project"] == "fold")
        .map(|v| (v["issue_id"].as_str().unwrap().to_owned(), num(&v["events"])))
        .collect();
    assert_eq!(got, [(P.to_owned(), 15), (X.to_owned(), 7)]);
    // Every folded ranking of the cookbook: P once, with S's events and users (2 in both
    // counted once); S not listed.
    let book = cookbook();
    let test_db = &db;
    let ranking = |name: &str, col: &'static str| {
        let sql = book[name].replace("tracefold.", &format!("{dbn}.")).replace("{project}", "fold");
        async move {
            rows(test_db, &sql)
                .await
                .iter()
                .filter(|v| v.get("project").is_none_or(|p| p == "fold"))
                .map(|v| (v["issue_id"].as_str().unwrap().to_owned(), num(&v[col])))
                .collect::<Vec<_>>()
        }
    };
    let want = |v: &[(&str, u64)]| v.iter().map(|(i, n)| ((*i).to_owned(), *n)).collect::<Vec<_>>();
    assert_eq!(ranking("top_issues_by_users_folded", "users").await, want(&[(P, 3), (X, 1)]));
    assert_eq!(ranking("top_issues_by_users_7d_folded", "users").await, want(&[(P, 3), (X, 1), (Q, 1)]));
    assert_eq!(ranking("top_issues_by_growth_folded", "events").await, want(&[(P, 15), (X, 7)]));
    assert_eq!(ranking("top_issues_by_growth_folded", "previous").await, want(&[(P, 0), (X, 0)]));
    assert_eq!(ranking("users_affected_folded", "users").await, want(&[(P, 3), (X, 1)]));
    assert_eq!(
        ranking("new_issues_last_day_folded", "events").await,
        want(&[(X, 7)]),
        "P's first event is S's, 3 days old: not new"
    );
    // The plain ones count S apart.
    let plain = ranking("top_issues_by_growth", "events").await;
    assert_eq!(plain, want(&[(P, 10), (X, 7), (S, 5)]));
    // One issue with the sum; a user of both (2) counted once; first seen S's; not new.
    let r = ranked(TopBy::Events, 3600).await;
    assert_eq!(summary(&r), [(P.into(), 15, 3), (X.into(), 7, 1)]);
    assert_eq!(r[0].merged, [S]);
    assert_eq!(r[0].title, "Error 1", "the canonical issue's own title");
    assert_eq!(r[0].last_hour.iter().sum::<u64>(), 15);
    let three_days = tracefold_model::time::format_rfc3339((t - 3 * 86_400) * 1000).replace(".000Z", "Z");
    assert_eq!(r[0].first_seen, three_days);
    assert_eq!(summary(&ranked(TopBy::Users, 3600).await), [(P.into(), 15, 3), (X.into(), 7, 1)]);
    assert_eq!(summary(&ranked(TopBy::New, 3600).await), [(X.into(), 7, 1)], "a late map makes no old bug new");
    let r = ranked(TopBy::Growth, 3600).await;
    assert_eq!(
        r.iter().map(|r| (r.issue_id.as_str(), r.count, r.previous)).collect::<Vec<_>>(),
        [(P, 15, Some(0)), (X, 7, Some(0))]
    );
    // Seven days: the daily sketches, merged the same way; Q stays its own issue.
    let r = ranked(TopBy::Events, 7 * 86_400).await;
    assert_eq!(summary(&r), [(P.into(), 19, 3), (X.into(), 7, 1), (Q.into(), 1, 1)]);
    assert_eq!(
        summary(&ranked(TopBy::Users, 7 * 86_400).await),
        [(P.into(), 19, 3), (X.into(), 7, 1), (Q.into(), 1, 1)]
    );
    // The other project's S is untouched.
    let q = TopQuery { since_secs: 3600, limit: 100, project: None, by: TopBy::Events };
    let all = top(client, dbn, &q).await.unwrap();
    assert_eq!(
        all.iter().map(|r| (r.project.as_str(), r.issue_id.as_str(), r.count)).collect::<Vec<_>>(),
        [("fold", P, 15), ("fold", X, 7), ("else", S, 2)]
    );
    // The single query of `readonly` users answers the same, in every ranking and window.
    let readonly = db.client.clone().with_setting("readonly", "1");
    for since_secs in [3600, 7 * 86_400] {
        for by in TopBy::ALL {
            for (limit, project) in [(100, Some("fold")), (1, None)] {
                let q = TopQuery { since_secs, limit, project, by };
                let minute =
                    || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 60;
                let mut tries = 0;
                let (want, got) = loop {
                    let m = minute();
                    let want = top(client, dbn, &q).await.unwrap();
                    let got = top(&readonly, dbn, &q).await.unwrap();
                    tries += 1;
                    if minute() == m || tries == 3 {
                        break (want, got);
                    }
                };
                assert!(!want.is_empty(), "{q:?}");
                assert!(want.iter().all(|r| r.issue_id != S || r.project == "else"), "{q:?}: {want:?}");
                assert_eq!(got, want, "{q:?}");
            }
        }
    }
    // The precomputed ranking folds the same way: P with S merged into it, by users and by
    // events, as the live answer.
    let spec = tracefold_store::rankings::RefreshSpec { top_k: 100, refresh_seconds: 300, skip_younger_than: 0 };
    for by in [TopBy::Users, TopBy::Events] {
        let q = TopQuery { since_secs: 7 * 86_400, limit: 100, project: Some("fold"), by };
        let (want, got) = cached_and_live(&db, &spec, &q).await;
        let (rows, _) = got.unwrap_or_else(|why| panic!("{q:?}: {why:?}"));
        assert_eq!(rows, want, "{q:?}");
        assert_eq!(summary(&rows), [(P.into(), 19, 3), (X.into(), 7, 1), (Q.into(), 1, 1)], "{q:?}");
        assert_eq!((rows[0].merged.as_slice(), rows[0].title.as_str()), ([S.to_owned()].as_slice(), "Error 1"));
    }

    // `tracefold issue S` shows P and says S was merged into it; `issue P` names S.
    for asked in [S, P] {
        let found: Vec<_> =
            find_issue(client, dbn, asked).await.unwrap().into_iter().filter(|f| f.project == "fold").collect();
        assert_eq!(found.len(), 1, "{asked}: {found:?}");
        let f = found[0].clone();
        assert_eq!((f.issue_id.as_str(), f.count, f.first_seen), (P, 19, u32::try_from(t - 3 * 86_400).unwrap()));
        assert_eq!(f.asked_alias.as_deref(), (asked == S).then_some(S));
        assert_eq!(f.merged.iter().map(|m| (m.issue_id.as_str(), m.count)).collect::<Vec<_>>(), [(S, 9)]);
        let d = issue_detail(client, dbn, f, 24).await.unwrap();
        assert_eq!((d.issue_id.as_str(), d.count, d.users), (P, 19, 3));
        assert_eq!(d.hourly.iter().sum::<u64>(), 15);
        assert_eq!(d.by_release, [("r2".to_owned(), 10), ("r1".to_owned(), 5)]);
        assert_eq!(d.by_environment, [("production".to_owned(), 10), ("staging".to_owned(), 5)]);
        assert_eq!(d.merged.len(), 1);
        assert_eq!(d.merged[0].first_seen, three_days);
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["merged"][0]["issue_id"], S);
        assert_eq!(json["asked_alias"].as_str(), (asked == S).then_some(S));
    }
    // The other project's S is still its own issue.
    let other = resolve_issue(client, dbn, S, Some("else")).await.unwrap();
    assert_eq!((other.issue_id.as_str(), other.count, other.merged.len()), (S, 2, 0));
    // Status is the canonical issue's: resolving through S resolves P.
    let p = resolve_issue(client, dbn, S, Some("fold")).await.unwrap();
    let change = StatusChange {
        project: "fold",
        issue_id: &p.issue_id,
        status: IssueStatus::Resolved,
        actor: "test",
        release: "r3",
        note: "",
    };
    set_status(client, dbn, &change).await.unwrap();
    assert_eq!(issue_status(client, dbn, "fold", P).await.unwrap(), IssueStatus::Resolved);
    let d = issue_detail(client, dbn, p, 1).await.unwrap();
    assert_eq!(d.status, IssueStatus::Resolved);

    // The UI's list folds the same way (and filters by the canonical issue's status).
    use tracefold_store::ui::{issue_list, ListQuery, ListSort};
    for sort in ListSort::ALL {
        let q = ListQuery { since_secs: 3600, limit: 100, sort, project: Some("fold"), ..Default::default() };
        let r = issue_list(client, dbn, &q).await.unwrap();
        let want: Vec<(String, u64, u64)> = match sort {
            ListSort::New => vec![(X.into(), 7, 1)],
            _ => vec![(P.into(), 15, 3), (X.into(), 7, 1)],
        };
        assert_eq!(summary(&r), want, "{sort:?}");
        if let Some(p) = r.iter().find(|r| r.issue_id == P) {
            assert_eq!(p.merged, [S]);
            assert_eq!(p.last_hour.iter().sum::<u64>(), 15);
            assert_eq!(p.first_seen, three_days);
        }
    }
    let q = ListQuery {
        since_secs: 3600,
        limit: 100,
        project: Some("fold"),
        status: Some(IssueStatus::Resolved),
        ..Default::default()
    };
    assert_eq!(summary(&issue_list(client, dbn, &q).await.unwrap()), [(P.into(), 15, 3)]);
    let q = ListQuery {
        since_secs: 3600,
        limit: 100,
        project: Some("fold"),
        search: Some("error 1"),
        ..Default::default()
    };
    assert_eq!(summary(&issue_list(client, dbn, &q).await.unwrap()), [(P.into(), 15, 3)]);
    let q = ListQuery {
        since_secs: 3600,
        limit: 100,
        project: Some("fold"),
        environment: Some("staging"),
        ..Default::default()
    };
    assert_eq!(
        summary(&issue_list(client, dbn, &q).await.unwrap()),
        [(P.into(), 5, 1)],
        "S's staging events count for P"
    );
}

/// The precomputed rankings (migrations 0014 and 0015, docs/operations.md "Precomputed
/// rankings"): what the refresh writes is, per project, exactly the live `top --project P --by
/// users` of that moment; `top_cached` answers from it while fresh, by users within `top_k` and
/// by events or users of any length from the lists that were not cut, as the live query does
/// over the same data, and declines when stale, beyond a cut list, or for other rankings and
/// windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rankings_equal_the_live_top_by_users_and_are_read_while_fresh() {
    use tracefold_store::issues::{top, TopBy, TopQuery};
    use tracefold_store::rankings::{refresh, top_cached, NotCached, RefreshSpec, Refreshed};
    let db = TestDb::new("rankings").await;
    let t = db.server_now().await;
    let mut recs = ranking_records(t);
    // H: ten more users 20 days ago (the 30-day ranking differs from the 7-day one), and a
    // third project with one issue.
    recs.push(rec("rank", H, t - 20 * 86_400, "r0", "production", 7, users(60..70), "", 9));
    recs.push(rec("third", A, t - 2 * 86_400, "r0", "production", 3, users(70..74), "", 10));
    db.insert_records(&recs).await;
    let dbn = &db.cfg.database;
    let client = &db.client;
    let spec = RefreshSpec { top_k: 3, refresh_seconds: 300, skip_younger_than: 0 };
    let done = refresh(client, dbn, &spec).await.unwrap();
    assert_eq!(done.len(), 2);
    #[derive(clickhouse::Row, serde::Deserialize, Debug, PartialEq)]
    struct Stored {
        project: String,
        issue_id: String,
        users: u64,
        events: u64,
        computed_at: u32,
    }
    for d in &done {
        let Refreshed::Written { window_seconds, computed_at, rows, cut } = *d else { panic!("{d:?}") };
        // `rank` has 4 or 5 issues in the window, `other` and `third` one each.
        assert_eq!(cut, 1, "{d:?}");
        let stored: Vec<Stored> = client
            .query(&format!(
                "SELECT project, issue_id, users, events, toUInt32(computed_at) AS computed_at FROM {dbn}.issue_ranking_rows \
                 WHERE window_seconds = ? ORDER BY project, users DESC, events DESC, issue_id"
            ))
            .bind(window_seconds)
            .fetch_all()
            .await
            .unwrap();
        assert_eq!(stored.len(), rows as usize);
        assert!(stored.iter().all(|s| s.computed_at == computed_at));
        // Per project: the live answer (asked now, the data unchanged since).
        let mut live = Vec::new();
        for p in ["other", "rank", "third"] {
            let q = TopQuery { since_secs: window_seconds, limit: 3, project: Some(p), by: TopBy::Users };
            live.extend(top(client, dbn, &q).await.unwrap().into_iter().map(|r| Stored {
                project: r.project,
                issue_id: r.issue_id,
                users: r.users,
                events: r.count,
                computed_at,
            }));
        }
        assert_eq!(stored, live, "window {window_seconds}");
        // Known data: the 7-day list of `rank` is I, F, G (10, 6, 3 users), the 30-day one
        // H first (12 users).
        let rank: Vec<(&str, u64)> =
            stored.iter().filter(|s| s.project == "rank").map(|s| (s.issue_id.as_str(), s.users)).collect();
        if window_seconds == 7 * 86_400 {
            assert_eq!(rank, [(I, 10), (F, 6), (G, 3)]);
        } else {
            assert_eq!(rank, [(H, 12), (I, 10), (F, 6)]);
        }
    }
    // `top` from the ranking: the same rows as the live answer (asked in one server minute:
    // the last hour is per minute), for every window, with and without a project.
    // The lists of `other` and `third` were not cut: by events too, and beyond `top_k`.
    for since_secs in [7 * 86_400, 30 * 86_400] {
        for (limit, project, by) in [
            (3, None, TopBy::Users),
            (2, None, TopBy::Users),
            (1, Some("rank"), TopBy::Users),
            (3, Some("third"), TopBy::Users),
            (10, Some("other"), TopBy::Users),
            (10, Some("third"), TopBy::Events),
        ] {
            let q = TopQuery { since_secs, limit, project, by };
            let (want, got) = cached_and_live(&db, &spec, &q).await;
            let (rows, ranked) = got.unwrap_or_else(|why| panic!("{q:?}: {why:?}"));
            assert!(!want.is_empty() && rows.iter().all(|r| r.users_approximate), "{q:?}");
            assert_eq!(rows, want, "{q:?}");
            assert_eq!((ranked.refresh_seconds, ranked.top_k), (300, 3));
            assert!(ranked.age() < 600, "{ranked:?}");
        }
    }
    // Declined: beyond a cut list (`rank`'s: by users past 3, by events at all), other windows
    // and rankings.
    let q = |since_secs, limit, by| TopQuery { since_secs, limit, project: None, by };
    for (q, why) in [
        (q(7 * 86_400, 4, TopBy::Users), NotCached::BeyondTopK(3)),
        (q(7 * 86_400, 3, TopBy::Events), NotCached::BeyondTopK(3)),
        (TopQuery { project: Some("rank"), ..q(30 * 86_400, 1, TopBy::Events) }, NotCached::BeyondTopK(3)),
        (q(86_400, 3, TopBy::Users), NotCached::NotRanked),
        (q(7 * 86_400, 3, TopBy::Growth), NotCached::NotRanked),
        (q(7 * 86_400, 3, TopBy::New), NotCached::NotRanked),
    ] {
        assert_eq!(top_cached(client, dbn, &q).await.unwrap().unwrap_err(), why, "{q:?}");
    }

    // New data after the ranking: the cached answer keeps the ranking's numbers (as of
    // `computed_at`), the live one counts it.
    db.insert_records(&[rec("rank", E, t - 60, "r2", "production", 5, users(100..120), "", 11)]).await;
    let q7 = q(7 * 86_400, 3, TopBy::Users);
    let (cached, _) = top_cached(client, dbn, &q7).await.unwrap().unwrap();
    assert_eq!(cached.iter().map(|r| (r.issue_id.as_str(), r.users)).collect::<Vec<_>>(), [(I, 10), (F, 6), (A, 4)]);
    let live = top(client, dbn, &q7).await.unwrap();
    assert_eq!(live.iter().map(|r| (r.issue_id.as_str(), r.users)).collect::<Vec<_>>(), [(E, 21), (I, 10), (F, 6)]);

    // A second computation (another writer's, at once) and skipping: the reader takes one
    // whole computation, the newest; a window computed less than `skip_younger_than` ago is
    // skipped. (In a second of their own: of computations in one second, a reader takes any
    // whole one, and the comparisons above computed some a moment ago.)
    next_second(&db).await;
    let both = futures_join(refresh(client, dbn, &spec), refresh(client, dbn, &spec)).await;
    assert!(both.0.is_ok() && both.1.is_ok(), "{both:?}");
    let (cached, _) = top_cached(client, dbn, &q7).await.unwrap().unwrap();
    assert_eq!(cached.iter().map(|r| (r.issue_id.as_str(), r.users)).collect::<Vec<_>>(), [(E, 21), (I, 10), (F, 6)]);
    let skip = RefreshSpec { skip_younger_than: 3600, ..spec };
    let skipped = refresh(client, dbn, &skip).await.unwrap();
    assert!(skipped.iter().all(|d| matches!(d, Refreshed::Skipped { .. })), "{skipped:?}");

    // Stale: a ranking older than twice its refresh interval is not read.
    // (In a second of its own: of computations in one second, a reader takes any whole one.)
    let fast = RefreshSpec { refresh_seconds: 1, ..spec };
    next_second(&db).await;
    refresh(client, dbn, &fast).await.unwrap();
    let start = db.server_now().await;
    while db.server_now().await < start + 3 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(matches!(top_cached(client, dbn, &q7).await.unwrap(), Err(NotCached::Stale(_))));

    // Whole lists everywhere (`top_k` above every project's issues): every ranking by events or
    // users over both windows, of any length, from the ranking, as live.
    let whole = RefreshSpec { top_k: 100, ..spec };
    next_second(&db).await;
    let done = refresh(client, dbn, &whole).await.unwrap();
    assert!(done.iter().all(|d| matches!(d, Refreshed::Written { cut: 0, .. })), "{done:?}");
    assert_eq!(top_cached(client, dbn, &q(7 * 86_400, 100, TopBy::Events)).await.unwrap().unwrap().1.top_k, 100);
    for since_secs in [7 * 86_400, 30 * 86_400] {
        for by in [TopBy::Events, TopBy::Users] {
            for (limit, project) in [(100, None), (2, None), (100, Some("rank"))] {
                let q = TopQuery { since_secs, limit, project, by };
                let (want, got) = cached_and_live(&db, &whole, &q).await;
                let (rows, ranked) = got.unwrap_or_else(|why| panic!("{q:?}: {why:?}"));
                assert_eq!(ranked.top_k, 100);
                assert!(want.len() >= limit.min(3) as usize, "{q:?}: {want:?}");
                assert_eq!(rows, want, "{q:?}");
            }
        }
    }
}

/// Old rankings are dropped by partition (five minutes of `computed_at`): after a refresh,
/// what is left is each window's newest run and the one before it (a reader may have picked it
/// a moment ago), runs and rows alike; older runs and rows of abandoned INSERTs (rows without
/// a run) are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_rankings_are_dropped_but_the_two_newest_runs_of_each_window_stay() {
    use tracefold_store::rankings::{refresh, RefreshSpec};
    let db = TestDb::new("rankings_drop").await;
    let t = db.server_now().await;
    db.insert_records(&ranking_records(t)).await;
    let dbn = &db.cfg.database;
    // Runs of both windows an hour and ten minutes ago (run ids 1 and 2), and rows without a
    // run two hours ago (an abandoned INSERT).
    insert_ranking_runs(&db, &[(t - 3600, 1), (t - 600, 2)], E).await;
    let abandoned = format!(
        "INSERT INTO {dbn}.issue_ranking_rows {RANKING_ROW_COLUMNS} VALUES ({}, 3, {}, 'rank', '{E}', 1, 1, 1)",
        t - 7200,
        7 * 86_400
    );
    db.client.query(&abandoned).execute().await.unwrap();
    let runs_of = |table: &'static str| {
        let db = &db;
        async move {
            let q = format!("SELECT DISTINCT run FROM {}.{table} WHERE run < 4 ORDER BY run", db.cfg.database);
            rows(db, &q).await.iter().map(|r| num(&r["run"])).collect::<Vec<u64>>()
        }
    };
    let spec = RefreshSpec { top_k: 3, refresh_seconds: 300, skip_younger_than: 0 };
    refresh(&db.client, dbn, &spec).await.unwrap();
    // The newest runs are this refresh's; the ones before them, ten minutes old, stay.
    assert_eq!(runs_of("issue_ranking_runs").await, [2]);
    assert_eq!(runs_of("issue_ranking_rows").await, [2]);
    let count = |table: &'static str| {
        let db = &db;
        async move {
            let q = format!("SELECT count() AS n FROM {}.{table} WHERE run >= 4", db.cfg.database);
            num(&rows(db, &q).await[0]["n"])
        }
    };
    assert_eq!(count("issue_ranking_runs").await, 2, "this refresh's runs");
    assert!(count("issue_ranking_rows").await > 0);
    // A second refresh: the ten-minute-old runs are now third newest, and go.
    refresh(&db.client, dbn, &spec).await.unwrap();
    assert_eq!(runs_of("issue_ranking_runs").await, Vec::<u64>::new());
    assert_eq!(runs_of("issue_ranking_rows").await, Vec::<u64>::new());
    assert_eq!(count("issue_ranking_runs").await, 4, "both refreshes' runs");
}

/// A clock that went back (a server whose clock ran an hour ahead, then set right): the runs it
/// stamped an hour ahead are neither read as fresh (their age would read 0 s for an hour), nor
/// taken for another writer's computation of a moment ago (which would skip every refresh for
/// that hour), nor kept in place of the runs computed since (which would drop each new run as
/// soon as it is written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rankings_stamped_ahead_by_a_clock_that_went_back_do_not_stop_new_ones() {
    use tracefold_store::issues::{TopBy, TopQuery};
    use tracefold_store::rankings::{refresh, top_cached, RefreshSpec, Refreshed};
    let db = TestDb::new("rankings_clock").await;
    let t = db.server_now().await;
    db.insert_records(&ranking_records(t)).await;
    let dbn = &db.cfg.database;
    // Two runs of each window stamped 50 and 60 minutes ahead (run ids 1 and 2), with a row of
    // an issue that has no events (so that reading them shows).
    insert_ranking_runs(&db, &[(t + 3000, 1), (t + 3600, 2)], "from-the-future").await;
    // The writers' loop skips windows computed less than half an interval ago.
    let spec = RefreshSpec { top_k: 3, refresh_seconds: 300, skip_younger_than: 150 };
    let done = refresh(&db.client, dbn, &spec).await.unwrap();
    assert!(done.iter().all(|d| matches!(d, Refreshed::Written { .. })), "computed, not skipped: {done:?}");
    let q7 = TopQuery { since_secs: 7 * 86_400, limit: 3, project: Some("rank"), by: TopBy::Users };
    let (cached, ranked) = top_cached(&db.client, dbn, &q7).await.unwrap().expect("the new ranking is read");
    assert!(i64::from(ranked.computed_at) <= db.server_now().await, "{ranked:?}");
    assert!(!cached.is_empty() && cached.iter().all(|r| r.issue_id != "from-the-future"), "{cached:?}");
    // What was just computed stays (it is the newest run the clock has reached).
    let q = format!("SELECT count() AS n FROM {dbn}.issue_ranking_runs WHERE run > 2");
    assert_eq!(num(&rows(&db, &q).await[0]["n"]), 2, "this refresh's runs are kept");
}

/// A run whose rows are gone (its partition dropped by a refresh between the reader's pick of
/// the run and its read of the rows: two writers that compute at once make two newer runs, and
/// the run the reader picked is then third) is not answered as an empty list: the live query
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ranking_whose_rows_are_gone_is_not_read_as_an_empty_list() {
    use tracefold_store::issues::{TopBy, TopQuery};
    use tracefold_store::rankings::{top_cached, NotCached};
    let db = TestDb::new("rankings_gone").await;
    let t = db.server_now().await;
    db.insert_records(&ranking_records(t)).await;
    let dbn = &db.cfg.database;
    // The run as the reader found it: five rows, which are no longer there.
    let sql = format!("INSERT INTO {dbn}.issue_ranking_runs VALUES ({}, 7, {}, 5, [], 3, 300)", t - 1, 7 * 86_400);
    db.client.query(&sql).execute().await.unwrap();
    for project in [None, Some("rank")] {
        let q7 = TopQuery { since_secs: 7 * 86_400, limit: 3, project, by: TopBy::Users };
        let got = top_cached(&db.client, dbn, &q7).await.unwrap();
        assert!(matches!(got, Err(NotCached::Missing)), "{project:?}: {got:?}");
    }
}

/// The columns of `issue_ranking_rows` the tests write.
const RANKING_ROW_COLUMNS: &str =
    "(computed_at, run, window_seconds, project, issue_id, users, events, users_approximate)";

/// Whole runs of both ranked windows (7 and 30 days), one for each `(computed_at, run)`, each
/// with one row: `issue_id` of project `rank`.
async fn insert_ranking_runs(db: &TestDb, runs: &[(i64, u64)], issue_id: &str) {
    let dbn = &db.cfg.database;
    let mut sql = format!("INSERT INTO {dbn}.issue_ranking_runs VALUES ");
    let mut rows_sql = format!("INSERT INTO {dbn}.issue_ranking_rows {RANKING_ROW_COLUMNS} VALUES ");
    for (i, (at, run)) in runs.iter().enumerate() {
        for (j, w) in [7 * 86_400, 30 * 86_400].into_iter().enumerate() {
            let sep = if i + j > 0 { ", " } else { "" };
            sql.push_str(&format!("{sep}({at}, {run}, {w}, 1, [], 3, 300)"));
            rows_sql.push_str(&format!("{sep}({at}, {run}, {w}, 'rank', '{issue_id}', 1, 1, 1)"));
        }
    }
    db.client.query(&sql).execute().await.unwrap();
    db.client.query(&rows_sql).execute().await.unwrap();
}

/// The live `top` and `top_cached` of `q` after a refresh with `spec`, all in one server minute
/// (the last hour is per minute, and the ranking keeps the one of its computation) when three
/// tries allow.
async fn cached_and_live(
    db: &TestDb,
    spec: &tracefold_store::rankings::RefreshSpec,
    q: &tracefold_store::issues::TopQuery<'_>,
) -> (
    Vec<tracefold_store::issues::TopIssue>,
    std::result::Result<
        (Vec<tracefold_store::issues::TopIssue>, tracefold_store::rankings::Ranked),
        tracefold_store::rankings::NotCached,
    >,
) {
    let (client, dbn) = (&db.client, &db.cfg.database);
    let mut tries = 0;
    loop {
        let minute = db.server_now().await / 60;
        tracefold_store::rankings::refresh(client, dbn, spec).await.unwrap();
        let want = tracefold_store::issues::top(client, dbn, q).await.unwrap();
        let got = tracefold_store::rankings::top_cached(client, dbn, q).await.unwrap();
        tries += 1;
        if db.server_now().await / 60 == minute || tries == 3 {
            return (want, got);
        }
    }
}

/// Waits until the server's clock is in the next second.
async fn next_second(db: &TestDb) {
    let second = db.server_now().await;
    while db.server_now().await == second {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Two futures at once (the two writers of the test above).
async fn futures_join<A: std::future::Future, B: std::future::Future>(a: A, b: B) -> (A::Output, B::Output) {
    tokio::join!(a, b)
}

/// `tracefold top --since 7d --by users` reads the fresh ranking and says so (text and JSON);
/// `--fresh`, another window, or `--limit` beyond `top_k` count now. New data after the
/// ranking tells the answers apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_on_the_command_line_reads_the_fresh_ranking_unless_told_otherwise() {
    use tracefold_store::rankings::{refresh, RefreshSpec};
    let db = TestDb::new("rankings_cli").await;
    let t = db.server_now().await;
    db.insert_records(&ranking_records(t)).await;
    let spec = RefreshSpec { top_k: 3, refresh_seconds: 300, skip_younger_than: 0 };
    refresh(&db.client, &db.cfg.database, &spec).await.unwrap();
    db.insert_records(&[rec("rank", E, t - 60, "r2", "production", 5, users(100..120), "", 11)]).await;
    // stdout and stderr of `tracefold top --project rank <args>`.
    let both = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tracefold-under-test"))
            .arg("top")
            .args(if args.contains(&"--project") { &[][..] } else { &["--project", "rank"][..] })
            .args(args)
            .args(["--clickhouse-url", &db.cfg.url, "--database", &db.cfg.database])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let run = |args: &[&str]| both(args).0;
    let json = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        serde_json::from_str(&run(&a)).unwrap()
    };
    // The JSON of a ranked answer is only the rows; the note goes to stderr, so that an
    // empty ranked answer (a project with no issue in the ranking) still says where it came
    // from. A live answer has none.
    for (args, rows) in [(&["--limit", "3"][..], 3), (&["--project", "nobody"][..], 0)] {
        let mut a = vec!["--since", "7d", "--by", "users", "--format", "json"];
        a.extend(args);
        let (stdout, stderr) = both(&a);
        assert_eq!(serde_json::from_str::<Vec<serde_json::Value>>(&stdout).unwrap().len(), rows, "{stdout}");
        assert!(stderr.contains("ranked at ") && stderr.contains("--fresh to compute now"), "{stderr}");
        a.push("--fresh");
        assert!(!both(&a).1.contains("ranked at"), "counted now");
    }
    let first = |rows: &[serde_json::Value]| (rows[0]["issue_id"].as_str().unwrap().to_owned(), num(&rows[0]["users"]));
    // (`--limit` at most the ranking's `top_k`, 3 here; the default is 20.)
    let cached = json(&["--since", "7d", "--by", "users", "--limit", "3"]);
    assert_eq!(first(&cached), (I.to_owned(), 10), "the ranking's answer");
    assert!(cached.iter().all(|r| r["cached"] == true && r["ranked_at"].is_string() && r["refresh_seconds"] == 300));
    for live in [
        json(&["--since", "7d", "--by", "users", "--limit", "3", "--fresh"]),
        json(&["--since", "7d", "--by", "users", "--limit", "4"]),
        json(&["--since", "6d", "--by", "users", "--limit", "3"]),
    ] {
        assert_eq!(first(&live), (E.to_owned(), 21), "counted now");
        assert!(live.iter().all(|r| r.get("cached").is_none() && r.get("ranked_at").is_none()));
    }
    let text = run(&["--since", "7d", "--by", "users", "--limit", "3"]);
    assert!(text.contains("ranked at ") && text.contains(" UTC, ") && text.contains("refreshed every 5 min"), "{text}");
    assert!(text.contains("--fresh to compute now"), "{text}");
    let fresh = run(&["--since", "7d", "--by", "users", "--limit", "3", "--fresh"]);
    assert!(!fresh.contains("ranked at"), "{fresh}");
}

/// A failing rankings refresh (here: its table is missing) is retried and never stops the
/// writer: aggregates are stored while it fails, and once the table is back the next try
/// writes the ranking; the writer then stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_rankings_refresh_does_not_stop_the_writer() {
    use tracefold_runtime::devbroker::DevBroker;
    use tracefold_tests::ServiceThread;
    let db = TestDb::new("rankings_fail").await;
    let dbn = db.cfg.database.clone();
    let count_rankings = || async {
        rows(&db, &format!("SELECT count() AS n FROM {dbn}.issue_ranking_rows"))
            .await
            .first()
            .map_or(0, |r| num(&r["n"]))
    };
    db.client.query(&format!("DROP TABLE {dbn}.issue_ranking_rows")).execute().await.unwrap();
    let broker = DevBroker::start(1, &tracefold_tests::topics(), Some(1)).unwrap();
    let b = broker.bootstrap_servers();
    let mut wcfg = tracefold_tests::writer_config(&b, &db);
    wcfg.rankings.refresh_seconds = 1;
    let writer = ServiceThread::writer(wcfg);
    let t = db.server_now().await;
    let publish = |recs: Vec<AggregateRecord>| {
        let payloads: Vec<Vec<u8>> = recs.iter().map(|r| serde_json::to_vec(r).unwrap()).collect();
        let b = b.clone();
        async move { tracefold_tests::publish(&b, &tracefold_tests::topics().aggregates, &payloads).await }
    };
    publish(vec![rec("rank", E, t - 600, "r2", "production", 5, users([1, 2]), "", 1)]).await;
    let deadline = std::time::Duration::from_secs(60);
    assert_eq!(db.wait_for_total(5, deadline).await, 5, "stored while the refresh fails");
    // Failing for a few seconds (tried about once a second), the writer still stores.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    publish(vec![rec("rank", F, t - 600, "r2", "production", 7, users([3]), "", 2)]).await;
    assert_eq!(db.wait_for_total(12, deadline).await, 12, "stored while the refresh fails");
    // The table back (the migration's statement): the next try writes the ranking.
    let sql = tracefold_store::migrate::MIGRATIONS.iter().find(|m| m.version == 15).unwrap().sql;
    for stmt in tracefold_store::migrate::statements(sql, &dbn) {
        db.client.query(&stmt).execute().await.unwrap();
    }
    let start = std::time::Instant::now();
    while count_rankings().await == 0 {
        assert!(start.elapsed() < deadline, "the refresh is tried again and succeeds");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(writer.health.liveness().is_ok(), "{:?}", writer.health.liveness());
    writer.stop().unwrap();
}
