-- One row per computation of the precomputed rankings (issue 19 item 2; 0014's
-- `issue_rankings` holds their rows): written by the writer's rankings loop after a
-- computation's rows are all inserted, so a reader that takes the newest run here reads a
-- whole list, however the rows' INSERT was split into blocks. The ranking's rows stream from
-- ClickHouse into the INSERT (the writer never holds a list, however many issues), so their
-- count is only known once they are all written: it is here, not on every row.
--
-- `cut`: the projects whose list reached `top_k` (and so may leave out issues of the window).
-- A project not in it has every issue with events in the window in its list, so any ranking
-- of those issues by events or users, of any length, is read from it; a cut list answers only
-- `--by users --limit` up to `top_k`.
--
-- Partitions are hours of `computed_at`, dropped by the loop together with the same hours of
-- `issue_rankings` (docs/operations.md "Precomputed rankings").
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
PARTITION BY toStartOfHour(computed_at)
ORDER BY (window_seconds, computed_at, run);
