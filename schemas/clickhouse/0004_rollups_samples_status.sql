-- Hourly and daily rollups. Fed from the base table like every derived table: the writer never
-- inserts a record twice, so a rollup never counts one twice (a plain materialized view would
-- re-sum a replayed insert; here replays do not reach ClickHouse).
CREATE TABLE IF NOT EXISTS {db}.issue_counts_1h
(
    project     String,
    issue_id    String,
    hour        DateTime,
    release     String,
    environment String,
    count       UInt64
)
ENGINE = SummingMergeTree((count))
PARTITION BY toYYYYMM(hour)
ORDER BY (project, issue_id, hour, release, environment);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.issue_counts_1h_mv TO {db}.issue_counts_1h AS
SELECT project, issue_id, toStartOfHour(minute) AS hour, release, environment, count
FROM {db}.aggregates;

CREATE TABLE IF NOT EXISTS {db}.issue_counts_1d
(
    project     String,
    issue_id    String,
    day         Date,
    release     String,
    environment String,
    count       UInt64
)
ENGINE = SummingMergeTree((count))
PARTITION BY toYYYYMM(day)
ORDER BY (project, issue_id, day, release, environment);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.issue_counts_1d_mv TO {db}.issue_counts_1d AS
SELECT project, issue_id, toDate(minute) AS day, release, environment, count
FROM {db}.aggregates;

-- A few sample events per issue: the latest one of every hour it occurred in.
CREATE TABLE IF NOT EXISTS {db}.issue_samples
(
    project  String,
    issue_id String,
    hour     DateTime,
    seen     DateTime,
    release  String,
    sample   String
)
ENGINE = ReplacingMergeTree(seen)
PARTITION BY toYYYYMM(hour)
ORDER BY (project, issue_id, hour);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.issue_samples_mv TO {db}.issue_samples AS
SELECT project, issue_id, toStartOfHour(minute) AS hour, first_seen AS seen, release, sample
FROM {db}.aggregates
WHERE sample != '';

-- Issue status with its history: every change is a row (tracefold issue resolve/ignore/reopen).
CREATE TABLE IF NOT EXISTS {db}.issue_status_log
(
    project    String,
    issue_id   String,
    status     String,
    changed_at DateTime,
    changed_ms UInt64,
    actor      String,
    release    String,
    note       String
)
ENGINE = MergeTree
ORDER BY (project, issue_id, changed_ms);

-- The current status (issues without a row are active). Output names differ from the
-- source columns: ClickHouse 18.16 resolves such aliases inside the other aggregates.
CREATE VIEW IF NOT EXISTS {db}.issue_status_v AS
SELECT
    project,
    issue_id,
    argMax(status, changed_ms)  AS current_status,
    max(changed_at)             AS status_changed_at,
    argMax(release, changed_ms) AS status_release
FROM {db}.issue_status_log
GROUP BY project, issue_id;
