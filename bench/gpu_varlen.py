#!/usr/bin/env python3
"""Varlen GPU benchmark: flash_cuda on packed sequences of mixed lengths, against PyTorch SDPA on
the same sequences as jagged nested tensors (its flash backend), against flash_cuda with its Hopper
kernel turned off (ATTEND_FLASH_CUDA_SM90=0: the mma.sync kernel, in a child process on the same
shapes), and against flash_cuda on a dense batch of the same number of tokens (an upper bound:
no sequence boundaries).

Sequences: lengths drawn uniformly from [128, 4096] (fixed seed) until 32768 tokens, H*D = 2048,
bf16, head dims 64 and 128, causal and not. TFLOP/s = sum over sequences of 4*H*Sq*Skv*D (halved
for causal) / time. Timed with bench/gpu.py's method (CUDA events, back-to-back batches, median),
in --rounds interleaved rounds. Needs torch with CUDA and the attend package built with CUDA.

    python3 bench/gpu_varlen.py [--rounds 3] [--markdown out.md]
"""
import argparse
import datetime
import json
import os
import random
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu import emit, median_or_error, time_cuda  # noqa: E402

TOKENS = 32768


def lengths(seed=0):
    rng, out = random.Random(seed), []
    while sum(out) < TOKENS:
        out.append(min(rng.randint(128, 4096), TOKENS - sum(out)))
    return out


def shapes():
    return [dict(name=f"bf16-varlen-d{d}{'-causal' if causal else ''}", d=d, h=2048 // d, causal=causal)
            for d in (64, 128) for causal in (False, True)]


def flops(c, lens):
    f = sum(4.0 * c["h"] * n * n * c["d"] for n in lens)
    return f / 2 if c["causal"] else f


def inputs(c, lens):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(sum(lens), c["h"], c["d"], device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    cu = torch.tensor([0] + [sum(lens[:i + 1]) for i in range(len(lens))], device="cuda", dtype=torch.int32)
    return q, k, v, cu


def time_flash_cuda(attend, c, lens, data, dense=False):
    q, k, v, cu = data
    out = torch.empty_like(q)
    if dense:  # the same tokens as one dense batch of equal-length sequences
        b = len(lens)
        s = TOKENS // b
        qd, kd, vd, od = (t[: b * s].view(b, s, c["h"], c["d"]) for t in (q, k, v, out))
        return time_cuda(lambda: attend.attention(qd, kd, vd, out=od, backend="flash_cuda", causal=c["causal"]))
    m = max(lens)
    return time_cuda(lambda: attend.attention(q, k, v, out=out, backend="flash_cuda", causal=c["causal"],
                                              cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=m, max_seqlen_k=m))


def time_torch_jagged(c, lens, data):
    q, k, v, cu = data
    offsets = cu.to(torch.int64)
    nq, nk, nv = (torch.nested.nested_tensor_from_jagged(t, offsets).transpose(1, 2) for t in (q, k, v))

    def run():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(nq, nk, nv, is_causal=c["causal"])
    run()
    return time_cuda(run)


def print_child(shapes, time_of, rounds):
    """The child run's output (started by without_hopper_kernel, with ATTEND_FLASH_CUDA_SM90=0):
    {shape: median ms of time_of(shape) over `rounds` runs}, as one JSON line."""
    print(json.dumps({c["name"]: median_or_error([time_of(c) for _ in range(rounds)]) for c in shapes}))


def child(rounds):
    """Prints {shape: ms} of flash_cuda varlen (run with ATTEND_FLASH_CUDA_SM90=0 by the parent)."""
    import attend
    lens = lengths()
    data = {}

    def time_of(c):
        if c["name"] not in data:
            data[c["name"]] = inputs(c, lens)
        return time_flash_cuda(attend, c, lens, data[c["name"]])
    print_child(shapes(), time_of, rounds)


def without_hopper_kernel(script, rounds):
    """{shape: ms} from `script --child` run with flash_cuda's Hopper kernel off (the mma.sync kernel);
    {} when it fails (its stderr is printed)."""
    env = dict(os.environ, ATTEND_FLASH_CUDA_SM90="0")
    res = subprocess.run([sys.executable, os.path.abspath(script), "--child", "--rounds", str(rounds)],
                         env=env, capture_output=True, text=True, timeout=1200)
    if res.returncode != 0:
        print(res.stderr[-2000:], file=sys.stderr)
        return {}
    return json.loads(res.stdout.strip().splitlines()[-1])


def parse_args():
    """--rounds, --markdown, and --child (the run without_hopper_kernel starts)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--markdown")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    return args


def main():
    args = parse_args()
    if args.child:
        return child(args.rounds)
    import attend
    lens = lengths()
    mma = without_hopper_kernel(__file__, args.rounds)
    cols = ["flash_cuda", "torch_flash_jagged", "flash_cuda_mma_sync", "flash_cuda_dense_same_tokens"]

    def columns(c):
        data = inputs(c, lens)
        return {"flash_cuda": lambda: time_flash_cuda(attend, c, lens, data),
                "torch_flash_jagged": lambda: time_torch_jagged(c, lens, data),
                "flash_cuda_dense_same_tokens": lambda: time_flash_cuda(attend, c, lens, data, dense=True)}
    rows = measure(shapes(), columns, mma, args.rounds)
    b = len(lens)

    def flops_of(c, col):
        if col == "flash_cuda_dense_same_tokens":
            return 4.0 * c["h"] * b * (TOKENS // b) ** 2 * c["d"] / (2 if c["causal"] else 1)
        return flops(c, lens)

    about = f"{len(lens)} sequences, {TOKENS} tokens, lengths {min(lens)}-{max(lens)} (bench/gpu_varlen.py, seed 0)."
    write_table(rows, cols, "torch_flash_jagged", flops_of, intro(about, args.rounds),
                "TFLOP/s (sum over sequences of 4·H·S²·D, halved for causal; the dense column: its own B·S²).",
                args.markdown)


def intro(about, rounds):
    """The line above each table of these benchmarks: device, date, torch, `about` the shapes, and
    how the columns were timed."""
    return (f"Device: {torch.cuda.get_device_name()}. Date: {datetime.date.today()}. torch {torch.__version__}. "
            f"{about} Median of {rounds} interleaved rounds; the mma.sync column from a child process "
            "(ATTEND_FLASH_CUDA_SM90=0) in the same run.")


def run_table(script, shapes, child_time_of, columns_of, cols, peer, flops_of, about, units):
    """The main of gpu_masks.py, gpu_dims.py and gpu_cross.py: as the child run (--child), print
    child_time_of(shape) per shape; otherwise start that child with the Hopper kernel off, time
    columns_of(shape) in interleaved rounds and write the table (write_table's arguments)."""
    args = parse_args()
    if args.child:
        return print_child(shapes, child_time_of, args.rounds)
    mma = without_hopper_kernel(script, args.rounds)
    rows = measure(shapes, columns_of, mma, args.rounds)
    write_table(rows, cols, peer, flops_of, intro(about, args.rounds), units, args.markdown)


def measure(shapes, columns_of, mma, rounds):
    """[(shape, {column: median ms or error})]: each shape's columns (columns_of(shape): {column:
    fn}) timed in interleaved rounds, plus its mma.sync time from the child run (`mma`)."""
    rows = []
    for c in shapes:
        ms = time_rounds(columns_of(c), rounds)
        ms["flash_cuda_mma_sync"] = mma.get(c["name"], "n/a")
        rows.append((c, ms))
        print(c["name"], ms, flush=True)
    return rows


def time_rounds(fns, rounds):
    """{column: median ms (or the first error)} of fns timed one after another in each of `rounds`
    rounds."""
    runs = {b: [] for b in fns}
    for _ in range(rounds):
        for b, fn in fns.items():
            try:
                runs[b].append(fn())
            except Exception as e:  # noqa: BLE001
                runs[b].append(str(e).splitlines()[0][:60])
    return {b: median_or_error(v) for b, v in runs.items()}


def write_table(rows, cols, peer, flops_of, intro, units, markdown):
    """The table of this benchmark and of gpu_masks.py: TFLOP/s of each column (flops_of(shape,
    column) / time), then flash_cuda's speed over `peer` and over its mma.sync kernel."""
    def cell(c, ms, col):
        v = ms.get(col)
        if not isinstance(v, float):
            return "n/a" if v in (None, "n/a") else f"error: {v}"
        return f"{flops_of(c, col) / (v * 1e-3) / 1e12:.0f}"

    def ratio(ms, col):
        a, r = ms.get("flash_cuda"), ms.get(col)
        return f"{r / a:.2f}" if isinstance(a, float) and isinstance(r, float) else "n/a"

    head = ["shape"] + cols + [f"flash_cuda / {peer}", "flash_cuda / mma_sync"]
    lines = [intro, "", units, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c, ms in rows:
        lines.append("| " + " | ".join([c["name"]] + [cell(c, ms, col) for col in cols] +
                                       [ratio(ms, peer), ratio(ms, "flash_cuda_mma_sync")]) + " |")
    emit(lines, markdown)


if __name__ == "__main__":
    main()
