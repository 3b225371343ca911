//! Partial aggregates: what the grouper emits per (project, issue, minute, release, environment)
//! and batch, and how partial aggregates merge.

use crate::breakdown::Breakdown;
use crate::time::Millis;
use serde::{Deserialize, Serialize};

/// Wire format version of [`AggregateRecord`]. Fields added later carry `#[serde(default)]`
/// and readers ignore fields they do not know, so an addition keeps the version:
/// `breakdown` (absent in records written before it) did.
pub const AGGREGATE_FORMAT_VERSION: u8 = 1;

/// Default bound on the user hashes one aggregate carries exactly (past it, a KMV sketch).
pub const DEFAULT_MAX_USERS: usize = 4096;

/// Most issue ids one aggregate names in [`AggregateRecord::merged_from`]; further ones are
/// left out (counted by the grouper, see docs/sourcemaps.md "Late maps").
pub const MAX_MERGED_FROM: usize = 8;

/// Where an aggregate came from: one grouper batch, a range of offsets of one source partition.
///
/// A batch is deterministic: rebuilding the same range yields the same records with the same
/// `index`, so the writer can recognise re-emitted records by `(partition, first_offset, index)`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BatchRef {
    /// Which incarnation of the source log: the Kafka cluster id, or the grouper's configured
    /// epoch. Offsets restart when a topic is recreated; the epoch keeps identities apart.
    #[serde(default)]
    pub epoch: String,
    /// Source (raw events) topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// First source offset of the batch.
    pub first_offset: i64,
    /// Last source offset of the batch (inclusive).
    pub last_offset: i64,
    /// Position of this record among the batch's records (0-based, in emission order).
    pub index: u32,
    /// Number of records the batch emitted.
    pub count: u32,
}

/// A bounded set of distinct user hashes: exact up to `max` members; past that it keeps the
/// `max` smallest hashes (a k-minimum-values sketch), which merges exactly and estimates the
/// distinct count within about `1/sqrt(max)`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserSet {
    /// Sorted, distinct hashes (the smallest ones when saturated).
    pub hashes: Vec<u64>,
    /// True when members were dropped to keep the bound.
    pub saturated: bool,
}

impl UserSet {
    /// Adds one user hash, keeping at most `max` hashes.
    pub fn insert(&mut self, h: u64, max: usize) {
        match self.hashes.binary_search(&h) {
            Ok(_) => {}
            Err(pos) => {
                if self.hashes.len() < max {
                    self.hashes.insert(pos, h);
                } else if pos < self.hashes.len() {
                    self.hashes.pop();
                    self.hashes.insert(pos, h);
                    self.saturated = true;
                } else {
                    self.saturated = true;
                }
            }
        }
    }

    /// Merges another set into this one, keeping at most `max` hashes.
    pub fn merge(&mut self, other: &UserSet, max: usize) {
        let mut out = Vec::with_capacity((self.hashes.len() + other.hashes.len()).min(max));
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&self.hashes, &other.hashes);
        while out.len() < max && (i < a.len() || j < b.len()) {
            let next = match (a.get(i), b.get(j)) {
                (Some(&x), Some(&y)) if x == y => {
                    i += 1;
                    j += 1;
                    x
                }
                (Some(&x), Some(&y)) if x < y => {
                    i += 1;
                    x
                }
                (Some(_), Some(&y)) => {
                    j += 1;
                    y
                }
                (Some(&x), None) => {
                    i += 1;
                    x
                }
                (None, Some(&y)) => {
                    j += 1;
                    y
                }
                (None, None) => unreachable!(),
            };
            out.push(next);
        }
        self.saturated |= other.saturated || i < a.len() || j < b.len();
        self.hashes = out;
    }

    /// The number of distinct users: exact when not saturated, else the KMV estimate.
    pub fn estimate(&self) -> u64 {
        if !self.saturated {
            return self.hashes.len() as u64;
        }
        let k = self.hashes.len();
        match self.hashes.last() {
            Some(&kth) if k > 1 => {
                let frac = (kth as f64 + 1.0) / (u64::MAX as f64 + 1.0);
                ((k - 1) as f64 / frac).round() as u64
            }
            _ => k as u64,
        }
    }
}

/// Stable 64-bit hash of a user identity (`id`, else `email`, else `username`, else
/// `ip_address`), tagged by which field it came from. `None` for anonymous events.
pub fn user_hash(user: Option<&crate::event::User<'_>>) -> Option<u64> {
    let u = user?;
    let (tag, v): (&[u8], &str) = if let Some(id) = u.id.as_deref().filter(|s| !s.is_empty()) {
        (b"id:", id)
    } else if let Some(e) = u.email.as_deref().filter(|s| !s.is_empty()) {
        (b"email:", e)
    } else if let Some(n) = u.username.as_deref().filter(|s| !s.is_empty()) {
        (b"username:", n)
    } else if let Some(ip) = u.ip_address.as_deref().filter(|s| !s.is_empty()) {
        (b"ip:", ip)
    } else {
        return None;
    };
    // xxh3-64 of `tag | value`: in one shot from a stack buffer when it fits, streamed
    // otherwise (the same value).
    let mut buf = [0u8; 128];
    if tag.len() + v.len() <= buf.len() {
        buf[..tag.len()].copy_from_slice(tag);
        buf[tag.len()..tag.len() + v.len()].copy_from_slice(v.as_bytes());
        return Some(xxhash_rust::xxh3::xxh3_64(&buf[..tag.len() + v.len()]));
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(tag);
    h.update(v.as_bytes());
    Some(h.digest())
}

/// One partial aggregate on the aggregates topic (JSON), keyed by `project/issue_id`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AggregateRecord {
    /// Wire format version, [`AGGREGATE_FORMAT_VERSION`].
    pub v: u8,
    /// The grouper batch this record belongs to.
    pub batch: BatchRef,
    /// Project slug.
    pub project: String,
    /// Issue id: the fingerprint as 32 lower-case hex digits.
    pub issue_id: String,
    /// Start of the minute bucket, Unix seconds.
    pub minute: i64,
    /// Release, empty when the events had none.
    pub release: String,
    /// Environment, empty when the events had none.
    pub environment: String,
    /// Number of events.
    pub count: u64,
    /// Distinct affected users.
    pub users: UserSet,
    /// Earliest event time, ms.
    pub first_seen_ms: Millis,
    /// Latest event time, ms.
    pub last_seen_ms: Millis,
    /// Issue title (exception type and message, parameterized).
    pub title: String,
    /// Where it happened: the top in-app frame's module/file and function.
    pub culprit: String,
    /// Exception type of the raised exception (empty for message events).
    pub exc_type: String,
    /// Level of the sample event.
    pub level: String,
    /// Platform of the sample event.
    pub platform: String,
    /// Grouping config version that produced `issue_id`.
    pub grouping_version: String,
    /// The first event of the bucket, verbatim JSON; only in the first bucket of each issue
    /// within a batch (empty in the others).
    pub sample: String,
    /// Events by browser, OS and URL, bounded (see [`crate::breakdown`]); empty in records
    /// written before it existed.
    #[serde(default)]
    pub breakdown: Breakdown,
    /// Issues merged into this one (docs/sourcemaps.md "Late maps"): the issue ids its events
    /// had as received, when source maps mapped their frames into this issue and the two
    /// differ. Sorted, distinct, at most [`MAX_MERGED_FROM`]. Absent (empty) in records
    /// without mapped frames, and in records written before it existed: the field is left out
    /// when empty, so such records are the bytes they were.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<String>,
}

impl AggregateRecord {
    /// The Kafka key: `project/issue_id`, so that all partial counts of an issue meet.
    pub fn key(&self) -> String {
        format!("{}/{}", self.project, self.issue_id)
    }

    /// Folds another record of the same (project, issue, minute, release, environment) into
    /// this one: counts add, users union, first/last seen widen, breakdown counts add (within
    /// their bound), merged issues union (within [`MAX_MERGED_FROM`]); the earlier sample
    /// stays. Returns the merged issue ids left out for the bound.
    pub fn merge(&mut self, other: &AggregateRecord, max_users: usize) -> usize {
        debug_assert_eq!(
            (&self.project, &self.issue_id, self.minute, &self.release, &self.environment),
            (&other.project, &other.issue_id, other.minute, &other.release, &other.environment)
        );
        self.count += other.count;
        self.users.merge(&other.users, max_users);
        if other.first_seen_ms < self.first_seen_ms {
            self.first_seen_ms = other.first_seen_ms;
            self.sample.clone_from(&other.sample);
        }
        self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
        self.breakdown.merge(&other.breakdown);
        let mut left_out = 0;
        for id in &other.merged_from {
            left_out += usize::from(!self.add_merged_from(id));
        }
        left_out
    }

    /// Adds `issue_id` to [`Self::merged_from`] (kept sorted and distinct); false when it is
    /// not there and the list is full ([`MAX_MERGED_FROM`]): it is left out, for the caller to
    /// count. The result does not depend on the order ids are added in when none is left out.
    pub fn add_merged_from(&mut self, issue_id: &str) -> bool {
        match self.merged_from.binary_search_by(|m| m.as_str().cmp(issue_id)) {
            Ok(_) => true,
            Err(_) if self.merged_from.len() >= MAX_MERGED_FROM => false,
            Err(at) => {
                self.merged_from.insert(at, issue_id.to_owned());
                true
            }
        }
    }
}

/// Decodes aggregate records off the topic (the writer's hot path), with simd-json: the
/// bytes copied into a buffer it keeps, a tape built with scratch buffers it keeps, and the
/// record deserialized from the tape. It answers exactly as `serde_json::from_slice` (the
/// format's definition, and what the writer used before): the fast path runs only on bytes
/// that both parsers read alike, and when it fails for any reason `serde_json::from_slice`
/// decides, so that a malformed record gets the same error (and goes to the same DLQ) as
/// before. Bytes it leaves to serde_json: a raw control byte anywhere (serde_json refuses one
/// inside a string, simd-json takes it), a `\u` escape (lone surrogates), `-0` anywhere
/// (serde_json reads a float, simd-json an integer), a document that is not an object or
/// nests deeper than [`crate::json::MAX_DEPTH`]. The grouper writes these only for strings
/// with control characters or `-0` in them. Tests and the `aggregate_decoder` fuzz target hold the two paths equal.
///
/// Linear in the bytes; holds the largest record's bytes and simd-json's scratch buffers
/// for it between calls.
#[derive(Default)]
pub struct AggregateDecoder {
    bytes: Vec<u8>,
    buffers: simd_json::Buffers,
}

impl std::fmt::Debug for AggregateDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateDecoder").finish_non_exhaustive()
    }
}

impl AggregateDecoder {
    /// The record in `payload`, or serde_json's error for it.
    ///
    /// # Errors
    /// When `payload` is not an aggregate record: `serde_json::from_slice`'s error.
    pub fn decode(&mut self, payload: &[u8]) -> Result<AggregateRecord, serde_json::Error> {
        match self.fast(payload) {
            Some(r) => Ok(r),
            None => serde_json::from_slice(payload),
        }
    }

    /// The simd-json path: `None` when it does not apply or fails (serde_json decides then).
    pub fn fast(&mut self, payload: &[u8]) -> Option<AggregateRecord> {
        let first = payload.iter().position(|b| !b.is_ascii_whitespace())?;
        if payload[first] != b'{' || payload.iter().any(|&b| b < 0x20 && !matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
            return None;
        }
        // `-0`: serde_json reads it as the float -0.0 (refused for an integer), simd-json as 0.
        if memchr::memmem::find(payload, b"\\u").is_some() || memchr::memmem::find(payload, b"-0").is_some() {
            return None;
        }
        self.bytes.clear();
        self.bytes.extend_from_slice(payload);
        // serde consumes the tape: a new one per record (one allocation).
        let mut tape = simd_json::Tape(Vec::new());
        simd_json::fill_tape(&mut self.bytes, &mut self.buffers, &mut tape).ok()?;
        crate::json::tape_depth(&tape.0, crate::json::MAX_DEPTH).ok()?;
        tape.deserialize::<AggregateRecord>().ok()
    }
}

/// Start of the minute containing `ms`, as Unix seconds.
pub fn minute_of(ms: Millis) -> i64 {
    ms.div_euclid(60_000) * 60
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn user_hashes_are_the_streamed_xxh3_of_tag_and_value() {
        let long = "ü".repeat(100);
        for (id, want_tag) in [("u1", "id:"), ("", "email:"), (long.as_str(), "id:")] {
            let user =
                crate::event::User { id: Some(id.into()), email: Some("a@example.com".into()), ..Default::default() };
            let v = if id.is_empty() { "a@example.com" } else { id };
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(want_tag.as_bytes());
            h.update(v.as_bytes());
            assert_eq!(user_hash(Some(&user)), Some(h.digest()), "{id}");
        }
    }

    proptest! {
        #[test]
        fn user_set_is_exact_below_the_bound(hs in proptest::collection::vec(any::<u64>(), 0..200)) {
            let mut s = UserSet::default();
            for h in &hs { s.insert(*h, 256); }
            let distinct: BTreeSet<u64> = hs.iter().copied().collect();
            prop_assert_eq!(s.estimate(), distinct.len() as u64);
            prop_assert_eq!(s.hashes, distinct.into_iter().collect::<Vec<_>>());
            prop_assert!(!s.saturated);
        }

        #[test]
        fn merge_equals_inserting_everything(a in proptest::collection::vec(any::<u64>(), 0..100),
                                             b in proptest::collection::vec(any::<u64>(), 0..100),
                                             max in 1usize..64) {
            let (mut sa, mut sb, mut all) = (UserSet::default(), UserSet::default(), UserSet::default());
            for h in &a { sa.insert(*h, max); all.insert(*h, max); }
            for h in &b { sb.insert(*h, max); all.insert(*h, max); }
            sa.merge(&sb, max);
            prop_assert_eq!(&sa.hashes, &all.hashes);
            prop_assert_eq!(sa.saturated, all.saturated);
        }
    }

    #[test]
    fn sketch_estimate_is_close_past_the_bound() {
        let mut s = UserSet::default();
        let n = 100_000u64;
        for i in 0..n {
            s.insert(xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()), DEFAULT_MAX_USERS);
        }
        assert!(s.saturated);
        let est = s.estimate() as f64;
        let err = (est - n as f64).abs() / n as f64;
        assert!(err < 0.05, "estimate {est} for {n}, error {err}");
    }

    #[test]
    fn merge_adds_breakdowns_and_old_records_decode() {
        use crate::breakdown::{Key, OTHER};
        let mut a = AggregateRecord { count: 2, ..Default::default() };
        a.breakdown.add(Key::Browser, "Chrome 120", 2);
        let mut b = AggregateRecord { count: 11, ..Default::default() };
        b.breakdown.add(Key::Browser, "Chrome 120", 1);
        for i in 0..10 {
            b.breakdown.add(Key::Url, &format!("/ü/{i}"), 1);
        }
        b.breakdown.add(Key::Url, "/x", 1);
        a.merge(&b, 16);
        assert_eq!(a.count, 13);
        assert_eq!(a.breakdown.browser[0].count, 3);
        assert_eq!(a.breakdown.url.len(), 11);
        assert_eq!((a.breakdown.url[10].value.as_str(), a.breakdown.url[10].count), (OTHER, 1));
        // A record from before breakdowns (no such field) decodes with an empty one.
        let mut json = serde_json::to_value(AggregateRecord::default()).unwrap();
        json.as_object_mut().unwrap().remove("breakdown");
        let old: AggregateRecord = serde_json::from_value(json).unwrap();
        assert!(old.breakdown.is_empty());
        assert!(old.merged_from.is_empty());
    }

    #[test]
    fn merged_from_is_sorted_distinct_bounded_and_absent_when_empty() {
        let plain = AggregateRecord::default();
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("merged_from"), "{json}");
        let mut a = AggregateRecord::default();
        for id in ["c", "a", "c", "b"] {
            assert!(a.add_merged_from(id));
        }
        assert_eq!(a.merged_from, ["a", "b", "c"]);
        let json = serde_json::to_string(&a).unwrap();
        assert!(json.contains(r#""merged_from":["a","b","c"]"#), "{json}");
        assert_eq!(serde_json::from_str::<AggregateRecord>(&json).unwrap(), a);
        let mut b = AggregateRecord::default();
        for i in 0..MAX_MERGED_FROM {
            assert!(b.add_merged_from(&format!("z{i}")));
        }
        assert!(b.add_merged_from("z0"), "already there");
        assert!(!b.add_merged_from("y"), "full: left out");
        assert_eq!(b.merged_from.len(), MAX_MERGED_FROM);
        // Merging: a union within the bound, what does not fit counted.
        assert_eq!(a.merge(&b, 16), 3);
        assert_eq!(a.merged_from.len(), MAX_MERGED_FROM);
        assert_eq!(a.merged_from[..3], ["a", "b", "c"]);
    }

    /// A record with any Unicode in its strings (control characters and quotes included).
    fn any_record() -> impl Strategy<Value = AggregateRecord> {
        let text = || proptest::string::string_regex("(?s).{0,12}").unwrap();
        (
            (text(), text(), any::<i32>(), any::<i64>(), any::<i64>(), any::<u32>(), any::<u32>()),
            (text(), text(), any::<i64>(), text(), text(), any::<u64>()),
            (proptest::collection::vec(any::<u64>(), 0..5), any::<bool>(), any::<i64>(), any::<i64>()),
            (text(), text(), text(), text(), text(), text(), text()),
            (proptest::collection::vec((text(), 0u64..9), 0..3), proptest::collection::vec(text(), 0..3), any::<u8>()),
        )
            .prop_map(|(b, k, u, t, x)| {
                let mut r = AggregateRecord {
                    v: x.2,
                    batch: BatchRef {
                        epoch: b.0,
                        topic: b.1,
                        partition: b.2,
                        first_offset: b.3,
                        last_offset: b.4,
                        index: b.5,
                        count: b.6,
                    },
                    project: k.0,
                    issue_id: k.1,
                    minute: k.2,
                    release: k.3,
                    environment: k.4,
                    count: k.5,
                    users: UserSet { hashes: u.0, saturated: u.1 },
                    first_seen_ms: u.2,
                    last_seen_ms: u.3,
                    title: t.0,
                    culprit: t.1,
                    exc_type: t.2,
                    level: t.3,
                    platform: t.4,
                    grouping_version: t.5,
                    sample: t.6,
                    ..Default::default()
                };
                for (v, n) in x.0 {
                    r.breakdown.url.push(crate::breakdown::ValueCount { value: v, count: n });
                }
                r.merged_from = x.1;
                r
            })
    }

    /// What `serde_json::from_slice` answers, as a comparable value.
    fn serde_answer(b: &[u8]) -> Result<AggregateRecord, String> {
        serde_json::from_slice::<AggregateRecord>(b).map_err(|e| e.to_string())
    }

    proptest! {
        #[test]
        fn the_decoder_reads_every_record_as_serde_json(r in any_record()) {
            let json = serde_json::to_vec(&r).unwrap();
            let mut d = AggregateDecoder::default();
            prop_assert_eq!(d.decode(&json).unwrap(), r.clone());
            // Without escaped control characters the fast path reads it itself.
            if !json.windows(2).any(|w| w == b"\\u") {
                prop_assert_eq!(d.fast(&json), Some(r));
            }
        }

        #[test]
        fn the_fast_path_answers_only_where_serde_json_agrees(
            r in any_record(),
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), 0u8..3,
                proptest::sample::select(b"{}[]\":,0123456789-+.eE \\ntrufalsx\x01\xc3\xbc".to_vec())), 1..4),
        ) {
            let mut json = serde_json::to_vec(&r).unwrap();
            for (at, op, byte) in edits {
                let i = at.index(json.len() + 1);
                match op {
                    0 => json.insert(i, byte),
                    1 if i < json.len() => { json.remove(i); }
                    _ if i < json.len() => json[i] = byte,
                    _ => {}
                }
            }
            let mut d = AggregateDecoder::default();
            if let Some(fast) = d.fast(&json) {
                prop_assert_eq!(Ok(fast), serde_answer(&json), "{}", String::from_utf8_lossy(&json));
            }
            prop_assert_eq!(d.decode(&json).map_err(|e| e.to_string()), serde_answer(&json));
        }
    }

    #[test]
    fn the_decoder_answers_as_serde_json_on_edge_cases() {
        let good =
            serde_json::to_string(&AggregateRecord { title: "ü \"q\" \\ x".into(), ..Default::default() }).unwrap();
        let body = &good[1..good.len() - 1];
        let deep = format!("{{\"extra\":{}1{},{body}}}", "[".repeat(200), "]".repeat(200));
        let mid = format!("{{\"extra\":{}1{},{body}}}", "[".repeat(100), "]".repeat(100));
        let cases = [
            good.clone(),
            format!("  {good}  "),
            format!("{good} x"),
            format!("{good}{good}"),
            format!("{{\"unknown\":{{\"a\":[1,2.5e300,-0,null,true]}},{body}}}"),
            format!("{{\"big\":123456789012345678901234567890,{body}}}"),
            format!("{{\"big\":1e999,{body}}}"),
            good.replace("\"count\":0", "\"count\":00"),
            good.replace("\"count\":0", "\"count\":-0"),
            good.replace("\"count\":0", "\"count\":0.0"),
            good.replace("\"count\":0", "\"count\":-1"),
            good.replace("\"count\":0", "\"count\":18446744073709551616"),
            good.replace("\"v\":0", "\"v\":256"),
            good.replace("\"minute\":0", "\"minute\":1E2"),
            good.replace("\"title\":", "\"title\":\"dup\",\"title\":"),
            good.replace("\"project\":\"\"", "\"project\":\"\\ud83d\""),
            good.replace("\"project\":\"\"", "\"project\":\"\\udc00x\""),
            good.replace("\"project\":\"\"", "\"project\":\"\\ud83d\\ude00\""),
            good.replace("\"project\":\"\"", "\"project\":\"a\u{1}b\""),
            good.replace("\"project\":\"\"", "\"project\":\"a\tb\""),
            good.replace("\"project\":\"\"", "\"project\":\"\\x\""),
            good.replace("\"project\":\"\"", "\"project\":null"),
            good.replace("\"batch\":{", "\"batch\":[").replace(",\"project\"", "],\"project\""),
            good.replace("\"users\":{\"hashes\":[],\"saturated\":false}", "\"users\":[[1,2],true]"),
            good.replace(",\"breakdown\":{}", ""),
            good.replace("\"breakdown\":{}", "\"breakdown\":{\"url\":[{\"value\":\"/ü\",\"count\":2}]}"),
            deep,
            mid,
            "[]".into(),
            "".into(),
            "null".into(),
            "{".into(),
        ];
        let mut d = AggregateDecoder::default();
        for c in &cases {
            assert_eq!(d.decode(c.as_bytes()).map_err(|e| e.to_string()), serde_answer(c.as_bytes()), "{c}");
            if let Some(fast) = d.fast(c.as_bytes()) {
                assert_eq!(Ok(fast), serde_answer(c.as_bytes()), "{c}");
            }
        }
        // The grouper's records take the fast path.
        assert!(d.fast(good.as_bytes()).is_some());
        assert!(d.fast(cases[25].as_bytes()).is_some(), "{}", cases[25]);
    }

    #[test]
    fn minute_buckets() {
        assert_eq!(minute_of(1_795_671_540_000), 1_795_671_540);
        assert_eq!(minute_of(1_795_671_599_999), 1_795_671_540);
        assert_eq!(minute_of(-1), -60);
    }
}
