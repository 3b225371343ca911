//! Notifiers: a generic webhook (JSON, HMAC-SHA256 signature), Slack and Discord incoming
//! webhooks, and the Telegram Bot API. Each channel has its own queue and task: retries with
//! backoff, a cooldown per (issue, signal type), a rate limit (a token bucket of
//! `max_per_minute`), and a failing or slow channel never blocks detection or the other
//! channels (a full queue or an empty bucket drops and counts).
//!
//! Delivery survives restarts. Every outcome of a signal on a channel (`queued`,
//! `delivered`, `failed`, `dropped`, `cooled`, `rate_limited`) is a row of ClickHouse's
//! `signal_deliveries`, written off the delivery path ([`crate::deliveries`]). The retry
//! budget of a notification:
//! - in one process life, `[detector.retry] attempts` (5) attempts with backoff
//!   (`initial_ms` 500 doubling to `max_ms` 30,000), then it is given up (`failed`);
//! - when a detector starts, every signal on the signals topic that a channel wants and never
//!   took (its rows say `queued`: the process stopped first; `failed`; `dropped`: queue full)
//!   is handed to that channel again, with the same attempts, if it was produced less than
//!   `redeliver_max_age_min` (60) minutes before: without cooldown, within the rate limit,
//!   counted in `tracefold_detector_redelivered_total`;
//! - at the first start after that age it is given up for good: an `expired` row,
//!   `tracefold_detector_redelivery_expired_total`, a WARN line. A detector that keeps
//!   running does not retry a failed notification again; only a start does.
//!
//! Delivery is at least once: a receiver that took a signal just before a crash, before the
//! `delivered` row was written, gets it again at the next start. Not handed again: signals
//! without any row for the channel (a channel added since, a new issue folded into a storm
//! digest, a signal produced just before a crash before its `queued` row was written), and
//! `cooled` or `rate_limited` ones (not sent on purpose).

use crate::deliveries::{DeliveryOutcome, Recorder};
use crate::signal::{Kind, Signal};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Signals sent, by `channel` kind and `outcome` (`sent`, `failed`, `dropped`, `cooled`,
/// `rate_limited`).
pub use crate::metrics::NOTIFICATIONS_TOTAL;

/// A channel and where it goes.
///
/// URLs, tokens and secrets are credentials: `Debug` shows a URL's scheme and host only and
/// hides tokens and secrets, and every error text that may be logged goes through
/// [`Target::redact`].
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    /// POST the signal JSON with a `timestamp` (Unix seconds of the first attempt) added;
    /// `X-Tracefold-Signature: sha256=<hex HMAC of the body>` when a secret is set, and
    /// `X-Tracefold-Timestamp` (the same timestamp, for convenience: verify the one in the
    /// signed body).
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
    /// `webhook`, `slack`, `discord` or `telegram`: the channel kind, for logs and metric
    /// labels (never the URL).
    pub fn label(&self) -> &'static str {
        match self {
            Target::Webhook { .. } => "webhook",
            Target::Slack { .. } => "slack",
            Target::Discord { .. } => "discord",
            Target::Telegram { .. } => "telegram",
        }
    }

    /// The strings of this target that must never reach a log line or a metric label: each
    /// URL as written and as parsed (normalized), its path, query and user info, the bot
    /// token and the HMAC secret. Longest first, so a URL goes before the token inside it.
    pub fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        let add_url = |u: &str, out: &mut Vec<String>| {
            out.push(u.to_owned());
            if let Ok(p) = reqwest::Url::parse(u) {
                out.push(p.as_str().to_owned());
                if p.path().len() > 1 {
                    out.push(p.path().to_owned());
                }
                out.extend(p.query().map(str::to_owned));
                out.extend(p.password().map(str::to_owned));
                out.push(p.username().to_owned());
            }
        };
        match self {
            Target::Webhook { url, secret } => {
                add_url(url, &mut out);
                out.push(secret.clone());
            }
            Target::Slack { url } | Target::Discord { url } => add_url(url, &mut out),
            Target::Telegram { api, token, .. } => {
                add_url(api, &mut out);
                add_url(&telegram_url(api, token), &mut out);
                out.push(token.clone());
            }
        }
        out.retain(|s| !s.is_empty());
        out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        out.dedup();
        out
    }

    /// `text` with every one of this target's [secrets](Target::secrets) replaced by
    /// `[redacted]`: what an error message becomes before it is logged or stored.
    pub fn redact(&self, text: &str) -> String {
        redact(text, &self.secrets())
    }
}

/// `text` with every non-empty string of `secrets` replaced by `[redacted]` (longer secrets
/// first, so that one inside another goes with it).
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut sorted: Vec<&str> = secrets.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_owned();
    for s in sorted {
        if out.contains(s) {
            out = out.replace(s, "[redacted]");
        }
    }
    out
}

/// A URL as it may be shown: scheme and host (and port) only, e.g. `https://hooks.slack.com/…`.
fn url_shape(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}/…", u.scheme()),
            (Some(h), None) => format!("{}://{h}/…", u.scheme()),
            (None, _) => format!("{}:…", u.scheme()),
        },
        Err(_) if url.is_empty() => String::new(),
        Err(_) => "[unparsable url]".to_owned(),
    }
}

/// A secret as it may be shown: whether it is set, not what it is.
fn secret_shape(secret: &str) -> &'static str {
    if secret.is_empty() {
        ""
    } else {
        "[redacted]"
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Webhook { url, secret } => {
                f.debug_struct("Webhook").field("url", &url_shape(url)).field("secret", &secret_shape(secret)).finish()
            }
            Target::Slack { url } => f.debug_struct("Slack").field("url", &url_shape(url)).finish(),
            Target::Discord { url } => f.debug_struct("Discord").field("url", &url_shape(url)).finish(),
            Target::Telegram { api, token, chat_id } => f
                .debug_struct("Telegram")
                .field("api", &url_shape(api))
                .field("token", &secret_shape(token))
                .field("chat_id", chat_id)
                .finish(),
        }
    }
}

fn telegram_url(api: &str, token: &str) -> String {
    format!("{}/bot{}/sendMessage", api.trim_end_matches('/'), token)
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
    /// Whether this channel wants `s`. A channel that takes `new_issue` also takes the
    /// `new_issue_digest` that stands for the new issues not notified one by one.
    pub fn wants(&self, s: &Signal) -> bool {
        let kind_ok = |k: Kind| self.types.contains(&k);
        (self.types.is_empty() || kind_ok(s.kind) || (s.kind == Kind::NewIssueDigest && kind_ok(Kind::NewIssue)))
            && (self.projects.is_empty() || self.projects.contains(&s.project))
            && (self.rules.is_empty() || s.kind != Kind::Threshold || self.rules.contains(&s.rule))
    }
}

/// Longest text a chat service takes, counted in UTF-16 code units (never fewer than the
/// characters, so a text within the bound is within the service's limit however it counts).
/// Slack: a section block's text.
const SLACK_TEXT_MAX: usize = 3000;
/// Slack: the bold headline inside the text, so the text keeps its shape when cut.
const SLACK_HEADLINE_MAX: usize = 1000;
/// Discord: a message's content.
const DISCORD_CONTENT_MAX: usize = 2000;
/// Discord: an embed's title.
const DISCORD_TITLE_MAX: usize = 256;
/// Discord: an embed's description.
const DISCORD_DESCRIPTION_MAX: usize = 4096;
/// Telegram: a message's text.
const TELEGRAM_TEXT_MAX: usize = 4096;
/// Longest event-derived field (title, culprit, a frame, the URL, ...) in a chat message,
/// before escaping.
const FIELD_MAX: usize = 300;
/// Frames shown in a chat message.
const FRAMES_MAX: usize = 5;

/// How a chat service reads text: what event-derived text must be escaped for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Markup {
    /// Slack mrkdwn: `&`, `<`, `>` are entities (`<!channel>`, `<@U123>`, `<url|text>`).
    Slack,
    /// Discord markdown: emphasis, masked links, quotes, headings, mentions.
    Discord,
    /// Plain text (Telegram without `parse_mode`).
    Plain,
}

impl Markup {
    /// Event-derived text made safe for this markup: one line (control and bidi control
    /// characters become spaces), at most [`FIELD_MAX`], then escaped.
    fn field(self, s: &str) -> String {
        let line: String =
            clip(s, FIELD_MAX).chars().map(|c| if c.is_control() || is_bidi_control(c) { ' ' } else { c }).collect();
        match self {
            Markup::Slack => escape_slack(&line),
            Markup::Discord => escape_discord(&line),
            Markup::Plain => line,
        }
    }

    /// Text of this markup cut to `max` UTF-16 units, ending in an ellipsis when cut, never
    /// inside a character or an escape (`&amp;`, `\*`).
    fn cap(self, s: String, max: usize) -> String {
        if utf16_len(&s) <= max {
            return s;
        }
        let mut kept = prefix_units(&s, max.saturating_sub(1)).to_owned();
        match self {
            // Every `&` of escaped text starts an entity: one without its `;` was cut.
            Markup::Slack => {
                if let Some(amp) = kept.rfind('&') {
                    if !kept[amp..].contains(';') {
                        kept.truncate(amp);
                    }
                }
            }
            // An odd run of trailing backslashes ends in an escape that lost its character.
            Markup::Discord => {
                if (kept.len() - kept.trim_end_matches('\\').len()) % 2 == 1 {
                    kept.pop();
                }
            }
            Markup::Plain => {}
        }
        kept.push('…');
        kept
    }
}

/// Length in UTF-16 code units.
fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// The longest prefix of `s` of at most `max` UTF-16 units, cut at a character boundary.
fn prefix_units(s: &str, max: usize) -> &str {
    let mut units = 0;
    for (i, c) in s.char_indices() {
        units += c.len_utf16();
        if units > max {
            return &s[..i];
        }
    }
    s
}

/// `s` cut to at most `max` UTF-16 units (an ellipsis ends a cut text), at a character
/// boundary.
fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if utf16_len(s) <= max {
        return s.into();
    }
    let mut t = prefix_units(s, max.saturating_sub(1)).to_owned();
    t.push('…');
    t.into()
}

/// The bidi embedding, override and isolate controls (U+202A–U+202E, U+2066–U+2069), which
/// reorder the text around them.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Slack mrkdwn escaping: `&`, `<`, `>` as entities, which defuses `<!channel>`,
/// `<!here>`, `<@U123>` and `<url|text>` links.
fn escape_slack(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Discord markdown escaping: a backslash before the characters of emphasis, code, spoilers,
/// masked links, quotes, headings and `<@id>` mentions (and before `-`/`+` starting the
/// text: lists); a zero-width space after the `@` of `@everyone`/`@here` and inside `://`,
/// so no mention forms and no link is made or previewed. Mentions are also disabled by
/// `allowed_mentions` on every message.
fn escape_discord(s: &str) -> String {
    const ZWSP: char = '\u{200B}';
    let mut out = String::with_capacity(s.len() + 8);
    for (i, c) in s.char_indices() {
        let rest = &s[i + c.len_utf8()..];
        match c {
            '\\' | '*' | '_' | '~' | '`' | '|' | '[' | ']' | '(' | ')' | '<' | '>' | '#' => {
                out.push('\\');
                out.push(c);
            }
            '-' | '+' if s[..i].trim().is_empty() => {
                out.push('\\');
                out.push(c);
            }
            '@' => {
                out.push('@');
                let word = |w: &str| rest.get(..w.len()).is_some_and(|p| p.eq_ignore_ascii_case(w));
                if word("everyone") || word("here") {
                    out.push(ZWSP);
                }
            }
            ':' if rest.starts_with("//") => {
                out.push(':');
                out.push(ZWSP);
            }
            c => out.push(c),
        }
    }
    out
}

fn headline(s: &Signal, m: Markup) -> String {
    let (project, title) = (m.field(&s.project), m.field(&s.title));
    match s.kind {
        Kind::NewIssueDigest => format!(
            "New-issue storm in {project}: {} new issues in {} min, {} not notified one by one",
            s.count, s.window_minutes, s.folded
        ),
        Kind::NewIssue => format!("New issue in {project}: {title}"),
        Kind::Regression => format!("Regression in {project}: {title}"),
        Kind::Spike => format!(
            "Spike in {project}: {title} ({} events in {} min, baseline {}/min)",
            s.count, s.window_minutes, s.baseline_per_minute
        ),
        Kind::Threshold => format!(
            "Threshold {} in {project}: {title} ({} events, {} users in {} min)",
            m.field(&s.rule),
            s.count,
            s.users,
            s.window_minutes
        ),
    }
}

fn details(s: &Signal, m: Markup) -> Vec<String> {
    let f = |t: &str| m.field(t);
    if s.kind == Kind::NewIssueDigest {
        let mut lines: Vec<String> = s.titles.iter().take(FRAMES_MAX).map(|t| format!("• {}", f(t))).collect();
        lines.push(f(&s.command));
        return lines;
    }
    let mut lines = vec![format!("{} · {} · {}", f(&s.culprit), f(&s.release), f(&s.environment))];
    if !s.top_frames.is_empty() {
        let frames: Vec<String> = s.top_frames.iter().take(FRAMES_MAX).map(|t| f(t)).collect();
        lines.push(format!("frames: {}", frames.join(" ← ")));
    }
    if !s.request_url.is_empty() {
        lines.push(format!("request: {}", f(&s.request_url)));
    }
    if !s.browser.is_empty() || !s.os.is_empty() {
        lines.push(format!("client: {} / {}", f(&s.browser), f(&s.os)));
    }
    lines.push(format!("first seen {} · last seen {}", f(&s.first_seen), f(&s.last_seen)));
    lines.push(f(&s.command));
    lines
}

/// The HTTP request for `s` on `target` sent now: see [`request_at`].
pub fn request(target: &Target, s: &Signal) -> (String, Value, Vec<(String, String)>) {
    request_at(target, s, tracefold_model::time::now_secs())
}

/// The HTTP request for `s` on `target` sent at `sent_at` (Unix seconds): (url, JSON body,
/// extra headers).
///
/// The webhook body is the signal itself (JSON) with `timestamp: sent_at` added, so the
/// signature covers the time of sending: a receiver recomputes the HMAC over the body, then
/// refuses a body whose `timestamp` is too old (say 5 minutes), so that a captured request
/// cannot be replayed later. Retries send the same request: the timestamp is the first
/// attempt's (with the default `[detector.retry]`, the waits between attempts add up to 7.5 s,
/// plus up to 10 s for each attempt that times out). Chat messages carry event-derived text
/// (titles, culprits, frames, URLs) escaped for the service's markup, on one line per field,
/// with mentions, link names and link previews off, and within the service's length limits.
/// The URL holds the channel's credentials: never log it (see [`Target::redact`]).
pub fn request_at(target: &Target, s: &Signal, sent_at: i64) -> (String, Value, Vec<(String, String)>) {
    match target {
        Target::Webhook { url, secret } => {
            let mut body = serde_json::to_value(s).expect("signals serialize");
            body["timestamp"] = json!(sent_at);
            let mut headers = vec![
                ("x-tracefold-signal".to_owned(), s.kind.as_str().to_owned()),
                ("x-tracefold-timestamp".to_owned(), sent_at.to_string()),
            ];
            if !secret.is_empty() {
                headers
                    .push(("x-tracefold-signature".to_owned(), format!("sha256={}", sign(secret, &body.to_string()))));
            }
            (url.clone(), body, headers)
        }
        Target::Slack { url } => {
            let m = Markup::Slack;
            let head = m.cap(headline(s, m), SLACK_HEADLINE_MAX);
            let text = m.cap(format!("*{head}*\n{}", details(s, m).join("\n")), SLACK_TEXT_MAX);
            (
                url.clone(),
                json!({"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
                    "link_names": false, "unfurl_links": false, "unfurl_media": false}),
                Vec::new(),
            )
        }
        Target::Discord { url } => {
            let m = Markup::Discord;
            (
                url.clone(),
                json!({"content": m.cap(headline(s, m), DISCORD_CONTENT_MAX), "allowed_mentions": {"parse": []},
                    "embeds": [{"title": m.cap(m.field(&s.title), DISCORD_TITLE_MAX),
                    "description": m.cap(details(s, m).join("\n"), DISCORD_DESCRIPTION_MAX),
                    "color": match s.kind { Kind::NewIssue => 3_447_003, Kind::Regression => 15_105_570, Kind::Spike => 15_158_332, Kind::Threshold => 10_181_046, Kind::NewIssueDigest => 15_844_367 }}]}),
                Vec::new(),
            )
        }
        Target::Telegram { api, token, chat_id } => {
            let m = Markup::Plain;
            let text = m.cap(format!("{}\n{}", headline(s, m), details(s, m).join("\n")), TELEGRAM_TEXT_MAX);
            (
                telegram_url(api, token),
                json!({"chat_id": chat_id, "text": text, "disable_web_page_preview": true}),
                Vec::new(),
            )
        }
    }
}

/// Hex HMAC-SHA256 of `body` with `secret`.
pub fn sign(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// `[detector.retry]`: how a channel retries a notification its receiver did not take (an
/// error status or no answer): up to `attempts` attempts, waiting `initial_ms` after the
/// first, doubling up to `max_ms`. The channel's next notifications wait in its queue
/// meanwhile; other channels are not affected.
///
/// The retry budget: `attempts` attempts per process life. A notification given up (or still
/// queued when the detector stopped, or dropped on a full queue) is handed to its channel
/// again when a detector starts, with `attempts` more, as long as its signal was produced
/// less than `redeliver_max_age_min` minutes before; at the first start after that it is
/// given up for good (`tracefold_detector_redelivery_expired_total`). See
/// [`crate::deliveries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// Attempts per notification (at least one).
    pub attempts: u32,
    /// Wait after the first failed attempt, ms.
    pub initial_ms: u64,
    /// Longest wait between two attempts, ms.
    pub max_ms: u64,
    /// At start-up, signals produced less than this many minutes ago that a channel never
    /// took are handed to it again (0: none; the others are given up at the next start).
    pub redeliver_max_age_min: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Self { attempts: 5, initial_ms: 500, max_ms: 30_000, redeliver_max_age_min: 60 }
    }
}

/// `[detector.rate_limit]`: notifications per minute each channel sends at most, as a token
/// bucket of `max_per_minute` tokens refilled evenly over a minute (so a burst of that many
/// goes at once). Notifications over it are dropped, counted
/// (`tracefold_detector_notifications_total{outcome="rate_limited"}`) and logged once a
/// minute per channel. Digests (`new_issue_digest`) are never limited: there is at most one
/// per project and storm window, and they stand for the notifications not sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    /// Per channel, at most this many notifications a minute; 0: no limit.
    pub max_per_minute: u32,
    /// Another limit for the channels named here (`name = limit`; 0: no limit).
    pub channels: BTreeMap<String, u32>,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self { max_per_minute: 30, channels: BTreeMap::new() }
    }
}

impl RateLimit {
    /// The limit of the channel named `name`.
    pub fn of(&self, name: &str) -> u32 {
        self.channels.get(name).copied().unwrap_or(self.max_per_minute)
    }
}

/// A token bucket: `per_minute` tokens at most, refilled at `per_minute` a minute.
#[derive(Debug)]
struct Bucket {
    per_minute: u32,
    tokens: f64,
    at: Instant,
    /// Dropped since the last log line, and when that was.
    unlogged: u64,
    logged: Option<Instant>,
}

impl Bucket {
    fn new(per_minute: u32, now: Instant) -> Self {
        Self { per_minute, tokens: f64::from(per_minute), at: now, unlogged: 0, logged: None }
    }

    /// Takes a token at `now`: whether there was one (always, without a limit).
    fn take(&mut self, now: Instant) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let cap = f64::from(self.per_minute);
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * cap / 60.0).min(cap);
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Counts a drop at `now`; the number to log when a minute passed since the last log line
    /// (or none was written yet).
    fn dropped(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self.logged.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(60)) {
            return None;
        }
        self.logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// A notification for a channel's task: the signal, and the attempts earlier process lives
/// made (a redelivery).
#[derive(Debug)]
struct Job {
    signal: Signal,
    prior_attempts: u32,
}

/// Fans signals out to the channels, each on its own task.
#[derive(Debug)]
pub struct Notifier {
    queues: Vec<(Channel, mpsc::Sender<Job>)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    cooldowns: HashMap<(usize, String, String, Kind), Instant>,
    /// Cooldowns held after the last pruning: they are pruned when twice as many (bounded by
    /// the issues notified within the longest cooldown).
    cooldowns_kept: usize,
    buckets: Vec<Bucket>,
    recorder: Option<Recorder>,
}

impl Notifier {
    /// Starts one task per channel (inside a tokio runtime), without rate limits (see
    /// [`Notifier::with_rate_limit`]) and without delivery rows.
    pub fn start(channels: Vec<Channel>, retry: Retry) -> Self {
        Self::start_recorded(channels, retry, None)
    }

    /// [`Notifier::start`], recording every outcome with `recorder` (see [`crate::deliveries`]).
    pub fn start_recorded(channels: Vec<Channel>, retry: Retry, recorder: Option<Recorder>) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("http client");
        let mut tasks = Vec::new();
        let queues = channels
            .into_iter()
            .map(|c| {
                let (tx, mut rx) = mpsc::channel::<Job>(1000);
                let (channel, http, recorder) = (c.clone(), http.clone(), recorder.clone());
                tasks.push(tokio::spawn(async move {
                    while let Some(job) = rx.recv().await {
                        let d = deliver(&http, &channel.name, &channel.target, &job.signal, retry).await;
                        if let Some(r) = &recorder {
                            let outcome =
                                if d.delivered { DeliveryOutcome::Delivered } else { DeliveryOutcome::Failed };
                            r.record(&job.signal, &channel, outcome, job.prior_attempts + d.attempts, &d.error);
                        }
                    }
                }));
                (c, tx)
            })
            .collect::<Vec<_>>();
        let now = Instant::now();
        let buckets = queues.iter().map(|_| Bucket::new(0, now)).collect();
        Self { queues, tasks, cooldowns: HashMap::new(), cooldowns_kept: 0, buckets, recorder }
    }

    /// The channels limited by `limits`, each with a full bucket.
    pub fn with_rate_limit(mut self, limits: &RateLimit) -> Self {
        let now = Instant::now();
        self.buckets = self.queues.iter().map(|(c, _)| Bucket::new(limits.of(&c.name), now)).collect();
        self
    }

    /// The channels, in their configured order (the indexes of [`Notifier::redeliver`]).
    pub fn channels(&self) -> Vec<&Channel> {
        self.queues.iter().map(|(c, _)| c).collect()
    }

    /// Hands `s` to every channel that wants it, is not cooling down for its issue and type
    /// and is within its rate limit (digests are neither cooled nor limited). Never waits: a
    /// full queue drops the notification (counted).
    pub fn notify(&mut self, s: &Signal) {
        self.notify_at(s, Instant::now());
    }

    fn notify_at(&mut self, s: &Signal, now: Instant) {
        if self.cooldowns.len() > 2 * self.cooldowns_kept.max(1024) {
            let queues = &self.queues;
            self.cooldowns.retain(|(i, ..), at| {
                now.saturating_duration_since(*at) < Duration::from_secs(60 * queues[*i].0.cooldown_min)
            });
            self.cooldowns_kept = self.cooldowns.len();
        }
        let digest = s.kind == Kind::NewIssueDigest;
        for i in 0..self.queues.len() {
            let c = &self.queues[i].0;
            if !c.wants(s) {
                continue;
            }
            let key = (i, s.project.clone(), s.issue_id.clone(), s.kind);
            if !digest
                && self
                    .cooldowns
                    .get(&key)
                    .is_some_and(|t| now.saturating_duration_since(*t) < Duration::from_secs(60 * c.cooldown_min))
            {
                metrics::counter!(NOTIFICATIONS_TOTAL, "channel" => c.target.label(), "outcome" => "cooled")
                    .increment(1);
                if let Some(r) = &self.recorder {
                    r.record(s, c, DeliveryOutcome::Cooled, 0, "");
                }
                continue;
            }
            self.hand(i, s, 0, now);
        }
    }

    /// Hands `s` to channel `i` again at start-up (see [`crate::deliveries`]), after
    /// `prior_attempts` attempts of earlier process lives: not cooled (it starts the
    /// cooldown of its issue and type), within the channel's rate limit (digests excepted).
    /// Whether it was queued.
    pub fn redeliver(&mut self, i: usize, s: &Signal, prior_attempts: u32) -> bool {
        self.hand(i, s, prior_attempts, Instant::now())
    }

    /// Queues `s` on channel `i` if its rate limit allows (a digest always), starting the
    /// cooldown of its issue and type; records and counts what became of it.
    fn hand(&mut self, i: usize, s: &Signal, prior_attempts: u32, now: Instant) -> bool {
        let digest = s.kind == Kind::NewIssueDigest;
        let (c, tx) = &self.queues[i];
        let record = |outcome| {
            if let Some(r) = &self.recorder {
                r.record(s, c, outcome, prior_attempts, "");
            }
        };
        let bucket = &mut self.buckets[i];
        if !digest && !bucket.take(now) {
            metrics::counter!(NOTIFICATIONS_TOTAL, "channel" => c.target.label(), "outcome" => "rate_limited")
                .increment(1);
            record(DeliveryOutcome::RateLimited);
            if let Some(dropped) = bucket.dropped(now) {
                tracing::warn!(
                    channel = %c.name,
                    kind = c.target.label(),
                    dropped,
                    max_per_minute = bucket.per_minute,
                    "notifications over the channel's rate limit dropped (logged at most once a minute)"
                );
            }
            return false;
        }
        if !digest {
            self.cooldowns.insert((i, s.project.clone(), s.issue_id.clone(), s.kind), now);
        }
        // Recorded before the task can record its outcome (the rank decides, not the order).
        record(DeliveryOutcome::Queued);
        if let Err(e) = tx.try_send(Job { signal: s.clone(), prior_attempts }) {
            metrics::counter!(NOTIFICATIONS_TOTAL, "channel" => c.target.label(), "outcome" => "dropped").increment(1);
            record(DeliveryOutcome::Dropped);
            tracing::warn!(channel = %c.name, kind = c.target.label(), error = %e, "notification queue full; dropped");
            return false;
        }
        true
    }

    /// Stops taking notifications, gives the channels up to `grace` to deliver what is
    /// queued, then stops them (a notification still queued or being retried has its
    /// `queued` row: the next start hands it again). Returns once every channel task ended,
    /// so that the delivery writer ends once it wrote their rows.
    pub async fn close(self, grace: Duration) {
        let Notifier { queues, tasks, recorder, .. } = self;
        drop((queues, recorder));
        let deadline = tokio::time::Instant::now() + grace;
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

/// Why one delivery attempt failed, safe to log.
#[derive(Debug)]
enum AttemptError {
    /// The service answered with this status.
    Refused(reqwest::StatusCode),
    /// No answer: the error text, without the URL and with the target's secrets redacted
    /// (see [`error_text`]).
    Failed(String),
}

/// A reqwest error as text that may be logged or stored: without its URL
/// ([`reqwest::Error::without_url`]), its sources chained, and every secret of `target`
/// redacted (a source may still quote a URL, a path or a token).
pub fn error_text(e: reqwest::Error, target: &Target) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    target.redact(&text)
}

async fn send_once(
    http: &reqwest::Client,
    target: &Target,
    url: &str,
    body: &Value,
    headers: &[(String, String)],
) -> Result<(), AttemptError> {
    let mut req = http.post(url).json(body);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(AttemptError::Refused(r.status())),
        Err(e) => Err(AttemptError::Failed(error_text(e, target))),
    }
}

/// What [`deliver`] achieved.
#[derive(Debug, PartialEq, Eq)]
struct Delivery {
    /// The receiver took it.
    delivered: bool,
    /// Attempts made.
    attempts: u32,
    /// The last failed attempt's error, safe to log and store, else empty.
    error: String,
}

/// Sends `s` to `target`, retrying with backoff. Logs name the channel by `name` and kind
/// only, never by URL.
async fn deliver(http: &reqwest::Client, name: &str, target: &Target, s: &Signal, retry: Retry) -> Delivery {
    // Built once: every attempt sends the same request (a webhook's signed timestamp is the
    // first attempt's), so a receiver sees one notification however often it is retried.
    let (url, body, headers) = request(target, s);
    let kind = target.label();
    let attempts = retry.attempts.max(1);
    let max = Duration::from_millis(retry.max_ms);
    let mut delay = Duration::from_millis(retry.initial_ms).min(max);
    let mut last = String::new();
    for attempt in 1..=attempts {
        match send_once(http, target, &url, &body, &headers).await {
            Ok(()) => {
                metrics::counter!(NOTIFICATIONS_TOTAL, "channel" => kind, "outcome" => "sent").increment(1);
                return Delivery { delivered: true, attempts: attempt, error: String::new() };
            }
            Err(AttemptError::Refused(status)) => {
                tracing::warn!(channel = name, kind, status = %status, attempt, "notification refused");
                last = format!("status {status}");
            }
            Err(AttemptError::Failed(error)) => {
                tracing::warn!(channel = name, kind, error = %error, attempt, "notification failed");
                last = error;
            }
        }
        // No wait after the last attempt: the next notification in the queue goes at once.
        if attempt < attempts {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(max);
        }
    }
    tracing::warn!(channel = name, kind, attempts, signal = %s.signal_id, "notification given up");
    metrics::counter!(NOTIFICATIONS_TOTAL, "channel" => kind, "outcome" => "failed").increment(1);
    Delivery { delivered: false, attempts, error: last }
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
            folded: 0,
            titles: vec![],
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
            json!({"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
                "link_names": false, "unfurl_links": false, "unfurl_media": false})
        );
        let (_, body, _) = request(&Target::Discord { url: "http://d/h".into() }, &s);
        assert_eq!(body["content"], "Spike in web: TypeError: x (500 events in 1 min, baseline 10/min)");
        assert_eq!(body["allowed_mentions"], json!({"parse": []}));
        assert_eq!(body["embeds"][0]["title"], "TypeError: x");
        assert_eq!(
            body["embeds"][0]["description"],
            "app.js in f · web@1.2 · production\nframes: app.js in f ← app.js in g\nrequest: https:\u{200B}//shop/cart\nclient: Chrome 131 / macOS 15\nfirst seen 2026-11-25T00:00:00Z · last seen 2026-11-26T05:00:59Z\ntracefold issue abc --project web"
        );
        let (url, body, _) =
            request(&Target::Telegram { api: "http://t".into(), token: "T0K".into(), chat_id: "42".into() }, &s);
        assert_eq!(url, "http://t/botT0K/sendMessage");
        assert_eq!(body["chat_id"], "42");
        assert_eq!(body["text"], text.replacen('*', "", 2));
        assert_eq!(body.get("parse_mode"), None);
        let hook = Target::Webhook { url: "http://w".into(), secret: "k".into() };
        let (_, body, headers) = request_at(&hook, &s, 1_795_000_000);
        // The signal, and the time of sending inside the signed body.
        let mut expected = serde_json::to_value(&s).unwrap();
        expected["timestamp"] = json!(1_795_000_000);
        assert_eq!(body, expected);
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).unwrap().1.clone();
        assert_eq!(header("x-tracefold-signature"), format!("sha256={}", sign("k", &body.to_string())));
        assert_eq!(header("x-tracefold-timestamp"), "1795000000");
        // Another time of sending, another signature: a captured body cannot be re-dated.
        let (_, later, later_headers) = request_at(&hook, &s, 1_795_000_600);
        assert_ne!(later_headers, headers);
        assert_eq!(later["timestamp"], 1_795_000_600);
        // What a receiver does: the HMAC over the raw body, then the timestamp's age.
        let raw = body.to_string();
        assert!(verify_like_a_receiver("k", &raw, &header("x-tracefold-signature"), 1_795_000_100));
        assert!(!verify_like_a_receiver("k", &raw, &header("x-tracefold-signature"), 1_795_000_301), "too old");
        assert!(!verify_like_a_receiver("other", &raw, &header("x-tracefold-signature"), 1_795_000_100));
    }

    /// The check docs/signals.md describes: the signature over the raw body, then `timestamp`
    /// within 5 minutes of the receiver's clock.
    fn verify_like_a_receiver(secret: &str, raw: &str, signature: &str, now: i64) -> bool {
        let body: Value = serde_json::from_str(raw).unwrap();
        signature == format!("sha256={}", sign(secret, raw))
            && body["timestamp"].as_i64().is_some_and(|t| (now - t).abs() <= 300)
    }

    fn digest() -> Signal {
        let mut s = sig();
        s.kind = Kind::NewIssueDigest;
        s.issue_id = String::new();
        s.title = "27 new issues in 10 min".into();
        s.count = 27;
        s.folded = 7;
        s.window_minutes = 10;
        s.titles = vec!["<!channel> *boom*".into(), "日本語 😀".into()];
        s.command = "tracefold top --project web --since 13m".into();
        s
    }

    #[test]
    fn a_digest_names_its_counts_titles_and_command_in_every_channel() {
        let d = digest();
        let (_, body, _) = request(&Target::Slack { url: "http://s/h".into() }, &d);
        assert_eq!(
            body["text"],
            "*New-issue storm in web: 27 new issues in 10 min, 7 not notified one by one*\n• &lt;!channel&gt; *boom*\n• 日本語 😀\ntracefold top --project web --since 13m"
        );
        let (_, body, _) = request(&Target::Discord { url: "http://d/h".into() }, &d);
        assert_eq!(
            body["embeds"][0]["description"],
            "• \\<!channel\\> \\*boom\\*\n• 日本語 😀\ntracefold top --project web --since 13m"
        );
        let (_, body, _) = request(&Target::Webhook { url: "http://w".into(), secret: String::new() }, &d);
        assert_eq!(
            (&body["type"], &body["folded"], &body["count"]),
            (&json!("new_issue_digest"), &json!(7), &json!(27))
        );
        assert_eq!(body["titles"], json!(["<!channel> *boom*", "日本語 😀"]));
    }

    #[test]
    fn a_channel_taking_new_issues_takes_their_digests() {
        let c = |types: Vec<Kind>| Channel {
            name: "x".into(),
            target: Target::Slack { url: String::new() },
            types,
            projects: vec![],
            rules: vec![],
            cooldown_min: 30,
        };
        assert!(c(vec![Kind::NewIssue]).wants(&digest()));
        assert!(c(vec![Kind::NewIssueDigest]).wants(&digest()));
        assert!(!c(vec![Kind::NewIssueDigest]).wants(&sig()));
        assert!(!c(vec![Kind::Spike]).wants(&digest()));
        assert!(c(vec![]).wants(&digest()));
    }

    #[test]
    fn a_bucket_lets_a_burst_through_then_refills_evenly() {
        let t0 = Instant::now();
        let mut b = Bucket::new(30, t0);
        assert_eq!((0..40).filter(|_| b.take(t0)).count(), 30, "a full bucket: a burst of 30");
        assert!(!b.take(t0 + Duration::from_millis(1900)), "one token in 2 s");
        assert!(b.take(t0 + Duration::from_secs(2)));
        assert!(!b.take(t0 + Duration::from_secs(2)));
        // A long pause refills to the cap, not beyond.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..40).filter(|_| b.take(later)).count(), 30);
        // An earlier instant (a clock read before another) takes nothing back.
        assert!(!b.take(t0));
        let mut unlimited = Bucket::new(0, t0);
        assert!((0..10_000).all(|_| unlimited.take(t0)));
        // Drops are logged at most once a minute, with how many since the last line.
        assert_eq!(b.dropped(later), Some(1));
        assert_eq!(b.dropped(later + Duration::from_secs(59)), None);
        assert_eq!(b.dropped(later + Duration::from_secs(59)), None);
        assert_eq!(b.dropped(later + Duration::from_secs(60)), Some(3));
    }

    #[tokio::test]
    async fn over_its_rate_limit_a_channel_drops_but_never_a_digest() {
        let t0 = Instant::now();
        let channel = |name: &str| Channel {
            name: name.into(),
            target: Target::Webhook { url: "http://127.0.0.1:9/x".into(), secret: String::new() },
            types: vec![],
            projects: vec![],
            rules: vec![],
            cooldown_min: 0,
        };
        let limits = RateLimit { max_per_minute: 5, channels: BTreeMap::from([("wide".to_owned(), 0)]) };
        let mut n =
            Notifier::start(vec![channel("narrow"), channel("wide")], Retry::default()).with_rate_limit(&limits);
        for i in 0..20 {
            let mut s = sig();
            s.issue_id = format!("i{i}");
            n.notify_at(&s, t0);
        }
        // Digests pass an empty bucket and are not cooled (one per window already).
        for _ in 0..3 {
            n.notify_at(&digest(), t0);
        }
        assert_eq!(n.buckets[0].unlogged + 1, 15, "15 over the limit of 5, the first logged at once");
        assert_eq!(n.buckets[1].unlogged, 0, "no limit");
    }

    #[tokio::test]
    async fn cooldowns_of_many_issues_are_forgotten_once_they_ran_out() {
        let t0 = Instant::now();
        let channel = Channel {
            name: "hook".into(),
            target: Target::Webhook { url: "http://127.0.0.1:9/x".into(), secret: String::new() },
            types: vec![],
            projects: vec![],
            rules: vec![],
            cooldown_min: 1,
        };
        let limits = RateLimit { max_per_minute: 0, channels: BTreeMap::new() };
        let mut n = Notifier::start(vec![channel], Retry::default()).with_rate_limit(&limits);
        for i in 0..3000 {
            let mut s = sig();
            s.issue_id = format!("i{i}");
            n.notify_at(&s, t0);
        }
        assert_eq!(n.cooldowns.len(), 3000, "each issue cooling for a minute");
        // Two minutes later, 3,000 other issues: the first ones' cooldowns ran out and are
        // forgotten; what is held stays within twice the issues cooling now.
        for i in 0..3000 {
            let mut s = sig();
            s.issue_id = format!("later{i}");
            n.notify_at(&s, t0 + Duration::from_secs(120));
        }
        assert_eq!(n.cooldowns.len(), 3000);
        assert!(n.cooldowns.keys().all(|(_, _, issue, _)| issue.starts_with("later")));
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

    /// A title written to attack every chat service, long enough to pass every limit.
    fn hostile() -> Signal {
        let mut s = sig();
        s.title = format!("@everyone <!channel> <@U123> *bold* [x](http://evil) & 日本語{}", "日本語…😀".repeat(1500));
        s.culprit = "f\n# heading\r\n> quote\u{202E}gnp.exe".into();
        s.top_frames = vec!["- item @here".into(); 9];
        s
    }

    #[test]
    fn slack_escapes_event_text_and_disables_mentions() {
        let (_, body, _) = request(&Target::Slack { url: "http://s/h".into() }, &hostile());
        let text = body["text"].as_str().unwrap();
        assert_eq!(body["blocks"][0]["text"]["text"], text);
        assert_eq!(
            (&body["link_names"], &body["unfurl_links"], &body["unfurl_media"]),
            (&json!(false), &json!(false), &json!(false))
        );
        assert!(
            text.starts_with(
                "*Spike in web: @everyone &lt;!channel&gt; &lt;@U123&gt; *bold* [x](http://evil) &amp; 日本語"
            ),
            "{text}"
        );
        // No `<` or `>` is left: no mention, no special command, no `<url|text>` link.
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
        // Every `&` starts a whole entity, also where the text was cut.
        for (i, _) in text.match_indices('&') {
            assert!(["&amp;", "&lt;", "&gt;"].iter().any(|e| text[i..].starts_with(e)), "{}", &text[i..]);
        }
        assert!(utf16_len(text) <= SLACK_TEXT_MAX, "{}", utf16_len(text));
        // The title is cut, the headline stays whole and bold; the details follow on their own
        // lines, one a field.
        let head = text.lines().next().unwrap();
        assert!(head.ends_with("日… (500 events in 1 min, baseline 10/min)*"), "{head}");
        assert_eq!(text.lines().nth(1).unwrap(), "f # heading  &gt; quote gnp.exe · web@1.2 · production");
        assert_eq!(text.lines().nth(2).unwrap().matches("- item @here").count(), FRAMES_MAX);
    }

    #[test]
    fn discord_escapes_markdown_and_allows_no_mentions() {
        let (_, body, _) = request(&Target::Discord { url: "http://d/h".into() }, &hostile());
        assert_eq!(body["allowed_mentions"], json!({"parse": []}));
        let content = body["content"].as_str().unwrap();
        let title = body["embeds"][0]["title"].as_str().unwrap();
        let description = body["embeds"][0]["description"].as_str().unwrap();
        let escaped =
            "@\u{200B}everyone \\<!channel\\> \\<@U123\\> \\*bold\\* \\[x\\]\\(http:\u{200B}//evil\\) & 日本語";
        assert!(content.starts_with(&format!("Spike in web: {escaped}")), "{content}");
        assert!(title.starts_with(escaped), "{title}");
        for t in [content, title, description] {
            assert!(!t.contains("@everyone") && !t.contains("@here") && !t.contains("://"), "{t}");
            assert!(!t.contains("](") && !t.contains("\n#") && !t.contains("\n>") && !t.contains("\n-"), "{t}");
            assert!(!t.ends_with("\\…") || t.ends_with("\\\\…"), "{t}");
        }
        assert!(content.ends_with("… (500 events in 1 min, baseline 10/min)"), "{content}");
        assert!(utf16_len(content) <= DISCORD_CONTENT_MAX);
        assert!(utf16_len(title) <= DISCORD_TITLE_MAX && title.ends_with('…'), "{}", utf16_len(title));
        assert!(utf16_len(description) <= DISCORD_DESCRIPTION_MAX);
        assert!(
            description.starts_with(
                "f \\# heading  \\> quote gnp.exe · web@1.2 · production\nframes: \\- item @\u{200B}here ← \\- item"
            ),
            "{description}"
        );
    }

    #[test]
    fn telegram_sends_plain_text_within_its_limit() {
        let t = Target::Telegram { api: "http://t".into(), token: "T0K".into(), chat_id: "42".into() };
        let (_, body, _) = request(&t, &hostile());
        assert_eq!(body.get("parse_mode"), None, "plain text: nothing to escape");
        let text = body["text"].as_str().unwrap();
        assert!(
            text.starts_with("Spike in web: @everyone <!channel> <@U123> *bold* [x](http://evil) & 日本語"),
            "{text}"
        );
        assert!(utf16_len(text) <= TELEGRAM_TEXT_MAX, "{}", utf16_len(text));
        assert!(!text.contains('\r') && !text.contains('\u{202E}') && !text.contains("\n#"), "{text}");
    }

    #[test]
    fn cuts_fall_on_character_and_escape_boundaries() {
        let sample = "a日😀&<\\*b";
        for markup in [Markup::Slack, Markup::Discord, Markup::Plain] {
            let escaped = markup.field(sample);
            for max in 1..=utf16_len(&escaped) + 1 {
                let cut = markup.cap(escaped.clone(), max);
                assert!(utf16_len(&cut) <= max, "{markup:?} {max}: {cut}");
                if cut != escaped {
                    assert!(cut.ends_with('…') && escaped.starts_with(cut.trim_end_matches('…')), "{cut}");
                }
            }
        }
        assert_eq!(Markup::Slack.cap("x &amp; y".into(), 5), "x …");
        assert_eq!(Markup::Discord.cap("ab\\*c".into(), 4), "ab…");
        assert_eq!(clip("日本語", 2), "日…");
        assert_eq!(clip("😀😀", 3), "😀…");
        assert_eq!(clip("😀😀", 2), "…", "an emoji is two UTF-16 units: never half of one");
        assert_eq!(clip("日本", 2), "日本");
    }

    const SECRET_URL: &str = "http://127.0.0.1:9/secret-path-XYZ";

    fn secret_targets() -> Vec<Target> {
        vec![
            Target::Webhook { url: SECRET_URL.into(), secret: "tok-SECRET".into() },
            Target::Slack { url: SECRET_URL.into() },
            Target::Discord { url: format!("{SECRET_URL}?token=tok-SECRET") },
            Target::Telegram { api: SECRET_URL.into(), token: "tok-SECRET".into(), chat_id: "42".into() },
        ]
    }

    #[tokio::test]
    async fn failed_requests_name_no_url_or_token() {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        for t in secret_targets() {
            let (url, body, headers) = request(&t, &sig());
            // reqwest names the URL in its errors: what there is to hide.
            let raw = http.post(&url).send().await.unwrap_err();
            assert!(raw.to_string().contains("secret-path-XYZ"), "{raw}");
            let err = send_once(&http, &t, &url, &body, &headers).await.unwrap_err();
            let AttemptError::Failed(text) = &err else { panic!("{err:?}") };
            assert!(text.starts_with("error sending request"), "{text}");
            for shown in [text.clone(), format!("{err:?}")] {
                assert!(!shown.contains("secret-path") && !shown.contains("SECRET"), "{shown}");
            }
        }
    }

    #[tokio::test]
    async fn retries_wait_between_attempts_and_not_after_the_last() {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let target = Target::Webhook { url: format!("http://127.0.0.1:{dead}/x"), secret: String::new() };
        let started = Instant::now();
        let d = deliver(
            &http,
            "dead",
            &target,
            &sig(),
            Retry { attempts: 3, initial_ms: 100, max_ms: 150, ..Retry::default() },
        )
        .await;
        let took = started.elapsed();
        assert_eq!((d.delivered, d.attempts), (false, 3));
        assert!(d.error.starts_with("error sending request"), "{}", d.error);
        // 100 ms, then 150 (the cap), and no wait after the third attempt.
        assert!(took >= Duration::from_millis(250) && took < Duration::from_millis(2000), "{took:?}");
        let started = Instant::now();
        let retry = Retry { attempts: 1, initial_ms: 60_000, max_ms: 60_000, ..Retry::default() };
        deliver(&http, "dead", &target, &sig(), retry).await;
        assert!(started.elapsed() < Duration::from_secs(5), "one attempt, no wait");
    }

    #[test]
    fn redaction_covers_normalized_urls_paths_and_tokens() {
        let t = Target::Slack { url: "HTTPS://Hooks.Slack.com/services/T000/B000/XXXX".into() };
        let logged = "error sending request for url (https://hooks.slack.com/services/T000/B000/XXXX): \
                      POST /services/T000/B000/XXXX failed";
        let redacted = t.redact(logged);
        assert!(!redacted.contains("XXXX") && !redacted.contains("T000"), "{redacted}");
        let tg = Target::Telegram {
            api: "https://api.telegram.org/".into(),
            token: "123:tok-SECRET".into(),
            chat_id: "1".into(),
        };
        let redacted = tg.redact("https://api.telegram.org/bot123:tok-SECRET/sendMessage and 123:tok-SECRET");
        assert!(!redacted.contains("SECRET"), "{redacted}");
        assert_eq!(redact("a b", &[String::new()]), "a b");
    }

    #[test]
    fn debug_shows_channel_name_kind_and_host_only() {
        for target in secret_targets() {
            let c = Channel {
                name: "oncall".into(),
                target,
                types: vec![],
                projects: vec![],
                rules: vec![],
                cooldown_min: 30,
            };
            let shown = format!("{c:?} {c:#?}");
            assert!(shown.contains("oncall") && shown.contains("http://127.0.0.1:9/…"), "{shown}");
            assert!(!shown.contains("secret-path") && !shown.contains("SECRET"), "{shown}");
        }
        let slack = Target::Slack { url: "https://hooks.slack.com/services/T000/B000/XXXX".into() };
        assert_eq!(format!("{slack:?}"), r#"Slack { url: "https://hooks.slack.com/…" }"#);
        let hook = Target::Webhook { url: "not a url XXXX".into(), secret: "k".into() };
        assert_eq!(format!("{hook:?}"), r#"Webhook { url: "[unparsable url]", secret: "[redacted]" }"#);
    }
}
