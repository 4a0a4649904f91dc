"""attend: exact softmax attention through interchangeable backends, for numpy, PyTorch and any
DLPack array, without copying.

    import attend
    out = attend.attention(q, k, v, causal=True)        # q [B, S, H, D] ("bshd")
    attend.backends()                                   # what this build can run
    attend.explain(q, k, v, causal=True)                # which backend runs it, and why not the others
    with attend.use_backend("reference"): ...           # scoped choice (per thread / task)
    with attend.forward_context(timestep=10, layer=3): ...

`attend.torch.attention` is the same call as a torch.library custom op (torch.compile-able);
it is imported on first use, so `import attend` never imports torch. See docs/python.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._api import (
    Explanation,
    UnsupportedError,
    __version__,
    _current_backend,
    _current_forward_context,
    _tolerance,
    attention,
    backends,
    explain,
    forward_context,
    load_plugin,
    use_backend,
)

if TYPE_CHECKING:
    from . import torch as torch

__all__ = [
    "Explanation",
    "UnsupportedError",
    "__version__",
    "attention",
    "backends",
    "explain",
    "forward_context",
    "load_plugin",
    "use_backend",
]


def __getattr__(name: str) -> Any:
    # attend.torch imports torch (slow, optional): only when it is asked for.
    if name == "torch":
        return importlib.import_module(".torch", __name__)
    raise AttributeError(f"module 'attend' has no attribute {name!r}")
