#!/usr/bin/env bash
# The main job on a fresh machine: install and start a local ClickHouse (Debian's package,
# data under .tracefold/), build tracefold, run the whole pipeline on an embedded Kafka with a
# sample load, and show the top issues. Extra arguments go to `tracefold dev` (`-v`: service
# logs on the terminal instead of .tracefold/logs/dev.log).
#
#   scripts/quickstart.sh                          # 20,000 sample events, then exit
#   scripts/quickstart.sh --sample-events 200000   # a bigger load
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/clickhouse-local.sh start
cargo build --release --locked -p tracefold
exec target/release/tracefold dev --clickhouse-url "http://127.0.0.1:${TRACEFOLD_CH_HTTP_PORT:-8123}" \
  --sample-events 20000 --exit "$@"
