"""What the `cnn` judge's distance from the floor is made of: faint residue on the digits' background.

MNIST's background is exactly -1 (65% of the 16x16 pixels, within 1e-5). A sampler that ends a few
hundredths above -1 on background pixels leaves a faint haze no eye sees; this script measures how
much of each judge's FD that haze is, under the tables' protocol (mnist_results.py: the same judges,
seeds, sample count and reference):

- the floor set (real digits disjoint from the reference) with Gaussian noise of std sigma, on every
  pixel or on the non-background pixels only: how strongly each judge reacts to such noise;
- each model row's samples as drawn, and the same samples with every pixel below -1 + delta set to
  -1 ("snapped"; the floor set snapped alike, to show what snapping does to real digits). Snapping is
  a diagnostic, never a sampler setting: it tells how much of a row's FD sits in the faint pixels.

    python benchmarks/experiments/background_residue.py --data mnist5k16 --runs runs16 --threads 1 \\
        --guidance 1.25 --out residue16.jsonl --rows data kac-logit-normal-euler-100 \\
        distillkac-1-w1.25-huber-adversarial-logit-9600

Appends one JSON line per (row, variant) with mnist_results.py's fields (per-judge FD / KID /
precision / recall / accuracy intervals over the seeds) plus the pixel fractions; prints each
row's paired snapped - drawn difference per judge.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mnist_results import ROWS, _load_row, _sample_row  # noqa: E402  (the tables' rows and sampling)

from kacfast import metrics  # noqa: E402
from kacfast.evaluation import Evaluator, Protocol, balanced_labels  # noqa: E402
from kacfast.facts import facts_of  # noqa: E402

BACKGROUND = -1.0     # the data range's lower end: MNIST's background value
AT_BACKGROUND = 1e-5  # a pixel within this of BACKGROUND counts as background


def snap(images: torch.Tensor, delta: float) -> torch.Tensor:
    """Every pixel below BACKGROUND + delta set to BACKGROUND."""
    return torch.where(images < BACKGROUND + delta, torch.full_like(images, BACKGROUND), images)


def add_noise(images: torch.Tensor, sigma: float, seed: int, foreground_only: bool) -> torch.Tensor:
    """Gaussian noise of std sigma (every pixel, or only those not at the background), clamped
    to [-1, 1]."""
    noise = sigma * torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    if foreground_only:
        noise = torch.where(images > BACKGROUND + AT_BACKGROUND, noise, torch.zeros_like(noise))
    return (images + noise).clamp(-1, 1)


def pixel_fractions(images: torch.Tensor, delta: float) -> dict[str, float]:
    """Fractions of pixels at the background and faint (above it, below BACKGROUND + delta)."""
    at = (images < BACKGROUND + AT_BACKGROUND).float().mean().item()
    faint = ((images >= BACKGROUND + AT_BACKGROUND) & (images < BACKGROUND + delta)).float().mean().item()
    return {"at_background": at, "faint": faint}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="the pipeline's run directory (shipped models "
                        "stand in for missing runs, as in mnist_results.py)")
    parser.add_argument("--out", required=True, help="results file (JSON lines, appended)")
    parser.add_argument("--rows", nargs="+", required=True, help="data and/or rows of mnist_results.py")
    parser.add_argument("--data", default="mnist5k16")
    parser.add_argument("--n", type=int, default=1000, help="samples per seed and row (default 1000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--guidance", type=float, default=1.25, help="w of the guided rows (default 1.25)")
    parser.add_argument("--delta", type=float, default=0.1, help="snap threshold above -1 (default 0.1)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.01, 0.03, 0.1],
                        help="noise levels added to the floor set (default 0.01 0.03 0.1)")
    parser.add_argument("--compile", action="store_true", help="compile the Kac rows' network")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    unknown = sorted(set(args.rows) - set(ROWS) - {"data"})
    if unknown:
        parser.error(f"unknown rows {unknown}")
    if not 0 < args.delta < 2:
        parser.error("--delta must lie in (0, 2).")

    torch.set_num_threads(args.threads)
    evaluator = Evaluator(Protocol(args.data, n=args.n, seeds=tuple(args.seeds)))
    labels = balanced_labels(args.n, 10)

    def record(row: str, variant: str, per_seed_images: dict[int, torch.Tensor], info: dict) -> dict:
        per_seed = []
        for seed, images in per_seed_images.items():
            scores = evaluator.score(images, labels if row != "data" else evaluator.floor_set(seed)[1], seed)
            per_seed.append({**scores, **pixel_fractions(images, args.delta)})
        result = evaluator.summarize(row, per_seed, {"variant": variant, "delta": args.delta, **info})
        with open(args.out, "a") as f:
            f.write(json.dumps(result, sort_keys=True) + "\n")
        m = result["metrics"]
        print(f"{row:40s} {variant:22s} " + "  ".join(
            f"{j} FD {m[j + '_fd']['mean']:.3f}" for j in evaluator.protocol.judges)
            + f"  background {m['at_background']['mean']:.3f} faint {m['faint']['mean']:.3f}", flush=True)
        return per_seed

    for row in args.rows:
        start = time.perf_counter()
        if row == "data":
            floor = {seed: evaluator.floor_set(seed)[0] for seed in args.seeds}
            variants = {"drawn": floor, f"snapped {args.delta:g}": {s: snap(x, args.delta) for s, x in floor.items()}}
            for sigma in args.sigmas:
                for fg in (False, True):
                    name = f"noise {sigma:g}{' foreground' if fg else ''}"
                    variants[name] = {s: add_noise(x, sigma, 1_000 + s, fg) for s, x in floor.items()}
            info = {"method": "data"}
        else:
            run, method, steps, solver = ROWS[row]
            model, _ = _load_row(args.runs, run, args.data)
            absorbed = facts_of(model).absorbed_guidance if method == "distill" else None
            w = 1.0 if absorbed else args.guidance
            drawn = {s: _sample_row(model, row, labels, w, s, args.compile)[0] for s in args.seeds}
            variants = {"drawn": drawn, f"snapped {args.delta:g}": {s: snap(x, args.delta) for s, x in drawn.items()}}
            info = {"method": method, "steps": steps, "solver": solver, "run": run,
                    "guidance": None if absorbed else w, "absorbed_guidance": absorbed}
        scored = {name: record(row, name, images, info) for name, images in variants.items()}
        drawn_scores = scored["drawn"]
        for name, per_seed in scored.items():
            if name == "drawn":
                continue
            diffs = {j: metrics.paired_difference([s[j + "_fd"] for s in per_seed],
                                                  [s[j + "_fd"] for s in drawn_scores])
                     for j in evaluator.protocol.judges}
            print(f"  {name} - drawn: " + "  ".join(
                f"{j} {d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]" for j, d in diffs.items()), flush=True)
        print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
