"""attend.torch: attend.attention for torch tensors as the torch.library custom op
``attend::attention``, so ``torch.compile`` traces through it (its fake implementation gives
the output shapes without running anything).

    import attend.torch
    out = attend.torch.attention(q, k, v, causal=True)          # CPU or CUDA tensors
    compiled = torch.compile(lambda q, k, v: attend.torch.attention(q, k, v))

CUDA calls run on the current torch CUDA stream. The op is forward-only (no autograd formula).
On torch without ``torch.library.custom_op`` (< 2.4) the function is a plain eager call.
"""

# No `from __future__ import annotations`: torch.library reads these annotations as types.
import numbers
from typing import Any, Optional, Tuple

import torch

from . import _api

__all__ = ["attention", "HAS_CUSTOM_OP"]

_SYM_INT: Any = getattr(torch, "SymInt", ())
_SYM_FLOAT: Any = getattr(torch, "SymFloat", ())

#: True when ``attend::attention`` is registered with torch.library.
HAS_CUSTOM_OP: bool = hasattr(torch, "library") and hasattr(torch.library, "custom_op")


def _run(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor],
    cu_seqlens_q: Optional[torch.Tensor],
    cu_seqlens_k: Optional[torch.Tensor],
    backend: str,
    layout: str,
    scale: Optional[float],
    causal: bool,
    causal_align: str,
    window_left: int,
    window_right: int,
    softcap: float,
    return_lse: bool,
    max_seqlen_q: int,
    max_seqlen_k: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    result = _api.attention(
        q,
        k,
        v,
        backend=backend,
        layout=layout,
        scale=scale,
        causal=causal,
        causal_align=causal_align,
        window=(window_left, window_right),
        mask=mask,
        softcap=softcap,
        return_lse=return_lse,
        cu_seqlens_q=cu_seqlens_q,
        cu_seqlens_k=cu_seqlens_k,
        max_seqlen_q=max_seqlen_q if max_seqlen_q >= 0 else None,
        max_seqlen_k=max_seqlen_k if max_seqlen_k >= 0 else None,
    )
    if return_lse:
        return result[0], result[1]
    # custom ops return a fixed number of tensors: an empty lse stands for "not requested".
    return result, q.new_empty((0,), dtype=torch.float32)


def _fake(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor],
    cu_seqlens_q: Optional[torch.Tensor],
    cu_seqlens_k: Optional[torch.Tensor],
    backend: str,
    layout: str,
    scale: Optional[float],
    causal: bool,
    causal_align: str,
    window_left: int,
    window_right: int,
    softcap: float,
    return_lse: bool,
    max_seqlen_q: int,
    max_seqlen_k: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    out_shape, lse_shape = _api._output_shapes(tuple(q.shape), tuple(v.shape), layout, varlen)
    out = q.new_empty(out_shape)
    lse = q.new_empty(lse_shape if return_lse else (0,), dtype=torch.float32)
    return out, lse


if HAS_CUSTOM_OP:
    _op: Any = torch.library.custom_op("attend::attention", mutates_args=())(_run)
    _op.register_fake(_fake)
else:  # pragma: no cover - old torch
    _op = _run


def _max_seqlen(given: Optional[int], name: str) -> int:
    """The op's encoding of max_seqlen: -1 for None (not given), else the checked value."""
    if given is None:
        return -1
    if isinstance(given, _SYM_INT):  # a symbolic size under torch.compile: the op checks it when it runs
        return given  # type: ignore[return-value]
    if isinstance(given, bool) or not isinstance(given, numbers.Integral):
        raise TypeError(f"{name}: must be an int or None; got {given!r}")
    if given < 0:
        raise ValueError(f"{name}: must be non-negative; got {given}")
    return _api._int64(given, name + ":")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    backend: str = "auto",
    layout: str = "bshd",
    scale: Optional[float] = None,
    causal: bool = False,
    causal_align: str = "top_left",
    window: Optional[Tuple[Optional[int], Optional[int]]] = None,
    mask: Optional[torch.Tensor] = None,
    softcap: float = 0.0,
    return_lse: bool = False,
    cu_seqlens_q: Optional[torch.Tensor] = None,
    cu_seqlens_k: Optional[torch.Tensor] = None,
    max_seqlen_q: Optional[int] = None,
    max_seqlen_k: Optional[int] = None,
) -> Any:
    """attend.attention for torch tensors through the ``attend::attention`` custom op.

    Same arguments and results as :func:`attend.attention`, except that the outputs are always
    freshly allocated (no ``out=``). The backend is resolved when the op runs, so
    ``attend.use_backend`` and ``attend.forward_context`` scopes apply to compiled code too.
    """
    # The op's schema would turn a wrong type into torch's RuntimeError, and float()/int() would turn
    # True, "0.5" or 5.9 into numbers: each argument is checked here first, as attend.attention does.
    for x, what in ((q, "q"), (k, "k"), (v, "v")):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what}: attend.torch.attention takes torch tensors; got {type(x).__name__}")
    for x, what in ((mask, "mask"), (cu_seqlens_q, "cu_seqlens_q"), (cu_seqlens_k, "cu_seqlens_k")):
        if x is not None and not isinstance(x, torch.Tensor):
            raise TypeError(f"{what}: must be a torch tensor or None; got {type(x).__name__}")
    _api._backend_name(backend)
    # (A symbolic scale under torch.compile's dynamic shapes goes to the op as it is.)
    symbolic_scale = isinstance(scale, _SYM_FLOAT)
    _api._check_options(layout, None if symbolic_scale else scale, causal_align, softcap)
    window_left, window_right = _api._window(window)
    out, lse = _op(
        q,
        k,
        v,
        mask,
        cu_seqlens_q,
        cu_seqlens_k,
        backend,
        layout,
        None if scale is None else scale if symbolic_scale else _api._real(scale, "scale:"),
        _api._flag(causal, "causal"),
        causal_align,
        window_left,
        window_right,
        _api._real(softcap, "softcap:"),
        _api._flag(return_lse, "return_lse"),
        _max_seqlen(max_seqlen_q, "max_seqlen_q"),
        _max_seqlen(max_seqlen_k, "max_seqlen_k"),
    )
    return (out, lse) if return_lse else out
