"""Training images/s on the CPU per precision and compile (gpu_speed.py's training rows, on the
CPU at a CPU-sized batch): Kac flow-matching steps of a random-weight network.

    python benchmarks/experiments/cpu_training_speed.py                  # unet-tiny, 28x28, batch 64
    python benchmarks/experiments/cpu_training_speed.py --size 16 --steps 20

Each setting trains 2 x --steps optimizer steps from a fresh compile cache and is timed over the
last --steps; bf16 rows are autocast (weights, optimizer and EMA stay float32).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(_HERE)]
from gpu_bench import markdown_table  # noqa: E402
from gpu_speed import training_rows  # noqa: E402

from kacfast._device import cpu_description, tune_cpu_allocator  # noqa: E402

SETTINGS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="unet-tiny")
    parser.add_argument("--size", type=int, default=28, help="image size (default 28)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting (default 10)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_cpu_allocator()  # as the kacfast CLI does
    rows = training_rows(args.preset, args.size, args.batch, args.steps, torch.device("cpu"),
                         settings=SETTINGS)
    print(f"{cpu_description()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"tuned allocator")
    print("\n".join(markdown_table(f"{args.preset} {args.size}x{args.size}, batch {args.batch}", rows)))


if __name__ == "__main__":
    main()
