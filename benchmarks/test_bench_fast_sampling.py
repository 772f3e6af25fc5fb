"""Sampling speed where users run it, on the CPU: the shipped 1-step student and the 100-step guided
teacher, float32 eager against compiled (frozen weights) and bf16 autocast, and one call of 1,000
labels against the same 1,000 images sampled by hand in chunks of several sizes.

    python -m pytest benchmarks/test_bench_fast_sampling.py --benchmark-json=fast.json
    python benchmarks/report.py fast.json

Rows of one group make the same number of images (the by-hand rows from other seeds), so the
speed-up column compares images/s. extra_info:
images/s; the share of wall time outside the network (eager rows: timed around each network call;
compiled rows: 1 - the compiled network's own forward time, run as the sampler runs it (same
autocast, frozen graph), / the row's time, 1-step only); the
largest difference from the float32 eager samples (same seed); the first call's compile time.
The 1,000-label teacher rows use 10 guided steps instead of 100: chunking changes the cost of each
network call, not their number, so the ratios carry over and the run stays under 10 minutes.
"""
import time

import pytest
import torch

import kacfast
from kacfast._device import cpu_has_bf16
from kacfast.compiled import cached_sampler
from kacfast.sampling import guided_velocity_fn

from test_bench_sampling import TimedNet

ROWS = {  # name -> (steps, guidance)
    "student": (1, 1.0),
    "teacher": (100, 1.5),
}
BF16 = [False, True] if cpu_has_bf16() else [False]  # emulated bf16 is 20x slower: not a row


@pytest.fixture(scope="module")
def models():
    return {"student": kacfast.load_pretrained("mnist16-distillkac-1step"),
            "teacher": kacfast.load_pretrained("mnist16-kac-teacher")}


@pytest.fixture(scope="module")
def reference():
    return {}  # (model, batch) -> float32 eager samples, filled by the eager rows


def _labels(n):
    return torch.arange(n) % 10


@pytest.mark.parametrize("name", list(ROWS))
@pytest.mark.parametrize("batch", [64, 200])
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("bf16", BF16)
def test_sampler_speed(benchmark, models, reference, name, batch, compiled, bf16):
    steps, guidance = ROWS[name]
    model, labels = models[name], _labels(batch)
    timed = TimedNet(model)
    args = dict(labels=labels, guidance=guidance, seed=0, dtype=torch.bfloat16 if bf16 else None,
                compile=compiled)

    def run():
        return kacfast.sample(model if compiled else timed, steps, **args)
    start = time.perf_counter()
    out = run()  # warm-up: pays the compile
    first = time.perf_counter() - start
    timed.seconds = 0.0
    rounds = 3 if steps == 1 else 1
    benchmark.group = f"{name} ({steps} step{'s' * (steps > 1)}, guidance {guidance:g}), batch {batch}"
    benchmark.name = f"{'compiled' if compiled else 'eager'} {'bf16' if bf16 else 'float32'}"
    benchmark.extra_info["baseline"] = not compiled and not bf16
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=0)
    median = benchmark.stats.stats.median
    info = {"images_per_s": batch / median, "first_call_s": first}
    if not compiled:
        info["outside_network_share"] = max(0.0, 1 - timed.seconds / (benchmark.stats.stats.mean * rounds))
    elif steps == 1:
        plan = kacfast.sampling.plan_sampling(model, steps, labels=labels, guidance=guidance,
                                              dtype=args["dtype"])
        sampler = cached_sampler(model, plan, batch, "default")
        velocity = guided_velocity_fn(sampler._network, labels, guidance, plan.null_label,
                                      plan.dtype)
        x = torch.zeros((batch,) + model.sample_shape)
        with sampler._scope():
            forward = benchmark_median(lambda: velocity(x, 1.0))
        info["outside_network_share"] = max(0.0, 1 - forward / median)
    key = (name, batch)
    if not compiled and not bf16:
        reference[key] = out
    if key in reference:
        info["max_abs_diff_vs_fp32_eager"] = float((out - reference[key]).abs().max())
    benchmark.extra_info.update(info)


def benchmark_median(fn, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[repeats // 2]


LARGE = 1000
CHUNKED = {"student": (1, 1.0), "teacher": (10, 1.5)}


@pytest.mark.parametrize("name", list(CHUNKED))
@pytest.mark.parametrize("how", ["one call (default max_batch)", "one call, max_batch=1000",
                                 "by hand, chunks of 64", "by hand, chunks of 128",
                                 "by hand, chunks of 256", "by hand, chunks of 500"])
def test_large_request(benchmark, models, name, how):
    steps, guidance = CHUNKED[name]
    model, labels = models[name], _labels(LARGE)
    if how.startswith("by hand"):
        size = int(how.rsplit(" ", 1)[1])

        def run():
            return torch.cat([kacfast.sample(model, steps, labels=labels[i:i + size], seed=i,
                                             guidance=guidance, max_batch=size)
                              for i in range(0, LARGE, size)])
    else:
        max_batch = None if "default" in how else LARGE

        def run():
            return kacfast.sample(model, steps, labels=labels, seed=0, guidance=guidance,
                                  max_batch=max_batch)
    run()
    benchmark.group = f"{name} ({steps} step{'s' * (steps > 1)}, guidance {guidance:g}), {LARGE} labels"
    benchmark.name = how
    benchmark.extra_info["baseline"] = "default" in how
    benchmark.pedantic(run, rounds=3 if steps == 1 else 1, warmup_rounds=0)
    benchmark.extra_info["images_per_s"] = LARGE / benchmark.stats.stats.median
