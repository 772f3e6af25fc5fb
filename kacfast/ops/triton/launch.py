"""How every kacfast Triton kernel is launched: one device guard, block size and the no-FMA rule."""
from __future__ import annotations

import os

import torch
import triton

__all__ = ["launch"]


def _block(device: torch.device) -> int:
    # The interpreter pays per program in Python, the GPU per lock-step lane: bigger blocks on CPU.
    return 1024 if device.type == "cpu" else 128


def launch(kernel, device: torch.device, n: int, *args, **constexprs) -> None:
    """Run `kernel` over n elements in blocks (the kernel takes BLOCK as a constexpr). On a GPU,
    with FMA contraction off (the C++ header is compiled without it: same rounding); on CPU
    tensors only under the interpreter (TRITON_INTERPRET=1)."""
    block = _block(device)
    grid = (triton.cdiv(n, block),)
    if device.type == "cuda":
        with torch.cuda.device(device):
            kernel[grid](*args, BLOCK=block, num_warps=4, enable_fp_fusion=False, **constexprs)
    else:
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("kacfast triton kernels run on CPU tensors only under "
                               "TRITON_INTERPRET=1 (set before triton is imported).")
        kernel[grid](*args, BLOCK=block, **constexprs)
