"""Triton kernels of the three Kac ops, element for element the algorithm of csrc/kac_math.h.

Same Philox4x32-10 stream layout and words, same Poisson inverse CDF (chunks of mean <= 32, cap 256
per chunk, side stream for chunks after the first), same spacing products with 2^64 renormalization,
same continued fraction for h(z) with per-element depth (kac_math.h: cf_depth), same light-cone rule,
same schedules. Each program runs BLOCK elements in lock step, like the header's lanes: a loop with a
data-dependent trip count runs to the block's maximum (tl.max over the block) and an element that is
done is masked, never changed, so BLOCK does not change any number.

Float arithmetic follows the header operation for operation: the header's own polynomial exp / log
(not tl.exp / tl.log), IEEE round-to-nearest division and square root (tl.div_rn / tl.sqrt_rn; plain
`/` and tl.sqrt are approximate on NVIDIA GPUs), and launches with enable_fp_fusion=False (the header
is compiled without FMA contraction). Under TRITON_INTERPRET=1 the outputs are bit-identical to the
C++ CPU kernels; on a GPU they should be too, since every operation is an IEEE-rounded float32 op.
Only bit casts, integer ops, tl.sqrt_rn / tl.div_rn / tl.where and arithmetic: no libdevice, so the
kernels also run in the CPU interpreter.
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from kacfast.ops import _fake
from kacfast.ops.triton.launch import launch

__all__ = ["kac_velocity", "kac_noise", "kac_noise_seeded", "kac_noise_target"]

_MASK32 = 0xFFFFFFFF


# ------------------------------------------------------------------------------------------------
# Philox4x32-10 and uniforms (kac_math.h: philox4x32_10, uniform_co, uniform_oc)
# ------------------------------------------------------------------------------------------------
@triton.jit
def _philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 blocks; the key is bumped before every round but the first."""
    M0: tl.constexpr = 0xD2511F53
    M1: tl.constexpr = 0xCD9E8D57
    W0: tl.constexpr = 0x9E3779B9
    W1: tl.constexpr = 0xBB67AE85
    for rnd in tl.static_range(10):
        if rnd > 0:
            k0 = tl.add(k0, W0, sanitize_overflow=False)
            k1 = tl.add(k1, W1, sanitize_overflow=False)
        hi0 = tl.umulhi(c0, M0)
        lo0 = tl.mul(c0, M0, sanitize_overflow=False)
        hi1 = tl.umulhi(c2, M1)
        lo1 = tl.mul(c2, M1, sanitize_overflow=False)
        n0 = hi1 ^ c1 ^ k0
        n2 = hi0 ^ c3 ^ k1
        c0 = n0
        c1 = lo1
        c2 = n2
        c3 = lo0
    return c0, c1, c2, c3


@triton.jit
def _uniform_co(w):
    """Top 24 bits -> [0, 1), exactly."""
    return (w >> 8).to(tl.float32) * 5.9604644775390625e-08


@triton.jit
def _uniform_oc(w):
    """Top 24 bits -> (0, 1], exactly."""
    return ((w >> 8) + 1).to(tl.float32) * 5.9604644775390625e-08


@triton.jit
def _pick(w0, w1, w2, w3, sel):
    """Word `sel` (0..3, a scalar) of a Philox block."""
    return tl.where(sel == 0, w0, tl.where(sel == 1, w1, tl.where(sel == 2, w2, w3)))


# ------------------------------------------------------------------------------------------------
# exp / log (kac_math.h: kac_exp, kac_log), operation for operation, so the noise is bit-identical
# to the C++ kernels (tl.exp lowers to ex2.approx on NVIDIA GPUs: a few ulp off near e^-32).
# ------------------------------------------------------------------------------------------------
@triton.jit
def _kac_exp(x):
    """exp(x) for x in [-87, 0]: 2^k e^r, |r| <= ln2/2, degree-6 Taylor, Cody-Waite ln2 split."""
    ki = (x * 1.44269504 + tl.where(x < 0.0, -0.5, 0.5)).to(tl.int32)
    k = ki.to(tl.float32)
    r = x - k * 0.693145751953125
    r = r - k * 1.428606765330187e-06
    p = 1.0 + r * (1.0 + r * (0.5 + r * (1.6666667e-01 + r * (4.1666668e-02 +
                   r * (8.3333338e-03 + r * 1.3888889e-03)))))
    scale = ((ki + 127).to(tl.uint32) << 23).to(tl.float32, bitcast=True)
    return p * scale


@triton.jit
def _kac_log(x):
    """log(x) for normal x > 0: x = 2^e m, m in [sqrt(1/2), sqrt(2)), 2 atanh((m-1)/(m+1))."""
    bits = x.to(tl.uint32, bitcast=True)
    e = ((bits >> 23) & 0xFF).to(tl.int32) - 127
    m = ((bits & 0x007FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)  # [1, 2)
    big = m > 1.41421356
    m = tl.where(big, m * 0.5, m)
    e = tl.where(big, e + 1, e)
    f = tl.div_rn(m - 1.0, m + 1.0)
    f2 = f * f
    series = 2.0 * f * (1.0 + f2 * (3.3333334e-01 + f2 * (2.0000000e-01 +
                        f2 * (1.4285715e-01 + f2 * (1.1111111e-01 + f2 * 9.0909094e-02)))))
    ef = e.to(tl.float32)
    return ef * 0.693145751953125 + (ef * 1.428606765330187e-06 + series)


# ------------------------------------------------------------------------------------------------
# Exact Kac displacement (kac_math.h: kac_sample_lanes)
# ------------------------------------------------------------------------------------------------
@triton.jit
def _poisson_chunk(u, remaining, active, n):
    """One chunk of the Poisson inverse CDF (mean <= 32, at most 256 steps), lanes in lock step."""
    mean = tl.where(remaining < 32.0, remaining, 32.0)
    p = _kac_exp(-mean)
    cdf = p
    searching = active & (u >= cdf)
    j = tl.zeros([], tl.int32)
    while tl.max(searching.to(tl.int32), axis=0) > 0:
        j += 1
        p_next = p * tl.div_rn(mean, j.to(tl.float32))
        cdf_prev = cdf
        cdf_next = cdf_prev + p_next
        p = tl.where(searching, p_next, p)
        cdf = tl.where(searching, cdf_next, cdf)
        n += searching.to(tl.int32)
        # stop where the float CDF saturates (kac_math.h: poisson loop)
        searching = searching & (u >= cdf) & (j < 256) & (cdf_next > cdf_prev)
    left = tl.where(active, remaining - mean, remaining)
    # `left < remaining` holds whenever the header's loop terminates (remaining drops by mean > 0);
    # it only stops lanes the header would loop on forever (s = inf, or a s >= 2^29 where
    # remaining - 32 rounds back to remaining), so bad times cannot hang the GPU.
    active = active & (left > 0.0) & (left < remaining)
    return left, active, n


@triton.jit
def _spacing(prod, resc, w, i, n):
    """Multiplies uniform_oc(w) into the product of spacing i where i <= n, renormalizing by 2^64."""
    live = n >= i
    q = prod * _uniform_oc(w)
    small = q < 5.421010862427522e-20
    q = tl.where(small, q * 1.8446744073709552e+19, q)
    prod = tl.where(live, q, prod)
    resc += (live & small).to(tl.int32)
    return prod, resc


@triton.jit
def _kac_sample(e, lam, reach, offset, k0, k1):
    """X(s) per lane of element index e (int64), lambda = a s, reach = c s (float32 blocks).

    Stream of element e: word k of Philox(counter=(e_lo, e_hi, offset, k // 4), key=(k0, k1));
    word 0: sign (bit 0) and the first Poisson uniform, word 1 + i: spacing i; Poisson chunk 1 + j
    uses word j of the side stream (block 0x80000000 | j // 4).
    """
    c0 = (e & 0xFFFFFFFF).to(tl.uint32)
    c1 = (e >> 32).to(tl.uint32)
    zero = tl.zeros_like(c0)
    c2 = zero + offset
    w0, w1, w2, w3 = _philox(c0, c1, c2, zero, k0, k1)

    # Poisson phase: n switches, first chunk from word 0, later chunks from the side stream.
    sign = tl.where((w0 & 1) != 0, -1.0, 1.0)
    n = tl.zeros(lam.shape, tl.int32)
    active = n == 0
    remaining, active, n = _poisson_chunk(_uniform_co(w0), lam, active, n)
    j = tl.zeros([], tl.int32)
    while tl.max(active.to(tl.int32), axis=0) > 0:
        block = zero + (tl.cast(j >> 2, tl.uint32) | 0x80000000)
        s0, s1, s2, s3 = _philox(c0, c1, c2, block, k0, k1)
        u = _uniform_co(_pick(s0, s1, s2, s3, j & 3))
        remaining, active, n = _poisson_chunk(u, remaining, active, n)
        j += 1

    # Spacing phase: main-stream word k = 1 + i feeds spacing i (parity i & 1). Block 0 holds
    # spacings 0..2 (words 1..3); block b >= 1 holds spacings 4b-1 .. 4b+2.
    pe = tl.full(lam.shape, 1.0, tl.float32)
    po = tl.full(lam.shape, 1.0, tl.float32)
    re = tl.zeros(lam.shape, tl.int32)
    ro = tl.zeros(lam.shape, tl.int32)
    pe, re = _spacing(pe, re, w1, 0, n)
    po, ro = _spacing(po, ro, w2, 1, n)
    pe, re = _spacing(pe, re, w3, 2, n)
    max_n = tl.max(n, axis=0)
    for b in range(1, ((max_n + 1) >> 2) + 1):
        block = zero + tl.cast(b, tl.uint32)
        m0, m1, m2, m3 = _philox(c0, c1, c2, block, k0, k1)
        po, ro = _spacing(po, ro, m0, 4 * b - 1, n)
        pe, re = _spacing(pe, re, m1, 4 * b, n)
        po, ro = _spacing(po, ro, m2, 4 * b + 1, n)
        pe, re = _spacing(pe, re, m3, 4 * b + 2, n)

    s_even = re.to(tl.float32) * 44.3614195558365 - _kac_log(pe)
    s_odd = ro.to(tl.float32) * 44.3614195558365 - _kac_log(po)
    total = s_even + s_odd
    # total == 0 only if every uniform was exactly 1 (probability 2^-24 per draw): the atom.
    pos = total > 0.0
    frac = tl.where(pos, tl.div_rn(s_even - s_odd, tl.where(pos, total, 1.0)), 1.0)
    return sign * reach * frac


# ------------------------------------------------------------------------------------------------
# Conditional velocity (kac_math.h: kac_velocity_lanes)
# ------------------------------------------------------------------------------------------------
@triton.jit
def _gap_to_cone(c, s, ax):
    """c s - |x| with c s as an exact Dekker product (kac_math.h: gap_to_cone)."""
    hi = c * s
    t = 4097.0 * c
    c_hi = t - (t - c)
    c_lo = c - c_hi
    t = 4097.0 * s
    s_hi = t - (t - s)
    s_lo = s - s_hi
    lo = ((c_hi * s_hi - hi) + c_hi * s_lo + c_lo * s_hi) + c_lo * s_lo
    return (hi - ax) + lo


@triton.jit
def _kac_velocity(s, x, a, c, eps):
    reach = c * s
    ax = tl.abs(x)
    gap = _gap_to_cone(c, s, ax) * (reach + ax)  # (cs - |x|)(cs + |x|), factored
    r = tl.sqrt_rn(tl.maximum(gap, 0.0))
    z = tl.div_rn(a * r, c)
    z2 = z * z
    depth = (3 + (3.25 * tl.sqrt_rn(z) + 0.12 * z).to(tl.int32)) | 1
    acc = 2.0 * depth.to(tl.float32)
    max_depth = tl.max(depth, axis=0)
    for kk in range(1, max_depth, 2):
        k = max_depth - kk  # max_depth - 1 down to 2, two levels per division
        kf = tl.cast(k, tl.float32)
        nxt = 2.0 * (kf - 1.0) + tl.div_rn(z2 * acc, 2.0 * kf * acc + z2)
        acc = tl.where(k < depth, nxt, acc)
    on_cone = tl.where(x > 0.0, c, tl.where(x < 0.0, -c, 0.0))
    inside = tl.div_rn(a * x, a * s + acc)
    return tl.where(ax >= reach * (1.0 - eps), on_cone, inside)


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["N", "inner"])
def _velocity_kernel(x_ptr, s_ptr, v_ptr, N, inner, a, c, eps, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + offs // inner, mask=mask, other=0.0).to(tl.float32)
    v = _kac_velocity(s, x, a, c, eps)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["N", "k0", "k1", "offset"])
def _noise_kernel(s_ptr, out_ptr, rng_ptr, N, a, c, k0, k1, offset, SEED_IN_MEMORY: tl.constexpr,
                  BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    if SEED_IN_MEMORY:
        # int64 [seed, offset] read at run time (a replayed CUDA graph sees the values copied in
        # since the capture), in place of k0, k1, offset; converted as the CUDA kernel does.
        seed = tl.load(rng_ptr)
        k0 = seed & 0xFFFFFFFF
        k1 = seed >> 32
        offset = tl.load(rng_ptr + 1)
    s = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # Padding lanes get s = 0 (lambda = 0: one masked Poisson chunk, n = 0), as in the header.
    x = _kac_sample(offs, a * s, c * s, offset.to(tl.uint32), k0.to(tl.uint32), k1.to(tl.uint32))
    tl.store(out_ptr + offs, x.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["N", "inner", "k0", "k1", "offset"])
def _noise_target_kernel(x0_ptr, t_ptr, xt_ptr, u_ptr, N, inner, a, c, T, eps, k0, k1, offset,
                         CLOCK: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    x0 = tl.load(x0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(t_ptr + offs // inner, mask=mask, other=0.0).to(tl.float32)
    # Schedule (kac_math.h: schedule): f = 1 - t/T, g = t or T (t/T)^2.
    tau = tl.div_rn(t, T)
    f = 1.0 - tau
    df = tl.div_rn(tl.full([], -1.0, tl.float32), T)
    if CLOCK == 1:
        g = T * tau * tau
        dg = 2.0 * tau
    else:
        g = t
        dg = tl.full(t.shape, 1.0, tl.float32)
    k = _kac_sample(offs, a * g, c * g, offset.to(tl.uint32), k0.to(tl.uint32), k1.to(tl.uint32))
    v = _kac_velocity(g, k, a, c, eps)
    tl.store(xt_ptr + offs, (f * x0 + k).to(xt_ptr.dtype.element_ty), mask=mask)
    tl.store(u_ptr + offs, (df * x0 + dg * v).to(u_ptr.dtype.element_ty), mask=mask)


def _split_seed(seed: int) -> tuple[int, int]:
    return seed & _MASK32, (seed >> 32) & _MASK32


# ------------------------------------------------------------------------------------------------
# Custom ops
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("kacfast::triton_kac_velocity", mutates_args=())
def _kac_velocity_op(x: torch.Tensor, s: torch.Tensor, a: float, c: float,
                     eps: float) -> torch.Tensor:
    x = x.contiguous()
    s = s.to(torch.float32).contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    if n == 0:
        return out
    if s.numel() == 0 or n % s.numel() != 0:
        raise ValueError(f"s with {s.numel()} elements does not cover a leading block of x with "
                         f"{n} elements.")
    launch(_velocity_kernel, x.device, n, x, s, out, n, n // s.numel(), float(a), float(c),
            float(eps))
    return out


def _noise(s: torch.Tensor, a: float, c: float, dtype: torch.dtype, seed: int, offset: int,
           rng: torch.Tensor | None) -> torch.Tensor:
    """Both noise ops: Philox state from (seed, offset), or from rng (int64 [seed, offset] on s's
    device, read by the kernel) when it is given."""
    s = s.to(torch.float32).contiguous()
    out = torch.empty(s.shape, dtype=dtype, device=s.device)
    n = s.numel()
    if n == 0:
        return out
    k0, k1 = _split_seed(seed)
    # Without rng the kernel never reads rng_ptr: any pointer does.
    launch(_noise_kernel, s.device, n, s, out, s if rng is None else rng, n, float(a), float(c),
            k0, k1, offset & _MASK32, SEED_IN_MEMORY=rng is not None)
    return out


@torch.library.custom_op("kacfast::triton_kac_noise", mutates_args=())
def _kac_noise_op(s: torch.Tensor, a: float, c: float, seed: int, offset: int,
                  dtype: torch.dtype) -> torch.Tensor:
    return _noise(s, a, c, dtype, seed, offset, None)


@torch.library.custom_op("kacfast::triton_kac_noise_seeded", mutates_args=())
def _kac_noise_seeded_op(s: torch.Tensor, rng: torch.Tensor, a: float, c: float,
                         dtype: torch.dtype) -> torch.Tensor:
    if rng.dtype != torch.int64 or rng.shape != (2,) or rng.device != s.device:
        raise ValueError(f"rng must be an int64 tensor [seed, offset] of shape (2,) on {s.device}, "
                         f"got {rng.dtype} {tuple(rng.shape)} on {rng.device}.")
    return _noise(s, a, c, dtype, 0, 0, rng.contiguous())


@torch.library.custom_op("kacfast::triton_kac_noise_target", mutates_args=())
def _kac_noise_target_op(x0: torch.Tensor, t: torch.Tensor, a: float, c: float, T: float,
                         clock: int, eps: float, seed: int,
                         offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    x0 = x0.contiguous()
    t = t.to(torch.float32).contiguous()
    x_t = torch.empty_like(x0)
    u = torch.empty_like(x0)
    n = x0.numel()
    if n == 0:
        return x_t, u
    if clock not in (0, 1):
        raise ValueError(f"clock must be 0 (g=t) or 1 (g=T(t/T)^2), got {clock}.")
    if t.numel() == 0 or n % t.numel() != 0:
        raise ValueError(f"t with {t.numel()} elements does not cover a leading block of x0 "
                         f"with {n} elements.")
    k0, k1 = _split_seed(seed)
    launch(_noise_target_kernel, x0.device, n, x0, t, x_t, u, n, n // t.numel(), float(a),
            float(c), float(T), float(eps), k0, k1, offset & _MASK32, CLOCK=int(clock))
    return x_t, u


_kac_velocity_op.register_fake(_fake.kac_velocity)
_kac_noise_op.register_fake(_fake.kac_noise)
_kac_noise_seeded_op.register_fake(_fake.kac_noise_seeded)
_kac_noise_target_op.register_fake(_fake.kac_noise_target)


# ------------------------------------------------------------------------------------------------
# Python entry points (what kacfast.ops calls with contiguous inputs, s / t in float32)
# ------------------------------------------------------------------------------------------------
def kac_velocity(x: torch.Tensor, s: torch.Tensor, a: float, c: float,
                 eps: float = 1e-4) -> torch.Tensor:
    """v_K(s, x) elementwise; s has x.numel() elements or covers a leading block of x."""
    return torch.ops.kacfast.triton_kac_velocity(x, s, float(a), float(c), float(eps))


def kac_noise(s: torch.Tensor, a: float, c: float, seed: int, offset: int = 0,
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """Kac displacement X(s) per element of s, in `dtype` (default s.dtype)."""
    return torch.ops.kacfast.triton_kac_noise(s, float(a), float(c), int(seed), int(offset),
                                              dtype or s.dtype)


def kac_noise_seeded(s: torch.Tensor, rng: torch.Tensor, a: float, c: float,
                     dtype: torch.dtype | None = None) -> torch.Tensor:
    """kac_noise with rng = int64 [seed, offset] on s's device, read by the kernel when it runs."""
    return torch.ops.kacfast.triton_kac_noise_seeded(s, rng, float(a), float(c), dtype or s.dtype)


def kac_noise_target(x0: torch.Tensor, t: torch.Tensor, a: float, c: float, T: float,
                     clock: int, eps: float, seed: int, offset: int = 0):
    """(x_t, u) for data x0 (B, ...) at per-sample times t (B,); clock 0: g = t, 1: g = T (t/T)^2."""
    return torch.ops.kacfast.triton_kac_noise_target(x0, t, float(a), float(c), float(T),
                                                     int(clock), float(eps), int(seed),
                                                     int(offset))
