"""Loads the compiled extension kacfast._C (which registers torch.ops.kacfast.*) and says once,
clearly, why the fast path is off when it cannot."""
from __future__ import annotations

import torch

from kacfast._warnings import warn

_module = None
_error: str | None = None
_warned = False

try:
    from kacfast import _C as _module  # noqa: F401  (import registers the operators)
except Exception as exc:  # ImportError, or an undefined symbol from a torch ABI mismatch
    _error = f"{type(exc).__name__}: {exc}"

# Read once here: torch.compile cannot trace a call into the pybind11 module (torch 2.11, CUDA build).
_BUILT_WITH_CUDA = _module is not None and bool(_module.built_with_cuda())


def available() -> bool:
    """True when the C++ operators are registered."""
    return _module is not None


def has_cuda() -> bool:
    """True when the extension was compiled with its CUDA kernels and a GPU is visible."""
    return _BUILT_WITH_CUDA and torch.cuda.is_available()


def library_path() -> str | None:
    """The loaded extension's file (what compiled graphs calling its operators depend on)."""
    return None if _module is None else _module.__file__


def why_unavailable() -> str | None:
    """The import error of the extension, or None when it loaded."""
    return _error


def warn_once() -> None:
    """One warning per process that the compiled kernels are missing and the reference runs."""
    global _warned
    if _module is None and not _warned:
        _warned = True
        warn("kacfast: the compiled extension kacfast._C is not available, so ops run on the "
             f"PyTorch reference (slow). Reason: {_error}. Rebuild with "
             "`pip install --no-build-isolation -e .`.", RuntimeWarning)
