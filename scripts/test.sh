#!/usr/bin/env bash
# Runs every test: unit, property and end-to-end (real ClickHouse, librdkafka's mock cluster).
# Starts (and on first use installs) a project-local ClickHouse, then runs cargo test.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -p tracefold-model   # extra arguments go to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/clickhouse-local.sh start
export TRACEFOLD_TEST_CLICKHOUSE_URL=${TRACEFOLD_TEST_CLICKHOUSE_URL:-http://127.0.0.1:${TRACEFOLD_CH_HTTP_PORT:-8123}}
exec cargo test --workspace --locked "$@"
