"""What kacfast's C++ GroupNorm (+ SiLU) buys the compiled float32 CPU sampler: the shipped 1-step
student compiled with `kacfast.compiled.FUSE_GROUP_NORM` on (the default) and off (inductor's
own GroupNorm code), each in its own process with the eager sampler timed beside it, the
processes interleaved (this VM's speed drifts within minutes); then GroupNorm + SiLU alone at the
network's shapes: eager (NCHW, as the eager network runs it), inductor's kernel on channels-last
input (the layout frozen convolutions give it) and kacfast's kernel in both layouts.

    python benchmarks/experiments/fused_group_norm.py [--size 16] [--batch 128] [--threads 2] [--pairs 3] [--rounds 15]

Prints per process: median ms per call of eager and compiled and the median of the per-round
compiled-over-eager ratios; then the median ratio of each setting over its processes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

_CHILD = """
import json, statistics, sys, time, torch, kacfast, kacfast.compiled
size, batch, threads, rounds, fuse = json.loads(sys.argv[1])
torch.set_num_threads(threads)
kacfast.tune_cpu_allocator()
kacfast.compiled.FUSE_GROUP_NORM = fuse
model = kacfast.load_pretrained(f"mnist{size}-distillkac-1step")
labels = torch.arange(batch) % 10
sampler = kacfast.compile_sampler(model, 1, batch_size=batch)
runs = {"eager": lambda: kacfast.sample(model, 1, labels=labels, seed=0, max_batch=batch),
        "compiled": lambda: sampler(labels=labels, seed=0)}
diff = (runs["compiled"]() - runs["eager"]()).abs().max().item()
times = {name: [] for name in runs}
for _ in range(rounds):
    for name, run in runs.items():
        start = time.perf_counter(); run(); times[name].append(time.perf_counter() - start)
ratios = [e / c for e, c in zip(times["eager"], times["compiled"])]
print(json.dumps({"fused": sampler.fused_group_norm, "max_diff": diff, "ratio": statistics.median(ratios),
                  **{name: 1e3 * statistics.median(t) for name, t in times.items()}}))
"""


def measure(size: int, batch: int, threads: int, rounds: int, fuse: bool) -> dict:
    spec = json.dumps([size, batch, threads, rounds, fuse])
    child = subprocess.run([sys.executable, "-c", _CHILD, spec], capture_output=True, text=True)
    if child.returncode:
        sys.exit(f"the measuring process failed:\n{child.stderr}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def _median_ms(fn, calls: int = 30) -> float:
    fn(), fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def kernel_table(batch: int, size: int) -> None:
    """GroupNorm(32) + SiLU at (batch, C, size, size) for the UNet's widths, one process."""
    import torch
    import torch.nn.functional as F

    from kacfast import ops
    print(f"\nGroupNorm(32 groups) + SiLU alone, ({batch}, C, {size}, {size}), median ms of 30 calls\n")
    print("| C | channels per group | eager, NCHW | inductor, channels-last | kacfast, channels-last | "
          "kacfast, channels-last, no SiLU | kacfast, NCHW | a copy of x |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for channels in (32, 64, 96, 128):
        x = torch.randn(batch, channels, size, size)
        last = x.contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(channels), torch.randn(channels)
        eager = lambda x: F.silu(F.group_norm(x, 32, w, b))  # noqa: E731
        inductor = torch.compile(eager, dynamic=False)
        fused = lambda x, silu=True: ops.group_norm(x, w, b, groups=32, silu=silu)  # noqa: E731
        row = [_median_ms(lambda: eager(x)), _median_ms(lambda: inductor(last)),
               _median_ms(lambda: fused(last)), _median_ms(lambda: fused(last, silu=False)),
               _median_ms(lambda: fused(x)),
               _median_ms(lambda: torch.empty_like(x).copy_(x))]
        print(f"| {channels} | {channels // 32} | " + " | ".join(f"{v:.2f}" for v in row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, choices=(16, 28), default=16, help="shipped student")
    parser.add_argument("--batch", type=int, default=128, help="the CPU's default chunk at 16x16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=3, help="(on, off) process pairs (0: the kernel table only)")
    parser.add_argument("--rounds", type=int, default=15, help="timed calls per process and sampler")
    args = parser.parse_args()
    import torch

    from kacfast._device import cpu_description
    print(f"machine: {cpu_description()}, torch {torch.__version__}, {args.threads} threads, "
          f"{args.size}x{args.size} student, batch {args.batch}\n")
    print("| process | GroupNorm | eager ms | compiled ms | compiled over eager | max diff |")
    print("|---:|---|---:|---:|---:|---:|")
    ratios: dict[bool, list[float]] = {True: [], False: []}
    for pair in range(args.pairs):
        order = (True, False) if pair % 2 == 0 else (False, True)
        for fuse in order:
            row = measure(args.size, args.batch, args.threads, args.rounds, fuse)
            ratios[fuse].append(row["ratio"])
            label = "kacfast C++" if row["fused"] else "inductor"
            print(f"| {pair + 1} | {label} | {row['eager']:.1f} | {row['compiled']:.1f} | "
                  f"{row['ratio']:.2f}x | {row['max_diff']:.1e} |", flush=True)
    if args.pairs:
        print(f"\ncompiled over eager, median over processes: kacfast C++ GroupNorm "
              f"{statistics.median(ratios[True]):.2f}x, inductor's {statistics.median(ratios[False]):.2f}x")
    torch.set_num_threads(args.threads)
    kernel_table(args.batch, args.size)


if __name__ == "__main__":
    main()
