#!/usr/bin/env bash
# Build settings of the release profile, measured on the grouper's hot path (issue 14, item 6).
#
#   benches/build-settings.sh            # every variant below
#   benches/build-settings.sh fat-cgu1   # the named ones only
#
# For each variant: builds `hot_path_once` with the profile overridden through Cargo's
# environment (CARGO_PROFILE_RELEASE_*, RUSTFLAGS) into a target directory of its own, counts
# instructions per event under callgrind (`busy` and `bare` modes, exact on a noisy machine),
# times a whole `busy` run of 40 rounds (200,000 events, setup included, best of 3; wall clock: noisy when the machine
# is shared) and reports the binary's size. A table on stderr as it goes, one JSON line per
# variant on stdout. Needs valgrind. Takes about 3 to 8 minutes per variant on 2 cores; each
# variant's build (about 1 GB) is deleted once measured unless BUILD_SETTINGS_KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }

# name | LTO | codegen units | RUSTFLAGS
variants=(
  "default|false|4|"
  "thin|thin|4|"
  "fat-cgu1|fat|1|"
  "default-v3|false|4|-C target-cpu=x86-64-v3"
  "fat-cgu1-v3|fat|1|-C target-cpu=x86-64-v3"
)
want=("$@")
root=${BUILD_SETTINGS_TARGET:-target/build-settings}
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

count() { # mode rounds binary -> instructions per event
  local out=$root/cg.out
  valgrind --tool=callgrind --toggle-collect='hot_path_once::run' --callgrind-out-file="$out" \
    "$3" "$1" "$2" >/dev/null 2>"$root/cg.err"
  local ir events
  ir=$(grep -m1 '^summary:' "$out" | awk '{print $2}')
  events=$(( $2 * 5000 ))
  echo $(( ir / events ))
}

printf '%-12s %6s %4s %-26s %12s %12s %8s %10s %10s\n' variant lto cgu rustflags "busy ins/ev" "bare ins/ev" ratio "wall ns/ev" "size MB" >&2
for v in "${variants[@]}"; do
  IFS='|' read -r name lto cgu flags <<<"$v"
  if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " == *" $name "* ]]; then continue; fi
  dir=$root/$name
  echo "building $name ..." >&2
  CARGO_TARGET_DIR=$dir CARGO_PROFILE_RELEASE_LTO=$lto CARGO_PROFILE_RELEASE_CODEGEN_UNITS=$cgu \
    RUSTFLAGS="$flags" cargo build --quiet --release -p tracefold-benches --example hot_path_once
  bin=$dir/release/examples/hot_path_once
  busy=$(count busy 2 "$bin")
  bare=$(count bare 2 "$bin")
  best=
  for _ in 1 2 3; do
    t0=$(date +%s%N); "$bin" busy 40 >/dev/null; t1=$(date +%s%N)
    ns=$(( (t1 - t0) / 200000 ))
    if [ -z "$best" ] || [ "$ns" -lt "$best" ]; then best=$ns; fi
  done
  size=$(stat -c %s "$bin")
  ratio=$(awk -v a="$busy" -v b="$bare" 'BEGIN{printf "%.3f", a/b}')
  printf '%-12s %6s %4s %-26s %12s %12s %8s %10s %10.1f\n' "$name" "$lto" "$cgu" "${flags:-none}" "$busy" "$bare" "$ratio" "$best" "$(awk -v s="$size" 'BEGIN{print s/1e6}')" >&2
  printf '{"bench":"build_settings","build":"%s","variant":"%s","lto":"%s","codegen_units":%s,"rustflags":"%s","busy_instructions_per_event":%s,"bare_instructions_per_event":%s,"busy_ns_per_event_best_of_3":%s,"binary_bytes":%s}\n' \
    "$rev" "$name" "$lto" "$cgu" "$flags" "$busy" "$bare" "$best" "$size"
  [ "${BUILD_SETTINGS_KEEP:-0}" = 1 ] || rm -rf "$dir"
done
