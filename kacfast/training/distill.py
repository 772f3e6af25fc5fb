"""DistillKac: endpoint-only, multi-stage distillation of a Kac-flow teacher (kac-math.md section 8).

Each stage trains a student (a copy of the current teacher) to take one Euler step over each interval
of a coarser uniform grid, x_S = x_t - D v_phi(x_t, t, y), against the frozen teacher integrated over
the same interval with N substeps (fused guided steps, no grad); only the endpoints are compared.
Stages run through the ordinary training loop (EMA, checkpoints, exact resume, DDP, progress), and
each stage's student is the next stage's teacher. The first teacher may be guided; the student
absorbs the guidance, so it needs one network call per step.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch

from kacfast.facts import attach_facts, facts_of
from kacfast.process import KacProcess
from kacfast.sampling import ONE_CALL_SOLVERS, guided_velocity_fn, one_call_step, uniform_grid
from kacfast.training.loop import ExecutionConfig, TrainConfig, train

STARTS = ("noise", "rollout")


TEACHER_SOLVERS = ONE_CALL_SOLVERS


@torch.no_grad()
def teacher_integrate(teacher, x, t_start, y, h: float, substeps: int, guidance: float,
                      solver: str = "euler"):
    """Roll the teacher out from per-sample times t_start (B,) over `substeps` steps of h with
    fused guided steps: "euler", or "ab2" (Adams-Bashforth 2, its first step Euler). Guided only
    when there are labels."""
    w = guidance if y is not None else 1.0
    velocity = guided_velocity_fn(teacher, y, w, getattr(teacher, "num_classes", None))
    history = None
    for j in range(substeps):
        x, history = one_call_step(solver, x, velocity(x, t_start - j * h), h, history, guidance=w)
    return x


class DistillObjective:
    """Endpoint loss of one stage: student grid uniform_grid(student_steps, T), N substeps per interval."""

    method = "distill"

    def __init__(self, teacher, process: KacProcess, teacher_steps: int, student_steps: int,
                 guidance: float = 1.0, start: str = "noise", teacher_solver: str = "euler"):
        if teacher_steps % student_steps:
            raise ValueError(f"student steps ({student_steps}) must divide teacher steps "
                             f"({teacher_steps}).")
        if start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {start!r}.")
        if teacher_solver not in TEACHER_SOLVERS:
            raise ValueError(f"teacher_solver must be one of {TEACHER_SOLVERS}, got {teacher_solver!r}.")
        self.teacher_solver = teacher_solver
        self.teacher = teacher.eval().requires_grad_(False)
        self.process = process
        self.teacher_steps, self.student_steps = teacher_steps, student_steps
        self.substeps = teacher_steps // student_steps
        self.grid = uniform_grid(student_steps, process.T)
        self.interval = process.T / student_steps
        self.guidance, self.start = guidance, start
        # what the student reproduces: this stage's guidance, or the one its teacher absorbed
        absorbed = facts_of(teacher).absorbed_guidance if guidance == 1 else guidance
        conditional = getattr(teacher, "num_classes", None) is not None
        self.absorbed_guidance = absorbed if conditional and absorbed not in (None, 1) else None
        self.preview_sampler = (student_steps, "euler")  # the student's own grid is uniform

    def _start_points(self, x0, y, idx, generator, seed):
        t_start = torch.tensor(self.grid, device=x0.device)[idx]
        if self.start == "noise":
            return self.process.noise_target(x0, t_start, seed=seed)[0], t_start
        # teacher roll-out from the prior, read off at the student's grid points
        x = self.process.prior(x0.shape, seed=seed, device=x0.device, dtype=x0.dtype)
        states = [x]
        h = self.interval / self.substeps
        for i in range(self.student_steps - 1):
            t = torch.full((x0.shape[0],), self.grid[i], device=x0.device)
            x = teacher_integrate(self.teacher, x, t, y, h, self.substeps, self.guidance,
                                  self.teacher_solver)
            states.append(x)
        picked = torch.stack(states)[idx, torch.arange(x0.shape[0], device=x0.device)]
        return picked, t_start

    def loss(self, net, x0, y, generator, seed):
        idx = torch.randint(0, self.student_steps, (x0.shape[0],), generator=generator,
                            device=x0.device)
        x, t = self._start_points(x0, y, idx, generator, seed)
        target = teacher_integrate(self.teacher, x, t, y, self.interval / self.substeps,
                                   self.substeps, self.guidance, self.teacher_solver)
        pred = x - self.interval * net(x, t, y)
        return (pred.float() - target.float()).square().mean()

    def describe(self) -> dict:
        return {"method": self.method, "process": self.process.to_dict(), "grid": self.grid,
                "teacher_steps": self.teacher_steps, "student_steps": self.student_steps,
                "guidance": self.guidance, "absorbed_guidance": self.absorbed_guidance,
                "start": self.start, "teacher_solver": self.teacher_solver}


@dataclass
class DistillConfig(ExecutionConfig):
    """Multi-stage schedule and per-stage training settings (batch_size is global), plus the
    keyword-only ExecutionConfig fields precision, compile, channels_last that every stage's
    TrainConfig gets.

    steps_per_stage: optimisation steps of every stage (an int) or of each stage (one per stage,
    len(schedule) - 1 of them: the late, cheap stages usually deserve more).
    """

    schedule: tuple = (100, 20, 4, 2, 1)
    steps_per_stage: int | tuple = 1000
    batch_size: int = 128
    lr: float = 1e-4
    warmup: int = 100  # per stage, capped at the stage's step count
    guidance: float = 1.0
    start: str = "noise"
    teacher_solver: str = "euler"
    ema_decay: float = 0.999
    seed: int = 0
    ckpt_every: int = 500
    sample_every: int = 1000

    def __post_init__(self):
        super().__post_init__()
        if len(self.schedule) < 2 or any(a % b for a, b in zip(self.schedule, self.schedule[1:])):
            raise ValueError(f"schedule needs >= 2 step counts, each dividing the previous one; "
                             f"got {self.schedule}.")
        stages = len(self.schedule) - 1
        if isinstance(self.steps_per_stage, int):
            self.steps_per_stage = (self.steps_per_stage,) * stages
        self.steps_per_stage = tuple(int(n) for n in self.steps_per_stage)
        if len(self.steps_per_stage) != stages or min(self.steps_per_stage) < 1:
            raise ValueError(f"steps_per_stage needs one count >= 1 per stage ({stages}), or one "
                             f"for all; got {self.steps_per_stage}.")


def distill(teacher, process: KacProcess, data, config: DistillConfig, out_dir: str, *,
            resume: bool = False, progress: bool = True, run_info: dict | None = None):
    """Run every stage of config.schedule; returns the last student (EMA weights, its facts attached).

    Stage k writes out_dir/stage-{k}-{steps}/; with resume=True finished stages are read back and
    an interrupted stage continues from its last checkpoint.
    """
    current = teacher
    for k, (t_steps, s_steps) in enumerate(zip(config.schedule, config.schedule[1:]), start=1):
        stage_dir = os.path.join(out_dir, f"stage-{k}-{s_steps}")
        objective = DistillObjective(current, process, t_steps, s_steps,
                                     guidance=config.guidance if k == 1 else 1.0,
                                     start=config.start,
                                     # later teachers are students trained for Euler steps
                                     teacher_solver=config.teacher_solver if k == 1 else "euler")
        student = copy.deepcopy(current).train().requires_grad_(True)
        attach_facts(student, grid=objective.grid,  # the grid it learns (not its teacher's)
                     absorbed_guidance=objective.absorbed_guidance)
        stage_steps = config.steps_per_stage[k - 1]
        train_config = TrainConfig(steps=stage_steps, batch_size=config.batch_size,
                                   lr=config.lr, warmup=min(config.warmup, stage_steps),
                                   ema_decay=config.ema_decay, label_dropout=0.0, seed=config.seed + k,
                                   ckpt_every=config.ckpt_every, sample_every=config.sample_every,
                                   **config.execution())
        stage_resume = resume and os.path.exists(os.path.join(stage_dir, "checkpoint.safetensors"))
        current = train(student, objective, data, train_config, stage_dir, resume=stage_resume,
                        progress=progress, run_info={**(run_info or {}), "stage": k})
        attach_facts(current, process=process)
    return current
