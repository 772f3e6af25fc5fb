"""MNIST-5k results: every sampler of the README's tables under the quality protocol.

    python benchmarks/experiments/mnist_results.py run --runs RUNS --out RESULTS.jsonl [--rows NAME ...]
        [--guidance 1 1.25 1.5 2] [--n 1000] [--seeds 0 1 2] [--reference train] [--compile]
    python benchmarks/experiments/mnist_results.py report --results RESULTS.jsonl [--plot docs/quality_vs_nfe.png]
    python benchmarks/experiments/mnist_results.py compare --results RESULTS.jsonl [--results MORE.jsonl] ROW_A[@W] ROW_B[@W]
    python benchmarks/experiments/mnist_results.py speed --runs RUNS [--rows distillkac-1 edm-heun-35]

RUNS holds the run directories of benchmarks/experiments/mnist_pipeline.sh: kac/, edm/, ddpm/ (teachers and
baselines trained with the same network, data and budget), distill/stage-K-STEPS/ (DistillKac
100 -> 20 -> 4 -> 2 -> 1), single/stage-1-1/ (one stage 100 -> 1) and rollout/ (stages 4 -> 2 -> 1
from the 4-step student with teacher roll-out start points). Rows whose run directory is missing
fall back to the shipped model trained by the same pipeline (the logit-normal teacher kac-logit-normal/,
its 1-step student adversarial-huber-w1.25-logit-9600/).

Separate runs: kac-diffusers/ (the Kac teacher's recipe on the
diffusers-unet-tiny preset, a UNet2DModel) and distill-w1.25/ (the DistillKac schedule absorbing
guidance 1.25, the teacher's best w in the sweep, instead of 1.5; its 20-, 4-, 2- and 1-step
students are rows; rollout-w1.25/ repeats its stages 4 -> 2 -> 1 with teacher roll-out start
points); distill-w1.25-huber/ and distill-w1.25-features/ are the same schedule with
the pseudo-Huber endpoint distance and with L2 plus a random-feature distance instead of the
paper's L2; adversarial-w1.25/ repeats its last stage (2 -> 1, same seed) with the adversarial term
(adversarial0.3-w1.25/: with 3x its weight; adversarial-huber-w1.25/: the same stage on the
pseudo-Huber chain).
flowmap-w1.25/ is one flow-map stage (100 -> 1, `--objective flow-map`, the chain's 1,600 steps):
one student, scored at 4, 2 and 1 steps.
Teacher levers (the teacher's recipe with one change): kac-logit-normal/ (`--time-distribution
logit-normal`), kac-uniform-3600/ and kac-uniform-7200/ (the recipe retrained, then continued to
twice its steps), kac-uniform-seed1/ (the recipe with `--seed 1`: the spread between training
runs; kac-logit-normal-seed1/ the same for the logit-normal recipe); on the logit-normal recipe,
kac-logit-normal-precond/ (`--precondition kac`), kac-logit-normal-weighted/ (`--loss-weighting
target`) and kac-logit-normal-precond-ema/ (the preconditioned recipe keeping power-function EMAs
of relative length 0.05, 0.1, 0.15 and 0.2, `--ema-lengths`: the EMA length as a lever, one row
each); distill-w1.25-huber-logit/ and adversarial-huber-w1.25-logit/ are the pseudo-Huber chain and
its adversarial last stage on the logit-normal teacher (the shipped pair: that teacher and the stage
continued to 9,600 steps); adversarial-finetune-cosine-LR/ continues that stage's student (28x28:
at 4,800 steps; 16x16: at 9,600, the shipped one) 900 steps with the same objective against itself
as the endpoint target (`distill --teacher <student> --schedule 1 1 --lr LR --lr-schedule cosine`),
and adversarial-finetune{2,3}-cosine-1.5e-4/ (28x28) each continue the previous cycle 500 steps
(adversarial-finetune3*/ and adversarial-finetune4*/: the third and fourth cycles' levers; at
16x16, adversarial-finetune-adv*/ and adversarial-finetune-dwarm100adv*/ fine-tune the shipped
student 500 steps at that adversarial weight, the latter with a 100-step discriminator warm-up).
Rows named -quadratic- sample the shipped teacher on the quadratic time grid (kacfast.quadratic_grid,
denser near the data) instead of the uniform one, at the same NFE.

`run` scores each row (kacfast.evaluation: both judges, FD / KID / precision / recall / accuracy,
95% intervals over --seeds, --n class-balanced samples per seed against each seed's reference)
at every --guidance (students absorbed theirs: one row, sampled at w = 1), plus the real-vs-real
floor row. Results are appended to RESULTS.jsonl as they finish, and rows already there (same row,
guidance and protocol) are skipped: an interrupted run, or a table split over several calls with
--rows, continues where it stopped. `report` prints the table and, per judge, each sampler at its
own best guidance; `compare` the paired difference of two rows (A - B per seed, 95% interval) for
every judge's FD and class accuracy, the form of every comparison in the README.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from kacfast._device import tune_cpu_allocator
from kacfast.evaluation import check_same_judges
from kacfast.facts import facts_of
from kacfast.metrics.intervals import seed_interval
from kacfast.sampling import quadratic_grid

# the relative lengths of the power-function EMAs kept by kac-logit-normal-precond-ema/, one row each
EMA_LENGTHS = ("0.05", "0.1", "0.15", "0.2")
# the 28x28 third cycle's runs (adversarial-finetune3KIND-cosine-1.5e-4/) -> the weight averages
# scored: "" = the exponential EMA, powerX = the power-function EMA of relative length X
FINETUNE3_RUNS = {kind: ("", "power0.05", "power0.1", "power0.2") if kind in ("ema", "long", "longadv0.3")
                  else ("",)
                  for kind in ("ema", "long", "adv0.2", "adv0.4", "longadv0.2", "longadv0.3", "longadv0.4")}
# the 28x28 fourth cycle's runs (adversarial-finetune4KINDadv0.4-cosine-1.5e-4/): "" or "dwarm100"
# (a 100-step discriminator warm-up); the 16x16 fine-tunes of the shipped student
# (adversarial-finetune-KINDadvWEIGHT-cosine-1.5e-4/) as (kind, adversarial weight); "clamped":
# the objective's clamped=1 (the samples compared as the sampler returns them)
FINETUNE4_KINDS = ("", "dwarm100")
FINETUNE16_RUNS = (("", "0.4"), ("", "1"), ("", "2"), ("dwarm100", "0.1"), ("dwarm100", "0.4"),
                   ("clamped-dwarm100", "0.1"), ("clamped-dwarm100", "0.4"), ("clamped-dwarm100", "1"))
# DDIM rows of the v-prediction DDPM: (timestep spacing suffix, steps)
DDIM_V_ROWS = (("", 100), ("", 20), ("", 4), ("-trailing", 4), ("-trailing", 2), ("-trailing", 1))

# name -> (run directory under RUNS[@weight average of the run, as load_trained(ema=...)], method,
# steps, solver)
ROWS = {
    "kac-teacher-euler-100": ("kac", "kac", 100, "euler"),
    "kac-teacher-ab2-100": ("kac", "kac", 100, "ab2"),
    "kac-teacher-midpoint-50": ("kac", "kac", 50, "midpoint"),
    "kac-teacher-heun-50": ("kac", "kac", 50, "heun"),
    "distillkac-20": ("distill/stage-1-20", "distill", 20, "euler"),
    "distillkac-4": ("distill/stage-2-4", "distill", 4, "euler"),
    "distillkac-2": ("distill/stage-3-2", "distill", 2, "euler"),
    "distillkac-1": ("distill/stage-4-1", "distill", 1, "euler"),
    "single-stage-1": ("single/stage-1-1", "distill", 1, "euler"),
    "rollout-2": ("rollout/stage-1-2", "distill", 2, "euler"),
    "rollout-1": ("rollout/stage-2-1", "distill", 1, "euler"),
    "distillkac-20-w1.25": ("distill-w1.25/stage-1-20", "distill", 20, "euler"),
    "distillkac-4-w1.25": ("distill-w1.25/stage-2-4", "distill", 4, "euler"),
    "distillkac-2-w1.25": ("distill-w1.25/stage-3-2", "distill", 2, "euler"),
    "distillkac-1-w1.25": ("distill-w1.25/stage-4-1", "distill", 1, "euler"),
    "rollout-2-w1.25": ("rollout-w1.25/stage-1-2", "distill", 2, "euler"),
    "rollout-1-w1.25": ("rollout-w1.25/stage-2-1", "distill", 1, "euler"),
    "distillkac-1-w1.25-huber": ("distill-w1.25-huber/stage-4-1", "distill", 1, "euler"),
    "distillkac-1-w1.25-features": ("distill-w1.25-features/stage-4-1", "distill", 1, "euler"),
    "distillkac-1-w1.25-adversarial": ("adversarial-w1.25/stage-1-1", "distill", 1, "euler"),
    "distillkac-1-w1.25-adversarial0.3": ("adversarial0.3-w1.25/stage-1-1", "distill", 1, "euler"),
    # the adversarial last stage of each pseudo-Huber chain (uniform-time teacher, logit-normal teacher) at
    # 600 steps and continued to 1,200 / 2,400 / 4,800
    **{f"distillkac-1-w1.25-huber-adversarial{chain}{steps}": (f"adversarial-huber-w1.25{chain}{steps}/stage-1-1",
                                                               "distill", 1, "euler")
       for chain in ("", "-logit") for steps in ("", "-1200", "-2400", "-4800")},
    # the logit-normal chain's stage continued to 9,600 steps; -6500: a copy of its step-6,500 checkpoint;
    # -cooldown: that copy resumed to 7,500 steps at a quarter of the LR (--lr 5e-5)
    **{f"distillkac-1-w1.25-huber-adversarial-logit-{run}": (f"adversarial-huber-w1.25-logit-{run}/stage-1-1",
                                                             "distill", 1, "euler")
       for run in ("6500", "9600", "cooldown")},
    # the 4,800-step student fine-tuned 900 steps by the same objective with itself as the endpoint
    # target (`distill --teacher mnist28-distillkac-1step --schedule 1 1`), the student's LR on a
    # cosine from --lr to 0 after the 100-step warm-up (the discriminator's stays at 2e-4)
    **{f"distillkac-1-w1.25-huber-adversarial-logit-finetune-{lr}": (
        f"adversarial-finetune-cosine-{lr}/stage-1-1", "distill", 1, "euler") for lr in ("5e-5", "1.5e-4")},
    # further cycles: the previous cycle's student, 500 more steps against itself (warm-up 50, cosine
    # from 1.5e-4)
    **{f"distillkac-1-w1.25-huber-adversarial-logit-finetune{cycle}-1.5e-4": (
        f"adversarial-finetune{cycle}-cosine-1.5e-4/stage-1-1", "distill", 1, "euler") for cycle in (2, 3)},
    # the third cycle's levers, each from the second cycle's student: run again ("ema"), 1,500 steps
    # ("long"), adversarial_weight 0.2 / 0.4 (default 0.1; "adv0.4": the shipped student), both
    # ("longadv0.2", "longadv0.3", "longadv0.4"); three runs kept power-function EMAs of relative
    # length 0.05-0.2 beside the exponential one
    **{f"distillkac-1-w1.25-huber-adversarial-logit-finetune3{kind}-1.5e-4{'-' + average if average else ''}": (
        f"adversarial-finetune3{kind}-cosine-1.5e-4/stage-1-1{'@' + average if average else ''}", "distill", 1,
        "euler")
       for kind, averages in FINETUNE3_RUNS.items() for average in averages},
    # a fourth cycle: the third cycle's shipped student, 500 steps at adversarial_weight 0.4, without
    # and with a discriminator warm-up of 100 steps ("dwarm100")
    **{f"distillkac-1-w1.25-huber-adversarial-logit-finetune4{kind}adv0.4-1.5e-4": (
        f"adversarial-finetune4{kind}adv0.4-cosine-1.5e-4/stage-1-1", "distill", 1, "euler")
       for kind in FINETUNE4_KINDS},
    # ... and with the samples clamped (clamped=1), discriminator warm-up 100, adversarial weight W
    **{f"distillkac-1-w1.25-huber-adversarial-logit-finetune4-clamped-dwarm100adv{weight}-1.5e-4": (
        f"adversarial-finetune4-clamped-dwarm100adv{weight}-cosine-1.5e-4/stage-1-1", "distill", 1, "euler")
       for weight in ("0.4", "1")},
    # 16x16: the shipped student fine-tuned 500 steps against itself (warm-up 50, cosine from 1.5e-4)
    # with adversarial_weight W (default 0.1), some with the discriminator trained alone for its
    # first 100 steps (discriminator_warmup=100)
    **{f"distillkac-1-w1.25-huber-adversarial-logit-finetune-{kind}adv{weight}-1.5e-4": (
        f"adversarial-finetune-{kind}adv{weight}-cosine-1.5e-4/stage-1-1", "distill", 1, "euler")
       for kind, weight in FINETUNE16_RUNS},
    # a second clamped cycle from the clamped W = 0.4 student, the same settings
    "distillkac-1-w1.25-huber-adversarial-logit-finetune2-clamped-dwarm100adv0.4-1.5e-4": (
        "adversarial-finetune2-clamped-dwarm100adv0.4-cosine-1.5e-4/stage-1-1", "distill", 1, "euler"),
    # the multi-step students of the pseudo-Huber chains of the logit-normal teacher (the shipped
    # students' chain) and of its Kac-preconditioned recipe
    **{f"distillkac-{steps}-w1.25-huber-logit{teacher}": (f"distill-w1.25-huber-logit{teacher}/stage-{stage}-{steps}",
                                                          "distill", steps, "euler")
       for teacher in ("", "-precond") for stage, steps in ((1, 20), (2, 4), (3, 2))},
    **{f"distillkac-1-w1.25-huber-adversarial-logit-precond{steps}":
       (f"adversarial-huber-w1.25-logit-precond{steps}/stage-1-1", "distill", 1, "euler")
       for steps in ("", "-1200", "-2400", "-4800")},
    "flowmap-4-w1.25": ("flowmap-w1.25/stage-1-1", "distill", 4, "euler"),
    "flowmap-2-w1.25": ("flowmap-w1.25/stage-1-1", "distill", 2, "euler"),
    "flowmap-1-w1.25": ("flowmap-w1.25/stage-1-1", "distill", 1, "euler"),
    "kac-diffusers-euler-100": ("kac-diffusers", "kac", 100, "euler"),
    # teacher levers (same recipe otherwise): logit-normal training times, retrained, 2x the steps, seed 1;
    # on the logit-normal recipe: Kac preconditioning, the target loss weighting, seed 1
    **{f"{run}-euler-100": (run, "kac", 100, "euler")
       for run in ("kac-logit-normal", "kac-uniform-3600", "kac-uniform-7200", "kac-uniform-seed1",
                   "kac-logit-normal-precond", "kac-logit-normal-weighted", "kac-logit-normal-seed1",
                   "kac-logit-normal-precond-seed1")},
    # the EMA length: power-function EMAs of relative length 0.05-0.2 kept by one run of the
    # preconditioned logit-normal recipe (its exponential EMA is kac-logit-normal-precond's, bit for bit)
    **{f"kac-logit-normal-precond-ema{length}-euler-100": (f"kac-logit-normal-precond-ema@power{length}",
                                                           "kac", 100, "euler")
       for length in EMA_LENGTHS},
    # the solver at equal NFE on the shipped (logit-normal) teacher
    **{f"kac-logit-normal-{solver}-{steps}": ("kac-logit-normal", "kac", steps, solver)
       for solver, steps in (("ab2", 100), ("midpoint", 50), ("heun", 50))},
    # the time grid at equal NFE on the shipped teacher (GRIDS): quadratic, denser near the data
    "kac-logit-normal-quadratic-euler-100": ("kac-logit-normal", "kac", 100, "euler"),
    "kac-logit-normal-quadratic-midpoint-50": ("kac-logit-normal", "kac", 50, "midpoint"),
    "kac-teacher-euler-4": ("kac", "kac", 4, "euler"),
    "kac-teacher-euler-1": ("kac", "kac", 1, "euler"),
    "edm-heun-35": ("edm", "edm", 18, "heun"),
    "edm-euler-4": ("edm", "edm", 4, "euler"),
    "edm-euler-2": ("edm", "edm", 2, "euler"),
    "edm-euler-1": ("edm", "edm", 1, "euler"),
    "ddim-100": ("ddpm", "ddpm", 100, "ddim"),
    "ddim-20": ("ddpm", "ddpm", 20, "ddim"),
    "ddim-4": ("ddpm", "ddpm", 4, "ddim"),
    "ddim-trailing-4": ("ddpm", "ddpm", 4, "ddim-trailing"),  # from t = 999, the usual few-step choice
    # the predicted x0 clipped to [-1, 1] (as Ho et al.'s ancestral sampler; diffusers' clip_sample=True)
    "ddim-clip-4": ("ddpm", "ddpm", 4, "ddim-clip"),
    "ddim-trailing-clip-4": ("ddpm", "ddpm", 4, "ddim-trailing-clip"),
    "ddpm-1000": ("ddpm", "ddpm", 1000, "ddpm"),
    # the DDPM baseline trained to predict v (`kacfast train --method ddpm --prediction v_prediction`)
    **{f"ddim-v{spacing}-{steps}": ("ddpm-v", "ddpm", steps, f"ddim{spacing}") for spacing, steps in DDIM_V_ROWS},
}

# rows sampled on another time grid than the uniform one: row -> grid(steps, T)
GRIDS = {"kac-logit-normal-quadratic-euler-100": quadratic_grid,
         "kac-logit-normal-quadratic-midpoint-50": quadratic_grid}

# The shipped models the MNIST pipelines trained, by dataset and run directory
SHIPPED = {"mnist5k16": {"kac-logit-normal": "mnist16-kac-teacher",
                         "adversarial-finetune-clamped-dwarm100adv1-cosine-1.5e-4/stage-1-1": "mnist16-distillkac-1step"},
           "mnist5k": {"kac-logit-normal": "mnist28-kac-teacher",
                       "adversarial-finetune3adv0.4-cosine-1.5e-4/stage-1-1": "mnist28-distillkac-1step"}}


def _load_row(runs: str, run: str, data: str = "mnist5k16"):
    """(model, meta) of a run directory, or, where the directory is missing, (model, None) of the
    shipped model the same pipeline trained (loaded with its PRETRAINED facts: the guidance a
    student absorbed)."""
    from kacfast.checkpoints import load_trained
    from kacfast.pretrained import load_pretrained

    run, _, average = run.partition("@")
    path = os.path.join(runs, run)
    if not os.path.isdir(path) and run in SHIPPED.get(data, {}):
        return load_pretrained(SHIPPED[data][run]), None
    return load_trained(path, ema=average or True)


def _sample_row(model, row: str, labels: torch.Tensor, guidance: float, seed: int,
                compile: bool = False) -> tuple[torch.Tensor, float]:
    """(images, seconds) of one table row at guidance w; Kac rows compiled on request."""
    from kacfast.generate import generate
    _, method, steps, solver = ROWS[row]
    kac = method in ("kac", "distill")
    grid = GRIDS[row](steps, facts_of(model).process.T) if row in GRIDS else None
    start = time.perf_counter()
    images = generate(model, method, steps, solver=solver, labels=labels, guidance=guidance, seed=seed,
                      compile=compile and kac, grid=grid)
    return images, time.perf_counter() - start


def _key(result: dict) -> tuple:
    return result["row"], result.get("guidance"), result["n"], tuple(result["seeds"]), result["reference"]


def _check_judges_of(path: str, evaluator) -> None:
    """Refuse to add rows to a results file whose rows were scored by other judges."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    try:
        check_same_judges(rows + [{"row": "(this run)", "judge_digests": evaluator.judge_digests}])
    except ValueError as error:
        sys.exit(f"{path}: {error}")


def _done(path: str) -> set[tuple]:
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        return {_key(json.loads(line)) for line in f if line.strip()}


def cmd_run(args) -> None:
    from kacfast.evaluation import Evaluator, Protocol, balanced_labels
    from kacfast.generate import generation_nfe
    from kacfast.images import make_grid, save_png

    torch.set_num_threads(args.threads)
    tuned = tune_cpu_allocator()  # hours of sampling: stop page-faulting the activations
    rows = args.rows or ["data", *ROWS]
    unknown = sorted(set(rows) - set(ROWS) - {"data"})
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from data, {', '.join(ROWS)}")
    protocol = Protocol(args.data, n=args.n, seeds=tuple(args.seeds), reference=args.reference)
    evaluator = Evaluator(protocol)
    _check_judges_of(args.out, evaluator)
    done = _done(args.out)
    labels = balanced_labels(args.n, 10)
    for row in rows:
        if row == "data":
            jobs = [(None, None)]
        else:
            run, method, steps, solver = ROWS[row]
            model, _ = _load_row(args.runs, run, args.data)
            absorbed = facts_of(model).absorbed_guidance if method == "distill" else None
            jobs = [(None if absorbed else w, absorbed) for w in ([1.0] if absorbed else args.guidance)]
        for guidance, absorbed in jobs:
            key = (row, guidance, args.n, tuple(args.seeds), args.reference)
            if key in done:
                continue
            start = time.perf_counter()
            if row == "data":
                result = evaluator.floor()
            else:
                seconds = []

                def sample_fn(seed, n, model=model, row=row, w=guidance or 1.0):
                    images, elapsed = _sample_row(model, row, labels, w, seed, args.compile)
                    seconds.append(elapsed)
                    if not seconds[:-1]:  # a column per class, from the first seed
                        # made here, not once up front: a folder removed mid-run must not cost the row
                        os.makedirs(args.grids, exist_ok=True)
                        save_png(make_grid(images[:100], nrow=10),
                                 os.path.join(args.grids, f"{row}-w{w:g}.png"))
                    return images, labels

                result = evaluator.evaluate(row, sample_fn, method=method, steps=steps, solver=solver,
                                            run=run, nfe=generation_nfe(method, steps, solver),
                                            guidance=guidance, absorbed_guidance=absorbed)
                result["sampling_seconds"] = sum(seconds)
                if row in GRIDS:
                    result["grid"] = GRIDS[row].__name__.removesuffix("_grid")
            result.update(seconds=time.perf_counter() - start, threads=args.threads,
                          tuned_allocator=tuned)
            with open(args.out, "a") as f:
                f.write(json.dumps(result, sort_keys=True) + "\n")
            m = result["metrics"]
            print(f"{row:24s} w {guidance or '-':>4}  " + "  ".join(
                f"{j} FD {m[j + '_fd']['mean']:.3f}±{(m[j + '_fd']['high'] - m[j + '_fd']['low']) / 2:.3f}"
                for j in protocol.judges) + f"  {result['seconds']:.0f} s", flush=True)


LABELS = {
    "data": "data (real vs real)",
    "kac-teacher-euler-100": "Kac teacher, Euler", "kac-teacher-ab2-100": "Kac teacher, AB-2",
    "kac-teacher-euler-4": "Kac teacher, Euler", "kac-teacher-euler-1": "Kac teacher, Euler",
    "distillkac-20": "DistillKac student, L2", "distillkac-4": "DistillKac student, L2",
    "distillkac-2": "DistillKac student, L2", "distillkac-1": "DistillKac student, L2",
    "distillkac-20-w1.25": "DistillKac student, L2", "distillkac-4-w1.25": "DistillKac student, L2",
    "distillkac-2-w1.25": "DistillKac student, L2", "distillkac-1-w1.25": "DistillKac student, L2",
    "rollout-2-w1.25": "DistillKac student, L2, roll-out starts in 4 -> 2 -> 1",
    "rollout-1-w1.25": "DistillKac student, L2, roll-out starts in 4 -> 2 -> 1",
    "distillkac-1-w1.25-huber": "DistillKac student, pseudo-Huber",
    "distillkac-1-w1.25-features": "DistillKac student, L2 + random features",
    "distillkac-1-w1.25-adversarial": "DistillKac student, L2 + adversarial last stage",
    "distillkac-1-w1.25-adversarial0.3": "DistillKac student, L2 + adversarial last stage, GAN weight 0.3",
    "distillkac-1-w1.25-huber-adversarial":
        "DistillKac student, pseudo-Huber + adversarial last stage of 600 steps (shipped 2026-12-01 to 12-06)",
    **{f"distillkac-1-w1.25-huber-adversarial-{n}":
       f"DistillKac student, pseudo-Huber + adversarial last stage of {n:,} steps"
       + " (shipped on 2026-12-06 until the logit-normal pair)" * (n == 4800)
       for n in (1200, 2400, 4800)},
    "flowmap-4-w1.25": "flow-map student (one student, any steps)",
    "flowmap-2-w1.25": "flow-map student (one student, any steps)",
    "flowmap-1-w1.25": "flow-map student (one student, any steps)",
    "kac-diffusers-euler-100": "Kac teacher on a diffusers UNet2DModel, Euler",
    **{f"distillkac-1-w1.25-huber-adversarial-logit{suffix}":
       f"DistillKac student of the logit-normal teacher, pseudo-Huber + adversarial last stage of {n:,} steps"
       for suffix, n in (("", 600), ("-1200", 1200), ("-2400", 2400), ("-4800", 4800), ("-6500", 6500),
                         ("-9600", 9600))},
    "distillkac-1-w1.25-huber-adversarial-logit-cooldown":
        "DistillKac student of the logit-normal teacher, adversarial stage of 6,500 steps + 1,000 at LR / 4",
    **{f"distillkac-1-w1.25-huber-adversarial-logit-finetune-{lr}":
       f"DistillKac student of the logit-normal teacher, adversarial stage (28x28: 4,800 steps, 16x16: 9,600) "
       f"+ 900 against itself, cosine LR from {lr}" for lr in ("5e-5", "1.5e-4")},
    **{f"distillkac-1-w1.25-huber-adversarial-logit-finetune{cycle}-1.5e-4":
       f"DistillKac student of the logit-normal teacher, adversarial stage (28x28: 4,800 steps) + 900"
       f"{' + 500' * (cycle - 1)} "
       "against itself, cosine LR from 1.5e-4 in each" for cycle in (2, 3)},
    **{f"distillkac-{steps}-w1.25-huber-logit{teacher}":
       f"DistillKac student of the {name}logit-normal teacher, pseudo-Huber"
       for teacher, name in (("", ""), ("-precond", "preconditioned ")) for steps in (20, 4, 2)},
    "kac-teacher-midpoint-50": "Kac teacher, midpoint",
    "kac-teacher-heun-50": "Kac teacher, Heun",
    "kac-logit-normal-euler-100": "Kac teacher, logit-normal training times, Euler",
    **{f"distillkac-1-w1.25-huber-adversarial-logit-precond{suffix}":
       f"DistillKac student of the preconditioned logit-normal teacher, pseudo-Huber + adversarial last stage of {n:,} steps"
       for suffix, n in (("", 600), ("-1200", 1200), ("-2400", 2400), ("-4800", 4800))},
    **{f"kac-logit-normal-{solver}-{steps}": f"Kac teacher, logit-normal training times, {name}"
       for solver, steps, name in (("ab2", 100, "AB-2"), ("midpoint", 50, "midpoint"), ("heun", 50, "Heun"))},
    "kac-logit-normal-quadratic-euler-100": "Kac teacher, logit-normal training times, Euler on the quadratic grid",
    "kac-logit-normal-quadratic-midpoint-50": "Kac teacher, logit-normal training times, midpoint on the quadratic grid",
    "kac-uniform-3600-euler-100": "Kac teacher, the recipe retrained, Euler",
    "kac-uniform-7200-euler-100": "Kac teacher, 2x the training steps (7,200), Euler",
    "kac-uniform-seed1-euler-100": "Kac teacher, the recipe with training seed 1, Euler",
    "kac-logit-normal-seed1-euler-100": "Kac teacher, logit-normal training times, training seed 1, Euler",
    "kac-logit-normal-precond-euler-100": "Kac teacher, logit-normal + Kac preconditioning, Euler",
    "kac-logit-normal-precond-seed1-euler-100":
        "Kac teacher, logit-normal + Kac preconditioning, training seed 1, Euler",
    "kac-logit-normal-weighted-euler-100": "Kac teacher, logit-normal + target loss weighting, Euler",
    **{f"kac-logit-normal-precond-ema{length}-euler-100":
       f"Kac teacher, logit-normal + Kac preconditioning, power-function EMA of length {length}, Euler"
       for length in EMA_LENGTHS},
    "single-stage-1": "single-stage 100 -> 1 student",
    "rollout-2": "DistillKac student, roll-out starts in 4 -> 2",
    "rollout-1": "DistillKac student, roll-out starts in 4 -> 2",
    "edm-heun-35": "EDM, Heun", "edm-euler-4": "EDM, Euler", "edm-euler-2": "EDM, Euler",
    "edm-euler-1": "EDM, Euler", "ddim-100": "DDIM", "ddim-20": "DDIM", "ddim-4": "DDIM",
    "ddim-trailing-4": "DDIM, trailing timesteps",
    "ddim-clip-4": "DDIM, x0 clipped", "ddim-trailing-clip-4": "DDIM, trailing timesteps, x0 clipped",
    "ddpm-1000": "DDPM, ancestral",
    **{f"ddim-v{spacing}-{steps}": f"DDIM, v-prediction{', trailing timesteps' if spacing else ''}"
       for spacing, steps in DDIM_V_ROWS},
    # the fine-tune cycles' levers (28x28: the third and fourth cycles; 16x16: from the shipped student)
    **{f"distillkac-1-w1.25-huber-adversarial-logit-finetune3{kind}-1.5e-4{'-' + average if average else ''}":
       f"DistillKac student of the logit-normal teacher, the second cycle's + {1500 if 'long' in kind else 500:,} "
       f"against itself, adversarial weight {kind.partition('adv')[2] or '0.1'}"
       f"{', ' + average.replace('power', 'power EMA ') if average else ''}"
       for kind, averages in FINETUNE3_RUNS.items() for average in averages},
    **{f"distillkac-1-w1.25-huber-adversarial-logit-finetune4{kind}adv0.4-1.5e-4":
       "DistillKac student of the logit-normal teacher, the third cycle's + 500 against itself, adversarial "
       f"weight 0.4{', discriminator warm-up 100' if kind else ''}" for kind in FINETUNE4_KINDS},
    **{f"distillkac-1-w1.25-huber-adversarial-logit-finetune4-clamped-dwarm100adv{weight}-1.5e-4":
       "DistillKac student of the logit-normal teacher, the third cycle's + 500 against itself, adversarial "
       f"weight {weight}, discriminator warm-up 100, clamped samples" for weight in ("0.4", "1")},
    **{f"distillkac-1-w1.25-huber-adversarial-logit-finetune-{kind}adv{weight}-1.5e-4":
       "DistillKac student of the logit-normal teacher, adversarial stage of 9,600 steps + 500 against itself, "
       f"adversarial weight {weight}{', discriminator warm-up 100' if 'dwarm100' in kind else ''}"
       f"{', clamped samples' if 'clamped' in kind else ''}"
       for kind, weight in FINETUNE16_RUNS},
    "distillkac-1-w1.25-huber-adversarial-logit-finetune2-clamped-dwarm100adv0.4-1.5e-4":
       "DistillKac student of the logit-normal teacher, adversarial stage of 9,600 steps + 2 x 500 against itself, "
       "adversarial weight 0.4, discriminator warm-up 100, clamped samples",
}


def _label(result: dict) -> str:
    absorbed = result.get("absorbed_guidance")
    return LABELS[result["row"]] + (f" (absorbed w = {absorbed:g})" if absorbed else "")


def cmd_report(args) -> None:
    from kacfast.evaluation import format_table

    with open(args.results) as f:
        results = [json.loads(line) for line in f if line.strip()]
    order = {row: i for i, row in enumerate(["data", *ROWS])}
    results.sort(key=lambda r: (order[r["row"]], r.get("guidance") or 0))
    for r in results:
        r["row"] = _label(r)
    try:
        print(format_table(results, args.metrics))
    except ValueError as error:  # rows scored by different judges
        sys.exit(str(error))
    judges = results[0]["judges"]
    print("\nEach sampler at its own best guidance (lowest FD of the judge; w in brackets):\n")
    print("| sampler | NFE | " + " | ".join(f"{j} FD (w)" for j in judges) + " |")
    print("|---|---:|" + "---:|" * len(judges))
    groups = {}
    for r in results:
        groups.setdefault((r["row"], r["nfe"]), []).append(r)
    for (label, nfe), group in groups.items():
        cells = []
        for j in judges:
            best = min(group, key=lambda r: r["metrics"][f"{j}_fd"]["mean"])
            m = best["metrics"][f"{j}_fd"]
            w = best.get("guidance")
            cells.append(f"{m['mean']:.3f} ± {(m['high'] - m['low']) / 2:.3f}" + (f" ({w:g})" if w else ""))
        print(f"| {label} | {nfe} | " + " | ".join(cells) + " |")
    if args.plot:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from plotting import line_plot
        judge = judges[0]
        families = {}
        for r in results:
            if r["method"] != "data" and r.get("guidance") in (None, args.plot_guidance):
                families.setdefault(r["row"], []).append((r["nfe"], r["metrics"][f"{judge}_fd"]["mean"]))
        floor = next((r["metrics"][f"{judge}_fd"]["mean"] for r in results if r["method"] == "data"), None)
        line_plot({k: sorted(v) for k, v in families.items()}, args.plot,
                  xlabel="network evaluations per image (NFE)", ylabel=f"{judge} FD (lower is better)",
                  xscale="log", hline=None if floor is None else (floor, "data floor"), marker="o",
                  title=f"{results[0]['dataset']}, guidance {args.plot_guidance:g} (students: absorbed)")
        print(f"\nplot -> {args.plot}")


def _row_name(row: str) -> str:
    """ROW@W with W written as the results name it (edm-heun-35@1.50 -> edm-heun-35@1.5)."""
    name, at, w = row.rpartition("@")
    try:
        return f"{name}@{float(w):g}" if at else row
    except ValueError:
        return row


def _pooled(records: list[dict], seeds: list[int], keys: list[str]) -> dict:
    """One row's records (from one or more results files) as one record over `seeds`, with the
    metrics `keys` only. The same seed scored twice must have the same values (a re-scored row
    with other samples or judges is refused, not silently replaced)."""
    per_seed = {}
    for r in records:
        for key in keys:
            if len(r["metrics"][key]["values"]) != len(r["seeds"]):
                sys.exit(f"{r['row']}: {key} has {len(r['metrics'][key]['values'])} values for seeds {r['seeds']}.")
        for i, seed in enumerate(r["seeds"]):
            values = {key: r["metrics"][key]["values"][i] for key in keys}
            if seed in per_seed and any(abs(values[k] - per_seed[seed][k]) > 1e-6 for k in keys):
                sys.exit(f"{r['row']} was scored twice on seed {seed} with different values: not pooled.")
            per_seed[seed] = values
    try:
        metrics = {key: seed_interval([per_seed[seed][key] for seed in seeds]).as_dict() for key in keys}
    except ValueError as error:
        sys.exit(f"{records[-1]['row']}: {error}")
    return {**records[-1], "seeds": seeds, "metrics": metrics}


def cmd_compare(args) -> None:
    """Paired differences A - B (per seed) of two scored rows, per judge: FD and class accuracy,
    over the seeds both were scored on in the --results files together (a row scored on seeds 0-2
    in one file and 3-5 in another is compared over 0-5). A row is named as `run` names it, with
    @W for a guided row's scale (edm-heun-35@1.5). Refused: rows of other datasets, samples per
    seed or references; rows that record different judges (`judge_digests`), and, when pooling
    several files, rows that record none (scored before 2026-12-07: their judges are unknown)."""
    from kacfast.evaluation import compare

    scored = {}
    for path in args.results:
        with open(path) as f:
            for r in (json.loads(line) for line in f if line.strip()):
                w = r.get("guidance")
                scored.setdefault(r["row"] if w is None else f"{r['row']}@{w:g}", []).append(r)
    names = [_row_name(row) for row in (args.a, args.b)]
    missing = [row for row in names if row not in scored]
    if missing:
        sys.exit(f"not scored in {', '.join(args.results)}: {', '.join(missing)} "
                 f"(scored: {', '.join(sorted(scored))})")
    records = scored[names[0]] + scored[names[1]]
    protocol = {(r["dataset"], r["n"], r["reference"], r.get("reference_size"), r.get("k")) for r in records}
    if len(protocol) > 1:
        sys.exit(f"{names[0]} and {names[1]} were scored on other datasets, samples per seed or references: "
                 "not paired.")
    if len(args.results) > 1 and any("judge_digests" not in r for r in records):
        sys.exit("rows that record no judge digests (scored before 2026-12-07) are compared one file at a "
                 "time: across files their judges may differ.")
    try:
        check_same_judges(records)
    except ValueError as error:
        sys.exit(str(error))
    seeds = sorted(set.intersection(*({s for r in scored[name] for s in r["seeds"]} for name in names)))
    if len(seeds) < 2:
        sys.exit(f"{names[0]} and {names[1]} share {len(seeds)} scored seed(s); a paired interval needs 2.")
    keys = [f"{judge}_{metric}" for judge in records[0]["judges"] for metric in ("fd", "accuracy")]
    a, b = (_pooled(scored[name], seeds, keys) for name in names)
    print(f"A = {names[0]}, B = {names[1]}; {a['n']} samples x seeds {seeds}, {a['reference']} reference\n")
    print("| metric | A | B | A - B, 95% paired by seed | A / B |\n|---|---:|---:|---:|---:|")
    for key in keys:
        diff = compare(a, b, key)
        ia, ib = a["metrics"][key], b["metrics"][key]
        print(f"| {key.replace('_', ' ')} | {ia['mean']:.3f} ± {(ia['high'] - ia['low']) / 2:.3f} | "
              f"{ib['mean']:.3f} ± {(ib['high'] - ib['low']) / 2:.3f} | "
              f"{diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}] | {ia['mean'] / ib['mean']:.3f}x |")


def cmd_speed(args) -> None:
    """Images/s of several rows side by side in one process (interleaved repeats, median)."""
    import statistics

    from kacfast.generate import generation_nfe

    torch.set_num_threads(args.threads)
    labels = torch.arange(args.n) % 10
    models = {row: _load_row(args.runs, ROWS[row][0], args.data)[0] for row in args.rows}
    times = {row: [] for row in args.rows}
    for _ in range(args.repeats):
        for row in args.rows:
            w = args.guidance if ROWS[row][1] != "distill" else 1.0  # students absorbed theirs
            times[row].append(_sample_row(models[row], row, labels, w, args.seed)[1])
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
    run.add_argument("--grids", default="mnist_grids", help="directory for one 10x10 grid per row and w")
    run.add_argument("--data", default="mnist5k16")
    run.add_argument("--n", type=int, default=1000, help="samples per seed and row (default 1000)")
    run.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run.add_argument("--reference", choices=("train", "test"), default="train")
    run.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.25, 1.5, 2.0])
    run.add_argument("--compile", action="store_true", help="compile the Kac rows' network (same "
                     "samples up to float rounding, ~1.4x faster on this CPU)")
    run.add_argument("--threads", type=int, default=2)
    rep = sub.add_parser("report")
    rep.add_argument("--results", required=True)
    rep.add_argument("--plot", help="write the quality-vs-NFE plot here (needs matplotlib)")
    rep.add_argument("--plot-guidance", type=float, default=1.5)
    rep.add_argument("--metrics", nargs="+", help="columns to show, e.g. fd precision recall accuracy "
                     "(default: all, KID included)")
    compare = sub.add_parser("compare", help="paired differences A - B of two scored rows")
    compare.add_argument("--results", required=True, action="append", help="a results file; "
                         "repeat to pool several by seed")
    compare.add_argument("a", help="a scored row, @W for a guided row's scale: edm-heun-35@1.5")
    compare.add_argument("b")
    speed = sub.add_parser("speed", help="images/s of --rows side by side (the last row is the unit)")
    speed.add_argument("--runs", required=True)
    speed.add_argument("--rows", nargs="+", default=["distillkac-1", "distillkac-4", "edm-heun-35"])
    speed.add_argument("--n", type=int, default=500)
    speed.add_argument("--repeats", type=int, default=3)
    speed.add_argument("--guidance", type=float, default=1.5)
    speed.add_argument("--seed", type=int, default=0)
    speed.add_argument("--data", default="mnist5k16", help="the data the runs were trained on")
    speed.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    {"run": cmd_run, "report": cmd_report, "compare": cmd_compare, "speed": cmd_speed}[args.cmd](args)


if __name__ == "__main__":
    main()
