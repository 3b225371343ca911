//! What the writer and the detector do with the bytes of an aggregates-topic message, and the
//! writer with an outcomes-topic message. Any service may publish to those topics, so any bytes
//! must be decoded or refused with a reason (to the DLQ, or a counted skip), never crash, hang
//! or allocate without bound:
//! - the writer's arena decoder (`Batch::push_plausible`) takes exactly what serde_json reads as
//!   an `AggregateRecord` (less the implausible ones), gives the same record back, leaves
//!   nothing behind when it refuses, and builds the row it inserts;
//! - the DLQ record of a refused payload fits under the message limit it was given;
//! - the detector reads the same records (`read_record`) and its engine takes any plausible one,
//!   with any Kafka timestamp and any clock, then advances, without overflowing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracefold_detector::engine::{Arrival, Engine, EngineConfig};
use tracefold_model::{AggregateRecord, OutcomeRecord};
use tracefold_writer::batch::Batch;

fuzz_target!(|data: &[u8]| {
    // The first 16 bytes, when there are that many, are a Kafka timestamp and the detector's
    // clock; the rest are messages separated by 0xff (never part of valid UTF-8).
    let (clocks, rest) = if data.len() >= 16 { data.split_at(16) } else { (&[][..], data) };
    let word = |i: usize| {
        clocks.get(i * 8..i * 8 + 8).map_or(1_795_671_540_000, |b| i64::from_le_bytes(b.try_into().unwrap()))
    };
    let (received_ms, now_ms) = (word(0), word(1));
    let messages: Vec<&[u8]> = rest.split(|b| *b == 0xff).collect();

    let mut batch = Batch::default();
    let mut engine = Engine::new(EngineConfig::default());
    engine.assign(&[0], now_ms);
    for (offset, m) in messages.iter().enumerate() {
        let offset = offset as i64;
        let before = (batch.len(), batch.bytes());
        match batch.push_plausible(m, 0, offset) {
            Ok(()) if batch.len() > before.0 => {
                let i = batch.len() - 1;
                let theirs: AggregateRecord =
                    serde_json::from_slice(m).expect("the writer took what serde_json refuses");
                assert_eq!(batch.record(i), theirs, "the arena decoder read another record than serde_json");
                assert_eq!(batch.source(i), (0, offset));
                let _ = batch.row(i, "aggregates");
            }
            Ok(()) => assert_eq!(batch.len(), before.0),
            Err(why) => {
                assert!(!why.is_empty());
                assert_eq!((batch.len(), batch.bytes()), before, "a refused record left something behind");
                let dlq = tracefold_runtime::kafka::DlqRecord::new(
                    m,
                    "aggregates",
                    0,
                    offset,
                    tracefold_model::Reason::Malformed,
                    &why,
                    4096,
                );
                assert!(dlq.payload.len() <= 4096);
            }
        }
        // The detector's reading of the same bytes, and its engine on what it reads.
        if let Ok(r) = tracefold_detector::service::read_record(Some(m)) {
            let _ = engine.ingest(&r, Arrival { partition: 0, received_ms, now_ms });
        }
        if let Ok(r) = serde_json::from_slice::<OutcomeRecord>(m) {
            let _ = tracefold_store::outcomes::OutcomeRow::from_record(&r);
        }
    }
    let _ = engine.advance(now_ms);
    let _ = engine.advance(now_ms.saturating_add(3_600_000));
    let _ = engine.take_counts();
});
