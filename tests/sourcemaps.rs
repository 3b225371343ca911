//! Source map uploads end to end: `tracefold sourcemaps upload`'s code path against a real
//! producer, a local object store and a real ClickHouse; what was sent is read back through the
//! store API and the `artifacts` table, and bad uploads get 4xx JSON errors naming the problem.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tracefold_cli::sourcemaps::{collect, render_summary, upload_all, Target};
use tracefold_producer::config::ProjectConfig;
use tracefold_producer::Config;
use tracefold_runtime::devbroker::DevBroker;
use tracefold_runtime::telemetry::Health;
use tracefold_runtime::Shutdown;
use tracefold_symbolicate::store::{sha256_hex, ArtifactKind, ArtifactStore};
use tracefold_symbolicate::Limits;
use tracefold_tests::TestDb;

const KEY: &str = "webkey-0123456789";
const DEBUG_ID: &str = "c0ffee00-1234-4abc-8def-0123456789ab";
/// A release with a slash and non-ASCII characters: one path segment in the store all the same.
const RELEASE: &str = "2026.11/β-✓";
/// Most bytes of a map in these tests (a larger one gets 413).
const MAX_MAP: usize = 4096;

/// `src/app.ts` line 1 `function fail() {`: the minified `function a(){...}` maps its name.
fn map_json(debug_id: Option<&str>) -> String {
    let id = debug_id.map(|d| format!(r#","debug_id":"{d}""#)).unwrap_or_default();
    format!(
        r#"{{"version":3,"file":"main.js","sources":["src/app.ts"],"sourcesContent":["function fail() {{\n  throw new Error('x');\n}}\n"],"names":["fail"],"mappings":"AAAA,SAASA"{id}}}"#
    )
}

const MINIFIED: &str = "function a(){throw new Error('x')}\n//# debugId=C0FFEE00-1234-4ABC-8DEF-0123456789AB\n//# sourceMappingURL=main.js.map\n";

/// The pipeline tests count `tracefold_grouper_symbolication_total`, which is one per process:
/// they run one at a time.
static PIPELINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `tracefold dev` pipeline on a scratch database (`sourcemaps_<name>`) whose producer
/// stores uploads in a scratch directory that its grouper reads, for project `web` (7) with
/// [`KEY`]. The symbolication budget is one no local fetch comes near, so which events are
/// mapped does not depend on timing.
async fn mapped_pipeline(name: &str) -> (TestDb, PathBuf, tracefold_devtools::dev::Pipeline) {
    mapped_pipeline_with(name, tracefold_grouper::config::SourcemapsSection::default().negative_ttl_ms).await
}

/// [`mapped_pipeline`] whose grouper remembers a missing map for `negative_ttl_ms`.
async fn mapped_pipeline_with(
    name: &str,
    negative_ttl_ms: u64,
) -> (TestDb, PathBuf, tracefold_devtools::dev::Pipeline) {
    use tracefold_devtools::dev::{DevConfig, Pipeline};
    let db = TestDb::new(&format!("sourcemaps_{name}")).await;
    let store_dir = scratch(&name.replace('_', "-"));
    let mut cfg = DevConfig { clickhouse: db.cfg.clone(), ..DevConfig::default() };
    cfg.projects = vec![ProjectConfig::unlimited("web", 7, &[KEY])];
    cfg.sourcemaps.store_url = reqwest::Url::from_directory_path(&store_dir).unwrap().to_string();
    cfg.symbolication.budget_ms = 120_000;
    cfg.symbolication.negative_ttl_ms = negative_ttl_ms;
    let pipeline = Pipeline::start(cfg, "127.0.0.1:0", Some(1), true).await.expect("pipeline starts");
    (db, store_dir, pipeline)
}

struct Producer {
    url: String,
    shutdown: Shutdown,
    _broker: DevBroker,
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

async fn producer(db: &TestDb, store_url: &str) -> Producer {
    let broker = DevBroker::start(1, &Default::default(), Some(1)).unwrap();
    let mut cfg = Config {
        kafka: tracefold_tests::kafka(&broker.bootstrap_servers()),
        projects: vec![ProjectConfig::unlimited("web", 7, &[KEY])],
        clickhouse: db.cfg.clone(),
        ..Config::default()
    };
    cfg.sourcemaps.store_url = store_url.to_owned();
    cfg.sourcemaps.max_map_bytes = MAX_MAP;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (shutdown, health) = (Shutdown::new(), Health::default());
    tokio::spawn(tracefold_producer::serve(cfg, listener, shutdown.clone(), health.clone(), Vec::new()));
    tracefold_tests::wait_for("the producer is ready", Duration::from_secs(30), || {
        health.is_ready().then_some(()).ok_or_else(|| "not ready".to_owned())
    })
    .await;
    Producer { url, shutdown, _broker: broker }
}

fn scratch(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let d = std::env::temp_dir().join(format!("tracefold-sourcemaps-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

async fn post(url: &str, key: &str, body: impl Into<reqwest::Body>) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new().post(url).header("x-tracefold-key", key).body(body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is JSON ({e}): {text}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_maps_are_stored_and_recorded_and_bad_ones_are_refused() {
    let db = TestDb::new("sourcemaps").await;
    let (store_dir, build) = (scratch("store"), scratch("build"));
    let store_url = reqwest::Url::from_directory_path(&store_dir).unwrap().to_string();
    let p = producer(&db, &store_url).await;

    // A build: a map with its minified file (debug id in both), and a map alone under a
    // non-ASCII name.
    let map = map_json(Some(DEBUG_ID));
    write(&build.join("js/main.js.map"), &map);
    write(&build.join("js/main.js"), MINIFIED);
    let lone = map_json(None);
    write(&build.join("js/vendor/日本.js.map"), &lone);

    let found = collect(&build, "~/static", &Limits::default()).unwrap();
    let keys: Vec<(&str, ArtifactKind)> = found.artifacts.iter().map(|a| (a.url_key.as_str(), a.kind)).collect();
    assert_eq!(
        keys,
        [
            ("~/static/js/main.js", ArtifactKind::Map),
            ("~/static/js/main.js", ArtifactKind::Minified),
            ("~/static/js/vendor/日本.js", ArtifactKind::Map)
        ]
    );
    let target = Target { endpoint: p.url.clone(), project: "web".into(), release: RELEASE.into(), key: KEY.into() };
    let mut progress = Vec::new();
    let uploaded = upload_all(&target, &found, |i, n, a| progress.push((i, n, a.url_key.clone()))).await.unwrap();
    assert_eq!(progress.iter().map(|(i, n, _)| (*i, *n)).collect::<Vec<_>>(), [(1, 3), (2, 3), (3, 3)]);
    assert_eq!(uploaded[0].debug_id.as_deref(), Some(DEBUG_ID));
    assert_eq!(uploaded[1].debug_id.as_deref(), Some(DEBUG_ID), "the minified file carries the map's id");
    assert_eq!(uploaded[2].debug_id, None);
    let summary = render_summary(&found, &uploaded);
    assert!(summary.contains("~/static/js/vendor/日本.js") && summary.contains(DEBUG_ID), "{summary}");

    // Read back through the store API, by url key and by debug id.
    let store = ArtifactStore::from_url(&store_url).unwrap();
    let get = |url: &'static str, kind| {
        let store = store.clone();
        async move { store.get("web", RELEASE, url, kind, u64::MAX).await.unwrap().map(|b| b.to_vec()) }
    };
    assert_eq!(get("~/static/js/main.js", ArtifactKind::Map).await, Some(map.clone().into_bytes()));
    assert_eq!(get("~/static/js/main.js", ArtifactKind::Minified).await, Some(MINIFIED.as_bytes().to_vec()));
    assert_eq!(get("~/static/js/vendor/日本.js", ArtifactKind::Map).await, Some(lone.clone().into_bytes()));
    let by_id = store.get_by_debug_id("web", DEBUG_ID, ArtifactKind::Map, u64::MAX).await.unwrap();
    assert_eq!(by_id.as_deref(), Some(map.as_bytes()));
    // What was stored parses and resolves.
    let parsed = tracefold_symbolicate::ParsedMap::parse(&by_id.unwrap(), None, &Limits::default()).unwrap();
    let frame = parsed.resolve(1, 10, None).unwrap();
    assert_eq!((frame.file.as_str(), frame.function.as_deref()), ("src/app.ts", Some("fail")));

    // The metadata rows.
    let rows = tracefold_store::artifacts::of_release(&db.client, &db.cfg.database, "web", RELEASE).await.unwrap();
    let got: Vec<(String, String, String, u64, String)> = rows
        .iter()
        .map(|r| (r.url_key.clone(), r.kind.clone(), r.debug_id.clone(), r.size, r.sha256.clone()))
        .collect();
    let row = |url: &str, kind: &str, id: &str, bytes: &str| {
        (url.to_owned(), kind.to_owned(), id.to_owned(), bytes.len() as u64, sha256_hex(bytes.as_bytes()))
    };
    assert_eq!(
        got,
        [
            row("~/static/js/main.js", "map", DEBUG_ID, &map),
            row("~/static/js/main.js", "minified", DEBUG_ID, MINIFIED),
            row("~/static/js/vendor/日本.js", "map", "", &lone),
        ]
    );
    assert!(rows.iter().all(|r| r.project == "web" && r.release == RELEASE && r.uploaded_at > 0));

    // A bad map: the CLI refuses before sending anything, naming the file and the problem ...
    write(&build.join("js/broken.js.map"), "{\"version\":3,\"mappings\":");
    let err = format!("{:#}", collect(&build, "~/static", &Limits::default()).unwrap_err());
    assert!(err.contains("broken.js.map") && err.contains("not a usable source map"), "{err}");
    // ... and the producer answers 400 with a JSON error naming it.
    let ep = |q: &str| format!("{}/api/web/sourcemaps?{q}", p.url);
    let (status, body) = post(&ep("release=1&url=~/broken.js"), KEY, "{\"version\":3,\"mappings\":").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_sourcemap");
    assert!(body["error"].as_str().unwrap().contains("not a usable source map"), "{body}");
    // Over the size limit: 413; a wrong key: 403; none: 401; no release: 400; a debug id that
    // the map contradicts: 400. Each a JSON error, nothing stored.
    let (status, body) = post(&ep("release=1&url=~/big.js"), KEY, vec![b' '; MAX_MAP + 1]).await;
    assert_eq!(status, 413, "{body}");
    let (status, body) = post(&ep("release=1&url=~/a.js"), "not-the-key-123", lone.clone()).await;
    assert_eq!(status, 403, "{body}");
    let r = reqwest::Client::new().post(ep("release=1&url=~/a.js")).body(lone.clone()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (status, body) = post(&ep("url=~/a.js"), KEY, lone.clone()).await;
    assert_eq!((status, body["error"].as_str().unwrap().contains("release")), (400, true), "{body}");
    let other = "00000000-0000-4000-8000-000000000000";
    let (status, body) = post(&ep(&format!("release=1&url=~/a.js&debug_id={other}")), KEY, map.clone()).await;
    assert_eq!((status, body["error"].as_str().unwrap().contains("debug_id")), (400, true), "{body}");
    let rows = tracefold_store::artifacts::of_release(&db.client, &db.cfg.database, "web", "1").await.unwrap();
    assert!(rows.is_empty(), "{rows:?}");
    // The numeric project id works as the slug does.
    let (status, body) =
        post(&format!("{}/api/7/sourcemaps?release=1&url=https://cdn.example/a.js?v=2", p.url), KEY, lone).await;
    assert_eq!((status, body["project"].as_str(), body["url"].as_str()), (200, Some("web"), Some("~/a.js")), "{body}");

    drop(p);
    let _ = std::fs::remove_dir_all(&store_dir);
    let _ = std::fs::remove_dir_all(&build);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_off_without_a_store_url() {
    let db = TestDb::new("sourcemaps_off").await;
    let p = producer(&db, "").await;
    let (status, body) = post(&format!("{}/api/web/sourcemaps?release=1&url=~/a.js", p.url), KEY, map_json(None)).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("store_url"), "{body}");
}

/// A hand-written build of `src/checkout.ts` (function `fail`, throwing on line 2): the
/// minified line is `<pad>function <name>(){throw new Error('x')}`, `pad` a multiple of
/// `var z=1;`, so the throw is at 1-based column `pad + 14`.
struct Build {
    release: &'static str,
    file: &'static str,
    name: &'static str,
    pad: u32,
}

const ORIGINAL_TS: &str = "function fail() {\n  throw new Error('x');\n}\n";

impl Build {
    fn url_key(&self) -> String {
        format!("~/static/js/{}", self.file)
    }

    fn minified(&self) -> String {
        let pad = "var z=1;".repeat(self.pad as usize / 8);
        format!("{pad}function {}(){{throw new Error('x')}}\n//# sourceMappingURL={}.map\n", self.name, self.file)
    }

    /// Mappings (VLQ by hand is error-prone: the `sourcemap` crate's builder writes them).
    fn map(&self) -> String {
        let mut b = sourcemap::SourceMapBuilder::new(Some(self.file));
        let src = b.add_source("src/checkout.ts");
        b.set_source_contents(src, Some(ORIGINAL_TS));
        b.add(0, self.pad, 0, 0, Some("src/checkout.ts"), None, false);
        b.add(0, self.pad + 9, 0, 9, Some("src/checkout.ts"), Some("fail"), false);
        b.add(0, self.pad + 13, 1, 2, Some("src/checkout.ts"), None, false);
        let mut out = Vec::new();
        b.into_sourcemap().to_writer(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn event(&self, i: u64) -> String {
        serde_json::json!({
            "event_id": format!("{i:032x}"),
            "release": self.release,
            "platform": "javascript",
            "exception": [{"type": "Error", "value": "x", "stacktrace": {"frames": [{
                "function": self.name,
                "filename": format!("https://shop.example/static/js/{}", self.file),
                "lineno": 1,
                "colno": self.pad + 14,
                "in_app": true,
            }]}}],
        })
        .to_string()
    }
}

/// The grouper, given the producer's store, maps minified frames before fingerprinting: two
/// builds of the same code (different file hashes, names and columns) with both maps uploaded
/// through the producer are one issue whose sample in ClickHouse has the original frame and the
/// minified one beside it; builds without maps group as before (one issue each) and count
/// `missing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grouper_groups_minified_frames_by_their_original_position() {
    let _serial = PIPELINE.lock().await;
    let (db, store_dir, pipeline) = mapped_pipeline("grouping").await;
    let base = format!("http://{}", pipeline.http_addr);

    let mapped = [
        Build { release: "1.0", file: "main.3f9a2c1b.js", name: "a", pad: 0 },
        Build { release: "1.1", file: "main.77e0d4aa.js", name: "q", pad: 16 },
    ];
    let unmapped = [
        Build { release: "2.0", file: "app.0000aaaa.js", name: "c", pad: 8 },
        Build { release: "2.1", file: "app.1111bbbb.js", name: "d", pad: 24 },
    ];
    for b in &mapped {
        for (kind, body) in [("map", b.map()), ("minified", b.minified())] {
            let url = format!("{base}/api/web/sourcemaps?release={}&url={}&kind={kind}", b.release, b.url_key());
            let (status, body) = post(&url, KEY, body).await;
            assert_eq!(status, 200, "{body}");
        }
    }
    let metrics = |outcome: &'static str| {
        let url = format!("{base}/metrics");
        async move {
            let text = reqwest::get(url).await.unwrap().text().await.unwrap();
            text.lines()
                .filter(|l| {
                    l.starts_with("tracefold_grouper_symbolication_total{")
                        && l.contains(&format!("outcome=\"{outcome}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        }
    };
    let (resolved_before, missing_before) = (metrics("resolved").await, metrics("missing").await);

    let mut lines = Vec::new();
    for (i, b) in mapped.iter().chain(&unmapped).enumerate() {
        for j in 0..3u64 {
            lines.push(b.event(i as u64 * 10 + j + 1));
        }
    }
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/projects/web/events"))
        .header("x-tracefold-key", KEY)
        .header("content-type", "application/x-ndjson")
        .body(lines.join("\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(db.wait_for_total(12, Duration::from_secs(120)).await, 12);

    // One issue of the two mapped builds (6 events), one per unmapped build (3 each).
    let issues = db.per_issue().await;
    let mut counts: Vec<u64> = issues.values().map(|(events, _)| *events).collect();
    counts.sort_unstable();
    assert_eq!(counts, [3, 3, 6], "{issues:?}");
    let issue = issues.iter().find(|(_, (events, _))| *events == 6).map(|(id, _)| id.clone()).unwrap();

    // Its sample has the original frame, its context, and the minified values beside them;
    // title and culprit come from the mapped frame.
    let (client, database) = (&db.client, db.cfg.database.as_str());
    let found = tracefold_store::issues::find_issue(client, database, &issue).await.unwrap();
    let detail = tracefold_store::issues::issue_detail(client, database, found[0].clone(), 24).await.unwrap();
    assert_eq!((detail.title.as_str(), detail.culprit.as_str()), ("Error: x", "src/checkout.ts in fail"));
    let sample: serde_json::Value = serde_json::from_str(detail.sample.as_deref().unwrap()).unwrap();
    let f = &sample["exception"][0]["stacktrace"]["frames"][0];
    assert_eq!((f["filename"].as_str(), f["function"].as_str()), (Some("src/checkout.ts"), Some("fail")), "{f}");
    assert_eq!((f["lineno"].as_u64(), f["colno"].as_u64()), (Some(2), Some(3)), "{f}");
    assert_eq!(f["context_line"], "  throw new Error('x');");
    assert_eq!(f["pre_context"], serde_json::json!(["function fail() {"]));
    let raw = f["raw_filename"].as_str().unwrap();
    assert!(mapped.iter().any(|b| raw == format!("https://shop.example/static/js/{}", b.file)), "{f}");
    assert!(["a", "q"].contains(&f["raw_function"].as_str().unwrap()), "{f}");
    assert_eq!(f["raw_lineno"].as_u64(), Some(1));
    assert!([Some(14), Some(30)].contains(&f["raw_colno"].as_u64()), "{f}");

    // Every event with minified frames is counted: 6 resolved, 6 missing (metrics are
    // emitted once the batches are committed, so wait for them).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (resolved, missing) =
            (metrics("resolved").await - resolved_before, metrics("missing").await - missing_before);
        if (resolved, missing) == (6.0, 6.0) || std::time::Instant::now() > deadline {
            assert_eq!((resolved, missing), (6.0, 6.0));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pipeline.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&store_dir);
}

#[derive(Debug, PartialEq, Eq, clickhouse::Row, serde::Deserialize)]
struct AliasFact {
    alias: String,
    issue_id: String,
}

/// Late maps (docs/sourcemaps.md "Late maps"): a build's events before its map was uploaded
/// make issue S1 (grouped by their minified frames); once the map is there, its later events
/// and a second build's (its map uploaded too) are issue P, grouped by the original frames; the
/// grouper names the issues they had as received in `merged_from`, and the writer stores the
/// facts `S1 -> P` and `S2 -> P` (build 2's minified issue) in `issue_aliases`, and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_uploaded_after_the_first_events_records_the_merge_of_their_issue() {
    let _serial = PIPELINE.lock().await;
    // The grouper remembers a map's absence for 2 s (not the default 10 s): the events after
    // the upload, sent later than that, find the map.
    const NEGATIVE_TTL_MS: u64 = 2_000;
    let (db, store_dir, pipeline) = mapped_pipeline_with("late", NEGATIVE_TTL_MS).await;
    let base = format!("http://{}", pipeline.http_addr);
    let first = Build { release: "1.0", file: "main.5e1a7e00.js", name: "a", pad: 8 };
    let second = Build { release: "1.1", file: "main.5e1a7e11.js", name: "k", pad: 24 };
    let send = |events: Vec<String>| {
        let base = base.clone();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{base}/api/v1/projects/web/events"))
                .header("x-tracefold-key", KEY)
                .header("content-type", "application/x-ndjson")
                .body(events.join("\n"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
    };
    let upload = |b: &Build| {
        let (base, url_key, release) = (base.clone(), b.url_key(), b.release);
        let files = [("map", b.map()), ("minified", b.minified())];
        async move {
            for (kind, body) in files {
                let url = format!("{base}/api/web/sourcemaps?release={release}&url={url_key}&kind={kind}");
                let (status, body) = post(&url, KEY, body).await;
                assert_eq!(status, 200, "{body}");
            }
        }
    };

    // Build 1 before its map: one issue, S1, by its minified frame.
    send((1..=3).map(|i| first.event(i)).collect()).await;
    assert_eq!(db.wait_for_total(3, Duration::from_secs(120)).await, 3);
    let before = db.per_issue().await;
    assert_eq!(before.len(), 1, "{before:?}");
    let s1 = before.keys().next().unwrap().clone();
    // Both maps uploaded; then more events of build 1 and of build 2.
    upload(&first).await;
    upload(&second).await;
    // Build 1's events were grouped (the missing map remembered) before they were counted.
    tokio::time::sleep(Duration::from_millis(NEGATIVE_TTL_MS + 1_000)).await;
    send((4..=6).map(|i| first.event(i)).chain((7..=9).map(|i| second.event(i))).collect()).await;
    assert_eq!(db.wait_for_total(9, Duration::from_secs(120)).await, 9);
    let after = db.per_issue().await;
    assert_eq!(after.len(), 2, "S1 and P: {after:?}");
    assert_eq!(after[&s1].0, 3, "S1 keeps the events sent before the map: {after:?}");
    let p = after.iter().find(|(id, _)| **id != s1).map(|(id, _)| id.clone()).unwrap();
    assert_eq!(after[&p].0, 6, "{after:?}");

    // The merge facts, stored with the aggregates.
    let facts: Vec<AliasFact> = db
        .client
        .query(&format!(
            "SELECT alias, issue_id FROM {}.issue_aliases FINAL WHERE project = 'web' ORDER BY alias",
            db.cfg.database
        ))
        .fetch_all()
        .await
        .unwrap();
    // S1 -> P, and build 2's own minified issue S2 -> P (S2 has no events: all of build 2's
    // were mapped), nothing else.
    assert_eq!(facts.len(), 2, "{facts:?}");
    assert!(facts.contains(&AliasFact { alias: s1.clone(), issue_id: p.clone() }), "S1 -> P: {facts:?}");
    let s2 = facts.iter().find(|f| f.alias != s1).unwrap();
    assert_eq!(s2.issue_id, p, "{facts:?}");
    assert!(s2.alias != p && s2.alias.len() == 32, "{facts:?}");

    // Read folded: `tracefold top` shows one issue, P, with all nine events and S1 merged into
    // it; `tracefold issue S1` answers with P and says S1 was merged.
    let top = tracefold_store::issues::top_issues(&db.client, &db.cfg.database, 3600, 20, None).await.unwrap();
    assert_eq!(top.len(), 1, "{top:?}");
    assert_eq!((&top[0].issue_id, top[0].count), (&p, 9), "{top:?}");
    assert!(top[0].merged.contains(&s1), "{top:?}");
    let found = tracefold_store::issues::find_issue(&db.client, &db.cfg.database, &s1).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((&found[0].issue_id, found[0].count, found[0].asked_alias.as_ref()), (&p, 9, Some(&s1)), "{found:?}");
    assert!(found[0].merged.iter().any(|m| m.issue_id == s1 && m.count == 3), "{found:?}");
    pipeline.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&store_dir);
}

/// Debug ids end to end: maps uploaded with a debug id (under a release the events do not
/// name) are found for Sentry events (store endpoint) whose `debug_meta.images` name them, with
/// no release or another one; the producer passes `debug_meta` through the event model to the
/// grouper. Two builds are one issue with the original frame; a build whose events name no
/// debug id (and no release) stays minified, its own issue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_are_found_by_the_debug_ids_of_sentry_events() {
    let _serial = PIPELINE.lock().await;
    let (db, store_dir, pipeline) = mapped_pipeline("debug_id").await;
    let base = format!("http://{}", pipeline.http_addr);

    let builds = [
        (
            Build { release: "uploaded-as", file: "main.3f9a2c1b.js", name: "a", pad: 0 },
            "0a0a0a0a-0000-4000-8000-000000000001",
        ),
        (
            Build { release: "uploaded-as", file: "main.77e0d4aa.js", name: "q", pad: 16 },
            "0B0B0B0B-0000-4000-8000-000000000002",
        ),
    ];
    for (b, id) in &builds {
        for (kind, body) in [("map", b.map()), ("minified", b.minified())] {
            let url = format!(
                "{base}/api/web/sourcemaps?release={}&url={}&kind={kind}&debug_id={id}",
                b.release,
                b.url_key()
            );
            let (status, body) = post(&url, KEY, body).await;
            assert_eq!(status, 200, "{body}");
        }
    }
    let other = Build { release: "", file: "main.00000000.js", name: "c", pad: 8 };
    let mut sent = 0u64;
    let mut send = |b: &Build, release: Option<&str>, id: Option<&str>| {
        sent += 1;
        let mut ev: serde_json::Value = serde_json::from_str(&b.event(sent)).unwrap();
        let o = ev.as_object_mut().unwrap();
        o.remove("release");
        if let Some(r) = release {
            o.insert("release".into(), r.into());
        }
        if let Some(id) = id {
            o.insert(
                "debug_meta".into(),
                serde_json::json!({"images": [
                    {"type": "other", "code_file": "x", "debug_id": "y"},
                    {"type": "sourcemap", "code_file": format!("https://shop.example/static/js/{}", b.file), "debug_id": id},
                ]}),
            );
        }
        let url = format!("{base}/api/7/store/");
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .header("x-sentry-auth", format!("Sentry sentry_version=7, sentry_key={KEY}"))
                .body(ev.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
    };
    for (k, (b, id)) in builds.iter().enumerate() {
        for j in 0..3 {
            // No release, or one that names no uploaded map.
            let release = (j % 2 == 1).then_some(if k == 0 { "1.0" } else { "9.9" });
            send(b, release, Some(id)).await;
        }
    }
    for _ in 0..3 {
        send(&other, None, None).await;
    }
    assert_eq!(db.wait_for_total(9, Duration::from_secs(120)).await, 9);
    let issues = db.per_issue().await;
    let mut counts: Vec<u64> = issues.values().map(|(events, _)| *events).collect();
    counts.sort_unstable();
    assert_eq!(counts, [3, 6], "{issues:?}");
    let issue = issues.iter().find(|(_, (events, _))| *events == 6).map(|(id, _)| id.clone()).unwrap();
    let (client, database) = (&db.client, db.cfg.database.as_str());
    let found = tracefold_store::issues::find_issue(client, database, &issue).await.unwrap();
    let detail = tracefold_store::issues::issue_detail(client, database, found[0].clone(), 24).await.unwrap();
    assert_eq!(detail.culprit, "src/checkout.ts in fail");
    pipeline.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&store_dir);
}
