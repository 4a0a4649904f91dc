"""The Python layer of attend: keyword handling, output allocation and scoped state.

Arrays go to the extension (attend._attend) as they are; it reads them without copying, a plain
torch.Tensor through its attributes (Note [torch fast path]), anything else through DLPack or the
buffer protocol (Note [Zero-copy arrays] in python/src/module.cpp). This layer
only allocates what the caller did not pass (``out``, ``lse``) with the input's own array
library and device, picks the CUDA stream, and resolves the scoped backend choice and forward
context, both kept in ``contextvars`` so each thread and each asyncio task sees its own.
"""

from __future__ import annotations

import contextlib
import contextvars
import numbers
import os
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from . import _attend

if TYPE_CHECKING:

    class UnsupportedError(RuntimeError):
        """No (allowed) backend supports the call (defined by the extension)."""

        rejections: List[Tuple[str, str]]

else:
    #: No (allowed) backend supports the call. A subclass of RuntimeError; the message lists
    #: every backend's reason and ``rejections`` holds them as a list of (backend, reason) pairs.
    UnsupportedError = _attend.UnsupportedError

__version__: str = _attend.version()

#: numpy.ndarray, torch.Tensor, or any object exporting ``__dlpack__`` (or the buffer protocol).
Array = Any

_Scoped = Tuple[str, Tuple[str, ...]]
_ForwardLevel = Tuple[Optional[float], Optional[int], Dict[str, Union[bool, int, float, str]]]

_backend_var: contextvars.ContextVar[Optional[_Scoped]] = contextvars.ContextVar("attend_backend", default=None)
_forward_var: contextvars.ContextVar[Tuple[_ForwardLevel, ...]] = contextvars.ContextVar(
    "attend_forward_context", default=()
)


class Explanation(NamedTuple):
    """One backend's answer to "can you run this call?" (see :func:`explain`)."""

    backend: str
    supported: bool
    #: Why it is not used: the unsupported requirement ("head_dim_qk must be ...; got 300"), or
    #: why a supporting backend was passed over. Empty for the backend that would run.
    reason: str

    @property
    def selected(self) -> bool:
        """True for the backend the call would run on."""
        return self.supported and not self.reason


# ------------------------------------------------------------------------------------------------
# Arrays


_kinds: Dict[type, str] = {np.ndarray: "numpy"}  # type -> kind, filled as types are seen

#: The array arguments of a call, in the order _prepare keeps them, and the dtypes each takes.
_ARRAYS = ("q", "k", "v", "out", "mask", "cu_seqlens_q", "cu_seqlens_k")
_FLOATS = "float32, float16 or bfloat16"
_TAKES = {"q": _FLOATS, "k": _FLOATS, "v": _FLOATS, "out": _FLOATS,
          "mask": "bool (keep-mask) or float32/float16/bfloat16 (additive)", "cu_seqlens_q": "int32",
          "cu_seqlens_k": "int32"}


def _kind(x: Array) -> str:
    """"numpy" (an ndarray or a subclass), "torch" (a tensor of torch or a subclass) or "other".
    Asked several times per call, so the answer is kept per type (a few types in practice; the
    table is emptied should it ever grow large)."""
    t = type(x)
    kind = _kinds.get(t)
    if kind is None:
        module = getattr(t, "__module__", None) or ""
        if issubclass(t, np.ndarray):  # by type, as the answer is kept per type (not __class__)
            kind = "numpy"
        elif module == "torch" or module.startswith("torch."):
            kind = "torch"
        else:
            kind = "other"
        if len(_kinds) > 256:
            _kinds.clear()
            _kinds[np.ndarray] = "numpy"
        _kinds[t] = kind
    return kind


def _is_ml_bfloat16(x: Any) -> bool:
    """A numpy array of ml_dtypes' bfloat16 (JAX's host arrays): neither DLPack nor the buffer
    protocol can carry that dtype, so its bits go to the extension as a uint16 view of the same
    memory, named in ``bf16_bits`` (Note [numpy bfloat16] in python/src/module.cpp)."""
    return isinstance(x, np.ndarray) and x.dtype.kind == "V" and x.dtype.name == "bfloat16" and x.dtype.itemsize == 2


def _shape(x: Array, name: str) -> Tuple[Any, ...]:
    kind = _kind(x)
    if kind in ("numpy", "torch"):
        return tuple(x.shape)
    return tuple(_attend.describe(x, name)[0])


def _device_kind(x: Array, name: str) -> str:
    kind = _kind(x)
    if kind == "numpy":
        return "cpu"
    if kind == "torch":
        return "cuda" if x.device.type == "cuda" else x.device.type
    return str(_attend.describe(x, name)[2])


def _output_shapes(
    q_shape: Sequence[Any], v_shape: Sequence[Any], layout: str, varlen: bool
) -> Tuple[Tuple[Any, ...], Tuple[Any, ...]]:
    """(out shape, lse shape) of a call; no int() on sizes, so symbolic torch sizes pass."""
    if layout not in ("bshd", "bhsd"):
        raise ValueError(f"layout: must be 'bshd' or 'bhsd'; got {layout!r}")
    if varlen:
        for shape, name in ((q_shape, "q"), (v_shape, "v")):
            if len(shape) != 3:
                raise ValueError(
                    f"{name}: varlen tensors must be packed [total, heads, head_dim]; got shape {tuple(shape)}"
                )
        return (q_shape[0], q_shape[1], v_shape[2]), (q_shape[1], q_shape[0])
    for shape, name in ((q_shape, "q"), (v_shape, "v")):
        if len(shape) != 4:
            raise ValueError(
                f"{name}: must be rank 4 ([B, S, H, D] for bshd, [B, H, S, D] for bhsd); got shape {tuple(shape)}"
            )
    out_shape = (q_shape[0], q_shape[1], q_shape[2], v_shape[3])
    if layout == "bshd":
        return out_shape, (q_shape[0], q_shape[2], q_shape[1])
    return out_shape, (q_shape[0], q_shape[1], q_shape[2])


def _empty(like: Array, shape: Tuple[Any, ...], float32: bool, name: str) -> Array:
    """An uninitialised array of `like`'s library and device: `like`'s dtype, or float32."""
    kind = _kind(like)
    if kind == "numpy":
        return np.empty(shape, dtype=np.float32 if float32 else like.dtype)
    if kind == "torch":
        # new_empty keeps like's device (and dtype, unless float32 is asked for): cheaper than
        # torch.empty(..., device=like.device), which builds a device object per call.
        if float32:
            import torch

            return like.new_empty(shape, dtype=torch.float32)
        return like.new_empty(shape)
    namespace = getattr(like, "__array_namespace__", None)
    if namespace is not None:
        try:
            xp = namespace()
            return xp.empty(shape, dtype=xp.float32 if float32 else like.dtype, device=like.device)
        except Exception:  # not a full array-API namespace: fall through to numpy on the host
            pass
    _, dtype, device, _ = _attend.describe(like, "q")
    dtype = "float32" if float32 else dtype
    if device == "cpu" and dtype in ("float32", "float16"):
        return np.empty(shape, dtype=dtype)
    raise TypeError(
        f"{name}: cannot allocate an output like {type(like).__name__} ({dtype} on {device}); pass out= explicitly"
    )


def _cuda_stream(q: Array) -> int:
    kind = _kind(q)
    if kind == "torch":
        if q.is_cuda:
            import torch

            # torch's raw current-stream query (what Triton and torch.compile's generated code
            # call) skips building a torch.cuda.Stream object: about 0.3 µs instead of 3-6 µs.
            raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
            if raw is not None:
                return int(raw(q.get_device()))
            return int(torch.cuda.current_stream(q.device).cuda_stream)
        return 0
    if kind == "other" and (type(q).__module__ or "").startswith("cupy"):
        import cupy  # type: ignore[import-not-found]

        return int(cupy.cuda.get_current_stream().ptr)
    return 0  # the default stream


def _flag(x: Any, what: str) -> bool:
    """x as a bool, or TypeError naming `what`: a string such as "False" is true to Python, so
    anything but a bool would be a silent wrong answer."""
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{what}: must be a bool; got {x!r}")
    return bool(x)


def _buffer_as_array(x: Any, what: str) -> Any:
    """A buffer-protocol object that neither numpy, torch nor DLPack describes (a ctypes array, a
    bytearray, a memoryview), as a numpy array over the same memory; anything else unchanged.
    numpy reads such a buffer's layout itself, including exporters that leave out their strides,
    which the extension's own buffer import does not handle."""
    if x is None or _kind(x) != "other" or hasattr(x, "__dlpack__"):
        return x
    try:
        memoryview(x).release()
    except TypeError:
        return x  # not a buffer: the extension says what it is not
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what}: cannot read its buffer as an array ({e})") from None


def _allocate(like: Array, shape: Tuple[Any, ...], float32: bool, name: str) -> Array:
    """_empty, with a result that cannot be allocated reported as a ValueError naming its shape
    (a silly size in q or v is the usual cause; numpy raises MemoryError for it)."""
    try:
        return _empty(like, shape, float32, name)
    except MemoryError:
        raise ValueError(
            f"{name}: cannot allocate the result's shape {tuple(shape)} (out of memory); check the shapes of q "
            "and v, or pass out="
        ) from None


def _text(s: str, what: str) -> str:
    """s, or ValueError naming `what` when it cannot be UTF-8 (a lone surrogate: C++ takes UTF-8)
    or holds a NUL (C strings, such as the messages naming it, would end there)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be valid text (no lone surrogates); got {s!r}") from None
    if "\0" in s:
        raise ValueError(f"{what} must not contain a NUL character; got {s!r}")
    return s


def _int64(x: int, what: str) -> int:
    """x as an int, or ValueError naming `what` when it does not fit attend's 64-bit ints."""
    if not -(2**63) <= int(x) < 2**63:
        raise ValueError(f"{what} does not fit in 64 bits; got {x!r}")
    return int(x)


def _real(x: Any, what: str) -> float:
    """x as a float, or ValueError naming `what` when it is past float's range (a huge int)."""
    try:
        return float(x)
    except OverflowError:
        raise ValueError(f"{what} does not fit a float; got {x!r}") from None


def _max_seqlen(given: Optional[int], cu_seqlens: Optional[Array], on_host: bool, name: str) -> int:
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, numbers.Integral):
            raise TypeError(f"{name}: must be an int or None; got {given!r}")
        return _int64(given, name + ":")
    if on_host or cu_seqlens is None:
        return 0  # attend reads host offsets itself
    # Device offsets: the kernels need the longest sequence up front (one device sync).
    if _shape(cu_seqlens, name)[0] < 2:
        return 0
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max())


def _bound(x: Any, side: str) -> int:
    if x is None:
        return -1
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"window: the {side} bound must be an int (-1 or None: unbounded); got {x!r}")
    return _int64(x, f"window: the {side} bound")


def _window(window: Optional[Tuple[Optional[int], Optional[int]]]) -> Tuple[int, int]:
    if window is None:
        return -1, -1
    if isinstance(window, (str, bytes)) or not isinstance(window, Sequence) or len(window) != 2:
        raise TypeError(f"window: must be None or a (left, right) pair; got {window!r}")
    return _bound(window[0], "left"), _bound(window[1], "right")


def _backend_name(backend: str) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend: must be a str (a backend name, 'auto' or 'measure'); got {backend!r}")
    if not backend:
        raise ValueError("backend: the name is empty; give a backend name, 'auto' or 'measure'")
    return _text(backend, "backend:")


def _selection(backend: str) -> _Scoped:
    _backend_name(backend)
    if backend == "auto":
        scoped = _backend_var.get()
        if scoped is not None:
            return scoped
    return backend, ()


def _check_options(layout: str, scale: Optional[float], causal_align: str, softcap: float) -> None:
    """TypeError (or ValueError, for text that is not text) naming the option that has the wrong
    type; the values themselves are checked by attend."""
    if not isinstance(layout, str):
        raise TypeError(f"layout: must be 'bshd' or 'bhsd'; got {layout!r}")
    if type(causal_align) is not str or causal_align not in ("top_left", "bottom_right"):
        if not isinstance(causal_align, str):
            raise TypeError(f"causal_align: must be 'top_left' or 'bottom_right'; got {causal_align!r}")
        _text(causal_align, "causal_align:")
    # type() first: isinstance against the numbers ABCs costs about 0.3 µs a call.
    if scale is not None and type(scale) is not float and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)):
        raise TypeError(f"scale: must be a real number or None; got {scale!r}")
    if type(softcap) is not float and (isinstance(softcap, bool) or not isinstance(softcap, numbers.Real)):
        raise TypeError(f"softcap: must be a real number (0 disables it); got {softcap!r}")


def _prepare(
    q: Array,
    k: Array,
    v: Array,
    *,
    backend: str,
    layout: str,
    scale: Optional[float],
    causal: bool,
    causal_align: str,
    window: Optional[Tuple[Optional[int], Optional[int]]],
    mask: Optional[Array],
    softcap: float,
    return_lse: bool,
    cu_seqlens_q: Optional[Array],
    cu_seqlens_k: Optional[Array],
    out: Optional[Array],
    max_seqlen_q: Optional[int],
    max_seqlen_k: Optional[int],
) -> Tuple[Tuple[Any, ...], Dict[str, Any], Tuple[Any, Any]]:
    """Positional and keyword arguments of _attend.attention / _attend.explain, and the (out, lse)
    arrays the caller gets back (``out`` is the caller's own array even when its bits were passed)."""
    if q is None or k is None or v is None:
        what = "q" if q is None else "k" if k is None else "v"
        raise TypeError(f"{what}: expected an array (numpy, torch, or any DLPack/buffer-protocol array); got None")
    callers_out = out  # returned as given, even when its buffer goes as an array over the same memory
    arrays = [q, k, v, out, mask, cu_seqlens_q, cu_seqlens_k]
    kinds = [None if x is None else _kind(x) for x in arrays]  # each array's kind, asked once
    if "other" in kinds:
        arrays = [_buffer_as_array(x, what) if kind == "other" else x for x, what, kind in zip(arrays, _ARRAYS, kinds)]
        kinds = [None if x is None else _kind(x) for x in arrays]
    causal, return_lse = _flag(causal, "causal"), _flag(return_lse, "return_lse")
    if "numpy" in kinds:
        for x, what, kind in zip(arrays, _ARRAYS, kinds):
            # numpy arrays DLPack cannot carry (object, structured or non-native byte order dtypes;
            # strides that are not whole elements) would only be reported as "not an array". An
            # ml_dtypes bfloat16 array goes as its bits (below) where bfloat16 is taken.
            if kind == "numpy":
                # A masked array's mask would be dropped (DLPack and the buffer carry its data only):
                # its masked entries read as data, or, for out, stay masked over the results.
                if isinstance(x, np.ma.MaskedArray):
                    raise TypeError(f"{what}: a numpy masked array, whose mask attend would ignore; pass its data "
                                    "(.data, or .filled(value)) and, for keys to drop, a mask= argument")
                takes = _TAKES[what]
                bf16_ok = "bfloat16" in takes
                # (long double and ml_dtypes' other types are numbers DLPack cannot carry either)
                if (x.dtype.kind not in "fiub" or x.dtype.itemsize > 8) and not (bf16_ok and _is_ml_bfloat16(x)):
                    raise TypeError(f"{what}: dtype must be {takes}; got {x.dtype}")
                if not x.dtype.isnative:
                    raise TypeError(f"{what}: dtype must be {takes} in native byte order; got {x.dtype} "
                                    f"(byte order {x.dtype.byteorder!r})")
                if any(st % x.itemsize for st in x.strides):
                    raise ValueError(f"{what}: strides must be whole elements; got byte strides {x.strides}")
    if "torch" in kinds:
        # Inputs are read detached (torch's __dlpack__ refuses what requires grad) and with torch's
        # negative bit resolved: a lazily negated view (torch._neg_view) holds the values before
        # the negation, and DLPack carries that memory as it is, so reading it as it is would be a
        # silent wrong answer.
        for i in (0, 1, 2, 4, 5, 6):
            x = arrays[i]
            if kinds[i] == "torch":
                if x.requires_grad:
                    x = x.detach()
                arrays[i] = x.resolve_neg() if x.is_neg() else x
        if kinds[3] == "torch":
            if arrays[3].is_neg():
                raise ValueError("out: has torch's negative bit set (a lazily negated view), so writing it in place "
                                 "would store negated results; pass a tensor without it")
            if arrays[3].requires_grad:
                import torch

                # As torch's own out= arguments: autograd cannot follow a write into out.
                if torch.is_grad_enabled():
                    raise ValueError("out: requires grad, and attend writes it in place without autograd (torch's "
                                     "out= arguments refuse such tensors too); pass one that does not, or call under "
                                     "torch.no_grad()")
    q, k, v, out, mask, cu_seqlens_q, cu_seqlens_k = arrays
    _check_options(layout, scale, causal_align, softcap)
    name, allow = _selection(backend)
    window_left, window_right = _window(window)
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    out_shape, lse_shape = _output_shapes(_shape(q, "q"), _shape(v, "v"), layout, varlen)
    if out is None:
        out = callers_out = _allocate(q, out_shape, False, "out")
    lse = _allocate(q, lse_shape, True, "lse") if return_lse else None
    on_host = not varlen or _device_kind(q, "q") == "cpu"
    results = (callers_out, lse)
    bf16_bits: List[str] = []
    if "numpy" in kinds:  # (an out allocated here is never ml_dtypes' bfloat16)
        as_bits = [_is_ml_bfloat16(x) for x in (q, k, v, out, mask)]
        bf16_bits = [what for what, bits in zip(("q", "k", "v", "out", "mask"), as_bits) if bits]
        q, k, v, out, mask = (x.view(np.uint16) if bits else x for x, bits in zip((q, k, v, out, mask), as_bits))
    args = (q, k, v, out, lse, mask, cu_seqlens_q, cu_seqlens_k)
    kwargs: Dict[str, Any] = dict(
        layout=layout,
        scale=None if scale is None else _real(scale, "scale:"),
        causal=causal,
        causal_align=causal_align,
        window_left=window_left,
        window_right=window_right,
        softcap=_real(softcap, "softcap:"),
        max_seqlen_q=_max_seqlen(max_seqlen_q, cu_seqlens_q, on_host, "max_seqlen_q"),
        max_seqlen_k=_max_seqlen(max_seqlen_k, cu_seqlens_k, on_host, "max_seqlen_k"),
        backend=name,
        allow=list(allow),
        deny=[],
        bf16_bits=bf16_bits,
    )
    return args, kwargs, results


# ------------------------------------------------------------------------------------------------
# Public API


def attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    backend: str = "auto",
    layout: str = "bshd",
    scale: Optional[float] = None,
    causal: bool = False,
    causal_align: str = "top_left",
    window: Optional[Tuple[Optional[int], Optional[int]]] = None,
    mask: Optional[Array] = None,
    softcap: float = 0.0,
    return_lse: bool = False,
    cu_seqlens_q: Optional[Array] = None,
    cu_seqlens_k: Optional[Array] = None,
    out: Optional[Array] = None,
    max_seqlen_q: Optional[int] = None,
    max_seqlen_k: Optional[int] = None,
) -> Any:
    """Exact softmax attention: ``softmax(scale * q k^T [+ mask]) v``, without copying the inputs.

    Shapes (B batch, S sequence, H heads, D head dim)::

        layout "bshd": q [B, Sq, Hq, D]   k [B, Skv, Hkv, D]   v [B, Skv, Hkv, Dv]   out [B, Sq, Hq, Dv]
        layout "bhsd": q [B, Hq, Sq, D]   k [B, Hkv, Skv, D]   v [B, Hkv, Skv, Dv]   out [B, Hq, Sq, Dv]
        varlen:        q [total_q, Hq, D] k/v [total_k, Hkv, D*]  cu_seqlens_q/k int32 [B + 1]
        lse (float32): [B, Hq, Sq]; varlen [Hq, total_q]. Natural log.

    Hq must be a multiple of Hkv (GQA/MQA). Inputs are numpy arrays, torch tensors (CPU or
    CUDA) or any ``__dlpack__`` exporter, of dtype float32, float16 or bfloat16; any
    non-negative strides are honoured as they are. The result has the input's array type and
    device (written into ``out`` when given).

    Args:
        backend: a backend name (see :func:`backends`), ``"auto"`` (highest priority that
            supports the call; inside ``use_backend(...)`` the scoped choice) or ``"measure"``.
        scale: default ``1 / sqrt(D)``.
        causal, causal_align: causal band aligned ``"top_left"`` (PyTorch ``is_causal``) or
            ``"bottom_right"`` (FlashAttention, KV-cache decode).
        window: ``(left, right)`` keys visible around the diagonal; ``None``/``-1`` unbounded.
        mask: broadcastable to ``[B, Hq, Sq, Skv]``; bool keeps ``True`` keys, float is added
            to the scores (varlen: ``[B, Hq, max_seqlen_q, max_seqlen_k]``, local positions).
        softcap: ``s = softcap * tanh(s / softcap)`` before the mask; 0 disables it.
        return_lse: also return the log-sum-exp of each row.
        max_seqlen_q, max_seqlen_k: varlen on CUDA only: longest sequence (computed from the
            offsets, with one device sync, when omitted).

    A row that sees no key gives output 0 and lse -inf.

    Returns:
        ``out``, or ``(out, lse)`` when ``return_lse``.

    Raises:
        TypeError: an argument has the wrong type or dtype (the message names it).
        ValueError: shapes, strides, devices or option values are wrong (named likewise).
        UnsupportedError: no backend supports the call; the message lists every reason.
        RuntimeError: a backend failed while running.
    """
    args, kwargs, results = _prepare(
        q,
        k,
        v,
        backend=backend,
        layout=layout,
        scale=scale,
        causal=causal,
        causal_align=causal_align,
        window=window,
        mask=mask,
        softcap=softcap,
        return_lse=return_lse,
        cu_seqlens_q=cu_seqlens_q,
        cu_seqlens_k=cu_seqlens_k,
        out=out,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
    )
    _attend.attention(*args, **kwargs, cuda_stream=_cuda_stream(args[0]), forward=list(_forward_var.get()))
    return results if return_lse else results[0]


def explain(
    q: Array,
    k: Array,
    v: Array,
    *,
    backend: str = "auto",
    layout: str = "bshd",
    scale: Optional[float] = None,
    causal: bool = False,
    causal_align: str = "top_left",
    window: Optional[Tuple[Optional[int], Optional[int]]] = None,
    mask: Optional[Array] = None,
    softcap: float = 0.0,
    return_lse: bool = False,
    cu_seqlens_q: Optional[Array] = None,
    cu_seqlens_k: Optional[Array] = None,
    out: Optional[Array] = None,
    max_seqlen_q: Optional[int] = None,
    max_seqlen_k: Optional[int] = None,
) -> List[Explanation]:
    """Which backend would run :func:`attention` with these arguments, and why not the others.

    Returns one :class:`Explanation` ``(backend, supported, reason)`` per backend, highest
    priority first; the one that would run has ``supported`` true and an empty ``reason``
    (``.selected``). Runs nothing (``out``/``lse`` are allocated when not given, never written).
    Malformed calls raise like :func:`attention`.
    """
    args, kwargs, _ = _prepare(
        q,
        k,
        v,
        backend=backend,
        layout=layout,
        scale=scale,
        causal=causal,
        causal_align=causal_align,
        window=window,
        mask=mask,
        softcap=softcap,
        return_lse=return_lse,
        cu_seqlens_q=cu_seqlens_q,
        cu_seqlens_k=cu_seqlens_k,
        out=out,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
    )
    return [
        Explanation(name, supported, reason) for name, supported, _, reason in _attend.explain(*args, **kwargs)
    ]


def backends() -> List[Dict[str, Any]]:
    """Every backend of this build, highest priority first.

    Each is a dict with ``name``, ``devices`` (``"cpu"``/``"cuda"``), ``dtypes``
    (``"float32"``, ``"float16"``, ``"bfloat16"``), ``features`` (``causal``, ``window``,
    ``mask_additive``, ``mask_keep``, ``gqa``, ``softcap``, ``lse``, ``varlen``,
    ``head_dim_v_differs``, ``bottom_right``), ``priority``, and also ``description``,
    ``min_head_dim``, ``max_head_dim``, ``head_dim_multiple`` and ``exact``.
    """
    return list(_attend.backends())


def load_plugin(path: Union[str, "os.PathLike[str]"]) -> str:
    """Loads a backend from a shared library and adds it to the registry ``attention`` selects from.

    The library exports ``attend_plugin_entry`` with the C ABI of ``include/attend/plugin.h`` (any
    language that can export a C function). Returns the backend's name; it then appears in
    :func:`backends`, :func:`explain` and can be chosen by name or by priority.

    Raises:
        TypeError: ``path`` is not a string or path-like.
        ValueError: the library cannot be opened, does not export the entry point, has another ABI
            version, declares invalid traits, or its backend name is already registered.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; got {type(path).__name__}")
    fs_path = os.fspath(path)
    return str(_attend.load_plugin(_text(fs_path, "path") if isinstance(fs_path, str) else fs_path))


@contextlib.contextmanager
def use_backend(name: Union[str, Sequence[str]]) -> Iterator[None]:
    """Within the block, ``backend="auto"`` calls run on `name`.

    `name` is a backend name, ``"auto"``, ``"measure"``, or a list of names (auto-selection
    among them only). The choice is per thread and per asyncio task (a ``contextvars``
    variable), nests, and is restored on exit, also when the block raises. An explicit
    ``backend=`` argument still wins. Unknown names raise ValueError on entry.
    """
    known = list(_attend.backend_names())
    try:
        names = [name] if isinstance(name, str) else list(name)  # any iterable of names
    except TypeError:
        raise TypeError(f"use_backend: expected a backend name or a list of names; got {name!r}") from None
    if not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"use_backend: expected a backend name or a list of names; got {name!r}")
    for n in names:
        if isinstance(name, str) and n in ("auto", "measure"):
            continue
        if n in ("auto", "measure"):
            raise ValueError(f"use_backend: a list names backends to choose among; {n!r} is a single choice, not a backend")
        if n not in known:
            raise ValueError(f"use_backend: unknown backend {n!r}; known: {', '.join(known)}, auto, measure")
    scoped: _Scoped = (name, ()) if isinstance(name, str) else ("auto", tuple(names))
    token = _backend_var.set(scoped)
    try:
        yield
    finally:
        _backend_var.reset(token)


@contextlib.contextmanager
def forward_context(
    timestep: Optional[float] = None, layer: Optional[int] = None, **extra: Union[bool, int, float, str]
) -> Iterator[None]:
    """Per-step metadata that reaches the backends as ``attend::forward_context``.

    Within the block every attend call sees `timestep`, `layer` and the `extra` key/values
    (int, float, bool or str). Scopes nest (an inner scope overrides only what it sets), are per
    thread and per asyncio task, and are restored on exit. Each call into C++ installs the
    scopes as ``attend::forward_context`` guards on the calling thread for its duration.
    """
    if timestep is not None and (isinstance(timestep, bool) or not isinstance(timestep, numbers.Real)):
        raise TypeError(f"forward_context: timestep must be a real number; got {timestep!r}")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, numbers.Integral)):
        raise TypeError(f"forward_context: layer must be an int; got {layer!r}")
    values: Dict[str, Union[bool, int, float, str]] = {}
    for key, value in extra.items():
        _text(key, "forward_context: a key")
        what = f"forward_context: value of {key!r}"
        # numpy's scalars count as the Python numbers they hold, as they do for layer and timestep
        if isinstance(value, (bool, np.bool_)):
            values[key] = bool(value)
        elif isinstance(value, numbers.Integral):
            values[key] = _int64(value, what)
        elif isinstance(value, numbers.Real):
            values[key] = _real(value, what)
        elif isinstance(value, str):
            values[key] = _text(value, what)
        else:
            raise TypeError(f"{what} must be int, float, bool or str; got {type(value).__name__}")
    level: _ForwardLevel = (
        None if timestep is None else _real(timestep, "forward_context: timestep"),
        None if layer is None else _int64(layer, "forward_context: layer"),
        values,
    )
    token = _forward_var.set(_forward_var.get() + (level,))
    try:
        yield
    finally:
        _forward_var.reset(token)


# ------------------------------------------------------------------------------------------------
# Test hooks


def _current_backend() -> Optional[_Scoped]:
    """The scoped choice of this thread/task: (name, allow list), or None."""
    return _backend_var.get()


def _current_forward_context() -> Dict[str, Any]:
    """What a backend run through attend::attention on this thread sees of the forward context:
    ``present``, ``timestep``, ``layer``, ``depth`` and ``values``."""
    return dict(_attend.current_forward_context(list(_forward_var.get())))


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, str):
        return dtype
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype).replace("torch.", "")


def _tolerance(dtype: Any) -> Dict[str, float]:
    """attend's tolerance table (src/core/check.cpp, Note [Tolerances]) for `dtype`: a dict with
    ``atol``, ``rtol``, ``lse_atol`` and ``lse_rtol``. An element passes when
    ``|out - ref| <= atol + rtol * |ref|``."""
    return dict(_attend.tolerance(_dtype_name(dtype)))
