//! End to end: events through the HTTP endpoint (or straight into Kafka) end up as issues
//! with exact counts and users in a real ClickHouse; bad events land in the DLQ.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use std::time::{Duration, Instant};
use tracefold_cli::dev::{DevConfig, Pipeline};
use tracefold_tests::{generate, post_ndjson, publish, TestDb};

async fn start(db: &TestDb) -> Pipeline {
    let cfg = DevConfig { clickhouse: db.cfg.clone(), ..DevConfig::default() };
    Pipeline::start(cfg, "127.0.0.1:0", Some(3), true).await.expect("pipeline starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_events_become_exact_issue_counts_in_clickhouse() {
    let db = TestDb::new("e2e").await;
    let pipeline = start(&db).await;
    let (events, truth) = generate(3000, 25, 42);
    let accepted_ids = post_ndjson(pipeline.http_addr, &events, 250).await;
    assert_eq!(accepted_ids, events.len());

    let stored = db.wait_for_total(truth.total, Duration::from_secs(60)).await;
    assert_eq!(stored, truth.total, "ClickHouse holds every accepted event exactly once");
    let got = db.per_issue().await;
    assert_eq!(got.len(), 25, "25 known bugs are 25 issues");
    assert_eq!(got, truth.expected(), "per-issue counts and distinct users match the ground truth");

    // The analyst query behind `tracefold top` agrees, ordered by count.
    let top = tracefold_cli::query::top_issues(&db.client, &db.cfg.database, 24 * 3600, 100, None).await.unwrap();
    assert_eq!(top.len(), 25);
    assert!(top.windows(2).all(|w| w[0].count >= w[1].count));
    for row in &top {
        let (count, users) = truth.expected()[&row.issue_id];
        assert_eq!((row.count, row.users), (count, users), "{}", row.issue_id);
        assert!(!row.title.is_empty() && !row.first_seen.is_empty() && row.first_seen <= row.last_seen);
        assert!(row.last_hour.iter().sum::<u64>() <= row.count);
    }
    let json = serde_json::to_value(&top).unwrap();
    for key in ["issue_id", "title", "count", "users", "first_seen", "last_seen"] {
        assert!(json[0].get(key).is_some(), "top JSON has {key}");
    }
    // Wait for a second: nothing more arrives (no double counting by late replays).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(db.total_events().await, truth.total);
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_go_to_the_dlq_and_the_rest_are_counted() {
    let db = TestDb::new("dlq").await;
    let pipeline = start(&db).await;
    let (events, truth) = generate(400, 8, 7);
    let bad: Vec<Vec<u8>> = vec![
        b"{this is not json".to_vec(),
        br#"{"event_id":"0123456789abcdef0123456789abcdef","message":"no project"}"#.to_vec(),
        br#"{"event_id":"0123456789abcdef0123456789abcdef","project":"web","exception":"not a list"}"#.to_vec(),
        b"[1,2,3]".to_vec(),
    ];
    // Interleave: bad messages sit between valid ones in the same partitions.
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        payloads.push(e.json.clone().into_bytes());
        if i % 100 == 50 {
            payloads.push(bad[i / 100].clone());
        }
    }
    publish(&pipeline.bootstrap_servers(), &pipeline.cfg.topics.events, &payloads).await;

    assert_eq!(db.wait_for_total(truth.total, Duration::from_secs(60)).await, truth.total);
    assert_eq!(db.per_issue().await, truth.expected());

    let consumer: BaseConsumer =
        tracefold_runtime::kafka::consumer_config(&tracefold_tests::kafka(&pipeline.bootstrap_servers()), "dlq-reader")
            .create()
            .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&pipeline.cfg.topics.dlq, 0, rdkafka::Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut got: Vec<(Vec<u8>, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < bad.len() && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m.headers().expect("DLQ messages carry headers");
            let reason = headers
                .iter()
                .find(|h| h.key == "tracefold-error")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            assert!(headers.iter().any(|h| h.key == "tracefold-source-offset"));
            got.push((m.payload().unwrap_or_default().to_vec(), reason.expect("a reason header")));
        }
    }
    got.sort();
    let mut want = bad.clone();
    want.sort();
    assert_eq!(
        got.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
        want,
        "every bad message is in the DLQ, verbatim"
    );
    let reasons: Vec<&str> = got.iter().map(|(_, r)| r.as_str()).collect();
    assert!(reasons.iter().any(|r| r.starts_with("malformed event json")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("project: missing")), "{reasons:?}");
    pipeline.stop().await.unwrap();
}
