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
    let (tag, v): (&Tag, &str) = if let Some(id) = u.id.as_deref().filter(|s| !s.is_empty()) {
        (&ID_TAG, id)
    } else if let Some(e) = u.email.as_deref().filter(|s| !s.is_empty()) {
        (&EMAIL_TAG, e)
    } else if let Some(n) = u.username.as_deref().filter(|s| !s.is_empty()) {
        (&USERNAME_TAG, n)
    } else if let Some(ip) = u.ip_address.as_deref().filter(|s| !s.is_empty()) {
        (&IP_TAG, ip)
    } else {
        return None;
    };
    let (tag, t) = (&tag.0, tag.1);
    let v = v.as_bytes();
    // xxh3-64 of `tag | value`: in one shot from a stack buffer when it fits, streamed
    // otherwise (the same value). The tag is written as its 16 padded bytes (a fixed-size
    // store, not a `memcpy` call; the value overwrites the padding, and what is past the
    // value is not hashed), a value of 8 to 16 bytes (most user ids) as two words that
    // overlap.
    let mut buf = [0u8; 128];
    if t + v.len() <= buf.len() {
        buf[..16].copy_from_slice(tag);
        let n = v.len();
        match (v.first_chunk::<8>(), v.last_chunk::<8>()) {
            (Some(head), Some(tail)) if n <= 16 => {
                buf[t..t + 8].copy_from_slice(head);
                buf[t + n - 8..t + n].copy_from_slice(tail);
            }
            _ => buf[t..t + n].copy_from_slice(v),
        }
        return Some(xxhash_rust::xxh3::xxh3_64(&buf[..t + n]));
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&tag[..t]);
    h.update(v);
    Some(h.digest())
}

/// A user hash's field tag, padded to 16 bytes, and its length.
type Tag = ([u8; 16], usize);

const fn tag(t: &[u8]) -> Tag {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < t.len() {
        out[i] = t[i];
        i += 1;
    }
    (out, t.len())
}

const ID_TAG: Tag = tag(b"id:");
const EMAIL_TAG: Tag = tag(b"email:");
const USERNAME_TAG: Tag = tag(b"username:");
const IP_TAG: Tag = tag(b"ip:");

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

    /// [`implausible`] for this record.
    pub fn implausible(&self) -> Option<String> {
        implausible(self.minute, self.count, self.first_seen_ms, self.last_seen_ms)
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

/// Largest event count one aggregate record may carry. A real record counts the events of one
/// issue in one minute of one grouper batch, far fewer; the bound keeps the sums of any
/// number of records that can meet in a window far from `u64::MAX`.
pub const MAX_RECORD_COUNT: u64 = 1 << 40;

/// The last second a stored minute or time can name (ClickHouse's `DateTime` is 32-bit
/// unsigned seconds: 2106-02-07).
pub const MAX_RECORD_SECS: i64 = u32::MAX as i64;

/// Why an aggregate record with these values cannot be a real one, if it cannot: a minute,
/// first seen or last seen before 1970 or after [`MAX_RECORD_SECS`] (the grouper takes events
/// within days of their receipt, and the writer could only store another time as a wrong
/// one), or a count over [`MAX_RECORD_COUNT`]. Such a record comes from a corrupt or foreign
/// producer; its readers refuse it as malformed (the writer: DLQ; the detector: a counted
/// skip) instead of storing wrong times or overflowing their sums.
pub fn implausible(minute: i64, count: u64, first_seen_ms: Millis, last_seen_ms: Millis) -> Option<String> {
    let max_ms = MAX_RECORD_SECS * 1000 + 999;
    if !(0..=MAX_RECORD_SECS).contains(&minute) {
        return Some(format!("minute {minute} is outside 1970 to 2106"));
    }
    if count > MAX_RECORD_COUNT {
        return Some(format!("count {count} is more than {MAX_RECORD_COUNT}"));
    }
    for (name, ms) in [("first_seen_ms", first_seen_ms), ("last_seen_ms", last_seen_ms)] {
        if !(0..=max_ms).contains(&ms) {
            return Some(format!("{name} {ms} is outside 1970 to 2106"));
        }
    }
    None
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
    fn implausible_values_are_named() {
        let (m, ms) = (1_795_671_540, 1_795_671_545_000);
        assert_eq!(implausible(m, 3, ms, ms), None);
        assert_eq!(implausible(0, 0, 0, 0), None, "zeros (absent fields) are fine");
        assert_eq!(implausible(MAX_RECORD_SECS, MAX_RECORD_COUNT, MAX_RECORD_SECS * 1000 + 999, 0), None);
        for (args, word) in [
            ((i64::MIN, 3, ms, ms), "minute"),
            ((-60, 3, ms, ms), "minute"),
            ((MAX_RECORD_SECS + 1, 3, ms, ms), "minute"),
            ((m, u64::MAX, ms, ms), "count"),
            ((m, 3, -1, ms), "first_seen_ms"),
            ((m, 3, ms, i64::MAX), "last_seen_ms"),
        ] {
            let why = implausible(args.0, args.1, args.2, args.3).expect("implausible");
            assert!(why.starts_with(word), "{why}");
        }
    }

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
        // Every field's tag, every value length around the word copies (7, 8, 16, 17 bytes)
        // and the one-shot buffer's bound (128 bytes with the tag), multi-byte text too.
        let streamed = |tag: &str, v: &str| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(tag.as_bytes());
            h.update(v.as_bytes());
            h.digest()
        };
        for n in (0..=20).chain(115..=130) {
            for v in ["x".repeat(n), "é".repeat(n / 2), format!("{}ü", "y".repeat(n.saturating_sub(2)))] {
                let one = |f: usize| {
                    let mut u = crate::event::User::default();
                    let s = Some(v.as_str().into());
                    match f {
                        0 => u.id = s,
                        1 => u.email = s,
                        2 => u.username = s,
                        _ => u.ip_address = s,
                    }
                    user_hash(Some(&u))
                };
                for (f, tag) in ["id:", "email:", "username:", "ip:"].into_iter().enumerate() {
                    let want = (!v.is_empty()).then(|| streamed(tag, &v));
                    assert_eq!(one(f), want, "{tag} {} bytes", v.len());
                }
            }
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

    #[test]
    fn minute_buckets() {
        assert_eq!(minute_of(1_795_671_540_000), 1_795_671_540);
        assert_eq!(minute_of(1_795_671_599_999), 1_795_671_540);
        assert_eq!(minute_of(-1), -60);
    }
}
