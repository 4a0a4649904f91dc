"""Shared helpers of the Python tests: a float64 numpy reference written here (independent of
attend's own reference backend), array conversion between numpy and torch, and comparison with
attend's tolerance table (attend._tolerance, the C++ table of src/core/check.cpp)."""

from __future__ import annotations

import importlib.util
from typing import Any, Optional, Tuple

import numpy as np
import pytest

import attend

HAVE_TORCH = importlib.util.find_spec("torch") is not None
NO_TORCH_REASON = "torch is not installed (the torch tests run where it is, e.g. the GPU machine)"
# numpy's bfloat16 comes from ml_dtypes (scripts/requirements.txt installs it); importing it
# registers the dtype name "bfloat16" with numpy.
HAVE_ML_DTYPES = importlib.util.find_spec("ml_dtypes") is not None
if HAVE_ML_DTYPES:
    import ml_dtypes  # noqa: F401


def torch_cuda_available() -> bool:
    if not HAVE_TORCH:
        return False
    import torch

    return bool(torch.cuda.is_available())


# ------------------------------------------------------------------------------------------------
# Reference: exact softmax attention in float64, dense bshd.


def _dense_bshd(q, k, v, *, scale, causal, bottom_right, window, mask, softcap):
    batch, seq_q, heads_q, dim = q.shape
    seq_kv, heads_kv = k.shape[1], k.shape[2]
    group = heads_q // heads_kv if heads_kv else 1
    kk = np.repeat(k, group, axis=2)
    vv = np.repeat(v, group, axis=2)
    if scale is None:
        scale = 1.0 / np.sqrt(dim) if dim else 1.0
    s = np.einsum("bihd,bjhd->bhij", q, kk) * scale
    if softcap:
        s = softcap * np.tanh(s / softcap)
    if mask is not None:
        m = np.broadcast_to(np.asarray(mask), (batch, heads_q, seq_q, seq_kv))
        if m.dtype == np.bool_:
            s = np.where(m, s, -np.inf)
        else:
            s = s + m.astype(np.float64)
    left, right = (-1, -1) if window is None else tuple(-1 if w is None else w for w in window)
    if causal:
        right = 0
    i = np.arange(seq_q)[:, None]
    j = np.arange(seq_kv)[None, :]
    diag = i + (seq_kv - seq_q if bottom_right else 0)
    visible = np.ones((seq_q, seq_kv), dtype=bool)
    if left >= 0:
        visible &= j >= diag - left
    if right >= 0:
        visible &= j <= diag + right
    s = np.where(visible, s, -np.inf)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        row_max = s.max(axis=-1, keepdims=True) if seq_kv else np.full(s.shape[:-1] + (1,), -np.inf)
        dead = ~np.isfinite(row_max)
        row_max = np.where(dead, 0.0, row_max)
        p = np.exp(s - row_max)
        total = p.sum(axis=-1, keepdims=True)
        dead |= total == 0
        p = p / np.where(dead, 1.0, total)
        out = np.einsum("bhij,bjhd->bihd", p, vv)
        out = np.where(dead[..., 0].transpose(0, 2, 1)[..., None], 0.0, out)
        lse = np.where(dead, -np.inf, row_max + np.log(np.where(dead, 1.0, total)))[..., 0]
    return out, lse


def reference(
    q,
    k,
    v,
    *,
    layout="bshd",
    scale=None,
    causal=False,
    causal_align="top_left",
    window=None,
    mask=None,
    softcap=0.0,
    cu_seqlens_q=None,
    cu_seqlens_k=None,
) -> Tuple[np.ndarray, np.ndarray]:
    """float64 (out, lse) with attend's conventions (lse [B, Hq, Sq]; varlen [Hq, total_q])."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    options = dict(
        scale=scale, causal=causal, bottom_right=causal_align == "bottom_right", window=window, softcap=softcap
    )
    if cu_seqlens_q is not None:
        cq, ck = np.asarray(cu_seqlens_q), np.asarray(cu_seqlens_k)
        batch = len(cq) - 1
        heads_q = q.shape[1]
        out = np.zeros((q.shape[0], heads_q, v.shape[2]))
        lse = np.full((heads_q, q.shape[0]), -np.inf)
        max_q = int(np.max(np.diff(cq))) if batch else 0
        max_k = int(np.max(np.diff(ck))) if batch else 0
        full_mask = None if mask is None else np.broadcast_to(np.asarray(mask), (batch, heads_q, max_q, max_k))
        for b in range(batch):
            q0, q1, k0, k1 = int(cq[b]), int(cq[b + 1]), int(ck[b]), int(ck[b + 1])
            m = None if full_mask is None else full_mask[b : b + 1, :, : q1 - q0, : k1 - k0]
            o, l = _dense_bshd(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], mask=m, **options)
            out[q0:q1] = o[0]
            lse[:, q0:q1] = l[0]
        return out, lse
    if layout == "bhsd":
        o, l = _dense_bshd(*(x.transpose(0, 2, 1, 3) for x in (q, k, v)), mask=mask, **options)
        return o.transpose(0, 2, 1, 3), l
    return _dense_bshd(q, k, v, mask=mask, **options)


# ------------------------------------------------------------------------------------------------
# Arrays: the framework an input lives in ("numpy", or torch on a device).


class Framework:
    """Where test inputs live: "numpy" (bfloat16 as ml_dtypes' dtype) or "torch" on a device."""

    def __init__(self, name: str, device: str = "cpu"):
        self.name = name
        self.device = device

    def __repr__(self) -> str:
        return f"{self.name}:{self.device}"

    def asarray(self, x: np.ndarray, dtype: str) -> Any:
        """x (any numpy float/bool/int array) in this framework; floats rounded to `dtype`."""
        if self.name == "numpy":
            return x.astype(dtype) if x.dtype.kind == "f" else x
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x))
        if x.dtype.kind == "f":
            t = t.to(getattr(torch, dtype))
        return t.to(self.device)

    def empty(self, shape, dtype: str) -> Any:
        if self.name == "numpy":
            return np.empty(shape, dtype=dtype)
        import torch

        return torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)


def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()


def to_f64(x: Any) -> np.ndarray:
    return to_numpy(x).astype(np.float64)


def assert_close(got: Any, want: np.ndarray, dtype: str, what: str = "out", lse: bool = False) -> None:
    tol = attend._tolerance(dtype)
    atol, rtol = (tol["lse_atol"], tol["lse_rtol"]) if lse else (tol["atol"], tol["rtol"])
    g = to_f64(got)
    assert g.shape == want.shape, f"{what}: shape {g.shape}, want {want.shape}"
    nan = np.isnan(g) != np.isnan(want)
    assert not nan.any(), f"{what}: NaN mismatch at {np.argwhere(nan)[:3].tolist()}"
    inf = np.isinf(want)
    assert np.array_equal(g[inf], want[inf]), f"{what}: infinite entries differ (got {g[inf][:5]}, want {want[inf][:5]})"
    finite = np.isfinite(want)
    err = np.abs(g[finite] - want[finite])
    bound = atol + rtol * np.abs(want[finite])
    if err.size:
        worst = int(np.argmax(err / bound))
        assert (err <= bound).all(), (
            f"{what} ({dtype}): max |err| {err.max():.3g}, worst err/bound {err[worst] / bound[worst]:.3g} "
            f"(atol {atol}, rtol {rtol})"
        )


class DLPackOnly:
    """An array that only has __dlpack__ / __dlpack_device__ (no numpy, no buffer protocol),
    exporting `a`'s memory with a fresh capsule on every call."""

    def __init__(self, a: Any) -> None:
        self._a = a

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> Any:
        return self._a.__dlpack_device__()


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def qkv(
    gen: np.random.Generator,
    batch=2,
    seq_q=7,
    seq_kv=9,
    heads_q=4,
    heads_kv=2,
    dim=16,
    dim_v: Optional[int] = None,
    layout="bshd",
    dtype=np.float32,
):
    dim_v = dim if dim_v is None else dim_v

    def make(s, h, d):
        shape = (batch, s, h, d) if layout == "bshd" else (batch, h, s, d)
        return gen.standard_normal(shape).astype(dtype)

    return make(seq_q, heads_q, dim), make(seq_kv, heads_kv, dim), make(seq_kv, heads_kv, dim_v)


@pytest.fixture
def small_qkv():
    return qkv(rng(1))
