//! The producer's HTTP contract: JSON errors that name the problem, limits, health and metrics.

use std::time::Duration;
use tracefold_producer::Config;
use tracefold_runtime::devbroker::DevBroker;
use tracefold_runtime::telemetry::Health;
use tracefold_runtime::Shutdown;

struct Server {
    url: String,
    shutdown: Shutdown,
    _broker: DevBroker,
}

async fn server(max_body: usize, max_event: usize) -> Server {
    let broker = DevBroker::start(1, &Default::default(), Some(1)).unwrap();
    let mut cfg = Config { kafka: tracefold_tests::kafka(&broker.bootstrap_servers()), ..Config::default() };
    cfg.http.max_body_bytes = max_body;
    cfg.http.max_event_bytes = max_event;
    cfg.http.delivery_timeout_ms = 5000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = Shutdown::new();
    let health = Health::default();
    tokio::spawn(tracefold_producer::serve(cfg, listener, shutdown.clone(), health.clone(), Vec::new()));
    for _ in 0..100 {
        if health.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(health.is_ready(), "producer became ready");
    Server { url, shutdown, _broker: broker }
}

async fn post(url: &str, ct: &str, body: impl Into<reqwest::Body>) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new().post(url).header("content-type", ct).body(body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is JSON ({e}): {text}")))
}

const GOOD: &str = r#"{"exception":[{"type":"TypeError","value":"x is undefined"}],"user":{"id":"1"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_events_and_returns_ids() {
    let s = server(1 << 20, 64 << 10).await;
    let url = format!("{}/api/v1/projects/web/events", s.url);
    let (status, body) = post(&url, "application/json", GOOD).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["ids"][0].as_str().unwrap().len(), 32);
    let pretty = serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(GOOD).unwrap()).unwrap();
    let (status, body) = post(&url, "application/json", pretty).await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(1)), "a pretty-printed single event is one event");
    let (status, body) = post(&url, "application/x-ndjson", format!("{GOOD}\n\n{GOOD}\n{GOOD}\n")).await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(3)));
    s.shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_that_name_the_problem() {
    let s = server(4096, 1024).await;
    let url = format!("{}/api/v1/projects/web/events", s.url);

    let (status, body) = post(&url, "application/json", "{not json").await;
    assert_eq!(status, 400);
    assert_eq!(body["details"][0]["line"], 1);
    assert!(body["details"][0]["reason"].as_str().unwrap().contains("malformed event json"), "{body}");

    let (status, body) =
        post(&url, "application/x-ndjson", format!("{GOOD}\n{{\"message\":\"m\",\"level\":\"loud\"}}\n")).await;
    assert_eq!(status, 400, "one bad line fails the whole batch");
    assert_eq!(body["details"][0]["line"], 2);
    assert_eq!(body["details"][0]["field"], "level");
    assert!(body["error"].as_str().unwrap().contains("nothing was accepted"));

    let (status, body) = post(&url, "application/json", r#"{"project":"api","message":"m"}"#).await;
    assert_eq!((status, body["details"][0]["field"].as_str()), (400, Some("project")));

    let (status, body) = post(&url, "application/json", "   ").await;
    assert_eq!(status, 400, "{body}");

    let big_event = format!(r#"{{"message":"{}"}}"#, "x".repeat(2000));
    let (status, body) = post(&url, "application/json", big_event).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["details"][0]["reason"].as_str().unwrap().contains("larger than 1024"));

    let (status, body) = post(&url, "application/x-ndjson", vec![b'{'; 10_000]).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("larger than 4096"));

    let (status, body) = post(&format!("{}/api/v1/projects/Not_Valid!/events", s.url), "application/json", GOOD).await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = post(&format!("{}/nope", s.url), "application/json", GOOD).await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("/api/v1/projects/{project}/events"));
    s.shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let s = server(1 << 20, 64 << 10).await;
    let c = reqwest::Client::new();
    assert_eq!(c.get(format!("{}/healthz", s.url)).send().await.unwrap().status(), 200);
    assert_eq!(c.get(format!("{}/readyz", s.url)).send().await.unwrap().status(), 200);
    let (status, _) = post(&format!("{}/api/v1/projects/web/events", s.url), "application/json", GOOD).await;
    assert_eq!(status, 200);
    let metrics = c.get(format!("{}/metrics", s.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tracefold_producer_events_total"), "{metrics}");
    assert!(metrics.contains("tracefold_producer_requests_total"), "{metrics}");
    s.shutdown.trigger();
}
