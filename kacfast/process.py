"""KacProcess: the forward process of a Kac flow (rate a, speed c, horizon T, clock g)."""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass

import torch

from kacfast import ops
from kacfast.formulas import CLOCKS, schedule


@dataclass(frozen=True)
class KacProcess:
    """x_t = f(t) x0 + K_{g(t)} with f(t) = 1 - t/T and independent 1-D Kac processes K per coordinate.

    Args:
        a: Poisson switching rate (> 0). Default 9.0 (with c = 3: c^2/a = 1, unit diffusion scale).
        c: speed (> 0): every coordinate moves at most c * g(t) away from f(t) x0.
        T: horizon (> 0); training time runs from data (t = 0) to noise (t = T).
        clock: "t" (g(t) = t) or "t2" (g(t) = T (t/T)^2).
        eps: light-cone band of the conditional velocity (see kacfast.ops.kac_velocity).
    """

    a: float = 9.0
    c: float = 3.0
    T: float = 1.0
    clock: str = "t"
    eps: float = 1e-4

    def __post_init__(self):
        for name in ("a", "c", "T"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not value > 0:
                raise ValueError(f"KacProcess: {name} must be a number > 0, got {value!r}.")
        if self.clock not in CLOCKS:
            raise ValueError(f"KacProcess: clock must be one of {CLOCKS}, got {self.clock!r}.")
        if not 0 <= self.eps < 1:
            raise ValueError(f"KacProcess: eps must lie in [0, 1), got {self.eps!r}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "KacProcess":
        return cls(**d)

    def schedule(self, t: torch.Tensor):
        """(f, f', g, g') at times t, each shaped like t."""
        return schedule(t, self.T, self.clock)

    def noise_target(self, x0: torch.Tensor, t: torch.Tensor, seed: int, offset: int = 0):
        """Flow-matching pair (x_t, u) for data x0 (B, ...) at times t (B,) in [0, T] (one fused pass)."""
        return ops.kac_noise_target(x0, t, self.a, self.c, self.T, self.clock, self.eps,
                                    seed=seed, offset=offset)

    def prior(self, shape, seed: int | torch.Tensor, offset: int = 0, device=None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x_T ~ Kac(g(T)) i.i.d. per coordinate, support [-c g(T), c g(T)] (f(T) = 0: no data needed).

        seed, offset: as in kacfast.ops.kac_noise; seed may be an int64 tensor [seed, offset] on
        `device` (offset left at 0), which a captured CUDA graph reads at each replay.
        """
        s = torch.full(tuple(shape), float(self.T), dtype=torch.float32, device=device)  # g(T) = T
        return ops.kac_noise(s, self.a, self.c, seed=seed, offset=offset, dtype=dtype)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, x0: torch.Tensor | None = None) -> torch.Tensor:
        """Conditional flow velocity u(t, x | x0) = f' x0 + g' v_K(g, x - f x0) (x0 = 0 if None).

        x: (B, ...); t: (B,) in [0, T]. This is the exact marginal velocity when the data is a
        Dirac at x0, which makes it the analytic model for sampler tests.
        """
        view = (-1,) + (1,) * (x.dim() - 1)
        f, df, g, dg = (v.to(torch.float32).reshape(view) for v in self.schedule(t))
        x0 = torch.zeros_like(x) if x0 is None else x0
        k = x - f * x0
        return (df * x0 + dg * ops.kac_velocity(k, g, self.a, self.c, self.eps)).to(x.dtype)
