//! Outcomes end to end: what became of every event sent (accepted, rate limited, invalid, too
//! large, sent to the DLQ) is stored in ClickHouse per project, outcome and reason, exactly;
//! replayed outcome records are not counted twice; `tracefold dlq` lists a DLQ'd record with
//! its reason and source offset.

use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tracefold_devtools::dev::{DevConfig, Pipeline};
use tracefold_model::{Outcome, OutcomeRecord};
use tracefold_producer::config::ProjectConfig;
use tracefold_store::outcomes::OutcomeReport;
use tracefold_tests::TestDb;

type Totals = BTreeMap<(String, String, String), u64>;

fn totals(r: &OutcomeReport) -> Totals {
    r.totals.iter().map(|t| ((t.project.clone(), t.outcome.clone(), t.reason.clone()), t.quantity)).collect()
}

fn key(project: &str, outcome: &str, reason: &str) -> (String, String, String) {
    (project.to_owned(), outcome.to_owned(), reason.to_owned())
}

/// Polls the outcomes query until it answers `want` (or the deadline passes); returns the last
/// answer.
async fn wait_for_outcomes(db: &TestDb, want: &Totals, timeout: Duration) -> OutcomeReport {
    let deadline = Instant::now() + timeout;
    loop {
        let r = tracefold_store::outcomes::outcomes(&db.client, &db.cfg.database, 3600, None).await.unwrap();
        if &totals(&r) == want || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn post(url: &str, key: Option<&str>, ndjson: bool, body: String) -> u16 {
    let mut r = reqwest::Client::new().post(url).body(body);
    if let Some(k) = key {
        r = r.header("x-tracefold-key", k);
    }
    if ndjson {
        r = r.header("content-type", "application/x-ndjson");
    }
    r.send().await.unwrap().status().as_u16()
}

fn event(project: &str, i: usize, extra: &str) -> String {
    format!(r#"{{"project":"{project}","message":"outcome test {i} ✓"{extra}}}"#)
}

/// Publishes `payloads` (key, value) to `topic` and returns each one's (partition, offset).
async fn publish(bootstrap: &str, topic: &str, payloads: &[(&str, Vec<u8>)]) -> Vec<(i32, i64)> {
    let producer: FutureProducer =
        tracefold_runtime::kafka::producer_config(&tracefold_tests::kafka(bootstrap), 30_000).create().unwrap();
    let mut out = Vec::new();
    for (k, p) in payloads {
        let d = producer.send(FutureRecord::to(topic).key(*k).payload(p.as_slice()), Duration::from_secs(30)).await;
        out.push(d.expect("delivered"));
    }
    out.into_iter().map(|d| (d.partition, d.offset)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_has_an_outcome_stored_once_and_the_dlq_tells_why() {
    let db = TestDb::new("outcomes").await;
    let mut cfg = DevConfig { clickhouse: db.cfg.clone(), ..DevConfig::default() };
    cfg.http.max_event_bytes = 8 << 10;
    cfg.writer.batch_max_age_ms = 200;
    cfg.projects = vec![ProjectConfig {
        slug: "limited".into(),
        id: Some(42),
        keys: vec!["limited-key-1".into()],
        rate_per_sec: 0.001,
        burst: 2.0,
        key_rate_per_sec: 0.0,
        key_burst: 0.0,
    }];
    let pipeline = Pipeline::start(cfg, "127.0.0.1:0", Some(1), true).await.expect("pipeline starts");
    let base = format!("http://{}/api/v1/projects", pipeline.http_addr);

    // shop: 5 accepted in one request; a batch of 3 with one invalid line (nothing of it is
    // accepted); one event over the size limit.
    let five: Vec<String> = (0..5).map(|i| event("shop", i, "")).collect();
    assert_eq!(post(&format!("{base}/shop/events"), None, true, five.join("\n")).await, 200);
    let batch = [event("shop", 10, ""), event("shop", 11, r#","level":"loud""#), event("shop", 12, "")];
    assert_eq!(post(&format!("{base}/shop/events"), None, true, batch.join("\n")).await, 400);
    let big = event("shop", 20, &format!(r#","extra":{{"blob":"{}"}}"#, "é".repeat(6000)));
    assert_eq!(post(&format!("{base}/shop/events"), None, false, big).await, 413);
    // limited: a burst of 2, then refused.
    let url = format!("{base}/limited/events");
    for i in 0..2 {
        assert_eq!(post(&url, Some("limited-key-1"), false, event("limited", i, "")).await, 200);
    }
    assert_eq!(post(&url, Some("limited-key-1"), false, event("limited", 2, "")).await, 429);
    // Straight into Kafka (a service producing directly): two that the grouper sends to the DLQ.
    let events_topic = pipeline.cfg.topics.events.clone();
    let bad = [("k1", b"{not json at all \xff".to_vec()), ("k2", event("shop", 30, r#","level":"loud""#).into_bytes())];
    let positions = publish(&pipeline.bootstrap_servers(), &events_topic, &bad).await;

    let want: Totals = [
        (key("shop", "accepted", ""), 5),
        (key("shop", "invalid", "invalid"), 1),
        (key("shop", "invalid", "refused_with_batch"), 2),
        (key("shop", "too_large", "too_large"), 1),
        (key("shop", "dlq", "invalid"), 1),
        (key("limited", "accepted", ""), 2),
        (key("limited", "rate_limited", "project_rate"), 1),
        (key("", "dlq", "malformed"), 1),
    ]
    .into_iter()
    .collect();
    let report = wait_for_outcomes(&db, &want, Duration::from_secs(90)).await;
    assert_eq!(totals(&report), want, "outcomes per project, outcome and reason");
    for t in &report.totals {
        assert_eq!(t.per_minute.len() as u32, report.minutes);
        assert_eq!(t.per_minute.iter().sum::<u64>(), t.quantity, "the series adds up: {t:?}");
    }
    // One project only.
    let shop = tracefold_store::outcomes::outcomes(&db.client, &db.cfg.database, 3600, Some("limited")).await.unwrap();
    assert_eq!(shop.totals.len(), 2);
    // What `tracefold outcomes --json` prints, and the table.
    let json = serde_json::to_value(&report).unwrap();
    for k in ["project", "outcome", "reason", "quantity", "per_minute"] {
        assert!(json["totals"][0].get(k).is_some(), "outcomes JSON has {k}: {json}");
    }
    let table = tracefold_cli::outcomes::render_outcomes(&report);
    assert!(table.contains("refused_with_batch") && table.contains("(unknown)"), "{table}");

    // `tracefold dlq`: both DLQ'd records, with reason and exact source offset.
    let kafka = tracefold_tests::kafka(&pipeline.bootstrap_servers());
    let dlq = tracefold_cli::outcomes::read_dlq(&kafka, &pipeline.cfg.topics.dlq, 10).unwrap();
    assert_eq!(dlq.len(), 2, "{dlq:#?}");
    for ((_, payload), (partition, offset)) in bad.iter().zip(&positions) {
        let e = dlq
            .iter()
            .find(|e| e.source_partition == *partition && e.source_offset == *offset)
            .unwrap_or_else(|| panic!("a DLQ record from {partition}/{offset}: {dlq:#?}"));
        assert_eq!(e.source_topic, events_topic);
        assert_eq!(e.payload_bytes, payload.len());
        assert!(!e.error.is_empty() && !e.time.is_empty());
        assert!(!e.preview.chars().any(char::is_control), "{:?}", e.preview);
    }
    let reasons: Vec<&str> = dlq.iter().map(|e| e.reason.as_str()).collect();
    assert!(reasons.contains(&"malformed") && reasons.contains(&"invalid"), "{reasons:?}");
    assert_eq!(tracefold_cli::outcomes::read_dlq(&kafka, &pipeline.cfg.topics.dlq, 1).unwrap().len(), 1);
    let t = tracefold_cli::outcomes::render_dlq(&dlq);
    assert!(t.contains(&format!("{events_topic}/{}/{}", positions[0].0, positions[0].1)), "{t}");

    // Replays: the same record published twice (a rebuilt grouper batch, a producer flush
    // sent again) and re-inserted by the writer counts once; a new record after them shows
    // that both copies were read.
    // One minute for every copy (computed once: a copy made after a minute boundary would be
    // another record).
    let minute =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 60 * 60) as i64;
    let rec = |source: &str, quantity: u64| OutcomeRecord {
        v: 1,
        project: "replay".into(),
        minute,
        outcome: Outcome::Dlq,
        reason: "invalid".into(),
        quantity,
        source: source.into(),
    };
    let a = serde_json::to_vec(&rec("grouper/x/t/0/7", 7)).unwrap();
    let b = serde_json::to_vec(&rec("grouper/x/t/0/99", 1)).unwrap();
    let outcomes_topic = pipeline.cfg.topics.outcomes.clone();
    publish(&pipeline.bootstrap_servers(), &outcomes_topic, &[("replay", a.clone()), ("replay", a.clone())]).await;
    publish(&pipeline.bootstrap_servers(), &outcomes_topic, &[("replay", a), ("replay", b)]).await;
    let mut want_replay = want.clone();
    want_replay.insert(key("replay", "dlq", "invalid"), 8);
    let report = wait_for_outcomes(&db, &want_replay, Duration::from_secs(60)).await;
    assert_eq!(totals(&report), want_replay, "a replayed record counts once");
    // And once more through the store directly, after the parts may have merged.
    let row = tracefold_store::outcomes::OutcomeRow::from_record(&rec("grouper/x/t/0/7", 7));
    tracefold_store::outcomes::insert(&db.client, "outcomes", &[row.clone(), row], Duration::from_secs(10))
        .await
        .unwrap();
    let again = tracefold_store::outcomes::outcomes(&db.client, &db.cfg.database, 3600, Some("replay")).await.unwrap();
    assert_eq!(again.totals[0].quantity, 8);
    pipeline.stop().await.unwrap();
}

/// The record format's schema names every field a record carries and every outcome.
#[test]
fn the_schema_describes_the_records() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tracefold_tests::procs::repo().join("schemas/outcome.v1.schema.json")).unwrap(),
    )
    .unwrap();
    let rec = OutcomeRecord {
        v: 1,
        project: "p".into(),
        minute: 60,
        outcome: Outcome::Lost,
        reason: "retention".into(),
        quantity: 1,
        source: "s".into(),
    };
    let json = serde_json::to_value(&rec).unwrap();
    let mut fields: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    let mut required: Vec<&str> = schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    fields.sort_unstable();
    required.sort_unstable();
    assert_eq!(fields, required);
    let outcomes: Vec<&str> =
        schema["properties"]["outcome"]["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(outcomes, Outcome::ALL.map(Outcome::code));
}
