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
        async move { store.get("web", RELEASE, url, kind).await.unwrap().map(|b| b.to_vec()) }
    };
    assert_eq!(get("~/static/js/main.js", ArtifactKind::Map).await, Some(map.clone().into_bytes()));
    assert_eq!(get("~/static/js/main.js", ArtifactKind::Minified).await, Some(MINIFIED.as_bytes().to_vec()));
    assert_eq!(get("~/static/js/vendor/日本.js", ArtifactKind::Map).await, Some(lone.clone().into_bytes()));
    let by_id = store.get_by_debug_id("web", DEBUG_ID, ArtifactKind::Map).await.unwrap();
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
