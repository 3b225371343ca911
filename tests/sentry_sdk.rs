//! A real Sentry SDK (the Python `sentry-sdk` package) reports errors to the producer through
//! a DSN; the issues and counts in ClickHouse are exactly what the application sent.

use std::collections::BTreeMap;
use std::time::Duration;
use tracefold_devtools::dev::{add_default_project, DevConfig, DevProjectOrigin, Pipeline};
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
        projects: vec![ProjectConfig::unlimited("pyapp", 7, &[KEY])],
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

/// What `tracefold dev` offers an SDK out of the box: the default project (`dev`, id 1) and the
/// DSN it prints, computed by the same function. The SDK gets that DSN and nothing else (no
/// config file, no other option, no `SENTRY_*` variables).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dsn_tracefold_dev_prints_works_with_nothing_else() {
    let db = TestDb::new("sentry_sdk_dev_dsn").await;
    let state = std::env::temp_dir().join(format!("tracefold-dev-dsn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let mut cfg = DevConfig { clickhouse: db.cfg.clone(), ..DevConfig::default() };
    let project = add_default_project(&mut cfg, &state).expect("the default project");
    assert_eq!(project.origin, DevProjectOrigin::NewKey);
    let pipeline = Pipeline::start(cfg, "127.0.0.1:0", Some(2), true).await.expect("pipeline starts");
    let dsn = project.dsn(pipeline.http_addr).expect("a DSN");
    assert!(dsn.starts_with("http://") && dsn.ends_with(&format!("@{}/1", pipeline.http_addr)), "{dsn}");
    let app = "import sys\n\
               import sentry_sdk\n\
               sentry_sdk.init(sys.argv[1])\n\
               def parse_quantity(s):\n    return int(s)\n\
               try:\n    parse_quantity('zwölf 🍎')\n\
               except ValueError:\n    sentry_sdk.capture_exception()\n\
               sentry_sdk.flush()\n";
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg("-c").arg(app).arg(&dsn);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SENTRY_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().await.expect("python3 runs (scripts/deps.sh installs sentry-sdk)");
    assert!(
        out.status.success(),
        "the SDK app ran: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(db.wait_for_total(1, Duration::from_secs(60)).await, 1, "the event is counted once");
    let issues: Vec<Issue> = db
        .client
        .query(&format!(
            "SELECT title, culprit, count, platform FROM {}.issues_v WHERE project = 'dev'",
            db.cfg.database
        ))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert!(issues[0].title.starts_with("ValueError: invalid literal for int()"), "{issues:#?}");
    assert_eq!((issues[0].count, issues[0].platform.as_str()), (1, "python"));
    let addr = pipeline.http_addr;
    pipeline.stop().await.unwrap();
    // The next start of `tracefold dev` offers the same DSN.
    let again = add_default_project(&mut DevConfig::default(), &state).unwrap();
    assert_eq!((again.origin, again.dsn(addr)), (DevProjectOrigin::KeptKey, Some(dsn.clone())));
    std::fs::remove_dir_all(&state).unwrap();
}
