//! Notifiers: a generic webhook (JSON, HMAC-SHA256 signature), Slack and Discord incoming
//! webhooks, and the Telegram Bot API. Each channel has its own queue and task: retries with
//! backoff, a cooldown per (issue, signal type), and a failing or slow channel never blocks
//! detection or the other channels (a full queue drops and counts).

use crate::signal::{Kind, Signal};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Signals sent, by `channel` kind and `outcome` (`sent`, `failed`, `dropped`, `cooled`).
pub const NOTIFICATIONS_TOTAL: &str = "tracefold_detector_notifications_total";

/// A channel and where it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    /// POST the signal JSON; `X-Tracefold-Signature: sha256=<hex HMAC of the body>` when a
    /// secret is set.
    Webhook {
        /// URL.
        url: String,
        /// HMAC key.
        #[serde(default)]
        secret: String,
    },
    /// A Slack incoming webhook.
    Slack {
        /// Webhook URL.
        url: String,
    },
    /// A Discord webhook.
    Discord {
        /// Webhook URL.
        url: String,
    },
    /// The Telegram Bot API `sendMessage`.
    Telegram {
        /// API base, `https://api.telegram.org` unless testing.
        #[serde(default = "telegram_api")]
        api: String,
        /// Bot token.
        token: String,
        /// Chat id.
        chat_id: String,
    },
}

fn telegram_api() -> String {
    "https://api.telegram.org".into()
}

impl Target {
    fn label(&self) -> &'static str {
        match self {
            Target::Webhook { .. } => "webhook",
            Target::Slack { .. } => "slack",
            Target::Discord { .. } => "discord",
            Target::Telegram { .. } => "telegram",
        }
    }
}

/// `[[detector.channels]]`: a target and which signals it gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    /// Name, for logs.
    pub name: String,
    /// Where it goes.
    pub target: Target,
    /// Signal types it gets (empty: all).
    #[serde(default)]
    pub types: Vec<Kind>,
    /// Projects it gets (empty: all).
    #[serde(default)]
    pub projects: Vec<String>,
    /// Threshold rules it gets (empty: all).
    #[serde(default)]
    pub rules: Vec<String>,
    /// Minimum minutes between two notifications of one type for one issue.
    #[serde(default = "default_cooldown")]
    pub cooldown_min: u64,
}

fn default_cooldown() -> u64 {
    30
}

impl Channel {
    /// Whether this channel wants `s`.
    pub fn wants(&self, s: &Signal) -> bool {
        (self.types.is_empty() || self.types.contains(&s.kind))
            && (self.projects.is_empty() || self.projects.contains(&s.project))
            && (self.rules.is_empty() || s.kind != Kind::Threshold || self.rules.contains(&s.rule))
    }
}

fn headline(s: &Signal) -> String {
    match s.kind {
        Kind::NewIssue => format!("New issue in {}: {}", s.project, s.title),
        Kind::Regression => format!("Regression in {}: {}", s.project, s.title),
        Kind::Spike => format!(
            "Spike in {}: {} ({} events in {} min, baseline {}/min)",
            s.project, s.title, s.count, s.window_minutes, s.baseline_per_minute
        ),
        Kind::Threshold => format!(
            "Threshold {} in {}: {} ({} events, {} users in {} min)",
            s.rule, s.project, s.title, s.count, s.users, s.window_minutes
        ),
    }
}

fn details(s: &Signal) -> Vec<String> {
    let mut lines = vec![format!("{} · {} · {}", s.culprit, s.release, s.environment)];
    if !s.top_frames.is_empty() {
        lines.push(format!("frames: {}", s.top_frames.join(" ← ")));
    }
    if !s.request_url.is_empty() {
        lines.push(format!("request: {}", s.request_url));
    }
    if !s.browser.is_empty() || !s.os.is_empty() {
        lines.push(format!("client: {} / {}", s.browser, s.os));
    }
    lines.push(format!("first seen {} · last seen {}", s.first_seen, s.last_seen));
    lines.push(s.command.clone());
    lines
}

/// The HTTP request for `s` on `target`: (url, JSON body, extra headers).
pub fn request(target: &Target, s: &Signal) -> (String, Value, Vec<(String, String)>) {
    match target {
        Target::Webhook { url, secret } => {
            let body = serde_json::to_value(s).expect("signals serialize");
            let mut headers = vec![("x-tracefold-signal".to_owned(), s.kind.as_str().to_owned())];
            if !secret.is_empty() {
                headers
                    .push(("x-tracefold-signature".to_owned(), format!("sha256={}", sign(secret, &body.to_string()))));
            }
            (url.clone(), body, headers)
        }
        Target::Slack { url } => {
            let text = format!("*{}*\n{}", headline(s), details(s).join("\n"));
            (
                url.clone(),
                json!({"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}),
                Vec::new(),
            )
        }
        Target::Discord { url } => (
            url.clone(),
            json!({"content": headline(s), "embeds": [{"title": s.title, "description": details(s).join("\n"),
                "color": match s.kind { Kind::NewIssue => 3_447_003, Kind::Regression => 15_105_570, Kind::Spike => 15_158_332, Kind::Threshold => 10_181_046 }}]}),
            Vec::new(),
        ),
        Target::Telegram { api, token, chat_id } => (
            format!("{}/bot{}/sendMessage", api.trim_end_matches('/'), token),
            json!({"chat_id": chat_id, "text": format!("{}\n{}", headline(s), details(s).join("\n")), "disable_web_page_preview": true}),
            Vec::new(),
        ),
    }
}

/// Hex HMAC-SHA256 of `body` with `secret`.
pub fn sign(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Fans signals out to the channels, each on its own task.
#[derive(Debug)]
pub struct Notifier {
    queues: Vec<(Channel, mpsc::Sender<Signal>)>,
    cooldowns: HashMap<(usize, String, String, Kind), Instant>,
}

impl Notifier {
    /// Starts one task per channel (inside a tokio runtime).
    pub fn start(channels: Vec<Channel>) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("http client");
        let queues = channels
            .into_iter()
            .map(|c| {
                let (tx, mut rx) = mpsc::channel::<Signal>(1000);
                let (target, name, http) = (c.target.clone(), c.name.clone(), http.clone());
                tokio::spawn(async move {
                    while let Some(s) = rx.recv().await {
                        deliver(&http, &name, &target, &s).await;
                    }
                });
                (c, tx)
            })
            .collect();
        Self { queues, cooldowns: HashMap::new() }
    }

    /// Hands `s` to every channel that wants it and is not cooling down for its issue and
    /// type. Never waits: a full queue drops the notification (counted).
    pub fn notify(&mut self, s: &Signal) {
        let now = Instant::now();
        for (i, (c, tx)) in self.queues.iter().enumerate() {
            if !c.wants(s) {
                continue;
            }
            let key = (i, s.project.clone(), s.issue_id.clone(), s.kind);
            if self
                .cooldowns
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60 * c.cooldown_min))
            {
                metrics::counter!(NOTIFICATIONS_TOTAL, "channel" => c.target.label(), "outcome" => "cooled")
                    .increment(1);
                continue;
            }
            self.cooldowns.insert(key, now);
            if tx.try_send(s.clone()).is_err() {
                metrics::counter!(NOTIFICATIONS_TOTAL, "channel" => c.target.label(), "outcome" => "dropped")
                    .increment(1);
                tracing::warn!(channel = %c.name, "notification queue full; dropped");
            }
        }
    }
}

async fn deliver(http: &reqwest::Client, name: &str, target: &Target, s: &Signal) {
    let (url, body, headers) = request(target, s);
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=5 {
        let mut req = http.post(&url).json(&body);
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => {
                metrics::counter!(NOTIFICATIONS_TOTAL, "channel" => target.label(), "outcome" => "sent").increment(1);
                return;
            }
            Ok(r) => tracing::warn!(channel = name, status = %r.status(), attempt, "notification refused"),
            Err(e) => tracing::warn!(channel = name, error = %e, attempt, "notification failed"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
    metrics::counter!(NOTIFICATIONS_TOTAL, "channel" => target.label(), "outcome" => "failed").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig() -> Signal {
        Signal {
            v: 1,
            signal_id: "id".into(),
            kind: Kind::Spike,
            project: "web".into(),
            issue_id: "abc".into(),
            title: "TypeError: x".into(),
            culprit: "app.js in f".into(),
            level: "error".into(),
            platform: "javascript".into(),
            minute: "2026-11-26T05:00:00Z".into(),
            window_minutes: 1,
            count: 500,
            users: 40,
            baseline_per_minute: 10.0,
            first_seen: "2026-11-25T00:00:00Z".into(),
            last_seen: "2026-11-26T05:00:59Z".into(),
            release: "web@1.2".into(),
            environment: "production".into(),
            top_frames: vec!["app.js in f".into(), "app.js in g".into()],
            request_url: "https://shop/cart".into(),
            browser: "Chrome 131".into(),
            os: "macOS 15".into(),
            rule: String::new(),
            command: "tracefold issue abc --project web".into(),
        }
    }

    #[test]
    fn payloads_of_every_channel() {
        let s = sig();
        let text = "*Spike in web: TypeError: x (500 events in 1 min, baseline 10/min)*\napp.js in f · web@1.2 · production\nframes: app.js in f ← app.js in g\nrequest: https://shop/cart\nclient: Chrome 131 / macOS 15\nfirst seen 2026-11-25T00:00:00Z · last seen 2026-11-26T05:00:59Z\ntracefold issue abc --project web";
        let (url, body, _) = request(&Target::Slack { url: "http://s/h".into() }, &s);
        assert_eq!(url, "http://s/h");
        assert_eq!(
            body,
            json!({"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]})
        );
        let (_, body, _) = request(&Target::Discord { url: "http://d/h".into() }, &s);
        assert_eq!(body["content"], "Spike in web: TypeError: x (500 events in 1 min, baseline 10/min)");
        assert_eq!(body["embeds"][0]["title"], "TypeError: x");
        let (url, body, _) =
            request(&Target::Telegram { api: "http://t".into(), token: "T0K".into(), chat_id: "42".into() }, &s);
        assert_eq!(url, "http://t/botT0K/sendMessage");
        assert_eq!(body["chat_id"], "42");
        assert!(body["text"].as_str().unwrap().starts_with("Spike in web"));
        let (_, body, headers) = request(&Target::Webhook { url: "http://w".into(), secret: "k".into() }, &s);
        assert_eq!(body, serde_json::to_value(&s).unwrap());
        let sig_header = &headers.iter().find(|(k, _)| k == "x-tracefold-signature").unwrap().1;
        assert_eq!(sig_header, &format!("sha256={}", sign("k", &body.to_string())));
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        assert_eq!(
            sign("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn routing() {
        let c = Channel {
            name: "x".into(),
            target: Target::Slack { url: String::new() },
            types: vec![Kind::Spike],
            projects: vec!["web".into()],
            rules: vec![],
            cooldown_min: 30,
        };
        let mut s = sig();
        assert!(c.wants(&s));
        s.project = "api".into();
        assert!(!c.wants(&s));
        s.project = "web".into();
        s.kind = Kind::NewIssue;
        assert!(!c.wants(&s));
    }
}
