//! Spike detection on one issue's per-minute counts.
//!
//! The baseline is an exponentially weighted mean and variance of the issue's own per-minute
//! counts (half-life one hour by default: it follows daily seasonality, not a burst), updated
//! with values clipped near the baseline so that a spike does not drag the baseline up while
//! it lasts. A minute, or the sum of the last two minutes, is a spike when it is both far above
//! the baseline in ratio and improbable under it: the count exceeds `ratio` times the expected
//! count and the baseline's upper bound (mean + `sigmas` standard deviations, with a Poisson
//! floor so that rare issues are not flagged for a handful of events). A spike is signalled
//! once, and again only after the rate fell back below twice the baseline.

use serde::{Deserialize, Serialize};

/// Detection parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpikeConfig {
    /// Half-life of the baseline, minutes.
    pub half_life_min: f64,
    /// A spike is at least this many times the expected count...
    pub ratio: f64,
    /// ...and this many standard deviations above it.
    pub sigmas: f64,
    /// And at least this many events in the window (minute or two minutes).
    pub min_events: f64,
    /// Minutes of history before an issue's own baseline is trusted (before that, a
    /// project-wide baseline or none).
    pub warmup_min: u32,
}

impl Default for SpikeConfig {
    fn default() -> Self {
        Self { half_life_min: 60.0, ratio: 3.0, sigmas: 5.0, min_events: 10.0, warmup_min: 30 }
    }
}

/// One issue's detector state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpikeState {
    mean: f64,
    var: f64,
    minutes: u32,
    prev: f64,
    in_spike: bool,
}

/// What one minute says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// A new spike starts this minute.
    pub spike: bool,
    /// The baseline (expected events per minute) the minute was judged against.
    pub baseline: f64,
    /// Events in the judged window (this minute, or the last two when that says more).
    pub window: f64,
}

impl SpikeState {
    /// The baseline: expected events per minute.
    pub fn baseline(&self) -> f64 {
        self.mean
    }

    /// Whether the issue has enough history for its own baseline.
    pub fn warm(&self, cfg: &SpikeConfig) -> bool {
        self.minutes >= cfg.warmup_min
    }

    /// The spike test against an outside baseline (per minute): for issues without history
    /// of their own.
    pub fn far_above(count: f64, baseline: f64, cfg: &SpikeConfig) -> bool {
        count >= cfg.min_events
            && count >= cfg.ratio * (baseline + 0.5)
            && count >= baseline + cfg.sigmas * (2.0 * baseline + 1.0).sqrt()
    }

    /// The model of the sum of two issues' per-minute counts, from the models of each after
    /// the same minute: the means and variances add (the two are taken as independent: one bug
    /// seen as two issues, one before and one after its source map, rarely both at once), the
    /// history is the longer one's, and a spike goes on while either's does. The mean is exact
    /// for minutes the clipping did not touch (the weighted mean is linear); a model without
    /// observations leaves the other as it is.
    #[must_use]
    pub fn combined(&self, other: &Self) -> Self {
        if other.minutes == 0 {
            return self.clone();
        }
        if self.minutes == 0 {
            return other.clone();
        }
        Self {
            mean: self.mean + other.mean,
            var: self.var + other.var,
            minutes: self.minutes.max(other.minutes),
            prev: self.prev + other.prev,
            in_spike: self.in_spike || other.in_spike,
        }
    }

    /// Feeds the count of the next minute and says whether a spike starts.
    pub fn observe(&mut self, count: f64, cfg: &SpikeConfig) -> Verdict {
        let alpha = 1.0 - 0.5f64.powf(1.0 / cfg.half_life_min);
        let warm = self.minutes >= cfg.warmup_min;
        let judge = |window: f64, minutes: f64| -> bool {
            let expected = self.mean * minutes;
            // Poisson floor on the variance: counts of rare issues are noisy.
            let sd = (self.var * minutes + expected + 1.0).sqrt();
            window >= cfg.min_events && window >= cfg.ratio * (expected + 0.5) && window >= expected + cfg.sigmas * sd
        };
        let one = judge(count, 1.0);
        let two = judge(count + self.prev, 2.0);
        let window = if two && !one { count + self.prev } else { count };
        let is_high = warm && (one || two);
        let spike = is_high && !self.in_spike;
        if is_high {
            self.in_spike = true;
        } else if self.in_spike && count < 2.0 * (self.mean + 0.5) {
            self.in_spike = false;
        }
        // Update the baseline with the count clipped near it (a spike does not become the
        // new normal while it lasts; a lasting level shift still moves it, slowly).
        if self.minutes == 0 {
            // Start from the first observation, not from zero.
            self.mean = count;
            self.minutes = 1;
            self.prev = count;
            return Verdict { spike, baseline: self.mean, window };
        }
        let cap = self.mean + 3.0 * (self.var + self.mean + 1.0).sqrt();
        let x = if warm { count.min(cap) } else { count };
        let diff = x - self.mean;
        let incr = alpha * diff;
        self.mean += incr;
        self.var = (1.0 - alpha) * (self.var + diff * incr);
        self.minutes = self.minutes.saturating_add(1);
        self.prev = count;
        Verdict { spike, baseline: self.mean, window }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_noise_is_quiet_and_a_burst_is_a_spike_once() {
        let cfg = SpikeConfig::default();
        let mut s = SpikeState::default();
        let mut spikes = 0;
        for m in 0..600 {
            let c = 20.0 + ((m * 7919) % 11) as f64 - 5.0;
            spikes += u32::from(s.observe(c, &cfg).spike);
        }
        assert_eq!(spikes, 0);
        let v: Vec<bool> = [200.0, 220.0, 210.0].iter().map(|c| s.observe(*c, &cfg).spike).collect();
        assert_eq!(v, [true, false, false], "one signal per spike");
        for _ in 0..30 {
            assert!(!s.observe(20.0, &cfg).spike);
        }
        assert!(s.observe(300.0, &cfg).spike, "a later spike signals again");
        assert!(s.baseline() < 30.0, "the spikes did not become the baseline: {}", s.baseline());
    }

    #[test]
    fn rare_issues_need_more_than_a_few_events() {
        let cfg = SpikeConfig::default();
        let mut s = SpikeState::default();
        for m in 0..300 {
            s.observe(if m % 10 == 0 { 1.0 } else { 0.0 }, &cfg);
        }
        assert!(!s.observe(4.0, &cfg).spike, "four events are not a spike");
        assert!(s.observe(40.0, &cfg).spike);
    }
}
