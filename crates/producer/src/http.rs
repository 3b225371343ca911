//! The ingestion endpoints.
//!
//! Native: `POST /api/v1/projects/{project}/events` takes one JSON event, or an NDJSON batch
//! (one event per line; `Content-Type: application/x-ndjson`, or any body with more than one
//! non-empty line that is not one JSON value). A batch is all or nothing: when any line is
//! invalid, nothing is published and the 400 response lists every bad line. `event_id` and
//! `project` are filled in when the event lacks them (or has them `null`); a `project` that
//! differs from the path is an error.
//!
//! Sentry: `POST /api/{project_id}/store/` (one Sentry event) and
//! `POST /api/{project_id}/envelope/` (an envelope; `event` items are ingested, other item
//! types are accepted, skipped and counted), so that a Sentry SDK's DSN can point here.
//!
//! Source maps: `POST /api/{project}/sourcemaps`, see [`crate::sourcemaps`].
//!
//! Every endpoint: gzip or deflate bodies; project keys (401 without, 403 with a wrong one),
//! checked before the body is decompressed or parsed; per-project and per-key rate limits
//! (429 with `Retry-After` and `X-Sentry-Rate-Limits`; 413 for a request with more events than
//! a bucket's burst); 413 for bodies and events over the limits, checked before parsing; 400
//! for events nested deeper than [`tracefold_model::json::MAX_DEPTH`]; lone UTF-16 surrogate escapes become U+FFFD;
//! 408 when the body does not arrive within `http.body_timeout_ms`; 503 with `Retry-After`
//! when `http.max_concurrent_requests` requests are in flight already or Kafka does not
//! acknowledge; while the grouper is too far behind (`[backpressure]`, see
//! [`crate::backpressure`]) 503 with `Retry-After` on the native endpoint and 429 with
//! `Retry-After` and `X-Sentry-Rate-Limits` on the Sentry endpoints, the error body's `code`
//! being `backpressure`. Responses are JSON: native `200 {"accepted": n, "ids": [...]}`, Sentry
//! `200 {"id": "..."}`; errors `{"error": "...", "details": [{"line": 1, "field": "...",
//! "reason": "...", "code": "invalid"}]}` with `code` one of [`Reason::code`].

use crate::auth::{request_key, Admitted, Projects, Refusal};
use crate::backpressure::Gate;
use crate::config::Config;
use crate::delivery::{Acks, EventsProducer};
use crate::metrics as m;
use crate::sentry::{
    decode_body, decode_first_line, envelope_dsn_key, item_label, parse_envelope, read_event, BodyError,
};
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::BaseRecord;
use serde::{Serialize, Serializer};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracefold_model::json::repair_surrogates;
use tracefold_model::outcome::reasons;
use tracefold_model::reject::{Reason, Rejection};
use tracefold_model::time::now_ms;
use tracefold_model::validate::{is_event_id, is_project_slug};
use tracefold_model::Outcome;
use tracefold_model::{validate, Event, EventParser, ParseError};
use tracing::Instrument as _;

/// Bodies larger than this (decompressed) are parsed on the blocking pool, not on the async
/// workers that serve every other connection.
pub const BLOCKING_THRESHOLD: usize = 64 << 10;
/// Compressed bodies larger than this are decompressed on the blocking pool (a kilobyte of
/// gzip can inflate to a megabyte).
pub const BLOCKING_COMPRESSED_THRESHOLD: usize = 1 << 10;
/// Most decompressed bytes of an envelope read to find its header's DSN when the request
/// carries no key: nothing else of the body is decompressed before the key is checked.
pub const ENVELOPE_HEADER_MAX: usize = 16 << 10;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Config.
    pub cfg: Arc<Config>,
    /// The Kafka producer (delivery reports counted per request).
    pub producer: EventsProducer,
    /// Registered projects, keys and rate limits.
    pub projects: Arc<Projects>,
    /// In-flight ingest requests.
    pub limiter: Limiter,
    /// The largest event accepted, bytes ([`Config::max_event_bytes`]).
    pub max_event_bytes: usize,
    /// Room in the Kafka producer's queue, reserved per request before anything is queued.
    pub queue: QueueRoom,
    /// Outcome counters (accepted and refused events per project, minute and reason).
    pub outcomes: Arc<crate::outcomes::Outcomes>,
    /// Backpressure: whether new events are refused now (set by the watcher thread).
    pub gate: Arc<Gate>,
    /// Source map uploads; `None` while `[sourcemaps] store_url` is empty.
    pub sourcemaps: Option<Arc<crate::sourcemaps::Uploads>>,
}

impl AppState {
    /// The state for `cfg`, with a limiter of `http.max_concurrent_requests` slots.
    pub fn new(cfg: Arc<Config>, producer: EventsProducer, projects: Arc<Projects>) -> Self {
        let limiter = Limiter::new(cfg.http.max_concurrent_requests);
        let max_event_bytes = cfg.max_event_bytes();
        let queue = QueueRoom::new(&cfg.kafka);
        let outcomes = Arc::new(crate::outcomes::Outcomes::new());
        let gate = Gate::new(cfg.backpressure.retry_after_secs);
        Self { cfg, producer, projects, limiter, max_event_bytes, queue, outcomes, gate, sourcemaps: None }
    }
}

/// Room in the Kafka producer's queue (`queue.buffering.max.messages` and `.kbytes`). A
/// request reserves room for all its events before the first is queued, and keeps it until
/// Kafka answered for every one: librdkafka frees its room at the delivery report, before the
/// request is woken, so it never refuses an event for which room was reserved. A
/// request that finds too little room gets 503 with nothing of it queued, so that "all or
/// nothing" holds also when Kafka does not keep up.
#[derive(Debug, Clone)]
pub struct QueueRoom {
    messages: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    /// The whole room (messages, bytes): a request larger than this can never be queued.
    capacity: (usize, usize),
}

/// Why [`QueueRoom::reserve`] found no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoRoom {
    /// Not now: other requests hold it; a retry can pass.
    Full,
    /// Never: the request needs more than the whole queue (events, bytes).
    TooLarge(usize, usize),
}

impl QueueRoom {
    /// The room of a producer built from `kafka`.
    pub fn new(kafka: &tracefold_runtime::config::KafkaConfig) -> Self {
        let (messages, bytes) = tracefold_runtime::kafka::producer_queue_limits(kafka);
        // Tokio takes at most u32::MAX permits at once.
        let messages = messages.min(Semaphore::MAX_PERMITS).min(u32::MAX as usize);
        let bytes = bytes.min(Semaphore::MAX_PERMITS).min(u32::MAX as usize);
        Self {
            messages: Arc::new(Semaphore::new(messages)),
            bytes: Arc::new(Semaphore::new(bytes)),
            capacity: (messages, bytes),
        }
    }

    /// Reserves room for `ready`: [`NoRoom::Full`] when there is not enough now,
    /// [`NoRoom::TooLarge`] when there never will be.
    fn reserve(&self, ready: &[Ready]) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), NoRoom> {
        let size: usize = ready.iter().map(|r| r.payload.len() + r.id.len()).sum();
        if ready.len() > self.capacity.0 || size > self.capacity.1 {
            return Err(NoRoom::TooLarge(ready.len(), size));
        }
        // Both fit in u32: the capacities do.
        let n = u32::try_from(ready.len()).map_err(|_| NoRoom::TooLarge(ready.len(), size))?;
        let b = u32::try_from(size).map_err(|_| NoRoom::TooLarge(ready.len(), size))?;
        let m = self.messages.clone().try_acquire_many_owned(n).map_err(|_| NoRoom::Full)?;
        let b = self.bytes.clone().try_acquire_many_owned(b).map_err(|_| NoRoom::Full)?;
        Ok((m, b))
    }
}

/// Bounds the ingest requests handled at once: a request over the bound is answered 503 with
/// `Retry-After` at once, never queued.
#[derive(Debug, Clone)]
pub struct Limiter {
    slots: Arc<Semaphore>,
    max: usize,
}

impl Limiter {
    /// A limiter of `max` slots.
    pub fn new(max: usize) -> Self {
        Self { slots: Arc::new(Semaphore::new(max)), max }
    }

    /// A slot for one request, held until the permit is dropped.
    ///
    /// # Errors
    /// 503 with `Retry-After: 1` when every slot is taken.
    pub fn try_enter(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the producer is handling {} requests already (http.max_concurrent_requests); retry shortly",
                    self.max
                ),
            );
            e.retry_after_secs = Some(1);
            e
        })
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

async fn limit_concurrency(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match st.limiter.try_enter() {
        Ok(permit) => {
            // The request runs to its end in a task of its own (with its slot), whether or not
            // the client waits for the answer: a client that disconnects while Kafka
            // acknowledges its events would otherwise drop the handler with the connection,
            // and events that were queued, and are published, would go uncounted in the
            // outcomes and metrics (and a source map stored without its row).
            let run = tokio::spawn(async move {
                let resp = next.run(req).await;
                drop(permit);
                resp
            });
            match run.await {
                Ok(resp) => resp,
                Err(e) => ApiError::internal(e).into_response(),
            }
        }
        Err(e) => {
            if let Some(project) = project_of_path(&st, req.uri().path()) {
                st.outcomes.record(&project, Outcome::RateLimited, reasons::OVERLOADED, 1);
            }
            e.into_response()
        }
    }
}

/// The project an ingest path names (a slug, or a registered Sentry project id), for counting
/// the outcome of a request refused before its handler ran.
fn project_of_path(st: &AppState, path: &str) -> Option<String> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts[..] {
        ["api", "v1", "projects", slug, "events"] if is_project_slug(slug) => Some(slug.to_owned()),
        ["api", id, "store" | "envelope"] => st.projects.slug_of(id.parse().ok()?).map(str::to_owned),
        _ => None,
    }
}

fn serialize_code<S: Serializer>(r: &Reason, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.code())
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
    /// The bounded reason: `too_large` (the request gets 413 rather than 400), `too_deep`,
    /// `malformed` or `invalid`.
    #[serde(serialize_with = "serialize_code")]
    pub code: Reason,
}

/// Why one event is refused, before it is placed in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The bounded reason.
    pub code: Reason,
    /// JSON path of the offending field, when known.
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl Problem {
    fn new(code: Reason, field: Option<String>, reason: impl Into<String>) -> Self {
        Self { code, field, reason: reason.into() }
    }

    fn too_large(len: usize, max: usize) -> Self {
        Self::new(Reason::TooLarge, None, format!("event of {len} bytes is larger than {max} bytes"))
    }

    fn parse(e: &ParseError) -> Self {
        Self::new(e.reason(), None, e.to_string())
    }

    fn at(self, line: usize) -> Detail {
        Detail { line, field: self.field, reason: self.reason, code: self.code }
    }
}

impl From<Rejection> for Problem {
    fn from(r: Rejection) -> Self {
        Self::new(r.reason, None, r.detail)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// Events refused: nothing of the request is published; 413 when an event is over the size
/// limit, else 400; every problem listed.
fn refused(details: Vec<Detail>, total: usize) -> ApiError {
    let mut by_reason: BTreeMap<Reason, u64> = BTreeMap::new();
    for d in &details {
        *by_reason.entry(d.code).or_default() += 1;
    }
    for (reason, n) in by_reason {
        metrics::counter!(m::EVENTS_TOTAL, "outcome" => "invalid", "reason" => reason.code()).increment(n);
    }
    let status = if details.iter().any(|d| d.code == Reason::TooLarge) {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        StatusCode::BAD_REQUEST
    };
    let mut e = ApiError::new(status, format!("{} of {total} events are invalid; nothing was accepted", details.len()));
    e.details = details;
    e.with_events(total)
}

/// Counts a request's outcome for `project` (`None`: no known project, nothing counted):
/// accepted events are counted where they are published; this counts refusals.
fn record_refusal<T>(st: &AppState, project: Option<&str>, r: &Result<T, ApiError>) {
    if let (Some(project), Err(e)) = (project, r) {
        let codes: Vec<Reason> = e.details.iter().map(|d| d.code).collect();
        let c = e.counted.as_deref();
        st.outcomes.record_refusal(
            project,
            e.status.as_u16(),
            c.and_then(|c| c.reason),
            &codes,
            c.and_then(|c| c.events),
        );
    }
}

/// Counts a successful request.
fn record_ok(t0: Instant) {
    metrics::counter!(m::REQUESTS_TOTAL, "status" => "200").increment(1);
    metrics::histogram!(m::REQUEST_SECONDS).record(t0.elapsed().as_secs_f64());
}

/// What an error tells the outcome counters beyond its status and details.
#[derive(Debug, Default)]
struct Counted {
    events: Option<usize>,
    reason: Option<&'static str>,
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
    #[serde(skip)]
    close: bool,
    /// For outcomes: how many events the refused request held, when known, and the reason
    /// when the status alone does not tell it (rate-limit scope). Boxed: errors stay small.
    #[serde(skip)]
    counted: Option<Box<Counted>>,
    /// Summary.
    pub error: String,
    /// Why, when the whole request was refused for a reason a client acts on (`backpressure`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    /// Per-line problems.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Detail>,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            retry_after_secs: None,
            sentry_rate_limit: None,
            close: false,
            counted: None,
            error: error.into(),
            code: None,
            details: Vec::new(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The same error, for a request of `n` events.
    fn with_events(mut self, n: usize) -> Self {
        self.counted.get_or_insert_with(Box::default).events = Some(n);
        self
    }

    /// The same error, with the outcome reason `reason` (one of
    /// [`tracefold_model::outcome::reasons`], e.g. `BACKPRESSURE` for a 503 that pushes back).
    pub(crate) fn with_outcome_reason(mut self, reason: &'static str) -> Self {
        self.counted.get_or_insert_with(Box::default).reason = Some(reason);
        self
    }

    /// An error of `status` saying `error` (for the other endpoints of this crate).
    pub(crate) fn plain(status: StatusCode, error: impl Into<String>) -> Self {
        Self::new(status, error)
    }

    /// The same error, with `Retry-After: secs`.
    pub(crate) fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    fn internal(what: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error: {what}"))
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
        if self.close {
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
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
                e.with_outcome_reason(match scope {
                    "key" => reasons::KEY_RATE,
                    "unregistered" => reasons::UNREGISTERED_RATE,
                    _ => reasons::PROJECT_RATE,
                })
            }
            Refusal::OverBurst { events, burst, scope } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{events} events in one request, more than the {scope} rate limit's burst of {burst}; send smaller requests"),
            )
            .with_outcome_reason(reasons::TOO_MANY_EVENTS)
            .with_events(events),
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

/// The ingestion routes (behind the concurrency limit), with ops routes merged in by the caller.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/projects/{project}/events", post(ingest))
        .route("/api/{project_id}/store/", post(sentry_store))
        .route("/api/{project_id}/envelope/", post(sentry_envelope))
        .route("/api/{project_id}/sourcemaps", post(crate::sourcemaps::upload))
        .route_layer(middleware::from_fn_with_state(state.clone(), limit_concurrency))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint; POST events to /api/v1/projects/{project}/events, or point a Sentry DSN here \
                 (source maps: POST /api/{project}/sourcemaps)",
            )
        })
        .layer(middleware::from_fn(json_refusals))
        .with_state(state)
}

/// Refusals axum answers itself, before a handler runs, get the JSON body every other refusal
/// has (`{"error": ...}` saying what is wrong): a method the route does not take (405, an
/// empty body), a path parameter whose percent-encoding is not UTF-8 (400, plain text).
async fn json_refusals(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let resp = next.run(req).await;
    let status = resp.status();
    let json = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 16 << 10).await.map(|b| String::from_utf8_lossy(&b).trim().to_owned());
    let error = match (status, text) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => {
            let allow = parts.headers.get(header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or("POST");
            format!("method {method} is not allowed here; use {allow}")
        }
        (_, Ok(text)) if !text.is_empty() => text,
        _ => status.canonical_reason().unwrap_or("refused").to_owned(),
    };
    let mut out = ApiError::new(status, error).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

fn new_event_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Checks one event line as the native endpoint does (for fuzzing and tools): the event id
/// it would be published under, or why it would be refused.
///
/// # Errors
/// [`Problem`]: the reason code, the field when one is at fault, and what is wrong.
pub fn check_line(line: &str, project: &str, received_ms: i64) -> Result<String, Problem> {
    prepare(line.as_bytes(), project, received_ms, usize::MAX).map(|r| r.id)
}

/// Buffers reused for every event of a request: the copy that simd-json parses in place, and
/// the parser's (simd-json's scratch buffers, its tape, the event's lists).
#[derive(Default)]
struct Scratch {
    copy: Vec<u8>,
    parser: EventParser,
}

/// A validated event ready to publish.
#[derive(Debug)]
pub struct Ready {
    /// Its event id (the Kafka key).
    pub id: String,
    /// The bytes to publish: a slice of the request body (no copy) when the event is published
    /// as it came.
    pub payload: Bytes,
}

/// Checks one event as the grouper will read it and returns the bytes to publish: the event
/// with lone surrogate escapes replaced by `\ufffd`, and with `event_id` and `project` set.
/// An event that has both is published as it came (no re-serialization on the hot path);
/// otherwise it is rebuilt as a JSON value with exactly one of each key (a `null` one is
/// replaced). A JSON value rather than the typed [`Event`]: fields the model does not know
/// (`extra`, `breadcrumbs`, ...) are the client's and stay in the published event, whose
/// sample keeps them.
///
/// # Errors
/// [`Problem`] with the reason: over `max_event` bytes, nested deeper than [`tracefold_model::json::MAX_DEPTH`],
/// malformed, or invalid (with the field).
pub fn prepare(line: &[u8], project: &str, received_ms: i64, max_event: usize) -> Result<Ready, Problem> {
    prepare_in(line, None, &mut Scratch::default(), project, received_ms, max_event)
}

/// [`prepare`] for a `line` of the request `body` (`None`: the line is copied when published
/// as it came), with buffers reused from one event to the next.
fn prepare_in(
    line: &[u8],
    body: Option<&Bytes>,
    scratch: &mut Scratch,
    project: &str,
    received_ms: i64,
    max_event: usize,
) -> Result<Ready, Problem> {
    if line.len() > max_event {
        return Err(Problem::too_large(line.len(), max_event));
    }
    // The grouper's parser (simd-json) on a copy, so that the producer accepts exactly what
    // the grouper reads (serde_json alone lets through numbers simd-json refuses).
    let Scratch { copy, parser } = scratch;
    copy.clear();
    copy.extend_from_slice(line);
    // Repair lone surrogate escapes in the bytes to publish (one memchr pass when there is no
    // backslash); when nothing was repaired, those bytes are the line itself. The parse
    // checks the depth.
    let repaired = (repair_surrogates(copy) > 0).then(|| copy.clone());
    // Repaired above: the parse does not scan for them again.
    let mut ev = parser.parse_repaired(copy).map_err(|e| Problem::parse(&e))?;
    let complete = ev.project.is_some() && ev.event_id.is_some();
    if let Some(p) = ev.project.as_deref() {
        if p != project {
            return Err(Problem::new(
                Reason::Invalid,
                Some("project".into()),
                format!("event says project {p:?} but the URL says {project:?}"),
            ));
        }
    }
    ev.project.get_or_insert(Cow::Borrowed(project));
    let id = ensure_event_id(&mut ev);
    validate(&ev, received_ms).map_err(|e| Problem::new(Reason::Invalid, Some(e.field), e.reason))?;
    // The event's lists go back to the parser for the next event of the request.
    parser.recycle(ev);
    let payload = match (complete, repaired) {
        (true, Some(repaired)) => Bytes::from(repaired),
        // `line` lies within `body` (the caller's contract).
        (true, None) => body.map_or_else(|| Bytes::copy_from_slice(line), |b| b.slice_ref(line)),
        (false, repaired) => Bytes::from(with_ids(repaired.as_deref().unwrap_or(line), project, &id)?),
    };
    if payload.len() > max_event {
        return Err(Problem::too_large(payload.len(), max_event));
    }
    Ok(Ready { id, payload })
}

/// The event `buf` (depth already checked) with `project` and `event_id` set, as one JSON
/// object: no duplicate keys, whatever the input had (`"project": null` included).
fn with_ids(buf: &[u8], project: &str, id: &str) -> Result<Vec<u8>, Problem> {
    let malformed = |e: String| Problem::new(Reason::Malformed, None, format!("malformed event json: {e}"));
    let mut v: serde_json::Value = serde_json::from_slice(buf).map_err(|e| malformed(e.to_string()))?;
    let o = v.as_object_mut().ok_or_else(|| malformed("an event must be a JSON object".into()))?;
    o.insert("project".into(), project.into());
    o.insert("event_id".into(), id.into());
    serde_json::to_vec(&v).map_err(|e| malformed(e.to_string()))
}

fn body_error(e: BodyError) -> ApiError {
    match e {
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
    }
}

/// The request's `Content-Encoding`, lower-case; `None` when absent, empty or `identity`. A
/// value that is not visible ASCII is kept (lossily) so that it is refused as unsupported (415,
/// naming it), not taken for no encoding and the compressed bytes read as the body.
fn content_encoding(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_ENCODING)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty() && e != "identity")
}

/// Reads the raw (possibly compressed) body within `http.max_body_bytes` (413, before reading
/// when `Content-Length` says so) and `http.body_timeout_ms` (408).
async fn read_raw(cfg: &Config, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    read_raw_within(cfg, headers, body, cfg.http.max_body_bytes).await
}

/// [`read_raw`] with the limit `max` instead of `http.max_body_bytes`.
pub(crate) async fn read_raw_within(
    cfg: &Config,
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<Bytes, ApiError> {
    let claimed =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if let Some(len) = claimed {
        if len > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body of {len} bytes is larger than {max} bytes"),
            ));
        }
    }
    let read = async {
        // The chunks as they come, joined once at the end (no regrowth of a buffer): a body
        // that came in one chunk is used as it is, without a copy.
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut len = 0usize;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}")))?;
            if len + chunk.len() > max {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body is larger than {max} bytes"),
                ));
            }
            len += chunk.len();
            chunks.push(chunk);
        }
        Ok(match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.swap_remove(0),
            _ => {
                let mut out = Vec::with_capacity(len);
                for c in &chunks {
                    out.extend_from_slice(c);
                }
                Bytes::from(out)
            }
        })
    };
    let ms = cfg.http.body_timeout_ms;
    match tokio::time::timeout(Duration::from_millis(ms), read).await {
        Ok(r) => r,
        Err(_) => {
            let mut e = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {ms} ms (http.body_timeout_ms)"),
            );
            e.close = true;
            Err(e)
        }
    }
}

/// Decompresses `raw` by its `Content-Encoding` within `http.max_body_bytes`; large
/// compressed bodies on the blocking pool.
pub(crate) async fn decode(headers: &HeaderMap, raw: Bytes, max: usize) -> Result<Bytes, ApiError> {
    let Some(enc) = content_encoding(headers) else {
        return Ok(raw);
    };
    let big = raw.len() > BLOCKING_COMPRESSED_THRESHOLD;
    off_thread(big, move || decode_body(Some(&enc), &raw, max)).await?.map(Bytes::from).map_err(body_error)
}

/// Runs `f` here when the work is small, else on the blocking pool (so that a large body does
/// not stall the async workers serving every other connection).
async fn off_thread<T: Send + 'static>(big: bool, f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    if !big {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f).await.map_err(ApiError::internal)
}

/// Publishes events and waits until Kafka acknowledged every one (503 otherwise).
async fn publish(st: &AppState, ready: &[Ready]) -> Result<(), ApiError> {
    let topic = &st.cfg.topics.events;
    // Room for the whole request first: nothing is queued unless everything can be.
    let _room = match st.queue.reserve(ready) {
        Ok(room) => room,
        Err(NoRoom::Full) => {
            metrics::counter!(m::EVENTS_TOTAL, "outcome" => "failed").increment(ready.len() as u64);
            return Err(with_retry_after(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Kafka is not keeping up (the producer's queue is full); nothing of this request was queued, retry it",
            )));
        }
        // A 503 would have the client retry, for ever, what can never pass.
        Err(NoRoom::TooLarge(events, bytes)) => {
            metrics::counter!(m::EVENTS_TOTAL, "outcome" => "failed").increment(ready.len() as u64);
            let (max_events, max_bytes) = st.queue.capacity;
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{events} events of {bytes} bytes in one request, more than the producer's Kafka queue holds \
                     ({max_events} events, {max_bytes} bytes: kafka.librdkafka \"queue.buffering.max.messages\" \
                     and \"queue.buffering.max.kbytes\"); nothing was queued, send smaller requests"
                ),
            ));
        }
    };
    // One counter for the request's delivery reports: the last one wakes this task once.
    let acks = Acks::new(ready.len());
    let queued = Instant::now();
    for r in ready {
        let rec = BaseRecord::with_opaque_to(topic, acks.clone()).key(r.id.as_bytes()).payload(&r.payload[..]);
        match st.producer.send(rec) {
            Ok(()) => {}
            // Events are checked against the size Kafka takes; should the broker's limit be
            // lower still, no retry can help.
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                metrics::counter!(m::EVENTS_TOTAL, "outcome" => "failed").increment(ready.len() as u64);
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("an event of {} bytes is larger than Kafka's message.max.bytes", r.payload.len()),
                ));
            }
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
    let waited = tokio::time::timeout(Duration::from_millis(st.cfg.http.delivery_timeout_ms + 1000), acks.wait()).await;
    metrics::histogram!(m::KAFKA_SECONDS).record(queued.elapsed().as_secs_f64());
    let failed = match waited {
        Ok(()) => acks.failed(),
        Err(_) => {
            // No delivery report within the deadline (librdkafka's `message.timeout.ms` set
            // longer than `http.delivery_timeout_ms`, or reports that stopped coming): a failed
            // delivery for the producer's health too, which otherwise saw no failure and stayed
            // healthy while every request was answered 503.
            let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
            rdkafka::producer::Producer::context(&st.producer).progress.failed(&timed_out);
            ready.len()
        }
    };
    if failed > 0 {
        metrics::counter!(m::EVENTS_TOTAL, "outcome" => "failed").increment(failed as u64);
        return Err(with_retry_after(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Kafka did not acknowledge {failed} of {} events; retry the request", ready.len()),
        )));
    }
    metrics::counter!(m::EVENTS_TOTAL, "outcome" => "accepted").increment(ready.len() as u64);
    st.gate.record_published(ready.len(), ready.iter().map(|r| r.payload.len() + r.id.len()).sum());
    Ok(())
}

/// Which kind of endpoint a request came to: refusals differ (Sentry SDKs back off on 429
/// with `X-Sentry-Rate-Limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Native,
    Sentry,
}

/// Refuses the request's `events` while backpressure is on (one atomic load otherwise):
/// native 503, Sentry 429 with `X-Sentry-Rate-Limits`; both with `Retry-After` and
/// `"code": "backpressure"`.
fn check_backpressure(st: &AppState, events: usize, endpoint: Endpoint) -> Result<(), ApiError> {
    if events == 0 || !st.gate.refusing() {
        return Ok(());
    }
    metrics::counter!(m::BACKPRESSURE_REFUSED_EVENTS_TOTAL).increment(events as u64);
    Err(backpressure_error(st.gate.retry_after_secs(), endpoint)
        .with_outcome_reason(reasons::BACKPRESSURE)
        .with_events(events))
}

fn backpressure_error(secs: u64, endpoint: Endpoint) -> ApiError {
    let msg = format!("the pipeline is behind (backpressure): nothing of this request was accepted; retry in {secs} s");
    let mut e = match endpoint {
        Endpoint::Native => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg),
        Endpoint::Sentry => {
            let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, msg);
            // Sentry's format: retry_after:categories:scope:reason_code; no categories = all.
            e.sentry_rate_limit = Some(format!("{secs}::organization:backpressure"));
            e
        }
    };
    e.retry_after_secs = Some(secs);
    e.code = Some("backpressure");
    e
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
    let slug = is_project_slug(&project).then(|| project.clone());
    let r = ingest_inner(st.clone(), project, query, headers, body).instrument(span).await;
    record_refusal(&st, slug.as_deref(), &r);
    r
}

fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-ndjson") || ct.starts_with("application/jsonl"))
}

/// Whether `text` is one event: no newline inside it, or one JSON object spread over lines (a
/// pretty-printed event). Linear, without recursion and without parsing: the first value's
/// closing bracket must be the last non-blank byte.
fn is_one_value(text: &str) -> bool {
    let t = text.trim().as_bytes();
    if !t.contains(&b'\n') {
        return true;
    }
    if !matches!(t.first(), Some(b'{' | b'[')) {
        return false;
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < t.len() {
        match t[i] {
            b'"' => {
                i += 1;
                while i < t.len() && t[i] != b'"' {
                    i += if t[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i == t.len() - 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// The non-blank lines of an NDJSON body, numbered from 1, trimmed, lazily: what
/// `text.lines()` gives, found with the `memchr` crate's vector search (the standard library's
/// byte search behind `str::lines` was 6% of the native check's instructions).
fn event_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', text.as_bytes()).map(Some).chain(std::iter::once(None)).enumerate().filter_map(
        move |(i, newline)| {
            let end = newline.unwrap_or(text.len());
            // Both ends are at a newline (ASCII) or at an end of the text: char boundaries.
            let line = text.get(start..end).unwrap_or_default().trim();
            start = end + 1;
            (!line.is_empty()).then_some((i + 1, line))
        },
    )
}

/// `body` as text, or a 400 that says where it stops being UTF-8. Checked with `simdutf8`'s
/// vector code (the standard library's check was 2.4% of the native check's instructions); the
/// standard library's check only for the error's position.
fn body_text(body: &[u8]) -> Result<&str, ApiError> {
    simdutf8::basic::from_utf8(body).or_else(|_| {
        std::str::from_utf8(body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("request body is not UTF-8: {e}")))
    })
}

async fn ingest_inner(
    st: AppState,
    project: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Accepted>, ApiError> {
    let t0 = Instant::now();
    if !is_project_slug(&project) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "project in the URL must match [a-z0-9][a-z0-9_-]* (at most 64 characters)",
        ));
    }
    let key = request_key(&headers, query.as_deref());
    st.projects.admit(Some(&project), None, key.as_deref(), 0)?;
    let raw = read_raw(&st.cfg, &headers, body).await?;
    let bytes = decode(&headers, raw, st.cfg.http.max_body_bytes).await?;
    let ndjson = is_ndjson(&headers);
    let big = bytes.len() > BLOCKING_THRESHOLD;
    let s = st.clone();
    let slug = project.clone();
    let (ready, admitted) =
        off_thread(big, move || native_events(&s, &bytes, ndjson, &project, key.as_deref(), now_ms())).await??;
    check_backpressure(&st, ready.len(), Endpoint::Native).map_err(|e| give_back(&st, &admitted, e))?;
    publish(&st, &ready).await.map_err(|e| give_back(&st, &admitted, e.with_events(ready.len())))?;
    st.outcomes.record(&slug, Outcome::Accepted, reasons::NONE, ready.len() as u64);
    record_ok(t0);
    Ok(Json(Accepted { accepted: ready.len(), ids: ready.into_iter().map(|r| r.id).collect() }))
}

/// The tokens taken for a request whose events are refused after admission for the pipeline's
/// sake (backpressure, Kafka not acknowledging) go back to its buckets, so that the client's
/// retry is not refused 429 for events that were never accepted. Events refused as invalid keep
/// them: the client sent them, and a flood of invalid events is rate limited as valid ones are
/// (each still costs the producer a parse).
fn give_back(st: &AppState, admitted: &Admitted, e: ApiError) -> ApiError {
    st.projects.give_back(admitted);
    e
}

/// The events of a native request, checked: counted (lazily, stopping past
/// `http.max_events_per_request`: 413), admitted by the rate limits, then each prepared; with
/// the admission (its tokens are given back if the pipeline refuses the request later).
fn native_events(
    st: &AppState,
    body: &Bytes,
    ndjson: bool,
    project: &str,
    key: Option<&str>,
    received: i64,
) -> Result<(Vec<Ready>, Admitted), ApiError> {
    let lines = native_lines(body, ndjson, st.cfg.http.max_events_per_request)?;
    let n = lines.len();
    let admitted = st.projects.admit(Some(project), None, key, n).map_err(|r| ApiError::from(r).with_events(n))?;
    let max_event = st.max_event_bytes;
    let mut ready = Vec::with_capacity(n);
    let mut details = Vec::new();
    let mut scratch = Scratch::default();
    let mut check = |line_no: usize, line: &str| match prepare_in(
        line.as_bytes(),
        Some(body),
        &mut scratch,
        project,
        received,
        max_event,
    ) {
        Ok(r) => ready.push(r),
        Err(p) => details.push(p.at(line_no)),
    };
    for (line_no, line) in lines {
        check(line_no, line);
    }
    // Invalid events keep the tokens they took (see `give_back`).
    if !details.is_empty() {
        return Err(refused(details, n));
    }
    Ok((ready, admitted))
}

/// The events of a native request's body, each with its line number (1 for a body that is one
/// value): at least one and at most `max_events` of them, found in one scan of the body.
/// Without an NDJSON content type (`ndjson`), a body that is one JSON value (even
/// pretty-printed) is one event; otherwise each non-blank line is one.
///
/// # Errors
/// 400 when the body is not UTF-8 or holds no event, 413 past `max_events`.
pub fn native_lines(body: &[u8], ndjson: bool, max_events: usize) -> Result<Vec<(usize, &str)>, ApiError> {
    let text = body_text(body)?;
    let mut lines: Vec<(usize, &str)> = Vec::new();
    if !ndjson && is_one_value(text) {
        let one = text.trim();
        if !one.is_empty() {
            lines.push((1, one));
        }
    } else {
        for line in event_lines(text) {
            if lines.len() == max_events {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("more than {max_events} events in one request (http.max_events_per_request)"),
                )
                .with_outcome_reason(reasons::TOO_MANY_EVENTS));
            }
            lines.push(line);
        }
    }
    if lines.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "request body is empty; send one JSON event or NDJSON lines",
        ));
    }
    Ok(lines)
}

fn project_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>().map_err(|_| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("project id {raw:?} must be a number (as in a Sentry DSN)"))
    })
}

/// Maps one Sentry event payload onto a typed tracefold event for project `slug`
/// ([`tracefold_model::sentry::map`]), gives it an event id when it has none, validates it and
/// serializes it once: the bytes to publish. What the grouper reads back is this very event
/// (serializing and parsing an event gives the same event).
///
/// # Errors
/// [`Problem`] with the reason: over `max_event` bytes (as sent or as published), nested
/// deeper than [`tracefold_model::json::MAX_DEPTH`], malformed, or invalid (with the field).
pub fn prepare_sentry(payload: &[u8], slug: &str, received_ms: i64, max_event: usize) -> Result<Ready, Problem> {
    prepare_sentry_in(payload, slug, received_ms, max_event, None)
}

/// [`prepare_sentry`], with the id an event without one of its own gets (the envelope's
/// `event_id`) instead of a new one.
fn prepare_sentry_in(
    payload: &[u8],
    slug: &str,
    received_ms: i64,
    max_event: usize,
    envelope_id: Option<&str>,
) -> Result<Ready, Problem> {
    if payload.len() > max_event {
        return Err(Problem::too_large(payload.len(), max_event));
    }
    let sentry = read_event(payload)?;
    let mut ev = tracefold_model::sentry::map(&sentry, Some(slug))
        .map_err(|e| Problem::new(Reason::Malformed, None, e.to_string()))?;
    if ev.event_id.is_none() {
        ev.event_id = envelope_id.map(|id| Cow::Owned(id.replace('-', "")));
    }
    publishable(ev, received_ms, max_event)
}

/// The event's id; a new one is given to an event that has none.
fn ensure_event_id(ev: &mut Event<'_>) -> String {
    match ev.event_id.as_deref() {
        Some(id) => id.to_owned(),
        None => {
            let id = new_event_id();
            ev.event_id = Some(Cow::Owned(id.clone()));
            id
        }
    }
}

/// A typed event with its event id (a new one when it has none), validated, serialized.
fn publishable(mut ev: Event<'_>, received_ms: i64, max_event: usize) -> Result<Ready, Problem> {
    let id = ensure_event_id(&mut ev);
    validate(&ev, received_ms).map_err(|e| Problem::new(Reason::Invalid, Some(e.field), e.reason))?;
    // Strings, integers, booleans and finite numbers only: serializing into memory cannot fail.
    let payload = Bytes::from(serde_json::to_vec(&ev).expect("an event serializes to JSON"));
    if payload.len() > max_event {
        return Err(Problem::too_large(payload.len(), max_event));
    }
    Ok(Ready { id, payload })
}

async fn sentry_store(
    State(st): State<AppState>,
    Path(raw_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<SentryAccepted>, ApiError> {
    let span = tracing::info_span!("store", project_id = %raw_id);
    let slug = raw_id.parse().ok().and_then(|id| st.projects.slug_of(id)).map(str::to_owned);
    let outcomes = st.clone();
    let r = async move {
        let t0 = Instant::now();
        let id = project_id(&raw_id)?;
        let key = request_key(&headers, query.as_deref());
        let project = st.projects.admit(None, Some(id), key.as_deref(), 0)?;
        let raw = read_raw(&st.cfg, &headers, body).await?;
        let bytes = decode(&headers, raw, st.cfg.http.max_body_bytes).await?;
        let admitted =
            st.projects.admit(None, Some(id), key.as_deref(), 1).map_err(|r| ApiError::from(r).with_events(1))?;
        let max_event = st.max_event_bytes;
        let big = bytes.len() > BLOCKING_THRESHOLD;
        let slug = project.slug.clone();
        let ready = off_thread(big, move || {
            prepare_sentry(&bytes, &slug, now_ms(), max_event).map_err(|p| refused(vec![p.at(1)], 1))
        })
        .await??;
        check_backpressure(&st, 1, Endpoint::Sentry).map_err(|e| give_back(&st, &admitted, e))?;
        publish(&st, std::slice::from_ref(&ready)).await.map_err(|e| give_back(&st, &admitted, e.with_events(1)))?;
        st.outcomes.record(&project.slug, Outcome::Accepted, reasons::NONE, 1);
        record_ok(t0);
        Ok(Json(SentryAccepted { id: Some(ready.id) }))
    }
    .instrument(span)
    .await;
    record_refusal(&outcomes, slug.as_deref(), &r);
    r
}

/// The events of an envelope, checked, and the envelope header's event id.
struct EnvelopeEvents {
    ready: Vec<Ready>,
    header_event_id: Option<String>,
    /// Labels of the items that are not events, counted once the envelope is accepted.
    skipped: Vec<&'static str>,
    /// The admission of its events (their tokens are given back if it is refused later).
    admitted: Admitted,
}

async fn sentry_envelope(
    State(st): State<AppState>,
    Path(raw_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<SentryAccepted>, ApiError> {
    let span = tracing::info_span!("envelope", project_id = %raw_id);
    let slug = raw_id.parse().ok().and_then(|id| st.projects.slug_of(id)).map(str::to_owned);
    let outcomes = (st.clone(), slug.clone());
    let r = async move {
        let t0 = Instant::now();
        let id = project_id(&raw_id)?;
        // The key: request headers or query (checked before the body is read), else the DSN
        // in the envelope header: only the first line is decompressed and read before the key
        // is checked, never the whole body.
        let header_key = request_key(&headers, query.as_deref());
        if let Some(k) = header_key.as_deref() {
            st.projects.admit(None, Some(id), Some(k), 0)?;
        }
        let raw = read_raw(&st.cfg, &headers, body).await?;
        let key = match header_key {
            Some(k) => k,
            None => {
                let enc = content_encoding(&headers);
                let line = match decode_first_line(enc.as_deref(), &raw, ENVELOPE_HEADER_MAX) {
                    Ok(line) => line,
                    Err(e @ BodyError::Unsupported(_)) => return Err(body_error(e)),
                    // No readable header: no key.
                    Err(_) => Vec::new(),
                };
                let k = envelope_dsn_key(&line).ok_or(Refusal::MissingKey)?;
                st.projects.admit(None, Some(id), Some(&k), 0)?;
                k
            }
        };
        let bytes = decode(&headers, raw, st.cfg.http.max_body_bytes).await?;
        let big = bytes.len() > BLOCKING_THRESHOLD;
        let s = st.clone();
        let out = off_thread(big, move || envelope_events(&s, &bytes, id, &key, now_ms())).await??;
        check_backpressure(&st, out.ready.len(), Endpoint::Sentry).map_err(|e| give_back(&st, &out.admitted, e))?;
        publish(&st, &out.ready).await.map_err(|e| give_back(&st, &out.admitted, e.with_events(out.ready.len())))?;
        if let Some(slug) = &slug {
            st.outcomes.record(slug, Outcome::Accepted, reasons::NONE, out.ready.len() as u64);
        }
        metrics::counter!(m::ENVELOPE_ITEMS_TOTAL, "type" => "event", "outcome" => "accepted")
            .increment(out.ready.len() as u64);
        for ty in &out.skipped {
            metrics::counter!(m::ENVELOPE_ITEMS_TOTAL, "type" => *ty, "outcome" => "skipped").increment(1);
        }
        record_ok(t0);
        let id = out.ready.first().map(|r| r.id.clone()).or(out.header_event_id);
        Ok(Json(SentryAccepted { id }))
    }
    .instrument(span)
    .await;
    record_refusal(&outcomes.0, outcomes.1.as_deref(), &r);
    r
}

/// Parses an envelope, admits its events by the rate limits and checks each.
fn envelope_events(st: &AppState, bytes: &[u8], id: u64, key: &str, received: i64) -> Result<EnvelopeEvents, ApiError> {
    let envelope = parse_envelope(bytes)
        .map_err(|why| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed envelope: {why}")))?;
    let events = envelope.items.iter().filter(|i| i.ty == "event").count();
    let project =
        st.projects.admit(None, Some(id), Some(key), events).map_err(|r| ApiError::from(r).with_events(events))?;
    // Counted once the envelope is accepted (a refused one is retried and would count twice).
    let skipped: Vec<&'static str> =
        envelope.items.iter().filter(|i| i.ty != "event").map(|i| item_label(&i.ty)).collect();
    let header_event_id = envelope.header.get("event_id").and_then(|v| v.as_str()).map(str::to_owned);
    // The envelope's event id is its event's (as Sentry reads it): an event item without an
    // `event_id` of its own takes it, so that a re-sent envelope is the same event again
    // (deduplicated), not a new one under a new id. Only for an envelope of one event (as SDKs
    // send): events of one envelope never share an id.
    let envelope_id = header_event_id.as_deref().filter(|id| events == 1 && is_event_id(id));
    let mut ready = Vec::with_capacity(events);
    let mut details = Vec::new();
    for (n, item) in envelope.items.iter().enumerate().filter(|(_, i)| i.ty == "event") {
        match prepare_sentry_in(item.payload, &project.slug, received, st.max_event_bytes, envelope_id) {
            Ok(r) => ready.push(r),
            Err(p) => details.push(p.at(n + 1)),
        }
    }
    // Invalid events keep the tokens they took (see `give_back`).
    if !details.is_empty() {
        return Err(refused(details, events));
    }
    Ok(EnvelopeEvents { ready, header_event_id, skipped, admitted: project })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tracefold_model::json::MAX_DEPTH;
    use tracefold_model::parse_event_slice;

    const NOW: i64 = 1_795_671_540_000;

    /// A config of one project, `web` (Sentry id 1), with `keys` and a rate limit of
    /// `rate_per_sec` (0: none) and no burst.
    fn web_project(keys: &[&str], rate_per_sec: f64) -> Config {
        Config {
            projects: vec![crate::config::ProjectConfig {
                slug: "web".into(),
                id: Some(1),
                keys: keys.iter().map(|k| (*k).to_owned()).collect(),
                rate_per_sec,
                burst: 0.0,
                key_rate_per_sec: 0.0,
                key_burst: 0.0,
            }],
            ..Config::default()
        }
    }

    /// The producer's state for `cfg`, with a Kafka producer that is never asked to deliver.
    fn state_of(cfg: Config) -> AppState {
        let cfg = Arc::new(cfg);
        let producer: EventsProducer =
            tracefold_runtime::kafka::producer_config_with(&cfg.kafka, 1000, crate::EVENTS_PRODUCER)
                .create_with_context(crate::delivery::AckContext::default())
                .unwrap();
        AppState::new(cfg.clone(), producer, Arc::new(Projects::new(&cfg).unwrap()))
    }

    /// An event published as it came is a slice of the request body, not a copy; one whose
    /// lone surrogates were repaired, or that lacked its ids, is a buffer of its own.
    #[test]
    fn events_published_as_they_came_borrow_the_body() {
        let id = "0123456789abcdef0123456789abcdef";
        let body = Bytes::from(format!(
            "{{\"event_id\":\"{id}\",\"project\":\"web\",\"message\":\"a\"}}\n{{\"event_id\":\"{id}\",\"project\":\"web\",\"message\":\"cut \\ud83d\"}}\n{{\"message\":\"b\"}}"
        ));
        let text = std::str::from_utf8(&body).unwrap();
        let mut scratch = Scratch::default();
        let inside = |p: &Bytes| body.as_ptr_range().contains(&p.as_ptr());
        let lines: Vec<&str> = text.lines().collect();
        let ready: Vec<Ready> = lines
            .iter()
            .map(|l| prepare_in(l.as_bytes(), Some(&body), &mut scratch, "web", NOW, usize::MAX).unwrap())
            .collect();
        assert!(inside(&ready[0].payload));
        assert_eq!(ready[0].payload, lines[0].as_bytes());
        assert!(!inside(&ready[1].payload));
        assert_eq!(json(&ready[1])["message"], "cut \u{fffd}");
        assert!(!inside(&ready[2].payload));
        assert_eq!(json(&ready[2])["project"], "web");
        // The same answers as without the body (but for the new event id of the last line).
        for (l, r) in lines.iter().zip(&ready) {
            let without_id = |r: &Ready| {
                let mut v = json(r);
                v.as_object_mut().unwrap().remove("event_id");
                (r.payload.len(), v)
            };
            assert_eq!(without_id(&prep(l).unwrap()), without_id(r));
        }
    }

    /// An event item without an `event_id` of its own has the envelope's (as Sentry reads an
    /// envelope): the envelope sent again is the same event again, which the grouper counts
    /// once, not a new event under a new id each time.
    #[test]
    fn an_event_without_an_id_has_its_envelopes_id() {
        let st = state_of(web_project(&["webkey123"], 0.0));
        let ids = |body: &str| -> Vec<String> {
            let out = envelope_events(&st, body.as_bytes(), 1, "webkey123", NOW).unwrap();
            out.ready.iter().map(|r| json(r)["event_id"].as_str().unwrap().to_owned()).collect()
        };
        let uuid = "9ec79c33-ec99-42ab-8353-589fcb2e04dc";
        let one = format!("{{\"event_id\":\"{uuid}\"}}\n{{\"type\":\"event\"}}\n{{\"message\":\"m\"}}\n");
        assert_eq!(ids(&one), ["9ec79c33ec9942ab8353589fcb2e04dc"]);
        assert_eq!(ids(&one), ids(&one), "sent again: the same id");
        // The event's own id wins; an envelope id that is not one is not used.
        let own = format!(
            "{{\"event_id\":\"{uuid}\"}}\n{{\"type\":\"event\"}}\n{{\"event_id\":\"0123456789abcdef0123456789abcdef\",\"message\":\"m\"}}\n"
        );
        assert_eq!(ids(&own), ["0123456789abcdef0123456789abcdef"]);
        let bad = "{\"event_id\":\"nope\"}\n{\"type\":\"event\"}\n{\"message\":\"m\"}\n";
        assert_ne!(ids(bad), ids(bad), "no usable id: a new one each time");
        // Two events never share the envelope's id.
        let two = format!("{{\"event_id\":\"{uuid}\"}}\n{{\"type\":\"event\"}}\n{{\"message\":\"a\"}}\n{{\"type\":\"event\"}}\n{{\"message\":\"b\"}}\n");
        let got = ids(&two);
        assert_ne!(got[0], got[1]);
        assert!(!got.contains(&"9ec79c33ec9942ab8353589fcb2e04dc".to_owned()));
    }

    fn prep(line: &str) -> Result<Ready, Problem> {
        prepare(line.as_bytes(), "web", NOW, usize::MAX)
    }

    fn json(r: &Ready) -> serde_json::Value {
        serde_json::from_slice(&r.payload).unwrap()
    }

    /// How often `key` appears as an object key at the top of the published event.
    fn top_level_keys(payload: &[u8], key: &str) -> usize {
        // serde_json's Value would hide duplicates: count them with a streaming visitor.
        struct Count<'a>(&'a str, usize);
        impl<'de> serde::de::Visitor<'de> for &mut Count<'_> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
                while let Some(k) = m.next_key::<String>()? {
                    if k == self.0 {
                        self.1 += 1;
                    }
                    m.next_value::<serde::de::IgnoredAny>()?;
                }
                Ok(())
            }
        }
        let mut c = Count(key, 0);
        serde::Deserializer::deserialize_map(&mut serde_json::Deserializer::from_slice(payload), &mut c).unwrap();
        c.1
    }

    #[test]
    fn prepare_fills_in_missing_ids_and_project() {
        let r = prep(r#"{"message":"boom"}"#).unwrap();
        let v = json(&r);
        assert_eq!(v["project"], "web");
        assert_eq!(v["event_id"], r.id.as_str());
        assert_eq!(v["message"], "boom");
        assert_eq!(r.id.len(), 32);
    }

    #[test]
    fn prepare_keeps_given_bytes_verbatim() {
        let line = r#"{"event_id":"0123456789abcdef0123456789abcdef","project":"web","message":"x"}"#;
        let r = prep(line).unwrap();
        assert_eq!(r.payload, line.as_bytes());
        assert_eq!(r.id, "0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn null_project_and_event_id_count_as_absent() {
        for line in [
            r#"{"project":null,"message":"x"}"#,
            r#"{"project":null,"event_id":null,"message":"x"}"#,
            r#"{"message":"x","event_id":null}"#,
            r#"{"event_id":"0123456789abcdef0123456789abcdef","project":null,"message":"x"}"#,
        ] {
            let r = prep(line).unwrap();
            assert_eq!(top_level_keys(&r.payload, "project"), 1, "{line}");
            assert_eq!(top_level_keys(&r.payload, "event_id"), 1, "{line}");
            let v = json(&r);
            assert_eq!(v["project"], "web");
            assert_eq!(v["event_id"], r.id.as_str());
            // What the grouper reads: one project, the path's.
            let mut buf = r.payload.to_vec();
            let ev = tracefold_model::parse_event_slice(&mut buf).unwrap();
            assert_eq!(ev.project.as_deref(), Some("web"));
        }
        let r = prep(r#"{"event_id":"0123456789abcdef0123456789abcdef","project":null,"message":"x"}"#).unwrap();
        assert_eq!(r.id, "0123456789abcdef0123456789abcdef", "a given id is kept");
    }

    #[test]
    fn prepare_rejects_with_field_and_code() {
        let e = prep(r#"{"project":"api","message":"x"}"#).unwrap_err();
        assert_eq!((e.field.as_deref(), e.code), (Some("project"), Reason::Invalid));
        assert_eq!(prep(r#"{"level":"loud","message":"x"}"#).unwrap_err().field.as_deref(), Some("level"));
        let e = prep("{").unwrap_err();
        assert_eq!((e.field, e.code), (None, Reason::Malformed));
    }

    #[test]
    fn what_the_producer_accepts_the_grouper_reads() {
        let id = "0123456789abcdef0123456789abcdef";
        for extra in ["1e400", "123456789012345678901234567890"] {
            let line = format!(r#"{{"project":"web","event_id":"{id}","message":"x","extra":{extra}}}"#);
            assert_eq!(prep(&line).unwrap_err().code, Reason::Malformed, "{line}");
        }
        for extra in ["-0", "1.5e-300", r#""\u0000""#, "[]", r#"{"a":1}"#] {
            let line = format!(r#"{{"message":"x","extra":{extra}}}"#);
            let r = prep(&line).unwrap();
            let mut buf = r.payload.to_vec();
            tracefold_model::parse_event_slice(&mut buf).unwrap_or_else(|e| panic!("{e}: {line}"));
        }
    }

    #[test]
    fn lone_surrogates_are_replaced_in_the_published_bytes() {
        let line = r#"{"event_id":"0123456789abcdef0123456789abcdef","project":"web","message":"cut \ud83d"}"#;
        let r = prep(line).unwrap();
        assert_eq!(r.payload.len(), line.len(), "repaired in place");
        assert!(String::from_utf8(r.payload.to_vec()).unwrap().contains(r"cut \ufffd"));
        assert_eq!(json(&r)["message"], "cut \u{fffd}");
        let upper = line.replace(r"\ud83d", r"\uD83D");
        assert_eq!(json(&prep(&upper).unwrap())["message"], "cut \u{fffd}", "upper-case escapes too");
        // Also when the event is rebuilt to add its ids.
        let r = prep(r#"{"exception":[{"type":"E\udc00","value":"\ud83d\ude00 ok"}]}"#).unwrap();
        assert_eq!(json(&r)["exception"][0]["type"], "E\u{fffd}");
        assert_eq!(json(&r)["exception"][0]["value"], "\u{1f600} ok");
    }

    #[test]
    fn depth_over_the_limit_is_too_deep() {
        let nest = |d: usize| format!(r#"{{"message":"m","extra":{}1{}}}"#, "[".repeat(d - 1), "]".repeat(d - 1));
        assert!(prep(&nest(MAX_DEPTH)).is_ok());
        let e = prep(&nest(MAX_DEPTH + 1)).unwrap_err();
        assert_eq!(e.code, Reason::TooDeep);
        assert!(e.reason.contains("nested deeper than 64"), "{}", e.reason);
        // A million levels, closed: refused as too deep, no recursion.
        let e = prep(&format!("{{\"m\":\"m\",\"x\":{}{}}}", "[".repeat(1_000_000), "]".repeat(1_000_000))).unwrap_err();
        assert_eq!(e.code, Reason::TooDeep);
        // Never closed: not JSON at all, refused as malformed (the parser stops at the end).
        let e = prep(&"{\"a\":[".repeat(1_000_000)).unwrap_err();
        assert_eq!(e.code, Reason::Malformed);
    }

    #[test]
    fn size_is_checked_before_and_after_ids_are_added() {
        let line = format!(r#"{{"message":"{}"}}"#, "x".repeat(100));
        let e = prepare(line.as_bytes(), "web", NOW, 50).unwrap_err();
        assert_eq!(e.code, Reason::TooLarge);
        // Fits as sent, not once project and event_id are added.
        let e = prepare(line.as_bytes(), "web", NOW, line.len()).unwrap_err();
        assert_eq!(e.code, Reason::TooLarge);
        assert!(prepare(line.as_bytes(), "web", NOW, line.len() + 100).is_ok());
    }

    #[test]
    fn details_serialize_their_code() {
        let d = Problem::new(Reason::TooDeep, None, "deep").at(3);
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            serde_json::json!({"line": 3, "reason": "deep", "code": "too_deep"})
        );
        let e = refused(vec![d, Problem::too_large(10, 5).at(4)], 4);
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let e = refused(vec![Problem::new(Reason::Invalid, Some("level".into()), "bad").at(1)], 1);
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn one_value_or_lines() {
        assert!(is_one_value(r#"{"message":"x"}"#));
        assert!(is_one_value("{\n  \"message\": \"a } ] \\\" {\",\n  \"b\": [1, {}]\n}\n"));
        assert!(!is_one_value("{\"a\":1}\n{\"a\":2}"));
        assert!(!is_one_value("{\"a\":1}\n\n{\"a\":2}\n"));
        assert!(!is_one_value("x\ny"));
        assert!(is_one_value("   "));
        // Unbalanced input: read as lines, each refused on its own.
        assert!(!is_one_value("{\n{\n"));
        let deep = format!("{}\n{}", "[".repeat(1_000_000), "]".repeat(1_000_000));
        assert!(is_one_value(&deep));
    }

    #[test]
    fn lines_are_counted_lazily() {
        let text = "{}\n".repeat(5_000_000);
        let t = Instant::now();
        let mut n = 0;
        for _ in event_lines(&text) {
            n += 1;
            if n > 10 {
                break;
            }
        }
        assert_eq!(n, 11);
        assert!(t.elapsed() < Duration::from_millis(50), "stops at the limit: {:?}", t.elapsed());
        assert_eq!(
            event_lines(" \n\r\n{}\r\n  {}  \n").map(|(i, l)| (i, l.len())).collect::<Vec<_>>(),
            [(3, 2), (4, 2)]
        );
    }

    #[tokio::test]
    async fn the_limiter_refuses_at_once_and_frees_slots() {
        let l = Limiter::new(2);
        let a = l.try_enter().unwrap();
        let _b = l.try_enter().unwrap();
        assert_eq!(l.in_flight(), 2);
        let e = l.try_enter().unwrap_err();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        let resp = e.into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("max_concurrent_requests"), "{v}");
        drop(a);
        assert!(l.try_enter().is_ok(), "a finished request frees its slot");
    }

    #[tokio::test]
    async fn backpressure_refusals_carry_retry_after_and_a_code() {
        let resp = backpressure_error(3, Endpoint::Native).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
        assert!(resp.headers().get("x-sentry-rate-limits").is_none());
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "backpressure", "{v}");
        assert!(v["error"].as_str().unwrap().contains("backpressure"), "{v}");
        let resp = backpressure_error(2, Endpoint::Sentry).into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        assert_eq!(resp.headers()["x-sentry-rate-limits"], "2::organization:backpressure");
        // Other errors carry no code.
        let v = serde_json::to_value(ApiError::new(StatusCode::BAD_REQUEST, "x")).unwrap();
        assert!(v.get("code").is_none(), "{v}");
    }

    /// A `Content-Encoding` that is not ASCII is refused as unsupported and named, not
    /// ignored: the compressed bytes were read as the body and the client was told its events
    /// were not UTF-8 or malformed.
    #[tokio::test]
    async fn a_content_encoding_that_is_not_ascii_is_unsupported() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_bytes(b"gzip\xe9").unwrap());
        let e = decode(&headers, Bytes::from_static(b"\x1f\x8b compressed"), 1 << 20).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let body = axum::body::to_bytes(e.into_response().into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("gzip\u{fffd}"), "{v}");
        // Absent, empty and identity are no encoding.
        for h in [None, Some(""), Some(" Identity ")] {
            let mut headers = HeaderMap::new();
            if let Some(h) = h {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_str(h).unwrap());
            }
            assert_eq!(decode(&headers, Bytes::from_static(b"{}"), 1 << 20).await.unwrap(), &b"{}"[..]);
        }
    }

    /// A client that disconnects while Kafka acknowledges its events: the events are
    /// published all the same (they were queued), so they must be counted as accepted in the
    /// outcomes, which the pipeline's counts are reconciled against. The handler used to be
    /// dropped with the connection, before it counted them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_leaves_while_kafka_acknowledges_still_has_its_events_counted() {
        use rdkafka::producer::Producer as _;
        use tokio::io::AsyncWriteExt as _;
        let mut cfg = Config::default();
        let broker = tracefold_runtime::devbroker::DevBroker::start(1, &cfg.topics, Some(1)).unwrap();
        cfg.kafka.bootstrap_servers = broker.bootstrap_servers();
        let cfg = Arc::new(cfg);
        let c = cfg.clone();
        let producer = tokio::task::spawn_blocking(move || crate::kafka_producer(&c)).await.unwrap().unwrap();
        let projects = Arc::new(Projects::new(&cfg).unwrap());
        let st = AppState::new(cfg.clone(), producer.clone(), projects);
        // Every broker answer now takes a second: the request waits for its acknowledgement.
        broker.cluster().broker_round_trip_time(1, Duration::from_secs(1)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(tracefold_runtime::server::serve(
            listener,
            router(st.clone()),
            Duration::from_secs(30),
            async {
                let _ = stopped.await;
            },
        ));

        let body = r#"{"message":"left early"}"#;
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST /api/v1/projects/web/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        client.write_all(req.as_bytes()).await.unwrap();
        // Queued for Kafka: the client goes.
        let deadline = Instant::now() + Duration::from_secs(60);
        while producer.in_flight_count() == 0 {
            assert!(Instant::now() < deadline, "the event was never queued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(client);
        // The event is delivered; its outcome must follow.
        let mut accepted = 0;
        while accepted == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            accepted += st
                .outcomes
                .take()
                .iter()
                .filter(|o| o.project == "web" && o.outcome == Outcome::Accepted)
                .map(|o| o.quantity)
                .sum::<u64>();
        }
        assert_eq!(producer.in_flight_count(), 0, "the event was delivered");
        assert_eq!(accepted, 1, "a delivered event is counted as accepted");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    /// A request that needs more room than the producer's Kafka queue has at all gets 413, not
    /// a 503 that has the client retry for ever what can never pass.
    #[tokio::test]
    async fn a_request_larger_than_the_kafka_queue_gets_413_not_503() {
        let mut cfg = Config::default();
        cfg.kafka.librdkafka.insert("queue.buffering.max.messages".into(), "2".into());
        let st = state_of(cfg);
        let ready: Vec<Ready> = (0..3).map(|_| prep(r#"{"message":"x"}"#).unwrap()).collect();
        let e = publish(&st, &ready).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE, "{}", e.error);
        assert!(e.error.contains("queue.buffering.max.messages"), "{}", e.error);
        assert!(e.retry_after_secs.is_none(), "no retry can pass");
        // Room that is only taken for now is still 503 with Retry-After.
        let _held = st.queue.reserve(&ready[..2]).unwrap();
        let e = publish(&st, &ready[..1]).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE, "{}", e.error);
        assert!(e.retry_after_secs.is_some());
    }

    /// Events the pipeline refuses after the rate limits admitted them (backpressure) cost no
    /// tokens: the retry of the same events is not refused 429. A batch refused as invalid keeps
    /// the tokens it took: the client sent it.
    #[tokio::test]
    async fn refused_events_cost_tokens_only_when_invalid() {
        let st = state_of(web_project(&[], 10.0));
        let good = "{\"message\":\"x\"}\n".repeat(10);
        let bad = format!("{}not json\n", "{\"message\":\"x\"}\n".repeat(9));
        let e = native_events(&st, &Bytes::from(bad), true, "web", None, NOW).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let Err(e) = native_events(&st, &Bytes::from(good.clone()), true, "web", None, NOW) else {
            panic!("20 events out of a bucket of 10");
        };
        assert_eq!(
            e.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "the invalid batch kept its 10 tokens: the client sent it"
        );
        // A fresh bucket, and a gate that refuses for backpressure.
        let st = AppState::new(st.cfg.clone(), st.producer.clone(), Arc::new(Projects::new(&st.cfg).unwrap()));
        st.gate.set(crate::backpressure::State::Refusing);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
        let r = ingest_inner(st.clone(), "web".into(), None, headers, Body::from(good)).await;
        assert_eq!(r.unwrap_err().status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(st.projects.admit(Some("web"), None, None, 10).is_ok(), "the refused events took no tokens");
    }

    /// Requests refused before a handler runs (a method the route does not take, a path whose
    /// percent-encoding is not UTF-8) get a JSON body that says what is wrong, as every other
    /// refusal: clients and SDKs read `error` from it.
    #[tokio::test]
    async fn refusals_before_a_handler_are_json_that_says_what_is_wrong() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let st = state_of(Config::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server =
            tokio::spawn(tracefold_runtime::server::serve(listener, router(st), Duration::from_secs(30), async {
                let _ = stopped.await;
            }));
        for (req, status, says) in [
            ("GET /api/v1/projects/web/events HTTP/1.1", "405", "POST"),
            ("PUT /api/42/envelope/ HTTP/1.1", "405", "POST"),
            ("POST /api/v1/projects/%FF/events HTTP/1.1", "400", "UTF-8"),
            ("POST /api/%C3%28/store/ HTTP/1.1", "400", "UTF-8"),
            ("GET /nowhere HTTP/1.1", "404", "no such endpoint"),
        ] {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(format!("{req}\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut resp = String::new();
            c.read_to_string(&mut resp).await.unwrap();
            assert!(resp.starts_with(&format!("HTTP/1.1 {status}")), "{req}: {resp}");
            assert!(resp.to_ascii_lowercase().contains("content-type: application/json"), "{req}: {resp}");
            let body = resp.split_once("\r\n\r\n").unwrap().1;
            let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{req}: {e}: {body:?}"));
            assert!(v["error"].as_str().is_some_and(|e| e.contains(says)), "{req}: {v}");
        }
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_stalled_body_times_out_with_408() {
        let mut cfg = Config::default();
        cfg.http.body_timeout_ms = 100;
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
        tx.try_send(Ok(b"{\"message\":".to_vec())).unwrap();
        let body = Body::from_stream(rx);
        let t = Instant::now();
        let e = read_raw(&cfg, &HeaderMap::new(), body).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(t.elapsed() < Duration::from_secs(2));
        let resp = e.into_response();
        assert_eq!(resp.headers()[header::CONNECTION], "close");
        drop(tx);
    }

    #[tokio::test]
    async fn bodies_are_read_within_the_limit() {
        let mut cfg = Config::default();
        cfg.http.max_body_bytes = 10;
        let e = read_raw(&cfg, &HeaderMap::new(), Body::from(vec![b'x'; 11])).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "1000000000".parse().unwrap());
        let e = read_raw(&cfg, &h, Body::empty()).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE, "refused by the claimed length, before reading");
        assert_eq!(read_raw(&cfg, &HeaderMap::new(), Body::from("0123456789")).await.unwrap(), &b"0123456789"[..]);
    }

    /// Strings as people and SDKs send them: any printable text, CJK, combining marks, emoji,
    /// right-to-left scripts.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,40}",
            "[\u{4e00}-\u{9fff}]{1,20}",
            "[a-z]{1,5}[\u{0300}-\u{036f}]{1,4}",
            "[\u{1f600}-\u{1f64f}\u{1f680}-\u{1f6ff}]{1,10}",
            "[\u{0590}-\u{05ff}\u{0600}-\u{06ff} ]{1,20}",
        ]
    }

    /// A JSON string literal of `s` as `JSON.stringify` writes it after cutting at UTF-16
    /// unit `cut`: every unit escaped, so a cut inside a pair leaves a lone surrogate.
    fn js_cut(s: &str, cut: usize) -> (String, String) {
        let units: Vec<u16> = s.encode_utf16().collect();
        let cut = cut.min(units.len());
        let lit: String = units[..cut].iter().map(|u| format!("\\u{u:04x}")).collect();
        (format!("\"{lit}\""), String::from_utf16_lossy(&units[..cut]))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// The body's lines are those of `str::lines`, trimmed, numbered the same, blank ones
        /// left out: any text, line ends of `\n` and `\r\n`, blank and space-only lines, and
        /// Unicode spaces (`trim` takes them off as before).
        #[test]
        fn event_lines_are_those_of_str_lines(parts in proptest::collection::vec(
            prop_oneof![text(), Just(String::new()), Just("  ".to_owned()), Just("\u{3000}x\u{a0}".to_owned())], 0..8),
            ends in proptest::collection::vec(prop_oneof![Just("\n"), Just("\r\n"), Just("\r"), Just("")], 0..8),
        ) {
            let mut body = String::new();
            for (i, p) in parts.iter().enumerate() {
                body.push_str(p);
                body.push_str(ends.get(i).copied().unwrap_or("\n"));
            }
            let want: Vec<(usize, &str)> =
                body.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty()).collect();
            prop_assert_eq!(event_lines(&body).collect::<Vec<_>>(), want);
        }

        /// The body's UTF-8 check answers as the standard library's, with its error's position:
        /// any text, cut anywhere (inside a character too), or with a byte that is never UTF-8.
        #[test]
        fn body_text_answers_as_str_from_utf8(t in text(), cut in 0usize..200, bad in any::<bool>()) {
            let mut b = t.into_bytes();
            b.truncate(cut.min(b.len()));
            if bad {
                b.insert(b.len() / 2, 0xff);
            }
            match (body_text(&b), std::str::from_utf8(&b)) {
                (Ok(got), Ok(want)) => prop_assert_eq!(got, want),
                (Err(got), Err(want)) => {
                    prop_assert_eq!(got.status(), StatusCode::BAD_REQUEST);
                    prop_assert_eq!(got.error, format!("request body is not UTF-8: {want}"));
                }
                (got, want) => prop_assert!(false, "{:?} against {:?}", got.map(str::len), want.map(str::len)),
            }
        }

        /// Any text in any field: accepted or refused with a reason, never a panic; accepted
        /// events keep their text and get exactly one project and event id.
        #[test]
        fn prepare_is_total_on_any_text(msg in text(), ty in text(), tag in text(), has_ids in any::<bool>(), null_project in any::<bool>()) {
            let mut o = serde_json::json!({"message": msg, "exception": [{"type": ty, "value": "v"}], "tags": {tag.clone(): tag}});
            if has_ids {
                o["project"] = "web".into();
                o["event_id"] = "0123456789abcdef0123456789abcdef".into();
            } else if null_project {
                o["project"] = serde_json::Value::Null;
            }
            let line = serde_json::to_string(&o).unwrap();
            match prep(&line) {
                Ok(r) => {
                    let v = json(&r);
                    prop_assert_eq!(&v["message"], &o["message"]);
                    prop_assert_eq!(&v["project"], "web");
                    prop_assert_eq!(top_level_keys(&r.payload, "project"), 1);
                    prop_assert_eq!(top_level_keys(&r.payload, "event_id"), 1);
                    prop_assert_eq!(check_line(&line, "web", NOW).is_ok(), true);
                }
                Err(p) => prop_assert!(p.code == Reason::Invalid, "{:?}", p),
            }
            // Cut anywhere: any prefix is refused or accepted, never a panic.
            let mut cut = line.len() / 2;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            let _ = check_line(&line[..cut], "web", NOW);
        }

        /// A string cut inside an emoji by a JavaScript client is accepted with U+FFFD.
        #[test]
        fn js_cut_strings_are_accepted(msg in text(), cut in 0usize..80, with_ids in any::<bool>()) {
            let (lit, want) = js_cut(&msg, cut);
            let ids = if with_ids { r#""project":"web","event_id":"0123456789abcdef0123456789abcdef","# } else { "" };
            let line = format!(r#"{{{ids}"exception":[{{"type":"E","value":{lit}}}],"message":{lit}}}"#);
            let r = prep(&line).unwrap();
            if with_ids {
                prop_assert_eq!(r.payload.len(), line.len(), "published as sent, repaired in place");
            }
            // serde_json refuses lone surrogates: the published bytes have none left.
            let v = json(&r);
            prop_assert_eq!(v["message"].as_str().unwrap(), want.as_str());
            prop_assert_eq!(v["exception"][0]["value"].as_str().unwrap(), want.as_str());
        }

        /// Whatever the producer publishes, the grouper reads, with the path's project.
        #[test]
        fn published_bytes_are_read_by_the_grouper(
            msg in text(),
            cut in 0usize..40,
            flip in 0usize..200,
            byte in any::<u8>(),
            nulls in any::<bool>(),
        ) {
            let (lit, _) = js_cut(&msg, cut);
            let ids = if nulls { r#""project":null,"event_id":null,"# } else { "" };
            let mut line = format!(r#"{{{ids}"message":{lit},"exception":[{{"type":"E"}}]}}"#).into_bytes();
            let at = flip % line.len();
            line[at] = byte;
            if let Ok(r) = prepare(&line, "web", NOW, 1 << 20) {
                let mut buf = r.payload.to_vec();
                let ev = tracefold_model::parse_event_slice(&mut buf);
                prop_assert!(ev.as_ref().is_ok_and(|e| e.project.as_deref() == Some("web")), "{:?}", ev.err());
            }
        }

        /// A Sentry event with any text is published as the typed event it maps to (with the
        /// path's project and an event id), and that is what the grouper reads.
        #[test]
        fn sentry_events_are_published_as_the_event_they_map_to(
            msg in text(),
            ty in text(),
            tag in text(),
            function in text(),
            secs in 1_795_600_000.0f64..1_795_700_000.0,
            with_id in any::<bool>(),
        ) {
            let mut payload = serde_json::json!({
                "message": msg, "timestamp": secs, "platform": "python", "user": {"id": 5},
                "exception": {"values": [{"type": ty, "value": "v", "stacktrace": {"frames": [{"function": function, "lineno": 3, "vars": {}}]}}]},
                "tags": [[tag.clone(), msg.clone()], ["other", tag]],
                "breadcrumbs": {"values": [{"message": "not modelled"}]},
            });
            if with_id {
                payload["event_id"] = "fc6d8c0c-43fc-4630-8ea5-bc7a3b7d3c64".into();
            }
            let r = prepare_sentry(&serde_json::to_vec(&payload).unwrap(), "web", NOW, 1 << 20).unwrap();
            let mut want = tracefold_model::sentry::map(&payload, Some("web")).unwrap();
            prop_assert_eq!(want.event_id.is_some(), with_id);
            let want_id = want.event_id.get_or_insert_with(|| Cow::Owned(r.id.clone())).clone();
            prop_assert_eq!(r.id.as_str(), &*want_id);
            let mut buf = r.payload.to_vec();
            prop_assert_eq!(parse_event_slice(&mut buf).unwrap(), want);
        }

        /// Arbitrary bytes, and arbitrary text with brackets, never panic.
        #[test]
        fn check_line_is_total(s in "\\PC{0,200}", opens in 0usize..200) {
            let _ = check_line(&s, "web", NOW);
            let text = serde_json::to_string(&s).expect("a string serializes");
            let nested = format!("{{\"message\":{}{text}{}}}", "[".repeat(opens), "]".repeat(opens));
            let r = check_line(&nested, "web", NOW);
            if opens >= MAX_DEPTH {
                let e = r.unwrap_err();
                prop_assert!(e.code == Reason::TooDeep && e.to_string().contains("nested deeper"), "{}", e);
            }
        }
    }
}
