//! The grouper's hot path over the checked-in fixture, once, for instruction counts (stable on
//! a noisy machine, unlike wall time):
//!
//! ```sh
//! cargo build --release -p tracefold-benches --example hot_path_once
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out target/release/examples/hot_path_once busy 2
//! callgrind_annotate --inclusive=yes /tmp/cg.out | head -40
//! ```
//!
//! Modes: `busy` (the batch builder, the fixture 10 times per batch, as the criterion bench's
//! `hot_path_busy_buckets`) and `parse` (`parse_event_slice` only). The second argument is
//! the number of rounds. Divide the total by the events processed (5,000 per `busy` round, 500
//! per `parse` round); the fixed start-up cost is about 0.1% of two rounds.

use tracefold_grouper::batch::{BatchBuilder, BatchOptions};

fn main() {
    let text = include_str!("../fixtures/events.ndjson");
    let lines: Vec<&[u8]> = text.lines().map(str::as_bytes).collect();
    let mode = std::env::args().nth(1).unwrap_or_else(|| "busy".into());
    let rounds: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let mut b = BatchBuilder::new(BatchOptions::default());
    let mut n = 0usize;
    for _ in 0..rounds {
        if mode == "parse" {
            for l in &lines {
                let mut buf = l.to_vec();
                n += tracefold_model::parse_event_slice(&mut buf).map_or(0, |e| e.exception.len());
            }
            continue;
        }
        for _ in 0..10 {
            for (i, l) in lines.iter().enumerate() {
                b.add(l, i as i64, 1_795_671_540_000);
            }
        }
        n += b.finish("e", "t", 0, 0, 1).records.len();
    }
    println!("{n}");
}
