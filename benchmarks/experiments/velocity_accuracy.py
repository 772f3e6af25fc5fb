"""Float32 accuracy of kac_velocity against a float64 i0e/i1e evaluation (the README's figure).

    python benchmarks/experiments/velocity_accuracy.py [--backend cpu]

Grid: a in {0.5, 2, 9, 25, 50} x c in {0.5, 1, 3, 5} x 60 log-spaced s in [1e-4, 1] x 806 points
across [-c s, c s] (including 1 - 1e-3 ... 1 - 1e-6 of the cone). Points within 1e-6 (relative) of
the cone band's edge c s (1 - eps) are left out: the value jumps there by design, and float32 and
float64 may put such a point on different sides.
"""
import argparse
import itertools

import torch

from kacfast import ops
from kacfast.ops import reference


def max_error(backend: str, eps: float = 1e-4) -> tuple[float, int, tuple]:
    worst, where, points = 0.0, None, 0
    s = torch.logspace(-4, 0, 60)
    frac = torch.cat([torch.linspace(-1, 1, 801),
                      torch.tensor([1 - 1e-3, 1 - 2e-4, 1 - 5e-5, 1 - 1e-5, -(1 - 1e-6)])])
    for a, c in itertools.product([0.5, 2.0, 9.0, 25.0, 50.0], [0.5, 1.0, 3.0, 5.0]):
        times = s[:, None].expand(-1, frac.numel()).reshape(-1).contiguous()
        x = (frac[None, :] * c * s[:, None]).reshape(-1)
        with ops.use_backend(backend):
            out = ops.kac_velocity(x, times, a, c, eps).double()
        ref = reference.kac_velocity(x.double(), times.double(), a, c, eps)
        edge = (x.double().abs() - c * times.double() * (1 - eps)).abs() <= 1e-6 * c * times.double()
        err = (out - ref).abs()[~edge].max().item()
        points += int((~edge).sum())
        if err > worst:
            worst, where = err, (a, c)
    return worst, points, where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cpu")
    args = parser.parse_args()
    err, points, where = max_error(args.backend)
    print(f"backend {args.backend}: max abs error {err:.3g} over {points} points (worst at a, c = {where})")


if __name__ == "__main__":
    main()
