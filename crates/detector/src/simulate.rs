//! A seeded traffic simulator for spike detection: per-minute counts of many issues over a
//! week, with daily and weekly seasonality, overdispersed noise, bursts of several magnitudes
//! and durations, issues that appear mid-week, and slow ramps; scored by recall of 5x-or-more
//! bursts, false spikes per issue and week, and minutes to detect. The same run scores a
//! baseline rule: the current 5-minute bucket above 10x the mean of the previous eleven.
//!
//! Here the spike model ([`crate::spike`]) reads each issue's per-minute counts directly (the
//! `model` path); [`crate::replay`] feeds the same traffic through the detector's engine as the
//! service drives it (the `engine` path) and scores it with [`score`].

use crate::spike::{SpikeConfig, SpikeState};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Simulation options.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Issues.
    pub issues: usize,
    /// Minutes simulated (10,080 is a week).
    pub minutes: u32,
    /// Seed.
    pub seed: u64,
    /// Bursts injected per issue and week, on average.
    pub bursts_per_week: f64,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self { issues: 200, minutes: 10_080, seed: 1, bursts_per_week: 3.0 }
    }
}

/// An injected burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burst {
    /// Issue index.
    pub issue: usize,
    /// First minute.
    pub start: u32,
    /// Minutes.
    pub duration: u32,
    /// Rate multiplier.
    pub magnitude: f64,
    /// The issue's expected events per minute at the burst's start, without the burst.
    pub base_rate: f64,
}

impl Burst {
    /// A burst that can be told from noise at all: at least 10 extra events expected in its
    /// first two minutes (a 5x burst of an issue seen once an hour is invisible to anyone).
    pub fn detectable(&self) -> bool {
        self.base_rate * (self.magnitude - 1.0) * f64::from(self.duration.min(2)) >= 10.0
    }
}

/// Simulated traffic.
#[derive(Debug, Clone)]
pub struct Traffic {
    /// Per issue, per minute counts.
    pub counts: Vec<Vec<u32>>,
    /// First minute of each issue (0 unless it appears mid-week).
    pub born: Vec<u32>,
    /// Injected bursts.
    pub bursts: Vec<Burst>,
}

fn poisson(rng: &mut SmallRng, lambda: f64) -> u32 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda > 30.0 {
        // Normal approximation.
        let u1: f64 = rng.gen::<f64>().max(1e-12);
        let u2: f64 = rng.gen();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        return (lambda + z * lambda.sqrt()).round().max(0.0) as u32;
    }
    let l = (-lambda).exp();
    let (mut k, mut p) = (0u32, 1.0);
    loop {
        p *= rng.gen::<f64>();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

/// Generates the traffic.
pub fn simulate(opts: &SimOptions) -> Traffic {
    let mut rng = SmallRng::seed_from_u64(opts.seed);
    let (mut counts, mut born, mut bursts) = (Vec::new(), Vec::new(), Vec::new());
    let n = opts.minutes;
    for issue in 0..opts.issues {
        let base = (rng.gen_range((0.02f64).ln()..(50.0f64).ln())).exp();
        let phase: f64 = rng.gen();
        let start = if rng.gen_bool(0.1) { rng.gen_range(0..n / 2) } else { 0 };
        let ramp = rng.gen_bool(0.1).then(|| rng.gen_range(start..n.saturating_sub(400).max(start + 1)));
        let mut mine = Vec::new();
        let k = poisson(&mut rng, opts.bursts_per_week * f64::from(n) / 10_080.0);
        for _ in 0..k {
            let magnitude = [2.0, 3.0, 5.0, 10.0, 50.0][rng.gen_range(0..5)];
            let duration = [3, 10, 30, 120][rng.gen_range(0..4)];
            let s = rng.gen_range(start + 120..n.max(start + 121));
            // No overlapping bursts within one issue: scoring stays unambiguous.
            if mine.iter().all(|b: &Burst| s + duration + 60 < b.start || b.start + b.duration + 60 < s)
                && s + duration < n
            {
                mine.push(Burst { issue, start: s, duration, magnitude, base_rate: 0.0 });
            }
        }
        let rate = |t: u32| {
            let day = f64::from(t) / 1440.0;
            let daily = 1.0 + 0.5 * (2.0 * std::f64::consts::PI * (day + phase)).sin();
            let weekly = if (t / 1440) % 7 >= 5 { 0.7 } else { 1.0 };
            let ramped = match ramp {
                Some(r) if t >= r => 1.0 + 2.0 * (f64::from(t - r) / 360.0).min(1.0),
                _ => 1.0,
            };
            base * daily * weekly * ramped
        };
        for b in &mut mine {
            b.base_rate = rate(b.start);
        }
        let series: Vec<u32> = (0..n)
            .map(|t| {
                if t < start {
                    return 0;
                }
                let burst = mine.iter().find(|b| t >= b.start && t < b.start + b.duration).map_or(1.0, |b| b.magnitude);
                // Overdispersion: the rate itself wobbles from minute to minute.
                let wobble = (0.25 * (rng.gen::<f64>() - 0.5) * 2.0).exp();
                poisson(&mut rng, rate(t) * burst * wobble)
            })
            .collect();
        counts.push(series);
        born.push(start);
        bursts.extend(mine);
    }
    Traffic { counts, born, bursts }
}

/// How one detector did.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Score {
    /// Share of detectable bursts of 5x or more detected while they lasted (plus two minutes).
    pub recall_5x: f64,
    /// Detections outside every burst of 2x or more, per issue and week.
    pub false_per_issue_week: f64,
    /// Median minutes from a 5x+ burst's start to its detection, counting the minute in which
    /// it is detected (1 = at the end of the burst's first minute).
    pub median_detect_min: f64,
    /// All detections.
    pub detections: usize,
}

/// Scores detections, (issue, minute), against the injected bursts of `traffic`.
pub fn score(traffic: &Traffic, detections: &[(usize, u32)], minutes: u32) -> Score {
    let strong: Vec<&Burst> = traffic.bursts.iter().filter(|b| b.magnitude >= 5.0 && b.detectable()).collect();
    let mut delays = Vec::new();
    for b in &strong {
        if let Some(d) = detections
            .iter()
            .filter(|(i, t)| *i == b.issue && *t >= b.start && *t < b.start + b.duration + 2)
            .map(|(_, t)| t - b.start + 1)
            .min()
        {
            delays.push(f64::from(d));
        }
    }
    let false_count = detections
        .iter()
        .filter(|(i, t)| {
            !traffic.bursts.iter().any(|b| b.issue == *i && *t >= b.start && *t < b.start + b.duration + 5)
        })
        .count();
    delays.sort_by(f64::total_cmp);
    let weeks = f64::from(minutes) / 10_080.0;
    Score {
        recall_5x: if strong.is_empty() { 1.0 } else { delays.len() as f64 / strong.len() as f64 },
        false_per_issue_week: false_count as f64 / (traffic.counts.len() as f64 * weeks),
        median_detect_min: delays.get(delays.len() / 2).copied().unwrap_or(f64::NAN),
        detections: detections.len(),
    }
}

/// tracefold's detector over the traffic.
pub fn run_detector(traffic: &Traffic, cfg: &SpikeConfig) -> Vec<(usize, u32)> {
    let mut out = Vec::new();
    for (i, series) in traffic.counts.iter().enumerate() {
        let mut st = SpikeState::default();
        for (t, c) in series.iter().enumerate().skip(traffic.born[i] as usize) {
            if st.observe(f64::from(*c), cfg).spike {
                out.push((i, t as u32));
            }
        }
    }
    out
}

/// The baseline rule: at the end of each 5-minute bucket, a spike when the bucket holds more
/// than 10 times the mean of the previous eleven buckets (once per run of such buckets).
pub fn run_baseline(traffic: &Traffic) -> Vec<(usize, u32)> {
    let mut out = Vec::new();
    for (i, series) in traffic.counts.iter().enumerate() {
        let buckets: Vec<u32> = series[traffic.born[i] as usize..].chunks(5).map(|c| c.iter().sum()).collect();
        let mut active = false;
        for b in 11..buckets.len() {
            let mean = f64::from(buckets[b - 11..b].iter().sum::<u32>()) / 11.0;
            let high = f64::from(buckets[b]) > 10.0 * mean;
            if high && !active {
                out.push((i, traffic.born[i] + (b as u32) * 5 + 4));
            }
            active = high;
        }
    }
    out
}

/// Which code path the detections came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// The spike model on each issue's per-minute counts ([`run_detector`]).
    #[default]
    Model,
    /// The detector's engine fed partial aggregates as the service is ([`crate::replay`]).
    Engine,
}

impl Path {
    /// `model` or `engine`.
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Model => "model",
            Path::Engine => "engine",
        }
    }
}

/// Both detectors on one simulated week.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The code path tracefold's detections came from.
    pub path: Path,
    /// Issues simulated.
    pub issues: usize,
    /// Minutes simulated.
    pub minutes: u32,
    /// Bursts injected, of those 5x or more, and of those detectable.
    pub bursts: (usize, usize, usize),
    /// tracefold's detector.
    pub tracefold: Score,
    /// The baseline rule (always on the per-minute counts).
    pub baseline: Score,
    /// How the records went through the engine (engine path only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<crate::replay::PipelineStats>,
}

/// The report of tracefold's `detections` on `traffic`, next to the baseline rule's.
pub fn report(
    traffic: &Traffic,
    minutes: u32,
    path: Path,
    detections: &[(usize, u32)],
    pipeline: Option<crate::replay::PipelineStats>,
) -> Report {
    let base = run_baseline(traffic);
    Report {
        path,
        issues: traffic.counts.len(),
        minutes,
        bursts: (
            traffic.bursts.len(),
            traffic.bursts.iter().filter(|b| b.magnitude >= 5.0).count(),
            traffic.bursts.iter().filter(|b| b.magnitude >= 5.0 && b.detectable()).count(),
        ),
        tracefold: score(traffic, detections, minutes),
        baseline: score(traffic, &base, minutes),
        pipeline,
    }
}

/// Simulates and scores the spike model on the per-minute counts (the model path).
pub fn evaluate(opts: &SimOptions, cfg: &SpikeConfig) -> Report {
    let traffic = simulate(opts);
    let ours = run_detector(&traffic, cfg);
    report(&traffic, opts.minutes, Path::Model, &ours, None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The targets (recall of 5x bursts at least 0.95, at most one false spike per issue and
    /// week, median detection within 2 minutes), and no worse than the baseline rule.
    pub(crate) fn assert_meets_targets(r: &Report) {
        let t = &r.tracefold;
        assert!(t.recall_5x >= 0.95, "{r:?}");
        assert!(t.false_per_issue_week <= 1.0, "{r:?}");
        assert!(t.median_detect_min <= 2.0, "{r:?}");
        assert!(
            t.recall_5x >= r.baseline.recall_5x && t.false_per_issue_week <= r.baseline.false_per_issue_week,
            "{r:?}"
        );
    }

    #[test]
    fn meets_the_targets_and_beats_the_baseline() {
        assert_meets_targets(&evaluate(&SimOptions { issues: 120, ..SimOptions::default() }, &SpikeConfig::default()));
    }
}
