"""Triton kernel of the fused guided sampler step (csrc/kac_math.h: guided_velocity,
step_position): one pass over x, v (and v_prev), math in float32, stores in x's dtype."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kacfast.ops import _fake
from kacfast.ops.triton.launch import launch

__all__ = ["kac_guided_step"]


@triton.jit
def _guided_step_kernel(x_ptr, vc_ptr, vu_ptr, vp_ptr, out_ptr, vmix_ptr, n, w, h, alpha, beta,
                        GUIDED: tl.constexpr, HAS_PREV: tl.constexpr, CLAMP: tl.constexpr,
                        WRITE_V: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    v = tl.load(vc_ptr + offs, mask=mask).to(tl.float32)
    if GUIDED:
        vu = tl.load(vu_ptr + offs, mask=mask).to(tl.float32)
        v = vu + w * (v - vu)
    drift = alpha * v
    if HAS_PREV:
        drift = drift + beta * tl.load(vp_ptr + offs, mask=mask).to(tl.float32)
    x_new = tl.load(x_ptr + offs, mask=mask).to(tl.float32) - h * drift
    if CLAMP:
        x_new = tl.minimum(tl.maximum(x_new, -1.0), 1.0)
    tl.store(out_ptr + offs, x_new.to(out_ptr.dtype.element_ty), mask=mask)
    if WRITE_V:
        tl.store(vmix_ptr + offs, v.to(vmix_ptr.dtype.element_ty), mask=mask)


@torch.library.custom_op("kacfast::triton_kac_guided_step", mutates_args=())
def kac_guided_step(x: torch.Tensor, v: torch.Tensor, v_prev: torch.Tensor | None,
                    guidance: float, h: float, alpha: float, beta: float, clamp: bool,
                    return_v: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as torch.ops.kacfast.kac_guided_step (contiguous inputs, checked by caller)."""
    n = x.numel()
    guided = x.dim() > 0 and v.shape == (2 * x.shape[0],) + tuple(x.shape[1:])
    x_new = torch.empty_like(x)
    v_mix = torch.empty_like(x) if return_v else x.new_empty(0)
    if n == 0:
        return x_new, v_mix
    v_flat = v.reshape(-1)
    launch(_guided_step_kernel, x.device, n, x, v_flat, v_flat[n:] if guided else v_flat,
            v_prev if v_prev is not None else x, x_new, v_mix if return_v else x_new, n, guidance,
            h, alpha, beta, GUIDED=guided, HAS_PREV=v_prev is not None, CLAMP=clamp,
            WRITE_V=return_v)
    return x_new, v_mix


kac_guided_step.register_fake(_fake.kac_guided_step)
