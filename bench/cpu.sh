#!/usr/bin/env bash
# CPU attention benchmark (issue 3): OpenBLAS SGEMM, unfused_cpu and flash_cpu in one run on one
# thread count; writes the "CPU" section of bench/RESULTS.md (other sections are kept).
#
#   bench/cpu.sh [build-dir]        (default build-bench; THREADS=2 unless set)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build-bench}"
threads="${THREADS:-2}"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DATTEND_BUILD_TOOLS=ON >/dev/null
ninja -C "$build" -j"$threads" attend_bench_cpu >/dev/null
body="$(mktemp)"
trap 'rm -f "$body"' EXIT
OMP_NUM_THREADS="$threads" "$build/bench/attend_bench_cpu" --threads "$threads" | tee "$body"

section="$(mktemp)"
{
  echo "## CPU"
  echo
  echo "- machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores visible ($(lscpu | sed -n 's/^Flags:.*\(avx512_bf16\).*/avx512_bf16/p')), $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "- command: \`THREADS=$threads bench/cpu.sh\` (OMP_NUM_THREADS=$threads, attend_bench_cpu --threads $threads)"
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- GFLOP/s use problem::nominal_flops(): 4·B·H·Sq·Skv·D, halved for causal. Best of 5 (S=1024), 3 (S=4096) or 2 (S=16384; unfused 1) calls, after a warm-up below S=16384 (Note [Best of] in bench/cpu_bench.cpp: the machine is shared). The flash / SGEMM column uses the SGEMM rate measured at the start; the targets use the best of start and end."
  echo
  cat "$body"
  if [ -f "$root/bench/RESULTS_CPU_NOTES.md" ]; then echo; cat "$root/bench/RESULTS_CPU_NOTES.md"; fi
} > "$section"
results="$root/bench/RESULTS.md"
python3 - "$results" "$section" <<'PY'
import os, re, sys
path, section = sys.argv[1], open(sys.argv[2]).read().rstrip() + "\n"
text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
pattern = re.compile(r"^## CPU\n.*?(?=^## |\Z)", re.S | re.M)
text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
open(path, "w").write(text)
PY
rm -f "$section"
echo "wrote $results"
