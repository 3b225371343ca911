//! Feeding [`crate::symbolicate_frames`] from the object store without stalling the caller
//! without bound: a bounded cache of parsed maps ([`MapCache`]), fetches on a small runtime of
//! this module's own with bounded concurrency, a negative cache with a short TTL (a release
//! without maps costs one fetch per TTL, not one per event), and a time budget per call.
//!
//! [`Symbolicator::maps`] is synchronous (the grouper's hot path is): it starts the fetches of
//! the keys it lacks, waits at most until the deadline, and says per key what it found.

use crate::store::{ArtifactKind, ArtifactStore, StoreError};
use crate::{Limits, MapCache, MapError, MapKey, ParsedMap};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Options of a [`Symbolicator`].
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Most parsed maps kept.
    pub cache_entries: usize,
    /// Most bytes of parsed maps kept ([`ParsedMap::cost`]).
    pub cache_bytes: usize,
    /// Most fetches from the store at once.
    pub max_concurrent_fetches: usize,
    /// How long a missing or unusable map is remembered as such.
    pub negative_ttl: Duration,
    /// Parsing limits.
    pub limits: Limits,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            cache_entries: 256,
            cache_bytes: 512 << 20,
            max_concurrent_fetches: 4,
            negative_ttl: Duration::from_secs(10),
            limits: Limits::default(),
        }
    }
}

/// What became of one key in [`Symbolicator::maps`].
#[derive(Debug, Clone)]
pub enum Found {
    /// The parsed map.
    Map(Arc<ParsedMap>),
    /// No map was uploaded for the key (or the store could not be read; logged).
    Missing,
    /// The uploaded map is not usable (logged once per negative TTL).
    Malformed,
    /// Still being fetched when the deadline came.
    Timeout,
}

#[derive(Debug, Clone, Copy)]
enum Negative {
    Missing,
    Malformed,
}

#[derive(Debug)]
struct State {
    cache: MapCache,
    negative: HashMap<MapKey, (Instant, Negative)>,
    inflight: HashSet<MapKey>,
}

#[derive(Debug)]
struct Shared {
    store: ArtifactStore,
    opts: FetchOptions,
    state: Mutex<State>,
    done: Condvar,
    permits: tokio::sync::Semaphore,
}

/// Maps from an [`ArtifactStore`], cached; see the module docs. One per process is enough.
#[derive(Debug)]
pub struct Symbolicator {
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Symbolicator {
    fn drop(&mut self) {
        // Fetches still running are abandoned; dropping a runtime must not block.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Symbolicator {
    /// A symbolicator over `store`, with a runtime of one thread for its fetches.
    ///
    /// # Errors
    /// When the runtime cannot be started.
    pub fn new(store: ArtifactStore, opts: FetchOptions) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(opts.max_concurrent_fetches.max(1))
            .thread_name("tracefold-symbolicate")
            .enable_all()
            .build()?;
        let state = State {
            cache: MapCache::new(opts.cache_entries, opts.cache_bytes),
            negative: HashMap::new(),
            inflight: HashSet::new(),
        };
        let shared = Arc::new(Shared {
            store,
            permits: tokio::sync::Semaphore::new(opts.max_concurrent_fetches.max(1)),
            opts,
            state: Mutex::new(state),
            done: Condvar::new(),
        });
        Ok(Self { shared, rt: Some(rt) })
    }

    /// What is known of each of `keys`, waiting for fetches at most until `deadline`: keys in
    /// the cache or the negative cache answer at once; the others are fetched (at most one
    /// fetch per key at a time) and those not done by the deadline answer
    /// [`Found::Timeout`] (their fetch goes on and fills the cache for later events).
    pub fn maps(&self, keys: &[MapKey], deadline: Instant) -> Vec<Found> {
        let mut out: Vec<Option<Found>> = vec![None; keys.len()];
        let mut state = self.shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            let now = Instant::now();
            let mut waiting = false;
            for (k, slot) in keys.iter().zip(out.iter_mut()) {
                if slot.is_some() {
                    continue;
                }
                if let Some(m) = state.cache.get(k) {
                    *slot = Some(Found::Map(m));
                    continue;
                }
                match state.negative.get(k) {
                    Some((until, n)) if *until > now => {
                        *slot = Some(match n {
                            Negative::Missing => Found::Missing,
                            Negative::Malformed => Found::Malformed,
                        });
                        continue;
                    }
                    Some(_) => {
                        state.negative.remove(k);
                    }
                    None => {}
                }
                if state.inflight.insert(k.clone()) {
                    self.spawn(k.clone());
                }
                waiting = true;
            }
            if !waiting {
                break;
            }
            let Some(left) = deadline.checked_duration_since(now).filter(|d| !d.is_zero()) else { break };
            state = self.shared.done.wait_timeout(state, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
        out.into_iter().map(|f| f.unwrap_or(Found::Timeout)).collect()
    }

    fn spawn(&self, key: MapKey) {
        let Some(rt) = &self.rt else { return };
        let shared = Arc::clone(&self.shared);
        rt.spawn(async move {
            let result = match shared.permits.acquire().await {
                Ok(_permit) => fetch(&shared, &key).await,
                Err(_) => Err(Negative::Missing),
            };
            let mut state = shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            state.inflight.remove(&key);
            match result {
                Ok(map) => {
                    state.cache.insert(key.clone(), Arc::clone(&map));
                    if state.cache.get(&key).is_none() {
                        // Larger than the whole cache: remembered as unusable, not fetched again and again.
                        tracing::warn!(
                            ?key,
                            cost = map.cost(),
                            "source map larger than the symbolication cache; not used"
                        );
                        state.negative.insert(key, (Instant::now() + shared.opts.negative_ttl, Negative::Malformed));
                    }
                }
                Err(n) => {
                    prune(&mut state.negative);
                    state.negative.insert(key, (Instant::now() + shared.opts.negative_ttl, n));
                }
            }
            drop(state);
            shared.done.notify_all();
        });
    }

    /// Maps cached now and maps evicted so far (for metrics).
    pub fn cache_stats(&self) -> (usize, usize, u64) {
        let s = self.shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (s.cache.len(), s.cache.bytes(), s.cache.evictions())
    }
}

/// Drops expired negative entries when the table grows (bounded by the keys seen per TTL).
fn prune(negative: &mut HashMap<MapKey, (Instant, Negative)>) {
    if negative.len() >= 4096 {
        let now = Instant::now();
        negative.retain(|_, (until, _)| *until > now);
    }
}

async fn fetch(shared: &Shared, key: &MapKey) -> Result<Arc<ParsedMap>, Negative> {
    let store = &shared.store;
    let limits = &shared.opts.limits;
    // Objects larger than the parser takes are not read at all (the store may hold anything).
    let get = |kind| async move {
        let max = match kind {
            ArtifactKind::Map => limits.max_map_bytes,
            ArtifactKind::Minified => limits.max_minified_bytes,
        };
        let max = u64::try_from(max).unwrap_or(u64::MAX);
        match key {
            MapKey::Url { project, release, url } => store.get(project, release, url, kind, max).await,
            MapKey::DebugId { project, id } => store.get_by_debug_id(project, id, kind, max).await,
        }
    };
    let map = match get(ArtifactKind::Map).await {
        Ok(Some(b)) => b,
        Ok(None) => return Err(Negative::Missing),
        Err(error @ StoreError::TooLarge { .. }) => {
            tracing::warn!(?key, %error, "uploaded source map is larger than the limit; not read, frames stay minified");
            return Err(Negative::Malformed);
        }
        Err(error) => {
            tracing::warn!(?key, %error, "cannot read a source map from the artifact store; frames stay minified");
            return Err(Negative::Missing);
        }
    };
    // The minified file only improves function names: without it the map still serves.
    let minified = match get(ArtifactKind::Minified).await {
        Ok(Some(b)) => String::from_utf8(b.to_vec()).ok(),
        _ => None,
    };
    let limits = shared.opts.limits.clone();
    let parsed = tokio::task::spawn_blocking(move || ParsedMap::parse(&map, minified.as_deref(), &limits))
        .await
        .map_err(|_| {
            tracing::warn!(?key, "parsing a source map failed unexpectedly");
            Negative::Malformed
        })?;
    parsed.map(Arc::new).map_err(|error: MapError| {
        tracing::warn!(?key, %error, "uploaded source map is not usable; frames stay minified");
        Negative::Malformed
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const MAP: &str = r#"{"version":3,"sources":["src/app.ts"],"names":["fail"],"mappings":"AAAA,SAASA"}"#;

    fn key(url: &str) -> MapKey {
        MapKey::Url { project: "web".into(), release: "1".into(), url: url.into() }
    }

    #[test]
    fn fetches_caches_and_remembers_what_is_missing_or_malformed() {
        let mem = Arc::new(object_store::memory::InMemory::new());
        let store = ArtifactStore::new(mem);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            store.put("web", "1", "~/a.js", None, ArtifactKind::Map, Bytes::from_static(MAP.as_bytes())).await.unwrap();
            store.put("web", "1", "~/bad.js", None, ArtifactKind::Map, Bytes::from_static(b"{nope")).await.unwrap();
        });
        let s = Symbolicator::new(store.clone(), FetchOptions::default()).unwrap();
        let far = || Instant::now() + Duration::from_secs(60);
        let got = s.maps(&[key("~/a.js"), key("~/bad.js"), key("~/none.js")], far());
        assert!(matches!(got[0], Found::Map(_)), "{got:?}");
        assert!(matches!(got[1], Found::Malformed), "{got:?}");
        assert!(matches!(got[2], Found::Missing), "{got:?}");
        // Cached: answered without a fetch even after the map is uploaded (until the TTL).
        rt.block_on(async {
            store
                .put("web", "1", "~/none.js", None, ArtifactKind::Map, Bytes::from_static(MAP.as_bytes()))
                .await
                .unwrap();
        });
        assert!(matches!(s.maps(&[key("~/none.js")], Instant::now())[0], Found::Missing));
        assert!(matches!(s.maps(&[key("~/a.js")], Instant::now())[0], Found::Map(_)));
        assert_eq!(s.cache_stats().0, 1);
        // A deadline already past: a key not yet known times out, and its fetch goes on.
        let late = s.maps(&[key("~/other.js")], Instant::now());
        assert!(matches!(late[0], Found::Timeout | Found::Missing), "{late:?}");
    }

    /// A map in the store larger than `max_map_bytes` (put there by other means than the upload
    /// endpoint, which refuses it) is not read: the store reports its size before its body. Before,
    /// the whole object was read into memory and only then refused by the parser, so a huge
    /// object cost every fetch of it that much memory (the grouper's, up to 4 at once).
    #[test]
    fn a_map_larger_than_the_limit_is_refused_without_being_read() {
        let dir = std::env::temp_dir().join(format!("tracefold-huge-map-{}", std::process::id()));
        let store = ArtifactStore::from_url(&format!("file://{}", dir.display())).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let stored = rt
            .block_on(store.put("web", "1", "~/huge.js", None, ArtifactKind::Map, Bytes::from_static(MAP.as_bytes())))
            .unwrap();
        // Grown to 64 GiB without writing it (a sparse file): reading it would take that much.
        let huge: u64 = 64 << 30;
        let file = dir.join(&stored.paths[0]);
        std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(huge).unwrap();
        let refused = rt.block_on(store.get("web", "1", "~/huge.js", ArtifactKind::Map, 1 << 20));
        let bound =
            matches!(refused, Err(StoreError::TooLarge { size, limit, .. }) if size == huge && limit == 1 << 20);
        let s = Symbolicator::new(store, FetchOptions::default()).unwrap();
        let got = s.maps(&[key("~/huge.js")], Instant::now() + Duration::from_secs(600));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(bound, "{refused:?}");
        assert!(matches!(got[0], Found::Malformed), "{got:?}");
    }
}
