-- Issues: one row per (project, issue) after merges; query with the -Merge combinators or
-- through the issues_v view.
CREATE TABLE IF NOT EXISTS {db}.issues
(
    project          String,
    issue_id         String,
    first_seen       AggregateFunction(min, DateTime),
    last_seen        AggregateFunction(max, DateTime),
    count            AggregateFunction(sum, UInt64),
    title            AggregateFunction(argMin, String, DateTime),
    culprit          AggregateFunction(argMin, String, DateTime),
    exc_type         AggregateFunction(argMin, String, DateTime),
    level            AggregateFunction(argMax, String, DateTime),
    platform         AggregateFunction(argMin, String, DateTime),
    grouping_version AggregateFunction(argMax, String, DateTime)
)
ENGINE = AggregatingMergeTree
ORDER BY (project, issue_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.issues_mv TO {db}.issues AS
SELECT
    project,
    issue_id,
    minState(first_seen)                      AS first_seen,
    maxState(last_seen)                       AS last_seen,
    sumState(count)                           AS count,
    argMinState(title, first_seen)            AS title,
    argMinState(culprit, first_seen)          AS culprit,
    argMinState(exc_type, first_seen)         AS exc_type,
    argMaxState(level, last_seen)             AS level,
    argMinState(platform, first_seen)         AS platform,
    argMaxState(grouping_version, last_seen)  AS grouping_version
FROM {db}.aggregates
GROUP BY project, issue_id;

CREATE VIEW IF NOT EXISTS {db}.issues_v AS
SELECT
    project,
    issue_id,
    minMerge(first_seen)          AS first_seen,
    maxMerge(last_seen)           AS last_seen,
    sumMerge(count)               AS count,
    argMinMerge(title)            AS title,
    argMinMerge(culprit)          AS culprit,
    argMinMerge(exc_type)         AS exc_type,
    argMaxMerge(level)            AS level,
    argMinMerge(platform)         AS platform,
    argMaxMerge(grouping_version) AS grouping_version
FROM {db}.issues
GROUP BY project, issue_id;
