//! Exactly-once counting without Kafka transactions: a grouper that died after publishing a
//! batch but before committing past it rebuilds and re-emits that batch, and a writer that
//! re-reads aggregates it already stored; ClickHouse still holds every event once.

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};
use tracefold_grouper::service::encode_pending;
use tracefold_runtime::devbroker::DevBroker;
use tracefold_tests::{generate, grouper_config, kafka, publish, topics, writer_config, ServiceThread, TestDb};

const PARTITIONS: i32 = 2;

fn group_client(bootstrap: &str, group: &str) -> BaseConsumer {
    tracefold_runtime::kafka::consumer_config(&kafka(bootstrap), group).create().unwrap()
}

/// Commits `tpl` for `group` by joining it: librdkafka's mock cluster (unlike Kafka) refuses
/// commits from non-members once a group exists.
async fn commit_as_member(bootstrap: &str, group: &str, topic: &str, tpl: &TopicPartitionList) {
    let c = group_client(bootstrap, group);
    c.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.assignment().unwrap().count() < PARTITIONS as usize {
        assert!(Instant::now() < deadline, "did not get the partitions of {group}");
        let _ = c.poll(Duration::from_millis(100));
    }
    c.commit(tpl, CommitMode::Sync).unwrap();
    c.unsubscribe();
}

fn high_watermarks(c: &BaseConsumer, topic: &str) -> Vec<i64> {
    (0..PARTITIONS).map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(5)).unwrap().1).collect()
}

fn committed(c: &BaseConsumer, topic: &str) -> Vec<(i64, String)> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
    got.elements()
        .iter()
        .map(|e| {
            (
                match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                },
                e.metadata().to_owned(),
            )
        })
        .collect()
}

/// Waits until `group` has committed up to the end of `topic` with no pending range.
async fn wait_caught_up(bootstrap: &str, group: &str, topic: &str, timeout: Duration) {
    let c = group_client(bootstrap, &format!("{group}-observer"));
    let g = group_client(bootstrap, group);
    let deadline = Instant::now() + timeout;
    loop {
        let hw = high_watermarks(&c, topic);
        let cm = committed(&g, topic);
        if cm.iter().zip(&hw).all(|((o, meta), h)| *o == *h && meta.is_empty()) {
            return;
        }
        assert!(Instant::now() < deadline, "{group} did not catch up on {topic}: committed {cm:?}, end {hw:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct LastBatch {
    src_partition: i32,
    first: i64,
    last: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_batches_and_reread_aggregates_are_counted_once() {
    let db = TestDb::new("exactly_once").await;
    let t = topics();
    let broker = DevBroker::start(1, &t, Some(PARTITIONS)).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let (events, truth) = generate(2500, 12, 99);
    let payloads: Vec<Vec<u8>> = events.iter().map(|e| e.json.clone().into_bytes()).collect();
    publish(&bootstrap, &t.events, &payloads).await;

    let gcfg = grouper_config(&bootstrap);
    let wcfg = writer_config(&bootstrap, &db);
    let grouper = ServiceThread::grouper(gcfg.clone());
    let writer = ServiceThread::writer(wcfg.clone());
    assert_eq!(db.wait_for_total(truth.total, Duration::from_secs(60)).await, truth.total);
    wait_caught_up(&bootstrap, &gcfg.grouper.group_id, &t.events, Duration::from_secs(30)).await;
    wait_caught_up(&bootstrap, &wcfg.writer.group_id, &t.aggregates, Duration::from_secs(30)).await;
    grouper.stop().unwrap();

    // 1. The grouper "crashed" after its last batch of each partition was published but before
    //    it committed past it: the committed state is the batch's first offset with the range.
    let last: Vec<LastBatch> = db
        .client
        .query(&format!(
            "SELECT src_partition, max(src_first_offset) AS first, max(src_last_offset) AS last FROM {}.aggregates GROUP BY src_partition ORDER BY src_partition",
            db.cfg.database
        ))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(last.len(), PARTITIONS as usize, "both partitions had batches");
    let mut tpl = TopicPartitionList::new();
    for b in &last {
        tpl.add_partition_offset(&t.events, b.src_partition, Offset::Offset(b.first)).unwrap();
        tpl.find_partition(&t.events, b.src_partition).unwrap().set_metadata(encode_pending(b.first, b.last));
    }
    commit_as_member(&bootstrap, &gcfg.grouper.group_id, &t.events, &tpl).await;
    let g = group_client(&bootstrap, &gcfg.grouper.group_id);
    assert!(committed(&g, &t.events).iter().all(|(_, m)| m.starts_with("tracefold:v1:")));
    drop(g);
    let observer = group_client(&bootstrap, "observer");
    let aggregates_before: i64 = high_watermarks(&observer, &t.aggregates).iter().sum();

    let grouper = ServiceThread::grouper(gcfg.clone());
    wait_caught_up(&bootstrap, &gcfg.grouper.group_id, &t.events, Duration::from_secs(30)).await;
    let aggregates_after: i64 = high_watermarks(&observer, &t.aggregates).iter().sum();
    assert!(aggregates_after > aggregates_before, "the pending batches were rebuilt and re-emitted");
    wait_caught_up(&bootstrap, &wcfg.writer.group_id, &t.aggregates, Duration::from_secs(30)).await;
    assert_eq!(db.total_events().await, truth.total, "re-emitted aggregates are not counted twice");
    assert_eq!(db.per_issue().await, truth.expected());

    // 2. The writer restarts from the very beginning of the aggregates topic (as after losing
    //    its committed offsets): everything it reads is already stored.
    writer.stop().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&t.aggregates, p, Offset::Offset(0)).unwrap();
    }
    commit_as_member(&bootstrap, &wcfg.writer.group_id, &t.aggregates, &tpl).await;
    let writer = ServiceThread::writer(wcfg.clone());
    wait_caught_up(&bootstrap, &wcfg.writer.group_id, &t.aggregates, Duration::from_secs(30)).await;
    assert_eq!(db.total_events().await, truth.total, "re-read aggregates are not counted twice");
    assert_eq!(db.per_issue().await, truth.expected());

    grouper.stop().unwrap();
    writer.stop().unwrap();
}
