"""nanobind reports leaked instances, types and functions at interpreter exit on stderr; a run
that imports attend, uses every entry point (errors included) and exits must report none."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import HAVE_TORCH

SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import attend

    gen = np.random.default_rng(0)
    q, k, v = (gen.standard_normal((2, 5, 2, 8)).astype(np.float32) for _ in range(3))
    out, lse = attend.attention(q, k, v, causal=True, return_lse=True, mask=np.ones((5, 5), bool))
    attend.explain(q, k, v)
    attend.backends()
    with attend.use_backend("reference"), attend.forward_context(timestep=1, layer=2, extra="x"):
        attend.attention(q, k, v)
        attend._current_forward_context()
    kept = []
    for bad in (dict(q=q.astype(np.float64)), dict(backend="nope"), dict(layout="x")):
        try:
            attend.attention(**{**dict(q=q, k=k, v=v), **bad})
        except (TypeError, ValueError) as e:
            kept.append(e)  # exceptions (and their tracebacks) alive until exit
    try:
        huge = np.zeros((1, 1, 1, 65537), np.float32)
        attend.attention(huge, huge, huge, backend="reference")
    except attend.UnsupportedError as e:
        kept.append(e)
    if WITH_TORCH:
        import torch
        import attend.torch
        t = torch.from_numpy(q)
        attend.torch.attention(t, t, t, causal=True)
    print("done")
    """
)


def run(with_torch: bool) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", f"WITH_TORCH = {with_torch}\n" + SCRIPT], capture_output=True, text=True, timeout=300
    )


def test_no_nanobind_leaks():
    result = run(False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    assert "leak" not in result.stderr.lower(), result.stderr


def test_no_nanobind_leaks_with_torch():
    import pytest

    if not HAVE_TORCH:
        pytest.skip("torch is not installed (the torch tests run where it is, e.g. the GPU machine)")
    result = run(True)
    assert result.returncode == 0, result.stderr
    assert "leak" not in result.stderr.lower(), result.stderr
