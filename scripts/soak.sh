#!/usr/bin/env bash
# A soak run: the services as separate processes on the embedded Kafka, a steady load for a
# given time, the RSS of every process and the consumer lag of every group sampled as it
# goes; at the end a table with a sparkline per series, the same as JSON, and whether
# ClickHouse holds exactly the accepted events.
#
#   scripts/soak.sh [--minutes 30] [--rate 2000] [--interval 10] [--issues 500]
#
# Needs a release build (it makes one) and ClickHouse (scripts/clickhouse-local.sh start; it
# starts one). Writes samples and the summary under .tracefold/soak/<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=30 rate=2000 interval=10 issues=500
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --interval) interval=$2; shift 2 ;;
    --issues) issues=$2; shift 2 ;;
    *) echo "usage: $0 [--minutes M] [--rate EVENTS_PER_S] [--interval S] [--issues N]" >&2; exit 2 ;;
  esac
done

log() { printf 'soak: %s\n' "$*" >&2; }

scripts/deps.sh
scripts/clickhouse-local.sh start
log "building (release)"
cargo build --release --locked -q -p tracefold -p tracefold-producer -p tracefold-grouper -p tracefold-writer -p tracefold-detector
bin=target/release
ch_url=http://127.0.0.1:${TRACEFOLD_CH_HTTP_PORT:-8123}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=.tracefold/soak/$stamp
mkdir -p "$out"
db=soak_$(date -u +%Y%m%d%H%M%S)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

"$bin/tracefold" migrate --clickhouse-url "$ch_url" --database "$db" >"$out/migrate.log" 2>&1
# The embedded Kafka prints its bootstrap servers on its first line.
"$bin/tracefold" dev --broker-only >"$out/broker.out" 2>"$out/broker.log" &
pids+=($!); broker_pid=$!
for _ in $(seq 1 100); do [ -s "$out/broker.out" ] && break; sleep 0.1; done
bootstrap=$(head -1 "$out/broker.out")
[ -n "$bootstrap" ] || { log "the embedded Kafka did not start"; cat "$out/broker.log" >&2; exit 1; }

declare -A port pid
for svc in producer grouper writer detector; do
  port[$svc]=$(free_port)
  args=(--bootstrap-servers "$bootstrap" --listen "127.0.0.1:${port[$svc]}")
  case $svc in
    writer | detector) env=(TRACEFOLD__CLICKHOUSE__DATABASE="$db"); args+=(--clickhouse-url "$ch_url") ;;
    *) env=() ;;
  esac
  env "${env[@]}" RUST_LOG=warn "$bin/tracefold-$svc" "${args[@]}" >"$out/$svc.log" 2>&1 &
  pid[$svc]=$!; pids+=($!)
done
for svc in producer grouper writer detector; do
  for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:${port[$svc]}/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
done
log "services ready (Kafka $bootstrap, ClickHouse $ch_url database $db); load: $rate events/s for $minutes min"

events=$((rate * minutes * 60))
"$bin/tracefold" loadgen --http "http://127.0.0.1:${port[producer]}" --events "$events" --rate "$rate" \
  --issues "$issues" --format json >"$out/loadgen.json" 2>"$out/loadgen.log" &
load_pid=$!; pids+=($load_pid)

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
lag() { curl -fs "http://127.0.0.1:$1/metrics" 2>/dev/null | awk '/^tracefold_kafka_consumer_lag\{/ {s += $NF} END {print s + 0}'; }

echo "t_s,broker_rss_kb,producer_rss_kb,grouper_rss_kb,writer_rss_kb,detector_rss_kb,grouper_lag,writer_lag,detector_lag" >"$out/samples.csv"
start=$(date +%s)
while kill -0 "$load_pid" 2>/dev/null; do
  for svc in producer grouper writer detector; do
    kill -0 "${pid[$svc]}" 2>/dev/null || { log "$svc exited during the soak; see $out/$svc.log"; exit 1; }
  done
  t=$(( $(date +%s) - start ))
  echo "$t,$(rss_kb "$broker_pid"),$(rss_kb "${pid[producer]}"),$(rss_kb "${pid[grouper]}"),$(rss_kb "${pid[writer]}"),$(rss_kb "${pid[detector]}"),$(lag "${port[grouper]}"),$(lag "${port[writer]}"),$(lag "${port[detector]}")" >>"$out/samples.csv"
  printf '\rsoak: %4d s of %d, grouper lag %s   ' "$t" "$((minutes * 60))" "$(lag "${port[grouper]}")" >&2
  sleep "$interval"
done
echo >&2
wait "$load_pid" || { log "loadgen failed; see $out/loadgen.log"; exit 1; }
accepted=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["accepted"])' "$out/loadgen.json")
log "load done: $accepted accepted; waiting for ClickHouse to hold them"
stored=0
for _ in $(seq 1 240); do
  stored=$(curl -fs "$ch_url/" --data-binary "SELECT sum(count) FROM $db.aggregates" || echo 0)
  [ "$stored" = "$accepted" ] && break
  sleep 0.5
done

python3 - "$out" "$accepted" "$stored" "$rate" "$minutes" <<'PY'
import csv, json, sys
out, accepted, stored, rate, minutes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3] or 0), int(sys.argv[4]), int(sys.argv[5])
rows = list(csv.DictReader(open(f"{out}/samples.csv")))
bars = "▁▂▃▄▅▆▇█"
def spark(vals, width=40):
    if not vals:
        return ""
    step = max(1, len(vals) / width)
    picked = [max(vals[int(i * step):int((i + 1) * step)] or [0]) for i in range(min(width, len(vals)))]
    top = max(picked) or 1
    return "".join(bars[min(len(bars) - 1, int(v / top * (len(bars) - 1)))] for v in picked)
series = {}
for key in rows[0].keys() if rows else []:
    if key == "t_s":
        continue
    vals = [float(r[key] or 0) for r in rows]
    mib = key.endswith("_kb")
    conv = (lambda v: v / 1024) if mib else (lambda v: v)
    series[key.replace("_kb", "_mib")] = {
        "first": round(conv(vals[0]), 1), "max": round(conv(max(vals)), 1), "last": round(conv(vals[-1]), 1),
        "spark": spark(vals),
    }
print(f"\nsoak: {minutes} min at {rate} events/s, {len(rows)} samples; accepted {accepted:,}, stored {stored:,}"
      f" ({'exact' if stored == accepted else 'MISMATCH'})\n")
print(f"{'series':<18} {'first':>9} {'max':>9} {'last':>9}  over the run")
for k, s in series.items():
    print(f"{k:<18} {s['first']:>9} {s['max']:>9} {s['last']:>9}  {s['spark']}")
summary = {"minutes": minutes, "rate": rate, "samples": len(rows), "accepted": accepted, "stored": stored,
           "exact": stored == accepted, "series": series}
json.dump(summary, open(f"{out}/summary.json", "w"))
print("\n" + json.dumps(summary, ensure_ascii=False))
sys.exit(0 if stored == accepted else 1)
PY
