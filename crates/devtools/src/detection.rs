//! Detection quality, measured: `tracefold detection-quality` scores the spike detector on
//! simulated traffic (`tracefold_detector::simulate`) against a baseline rule.

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
}

/// Simulates `opts.weeks` of traffic of `opts.issues` issues with injected bursts and scores
/// the default spike settings and the baseline rule on it.
pub fn evaluate(opts: &DetectionOptions) -> Report {
    simulate(
        &SimOptions { issues: opts.issues, minutes: opts.weeks * 10_080, seed: opts.seed, ..SimOptions::default() },
        &tracefold_detector::spike::SpikeConfig::default(),
    )
}

/// The report as a terminal table, headed by what was simulated with `seed`.
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
        "{} issues, {} minutes, {} bursts injected ({} of 5x or more, {} of those detectable), seed {seed}\n\n",
        r.issues, r.minutes, r.bursts.0, r.bursts.1, r.bursts.2
    );
    out.push_str(&table(
        &[
            ("detector", Align::Left),
            ("recall 5x+", Align::Right),
            ("false/issue/week", Align::Right),
            ("median min", Align::Right),
            ("signals", Align::Right),
        ],
        &[row("tracefold", &r.tracefold), row("baseline (5 min > 10x prev 11)", &r.baseline)],
        40,
    ));
    out
}
