//! Failpoints for crash tests, armed with `TRACEFOLD_FAILPOINTS="name=N,other=M"` (unset in
//! production; reading it costs one atomic load per call after the first).
//!
//! Four kinds:
//! - [`hit`]: the process aborts (like SIGKILL: no cleanup, no commit; the exit status is
//!   SIGABRT) the N-th time it reaches the point;
//! - [`hit_at`]: the process aborts when a count within one unit of work reaches N;
//! - [`trip`]: the N-th time the point is reached, the caller injects a fault (and goes on);
//! - [`trip_first`]: the first N times the point is reached, the caller injects a fault.
//!
//! Each prints `failpoint <name> reached: aborting` (or `...: injecting a fault`) to stderr
//! first, so that a test can prove the failure it asked for is the one that happened.
//!
//! | Failpoint | Kind | Where, and what it simulates |
//! |---|---|---|
//! | `grouper.after_pending_commit=N` | hit | the N-th emit, right after the batch ranges were committed as pending (`tracefold:v1:<first>:<last>`) and before anything was produced: the restart must rebuild exactly those ranges |
//! | `grouper.after_acks=K` | hit_at | an emit, once K delivery acknowledgements of its records arrived (the broker may hold more of them: one produce request acknowledges many): a partly published batch |
//! | `grouper.after_produce=N` | hit | the N-th emit, after every record was acknowledged and before the commit past the ranges: a wholly published batch that will be published again |
//! | `grouper.panic_marker=1` | armed | every event containing `tracefold-failpoint-panic` panics inside the per-event fault barrier |
//! | `writer.after_insert=N` | hit | the N-th insert, after ClickHouse stored the rows and before the offsets were committed |
//! | `grouper.range_commit_fails=N` | trip | the N-th emit's commit of its batch ranges fails (the coordinator did not answer) while the partitions stay ours: the grouper must seek back and read the ranges again |
//! | `grouper.rewind_seek_fails=N` | trip_first | the first N seeks back of such a rewind fail: a few are tried again; when they all fail, the grouper stops (exit non-zero) rather than read past the range |
//! | `writer.insert_lands_then_fails=N` | trip | the N-th insert landed in ClickHouse but is reported as failed (a timeout after the server stored it): the retry must re-read the watermarks and not insert again |

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

fn points() -> &'static HashMap<String, (u64, AtomicU64)> {
    static POINTS: OnceLock<HashMap<String, (u64, AtomicU64)>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var("TRACEFOLD_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.trim().to_owned(), (v.trim().parse().ok()?, AtomicU64::new(0))))
            })
            .collect()
    })
}

/// Counts a pass through failpoint `name`; true when `fires(passes before this one, the armed
/// value)` says so.
fn pass(name: &str, fires: impl FnOnce(u64, u64) -> bool) -> bool {
    let points = points();
    if points.is_empty() {
        return false;
    }
    points.get(name).is_some_and(|(at, seen)| fires(seen.fetch_add(1, Ordering::SeqCst), *at))
}

/// Counts a pass through failpoint `name`; true on the pass it is armed for.
fn reached(name: &str) -> bool {
    pass(name, |before, at| before + 1 == at)
}

/// `fire`, said on stderr when it is true.
fn injecting(name: &str, fire: bool) -> bool {
    if fire {
        eprintln!("failpoint {name} reached: injecting a fault");
    }
    fire
}

fn abort(name: &str) -> ! {
    eprintln!("failpoint {name} reached: aborting");
    std::process::abort();
}

/// Aborts the process when failpoint `name` is armed and reached for the armed time.
pub fn hit(name: &str) {
    if reached(name) {
        abort(name);
    }
}

/// Aborts the process when failpoint `name` is armed with the value `n`: for points whose
/// value is a position within one unit of work (the K-th acknowledgement of an emit) rather
/// than a count of passes.
pub fn hit_at(name: &str, n: u64) {
    let points = points();
    if points.is_empty() {
        return;
    }
    if points.get(name).is_some_and(|(at, _)| *at == n) {
        abort(name);
    }
}

/// Whether the caller must inject its fault now: failpoint `name` is armed and reached for
/// the armed time (once; later passes go on normally).
pub fn trip(name: &str) -> bool {
    injecting(name, reached(name))
}

/// Whether the caller must inject its fault now: failpoint `name` is armed with N and this is
/// one of its first N passes.
pub fn trip_first(name: &str) -> bool {
    injecting(name, pass(name, |before, at| before < at))
}

/// Whether failpoint `name` is armed (for failpoints that inject a fault rather than abort).
pub fn armed(name: &str) -> bool {
    points().contains_key(name)
}
