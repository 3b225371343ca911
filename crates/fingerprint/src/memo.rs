//! A bounded memo of fingerprints, keyed by what fingerprinting reads of an event. The
//! grouper fingerprints every event whose frames source maps map a second time, as received
//! (the secondary fingerprint, docs/sourcemaps.md "Late maps"); the same crash sites repeat,
//! so within a batch most of those events read exactly what an earlier one read.
//!
//! The key is everything [`crate::fingerprint`] can read of an event it accepts: the platform,
//! and per considered exception its type, whether its mechanism says the type is synthetic,
//! and per considered frame of its stack the function, module, file name, absolute path,
//! package, column and in-app flag (without stack rules, only the file the frame cache takes,
//! no package, and the column only in JavaScript: see `walk`). A frame's line is never read. Exception values are left out, so that events that
//! differ in their message alone share a key; the memo records whether the fingerprint looked
//! at a value (no frame of some exception contributed), and such keys are fingerprinted
//! afresh every time. Events whose fingerprint could read more are declined and fingerprinted
//! as usual: a client fingerprint, server fingerprint rules in the config, no exception (the
//! message groups), threads (an exception without a stack may take a thread's), or a key
//! longer than [`MAX_KEY_BYTES`].
//!
//! Exact: each entry keeps its key's text (the read parts, tagged and length-prefixed), and a
//! hit is an event whose key text equals it, byte for byte. The table is found by a seeded
//! word-at-a-time hash of the text (cheaper than xxh3 for these 100 to 300 bytes; it need not
//! resist crafted collisions): a collision, chance or crafted, costs a comparison and at worst
//! a fingerprint computed afresh, as without the memo, never a wrong answer. At most
//! [`MAX_PER_HASH`] entries share a hash.

use crate::limits::{MAX_EXCEPTIONS, MAX_FRAMES_PER_EXCEPTION};
use crate::{considered_exceptions, considered_frames, fingerprint, fingerprint_and_reads};
use crate::{Fingerprint, GroupingConfig, Scratch};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use tracefold_model::event::Event;

/// Most fingerprints one memo keeps; it is emptied when full.
pub const MAX_MEMO_ENTRIES: usize = 4096;

/// Most bytes of key text the entries of one memo keep together; it is emptied when more would
/// be kept (the usual key of a five-frame minified stack is about 150 bytes).
pub const MAX_MEMO_KEY_BYTES: usize = 4 << 20;

/// Most entries under one hash (see the module docs); a further one replaces the oldest.
pub const MAX_PER_HASH: usize = 4;

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

/// One memoized key: its text (what [`walk`] writes for the event) and its fingerprint.
#[derive(Debug)]
struct Stored {
    key: Box<[u8]>,
    entry: Entry,
}

/// The table's keys are seeded hashes already: used as they are.
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
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Fingerprints by key (see the module docs). Use one memo with one [`GroupingConfig`]: a
/// call with another config empties it first.
#[derive(Debug)]
pub struct FingerprintMemo {
    map: HashMap<u64, Vec<Stored>, BuildHasherDefault<KeyHasher>>,
    /// Entries held, and their key bytes.
    entries: usize,
    key_bytes: usize,
    /// The config the entries were computed with.
    cfg: Option<GroupingConfig>,
    seed: u64,
    key: Vec<u8>,
    /// Answers from the memo since creation (for tests and benchmarks).
    hits: u64,
    /// Every key under one hash (tests of the comparison only).
    #[cfg(test)]
    one_hash: bool,
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
            entries: 0,
            key_bytes: 0,
            cfg: None,
            seed: std::collections::hash_map::RandomState::new().hash_one(0x5eed_u32),
            key: Vec::new(),
            hits: 0,
            #[cfg(test)]
            one_hash: false,
        }
    }
}

impl FingerprintMemo {
    /// The fingerprint of `event`: [`crate::fingerprint`]'s answer, from the memo when an
    /// event of the same key was fingerprinted before.
    pub fn fingerprint(&mut self, event: &Event<'_>, cfg: &GroupingConfig, scratch: &mut Scratch) -> Fingerprint {
        if self.cfg.as_ref() != Some(cfg) {
            self.clear();
            self.cfg = Some(cfg.clone());
        }
        if declined(event, cfg) {
            return fingerprint(event, cfg, scratch);
        }
        self.key.clear();
        if !walk(event, !cfg.stack_rules.is_empty(), &mut Text(&mut self.key)) {
            return fingerprint(event, cfg, scratch);
        }
        let h = text_hash(&self.key, self.seed);
        #[cfg(test)]
        let h = if self.one_hash { 0 } else { h };
        if let Some(stored) = self.map.get(&h).and_then(|b| b.iter().find(|s| *s.key == *self.key)) {
            if let Entry::Fingerprint(fp) = stored.entry {
                self.hits += 1;
                return fp;
            }
            return fingerprint(event, cfg, scratch);
        }
        let (fp, reads_values) = fingerprint_and_reads(event, cfg, scratch);
        let key: Box<[u8]> = self.key.as_slice().into();
        if self.entries >= MAX_MEMO_ENTRIES || self.key_bytes + key.len() > MAX_MEMO_KEY_BYTES {
            self.clear();
        }
        let bucket = self.map.entry(h).or_default();
        if bucket.len() >= MAX_PER_HASH {
            let old = bucket.remove(0);
            self.entries -= 1;
            self.key_bytes -= old.key.len();
        }
        self.entries += 1;
        self.key_bytes += key.len();
        bucket.push(Stored { key, entry: if reads_values { Entry::ReadsValues } else { Entry::Fingerprint(fp) } });
        fp
    }

    /// Forgets every entry (a new batch starts).
    pub fn clear(&mut self) {
        self.map.clear();
        self.entries = 0;
        self.key_bytes = 0;
    }

    /// Fingerprints answered from the memo so far.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Entries held (at most [`MAX_MEMO_ENTRIES`]).
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

/// The table's hash of a key text: eight bytes at a time, multiplied and rotated into the
/// seeded state, the tail and the length last, the bits spread at the end.
fn text_hash(text: &[u8], seed: u64) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = seed;
    let mut words = text.chunks_exact(8);
    for w in &mut words {
        let w: [u8; 8] = w.try_into().unwrap_or_default();
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(26);
    }
    let tail = words.remainder().iter().fold(0u64, |t, &b| t << 8 | u64::from(b));
    h = (h ^ tail).wrapping_mul(K).rotate_left(26);
    h = (h ^ text.len() as u64).wrapping_mul(K);
    h ^= h >> 31;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 29)
}

/// Whether the memo declines the event (see the module docs).
fn declined(event: &Event<'_>, cfg: &GroupingConfig) -> bool {
    !event.fingerprint.is_empty()
        || !cfg.fingerprint_rules.is_empty()
        || event.exception.is_empty()
        || !event.threads.is_empty()
}

/// The event's key (see the module docs), part by part into `parts`; false when it grows past
/// [`MAX_KEY_BYTES`]. The text is unambiguous (every value tagged and length-prefixed, every list counted;
/// a frame's file name and path are either written, each tagged 0 or 1, or, equal to the
/// previous frame's of the same stack, replaced by the byte 2), so equal texts mean equal read
/// parts. Call it only for events the memo does not decline.
///
/// Without stack rules (`rules` false) a frame's parts are only those the fingerprint reads
/// then: the file as the frame cache takes it (the file name, else the path), no package
/// (only stack rules match it), the column only in JavaScript (only a minified frame's
/// column contributes, and only JavaScript frames are minified; the platform is the text's
/// first part). A frame's line is never written: nothing the fingerprint computes reads it.
/// The memo is emptied when the config changes, so one memo's texts are all of one form.
#[inline(always)]
fn walk(event: &Event<'_>, rules: bool, parts: &mut Text<'_>) -> bool {
    parts.str(event.platform.as_deref());
    let js = matches!(event.platform.as_deref(), Some("javascript" | "node"));
    let exceptions = considered_exceptions(event);
    debug_assert!(exceptions.len() <= MAX_EXCEPTIONS);
    parts.count(exceptions.len() as u32);
    for exc in exceptions {
        parts.str(exc.ty.as_deref());
        parts.byte(u8::from(exc.mechanism.as_ref().and_then(|m| m.synthetic).unwrap_or(false)));
        // Without threads the exception's own stack groups it (`exception_stack`).
        let frames = considered_frames(exc.stacktrace.as_ref());
        debug_assert!(frames.len() <= MAX_FRAMES_PER_EXCEPTION);
        parts.count(frames.len() as u32);
        let mut prev: Option<&tracefold_model::event::Frame<'_>> = None;
        for f in frames {
            parts.str(f.function.as_deref());
            parts.str(f.module.as_deref());
            // The frames of one stack mostly share their file: a path equal to the previous
            // frame's is a mark, not copied and hashed again.
            if rules {
                let (file, path) = (f.filename.as_deref(), f.abs_path.as_deref());
                match prev {
                    Some(p) if p.filename.as_deref() == file && p.abs_path.as_deref() == path => parts.byte(2),
                    _ => {
                        parts.str(file);
                        parts.str(path);
                    }
                }
                parts.str(f.package.as_deref());
            } else {
                let file = f.filename.as_deref().or(f.abs_path.as_deref());
                match prev {
                    Some(p) if p.filename.as_deref().or(p.abs_path.as_deref()) == file => parts.byte(2),
                    _ => parts.str(file),
                }
            }
            prev = Some(f);
            if rules || js {
                parts.num(f.colno);
            }
            parts.flag(f.in_app);
            if !parts.ok() {
                return false;
            }
        }
    }
    parts.ok()
}

/// The key's text, written into a buffer part by part: values tagged and length-prefixed,
/// flags as a byte, lists by their count.
struct Text<'b>(&'b mut Vec<u8>);

impl Text<'_> {
    #[inline(always)]
    fn str(&mut self, s: Option<&str>) {
        match s {
            None => self.0.push(0),
            Some(s) => {
                let [a, b, c, d] = (s.len() as u32).to_le_bytes();
                self.0.extend_from_slice(&[1, a, b, c, d]);
                self.0.extend_from_slice(s.as_bytes());
            }
        }
    }
    #[inline(always)]
    fn num(&mut self, n: Option<u32>) {
        match n {
            None => self.0.push(0),
            Some(n) => {
                let [a, b, c, d] = n.to_le_bytes();
                self.0.extend_from_slice(&[1, a, b, c, d]);
            }
        }
    }
    #[inline(always)]
    fn flag(&mut self, b: Option<bool>) {
        self.0.push(flag_byte(b));
    }
    /// A byte of the text's structure (a flag of two values, or the mark of a path equal to
    /// the previous frame's).
    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.0.push(b);
    }
    /// A list's length.
    #[inline(always)]
    fn count(&mut self, n: u32) {
        self.0.extend_from_slice(&n.to_le_bytes());
    }
    /// Whether to go on (false: a text past [`MAX_KEY_BYTES`]).
    #[inline(always)]
    fn ok(&self) -> bool {
        self.0.len() <= MAX_KEY_BYTES
    }
}

#[inline(always)]
fn flag_byte(b: Option<bool>) -> u8 {
    match b {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{FingerprintRule, StackRule};
    use proptest::prelude::*;
    use tracefold_model::parse_event_str;

    /// A frame's JSON from a few values per field, so that random events share keys often.
    fn frame_json(pick: &[u8; 8]) -> String {
        // Values of one length ("main", "niam"; "app.min.js", "app.max.js") differ in their text only.
        let func = ["null", "\"Wo\"", "\"renderCart\"", "\"\"", "\"main\"", "\"Object.<anonymous>\"", "\"niam\""];
        let file = [
            "null",
            "\"https://app.example.com/static/js/main.057d9a63.js\"",
            "\"app.min.js\"",
            "\"node:internal/process/task_queues\"",
            "\"app.max.js\"",
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
            // Also with every key under one hash: only the comparison tells the keys apart.
            for (cfg, one_hash) in configs().into_iter().flat_map(|c| [(c.clone(), false), (c, true)]) {
                let mut memo = FingerprintMemo { one_hash, ..FingerprintMemo::default() };
                let mut memo_scratch = Scratch::default();
                for picks in std::iter::once(base.clone()).chain(changes.iter().map(|c| mutated(&base, *c))) {
                    let json = event_json(picks.0, &picks.1, extra);
                    let ev = parse_event_str(&json).expect("generated event parses");
                    // A fresh scratch: no frame or stack of an earlier event remembered.
                    let fresh = fingerprint(&ev, &cfg, &mut Scratch::default());
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

    /// Keys under one hash: each event is answered by the entry of its own key (a hit), never by
    /// another one's; at most [`MAX_PER_HASH`] entries share a hash, the oldest replaced.
    #[test]
    fn a_hash_shared_by_keys_never_answers_for_another() {
        let cfg = GroupingConfig::default();
        let (mut memo, mut scratch) =
            (FingerprintMemo { one_hash: true, ..FingerprintMemo::default() }, Scratch::default());
        let ev = |func: &str, line: u32| {
            format!(
                r#"{{"platform":"javascript","exception":[{{"type":"Error","value":"v","stacktrace":{{"frames":[
                {{"function":"{func}","filename":"src/cart.ts","lineno":{line},"colno":9,"in_app":true}}]}}}}]}}"#
            )
        };
        // Names of one length on one line: only the names' text tells these keys apart.
        let jsons: Vec<String> = (0..MAX_PER_HASH as u32 + 2).map(|i| ev(&format!("f{i}"), 3)).collect();
        let events: Vec<_> = jsons.iter().map(|j| parse_event_str(j).unwrap()).collect();
        let fresh: Vec<Fingerprint> = events.iter().map(|e| fingerprint(e, &cfg, &mut Scratch::default())).collect();
        for (e, f) in events.iter().zip(&fresh).take(MAX_PER_HASH) {
            assert_eq!(memo.fingerprint(e, &cfg, &mut scratch), *f);
        }
        assert_eq!((memo.len(), memo.hits()), (MAX_PER_HASH, 0), "one entry per key, none answered for another");
        for (e, f) in events.iter().zip(&fresh).take(MAX_PER_HASH) {
            assert_eq!(memo.fingerprint(e, &cfg, &mut scratch), *f);
        }
        assert_eq!(memo.hits(), MAX_PER_HASH as u64, "each key's own entry answers it");
        // More keys: the oldest entries make room, the bound holds, the answers stay right.
        for (e, f) in events.iter().zip(&fresh).skip(MAX_PER_HASH) {
            assert_eq!(memo.fingerprint(e, &cfg, &mut scratch), *f);
            assert_eq!(memo.len(), MAX_PER_HASH);
        }
        assert_eq!(memo.fingerprint(&events[0], &cfg, &mut scratch), fresh[0]);
        assert_eq!(memo.hits(), MAX_PER_HASH as u64, "the oldest was replaced");
        // An event whose stack begins with a stored event's stack (one more frame) gets its own
        // answer, not the stored one. (No key can be the start of another's: each part is
        // written with its length or count first, so the frame count already differs here.)
        let two_json = r#"{"platform":"javascript","exception":[{"type":"Error","stacktrace":{"frames":[
            {"function":"f0","filename":"src/cart.ts","lineno":3,"colno":9,"in_app":true},
            {"function":"f0","filename":"src/cart.ts","lineno":3,"colno":9,"in_app":true}]}}]}"#;
        let two = parse_event_str(two_json).unwrap();
        assert_eq!(memo.fingerprint(&two, &cfg, &mut scratch), fingerprint(&two, &cfg, &mut Scratch::default()));
    }
}
