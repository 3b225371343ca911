-- Rankings computed ahead of time (issue 19 item 2): the top issues by affected users of each
-- project over the long windows (7 and 30 days), written every `rankings.refresh_seconds` by
-- the writer's rankings loop (docs/operations.md "Precomputed rankings") with the same query
-- as `tracefold top --by users`, and read by `tracefold top` while fresh. Counting every
-- issue's users of 30 days at query time costs about a second at 20,000 issues an hour
-- (benches/README.md); reading a ranking computed a few minutes ago costs a few milliseconds.
--
-- One computation (`run`, random) of one window writes every project's list in one INSERT,
-- all rows with the same `computed_at` (the server's clock that aligned the window), so in one
-- partition: one part, atomic. `run_rows` is the computation's row count: a reader takes the
-- latest computation whose rows are all there, so a split insert (over a million rows) or a
-- second writer's computation of the same second is never read half or mixed.
--
-- Bounded by dropping partitions, not by a ReplacingMergeTree: partitions are hours of
-- `computed_at`, and each refresh drops those more than an hour older than its own
-- (ALTER ... DROP PARTITION: a metadata operation, at once and deterministic, on every server;
-- ClickHouse 18.16 has no TTL). A ReplacingMergeTree keyed by rank would hold one ranking only
-- after merges (whenever they run), need FINAL to read, and keep the stale tail of a longer
-- older list. `tracefold retention` leaves these partitions alone (ids of 10 digits), and on
-- servers with TTL the flavour adds the usual one as a backstop.
CREATE TABLE IF NOT EXISTS {db}.issue_rankings
(
    computed_at       DateTime,
    run               UInt64,
    window_seconds    UInt32,
    project           String,
    issue_id          String,
    users             UInt64,
    events            UInt64,
    users_approximate UInt8,
    top_k             UInt32,
    refresh_seconds   UInt32,
    run_rows          UInt32
)
ENGINE = MergeTree
PARTITION BY toStartOfHour(computed_at)
ORDER BY (window_seconds, computed_at, run, project, issue_id);
