-- Issue aliases: merge facts from the grouper's source-map hook (docs/sourcemaps.md "Late
-- maps"). When an event's frames were mapped, the grouper also fingerprints the frames as
-- received (the *secondary*); when the two issue ids differ, the aggregate of the mapped issue
-- (the *primary*, `issue_id`) names the secondary in `merged_from` and the writer stores one row
-- here per entry. Queries fold each `alias` into its `issue_id`: the events a build sent before
-- its map was uploaded count for the issue its later events (and other builds') make.
-- Rows are facts, not counts: a replayed or re-sent row is the same row and merges away.
-- Should one alias ever name two primaries (a map replaced by one with other mappings), the
-- smallest `issue_id` wins in every query. Not partitioned by time and no TTL: an alias lives
-- as long as the issues it joins.
CREATE TABLE IF NOT EXISTS {db}.issue_aliases
(
    project    String,
    alias      String,
    issue_id   String,
    first_seen DateTime
)
ENGINE = ReplacingMergeTree(first_seen)
ORDER BY (project, alias, issue_id);
