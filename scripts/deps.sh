#!/usr/bin/env bash
# Installs, from Debian's packages, what building and running tracefold needs and this machine
# lacks: a C toolchain, pkg-config, OpenSSL and zlib headers (librdkafka is built from source),
# curl, and ClickHouse. Does nothing when everything is there.
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
# The Kubernetes OpenAPI schemas the deployment tests validate against (offline).
if ! command -v kubernetes-validate >/dev/null 2>&1 && command -v python3 >/dev/null 2>&1; then
  echo "deps: installing kubernetes-validate from PyPI" >&2
  python3 -m pip install -q --disable-pip-version-check kubernetes-validate 2>&1 | grep -v 'Running pip as the' >&2 || true
fi
# The real Sentry SDK the end-to-end test reports errors with.
if command -v python3 >/dev/null 2>&1 && ! python3 -c "import sentry_sdk" >/dev/null 2>&1; then
  echo "deps: installing sentry-sdk from PyPI" >&2
  python3 -m pip install -q --disable-pip-version-check sentry-sdk 2>&1 | grep -v 'Running pip as the' >&2 || true
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
