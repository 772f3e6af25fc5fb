"""Kac flows for Hugging Face diffusers users: a scheduler, a pipeline and UNet2DModel backbones.

Needs ``pip install kacfast[diffusers]``. The names map as follows:

================================  ==============================================================
diffusers                         kacfast
================================  ==============================================================
``KacFlowScheduler``              ``KacProcess`` + the fused Euler / AB-2 step (``sampling``)
``scheduler.sample_prior``        ``KacProcess.prior`` (``init_noise_sigma * randn`` elsewhere)
``scheduler.step``                ``ops.guided_step`` (guidance mixed into the update)
``scheduler.training_pair``       ``KacProcess.noise_target`` (x_t and the flow target)
``KacPipeline(...)``              ``kacfast.sample(model, steps, labels=..., guidance=...)``
``KacVelocityModel``              a kacfast network with its facts (process, student grid)
``UNet2DModel`` (backbone)        ``DiffusersUNet``: ``model(x, t, y)``, preset
                                  ``diffusers-unet-tiny`` or ``--model diffusers:CONFIG.json``
timestep                          Kac time t in [0, T] (float, not an integer index)
``guidance_scale``                ``guidance`` (w in v_u + w (v_c - v_u))
``clip_sample``                   ``clamp`` (clip to [-1, 1] after the last step)
================================  ==============================================================

A step loop written the diffusers way gives the same samples as ``kacfast.sample`` for the same
seed, bit for bit in float32: both run ``sampling.one_call_step`` on the same grid.
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn

try:
    from diffusers import DiffusionPipeline, UNet2DModel
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.modeling_utils import ModelMixin
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
    from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("kacfast.integrations.diffusers needs diffusers: "
                      "pip install 'kacfast[diffusers]'.") from err

from kacfast._warnings import warn
from kacfast.facts import attach_facts, facts_of
from kacfast.models import is_flow_map, model_from_config
from kacfast.models.unet import check_inputs
from kacfast.process import KacProcess
from kacfast.sampling import (draw_seed, eval_mode, guided_velocity_fn, one_call_solvers,
                              one_call_step, plan_sampling, quadratic_grid, uniform_grid)

__all__ = ["DiffusersUNet", "unet_from_config_file", "KacFlowScheduler", "KacVelocityModel",
           "KacPipeline", "pipeline_from", "export_pipeline", "TIMESTEP_SPACINGS"]

#: set_timesteps(n) grids: "linspace" (uniform in t, kacfast's default) or "quadratic".
TIMESTEP_SPACINGS = {"linspace": uniform_grid, "quadratic": quadratic_grid}

# UNet2DModel arguments that follow from (in_channels, image_size, num_classes)
_DERIVED = ("sample_size", "in_channels", "out_channels", "num_class_embeds", "class_embed_type")


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------------------------
# backbone: a UNet2DModel under kacfast's network contract
# ----------------------------------------------------------------------------------------------
class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` as a kacfast velocity network: ``model(x, t, y=None) -> v``.

    Trains and samples wherever kacfast's own UNet does (``kacfast.train``, ``kacfast.distill``,
    the CLI, checkpoints, exact resume, DDP): kind ``"diffusers"``, rebuilt from ``config``.

    Args:
        in_channels: image channels C; the output has as many (default 1).
        image_size: square image side (default 28).
        num_classes: classes, label rows 0..num_classes-1 plus the null label num_classes
            (``num_class_embeds = num_classes + 1``); None: unconditional. Default 10.
        time_scale: the UNet's timestep is ``time_scale * t`` for Kac time t in [0, T]
            (default 1000: t in [0, 1] spans the frequencies of DDPM's integer timesteps).
        **unet: any other ``UNet2DModel`` argument (block_out_channels, down_block_types, ...).
    """

    kind = "diffusers"

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int | None = 10,
                 time_scale: float = 1000.0, **unet):
        super().__init__()
        derived = sorted(set(unet) & set(_DERIVED))
        if derived:
            raise ValueError(f"DiffusersUNet: {derived} follow from in_channels, image_size and "
                             "num_classes; pass a UNet2DModel config through "
                             "DiffusersUNet.from_unet_config instead.")
        for name, value in (("in_channels", in_channels), ("image_size", image_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DiffusersUNet: {name} must be an int >= 1, got {value!r}.")
        if num_classes is not None and (isinstance(num_classes, bool)
                                        or not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"DiffusersUNet: num_classes must be an int >= 1 or None, got "
                             f"{num_classes!r}.")
        if not (isinstance(time_scale, (int, float)) and time_scale > 0):
            raise ValueError(f"DiffusersUNet: time_scale must be a number > 0, got {time_scale!r}.")
        try:
            self.unet = UNet2DModel(sample_size=image_size, in_channels=in_channels,
                                    out_channels=in_channels,
                                    num_class_embeds=None if num_classes is None else num_classes + 1,
                                    **unet)
        except TypeError as err:
            raise ValueError(f"DiffusersUNet: not a UNet2DModel argument ({err}).") from None
        self.num_classes = num_classes
        self.sample_shape = (in_channels, image_size, image_size)
        self.time_scale = float(time_scale)
        self.config = _jsonable(dict(in_channels=in_channels, image_size=image_size,
                                     num_classes=num_classes, time_scale=self.time_scale, **unet))

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W), t (B,) Kac times in [0, T] (or a number), y (B,) labels or None (the
        null label) -> velocity (B, C, H, W)."""
        t, y = check_inputs(x, t, y, feature_shape=self.sample_shape, num_classes=self.num_classes)
        return self.unet(x, t * self.time_scale, class_labels=y).sample

    @classmethod
    def from_unet_config(cls, config: dict, time_scale: float = 1000.0) -> "DiffusersUNet":
        """A fresh network from a ``UNet2DModel`` config (``unet.config`` or a config.json as
        ``save_pretrained`` writes it): ``num_class_embeds`` is classes + 1 (null label)."""
        unet = {k: v for k, v in dict(config).items() if not k.startswith("_")}
        in_channels, out_channels = unet.pop("in_channels", 3), unet.pop("out_channels", 3)
        if out_channels != in_channels:
            raise ValueError(f"UNet2DModel config: out_channels ({out_channels}) must equal "
                             f"in_channels ({in_channels}): a velocity has the sample's shape.")
        embed_type = unet.pop("class_embed_type", None)
        if embed_type is not None:
            raise ValueError(f"UNet2DModel config: class_embed_type must be null (labels enter "
                             f"through num_class_embeds), got {embed_type!r}.")
        size = unet.pop("sample_size", None)
        if isinstance(size, (list, tuple)):
            if len(size) != 2 or size[0] != size[1]:
                raise ValueError(f"UNet2DModel config: sample_size must be square, got {size}.")
            size = size[0]
        if size is None:
            raise ValueError("UNet2DModel config: sample_size is missing (the image side).")
        embeds = unet.pop("num_class_embeds", None)
        if embeds is not None and (not isinstance(embeds, int) or embeds < 2):
            raise ValueError(f"UNet2DModel config: num_class_embeds must be classes + 1 >= 2 (the "
                             f"last row is the null label), got {embeds!r}.")
        return cls(in_channels=in_channels, image_size=size,
                   num_classes=None if embeds is None else embeds - 1, time_scale=time_scale,
                   **unet)

    @classmethod
    def from_unet(cls, unet: UNet2DModel, time_scale: float = 1000.0) -> "DiffusersUNet":
        """Wrap an existing ``UNet2DModel`` (its weights, not a copy)."""
        with torch.device("meta"):
            adapter = cls.from_unet_config(unet.config, time_scale)
        adapter.unet = unet
        return adapter


def unet_from_config_file(path: str, *, in_channels: int, image_size: int,
                          num_classes: int | None, time_scale: float = 1000.0) -> DiffusersUNet:
    """``--model diffusers:PATH``: a fresh DiffusersUNet from a UNet2DModel config.json (or a
    folder holding one), checked against the data it will train on (one-sentence errors naming
    the field)."""
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    try:
        with open(file) as f:
            config = json.load(f)
    except OSError:
        raise ValueError(f"--model diffusers:{path}: no UNet2DModel config file there.") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not JSON ({err}).") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file} must hold a JSON object (a UNet2DModel config).")
    name = os.path.basename(file)
    channels = config.get("in_channels", 3)
    if channels != in_channels:
        raise ValueError(f"{name}: in_channels is {channels} but the data has {in_channels} "
                         "channel(s).")
    size = config.get("sample_size")
    if (size if not isinstance(size, (list, tuple)) else list(size)) not in (image_size,
                                                                             [image_size] * 2):
        raise ValueError(f"{name}: sample_size is {size} but the data is {image_size}x{image_size}.")
    embeds = config.get("num_class_embeds")
    if num_classes is not None and embeds is None:
        raise ValueError(f"{name}: num_class_embeds is missing: a class-conditional run on "
                         f"{num_classes} classes needs num_class_embeds = {num_classes + 1} (the "
                         "last row is the null label of guidance); add it, or train with "
                         "--unconditional.")
    if num_classes is not None and embeds != num_classes + 1:
        raise ValueError(f"{name}: num_class_embeds is {embeds} but the data has {num_classes} "
                         f"classes: set it to {num_classes + 1} (the last row is the null label).")
    if num_classes is None and embeds is not None:
        raise ValueError(f"{name}: num_class_embeds is {embeds} but the run is unconditional: "
                         "remove it, or drop --unconditional.")
    return DiffusersUNet.from_unet_config(config, time_scale)


# ----------------------------------------------------------------------------------------------
# scheduler
# ----------------------------------------------------------------------------------------------
class KacFlowScheduler(SchedulerMixin, ConfigMixin):
    """The diffusers scheduler of a Kac flow: timesteps are Kac times from T down to 0.

    Config (``save_pretrained`` / ``from_pretrained`` write and read ``scheduler_config.json``):
        a, c, T, clock, eps: the Kac process (see ``kacfast.KacProcess``; defaults 9, 3, 1, "t").
        solver: "euler" or "ab2" (one network call per step; Heun and midpoint need two, which
            the one-call-per-step loop of a pipeline cannot give: use ``kacfast.sample``).
        timestep_spacing: "linspace" (uniform, default) or "quadratic" (denser near t = 0).
        clip_sample: clip to [-1, 1] after the last step (default True).

    ``step(model_output, timestep, sample, guidance_scale=w)`` takes the velocity (B, ...) at
    ``timestep``, or with w != 1 the pair (2B, ...) = cat([v_cond, v_uncond]) of one batched call,
    and mixes the guidance into the update in one fused op. It reads no tensor value on the host:
    step sizes come from the grid that ``set_timesteps`` keeps as Python floats.
    """

    config_name = "scheduler_config.json"
    order = 1
    #: kept for loops that scale noise by it; the Kac prior is drawn with `sample_prior`
    init_noise_sigma = 1.0

    @register_to_config
    def __init__(self, a: float = 9.0, c: float = 3.0, T: float = 1.0, clock: str = "t",
                 eps: float = 1e-4, solver: str = "euler", timestep_spacing: str = "linspace",
                 clip_sample: bool = True):
        self.process = KacProcess(a=a, c=c, T=T, clock=clock, eps=eps)
        if solver not in one_call_solvers():
            raise ValueError(f"KacFlowScheduler: solver must be one of {one_call_solvers()}, got "
                             f"{solver!r} (two-call solvers: use kacfast.sample).")
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"KacFlowScheduler: timestep_spacing must be one of "
                             f"{tuple(TIMESTEP_SPACINGS)}, got {timestep_spacing!r}.")
        self.timesteps = None
        self.num_inference_steps = None
        self._grid = None
        self._step_index = None
        self._begin_index = None
        self._history = None

    @property
    def step_index(self) -> int | None:
        """Index of the next step into ``timesteps`` (None before the first ``step``)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """The step a loop over ``timesteps[begin_index:]`` starts at (image-to-image)."""
        self._begin_index = begin_index

    def set_timesteps(self, num_inference_steps: int | None = None,
                      device: str | torch.device | None = None, timesteps=None) -> None:
        """The sampling grid: ``num_inference_steps`` steps spaced by ``timestep_spacing``, or
        explicit ``timesteps`` (the times where the model is called: strictly decreasing, the
        first T, all in (0, T]; the last step ends at 0). Sets ``timesteps`` (float32 on device)."""
        T = self.config.T
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("set_timesteps needs num_inference_steps or timesteps (one of them).")
        if timesteps is None:
            grid = TIMESTEP_SPACINGS[self.config.timestep_spacing](num_inference_steps, T)
        else:
            times = [float(t) for t in (timesteps.tolist() if isinstance(timesteps, torch.Tensor)
                                        else timesteps)]
            # float32 timesteps read back (scheduler.timesteps) may sit a rounding step off T
            tolerance = 1e-6 * T
            outside = [t for t in times if not 0 < t <= T + tolerance]
            if not times or outside:
                raise ValueError(f"timesteps must lie in (0, T = {T:g}], got {outside or times}.")
            if abs(times[0] - T) > tolerance or any(b >= a for a, b in zip(times, times[1:])):
                raise ValueError(f"timesteps must decrease strictly from T = {T:g}, got {times}.")
            grid = [float(T)] + times[1:] + [0.0]
        self._grid = grid
        self.num_inference_steps = len(grid) - 1
        self.timesteps = torch.tensor(grid[:-1], dtype=torch.float32, device=device)
        self._step_index = None
        self._begin_index = None
        self._history = None

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The network takes x_t unscaled."""
        return sample

    def sample_prior(self, shape, *, seed: int | None = None,
                     generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """x_T from the exact Kac prior, (shape) float32 in [-c T, c T]: the counter-based stream
        of ``seed`` (default: a seed drawn from ``generator``, else from torch's global RNG), the
        same draw as ``kacfast.sample(..., seed=seed)``."""
        return self.process.prior(shape, seed=draw_seed(generator) if seed is None else seed,
                                  device=device)

    def sample_training_timesteps(self, batch: int, generator: torch.Generator | None = None,
                                  device=None) -> torch.Tensor:
        """t ~ U[0, T], (batch,) float32: the teacher's training-time distribution."""
        return torch.rand(batch, generator=generator, device=device) * self.config.T

    def training_pair(self, x0: torch.Tensor, timesteps: torch.Tensor, seed: int,
                      offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, target) for data x0 (B, ...) at Kac times (B,) in [0, T] from one fused op:
        the loss is ``mse(model(x_t, timesteps, labels), target)`` (this replaces
        ``add_noise`` + an epsilon target). Use a fresh seed per step."""
        return self.process.noise_target(x0, timesteps, seed=seed, offset=offset)

    def _index_of(self, timestep) -> int:
        """Where a loop starts. A tensor on an accelerator is not read (that would synchronize):
        the loop is taken to start at ``begin_index`` (default 0)."""
        if isinstance(timestep, torch.Tensor) and timestep.device.type != "cpu":
            return self._begin_index or 0
        value = self._check_range(timestep)
        for i, t in enumerate(self._grid[:-1]):
            if abs(t - value) <= 1e-6 * self.config.T:
                return i
        raise ValueError(f"timestep {value:g} is not one of the scheduler's timesteps "
                         f"{[round(t, 6) for t in self._grid[:-1]]}.")

    def _check_range(self, timestep) -> float:
        value = float(timestep)
        if not 0 <= value <= self.config.T:
            raise ValueError(f"timestep must lie in [0, T = {self.config.T:g}], got {value:g}.")
        return value

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             guidance_scale: float = 1.0, return_dict: bool = True):
        """One solver step from ``timestep`` to the next time of the grid.

        Args:
            model_output: velocity (B, ...) at (sample, timestep), or (2B, ...) =
                cat([v_cond, v_uncond]) when guidance_scale != 1.
            timestep: the current entry of ``timesteps`` (float, 0-d tensor).
            sample: x at timestep, (B, ...) float32.
            guidance_scale: w in v_u + w (v_c - v_u) (fused into the update).
        Returns:
            ``SchedulerOutput(prev_sample=x at the next time)``, or a 1-tuple.
        """
        if self._grid is None:
            raise RuntimeError("call set_timesteps before step.")
        if self._step_index is None:
            self._step_index = self._index_of(timestep)
        elif not (isinstance(timestep, torch.Tensor) and timestep.device.type != "cpu"):
            value = self._check_range(timestep)
            expected = self._grid[min(self._step_index, self.num_inference_steps - 1)]
            if abs(value - expected) > 1e-6 * self.config.T:
                raise ValueError(f"step got timestep {value:g}, but the next of the scheduler's "
                                 f"timesteps is {expected:g}: step through scheduler.timesteps "
                                 "in order (set_timesteps starts over).")
        if guidance_scale != 1 and model_output.shape[:1] != (2 * sample.shape[0],):
            raise ValueError(f"guidance_scale={guidance_scale:g} needs model_output = "
                             f"cat([v_cond, v_uncond]) of batch {2 * sample.shape[0]}, got batch "
                             f"{model_output.shape[0] if model_output.dim() else 0}.")
        i = self._step_index
        if i >= self.num_inference_steps:
            raise ValueError(f"all {self.num_inference_steps} steps were taken: call "
                             "set_timesteps to sample again.")
        last = self.config.clip_sample and i == self.num_inference_steps - 1
        prev, self._history = one_call_step(self.config.solver, sample, model_output,
                                            self._grid[i] - self._grid[i + 1], self._history,
                                            guidance=guidance_scale, clamp=last)
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)


# ----------------------------------------------------------------------------------------------
# a kacfast network as a diffusers model, and the pipeline
# ----------------------------------------------------------------------------------------------
class KacVelocityModel(ModelMixin, ConfigMixin):
    """Any kacfast network (its kind and config, as in a checkpoint) with its facts, as a
    diffusers model: ``save_pretrained`` / ``from_pretrained`` folders, ``model(x, t, y)``, and
    ``kacfast.sample(model, ...)`` works on it directly.

    Config: network_kind ("unet", "mlp", "diffusers"), network_config, process (KacProcess dict the
    network was trained on), grid (a distilled student's time grid), absorbed_guidance (the w a
    student reproduces at guidance 1), steps / guidance (the recommended sampling).
    """

    @register_to_config
    def __init__(self, network_kind: str = "unet", network_config: dict | None = None,
                 process: dict | None = None, grid: list | None = None,
                 absorbed_guidance: float | None = None, steps: int | None = None,
                 guidance: float | None = None):
        super().__init__()
        if network_config is None:
            raise ValueError("KacVelocityModel: network_config (the network's config) is required.")
        self.network = model_from_config(network_kind, network_config)
        attach_facts(self, process=None if process is None else KacProcess.from_dict(process),
                     grid=grid, absorbed_guidance=absorbed_guidance)

    @property
    def num_classes(self) -> int | None:
        return self.network.num_classes

    @property
    def sample_shape(self) -> tuple:
        return tuple(self.network.sample_shape)

    @property
    def interval_conditioned(self) -> bool:
        """A flow map's wrapper is a flow map (``kacfast.models.is_flow_map``)."""
        return is_flow_map(self.network)

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None,
                interval=None) -> torch.Tensor:
        if interval is None:
            return self.network(x, t, y)
        return self.network(x, t, y, interval=interval)

    @classmethod
    def from_network(cls, network: nn.Module, *, steps: int | None = None,
                     guidance: float | None = None) -> "KacVelocityModel":
        """Wrap a trained kacfast network (its weights, not a copy) with the facts it carries."""
        facts = facts_of(network)
        with torch.device("meta"):
            model = cls(network_kind=network.kind, network_config=network.config,
                        process=None if facts.process is None else facts.process.to_dict(),
                        grid=None if facts.grid is None else list(facts.grid),
                        absorbed_guidance=facts.absorbed_guidance, steps=steps, guidance=guidance)
        model.network = network
        return model


class KacPipeline(DiffusionPipeline):
    """Class-conditional image generation with a Kac flow.

    Components: ``unet`` (a ``KacVelocityModel``, or a ``UNet2DModel`` whose timestep is
    1000 t / T and whose class rows end with the null label) and ``scheduler``
    (``KacFlowScheduler``). ``pipe(class_labels=[...], num_inference_steps=1, seed=0).images``.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler: KacFlowScheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "KacPipeline":
        """A pipeline folder (``save_pretrained`` / ``kacfast export --format diffusers``), or
        the name of a shipped kacfast model (``kacfast.list_pretrained()``), built offline from
        the file installed with kacfast."""
        from kacfast.pretrained import PRETRAINED
        name = str(pretrained_model_name_or_path)
        if name in PRETRAINED and not os.path.exists(name):
            if kwargs:
                raise ValueError(f"{name} is a shipped kacfast model: it takes no loading options "
                                 f"(got {sorted(kwargs)}); export it to a folder for those.")
            return pipeline_from(name)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def velocity_model(self) -> nn.Module:
        """The unet under kacfast's contract ``model(x, t, y)``, carrying the scheduler's process."""
        process = self.scheduler.process
        if isinstance(self.unet, UNet2DModel):
            model = DiffusersUNet.from_unet(self.unet, time_scale=1000.0 / process.T)
        else:
            model = self.unet
            trained_on = facts_of(model).process
            if trained_on is not None and trained_on != process:
                warn(f"the network was trained on {trained_on} but the scheduler steps {process}; "
                     "sampling follows the scheduler.")
        return model

    @torch.no_grad()
    def __call__(self, class_labels=None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, *, batch_size: int | None = None,
                 generator: torch.Generator | None = None, seed: int | None = None,
                 output_type: str = "pil", return_dict: bool = True):
        """Generate images.

        Args:
            class_labels: integer labels (list or tensor), one image each; None with batch_size
                for an unconditional model.
            num_inference_steps: default: a distilled student's own step count, else the
                model's recommended steps (``unet.config.steps``), else 1.
            guidance_scale: w in v_u + w (v_c - v_u); 1 = one network call per step. Default:
                the model's recommended guidance (``unet.config.guidance``), else 1.
            batch_size: images of an unconditional model (default 1).
            generator / seed: the prior's seed (``seed`` wins; a generator gives one draw of it).
                ``seed=s`` gives the images of ``kacfast.sample(model, steps, seed=s)``.
            output_type: "pil" (list of PIL images), "np" ((B, H, W, C) in [0, 1]) or "pt"
                ((B, C, H, W) float32 in [0, 1]).
        Returns:
            ``ImagePipelineOutput(images=...)``, or a 1-tuple.
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")
        model = self.velocity_model()
        if len(getattr(model, "sample_shape", ())) != 3:
            raise ValueError("KacPipeline makes images: its unet must have a (C, H, W) sample_shape.")
        config = getattr(model, "config", None)
        student_grid = facts_of(model).grid
        if num_inference_steps is None:
            recommended = getattr(config, "steps", None)
            num_inference_steps = len(student_grid) - 1 if student_grid else recommended or 1
        if guidance_scale is None:
            guidance_scale = getattr(config, "guidance", None) or 1.0
        grid = None  # a student's own grid when it has this many steps, else the spacing's
        if not (student_grid and len(student_grid) == num_inference_steps + 1):
            grid = TIMESTEP_SPACINGS[self.scheduler.config.timestep_spacing](
                num_inference_steps, self.scheduler.config.T)
        dtype = self.unet.dtype if self.unet.dtype != torch.float32 else None
        plan = plan_sampling(model, num_inference_steps, grid=grid, labels=class_labels,
                             batch_size=batch_size, guidance=guidance_scale,
                             solver=self.scheduler.config.solver, process=self.scheduler.process,
                             device=self._execution_device, clamp=self.scheduler.config.clip_sample,
                             dtype=dtype)
        if plan.guidance != 1.0 and plan.labels is None:
            raise ValueError("guidance_scale != 1 needs class_labels.")
        x = self.scheduler.sample_prior((plan.batch,) + plan.shape, seed=seed,
                                        generator=generator, device=plan.device)
        self.scheduler.set_timesteps(timesteps=list(plan.grid[:-1]), device=plan.device)
        if plan.grid[-1] != 0:
            raise ValueError(f"the model's grid ends at {plan.grid[-1]}, not at 0.")
        velocity = guided_velocity_fn(model, plan.labels, plan.guidance, plan.null_label,
                                      plan.dtype)
        with eval_mode(model):
            for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                v = velocity(x, t.expand(plan.batch), plan.grid[i] - plan.grid[i + 1])
                x = self.scheduler.step(v, t, x, guidance_scale=plan.guidance).prev_sample
        images = (x / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            images = images.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        return ImagePipelineOutput(images=images) if return_dict else (images,)


# ----------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------
def pipeline_from(ckpt: str, *, ema: bool | str = True) -> KacPipeline:
    """A KacPipeline of a Kac teacher or student: ckpt is a shipped model's name, a run directory
    or a checkpoint file (EMA weights unless ema=False; a name selects a power-function EMA, as in
    kacfast.checkpoints.load_trained)."""
    return _pipeline_and_record(ckpt, ema)[0]


def export_pipeline(ckpt: str, out: str, *, ema: bool | str = True) -> KacPipeline:
    """Write a Kac teacher or student (see pipeline_from) as a KacPipeline folder with a model
    card (README.md). The folder loads offline with ``KacPipeline.from_pretrained(out)``."""
    pipe, network, meta, entry = _pipeline_and_record(ckpt, ema)
    pipe.save_pretrained(out, safe_serialization=True)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(_model_card(ckpt, out, network, meta, entry, pipe.unet.config.steps,
                            pipe.unet.config.guidance))
    return pipe


def _pipeline_and_record(ckpt: str, ema: bool | str):
    """(pipeline, network, checkpoint meta or None for a shipped model, its PRETRAINED entry)."""
    from kacfast.checkpoints import load_trained
    from kacfast.pretrained import PRETRAINED, load_pretrained

    if ckpt in PRETRAINED and not os.path.exists(ckpt):
        if ema is not True:
            raise ValueError(f"{ckpt} is a shipped model: it holds one set of weights, so the raw "
                             "weights and weight averages of a run are not there to choose.")
        network, meta = load_pretrained(ckpt), None
    else:
        network, meta = load_trained(ckpt, ema=ema)
    facts = facts_of(network)
    if facts.process is None:
        method = (meta or {}).get("objective", {}).get("method")
        raise ValueError(f"{ckpt} is not a Kac teacher or student (method {method!r}): only Kac "
                         "flows export as a KacPipeline.")
    if len(getattr(network, "sample_shape", ())) != 3:
        raise ValueError(f"{ckpt} is not an image model: KacPipeline makes images.")
    entry = facts.pretrained or {}
    steps = len(facts.grid) - 1 if facts.grid else entry.get("steps", 100)
    guidance = entry.get("guidance", 1.0) if network.num_classes else 1.0
    unet = KacVelocityModel.from_network(network, steps=steps, guidance=guidance)
    process = facts.process
    scheduler = KacFlowScheduler(a=process.a, c=process.c, T=process.T, clock=process.clock,
                                 eps=process.eps)
    return KacPipeline(unet=unet, scheduler=scheduler), network, meta, entry


def _model_card(ckpt: str, out: str, network, meta: dict | None, entry: dict, steps: int,
                guidance: float) -> str:
    facts = facts_of(network)
    params = sum(p.numel() for p in network.parameters())
    name = entry.get("name") or os.path.basename(os.path.normpath(ckpt))
    description = entry.get("description") or (
        f"Kac flow {'student (distilled, ' + str(steps) + ' step(s))' if facts.grid else 'teacher'}"
        f" exported from {os.path.basename(os.path.normpath(ckpt))}.")
    labels = f"list(range({network.num_classes}))" if network.num_classes else "None, batch_size=4"
    if entry.get("commands"):
        trained = "\n".join(f"    {c}" for c in entry["commands"])
    else:
        run = (meta or {}).get("run", {})
        trained = f"    trained {meta.get('step')} steps on {run.get('data')!r} ({run})" if meta else ""
    scores = entry.get("scores")
    score_text = ("\n".join(f"- {line}" for line in scores) if scores else
                  f"Not scored yet: `kacfast eval --ckpt {ckpt} --guidance {guidance:g}` "
                  "prints the two-judge table with 95% intervals.")
    absorbed = (f" It absorbed guidance {facts.absorbed_guidance:g} during distillation: sample it "
                "at guidance_scale=1." if facts.absorbed_guidance else "")
    p = facts.process
    return f"""---
library_name: diffusers
tags: [kacfast, kac-flow, distillkac, class-conditional]
---
# {name}

{description}{absorbed}

## Use (offline)

```python
from kacfast.integrations.diffusers import KacPipeline
pipe = KacPipeline.from_pretrained("{out}")
images = pipe(class_labels={labels}, num_inference_steps={steps}, guidance_scale={guidance:g}, seed=0).images
```

The same seed gives the images of `kacfast.sample(pipe.unet, {steps}, labels=..., guidance={guidance:g}, seed=0)`
(mapped from [-1, 1] to [0, 1]).

## Model

- network: kacfast `{network.kind}`, {params:,} parameters, samples of shape {tuple(network.sample_shape)}
  (`unet/config.json`); timestep = Kac time t in [0, T], not an integer index
- Kac process: a = {p.a:g}, c = {p.c:g}, T = {p.T:g}, clock "{p.clock}" (`scheduler/scheduler_config.json`)
- recommended sampling: {steps} {"step" if steps == 1 else "steps"} of Euler at guidance {guidance:g}

## Training

{trained or "    (no training record)"}

## Scores

{score_text}

## Reproduce this folder

    kacfast export --ckpt {ckpt} --format diffusers --out {out}
"""
