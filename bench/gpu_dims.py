#!/usr/bin/env python3
"""Head-dim GPU benchmark: flash_cuda at the head dims of diffusion models other than 64 and 128
(40 and 80: Stable Diffusion 1.x; 72: PixArt; 96), which its Hopper kernel runs zero-padded to
the next width it has, with P V at the narrowest n it has that covers the head dim (Note [Hopper
padded head dims]), against PyTorch SDPA's flash, cuDNN and
efficient backends on the same tensors, and against flash_cuda with its Hopper kernel off (the
mma.sync kernel, ATTEND_FLASH_CUDA_SM90=0, in a child process of the same run).

bf16, B = 8, S = 4096, H = 16, not causal (and head dim 80 causal). TFLOP/s = 4*B*H*S*S*D / time
(halved for causal) with the call's own D, not the padded width. Timed with bench/gpu.py's method
in --rounds interleaved rounds. Needs torch with CUDA and the attend package built with CUDA.

    python3 bench/gpu_dims.py [--rounds 3] [--markdown out.md]
"""
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu import time_cuda  # noqa: E402
from gpu_varlen import run_table  # noqa: E402

B, S, H = 8, 4096, 16
TORCH = {"torch_flash": SDPBackend.FLASH_ATTENTION, "torch_cudnn": SDPBackend.CUDNN_ATTENTION,
         "torch_efficient": SDPBackend.EFFICIENT_ATTENTION}


def shapes():
    out = [dict(name=f"bf16-d{d}-s{S}", d=d, causal=False) for d in (40, 72, 80, 96)]
    out.append(dict(name=f"bf16-d80-s{S}-causal", d=80, causal=True))
    return out


def inputs(c):
    g = torch.Generator(device="cuda").manual_seed(0)
    return tuple(torch.randn(B, S, H, c["d"], device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))


def time_flash_cuda(attend, c, data):
    q, k, v = data
    out = torch.empty_like(q)
    return time_cuda(lambda: attend.attention(q, k, v, out=out, backend="flash_cuda", causal=c["causal"]))


def time_torch(backend, c, data):
    qt, kt, vt = (t.transpose(1, 2) for t in data)

    def run():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=c["causal"])
    run()
    return time_cuda(run)


def main():
    import attend

    def columns(c):
        data = inputs(c)
        fns = {"flash_cuda": lambda: time_flash_cuda(attend, c, data)}
        for name, backend in TORCH.items():
            fns[name] = lambda backend=backend: time_torch(backend, c, data)
        return fns
    run_table(__file__, shapes(), lambda c: time_flash_cuda(attend, c, inputs(c)), columns,
              ["flash_cuda", "torch_flash", "torch_cudnn", "torch_efficient", "flash_cuda_mma_sync"], "torch_flash",
              lambda c, col: 4.0 * B * H * S * S * c["d"] / (2 if c["causal"] else 1),
              f"B={B}, S={S}, H={H} (bench/gpu_dims.py).", "TFLOP/s (4·B·H·S²·D with the call's D, halved for causal).")


if __name__ == "__main__":
    main()
