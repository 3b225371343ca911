//! Signals: what the detector found, with what an on-call person needs to start.

use serde::{Deserialize, Serialize};

/// Signal format version.
pub const SIGNAL_FORMAT_VERSION: u8 = 1;

/// Kinds of signal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An issue seen for the first time.
    #[default]
    NewIssue,
    /// A resolved issue seen again.
    Regression,
    /// An issue's rate far above its own recent baseline.
    Spike,
    /// A configured threshold crossed.
    Threshold,
    /// More new issues of one project in one window than are notified one by one (an alert
    /// storm): how many, and the titles of the largest of those not notified (see
    /// [`crate::storm`]).
    NewIssueDigest,
}

impl Kind {
    /// `new_issue`, `regression`, `spike`, `threshold`, `new_issue_digest`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NewIssue => "new_issue",
            Kind::Regression => "regression",
            Kind::Spike => "spike",
            Kind::Threshold => "threshold",
            Kind::NewIssueDigest => "new_issue_digest",
        }
    }
}

/// One signal (JSON on the signals topic, keyed by `project/issue_id`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// Format version.
    pub v: u8,
    /// Deterministic id: the same detection always has the same id (deduplication).
    pub signal_id: String,
    /// What was detected.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Project slug.
    pub project: String,
    /// Issue id.
    pub issue_id: String,
    /// Issue title.
    pub title: String,
    /// Culprit.
    pub culprit: String,
    /// Level.
    pub level: String,
    /// Platform.
    pub platform: String,
    /// Minute the detection is about (start, RFC 3339).
    pub minute: String,
    /// Minutes the counts below cover.
    pub window_minutes: u32,
    /// Events in the window.
    pub count: u64,
    /// Distinct users in the window.
    pub users: u64,
    /// Expected events per minute before (spikes), or the project-wide baseline.
    pub baseline_per_minute: f64,
    /// First seen, RFC 3339.
    pub first_seen: String,
    /// Last seen, RFC 3339.
    pub last_seen: String,
    /// Release of the sample event.
    pub release: String,
    /// Environment of the sample event.
    pub environment: String,
    /// Top in-app frames of the sample stack trace, crash first (`module in function`).
    pub top_frames: Vec<String>,
    /// The sample's request URL.
    pub request_url: String,
    /// The sample's browser (`name version`).
    pub browser: String,
    /// The sample's operating system (`name version`).
    pub os: String,
    /// For `threshold`: the rule's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rule: String,
    /// For `new_issue_digest`: the new issues of the window not notified one by one (`count`
    /// is all the window's new issues).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub folded: u64,
    /// For `new_issue_digest`: titles of the largest new issues not notified one by one
    /// (at most 5, by events in the record that revealed them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub titles: Vec<String>,
    /// The command that shows the issue (for a digest: that lists the window's issues).
    pub command: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a sample event tells about reproducing the error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SampleFacts {
    /// Top in-app frames, crash first.
    pub top_frames: Vec<String>,
    /// Request URL.
    pub request_url: String,
    /// Browser.
    pub browser: String,
    /// Operating system.
    pub os: String,
}

/// Reads the facts out of a sample event (JSON); empty when it cannot.
pub fn sample_facts(sample: &str) -> SampleFacts {
    let Ok(ev) = tracefold_model::parse_event_str(sample) else { return SampleFacts::default() };
    let mut top = Vec::new();
    if let Some(exc) = ev.exception.last() {
        if let Some(st) = &exc.stacktrace {
            let any_in_app = st.frames.iter().any(|f| f.in_app == Some(true));
            for f in st.frames.iter().rev().filter(|f| !any_in_app || f.in_app == Some(true)).take(5) {
                let loc = f.module.as_deref().or(f.filename.as_deref()).unwrap_or("?");
                top.push(format!("{loc} in {}", f.function.as_deref().unwrap_or("?")));
            }
        }
    }
    let nv = |n: Option<&tracefold_model::event::NameVersion<'_>>| {
        n.map(|n| {
            format!("{} {}", n.name.as_deref().unwrap_or(""), n.version.as_deref().unwrap_or("")).trim().to_owned()
        })
        .unwrap_or_default()
    };
    let contexts = ev.contexts.as_ref();
    SampleFacts {
        top_frames: top,
        request_url: ev.request.as_ref().and_then(|r| r.url.as_deref()).unwrap_or("").to_owned(),
        browser: nv(contexts.and_then(|c| c.browser.as_ref())),
        os: nv(contexts.and_then(|c| c.os.as_ref())),
    }
}

/// A deterministic signal id.
pub fn signal_id(kind: Kind, project: &str, issue_id: &str, minute: i64, rule: &str) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for part in [kind.as_str(), project, issue_id, rule] {
        h.update(&(part.len() as u32).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.update(&minute.to_le_bytes());
    format!("{:032x}", h.digest128())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_exactly_the_signal_fields() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/signal.v1.schema.json");
        let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let in_schema: std::collections::BTreeSet<String> =
            schema["properties"].as_object().unwrap().keys().cloned().collect();
        let s = Signal {
            v: 1,
            signal_id: signal_id(Kind::Threshold, "p", "i", 0, "r"),
            kind: Kind::Threshold,
            project: "p".into(),
            issue_id: "i".into(),
            title: String::new(),
            culprit: String::new(),
            level: String::new(),
            platform: String::new(),
            minute: String::new(),
            window_minutes: 1,
            count: 0,
            users: 0,
            baseline_per_minute: 0.0,
            first_seen: String::new(),
            last_seen: String::new(),
            release: String::new(),
            environment: String::new(),
            top_frames: vec![],
            request_url: String::new(),
            browser: String::new(),
            os: String::new(),
            rule: "r".into(),
            folded: 1,
            titles: vec!["t".into()],
            command: String::new(),
        };
        let v = serde_json::to_value(&s).unwrap();
        let in_model: std::collections::BTreeSet<String> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(in_schema, in_model);
        assert_eq!(s.signal_id.len(), 32);
    }
}
