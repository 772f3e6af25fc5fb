"""One entry point that samples any trained kacfast model with the sampler its method calls for.

Kac teachers and DistillKac students integrate their velocity (kacfast.sample); EDM models use the
Heun (or Euler) sampler; DDPM models use DDIM (deterministic; timesteps "leading" as in the DDIM
paper, or "trailing", from t = 999, the usual few-step choice; either with the predicted x0 clipped
to [-1, 1]: "ddim-clip", "ddim-trailing-clip") or ancestral DDPM. The CLI, the
training loop's preview grids and the benchmarks all go through `generate`, so a row of a results
table and a `kacfast sample` call run the same code.
"""
from __future__ import annotations

import torch

from kacfast.facts import facts_of
from kacfast.process import KacProcess
from kacfast.sampling import SOLVERS, nfe

__all__ = ["generate", "METHODS", "BASELINE_SOLVERS", "solvers_for", "solver_for",
           "generation_nfe"]

#: training methods of the models generate samples
METHODS = ("kac", "distill", "edm", "ddpm")
#: DDIM solver -> its ddim_sample settings: the timestep spacing (DDPMSchedule.timesteps) and whether
#: the predicted x0 is clipped to the data range [-1, 1]
DDIM_SOLVERS = {"ddim": dict(timestep_spacing="leading"), "ddim-trailing": dict(timestep_spacing="trailing"),
                "ddim-clip": dict(timestep_spacing="leading", clip_sample=True),
                "ddim-trailing-clip": dict(timestep_spacing="trailing", clip_sample=True)}
#: the baselines' own samplers (the first is the default); Kac teachers and students take every
#: entry of kacfast.sampling.SOLVERS (euler first)
BASELINE_SOLVERS = {"edm": ("heun", "euler"), "ddpm": (*DDIM_SOLVERS, "ddpm")}


def solvers_for(method: str) -> tuple[str, ...]:
    """The solvers that apply to a model trained with `method`; the first is the default."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    return BASELINE_SOLVERS.get(method) or tuple(SOLVERS)


def solver_for(method: str, solver: str | None = None) -> str:
    """The solver to use for a model trained with `method` (its first listed solver by default)."""
    choices = solvers_for(method)
    if solver is None:
        return choices[0]
    if solver not in choices:
        raise ValueError(f"solver {solver!r} does not apply to {method} models; choose one of {choices}.")
    return solver


def generation_nfe(method: str, steps: int, solver: str | None = None) -> int:
    """Network evaluations per sample (a guided pair counts once: it is one batched call).
    EDM's Heun takes 2 per step except the last (`steps` = 18 -> 35 NFE), its Euler 1."""
    from kacfast.baselines import edm_nfe
    solver = solver_for(method, solver)
    if method == "edm":
        return edm_nfe(steps, solver)
    if method == "ddpm":
        return steps
    return nfe(solver, steps)


@torch.no_grad()
def generate(model, method: str, steps: int, *, solver: str | None = None,
             labels: torch.Tensor | None = None, n: int | None = None, guidance: float = 1.0,
             seed: int = 0, process: KacProcess | None = None, progress: bool = False,
             dtype=None, compile: bool | str = False, max_batch: int | None = None,
             grid=None) -> torch.Tensor:
    """Samples from `model`, trained with `method` ("kac", "distill", "edm" or "ddpm").

    Args:
        steps: integration steps (EDM Heun: NFE = 2 steps - 1; DDPM: timesteps); see generation_nfe.
        solver: see solvers_for (default: the method's first).
        labels: (n,) class labels for a conditional model, else None (then `n` samples).
        guidance: w (1 = none; otherwise one batched call on the (cond, null) pair per NFE).
        seed: seeds the prior / latents (and DDPM's per-step noise): same seed, same samples.
        process: the Kac process (default: the model's facts).
        dtype, compile, max_batch, grid: the network's autocast dtype, torch.compile mode, chunk
            size and time grid (steps + 1 decreasing times from T; default uniform, a student's
            own) of `kacfast.sample` (Kac models only; the baselines run float32 eager on their
            own schedules).
    Returns:
        (n, *model.sample_shape) float32 in [-1, 1].
    """
    import kacfast
    from kacfast.baselines import EDMPrecond, ddim_sample, ddpm_sample, edm_sample

    solver = solver_for(method, solver)
    if labels is None and n is None:
        raise ValueError("give labels (conditional) or n (unconditional).")
    n = len(labels) if labels is not None else n
    if grid is not None and len(grid) != steps + 1:
        raise ValueError(f"a grid of {steps} steps holds {steps + 1} times, got {len(grid)}.")
    if method in ("kac", "distill"):
        return kacfast.sample(model, steps, labels=labels, batch_size=None if labels is not None else n,
                              guidance=guidance, solver=solver, seed=seed, process=process,
                              progress=progress, dtype=dtype, compile=compile, max_batch=max_batch,
                              grid=grid)
    if dtype is not None or compile or grid is not None:
        raise ValueError(f"dtype, compile and grid apply to Kac models; {method} models sample in "
                         "float32 eager mode on their own schedules.")
    device = next(model.parameters()).device
    prediction = facts_of(model).prediction or "epsilon"  # a DDPM network's output: eps or v
    latents = torch.randn((n,) + tuple(model.sample_shape),
                          generator=torch.Generator().manual_seed(seed)).to(device)
    if method == "edm":
        out = edm_sample(EDMPrecond(model), latents, labels, num_steps=steps, guidance=guidance,
                         progress=progress, solver=solver)
    elif solver == "ddpm":
        out = ddpm_sample(model, latents, labels, num_steps=steps, seed=seed, guidance=guidance,
                          progress=progress, prediction=prediction)
    else:
        out = ddim_sample(model, latents, labels, num_steps=steps, guidance=guidance, progress=progress,
                          prediction=prediction, **DDIM_SOLVERS[solver])
    return out.float().clamp(-1, 1)
