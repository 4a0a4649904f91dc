"""bench/gpu_varlen.py, bench/gpu_masks.py, bench/gpu_dims.py, bench/gpu_cross.py and bench/gpu_host.py without a GPU, as
test_bench_gpu.py does for gpu.py: each script runs against stand-in `torch` and `attend` modules (and a stand-in for its child
process with the Hopper kernel off), so a broken harness fails here instead of in a device call.
Checks which calls each column makes, the interleaved rounds, the FLOP counts behind the table's
TFLOP/s, and that errors become table cells instead of aborting the run."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
from test_bench_gpu import _Tensor, _stand_in_torch

BENCH = Path(__file__).resolve().parents[2] / "bench"


class _Array(_Tensor):
    """A stand-in tensor with the shape-only operations the two scripts use."""

    def __init__(self, *shape):
        self.shape = shape

    def __getitem__(self, _):
        return self

    def __setitem__(self, *_):
        pass

    def __sub__(self, _):
        return self

    def view(self, *shape):
        return _Array(*shape)

    def expand(self, *shape):
        return _Array(*shape)

    def contiguous(self):
        return self

    def to(self, *_):
        return self


def _modules(calls, reject=()):
    mods = _stand_in_torch(calls)
    torch = mods["torch"]
    torch.int32, torch.int64, torch.bool = "i32", "i64", "bool"
    torch.randn = lambda *shape, **_: _Array(*shape)
    torch.ones = lambda *shape, **_: _Array(*shape)
    torch.tensor = lambda values, **_: _Array(len(values))
    torch.empty_like = lambda x: _Array(*getattr(x, "shape", ()))
    torch.nested = types.SimpleNamespace(nested_tensor_from_jagged=lambda t, offsets: _Array())
    sdpa = mods["torch.nn.functional"].scaled_dot_product_attention

    def sdpa_with_mask(q, k, v, is_causal=False, enable_gqa=False, attn_mask=None):
        sdpa(q, k, v, is_causal=is_causal or attn_mask is not None)

    mods["torch.nn.functional"].scaled_dot_product_attention = sdpa_with_mask
    attend = types.ModuleType("attend")

    def attention(q, k, v, out=None, backend=None, causal=False, mask=None, cu_seqlens_q=None, cu_seqlens_k=None,
                  max_seqlen_q=None, max_seqlen_k=None):
        kind = "varlen" if cu_seqlens_q is not None else "mask" if mask is not None else "dense"
        calls.append((backend, kind))
        if (backend, kind) in reject:
            raise ValueError(f"{backend} rejects {kind}\nsecond line")

    attend.attention = attention
    mods["attend"] = attend
    return mods


def _run(monkeypatch, tmp_path, script, mods, mma_ms):
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    for name in ("gpu", "gpu_varlen", "gpu_masks", "gpu_dims", "gpu_cross"):  # imported afresh, with the stand-ins
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location(script, BENCH / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # The child run with the Hopper kernel off: gpu_varlen's, which its run_table calls for the others.
    monkeypatch.setattr(sys.modules.get("gpu_varlen", module), "without_hopper_kernel", lambda _file, _rounds: mma_ms)
    md = tmp_path / "table.md"
    monkeypatch.setattr(sys, "argv", [script, "--rounds", "2", "--markdown", str(md)])
    module.main()
    return module, md.read_text()


def _rows(table):
    return {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in table.splitlines() if line.startswith("| bf16")}


def test_varlen_columns_rounds_and_flops(monkeypatch, tmp_path):
    calls = []
    mods = _modules(calls, reject={("flash_cuda", "dense")})
    mma = {"bf16-varlen-d64": 2.0}
    gpu_varlen, table = _run(monkeypatch, tmp_path, "gpu_varlen", mods, mma)
    lens = gpu_varlen.lengths()
    assert sum(lens) == gpu_varlen.TOKENS and all(1 <= n <= 4096 for n in lens)
    # Each round: flash_cuda varlen, PyTorch's jagged flash, flash_cuda dense on the same tokens.
    order = [c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c]
    one_round = [("flash_cuda", "varlen"), ("torch_flash", False), ("flash_cuda", "dense")]
    assert order[:6] == one_round * 2
    rows = _rows(table)
    assert set(rows) == {c["name"] for c in gpu_varlen.shapes()}
    # The stand-in's events say 50 ms per call: TFLOP/s = the shape's FLOPs / 50 ms.
    c = gpu_varlen.shapes()[0]
    assert rows[c["name"]][1] == f"{gpu_varlen.flops(c, lens) / 50e-3 / 1e12:.0f}"
    assert rows[c["name"]][3] == f"{gpu_varlen.flops(c, lens) / 2e-3 / 1e12:.0f}"  # the child's 2 ms
    assert rows[c["name"]][4].startswith("error: flash_cuda rejects dense")  # an error is a cell, not a crash
    causal = next(s for s in gpu_varlen.shapes() if s["causal"])
    assert gpu_varlen.flops(causal, lens) * 2 == gpu_varlen.flops(dict(causal, causal=False), lens)
    assert rows[causal["name"]][3] == "n/a"  # no child result for that shape


def test_masks_columns_and_flops(monkeypatch, tmp_path):
    calls = []
    mods = _modules(calls, reject={("flash_cuda", "dense")})
    gpu_masks, table = _run(monkeypatch, tmp_path, "gpu_masks", mods, {})
    order = [c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c]
    one_round = [("flash_cuda", "mask"), ("torch_cudnn", True), ("torch_efficient", True), ("flash_cuda", "dense")]
    assert order[:8] == one_round * 2
    rows = _rows(table)
    assert set(rows) == {c["name"] for c in gpu_masks.shapes()}
    # Key masks [B, 1, 1, S]; the row shapes pass the same mask materialised [B, 1, S, S].
    B, S = gpu_masks.B, gpu_masks.S
    assert {c["name"]: gpu_masks.inputs(c)[3].shape for c in gpu_masks.shapes()} == {
        c["name"]: (B, 1, S, S) if c["rows"] else (B, 1, 1, S) for c in gpu_masks.shapes()}
    assert sum(c["rows"] for c in gpu_masks.shapes()) == 2
    c = gpu_masks.shapes()[1]
    flops = 4.0 * gpu_masks.B * c["h"] * gpu_masks.S ** 2 * c["d"]
    assert rows[c["name"]][1] == f"{flops / 50e-3 / 1e12:.0f}"
    assert rows[c["name"]][-2] == "1.00"  # flash_cuda / torch_cudnn at equal stand-in times
    assert rows[c["name"]][5].startswith("error: flash_cuda rejects dense")


def test_dims_columns_and_flops(monkeypatch, tmp_path):
    calls = []
    mods = _modules(calls)
    mma = {"bf16-d80-s4096": 25.0}
    gpu_dims, table = _run(monkeypatch, tmp_path, "gpu_dims", mods, mma)
    order = [c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c]
    one_round = [("flash_cuda", "dense"), ("torch_flash", False), ("torch_cudnn", False), ("torch_efficient", False)]
    assert order[:8] == one_round * 2
    rows = _rows(table)
    assert set(rows) == {c["name"] for c in gpu_dims.shapes()}
    assert {c["d"] for c in gpu_dims.shapes()} == {40, 72, 80, 96}  # none the Hopper kernel has a width for
    # FLOPs with the call's own head dim, halved for causal.
    B, S, H = gpu_dims.B, gpu_dims.S, gpu_dims.H
    flops = 4.0 * B * H * S * S * 80
    assert rows["bf16-d80-s4096"][1] == f"{flops / 50e-3 / 1e12:.0f}"
    assert rows["bf16-d80-s4096"][5] == f"{flops / 25e-3 / 1e12:.0f}"  # the child's mma.sync time
    assert rows["bf16-d80-s4096-causal"][1] == f"{flops / 2 / 50e-3 / 1e12:.0f}"
    assert rows["bf16-d80-s4096"][-2] == "1.00"  # flash_cuda / torch_flash at equal stand-in times
    assert rows["bf16-d80-s4096"][-1].rstrip(" |") == "0.50"  # flash_cuda / mma_sync


def test_cross_columns_masks_and_flops(monkeypatch, tmp_path):
    calls = []
    mods = _modules(calls)
    mma = {"bf16-wan-cross-d128": 25.0}
    gpu_cross, table = _run(monkeypatch, tmp_path, "gpu_cross", mods, mma)
    rows = _rows(table)
    assert set(rows) == {c["name"] for c in gpu_cross.shapes()}
    # Unmasked shapes: flash_cuda and the three PyTorch backends, without a mask; the masked one
    # passes its key mask to flash_cuda and to the two PyTorch backends that take one.
    order = [c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c]
    one_round = [("flash_cuda", "dense"), ("torch_flash", False), ("torch_cudnn", False), ("torch_efficient", False)]
    assert order[:8] == one_round * 2
    assert ("flash_cuda", "mask") in calls and ("torch_cudnn", True) in calls
    masked = next(c for c in gpu_cross.shapes() if c["mask"])
    assert gpu_cross.inputs(masked)[3].shape == (masked["b"], 1, 1, masked["skv"])
    assert all(gpu_cross.inputs(c)[3] is None for c in gpu_cross.shapes() if not c["mask"])
    assert rows[masked["name"]][2] == "n/a"  # PyTorch's flash backend takes no mask
    # Short text sequences: the FLOPs count Sq x Skv, not Sq^2.
    wan = next(c for c in gpu_cross.shapes() if c["name"] == "bf16-wan-cross-d128")
    flops = 4.0 * 1 * 12 * 32760 * 512 * 128
    assert gpu_cross.flops(wan) == flops
    assert rows[wan["name"]][1] == f"{flops / 50e-3 / 1e12:.0f}"
    assert rows[wan["name"]][5] == f"{flops / 25e-3 / 1e12:.0f}"  # the child's mma.sync time
    assert rows[wan["name"]][-2] == "1.00"  # flash_cuda / torch_cudnn at equal stand-in times


def test_child_runs_print_one_json_line(monkeypatch, tmp_path, capsys):
    """The --child run each script starts with the Hopper kernel off: {shape: median ms} as the
    last line of its output, which without_hopper_kernel parses."""
    import json

    for script in ("gpu_varlen", "gpu_masks", "gpu_dims", "gpu_cross"):
        calls = []
        mods = _modules(calls)
        module, _ = _run(monkeypatch, tmp_path, script, mods, {})
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", [script, "--child", "--rounds", "2"])
        calls.clear()
        module.main()
        res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert res == {c["name"]: 50.0 for c in module.shapes()}, script
        assert {backend for backend, _ in calls} == {"flash_cuda"}, script  # only flash_cuda in the child


def test_host_times_every_way_with_drained_queues(monkeypatch, tmp_path):
    """bench/gpu_host.py: every way of every shape timed in each round (interleaved), the queued
    GPU work drained after each batch of DRAIN calls (outside the timed spans), one table row per
    (shape, way), and the cProfile file written; then the end-to-end table: eager calls and replays
    of graphs that each captured DRAIN calls, every way in each round. Every stand-in call appends
    to `calls` once."""
    calls = []
    mods = _modules(calls, reject=[("cudnn", "dense")])  # its graph: n/a in the table, the run goes on
    torch = mods["torch"]
    drains = []
    torch.cuda.synchronize = lambda: drains.append(len(calls))

    class Stream:
        def wait_stream(self, other):
            pass

    captures = []

    class CUDAGraph:
        def replay(self):
            calls.append(("replay", None))

    @contextlib.contextmanager
    def graph(g):
        start = len(calls)
        yield
        captures.append(len(calls) - start)

    torch.cuda.Stream, torch.cuda.CUDAGraph, torch.cuda.graph = Stream, CUDAGraph, graph
    torch.cuda.stream = lambda stream: contextlib.nullcontext()
    torch.cuda.current_stream = lambda device=None: calls.append(("stream", None)) or Stream()
    torch.empty_like = lambda x: calls.append(("empty_like", None)) or _Array(*x.shape)
    torch.Generator = type("Generator", (), {"__init__": lambda self, device=None: None,
                                             "manual_seed": lambda self, _: self})
    monkeypatch.setattr(_Array, "device", "cuda", raising=False)
    monkeypatch.setattr(_Array, "__dlpack__", lambda self: calls.append(("dlpack", None)), raising=False)
    attend = mods["attend"]
    attend.__version__ = "stand-in"
    api = types.ModuleType("attend._api")
    api._prepare = lambda q, k, v, **kw: calls.append(("prepare", None)) or ((q, k, v), {"backend": kw["backend"]}, None)
    api._cuda_stream = lambda q: calls.append(("stream", None)) or 0
    ext = types.ModuleType("attend._attend")
    ext.attention = lambda *args, **kw: calls.append((kw["backend"], "extension"))
    ext.describe = lambda x, name: calls.append(("describe", name))
    ext.version = lambda: calls.append(("version", None))
    op = types.ModuleType("attend.torch")
    op.attention = lambda q, k, v, backend="auto": calls.append((backend, "op"))
    attend._api, attend._attend, attend.torch = api, ext, op
    mods.update({"attend._api": api, "attend._attend": ext, "attend.torch": op})
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location("gpu_host", BENCH / "gpu_host.py")
    gpu_host = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_host)
    md, prof = tmp_path / "host.md", tmp_path / "prof.txt"
    n, rounds = 2 * gpu_host.DRAIN, 2
    monkeypatch.setattr(sys, "argv", ["gpu_host", "--rounds", str(rounds), "--calls", str(n), "--markdown", str(md),
                                      "--profile", str(prof)])
    gpu_host.main()
    ways = list(gpu_host.ways(*gpu_host.SHAPES[0]))
    shapes = [s[0] for s in gpu_host.SHAPES]
    host_table, wall_table = md.read_text().split("End to end")

    def rows(table):
        return [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]

    assert [(r[0].lstrip("| "), r[1]) for r in rows(host_table)] == [(s, w) for s in shapes for w in ways]
    assert all(float(r[2].rstrip(" |")) >= 0 for r in rows(host_table) + rows(wall_table) if "cudnn" not in r[1])
    # Each way: DRAIN warm-up calls, then --calls calls in each round, per shape. SDPA default and
    # flash also run in the end-to-end table, per shape: one warm-up and DRAIN captured calls for
    # each one's graph, which each round replays --calls / DRAIN times, and SDPA default's
    # --calls eager calls per round.
    per_way = len(shapes) * (gpu_host.DRAIN + rounds * n)
    per_graph = len(shapes) * (1 + gpu_host.DRAIN)
    assert calls.count(("torch_flash", False)) == per_way + per_graph
    assert calls.count(("default", False)) == per_way + per_graph + len(shapes) * rounds * n
    graphs = 5  # attend's flash_cuda one, SDPA's four (attend's cudnn one rejects the call)
    assert captures == [gpu_host.DRAIN] * (graphs * len(shapes))
    assert calls.count(("replay", None)) == graphs * len(shapes) * rounds * (n // gpu_host.DRAIN)
    wall_ways = list(gpu_host.wall_ways(*gpu_host.SHAPES[0]))  # (after the counts: it captures graphs too)
    assert sum("CUDA graph" in w for w in wall_ways) == graphs + 1
    assert [r[2].rstrip(" |") for r in rows(wall_table) if "cudnn" in r[1]] == ["n/a"] * len(shapes)
    assert [(r[0].lstrip("| "), r[1]) for r in rows(wall_table)] == [(s, w) for s in shapes for w in wall_ways]
    assert calls.count(("describe", "q")) == per_way
    assert calls.count(("flash_cuda", "op")) == per_way
    # The timed calls come in batches of exactly DRAIN between two drains.
    gaps = [b - a for a, b in zip(drains, drains[1:])]
    assert gaps.count(gpu_host.DRAIN) == len(shapes) * rounds * len(ways) * n // gpu_host.DRAIN
    assert "function calls" in prof.read_text()  # the cProfile of the tiny shape's calls
    monkeypatch.setattr(sys, "argv", ["gpu_host", "--calls", "10"])
    with pytest.raises(SystemExit):
        gpu_host.main()
