//! Scratch databases for the crate's tests on the real ClickHouse.

use std::sync::atomic::{AtomicU32, Ordering};
use tracefold_runtime::config::ClickHouseConfig;

/// The config of a fresh database `tftest_<name>_<pid>_<n>` on the test ClickHouse
/// (`TRACEFOLD_TEST_CLICKHOUSE_URL`, default `http://127.0.0.1:8123`); unique within the run.
pub(crate) fn scratch(name: &str) -> ClickHouseConfig {
    static N: AtomicU32 = AtomicU32::new(0);
    let url = std::env::var("TRACEFOLD_TEST_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    let n = N.fetch_add(1, Ordering::SeqCst);
    ClickHouseConfig { url, database: format!("tftest_{name}_{}_{n}", std::process::id()), ..Default::default() }
}
