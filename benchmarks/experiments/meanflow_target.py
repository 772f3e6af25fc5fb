"""Why the flow-map objective uses the semigroup form and not MeanFlow's derivative form.

MeanFlow (Geng et al. 2025) regresses the average velocity u(x, t, h) on v - h du/dt, with du/dt
the network's total derivative along the flow (a JVP with tangents (v, 1, 1)). A flow-map student
starts as its teacher (u = v for every h), so its first targets are v - h dv/dt with the teacher
network's own derivative. This script compares, on the shipped 16x16 teacher (guidance 1.25, 64
training digits forward-noised to t): the rate dv/dt along the flow implied by the teacher's
100-substep roll-out (u ~ v - (h/2) dv/dt), the JVP's, and the error of MeanFlow's first target
against the roll-out's average velocity next to the error of the start (u = v). RMS per pixel.

    python benchmarks/experiments/meanflow_target.py      # about a minute on one core
"""
from __future__ import annotations

import torch

import kacfast
from kacfast.data import load_dataset
from kacfast.sampling import mixed_velocity_fn
from kacfast.training.distill_objectives import teacher_integrate


def _rms(z: torch.Tensor) -> float:
    return z.flatten(1).square().mean(1).sqrt().mean().item()


def main() -> None:
    torch.set_num_threads(1)
    teacher = kacfast.load_pretrained("mnist16-kac-teacher")
    x0, y = (part[:64] for part in load_dataset("mnist5k16", split="train", seed=0))
    process, guidance = kacfast.KacProcess(), 1.25
    velocity = mixed_velocity_fn(teacher, y, guidance, teacher.num_classes)
    for t, h in ((1.0, 1.0), (0.5, 0.5), (0.5, 0.1)):
        times = torch.full((64,), t)
        x = process.noise_target(x0, times, seed=1)[0]
        with torch.no_grad():
            v = velocity(x, times)
            average = (x - teacher_integrate(teacher, x, times, y, h / 100, 100, guidance)) / h
            dv_dt = torch.func.jvp(velocity, (x, times), (v, torch.ones_like(times)))[1]
        print(f"t = {t}, h = {h}: dv/dt along the flow {_rms(2 * (v - average) / h):.2f}, "
              f"the network's JVP {_rms(dv_dt):.2f}; MeanFlow's first target off by "
              f"{_rms(v - h * dv_dt - average):.3f}, the start (u = v) by {_rms(v - average):.3f}")


if __name__ == "__main__":
    main()
