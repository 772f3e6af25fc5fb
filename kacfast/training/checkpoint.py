"""Training checkpoints: the model, EMA and optimizer tensors of a run in one file (the format and
the atomic writer are kacfast.checkpoints'), and all-or-nothing restore for exact resume."""
from __future__ import annotations

import torch

from kacfast.checkpoints import CHECKPOINT_NAME, CheckpointError, read_checkpoint, write_checkpoint

__all__ = ["CHECKPOINT_NAME", "CheckpointError", "save_checkpoint", "restore", "read_checkpoint"]


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
    write_checkpoint(path, tensors, full_meta)


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
