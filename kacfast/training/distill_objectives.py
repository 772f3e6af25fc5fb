"""Distillation objectives of DistillKac, one stage each: where the interval start points come
from, the frozen teacher's roll-out over the interval, and the distance between the endpoints.
The multi-stage driver (kacfast.training.distill) picks one by name from DISTILL_OBJECTIVES."""
from __future__ import annotations

import copy
import math

import torch

from kacfast.facts import facts_of
from kacfast.models import as_flow_map, is_flow_map
from kacfast.process import KacProcess
from kacfast.sampling import (check_flow_map_solver, eval_mode, guided_velocity_fn,
                              mixed_velocity_fn, one_call_solvers, one_call_step, uniform_grid)

__all__ = ["DistillObjective", "PseudoHuberDistillObjective", "RandomFeatureDistillObjective",
           "AdversarialDistillObjective", "FlowMapDistillObjective", "DISTILL_OBJECTIVES",
           "teacher_integrate", "STARTS"]

STARTS = ("noise", "rollout")


@torch.no_grad()
def teacher_integrate(teacher, x, t_start, y, h: float, substeps: int, guidance: float,
                      solver: str = "euler"):
    """Roll the teacher out from per-sample times t_start (B,) over `substeps` steps of h with
    fused guided steps: "euler", or "ab2" (Adams-Bashforth 2, its first step Euler). Guided only
    when there are labels."""
    w = guidance if y is not None else 1.0
    velocity = guided_velocity_fn(teacher, y, w, getattr(teacher, "num_classes", None))
    check_flow_map_solver(velocity.flow_map, solver)
    history = None
    for j in range(substeps):
        x, history = one_call_step(solver, x, velocity(x, t_start - j * h, h), h, history,
                                   guidance=w)
    return x


class DistillObjective:
    """The paper's endpoint loss (DistillKac, kac-math.md section 8) for one stage: the student's
    single Euler step over an interval of uniform_grid(student_steps, T) against the frozen
    teacher's N-substep roll-out over the same interval, mean squared error of the endpoints.

    A variant changes only what it must: `distance` (student vs teacher endpoints -> scalar), or
    `loss` for a different target. `options` sets its `tunable` settings (numbers >= 0, recorded
    by `describe`, so a run resumes only with the same ones). `name` is its key in DISTILL_OBJECTIVES (recorded in
    checkpoints: a run resumes only with the same objective).
    """

    method = "distill"
    name = "endpoint-l2"
    #: the objective's settings that `options` may change (float class attributes)
    tunable: tuple[str, ...] = ()
    #: tunable settings added after runs had been recorded without them: `describe` writes them
    #: only when not 0, so those runs still resume
    recorded_when_set: tuple[str, ...] = ()

    def __init__(self, teacher, process: KacProcess, teacher_steps: int, student_steps: int,
                 guidance: float = 1.0, start: str = "noise", teacher_solver: str = "euler",
                 options: dict | None = None):
        if teacher_steps % student_steps:
            raise ValueError(f"student steps ({student_steps}) must divide teacher steps "
                             f"({teacher_steps}).")
        if start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {start!r}.")
        if teacher_solver not in one_call_solvers():
            raise ValueError(f"teacher_solver must be one of {one_call_solvers()}, got "
                             f"{teacher_solver!r}.")
        for key, value in self.check_options(options).items():
            setattr(self, key, value)
        check_flow_map_solver(is_flow_map(teacher), teacher_solver)
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

    @classmethod
    def check_options(cls, options: dict | None) -> dict:
        """`options` as {name: float}, each one of `tunable` and a finite number >= 0; a
        one-sentence ValueError otherwise."""
        checked = {}
        for key, value in (options or {}).items():
            if key not in cls.tunable:
                raise ValueError(f"{cls.name} has no option {key!r}; its options: "
                                 f"{list(cls.tunable) or 'none'}.")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value >= 0):
                raise ValueError(f"option {key} must be a finite number >= 0, got {value!r}.")
            checked[key] = float(value)
        return checked

    def student_from(self, teacher: torch.nn.Module) -> torch.nn.Module:
        """The stage's student before training: a copy of its teacher."""
        return copy.deepcopy(teacher)

    def endpoints(self, net, x0, y, generator, seed):
        """(student endpoint, teacher endpoint, interval index) of one batch: float32 (B, ...)
        twice and (B,); interval student_steps - 1 ends at t = 0."""
        idx = torch.randint(0, self.student_steps, (x0.shape[0],), generator=generator,
                            device=x0.device)
        x, t = self._start_points(x0, y, idx, generator, seed)
        target = teacher_integrate(self.teacher, x, t, y, self.interval / self.substeps,
                                   self.substeps, self.guidance, self.teacher_solver)
        # a flow map's copy steps by its average velocity over the interval (`net` may be wrapped
        # by DDP, which hides the model's attributes: the teacher's kind decides)
        over = {"interval": self.interval} if is_flow_map(self.teacher) else {}
        pred = x - self.interval * net(x, t, y, **over)
        return pred.float(), target.float(), idx

    def loss(self, net, x0, y, generator, seed):
        pred, target = self.endpoints(net, x0, y, generator, seed)[:2]
        return self.distance(pred, target)

    def distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar distance between student and teacher endpoints (B, ...), float32."""
        return (pred - target).square().mean()

    def describe(self) -> dict:
        # the paper's loss is recorded without a "loss" key, as before objectives had names:
        # its older runs still resume
        named = {} if self.name == DistillObjective.name else {"loss": self.name}
        named.update({key: getattr(self, key) for key in self.tunable
                      if key not in self.recorded_when_set or getattr(self, key)})
        return {"method": self.method, **named, "process": self.process.to_dict(),
                "grid": self.grid,
                "teacher_steps": self.teacher_steps, "student_steps": self.student_steps,
                "guidance": self.guidance, "absorbed_guidance": self.absorbed_guidance,
                "start": self.start, "teacher_solver": self.teacher_solver}


class PseudoHuberDistillObjective(DistillObjective):
    """The endpoint loss with the pseudo-Huber distance of improved consistency training (Song &
    Dhariwal 2023): sqrt(||pred - target||^2 + c^2) - c per sample, c = 0.00054 sqrt(d) for d
    values per sample; quadratic for small errors, linear for large ones (less pull from outlier
    endpoints)."""

    name = "endpoint-pseudo-huber"

    def distance(self, pred, target):
        per_sample = (pred - target).flatten(1).square().sum(1)
        c = 0.00054 * math.sqrt(pred[0].numel())
        return ((per_sample + c * c).sqrt() - c).mean()


def _seeded(module: torch.nn.Module, seed: int, gain: float) -> torch.nn.Module:
    """Draw `module`'s parameters, in order, from one generator seeded with `seed`: weights
    N(0, gain / fan_in), biases N(0, 0.02^2). The same seed gives the same network anywhere."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            std = math.sqrt(gain / p[0].numel()) if p.dim() >= 2 else 0.02
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return module


class RandomFeatureDistillObjective(DistillObjective):
    """The endpoint loss in pixels plus a distance in a frozen random feature space: a 3-level
    convolutional network (3x3 convolutions of 32, 64, 128 channels, ReLU, 2x average pooling
    between levels) with Kaiming-normal weights from a fixed seed, never trained. At each level the
    features are unit-normalised over channels per pixel (as LPIPS does) and compared by squared
    distance, summed over channels, averaged over pixels and levels. Random features share no
    weights, data or training with the evaluation judges, so the loss cannot fit them. Images only
    (B, C, H, W)."""

    name = "endpoint-random-features"
    widths = (32, 64, 128)
    weight_seed = 0

    def _features(self, channels: int, device) -> torch.nn.Module:
        cached = getattr(self, "_feature_net", None)
        if cached is None or cached[0].in_channels != channels:
            layers, width_in = [], channels
            for level, width in enumerate(self.widths):
                last = level == len(self.widths) - 1
                layers += [torch.nn.Conv2d(width_in, width, 3, padding=1, bias=False),
                           torch.nn.ReLU()] + ([] if last else [torch.nn.AvgPool2d(2)])
                width_in = width
            cached = _seeded(torch.nn.Sequential(*layers), self.weight_seed, gain=2.0)
            self._feature_net = cached.requires_grad_(False)
        return cached.to(device)

    def distance(self, pred, target):
        if pred.dim() != 4:
            raise ValueError(f"{self.name} compares images (B, C, H, W); got endpoints of shape "
                             f"{tuple(pred.shape)}.")
        pixels = super().distance(pred, target)
        net = self._features(pred.shape[1], pred.device)
        levels, a, b = [], pred, target
        with torch.autocast(pred.device.type, enabled=False):  # float32, as the pixel distance
            for layer in net:
                a, b = layer(a), layer(b)
                if isinstance(layer, torch.nn.ReLU):
                    a_unit = a / (a.square().sum(1, keepdim=True) + 1e-10).sqrt()
                    b_unit = b / (b.square().sum(1, keepdim=True) + 1e-10).sqrt()
                    levels.append((a_unit - b_unit).square().sum(1).mean())
        return pixels + torch.stack(levels).mean()


class _ProjectionDiscriminator(torch.nn.Module):
    """A small image discriminator: conv3x3 (32) then two stride-2 conv4x4 (64, 128), LeakyReLU
    0.2, global average pooling, a linear logit plus the projection of a class embedding (Miyato &
    Koyama 2018) when class-conditional (the last embedding row is the null label)."""

    def __init__(self, channels: int, num_classes: int | None, seed: int = 0):
        super().__init__()
        layers, width_in = [], channels
        for width, kernel, stride in ((32, 3, 1), (64, 4, 2), (128, 4, 2)):
            layers += [torch.nn.Conv2d(width_in, width, kernel, stride, padding=1),
                       torch.nn.LeakyReLU(0.2)]
            width_in = width
        self.features = torch.nn.Sequential(*layers)
        self.logit = torch.nn.Linear(128, 1)
        self.embed = None if num_classes is None else torch.nn.Embedding(num_classes + 1, 128)
        _seeded(self, seed, gain=1.0)  # every run of the objective starts from the same D

    def forward(self, x, y=None):
        h = self.features(x).mean((2, 3))
        out = self.logit(h).squeeze(1)
        if self.embed is not None and y is not None:
            out = out + (self.embed(y) * h).sum(1)
        return out


class AdversarialDistillObjective(DistillObjective):
    """The paper's endpoint L2 plus a non-saturating GAN term on the samples the student makes:
    for the intervals that end at t = 0 (all of them in a 1-step stage), a small projection
    discriminator (`_ProjectionDiscriminator`, Adam 2e-4, betas (0.5, 0.999)) takes one step on
    the batch's real digits against the student's endpoints, then the student's loss adds
    `adversarial_weight` (0.1) x softplus(-D(endpoint)). `discriminator_warmup` (0): the number of
    discriminator steps taken before the student's loss adds that term (D steps on batches with
    samples only: every training step of a 1-step stage; a restarted stage, such as a 1 -> 1 cycle
    against the student's own samples, otherwise follows an untrained D's gradient from its first
    step). `clamped` (0): 1 compares the samples as the sampler returns them, clamped to the
    data range [-1, 1], in the distance and for the discriminator: a pixel pushed past -1 is an
    exact -1, as MNIST's background is, and costs nothing, where unclamped every background
    pixel must land on -1 exactly, which a smooth network does not (README "Background
    residue"). The discriminator and its optimizer are
    checkpointed with the run (exact resume); one process only. Each `loss` call is a
    discriminator step too: call it from the training loop only. Meant as a short last stage
    (`kacfast distill --teacher RUN/stage-3-2 --schedule 2 1 --objective endpoint-l2-adversarial`)."""

    name = "endpoint-l2-adversarial"
    tunable = ("adversarial_weight", "discriminator_lr", "discriminator_warmup", "clamped")
    recorded_when_set = ("discriminator_warmup", "clamped")
    adversarial_weight = 0.1
    discriminator_lr = 2e-4
    discriminator_warmup = 0.0
    clamped = 0.0

    def __init__(self, teacher, *args, **kwargs):
        super().__init__(teacher, *args, **kwargs)
        if self.clamped not in (0.0, 1.0):
            raise ValueError(f"option clamped must be 0 or 1, got {self.clamped:g}.")
        shape = getattr(teacher, "sample_shape", None)
        if shape is None or len(shape) != 3:
            raise ValueError(f"{self.name} needs an image teacher (sample_shape (C, H, W)), got "
                             f"sample_shape {shape}.")
        device = next(teacher.parameters()).device
        self.discriminator = _ProjectionDiscriminator(
            shape[0], getattr(teacher, "num_classes", None)).to(device)
        self.discriminator_optimizer = torch.optim.Adam(
            self.discriminator.parameters(), lr=self.discriminator_lr, betas=(0.5, 0.999))

    def checkpointed(self) -> dict:
        return {"discriminator": self.discriminator, "discriminator_optimizer": self.discriminator_optimizer}

    def loss(self, net, x0, y, generator, seed):
        pred, target, idx = self.endpoints(net, x0, y, generator, seed)
        final = idx == self.student_steps - 1  # intervals ending at t = 0: samples
        if self.clamped:
            at_end = final.view(-1, *[1] * (pred.dim() - 1))
            pred = torch.where(at_end, pred.clamp(-1, 1), pred)
            target = torch.where(at_end, target.clamp(-1, 1), target)
        loss = self.distance(pred, target)
        if not bool(final.any()):
            return loss
        fake, real = pred[final], x0[final].float()
        labels = None if y is None else y[final]
        d = self.discriminator
        warming_up = self._discriminator_steps() < self.discriminator_warmup
        try:
            d.requires_grad_(True)
            with torch.enable_grad():
                d_loss = (torch.nn.functional.softplus(-d(real, labels)).mean()
                          + torch.nn.functional.softplus(d(fake.detach(), labels)).mean())
                self.discriminator_optimizer.zero_grad(set_to_none=True)
                d_loss.backward()
                self.discriminator_optimizer.step()
        finally:
            d.requires_grad_(False)  # the student's backward does not fill D's gradients
        if warming_up:
            return loss
        return loss + self.adversarial_weight * torch.nn.functional.softplus(-d(fake, labels)).mean()

    def _discriminator_steps(self) -> int:
        """Steps D has taken: its optimizer's own count, so that it resumes with the run."""
        state = self.discriminator_optimizer.state.get(next(self.discriminator.parameters()))
        return int(state["step"]) if state else 0


class FlowMapDistillObjective(DistillObjective):
    """A flow-map student (average velocity over any interval, as MeanFlow's, Geng et al. 2025)
    distilled by the semigroup property of the flow instead of MeanFlow's derivative form: the
    student u(x, t, h) (kacfast.models.as_flow_map: it starts as its teacher, with a zero interval
    embedding) is regressed (mean squared error) on
      - for h <= T / teacher_steps: the teacher's guided velocity at (x_t, t), i.e. one teacher
        Euler step (the student absorbs the guidance);
      - for longer h: the average of its own two half steps, (u(x, t, h/2) + u(x', t - h/2, h/2))
        / 2 with x' = x - (h/2) u(x, t, h/2), without gradient (shortcut models, Frans et al. 2024).
    MeanFlow's identity u = v - h du/dt needs du/dt through the network: on the shipped 16x16
    teacher the JVP along the flow is 2-3x the flow's own rate, and MeanFlow's first targets lie
    5-8x further from the teacher's roll-out than the start does
    (benchmarks/experiments/meanflow_target.py); on a 2-D toy that form diverged.
    x_t is the exact Kac forward noising of the batch. Intervals per sample: `grid_fraction` (1/4)
    the student grid's own (t a grid point, h = T / student_steps), `instantaneous_fraction` (1/4)
    h = 0, the rest t ~ U(0, T], h ~ U[0, t). The student samples any number of uniform Euler
    steps; its facts carry the grid of student_steps (what `sample` takes by default). Starts are
    "noise" only and the teacher takes no solver (only its velocity is queried)."""

    name = "flow-map"
    tunable = ("grid_fraction", "instantaneous_fraction")
    grid_fraction = 0.25
    instantaneous_fraction = 0.25

    def __init__(self, teacher, *args, **kwargs):
        super().__init__(teacher, *args, **kwargs)
        if self.start != "noise":
            raise ValueError(f"{self.name} draws x_t by forward noising: start must be 'noise', "
                             f"got {self.start!r}.")
        if self.teacher_solver != "euler":
            raise ValueError(f"{self.name} takes the teacher's velocity, not its steps: "
                             f"teacher_solver does not apply (got {self.teacher_solver!r}).")
        if self.grid_fraction + self.instantaneous_fraction > 1:
            raise ValueError(f"grid_fraction + instantaneous_fraction must be <= 1, got "
                             f"{self.grid_fraction} + {self.instantaneous_fraction}.")
        self.teacher_interval = self.process.T / self.teacher_steps  # finer: the teacher itself

    def student_from(self, teacher):
        return as_flow_map(teacher)

    def intervals(self, batch: int, generator, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, h), both (B,) float32 with 0 <= h <= t <= T: the per-sample mixture above."""
        kind = torch.rand(batch, generator=generator, device=device)
        t = self.process.T * (1 - torch.rand(batch, generator=generator, device=device))  # (0, T]
        h = t * torch.rand(batch, generator=generator, device=device)
        idx = torch.randint(0, self.student_steps, (batch,), generator=generator, device=device)
        on_grid = kind < self.grid_fraction
        t = torch.where(on_grid, torch.tensor(self.grid, device=device)[idx], t)
        h = torch.where(on_grid, torch.full_like(h, self.interval), h)
        instantaneous = (kind >= self.grid_fraction) & (
            kind < self.grid_fraction + self.instantaneous_fraction)
        return t, torch.where(instantaneous, 0.0, h)

    def loss(self, net, x0, y, generator, seed):
        t, h = self.intervals(x0.shape[0], generator, x0.device)
        x = self.process.noise_target(x0, t, seed=seed)[0]
        w = self.guidance if y is not None else 1.0
        # both targets for every sample, then one picked per sample: static shapes (compile)
        with torch.no_grad(), eval_mode(net):  # the student's own steps as it samples (no dropout)
            # (a flow-map teacher's average velocity over h, exact where the Euler step is not)
            v = mixed_velocity_fn(self.teacher, y, w, getattr(self.teacher, "num_classes", None))(
                x, t, h)
            half = h / 2
            per_sample = half.view(-1, *([1] * (x.dim() - 1)))
            u_first = net(x, t, y, interval=half)
            u_second = net(x - per_sample * u_first, t - half, y, interval=half)
            coarse = (h > self.teacher_interval).view_as(per_sample)
            target = torch.where(coarse, (u_first + u_second) / 2, v).float()
        return (net(x, t, y, interval=h).float() - target).square().mean()


#: name -> distillation objective class, the paper's loss first. Each takes (teacher, process,
#: teacher_steps, student_steps, guidance, start, teacher_solver, options) and follows
#: kacfast.training.objectives.Objective. Add one here (see CONTRIBUTING.md) and DistillConfig,
#: `kacfast distill --objective` and the tests take it.
DISTILL_OBJECTIVES = {cls.name: cls for cls in (DistillObjective, PseudoHuberDistillObjective,
                                                RandomFeatureDistillObjective,
                                                AdversarialDistillObjective,
                                                FlowMapDistillObjective)}
