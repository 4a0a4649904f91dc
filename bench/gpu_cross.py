#!/usr/bin/env python3
"""Cross-attention GPU benchmark: flash_cuda where diffusion models attend from image or video
tokens to a short text sequence (a few key tiles per work item, so the per-item cost of a kernel
shows), against PyTorch SDPA's flash, cuDNN and efficient backends on the same tensors, and
against flash_cuda with its Hopper kernel off (the mma.sync kernel, ATTEND_FLASH_CUDA_SM90=0, in a
child process of the same run).

The shapes (bf16, not causal), named after the models they come from:
  - sd15: Stable Diffusion 1.x at 512 px, its 64 x 64 latent level: B = 2 (classifier-free
    guidance), 4096 queries, 77 text tokens, 8 heads of 40;
  - sdxl: SDXL at 1024 px, its 64 x 64 level: B = 2, 4096 queries, 77 tokens, 10 heads of 64;
  - pixart: PixArt at 1024 px: B = 2, 4096 queries, 120 tokens, 16 heads of 72, with the text's
    key-padding mask (boolean [B, 1, 1, 120]; batch b keeps its first 120 - 40 b tokens), which
    PyTorch's flash backend does not take (n/a there);
  - wan: Wan 2.1 (1.3B) at 480p, 81 frames: B = 1, 32760 queries, 512 tokens, 12 heads of 128.
TFLOP/s = 4*B*H*Sq*Skv*D / time (masked keys counted, as every backend reads them). Timed with
bench/gpu.py's method in --rounds interleaved rounds. Needs torch with CUDA and the attend package
built with CUDA.

    python3 bench/gpu_cross.py [--rounds 3] [--markdown out.md]
"""
import os
import sys

import torch
from torch.nn.attention import SDPBackend

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_masks import time_flash_cuda, time_torch  # noqa: E402  (both pass the mask when there is one)
from gpu_varlen import run_table  # noqa: E402

TORCH = {"torch_flash": SDPBackend.FLASH_ATTENTION, "torch_cudnn": SDPBackend.CUDNN_ATTENTION,
         "torch_efficient": SDPBackend.EFFICIENT_ATTENTION}


def shapes():
    return [
        dict(name="bf16-sd15-cross-d40", b=2, sq=4096, skv=77, h=8, d=40, mask=False),
        dict(name="bf16-sdxl-cross-d64", b=2, sq=4096, skv=77, h=10, d=64, mask=False),
        dict(name="bf16-pixart-cross-d72-mask", b=2, sq=4096, skv=120, h=16, d=72, mask=True),
        dict(name="bf16-wan-cross-d128", b=1, sq=32760, skv=512, h=12, d=128, mask=False),
    ]


def flops(c):
    return 4.0 * c["b"] * c["h"] * c["sq"] * c["skv"] * c["d"]


def inputs(c):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(c["b"], c["sq"], c["h"], c["d"], device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(c["b"], c["skv"], c["h"], c["d"], device="cuda", dtype=torch.bfloat16, generator=g)
            for _ in range(2))
    keep = None
    if c["mask"]:  # the text's padding: batch b keeps its first skv - 40 b tokens
        keep = torch.ones(c["b"], 1, 1, c["skv"], device="cuda", dtype=torch.bool)
        for b in range(1, c["b"]):
            keep[b, ..., c["skv"] - 40 * b:] = False
    return q, k, v, keep


def main():
    import attend

    def columns(c):
        data = inputs(c)
        fns = {"flash_cuda": lambda: time_flash_cuda(attend, data)}
        for name, backend in TORCH.items():
            if name == "torch_flash" and c["mask"]:
                continue  # PyTorch's flash backend takes no mask: an n/a cell
            fns[name] = lambda backend=backend: time_torch(backend, data)
        return fns
    run_table(__file__, shapes(), lambda c: time_flash_cuda(attend, inputs(c)), columns,
              ["flash_cuda", "torch_flash", "torch_cudnn", "torch_efficient", "flash_cuda_mma_sync"], "torch_cudnn",
              lambda c, col: flops(c),
              "Cross-attention shapes of diffusion models (bench/gpu_cross.py: B, queries, text tokens, heads, "
              "head dim in each row's name and the script).", "TFLOP/s (4·B·H·Sq·Skv·D, masked keys counted).")


if __name__ == "__main__":
    main()
