"""What the host CPU can do, for choices shared by training and sampling."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys

import torch

from kacfast._warnings import warn

# x86 (AVX512-BF16, AMX) and Arm (FEAT_BF16) names of the bf16 dot-product instructions in
# /proc/cpuinfo; without them CPU bf16 matmuls are emulated and run slower than float32.
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where that file is missing, e.g. on
    macOS or Windows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    """True if the CPU has native bf16 instructions."""
    return not _BF16_FLAGS.isdisjoint(_cpu_flags())


def cpu_description() -> str:
    """The CPU's model name, the SIMD level torch dispatches to, and its bf16 units (native bf16
    dot products; AMX tiles, which oneDNN uses for bf16 convolutions and matmuls), for benchmark
    reports."""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{model} ({torch.backends.cpu.get_cpu_capability()}{cpu_bf16_units()})"


def cpu_bf16_units() -> str:
    """' + native bf16 + AMX', ' + native bf16' or ', no native bf16': what a report appends to
    the SIMD level."""
    if not cpu_has_bf16():
        return ", no native bf16"
    return " + native bf16" + (" + AMX" if "amx_bf16" in _cpu_flags() else "")


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
# glibc's own ceiling for its dynamic mmap threshold on 64-bit: activations of the shipped networks
# stay under it, and larger blocks are still mapped (and returned) as glibc does by default
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 2**31 - 1  # the largest C int: the heap's free top is never handed back
# a user's own malloc settings, which the tuning must not override
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


@functools.cache
def tune_cpu_allocator() -> bool:
    """Let glibc's malloc keep freed memory (blocks up to 32 MiB) in the process instead of
    returning it to the OS, for the whole process and the rest of its life.

    A network call on the CPU frees and reallocates its activations every time; by default the
    large ones often go back to the OS and return as fresh pages that fault on first touch
    (25,000-840,000 faults per call of the 28x28 pair at batch 200; 1.08-1.38x faster with this
    on the VM measured, benchmarks/experiments/cpu_allocator.py). With it, repeated calls reuse
    the same memory and the process keeps its peak footprint. `kacfast` CLI commands call it;
    call it once in your own sampling or training script. Returns True where applied; False, and
    changes nothing, off glibc Linux, under another malloc (an LD_PRELOADed jemalloc or tcmalloc)
    or where the environment already sets glibc's malloc tunables."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in _MALLOC_ENV):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return False
    process = ctypes.CDLL(None)
    if not hasattr(libc, "mallopt") or (ctypes.cast(process.malloc, ctypes.c_void_p).value
                                        != ctypes.cast(libc.malloc, ctypes.c_void_p).value):
        return False  # the process's malloc is not glibc's: mallopt would change nothing
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mmap_set = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    trim_set = libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    return bool(mmap_set and trim_set)


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
        warn("this CPU has no native bf16 instructions: a bf16 network runs emulated, slower than "
             "float32 (measured 20x slower on an AVX2 CPU); pass dtype=None.")
    return dtype


@functools.cache
def _inductor_cpu_simdlen() -> int:
    """The vector width (bits) inductor's C++ kernels use on this CPU by default (0 if unknown)."""
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa
        return pick_vec_isa().bit_width()
    except Exception:  # private API: a torch without it keeps the default
        return 0


def wide_kernels_miscompile(device: torch.device, dtype: torch.dtype | None) -> bool:
    """True where inductor's 512-bit CPU kernels miscompile a bf16 / fp16 UNet.

    With torch 2.13 on an AVX-512 CPU (Intel Xeon with AMX, 2026-12-07), inductor's 512-bit
    kernels (VecAMX and VecAVX512 alike) gave NaN for the first thread's share of the batch in
    the bf16-autocast UNet with frozen weights (bisected to the cast that feeds the GroupNorm
    after the attention block, in the channels-last layout freezing picks), and NaN gradients
    in training; float32 agrees with eager. Samplers then compile without freezing (correct, and
    faster there than frozen 256-bit kernels); training compiles 256-bit kernels
    (`narrow_cpu_kernels`).
    """
    return (device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)
            and torch._inductor.config.cpp.simdlen is None and _inductor_cpu_simdlen() > 256)


@contextlib.contextmanager
def narrow_cpu_kernels(device: torch.device, dtype: torch.dtype | None):
    """Inductor's CPU kernels at most 256 bits wide where `wide_kernels_miscompile`; any compile
    or recompile must run inside this context."""
    if wide_kernels_miscompile(device, dtype):
        with torch._inductor.config.patch({"cpp.simdlen": 256}):
            yield
    else:
        yield


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
