"""Triton kernels (GPU; on CPU tensors only under TRITON_INTERPRET=1, set before import).

Each op is a torch.library.custom_op in the `kacfast` namespace (triton_*), so torch.compile and
opcheck treat it like the C++ ops.
"""
from __future__ import annotations

import importlib.util
import os

import torch

# Looked up once at import: torch.compile cannot trace importlib (torch 2.11 refuses find_spec).
_INSTALLED = importlib.util.find_spec("triton") is not None


def available(device: torch.device | str = "cuda") -> bool:
    """True when Triton is installed and can run on tensors of `device`."""
    if not _INSTALLED:
        return False
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available()
    return dev.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def __getattr__(name):
    # Import the kernels only when an op is asked for: importing triton costs about a second.
    if name in ("kac_velocity", "kac_noise", "kac_noise_seeded", "kac_noise_target"):
        from kacfast.ops.triton import kac
        return getattr(kac, name)
    if name == "kac_guided_step":
        from kacfast.ops.triton import step
        return step.kac_guided_step
    raise AttributeError(name)
