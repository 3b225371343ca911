-- Distinct affected users per issue and day, and per release and day, as fixed-size sketches
-- (`uniqCombined`: exact hash sets while small, a HyperLogLog past that; the same estimator
-- Sentry's Snuba counts users with). Long windows of `tracefold top` and the cookbook's user
-- counts merge one state per issue (release) and day instead of every user hash of every hour:
-- approximate, and the answers say so (docs/cookbook.md states the error bound).
-- Fed by views on the base table (ClickHouse 18.16 does not cascade views: they read the
-- writer's insert into `aggregates`).
CREATE TABLE IF NOT EXISTS {db}.issue_users_1d
(
    project     String,
    issue_id    String,
    day         Date,
    users_state AggregateFunction(uniqCombined, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (project, issue_id, day);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.issue_users_1d_mv TO {db}.issue_users_1d AS
SELECT project, issue_id, toDate(minute) AS day, uniqCombinedState(user) AS users_state
FROM {db}.aggregates
ARRAY JOIN users AS user
GROUP BY project, issue_id, day;

CREATE TABLE IF NOT EXISTS {db}.release_users_1d
(
    project     String,
    release     String,
    day         Date,
    users_state AggregateFunction(uniqCombined, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (project, release, day);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.release_users_1d_mv TO {db}.release_users_1d AS
SELECT project, release, toDate(minute) AS day, uniqCombinedState(user) AS users_state
FROM {db}.aggregates
ARRAY JOIN users AS user
GROUP BY project, release, day;

-- Backfill: the rows stored before this migration. The views exist already, so nothing
-- inserted meanwhile is missed; a row counted twice (by a view and here, or by a re-run of a
-- half-applied migration) adds hashes already in the sketch, which changes nothing.
INSERT INTO {db}.issue_users_1d (project, issue_id, day, users_state)
SELECT project, issue_id, toDate(minute) AS day, uniqCombinedState(user) AS users_state
FROM {db}.aggregates
ARRAY JOIN users AS user
GROUP BY project, issue_id, day;

INSERT INTO {db}.release_users_1d (project, release, day, users_state)
SELECT project, release, toDate(minute) AS day, uniqCombinedState(user) AS users_state
FROM {db}.aggregates
ARRAY JOIN users AS user
GROUP BY project, release, day;
