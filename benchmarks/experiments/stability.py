"""Stability figure: how fast sampling trajectories move, Kac flow versus EDM and DDPM ODEs.

    python benchmarks/experiments/stability.py --runs RUNS --out docs/stability.png [--json docs/stability.json]

Each trained model (RUNS/kac, RUNS/edm, RUNS/ddpm from benchmarks/experiments/mnist_pipeline.sh) is sampled
with 100 Euler-type steps at guidance 1.5 on --n class-balanced images, and along the trajectory we
record the per-pixel RMS velocity dx/dtau, tau being the method's own time rescaled to a unit
horizon (the scale at which "few steps" are taken):
  * Kac teacher: tau = t / T, v = dx/dt (the guided network velocity; Euler on the uniform grid).
  * EDM: tau = sigma / sigma_max, dx/dtau = sigma_max (x - D(x; sigma)) / sigma (Euler on the
    Karras rho = 7 grid, which puts most steps where this is large).
  * DDPM (VP probability-flow ODE): tau = t / 1000, dx/dtau = -beta(tau) (x - eps / sigma_tau) / 2
    with beta(tau) = 1000 beta_t and sigma_tau = sqrt(1 - alpha_bar_t) (DDIM's 100 steps).
The Kac target velocity is bounded per pixel by max|x0| / T + c (= 1/T + c for data in [-1, 1]:
finite speed); the figure draws that bound.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch


def _rms(v: torch.Tensor) -> float:
    return float(v.double().square().mean().sqrt())


@torch.no_grad()
def kac_curve(model, labels, guidance, seed, steps=100):
    import kacfast
    from kacfast.facts import facts_of
    proc = facts_of(model).process
    states = []
    kacfast.sample(model, steps, labels=labels, guidance=guidance, seed=seed, clamp=False,
                   callback=lambda s: states.append((s["t"], s["t_next"], s["x"].clone())))
    x_prev = proc.prior((len(labels),) + tuple(model.sample_shape), seed=seed)
    curve = []
    for t, t_next, x in states:  # Euler: v = (x_t - x_{t - h}) / h exactly
        curve.append((t / proc.T, _rms((x_prev - x) / (t - t_next))))
        x_prev = x
    return curve, 1.0 / proc.T + proc.c


@torch.no_grad()
def edm_curve(model, labels, guidance, seed, steps=100, sigma_max=80.0):
    from kacfast.baselines import EDMPrecond, edm_sample
    latents = torch.randn((len(labels),) + tuple(model.sample_shape),
                          generator=torch.Generator().manual_seed(seed))
    curve = []
    edm_sample(EDMPrecond(model), latents, labels, num_steps=steps, guidance=guidance, solver="euler",
               sigma_max=sigma_max,
               callback=lambda s: curve.append(
                   (s["sigma"] / sigma_max, sigma_max * _rms((s["x"] - s["denoised"]) / s["sigma"]))))
    return curve


@torch.no_grad()
def ddpm_curve(model, labels, guidance, seed, steps=100):
    from kacfast.baselines import DDPMSchedule, ddim_sample
    schedule = DDPMSchedule()
    n = len(schedule)
    latents = torch.randn((len(labels),) + tuple(model.sample_shape),
                          generator=torch.Generator().manual_seed(seed))
    curve = []

    def record(s):
        t = s["t"]
        beta = n * float(schedule.betas[t])
        sigma = math.sqrt(1 - schedule.alpha_bar(t))
        curve.append((t / n, _rms(-0.5 * beta * (s["x"] - s["eps"] / sigma))))
    ddim_sample(model, latents, labels, num_steps=steps, guidance=guidance, callback=record)
    return curve


def main() -> None:
    from kacfast.checkpoints import load_trained
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--out", required=True, help="PNG figure (needs matplotlib)")
    parser.add_argument("--json", help="also write the curves here")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    labels = torch.arange(args.n) % 10
    load = lambda name: load_trained(os.path.join(args.runs, name))[0]  # noqa: E731
    kac, bound = kac_curve(load("kac"), labels, args.guidance, args.seed)
    curves = {"Kac teacher (dx/dt)": kac,
              "EDM PF-ODE (dx/dtau, tau = sigma / 80)": edm_curve(load("edm"), labels, args.guidance, args.seed),
              "DDPM VP PF-ODE (dx/dtau, tau = t / 1000)": ddpm_curve(load("ddpm"), labels, args.guidance, args.seed)}
    for name, pts in curves.items():
        print(f"{name:42s} max RMS velocity {max(v for _, v in pts):10.2f}   at the data end "
              f"{min(pts)[1]:10.2f}")
    print(f"Kac per-pixel speed bound 1/T + c = {bound:g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"curves": curves, "kac_bound": bound, "guidance": args.guidance, "n": args.n}, f)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from plotting import line_plot
    line_plot(curves, args.out, xlabel="normalised time tau (0 = data, 1 = noise)",
              ylabel="per-pixel RMS velocity along trajectories",
              hline=(bound, f"Kac speed bound 1/T + c = {bound:g}"),
              title=f"MNIST 16x16 sampling trajectories, guidance {args.guidance}")
    print(f"figure -> {args.out}")


if __name__ == "__main__":
    main()
