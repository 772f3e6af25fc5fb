"""GPU figures in one process (run by benchmarks/gpu_check.sh): copy bandwidth, fused noise+target,
the guided step against the copy ceiling, end-to-end sampling, and CPU/CUDA/Triton bit-identity.

    python benchmarks/gpu_bench.py --out DIR      # writes DIR/gpu_bench.json and DIR/gpu_bench.md
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton.testing

import kacfast
from kacfast import ops
from kacfast.baselines import EDMPrecond, ddim_sample, ddpm_sample, edm_sample
from kacfast.models import build_model

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from baselines_research import build_cdf_table, research_noise_target  # noqa: E402


def bench(fn) -> float:
    """Median milliseconds of fn() by CUDA events (triton.testing.do_bench)."""
    return triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])[0]


def copy_bandwidth(n_bytes: int = 2**30) -> float:
    src = torch.empty(n_bytes // 4, device="cuda")
    dst = torch.empty_like(src)
    return 2 * n_bytes / (bench(lambda: dst.copy_(src)) * 1e-3)


def noise_target_rows(batch: int) -> list[dict]:
    x0 = torch.rand(batch, 3, 32, 32, device="cuda") * 2 - 1
    t = torch.rand(batch, device="cuda")
    proc = kacfast.KacProcess()
    rows = []
    table = build_cdf_table(9.0, 3.0, 1.0).cuda()
    ms = bench(lambda: research_noise_target(x0, t, table, 9.0, 3.0, 1.0))
    rows.append({"row": "research baseline (float64 table)", "ms": ms})
    for backend in ("cuda", "triton"):
        if backend in ops.available_backends("cuda"):
            with ops.use_backend(backend):
                ms = bench(lambda: proc.noise_target(x0, t, seed=0))
            rows.append({"row": f"kacfast {backend}", "ms": ms})
    for r in rows:
        r["elements_per_s"] = x0.numel() / (r["ms"] * 1e-3)
        r["batch"] = batch
    return rows


def step_rows(numel: int, ceiling: float) -> list[dict]:
    x = torch.randn(numel, device="cuda")
    v = torch.randn(2 * numel, device="cuda")
    moved = 4 * numel * 4  # x + v (2x) in, x' out

    def eager():
        v_c, v_u = v.chunk(2)
        return x - 0.01 * (v_u + 1.5 * (v_c - v_u))
    compiled = torch.compile(eager, fullgraph=True)
    rows = [{"row": "eager", "ms": bench(eager)}, {"row": "torch.compile", "ms": bench(compiled)}]
    for backend in ("cuda", "triton"):
        if backend in ops.available_backends("cuda"):
            with ops.use_backend(backend):
                rows.append({"row": f"kacfast {backend}",
                             "ms": bench(lambda: ops.guided_step(x, v, guidance=1.5, h=0.01))})
    for r in rows:
        r["GB_per_s"] = moved / (r["ms"] * 1e-3) / 1e9
        r["share_of_copy"] = moved / (r["ms"] * 1e-3) / ceiling
    return rows


def sampling_rows(batch: int = 256) -> list[dict]:
    torch.manual_seed(0)
    net = build_model("unet-tiny").cuda().eval()
    labels = (torch.arange(batch) % 10).cuda()
    latents = torch.randn((batch,) + net.sample_shape, device="cuda")
    runs = {
        "kac 1 step": (1, lambda: kacfast.sample(net, 1, labels=labels, seed=0)),
        "kac 4 steps": (4, lambda: kacfast.sample(net, 4, labels=labels, seed=0)),
        "kac 100 steps (ab2)": (100, lambda: kacfast.sample(net, 100, labels=labels, seed=0, solver="ab2")),
        "edm 35 NFE": (35, lambda: edm_sample(EDMPrecond(net), latents, labels)),
        "ddim 20": (20, lambda: ddim_sample(net, latents, labels, num_steps=20)),
        "ddpm 1000": (1000, lambda: ddpm_sample(net, latents, labels, num_steps=1000, seed=0)),
    }
    rows = []
    with torch.no_grad():
        for name, (nfe, fn) in runs.items():
            ms = bench(fn) if nfe <= 100 else triton.testing.do_bench(fn, warmup=1, rep=1)
            rows.append({"row": name, "nfe": nfe, "ms": ms, "images_per_s": batch / (ms * 1e-3)})
    return rows


def bit_identity() -> dict:
    s = torch.rand(100_003) * 1.5
    x0, t = torch.rand(37, 3, 17, 19) * 2 - 1, torch.rand(37)
    out = {}
    for backend in ("cuda", "triton"):
        if backend not in ops.available_backends("cuda"):
            continue
        with ops.use_backend("cpu"):
            ref = (ops.kac_noise(s, 9.0, 3.0, seed=3), *ops.kac_noise_target(x0, t, 9.0, 3.0, seed=3))
        with ops.use_backend(backend):
            got = (ops.kac_noise(s.cuda(), 9.0, 3.0, seed=3),
                   *ops.kac_noise_target(x0.cuda(), t.cuda(), 9.0, 3.0, seed=3))
        out[backend] = all(torch.equal(a, b.cpu()) for a, b in zip(ref, got))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    ceiling = copy_bandwidth()
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "copy_GB_per_s": ceiling / 1e9, "bit_identical_to_cpu": bit_identity(),
              "noise_target": noise_target_rows(64) + noise_target_rows(1024),
              "step": step_rows(2**26, ceiling), "sampling": sampling_rows()}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"GPU: {result['gpu']}, torch {result['torch']}, copy {result['copy_GB_per_s']:.0f} GB/s, "
             f"bit-identical to CPU: {result['bit_identical_to_cpu']}"]
    for key in ("noise_target", "step", "sampling"):
        rows = result[key]
        cols = [c for c in rows[0] if c != "row"]
        lines += ["", f"**{key}**", "", "| row | " + " | ".join(cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        lines += ["| " + r["row"] + " | " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float)
                                                       else str(r[c]) for c in cols) + " |" for r in rows]
    with open(os.path.join(args.out, "gpu_bench.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
