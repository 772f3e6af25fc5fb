"""Models shipped with kacfast (safetensors in this folder; no download).

`list_pretrained()` names them, `load_pretrained(name)` returns a model that `kacfast.sample` takes
as is (it carries its Kac process, and a student its step grid). Each entry records the commands
that reproduce its file (benchmarks/experiments/mnist_pipeline.sh runs them all).
"""
from __future__ import annotations

import os

import torch

from kacfast.facts import attach_facts

__all__ = ["PRETRAINED", "list_pretrained", "load_pretrained", "pretrained_path"]

_HERE = os.path.dirname(os.path.abspath(__file__))
_TRAIN = ("kacfast train --data mnist5k16 --model unet-tiny --method kac --time-distribution logit-normal "
          "--steps 3600 --batch-size 64 --lr 5e-4 --threads 1 --out runs/kac-logit-normal")
_DISTILL = ("kacfast distill --teacher runs/kac-logit-normal --out runs/distill-w1.25-huber-logit --schedule "
            "100 20 4 2 --steps-per-stage 200 300 500 --batch-size 64 --lr 2e-4 --guidance 1.25 "
            "--objective endpoint-pseudo-huber --threads 1")
# the last stage (2 -> 1) with the seed it has in the full schedule (seed 0 + 4), with the paper's
# L2 plus the adversarial term, 9,600 steps (the pipeline reaches it by resuming copies of its
# 600-, 1,200-, 2,400- and 4,800-step runs: with a constant LR after warm-up, the same run)
_ADVERSARIAL = ("kacfast distill --teacher runs/distill-w1.25-huber-logit/stage-3-2 --out "
                "runs/adversarial-huber-w1.25-logit-9600 --schedule 2 1 --steps-per-stage 9600 --seed 3 "
                "--objective endpoint-l2-adversarial --batch-size 64 --lr 2e-4 --threads 1")

_SCORED = ("mnist5k16, 3 seeds x 1,000 class-balanced samples against the training split, 95% "
           "intervals (`python benchmarks/experiments/mnist_results.py run ...`, README 'Quality under two "
           "judges'); real-vs-real floor: cnn FD 0.28 +- 0.18, strided FD 0.60 +- 0.26")

#: name -> file, description, the commands that made it, how to sample it (guidance: the w its
#: sweep picks, README "Teacher levers": the best on the first judge, tied with the best on the
#: second) and its scores under the two-judge protocol.
PRETRAINED = {
    "mnist16-kac-teacher": {
        "file": "mnist16-kac-teacher.safetensors",
        "description": "Kac flow-matching teacher, class-conditional unet-tiny (0.70M parameters) on "
                       "MNIST-5k at 16x16 (a=9, c=3, T=1; training times drawn logit-normal); "
                       "sample with 100 Euler steps at guidance 1.25 (50 midpoint steps, the same "
                       "100 network calls, score better on the first judge).",
        "commands": [_TRAIN, "kacfast export --ckpt runs/kac-logit-normal --out mnist16-kac-teacher.safetensors"],
        "steps": 100, "guidance": 1.25,
        "scores": [_SCORED,
                   "100 Euler steps, w = 1.25: cnn FD 0.80 +- 0.14, strided FD 0.67 +- 0.11, "
                   "class accuracy 0.987 / 0.990",
                   "100 Euler steps, w = 1: cnn FD 1.07 +- 0.05, strided FD 0.65 +- 0.06, "
                   "class accuracy 0.951 / 0.959",
                   "100 Euler steps, w = 1.5: cnn FD 1.06 +- 0.17, strided FD 1.18 +- 0.18, "
                   "class accuracy 0.996 / 0.997",
                   "50 midpoint steps, w = 1.25: cnn FD 0.69 +- 0.11, strided FD 0.67 +- 0.11, "
                   "class accuracy 0.988 / 0.990"],
    },
    "mnist16-distillkac-1step": {
        "file": "mnist16-distillkac-1step.safetensors",
        "description": "DistillKac 1-step student of mnist16-kac-teacher (100 -> 20 -> 4 -> 2 with "
                       "the pseudo-Huber endpoint distance, guidance 1.25 absorbed; then 2 -> 1 with "
                       "the endpoint-l2-adversarial objective, 9,600 steps): one network "
                       "call per image.",
        "commands": [_TRAIN, _DISTILL, _ADVERSARIAL, "kacfast export --ckpt "
                     "runs/adversarial-huber-w1.25-logit-9600/stage-1-1 --out "
                     "mnist16-distillkac-1step.safetensors"],
        "steps": 1, "guidance": 1.0, "absorbed_guidance": 1.25,
        "scores": [_SCORED,
                   "1 step: cnn FD 0.74 +- 0.13, strided FD 0.55 +- 0.10, class accuracy "
                   "0.979 / 0.986"],
    },
}


def list_pretrained() -> list[str]:
    """Names of the shipped models (those whose file is present in this installation)."""
    return [name for name, entry in PRETRAINED.items()
            if os.path.isfile(os.path.join(_HERE, entry["file"]))]


def pretrained_path(name: str) -> str:
    """Path of a shipped model's safetensors file."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; choose one of {sorted(PRETRAINED)}.")
    path = os.path.join(_HERE, PRETRAINED[name]["file"])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing from this installation; reproduce it with: "
                                + " && ".join(PRETRAINED[name]["commands"]))
    return path


def load_pretrained(name: str, device: str | torch.device | None = None) -> torch.nn.Module:
    """A shipped model in eval mode, ready for `kacfast.sample(model, steps, labels=...)`; its
    facts (``kacfast.facts.facts_of(model).pretrained``) hold its entry of PRETRAINED
    (recommended steps and guidance)."""
    from kacfast.checkpoints import load_trained
    model, _ = load_trained(pretrained_path(name), device=device)
    entry = dict(PRETRAINED[name], name=name)
    return attach_facts(model, pretrained=entry, absorbed_guidance=entry.get("absorbed_guidance"))
