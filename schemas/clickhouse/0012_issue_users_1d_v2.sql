-- Distinct affected users per issue and day (`uniqCombined` states), as `issue_users_1d`
-- (0010) holds them, in a table of small granules: 256 rows instead of 8,192, so that a query
-- that reads a few issues' states (the users of `tracefold top`'s ranked issues over a long
-- window) reads only those issues' granules, not most of the table (one issue has one row per
-- day: a granule of 8,192 rows holds the days of more than a thousand issues). The index
-- granularity of a table cannot be altered on ClickHouse 18.16, hence a new table; queries read
-- this one. `issue_users_1d` stays (fed as before) for the releases still running during an
-- upgrade; 0013 stops feeding it (drops its view).
CREATE TABLE IF NOT EXISTS {db}.issue_users_1d_v2
(
    project     String,
    issue_id    String,
    day         Date,
    users_state AggregateFunction(uniqCombined, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (project, issue_id, day)
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.issue_users_1d_v2_mv TO {db}.issue_users_1d_v2 AS
SELECT project, issue_id, toDate(minute) AS day, uniqCombinedState(user) AS users_state
FROM {db}.aggregates
ARRAY JOIN users AS user
GROUP BY project, issue_id, day;

-- Backfill: the states of `issue_users_1d`, copied row by row (the same sketches of the same
-- rows; faster than building them again from the base table). Streamed, not grouped: the
-- table's merges fold the rows of one issue and day, so the backfill never holds every state
-- in memory at once. The view exists already, so nothing inserted meanwhile is missed; a row
-- counted twice (by both, or by a re-run of a half-applied migration) adds hashes already in
-- the sketch, which changes nothing.
INSERT INTO {db}.issue_users_1d_v2 (project, issue_id, day, users_state)
SELECT project, issue_id, day, users_state
FROM {db}.issue_users_1d;
