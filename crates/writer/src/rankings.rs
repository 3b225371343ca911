//! The rankings loop: every `rankings.refresh_seconds`, each project's top issues by affected
//! users over 7 and 30 days (up to `rankings.top_k`: all of them, in most projects) are
//! computed into `issue_ranking_rows` ([`tracefold_store::rankings::refresh`]), off the insert
//! path, for `tracefold top --by users|events` to read while fresh. A failed computation is
//! logged, counted and tried again (after 10 s, doubling up to the refresh interval); it never
//! ends the loop, so it never stops the writer.
//! Several writers may run it: a window computed by another writer less than half an interval
//! ago is skipped, and two computations at once are harmless (readers take one whole).

use crate::config::Config;
use crate::metrics as m;
use std::time::{Duration, Instant};
use tracefold_runtime::telemetry::Health;
use tracefold_runtime::Shutdown;
use tracefold_store::rankings::{RefreshSpec, Refreshed};

/// First delay before a failed computation is tried again; it doubles up to the refresh
/// interval.
const RETRY_INITIAL: Duration = Duration::from_secs(10);

/// Runs the rankings loop until `shutdown` fires (`rankings.refresh_seconds` must be above 0).
/// The first computation starts at once.
///
/// # Errors
/// Only when it cannot start: no async runtime, or the database name is not an identifier.
pub fn run(cfg: &Config, shutdown: &Shutdown, health: &Health) -> anyhow::Result<()> {
    let every = Duration::from_secs(cfg.rankings.refresh_seconds.max(1));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = tracefold_store::client::client(&cfg.clickhouse);
    tracefold_store::client::ident("clickhouse.database", &cfg.clickhouse.database)?;
    let spec = RefreshSpec {
        top_k: cfg.rankings.top_k,
        refresh_seconds: u32::try_from(every.as_secs()).unwrap_or(u32::MAX),
        skip_younger_than: u32::try_from(every.as_secs() / 2).unwrap_or(u32::MAX),
    };
    let timeout = Duration::from_millis(cfg.rankings.timeout_ms.max(1));
    tracing::info!(refresh_seconds = every.as_secs(), top_k = spec.top_k, "rankings loop started");
    let mut next = Instant::now();
    let mut retry: Option<Duration> = None;
    loop {
        // Waiting is progress: beat while the next computation is not due.
        while Instant::now() < next {
            health.beat();
            if shutdown.is_triggered() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200).min(next.saturating_duration_since(Instant::now())));
        }
        if shutdown.is_triggered() {
            return Ok(());
        }
        let started = Instant::now();
        let result = rt.block_on(async {
            let work = tracefold_store::rankings::refresh(&client, &cfg.clickhouse.database, &spec);
            tokio::pin!(work);
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            // A computation may take longer than the liveness deadline: the loop is alive
            // while it waits for ClickHouse (bounded by `timeout_ms`), and leaves at shutdown.
            loop {
                tokio::select! {
                    r = &mut work => break Some(r.map_err(anyhow::Error::new)),
                    () = &mut deadline => break Some(Err(anyhow::anyhow!("took longer than {} ms", timeout.as_millis()))),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {
                        health.beat();
                        if shutdown.is_triggered() {
                            break None;
                        }
                    }
                }
            }
        });
        let Some(result) = result else { return Ok(()) };
        health.beat();
        match result {
            Ok(done) => {
                retry = None;
                next = started + every;
                let (mut rows, mut cut, mut written) = (0u64, 0usize, 0);
                for d in &done {
                    match *d {
                        Refreshed::Written { rows: r, cut: c, .. } => {
                            rows += r;
                            cut = cut.max(c);
                            written += 1;
                        }
                        Refreshed::Skipped { window_seconds, age } => {
                            tracing::debug!(window_seconds, age, "ranking computed by another writer a moment ago");
                        }
                    }
                }
                let outcome = if written > 0 { "ok" } else { "skipped" };
                metrics::counter!(m::RANKINGS_REFRESH_TOTAL, "outcome" => outcome).increment(1);
                if written > 0 {
                    metrics::histogram!(m::RANKINGS_REFRESH_SECONDS).record(started.elapsed().as_secs_f64());
                    metrics::gauge!(m::RANKINGS_ROWS).set(rows as f64);
                }
                // `cut`: projects with more issues in a window than `top_k` (their lists answer
                // `--by users` up to `top_k` only).
                tracing::info!(outcome, rows, cut, ms = started.elapsed().as_millis() as u64, "rankings refreshed");
            }
            Err(e) => {
                let delay = retry.map_or(RETRY_INITIAL, |d| d * 2).min(every);
                retry = Some(delay);
                next = Instant::now() + delay;
                metrics::counter!(m::RANKINGS_REFRESH_TOTAL, "outcome" => "error").increment(1);
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "rankings refresh failed; tried again");
            }
        }
    }
}
