//! Breakdowns: how many of an aggregate's events came from each browser, operating system and
//! URL. Each aggregate carries a small, bounded breakdown (at most [`MAX_VALUES`] distinct
//! values per key; the events of further values count as [`OTHER`]), so that the issue page
//! can show where an issue happens without keeping every event.
//!
//! The grouper's hot path counts an event in an open bucket without allocating when its value
//! is already there: [`Breakdown::plan`] compares the event's borrowed text with the stored
//! values and allocates only for a new one; [`Breakdown::apply`] then counts.

use crate::event::Event;
use crate::text::prefix;
use serde::{Deserialize, Serialize};

/// Most distinct values one aggregate counts per key; the events of any further value count
/// as [`OTHER`] (so a key holds at most `MAX_VALUES + 1` entries).
pub const MAX_VALUES: usize = 10;

/// The value that stands for every value past [`MAX_VALUES`].
pub const OTHER: &str = "(other)";

/// Longest URL kept, in bytes (cut on a character boundary), after the query string and
/// fragment are dropped.
pub const MAX_URL_BYTES: usize = 200;

/// Longest browser or OS name kept, in bytes (cut on a character boundary).
pub const MAX_NAME_BYTES: usize = 64;

/// Longest browser major version kept, in bytes.
pub const MAX_MAJOR_BYTES: usize = 16;

/// What a breakdown counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// `contexts.browser`: the name and the major version, e.g. `Chrome 120`.
    Browser,
    /// `contexts.os`: the name, e.g. `Windows`, `iOS`.
    Os,
    /// `request.url` without query string and fragment, at most [`MAX_URL_BYTES`].
    Url,
}

impl Key {
    /// Every key, in the order of their columns.
    pub const ALL: [Key; 3] = [Key::Browser, Key::Os, Key::Url];

    /// The key as stored (`breakdown.key`): `browser`, `os` or `url`.
    pub fn as_str(self) -> &'static str {
        match self {
            Key::Browser => "browser",
            Key::Os => "os",
            Key::Url => "url",
        }
    }

    /// The key named `s`, if any.
    pub fn parse(s: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One value of a key and its number of events.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ValueCount {
    /// The value (never empty).
    pub value: String,
    /// Events with this value.
    pub count: u64,
}

/// The breakdown of one aggregate: per key, the values seen and their counts, in the order
/// first seen (deterministic: a replayed batch builds the same breakdown).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Breakdown {
    /// By browser.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub browser: Vec<ValueCount>,
    /// By operating system.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub os: Vec<ValueCount>,
    /// By URL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub url: Vec<ValueCount>,
}

/// An event's value for one key, borrowed from the event (or, for a URL, from the buffer its
/// route was written into): `head`, or `head tail` when `tail` is not empty (a browser's name
/// and major version), already bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Value<'a> {
    head: &'a str,
    tail: &'a str,
}

impl<'a> Value<'a> {
    fn plain(head: &'a str) -> Self {
        Self { head, tail: "" }
    }

    /// Whether the value's text equals `s`, without building it. Inlined into
    /// [`Breakdown::plan`]'s loop over a key's values (up to 11 comparisons an event).
    #[inline(always)]
    pub fn is(&self, s: &str) -> bool {
        let (head, tail, s) = (self.head.as_bytes(), self.tail.as_bytes(), s.as_bytes());
        if tail.is_empty() {
            return same(head, s);
        }
        s.len() == head.len() + 1 + tail.len()
            && same(&s[..head.len()], head)
            && s[head.len()] == b' '
            && same(&s[head.len() + 1..], tail)
    }

    /// The value's text.
    pub fn text(&self) -> String {
        if self.tail.is_empty() {
            return self.head.to_owned();
        }
        let mut s = String::with_capacity(self.head.len() + 1 + self.tail.len());
        s.push_str(self.head);
        s.push(' ');
        s.push_str(self.tail);
        s
    }
}

/// `a == b`. Text of at most 16 bytes (names, versions, most values a breakdown compares) is
/// compared inline as two words that overlap (or two halves below 8 bytes, bytes below 4):
/// `==` on slices calls `memcmp` for every pair of equal length, several times the cost.
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    use crate::text::{half, word};
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

/// The placeholder of a URL path segment that names one object rather than a route: all
/// digits (`<int>`), or at least 8 hex digits and dashes with a digit among them: a UUID, a
/// hash, a hex object id (`<id>`).
fn id_placeholder(segment: &str) -> Option<&'static str> {
    let b = segment.as_bytes();
    if b.is_empty() {
        return None;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return Some("<int>");
    }
    let hexlike = b.iter().all(|c| c.is_ascii_hexdigit() || *c == b'-');
    (b.len() >= 8 && hexlike && b.iter().any(u8::is_ascii_digit)).then_some("<id>")
}

/// Writes `url` into `out` with the id segments of its path replaced by placeholders, cut to
/// [`MAX_URL_BYTES`] on a character boundary. Linear in the URL's length.
fn write_route(url: &str, out: &mut String) {
    // Byte searches for ASCII bytes (so every cut is on a character boundary): `str::find`
    // and `split` with a char decode every character, several times the cost.
    let bytes = url.as_bytes();
    // The scheme and host are kept whole: the path starts at the first `/` after `://`.
    let path_at = match memchr::memmem::find(bytes, b"://") {
        Some(i) => memchr::memchr(b'/', &bytes[i + 3..]).map_or(url.len(), |j| i + 3 + j),
        None => 0,
    };
    out.push_str(&url[..path_at]);
    let mut at = path_at;
    while out.len() < MAX_URL_BYTES {
        let end = memchr::memchr(b'/', &bytes[at..]).map_or(url.len(), |j| at + j);
        let segment = &url[at..end];
        out.push_str(id_placeholder(segment).unwrap_or(segment));
        if end == url.len() {
            break;
        }
        out.push('/');
        at = end + 1;
    }
    let keep = prefix(out, MAX_URL_BYTES).len();
    out.truncate(keep);
}

/// `s.trim()`, answered without decoding a character when `s` begins and ends with a
/// visible ASCII character (a name or version as sent: the usual case), which `trim` keeps.
/// Every character `trim` removes is either ASCII and at most a space, or not ASCII; a string
/// whose last byte is ASCII ends with that character.
#[inline(always)]
fn trim(s: &str) -> &str {
    let visible = |c: &u8| (b'!'..=b'~').contains(c);
    match s.as_bytes() {
        [first, .., last] if visible(first) && visible(last) => s,
        [only] if visible(only) => s,
        _ => s.trim(),
    }
}

/// The browser of `e`: `contexts.browser.name`, plus the major version (what precedes the
/// first `.` of `contexts.browser.version`) when there is one.
pub fn browser<'a>(e: &'a Event<'_>) -> Option<Value<'a>> {
    let b = e.contexts.as_ref()?.browser.as_ref()?;
    let head = prefix(trim(b.name.as_deref()?), MAX_NAME_BYTES);
    if head.is_empty() {
        return None;
    }
    let version = trim(b.version.as_deref().unwrap_or(""));
    Some(Value { head, tail: major(version) })
}

/// The major version of `version` (what precedes its first `.` or space), at most
/// [`MAX_MAJOR_BYTES`]. Only the first `MAX_MAJOR_BYTES + 1` bytes are searched, by a plain
/// loop (a version is a few bytes: `memchr2` costs more to set up than the loop to run): a
/// separator past them leaves a major longer than the bound, which the bound cuts to the same
/// prefix as the whole text.
fn major(version: &str) -> &str {
    let b = version.as_bytes();
    let head = &b[..b.len().min(MAX_MAJOR_BYTES + 1)];
    // Cut at an ASCII byte: on a character boundary.
    match head.iter().position(|&c| c == b'.' || c == b' ') {
        Some(i) => &version[..i],
        None => prefix(version, MAX_MAJOR_BYTES),
    }
}

/// The operating system of `e`: `contexts.os.name`.
pub fn os<'a>(e: &'a Event<'_>) -> Option<Value<'a>> {
    let head = prefix(trim(e.contexts.as_ref()?.os.as_ref()?.name.as_deref()?), MAX_NAME_BYTES);
    (!head.is_empty()).then_some(Value::plain(head))
}

/// The URL of `e` as a route, written into `buf` (kept from one event to the next: no
/// allocation once it is large enough): `request.url` without its query string and fragment,
/// the path segments that name one object replaced by `<int>` (all digits) or `<id>` (UUIDs,
/// hashes, hex ids), at most [`MAX_URL_BYTES`]: `https://shop.example/carts/8812/items` and
/// `https://shop.example/carts/9/items` count as one `https://shop.example/carts/<int>/items`,
/// so that the breakdown says which pages an issue happens on rather than listing one URL per
/// event.
pub fn url<'b>(e: &Event<'_>, buf: &'b mut String) -> Option<Value<'b>> {
    buf.clear();
    let u = e.request.as_ref()?.url.as_deref()?;
    // Cut at an ASCII byte: on a character boundary. (A byte search: `str::split` with a
    // char pattern decodes every character, several times the cost on a long URL.)
    let u = u[..memchr::memchr2(b'?', b'#', u.as_bytes()).unwrap_or(u.len())].trim();
    // The raw text is cut at eight times the bound first, so that the work is linear in the
    // bound, not the input (a route whose ids shrink it more than eightfold ends short of it).
    write_route(prefix(u, MAX_URL_BYTES * 8), buf);
    (!buf.is_empty()).then_some(Value::plain(buf))
}

/// The value of `key` in `e`; `buf` holds a URL's route (see [`url`]).
pub fn value<'a>(e: &'a Event<'_>, key: Key, buf: &'a mut String) -> Option<Value<'a>> {
    match key {
        Key::Browser => browser(e),
        Key::Os => os(e),
        Key::Url => url(e, buf),
    }
}

/// Most URLs one [`Routes`] remembers before it starts over.
pub const MAX_ROUTES: usize = 4096;

/// Most bytes of URLs and routes one [`Routes`] keeps before it starts over.
pub const MAX_ROUTES_BYTES: usize = 1 << 20;

/// Longest URL (as received) whose route [`Routes`] remembers; longer ones are written
/// afresh every time.
const MAX_REMEMBERED_URL: usize = 2 * MAX_URL_BYTES;

/// The route buffer of [`url`] with a bounded memo of the routes of recent URLs: events of one
/// batch often share their URL (one page failing), and a route costs a walk over its segments,
/// several times a lookup. The answer is the same as [`url`]'s whatever the memo holds (a hit
/// is checked against the whole URL, not trusted on its hash), so it only changes the cost.
///
/// Bounded: at most [`MAX_ROUTES`] URLs and [`MAX_ROUTES_BYTES`] bytes, then it starts over
/// (and [`Routes::clear`] empties it, e.g. at the end of a batch). Its hash is seeded per memo
/// from the standard library's random source, so that text chosen to collide cannot be aimed at
/// it; a lookup's work is bounded by the memo's size either way.
#[derive(Debug)]
pub struct Routes {
    /// The current event's route when it is not remembered.
    buf: String,
    /// Hash of a URL to its entry in `entries`.
    map: std::collections::HashMap<u64, u32, std::hash::BuildHasherDefault<PassThrough>>,
    /// Per remembered URL: where it (as received) and its route are in `arena`.
    entries: Vec<(u32, u32, u32)>,
    arena: String,
    seed: u64,
}

impl Default for Routes {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(0);
        Self {
            buf: String::new(),
            map: Default::default(),
            entries: Vec::new(),
            arena: String::new(),
            seed: h.finish(),
        }
    }
}

/// The map's key is already a seeded hash: use it as is.
#[derive(Default)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
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

impl Routes {
    /// Forgets every remembered route (the memory stays).
    pub fn clear(&mut self) {
        self.map.clear();
        self.entries.clear();
        self.arena.clear();
    }

    /// URLs remembered and bytes kept (for tests of the bounds).
    pub fn usage(&self) -> (usize, usize) {
        (self.entries.len(), self.arena.len())
    }

    /// [`value`], with a URL's route taken from the memo when its URL was seen before.
    pub fn value<'a>(&'a mut self, e: &'a Event<'_>, key: Key) -> Option<Value<'a>> {
        match key {
            Key::Browser => browser(e),
            Key::Os => os(e),
            Key::Url => self.url(e),
        }
    }

    /// [`url`], remembered: keyed by the URL as the event has it (a hit reads no byte of it
    /// but to hash and compare it).
    pub fn url<'a>(&'a mut self, e: &Event<'_>) -> Option<Value<'a>> {
        self.buf.clear();
        let raw = e.request.as_ref()?.url.as_deref()?;
        if raw.len() > MAX_REMEMBERED_URL {
            return url(e, &mut self.buf);
        }
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(raw.as_bytes(), self.seed);
        if let Some(&i) = self.map.get(&h) {
            let (start, mid, end) = self.entries[i as usize];
            // As bytes: a `str` range would check both ends for character boundaries.
            if self.arena.as_bytes()[start as usize..mid as usize] == *raw.as_bytes() {
                let route = &self.arena[mid as usize..end as usize];
                return (!route.is_empty()).then_some(Value::plain(route));
            }
            // Another URL of the same hash: written afresh, not remembered.
            return url(e, &mut self.buf);
        }
        url(e, &mut self.buf);
        if self.entries.len() >= MAX_ROUTES || self.arena.len() + raw.len() + self.buf.len() > MAX_ROUTES_BYTES {
            self.clear();
        }
        let start = self.arena.len() as u32;
        self.arena.push_str(raw);
        let mid = self.arena.len() as u32;
        self.arena.push_str(&self.buf);
        let end = self.arena.len() as u32;
        self.map.insert(h, self.entries.len() as u32);
        self.entries.push((start, mid, end));
        (!self.buf.is_empty()).then_some(Value::plain(&self.buf))
    }
}

/// Where one event's value goes, decided by [`Breakdown::plan`] without changing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tally {
    /// The value is at this index already.
    At(usize),
    /// A new value, with room for it.
    New(String),
    /// No room (or the value is [`OTHER`] itself): counts as [`OTHER`].
    Other,
}

impl Breakdown {
    /// The values of `key`.
    pub fn values(&self, key: Key) -> &[ValueCount] {
        match key {
            Key::Browser => &self.browser,
            Key::Os => &self.os,
            Key::Url => &self.url,
        }
    }

    fn values_mut(&mut self, key: Key) -> &mut Vec<ValueCount> {
        match key {
            Key::Browser => &mut self.browser,
            Key::Os => &mut self.os,
            Key::Url => &mut self.url,
        }
    }

    /// True when nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.browser.is_empty() && self.os.is_empty() && self.url.is_empty()
    }

    /// Every (key, value, count), key by key.
    pub fn iter(&self) -> impl Iterator<Item = (Key, &str, u64)> + '_ {
        Key::ALL.into_iter().flat_map(move |k| self.values(k).iter().map(move |v| (k, v.value.as_str(), v.count)))
    }

    /// Where an event with value `v` of `key` counts; allocates only for a value not yet there.
    pub fn plan(&self, key: Key, v: Value<'_>) -> Tally {
        if v.is(OTHER) {
            return Tally::Other;
        }
        let values = self.values(key);
        if let Some(i) = values.iter().position(|e| v.is(&e.value)) {
            return Tally::At(i);
        }
        if named(values) < MAX_VALUES {
            Tally::New(v.text())
        } else {
            Tally::Other
        }
    }

    /// Counts one event as [`Breakdown::plan`] decided (on this breakdown, unchanged since).
    #[inline]
    pub fn apply(&mut self, key: Key, t: Tally) {
        self.add_planned(key, t, 1);
    }

    #[inline]
    fn add_planned(&mut self, key: Key, t: Tally, n: u64) {
        let values = self.values_mut(key);
        match t {
            Tally::At(i) => values[i].count += n,
            Tally::New(value) => values.push(ValueCount { value, count: n }),
            Tally::Other => match values.iter_mut().find(|e| e.value == OTHER) {
                Some(e) => e.count += n,
                None => values.push(ValueCount { value: OTHER.to_owned(), count: n }),
            },
        }
    }

    /// Adds `n` events of `value` under `key`, within the bound.
    pub fn add(&mut self, key: Key, value: &str, n: u64) {
        if value.is_empty() || n == 0 {
            return;
        }
        let t = self.plan(key, Value::plain(value));
        self.add_planned(key, t, n);
    }

    /// Adds every count of `other` (values past the bound count as [`OTHER`]): the counts of
    /// each key add up.
    pub fn merge(&mut self, other: &Breakdown) {
        for (k, v, n) in other.iter() {
            self.add(k, v, n);
        }
    }
}

/// The number of values of a key other than [`OTHER`].
fn named(values: &[ValueCount]) -> usize {
    values.len() - usize::from(values.iter().any(|e| e.value == OTHER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Contexts, NameVersion, Request};
    use proptest::prelude::*;

    fn ev<'a>(browser: Option<(&'a str, &'a str)>, os: Option<&'a str>, url: Option<&'a str>) -> Event<'a> {
        Event {
            contexts: Some(Contexts {
                browser: browser.map(|(n, v)| NameVersion { name: Some(n.into()), version: Some(v.into()) }),
                os: os.map(|n| NameVersion { name: Some(n.into()), version: None }),
                ..Default::default()
            }),
            request: url.map(|u| Request { url: Some(u.into()), ..Default::default() }),
            ..Default::default()
        }
    }

    fn text(v: Option<Value<'_>>) -> Option<String> {
        v.map(|v| v.text())
    }

    /// The route of `e`'s URL.
    fn route_of(e: &Event<'_>) -> Option<String> {
        text(url(e, &mut String::new()))
    }

    #[test]
    fn values_are_read_and_bounded() {
        let e = ev(Some(("Chrome", "120.0.6099.109")), Some("Windows"), Some("https://shop.example/cart?id=3#top"));
        assert_eq!(text(browser(&e)).as_deref(), Some("Chrome 120"));
        assert_eq!(text(os(&e)).as_deref(), Some("Windows"));
        assert_eq!(route_of(&e).as_deref(), Some("https://shop.example/cart"));
        let e = ev(Some(("Яндекс Браузер", "")), Some("iOS"), Some("https://例え.jp/パス#frag?x"));
        assert_eq!(text(browser(&e)).as_deref(), Some("Яндекс Браузер"), "no version: the name alone");
        assert_eq!(route_of(&e).as_deref(), Some("https://例え.jp/パス"));
        // Absent or empty fields contribute nothing.
        let none = ev(Some(("  ", "1")), None, Some("?q=1"));
        assert_eq!((text(browser(&none)), text(os(&none)), route_of(&none)), (None, None, None));
        assert_eq!(route_of(&Event::default()), None);
        // Long values are cut on a character boundary.
        let long_url = format!("https://x.example/{}?{}", "日本語".repeat(100), "q".repeat(10));
        let long_name = "🦀".repeat(40);
        let e = ev(Some((&long_name, "9999999999999999999999.1")), Some(&long_name), Some(&long_url));
        let u = route_of(&e).unwrap();
        assert!(u.len() <= MAX_URL_BYTES && u.len() > MAX_URL_BYTES - 4, "{}", u.len());
        assert!(long_url.starts_with(&u));
        let b = text(browser(&e)).unwrap();
        assert_eq!(b, format!("{} {}", "🦀".repeat(16), "9".repeat(MAX_MAJOR_BYTES)));
        assert_eq!(text(os(&e)).unwrap(), "🦀".repeat(16));
    }

    /// The major version read from the first bytes equals the one of the whole text, whatever
    /// the text and wherever its separator.
    #[test]
    fn major_versions_are_cut_as_from_the_whole_text() {
        let whole = |v: &str| {
            let m = &v[..memchr::memchr2(b'.', b' ', v.as_bytes()).unwrap_or(v.len())];
            prefix(m, MAX_MAJOR_BYTES).to_owned()
        };
        let mut cases: Vec<String> = ["120.0.1", "18", "", ".", " 1", "1 2.3", "日本語.1", "🦀🦀🦀🦀🦀.2"]
            .into_iter()
            .map(String::from)
            .collect();
        for n in 10..22 {
            cases.push(format!("{}.5", "9".repeat(n)));
            cases.push(format!("{}.5", "é".repeat(n / 2)));
            cases.push(format!("{} x", "🦀".repeat(n / 4)));
            cases.push("7".repeat(n));
        }
        for v in &cases {
            assert_eq!(major(v), whole(v), "{v:?}");
        }
    }

    /// The shortcut trim answers as `str::trim` on every edge: each ASCII byte at either end
    /// (the visible ones are kept, the rest decide by `str::trim`), Unicode spaces and other
    /// characters at either end, one-byte and empty strings.
    #[test]
    fn the_shortcut_trim_answers_as_str_trim() {
        let mut cases: Vec<String> =
            ["", " ", "a", " a", "a ", "\u{a0}a", "a\u{3000}", "\u{85}", "é", "日本", "a\u{2028}", "\u{feff}a"]
                .into_iter()
                .map(String::from)
                .collect();
        for c in (0u8..0x80).map(char::from).chain(['\u{a0}', '\u{1680}', '\u{2000}', '\u{202f}', 'é', '🦀']) {
            cases.push(c.to_string());
            cases.push(format!("{c}x"));
            cases.push(format!("x{c}"));
            cases.push(format!("{c}Chrome 120{c}"));
        }
        for s in &cases {
            assert_eq!(trim(s), s.trim(), "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn the_shortcut_trim_matches_str_trim(s in "[ \t\n\u{b}\u{c}\r\u{85}\u{a0}\u{3000}a-zA-Z0-9~!é日🦀]{0,12}") {
            prop_assert_eq!(trim(&s), s.trim());
        }

        #[test]
        fn major_versions_match_the_whole_text(v in "[0-9a-z. é🦀]{0,40}") {
            let m = &v[..memchr::memchr2(b'.', b' ', v.as_bytes()).unwrap_or(v.len())];
            prop_assert_eq!(major(&v), prefix(m, MAX_MAJOR_BYTES));
        }
    }

    #[test]
    fn values_compare_without_being_built() {
        let v = Value { head: "Chrome", tail: "120" };
        assert!(v.is("Chrome 120"));
        for s in ["Chrome", "Chrome120", "Chrome 12", "Chrome_120", "Chrom 1200", "", "Chrome 120 "] {
            assert!(!v.is(s), "{s}");
        }
        assert!(Value::plain("ü").is("ü"));
    }

    /// The inline comparison answers as `==` at every length (each branch and its edges) and
    /// for a difference at every position.
    #[test]
    fn short_text_compares_as_equality() {
        for n in 0..=40usize {
            let a: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(same(&a, &a.clone()), "{n}");
            for at in 0..n {
                let mut b = a.clone();
                b[at] ^= 0x80;
                assert!(!same(&a, &b), "{n} at {at}");
            }
            let longer = [a.as_slice(), b"x"].concat();
            assert!(!same(&a, &longer) && !same(&longer, &a), "{n}");
        }
    }

    proptest! {
        #[test]
        fn values_compare_as_their_text(head in "[a-c é日🦀]{0,12}", tail in "[0-9.é]{0,5}", s in "[a-c0-9 .é日🦀]{0,20}") {
            let v = Value { head: &head, tail: &tail };
            prop_assert_eq!(v.is(&s), v.text() == s);
            prop_assert!(v.is(&v.text()));
            prop_assert_eq!(same(head.as_bytes(), s.as_bytes()), head == s);
        }
    }

    #[test]
    fn past_ten_values_events_count_as_other() {
        let mut b = Breakdown::default();
        for i in 0..25u64 {
            let u = format!("/p/{}", i % 15);
            let t = b.plan(Key::Url, Value::plain(&u));
            b.apply(Key::Url, t);
        }
        assert_eq!(b.url.len(), MAX_VALUES + 1);
        assert_eq!(b.url.iter().map(|v| v.count).sum::<u64>(), 25);
        assert_eq!(b.url[0], ValueCount { value: "/p/0".into(), count: 2 });
        assert_eq!(b.url[9], ValueCount { value: "/p/9".into(), count: 2 });
        // /p/10 to /p/14, once each, came when ten values were there.
        assert_eq!(b.url[10], ValueCount { value: OTHER.into(), count: 5 });
        // A known value still counts as itself; a literal "(other)" counts as other.
        assert_eq!(b.plan(Key::Url, Value::plain("/p/3")), Tally::At(3));
        assert_eq!(b.plan(Key::Url, Value::plain(OTHER)), Tally::Other);
        assert_eq!(b.plan(Key::Os, Value::plain("Linux")), Tally::New("Linux".into()));
    }

    #[test]
    fn merge_adds_counts_within_the_bound() {
        let mut a = Breakdown::default();
        let mut b = Breakdown::default();
        a.add(Key::Browser, "Chrome 120", 3);
        a.add(Key::Os, "Windows", 3);
        b.add(Key::Browser, "Chrome 120", 2);
        b.add(Key::Browser, "Firefox 121", 1);
        for i in 0..12 {
            b.add(Key::Url, &format!("/u/{i}"), 1);
        }
        a.merge(&b);
        assert_eq!(
            a.browser.iter().map(|v| (v.value.as_str(), v.count)).collect::<Vec<_>>(),
            [("Chrome 120", 5), ("Firefox 121", 1)]
        );
        assert_eq!(a.os.len(), 1);
        assert_eq!(a.url.len(), MAX_VALUES + 1);
        assert_eq!(a.url.last().map(|v| (v.value.as_str(), v.count)), Some((OTHER, 2)));
    }

    #[test]
    fn a_record_without_a_breakdown_decodes_and_an_empty_one_is_small() {
        let b: Breakdown = serde_json::from_str("{}").unwrap();
        assert!(b.is_empty());
        assert_eq!(serde_json::to_string(&Breakdown::default()).unwrap(), "{}");
    }

    proptest! {
        /// Counting event by event and merging partial breakdowns keep every count, at most
        /// MAX_VALUES named values per key, whatever the text.
        #[test]
        fn counts_are_kept_and_bounded(
            a in proptest::collection::vec(("\\PC{0,12}", 1u64..4), 0..40),
            b in proptest::collection::vec(("[a-c日本🦀\u{301}]{1,3}", 1u64..4), 0..40),
        ) {
            let (mut x, mut y) = (Breakdown::default(), Breakdown::default());
            for (v, n) in &a {
                x.add(Key::Url, v, *n);
            }
            for (v, n) in &b {
                y.add(Key::Url, v, *n);
            }
            let sum = |s: &[(String, u64)]| s.iter().filter(|(v, _)| !v.is_empty()).map(|(_, n)| n).sum::<u64>();
            prop_assert_eq!(x.url.iter().map(|v| v.count).sum::<u64>(), sum(&a));
            x.merge(&y);
            prop_assert_eq!(x.url.iter().map(|v| v.count).sum::<u64>(), sum(&a) + sum(&b));
            prop_assert!(named(&x.url) <= MAX_VALUES);
            prop_assert!(x.url.len() <= MAX_VALUES + 1);
            let mut seen = std::collections::HashSet::new();
            prop_assert!(x.url.iter().all(|v| seen.insert(v.value.clone()) && !v.value.is_empty()));
        }
    }

    /// Id segments of the path read as placeholders; the host, route words and non-ids stay;
    /// long routes are cut on a character boundary.
    #[test]
    fn urls_read_as_routes_with_id_segments_replaced() {
        let route = |u: &str| {
            let t = route_of(&ev(None, None, Some(u))).unwrap();
            assert!(t.len() <= MAX_URL_BYTES, "{u}: {} bytes", t.len());
            t
        };
        assert_eq!(route("https://shop.example/carts/8812/items?x=1"), "https://shop.example/carts/<int>/items");
        assert_eq!(route("https://shop.example/carts/9/items#top"), "https://shop.example/carts/<int>/items");
        assert_eq!(
            route("https://10.0.0.1:8080/o/550e8400-e29b-41d4-a716-446655440000/f/deadbeef42"),
            "https://10.0.0.1:8080/o/<id>/f/<id>"
        );
        assert_eq!(route("/api/v2/users/42/"), "/api/v2/users/<int>/");
        assert_eq!(route("/blog/2024-recap/cafe"), "/blog/2024-recap/cafe", "short or word-like segments stay");
        assert_eq!(route("https://例え.jp/パス/123"), "https://例え.jp/パス/<int>");
        assert_eq!(route("https://1234.example"), "https://1234.example", "the host is not a path segment");
        // Long: cut to the bound on a character boundary, ids or not.
        let long = format!("https://x.example/{}", "日本語/1/".repeat(200));
        assert!(route(&long).starts_with("https://x.example/日本語/<int>/日本語/<int>/"));
        let ones = format!("/{}", "1/".repeat(5000));
        assert_eq!(route(&ones).len(), MAX_URL_BYTES);
        // Two events of one route are one value of the breakdown.
        let (mut b, mut buf) = (Breakdown::default(), String::new());
        for u in ["/carts/1", "/carts/22", "/carts/333"] {
            let e = ev(None, None, Some(u));
            let t = b.plan(Key::Url, url(&e, &mut buf).unwrap());
            b.apply(Key::Url, t);
        }
        assert_eq!(b.url, [ValueCount { value: "/carts/<int>".into(), count: 3 }]);
        // A kept buffer holds only the current event's route.
        assert!(url(&ev(None, None, None), &mut buf).is_none() && buf.is_empty());
    }

    /// The memo answers as [`url`] does: on first sight, when remembered, for URLs too long
    /// to remember, and when another URL holds the same hash.
    #[test]
    fn remembered_routes_are_the_routes() {
        let mut memo = Routes::default();
        let long = format!("https://x.example/{}", "日本語/1/".repeat(200));
        let urls = [
            "https://shop.example/carts/8812/items?x=1",
            "https://shop.example/carts/9/items#top",
            "https://例え.jp/パス/123",
            "?only-a-query",
            "  ",
            "/api/v2/users/42/",
            long.as_str(),
        ];
        for _ in 0..3 {
            for u in urls {
                let e = ev(None, None, Some(u));
                assert_eq!(text(memo.url(&e)), route_of(&e), "{u}");
                assert_eq!(text(memo.value(&e, Key::Url)), route_of(&e), "{u}");
            }
            assert_eq!(text(memo.url(&Event::default())), None);
        }
        // Remembered once each: the empty routes too, not the long URL.
        assert_eq!(memo.usage().0, urls.len() - 1);
        // A hash held by another URL: that URL's route is not handed out.
        let e = ev(None, None, Some("/carts/1/x"));
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(b"/carts/1/x", memo.seed);
        memo.map.insert(h, 0);
        assert_eq!(text(memo.url(&e)).as_deref(), Some("/carts/<int>/x"));
        assert_eq!(text(memo.url(&e)).as_deref(), Some("/carts/<int>/x"));
    }

    /// Many distinct URLs: the memo starts over within its bounds, and answers as [`url`].
    #[test]
    fn the_route_memo_is_bounded() {
        let mut memo = Routes::default();
        // Short URLs reach the bound of entries, long ones the bound of bytes.
        for pad in [String::new(), "p".repeat(MAX_REMEMBERED_URL - 40)] {
            let mut most = 0;
            for i in 0..3 * MAX_ROUTES {
                let u = format!("https://h{}.example/{pad}/{i}", i % 7);
                let e = ev(None, None, Some(&u));
                assert_eq!(text(memo.url(&e)), route_of(&e));
                let (n, bytes) = memo.usage();
                assert!(n <= MAX_ROUTES && bytes <= MAX_ROUTES_BYTES, "{n} {bytes}");
                most = most.max(if pad.is_empty() { n } else { bytes });
            }
            let bound = if pad.is_empty() { MAX_ROUTES } else { MAX_ROUTES_BYTES - 2 * MAX_REMEMBERED_URL };
            assert!(most >= bound, "the memo filled up to its bound before starting over: {most}");
            memo.clear();
        }
        memo.clear();
        assert_eq!(memo.usage(), (0, 0));
    }

    proptest! {
        /// Any text, repeated or not: the memo's route is [`url`]'s.
        #[test]
        fn the_route_memo_answers_as_url(urls in proptest::collection::vec("(https?://[a-z0-9.]{0,8})?(/(\\PC{0,6}|[0-9]{1,4}|[0-9a-f-]{8,12})){0,5}[?#]?\\PC{0,4}", 1..20), order in proptest::collection::vec(0usize..20, 0..60)) {
            let mut memo = Routes::default();
            for i in (0..urls.len()).chain(order.into_iter().map(|i| i % urls.len())) {
                let e = ev(None, None, Some(&urls[i]));
                prop_assert_eq!(text(memo.url(&e)), route_of(&e));
            }
        }
    }
}
