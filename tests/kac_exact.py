"""Exact law of the 1-D Kac displacement X(s) (float64, numpy/scipy), for statistical tests."""
import math

import numpy as np
from scipy.special import i0e, i1e


def continuous_density(x, s, a, c):
    """Density of the continuous part on |x| < c s (integrates to 1 - e^{-as})."""
    x = np.asarray(x, dtype=np.float64)
    r = np.sqrt(np.maximum(c * c * s * s - x * x, 1e-300))
    z = a * r / c
    # a c s I1(z) / r with scaled Bessels; r -> 0 gives the finite limit a^2 s / 2 * ... handled by i1e
    return np.exp(z - a * s) / (2 * c) * (a * i0e(z) + a * c * s / r * i1e(z))


def continuous_cdf(s, a, c, points=400_001):
    """(grid, CDF of the continuous part normalized to 1) on [-c s, c s]."""
    grid = np.linspace(-c * s, c * s, points)
    dens = continuous_density(grid, s, a, c)
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(grid))])
    return grid, cdf / cdf[-1], cdf[-1]


def moment(k, s, a, c, points=400_001):
    """E[X^k] of the full law (atoms included), by quadrature."""
    grid = np.linspace(-c * s, c * s, points)
    dens = continuous_density(grid, s, a, c) * grid**k
    cont = np.sum((dens[1:] + dens[:-1]) / 2 * np.diff(grid))
    return cont + math.exp(-a * s) * (c * s) ** k * (1 + (-1) ** k) / 2


def variance(s, a, c):
    """Closed form Var X(s) = (c^2/a) [s - (1 - e^{-2as}) / (2a)]."""
    return c * c / a * (s - (1 - math.exp(-2 * a * s)) / (2 * a))
