#!/usr/bin/env bash
# Installs, from Debian's packages, what building and running tracefold needs and this machine
# lacks: a C toolchain, pkg-config, OpenSSL and zlib headers (librdkafka is built from source),
# curl, and ClickHouse; and the Python packages the tests use, pinned in
# scripts/requirements-test.txt. Does nothing when everything is there.
set -euo pipefail
need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v make >/dev/null 2>&1 || need+=(make)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || need+=(zlib1g-dev)
if ! command -v clickhouse-server >/dev/null 2>&1 && [ ! -x /usr/bin/clickhouse ]; then
  need+=(clickhouse-server clickhouse-client)
fi
# The Python packages the tests use, at the versions pinned in scripts/requirements-test.txt
# (the real Sentry SDK, the offline Kubernetes schemas); installed when any is missing or at
# another version.
if command -v python3 >/dev/null 2>&1; then
  req="$(dirname "$0")/requirements-test.txt"
  if ! python3 - "$req" <<'PY' >/dev/null 2>&1
import sys, importlib.metadata as md
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, version = line.split("==")
    if md.version(name) != version:
        sys.exit(1)
PY
  then
    echo "deps: installing $(grep -v '^#' "$req" | xargs) from PyPI" >&2
    python3 -m pip install -q --disable-pip-version-check -r "$req" 2>&1 | grep -v 'Running pip as the' >&2 || true
  fi
fi
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "deps: missing ${need[*]}; install them with your package manager" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo=sudo
echo "deps: installing ${need[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
