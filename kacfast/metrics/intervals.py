"""Confidence intervals over independent seeds, and paired differences between two rows.

A quality row is measured once per seed (its own samples and, for the training-split reference,
its own reference subset); the seeds are independent replicates, so a Student-t interval on their
mean is the honest summary at 3-5 seeds, where a normal interval would be too narrow by 1.5-2x.
Two rows measured with the same seeds share each seed's reference, so their difference is judged
per seed (paired), which removes the reference's part of the spread.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Interval", "seed_interval", "paired_difference", "t_quantile"]

# two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
         2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
         2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
         2.048407, 2.045230, 2.042272)


def t_quantile(df: int) -> float:
    """t_{0.975, df}: the half-width factor of a two-sided 95% interval with df degrees of freedom.

    Exact table for df <= 30; beyond, the Cornish-Fisher expansion around z = 1.959964 (error
    below 1e-5 there)."""
    df = int(df)
    if df < 1:
        raise ValueError(f"need df >= 1 (at least two seeds), got {df}.")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963985
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


@dataclass(frozen=True)
class Interval:
    """Mean of per-seed values and its two-sided 95% Student-t interval [low, high]."""
    mean: float
    low: float
    high: float
    values: tuple[float, ...]

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "values": list(self.values)}


def seed_interval(values) -> Interval:
    """95% t-interval of the mean of >= 2 independent per-seed values (finite floats)."""
    values = tuple(float(v) for v in values)
    if len(values) < 2:
        raise ValueError(f"an interval needs at least 2 seeds, got {len(values)}.")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"per-seed values must be finite, got {values}.")
    n = len(values)
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, values)


def paired_difference(a, b) -> Interval:
    """Interval of mean(a - b) over seeds paired by position (same seed, same reference): the
    difference is significant at 5% when the interval excludes 0."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired rows need the same seeds, got {len(a)} and {len(b)} values.")
    return seed_interval([x - y for x, y in zip(a, b)])
