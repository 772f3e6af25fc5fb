"""End-to-end sampling throughput on one network: Kac few-step and 100-step samplers against EDM,
DDPM and DDIM, with the share of wall time spent outside the network.

    python -m pytest benchmarks/suites/test_bench_sampling.py --benchmark-json=sampling.json
    python benchmarks/suites/report.py sampling.json

The network is the `unet-tiny` preset at 8x8x1 (the digits shape; class-conditional, random weights:
throughput does not depend on training), batch 256, no guidance, float32, torch.no_grad. On this
2-core CPU the 28x28 network would make DDPM's 1000 NFE take over half an hour.
"""
import time

import pytest
import torch

import kacfast
from kacfast.baselines import EDMPrecond, ddim_sample, ddpm_sample, edm_nfe, edm_sample
from kacfast.facts import attach_facts, facts_of
from kacfast.models import build_model

BATCH = 256


class TimedNet(torch.nn.Module):
    """Wraps the network and adds up the wall time spent inside its forward calls."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.num_classes = net.num_classes
        self.sample_shape = net.sample_shape
        attach_facts(self, **vars(facts_of(net)))  # what kacfast.sample reads off a trained model
        self.seconds = 0.0
        self.calls = 0

    def forward(self, x, t, y=None):
        start = time.perf_counter()
        out = self.net(x, t, y)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = build_model("unet-tiny", image_size=8).eval()
    # A random (not zero-initialized) output layer: the zero init would make every sampler trivial.
    for p in model.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.02)
    return TimedNet(model)


LABELS = torch.arange(BATCH) % 10

SAMPLERS = {
    "kac 1 step (euler)": (1, lambda m, x: kacfast.sample(m, 1, labels=LABELS, seed=0)),
    "kac 2 steps (euler)": (2, lambda m, x: kacfast.sample(m, 2, labels=LABELS, seed=0)),
    "kac 4 steps (euler)": (4, lambda m, x: kacfast.sample(m, 4, labels=LABELS, seed=0)),
    "kac 100 steps (euler)": (100, lambda m, x: kacfast.sample(m, 100, labels=LABELS, seed=0)),
    "kac 100 steps (ab2)": (100, lambda m, x: kacfast.sample(m, 100, labels=LABELS, seed=0, solver="ab2")),
    "edm 18 steps (heun)": (edm_nfe(18), lambda m, x: edm_sample(EDMPrecond(m), x, LABELS)),
    "ddim 20 steps": (20, lambda m, x: ddim_sample(m, x, LABELS, num_steps=20)),
    "ddim 100 steps": (100, lambda m, x: ddim_sample(m, x, LABELS, num_steps=100)),
    "ddpm 1000 steps": (1000, lambda m, x: ddpm_sample(m, x, LABELS, num_steps=1000, seed=0)),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampling_throughput(benchmark, net, name):
    nfe, run = SAMPLERS[name]
    latents = torch.randn((BATCH,) + net.sample_shape, generator=torch.Generator().manual_seed(0))
    rounds = 3 if nfe <= 40 else 1
    with torch.no_grad():
        run(net, latents)  # warm-up (allocator, thread pool, first-call paths)
        net.seconds, net.calls = 0.0, 0
        benchmark.group = "sampling"
        benchmark.name = name
        benchmark.extra_info["baseline"] = name.startswith("edm")
        benchmark.pedantic(run, args=(net, latents), rounds=rounds, warmup_rounds=0)
    assert net.calls == nfe * rounds, (net.calls, nfe, rounds)
    total = benchmark.stats.stats.mean * rounds
    benchmark.extra_info.update({
        "nfe": nfe,
        "images_per_s": BATCH / benchmark.stats.stats.median,
        "outside_network_share": max(0.0, 1.0 - net.seconds / total),
    })
