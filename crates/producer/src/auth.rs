//! Projects, keys and rate limits of the ingest edge.
//!
//! A request names its project (a slug on the native endpoint, a numeric id on the Sentry
//! endpoints) and carries a public key (`X-Sentry-Auth: Sentry sentry_key=...`, the
//! `sentry_key` query parameter, `X-Tracefold-Key`, or `Authorization: Bearer ...`). Keys are
//! compared in constant time, against every key of the project. Rate limits are token buckets
//! in this producer replica's memory: one per registered project, one per configured key, and
//! one shared by all unregistered projects. Buckets exist only for what the config names, so
//! request contents (keys, slugs) never grow memory.

use crate::config::{Config, ProjectConfig};
use axum::http::HeaderMap;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;
use subtle::{ConditionallySelectable as _, ConstantTimeEq as _};

/// Why a request is refused before its events are read.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// 401: no key where one is needed.
    MissingKey,
    /// 403: the key does not belong to the project, or the project is unknown.
    Forbidden(String),
    /// 429: over a rate limit; retry after this many seconds.
    RateLimited {
        /// Seconds until enough tokens are back.
        retry_after: u64,
        /// `project`, `key` or `unregistered`.
        scope: &'static str,
    },
    /// 413: more events in one request than a bucket ever holds; no retry can pass.
    OverBurst {
        /// Events in the request.
        events: usize,
        /// The bucket's burst.
        burst: u64,
        /// `project`, `key` or `unregistered`.
        scope: &'static str,
    },
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A bucket's identity: what the config names, never what a request says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum BucketId {
    /// A registered project, by index.
    Project(usize),
    /// A configured key: (project index, key index).
    Key(usize, usize),
    /// Every unregistered project together.
    Unregistered,
}

/// One token bucket to take from: refilled at `rate` per second up to `burst`.
#[derive(Debug, Clone, Copy)]
struct Limit {
    id: BucketId,
    rate: f64,
    burst: f64,
    scope: &'static str,
}

impl Limit {
    /// The burst in force: the configured one, or one second's worth (at least one event).
    fn burst(&self) -> f64 {
        if self.burst > 0.0 {
            self.burst
        } else {
            self.rate.max(1.0)
        }
    }
}

/// The registered projects and their buckets.
#[derive(Debug)]
pub struct Projects {
    projects: Vec<ProjectConfig>,
    by_slug: HashMap<String, usize>,
    by_id: HashMap<u64, usize>,
    allow_unregistered: bool,
    unregistered_rate: f64,
    unregistered_burst: f64,
    buckets: Mutex<HashMap<BucketId, Bucket>>,
}

/// A project a request was admitted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The project's slug.
    pub slug: String,
    /// The tokens taken for it, given back by [`Projects::give_back`] when its events are
    /// refused after all.
    taken: Taken,
}

/// Tokens taken from buckets: `events` from each bucket named.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Taken {
    ids: [Option<BucketId>; 2],
    events: usize,
}

/// Index of `key` among `keys`, compared in constant time against every one of them (no early
/// exit; only the length of a key can show in the timing).
fn find_key(keys: &[String], key: &str) -> Option<usize> {
    let mut found = subtle::Choice::from(0);
    let mut at = 0u64;
    for (i, k) in keys.iter().enumerate() {
        let eq = k.as_bytes().ct_eq(key.as_bytes());
        at = u64::conditional_select(&at, &(i as u64), eq);
        found |= eq;
    }
    bool::from(found).then_some(at as usize)
}

/// Whether `burst` (already known not negative) can hold an event: 0 (one second's worth) or
/// at least 1. A bucket of less than one token refuses every request with 413, for ever.
pub(crate) fn is_usable_burst(burst: f64) -> bool {
    burst == 0.0 || burst >= 1.0
}

/// Keys shipped in the example configs and manifests, to be replaced before use.
fn is_placeholder(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("change-me") || k.contains("changeme") || k.contains("replace-me")
}

impl Projects {
    /// Checks the `[[projects]]` entries.
    ///
    /// # Errors
    /// Names the entry and what is wrong with it.
    pub fn new(cfg: &Config) -> Result<Self, String> {
        let mut by_slug = HashMap::new();
        let mut by_id = HashMap::new();
        let mut keys: HashMap<&str, &str> = HashMap::new();
        for (i, p) in cfg.projects.iter().enumerate() {
            if !tracefold_model::validate::is_project_slug(&p.slug) {
                return Err(format!("projects[{i}].slug {:?} must match [a-z0-9][a-z0-9_-]*", p.slug));
            }
            if by_slug.insert(p.slug.clone(), i).is_some() {
                return Err(format!("projects[{i}].slug {:?} is registered twice", p.slug));
            }
            if let Some(id) = p.id {
                if by_id.insert(id, i).is_some() {
                    return Err(format!("projects[{i}].id {id} is registered twice"));
                }
            }
            for k in &p.keys {
                if k.len() < 8 || !k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_') {
                    return Err(format!("projects[{i}].keys: {k:?} must be at least 8 of [A-Za-z0-9_-]"));
                }
                if let Some(other) = keys.insert(k, &p.slug) {
                    return Err(format!("projects[{i}].keys: key {k:?} is also a key of {other:?}"));
                }
                if is_placeholder(k) {
                    tracing::warn!(project = %p.slug, "a key of this project is the shipped placeholder; replace it");
                }
            }
            // `!(x >= 0)` also refuses NaN.
            if !(p.rate_per_sec >= 0.0 && p.key_rate_per_sec >= 0.0 && p.burst >= 0.0 && p.key_burst >= 0.0) {
                return Err(format!("projects[{i}]: rates and bursts must not be negative"));
            }
            for (name, burst) in [("burst", p.burst), ("key_burst", p.key_burst)] {
                if !is_usable_burst(burst) {
                    return Err(format!("projects[{i}].{name} = {burst} must be 0 (one second's worth) or at least 1"));
                }
            }
        }
        Ok(Self {
            projects: cfg.projects.clone(),
            by_slug,
            by_id,
            allow_unregistered: cfg.http.allow_unregistered_projects,
            unregistered_rate: cfg.http.unregistered_rate_per_sec,
            unregistered_burst: cfg.http.unregistered_burst,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// The slug of the project registered with numeric id `id` (Sentry endpoints).
    pub fn slug_of(&self, id: u64) -> Option<&str> {
        self.by_id.get(&id).map(|&i| self.projects[i].slug.as_str())
    }

    /// Admits `events` events for the project named by slug (native endpoint) or by numeric
    /// id (Sentry endpoints), with `key` from the request. With `events == 0` only the project
    /// and the key are checked.
    ///
    /// # Errors
    /// [`Refusal`] with the status to answer.
    pub fn admit(
        &self,
        slug: Option<&str>,
        id: Option<u64>,
        key: Option<&str>,
        events: usize,
    ) -> Result<Admitted, Refusal> {
        let idx = match (slug, id) {
            (Some(s), _) => self.by_slug.get(s).copied(),
            (None, Some(i)) => self.by_id.get(&i).copied(),
            (None, None) => None,
        };
        let Some(idx) = idx else {
            return match (slug, self.allow_unregistered) {
                (Some(s), true) => {
                    let shared = Limit {
                        id: BucketId::Unregistered,
                        rate: self.unregistered_rate,
                        burst: self.unregistered_burst,
                        scope: "unregistered",
                    };
                    let taken = self.take(&[Some(shared), None], events)?;
                    Ok(Admitted { slug: s.to_owned(), taken })
                }
                (Some(s), false) => Err(Refusal::Forbidden(format!("project {s:?} is not registered"))),
                (None, _) => Err(Refusal::Forbidden(format!("project id {} is not registered", id.unwrap_or(0)))),
            };
        };
        let p = &self.projects[idx];
        // The Sentry endpoints (by id) always need a key; the native one when keys are set.
        // Only a configured key gets a bucket of its own.
        let mut key_idx = None;
        if !p.keys.is_empty() || slug.is_none() {
            let Some(k) = key else { return Err(Refusal::MissingKey) };
            match find_key(&p.keys, k) {
                Some(i) => key_idx = Some(i),
                None => return Err(Refusal::Forbidden(format!("the key is not valid for project {:?}", p.slug))),
            }
        }
        let project = Limit { id: BucketId::Project(idx), rate: p.rate_per_sec, burst: p.burst, scope: "project" };
        let key = key_idx.map(|k| Limit {
            id: BucketId::Key(idx, k),
            rate: p.key_rate_per_sec,
            burst: p.key_burst,
            scope: "key",
        });
        let taken = self.take(&[Some(project), key], events)?;
        Ok(Admitted { slug: p.slug.clone(), taken })
    }

    /// Admits an artifact upload for the project named by `project` (a slug, or a registered
    /// numeric id) with `key`: unlike events, uploads need a registered project with keys and
    /// one of them, whatever `http.allow_unregistered_projects` says. Rate limits are for
    /// events and are not taken from.
    ///
    /// # Errors
    /// [`Refusal::MissingKey`] or [`Refusal::Forbidden`].
    pub fn admit_upload(&self, project: &str, key: Option<&str>) -> Result<Admitted, Refusal> {
        let idx = self.by_slug.get(project).or_else(|| project.parse().ok().and_then(|id: u64| self.by_id.get(&id)));
        let Some(&idx) = idx else {
            return Err(Refusal::Forbidden(format!(
                "project {project:?} is not registered; uploads need a registered project with keys"
            )));
        };
        let p = &self.projects[idx];
        if p.keys.is_empty() {
            return Err(Refusal::Forbidden(format!(
                "project {:?} has no keys; uploads need a registered project with keys",
                p.slug
            )));
        }
        let Some(k) = key else { return Err(Refusal::MissingKey) };
        match find_key(&p.keys, k) {
            Some(_) => Ok(Admitted { slug: p.slug.clone(), taken: Taken::default() }),
            None => Err(Refusal::Forbidden(format!("the key is not valid for project {:?}", p.slug))),
        }
    }

    /// Gives back the tokens taken for `admitted`, whose events the pipeline refused after all
    /// (backpressure, Kafka not acknowledging), so that the retry of a refused request is not
    /// rate limited for the events it sends again. (Events refused as invalid keep theirs: the
    /// client sent them.) A bucket never holds more than its burst.
    pub fn give_back(&self, admitted: &Admitted) {
        let Taken { ids, events } = admitted.taken;
        if events == 0 || ids.iter().all(Option::is_none) {
            return;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in ids.into_iter().flatten() {
            let burst = self.limit_of(id).burst();
            if let Some(b) = buckets.get_mut(&id) {
                b.tokens = (b.tokens + events as f64).min(burst);
            }
        }
    }

    /// The limit a bucket id stands for, as the config says.
    fn limit_of(&self, id: BucketId) -> Limit {
        match id {
            BucketId::Project(i) => {
                let p = &self.projects[i];
                Limit { id, rate: p.rate_per_sec, burst: p.burst, scope: "project" }
            }
            BucketId::Key(i, _) => {
                let p = &self.projects[i];
                Limit { id, rate: p.key_rate_per_sec, burst: p.key_burst, scope: "key" }
            }
            BucketId::Unregistered => {
                Limit { id, rate: self.unregistered_rate, burst: self.unregistered_burst, scope: "unregistered" }
            }
        }
    }

    /// Takes `events` tokens from every limit, or from none: a refusal costs no tokens.
    fn take(&self, limits: &[Option<Limit>], events: usize) -> Result<Taken, Refusal> {
        let limits: Vec<Limit> = limits.iter().flatten().filter(|l| l.rate > 0.0).copied().collect();
        if events == 0 || limits.is_empty() {
            return Ok(Taken::default());
        }
        let n = events as f64;
        // A request larger than a bucket's burst could wait forever: 413, not 429.
        if let Some(l) = limits.iter().find(|l| n > l.burst()) {
            return Err(Refusal::OverBurst { events, burst: l.burst() as u64, scope: l.scope });
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Refill every bucket (refilling twice at the same instant changes nothing), check all,
        // then take from all.
        for l in &limits {
            let b = buckets.entry(l.id).or_insert(Bucket { tokens: l.burst(), last: now });
            b.tokens = (b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * l.rate).min(l.burst());
            b.last = now;
            if n > b.tokens {
                let retry_after = ((n - b.tokens) / l.rate).ceil().max(1.0) as u64;
                return Err(Refusal::RateLimited { retry_after, scope: l.scope });
            }
        }
        let mut taken = Taken { ids: [None; 2], events };
        for (l, slot) in limits.iter().zip(&mut taken.ids) {
            if let Some(b) = buckets.get_mut(&l.id) {
                b.tokens -= n;
                *slot = Some(l.id);
            }
        }
        Ok(taken)
    }

    /// Token buckets in memory: at most one per registered project, one per configured key,
    /// and one for all unregistered projects, whatever requests say.
    pub fn bucket_count(&self) -> usize {
        self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }
}

/// The public key of a request: `X-Sentry-Auth` (`sentry_key=`), the `sentry_key` query
/// parameter, `X-Tracefold-Key`, or `Authorization: Bearer`, the first of them that has one.
/// An empty value is no value, as for Sentry (`sentry_key=` with nothing after it is a
/// missing key): it does not hide a key given in a later place (a header `sentry_key=` and
/// `?sentry_key=KEY` is KEY), and with none anywhere the request has no key.
pub fn request_key(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let from_auth = header("x-sentry-auth")
        .and_then(sentry_auth_key)
        .or_else(|| header("authorization").filter(|a| scheme(a, "sentry ").is_some()).and_then(sentry_auth_key));
    let from_query = || {
        query.and_then(|q| {
            q.split('&').filter_map(|kv| kv.strip_prefix("sentry_key=")).map(str::trim).find(|k| !k.is_empty())
        })
    };
    let bearer = || header("authorization").and_then(|a| scheme(a, "bearer ")).map(str::trim);
    from_auth.or_else(|| {
        from_query()
            .or_else(|| header("x-tracefold-key").map(str::trim).filter(|k| !k.is_empty()))
            .or_else(|| bearer().filter(|k| !k.is_empty()))
            .map(str::to_owned)
    })
}

/// `Sentry sentry_version=7, sentry_client=x/1.0, sentry_key=abc, sentry_secret=...` -> `abc`.
/// Read as Sentry reads it: the scheme in any case (`sentry`), spaces around items, names and
/// values ignored; the last non-empty `sentry_key` counts, and an empty one is no key.
pub fn sentry_auth_key(header: &str) -> Option<String> {
    let h = header.trim();
    let body = scheme(h, "sentry").filter(|rest| !rest.starts_with('_')).unwrap_or(h);
    body.split(',')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(name, _)| name.trim() == "sentry_key")
        .map(|(_, value)| value.trim())
        .rfind(|v| !v.is_empty())
        .map(str::to_owned)
}

/// What follows the authentication scheme `prefix` (ASCII, matched in any case, as HTTP schemes
/// are) at the start of `header`, or `None` when it does not start with it.
fn scheme<'a>(header: &'a str, prefix: &str) -> Option<&'a str> {
    header.get(..prefix.len()).filter(|p| p.eq_ignore_ascii_case(prefix))?;
    header.get(prefix.len()..)
}

/// The key in a DSN (`https://KEY@host/ID`), as envelope headers carry it; an empty one
/// (`https://@host/ID`) is no key.
pub fn dsn_key(dsn: &str) -> Option<String> {
    let rest = dsn.split_once("://")?.1;
    let (user, _) = rest.split_once('@')?;
    Some(user.split(':').next().unwrap_or(user)).filter(|k| !k.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn projects(rate: f64, key_rate: f64) -> Projects {
        let cfg = Config {
            projects: vec![
                ProjectConfig {
                    slug: "web".into(),
                    id: Some(1),
                    keys: vec!["webkey123".into(), "webkey456".into()],
                    rate_per_sec: rate,
                    burst: 0.0,
                    key_rate_per_sec: key_rate,
                    key_burst: 0.0,
                },
                ProjectConfig {
                    slug: "api".into(),
                    id: Some(2),
                    keys: vec!["apikey123".into()],
                    rate_per_sec: 0.0,
                    burst: 0.0,
                    key_rate_per_sec: 0.0,
                    key_burst: 0.0,
                },
            ],
            ..Config::default()
        };
        Projects::new(&cfg).unwrap()
    }

    #[test]
    fn keys_are_checked() {
        let p = projects(0.0, 0.0);
        assert_eq!(p.admit(None, Some(1), Some("webkey123"), 1).unwrap().slug, "web");
        assert_eq!(p.admit(None, Some(1), None, 1), Err(Refusal::MissingKey));
        assert!(matches!(p.admit(None, Some(1), Some("apikey123"), 1), Err(Refusal::Forbidden(_))));
        assert!(matches!(p.admit(None, Some(9), Some("webkey123"), 1), Err(Refusal::Forbidden(_))));
        assert_eq!(p.admit(Some("api"), None, Some("apikey123"), 1).unwrap().slug, "api");
        assert_eq!(p.admit(Some("api"), None, None, 1), Err(Refusal::MissingKey));
        // Unregistered projects on the native endpoint: allowed by default, without a key.
        assert_eq!(p.admit(Some("other"), None, None, 1).unwrap().slug, "other");
    }

    #[test]
    fn uploads_need_a_registered_project_and_its_key() {
        let mut cfg = Config { projects: projects(0.0, 0.0).projects, ..Config::default() };
        cfg.projects.push(ProjectConfig {
            slug: "open".into(),
            id: None,
            keys: Vec::new(),
            rate_per_sec: 0.0,
            burst: 0.0,
            key_rate_per_sec: 0.0,
            key_burst: 0.0,
        });
        let p = Projects::new(&cfg).unwrap();
        assert_eq!(p.admit_upload("web", Some("webkey456")).unwrap().slug, "web");
        assert_eq!(p.admit_upload("1", Some("webkey123")).unwrap().slug, "web", "by Sentry id");
        assert_eq!(p.admit_upload("web", None), Err(Refusal::MissingKey));
        assert!(matches!(p.admit_upload("web", Some("apikey123")), Err(Refusal::Forbidden(_))));
        // Unregistered projects (allowed for events here) and projects without keys are not.
        assert!(matches!(p.admit_upload("other", None), Err(Refusal::Forbidden(w)) if w.contains("not registered")));
        assert!(matches!(p.admit_upload("open", None), Err(Refusal::Forbidden(w)) if w.contains("no keys")));
    }

    #[test]
    fn project_and_key_buckets_limit_independently() {
        let p = projects(10.0, 0.0);
        assert!(p.admit(Some("web"), None, Some("webkey123"), 10).is_ok());
        assert!(matches!(
            p.admit(Some("web"), None, Some("webkey456"), 1),
            Err(Refusal::RateLimited { scope: "project", .. })
        ));
        assert!(p.admit(Some("api"), None, Some("apikey123"), 1000).is_ok(), "other projects are unaffected");
        let k = projects(0.0, 5.0);
        assert!(k.admit(Some("web"), None, Some("webkey123"), 5).is_ok());
        assert!(matches!(
            k.admit(Some("web"), None, Some("webkey123"), 1),
            Err(Refusal::RateLimited { scope: "key", retry_after: 1 })
        ));
        assert!(
            k.admit(Some("web"), None, Some("webkey456"), 5).is_ok(),
            "another key of the project has its own bucket"
        );
    }

    #[test]
    fn refusals_cost_no_tokens() {
        let p = projects(10.0, 0.0);
        assert!(p.admit(Some("web"), None, Some("webkey123"), 11).is_err());
        assert!(p.admit(Some("web"), None, Some("webkey123"), 10).is_ok());
    }

    /// Tokens taken for events that the pipeline refuses after admission (backpressure, Kafka)
    /// are given back: a retry of the same events is not rate limited for them.
    #[test]
    fn events_refused_after_admission_give_their_tokens_back() {
        let p = projects(10.0, 4.0);
        let a = p.admit(Some("web"), None, Some("webkey123"), 4).unwrap();
        assert!(matches!(p.admit(Some("web"), None, Some("webkey123"), 1), Err(Refusal::RateLimited { .. })));
        p.give_back(&a);
        assert!(p.admit(Some("web"), None, Some("webkey123"), 4).is_ok(), "the key's bucket is full again");
        // The project's bucket got its 4 back too: 6 left after the retry, room for 4 more, not 8.
        assert!(p.admit(Some("web"), None, Some("webkey456"), 4).is_ok());
        assert!(matches!(
            p.admit(Some("web"), None, Some("webkey456"), 4),
            Err(Refusal::RateLimited { scope: "project", .. })
        ));
        // Never over the burst, and nothing to give back for unlimited projects or uploads.
        let q = projects(10.0, 0.0);
        let a = q.admit(Some("web"), None, Some("webkey123"), 3).unwrap();
        q.give_back(&a);
        q.give_back(&a);
        assert!(matches!(q.admit(Some("web"), None, Some("webkey123"), 11), Err(Refusal::OverBurst { .. })));
        assert!(q.admit(Some("web"), None, Some("webkey123"), 10).is_ok());
        assert!(q.admit(Some("web"), None, Some("webkey123"), 1).is_err(), "10 tokens, not 13");
        let free = q.admit(Some("api"), None, Some("apikey123"), 5).unwrap();
        q.give_back(&free);
        q.give_back(&q.admit_upload("web", Some("webkey123")).unwrap());
        assert_eq!(q.bucket_count(), 1);
    }

    #[test]
    fn requests_over_a_burst_get_413_not_429() {
        let p = projects(10.0, 0.0);
        assert_eq!(
            p.admit(Some("web"), None, Some("webkey123"), 11),
            Err(Refusal::OverBurst { events: 11, burst: 10, scope: "project" })
        );
        // It cost nothing: the whole burst is still there.
        assert!(p.admit(Some("web"), None, Some("webkey123"), 10).is_ok());
        let k = projects(0.0, 3.0);
        assert!(matches!(
            k.admit(None, Some(1), Some("webkey456"), 4),
            Err(Refusal::OverBurst { scope: "key", burst: 3, .. })
        ));
    }

    #[test]
    fn unknown_keys_and_slugs_create_no_buckets() {
        let mut cfg = Config {
            projects: vec![ProjectConfig {
                slug: "open".into(),
                id: Some(7),
                keys: Vec::new(),
                rate_per_sec: 0.0,
                burst: 0.0,
                key_rate_per_sec: 5.0,
                key_burst: 0.0,
            }],
            ..Config::default()
        };
        cfg.projects.extend(projects(100.0, 100.0).projects);
        cfg.http.unregistered_rate_per_sec = 1000.0;
        let p = Projects::new(&cfg).unwrap();
        for i in 0..2000 {
            let junk = format!("attacker-chosen-key-{i}");
            // A keyless project ignores the key: no bucket for it.
            assert!(p.admit(Some("open"), None, Some(&junk), 1).is_ok());
            // A wrong key is refused before any bucket.
            assert!(matches!(p.admit(Some("web"), None, Some(&junk), 1), Err(Refusal::Forbidden(_))));
            assert!(matches!(p.admit(None, Some(1), Some(&junk), 1), Err(Refusal::Forbidden(_))));
            // Unregistered projects share one bucket, whatever their names.
            let _ = p.admit(Some(&format!("p{i}")), None, Some(&junk), 0);
            let _ = p.admit(Some(&format!("q{i}")), None, None, 1);
        }
        assert!(p.admit(Some("web"), None, Some("webkey123"), 1).is_ok());
        // web's project bucket, webkey123's bucket, the shared unregistered bucket.
        assert_eq!(p.bucket_count(), 3);
    }

    #[test]
    fn unregistered_projects_share_one_bucket() {
        let mut cfg = Config::default();
        cfg.http.unregistered_rate_per_sec = 1.0;
        cfg.http.unregistered_burst = 10.0;
        let p = Projects::new(&cfg).unwrap();
        assert!(p.admit(Some("a"), None, None, 6).is_ok());
        assert!(matches!(p.admit(Some("b"), None, None, 6), Err(Refusal::RateLimited { scope: "unregistered", .. })));
        assert!(p.admit(Some("c"), None, None, 4).is_ok());
        assert!(matches!(p.admit(Some("d"), None, None, 11), Err(Refusal::OverBurst { scope: "unregistered", .. })));
        // The default: no limit, so `tracefold dev` and the load generator run unthrottled.
        let open = Projects::new(&Config::default()).unwrap();
        assert!(open.admit(Some("a"), None, None, 1_000_000).is_ok());
        assert_eq!(open.bucket_count(), 0);
    }

    #[test]
    fn keys_are_found_among_all_of_a_project() {
        let keys: Vec<String> = vec!["aaaaaaaa".into(), "bbbbbbbb".into(), "cccccccc".into()];
        assert_eq!(find_key(&keys, "aaaaaaaa"), Some(0));
        assert_eq!(find_key(&keys, "cccccccc"), Some(2));
        assert_eq!(find_key(&keys, "cccccccd"), None);
        assert_eq!(find_key(&keys, "ccccccc"), None);
        assert_eq!(find_key(&keys, ""), None);
        assert_eq!(find_key(&[], "aaaaaaaa"), None);
    }

    #[test]
    fn bad_entries_are_named() {
        let mut cfg = Config {
            projects: vec![
                ProjectConfig {
                    slug: "web".into(),
                    id: Some(1),
                    keys: vec!["samekey123".into()],
                    rate_per_sec: 0.0,
                    burst: 0.0,
                    key_rate_per_sec: 0.0,
                    key_burst: 0.0,
                },
                ProjectConfig {
                    slug: "api".into(),
                    id: Some(2),
                    keys: vec!["samekey123".into()],
                    rate_per_sec: 0.0,
                    burst: 0.0,
                    key_rate_per_sec: 0.0,
                    key_burst: 0.0,
                },
            ],
            ..Config::default()
        };
        assert!(Projects::new(&cfg).unwrap_err().contains("projects[1].keys"));
        cfg.projects[1].keys = vec!["short".into()];
        assert!(Projects::new(&cfg).unwrap_err().contains("at least 8"));
        // A burst under one event would refuse every request of the project with 413.
        cfg.projects[1].keys = vec!["apikey123".into()];
        cfg.projects[1].rate_per_sec = 10.0;
        cfg.projects[1].burst = 0.5;
        assert!(Projects::new(&cfg).unwrap_err().contains("projects[1].burst"));
        cfg.projects[1].burst = 1.0;
        cfg.projects[1].key_burst = 0.25;
        assert!(Projects::new(&cfg).unwrap_err().contains("projects[1].key_burst"));
        cfg.projects[1].key_burst = 0.0;
        assert!(Projects::new(&cfg).is_ok());
    }

    #[test]
    fn keys_from_requests() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-sentry-auth",
            "Sentry sentry_version=7, sentry_client=sentry.python/2.19.0, sentry_key=abc12345".parse().unwrap(),
        );
        assert_eq!(request_key(&h, None).as_deref(), Some("abc12345"));
        assert_eq!(
            request_key(&HeaderMap::new(), Some("sentry_version=7&sentry_key=qwerty12")).as_deref(),
            Some("qwerty12")
        );
        let mut b = HeaderMap::new();
        b.insert("authorization", "Bearer tok12345".parse().unwrap());
        assert_eq!(request_key(&b, None).as_deref(), Some("tok12345"));
        assert_eq!(dsn_key("https://abc12345@o1.ingest.example.com/42").as_deref(), Some("abc12345"));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, value.parse().unwrap());
        }
        h
    }

    /// An empty `sentry_key=` is no key, as for Sentry: it does not hide the key the query
    /// string (or another header) carries, so the request is admitted, not refused 403.
    #[test]
    fn an_empty_sentry_key_hides_no_other_key() {
        let p = projects(0.0, 0.0);
        let auth = headers(&[("x-sentry-auth", "Sentry sentry_version=7, sentry_key=, sentry_client=raven-js/3.27")]);
        let key = request_key(&auth, Some("sentry_version=7&sentry_key=webkey123"));
        assert_eq!(key.as_deref(), Some("webkey123"));
        assert_eq!(p.admit(None, Some(1), key.as_deref(), 1).unwrap().slug, "web");
        // Nothing anywhere: a missing key (401), not a wrong one (403).
        assert_eq!(request_key(&auth, None), None);
        assert_eq!(
            p.admit(None, Some(1), request_key(&auth, Some("sentry_key=")).as_deref(), 1),
            Err(Refusal::MissingKey)
        );
        // Empty values in the query, X-Tracefold-Key and Bearer are skipped too.
        assert_eq!(
            request_key(&HeaderMap::new(), Some("sentry_key=&sentry_key=webkey456")).as_deref(),
            Some("webkey456")
        );
        let h = headers(&[
            ("x-sentry-auth", "Sentry sentry_key= "),
            ("x-tracefold-key", " "),
            ("authorization", "Bearer webkey123"),
        ]);
        assert_eq!(request_key(&h, None).as_deref(), Some("webkey123"));
        // A DSN without a key in an envelope header is no key (401), not a wrong one (403).
        assert_eq!(dsn_key("https://@o1.ingest.example.com/42"), None);
        assert_eq!(dsn_key("https://:secret@o1.ingest.example.com/42"), None);
        assert_eq!(dsn_key("https://abc12345:secret@o1.ingest.example.com/42").as_deref(), Some("abc12345"));
        // An empty key in X-Sentry-Auth does not hide `Authorization: Sentry sentry_key=...`.
        let h = headers(&[("x-sentry-auth", "Sentry sentry_key="), ("authorization", "Sentry sentry_key=webkey456")]);
        assert_eq!(request_key(&h, None).as_deref(), Some("webkey456"));
    }

    /// `X-Sentry-Auth` as Sentry reads it: the scheme in any case, spaces around names and
    /// values, the items in any order; a header without the scheme is read as before.
    #[test]
    fn sentry_auth_headers_in_the_forms_sdks_send() {
        for h in [
            "Sentry sentry_key=abc12345",
            "sentry sentry_version=7,sentry_key=abc12345",
            "SENTRY  sentry_key = abc12345 , sentry_version=7",
            "Sentry sentry_version=7, sentry_client=sentry.java/7.0.0, sentry_key=abc12345, sentry_secret=s3cr3t",
            "sentry_key=abc12345, sentry_version=7",
            "Sentry sentry_key=, sentry_key=abc12345",
        ] {
            assert_eq!(sentry_auth_key(h).as_deref(), Some("abc12345"), "{h:?}");
        }
        for h in ["Sentry sentry_key=", "Sentry sentry_version=7", "", "Sentry", "sentry_keys=abc12345", "Sentryé"] {
            assert_eq!(sentry_auth_key(h), None, "{h:?}");
        }
        let lower = headers(&[("authorization", "sentry sentry_key=abc12345")]);
        assert_eq!(request_key(&lower, None).as_deref(), Some("abc12345"));
    }
}
