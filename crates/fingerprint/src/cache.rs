//! A per-thread cache of normalized frames. Real traffic repeats the same frames (the same
//! function in the same file) over and over; normalizing each distinct frame once and
//! hashing the raw strings to find it again is several times cheaper than normalizing every
//! frame of every event.
//!
//! Bounded ([`MAX_CACHE_ENTRIES`] entries, [`MAX_CACHE_ARENA_BYTES`] of names), and it only
//! starts over *between* exceptions: fingerprinting one exception looks up all its frames
//! first and reads their infos afterwards by index, so a reset in the middle would hand it
//! other frames' infos. Before the lookups, [`FrameCache::make_room`] resets the cache unless
//! the exception's frames (at most [`MAX_FRAMES_PER_EXCEPTION`], each at most
//! `2 * MAX_COMPONENT_LEN` bytes of names) surely fit.

#[cfg(doc)]
use crate::limits::MAX_FRAMES_PER_EXCEPTION;
use crate::limits::{self, MAX_CACHE_ARENA_BYTES, MAX_CACHE_ENTRIES, MAX_COMPONENT_LEN};
use crate::{normalize, rules};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use tracefold_model::event::Frame;

/// Most arena bytes one frame takes: its normalized location and function, each capped.
const MAX_FRAME_BYTES: usize = 2 * MAX_COMPONENT_LEN;

/// What grouping needs to know about a frame, independent of the config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameInfo {
    /// `module` or `filename`: which the location is.
    pub module_loc: bool,
    loc: (u32, u32),
    func: (u32, u32),
    /// Built-in reason not to contribute (SDK, native, eval, runtime start-up).
    pub machinery: Option<&'static str>,
    /// A runtime entry point (`main`, the event loop).
    pub entry: bool,
    /// Panic or throw machinery.
    pub panic_border: bool,
    /// JavaScript frame of a minified bundle without a usable function name.
    pub minified: bool,
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
    infos: Vec<FrameInfo>,
    arena: String,
    a: String,
    b: String,
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
            infos: Vec::new(),
            arena: String::new(),
            a: String::new(),
            b: String::new(),
            max_entries,
            max_arena: max_arena.min(u32::MAX as usize),
        }
    }

    /// Makes sure that `frames` more lookups fit without a reset, resetting the cache now if
    /// they might not. Call it before looking up one exception's frames: the indices that
    /// [`Self::lookup`] returns stay valid until the next call.
    pub fn make_room(&mut self, frames: usize) {
        if self.infos.len() + frames > self.max_entries
            || self.arena.len() + frames.saturating_mul(MAX_FRAME_BYTES) > self.max_arena
        {
            self.map.clear();
            self.infos.clear();
            self.arena.clear();
        }
    }

    /// Entries and arena bytes in use (for tests of the bounds).
    #[cfg(test)]
    pub fn usage(&self) -> (usize, usize) {
        (self.infos.len(), self.arena.len())
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

    /// The index of `frame`'s info, normalizing it on first sight. Never resets the cache
    /// (see [`Self::make_room`]), so earlier indices stay valid.
    pub fn lookup(&mut self, frame: &Frame<'_>, js: bool) -> u32 {
        let module = frame.module.as_deref().unwrap_or("");
        let file = frame.filename.as_deref().or(frame.abs_path.as_deref()).unwrap_or("");
        let func = frame.function.as_deref().unwrap_or("");
        // Three one-shot hashes, each seeding the next (cheaper than a streaming state for
        // short strings); the seeds keep ("ab", "c") and ("a", "bc") apart.
        use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};
        let h = xxh3_64_with_seed(module.as_bytes(), u64::from(js) + 1);
        let h = xxh3_64_with_seed(file.as_bytes(), h ^ (module.len() as u64));
        let key = xxh3_64_with_seed(func.as_bytes(), h ^ (file.len() as u64) ^ xxh3_64(b"func"));
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
        FrameInfo {
            module_loc,
            loc: (start, mid),
            func: (mid, end),
            machinery: rules::machinery(frame),
            entry: rules::is_entry_point(frame),
            panic_border: rules::is_panic_border(frame),
            minified,
        }
    }
}
