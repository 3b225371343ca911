//! The grouper's hot path over the checked-in fixture, once per step, for instruction counts
//! (stable on a noisy machine, unlike wall time):
//!
//! ```sh
//! cargo build --release -p tracefold-benches --example hot_path_once
//! for m in bare parse validate fingerprint busy_no_dedup busy; do
//!   valgrind --tool=callgrind --toggle-collect='hot_path_once::run' \
//!     --callgrind-out-file=/tmp/cg.$m target/release/examples/hot_path_once $m 2
//! done
//! callgrind_annotate --inclusive=yes /tmp/cg.busy | head -60
//! ```
//!
//! Only `run` is counted (loading the fixture is not), and every mode prints the events it
//! processed: divide the instructions by that. Modes, each a step more than the one before:
//!
//! - `bare`: copy the event into a reused buffer and build simd-json's tape into a reused
//!   tape (the criterion bench's `bare_parse_tape`, the baseline);
//! - `parse`: copy and [`tracefold_model::EventParser::parse_to`], the event recycled after
//!   (what the batch builder runs);
//! - `validate`: + validation;
//! - `fingerprint`: + the deduplication identity and the fingerprint;
//! - `busy_no_dedup`: the batch builder with deduplication off: + bucket key, bucket lookup,
//!   the new buckets' title, culprit and sample, counting;
//! - `busy`: the batch builder as it runs (the criterion bench's `hot_path_busy_buckets`):
//!   + the deduplication window.
//!
//! Every mode reads the fixture 10 times per round with other event ids each time and
//! increasing offsets, so no event is a duplicate and the window inserts and evicts as live.
//! The second argument is the number of rounds (5,000 events each).
//!
//! Source maps on the hot path (issue 15, item 6; benches/README.md), over the JavaScript
//! fixture of tests/fixtures/sourcemaps (300 events, 10 times per round: 3,000 events each),
//! the batch builder as in `busy`:
//!
//! - `js_original`: the events with the frames of the unbundled sources, no hook (the
//!   baseline);
//! - `js_minified_raw`: the same events with the minified frames V8 reported, no hook (what
//!   they cost grouped as they are);
//! - `js_minified`: the minified events with the grouper's source-map hook on and the six
//!   builds' maps already in its cache ([`tracefold_benches::js_sourcemap_hook`], built
//!   before `run`): symbolication as it runs once a release's maps are cached, no I/O. The
//!   first sight of each crash site (1,500 positions in the fixture) is measured: the cold figure.
//! - `js_minified_warm`: `js_minified` after one unmeasured pass of the fixture through the same
//!   hook (another batch builder, before `run`): every position has been seen once, as in a
//!   grouper that has run a while on a release (the warm figure, the criterion bench's case).

use std::hint::black_box;
use tracefold_benches::{events_of_round, js_events_of_round, FIXTURE_NOW_MS};
use tracefold_fingerprint::{fingerprint, GroupingConfig, Scratch};
use tracefold_grouper::batch::{BatchBuilder, BatchOptions};
use tracefold_grouper::dedup::identity;
use tracefold_grouper::symbolicate::Hook;

#[inline(never)]
fn run(mode: &str, rounds: &[Vec<Vec<u8>>], hook: Option<Hook>) -> usize {
    let mut n = 0usize;
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    match mode {
        "bare" => {
            let mut buffers = simd_json::Buffers::default();
            let mut store = Some(simd_json::Tape::null());
            for e in rounds.iter().flatten() {
                buf.clear();
                buf.extend_from_slice(e);
                let mut tape = store.take().expect("tape").reset();
                black_box(simd_json::fill_tape(&mut buf, &mut buffers, &mut tape).is_ok());
                store = Some(tape.reset());
                n += 1;
            }
        }
        "parse" | "validate" | "fingerprint" => {
            let mut parser = tracefold_model::EventParser::default();
            let cfg = GroupingConfig::default();
            let mut scratch = Scratch::default();
            for e in rounds.iter().flatten() {
                buf.clear();
                buf.extend_from_slice(e);
                let mut ev = tracefold_model::Event::default();
                parser.parse_to(&mut buf, &mut ev).expect("fixture parses");
                if mode != "parse" {
                    black_box(tracefold_model::validate(&ev, FIXTURE_NOW_MS).is_ok());
                }
                if mode == "fingerprint" {
                    let project = ev.project.as_deref().unwrap_or("");
                    black_box(identity(project, ev.event_id.as_deref().unwrap_or("")));
                    black_box(fingerprint(&ev, &cfg, &mut scratch));
                }
                parser.recycle(ev);
                n += 1;
            }
        }
        "busy" | "busy_no_dedup" | "js_original" | "js_minified_raw" | "js_minified" | "js_minified_warm" => {
            let window = if mode == "busy_no_dedup" { 0 } else { BatchOptions::default().dedup_window };
            let mut b = BatchBuilder::new(BatchOptions { dedup_window: window, ..BatchOptions::default() });
            if let Some(hook) = hook {
                b = b.with_sourcemaps(hook);
            }
            let mut resolved = 0u64;
            let mut offset = 0i64;
            for batch in rounds.chunks(10) {
                let first = offset;
                for e in batch.iter().flatten() {
                    b.add(e, offset, FIXTURE_NOW_MS);
                    offset += 1;
                    n += 1;
                }
                let out = b.finish("e", "tracefold.events", 0, first, offset - 1);
                resolved += out.symbolication[0];
                black_box(out.records.len());
            }
            if hooked(mode) {
                assert_eq!(resolved, n as u64, "every minified event is symbolicated");
            }
        }
        other => panic!(
            "unknown mode {other}: bare, parse, validate, fingerprint, busy_no_dedup, busy, js_original, \
             js_minified_raw, js_minified, js_minified_warm"
        ),
    }
    n
}

/// The modes with the source-map hook on.
fn hooked(mode: &str) -> bool {
    matches!(mode, "js_minified" | "js_minified_warm")
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "busy".into());
    let rounds: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let round = |r: usize| match mode.as_str() {
        "js_original" => js_events_of_round(tracefold_benches::JS_ORIGINAL_NDJSON, (r % 256) as u8),
        "js_minified_raw" | "js_minified" | "js_minified_warm" => {
            js_events_of_round(tracefold_benches::JS_MINIFIED_NDJSON, (r % 256) as u8)
        }
        _ => events_of_round((r % 256) as u8),
    };
    let input: Vec<Vec<Vec<u8>>> = (0..10 * rounds).map(round).collect();
    let hook = hooked(&mode).then(tracefold_benches::js_sourcemap_hook);
    if let (Some(hook), "js_minified_warm") = (&hook, mode.as_str()) {
        // One pass of the fixture (other event ids than any round's) through the same hook.
        let mut b = BatchBuilder::new(BatchOptions::default()).with_sourcemaps(hook.clone());
        let warm = js_events_of_round(tracefold_benches::JS_MINIFIED_NDJSON, 255);
        for (i, e) in warm.iter().enumerate() {
            b.add(e, i as i64, FIXTURE_NOW_MS);
        }
        let out = b.finish("w", "tracefold.events", 0, 0, warm.len() as i64 - 1);
        assert_eq!(out.symbolication[0], warm.len() as u64, "the warm-up pass resolves every event");
    }
    let n = run(&mode, &input, hook);
    println!("{mode}: {n} events");
}
