-- Artifacts: uploaded source maps and the minified files they are for, one row per artifact
-- (`POST /api/<project>/sourcemaps`, `tracefold sourcemaps upload`; docs/sourcemaps.md). The
-- bytes are in the object store (`[sourcemaps] store_url`): at
-- `<project>/<release>/<sha256 of url_key>` (a `.minified` suffix for the minified file) and,
-- when `debug_id` is not empty, also at `<project>/debug-id/<debug_id>`. `url_key` is the
-- minified file's release-relative URL (`~/static/js/main.js`), `kind` is `map` or
-- `minified`, `debug_id` the canonical (lower-case, hyphenated) debug id or empty, `sha256`
-- the lower-case hex digest of the stored bytes. An upload of the same
-- (project, release, url_key, kind) replaces the object, and merges of this
-- ReplacingMergeTree(uploaded_at) keep the newest row; readers use FINAL. Not partitioned by
-- time: a release's maps are kept as long as its events may arrive (no TTL, no retention).
CREATE TABLE IF NOT EXISTS {db}.artifacts
(
    project     String,
    release     String,
    url_key     String,
    kind        String,
    debug_id    String,
    size        UInt64,
    sha256      String,
    uploaded_at DateTime
)
ENGINE = ReplacingMergeTree(uploaded_at)
ORDER BY (project, release, url_key, kind);
