"""Distances between 2-D (or any low-D) point sets: exact, no learned features."""
from __future__ import annotations

import math

import torch

from kacfast import data as _data
from kacfast.metrics.distances import _as64

_EXACT = "donot_use_mm_for_euclid_dist"  # |x - y| directly: no cancellation for close points


def _mean_pairwise(a: torch.Tensor, b: torch.Tensor, exclude_diagonal: bool, block: int = 2048
                   ) -> float:
    """Mean Euclidean distance over pairs (a_i, b_j), in row blocks (memory O(block * M))."""
    total = 0.0
    for i in range(0, a.shape[0], block):
        total += float(torch.cdist(a[i:i + block], b, compute_mode=_EXACT).sum())
    n, m = a.shape[0], b.shape[0]
    return total / (n * (n - 1) if exclude_diagonal else n * m)


def energy_distance(a, b) -> float:
    """Energy distance between two samples (Szekely & Rizzo):
    ``2 E|X - Y| - E|X - X'| - E|Y - Y'|``.

    The within-sample terms are U-statistics (pairs i != j, divided by n (n - 1)), so the estimate is
    unbiased for the population energy distance (it can dip slightly below 0 when both samples come
    from the same law) and consistent. It is the squared-distance-like quantity (not its square
    root); 0 iff the laws are equal. Cost O(N M) distances, float64, computed in blocks.

    Args:
        a: (N, D), b: (M, D) tensors or arrays, N, M >= 2.
    """
    a, b = _as64(a, "a"), _as64(b, "b")
    if a.shape[1] != b.shape[1] or a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"need (N, D), (M, D) with N, M >= 2, got {tuple(a.shape)}, {tuple(b.shape)}.")
    return (2 * _mean_pairwise(a, b, False) - _mean_pairwise(a, a, True)
            - _mean_pairwise(b, b, True))


def _w2sq_1d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact W2^2 between 1-D empirical laws, batched over rows: a (P, N), b (P, M), uniform weights.

    Both quantile functions are step functions; integrate (F_a^-1(u) - F_b^-1(u))^2 over the merged
    breakpoints {i/N} U {j/M}.
    """
    a, _ = a.sort(dim=1)
    b, _ = b.sort(dim=1)
    n, m = a.shape[1], b.shape[1]
    if n == m:
        return ((a - b) ** 2).mean(1)
    u = torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,
                   torch.arange(1, m + 1, dtype=torch.float64) / m]).unique()  # sorted, ends at 1
    lo = torch.cat([torch.zeros(1, dtype=torch.float64), u[:-1]])
    mid, width = (lo + u) / 2, u - lo
    ia = (mid * n).floor().long().clamp_max(n - 1)
    ib = (mid * m).floor().long().clamp_max(m - 1)
    return ((a[:, ia] - b[:, ib]) ** 2 * width).sum(1)


def sliced_w2(a, b, projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance ``(E_theta W2^2(theta.a, theta.b))^{1/2}``, theta uniform on the
    unit sphere, estimated with ``projections`` random directions (seeded). Each 1-D W2^2 is exact for
    the empirical laws (sizes may differ). Float64.

    Args:
        a: (N, D), b: (M, D) tensors or arrays.
    """
    a, b = _as64(a, "a"), _as64(b, "b")
    if a.shape[1] != b.shape[1] or a.shape[0] < 1 or b.shape[0] < 1:
        raise ValueError(f"need (N, D), (M, D) with N, M >= 1, got {tuple(a.shape)}, {tuple(b.shape)}.")
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(int(projections), a.shape[1], generator=gen, dtype=torch.float64)
    theta = theta / theta.norm(dim=1, keepdim=True)
    total, chunk = 0.0, max(1, 2 ** 22 // (a.shape[0] + b.shape[0]))
    for i in range(0, theta.shape[0], chunk):
        t = theta[i:i + chunk]
        total += float(_w2sq_1d(t @ a.T, t @ b.T).sum())
    return math.sqrt(max(total / theta.shape[0], 0.0))


def mode_coverage(samples, centers=None, radius: float | None = None, min_count: int = 1
                  ) -> tuple[int, float]:
    """Mode coverage of a mixture: ``(modes_covered, fraction_near_a_mode)``.

    A sample is *near* a mode when its distance to the centre is <= ``radius``; a mode is covered when
    at least ``min_count`` samples are near it. Defaults: the ``gmm9`` centres
    (:func:`kacfast.data.gmm9_centers`) and ``radius = 3 * GMM9_STD`` (0.15; the true gmm9 law puts
    98.9 % of its mass within it).

    Args:
        samples: (N, D) points; centers: (K, D); radius > 0.
    """
    x = _as64(samples, "samples")
    c = _as64(_data.gmm9_centers() if centers is None else centers, "centers")
    radius = 3 * _data.GMM9_STD if radius is None else float(radius)
    if radius <= 0 or x.shape[1] != c.shape[1]:
        raise ValueError(f"need radius > 0 and matching dimensions, got radius={radius}, "
                         f"samples {tuple(x.shape)}, centers {tuple(c.shape)}.")
    if x.shape[0] == 0:
        return 0, 0.0
    near = torch.cdist(x, c, compute_mode=_EXACT) <= radius
    counts = near.sum(0)
    return int((counts >= min_count).sum()), float(near.any(1).double().mean())


def point_metrics(samples, reference, *, centers=None, radius: float | None = None,
                  projections: int = 256, seed: int = 0, max_points: int | None = 10_000) -> dict:
    """2-D (or any low-D) metrics of ``samples`` against ``reference`` points.

    Returns ``energy_distance``, ``sliced_w2`` and, when ``centers`` is given (``"gmm9"`` for the
    gmm9 centres and radius defaults), ``modes_covered`` / ``mode_fraction`` from :func:`mode_coverage`.
    ``max_points`` caps each set (first rows) for the O(N M) energy distance; None uses all.
    """
    a, b = _as64(samples, "samples"), _as64(reference, "reference")
    ea, eb = (a, b) if max_points is None else (a[:max_points], b[:max_points])
    out = {"energy_distance": energy_distance(ea, eb),
           "sliced_w2": sliced_w2(a, b, projections=projections, seed=seed)}
    if centers is not None:
        modes, frac = mode_coverage(a, None if isinstance(centers, str) and centers == "gmm9"
                                    else centers, radius)
        out.update(modes_covered=modes, mode_fraction=frac)
    return out
