"""Power-function EMAs of a run's weights (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", sec. 3), kept beside the run's exponential EMA on request.

A power-function EMA at update t weights the iterate of update s by about s^gamma, so its length
relative to the run, sigma_rel (the standard deviation of that profile over s / t), stays the same
however long the run trains, where a fixed decay averages over a fixed number of steps. One run
keeping several of them measures the EMA length as a lever without retraining.
"""
from __future__ import annotations

import numpy as np

# gamma -> 0: the plain running mean of every iterate, the longest power-function average
MAX_SIGMA_REL = 12 ** -0.5


def power_ema_gamma(sigma_rel: float) -> float:
    """The exponent gamma > 0 of the power-function EMA of relative length sigma_rel in
    (0, 12^-1/2 ~ 0.289): the profile (gamma + 1) x^gamma on x = s / t in [0, 1] has variance
    (gamma + 1) / ((gamma + 2)^2 (gamma + 3))."""
    if not 0 < sigma_rel < MAX_SIGMA_REL:
        raise ValueError(f"an EMA length sigma_rel must lie in (0, {MAX_SIGMA_REL:.4f}), got {sigma_rel}.")
    # sigma_rel^-2 (gamma + 1) = (gamma + 2)^2 (gamma + 3), a cubic with one root above 0 here
    inverse_variance = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - inverse_variance, 12.0 - inverse_variance])
    return float(max(root.real for root in roots if abs(root.imag) < 1e-9))


def power_ema_decay(gamma: float, update: int) -> float:
    """The decay of update number `update` (1 for the first): (1 - 1 / update)^(gamma + 1).
    0 at the first update, so the average starts at the first iterate and needs no warm-up."""
    if update < 1:
        raise ValueError(f"update counts from 1, got {update}.")
    return (1.0 - 1.0 / update) ** (gamma + 1.0)


def average_name(sigma_rel: float) -> str:
    """The name a power-function EMA is stored and loaded under: 'power0.05' for sigma_rel 0.05
    (the float's shortest repr, so distinct lengths never share a name)."""
    return f"power{float(sigma_rel)!r}"
