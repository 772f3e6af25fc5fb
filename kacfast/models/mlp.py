"""Residual MLP velocity model for low-dimensional toy data (2-D mixtures, moons, ...)."""
from __future__ import annotations

import math

import torch
from torch import nn

from kacfast.models.unet import (_check_config, _zero, check_inputs, interval_features,
                                 timestep_embedding)

__all__ = ["MLP"]


class MLP(nn.Module):
    """`model(x, t, y=None) -> v` for x, v (B, dim), t (B,) raw times in [0, T].

    Input features: cat([x, sinusoidal(t) (emb_dim), label embedding (emb_dim, conditional models
    only)]) -> Linear(width) -> (depth - 1) residual layers h + Linear(SiLU(h)) -> SiLU ->
    Linear(dim), the last one zero-initialized (a fresh model returns zeros).

    Args:
        dim: data dimension (sample_shape = (dim,)).
        width: hidden width.
        depth: number of hidden Linear layers of `width` outputs (>= 1).
        num_classes: number of classes, or None (unconditional). The label embedding has
            num_classes + 1 rows: row num_classes is the null label; y=None uses it.
        emb_dim: width of the time embedding and of the label embedding.
        time_scale: multiplies raw t inside the sinusoidal embedding (as in UNet; default 1000
            suits t in [0, 1]).
        interval_conditioned: a flow map (as in UNet): forward also takes `interval` h and
            returns the average velocity over [t - h, t]; a zero-initialized projection of h's
            sinusoidal embedding is added to the first hidden layer.
    Attributes: `kind` ("mlp"), `num_classes`, `sample_shape`, `config` (`MLP(**config)` rebuilds).
    """

    kind = "mlp"

    def __init__(self, dim: int = 2, width: int = 256, depth: int = 4,
                 num_classes: int | None = None, emb_dim: int = 64, time_scale: float = 1000.0,
                 interval_conditioned: bool = False):
        super().__init__()
        _check_config("dim", dim)
        _check_config("width", width)
        _check_config("depth", depth)
        _check_config("emb_dim", emb_dim, low=2)
        if num_classes is not None:
            _check_config("num_classes", num_classes)
        if not (isinstance(time_scale, (int, float)) and math.isfinite(time_scale)
                and time_scale > 0):
            raise ValueError(f"time_scale must be a finite number > 0, got {time_scale!r}.")
        self.config = dict(dim=dim, width=width, depth=depth, num_classes=num_classes,
                           emb_dim=emb_dim, time_scale=float(time_scale))
        if interval_conditioned:
            self.config["interval_conditioned"] = True
        self.interval_conditioned = bool(interval_conditioned)
        self.num_classes = num_classes
        self.sample_shape = (dim,)
        self.dim, self.emb_dim, self.time_scale = dim, emb_dim, float(time_scale)
        in_features = dim + emb_dim
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes + 1, emb_dim)
            in_features += emb_dim
        self.in_proj = nn.Linear(in_features, width)
        if interval_conditioned:
            self.interval_proj = _zero(nn.Linear(emb_dim, width))
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.act = nn.SiLU()
        self.out = _zero(nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None,
                interval=None) -> torch.Tensor:
        """x (B, dim) float, t (B,) raw times (or a number), y (B,) long in [0, num_classes] or
        None, interval (B,) or a number in [0, t] (interval-conditioned models; None = 0) ->
        (B, dim) velocity in x's dtype."""
        t, y = check_inputs(x, t, y, feature_shape=(self.dim,), num_classes=self.num_classes)
        dtype = self.in_proj.weight.dtype
        feats = [x.to(dtype), timestep_embedding(t, self.emb_dim, self.time_scale).to(dtype)]
        if y is not None:
            feats.append(self.label_emb(y))
        h = self.in_proj(torch.cat(feats, dim=-1))
        interval = interval_features(self, x, interval, self.emb_dim)
        if interval is not None:
            h = h + self.interval_proj(interval.to(dtype))
        for layer in self.blocks:
            h = h + layer(self.act(h))
        return self.out(self.act(h)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"config={self.config}"
