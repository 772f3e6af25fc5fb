"""Fused Kac-flow ops with four interchangeable backends.

Backends: "torch" (kacfast.ops.reference, the ground truth), "cpu" (C++ kernels), "cuda" (CUDA
kernels), "triton" (Triton kernels; on CPU only under TRITON_INTERPRET=1). The backend is chosen by
device (CPU tensors -> "cpu", CUDA tensors -> "cuda", else "triton", else "torch"), and can be pinned
with `use_backend(name)` or the KACFAST_BACKEND environment variable (read at import).

Every op validates its arguments with a one-sentence error before touching any output. Value checks
that need the data (s >= 0, t in [0, T]) run for CPU tensors outside torch.compile; on GPU they are
skipped, because they would synchronize the host.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Callable

import torch

from kacfast.ops import _ext, _fake, reference
from kacfast.formulas import CLOCKS

__all__ = ["kac_velocity", "kac_noise", "kac_noise_target", "guided_step", "group_norm",
           "group_norm_kernel_runs", "use_backend",
           "resolve_backend", "available_backends", "BACKENDS", "Backend", "reference"]

_DEFAULT_BACKEND = os.environ.get("KACFAST_BACKEND", "auto")
_forced: list[str] = []

if _ext.available():
    for _name in ("kac_velocity", "kac_noise", "kac_noise_seeded", "kac_noise_target",
                  "kac_guided_step", "group_norm"):
        torch.library.register_fake(f"kacfast::{_name}")(getattr(_fake, _name))


# The "torch" backend runs the reference as opaque custom ops: its noise sampler has data-dependent
# loops, and wrapping keeps torch.compile(fullgraph=True) working when it is the backend.
@torch.library.custom_op("kacfast::reference_kac_velocity", mutates_args=())
def _reference_velocity(x: torch.Tensor, s: torch.Tensor, a: float, c: float,
                        eps: float) -> torch.Tensor:
    return reference.kac_velocity(x, s, a, c, eps)


@torch.library.custom_op("kacfast::reference_kac_noise", mutates_args=())
def _reference_noise(s: torch.Tensor, a: float, c: float, seed: int, offset: int,
                     dtype: torch.dtype) -> torch.Tensor:
    return reference.kac_noise(s, a, c, seed, offset, dtype)


@torch.library.custom_op("kacfast::reference_kac_noise_seeded", mutates_args=())
def _reference_noise_seeded(s: torch.Tensor, rng: torch.Tensor, a: float, c: float,
                            dtype: torch.dtype) -> torch.Tensor:
    # Reading [seed, offset] to the host costs nothing extra here: the reference's data-dependent
    # loops synchronize anyway (no CUDA graph can hold this backend).
    seed, offset = rng.tolist()
    return reference.kac_noise(s, a, c, seed, offset, dtype)


@torch.library.custom_op("kacfast::reference_kac_noise_target", mutates_args=())
def _reference_noise_target(x0: torch.Tensor, t: torch.Tensor, a: float, c: float, T: float,
                            clock: int, eps: float, seed: int,
                            offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    return reference.kac_noise_target(x0, t, a, c, T, CLOCKS[clock], eps, seed, offset)


@torch.library.custom_op("kacfast::reference_kac_guided_step", mutates_args=())
def _reference_guided_step(x: torch.Tensor, v: torch.Tensor, v_prev: torch.Tensor | None,
                           guidance: float, h: float, alpha: float, beta: float, clamp: bool,
                           return_v: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return reference.guided_step(x, v, v_prev, guidance, h, alpha, beta, clamp, return_v)


_reference_velocity.register_fake(_fake.kac_velocity)
_reference_noise.register_fake(_fake.kac_noise)
_reference_noise_seeded.register_fake(_fake.kac_noise_seeded)
_reference_noise_target.register_fake(_fake.kac_noise_target)
_reference_guided_step.register_fake(_fake.kac_guided_step)
_REFERENCE_OPS = {"kac_velocity": _reference_velocity, "kac_noise": _reference_noise,
                  "kac_noise_seeded": _reference_noise_seeded,
                  "kac_noise_target": _reference_noise_target,
                  "kac_guided_step": _reference_guided_step}


def _triton_module():
    from kacfast.ops import triton as triton_ops
    return triton_ops


def _extension_op(name: str):
    return getattr(torch.ops.kacfast, name)


def _cpu_why_not(device: torch.device) -> str | None:
    if device.type != "cpu":
        return "the tensors are not on the CPU"
    if not _ext.available():
        return f"the C++ extension did not load ({_ext.why_unavailable()})"
    return None


def _cuda_why_not(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "the tensors are not on a GPU"
    if not _ext.has_cuda():
        return "the extension was built without its CUDA kernels"
    return None


def _triton_why_not(device: torch.device) -> str | None:
    if not _triton_module().available(device):
        return "triton is not installed, or the tensors are on the CPU without TRITON_INTERPRET=1"
    return None


@dataclass(frozen=True)
class Backend:
    """An entry of BACKENDS.

    op: op name ("kac_velocity", "kac_noise", "kac_noise_seeded", "kac_noise_target",
        "kac_guided_step") -> its callable, with the C++ schema's argument list.
    why_not: device -> None when the backend runs on tensors of that device in this process,
        else the reason (one clause, for the error message).
    auto: device types on which the automatic choice takes it (the first such in table order).
    """
    op: Callable[[str], Callable]
    why_not: Callable[[torch.device], str | None]
    auto: tuple[str, ...] = ()


#: name -> Backend, in the order of the automatic choice; "torch" (the reference) is the fallback.
#: Add one here (see CONTRIBUTING.md) and use_backend, KACFAST_BACKEND and the tests take it.
BACKENDS: dict[str, Backend] = {
    "torch": Backend(_REFERENCE_OPS.__getitem__, lambda device: None),
    "cpu": Backend(_extension_op, _cpu_why_not, auto=("cpu",)),
    "cuda": Backend(_extension_op, _cuda_why_not, auto=("cuda",)),
    "triton": Backend(lambda name: getattr(_triton_module(), name), _triton_why_not,
                      auto=("cuda",)),
}


def _op(name: str, backend: str):
    """The callable of op `name` on `backend`; all share the C++ schema's argument list."""
    return BACKENDS[backend].op(name)


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """Backends that can run on tensors of `device` in this process."""
    dev = torch.device(device)
    return [name for name, backend in BACKENDS.items() if backend.why_not(dev) is None]


@contextlib.contextmanager
def use_backend(name: str):
    """Pin every kacfast op to backend `name` (a BACKENDS name or "auto")."""
    if name not in BACKENDS and name != "auto":
        raise ValueError(f"unknown kacfast backend {name!r}; choose one of "
                         f"{tuple(BACKENDS) + ('auto',)}.")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def _pinned_backend() -> str:
    """The backend pinned now: the innermost use_backend, else KACFAST_BACKEND, else "auto"."""
    return _forced[-1] if _forced else _DEFAULT_BACKEND


def resolve_backend(device: torch.device) -> str:
    """The backend an op on tensors of `device` runs on now (after pins and the environment)."""
    name = _pinned_backend()
    if name == "auto":
        for candidate, backend in BACKENDS.items():
            if device.type in backend.auto and backend.why_not(device) is None:
                return candidate
        _ext.warn_once()
        return "torch"
    if name not in BACKENDS:
        raise ValueError(f"KACFAST_BACKEND={name!r} is not one of {tuple(BACKENDS) + ('auto',)}.")
    reason = BACKENDS[name].why_not(device)
    if reason is not None:
        raise RuntimeError(f"kacfast backend {name!r} cannot run on {device} tensors: {reason}.")
    return name


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------
def _check_float(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}.")


def _check_same_device(t: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}.")


def _check_params(a: float, c: float, eps: float | None = None) -> None:
    if not a > 0:
        raise ValueError(f"the switching rate a must be > 0, got {a}.")
    if not c > 0:
        raise ValueError(f"the speed c must be > 0, got {c}.")
    if eps is not None and not 0 <= eps < 1:
        raise ValueError(f"eps must lie in [0, 1), got {eps}.")


def _check_seed(seed: int, offset: int) -> None:
    if not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2^63), got {seed!r}.")
    if not isinstance(offset, int) or not 0 <= offset < 2**32:
        raise ValueError(f"offset must be an int in [0, 2^32), got {offset!r}.")


def _values_checkable(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def _check_seed_tensor(rng: torch.Tensor, offset: int, s: torch.Tensor) -> None:
    """A seed tensor: int64 [seed, offset] of shape (2,) on s's device; values as _check_seed's,
    checked on CPU only (reading a GPU tensor would synchronize the host)."""
    if not (isinstance(offset, int) and offset == 0):
        raise ValueError(f"offset must be left at 0 when seed is a tensor (its second entry is "
                         f"the offset), got offset={offset!r}.")
    if rng.dtype != torch.int64:
        raise TypeError(f"a seed tensor must be int64 holding [seed, offset], got {rng.dtype}.")
    if rng.shape != (2,):
        raise ValueError(f"a seed tensor must have shape (2,) = [seed, offset], got "
                         f"{tuple(rng.shape)}.")
    _check_same_device(rng, s, "the seed tensor", "s")
    if _values_checkable(rng):
        _check_seed(*rng.tolist())


def _check_range(t: torch.Tensor, name: str, low: float, high: float | None = None) -> None:
    if not _values_checkable(t) or t.numel() == 0:
        return
    # One reduction on the common path (NaN propagates through aminmax and fails both tests).
    lo, hi = (float(v) for v in torch.aminmax(t))
    if lo >= low and math.isfinite(hi) and (high is None or hi <= high):
        return
    bad = ~torch.isfinite(t) | (t < low)
    if high is not None:
        bad |= t > high
    bound = f"[{low}, {high}]" if high is not None else f">= {low}"
    raise ValueError(f"{name} must lie in {bound}; found {t[bad].flatten()[0].item()}.")


def _check_finite(t: torch.Tensor, name: str) -> None:
    """No NaN / inf in t (CPU, eager): one aminmax pass, as for the time checks; the kernels
    would otherwise turn them into NaN outputs without a word."""
    if not _values_checkable(t) or t.numel() == 0:
        return
    lo, hi = (float(v) for v in torch.aminmax(t))
    if math.isfinite(lo) and math.isfinite(hi):
        return
    raise ValueError(f"{name} must be finite; found {t[~torch.isfinite(t)].flatten()[0].item()}.")


def _leading_block(s: torch.Tensor, shape: torch.Size) -> bool:
    """True when s (already left-padded to len(shape) dims) covers a leading block of `shape`."""
    p = 0
    while p < len(shape) and s.shape[p] == shape[p]:
        p += 1
    return all(d == 1 for d in s.shape[p:])


# ------------------------------------------------------------------------------------------------
# Ops
# ------------------------------------------------------------------------------------------------
def kac_velocity(x: torch.Tensor, s, a: float, c: float, eps: float = 1e-4) -> torch.Tensor:
    """Conditional velocity v_K(s, x) = E[V(s) | X(s) = x] of a 1-D Kac process, elementwise.

    Args:
        x: displacements, any shape, float16/bfloat16/float32/float64.
        s: process time(s) >= 0, a float or a tensor broadcastable to x.
        a, c: switching rate and speed (> 0).
        eps: relative width of the light-cone band |x| >= c s (1 - eps) that returns c sign(x).
    Returns:
        Tensor like x with values in [-c, c]. Kernels compute in float32.
    """
    _check_float(x, "x")
    _check_params(a, c, eps)
    s = torch.as_tensor(s, dtype=torch.float32, device=x.device)
    _check_same_device(s, x, "s", "x")
    if s.dim() > x.dim():
        raise ValueError(f"s has {s.dim()} dims but x only {x.dim()}: s must broadcast to x.")
    try:
        torch.broadcast_shapes(s.shape, x.shape)
    except RuntimeError:
        raise ValueError(f"s of shape {tuple(s.shape)} does not broadcast to x of shape "
                         f"{tuple(x.shape)}.") from None
    _check_range(s, "s", 0.0)
    _check_finite(x, "x")
    backend = resolve_backend(x.device)
    s = s.reshape((1,) * (x.dim() - s.dim()) + tuple(s.shape))
    if backend != "torch" and not _leading_block(s, x.shape):
        s = s.expand(x.shape)  # general broadcast: materialized (one extra tensor)
    return _op("kac_velocity", backend)(x.contiguous(), s.contiguous(), float(a), float(c), float(eps))


def kac_noise(s: torch.Tensor, a: float, c: float, *, seed: int | torch.Tensor, offset: int = 0,
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """Exact samples of the Kac displacement X(s) at per-element process times s (no table).

    Args:
        s: process times >= 0, any shape, float tensor.
        a, c: switching rate and speed (> 0).
        seed, offset: counter-based RNG stream (Philox4x32-10). seed in [0, 2^63), offset in
            [0, 2^32); use a new offset (e.g. the training step) for fresh noise under one seed.
            seed may instead be an int64 tensor of shape (2,) on s's device holding
            [seed, offset] (then leave `offset` at 0). The kernels read it when they run, so a
            CUDA graph that captured this call draws new noise after new values are copied into
            that tensor, with no recapture. Its values are range-checked on CPU only: on a GPU
            reading them would synchronize the host, and out-of-range values are used as the
            kernels convert them (seed as uint64, offset modulo 2^32).
        dtype: output dtype (default s.dtype).
    Returns:
        Tensor shaped like s, values in [-c s, c s]; atoms of mass e^{-as}/2 at +-c s. The same
        (seed, offset) gives the same numbers on every run and on the CPU and CUDA backends, and
        the same numbers whether passed as ints or as a seed tensor.
    """
    _check_float(s, "s")
    _check_params(a, c)
    seeded = isinstance(seed, torch.Tensor)
    if seeded:
        _check_seed_tensor(seed, offset, s)
    else:
        _check_seed(seed, offset)
    dtype = dtype or s.dtype
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be floating point, got {dtype}.")
    _check_range(s, "s", 0.0)
    backend = resolve_backend(s.device)
    s = s.to(torch.float32).contiguous()
    if seeded:
        return _op("kac_noise_seeded", backend)(s, seed.contiguous(), float(a), float(c), dtype)
    return _op("kac_noise", backend)(s, float(a), float(c), seed, offset, dtype)


def kac_noise_target(x0: torch.Tensor, t: torch.Tensor, a: float, c: float, T: float = 1.0,
                     clock: str = "t", eps: float = 1e-4, *, seed: int, offset: int = 0):
    """Fused flow-matching pair: x_t = f(t) x0 + K_{g(t)}, u = f'(t) x0 + g'(t) v_K(g(t), K).

    Args:
        x0: data (B, ...), float16/bfloat16/float32/float64.
        t: per-sample times (B,) in [0, T].
        a, c, T: rate, speed, horizon (> 0); clock: "t" (g = t) or "t2" (g = T (t/T)^2).
        eps: light-cone band of the velocity (see kac_velocity); seed, offset: see kac_noise.
    Returns:
        (x_t, u), both shaped and typed like x0. One read of x0, two writes.
    """
    _check_float(x0, "x0")
    _check_float(t, "t")
    _check_params(a, c, eps)
    _check_seed(seed, offset)
    if not T > 0:
        raise ValueError(f"the horizon T must be > 0, got {T}.")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}.")
    if x0.dim() == 0 or t.dim() != 1 or t.shape[0] != x0.shape[0]:
        raise ValueError(f"t must have shape (B,) = ({x0.shape[0] if x0.dim() else '?'},) to "
                         f"match x0 of shape {tuple(x0.shape)}, got {tuple(t.shape)}.")
    _check_same_device(t, x0, "t", "x0")
    _check_range(t, "t", 0.0, T)
    _check_finite(x0, "x0")
    backend = resolve_backend(x0.device)
    return _op("kac_noise_target", backend)(
        x0.contiguous(), t.to(torch.float32).contiguous(), float(a), float(c), float(T),
        CLOCKS.index(clock), float(eps), seed, offset)


def guided_step(x: torch.Tensor, v: torch.Tensor, v_prev: torch.Tensor | None = None, *,
                guidance: float = 1.0, h: float, alpha: float = 1.0, beta: float = 0.0,
                clamp: bool = False, return_v: bool = False):
    """Fused sampler step: velocity-space guidance mixed into the solver update, one pass.

    Args:
        x: current state (B, ...) at time t, float.
        v: model velocity (B, ...), or (2B, ...) = cat([v_cond, v_uncond]) from one batched call
            on cat([x, x]); then v_mix = v_uncond + guidance (v_cond - v_uncond).
        v_prev: (B, ...) earlier velocity for two-term updates (AB-2, Heun), or None.
        h: step size > 0 (time decreases from t to t - h).
        alpha, beta: x' = x - h (alpha v_mix + beta v_prev). Euler: (1, 0); AB-2 with
            r = h_n / h_{n-1}: (1 + r/2, -r/2); Heun's second stage: (1/2, 1/2).
        clamp: clamp x' to [-1, 1] (the last step of image sampling).
        return_v: also return v_mix (needed as next v_prev); else the second output is empty.
    Returns:
        (x', v_mix or an empty tensor), like x. v and v_prev must have x's dtype and device.
    """
    _check_float(x, "x")
    _check_float(v, "v")
    for name, other in (("v", v), ("v_prev", v_prev)):
        if other is None:
            continue
        _check_float(other, name)
        _check_same_device(other, x, name, "x")
        if other.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {other.dtype} but x has {x.dtype}.")
    guided = x.dim() > 0 and v.shape == (2 * x.shape[0],) + tuple(x.shape[1:])
    if not guided and v.shape != x.shape:
        raise ValueError(f"v must have x's shape {tuple(x.shape)} or twice its batch "
                         f"([cond; uncond]), got {tuple(v.shape)}.")
    if v_prev is not None and v_prev.shape != x.shape:
        raise ValueError(f"v_prev must have x's shape {tuple(x.shape)}, got {tuple(v_prev.shape)}.")
    if not (h > 0 and math.isfinite(h)):
        raise ValueError(f"the step size h must be finite and > 0, got {h}.")
    for name, value in (("guidance", guidance), ("alpha", alpha), ("beta", beta)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}.")
    backend = resolve_backend(x.device)
    return _op("kac_guided_step", backend)(
        x.contiguous(), v.contiguous(), None if v_prev is None else v_prev.contiguous(),
        float(guidance), float(h), float(alpha), float(beta), bool(clamp), bool(return_v))


def group_norm_kernel_runs(device: torch.device) -> bool:
    """Whether `group_norm` (and the compiled samplers' GroupNorm) runs the C++ kernel on float32
    tensors of `device` now: a CPU device, the extension loaded, no backend but "cpu" pinned."""
    return _pinned_backend() in ("auto", "cpu") and _cpu_why_not(torch.device(device)) is None


def group_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               *, groups: int, eps: float = 1e-5, silu: bool = False) -> torch.Tensor:
    """GroupNorm (+ SiLU when `silu`) of x (N, C, ...), as `reference.group_norm`.

    Float32 CPU tensors that need no gradient run the C++ kernel (kacfast::group_norm: one image
    at a time, read once from memory, either layout; a 4-D channels-last x gives a channels-last
    result, any other a contiguous one) unless another backend than "cpu" is pinned; anything else
    runs the reference. The compiled CPU samplers put it in their float32 graphs
    (kacfast.compiled.FuseGroupNorm), where it is 1.4-3x inductor's channels-last kernel; on NCHW
    input it ran 0.84x (C = 128) to 5.8x (C = 64) torch's eager GroupNorm + SiLU (README).
    Args: weight, bias: (C,) per-channel affine or None; groups: divides C; eps > 0.
    """
    _check_float(x, "x")
    if x.dim() < 2:
        raise ValueError(f"x must be (N, C, ...), got shape {tuple(x.shape)}.")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or x.shape[1] % groups:
        raise ValueError(f"groups must be an int >= 1 that divides the {x.shape[1]} channels, got {groups!r}.")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}.")
    params = [t for t in (weight, bias) if t is not None]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (x.shape[1],):
            raise ValueError(f"{name} must have shape ({x.shape[1]},), got {tuple(t.shape)}.")
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params))
    if (x.dtype == torch.float32 and all(t.dtype == torch.float32 for t in params) and not needs_grad
            and group_norm_kernel_runs(x.device)):
        return torch.ops.kacfast.group_norm(
            x, None if weight is None else weight.contiguous(),
            None if bias is None else bias.contiguous(), groups, float(eps), bool(silu))
    return reference.group_norm(x, weight, bias, groups, eps, silu)
