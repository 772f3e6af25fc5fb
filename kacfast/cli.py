"""`kacfast` command line (also `python -m kacfast`)."""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch


def _time(fn, repeats: int = 5) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def cmd_demo(args) -> int:
    """Kac noise and velocity at a glance: exactness, finite speed, and fused-op speed."""
    import kacfast
    from kacfast import ops
    from kacfast.ops import reference

    proc = kacfast.KacProcess(a=args.a, c=args.c)
    print(f"kacfast {kacfast.__version__}: Kac process a={proc.a}, c={proc.c}, T={proc.T}; "
          f"backend on CPU: {ops.resolve_backend(torch.device('cpu'))}")
    print("\n1) Exact Kac noise (no table): moments and atoms against the closed forms")
    print("   s     Var[X] drawn   Var[X] exact   atom mass drawn   e^{-as}     max|X|/(c s)")
    for s in (0.05, 0.25, 1.0):
        x = ops.kac_noise(torch.full((args.n,), s), proc.a, proc.c, seed=args.seed)
        atom = (x.abs() >= proc.c * s * (1 - 1e-6)).float().mean().item()
        print(f"   {s:<5} {x.var().item():<14.4f} {reference.kac_variance(s, proc.a, proc.c):<14.4f} "
              f"{atom:<17.4f} {math.exp(-proc.a * s):<11.4f} {x.abs().max().item() / (proc.c * s):.4f}")
    print("\n2) Conditional velocity v_K(s, x): bounded by the speed c, jumps to c at the light cone")
    s = 0.5
    for frac in (0.0, 0.5, 0.9, 0.999, 1.0):
        x = torch.tensor([frac * proc.c * s])
        print(f"   x = {frac:>5} c s   v_K = {ops.kac_velocity(x, s, proc.a, proc.c).item():.4f}"
              f"   (c = {proc.c})")
    backend = ops.resolve_backend(torch.device("cpu"))
    batch = 64 if backend != "torch" else 4  # the pure-PyTorch reference is ~1000x slower
    print(f"\n3) Fused noise + flow-matching target on the '{backend}' backend, batch {batch} x "
          "3x32x32 (one read of x0, two writes)")
    x0 = torch.rand(batch, 3, 32, 32) * 2 - 1
    t = torch.rand(batch)
    sec = _time(lambda: proc.noise_target(x0, t, seed=args.seed))
    print(f"   {sec * 1e3:.2f} ms per call, {x0.numel() / sec / 1e6:.1f} M elements/s")
    print("\n4) Sampling a Kac flow whose data is a point (exact velocity): 1 vs 100 Euler steps")
    point = torch.tensor([0.5, -0.5])

    def dirac_velocity(x, t, y=None):
        return proc.velocity(x, t, point.expand_as(x))
    for steps in (1, 100):
        out = kacfast.sample(dirac_velocity, steps, shape=(2,), batch_size=1000, seed=args.seed,
                             process=proc, clamp=False)
        print(f"   {steps:>3} steps: mean distance to the point {(out - point).norm(dim=1).mean():.4f}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kacfast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help=cmd_demo.__doc__)
    demo.add_argument("--a", type=float, default=9.0, help="switching rate (default 9)")
    demo.add_argument("--c", type=float, default=3.0, help="speed (default 3)")
    demo.add_argument("--n", type=int, default=200_000, help="noise samples per time (default 2e5)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
