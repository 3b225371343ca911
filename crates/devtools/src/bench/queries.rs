//! `tracefold bench-queries`: the analyst queries on a large synthetic database. Generates
//! aggregate rows straight into a scratch database's base table inside ClickHouse (its
//! materialized views fill the rollups), then times every query the command line runs
//! (`top` with each ranking and window, `issue`, `outcomes`), the web UI's pages, and every query of the cookbooks
//! (`schemas/queries.md`, `docs/cookbook.md`), and drops the database.

use std::time::{Duration, Instant};
use tracefold_runtime::config::ClickHouseConfig;
use tracefold_store::issues::{TopBy, TopQuery};
use tracefold_store::synthetic::{self, Shape};

/// The analysts' cookbook (checked by `tests/analytics.rs`).
const QUERIES_MD: &str = include_str!("../../../../schemas/queries.md");
/// The outcomes cookbook.
const COOKBOOK_MD: &str = include_str!("../../../../docs/cookbook.md");

/// What `bench-queries` generates and how often it runs each query.
#[derive(Debug, Clone)]
pub struct QueriesOptions {
    /// Events in all (the sum of the rows' counts, approximately).
    pub events: u64,
    /// Distinct issues with events in every hour.
    pub issues_per_hour: u64,
    /// Aggregate rows (default: `events / 20`).
    pub rows: Option<u64>,
    /// Days of data at most; fewer when `rows` cannot give every hour `issues_per_hour` rows.
    pub days: u64,
    /// Timed runs of each query (after one warm-up run).
    pub runs: usize,
    /// The ClickHouse server; the benchmark makes and drops a scratch database named after
    /// `database` and the process id.
    pub clickhouse: ClickHouseConfig,
    /// Keep the scratch database (and print its name) instead of dropping it.
    pub keep: bool,
    /// Print progress to stderr.
    pub progress: bool,
}

/// One timed query.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QueryTime {
    /// `cli`, `ui` or `cookbook`.
    pub source: &'static str,
    /// The command, or the cookbook query's name.
    pub name: String,
    /// Rows answered.
    pub rows: u64,
    /// Median of the timed runs, milliseconds.
    pub median_ms: f64,
    /// Slowest timed run, milliseconds.
    pub max_ms: f64,
}

/// What `bench-queries` measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QueriesReport {
    /// Events stored (sum of counts).
    pub events: u64,
    /// Aggregate rows stored.
    pub rows: u64,
    /// Distinct issues per hour.
    pub issues_per_hour: u64,
    /// Distinct issues in all.
    pub issues: u64,
    /// Hours of data.
    pub hours: u64,
    /// Seconds to generate and merge the data.
    pub load_secs: f64,
    /// Timed runs per query.
    pub runs: usize,
    /// The server's version.
    pub server: String,
    /// Every query's times.
    pub queries: Vec<QueryTime>,
    /// One computation of the precomputed rankings (the writer's rankings loop), run once after
    /// loading, before the cached `top` is timed.
    pub refresh: RefreshTime,
}

/// One computation of the precomputed rankings ([`tracefold_store::rankings::refresh`]).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RefreshTime {
    /// Wall-clock seconds (both windows, every project, with the INSERTs).
    pub secs: f64,
    /// CPU seconds of the ClickHouse server meanwhile (where it runs on this machine; 0 else):
    /// the whole server's, so other clients' queries of the same moment are in it.
    pub clickhouse_cpu_secs: f64,
    /// CPU seconds (user + system) of the computation's own queries, from the server's
    /// `system.query_log` (the refresh runs with `log_queries = 1`); 0 when it cannot be read.
    pub queries_cpu_secs: f64,
    /// Rows written (both windows, every project's top `top_k`).
    pub rows: u64,
    /// Issues kept per project and window.
    pub top_k: u32,
}

impl QueriesReport {
    /// The report as one JSON line.
    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The report as a table (Markdown, so that it can go to `benches/README.md` as it is).
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} events in {} aggregate rows, {} issues/hour ({} issues) over {} hours, loaded in {:.0} s; ClickHouse {}; median and max of {} runs\n\n",
            thousands(self.events),
            thousands(self.rows),
            thousands(self.issues_per_hour),
            thousands(self.issues),
            self.hours,
            self.load_secs,
            self.server,
            self.runs
        );
        out.push_str(&format!(
            "One computation of the rankings (7 and 30 days, top {} per project): {:.2} s, {:.2} s of CPU in its queries ({:.2} s of the whole server's meanwhile), {} rows\n\n",
            thousands(u64::from(self.refresh.top_k)),
            self.refresh.secs,
            self.refresh.queries_cpu_secs,
            self.refresh.clickhouse_cpu_secs,
            thousands(self.refresh.rows)
        ));
        out.push_str("| source | query | rows | median ms | max ms |\n|---|---|---:|---:|---:|\n");
        for q in &self.queries {
            out.push_str(&format!(
                "| {} | `{}` | {} | {:.0} | {:.0} |\n",
                q.source,
                q.name,
                thousands(q.rows),
                q.median_ms,
                q.max_ms
            ));
        }
        out
    }

    /// The slowest median, milliseconds.
    pub fn worst_median_ms(&self) -> f64 {
        self.queries.iter().map(|q| q.median_ms).fold(0.0, f64::max)
    }
}

fn thousands(n: u64) -> String {
    crate::render::thousands(n)
}

/// The cookbook's queries: (name, SQL) from `### name` sections of `schemas/queries.md` and
/// the `sql` blocks of `docs/cookbook.md` (one statement per `;`).
pub fn cookbook_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for section in QUERIES_MD.split("\n### ").skip(1) {
        let name = section.lines().next().unwrap_or_default().trim().to_owned();
        if let Some(sql) = section.split("```sql\n").nth(1).and_then(|s| s.split("```").next()) {
            out.push((name, sql.trim().to_owned()));
        }
    }
    for (i, block) in COOKBOOK_MD.split("```sql\n").skip(1).enumerate() {
        let block = block.split("```").next().unwrap_or_default();
        for (j, stmt) in block.split(';').enumerate() {
            let sql: String = stmt.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
            if !sql.trim().is_empty() {
                out.push((format!("cookbook.md#{}.{}", i + 1, j + 1), sql.trim().to_owned()));
            }
        }
    }
    out
}

/// Generates the data, times the queries, drops the database (unless `keep`).
///
/// # Errors
/// When ClickHouse refuses a statement or a query fails.
pub async fn queries(opts: &QueriesOptions) -> anyhow::Result<QueriesReport> {
    let mut ch = opts.clickhouse.clone();
    ch.database = format!("{}_benchq_{}", ch.database, std::process::id());
    let client = tracefold_store::client::client(&ch);
    let server = tracefold_store::client::server_version(&client).await?;
    tracefold_store::migrate::migrate(&ch, |_, _| {}).await?;
    let result = run(opts, &ch, &client, server).await;
    if opts.keep {
        eprintln!("kept database {}", ch.database);
    } else {
        tracefold_store::client::drop_database(&client, &ch.database).await?;
    }
    result
}

async fn run(
    opts: &QueriesOptions,
    ch: &ClickHouseConfig,
    client: &tracefold_store::Client,
    server: String,
) -> anyhow::Result<QueriesReport> {
    let db = ch.database.as_str();
    let rows = opts.rows.unwrap_or(opts.events / 20).max(1);
    let ipr = opts.issues_per_hour.max(1);
    // Every hour gets at least one row per issue: fewer hours when rows are few.
    let hours = (opts.days.max(1) * 24).min(rows / ipr).max(1);
    let shape = Shape { rows, events_per_row: (opts.events / rows).max(1), issues_per_hour: ipr, hours, projects: 4 };
    let say = |s: String| {
        if opts.progress {
            eprintln!("{s}");
        }
    };
    say(format!(
        "bench-queries: {} rows ({} events each on average) over {hours} hours, {ipr} issues/hour, into {db}",
        rows, shape.events_per_row
    ));
    let started = Instant::now();
    let chunk = 500_000u64;
    let mut done = 0u64;
    while done < rows {
        let n = chunk.min(rows - done);
        synthetic::insert_aggregates(client, db, &shape, done, n).await?;
        done += n;
        say(format!(
            "  {done} / {rows} rows ({:.0}%), {:.0} s",
            100.0 * done as f64 / rows as f64,
            started.elapsed().as_secs_f64()
        ));
    }
    synthetic::insert_outcomes(client, db, &shape).await?;
    synthetic::resolve_some(client, db, 50).await?;
    say(format!("  merging the rollups, {:.0} s", started.elapsed().as_secs_f64()));
    synthetic::optimize_rollups(client, db).await?;
    let load_secs = started.elapsed().as_secs_f64();
    let (events, stored) = synthetic::totals(client, db).await?;
    say(format!("  loaded {events} events in {stored} rows in {load_secs:.0} s; timing queries"));

    let mut times = Vec::new();
    let top24h = TopQuery { since_secs: 86_400, limit: 1, project: None, by: TopBy::Events };
    let heaviest = tracefold_store::issues::top(client, db, &top24h).await?;
    let (project, issue_id) = heaviest
        .first()
        .map(|t| (t.project.clone(), t.issue_id.clone()))
        .unwrap_or_else(|| ("p0".into(), String::new()));
    let issues = {
        let all = TopQuery { since_secs: u64::from(u32::MAX), limit: u64::MAX, project: None, by: TopBy::Events };
        // Counted through the query under test at its largest: every issue, no list of ids.
        let t = Instant::now();
        let n = tracefold_store::issues::top(client, db, &all).await?.len() as u64;
        say(format!("  top --since all --limit max: {n} issues in {:.0} ms", t.elapsed().as_secs_f64() * 1000.0));
        n
    };
    for (since, label) in [(3600u64, "1h"), (86_400, "24h"), (7 * 86_400, "7d"), (30 * 86_400, "30d")] {
        for by in TopBy::ALL {
            let q = TopQuery { since_secs: since, limit: 20, project: None, by };
            let name = format!("top --since {label} --by {}", by.as_str());
            times.push(
                time(opts, "cli", name, || async { Ok(tracefold_store::issues::top(client, db, &q).await?.len()) })
                    .await?,
            );
        }
    }
    // The precomputed rankings: one computation, as the writer's loop runs it with its default
    // `top_k` (its wall time and the server's CPU), then `top --by users` over 7 and 30 days and
    // `--limit 100000` (by events) from it, beside the live answers (`--fresh`) timed here.
    let spec = tracefold_store::rankings::RefreshSpec {
        top_k: tracefold_store::rankings::DEFAULT_TOP_K,
        refresh_seconds: 3600,
        skip_younger_than: 0,
    };
    let ch_pid = super::cpu::clickhouse_pid(&ch.url);
    let logged = client.clone().with_setting("log_queries", "1");
    let (t, cpu0) = (Instant::now(), super::cpu::CpuSnapshot::now_by_for(super::cpu::stage_of, ch_pid));
    let since = tracefold_store::client::now(client).await?;
    let done = tracefold_store::rankings::refresh(&logged, db, &spec).await?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = super::cpu::CpuSnapshot::now_by_for(super::cpu::stage_of, ch_pid).since(&cpu0);
    let refresh = RefreshTime {
        secs,
        clickhouse_cpu_secs: cpu["clickhouse_seconds"].as_f64().unwrap_or(0.0),
        rows: done
            .iter()
            .map(|d| match d {
                tracefold_store::rankings::Refreshed::Written { rows, .. } => *rows,
                tracefold_store::rankings::Refreshed::Skipped { .. } => 0,
            })
            .sum(),
        top_k: spec.top_k,
        queries_cpu_secs: logged_cpu_secs(client, db, since).await.unwrap_or(0.0),
    };
    say(format!(
        "  rankings computed in {secs:.2} s ({:.2} s of ClickHouse CPU), {} rows",
        refresh.clickhouse_cpu_secs, refresh.rows
    ));
    for (since, label, limit, by) in [
        (7 * 86_400u64, "7d", 20, TopBy::Users),
        (30 * 86_400, "30d", 20, TopBy::Users),
        (30 * 86_400, "30d", 100_000, TopBy::Events),
    ] {
        let q = TopQuery { since_secs: since, limit, project: None, by };
        let name = if by == TopBy::Users {
            format!("top --since {label} --by users (ranked)")
        } else {
            format!("top --since {label} --limit {limit} (ranked)")
        };
        times.push(
            time(opts, "cli", name, || async {
                match tracefold_store::rankings::top_cached(client, db, &q).await? {
                    Ok((rows, _)) => Ok(rows.len()),
                    Err(why) => anyhow::bail!("the ranking was not read: {why:?}"),
                }
            })
            .await?,
        );
    }
    for (since, label) in [(86_400u64, "24h"), (30 * 86_400, "30d")] {
        let q = TopQuery { since_secs: since, limit: 100_000, project: None, by: TopBy::Events };
        let name = format!("top --since {label} --limit 100000");
        times.push(
            time(opts, "cli", name, || async { Ok(tracefold_store::issues::top(client, db, &q).await?.len()) }).await?,
        );
    }
    let q = TopQuery { since_secs: 86_400, limit: 20, project: Some("p1"), by: TopBy::Events };
    times.push(
        time(opts, "cli", "top --since 24h --project p1".into(), || async {
            Ok(tracefold_store::issues::top(client, db, &q).await?.len())
        })
        .await?,
    );
    times.push(
        time(opts, "cli", "issue ID (heaviest issue, --hours 24)".into(), || async {
            let issue = tracefold_store::issues::resolve_issue(client, db, &issue_id, Some(&project)).await?;
            let d = tracefold_store::issues::issue_detail(client, db, issue, 24).await?;
            Ok(d.by_release.len())
        })
        .await?,
    );
    for (since, label) in [(3600u64, "1h"), (86_400, "24h")] {
        let name = format!("outcomes --since {label}");
        times.push(
            time(opts, "cli", name, || async {
                Ok(tracefold_store::outcomes::outcomes(client, db, since, None).await?.totals.len())
            })
            .await?,
        );
    }
    times.extend(ui_pages(opts, ch, &project, &issue_id).await?);
    let release = "r0";
    for (name, sql) in cookbook_queries() {
        let sql = sql
            .replace("tracefold.", &format!("{db}."))
            .replace("{issue_id}", &issue_id)
            .replace("{project}", &project)
            .replace("{release}", release)
            .replace("'shop'", &format!("'{project}'"));
        times.push(
            time(opts, "cookbook", name, || async {
                Ok(usize::try_from(synthetic::run_counting_rows(client, &sql).await?).unwrap_or(usize::MAX))
            })
            .await?,
        );
    }
    Ok(QueriesReport {
        events,
        rows: stored,
        issues_per_hour: ipr,
        issues,
        hours,
        load_secs,
        runs: opts.runs,
        server,
        queries: times,
        refresh,
    })
}

/// Times the web UI's pages (`tracefold ui`, served in this process on a loopback port): the
/// issues list in each window, ranked by growth, its deepest page (over 7 and 30 days from the
/// precomputed ranking, and counted now with `&fresh=1`), and the heaviest issue's page over a
/// day and over 30 days. Each time is the whole answer, rendered HTML included;
/// rows are the page's table rows.
async fn ui_pages(
    opts: &QueriesOptions,
    ch: &ClickHouseConfig,
    project: &str,
    issue_id: &str,
) -> anyhow::Result<Vec<QueryTime>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let cfg =
        tracefold_ui::Config { clickhouse: ch.clone(), signals: None, operator_token: None, ..Default::default() };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tracefold_ui::serve(listener, cfg, async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let issue = format!("/issues/{project}/{issue_id}");
    let mut pages: Vec<String> = ["1h", "24h", "7d", "30d"].iter().map(|w| format!("/?window={w}")).collect();
    pages.push("/?window=24h&by=growth".into());
    pages.push(format!("/?window=7d&page={}", tracefold_ui::MAX_PAGES - 1));
    // The 7- and 30-day lists read the ranking computed above; counted now too.
    pages.extend(["/?window=7d&fresh=1".to_owned(), "/?window=30d&fresh=1".to_owned()]);
    pages.push(format!("/?window=7d&page={}&fresh=1", tracefold_ui::MAX_PAGES - 1));
    pages.push(format!("{issue}?window=24h"));
    pages.push(format!("{issue}?window=30d"));
    let mut times = Vec::new();
    for page in pages {
        let url = format!("{base}{page}");
        let name = format!("GET {}", page.replace(issue_id, "ID"));
        times.push(
            time(opts, "ui", name, || async {
                let r = http.get(&url).send().await?;
                let status = r.status();
                let body = r.text().await?;
                anyhow::ensure!(status.is_success(), "{url}: {status}");
                Ok(body.matches("<tr").count())
            })
            .await?,
        );
    }
    let _ = stop.send(());
    server.await??;
    Ok(times)
}

/// CPU seconds (user + system) of the finished queries in `system.query_log` since `since`
/// (Unix seconds) that name `db`'s tables (the benchmark's database: other clients' queries are
/// not counted), after flushing the log. `None` when the log cannot be read.
async fn logged_cpu_secs(client: &tracefold_store::Client, db: &str, since: u32) -> Option<f64> {
    client.query("SYSTEM FLUSH LOGS").execute().await.ok()?;
    let mut cursor = client
        .query(
            "SELECT toUInt64(sum(arraySum(arrayMap((n, v) -> if(n IN ('UserTimeMicroseconds', 'SystemTimeMicroseconds'), v, 0),              ProfileEvents.Names, ProfileEvents.Values)))) AS us FROM system.query_log              WHERE type = 2 AND event_time >= toDateTime(?) AND position(query, ?) > 0",
        )
        .bind(since)
        .bind(format!("{db}."))
        .fetch_bytes("TabSeparated")
        .ok()?;
    let bytes = cursor.collect().await.ok()?;
    let us: u64 = std::str::from_utf8(&bytes).ok()?.trim().parse().ok()?;
    Some(us as f64 / 1e6)
}

/// Runs `f` once to warm up, then `opts.runs` times, timing each.
async fn time<F, Fut>(opts: &QueriesOptions, source: &'static str, name: String, f: F) -> anyhow::Result<QueryTime>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<usize>>,
{
    let rows = f().await.map_err(|e| e.context(format!("{source} query {name}")))? as u64;
    let mut ms: Vec<f64> = Vec::new();
    for _ in 0..opts.runs.max(1) {
        let t = Instant::now();
        f().await?;
        ms.push(as_ms(t.elapsed()));
    }
    ms.sort_by(f64::total_cmp);
    let median_ms = ms[ms.len() / 2];
    let max_ms = ms[ms.len() - 1];
    if opts.progress {
        eprintln!("  {source:8} {name:45} {rows:>8} rows  median {median_ms:>6.0} ms  max {max_ms:>6.0} ms");
    }
    Ok(QueryTime { source, name, rows, median_ms, max_ms })
}

fn as_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cookbook_query_is_found_bounded_and_limited() {
        let qs = cookbook_queries();
        assert!(qs.len() >= 10, "{qs:?}");
        for (name, sql) in &qs {
            assert!(sql.contains("LIMIT"), "{name} has no LIMIT:\n{sql}");
            assert!(!sql.contains('?'), "{name}: the client would read ? as a parameter");
        }
    }
}
