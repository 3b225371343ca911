//! Source map uploads: `POST /api/{project}/sourcemaps?release=R&url=U[&kind=map|minified][&debug_id=D]`,
//! one artifact per request, the body its bytes (gzip or deflate allowed). `{project}` is the
//! slug or the registered numeric id; the request carries one of the project's keys as the
//! event endpoints take it (uploads need a registered project with keys, see
//! [`crate::auth::Projects::admit_upload`]). `url` is the minified file's URL or its
//! release-relative form (`~/static/js/main.js`; a full URL is reduced with
//! [`tracefold_symbolicate::url_key`]); `kind` defaults to `map`.
//!
//! A map is parsed with [`ParsedMap::parse`] before anything is stored: a bad one gets 400
//! (`code` `invalid_sourcemap`, the parser's reason in `error`), one over
//! `sourcemaps.max_map_bytes` 413. A minified file must be UTF-8 (400) and at most
//! `sourcemaps.max_minified_bytes` (413). The debug id is the query's, else the map's
//! `debug_id`, else the minified file's `//# debugId=`; two that differ get 400. The object goes
//! to the store ([`tracefold_symbolicate::store`]), then a row to ClickHouse's `artifacts`;
//! either failing gets 503 (an upload is idempotent: send it again). Success:
//! `200 {"project", "release", "url", "kind", "debug_id", "size", "sha256"}`.

use crate::auth::request_key;
use crate::http::{decode, read_raw_within, ApiError, AppState};
use crate::metrics as m;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tracefold_symbolicate::store::{check_release, ArtifactKind, ArtifactStore};
use tracefold_symbolicate::{debug_id_of_minified, normalize_debug_id, url_key, Limits, ParsedMap};

/// What the upload endpoint needs: the store, ClickHouse, the limits.
#[derive(Debug)]
pub struct Uploads {
    store: ArtifactStore,
    clickhouse: tracefold_store::Client,
    database: String,
    limits: Limits,
    slots: Arc<Semaphore>,
}

impl Uploads {
    /// The uploads of `cfg`, or `None` when `sourcemaps.store_url` is empty (uploads off).
    ///
    /// # Errors
    /// When the store URL cannot be used.
    pub fn from_config(cfg: &crate::Config) -> Result<Option<Self>, String> {
        let s = &cfg.sourcemaps;
        if s.store_url.is_empty() {
            return Ok(None);
        }
        let store = ArtifactStore::from_url(&s.store_url).map_err(|e| format!("sourcemaps.store_url: {e}"))?;
        Ok(Some(Self {
            store,
            clickhouse: tracefold_store::client::client(&cfg.clickhouse),
            database: cfg.clickhouse.database.clone(),
            limits: Limits {
                max_map_bytes: s.max_map_bytes,
                max_minified_bytes: s.max_minified_bytes,
                ..Limits::default()
            },
            slots: Arc::new(Semaphore::new(s.max_concurrent_uploads)),
        }))
    }
}

/// The success response.
#[derive(Debug, Serialize)]
pub struct Uploaded {
    /// Project slug.
    pub project: String,
    /// Release.
    pub release: String,
    /// The url key it is stored under.
    pub url: String,
    /// `map` or `minified`.
    pub kind: &'static str,
    /// Canonical debug id, when there is one.
    pub debug_id: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes, lower-case hex.
    pub sha256: String,
}

/// The query of an upload.
#[derive(Debug, Default)]
struct Query {
    release: Option<String>,
    url: Option<String>,
    kind: Option<String>,
    debug_id: Option<String>,
}

fn parse_query(q: Option<&str>) -> Query {
    let mut out = Query::default();
    for (k, v) in url::form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        let slot = match &*k {
            "release" => &mut out.release,
            "url" => &mut out.url,
            "kind" => &mut out.kind,
            "debug_id" => &mut out.debug_id,
            _ => continue,
        };
        *slot = Some(v.into_owned());
    }
    out
}

fn bad(status: StatusCode, code: &'static str, why: impl Into<String>) -> ApiError {
    let mut e = ApiError::plain(status, why);
    e.code = Some(code);
    e
}

fn count(outcome: &'static str) {
    metrics::counter!(m::SOURCEMAP_UPLOADS_TOTAL, "outcome" => outcome).increment(1);
}

/// `POST /api/{project}/sourcemaps`.
///
/// # Errors
/// [`ApiError`] with the status and a JSON body naming the problem.
pub async fn upload(
    State(st): State<AppState>,
    Path(project): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Uploaded>, ApiError> {
    let r = upload_inner(st, project, query, headers, body).await;
    match &r {
        Ok(_) => count("stored"),
        Err(e) if e.status().is_server_error() => count("failed"),
        Err(_) => count("refused"),
    }
    r
}

async fn upload_inner(
    st: AppState,
    project: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Uploaded>, ApiError> {
    let Some(up) = st.sourcemaps.clone() else {
        return Err(bad(
            StatusCode::NOT_FOUND,
            "uploads_off",
            "source map uploads are off on this producer: set [sourcemaps] store_url",
        ));
    };
    let key = request_key(&headers, query.as_deref());
    let project = st.projects.admit_upload(&project, key.as_deref())?.slug;
    let q = parse_query(query.as_deref());
    let release = q.release.ok_or_else(|| bad(StatusCode::BAD_REQUEST, "invalid", "release: missing (?release=)"))?;
    check_release(&release).map_err(|e| bad(StatusCode::BAD_REQUEST, "invalid", e.to_string()))?;
    let url = q.url.map(|u| url_key(&u)).filter(|u| !u.is_empty());
    let url = url.ok_or_else(|| bad(StatusCode::BAD_REQUEST, "invalid", "url: missing (?url=~/static/js/main.js)"))?;
    let kind = match q.kind.as_deref() {
        None => ArtifactKind::Map,
        Some(k) => ArtifactKind::parse(k)
            .ok_or_else(|| bad(StatusCode::BAD_REQUEST, "invalid", format!("kind: {k:?} is not map or minified")))?,
    };
    let given_id = match q.debug_id.as_deref() {
        None | Some("") => None,
        Some(d) => Some(
            normalize_debug_id(d)
                .ok_or_else(|| bad(StatusCode::BAD_REQUEST, "invalid", format!("debug_id: {d:?} is not a UUID")))?,
        ),
    };
    let _slot = up.slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::plain(StatusCode::SERVICE_UNAVAILABLE, "too many uploads at once; retry").with_retry_after(1)
    })?;
    let max = match kind {
        ArtifactKind::Map => up.limits.max_map_bytes,
        ArtifactKind::Minified => up.limits.max_minified_bytes,
    };
    let raw = read_raw_within(&st.cfg, &headers, body, max).await?;
    let bytes = decode(&headers, raw, max).await?;
    // Parsing a map of up to 64 MiB is CPU work: on the blocking pool.
    let limits = up.limits.clone();
    let b = bytes.clone();
    let found_id = tokio::task::spawn_blocking(move || -> Result<Option<String>, ApiError> {
        match kind {
            ArtifactKind::Map => match ParsedMap::parse(&b, None, &limits) {
                Ok(map) => Ok(map.debug_id()),
                Err(e @ tracefold_symbolicate::MapError::TooLarge { .. }) => {
                    Err(bad(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string()))
                }
                Err(e) => Err(bad(StatusCode::BAD_REQUEST, "invalid_sourcemap", e.to_string())),
            },
            ArtifactKind::Minified => match std::str::from_utf8(&b) {
                Ok(text) => Ok(debug_id_of_minified(text)),
                Err(e) => Err(bad(StatusCode::BAD_REQUEST, "invalid", format!("the minified file is not UTF-8: {e}"))),
            },
        }
    })
    .await
    .map_err(|e| ApiError::plain(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error: {e}")))??;
    let debug_id = match (given_id, found_id) {
        (Some(a), Some(b)) if a != b => {
            return Err(bad(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("debug_id: the query says {a} but the {} says {b}", kind.as_str()),
            ))
        }
        (a, b) => a.or(b),
    };
    let stored = up.store.put(&project, &release, &url, debug_id.as_deref(), kind, bytes).await.map_err(|e| {
        ApiError::plain(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; send it again")).with_retry_after(1)
    })?;
    let row = tracefold_store::artifacts::ArtifactRow {
        project: project.clone(),
        release: release.clone(),
        url_key: url.clone(),
        kind: kind.as_str().to_owned(),
        debug_id: stored.debug_id.clone().unwrap_or_default(),
        size: stored.size,
        sha256: stored.sha256.clone(),
        uploaded_at: u32::try_from(tracefold_model::time::now_ms().div_euclid(1000)).unwrap_or(0),
    };
    tracefold_store::artifacts::insert(&up.clickhouse, &up.database, &row, Duration::from_secs(10)).await.map_err(
        |e| {
            tracing::warn!(error = %e, project = %project, "artifact stored but its row was not written");
            ApiError::plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the artifact was stored but its metadata was not written ({e}); send it again"),
            )
            .with_retry_after(1)
        },
    )?;
    tracing::info!(project = %project, release = %release, url = %url, kind = kind.as_str(), size = stored.size, "artifact uploaded");
    Ok(Json(Uploaded {
        project,
        release,
        url,
        kind: kind.as_str(),
        debug_id: stored.debug_id,
        size: stored.size,
        sha256: stored.sha256,
    }))
}
