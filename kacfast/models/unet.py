"""Class-conditional ADM UNet (Dhariwal & Nichol 2021; the Kac-flow reference code's `unet_oai.py`).

Layout and parameter names follow ADM (`time_embed`, `label_emb`, `input_blocks`, `middle_block`,
`output_blocks`, `out`; ResBlock `in_layers` / `emb_layers` / `out_layers` / `skip_connection`;
attention `norm` / `qkv` / `proj_out`, legacy head order), so the state_dict of an unconditional
ADM network of the same architecture has the same keys and shapes (checked by reading ADM's code,
not against a real checkpoint; class-conditional ADM has one label row less). Differences from ADM:

- `attention_resolutions` holds spatial sizes (16 means "at 16x16"), not downsampling factors.
  (The reference CIFAR-10 script passes `attention_resolutions=(16,)` to ADM, where it is a factor
  that a (1, 2, 2, 2) UNet never reaches: its only attention is the middle block's. The same network
  here is `attention_resolutions=()`.)
- Odd sizes work: down-sampling is a stride-2 conv (28 -> 14 -> 7 -> 4) and up-sampling is nearest
  interpolation to the size of the skip tensor it is concatenated with.
- Time is fed raw, t (B,) in [0, T]; the sinusoidal embedding multiplies it by `time_scale`
  (default 1000) inside, so t in [0, 1] spans the frequencies ADM's integer timesteps 0..1000 used.
  Use time_scale = 1000 / T for another horizon T; time_scale = 1 reproduces the reference code,
  which fed t in [0, 1] to ADM's embedding unscaled.
- Label embedding has num_classes + 1 rows: row num_classes is the null label (classifier-free
  guidance); y=None means the null label for the whole batch.
- Attention uses F.scaled_dot_product_attention (same math as ADM's QKVAttentionLegacy).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kacfast.models.precondition import PRECONDITION_KEYS, KacPreconditioner

__all__ = ["UNet", "timestep_embedding", "check_inputs", "as_times", "interval_features"]


# ----------------------------------------------------------------------------------------------
# shared helpers (mlp.py uses them too)
# ----------------------------------------------------------------------------------------------

def timestep_embedding(t: torch.Tensor, dim: int, time_scale: float = 1000.0,
                       max_period: float = 10000.0) -> torch.Tensor:
    """ADM sinusoidal embedding of raw times: (B,) -> (B, dim) float32, [cos | sin] of
    (time_scale * t) * max_period^(-k / half), k = 0..half-1 (a zero column pads odd dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=t.device) / half)
    args = (t.float() * time_scale)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def as_times(x: torch.Tensor, t, name: str = "t") -> torch.Tensor:
    """Per-sample times for x's batch: t a (B,) real tensor, a 0-d tensor or a number (broadcast)
    -> (B,) tensor; one-sentence errors otherwise (`name` is the argument's name in them)."""
    batch = x.shape[0]
    if not isinstance(t, torch.Tensor):
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise ValueError(f"{name} must be a (B,) float tensor or a number, got "
                             f"{type(t).__name__}.")
        t = torch.full((batch,), float(t), device=x.device)
    elif t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) to match x, got {tuple(t.shape)}.")
    if t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must be a real float tensor, got {t.dtype}.")
    return t


def interval_features(model: nn.Module, x: torch.Tensor, interval, dim: int):
    """The sinusoidal embedding (B, dim) of an interval-conditioned model's `interval` (None = 0:
    the instantaneous velocity), or None for a model without interval conditioning (then
    `interval` must be None)."""
    if not model.interval_conditioned:
        if interval is not None:
            raise ValueError("interval= needs an interval-conditioned model (a flow map, "
                             "interval_conditioned=True); this one predicts instantaneous "
                             "velocities.")
        return None
    return timestep_embedding(as_times(x, 0.0 if interval is None else interval, "interval"),
                              dim, model.time_scale)


def check_inputs(x, t, y, *, feature_shape: tuple, num_classes: int | None):
    """Validate and normalize (x, t, y) of a model call; returns (t (B,), y (B,) long or None).

    x must be a float tensor (B, *feature_shape) (a None entry in feature_shape matches any size);
    t a (B,) tensor, a 0-d tensor or a number (broadcast to B); y None or (B,) integers in
    [0, num_classes] (num_classes itself is the null label; y=None gives the null label for the
    whole batch). Data-dependent label-range checks run in eager mode on CPU tensors only (no host
    synchronization on accelerators, no graph break under torch.compile).
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got "
                         f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}.")
    want = "(B, " + ", ".join("*" if s is None else str(s) for s in feature_shape) + ")"
    if x.dim() != 1 + len(feature_shape) or any(
            s is not None and s != xs for s, xs in zip(feature_shape, x.shape[1:])):
        raise ValueError(f"x must have shape {want}, got {tuple(x.shape)}.")
    batch = x.shape[0]
    t = as_times(x, t)
    if num_classes is None:
        if y is not None:
            raise ValueError("y must be None: this model is unconditional (num_classes=None).")
        return t, None
    if y is None:
        return t, torch.full((batch,), num_classes, dtype=torch.long, device=x.device)
    if (not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype.is_complex
            or y.dtype == torch.bool):
        raise ValueError(f"y must be an integer tensor (B,) or None, got "
                         f"{y.dtype if isinstance(y, torch.Tensor) else type(y).__name__}.")
    if y.shape != (batch,):
        raise ValueError(f"y must have shape ({batch},) to match x, got {tuple(y.shape)}.")
    if not torch.compiler.is_compiling() and y.device.type == "cpu" and y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi > num_classes:
            raise ValueError(f"y must hold labels in [0, {num_classes - 1}] or the null label "
                             f"{num_classes}, got values in [{lo}, {hi}].")
    return t, y.long()


def _check_config(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")
    return value


def _groups(channels: int) -> int:
    """ADM's 32 groups when they divide the channels, else the largest common divisor."""
    return math.gcd(32, channels)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels), channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# ----------------------------------------------------------------------------------------------
# blocks
# ----------------------------------------------------------------------------------------------

class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv, + Linear(SiLU(emb)) (or scale-shift of the 2nd norm), GroupNorm-SiLU-
    Dropout-Conv (zero-initialized), plus a (1x1-conv) skip."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int,
                 use_scale_shift_norm: bool = False):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, (2 if use_scale_shift_norm else 1) * out_channels))
        self.out_layers = nn.Sequential(_norm(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                        _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions; zero-initialized output projection."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the attention width {channels}.")
        self.num_heads = num_heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        x = x.reshape(b, c, hgt * wid)
        qkv = self.qkv(self.norm(x))
        # legacy ADM head order: heads split before q/k/v
        qkv = qkv.reshape(b * self.num_heads, 3 * c // self.num_heads, -1).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(1, 2).reshape(b, c, -1)
        return (x + self.proj_out(h)).reshape(b, c, hgt, wid)


class Downsample(nn.Module):
    """Stride-2 3x3 conv: H -> ceil(H / 2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest up-sampling to an explicit size (the skip tensor's), then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that passes `emb` to ResBlocks and the target size to Upsample."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, size=None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


# ----------------------------------------------------------------------------------------------
# the network
# ----------------------------------------------------------------------------------------------

class UNet(nn.Module):
    """ADM UNet velocity model: `model(x, t, y=None) -> v`, x and v (B, C, H, W), t (B,) raw times.

    Args:
        in_channels: image channels C (output channels too unless out_channels is given).
        image_size: H = W the model is built for; sets `sample_shape` and where attention sits
            (the network is convolutional and accepts other sizes).
        model_channels: base width; the time/label embedding width is 4 x model_channels.
        channel_mult: width multiplier per level; len(channel_mult) - 1 down-samplings.
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        attention_resolutions: spatial sizes (e.g. (16,) for 16x16) that get self-attention
            after each ResBlock; the middle block always has one.
        num_heads: attention heads (must divide the width at every attention layer).
        dropout: dropout rate inside ResBlocks.
        num_classes: number of classes, or None for an unconditional model.
        use_scale_shift_norm: FiLM conditioning (norm(h) (1 + scale) + shift) instead of adding
            the projected embedding.
        time_scale: multiplies raw t inside the sinusoidal embedding (see module docstring).
        out_channels: output channels (default in_channels).
        interval_conditioned: a flow map: forward also takes `interval` h (B,) in [0, t] and
            returns the average velocity over [t - h, t] (an embedding of h, its last layer
            zero-initialized, is added to the time embedding; h = 0 is the instantaneous velocity).
        precondition: None (default: the network's output is the velocity), or a dict of
            kacfast.models.precondition.PRECONDITION_KEYS (the Kac process a, c, T, clock and the
            data's rms): the network then computes c_out(t) F(c_in(t) x, t, y), input and target
            at unit mean square for every t (a Kac teacher lever; KacPreconditioner).

    Attributes: `kind` ("unet"), `num_classes`, `sample_shape` (C, H, W), `config` (a JSON-able
    dict with `UNet(**config)` rebuilding the same architecture). The output conv is
    zero-initialized, so a fresh model returns zeros.
    """

    kind = "unet"

    def __init__(self, in_channels: int = 1, image_size: int = 28, model_channels: int = 32,
                 channel_mult: Sequence[int] = (1, 2), num_res_blocks: int = 1,
                 attention_resolutions: Sequence[int] = (), num_heads: int = 1,
                 dropout: float = 0.0, num_classes: int | None = None,
                 use_scale_shift_norm: bool = False, time_scale: float = 1000.0,
                 out_channels: int | None = None, interval_conditioned: bool = False,
                 precondition: dict | None = None):
        super().__init__()
        _check_config("in_channels", in_channels)
        _check_config("image_size", image_size)
        _check_config("model_channels", model_channels)
        _check_config("num_res_blocks", num_res_blocks)
        _check_config("num_heads", num_heads)
        channel_mult = [_check_config("channel_mult entries", m) for m in channel_mult]
        if not channel_mult:
            raise ValueError("channel_mult must hold at least one level.")
        attention_resolutions = sorted({_check_config("attention_resolutions entries", r)
                                        for r in attention_resolutions}, reverse=True)
        if num_classes is not None:
            _check_config("num_classes", num_classes)
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        if not (isinstance(time_scale, (int, float)) and math.isfinite(time_scale)
                and time_scale > 0):
            raise ValueError(f"time_scale must be a finite number > 0, got {time_scale!r}.")
        if out_channels is None:
            out_channels = in_channels
        _check_config("out_channels", out_channels)
        self.config = dict(in_channels=in_channels, image_size=image_size,
                           model_channels=model_channels, channel_mult=list(channel_mult),
                           num_res_blocks=num_res_blocks,
                           attention_resolutions=list(attention_resolutions),
                           num_heads=num_heads, dropout=float(dropout), num_classes=num_classes,
                           use_scale_shift_norm=bool(use_scale_shift_norm),
                           time_scale=float(time_scale), out_channels=out_channels)
        if interval_conditioned:  # only then: every other model's config stays as it was
            self.config["interval_conditioned"] = True
        self.preconditioner = None
        if precondition is not None:
            if not isinstance(precondition, dict) or set(precondition) != set(PRECONDITION_KEYS):
                raise ValueError(f"precondition must be None or a dict with keys {PRECONDITION_KEYS}, "
                                 f"got {precondition!r}.")
            self.preconditioner = KacPreconditioner(**precondition)
            self.config["precondition"] = dict(precondition)
        self.interval_conditioned = bool(interval_conditioned)
        self.num_classes = num_classes
        self.sample_shape = (in_channels, image_size, image_size)
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.time_scale = float(time_scale)

        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes + 1, emb_dim)
        if interval_conditioned:
            self.interval_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(),
                                                _zero(nn.Linear(emb_dim, emb_dim)))

        def res(ch_in, ch_out):
            return ResBlock(ch_in, emb_dim, dropout, ch_out, use_scale_shift_norm)

        def attn(ch):
            return AttentionBlock(ch, num_heads)

        sizes = [image_size]  # spatial size per level: stride-2 convs give ceil(size / 2)
        for _ in channel_mult[1:]:
            sizes.append((sizes[-1] + 1) // 2)
        unused = [r for r in attention_resolutions if r not in sizes]
        if unused:
            raise ValueError(f"attention_resolutions {unused} match no level: the levels of a "
                             f"{image_size}x{image_size} input are {sizes} (spatial sizes, not "
                             f"down-sampling factors).")
        self.level_sizes = tuple(sizes)

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if sizes[level] in attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_chans.append(ch)
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), mult * model_channels)]
                ch = mult * model_channels
                if sizes[level] in attention_resolutions:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(),
                                 _zero(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None,
                interval=None) -> torch.Tensor:
        """x (B, C, H, W) float, t (B,) raw times in [0, T] (or a number), y (B,) long labels in
        [0, num_classes] (num_classes = null label) or None (null label for all), interval (B,)
        or a number in [0, t] (interval-conditioned models only; None = 0) -> (B, C', H, W)
        velocity in x's dtype."""
        t, y = check_inputs(x, t, y, feature_shape=(self.in_channels, None, None),
                            num_classes=self.num_classes)
        dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(t, self.model_channels, self.time_scale)
                              .to(dtype))
        interval = interval_features(self, x, interval, self.model_channels)
        if interval is not None:
            emb = emb + self.interval_embed(interval.to(dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        if self.preconditioner is not None:
            c_in, c_out = (c[:, None, None, None] for c in self.preconditioner(t))
        h, skips = (x if self.preconditioner is None else c_in * x).to(dtype), []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb, skips[-1].shape[-2:] if skips else None)
        if self.preconditioner is not None:
            return (c_out * self.out(h)).to(x.dtype)
        return self.out(h).to(x.dtype)

    def extra_repr(self) -> str:
        return f"config={self.config}"
