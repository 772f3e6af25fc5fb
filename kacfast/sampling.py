"""Sampling Kac flows: dx/dt = v(x, t) from the prior at t = T down to t = 0.

Small pure pieces in the k-diffusion style: time grids are plain sequences built by separate helpers,
`integrate` runs any solver on any grid, and `sample` wires a model, its process, the prior and
guidance together. Each solver step is one fused op (kacfast.ops.guided_step): guidance mix +
update (+ AB-2 history / Heun stage / final clamp) in a single pass.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from kacfast import ops
from kacfast._device import compile_mode, network_dtype
from kacfast._warnings import warn
from kacfast.facts import facts_of
from kacfast.formulas import guidance_mix
from kacfast.models import is_flow_map
from kacfast.process import KacProcess

__all__ = ["sample", "integrate", "one_call_step", "uniform_grid", "quadratic_grid", "SOLVERS",
           "Solver", "one_call_solvers", "nfe", "guided_velocity_fn", "mixed_velocity_fn", "plan_sampling",
           "SamplingPlan", "default_max_batch", "draw_seed", "check_flow_map_solver"]

# Elements (samples x per-sample size) per chunk of a large request when max_batch is None.
# CPU: see default_max_batch (32,768: 128 images at 16x16, 41 at 28x28, the fastest eager chunk on
# the AMD EPYC of 2026-12-06 at both sizes; 256 at 16x16 ran 15% slower, 256 at 28x28 32% slower);
# CUDA: large enough to fill an H200 with a small UNet.
_CHUNK_ELEMENTS = {"cpu": 32_768, "cuda": 16_777_216}



# ----------------------------------------------------------------------------------------------
# solvers: one table, read by integrate, nfe, the distillation teacher, the diffusers scheduler,
# generate and the CLI. Each step is fused guided steps (guidance mix + update in one pass).
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Solver:
    """An entry of SOLVERS.

    nfe: network calls per step (a guided pair is one batched call).
    step: (velocity, x, t, t_next, history, *, guidance, clamp) -> (x at t_next, history);
        velocity(x, t) as from guided_velocity_fn (one-call steps pass a flow map's velocity,
        marked `velocity.flow_map`, their interval t - t_next as well); t, t_next floats
        (integrate's grid); history
        None at the first step, then whatever the previous step returned; clamp: clip to [-1, 1].
    from_velocity: for one-call solvers, the step from the velocity at its start,
        (x, v, h, history, *, guidance, clamp) -> (x at t - h, history); what a caller that
        evaluates the network itself (the diffusers scheduler) steps with. None otherwise.
    """
    nfe: int
    step: Callable
    from_velocity: Callable | None = None


def _euler(x, v, h, history, *, guidance, clamp):
    return ops.guided_step(x, v, guidance=guidance, h=h, clamp=clamp)[0], None


def _ab2(x, v, h, history, *, guidance, clamp):
    # Adams-Bashforth 2 for a variable step: x' = x - h ((1 + r/2) v - (r/2) v_prev), r = h / h_prev;
    # its first step (no history) is Euler
    v_prev, h_prev = history or (None, None)
    r = 0.0 if h_prev is None else h / h_prev
    x, v_mix = ops.guided_step(x, v, v_prev, guidance=guidance, h=h, alpha=1 + r / 2, beta=-r / 2,
                               clamp=clamp, return_v=True)
    return x, (v_mix, h)


def _one_call(from_velocity: Callable) -> Callable:
    def step(velocity, x, t, t_next, history, *, guidance, clamp):
        h = t - t_next
        v = velocity(x, t, h) if getattr(velocity, "flow_map", False) else velocity(x, t)
        return from_velocity(x, v, h, history, guidance=guidance, clamp=clamp)
    return step


def _heun(velocity, x, t, t_next, history, *, guidance, clamp):
    h = t - t_next
    x_euler, v1 = ops.guided_step(x, velocity(x, t), guidance=guidance, h=h, return_v=True)
    x, _ = ops.guided_step(x, velocity(x_euler, t_next), v1, guidance=guidance, h=h, alpha=0.5,
                           beta=0.5, clamp=clamp)
    return x, None


def _midpoint(velocity, x, t, t_next, history, *, guidance, clamp):
    h = t - t_next
    x_mid, _ = ops.guided_step(x, velocity(x, t), guidance=guidance, h=h / 2)
    x, _ = ops.guided_step(x, velocity(x_mid, t - h / 2), guidance=guidance, h=h, clamp=clamp)
    return x, None


#: name -> Solver. Add one here (see CONTRIBUTING.md) and every sampler, the CLI and generate
#: take it; a one-call solver (from_velocity set) also the distillation teacher and the scheduler.
SOLVERS: dict[str, Solver] = {
    "euler": Solver(1, _one_call(_euler), _euler),
    "ab2": Solver(1, _one_call(_ab2), _ab2),
    "heun": Solver(2, _heun),
    "midpoint": Solver(2, _midpoint),
}


def one_call_solvers() -> tuple[str, ...]:
    """Solvers that step from one velocity at the step's start (euler, ab2, and any added)."""
    return tuple(name for name, solver in SOLVERS.items() if solver.from_velocity is not None)


def one_call_step(solver: str, x: torch.Tensor, v: torch.Tensor, h: float, history, *,
                  guidance: float = 1.0, clamp: bool = False):
    """One step of a one-call solver from the velocity v at the step's start: (x at t - h,
    history for the next step). v is (B, ...) or the guided pair (2B, ...); history is None
    before the first step (see Solver)."""
    from_velocity = SOLVERS[solver].from_velocity if solver in SOLVERS else None
    if from_velocity is None:
        raise ValueError(f"solver must be one of {one_call_solvers()}, got {solver!r}.")
    return from_velocity(x, v, h, history, guidance=guidance, clamp=clamp)


def nfe(solver: str, steps: int) -> int:
    """Network function evaluations of `steps` steps of `solver` (guided or not: one batched call)."""
    _check_solver(solver)
    return SOLVERS[solver].nfe * steps


def uniform_grid(steps: int, T: float = 1.0) -> list[float]:
    """[T, T (steps-1)/steps, ..., 0]: steps + 1 times, decreasing. "100 steps" of the reference
    code (linspace(T, 0, 100)) is uniform_grid(99)."""
    _check_steps(steps)
    return [T * (steps - i) / steps for i in range(steps + 1)]


def quadratic_grid(steps: int, T: float = 1.0) -> list[float]:
    """T ((steps - i) / steps)^2: denser near the data end (t = 0)."""
    _check_steps(steps)
    return [T * ((steps - i) / steps) ** 2 for i in range(steps + 1)]


def _check_steps(steps) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}.")


def _check_solver(solver) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {tuple(SOLVERS)}, got {solver!r}.")


def check_flow_map_solver(flow_map: bool, solver: str) -> None:
    """A flow map steps by its average velocity over each step, x - h u(x, t, h): Euler only
    (another solver would use its instantaneous velocity, or mix average velocities)."""
    if flow_map and SOLVERS[solver].from_velocity is not _euler:
        raise ValueError(f"a flow map (an interval-conditioned model) steps by its average "
                         f"velocity, x - h u(x, t, h): solver must be 'euler', got {solver!r}.")


def _as_grid(grid) -> list[float]:
    times = [float(t) for t in (grid.tolist() if isinstance(grid, torch.Tensor) else grid)]
    if len(times) < 2 or any(b >= a for a, b in zip(times, times[1:])) or times[-1] < 0:
        raise ValueError("grid must hold >= 2 strictly decreasing times ending at >= 0.")
    return times


def guided_velocity_fn(model: Callable, labels: torch.Tensor | None, guidance: float,
                       null_label: int | None, dtype: torch.dtype | None = None) -> Callable:
    """v(x, t, interval=None) -> model velocity at time t (a float, or per-sample times (B,)):
    (B, ...) or, when guided, (2B, ...) = cat([v_cond, v_uncond]) from one batched call on
    cat([x, x]) with cat([labels, null]). A flow map (kacfast.models.is_flow_map) gets `interval`
    (the step's length; None = 0, its instantaneous velocity), and the function is marked
    `flow_map = True` for the solvers; other models ignore `interval`. `dtype`
    (bfloat16 / float16) runs the network alone under autocast; its output comes back in x's
    dtype, so the state and the fused steps stay float32."""
    guided = guidance != 1.0
    flow_map = is_flow_map(model)
    if guided and (labels is None or null_label is None):
        raise ValueError("guidance != 1 needs labels and a model with `num_classes` (the null label).")
    pair_labels = torch.cat([labels, torch.full_like(labels, null_label)]) if guided else labels

    def per_sample(x, t):
        return t if isinstance(t, torch.Tensor) else torch.full(
            (x.shape[0],), t, dtype=torch.float32, device=x.device)

    def velocity(x: torch.Tensor, t, interval=None) -> torch.Tensor:
        times = per_sample(x, t)
        intervals = per_sample(x, interval) if flow_map and interval is not None else None
        if guided:
            x, times = torch.cat([x, x]), torch.cat([times, times])
            intervals = None if intervals is None else torch.cat([intervals, intervals])
        kwargs = {} if intervals is None else {"interval": intervals}
        # no cast cache: it lives for one call anyway, and a CUDA graph capture forbids it
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None,
                            cache_enabled=False):
            return model(x, times, pair_labels, **kwargs).to(x.dtype)

    velocity.flow_map = flow_map
    return velocity


def mixed_velocity_fn(model: Callable, labels: torch.Tensor | None, guidance: float,
                      null_label: int | None) -> Callable:
    """Like guided_velocity_fn, with the guidance mixed in: f(x, t) -> (B, ...) =
    u + w (c - u) of the one batched call. For samplers whose update is not a fused guided step
    (the EDM and DDPM baselines, where the network output is a denoiser or a noise estimate)."""
    call = guided_velocity_fn(model, labels, guidance, null_label)
    if guidance == 1.0:
        return call

    def mixed(x: torch.Tensor, t, interval=None) -> torch.Tensor:
        cond, uncond = call(x, t, interval).chunk(2)
        return guidance_mix(cond, uncond, guidance)

    mixed.flow_map = call.flow_map
    return mixed


def integrate(velocity: Callable, x: torch.Tensor, grid: Sequence[float], *,
              solver: str = "euler", guidance: float = 1.0, clamp: bool = True,
              callback: Callable | None = None, progress: bool = False) -> torch.Tensor:
    """Integrate dx/dt = v from grid[0] down to grid[-1].

    Args:
        velocity: v(x, t) -> (B, ...) or guided (2B, ...) (see guided_velocity_fn; a flow
            map's, marked `flow_map`, is v(x, t, interval)).
        x: state at grid[0], (B, ...).
        grid: decreasing times (python floats or a 1-D tensor).
        solver: a SOLVERS name: "euler", "ab2" (1 NFE/step), "heun", "midpoint" (2 NFE/step).
        guidance: w in v_u + w (v_c - v_u); only used when velocity returns the (2B, ...) pair.
        clamp: clamp to [-1, 1] after the last step (images); False for roll-outs.
        callback: called after each step with {'x', 'i', 't', 't_next'}.
        progress: tqdm bar over steps.
    No host synchronization inside the loop: runs under torch.compile(fullgraph=True) when
    callback is None and progress is False.
    """
    _check_solver(solver)
    check_flow_map_solver(getattr(velocity, "flow_map", False), solver)
    times = _as_grid(grid)
    steps = range(len(times) - 1)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=f"kacfast {solver}", unit="step")
    history, step = None, SOLVERS[solver].step
    for i in steps:
        t, t_next = times[i], times[i + 1]
        x, history = step(velocity, x, t, t_next, history, guidance=guidance,
                          clamp=clamp and i == len(times) - 2)
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "t_next": t_next})
    return x


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _as_labels(labels, num_classes: int | None, device: torch.device) -> torch.Tensor:
    """labels as a (B,) long tensor on `device`; one-sentence errors for floats, bools, an empty
    list or classes outside [0, num_classes)."""
    tensor = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
    if tensor.numel() == 0:
        raise ValueError("labels is empty: give at least one label (or batch_size= without labels).")
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got {tensor.dtype} values.")
    tensor = tensor.to(device=device, dtype=torch.long).reshape(-1)
    if num_classes is not None and (tensor.min() < 0 or tensor.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values from "
                         f"{int(tensor.min())} to {int(tensor.max())}.")
    return tensor


@contextlib.contextmanager
def eval_mode(model):
    """The model in eval mode (no dropout) for the block, then back in the mode it was in: a
    sampler, compiled or captured, must never see training-mode layers."""
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A prior seed from `generator`, else torch's global RNG (so torch.manual_seed makes unseeded
    calls repeat)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())


@dataclass(frozen=True)
class SamplingPlan:
    """One validated sampling request: everything but the seed. Built by `plan_sampling`.

    grid: decreasing times from process.T to >= 0; batch: samples requested; shape: per-sample
    shape; labels: (batch,) long on device, or None; dtype: the network's autocast dtype or None
    (float32); null_label: the model's num_classes (None: unconditional)."""

    process: KacProcess
    device: torch.device
    grid: tuple
    solver: str
    guidance: float
    clamp: bool
    batch: int
    shape: tuple
    labels: torch.Tensor | None
    dtype: torch.dtype | None
    null_label: int | None


def plan_sampling(model: Callable, steps: int = 1, *, shape=None, batch_size=None, labels=None,
                  guidance: float = 1.0, solver: str = "euler", process=None, device=None,
                  grid=None, clamp: bool = True, dtype=None) -> SamplingPlan:
    """Validate a request of `sample` / `compile_sampler` (same arguments) into a SamplingPlan."""
    _check_solver(solver)
    check_flow_map_solver(is_flow_map(model), solver)
    facts = facts_of(model)
    process = process or facts.process or KacProcess()
    device = torch.device(device) if device is not None else _model_device(model)
    if facts.absorbed_guidance is not None and guidance != 1:
        warn(f"this student absorbed guidance {facts.absorbed_guidance:g} during distillation: "
             f"sample it at guidance=1; guidance={guidance:g} guides it a second time (twice the "
             "network calls, and a stronger guidance than it was distilled for).")
    if grid is None:
        _check_steps(steps)
        student_grid = facts.grid
        use_student = student_grid is not None and len(student_grid) == steps + 1
        if student_grid is not None and not use_student and not is_flow_map(model):
            warn(f"the model was distilled for {len(student_grid) - 1} step(s) on its own grid; "
                 f"sampling {steps} uniform step(s) instead.")
        grid = list(student_grid) if use_student else uniform_grid(steps, process.T)
    grid = _as_grid(grid)
    if abs(grid[0] - process.T) > 1e-9:
        raise ValueError(f"grid must start at the process horizon T = {process.T}, got {grid[0]}.")
    num_classes = getattr(model, "num_classes", None)
    if labels is not None:
        if hasattr(model, "num_classes") and num_classes is None:
            raise ValueError("labels were given but the model is unconditional (num_classes=None).")
        labels = _as_labels(labels, num_classes, device)
        if batch_size is not None and batch_size != labels.numel():
            raise ValueError(f"batch_size={batch_size} but {labels.numel()} labels were given.")
    batch = labels.numel() if labels is not None else (1 if batch_size is None else batch_size)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch!r}.")
    shape = tuple(shape) if shape is not None else getattr(model, "sample_shape", None)
    if shape is None:
        raise ValueError("shape is required: the model has no `sample_shape`.")
    if guidance != 1.0 and num_classes is None:
        raise ValueError("guidance != 1 needs a model with `num_classes` (the null label).")
    return SamplingPlan(process, device, tuple(grid), solver, float(guidance), clamp, batch,
                        tuple(shape), labels, network_dtype(dtype, device), num_classes)


def run_plan(model: Callable, plan: SamplingPlan, x: torch.Tensor, labels: torch.Tensor | None, *,
             callback: Callable | None = None, progress: bool = False) -> torch.Tensor:
    """Integrate one batch of `plan` from its prior draw x (B, *shape) with labels (B,) or None.
    Pure tensor code (no host sync): this is what `compile_sampler` compiles."""
    velocity = guided_velocity_fn(model, labels, plan.guidance, plan.null_label, plan.dtype)
    return integrate(velocity, x, plan.grid, solver=plan.solver, guidance=plan.guidance,
                     clamp=plan.clamp, callback=callback, progress=progress)


def default_max_batch(device: torch.device, sample_numel: int, guided: bool = False) -> int:
    """Chunk size `sample` uses when max_batch is None: a per-device budget of input elements per
    network call (on the CPU a large batch is slower per image: its activations do not stay in
    cache and fresh allocations page-fault), at least 1 sample. A guided call evaluates each
    sample twice (the conditional and null halves), so its chunk is half."""
    budget = _CHUNK_ELEMENTS["cuda" if device.type == "cuda" else "cpu"]
    return max(1, budget // (max(1, sample_numel) * (2 if guided else 1)))


@torch.no_grad()
def sample(model: Callable, steps: int = 1, *, shape: Sequence[int] | None = None,
           batch_size: int | None = None, labels=None, guidance: float = 1.0,
           solver: str = "euler", process: KacProcess | None = None, seed: int | None = None,
           device=None, progress: bool = False, callback: Callable | None = None,
           grid: Sequence[float] | None = None, clamp: bool = True, dtype=None,
           compile: bool | str = False, max_batch: int | None = None) -> torch.Tensor:
    """Generate samples with a Kac-flow model.

    Args:
        model: `model(x, t, y=None) -> velocity`, t (B,) raw times in [0, T] (a flow map,
            kacfast.models.is_flow_map: its average velocity over each step's interval). Read when
            present: `sample_shape` (per-sample shape), `num_classes` (null label for guidance)
            and its `kacfast.checkpoints.ModelFacts` (the process; a distilled student's time
            grid, used when it has steps + 1 points; the guidance it absorbed).
        steps: integration steps (NFE = steps x 1 for euler/ab2, x 2 for heun/midpoint).
        shape: per-sample shape, e.g. (1, 28, 28); default model.sample_shape.
        batch_size: number of samples (default len(labels), else 1).
        labels: class labels (B,) (integers: list or tensor) for conditional models.
        guidance: w in v = v_u + w (v_c - v_u); 1 = no guidance (one network call per NFE).
        solver: "euler", "ab2", "heun" or "midpoint" (a flow map: "euler" only).
        process: the Kac process (default: the model's facts, else KacProcess()).
        seed: seed of the prior's counter-based RNG (default: drawn from torch's global RNG).
        device: default: the model's device.
        progress: tqdm progress bar (over steps; over images when the request is chunked;
            compiled: only over chunks).
        callback: see integrate() (called per chunk; needs compile=False).
        grid: explicit decreasing time grid from T to 0 (overrides steps).
        clamp: clamp the result to [-1, 1].
        dtype: None (float32), torch.bfloat16 / torch.float16 or "bf16" / "fp16": the network
            runs under autocast in that dtype; the state, the prior and the fused steps stay
            float32. Warns where the CPU has no native instructions for it (it would be slower).
        compile: False, True or a torch.compile mode ("default", "reduce-overhead",
            "max-autotune", "max-autotune-no-cudagraphs"): the network and the step loop are
            compiled once per (model, chunk shape, grid, solver, guidance, dtype, device) and
            reused (see `compile_sampler`; on CUDA the chunk is replayed as a CUDA graph).
        max_batch: samples per network batch; a larger request runs in chunks (default: a per-
            device size, `default_max_batch`: 128 images at 16x16 on a CPU, 64 when guided;
            with compile, an explicit max_batch is the
            compiled batch and a smaller request is padded to it). The prior is drawn once for the whole request,
            so chunking changes no sample beyond float rounding of the network.
    Returns:
        (B, *shape) float32 samples at t = 0.
    """
    plan = plan_sampling(model, steps, shape=shape, batch_size=batch_size, labels=labels,
                         guidance=guidance, solver=solver, process=process, device=device,
                         grid=grid, clamp=clamp, dtype=dtype)
    if plan.guidance != 1.0 and plan.labels is None:
        raise ValueError("guidance != 1 needs labels (the conditional half of each guided call).")
    mode = compile_mode(compile)
    if mode is not None and callback is not None:
        raise ValueError("callback runs Python between steps: it needs compile=False.")
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int)
                                  or max_batch < 1):
        raise ValueError(f"max_batch must be an int >= 1 or None, got {max_batch!r}.")
    chunk = min(plan.batch, max_batch or default_max_batch(plan.device, math.prod(plan.shape),
                                                           plan.guidance != 1.0))
    x = plan.process.prior((plan.batch,) + plan.shape, seed=draw_seed() if seed is None else seed,
                           device=plan.device)
    with eval_mode(model):
        if mode is not None:
            from kacfast.compiled import cached_sampler

            def run(x_chunk, labels_chunk):
                # an explicit max_batch is the compiled batch even for a shorter chunk (padded),
                # so a stream of such requests compiles once; otherwise each chunk size is
                # compiled for itself (a padded remainder would cost more than one compile)
                batch = max_batch or x_chunk.shape[0]
                return cached_sampler(model, plan, batch, mode)._integrate_chunk(x_chunk,
                                                                                 labels_chunk)
        else:
            def run(x_chunk, labels_chunk):
                return run_plan(model, plan, x_chunk, labels_chunk, callback=callback,
                                progress=progress and chunk == plan.batch)
        if chunk == plan.batch:
            return run(x, plan.labels)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=plan.batch, desc=f"kacfast {plan.solver}", unit="img")
        for first in range(0, plan.batch, chunk):
            part = slice(first, first + chunk)
            x[part] = run(x[part], None if plan.labels is None else plan.labels[part])
            if bar is not None:
                bar.update(x[part].shape[0])
        if bar is not None:
            bar.close()
        return x
