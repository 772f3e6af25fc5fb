"""DDPM baseline (Ho et al. 2020): linear-beta schedule, ancestral and DDIM samplers, eps- or
v-prediction loss.

Forward process: x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, t = 0..999, ab_t = prod_{s<=t} (1 - beta_s),
betas linear from 1e-4 to 0.02 (DDPMSchedule; float64). The data sits at "t = -1" (ab = 1).

Network contract: `eps_model(x, t, y) -> eps` with x (B, ...), t a (B,) float tensor holding the raw
integer timestep index in [0, 999] (not rescaled to [0, 1]), y (B,) long labels or None.
Classifier-free guidance: eps = eps_u + w (eps_c - eps_u) from one batched call on cat([x, x]) with
labels cat([y, null]), null = eps_model.num_classes.

Step-count choices (both named after diffusers' `timestep_spacing`):
- `ddpm_sample` uses "linspace": timesteps round(linspace(0, 999, N)), the improved-DDPM respacing
  (`space_timesteps(1000, [N])`), with the chain's betas recomputed on the kept steps,
  beta'_k = 1 - ab_{t_k} / ab_{t_{k-1}}. It equals diffusers `DDPMScheduler(beta_schedule="linear",
  variance_type="fixed_small", clip_sample=False, timestep_spacing="linspace")`.
- `ddim_sample` uses "leading": timesteps k * (1000 // N), k = N-1..0, as in the DDIM paper
  ("uniform" skip, the setting behind its reported FIDs). It equals diffusers
  `DDIMScheduler(beta_schedule="linear", clip_sample=False, set_alpha_to_one=True, steps_offset=0,
  timestep_spacing="leading")` with eta = 0, for every N. Caveat of "leading": for N that does not
  divide 1000 the first timestep is (N-1)(1000 // N) < 999 (e.g. 599 for N = 600), so the latents
  are treated as noisier-than-N(0, I)-at-that-step; pass timestep_spacing="trailing" or "linspace"
  there (diffusers' DDIMScheduler agrees with "trailing" only when N divides 1000, and never with
  "linspace", whose previous-step rule differs).
Neither sampler clips the predicted x0 by default (data-range agnostic); `clip_sample=True` clamps it
to [-1, 1] before the update, as Ho et al.'s ancestral sampler and diffusers' schedulers with
`clip_sample=True` do (range 1, the eps prediction itself unclipped): it bounds the x0 error of an
eps network that is inaccurate near t = 999, where x0_hat amplifies the eps error by
sqrt((1 - ab_t) / ab_t) (157 at t = 999).

What the network predicts (`prediction`, diffusers' `prediction_type` names): "epsilon" (default,
Ho et al.) or "v_prediction" (Salimans & Ho 2022), v = sqrt(ab_t) eps - sqrt(1 - ab_t) x0, whose x0
estimate x0_hat = sqrt(ab_t) x_t - sqrt(1 - ab_t) v stays bounded at every t: the fix for the
amplification above. The samplers turn a v output into eps = sqrt(1 - ab_t) x_t + sqrt(ab_t) v
after guidance mixing (the map is affine in the output, so mixing v or eps is the same).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from kacfast.baselines.edm import (_check_int, _check_labels, _check_latents, _progress,
                                   _time_dtype)
from kacfast.sampling import eval_mode, mixed_velocity_fn

__all__ = ["DDPMSchedule", "ddpm_sample", "ddim_sample", "ddpm_loss", "TIMESTEP_SPACINGS", "PREDICTIONS"]

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
#: what a DDPM network predicts (diffusers' prediction_type values)
PREDICTIONS = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class DDPMSchedule:
    """Discrete DDPM noise schedule with linear betas.

    Args:
        num_train_timesteps: T >= 2 (default 1000); timesteps are 0..T-1.
        beta_start, beta_end: 0 < beta_start <= beta_end < 1 (defaults 1e-4, 0.02).
    Attributes:
        betas: float64 (T,) = linspace(beta_start, beta_end, T).
        alphas_cumprod: float64 (T,), ab_t = prod_{s<=t} (1 - beta_s) (ab_999 = 4.04e-5 by default).
    """

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    betas: torch.Tensor = field(init=False, repr=False, compare=False)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        _check_int("DDPMSchedule", "num_train_timesteps", self.num_train_timesteps, 2)
        for name in ("beta_start", "beta_end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"DDPMSchedule: {name} must be a number in (0, 1), got {value!r}.")
        if not self.beta_start <= self.beta_end:
            raise ValueError(f"DDPMSchedule: beta_start must be <= beta_end, got {self.beta_start!r} > "
                             f"{self.beta_end!r}.")
        betas = torch.linspace(self.beta_start, self.beta_end, self.num_train_timesteps, dtype=torch.float64)
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1 - betas, dim=0))

    def __len__(self) -> int:
        return self.num_train_timesteps

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("betas", "alphas_cumprod")}

    @classmethod
    def from_dict(cls, d: dict) -> "DDPMSchedule":
        return cls(**d)

    def alpha_bar(self, t: int) -> float:
        """ab_t as a Python float (float64); t = -1 (the data) gives 1.0."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def timesteps(self, num_steps: int, spacing: str = "linspace") -> torch.Tensor:
        """Sampling timesteps, decreasing: int64 (num_steps,), values in [0, T-1], as diffusers'
        `set_timesteps` with `timestep_spacing=spacing` (steps_offset = 0):
        "linspace": round(linspace(0, T-1, N)) (= improved-DDPM respacing; includes T-1 and 0);
        "leading": k (T // N) (includes 0); "trailing": round(T - k T / N) - 1 (includes T-1)."""
        T = self.num_train_timesteps
        _check_int("DDPMSchedule.timesteps", "num_steps", num_steps, 1, T)
        if spacing == "linspace":
            ts = np.linspace(0, T - 1, num_steps).round()[::-1]
        elif spacing == "leading":
            ts = (np.arange(num_steps) * (T // num_steps))[::-1]
        elif spacing == "trailing":
            ts = np.round(T - np.arange(num_steps) * (T / num_steps)) - 1
        else:
            raise ValueError(f"DDPMSchedule.timesteps: spacing must be one of {TIMESTEP_SPACINGS}, "
                             f"got {spacing!r}.")
        return torch.from_numpy(ts.astype(np.int64).copy())

    def respaced_betas(self, timesteps) -> torch.Tensor:
        """float64 betas of the chain restricted to `timesteps` (any order), in increasing time order:
        beta'_k = 1 - ab_{t_k} / ab_{t_{k-1}} with ab_{t_{-1}} = 1 (improved-DDPM respacing)."""
        ts = sorted(int(t) for t in torch.as_tensor(timesteps).reshape(-1).tolist())
        prev = [-1] + ts[:-1]
        return torch.tensor([1 - self.alpha_bar(t) / self.alpha_bar(p) for t, p in zip(ts, prev)],
                            dtype=torch.float64)

    def posterior(self, t: int, t_prev: int) -> tuple[float, float, float]:
        """q(x_{t_prev} | x_t, x0) = N(c_x0 x0 + c_xt x_t, var) for the (respaced) step t -> t_prev < t
        (t_prev = -1: the data). Returns (c_x0, c_xt, var) as float64 Python floats; var is the
        "fixed small" beta-tilde = (1 - ab_prev) / (1 - ab_t) beta'."""
        if not -1 <= t_prev < t < self.num_train_timesteps:
            raise ValueError(f"DDPMSchedule.posterior: need -1 <= t_prev < t < {self.num_train_timesteps}, "
                             f"got t={t!r}, t_prev={t_prev!r}.")
        ab_t, ab_prev = self.alpha_bar(t), self.alpha_bar(t_prev)
        alpha = ab_t / ab_prev
        beta = 1 - alpha
        c_x0 = math.sqrt(ab_prev) * beta / (1 - ab_t)
        c_xt = math.sqrt(alpha) * (1 - ab_prev) / (1 - ab_t)
        return c_x0, c_xt, (1 - ab_prev) / (1 - ab_t) * beta

    def _ab(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        ab = self.alphas_cumprod.to(like.device)[t.to(like.device).long()]
        return ab.reshape((-1,) + (1,) * (like.dim() - 1))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise; x0, noise (B, ...), t (B,) integer timesteps.
        Computed in float64, returned in x0.dtype."""
        ab = self._ab(t, x0)
        return (ab.sqrt() * x0.double() + (1 - ab).sqrt() * noise.double()).to(x0.dtype)

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = sqrt(ab_t) noise - sqrt(1 - ab_t) x0 (the v-prediction target); shapes as add_noise."""
        ab = self._ab(t, x0)
        return (ab.sqrt() * noise.double() - (1 - ab).sqrt() * x0.double()).to(x0.dtype)

    def predict_eps(self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor,
                    prediction: str = "epsilon") -> torch.Tensor:
        """The eps a network's `output` stands for: itself ("epsilon"), or sqrt(1 - ab_t) x_t +
        sqrt(ab_t) v ("v_prediction"); x_t, output (B, ...), t (B,); returns output.dtype."""
        if prediction == "epsilon":
            return output
        ab = self._ab(t, x_t)
        return ((1 - ab).sqrt() * x_t.double() + ab.sqrt() * output.double()).to(output.dtype)

    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t); x_t, eps (B, ...), t (B,); returns x_t.dtype."""
        ab = self._ab(t, x_t)
        return ((x_t.double() - (1 - ab).sqrt() * eps.double()) / ab.sqrt()).to(x_t.dtype)


def _check_spacing(fn: str, spacing) -> None:
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"{fn}: timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}.")


def _x0_estimate(x: torch.Tensor, eps: torch.Tensor, ab_t: float, clip_sample: bool) -> torch.Tensor:
    """x0_hat = (x - sqrt(1 - ab_t) eps) / sqrt(ab_t), clamped to [-1, 1] if clip_sample."""
    x0 = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
    return x0.clamp(-1, 1) if clip_sample else x0


def _check_prediction(fn: str, prediction) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"{fn}: prediction must be one of {PREDICTIONS}, got {prediction!r}.")


def _setup(fn, eps_model, latents, class_labels, num_steps, guidance, schedule, spacing, prediction):
    """Validate; return (schedule, [(t, t_prev), ...], eps(x_float64, t) -> float64 eps)."""
    _check_latents(fn, latents)
    _check_prediction(fn, prediction)
    schedule = DDPMSchedule() if schedule is None else schedule
    if not isinstance(schedule, DDPMSchedule):
        raise ValueError(f"{fn}: schedule must be a DDPMSchedule or None, got {type(schedule).__name__}.")
    _check_int(fn, "num_steps", num_steps, 1, schedule.num_train_timesteps)
    _check_spacing(fn, spacing)
    labels = _check_labels(fn, eps_model, latents, class_labels, guidance)
    ts = schedule.timesteps(num_steps, spacing).tolist()
    pairs = list(zip(ts, ts[1:] + [-1]))
    batch, in_dtype, t_dtype = latents.shape[0], latents.dtype, _time_dtype(latents)
    call = mixed_velocity_fn(eps_model, labels, guidance, getattr(eps_model, "num_classes", None))

    def eps(x: torch.Tensor, t: int) -> torch.Tensor:
        tt = torch.full((batch,), float(t), dtype=t_dtype, device=latents.device)
        return schedule.predict_eps(x, call(x.to(in_dtype), tt).to(torch.float64), tt, prediction)

    return schedule, pairs, eps


@torch.no_grad()
def ddpm_sample(eps_model: Callable, latents: torch.Tensor, class_labels: torch.Tensor | None = None,
                num_steps: int = 1000, seed: int | None = None, guidance: float = 1.0,
                progress: bool = False, *, schedule: DDPMSchedule | None = None,
                timestep_spacing: str = "linspace", clip_sample: bool = False,
                prediction: str = "epsilon") -> torch.Tensor:
    """Ancestral DDPM sampling with the "fixed small" posterior variance (beta-tilde).

    Per step t -> t_prev (next kept timestep, -1 after the last): x0_hat = (x - sqrt(1-ab_t) eps) /
    sqrt(ab_t), x = c_x0 x0_hat + c_xt x (+ sqrt(var) z unless t_prev = -1), with the coefficients of
    `DDPMSchedule.posterior`. num_steps < 1000 respaces (see the module docstring). NFE = num_steps.

    Args:
        eps_model: `eps_model(x, t, y) -> eps` (or v, see `prediction`); x (B, ...) in
            latents.dtype, t (B,) float tensor of the raw integer timestep in [0, 999] (float64 for
            float64 latents, else float32).
        latents: (B, ...) standard normal x_{999}; its dtype is the network input's and the result's
            (the state is carried in float64).
        class_labels: (B,) integer labels in [0, eps_model.num_classes) or None.
        num_steps: 1..1000 (default 1000, the full chain).
        seed: seed of a torch.Generator on latents' device drawing the per-step noise z in
            latents.dtype, one latents-shaped draw per step except the last (so the noise is that
            of diffusers' DDPMScheduler.step with the same generator); None = torch's global RNG.
        guidance: w in eps = eps_u + w (eps_c - eps_u); 1 (default) = plain conditional call.
        progress: tqdm bar over steps.
        schedule: the DDPMSchedule (default DDPMSchedule(): linear 1e-4..0.02, 1000 steps).
        timestep_spacing: "linspace" (default), "leading" or "trailing" (DDPMSchedule.timesteps).
        clip_sample: clamp x0_hat to [-1, 1] (default False; see the module docstring).
        prediction: what eps_model returns, "epsilon" (default) or "v_prediction" (PREDICTIONS).
    Returns:
        (B, ...) samples x_{-1} in latents.dtype.
    """
    fn = "ddpm_sample"
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"{fn}: seed must be an int or None, got {seed!r}.")
    schedule, pairs, eps = _setup(fn, eps_model, latents, class_labels, num_steps, guidance, schedule,
                                  timestep_spacing, prediction)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=latents.device)
        generator.manual_seed(seed)
    x = latents.to(torch.float64)
    with eval_mode(eps_model):
        for t, t_prev in _progress(pairs, progress, "ddpm"):
            ab_t = schedule.alpha_bar(t)
            x0 = _x0_estimate(x, eps(x, t), ab_t, clip_sample)
            c_x0, c_xt, var = schedule.posterior(t, t_prev)
            x = c_x0 * x0 + c_xt * x
            if t_prev >= 0:
                z = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
                x = x + math.sqrt(var) * z.to(torch.float64)
    return x.to(latents.dtype)


@torch.no_grad()
def ddim_sample(eps_model: Callable, latents: torch.Tensor, class_labels: torch.Tensor | None = None,
                num_steps: int = 50, guidance: float = 1.0, progress: bool = False, *,
                schedule: DDPMSchedule | None = None, timestep_spacing: str = "leading",
                clip_sample: bool = False, callback: Callable[[dict], None] | None = None,
                prediction: str = "epsilon") -> torch.Tensor:
    """Deterministic DDIM sampling (eta = 0).

    Per step t -> t_prev (next kept timestep; -1 = the data, ab = 1, after the last):
    x0_hat = (x - sqrt(1-ab_t) eps) / sqrt(ab_t), x = sqrt(ab_prev) x0_hat + sqrt(1-ab_prev) eps.
    Default timesteps: "leading", k (1000 // N) for k = N-1..0 (DDIM paper; equal to diffusers'
    DDIMScheduler with timestep_spacing="leading", see the module docstring). NFE = num_steps.

    Args:
        eps_model, latents, class_labels, guidance, progress, schedule, prediction: as in ddpm_sample.
        num_steps: 1..1000 (default 50).
        timestep_spacing: "leading" (default), "trailing" or "linspace" (DDPMSchedule.timesteps).
        clip_sample: clamp x0_hat to [-1, 1] (default False; see the module docstring).
        callback: called before each step's update with {'x': state at timestep t (float64),
            'i': step index, 't': t (int), 'eps': the (guided) eps prediction (float64; converted
            from v for a v-prediction network)}.
    Returns:
        (B, ...) samples in latents.dtype.
    """
    schedule, pairs, eps = _setup("ddim_sample", eps_model, latents, class_labels, num_steps, guidance,
                                  schedule, timestep_spacing, prediction)
    x = latents.to(torch.float64)
    with eval_mode(eps_model):
        for i, (t, t_prev) in enumerate(_progress(pairs, progress, "ddim")):
            ab_t, ab_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
            e = eps(x, t)
            if callback is not None:
                callback({"x": x, "i": i, "t": t, "eps": e})
            x0 = _x0_estimate(x, e, ab_t, clip_sample)
            x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * e
    return x.to(latents.dtype)


def ddpm_loss(eps_model: Callable, x0: torch.Tensor, class_labels: torch.Tensor | None = None,
              generator: torch.Generator | None = None, *,
              schedule: DDPMSchedule | None = None, prediction: str = "epsilon") -> torch.Tensor:
    """DDPM "simple" loss: mean |eps_model(x_t, t, y) - target|^2 with t ~ U{0..T-1} per sample,
    eps ~ N(0, I), target eps (prediction="epsilon", default) or v = sqrt(ab_t) eps - sqrt(1 - ab_t) x0
    ("v_prediction"; its unweighted mean, the usual v loss).

    Args:
        eps_model: as in ddpm_sample (t is the raw timestep as a float tensor).
        x0: (B, ...) clean data.
        class_labels: (B,) labels or None, passed through (label dropout is the caller's job).
        generator: torch.Generator on x0's device for t and eps (default: global RNG).
        schedule: default DDPMSchedule().
        prediction: "epsilon" (default) or "v_prediction" (PREDICTIONS).
    Returns:
        scalar loss (mean over batch and elements), differentiable w.r.t. the network's parameters.
    """
    fn = "ddpm_loss"
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.dim() < 1:
        raise ValueError(f"{fn}: x0 must be a floating-point tensor (B, ...).")
    if class_labels is not None and (not isinstance(class_labels, torch.Tensor)
                                     or class_labels.shape != x0.shape[:1]):
        raise ValueError(f"{fn}: class_labels must be a tensor of shape ({x0.shape[0]},).")
    _check_prediction(fn, prediction)
    schedule = DDPMSchedule() if schedule is None else schedule
    t = torch.randint(0, schedule.num_train_timesteps, (x0.shape[0],), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = schedule.add_noise(x0, noise, t)
    pred = eps_model(x_t, t.to(_time_dtype(x0)), class_labels)
    target = noise if prediction == "epsilon" else schedule.velocity(x0, noise, t)
    return ((pred - target) ** 2).mean()
