//! Alert storms: more than `max_new_issues` new issues of one project in one window become
//! one `new_issue_digest` notification instead of one notification each.
//!
//! Windows are `window_min` minutes of event time, aligned on the epoch, per project. The
//! first `max_new_issues` `new_issue` signals of a window are notified as usual; the others are
//! *folded*: still produced to the signals topic (the record of every detection), but not
//! notified one by one. When the window closes (`lateness_min` minutes after its end, by the
//! detector's clock, so that a storm followed by silence is reported too), one digest per
//! project and window that folded any goes out: how many new issues the window had, how many
//! were folded, the titles of the largest folded ones (by events in the record that revealed
//! them) and a command that lists them. Its id is derived from the project and the window
//! start, so a restarted detector never sends a second digest for the same window.
//!
//! A new issue dated in a window already closed (late data, a catch-up after an outage)
//! counts in the oldest window still open.

use crate::signal::{signal_id, Kind, Signal, SIGNAL_FORMAT_VERSION};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tracefold_model::time::format_rfc3339;

/// Titles a digest lists.
pub const DIGEST_TITLES: usize = 5;

/// `[detector.storm]`: when new issues are folded into a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StormConfig {
    /// New issues of one project notified one by one per window; the others are folded into
    /// the window's digest. 0: no folding (every new issue is notified).
    pub max_new_issues: u32,
    /// Window length, minutes of event time (at least 1).
    pub window_min: u32,
}

impl Default for StormConfig {
    fn default() -> Self {
        Self { max_new_issues: 20, window_min: 10 }
    }
}

/// One folded new issue.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Folded {
    title: String,
    count: u64,
}

/// One project's window.
#[derive(Debug, Default)]
struct Window {
    /// New issues seen in it.
    new_issues: u64,
    /// Of those, folded (not notified one by one).
    folded: u64,
    /// The largest folded, at most [`DIGEST_TITLES`], largest first (the first seen first
    /// among equals).
    top: Vec<Folded>,
}

/// What to do with a `new_issue` signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Notify it as usual.
    Notify,
    /// Do not notify it: its window's digest counts it.
    Fold,
}

/// The storm state: per (window start, project), the new issues seen.
#[derive(Debug)]
pub struct Storm {
    cfg: StormConfig,
    lateness_secs: i64,
    windows: BTreeMap<(i64, String), Window>,
    /// Windows starting before this are closed (their digests went out).
    open_from: i64,
    /// Which replica counts: its aggregates partitions (see [`Storm::set_owner`]).
    owner: String,
}

impl Storm {
    /// Storm folding with `cfg`; windows close `lateness_min` minutes after their end.
    pub fn new(cfg: StormConfig, lateness_min: i64) -> Self {
        Self {
            cfg,
            lateness_secs: 60 * lateness_min.max(0),
            windows: BTreeMap::new(),
            open_from: i64::MIN,
            owner: String::new(),
        }
    }

    /// The aggregates partitions this replica owns: replicas count the new issues of their own
    /// partitions, and each sends its own digest (its id derives from them too, so that two
    /// replicas' digests of one window are not taken for one detection).
    pub fn set_owner(&mut self, partitions: &[i32]) {
        let mut p = partitions.to_vec();
        p.sort_unstable();
        self.owner = p.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    }

    fn window_secs(&self) -> i64 {
        60 * i64::from(self.cfg.window_min.max(1))
    }

    /// Takes a `new_issue` signal about `minute` (unix seconds, event time): whether to notify
    /// it or fold it into its window's digest.
    pub fn admit(&mut self, s: &Signal, minute: i64) -> Admit {
        if self.cfg.max_new_issues == 0 {
            return Admit::Notify;
        }
        let w = self.window_secs();
        let start = (minute.div_euclid(w) * w).max(self.open_from);
        let win = self.windows.entry((start, s.project.clone())).or_default();
        win.new_issues += 1;
        if win.new_issues <= u64::from(self.cfg.max_new_issues) {
            return Admit::Notify;
        }
        win.folded += 1;
        let at = win.top.iter().position(|f| f.count < s.count).unwrap_or(win.top.len());
        if at < DIGEST_TITLES {
            win.top.insert(at, Folded { title: s.title.clone(), count: s.count });
            win.top.truncate(DIGEST_TITLES);
        }
        Admit::Fold
    }

    /// Closes the windows that ended `lateness_min` minutes before `now_ms` (the detector's
    /// clock); returns one digest per closed window that folded new issues.
    pub fn close(&mut self, now_ms: i64) -> Vec<Signal> {
        let w = self.window_secs();
        let now = now_ms.div_euclid(1000);
        // The first window whose end is not yet `lateness` in the past.
        let open_from = (now - self.lateness_secs - w).div_euclid(w) * w + w;
        if open_from <= self.open_from {
            return Vec::new();
        }
        self.open_from = open_from;
        let still_open = self.windows.split_off(&(open_from, String::new()));
        let closed = std::mem::replace(&mut self.windows, still_open);
        closed
            .into_iter()
            .filter(|(_, win)| win.folded > 0)
            .map(|((start, project), win)| self.digest(&project, start, &win, now))
            .collect()
    }

    fn digest(&self, project: &str, start: i64, win: &Window, now: i64) -> Signal {
        let minutes = self.cfg.window_min.max(1);
        let rfc = |secs: i64| format_rfc3339(secs * 1000).replace(".000Z", "Z");
        // Far enough back to cover the window when the digest is sent.
        let since = (now - start).div_euclid(60) + 1;
        Signal {
            v: SIGNAL_FORMAT_VERSION,
            signal_id: signal_id(Kind::NewIssueDigest, project, "", start, &self.owner),
            kind: Kind::NewIssueDigest,
            project: project.to_owned(),
            issue_id: String::new(),
            title: format!("{} new issues in {minutes} min", win.new_issues),
            culprit: String::new(),
            level: String::new(),
            platform: String::new(),
            minute: rfc(start),
            window_minutes: minutes,
            count: win.new_issues,
            users: 0,
            baseline_per_minute: 0.0,
            first_seen: rfc(start),
            last_seen: rfc(start + self.window_secs()),
            release: String::new(),
            environment: String::new(),
            top_frames: Vec::new(),
            request_url: String::new(),
            browser: String::new(),
            os: String::new(),
            rule: String::new(),
            folded: win.folded,
            titles: win.top.iter().map(|f| f.title.clone()).collect(),
            command: format!("tracefold top --project {project} --since {since}m"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_issue(project: &str, issue: &str, count: u64) -> Signal {
        Signal {
            v: 1,
            signal_id: signal_id(Kind::NewIssue, project, issue, 0, ""),
            kind: Kind::NewIssue,
            project: project.into(),
            issue_id: issue.into(),
            title: format!("Error {issue} 日本語"),
            level: "error".into(),
            window_minutes: 1,
            count,
            ..Signal::default()
        }
    }

    /// 1_800_000_000 is a multiple of 600: a window start.
    const T0: i64 = 1_800_000_000;

    #[test]
    fn beyond_n_new_issues_a_window_folds_into_one_deterministic_digest() {
        let cfg = StormConfig { max_new_issues: 3, window_min: 10 };
        let run = || {
            let mut storm = Storm::new(cfg, 2);
            let mut notified = Vec::new();
            // 3 + 7 new issues of web in the window's first minutes; the counts make the top 5.
            for i in 0..10u64 {
                let s = new_issue("web", &format!("w{i}"), i * 10 % 70 + 1);
                if storm.admit(&s, T0 + 60 * (i as i64 % 5)) == Admit::Notify {
                    notified.push(s.issue_id);
                }
            }
            // Another project in the same window: under its own limit.
            for i in 0..3 {
                assert_eq!(storm.admit(&new_issue("api", &format!("a{i}"), 1), T0 + 30), Admit::Notify);
            }
            // Not closed before its end plus the lateness.
            assert!(storm.close((T0 + 600 + 119) * 1000).is_empty());
            let digests = storm.close((T0 + 600 + 120) * 1000);
            (notified, digests)
        };
        let (notified, digests) = run();
        assert_eq!(notified, ["w0", "w1", "w2"], "the first N are notified as usual");
        assert_eq!(digests.len(), 1, "one digest, for web only: {digests:#?}");
        let d = &digests[0];
        assert_eq!(
            (d.kind, d.project.as_str(), d.count, d.folded, d.window_minutes),
            (Kind::NewIssueDigest, "web", 10, 7, 10)
        );
        // Folded w3..w9 with counts 31, 41, 51, 61, 1, 11, 21: the five largest, largest first.
        assert_eq!(
            d.titles,
            ["Error w6 日本語", "Error w5 日本語", "Error w4 日本語", "Error w3 日本語", "Error w9 日本語"]
        );
        assert_eq!(d.minute, "2027-01-15T08:00:00Z");
        assert_eq!(d.command, "tracefold top --project web --since 13m");
        assert_eq!(d.signal_id, signal_id(Kind::NewIssueDigest, "web", "", T0, ""));
        let (_, again) = run();
        assert_eq!(again[0].signal_id, d.signal_id, "the same window, the same id");
    }

    #[test]
    fn a_new_window_starts_fresh_and_late_issues_count_in_the_oldest_open_one() {
        let mut storm = Storm::new(StormConfig { max_new_issues: 2, window_min: 1 }, 0);
        let admit = |storm: &mut Storm, i: u32, minute: i64| storm.admit(&new_issue("web", &i.to_string(), 1), minute);
        let got: Vec<Admit> = (0..4).map(|i| admit(&mut storm, i, T0)).collect();
        assert_eq!(got, [Admit::Notify, Admit::Notify, Admit::Fold, Admit::Fold]);
        // The next minute starts over, and closing the first does not close it.
        assert_eq!(admit(&mut storm, 10, T0 + 60), Admit::Notify);
        let d = storm.close((T0 + 60) * 1000);
        assert_eq!(d.iter().map(|d| (d.count, d.folded)).collect::<Vec<_>>(), [(4, 2)]);
        assert!(storm.close((T0 + 61) * 1000).is_empty(), "a window's digest goes out once");
        // Late: dated in the closed window, counted in the open one (which had 1).
        assert_eq!(admit(&mut storm, 11, T0), Admit::Notify);
        assert_eq!(admit(&mut storm, 12, T0 + 30), Admit::Fold);
        let d = storm.close((T0 + 120) * 1000);
        assert_eq!(
            d.iter().map(|d| (d.minute.as_str(), d.count, d.folded)).collect::<Vec<_>>(),
            [("2027-01-15T08:01:00Z", 3, 1)]
        );
        // A window without folding sends no digest.
        assert_eq!(admit(&mut storm, 20, T0 + 120), Admit::Notify);
        assert!(storm.close((T0 + 180) * 1000).is_empty());
    }

    #[test]
    fn zero_disables_folding() {
        let mut storm = Storm::new(StormConfig { max_new_issues: 0, window_min: 10 }, 2);
        for i in 0..100 {
            assert_eq!(storm.admit(&new_issue("web", &i.to_string(), 1), T0), Admit::Notify);
        }
        assert!(storm.close((T0 + 3600) * 1000).is_empty());
    }
}
