"""Checkpoints: one safetensors file holding the weights, EMA weights and optimizer tensors, with
everything else (process, model config, step, data order, optimizer hyper-parameters) as JSON in
its metadata. Written to a temporary file, fsynced, then renamed over the old one: a kill at any
moment leaves either the previous checkpoint or the new one, never a mix."""
from __future__ import annotations

import json
import os
import tempfile

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT = "kacfast-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, corrupt or for another model."""


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Split optimizer.state_dict() into tensors (by flat key) and a JSON-able remainder."""
    state = optimizer.state_dict()
    tensors, per_param = {}, {}
    for pid, slots in state["state"].items():
        per_param[str(pid)] = {}
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{pid}/{name}"] = value.detach().cpu().contiguous()
                per_param[str(pid)][name] = None
            else:
                per_param[str(pid)][name] = value
    return tensors, {"param_groups": state["param_groups"], "state": per_param}


def _restore_optimizer(optimizer, meta: dict, tensors: dict) -> None:
    state = {}
    for pid, slots in meta["state"].items():
        state[int(pid)] = {name: (tensors[f"optim/{pid}/{name}"] if value is None else value)
                           for name, value in slots.items()}
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(path: str, *, model: torch.nn.Module, ema: torch.nn.Module | None,
                    optimizer: torch.optim.Optimizer | None, meta: dict) -> None:
    """Atomically write model / EMA / optimizer tensors and `meta` (JSON-able) to `path`."""
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema/{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    full_meta = dict(meta)
    if optimizer is not None:
        opt_tensors, full_meta["optimizer"] = _optimizer_tensors(optimizer)
        tensors.update(opt_tensors)
    header = {"format": FORMAT, "meta": json.dumps(full_meta, sort_keys=True)}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def _prefixed(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _check_fits(module: torch.nn.Module, state: dict, path: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shapes {wrong[:3]}.")


def restore(path: str, *, model, ema=None, optimizer=None) -> dict:
    """Load a checkpoint into model / EMA / optimizer, all or nothing; returns its meta.

    Everything is checked before any module changes, so a bad file never half-loads.
    """
    meta, tensors = read_checkpoint(path)
    targets = [(m, _prefixed(tensors, prefix)) for m, prefix in ((model, "model/"), (ema, "ema/"))
               if m is not None]
    for module, state in targets:
        _check_fits(module, state, path)
    if optimizer is not None and "optimizer" not in meta:
        raise CheckpointError(f"checkpoint {path} holds no optimizer state to resume from.")
    for module, state in targets:
        module.load_state_dict(state)
    if optimizer is not None:
        _restore_optimizer(optimizer, meta["optimizer"], tensors)
    return meta


def export_weights(path: str, out: str, *, ema: bool = True) -> dict:
    """Write a sampling-only copy of a run's checkpoint: the EMA (or raw) weights as the model and
    the run's metadata without optimizer or data-order state. The result loads with load_trained
    (and load_pretrained) like the run itself; returns its meta."""
    from kacfast.training.load import load_trained
    model, meta = load_trained(path, ema=ema)
    kept = {k: v for k, v in meta.items() if k not in ("optimizer", "data_order")}
    # a shipped file should not carry the exporting machine's paths
    kept["run"] = {k: (os.path.basename(v) if k == "teacher" else v) for k, v in kept.get("run", {}).items()}
    kept["exported"] = {"from_step": meta.get("step"), "weights": "ema" if ema else "model"}
    save_checkpoint(out, model=model, ema=None, optimizer=None, meta=kept)
    return kept
