//! Detection quality, measured: `tracefold detection-quality` scores the spike detector on
//! simulated traffic (`tracefold_detector::simulate`) against a baseline rule, either the spike
//! model on the per-minute counts (`--path model`) or the detector's engine fed partial
//! aggregates out of order across partitions, as the service feeds it (`--path engine`,
//! `tracefold_detector::replay`).

pub use tracefold_detector::simulate::Path;
use tracefold_detector::simulate::{evaluate as simulate, Report, Score, SimOptions};

/// What to simulate.
#[derive(Debug, Clone, Copy)]
pub struct DetectionOptions {
    /// Issues simulated.
    pub issues: usize,
    /// Weeks simulated.
    pub weeks: u32,
    /// Seed.
    pub seed: u64,
    /// The code path scored.
    pub path: Path,
}

/// Simulates `opts.weeks` of traffic of `opts.issues` issues with injected bursts and scores
/// the default detector settings, on `opts.path`, and the baseline rule on it.
pub fn evaluate(opts: &DetectionOptions) -> Report {
    let sim =
        SimOptions { issues: opts.issues, minutes: opts.weeks * 10_080, seed: opts.seed, ..SimOptions::default() };
    match opts.path {
        Path::Model => simulate(&sim, &tracefold_detector::spike::SpikeConfig::default()),
        Path::Engine => tracefold_detector::replay::evaluate(
            &sim,
            &tracefold_detector::engine::EngineConfig::default(),
            &tracefold_detector::replay::ReplayOptions::default(),
        ),
    }
}

/// The report as a terminal table, headed by what was simulated with `seed` and the path.
pub fn render(r: &Report, seed: u64) -> String {
    use crate::render::{table, Align};
    let row = |n: &str, s: &Score| {
        vec![
            n.to_owned(),
            format!("{:.3}", s.recall_5x),
            format!("{:.3}", s.false_per_issue_week),
            format!("{:.1}", s.median_detect_min),
            s.detections.to_string(),
        ]
    };
    let mut out = format!(
        "{} issues, {} minutes, {} bursts injected ({} of 5x or more, {} of those detectable), seed {seed}\n",
        r.issues, r.minutes, r.bursts.0, r.bursts.1, r.bursts.2
    );
    match &r.pipeline {
        None => out.push_str("path: model (the spike model on each issue's per-minute counts)\n\n"),
        Some(p) => out.push_str(&format!(
            "path: engine ({} partial aggregates over {} partitions, {} episodes behind and {} stalls, \
             deliveries up to {:.0} s late, {} records beyond the allowed lateness, {} evaluations, \
             {} spikes in an issue's first minute)\n\
             minutes from burst start to signal on the detector's clock: median {:.2}, p90 {:.2}\n\n",
            p.records,
            p.partitions,
            p.behind_episodes,
            p.stalls,
            p.max_delivery_delay_s,
            p.late_records,
            p.evaluations,
            p.first_minute_spikes,
            p.median_signal_delay_min,
            p.p90_signal_delay_min,
        )),
    }
    let ours = format!("tracefold ({} path)", r.path.as_str());
    out.push_str(&table(
        &[
            ("detector", Align::Left),
            ("recall 5x+", Align::Right),
            ("false/issue/week", Align::Right),
            ("median min", Align::Right),
            ("signals", Align::Right),
        ],
        &[row(&ours, &r.tracefold), row("baseline (5 min > 10x prev 11)", &r.baseline)],
        40,
    ));
    out
}
