"""Training checkpoints: the model, EMA and optimizer tensors of a run in one file (the format and
the atomic writer are kacfast.checkpoints'), and all-or-nothing restore for exact resume."""
from __future__ import annotations

import torch

from kacfast.checkpoints import (CHECKPOINT_NAME, CheckpointError, average_prefix, read_checkpoint,
                                 write_checkpoint)

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


def _split(objective_state: dict | None) -> tuple[dict, dict]:
    """An objective's parts (name -> module or optimizer) as (modules, optimizers)."""
    parts = objective_state or {}
    optimizers = {n: p for n, p in parts.items() if isinstance(p, torch.optim.Optimizer)}
    return {n: p for n, p in parts.items() if n not in optimizers}, optimizers


def _optimizer_slots(optimizer, objective_optimizers: dict) -> list[tuple]:
    """(optimizer, tensor-key prefix, meta keys) of every optimizer a checkpoint holds: the run's
    under meta["optimizer"], an objective's NAME under meta["objective_optimizers"][NAME]."""
    slots = [] if optimizer is None else [(optimizer, "optim/", ("optimizer",))]
    return slots + [(opt, f"objective/{name}/", ("objective_optimizers", name))
                    for name, opt in objective_optimizers.items()]


def _nested(meta: dict, keys: tuple) -> dict:
    """meta[keys[0]][keys[1]]..., created empty where missing."""
    for key in keys:
        meta = meta.setdefault(key, {})
    return meta


def _lookup(meta: dict, keys: tuple):
    """meta[keys[0]][keys[1]]..., or None where missing."""
    for key in keys:
        meta = meta.get(key) if isinstance(meta, dict) else None
    return meta


def save_checkpoint(path: str, *, model: torch.nn.Module, ema: torch.nn.Module | None,
                    optimizer: torch.optim.Optimizer | None, meta: dict,
                    objective_state: dict | None = None, averages: dict | None = None) -> None:
    """Atomically write model / EMA / optimizer tensors and `meta` (JSON-able) to `path`.

    objective_state: an objective's own trained parts, name -> module or optimizer (a
    discriminator and its optimizer), stored under objective/NAME/.
    averages: further weight averages, name -> module (power-function EMAs), under ema-NAME/."""
    tensors = _module_tensors(model, "model/")
    if ema is not None:
        tensors.update(_module_tensors(ema, "ema/"))
    for name, average in (averages or {}).items():
        tensors.update(_module_tensors(average, average_prefix(name)))
    modules, optimizers = _split(objective_state)
    for name, part in modules.items():
        tensors.update(_module_tensors(part, f"objective/{name}/"))
    full_meta = dict(meta)
    for opt, prefix, keys in _optimizer_slots(optimizer, optimizers):
        opt_tensors, opt_meta = _optimizer_tensors(opt, prefix)
        tensors.update(opt_tensors)
        _nested(full_meta, keys[:-1])[keys[-1]] = opt_meta
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


def restore(path: str, *, model, ema=None, optimizer=None, objective_state: dict | None = None,
            averages: dict | None = None) -> dict:
    """Load a checkpoint into model / EMA / optimizer (and an objective's own parts and further
    averages, as save_checkpoint's objective_state and averages), all or nothing; returns its meta.

    Everything is checked before any module changes, so a bad file never half-loads.
    """
    meta, tensors = read_checkpoint(path)
    modules, optimizers = _split(objective_state)
    targets = [(m, _prefixed(tensors, prefix)) for m, prefix in
               [(model, "model/"), (ema, "ema/")]
               + [(average, average_prefix(name)) for name, average in (averages or {}).items()]
               + [(part, f"objective/{name}/") for name, part in modules.items()] if m is not None]
    for module, state in targets:
        _check_fits(module, state, path)
    slots = _optimizer_slots(optimizer, optimizers)
    saved = []
    for opt, prefix, keys in slots:
        opt_meta = _lookup(meta, keys)
        if opt_meta is None:
            what = "optimizer state" if len(keys) == 1 else f"state for the objective's {keys[1]!r}"
            raise CheckpointError(f"checkpoint {path} holds no {what} to resume from.")
        _check_optimizer(opt, opt_meta, tensors, prefix, path)
        saved.append(opt_meta)
    for module, state in targets:
        module.load_state_dict(state)
    for (opt, prefix, _), opt_meta in zip(slots, saved):
        _restore_optimizer(opt, opt_meta, tensors, prefix)
    return meta
