//! Failpoints for crash tests: `TRACEFOLD_FAILPOINTS="grouper.after_produce=3"` makes the
//! process abort (like SIGKILL: no cleanup, no commit) the third time it reaches that point.
//! Unset in production; reading it costs one atomic load per call after the first.

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

/// Aborts the process when failpoint `name` is armed and reached for the armed time.
pub fn hit(name: &str) {
    let points = points();
    if points.is_empty() {
        return;
    }
    if let Some((at, seen)) = points.get(name) {
        if seen.fetch_add(1, Ordering::SeqCst) + 1 == *at {
            eprintln!("failpoint {name} reached: aborting");
            std::process::abort();
        }
    }
}

/// Whether failpoint `name` is armed (for failpoints that inject a fault rather than abort).
pub fn armed(name: &str) -> bool {
    points().contains_key(name)
}
