-- Signal deliveries: what became of each signal on each notification channel, written by the
-- detector (`crates/detector/src/deliveries.rs`). A detector starting up reads the rows of the
-- signals it finds on the signals topic and hands a signal again to each channel whose rows
-- say it was handed over (`queued`) or given up (`failed`, `dropped`: queue full) and never
-- `delivered`, while the signal is younger than `[detector.retry] redeliver_max_age_min`;
-- an older one gets an `expired` row. `cooled` and `rate_limited` are final (not delivered on
-- purpose). One row per outcome; a (signal, channel) identity may have several (queued, then
-- delivered; failed in one process life, delivered in the next). `outcome_rank` orders them: 3
-- `delivered`, 2 the other final outcomes (`cooled`, `rate_limited`, `expired`), 1 those
-- redelivered at start-up (`queued`, `failed`, `dropped`); readers take the row of the
-- highest rank over every row of an identity (they may lie in two day partitions, which
-- merges do not join), and merges of this ReplacingMergeTree(outcome_rank) keep that row. `attempts` counts the attempts of every process life so far; `error` is the last
-- failed attempt's error, with the channel's URL and secrets redacted.
CREATE TABLE IF NOT EXISTS {db}.signal_deliveries
(
    project     String,
    issue_id    String,
    signal_id   String,
    channel     String,
    kind        String,
    outcome     String,
    attempts    UInt32,
    error       String,
    outcome_rank UInt8,
    at          DateTime,
    inserted_at DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree(outcome_rank)
PARTITION BY toYYYYMMDD(at)
ORDER BY (project, issue_id, signal_id, channel);
