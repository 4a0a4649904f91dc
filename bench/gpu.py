#!/usr/bin/env python3
"""GPU attention benchmark: attend's CUDA backends vs PyTorch SDPA (flash, cuDNN, efficient).

Times every backend with CUDA events (warm-up, median of >= 20 runs) on bf16 and fp16, head dims
64 and 128, S in {1024, 4096, 16384} with B*S = 32768 and H*D = 2048, causal and not, plus a
decode shape (Sq=1, Skv=32768, H=32, D=128, B=8) against the measured device copy bandwidth, and a
GQA shape. TFLOP/s = 4*B*H*Sq*Skv*D (halved for causal) / time. Ratios are to PyTorch's flash.

The device's clocks drift by several percent within a run, so the backends are timed in rounds
(--rounds, default 3): each round times every backend on a shape and on its causal twin (same
tensors) one after another, and a backend's time is the median of its rounds. The ratios in the
table (ours to PyTorch's, causal to non-causal) then compare times taken moments apart.

attend's backends run in-process through the `attend` Python package when it is importable with
CUDA support; otherwise through the C++ binary attend_gpu_bench (--attend-bench), on tensors of
the same shapes, layout (bshd) and distribution, in the same scripts/gpu-check run.
"""
import argparse
import datetime
import json
import math
import re
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

TORCH_BACKENDS = {"torch_flash": SDPBackend.FLASH_ATTENTION, "torch_cudnn": SDPBackend.CUDNN_ATTENTION,
                  "torch_efficient": SDPBackend.EFFICIENT_ATTENTION}
OURS = ["flash_cuda", "cudnn"]


def shapes():
    out = []
    for dt in ("bf16", "f16"):
        for d in (64, 128):
            for s in (1024, 4096, 16384):
                for causal in (False, True):
                    b, h = 32768 // s, 2048 // d
                    out.append(dict(name=f"{dt}-d{d}-s{s}{'-causal' if causal else ''}", dt=dt, b=b, sq=s, skv=s,
                                    hq=h, hkv=h, d=d, causal=causal))
    out.append(dict(name="bf16-decode-b8-h32-skv32768", dt="bf16", b=8, sq=1, skv=32768, hq=32, hkv=32, d=128,
                    causal=False, decode=True))
    out.append(dict(name="bf16-gqa-b4-s4096-h32:8-causal", dt="bf16", b=4, sq=4096, skv=4096, hq=32, hkv=8, d=128,
                    causal=True))
    return out


def nominal_flops(c):
    f = 4.0 * c["b"] * c["hq"] * c["sq"] * c["skv"] * c["d"]
    return f / 2 if c["causal"] and c["sq"] > 1 else f


def time_cuda(fn, reps=20, min_ms=200.0, batch_ms=2.0):
    """Median milliseconds of one call. Calls are timed in back-to-back batches between two events
    (batch size chosen so a batch lasts >= batch_ms), so the host-side cost of a call (Python
    argument handling, graph-cache look-ups) overlaps the previous call's kernel instead of being
    counted as idle GPU time; every backend is timed the same way."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    inner = max(1, min(50, math.ceil(batch_ms / max(start.elapsed_time(end), 1e-3))))
    times = []
    while len(times) < reps or (sum(times) * inner < min_ms and len(times) < 1000):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth():
    """Device-to-device copy of 2 GiB: (bytes read + bytes written) / time."""
    x = torch.empty(1 << 30, dtype=torch.int16, device="cuda").random_()
    y = torch.empty_like(x)
    ms = time_cuda(lambda: y.copy_(x))
    return 2 * x.numel() * 2 / (ms * 1e-3)


def make_inputs(c):
    dt = torch.bfloat16 if c["dt"] == "bf16" else torch.float16
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(c["b"], c["sq"], c["hq"], c["d"], device="cuda", dtype=dt, generator=g)
    k = torch.randn(c["b"], c["skv"], c["hkv"], c["d"], device="cuda", dtype=dt, generator=g)
    v = torch.randn(c["b"], c["skv"], c["hkv"], c["d"], device="cuda", dtype=dt, generator=g)
    return q, k, v


def time_torch(c, backend, qkv):
    q, k, v = (t.transpose(1, 2) for t in qkv)  # bshd memory, bhsd view: what SDPA takes
    gqa = c["hq"] != c["hkv"]
    # Sq=1 causal is the whole KV cache (bottom-right); PyTorch's is_causal is top-left, so pass False.
    causal = c["causal"] and c["sq"] > 1

    def run():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    run()
    return time_cuda(run)


def attend_in_process():
    try:
        import attend  # noqa: F401
        return attend if hasattr(attend, "attention") else None
    except Exception:
        return None


def time_ours_in_process(attend, c, backend, qkv):
    q, k, v = qkv
    out = torch.empty_like(q)

    def run():
        attend.attention(q, k, v, out=out, backend=backend, layout="bshd", causal=c["causal"] and c["sq"] > 1)
    run()
    return time_cuda(run)


def time_ours_binary(binary, cases, rounds):
    """{(shape, backend): median ms over `rounds` runs of the binary, or its error}."""
    lines = []
    for c in cases:
        for b in OURS:
            lines.append(f"{c['name']} {c['dt']} {c['b']} {c['sq']} {c['skv']} {c['hq']} {c['hkv']} {c['d']} "
                         f"{int(c['causal'])} {b}")
    runs = {}
    for _ in range(rounds):
        res = subprocess.run([binary], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
        for line in res.stdout.splitlines():
            r = json.loads(line)
            runs.setdefault((r["name"], r["backend"]), []).append(r.get("ms", r.get("error")))
    return {key: median_or_error(v) for key, v in runs.items()}


def median_or_error(values):
    """The median of the float results; the first error if there is none."""
    ok = sorted(v for v in values if isinstance(v, float))
    return ok[len(ok) // 2] if ok else next((v for v in values if not isinstance(v, float)), "missing")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attend-bench", help="attend_gpu_bench binary (when the Python package is unavailable)")
    ap.add_argument("--markdown", help="write the table as Markdown here")
    ap.add_argument("--quick", action="store_true", help="only the first shape of each kind")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of timing per shape (median taken)")
    ap.add_argument("--only", metavar="REGEX", help="only the shapes whose name matches (re.search)")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    cases = shapes()
    if args.quick:
        cases = cases[:2] + cases[-2:]
    if args.only:
        try:
            pattern = re.compile(args.only)
        except re.error as e:
            ap.error(f"--only: {e}")
        cases = [c for c in cases if pattern.search(c["name"])]
        if not cases:
            ap.error(f"--only {args.only!r} matches no shape")
    dev = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    attend = attend_in_process()
    how = "attend Python package, in-process" if attend else f"C++ {args.attend_bench} (same shapes, same run)"
    ours = {} if attend else time_ours_binary(args.attend_bench, cases, args.rounds)
    cols = OURS + list(TORCH_BACKENDS)
    # A shape and its causal twin share their tensors and their rounds.
    groups = {}
    for c in cases:
        groups.setdefault(c["name"].replace("-causal", ""), []).append(c)
    rows = []
    for group in groups.values():
        qkv = make_inputs(group[0])
        runs = {(c["name"], b): [] for c in group for b in cols}
        for _ in range(args.rounds):
            for c in group:
                for b in cols:
                    try:
                        if b in TORCH_BACKENDS:
                            t = time_torch(c, TORCH_BACKENDS[b], qkv)
                        else:
                            t = time_ours_in_process(attend, c, b, qkv) if attend else ours.get((c["name"], b), "missing")
                    except Exception as e:  # noqa: BLE001
                        t = str(e).splitlines()[0][:80]
                    runs[(c["name"], b)].append(t)
        del qkv
        torch.cuda.empty_cache()
        for c in group:
            ms = {b: median_or_error(runs[(c["name"], b)]) for b in cols}
            rows.append((c, ms))
            print(c["name"], {k: (round(v, 4) if isinstance(v, float) else v) for k, v in ms.items()}, flush=True)

    def cell(c, ms, b):
        v = ms.get(b)
        if not isinstance(v, float):
            return "n/a"
        if c.get("decode"):
            kv_bytes = 2 * c["b"] * c["skv"] * c["hkv"] * c["d"] * 2
            return f"{kv_bytes / (v * 1e-3) / 1e12:.2f} TB/s ({kv_bytes / (v * 1e-3) / bw:.0%} of copy)"
        return f"{nominal_flops(c) / (v * 1e-3) / 1e12:.0f}"

    def ratio(ms, b):
        v, ref = ms.get(b), ms.get("torch_flash")
        return f"{ref / v:.2f}" if isinstance(v, float) and isinstance(ref, float) else "n/a"

    head = ["shape"] + cols + ["flash_cuda / torch_flash", "cudnn / torch_cudnn"]
    lines = [f"Device: {dev}; measured copy bandwidth {bw / 1e12:.2f} TB/s (read + write). "
             f"Date: {datetime.date.today()}. torch {torch.__version__}. attend timed via {how}. "
             + (f"Median of {args.rounds} interleaved rounds per shape." if attend else
                f"Medians of {args.rounds} runs of the binary and of {args.rounds} rounds of PyTorch's backends."),
             "", "TFLOP/s (4·B·H·Sq·Skv·D, halved for causal); decode rows: K+V bytes read per second.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c, ms in rows:
        cud = ms.get("cudnn"), ms.get("torch_cudnn")
        cud_ratio = f"{cud[1] / cud[0]:.2f}" if all(isinstance(x, float) for x in cud) else "n/a"
        lines.append("| " + " | ".join([c["name"]] + [cell(c, ms, b) for b in cols] + [ratio(ms, "flash_cuda"), cud_ratio]) + " |")
    # causal / non-causal of flash_cuda at the same shape
    lines.append("")
    for c, ms in rows:
        if c["causal"] and not c.get("decode") and c["hq"] == c["hkv"]:
            base = next((m for cc, m in rows if cc["name"] == c["name"].replace("-causal", "")), None)
            if base and isinstance(ms.get("flash_cuda"), float) and isinstance(base.get("flash_cuda"), float):
                r = (nominal_flops(c) / ms["flash_cuda"]) / (nominal_flops(dict(c, causal=False)) / base["flash_cuda"])
                lines.append(f"- flash_cuda causal/non-causal TFLOP/s at {c['name']}: {r:.2f}")
    emit(lines, args.markdown)


def emit(lines, markdown=None):
    """Prints the table's lines, and writes them to `markdown` when given."""
    text = "\n".join(lines)
    print(text)
    if markdown:
        with open(markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
