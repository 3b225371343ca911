-- Breakdowns: events of each issue by browser, OS and URL (docs/ui.md). Each aggregate row
-- carries its record's bounded breakdown (at most 10 values per key, further events under
-- the value '(other)') as a Nested column, so the writer's one INSERT per batch stays the
-- only write and its exactly-once handling covers breakdowns too. Rows stored before this
-- migration have an empty breakdown; nothing is backfilled (their events were not counted
-- by browser, OS or URL).
-- `ADD COLUMN IF NOT EXISTS` is for servers from 21 on; for older ones the migration runner
-- drops `IF NOT EXISTS` and skips the statement when the column exists already.
ALTER TABLE {db}.aggregates ADD COLUMN IF NOT EXISTS breakdown Nested(key String, value String, count UInt64);

-- Events per issue, hour, key (`browser`, `os`, `url`) and value: the issue page's tables.
CREATE TABLE IF NOT EXISTS {db}.issue_breakdown_1h
(
    project  String,
    issue_id String,
    hour     DateTime,
    key      String,
    value    String,
    count    UInt64
)
ENGINE = SummingMergeTree((count))
PARTITION BY toYYYYMM(hour)
ORDER BY (project, issue_id, hour, key, value);

-- One row per (row, breakdown entry); rows without a breakdown give none. No GROUP BY:
-- SummingMergeTree adds up rows of the same key when it merges parts.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.issue_breakdown_1h_mv TO {db}.issue_breakdown_1h AS
SELECT project, issue_id, toStartOfHour(minute) AS hour, breakdown.key AS key, breakdown.value AS value,
       breakdown.count AS count
FROM {db}.aggregates
ARRAY JOIN breakdown;
