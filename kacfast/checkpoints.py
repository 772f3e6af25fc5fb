"""Inference I/O: checkpoint files, the facts a trained model carries, loading and exporting.

A checkpoint is one safetensors file holding the weights (and, for training runs, EMA weights
and optimizer tensors), with everything else (process, model config, step, ...) as JSON in its
metadata. This module imports no training code: ``kacfast.load_pretrained`` + ``kacfast.sample``
never load ``kacfast.training``. Writing happens through a temporary file, fsynced and renamed
over the old one: a kill at any moment leaves the previous file or the new one, never a mix.
"""
from __future__ import annotations

import json
import os
import uuid
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from kacfast.facts import ModelFacts, attach_facts, facts_of
from kacfast.models import model_from_config
from kacfast.process import KacProcess

__all__ = ["CHECKPOINT_NAME", "CheckpointError", "ModelFacts", "facts_of", "attach_facts",
           "write_checkpoint", "read_checkpoint", "load_trained", "export_weights"]

FORMAT = "kacfast-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, corrupt or for another model."""


def average_prefix(name: str) -> str:
    """The tensor-key prefix of a run's weight average `name` (a power-function EMA, "power0.1")."""
    return f"ema-{name}/"


def replace_atomically(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a unique temporary file beside ``path``, flush it to disk and rename
    it into place: a killed writer leaves no half file, and concurrent writers never clobber each
    other's temporary. The file gets the mode any new file gets under the process umask (0o644
    under the usual 0o022), whatever mode ``write`` leaves (safetensors leaves 0o600, unreadable to
    others once exported)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the kernel applies the umask
    try:
        mode = os.stat(tmp).st_mode & 0o777
        write(tmp)
        os.chmod(tmp, mode)
        move_into_place(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def move_into_place(tmp: str, path: str) -> None:
    """Flush the finished file ``tmp`` to disk, rename it to ``path`` (same folder) and flush the
    rename: after a crash or a power cut, ``path`` is the old file or the whole new one."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_file_atomically(tensors: dict[str, torch.Tensor], path: str, metadata: dict | None = None) -> None:
    """safetensors' save_file through `replace_atomically`."""
    replace_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def write_checkpoint(path: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Atomically write ``tensors`` (CPU, contiguous) and ``meta`` (JSON-able) to ``path``."""
    save_file_atomically(tensors, path, {"format": FORMAT, "meta": json.dumps(meta, sort_keys=True)})


def read_checkpoint(path: str) -> tuple[dict, dict]:
    """(meta, tensors) of a checkpoint file; CheckpointError with the reason if it is unusable."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}.")
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({exc}).") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a kacfast checkpoint (format {header.get('format')!r}).")
    try:
        meta = json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} has unreadable metadata ({exc}).") from None
    return meta, tensors


def _facts_from_meta(meta: dict) -> dict:
    objective = meta.get("objective", {})
    facts = {}
    if "process" in objective:  # a Kac teacher or a distilled student
        facts["process"] = KacProcess.from_dict(objective["process"])
    if "grid" in objective:  # a distilled student: the step grid it was trained for
        facts["grid"] = objective["grid"]
    if objective.get("absorbed_guidance") not in (None, 1.0):
        facts["absorbed_guidance"] = float(objective["absorbed_guidance"])
    if "prediction" in objective:  # a DDPM baseline that predicts v
        facts["prediction"] = objective["prediction"]
    return facts


def _weights_prefix(tensors: dict, ema: bool | str, file: str) -> str:
    """The key prefix of the weights `ema` selects (see load_trained)."""
    if isinstance(ema, str):
        prefix = average_prefix(ema)
        if not any(k.startswith(prefix) for k in tensors):
            kept = sorted({k.split("/")[0][len("ema-"):] for k in tensors if k.startswith("ema-")})
            if kept:
                what = ", ".join(kept)
            elif any(k.startswith("ema/") for k in tensors):
                what = "none besides its EMA"
            else:
                what = "none: it holds one set of weights"
            raise CheckpointError(f"{file} holds no weight average {ema!r} (averages it holds: {what}).")
        return prefix
    if not isinstance(ema, bool):
        raise TypeError(f"ema must be True, False or a weight average's name such as 'power0.1', got "
                        f"{ema!r}.")
    return "ema/" if ema and any(k.startswith("ema/") for k in tensors) else "model/"


def trained_on(meta: dict, where: str) -> str:
    """The dataset name a run's metadata records (``meta["run"]["data"]``); ValueError naming
    ``where`` (the checkpoint) if it records none."""
    data = meta.get("run", {}).get("data")
    if data is None:
        raise ValueError(f"{where} does not record the dataset it was trained on (meta['run']['data']).")
    return data


def load_trained(path: str, *, ema: bool | str = True, device=None) -> tuple[torch.nn.Module, dict]:
    """(model, meta) from a run directory or checkpoint file; EMA weights by default.

    ema: True (default) the run's EMA (the raw weights of a file without one), False the raw
    weights, or a power-function EMA's name ("power0.1") of a run trained with ema_lengths.

    The model comes in eval mode without gradients, with its :class:`ModelFacts` (process, a
    student's grid and absorbed guidance) attached, so ``kacfast.sample(model, steps)`` needs
    nothing else.
    """
    file = os.path.join(path, CHECKPOINT_NAME) if os.path.isdir(path) else path
    meta, tensors = read_checkpoint(file)
    spec = meta.get("model") or {}
    if not spec.get("kind") or spec.get("config") is None:
        raise CheckpointError(f"{file} does not record its model architecture.")
    model = model_from_config(spec["kind"], spec["config"])
    prefix = _weights_prefix(tensors, ema, file)
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{file}: weights do not match the recorded architecture "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}).")
    attach_facts(model, **_facts_from_meta(meta))
    return model.to(device or "cpu").eval().requires_grad_(False), meta


def export_weights(path: str, out: str, *, ema: bool | str = True) -> dict:
    """Write a sampling-only copy of a run's checkpoint: the weights `ema` selects (as load_trained:
    the EMA, the raw weights or a named power-function EMA) as the model and
    the run's metadata without optimizer, objective-optimizer (a discriminator's) or data-order
    state. The result loads with load_trained (and load_pretrained) like the run itself; returns
    its meta."""
    model, meta = load_trained(path, ema=ema)
    kept = {k: v for k, v in meta.items() if k not in ("optimizer", "objective_optimizers", "data_order")}
    # a shipped file should not carry the exporting machine's paths
    kept["run"] = {k: (os.path.basename(v) if k == "teacher" else v) for k, v in kept.get("run", {}).items()}
    kept["exported"] = {"from_step": meta.get("step"),
                        "weights": average_prefix(ema).rstrip("/") if isinstance(ema, str)
                        else "ema" if ema else "model"}
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_checkpoint(out, tensors, kept)
    return kept
