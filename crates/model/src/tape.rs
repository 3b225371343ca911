//! The event read straight off simd-json's tape, without serde: the hot path's reader.
//!
//! serde's derived visitors over simd-json's deserializer cost about as much again as building
//! the tape (a visitor, a key match and a few checks per value, through several layers of
//! generic calls). This reader walks the tape's nodes once, matches each key against the
//! event's field names, and skips what it does not know in one step (a container's node count).
//!
//! It is an exact shortcut, not a second definition of the format: it accepts only documents
//! the serde path reads, and builds the same [`Event`]. Whenever the serde path could answer
//! differently, or would answer with an error (a value of another type, a duplicate field, a
//! struct given as an array, a number out of range), it gives up (`None`) and the caller
//! deserializes the same tape with serde, which produces the answer and the error message as
//! before. Tests hold the two equal on the fixtures and on random documents.
//!
//! Its recursion follows the event's shape (at most six containers deep: event, exception
//! or thread list, exception or thread, stack trace, frame list, frame), never the document's; unknown values are
//! skipped by their node count, not visited, and only they are checked against
//! [`MAX_DEPTH`] (nothing else can be deeper than the shape). Linear in the number of nodes.

use crate::event::{
    Contexts, DebugImage, DebugMeta, Device, Event, Exception, Frame, LogEntry, Mechanism, NameVersion, Request, Sdk,
    Stacktrace, Str, Thread, User, MAX_DEBUG_IMAGES, MAX_TAGS, MAX_THREADS,
};
use crate::json::{tape_depth, MAX_DEPTH};
use simd_json::prelude::ValueAsScalar;
use simd_json::{Node, StaticNode};
use std::borrow::Cow;

/// Reads the event of a tape whose first node is its top-level object into `out` (empty on
/// entry), or `None` when the serde path must decide (`out` then holds part of the event). Its
/// lists are filled into the allocations `spare` keeps, if any. In place: the event is large
/// (about 600 bytes), and moving it through the callers' return values cost more than
/// reading some of its fields.
#[inline(never)]
pub(crate) fn event<'a>(nodes: &[Node<'a>], spare: &mut Spare, out: &mut Event<'a>) -> Option<()> {
    Cur { nodes, i: 0, depth: 0, spare }.event(out)
}

/// Most spare lists of one kind kept, and the largest capacity kept (a list longer than that
/// is freed as before): bounds what a parser holds between events.
const SPARE_LISTS: usize = 16;
const SPARE_CAPACITY: usize = 256;

/// The allocations of parsed events' lists (exceptions, frames, tags and headers), emptied and
/// kept for the next event ([`crate::EventParser::recycle`]): the reader fills them instead of
/// allocating. Their elements are dropped when an event is recycled; only the memory stays.
#[derive(Default)]
pub(crate) struct Spare {
    exceptions: Vec<Exception<'static>>,
    threads: Vec<Thread<'static>>,
    frames: Vec<Vec<Frame<'static>>>,
    pairs: Vec<Vec<(Str<'static>, Str<'static>)>>,
}

/// An emptied list as a list of another type of the same layout (here: the same struct with
/// other lifetimes), keeping its allocation: the standard library collects a `Vec`'s
/// `into_iter` in place when the layouts match (tested below), without `unsafe` here.
#[inline(always)]
fn recast<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

/// Keeps `v`'s allocation in `pool`, within the bounds.
#[inline(always)]
fn keep<T, U>(pool: &mut Vec<Vec<U>>, v: Vec<T>) {
    if v.capacity() > 0 && v.capacity() <= SPARE_CAPACITY && pool.len() < SPARE_LISTS {
        pool.push(recast(v));
    }
}

impl Spare {
    /// Keeps the allocations of `e`'s lists (left empty).
    pub(crate) fn keep(&mut self, e: &mut Event<'_>) {
        for x in &mut e.exception {
            if let Some(s) = x.stacktrace.as_mut() {
                keep(&mut self.frames, std::mem::take(&mut s.frames));
            }
        }
        if e.exception.capacity() <= SPARE_CAPACITY && e.exception.capacity() > self.exceptions.capacity() {
            self.exceptions = recast(std::mem::take(&mut e.exception));
        }
        for t in &mut e.threads {
            if let Some(s) = t.stacktrace.as_mut() {
                keep(&mut self.frames, std::mem::take(&mut s.frames));
            }
        }
        if e.threads.capacity() <= SPARE_CAPACITY && e.threads.capacity() > self.threads.capacity() {
            self.threads = recast(std::mem::take(&mut e.threads));
        }
        keep(&mut self.pairs, std::mem::take(&mut e.tags));
        if let Some(r) = e.request.as_mut() {
            keep(&mut self.pairs, std::mem::take(&mut r.headers));
        }
    }

    // Taken out as they are: a list of `'static` elements is a list of `'a` ones (`Vec` and
    // the event's types are covariant), and the lists were emptied when kept. Only keeping
    // needs the recast, the other way.
    fn exceptions<'a>(&mut self) -> Vec<Exception<'a>> {
        std::mem::take(&mut self.exceptions)
    }

    fn threads<'a>(&mut self) -> Vec<Thread<'a>> {
        std::mem::take(&mut self.threads)
    }

    fn frames<'a>(&mut self) -> Vec<Frame<'a>> {
        self.frames.pop().unwrap_or_default()
    }

    fn pairs<'a>(&mut self) -> Vec<(Str<'a>, Str<'a>)> {
        self.pairs.pop().unwrap_or_default()
    }
}

/// An optional string node (`None`: another type, serde decides).
#[inline(always)]
fn str_of<'a>(n: &Node<'a>) -> Option<Option<Str<'a>>> {
    match *n {
        Node::String(s) => Some(Some(Cow::Borrowed(s))),
        Node::Static(StaticNode::Null) => Some(None),
        _ => None,
    }
}

/// An optional string, or an integer as its decimal text (a user or thread id).
#[inline(always)]
fn str_or_number_of<'a>(n: &Node<'a>) -> Option<Option<Str<'a>>> {
    match *n {
        Node::String(s) => Some(Some(Cow::Borrowed(s))),
        Node::Static(StaticNode::Null) => Some(None),
        Node::Static(StaticNode::I64(v)) => Some(Some(Cow::Owned(v.to_string()))),
        Node::Static(StaticNode::U64(v)) => Some(Some(Cow::Owned(v.to_string()))),
        _ => None,
    }
}

/// An optional boolean node.
#[inline(always)]
fn bool_of(n: &Node<'_>) -> Option<Option<bool>> {
    match *n {
        Node::Static(StaticNode::Null) => Some(None),
        Node::Static(StaticNode::Bool(b)) => Some(Some(b)),
        _ => None,
    }
}

/// `Option<u32>` as serde reads it from simd-json (the same conversion).
#[inline(always)]
fn u32_of(n: &Node<'_>) -> Option<Option<u32>> {
    match *n {
        Node::Static(StaticNode::Null) => Some(None),
        Node::Static(s) => s.as_u32().map(Some),
        _ => None,
    }
}

/// The nodes after `value`, a value of an object read as one slice (`body`: the object's
/// nodes; `tail`: those after `value`'s own node): past everything nested in it. A container
/// is checked against [`MAX_DEPTH`] as [`Cur::skip`] checks it, `depth` being the objects and
/// arrays open around it (`None` past the bound: the caller's full check refuses the event).
#[inline(always)]
fn skip_value<'t, 'a>(
    body: &'t [Node<'a>],
    tail: &'t [Node<'a>],
    value: &Node<'a>,
    depth: usize,
) -> Option<&'t [Node<'a>]> {
    match *value {
        Node::Object { count, .. } | Node::Array { count, .. } => {
            let at = body.len() - tail.len() - 1;
            let nested = body.get(at..at.checked_add(count)?.checked_add(1)?)?;
            tape_depth(nested, MAX_DEPTH.checked_sub(depth)?).ok()?;
            tail.get(count..)
        }
        _ => Some(tail),
    }
}

/// A position on the tape.
struct Cur<'t, 'a> {
    nodes: &'t [Node<'a>],
    i: usize,
    /// Objects and arrays open at `i` (the event's own object is 1).
    depth: usize,
    /// Allocations for the event's lists.
    spare: &'t mut Spare,
}

/// Marks a field as read; `None` when it was read before (serde refuses duplicate fields).
fn mark(seen: &mut u32, bit: u32) -> Option<()> {
    if *seen & bit != 0 {
        return None;
    }
    *seen |= bit;
    Some(())
}

impl<'a> Cur<'_, 'a> {
    fn next(&mut self) -> Option<Node<'a>> {
        let n = *self.nodes.get(self.i)?;
        self.i += 1;
        Some(n)
    }

    /// Skips one value, with everything nested in it. A skipped container is the only place
    /// where the document can nest deeper than the event's shape: it is checked against
    /// [`MAX_DEPTH`] here (`None` past it: the caller's full check refuses the event).
    fn skip(&mut self) -> Option<()> {
        let at = self.i;
        if let Node::Object { count, .. } | Node::Array { count, .. } = self.next()? {
            self.i = self.i.checked_add(count).filter(|&i| i <= self.nodes.len())?;
            tape_depth(self.nodes.get(at..self.i)?, MAX_DEPTH.checked_sub(self.depth)?).ok()?;
        }
        Some(())
    }

    fn key(&mut self) -> Option<&'a str> {
        match self.next()? {
            Node::String(s) => Some(s),
            _ => None,
        }
    }

    /// An object's number of keys; `None` for anything else (serde would read a struct from
    /// an array by position, or refuse the value: either way it decides).
    fn object(&mut self) -> Option<usize> {
        match self.next()? {
            Node::Object { len, .. } => {
                self.depth += 1;
                Some(len)
            }
            _ => None,
        }
    }

    /// An array's number of elements (`None` for anything else).
    fn array(&mut self) -> Option<usize> {
        match self.next()? {
            Node::Array { len, .. } => {
                self.depth += 1;
                Some(len)
            }
            _ => None,
        }
    }

    /// Leaves the object or array [`Cur::object`] or [`Cur::array`] entered.
    fn close<T>(&mut self, value: T) -> Option<T> {
        self.depth -= 1;
        Some(value)
    }

    /// Whether the next value is `null` (and if so, reads it).
    fn null(&mut self) -> bool {
        let null = matches!(self.nodes.get(self.i), Some(Node::Static(StaticNode::Null)));
        self.i += usize::from(null);
        null
    }

    /// `null` or a struct filled in by `fill`, into `slot` (in place: no copy of the struct).
    fn opt<T: Default>(
        &mut self,
        slot: &mut Option<T>,
        fill: impl FnOnce(&mut Self, &mut T) -> Option<()>,
    ) -> Option<()> {
        if self.null() {
            *slot = None;
            return Some(());
        }
        fill(self, slot.insert(T::default()))
    }

    /// `null`, or an array of structs each filled in by `fill` in place (a list, `null` read
    /// as empty), into `out` (empty, perhaps with capacity).
    fn list<T: Default>(
        &mut self,
        mut out: Vec<T>,
        mut fill: impl FnMut(&mut Self, &mut T) -> Option<()>,
    ) -> Option<Vec<T>> {
        if self.null() {
            return Some(out);
        }
        let len = self.array()?;
        // Written in place (a `push` of a default copies a frame's 170 bytes with memcpy), the
        // defaults in steps: one call of `resize_with` per step, not per element (a frame's
        // call cost about 40 instructions). Never more than 8 elements, or as many as were read,
        // ahead of those read, whatever `len` says: bounded memory on a hostile array.
        let base = out.len();
        for k in base..base.checked_add(len)? {
            if k == out.len() {
                out.resize_with((base + len).min(k.max(base + 4) * 2 - base), T::default);
            }
            fill(self, out.get_mut(k)?)?;
        }
        self.close(out)
    }

    /// [`Cur::list`] that keeps at most `max` elements and skips the rest, whatever their
    /// values (as [`crate::event::de::threads`] reads them).
    fn bounded_list<T: Default>(
        &mut self,
        mut out: Vec<T>,
        max: usize,
        mut fill: impl FnMut(&mut Self, &mut T) -> Option<()>,
    ) -> Option<Vec<T>> {
        if self.null() {
            return Some(out);
        }
        let len = self.array()?;
        out.reserve(len.min(max).min(64));
        for k in 0..len {
            if k < max {
                out.resize_with(out.len() + 1, T::default);
                fill(self, out.last_mut()?)?;
            } else {
                self.skip()?;
            }
        }
        self.close(out)
    }

    fn opt_str(&mut self) -> Option<Option<Str<'a>>> {
        str_of(&self.next()?)
    }

    /// A string, or an integer as its decimal text (a thread id).
    fn opt_str_or_number(&mut self) -> Option<Option<Str<'a>>> {
        str_or_number_of(&self.next()?)
    }

    fn opt_bool(&mut self) -> Option<Option<bool>> {
        bool_of(&self.next()?)
    }

    /// [`crate::time::deserialize_opt_millis`] on a tape node.
    fn opt_millis(&mut self) -> Option<Option<i64>> {
        match self.next()? {
            Node::Static(StaticNode::Null) => Some(None),
            Node::Static(StaticNode::I64(v)) => v.checked_mul(1000).map(Some),
            Node::Static(StaticNode::U64(v)) => i64::try_from(v).ok().and_then(|s| s.checked_mul(1000)).map(Some),
            Node::Static(StaticNode::F64(v)) => crate::time::millis_of_secs(v).map(Some),
            Node::String(s) => crate::time::parse_rfc3339(s).map(Some),
            _ => None,
        }
    }

    /// Tags and headers: `null` or an object of strings, at most [`MAX_TAGS`] pairs kept (the
    /// rest skipped, whatever their values). Read over the object's nodes as one slice, as
    /// [`Cur::scalars`] reads.
    fn pairs(&mut self) -> Option<Vec<(Str<'a>, Str<'a>)>> {
        if self.null() {
            return Some(Vec::new());
        }
        let Node::Object { len, .. } = *self.nodes.get(self.i)? else { return None };
        let mut out = self.spare.pairs();
        out.reserve(len.min(64));
        self.object_slice(|k, key, value| {
            if k >= MAX_TAGS {
                return Some(false);
            }
            let Node::String(v) = *value else { return None };
            out.push((Cow::Borrowed(key), Cow::Borrowed(v)));
            Some(true)
        })?;
        Some(out)
    }

    /// A custom fingerprint: `null` or an array of strings.
    fn strs(&mut self) -> Option<Vec<Str<'a>>> {
        if self.null() {
            return Some(Vec::new());
        }
        let len = self.array()?;
        let mut out = Vec::with_capacity(len.min(16));
        for _ in 0..len {
            let Node::String(s) = self.next()? else { return None };
            out.push(Cow::Borrowed(s));
        }
        self.close(out)
    }

    fn event(&mut self, e: &mut Event<'a>) -> Option<()> {
        let len = self.object()?;
        let mut seen = 0u32;
        for _ in 0..len {
            let bit = match self.key()? {
                "event_id" => {
                    e.event_id = self.opt_str()?;
                    1
                }
                "project" => {
                    e.project = self.opt_str()?;
                    1 << 1
                }
                "timestamp" => {
                    e.timestamp = self.opt_millis()?;
                    1 << 2
                }
                "platform" => {
                    e.platform = self.opt_str()?;
                    1 << 3
                }
                "level" => {
                    e.level = self.opt_str()?;
                    1 << 4
                }
                "release" => {
                    e.release = self.opt_str()?;
                    1 << 5
                }
                "environment" => {
                    e.environment = self.opt_str()?;
                    1 << 6
                }
                "logger" => {
                    e.logger = self.opt_str()?;
                    1 << 7
                }
                "server_name" => {
                    e.server_name = self.opt_str()?;
                    1 << 8
                }
                "message" => {
                    e.message = self.opt_str()?;
                    1 << 9
                }
                "logentry" => {
                    self.opt(&mut e.logentry, Self::logentry)?;
                    1 << 10
                }
                "exception" => {
                    let out = self.spare.exceptions();
                    e.exception = self.list(out, Self::exception)?;
                    1 << 11
                }
                "fingerprint" => {
                    e.fingerprint = self.strs()?;
                    1 << 12
                }
                "user" => {
                    self.opt(&mut e.user, Self::user)?;
                    1 << 13
                }
                "tags" => {
                    e.tags = self.pairs()?;
                    1 << 14
                }
                "request" => {
                    self.opt(&mut e.request, Self::request)?;
                    1 << 15
                }
                "contexts" => {
                    self.opt(&mut e.contexts, Self::contexts)?;
                    1 << 16
                }
                "sdk" => {
                    self.opt(&mut e.sdk, Self::sdk)?;
                    1 << 17
                }
                "threads" => {
                    let out = self.spare.threads();
                    e.threads = self.bounded_list(out, MAX_THREADS, Self::thread)?;
                    1 << 18
                }
                "debug_meta" => {
                    self.opt(&mut e.debug_meta, Self::debug_meta)?;
                    1 << 19
                }
                _ => {
                    self.skip()?;
                    continue;
                }
            };
            mark(&mut seen, bit)?;
        }
        self.close(())
    }

    fn logentry(&mut self, l: &mut LogEntry<'a>) -> Option<()> {
        self.scalars(|key, value| {
            Some(match key {
                "message" => {
                    l.message = str_of(value)?;
                    1
                }
                "formatted" => {
                    l.formatted = str_of(value)?;
                    2
                }
                _ => 0,
            })
        })
    }

    fn exception(&mut self, x: &mut Exception<'a>) -> Option<()> {
        let len = self.object()?;
        let mut seen = 0u32;
        for _ in 0..len {
            let bit = match self.key()? {
                "type" => {
                    x.ty = self.opt_str()?;
                    1
                }
                "value" => {
                    x.value = self.opt_str()?;
                    2
                }
                "module" => {
                    x.module = self.opt_str()?;
                    4
                }
                "mechanism" => {
                    self.opt(&mut x.mechanism, Self::mechanism)?;
                    8
                }
                "stacktrace" => {
                    self.opt(&mut x.stacktrace, Self::stacktrace)?;
                    16
                }
                "thread_id" => {
                    x.thread_id = self.opt_str_or_number()?;
                    32
                }
                _ => {
                    self.skip()?;
                    continue;
                }
            };
            mark(&mut seen, bit)?;
        }
        self.close(())
    }

    fn thread(&mut self, t: &mut Thread<'a>) -> Option<()> {
        let len = self.object()?;
        let mut seen = 0u32;
        for _ in 0..len {
            let bit = match self.key()? {
                "id" => {
                    t.id = self.opt_str_or_number()?;
                    1
                }
                "name" => {
                    t.name = self.opt_str()?;
                    2
                }
                "crashed" => {
                    t.crashed = self.opt_bool()?;
                    4
                }
                "current" => {
                    t.current = self.opt_bool()?;
                    8
                }
                "stacktrace" => {
                    self.opt(&mut t.stacktrace, Self::stacktrace)?;
                    16
                }
                _ => {
                    self.skip()?;
                    continue;
                }
            };
            mark(&mut seen, bit)?;
        }
        self.close(())
    }

    fn mechanism(&mut self, m: &mut Mechanism<'a>) -> Option<()> {
        self.scalars(|key, value| {
            Some(match key {
                "type" => {
                    m.ty = str_of(value)?;
                    1
                }
                "handled" => {
                    m.handled = bool_of(value)?;
                    2
                }
                "synthetic" => {
                    m.synthetic = bool_of(value)?;
                    4
                }
                _ => 0,
            })
        })
    }

    fn stacktrace(&mut self, s: &mut Stacktrace<'a>) -> Option<()> {
        let len = self.object()?;
        let mut seen = 0u32;
        for _ in 0..len {
            if self.key()? == "frames" {
                let out = self.spare.frames();
                s.frames = self.list(out, Self::frame)?;
                mark(&mut seen, 1)?;
            } else {
                self.skip()?;
            }
        }
        self.close(())
    }

    /// An object whose known fields are all scalars (a frame, the most frequent object: about
    /// 8.6 an event in the fixture; a user, a mechanism, ...), read over its nodes as one
    /// slice: the loop keeps its place in a register and checks no bound per node but the
    /// slice pattern's. `field` reads a key's value into its place and answers the key's bit
    /// (`Some(0)`: a key it does not know, skipped; `None`: serde decides). The same answers
    /// as reading node by node (the same node functions, duplicate and depth checks); a tape
    /// whose counts do not add up is left to serde.
    #[inline(always)]
    fn scalars(&mut self, mut field: impl FnMut(&'a str, &Node<'a>) -> Option<u32>) -> Option<()> {
        let mut seen = 0u32;
        self.object_slice(|_, key, value| {
            let bit = field(key, value)?;
            if bit == 0 {
                return Some(false);
            }
            mark(&mut seen, bit)?;
            Some(true)
        })
    }

    /// The object at the cursor read over its nodes as one slice (what [`Cur::scalars`] and
    /// [`Cur::pairs`] share): `each(k, key, value)` reads pair `k`'s value (`Some(true)`), or
    /// has it skipped with the depth check (`Some(false)`); `None` leaves the event to serde,
    /// as does a tape whose counts do not add up. The cursor moves past the object on success.
    #[inline(always)]
    fn object_slice(&mut self, mut each: impl FnMut(usize, &'a str, &Node<'a>) -> Option<bool>) -> Option<()> {
        let Node::Object { len, count } = *self.nodes.get(self.i)? else { return None };
        let start = self.i + 1;
        let end = start.checked_add(count)?;
        let body = self.nodes.get(start..end)?;
        let mut rest = body;
        for k in 0..len {
            let [Node::String(key), value, tail @ ..] = rest else { return None };
            rest = if each(k, key, value)? {
                tail
            } else {
                // Inside this object: one level deeper than the cursor.
                skip_value(body, tail, value, self.depth + 1)?
            };
        }
        if !rest.is_empty() {
            return None;
        }
        self.i = end;
        Some(())
    }

    fn frame(&mut self, f: &mut Frame<'a>) -> Option<()> {
        self.scalars(|key, value| {
            Some(match key {
                "function" => {
                    f.function = str_of(value)?;
                    1
                }
                "filename" => {
                    f.filename = str_of(value)?;
                    1 << 2
                }
                "lineno" => {
                    f.lineno = u32_of(value)?;
                    1 << 5
                }
                "colno" => {
                    f.colno = u32_of(value)?;
                    1 << 6
                }
                "in_app" => {
                    f.in_app = bool_of(value)?;
                    1 << 7
                }
                "module" => {
                    f.module = str_of(value)?;
                    1 << 1
                }
                "abs_path" => {
                    f.abs_path = str_of(value)?;
                    1 << 3
                }
                "package" => {
                    f.package = str_of(value)?;
                    1 << 4
                }
                "instruction_addr" => {
                    f.instruction_addr = str_of(value)?;
                    1 << 8
                }
                _ => 0,
            })
        })
    }

    fn user(&mut self, u: &mut User<'a>) -> Option<()> {
        self.scalars(|key, value| {
            Some(match key {
                "id" => {
                    u.id = str_or_number_of(value)?;
                    1
                }
                "email" => {
                    u.email = str_of(value)?;
                    2
                }
                "username" => {
                    u.username = str_of(value)?;
                    4
                }
                "ip_address" => {
                    u.ip_address = str_of(value)?;
                    8
                }
                _ => 0,
            })
        })
    }

    fn request(&mut self, r: &mut Request<'a>) -> Option<()> {
        let len = self.object()?;
        let mut seen = 0u32;
        for _ in 0..len {
            let bit = match self.key()? {
                "url" => {
                    r.url = self.opt_str()?;
                    1
                }
                "method" => {
                    r.method = self.opt_str()?;
                    2
                }
                "query_string" => {
                    r.query_string = self.opt_str()?;
                    4
                }
                "headers" => {
                    r.headers = self.pairs()?;
                    8
                }
                _ => {
                    self.skip()?;
                    continue;
                }
            };
            mark(&mut seen, bit)?;
        }
        self.close(())
    }

    fn contexts(&mut self, c: &mut Contexts<'a>) -> Option<()> {
        let len = self.object()?;
        let mut seen = 0u32;
        for _ in 0..len {
            let bit = match self.key()? {
                "browser" => {
                    self.opt(&mut c.browser, Self::name_version)?;
                    1
                }
                "os" => {
                    self.opt(&mut c.os, Self::name_version)?;
                    2
                }
                "runtime" => {
                    self.opt(&mut c.runtime, Self::name_version)?;
                    4
                }
                "device" => {
                    self.opt(&mut c.device, Self::device)?;
                    8
                }
                _ => {
                    self.skip()?;
                    continue;
                }
            };
            mark(&mut seen, bit)?;
        }
        self.close(())
    }

    fn name_version(&mut self, v: &mut NameVersion<'a>) -> Option<()> {
        (v.name, v.version) = self.two(|k| match k {
            "name" => 1,
            "version" => 2,
            _ => 0,
        })?;
        Some(())
    }

    fn device(&mut self, v: &mut Device<'a>) -> Option<()> {
        (v.family, v.model) = self.two(|k| match k {
            "family" => 1,
            "model" => 2,
            _ => 0,
        })?;
        Some(())
    }

    fn debug_meta(&mut self, m: &mut DebugMeta<'a>) -> Option<()> {
        let len = self.object()?;
        let mut seen = 0u32;
        for _ in 0..len {
            match self.key()? {
                "images" => {
                    m.images = self.bounded_list(Vec::new(), MAX_DEBUG_IMAGES, Self::debug_image)?;
                    mark(&mut seen, 1)?;
                }
                _ => self.skip()?,
            }
        }
        self.close(())
    }

    fn debug_image(&mut self, d: &mut DebugImage<'a>) -> Option<()> {
        self.scalars(|key, value| {
            Some(match key {
                "type" => {
                    d.ty = str_of(value)?;
                    1
                }
                "code_file" => {
                    d.code_file = str_of(value)?;
                    1 << 1
                }
                "debug_id" => {
                    d.debug_id = str_of(value)?;
                    1 << 2
                }
                _ => 0,
            })
        })
    }

    fn sdk(&mut self, v: &mut Sdk<'a>) -> Option<()> {
        (v.name, v.version) = self.two(|k| match k {
            "name" => 1,
            "version" => 2,
            _ => 0,
        })?;
        Some(())
    }

    /// An object of two optional string fields, `a` and `b` (`which` tells a key's field:
    /// 1, 2 or 0 for another key; a match on constants, cheaper than comparing with
    /// strings passed in).
    #[allow(clippy::type_complexity)]
    fn two(&mut self, which: impl Fn(&str) -> u32) -> Option<(Option<Str<'a>>, Option<Str<'a>>)> {
        let (mut x, mut y) = (None, None);
        self.scalars(|key, value| {
            Some(match which(key) {
                1 => {
                    x = str_of(value)?;
                    1
                }
                2 => {
                    y = str_of(value)?;
                    2
                }
                _ => 0,
            })
        })?;
        Some((x, y))
    }
}

#[cfg(test)]
mod tests {
    use crate::{json, Event, ParseError};
    use proptest::prelude::*;

    /// The parse as it was before this reader: the whole tape's depth, then serde.
    fn serde_path(text: &[u8]) -> Result<Event<'static>, ParseError> {
        let buf: &'static mut [u8] = Box::leak(text.to_vec().into_boxed_slice());
        crate::check_object(buf)?;
        json::repair_surrogates(buf);
        let tape = simd_json::to_tape(buf).map_err(crate::malformed)?;
        json::tape_depth(&tape.0, json::MAX_DEPTH)?;
        tape.deserialize::<Event<'_>>().map_err(crate::malformed)
    }

    /// Both public parsers answer exactly as the serde path, and a reused parser too.
    fn agree(text: &[u8], parser: &mut crate::EventParser) -> Result<bool, TestCaseError> {
        let want = serde_path(text);
        let mut a = text.to_vec();
        let got = crate::parse_event_slice(&mut a);
        prop_assert_eq!(&got, &want, "{}", String::from_utf8_lossy(text));
        let mut b = text.to_vec();
        let reused = parser.parse(&mut b);
        prop_assert_eq!(&reused, &want);
        // Its lists' memory serves the next events (the fixture's test reads all 500 so).
        if let Ok(event) = reused {
            parser.recycle(event);
        }
        // Whether the tape reader itself decided (for the coverage checks below).
        let mut c = text.to_vec();
        let decided = match simd_json::to_tape(&mut c) {
            Ok(tape) => super::event(&tape.0, &mut super::Spare::default(), &mut Event::default()).is_some(),
            Err(_) => false,
        };
        Ok(decided)
    }

    fn fixture() -> Vec<&'static str> {
        include_str!("../../../benches/fixtures/events.ndjson").lines().filter(|l| !l.is_empty()).collect()
    }

    /// A parse of bytes repaired beforehand (the producer's) answers as the parse that
    /// repairs; bytes with a lone surrogate left are refused, never read as something else.
    #[test]
    fn a_parse_of_repaired_bytes_answers_as_the_parse_that_repairs() {
        let mut parser = crate::EventParser::default();
        let cut = r#"{"message":"cut \ud83d here","tags":{"k":"\udc00"},"ok":"\ud83d\ude00"}"#;
        for line in fixture().into_iter().chain([cut]) {
            let mut a = line.as_bytes().to_vec();
            let want = parser.parse(&mut a).map(|e| format!("{e:?}"));
            let mut b = line.as_bytes().to_vec();
            json::repair_surrogates(&mut b);
            let got = parser.parse_repaired(&mut b).map(|e| format!("{e:?}"));
            assert_eq!(got, want, "{line}");
        }
        assert!(parser.parse(&mut cut.as_bytes().to_vec()).is_ok());
        assert!(parser.parse_repaired(&mut cut.as_bytes().to_vec()).is_err(), "not repaired: refused");
    }

    #[test]
    fn the_fixture_is_read_off_the_tape_exactly_as_serde_reads_it() {
        let mut parser = crate::EventParser::default();
        for line in fixture() {
            assert!(agree(line.as_bytes(), &mut parser).unwrap(), "the tape reader decides: {line}");
        }
    }

    #[test]
    fn debug_images_are_read_up_to_the_bound_on_both_paths() {
        let images = (0..40)
            .map(|i| format!(r#"{{"type":"sourcemap","code_file":"~/f{i}.js","debug_id":"id-{i}"}}"#))
            .collect::<Vec<_>>()
            .join(",");
        let doc = format!(r#"{{"message":"m","debug_meta":{{"images":[{images},[1,{{"x":2}}]]}}}}"#);
        assert!(agree(doc.as_bytes(), &mut crate::EventParser::default()).unwrap(), "the tape reader decides");
        let got = serde_path(doc.as_bytes()).unwrap();
        let images = got.debug_meta.unwrap().images;
        assert_eq!(images.len(), crate::event::MAX_DEBUG_IMAGES);
        assert_eq!(images[31].code_file.as_deref(), Some("~/f31.js"));
        assert_eq!(images[31].debug_id.as_deref(), Some("id-31"));
        // Read leniently: other shapes are ignored, never refused (the producer passed
        // `debug_meta` through unread before the model carried it).
        for (debug_meta, want) in [
            ("5", None),
            ("\"x\"", None),
            ("[1]", None),
            ("{}", Some(vec![])),
            (r#"{"images":{"a":1}}"#, Some(vec![])),
            (
                r#"{"images":[1,"x",null,[2],{"type":7,"code_file":["u"],"debug_id":{"a":1}}]}"#,
                Some(vec![(None, None, None)]),
            ),
            (
                r#"{"images":[{"type":"sourcemap","code_file":"~/a.js","debug_id":"i","type":"other","image_addr":"0x1"}],"images":[]}"#,
                Some(vec![(Some("sourcemap"), Some("~/a.js"), Some("i"))]),
            ),
        ] {
            let doc = format!(r#"{{"message":"m","debug_meta":{debug_meta}}}"#);
            agree(doc.as_bytes(), &mut crate::EventParser::default()).unwrap();
            let got = serde_path(doc.as_bytes()).unwrap_or_else(|e| panic!("{doc}: {e}"));
            assert_eq!(crate::parse_event_str(&doc).unwrap().debug_meta, got.debug_meta, "serde_json: {doc}");
            let got = got.debug_meta.map(|m| {
                m.images
                    .iter()
                    .map(|i| {
                        (
                            i.ty.as_deref().map(str::to_owned),
                            i.code_file.as_deref().map(str::to_owned),
                            i.debug_id.as_deref().map(str::to_owned),
                        )
                    })
                    .collect::<Vec<_>>()
            });
            let want = want.map(|w: Vec<(Option<&str>, Option<&str>, Option<&str>)>| {
                w.into_iter()
                    .map(|(a, b, c)| (a.map(str::to_owned), b.map(str::to_owned), c.map(str::to_owned)))
                    .collect::<Vec<_>>()
            });
            assert_eq!(got, want, "{doc}");
        }
    }

    /// Lists are filled with defaults in steps (8, 16, 32, ... elements ahead): every length
    /// around the steps, and a bad element at every position (the reader then leaves the
    /// event to serde, with defaults written past the element), answer as serde, on a parser
    /// that goes on to the next event.
    #[test]
    fn lists_filled_in_steps_answer_as_serde() {
        let mut parser = crate::EventParser::default();
        let id = r#""event_id":"0123456789abcdef0123456789abcdef""#;
        let doc = |frames: &[String]| {
            format!(r#"{{{id},"exception":[{{"type":"E","stacktrace":{{"frames":[{}]}}}}]}}"#, frames.join(","))
        };
        for n in 0..=40 {
            let frames: Vec<String> = (0..n).map(|i| format!(r#"{{"function":"f{i}","lineno":{i}}}"#)).collect();
            assert!(agree(doc(&frames).as_bytes(), &mut parser).unwrap(), "{n} frames");
            for bad in 0..n {
                let mut with_bad = frames.clone();
                with_bad[bad] = r#"{"lineno":-1}"#.to_owned();
                assert!(!agree(doc(&with_bad).as_bytes(), &mut parser).unwrap(), "{n} frames, bad at {bad}");
            }
        }
    }

    #[test]
    fn recycled_lists_keep_their_memory_and_hold_nothing_old() {
        let v: Vec<crate::event::Frame<'static>> = Vec::with_capacity(8);
        let at = v.as_ptr() as usize;
        let w: Vec<crate::event::Frame<'_>> = super::recast(v);
        assert_eq!((w.as_ptr() as usize, w.capacity(), w.len()), (at, 8, 0));
        // Every fixture event after every other (each parse filling the lists the one before
        // gave back), in two orders, equal to a fresh parse.
        let lines = fixture();
        let mut parser = crate::EventParser::default();
        for line in lines.iter().chain(lines.iter().rev()) {
            let mut a = line.as_bytes().to_vec();
            let mut b = line.as_bytes().to_vec();
            let got = parser.parse(&mut a).unwrap();
            assert_eq!(got, crate::parse_event_slice(&mut b).unwrap());
            parser.recycle(got);
        }
        // An event with a longer list than the one before, and one whose lists are `null`.
        let id = r#""event_id":"0123456789abcdef0123456789abcdef""#;
        let frames = |n: usize| (0..n).map(|i| format!(r#"{{"function":"f{i}"}}"#)).collect::<Vec<_>>().join(",");
        for doc in [
            format!(
                r#"{{{id},"exception":[{{"type":"E","stacktrace":{{"frames":[{}]}}}}],"tags":{{"a":"b"}}}}"#,
                frames(2)
            ),
            format!(r#"{{{id},"exception":[{{"type":"E","stacktrace":{{"frames":[{}]}}}}]}}"#, frames(300)),
            format!(r#"{{{id},"exception":[{{"type":"E","stacktrace":{{"frames":null}}}}],"tags":null}}"#),
            format!(r#"{{{id},"exception":null,"message":"m","request":{{"headers":{{"x":"y"}}}}}}"#),
            format!(
                r#"{{{id},"exception":[{{"type":"E","thread_id":7}}],"threads":[{{"id":7,"crashed":true,"stacktrace":{{"frames":[{}]}}}},{{"id":"main","current":true,"stacktrace":{{"frames":[{}]}}}}]}}"#,
                frames(3),
                frames(40)
            ),
            format!(
                r#"{{{id},"exception":[{{"type":"E"}}],"threads":[{{"id":1,"stacktrace":{{"frames":[{}]}}}}]}}"#,
                frames(1)
            ),
            format!(r#"{{{id},"message":"m","threads":null}}"#),
            format!(
                r#"{{{id},"message":"m","debug_meta":{{"images":[{{"type":"sourcemap","code_file":"~/a.js","debug_id":"x","extra":1}}],"sdk_info":{{}}}}}}"#
            ),
            format!(r#"{{{id},"message":"m","debug_meta":{{"images":null}}}}"#),
            format!(r#"{{{id},"message":"m","debug_meta":null}}"#),
        ] {
            agree(doc.as_bytes(), &mut parser).unwrap();
        }
    }

    #[test]
    fn what_the_reader_leaves_to_serde() {
        let mut parser = crate::EventParser::default();
        let id = r#""event_id":"0123456789abcdef0123456789abcdef""#;
        let cases = [
            // Duplicate fields, at every level.
            format!(r#"{{{id},"project":"a","project":"b","message":"m"}}"#),
            format!(r#"{{{id},"exception":[{{"type":"E","type":"F"}}]}}"#),
            format!(r#"{{{id},"message":"m","user":{{"id":1,"id":2}}}}"#),
            // Structs as arrays (serde reads them by position), wrong types, out of range.
            format!(r#"{{{id},"message":"m","user":["42"]}}"#),
            format!(r#"{{{id},"exception":[["E","v"]]}}"#),
            format!(r#"{{{id},"message":5}}"#),
            format!(r#"{{{id},"message":"m","timestamp":true}}"#),
            format!(r#"{{{id},"message":"m","timestamp":"yesterday"}}"#),
            format!(r#"{{{id},"message":"m","timestamp":1e300}}"#),
            format!(r#"{{{id},"message":"m","timestamp":18446744073709551615}}"#),
            format!(r#"{{{id},"message":"m","user":{{"id":1.5}}}}"#),
            format!(r#"{{{id},"exception":[{{"type":"E","stacktrace":{{"frames":[{{"lineno":-1}}]}}}}]}}"#),
            format!(r#"{{{id},"exception":[{{"type":"E","stacktrace":{{"frames":[{{"lineno":4294967296}}]}}}}]}}"#),
            format!(r#"{{{id},"exception":[{{"type":"E","stacktrace":{{"frames":[{{"in_app":1}}]}}}}]}}"#),
            format!(r#"{{{id},"message":"m","tags":{{"a":1}}}}"#),
            format!(r#"{{{id},"message":"m","tags":["a"]}}"#),
            format!(r#"{{{id},"message":"m","fingerprint":["a",null]}}"#),
            format!(r#"{{{id},"exception":[null]}}"#),
            format!(r#"{{{id},"exception":{{}}}}"#),
            // Too deep inside a field the reader skips, and inside one it reads.
            format!(r#"{{{id},"message":"m","extra":{}1{}}}"#, "[".repeat(64), "]".repeat(64)),
            format!(r#"{{{id},"message":"m","request":{{"x":{}1{}}}}}"#, "[".repeat(62), "]".repeat(62)),
            format!(r#"{{{id},"message":"m","tags":{{"a":{}1{}}}}}"#, "[".repeat(63), "]".repeat(63)),
        ];
        for c in &cases {
            agree(c.as_bytes(), &mut parser).unwrap();
        }
        // Just within the depth bound inside a skipped field: the reader decides.
        let ok = format!(r#"{{{id},"message":"m","request":{{"x":{}1{}}}}}"#, "[".repeat(62), "]".repeat(62));
        assert!(agree(ok.as_bytes(), &mut parser).unwrap());
        // Past the tag bound, values of any type are skipped.
        let many: Vec<String> =
            (0..300).map(|i| format!(r#""k{i}":{}"#, if i < 256 { "\"v\"" } else { "[1]" })).collect();
        let tags = format!(r#"{{{id},"message":"m","tags":{{{}}}}}"#, many.join(","));
        assert!(agree(tags.as_bytes(), &mut parser).unwrap());
        // Past the thread bound too.
        let many: Vec<String> = (0..300)
            .map(|i| if i < 256 { format!(r#"{{"id":{i}}}"#) } else { "[1,{\"x\":null}]".to_owned() })
            .collect();
        let threads = format!(r#"{{{id},"message":"m","threads":[{}]}}"#, many.join(","));
        assert!(agree(threads.as_bytes(), &mut parser).unwrap());
        // Threads the reader leaves to serde: wrong types, duplicates, a thread as an array.
        for c in [
            format!(r#"{{{id},"message":"m","threads":{{"values":[]}}}}"#),
            format!(r#"{{{id},"message":"m","threads":[{{"id":1.5}}]}}"#),
            format!(r#"{{{id},"message":"m","threads":[{{"id":1,"id":2}}]}}"#),
            format!(r#"{{{id},"message":"m","threads":[["1"]]}}"#),
            format!(r#"{{{id},"message":"m","threads":[{{"crashed":"yes"}}]}}"#),
            format!(r#"{{{id},"exception":[{{"type":"E","thread_id":true}}]}}"#),
            format!(r#"{{{id},"message":"m","threads":[],"threads":[]}}"#),
        ] {
            agree(c.as_bytes(), &mut parser).unwrap();
        }
    }

    /// The objects read over their nodes as one slice (`Cur::scalars`: frames, users,
    /// mechanisms, log entries, debug images, contexts, the SDK): values skipped before,
    /// between and after known fields, at the depth bound and one past it, duplicates, wrong
    /// types, an object given as an array. The reader answers as serde, or leaves it to serde.
    #[test]
    fn objects_of_scalars_read_as_one_slice_answer_as_serde() {
        let mut parser = crate::EventParser::default();
        let id = r#""event_id":"0123456789abcdef0123456789abcdef""#;
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        // A frame is six containers deep (event, exception list, exception, stack trace,
        // frame list, frame): a skipped value in it may nest 58 more.
        let frame = |body: &str| {
            format!(
                r#"{{{id},"exception":[{{"type":"E","stacktrace":{{"frames":[{{"function":"a"}},{body},{{"function":"z"}}]}}}}]}}"#
            )
        };
        let cases = [
            (frame(r#"{"x":{"y":[1,{"z":2}]},"function":"f","v":[],"lineno":3,"w":{},"colno":4}"#), true),
            (
                frame(r#"{"in_app":null,"lineno":null,"module":null,"x":null,"package":"p","instruction_addr":"0x1"}"#),
                true,
            ),
            (frame(&format!(r#"{{"function":"f","x":{},"filename":"a.js"}}"#, deep(58))), true),
            (frame(&format!(r#"{{"function":"f","x":{},"filename":"a.js"}}"#, deep(59))), false),
            (frame(r#"{"function":"f","x":{},"function":"g"}"#), false),
            (frame(r#"{"function":["f"]}"#), false),
            (frame(r#"["f"]"#), false),
            (frame(r#"{"lineno":-1}"#), false),
            (frame(r#"{"lineno":4294967296}"#), false),
            (frame("{}"), true),
            (frame("null"), false),
            (format!(r#"{{{id},"message":"m","user":{{"a":{{"b":[{{}}]}},"id":7,"c":[[]],"email":"e"}}}}"#), true),
            (format!(r#"{{{id},"message":"m","user":{{"id":7,"email":"e","id":8}}}}"#), false),
            (format!(r#"{{{id},"message":"m","user":{{"id":[7]}}}}"#), false),
            // A mechanism is four deep, a browser context three, a debug image four.
            (
                format!(r#"{{{id},"exception":[{{"type":"E","mechanism":{{"data":{},"handled":true}}}}]}}"#, deep(60)),
                true,
            ),
            (
                format!(r#"{{{id},"exception":[{{"type":"E","mechanism":{{"data":{},"handled":true}}}}]}}"#, deep(61)),
                false,
            ),
            (
                format!(
                    r#"{{{id},"message":"m","contexts":{{"browser":{{"n":{},"name":"C","version":"1"}}}}}}"#,
                    deep(61)
                ),
                true,
            ),
            (
                format!(
                    r#"{{{id},"message":"m","contexts":{{"browser":{{"n":{},"name":"C","version":"1"}}}}}}"#,
                    deep(62)
                ),
                false,
            ),
            (format!(r#"{{{id},"message":"m","contexts":{{"os":{{"name":"L","name":"W"}}}}}}"#), false),
            (format!(r#"{{{id},"message":"m","contexts":{{"device":{{"model":"x","family":{{}}}}}}}}"#), false),
            (format!(r#"{{{id},"message":"m","sdk":{{"packages":[{{"name":"a"}}],"name":"s","version":"1"}}}}"#), true),
            (format!(r#"{{{id},"logentry":{{"params":[1,[2]],"message":"m %s","formatted":"m x"}}}}"#), true),
            (
                format!(
                    r#"{{{id},"message":"m","debug_meta":{{"images":[{{"x":{},"type":"sourcemap","debug_id":"d"}}]}}}}"#,
                    deep(60)
                ),
                true,
            ),
            (
                format!(
                    r#"{{{id},"message":"m","debug_meta":{{"images":[{{"x":{},"type":"sourcemap","debug_id":"d"}}]}}}}"#,
                    deep(61)
                ),
                false,
            ),
        ];
        // Tags and headers (`Cur::pairs`, also one slice): past the bound any value is skipped
        // (tags are two deep), duplicate keys are kept as serde keeps them.
        let filler = (0..crate::event::MAX_TAGS).map(|i| format!(r#""k{i}":"v""#)).collect::<Vec<_>>().join(",");
        let tags = |x: &str| format!(r#"{{{id},"message":"m","tags":{{{filler},"x":{x},"y":"z"}}}}"#);
        let cases = cases.into_iter().chain([
            (tags(&deep(62)), true),
            (tags(&deep(63)), false),
            (tags(r#"{"a":[1,{"b":null}]}"#), true),
            (format!(r#"{{{id},"message":"m","tags":{{"a":"b","c":{{}}}}}}"#), false),
            (format!(r#"{{{id},"message":"m","request":{{"headers":{{"a":"b","a":"c"}},"url":"u"}}}}"#), true),
        ]);
        for (doc, decides) in cases {
            assert_eq!(agree(doc.as_bytes(), &mut parser).unwrap(), decides, "{doc}");
        }
    }

    const KEYS: &[&str] = &[
        "event_id",
        "project",
        "timestamp",
        "platform",
        "level",
        "release",
        "environment",
        "logger",
        "server_name",
        "message",
        "logentry",
        "exception",
        "fingerprint",
        "user",
        "tags",
        "request",
        "contexts",
        "sdk",
        "type",
        "value",
        "module",
        "mechanism",
        "stacktrace",
        "handled",
        "synthetic",
        "frames",
        "function",
        "filename",
        "abs_path",
        "package",
        "lineno",
        "colno",
        "in_app",
        "instruction_addr",
        "id",
        "email",
        "username",
        "ip_address",
        "url",
        "method",
        "query_string",
        "headers",
        "browser",
        "os",
        "runtime",
        "device",
        "name",
        "version",
        "family",
        "model",
        "formatted",
        "threads",
        "thread_id",
        "debug_meta",
        "images",
        "code_file",
        "debug_id",
        "crashed",
        "current",
        "extra",
        "Type",
        "",
    ];

    /// JSON text of event-like documents: the event's field names and others, values of every
    /// type (strings with escapes, lone surrogates and any Unicode), duplicate keys, nesting.
    fn value(depth: u32) -> BoxedStrategy<String> {
        let scalar = prop_oneof![
            Just("null".to_owned()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            (0u32..5000).prop_map(|n| n.to_string()),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
            "\\PC{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            Just(r#""cut \ud83d""#.to_owned()),
            Just(r#""2026-11-26T05:39:00.25+02:00""#.to_owned()),
            Just(r#""a\"b\\c\n""#.to_owned()),
        ];
        if depth == 0 {
            return scalar.boxed();
        }
        prop_oneof![
            3 => scalar,
            1 => prop::collection::vec(value(depth - 1), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            2 => object(depth),
        ]
        .boxed()
    }

    fn object(depth: u32) -> BoxedStrategy<String> {
        let key = prop::sample::select(KEYS).prop_map(|k| serde_json::to_string(k).unwrap());
        prop::collection::vec((key, value(depth - 1)), 0..8)
            .prop_map(|kv| {
                let kv: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", kv.join(","))
            })
            .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn random_documents_parse_as_serde_parses_them(doc in object(6)) {
            agree(doc.as_bytes(), &mut crate::EventParser::default())?;
        }

        /// A fixture event with one value replaced by a random one, or one key duplicated.
        #[test]
        fn mutated_fixture_events_parse_as_serde_parses_them(
            which in 0usize..500, at in any::<prop::sample::Index>(), with in value(3), dup in any::<bool>(),
        ) {
            let lines = fixture();
            let line = lines[which % lines.len()];
            // Replace the value after one of the `":` of the line.
            let spots: Vec<usize> = line.match_indices("\":").map(|(i, _)| i + 2).collect();
            let start = spots[at.index(spots.len())];
            let mut doc = line.to_owned();
            let end = value_end(line.as_bytes(), start);
            if dup {
                // The same `"key":value` again, right after it.
                let key_start = line[..start - 2].rfind('"').unwrap_or(0);
                doc.insert_str(end, &format!(",{}", &line[key_start..end]));
            } else {
                doc.replace_range(start..end, &with);
            }
            agree(doc.as_bytes(), &mut crate::EventParser::default())?;
        }
    }

    /// Where the JSON value starting at `i` ends (a scan of brackets and strings; the fixture is
    /// valid JSON).
    fn value_end(b: &[u8], mut i: usize) -> usize {
        let (mut depth, mut in_str) = (0i32, false);
        while i < b.len() {
            let c = b[i];
            if in_str {
                match c {
                    b'\\' => i += 1,
                    b'"' => {
                        in_str = false;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
            } else {
                match c {
                    b'"' => in_str = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        if depth == 0 {
                            return i;
                        }
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    b',' if depth == 0 => return i,
                    _ => {}
                }
            }
            i += 1;
        }
        i
    }
}
