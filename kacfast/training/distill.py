"""DistillKac: endpoint-only, multi-stage distillation of a Kac-flow teacher (kac-math.md section 8).

Each stage trains a student (a copy of the current teacher) to take one Euler step over each interval
of a coarser uniform grid, x_S = x_t - D v_phi(x_t, t, y), against the frozen teacher integrated over
the same interval with N substeps (fused guided steps, no grad); only the endpoints are compared
(the objectives: kacfast.training.distill_objectives). An objective may start from another student
(`student_from`): the flow-map objective trains an interval-conditioned copy on every interval.
Stages run through the ordinary training loop (EMA, checkpoints, exact resume, DDP, progress), and
each stage's student is the next stage's teacher. The first teacher may be guided; the student
absorbs the guidance, so it needs one network call per step.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from kacfast.facts import attach_facts
from kacfast.process import KacProcess
from kacfast.training.distill_objectives import (DISTILL_OBJECTIVES, DistillObjective,
                                                 teacher_integrate)
from kacfast.training.loop import RunConfig, TrainConfig, train

__all__ = ["DistillConfig", "distill", "DistillObjective", "teacher_integrate"]


@dataclass(kw_only=True)
class DistillConfig(RunConfig):
    """Multi-stage schedule, plus the RunConfig fields every stage's TrainConfig gets (batch_size,
    lr, warmup per stage and capped at its step count, lr_schedule per stage over its own steps,
    ema_decay, ema_lengths, seed (stage k runs seed + k), ckpt_every, sample_every) and the
    ExecutionConfig fields (all keyword-only). Each stage's EMA (ema_decay) is the next stage's
    teacher; power-function EMAs (ema_lengths) are kept in each stage's checkpoint beside it, to
    load or export by name.

    schedule: step counts, each dividing the previous (default 100 20 4 2 1).
    steps_per_stage: optimisation steps of every stage (an int) or of each stage (one per stage,
    len(schedule) - 1 of them: the late, cheap stages usually deserve more).
    guidance: the first teacher's guidance (the student absorbs it); start: "noise" or
    "rollout" interval start points; teacher_solver: the first teacher's one-call solver.
    objective: a DISTILL_OBJECTIVES name ("endpoint-l2", the paper's loss, by default).
    objective_options: that objective's `tunable` settings, e.g. {"adversarial_weight": 0.3}.
    """

    schedule: tuple = (100, 20, 4, 2, 1)
    steps_per_stage: int | tuple = 1000
    guidance: float = 1.0
    start: str = "noise"
    teacher_solver: str = "euler"
    objective: str = "endpoint-l2"
    objective_options: dict = field(default_factory=dict)
    lr: float = 1e-4  # distillation's own defaults
    warmup: int = 100

    def __post_init__(self):
        super().__post_init__()
        if self.objective not in DISTILL_OBJECTIVES:
            raise ValueError(f"objective must be one of {tuple(DISTILL_OBJECTIVES)}, got "
                             f"{self.objective!r}.")
        self.objective_options = DISTILL_OBJECTIVES[self.objective].check_options(
            self.objective_options)
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
        if self.lr_schedule == "cosine" and min(self.steps_per_stage) <= self.warmup:
            raise ValueError(f"lr_schedule 'cosine' decays after the warm-up: every stage needs more "
                             f"steps than warmup ({self.warmup}); got {self.steps_per_stage}.")


def distill(teacher, process: KacProcess, data, config: DistillConfig, out_dir: str, *,
            resume: bool = False, progress: bool = True, run_info: dict | None = None):
    """Run every stage of config.schedule; returns the last student (EMA weights, its facts attached).

    Stage k writes out_dir/stage-{k}-{steps}/; with resume=True finished stages are read back and
    an interrupted stage continues from its last checkpoint.
    """
    current = teacher
    for k, (t_steps, s_steps) in enumerate(zip(config.schedule, config.schedule[1:]), start=1):
        stage_dir = os.path.join(out_dir, f"stage-{k}-{s_steps}")
        objective = DISTILL_OBJECTIVES[config.objective](
            current, process, t_steps, s_steps, guidance=config.guidance if k == 1 else 1.0,
            start=config.start,
            # later teachers are students trained for Euler steps
            teacher_solver=config.teacher_solver if k == 1 else "euler",
            options=config.objective_options)
        student = objective.student_from(current).train().requires_grad_(True)
        attach_facts(student, grid=objective.grid,  # the grid it learns (not its teacher's)
                     absorbed_guidance=objective.absorbed_guidance)
        stage_steps = config.steps_per_stage[k - 1]
        train_config = TrainConfig(steps=stage_steps, label_dropout=0.0, **{
            **config.run_settings(), "warmup": min(config.warmup, stage_steps),
            "seed": config.seed + k})
        stage_resume = resume and os.path.exists(os.path.join(stage_dir, "checkpoint.safetensors"))
        current = train(student, objective, data, train_config, stage_dir, resume=stage_resume,
                        progress=progress, run_info={**(run_info or {}), "stage": k})
        attach_facts(current, process=process)
    return current
