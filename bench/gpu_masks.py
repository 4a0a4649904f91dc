#!/usr/bin/env python3
"""Key-padding mask GPU benchmark: flash_cuda with a boolean mask [B, 1, 1, S] (what diffusers
passes for padded text; packed to bits on the Hopper kernel, Note [Hopper row masks]) against
PyTorch SDPA's backends that take a mask (cuDNN, efficient) on the same tensors, against
flash_cuda with its Hopper kernel off (the mma.sync kernel, ATTEND_FLASH_CUDA_SM90=0, in a child
process of the same run) and against flash_cuda without the mask (an upper bound).

bf16, B = 8, S = 4096, H*D = 2048, head dims 64 and 128, not causal; batch b keeps its first
S - 256 b keys. The `row` shapes pass the same mask materialised [B, 1, S, S] (one row per query, as
Hugging Face builds attention masks), which flash_cuda's Hopper kernel packs to bits first. TFLOP/s
= 4*B*H*S*S*D / time (the masked keys counted, as every backend reads them). Timed with
bench/gpu.py's method in --rounds interleaved rounds. Needs torch with CUDA and the attend package
built with CUDA.

    python3 bench/gpu_masks.py [--rounds 3] [--markdown out.md]
"""
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu import time_cuda  # noqa: E402
from gpu_varlen import run_table  # noqa: E402

B, S = 8, 4096
TORCH = {"torch_cudnn": SDPBackend.CUDNN_ATTENTION, "torch_efficient": SDPBackend.EFFICIENT_ATTENTION}


def shapes():
    return [dict(name=f"bf16-d{d}-s{S}-{m}-mask", d=d, h=2048 // d, rows=m == "row") for m in ("key", "row") for d in (64, 128)]


def inputs(c):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, S, c["h"], c["d"], device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    keep = torch.ones(B, 1, 1, S, device="cuda", dtype=torch.bool)
    for b in range(1, B):
        keep[b, ..., S - 256 * b:] = False
    if c["rows"]:  # the same mask materialised per query row, as Hugging Face builds it
        keep = keep.expand(B, 1, S, S).contiguous()
    return q, k, v, keep


def time_flash_cuda(attend, data, masked=True):
    q, k, v, keep = data
    out = torch.empty_like(q)
    mask = keep if masked else None
    return time_cuda(lambda: attend.attention(q, k, v, out=out, backend="flash_cuda", mask=mask))


def time_torch(backend, data):
    q, k, v, keep = data
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))

    def run():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=keep)
    run()
    return time_cuda(run)


def main():
    import attend

    def columns(c):
        data = inputs(c)
        return {"flash_cuda": lambda: time_flash_cuda(attend, data),
                "torch_cudnn": lambda: time_torch(TORCH["torch_cudnn"], data),
                "torch_efficient": lambda: time_torch(TORCH["torch_efficient"], data),
                "flash_cuda_no_mask": lambda: time_flash_cuda(attend, data, masked=False)}
    run_table(__file__, shapes(), lambda c: time_flash_cuda(attend, inputs(c)), columns,
              ["flash_cuda", "torch_cudnn", "torch_efficient", "flash_cuda_mma_sync", "flash_cuda_no_mask"],
              "torch_cudnn", lambda c, col: 4.0 * B * c["h"] * S * S * c["d"],
              f"B={B}, S={S}, boolean key mask [B, 1, 1, S] (key) or the same mask materialised [B, 1, S, S] "
              "(row) (bench/gpu_masks.py).", "TFLOP/s (4·B·H·S²·D, masked keys counted).")


if __name__ == "__main__":
    main()
