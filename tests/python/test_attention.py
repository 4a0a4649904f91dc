"""Every backend of this build against the float64 numpy reference of conftest.py, for every
dtype, both layouts, strided views, GQA/MQA, causal alignments, windows, masks (with fully
masked rows), softcap, LSE and varlen.

A backend whose device is absent is skipped with the reason. A backend that rejects a case
(explain says unsupported) must raise attend.UnsupportedError naming it; the case is then
skipped with the backend's own reason."""

from __future__ import annotations

import zlib
from typing import Any, Dict

import numpy as np
import pytest

import attend

from conftest import (
    HAVE_ML_DTYPES,
    DLPackOnly,
    HAVE_TORCH,
    NO_TORCH_REASON,
    Framework,
    assert_close,
    reference,
    rng,
    to_f64,
    to_numpy,
    torch_cuda_available,
)

BACKENDS = attend.backends()
DTYPES = ["float32", "float16", "bfloat16"]

# name -> (shape parameters, call options). Dense cases run in both layouts.
CASES: Dict[str, Dict[str, Any]] = {
    "basic": dict(shape=dict(B=2, Sq=17, Skv=17, Hq=4, Hkv=4, D=16), opts=dict()),
    "lse": dict(shape=dict(B=2, Sq=17, Skv=17, Hq=4, Hkv=4, D=16), opts=dict(return_lse=True)),
    "cross_lengths": dict(shape=dict(B=1, Sq=5, Skv=33, Hq=2, Hkv=2, D=16), opts=dict(return_lse=True)),
    "gqa": dict(shape=dict(B=2, Sq=9, Skv=12, Hq=8, Hkv=2, D=16), opts=dict(return_lse=True)),
    "mqa": dict(shape=dict(B=1, Sq=9, Skv=12, Hq=4, Hkv=1, D=16), opts=dict()),
    "dv_differs": dict(shape=dict(B=1, Sq=6, Skv=10, Hq=2, Hkv=2, D=16, Dv=8), opts=dict(return_lse=True)),
    "scale": dict(shape=dict(B=1, Sq=6, Skv=10, Hq=2, Hkv=2, D=16), opts=dict(scale=0.3)),
    "causal_top_left": dict(shape=dict(B=2, Sq=9, Skv=21, Hq=4, Hkv=2, D=16), opts=dict(causal=True, return_lse=True)),
    "causal_bottom_right": dict(
        shape=dict(B=2, Sq=9, Skv=21, Hq=4, Hkv=2, D=16),
        opts=dict(causal=True, causal_align="bottom_right", return_lse=True),
    ),
    # Sq > Skv aligned bottom-right: the first Sq - Skv rows see no key (out 0, lse -inf).
    "causal_bottom_right_empty_rows": dict(
        shape=dict(B=1, Sq=13, Skv=6, Hq=2, Hkv=2, D=16),
        opts=dict(causal=True, causal_align="bottom_right", return_lse=True),
    ),
    "window": dict(shape=dict(B=1, Sq=15, Skv=15, Hq=2, Hkv=1, D=16), opts=dict(window=(3, 2), return_lse=True)),
    "window_left_causal_bottom_right": dict(
        shape=dict(B=1, Sq=7, Skv=19, Hq=2, Hkv=2, D=16),
        opts=dict(window=(4, None), causal=True, causal_align="bottom_right", return_lse=True),
    ),
    "window_right_only": dict(shape=dict(B=1, Sq=11, Skv=11, Hq=2, Hkv=2, D=16), opts=dict(window=(-1, 1))),
    "mask_additive": dict(shape=dict(B=2, Sq=8, Skv=11, Hq=2, Hkv=2, D=16), opts=dict(mask="additive", return_lse=True)),
    "mask_keep_broadcast_empty_row": dict(
        shape=dict(B=2, Sq=8, Skv=11, Hq=4, Hkv=2, D=16), opts=dict(mask="keep_2d", return_lse=True)
    ),
    "mask_additive_inf_rows": dict(
        shape=dict(B=2, Sq=8, Skv=11, Hq=2, Hkv=2, D=16), opts=dict(mask="additive_inf", causal=True, return_lse=True)
    ),
    # A key-padding mask [B, 1, 1, Skv] as diffusers passes it (the Hopper kernel's key masks,
    # Note [Hopper key masks]); one batch drops every key.
    "mask_key_padding": dict(
        shape=dict(B=2, Sq=33, Skv=150, Hq=4, Hkv=2, D=64), opts=dict(mask="key_padding", causal=True, return_lse=True)
    ),
    # The same mask materialised [B, 1, Sq, Skv], as Hugging Face builds it (the Hopper kernel packs
    # it to bits, Note [Hopper row masks]); and such a mask over no keys.
    "mask_key_padding_rows": dict(
        shape=dict(B=2, Sq=33, Skv=150, Hq=4, Hkv=2, D=64), opts=dict(mask="key_padding_rows", return_lse=True)
    ),
    "mask_rows_no_keys": dict(
        shape=dict(B=2, Sq=5, Skv=0, Hq=4, Hkv=2, D=64), opts=dict(mask="key_padding_rows", return_lse=True)
    ),
    "softcap": dict(shape=dict(B=1, Sq=10, Skv=10, Hq=2, Hkv=2, D=16), opts=dict(softcap=5.0, causal=True, return_lse=True)),
    "strided": dict(shape=dict(B=2, Sq=9, Skv=13, Hq=4, Hkv=2, D=16), opts=dict(strided=True, return_lse=True)),
}

VARLEN_CASES: Dict[str, Dict[str, Any]] = {
    # a zero-length query sequence in the middle
    "varlen": dict(cu_q=[0, 5, 5, 17], cu_k=[0, 7, 19, 30], opts=dict(return_lse=True)),
    "varlen_causal_bottom_right": dict(
        cu_q=[0, 3, 10, 14], cu_k=[0, 9, 15, 26], opts=dict(causal=True, causal_align="bottom_right", return_lse=True)
    ),
    "varlen_window_mask": dict(cu_q=[0, 4, 12], cu_k=[0, 6, 16], opts=dict(window=(2, 3), mask="keep_varlen", return_lse=True)),
}


def framework_for(backend: Dict[str, Any], dtype: str) -> Framework:
    """Where a backend's inputs live; skips (with the reason) when that is not available here."""
    if "cpu" in backend["devices"]:
        if dtype == "bfloat16" and not HAVE_ML_DTYPES:
            if not HAVE_TORCH:
                pytest.skip(f"bfloat16 inputs need ml_dtypes (numpy's bfloat16) or torch; {NO_TORCH_REASON}")
            return Framework("torch", "cpu")
        return Framework("numpy")
    if "cuda" in backend["devices"]:
        if not torch_cuda_available():
            pytest.skip(f"backend {backend['name']} runs on cuda: torch with a CUDA device is not available here")
        return Framework("torch", "cuda")
    pytest.skip(f"backend {backend['name']} runs on {backend['devices']}: not testable here")


def make_mask(kind: str, batch: int, heads_q: int, seq_q: int, seq_kv: int, gen: np.random.Generator) -> np.ndarray:
    if kind == "additive":
        return gen.standard_normal((batch, heads_q, seq_q, seq_kv)).astype(np.float32)
    if kind == "keep_2d":
        keep = gen.random((seq_q, seq_kv)) > 0.3
        keep[2, :] = False  # a fully masked row
        return keep
    if kind in ("key_padding", "key_padding_rows"):
        keep = np.ones((batch, 1, 1, seq_kv), dtype=bool)
        keep[0, ..., max(seq_kv - 37, 0) :] = False
        keep[1] = False
        return keep if kind == "key_padding" else np.ascontiguousarray(np.broadcast_to(keep, (batch, 1, seq_q, seq_kv)))
    if kind == "additive_inf":
        m = gen.standard_normal((batch, 1, seq_q, seq_kv)).astype(np.float32)
        m[:, :, 3, :] = -np.inf  # fully masked row in every head
        return m
    raise AssertionError(kind)


def check_or_skip(backend: str, q, k, v, **kwargs) -> None:
    """Skips (after checking that the call raises UnsupportedError) when `backend` rejects it."""
    lines = {e.backend: e for e in attend.explain(q, k, v, backend=backend, **kwargs)}
    if not lines[backend].supported:
        with pytest.raises(attend.UnsupportedError, match=backend):
            attend.attention(q, k, v, backend=backend, **kwargs)
        pytest.skip(f"{backend} does not support this case: {lines[backend].reason}")
    assert lines[backend].selected, lines


def strided_view(fw: Framework, base: np.ndarray, layout: str, dtype: str):
    """A non-contiguous view with the logical values of `base` (every dim strided)."""
    # Physical storage in the other layout, with a padded head dim; then view it back.
    other = base.transpose(0, 2, 1, 3)
    padded = np.zeros(other.shape[:3] + (other.shape[3] * 2,), dtype=base.dtype)
    padded[..., ::2] = other
    big = fw.asarray(padded, dtype)
    view = big[..., ::2]
    view = view.transpose(1, 2) if fw.name == "torch" else view.transpose(0, 2, 1, 3)
    assert not (view.is_contiguous() if fw.name == "torch" else view.flags.c_contiguous)
    return view


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS, ids=[b["name"] for b in BACKENDS])
def test_dense(backend, dtype, layout, case):
    fw = framework_for(backend, dtype)
    spec = CASES[case]
    s = dict(spec["shape"])
    opts = dict(spec["opts"])
    gen = rng(zlib.crc32(f"{case}/{layout}".encode()))
    dv = s.get("Dv", s["D"])

    def make(seq, heads, dim):
        shape = (s["B"], seq, heads, dim) if layout == "bshd" else (s["B"], heads, seq, dim)
        return gen.standard_normal(shape).astype(np.float32)

    qn, kn, vn = make(s["Sq"], s["Hq"], s["D"]), make(s["Skv"], s["Hkv"], s["D"]), make(s["Skv"], s["Hkv"], dv)
    strided = opts.pop("strided", False)
    if strided:
        q, k, v = (strided_view(fw, x, layout, dtype) for x in (qn, kn, vn))
    else:
        q, k, v = (fw.asarray(x, dtype) for x in (qn, kn, vn))
    # the reference sees exactly the rounded inputs
    qr, kr, vr = (to_f64(fw.asarray(x, dtype)) for x in (qn, kn, vn))
    mask_kind = opts.pop("mask", None)
    mask_np = None
    if mask_kind:
        mask_np = make_mask(mask_kind, s["B"], s["Hq"], s["Sq"], s["Skv"], gen)
        opts["mask"] = fw.asarray(mask_np, "float32") if mask_np.dtype != np.bool_ else fw.asarray(mask_np, "bool")
    check_or_skip(backend["name"], q, k, v, layout=layout, **opts)

    out_arg = None
    if strided:
        # Output into a strided view of a larger buffer: attend must write through the strides.
        shape = q.shape[:3] + (dv,)
        buffer = fw.empty(tuple(shape[:3]) + (dv * 3,), dtype)
        buffer[...] = 7
        out_arg = buffer[..., 1::3]
        opts["out"] = out_arg
    result = attend.attention(q, k, v, backend=backend["name"], layout=layout, **opts)
    out, lse = result if opts.get("return_lse") else (result, None)
    assert type(out) is type(q)
    if out_arg is not None:
        assert out is out_arg
        untouched = np.concatenate([to_numpy(buffer[..., 0::3]), to_numpy(buffer[..., 2::3])])
        assert (untouched == 7).all(), "attend wrote outside the out view"
    ref_opts = {key: val for key, val in opts.items() if key not in ("return_lse", "out", "mask")}
    want_out, want_lse = reference(qr, kr, vr, layout=layout, mask=mask_np, **ref_opts)
    assert_close(out, want_out, dtype)
    if lse is not None:
        assert type(lse) is type(q)
        assert_close(lse, want_lse, dtype, what="lse", lse=True)
        assert to_numpy(lse).dtype == np.float32
    if case in ("causal_bottom_right_empty_rows", "mask_keep_broadcast_empty_row", "mask_additive_inf_rows",
                "mask_key_padding_rows", "mask_rows_no_keys"):
        # the case has rows that see no key: assert_close checked out == 0 and lse == -inf there
        assert np.isneginf(want_lse).any() and (want_out == 0).any()


@pytest.mark.parametrize("case", list(VARLEN_CASES))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS, ids=[b["name"] for b in BACKENDS])
def test_varlen(backend, dtype, case):
    fw = framework_for(backend, dtype)
    spec = VARLEN_CASES[case]
    opts = dict(spec["opts"])
    cu_q, cu_k = np.array(spec["cu_q"], np.int32), np.array(spec["cu_k"], np.int32)
    heads_q, heads_kv, dim = 4, 2, 16
    gen = rng(len(case))
    qn = gen.standard_normal((cu_q[-1], heads_q, dim)).astype(np.float32)
    kn = gen.standard_normal((cu_k[-1], heads_kv, dim)).astype(np.float32)
    vn = gen.standard_normal((cu_k[-1], heads_kv, dim)).astype(np.float32)
    q, k, v = (fw.asarray(x, dtype) for x in (qn, kn, vn))
    qr, kr, vr = (to_numpy(x).astype(np.float64) for x in (q, k, v))
    mask_np = None
    if opts.pop("mask", None):
        batch = len(cu_q) - 1
        mask_np = gen.random((batch, 1, int(np.diff(cu_q).max()), int(np.diff(cu_k).max()))) > 0.25
        opts["mask"] = fw.asarray(mask_np, "bool")
    cuq, cuk = fw.asarray(cu_q, "int32"), fw.asarray(cu_k, "int32")
    check_or_skip(backend["name"], q, k, v, cu_seqlens_q=cuq, cu_seqlens_k=cuk, **opts)
    out, lse = attend.attention(q, k, v, backend=backend["name"], cu_seqlens_q=cuq, cu_seqlens_k=cuk, **opts)
    ref_opts = {key: val for key, val in opts.items() if key not in ("return_lse", "mask")}
    want_out, want_lse = reference(qr, kr, vr, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, mask=mask_np, **ref_opts)
    assert tuple(lse.shape) == (heads_q, cu_q[-1])
    assert_close(out, want_out, dtype)
    assert_close(lse, want_lse, dtype, what="lse", lse=True)


def test_auto_matches_reference_and_out_is_returned():
    q, k, v = (rng(3).standard_normal((1, 6, 2, 8)).astype(np.float32) for _ in range(3))
    out = np.empty((1, 6, 2, 8), np.float32)
    got = attend.attention(q, k, v, out=out)
    assert got is out
    assert_close(out, reference(q, k, v)[0], "float32")


def test_broadcast_mask_stride_zero():
    gen = rng(4)
    q, k, v = (gen.standard_normal((2, 5, 2, 8)).astype(np.float32) for _ in range(3))
    row = gen.standard_normal((5,)).astype(np.float32)
    mask = np.broadcast_to(row, (2, 2, 5, 5))  # every stride is 0 but the last
    assert mask.strides[:3] == (0, 0, 0)
    got = attend.attention(q, k, v, mask=mask)
    assert_close(got, reference(q, k, v, mask=np.asarray(mask))[0], "float32")


def test_read_only_inputs_accepted():
    gen = rng(5)
    q, k, v = (gen.standard_normal((1, 4, 1, 8)).astype(np.float32) for _ in range(3))
    for x in (q, k, v):
        x.setflags(write=False)
    assert_close(attend.attention(q, k, v), reference(q, k, v)[0], "float32")


def test_dlpack_only_producer():
    """An object that only has __dlpack__ / __dlpack_device__ (no numpy, no buffer protocol)."""
    gen = rng(6)
    q, k, v = (gen.standard_normal((1, 4, 2, 8)).astype(np.float32) for _ in range(3))
    got = attend.attention(DLPackOnly(q), DLPackOnly(k), DLPackOnly(v))
    assert isinstance(got, np.ndarray)
    assert_close(got, reference(q, k, v)[0], "float32")


def test_dlpack_producer_returning_one_capsule_is_a_type_error():
    """A producer that hands out the same capsule on every __dlpack__() call (against the protocol)
    gets a TypeError on its second import, not a double free (Note [DLPack capsules])."""

    class SameCapsule:
        def __init__(self, a):
            self._a, self._capsule = a, a.__dlpack__()

        def __dlpack__(self, **kwargs):
            return self._capsule

        def __dlpack_device__(self):
            return self._a.__dlpack_device__()

    gen = rng(7)
    q, k, v = (gen.standard_normal((1, 4, 2, 8)).astype(np.float32) for _ in range(3))
    # q is imported more than once per call (to allocate out like it, then for the call).
    with pytest.raises(TypeError, match=r"^q: its __dlpack__\(\) returned a capsule named 'used_dltensor', already imported"):
        attend.attention(SameCapsule(q), k, v)
    # Imported once, it works; a second call with the same object is refused.
    out = np.zeros_like(q)
    same_out = SameCapsule(out)
    attend.attention(q, k, v, out=same_out)
    assert_close(out, reference(q, k, v)[0], "float32")
    with pytest.raises(TypeError, match=r"^out: its __dlpack__\(\) returned a capsule named 'used_dltensor'"):
        attend.attention(q, k, v, out=same_out)


def test_dlpack_producer_of_read_only_memory_is_not_written():
    """A producer of immutable memory (as JAX's) can say "read-only" only in a versioned capsule
    and exports it without complaint in an unversioned one: out asks for a versioned one first."""
    try:
        np.zeros(1).__dlpack__(max_version=(1, 0))
    except TypeError:
        pytest.skip("this numpy exports no versioned DLPack capsules (numpy >= 2.1 does)")

    class Immutable:
        def __init__(self, a):
            self._a = a  # writable underneath, read-only to its users
            self._ro = a.view()
            self._ro.setflags(write=False)

        def __dlpack__(self, max_version=None, **kwargs):
            if max_version is None:
                return self._a.__dlpack__(**kwargs)
            return self._ro.__dlpack__(max_version=max_version, **kwargs)

        def __dlpack_device__(self):
            return self._a.__dlpack_device__()

    gen = rng(8)
    q, k, v = (gen.standard_normal((1, 4, 2, 8)).astype(np.float32) for _ in range(3))
    out = np.zeros_like(q)
    with pytest.raises(ValueError, match=r"^out: must be writable; got a read-only array"):
        attend.attention(q, k, v, out=Immutable(out))
    assert not out.any()
    # As an input it is read as it is.
    assert_close(attend.attention(Immutable(q), k, v), reference(q, k, v)[0], "float32")
