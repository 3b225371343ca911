//! The producer's HTTP contract: JSON errors that name the problem, limits, health and metrics.

use std::io::Write as _;
use std::time::Duration;
use tracefold_producer::config::ProjectConfig;
use tracefold_producer::Config;
use tracefold_runtime::devbroker::DevBroker;
use tracefold_runtime::telemetry::Health;
use tracefold_runtime::Shutdown;

/// The events topic (one partition in these tests).
const EVENTS: &str = "tracefold.events";

/// Held by the tests that send Sentry envelopes: the envelope item counters live in the one
/// metrics recorder of this test process, and one test reads exact increments of them.
static ENVELOPE_METRICS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Server {
    url: String,
    shutdown: Shutdown,
    broker: DevBroker,
}

impl Server {
    /// Keys (event ids) of every message on the events topic.
    fn published(&self) -> Vec<String> {
        self.messages().into_iter().map(|(k, _)| k).collect()
    }

    fn reader(&self) -> rdkafka::consumer::BaseConsumer {
        tracefold_runtime::kafka::consumer_config(&tracefold_tests::kafka(&self.broker.bootstrap_servers()), "reader")
            .create()
            .unwrap()
    }

    /// The end offset of the events topic's partition: how many events were ever published.
    fn end_offset(&self) -> i64 {
        use rdkafka::consumer::Consumer;
        self.reader().fetch_watermarks(EVENTS, 0, Duration::from_secs(10)).unwrap().1
    }

    /// Key and payload of every message on the events topic, read to its end.
    fn messages(&self) -> Vec<(String, Vec<u8>)> {
        use rdkafka::consumer::Consumer;
        use rdkafka::Message;
        let end = self.end_offset();
        let c = self.reader();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(EVENTS, 0, rdkafka::Offset::Beginning).unwrap();
        c.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while (out.len() as i64) < end {
            assert!(std::time::Instant::now() < deadline, "read {} of {end} events", out.len());
            if let Some(m) = c.poll(Duration::from_millis(200)) {
                let m = m.unwrap();
                out.push((
                    String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    m.payload().unwrap_or_default().to_vec(),
                ));
            }
        }
        out
    }

    /// The published payload of event `id`, read strictly (serde_json refuses lone surrogates).
    fn published_event(messages: &[(String, Vec<u8>)], id: &str) -> serde_json::Value {
        let (_, p) = messages.iter().find(|(k, _)| k == id).unwrap_or_else(|| panic!("event {id} was published"));
        serde_json::from_slice(p).unwrap_or_else(|e| panic!("published bytes of {id} are strict JSON: {e}"))
    }
}

fn project(slug: &str, id: u64, key: &str, rate: f64) -> ProjectConfig {
    // A burst of 5 with a slow refill: five requests pass, the sixth waits.
    let burst = if rate > 0.0 { 5.0 } else { 0.0 };
    ProjectConfig {
        slug: slug.into(),
        id: Some(id),
        keys: vec![key.into()],
        rate_per_sec: rate,
        burst,
        key_rate_per_sec: 0.0,
        key_burst: 0.0,
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn send(
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut r = reqwest::Client::new().post(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.body(body).send().await.unwrap();
    let (status, h) = (resp.status().as_u16(), resp.headers().clone());
    let text = resp.text().await.unwrap();
    (status, h, serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is JSON ({e}): {text}")))
}

const SENTRY_EVENT: &str = r#"{"event_id":"fc6d8c0c43fc46308ea5bc7a3b7d3c64","platform":"python","level":"error",
  "exception":{"values":[{"type":"KeyError","value":"'user'","stacktrace":{"frames":[
    {"function":"profile","module":"app.views","filename":"app/views.py","lineno":42,"in_app":true}]}}]},
  "user":{"id":"7"},"tags":{"route":"/profile"}}"#;

async fn server(max_body: usize, max_event: usize) -> Server {
    server_with(max_body, max_event, Vec::new(), 5000).await
}

async fn server_with(max_body: usize, max_event: usize, projects: Vec<ProjectConfig>, delivery_ms: u64) -> Server {
    server_cfg(projects, |cfg| {
        cfg.http.max_body_bytes = max_body;
        cfg.http.max_event_bytes = max_event;
        cfg.http.delivery_timeout_ms = delivery_ms;
    })
    .await
}

/// A producer with `projects`, the defaults otherwise, changed by `edit`.
async fn server_cfg(projects: Vec<ProjectConfig>, edit: impl FnOnce(&mut Config)) -> Server {
    server_health(Health::default(), projects, edit).await
}

/// [`server_cfg`] serving with `health` (its deadline is the producer's loops').
async fn server_health(health: Health, projects: Vec<ProjectConfig>, edit: impl FnOnce(&mut Config)) -> Server {
    let broker = DevBroker::start(1, &Default::default(), Some(1)).unwrap();
    let mut cfg = Config { kafka: tracefold_tests::kafka(&broker.bootstrap_servers()), projects, ..Config::default() };
    cfg.http.delivery_timeout_ms = 5000;
    edit(&mut cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = Shutdown::new();
    let serving = tokio::spawn(tracefold_producer::serve(cfg, listener, shutdown.clone(), health.clone(), Vec::new()));
    for _ in 0..100 {
        if health.is_ready() {
            break;
        }
        if serving.is_finished() {
            panic!("the producer did not start: {:#}", serving.await.unwrap().unwrap_err());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(health.is_ready(), "producer became ready");
    Server { url, shutdown, broker }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentry_store_and_envelope_with_keys_and_compression() {
    let _metrics = ENVELOPE_METRICS.lock().await;
    let s = server_with(
        1 << 20,
        64 << 10,
        vec![project("web", 42, "publickey1", 0.0), project("api", 43, "publickey2", 0.0)],
        5000,
    )
    .await;
    let auth = "Sentry sentry_version=7, sentry_client=sentry.python/2.19.0, sentry_key=publickey1";
    let store = format!("{}/api/42/store/", s.url);

    let (status, _, body) =
        send(&store, &[("x-sentry-auth", auth), ("content-type", "application/json")], SENTRY_EVENT).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "fc6d8c0c43fc46308ea5bc7a3b7d3c64");

    // Envelope, gzip-compressed, key in the query string; non-event items are skipped.
    let event2 =
        SENTRY_EVENT.replace("fc6d8c0c43fc46308ea5bc7a3b7d3c64", "0123456789abcdef0123456789abcdef").replace('\n', "");
    let envelope = format!(
        "{{\"event_id\":\"0123456789abcdef0123456789abcdef\"}}\n{{\"type\":\"session\"}}\n{{\"started\":\"2026-11-26T00:00:00Z\"}}\n{{\"type\":\"event\",\"length\":{}}}\n{}\n{{\"type\":\"attachment\",\"length\":5}}\nhello\n",
        event2.len(),
        event2
    );
    let (status, _, body) = send(
        &format!("{}/api/42/envelope/?sentry_key=publickey1&sentry_version=7", s.url),
        &[("content-encoding", "gzip"), ("content-type", "application/x-sentry-envelope")],
        gzip(envelope.as_bytes()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "0123456789abcdef0123456789abcdef");

    // Refusals: nothing of these is published.
    let (status, _, _) = send(&store, &[], SENTRY_EVENT).await;
    assert_eq!(status, 401, "no key");
    let wrong = auth.replace("publickey1", "publickey2");
    let (status, _, body) = send(&store, &[("x-sentry-auth", &wrong)], SENTRY_EVENT).await;
    assert_eq!(status, 403, "another project's key: {body}");
    let (status, _, _) = send(&format!("{}/api/99/store/", s.url), &[("x-sentry-auth", auth)], SENTRY_EVENT).await;
    assert_eq!(status, 403, "unknown project");
    let (status, _, _) = send(&format!("{}/api/web/store/", s.url), &[("x-sentry-auth", auth)], SENTRY_EVENT).await;
    assert_eq!(status, 400, "project ids are numbers");
    let (status, _, body) = send(&store, &[("x-sentry-auth", auth)], "{\"exception\": [").await;
    assert_eq!(status, 400, "{body}");
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let (status, _, _) = send(&store, &[("x-sentry-auth", auth)], deep).await;
    assert_eq!(status, 400, "deep nesting is refused, not a crash");
    let bomb = gzip(&vec![b' '; 8 << 20]);
    let (status, _, body) = send(&store, &[("x-sentry-auth", auth), ("content-encoding", "gzip")], bomb).await;
    assert_eq!(status, 413, "a gzip bomb stops at the limit: {body}");
    let (status, _, _) = send(&store, &[("x-sentry-auth", auth), ("content-encoding", "br")], "x").await;
    assert_eq!(status, 415);
    // An envelope's event item over the event limit: 413, as on every endpoint.
    let big = format!("{{\"message\":\"{}\"}}", "x".repeat(70 << 10));
    let env = format!("{{}}\n{{\"type\":\"event\",\"length\":{}}}\n{big}\n", big.len());
    let (status, _, body) = send(&format!("{}/api/42/envelope/?sentry_key=publickey1", s.url), &[], env).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["details"][0]["line"], 1);
    // The native endpoint needs the key too, for registered projects.
    let (status, _, _) = send(&format!("{}/api/v1/projects/web/events", s.url), &[], GOOD).await;
    assert_eq!(status, 401);
    let (status, _, _) =
        send(&format!("{}/api/v1/projects/web/events", s.url), &[("x-tracefold-key", "publickey1")], GOOD).await;
    assert_eq!(status, 200);

    let mut published = s.published();
    published.sort();
    assert_eq!(published.len(), 3, "{published:?}");
    assert!(published.contains(&"fc6d8c0c43fc46308ea5bc7a3b7d3c64".to_owned()));
    assert!(published.contains(&"0123456789abcdef0123456789abcdef".to_owned()));
    s.shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_and_leave_other_projects_alone() {
    // Both projects have a limit of their own: a burst of 5, refilled at one event per 5 s.
    let s = server_with(
        1 << 20,
        64 << 10,
        vec![project("web", 1, "webkey123", 0.2), project("api", 2, "apikey123", 0.2)],
        5000,
    )
    .await;
    let store = |id: u32, key: &str| format!("{}/api/{id}/store/?sentry_key={key}", s.url);
    let event = |n: u32| SENTRY_EVENT.replace("fc6d8c0c43fc46308ea5bc7a3b7d3c64", &id(n));
    let t0 = std::time::Instant::now();
    for n in 0..5 {
        let (status, _, body) = send(&store(1, "webkey123"), &[], event(n)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, headers, body) = send(&store(1, "webkey123"), &[], event(5)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    assert_eq!(status, 429, "{body}");
    // The bucket refilled 0.2 per second since the first request: the missing token comes
    // back within 5 s.
    let retry = retry_after(&headers);
    let soonest = ((1.0 - 0.2 * elapsed) / 0.2).ceil().max(1.0) as u64;
    assert!((soonest..=5).contains(&retry), "Retry-After {retry} after {elapsed:.2} s");
    assert_eq!(headers["x-sentry-rate-limits"], format!("{retry}::project"));
    // The other project still has its whole burst, and its own limit.
    for n in 10..15 {
        let (status, _, body) = send(&store(2, "apikey123"), &[], event(n)).await;
        assert_eq!(status, 200, "other projects are unaffected: {body}");
    }
    let (status, headers, body) = send(&store(2, "apikey123"), &[], event(15)).await;
    assert_eq!(status, 429, "its own limit holds: {body}");
    assert_eq!(headers["x-sentry-rate-limits"], format!("{}::project", retry_after(&headers)));
    // Exactly the admitted events are in Kafka.
    let mut published = s.published();
    published.sort();
    assert_eq!(published, (0..5).chain(10..15).map(id).collect::<Vec<_>>());
    s.shutdown.trigger();
}

/// The `Retry-After` of a response, in seconds.
fn retry_after(headers: &reqwest::header::HeaderMap) -> u64 {
    headers.get("retry-after").expect("Retry-After").to_str().unwrap().parse().expect("Retry-After in seconds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_gives_503_and_no_accepted_event_is_lost() {
    let s = server_with(1 << 20, 64 << 10, Vec::new(), 1500).await;
    let url = format!("{}/api/v1/projects/web/events", s.url);
    let mut accepted = Vec::new();
    for _ in 0..5 {
        let (status, _, body) = send(&url, &[], GOOD).await;
        assert_eq!(status, 200, "{body}");
        accepted.push(body["ids"][0].as_str().unwrap().to_owned());
    }
    s.broker.cluster().broker_down(1).unwrap();
    let (status, headers, body) = send(&url, &[], GOOD).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers.get("retry-after").unwrap(), "5");
    s.broker.cluster().broker_up(1).unwrap();
    // Back: accepted again (after the client's reconnect).
    let mut ok = false;
    for _ in 0..40 {
        let (status, _, body) = send(&url, &[], GOOD).await;
        if status == 200 {
            accepted.push(body["ids"][0].as_str().unwrap().to_owned());
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ok, "the producer recovers when Kafka is back");
    let published = s.published();
    for id in &accepted {
        assert!(published.contains(id), "accepted event {id} is in Kafka");
    }
    s.shutdown.trigger();
}

const WEB_KEY: &str = "publickey1";

fn web() -> Vec<ProjectConfig> {
    vec![project("web", 42, WEB_KEY, 0.0)]
}

fn id(n: u32) -> String {
    format!("{n:032x}")
}

/// Bytes that do not compress (a fixed pseudo-random sequence).
fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn envelope(header: &str, event: &str) -> String {
    format!("{header}\n{{\"type\":\"event\",\"length\":{}}}\n{event}\n", event.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_surrogates_are_accepted_on_every_endpoint_with_replacement_characters() {
    let _metrics = ENVELOPE_METRICS.lock().await;
    let s = server_cfg(web(), |_| {}).await;
    let native = format!("{}/api/v1/projects/web/events", s.url);
    let key = [("x-tracefold-key", WEB_KEY)];
    // A JavaScript client cut a string inside an emoji: JSON.stringify wrote a lone half.
    let cut = |n: u32| {
        format!(
            r#"{{"event_id":"{}","project":"web","message":"cut \ud83d","exception":[{{"type":"E\udc00"}}]}}"#,
            id(n)
        )
    };

    let (status, _, body) = send(&native, &key, cut(1)).await;
    assert_eq!(status, 200, "single event: {body}");
    let batch = format!("{GOOD}\n{}\n{GOOD}\n", cut(2));
    let (status, _, body) = send(&native, &[key[0], ("content-type", "application/x-ndjson")], batch).await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(3)), "one such line no longer fails the batch: {body}");
    // Without ids: the event is rebuilt with them, the repair kept.
    let (status, _, body) = send(&native, &key, r#"{"message":"no ids \udbff"}"#).await;
    assert_eq!(status, 200, "{body}");
    let rebuilt = body["ids"][0].as_str().unwrap().to_owned();

    let sentry = SENTRY_EVENT.replace("fc6d8c0c43fc46308ea5bc7a3b7d3c64", &id(3)).replace("'user'", r"cut \ud83d");
    let (status, _, body) = send(&format!("{}/api/42/store/?sentry_key={WEB_KEY}", s.url), &[], sentry).await;
    assert_eq!(status, 200, "store: {body}");
    let item = SENTRY_EVENT
        .replace("fc6d8c0c43fc46308ea5bc7a3b7d3c64", &id(4))
        .replace("'user'", r"cut \ud83d")
        .replace('\n', "");
    let env = envelope(&format!(r#"{{"event_id":"{}","dsn":"http://{WEB_KEY}@localhost/42"}}"#, id(4)), &item);
    let (status, _, body) =
        send(&format!("{}/api/42/envelope/", s.url), &[("content-encoding", "gzip")], gzip(env.as_bytes())).await;
    assert_eq!(status, 200, "envelope: {body}");

    let messages = s.messages();
    assert_eq!(messages.len(), 7);
    for n in [1, 2] {
        let v = Server::published_event(&messages, &id(n));
        assert_eq!(v["message"], "cut \u{fffd}");
        assert_eq!(v["exception"][0]["type"], "E\u{fffd}");
        let raw = &messages.iter().find(|(k, _)| *k == id(n)).unwrap().1;
        assert!(String::from_utf8_lossy(raw).contains(r"cut \ufffd"), "repaired in place, published as sent");
    }
    assert_eq!(Server::published_event(&messages, &rebuilt)["message"], "no ids \u{fffd}");
    for n in [3, 4] {
        assert_eq!(Server::published_event(&messages, &id(n))["exception"][0]["value"], "cut \u{fffd}");
    }
    s.shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_nested_deeper_than_64_get_400_with_the_code() {
    let s = server_cfg(web(), |_| {}).await;
    let native = format!("{}/api/v1/projects/web/events", s.url);
    let key = [("x-tracefold-key", WEB_KEY)];
    let nested = |d: usize| format!(r#"{{"message":"m","extra":{}1{}}}"#, "[".repeat(d - 1), "]".repeat(d - 1));
    let (status, _, body) = send(&native, &key, nested(65)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["details"][0]["code"], "too_deep");
    assert!(body["details"][0]["reason"].as_str().unwrap().contains("nested deeper than 64"), "{body}");
    let batch = format!("{GOOD}\n{}\n{{\"level\":\"loud\",\"message\":\"m\"}}\n", nested(65));
    let (status, _, body) = send(&native, &[key[0], ("content-type", "application/x-ndjson")], batch).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!((body["details"][0]["line"].as_u64(), body["details"][0]["code"].as_str()), (Some(2), Some("too_deep")));
    assert_eq!((body["details"][1]["line"].as_u64(), body["details"][1]["code"].as_str()), (Some(3), Some("invalid")));
    let (status, _, body) = send(&native, &key, "{not json").await;
    assert_eq!((status, body["details"][0]["code"].as_str()), (400, Some("malformed")));
    let (status, _, body) = send(&format!("{}/api/42/store/?sentry_key={WEB_KEY}", s.url), &[], nested(65)).await;
    assert_eq!((status, body["details"][0]["code"].as_str()), (400, Some("too_deep")), "{body}");
    // 64 levels are fine.
    let (status, _, body) = send(&native, &key, nested(64)).await;
    assert_eq!(status, 200, "{body}");
    s.shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_over_the_broker_limit_get_413_and_nothing_is_published() {
    // Defaults: http.max_event_bytes is 1 MiB, librdkafka's message.max.bytes 1,000,000.
    let s = server_cfg(Vec::new(), |_| {}).await;
    let native = format!("{}/api/v1/projects/web/events", s.url);
    let event = |n: u32, size: usize| {
        let head = format!(r#"{{"event_id":"{}","project":"web","message":""#, id(n));
        format!("{head}{}\"}}", "x".repeat(size - head.len() - 2))
    };
    let big = event(1, 1_010_000);
    assert_eq!(big.len(), 1_010_000);
    let (status, _, body) = send(&native, &[], big).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["details"][0]["code"], "too_large");
    assert!(body["details"][0]["reason"].as_str().unwrap().contains("larger than 999488"), "{body}");
    // Also when the ids would push it over.
    let (status, _, body) = send(&native, &[], format!(r#"{{"message":"{}"}}"#, "y".repeat(999_470))).await;
    assert_eq!(status, 413, "{body}");
    // Just under the limit: Kafka takes it.
    let (status, _, body) = send(&native, &[], event(2, 999_000)).await;
    assert_eq!(status, 200, "{body}");
    let published = s.published();
    assert_eq!(published, [id(2)], "the refused events were not published");
    s.shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_lines_get_413_without_reading_them_all() {
    let s = server_cfg(Vec::new(), |c| c.http.max_events_per_request = 100).await;
    let native = format!("{}/api/v1/projects/web/events", s.url);
    let ndjson = [("content-type", "application/x-ndjson")];
    // 3 MB of a million tiny lines: refused at line 101.
    let (status, _, body) = send(&native, &ndjson, "{}\n".repeat(1_000_000)).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("more than 100 events"), "{body}");
    // Blank lines do not count.
    let (status, _, body) = send(&native, &ndjson, format!("{}{GOOD}\n", "\n".repeat(1_000_000))).await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(1)), "{body}");
    let (status, _, body) = send(&native, &ndjson, format!("{GOOD}\n").repeat(100)).await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(100)), "{body}");
    let mut accepted: Vec<String> =
        body["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
    // One valid event more than the limit: refused whole, none of it published.
    let before = s.end_offset();
    let (status, _, body) = send(&native, &ndjson, format!("{GOOD}\n").repeat(101)).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("more than 100 events"), "{body}");
    assert_eq!(s.end_offset(), before);
    let mut published = s.published();
    published.sort();
    accepted.sort();
    assert_eq!(published.len(), 101, "the one event, then the hundred");
    assert!(accepted.iter().all(|id| published.contains(id)));
    s.shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_project_and_event_id_are_filled_in_once() {
    let s = server_cfg(Vec::new(), |_| {}).await;
    let native = format!("{}/api/v1/projects/web/events", s.url);
    let (status, _, body) =
        send(&native, &[], r#"{"project":null,"event_id":null,"message":"x","user":{"id":"1"}}"#).await;
    assert_eq!(status, 200, "{body}");
    let id = body["ids"][0].as_str().unwrap().to_owned();
    let (status, _, body) =
        send(&native, &[], r#"{"project":null,"event_id":"00000000000000000000000000000abc","message":"y"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ids"][0], "00000000000000000000000000000abc");
    let messages = s.messages();
    assert_eq!(messages.len(), 2);
    for (k, payload) in &messages {
        let text = String::from_utf8(payload.clone()).unwrap();
        assert_eq!(text.matches("\"project\"").count(), 1, "exactly one project key: {text}");
        assert_eq!(text.matches("\"event_id\"").count(), 1, "exactly one event_id key: {text}");
        // What the grouper reads.
        let mut buf = payload.clone();
        let ev = tracefold_model::parse_event_slice(&mut buf).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(ev.project.as_deref(), Some("web"));
        assert_eq!(ev.event_id.as_deref(), Some(k.as_str()));
    }
    assert!(messages.iter().any(|(k, _)| *k == id));
    s.shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_a_burst_gets_413_not_429() {
    // A burst of 5 with a slow refill.
    let s = server_cfg(vec![project("web", 42, WEB_KEY, 0.2)], |_| {}).await;
    let native = format!("{}/api/v1/projects/web/events", s.url);
    let h = [("x-tracefold-key", WEB_KEY), ("content-type", "application/x-ndjson")];
    let (status, headers, body) = send(&native, &h, format!("{GOOD}\n").repeat(6)).await;
    assert_eq!(status, 413, "it could never pass: {body}");
    assert!(headers.get("retry-after").is_none());
    assert!(body["error"].as_str().unwrap().contains("burst of 5"), "{body}");
    let (status, _, body) = send(&native, &h, format!("{GOOD}\n").repeat(5)).await;
    assert_eq!(status, 200, "the refusal cost no tokens: {body}");
    let (status, _, body) = send(&native, &h, GOOD).await;
    assert_eq!(status, 429, "{body}");
    s.shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_keys_are_checked_before_the_body_is_decompressed() {
    let s = server_cfg(web(), |_| {}).await;
    let url = format!("{}/api/42/envelope/", s.url);
    // An envelope whose gzip stream is corrupt after the first line (and well past the
    // inflater's 32 KiB window).
    let corrupt = |header: &str| {
        let noise = noise(300_000);
        let mut body = format!("{header}\n{{\"type\":\"attachment\",\"length\":{}}}\n", noise.len()).into_bytes();
        body.extend_from_slice(&noise);
        let mut gz = gzip(&body);
        for b in &mut gz[100_000..] {
            *b ^= 0x5a;
        }
        gz
    };
    let gz = [("content-encoding", "gzip")];
    let (status, _, body) = send(&url, &gz, corrupt(r#"{"dsn":"http://wrongkey99@localhost/42"}"#)).await;
    assert_eq!(status, 403, "a wrong key in the DSN: refused before the body is decompressed: {body}");
    let (status, _, body) = send(&url, &gz, corrupt(r#"{"event_id":"x"}"#)).await;
    assert_eq!(status, 401, "no key anywhere: {body}");
    // A key in the headers is checked before the body is even read (a small body: the answer
    // comes before the client finished sending).
    let (status, _, body) =
        send(&url, &[gz[0], ("x-sentry-auth", "Sentry sentry_key=wrongkey99")], &b"\x1f\x8bnot gzip"[..]).await;
    assert_eq!(status, 403, "a wrong key in the headers: {body}");
    // With the right key the same kind of body is read, and refused as corrupt.
    let (status, _, body) = send(&url, &gz, corrupt(&format!(r#"{{"dsn":"http://{WEB_KEY}@localhost/42"}}"#))).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("decompress"), "{body}");
    assert!(s.published().is_empty());
    s.shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_the_concurrency_limit_answers_503_meanwhile() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let s = server_cfg(Vec::new(), |c| {
        c.http.body_timeout_ms = 700;
        c.http.max_concurrent_requests = 1;
    })
    .await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let t0 = std::time::Instant::now();
    slow.write_all(
        b"POST /api/v1/projects/web/events HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"message\":",
    )
    .await
    .unwrap();
    // The stalled request holds the only slot: another one is refused at once, not queued.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (status, headers, body) = send(&format!("{}/api/v1/projects/web/events", s.url), &[], GOOD).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    assert!(body["error"].as_str().unwrap().contains("max_concurrent_requests"), "{body}");
    // The stalled client gets 408 once the body timeout passes.
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut resp))
        .await
        .expect("answered and closed")
        .unwrap();
    let elapsed = t0.elapsed();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("body_timeout_ms"), "a JSON body that says why: {resp}");
    assert!(elapsed >= Duration::from_millis(650) && elapsed < Duration::from_millis(2500), "{elapsed:?}");
    // The slot is free again.
    let (status, _, body) = send(&format!("{}/api/v1/projects/web/events", s.url), &[], GOOD).await;
    assert_eq!(status, 200, "{body}");
    s.shutdown.trigger();
}

/// An event with id `n`.
fn event_n(n: u32) -> String {
    format!(r#"{{"event_id":"{}","message":"m{n}","user":{{"id":"{n}"}}}}"#, id(n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_bad_line_publishes_nothing_of_it() {
    let s = server_cfg(Vec::new(), |c| c.http.max_event_bytes = 64 << 10).await;
    let native = format!("{}/api/v1/projects/web/events", s.url);
    let ndjson = [("content-type", "application/x-ndjson")];
    // A thousand events, one of them bad (with the id the good one would have had).
    let batch = |bad_at: u32, bad: &str| -> String {
        (0..1000).map(|n| if n == bad_at { bad.to_owned() } else { event_n(n) }).collect::<Vec<_>>().join("\n")
    };
    let deep = format!(r#"{{"message":"m","extra":{}1{}}}"#, "[".repeat(64), "]".repeat(64));
    let big = format!(r#"{{"message":"{}"}}"#, "x".repeat(70 << 10));
    assert_eq!(s.end_offset(), 0);
    for (bad_at, bad, code, status) in [
        (999, r#"{"message":"m","level":"loud"}"#, "invalid", 400),
        (0, "{not json", "malformed", 400),
        (500, deep.as_str(), "too_deep", 400),
        (500, r#"{"project":"api","message":"m"}"#, "invalid", 400),
        (700, big.as_str(), "too_large", 413),
    ] {
        let (got, _, body) = send(&native, &ndjson, batch(bad_at, bad)).await;
        assert_eq!(got, status, "{body}");
        let details = body["details"].as_array().unwrap();
        assert_eq!(details.len(), 1, "{body}");
        assert_eq!(
            (details[0]["line"].as_u64(), details[0]["code"].as_str()),
            (Some(u64::from(bad_at) + 1), Some(code))
        );
        assert!(body["error"].as_str().unwrap().contains("nothing was accepted"), "{body}");
        assert_eq!(s.end_offset(), 0, "nothing of a refused batch is published (bad line {code} at {bad_at})");
    }
    // The same events without a bad line pass; the topic then holds exactly them, each once:
    // nothing of the refused batches was queued before them either.
    let all = (0..1000).map(event_n).collect::<Vec<_>>().join("\n");
    let (status, _, body) = send(&native, &ndjson, all).await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(1000)), "{body}");
    let mut published = s.published();
    published.sort();
    assert_eq!(published, (0..1000).map(id).collect::<Vec<_>>());
    s.shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_producer_queue_gives_503_and_the_refused_events_are_not_published() {
    // Room for one message in the Kafka producer's queue, and a broker slow to acknowledge:
    // a message holds that room for seconds.
    let s = server_cfg(Vec::new(), |c| {
        c.kafka.librdkafka.insert("queue.buffering.max.messages".into(), "1".into());
        c.http.delivery_timeout_ms = 20_000;
    })
    .await;
    s.broker.cluster().broker_round_trip_time(1, Duration::from_secs(3)).unwrap();
    let native = format!("{}/api/v1/projects/web/events", s.url);
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    // A batch of two can never fit a queue of one: 413, not a 503 that has the client retry it
    // for ever; refused whole, nothing of it queued.
    let batch = format!("{}\n{}\n", event_n(1), event_n(2));
    let (status, headers, body) = send(&native, &[("content-type", "application/x-ndjson")], batch).await;
    assert_eq!(status, 413, "{body}");
    assert!(headers.get("retry-after").is_none(), "no retry can pass: {body}");
    assert!(body["error"].as_str().unwrap().contains("queue.buffering.max.messages"), "{body}");
    refused.extend([id(1), id(2)]);
    let mut outcome = |n: u32, status: u16, headers: &reqwest::header::HeaderMap, body: &serde_json::Value| match status
    {
        200 => accepted.push(id(n)),
        503 => {
            assert_eq!(retry_after(headers), 5, "{body}");
            assert!(body["error"].as_str().unwrap().contains("nothing of this request was queued"), "{body}");
            refused.push(id(n));
        }
        other => panic!("{other}: {body}"),
    };
    // Single events sent together while the queue is full: at most one at a time is queued.
    let singles = join_spawned((3..7).map(|n| {
        let native = native.clone();
        async move { (n, send(&native, &[], event_n(n)).await) }
    }))
    .await;
    for (n, (status, headers, body)) in &singles {
        outcome(*n, *status, headers, body);
    }
    assert!(singles.iter().filter(|(_, (st, _, _))| *st == 503).count() >= 3, "a full queue refuses");
    // Kafka quick again: the producer accepts once the queue has room.
    s.broker.cluster().broker_round_trip_time(1, Duration::ZERO).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for n in 10.. {
        let (status, headers, body) = send(&native, &[], event_n(n)).await;
        outcome(n, status, &headers, &body);
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the producer accepts again once Kafka keeps up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut published = s.published();
    published.sort();
    accepted.sort();
    for id in &refused {
        assert!(!published.contains(id), "refused event {id} was published: a 503 must publish nothing");
    }
    assert_eq!(published, accepted, "every accepted event is in Kafka, once");
    s.shutdown.trigger();
}

/// Runs the futures concurrently and returns their outputs in order.
async fn join_spawned<F: std::future::Future + Send + 'static>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_endpoint_rate_limits_per_key_and_per_project_refill_after_retry_after() {
    let keyed = ProjectConfig {
        slug: "web".into(),
        id: Some(42),
        keys: vec!["webkey111".into(), "webkey222".into()],
        rate_per_sec: 0.0,
        burst: 0.0,
        key_rate_per_sec: 1.0,
        key_burst: 2.0,
    };
    let open = ProjectConfig {
        slug: "api".into(),
        id: Some(43),
        keys: Vec::new(),
        rate_per_sec: 0.5,
        burst: 1.0,
        key_rate_per_sec: 0.0,
        key_burst: 0.0,
    };
    let s = server_cfg(vec![keyed, open], |_| {}).await;
    let web = format!("{}/api/v1/projects/web/events", s.url);
    let (k1, k2) = (("x-tracefold-key", "webkey111"), ("authorization", "Bearer webkey222"));
    let mut accepted = Vec::new();
    // Per key: a burst of two, then 429, refilled at one event per second.
    for n in 0..2 {
        let (status, _, body) = send(&web, &[k1], event_n(n)).await;
        assert_eq!(status, 200, "{body}");
        accepted.push(id(n));
    }
    let (status, headers, body) = send(&web, &[k1], event_n(2)).await;
    let refused_at = tokio::time::Instant::now();
    assert_eq!(status, 429, "{body}");
    assert!(body["error"].as_str().unwrap().contains("key rate limit"), "{body}");
    // Less than one token is missing, at one token per second.
    assert_eq!(retry_after(&headers), 1);
    assert_eq!(headers["x-sentry-rate-limits"], "1::key");
    // The project's other key has a bucket of its own, with the same limit.
    for n in 3..5 {
        let (status, _, body) = send(&web, &[k2], event_n(n)).await;
        assert_eq!(status, 200, "another key is unaffected: {body}");
        accepted.push(id(n));
    }
    let (status, headers, _) = send(&web, &[k2], event_n(5)).await;
    assert_eq!((status, headers["x-sentry-rate-limits"].to_str().unwrap()), (429, "1::key"));
    // After the advertised Retry-After the first key passes again.
    tokio::time::sleep_until(refused_at + Duration::from_secs(1)).await;
    let (status, _, body) = send(&web, &[k1], event_n(6)).await;
    assert_eq!(status, 200, "tokens refilled after Retry-After: {body}");
    accepted.push(id(6));

    // Per project, on a project without keys: a burst of one, refilled at one per 2 s.
    let api = format!("{}/api/v1/projects/api/events", s.url);
    let t0 = std::time::Instant::now();
    let (status, _, body) = send(&api, &[], event_n(10)).await;
    assert_eq!(status, 200, "{body}");
    accepted.push(id(10));
    let (status, headers, body) = send(&api, &[], event_n(11)).await;
    let (refused_at, elapsed) = (tokio::time::Instant::now(), t0.elapsed().as_secs_f64());
    assert_eq!(status, 429, "{body}");
    let retry = retry_after(&headers);
    let soonest = ((1.0 - 0.5 * elapsed) / 0.5).ceil().max(1.0) as u64;
    assert!((soonest..=2).contains(&retry), "Retry-After {retry} after {elapsed:.2} s");
    assert_eq!(headers["x-sentry-rate-limits"], format!("{retry}::project"));
    tokio::time::sleep_until(refused_at + Duration::from_secs(retry)).await;
    let (status, _, body) = send(&api, &[], event_n(12)).await;
    assert_eq!(status, 200, "tokens refilled after Retry-After: {body}");
    accepted.push(id(12));

    // Exactly the admitted events are in Kafka.
    let mut published = s.published();
    published.sort();
    accepted.sort();
    assert_eq!(published, accepted);
    s.shutdown.trigger();
}

/// Values of `tracefold_producer_envelope_items_total` by (type, outcome), from `/metrics`.
async fn envelope_item_counts(url: &str) -> std::collections::BTreeMap<(String, String), u64> {
    let text = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("tracefold_producer_envelope_items_total{") else { continue };
        let (labels, value) = rest.split_once("} ").unwrap_or_else(|| panic!("{line}"));
        let label = |k: &str| -> String {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or_else(|| panic!("{k} in {line}"))
                .to_owned()
        };
        out.insert((label("type"), label("outcome")), value.trim().parse::<f64>().unwrap() as u64);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_envelope_items_are_counted_by_type() {
    let _metrics = ENVELOPE_METRICS.lock().await;
    let s = server_cfg(web(), |_| {}).await;
    let item = |ty: &str, payload: &str| format!("{{\"type\":\"{ty}\",\"length\":{}}}\n{payload}\n", payload.len());
    let event = SENTRY_EVENT.replace("fc6d8c0c43fc46308ea5bc7a3b7d3c64", &id(1)).replace('\n', "");
    let envelope = [
        format!(r#"{{"event_id":"{}","dsn":"http://{WEB_KEY}@localhost/42"}}"#, id(1)) + "\n",
        item(
            "transaction",
            r#"{"type":"transaction","transaction":"/checkout","event_id":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#,
        ),
        item("session", r#"{"sid":"7c3f2a1b","status":"ok","started":"2026-11-26T00:00:00Z"}"#),
        item("event", &event),
        item("attachment", "hello"),
        item("transaction", r#"{"type":"transaction"}"#),
        item("client_report", "{}"),
        item("a_type_from_the_future", "{}"),
    ]
    .concat();
    let before = envelope_item_counts(&s.url).await;
    let (status, _, body) = send(&format!("{}/api/42/envelope/", s.url), &[], envelope).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], id(1));
    let after = envelope_item_counts(&s.url).await;
    let delta = |ty: &str, outcome: &str| {
        let k = (ty.to_owned(), outcome.to_owned());
        after.get(&k).copied().unwrap_or(0) - before.get(&k).copied().unwrap_or(0)
    };
    for (ty, outcome, n) in [
        ("transaction", "skipped", 2),
        ("session", "skipped", 1),
        ("attachment", "skipped", 1),
        ("client_report", "skipped", 1),
        ("other", "skipped", 1),
        ("event", "accepted", 1),
        ("event", "skipped", 0),
        ("transaction", "accepted", 0),
    ] {
        assert_eq!(delta(ty, outcome), n, "{ty} {outcome}: {after:?}");
    }
    // Skipped items are not published; the event is.
    assert_eq!(s.published(), [id(1)]);
    // A refused envelope (its event is invalid) counts nothing: its client retries it.
    let refused = [
        format!(r#"{{"event_id":"{}","dsn":"http://{WEB_KEY}@localhost/42"}}"#, id(2)) + "\n",
        item("transaction", r#"{"type":"transaction"}"#),
        item("event", r#"{"level":"loud","message":"m"}"#),
    ]
    .concat();
    let (status, _, body) = send(&format!("{}/api/42/envelope/", s.url), &[], refused).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(envelope_item_counts(&s.url).await, after, "nothing counted for a refused envelope");
    assert_eq!(s.published(), [id(1)]);
    s.shutdown.trigger();
}

/// Every codec librdkafka takes for `compression.type`, set under `[kafka.librdkafka]`: the
/// producer starts with it, and what it accepts is on the events topic, read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compression_codec_delivers() {
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let s = server_cfg(Vec::new(), |cfg| {
            cfg.kafka.librdkafka.insert("compression.type".into(), codec.into());
        })
        .await;
        let url = format!("{}/api/v1/projects/web/events", s.url);
        let (status, body) = post(&url, "application/x-ndjson", format!("{GOOD}\n{GOOD}\n{GOOD}\n")).await;
        assert_eq!((status, body["accepted"].as_u64()), (200, Some(3)), "{codec}: {body}");
        let ids: Vec<String> = body["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_owned()).collect();
        assert_eq!(s.published(), ids, "{codec}: the accepted events are on the topic, readable");
        s.shutdown.trigger();
    }
}

/// A codec librdkafka does not take stops the producer's start, naming the key (the service
/// binaries name the config file too: `tracefold_runtime::config::load`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_codec_librdkafka_refuses_stops_the_start_with_the_key_named() {
    let broker = DevBroker::start(1, &Default::default(), Some(1)).unwrap();
    let mut cfg = Config { kafka: tracefold_tests::kafka(&broker.bootstrap_servers()), ..Config::default() };
    cfg.kafka.librdkafka.insert("compression.type".into(), "brotli".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (shutdown, health) = (Shutdown::new(), Health::default());
    let err = tracefold_producer::serve(cfg, listener, shutdown, health.clone(), Vec::new()).await.unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains(r#"kafka.librdkafka."compression.type": "brotli" is refused by librdkafka"#), "{err}");
    assert!(!health.is_ready());
}

/// Sends an event at a time while Kafka is down (each answered 503) until the producer's
/// `/healthz` (at `base`) names the delivery loop as making no progress, for at most `tries`
/// requests: that answer's text, or `None`.
async fn send_until_delivery_unhealthy(url: &str, base: &str, tries: usize) -> Option<String> {
    let c = reqwest::Client::new();
    for _ in 0..tries {
        let (status, _, body) = send(url, &[], GOOD).await;
        assert_eq!(status, 503, "Kafka is down: {body}");
        let r = c.get(format!("{base}/healthz")).send().await.unwrap();
        let (code, text) = (r.status().as_u16(), r.text().await.unwrap());
        if code == 503 && text.contains("producer-delivery: no progress") {
            return Some(text);
        }
    }
    None
}

/// Requests whose deliveries get no report within `http.delivery_timeout_ms` (librdkafka's
/// `message.timeout.ms` set longer, Kafka down) are answered 503 and count as failed
/// deliveries for `/healthz` too: it turns unhealthy, naming the delivery loop. It used to see
/// no failure (none was reported) and answer ok while every request failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_whose_deliveries_time_out_unreported_turn_healthz_unhealthy() {
    let health = Health::default();
    // The loops' liveness deadline, short for the test (60 s in services).
    health.set_deadline(Duration::from_secs(3));
    let s = server_health(health, Vec::new(), |cfg| {
        cfg.http.delivery_timeout_ms = 1000;
        cfg.kafka.librdkafka.insert("message.timeout.ms".into(), "600000".into());
    })
    .await;
    let url = format!("{}/api/v1/projects/web/events", s.url);
    let (status, _, body) = send(&url, &[], GOOD).await;
    assert_eq!(status, 200, "{body}");
    s.broker.cluster().broker_down(1).unwrap();
    let unhealthy = send_until_delivery_unhealthy(&url, &s.url, 30).await;
    s.broker.cluster().broker_up(1).unwrap();
    assert!(unhealthy.is_some(), "/healthz stays ok while every request's delivery times out unreported");
    s.shutdown.trigger();
}

/// Deliveries that keep failing (Kafka down for longer than `http.delivery_timeout_ms`) are
/// answered 503, counted, and turn `/healthz` unhealthy, naming the delivery loop; once Kafka
/// is back and delivers again, `/healthz` is healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_that_keep_failing_turn_healthz_unhealthy_until_kafka_delivers_again() {
    let health = Health::default();
    // The loops' liveness deadline, short for the test (60 s in services).
    health.set_deadline(Duration::from_secs(3));
    let s = server_health(health, Vec::new(), |cfg| cfg.http.delivery_timeout_ms = 1000).await;
    let (url, c) = (format!("{}/api/v1/projects/web/events", s.url), reqwest::Client::new());
    let healthz = || async {
        let r = c.get(format!("{}/healthz", s.url)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let (status, _, body) = send(&url, &[], GOOD).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(healthz().await.0, 200);
    s.broker.cluster().broker_down(1).unwrap();
    let unhealthy = send_until_delivery_unhealthy(&url, &s.url, 60).await;
    let text = unhealthy.expect("/healthz turns unhealthy while every delivery fails");
    assert!(text.contains(r#""status":"unhealthy""#), "{text}");
    let metrics = c.get(format!("{}/metrics", s.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"tracefold_producer_events_total{outcome="failed"}"#), "{metrics}");
    s.broker.cluster().broker_up(1).unwrap();
    let mut healthy = false;
    for _ in 0..120 {
        let (status, _, _) = send(&url, &[], GOOD).await;
        if status == 200 && healthz().await.0 == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(healthy, "/healthz is healthy again once Kafka delivers");
    s.shutdown.trigger();
}
