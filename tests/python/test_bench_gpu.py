"""bench/gpu.py's own logic, without a GPU: the script runs against a stand-in `torch` and
`attend` that record which backend each call went to, so a broken harness fails here instead of
in a device call. It checks the interleaved rounds (every backend on a shape and on its causal
twin once per round, rounds one after another), the medians, errors carried into the table as
n/a, and the binary fallback. No timing here means anything: the stand-in's events return
fixed durations."""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import stat
import sys
import types
from pathlib import Path

import pytest

GPU_PY = Path(__file__).resolve().parents[2] / "bench" / "gpu.py"


class _Tensor:
    def transpose(self, *_):
        return self

    def random_(self):
        return self

    def copy_(self, _):
        return self

    def numel(self):
        return 1 << 30


def _stand_in_torch(calls):
    """A module with the names bench/gpu.py uses; SDPA calls append the active backend to calls."""
    torch = types.ModuleType("torch")
    torch.__version__ = "stand-in"
    torch.bfloat16, torch.float16, torch.int16 = "bf16", "f16", "i16"
    torch.empty = lambda *a, **k: _Tensor()
    torch.empty_like = lambda x: _Tensor()
    torch.randn = lambda *a, **k: _Tensor()

    class Generator:
        def __init__(self, device=None):
            pass

        def manual_seed(self, _):
            return self

    class Event:
        def __init__(self, enable_timing=False):
            pass

        def record(self):
            pass

        def synchronize(self):
            pass

        def elapsed_time(self, _):
            return 50.0  # one call per batch (inner = 1), 20 batches

    torch.Generator = Generator
    torch.cuda = types.SimpleNamespace(Event=Event, synchronize=lambda: None, get_device_name=lambda: "stand-in",
                                       empty_cache=lambda: None)
    nn = types.ModuleType("torch.nn")
    functional = types.ModuleType("torch.nn.functional")
    attention = types.ModuleType("torch.nn.attention")

    class SDPBackend(enum.Enum):
        FLASH_ATTENTION = "torch_flash"
        CUDNN_ATTENTION = "torch_cudnn"
        EFFICIENT_ATTENTION = "torch_efficient"

    active = []

    @contextlib.contextmanager
    def sdpa_kernel(backend):
        active.append(backend.value)
        yield
        active.pop()

    def sdpa(q, k, v, is_causal=False, enable_gqa=False):
        calls.append((active[-1] if active else "default", is_causal))  # "default": no backend forced

    functional.scaled_dot_product_attention = sdpa
    attention.SDPBackend, attention.sdpa_kernel = SDPBackend, sdpa_kernel
    nn.functional, nn.attention = functional, attention
    torch.nn = nn
    return {"torch": torch, "torch.nn": nn, "torch.nn.functional": functional, "torch.nn.attention": attention}


def _stand_in_attend(calls, reject=()):
    attend = types.ModuleType("attend")

    def attention(q, k, v, out=None, backend=None, layout=None, causal=False):
        calls.append((backend, causal))
        if (backend, causal) in reject:
            raise ValueError(f"{backend} rejects this call\nsecond line")

    attend.attention = attention
    return attend


def _load(monkeypatch, modules):
    """bench/gpu.py imported with the stand-ins in place of torch and attend (undone after the test)."""
    for name, mod in modules.items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location("attend_bench_gpu", GPU_PY)
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    return gpu


def _run(monkeypatch, tmp_path, modules, argv):
    gpu = _load(monkeypatch, modules)
    md = tmp_path / "table.md"
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--quick", "--markdown", str(md)] + argv)
    gpu.main()
    return gpu, md.read_text()


def _order(calls):
    """The calls with consecutive repeats (warm-up, timed batches) folded into one."""
    out = []
    for c in calls:
        if not out or out[-1] != c:
            out.append(c)
    return out


def test_rounds_interleave_backends_and_causal_twins(monkeypatch, tmp_path):
    calls = []
    modules = _stand_in_torch(calls)
    modules["attend"] = _stand_in_attend(calls, reject={("cudnn", True)})
    gpu, table = _run(monkeypatch, tmp_path, modules, ["--rounds", "3"])
    cols = gpu.OURS + list(gpu.TORCH_BACKENDS)
    # The first group of --quick is bf16-d64-s1024 and its causal twin: each round times every
    # backend on the shape, then on the twin; three rounds.
    one_round = [(b, False) for b in cols] + [(b, True) for b in cols]
    assert _order(calls)[: 3 * len(one_round)] == one_round * 3
    assert "Median of 3 interleaved rounds per shape." in table
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| bf16")}
    assert set(rows) == {"bf16-d64-s1024", "bf16-d64-s1024-causal", "bf16-decode-b8-h32-skv32768",
                         "bf16-gqa-b4-s4096-h32:8-causal"}
    # A backend that rejects the call is n/a in its cell and in its ratio, not a number.
    causal = rows["bf16-d64-s1024-causal"].split(" | ")
    assert causal[2] == "n/a" and causal[-1].rstrip(" |") == "n/a"
    assert "flash_cuda causal/non-causal TFLOP/s at bf16-d64-s1024-causal" in table


def test_median_or_error(monkeypatch):
    modules = _stand_in_torch([])
    modules["attend"] = _stand_in_attend([])
    gpu = _load(monkeypatch, modules)
    assert gpu.median_or_error([3.0, 1.0, 2.0]) == 2.0
    assert gpu.median_or_error([5.0, "failed", 1.0, 3.0]) == 3.0  # errors of some rounds are dropped
    assert gpu.median_or_error(["rejected: no", "other"]) == "rejected: no"
    assert gpu.median_or_error([]) == "missing"


def test_binary_fallback_takes_the_median_of_its_runs(monkeypatch, tmp_path):
    # A stand-in attend_gpu_bench: run r (counted in a file) reports r + 1 ms for every line.
    counter = tmp_path / "runs"
    counter.write_text("0")
    binary = tmp_path / "attend_gpu_bench"
    binary.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"n = int(open({str(counter)!r}).read()); open({str(counter)!r}, 'w').write(str(n + 1))\n"
        "for line in sys.stdin:\n"
        "    f = line.split()\n"
        "    if f:\n"
        "        print(json.dumps({'name': f[0], 'backend': f[-1], 'ms': [4.0, 1.0, 2.0][n % 3]}))\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    modules = _stand_in_torch([])
    modules["attend"] = types.ModuleType("attend")  # no `attention`: not a CUDA-capable package
    gpu, table = _run(monkeypatch, tmp_path, modules, ["--rounds", "3", "--attend-bench", str(binary)])
    assert counter.read_text() == "3"
    assert "Medians of 3 runs of the binary" in table
    # Median of 4, 1 and 2 ms is 2 ms: bf16-d64-s1024 is 4 * 32 * 32 * 1024^2 * 64 flop.
    flops = 4.0 * 32 * 32 * 1024 * 1024 * 64
    row = next(line for line in table.splitlines() if line.startswith("| bf16-d64-s1024 |"))
    assert row.split(" | ")[1] == f"{flops / 2e-3 / 1e12:.0f}"


def test_rounds_must_be_positive(monkeypatch, tmp_path):
    modules = _stand_in_torch([])
    modules["attend"] = _stand_in_attend([])
    with pytest.raises(SystemExit) as e:
        _run(monkeypatch, tmp_path, modules, ["--rounds", "0"])
    assert e.value.code == 2

