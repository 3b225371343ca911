//! A per-thread cache of normalized frames. Real traffic repeats the same frames (the same
//! function in the same file) over and over; normalizing each distinct frame once and
//! hashing the raw strings to find it again is several times cheaper than normalizing every
//! frame of every event.
//!
//! Bounded ([`MAX_CACHE_ENTRIES`] entries, [`MAX_CACHE_ARENA_BYTES`] of names and of the
//! frames' hashed components together), and it only starts over *between* exceptions:
//! fingerprinting one exception looks up all its frames first and reads their infos
//! afterwards by index, so a reset in the middle would hand it other frames' infos. Before
//! the lookups, [`FrameCache::make_room`] resets the cache unless the exception's frames (at
//! most [`MAX_FRAMES_PER_EXCEPTION`], each at most `2 * MAX_COMPONENT_LEN` bytes of names
//! and as many of components with their tags and lengths) surely fit.

#[cfg(doc)]
use crate::limits::MAX_FRAMES_PER_EXCEPTION;
use crate::limits::{self, MAX_CACHE_ARENA_BYTES, MAX_CACHE_ENTRIES, MAX_COMPONENT_LEN};
use crate::{normalize, rules};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use tracefold_model::event::Frame;

/// Most arena bytes one frame takes: its normalized location and function, each capped.
const MAX_FRAME_BYTES: usize = 2 * MAX_COMPONENT_LEN;

/// Most bytes of one frame's hashed components: two components of at most
/// [`MAX_COMPONENT_LEN`] bytes, each with its tag (at most 8 bytes), the tag's length and the
/// value's length.
const MAX_FRAME_ENCODED_BYTES: usize = 2 * (1 + 8 + 4 + MAX_COMPONENT_LEN);

/// What grouping needs to know about a frame, independent of the config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameInfo {
    /// `module` or `filename`: which the location is.
    pub module_loc: bool,
    loc: (u32, u32),
    func: (u32, u32),
    /// The frame's components as the hashing sink writes them (the location's unless it is
    /// empty, then the function's unless it is empty; `crate::put_component`), in `encoded`.
    enc: (u32, u32),
    /// Built-in reason not to contribute (SDK, native, eval, runtime start-up).
    pub machinery: Option<&'static str>,
    /// A runtime entry point (`main`, the event loop).
    pub entry: bool,
    /// Panic or throw machinery.
    pub panic_border: bool,
    /// JavaScript frame of a minified bundle without a usable function name.
    pub minified: bool,
}

impl FrameInfo {
    /// Whether the normalized location is empty.
    pub fn loc_is_empty(&self) -> bool {
        self.loc.0 == self.loc.1
    }

    /// Whether the normalized function is empty.
    pub fn func_is_empty(&self) -> bool {
        self.func.0 == self.func.1
    }
}

/// The key is already a hash: use it as is.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Debug)]
pub(crate) struct FrameCache {
    map: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
    /// The secret keys of the frames' key (drawn per cache).
    keys: FrameKeys,
    infos: Vec<FrameInfo>,
    arena: String,
    /// The frames' components as hashed (see [`FrameInfo`]); bounded as `arena` is.
    encoded: Vec<u8>,
    a: String,
    b: String,
    /// Whole stacks the hashing sink walked (see [`Self::stack_key`]): the key of the stack
    /// and the config's inputs, then where its output is in `stack_out` and how many frames
    /// contributed. Counted against the same bounds as the frames.
    stacks: HashMap<u64, (u32, u32, u32), BuildHasherDefault<IdHasher>>,
    stack_out: Vec<u8>,
    /// Bounds ([`MAX_CACHE_ENTRIES`], [`MAX_CACHE_ARENA_BYTES`]; smaller in tests).
    max_entries: usize,
    max_arena: usize,
}

impl Default for FrameCache {
    fn default() -> Self {
        Self::with_limits(MAX_CACHE_ENTRIES, MAX_CACHE_ARENA_BYTES)
    }
}

impl std::fmt::Debug for IdHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdHasher")
    }
}

impl FrameCache {
    /// A cache that keeps at most `max_entries` frames and `max_arena` bytes of names (both
    /// must leave room for one exception's frames; the defaults do).
    pub fn with_limits(max_entries: usize, max_arena: usize) -> Self {
        Self {
            map: HashMap::default(),
            keys: FrameKeys::random(),
            infos: Vec::new(),
            arena: String::new(),
            encoded: Vec::new(),
            a: String::new(),
            b: String::new(),
            stacks: HashMap::default(),
            stack_out: Vec::new(),
            max_entries,
            max_arena: max_arena.min(u32::MAX as usize),
        }
    }

    /// Makes sure that `frames` more lookups fit without a reset, resetting the cache now if
    /// they might not. Call it before looking up one exception's frames: the indices that
    /// [`Self::lookup`] returns stay valid until the next call.
    pub fn make_room(&mut self, frames: usize) {
        if self.infos.len() + self.stacks.len() + frames > self.max_entries
            || self.bytes() + frames.saturating_mul(MAX_FRAME_BYTES + MAX_FRAME_ENCODED_BYTES) > self.max_arena
        {
            self.map.clear();
            self.infos.clear();
            self.arena.clear();
            self.encoded.clear();
            self.stacks.clear();
            self.stack_out.clear();
        }
    }

    /// Bytes counted against the arena bound.
    fn bytes(&self) -> usize {
        self.arena.len() + self.encoded.len() + self.stack_out.len()
    }

    /// The key of a whole stack as the hashing walk reads it when no stack rule applies: the
    /// number of frames and `max_frames`, then per frame its key in this cache (the
    /// JavaScript bit and the three names, [`FrameKeys::frame`]), whether it is marked in-app
    /// (`in_app == Some(true)`, all the walk reads of it) and, in JavaScript, its column (a
    /// minified frame's column contributes). Each frame is mixed in by one folded multiply
    /// of the state XORed with the frame's key, and of its flags, both XORed with this
    /// cache's secret keys; two stacks share a key only when the multiplies collide (about
    /// 2^-64, as for one frame's key).
    pub fn stack_key(&self, frames: &[Frame<'_>], js: bool, max_frames: usize) -> u64 {
        let [k0, k1, k2, k3] = self.keys.k;
        let mut h = fold(frames.len() as u64 ^ k2, max_frames as u64 ^ k3);
        for frame in frames {
            let (module, file, func) = names(frame);
            let key = self.keys.frame(js, module.as_bytes(), file.as_bytes(), func.as_bytes());
            let col = if js { frame.colno.map_or(0, |c| u64::from(c) + 1) } else { 0 };
            let flags = u64::from(frame.in_app == Some(true)) | col << 1;
            h = fold(h ^ key ^ k0, flags ^ k1);
        }
        h
    }

    /// What the hashing walk of the stack of key `key` wrote, and how many frames
    /// contributed, if it was remembered.
    pub fn stack(&self, key: u64) -> Option<(&[u8], usize)> {
        self.stacks.get(&key).map(|&(s, e, n)| (&self.stack_out[s as usize..e as usize], n as usize))
    }

    /// Remembers what the hashing walk of the stack of key `key` wrote, when it fits in the
    /// bounds (else not: remembering is never needed for the answer).
    pub fn remember_stack(&mut self, key: u64, out: &[u8], contributed: usize) {
        if self.infos.len() + self.stacks.len() < self.max_entries
            && self.bytes() + out.len() <= self.max_arena
            && u32::try_from(contributed).is_ok()
        {
            let start = self.stack_out.len() as u32;
            self.stack_out.extend_from_slice(out);
            self.stacks.insert(key, (start, self.stack_out.len() as u32, contributed as u32));
        }
    }

    /// Entries and arena bytes in use (for tests of the bounds).
    #[cfg(test)]
    pub fn usage(&self) -> (usize, usize) {
        (self.infos.len() + self.stacks.len(), self.bytes())
    }

    pub fn info(&self, i: u32) -> &FrameInfo {
        &self.infos[i as usize]
    }

    pub fn loc(&self, info: &FrameInfo) -> &str {
        &self.arena[info.loc.0 as usize..info.loc.1 as usize]
    }

    pub fn func(&self, info: &FrameInfo) -> &str {
        &self.arena[info.func.0 as usize..info.func.1 as usize]
    }

    /// The frame's components as the hashing sink writes them: the location's (unless it is
    /// empty), then the function's (unless it is empty).
    pub fn encoded(&self, info: &FrameInfo) -> &[u8] {
        &self.encoded[info.enc.0 as usize..info.enc.1 as usize]
    }

    /// The index of `frame`'s info, normalizing it on first sight. Never resets the cache
    /// (see [`Self::make_room`]), so earlier indices stay valid.
    pub fn lookup(&mut self, frame: &Frame<'_>, js: bool) -> u32 {
        let (module, file, func) = names(frame);
        let key = self.keys.frame(js, module.as_bytes(), file.as_bytes(), func.as_bytes());
        if let Some(&i) = self.map.get(&key) {
            return i;
        }
        let info = self.normalize(frame, module, file, func, js);
        let i = self.infos.len() as u32;
        self.infos.push(info);
        self.map.insert(key, i);
        i
    }

    fn normalize(&mut self, frame: &Frame<'_>, module: &str, file: &str, func: &str, js: bool) -> FrameInfo {
        let (module_loc, mut loc_src) = if module.is_empty() { (false, file) } else { (true, module) };
        let mut func_src = func;
        if let Some((m, f)) = normalize::dotnet_async(loc_src, func_src) {
            (loc_src, func_src) = (m, f);
        }
        if module_loc {
            normalize::module(loc_src, &mut self.a);
        } else {
            normalize::filename(loc_src, &mut self.a);
        }
        // Capped after the JavaScript rules: they keep the last segment of the whole name.
        normalize::function_uncapped(func_src, &mut self.b);
        if js {
            normalize::js_function(&mut self.b);
        }
        limits::truncate(&mut self.b, MAX_COMPONENT_LEN);
        let minified = js && self.b.is_empty() && (self.a.contains("<hash>") || self.a.contains(".min."));
        let start = self.arena.len() as u32;
        self.arena.push_str(&self.a);
        let mid = self.arena.len() as u32;
        self.arena.push_str(&self.b);
        let end = self.arena.len() as u32;
        let enc_start = self.encoded.len() as u32;
        if !self.a.is_empty() {
            crate::put_component(&mut self.encoded, if module_loc { "module" } else { "filename" }, &self.a);
        }
        if !self.b.is_empty() {
            crate::put_component(&mut self.encoded, "function", &self.b);
        }
        let enc_end = self.encoded.len() as u32;
        FrameInfo {
            module_loc,
            loc: (start, mid),
            func: (mid, end),
            enc: (enc_start, enc_end),
            machinery: rules::machinery(frame),
            entry: rules::is_entry_point(frame),
            panic_border: rules::is_panic_border(frame),
            minified,
        }
    }
}

/// The key of a frame in the cache: one 64-bit hash of whether it is JavaScript and of its
/// three names (every byte and every length), in one pass over the names as the event holds
/// them (no buffer to fill, no hash call per name).
///
/// The state starts as a folded multiply (the 128-bit product of two words, its halves
/// XORed) of the three lengths and the JavaScript bit, each operand XORed with a key; each
/// name is then read in 16-byte blocks (the last one overlapping the one before; a name of 8
/// to 16 bytes as two overlapping words, of 4 to 7 as two overlapping halves, of 1 to 3 by
/// its first, middle and last byte, of none as zeros), and each block is mixed in by one
/// folded multiply of its two words, the first XORed with a key, the second with a key and
/// the state. Given the lengths, the blocks determine the names, so two frames share a key
/// only when the multiplies collide.
///
/// The keys are drawn per cache from the standard library's random source, so no one outside
/// the process can choose names whose keys collide: a hit is the frame's own entry (two
/// distinct frames share a key with probability about 2^-64, as with the three seeded xxh3
/// hashes this replaced, whose seeds were fixed). `cargo test -p tracefold-fingerprint
/// frame_key` checks that the key separates names that differ anywhere or are split
/// otherwise.
#[derive(Clone, Copy)]
pub(crate) struct FrameKeys {
    k: [u64; 4],
}

/// The keys stay secret: a `Scratch` printed with `{:?}` (a log line, a panic message) does not
/// show them.
impl std::fmt::Debug for FrameKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameKeys")
    }
}

/// The 128-bit product of `a` and `b`, its halves XORed.
#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

use tracefold_model::text::word;

/// The three names a frame is cached by (module, file, function; the file name, else the
/// path), absent ones empty: one reading for [`FrameCache::lookup`] and
/// [`FrameCache::stack_key`], since a stack's key must cover what its frames' lookups read.
#[inline(always)]
fn names<'a>(frame: &'a Frame<'_>) -> (&'a str, &'a str, &'a str) {
    (
        frame.module.as_deref().unwrap_or(""),
        frame.filename.as_deref().or(frame.abs_path.as_deref()).unwrap_or(""),
        frame.function.as_deref().unwrap_or(""),
    )
}

#[inline(always)]
fn half(s: &[u8], at: usize) -> u64 {
    u64::from(tracefold_model::text::half(s, at))
}

impl FrameKeys {
    pub(crate) fn random() -> Self {
        use std::hash::BuildHasher;
        let s = std::collections::hash_map::RandomState::new();
        Self { k: [s.hash_one(0u8), s.hash_one(1u8), s.hash_one(2u8), s.hash_one(3u8)] }
    }

    /// Keys given, for tests.
    #[cfg(test)]
    pub(crate) fn with(k: [u64; 4]) -> Self {
        Self { k }
    }

    /// The key of the frame of these names.
    #[inline(always)]
    pub(crate) fn frame(&self, js: bool, module: &[u8], file: &[u8], func: &[u8]) -> u64 {
        let [k0, k1, k2, k3] = self.k;
        let (m, f, g) = (module.len() as u64, file.len() as u64, func.len() as u64);
        // The three lengths in one word: packed when each is below 2^21 bytes (every name of
        // an event the grouper accepts), else mixed (the top bit tells the two apart).
        let lens = if (m | f | g) < 1 << 21 {
            m | f << 21 | g << 42
        } else {
            (fold(m ^ k0, f ^ k1) ^ g.rotate_left(32)) | 1 << 63
        };
        let h = fold(lens ^ k2, k3 ^ u64::from(js));
        let h = self.name(h, module);
        let h = self.name(h, file);
        self.name(h, func)
    }

    /// Mixes the bytes of one name into the state `h`.
    #[inline(always)]
    fn name(&self, mut h: u64, s: &[u8]) -> u64 {
        let [k0, k1, ..] = self.k;
        let len = s.len();
        let (a, b) = if len > 16 {
            let mut i = 0;
            while len - i > 16 {
                h = fold(word(s, i) ^ k0, word(s, i + 8) ^ k1 ^ h);
                i += 16;
            }
            (word(s, len - 16), word(s, len - 8))
        } else if len >= 8 {
            (word(s, 0), word(s, len - 8))
        } else if len >= 4 {
            (half(s, 0), half(s, len - 4))
        } else if len > 0 {
            (u64::from(s[0]) | u64::from(s[len / 2]) << 8 | u64::from(s[len - 1]) << 16, 0)
        } else {
            (0, 0)
        };
        fold(a ^ k0, b ^ k1 ^ h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A frame's JavaScript bit and names, as the test keeps them.
    type Names = (bool, Vec<u8>, Vec<u8>, Vec<u8>);

    /// Names that differ in any byte, in length, in where one ends and the next begins, or
    /// in the JavaScript bit get other keys (any collision among these few thousand would
    /// mean a byte or a length is not mixed in: by chance it is about 2^-40).
    #[test]
    fn frame_key_separates_names() {
        for keys in [
            FrameKeys::random(),
            FrameKeys::with([
                0x9e37_79b9_7f4a_7c15,
                0xc2b2_ae3d_27d4_eb4f,
                0x1656_67b1_9e37_79f9,
                0x27d4_eb2f_1656_67c5,
            ]),
        ] {
            let mut seen: HashMap<u64, Names> = HashMap::new();
            let mut put = |js: bool, m: &[u8], f: &[u8], g: &[u8]| {
                let key = keys.frame(js, m, f, g);
                let this = (js, m.to_vec(), f.to_vec(), g.to_vec());
                if let Some(other) = seen.insert(key, this.clone()) {
                    assert_eq!(other, this, "two frames share key {key:#x}");
                }
            };
            // Every length from 0 to 70 and every position of a changed byte, in each name
            // (non-ASCII bytes among them), and "aaa...a" of every length (overlapping reads).
            let base: Vec<u8> = "ab\u{e9}cd\u{1f600}efghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-_./:<>"
                .bytes()
                .collect();
            for len in 0..=70 {
                let s = &base[..len];
                let same = vec![b'a'; len];
                for js in [false, true] {
                    put(js, s, b"", b"");
                    put(js, b"", s, b"");
                    put(js, b"", b"", s);
                    put(js, &same, b"x", b"");
                    put(js, b"", &same, b"x");
                }
                for at in 0..len {
                    let mut t = s.to_vec();
                    t[at] ^= 0x01;
                    put(false, &t, b"", b"");
                    put(false, b"", &t, b"");
                    put(false, b"", b"", &t);
                    t[at] ^= 0x81;
                    put(true, &t, b"f", b"g");
                }
            }
            // The same bytes split otherwise between the three names.
            let all = &base[..40];
            for i in 0..=all.len() {
                for j in i..=all.len() {
                    put(false, &all[..i], &all[i..j], &all[j..]);
                }
            }
            // Lengths past the packed bound.
            let big = vec![b'z'; (1 << 21) + 3];
            put(false, &big, b"", b"");
            put(false, b"", &big, b"");
            put(false, b"", b"", &big);
            put(false, &big[1..], b"", b"");
        }
    }

    /// The key depends on the names' bytes, not on where they are.
    #[test]
    fn frame_key_is_a_function_of_the_names() {
        let keys = FrameKeys::random();
        let (m, f, g) = ("app.module".to_string(), "src/app/handlers/payments.py".to_string(), "charge".to_string());
        let (m2, f2, g2) = (m.clone(), f.clone(), g.clone());
        assert_eq!(
            keys.frame(false, m.as_bytes(), f.as_bytes(), g.as_bytes()),
            keys.frame(false, m2.as_bytes(), f2.as_bytes(), g2.as_bytes())
        );
    }
}
