"""Pure-PyTorch definitions of every kacfast op: the ground truth each backend is tested against.

Math: ../shared/docs/kac-math.md. The Kac noise uses the same Philox4x32-10 stream and the same
algorithm as csrc/kac_math.h, so for one (seed, offset) every backend draws the same switch count and
sign per element and agrees on the displacement to float32 rounding. The velocity is evaluated in
float64 with exponentially scaled Bessel functions (i0e, i1e), independently of the kernels'
continued fraction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kacfast.formulas import guidance_mix, schedule

_MASK32 = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_POISSON_CHUNK = 32.0
_POISSON_CAP = 256


def philox4x32_10(counter: tuple, key: tuple) -> tuple:
    """Philox4x32-10 on int64 tensors holding uint32 values. Returns the four output words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_ in range(10):
        if round_:
            k0 = (k0 + _PHILOX_W[0]) & _MASK32
            k1 = (k1 + _PHILOX_W[1]) & _MASK32
        p0 = c0 * _PHILOX_M[0]  # < 2^64: int64 wraps, but the low 64 bits stay exact
        p1 = c2 * _PHILOX_M[1]
        hi0, lo0 = (p0 >> 32) & _MASK32, p0 & _MASK32
        hi1, lo1 = (p1 >> 32) & _MASK32, p1 & _MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


_POISSON_STREAM = 0x80000000


class _ElementStreams:
    """Word k of element i in stream `flag`: word k % 4 of
    Philox(counter=(i_lo, i_hi, offset, flag | k // 4), key=seed). Main stream (flag 0): word 0 is
    the sign (bit 0) and the first Poisson uniform, word 1 + i spacing i. Side stream
    (flag _POISSON_STREAM): word j is the uniform of Poisson chunk 1 + j (only when a s > 32)."""

    def __init__(self, numel: int, seed: int, offset: int, device):
        idx = torch.arange(numel, dtype=torch.int64, device=device)
        self.counter_lo = idx & _MASK32
        self.counter_hi = idx >> 32
        self.offset = torch.full_like(idx, offset)
        self.key = (seed & _MASK32, (seed >> 32) & _MASK32)

    def word(self, k: int, flag: int) -> torch.Tensor:
        """Word k of every element's stream (int64 tensor of uint32 values)."""
        block = torch.full_like(self.counter_lo, flag | (k >> 2))
        return philox4x32_10((self.counter_lo, self.counter_hi, self.offset, block), self.key)[k & 3]


def _uniform_co(w):  # [0, 1), 24 bits
    return (w >> 8).to(torch.float32) * 2.0**-24


def _uniform_oc(w):  # (0, 1], 24 bits
    return ((w >> 8) + 1).to(torch.float32) * 2.0**-24


def kac_noise(s: torch.Tensor, a: float, c: float, seed: int, offset: int = 0,
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """Exact Kac displacement X(s) per element of `s` (process times >= 0, any shape).

    Returns a tensor shaped like `s` in `dtype` (default s.dtype), values in [-c s, c s], with atoms
    of mass e^{-a s}/2 at +-c s. Deterministic in (seed, offset).
    """
    return kac_noise_and_velocity(s, a, c, seed, offset, dtype)[0]


def kac_noise_and_velocity(s: torch.Tensor, a: float, c: float, seed: int, offset: int = 0,
                           dtype: torch.dtype | None = None):
    """(X(s), V(s)) of the same Kac paths: V = sign c (-1)^n is the velocity after n switches.

    The kernels only return X; V is here to test E[V | X] = v_K(s, X) by Monte Carlo.
    """
    dtype = dtype or s.dtype
    flat = s.reshape(-1).to(torch.float32)
    n_el = flat.numel()
    streams = _ElementStreams(n_el, seed, offset, s.device)
    lam = (a * flat).to(torch.float32)
    reach = (c * flat).to(torch.float32)

    first = streams.word(0, 0)
    sign = torch.where((first & 1) == 1, -1.0, 1.0).to(torch.float32)
    u = _uniform_co(first)
    n = torch.zeros(n_el, dtype=torch.int64, device=s.device)
    remaining = lam.clone()
    active = torch.ones(n_el, dtype=torch.bool, device=s.device)
    chunk = 0
    while bool(active.any()):
        if chunk:
            u = _uniform_co(streams.word(chunk - 1, _POISSON_STREAM))
        mean = torch.clamp(remaining, max=_POISSON_CHUNK)
        p = torch.exp(-mean)
        cdf = p.clone()
        searching = active & (u >= cdf)
        j = 0
        while bool(searching.any()):
            j += 1
            p = torch.where(searching, p * (mean / float(j)), p)
            cdf_prev = cdf
            cdf = torch.where(searching, cdf + p, cdf)
            n = n + searching.long()
            # stop where the float32 CDF saturates (as the kernels do)
            searching = searching & (u >= cdf) & (j < _POISSON_CAP) & (cdf > cdf_prev)
        left = remaining - mean
        active = active & (left > 0) & (left < remaining)  # a s = inf: stop, as the kernels do
        remaining = torch.where(active, left, remaining)
        chunk += 1

    # Sums of the n+1 Exp(1) spacings with even / odd index, as -log of products of uniforms.
    neg_log = [torch.zeros(n_el, dtype=torch.float64, device=s.device) for _ in range(2)]
    for i in range(int(n.max()) + 1 if n_el else 0):
        e = -torch.log(_uniform_oc(streams.word(1 + i, 0)).double())
        neg_log[i & 1] += torch.where(i <= n, e, 0.0)
    total = neg_log[0] + neg_log[1]
    frac = torch.where(total > 0, (neg_log[0] - neg_log[1]) / total.clamp(min=1e-300), 1.0)
    x = (sign.double() * reach.double() * frac).to(dtype).reshape(s.shape)
    v = (sign * c * (1 - 2 * (n & 1)).to(torch.float32)).to(dtype).reshape(s.shape)
    return x, v


def kac_h(z: torch.Tensor) -> torch.Tensor:
    """h(z) = z I0(z) / I1(z) in float64 (h(0) = 2)."""
    z = z.double()
    small = z < 1e-4
    zs = torch.where(small, 1.0, z)
    return torch.where(small, 2.0 + z * z / 4.0,
                       zs * torch.special.i0e(zs) / torch.special.i1e(zs))


def kac_velocity(x: torch.Tensor, s, a: float, c: float, eps: float = 1e-4) -> torch.Tensor:
    """Conditional velocity v_K(s, x) = E[V(s) | X(s) = x] of a 1-D Kac process, elementwise.

    x: any shape; s: process time(s) >= 0 broadcastable to x. c sign(x) where |x| >= c s (1 - eps);
    inside the cone a x / (a s + h(z)), z = a sqrt(c^2 s^2 - x^2) / c. Result has x's dtype.
    """
    xd = x.double()
    sd = torch.as_tensor(s, device=x.device).double()
    reach = c * sd
    ax = xd.abs()
    gap = ((reach - ax) * (reach + ax)).clamp(min=0.0)
    z = a * gap.sqrt() / c
    inside = a * xd / (a * sd + kac_h(z))
    out = torch.where(ax >= reach * (1.0 - eps), c * torch.sign(xd), inside)
    return out.to(x.dtype)


def kac_noise_target(x0: torch.Tensor, t: torch.Tensor, a: float, c: float, T: float,
                     clock: str = "t", eps: float = 1e-4, seed: int = 0, offset: int = 0):
    """Flow-matching pair at per-sample times t (B,) for data x0 (B, ...).

    x_t = f(t) x0 + K_{g(t)},  u = f'(t) x0 + g'(t) v_K(g(t), K). Returns (x_t, u) like x0.
    """
    view = (-1,) + (1,) * (x0.dim() - 1)
    f, df, g, dg = (v.to(torch.float32).reshape(view) for v in schedule(t.to(torch.float32), T, clock))
    k = kac_noise(g.expand(x0.shape).contiguous(), a, c, seed, offset, dtype=torch.float32)
    x0f = x0.to(torch.float32)
    x_t = f * x0f + k
    u = df * x0f + dg * kac_velocity(k, g, a, c, eps)
    return x_t.to(x0.dtype), u.to(x0.dtype)


def guided_step(x: torch.Tensor, v: torch.Tensor, v_prev: torch.Tensor | None, guidance: float,
                h: float, alpha: float = 1.0, beta: float = 0.0, clamp: bool = False,
                return_v: bool = False):
    """One sampler step from time t to t - h with velocity-space guidance.

    x: (B, ...); v: (B, ...) or (2B, ...) = cat([v_cond, v_uncond]) (guided when twice x's batch);
    v_prev: (B, ...) or None. v_mix = v_u + guidance (v_c - v_u);
    x' = x - h (alpha v_mix + beta v_prev), clamped to [-1, 1] when `clamp`.
    Returns (x', v_mix if return_v else an empty tensor). Math in float32.
    """
    xf, vf = x.float(), v.float()
    if x.dim() > 0 and v.shape == (2 * x.shape[0],) + tuple(x.shape[1:]):
        v_cond, v_uncond = vf.reshape((2,) + tuple(x.shape)).unbind(0)
        v_mix = guidance_mix(v_cond, v_uncond, guidance)
    else:
        v_mix = vf
    drift = alpha * v_mix if v_prev is None else alpha * v_mix + beta * v_prev.float()
    x_new = xf - h * drift
    if clamp:
        x_new = x_new.clamp(-1.0, 1.0)
    v_out = v_mix.to(x.dtype) if return_v else x.new_empty(0)
    return x_new.to(x.dtype), v_out


def group_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               groups: int, eps: float = 1e-5, silu: bool = False) -> torch.Tensor:
    """GroupNorm of x (N, C, ...) over `groups` groups of C / groups channels (biased variance,
    per-channel affine weight / bias or None), then SiLU when `silu`."""
    y = F.group_norm(x, groups, weight, bias, eps)
    return F.silu(y) if silu else y
