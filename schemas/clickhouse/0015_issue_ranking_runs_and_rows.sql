-- The precomputed rankings (issue 19 item 2) in two tables that replace 0014's
-- `issue_rankings`: `issue_ranking_rows`, each computation's ranked issues, and
-- `issue_ranking_runs`, one row per computation, written by the writer's rankings loop after
-- all of its rows are in (docs/operations.md "Precomputed rankings"). A reader takes the
-- newest run here, then its rows: a whole list, however the rows' INSERT was split into
-- blocks, and rows of an abandoned INSERT are never read. The rows stream from ClickHouse into
-- the INSERT (the writer never holds a list, however many issues), so their count is known
-- only once they are all written: it is here, not on every row as 0014 had it.
--
-- A row is what `top --by users` showed of an issue at `computed_at`: events, users, title,
-- culprit, level, first and last seen, the issues merged into it by late source maps
-- (`merged`) and its last hour per minute (`minutes`, `minute_counts`: the minutes with events
-- of the hour up to `computed_at`), so that reading a list of tens of thousands of issues is
-- one table read, not joins with `issues` and `issue_counts_1m`.
--
-- `cut`: the projects whose list reached `top_k` (and so may leave out issues of the window).
-- A project not in it has every issue with events in the window in its list, so any ranking
-- of those issues by events or users, of any length, is read from it; a cut list answers only
-- `--by users --limit` up to `top_k`.
--
-- Partitions are five minutes of `computed_at`, so that the loop keeps only what readers may
-- still read: it drops the partitions (of runs first, then of rows) older than the one holding
-- each window's second newest run (ALTER ... DROP PARTITION: a metadata operation, at once;
-- ClickHouse 18.16 has no TTL). 0014's hour partitions held 12 to 24 runs, which at a list of
-- every issue of 30 days (tens of thousands of rows a run) is tens of megabytes of old rankings.
-- `tracefold retention` leaves these partitions alone (ids of 10 digits), and on servers with
-- TTL the flavour adds the usual one as a backstop.
--
-- 0014's `issue_rankings` is no longer written or read: the loop drops its partitions with its
-- own older ones, so it is empty within minutes of the upgrade (the table stays, as every
-- table a migration leaves behind: migrations drop only views). A release older than this one
-- reads it until then; after, it finds no ranking and counts live.
CREATE TABLE IF NOT EXISTS {db}.issue_ranking_runs
(
    computed_at     DateTime,
    run             UInt64,
    window_seconds  UInt32,
    rows            UInt64,
    cut             Array(String),
    top_k           UInt32,
    refresh_seconds UInt32
)
ENGINE = MergeTree
PARTITION BY toStartOfFiveMinute(computed_at)
ORDER BY (window_seconds, computed_at, run);

CREATE TABLE IF NOT EXISTS {db}.issue_ranking_rows
(
    computed_at       DateTime,
    run               UInt64,
    window_seconds    UInt32,
    project           String,
    issue_id          String,
    users             UInt64,
    events            UInt64,
    users_approximate UInt8,
    title             String,
    culprit           String,
    level             String,
    first_seen        UInt32,
    last_seen         UInt32,
    merged            Array(String),
    minutes           Array(UInt32),
    minute_counts     Array(UInt64)
)
ENGINE = MergeTree
PARTITION BY toStartOfFiveMinute(computed_at)
ORDER BY (window_seconds, computed_at, run, project, issue_id);
