"""What a sample() call costs besides the network: the same call with a network that costs nothing
(v = x), eager and compiled, at the shipped student's shape. Divide by a row's time in
test_bench_fast_sampling.py for the share of time outside the network, free of that table's
run-to-run noise (this VM's speed drifts by several ms per call between rounds).

    python benchmarks/experiments/sampler_overhead.py [--batches 64 200] [--repeats 200]
"""
from __future__ import annotations

import argparse
import time

import torch

import kacfast


class FreeNetwork(torch.nn.Module):
    """v = x for a class-conditional 1x16x16 model: every cost left is the sampler's."""

    num_classes, sample_shape = 10, (1, 16, 16)

    def forward(self, x, t, y=None):
        return x


def per_call_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[repeats // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 200])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    net = FreeNetwork()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}")
    print("| batch | eager ms per call | compiled ms per call |\n|---:|---:|---:|")
    for batch in args.batches:
        labels = torch.arange(batch) % 10
        row = [per_call_ms(lambda c=c: kacfast.sample(net, 1, labels=labels, seed=0, compile=c),
                           args.repeats) for c in (False, True)]
        print(f"| {batch} | {row[0]:.3f} | {row[1]:.3f} |")


if __name__ == "__main__":
    main()
