//! The records the writer holds between two INSERTs, decoded into one arena per batch.
//!
//! A record's strings (about thirteen) are not `String`s of their own: each is appended to the
//! batch's one text buffer and kept as a range of it, its user hashes to one list of the
//! batch, its breakdown entries and merged issues likewise. Decoding a record then allocates
//! nothing once the batch's buffers have grown to their size (the writer reuses the buffers of
//! the batch stored last), and its rows ([`Batch::row`]) borrow from the batch.
//!
//! The decoding is serde_json's (its parser, its number and string rules), into the arena
//! instead of an [`AggregateRecord`]: the same bytes give the same fields. Whatever the
//! arena's decoder refuses is decoded again as an [`AggregateRecord`] by serde_json, and its
//! answer decides: a record written in a form the arena's decoder does not take (a struct as a
//! JSON array, which serde reads too) is kept all the same, and a malformed record fails with
//! serde_json's error, the reason its DLQ record gives (as before the arena). The property
//! tests below hold the two decodings equal on records with any Unicode and on random byte
//! edits of them.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;
use std::ops::Range;
use tracefold_model::aggregate::implausible;
use tracefold_model::breakdown::{Key, ValueCount};
use tracefold_model::{AggregateRecord, BatchRef, Breakdown, UserSet};
use tracefold_store::aggregates::{admit_at, Watermarks};
use tracefold_store::rows::{AggregateRow, Fields};

/// A range of the batch's text: a string of a record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
}

impl Span {
    fn shifted(self, by: usize) -> Self {
        Self { start: self.start + by, end: self.end + by }
    }
}

fn shift(r: &Range<usize>, by: usize) -> Range<usize> {
    r.start + by..r.end + by
}

/// One record of a batch: its fields, the strings and lists as ranges of the batch's buffers.
#[derive(Debug, Clone, Default)]
struct Rec {
    v: u8,
    epoch: Span,
    topic: Span,
    src_partition: i32,
    first_offset: i64,
    last_offset: i64,
    index: u32,
    rec_count: u32,
    project: Span,
    issue_id: Span,
    minute: i64,
    release: Span,
    environment: Span,
    count: u64,
    /// Range of [`Batch::users`].
    users: Range<usize>,
    saturated: bool,
    first_seen_ms: i64,
    last_seen_ms: i64,
    title: Span,
    culprit: Span,
    exc_type: Span,
    level: Span,
    platform: Span,
    grouping_version: Span,
    sample: Span,
    /// Ranges of [`Batch::breakdown`] per key, in the order of [`Key::ALL`].
    breakdown: [Range<usize>; 3],
    /// Range of [`Batch::merged`].
    merged_from: Range<usize>,
}

impl Rec {
    /// The record's strings held in the text buffer directly (breakdown values and merged ids
    /// are in their own lists).
    fn spans_mut(&mut self) -> [&mut Span; 13] {
        [
            &mut self.epoch,
            &mut self.topic,
            &mut self.project,
            &mut self.issue_id,
            &mut self.release,
            &mut self.environment,
            &mut self.title,
            &mut self.culprit,
            &mut self.exc_type,
            &mut self.level,
            &mut self.platform,
            &mut self.grouping_version,
            &mut self.sample,
        ]
    }

    fn shifted(mut self, text: usize, users: usize, breakdown: usize, merged: usize) -> Self {
        for s in self.spans_mut() {
            *s = s.shifted(text);
        }
        self.users = shift(&self.users, users);
        for r in &mut self.breakdown {
            *r = shift(r, breakdown);
        }
        self.merged_from = shift(&self.merged_from, merged);
        self
    }
}

/// A record of the batch and the message it was read from.
#[derive(Debug, Clone)]
struct Entry {
    rec: Rec,
    partition: i32,
    offset: i64,
    /// Size of the message (counts toward `batch_max_bytes`).
    bytes: usize,
}

/// The lengths of a [`Batch`]'s buffers at one moment.
#[derive(Clone, Copy)]
struct Mark {
    text: usize,
    users: usize,
    breakdown: usize,
    merged: usize,
}

/// The records read since the last INSERT, in the order read.
#[derive(Debug, Default)]
pub struct Batch {
    /// Every string of every record, one after the other.
    text: String,
    users: Vec<u64>,
    /// Breakdown entries: (value, count).
    breakdown: Vec<(Span, u64)>,
    /// Merged issue ids.
    merged: Vec<Span>,
    entries: Vec<Entry>,
    bytes: usize,
}

impl Batch {
    /// The number of records held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The size of the messages the records were read from.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Forgets every record, keeping the buffers' memory for the next batch.
    pub fn clear(&mut self) {
        self.text.clear();
        self.users.clear();
        self.breakdown.clear();
        self.merged.clear();
        self.entries.clear();
        self.bytes = 0;
    }

    /// The aggregates partition and offset of record `i`.
    ///
    /// # Panics
    /// When `i` is not below [`Batch::len`].
    pub fn source(&self, i: usize) -> (i32, i64) {
        let e = &self.entries[i];
        (e.partition, e.offset)
    }

    /// Decodes `payload`, the message at `offset` of aggregates partition `partition`, and
    /// adds its record. Nothing is added when it is not an aggregate record.
    ///
    /// # Errors
    /// serde_json's error for the payload read as an [`AggregateRecord`].
    pub fn push(&mut self, payload: &[u8], partition: i32, offset: i64) -> Result<(), serde_json::Error> {
        let mark = self.mark();
        let mut de = serde_json::Deserializer::from_slice(payload);
        let decoded = RecordSeed(self).deserialize(&mut de).and_then(|rec| de.end().map(|()| rec));
        match decoded {
            Ok(rec) => self.entries.push(Entry { rec, partition, offset, bytes: payload.len() }),
            Err(_) => {
                // What was written of it goes; serde_json's reading of the record decides.
                self.rewind(mark);
                let r = serde_json::from_slice::<AggregateRecord>(payload)?;
                self.push_record(&r, partition, offset, payload.len());
            }
        }
        self.bytes += payload.len();
        Ok(())
    }

    /// [`Batch::push`], then refuses (and takes back) a record with values no real record has
    /// ([`tracefold_model::aggregate::implausible`]): a minute or time that ClickHouse's
    /// 32-bit `DateTime` cannot hold was stored as 1970 without a word, and an absurd count
    /// summed into every rollup and query of its issue.
    ///
    /// # Errors
    /// Why the payload is not a record (serde_json's reading), or which value is implausible.
    pub fn push_plausible(&mut self, payload: &[u8], partition: i32, offset: i64) -> Result<(), String> {
        let mark = self.mark();
        self.push(payload, partition, offset).map_err(|e| e.to_string())?;
        // `push` answered Ok: the record is the last entry.
        let Some(r) = self.entries.last().map(|e| &e.rec) else { return Ok(()) };
        let Some(why) = implausible(r.minute, r.count, r.first_seen_ms, r.last_seen_ms) else { return Ok(()) };
        self.entries.pop();
        self.rewind(mark);
        self.bytes -= payload.len();
        Err(format!("implausible values: {why}"))
    }

    /// Where the batch's buffers end now, for [`Batch::rewind`].
    fn mark(&self) -> Mark {
        Mark {
            text: self.text.len(),
            users: self.users.len(),
            breakdown: self.breakdown.len(),
            merged: self.merged.len(),
        }
    }

    /// Drops what was written to the buffers after `m` (a record read in part, or taken back).
    fn rewind(&mut self, m: Mark) {
        self.text.truncate(m.text);
        self.users.truncate(m.users);
        self.breakdown.truncate(m.breakdown);
        self.merged.truncate(m.merged);
    }

    /// Adds `r` (read from a message of `bytes` bytes), copied into the batch's buffers.
    fn push_record(&mut self, r: &AggregateRecord, partition: i32, offset: i64, bytes: usize) {
        let mut text = |s: &str| {
            let start = self.text.len();
            self.text.push_str(s);
            Span { start, end: self.text.len() }
        };
        let mut rec = Rec {
            v: r.v,
            epoch: text(&r.batch.epoch),
            topic: text(&r.batch.topic),
            src_partition: r.batch.partition,
            first_offset: r.batch.first_offset,
            last_offset: r.batch.last_offset,
            index: r.batch.index,
            rec_count: r.batch.count,
            project: text(&r.project),
            issue_id: text(&r.issue_id),
            minute: r.minute,
            release: text(&r.release),
            environment: text(&r.environment),
            count: r.count,
            saturated: r.users.saturated,
            first_seen_ms: r.first_seen_ms,
            last_seen_ms: r.last_seen_ms,
            title: text(&r.title),
            culprit: text(&r.culprit),
            exc_type: text(&r.exc_type),
            level: text(&r.level),
            platform: text(&r.platform),
            grouping_version: text(&r.grouping_version),
            sample: text(&r.sample),
            ..Rec::default()
        };
        let start = self.users.len();
        self.users.extend_from_slice(&r.users.hashes);
        rec.users = start..self.users.len();
        for (k, key) in Key::ALL.into_iter().enumerate() {
            let start = self.breakdown.len();
            for v in r.breakdown.values(key) {
                let s = self.text.len();
                self.text.push_str(&v.value);
                self.breakdown.push((Span { start: s, end: self.text.len() }, v.count));
            }
            rec.breakdown[k] = start..self.breakdown.len();
        }
        let start = self.merged.len();
        for m in &r.merged_from {
            let s = self.text.len();
            self.text.push_str(m);
            self.merged.push(Span { start: s, end: self.text.len() });
        }
        rec.merged_from = start..self.merged.len();
        self.entries.push(Entry { rec, partition, offset, bytes });
    }

    /// Keeps the records of the aggregates partitions `keep` answers true for, and only their
    /// strings and lists: the buffers are rebuilt when a record goes (a revoke, rare), so a
    /// batch given back after failed INSERTs and revoked again never holds dead text that
    /// [`Batch::bytes`] would not count.
    pub fn retain(&mut self, mut keep: impl FnMut(i32) -> bool) {
        let kept: Vec<bool> = self.entries.iter().map(|e| keep(e.partition)).collect();
        if kept.iter().all(|&k| k) {
            return;
        }
        let old = std::mem::take(self);
        for (e, _) in old.entries.iter().zip(&kept).filter(|(_, &k)| k) {
            self.copy_entry(&old, e);
        }
    }

    /// Adds entry `e` of `from`, its strings and lists copied into these buffers.
    fn copy_entry(&mut self, from: &Batch, e: &Entry) {
        let mut rec = e.rec.clone();
        let text = &mut self.text;
        let mut copy = |s: Span| {
            let start = text.len();
            text.push_str(from.s(s));
            Span { start, end: text.len() }
        };
        for s in rec.spans_mut() {
            *s = copy(*s);
        }
        let start = self.users.len();
        self.users.extend_from_slice(from.users.get(rec.users.clone()).unwrap_or_default());
        rec.users = start..self.users.len();
        for r in &mut rec.breakdown {
            let start = self.breakdown.len();
            for &(v, n) in from.breakdown.get(r.clone()).unwrap_or_default() {
                let v = copy(v);
                self.breakdown.push((v, n));
            }
            *r = start..self.breakdown.len();
        }
        let start = self.merged.len();
        for &m in from.merged.get(rec.merged_from.clone()).unwrap_or_default() {
            let m = copy(m);
            self.merged.push(m);
        }
        rec.merged_from = start..self.merged.len();
        self.bytes += e.bytes;
        self.entries.push(Entry { rec, ..e.clone() });
    }

    /// The capacity of the buffers, in bytes (what a cleared batch keeps for the next one).
    pub fn capacity_bytes(&self) -> usize {
        self.text.capacity()
            + self.users.capacity() * std::mem::size_of::<u64>()
            + self.breakdown.capacity() * std::mem::size_of::<(Span, u64)>()
            + self.merged.capacity() * std::mem::size_of::<Span>()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
    }

    /// Adds the records of `newer` after these.
    pub fn append(&mut self, newer: &Batch) {
        let by = (self.text.len(), self.users.len(), self.breakdown.len(), self.merged.len());
        self.text.push_str(&newer.text);
        self.users.extend_from_slice(&newer.users);
        self.breakdown.extend(newer.breakdown.iter().map(|&(s, n)| (s.shifted(by.0), n)));
        self.merged.extend(newer.merged.iter().map(|s| s.shifted(by.0)));
        self.entries.extend(
            newer.entries.iter().map(|e| Entry { rec: e.rec.clone().shifted(by.0, by.1, by.2, by.3), ..e.clone() }),
        );
        self.bytes += newer.bytes;
    }

    /// The aggregates partitions of the records held, sorted, each once.
    pub fn partitions(&self) -> Vec<i32> {
        let mut parts: Vec<i32> = self.entries.iter().map(|e| e.partition).collect();
        parts.sort_unstable();
        parts.dedup();
        parts
    }

    fn s(&self, span: Span) -> &str {
        // Spans are the bounds of whole strings appended to `text`: always on char boundaries.
        debug_assert!(self.text.get(span.start..span.end).is_some(), "a span outside the batch's text");
        self.text.get(span.start..span.end).unwrap_or_default()
    }

    /// Whether record `i` is new relative to the watermarks `wm` (of its aggregates
    /// partition); if so, advances `wm` past it ([`tracefold_store::aggregates::admit`]).
    ///
    /// # Panics
    /// When `i` is not below [`Batch::len`].
    pub fn admit(&self, i: usize, wm: &mut Watermarks) -> bool {
        let r = &self.entries[i].rec;
        admit_at(wm, self.s(r.epoch), self.s(r.topic), r.src_partition, (r.first_offset, r.index))
    }

    /// The row of record `i`, read from `agg_topic`.
    ///
    /// # Panics
    /// When `i` is not below [`Batch::len`].
    pub fn row<'a>(&'a self, i: usize, agg_topic: &'a str) -> AggregateRow<'a> {
        let e = &self.entries[i];
        let r = &e.rec;
        let breakdown = Key::ALL.into_iter().zip(r.breakdown.iter()).flat_map(move |(k, range)| {
            self.breakdown.get(range.clone()).unwrap_or_default().iter().map(move |&(v, n)| (k, self.s(v), n))
        });
        let merged = self.merged.get(r.merged_from.clone()).unwrap_or_default().iter().map(|&m| self.s(m));
        AggregateRow::of(self.fields(r), breakdown, merged, agg_topic, e.partition, e.offset)
    }

    fn fields<'a>(&'a self, r: &Rec) -> Fields<'a> {
        Fields {
            project: self.s(r.project),
            issue_id: self.s(r.issue_id),
            minute: r.minute,
            release: self.s(r.release),
            environment: self.s(r.environment),
            count: r.count,
            users: self.users.get(r.users.clone()).unwrap_or_default(),
            users_saturated: r.saturated,
            first_seen_ms: r.first_seen_ms,
            last_seen_ms: r.last_seen_ms,
            title: self.s(r.title),
            culprit: self.s(r.culprit),
            exc_type: self.s(r.exc_type),
            level: self.s(r.level),
            platform: self.s(r.platform),
            grouping_version: self.s(r.grouping_version),
            sample: self.s(r.sample),
            src_epoch: self.s(r.epoch),
            src_topic: self.s(r.topic),
            src_partition: r.src_partition,
            src_first_offset: r.first_offset,
            src_last_offset: r.last_offset,
            rec_index: r.index,
            rec_count: r.rec_count,
        }
    }

    /// Record `i` as an [`AggregateRecord`] (tests, and whoever needs it owned).
    ///
    /// # Panics
    /// When `i` is not below [`Batch::len`].
    pub fn record(&self, i: usize) -> AggregateRecord {
        let r = &self.entries[i].rec;
        let f = self.fields(r);
        let mut breakdown = Breakdown::default();
        for (k, range) in Key::ALL.into_iter().zip(r.breakdown.iter()) {
            let values: Vec<ValueCount> = self.breakdown[range.clone()]
                .iter()
                .map(|&(v, count)| ValueCount { value: self.s(v).to_owned(), count })
                .collect();
            match k {
                Key::Browser => breakdown.browser = values,
                Key::Os => breakdown.os = values,
                Key::Url => breakdown.url = values,
            }
        }
        AggregateRecord {
            v: r.v,
            batch: BatchRef {
                epoch: f.src_epoch.to_owned(),
                topic: f.src_topic.to_owned(),
                partition: r.src_partition,
                first_offset: r.first_offset,
                last_offset: r.last_offset,
                index: r.index,
                count: r.rec_count,
            },
            project: f.project.to_owned(),
            issue_id: f.issue_id.to_owned(),
            minute: r.minute,
            release: f.release.to_owned(),
            environment: f.environment.to_owned(),
            count: r.count,
            users: UserSet { hashes: f.users.to_vec(), saturated: r.saturated },
            first_seen_ms: r.first_seen_ms,
            last_seen_ms: r.last_seen_ms,
            title: f.title.to_owned(),
            culprit: f.culprit.to_owned(),
            exc_type: f.exc_type.to_owned(),
            level: f.level.to_owned(),
            platform: f.platform.to_owned(),
            grouping_version: f.grouping_version.to_owned(),
            sample: f.sample.to_owned(),
            breakdown,
            merged_from: self.merged[r.merged_from.clone()].iter().map(|&m| self.s(m).to_owned()).collect(),
        }
    }
}

// The decoding: serde seeds that write into the batch's buffers. Each struct takes a JSON
// object only, refuses a repeated field and a missing one that has no default, and skips
// fields it does not know (serde's derived `Deserialize` of the same structs does the same,
// and its answer is asked for whatever these refuse).

/// A string, appended to the text.
struct Str<'b>(&'b mut String);

impl<'de> DeserializeSeed<'de> for Str<'_> {
    type Value = Span;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Span, D::Error> {
        d.deserialize_string(self)
    }
}

impl<'de> Visitor<'de> for Str<'_> {
    type Value = Span;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Span, E> {
        let start = self.0.len();
        self.0.push_str(v);
        Ok(Span { start, end: self.0.len() })
    }
}

/// A list of strings, appended to the text, their spans to `spans`.
struct Strs<'b> {
    text: &'b mut String,
    spans: &'b mut Vec<Span>,
}

impl<'de> DeserializeSeed<'de> for Strs<'_> {
    type Value = Range<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Range<usize>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Strs<'_> {
    type Value = Range<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of strings")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Range<usize>, A::Error> {
        let start = self.spans.len();
        while let Some(s) = seq.next_element_seed(Str(self.text))? {
            self.spans.push(s);
        }
        Ok(start..self.spans.len())
    }
}

/// A list of `u64`, appended to `0`.
struct U64s<'b>(&'b mut Vec<u64>);

impl<'de> DeserializeSeed<'de> for U64s<'_> {
    type Value = Range<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Range<usize>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for U64s<'_> {
    type Value = Range<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of integers")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Range<usize>, A::Error> {
        let start = self.0.len();
        while let Some(n) = seq.next_element::<u64>()? {
            self.0.push(n);
        }
        Ok(start..self.0.len())
    }
}

/// Defines a field identifier enum: the names it knows, and `Other` for the rest.
macro_rules! fields {
    ($name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        #[derive(Clone, Copy, PartialEq, Eq)]
        enum $name { $($variant,)* Other }
        impl $name {
            const NAMES: &'static [&'static str] = &[$($text),*];
        }
        impl<'de> de::Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a field name")
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        Ok(match v { $($text => $name::$variant,)* _ => $name::Other })
                    }
                }
                d.deserialize_identifier(V)
            }
        }
    };
}

fields!(RecField {
    V = "v",
    Batch = "batch",
    Project = "project",
    IssueId = "issue_id",
    Minute = "minute",
    Release = "release",
    Environment = "environment",
    Count = "count",
    Users = "users",
    FirstSeen = "first_seen_ms",
    LastSeen = "last_seen_ms",
    Title = "title",
    Culprit = "culprit",
    ExcType = "exc_type",
    Level = "level",
    Platform = "platform",
    GroupingVersion = "grouping_version",
    Sample = "sample",
    Breakdown = "breakdown",
    MergedFrom = "merged_from",
});

fields!(BatchField {
    Epoch = "epoch",
    Topic = "topic",
    Partition = "partition",
    FirstOffset = "first_offset",
    LastOffset = "last_offset",
    Index = "index",
    Count = "count",
});

fields!(UsersField { Hashes = "hashes", Saturated = "saturated" });

fields!(BreakdownField { Browser = "browser", Os = "os", Url = "url" });

fields!(ValueField { Value = "value", Count = "count" });

/// Marks field `bit` seen; a field seen twice is an error.
fn once<E: de::Error>(seen: &mut u32, bit: u32) -> Result<(), E> {
    if *seen & (1 << bit) != 0 {
        return Err(E::custom("duplicate field"));
    }
    *seen |= 1 << bit;
    Ok(())
}

/// Fails unless every field of `required` (bits) was seen.
fn all<E: de::Error>(seen: u32, required: u32) -> Result<(), E> {
    if seen & required == required {
        Ok(())
    } else {
        Err(E::custom("missing field"))
    }
}

/// A whole record.
struct RecordSeed<'b>(&'b mut Batch);

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = Rec;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Rec, D::Error> {
        d.deserialize_struct("AggregateRecord", RecField::NAMES, self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = Rec;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an aggregate record")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Rec, A::Error> {
        let b = self.0;
        let mut r = Rec::default();
        let mut seen = 0u32;
        while let Some(field) = map.next_key::<RecField>()? {
            if field != RecField::Other {
                once(&mut seen, field as u32)?;
            }
            let text = &mut b.text;
            match field {
                RecField::V => r.v = map.next_value()?,
                RecField::Batch => map.next_value_seed(BatchSeed { text, r: &mut r })?,
                RecField::Project => r.project = map.next_value_seed(Str(text))?,
                RecField::IssueId => r.issue_id = map.next_value_seed(Str(text))?,
                RecField::Minute => r.minute = map.next_value()?,
                RecField::Release => r.release = map.next_value_seed(Str(text))?,
                RecField::Environment => r.environment = map.next_value_seed(Str(text))?,
                RecField::Count => r.count = map.next_value()?,
                RecField::Users => map.next_value_seed(UsersSeed { users: &mut b.users, r: &mut r })?,
                RecField::FirstSeen => r.first_seen_ms = map.next_value()?,
                RecField::LastSeen => r.last_seen_ms = map.next_value()?,
                RecField::Title => r.title = map.next_value_seed(Str(text))?,
                RecField::Culprit => r.culprit = map.next_value_seed(Str(text))?,
                RecField::ExcType => r.exc_type = map.next_value_seed(Str(text))?,
                RecField::Level => r.level = map.next_value_seed(Str(text))?,
                RecField::Platform => r.platform = map.next_value_seed(Str(text))?,
                RecField::GroupingVersion => r.grouping_version = map.next_value_seed(Str(text))?,
                RecField::Sample => r.sample = map.next_value_seed(Str(text))?,
                RecField::Breakdown => {
                    r.breakdown = map.next_value_seed(BreakdownSeed { text, entries: &mut b.breakdown })?;
                }
                RecField::MergedFrom => r.merged_from = map.next_value_seed(Strs { text, spans: &mut b.merged })?,
                RecField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        // Every field but `breakdown` and `merged_from` (defaults: empty).
        let optional = (1 << RecField::Breakdown as u32) | (1 << RecField::MergedFrom as u32);
        all(seen, ((1 << RecField::Other as u32) - 1) & !optional)?;
        Ok(r)
    }
}

/// The record's `batch`, into the record.
struct BatchSeed<'b> {
    text: &'b mut String,
    r: &'b mut Rec,
}

impl<'de> DeserializeSeed<'de> for BatchSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_struct("BatchRef", BatchField::NAMES, self)
    }
}

impl<'de> Visitor<'de> for BatchSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a batch reference")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let r = self.r;
        let mut seen = 0u32;
        while let Some(field) = map.next_key::<BatchField>()? {
            if field != BatchField::Other {
                once(&mut seen, field as u32)?;
            }
            match field {
                BatchField::Epoch => r.epoch = map.next_value_seed(Str(self.text))?,
                BatchField::Topic => r.topic = map.next_value_seed(Str(self.text))?,
                BatchField::Partition => r.src_partition = map.next_value()?,
                BatchField::FirstOffset => r.first_offset = map.next_value()?,
                BatchField::LastOffset => r.last_offset = map.next_value()?,
                BatchField::Index => r.index = map.next_value()?,
                BatchField::Count => r.rec_count = map.next_value()?,
                BatchField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        // Every field but `epoch` (default: empty).
        all(seen, ((1 << BatchField::Other as u32) - 1) & !(1 << BatchField::Epoch as u32))
    }
}

/// The record's `users`, into the record and the batch's hashes.
struct UsersSeed<'b> {
    users: &'b mut Vec<u64>,
    r: &'b mut Rec,
}

impl<'de> DeserializeSeed<'de> for UsersSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_struct("UserSet", UsersField::NAMES, self)
    }
}

impl<'de> Visitor<'de> for UsersSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a user set")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = 0u32;
        while let Some(field) = map.next_key::<UsersField>()? {
            if field != UsersField::Other {
                once(&mut seen, field as u32)?;
            }
            match field {
                UsersField::Hashes => self.r.users = map.next_value_seed(U64s(self.users))?,
                UsersField::Saturated => self.r.saturated = map.next_value()?,
                UsersField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        all(seen, 0b11)
    }
}

/// The record's `breakdown`: per key, the range of its entries.
struct BreakdownSeed<'b> {
    text: &'b mut String,
    entries: &'b mut Vec<(Span, u64)>,
}

impl<'de> DeserializeSeed<'de> for BreakdownSeed<'_> {
    type Value = [Range<usize>; 3];
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_struct("Breakdown", BreakdownField::NAMES, self)
    }
}

impl<'de> Visitor<'de> for BreakdownSeed<'_> {
    type Value = [Range<usize>; 3];
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a breakdown")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = 0u32;
        let mut ranges = [0..0, 0..0, 0..0];
        while let Some(field) = map.next_key::<BreakdownField>()? {
            if field == BreakdownField::Other {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            once(&mut seen, field as u32)?;
            // `BreakdownField`'s order is `Key::ALL`'s.
            ranges[field as usize] = map.next_value_seed(ValuesSeed { text: self.text, entries: self.entries })?;
        }
        Ok(ranges)
    }
}

/// One key's list of values and counts.
struct ValuesSeed<'b> {
    text: &'b mut String,
    entries: &'b mut Vec<(Span, u64)>,
}

impl<'de> DeserializeSeed<'de> for ValuesSeed<'_> {
    type Value = Range<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Range<usize>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ValuesSeed<'_> {
    type Value = Range<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of values and counts")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Range<usize>, A::Error> {
        let start = self.entries.len();
        while let Some(e) = seq.next_element_seed(ValueSeed(self.text))? {
            self.entries.push(e);
        }
        Ok(start..self.entries.len())
    }
}

/// One value and its count.
struct ValueSeed<'b>(&'b mut String);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = (Span, u64);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(Span, u64), D::Error> {
        d.deserialize_struct("ValueCount", ValueField::NAMES, self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = (Span, u64);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value and its count")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(Span, u64), A::Error> {
        let (mut seen, mut value, mut count) = (0u32, Span::default(), 0u64);
        while let Some(field) = map.next_key::<ValueField>()? {
            if field != ValueField::Other {
                once(&mut seen, field as u32)?;
            }
            match field {
                ValueField::Value => value = map.next_value_seed(Str(self.0))?,
                ValueField::Count => count = map.next_value()?,
                ValueField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        all(seen, 0b11)?;
        Ok((value, count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracefold_store::rows::{AliasRow, SampleRow};

    fn record(i: u64) -> AggregateRecord {
        let mut r = AggregateRecord {
            v: 1,
            batch: BatchRef {
                epoch: "e".into(),
                topic: "t".into(),
                partition: 2,
                first_offset: 10 * i as i64,
                last_offset: 10 * i as i64 + 9,
                index: i as u32,
                count: 5,
            },
            project: "ウェブ".into(),
            issue_id: format!("{i:032x}"),
            minute: 1_795_671_540,
            release: "r\u{0}1".into(),
            environment: "prod \"eu\"".into(),
            count: 3 + i,
            users: UserSet { hashes: vec![1, u64::MAX - i], saturated: i % 2 == 1 },
            first_seen_ms: 1_795_671_540_250,
            last_seen_ms: 1_795_671_541_250,
            title: "TypeError: 𝄞 \\ \u{7f}".into(),
            culprit: "app.js in f".into(),
            exc_type: "TypeError".into(),
            level: "error".into(),
            platform: "javascript".into(),
            grouping_version: "v1".into(),
            sample: if i.is_multiple_of(2) { r#"{"message":"ü\n","tags":[["a","b"]]}"#.into() } else { String::new() },
            breakdown: Breakdown::default(),
            merged_from: Vec::new(),
        };
        r.breakdown.url.push(ValueCount { value: "/日本".into(), count: 2 });
        r.breakdown.browser.push(ValueCount { value: "Chrome 120".into(), count: 1 });
        if i.is_multiple_of(3) {
            r.merged_from = vec!["a".repeat(32), "b".repeat(32)];
        }
        r
    }

    /// Everything a row of `r` sends: its columns, its sample row and its alias rows.
    fn sent(row: &AggregateRow<'_>) -> (serde_json::Value, Option<serde_json::Value>, Vec<serde_json::Value>) {
        let aliases = row.alias_rows().map(|a: AliasRow<'_>| serde_json::to_value(a).unwrap()).collect();
        let sample = row.sample_row().map(|s: SampleRow<'_>| serde_json::to_value(s).unwrap());
        (serde_json::to_value(row).unwrap(), sample, aliases)
    }

    /// The batch holds `payloads` as serde_json reads them, and makes the rows the records make.
    fn same_as_serde(payloads: &[Vec<u8>]) {
        let mut b = Batch::default();
        let mut kept = Vec::new();
        for (o, p) in payloads.iter().enumerate() {
            let ours = b.push(p, 1, o as i64).map_err(|e| e.to_string());
            let theirs = serde_json::from_slice::<AggregateRecord>(p).map_err(|e| e.to_string());
            assert_eq!(ours.is_ok(), theirs.is_ok(), "{:?}", String::from_utf8_lossy(p));
            match theirs {
                Ok(r) => kept.push((r, o as i64)),
                Err(e) => assert_eq!(ours.unwrap_err(), e, "the DLQ's reason is serde_json's"),
            }
        }
        assert_eq!(b.len(), kept.len());
        assert_eq!(b.bytes(), kept.iter().map(|&(_, o)| payloads[o as usize].len()).sum::<usize>());
        for (i, (r, o)) in kept.iter().enumerate() {
            assert_eq!(&b.record(i), r);
            assert_eq!(b.source(i), (1, *o));
            assert_eq!(sent(&b.row(i, "agg")), sent(&AggregateRow::new(r, "agg", 1, *o)));
        }
    }

    #[test]
    fn records_decode_as_serde_json_reads_them_in_any_field_order() {
        let recs: Vec<AggregateRecord> = (0..6).map(record).collect();
        // As the grouper writes them, and with the fields sorted by name.
        let mut payloads: Vec<Vec<u8>> = recs.iter().map(|r| serde_json::to_vec(r).unwrap()).collect();
        payloads.extend(recs.iter().map(|r| serde_json::to_vec(&serde_json::to_value(r).unwrap()).unwrap()));
        same_as_serde(&payloads);
    }

    #[test]
    fn what_the_arena_does_not_take_serde_json_decides() {
        let r = record(0);
        let json = serde_json::to_string(&r).unwrap();
        let array = serde_json::to_vec(&serde_json::json!([
            1,
            {"topic": "t", "partition": 2, "first_offset": 0, "last_offset": 9, "index": 0, "count": 5},
            "p", "i", 60, "", "", 1, {"hashes": [], "saturated": false}, 0, 0, "", "", "", "", "", "", ""
        ]))
        .unwrap();
        let payloads = [
            // A struct as an array: serde reads it, so it is kept.
            array,
            // Unknown fields are skipped, escaped names read.
            json.replacen("{", r#"{"later":{"x":[1,2]},"pro\u006aect2":"x","#, 1)
                .replacen("\"project\"", r#""pro\u006aect""#, 1)
                .into_bytes(),
            // Malformed: a field twice, a required one missing, a wrong type, trailing bytes,
            // a lone surrogate, a raw control byte, not JSON, empty.
            json.replacen("{", r#"{"title":"x","#, 1).into_bytes(),
            json.replacen(r#""issue_id""#, r#""issue_idx""#, 1).into_bytes(),
            json.replacen(r#""count":3"#, r#""count":-3"#, 1).into_bytes(),
            format!("{json} x").into_bytes(),
            json.replacen(r#""level":"error""#, r#""level":"\ud800""#, 1).into_bytes(),
            json.replacen(r#""level":"error""#, "\"level\":\"er\u{1}ror\"", 1).into_bytes(),
            json.replacen(r#""browser":["#, r#""browser":[{"value":"x"},"#, 1).into_bytes(),
            b"\xff\xfe".to_vec(),
            Vec::new(),
            // And a good one after them: nothing of the failed ones is left in the batch.
            json.clone().into_bytes(),
        ];
        same_as_serde(&payloads);
    }

    #[test]
    fn appended_and_retained_batches_keep_their_records() {
        let recs: Vec<AggregateRecord> = (0..7).map(record).collect();
        let (mut a, mut b) = (Batch::default(), Batch::default());
        for (i, r) in recs.iter().enumerate() {
            let into = if i < 3 { &mut a } else { &mut b };
            into.push(&serde_json::to_vec(r).unwrap(), (i % 2) as i32, i as i64).unwrap();
        }
        a.append(&b);
        assert_eq!(a.len(), 7);
        assert_eq!(a.bytes(), recs.iter().map(|r| serde_json::to_vec(r).unwrap().len()).sum::<usize>());
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(&a.record(i), r);
            assert_eq!(a.source(i), ((i % 2) as i32, i as i64));
        }
        assert_eq!(a.partitions(), [0, 1]);
        a.retain(|p| p == 1);
        let odd: Vec<&AggregateRecord> = recs.iter().skip(1).step_by(2).collect();
        assert_eq!(a.len(), odd.len());
        for (i, r) in odd.into_iter().enumerate() {
            assert_eq!(&a.record(i), r);
        }
        a.clear();
        assert!(a.is_empty() && a.bytes() == 0 && a.partitions().is_empty());
    }

    #[test]
    fn a_retained_batch_keeps_only_its_records_text_and_takes_newer_ones_after() {
        // As the writer does: revoked (retain) while given back, then a failed INSERT's newer
        // records appended after.
        let recs: Vec<AggregateRecord> = (0..9)
            .map(|i| {
                let mut r = record(i);
                r.merged_from = (0..i % 3).map(|k| format!("m{i}é{k}")).collect();
                r.breakdown.url =
                    (0..i % 4).map(|k| ValueCount { value: format!("/ü/{i}/{k}"), count: k + 1 }).collect();
                r
            })
            .collect();
        let (mut a, mut b, mut alone) = (Batch::default(), Batch::default(), Batch::default());
        for (i, r) in recs.iter().enumerate() {
            let json = serde_json::to_vec(r).unwrap();
            let into = if i < 6 { &mut a } else { &mut b };
            into.push(&json, (i % 3) as i32, i as i64).unwrap();
            if i < 6 && i % 3 == 2 {
                alone.push(&json, 2, i as i64).unwrap();
            }
        }
        a.retain(|p| p == 2);
        // Nothing of the dropped records' strings or lists is left.
        assert_eq!(a.text.len(), alone.text.len());
        assert_eq!(a.users.len(), alone.users.len());
        assert_eq!((a.breakdown.len(), a.merged.len()), (alone.breakdown.len(), alone.merged.len()));
        a.append(&b);
        let want: Vec<(usize, &AggregateRecord)> =
            recs.iter().enumerate().filter(|&(i, _)| i >= 6 || i % 3 == 2).collect();
        assert_eq!(a.len(), want.len());
        assert_eq!(a.bytes(), want.iter().map(|(_, r)| serde_json::to_vec(r).unwrap().len()).sum::<usize>());
        for (k, (i, r)) in want.into_iter().enumerate() {
            assert_eq!(&a.record(k), r);
            assert_eq!(a.source(k), ((i % 3) as i32, i as i64));
            assert_eq!(sent(&a.row(k, "agg")), sent(&AggregateRow::new(r, "agg", (i % 3) as i32, i as i64)));
        }
    }

    #[test]
    fn the_replay_check_is_the_records() {
        let mut b = Batch::default();
        let seq = [(1, 0, 0), (1, 0, 1), (1, 0, 0), (2, 0, 0), (1, 10, 0), (1, 0, 2)];
        for (o, &(p, first, index)) in seq.iter().enumerate() {
            let mut r = record(0);
            (r.batch.partition, r.batch.first_offset, r.batch.index) = (p, first, index);
            b.push(&serde_json::to_vec(&r).unwrap(), 0, o as i64).unwrap();
        }
        let (mut ours, mut theirs) = (Watermarks::new(), Watermarks::new());
        for i in 0..b.len() {
            let r = b.record(i);
            assert_eq!(b.admit(i, &mut ours), tracefold_store::aggregates::admit(&mut theirs, &r));
        }
        assert_eq!(ours, theirs);
        assert_eq!(ours.len(), 2);
    }

    /// A small deterministic generator (xorshift64*): the cases below are the same on every run.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }

        /// Any number, often an extreme one.
        fn int(&mut self) -> u64 {
            match self.below(4) {
                0 => [0, 1, u64::MAX, u64::MAX / 2, 1 << 63][self.below(5) as usize],
                1 => self.below(1000),
                _ => self.next(),
            }
        }

        /// A string of any Unicode: ASCII, the characters JSON escapes, controls, and two, three
        /// and four byte characters.
        fn string(&mut self) -> String {
            let n = [0, 1, 3, 12, 40][self.below(5) as usize];
            (0..n)
                .map(|_| {
                    let c = match self.below(6) {
                        0 => ['"', '\\', '/', '\u{0}', '\n', '\u{1f}', '\u{7f}'][self.below(7) as usize] as u32,
                        1 => 0x80 + self.below(0x780) as u32,
                        2 => 0x800 + self.below(0xf800) as u32,
                        3 => 0x10000 + self.below(0x100000) as u32,
                        _ => 0x20 + self.below(0x5f) as u32,
                    };
                    char::from_u32(c).unwrap_or('\u{fffd}')
                })
                .collect()
        }

        fn record(&mut self) -> AggregateRecord {
            let mut breakdown = Breakdown::default();
            for _ in 0..self.below(4) {
                let v = ValueCount { value: self.string(), count: self.int() };
                [&mut breakdown.browser, &mut breakdown.os, &mut breakdown.url][self.below(3) as usize].push(v);
            }
            AggregateRecord {
                v: 1,
                batch: BatchRef {
                    epoch: self.string(),
                    topic: self.string(),
                    partition: self.int() as i32,
                    first_offset: self.int() as i64,
                    last_offset: self.int() as i64,
                    index: self.int() as u32,
                    count: self.int() as u32,
                },
                project: self.string(),
                issue_id: self.string(),
                minute: self.int() as i64,
                release: self.string(),
                environment: self.string(),
                count: self.int(),
                users: UserSet {
                    hashes: (0..self.below(5)).map(|_| self.int()).collect(),
                    saturated: self.below(2) == 1,
                },
                first_seen_ms: self.int() as i64,
                last_seen_ms: self.int() as i64,
                title: self.string(),
                culprit: self.string(),
                exc_type: self.string(),
                level: self.string(),
                platform: self.string(),
                grouping_version: self.string(),
                sample: self.string(),
                breakdown,
                merged_from: (0..self.below(3)).map(|_| self.string()).collect(),
            }
        }
    }

    /// A record with values no real record has is refused, whichever way it was decoded, and
    /// leaves nothing behind: the batch is as if it had not come.
    #[test]
    fn implausible_records_are_refused_and_leave_nothing() {
        let good = record(1);
        let good_bytes = serde_json::to_vec(&good).unwrap();
        let spoiled: [fn(&mut AggregateRecord); 4] =
            [|r| r.minute = -60, |r| r.minute = 1 << 40, |r| r.count = u64::MAX, |r| r.first_seen_ms = -1];
        for (n, spoil) in spoiled.into_iter().enumerate() {
            let mut r = record(2);
            spoil(&mut r);
            // As the grouper writes it (the fast decoder), and with the fields sorted by name
            // and a duplicate-free detour through a Value (the same decoder, other order).
            for payload in
                [serde_json::to_vec(&r).unwrap(), serde_json::to_vec(&serde_json::to_value(&r).unwrap()).unwrap()]
            {
                let mut b = Batch::default();
                b.push_plausible(&good_bytes, 0, 0).unwrap();
                let before = (b.len(), b.bytes(), b.text.len(), b.users.len(), b.breakdown.len(), b.merged.len());
                let why = b.push_plausible(&payload, 0, 1).unwrap_err();
                assert!(why.starts_with("implausible values: "), "case {n}: {why}");
                assert_eq!(
                    (b.len(), b.bytes(), b.text.len(), b.users.len(), b.breakdown.len(), b.merged.len()),
                    before,
                    "case {n}"
                );
                assert_eq!(b.record(0), good);
            }
        }
        // Not a record at all: serde_json's reason, as before.
        let mut b = Batch::default();
        assert!(b.push_plausible(b"{", 0, 0).unwrap_err().contains("EOF"));
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn any_record_decodes_as_serde_json_reads_it() {
        let mut g = Gen(0x7f4a_7c15_9e37_79b9);
        for case in 0..3_000 {
            let r = g.record();
            // As the grouper writes it, and with the fields sorted by name.
            let payload = if case % 2 == 0 {
                serde_json::to_vec(&r).unwrap()
            } else {
                serde_json::to_vec(&serde_json::to_value(&r).unwrap()).unwrap()
            };
            same_as_serde(&[payload]);
        }
    }

    #[test]
    fn edited_records_decode_or_fail_as_serde_json_reads_them() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let (mut kept, mut failed) = (0, 0);
        for _ in 0..5_000 {
            let r = g.record();
            let mut p = serde_json::to_vec(&r).unwrap();
            for _ in 0..1 + g.below(3) {
                let i = g.below(p.len() as u64 + 1) as usize;
                // Often a byte of JSON's syntax, else any byte.
                let syntax = b"{}[]:,\"-0e.u \\";
                let byte = if g.below(2) == 0 { syntax[g.below(syntax.len() as u64) as usize] } else { g.next() as u8 };
                match g.below(3) {
                    0 if i < p.len() => p[i] = byte,
                    1 if i < p.len() => {
                        p.remove(i);
                    }
                    _ => p.insert(i, byte),
                }
            }
            match serde_json::from_slice::<AggregateRecord>(&p) {
                Ok(_) => kept += 1,
                Err(_) => failed += 1,
            }
            // A good record after it: what the edited one left in the buffers does not show.
            same_as_serde(&[p, serde_json::to_vec(&r).unwrap()]);
        }
        assert!(kept > 100 && failed > 100, "both kinds were tried: {kept} kept, {failed} failed");
    }
}
