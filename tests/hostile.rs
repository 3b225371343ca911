//! Hostile input never stops the pipeline: a corpus of odd events (non-ASCII names of every
//! length, quadratic-looking messages, deep nesting, oversize fields, nulls, huge tag maps,
//! thousands of frames, lone surrogates) goes through `tracefold dev`'s pipeline over HTTP and
//! straight into Kafka, then ordinary events follow. Every ordinary event is counted exactly;
//! every hostile one is counted, refused with a 4xx, or in the DLQ with a reason; no work loop
//! died or stalled.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tracefold_devtools::dev::{DevConfig, Pipeline};
use tracefold_tests::{generate, post_ndjson, publish, TestDb};

const HOSTILE: &str = "hostile";

fn id(i: usize) -> String {
    format!("{:032x}", 0xbad0_0000_u128 + i as u128)
}

fn exc_event(i: usize, ty: &str, value: &str, frames: Vec<Value>) -> Value {
    json!({"event_id": id(i), "exception": [{"type": ty, "value": value, "stacktrace": {"frames": frames}}]})
}

fn frame(function: &str, module: &str, filename: &str) -> Value {
    json!({"function": function, "module": module, "filename": filename, "lineno": 1, "in_app": true})
}

/// Events for the producer, as JSON text (some are not what serde_json would write), with
/// whether each must be accepted (odd but valid) or refused with a 400 (invalid).
fn http_corpus() -> Vec<(String, bool)> {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    let mut next = || {
        i += 1;
        i
    };
    // Non-ASCII names at every length, in function, module, file and type.
    let alphabets = ["обработатьЗаказПользователя", "注文を処理する関数名", "é̃ñ̈ü", "🦀🔥💥", "ﾊﾝｶｸ", "\u{202e}evil"];
    for a in alphabets {
        let chars: Vec<char> = a.chars().collect();
        for len in 1..=chars.len() {
            let name: String = chars.iter().cycle().take(len).collect();
            let ev = exc_event(
                next(),
                &name,
                &format!("{name} failed"),
                vec![
                    frame(&name, &format!("{name}$1"), &format!("/app/{name}.js")),
                    frame(&format!("{name}::h0123456789abcdef"), &name, &format!("{name}.{name}")),
                    frame(&format!("<{name}>b__0_1"), "m", "f.py"),
                    frame(&format!("{name}.func1"), "m", "f.go"),
                ],
            );
            out.push(ev.to_string());
        }
    }
    // Quadratic-looking messages.
    out.push(json!({"event_id": id(next()), "message": "1 ".repeat(200_000)}).to_string());
    out.push(json!({"event_id": id(next()), "message": "Tue, 26 Nov 2026 05:39:00 GMT ".repeat(10_000)}).to_string());
    out.push(json!({"event_id": id(next()), "message": "a=\"".repeat(100_000)}).to_string());
    out.push(json!({"event_id": id(next()), "message": "x://".repeat(100_000)}).to_string());
    // Oversize fields: a 600 KB function name, a 100 KB title.
    out.push(exc_event(next(), "E", "v", vec![frame(&"ф".repeat(300_000), "m", "f")]).to_string());
    out.push(exc_event(next(), &"T".repeat(100_000), &"ж".repeat(50_000), vec![]).to_string());
    // Nulls: absent in effect.
    out.push(format!(r#"{{"event_id":null,"project":null,"message":"nulls {}","release":null,"user":null,"tags":null,"exception":null}}"#, next()));
    // Huge tag maps and thousands of frames.
    let tags: serde_json::Map<String, Value> = (0..20_000).map(|t| (format!("t{t}"), Value::from("v"))).collect();
    out.push(json!({"event_id": id(next()), "message": "many tags", "tags": tags}).to_string());
    let frames: Vec<Value> = (0..10_000).map(|f| frame(&format!("f{f}"), "m", "app.js")).collect();
    out.push(exc_event(next(), "Deep", "stack", frames).to_string());
    // Recursion of one frame thousands of times.
    out.push(exc_event(next(), "Rec", "r", vec![frame("loop", "m", "a.js"); 10_000]).to_string());
    // A client fingerprint of ten thousand `{{ default }}` markers.
    out.push(
        json!({"event_id": id(next()), "message": "fp", "fingerprint": vec!["{{ default }}"; 10_000]}).to_string(),
    );
    // Lone surrogates, as JSON.stringify writes a string cut inside an emoji.
    out.push(format!(
        r#"{{"event_id":"{}","message":"cut \ud83d","exception":[{{"type":"E\udc00","value":"\ud83d"}}]}}"#,
        id(next())
    ));
    // Control characters and terminal escapes in the title.
    out.push(json!({"event_id": id(next()), "message": "\u{1b}[2J\u{1b}]0;pwned\u{7}\r\n title"}).to_string());
    let mut out: Vec<(String, bool)> = out.into_iter().map(|e| (e, true)).collect();
    // Refused with a 400: too deep, too many exceptions, bad level, not an object.
    let deep =
        format!(r#"{{"event_id":"{}","message":"deep","extra":{}1{}}}"#, id(next()), "[".repeat(100), "]".repeat(100));
    out.push((deep, false));
    out.push((format!(r#"{{"message":"very deep","extra":{}}}"#, "{\"a\":".repeat(100_000)), false));
    let chain: Vec<Value> = (0..100).map(|_| json!({"type": "E"})).collect();
    out.push((json!({"event_id": id(next()), "exception": chain}).to_string(), false));
    out.push((json!({"event_id": id(next()), "message": "m", "level": "лоуд"}).to_string(), false));
    out.push(("[1,2,3]".into(), false));
    out.push(("\"just a string\"".into(), false));
    out
}

/// Messages published straight to Kafka (services that bypass the producer): each must be
/// counted or land in the DLQ with a reason.
fn kafka_corpus() -> Vec<(Vec<u8>, Option<&'static str>)> {
    let deep = format!(
        r#"{{"event_id":"{}","project":"{HOSTILE}","message":"m","x":{}1{}}}"#,
        id(900),
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let mut unclosed = format!(r#"{{"event_id":"{}","project":"{HOSTILE}","message":"m","x":"#, id(904)).into_bytes();
    unclosed.extend(vec![b'['; 100_000]);
    vec![
        (deep.into_bytes(), Some("too_deep")),
        (unclosed, Some("malformed")),
        (b"\xff\xfe not utf-8 at all".to_vec(), Some("malformed")),
        // Under the broker's message limit but not an event; its DLQ copy is cut to fit.
        (vec![0u8; 990_000], Some("malformed")),
        (format!(r#"{{"event_id":"{}","project":null,"message":"m"}}"#, id(901)).into_bytes(), Some("invalid")),
        (Vec::new(), Some("malformed")),
        (
            format!(r#"{{"event_id":"{}","project":"{HOSTILE}","message":"raw \udfff lone","user":{{"id":"u"}}}}"#, id(902))
                .into_bytes(),
            None,
        ),
        (
            format!(
                r#"{{"event_id":"{}","project":"{HOSTILE}","exception":[{{"type":"Ошибка","stacktrace":{{"frames":[{{"function":"обработатьЗаказПользователя"}}]}}}}]}}"#,
                id(903)
            )
            .into_bytes(),
            None,
        ),
    ]
}

async fn project_total(db: &TestDb, project: &str) -> u64 {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct S {
        n: u64,
    }
    db.client
        .query(&format!("SELECT sum(count) AS n FROM {}.aggregates WHERE project = ?", db.cfg.database))
        .bind(project)
        .fetch_one::<S>()
        .await
        .map(|s| s.n)
        .unwrap_or(0)
}

/// Every DLQ record: (source offset, reason code, detail).
fn read_dlq(bootstrap: &str, topic: &str, want: usize) -> Vec<(i64, String, String)> {
    let consumer: BaseConsumer =
        tracefold_runtime::kafka::consumer_config(&tracefold_tests::kafka(bootstrap), "hostile-dlq-reader")
            .create()
            .unwrap();
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let h = m.headers().expect("DLQ records carry headers");
            let header = |k: &str| {
                h.iter().find(|x| x.key == k).and_then(|x| x.value).map(|v| String::from_utf8_lossy(v).into_owned())
            };
            let offset: i64 = header("tracefold-source-offset").expect("source offset").parse().unwrap();
            got.push((
                offset,
                header("tracefold-reason").expect("reason code"),
                header("tracefold-error").expect("detail"),
            ));
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_events_cost_only_themselves() {
    let db = TestDb::new("hostile").await;
    let cfg = DevConfig { clickhouse: db.cfg.clone(), ..DevConfig::default() };
    let pipeline = Pipeline::start(cfg, "127.0.0.1:0", Some(2), true).await.expect("pipeline starts");
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/v1/projects/{HOSTILE}/events", pipeline.http_addr);

    // 1. Hostile events over HTTP, one per request.
    let mut accepted = 0u64;
    let corpus = http_corpus();
    for (n, (body, valid)) in corpus.iter().enumerate() {
        let resp = client.post(&url).body(body.clone()).send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        if *valid {
            assert_eq!(status, 200, "event {n} is odd but valid: {text}");
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["accepted"], 1);
            accepted += 1;
        } else {
            assert_eq!(status, 400, "event {n} is invalid: {text}");
            let v: Value =
                serde_json::from_str(&text).unwrap_or_else(|_| panic!("event {n}: the 400 body is JSON: {text}"));
            assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "event {n}: the 400 says why: {text}");
        }
    }
    eprintln!("hostile corpus over HTTP: {accepted} accepted, {} refused", corpus.len() as u64 - accepted);

    // 2. Hostile messages straight into Kafka.
    let kafka = kafka_corpus();
    let valid_in_kafka = kafka.iter().filter(|(_, r)| r.is_none()).count() as u64;
    let payloads: Vec<Vec<u8>> = kafka.iter().map(|(p, _)| p.clone()).collect();
    publish(&pipeline.bootstrap_servers(), &pipeline.cfg.topics.events, &payloads).await;

    // 3. Ordinary events after all of it, over HTTP.
    let (events, truth) = generate(2000, 20, 99);
    assert_eq!(post_ndjson(pipeline.http_addr, &events, 250).await, events.len());

    // Every ordinary event counted exactly, every accepted hostile one counted.
    let want_total = truth.total + accepted + valid_in_kafka;
    assert_eq!(db.wait_for_total(want_total, Duration::from_secs(90)).await, want_total);
    let ordinary: BTreeMap<String, (u64, u64)> =
        db.per_issue().await.into_iter().filter(|(k, _)| truth.per_issue.contains_key(k)).collect();
    assert_eq!(ordinary, truth.expected(), "ordinary issues are exact");
    assert_eq!(project_total(&db, HOSTILE).await, accepted + valid_in_kafka);

    // Every invalid Kafka message is in the DLQ with its reason code (offsets are per
    // partition, so compare the multiset of reasons).
    let mut want_reasons: Vec<&str> = kafka.iter().filter_map(|(_, r)| *r).collect();
    want_reasons.sort_unstable();
    let dlq = read_dlq(&pipeline.bootstrap_servers(), &pipeline.cfg.topics.dlq, want_reasons.len());
    let mut got_reasons: Vec<&str> = dlq.iter().map(|(_, r, _)| r.as_str()).collect();
    got_reasons.sort_unstable();
    assert_eq!(got_reasons, want_reasons, "DLQ: {dlq:?}");
    assert!(dlq.iter().all(|(_, _, detail)| !detail.is_empty()));

    // No work loop died or stalled, and the pipeline stops cleanly.
    for h in pipeline.healths() {
        assert_eq!(h.liveness(), Ok(()), "{}", h.name());
    }
    let health = client.get(format!("http://{}/healthz", pipeline.http_addr)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    pipeline.stop().await.expect("every service ends without an error");
}
