"""How much of a distillation step the student's loss takes (does a fused student-loss op pay?).

    python benchmarks/experiments/student_loss_share.py --runs RUNS

Times one DistillKac training step (stage 4 -> 2 of benchmarks/experiments/mnist_pipeline.sh: the 4-step
student as teacher, batch 64, forward + backward) and, separately, the loss alone
(x - D v vs the teacher's endpoint: one axpy and a squared error, forward + backward) on tensors of
the same shape; one thread.
"""
import argparse
import os
import time

import torch

from kacfast.checkpoints import load_trained
from kacfast.data import load_dataset
from kacfast.facts import facts_of
from kacfast.training.distill import DistillObjective


def _mean_seconds(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    stage = os.path.join(args.runs, "distill", "stage-2-4")
    teacher = load_trained(stage)[0]
    student = load_trained(stage)[0].train().requires_grad_(True)
    objective = DistillObjective(teacher, facts_of(teacher).process, 4, 2)
    x, y = load_dataset("mnist5k16")
    x0, y0 = x[: args.batch_size], y[: args.batch_size]
    gen = torch.Generator().manual_seed(0)
    step = _mean_seconds(lambda: objective.loss(student, x0, y0, gen, 0).backward(), 2, 5)
    shape = x0.shape
    xs, target = torch.randn(shape), torch.randn(shape)
    v = torch.randn(shape, requires_grad=True)
    loss = _mean_seconds(lambda: ((xs - objective.interval * v) - target).square().mean().backward(), 10, 200)
    print(f"distillation step (4 -> 2, batch {args.batch_size}): {step * 1e3:.1f} ms; student loss "
          f"forward + backward: {loss * 1e6:.1f} us = {100 * loss / step:.3f}%")


if __name__ == "__main__":
    main()
