"""Sampling speed where users run it, on the CPU: the shipped 1-step student and the 100-step guided
teacher, float32 eager against compiled (frozen weights) and bf16 autocast, and one call of 1,000
labels against 1,000 images sampled by hand in chunks of several sizes.

    python -m pytest benchmarks/suites/test_bench_fast_sampling.py --benchmark-json=fast.json
    python benchmarks/suites/report.py fast.json

--pair 28 runs the 28x28 pair instead of the 16x16 one (about 3x as long); --tuned-allocator calls
kacfast.tune_cpu_allocator() first, as the kacfast CLI does (see cpu_allocator.py for both side by
side: the setting is process-wide).

Each test runs its rows interleaved, round by round (see `side_by_side`), and report.py prints
them as one table: images/s, speed-up over the first row, the share of wall time outside the
network (eager rows: timed around each network call; compiled 1-step rows: 1 - the compiled
network's own forward time, run as the sampler runs it, / the row's time), the largest difference
from the float32 eager samples (same seed) and the first call's time (the compile).
The 1,000-label teacher rows use 4 guided steps instead of 100: chunking changes the cost of each
network call, not their number, so the ratios carry over and the run stays under 15 minutes.
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
BF16 = torch.bfloat16
# (row, compile, dtype); emulated bf16 (no native instructions) is 20x slower: not a row there
VARIANTS = [("eager float32", False, None), ("compiled float32", True, None)]
if cpu_has_bf16():
    VARIANTS += [("eager bf16", False, BF16), ("compiled bf16", True, BF16)]


@pytest.fixture(scope="module")
def models(request):
    pair = request.config.getoption("--pair")
    return {"student": kacfast.load_pretrained(f"mnist{pair}-distillkac-1step"),
            "teacher": kacfast.load_pretrained(f"mnist{pair}-kac-teacher")}


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(benchmark, runs: dict, rounds: int, images: int) -> tuple[dict, dict]:
    """Each of `runs` (row -> callable) once per round, interleaved, so a machine whose speed
    drifts (this VM's does, by 20% within minutes) moves every row alike; the benchmark's own time
    is one whole round. extra_info["side_by_side"] gets the rows' median ms, images/s and
    speed-up over the first row. Returns (row -> median s, row -> total s)."""
    times = {row: [] for row in runs}

    def one_round():
        for row, run in runs.items():
            times[row].append(_seconds(run))
    benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=0)
    median = {row: sorted(t)[len(t) // 2] for row, t in times.items()}
    base = next(iter(median.values()))
    benchmark.extra_info["side_by_side"] = {
        row: {"median_ms": 1e3 * m, "images_per_s": images / m, "speed_up": base / m}
        for row, m in median.items()}
    return median, {row: sum(t) for row, t in times.items()}


@pytest.mark.parametrize("name", list(ROWS))
@pytest.mark.parametrize("batch", [64, 200])
def test_sampler_speed(benchmark, models, name, batch):
    steps, guidance = ROWS[name]
    model, labels = models[name], torch.arange(batch) % 10
    timed = TimedNet(model)
    runs, outputs, first = {}, {}, {}
    for row, compiled, dtype in VARIANTS:
        def run(compiled=compiled, dtype=dtype):
            return kacfast.sample(model if compiled else timed, steps, labels=labels,
                                  guidance=guidance, seed=0, dtype=dtype, compile=compiled)
        start = time.perf_counter()
        outputs[row] = run()  # warm-up: pays the compile
        first[row], runs[row] = time.perf_counter() - start, run
        if compiled and steps == 1:  # the compiled network alone, run as the sampler runs it
            plan = kacfast.sampling.plan_sampling(model, steps, labels=labels, dtype=dtype)
            sampler = cached_sampler(model, plan, batch, "default")
            velocity = guided_velocity_fn(sampler._network, labels, 1.0, plan.null_label, dtype)
            x = torch.zeros((batch,) + model.sample_shape)

            def forward(sampler=sampler, velocity=velocity, x=x):
                with sampler._scope():
                    velocity(x, 1.0)
            forward()
            runs[f"{row}: network forward alone"] = forward
    timed.seconds = 0.0
    rounds = 7 if steps == 1 else 1
    benchmark.group = f"{name} ({steps} step{'s' * (steps > 1)}, guidance {guidance:g}), batch {batch}"
    benchmark.name = "side by side"
    median, total = side_by_side(benchmark, runs, rounds, batch)
    table = benchmark.extra_info["side_by_side"]
    for row, _, _ in VARIANTS:
        table[row]["first_call_s"] = first[row]
        table[row]["max_abs_diff_vs_fp32_eager"] = float(
            (outputs[row] - outputs["eager float32"]).abs().max())
        ceiling = median.get(f"{row}: network forward alone")
        if ceiling is not None:
            table[row]["outside_network_share"] = max(0.0, 1 - ceiling / median[row])
    # eager rows: the time inside the network calls (TimedNet) over their own wall time
    eager = [r for r, compiled, _ in VARIANTS if not compiled]
    share = 1 - timed.seconds / sum(total[r] for r in eager)
    for row in eager:
        table[row]["outside_network_share"] = max(0.0, share)
    benchmark.extra_info["images_per_s"] = table["eager float32"]["images_per_s"]


LARGE = 1000
CHUNKED = {"student": (1, 1.0), "teacher": (4, 1.5)}


@pytest.mark.parametrize("name", list(CHUNKED))
def test_large_request(benchmark, models, name):
    steps, guidance = CHUNKED[name]
    model, labels = models[name], torch.arange(LARGE) % 10

    def one_call(max_batch=None):
        return lambda: kacfast.sample(model, steps, labels=labels, seed=0, guidance=guidance,
                                      max_batch=max_batch)

    def by_hand(size):
        return lambda: torch.cat([kacfast.sample(model, steps, labels=labels[i:i + size], seed=i,
                                                 guidance=guidance, max_batch=size)
                                  for i in range(0, LARGE, size)])
    runs = {"one call (default max_batch)": one_call(),
            f"one call, max_batch={LARGE} (no chunks)": one_call(LARGE)}
    runs.update({f"by hand, chunks of {size}": by_hand(size) for size in (64, 128, 256, 500)})
    for run in runs.values():
        run()
    benchmark.group = f"{name} ({steps} step{'s' * (steps > 1)}, guidance {guidance:g}), {LARGE} labels"
    benchmark.name = "side by side"
    side_by_side(benchmark, runs, 3 if steps == 1 else 2, LARGE)
