//! Spike detection measured on the detector's own code path: the traffic of
//! [`crate::simulate`] replayed through [`Engine`] the way [`crate::service`] drives it.
//!
//! # What the replay does
//!
//! - **Grouper.** Each event of an issue's minute gets a time inside the minute, a source
//!   partition (raw events are keyed by event id: any grouper), a release and environment (some
//!   issues have two releases and two environments) and a user. Each grouper cuts a batch every
//!   `batch_ms` (its own phase); a batch emits one [`AggregateRecord`] per (issue, minute,
//!   release, environment) with the count, the distinct user hashes, first and last seen, title,
//!   culprit, level and, in an issue's first record of the batch, a sample event. The record is
//!   produced when its batch closes: that is its Kafka timestamp, `received_ms`.
//! - **Aggregates topic.** A record goes to the partition of its key (`project/issue_id`,
//!   hashed). Each partition reaches the detector in order, after a lag of its own (tens of ms to
//!   1.5 s), and a seeded schedule of episodes per partition: *behind* (the partition lags 30 s
//!   to 4 minutes for 20 minutes to 3 hours, then catches up at once) and *stalled* (nothing for
//!   2 to 30 minutes, then the whole backlog at once). Partitions are read interleaved, in the
//!   order of their delivery times.
//! - **Detector.** [`Engine::assign`] for every partition at the start, [`Engine::ingest`] for each
//!   record with `Arrival { partition, received_ms, now_ms }` (now: its delivery time), and
//!   [`Engine::advance`] every `tick_ms` (500 ms, the service's `on_tick`) of the simulated
//!   clock. `new_issue` and `regression` signals are ignored; `spike` signals are scored by their
//!   minute exactly like the model path ([`crate::simulate::score`]), and their delay on the
//!   simulated clock (burst start to the evaluation that produced them) is reported besides.
//! - **Late source maps** ([`ReplayOptions::late_maps`], off by default). Every third issue's
//!   records from halfway on are of another issue `P` (its own key, so its own partition)
//!   naming the first in `merged_from`, as the grouper emits them when a map arrives after a
//!   bug's first events; `P`'s spikes count as the issue's. The engine finds the same spikes
//!   as with the issue whole (test `a_late_map_halfway_finds_the_spikes_of_the_bug_as_one_issue`).

use crate::engine::{Arrival, Engine, EngineConfig};
use crate::signal::Kind;
use crate::simulate::{report, simulate, Path, Report, SimOptions, Traffic};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use tracefold_model::aggregate::DEFAULT_MAX_USERS;
use tracefold_model::{AggregateRecord, BatchRef, UserSet};

/// Start of the replayed traffic's first minute, Unix seconds (a Monday, 00:00 UTC).
pub const START_SECS: i64 = 1_795_564_800;

/// How the traffic is cut into records and delivered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplayOptions {
    /// Aggregates partitions the detector reads.
    pub partitions: i32,
    /// Source partitions, each with its own grouper batches.
    pub groupers: u32,
    /// A grouper batch closes every this many ms.
    pub batch_ms: i64,
    /// The detector evaluates every this many ms of its clock.
    pub tick_ms: i64,
    /// Projects the issues are spread over (issue `i` in project `i % projects`).
    pub projects: usize,
    /// Partitions behind and stalled (false: every partition on time).
    pub skew: bool,
    /// Late source maps: every third issue's source map arrives halfway through the traffic,
    /// and its records from then on are of another issue (`P`, on its own partition) that
    /// names the first (`S`) in `merged_from` (docs/sourcemaps.md "Late maps"). Spikes of `P`
    /// are scored as the issue's.
    pub late_maps: bool,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self { partitions: 4, groupers: 2, batch_ms: 500, tick_ms: 500, projects: 5, skew: true, late_maps: false }
    }
}

/// How the replay went: what the engine was given and how late it signalled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PipelineStats {
    /// Aggregates partitions.
    pub partitions: i32,
    /// Partial aggregates ingested.
    pub records: u64,
    /// Of them, records naming an alias in `merged_from` (an issue's `P` after its late map,
    /// [`ReplayOptions::late_maps`]).
    pub merged_records: u64,
    /// Evaluations ([`Engine::advance`] calls).
    pub evaluations: u64,
    /// Episodes of a partition behind the others (then catching up at once).
    pub behind_episodes: usize,
    /// Episodes of a partition stalled (then delivering its backlog at once).
    pub stalls: usize,
    /// The largest delay from a record's production to its delivery, seconds.
    pub max_delivery_delay_s: f64,
    /// Records beyond the allowed lateness, not used for detection.
    pub late_records: u64,
    /// Spikes signalled in an issue's first minute with events: an issue without history of
    /// its own is judged against its project's baseline (the model path never judges it).
    pub first_minute_spikes: usize,
    /// Median minutes from a detected 5x+ burst's start to the evaluation that signalled it, on
    /// the simulated clock (the `lateness_min` wait included).
    pub median_signal_delay_min: f64,
    /// 90th percentile of the same.
    pub p90_signal_delay_min: f64,
}

/// A spike signal: issue, minute of the simulation, and when it was signalled (ms).
pub type Detection = (usize, u32, i64);

/// One issue as the grouper describes it.
struct IssueGen {
    template: AggregateRecord,
    /// (release, environment, cumulative share).
    combos: Vec<(String, String, f64)>,
    users: u64,
    partition: i32,
    sample: String,
    /// With late maps: from this minute of the traffic on, its records are of `P`: (minute,
    /// `P`'s issue id, `P`'s partition).
    mapped: Option<(u32, String, i32)>,
}

/// A partial aggregate and when it was produced; [`IssueGen::record`] makes the record.
#[derive(Clone)]
struct Produced {
    produced_ms: i64,
    partition: i32,
    issue: usize,
    minute: i64,
    grouper: u32,
    slot: i64,
    combo: usize,
    count: u64,
    users: UserSet,
    first_seen_ms: i64,
    last_seen_ms: i64,
    /// The issue's first record of its batch: it carries a sample event.
    sample: bool,
    /// Of the issue as `P`, after its late source map.
    mapped: bool,
}

impl IssueGen {
    /// The record of `p`, written over `r` (which keeps its buffers between records).
    fn record(&self, p: Produced, r: &mut AggregateRecord) {
        // Field by field: `clone_from` reuses `r`'s buffers (a derived `clone_from` does not).
        let t = &self.template;
        r.v = t.v;
        r.batch.topic.clone_from(&t.batch.topic);
        r.project.clone_from(&t.project);
        r.merged_from.clear();
        match self.mapped.as_ref().filter(|_| p.mapped) {
            Some((_, primary, _)) => {
                r.issue_id.clone_from(primary);
                r.merged_from.push(t.issue_id.clone());
            }
            None => r.issue_id.clone_from(&t.issue_id),
        }
        r.title.clone_from(&t.title);
        r.culprit.clone_from(&t.culprit);
        r.exc_type.clone_from(&t.exc_type);
        r.level.clone_from(&t.level);
        r.platform.clone_from(&t.platform);
        r.grouping_version.clone_from(&t.grouping_version);
        r.sample.clear();
        r.batch.partition = p.grouper as i32;
        r.batch.first_offset = p.slot;
        r.batch.last_offset = p.slot;
        r.minute = p.minute;
        r.release.clone_from(&self.combos[p.combo].0);
        r.environment.clone_from(&self.combos[p.combo].1);
        r.count = p.count;
        r.users = p.users;
        r.first_seen_ms = p.first_seen_ms;
        r.last_seen_ms = p.last_seen_ms;
        if p.sample {
            r.sample.clone_from(&self.sample);
        }
    }
}

/// A stretch during which a partition lags `lag_ms` (records produced in it are delivered no
/// later than its end).
#[derive(Debug, Clone, Copy)]
struct Episode {
    from_ms: i64,
    to_ms: i64,
    lag_ms: i64,
}

/// One aggregates partition as the detector reads it.
struct Lane {
    base_lag_ms: i64,
    episodes: Vec<Episode>,
    next_episode: usize,
    last_ms: i64,
    /// (delivery ms, what was produced), in order.
    queue: VecDeque<(i64, Produced)>,
}

impl Lane {
    /// When a record produced at `produced_ms` (not before the previous one) is delivered.
    fn delivery(&mut self, produced_ms: i64) -> i64 {
        while self.episodes.get(self.next_episode).is_some_and(|e| e.to_ms <= produced_ms) {
            self.next_episode += 1;
        }
        let mut d = produced_ms + self.base_lag_ms;
        if let Some(e) = self.episodes.get(self.next_episode).filter(|e| e.from_ms <= produced_ms) {
            d = d.max((produced_ms + e.lag_ms).min(e.to_ms));
        }
        d = d.max(self.last_ms);
        self.last_ms = d;
        d
    }
}

fn issue_gens(traffic: &Traffic, opts: &ReplayOptions, rng: &mut SmallRng) -> Vec<IssueGen> {
    let releases = ["web@2.3.0", "web@2.4.0-β"];
    let titles = [
        "TypeError: Cannot read properties of undefined (reading '<id>')",
        "ValueError: invalid literal for int() with base 10: '<str>'",
        "Ошибка: соединение сброшено",
        "KeyError: '用户'",
        "NullPointerException in 🚀 launcher",
    ];
    traffic
        .counts
        .iter()
        .enumerate()
        .map(|(i, series)| {
            let project = format!("project-{}", i % opts.projects.max(1));
            let issue_id = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&(i as u64).to_le_bytes()));
            let partition_of = |issue_id: &str| {
                let key = format!("{project}/{issue_id}");
                (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % opts.partitions.max(1) as u64) as i32
            };
            let partition = partition_of(&issue_id);
            // No draw from `rng`: the traffic is the same with and without late maps.
            let mapped = (opts.late_maps && i % 3 == 0).then(|| {
                let primary = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(format!("mapped {i}").as_bytes()));
                let at = series.len() as u32 / 2;
                let p = partition_of(&primary);
                (at, primary, p)
            });
            let two_releases = rng.gen_bool(0.3);
            let two_envs = rng.gen_bool(0.3);
            let mut combos = Vec::new();
            for (r, rw) in releases.iter().zip([0.7, 0.3]).take(if two_releases { 2 } else { 1 }) {
                for (e, ew) in ["production", "staging"].iter().zip([0.85, 0.15]).take(if two_envs { 2 } else { 1 }) {
                    combos.push(((*r).to_owned(), (*e).to_owned(), rw * ew));
                }
            }
            let total: f64 = combos.iter().map(|c| c.2).sum();
            let mut acc = 0.0;
            for c in &mut combos {
                acc += c.2 / total;
                c.2 = acc;
            }
            let mean = series.iter().map(|c| f64::from(*c)).sum::<f64>() / series.len().max(1) as f64;
            let title = titles[i % titles.len()].to_owned();
            let sample = format!(
                r#"{{"exception":[{{"type":"Error","value":{},"stacktrace":{{"frames":[{{"function":"handler{i}","filename":"app.js","in_app":true}}]}}}}],"request":{{"url":"https://example.com/checkout"}}}}"#,
                serde_json::to_string(&title).unwrap_or_default()
            );
            IssueGen {
                template: AggregateRecord {
                    v: tracefold_model::aggregate::AGGREGATE_FORMAT_VERSION,
                    batch: BatchRef { topic: "tracefold.events".into(), ..BatchRef::default() },
                    project,
                    issue_id,
                    title,
                    culprit: format!("app.js in handler{i}"),
                    exc_type: "Error".into(),
                    level: "error".into(),
                    platform: "javascript".into(),
                    grouping_version: "v1".into(),
                    ..AggregateRecord::default()
                },
                combos,
                users: 20 + (mean * 100.0) as u64,
                partition,
                sample,
                mapped,
            }
        })
        .collect()
}

/// The records the groupers produce for minute `t` of every issue, in production order.
fn minute_records(
    traffic: &Traffic,
    gens: &[IssueGen],
    phases: &[i64],
    opts: &ReplayOptions,
    t: u32,
    rng: &mut SmallRng,
) -> Vec<Produced> {
    struct Acc {
        count: u64,
        users: UserSet,
        first: i64,
        last: i64,
    }
    let minute = START_SECS + 60 * i64::from(t);
    let mut out = Vec::new();
    for (i, g) in gens.iter().enumerate() {
        let n = traffic.counts[i][t as usize];
        if n == 0 {
            continue;
        }
        // (batch slot, grouper, combo) -> the partial aggregate.
        let mut parts: BTreeMap<(i64, u32, usize), Acc> = BTreeMap::new();
        for _ in 0..n {
            let ms = minute * 1000 + rng.gen_range(0..60_000);
            let grouper = rng.gen_range(0..opts.groupers.max(1));
            let x: f64 = rng.gen();
            let combo = g.combos.iter().position(|c| x < c.2).unwrap_or(g.combos.len() - 1);
            let user = xxhash_rust::xxh3::xxh3_64_with_seed(&rng.gen_range(0..g.users).to_le_bytes(), i as u64);
            let slot = (ms - phases[grouper as usize]).div_euclid(opts.batch_ms);
            let a = parts.entry((slot, grouper, combo)).or_insert(Acc {
                count: 0,
                users: UserSet::default(),
                first: ms,
                last: ms,
            });
            a.count += 1;
            a.users.insert(user, DEFAULT_MAX_USERS);
            a.first = a.first.min(ms);
            a.last = a.last.max(ms);
        }
        let mut previous: Option<(i64, u32)> = None;
        for ((slot, grouper, combo), a) in parts {
            // The issue's first record of the batch carries a sample (a batch that began in the
            // previous minute emitted that minute's record first).
            let batch_start = slot * opts.batch_ms + phases[grouper as usize];
            let sample = previous != Some((slot, grouper)) && batch_start >= minute * 1000;
            previous = Some((slot, grouper));
            let mapped = g.mapped.as_ref().filter(|(at, _, _)| t >= *at);
            out.push(Produced {
                // Produced when the batch closes, a few ms later.
                produced_ms: batch_start + opts.batch_ms + 5,
                partition: mapped.map_or(g.partition, |(_, _, p)| *p),
                mapped: mapped.is_some(),
                issue: i,
                minute,
                grouper,
                slot,
                combo,
                count: a.count,
                users: a.users,
                first_seen_ms: a.first,
                last_seen_ms: a.last,
                sample,
            });
        }
    }
    out.sort_by_key(|p| p.produced_ms);
    out
}

/// Lanes with their lags and, with `skew`, episodes behind and stalled.
fn lanes(opts: &ReplayOptions, minutes: u32, rng: &mut SmallRng) -> Vec<Lane> {
    let end = i64::from(minutes);
    (0..opts.partitions.max(1))
        .map(|_| {
            let mut episodes = Vec::new();
            let mut t = 0i64;
            loop {
                t += rng.gen_range(360..3600);
                if !opts.skew || t >= end {
                    break;
                }
                let (duration, lag_s) = if rng.gen_bool(0.6) {
                    let d = rng.gen_range(20..180);
                    (d, rng.gen_range(30..240))
                } else {
                    let d = rng.gen_range(2..30);
                    (d, 60 * d)
                };
                let from_ms = (START_SECS + 60 * t) * 1000 + rng.gen_range(0..60_000);
                episodes.push(Episode { from_ms, to_ms: from_ms + duration * 60_000, lag_ms: lag_s * 1000 });
                t += duration;
            }
            Lane { base_lag_ms: rng.gen_range(20..1500), episodes, next_episode: 0, last_ms: 0, queue: VecDeque::new() }
        })
        .collect()
}

/// The median and the 90th percentile.
fn quantiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1))).copied();
    (at(0.5).unwrap_or(f64::NAN), at(0.9).unwrap_or(f64::NAN))
}

/// Replays `traffic` through an [`Engine`] with `cfg`; returns its spike signals and how the
/// replay went. `seed` drives the cutting into records and the delivery schedule.
pub fn run_engine(
    traffic: &Traffic,
    cfg: &EngineConfig,
    opts: &ReplayOptions,
    seed: u64,
) -> (Vec<Detection>, PipelineStats) {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x7265_706c_6179);
    let minutes = traffic.counts.first().map_or(0, |c| c.len() as u32);
    let gens = issue_gens(traffic, opts, &mut rng);
    let mut index: HashMap<&str, usize> =
        gens.iter().enumerate().map(|(i, g)| (g.template.issue_id.as_str(), i)).collect();
    // A late map's `P` is the same issue of the traffic.
    index.extend(gens.iter().enumerate().filter_map(|(i, g)| Some((g.mapped.as_ref()?.1.as_str(), i))));
    let phases: Vec<i64> = (0..opts.groupers.max(1)).map(|_| rng.gen_range(0..opts.batch_ms)).collect();
    let mut lanes = lanes(opts, minutes, &mut rng);
    let mut stats = PipelineStats {
        partitions: opts.partitions.max(1),
        behind_episodes: lanes.iter().flat_map(|l| &l.episodes).filter(|e| e.lag_ms < e.to_ms - e.from_ms).count(),
        stalls: lanes.iter().flat_map(|l| &l.episodes).filter(|e| e.lag_ms >= e.to_ms - e.from_ms).count(),
        ..PipelineStats::default()
    };
    let mut engine = Engine::new(cfg.clone());
    let start_ms = START_SECS * 1000;
    let all: Vec<i32> = (0..stats.partitions).collect();
    engine.assign(&all, start_ms);
    let mut detections = Vec::new();
    let mut next_minute = 0u32;
    let end_ms = start_ms + 60_000 * (i64::from(minutes) + cfg.lateness_min + 3);
    let mut now = start_ms;
    let mut max_delay = 0i64;
    let mut batch: Vec<(i64, i32, Produced)> = Vec::new();
    let mut r = AggregateRecord::default();
    loop {
        now += opts.tick_ms;
        // The groupers produce a minute's records from its start on.
        while next_minute < minutes && start_ms + 60_000 * i64::from(next_minute) <= now {
            for p in minute_records(traffic, &gens, &phases, opts, next_minute, &mut rng) {
                let lane = &mut lanes[p.partition as usize];
                let d = lane.delivery(p.produced_ms);
                max_delay = max_delay.max(d - p.produced_ms);
                lane.queue.push_back((d, p));
            }
            next_minute += 1;
        }
        // What the partitions delivered by now, interleaved by delivery time.
        for (p, lane) in lanes.iter_mut().enumerate() {
            while lane.queue.front().is_some_and(|(d, _)| *d <= now) {
                let (d, produced) = lane.queue.pop_front().expect("a front record");
                batch.push((d, p as i32, produced));
            }
        }
        batch.sort_by_key(|(d, p, _)| (*d, *p));
        for (d, partition, produced) in batch.drain(..) {
            stats.records += 1;
            let received_ms = produced.produced_ms;
            gens[produced.issue].record(produced, &mut r);
            stats.merged_records += u64::from(!r.merged_from.is_empty());
            // new_issue and regression signals are not scored.
            let _ = engine.ingest(&r, Arrival { partition, received_ms, now_ms: d });
        }
        stats.evaluations += 1;
        for s in engine.advance(now) {
            if s.kind != Kind::Spike {
                continue;
            }
            let (Some(i), Some(ms)) = (index.get(s.issue_id.as_str()), tracefold_model::time::parse_rfc3339(&s.minute))
            else {
                continue;
            };
            let t = (ms / 1000 - START_SECS).div_euclid(60);
            if let Ok(t) = u32::try_from(t) {
                detections.push((*i, t, now));
            }
        }
        stats.late_records += engine.take_counts().0;
        if now >= end_ms && next_minute >= minutes && lanes.iter().all(|l| l.queue.is_empty()) && !engine.pending() {
            break;
        }
    }
    stats.max_delivery_delay_s = max_delay as f64 / 1000.0;
    stats.first_minute_spikes = detections
        .iter()
        .filter(|(i, t, _)| traffic.counts[*i].iter().position(|c| *c > 0) == Some(*t as usize))
        .count();
    // Clock delays of the detections the score counts: each detectable 5x+ burst's earliest.
    let mut delays = Vec::new();
    for b in traffic.bursts.iter().filter(|b| b.magnitude >= 5.0 && b.detectable()) {
        if let Some((_, _, at)) = detections
            .iter()
            .filter(|(i, t, _)| *i == b.issue && *t >= b.start && *t < b.start + b.duration + 2)
            .min_by_key(|(_, t, at)| (*t, *at))
        {
            delays.push((at - start_ms - 60_000 * i64::from(b.start)) as f64 / 60_000.0);
        }
    }
    (stats.median_signal_delay_min, stats.p90_signal_delay_min) = quantiles(delays);
    (detections, stats)
}

/// Simulates `opts` and scores the engine with `cfg`, fed as the detector service feeds it
/// (the engine path); the baseline rule is scored on the same traffic.
pub fn evaluate(opts: &SimOptions, cfg: &EngineConfig, replay: &ReplayOptions) -> Report {
    let traffic = simulate(opts);
    let (detections, stats) = run_engine(&traffic, cfg, replay, opts.seed);
    let found: Vec<(usize, u32)> = detections.iter().map(|(i, t, _)| (*i, *t)).collect();
    report(&traffic, opts.minutes, Path::Engine, &found, Some(stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::{run_detector, score};

    fn small() -> SimOptions {
        SimOptions { issues: 60, minutes: 3 * 1440, seed: 7, bursts_per_week: 6.0 }
    }

    #[test]
    fn the_engine_path_meets_the_targets() {
        let r = evaluate(&small(), &EngineConfig::default(), &ReplayOptions::default());
        let p = r.pipeline.as_ref().expect("pipeline stats");
        assert!(p.behind_episodes + p.stalls > 0 && p.records > 0, "{r:?}");
        crate::simulate::tests::assert_meets_targets(&r);
    }

    #[test]
    fn records_add_up_to_the_counts_and_each_partition_is_delivered_in_order() {
        let opts = SimOptions { issues: 12, minutes: 180, seed: 3, bursts_per_week: 3.0 };
        let traffic = simulate(&opts);
        let ro = ReplayOptions::default();
        let mut rng = SmallRng::seed_from_u64(1);
        let gens = issue_gens(&traffic, &ro, &mut rng);
        let phases = [0, 250];
        let mut lanes = lanes(&ro, opts.minutes, &mut rng);
        let mut totals = vec![vec![0u64; opts.minutes as usize]; opts.issues];
        let (mut per_minute_records, mut samples) = (0, 0);
        for t in 0..opts.minutes {
            let recs = minute_records(&traffic, &gens, &phases, &ro, t, &mut rng);
            per_minute_records += recs.len();
            for p in recs {
                let i = p.issue;
                let mut r = AggregateRecord::default();
                let (partition, produced_ms) = (p.partition, p.produced_ms);
                assert_eq!(partition, gens[i].partition);
                assert!(!p.mapped);
                gens[i].record(p.clone(), &mut r);
                assert_eq!(
                    (r.issue_id.as_str(), r.minute),
                    (gens[i].template.issue_id.as_str(), START_SECS + 60 * i64::from(t))
                );
                assert!(r.first_seen_ms / 1000 >= r.minute && r.last_seen_ms / 1000 < r.minute + 60);
                assert!(produced_ms > r.last_seen_ms && r.count > 0 && !r.users.hashes.is_empty());
                samples += usize::from(!r.sample.is_empty());
                totals[i][t as usize] += r.count;
                let d = lanes[partition as usize].delivery(produced_ms);
                assert!(d >= produced_ms);
                lanes[partition as usize].queue.push_back((d, p));
            }
        }
        for (i, series) in traffic.counts.iter().enumerate() {
            let expected: Vec<u64> = series.iter().map(|c| u64::from(*c)).collect();
            assert_eq!(totals[i], expected, "issue {i}");
        }
        let events: u64 = totals.iter().flatten().sum();
        assert!(per_minute_records as u64 > events / 50, "several partial records per minute");
        assert!(samples > 0 && samples < per_minute_records, "samples only in the first record of a batch");
        for lane in &lanes {
            let q = &lane.queue;
            assert!(q.iter().zip(q.iter().skip(1)).all(|(a, b)| a.0 <= b.0 && a.1.produced_ms <= b.1.produced_ms));
        }
    }

    #[test]
    fn on_time_partitions_find_what_the_model_finds() {
        // Without skew the engine sees each minute whole: its spikes are the model's, give or
        // take what only the engine does (judging issues without history against their project).
        let opts = SimOptions { issues: 30, minutes: 1440, seed: 11, bursts_per_week: 10.0 };
        let traffic = simulate(&opts);
        let (found, _) = run_engine(
            &traffic,
            &EngineConfig::default(),
            &ReplayOptions { skew: false, ..ReplayOptions::default() },
            1,
        );
        let engine: Vec<(usize, u32)> = found.iter().map(|(i, t, _)| (*i, *t)).collect();
        let model = run_detector(&traffic, &crate::spike::SpikeConfig::default());
        let (e, m) = (score(&traffic, &engine, opts.minutes), score(&traffic, &model, opts.minutes));
        assert!((e.recall_5x - m.recall_5x).abs() < 1e-9, "engine {e:?} model {m:?}");
        assert_eq!(e.median_detect_min, m.median_detect_min, "engine {e:?} model {m:?}");
    }

    #[test]
    fn a_late_map_halfway_finds_the_spikes_of_the_bug_as_one_issue() {
        // Every third issue becomes another issue halfway (its source map arrived late), on
        // another partition: the engine takes the first's history into the second, so the
        // spikes are those of the traffic seen as one issue (without it, the second's first
        // minute is a "spike" against its project), partitions on time or skewed.
        let opts = SimOptions { issues: 30, minutes: 1440, seed: 11, bursts_per_week: 10.0 };
        let traffic = simulate(&opts);
        let cfg = EngineConfig::default();
        for skew in [false, true] {
            let spikes = |late_maps: bool| -> Vec<(usize, u32)> {
                let replay = ReplayOptions { late_maps, skew, ..ReplayOptions::default() };
                let (found, stats) = run_engine(&traffic, &cfg, &replay, 1);
                assert_eq!(stats.late_records, 0);
                // Every third issue's records after minute 720 are its `P`'s, naming `S`.
                assert_eq!(stats.merged_records > stats.records / 10, late_maps, "{stats:?}");
                assert_eq!(stats.behind_episodes > 0, skew, "{stats:?}");
                let mut v: Vec<(usize, u32)> = found.iter().map(|(i, t, _)| (*i, *t)).collect();
                v.sort_unstable();
                v
            };
            let (whole, split) = (spikes(false), spikes(true));
            let mapped_after = |v: &[(usize, u32)]| v.iter().filter(|(i, t)| i % 3 == 0 && *t >= 720).count();
            assert!(mapped_after(&whole) > 0, "the mapped issues have spikes after their maps: {whole:?}");
            assert_eq!(split, whole, "skew {skew}");
        }
    }
}
