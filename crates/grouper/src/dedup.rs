//! Deduplication of re-sent events by `(project, event_id)` within a window of offsets.
//!
//! An SDK that retries a request the producer answered with 503 after Kafka had acknowledged
//! part of it publishes those events again, with the same ids, to the same partition (the
//! Kafka key is the event id). The grouper counts an event as a duplicate when a valid event
//! with the same project and id was read at most `span` offsets before it in the same
//! partition.
//!
//! Every valid copy refreshes the window, so the decision depends on the `span` offsets before
//! an event and on nothing older: the window is a function of the partition's log, not of the
//! grouper's history, and replays decide the same. A grouper that starts on a partition at
//! offset `S` first reads `[S - span, S)` again to rebuild it (the service's `prime`). What the
//! broker's retention already deleted cannot be read again: a copy whose predecessor is older
//! than the window, or than the log start, counts again.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use xxhash_rust::xxh3::Xxh3;

/// The identity of an event for deduplication: its project and its id, the id normalized
/// (hyphens dropped, ASCII lowercase) so that a UUID and its 32-hex-digit form are one id.
pub fn identity(project: &str, event_id: &str) -> u128 {
    // The hash of `len(project) as u32 LE | project | normalized id`, in one shot from a stack
    // buffer when it fits (every valid event: a 128-byte one for the usual project names, so
    // that zeroing it is four stores), streamed otherwise: the same value either way.
    let len = 4 + project.len() + event_id.len();
    if len <= 128 {
        return identity_in(&mut [0u8; 128], project, event_id);
    }
    if len <= 256 {
        return identity_in(&mut [0u8; 256], project, event_id);
    }
    let mut buf = [0u8; 64];
    let mut h = Xxh3::new();
    h.update(&(project.len() as u32).to_le_bytes());
    h.update(project.as_bytes());
    let mut n = 0;
    for b in event_id.bytes().filter(|b| *b != b'-') {
        if n == 64 {
            h.update(&buf[..64]);
            n = 0;
        }
        buf[n] = b.to_ascii_lowercase();
        n += 1;
    }
    h.update(&buf[..n]);
    h.digest128()
}

/// [`identity`] in one shot from `buf`, which holds at least `4 + project.len() +
/// event_id.len()` bytes.
#[inline(always)]
fn identity_in(buf: &mut [u8], project: &str, event_id: &str) -> u128 {
    let head = 4 + project.len();
    buf[..4].copy_from_slice(&(project.len() as u32).to_le_bytes());
    buf[4..head].copy_from_slice(project.as_bytes());
    let id = event_id.as_bytes();
    // Hyphens found by a fold without an early exit (a few vector instructions over a 32-digit
    // id) instead of a `memchr` call, which costs more to set up than the id takes to read.
    let hyphens = id.iter().fold(false, |h, &b| h | (b == b'-'));
    let mut n = head;
    if hyphens {
        for b in id.iter().filter(|b| **b != b'-') {
            buf[n] = b.to_ascii_lowercase();
            n += 1;
        }
    } else {
        n += id.len();
        buf[head..n].copy_from_slice(id);
        buf[head..n].make_ascii_lowercase();
    }
    xxhash_rust::xxh3::xxh3_128(&buf[..n])
}

/// Hashes map keys that are already 128-bit or 64-bit xxh3 values (identities, bucket and
/// issue keys, the source-map hook's file keys): one keyed folded multiply of the key's two
/// halves (or of the key and a second key) instead of SipHash over 16 or 8 bytes.
///
/// The keys (`k0`, `k1`) are drawn per map from the standard library's random source, so an
/// attacker who chooses event ids still cannot choose which slots their keys land in: to
/// collide in the table they would need the full 128-bit xxh3 values to collide, which would
/// already merge the events themselves. Other input (not used by these maps) is folded 8
/// bytes at a time with the same keys.
#[derive(Clone)]
pub struct KeyedIdState {
    k0: u64,
    k1: u64,
}

impl Default for KeyedIdState {
    fn default() -> Self {
        let s = RandomState::new();
        // Odd so that neither factor's key is 0.
        Self { k0: s.hash_one(0u8) | 1, k1: s.hash_one(1u8) | 1 }
    }
}

impl std::fmt::Debug for KeyedIdState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedIdState")
    }
}

impl BuildHasher for KeyedIdState {
    type Hasher = KeyedIdHasher;
    fn build_hasher(&self) -> KeyedIdHasher {
        KeyedIdHasher { k0: self.k0, k1: self.k1, h: 0 }
    }
}

/// See [`KeyedIdState`].
pub struct KeyedIdHasher {
    k0: u64,
    k1: u64,
    h: u64,
}

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for KeyedIdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.h
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.h = fold(n ^ self.k0 ^ self.h, self.k1);
    }
    #[inline]
    fn write_u128(&mut self, n: u128) {
        self.h = fold((n as u64) ^ self.k0 ^ self.h, ((n >> 64) as u64) ^ self.k1);
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.h = fold(u64::from_le_bytes(w) ^ self.k0 ^ self.h, (chunk.len() as u64) ^ self.k1);
        }
    }
}

/// The identities of the valid events of the last `span` offsets of one partition, each with
/// the offset where it was last read. Memory: at most `span + 1` entries.
#[derive(Debug, Default)]
pub struct DedupWindow {
    span: u64,
    last_seen: HashMap<u128, i64, KeyedIdState>,
    /// Every valid event's (offset, identity), offsets increasing, for eviction.
    order: VecDeque<(i64, u128)>,
}

impl DedupWindow {
    /// A window of `span` offsets; 0 turns deduplication off.
    pub fn new(span: u64) -> Self {
        Self { span, ..Self::default() }
    }

    /// Whether a valid event with identity `id` was read in `[offset - span, offset)`.
    /// Offsets are read in increasing order (after a rewind, start a new window).
    pub fn is_duplicate(&self, id: u128, offset: i64) -> bool {
        self.span > 0 && self.last_seen.get(&id).is_some_and(|&o| o < offset && offset.abs_diff(o) <= self.span)
    }

    /// Records that a valid event `id` (a duplicate or not) was read at `offset`, and forgets
    /// what fell out of the window. Reading the last offset again changes nothing.
    pub fn insert(&mut self, id: u128, offset: i64) {
        if self.span == 0 {
            return;
        }
        let floor = offset.saturating_sub(i64::try_from(self.span).unwrap_or(i64::MAX));
        while let Some(&(o, old)) = self.order.front() {
            if o >= floor {
                break;
            }
            self.order.pop_front();
            if self.last_seen.get(&old) == Some(&o) {
                self.last_seen.remove(&old);
            }
        }
        if self.order.back().is_none_or(|&(o, _)| o < offset) {
            self.last_seen.insert(id, offset);
            self.order.push_back((offset, id));
        }
    }

    /// Identities held.
    pub fn len(&self) -> usize {
        self.last_seen.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.last_seen.is_empty()
    }

    /// The configured span, offsets.
    pub fn span(&self) -> u64 {
        self.span
    }

    /// Forgets everything (before the window is read again from the log).
    pub fn clear(&mut self) {
        self.last_seen.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keyed_id_hasher_spreads_either_half_and_depends_on_its_keys() {
        let a = KeyedIdState::default();
        let b = KeyedIdState::default();
        // Keys that differ only in the high or only in the low half hash apart.
        let lo: std::collections::HashSet<u64> = (0..1000u128).map(|i| a.hash_one(i)).collect();
        let hi: std::collections::HashSet<u64> = (0..1000u128).map(|i| a.hash_one(i << 64)).collect();
        assert_eq!((lo.len(), hi.len()), (1000, 1000));
        // Two maps draw other keys, so where a key lands is not known in advance.
        let same = (0..64u128).filter(|&i| a.hash_one(i) == b.hash_one(i)).count();
        assert!(same < 64);
        // A map over it finds what it holds.
        let mut m: HashMap<u128, i64, KeyedIdState> = HashMap::default();
        for i in 0..10_000u128 {
            m.insert(identity("p", &i.to_string()), i as i64);
        }
        assert!((0..10_000u128).all(|i| m.get(&identity("p", &i.to_string())) == Some(&(i as i64))));
        // 64-bit keys (the source-map hook's file keys): distinct keys hash apart, another map
        // places them otherwise, and a map over them finds what it holds.
        let small: std::collections::HashSet<u64> = (0..1000u64).map(|i| a.hash_one(i)).collect();
        let high: std::collections::HashSet<u64> = (0..1000u64).map(|i| a.hash_one(i << 40)).collect();
        assert_eq!((small.len(), high.len()), (1000, 1000));
        assert!((0..64u64).filter(|&i| a.hash_one(i) == b.hash_one(i)).count() < 64);
        let mut m: HashMap<u64, u64, KeyedIdState> = HashMap::default();
        for i in 0..10_000u64 {
            m.insert(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i);
        }
        assert!((0..10_000u64).all(|i| m.get(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) == Some(&i)));
    }

    #[test]
    fn uuid_and_hex_forms_are_one_identity_and_projects_are_kept_apart() {
        let hex = "0123456789abcdef0123456789abcdef";
        let uuid = "01234567-89AB-CDEF-0123-456789ABCDEF";
        assert_eq!(identity("web", hex), identity("web", uuid));
        assert_ne!(identity("web", hex), identity("api", hex));
        // Length prefixes: no ambiguity between project and id.
        assert_ne!(identity("ab", "c"), identity("a", "bc"));
        // Any text, any length (the validator refuses such ids; the function stays total).
        assert_ne!(identity("проект", &"ü".repeat(100)), identity("проект", &"ü".repeat(101)));
        // The one-shot and the streamed hash are the same function of the bytes.
        for (p, id) in [
            ("web", "01234567-89AB-CDEF-0123-456789ABCDEF"),
            ("web", "0123456789ABCDEF0123456789abcdef"),
            ("p", &"a-".repeat(200)[..]),
            ("p", &"Ü".repeat(200)[..]),
            ("", ""),
        ] {
            let mut h = Xxh3::new();
            h.update(&(p.len() as u32).to_le_bytes());
            h.update(p.as_bytes());
            h.update(id.replace('-', "").to_ascii_lowercase().as_bytes());
            assert_eq!(identity(p, id), h.digest128(), "{p} {id}");
        }
    }

    #[test]
    fn identities_around_the_buffer_bounds_are_the_streamed_hash() {
        // Both one-shot buffers (128 and 256 bytes) and the streamed hash, at and around their
        // bounds, with and without hyphens, upper case and multi-byte text in the id.
        let streamed = |p: &str, id: &str| {
            let mut h = Xxh3::new();
            h.update(&(p.len() as u32).to_le_bytes());
            h.update(p.as_bytes());
            h.update(id.replace('-', "").to_ascii_lowercase().as_bytes());
            h.digest128()
        };
        let ids = [
            "0123456789abcdef0123456789abcdef",
            "0123456789ABCDEF0123456789ABCDEF",
            "01234567-89ab-cdef-0123-456789abcdef",
            "-0123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdef-",
            "--",
            "ü-Ü-é",
            "",
        ];
        for id in ids {
            for total in (0usize..8).chain(120..136).chain(248..264) {
                let Some(plen) = total.checked_sub(4 + id.len()) else { continue };
                let p = "p".repeat(plen);
                assert_eq!(identity(&p, id), streamed(&p, id), "{plen} {id}");
            }
        }
    }

    #[test]
    fn a_repeat_within_the_span_is_a_duplicate_and_outside_it_is_not() {
        let mut w = DedupWindow::new(10);
        w.insert(1, 100);
        assert!(!w.is_duplicate(1, 100), "the same offset read again");
        assert!(w.is_duplicate(1, 101));
        assert!(w.is_duplicate(1, 110));
        assert!(!w.is_duplicate(1, 111));
        // A repeat refreshes the window: the third copy is within 10 of the second.
        w.insert(1, 105);
        assert!(w.is_duplicate(1, 115));
        w.insert(2, 116);
        assert!(!w.is_duplicate(1, 116));
        assert_eq!(w.len(), 1, "offsets 100 and 105 left the window");
    }

    #[test]
    fn span_zero_turns_it_off() {
        let mut w = DedupWindow::new(0);
        w.insert(1, 1);
        assert!(!w.is_duplicate(1, 2));
        assert!(w.is_empty());
        assert_eq!(w.span(), 0);
    }

    proptest! {
        /// The window decides exactly as the definition (a valid event with the same identity
        /// in the `span` offsets before), whatever came before them: a window rebuilt from
        /// only those offsets decides the same. Memory stays bounded.
        #[test]
        fn decides_as_the_definition_from_the_window_alone(
            span in 0u64..20,
            log in proptest::collection::vec(proptest::option::of(0u128..8), 0..300),
            start in 0usize..300,
        ) {
            // `None`: an invalid event at that offset (never in the window).
            let decide = |w: &mut DedupWindow, offset: usize| {
                let dup = log[offset].is_some_and(|id| w.is_duplicate(id, offset as i64));
                if let Some(id) = log[offset] {
                    w.insert(id, offset as i64);
                }
                dup
            };
            let mut w = DedupWindow::new(span);
            let mut first_run = Vec::new();
            for offset in 0..log.len() {
                let want = log[offset].is_some_and(|id| {
                    span > 0 && (offset.saturating_sub(span as usize)..offset).any(|o| log[o] == Some(id))
                });
                prop_assert_eq!(decide(&mut w, offset), want, "offset {}", offset);
                first_run.push(want);
                prop_assert!(w.len() as u64 <= span + 1);
            }
            // A restart at `start`: the window is read again from `[start - span, start)`.
            let start = start.min(log.len());
            let mut again = DedupWindow::new(span);
            for offset in start.saturating_sub(span as usize)..start {
                decide(&mut again, offset);
            }
            for (offset, first) in first_run.iter().enumerate().skip(start) {
                prop_assert_eq!(decide(&mut again, offset), *first, "restart at {}, offset {}", start, offset);
            }
        }
    }
}
