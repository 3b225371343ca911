//! The grouper's batch builder on arbitrary bytes: whatever a service publishes to the events
//! topic, each message is counted, rejected with a reason, or recognised as a re-sent copy;
//! counts are preserved; rebuilding the same range gives the same records (the replay
//! guarantee), and a builder primed with the first part of the range decides the rest as one
//! that read all of it. Never a crash, a hang or unbounded memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracefold_grouper::batch::{BatchBuilder, BatchOptions};

const NOW: i64 = 1_795_671_540_000;

fuzz_target!(|data: &[u8]| {
    // Split the input into messages at 0xff bytes (never part of valid UTF-8, so each message
    // is either one JSON text or garbage).
    let messages: Vec<&[u8]> = data.split(|b| *b == 0xff).collect();
    // A small deduplication window, so that priming below starts inside it.
    let opts = BatchOptions { max_users: 8, dedup_window: 4, ..BatchOptions::default() };
    let run = |from: usize| {
        let mut b = BatchBuilder::new(opts.clone());
        for (i, m) in messages.iter().enumerate().take(from).skip(from.saturating_sub(4)) {
            b.prime(m, i as i64, NOW);
        }
        for (i, m) in messages.iter().enumerate().skip(from) {
            b.add(m, i as i64, NOW);
        }
        b.finish("fuzz", "t", 0, from as i64, messages.len() as i64)
    };
    let first = run(0);
    let counted: u64 = first.records.iter().map(|r| r.count).sum();
    assert_eq!(counted, first.accepted);
    assert_eq!(
        first.accepted + first.rejected.len() as u64 + first.duplicates.len() as u64,
        messages.len() as u64
    );
    for r in &first.records {
        assert!(r.sample.len() <= tracefold_model::sample::MAX_SAMPLE_BYTES);
        assert!(r.title.len() <= 1024 && r.culprit.len() <= 1024 && r.exc_type.len() <= 1024);
        // Breakdowns: bounded, and no key counts more events than the record.
        for k in tracefold_model::breakdown::Key::ALL {
            let values = r.breakdown.values(k);
            assert!(values.len() <= tracefold_model::breakdown::MAX_VALUES + 1);
            assert!(values.iter().map(|v| v.count).sum::<u64>() <= r.count);
            assert!(values.iter().all(|v| !v.value.is_empty() && v.value.len() <= 200 && v.count > 0));
        }
    }
    for r in &first.rejected {
        assert!(!r.rejection.detail.is_empty());
    }
    for m in &messages {
        let _ = tracefold_grouper::outcomes::project_of(m);
        // The sample rewrite of the source-map hook, on any bytes: the first frame of each
        // stack said to be mapped (it is rewritten only where its line and column match).
        use tracefold_grouper::symbolicate::{rewrite_sample, Mapped, Stack};
        let mapped = [Stack::Exception(0), Stack::Thread(0)].map(|stack| Mapped {
            stack,
            frame: 0,
            original: tracefold_grouper::symbolicate::Original {
                file: "src/é.ts".into(),
                line: 2,
                col: 3,
                function: Some("f".into()),
                pre_context: vec!["a".into()],
                context_line: Some("b".into()),
                post_context: vec![],
            },
            raw_filename: Some("https://x/a.js".into()),
            raw_abs_path: None,
            raw_function: Some("a".into()),
            raw_lineno: Some(1),
            raw_colno: Some(14),
            // The context is already in `original` (the map's own `add_context` is fuzzed by
            // the sourcemaps target, through `ParsedMap::resolve`).
            map: None,
        });
        let _ = rewrite_sample(m, &mapped);
        // Written on the payload's bytes: the same JSON value as through a `Value`.
        tracefold_grouper::symbolicate::assert_rewrite_paths_agree(m, &mapped);
    }
    // A replay of the same range is identical.
    assert_eq!(run(0), first);
    // A builder that starts in the middle, primed with the window before it, decides the
    // rest exactly as the one that read everything: the same duplicates and rejections.
    let mid = messages.len() / 2;
    let later = run(mid);
    let tail = |offsets: Vec<i64>| offsets.into_iter().filter(|o| *o >= mid as i64).collect::<Vec<_>>();
    assert_eq!(
        later.duplicates.iter().map(|d| d.offset).collect::<Vec<_>>(),
        tail(first.duplicates.iter().map(|d| d.offset).collect())
    );
    assert_eq!(
        later.rejected.iter().map(|r| r.offset).collect::<Vec<_>>(),
        tail(first.rejected.iter().map(|r| r.offset).collect())
    );
});
