//! The detector's state machine over partial aggregates, on event time: `new_issue` and
//! `regression` as records arrive, `spike` and `threshold` as minutes close (a minute closes
//! when records two minutes later have been seen, so late partial aggregates still count).

use crate::signal::{sample_facts, signal_id, Kind, Signal, SIGNAL_FORMAT_VERSION};
use crate::spike::{SpikeConfig, SpikeState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// Minutes a minute stays open for late records.
    pub lateness_min: i64,
    /// A resolved issue regresses only when seen in a newer release than the one it was
    /// resolved in (false: seen again at all).
    pub regression_needs_newer_release: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            spike: SpikeConfig::default(),
            thresholds: Vec::new(),
            lateness_min: 2,
            regression_needs_newer_release: false,
        }
    }
}

#[derive(Debug, Default)]
struct Minute {
    count: u64,
    users: HashSet<u64>,
    /// Per threshold rule: events and users that match its filters.
    rules: Vec<(u64, HashSet<u64>)>,
}

#[derive(Debug, Default)]
struct Issue {
    title: String,
    culprit: String,
    level: String,
    platform: String,
    first_seen_ms: i64,
    last_seen_ms: i64,
    release: String,
    environment: String,
    sample: String,
    minutes: BTreeMap<i64, Minute>,
    spike: SpikeState,
    /// Last minute fed to the spike detector.
    closed: Option<i64>,
    /// Resolved at (ms) and in which release.
    resolved: Option<(i64, String)>,
    /// Per threshold rule: the last minute it fired for.
    fired: HashMap<usize, i64>,
    /// A spike was signalled against the project's baseline while this issue had no history.
    cold_spiked: bool,
}

/// The detector state.
#[derive(Debug, Default)]
pub struct Engine {
    cfg: EngineConfig,
    issues: HashMap<(String, String), Issue>,
    known: HashSet<(String, String)>,
    /// Latest minute seen in any record (event time).
    watermark: Option<i64>,
}

impl Engine {
    /// A detector with `cfg`.
    pub fn new(cfg: EngineConfig) -> Self {
        Self { cfg, ..Self::default() }
    }

    /// Marks an issue as known (seen before this detector started): no `new_issue` for it.
    pub fn known(&mut self, project: &str, issue_id: &str) {
        self.known.insert((project.to_owned(), issue_id.to_owned()));
    }

    /// Marks an issue resolved at `at_ms` (in `release`): a later event is a regression.
    pub fn resolved(&mut self, project: &str, issue_id: &str, at_ms: i64, release: &str) {
        let key = (project.to_owned(), issue_id.to_owned());
        self.issues.entry(key).or_default().resolved = Some((at_ms, release.to_owned()));
    }

    /// Forgets a resolution (the issue was reopened or ignored): a later event is no regression.
    pub fn reopened(&mut self, project: &str, issue_id: &str) {
        if let Some(st) = self.issues.get_mut(&(project.to_owned(), issue_id.to_owned())) {
            st.resolved = None;
        }
    }

    /// Issues held as resolved and not seen since.
    pub fn resolved_count(&self) -> usize {
        self.issues.values().filter(|st| st.resolved.is_some()).count()
    }

    /// Feeds past per-minute counts (oldest first) so that the spike baseline survives restarts.
    pub fn history(&mut self, project: &str, issue_id: &str, minute: i64, count: u64) {
        let cfg = self.cfg.spike;
        let st = self.issues.entry((project.to_owned(), issue_id.to_owned())).or_default();
        if let Some(c) = st.closed {
            for _ in (c + 60..minute).step_by(60) {
                st.spike.observe(0.0, &cfg);
            }
        }
        st.spike.observe(count as f64, &cfg);
        st.closed = Some(minute);
    }

    /// Takes one partial aggregate; returns `new_issue` and `regression` signals.
    pub fn ingest(&mut self, r: &AggregateRecord) -> Vec<Signal> {
        let key = (r.project.clone(), r.issue_id.clone());
        let mut out = Vec::new();
        let is_new = self.known.insert(key.clone());
        let rules = self.cfg.thresholds.clone();
        let st = self.issues.entry(key).or_default();
        if st.first_seen_ms == 0 || r.first_seen_ms < st.first_seen_ms {
            st.first_seen_ms = r.first_seen_ms;
        }
        if r.last_seen_ms >= st.last_seen_ms {
            st.last_seen_ms = r.last_seen_ms;
            st.release.clone_from(&r.release);
            st.environment.clone_from(&r.environment);
            st.level.clone_from(&r.level);
        }
        if st.title.is_empty() {
            st.title.clone_from(&r.title);
            st.culprit.clone_from(&r.culprit);
            st.platform.clone_from(&r.platform);
        }
        if !r.sample.is_empty() {
            st.sample.clone_from(&r.sample);
        }
        let m = st.minutes.entry(r.minute).or_default();
        m.count += r.count;
        m.users.extend(r.users.hashes.iter().copied());
        if m.rules.len() < rules.len() {
            m.rules.resize_with(rules.len(), Default::default);
        }
        for (i, rule) in rules.iter().enumerate() {
            let matches = rule.project.as_deref().is_none_or(|p| p == r.project)
                && rule.environment.as_deref().is_none_or(|e| e == r.environment)
                && rule.level.as_deref().is_none_or(|l| l == r.level);
            if matches {
                m.rules[i].0 += r.count;
                m.rules[i].1.extend(r.users.hashes.iter().copied());
            }
        }
        // new_issue and regression describe the record that revealed them.
        let of_record = |kind: Kind, st: &Issue| {
            signal(kind, &r.project, &r.issue_id, st, r.minute, 1, r.count, r.users.hashes.len() as u64, 0.0, "")
        };
        if is_new {
            out.push(of_record(Kind::NewIssue, st));
        }
        let newer_only = self.cfg.regression_needs_newer_release;
        if let Some((at, fixed_in)) = &st.resolved {
            if r.last_seen_ms > *at && (!newer_only || fixed_in.is_empty() || newer_release(&r.release, fixed_in)) {
                out.push(of_record(Kind::Regression, st));
                st.resolved = None;
            }
        }
        self.watermark = Some(self.watermark.map_or(r.minute, |w| w.max(r.minute)));
        out
    }

    /// The oldest minute (unix seconds) that evaluations still to come need, as of the last
    /// [`Self::advance`]: a record of an earlier minute, ingested before that advance, has
    /// caused every signal it will cause (its minute was closed and evaluated, and no window of
    /// a later minute reaches back to it), so a consumer may commit past it. `None` before the
    /// first record.
    pub fn needed_from(&self) -> Option<i64> {
        let w = self.watermark?;
        Some(w - 60 * self.cfg.lateness_min - self.keep_secs())
    }

    /// How far back from the last closed minute the threshold windows reach, seconds.
    fn keep_secs(&self) -> i64 {
        60 * i64::from(self.cfg.thresholds.iter().map(|r| r.minutes).max().unwrap_or(1).max(2))
    }

    /// Closes every minute older than the watermark minus the lateness; returns `spike` and
    /// `threshold` signals.
    pub fn advance(&mut self) -> Vec<Signal> {
        let Some(w) = self.watermark else { return Vec::new() };
        let until = w - 60 * self.cfg.lateness_min;
        let cfg = self.cfg.clone();
        let keep = self.keep_secs();
        let mut out = Vec::new();
        // Issues without history of their own are judged against their project's baseline:
        // the mean baseline of its issues that have one.
        let mut projects: HashMap<String, (f64, u32)> = HashMap::new();
        for ((project, _), st) in &self.issues {
            if st.spike.warm(&cfg.spike) {
                let e = projects.entry(project.clone()).or_default();
                e.0 += st.spike.baseline();
                e.1 += 1;
            }
        }
        for ((project, issue_id), st) in &mut self.issues {
            let project_baseline = projects.get(project).map(|(sum, n)| sum / f64::from(*n));
            let start = match st.closed {
                Some(c) => c + 60,
                None => match st.minutes.keys().next() {
                    Some(first) => *first,
                    None => continue,
                },
            };
            let mut m = start;
            while m <= until {
                let count = st.minutes.get(&m).map_or(0, |x| x.count);
                let before = st.spike.baseline();
                let cold = !st.spike.warm(&cfg.spike);
                let v = st.spike.observe(count as f64, &cfg.spike);
                let cold_spike = cold
                    && !st.cold_spiked
                    && project_baseline.is_some_and(|pb| SpikeState::far_above(count as f64, pb, &cfg.spike));
                st.cold_spiked |= cold_spike;
                // The baseline the spike was judged against: the project's or the issue's own.
                let against = if cold_spike { project_baseline } else { v.spike.then_some(before) };
                if let Some(baseline) = against {
                    let users = st.minutes.get(&m).map_or(0, |x| x.users.len() as u64);
                    out.push(signal(Kind::Spike, project, issue_id, st, m, 1, count, users, baseline, ""));
                }
                for (i, rule) in cfg.thresholds.iter().enumerate() {
                    let from = m - 60 * (i64::from(rule.minutes) - 1);
                    let (mut events, mut users) = (0u64, HashSet::new());
                    for (_, x) in st.minutes.range(from..=m) {
                        if let Some((c, u)) = x.rules.get(i) {
                            events += c;
                            users.extend(u.iter().copied());
                        }
                    }
                    let hit =
                        rule.events.is_some_and(|n| events > n) || rule.users.is_some_and(|n| users.len() as u64 > n);
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
                            users.len() as u64,
                            0.0,
                            &rule.name,
                        ));
                    }
                }
                st.closed = Some(m);
                m += 60;
            }
            // Forget minutes no window needs any more.
            let horizon = st.closed.unwrap_or(until) - keep;
            st.minutes = st.minutes.split_off(&horizon);
        }
        out.sort_by(|a, b| (&a.minute, &a.project, &a.issue_id).cmp(&(&b.minute, &b.project, &b.issue_id)));
        out
    }
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
    let facts = sample_facts(&st.sample);
    Signal {
        v: SIGNAL_FORMAT_VERSION,
        signal_id: signal_id(kind, project, issue_id, minute, rule),
        kind,
        project: project.to_owned(),
        issue_id: issue_id.to_owned(),
        title: st.title.clone(),
        culprit: st.culprit.clone(),
        level: st.level.clone(),
        platform: st.platform.clone(),
        minute: format_rfc3339(minute * 1000).replace(".000Z", "Z"),
        window_minutes: window,
        count,
        users,
        baseline_per_minute: (baseline * 100.0).round() / 100.0,
        first_seen: format_rfc3339(st.first_seen_ms).replace(".000Z", "Z"),
        last_seen: format_rfc3339(st.last_seen_ms).replace(".000Z", "Z"),
        release: st.release.clone(),
        environment: st.environment.clone(),
        top_frames: facts.top_frames,
        request_url: facts.request_url,
        browser: facts.browser,
        os: facts.os,
        rule: rule.to_owned(),
        command: format!("tracefold issue {issue_id} --project {project}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracefold_model::{BatchRef, UserSet};

    fn rec(issue: &str, minute: i64, count: u64, user_base: u64) -> AggregateRecord {
        let mut users = UserSet::default();
        for u in 0..count.min(50) {
            users.insert(user_base + u, 4096);
        }
        AggregateRecord {
            v: 1,
            batch: BatchRef { epoch: String::new(), topic: String::new(), partition: 0, first_offset: 0, last_offset: 0, index: 0, count: 1 },
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
        }
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
            for s in e.ingest(&rec("a", t0 + m * 60, 10, m as u64 * 1000)) {
                kinds.push((s.kind, m));
            }
            for s in e.ingest(&rec("old", t0 + m * 60, 1, 0)) {
                kinds.push((s.kind, m));
            }
            kinds.extend(e.advance().into_iter().map(|s| (s.kind, m)));
        }
        assert_eq!(kinds.iter().filter(|(k, _)| *k == Kind::NewIssue).count(), 1, "one new issue: {kinds:?}");
        assert!(kinds.iter().all(|(k, _)| *k != Kind::Spike), "steady traffic: {kinds:?}");
        // Ten new users a minute: 50 in five minutes, not more than 80.
        assert!(kinds.iter().all(|(k, _)| *k != Kind::Threshold));
        // A burst: 500 events from 500 users in one minute.
        let burst = e.ingest(&rec("a", t0 + 60 * 60, 500, 900_000));
        assert!(burst.is_empty());
        e.ingest(&rec("a", t0 + 61 * 60, 10, 1));
        e.ingest(&rec("a", t0 + 62 * 60, 10, 2));
        let closed = e.advance();
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
        let r1 = e.ingest(&rec("old", t0 + 63 * 60, 1, 0));
        let r2 = e.ingest(&rec("old", t0 + 64 * 60, 1, 0));
        assert_eq!(r1.iter().map(|s| s.kind).collect::<Vec<_>>(), [Kind::Regression]);
        assert!(r2.is_empty());
        // A new issue bursting before it has history of its own: judged against the project.
        let burst_new = e.ingest(&rec("fresh", t0 + 65 * 60, 300, 5000));
        assert_eq!(burst_new.iter().map(|s| s.kind).collect::<Vec<_>>(), [Kind::NewIssue]);
        e.ingest(&rec("a", t0 + 68 * 60, 10, 3));
        let cold = e.advance();
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
        assert!(e.ingest(&rec("old", t0 + 66 * 60, 1, 0)).is_empty());
        // With "newer release only", the release it was fixed in does not regress.
        let mut strict = Engine::new(EngineConfig { regression_needs_newer_release: true, ..EngineConfig::default() });
        strict.known("web", "x");
        strict.resolved("web", "x", 0, "1.0");
        assert!(strict.ingest(&rec("x", t0, 1, 0)).is_empty(), "same release 1.0");
        let mut newer = rec("x", t0 + 60, 1, 0);
        newer.release = "1.1".into();
        assert_eq!(strict.ingest(&newer).iter().map(|s| s.kind).collect::<Vec<_>>(), [Kind::Regression]);
        assert!(newer_release("web@1.10.0", "web@1.9.2") && !newer_release("1.2", "1.10"));
        // Same detection, same id.
        assert_eq!(spike.signal_id, crate::signal::signal_id(Kind::Spike, "web", "a", t0 + 3600, ""));
    }
}
