"""Rebuild a trained model from a run directory (or checkpoint file) for sampling."""
from __future__ import annotations

import os

import torch

from kacfast.models import model_from_config
from kacfast.training.checkpoint import CHECKPOINT_NAME, CheckpointError, read_checkpoint
from kacfast.training.objectives import KacObjective, objective_from_description


def load_trained(path: str, *, ema: bool = True, device=None) -> tuple[torch.nn.Module, dict]:
    """(model, meta) from a run directory or checkpoint file; EMA weights by default.

    A Kac model gets `kac_process` (and `kac_grid` when the checkpoint is a distilled student), so
    kacfast.sample(model, steps) needs nothing else.
    """
    file = os.path.join(path, CHECKPOINT_NAME) if os.path.isdir(path) else path
    meta, tensors = read_checkpoint(file)
    spec = meta.get("model") or {}
    if not spec.get("kind") or spec.get("config") is None:
        raise CheckpointError(f"{file} does not record its model architecture.")
    model = model_from_config(spec["kind"], spec["config"])
    prefix = "ema/" if ema and any(k.startswith("ema/") for k in tensors) else "model/"
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{file}: weights do not match the recorded architecture "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}).")
    objective = objective_from_description(meta.get("objective", {}))
    if isinstance(objective, KacObjective):
        model.kac_process = objective.process
    if meta.get("kac_grid") is not None:
        model.kac_grid = list(meta["kac_grid"])
    return model.to(device or "cpu").eval().requires_grad_(False), meta
