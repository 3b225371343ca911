//! How fast a bare consumer reads from the embedded Kafka (librdkafka's mock cluster), with
//! tracefold's consumer settings and no processing at all: the ceiling the mock cluster puts
//! on any consumer of it, to set beside the grouper's read rate in `bench-pipeline`.
//!
//! ```sh
//! cargo build --release -p tracefold-benches --example mock_fetch
//! target/release/examples/mock_fetch [events per partition, default 5000] [partitions, default 6]
//! ```
//!
//! Writes the checked-in fixture events (about 2 KB each, fresh ids per round) into the
//! events topic with tracefold's producer settings, waits for every acknowledgement, then
//! times one consumer reading them all from the start; prints one JSON line. The events per
//! partition stay under the mock cluster's 5 MB of retention per partition.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::Message;
use std::time::{Duration, Instant};
use tracefold_runtime::config::{KafkaConfig, TopicsConfig};
use tracefold_runtime::devbroker::DevBroker;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let per_partition: usize = args.next().map_or(Ok(5_000), |a| a.parse())?;
    let partitions: i32 = args.next().map_or(Ok(6), |a| a.parse())?;
    // `live`: the producer writes while the consumer reads (as in `bench-pipeline`), instead of
    // everything being written first.
    let live = args.next().is_some_and(|a| a == "live");
    let topics = TopicsConfig::default();
    let broker = DevBroker::start(1, &topics, Some(partitions))?;
    let kafka = KafkaConfig { bootstrap_servers: broker.bootstrap_servers(), ..KafkaConfig::default() };
    let total = per_partition * usize::try_from(partitions)?;

    let fill = {
        let (kafka, topic) = (kafka.clone(), topics.events.clone());
        move || fill(&kafka, &topic, total, partitions)
    };
    let written = if live { None } else { Some(fill()?) };
    let consumer: BaseConsumer = tracefold_runtime::kafka::consumer_config(&kafka, "mock-fetch-probe").create()?;
    // Assigned, not subscribed: no group join to wait for, so that a live writer starts
    // while the consumer is already fetching.
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&topics.events, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let _ = consumer.poll(Duration::from_millis(200));
    let writer = if live { Some(std::thread::spawn(fill)) } else { None };
    let (mut read, mut first_at) = (0usize, None::<Instant>);
    let deadline = Instant::now() + Duration::from_secs(120);
    while read < total && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            // The clock starts at the first message: the group join is not the broker's rate.
            first_at.get_or_insert_with(Instant::now);
            read += 1;
            std::hint::black_box(m.payload());
        }
    }
    let secs = first_at.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let (bytes, write_secs) = match (writer, written) {
        (Some(w), _) => w.join().map_err(|_| anyhow::anyhow!("the writer panicked"))??,
        (None, Some(w)) => w,
        (None, None) => unreachable!("either written first or live"),
    };
    println!(
        "{}",
        serde_json::json!({
            "bench": "mock_fetch",
            "live": live,
            "partitions": partitions,
            "events": total,
            "read": read,
            "mean_event_bytes": bytes / total.max(1),
            "write_seconds": write_secs,
            "read_seconds": secs,
            "events_per_sec": read as f64 / secs.max(1e-9),
        })
    );
    anyhow::ensure!(read == total, "read {read} of {total} events (lost to retention or too slow)");
    Ok(())
}

/// Writes `total` fixture events round-robin over `partitions` with tracefold's producer
/// settings and waits for every acknowledgement: (bytes, seconds).
fn fill(kafka: &KafkaConfig, topic: &str, total: usize, partitions: i32) -> anyhow::Result<(usize, f64)> {
    let t0 = Instant::now();
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        tracefold_runtime::kafka::producer_config(kafka, 30_000).create()?;
    let mut sent = 0usize;
    let mut bytes = 0usize;
    'fill: for round in 0..=255u8 {
        for e in tracefold_benches::events_of_round(round) {
            if sent == total {
                break 'fill;
            }
            let p = i32::try_from(sent % usize::try_from(partitions)?)?;
            let mut rec = BaseRecord::<[u8], [u8]>::to(topic).partition(p).payload(e.as_slice());
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            sent += 1;
            bytes += e.len();
        }
    }
    producer.flush(Duration::from_secs(60))?;
    Ok((bytes, t0.elapsed().as_secs_f64()))
}
