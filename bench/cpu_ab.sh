#!/usr/bin/env bash
# bench/cpu_ab.sh: A/B timing of a CPU backend between two builds of attend, on this machine.
#
#   git clone -q . /tmp/base && cd /tmp/base && git checkout -q REV && cmake --preset release && cmake --build --preset release -j2 && cd -
#   bench/cpu_ab.sh /tmp/base/build/release [build/release] [rounds] [backend]
#
# Runs `attend bench` of the two builds alternately, `rounds` times (default 3), on each line of
# CPU_AB_SHAPES (attend bench flags, one call a line; default: masked f32/bf16 calls, GQA, causal,
# decode, and an unmasked control) for `backend` (default flash_cpu), OMP_NUM_THREADS=${THREADS:-2},
# and prints each line's median ms per build and the ratio old / new. Alternating is the point:
# this machine is shared and drifts between runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
old=${1:?usage: bench/cpu_ab.sh OLD_BUILD_DIR [NEW_BUILD_DIR] [rounds] [backend]}
new=${2:-$root/build/release}
rounds=${3:-3}
backend=${4:-flash_cpu}
export OMP_NUM_THREADS=${THREADS:-2}
for b in "$old" "$new"; do
  [ -x "$b/tools/attend/attend" ] || { echo "cpu_ab: no $b/tools/attend/attend (build it first)" >&2; exit 2; }
done
shapes=${CPU_AB_SHAPES:-"--seqlen 2048 --heads 8 --head-dim 64 --dtype f32 --mask additive
--seqlen 2048 --heads 8 --head-dim 64 --dtype f32 --mask keep
--seqlen 2048 --heads 8 --head-dim 64 --dtype bf16 --mask additive
--seqlen 2048 --heads-q 8 --heads-kv 2 --head-dim 64 --dtype f32 --mask additive
--seqlen 2048 --heads 8 --head-dim 64 --dtype f32 --mask additive --causal
--seqlen-q 1 --seqlen-kv 32768 --heads-q 32 --heads-kv 8 --head-dim 128 --dtype f32 --mask additive
--seqlen 2048 --heads 8 --head-dim 64 --dtype f32"}
raw=$(mktemp)
trap 'rm -f "$raw"' EXIT
for round in $(seq "$rounds"); do
  while IFS= read -r flags; do
    [ -n "$flags" ] || continue
    for which in old new; do
      dir=$old; [ $which = new ] && dir=$new
      # attend bench's last line: "BACKEND  ms  GFLOP/s"
      ms=$("$dir/tools/attend/attend" bench $flags --backend "$backend" | awk -v b="$backend" '$1 == b {print $2}')
      printf '%s\t%s\t%s\n' "$which" "$flags" "${ms:-nan}" >>"$raw"
    done
  done <<<"$shapes"
done
python3 - "$raw" "$backend" "$rounds" <<'PY'
import math, statistics, sys
runs, order = {}, []
for line in open(sys.argv[1]):
    which, flags, ms = line.rstrip("\n").split("\t")
    if flags not in order:
        order.append(flags)
    runs.setdefault((flags, which), []).append(float(ms))
def median(xs):
    ran = [x for x in xs if math.isfinite(x)]
    return statistics.median(ran) if ran else math.nan
print(f"{sys.argv[2]}, median of {sys.argv[3]} alternated rounds (ms)\n")
print("| attend bench flags | old | new | old / new |")
print("|---|---|---|---|")
for flags in order:
    o, n = median(runs[(flags, "old")]), median(runs[(flags, "new")])
    print(f"| `{flags}` | {o:.4g} | {n:.4g} | {o / n if n else math.nan:.2f}x |")
PY
