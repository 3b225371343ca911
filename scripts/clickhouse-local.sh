#!/usr/bin/env bash
# Install (if needed) and start a project-local ClickHouse server for development and tests.
#
#   scripts/clickhouse-local.sh start   # installs Debian's clickhouse-server if missing, starts it
#   scripts/clickhouse-local.sh stop
#   scripts/clickhouse-local.sh status
#
# Data and logs live under $TRACEFOLD_CH_DIR (default: .tracefold/clickhouse in the repo).
# HTTP listens on 127.0.0.1:$TRACEFOLD_CH_HTTP_PORT (default 8123), native TCP on
# 127.0.0.1:$TRACEFOLD_CH_TCP_PORT (default 9000).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${TRACEFOLD_CH_DIR:-$repo/.tracefold/clickhouse}
http_port=${TRACEFOLD_CH_HTTP_PORT:-8123}
tcp_port=${TRACEFOLD_CH_TCP_PORT:-9000}
pidfile=$dir/clickhouse.pid

log() { printf 'clickhouse-local: %s\n' "$*" >&2; }

ping() { curl -fsS "http://127.0.0.1:$http_port/ping" >/dev/null 2>&1; }

install() {
  "$repo/scripts/deps.sh"
}

server_bin() {
  if command -v clickhouse-server >/dev/null 2>&1; then command -v clickhouse-server;
  else echo /usr/bin/clickhouse; fi
}

write_config() {
  mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas" "$dir/log"
  cat >"$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>$dir/log/clickhouse-server.log</log>
        <errorlog>$dir/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <http_port>$http_port</http_port>
    <tcp_port>$tcp_port</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>10</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <format_schema_path>$dir/format_schemas/</format_schema_path>
    <users_config>$dir/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
</yandex>
XML
  cat >"$dir/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <load_balancing>random</load_balancing>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval><duration>3600</duration><queries>0</queries><errors>0</errors>
            <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval>
        </default>
    </quotas>
</yandex>
XML
}

start() {
  if ping; then log "already answering on 127.0.0.1:$http_port"; return; fi
  install
  write_config
  log "starting $(server_bin) with data in $dir"
  nohup "$(server_bin)" --config-file="$dir/config.xml" >"$dir/log/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 120); do
    if ping; then log "ready on http://127.0.0.1:$http_port"; return; fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      log "server exited; last log lines:"; tail -20 "$dir/log/stdout.log" "$dir/log/clickhouse-server.err.log" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
  log "server did not answer within 60 s"; exit 1
}

stop() {
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")"
    for _ in $(seq 1 60); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.5; done
    log "stopped"
  else
    log "not running (no live pid in $pidfile)"
  fi
  rm -f "$pidfile"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) if ping; then echo "up on 127.0.0.1:$http_port"; else echo "down"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
