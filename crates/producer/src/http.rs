//! The ingestion endpoints.
//!
//! Native: `POST /api/v1/projects/{project}/events` takes one JSON event, or an NDJSON batch
//! (one event per line; `Content-Type: application/x-ndjson`, or any body with more than one
//! non-empty line). A batch is all or nothing: when any line is invalid, nothing is published
//! and the 400 response lists every bad line. `event_id` and `project` are filled in when the
//! event lacks them; a `project` that differs from the path is an error.
//!
//! Sentry: `POST /api/{project_id}/store/` (one Sentry event) and
//! `POST /api/{project_id}/envelope/` (an envelope; `event` items are ingested, other item
//! types are accepted, skipped and counted), so that a Sentry SDK's DSN can point here.
//!
//! Every endpoint: gzip or deflate bodies; project keys (401 without, 403 with a wrong one);
//! per-project and per-key rate limits (429 with `Retry-After` and `X-Sentry-Rate-Limits`);
//! 413 for bodies and events over the limits, checked before parsing; 503 with `Retry-After`
//! when Kafka does not acknowledge. Responses are JSON: native `200 {"accepted": n, "ids":
//! [...]}`, Sentry `200 {"id": "..."}`; errors `{"error": "...", "details": [{"line": 1,
//! "field": "...", "reason": "..."}]}`.

use crate::auth::{request_key, Projects, Refusal};
use crate::config::Config;
use crate::metrics as m;
use crate::sentry::{decode_body, item_label, parse_envelope, to_tracefold, BodyError};
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracefold_model::validate::is_project_slug;
use tracefold_model::{parse_event_str, validate};
use tracing::Instrument as _;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Config.
    pub cfg: Arc<Config>,
    /// The Kafka producer.
    pub producer: FutureProducer,
    /// Registered projects, keys and rate limits.
    pub projects: Arc<Projects>,
}

/// One problem with a request.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Detail {
    /// 1-based line of an NDJSON body (1 for a single event; the item for an envelope).
    pub line: usize,
    /// JSON path of the offending field, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
    /// The event is over the size limit (the request gets 413 rather than 400).
    #[serde(skip)]
    pub too_large: bool,
}

impl Detail {
    fn invalid(line: usize, field: Option<String>, reason: String) -> Self {
        Self { line, field, reason, too_large: false }
    }

    fn too_large(line: usize, len: usize, max: usize) -> Self {
        Self { line, field: None, reason: format!("event of {len} bytes is larger than {max} bytes"), too_large: true }
    }
}

/// Events refused: nothing of the request is published; 413 when an event is over the size
/// limit, else 400; every problem listed.
fn refused(details: Vec<Detail>, total: usize) -> ApiError {
    metrics::counter!(m::EVENTS_TOTAL, "outcome" => "invalid").increment(details.len() as u64);
    let status =
        if details.iter().any(|d| d.too_large) { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST };
    let mut e = ApiError::new(status, format!("{} of {total} events are invalid; nothing was accepted", details.len()));
    e.details = details;
    e
}

/// Counts a successful request.
fn record_ok(t0: Instant) {
    metrics::counter!(m::REQUESTS_TOTAL, "status" => "200").increment(1);
    metrics::histogram!(m::REQUEST_SECONDS).record(t0.elapsed().as_secs_f64());
}

/// An error response.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    #[serde(skip)]
    retry_after_secs: Option<u64>,
    #[serde(skip)]
    sentry_rate_limit: Option<String>,
    /// Summary.
    pub error: String,
    /// Per-line problems.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Detail>,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self { status, retry_after_secs: None, sentry_rate_limit: None, error: error.into(), details: Vec::new() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!(m::REQUESTS_TOTAL, "status" => self.status.as_u16().to_string()).increment(1);
        let mut resp = (self.status, Json(&self)).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        if let Some(v) = self.sentry_rate_limit.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            resp.headers_mut().insert("x-sentry-rate-limits", v);
        }
        resp
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::MissingKey => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing project key: send X-Sentry-Auth (sentry_key=...), ?sentry_key=, X-Tracefold-Key or Authorization: Bearer",
            ),
            Refusal::Forbidden(why) => ApiError::new(StatusCode::FORBIDDEN, why),
            Refusal::RateLimited { retry_after, scope } => {
                let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, format!("{scope} rate limit exceeded; retry in {retry_after} s"));
                e.retry_after_secs = Some(retry_after);
                e.sentry_rate_limit = Some(format!("{retry_after}::{scope}"));
                e
            }
        }
    }
}

/// The success response of the native endpoint.
#[derive(Debug, Serialize)]
pub struct Accepted {
    /// Events published.
    pub accepted: usize,
    /// Their ids, in request order.
    pub ids: Vec<String>,
}

/// The success response of the Sentry endpoints.
#[derive(Debug, Serialize)]
pub struct SentryAccepted {
    /// The event id (the envelope's when it had no event).
    pub id: Option<String>,
}

/// The ingestion routes, with ops routes merged in by the caller.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/projects/{project}/events", post(ingest))
        .route("/api/{project_id}/store/", post(sentry_store))
        .route("/api/{project_id}/envelope/", post(sentry_envelope))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint; POST events to /api/v1/projects/{project}/events, or point a Sentry DSN here",
            )
        })
        .with_state(state)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn new_event_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Checks one event line as the native endpoint does (for fuzzing and tools): the event id
/// it would be published under, or why it would be refused.
///
/// # Errors
/// The reason, prefixed with the field when one is at fault.
pub fn check_line(line: &str, project: &str, received_ms: i64) -> Result<String, String> {
    prepare(line, project, received_ms).map(|r| r.id).map_err(|(field, reason)| match field {
        Some(f) => format!("{f}: {reason}"),
        None => reason,
    })
}

/// A validated event ready to publish.
#[derive(Debug)]
struct Ready {
    id: String,
    payload: Vec<u8>,
}

/// Checks one event and returns the bytes to publish (with `event_id`/`project` filled in).
fn prepare(line: &str, project: &str, received_ms: i64) -> Result<Ready, (Option<String>, String)> {
    let mut ev = parse_event_str(line).map_err(|e| (None, e.to_string()))?;
    let mut inject = String::new();
    if let Some(p) = ev.project.as_deref() {
        if p != project {
            return Err((Some("project".into()), format!("event says project {p:?} but the URL says {project:?}")));
        }
    } else {
        inject.push_str(&format!("\"project\":{},", serde_json::to_string(project).unwrap_or_default()));
        ev.project = Some(project.into());
    }
    let id = match ev.event_id.as_deref() {
        Some(id) => id.to_owned(),
        None => {
            let id = new_event_id();
            inject.push_str(&format!("\"event_id\":\"{id}\","));
            ev.event_id = Some(id.clone().into());
            id
        }
    };
    validate(&ev, received_ms).map_err(|e| (Some(e.field), e.reason))?;
    let payload = if inject.is_empty() {
        line.as_bytes().to_vec()
    } else {
        // The event is a non-empty JSON object (validation needs an exception or a message):
        // splice the missing fields in right after its opening brace.
        let brace = line.find('{').expect("parsed as an object");
        let mut out = Vec::with_capacity(line.len() + inject.len());
        out.extend_from_slice(&line.as_bytes()[..=brace]);
        out.extend_from_slice(inject.as_bytes());
        out.extend_from_slice(&line.as_bytes()[brace + 1..]);
        out
    };
    Ok(Ready { id, payload })
}

/// Reads the body within the limits (413 before parsing), and decompresses it.
async fn read_body(cfg: &Config, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ApiError> {
    let max = cfg.http.max_body_bytes;
    if let Some(len) =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok())
    {
        if len > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body of {len} bytes is larger than {max} bytes"),
            ));
        }
    }
    let bytes: Bytes = axum::body::to_bytes(body, max).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body is larger than {max} bytes"))
    })?;
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok());
    decode_body(encoding, &bytes, max).map_err(|e| match e {
        BodyError::TooLarge(n) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("decompressed request body is larger than {n} bytes"))
        }
        BodyError::Unsupported(enc) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content encoding {enc:?} is not supported; use gzip or deflate"),
        ),
        BodyError::Corrupt(why) => {
            ApiError::new(StatusCode::BAD_REQUEST, format!("cannot decompress the request body: {why}"))
        }
    })
}

/// Publishes events and waits until Kafka acknowledged every one (503 otherwise).
async fn publish(st: &AppState, ready: &[Ready]) -> Result<(), ApiError> {
    let topic = &st.cfg.topics.events;
    let mut futures = Vec::with_capacity(ready.len());
    for r in ready {
        let rec = FutureRecord::to(topic).key(r.id.as_bytes()).payload(r.payload.as_slice());
        match st.producer.send_result(rec) {
            Ok(f) => futures.push(f),
            // The producer's queue is bounded (queue.buffering.max.*): full means Kafka is
            // not keeping up; refuse rather than buffer without bound.
            Err((e, _)) => {
                metrics::counter!(m::EVENTS_TOTAL, "outcome" => "failed").increment(ready.len() as u64);
                return Err(with_retry_after(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot queue events for Kafka: {e}"),
                )));
            }
        }
    }
    let results = tokio::time::timeout(
        Duration::from_millis(st.cfg.http.delivery_timeout_ms + 1000),
        futures::future::join_all(futures),
    )
    .await;
    let failed = match results {
        Ok(rs) => rs.into_iter().filter(|r| !matches!(r, Ok(Ok(_)))).count(),
        Err(_) => ready.len(),
    };
    if failed > 0 {
        metrics::counter!(m::EVENTS_TOTAL, "outcome" => "failed").increment(failed as u64);
        return Err(with_retry_after(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Kafka did not acknowledge {failed} of {} events; retry the request", ready.len()),
        )));
    }
    metrics::counter!(m::EVENTS_TOTAL, "outcome" => "accepted").increment(ready.len() as u64);
    Ok(())
}

/// Kafka is unavailable or slow: tell the client when to come back.
fn with_retry_after(mut e: ApiError) -> ApiError {
    e.retry_after_secs = Some(5);
    e
}

async fn ingest(
    State(st): State<AppState>,
    Path(project): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Accepted>, ApiError> {
    let span = tracing::info_span!("ingest", project = %project);
    ingest_inner(st, project, query, headers, body).instrument(span).await
}

async fn ingest_inner(
    st: AppState,
    project: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Accepted>, ApiError> {
    let t0 = Instant::now();
    let cfg = &st.cfg.http;
    if !is_project_slug(&project) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "project in the URL must match [a-z0-9][a-z0-9_-]* (at most 64 characters)",
        ));
    }
    let key = request_key(&headers, query.as_deref());
    st.projects.admit(Some(&project), None, key.as_deref(), 0)?;
    let bytes = read_body(&st.cfg, &headers, body).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("request body is not UTF-8: {e}")))?;
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-ndjson") || ct.starts_with("application/jsonl"));
    // Without an NDJSON content type, a body that is one JSON value (even pretty-printed) is
    // one event; otherwise it is read as lines.
    let single =
        !ndjson && (!text.trim().contains('\n') || serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok());
    let lines: Vec<(usize, &str)> = if !single {
        text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty()).collect()
    } else {
        vec![(1, text.trim())]
    };
    if lines.is_empty() || lines.iter().all(|(_, l)| l.is_empty()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "request body is empty; send one JSON event or NDJSON lines",
        ));
    }
    if lines.len() > cfg.max_events_per_request {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} events in one request; at most {}", lines.len(), cfg.max_events_per_request),
        ));
    }
    st.projects.admit(Some(&project), None, key.as_deref(), lines.len())?;
    let received = now_ms();
    let mut ready = Vec::with_capacity(lines.len());
    let mut details = Vec::new();
    for (line_no, line) in &lines {
        if line.len() > cfg.max_event_bytes {
            details.push(Detail::too_large(*line_no, line.len(), cfg.max_event_bytes));
            continue;
        }
        match prepare(line, &project, received) {
            Ok(r) => ready.push(r),
            Err((field, reason)) => details.push(Detail::invalid(*line_no, field, reason)),
        }
    }
    if !details.is_empty() {
        return Err(refused(details, lines.len()));
    }
    publish(&st, &ready).await?;
    record_ok(t0);
    Ok(Json(Accepted { accepted: ready.len(), ids: ready.into_iter().map(|r| r.id).collect() }))
}

fn project_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>().map_err(|_| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("project id {raw:?} must be a number (as in a Sentry DSN)"))
    })
}

/// Maps and validates one Sentry event for `slug`.
fn prepare_sentry(payload: &[u8], slug: &str, max_event: usize, received: i64) -> Result<Ready, Detail> {
    if payload.len() > max_event {
        return Err(Detail::too_large(1, payload.len(), max_event));
    }
    let json = to_tracefold(payload, slug).map_err(|reason| Detail::invalid(1, None, reason))?;
    prepare(&json, slug, received).map_err(|(field, reason)| Detail::invalid(1, field, reason))
}

async fn sentry_store(
    State(st): State<AppState>,
    Path(raw_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<SentryAccepted>, ApiError> {
    let span = tracing::info_span!("store", project_id = %raw_id);
    async move {
        let t0 = Instant::now();
        let id = project_id(&raw_id)?;
        let key = request_key(&headers, query.as_deref());
        let project = st.projects.admit(None, Some(id), key.as_deref(), 0)?;
        let bytes = read_body(&st.cfg, &headers, body).await?;
        st.projects.admit(None, Some(id), key.as_deref(), 1)?;
        let ready = prepare_sentry(&bytes, &project.slug, st.cfg.http.max_event_bytes, now_ms())
            .map_err(|d| refused(vec![d], 1))?;
        publish(&st, std::slice::from_ref(&ready)).await?;
        record_ok(t0);
        Ok(Json(SentryAccepted { id: Some(ready.id) }))
    }
    .instrument(span)
    .await
}

async fn sentry_envelope(
    State(st): State<AppState>,
    Path(raw_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<SentryAccepted>, ApiError> {
    let span = tracing::info_span!("envelope", project_id = %raw_id);
    async move {
        let t0 = Instant::now();
        let id = project_id(&raw_id)?;
        let bytes = read_body(&st.cfg, &headers, body).await?;
        let envelope = parse_envelope(&bytes)
            .map_err(|why| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed envelope: {why}")))?;
        // The key: request headers or query, else the DSN in the envelope header.
        let key = request_key(&headers, query.as_deref())
            .or_else(|| envelope.header.get("dsn").and_then(|d| d.as_str()).and_then(crate::auth::dsn_key));
        let events: Vec<&crate::sentry::Item<'_>> = envelope.items.iter().filter(|i| i.ty == "event").collect();
        let project = st.projects.admit(None, Some(id), key.as_deref(), events.len())?;
        for item in envelope.items.iter().filter(|i| i.ty != "event") {
            metrics::counter!(m::ENVELOPE_ITEMS_TOTAL, "type" => item_label(&item.ty), "outcome" => "skipped")
                .increment(1);
        }
        let received = now_ms();
        let mut ready = Vec::with_capacity(events.len());
        let mut details = Vec::new();
        for (n, item) in envelope.items.iter().enumerate().filter(|(_, i)| i.ty == "event") {
            match prepare_sentry(item.payload, &project.slug, st.cfg.http.max_event_bytes, received) {
                Ok(r) => ready.push(r),
                Err(mut d) => {
                    d.line = n + 1;
                    details.push(d);
                }
            }
        }
        if !details.is_empty() {
            return Err(refused(details, events.len()));
        }
        publish(&st, &ready).await?;
        metrics::counter!(m::ENVELOPE_ITEMS_TOTAL, "type" => "event", "outcome" => "accepted")
            .increment(ready.len() as u64);
        record_ok(t0);
        let id = ready
            .first()
            .map(|r| r.id.clone())
            .or_else(|| envelope.header.get("event_id").and_then(|v| v.as_str()).map(str::to_owned));
        Ok(Json(SentryAccepted { id }))
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_671_540_000;

    #[test]
    fn prepare_fills_in_missing_ids_and_project() {
        let r = prepare(r#"{"message":"boom"}"#, "web", NOW).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(v["project"], "web");
        assert_eq!(v["event_id"], r.id.as_str());
        assert_eq!(v["message"], "boom");
        assert_eq!(r.id.len(), 32);
    }

    #[test]
    fn prepare_keeps_given_bytes_verbatim() {
        let line = r#"{"event_id":"0123456789abcdef0123456789abcdef","project":"web","message":"x"}"#;
        let r = prepare(line, "web", NOW).unwrap();
        assert_eq!(r.payload, line.as_bytes());
        assert_eq!(r.id, "0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn prepare_rejects_with_field() {
        assert_eq!(
            prepare(r#"{"project":"api","message":"x"}"#, "web", NOW).unwrap_err().0.as_deref(),
            Some("project")
        );
        assert_eq!(prepare(r#"{"level":"loud","message":"x"}"#, "web", NOW).unwrap_err().0.as_deref(), Some("level"));
        assert_eq!(prepare("{", "web", NOW).unwrap_err().0, None);
    }
}
