//! The records of `tracefold bench-writer` (crates/devtools) and of the `writer_once` example:
//! one generator, so that the example's instruction counts are of the benchmark's records.

use tracefold_model::aggregate::DEFAULT_MAX_USERS;
use tracefold_model::{AggregateRecord, BatchRef, UserSet};

/// Record `i` of the benchmark (offset `i` of its events topic `events_topic`, so that every
/// record passes the replay check): one of 2,000 issues over three projects, `i % 7` users
/// (well-spread 64-bit values, as user hashes are), `sample` in one record of twenty.
#[must_use]
pub fn record(i: u64, now: i64, events_topic: &str, sample: &str) -> AggregateRecord {
    let mut users = UserSet::default();
    for u in 0..(i % 7) {
        let h = (i * 31 + u).wrapping_add(0x9e37_79b9_7f4a_7c15).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        users.insert(h ^ (h >> 31), DEFAULT_MAX_USERS);
    }
    AggregateRecord {
        v: 1,
        batch: BatchRef {
            epoch: "bench".into(),
            topic: events_topic.to_owned(),
            partition: (i % 6) as i32,
            first_offset: i as i64,
            last_offset: i as i64,
            index: 0,
            count: 1,
        },
        project: ["web", "api", "billing"][(i % 3) as usize].into(),
        issue_id: format!("{:032x}", i % 2000),
        minute: (now - (i % 60) as i64 * 60).div_euclid(60) * 60,
        release: format!("r{}", i % 4),
        environment: ["production", "staging"][(i % 2) as usize].into(),
        count: 1 + i % 50,
        users,
        first_seen_ms: now * 1000,
        last_seen_ms: now * 1000,
        title: format!("TypeError: thing {} failed", i % 2000),
        culprit: "app.js in handler".into(),
        exc_type: "TypeError".into(),
        level: "error".into(),
        platform: "javascript".into(),
        grouping_version: "v1".into(),
        sample: if i.is_multiple_of(20) { sample.to_owned() } else { String::new() },
        breakdown: Default::default(),
        merged_from: Vec::new(),
    }
}
