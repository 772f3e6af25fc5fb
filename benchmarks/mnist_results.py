"""MNIST-5k results: every sampler of the README's table, scored with the project's classifier.

    python benchmarks/mnist_results.py run --runs RUNS --out RESULTS.jsonl [--rows NAME ...]
    python benchmarks/mnist_results.py report --results RESULTS.jsonl --plot docs/quality_vs_nfe.png
    python benchmarks/mnist_results.py speed --runs RUNS [--rows distillkac-1 edm-heun-35]

RUNS holds the run directories of benchmarks/mnist_pipeline.sh: kac/, edm/, ddpm/ (teachers and
baselines trained with the same network, data and budget), distill/stage-K-STEPS/ (DistillKac
100 -> 20 -> 4 -> 2 -> 1), single/stage-1-1/ (one stage 100 -> 1) and rollout/ (stages
4 -> 2 -> 1 from the 4-step student with teacher roll-out start points). Each row draws --n
class-balanced samples (labels 0..9 cycled) at guidance --guidance with one seed, times them
(images/s with --threads CPU threads), and scores them against the dataset's held-out split:
classifier FD and KID (features of the project's classifier, not Inception) and the classifier's
accuracy on the conditioning labels. "data" scores --n training images: the floor of each metric.
Rows already in RESULTS.jsonl are skipped, so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

# name -> (run directory under RUNS, method, steps, solver)
ROWS = {
    "kac-teacher-euler-100": ("kac", "kac", 100, "euler"),
    "kac-teacher-ab2-100": ("kac", "kac", 100, "ab2"),
    "distillkac-20": ("distill/stage-1-20", "distill", 20, "euler"),
    "distillkac-4": ("distill/stage-2-4", "distill", 4, "euler"),
    "distillkac-2": ("distill/stage-3-2", "distill", 2, "euler"),
    "distillkac-1": ("distill/stage-4-1", "distill", 1, "euler"),
    "single-stage-1": ("single/stage-1-1", "distill", 1, "euler"),
    "rollout-2": ("rollout/stage-1-2", "distill", 2, "euler"),
    "rollout-1": ("rollout/stage-2-1", "distill", 1, "euler"),
    "kac-teacher-euler-4": ("kac", "kac", 4, "euler"),
    "kac-teacher-euler-1": ("kac", "kac", 1, "euler"),
    "edm-heun-35": ("edm", "edm", 18, "heun"),
    "edm-euler-4": ("edm", "edm", 4, "euler"),
    "edm-euler-2": ("edm", "edm", 2, "euler"),
    "edm-euler-1": ("edm", "edm", 1, "euler"),
    "ddim-100": ("ddpm", "ddpm", 100, "ddim"),
    "ddim-20": ("ddpm", "ddpm", 20, "ddim"),
    "ddim-4": ("ddpm", "ddpm", 4, "ddim"),
    "ddpm-1000": ("ddpm", "ddpm", 1000, "ddpm"),
}


def _sample_row(model, row: str, labels: torch.Tensor, args) -> tuple[torch.Tensor, float, float]:
    """(images, seconds, guidance used) of one table row: the row's sampler at --guidance, except
    for distilled students, which absorbed their guidance (sampled at 1)."""
    from kacfast.generate import generate
    _, method, steps, solver = ROWS[row]
    guidance = args.guidance if method != "distill" else 1.0
    start = time.perf_counter()
    images = generate(model, method, steps, solver=solver, labels=labels, guidance=guidance, seed=args.seed)
    return images, time.perf_counter() - start, guidance


def _done(path: str) -> set[str]:
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        return {json.loads(line)["row"] for line in f if line.strip()}


def cmd_run(args) -> None:
    from kacfast import metrics
    from kacfast.data import load_dataset
    from kacfast.generate import generation_nfe
    from kacfast.images import make_grid, save_png
    from kacfast.training.load import load_trained

    torch.set_num_threads(args.threads)
    rows = args.rows or ["data", *ROWS]
    unknown = sorted(set(rows) - set(ROWS) - {"data"})
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from data, {', '.join(ROWS)}")
    done = _done(args.out)
    reference, _ = load_dataset(args.data, split="test")
    classifier = metrics.train_classifier(args.data, seed=0)
    labels = torch.arange(args.n) % 10
    os.makedirs(args.grids, exist_ok=True)
    for row in rows:
        if row in done:
            continue
        if row == "data":
            x, y = load_dataset(args.data, split="train")
            # interleaved like the generated rows' labels: 0, 1, ..., 9, 0, 1, ...
            pick = torch.stack([torch.nonzero(y == c)[: args.n // 10, 0] for c in range(10)], 1).reshape(-1)
            images, used, result = x[pick], y[pick], {"nfe": 0, "images_per_s": None}
        else:
            run, method, steps, solver = ROWS[row]
            model, _ = load_trained(os.path.join(args.runs, run))
            images, elapsed, guidance = _sample_row(model, row, labels, args)
            used = labels
            result = {"nfe": generation_nfe(method, steps, solver), "seconds": elapsed,
                      "images_per_s": args.n / elapsed, "method": method, "steps": steps,
                      "solver": solver, "run": run, "sampling_guidance": guidance}
        result.update(metrics.image_metrics(classifier, images, reference, used))
        result.update(row=row, guidance=args.guidance, n=len(images), threads=args.threads,  # target w
                      seed=args.seed, data=args.data)
        save_png(make_grid(images[:100], nrow=10), os.path.join(args.grids, f"{row}.png"))  # a column per class
        with open(args.out, "a") as f:
            f.write(json.dumps(result, sort_keys=True) + "\n")
        print(f"{row:24s} NFE {result['nfe']:>4}  FD {result['classifier_fd']:8.3f}  "
              f"KID {result['classifier_kid']:.4f}  acc {result['conditional_accuracy']:.3f}  "
              f"img/s {result['images_per_s'] or float('nan'):.1f}", flush=True)


LABELS = {
    "data": "data (training images)",
    "kac-teacher-euler-100": "Kac teacher, Euler", "kac-teacher-ab2-100": "Kac teacher, AB-2",
    "kac-teacher-euler-4": "Kac teacher, Euler", "kac-teacher-euler-1": "Kac teacher, Euler",
    "distillkac-20": "DistillKac student", "distillkac-4": "DistillKac student",
    "distillkac-2": "DistillKac student", "distillkac-1": "DistillKac student",
    "single-stage-1": "single-stage 100 -> 1 student",
    "rollout-2": "DistillKac student, roll-out starts in 4 -> 2",
    "rollout-1": "DistillKac student, roll-out starts in 4 -> 2",
    "edm-heun-35": "EDM, Heun", "edm-euler-4": "EDM, Euler", "edm-euler-2": "EDM, Euler",
    "edm-euler-1": "EDM, Euler", "ddim-100": "DDIM", "ddim-20": "DDIM", "ddim-4": "DDIM",
    "ddpm-1000": "DDPM, ancestral",
}


def cmd_report(args) -> None:
    with open(args.results) as f:
        results = {r["row"]: r for r in map(json.loads, filter(str.strip, f))}
    # images/s are left out: rows ran beside other jobs; `speed` measures them side by side
    print("| sampler | NFE | classifier FD | classifier KID | conditional accuracy |")
    print("|---|---:|---:|---:|---:|")
    for row in ["data", *ROWS]:
        if row not in results:
            continue
        r = results[row]
        print(f"| {LABELS[row]} | {r['nfe']} | {r['classifier_fd']:.3f} | {r['classifier_kid']:.4f} | "
              f"{100 * r['conditional_accuracy']:.1f}% |")
    if args.plot:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from plotting import line_plot
        families = {"DistillKac students": ["distillkac-1", "distillkac-2", "distillkac-4", "distillkac-20"],
                    "Kac teacher (Euler)": ["kac-teacher-euler-1", "kac-teacher-euler-4", "kac-teacher-euler-100"],
                    "EDM (Euler; Heun at 35)": ["edm-euler-1", "edm-euler-2", "edm-euler-4", "edm-heun-35"],
                    "DDIM": ["ddim-4", "ddim-20", "ddim-100"], "DDPM ancestral": ["ddpm-1000"],
                    "single-stage 100 -> 1": ["single-stage-1"],
                    "DistillKac, roll-out starts in 4 -> 2": ["rollout-1", "rollout-2"],
                    "Kac teacher (AB-2)": ["kac-teacher-ab2-100"]}
        curves = {name: [(results[r]["nfe"], results[r]["classifier_fd"]) for r in rows if r in results]
                  for name, rows in families.items()}
        floor = (results["data"]["classifier_fd"], "data floor") if "data" in results else None
        line_plot(curves, args.plot, xlabel="network evaluations per image (NFE)",
                  ylabel="classifier FD (lower is better)", xscale="log", hline=floor, marker="o",
                  title=f"MNIST-5k 16x16, guidance {next(iter(results.values()))['guidance']}")
        print(f"\nplot -> {args.plot}")


def cmd_speed(args) -> None:
    """Images/s of several rows side by side in one process (interleaved repeats, median)."""
    import statistics

    from kacfast.generate import generation_nfe
    from kacfast.training.load import load_trained

    torch.set_num_threads(args.threads)
    labels = torch.arange(args.n) % 10
    models = {row: load_trained(os.path.join(args.runs, ROWS[row][0]))[0] for row in args.rows}
    times = {row: [] for row in args.rows}
    for _ in range(args.repeats):
        for row in args.rows:
            times[row].append(_sample_row(models[row], row, labels, args)[1])
    base = statistics.median(times[args.rows[-1]])
    print(f"batch {args.n}, {args.threads} thread(s), median of {args.repeats}; ratio vs {args.rows[-1]}")
    print("| sampler | NFE | images/s | vs last row |\n|---|---:|---:|---:|")
    for row in args.rows:
        _, method, steps, solver = ROWS[row]
        med = statistics.median(times[row])
        print(f"| {row} | {generation_nfe(method, steps, solver)} | {args.n / med:.1f} | {base / med:.1f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--runs", required=True)
    run.add_argument("--out", required=True, help="results file (JSON lines, appended)")
    run.add_argument("--rows", nargs="*", help=f"subset of: data {' '.join(ROWS)}")
    run.add_argument("--grids", default="mnist_grids", help="directory for one 10x10 grid per row")
    run.add_argument("--data", default="mnist5k16")
    run.add_argument("--n", type=int, default=500)
    run.add_argument("--guidance", type=float, default=1.5)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--threads", type=int, default=1)
    rep = sub.add_parser("report")
    rep.add_argument("--results", required=True)
    rep.add_argument("--plot", help="write the quality-vs-NFE plot here (needs matplotlib)")
    speed = sub.add_parser("speed", help="images/s of --rows side by side (the last row is the unit)")
    speed.add_argument("--runs", required=True)
    speed.add_argument("--rows", nargs="+", default=["distillkac-1", "distillkac-4", "edm-heun-35"])
    speed.add_argument("--n", type=int, default=500)
    speed.add_argument("--repeats", type=int, default=3)
    speed.add_argument("--guidance", type=float, default=1.5)
    speed.add_argument("--seed", type=int, default=0)
    speed.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    {"run": cmd_run, "report": cmd_report, "speed": cmd_speed}[args.cmd](args)


if __name__ == "__main__":
    main()
