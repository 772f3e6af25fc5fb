"""Training objectives sharing one loop: Kac flow matching (the teacher), EDM and DDPM baselines.

Each objective maps (network, x0, labels, generator, seed) to a scalar loss; `generator` and `seed`
are fresh for every (run seed, rank, step), so a resumed run redraws exactly the same randomness.
`describe()` is stored in checkpoints; `preview_sampler` = (steps, solver) draws the training loop's
preview grids (cheap enough to run every sample_every steps).
"""
from __future__ import annotations

from typing import Protocol

import torch

from kacfast.baselines import PREDICTIONS, EDMPrecond, ddpm_loss, edm_loss
from kacfast.models.precondition import KacPreconditioner
from kacfast.process import KacProcess


class Objective(Protocol):
    """What the training loop needs from an objective (teacher, baseline or distillation stage).

    method: "kac", "edm", "ddpm" or "distill": how generate samples the trained model.
    preview_sampler: (steps, solver) of the preview grids the loop draws.
    loss(net, x0, y, generator, seed): scalar loss of one (local) batch; x0 (B, ...) data, y (B,)
        labels or None; generator and seed are fresh per (run seed, rank, step), so a resumed run
        redraws the same randomness.
    describe(): JSON-able identity stored in checkpoints (a run resumes only with an equal one).
    An objective that trains parts of its own (a discriminator and its optimizer) also has
    `checkpointed() -> dict[str, Module | Optimizer]`: the loop saves and restores them with the
    run, so exact resume holds.
    """

    method: str
    preview_sampler: tuple[int, str]

    def loss(self, net, x0: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator,
             seed: int) -> torch.Tensor: ...

    def describe(self) -> dict: ...


def _uniform_times(n: int, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device)


def _logit_normal_times(n: int, generator: torch.Generator, device) -> torch.Tensor:
    # sigmoid of N(0, 1) (Esser et al. 2024): more weight in the middle of [0, T], less at the ends
    return torch.sigmoid(torch.randn(n, generator=generator, device=device))


#: How the Kac teacher draws training times, as fractions of T in [0, 1): name -> (n, generator,
#: device) -> (n,) float32.
TIME_DISTRIBUTIONS = {"uniform": _uniform_times, "logit-normal": _logit_normal_times}

#: How the Kac teacher weighs its squared error over t: "none" (the paper's plain mean) or
#: "target" (divided by E[u^2 | t], the target's mean square at t: every t counts at unit target
#: scale instead of the small t, where |u| is up to c, dominating).
LOSS_WEIGHTINGS = ("none", "target")


class KacObjective:
    """loss = mean((v_theta(x_t, t, y) - u)^2), (x_t, u) from the fused noise_target op.

    t = T * s with s from `time_distribution` (a TIME_DISTRIBUTIONS name; default "uniform":
    t ~ U[0, T], the paper's). `loss_weighting` (LOSS_WEIGHTINGS; default "none") "target" divides
    each sample's squared error by E[u^2 | t] (kacfast.formulas.kac_preconditioning's c_out^2),
    which needs `rms_data`, the data's sqrt(E[x0^2]) per coordinate. The Kac noise comes from the
    op's counter-based stream keyed by the step's seed.
    """

    method = "kac"
    preview_sampler = (50, "euler")

    def __init__(self, process: KacProcess | None = None, time_distribution: str = "uniform",
                 loss_weighting: str = "none", rms_data: float | None = None):
        if time_distribution not in TIME_DISTRIBUTIONS:
            raise ValueError(f"time_distribution must be one of {tuple(TIME_DISTRIBUTIONS)}, got "
                             f"{time_distribution!r}.")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {loss_weighting!r}.")
        if loss_weighting != "none" and rms_data is None:
            raise ValueError(f"loss_weighting={loss_weighting!r} needs rms_data (the data's "
                             "sqrt(E[x0^2]) per coordinate).")
        self.process = process or KacProcess()
        self.time_distribution = time_distribution
        self.loss_weighting, self.rms_data = loss_weighting, rms_data
        self._scales = None
        if loss_weighting == "target":
            p = self.process
            self._scales = KacPreconditioner(p.a, p.c, p.T, p.clock, rms_data)

    def loss(self, net, x0, y, generator: torch.Generator, seed: int) -> torch.Tensor:
        t = TIME_DISTRIBUTIONS[self.time_distribution](x0.shape[0], generator, x0.device) * self.process.T
        x_t, u = self.process.noise_target(x0, t, seed=seed)
        error = (net(x_t, t, y).float() - u.float()).square()
        if self._scales is None:
            return error.mean()
        _, c_out = self._scales.to(x0.device)(t)
        return (error.flatten(1).mean(1) / c_out.square()).mean()

    def describe(self) -> dict:
        identity = {"method": self.method, "process": self.process.to_dict()}
        if self.time_distribution != "uniform":  # runs from before the setting keep resuming
            identity["time_distribution"] = self.time_distribution
        if self.loss_weighting != "none":
            identity.update(loss_weighting=self.loss_weighting, rms_data=self.rms_data)
        return identity


class EDMObjective:
    """EDM (Karras et al. 2022) denoising loss through EDMPrecond; the same network is the raw F."""

    method = "edm"
    preview_sampler = (18, "heun")

    def loss(self, net, x0, y, generator, seed):
        return edm_loss(EDMPrecond(net), x0, y, generator=generator)

    def describe(self) -> dict:
        return {"method": self.method}


class DDPMObjective:
    """DDPM loss on the linear 1000-step schedule; the network predicts eps (`prediction`
    "epsilon", default) or v ("v_prediction"; see kacfast.baselines.ddpm)."""

    method = "ddpm"
    preview_sampler = (50, "ddim")

    def __init__(self, prediction: str = "epsilon"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}.")
        self.prediction = prediction

    def loss(self, net, x0, y, generator, seed):
        return ddpm_loss(net, x0, y, generator=generator, prediction=self.prediction)

    def describe(self) -> dict:
        if self.prediction == "epsilon":  # runs from before the setting keep resuming
            return {"method": self.method}
        return {"method": self.method, "prediction": self.prediction}
