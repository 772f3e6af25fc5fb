"""Velocity networks: `model(x, t, y=None) -> v` with t raw in [0, T] and null label num_classes.

Every model has `kind` ("unet" or "mlp"), `num_classes`, `sample_shape` and `config`, a JSON-able
dict such that `model_from_config(model.kind, model.config)` rebuilds the same architecture (save
both next to the weights).

Presets (`build_model(name, **overrides)`; an override replaces a config entry):
    mlp           2-D toys: width 256, depth 4 (215k params), unconditional unless num_classes=.
    unet-tiny     MNIST 28x28x1 (or 8x8 digits with image_size=8): 32 ch, (1, 2), 1 ResBlock/level,
                  attention at the lowest resolution only, 10 classes (0.70M params).
    unet-small    MNIST 28x28x1: 64 ch, (1, 2, 2), 2 ResBlocks/level, attention at the lowest
                  resolution (7x7 for 28x28), dropout 0.1, 10 classes (6.5M params).
    unet-cifar10  the reference CIFAR-10 network: 32x32x3, 128 ch, (1, 2, 2, 2), 2 ResBlocks/level,
                  attention at 16x16, 4 heads, dropout 0.1, 10 classes (35.75M params).
    diffusers-unet-tiny
                  a diffusers UNet2DModel of unet-tiny's size (32 ch, (1, 2), 1 ResBlock/level,
                  attention at the lowest resolution and in the middle, 10 classes); kind
                  "diffusers" (kacfast.integrations.diffusers.DiffusersUNet, needs
                  kacfast[diffusers]). Any UNet2DModel config.json trains through the CLI's
                  --model diffusers:CONFIG.json.
For the UNet presets the attention resolutions follow `image_size` / `channel_mult` overrides
(they are stored as levels, PRESETS[name]["attention_levels"]) unless attention_resolutions is
overridden.
"""
from __future__ import annotations

import copy
import importlib
import inspect

import torch
from torch import nn

from kacfast.models.mlp import MLP
from kacfast.models.unet import UNet

__all__ = ["UNet", "MLP", "PRESETS", "MODELS", "build_model", "model_from_config", "model_class",
           "is_flow_map", "as_flow_map"]

#: kind -> network class, or "module:Class" for one behind an optional extra (imported on use)
MODELS = {"unet": UNet, "mlp": MLP, "diffusers": "kacfast.integrations.diffusers:DiffusersUNet"}

PRESETS: dict[str, dict] = {
    "mlp": {"kind": "mlp",
            "config": dict(dim=2, width=256, depth=4, num_classes=None, emb_dim=64)},
    "unet-tiny": {"kind": "unet", "attention_levels": [-1],
                  "config": dict(in_channels=1, image_size=28, model_channels=32,
                                 channel_mult=[1, 2], num_res_blocks=1, num_heads=1,
                                 dropout=0.0, num_classes=10)},
    "unet-small": {"kind": "unet", "attention_levels": [-1],
                   "config": dict(in_channels=1, image_size=28, model_channels=64,
                                  channel_mult=[1, 2, 2], num_res_blocks=2, num_heads=4,
                                  dropout=0.1, num_classes=10)},
    "unet-cifar10": {"kind": "unet", "attention_levels": [1],
                     "config": dict(in_channels=3, image_size=32, model_channels=128,
                                    channel_mult=[1, 2, 2, 2], num_res_blocks=2, num_heads=4,
                                    dropout=0.1, num_classes=10)},
    "diffusers-unet-tiny": {"kind": "diffusers",
                            "config": dict(in_channels=1, image_size=28, num_classes=10,
                                           block_out_channels=[32, 64], layers_per_block=1,
                                           down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                                           up_block_types=["AttnUpBlock2D", "UpBlock2D"],
                                           attention_head_dim=64, dropout=0.0)},
}


def _level_sizes(image_size: int, levels: int) -> list[int]:
    sizes = [image_size]
    for _ in range(levels - 1):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def model_class(kind: str) -> type:
    """The network class of `kind` (importing an optional extra's module on first use)."""
    if kind not in MODELS:
        raise ValueError(f"kind must be one of {tuple(MODELS)}, got {kind!r}.")
    entry = MODELS[kind]
    if isinstance(entry, str):
        module, name = entry.split(":")
        entry = getattr(importlib.import_module(module), name)
    return entry


def model_from_config(kind: str, config: dict) -> nn.Module:
    """Rebuild a model from its `kind` and `config` (e.g. read back from a checkpoint's JSON)."""
    cls = model_class(kind)
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}.")
    try:
        return cls(**config)
    except TypeError as err:  # unknown / missing keyword
        raise ValueError(f"config does not fit a {kind!r} model: {err}") from None


def build_model(preset: str, **overrides) -> nn.Module:
    """Build a preset network (see the module docstring), e.g.
    `build_model("unet-tiny", image_size=8)` or `build_model("mlp", num_classes=8)`."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}.")
    entry = PRESETS[preset]
    kind, config = entry["kind"], copy.deepcopy(entry["config"])
    signature = inspect.signature(model_class(kind)).parameters
    params = list(signature)
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values())
    unknown = [] if open_ended else sorted(set(overrides) - set(params))
    if unknown:
        raise ValueError(f"unknown override(s) {unknown} for preset {preset!r}; a {kind!r} model "
                         f"takes {params}.")
    config.update(overrides)
    if "attention_levels" in entry and "attention_resolutions" not in overrides:
        sizes = _level_sizes(config["image_size"], len(config["channel_mult"]))
        config["attention_resolutions"] = sorted({sizes[i] for i in entry["attention_levels"]})
    return model_from_config(kind, config)


def is_flow_map(model) -> bool:
    """Whether `model` is interval-conditioned: `model(x, t, y, interval=h)` is the average velocity
    over [t - h, t], so a step is x_{t-h} = x_t - h model(x_t, t, y, interval=h)."""
    return bool(getattr(model, "interval_conditioned", False))


def as_flow_map(model: nn.Module) -> nn.Module:
    """An interval-conditioned copy of a "unet" or "mlp" model: the same weights plus a new interval
    embedding whose last layer is zero, so it returns `model`'s velocity for every interval until
    trained (a flow-map student starts as its teacher). Facts, device and dtype are kept; a model
    that already is a flow map is copied."""
    if is_flow_map(model):
        return copy.deepcopy(model)
    kind = getattr(model, "kind", None)
    if kind not in ("unet", "mlp"):
        raise ValueError(f"interval conditioning is built into the 'unet' and 'mlp' models, not "
                         f"{kind!r}.")
    flow_map = model_from_config(kind, {**model.config, "interval_conditioned": True})
    missing, unexpected = flow_map.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith(("interval_embed.", "interval_proj.")) for k in missing):
        raise ValueError(f"{kind} weights do not fit its flow map: missing {missing}, unexpected "
                         f"{unexpected}.")
    reference = next(model.parameters(), torch.empty(0))
    flow_map.to(device=reference.device, dtype=reference.dtype).train(model.training)
    if hasattr(model, "kacfast_facts"):
        flow_map.kacfast_facts = model.kacfast_facts
    return flow_map
