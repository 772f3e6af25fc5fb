"""The closed-form formulas of docs/kac-math.md that Python code uses outside the kernels, defined
once: the signal / clock schedules, the Kac variance and the guidance mix. (The kernels' copies
live in csrc/kac_math.h; kacfast.ops.reference, the test oracle, uses these.)"""
from __future__ import annotations

import math

import torch

__all__ = ["CLOCKS", "schedule", "kac_variance", "guidance_mix"]

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


def kac_variance(s: float, a: float, c: float) -> float:
    """Var X(s) = (c^2/a) [s - (1 - e^{-2as}) / (2a)]."""
    return c * c / a * (s - (1.0 - math.exp(-2.0 * a * s)) / (2.0 * a))


def guidance_mix(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance u + w (c - u) (w = 1: the conditional output)."""
    return uncond + w * (cond - uncond)
