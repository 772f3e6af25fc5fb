"""GPU kernel figures in one process (run by benchmarks/gpu_check.sh): copy bandwidth, fused
noise+target, the guided step against the copy ceiling, CPU/CUDA/Triton bit-identity, and (with
--sampling) float32 eager sampling of every method.

    python benchmarks/gpu_bench.py --out DIR [--sampling]   # DIR/gpu_bench.json, DIR/gpu_bench.md
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
from kacfast.ops import reference

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "suites"))
from baselines_research import build_cdf_table, research_noise_target  # noqa: E402


def bench(fn) -> float:
    """Median milliseconds of fn() by CUDA events (triton.testing.do_bench)."""
    return triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])[0]


def copy_bandwidth(n_bytes: int = 2**30) -> float:
    src = torch.empty(n_bytes // 4, device="cuda")
    dst = torch.empty_like(src)
    return 2 * n_bytes / (bench(lambda: dst.copy_(src)) * 1e-3)


def time_rows(runs: dict, timer=bench) -> list[dict]:
    """[{"row": name, "ms": median ms}] for each callable in runs; a row whose callable fails
    (a compiler error on this machine, say) is reported on stderr and left out."""
    rows = []
    for name, fn in runs.items():
        try:
            rows.append({"row": name, "ms": timer(fn)})
        except Exception as err:
            print(f"{name}: {type(err).__name__}: {err}", file=sys.stderr)
    return rows


def _per_backend(runs: dict, make) -> dict:
    """Add a row "kacfast <backend>" running make() pinned to each GPU backend built here."""
    for backend in ("cuda", "triton"):
        if backend in ops.available_backends("cuda"):
            def run(backend=backend, fn=make()):
                with ops.use_backend(backend):
                    return fn()
            runs[f"kacfast {backend}"] = run
    return runs


def noise_target_rows(batch: int, ceiling: float, compiled_reference: bool) -> list[dict]:
    """The issue-2 workload (x0 (batch, 3, 32, 32), a=9, c=3) per backend, beside the research
    baseline and (optionally: it compiles for a while) torch.compile of the PyTorch reference."""
    x0 = torch.rand(batch, 3, 32, 32, device="cuda") * 2 - 1
    t = torch.rand(batch, device="cuda")
    table = build_cdf_table(9.0, 3.0, 1.0).cuda()
    runs = {"research baseline (float64 table)":
            lambda: research_noise_target(x0, t, table, 9.0, 3.0, 1.0)}
    if compiled_reference:
        compiled = torch.compile(reference.kac_noise_target, fullgraph=False)
        runs["torch.compile(reference)"] = lambda: compiled(x0, t, 9.0, 3.0, 1.0, "t", 1e-4, 0, 0)
    proc = kacfast.KacProcess()
    rows = time_rows(_per_backend(runs, lambda: lambda: proc.noise_target(x0, t, seed=0)))
    base = rows[0]["ms"]
    for r in rows:
        r["elements_per_s"] = x0.numel() / (r["ms"] * 1e-3)
        r["x_baseline"] = base / r["ms"]
        r["share_of_copy"] = 12 * x0.numel() / (r["ms"] * 1e-3) / ceiling  # x0 in, x_t and u out
        r["batch"] = batch
    return rows


def step_rows(numel: int, ceiling: float) -> list[dict]:
    """Guided Euler step on numel fp32 elements: eager / compiled PyTorch vs the fused kernels."""
    x = torch.randn(numel, device="cuda")
    v = torch.randn(2 * numel, device="cuda")
    moved = 4 * numel * 4  # x + v (2x) in, x' out

    def eager():
        v_c, v_u = v.chunk(2)
        return x - 0.01 * (v_u + 1.5 * (v_c - v_u))
    runs = {"eager": eager, "torch.compile": torch.compile(eager, fullgraph=True)}
    rows = time_rows(_per_backend(runs, lambda: lambda: ops.guided_step(x, v, guidance=1.5, h=0.01)))
    for r in rows:
        r["GB_per_s"] = moved / (r["ms"] * 1e-3) / 1e9
        r["share_of_copy"] = moved / (r["ms"] * 1e-3) / ceiling
    return rows


def sampling_rows(batch: int = 1024) -> list[dict]:
    """End-to-end sampling, guidance 1 (one network call per NFE), same network (unet-tiny at
    16x16, the shipped models' architecture; random weights: speed only)."""
    torch.manual_seed(0)
    net = build_model("unet-tiny").cuda().eval()
    labels = (torch.arange(batch) % 10).cuda()
    latents = torch.randn((batch,) + net.sample_shape, device="cuda")
    runs = {
        "kac 1 step": (1, lambda: kacfast.sample(net, 1, labels=labels, seed=0)),
        "kac 2 steps": (2, lambda: kacfast.sample(net, 2, labels=labels, seed=0)),
        "kac 4 steps": (4, lambda: kacfast.sample(net, 4, labels=labels, seed=0)),
        "kac 100 steps (ab2)": (100, lambda: kacfast.sample(net, 100, labels=labels, seed=0,
                                                            solver="ab2")),
        "edm 35 NFE (heun)": (35, lambda: edm_sample(EDMPrecond(net), latents, labels)),
        "ddim 20": (20, lambda: ddim_sample(net, latents, labels, num_steps=20)),
        "ddpm 1000": (1000, lambda: ddpm_sample(net, latents, labels, num_steps=1000, seed=0)),
    }
    rows = []
    with torch.no_grad():
        for name, (nfe, fn) in runs.items():
            timer = bench if nfe <= 100 else (lambda f: triton.testing.do_bench(f, warmup=1, rep=1))
            for r in time_rows({name: fn}, timer):
                rows.append({**r, "nfe": nfe, "images_per_s": batch / (r["ms"] * 1e-3)})
    edm = next((r["ms"] for r in rows if r["row"].startswith("edm")), None)
    for r in rows:
        r["speedup_vs_edm35"] = edm / r["ms"] if edm else float("nan")
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


def _section(result: dict, key: str, fn, json_path: str) -> None:
    """result[key] = fn(), or the error; the JSON file is rewritten after every section so a later
    failure or timeout keeps what was measured."""
    try:
        result[key] = fn()
    except Exception as err:
        result[key] = f"failed: {type(err).__name__}: {err}"
        print(f"{key}: {result[key]}", file=sys.stderr)
    with open(json_path, "w") as f:
        json.dump(result, f, indent=2)


def markdown_table(title: str, rows) -> list[str]:
    """Lines of a Markdown table of row dicts (the "row" entry names each; other keys are the
    columns, numbers to 4 significant digits), or of what a failed section left instead."""
    lines = ["", f"**{title}**", ""]
    if isinstance(rows, dict):
        rows = [rows]
    if not isinstance(rows, list) or not rows:
        return lines + [str(rows)]
    cols = list(dict.fromkeys(c for r in rows for c in r if c != "row"))
    lines += ["| row | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    return lines + ["| " + str(r.get("row", title)) + " | " + " | ".join(
        f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "-")) for c in cols) + " |"
        for r in rows]


def _markdown(result: dict) -> str:
    lines = [f"GPU: {result['gpu']}, torch {result['torch']}, copy {result['copy_GB_per_s']:.0f} GB/s, "
             f"bit-identical to CPU: {result.get('bit_identical_to_cpu')}"]
    for key in ("noise_target", "step", "sampling"):
        if key in result:
            lines += markdown_table(key, result[key])
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--compiled-reference", action="store_true",
                        help="add torch.compile of the PyTorch reference (compiles for minutes)")
    parser.add_argument("--sampling", action="store_true",
                        help="add float32 eager sampling rows of every method (benchmarks/"
                             "gpu_speed.py has the compiled, bf16 and CUDA-graph rows)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "gpu_bench.json")
    ceiling = copy_bandwidth()
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "copy_GB_per_s": ceiling / 1e9}
    _section(result, "bit_identical_to_cpu", bit_identity, json_path)
    _section(result, "noise_target",
             lambda: noise_target_rows(64, ceiling, args.compiled_reference)
             + noise_target_rows(1024, ceiling, False), json_path)
    _section(result, "step", lambda: step_rows(2**26, ceiling), json_path)
    if args.sampling:
        _section(result, "sampling", sampling_rows, json_path)
    text = _markdown(result)
    with open(os.path.join(args.out, "gpu_bench.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
