//! The grouper hot path (parse + validate + fingerprint + aggregate) on realistic events,
//! against a bare parse of the same bytes measured in the same run.
//!
//! `cargo bench -p tracefold-benches --bench hot_path` prints criterion's figures, then a
//! table of events/s per core and each variant's time relative to the bare simd-json parse,
//! and the time per event of the source-map fixture minified (hook on, maps cached) relative to
//! the same events unminified (issue 15, item 6).

use criterion::{black_box, BenchmarkId, Criterion, Throughput};
use std::path::PathBuf;
use tracefold_benches::{events, FIXTURE_NOW_MS};
use tracefold_fingerprint::{fingerprint, GroupingConfig, Scratch};
use tracefold_grouper::batch::{BatchBuilder, BatchOptions};

const GROUP: &str = "grouper_hot_path";

/// (id, what it measures)
const VARIANTS: &[(&str, &str)] = &[
    ("bare_parse_tape", "simd-json tape only (copy + parse), the baseline"),
    ("bare_parse_serde_json_value", "serde_json into an owned Value"),
    ("parse_struct", "the hot path's parser (EventParser::parse_to, events recycled) into the borrowed Event struct"),
    ("parse_validate", "+ validation"),
    ("parse_validate_fingerprint", "+ fingerprint"),
    ("hot_path", "+ aggregate; fixture spread over 60 min, most events open a new bucket"),
    ("hot_path_busy_buckets", "+ aggregate; the fixture 10 times per batch, buckets repeat"),
    ("hot_path_busy_buckets_no_dedup", "the same with deduplication off (its cost is the difference)"),
    ("bare_parse_tape_rounds", "the baseline over the bytes the busy variants read (55,000 events)"),
];

fn bench(c: &mut Criterion, evs: &[Vec<u8>]) {
    let mut g = c.benchmark_group(GROUP);
    g.throughput(Throughput::Elements(evs.len() as u64));
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut buffers = simd_json::Buffers::default();
    let mut store: Option<simd_json::Tape<'static>> = Some(simd_json::Tape::null());
    g.bench_function(BenchmarkId::from_parameter(VARIANTS[0].0), |b| {
        b.iter(|| {
            for e in evs {
                buf.clear();
                buf.extend_from_slice(e);
                // Reuse the tape's allocation across events (reset re-brands its lifetime).
                let mut tape = store.take().expect("tape").reset();
                black_box(simd_json::fill_tape(&mut buf, &mut buffers, &mut tape).is_ok());
                store = Some(tape.reset());
            }
        })
    });
    g.bench_function(BenchmarkId::from_parameter(VARIANTS[1].0), |b| {
        b.iter(|| {
            for e in evs {
                black_box(serde_json::from_slice::<serde_json::Value>(e).is_ok());
            }
        })
    });
    let mut parser = tracefold_model::EventParser::default();
    g.bench_function(BenchmarkId::from_parameter(VARIANTS[2].0), |b| {
        b.iter(|| {
            for e in evs {
                buf.clear();
                buf.extend_from_slice(e);
                let mut ev = tracefold_model::Event::default();
                black_box(parser.parse_to(&mut buf, &mut ev).is_ok());
                parser.recycle(ev);
            }
        })
    });
    g.bench_function(BenchmarkId::from_parameter(VARIANTS[3].0), |b| {
        b.iter(|| {
            for e in evs {
                buf.clear();
                buf.extend_from_slice(e);
                let mut ev = tracefold_model::Event::default();
                parser.parse_to(&mut buf, &mut ev).expect("fixture parses");
                black_box(tracefold_model::validate(&ev, FIXTURE_NOW_MS).is_ok());
                parser.recycle(ev);
            }
        })
    });
    let cfg = GroupingConfig::default();
    let mut scratch = Scratch::default();
    g.bench_function(BenchmarkId::from_parameter(VARIANTS[4].0), |b| {
        b.iter(|| {
            for e in evs {
                buf.clear();
                buf.extend_from_slice(e);
                let mut ev = tracefold_model::Event::default();
                parser.parse_to(&mut buf, &mut ev).expect("fixture parses");
                let _ = black_box(tracefold_model::validate(&ev, FIXTURE_NOW_MS));
                black_box(fingerprint(&ev, &cfg, &mut scratch));
                parser.recycle(ev);
            }
        })
    });
    let mut builder = BatchBuilder::new(BatchOptions::default());
    g.bench_function(BenchmarkId::from_parameter(VARIANTS[5].0), |b| {
        b.iter(|| {
            for (i, e) in evs.iter().enumerate() {
                builder.add(e, i as i64, FIXTURE_NOW_MS);
            }
            black_box(builder.finish("e", "tracefold.events", 0, 0, evs.len() as i64).records.len())
        })
    });
    g.throughput(Throughput::Elements(10 * evs.len() as u64));
    // Offsets keep increasing across iterations, as in a partition, so the deduplication
    // window inserts and evicts as it does live; the ids cycle through more rounds than the
    // window spans, so no event repeats within it.
    let span = BatchOptions::default().dedup_window as usize;
    let cycle = (span / evs.len() + 10).min(256);
    let rounds: Vec<Vec<Vec<u8>>> = (0..cycle).map(|r| tracefold_benches::events_of_round(r as u8)).collect();
    for (variant, window) in [(VARIANTS[6].0, BatchOptions::default().dedup_window), (VARIANTS[7].0, 0)] {
        assert!(cycle * evs.len() > span, "ids repeat within the window");
        let builder = BatchBuilder::new(BatchOptions { dedup_window: window, ..BatchOptions::default() });
        let mut busy = Busy { builder, rounds: &rounds, next: 0, offset: 0 };
        g.bench_function(BenchmarkId::from_parameter(variant), |b| b.iter(|| black_box(busy.ten_rounds())));
    }
    // The bare parse of exactly the bytes the busy-bucket variants read, in the same order:
    // they cycle through 55,000 events (115 MB), so their input comes from memory, not from
    // the cache the 500-event baseline fits in.
    // The same rounds in the same order as the busy variants, across criterion's calls.
    let mut next = 0usize;
    g.bench_function(BenchmarkId::from_parameter(VARIANTS[8].0), |b| {
        b.iter(|| {
            for _ in 0..10 {
                for e in &rounds[next] {
                    buf.clear();
                    buf.extend_from_slice(e);
                    let mut tape = store.take().expect("tape").reset();
                    black_box(simd_json::fill_tape(&mut buf, &mut buffers, &mut tape).is_ok());
                    store = Some(tape.reset());
                }
                next = (next + 1) % rounds.len();
            }
        })
    });
    g.finish();
}

/// Events per iteration of each variant.
fn events_per_iter(id: &str, n: usize) -> usize {
    if id.starts_with("hot_path_busy_buckets") || id == "bare_parse_tape_rounds" {
        10 * n
    } else {
        n
    }
}

fn criterion_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("criterion")
}

/// Mean time of one iteration (the whole fixture set), ns, from criterion's estimates.
fn mean_ns(dir: &std::path::Path, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(GROUP).join(id).join("new/estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

const JS_GROUP: &str = "grouper_hot_path_sourcemaps";

/// The busy-bucket hot path over the source-map fixtures (issue 15, item 6): the unminified
/// events (hook off), and the minified ones with the hook on and the maps already cached.
/// The busy-bucket batch: ten rounds of event ids through one batch builder per iteration.
/// Criterion calls the routine several times (warm-up, then the samples): the round and the
/// offsets go on across calls, as in a partition, or the ids would repeat within the window.
struct Busy<'r> {
    builder: BatchBuilder,
    rounds: &'r [Vec<Vec<u8>>],
    next: usize,
    offset: i64,
}

impl Busy<'_> {
    /// One iteration: ten rounds in one batch; the number of records it made.
    fn ten_rounds(&mut self) -> usize {
        let first = self.offset;
        for _ in 0..10 {
            for e in &self.rounds[self.next] {
                self.builder.add(e, self.offset, FIXTURE_NOW_MS);
                self.offset += 1;
            }
            self.next = (self.next + 1) % self.rounds.len();
        }
        self.builder.finish("e", "tracefold.events", 0, first, self.offset - 1).records.len()
    }
}

/// Returns the events per iteration.
fn bench_sourcemaps(c: &mut Criterion) -> usize {
    let mut g = c.benchmark_group(JS_GROUP);
    let span = BatchOptions::default().dedup_window as usize;
    let n = tracefold_benches::JS_ORIGINAL_NDJSON.lines().filter(|l| !l.is_empty()).count();
    let cycle = (span / n + 10).min(256);
    assert!(cycle * n > span, "ids repeat within the window");
    g.throughput(Throughput::Elements(10 * n as u64));
    for (variant, ndjson, hook) in [
        ("js_original_busy", tracefold_benches::JS_ORIGINAL_NDJSON, None),
        (
            "js_minified_busy_maps_cached",
            tracefold_benches::JS_MINIFIED_NDJSON,
            Some(tracefold_benches::js_sourcemap_hook()),
        ),
    ] {
        let rounds: Vec<Vec<Vec<u8>>> =
            (0..cycle).map(|r| tracefold_benches::js_events_of_round(ndjson, r as u8)).collect();
        let mut builder = BatchBuilder::new(BatchOptions::default());
        let hooked = hook.is_some();
        if let Some(hook) = hook {
            builder = builder.with_sourcemaps(hook);
        }
        // One round first, unmeasured: the hook resolves every minified event (or is off).
        let mut offset = 0i64;
        for e in &rounds[rounds.len() - 1] {
            builder.add(e, offset, FIXTURE_NOW_MS);
            offset += 1;
        }
        let out = builder.finish("e", "tracefold.events", 0, 0, offset - 1);
        assert_eq!(out.symbolication[0], if hooked { n as u64 } else { 0 }, "{variant}: {:?}", out.symbolication);
        let mut busy = Busy { builder, rounds: &rounds, next: 0, offset };
        g.bench_function(BenchmarkId::from_parameter(variant), |b| b.iter(|| black_box(busy.ten_rounds())));
    }
    g.finish();
    10 * n
}

fn main() {
    let evs = events();
    let bytes: usize = evs.iter().map(Vec::len).sum();
    let dir = criterion_dir();
    let mut c = Criterion::default().output_directory(&dir).configure_from_args();
    bench(&mut c, &evs);
    let js_events = bench_sourcemaps(&mut c);
    c.final_summary();
    let base = mean_ns(&dir, VARIANTS[0].0);
    println!(
        "\n{} events, {:.0} bytes on average; one core\n\n{:<28} {:>12} {:>10} {:>14}  what",
        evs.len(),
        bytes as f64 / evs.len() as f64,
        "variant",
        "events/s",
        "ns/event",
        "x bare parse",
    );
    let mut json = Vec::new();
    for (id, what) in VARIANTS {
        let Some(ns) = mean_ns(&dir, id) else { continue };
        let per_event = ns / events_per_iter(id, evs.len()) as f64;
        let ratio = base.map(|b| per_event / (b / evs.len() as f64));
        println!(
            "{id:<28} {:>12.0} {per_event:>10.0} {:>14}  {what}",
            1e9 / per_event,
            ratio.map_or("-".into(), |r| format!("{r:.2}"))
        );
        json.push(serde_json::json!({"variant": id, "events_per_sec": 1e9 / per_event, "ns_per_event": per_event, "ratio_to_bare_parse": ratio}));
    }
    // What fingerprinting adds to the hot path: its own cost over the busy-bucket hot path.
    let per_event = |id: &str| mean_ns(&dir, id).map(|ns| ns / events_per_iter(id, evs.len()) as f64);
    let share = match (
        per_event("parse_validate"),
        per_event("parse_validate_fingerprint"),
        per_event("hot_path_busy_buckets"),
    ) {
        (Some(pv), Some(pvf), Some(hot)) => {
            let share = (pvf - pv) / hot;
            println!("\nfingerprinting: {:.0} ns/event, {:.1}% of the busy-bucket hot path", pvf - pv, 100.0 * share);
            Some(share)
        }
        _ => None,
    };
    // Source maps on the hot path: the minified fixture with its maps cached against the same
    // events unminified (target: within 1.3x).
    let js = |id: &str| {
        let text = std::fs::read_to_string(dir.join(JS_GROUP).join(id).join("new/estimates.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["mean"]["point_estimate"].as_f64().map(|ns| ns / js_events as f64)
    };
    let sourcemaps_ratio = match (js("js_original_busy"), js("js_minified_busy_maps_cached")) {
        (Some(o), Some(m)) => {
            println!("\nsource maps, cached: {m:.0} ns/event minified against {o:.0} unminified: {:.2}x", m / o);
            Some(m / o)
        }
        _ => None,
    };
    println!(
        "{}",
        serde_json::json!({"benchmark": GROUP, "results": json, "fingerprint_share_of_hot_path": share, "sourcemaps_cached_ratio_to_unminified": sourcemaps_ratio})
    );
}
