-- Outcomes: what became of events, per project, minute, outcome and reason (accepted,
-- rate_limited, invalid, too_large, dlq, lost, duplicate), for users who wonder why their
-- events do not show up. One row per outcome record; a record is identified by
-- (project, minute, outcome, reason, source), its sorting key, so a record that the writer
-- inserts twice (redelivered, or re-emitted by a rebuilt grouper batch) collapses into one
-- when parts merge. Read it with FINAL (or with sum over the identity-deduplicated rows), as
-- tracefold's queries do.
CREATE TABLE IF NOT EXISTS {db}.outcomes
(
    project     String,
    minute      DateTime,
    outcome     String,
    reason      String,
    source      String,
    quantity    UInt64,
    inserted_at DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(minute)
ORDER BY (project, minute, outcome, reason, source);
