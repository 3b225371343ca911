//! Metric names of the writer (Prometheus), emitted once per insert.

/// Aggregate rows inserted into ClickHouse.
pub const ROWS_INSERTED_TOTAL: &str = "tracefold_writer_rows_inserted_total";
/// Aggregate records skipped because ClickHouse already held them (replays).
pub const ROWS_DUPLICATE_TOTAL: &str = "tracefold_writer_rows_duplicate_total";
/// Aggregate records a retry found stored by an INSERT that had been reported as failed: the base
/// table holds them, but ClickHouse writes the materialized views one by one after it, so a
/// view whose push failed (a server killed mid-insert, a memory limit, too many parts) may not;
/// each is also a WARN line. See the reliability section of docs/operations.md.
pub const FAILED_INSERT_ROWS_STORED_TOTAL: &str = "tracefold_writer_failed_insert_rows_stored_total";
/// Inserts, by `outcome` (`ok`, `error`).
pub const INSERTS_TOTAL: &str = "tracefold_writer_inserts_total";
/// Insert latency, seconds.
pub const INSERT_SECONDS: &str = "tracefold_writer_insert_seconds";
/// Rows per insert.
pub const INSERT_ROWS: &str = "tracefold_writer_insert_rows";
/// Aggregate and outcome messages that could not be read (sent to the DLQ).
pub const MALFORMED_TOTAL: &str = "tracefold_writer_malformed_total";

/// Counter (labels `topic`, `partition`): aggregate records deleted by the broker's retention before this
/// group read them; each loss is also an ERROR log line. See the reliability section of docs/operations.md.
pub const EVENTS_LOST_TOTAL: &str = "tracefold_writer_events_lost_total";

/// Outcome rows inserted into ClickHouse (the `outcomes` table).
pub const OUTCOME_ROWS_INSERTED_TOTAL: &str = "tracefold_writer_outcome_rows_inserted_total";
/// Inserts into the `outcomes` table, by `outcome` (`ok`, `error`).
pub const OUTCOME_INSERTS_TOTAL: &str = "tracefold_writer_outcome_inserts_total";
/// Counter (labels `topic`, `partition`): outcome records deleted by the broker's retention
/// before the outcomes consumer read them; each loss is also an ERROR log line.
pub const OUTCOMES_LOST_TOTAL: &str = "tracefold_writer_outcomes_lost_total";

/// Computations of the precomputed rankings (`issue_ranking_rows`), by `outcome` (`ok`, `skipped`:
/// another writer computed them a moment ago, `error`: logged and tried again).
pub const RANKINGS_REFRESH_TOTAL: &str = "tracefold_writer_rankings_refresh_total";
/// Time one computation of the rankings took, seconds (both windows).
pub const RANKINGS_REFRESH_SECONDS: &str = "tracefold_writer_rankings_refresh_seconds";
/// Rows the last computation of the rankings wrote (both windows, every project).
pub const RANKINGS_ROWS: &str = "tracefold_writer_rankings_rows";

/// Every metric this service emits (for documentation and dashboard checks).
pub const ALL: &[&str] = &[
    ROWS_INSERTED_TOTAL,
    ROWS_DUPLICATE_TOTAL,
    FAILED_INSERT_ROWS_STORED_TOTAL,
    INSERTS_TOTAL,
    INSERT_SECONDS,
    INSERT_ROWS,
    MALFORMED_TOTAL,
    EVENTS_LOST_TOTAL,
    OUTCOME_ROWS_INSERTED_TOTAL,
    OUTCOME_INSERTS_TOTAL,
    OUTCOMES_LOST_TOTAL,
    RANKINGS_REFRESH_TOTAL,
    RANKINGS_REFRESH_SECONDS,
    RANKINGS_ROWS,
];
