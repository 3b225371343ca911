//! Uploaded artifacts (source maps and their minified files) in an object store, through the
//! `object_store` crate. The store is named by a URL: `file:///var/lib/tracefold/artifacts`
//! (built in), `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` (with this
//! crate's `s3`, `gcs`, `azure` features; credentials from the usual environment variables,
//! `AWS_*`, `GOOGLE_*`, `AZURE_*`).
//!
//! Layout under the URL's path:
//! - `<project>/<release>/<sha256 of url_key>`: the map of the minified file `url_key`;
//! - `<project>/<release>/<sha256 of url_key>.minified`: that minified file;
//! - `<project>/debug-id/<debug id>` and `<project>/debug-id/<debug id>.minified`: the same
//!   objects by debug id, when the upload named one.
//!
//! The release is one path segment, percent-encoded by `object_store` where it has characters
//! a path segment cannot hold (`/`, `..`, control characters), so any release string of at
//! most [`MAX_RELEASE_BYTES`] maps to exactly one object.

use bytes::Bytes;
use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, PutPayload};
use sha2::{Digest as _, Sha256};
use std::sync::Arc;

/// Longest release name accepted, bytes (the events' own limit).
pub const MAX_RELEASE_BYTES: usize = 200;

/// What an artifact is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArtifactKind {
    /// A source map (`.js.map`).
    Map,
    /// The minified file the map is for (`.js`), for original function names.
    Minified,
}

impl ArtifactKind {
    /// `map` or `minified`, as the `artifacts` table and the upload endpoint name it.
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Map => "map",
            ArtifactKind::Minified => "minified",
        }
    }

    /// The kind named `s` (`map` or `minified`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "map" => Some(ArtifactKind::Map),
            "minified" => Some(ArtifactKind::Minified),
            _ => None,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            ArtifactKind::Map => "",
            ArtifactKind::Minified => ".minified",
        }
    }
}

/// Why the store failed or refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store URL is not usable (bad URL, a scheme this build has no feature for, a local
    /// directory that cannot be created).
    #[error("artifact store {url:?}: {why}")]
    Config {
        /// The URL as configured.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// A key of the artifact is not acceptable (empty, too long, not a debug id).
    #[error("invalid {field}: {why}")]
    InvalidKey {
        /// `project`, `release`, `url` or `debug_id`.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The object is larger than the reader's bound: not read.
    #[error("artifact store object {what} is {size} bytes, more than the {limit} read at most")]
    TooLarge {
        /// The object's path.
        what: String,
        /// Its size, as the store reports it.
        size: u64,
        /// The bound it passed.
        limit: u64,
    },
    /// The object store failed (I/O, network); worth a retry.
    #[error("artifact store {what}")]
    Io {
        /// What was being done.
        what: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
}

/// What [`ArtifactStore::put`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Object paths written (by url key; by debug id when there is one).
    pub paths: Vec<String>,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes, lower-case hex.
    pub sha256: String,
    /// The debug id in canonical form, when one was given.
    pub debug_id: Option<String>,
}

/// Artifacts in an object store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    Sha256::digest(bytes).iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn check_project(project: &str) -> Result<(), StoreError> {
    let ok = !project.is_empty()
        && project.len() <= 64
        && project.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidKey { field: "project", why: format!("{project:?} is not a project slug") })
    }
}

/// Checks a release name as the store takes it: not empty, at most [`MAX_RELEASE_BYTES`].
///
/// # Errors
/// [`StoreError::InvalidKey`] naming the problem.
pub fn check_release(release: &str) -> Result<(), StoreError> {
    if release.is_empty() {
        return Err(StoreError::InvalidKey { field: "release", why: "must not be empty".into() });
    }
    if release.len() > MAX_RELEASE_BYTES {
        return Err(StoreError::InvalidKey {
            field: "release",
            why: format!("{} bytes, longer than {MAX_RELEASE_BYTES}", release.len()),
        });
    }
    Ok(())
}

/// The cloud stores' settings among environment variables: `AWS_*`, `GOOGLE_*`, `AZURE_*`,
/// with lower-case names, as `object_store`'s builders name their keys (`aws_region`), the
/// way their own `from_env` reads them.
fn cloud_options(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    vars.into_iter()
        .filter(|(k, _)| ["AWS_", "GOOGLE_", "AZURE_"].iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

impl ArtifactStore {
    /// The store named by `url` (see the module docs). A `file://` directory is created when
    /// it does not exist.
    ///
    /// # Errors
    /// [`StoreError::Config`] when the URL cannot be used.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let bad = |why: String| StoreError::Config { url: url.to_owned(), why };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if parsed.scheme() == "file" {
            let dir = parsed.to_file_path().map_err(|()| bad("not an absolute local path".into()))?;
            std::fs::create_dir_all(&dir).map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(e.to_string()))?;
            return Ok(Self { store: Arc::new(fs), prefix: Path::default() });
        }
        let (store, prefix) = object_store::parse_url_opts(&parsed, cloud_options(std::env::vars())).map_err(|e| {
            bad(format!(
                "{e} (this build stores artifacts in file:// URLs; s3, gcs and azure need their cargo features)"
            ))
        })?;
        Ok(Self { store: Arc::from(store), prefix })
    }

    /// A store over any `object_store` implementation (tests use the in-memory one).
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store, prefix: Path::default() }
    }

    fn path(&self, parts: &[&str], kind: ArtifactKind) -> Path {
        let mut segs: Vec<PathPart<'_>> = self.prefix.parts().collect();
        let last = parts.len() - 1;
        for (i, p) in parts.iter().enumerate() {
            if i == last {
                segs.push(PathPart::from(format!("{p}{}", kind.suffix())));
            } else {
                segs.push(PathPart::from(*p));
            }
        }
        Path::from_iter(segs)
    }

    /// The object of `url_key` in `release` of `project`.
    pub fn url_path(&self, project: &str, release: &str, url_key: &str, kind: ArtifactKind) -> Path {
        self.path(&[project, release, &sha256_hex(url_key.as_bytes())], kind)
    }

    /// The object of `debug_id` (canonical form) of `project`.
    pub fn debug_id_path(&self, project: &str, debug_id: &str, kind: ArtifactKind) -> Path {
        self.path(&[project, "debug-id", debug_id], kind)
    }

    /// Stores `bytes` as the `kind` artifact of `url_key` in `release` of `project`, and by
    /// `debug_id` too when there is one (any form [`crate::normalize_debug_id`] reads). A
    /// second upload of the same key replaces the first.
    ///
    /// # Errors
    /// [`StoreError::InvalidKey`] for a bad project, release, url key or debug id;
    /// [`StoreError::Io`] when the store fails.
    pub async fn put(
        &self,
        project: &str,
        release: &str,
        url_key: &str,
        debug_id: Option<&str>,
        kind: ArtifactKind,
        bytes: Bytes,
    ) -> Result<Stored, StoreError> {
        check_project(project)?;
        check_release(release)?;
        if url_key.is_empty() {
            return Err(StoreError::InvalidKey { field: "url", why: "must not be empty".into() });
        }
        let debug_id = match debug_id {
            Some(d) => Some(
                crate::normalize_debug_id(d)
                    .ok_or_else(|| StoreError::InvalidKey { field: "debug_id", why: format!("{d:?} is not a UUID") })?,
            ),
            None => None,
        };
        let mut paths = vec![self.url_path(project, release, url_key, kind)];
        if let Some(id) = &debug_id {
            paths.push(self.debug_id_path(project, id, kind));
        }
        let out = Stored {
            paths: paths.iter().map(ToString::to_string).collect(),
            size: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
            debug_id,
        };
        for p in paths {
            self.store
                .put(&p, PutPayload::from(bytes.clone()))
                .await
                .map_err(|source| StoreError::Io { what: format!("put {p}"), source })?;
        }
        Ok(out)
    }

    /// The object at `p`, if there is one; one larger than `max_bytes` (by the size the store
    /// reports before its body is read) is refused, so that memory stays bounded whatever the
    /// store holds (an object put there by other means than the upload endpoint, which bounds
    /// what it takes).
    async fn get_path(&self, p: Path, max_bytes: u64) -> Result<Option<Bytes>, StoreError> {
        match self.store.get(&p).await {
            Ok(r) if r.meta.size > max_bytes => {
                Err(StoreError::TooLarge { what: p.to_string(), size: r.meta.size, limit: max_bytes })
            }
            Ok(r) => r.bytes().await.map(Some).map_err(|source| StoreError::Io { what: format!("read {p}"), source }),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(StoreError::Io { what: format!("get {p}"), source }),
        }
    }

    /// The `kind` artifact of `url_key` in `release` of `project`, if one was uploaded; one of
    /// more than `max_bytes` is refused without being read.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the store fails (a missing object is `Ok(None)`);
    /// [`StoreError::TooLarge`] over `max_bytes`.
    pub async fn get(
        &self,
        project: &str,
        release: &str,
        url_key: &str,
        kind: ArtifactKind,
        max_bytes: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        check_project(project)?;
        check_release(release)?;
        self.get_path(self.url_path(project, release, url_key, kind), max_bytes).await
    }

    /// The `kind` artifact of `debug_id` of `project`, if one was uploaded; one of more than
    /// `max_bytes` is refused without being read.
    ///
    /// # Errors
    /// [`StoreError::InvalidKey`] when `debug_id` is not a UUID; [`StoreError::Io`] when the
    /// store fails (a missing object is `Ok(None)`); [`StoreError::TooLarge`] over `max_bytes`.
    pub async fn get_by_debug_id(
        &self,
        project: &str,
        debug_id: &str,
        kind: ArtifactKind,
        max_bytes: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        check_project(project)?;
        let id = crate::normalize_debug_id(debug_id)
            .ok_or_else(|| StoreError::InvalidKey { field: "debug_id", why: format!("{debug_id:?} is not a UUID") })?;
        self.get_path(self.debug_id_path(project, &id, kind), max_bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "C0FFEE00-1234-4abc-8def-0123456789AB";

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().build().unwrap()
    }

    #[test]
    fn put_then_get_by_url_and_by_debug_id() {
        rt().block_on(async {
            let s = ArtifactStore::new(Arc::new(object_store::memory::InMemory::new()));
            let map = Bytes::from_static(b"{\"version\":3}");
            let stored =
                s.put("web", "1.0", "~/static/js/main.js", Some(ID), ArtifactKind::Map, map.clone()).await.unwrap();
            assert_eq!(stored.size, map.len() as u64);
            assert_eq!(stored.sha256, sha256_hex(&map));
            assert_eq!(stored.debug_id.as_deref(), Some("c0ffee00-1234-4abc-8def-0123456789ab"));
            let key = sha256_hex(b"~/static/js/main.js");
            assert_eq!(
                stored.paths,
                [format!("web/1.0/{key}"), "web/debug-id/c0ffee00-1234-4abc-8def-0123456789ab".into()]
            );
            assert_eq!(
                s.get("web", "1.0", "~/static/js/main.js", ArtifactKind::Map, u64::MAX).await.unwrap(),
                Some(map.clone())
            );
            assert_eq!(s.get_by_debug_id("web", ID, ArtifactKind::Map, u64::MAX).await.unwrap(), Some(map));
            // Other kinds, releases, projects and keys are apart.
            assert_eq!(
                s.get("web", "1.0", "~/static/js/main.js", ArtifactKind::Minified, u64::MAX).await.unwrap(),
                None
            );
            assert_eq!(s.get("web", "1.1", "~/static/js/main.js", ArtifactKind::Map, u64::MAX).await.unwrap(), None);
            assert_eq!(s.get("api", "1.0", "~/static/js/main.js", ArtifactKind::Map, u64::MAX).await.unwrap(), None);
            assert_eq!(s.get("web", "1.0", "~/static/js/other.js", ArtifactKind::Map, u64::MAX).await.unwrap(), None);
        });
    }

    #[test]
    fn any_release_is_one_segment_and_keys_are_checked() {
        rt().block_on(async {
            let s = ArtifactStore::new(Arc::new(object_store::memory::InMemory::new()));
            for release in ["a/b", "..", ".", "版本 1.0 🚀", "x\u{301}\n\t%2F", "a\\b"] {
                let b = Bytes::from(release.as_bytes().to_vec());
                s.put("web", release, "~/a.js", None, ArtifactKind::Minified, b.clone()).await.unwrap();
                assert_eq!(
                    s.url_path("web", release, "~/a.js", ArtifactKind::Minified).parts().count(),
                    3,
                    "{release:?}"
                );
                assert_eq!(s.get("web", release, "~/a.js", ArtifactKind::Minified, u64::MAX).await.unwrap(), Some(b));
            }
            let m = |r: Result<Stored, StoreError>| match r {
                Err(StoreError::InvalidKey { field, .. }) => field,
                other => panic!("{other:?}"),
            };
            let b = Bytes::new();
            assert_eq!(m(s.put("Web", "1", "~/a.js", None, ArtifactKind::Map, b.clone()).await), "project");
            assert_eq!(m(s.put("web", "", "~/a.js", None, ArtifactKind::Map, b.clone()).await), "release");
            assert_eq!(
                m(s.put("web", &"r".repeat(201), "~/a.js", None, ArtifactKind::Map, b.clone()).await),
                "release"
            );
            assert_eq!(m(s.put("web", "1", "", None, ArtifactKind::Map, b.clone()).await), "url");
            assert_eq!(m(s.put("web", "1", "~/a.js", Some("nope"), ArtifactKind::Map, b).await), "debug_id");
        });
    }

    #[test]
    fn cloud_settings_come_from_their_environment_variables() {
        let vars = [("AWS_REGION", "eu-west-1"), ("HOME", "/root"), ("GOOGLE_SERVICE_ACCOUNT", "sa.json")];
        let got = cloud_options(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        assert_eq!(
            got,
            [("aws_region".to_owned(), "eu-west-1".to_owned()), ("google_service_account".into(), "sa.json".into())]
        );
    }

    #[cfg(feature = "s3")]
    #[test]
    fn s3_urls_name_a_bucket_and_a_prefix() {
        let s = ArtifactStore::from_url("s3://bucket/some/prefix").unwrap();
        let want = format!("some/prefix/web/1/{}", sha256_hex(b"~/a.js"));
        assert_eq!(s.url_path("web", "1", "~/a.js", ArtifactKind::Map).as_ref(), want);
    }

    #[cfg(not(feature = "s3"))]
    #[test]
    fn s3_urls_say_which_feature_they_need() {
        match ArtifactStore::from_url("s3://bucket/some/prefix") {
            Err(e @ StoreError::Config { .. }) => assert!(e.to_string().contains("cargo features"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn file_urls_store_on_disk() {
        let dir = std::env::temp_dir().join(format!("tracefold-artifacts-{}", std::process::id()));
        let url = url::Url::from_file_path(dir.join("nested")).unwrap().to_string();
        rt().block_on(async {
            let s = ArtifactStore::from_url(&url).unwrap();
            s.put("web", "1.0", "~/a.js", None, ArtifactKind::Map, Bytes::from_static(b"m")).await.unwrap();
            let on_disk = dir.join("nested/web/1.0").join(sha256_hex(b"~/a.js"));
            assert_eq!(std::fs::read(on_disk).unwrap(), b"m");
            // A second store over the same directory reads it.
            let again = ArtifactStore::from_url(&url).unwrap();
            assert_eq!(
                again.get("web", "1.0", "~/a.js", ArtifactKind::Map, u64::MAX).await.unwrap(),
                Some(Bytes::from_static(b"m"))
            );
        });
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(ArtifactStore::from_url("not a url"), Err(StoreError::Config { .. })));
        assert!(matches!(ArtifactStore::from_url("ftp://host/x"), Err(StoreError::Config { .. })));
    }
}
