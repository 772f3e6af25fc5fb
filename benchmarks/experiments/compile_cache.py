"""First-call compile time of the shipped student's compiled sampler (batch 200, CPU), in a fresh
process with an empty inductor cache and in a second process that finds the first one's cache.

    python benchmarks/experiments/compile_cache.py
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

BUILD = ("import kacfast; m = kacfast.load_pretrained('mnist16-distillkac-1step'); "
         "print(kacfast.compile_sampler(m, 1, batch_size=200).compile_seconds)")


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        for name in ("empty cache", "second process"):
            out = subprocess.run([sys.executable, "-c", BUILD], env=env, check=True,
                                 capture_output=True, text=True).stdout.split()[-1]
            print(f"{name}: {float(out):.1f} s")


if __name__ == "__main__":
    main()
