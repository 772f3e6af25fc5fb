"""Rebuild a trained model from a run directory (or checkpoint file) for sampling."""
from __future__ import annotations

import os

import torch

from kacfast.models import model_from_config
from kacfast.process import KacProcess
from kacfast.training.checkpoint import CHECKPOINT_NAME, CheckpointError, read_checkpoint


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
    objective = meta.get("objective", {})
    if "process" in objective:  # a Kac teacher or a distilled student
        model.kac_process = KacProcess.from_dict(objective["process"])
    if "grid" in objective:  # a distilled student: the step grid it was trained for
        model.kac_grid = list(objective["grid"])
    return model.to(device or "cpu").eval().requires_grad_(False), meta
