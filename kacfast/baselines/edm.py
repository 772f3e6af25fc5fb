"""EDM baseline (Karras et al. 2022): sigma grid, deterministic Heun sampler, preconditioning, loss.

Follows NVlabs/edm `generate.py` `edm_sampler` with S_churn = 0: the time grid is float64, the
state is carried in float64, each step is an Euler step from sigma_i to sigma_{i+1} followed by a
2nd-order (trapezoidal) correction on all but the last step, so `num_steps` steps cost
`edm_nfe(num_steps) = 2 num_steps - 1` network evaluations (18 steps = 35 NFE).

Network contract: a denoiser `net(x, sigma, class_labels) -> D(x; sigma)` with x (B, ...) and sigma a
(B,) tensor; `EDMPrecond` builds one from a raw kacfast-style network `model(x, t, y=None)`.
Classifier-free guidance: D = D_u + w (D_c - D_u) from one batched call on cat([x, x]) with labels
cat([y, null]), null = net.num_classes.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from kacfast.sampling import eval_mode, mixed_velocity_fn

__all__ = ["edm_sigmas", "edm_sample", "edm_nfe", "EDMPrecond", "edm_loss"]


# --------------------------------------------------------------------------------------------
# shared checks and the (guided) network call; ddpm.py uses these too
# --------------------------------------------------------------------------------------------

def _check_int(fn: str, name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{fn}: {name} must be an int {bound}, got {value!r}.")


def _check_positive(fn: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{fn}: {name} must be a finite number > 0, got {value!r}.")


def _check_latents(fn: str, latents) -> None:
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point() or latents.dim() < 1:
        raise ValueError(f"{fn}: latents must be a floating-point tensor (B, ...), got "
                         f"{type(latents).__name__ if not isinstance(latents, torch.Tensor) else latents.dtype}.")


def _check_labels(fn: str, model, latents: torch.Tensor, class_labels, guidance) -> torch.Tensor | None:
    """Validate (B,) integer labels and the guidance setting; returns the labels (or None)."""
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise ValueError(f"{fn}: guidance must be a finite number, got {guidance!r}.")
    num_classes = getattr(model, "num_classes", None)
    if class_labels is not None:
        if (not isinstance(class_labels, torch.Tensor) or class_labels.dtype.is_floating_point
                or class_labels.dtype.is_complex or class_labels.dtype == torch.bool):
            raise ValueError(f"{fn}: class_labels must be an integer tensor (B,), got "
                             f"{getattr(class_labels, 'dtype', type(class_labels).__name__)}.")
        if class_labels.shape != latents.shape[:1]:
            raise ValueError(f"{fn}: class_labels must have shape ({latents.shape[0]},) to match latents, "
                             f"got {tuple(class_labels.shape)}.")
        if num_classes is not None and class_labels.numel() and (
                class_labels.min() < 0 or class_labels.max() >= num_classes):
            raise ValueError(f"{fn}: class_labels must lie in [0, {num_classes}), got values in "
                             f"[{class_labels.min().item()}, {class_labels.max().item()}].")
        class_labels = class_labels.to(device=latents.device, dtype=torch.long)
    if guidance != 1:
        if class_labels is None:
            raise ValueError(f"{fn}: guidance != 1 needs class_labels.")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"{fn}: guidance != 1 needs a model with an int `num_classes` attribute "
                             f"(the null label), got {num_classes!r}.")
    return class_labels


def _time_dtype(latents: torch.Tensor) -> torch.dtype:
    """dtype of the time/noise-level tensor handed to the network: float64 for float64 latents, else
    float32 (a bf16/fp16 sigma or timestep would be too coarse)."""
    return torch.float64 if latents.dtype == torch.float64 else torch.float32


def _progress(iterable, progress: bool, desc: str):
    if not progress:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, unit="step")


# --------------------------------------------------------------------------------------------
# grid and sampler
# --------------------------------------------------------------------------------------------

def edm_nfe(num_steps: int, solver: str = "heun") -> int:
    """Network evaluations of `edm_sample` with `num_steps` steps: 2 num_steps - 1 for "heun" (Heun
    on all but the last step), num_steps for "euler". Guidance does not change it (one batched call
    per evaluation)."""
    _check_int("edm_nfe", "num_steps", num_steps, 1)
    _check_solver("edm_nfe", solver)
    return 2 * num_steps - 1 if solver == "heun" else num_steps


def _check_solver(fn: str, solver) -> None:
    if solver not in ("heun", "euler"):
        raise ValueError(f"{fn}: solver must be 'heun' or 'euler', got {solver!r}.")


def edm_sigmas(num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
               device=None) -> torch.Tensor:
    """EDM (Karras) noise levels, decreasing, with a final 0.

    sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for
    i = 0..N-1 (N = num_steps), then sigma_N = 0. For N = 1 the grid is [sigma_max, 0].

    Args:
        num_steps: N >= 1 (default 18).
        sigma_min, sigma_max: 0 < sigma_min < sigma_max (defaults 0.002, 80).
        rho: > 0 (default 7).
        device: device of the result.
    Returns:
        float64 tensor (N + 1,): sigma_0 = sigma_max, sigma_{N-1} = sigma_min, sigma_N = 0.
    """
    _check_int("edm_sigmas", "num_steps", num_steps, 1)
    _check_positive("edm_sigmas", "sigma_min", sigma_min)
    _check_positive("edm_sigmas", "sigma_max", sigma_max)
    _check_positive("edm_sigmas", "rho", rho)
    if not sigma_min < sigma_max:
        raise ValueError(f"edm_sigmas: sigma_min must be < sigma_max, got sigma_min={sigma_min!r}, "
                         f"sigma_max={sigma_max!r}.")
    ramp = torch.arange(num_steps, dtype=torch.float64, device=device) / max(num_steps - 1, 1)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


@torch.no_grad()
def edm_sample(net: Callable, latents: torch.Tensor, class_labels: torch.Tensor | None = None,
               num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
               guidance: float = 1.0, progress: bool = False,
               callback: Callable[[dict], None] | None = None, solver: str = "heun") -> torch.Tensor:
    """Deterministic EDM Heun sampler (NVlabs/edm `edm_sampler` with S_churn = 0).

    x_0 = latents * sigma_0; for i = 0..N-1: d = (x - D(x; sigma_i)) / sigma_i,
    x' = x + (sigma_{i+1} - sigma_i) d, and for i < N-1 the correction
    x' = x + (sigma_{i+1} - sigma_i) (d + d') / 2 with d' = (x' - D(x'; sigma_{i+1})) / sigma_{i+1}.

    Args:
        net: denoiser `net(x, sigma, class_labels) -> D(x; sigma)`, x (B, ...) in latents.dtype,
            sigma (B,) (float64 for float64 latents, else float32), class_labels (B,) long or None
            (e.g. an `EDMPrecond`). Put in eval mode during sampling if it is an nn.Module.
        latents: (B, ...) standard normal noise; its dtype is the dtype of the network input and of
            the result (the state itself is carried in float64).
        class_labels: (B,) integer labels in [0, net.num_classes) or None.
        num_steps: N >= 1 (default 18, i.e. 35 NFE; see edm_nfe).
        sigma_min, sigma_max, rho: the grid (see edm_sigmas).
        guidance: w in D = D_u + w (D_c - D_u); 1 (default) = a single conditional call. Needs
            class_labels and `net.num_classes` (the null label) otherwise.
        progress: tqdm bar over steps.
        callback: called before each step's update with {'x': state at sigma_i (float64),
            'i': step index, 'sigma': sigma_i (float), 'denoised': D(x; sigma_i) (float64)}.
        solver: "heun" (default) or "euler" (no correction: NFE = num_steps, for budgets of an
            even number of evaluations).
    Returns:
        (B, ...) samples in latents.dtype.
    """
    fn = "edm_sample"
    _check_latents(fn, latents)
    _check_solver(fn, solver)
    sigmas = edm_sigmas(num_steps, sigma_min, sigma_max, rho, device=latents.device)
    labels = _check_labels(fn, net, latents, class_labels, guidance)
    batch, in_dtype, t_dtype = latents.shape[0], latents.dtype, _time_dtype(latents)
    call = mixed_velocity_fn(net, labels, guidance, getattr(net, "num_classes", None))

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        s = torch.full((batch,), sigma, dtype=t_dtype, device=latents.device)
        return call(x.to(in_dtype), s).to(torch.float64)

    grid = sigmas.tolist()
    x_next = latents.to(torch.float64) * grid[0]
    with eval_mode(net):
        for i in _progress(range(num_steps), progress, "edm heun"):
            t_cur, t_next = grid[i], grid[i + 1]
            x_cur = x_next
            denoised = denoise(x_cur, t_cur)
            if callback is not None:
                callback({"x": x_cur, "i": i, "sigma": t_cur, "denoised": denoised})
            d_cur = (x_cur - denoised) / t_cur
            x_next = x_cur + (t_next - t_cur) * d_cur
            if solver == "heun" and i < num_steps - 1:
                d_prime = (x_next - denoise(x_next, t_next)) / t_next
                x_next = x_cur + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next.to(in_dtype)


# --------------------------------------------------------------------------------------------
# preconditioning and training loss
# --------------------------------------------------------------------------------------------

class EDMPrecond(nn.Module):
    """EDM preconditioning: a denoiser D(x; sigma) from a raw network F.

    D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, class_labels) with
    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = log(sigma) / 4 (sd = sigma_data).

    Args:
        model: raw network with the kacfast call convention `model(x, t, y=None)`, called here as
            model(c_in x, c_noise, class_labels) with c_noise a (B,) tensor.
        sigma_data: standard deviation of the data (> 0, default 0.5: images in [-1, 1]).
    Attributes:
        num_classes: model.num_classes if the model has one, else None (guidance's null label).
    """

    def __init__(self, model: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        _check_positive("EDMPrecond", "sigma_data", sigma_data)
        self.model = model
        self.sigma_data = float(sigma_data)
        self.num_classes = getattr(model, "num_classes", None)

    def forward(self, x: torch.Tensor, sigma, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, ...); sigma: > 0, a number or a (B,) / (B, 1, ..., 1) tensor; returns D(x; sigma) in x.dtype."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        if sigma.numel() != x.shape[0]:
            raise ValueError(f"EDMPrecond: sigma must be a number or hold one value per sample "
                             f"({x.shape[0]}), got {sigma.numel()} values.")
        s = sigma.reshape((-1,) + (1,) * (x.dim() - 1))
        sd = self.sigma_data
        c_skip = sd ** 2 / (s ** 2 + sd ** 2)
        c_out = s * sd / (s ** 2 + sd ** 2).sqrt()
        c_in = 1 / (s ** 2 + sd ** 2).sqrt()
        c_noise = sigma.log() / 4
        F_x = self.model(c_in * x, c_noise, class_labels)
        return (c_skip * x + c_out * F_x.to(x.dtype)).to(x.dtype)


def edm_loss(precond: Callable, x0: torch.Tensor, class_labels: torch.Tensor | None = None,
             P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """EDM training loss: E[lambda(sigma) |D(x0 + sigma n; sigma) - x0|^2] averaged over elements.

    ln sigma ~ N(P_mean, P_std^2) per sample, n ~ N(0, I), lambda = (sigma^2 + sd^2) / (sigma sd)^2
    (sd = sigma_data; keep it equal to the preconditioner's). With the exact denoiser and data of
    variance sd^2 per element, every term is a chi^2_1 variable: the loss has mean 1.

    Args:
        precond: denoiser `precond(x, sigma, class_labels)` (e.g. EDMPrecond), sigma (B,).
        x0: (B, ...) clean data.
        class_labels: (B,) labels or None, passed through unchanged (label dropout for guidance
            training is the caller's job: replace dropped labels by num_classes).
        P_mean, P_std: log-normal noise-level distribution (defaults -1.2, 1.2).
        sigma_data: > 0 (default 0.5).
        generator: torch.Generator on x0's device for sigma and n (default: global RNG).
    Returns:
        scalar loss (mean over batch and elements), differentiable w.r.t. the network's parameters.
    """
    fn = "edm_loss"
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.dim() < 1:
        raise ValueError(f"{fn}: x0 must be a floating-point tensor (B, ...).")
    _check_positive(fn, "P_std", P_std)
    _check_positive(fn, "sigma_data", sigma_data)
    if isinstance(P_mean, bool) or not isinstance(P_mean, (int, float)) or not math.isfinite(P_mean):
        raise ValueError(f"{fn}: P_mean must be a finite number, got {P_mean!r}.")
    if class_labels is not None and (not isinstance(class_labels, torch.Tensor)
                                     or class_labels.shape != x0.shape[:1]):
        raise ValueError(f"{fn}: class_labels must be a tensor of shape ({x0.shape[0]},).")
    view = (x0.shape[0],) + (1,) * (x0.dim() - 1)
    rnd = torch.randn(view, generator=generator, device=x0.device, dtype=x0.dtype)
    sigma = (rnd * P_std + P_mean).exp()
    weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) * sigma
    denoised = precond(x0 + noise, sigma.reshape(-1), class_labels)
    return (weight * (denoised - x0) ** 2).mean()
