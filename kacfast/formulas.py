"""The closed-form formulas of docs/kac-math.md that Python code uses outside the kernels, defined
once: the signal / clock schedules, the Kac variance, the second moment of the Kac velocity, the
teacher's preconditioning and the guidance mix. (The kernels' copies
live in csrc/kac_math.h; kacfast.ops.reference, the test oracle, uses these.)"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["CLOCKS", "schedule", "kac_variance", "kac_velocity_second_moment", "kac_preconditioning",
           "guidance_mix"]

#: time changes g of the Kac part: "t" (g(t) = t) or "t2" (g(t) = T (t/T)^2)
CLOCKS = ("t", "t2")


def schedule(t: torch.Tensor, T: float, clock: str = "t"):
    """Signal f(t) = 1 - t/T and clock g(t) = t ("t") or T (t/T)^2 ("t2"), with derivatives.

    Returns (f, df, g, dg), each broadcast like `t`.
    """
    tau = t / T
    f = 1.0 - tau
    df = torch.full_like(t, -1.0 / T)
    if clock == "t2":
        return f, df, T * tau * tau, 2.0 * tau
    if clock != "t":
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}.")
    return f, df, t.clone(), torch.ones_like(t)


def kac_variance(s, a: float, c: float):
    """Var X(s) = (c^2/a) [s - (1 - e^{-2as}) / (2a)]; s a float or a tensor (elementwise)."""
    decay = torch.exp(-2.0 * a * s) if isinstance(s, torch.Tensor) else math.exp(-2.0 * a * s)
    return c * c / a * (s - (1.0 - decay) / (2.0 * a))


def _float64(value) -> torch.Tensor:
    # .to keeps a tensor's device (torch.as_tensor would move it to a `with torch.device(...)`
    # context's device, "meta" included)
    return value.to(torch.float64) if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float64)


def kac_velocity_second_moment(s: torch.Tensor, a: float, c: float, nodes: int = 128) -> torch.Tensor:
    """E[v_K(s, X(s))^2], the mean square of the conditional Kac velocity at times s >= 0 (any
    shape), in float64: c^2 e^{-as} from the atoms plus the continuous part on |x| < cs by
    Gauss-Legendre quadrature with `nodes` points on [0, cs] (even integrand). c^2 at s = 0, falling
    towards c^2/(4as) (the diffusion limit's 1/(4s) for c^2/a = 1) for large as. The Bessel
    functions enter exponentially scaled (i0e, i1e: I(z) e^{-as} = ie(z) e^{z - as}, z <= as), so
    no term overflows."""
    s = _float64(s)
    unit, weight = (torch.from_numpy(v).to(s.device) for v in np.polynomial.legendre.leggauss(nodes))
    half = (c * s)[..., None]
    x = half * (unit + 1) / 2                                   # nodes inside (0, cs)
    r = torch.sqrt(((half - x) * (half + x)).clamp_min(0))
    z = a * r / c
    i0e, i1e = torch.special.i0e(z), torch.special.i1e(z)
    scale = torch.exp(z - a * s[..., None])
    density = scale / (2 * c) * (a * i0e + a * half * i1e / r.clamp_min(1e-300))
    h = torch.where(z > 1e-8, z * i0e / i1e.clamp_min(1e-300), torch.full_like(z, 2.0))
    velocity = a * x / (a * s[..., None] + h)
    inside = (density * velocity.square() * weight).sum(-1) * half[..., 0]   # 2 * (cs / 2) * sum
    return c * c * torch.exp(-a * s) + inside


def kac_preconditioning(t: torch.Tensor, a: float, c: float, T: float, clock: str, rms_data: float):
    """The Kac teacher's input and output scales at times t (any shape), float64 (c_in, c_out):
    c_in = 1 / sqrt(E[x_t^2]) = 1 / sqrt(f^2 rms^2 + Var K(g)) and
    c_out = sqrt(E[u^2]) = sqrt(f'^2 rms^2 + g'^2 E[v_K(g)^2]) (x0 and the Kac noise independent,
    the noise and its velocity of mean 0), with rms_data = sqrt(E[x0^2]) per coordinate. A network
    F preconditioned this way predicts v = c_out F(c_in x_t, t): unit-scale input and target at
    every t."""
    f, df, g, dg = schedule(_float64(t), T, clock)
    c_in = torch.rsqrt(f.square() * rms_data ** 2 + kac_variance(g, a, c))
    c_out = torch.sqrt(df.square() * rms_data ** 2 + dg.square() * kac_velocity_second_moment(g, a, c))
    return c_in, c_out


def guidance_mix(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance u + w (c - u) (w = 1: the conditional output)."""
    return uncond + w * (cond - uncond)
