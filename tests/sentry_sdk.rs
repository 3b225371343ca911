//! A real Sentry SDK (the Python `sentry-sdk` package) reports errors to the producer through
//! a DSN; the issues and counts in ClickHouse are exactly what the application sent.

use std::collections::BTreeMap;
use std::time::Duration;
use tracefold_devtools::dev::{DevConfig, Pipeline};
use tracefold_producer::config::ProjectConfig;
use tracefold_tests::TestDb;

const KEY: &str = "4f1a2b3c4d5e6f708192a3b4c5d6e7f8";

#[derive(clickhouse::Row, serde::Deserialize, Debug)]
struct Issue {
    title: String,
    culprit: String,
    count: u64,
    platform: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sentry_sdk_events_become_issues() {
    let db = TestDb::new("sentry_sdk").await;
    let cfg = DevConfig {
        clickhouse: db.cfg.clone(),
        projects: vec![ProjectConfig {
            slug: "pyapp".into(),
            id: Some(7),
            keys: vec![KEY.into()],
            rate_per_sec: 0.0,
            burst: 0.0,
            key_rate_per_sec: 0.0,
            key_burst: 0.0,
        }],
        ..DevConfig::default()
    };
    let pipeline = Pipeline::start(cfg, "127.0.0.1:0", Some(2), true).await.expect("pipeline starts");
    let dsn = format!("http://{KEY}@{}/7", pipeline.http_addr);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk/python_app.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(&dsn)
        .output()
        .await
        .expect("python3 runs (scripts/deps.sh installs sentry-sdk)");
    assert!(
        out.status.success(),
        "the SDK app ran: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(db.wait_for_total(14, Duration::from_secs(60)).await, 14, "every event the SDK sent is counted once");
    let issues: Vec<Issue> = db
        .client
        .query(&format!(
            "SELECT title, culprit, count, platform FROM {}.issues_v WHERE project = 'pyapp'",
            db.cfg.database
        ))
        .fetch_all()
        .await
        .unwrap();
    let mut by_title: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for i in &issues {
        assert_eq!(i.platform, "python");
        by_title.entry(i.title.clone()).or_default().push(i.count);
    }
    for v in by_title.values_mut() {
        v.sort_unstable();
    }
    let expected: BTreeMap<String, Vec<u64>> = [
        ("KeyError: 'user-<int>'", vec![5]),
        ("ZeroDivisionError: division by zero", vec![3]),
        ("PaymentDeclined: card declined for amount <int>", vec![2, 2]),
        ("payment <int> failed", vec![2]),
    ]
    .into_iter()
    .map(|(t, c)| (t.to_owned(), c))
    .collect();
    assert_eq!(by_title, expected, "{issues:#?}");
    let culprits: Vec<&str> =
        issues.iter().filter(|i| i.title.starts_with("PaymentDeclined")).map(|i| i.culprit.as_str()).collect();
    assert!(culprits.iter().all(|c| c.ends_with("in charge_card")), "{culprits:?}");
    let users = db.per_issue().await;
    let mut user_counts: Vec<u64> = users.values().map(|(_, u)| *u).collect();
    user_counts.sort_unstable();
    assert_eq!(user_counts, vec![1, 1, 1, 3, 5], "affected users per issue");
    pipeline.stop().await.unwrap();
}
