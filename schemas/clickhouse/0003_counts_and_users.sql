-- Per-minute event counts by release and environment.
CREATE TABLE IF NOT EXISTS {db}.issue_counts_1m
(
    project     String,
    issue_id    String,
    minute      DateTime,
    release     String,
    environment String,
    count       UInt64
)
ENGINE = SummingMergeTree((count))
PARTITION BY toYYYYMMDD(minute)
ORDER BY (project, issue_id, minute, release, environment);

-- No GROUP BY: SummingMergeTree adds up rows of the same key when it merges parts.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.issue_counts_1m_mv TO {db}.issue_counts_1m AS
SELECT project, issue_id, minute, release, environment, count
FROM {db}.aggregates;

-- Affected users per issue and hour (exact set of user hashes; merge across hours for totals).
CREATE TABLE IF NOT EXISTS {db}.issue_users_1h
(
    project  String,
    issue_id String,
    hour     DateTime,
    users_state AggregateFunction(uniqExact, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (project, issue_id, hour);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.issue_users_1h_mv TO {db}.issue_users_1h AS
SELECT project, issue_id, toStartOfHour(minute) AS hour, uniqExactState(user) AS users_state
FROM {db}.aggregates
ARRAY JOIN users AS user
GROUP BY project, issue_id, hour;
