#!/usr/bin/env bash
# bench/gpu_ab.sh: A/B timing of flash_cuda between a baseline tree and this one, on the device.
#
#   Here:   git archive REV | tar -x -C .baseline     (.baseline is git-ignored)
#   Device: bench/gpu_ab.sh [.baseline] [rounds] [shapes.txt]     (run tool, carry .baseline too)
#
# Builds both trees with scripts/gpu-check (this one in build-gpu, the baseline in
# $ATTEND_AB_BASE_BUILD, default /tmp/build-base: one per baseline tree when a call compares
# several; the baseline borrows this tree's .devdeps, third_party and .whl), then runs the two
# attend_gpu_bench binaries alternately, `rounds` times (default 3), over the same shape lines
# ("NAME DTYPE B SQ SKV HQ HKV D CAUSAL BACKEND", bench/gpu_bench.cpp; read from the shapes file,
# else a default list of flash_cuda shapes), and prints each shape's TFLOP/s per round, old then
# new, the median ms of each and their ratio. Alternating in one process list on one machine is
# the point: the device's clocks drift by a few percent between calls (bench/RESULTS.md).
# The raw rows ("base|new" and attend_gpu_bench's JSON) go to $OUT/ab.jsonl, or $OUT/$ATTEND_AB_OUT
# (several A/Bs in one call each name their own); the builds' logs only when a build fails. The
# environment reaches both trees' binaries alike.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
base=$(cd "${1:-$root/.baseline}" && pwd) || { echo "gpu_ab: no baseline tree (git archive REV | tar -x -C .baseline)" >&2; exit 2; }
rounds=${2:-3}
base_build=${ATTEND_AB_BASE_BUILD:-/tmp/build-base}
out=${OUT:-$root/gpu-check-out}
mkdir -p "$out"

shapes=""
if [ -n "${3:-}" ]; then
  shapes=$(cat "$3") || { echo "gpu_ab: cannot read the shapes file $3" >&2; exit 2; }
fi
if [ -z "$shapes" ]; then
  shapes='d64-s1024 bf16 32 1024 1024 32 32 64 0 flash_cuda
d64-s1024-causal bf16 32 1024 1024 32 32 64 1 flash_cuda
d64-s4096-causal bf16 8 4096 4096 32 32 64 1 flash_cuda
d128-s1024 bf16 32 1024 1024 16 16 128 0 flash_cuda
d128-s1024-causal bf16 32 1024 1024 16 16 128 1 flash_cuda
d128-s4096-causal bf16 8 4096 4096 16 16 128 1 flash_cuda
d128-s16384 bf16 2 16384 16384 16 16 128 0 flash_cuda'
fi

for dep in .devdeps third_party .whl; do
  [ -e "$root/$dep" ] && [ ! -e "$base/$dep" ] && ln -s "$root/$dep" "$base/$dep"
done
# The builds' logs stay out of $OUT unless a build fails: the device returns at most 8 files.
# On failure the whole build log comes back (gpu-check's own output filters it).
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
OUT=$logs/new "$root/scripts/gpu-check" build >"$logs/new.log" 2>&1 ||
  { cat "$logs/new.log" "$logs/new/build.log" >"$out/ab-build-new.log" 2>/dev/null
    echo "gpu_ab: build of this tree failed ($out/ab-build-new.log)" >&2; exit 1; }
(cd "$base" && ATTEND_GPU_BUILD_DIR=$base_build OUT=$logs/base scripts/gpu-check build) >"$logs/base.log" 2>&1 ||
  { cat "$logs/base.log" "$logs/base/build.log" >"$out/ab-build-base.log" 2>/dev/null
    echo "gpu_ab: build of the baseline failed ($out/ab-build-base.log)" >&2; exit 1; }

# The binaries load cuDNN from PyTorch's wheel, as scripts/gpu-check sets up.
cudnn=$(python3 -c 'import nvidia.cudnn; print(list(nvidia.cudnn.__path__)[0])' 2>/dev/null)
[ -n "$cudnn" ] && export LD_LIBRARY_PATH=$cudnn/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
blas=$root/.devdeps/root/usr/lib/x86_64-linux-gnu
[ -d "$blas" ] && export LD_LIBRARY_PATH=$blas/openblas-pthread:$blas${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

raw=$out/$(basename "${ATTEND_AB_OUT:-ab.jsonl}")  # a file name in $OUT
: >"$raw"
for round in $(seq "$rounds"); do
  for which in base new; do
    bin=$root/build-gpu/bench/attend_gpu_bench
    [ $which = base ] && bin=$base_build/bench/attend_gpu_bench
    echo "$shapes" | "$bin" | sed "s/^/$which /" >>"$raw"
  done
done

python3 - "$raw" <<'PY'
import json, math, statistics, sys
runs, errors, order = {}, {}, []
for line in open(sys.argv[1]):
    which, _, rest = line.partition(" ")
    row = json.loads(rest)
    if row["name"] not in order:
        order.append(row["name"])
    if row.get("error"):
        errors.setdefault((row["name"], which), row["error"])
    runs.setdefault((row["name"], which), []).append((row.get("tflops") or math.nan, row.get("ms") or math.nan))

def median_ms(rounds):  # over the rounds that ran (a NaN would break the sort)
    ran = [ms for _, ms in rounds if math.isfinite(ms)]
    return statistics.median(ran) if ran else math.nan

print("| shape | base (TFLOP/s per round) | new | base ms (median) | new ms | speed (base ms / new ms) |")
print("|---|---|---|---|---|---|")
for name in order:
    b, n = runs.get((name, "base"), []), runs.get((name, "new"), [])
    bm, nm = median_ms(b), median_ms(n)
    print(f"| {name} | {', '.join(f'{t:.3g}' for t, _ in b)} | {', '.join(f'{t:.3g}' for t, _ in n)} | "
          f"{bm:.4g} | {nm:.4g} | {bm / nm if nm else math.nan:.3f} |")
for (name, which), error in errors.items():
    print(f"{name} ({which}): {error}")
PY
