"""PyTorch paths: torch tensors in and out (CPU and CUDA), the current CUDA stream, and the
attend::attention custom op under torch.library.opcheck and torch.compile. Skipped, with the
reason, where torch (or a CUDA device) is absent. The backend x dtype x case matrix of
test_attention.py also runs CUDA backends on torch CUDA tensors and bfloat16 through torch."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import NO_TORCH_REASON, assert_close, reference

torch = pytest.importorskip("torch", reason=NO_TORCH_REASON)

import attend  # noqa: E402
import attend.torch  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
NO_CUDA = "torch has no CUDA device here"


def cuda_backends():
    return [b["name"] for b in attend.backends() if "cuda" in b["devices"]]


def inputs(device, dtype=torch.float32, shape=(2, 9, 4, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(dtype).to(device) for _ in range(3)]


def ref_of(q, k, v, **kwargs):
    return reference(*(x.detach().float().cpu().numpy().astype(np.float64) for x in (q, k, v)), **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_torch_in_torch_out(device, dtype):
    q, k, v = inputs(device, dtype)
    out, lse = attend.attention(q, k, v, causal=True, return_lse=True)
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.device == q.device
    assert lse.dtype == torch.float32 and lse.device == q.device and tuple(lse.shape) == (2, 4, 9)
    want_out, want_lse = ref_of(q, k, v, causal=True)
    name = str(dtype).replace("torch.", "")
    assert_close(out, want_out, name)
    assert_close(lse, want_lse, name, what="lse", lse=True)


@pytest.mark.parametrize("device", DEVICES)
def test_strided_views_and_out(device):
    base = torch.randn(2, 4, 9, 64, device=device)  # bhsd storage with a padded head dim
    q = base[..., :32].transpose(1, 2)  # bshd view, non-contiguous in every way
    k = base[..., 32:].transpose(1, 2)
    v = base[..., 16:48].transpose(1, 2)
    assert not q.is_contiguous()
    buffer = torch.full((2, 9, 4, 96), 7.0, device=device)
    out = attend.attention(q, k, v, out=buffer[..., 32:64])
    assert out.data_ptr() == buffer[..., 32:64].data_ptr()
    assert (buffer[..., :32] == 7).all() and (buffer[..., 64:] == 7).all()
    assert_close(out, ref_of(q, k, v)[0], "float32")


def test_requires_grad_inputs_are_read_detached():
    q, k, v = (x.requires_grad_() for x in inputs("cpu"))
    out = attend.attention(q, k, v)
    assert not out.requires_grad
    assert_close(out, ref_of(q, k, v)[0], "float32")


@pytest.mark.parametrize("device", DEVICES)
def test_tensors_the_fast_path_leaves_to_dlpack(device):
    """Note [torch fast path] in python/src/module.cpp: a plain torch.Tensor is read through its
    attributes; everything else goes through DLPack as before, refusals and messages included."""
    q, k, v = inputs(device)
    want = ref_of(q, k, v)[0]
    # A subclass is read through DLPack (an nn.Parameter that does not require grad; one that does
    # is read detached, as a plain tensor).
    for requires_grad in (False, True):
        params = [torch.nn.Parameter(x.clone(), requires_grad=requires_grad) for x in (q, k, v)]
        assert_close(attend.attention(*params), want, "float32")
    # Storage offsets: views that start past their storage's first element.
    base = torch.randn(3, *q.shape, device=device)
    views = [base[i] for i in range(3)]
    assert_close(attend.attention(*views), ref_of(*views)[0], "float32")
    # A lazily negated view is read as its values (-q), not as the memory under it (q), which
    # DLPack would carry as it is; as an out, it would store negated results, so it is refused.
    neg = torch._neg_view(q)
    assert neg.is_neg()
    assert_close(attend.attention(neg, k, v), ref_of(-q, k, v)[0], "float32")
    with pytest.raises(ValueError, match=r"^out: has torch's negative bit set"):
        attend.attention(q, k, v, out=torch._neg_view(torch.empty_like(q)))
    # An out that requires grad is refused while autograd records, as torch's out= arguments do,
    # and written under torch.no_grad().
    out = torch.empty_like(q).requires_grad_()
    with pytest.raises(ValueError, match=r"^out: requires grad"):
        attend.attention(q, k, v, out=out)
    with torch.no_grad():
        attend.attention(q, k, v, out=out)
    assert_close(out.detach(), want, "float32")
    # A tensor without storage (a functorch wrapper under vmap) is refused, naming the argument.
    with pytest.raises(TypeError, match=r"^q: expected .*doesn't have storage"):
        torch.vmap(lambda x: attend.attention(x, k, v))(torch.randn(3, *q.shape, device=device))
    # A negatively viewed cu_seqlens is read as its values too.
    packed = [x.reshape(-1, *x.shape[2:]) for x in (q, k, v)]
    cu = torch.tensor([0, 9, 18], dtype=torch.int32, device=device)
    want_varlen = attend.attention(*packed, cu_seqlens_q=cu, cu_seqlens_k=cu)
    got = attend.attention(*packed, cu_seqlens_q=torch._neg_view(-cu), cu_seqlens_k=cu)
    assert torch.equal(got, want_varlen)
    # A dtype attend does not take is named as before.
    with pytest.raises(TypeError, match=r"^q: dtype must be float32, float16 or bfloat16; got float64"):
        attend.attention(q.double(), k, v)
    # A call with no element (Sq = 0) still returns an empty result.
    empty = attend.attention(q[:, :0], k, v)
    assert tuple(empty.shape) == (2, 0, 4, 32)


def test_device_mismatch_is_a_value_error():
    if not CUDA:
        pytest.skip(NO_CUDA)
    q, k, v = inputs("cpu")
    with pytest.raises(ValueError, match=r"^k: device must match q"):
        attend.attention(q, k.cuda(), v)


@pytest.mark.parametrize("backend", cuda_backends() or ["<none>"])
def test_cuda_side_stream(backend):
    if backend == "<none>":
        pytest.skip("this build has no CUDA backend")
    if not CUDA:
        pytest.skip(NO_CUDA)
    q, k, v = inputs("cuda", torch.float16, shape=(2, 256, 8, 64))
    want = ref_of(q, k, v, causal=True)[0]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        # Work queued on the side stream right before: attend must run after it on that stream.
        big = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
        for _ in range(4):
            big = big @ big * 1e-3
        q2 = q + big[0, 0] * 0  # produced by the side stream, late
        out = attend.attention(q2, k, v, causal=True, backend=backend)
    side.synchronize()
    assert_close(out, want, "float16")


def _churn_workspaces():
    """Calls whose workspaces dwarf any captured call's, on the current stream and on ten more: with
    attend's per-stream workspace cache under a captured call, they would regrow and evict (free)
    the memory its replays write (Note [Workspace under capture] in src/core/attention.cpp)."""
    q = torch.randn(4, 1, 32, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(4, 30000, 4, 128, device="cuda", dtype=torch.bfloat16)
    attend.attention(q, k, k, backend="flash_cuda")
    for _ in range(10):
        with torch.cuda.stream(torch.cuda.Stream()):
            attend.attention(q, k, k, backend="flash_cuda")
    torch.cuda.synchronize()


@pytest.mark.parametrize("with_out", [True, False])
@pytest.mark.parametrize("backend", cuda_backends() or ["<none>"])
def test_cuda_graph_capture(backend, with_out):
    """A call captured by torch.cuda.graph (torch's global capture mode) replays correctly after
    other calls churned attend's workspaces: the graph owns the workspace its replays use."""
    if backend == "<none>":
        pytest.skip("this build has no CUDA backend")
    if not CUDA:
        pytest.skip(NO_CUDA)
    q, k, v = inputs("cuda", torch.bfloat16, shape=(2, 700, 8, 128), seed=3)
    want = ref_of(q, k, v, causal=True)[0]
    out = torch.empty_like(q) if with_out else None
    side = torch.cuda.Stream()  # warm-up on a side stream, as torch.cuda.graph's recipe asks
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        attend.attention(q, k, v, out=out, causal=True, backend=backend)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = attend.attention(q, k, v, out=out, causal=True, backend=backend)
    _churn_workspaces()
    got.fill_(float("nan"))
    graph.replay()
    graph.replay()
    torch.cuda.synchronize()
    assert_close(got, want, "bfloat16")


def test_cuda_graphs_under_torch_compile(monkeypatch):
    """torch.compile's CUDA graphs (the "cudagraphs" backend: what mode="reduce-overhead" uses,
    without Inductor's code generation) capture the op and replay it correctly after churn; the
    replays do not call into attend (so they are replays, not eager calls)."""
    if not CUDA:
        pytest.skip(NO_CUDA)
    if not cuda_backends():
        pytest.skip("this build has no CUDA backend")
    if not attend.torch.HAS_CUSTOM_OP:
        pytest.skip("torch.library.custom_op is not available")
    from torch._dynamo.utils import counters

    from attend import _api

    class Counting:  # the extension module, counting its attention calls
        def __init__(self, module):
            self.module, self.calls = module, 0

        def __getattr__(self, name):
            return getattr(self.module, name)

        def attention(self, *args, **kwargs):
            self.calls += 1
            return self.module.attention(*args, **kwargs)

    counting = Counting(_api._attend)
    monkeypatch.setattr(_api, "_attend", counting)
    q, k, v = inputs("cuda", torch.float16, shape=(2, 300, 8, 64), seed=4)
    want = ref_of(q * 2, k, v, causal=True)[0]
    counters.clear()
    with attend.use_backend("flash_cuda"):
        compiled = torch.compile(lambda q, k, v: attend.torch.attention(q * 2, k, v, causal=True), backend="cudagraphs")
        for _ in range(3):  # the first runs record; later ones replay
            got = compiled(q, k, v)
        assert counting.calls >= 1
        _churn_workspaces()
        churned = counting.calls
        for _ in range(3):
            got = compiled(q, k, v).clone()
        replays_called_attend = counting.calls - churned
    torch.cuda.synchronize()
    assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])
    assert replays_called_attend < 3, "the compiled calls ran eagerly, not from a CUDA graph"
    assert_close(got, want, "float16")


def test_cuda_varlen_computes_max_seqlen():
    if not CUDA:
        pytest.skip(NO_CUDA)
    if not cuda_backends():
        pytest.skip("this build has no CUDA backend")
    cu_q = torch.tensor([0, 5, 12], dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0, 9, 20], dtype=torch.int32, device="cuda")
    q = torch.randn(12, 4, 64, device="cuda", dtype=torch.float16)
    k = torch.randn(20, 2, 64, device="cuda", dtype=torch.float16)
    v = torch.randn(20, 2, 64, device="cuda", dtype=torch.float16)
    out, lse = attend.attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=True, return_lse=True)
    want_out, want_lse = reference(
        *(x.float().cpu().numpy().astype(np.float64) for x in (q, k, v)),
        cu_seqlens_q=cu_q.cpu().numpy(),
        cu_seqlens_k=cu_k.cpu().numpy(),
        causal=True,
    )
    assert_close(out, want_out, "float16")
    assert_close(lse, want_lse, "float16", what="lse", lse=True)


# ------------------------------------------------------------------------------------------------
# The custom op


def test_custom_op_is_registered():
    assert attend.torch.HAS_CUSTOM_OP, f"torch {torch.__version__} has no torch.library.custom_op"
    assert hasattr(torch.ops.attend, "attention")


def op_args(q, k, v, return_lse=True, causal=True):
    return (q, k, v, None, None, None, "auto", "bshd", None, causal, "top_left", -1, -1, 0.0, return_lse, 0, 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("return_lse", [True, False])
def test_opcheck(device, return_lse):
    if not attend.torch.HAS_CUSTOM_OP:
        pytest.skip("torch.library.custom_op is not available")
    q, k, v = inputs(device, shape=(1, 8, 2, 32))
    torch.library.opcheck(torch.ops.attend.attention.default, op_args(q, k, v, return_lse))


@pytest.mark.parametrize("device", DEVICES)
def test_attend_torch_attention_matches(device):
    q, k, v = inputs(device)
    out = attend.torch.attention(q, k, v, causal=True, window=(4, None))
    assert_close(out, ref_of(q, k, v, causal=True, window=(4, None))[0], "float32")
    out, lse = attend.torch.attention(q, k, v, return_lse=True)
    want_out, want_lse = ref_of(q, k, v)
    assert_close(out, want_out, "float32")
    assert_close(lse, want_lse, "float32", what="lse", lse=True)
    # Inputs that require grad are read as they are; a backward pass through the op raises
    # (it has none), rather than leaving q, k and v without their gradients.
    grads = [x.clone().requires_grad_() for x in (q, k, v)]
    out = attend.torch.attention(*grads, causal=True)
    assert_close(out.detach(), ref_of(q, k, v, causal=True)[0], "float32")
    if attend.torch.HAS_CUSTOM_OP:
        with pytest.raises(RuntimeError, match="no autograd formula was registered"):
            (out + grads[0]).sum().backward()
    # Flags are bools, as in attend.attention: "False" is a true string.
    with pytest.raises(TypeError, match=r"^causal: must be a bool; got 'False'"):
        attend.torch.attention(q, k, v, causal="False")
    with pytest.raises(TypeError, match=r"^return_lse: must be a bool"):
        attend.torch.attention(q, k, v, return_lse=1)


def test_attend_torch_attention_checks_arguments_as_attention_does():
    """Each wrong argument gets the TypeError/ValueError attend.attention gives, naming it: not
    torch's RuntimeError from the op's schema, and not a silent float()/int() of True, "0.5" or 5.9."""
    q, k, v = inputs("cpu", shape=(1, 5, 2, 16))
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    packed = [x.reshape(5, 2, 16) for x in (q, k, v)]
    cases = [
        (dict(scale=True), TypeError, r"^scale: must be a real number"),
        (dict(scale="0.25"), TypeError, r"^scale: must be a real number"),
        (dict(scale=10**400), ValueError, r"^scale: does not fit a float"),
        (dict(softcap=True), TypeError, r"^softcap: must be a real number"),
        (dict(softcap="30"), TypeError, r"^softcap: must be a real number"),
        (dict(softcap=None), TypeError, r"^softcap: must be a real number"),
        (dict(layout=1), TypeError, r"^layout: must be 'bshd' or 'bhsd'"),
        (dict(backend=None), TypeError, r"^backend: must be a str"),
        (dict(backend=""), ValueError, r"^backend: the name is empty"),
        (dict(causal_align=None), TypeError, r"^causal_align: must be"),
    ]
    for kwargs, error, message in cases:
        for call in (attend.attention, attend.torch.attention):
            with pytest.raises(error, match=message):
                call(q, k, v, **kwargs)
    bounds = [
        (dict(max_seqlen_q=-7), ValueError, r"^max_seqlen_q(/k)?: must be non-negative"),
        (dict(max_seqlen_q=5.9), TypeError, r"^max_seqlen_q: must be an int or None"),
        (dict(max_seqlen_k="5"), TypeError, r"^max_seqlen_k: must be an int or None"),
        (dict(max_seqlen_q=2**70), ValueError, r"^max_seqlen_q: does not fit in 64 bits"),
    ]
    for kwargs, error, message in bounds:
        for call in (attend.attention, attend.torch.attention):
            with pytest.raises(error, match=message):
                call(*packed, cu_seqlens_q=cu, cu_seqlens_k=cu, **kwargs)
    with pytest.raises(TypeError, match=r"^q: attend.torch.attention takes torch tensors; got list"):
        attend.torch.attention([[1.0]], k, v)
    # (attend.attention takes any arrays; the op, torch tensors only.)
    with pytest.raises(TypeError, match=r"^mask: must be a torch tensor or None; got ndarray"):
        attend.torch.attention(q, k, v, mask=np.ones((5, 5), dtype=bool))
    with pytest.raises(TypeError, match=r"^cu_seqlens_q: must be a torch tensor or None; got list"):
        attend.torch.attention(*packed, cu_seqlens_q=[0, 2, 5], cu_seqlens_k=cu)
    # A bound on a call without cu_seqlens is refused by both, and a looser bound is taken by both.
    for call in (attend.attention, attend.torch.attention):
        with pytest.raises(ValueError, match="cu_seqlens"):
            call(q, k, v, max_seqlen_q=3)
        got = call(*packed, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=16, max_seqlen_k=16, backend="reference")
        want = attend.attention(*packed, cu_seqlens_q=cu, cu_seqlens_k=cu, backend="reference")
        assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_traces_through(device):
    if not attend.torch.HAS_CUSTOM_OP:
        pytest.skip("torch.library.custom_op is not available")
    q, k, v = inputs(device)

    def layer(q, k, v):
        out, lse = attend.torch.attention(q * 2, k, v, causal=True, return_lse=True)
        return out + 1, lse

    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    out, lse = compiled(q, k, v)
    want_out, want_lse = ref_of(q * 2, k, v, causal=True)
    assert_close(out - 1, want_out, "float32")
    assert_close(lse, want_lse, "float32", what="lse", lse=True)
    # The backend is chosen when the op runs: a scope around the compiled call applies.
    with attend.use_backend("reference" if device == "cpu" else "flash_cuda"):
        again, _ = compiled(q, k, v)
    assert_close(again - 1, want_out, "float32")
    if device == "cuda":
        # ...and it really is the scope that picks: a CPU-only backend refuses CUDA tensors.
        with attend.use_backend("reference"), pytest.raises(attend.UnsupportedError):
            compiled(q, k, v)


def test_torch_compile_varlen_cpu():
    if not attend.torch.HAS_CUSTOM_OP:
        pytest.skip("torch.library.custom_op is not available")
    cu_q = torch.tensor([0, 3, 8], dtype=torch.int32)
    cu_k = torch.tensor([0, 4, 10], dtype=torch.int32)
    q, k, v = torch.randn(8, 2, 16), torch.randn(10, 2, 16), torch.randn(10, 2, 16)
    fn = torch.compile(
        lambda q, k, v: attend.torch.attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, return_lse=True),
        backend="aot_eager",
        fullgraph=True,
    )
    out, lse = fn(q, k, v)
    want_out, want_lse = reference(q.numpy(), k.numpy(), v.numpy(), cu_seqlens_q=cu_q.numpy(), cu_seqlens_k=cu_k.numpy())
    assert tuple(lse.shape) == (2, 8)
    assert_close(out, want_out, "float32")
    assert_close(lse, want_lse, "float32", what="lse", lse=True)
