"""Where is a trained DDPM network inaccurate? Per-timestep error on held-out digits.

    python benchmarks/experiments/ddpm_error.py --run RUNS/ddpm [--data NAME] [--n 500]
        [--timesteps 999 950 900 750 500 250 100 20] [--seed 0]

For each timestep t: held-out digits x0 (the test split of --data, default the data the run was
trained on), x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps,
the network's conditional eps prediction (w = 1; a v-prediction network's v turned into eps), and
per pixel
- eps_mse: mean |eps_hat - eps|^2;
- x0_mse: mean |x0_hat - x0|^2 of the implied x0_hat = (x_t - sqrt(1 - ab_t) eps_hat) / sqrt(ab_t),
  the quantity every DDIM step carries forward (the eps error times (1 - ab_t) / ab_t);
- class_mean_mse: mean |mean_y - x0|^2 of the class-conditional training mean mean_y, the error of a
  predictor that ignores x_t: the Bayes-optimal x0_hat can only do better, so an x0_mse above it
  measures an inaccurate network at that t, not a hard t.
Prints one JSON object per timestep, then the run's own training steps.
"""
from __future__ import annotations

import argparse
import json

import torch

from kacfast.baselines.ddpm import DDPMSchedule
from kacfast.checkpoints import load_trained, trained_on
from kacfast.data import load_dataset
from kacfast.facts import facts_of


@torch.no_grad()
def timestep_errors(model, x0: torch.Tensor, y: torch.Tensor, class_means: torch.Tensor, t: int,
                    schedule: DDPMSchedule, seed: int, batch: int = 250, prediction: str = "epsilon") -> dict:
    """Per-pixel eps / implied-x0 / class-mean squared errors of `model` at integer timestep t."""
    gen = torch.Generator().manual_seed(seed + t)
    eps = torch.randn(x0.shape, generator=gen)
    tt = torch.full((x0.shape[0],), t, dtype=torch.long)
    x_t = schedule.add_noise(x0, eps, tt)
    output = torch.cat([model(x_t[i:i + batch], tt[i:i + batch].float(), y[i:i + batch])
                        for i in range(0, x0.shape[0], batch)])
    eps_hat = schedule.predict_eps(x_t, output, tt, prediction)
    x0_hat = schedule.predict_x0(x_t, eps_hat, tt)
    return {"t": t, "alpha_bar": schedule.alpha_bar(t),
            "eps_mse": float((eps_hat - eps).pow(2).mean()),
            "x0_mse": float((x0_hat - x0).pow(2).mean()),
            "class_mean_mse": float((class_means[y] - x0).pow(2).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a DDPM run directory (kacfast train --method ddpm)")
    parser.add_argument("--data", help="dataset (default: the one the run was trained on)")
    parser.add_argument("--n", type=int, default=500, help="held-out digits (default 500)")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[999, 950, 900, 750, 500, 250, 100, 20])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, meta = load_trained(args.run)
    if meta.get("objective", {}).get("method") != "ddpm":
        parser.error(f"{args.run} is not a DDPM run (method {meta.get('objective', {}).get('method')!r}).")
    schedule = DDPMSchedule()  # the one kacfast's DDPM objective trains on
    if not all(0 <= t < len(schedule) for t in args.timesteps):
        parser.error(f"--timesteps must lie in [0, {len(schedule) - 1}].")
    try:
        data = args.data or trained_on(meta, args.run)
    except ValueError:
        parser.error(f"{args.run} does not record its dataset: pass --data.")
    x_train, y_train = load_dataset(data, "train")
    if tuple(x_train.shape[1:]) != tuple(model.sample_shape):
        parser.error(f"--data {data} holds images of shape {tuple(x_train.shape[1:])}; the network makes "
                     f"{tuple(model.sample_shape)}.")
    class_means = torch.stack([x_train[y_train == k].mean(0) for k in range(int(y_train.max()) + 1)])
    x0, y = load_dataset(data, "test")
    x0, y = x0[:args.n], y[:args.n]
    for t in args.timesteps:
        print(json.dumps(timestep_errors(model, x0, y, class_means, t, schedule, args.seed,
                                         prediction=facts_of(model).prediction or "epsilon")), flush=True)
    print(json.dumps({"run": args.run, "training_steps": meta.get("config", {}).get("steps"),
                      "held_out": int(x0.shape[0])}))


if __name__ == "__main__":
    main()
