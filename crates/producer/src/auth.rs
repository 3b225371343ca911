//! Projects, keys and rate limits of the ingest edge.
//!
//! A request names its project (a slug on the native endpoint, a numeric id on the Sentry
//! endpoints) and carries a public key (`X-Sentry-Auth: Sentry sentry_key=...`, the
//! `sentry_key` query parameter, `X-Tracefold-Key`, or `Authorization: Bearer ...`). Rate
//! limits are token buckets per project and per key, in this producer replica's memory.

use crate::config::{Config, ProjectConfig};
use axum::http::HeaderMap;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

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
        /// `project` or `key`.
        scope: &'static str,
    },
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket refilled at `rate` per second up to `burst`.
fn take(b: &mut Bucket, rate: f64, burst: f64, n: f64, now: Instant) -> Result<(), u64> {
    let burst = if burst > 0.0 { burst } else { rate.max(1.0) };
    b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(burst);
    b.last = now;
    if n <= b.tokens {
        b.tokens -= n;
        Ok(())
    } else {
        let missing = n.min(burst) - b.tokens;
        Err((missing / rate).ceil().max(1.0) as u64)
    }
}

/// The registered projects and their buckets.
#[derive(Debug)]
pub struct Projects {
    projects: Vec<ProjectConfig>,
    by_slug: HashMap<String, usize>,
    by_id: HashMap<u64, usize>,
    allow_unregistered: bool,
    buckets: Mutex<HashMap<(usize, Option<String>), Bucket>>,
}

/// A project a request was admitted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The project's slug.
    pub slug: String,
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
            }
            if p.rate_per_sec < 0.0 || p.key_rate_per_sec < 0.0 || p.burst < 0.0 || p.key_burst < 0.0 {
                return Err(format!("projects[{i}]: rates and bursts must not be negative"));
            }
        }
        Ok(Self {
            projects: cfg.projects.clone(),
            by_slug,
            by_id,
            allow_unregistered: cfg.http.allow_unregistered_projects,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Admits `events` events for the project named by slug (native endpoint) or by numeric
    /// id (Sentry endpoints), with `key` from the request.
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
                (Some(s), true) => Ok(Admitted { slug: s.to_owned() }),
                (Some(s), false) => Err(Refusal::Forbidden(format!("project {s:?} is not registered"))),
                (None, _) => Err(Refusal::Forbidden(format!("project id {} is not registered", id.unwrap_or(0)))),
            };
        };
        let p = &self.projects[idx];
        // The Sentry endpoints (by id) always need a key; the native one when keys are set.
        if !p.keys.is_empty() || slug.is_none() {
            match key {
                None => return Err(Refusal::MissingKey),
                Some(k) if !p.keys.iter().any(|pk| pk == k) => {
                    return Err(Refusal::Forbidden(format!("the key is not valid for project {:?}", p.slug)))
                }
                Some(_) => {}
            }
        }
        let now = Instant::now();
        let n = events as f64;
        let mut buckets = self.buckets.lock().expect("not poisoned");
        // Check both buckets before taking from either, so a refusal costs no tokens.
        let mut take_from = |k: Option<String>, rate: f64, burst: f64, dry: bool| -> Result<(), u64> {
            if rate <= 0.0 {
                return Ok(());
            }
            let b = buckets
                .entry((idx, k))
                .or_insert(Bucket { tokens: if burst > 0.0 { burst } else { rate.max(1.0) }, last: now });
            if dry {
                let saved = Bucket { tokens: b.tokens, last: b.last };
                let r = take(b, rate, burst, n, now);
                *b = saved;
                r
            } else {
                take(b, rate, burst, n, now)
            }
        };
        let key_owned = key.map(str::to_owned);
        take_from(None, p.rate_per_sec, p.burst, true)
            .map_err(|s| Refusal::RateLimited { retry_after: s, scope: "project" })?;
        if key_owned.is_some() {
            take_from(key_owned.clone(), p.key_rate_per_sec, p.key_burst, true)
                .map_err(|s| Refusal::RateLimited { retry_after: s, scope: "key" })?;
        }
        let _ = take_from(None, p.rate_per_sec, p.burst, false);
        if key_owned.is_some() {
            let _ = take_from(key_owned, p.key_rate_per_sec, p.key_burst, false);
        }
        Ok(Admitted { slug: p.slug.clone() })
    }
}

/// The public key of a request: `X-Sentry-Auth` (`sentry_key=`), the `sentry_key` query
/// parameter, `X-Tracefold-Key`, or `Authorization: Bearer`.
pub fn request_key(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(auth) = header("x-sentry-auth").or_else(|| header("authorization").filter(|a| a.starts_with("Sentry ")))
    {
        if let Some(k) = sentry_auth_key(auth) {
            return Some(k);
        }
    }
    if let Some(k) = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("sentry_key="))) {
        return Some(k.to_owned());
    }
    if let Some(k) = header("x-tracefold-key") {
        return Some(k.trim().to_owned());
    }
    header("authorization").and_then(|a| a.strip_prefix("Bearer ")).map(|k| k.trim().to_owned())
}

/// `Sentry sentry_version=7, sentry_client=x/1.0, sentry_key=abc, sentry_secret=...` -> `abc`.
pub fn sentry_auth_key(header: &str) -> Option<String> {
    let body = header.trim().strip_prefix("Sentry").unwrap_or(header).trim();
    body.split(',').map(str::trim).find_map(|kv| kv.strip_prefix("sentry_key=")).map(|k| k.trim().to_owned())
}

/// The key in a DSN (`https://KEY@host/ID`), as envelope headers carry it.
pub fn dsn_key(dsn: &str) -> Option<String> {
    let rest = dsn.split_once("://")?.1;
    let (user, _) = rest.split_once('@')?;
    Some(user.split(':').next().unwrap_or(user).to_owned())
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
}
