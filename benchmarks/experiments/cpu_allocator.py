"""What page faults cost a CPU sampling call: the shipped models sampled with glibc's default
malloc against `kacfast.tune_cpu_allocator()` (freed memory kept in the process), eager and
compiled. The setting is process-wide, so every (row, allocator) runs in its own process, and the
processes run interleaved, round by round, because this VM's speed drifts within minutes.

    python benchmarks/experiments/cpu_allocator.py [--size 28] [--batch 200] [--rounds 3] [--calls 5]

Prints one markdown table: median ms per call over the rounds (each round's value is the median
of --calls calls after a warm-up call that pays any compile), images/s, minor page faults per
call and the speed-up of the tuned allocator (the median of the per-round ratios); then compiled
over eager under each allocator, the same way. Rounds alternate the order of the processes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

ROWS = {  # name -> (shipped model, steps, guidance)
    "1-step student": ("distillkac-1step", 1, 1.0),
    "teacher, 4 guided steps": ("kac-teacher", 4, 1.25),
}
ALLOCATORS = ("glibc default", "tuned")

_CHILD = """
import json, resource, statistics, sys, time, torch, kacfast
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
print(json.dumps({"ms": 1e3 * statistics.median(times), "faults": faults}))
"""


def measure(name, steps, guidance, batch, calls, compile, tuned) -> dict:
    spec = json.dumps([name, steps, guidance, batch, calls, compile, tuned])
    child = subprocess.run([sys.executable, "-c", _CHILD, spec], capture_output=True, text=True)
    if child.returncode:
        sys.exit(f"the measuring process failed:\n{child.stderr}")
    return json.loads(child.stdout.strip().splitlines()[-1])


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
        for config in (configs if r % 2 == 0 else configs[::-1]):  # no row always runs first
            row, compile, tuned = config
            model, steps, guidance = ROWS[row]
            results[config].append(measure(f"mnist{args.size}-{model}", steps, guidance, args.batch,
                                           args.calls, compile, tuned))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    def ms(config):
        return statistics.median(m["ms"] for m in results[config])

    def ratio(slow, fast):  # the median of the per-round ratios: both ran in the same round
        return statistics.median(a["ms"] / b["ms"] for a, b in zip(results[slow], results[fast]))

    print(f"{cpu_description()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"mnist{args.size} pair, batch {args.batch}, medians of {args.rounds} rounds of "
          f"{args.calls} calls")
    print("| row | network | allocator | ms per call | images/s | page faults per call | "
          "tuned speed-up |\n|---|---|---|---:|---:|---:|---:|")
    for config in configs:
        row, compile, tuned = config
        faults = statistics.median(m["faults"] for m in results[config])
        print(f"| {row} | {'compiled' if compile else 'eager'} | {ALLOCATORS[tuned]} | "
              f"{ms(config):.1f} | {args.batch / ms(config) * 1e3:.0f} | {faults:,.0f} | "
              f"{ratio((row, compile, False), config):.2f}x |")
    for row in ROWS:
        ratios = ", ".join(f"{ALLOCATORS[tuned]} {ratio((row, False, tuned), (row, True, tuned)):.2f}x"
                           for tuned in (False, True))
        print(f"{row}: compiled over eager: {ratios}")


if __name__ == "__main__":
    main()
