"""Does this machine's torch inductor compile the bf16 UNet correctly on the CPU? The shipped
student's network under bf16 autocast, compiled per inductor setting in a fresh process (compile
caches and the vector-ISA choice are per process), against the eager bf16 network on the same
input; with --time, each setting's median forward time too.

    python benchmarks/experiments/inductor_bf16_check.py [--batch 64] [--time]

Settings: frozen weights (what samplers used on the CPU), frozen with 256-bit kernels, frozen
without AMX kernels (VecAVX512), and unfrozen (what bf16 samplers use where
kacfast._device.wide_kernels_miscompile). Torch 2.13 on an AVX-512 Xeon with AMX (2026-12-07):
the frozen 512-bit settings gave NaN for half of each batch, the others agreed with eager.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

SETTINGS = {
    "frozen": {"freezing": True},
    "frozen, 256-bit kernels": {"freezing": True, "cpp.simdlen": 256},
    "frozen, no AMX kernels": {"freezing": True, "no_amx": True},
    "unfrozen": {"freezing": False},
}


def one_setting(setting: dict, batch: int, timed: bool) -> dict:
    """This process's result for one setting: max |compiled - eager|, NaN share, median ms."""
    import torch
    import torch._inductor.config as inductor_config

    import kacfast
    if setting.pop("no_amx", False):
        from torch._inductor import cpu_vec_isa
        every = cpu_vec_isa.valid_vec_isa_list
        cpu_vec_isa.valid_vec_isa_list = lambda: [i for i in every() if type(i).__name__ != "VecAMX"]
    model = kacfast.load_pretrained("mnist16-distillkac-1step").eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *model.sample_shape), generator=gen)
    t, y = torch.full((batch,), 1.0), torch.arange(batch) % model.num_classes
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)
    with torch.no_grad(), autocast:
        eager = model(x, t, y).float()
        with inductor_config.patch(setting):
            compiled = torch.compile(model, fullgraph=True, dynamic=False)
            out = compiled(x, t, y).float()
        times = []
        for _ in range(7 if timed else 0):
            start = time.perf_counter()
            compiled(x, t, y)
            times.append(time.perf_counter() - start)
    return {"max_diff": (out - eager).abs().max().item(), "nan_share": out.isnan().float().mean().item(),
            "median_ms": statistics.median(times) * 1e3 if times else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--time", action="store_true", help="also time each setting's forward")
    parser.add_argument("--setting", help=argparse.SUPPRESS)  # the child process's setting
    args = parser.parse_args()
    if args.setting:
        print(json.dumps(one_setting(dict(SETTINGS[args.setting]), args.batch, args.time)))
        return
    from kacfast._device import cpu_description
    print(f"{cpu_description()}, batch {args.batch}")
    for name in SETTINGS:
        command = [sys.executable, __file__, "--setting", name, "--batch", str(args.batch)]
        done = subprocess.run(command + ["--time"] * args.time, capture_output=True, text=True)
        if done.returncode:
            print(f"{name}: failed: {done.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        timing = f", {r['median_ms']:.1f} ms" if r["median_ms"] is not None else ""
        print(f"{name}: max |compiled - eager| {r['max_diff']:.3g}, NaN share {r['nan_share']:.2f}{timing}")


if __name__ == "__main__":
    main()
