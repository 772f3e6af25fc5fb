"""Compiled, CUDA-graph and bf16 sampling on a GPU (skipped without one; run by
benchmarks/gpu_check.sh). One small compiled network per module: compiling is the slow part."""
import pytest
import torch

import kacfast
from kacfast.models import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

LABELS = torch.arange(12) % 10


@pytest.fixture(scope="module", autouse=True)
def exact_float32_convolutions():
    """cuDNN's TF32 default lets eager and inductor's channels_last graph pick kernels that round
    differently (about 1e-3): these tests compare the samplers' logic, so float32 is float32."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = build_model("unet-tiny", image_size=8)
    for p in model.parameters():  # a random output layer: the zero init makes sampling trivial
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    return model.cuda().eval().requires_grad_(False)


@pytest.fixture(scope="module")
def graphed(net):
    """A CUDA-graph sampler: 3 AB-2 steps at guidance 1.5 for 12 samples, float32 network."""
    return kacfast.compile_sampler(net, 3, batch_size=12, guidance=1.5, solver="ab2")


def test_graph_sampler_equals_eager_and_replays_new_seeds(net, graphed):
    """Every seed replays the one graph captured at build (nothing recaptures): equal to eager
    sampling means the prior read the new seed from its device tensor."""
    assert graphed.cuda_graph
    labels = LABELS.cuda()
    for seed in (0, 1, 2**62 + 5):
        eager = kacfast.sample(net, 3, labels=labels, guidance=1.5, solver="ab2", seed=seed)
        torch.testing.assert_close(graphed(labels=labels, seed=seed), eager, atol=1e-4, rtol=0)


def test_graph_sampler_reads_new_labels(net, graphed):
    labels = torch.flip(LABELS, [0]).cuda()
    eager = kacfast.sample(net, 3, labels=labels, guidance=1.5, solver="ab2", seed=4)
    torch.testing.assert_close(graphed(labels=labels.cpu(), seed=4), eager, atol=1e-4, rtol=0)


def test_graph_output_is_a_copy(graphed):
    first = graphed(labels=LABELS, seed=0)
    graphed(labels=LABELS, seed=1)
    torch.testing.assert_close(first, graphed(labels=LABELS, seed=0), atol=0, rtol=0)


def test_chunked_compiled_sample_on_cuda(net):
    labels = (torch.arange(10) % 10).cuda()
    eager = kacfast.sample(net, 1, labels=labels, seed=9)
    fast = kacfast.sample(net, 1, labels=labels, seed=9, compile=True, max_batch=4)
    torch.testing.assert_close(fast, eager, atol=1e-4, rtol=0)


def test_bf16_graph_sampler_is_close_to_float32(net):
    labels = LABELS.cuda()
    low = kacfast.compile_sampler(net, 1, batch_size=12, dtype=torch.bfloat16)(labels=labels, seed=3)
    full = kacfast.sample(net, 1, labels=labels, seed=3)
    assert low.dtype == torch.float32
    assert 0 < (low - full).abs().max() < 0.1  # bf16 ran (differs), and stays close


def test_replaced_parameters_are_refused(net):
    clone = build_model("unet-tiny", image_size=8).cuda().eval().requires_grad_(False)
    clone.load_state_dict(net.state_dict())
    sampler = kacfast.compile_sampler(clone, 1, batch_size=2)
    clone.time_embed[0].weight = torch.nn.Parameter(clone.time_embed[0].weight.clone())
    with pytest.raises(RuntimeError, match="replaced"):
        sampler(labels=[0, 1], seed=0)
