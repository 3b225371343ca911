#!/usr/bin/env bash
# Rebuilds the source-map fixtures under tests/fixtures/sourcemaps: six minified builds of a
# generated JavaScript app made by esbuild (the version pinned in package.json and
# package-lock.json there), their maps, the real minified stacks (stacks.json), the Rust table
# of builds (builds.rs) and the throughput event files. Deterministic: a second run changes no
# byte. Needs node 18+ and npm; CI does not run it (the outputs are checked in).
set -euo pipefail
cd "$(dirname "$0")/../tests/fixtures/sourcemaps"
# esbuild's own binary comes as an optional dependency; its install script only checks it.
npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
node gen.mjs
