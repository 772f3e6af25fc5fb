"""What page faults cost a CPU sampling call: the shipped models sampled with glibc's default
malloc against `kacfast.tune_cpu_allocator()` (freed memory kept in the process), eager and
compiled. The setting is process-wide, so every (row, allocator) runs in its own process, and the
processes run interleaved, round by round, because this VM's speed drifts within minutes.

    python benchmarks/experiments/cpu_allocator.py [--size 28] [--batch 200] [--rounds 3] [--calls 5]

Prints one markdown table: median ms per call over the rounds (each round's value is the median
of --calls calls after a warm-up call that pays any compile), images/s, minor page faults per
call and the speed-up of the tuned allocator; then compiled over eager under each allocator.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

ROWS = {  # name -> (shipped model, steps, guidance)
    "1-step student": ("distillkac-1step", 1, 1.0),
    "teacher, 4 guided steps": ("kac-teacher", 4, 1.25),
}
ALLOCATORS = ("glibc default", "tuned")

_CHILD = """
import json, resource, sys, time, torch, kacfast
name, steps, guidance, batch, calls, compile, tuned = json.loads(sys.argv[1])
if tuned:
    assert kacfast.tune_cpu_allocator(), "mallopt was not applied"
model = kacfast.load_pretrained(name)
labels = torch.arange(batch) % 10
def call():
    return kacfast.sample(model, steps, labels=labels, guidance=guidance, seed=0, compile=compile)
call()
times, start = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(calls):
    t0 = time.perf_counter(); call(); times.append(time.perf_counter() - t0)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / calls
print(json.dumps({"ms": 1e3 * sorted(times)[calls // 2], "faults": faults}))
"""


def measure(name, steps, guidance, batch, calls, compile, tuned) -> dict:
    spec = json.dumps([name, steps, guidance, batch, calls, compile, tuned])
    out = subprocess.run([sys.executable, "-c", _CHILD, spec], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, choices=(16, 28), default=28, help="shipped pair")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    import torch
    from kacfast._device import cpu_description

    configs = [(row, compile, tuned) for row in ROWS for compile in (False, True)
               for tuned in (False, True)]
    results = {config: [] for config in configs}
    for r in range(args.rounds):
        for config in configs:
            row, compile, tuned = config
            model, steps, guidance = ROWS[row]
            results[config].append(measure(f"mnist{args.size}-{model}", steps, guidance, args.batch,
                                           args.calls, compile, tuned))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    def median(config, key):
        values = sorted(m[key] for m in results[config])
        return values[len(values) // 2]

    print(f"{cpu_description()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"mnist{args.size} pair, batch {args.batch}, median of {args.rounds} rounds")
    print("| row | network | allocator | ms per call | images/s | page faults per call | "
          "tuned speed-up |\n|---|---|---|---:|---:|---:|---:|")
    for row, compile, tuned in configs:
        ms = median((row, compile, tuned), "ms")
        gain = median((row, compile, False), "ms") / ms
        print(f"| {row} | {'compiled' if compile else 'eager'} | {ALLOCATORS[tuned]} | {ms:.1f} | "
              f"{args.batch / ms * 1e3:.0f} | {median((row, compile, tuned), 'faults'):,.0f} | "
              f"{gain:.2f}x |")
    for row in ROWS:
        ratios = ", ".join(f"{ALLOCATORS[tuned]} {median((row, False, tuned), 'ms') / median((row, True, tuned), 'ms'):.2f}x"
                           for tuned in (False, True))
        print(f"{row}: compiled over eager: {ratios}")


if __name__ == "__main__":
    main()
