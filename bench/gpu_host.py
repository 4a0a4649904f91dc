#!/usr/bin/env python3
"""The host's cost of one attention call from Python on torch CUDA tensors: attend against
PyTorch SDPA's flash, cuDNN and efficient backends, in one process on the same tensors.

Short calls (cross-attention over 77 text tokens; small images) take 20-35 µs on the GPU, so
what the host spends per call decides how fast they run from Python. Each line times one way to
make the call, on the host only: `--calls` calls in a row, with the queued GPU work drained
every 64 calls outside the timed spans (a full launch queue would stall the host and time the
GPU instead). Median of `--rounds` rounds, the ways interleaved within each round.

Besides the whole call, the steps of attend's own path are timed alone (its Python layer, the
stream query, the extension call with prepared arguments), with the C++ floor from
bench/host_bench.cpp (attend_host_bench) to compare. `--profile FILE` writes a cProfile of
attend.attention calls.

A second table times the same short calls end to end (host and GPU: calls back to back,
synchronised at the end), made eagerly and replayed from a CUDA graph of DRAIN calls captured
with torch.cuda.graph (Note [Workspace under capture] in src/core/attention.cpp), for attend and
for SDPA: how much of a short call's time a graph gives back. A replay costs the host far less
than the GPU's work, so the graphs' rows are the GPU's time per call, each backend's kernels
(and launch gaps) compared without the host.

    python3 bench/gpu_host.py [--rounds 5] [--calls 2000] [--markdown out.md] [--profile prof.txt]
"""
import argparse
import cProfile
import datetime
import io
import pstats
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F

import attend
import attend.torch as attend_torch
from attend import _api, _attend

DRAIN = 64  # why: well below the launch queue's depth (about 1000 entries)

SHAPES = [  # (name, B, Sq, Skv, H, D), bf16, [B, S, H, D]
    ("tiny", 1, 128, 128, 1, 64),
    ("sd15-cross", 2, 4096, 77, 8, 40),
    ("sdxl-cross", 2, 4096, 77, 10, 64),
]


def host_us(fn, calls):
    """Mean host time of one call of fn, in µs (GPU work drained outside the timed spans)."""
    total = 0.0
    done = 0
    while done < calls:
        t0 = time.perf_counter()
        for _ in range(DRAIN):
            fn()
        total += time.perf_counter() - t0
        torch.cuda.synchronize()
        done += DRAIN
    return total / done * 1e6


def ways(name, b, sq, skv, h, d):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, sq, h, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(b, skv, h, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    out = torch.empty_like(q)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # SDPA's [B, H, S, D] views of the same memory
    prepared = _api._prepare(q, k, v, backend="flash_cuda", layout="bshd", scale=None, causal=False,
                             causal_align="top_left", window=None, mask=None, softcap=0.0, return_lse=False,
                             cu_seqlens_q=None, cu_seqlens_k=None, out=out, max_seqlen_q=None, max_seqlen_k=None)
    args, kwargs, _ = prepared
    stream = _api._cuda_stream(q)

    def sdpa(backend):
        def run():
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(qt, kt, vt)
        return run

    def sdpa_no_context():  # the context manager's own cost left out (it is set around the loop)
        F.scaled_dot_product_attention(qt, kt, vt)

    return {
        "attend.attention(out=)": lambda: attend.attention(q, k, v, out=out, backend="flash_cuda"),
        "attend.attention": lambda: attend.attention(q, k, v, backend="flash_cuda"),
        "attend.attention, auto": lambda: attend.attention(q, k, v),
        "attend.torch.attention (custom op)": lambda: attend_torch.attention(q, k, v, backend="flash_cuda"),
        "torch SDPA flash (in sdpa_kernel)": sdpa(SDPBackend.FLASH_ATTENTION),
        "torch SDPA cuDNN (in sdpa_kernel)": sdpa(SDPBackend.CUDNN_ATTENTION),
        "torch SDPA efficient (in sdpa_kernel)": sdpa(SDPBackend.EFFICIENT_ATTENTION),
        "torch SDPA default": sdpa_no_context,
        "step: attend _prepare (Python layer)": lambda: _api._prepare(
            q, k, v, backend="flash_cuda", layout="bshd", scale=None, causal=False, causal_align="top_left",
            window=None, mask=None, softcap=0.0, return_lse=False, cu_seqlens_q=None, cu_seqlens_k=None, out=out,
            max_seqlen_q=None, max_seqlen_k=None),
        "step: attend _cuda_stream": lambda: _api._cuda_stream(q),
        "step: torch.cuda.current_stream": lambda: torch.cuda.current_stream(q.device),
        "step: q.__dlpack__()": lambda: q.__dlpack__(),
        "step: torch.empty_like(q)": lambda: torch.empty_like(q),
        "step: extension call, prepared": lambda: _attend.attention(*args, **kwargs, cuda_stream=stream, forward=[]),
        "step: extension reads one tensor (_attend.describe)": lambda: _attend.describe(q, "q"),
        "step: an extension call that does nothing (_attend.version)": _attend.version,
    }


def wall_us(fn, per_call, calls):
    """Mean wall time of one call in µs, host and GPU: fn (per_call calls) repeated back to back
    for about `calls` calls, synchronised before and after."""
    repeats = max(1, calls // per_call)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / (repeats * per_call) * 1e6


def graphed(fn):
    """A CUDA graph of DRAIN calls of fn (warmed up on a side stream first, as torch's recipe asks),
    and its replay; None where the call fails (a backend that rejects the shape)."""
    try:
        return _graphed(fn)
    except Exception as e:  # noqa: BLE001 (the table says n/a, the run goes on)
        print(f"no graph: {str(e).splitlines()[0]}", flush=True)
        return None


def _graphed(fn):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(DRAIN):
            fn()
    return graph.replay


def wall_ways(name, b, sq, skv, h, d):
    """{way: (fn, calls fn makes)}: eager calls and replays of a graph of DRAIN calls."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, sq, h, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(b, skv, h, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    out = torch.empty_like(q)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))

    def attend_call(backend="flash_cuda"):
        return lambda: attend.attention(q, k, v, out=out, backend=backend)

    def sdpa_call(backend=None):
        def run():
            if backend is None:
                F.scaled_dot_product_attention(qt, kt, vt)
            else:
                with sdpa_kernel(backend):
                    F.scaled_dot_product_attention(qt, kt, vt)
        return run

    graph = f"CUDA graph of {DRAIN} calls"
    return {
        "attend.attention(out=), eager": (attend_call(), 1),
        f"attend.attention(out=), {graph}": (graphed(attend_call()), DRAIN),
        f"attend.attention(out=, backend='cudnn'), {graph}": (graphed(attend_call("cudnn")), DRAIN),
        "torch SDPA default, eager": (sdpa_call(), 1),
        f"torch SDPA default, {graph}": (graphed(sdpa_call()), DRAIN),
        f"torch SDPA flash, {graph}": (graphed(sdpa_call(SDPBackend.FLASH_ATTENTION)), DRAIN),
        f"torch SDPA cuDNN, {graph}": (graphed(sdpa_call(SDPBackend.CUDNN_ATTENTION)), DRAIN),
        f"torch SDPA efficient, {graph}": (graphed(sdpa_call(SDPBackend.EFFICIENT_ATTENTION)), DRAIN),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--markdown", help="also write the table to this file")
    ap.add_argument("--profile", help="write a cProfile of attend.attention(out=) calls to this file")
    a = ap.parse_args()
    if a.rounds < 1 or a.calls < DRAIN:
        ap.error(f"--rounds must be >= 1 and --calls >= {DRAIN}")
    lines = [f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}; attend {attend.__version__}; "
             f"{datetime.date.today()}; µs per call on the host, median of {a.rounds} rounds of {a.calls} calls", "",
             "| shape | way | µs per call |", "|---|---|---|"]
    for shape in SHAPES:
        fns = ways(*shape)
        for fn in fns.values():  # warm-up: workspaces, graph caches, torch's dispatch caches
            for _ in range(DRAIN):
                fn()
        torch.cuda.synchronize()
        times = {w: [] for w in fns}
        for _ in range(a.rounds):
            for w, fn in fns.items():
                times[w].append(host_us(fn, a.calls))
        for w in fns:
            lines.append(f"| {shape[0]} | {w} | {statistics.median(times[w]):.1f} |")
            print(lines[-1], flush=True)
        if a.profile and shape[0] == "tiny":
            q = torch.randn(1, 128, 1, 64, device="cuda", dtype=torch.bfloat16)
            out = torch.empty_like(q)
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(a.calls):
                attend.attention(q, q, q, out=out, backend="flash_cuda")
            prof.disable()
            torch.cuda.synchronize()
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
            with open(a.profile, "w") as f:
                f.write(text.getvalue())
    lines += ["", f"End to end (host and GPU), µs per call, median of {a.rounds} rounds of {a.calls} calls:", "",
              "| shape | way | µs per call |", "|---|---|---|"]
    for shape in SHAPES:
        fns = wall_ways(*shape)
        times = {w: [] for w in fns}
        for _ in range(a.rounds):
            for w, (fn, per_call) in fns.items():
                if fn is not None:
                    times[w].append(wall_us(fn, per_call, a.calls))
        for w in fns:
            cell = f"{statistics.median(times[w]):.1f}" if times[w] else "n/a"
            lines.append(f"| {shape[0]} | {w} | {cell} |")
            print(lines[-1], flush=True)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
