-- The base table: one row per partial aggregate from the grouper. Every derived table is fed
-- from it by a materialized view, so one INSERT (atomic) is all the writer does. Rows carry
-- the identity of their source (grouper batch and aggregates-topic position); the writer
-- uses it to recognise replayed records and never inserts one twice.
CREATE TABLE IF NOT EXISTS {db}.aggregates
(
    project          String,
    issue_id         String,
    minute           DateTime,
    release          String,
    environment      String,
    count            UInt64,
    users            Array(UInt64),
    users_saturated  UInt8,
    first_seen       DateTime,
    last_seen        DateTime,
    title            String,
    culprit          String,
    exc_type         String,
    level            String,
    platform         String,
    grouping_version String,
    sample           String,
    src_epoch        String,
    src_topic        String,
    src_partition    Int32,
    src_first_offset Int64,
    src_last_offset  Int64,
    rec_index        UInt32,
    rec_count        UInt32,
    agg_topic        String,
    agg_partition    Int32,
    agg_offset       Int64,
    inserted_at      DateTime DEFAULT now()
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(minute)
ORDER BY (project, issue_id, minute);
