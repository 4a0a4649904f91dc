"""attend's Python API around the kernels: backends(), explain(), errors, use_backend,
forward_context, the GIL, reference counts and the shipped typing files."""

from __future__ import annotations

import asyncio
import gc
import pathlib
import sys
import threading
import time

import numpy as np
import pytest

import attend

from conftest import HAVE_ML_DTYPES, DLPackOnly, assert_close, qkv, reference, rng

FEATURES = {
    "causal",
    "window",
    "mask_additive",
    "mask_keep",
    "gqa",
    "softcap",
    "lse",
    "varlen",
    "head_dim_v_differs",
    "bottom_right",
}


# ------------------------------------------------------------------------------------------------
# backends() and explain()


def test_backends_shape():
    found = attend.backends()
    assert found, "a build always has the CPU backends"
    names = [b["name"] for b in found]
    assert "reference" in names
    assert len(set(names)) == len(names)
    priorities = [b["priority"] for b in found]
    assert priorities == sorted(priorities, reverse=True)
    for b in found:
        assert set(b) >= {"name", "devices", "dtypes", "features", "priority"}
        assert set(b["devices"]) <= {"cpu", "cuda"} and b["devices"]
        assert set(b["dtypes"]) <= {"float32", "float16", "bfloat16"} and b["dtypes"]
        assert set(b["features"]) <= FEATURES
        assert isinstance(b["priority"], int)
    ref = found[names.index("reference")]
    assert ref["exact"] and set(ref["features"]) == FEATURES


def test_explain_lists_every_backend_and_marks_one(small_qkv):
    q, k, v = small_qkv
    lines = attend.explain(q, k, v, causal=True)
    assert [e.backend for e in lines] == [b["name"] for b in attend.backends()]
    selected = [e for e in lines if e.selected]
    assert len(selected) == 1
    for e in lines:
        name, supported, reason = e  # a plain 3-tuple too
        assert isinstance(name, str) and isinstance(supported, bool) and isinstance(reason, str)
        if not e.selected:
            assert reason
    cpu = [b["name"] for b in attend.backends() if "cpu" in b["devices"]]
    assert selected[0].backend == cpu[0]  # highest-priority CPU backend


def test_explain_named_backend(small_qkv):
    q, k, v = small_qkv
    lines = {e.backend: e for e in attend.explain(q, k, v, backend="reference")}
    assert lines["reference"].selected
    for name, e in lines.items():
        if name != "reference":
            assert not e.selected and e.reason


def test_cuda_backends_explain_why_on_cpu(small_qkv):
    q, k, v = small_qkv
    for e in attend.explain(q, k, v):
        b = next(b for b in attend.backends() if b["name"] == e.backend)
        if "cpu" not in b["devices"]:
            assert not e.supported and "cuda" in e.reason


# ------------------------------------------------------------------------------------------------
# Errors: type and argument name


def expect(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    return info.value


def test_dtype_errors_are_type_errors(small_qkv):
    q, k, v = small_qkv
    expect(TypeError, r"^q: dtype must be float32, float16 or bfloat16; got float64", attend.attention, q.astype(np.float64), k, v)
    expect(TypeError, r"^k: dtype must match q \(float32\); got float16", attend.attention, q, k.astype(np.float16), v)
    expect(TypeError, r"^v: dtype", attend.attention, q, k, v.astype(np.int32))
    out = np.empty(q.shape, np.float16)
    expect(TypeError, r"^out: dtype must match q", attend.attention, q, k, v, out=out)
    mask = np.zeros((7, 9), np.float64)
    expect(TypeError, r"^mask: dtype must be bool .* got float64", attend.attention, q, k, v, mask=mask)


@pytest.mark.skipif(not HAVE_ML_DTYPES, reason="ml_dtypes (numpy's bfloat16) is not installed; scripts/setup installs it")
def test_numpy_bfloat16_zero_copy(small_qkv):
    """ml_dtypes' bfloat16 arrays (neither DLPack nor the buffer protocol carries them) run as
    bfloat16 without a copy: out comes back as the caller's bfloat16 array, written in place."""
    import ml_dtypes

    bf16 = ml_dtypes.bfloat16
    q, k, v = (x.astype(bf16) for x in small_qkv)
    want, want_lse = reference(*(x.astype(np.float64) for x in (q, k, v)), causal=True)
    for backend in ("reference", "flash_cpu", "unfused_cpu"):
        out = np.full(q.shape[:3] + (v.shape[3],), 7, bf16)
        got, lse = attend.attention(q, k, v, backend=backend, causal=True, out=out, return_lse=True)
        assert got is out and got.dtype == bf16 and lse.dtype == np.float32
        assert_close(got, want, "bfloat16")
        assert_close(lse, want_lse, "bfloat16", what="lse", lse=True)
    # Allocated outputs are bfloat16 numpy arrays too; a bfloat16 additive mask is taken as such.
    mask = rng(2).standard_normal((7, 9)).astype(bf16)
    got = attend.attention(q, k, v, mask=mask)
    assert got.dtype == bf16
    assert_close(got, reference(*(x.astype(np.float64) for x in (q, k, v)), mask=mask.astype(np.float64))[0], "bfloat16")
    assert [e.backend for e in attend.explain(q, k, v) if e.selected] == ["flash_cpu"]
    # Mixed dtypes, a bfloat16 where int32 is needed, and other ml_dtypes types are type errors.
    expect(TypeError, r"^k: dtype must match q \(bfloat16\); got float32", attend.attention, q, small_qkv[1], v)
    expect(TypeError, r"^q: dtype must be float32, float16 or bfloat16; got float8_e4m3fn",
           attend.attention, small_qkv[0].astype(ml_dtypes.float8_e4m3fn), k, v)
    offsets = np.array([0, 7], np.int32).astype(bf16)
    expect(TypeError, r"^cu_seqlens_q: dtype must be int32; got bfloat16", attend.attention,
           q[0], k[0], v[0], cu_seqlens_q=offsets, cu_seqlens_k=np.array([0, 9], np.int32))
    # The extension reads an argument named in bf16_bits only as the uint16 bits of bfloat16.
    args, kwargs, _ = attend._api._prepare(q, k, v, backend="auto", layout="bshd", scale=None, causal=False,
                                           causal_align="top_left", window=None, mask=None, softcap=0.0,
                                           return_lse=False, cu_seqlens_q=None, cu_seqlens_k=None, out=None,
                                           max_seqlen_q=None, max_seqlen_k=None)
    assert kwargs["bf16_bits"] == ["q", "k", "v", "out"] and args[0].dtype == np.uint16
    kwargs["bf16_bits"] = ["q", "k", "v", "out", "lse"]
    lse = np.empty((2, 4, 7), np.float32)
    expect(TypeError, r"^lse: bf16_bits names it, so it must be the uint16 bits of bfloat16; got float32",
           attend._attend.explain, *args[:4], lse, *args[5:], **kwargs)


def test_argument_type_errors(small_qkv):
    q, k, v = small_qkv
    expect(TypeError, r"^q: expected .*numpy.ndarray.*; got list", attend.attention, q.tolist(), k, v)
    expect(TypeError, r"^v: expected", attend.attention, q, k, "v")
    expect(TypeError, r"^window: must be None or a \(left, right\) pair", attend.attention, q, k, v, window=3)
    expect(TypeError, r"^window: the left bound", attend.attention, q, k, v, window=(1.5, 2))
    expect(TypeError, r"^scale:", attend.attention, q, k, v, scale="big")
    expect(TypeError, r"^softcap:", attend.attention, q, k, v, softcap=None)
    expect(TypeError, r"^backend:", attend.attention, q, k, v, backend=None)
    expect(TypeError, r"^layout:", attend.attention, q, k, v, layout=1)


def test_shape_and_value_errors(small_qkv):
    q, k, v = small_qkv
    expect(ValueError, r"^q: must be rank 4", attend.attention, q[0], k, v)
    expect(ValueError, r"^k: head_dim must match q's 16", attend.attention, q, k[..., :8], v)
    expect(ValueError, r"^v: sequence length must match k's", attend.attention, q, k, v[:, :3])
    q3 = np.zeros((2, 7, 3, 16), np.float32)
    expect(ValueError, r"query heads must be a multiple of key/value heads", attend.attention, q3, k, v)
    expect(ValueError, r"^layout: must be 'bshd' or 'bhsd'; got 'sbhd'", attend.attention, q, k, v, layout="sbhd")
    expect(ValueError, r"^causal_align: must be 'top_left' or 'bottom_right'; got 'middle'", attend.attention, q, k, v, causal_align="middle")
    expect(ValueError, r"^window: bounds must be >= 0, or -1", attend.attention, q, k, v, window=(-2, 0))
    expect(ValueError, r"^scale: must be finite", attend.attention, q, k, v, scale=float("nan"))
    expect(ValueError, r"^softcap: must be finite and >= 0", attend.attention, q, k, v, softcap=-1.0)
    expect(ValueError, r"^mask: shape \[3, 9\] does not broadcast", attend.attention, q, k, v, mask=np.ones((3, 9), bool))
    expect(ValueError, r"^out: must be", attend.attention, q, k, v, out=np.empty((2, 7, 4, 8), np.float32))
    expect(ValueError, r"^q: strides must be non-negative", attend.attention, q[:, ::-1], k, v)
    expect(ValueError, r"^out: memory overlaps q", attend.attention, q, k, v, out=q)
    expect(ValueError, r"^backend: unknown name 'nope'; known: .*reference", attend.attention, q, k, v, backend="nope")


def test_flags_must_be_bools(small_qkv):
    # "False" is a true string: taking it would run causal attention nobody asked for.
    q, k, v = small_qkv
    expect(TypeError, r"^causal: must be a bool; got 'False'", attend.attention, q, k, v, causal="False")
    expect(TypeError, r"^causal: must be a bool", attend.attention, q, k, v, causal=np.array([1, 0]))
    expect(TypeError, r"^return_lse: must be a bool; got 1", attend.attention, q, k, v, return_lse=1)
    want = attend.attention(q, k, v, causal=True, backend="reference")
    np.testing.assert_array_equal(attend.attention(q, k, v, causal=np.bool_(True), backend="reference"), want)


def test_side_by_side_slices_of_one_buffer(small_qkv):
    # Slices that share no element are not an overlap, though their byte ranges interleave:
    # q, k, v and out as packed[:, :, 0..3], and out as the second half of each row.
    q = small_qkv[0]
    k, v = q[:, ::-1].copy(), 0.5 - q
    packed = np.zeros(q.shape[:2] + (4,) + q.shape[2:], np.float32)
    packed[:, :, 0], packed[:, :, 1], packed[:, :, 2] = q, k, v
    got = attend.attention(packed[:, :, 0], packed[:, :, 1], packed[:, :, 2], out=packed[:, :, 3], backend="reference")
    assert got is not None
    np.testing.assert_array_equal(packed[:, :, 3], attend.attention(q, k, v, backend="reference"))
    rows = np.zeros(q.shape[:3] + (2 * q.shape[3],), np.float32)
    rows[..., : q.shape[3]] = q
    half = rows[..., : q.shape[3]]
    attend.attention(half, half, half, out=rows[..., q.shape[3] :], backend="reference")
    np.testing.assert_array_equal(rows[..., q.shape[3] :], attend.attention(q, q, q, backend="reference"))
    expect(ValueError, r"^out: memory overlaps q", attend.attention, half, half, half, out=rows[..., q.shape[3] - 1 : -1])


def test_buffer_protocol_objects(small_qkv):
    # A ctypes array exports its buffer without strides: read through numpy, not misread (it
    # crashed the extension's own import before).
    import ctypes

    q, k, v = small_qkv
    flat = (ctypes.c_float * q.size)(*q.ravel().tolist())
    expect(ValueError, r"^q: must be rank 4", attend.attention, flat, k, v)
    out = bytearray(q.nbytes)
    view = memoryview(out).cast("B").cast("f", q.shape)
    got = attend.attention(q, k, v, out=view, backend="reference")
    np.testing.assert_array_equal(np.frombuffer(out, np.float32).reshape(q.shape), attend.attention(q, k, v, backend="reference"))
    assert got is view  # the caller's out comes back, as for any array
    expect(ValueError, r"^out: must be writable", attend.attention, q, k, v, out=memoryview(bytes(q.nbytes)).cast("f", q.shape))


def test_masked_arrays_are_refused(small_qkv):
    # A numpy masked array's mask is not carried by DLPack or the buffer protocol: its masked keys
    # were read as data, silently.
    q, k, v = small_qkv
    masked = np.ma.masked_array(k.copy())
    masked[:, 3:] = np.ma.masked
    expect(TypeError, r"^k: a numpy masked array", attend.attention, q, masked, v)
    expect(TypeError, r"^out: a numpy masked array", attend.attention, q, k, v, out=np.ma.masked_array(np.empty_like(q)))
    np.testing.assert_array_equal(attend.attention(q, masked.data, v, backend="reference"),
                                  attend.attention(q, k, v, backend="reference"))


def test_array_kind_is_decided_by_type(small_qkv):
    """An object whose __class__ claims to be an ndarray is not one: its kind is decided (and kept)
    by its type, so it is refused as what it is, a TypeError naming it, and does not make later
    objects of its type look like numpy arrays."""
    q, k, v = small_qkv

    class Pretender:
        __class__ = property(lambda self: np.ndarray)  # type: ignore[assignment]

    assert isinstance(Pretender(), np.ndarray)  # what isinstance would have believed
    for _ in range(2):
        expect(TypeError, r"^q: expected a numpy.ndarray", attend.attention, Pretender(), k, v)
    np.testing.assert_array_equal(attend.attention(q, k, v, backend="reference"), attend.attention(q.copy(), k, v, backend="reference"))


def test_extension_reads_buffers_without_strides():
    """The private extension's own entry points take a ctypes array too (Note [Buffers without
    strides] in python/src/module.cpp); nanobind's buffer import crashed on it. In a child process,
    so a crash fails this test instead of the run."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import ctypes
        import numpy as np
        from attend import _attend
        flat = (ctypes.c_float * 8)(*range(8))
        print(_attend.describe(flat, "q"))
        q = np.arange(8, dtype=np.float32).reshape(1, 2, 1, 4)
        out = ((((ctypes.c_float * 4) * 1) * 2) * 1)()  # [1, 2, 1, 4], as ctypes nests it
        _attend.attention(q, q, q, out, None, None, None, None, layout="bshd", scale=None, causal=False,
                          causal_align="top_left", window_left=-1, window_right=-1, softcap=0.0, max_seqlen_q=0,
                          max_seqlen_k=0, backend="reference", allow=[], deny=[], bf16_bits=[], cuda_stream=0,
                          forward=[])
        print(np.asarray(out).ravel()[:4].tolist())
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "((8,), 'float32', 'cpu', 0)"
    want = attend.attention(*(np.arange(8, dtype=np.float32).reshape(1, 2, 1, 4),) * 3, backend="reference")
    np.testing.assert_allclose(eval(lines[1]), want.ravel()[:4], rtol=1e-6)  # written through the buffer


def test_too_large_result_is_a_value_error(small_qkv):
    # A view claiming 2^46 rows of one element: the result could never be allocated, which is
    # the shapes' problem (a ValueError naming it), not a MemoryError.
    _, k, _ = small_qkv
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (1, 2**46, 1, 16), (0, 0, 0, 0))
    expect(ValueError, r"^out: cannot allocate the result's shape .* \(out of memory\)", attend.attention, huge, k, k)
    expect(ValueError, r"^out: cannot allocate the result's shape", attend.explain, huge, k, k)


def test_read_only_out(small_qkv):
    q, k, v = small_qkv
    out = np.empty(q.shape, np.float32)
    out.setflags(write=False)
    expect(ValueError, r"^out: must be writable", attend.attention, q, k, v, out=out)


def test_varlen_errors():
    gen = rng(2)
    q = gen.standard_normal((10, 2, 8)).astype(np.float32)
    k = gen.standard_normal((12, 2, 8)).astype(np.float32)
    cu_q, cu_k = np.array([0, 4, 10], np.int32), np.array([0, 5, 12], np.int32)
    expect(TypeError, r"^cu_seqlens_q: dtype must be int32; got int64", attend.attention, q, k, k, cu_seqlens_q=cu_q.astype(np.int64), cu_seqlens_k=cu_k)
    expect(ValueError, r"cu_seqlens_q and cu_seqlens_k: give both", attend.attention, q, k, k, cu_seqlens_q=cu_q)
    expect(ValueError, r"^cu_seqlens_k: last offset must equal the packed length 12; got 11", attend.attention, q, k, k, cu_seqlens_q=cu_q, cu_seqlens_k=np.array([0, 5, 11], np.int32))
    expect(ValueError, r"^q: varlen tensors must be packed", attend.attention, q[None], k, k, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    expect(TypeError, r"^max_seqlen_q: must be an int", attend.attention, q, k, k, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=2.5)
    expect(ValueError, r"max_seqlen_q/k: smaller than the longest sequence", attend.attention, q, k, k, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=2)
    # Past the packed length: it wrapped workspace sizes around (a crash or a wrong answer) before.
    expect(ValueError, r"max_seqlen_q/k: at most 2\^31 - 1", attend.attention, q, k, k, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=2**62)
    buf = np.zeros(10 * 2 * 8, np.float32)
    cu_in_out = buf[:3].view(np.int32)
    cu_in_out[:] = cu_q
    expect(ValueError, r"out: memory overlaps cu_seqlens_q", attend.attention, q, k, k, cu_seqlens_q=cu_in_out, cu_seqlens_k=cu_k, out=buf.reshape(10, 2, 8))


def test_degenerate_sizes_and_huge_bounds(small_qkv):
    q, k, v = small_qkv
    # No query heads, some key/value heads: an empty result on every CPU backend (flash_cpu
    # divided by zero here before).
    q0 = np.zeros(q.shape[:2] + (0, q.shape[3]), np.float32)
    for name in ("reference", "flash_cpu", "unfused_cpu"):
        assert attend.attention(q0, k, v, backend=name).shape == q0.shape
    # A window bound past every key is no bound (it overflowed the band arithmetic before).
    want = attend.attention(q, k, v, backend="reference")
    for name in ("reference", "flash_cpu", "unfused_cpu"):
        got = attend.attention(q, k, v, window=(None, 2**63 - 1), backend=name)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    expect(ValueError, r"^softcap: must be finite and >= 0", attend.attention, q, k, v, softcap=1e39)
    expect(ValueError, r"^scale: must be finite", attend.attention, q, k, v, scale=1e300)


def test_unsupported_error_lists_every_backend(small_qkv):
    q, k, v = small_qkv
    huge = np.zeros((1, 1, 1, 65537), np.float32)  # beyond the reference's max head dim
    err = expect(attend.UnsupportedError, r"backend 'reference' does not support this call", attend.attention, huge, huge, huge, backend="reference")
    assert isinstance(err, RuntimeError)
    message = str(err)
    for b in attend.backends():
        assert f"\n  {b['name']}: " in message
    assert "head_dim_qk must be between 1 and 65536; got 65537" in message
    assert [name for name, _ in err.rejections] == [b["name"] for b in attend.backends()]
    assert dict(err.rejections)["reference"].startswith("head_dim_qk must be")
    assert attend.UnsupportedError.__module__ == "attend"


# ------------------------------------------------------------------------------------------------
# use_backend


def selected(q, k, v, **kwargs):
    return next(e.backend for e in attend.explain(q, k, v, **kwargs) if e.selected)


def test_use_backend_nests_and_restores(small_qkv):
    q, k, v = small_qkv
    default = selected(q, k, v)
    assert attend._current_backend() is None
    with attend.use_backend("reference"):
        assert selected(q, k, v) == "reference"
        with attend.use_backend("auto"):
            assert selected(q, k, v) == default
        assert selected(q, k, v) == "reference"
        # an explicit backend= wins over the scope
        cpu_names = [b["name"] for b in attend.backends() if "cpu" in b["devices"]]
        assert selected(q, k, v, backend=cpu_names[0]) == cpu_names[0]
        assert_close(attend.attention(q, k, v), reference(q, k, v)[0], "float32")
    assert attend._current_backend() is None
    assert selected(q, k, v) == default


def test_use_backend_restores_on_exception(small_qkv):
    with pytest.raises(KeyError):
        with attend.use_backend("reference"):
            raise KeyError("boom")
    assert attend._current_backend() is None


def test_use_backend_allow_list(small_qkv):
    q, k, v = small_qkv
    with attend.use_backend(["reference"]):
        assert selected(q, k, v) == "reference"
        assert attend._current_backend() == ("auto", ("reference",))


def test_use_backend_unknown_name():
    expect(ValueError, r"use_backend: unknown backend 'nope'; known: .*reference", attend.use_backend("nope").__enter__)
    expect(TypeError, r"use_backend: expected a backend name", attend.use_backend([]).__enter__)
    expect(TypeError, r"use_backend: expected a backend name or a list of names; got 3", attend.use_backend(3).__enter__)
    with attend.use_backend({"reference"}):  # any iterable of names
        assert attend._current_backend() == ("auto", ("reference",))
    expect(ValueError, r"use_backend: a list names backends to choose among; 'auto' is a single choice", attend.use_backend(["auto"]).__enter__)


def test_dlpack_producer_errors_are_reported(small_qkv):
    """A producer whose __dlpack__ raises: the TypeError names the argument and the producer's error."""
    q, k, v = small_qkv

    class Broken:
        def __dlpack__(self, **kwargs):
            raise BufferError("cannot export this tensor (device busy)")

        def __dlpack_device__(self):
            return (1, 0)

    expect(TypeError, r"^k: expected a numpy\.ndarray.*; got .*Broken; its __dlpack__\(\) raised BufferError: cannot export this tensor \(device busy\)$",
           attend.attention, q, Broken(), v)
    expect(TypeError, r"^out: expected a numpy\.ndarray.*; its __dlpack__\(\) raised BufferError: cannot export", attend.attention, q, k, v, out=Broken())
    # An object without __dlpack__ keeps the plain message.
    expect(TypeError, r"^v: expected a numpy\.ndarray.*; got str$", attend.attention, q, k, "not an array")


def test_dlpack_producer_interrupts_and_odd_types(small_qkv):
    """A KeyboardInterrupt inside __dlpack__ is not an export error; a type whose __module__ is
    None is still an array."""
    q, k, v = small_qkv

    class Interrupted:
        def __dlpack__(self, **kwargs):
            raise KeyboardInterrupt

        def __dlpack_device__(self):
            return (1, 0)

    with pytest.raises(KeyboardInterrupt):
        attend.attention(q, Interrupted(), v)

    class Moduleless(DLPackOnly):
        pass

    Moduleless.__module__ = None
    assert attend.attention(q, Moduleless(k), v).shape == q.shape


def test_text_arguments_must_be_utf8(small_qkv):
    """Strings with a lone surrogate cannot reach C++ as UTF-8: ValueError naming the argument,
    raised where the string is given (a forward_context on entry, not at the next call)."""
    q, k, v = small_qkv
    bad = "\ud800"
    expect(ValueError, r"^backend: must be valid text", attend.attention, q, k, v, backend=bad)
    expect(ValueError, r"^causal_align: must be valid text", attend.attention, q, k, v, causal_align=bad)
    expect(ValueError, r"^path must be valid text", attend.load_plugin, bad)
    with pytest.raises(ValueError, match=r"^forward_context: value of 'tag' must be valid text"):
        with attend.forward_context(tag=bad):
            pass
    with pytest.raises(ValueError, match=r"^forward_context: a key must be valid text"):
        with attend.forward_context(**{bad: 1}):
            pass


def test_argument_errors_name_the_argument(small_qkv):
    q, k, v = small_qkv
    expect(TypeError, r"^q: expected an array .*; got None", attend.attention, None, k, v)
    expect(TypeError, r"^v: expected an array .*; got None", attend.attention, q, k, None)
    # Arrays of dtypes DLPack cannot carry say so, instead of "expected an ndarray; got ndarray".
    expect(TypeError, r"^q: dtype must be float32, float16 or bfloat16; got object", attend.attention, q.astype(object), k, v)
    expect(TypeError, r"^k: dtype must be float32, float16 or bfloat16 in native byte order; got >f4 \(byte order '>'\)", attend.attention, q, k.astype(">f4"), v)
    # long double is a float numpy has and DLPack does not carry
    expect(TypeError, r"^q: dtype must be float32, float16 or bfloat16; got float128", attend.attention, q.astype(np.longdouble), k, v)
    expect(TypeError, r"^mask: dtype must be bool .*; got float128", attend.attention, q, k, v, mask=np.zeros((7, 7), np.longdouble))
    expect(TypeError, r"^q: dtype must be float32, float16 or bfloat16; got uint8", attend.attention, memoryview(bytearray(q.size)).cast("B", q.shape), k, v)
    expect(TypeError, r"^mask: dtype must be bool \(keep-mask\) or float32/float16/bfloat16 \(additive\) in native byte order; got >f4", attend.attention, q, k, v, mask=np.zeros((7, 7), ">f4"))
    odd = np.ndarray((7, 9), np.float32, np.zeros(7 * 9 * 6, np.uint8), 0, (54, 6))  # 6-byte strides
    expect(ValueError, r"^mask: strides must be whole elements", attend.attention, q, k, v, mask=odd)
    # explain takes the same names as attention.
    expect(ValueError, r"^backend: unknown name 'nope'", attend.explain, q, k, v, backend="nope")
    # A NUL would end the C string of the message that names it ("unknown name 'reference").
    expect(ValueError, r"^backend: must not contain a NUL character; got 'reference\\x00x'", attend.attention, q, k, v, backend="reference\0x")
    # Varlen tensors are packed [total, H, D]: a bhsd layout there is an error, not ignored.
    cu = np.array([0, 3, 7], np.int32)
    expect(ValueError, r"^layout: varlen tensors are packed", attend.attention, q[0], k[0], v[0], layout="bhsd", cu_seqlens_q=cu, cu_seqlens_k=cu)
    # Python ints past 64 bits and floats past float's range: ValueErrors naming the argument.
    expect(ValueError, r"^window: the left bound does not fit in 64 bits", attend.attention, q, k, v, window=(2**63, 0))
    expect(ValueError, r"^scale: does not fit a float", attend.attention, q, k, v, scale=10**400)
    expect(ValueError, r"^backend: the name is empty", attend.attention, q, k, v, backend="")
    expect(ValueError, r"^plugin: the path is empty", attend.load_plugin, "")


def test_use_backend_is_per_thread(small_qkv):
    q, k, v = small_qkv
    names = [b["name"] for b in attend.backends() if "cpu" in b["devices"]] + ["auto"]
    barrier = threading.Barrier(8)
    errors = []

    def worker(i):
        try:
            name = names[i % len(names)]
            assert attend._current_backend() is None  # threads never inherit a scope
            with attend.use_backend(name):
                barrier.wait()
                for _ in range(20):
                    assert attend._current_backend() == (name, ())
                    attend.attention(q, k, v)
                    with attend.use_backend("reference"):
                        assert selected(q, k, v) == "reference"
                    assert attend._current_backend() == (name, ())
                barrier.wait()
            assert attend._current_backend() is None
        except BaseException as e:  # reported in the main thread
            errors.append(e)
            barrier.abort()

    with attend.use_backend("reference"):
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert attend._current_backend() == ("reference", ())
    assert not errors, errors
    assert attend._current_backend() is None


def test_use_backend_is_per_asyncio_task(small_qkv):
    async def task(name, hold):
        with attend.use_backend(name):
            await asyncio.sleep(hold)
            return attend._current_backend()

    async def main():
        return await asyncio.gather(task("reference", 0.02), task("auto", 0.01))

    assert asyncio.run(main()) == [("reference", ()), ("auto", ())]


# ------------------------------------------------------------------------------------------------
# forward_context


def test_forward_context_reaches_cpp():
    assert attend._current_forward_context() == dict(present=False, timestep=None, layer=None, depth=0, values={})
    with attend.forward_context(timestep=10, layer=3, sparsity="video", ratio=0.5, enabled=True, block=64):
        seen = attend._current_forward_context()
        assert seen == dict(
            present=True,
            timestep=10.0,
            layer=3,
            depth=1,
            values=dict(sparsity="video", ratio=0.5, enabled=True, block=64),
        )
        assert type(seen["values"]["enabled"]) is bool and type(seen["values"]["block"]) is int
        with attend.forward_context(layer=4, sparsity="none"):
            seen = attend._current_forward_context()
            assert (seen["timestep"], seen["layer"], seen["depth"]) == (10.0, 4, 2)
            assert seen["values"]["sparsity"] == "none" and seen["values"]["block"] == 64
        assert attend._current_forward_context()["layer"] == 3
    assert not attend._current_forward_context()["present"]


def test_forward_context_restores_on_exception():
    with pytest.raises(RuntimeError):
        with attend.forward_context(timestep=1):
            raise RuntimeError
    assert not attend._current_forward_context()["present"]


def test_forward_context_bad_values():
    expect(TypeError, r"forward_context: value of 'cfg' must be int, float, bool or str; got dict", attend.forward_context(cfg={}).__enter__)
    expect(TypeError, r"forward_context: layer must be an int", attend.forward_context(layer=1.5).__enter__)
    expect(TypeError, r"forward_context: timestep must be a real number", attend.forward_context(timestep="x").__enter__)
    # Out of range: a ValueError on entering the scope, not a RuntimeError or OverflowError later.
    expect(ValueError, r"forward_context: layer does not fit in 64 bits", attend.forward_context(layer=2**70).__enter__)
    expect(ValueError, r"forward_context: timestep does not fit a float", attend.forward_context(timestep=10**400).__enter__)
    expect(ValueError, r"forward_context: value of 'big' does not fit in 64 bits", attend.forward_context(big=-(2**63) - 1).__enter__)
    # A key with a NUL would reach C++ whole but read back cut (C strings): refused where given.
    expect(ValueError, r"^forward_context: a key must not contain a NUL character", attend.forward_context(**{"a\0b": 1}).__enter__)


def test_forward_context_numpy_scalars():
    """numpy's scalars are the numbers they hold, in extra values as for layer and timestep."""
    with attend.forward_context(layer=np.int64(3), timestep=np.float32(0.5), flag=np.bool_(True), n=np.int32(-2),
                                r=np.float64(0.25), big=np.uint64(2**63 - 1)):
        seen = attend._current_forward_context()
    assert seen["layer"] == 3 and seen["timestep"] == 0.5
    assert seen["values"] == {"flag": True, "n": -2, "r": 0.25, "big": 2**63 - 1}
    assert type(seen["values"]["flag"]) is bool and type(seen["values"]["n"]) is int
    expect(ValueError, r"forward_context: value of 'big' does not fit in 64 bits", attend.forward_context(big=np.uint64(2**64 - 1)).__enter__)


def test_forward_context_is_per_thread():
    barrier = threading.Barrier(4)
    errors = []

    def worker(i):
        try:
            assert not attend._current_forward_context()["present"]
            with attend.forward_context(timestep=i, layer=i):
                barrier.wait()
                for _ in range(50):
                    seen = attend._current_forward_context()
                    assert (seen["timestep"], seen["layer"], seen["depth"]) == (float(i), i, 1)
                barrier.wait()
        except BaseException as e:
            errors.append(e)
            barrier.abort()

    with attend.forward_context(timestep=99):
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert attend._current_forward_context()["timestep"] == 99.0
    assert not errors, errors


def test_attention_runs_inside_forward_context(small_qkv):
    q, k, v = small_qkv
    with attend.forward_context(timestep=5, layer=1, note="x"):
        assert_close(attend.attention(q, k, v), reference(q, k, v)[0], "float32")


# ------------------------------------------------------------------------------------------------
# GIL, reference counts, cycles


def test_gil_is_released_while_running():
    gen = rng(7)
    q, k, v = (gen.standard_normal((1, 512, 4, 64)).astype(np.float32) for _ in range(3))
    span = {}

    def worker():
        span["start"] = time.perf_counter()
        with attend.use_backend("reference"):  # the slow exact backend: a long call
            attend.attention(q, k, v)
        span["end"] = time.perf_counter()

    stamps = []
    t = threading.Thread(target=worker)
    t.start()
    while t.is_alive():
        stamps.append(time.perf_counter())
    t.join()
    start, end = span["start"], span["end"]
    assert end - start > 0.05, "the call was too short to tell"
    inside = [s for s in stamps if start + 0.01 < s < end - 0.01]
    # With the GIL held for the whole call, this thread could not run a single iteration inside it.
    assert len(inside) > 100


def test_no_reference_leaks_or_cycles(small_qkv):
    q, k, v = small_qkv
    mask = np.ones((7, 9), bool)
    out = np.empty((2, 7, 4, 16), np.float32)
    before = [sys.getrefcount(x) for x in (q, k, v, mask, out)]
    for _ in range(3):
        attend.attention(q, k, v, mask=mask, out=out, return_lse=True)
        attend.explain(q, k, v, mask=mask)
    gc.collect()
    assert [sys.getrefcount(x) for x in (q, k, v, mask, out)] == before
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            attend.attention(q, k, v, mask=mask, return_lse=True, causal=True)
            attend.explain(q, k, v)
            attend.backends()
            with attend.use_backend("reference"), attend.forward_context(timestep=1, layer=2, x="y"):
                attend.attention(q, k, v)
                attend._current_forward_context()
        assert gc.collect() == 0, "attend created reference cycles"
    finally:
        gc.enable()


# ------------------------------------------------------------------------------------------------
# Packaging


def test_typing_files_are_shipped():
    root = pathlib.Path(attend.__file__).parent
    assert (root / "py.typed").is_file()
    stub = (root / "_attend.pyi").read_text()
    assert "def attention(" in stub and "def backends(" in stub
    assert attend.__version__.count(".") == 2


def test_tolerance_table_is_the_cpp_one():
    assert attend._tolerance("float32")["atol"] == 2e-5 and attend._tolerance("float32")["rtol"] == 2e-4
    assert attend._tolerance(np.float16) == attend._tolerance("float16")
    assert attend._tolerance("float16")["atol"] == 2e-3 and attend._tolerance("float16")["rtol"] == 4e-3
    assert attend._tolerance("bfloat16")["atol"] == 1.6e-2 and attend._tolerance("bfloat16")["rtol"] == 1.6e-2
    expect(ValueError, "dtype: must be float32", attend._tolerance, "int32")


def test_qkv_helper_layouts():
    q, k, v = qkv(rng(0), layout="bhsd")
    assert q.shape == (2, 4, 7, 16) and v.shape == (2, 2, 9, 16)
