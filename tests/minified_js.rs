//! Real minified JavaScript end to end: `node` runs one bug of two of the esbuild-made builds in
//! tests/fixtures/sourcemaps (tests/fixtures/sourcemaps/runner.mjs turns V8's `err.stack` into
//! a Sentry event and POSTs it to the producer's store endpoint), with both builds' maps and
//! minified files uploaded first; the events are accepted, published with the minified frames
//! exactly as V8 reported them, counted in ClickHouse, and grouped by the grouper's source-map
//! hook into one issue named by the original function and file, whose sample carries the
//! mapped frames and the minified ones (`raw_*`).
//!
//! Needs `node` (18+, for fetch) on the PATH: .ci/run installs Debian's `nodejs`. Without it the
//! test fails saying so; it is never skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracefold_devtools::dev::{DevConfig, Pipeline};
use tracefold_producer::config::ProjectConfig;
use tracefold_tests::TestDb;

const KEY: &str = "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e";
/// The bug run in both builds (a chain of three functions ending in a thrown RangeError).
const BUG: usize = 4;

#[derive(clickhouse::Row, serde::Deserialize)]
struct Issue {
    issue_id: String,
    title: String,
    culprit: String,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct Sample {
    sample: String,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sourcemaps")
}

fn node_version() -> String {
    let out = std::process::Command::new("node").arg("--version").output().unwrap_or_else(|e| {
        panic!("this test runs `node` (Node.js 18 or newer; Debian package `nodejs`, installed by .ci/run): {e}")
    });
    assert!(out.status.success(), "`node --version` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minified_builds_reported_by_node_keep_their_frames() {
    let version = node_version();
    let major: u32 = version.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    assert!(major >= 18, "runner.mjs needs Node.js 18 or newer (fetch), found {version}");

    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("stacks.json")).unwrap()).unwrap();
    // Build 0 carries a debug id, build 3 another; they differ in lines, columns and names.
    let builds: Vec<usize> = vec![0, 3];

    let db = TestDb::new("minified_js").await;
    let store_dir = std::env::temp_dir().join(format!("tracefold-minified-js-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store_dir);
    std::fs::create_dir_all(&store_dir).unwrap();
    let mut cfg = DevConfig {
        clickhouse: db.cfg.clone(),
        projects: vec![ProjectConfig::unlimited("shop", 9, &[KEY])],
        ..DevConfig::default()
    };
    cfg.sourcemaps.store_url = reqwest::Url::from_directory_path(&store_dir).unwrap().to_string();
    // The dev grouper reads the producer's store: its hook maps the frames. A budget no fetch
    // from a local directory comes near, so that the grouping does not depend on timing.
    cfg.symbolication.budget_ms = 600_000;
    let pipeline = Pipeline::start(cfg, "127.0.0.1:0", Some(1), true).await.expect("pipeline starts");
    let base = format!("http://{}", pipeline.http_addr);

    // Both builds' maps and minified files, as `tracefold sourcemaps upload` would send them.
    let http = reqwest::Client::new();
    for &b in &builds {
        let build = &table["builds"][b];
        let (file, release, url) =
            (build["file"].as_str().unwrap(), build["release"].as_str().unwrap(), build["url"].as_str().unwrap());
        for (kind, path) in [("map", format!("builds/{file}.map")), ("minified", format!("builds/{file}"))] {
            let resp = http
                .post(format!("{base}/api/shop/sourcemaps"))
                .query(&[("release", release), ("url", url), ("kind", kind)])
                .header("X-Tracefold-Key", KEY)
                .body(std::fs::read(fixtures().join(&path)).unwrap())
                .send()
                .await
                .unwrap();
            let status = resp.status();
            assert!(status.is_success(), "upload of {path}: {status} {}", resp.text().await.unwrap());
        }
    }

    // node reports the bug of each build to the Sentry store endpoint.
    let store = format!("{base}/api/9/store/?sentry_key={KEY}");
    let mut sent: BTreeMap<usize, String> = BTreeMap::new();
    for &b in &builds {
        let file = table["builds"][b]["file"].as_str().unwrap();
        let out = tokio::process::Command::new("node")
            .arg(fixtures().join("runner.mjs"))
            .args(["--build", &format!("builds/{file}"), "--bug", &BUG.to_string(), "--id", &(4200 + b).to_string()])
            .args(["--store", &store])
            .current_dir(fixtures())
            .output()
            .await
            .expect("node runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "runner.mjs for build {b}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let answer: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(answer["status"], 200, "{answer}");
        sent.insert(b, answer["event_id"].as_str().unwrap().to_owned());
    }

    // Accepted and counted once each.
    assert_eq!(db.wait_for_total(2, Duration::from_secs(60)).await, 2, "both events are counted");

    // Published with the minified frames exactly as V8 reported them (the app's frames, oldest
    // first: function, line, column), on the build's URL.
    let published = read_events(&pipeline, sent.len());
    for (&b, id) in &sent {
        let event = published.get(id).unwrap_or_else(|| panic!("event {id} of build {b} was published"));
        let exception = &event["exception"];
        let exception = exception.get("values").unwrap_or(exception);
        let frames = exception[0]["stacktrace"]["frames"].as_array().expect("frames");
        let url = table["builds"][b]["url"].as_str().unwrap();
        let got: Vec<(String, u64, u64)> = frames
            .iter()
            .filter(|f| f["in_app"] == true)
            .map(|f| {
                assert_eq!(f["filename"], url, "{f}");
                (
                    f["function"].as_str().unwrap().to_owned(),
                    f["lineno"].as_u64().unwrap(),
                    f["colno"].as_u64().unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, u64, u64)> = table["stacks"][b][BUG]["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f[0].as_str().unwrap().to_owned(), f[1].as_u64().unwrap(), f[2].as_u64().unwrap()))
            .collect();
        assert_eq!(got, want, "build {b}");
        assert_eq!(exception[0]["type"], table["stacks"][b][BUG]["type"]);
        assert_eq!(event["release"], table["builds"][b]["release"]);
    }
    let first = &sent[&builds[0]];
    let other = &sent[&builds[1]];
    assert_ne!(published[first]["exception"], published[other]["exception"], "the builds' frames differ");

    // The grouper mapped both builds' frames through the uploaded maps: one issue, named by
    // the original function and file of the crash frame (the last one, where V8 threw).
    let issues = db.per_issue().await;
    assert_eq!(issues.len(), 1, "both builds group into one issue: {issues:?}");
    assert_eq!(issues.values().map(|(n, _)| n).sum::<u64>(), 2, "{issues:?}");
    let original = &table["original"][BUG];
    let crash = original["frames"].as_array().unwrap().last().unwrap();
    let (function, file) = (crash[0].as_str().unwrap(), crash[1].as_str().unwrap());
    let file = file.rsplit('/').next().unwrap();
    let dbn = &db.cfg.database;
    let Issue { issue_id, title, culprit } = db
        .client
        .query(&format!("SELECT issue_id, title, culprit FROM {dbn}.issues_v WHERE project = 'shop'"))
        .fetch_one()
        .await
        .unwrap();
    assert!(title.starts_with(original["type"].as_str().unwrap()), "{title}");
    assert!(culprit.ends_with(&format!("{file} in {function}")), "{culprit}");

    // The sample keeps both: the original frames (with source context) and the minified ones
    // as raw_*, as V8 reported them in one of the two builds.
    let Sample { sample } = db
        .client
        .query(&format!(
            "SELECT argMax(sample, seen) AS sample FROM {dbn}.issue_samples WHERE project = 'shop' AND issue_id = ?"
        ))
        .bind(&issue_id)
        .fetch_one()
        .await
        .unwrap();
    let sample: serde_json::Value = serde_json::from_str(&sample).unwrap();
    let exception = &sample["exception"];
    let exception = exception.get("values").unwrap_or(exception);
    let frames: Vec<&serde_json::Value> = exception[0]["stacktrace"]["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .filter(|f| f.get("raw_function").is_some())
        .collect();
    let b = builds
        .iter()
        .copied()
        .find(|&b| frames.first().is_some_and(|f| f["raw_filename"] == table["builds"][b]["url"]))
        .unwrap_or_else(|| panic!("the sample's frames are mapped from one of the builds: {sample}"));
    let minified = table["stacks"][b][BUG]["frames"].as_array().unwrap();
    let mapped: Vec<(&str, &str, u64, u64)> = frames
        .iter()
        .map(|f| {
            assert_eq!(f["raw_filename"], table["builds"][b]["url"], "{f}");
            assert!(f["context_line"].is_string(), "source context: {f}");
            (
                f["function"].as_str().unwrap_or(""),
                f["raw_function"].as_str().unwrap_or(""),
                f["raw_lineno"].as_u64().unwrap_or(0),
                f["raw_colno"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let want: Vec<(&str, &str, u64, u64)> = original["frames"]
        .as_array()
        .unwrap()
        .iter()
        .zip(minified)
        .map(|(o, m)| (o[0].as_str().unwrap(), m[0].as_str().unwrap(), m[1].as_u64().unwrap(), m[2].as_u64().unwrap()))
        .collect();
    assert_eq!(mapped, want, "every app frame mapped, its minified values kept: {sample}");
    let crash_frame = frames.last().unwrap();
    assert!(crash_frame["filename"].as_str().unwrap().ends_with(file), "{crash_frame}");

    pipeline.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&store_dir);
}

/// Every message on the pipeline's events topic (one partition), by key (the event id), read
/// to the end offset, which holds at least `n` events.
fn read_events(pipeline: &Pipeline, n: usize) -> BTreeMap<String, serde_json::Value> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let topic = pipeline.cfg.topics.events.clone();
    let reader = || -> BaseConsumer {
        tracefold_runtime::kafka::consumer_config(&tracefold_tests::kafka(&pipeline.bootstrap_servers()), "reader")
            .create()
            .unwrap()
    };
    let end = reader().fetch_watermarks(&topic, 0, Duration::from_secs(10)).unwrap().1;
    assert!(end >= n as i64, "{end} events on {topic}, expected {n}");
    let c = reader();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let mut out = BTreeMap::new();
    let mut read = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while read < end {
        assert!(std::time::Instant::now() < deadline, "read {read} of {end} events");
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            read += 1;
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            out.insert(key, serde_json::from_slice(m.payload().unwrap_or_default()).expect("published JSON"));
        }
    }
    out
}
