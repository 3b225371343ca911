//! The detector's state machine over partial aggregates, on event time: `new_issue` and
//! `regression` as records arrive, `spike` and `threshold` as minutes close.
//!
//! # Event time, per partition
//!
//! Each aggregates partition the detector owns has its own watermark: the latest minute of its
//! records, each record's minute taken no later than the minute it was received in (its Kafka
//! timestamp, see [`effective_minute`]), so that an event dated a day ahead (a phone with a wrong
//! clock) moves nothing. The engine's watermark is the minimum over the owned partitions that are
//! not idle (no record for [`EngineConfig::idle_ms`] of the detector's clock); it never goes
//! back. A minute closes, and is evaluated, when the watermark is `lateness_min` minutes past it.
//!
//! # Late data
//!
//! A record of a minute already evaluated, up to `allowed_lateness_min` minutes behind the
//! watermark, still counts: the issue's minutes from that one on are evaluated again with the
//! new counts (the spike model is replayed from its state before them), and only what the new
//! counts show that was not signalled yet is signalled. So minutes delivered out of order (a
//! catch-up after an outage, offline SDKs, an hour sent at once) are judged on their event-time
//! counts. A record further behind is not used for detection (it is stored all the same) and is
//! counted in `tracefold_detector_late_records_total`. Records taken before there was a
//! watermark (the first after a start) are held to it at their issue's first evaluation, by
//! minute: those more than `allowed_lateness_min` + `evict_idle_min` behind are dropped and
//! counted the same way (a minute of 1970 would otherwise be walked to from there, minute by
//! minute).
//!
//! # Bounded state
//!
//! The engine holds an issue only while it is active: an issue without records for
//! `evict_idle_min` minutes of event time (and with nothing left to evaluate) is evicted, and
//! when more than `max_issues` are held the least recently seen go first. Per issue it keeps
//! only what a signal needs: the title and culprit, the facts of one sample (top frames, URL,
//! browser, OS; not the sample), the per-minute counts and user hashes of the minutes still
//! open or inside the allowed lateness, and the spike model (a few numbers).
//!
//! With lookups on ([`Engine::with_lookups`], as the service runs it), the records of an issue
//! that is not held wait ([`Engine::lookups`]) until the caller has read what ClickHouse knows
//! of it ([`Engine::restore`]): whether it was seen before (no `new_issue` again), its
//! per-minute counts before those records (the spike baseline) and the spikes and thresholds
//! already signalled for it. So an evicted issue that returns, an issue of a partition taken
//! over from another replica, and every issue after a restart are judged as if they had been
//! held all along. Without lookups (simulations, tests) an issue not held is new unless
//! [`Engine::known`] said otherwise or it was held before.
//!
//! # Late source maps
//!
//! A record of issue `P` naming `S` in `merged_from` (the same bug, grouped as `S` before its
//! source map arrived) makes `P` no new issue when `S` was seen, and `P` takes `S`'s history:
//! `S`'s state when the engine holds it (which it then drops, see `Engine::absorb`), else
//! `S`'s stored per-minute counts through the lookup ([`Restored::aliases`]; for a `P` already
//! held, through a lookup of `S` itself, see [`Engine::lookups`]). With no status
//! of its own, `P` regresses through `S`'s resolution (docs/sourcemaps.md "Late maps").

use crate::signal::{sample_facts, signal_id, Kind, SampleFacts, Signal, SIGNAL_FORMAT_VERSION};
use crate::spike::{SpikeConfig, SpikeState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use tracefold_model::time::format_rfc3339;
use tracefold_model::AggregateRecord;

/// A threshold rule: more than `events` events, or `users` distinct users, in `minutes`
/// minutes, for issues matching the filters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdRule {
    /// Name, carried by the signal and used for routing.
    pub name: String,
    /// Only this project.
    #[serde(default)]
    pub project: Option<String>,
    /// Only events of this environment.
    #[serde(default)]
    pub environment: Option<String>,
    /// Only events of this level.
    #[serde(default)]
    pub level: Option<String>,
    /// Fire above this many events in the window.
    #[serde(default)]
    pub events: Option<u64>,
    /// Fire above this many distinct users in the window.
    #[serde(default)]
    pub users: Option<u64>,
    /// Window length, minutes.
    pub minutes: u32,
}

/// Detection settings (`[detector]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Spike detection.
    pub spike: SpikeConfig,
    /// Threshold rules.
    pub thresholds: Vec<ThresholdRule>,
    /// Minutes a minute stays open past the watermark before it is first evaluated.
    pub lateness_min: i64,
    /// Minutes behind the watermark a record still counts for detection: its minute (and the
    /// issue's minutes after it) is evaluated again. Older records are not used for detection
    /// (`tracefold_detector_late_records_total`). At least `lateness_min`.
    pub allowed_lateness_min: i64,
    /// Milliseconds (of the detector's clock) without a record after which a partition no
    /// longer holds the watermark back.
    pub idle_ms: i64,
    /// A resolved issue regresses only when seen in a newer release than the one it was
    /// resolved in (false: seen again at all).
    pub regression_needs_newer_release: bool,
    /// Minutes of event time without records after which an issue's state is evicted (at
    /// least `allowed_lateness_min` + 10): its counts are in ClickHouse, and its state is read
    /// back from there when it returns.
    pub evict_idle_min: i64,
    /// Most issues held at once; beyond it the least recently seen are evicted first (about
    /// 1.2 KB each: 300,000 fit the small deployment's 512 MiB).
    pub max_issues: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            spike: SpikeConfig::default(),
            thresholds: Vec::new(),
            lateness_min: 2,
            allowed_lateness_min: 120,
            idle_ms: 10_000,
            regression_needs_newer_release: false,
            evict_idle_min: 150,
            max_issues: 300_000,
        }
    }
}

/// Where and when a record arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Aggregates partition.
    pub partition: i32,
    /// When it was received, Unix ms: the Kafka timestamp of the aggregate record (when the
    /// grouper produced it, about when its events were received).
    pub received_ms: i64,
    /// The detector's clock when it read the record, Unix ms (for the idle rule).
    pub now_ms: i64,
}

/// The minute a record counts in for detection: its event-time minute, but no later than the
/// minute it was received in (a future-dated record counts as received).
pub fn effective_minute(minute: i64, received_ms: i64) -> i64 {
    minute.min(received_ms.div_euclid(60_000) * 60)
}

/// User hashes, appended as records come and made distinct when the list has doubled since
/// it last was (amortized linear; a minute of one record holds its few hashes, no table).
#[derive(Debug, Default, Clone)]
struct Users {
    hashes: Vec<u64>,
    distinct: usize,
}

impl Users {
    fn extend(&mut self, hashes: &[u64]) {
        self.hashes.extend_from_slice(hashes);
        if self.hashes.len() > 2 * self.distinct.max(16) {
            self.compact();
        }
    }

    fn compact(&mut self) {
        self.hashes.sort_unstable();
        self.hashes.dedup();
        self.hashes.shrink_to_fit();
        self.distinct = self.hashes.len();
    }
}

#[derive(Debug, Default)]
struct Minute {
    count: u64,
    users: Users,
    /// Per threshold rule: events and users that match its filters.
    rules: Vec<(u64, Users)>,
}

/// An issue's minutes, sorted: a short vector (most issues have a few open minutes; a
/// `BTreeMap` node alone is larger than a few minutes).
#[derive(Debug, Default)]
struct Minutes(Vec<(i64, Minute)>);

impl Minutes {
    fn entry(&mut self, minute: i64) -> &mut Minute {
        let i = match self.0.last() {
            Some((m, _)) if *m < minute => self.0.len(),
            _ => self.0.partition_point(|(m, _)| *m < minute),
        };
        if self.0.get(i).is_none_or(|(m, _)| *m != minute) {
            // Most issues have one or two minutes open: no room for four.
            self.0.reserve_exact(1);
            self.0.insert(i, (minute, Minute::default()));
        }
        &mut self.0[i].1
    }

    fn get(&self, minute: i64) -> Option<&Minute> {
        let i = self.0.partition_point(|(m, _)| *m < minute);
        self.0.get(i).filter(|(m, _)| *m == minute).map(|(_, x)| x)
    }

    /// The minutes from `from` to `to`, both included.
    fn range(&self, from: i64, to: i64) -> impl Iterator<Item = &Minute> {
        let a = self.0.partition_point(|(m, _)| *m < from);
        let b = self.0.partition_point(|(m, _)| *m <= to);
        self.0[a..b.max(a)].iter().map(|(_, x)| x)
    }

    fn first(&self) -> Option<i64> {
        self.0.first().map(|(m, _)| *m)
    }

    /// Forgets the minutes before `horizon`.
    fn forget_before(&mut self, horizon: i64) {
        let n = self.0.partition_point(|(m, _)| *m < horizon);
        if n > 0 {
            self.0.drain(..n);
            if self.0.capacity() > 4 * self.0.len().max(4) {
                self.0.shrink_to_fit();
            }
        }
    }
}

/// Distinct users over some minutes' user lists.
fn distinct_users<'a>(lists: impl Iterator<Item = &'a Users>) -> u64 {
    let mut all: Vec<u64> = Vec::new();
    for u in lists {
        all.extend_from_slice(&u.hashes);
    }
    all.sort_unstable();
    all.dedup();
    all.len() as u64
}

/// The spike model at some minute: its state, and since when it is warm.
#[derive(Debug, Clone, Default)]
struct Model {
    spike: SpikeState,
    /// The first minute after which the issue had a baseline of its own.
    warm_since: Option<i64>,
}

impl Model {
    fn observe(&mut self, minute: i64, count: u64, cfg: &SpikeConfig) -> crate::spike::Verdict {
        let v = self.spike.observe(count as f64, cfg);
        if self.warm_since.is_none() && self.spike.warm(cfg) {
            self.warm_since = Some(minute);
        }
        v
    }
}

#[derive(Debug, Default)]
struct Issue {
    title: Box<str>,
    culprit: Box<str>,
    level: Arc<str>,
    platform: Arc<str>,
    first_seen_ms: i64,
    last_seen_ms: i64,
    release: Arc<str>,
    environment: Arc<str>,
    /// What signals show of a sample event: the first sample this engine saw of the issue,
    /// or the one of the record that revealed a regression.
    facts: Option<Facts>,
    /// The aggregates partition its records come from (the key is the issue).
    partition: i32,
    /// The latest effective minute of its records (for eviction).
    last_minute: i64,
    minutes: Minutes,
    /// The model after every minute before `base_next`: minutes beyond the allowed lateness
    /// (or taken from ClickHouse at start-up), which change no more.
    base: Model,
    base_next: Option<i64>,
    /// The model after `closed`, the last minute evaluated.
    model: Model,
    closed: Option<i64>,
    /// The earliest evaluated minute whose counts changed since it was evaluated.
    dirty: Option<i64>,
    /// The earliest minute of the records taken since the last evaluation.
    fresh: Option<i64>,
    /// Judged while records of closed minutes were still coming in: the minute to judge
    /// again from at the next evaluation, which signals what it finds.
    recheck: Option<i64>,
    /// The detector's clock when the issue's records of closed minutes started coming in.
    settling_since: Option<i64>,
    /// Minutes signalled as spikes (not signalled again when evaluated again).
    spiked: BTreeSet<i64>,
    /// Per threshold rule: the last minute it fired for.
    fired: HashMap<usize, i64>,
    /// A spike was signalled against the project's baseline while this issue had no history.
    cold_spiked: bool,
    /// Aliases whose history this issue took (a late source map, see [`Engine::absorb`]): a
    /// later state of one of them brings only its new minutes. At most [`MAX_ABSORBED`]: the
    /// history of an alias beyond them is not taken.
    absorbed: Vec<Box<str>>,
}

/// Most aliases an issue remembers having taken the history of.
const MAX_ABSORBED: usize = 16;

/// Most alias lookups one record queues (see [`Engine::absorb`]).
const MAX_ALIAS_LOOKUPS: usize = 8;

/// With lookups: an alias named by a held issue's record, neither held nor taken, whose stored
/// history waits for [`Engine::restore`] to go into that issue's.
#[derive(Debug, Clone)]
struct AliasWait {
    /// The issue that takes it.
    into: String,
    /// The minute of the record that named it: its history before that minute.
    from_minute: i64,
    /// That record's first seen, Unix ms.
    first_seen_ms: i64,
    /// That record's partition (a revoked partition's lookups go with it).
    partition: i32,
}

impl Issue {
    /// Moves the frozen baseline on to `to` (exclusive) over the issue's own minutes, as
    /// [`Engine::advance`] does when minutes leave the allowed lateness (the minutes from
    /// `base_next` on are all still held).
    fn freeze_until(&mut self, to: i64, cfg: &SpikeConfig) {
        let mut next = self.base_next.or_else(|| self.minutes.first());
        while let Some(x) = next.filter(|x| *x < to) {
            let count = self.minutes.get(x).map_or(0, |m| m.count);
            self.base.observe(x, count, cfg);
            next = Some(x + 60);
        }
        if self.base_next.is_some() || next.is_some() {
            self.base_next = Some(to.max(self.base_next.unwrap_or(to)));
        }
    }

    /// Adds `alias`'s minutes from `from` on (counts, users, the threshold rules' counts)
    /// to this issue's; returns the earliest minute added.
    fn add_minutes(&mut self, alias: &Minutes, from: Option<i64>) -> Option<i64> {
        let mut earliest = None;
        for (minute, x) in &alias.0 {
            if from.is_some_and(|f| *minute < f) {
                continue;
            }
            earliest = earliest.or(Some(*minute));
            let m = self.minutes.entry(*minute);
            m.count += x.count;
            m.users.extend(&x.users.hashes);
            if m.rules.len() < x.rules.len() {
                m.rules.resize_with(x.rules.len(), Default::default);
            }
            for (i, (c, u)) in x.rules.iter().enumerate() {
                m.rules[i].0 += c;
                m.rules[i].1.extend(&u.hashes);
            }
        }
        earliest
    }
}

/// One owned partition's event time.
#[derive(Debug, Clone, Copy)]
struct Partition {
    /// The latest effective minute of its records.
    watermark: Option<i64>,
    /// The detector's clock at its last record (or its assignment), ms.
    active_ms: i64,
}

/// Per project: the baselines of its warm issues, by the minute they became warm.
#[derive(Debug, Default)]
struct ProjectBaselines {
    /// (warm since, sum of the baselines of the issues warm since then or earlier), by minute.
    by_minute: Vec<(i64, f64)>,
}

impl ProjectBaselines {
    /// The mean baseline of the issues warm at `minute`.
    fn at(&self, minute: i64) -> Option<f64> {
        let n = self.by_minute.partition_point(|(w, _)| *w <= minute);
        (n > 0).then(|| self.by_minute[n - 1].1 / n as f64)
    }
}

/// (project, issue id).
type Key = (String, String);

/// Resolved issues, per project then issue: resolved at (ms) and in which release. Two levels,
/// so that the resolutions of the aliases a record names are looked up without building keys.
type Resolutions = HashMap<String, HashMap<String, (i64, String)>>;

/// An issue's resolution, if any.
fn resolution<'a>(r: &'a Resolutions, project: &str, issue_id: &str) -> Option<&'a (i64, String)> {
    r.get(project)?.get(issue_id)
}

/// Forgets an issue's resolution (no allocation).
fn forget(r: &mut Resolutions, project: &str, issue_id: &str) {
    if let Some(issues) = r.get_mut(project) {
        issues.remove(issue_id);
        if issues.is_empty() {
            r.remove(project);
        }
    }
}

/// [`SampleFacts`] in one allocation: each field as its byte length, `:`, and its text (URL,
/// browser, OS, then the frames).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Facts(Box<str>);

impl Facts {
    fn of(f: &SampleFacts) -> Self {
        let mut s = String::new();
        let fields = [&f.request_url, &f.browser, &f.os].into_iter().chain(f.top_frames.iter());
        for x in fields {
            s.push_str(&x.len().to_string());
            s.push(':');
            s.push_str(x);
        }
        Self(s.into())
    }

    fn get(&self) -> SampleFacts {
        let mut fields = Vec::new();
        let mut rest: &str = &self.0;
        while let Some((len, tail)) = rest.split_once(':') {
            let Ok(len) = len.parse::<usize>() else { break };
            // Written whole, so `len` falls on a character boundary.
            let Some(field) = tail.get(..len) else { break };
            fields.push(field.to_owned());
            rest = &tail[len..];
        }
        let mut it = fields.into_iter();
        SampleFacts {
            request_url: it.next().unwrap_or_default(),
            browser: it.next().unwrap_or_default(),
            os: it.next().unwrap_or_default(),
            top_frames: it.collect(),
        }
    }
}

/// What the caller read about an issue the engine does not hold (see [`Engine::restore`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Restored {
    /// Seen before the records waiting for it, or one of the issues they name in
    /// `merged_from` was: no `new_issue`.
    pub known: bool,
    /// Per-minute counts before the earliest waiting record's minute, oldest first (minute
    /// in Unix seconds): the spike baseline.
    pub history: Vec<(i64, u64)>,
    /// Spikes and thresholds already signalled for it: (kind, rule name, minute).
    pub signalled: Vec<(Kind, String, i64)>,
    /// Of the issues its waiting records name in `merged_from` ([`Lookup::merged_from`]), those
    /// stored, with their per-minute counts before the same minute, oldest first: the issue
    /// takes their history (summed by minute) unless the engine holds them (then it takes
    /// their state; docs/sourcemaps.md "Late maps").
    pub aliases: Vec<(String, Vec<(i64, u64)>)>,
    /// The earliest first seen of those aliases, Unix ms (0: none): the bug's first seen,
    /// which signals of the issue show.
    pub aliases_first_seen_ms: i64,
}

/// An issue whose records wait for [`Engine::restore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// Project slug.
    pub project: String,
    /// Issue id.
    pub issue_id: String,
    /// The earliest first-seen time of its waiting records, Unix ms: seen before that, it is
    /// known.
    pub first_seen_ms: i64,
    /// The earliest minute its waiting records count in (Unix seconds): history before it.
    pub from_minute: i64,
    /// The issues its waiting records name in `merged_from` (sorted, distinct): stored
    /// before, they make it known (a late source map, docs/sourcemaps.md "Late maps").
    pub merged_from: Vec<String>,
}

/// Issues evicted since the last [`Engine::take_evictions`]: (idle, over `max_issues`).
pub type Evictions = (u64, u64);

/// The detector state.
#[derive(Debug, Default)]
pub struct Engine {
    cfg: EngineConfig,
    issues: HashMap<Key, Box<Issue>>,
    /// Without lookups: issues seen before (told, or evicted), not new again.
    known: HashSet<Key>,
    /// With lookups: records of issues not held, waiting for [`Self::restore`], per issue in
    /// arrival order.
    lookups: Option<BTreeMap<Key, Vec<(AggregateRecord, Arrival)>>>,
    /// With lookups: aliases whose stored history a held issue waits for (see
    /// [`Self::absorb`]), by alias.
    alias_lookups: BTreeMap<Key, AliasWait>,
    /// Aliases taken by a held issue, to that issue: a straggler of one goes into it (see
    /// [`Self::route`]). At most `max_issues`; an entry whose issue went is dropped when full.
    routes: HashMap<Key, Box<str>>,
    /// Resolved issues: resolved at (ms) and in which release.
    resolutions: Resolutions,
    /// Issues with a status of their own other than resolved (unresolved again, ignored), as
    /// [`status_hash`]es, replaced by each status snapshot ([`Self::replace_unresolved`]): an
    /// alias's resolution does not stand for theirs.
    unresolved: HashSet<u64>,
    partitions: BTreeMap<i32, Partition>,
    /// The engine's watermark (event time): the minimum over the active partitions.
    watermark: Option<i64>,
    /// Records too late for detection since the last [`Self::take_counts`].
    late: u64,
    /// Records dated after the minute they were received in, since the last
    /// [`Self::take_counts`].
    future: u64,
    evicted: Evictions,
    /// Per project, the baselines of its warm issues, as of the minute `baselines_until`
    /// (computed once a minute, over every issue held).
    baselines: HashMap<String, ProjectBaselines>,
    baselines_until: Option<i64>,
    /// Issues whose judgements wait for the next evaluation.
    rechecking: usize,
    /// Low-cardinality strings (level, platform, environment, release), shared.
    interned: HashSet<Arc<str>>,
}

impl Engine {
    /// A detector with `cfg`.
    pub fn new(mut cfg: EngineConfig) -> Self {
        cfg.allowed_lateness_min = cfg.allowed_lateness_min.max(cfg.lateness_min);
        cfg.evict_idle_min = cfg.evict_idle_min.max(cfg.allowed_lateness_min + 10);
        cfg.max_issues = cfg.max_issues.max(1);
        Self { cfg, ..Self::default() }
    }

    /// Records of issues not held wait for [`Self::restore`] (see the module docs).
    #[must_use]
    pub fn with_lookups(mut self) -> Self {
        self.lookups = Some(BTreeMap::new());
        self
    }

    /// Marks an issue as known (seen before this detector started): no `new_issue` for it.
    /// Without lookups only.
    pub fn known(&mut self, project: &str, issue_id: &str) {
        self.known.insert((project.to_owned(), issue_id.to_owned()));
    }

    /// Marks an issue resolved at `at_ms` (in `release`): a later event is a regression.
    pub fn resolved(&mut self, project: &str, issue_id: &str, at_ms: i64, release: &str) {
        self.unresolved.remove(&status_hash(project, issue_id));
        let issues = match self.resolutions.get_mut(project) {
            Some(issues) => issues,
            None => self.resolutions.entry(project.to_owned()).or_default(),
        };
        issues.insert(issue_id.to_owned(), (at_ms, release.to_owned()));
    }

    /// Forgets a resolution (the issue was reopened or ignored): a later event is no regression.
    pub fn reopened(&mut self, project: &str, issue_id: &str) {
        self.unresolved(project, issue_id);
    }

    /// Marks an issue as having a status of its own other than resolved (unresolved, ignored;
    /// a resolution it had is forgotten): a later event of it is no regression, even when an
    /// issue merged into it by a late source map was resolved (docs/sourcemaps.md "Late
    /// maps").
    pub fn unresolved(&mut self, project: &str, issue_id: &str) {
        self.forget_resolution(project, issue_id);
        self.unresolved.insert(status_hash(project, issue_id));
    }

    /// Forgets an issue's own resolution (no allocation when it has none).
    fn forget_resolution(&mut self, project: &str, issue_id: &str) {
        forget(&mut self.resolutions, project, issue_id);
    }

    /// Replaces the issues with a status of their own other than resolved (see
    /// [`Self::unresolved`]) with `issues`, a whole status snapshot's: the set holds one
    /// hash per such issue of the last snapshot, not every issue ever reported. Resolutions
    /// are not touched (hand a reopening with [`Self::reopened`]).
    pub fn replace_unresolved<'a>(&mut self, issues: impl IntoIterator<Item = (&'a str, &'a str)>) {
        self.unresolved.clear();
        self.unresolved.extend(issues.into_iter().map(|(project, issue_id)| status_hash(project, issue_id)));
        if self.unresolved.capacity() > 4 * self.unresolved.len().max(1024) {
            self.unresolved.shrink_to_fit();
        }
    }

    /// Issues with a status of their own other than resolved, as of the last snapshot.
    pub fn unresolved_count(&self) -> usize {
        self.unresolved.len()
    }

    /// Issues held as resolved and not seen since.
    pub fn resolved_count(&self) -> usize {
        self.resolutions.values().map(HashMap::len).sum()
    }

    /// Issues whose state is held.
    pub fn tracked(&self) -> usize {
        self.issues.len()
    }

    /// Issues evicted since the last call: (idle, over `max_issues`).
    pub fn take_evictions(&mut self) -> Evictions {
        std::mem::take(&mut self.evicted)
    }

    /// Partitions now owned: each holds the watermark back until it has records or is idle.
    pub fn assign(&mut self, partitions: &[i32], now_ms: i64) {
        for p in partitions {
            self.partitions.insert(*p, Partition { watermark: None, active_ms: now_ms });
        }
    }

    /// The partitions owned.
    pub fn owned(&self) -> Vec<i32> {
        self.partitions.keys().copied().collect()
    }

    /// Partitions no longer owned: the state of their issues goes (the next owner reads it
    /// back), and their watermarks no longer hold the engine back.
    pub fn revoke(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.partitions.remove(p);
        }
        self.issues.retain(|_, st| !partitions.contains(&st.partition));
        if let Some(waiting) = &mut self.lookups {
            for records in waiting.values_mut() {
                records.retain(|(_, at)| !partitions.contains(&at.partition));
            }
            waiting.retain(|_, records| !records.is_empty());
        }
        self.alias_lookups.retain(|_, w| !partitions.contains(&w.partition));
    }

    /// Since the last call: records not used for detection because they were more than the
    /// allowed lateness behind the watermark, and records dated after the minute they were
    /// received in (counted in that minute).
    pub fn take_counts(&mut self) -> (u64, u64) {
        (std::mem::take(&mut self.late), std::mem::take(&mut self.future))
    }

    /// Whether judgements wait: for the next [`Self::advance`] (records of minutes being
    /// closed were still coming in at the last one), or for [`Self::restore`].
    pub fn pending(&self) -> bool {
        self.waiting() || self.rechecking > 0
    }

    /// The watermark: minutes up to it minus the lateness are closed (after [`Self::advance`]).
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Takes one partial aggregate; returns `new_issue` and `regression` signals. With lookups,
    /// a record of an issue not held waits (see [`Self::lookups`]) and returns nothing yet.
    pub fn ingest(&mut self, r: &AggregateRecord, at: Arrival) -> Vec<Signal> {
        let minute = effective_minute(r.minute, at.received_ms);
        self.future += u64::from(minute < r.minute);
        let p = self.partitions.entry(at.partition).or_insert(Partition { watermark: None, active_ms: at.now_ms });
        p.watermark = Some(p.watermark.map_or(minute, |w| w.max(minute)));
        p.active_ms = p.active_ms.max(at.now_ms);
        let key = (r.project.clone(), r.issue_id.clone());
        if !self.issues.contains_key(&key) {
            if let Some(into) = self.route(&key) {
                return self.take(&into, r, at, false);
            }
            if let Some(waiting) = &mut self.lookups {
                waiting.entry(key).or_default().push((r.clone(), at));
                return Vec::new();
            }
            let is_new = !self.known.contains(&key) && !self.merged_seen(r);
            self.issues.insert(key.clone(), Box::default());
            self.absorb(&key, r, at);
            return self.take(&key, r, at, is_new);
        }
        self.absorb(&key, r, at);
        self.take(&key, r, at, false)
    }

    /// Moves the state of each issue the record names in `merged_from` that this engine holds
    /// into its issue's (held): one bug, seen as `S` until its source map arrived and as `P`
    /// since, is judged on the history of both, summed by minute (docs/sourcemaps.md "Late
    /// maps"). The alias's entry is dropped: it gets no more events (its stragglers, records of
    /// batches grouped before the map, go into the issue while it is held, see [`Self::route`];
    /// else they make a new entry, known, whose minutes the next record naming it brings
    /// along).
    ///
    /// With lookups, an alias neither held nor taken (another replica held it, or it was
    /// evicted) waits for its stored history ([`Self::lookups`], at most
    /// [`MAX_ALIAS_LOOKUPS`] per record), which [`Self::restore`] then adds to the issue's.
    fn absorb(&mut self, key: &Key, r: &AggregateRecord, at: Arrival) {
        // Every record of the issue after the map names its aliases: once taken (or when no
        // more can be), nothing to do and nothing to allocate. (A taken alias held again, its
        // straggler not routed because the routes were full, stays an entry of its own.)
        let Some(p) = self.issues.get(key) else { return };
        let full = p.absorbed.len() >= MAX_ABSORBED;
        if r.merged_from.iter().all(|a| *a == key.1 || full || p.absorbed.iter().any(|b| **b == **a)) {
            return;
        }
        let mut queued = 0;
        for alias in &r.merged_from {
            if *alias == key.1 {
                continue;
            }
            let alias_key = (key.0.clone(), alias.clone());
            let Some(s) = self.issues.get(&alias_key) else {
                let Some(waiting) = &self.lookups else { continue };
                let Some(p) = self.issues.get(key) else { return };
                let wanted = queued < MAX_ALIAS_LOOKUPS
                    && p.absorbed.len() < MAX_ABSORBED
                    && !p.absorbed.iter().any(|a| **a == **alias)
                    && !waiting.contains_key(&alias_key)
                    && !self.alias_lookups.contains_key(&alias_key);
                if wanted {
                    queued += 1;
                    let w = AliasWait {
                        into: key.1.clone(),
                        from_minute: effective_minute(r.minute, at.received_ms),
                        first_seen_ms: r.first_seen_ms,
                        partition: at.partition,
                    };
                    self.alias_lookups.insert(alias_key, w);
                }
                continue;
            };
            let Some(p) = self.issues.get(key) else { return };
            // An alias (with those it took) that `p` could not remember is not taken: a later
            // state of it would bring its history again. It stays an issue of its own.
            let again = p.absorbed.iter().any(|a| **a == **alias);
            let new = s.absorbed.iter().filter(|a| !p.absorbed.contains(a)).count();
            if !again && p.absorbed.len() + 1 + new > MAX_ABSORBED {
                continue;
            }
            let Some(s) = self.issues.remove(&alias_key) else { continue };
            if self.lookups.is_none() {
                self.known.insert(alias_key);
            }
            let Some(p) = self.issues.get_mut(key) else { return };
            absorb(p, *s, alias, &self.cfg.spike);
            self.remember_route(&key.0, alias, &key.1);
        }
    }

    /// The held issue that took `alias` (a late source map), if any: a straggler of the alias
    /// (a batch grouped before the map) goes into it, as live and in replay, rather than making
    /// an entry of its own without history.
    fn route(&self, alias: &Key) -> Option<Key> {
        let into = self.routes.get(alias)?;
        let key = (alias.0.clone(), into.to_string());
        let p = self.issues.get(&key)?;
        p.absorbed.iter().any(|a| **a == *alias.1).then_some(key)
    }

    /// Remembers that `into` took `alias` (see [`Self::route`]); when `max_issues` are
    /// remembered, the entries of issues no longer held (or that forgot the alias) go first,
    /// and when none does the alias is not remembered (its stragglers make an entry of their
    /// own, as before).
    fn remember_route(&mut self, project: &str, alias: &str, into: &str) {
        if self.routes.len() >= self.cfg.max_issues {
            let issues = &self.issues;
            self.routes.retain(|(project, alias), into| {
                issues
                    .get(&(project.clone(), into.to_string()))
                    .is_some_and(|p| p.absorbed.iter().any(|a| **a == **alias))
            });
            if self.routes.len() >= self.cfg.max_issues {
                return;
            }
        }
        self.routes.insert((project.to_owned(), alias.to_owned()), into.into());
    }

    /// Whether the record names in `merged_from` an issue this engine has seen (held, or
    /// known): its issue is then a known bug whose source map arrived late, not a new issue
    /// (docs/sourcemaps.md "Late maps").
    fn merged_seen(&self, r: &AggregateRecord) -> bool {
        r.merged_from.iter().any(|s| {
            let key = (r.project.clone(), s.clone());
            self.issues.contains_key(&key) || self.known.contains(&key)
        })
    }

    /// Whether records wait for [`Self::restore`].
    pub fn waiting(&self) -> bool {
        self.lookups.as_ref().is_some_and(|w| !w.is_empty()) || !self.alias_lookups.is_empty()
    }

    /// The issues whose records wait for [`Self::restore`], then the aliases whose history a
    /// held issue waits for (see [`Self::absorb`]; without `merged_from`).
    pub fn lookups(&self) -> Vec<Lookup> {
        let Some(waiting) = &self.lookups else { return Vec::new() };
        let aliases =
            self.alias_lookups.iter().filter(|(key, _)| !waiting.contains_key(*key)).map(|((project, issue_id), w)| {
                Lookup {
                    project: project.clone(),
                    issue_id: issue_id.clone(),
                    first_seen_ms: w.first_seen_ms,
                    from_minute: w.from_minute,
                    merged_from: Vec::new(),
                }
            });
        waiting
            .iter()
            .map(|((project, issue_id), records)| Lookup {
                project: project.clone(),
                issue_id: issue_id.clone(),
                first_seen_ms: records.iter().map(|(r, _)| r.first_seen_ms).min().unwrap_or(0),
                from_minute: records
                    .iter()
                    .map(|(r, at)| effective_minute(r.minute, at.received_ms))
                    .min()
                    .unwrap_or(0),
                merged_from: {
                    let mut ids: Vec<String> =
                        records.iter().flat_map(|(r, _)| r.merged_from.iter().cloned()).collect();
                    ids.sort_unstable();
                    ids.dedup();
                    ids
                },
            })
            .chain(aliases)
            .collect()
    }

    /// Takes what the caller read about an issue that waits for it, then its waiting records;
    /// returns their `new_issue` and `regression` signals.
    pub fn restore(&mut self, project: &str, issue_id: &str, restored: Restored) -> Vec<Signal> {
        let key = (project.to_owned(), issue_id.to_owned());
        let records = self.lookups.as_mut().and_then(|w| w.remove(&key)).unwrap_or_default();
        // An alias with records of its own waiting is held from here on: the next record of the
        // issue naming it takes its state.
        let alias = self.alias_lookups.remove(&key);
        if records.is_empty() {
            if let Some(w) = alias {
                self.restore_alias(key, &w.into, restored);
            }
            return Vec::new();
        }
        if self.issues.contains_key(&key) {
            return Vec::new();
        }
        // Records of an alias that a held issue took meanwhile: stragglers, into that issue.
        if let Some(into) = self.route(&key) {
            return records.into_iter().flat_map(|(r, at)| self.take(&into, &r, at, false)).collect();
        }
        // The stored history of the aliases this engine does not hold, summed by minute with
        // the issue's (a held one brings its state with the records below).
        let mut history = restored.history;
        let mut taken = false;
        let mut absorbed: Vec<Box<str>> = Vec::new();
        for (alias, h) in restored.aliases {
            // Beyond what the issue can remember, an alias's history is not taken (a later
            // state of it would bring it again).
            if alias == issue_id
                || absorbed.len() >= MAX_ABSORBED
                || self.issues.contains_key(&(project.to_owned(), alias.clone()))
            {
                continue;
            }
            history.extend(h);
            taken = true;
            absorbed.push(alias.into());
        }
        if taken {
            let mut summed: BTreeMap<i64, u64> = BTreeMap::new();
            for (minute, count) in history {
                *summed.entry(minute).or_default() += count;
            }
            history = summed.into_iter().collect();
        }
        let mut st = self.restored_issue(history, restored.signalled);
        for alias in &absorbed {
            self.remember_route(project, alias, issue_id);
        }
        st.absorbed = absorbed;
        if restored.aliases_first_seen_ms > 0 {
            st.first_seen_ms = restored.aliases_first_seen_ms;
        }
        // A merged issue this engine holds (its records may not be in ClickHouse yet).
        let merged_seen = records.iter().any(|(r, _)| self.merged_seen(r));
        self.issues.insert(key.clone(), st);
        let mut out = Vec::new();
        for (i, (r, at)) in records.into_iter().enumerate() {
            self.absorb(&key, &r, at);
            out.extend(self.take(&key, &r, at, i == 0 && !restored.known && !merged_seen));
        }
        out
    }

    /// Adds the stored history of `alias` (what [`Self::restore`] was handed for it) to the
    /// held issue `into` whose record named it (see [`Self::absorb`]), unless the issue took it
    /// meanwhile, went, or the engine now holds the alias (the issue's next record takes it).
    fn restore_alias(&mut self, alias: Key, into: &str, restored: Restored) {
        if self.issues.contains_key(&alias) {
            return;
        }
        let s = self.restored_issue(restored.history, restored.signalled);
        let Some(p) = self.issues.get_mut(&(alias.0.clone(), into.to_owned())) else { return };
        if p.absorbed.len() >= MAX_ABSORBED || p.absorbed.iter().any(|a| **a == *alias.1) {
            return;
        }
        absorb(p, *s, &alias.1, &self.cfg.spike);
        self.remember_route(&alias.0, &alias.1, into);
    }

    /// An issue's state from its stored per-minute counts (oldest first; its frozen baseline)
    /// and the signals already produced for it.
    fn restored_issue(&self, history: Vec<(i64, u64)>, signalled: Vec<(Kind, String, i64)>) -> Box<Issue> {
        let cfg = self.cfg.spike;
        let mut st = Box::<Issue>::default();
        for (minute, count) in history {
            if let Some(next) = st.base_next {
                if minute < next {
                    continue;
                }
                for m in (next..minute).step_by(60) {
                    st.base.observe(m, 0, &cfg);
                }
            }
            st.base.observe(minute, count, &cfg);
            st.base_next = Some(minute + 60);
            st.closed = Some(minute);
        }
        st.model = st.base.clone();
        for (kind, rule, minute) in signalled {
            match kind {
                Kind::Spike => {
                    st.spiked.insert(minute);
                }
                Kind::Threshold => {
                    if let Some(i) = self.cfg.thresholds.iter().position(|t| t.name == rule) {
                        let f = st.fired.entry(i).or_insert(minute);
                        *f = (*f).max(minute);
                    }
                }
                _ => {}
            }
        }
        st
    }

    /// Adds a record to its issue's state (held).
    fn take(&mut self, key: &Key, r: &AggregateRecord, at: Arrival, is_new: bool) -> Vec<Signal> {
        let mut out = Vec::new();
        let rules = &self.cfg.thresholds;
        let minute = effective_minute(r.minute, at.received_ms);
        let too_late = self.watermark.is_some_and(|w| minute < w - 60 * self.cfg.allowed_lateness_min);
        self.late += u64::from(too_late);
        let interned = &mut self.interned;
        let Some(st) = self.issues.get_mut(key) else { return out };
        st.partition = at.partition;
        st.last_minute = st.last_minute.max(minute);
        if st.first_seen_ms == 0 || r.first_seen_ms < st.first_seen_ms {
            st.first_seen_ms = r.first_seen_ms;
        }
        if r.last_seen_ms >= st.last_seen_ms {
            st.last_seen_ms = r.last_seen_ms;
            intern(interned, &mut st.release, &r.release);
            intern(interned, &mut st.environment, &r.environment);
            intern(interned, &mut st.level, &r.level);
        }
        if st.title.is_empty() {
            set(&mut st.title, &r.title);
            set(&mut st.culprit, &r.culprit);
            intern(interned, &mut st.platform, &r.platform);
        }
        // The status is the canonical issue's: its own resolution, else, when it has no status
        // of its own, the latest resolution of the aliases its record names (a bug resolved
        // as `S` before its source map arrived regresses as `P`; docs/sourcemaps.md "Late
        // maps").
        let resolved = match resolution(&self.resolutions, &key.0, &key.1) {
            Some(own) => Some(own),
            None if r.merged_from.is_empty()
                || !self.resolutions.contains_key(&key.0)
                || self.unresolved.contains(&status_hash(&key.0, &key.1)) =>
            {
                None
            }
            None => r
                .merged_from
                .iter()
                .filter(|s| **s != key.1)
                .filter_map(|s| resolution(&self.resolutions, &key.0, s))
                .max_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1))),
        };
        let regresses = resolved.is_some_and(|(at, fixed_in)| {
            r.last_seen_ms > *at
                && (!self.cfg.regression_needs_newer_release
                    || fixed_in.is_empty()
                    || newer_release(&r.release, fixed_in))
        });
        if !r.sample.is_empty() && (st.facts.is_none() || regresses) {
            st.facts = Some(Facts::of(&sample_facts(&r.sample)));
        }
        // Minutes already in the frozen baseline (from ClickHouse, or beyond the allowed
        // lateness) take no more counts.
        if !too_late && st.base_next.is_none_or(|b| minute >= b) {
            st.fresh = Some(st.fresh.map_or(minute, |f| f.min(minute)));
            let m = st.minutes.entry(minute);
            m.count += r.count;
            m.users.extend(&r.users.hashes);
            if m.rules.len() < rules.len() {
                m.rules.resize_with(rules.len(), Default::default);
            }
            for (i, rule) in rules.iter().enumerate() {
                let matches = rule.project.as_deref().is_none_or(|p| p == r.project)
                    && rule.environment.as_deref().is_none_or(|e| e == r.environment)
                    && rule.level.as_deref().is_none_or(|l| l == r.level);
                if matches {
                    m.rules[i].0 += r.count;
                    m.rules[i].1.extend(&r.users.hashes);
                }
            }
            // Late: a minute already evaluated (or one before the first evaluated) changed.
            if st.closed.is_some_and(|c| minute <= c) {
                st.dirty = Some(st.dirty.map_or(minute, |d| d.min(minute)));
            }
        }
        // new_issue and regression describe the record that revealed them.
        let of_record = |kind: Kind, st: &Issue| {
            signal(kind, &r.project, &r.issue_id, st, r.minute, 1, r.count, r.users.hashes.len() as u64, 0.0, "")
        };
        if is_new {
            out.push(of_record(Kind::NewIssue, st));
        }
        if regresses {
            out.push(of_record(Kind::Regression, st));
            forget(&mut self.resolutions, &key.0, &key.1);
            // One regression for the bug: the aliases' resolutions it went through are spent.
            for s in &r.merged_from {
                forget(&mut self.resolutions, &key.0, s);
            }
        }
        out
    }

    /// The watermark the owned partitions allow at `now_ms`: the minimum over those that are
    /// not idle (the maximum when all are); never earlier than before.
    fn update_watermark(&mut self, now_ms: i64) -> Option<i64> {
        let idle = |p: &Partition| now_ms - p.active_ms >= self.cfg.idle_ms;
        let active: Vec<&Partition> = self.partitions.values().filter(|p| !idle(p)).collect();
        let candidate = if active.is_empty() {
            self.partitions.values().filter_map(|p| p.watermark).max()
        } else if active.iter().any(|p| p.watermark.is_none()) {
            None
        } else {
            active.iter().filter_map(|p| p.watermark).min()
        };
        self.watermark = match (self.watermark, candidate) {
            (Some(w), Some(c)) => Some(w.max(c)),
            (w, c) => w.or(c),
        };
        self.watermark
    }

    /// The oldest minute (unix seconds) that evaluations still to come need, as of the last
    /// [`Self::advance`]: a record of an earlier minute, ingested before that advance, has
    /// caused every signal it will cause (its minute was closed and evaluated, and no window of
    /// a later minute reaches back to it), so a consumer may commit past it. A record read again
    /// by a restarted detector finds its minute's count in ClickHouse (see [`Self::history`]);
    /// records behind this minute that arrive later still count (up to the allowed lateness).
    /// `None` before the first record.
    pub fn needed_from(&self) -> Option<i64> {
        let w = self.watermark?;
        Some(w - 60 * self.cfg.lateness_min - self.keep_secs())
    }

    /// Evicts the issues without records for `evict_idle_min` of event time before `w` that
    /// have nothing left to evaluate, then the least recently seen beyond `max_issues`.
    fn evict(&mut self, w: i64) {
        let idle_before = w - 60 * self.cfg.evict_idle_min;
        let before = self.issues.len();
        let known = &mut self.known;
        let lookups = self.lookups.is_some();
        self.issues.retain(|key, st| {
            let keep = st.last_minute >= idle_before || st.recheck.is_some() || st.dirty.is_some();
            if !keep && !lookups {
                known.insert(key.clone());
            }
            keep
        });
        self.evicted.0 += (before - self.issues.len()) as u64;
        if self.issues.len() > self.cfg.max_issues {
            // Down to 90% at once, so that the selection runs rarely.
            let target = self.cfg.max_issues - self.cfg.max_issues / 10;
            let mut last: Vec<i64> = self.issues.values().map(|st| st.last_minute).collect();
            let n = self.issues.len() - target;
            let (_, cut, _) = last.select_nth_unstable(n - 1);
            let cut = *cut;
            let mut left = n;
            self.issues.retain(|key, st| {
                if left > 0 && st.last_minute <= cut {
                    left -= 1;
                    if !lookups {
                        known.insert(key.clone());
                    }
                    return false;
                }
                true
            });
            self.evicted.1 += (n - left) as u64;
        }
    }

    /// How far back from the last closed minute the threshold windows reach, seconds.
    fn keep_secs(&self) -> i64 {
        60 * i64::from(self.cfg.thresholds.iter().map(|r| r.minutes).max().unwrap_or(1).max(2))
    }

    /// Closes every minute older than the watermark (as of `now_ms`) minus the lateness, and
    /// evaluates again the minutes late records changed; returns `spike` and `threshold`
    /// signals.
    pub fn advance(&mut self, now_ms: i64) -> Vec<Signal> {
        let Some(w) = self.update_watermark(now_ms) else { return Vec::new() };
        let until = w - 60 * self.cfg.lateness_min;
        let frozen = w - 60 * self.cfg.allowed_lateness_min;
        let cfg = self.cfg.clone();
        let keep = self.keep_secs();
        let mut out = Vec::new();
        // Once a minute: the work over every issue held (project baselines, eviction).
        let new_minute = self.baselines_until != Some(until);
        if new_minute {
            self.baselines_until = Some(until);
            self.evict(w);
            // Issues without history of their own are judged against their project's
            // baseline: the mean baseline of its issues that had one at that minute.
            let mut warm: HashMap<&str, Vec<(i64, f64)>> = HashMap::new();
            for ((project, _), st) in &self.issues {
                if let Some(since) = st.model.warm_since {
                    warm.entry(project.as_str()).or_default().push((since, st.model.spike.baseline()));
                }
            }
            self.baselines = warm
                .into_iter()
                .map(|(p, mut v)| {
                    v.sort_by_key(|x| x.0);
                    let mut sum = 0.0;
                    let by_minute = v.into_iter().map(|(m, b)| {
                        sum += b;
                        (m, sum)
                    });
                    (p.to_owned(), ProjectBaselines { by_minute: by_minute.collect() })
                })
                .collect();
        }
        let projects = &self.baselines;
        let mut rechecking = 0;
        let mut dropped_late = 0;
        for ((project, issue_id), st) in &mut self.issues {
            // Nothing to do but count zeros: no records since the last evaluation, nothing to
            // judge again, and every minute whose window holds a count judged. Those zeros are
            // counted when the issue has records again (they signal nothing).
            if st.fresh.is_none() && st.dirty.is_none() && st.recheck.is_none() {
                let last = st.minutes.0.last().map(|(m, _)| *m);
                if st.closed.is_some_and(|c| last.is_none_or(|l| c >= l + keep)) {
                    continue;
                }
            }
            // Records taken before the engine had a watermark (the first after a start) were not
            // held to the allowed lateness. A minute decades behind (a record of 1970: upstream,
            // a Kafka message without a timestamp) would make the walks below go through every
            // minute since, seconds per issue with the loop not beating; minutes further behind
            // than the eviction horizon are dropped as late records instead.
            if st.closed.is_none() && st.base_next.is_none() {
                let horizon = frozen - 60 * cfg.evict_idle_min;
                if st.minutes.first().is_some_and(|first| first < horizon) {
                    let before = st.minutes.0.len();
                    st.minutes.forget_before(horizon);
                    dropped_late += (before - st.minutes.0.len()) as u64;
                }
            }
            let project_baseline = projects.get(project);
            // Evaluated minutes that late records changed: evaluated again from the frozen
            // baseline on; only what was not signalled yet is signalled.
            let replay_from = match (st.dirty.take(), st.recheck.take()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // Records of minutes being closed are still coming in (minutes delivered out of
            // order, or all at once): judge, but signal at the next evaluation, on the counts
            // then (unless this has lasted `idle_ms`).
            let unsettled = st.fresh.take().is_some_and(|f| f <= until);
            if !unsettled {
                st.settling_since = None;
            }
            let hold = unsettled && now_ms - *st.settling_since.get_or_insert(now_ms) < cfg.idle_ms;
            let start = match (replay_from, st.closed) {
                (Some(_), _) => {
                    st.model = st.base.clone();
                    match st.base_next.or_else(|| st.minutes.first()) {
                        Some(s) => s,
                        None => continue,
                    }
                }
                (None, Some(c)) => c + 60,
                (None, None) => match st.minutes.first() {
                    Some(first) => first,
                    None => continue,
                },
            };
            let redo_until = st.closed;
            let mut m = start;
            while m <= until || redo_until.is_some_and(|c| m <= c) {
                // Minutes before the change were judged on the same counts already.
                let judge = replay_from.is_none_or(|d| m >= d) || redo_until.is_none_or(|c| m > c);
                if judge && hold {
                    st.recheck = Some(st.recheck.map_or(m, |r| r.min(m)));
                }
                let judge = judge && !hold;
                let count = st.minutes.get(m).map_or(0, |x| x.count);
                let before = st.model.spike.baseline();
                let cold = !st.model.spike.warm(&cfg.spike);
                let v = st.model.observe(m, count, &cfg.spike);
                if !judge {
                    m += 60;
                    continue;
                }
                let pb = project_baseline.and_then(|p| p.at(m));
                // Far above the project's baseline, and above what the issue's own (short)
                // history shows: an issue a minute younger than its project's others is no burst.
                let cold_spike = cold
                    && !st.cold_spiked
                    && pb.is_some_and(|pb| SpikeState::far_above(count as f64, pb, &cfg.spike))
                    && SpikeState::far_above(count as f64, before, &cfg.spike);
                st.cold_spiked |= cold_spike;
                // The baseline the spike was judged against: the project's or the issue's own.
                let against = if cold_spike { pb } else { v.spike.then_some(before) };
                if let Some(baseline) = against {
                    // One signal per burst: a minute next to one already signalled is the same.
                    if st.spiked.range(m - 120..=m + 120).next().is_none() {
                        st.spiked.insert(m);
                        // The window judged: this minute, or this one and the one before.
                        let two = !cold_spike && v.window > count as f64;
                        let from = if two { m - 60 } else { m };
                        let users = distinct_users(st.minutes.range(from, m).map(|x| &x.users));
                        let (window, n) = if two { (2, v.window as u64) } else { (1, count) };
                        out.push(signal(Kind::Spike, project, issue_id, st, m, window, n, users, baseline, ""));
                    }
                }
                for (i, rule) in cfg.thresholds.iter().enumerate() {
                    let from = m - 60 * (i64::from(rule.minutes) - 1);
                    let events: u64 = st.minutes.range(from, m).filter_map(|x| x.rules.get(i)).map(|(c, _)| c).sum();
                    // Users are counted for a rule with a users bound, or for the signal.
                    let users = if rule.users.is_some() || rule.events.is_some_and(|n| events > n) {
                        distinct_users(st.minutes.range(from, m).filter_map(|x| x.rules.get(i)).map(|(_, u)| u))
                    } else {
                        0
                    };
                    let hit = rule.events.is_some_and(|n| events > n) || rule.users.is_some_and(|n| users > n);
                    let cooling = st.fired.get(&i).is_some_and(|f| m - f < 60 * i64::from(rule.minutes));
                    if hit && !cooling {
                        st.fired.insert(i, m);
                        out.push(signal(
                            Kind::Threshold,
                            project,
                            issue_id,
                            st,
                            m,
                            rule.minutes,
                            events,
                            users,
                            0.0,
                            &rule.name,
                        ));
                    }
                }
                m += 60;
            }
            if m > start {
                st.closed = Some(m - 60);
            }
            // Minutes beyond the allowed lateness change no more: into the frozen baseline.
            let mut next = st.base_next.or_else(|| st.minutes.first());
            while let Some(x) = next.filter(|x| *x < frozen && st.closed.is_some_and(|c| *x <= c)) {
                let count = st.minutes.get(x).map_or(0, |x| x.count);
                st.base.observe(x, count, &cfg.spike);
                next = Some(x + 60);
                st.base_next = next;
            }
            // Forget minutes no evaluation needs any more.
            let horizon = st.base_next.unwrap_or(frozen).min(st.closed.unwrap_or(until) + 60) - keep;
            st.minutes.forget_before(horizon);
            st.spiked = st.spiked.split_off(&(horizon - 120));
            rechecking += usize::from(st.recheck.is_some());
        }
        self.rechecking = rechecking;
        self.late += dropped_late;
        out.sort_by(|a, b| (&a.minute, &a.project, &a.issue_id).cmp(&(&b.minute, &b.project, &b.issue_id)));
        out
    }
}

/// Adds the state of `s`, an alias of `p` (see [`Engine::absorb`]), to `p`'s. The first time:
/// the frozen baselines are brought to the same minute (each over its own minutes) and
/// combined ([`SpikeState::combined`]), the minutes summed, the spikes and thresholds already
/// signalled for either kept (not signalled again for the other), and every minute evaluated
/// is evaluated again on the sums at the next [`Engine::advance`]. An alias taken before brings
/// only its minutes not frozen into `p`'s baseline yet (its baseline came from ClickHouse, and
/// `p` has those minutes already).
fn absorb(p: &mut Issue, s: Issue, alias: &str, cfg: &SpikeConfig) {
    let again = p.absorbed.iter().any(|a| **a == *alias);
    let mut s = s;
    let changed_from;
    if again {
        changed_from = p.add_minutes(&s.minutes, p.base_next);
    } else {
        let base_next = match (p.base_next, s.base_next) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(b) = base_next {
            p.freeze_until(b, cfg);
            s.freeze_until(b, cfg);
        }
        p.base = Model {
            spike: p.base.spike.combined(&s.base.spike),
            warm_since: match (p.base.warm_since, s.base.warm_since) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        };
        p.base_next = base_next;
        p.model = p.base.clone();
        p.add_minutes(&s.minutes, None);
        p.closed = p.closed.max(s.closed);
        // The whole model is rebuilt from the combined baseline.
        changed_from = p.base_next.or_else(|| p.minutes.first());
        p.spiked.extend(s.spiked.iter().copied());
        for (rule, minute) in &s.fired {
            let f = p.fired.entry(*rule).or_insert(*minute);
            *f = (*f).max(*minute);
        }
        p.cold_spiked |= s.cold_spiked;
        if s.first_seen_ms != 0 && (p.first_seen_ms == 0 || s.first_seen_ms < p.first_seen_ms) {
            p.first_seen_ms = s.first_seen_ms;
        }
        // The callers take no alias that `p` cannot remember (see `Engine::absorb`).
        p.absorbed.push(alias.into());
        for a in s.absorbed {
            if !p.absorbed.contains(&a) && p.absorbed.len() < MAX_ABSORBED {
                p.absorbed.push(a);
            }
        }
    }
    p.last_minute = p.last_minute.max(s.last_minute);
    let min = |a: Option<i64>, b: Option<i64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    p.fresh = min(p.fresh, s.fresh);
    p.recheck = min(p.recheck, s.recheck);
    p.settling_since = min(p.settling_since, s.settling_since);
    if let (Some(c), Some(from)) = (p.closed, changed_from) {
        if from <= c {
            p.dirty = min(p.dirty, Some(from));
        }
    }
}

/// An issue's key in [`Engine`]'s set of issues with a status of their own: a 64-bit hash of
/// (project, issue) with fixed keys (a collision, about one in 2^64 per pair, would take an
/// alias's resolution from one issue).
fn status_hash(project: &str, issue_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    project.hash(&mut h);
    issue_id.hash(&mut h);
    h.finish()
}

/// Replaces `dst` with `src` unless equal (no allocation when unchanged).
fn set(dst: &mut Box<str>, src: &str) {
    if &**dst != src {
        *dst = src.into();
    }
}

/// Replaces `dst` with the shared copy of `src` unless equal. The set holds at most 100,000
/// strings (then it starts again: a string is still shared by the issues that took it).
fn intern(set: &mut HashSet<Arc<str>>, dst: &mut Arc<str>, src: &str) {
    if &**dst == src {
        return;
    }
    if let Some(a) = set.get(src) {
        *dst = a.clone();
        return;
    }
    if set.len() >= 100_000 {
        set.clear();
    }
    let a: Arc<str> = src.into();
    set.insert(a.clone());
    *dst = a;
}

/// Whether release `a` is newer than `b`: the numbers in them compared in order
/// (`web@1.10.0` > `web@1.9.2`), falling back to text when they have none.
pub fn newer_release(a: &str, b: &str) -> bool {
    let nums =
        |s: &str| -> Vec<u64> { s.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok()).collect() };
    let (na, nb) = (nums(a), nums(b));
    if na.is_empty() || nb.is_empty() {
        return a > b;
    }
    na > nb
}

#[allow(clippy::too_many_arguments)]
fn signal(
    kind: Kind,
    project: &str,
    issue_id: &str,
    st: &Issue,
    minute: i64,
    window: u32,
    count: u64,
    users: u64,
    baseline: f64,
    rule: &str,
) -> Signal {
    let facts = st.facts.as_ref().map(Facts::get).unwrap_or_default();
    Signal {
        v: SIGNAL_FORMAT_VERSION,
        // An issue is new once: its new_issue has one id whichever record revealed it (a
        // replica or a restart reading its records again may meet another one first).
        signal_id: signal_id(kind, project, issue_id, if kind == Kind::NewIssue { 0 } else { minute }, rule),
        kind,
        project: project.to_owned(),
        issue_id: issue_id.to_owned(),
        title: st.title.to_string(),
        culprit: st.culprit.to_string(),
        level: st.level.to_string(),
        platform: st.platform.to_string(),
        minute: format_rfc3339(minute * 1000).replace(".000Z", "Z"),
        window_minutes: window,
        count,
        users,
        baseline_per_minute: (baseline * 100.0).round() / 100.0,
        first_seen: format_rfc3339(st.first_seen_ms).replace(".000Z", "Z"),
        last_seen: format_rfc3339(st.last_seen_ms).replace(".000Z", "Z"),
        release: st.release.to_string(),
        environment: st.environment.to_string(),
        top_frames: facts.top_frames,
        request_url: facts.request_url,
        browser: facts.browser,
        os: facts.os,
        rule: rule.to_owned(),
        folded: 0,
        titles: Vec::new(),
        command: format!("tracefold issue {issue_id} --project {project}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracefold_model::{BatchRef, UserSet};

    /// Feeds `r` from partition 0, received at the end of its minute.
    fn feed(e: &mut Engine, r: &AggregateRecord) -> Vec<Signal> {
        e.ingest(r, Arrival { partition: 0, received_ms: r.minute * 1000 + 59_000, now_ms: 0 })
    }

    fn rec(issue: &str, minute: i64, count: u64, user_base: u64) -> AggregateRecord {
        let mut users = UserSet::default();
        for u in 0..count.min(50) {
            users.insert(user_base + u, 4096);
        }
        AggregateRecord {
            v: 1,
            batch: BatchRef { count: 1, ..BatchRef::default() },
            project: "web".into(),
            issue_id: issue.into(),
            minute,
            release: "1.0".into(),
            environment: "production".into(),
            count,
            users,
            first_seen_ms: minute * 1000,
            last_seen_ms: minute * 1000 + 30_000,
            title: format!("Error {issue}"),
            culprit: "app.js in f".into(),
            exc_type: "Error".into(),
            level: "error".into(),
            platform: "javascript".into(),
            grouping_version: "v1".into(),
            sample: r#"{"exception":[{"type":"E","stacktrace":{"frames":[{"function":"f","filename":"app.js","in_app":true}]}}],"request":{"url":"https://x/y"},"contexts":{"browser":{"name":"Chrome","version":"131"},"os":{"name":"macOS","version":"15"}}}"#.into(),
            breakdown: Default::default(),
            merged_from: Vec::new(),
        }
    }

    /// A record dated 1970 taken before the engine had a watermark (the first after a start),
    /// then one of the same issue now: the 1970 minute is dropped as a late record when the
    /// issue is first evaluated. Before, the evaluation walked every minute from 1970 on (29
    /// million, 2.5 s of one core for this one issue in a release build, the loop not beating),
    /// and counted nothing late. The minutes of now are judged as ever.
    #[test]
    fn a_minute_of_1970_before_the_first_watermark_is_dropped_as_late_not_walked_from() {
        let rule = ThresholdRule {
            name: "ten".into(),
            project: None,
            environment: None,
            level: None,
            events: Some(5),
            users: None,
            minutes: 1,
        };
        let mut e = Engine::new(EngineConfig { thresholds: vec![rule], ..EngineConfig::default() });
        let t0: i64 = 1_795_671_540;
        let mut old = rec("a", 0, 1000, 0);
        old.first_seen_ms = 0;
        e.ingest(&old, Arrival { partition: 0, received_ms: 59_000, now_ms: 0 });
        feed(&mut e, &rec("a", t0, 10, 0));
        assert!(e.advance(0).is_empty());
        assert_eq!(e.take_counts().0, 1, "the 1970 minute counted as a late record");
        // The watermark moves past t0: its minute closes and is judged on its own count.
        feed(&mut e, &rec("b", t0 + 300, 1, 0));
        let out = e.advance(0);
        let hits: Vec<(Kind, &str, u64)> = out.iter().map(|s| (s.kind, s.issue_id.as_str(), s.count)).collect();
        assert_eq!(hits, [(Kind::Threshold, "a", 10)], "{out:?}");
    }

    #[test]
    fn new_issue_spike_threshold_and_regression() {
        let mut e = Engine::new(EngineConfig {
            thresholds: vec![ThresholdRule {
                name: "many-users".into(),
                project: None,
                environment: Some("production".into()),
                level: None,
                events: None,
                users: Some(80),
                minutes: 5,
            }],
            ..EngineConfig::default()
        });
        e.known("web", "old");
        let t0 = 1_795_600_000 / 60 * 60;
        let mut kinds = Vec::new();
        for m in 0..60 {
            for s in feed(&mut e, &rec("a", t0 + m * 60, 10, m as u64 * 1000)) {
                kinds.push((s.kind, m));
            }
            for s in feed(&mut e, &rec("old", t0 + m * 60, 1, 0)) {
                kinds.push((s.kind, m));
            }
            kinds.extend(e.advance(0).into_iter().map(|s| (s.kind, m)));
        }
        assert_eq!(kinds.iter().filter(|(k, _)| *k == Kind::NewIssue).count(), 1, "one new issue: {kinds:?}");
        assert!(kinds.iter().all(|(k, _)| *k != Kind::Spike), "steady traffic: {kinds:?}");
        // Ten new users a minute: 50 in five minutes, not more than 80.
        assert!(kinds.iter().all(|(k, _)| *k != Kind::Threshold));
        // A burst: 500 events from 500 users in one minute.
        let burst = feed(&mut e, &rec("a", t0 + 60 * 60, 500, 900_000));
        assert!(burst.is_empty());
        feed(&mut e, &rec("a", t0 + 61 * 60, 10, 1));
        feed(&mut e, &rec("a", t0 + 62 * 60, 10, 2));
        // Minute 60's records came in with the records that close it: judged at once, signalled
        // at the next evaluation (on the counts then).
        let mut closed = e.advance(0);
        assert!(closed.is_empty() && e.pending());
        closed.extend(e.advance(0));
        assert!(!e.pending());
        let spike = closed.iter().find(|s| s.kind == Kind::Spike).expect("a spike");
        assert_eq!(
            (spike.count, spike.minute.as_str()),
            (500, format_rfc3339((t0 + 3600) * 1000).replace(".000Z", "Z").as_str())
        );
        assert!(spike.baseline_per_minute > 5.0 && spike.baseline_per_minute < 15.0, "{}", spike.baseline_per_minute);
        assert_eq!(spike.top_frames, ["app.js in f"]);
        assert_eq!(
            (spike.request_url.as_str(), spike.browser.as_str(), spike.os.as_str()),
            ("https://x/y", "Chrome 131", "macOS 15")
        );
        assert_eq!(spike.command, "tracefold issue a --project web");
        let threshold = closed.iter().find(|s| s.kind == Kind::Threshold).expect("threshold: 50 users in the burst");
        assert_eq!(threshold.rule, "many-users");
        // Resolved, then seen again: one regression.
        e.resolved("web", "old", (t0 + 62 * 60) * 1000, "1.0");
        let r1 = feed(&mut e, &rec("old", t0 + 63 * 60, 1, 0));
        let r2 = feed(&mut e, &rec("old", t0 + 64 * 60, 1, 0));
        assert_eq!(r1.iter().map(|s| s.kind).collect::<Vec<_>>(), [Kind::Regression]);
        assert!(r2.is_empty());
        // A new issue bursting before it has history of its own: judged against the project.
        let burst_new = feed(&mut e, &rec("fresh", t0 + 65 * 60, 300, 5000));
        assert_eq!(burst_new.iter().map(|s| s.kind).collect::<Vec<_>>(), [Kind::NewIssue]);
        feed(&mut e, &rec("a", t0 + 68 * 60, 10, 3));
        let mut cold = e.advance(0);
        cold.extend(e.advance(0));
        let s = cold
            .iter()
            .find(|s| s.issue_id == "fresh" && s.kind == Kind::Spike)
            .expect("a spike against the project baseline");
        assert_eq!(s.count, 300);
        // Reopened before it was seen again: no regression.
        e.resolved("web", "old", (t0 + 64 * 60) * 1000, "1.0");
        assert_eq!(e.resolved_count(), 1);
        e.reopened("web", "old");
        assert_eq!(e.resolved_count(), 0);
        assert!(feed(&mut e, &rec("old", t0 + 66 * 60, 1, 0)).is_empty());
        // With "newer release only", the release it was fixed in does not regress.
        let mut strict = Engine::new(EngineConfig { regression_needs_newer_release: true, ..EngineConfig::default() });
        strict.known("web", "x");
        strict.resolved("web", "x", 0, "1.0");
        assert!(feed(&mut strict, &rec("x", t0, 1, 0)).is_empty(), "same release 1.0");
        let mut newer = rec("x", t0 + 60, 1, 0);
        newer.release = "1.1".into();
        assert_eq!(feed(&mut strict, &newer).iter().map(|s| s.kind).collect::<Vec<_>>(), [Kind::Regression]);
        assert!(newer_release("web@1.10.0", "web@1.9.2") && !newer_release("1.2", "1.10"));
        // Same detection, same id.
        assert_eq!(spike.signal_id, crate::signal::signal_id(Kind::Spike, "web", "a", t0 + 3600, ""));
    }

    #[test]
    fn a_late_map_for_a_known_bug_is_no_new_issue() {
        let t0 = 1_795_600_000 / 60 * 60;
        let kinds = |signals: Vec<Signal>| signals.into_iter().map(|s| (s.kind, s.issue_id)).collect::<Vec<_>>();
        let mapped = |merged: &[&str], minute: i64| {
            let mut r = rec("p", minute, 3, 0);
            r.merged_from = merged.iter().map(|s| (*s).to_owned()).collect();
            r
        };
        // Without lookups: S1 is new; P naming S1 is not; P naming only unseen issues is.
        let mut e = Engine::new(EngineConfig::default());
        assert_eq!(kinds(feed(&mut e, &rec("s1", t0, 2, 0))), [(Kind::NewIssue, "s1".to_owned())]);
        assert!(feed(&mut e, &mapped(&["s0", "s1"], t0 + 60)).is_empty(), "the map arrived for a known bug");
        assert!(feed(&mut e, &mapped(&["s1"], t0 + 120)).is_empty());
        let mut fresh = Engine::new(EngineConfig::default());
        assert_eq!(kinds(feed(&mut fresh, &mapped(&["s9"], t0))), [(Kind::NewIssue, "p".to_owned())]);
        // Known (told, or evicted) counts as seen too.
        let mut told = Engine::new(EngineConfig::default());
        told.known("web", "s1");
        assert!(feed(&mut told, &mapped(&["s1"], t0)).is_empty());

        // With lookups: S1 held by this engine makes P known even when ClickHouse knows
        // neither yet (S1's records may not be stored).
        let mut e = Engine::new(EngineConfig::default()).with_lookups();
        let unknown = Restored { known: false, ..Restored::default() };
        assert!(feed(&mut e, &rec("s1", t0, 2, 0)).is_empty());
        assert_eq!(kinds(e.restore("web", "s1", unknown.clone())), [(Kind::NewIssue, "s1".to_owned())]);
        assert!(feed(&mut e, &mapped(&["s1", "s2"], t0 + 60)).is_empty());
        let l = e.lookups();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].merged_from, ["s1", "s2"], "the caller reads these too");
        assert!(e.restore("web", "p", unknown.clone()).is_empty(), "s1 is held: not new");
        // Not held, and ClickHouse knows none of them: new.
        let mut e = Engine::new(EngineConfig::default()).with_lookups();
        assert!(feed(&mut e, &mapped(&["s3"], t0)).is_empty());
        assert_eq!(kinds(e.restore("web", "p", unknown)), [(Kind::NewIssue, "p".to_owned())]);
    }

    /// One bug, 40 events a minute: issue "s" (minified frames) for an hour, then its source
    /// map arrives and the same events make issue "p" (records naming "s" in `merged_from`
    /// when `merged`), 40 a minute, and 400 in minute 70. Five quiet issues (one a minute) make
    /// the project's baseline low. With `lookups`, "s"'s records went to another replica: "p"
    /// is restored with what ClickHouse would answer ("s"'s counts as an alias's history).
    fn late_map(merged: bool, lookups: bool) -> (Vec<Signal>, usize) {
        let t0 = 1_795_600_000 / 60 * 60;
        let mut e = Engine::new(EngineConfig::default());
        if lookups {
            e = e.with_lookups();
        }
        let mut stored_s: Vec<(i64, u64)> = Vec::new();
        let mut out = Vec::new();
        for m in 0..80 {
            let minute = t0 + m * 60;
            for q in 0..5 {
                out.extend(feed(&mut e, &rec(&format!("quiet{q}"), minute, 1, 0)));
            }
            if m < 60 {
                stored_s.push((minute, 40));
                if !lookups {
                    out.extend(feed(&mut e, &rec("s", minute, 40, m as u64 * 100)));
                }
            } else {
                let mut p = rec("p", minute, if m == 70 { 400 } else { 40 }, m as u64 * 100);
                if merged {
                    p.merged_from = vec!["s".into()];
                }
                out.extend(feed(&mut e, &p));
            }
            for l in e.lookups() {
                let aliases = if l.merged_from.is_empty() {
                    Vec::new()
                } else {
                    vec![("s".to_owned(), stored_s.iter().copied().filter(|(x, _)| *x < l.from_minute).collect())]
                };
                let known = !aliases.is_empty() || (l.issue_id != "p" && m > 0);
                let aliases_first_seen_ms = if aliases.is_empty() { 0 } else { t0 * 1000 };
                let restored = Restored { known, aliases, aliases_first_seen_ms, ..Restored::default() };
                out.extend(e.restore(&l.project, &l.issue_id, restored));
            }
            out.extend(e.advance(0));
            out.extend(e.advance(0));
        }
        (out, e.tracked())
    }

    #[test]
    fn a_spike_of_p_right_after_a_late_map_is_judged_against_the_bugs_history() {
        let t0 = 1_795_600_000 / 60 * 60;
        let of_p = |s: &[Signal]| -> Vec<(Kind, String, u64)> {
            s.iter().filter(|s| s.issue_id == "p").map(|s| (s.kind, s.minute.clone(), s.count)).collect()
        };
        // Not merged: "p" is an issue without history, its first minute of 40 far above the
        // project's baseline (about 7.5) - a spike. This is what the merge must avoid.
        let (apart, _) = late_map(false, false);
        assert_eq!(
            of_p(&apart)[..2],
            [(Kind::NewIssue, minute_text(t0 + 3600), 40), (Kind::Spike, minute_text(t0 + 3600), 40)]
        );
        // Merged: no new issue, 40 a minute is the bug's normal, minute 70's 400 is a spike
        // judged against "s"'s baseline.
        let (merged, tracked) = late_map(true, false);
        assert_eq!(of_p(&merged), [(Kind::Spike, minute_text(t0 + 70 * 60), 400)], "{:?}", summary(&merged));
        let spike = merged.iter().find(|s| s.issue_id == "p").unwrap();
        assert!((35.0..=45.0).contains(&spike.baseline_per_minute), "{}", spike.baseline_per_minute);
        assert_eq!(spike.first_seen, minute_text(t0), "the bug's first event, as s");
        assert!(merged.iter().all(|s| s.issue_id != "s" || s.kind == Kind::NewIssue));
        assert_eq!(tracked, 6, "s's entry went into p's: five quiet issues and p");
        // "s" not held (another replica had it), its counts read from ClickHouse: the same.
        let (restored, _) = late_map(true, true);
        let detail = |s: &[Signal]| -> Vec<(Kind, String, u64, u64, String)> {
            s.iter()
                .filter(|s| s.issue_id == "p")
                .map(|s| {
                    (s.kind, s.minute.clone(), s.count, (s.baseline_per_minute * 100.0) as u64, s.first_seen.clone())
                })
                .collect()
        };
        assert_eq!(detail(&restored), detail(&merged));
    }

    #[test]
    fn an_alias_merged_into_a_held_issue_sums_by_minute_and_is_not_counted_twice() {
        for lookups in [false, true] {
            alias_into_held_issue(lookups);
        }
    }

    /// "p" (build 1, mapped) and "s2" (build 2, minified), 20 a minute each for an hour; then
    /// build 2's map arrives and "p" takes both, 40 a minute; then a straggler of "s2", a
    /// burst of "p". With lookups, what ClickHouse would answer (the counts fed) is handed back.
    fn alias_into_held_issue(lookups: bool) {
        let t0 = 1_795_600_000 / 60 * 60;
        let mut e = Engine::new(EngineConfig::default());
        if lookups {
            e = e.with_lookups();
        }
        let mut stored: Vec<(String, i64, u64)> = Vec::new();
        let mut out = Vec::new();
        let mut step = |e: &mut Engine, r: &AggregateRecord, out: &mut Vec<Signal>| {
            out.extend(feed(e, r));
            for l in e.lookups() {
                let history = |id: &str| -> Vec<(i64, u64)> {
                    let mut h: Vec<(i64, u64)> = stored
                        .iter()
                        .filter(|(i, m, _)| i == id && *m < l.from_minute)
                        .map(|(_, m, c)| (*m, *c))
                        .collect();
                    h.dedup_by(|b, a| {
                        let same = a.0 == b.0;
                        if same {
                            a.1 += b.1;
                        }
                        same
                    });
                    h
                };
                let known = stored.iter().any(|(i, m, _)| *i == l.issue_id && *m * 1000 < l.first_seen_ms);
                let aliases = l.merged_from.iter().map(|a| (a.clone(), history(a))).collect();
                let restored = Restored { known, history: history(&l.issue_id), aliases, ..Restored::default() };
                out.extend(e.restore(&l.project, &l.issue_id, restored));
            }
            stored.push((r.issue_id.clone(), r.minute, r.count));
        };
        for m in 0..75 {
            let minute = t0 + m * 60;
            let mut p = rec("p", minute, if m < 60 { 20 } else { 40 }, m as u64 * 100);
            if m >= 60 {
                p.merged_from = vec!["s2".into()];
            } else {
                step(&mut e, &rec("s2", minute, 20, m as u64 * 100 + 50), &mut out);
            }
            step(&mut e, &p, &mut out);
            out.extend(e.advance(0));
            out.extend(e.advance(0));
        }
        let quiet = out.iter().all(|s| s.kind == Kind::NewIssue);
        assert!(quiet, "lookups {lookups}: 40 a minute is the bug's 20 + 20: {:?}", summary(&out));
        assert_eq!(e.tracked(), 1);
        // A straggler of "s2" (a batch grouped before the map) goes into "p", which took
        // "s2": no entry of its own (judged without history), no lookup, and only its minute
        // counts: 40 + 5 in minute 75, not s2's past again.
        let mut straggler = rec("s2", t0 + 75 * 60, 5, 1);
        straggler.first_seen_ms -= 1;
        let mut signals = Vec::new();
        step(&mut e, &straggler, &mut signals);
        assert!(signals.is_empty(), "lookups {lookups}: known, no new issue: {signals:?}");
        assert_eq!((e.tracked(), e.waiting()), (1, false), "lookups {lookups}: into p");
        let mut p = rec("p", t0 + 75 * 60, 40, 7);
        p.merged_from = vec!["s2".into()];
        step(&mut e, &p, &mut signals);
        assert!(signals.is_empty());
        assert_eq!(e.tracked(), 1);
        let st = &e.issues[&("web".to_owned(), "p".to_owned())];
        assert_eq!(st.minutes.get(t0 + 75 * 60).map(|m| m.count), Some(45));
        assert_eq!(st.minutes.get(t0 + 59 * 60).map(|m| m.count), Some(40), "p's 20 + s2's 20");
        let mut burst = rec("p", t0 + 76 * 60, 400, 9);
        burst.merged_from = vec!["s2".into()];
        step(&mut e, &burst, &mut signals);
        step(&mut e, &rec("p", t0 + 79 * 60, 40, 9), &mut signals);
        let mut closed = e.advance(0);
        closed.extend(e.advance(0));
        let spike = closed.iter().find(|s| s.kind == Kind::Spike).expect("a burst of the bug");
        assert_eq!((spike.minute.as_str(), spike.count), (minute_text(t0 + 76 * 60).as_str(), 400));
        let b = spike.baseline_per_minute;
        assert!((30.0..=45.0).contains(&b), "lookups {lookups}: s2's history taken once: {b}");
    }

    /// "p" held from its first record (build 1, mapped, 20 a minute) while "s2" (build 2,
    /// minified, 20 a minute) went to another replica: this engine never sees a record of
    /// "s2", only its stored counts through a lookup once "p"'s records name it.
    #[test]
    fn a_held_issue_takes_the_stored_history_of_an_alias_it_never_held() {
        let t0 = 1_795_600_000 / 60 * 60;
        let mut e = Engine::new(EngineConfig::default()).with_lookups();
        let mut stored: Vec<(String, i64, u64)> = (0..60).map(|m| ("s2".to_owned(), t0 + m * 60, 20)).collect();
        let alias_lookups = std::cell::RefCell::new(Vec::new());
        let mut out = Vec::new();
        let mut step = |e: &mut Engine, r: &AggregateRecord, out: &mut Vec<Signal>| {
            out.extend(feed(e, r));
            for l in e.lookups() {
                let history: Vec<(i64, u64)> = stored
                    .iter()
                    .filter(|(i, m, _)| *i == l.issue_id && *m < l.from_minute)
                    .map(|(_, m, c)| (*m, *c))
                    .collect();
                let known = !history.is_empty();
                if l.issue_id == "s2" {
                    alias_lookups.borrow_mut().push((l.from_minute, history.len()));
                }
                out.extend(e.restore(&l.project, &l.issue_id, Restored { known, history, ..Restored::default() }));
            }
            stored.push((r.issue_id.clone(), r.minute, r.count));
        };
        for m in 0..75 {
            let minute = t0 + m * 60;
            let mut p = rec("p", minute, if m < 60 { 20 } else { 40 }, m as u64 * 100);
            if m >= 60 {
                p.merged_from = vec!["s2".into(), "p".into()];
            }
            step(&mut e, &p, &mut out);
            out.extend(e.advance(0));
            out.extend(e.advance(0));
        }
        assert_eq!(*alias_lookups.borrow(), [(t0 + 3600, 60)], "one lookup of s2, its hour before the map");
        assert!(out.iter().all(|s| s.kind == Kind::NewIssue), "40 a minute is the bug's 20 + 20: {:?}", summary(&out));
        assert_eq!(e.tracked(), 1, "s2 is not held");
        let st = &e.issues[&("web".to_owned(), "p".to_owned())];
        assert_eq!(&*st.absorbed, [Box::<str>::from("s2")]);
        let mut burst = rec("p", t0 + 76 * 60, 400, 9);
        burst.merged_from = vec!["s2".into()];
        let mut signals = Vec::new();
        step(&mut e, &burst, &mut signals);
        step(&mut e, &rec("p", t0 + 79 * 60, 40, 9), &mut signals);
        signals.extend(e.advance(0));
        signals.extend(e.advance(0));
        let spike = signals.iter().find(|s| s.kind == Kind::Spike).expect("a burst of the bug");
        assert_eq!((spike.minute.as_str(), spike.count), (minute_text(t0 + 76 * 60).as_str(), 400));
        let b = spike.baseline_per_minute;
        assert!((30.0..=45.0).contains(&b), "s2's history taken once: {b}");
        assert_eq!(alias_lookups.borrow().len(), 1, "taken: not looked up again");
    }

    /// An issue remembers 16 aliases: the history of more is not taken (a later state of a
    /// forgotten one would bring it again), held or read back.
    #[test]
    fn an_issue_takes_no_more_aliases_than_it_remembers() {
        let t0 = 1_795_600_000 / 60 * 60;
        let names: Vec<String> = (0..20).map(|i| format!("s{i:02}")).collect();
        // Read back: 20 aliases of 5 a minute for an hour; 16 taken, 80 a minute.
        let mut e = Engine::new(EngineConfig::default()).with_lookups();
        let mut p = rec("p", t0 + 3600, 80, 0);
        p.merged_from = names.clone();
        assert!(feed(&mut e, &p).is_empty());
        let hour: Vec<(i64, u64)> = (0..60).map(|m| (t0 + m * 60, 5)).collect();
        let aliases = names.iter().map(|a| (a.clone(), hour.clone())).collect();
        assert!(e.restore("web", "p", Restored { known: true, aliases, ..Restored::default() }).is_empty());
        let st = &e.issues[&("web".to_owned(), "p".to_owned())];
        assert_eq!(st.absorbed.len(), 16);
        let b = st.base.spike.baseline();
        assert!((75.0..=85.0).contains(&b), "16 aliases' history, not 20's: {b}");
        assert!(e.lookups().is_empty(), "the 4 others are not looked up either");
        // Held: 17 aliases, each with a record; 16 go into "p", the 17th stays its own.
        let mut e = Engine::new(EngineConfig::default());
        for a in &names[..17] {
            feed(&mut e, &rec(a, t0, 5, 0));
        }
        let mut p = rec("p", t0 + 60, 80, 0);
        p.merged_from = names[..17].to_vec();
        feed(&mut e, &p);
        assert_eq!(e.tracked(), 2, "p and s16");
        assert!(e.issues.contains_key(&("web".to_owned(), "s16".to_owned())));
        assert_eq!(e.issues[&("web".to_owned(), "p".to_owned())].absorbed.len(), 16);
    }

    /// After a map every record of the issue names its aliases: once they are taken, such a
    /// record counts as one naming none (and returns early, without a key built per alias: under
    /// `valgrind --tool=dhat` this test makes 43,803 allocations, 363,803 without the early
    /// return, 32 per record naming 16 aliases).
    #[test]
    fn records_naming_taken_aliases_count_as_records_naming_none() {
        let t0 = 1_795_600_000 / 60 * 60;
        let names: Vec<String> = (0..16).map(|i| format!("s{i:02}")).collect();
        for lookups in [false, true] {
            let mut e = Engine::new(EngineConfig::default());
            if lookups {
                e = e.with_lookups();
            }
            for a in &names {
                feed(&mut e, &rec(a, t0, 5, 0));
                e.restore("web", a, Restored::default());
            }
            // Resolutions of other issues of the project are held.
            e.resolved("web", "other", 0, "1.0");
            let mut p = rec("p", t0 + 60, 1, 0);
            p.users = UserSet::default();
            p.merged_from = names.clone();
            feed(&mut e, &p);
            e.restore("web", "p", Restored { known: true, ..Restored::default() });
            assert_eq!((e.tracked(), e.waiting()), (1, false), "lookups {lookups}: p took all 16");
            let mut plain = p.clone();
            plain.merged_from.clear();
            for _ in 0..5000 {
                assert!(feed(&mut e, &p).is_empty());
                assert!(feed(&mut e, &plain).is_empty());
            }
            assert_eq!((e.tracked(), e.waiting(), e.resolved_count()), (1, false, 1), "lookups {lookups}");
            let st = &e.issues[&("web".to_owned(), "p".to_owned())];
            assert_eq!(st.minutes.get(t0 + 60).map(|m| m.count), Some(10_001), "lookups {lookups}");
        }
    }

    #[test]
    fn a_bug_resolved_as_its_alias_regresses_as_the_canonical_issue() {
        let t0 = 1_795_600_000 / 60 * 60;
        let kinds = |v: Vec<Signal>| v.into_iter().map(|s| (s.kind, s.issue_id)).collect::<Vec<_>>();
        let mapped = |release: &str, minute: i64| {
            let mut r = rec("p", minute, 1, 0);
            r.release = release.into();
            r.merged_from = vec!["s".into()];
            r
        };
        let cfg = EngineConfig { regression_needs_newer_release: true, ..EngineConfig::default() };
        let mut e = Engine::new(cfg.clone());
        feed(&mut e, &rec("s", t0, 3, 0));
        // "s" resolved in 1.0 (before its map arrived): p has no status of its own.
        e.resolved("web", "s", (t0 + 30) * 1000, "1.0");
        assert!(feed(&mut e, &mapped("1.0", t0 + 60)).is_empty(), "the release it was resolved in");
        assert_eq!(kinds(feed(&mut e, &mapped("1.1", t0 + 120))), [(Kind::Regression, "p".to_owned())]);
        assert!(feed(&mut e, &mapped("1.2", t0 + 180)).is_empty(), "one regression");
        assert_eq!(e.resolved_count(), 0);
        // A record naming another alias ("t"): only the aliases it names stand for "p", so
        // "s"'s resolution is not "p"'s.
        let mut e = Engine::new(cfg.clone());
        e.known("web", "p");
        e.resolved("web", "s", t0 * 1000, "1.0");
        let mut other = mapped("1.1", t0 + 60);
        other.merged_from = vec!["t".into()];
        assert!(feed(&mut e, &other).is_empty());
        assert_eq!(e.resolved_count(), 1, "s's resolution is not spent");
        // "p" with a status of its own (reopened, ignored): no regression through "s".
        e.unresolved("web", "p");
        assert!(feed(&mut e, &mapped("1.1", t0 + 120)).is_empty());
        // A status snapshot without "p" (its status row went): "s"'s resolution stands again.
        e.replace_unresolved([("web", "other")]);
        assert_eq!(e.unresolved_count(), 1);
        assert_eq!(kinds(feed(&mut e, &mapped("1.1", t0 + 180))), [(Kind::Regression, "p".to_owned())]);
        // "p"'s own resolution comes first: resolved in 2.0, 1.1 is no regression.
        let mut e = Engine::new(cfg);
        e.known("web", "p");
        e.resolved("web", "s", t0 * 1000, "1.0");
        e.resolved("web", "p", t0 * 1000, "2.0");
        assert!(feed(&mut e, &mapped("1.1", t0 + 60)).is_empty());
        assert_eq!(kinds(feed(&mut e, &mapped("2.1", t0 + 120))), [(Kind::Regression, "p".to_owned())]);
        assert_eq!(e.resolved_count(), 0, "the alias's resolution is spent with it");
    }

    /// (kind, issue, minute) of signals, sorted.
    fn summary(signals: &[Signal]) -> Vec<(Kind, String, String)> {
        let mut v: Vec<_> = signals.iter().map(|s| (s.kind, s.issue_id.clone(), s.minute.clone())).collect();
        v.sort_by(|a, b| (a.0.as_str(), &a.1, &a.2).cmp(&(b.0.as_str(), &b.1, &b.2)));
        v
    }

    fn minute_text(minute: i64) -> String {
        format_rfc3339(minute * 1000).replace(".000Z", "Z")
    }

    /// A steady count around 10 a minute (8 to 12), different per issue and minute.
    fn steady_count(issue: usize, m: i64) -> u64 {
        8 + ((issue as u64 * 7919 + m as u64 * 104_729) % 5)
    }

    const ISSUES: [&str; 5] = ["a", "b", "c", "d", "burst"];

    /// An hour of partial aggregates of five issues (each minute's count in three parts, as
    /// three grouper batches would emit them); "burst" has ten times its rate in minute 50.
    fn hour(t0: i64) -> Vec<AggregateRecord> {
        let mut out = Vec::new();
        for (i, issue) in ISSUES.iter().enumerate() {
            for m in 0..60 {
                let n = if *issue == "burst" && m == 50 { 100 } else { steady_count(i, m) };
                for part in 0..3 {
                    let c = n / 3 + u64::from(part < n % 3);
                    out.push(rec(issue, t0 + m * 60, c, (m as u64) * 100 + part * 10));
                }
            }
        }
        out
    }

    #[test]
    fn a_record_dated_a_day_ahead_changes_no_other_issues_signals() {
        let t0 = 1_795_600_000 / 60 * 60;
        let run = |phone: bool| -> (Vec<Signal>, Option<i64>) {
            let mut e = Engine::new(EngineConfig::default());
            let mut out = Vec::new();
            let mut watermark_at_20 = None;
            for m in 0..60 {
                for (i, issue) in ["a", "b"].iter().enumerate() {
                    let n = if *issue == "a" && m == 50 { 100 } else { steady_count(i, m) };
                    out.extend(feed(&mut e, &rec(issue, t0 + m * 60, n, m as u64 * 100)));
                }
                if phone && m == 20 {
                    // A phone whose clock is 23 hours ahead, received in minute 20.
                    let r = rec("phone", t0 + 20 * 60 + 23 * 3600, 1, 7);
                    let at = Arrival { partition: 0, received_ms: (t0 + 20 * 60) * 1000 + 30_000, now_ms: 0 };
                    out.extend(e.ingest(&r, at));
                }
                out.extend(e.advance(0));
                if m == 20 {
                    watermark_at_20 = e.watermark();
                }
            }
            let (late, future) = e.take_counts();
            assert_eq!((late, future), (0, u64::from(phone)));
            (out, watermark_at_20)
        };
        let (without, w0) = run(false);
        let (with, w1) = run(true);
        assert_eq!(w0, Some(t0 + 20 * 60));
        assert_eq!(w1, Some(t0 + 20 * 60), "the phone's record does not move the watermark");
        let spikes: Vec<_> = summary(&without).into_iter().filter(|s| s.0 == Kind::Spike).collect();
        assert_eq!(spikes, [(Kind::Spike, "a".to_owned(), minute_text(t0 + 50 * 60))], "the burst is found");
        let mut expected = summary(&without);
        expected.push((Kind::NewIssue, "phone".into(), minute_text(t0 + 20 * 60 + 23 * 3600)));
        expected.sort_by(|a, b| (a.0.as_str(), &a.1, &a.2).cmp(&(b.0.as_str(), &b.1, &b.2)));
        assert_eq!(summary(&with), expected, "only the phone's own new_issue differs");
    }

    #[test]
    fn a_steady_hour_delivered_at_once_in_any_order_raises_no_spike_and_a_burst_is_found() {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let t0 = 1_795_600_000 / 60 * 60;
        // Everything received at once, a minute after the hour.
        let received_ms = (t0 + 61 * 60) * 1000;
        let mut orders: Vec<(String, Vec<AggregateRecord>)> = vec![
            ("oldest first".into(), hour(t0)),
            ("newest first".into(), {
                let mut v = hour(t0);
                v.sort_by_key(|r| std::cmp::Reverse(r.minute));
                v
            }),
        ];
        for seed in 0..8 {
            let mut v = hour(t0);
            v.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(seed));
            orders.push((format!("shuffled, seed {seed}"), v));
        }
        for (name, records) in orders {
            let mut e = Engine::new(EngineConfig::default());
            let mut signals = Vec::new();
            // Evaluated every 37 records, as the detector does every 500 ms while it reads.
            for chunk in records.chunks(37) {
                for r in chunk {
                    signals.extend(e.ingest(r, Arrival { partition: 0, received_ms, now_ms: 0 }));
                }
                signals.extend(e.advance(0));
            }
            // The next evaluation, with nothing new: what was judged is signalled.
            signals.extend(e.advance(0));
            assert!(!e.pending());
            // One spike, of the burst, whose window (one or two minutes) holds minute 50: an
            // issue whose first minutes have not arrived yet has fewer minutes of history, and
            // its first judgement may be of minutes 50 and 51 together.
            let spikes: Vec<&Signal> = signals.iter().filter(|s| s.kind != Kind::NewIssue).collect();
            assert_eq!(spikes.len(), 1, "{name}: {:?}", summary(&signals));
            let s = spikes[0];
            let end = minute_text(t0 + 50 * 60 + 60 * (i64::from(s.window_minutes) - 1));
            assert_eq!(
                (s.kind, s.issue_id.as_str(), s.minute.as_str()),
                (Kind::Spike, "burst", end.as_str()),
                "{name}"
            );
            assert!(s.count >= 100, "{name}: {}", s.count);
            let new: BTreeSet<String> =
                signals.iter().filter(|s| s.kind == Kind::NewIssue).map(|s| s.issue_id.clone()).collect();
            assert_eq!(new.len(), ISSUES.len(), "{name}");
            assert_eq!(e.take_counts(), (0, 0), "{name}: nothing too late, nothing ahead");
        }
    }

    #[test]
    fn late_records_within_the_allowed_lateness_update_counts_without_false_spikes() {
        let t0 = 1_795_600_000 / 60 * 60;
        let mut e = Engine::new(EngineConfig::default());
        let mut signals = Vec::new();
        // Each minute: 70 % on time, 30 % delivered 5 to 20 minutes later.
        let mut stragglers: BTreeMap<i64, Vec<AggregateRecord>> = BTreeMap::new();
        for m in 0..90 {
            let n = steady_count(0, m) * 2;
            let on_time = n * 7 / 10;
            signals.extend(feed(&mut e, &rec("a", t0 + m * 60, on_time, m as u64 * 100)));
            // Minute 70's stragglers are a burst, found when they arrive.
            let late = if m == 70 { 300 } else { n - on_time };
            stragglers.entry(m + 5 + m % 16).or_default().push(rec("a", t0 + m * 60, late, m as u64 * 100 + 50));
            for r in stragglers.remove(&m).unwrap_or_default() {
                signals.extend(feed(&mut e, &r));
            }
            // One evaluation a minute: late records coming in every minute do not defer the
            // signals more than `idle_ms`.
            signals.extend(e.advance(m * 60_000));
        }
        let spikes: Vec<_> = summary(&signals).into_iter().filter(|s| s.0 != Kind::NewIssue).collect();
        assert_eq!(spikes, [(Kind::Spike, "a".to_owned(), minute_text(t0 + 70 * 60))]);
        let spike = signals.iter().find(|s| s.kind == Kind::Spike).unwrap();
        assert_eq!(spike.count, steady_count(0, 70) * 2 * 7 / 10 + 300, "the late records counted");
        // Beyond the allowed lateness (120 minutes): not used for detection, counted.
        assert_eq!(e.take_counts(), (0, 0));
        feed(&mut e, &rec("a", t0 + 89 * 60 - 121 * 60, 500, 0));
        feed(&mut e, &rec("a", t0 + 9 * 60, 1, 0));
        assert_eq!(e.take_counts(), (1, 0));
        assert!(e.advance(0).iter().all(|s| s.kind != Kind::Spike));
    }

    #[test]
    fn the_watermark_is_the_minimum_over_active_partitions_and_an_idle_one_does_not_hold_it_back() {
        let t0 = 1_795_600_000 / 60 * 60;
        let mut e = Engine::new(EngineConfig::default());
        e.assign(&[0, 1], 0);
        let at = |partition: i32, minute: i64, now_ms: i64| Arrival {
            partition,
            received_ms: (t0 + minute * 60) * 1000 + 1000,
            now_ms,
        };
        e.ingest(&rec("a", t0 + 10 * 60, 1, 0), at(0, 10, 1000));
        e.advance(1000);
        assert_eq!(e.watermark(), None, "partition 1 has no records yet and is not idle");
        e.ingest(&rec("b", t0 + 5 * 60, 1, 0), at(1, 5, 2000));
        e.advance(2000);
        assert_eq!(e.watermark(), Some(t0 + 5 * 60), "the minimum");
        e.ingest(&rec("a", t0 + 12 * 60, 1, 0), at(0, 12, 11_000));
        e.advance(11_000);
        assert_eq!(e.watermark(), Some(t0 + 5 * 60), "partition 1 is 9 s quiet: not idle yet");
        e.advance(12_000);
        assert_eq!(e.watermark(), Some(t0 + 12 * 60), "partition 1 is idle: it holds nothing back");
        // Back with older records: they are late, the watermark does not go back.
        e.ingest(&rec("b", t0 + 6 * 60, 1, 0), at(1, 6, 13_000));
        e.advance(13_000);
        assert_eq!(e.watermark(), Some(t0 + 12 * 60));
        // Every partition idle: the most advanced one.
        e.ingest(&rec("a", t0 + 15 * 60, 1, 0), at(0, 15, 13_000));
        e.advance(30_000);
        assert_eq!(e.watermark(), Some(t0 + 15 * 60));
        // A revoked partition holds nothing back; a newly assigned one does until it is idle.
        e.revoke(&[1]);
        e.assign(&[2], 30_000);
        e.ingest(&rec("a", t0 + 20 * 60, 1, 0), at(0, 20, 31_000));
        e.advance(31_000);
        assert_eq!(e.watermark(), Some(t0 + 15 * 60));
        e.advance(40_000);
        assert_eq!(e.watermark(), Some(t0 + 20 * 60));
    }

    #[test]
    fn an_issue_a_minute_younger_than_its_projects_others_is_judged_on_its_own_history_too() {
        let t0 = 1_795_600_000 / 60 * 60;
        let mut e = Engine::new(EngineConfig::default());
        let mut signals = Vec::new();
        // Two quiet issues from minute 0; a busy one (26 a minute) from minute 1: in minute 30
        // it has 29 minutes of history, its project's others are warm (about 2 a minute).
        for m in 0..40 {
            signals.extend(feed(&mut e, &rec("quiet1", t0 + m * 60, 2, 0)));
            signals.extend(feed(&mut e, &rec("quiet2", t0 + m * 60, 2, 0)));
            if m >= 1 {
                signals.extend(feed(&mut e, &rec("busy", t0 + m * 60, 26, 0)));
            }
            signals.extend(e.advance(0));
        }
        assert!(signals.iter().all(|s| s.kind == Kind::NewIssue), "{:?}", summary(&signals));
        // A new issue bursting is still judged against the project.
        let mut burst = feed(&mut e, &rec("fresh", t0 + 40 * 60, 60, 0));
        feed(&mut e, &rec("quiet1", t0 + 43 * 60, 2, 0));
        burst.extend(e.advance(0));
        burst.extend(e.advance(0));
        assert!(burst.iter().any(|s| s.kind == Kind::Spike && s.issue_id == "fresh"), "{:?}", summary(&burst));
    }

    /// Issue "a": ten a minute for an hour, silent for `silent` minutes, ten a minute for half
    /// an hour, then 200 in one minute; "b" keeps the watermark moving throughout. With
    /// lookups, what a ClickHouse would answer (the counts fed so far) is handed back.
    fn comeback(cfg: EngineConfig, lookups: bool, silent: i64) -> (Vec<Signal>, u64, usize) {
        let t0 = 1_795_600_000 / 60 * 60;
        let mut e = Engine::new(cfg);
        if lookups {
            e = e.with_lookups();
        }
        let mut stored: Vec<(i64, u64)> = Vec::new();
        let mut out = Vec::new();
        let burst_at = 60 + silent + 30;
        for m in 0..=burst_at + 5 {
            let a = if m < 60 || (m >= 60 + silent && m < burst_at) {
                10
            } else if m == burst_at {
                200
            } else {
                0
            };
            let minute = t0 + m * 60;
            if a > 0 {
                out.extend(feed(&mut e, &rec("a", minute, a, m as u64 * 1000)));
                stored.push((minute, a));
            }
            out.extend(feed(&mut e, &rec("b", minute, 5, m as u64 * 1000)));
            for l in e.lookups() {
                let known = stored.first().is_some_and(|(first, _)| *first * 1000 < l.first_seen_ms)
                    || (l.issue_id == "b" && m > 0);
                let history = stored
                    .iter()
                    .copied()
                    .filter(|(x, _)| *x < l.from_minute && *x >= l.from_minute - 180 * 60 && l.issue_id == "a")
                    .collect();
                out.extend(e.restore(&l.project, &l.issue_id, Restored { known, history, ..Restored::default() }));
            }
            out.extend(e.advance(0));
            out.extend(e.advance(0));
        }
        (out, e.take_evictions().0, e.tracked())
    }

    #[test]
    fn an_evicted_issue_read_back_is_judged_as_if_held_and_is_not_new_again() {
        let held = comeback(EngineConfig { evict_idle_min: 100_000, ..EngineConfig::default() }, false, 170);
        let evicted = comeback(EngineConfig::default(), true, 170);
        let a = |s: &[Signal]| {
            s.iter().filter(|s| s.issue_id == "a").map(|s| (s.kind, s.minute.clone())).collect::<Vec<_>>()
        };
        assert_eq!(evicted.1, 1, "a was evicted once");
        let t0 = 1_795_600_000 / 60 * 60;
        let burst = minute_text(t0 + (60 + 170 + 30) * 60);
        assert_eq!(a(&held.0), [(Kind::NewIssue, minute_text(t0)), (Kind::Spike, burst.clone())]);
        assert_eq!(a(&evicted.0), a(&held.0), "one new_issue, the same spike");
        // Held: the same without lookups (an evicted issue is remembered as known).
        let plain = comeback(EngineConfig::default(), false, 170);
        assert_eq!((a(&plain.0), plain.1), (a(&held.0), 1));
    }

    #[test]
    fn a_revoked_partitions_issues_leave_and_come_back_through_a_lookup() {
        let t0 = 1_795_600_000 / 60 * 60;
        let mut e = Engine::new(EngineConfig::default()).with_lookups();
        e.assign(&[0, 1], 0);
        let at = |partition: i32, minute: i64| Arrival { partition, received_ms: minute * 1000 + 59_000, now_ms: 0 };
        assert!(e.ingest(&rec("x", t0, 3, 0), at(0, t0)).is_empty(), "waits for its lookup");
        assert!(e.ingest(&rec("y", t0, 3, 0), at(1, t0)).is_empty());
        assert!(e.pending());
        let mut firsts: Vec<String> = e.lookups().into_iter().map(|l| l.issue_id).collect();
        firsts.sort();
        assert_eq!(firsts, ["x", "y"]);
        for id in ["x", "y"] {
            let s = e.restore("web", id, Restored::default());
            assert_eq!(s.iter().map(|s| s.kind).collect::<Vec<_>>(), [Kind::NewIssue]);
        }
        assert!(!e.pending() && e.tracked() == 2);
        // A record waiting for its lookup on a revoked partition goes too.
        e.ingest(&rec("z", t0, 1, 0), at(1, t0));
        e.revoke(&[1]);
        assert_eq!((e.tracked(), e.lookups().len()), (1, 0), "x stays; y and z go with partition 1");
        // Assigned again: y waits for what ClickHouse knows (seen before: no new_issue).
        e.assign(&[1], 0);
        assert!(e.ingest(&rec("y", t0 + 60, 3, 0), at(1, t0 + 60)).is_empty());
        let signalled = vec![(Kind::Spike, String::new(), t0)];
        let s =
            e.restore("web", "y", Restored { known: true, history: vec![(t0, 3)], signalled, ..Restored::default() });
        assert!(s.is_empty(), "{s:?}");
        assert_eq!(e.tracked(), 2);
    }

    #[test]
    fn facts_round_trip_in_one_allocation_with_any_text() {
        let f = SampleFacts {
            top_frames: vec!["app.js in f".into(), "1:2:3 in ü:ñ".into(), String::new(), "😀".repeat(3)],
            request_url: "https://x/y?a=1:2".into(),
            browser: "Chrome 131".into(),
            os: String::new(),
        };
        assert_eq!(Facts::of(&f).get(), f);
        assert_eq!(Facts::of(&SampleFacts::default()).get(), SampleFacts::default());
    }

    #[test]
    fn beyond_max_issues_the_least_recently_seen_go_first() {
        let t0 = 1_795_600_000 / 60 * 60;
        let mut e = Engine::new(EngineConfig { max_issues: 10, ..EngineConfig::default() });
        for i in 0..25 {
            feed(&mut e, &rec(&format!("i{i:02}"), t0 + i * 60, 1, 0));
        }
        e.advance(0);
        assert_eq!(e.take_evictions(), (0, 16), "down to 9 (90% of 10)");
        assert_eq!(e.tracked(), 9);
        // The latest stay; an evicted one is not new again.
        assert!(feed(&mut e, &rec("i24", t0 + 25 * 60, 1, 0)).is_empty());
        assert!(feed(&mut e, &rec("i00", t0 + 25 * 60, 1, 0)).is_empty(), "known: held before");
    }
}
