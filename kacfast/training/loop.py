"""One training loop for every objective: AdamW (fused on GPU), LR warm-up, grad clipping, EMA,
bf16 autocast, optional torch.compile and channels_last, tqdm progress, atomic checkpoints and
exact resume, DDP under torchrun.

Exact resume: every random draw of step k comes from generators seeded by (seed, rank, k) and the
data order is a resumable BatchSampler, so a run killed at any point and resumed from its last
checkpoint with the same precision / compile / channels_last settings ends with weights
bit-identical to an uninterrupted run. Those three settings may change on resume (they are not
part of a run's identity), but then the math agrees only up to float rounding: a compiled forward
fuses and reorders float operations that eager mode runs one by one. Compiled runs on CUDA are
bit-identical only when the caller sets torch.use_deterministic_algorithms(True), since Inductor's
GPU scatter-adds otherwise use atomic adds (on CPU the loop makes them serial itself).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable

import torch
import torch.distributed as dist

from kacfast._device import (COMPILE_MODES, compile_mode, cpu_has_bf16,
                             narrow_cpu_kernels)
from kacfast._warnings import warn
from kacfast.data import BatchSampler
from kacfast.checkpoints import CHECKPOINT_NAME, CheckpointError, read_checkpoint
from kacfast.facts import attach_facts
from kacfast.training.averaging import MAX_SIGMA_REL, average_name, power_ema_decay, power_ema_gamma
from kacfast.training.checkpoint import restore, save_checkpoint


PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("constant", "cosine")


@dataclass(kw_only=True)
class ExecutionConfig:
    """How a run's math executes (shared by TrainConfig and DistillConfig; keyword-only). Not part
    of a run's identity: a run may resume with other values, and then continues the same math
    only up to float rounding (exact resume needs the same values).

    precision: "auto" (default: bf16 autocast on CUDA, float32 elsewhere), "fp32", or "bf16"
        (forward and loss autocast to bfloat16 on any device; weights, optimizer and EMA stay
        float32; warns on a CPU without native bf16 instructions, where it is slower).
    compile: False (default), True (= "default") or a torch.compile mode ("default",
        "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"): compiles the network's
        forward inside the loss; EMA, checkpoints and previews use the plain module.
    channels_last: False (default); True keeps the model and each batch in
        torch.channels_last memory format (4-D image data only).
    """

    precision: str = "auto"
    compile: bool | str = False
    channels_last: bool = False

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}.")
        if not (isinstance(self.compile, bool) or self.compile in COMPILE_MODES):
            raise ValueError(f"compile must be True, False or one of {COMPILE_MODES}, got "
                             f"{self.compile!r}.")
        if not isinstance(self.channels_last, bool):
            raise ValueError(f"channels_last must be True or False, got {self.channels_last!r}.")


@dataclass(kw_only=True)
class RunConfig(ExecutionConfig):
    """What every optimisation run sets, a teacher's run and each distillation stage alike
    (keyword-only; plus the ExecutionConfig fields). batch_size is global (split across DDP
    ranks); warmup: linear LR warm-up steps; lr_schedule: after the warm-up, "constant" (default)
    keeps lr, "cosine" decays it along half a cosine towards 0, reached one step after the run's
    last (`learning_rate`; the run's optimizer only: a distillation objective's discriminator
    keeps its own LR; cosine needs warmup < steps); sample_every: preview grid of the EMA model
    every N steps (image data only; 0 = never). ema_decay: the run's exponential EMA (what loading a run
    returns); ema_lengths: relative lengths sigma_rel in (0, 0.289) of power-function EMAs kept
    beside it (kacfast.training.averaging; default none), each loaded as
    load_trained(run, ema="power<sigma_rel>")."""

    batch_size: int = 128
    lr: float = 2e-4
    warmup: int = 200
    lr_schedule: str = "constant"
    ema_decay: float = 0.999
    ema_lengths: tuple = ()
    seed: int = 0
    ckpt_every: int = 500
    sample_every: int = 1000

    def __post_init__(self):
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}.")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}.")
        lengths = self.ema_lengths
        if isinstance(lengths, (str, bytes)) or not isinstance(lengths, (tuple, list)) or not all(
                isinstance(s, (int, float)) and not isinstance(s, bool) for s in lengths):
            raise ValueError(f"ema_lengths must be a tuple of numbers, got {lengths!r}.")
        # sorted: the same set of averages is the same run, whatever order it was asked in
        self.ema_lengths = tuple(sorted(float(s) for s in lengths))
        if len(set(self.ema_lengths)) < len(lengths) or any(
                not 0 < s < MAX_SIGMA_REL for s in self.ema_lengths):
            raise ValueError(f"ema_lengths must be distinct values in (0, {MAX_SIGMA_REL:.4f}), got "
                             f"{tuple(lengths)}.")

    def run_settings(self) -> dict:
        """This config's RunConfig fields (execution fields included), as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(RunConfig)}


@dataclass(kw_only=True)
class TrainConfig(RunConfig):
    """Hyper-parameters of a run: steps (required) and the loop's own settings, plus the
    RunConfig and ExecutionConfig fields (all keyword-only)."""

    steps: int
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    label_dropout: float = 0.1
    log_every: int = 25

    def __post_init__(self):
        super().__post_init__()
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}.")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must lie in [0, 1), got {self.label_dropout}.")
        if self.lr_schedule == "cosine" and self.warmup >= self.steps:
            raise ValueError(f"lr_schedule 'cosine' decays after the warm-up: warmup ({self.warmup}) "
                             f"must be below steps ({self.steps}).")


def learning_rate(config: TrainConfig, step: int) -> float:
    """The LR of optimisation step `step` (0-based, < config.steps): config.lr ramped linearly over
    the first config.warmup steps, then constant or (lr_schedule "cosine") lr * (1 + cos(pi p)) / 2
    with p = (step - warmup) / (steps - warmup) in [0, 1): a function of the step alone, so a
    resumed run continues the same schedule (resumed with another `steps`, the cosine is stretched
    from there on: unlike a constant LR, that is not the longer run's schedule)."""
    if config.lr_schedule == "cosine" and step >= config.warmup:
        progress = (step - config.warmup) / max(1, config.steps - config.warmup)
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * min(1.0, (step + 1) / max(1, config.warmup))


def _step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2**63)


def _distributed() -> tuple[int, int]:
    """(rank, world_size); initializes the process group under torchrun (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def close_distributed() -> None:
    """Tear down the process group that train/distill opened under torchrun (no-op otherwise).

    Call it before the interpreter exits. Gloo's worker threads drop their references to the
    last collective's tensors after the caller has moved on; that needs the GIL, and a thread
    that asks for the GIL while Python finalizes aborts the whole process ("terminate called
    without an active exception", pytorch/pytorch#190489). The barrier finishes all queued
    work and the pause, with the GIL released, lets the workers drop what they still hold.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()
    time.sleep(0.2)


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


@contextlib.contextmanager
def _serial_scatter_adds():
    """Torch's deterministic mode, without its NaN-filling of torch.empty (pure cost here).

    On CPU, Inductor compiles scatter-adds (the backward of embeddings and nearest upsampling)
    to multi-threaded atomic adds whose summation order changes from run to run; in this mode it
    calls ATen's serial kernel instead, which exact resume needs. Inductor may compile at any
    forward or backward (the first, and any recompile), so every one runs inside this context.
    """
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def _drop_labels(y, num_classes, p, generator):
    if y is None or num_classes is None or p == 0:
        return y
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p
    return torch.where(drop, torch.full_like(y, num_classes), y)


def _truncate_log(path: str, step: int) -> None:
    """Drop log lines past `step` (written by a run that was killed after its last checkpoint)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(kept)


def preview_grid(model: torch.nn.Module, objective, path: str, per_class: int = 2) -> None:
    """Write a grid of `model`'s samples to `path` with `objective.preview_sampler` (steps, solver):
    one column per class (`per_class` rows), or 20 unconditional samples; fixed seed, so grids of
    successive steps are comparable. Touches no training RNG state."""
    from kacfast.generate import generate
    from kacfast.images import make_grid, save_png

    num_classes = getattr(model, "num_classes", None)
    labels = None if num_classes is None else torch.arange(per_class * num_classes) % num_classes
    steps, solver = objective.preview_sampler
    device = next(model.parameters()).device
    if getattr(objective, "prediction", "epsilon") != "epsilon":  # what a loaded run's facts say
        attach_facts(model, prediction=objective.prediction)
    images = generate(model, objective.method, steps, solver=solver,
                      labels=None if labels is None else labels.to(device), n=20, seed=0,
                      process=getattr(objective, "process", None))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_png(make_grid(images.cpu(), nrow=num_classes or 10), path)


def train(model: torch.nn.Module, objective, data: tuple[torch.Tensor, torch.Tensor | None],
          config: TrainConfig, out_dir: str, *, resume: bool = False, run_info: dict | None = None,
          progress: bool = True, on_checkpoint: Callable | None = None) -> torch.nn.Module:
    """Train `model` on `data` = (x, y) with `objective`; returns the EMA model.

    Args:
        model: network `model(x, t, y)`; labels use `model.num_classes` as the null label.
        objective: KacObjective / EDMObjective / DDPMObjective (kacfast.training.objectives).
        data: x (N, ...) in [-1, 1] and labels (N,) or None; moved to the model's device per batch.
        out_dir: holds checkpoint.safetensors (the last one), config.json, log.jsonl (the
            loss, averaged over ranks, every log_every steps) and, for images, samples/
            step-NNNNNNN.png preview grids every sample_every steps (see `preview_grid`).
        resume: continue from out_dir's checkpoint (must exist and match this model).
        run_info: JSON-able facts stored with each checkpoint (data name, model preset, ...).
        on_checkpoint: called as on_checkpoint(step, ema) on rank 0 after each checkpoint.
    """
    device = next(model.parameters()).device
    x_all, y_all = data
    mode = compile_mode(config.compile)  # None: eager; raises where torch.compile cannot run
    if config.channels_last and x_all.dim() != 4:
        raise ValueError(f"channels_last needs 4-D image data (N, C, H, W), got data of shape "
                         f"{tuple(x_all.shape)}.")
    if config.precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        warn("precision='bf16' on a CPU without native bf16 instructions is emulated and slower "
             "than float32.")
    precondition = (getattr(model, "config", None) or {}).get("precondition")
    process = getattr(objective, "process", None)
    if precondition and process is not None and any(
            precondition[k] != getattr(process, k) for k in ("a", "c", "T", "clock")):
        raise ValueError(f"the model is preconditioned for the Kac process {precondition}, the "
                         f"objective trains on {process}: build both from one process.")
    rank, world = _distributed()
    ckpt_path = os.path.join(out_dir, CHECKPOINT_NAME)
    saved = None
    if resume:
        # Check the run's identity before any module changes: resuming is all or nothing.
        saved = read_checkpoint(ckpt_path)[0]
        # preconditioning lives in tables rebuilt from the config, not in the weights: a changed
        # setting would load without complaint and compute another function
        expected = {"objective": objective.describe(), "seed": config.seed,
                    "batch_size": config.batch_size, "world_size": world,
                    "precondition": (getattr(model, "config", None) or {}).get("precondition"),
                    "ema_lengths": list(config.ema_lengths)}
        found = {"objective": saved["objective"], "seed": saved["config"]["seed"],
                 "batch_size": saved["config"]["batch_size"], "world_size": saved["world_size"],
                 "precondition": ((saved.get("model") or {}).get("config") or {}).get("precondition"),
                 "ema_lengths": saved["config"].get("ema_lengths", [])}
        for key in expected:
            if expected[key] != found[key]:
                raise CheckpointError(f"{ckpt_path} was trained with {key}={found[key]!r}, not "
                                      f"{expected[key]!r}: exact resume needs the same run.")
        # the LR may change on resume (a cool-down), but a schedule change is easy to make by accident
        schedule = saved["config"].get("lr_schedule", "constant")
        if schedule != config.lr_schedule or (
                schedule == "cosine" and saved["config"].get("steps") != config.steps):
            warn(f"{ckpt_path} ran lr_schedule {schedule!r} over {saved['config'].get('steps')} steps; "
                 f"resuming with {config.lr_schedule!r} over {config.steps} changes the LR of the "
                 "remaining steps.")
    elif os.path.exists(ckpt_path):
        raise CheckpointError(f"{out_dir} already holds a run: pass resume=True (--resume) to "
                              "continue it, or choose another output directory.")
    if config.channels_last:
        model.to(memory_format=torch.channels_last)  # in place; the EMA copy inherits it
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    gammas = {average_name(s): power_ema_gamma(s) for s in config.ema_lengths}
    averages = {name: copy.deepcopy(model).eval().requires_grad_(False) for name in gammas}
    # fused (one kernel for all tensors) on CUDA only: on CPU it would change today's numbers
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay, fused=device.type == "cuda")
    sampler = BatchSampler(len(x_all), config.batch_size, seed=config.seed)
    # an objective that trains parts of its own (a discriminator) checkpoints them with the run
    objective_state = objective.checkpointed() if hasattr(objective, "checkpointed") else None
    if objective_state and world > 1:
        raise ValueError(f"{type(objective).__name__} trains parts of its own, which are not "
                         "synchronized across processes: run it in one process.")
    step = 0
    if saved is not None:
        step = restore(ckpt_path, model=model, ema=ema, optimizer=optimizer,
                       objective_state=objective_state, averages=averages)["step"]
        sampler.load_state_dict(saved["data_order"])
    sampler = sampler.shard(rank, world)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if mode is not None:
        # Only the loss's forward runs compiled: EMA updates, checkpoints (no `_orig_mod.` key
        # prefixes) and preview grids keep using `model` itself.
        net = torch.compile(net, mode=mode)

    meta = {"config": asdict(config), "objective": objective.describe(),
            "model": {"kind": getattr(model, "kind", None), "config": getattr(model, "config", None)},
            "run": run_info or {}, "world_size": world}
    log_path = os.path.join(out_dir, "log.jsonl")
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        _truncate_log(log_path, step)

    def checkpoint():
        if rank == 0:
            save_checkpoint(ckpt_path, model=model, ema=ema, optimizer=optimizer,
                            meta={**meta, "step": step, "data_order": sampler.state_dict()},
                            objective_state=objective_state, averages=averages)
            if on_checkpoint is not None:
                on_checkpoint(step, ema)
        if world > 1:
            dist.barrier()

    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=config.steps, initial=step, desc=f"train {objective.method}", unit="step")
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    serial = (mode is not None and device.type == "cpu"
              and not torch.are_deterministic_algorithms_enabled())
    model.train()
    while step < config.steps:
        seed = _step_seed(config.seed, rank, step)
        torch.manual_seed(seed)  # dropout layers draw from the global RNG
        gen = torch.Generator(device=device).manual_seed(seed)
        idx = next(sampler)
        x0 = x_all[idx].to(device, non_blocking=True)
        if config.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        y = None if y_all is None else y_all[idx].to(device, non_blocking=True)
        y = _drop_labels(y, getattr(model, "num_classes", None), config.label_dropout, gen)
        lr = learning_rate(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with (_serial_scatter_adds() if serial else contextlib.nullcontext(),
              narrow_cpu_kernels(device, torch.bfloat16 if bf16 else None)):
            with autocast:
                loss = objective.loss(net, x0, y, gen, seed)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        _update_ema(ema, model, min(config.ema_decay, (1 + step) / (10 + step)))
        for name, average in averages.items():
            _update_ema(average, model, power_ema_decay(gammas[name], step + 1))
        step += 1
        if step % config.log_every == 0 or step == config.steps:
            value = loss.detach().float()
            if world > 1:
                dist.all_reduce(value)
                value /= world
            if rank == 0:
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": step, "loss": value.item()}) + "\n")
                if bar is not None:
                    bar.set_postfix(loss=f"{value.item():.4f}")
        if bar is not None:
            bar.update(1)
        if step % config.ckpt_every == 0 or step == config.steps:
            checkpoint()
        if rank == 0 and x_all.dim() == 4 and config.sample_every and (
                step % config.sample_every == 0 or step == config.steps):
            preview_grid(ema, objective, os.path.join(out_dir, "samples", f"step-{step:07d}.png"))
    if bar is not None:
        bar.close()
    return ema
