//! The grouper's batch builder on arbitrary bytes: whatever a service publishes to the events
//! topic, each message is either counted or rejected with a reason, counts are preserved, and
//! rebuilding the same range gives the same records (the replay guarantee). Never a crash, a
//! hang or unbounded memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracefold_grouper::batch::{BatchBuilder, BatchOptions};

const NOW: i64 = 1_795_671_540_000;

fuzz_target!(|data: &[u8]| {
    // Split the input into messages at 0xff bytes (never part of valid UTF-8, so each message
    // is either one JSON text or garbage).
    let messages: Vec<&[u8]> = data.split(|b| *b == 0xff).collect();
    let mut b = BatchBuilder::new(BatchOptions { max_users: 8, ..BatchOptions::default() });
    let run = |b: &mut BatchBuilder| {
        for (i, m) in messages.iter().enumerate() {
            b.add(m, i as i64, NOW);
        }
        b.finish("fuzz", "t", 0, 0, messages.len() as i64)
    };
    let first = run(&mut b);
    let counted: u64 = first.records.iter().map(|r| r.count).sum();
    assert_eq!(counted, first.accepted);
    assert_eq!(first.accepted + first.rejected.len() as u64, messages.len() as u64);
    for r in &first.records {
        assert!(r.sample.len() <= tracefold_model::sample::MAX_SAMPLE_BYTES);
        assert!(r.title.len() <= 1024 && r.culprit.len() <= 1024 && r.exc_type.len() <= 1024);
    }
    for r in &first.rejected {
        assert!(!r.rejection.detail.is_empty());
    }
    // A replay of the same range is identical.
    assert_eq!(run(&mut b), first);
});
