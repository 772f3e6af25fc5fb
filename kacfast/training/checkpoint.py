"""Training checkpoints: the model, EMA and optimizer tensors of a run in one file (the format and
the atomic writer are kacfast.checkpoints'), and all-or-nothing restore for exact resume."""
from __future__ import annotations

import torch

from kacfast.checkpoints import CHECKPOINT_NAME, CheckpointError, read_checkpoint, write_checkpoint

__all__ = ["CHECKPOINT_NAME", "CheckpointError", "save_checkpoint", "restore", "read_checkpoint"]


def _optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str = "optim/") -> tuple[dict, dict]:
    """Split optimizer.state_dict() into tensors (by flat key under `prefix`) and a JSON-able
    remainder."""
    state = optimizer.state_dict()
    tensors, per_param = {}, {}
    for pid, slots in state["state"].items():
        per_param[str(pid)] = {}
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{pid}/{name}"] = value.detach().cpu().contiguous()
                per_param[str(pid)][name] = None
            else:
                per_param[str(pid)][name] = value
    return tensors, {"param_groups": state["param_groups"], "state": per_param}


def _restore_optimizer(optimizer, meta: dict, tensors: dict, prefix: str = "optim/") -> None:
    state = {}
    for pid, slots in meta["state"].items():
        state[int(pid)] = {name: (tensors[f"{prefix}{pid}/{name}"] if value is None else value)
                           for name, value in slots.items()}
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _check_optimizer(optimizer, meta: dict, tensors: dict, prefix: str, path: str) -> None:
    """Raise CheckpointError unless `meta` (and its tensors under `prefix`) load into `optimizer`:
    what load_state_dict would refuse only after the modules were already loaded."""
    groups, saved = optimizer.param_groups, meta["param_groups"]
    if len(groups) != len(saved) or any(len(g["params"]) != len(h["params"])
                                        for g, h in zip(groups, saved)):
        raise CheckpointError(f"checkpoint {path}: the optimizer state under {prefix!r} does not fit "
                              "this optimizer's parameter groups.")
    missing = sorted(f"{prefix}{pid}/{name}" for pid, slots in meta["state"].items()
                     for name, value in slots.items()
                     if value is None and f"{prefix}{pid}/{name}" not in tensors)
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks optimizer tensors {missing[:3]}.")


def _module_tensors(module: torch.nn.Module, prefix: str) -> dict:
    return {f"{prefix}{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(path: str, *, model: torch.nn.Module, ema: torch.nn.Module | None,
                    optimizer: torch.optim.Optimizer | None, meta: dict,
                    objective_state: dict | None = None) -> None:
    """Atomically write model / EMA / optimizer tensors and `meta` (JSON-able) to `path`.

    objective_state: an objective's own trained parts, name -> module or optimizer (a
    discriminator and its optimizer), stored under objective/NAME/."""
    tensors = _module_tensors(model, "model/")
    if ema is not None:
        tensors.update(_module_tensors(ema, "ema/"))
    full_meta = dict(meta)
    if optimizer is not None:
        opt_tensors, full_meta["optimizer"] = _optimizer_tensors(optimizer)
        tensors.update(opt_tensors)
    for name, part in (objective_state or {}).items():
        if isinstance(part, torch.optim.Optimizer):
            opt_tensors, full_meta.setdefault("objective_optimizers", {})[name] = _optimizer_tensors(
                part, f"objective/{name}/")
            tensors.update(opt_tensors)
        else:
            tensors.update(_module_tensors(part, f"objective/{name}/"))
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


def restore(path: str, *, model, ema=None, optimizer=None, objective_state: dict | None = None) -> dict:
    """Load a checkpoint into model / EMA / optimizer (and an objective's own parts, as
    save_checkpoint's objective_state), all or nothing; returns its meta.

    Everything is checked before any module changes, so a bad file never half-loads.
    """
    meta, tensors = read_checkpoint(path)
    parts = objective_state or {}
    modules = [(model, "model/"), (ema, "ema/")] + [
        (part, f"objective/{name}/") for name, part in parts.items()
        if not isinstance(part, torch.optim.Optimizer)]
    targets = [(m, _prefixed(tensors, prefix)) for m, prefix in modules if m is not None]
    for module, state in targets:
        _check_fits(module, state, path)
    if optimizer is not None and "optimizer" not in meta:
        raise CheckpointError(f"checkpoint {path} holds no optimizer state to resume from.")
    optimizers = {name: part for name, part in parts.items() if isinstance(part, torch.optim.Optimizer)}
    missing = sorted(set(optimizers) - set(meta.get("objective_optimizers", {})))
    if missing:
        raise CheckpointError(f"checkpoint {path} holds no state for the objective's {missing}.")
    if optimizer is not None:
        _check_optimizer(optimizer, meta["optimizer"], tensors, "optim/", path)
    for name, part in optimizers.items():
        _check_optimizer(part, meta["objective_optimizers"][name], tensors, f"objective/{name}/", path)
    for module, state in targets:
        module.load_state_dict(state)
    if optimizer is not None:
        _restore_optimizer(optimizer, meta["optimizer"], tensors)
    for name, part in optimizers.items():
        _restore_optimizer(part, meta["objective_optimizers"][name], tensors, f"objective/{name}/")
    return meta
