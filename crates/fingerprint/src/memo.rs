//! A bounded memo of fingerprints, keyed by what fingerprinting reads of an event. The
//! grouper fingerprints every event whose frames source maps map a second time, as received
//! (the secondary fingerprint, docs/sourcemaps.md "Late maps"); the same crash sites repeat,
//! so within a batch most of those events read exactly what an earlier one read.
//!
//! The key is an xxh3-128 (seeded per memo from the standard library's random source) of
//! everything [`crate::fingerprint`] can read of an event it accepts: the platform, and per
//! considered exception its type, whether its mechanism says the type is synthetic, and per
//! considered frame of its stack the function, module, file name, absolute path, package,
//! line, column and in-app flag. Exception values are left out, so that events that differ in
//! their message alone share a key; the memo records whether the fingerprint looked at a value
//! (no frame of some exception contributed), and such keys are fingerprinted afresh every
//! time. Events whose fingerprint could read more are declined and fingerprinted as usual: a
//! client fingerprint, server fingerprint rules in the config, no exception (the message
//! groups), threads (an exception without a stack may take a thread's), or a key longer than
//! [`MAX_KEY_BYTES`]. The answer is the fingerprint [`crate::fingerprint`] gives, unless two
//! different inputs collide in 128 bits (the same assumption as the fingerprint itself).

use crate::limits::{MAX_EXCEPTIONS, MAX_FRAMES_PER_EXCEPTION};
use crate::{considered_exceptions, considered_frames, fingerprint, fingerprint_and_reads};
use crate::{Fingerprint, GroupingConfig, Scratch};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use tracefold_model::event::Event;

/// Most fingerprints one memo keeps; it is emptied when full (about 40 bytes an entry).
pub const MAX_MEMO_ENTRIES: usize = 4096;

/// Longest key text built (the event's read parts, length-prefixed); a longer one declines
/// the event (it is fingerprinted as usual), so the key buffer stays bounded.
pub const MAX_KEY_BYTES: usize = 64 << 10;

/// What a key's fingerprint was.
#[derive(Debug, Clone, Copy)]
enum Entry {
    /// The same for every event of the key.
    Fingerprint(Fingerprint),
    /// It looked at an exception's value, which the key leaves out: fingerprint afresh.
    ReadsValues,
}

/// The key is a seeded hash already: its low 64 bits are the table's hash.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

/// Fingerprints by key (see the module docs). Use one memo with one [`GroupingConfig`]: a
/// call with another config empties it first.
#[derive(Debug)]
pub struct FingerprintMemo {
    map: HashMap<u128, Entry, BuildHasherDefault<KeyHasher>>,
    /// The config the entries were computed with.
    cfg: Option<GroupingConfig>,
    seed: u64,
    key: Vec<u8>,
    /// Answers from the memo since creation (for tests and benchmarks).
    hits: u64,
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher")
    }
}

impl Default for FingerprintMemo {
    fn default() -> Self {
        Self {
            map: HashMap::default(),
            cfg: None,
            seed: std::collections::hash_map::RandomState::new().hash_one(0x5eed_u32),
            key: Vec::new(),
            hits: 0,
        }
    }
}

impl FingerprintMemo {
    /// The fingerprint of `event`: [`crate::fingerprint`]'s answer, from the memo when an
    /// event of the same key was fingerprinted before.
    pub fn fingerprint(&mut self, event: &Event<'_>, cfg: &GroupingConfig, scratch: &mut Scratch) -> Fingerprint {
        if self.cfg.as_ref() != Some(cfg) {
            self.map.clear();
            self.cfg = Some(cfg.clone());
        }
        let Some(key) = input_key(event, cfg, self.seed, &mut self.key) else {
            return fingerprint(event, cfg, scratch);
        };
        if let Some(Entry::Fingerprint(fp)) = self.map.get(&key) {
            self.hits += 1;
            return *fp;
        }
        let (fp, reads_values) = fingerprint_and_reads(event, cfg, scratch);
        if self.map.len() >= MAX_MEMO_ENTRIES {
            self.map.clear();
        }
        self.map.insert(key, if reads_values { Entry::ReadsValues } else { Entry::Fingerprint(fp) });
        fp
    }

    /// Forgets every entry (a new batch starts).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Fingerprints answered from the memo so far.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Entries held (at most [`MAX_MEMO_ENTRIES`]).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

// The tag and the length are written with one `extend_from_slice` (the same bytes as one after
// the other), and these are inlined: the key is built for every mapped event.
#[inline(always)]
fn put_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => buf.push(0),
        Some(s) => {
            let [a, b, c, d] = (s.len() as u32).to_le_bytes();
            buf.extend_from_slice(&[1, a, b, c, d]);
            buf.extend_from_slice(s.as_bytes());
        }
    }
}

#[inline(always)]
fn put_u32(buf: &mut Vec<u8>, n: Option<u32>) {
    match n {
        None => buf.push(0),
        Some(n) => {
            let [a, b, c, d] = n.to_le_bytes();
            buf.extend_from_slice(&[1, a, b, c, d]);
        }
    }
}

#[inline(always)]
fn put_bool(buf: &mut Vec<u8>, b: Option<bool>) {
    buf.push(match b {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    });
}

/// The event's key (see the module docs), built in `buf`; `None` when the memo declines the
/// event. Its text is unambiguous (every value tagged and length-prefixed, every list
/// counted; a frame's file name and path are either written, each tagged 0 or 1, or, equal to
/// the previous frame's of the same stack, replaced by tag 2), so equal keys mean equal read
/// parts unless the hash collides.
fn input_key(event: &Event<'_>, cfg: &GroupingConfig, seed: u64, buf: &mut Vec<u8>) -> Option<u128> {
    if !event.fingerprint.is_empty()
        || !cfg.fingerprint_rules.is_empty()
        || event.exception.is_empty()
        || !event.threads.is_empty()
    {
        return None;
    }
    buf.clear();
    put_str(buf, event.platform.as_deref());
    let exceptions = considered_exceptions(event);
    debug_assert!(exceptions.len() <= MAX_EXCEPTIONS);
    buf.extend_from_slice(&(exceptions.len() as u32).to_le_bytes());
    for exc in exceptions {
        put_str(buf, exc.ty.as_deref());
        buf.push(u8::from(exc.mechanism.as_ref().and_then(|m| m.synthetic).unwrap_or(false)));
        // Without threads the exception's own stack groups it (`exception_stack`).
        let frames = considered_frames(exc.stacktrace.as_ref());
        debug_assert!(frames.len() <= MAX_FRAMES_PER_EXCEPTION);
        buf.extend_from_slice(&(frames.len() as u32).to_le_bytes());
        let mut prev: Option<&tracefold_model::event::Frame<'_>> = None;
        for f in frames {
            // The frames of one stack mostly share their file: a path equal to the previous
            // frame's is written as a mark, not copied and hashed again.
            let (file, path) = (f.filename.as_deref(), f.abs_path.as_deref());
            put_str(buf, f.function.as_deref());
            put_str(buf, f.module.as_deref());
            match prev {
                Some(p) if p.filename.as_deref() == file && p.abs_path.as_deref() == path => buf.push(2),
                _ => {
                    put_str(buf, file);
                    put_str(buf, path);
                }
            }
            prev = Some(f);
            put_str(buf, f.package.as_deref());
            put_u32(buf, f.lineno);
            put_u32(buf, f.colno);
            put_bool(buf, f.in_app);
            if buf.len() > MAX_KEY_BYTES {
                return None;
            }
        }
    }
    Some(xxhash_rust::xxh3::xxh3_128_with_seed(buf, seed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{FingerprintRule, StackRule};
    use proptest::prelude::*;
    use tracefold_model::parse_event_str;

    /// A frame's JSON from a few values per field, so that random events share keys often.
    fn frame_json(pick: &[u8; 8]) -> String {
        let func = ["null", "\"Wo\"", "\"renderCart\"", "\"\"", "\"main\"", "\"Object.<anonymous>\""];
        let file = [
            "null",
            "\"https://app.example.com/static/js/main.057d9a63.js\"",
            "\"app.min.js\"",
            "\"node:internal/process/task_queues\"",
            "\"src/cart.ts\"",
        ];
        let module = ["null", "\"app.cart\""];
        let num = ["null", "3", "17944", "1"];
        let in_app = ["null", "true", "false"];
        let package = ["null", "\"@sentry/browser\""];
        let p = |i: usize, n: usize| pick[i] as usize % n;
        format!(
            r#"{{"function":{},"filename":{},"abs_path":{},"module":{},"package":{},"lineno":{},"colno":{},"in_app":{}}}"#,
            func[p(0, func.len())],
            file[p(1, file.len())],
            file[p(2, file.len())],
            module[p(3, module.len())],
            package[p(4, package.len())],
            num[p(5, num.len())],
            num[p(6, num.len())],
            in_app[p(7, in_app.len())],
        )
    }

    /// An event's JSON: exceptions with values that vary independently of the rest.
    fn event_json(platform: u8, exceptions: &[(u8, u8, u8, Vec<[u8; 8]>)], extra: &str) -> String {
        let platforms = ["\"javascript\"", "\"node\"", "\"python\"", "null"];
        let types = ["\"TypeError\"", "\"Error\"", "null", "\"\""];
        let values = ["\"coupon 524875 failed\"", "\"coupon 7 failed\"", "null", "\"\"", "\"x\""];
        let excs: Vec<String> = exceptions
            .iter()
            .map(|(t, v, m, frames)| {
                let frames: Vec<String> = frames.iter().map(frame_json).collect();
                let mechanism = ["", r#","mechanism":{"synthetic":true}"#, r#","mechanism":{"synthetic":false}"#];
                format!(
                    r#"{{"type":{},"value":{}{},"stacktrace":{{"frames":[{}]}}}}"#,
                    types[*t as usize % types.len()],
                    values[*v as usize % values.len()],
                    mechanism[*m as usize % mechanism.len()],
                    frames.join(",")
                )
            })
            .collect();
        format!(
            r#"{{"platform":{},"exception":[{}]{extra}}}"#,
            platforms[platform as usize % platforms.len()],
            excs.join(",")
        )
    }

    fn configs() -> Vec<GroupingConfig> {
        #[derive(serde::Deserialize)]
        struct C {
            stack_rules: Vec<StackRule>,
        }
        let c: C = toml::from_str(
            r#"
            [[stack_rules]]
            match = { function = "Wo" }
            action = "+app"
            [[stack_rules]]
            match = { path = "*/main.*.js" }
            action = "-app"
            [[stack_rules]]
            match = { function = "main" }
            action = "-group"
            [[stack_rules]]
            match = { package = "@sentry/*" }
            action = "cut"
            "#,
        )
        .expect("stack rules parse");
        vec![
            GroupingConfig::default(),
            GroupingConfig { max_frames: 1, ..GroupingConfig::default() },
            GroupingConfig { stack_rules: c.stack_rules, ..GroupingConfig::default() },
        ]
    }

    fn exception_strategy() -> impl Strategy<Value = (u8, u8, u8, Vec<[u8; 8]>)> {
        (any::<u8>(), any::<u8>(), any::<u8>(), proptest::collection::vec(any::<[u8; 8]>(), 0..5))
    }

    /// An event as picks of few values per field (see [`event_json`]).
    type Picks = (u8, Vec<(u8, u8, u8, Vec<[u8; 8]>)>);

    /// `base` with one field changed: the platform, an exception's type, value or mechanism,
    /// or (six times in ten) one field of one frame (indices wrap).
    fn mutated(base: &Picks, (what, i, j, field, to): (u8, usize, usize, usize, u8)) -> Picks {
        let mut p = base.clone();
        let n = p.1.len();
        let exc = &mut p.1[i % n];
        // Frame fields most often: they are most of what the key reads.
        match what % 10 {
            0 => p.0 = to,
            1 => exc.0 = to,
            2 => exc.1 = to,
            3 => exc.2 = to,
            _ => {
                let m = exc.3.len();
                if m > 0 {
                    exc.3[j % m][field % 8] = to;
                }
            }
        }
        p
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Events that differ from one base event in one field each, in any order through one
        /// memo (so that keys repeat and nearly repeat): every answer is the fingerprint
        /// computed afresh. A field the key left out that the fingerprint reads would give two
        /// events of one key different fingerprints.
        #[test]
        fn the_memo_answers_as_the_full_computation(
            base in (0u8..4, proptest::collection::vec(exception_strategy(), 1..3)),
            changes in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<usize>(), any::<usize>(), any::<u8>()), 1..24),
            extra in 0usize..8,
        ) {
            let extras = [r#","threads":[{"id":"1","crashed":true,"stacktrace":{"frames":[{"function":"t"}]}}]"#,
                r#","fingerprint":["{{ default }}","x"]"#, r#","message":"m""#];
            let extra = extras.get(extra).copied().unwrap_or("");
            for cfg in configs() {
                let mut memo = FingerprintMemo::default();
                let (mut fresh_scratch, mut memo_scratch) = (Scratch::default(), Scratch::default());
                for picks in std::iter::once(base.clone()).chain(changes.iter().map(|c| mutated(&base, *c))) {
                    let json = event_json(picks.0, &picks.1, extra);
                    let ev = parse_event_str(&json).expect("generated event parses");
                    let fresh = fingerprint(&ev, &cfg, &mut fresh_scratch);
                    prop_assert_eq!(memo.fingerprint(&ev, &cfg, &mut memo_scratch), fresh, "{}", json);
                }
            }
        }
    }

    /// The same frames with other messages: answered from the memo when frames group them,
    /// computed afresh when the message does (no frame contributes).
    #[test]
    fn values_are_read_only_when_no_frame_contributes() {
        let cfg = GroupingConfig::default();
        let (mut memo, mut scratch) = (FingerprintMemo::default(), Scratch::default());
        let with = |value: &str, func: &str| {
            format!(
                r#"{{"platform":"javascript","exception":[{{"type":"Error","value":"{value}","stacktrace":{{"frames":[
                {{"function":"{func}","filename":"src/cart.ts","lineno":3,"colno":9,"in_app":true}}]}}}}]}}"#
            )
        };
        let a_json = with("coupon 1", "renderCart");
        let a = parse_event_str(&a_json).unwrap();
        let b_json = with("order 2", "renderCart");
        let b = parse_event_str(&b_json).unwrap();
        assert_eq!(memo.fingerprint(&a, &cfg, &mut scratch), fingerprint(&a, &cfg, &mut Scratch::default()));
        assert_eq!(memo.fingerprint(&b, &cfg, &mut scratch), fingerprint(&b, &cfg, &mut Scratch::default()));
        assert_eq!(memo.hits(), 1, "the second event's frames group it as the first's");
        // A frame without usable names: the exception's value groups, and values differ.
        let nameless = |value: &str| {
            format!(
                r#"{{"platform":"javascript","exception":[{{"type":"Error","value":"{value}","stacktrace":{{"frames":[
                {{"lineno":3,"colno":9,"in_app":true}}]}}}}]}}"#
            )
        };
        let c_json = nameless("coupon 1");
        let c = parse_event_str(&c_json).unwrap();
        let d_json = nameless("order 2");
        let d = parse_event_str(&d_json).unwrap();
        let fc = memo.fingerprint(&c, &cfg, &mut scratch);
        let fd = memo.fingerprint(&d, &cfg, &mut scratch);
        assert_eq!(fc, fingerprint(&c, &cfg, &mut Scratch::default()));
        assert_eq!(fd, fingerprint(&d, &cfg, &mut Scratch::default()));
        assert_ne!(fc, fd, "the values group these");
        assert_eq!(memo.fingerprint(&c, &cfg, &mut scratch), fc);
        assert_eq!(memo.hits(), 1, "a key whose fingerprint reads values is never answered from the memo");
    }

    /// Client fingerprints, fingerprint rules, threads and messages are declined (computed as
    /// usual, never stored); the bound empties the memo; another config empties it too.
    #[test]
    fn declined_events_and_bounds() {
        let ev = |extra: &str| {
            format!(
                r#"{{"platform":"javascript","exception":[{{"type":"Error","value":"v","stacktrace":{{"frames":[
                {{"function":"f","filename":"a.js","lineno":1,"colno":2}}]}}}}]{extra}}}"#
            )
        };
        let cfg = GroupingConfig::default();
        let (mut memo, mut scratch) = (FingerprintMemo::default(), Scratch::default());
        for extra in [r#","fingerprint":["x"]"#, r#","threads":[{"id":"1"}]"#] {
            let json = ev(extra);
            let e = parse_event_str(&json).unwrap();
            assert_eq!(memo.fingerprint(&e, &cfg, &mut scratch), fingerprint(&e, &cfg, &mut Scratch::default()));
            assert!(memo.is_empty(), "{extra} is declined");
        }
        let m = parse_event_str(r#"{"message":"hello"}"#).unwrap();
        assert_eq!(memo.fingerprint(&m, &cfg, &mut scratch), fingerprint(&m, &cfg, &mut Scratch::default()));
        assert!(memo.is_empty());
        let rule: FingerprintRule = toml::from_str(
            r#"match = { type = "Error" }
            fingerprint = ["errors"]"#,
        )
        .unwrap();
        let ruled = GroupingConfig { fingerprint_rules: vec![rule], ..GroupingConfig::default() };
        let plain = ev("");
        let e = parse_event_str(&plain).unwrap();
        assert_eq!(memo.fingerprint(&e, &ruled, &mut scratch), fingerprint(&e, &ruled, &mut Scratch::default()));
        assert!(memo.is_empty());
        // Another config: what the first stored is not reused.
        assert_eq!(memo.fingerprint(&e, &cfg, &mut scratch), fingerprint(&e, &cfg, &mut Scratch::default()));
        assert_eq!(memo.len(), 1);
        let other = GroupingConfig { max_frames: 0, ..GroupingConfig::default() };
        assert_eq!(memo.fingerprint(&e, &other, &mut scratch), fingerprint(&e, &other, &mut Scratch::default()));
        assert_eq!((memo.len(), memo.hits()), (1, 0));
        // The bound.
        for i in 0..MAX_MEMO_ENTRIES + 10 {
            let json = format!(r#"{{"exception":[{{"type":"E{i}","stacktrace":{{"frames":[{{"function":"f"}}]}}}}]}}"#);
            let e = parse_event_str(&json).unwrap();
            memo.fingerprint(&e, &other, &mut scratch);
            assert!(memo.len() <= MAX_MEMO_ENTRIES);
        }
        // A key longer than the bound is declined.
        let long = "x".repeat(MAX_KEY_BYTES);
        let json = format!(r#"{{"exception":[{{"type":"E","stacktrace":{{"frames":[{{"function":"{long}"}}]}}}}]}}"#);
        let e = parse_event_str(&json).unwrap();
        memo.clear();
        assert_eq!(memo.fingerprint(&e, &cfg, &mut scratch), fingerprint(&e, &cfg, &mut Scratch::default()));
        assert!(memo.is_empty());
    }
}
