"""Eager images/s of one network call per chunk size: what `_CHUNK_ELEMENTS["cpu"]` in
kacfast/sampling.py is chosen from. The shipped 1-step student's network at 16x16 and `unet-tiny`
at 28x28 (random weights: speed only), the same images per round (the largest chunk's count) in
chunks of each size, rounds interleaved (median).

    python benchmarks/experiments/chunk_sweep.py [--threads 2] [--rounds 5] [--chunks 16 ... 512]
        [--tuned-allocator]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import kacfast
from kacfast.models.unet import UNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--tuned-allocator", action="store_true",
                        help="call kacfast.tune_cpu_allocator() first, as the kacfast CLI does")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tuned = args.tuned_allocator and kacfast.tune_cpu_allocator()
    chunks = sorted(set(args.chunks))
    images = chunks[-1]
    student = kacfast.load_pretrained("mnist16-distillkac-1step")
    networks = {16: student, 28: UNet(**dict(student.config, image_size=28,
                                             attention_resolutions=[14])).eval()}
    print(f"{torch.backends.cpu.get_cpu_capability()}, {args.threads} threads, "
          f"tuned allocator {tuned}, {images} images per round")
    print("| chunk (images) | " + " | ".join(map(str, chunks)) + " |")
    print("|---|" + "---:|" * len(chunks))
    for size, net in networks.items():
        x = torch.randn(images, 1, size, size)
        t, y = torch.full((images,), 0.5), torch.arange(images) % 10
        runs = {c: (lambda c=c: [net(x[i:i + c], t[i:i + c], y[i:i + c])
                                 for i in range(0, images, c)]) for c in chunks}
        times = {c: [] for c in chunks}
        with torch.no_grad():
            for run in runs.values():
                run()
            for _ in range(args.rounds):
                for c, run in runs.items():
                    start = time.perf_counter()
                    run()
                    times[c].append(time.perf_counter() - start)
        print(f"| {size}x{size}, images/s | "
              + " | ".join(f"{images / statistics.median(times[c]):,.0f}" for c in chunks) + " |")


if __name__ == "__main__":
    main()
