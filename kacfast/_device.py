"""What the host CPU can do, for choices shared by training and sampling."""
from __future__ import annotations

import functools
import sys
import warnings

import torch

# x86 (AVX512-BF16, AMX) and Arm (FEAT_BF16) names of the bf16 dot-product instructions in
# /proc/cpuinfo; without them CPU bf16 matmuls are emulated and run slower than float32.
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache
def cpu_has_bf16() -> bool:
    """True if the CPU has native bf16 instructions (read from /proc/cpuinfo; False where that
    file is missing, e.g. on macOS or Windows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return not _BF16_FLAGS.isdisjoint(value.split())
    except OSError:
        pass
    return False


# Names a user may give for the network's autocast dtype (None and the float32 names: no autocast).
_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
           "float16": torch.float16, "half": torch.float16, "fp32": None, "float32": None}


def network_dtype(dtype, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a network run from a user's `dtype` (None, a torch dtype or a name in
    _DTYPES): torch.bfloat16, torch.float16 or None (float32). Warns once when the CPU would
    emulate bf16 (slower than float32 there)."""
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or a torch dtype, got {dtype!r}.")
        dtype = _DTYPES[dtype.lower()]
    if dtype == torch.float32:
        dtype = None
    if dtype not in (None, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be torch.bfloat16, torch.float16 or None (float32), got {dtype!r}.")
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_bf16():
        warnings.warn("this CPU has no native bf16 instructions: a bf16 network runs emulated, "
                      "slower than float32 (measured 20x slower on an AVX2 CPU); pass dtype=None.",
                      stacklevel=3)
    return dtype


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(compile) -> str | None:
    """A torch.compile mode from a user's `compile` (False/None: None; True: "default"; or a mode
    name); raises where torch.compile cannot run in this Python."""
    if compile is None or compile is False:
        return None
    mode = "default" if compile is True else compile
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be a bool or one of {COMPILE_MODES}, got {compile!r}.")
    if not torch._dynamo.is_dynamo_supported():
        raise RuntimeError(f"torch.compile cannot run in this Python ({sys.version.split()[0]}) "
                           f"with torch {torch.__version__}: use compile=False.")
    return mode
