"""End-to-end speed where users run it (run by benchmarks/gpu_check.sh): the 1-step sampler per
precision / compile / CUDA graph against the network's own forward time at the same batch and
precision (the ceiling), wall time for 50,000 1-step samples, and training images/s per precision.

    python benchmarks/gpu_speed.py --out DIR             # on a GPU: DIR/gpu_speed.{json,md}
    python benchmarks/gpu_speed.py --out DIR --smoke     # anywhere: tiny shapes, every code path

Networks have random weights (speed only). Sampler rows are guidance 1 (one network call per
image), so "share of ceiling" = the network row's time / the sampler row's time at one batch.
"fp32" rows run with torch's defaults, recorded in the results: cuDNN convolutions in TF32, matmuls
in float32. Each section starts from an empty torch.compile cache (torch._dynamo.reset()), so no
section inherits another's graphs or its remembered input sizes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

import kacfast
from kacfast.models import build_model
from kacfast.process import KacProcess

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.join(_HERE, "experiments")]
from gpu_bench import _section, markdown_table  # noqa: E402
from sampler_overhead import per_call_ms  # noqa: E402


def timer(device: torch.device):
    """fn -> median milliseconds: CUDA events (triton.testing.do_bench) on a GPU, else the median
    of a few perf_counter runs (smoke mode)."""
    if device.type == "cuda":
        import triton.testing
        return lambda fn: triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])[0]
    return lambda fn: per_call_ms(fn, repeats=3)


def _network(preset: str, image_size: int, device) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_model(preset, image_size=image_size)
    for p in net.parameters():  # the zero-initialized output layer would make sampling trivial
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.02)
    return net.to(device).eval().requires_grad_(False)


def sampler_rows(preset: str, image_size: int, batch: int, device) -> list[dict]:
    """1-step sampling of `batch` images: fp32 eager / bf16 / bf16 + compile / bf16 + compile +
    CUDA graph (+ channels_last), each beside the network's forward at its precision."""
    net = _network(preset, image_size, device)
    bench = timer(device)
    labels = (torch.arange(batch) % 10).to(device)
    x = torch.randn((batch,) + net.sample_shape, device=device)
    t = torch.full((batch,), KacProcess().T, device=device)
    # the sampler's autocast (no cast cache): the same compiled graph serves ceiling and sampler
    bf16 = torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    cuda = device.type == "cuda"

    def forward(network, autocast):
        def run():
            with torch.no_grad(), autocast:
                return network(x, t, labels)
        return run

    sampler = kacfast.compile_sampler(net, 1, batch_size=batch, dtype=torch.bfloat16,
                                      cuda_graph=False)
    compiled = sampler._network  # the network as that sampler compiled it
    ceilings = {"fp32": bench(forward(net, torch.autocast(device.type, enabled=False))),
                "bf16": bench(forward(net, bf16))}
    with sampler._scope():  # on the CPU, the frozen graph the sampler runs
        ceilings["bf16 compiled"] = bench(forward(compiled, bf16))
    if cuda:  # the compiled forward alone, replayed as a CUDA graph: the true ceiling
        graph, run = torch.cuda.CUDAGraph(), forward(compiled, bf16)
        run()
        with torch.cuda.graph(graph):
            run()
        ceilings["bf16 compiled + graph"] = bench(graph.replay)
    rows = [{"row": f"network forward {name}", "ms": ms, "images_per_s": batch / ms * 1e3}
            for name, ms in ceilings.items()]

    def sample(**kw):
        return lambda: kacfast.sample(net, 1, labels=labels, seed=0, max_batch=batch, **kw)
    samplers = {"1-step fp32 eager": ("fp32", sample()),
                "1-step bf16 eager": ("bf16", sample(dtype=torch.bfloat16)),
                "1-step bf16 compiled": ("bf16 compiled", sampler)}
    rows.append({"row": "build of the compiled sampler (compile + warm-up)",
                 "ms": sampler.compile_seconds * 1e3})
    if cuda:
        graphed = kacfast.compile_sampler(net, 1, batch_size=batch, dtype=torch.bfloat16)
        samplers["1-step bf16 compiled + CUDA graph"] = ("bf16 compiled + graph", graphed)
        # the two graphs alone, without the call's checks and copies: what the call adds on top
        samplers["1-step bf16 compiled + CUDA graph, replay only"] = (
            "bf16 compiled + graph", lambda: (graphed._prior_graph.replay(), graphed._graph.replay()))
        rows.append({"row": "build of the CUDA-graph sampler (compiled graph reused: warm-up + "
                            "capture)", "ms": graphed.compile_seconds * 1e3})
    for name, (ceiling, fn) in samplers.items():
        call = fn if not isinstance(fn, kacfast.Sampler) else (lambda fn=fn: fn(labels=labels, seed=0))
        ms = bench(call)
        rows.append({"row": name, "ms": ms, "images_per_s": batch / ms * 1e3,
                     "share_of_ceiling": ceilings[ceiling] / ms, "ceiling": f"network forward {ceiling}"})
    for r in rows:
        r.update(network=preset, image_size=image_size, batch=batch)
    return rows


def fifty_thousand(preset: str, image_size: int, n: int, batch: int, device) -> dict:
    """Wall time of kacfast.sample(net, 1, labels=n labels, dtype=bf16, compile=True): the first
    call (trace, compile, warm-up and capture included; inductor's on-disk cache already holds
    the sampler section's kernels) and a second one, each with the results on the device."""
    net = _network(preset, image_size, device)
    labels = (torch.arange(n) % 10).to(device)
    out = {"network": preset, "image_size": image_size, "n": n, "max_batch": batch}
    for name in ("first call s (trace + compile, inductor's cache warm from the sampler section, "
                 "+ capture)", "second call s"):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        images = kacfast.sample(net, 1, labels=labels, seed=1, dtype=torch.bfloat16, compile=True,
                                max_batch=batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[name] = time.perf_counter() - start
    out["images_per_s"] = n / out["second call s"]
    out["finite"] = bool(torch.isfinite(images).all())
    return out


class _TimedObjective:
    """An objective that records the time of each loss call (the device synchronized first)."""

    def __init__(self, objective, device):
        self.objective, self.device, self.times = objective, device, []

    def __getattr__(self, name):
        return getattr(self.objective, name)

    def loss(self, *args):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        return self.objective.loss(*args)


TRAINING_SETTINGS = (("fp32", False), ("bf16", False), ("bf16", True))  # (precision, compile)


def training_rows(preset: str, image_size: int, batch: int, steps: int, device,
                  settings=TRAINING_SETTINGS) -> list[dict]:
    """Kac flow-matching training images/s per precision and compile, over the last `steps` of
    2 x `steps` optimizer steps (the first `steps` pay the compile and the warm-up), and each
    run's last loss (a miscompiled backward shows as NaN)."""
    from kacfast.training import TrainConfig, train
    from kacfast.training.objectives import KacObjective

    channels = 3 if preset == "unet-cifar10" else 1
    x = torch.rand((batch * 4, channels, image_size, image_size)) * 2 - 1
    y = torch.arange(len(x)) % 10
    rows = []
    for precision, compile in settings:
        torch._dynamo.reset()  # a static graph for this setting, as a user's first run gets
        net = _network(preset, image_size, device).train().requires_grad_(True)
        config = TrainConfig(steps=2 * steps, batch_size=batch, warmup=1, ckpt_every=10**9,
                             sample_every=0, log_every=10**9, precision=precision, compile=compile)
        objective = _TimedObjective(KacObjective(KacProcess()), device)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            train(net, objective, (x, y), config, out, progress=False)
            with open(os.path.join(out, "log.jsonl")) as f:
                last_loss = json.loads(f.read().splitlines()[-1])["loss"]
        t = objective.times
        rows.append({"row": f"train {precision}{' + compile' if compile else ''}",
                     "images_per_s": (len(t) - 1 - steps) * batch / (t[-1] - t[steps]),
                     "warm-up s": t[steps] - start, "last loss": last_loss, "network": preset,
                     "batch": batch})
    for r in rows:
        r["x_fp32_eager"] = r["images_per_s"] / rows[0]["images_per_s"]
    return rows


def _markdown(result: dict) -> str:
    lines = [f"device: {result['device']}, torch {result['torch']}, TF32 {result['tf32']}"]
    for key, rows in result.items():
        if key not in ("device", "torch", "smoke", "tf32"):
            lines += markdown_table(key, rows)
    return "\n".join(lines) + "\n"


def _run_section(result: dict, key: str, fn, path: str) -> None:
    """One section, from an empty compile cache: its rows into PATH.json and PATH.md and onto
    stdout as soon as it ends, so a time limit hit later keeps them."""
    torch._dynamo.reset()
    _section(result, key, fn, path + ".json")
    with open(path + ".md", "w") as f:
        f.write(_markdown(result))
    print("\n".join(markdown_table(key, result[key])), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on any device: checks every code path, measures nothing")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        tiny, cifar, n50k, train_cfg = (8, 4), (8, 2), (6, 4), (8, 4, 2)
    else:
        tiny, cifar, n50k, train_cfg = (16, 4096), (32, 1024), (50_000, 1024), (32, 128, 20)
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)",
              "torch": torch.__version__, "smoke": args.smoke,
              "tf32": {"cudnn": torch.backends.cudnn.allow_tf32,
                       "matmul": torch.backends.cuda.matmul.allow_tf32}}
    path = os.path.join(args.out, "gpu_speed")
    _run_section(result, "sampler_unet_tiny", lambda: sampler_rows("unet-tiny", *tiny, device), path)
    _run_section(result, "sampler_unet_cifar10",
                 lambda: sampler_rows("unet-cifar10", *cifar, device), path)
    _run_section(result, "fifty_thousand_cifar10",
                 lambda: fifty_thousand("unet-cifar10", cifar[0], *n50k, device), path)
    _run_section(result, "training_unet_cifar10",
                 lambda: training_rows("unet-cifar10", *train_cfg, device), path)


if __name__ == "__main__":
    main()
