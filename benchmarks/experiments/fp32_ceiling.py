"""How far compiling can take float32 sampling on this CPU: the shipped 1-step student's call split
into convolution time and everything else, eager and compiled, and the speed-up left if everything
but the convolutions cost nothing.

Compiling removes the elementwise and normalisation work between convolutions, and freezes and
prepacks the convolutions' weights for oneDNN (a little faster; a lone 3x3 convolution at these
shapes gives the CPU's rate: the script prints its GFLOP/s). The ceiling printed is the eager
median / the compiled median's share spent in convolutions (both shares from the profiled run, so
a profiled run that drifts from the interleaved median does not bias it).

    python benchmarks/experiments/fp32_ceiling.py [--batch 200] [--threads 2] [--rounds 7] [--tuned-allocator]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

import kacfast
from kacfast._device import cpu_description


def _conv_and_total_ms(fn, calls: int) -> tuple[float, float]:
    """(milliseconds per call inside convolution ops, wall milliseconds per call) under the profiler."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        wall = time.perf_counter() - start
    conv_us = sum(e.self_cpu_time_total for e in prof.key_averages() if "convolution" in e.key)
    return conv_us / 1e3 / calls, 1e3 * wall / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (median)")
    parser.add_argument("--tuned-allocator", action="store_true",
                        help="call kacfast.tune_cpu_allocator() first, as the kacfast CLI does")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tuned = args.tuned_allocator and kacfast.tune_cpu_allocator()
    student = kacfast.load_pretrained("mnist16-distillkac-1step")
    labels = torch.arange(args.batch) % 10
    runs = {name: (lambda c=compile: kacfast.sample(student, 1, labels=labels, seed=0, compile=c))
            for name, compile in (("eager", False), ("compiled", True))}
    runs["compiled"]()  # builds the sampler once

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        runs["eager"]()
    conv_flops = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(k))
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - start))
    median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    split = {name: _conv_and_total_ms(fn, 3) for name, fn in runs.items()}

    conv = torch.nn.Conv2d(32, 32, 3, padding=1).eval()
    probe = torch.randn(args.batch, 32, 16, 16)
    with torch.no_grad():
        conv_ms = _conv_and_total_ms(lambda: conv(probe), 20)[1]
    probe_gflops = 2 * 9 * 32 * 32 * 16 * 16 * args.batch / conv_ms / 1e6

    print(f"{cpu_description()}, torch {torch.__version__}, "
          f"{args.threads} threads, batch {args.batch}, tuned allocator {tuned}")
    print(f"convolutions: {conv_flops / 1e9:.1f} GFLOP per call; a lone 32->32 3x3 convolution at "
          f"16x16 runs at {probe_gflops:.0f} GFLOP/s")
    # the split comes from a separate profiled run (3 calls): its wall time drifts from the
    # interleaved median, so both are printed
    print("| sampler | ms per call (median) | profiled ms per call | in convolutions | outside them "
          "| conv GFLOP/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in runs:
        conv_time, wall = split[name]
        print(f"| {name} | {median[name]:.1f} | {wall:.1f} | {conv_time:.1f} | {wall - conv_time:.1f} | "
              f"{conv_flops / conv_time / 1e6:.0f} |")
    conv_share = split["compiled"][0] / split["compiled"][1]
    print(f"compiled speed-up: {median['eager'] / median['compiled']:.2f}x; ceiling with nothing but "
          f"the compiled convolutions ({100 * conv_share:.0f}% of the compiled call): "
          f"{median['eager'] / (median['compiled'] * conv_share):.2f}x")


if __name__ == "__main__":
    main()
