//! The grouper's hot path and its unit of replay: a batch of consecutive offsets of one
//! source partition, turned into partial aggregates by a deterministic function.
//!
//! Determinism is what makes the grouper exactly-once without Kafka transactions: the same
//! range of events always yields the same records in the same order, so a re-emitted batch is
//! recognised downstream by `(partition, first_offset, index)`.

use crate::dedup::{identity, DedupWindow, KeyedIdState};
use crate::symbolicate::{BatchMaps, Hook, MappedList, Outcome};
use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use tracefold_fingerprint::memo::FingerprintMemo;
use tracefold_fingerprint::{describe, fingerprint, GroupingConfig, Scratch, GROUPING_VERSION};
use tracefold_model::aggregate::{minute_of, user_hash, AggregateRecord, BatchRef, UserSet, AGGREGATE_FORMAT_VERSION};
use tracefold_model::breakdown::{Key, Routes, Tally};
use tracefold_model::sample::bounded_sample_owned;
use tracefold_model::text::prefix;
use tracefold_model::time::Millis;
use tracefold_model::{validate, Event, EventParser, Reason, Rejection};
use xxhash_rust::xxh3::Xxh3;

/// Largest event accepted by the grouper, in bytes (the producer enforces a smaller limit).
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// Longest platform name kept on an aggregate.
pub const MAX_PLATFORM_LEN: usize = 64;

/// An event the grouper could not use; it goes to the DLQ with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Source offset.
    pub offset: i64,
    /// Why: the bounded reason and a detail such as `malformed event json: ...` or
    /// `invalid event: project: missing`.
    pub rejection: Rejection,
    /// The message verbatim.
    pub payload: Vec<u8>,
    /// When Kafka received it (the message timestamp), Unix milliseconds: the minute of its
    /// outcome record.
    pub received_ms: Millis,
}

/// A valid event that repeats one read shortly before it (see [`crate::dedup`]): not counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// Source offset.
    pub offset: i64,
    /// Its project.
    pub project: String,
    /// The Kafka message timestamp.
    pub received_ms: Millis,
}

/// What a finished batch emits.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutput {
    /// Partial aggregates, in a deterministic order.
    pub records: Vec<AggregateRecord>,
    /// Rejected events, in offset order.
    pub rejected: Vec<Rejected>,
    /// Accepted events counted in `records`.
    pub accepted: u64,
    /// Events whose timestamp was missing or out of range and was clamped.
    pub clamped: u64,
    /// Samples cut to [`tracefold_model::sample::MAX_SAMPLE_BYTES`] (marked in the sample).
    pub samples_truncated: u64,
    /// Valid events not counted because they repeat an event read shortly before them, in
    /// offset order.
    pub duplicates: Vec<Duplicate>,
    /// Counted events with minified JavaScript frames, by symbolication outcome (indexed by
    /// [`Outcome::index`]).
    pub symbolication: [u64; 4],
    /// The source maps the batch used: hash of each key and the offset of its first use (for
    /// the range metadata, so that a replay decides the same; see docs/sourcemaps.md).
    pub maps_used: Vec<(u64, i64)>,
    /// Issue ids left out of a record's [`AggregateRecord::merged_from`] because it already
    /// named [`tracefold_model::aggregate::MAX_MERGED_FROM`] (the merge facts they would have
    /// stored are lost; docs/sourcemaps.md "Late maps").
    pub merged_from_dropped: u64,
}

/// Options of the aggregation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOptions {
    /// Bound of exact user hashes per aggregate.
    pub max_users: usize,
    /// Grouping options.
    pub grouping: GroupingConfig,
    /// Offsets of a partition within which a repeated `(project, event_id)` is a duplicate;
    /// 0 turns deduplication off.
    pub dedup_window: u64,
}

/// Default of [`BatchOptions::dedup_window`]: about 3 MB of memory per partition.
pub const DEFAULT_DEDUP_WINDOW: u64 = 50_000;

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            max_users: tracefold_model::aggregate::DEFAULT_MAX_USERS,
            grouping: GroupingConfig::default(),
            dedup_window: DEFAULT_DEDUP_WINDOW,
        }
    }
}

/// Accumulates one batch. Reuse it: [`BatchBuilder::finish`] leaves it empty with its
/// buffers kept.
#[derive(Debug)]
pub struct BatchBuilder {
    opts: BatchOptions,
    work: Work,
    index: HashMap<u128, usize, KeyedIdState>,
    /// Issues (project and fingerprint) that already have a sample in this batch: one sample
    /// per issue per batch is plenty, and the other buckets need not copy the event.
    sampled: HashSet<u128, KeyedIdState>,
    partials: Vec<AggregateRecord>,
    /// Per partial (same index), the secondary fingerprint last found in or added to its
    /// `merged_from`: the events of a bucket mapped from minified frames mostly name the
    /// same issue as received, and a repeat of the last one is already in the list (which
    /// only grows within a batch), so it is not written as hex and searched again.
    merged_last: Vec<Option<u128>>,
    rejected: Vec<Rejected>,
    duplicates: Vec<Duplicate>,
    /// Identities of the partition's recent valid events; kept across batches.
    window: DedupWindow,
    accepted: u64,
    clamped: u64,
    samples_truncated: u64,
    events: u64,
    bytes: u64,
    /// Fault injection for tests of the barrier: an event containing these bytes panics.
    panic_marker: Option<Vec<u8>>,
    /// Source maps, when the grouper has an artifact store.
    hook: Option<Hook>,
    /// The maps this batch has used (outside [`Work`]: a caught panic must not forget them).
    maps: BatchMaps,
    symbolication: [u64; 4],
    merged_from_dropped: u64,
}

/// Per-event scratch state: the only state a panic inside the fault barrier can touch. It is
/// rebuilt after a caught panic.
#[derive(Default)]
struct Work {
    parse_buf: Vec<u8>,
    /// The parser and its buffers, kept across events.
    parser: EventParser,
    scratch: Scratch,
    /// The current event's identity, once it is known to be valid (read after a panic too).
    ident: Option<u128>,
    /// The current event's URL as a route (built once, then compared with the bucket's URLs),
    /// and the routes of the batch's URLs so far (each distinct URL's route built once).
    routes: Routes,
    /// The current event's symbolication outcome (when it had minified JavaScript frames).
    outcome: Option<Outcome>,
    /// Secondary fingerprints of mapped events, by what they read (kept across batches: the
    /// memo is exact; emptied when full, on a revoke and with another config:
    /// [`tracefold_fingerprint::memo`]).
    secondary: FingerprintMemo,
    /// The current event's strings written by source maps (the event borrows them; reset per
    /// event, so it holds one event's mapped names at most).
    arena: bumpalo::Bump,
}

/// The per-event buffers [`plan_event`] writes besides the fingerprint's scratch.
struct EventOut<'w, 'e> {
    /// The event's identity, once it is known to be valid.
    ident: &'w mut Option<u128>,
    /// The event's URL as a route, and the batch's routes so far.
    routes: &'w mut Routes,
    /// Frames mapped by source maps.
    mapped: &'w mut MappedList<'e>,
    /// The symbolication outcome.
    outcome: &'w mut Option<Outcome>,
    /// Source maps of the batch, when the grouper has an artifact store.
    maps: Option<(&'w Hook, &'w mut BatchMaps)>,
    /// The batch's secondary fingerprints.
    secondary: &'w mut FingerprintMemo,
    /// Where source maps write the event's mapped strings.
    arena: &'e bumpalo::Bump,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work").field("parse_buf", &self.parse_buf.len()).finish_non_exhaustive()
    }
}

/// The bucket an event counts in.
enum Bucket {
    /// Already open, at this index of the partials.
    Open(usize),
    /// Not open yet: the new aggregate (count 0, sample decided) and the issue key that says
    /// whether it carries the issue's sample.
    New(Box<AggregateRecord>, u128),
}

/// What to do with one event: decided inside the fault barrier, applied outside it.
enum Plan {
    /// Count it.
    Count(Planned),
    /// A repeat: count it as a duplicate of its project.
    Duplicate(String),
    /// Priming the window: nothing more to do (the identity is in [`Work::ident`]).
    Primed,
}

/// What one counted event adds to the batch.
struct Planned {
    key: u128,
    bucket: Bucket,
    timestamp_ms: Millis,
    clamped: bool,
    user: Option<u64>,
    /// A new bucket's sample had to be cut.
    sample_cut: bool,
    /// Where the event counts in the bucket's breakdown, per key of [`Key::ALL`] (nothing for
    /// a key the event has no value of).
    tallies: [Option<Tally>; 3],
    /// The event's issue as received (its secondary fingerprint), when source maps mapped its
    /// frames into another issue: the bucket's record names it in `merged_from`.
    merged_from: Option<u128>,
}

impl BatchBuilder {
    /// An empty builder.
    pub fn new(opts: BatchOptions) -> Self {
        Self {
            work: Work { parse_buf: Vec::with_capacity(8 << 10), ..Work::default() },
            index: HashMap::default(),
            sampled: HashSet::default(),
            partials: Vec::new(),
            merged_last: Vec::new(),
            rejected: Vec::new(),
            duplicates: Vec::new(),
            window: DedupWindow::new(opts.dedup_window),
            opts,
            accepted: 0,
            clamped: 0,
            samples_truncated: 0,
            events: 0,
            bytes: 0,
            panic_marker: None,
            hook: None,
            maps: BatchMaps::default(),
            symbolication: [0; 4],
            merged_from_dropped: 0,
        }
    }

    /// Maps minified JavaScript frames with source maps before fingerprinting (see
    /// [`crate::symbolicate`]).
    pub fn with_sourcemaps(mut self, hook: Hook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The next batch rebuilds a recorded range whose first run used these maps (key hash,
    /// offset of first use, from [`BatchOutput::maps_used`]): it uses exactly those.
    pub fn replay_maps(&mut self, recorded: &[(u64, i64)]) {
        self.maps.replaying(recorded);
    }

    /// Makes every event that contains `marker` panic inside the fault barrier (tests and the
    /// `grouper.panic_marker` failpoint): proves that one event's fault costs that event only.
    pub fn inject_panic_on(&mut self, marker: &[u8]) {
        self.panic_marker = Some(marker.to_vec());
    }

    /// Events added since the last finish (accepted and rejected).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Payload bytes added since the last finish.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Adds the message at `offset`. `received_ms` is the Kafka message timestamp: it anchors
    /// timestamp clamping, so that a replay decides exactly as the first run did. Offsets
    /// increase from call to call; to read a range again, start a new builder (or
    /// [`BatchBuilder::clear_window`]) and [`BatchBuilder::prime`] it.
    ///
    /// Total: any bytes are either counted or rejected with a reason. A panic while looking at
    /// one event (a bug, not an input error) is caught here and rejects that event with
    /// [`Reason::Internal`]; the decision depends only on the event, so a replay decides the
    /// same.
    pub fn add(&mut self, payload: &[u8], offset: i64, received_ms: Millis) {
        self.events += 1;
        self.bytes += payload.len() as u64;
        self.step(payload, offset, received_ms, false);
    }

    /// Reads the message at `offset`, which an earlier batch already counted, into the
    /// deduplication window only: a builder that starts on a partition at offset `S` is given
    /// `[S - dedup_window, S)` first, so that it decides as if it had read the partition from
    /// the start (see [`crate::dedup`]).
    pub fn prime(&mut self, payload: &[u8], offset: i64, received_ms: Millis) {
        self.step(payload, offset, received_ms, true);
    }

    /// The deduplication window.
    pub fn window(&self) -> &DedupWindow {
        &self.window
    }

    /// Forgets the deduplication window (before reading it again after a rewind).
    pub fn clear_window(&mut self) {
        self.window.clear();
    }

    fn step(&mut self, payload: &[u8], offset: i64, received_ms: Millis, prime: bool) {
        let open = Open { index: &self.index, partials: &self.partials, sampled: &self.sampled };
        let (opts, window, marker) = (&self.opts, &self.window, self.panic_marker.as_deref());
        let maps = self.hook.as_ref().map(|h| (h, &mut self.maps));
        let work = &mut self.work;
        work.ident = None;
        work.outcome = None;
        let at = Input { payload, offset, received_ms, prime };
        let planned = catch_unwind(AssertUnwindSafe(|| plan(work, opts, open, window, marker, maps, at)));
        // Known once the event passed validation, whatever happened after.
        let ident = self.work.ident;
        match planned {
            Ok(Ok(Plan::Count(p))) => {
                if let Some(o) = self.work.outcome {
                    self.symbolication[o.index()] += 1;
                }
                self.apply(p)
            }
            Ok(Ok(Plan::Duplicate(project))) => self.duplicates.push(Duplicate { offset, project, received_ms }),
            Ok(Ok(Plan::Primed)) => {}
            Ok(Err(_)) if prime => {}
            Ok(Err(rejection)) => {
                self.rejected.push(Rejected { offset, rejection, payload: payload.to_vec(), received_ms })
            }
            Err(panic) => {
                // The scratch buffers may be half-updated: start them afresh.
                self.work = Work::default();
                if !prime {
                    let what = tracefold_runtime::telemetry::panic_message(panic.as_ref());
                    tracing::error!(offset, panic = %what, "processing an event failed unexpectedly; it goes to the DLQ");
                    self.rejected.push(Rejected {
                        offset,
                        rejection: Rejection::new(
                            Reason::Internal,
                            format!("internal error while processing the event: {}", prefix(&what, 512)),
                        ),
                        payload: payload.to_vec(),
                        received_ms,
                    });
                }
            }
        }
        if let Some(id) = ident {
            self.window.insert(id, offset);
        }
    }

    fn apply(&mut self, p: Planned) {
        let idx = match p.bucket {
            Bucket::Open(i) => i,
            Bucket::New(record, issue_key) => {
                if !record.sample.is_empty() {
                    self.sampled.insert(issue_key);
                    self.samples_truncated += u64::from(p.sample_cut);
                }
                let i = self.partials.len();
                self.partials.push(*record);
                self.merged_last.push(None);
                self.index.insert(p.key, i);
                i
            }
        };
        let r = &mut self.partials[idx];
        r.count += 1;
        r.first_seen_ms = r.first_seen_ms.min(p.timestamp_ms);
        r.last_seen_ms = r.last_seen_ms.max(p.timestamp_ms);
        if let Some(uh) = p.user {
            r.users.insert(uh, self.opts.max_users);
        }
        for (key, tally) in Key::ALL.into_iter().zip(p.tallies) {
            if let Some(t) = tally {
                r.breakdown.apply(key, t);
            }
        }
        if let Some(secondary) = p.merged_from {
            let last = &mut self.merged_last[idx];
            if *last != Some(secondary) {
                let mut hex = [0u8; 32];
                if r.add_merged_from(tracefold_fingerprint::Fingerprint(secondary).hex_in(&mut hex)) {
                    *last = Some(secondary);
                } else {
                    self.merged_from_dropped += 1;
                }
            }
        }
        self.accepted += 1;
        self.clamped += u64::from(p.clamped);
    }

    /// Closes the batch `[first_offset, last_offset]` of `topic`/`partition` (of source log
    /// incarnation `epoch`) and returns its output; the builder is empty afterwards.
    pub fn finish(
        &mut self,
        epoch: &str,
        topic: &str,
        partition: i32,
        first_offset: i64,
        last_offset: i64,
    ) -> BatchOutput {
        let mut records = std::mem::take(&mut self.partials);
        self.merged_last.clear();
        let count = u32::try_from(records.len()).unwrap_or(u32::MAX);
        for (i, r) in records.iter_mut().enumerate() {
            r.batch = BatchRef {
                epoch: epoch.to_owned(),
                topic: topic.to_owned(),
                partition,
                first_offset,
                last_offset,
                index: i as u32,
                count,
            };
        }
        self.index.clear();
        self.sampled.clear();
        let out = BatchOutput {
            records,
            rejected: std::mem::take(&mut self.rejected),
            accepted: self.accepted,
            clamped: self.clamped,
            samples_truncated: self.samples_truncated,
            duplicates: std::mem::take(&mut self.duplicates),
            symbolication: std::mem::take(&mut self.symbolication),
            maps_used: self.maps.first_use().to_vec(),
            merged_from_dropped: std::mem::take(&mut self.merged_from_dropped),
        };
        self.maps.clear();
        self.work.routes.clear();
        self.accepted = 0;
        self.clamped = 0;
        self.samples_truncated = 0;
        self.events = 0;
        self.bytes = 0;
        out
    }

    /// Drops what was added since the last finish (the partition was revoked).
    pub fn reset(&mut self) {
        self.partials.clear();
        self.merged_last.clear();
        self.index.clear();
        self.sampled.clear();
        self.rejected.clear();
        self.duplicates.clear();
        self.maps.clear();
        self.work.secondary.clear();
        self.work.routes.clear();
        self.symbolication = [0; 4];
        self.merged_from_dropped = 0;
        self.accepted = 0;
        self.clamped = 0;
        self.samples_truncated = 0;
        self.events = 0;
        self.bytes = 0;
    }
}

/// What [`plan`] reads of the batch so far: the open buckets (their breakdowns) and the
/// issues that have a sample.
#[derive(Clone, Copy)]
struct Open<'a> {
    index: &'a HashMap<u128, usize, KeyedIdState>,
    partials: &'a [AggregateRecord],
    sampled: &'a HashSet<u128, KeyedIdState>,
}

/// One message given to [`plan`].
#[derive(Clone, Copy)]
struct Input<'a> {
    payload: &'a [u8],
    offset: i64,
    received_ms: Millis,
    /// Only learn its identity (priming the deduplication window).
    prime: bool,
}

/// Parses, validates and fingerprints one event and decides what it adds. It changes nothing
/// but the scratch buffers (and [`Work::ident`]), so that a panic inside leaves the batch as it
/// was.
fn plan(
    work: &mut Work,
    opts: &BatchOptions,
    open: Open<'_>,
    window: &DedupWindow,
    panic_marker: Option<&[u8]>,
    maps: Option<(&Hook, &mut BatchMaps)>,
    at: Input<'_>,
) -> Result<Plan, Rejection> {
    let payload = at.payload;
    if payload.len() > MAX_EVENT_BYTES {
        return Err(Rejection::new(
            Reason::TooLarge,
            format!("event of {} bytes is larger than {MAX_EVENT_BYTES} bytes", payload.len()),
        ));
    }
    if let Some(m) = panic_marker.filter(|m| !m.is_empty()) {
        if payload.windows(m.len()).any(|w| w == m) {
            panic!("injected fault (panic marker)");
        }
    }
    let Work { parse_buf, parser, scratch, ident, routes, outcome, secondary, arena } = work;
    arena.reset();
    parse_buf.clear();
    parse_buf.extend_from_slice(payload);
    let mut parsed = Parsed { parser, event: Event::default(), recycle: false };
    parsed.parser.parse_to(parse_buf, &mut parsed.event).map_err(|e| Rejection::new(e.reason(), e.to_string()))?;
    parsed.recycle = true;
    // The event's mapped frames borrow its strings: a list of its own, in its arena.
    let mut mapped = MappedList::new_in(arena);
    let out = EventOut { ident, routes, mapped: &mut mapped, outcome, maps, secondary, arena };
    // The plan is written straight into this function's result (a call in tail position); the
    // event's lists are kept after it, when `parsed` is dropped. Held in a local first and
    // returned after the recycling, the plan (about 200 bytes) was copied by a `memcpy` call.
    plan_event(&mut parsed.event, scratch, out, opts, open, window, at)
}

/// A parsed event and its parser: when dropped (after [`plan_event`], whatever it answered),
/// the event's lists keep their memory for the next event (taken by reference: the event is
/// dropped where it lies, not moved into the call). Not after a failed parse, and not while a
/// panic unwinds (the batch's scratch buffers are then made afresh anyway).
struct Parsed<'p, 'e> {
    parser: &'p mut EventParser,
    event: Event<'e>,
    recycle: bool,
}

impl Drop for Parsed<'_, '_> {
    fn drop(&mut self) {
        if self.recycle && !std::thread::panicking() {
            self.parser.recycle_lists(&mut self.event);
        }
    }
}

/// [`plan`] for a parsed event.
fn plan_event<'e>(
    event: &mut Event<'e>,
    scratch: &mut Scratch,
    out: EventOut<'_, 'e>,
    opts: &BatchOptions,
    open: Open<'_>,
    window: &DedupWindow,
    at: Input<'_>,
) -> Result<Plan, Rejection> {
    let Input { payload, offset, received_ms, prime } = at;
    let v = validate(event, received_ms).map_err(|e| Rejection::new(Reason::Invalid, format!("invalid event: {e}")))?;
    let project = event.project.as_deref().unwrap_or("");
    let ident = identity(project, event.event_id.as_deref().unwrap_or(""));
    *out.ident = Some(ident);
    if prime {
        return Ok(Plan::Primed);
    }
    if window.is_duplicate(ident, offset) {
        return Ok(Plan::Duplicate(project.to_owned()));
    }
    // Source maps: one check for events without minified JavaScript frames. An event whose
    // frames get mapped is also fingerprinted as received (the secondary, docs/sourcemaps.md
    // "Late maps"), on that path only; the batch's events of the same frames (what the
    // fingerprint reads) share one computation.
    let mut secondary = None;
    if let Some((hook, maps)) = out.maps {
        let memo = out.secondary;
        let mut as_received = |e: &Event<'_>| secondary = Some(memo.fingerprint(e, &opts.grouping, scratch).0);
        *out.outcome = crate::symbolicate::apply(hook, maps, event, out.arena, offset, out.mapped, &mut as_received);
    }
    let event = &*event;
    let project = event.project.as_deref().unwrap_or("");
    let fp = fingerprint(event, &opts.grouping, scratch);
    let minute = minute_of(v.timestamp_ms);
    let release = event.release.as_deref().unwrap_or("");
    let environment = event.environment.as_deref().unwrap_or("");
    let key = bucket_key([project, release, environment], fp.0, minute);
    let mut sample_cut = false;
    let bucket = if let Some(&i) = open.index.get(&key) {
        Bucket::Open(i)
    } else {
        let meta = describe(event);
        let issue_key = xxhash_rust::xxh3::xxh3_128_with_seed(project.as_bytes(), fp.0 as u64 ^ (fp.0 >> 64) as u64);
        let sample = if open.sampled.contains(&issue_key) {
            String::new()
        } else {
            // The payload as the parser saw it (lone surrogates repaired), within the bound.
            let mut repaired = if out.mapped.is_empty() {
                payload.to_vec()
            } else {
                crate::symbolicate::rewrite_sample(payload, out.mapped)
            };
            tracefold_model::json::repair_surrogates(&mut repaired);
            sample_cut = repaired.len() > tracefold_model::sample::MAX_SAMPLE_BYTES;
            bounded_sample_owned(repaired)
        };
        let record = AggregateRecord {
            v: AGGREGATE_FORMAT_VERSION,
            batch: BatchRef {
                epoch: String::new(),
                topic: String::new(),
                partition: 0,
                first_offset: 0,
                last_offset: 0,
                index: 0,
                count: 0,
            },
            project: project.to_owned(),
            issue_id: fp.to_hex(),
            minute,
            release: release.to_owned(),
            environment: environment.to_owned(),
            count: 0,
            users: UserSet::default(),
            first_seen_ms: v.timestamp_ms,
            last_seen_ms: v.timestamp_ms,
            title: meta.title,
            culprit: meta.culprit,
            exc_type: meta.exc_type,
            level: v.level.as_str().to_owned(),
            platform: prefix(event.platform.as_deref().unwrap_or("other"), MAX_PLATFORM_LEN).to_owned(),
            grouping_version: GROUPING_VERSION.to_owned(),
            sample,
            breakdown: Default::default(),
            merged_from: Vec::new(),
        };
        Bucket::New(Box::new(record), issue_key)
    };
    // Browser, OS and URL: compared with the bucket's values as borrowed text, so an event
    // of a value the bucket has already costs no allocation.
    let counted = match &bucket {
        Bucket::Open(i) => &open.partials[*i].breakdown,
        Bucket::New(record, _) => &record.breakdown,
    };
    // A URL's route is read from the batch's memo of routes (written into it the first time
    // the batch sees the URL), then compared as plain text.
    // Key by key in `Key::ALL`'s order, written out: `array::map` was a call of its own (about
    // 110 instructions an event around the three lookups).
    let mut tally = |k: Key| out.routes.value(event, k).map(|v| counted.plan(k, v));
    let [k0, k1, k2] = Key::ALL;
    let tallies = [tally(k0), tally(k1), tally(k2)];
    Ok(Plan::Count(Planned {
        key,
        bucket,
        timestamp_ms: v.timestamp_ms,
        clamped: v.timestamp_clamped,
        user: user_hash(event.user.as_ref()),
        sample_cut,
        tallies,
        merged_from: secondary.filter(|s| *s != fp.0),
    }))
}

/// The key of an event's bucket: the hash of its project, release and environment (each
/// length-prefixed), fingerprint and minute. In one shot from a stack buffer when the parts fit
/// (every valid event: validation bounds them), streamed otherwise: the same value either way.
fn bucket_key(parts: [&str; 3], fingerprint: u128, minute: i64) -> u128 {
    let len = parts.iter().map(|p| 4 + p.len()).sum::<usize>() + 16 + 8;
    // The buffer zeroed is the smaller one that fits (a `memset` of 512 bytes was about 42
    // instructions an event; most events' parts take well under 128).
    if len <= 128 {
        return bucket_key_in(&mut [0u8; 128], parts, fingerprint, minute, len);
    }
    if len <= 512 {
        return bucket_key_in(&mut [0u8; 512], parts, fingerprint, minute, len);
    }
    let mut h = Xxh3::new();
    for part in parts {
        h.update(&(part.len() as u32).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.update(&fingerprint.to_le_bytes());
    h.update(&minute.to_le_bytes());
    h.digest128()
}

/// [`bucket_key`]'s one shot, in `buf` (`len` bytes, which fit).
#[inline(always)]
fn bucket_key_in<const N: usize>(
    buf: &mut [u8; N],
    parts: [&str; 3],
    fingerprint: u128,
    minute: i64,
    len: usize,
) -> u128 {
    let mut n = 0;
    let mut put = |bytes: &[u8]| {
        buf[n..n + bytes.len()].copy_from_slice(bytes);
        n += bytes.len();
    };
    for p in parts {
        put(&(p.len() as u32).to_le_bytes());
        put(p.as_bytes());
    }
    put(&fingerprint.to_le_bytes());
    put(&minute.to_le_bytes());
    xxhash_rust::xxh3::xxh3_128(&buf[..len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tracefold_model::breakdown;

    const NOW: Millis = 1_795_671_540_000;

    fn event(i: u64, issue: u64, user: u64, minute: i64) -> String {
        format!(
            r#"{{"event_id":"{i:032x}","project":"shop","timestamp":{ts},"release":"1.0","environment":"prod",
            "user":{{"id":"u{user}"}},
            "exception":[{{"type":"Error{issue}","value":"boom {i}","stacktrace":{{"frames":[{{"function":"f{issue}","filename":"app.js","lineno":{i}}}]}}}}]}}"#,
            ts = NOW / 1000 - 600 + minute * 60,
        )
    }

    #[test]
    fn groups_counts_users_and_rejects() {
        let mut b = BatchBuilder::new(BatchOptions::default());
        b.add(event(1, 1, 1, 0).as_bytes(), 10, NOW);
        b.add(event(2, 1, 2, 0).as_bytes(), 11, NOW);
        b.add(b"{not json", 12, NOW);
        b.add(event(3, 1, 1, 0).as_bytes(), 13, NOW);
        b.add(event(4, 2, 1, 0).as_bytes(), 14, NOW);
        b.add(event(5, 1, 1, 1).as_bytes(), 15, NOW);
        b.add(br#"{"event_id":"00000000000000000000000000000006","message":"no project"}"#, 16, NOW);
        let out = b.finish("e1", "t", 3, 10, 16);
        assert_eq!(out.accepted, 5);
        assert_eq!(out.records.len(), 3);
        let r0 = &out.records[0];
        assert_eq!((r0.count, r0.users.estimate(), r0.title.as_str()), (3, 2, "Error1: boom <int>"));
        assert_eq!(
            (r0.batch.partition, r0.batch.first_offset, r0.batch.last_offset, r0.batch.index, r0.batch.count),
            (3, 10, 16, 0, 3)
        );
        assert_eq!(out.records[1].count, 1);
        assert_eq!(out.records[2].minute, r0.minute + 60);
        assert!(!r0.sample.is_empty() && !out.records[1].sample.is_empty(), "first bucket of each issue has a sample");
        assert!(out.records[2].sample.is_empty(), "later buckets of the same issue in the batch do not");
        assert_eq!(out.rejected.iter().map(|r| r.offset).collect::<Vec<_>>(), [12, 16]);
        assert!(out.rejected[0].rejection.detail.starts_with("malformed event json"), "{}", out.rejected[0].rejection);
        assert_eq!(out.rejected[0].rejection.reason, Reason::Malformed);
        assert_eq!(out.rejected[1].rejection.detail, "invalid event: project: missing");
        assert_eq!(out.rejected[1].rejection.reason, Reason::Invalid);
        assert_eq!(out.rejected[0].payload, b"{not json");
        // The builder is reusable and empty.
        assert_eq!(b.finish("e1", "t", 3, 17, 17), BatchOutput::default());
    }

    #[test]
    fn a_panic_costs_one_event_and_replays_decide_the_same() {
        let mut b = BatchBuilder::new(BatchOptions::default());
        b.inject_panic_on(b"boom 2\"");
        for i in 1..=4 {
            b.add(event(i, 1, i, 0).as_bytes(), i as i64, NOW);
        }
        let first = b.finish("e1", "t", 0, 1, 4);
        assert_eq!(first.accepted, 3);
        assert_eq!(first.records.iter().map(|r| r.count).sum::<u64>(), 3);
        assert_eq!(first.rejected.len(), 1);
        assert_eq!((first.rejected[0].offset, first.rejected[0].rejection.reason), (2, Reason::Internal));
        assert!(first.rejected[0].rejection.detail.contains("injected fault"), "{}", first.rejected[0].rejection);
        for i in 1..=4 {
            b.add(event(i, 1, i, 0).as_bytes(), i as i64, NOW);
        }
        assert_eq!(b.finish("e1", "t", 0, 1, 4), first);
    }

    #[test]
    fn hostile_events_are_counted_or_rejected_with_a_reason() {
        let id = |i: u32| format!("{i:032x}");
        let deep = format!(
            r#"{{"event_id":"{}","project":"p","message":"m","extra":{}1{}}}"#,
            id(3),
            "[".repeat(200),
            "]".repeat(200)
        );
        let cases: Vec<(String, Option<Reason>)> = vec![
            (
                format!(
                    r#"{{"event_id":"{}","project":"p","exception":[{{"type":"Ошибка","value":"сломалось \ud83d","stacktrace":{{"frames":[{{"function":"обработатьЗаказПользователя","module":"заказы$1","filename":"日本/語.js"}}]}}}}]}}"#,
                    id(1)
                ),
                None,
            ),
            (format!(r#"{{"event_id":"{}","project":"p","message":"{}"}}"#, id(2), "1 ".repeat(200_000)), None),
            (deep, Some(Reason::TooDeep)),
            (format!(r#"{{"event_id":"{}","project":null,"message":"m"}}"#, id(4)), Some(Reason::Invalid)),
            ("\u{0}\u{ffff}".into(), Some(Reason::Malformed)),
            (
                format!(r#"{{"event_id":"{}","project":"p","message":"{}"}}"#, id(5), "x".repeat(MAX_EVENT_BYTES)),
                Some(Reason::TooLarge),
            ),
        ];
        let mut b = BatchBuilder::new(BatchOptions::default());
        for (i, (json, _)) in cases.iter().enumerate() {
            b.add(json.as_bytes(), i as i64, NOW);
        }
        let out = b.finish("e1", "t", 0, 0, cases.len() as i64 - 1);
        let want: Vec<(i64, Reason)> =
            cases.iter().enumerate().filter_map(|(i, (_, r))| r.map(|r| (i as i64, r))).collect();
        let got: Vec<(i64, Reason)> = out.rejected.iter().map(|r| (r.offset, r.rejection.reason)).collect();
        assert_eq!(got, want);
        assert_eq!(out.accepted, 2);
        let cyr = &out.records[0];
        assert_eq!(cyr.exc_type, "Ошибка");
        assert!(cyr.title.starts_with("Ошибка: сломалось"), "{}", cyr.title);
        // The sample is the event with the lone surrogate repaired: it parses again.
        assert!(cyr.sample.contains("\\ufffd"), "{}", cyr.sample);
        assert!(tracefold_model::parse_event_str(&cyr.sample).is_ok());
        // A long message: bounded title, bounded sample.
        assert!(out.records[1].title.len() <= 200);
        assert!(out.records[1].sample.len() <= tracefold_model::sample::MAX_SAMPLE_BYTES);
        assert_eq!(out.samples_truncated, 1, "the long event's sample was cut, and counted");
    }

    #[test]
    fn a_re_sent_event_counts_once_within_the_window_and_again_outside_it() {
        let mut b = BatchBuilder::new(BatchOptions { dedup_window: 5, ..BatchOptions::default() });
        b.add(event(1, 1, 1, 0).as_bytes(), 0, NOW);
        b.add(event(2, 1, 1, 0).as_bytes(), 1, NOW);
        let first = b.finish("e1", "t", 0, 0, 1);
        assert_eq!(first.accepted, 2);
        // The retry of the request: both again (a new batch), and a new one. The UUID form of
        // an id is the same id.
        let uuid_of_2 = "00000000-0000-0000-0000-000000000002";
        b.add(event(1, 1, 1, 0).as_bytes(), 2, NOW);
        b.add(event(2, 1, 1, 0).replace(&format!("{:032x}", 2), uuid_of_2).as_bytes(), 3, NOW);
        b.add(event(3, 1, 1, 0).as_bytes(), 4, NOW);
        // Another project's event with the same id is another event.
        b.add(event(3, 1, 1, 0).replace("\"shop\"", "\"web\"").as_bytes(), 5, NOW);
        let retry = b.finish("e1", "t", 0, 2, 5);
        assert_eq!(retry.accepted, 2);
        assert_eq!(retry.records.iter().map(|r| r.count).sum::<u64>(), 2);
        let dups: Vec<(i64, &str)> = retry.duplicates.iter().map(|d| (d.offset, d.project.as_str())).collect();
        assert_eq!(dups, [(2, "shop"), (3, "shop")]);
        // Offset 11 is more than 5 after the last copy of event 3 (offset 4): counted again.
        b.add(event(3, 1, 1, 0).as_bytes(), 11, NOW);
        let late = b.finish("e1", "t", 0, 11, 11);
        assert_eq!((late.accepted, late.duplicates.len()), (1, 0));
    }

    /// An event of issue 1 in minute 0 with the given browser (name, version), OS and URL.
    fn event_from(i: u64, browser: Option<(&str, &str)>, os: Option<&str>, url: Option<&str>) -> String {
        let mut contexts = serde_json::Map::new();
        if let Some((name, version)) = browser {
            contexts.insert("browser".into(), serde_json::json!({"name": name, "version": version}));
        }
        if let Some(name) = os {
            contexts.insert("os".into(), serde_json::json!({"name": name, "version": "1"}));
        }
        let mut e: serde_json::Value = serde_json::from_str(&event(i, 1, i, 0)).unwrap();
        e["contexts"] = contexts.into();
        if let Some(u) = url {
            e["request"] = serde_json::json!({ "url": u });
        }
        e.to_string()
    }

    fn counts(values: &[breakdown::ValueCount]) -> Vec<(&str, u64)> {
        values.iter().map(|v| (v.value.as_str(), v.count)).collect()
    }

    #[test]
    fn aggregates_count_events_by_browser_os_and_url() {
        let long = format!("https://例え.jp/{}", "ß".repeat(300));
        let mut b = BatchBuilder::new(BatchOptions::default());
        let evs = [
            event_from(1, Some(("Chrome", "120.0.6099.109")), Some("Windows"), Some("https://shop.example/cart?id=1")),
            event_from(2, Some(("Chrome", "120.1")), Some("Windows"), Some("https://shop.example/cart#top")),
            event_from(3, Some(("Chrome", "121.0")), Some("iOS"), Some(&long)),
            event_from(4, Some(("Яндекс", "")), None, None),
            event_from(5, None, Some("Windows"), Some("https://shop.example/cart")),
        ];
        for (i, e) in evs.iter().enumerate() {
            b.add(e.as_bytes(), i as i64, NOW);
        }
        let out = b.finish("e1", "t", 0, 0, 4);
        assert_eq!(out.records.len(), 1, "one bucket");
        let bd = &out.records[0].breakdown;
        assert_eq!(counts(&bd.browser), [("Chrome 120", 2), ("Chrome 121", 1), ("Яндекс", 1)]);
        assert_eq!(counts(&bd.os), [("Windows", 3), ("iOS", 1)]);
        let cut = tracefold_model::text::prefix(&long, breakdown::MAX_URL_BYTES);
        assert_eq!(counts(&bd.url), [("https://shop.example/cart", 3), (cut, 1)]);
        // On the wire and back.
        let json = serde_json::to_string(&out.records[0]).unwrap();
        assert_eq!(serde_json::from_str::<AggregateRecord>(&json).unwrap(), out.records[0]);
    }

    #[test]
    fn past_ten_values_per_bucket_events_count_as_other() {
        let mut b = BatchBuilder::new(BatchOptions::default());
        for i in 0..30u64 {
            // Route words, not ids (those would be one value: `<int>`).
            let url = format!("https://x.example/ページ/p{}", i % 13);
            b.add(event_from(i + 1, None, None, Some(&url)).as_bytes(), i as i64, NOW);
        }
        let out = b.finish("e1", "t", 0, 0, 29);
        let url = &out.records[0].breakdown.url;
        assert_eq!(url.len(), breakdown::MAX_VALUES + 1);
        assert_eq!(url.iter().map(|v| v.count).sum::<u64>(), 30);
        // Values 10, 11 and 12 come twice each (i = 10..=12 and 23..=25), after ten others.
        assert_eq!(counts(&url[10..]), [(breakdown::OTHER, 6)]);
        assert_eq!(counts(&url[..1]), [("https://x.example/ページ/p0", 3)]);
    }

    #[test]
    fn bucket_keys_in_one_shot_are_the_streamed_hash() {
        let long = "r".repeat(600);
        // Keys of exactly 128 bytes, 129 and 512 (with "p" and "日本": 43 bytes and the
        // release): each buffer at its bound, and the stream past it.
        let (at_128, past_128, at_512) = ("r".repeat(85), "r".repeat(86), "r".repeat(469));
        for parts in [
            ["shop", "1.0", "prod"],
            ["", "", ""],
            ["p", long.as_str(), "日本"],
            ["p", at_128.as_str(), "日本"],
            ["p", past_128.as_str(), "日本"],
            ["p", at_512.as_str(), "日本"],
        ] {
            let mut h = Xxh3::new();
            for part in parts {
                h.update(&(part.len() as u32).to_le_bytes());
                h.update(part.as_bytes());
            }
            h.update(&7u128.to_le_bytes());
            h.update(&(-60i64).to_le_bytes());
            assert_eq!(bucket_key(parts, 7, -60), h.digest128());
        }
    }

    proptest! {
        /// A builder that starts at offset `start` and is primed with the window before it
        /// emits exactly what a builder that read the partition from the start emits.
        #[test]
        fn a_primed_builder_decides_as_one_that_read_everything(
            log in proptest::collection::vec((0u64..6, any::<bool>()), 0..120),
            window in 0u64..12,
            start in 0usize..120,
        ) {
            let opts = BatchOptions { dedup_window: window, ..BatchOptions::default() };
            let payload = |(id, bad): (u64, bool)| if bad && id % 2 == 0 { b"{\"broken".to_vec() } else { event(id, id % 3, id, 0).into_bytes() };
            let start = start.min(log.len());
            let mut all = BatchBuilder::new(opts.clone());
            for (o, e) in log.iter().enumerate().take(start) {
                all.add(&payload(*e), o as i64, NOW);
            }
            let _ = all.finish("e1", "t", 0, 0, start as i64);
            let mut primed = BatchBuilder::new(opts);
            for (o, e) in log.iter().enumerate().take(start).skip(start.saturating_sub(window as usize)) {
                primed.prime(&payload(*e), o as i64, NOW);
            }
            for (o, e) in log.iter().enumerate().skip(start) {
                all.add(&payload(*e), o as i64, NOW);
                primed.add(&payload(*e), o as i64, NOW);
            }
            let end = log.len() as i64;
            let (a, p) = (all.finish("e1", "t", 0, start as i64, end), primed.finish("e1", "t", 0, start as i64, end));
            prop_assert_eq!(a.accepted + a.duplicates.len() as u64 + a.rejected.len() as u64, (log.len() - start) as u64);
            prop_assert_eq!(a, p);
        }

        /// Every event with a URL counts once in its bucket's URL breakdown (as itself or as
        /// "(other)"), whatever the text, and a replay builds the same breakdowns.
        #[test]
        fn breakdown_counts_are_preserved_and_deterministic(
            evs in proptest::collection::vec((0u64..3, proptest::option::of("\\PC{0,40}")), 0..80)
        ) {
            let payload = |i: usize, minute: u64, url: &Option<String>| {
                let mut e: serde_json::Value = serde_json::from_str(&event(i as u64, 1, 1, minute as i64)).unwrap();
                if let Some(u) = url {
                    e["request"] = serde_json::json!({ "url": u });
                }
                e.to_string()
            };
            let mut b = BatchBuilder::new(BatchOptions::default());
            for (i, (minute, url)) in evs.iter().enumerate() {
                b.add(payload(i, *minute, url).as_bytes(), i as i64, NOW);
            }
            let first = b.finish("e1", "t", 0, 0, evs.len() as i64);
            let with_url = evs
                .iter()
                .filter(|(_, u)| u.as_deref().is_some_and(|u| !u.split(['?', '#']).next().unwrap_or("").trim().is_empty()))
                .count() as u64;
            let counted: u64 = first.records.iter().flat_map(|r| r.breakdown.url.iter().map(|v| v.count)).sum();
            prop_assert_eq!(counted, with_url);
            for r in &first.records {
                prop_assert!(r.breakdown.url.len() <= breakdown::MAX_VALUES + 1);
                prop_assert!(r.breakdown.url.iter().all(|v| v.value.len() <= breakdown::MAX_URL_BYTES));
            }
            for (i, (minute, url)) in evs.iter().enumerate() {
                b.add(payload(i, *minute, url).as_bytes(), i as i64, NOW);
            }
            prop_assert_eq!(b.finish("e1", "t", 0, 0, evs.len() as i64), first);
        }

        /// Aggregation never loses or invents counts, and a replay of the same range is
        /// identical to the first run.
        #[test]
        fn counts_are_preserved_and_batches_are_deterministic(
            evs in proptest::collection::vec((0u64..5, 0u64..20, 0i64..4, any::<bool>()), 0..200)
        ) {
            let mut b = BatchBuilder::new(BatchOptions::default());
            let mut expected_ok = 0u64;
            let mut per_issue = std::collections::BTreeMap::<String, u64>::new();
            for (i, (issue, user, minute, bad)) in evs.iter().enumerate() {
                if *bad && i % 3 == 0 {
                    b.add(b"[1,2", i as i64, NOW);
                } else {
                    b.add(event(i as u64, *issue, *user, *minute).as_bytes(), i as i64, NOW);
                    expected_ok += 1;
                    *per_issue.entry(format!("Error{issue}")).or_default() += 1;
                }
            }
            let first = b.finish("e1", "t", 0, 0, evs.len() as i64);
            let total: u64 = first.records.iter().map(|r| r.count).sum();
            prop_assert_eq!(total, expected_ok);
            prop_assert_eq!(first.accepted, expected_ok);
            prop_assert_eq!(first.rejected.len() as u64 + expected_ok, evs.len() as u64);
            let mut got = std::collections::BTreeMap::<String, u64>::new();
            for r in &first.records {
                *got.entry(r.exc_type.clone()).or_default() += r.count;
            }
            prop_assert_eq!(got, per_issue);

            for (i, (issue, user, minute, bad)) in evs.iter().enumerate() {
                if *bad && i % 3 == 0 {
                    b.add(b"[1,2", i as i64, NOW);
                } else {
                    b.add(event(i as u64, *issue, *user, *minute).as_bytes(), i as i64, NOW);
                }
            }
            let replay = b.finish("e1", "t", 0, 0, evs.len() as i64);
            prop_assert_eq!(first, replay);
        }
    }
}
