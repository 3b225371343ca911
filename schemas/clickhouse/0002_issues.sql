-- Issues: one row per (project, issue) after merges. The columns hold aggregate states;
-- analysts read them through the issues_v view (or with the -Merge combinators).
CREATE TABLE IF NOT EXISTS {db}.issues
(
    project                String,
    issue_id               String,
    first_seen_state       AggregateFunction(min, DateTime),
    last_seen_state        AggregateFunction(max, DateTime),
    count_state            AggregateFunction(sum, UInt64),
    title_state            AggregateFunction(argMin, String, DateTime),
    culprit_state          AggregateFunction(argMin, String, DateTime),
    exc_type_state         AggregateFunction(argMin, String, DateTime),
    level_state            AggregateFunction(argMax, String, DateTime),
    platform_state         AggregateFunction(argMin, String, DateTime),
    grouping_version_state AggregateFunction(argMax, String, DateTime)
)
ENGINE = AggregatingMergeTree
ORDER BY (project, issue_id);

-- State columns are named apart from the source columns: ClickHouse 18.16 resolves an alias
-- that equals a source column inside the other aggregates of the same SELECT.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.issues_mv TO {db}.issues AS
SELECT
    project,
    issue_id,
    minState(first_seen)                      AS first_seen_state,
    maxState(last_seen)                       AS last_seen_state,
    sumState(count)                           AS count_state,
    argMinState(title, first_seen)            AS title_state,
    argMinState(culprit, first_seen)          AS culprit_state,
    argMinState(exc_type, first_seen)         AS exc_type_state,
    argMaxState(level, last_seen)             AS level_state,
    argMinState(platform, first_seen)         AS platform_state,
    argMaxState(grouping_version, last_seen)  AS grouping_version_state
FROM {db}.aggregates
GROUP BY project, issue_id;

CREATE VIEW IF NOT EXISTS {db}.issues_v AS
SELECT
    project,
    issue_id,
    minMerge(first_seen_state)          AS first_seen,
    maxMerge(last_seen_state)           AS last_seen,
    sumMerge(count_state)               AS count,
    argMinMerge(title_state)            AS title,
    argMinMerge(culprit_state)          AS culprit,
    argMinMerge(exc_type_state)         AS exc_type,
    argMaxMerge(level_state)            AS level,
    argMinMerge(platform_state)         AS platform,
    argMaxMerge(grouping_version_state) AS grouping_version
FROM {db}.issues
GROUP BY project, issue_id;
