-- The release of each issue's earliest event (the row with the smallest first_seen), one row
-- per issue after merges: new issues per release read this table and `issues` only, not the
-- base table. A table of its own rather than a column of `issues`: adding a column there would
-- mean dropping and recreating `issues_mv`, and rows inserted in between would be missed.
CREATE TABLE IF NOT EXISTS {db}.issue_first_release
(
    project       String,
    issue_id      String,
    release_state AggregateFunction(argMin, String, DateTime)
)
ENGINE = AggregatingMergeTree
ORDER BY (project, issue_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.issue_first_release_mv TO {db}.issue_first_release AS
SELECT project, issue_id, argMinState(release, first_seen) AS release_state
FROM {db}.aggregates
GROUP BY project, issue_id;

-- Backfill: the rows stored before this migration. The view exists already, so nothing
-- inserted meanwhile is missed; a row counted twice (by the view and here, or by a re-run of
-- a half-applied migration) changes no argMin.
INSERT INTO {db}.issue_first_release (project, issue_id, release_state)
SELECT project, issue_id, argMinState(release, first_seen) AS release_state
FROM {db}.aggregates
GROUP BY project, issue_id;
