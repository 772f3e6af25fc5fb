"""Guided sampler step: the fused op against eager PyTorch, torch.compile of the same update, and a
plain copy of the same bytes (the memory-bandwidth ceiling), side by side in one run.

    python -m pytest benchmarks/suites/test_bench_step.py --benchmark-json=step.json
    python benchmarks/suites/report.py step.json

Workload: batch 256 of 3x32x32 float32 images, guidance 1.5 (v is the (2B, ...) [cond; uncond]
pair); "euler" reads x and v and writes x'; "ab2" also reads v_prev and writes v_mix.
"""
import pytest
import torch

from kacfast import ops

SHAPE = (256, 3, 32, 32)
W, H = 1.5, 0.01
ALPHA, BETA = 1.25, -0.25
ROUNDS = 100


def make_inputs():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=gen)
    v = torch.randn((2 * SHAPE[0],) + SHAPE[1:], generator=gen)
    v_prev = torch.randn(SHAPE, generator=gen)
    return x, v, v_prev


def eager_step(x, v, v_prev, ab2: bool):
    v_cond, v_uncond = v.chunk(2)
    v_mix = v_uncond + W * (v_cond - v_uncond)
    if ab2:
        return x - H * (ALPHA * v_mix + BETA * v_prev), v_mix
    return x - H * v_mix, None


_compiled_step = torch.compile(eager_step, fullgraph=True)


def bytes_moved(ab2: bool) -> int:
    """Bytes the step must read and write: x, v (2B) [+ v_prev] in; x' [+ v_mix] out."""
    n = torch.Size(SHAPE).numel() * 4
    return n * (1 + 2 + 1) + (2 * n if ab2 else 0)


def record(benchmark, ab2: bool):
    benchmark.extra_info["bytes_per_s"] = bytes_moved(ab2) / benchmark.stats.stats.median
    benchmark.extra_info["elements_per_s"] = torch.Size(SHAPE).numel() / benchmark.stats.stats.median


@pytest.mark.parametrize("variant", ["euler", "ab2"])
def test_copy_ceiling(benchmark, variant):
    """A plain copy moving the same number of bytes (half read, half written)."""
    ab2 = variant == "ab2"
    n_floats = bytes_moved(ab2) // 4 // 2
    src, dst = torch.randn(n_floats), torch.empty(n_floats)
    benchmark.group = f"step-{variant}"
    benchmark.extra_info["baseline"] = True
    benchmark.pedantic(dst.copy_, args=(src,), rounds=ROUNDS, warmup_rounds=3)
    record(benchmark, ab2)


@pytest.mark.parametrize("variant", ["euler", "ab2"])
@pytest.mark.parametrize("impl", ["fused", "eager", "compiled"])
def test_step(benchmark, impl, variant):
    ab2 = variant == "ab2"
    x, v, v_prev = make_inputs()
    if impl == "fused":
        backend = "cpu" if "cpu" in ops.available_backends("cpu") else "torch"
        benchmark.name = f"fused ({backend})"

        def run():
            with ops.use_backend(backend):
                if ab2:
                    return ops.guided_step(x, v, v_prev, guidance=W, h=H, alpha=ALPHA, beta=BETA,
                                           return_v=True)
                return ops.guided_step(x, v, guidance=W, h=H)
    else:
        fn = eager_step if impl == "eager" else _compiled_step

        def run():
            return fn(x, v, v_prev, ab2)
    benchmark.group = f"step-{variant}"
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=3)
    record(benchmark, ab2)
