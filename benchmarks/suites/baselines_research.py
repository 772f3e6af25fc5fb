"""Eager float64 baseline shaped like the Kac-flow research code (github JChemseddine/telegraphers).

It follows that code's approach (our own implementation, see shared/docs/kac-math.md sections 3-5):
the 1-D Kac displacement is drawn from a precomputed inverse-CDF table, and the conditional velocity
is evaluated in float64 with the scaled Bessel functions i0e / i1e, one eager op at a time.

Table: row j holds the CDF of X(s_j), s_j = j T / M, at the K + 1 points x_k = c s_j u_k on the
normalized grid u_k = linspace(-1, 1, K + 1). Row values run from e^{-a s}/2 (the atom at -c s) to
1 - e^{-a s}/2 (the left limit at the atom +c s); uniforms outside that range clamp to the atoms.
"""
from __future__ import annotations

import torch

from kacfast.formulas import kac_variance


def kac_density(s: torch.Tensor, x: torch.Tensor, a: float, c: float) -> torch.Tensor:
    """Continuous part p(s, x) of the Kac law on |x| <= c s, float64, broadcast of s and x.

    p = e^{-as}/(2c) [a I0(z) + (a c s / r) I1(z)], r = sqrt(c^2 s^2 - x^2), z = a r / c, written
    with i0e / i1e (I = e^z ie, z <= a s) and I1(z) / r = (a / c) I1(z) / z (1/2 at z = 0).
    """
    s, x = s.double(), x.double()
    r = ((c * s - x.abs()) * (c * s + x.abs())).clamp(min=0.0).sqrt()
    z = a * r / c
    safe_z = torch.where(z > 1e-8, z, 1.0)
    i1e_over_z = torch.where(z > 1e-8, torch.special.i1e(safe_z) / safe_z, 0.5)
    return torch.exp(z - a * s) / (2 * c) * (a * torch.special.i0e(z) + a * a * s * i1e_over_z)


def build_cdf_table(a: float, c: float, T: float, M: int = 5000, K: int = 4096,
                    chunk: int = 500) -> torch.Tensor:
    """CDF table (M + 1, K + 1), float64: row j is the CDF of X(j T / M) on the module doc's grid.

    The continuous part is integrated by the trapezoid rule in u and normalized to mass 1 - e^{-as};
    rows are built `chunk` at a time to bound the temporary memory.
    """
    u = torch.linspace(-1.0, 1.0, K + 1, dtype=torch.float64)
    table = torch.empty(M + 1, K + 1, dtype=torch.float64)
    for start in range(0, M + 1, chunk):
        s = torch.arange(start, min(start + chunk, M + 1), dtype=torch.float64)[:, None] * (T / M)
        p = kac_density(s, c * s * u, a, c)
        cum = torch.cumulative_trapezoid(p, u, dim=1)
        cum = torch.cat([torch.zeros_like(s), cum / cum[:, -1:]], dim=1)
        atom = 0.5 * torch.exp(-a * s)
        table[start:start + s.shape[0]] = atom + (1.0 - 2.0 * atom) * cum
    return table


def sample_table(table: torch.Tensor, s: torch.Tensor, n: int, c: float, T: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """n draws of X(s_b) for each time s (B,) in [0, T]: (B, n) float64.

    Nearest time row, searchsorted of a float64 uniform in that row, linear interpolation in x.
    """
    M, K = table.shape[0] - 1, table.shape[1] - 1
    s = s.double()
    rows = table[torch.round(s / T * M).long().clamp(0, M)]  # (B, K + 1)
    uniform = torch.rand(s.shape[0], n, dtype=torch.float64, generator=generator, device=s.device)
    hi = torch.searchsorted(rows, uniform, right=True).clamp(1, K)
    lo = hi - 1
    f_lo, f_hi = rows.gather(1, lo), rows.gather(1, hi)
    w = ((uniform - f_lo) / (f_hi - f_lo).clamp(min=1e-300)).clamp(0.0, 1.0)
    u = -1.0 + (lo + w) * (2.0 / K)
    return c * s[:, None] * u


def velocity(s: torch.Tensor, x: torch.Tensor, a: float, c: float, T: float,
             eps: float = 1e-4) -> torch.Tensor:
    """v_K(s, x) = a x / (a s + z I0(z) / I1(z)), float64; c sign(x) where |x| >= c s - eps (s/T) c.

    s broadcasts to x; h(z) = z I0 / I1 is taken as 2 (its limit) for z < 1e-8.
    """
    s, x = s.double(), x.double()
    r = (c * c * s * s - x * x).clamp(min=0.0).sqrt()
    z = a * r / c
    safe_z = torch.where(z > 1e-8, z, 1.0)
    h = torch.where(z > 1e-8, safe_z * torch.special.i0e(safe_z) / torch.special.i1e(safe_z), 2.0)
    inside = a * x / (a * s + h)
    return torch.where(x.abs() >= c * s - eps * (s / T) * c, c * torch.sign(x), inside)


def research_noise_target(x0: torch.Tensor, t: torch.Tensor, table: torch.Tensor, a: float,
                          c: float, T: float, generator: torch.Generator | None = None):
    """Flow-matching pair for data x0 (B, ...) at times t (B,), f(t) = 1 - t/T, g(t) = t.

    x_t = f x0 + K,  u = -x0 / T + v_K(t, K), with K drawn from `table`. Returns (x_t, u) float64.
    """
    x = x0.double().reshape(x0.shape[0], -1)
    s = t.double()
    k = sample_table(table, s, x.shape[1], c, T, generator)
    x_t = (1.0 - s / T)[:, None] * x + k
    u = -x / T + velocity(s[:, None], k, a, c, T)
    return x_t.reshape(x0.shape), u.reshape(x0.shape)


def table_variance_error(table: torch.Tensor, a: float, c: float, T: float,
                         times=(0.05, 0.25, 0.5, 1.0), n: int = 200_000, seed: int = 0) -> float:
    """Largest relative error of the sampled Var X(s) against (c^2/a)[s - (1 - e^{-2as})/(2a)].

    n draws per time in `times` (each in (0, T]); a correct table stays below 0.01 for n = 2e5.
    """
    gen = torch.Generator().manual_seed(seed)
    s = torch.tensor(times, dtype=torch.float64)
    samples = sample_table(table, s, n, c, T, gen)
    sampled = samples.pow(2).mean(dim=1)  # the law is symmetric: E X = 0
    exact = torch.tensor([kac_variance(v, a, c) for v in times], dtype=torch.float64)
    return float(((sampled - exact).abs() / exact).max())
