//! `tracefold ui`: a small server-rendered web UI over the ClickHouse tables: the issues of a
//! window (events, users, a sparkline of the last hour, status), one issue (events per hour,
//! releases, environments, the sample event, the status history, resolve / ignore / reopen).
//!
//! Every page is plain HTML with inline SVG charts: no script, no external request, no build
//! step. Every value is escaped ([`html::Page`]); every query is bound and LIMITed (the
//! queries are `tracefold_store`'s).
#![warn(missing_docs)]

pub mod html;
mod sample;
pub mod signals;
pub mod svg;

use axum::extract::rejection::{FormRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use html::{url_part, Page};
use serde::Deserialize;
use std::sync::Arc;
use subtle::ConstantTimeEq as _;
use tracefold_runtime::config::ClickHouseConfig;
use tracefold_store::issues::{StatusChange, TopBy, TopQuery};
use tracefold_store::ui::{ListQuery, ListSort, Resolution};
use tracefold_store::IssueStatus;

/// Issues per page of the list.
pub const PAGE_SIZE: u64 = 50;
/// Pages of the list one can go through (the list is the top `PAGE_SIZE * MAX_PAGES`).
pub const MAX_PAGES: u64 = 20;

/// What the UI serves from.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The ClickHouse holding tracefold's tables.
    pub clickhouse: ClickHouseConfig,
    /// The signals topic; `None`: the signals page says it is not configured.
    pub signals: Option<signals::Source>,
    /// The token that allows status changes (resolve, ignore, reopen); `None`: the UI is
    /// read-only.
    pub operator_token: Option<String>,
    /// The grouper's `[grouping]` section, so that the issue page marks the frames that made
    /// the fingerprint under the same rules (the default when the grouper has none).
    pub grouping: tracefold_fingerprint::GroupingConfig,
}

struct AppState {
    cfg: Config,
    client: tracefold_store::Client,
    /// Permits for signal reads ([`MAX_SIGNAL_READS`]).
    signal_reads: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    fn new(cfg: Config) -> Self {
        let client = tracefold_store::client::client(&cfg.clickhouse);
        AppState { cfg, client, signal_reads: Arc::new(tokio::sync::Semaphore::new(MAX_SIGNAL_READS)) }
    }
}

/// The UI's routes.
pub fn router(cfg: Config) -> Router {
    let state = Arc::new(AppState::new(cfg));
    Router::new()
        .route("/", get(issues))
        .route("/issues/{project}/{issue_id}", get(issue))
        .route("/issues/{project}/{issue_id}/status", post(set_status))
        .route("/signals", get(signals_page))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        // Unknown paths and methods: an error page as every other answer, not an empty body.
        .fallback(|| async { error_page(StatusCode::NOT_FOUND, "no such page") })
        .method_not_allowed_fallback(|| async {
            error_page(StatusCode::METHOD_NOT_ALLOWED, "this page does not take this method")
        })
        .with_state(state)
}

/// Ready when ClickHouse answers.
async fn ready(State(st): State<Arc<AppState>>) -> Response {
    match tracefold_store::client::server_version(&st.client).await {
        Ok(_) => "ok".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("clickhouse: {e}")).into_response(),
    }
}

/// Serves the UI on `listener` until `shutdown` completes.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // A deadline for request heads (axum::serve has none): a client that connects and sends
    // nothing, or trickles its headers, does not hold a socket for ever.
    tracefold_runtime::server::serve(listener, router(cfg), tracefold_runtime::server::DEFAULT_HEADER_TIMEOUT, shutdown)
        .await
}

/// The chosen window: a name and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    name: &'static str,
    hours: u32,
}

const WINDOWS: [Window; 4] = [
    Window { name: "1h", hours: 1 },
    Window { name: "24h", hours: 24 },
    Window { name: "7d", hours: 168 },
    Window { name: "30d", hours: 720 },
];

fn window(s: Option<&str>) -> Window {
    WINDOWS.into_iter().find(|w| Some(w.name) == s).unwrap_or(WINDOWS[1])
}

fn sort(s: Option<&str>) -> ListSort {
    ListSort::ALL.into_iter().find(|b| Some(b.as_str()) == s).unwrap_or_default()
}

/// The ranking of `tracefold top` that is `s`, if there is one.
fn top_by(s: ListSort) -> Option<TopBy> {
    match s {
        ListSort::Events => Some(TopBy::Events),
        ListSort::Users => Some(TopBy::Users),
        ListSort::Growth => Some(TopBy::Growth),
        ListSort::New => Some(TopBy::New),
        ListSort::LastSeen => None,
    }
}

/// The issues list's state, all in the URL.
#[derive(Debug, Default, Deserialize)]
struct ListParams {
    project: Option<String>,
    by: Option<String>,
    window: Option<String>,
    environment: Option<String>,
    release: Option<String>,
    // Text: an unknown status is no filter, not a 400.
    status: Option<String>,
    /// The search text (title or culprit).
    q: Option<String>,
    // Text, so that a hand-edited link with a bad page number gets the first page, not a 400.
    page: Option<String>,
    /// `1`: count now, not from the precomputed ranking (as `tracefold top --fresh`).
    fresh: Option<String>,
}

/// The issues list's state as read from the URL (empty values: no filter).
#[derive(Debug, Clone, Copy)]
struct ListState<'a> {
    window: Window,
    sort: ListSort,
    project: Option<&'a str>,
    environment: Option<&'a str>,
    release: Option<&'a str>,
    status: Option<IssueStatus>,
    search: Option<&'a str>,
    fresh: bool,
}

impl<'a> ListState<'a> {
    fn new(q: &'a ListParams) -> Self {
        let set = |v: &'a Option<String>| v.as_deref().filter(|v| !v.is_empty());
        ListState {
            window: window(q.window.as_deref()),
            sort: sort(q.by.as_deref()),
            project: set(&q.project),
            environment: set(&q.environment),
            release: set(&q.release),
            status: set(&q.status).and_then(|s| s.parse().ok()),
            search: set(&q.q),
            fresh: set(&q.fresh).is_some_and(|v| v == "1" || v == "true"),
        }
    }

    /// `/?by=&window=&project=&environment=&release=&status=&q=&page=` (unset filters left out).
    fn url(&self, page: u64) -> String {
        let mut u = format!("/?by={}&window={}", self.sort.as_str(), self.window.name);
        for (name, v) in [
            ("project", self.project),
            ("environment", self.environment),
            ("release", self.release),
            ("status", self.status.map(IssueStatus::as_str)),
            ("q", self.search),
        ] {
            if let Some(v) = v {
                u.push('&');
                u.push_str(name);
                u.push('=');
                u.push_str(&url_part(v));
            }
        }
        if page > 0 {
            u.push_str(&format!("&page={page}"));
        }
        if self.fresh {
            u.push_str("&fresh=1");
        }
        u
    }
}

const STYLE: &str = "<style>\
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}\
header{background:#263238;color:#fff;padding:.5em 1em}header a{color:#fff;margin-right:1em}\
main{padding:1em;max-width:72em}table{border-collapse:collapse;width:100%}\
td,th{padding:.3em .5em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}\
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}\
.t{overflow-wrap:anywhere;max-width:40em}.c{color:#666;overflow-wrap:anywhere}\
.s-resolved{color:#2e7d32}.s-ignored{color:#888}.s-active{color:#c62828}\
.spark{color:#1565c0}.bars{width:100%;height:120px;fill:#1565c0}\
pre{background:#fff;border:1px solid #ddd;padding:.5em;overflow:auto;white-space:pre-wrap;overflow-wrap:anywhere}\
form.inline{display:inline}ol.frames{font-size:13px;padding-left:1.5em}li.frame{color:#777;overflow-wrap:anywhere}li.inapp{color:#111;background:#fff8e1;font-weight:600}li.fp{border-left:3px solid #6a1b9a;padding-left:.3em}pre.context{font-weight:400;margin:.2em 0;white-space:pre-wrap}small.raw{display:block;font-weight:400;color:#777}.fpm{color:#6a1b9a;white-space:nowrap}nav a{margin-right:.5em}\
@media (max-width:40em){.wide{display:none}td,th{padding:.2em}}\
</style>";

fn head(p: &mut Page, title: &str) {
    p.raw("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">")
        .raw("<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">")
        .raw("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'\">")
        .raw("<title>")
        .text(title)
        .raw(" · tracefold</title>")
        .raw(STYLE)
        .raw("</head><body><header><a href=\"/\">Issues</a><a href=\"/signals\">Signals</a></header><main>");
}

fn html_response(status: StatusCode, p: Page) -> Response {
    let mut p = p;
    p.raw("</main></body></html>");
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"),
        ],
        p.finish(),
    )
        .into_response()
}

fn error_page(status: StatusCode, msg: &str) -> Response {
    let mut p = Page::default();
    head(&mut p, "error");
    p.raw("<h1>").num(status.as_u16()).raw("</h1><p>").text(msg).raw("</p>");
    html_response(status, p)
}

/// A request the extractors refused (a query or path that does not decode, a repeated
/// parameter, a form without its fields, a body over the limit): the rejection's status and
/// message as an error page with the page's headers, not axum's plain text.
macro_rules! rejected {
    ($r:expr) => {{
        let r = $r;
        error_page(r.status(), &r.body_text())
    }};
}

fn store_error(e: &tracefold_store::Error) -> Response {
    use tracefold_store::Error as E;
    match e {
        E::UnknownIssue { .. } => error_page(StatusCode::NOT_FOUND, &e.to_string()),
        E::TooManyRows { .. } => error_page(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
        _ => {
            tracing::warn!(error = %e, "ui query failed");
            error_page(StatusCode::BAD_GATEWAY, &e.to_string())
        }
    }
}

fn issue_url(project: &str, issue_id: &str, w: Window) -> String {
    format!("/issues/{}/{}?window={}", url_part(project), url_part(issue_id), w.name)
}

async fn issues(State(st): State<Arc<AppState>>, q: Result<Query<ListParams>, QueryRejection>) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(r) => return rejected!(r),
    };
    let ls = ListState::new(&q);
    let w = ls.window;
    let page = q.page.as_deref().and_then(|p| p.parse::<u64>().ok()).unwrap_or(0).min(MAX_PAGES - 1);
    let db = &st.cfg.clickhouse.database;
    let limit = PAGE_SIZE * (page + 1) + 1;
    let since_secs = u64::from(w.hours) * 3600;
    let filtered = ls.environment.is_some() || ls.release.is_some() || ls.status.is_some() || ls.search.is_some();
    // Without a filter, the numbers of `tracefold top`: as it, from the precomputed ranking
    // when that holds the answer and is fresh (7 and 30 days, by events or users) unless
    // `&fresh=1`; with a filter (or by last seen), the filtered list.
    let mut ranked = None;
    let top_q = top_by(ls.sort).filter(|_| !filtered).map(|by| TopQuery { since_secs, limit, project: ls.project, by });
    let rows = match &top_q {
        Some(tq) => {
            let cached = if ls.fresh {
                None
            } else {
                // No ranking that answers (or a failed read of it): the live query answers.
                match tracefold_store::rankings::top_cached(&st.client, db, tq).await {
                    Ok(Ok(answer)) => Some(answer),
                    Ok(Err(why)) => {
                        tracing::debug!(?why, "issues list counted live");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the ranking failed; issues list counted live");
                        None
                    }
                }
            };
            match cached {
                Some((rows, r)) => {
                    ranked = Some(r);
                    Ok(rows)
                }
                None => tracefold_store::issues::top(&st.client, db, tq).await,
            }
        }
        None => {
            let lq = ListQuery {
                since_secs,
                limit,
                sort: ls.sort,
                project: ls.project,
                environment: ls.environment,
                release: ls.release,
                status: ls.status,
                search: ls.search,
            };
            tracefold_store::ui::issue_list(&st.client, db, &lq).await
        }
    };
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return store_error(&e),
    };
    let more = rows.len() as u64 > PAGE_SIZE * (page + 1);
    let rows: Vec<_> = rows.into_iter().skip((PAGE_SIZE * page) as usize).take(PAGE_SIZE as usize).collect();
    // Statuses of the page's issues, one query per project on the page.
    let mut status = std::collections::HashMap::new();
    let mut projects: Vec<&str> = rows.iter().map(|r| r.project.as_str()).collect();
    projects.sort_unstable();
    projects.dedup();
    for p in projects {
        let ids: Vec<&str> = rows.iter().filter(|r| r.project == p).map(|r| r.issue_id.as_str()).collect();
        match tracefold_store::ui::statuses(&st.client, db, p, &ids).await {
            Ok(s) => status.extend(s.into_iter().map(|(id, s)| ((p.to_owned(), id), s))),
            Err(e) => return store_error(&e),
        }
    }
    // The release of each row's first events, one query for the page.
    let firsts: Vec<(&str, &str)> = rows.iter().map(|r| (r.project.as_str(), r.issue_id.as_str())).collect();
    let first_release: std::collections::HashMap<(String, String), String> =
        match tracefold_store::ui::first_releases(&st.client, db, &firsts).await {
            Ok(f) => f.into_iter().map(|(p, i, r)| ((p, i), r)).collect(),
            Err(e) => return store_error(&e),
        };

    let mut p = Page::default();
    head(&mut p, "Issues");
    p.raw("<h1>Issues</h1><form id=\"filters\" method=\"get\" action=\"/\">");
    for (label, name, value) in [
        ("Search", "q", ls.search),
        ("Project", "project", ls.project),
        ("Environment", "environment", ls.environment),
        ("Release", "release", ls.release),
    ] {
        p.raw("<label>")
            .raw(label)
            .raw(" <input name=\"")
            .raw(name)
            .raw("\" value=\"")
            .text(value.unwrap_or(""))
            .raw("\" size=\"12\"></label> ");
    }
    p.raw("<label>Status <select name=\"status\"><option value=\"\">any</option>");
    for cand in [IssueStatus::Active, IssueStatus::Resolved, IssueStatus::Ignored] {
        p.raw("<option");
        if Some(cand) == ls.status {
            p.raw(" selected");
        }
        p.raw(">").text(cand.as_str()).raw("</option>");
    }
    p.raw("</select></label> <label>Window <select name=\"window\">");
    for cand in WINDOWS {
        p.raw("<option");
        if cand == w {
            p.raw(" selected");
        }
        p.raw(">").text(cand.name).raw("</option>");
    }
    p.raw("</select></label> <label>Sort <select name=\"by\">");
    for cand in ListSort::ALL {
        p.raw("<option");
        if cand == ls.sort {
            p.raw(" selected");
        }
        p.raw(">").text(cand.as_str()).raw("</option>");
    }
    p.raw("</select></label> <button>Show</button></form>");
    p.raw("<table id=\"issues\"><thead><tr><th>Issue</th><th>Level</th><th>Status</th>")
        .raw("<th class=\"n\">Events</th><th class=\"n\">Users</th><th class=\"wide\">Last hour</th>")
        .raw("<th class=\"wide\">First release</th><th class=\"wide\">First seen</th><th class=\"wide\">Last seen</th></tr></thead><tbody>");
    for r in &rows {
        let key = (r.project.clone(), r.issue_id.clone());
        let s = status.get(&key).copied().unwrap_or(IssueStatus::Active);
        p.raw("<tr data-issue=\"")
            .text(&r.issue_id)
            .raw("\" data-project=\"")
            .text(&r.project)
            .raw("\"><td class=\"t\"><a href=\"")
            .text(&issue_url(&r.project, &r.issue_id, w))
            .raw("\">")
            .user(&r.title)
            .raw("</a><div class=\"c\">")
            .user(&r.project)
            .raw(" · ")
            .user(&r.culprit)
            .raw("</div></td><td>")
            .user(&r.level)
            .raw("</td><td class=\"s-")
            .text(s.as_str())
            .raw("\">")
            .text(s.as_str())
            .raw("</td><td class=\"n events\">")
            .num(r.count)
            .raw("</td><td class=\"n users\">")
            .num(r.users);
        // Users of windows longer than a day come from daily sketches: marked, the bound in
        // the tooltip.
        if r.users_approximate {
            p.raw("<span class=\"approx\" title=\"estimated: ")
                .text(tracefold_store::issues::USERS_SKETCH_ERROR)
                .raw("\">≈</span>");
        }
        p.raw("</td><td class=\"wide\">");
        // The SVG is drawn from numbers only.
        p.raw_svg(&svg::sparkline(&r.last_hour, 120, 24));
        p.raw("</td><td class=\"wide first-release\">")
            .user(first_release.get(&key).map_or("", String::as_str))
            .raw("</td><td class=\"wide\">")
            .text(&r.first_seen)
            .raw("</td><td class=\"wide last-seen\">")
            .text(&r.last_seen);
        p.raw("</td></tr>");
    }
    p.raw("</tbody></table>");
    if rows.is_empty() {
        p.raw("<p>No issues in this window");
        if filtered {
            p.raw(" match the filters");
        }
        p.raw(".</p>");
    }
    // Where the numbers come from: the ranking (and how to count now), or counted now when
    // asked to although a ranking could have answered.
    if let Some(r) = ranked {
        let now = ListState { fresh: true, ..ls };
        p.raw("<p class=\"c\" id=\"ranked\">")
            .text(&r.describe())
            .raw(": the numbers as of then. <a href=\"")
            .text(&now.url(page))
            .raw("\">Count now</a></p>");
    } else if ls.fresh && top_q.as_ref().is_some_and(tracefold_store::rankings::is_ranked) {
        let ranked = ListState { fresh: false, ..ls };
        p.raw("<p class=\"c\" id=\"counted\">Counted now. <a href=\"")
            .text(&ranked.url(page))
            .raw("\">The precomputed ranking</a></p>");
    }
    p.raw("<nav>");
    if page > 0 {
        p.raw("<a rel=\"prev\" href=\"").text(&ls.url(page - 1)).raw("\">Previous</a>");
    }
    if more && page + 1 < MAX_PAGES {
        p.raw("<a rel=\"next\" href=\"").text(&ls.url(page + 1)).raw("\">Next</a>");
    }
    p.raw("</nav>");
    html_response(StatusCode::OK, p)
}

/// Most signals the signals page shows.
pub const MAX_SIGNALS: usize = 200;

/// Most reads of the signals topic at once: each is a Kafka consumer on a blocking thread for
/// about 2 s (with Kafka unreachable, up to 10 s for the metadata and 10 s for each
/// partition's watermarks). More requests for the signals page meanwhile get a 503 with
/// `Retry-After` (they made a consumer and a thread each, as many as came in).
pub const MAX_SIGNAL_READS: usize = 4;

async fn signals_page(State(st): State<Arc<AppState>>) -> Response {
    let Some(src) = st.cfg.signals.clone() else {
        return error_page(
            StatusCode::NOT_FOUND,
            "no signals topic configured: start tracefold ui with --bootstrap-servers (tracefold dev does)",
        );
    };
    let Ok(permit) = st.signal_reads.clone().try_acquire_owned() else {
        let mut r = error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "the signals topic is being read for other requests: reload in a moment",
        );
        r.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("2"));
        return r;
    };
    // The permit goes with the read: a client that leaves does not end the read, nor free it.
    let read = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        signals::recent(&src, "tracefold-ui-signals", MAX_SIGNALS, std::time::Duration::from_secs(2))
    })
    .await;
    let list = match read {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return error_page(StatusCode::BAD_GATEWAY, &format!("cannot read the signals topic: {e:#}")),
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut p = Page::default();
    head(&mut p, "Signals");
    p.raw("<h1>Signals</h1><p>The latest ").num(MAX_SIGNALS).raw(" signals, newest first.</p>");
    p.raw("<table id=\"signals\"><thead><tr><th>Minute</th><th>Signal</th><th>Issue</th>")
        .raw("<th class=\"n\">Events</th><th class=\"n\">Users</th><th class=\"n wide\">Baseline/min</th></tr></thead><tbody>");
    for s in list.iter().rev() {
        p.raw("<tr><td>")
            .text(&s.minute)
            .raw("</td><td>")
            .text(s.kind.as_str())
            .raw("</td><td class=\"t\"><a href=\"")
            .text(&issue_url(&s.project, &s.issue_id, WINDOWS[1]))
            .raw("\">")
            .user(&s.title)
            .raw("</a><div class=\"c\">")
            .user(&s.project)
            .raw("</div></td><td class=\"n\">")
            .num(s.count)
            .raw("</td><td class=\"n\">")
            .num(s.users)
            .raw("</td><td class=\"n wide\">")
            .num(s.baseline_per_minute)
            .raw("</td></tr>");
    }
    p.raw("</tbody></table>");
    if list.is_empty() {
        p.raw("<p>No signals yet.</p>");
    }
    html_response(StatusCode::OK, p)
}

#[derive(Debug, Default, Deserialize)]
struct IssueParams {
    window: Option<String>,
    /// The chart's resolution (`minute`, `hour`, `day`); default: by the window.
    res: Option<String>,
}

/// Bars of the issue chart over `w` at `r`.
fn buckets(w: Window, r: Resolution) -> u32 {
    match r {
        Resolution::Minute => w.hours * 60,
        Resolution::Hour => w.hours,
        // The partial first day too: the bars cover the whole window.
        Resolution::Day => w.hours / 24 + 1,
    }
}

/// The chart's resolution: `s` when it names one that fits `w` (at most
/// [`tracefold_store::ui::MAX_BUCKETS`] bars), else per minute over an hour, per hour over a
/// day or a week, per day over 30 days.
fn resolution(w: Window, s: Option<&str>) -> Resolution {
    Resolution::ALL
        .into_iter()
        .find(|r| Some(r.as_str()) == s && buckets(w, *r) <= tracefold_store::ui::MAX_BUCKETS)
        .unwrap_or(match w.hours {
            0..=1 => Resolution::Minute,
            2..=168 => Resolution::Hour,
            _ => Resolution::Day,
        })
}

/// A breakdown by release or environment; `rest`: the events of the values left out of a
/// list cut at [`tracefold_store::issues::MAX_BREAKDOWN_ROWS`].
fn kv_table(p: &mut Page, what: &'static str, rows: &[(String, u64)], rest: Option<u64>) {
    p.raw("<table class=\"breakdown\" data-what=\"").raw(what).raw("\"><thead><tr><th>").raw(what);
    p.raw("</th><th class=\"n\">Events</th></tr></thead><tbody>");
    for (k, n) in rows {
        p.raw("<tr><td class=\"t\">").user(k).raw("</td><td class=\"n\">").num(*n).raw("</td></tr>");
    }
    if let Some(n) = rest {
        p.raw("<tr class=\"rest\"><td class=\"c\">Others (only the first ")
            .num(tracefold_store::issues::MAX_BREAKDOWN_ROWS)
            .raw(" are listed)</td><td class=\"n\">")
            .num(n)
            .raw("</td></tr>");
    }
    p.raw("</tbody></table>");
}

/// A breakdown by browser, OS or URL: the top values over the window, their events and share
/// of the window's events that have a value of this key.
fn top_table(p: &mut Page, id: &'static str, what: &'static str, top: &tracefold_store::issues::Top) {
    p.raw("<table class=\"breakdown\" id=\"").raw(id).raw("\" data-what=\"").raw(what);
    p.raw("\"><thead><tr><th>").raw(what);
    p.raw("</th><th class=\"n\">Events</th><th class=\"n\">Share</th></tr></thead><tbody>");
    for (v, n) in &top.values {
        p.raw("<tr><td class=\"t\">").user(v).raw("</td><td class=\"n\">").num(*n);
        p.raw("</td><td class=\"n\">").text(&top.share(*n)).raw("</td></tr>");
    }
    if top.values.is_empty() {
        p.raw("<tr><td colspan=\"3\">No events with this field in the window.</td></tr>");
    }
    p.raw("</tbody></table><p class=\"c\">Share of the <span id=\"").raw(id);
    p.raw("-total\">").num(top.total).raw("</span> events in the window that have this field.</p>");
}

async fn issue(
    State(st): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<IssueParams>, QueryRejection>,
) -> Response {
    let (project, issue_id, q) = match (path, q) {
        (Ok(Path((p, i))), Ok(Query(q))) => (p, i, q),
        (Err(r), _) => return rejected!(r),
        (_, Err(r)) => return rejected!(r),
    };
    let w = window(q.window.as_deref());
    let db = &st.cfg.clickhouse.database;
    let summary = match tracefold_store::issues::resolve_issue(&st.client, db, &issue_id, Some(&project)).await {
        Ok(s) => s,
        Err(e) => return store_error(&e),
    };
    // Without merged issues, the issue's own rows alone (the queries as before aliases existed).
    let merged = !summary.merged.is_empty();
    // An alias (an issue merged into another by a late source map) shows its canonical issue.
    let issue_id = summary.issue_id.clone();
    let d = match tracefold_store::issues::issue_detail(&st.client, db, summary, w.hours).await {
        Ok(d) => d,
        Err(e) => return store_error(&e),
    };
    let history = match tracefold_store::ui::status_history(&st.client, db, &project, &issue_id).await {
        Ok(h) => h,
        Err(e) => return store_error(&e),
    };
    let res = resolution(w, q.res.as_deref());
    let series = tracefold_store::ui::series(&st.client, db, &project, &issue_id, res, buckets(w, res), merged).await;
    let first_release = tracefold_store::ui::first_release(&st.client, db, &project, &issue_id, merged).await;
    let (series, first_release) = match (series, first_release) {
        (Ok(s), Ok(f)) => (s, f),
        (Err(e), _) | (_, Err(e)) => return store_error(&e),
    };
    let markers: Vec<(usize, String)> = series.release_starts.iter().map(|(r, i)| (*i, r.clone())).collect();
    let mut p = Page::default();
    head(&mut p, &d.title);
    p.raw("<h1 class=\"t\">").user(&d.title).raw("</h1><p class=\"c\">").user(&d.culprit).raw("</p>");
    p.raw("<nav>");
    for cand in WINDOWS {
        p.raw("<a href=\"").text(&issue_url(&d.project, &d.issue_id, cand)).raw("\">").text(cand.name).raw("</a>");
    }
    p.raw("</nav>");
    p.raw("<table id=\"facts\"><tbody><tr><th>Project</th><td>")
        .user(&d.project)
        .raw("</td></tr><tr><th>Issue</th><td>")
        .text(&d.issue_id)
        .raw("</td></tr><tr><th>Status</th><td id=\"status\" class=\"s-")
        .text(d.status.as_str())
        .raw("\">")
        .text(d.status.as_str())
        .raw("</td></tr><tr><th>Level</th><td>")
        .user(&d.level)
        .raw("</td></tr><tr><th>Type</th><td>")
        .user(&d.exc_type)
        .raw("</td></tr><tr><th>Events (all time)</th><td id=\"events\">")
        .num(d.count)
        .raw("</td></tr><tr><th>Users affected</th><td id=\"users\">")
        .num(d.users)
        .raw("</td></tr><tr><th>Events in window</th><td id=\"window-events\">")
        .num(d.hourly.iter().sum::<u64>())
        .raw("</td></tr><tr><th>First seen</th><td>")
        .text(&d.first_seen)
        .raw("</td></tr><tr><th>First release</th><td id=\"first-release\">")
        .user(first_release.as_deref().unwrap_or(""))
        .raw("</td></tr><tr><th>Last seen</th><td>")
        .text(&d.last_seen)
        .raw("</td></tr>");
    if !d.merged.is_empty() {
        // Issues merged into this one (their events came before a source map): counted above.
        p.raw("<tr><th>Merged</th><td id=\"merged\">");
        for (i, m) in d.merged.iter().enumerate() {
            if i > 0 {
                p.raw("<br>");
            }
            p.raw("<span class=\"merged\">")
                .text(&m.issue_id)
                .raw("</span> (")
                .num(m.count)
                .raw(" events, first seen ");
            p.text(&m.first_seen).raw(")");
        }
        p.raw("</td></tr>");
    }
    if let Some(alias) = &d.asked_alias {
        p.raw("<tr><th>Asked for</th><td id=\"asked-alias\">").text(alias).raw(", merged into this issue</td></tr>");
    }
    p.raw("</tbody></table>");
    p.raw("<h2 id=\"chart\">Events per ").text(res.as_str()).raw(", last ").text(w.name).raw("</h2><nav>");
    for cand in Resolution::ALL {
        if buckets(w, cand) > tracefold_store::ui::MAX_BUCKETS || cand == res {
            continue;
        }
        p.raw("<a href=\"")
            .text(&format!("{}&res={}", issue_url(&d.project, &d.issue_id, w), cand.as_str()))
            .raw("\">per ")
            .text(cand.as_str())
            .raw("</a>");
    }
    p.raw("</nav>");
    let labels: Vec<String> = series
        .starts
        .iter()
        .map(|t| tracefold_model::time::format_rfc3339(i64::from(*t) * 1000).replace(":00.000Z", "Z"))
        .collect();
    let unit = match res {
        Resolution::Minute => "min",
        Resolution::Hour => "h",
        Resolution::Day => "day",
    };
    p.raw_svg(&svg::bars(&series.counts, &labels, &markers, unit, 720, 100));
    if series.more_releases {
        p.raw("<p class=\"c\" id=\"more-releases\">More releases begin in the window: the first ")
            .num(tracefold_store::ui::MAX_RELEASE_MARKERS)
            .raw(" are marked.</p>");
    }
    p.raw("<h2>Status</h2>");
    for (label, status) in
        [("Resolve", IssueStatus::Resolved), ("Ignore", IssueStatus::Ignored), ("Reopen", IssueStatus::Active)]
    {
        if status == d.status {
            continue;
        }
        p.raw("<form class=\"inline\" method=\"post\" action=\"")
            .text(&format!("/issues/{}/{}/status", url_part(&d.project), url_part(&d.issue_id)))
            .raw("\"><input type=\"hidden\" name=\"status\" value=\"")
            .text(status.as_str())
            .raw("\"><input type=\"hidden\" name=\"window\" value=\"")
            .text(w.name)
            .raw("\"><input type=\"hidden\" name=\"res\" value=\"")
            .text(res.as_str())
            .raw("\"><input type=\"password\" name=\"token\" placeholder=\"operator token\" size=\"10\"> <button name=\"do\" value=\"")
            .text(status.as_str())
            .raw("\">")
            .text(label)
            .raw("</button></form> ");
    }
    p.raw("<table id=\"history\"><thead><tr><th>When</th><th>Status</th><th>Who</th><th>Release</th><th>Note</th></tr></thead><tbody>");
    for h in &history {
        p.raw("<tr><td>")
            .text(&tracefold_model::time::format_rfc3339(i64::from(h.changed_at) * 1000))
            .raw("</td><td>")
            .user(&h.status)
            .raw("</td><td>")
            .user(&h.actor)
            .raw("</td><td>")
            .user(&h.release)
            .raw("</td><td class=\"t\">")
            .user(&h.note)
            .raw("</td></tr>");
    }
    p.raw("</tbody></table>");
    p.raw("<h2>Releases</h2>");
    kv_table(&mut p, "Release", &d.by_release, d.by_release_rest);
    p.raw("<h2>Environments</h2>");
    kv_table(&mut p, "Environment", &d.by_environment, d.by_environment_rest);
    p.raw("<h2>Browsers</h2>");
    top_table(&mut p, "browsers", "Browser", &d.by_browser);
    p.raw("<h2>Operating systems</h2>");
    top_table(&mut p, "os", "Operating system", &d.by_os);
    p.raw("<h2>URLs</h2>");
    top_table(&mut p, "urls", "URL", &d.by_url);
    p.raw("<h2>Sample event</h2>");
    match &d.sample {
        Some(s) => sample::render(&mut p, s, &d.issue_id, &st.cfg.grouping),
        None => {
            p.raw("<p>No sample stored.</p>");
        }
    }
    html_response(StatusCode::OK, p)
}

#[derive(Debug, Deserialize)]
struct StatusForm {
    status: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    window: Option<String>,
    /// The chart's resolution the page had, kept by the redirect.
    #[serde(default)]
    res: Option<String>,
    #[serde(default)]
    note: String,
}

async fn set_status(
    State(st): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    f: Result<Form<StatusForm>, FormRejection>,
) -> Response {
    let (project, issue_id, f) = match (path, f) {
        (Ok(Path((p, i))), Ok(Form(f))) => (p, i, f),
        (Err(r), _) => return rejected!(r),
        (_, Err(r)) => return rejected!(r),
    };
    let Some(expected) = st.cfg.operator_token.as_deref().filter(|t| !t.is_empty()) else {
        return error_page(StatusCode::FORBIDDEN, "status changes are off: start tracefold ui with --operator-token");
    };
    if !bool::from(f.token.as_bytes().ct_eq(expected.as_bytes())) {
        return error_page(StatusCode::FORBIDDEN, "wrong operator token");
    }
    let status: IssueStatus = match f.status.parse() {
        Ok(s) => s,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let db = &st.cfg.clickhouse.database;
    // The issue must exist in the project; an alias's status is its canonical issue's.
    let issue_id = match tracefold_store::issues::resolve_issue(&st.client, db, &issue_id, Some(&project)).await {
        Ok(s) => s.issue_id,
        Err(e) => return store_error(&e),
    };
    let change =
        StatusChange { project: &project, issue_id: &issue_id, status, actor: "ui", release: "", note: &f.note };
    if let Err(e) = tracefold_store::issues::set_status(&st.client, db, &change).await {
        return store_error(&e);
    }
    let w = window(f.window.as_deref());
    let res = resolution(w, f.res.as_deref());
    Redirect::to(&format!("{}&res={}", issue_url(&project, &issue_id, w), res.as_str())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakdown_tables_escape_values_and_show_shares() {
        let top = tracefold_store::issues::Top {
            values: vec![("<script>x</script>".into(), 3), ("مرحبا \u{202E}e".into(), 1)],
            total: 7,
        };
        let mut p = Page::default();
        top_table(&mut p, "urls", "URL", &top);
        let html = p.finish();
        assert!(html.contains("<td class=\"t\"><bdi>&lt;script&gt;x&lt;/script&gt;</bdi></td><td class=\"n\">3</td><td class=\"n\">42.9%</td>"), "{html}");
        assert!(html.contains("<bdi>مرحبا \u{202E}e</bdi>") && html.contains("14.3%"), "{html}");
        assert!(html.contains("id=\"urls-total\">7<"), "{html}");
        let mut p = Page::default();
        top_table(&mut p, "os", "Operating system", &tracefold_store::issues::Top::default());
        assert!(p.finish().contains("No events with this field in the window."));
    }

    /// A release or environment list cut at its bound ends with a row of the events left out;
    /// an uncut one has no such row.
    #[test]
    fn cut_release_lists_end_with_the_events_of_the_rest() {
        let rows = vec![("<r1>".to_owned(), 5), ("r2".to_owned(), 3)];
        let mut p = Page::default();
        kv_table(&mut p, "Release", &rows, Some(24));
        let html = p.finish();
        assert!(html.contains("<bdi>&lt;r1&gt;</bdi></td><td class=\"n\">5</td>"), "{html}");
        assert!(
            html.ends_with(
                "<tr class=\"rest\"><td class=\"c\">Others (only the first 10000 are listed)</td><td class=\"n\">24</td></tr></tbody></table>"
            ),
            "{html}"
        );
        let mut p = Page::default();
        kv_table(&mut p, "Environment", &rows, None);
        assert!(!p.finish().contains("Others"));
    }

    /// The signals page reads the topic with at most `MAX_SIGNAL_READS` consumers at once:
    /// while they are all reading, another request gets a 503 with `Retry-After` at once
    /// (without a consumer or a thread of its own); when a read ends, the page is served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn signal_reads_at_once_are_bounded() {
        let topics = tracefold_runtime::config::TopicsConfig::default();
        let broker = tracefold_runtime::devbroker::DevBroker::start(1, &topics, Some(1)).unwrap();
        let kafka = tracefold_runtime::config::KafkaConfig {
            bootstrap_servers: broker.bootstrap_servers(),
            ..Default::default()
        };
        let st = Arc::new(AppState::new(Config {
            signals: Some(signals::Source { kafka, topic: topics.signals.clone() }),
            ..Default::default()
        }));
        let reading = st.signal_reads.clone().try_acquire_many_owned(MAX_SIGNAL_READS as u32).unwrap();
        let busy = signals_page(State(st.clone())).await;
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "2");
        assert_eq!(st.signal_reads.available_permits(), 0);
        drop(reading);
        let served = signals_page(State(st.clone())).await;
        assert_eq!(served.status(), StatusCode::OK);
        assert_eq!(st.signal_reads.available_permits(), MAX_SIGNAL_READS, "the read gave its permit back");
    }

    #[test]
    fn list_urls_hold_every_filter_encoded_and_parse_back() {
        let params = ListParams {
            project: Some("web".into()),
            by: Some("last_seen".into()),
            window: Some("7d".into()),
            environment: Some("prod & co".into()),
            release: Some("r@1/é".into()),
            status: Some("resolved".into()),
            q: Some("\"><script>中文 🙈 100%".into()),
            page: None,
            fresh: Some("1".into()),
        };
        let ls = ListState::new(&params);
        let url = ls.url(2);
        assert_eq!(
            url,
            "/?by=last_seen&window=7d&project=web&environment=prod%20%26%20co&release=r%401%2F%C3%A9&status=resolved\
             &q=%22%3E%3Cscript%3E%E4%B8%AD%E6%96%87%20%F0%9F%99%88%20100%25&page=2&fresh=1"
        );
        let back: ListParams = parse_query(&url[2..]);
        let again = ListState::new(&back);
        assert_eq!(again.url(2), url);
        assert_eq!(back.q.as_deref(), params.q.as_deref());
        // Empty values and unknown statuses are no filter.
        let none = ListParams {
            status: Some("deleted".into()),
            q: Some(String::new()),
            fresh: Some("no".into()),
            ..Default::default()
        };
        assert_eq!(ListState::new(&none).url(0), "/?by=events&window=24h");
    }

    #[test]
    fn chart_resolutions_follow_the_window_and_refuse_too_many_bars() {
        let w = |name| window(Some(name));
        assert_eq!(resolution(w("1h"), None), Resolution::Minute);
        assert_eq!(resolution(w("24h"), None), Resolution::Hour);
        assert_eq!(resolution(w("7d"), None), Resolution::Hour);
        assert_eq!(resolution(w("30d"), None), Resolution::Day);
        assert_eq!(resolution(w("24h"), Some("minute")), Resolution::Minute);
        assert_eq!(resolution(w("7d"), Some("minute")), Resolution::Hour, "10,080 bars: refused");
        assert_eq!(resolution(w("30d"), Some("hour")), Resolution::Hour);
        assert_eq!(resolution(w("1h"), Some("day")), Resolution::Day);
        assert_eq!(resolution(w("24h"), Some("<x>")), Resolution::Hour);
        assert_eq!(
            [("1h", Resolution::Minute), ("24h", Resolution::Hour), ("30d", Resolution::Day), ("7d", Resolution::Day)]
                .map(|(n, r)| buckets(w(n), r)),
            [60, 24, 31, 8]
        );
    }

    /// `request` (an HTTP/1.1 request without its `Connection` header and blank line) to the
    /// UI on `addr`: the status, the head and the body of the answer.
    async fn raw(addr: std::net::SocketAddr, request: &str) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (head, body) = request.split_once("\r\n\r\n").unwrap_or((request, ""));
        c.write_all(format!("{head}\r\nConnection: close\r\n\r\n{body}").as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        c.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8(answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        (head[9..12].parse().unwrap(), head.to_ascii_lowercase(), body.to_owned())
    }

    /// Requests the routes' extractors refuse (a repeated parameter, a path segment that is not
    /// UTF-8, a form without its fields or of another type) and unknown paths and methods get
    /// the UI's error page: its status, the reason in words, HTML with the page's security
    /// headers. They got axum's plain text (400, 415, 422) or an empty body (404, 405). None
    /// of these reach ClickHouse (there is none here).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_requests_and_unknown_pages_get_error_pages() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = Config {
            clickhouse: ClickHouseConfig { url: "http://127.0.0.1:9".into(), ..Default::default() },
            operator_token: Some("t".into()),
            ..Default::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, cfg, async {
            let _ = stopped.await;
        }));
        let form = |ct: &str, body: &str| {
            format!(
                "POST /issues/web/abc/status HTTP/1.1\r\nHost: x\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let cases = [
            ("GET /?window=1h&window=7d HTTP/1.1\r\nHost: x".to_owned(), 400, "duplicate field `window`"),
            ("GET /issues/web/x?res=day&res=hour HTTP/1.1\r\nHost: x".to_owned(), 400, "duplicate field `res`"),
            ("GET /issues/web/%FF%3Cb%3E HTTP/1.1\r\nHost: x".to_owned(), 400, "Invalid UTF-8"),
            (form("application/x-www-form-urlencoded", "token=t"), 422, "missing field `status`"),
            (form("application/json", "{}"), 415, "Content-Type: application/x-www-form-urlencoded"),
            ("GET /nope/%3Cscript%3E HTTP/1.1\r\nHost: x".to_owned(), 404, "no such page"),
            ("DELETE / HTTP/1.1\r\nHost: x".to_owned(), 405, "does not take this method"),
            ("GET /issues/web/abc/status HTTP/1.1\r\nHost: x".to_owned(), 405, "does not take this method"),
        ];
        for (request, status, reason) in cases {
            let (st, head, body) = raw(addr, &request).await;
            assert_eq!(st, status, "{request}: {head}{body}");
            assert!(head.contains("content-type: text/html; charset=utf-8"), "{request}: {head}");
            assert!(head.contains("content-security-policy: default-src 'none'"), "{request}: {head}");
            assert!(head.contains("x-content-type-options: nosniff"), "{request}: {head}");
            let mut page = Page::default();
            page.text(reason);
            assert!(body.contains(&format!("<h1>{status}</h1>")), "{request}: {body}");
            assert!(body.contains(&page.finish()) && body.ends_with("</html>"), "{request}: {body}");
            assert!(!body.contains("<script>") && !body.contains("<b>"), "{body}");
            // A 405 still names the methods the page takes.
            assert!(status != 405 || head.contains("\r\nallow: "), "{request}: {head}");
        }
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    fn parse_query(q: &str) -> ListParams {
        let uri: axum::http::Uri = format!("/?{q}").parse().unwrap();
        Query::<ListParams>::try_from_uri(&uri).unwrap().0
    }
}
