"""Triton kernels compiled for a real GPU (no interpreter): every op equals the C++ CPU backend bit
for bit over odd shapes and dtypes, passes opcheck on CUDA tensors and runs under
torch.compile(fullgraph=True); the noise with a seed tensor replays new seeds from a CUDA graph.
Skipped without a CUDA GPU, and under TRITON_INTERPRET=1 (the interpreter tests in test_triton*.py
and test_noise_seed_tensor.py set it): run this file in its own process,

    python -m pytest tests/test_triton_gpu.py        (benchmarks/gpu_check.sh does)
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import kacfast
from kacfast import ops
from kacfast.ops import _ext

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible"),
    # Not importorskip: importing triton here, before test_triton.py sets TRITON_INTERPRET=1 in
    # the same process, would break the interpreter tests.
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                       reason="TRITON_INTERPRET=1 is set: the kernels would not compile for the GPU"),
    pytest.mark.skipif(not _ext.available(), reason="the C++ CPU backend (the bitwise reference) "
                       "did not load"),
]

SHAPES = [(1,), (1023,), (3, 5, 7, 11), (257, 129)]
SHAPE_IDS = ["1", "1023", "3x5x7x11", "257x129"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["f32", "f16", "bf16"]
A, C, EPS, T_END = 8.0, 1.5, 1e-4, 1.5  # a * s up to 48: the second Poisson chunk runs
SEED, OFFSET = 2**40 + 12345, 2**32 - 1
DEVICE = "cuda"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _on(backend: str, fn, *tensors):
    """fn(*tensors) with every op pinned to `backend`; CUDA tensors for triton, CPU for cpu."""
    device = DEVICE if backend == "triton" else "cpu"
    with ops.use_backend(backend):
        out = fn(*(t.to(device) for t in tensors))
    return tuple(o.cpu() for o in (out if isinstance(out, tuple) else (out,)))


def _assert_same(got, want, what):
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, what
        if not torch.equal(g, w):
            bad = (g.double() != w.double())
            raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} elements differ from "
                                 f"the CPU backend (max |diff| "
                                 f"{(g.double() - w.double()).abs().max().item():.3g}).")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_velocity_equals_cpu(shape, dtype):
    g = _gen(1)
    s = 6.0 * torch.rand(shape, generator=g)
    s.view(-1)[0] = 0.0
    x = ((2 * torch.rand(shape, generator=g) - 1) * 1.1 * C * s)
    x.view(-1)[-1] = C * s.view(-1)[-1]  # exactly on the light cone
    fn = lambda x, s: ops.kac_velocity(x, s, A, C, EPS)  # noqa: E731
    _assert_same(_on("triton", fn, x.to(dtype), s), _on("cpu", fn, x.to(dtype), s), "kac_velocity")


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=DTYPE_IDS + ["f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_noise_equals_cpu(shape, dtype):
    s = 6.0 * torch.rand(shape, generator=_gen(2))
    s.view(-1)[0] = 0.0
    fn = lambda s: ops.kac_noise(s, A, C, seed=SEED, offset=OFFSET, dtype=dtype)  # noqa: E731
    _assert_same(_on("triton", fn, s), _on("cpu", fn, s), "kac_noise")


@pytest.mark.parametrize("seed,offset", [(0, 0), (SEED, 2**31), (2**63 - 1, 2**32 - 1)],
                         ids=["zeros", "two-words", "extremes"])
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=DTYPE_IDS + ["f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_noise_seed_tensor_equals_cpu(shape, dtype, seed, offset):
    """The seed tensor ([seed, offset], read by the kernel) gives the int-seed numbers."""
    s = 6.0 * torch.rand(shape, generator=_gen(2))
    s.view(-1)[0] = 0.0

    def from_tensor(s, rng):
        return ops.kac_noise(s, A, C, seed=rng, dtype=dtype)

    def from_ints(s):
        return ops.kac_noise(s, A, C, seed=seed, offset=offset, dtype=dtype)

    _assert_same(_on("triton", from_tensor, s, torch.tensor([seed, offset])),
                 _on("cpu", from_ints, s), "kac_noise with a seed tensor")


def test_prior_replays_new_seeds_from_a_graph():
    """Capture the prior once with a seed tensor; new values copied into it before each replay
    give the eager numbers at those values (the CUDA-graph sampler's pattern)."""
    proc = kacfast.KacProcess(a=A, c=C, T=T_END)
    shape = (3, 5, 7, 11)
    rng = torch.tensor([SEED, OFFSET], device=DEVICE)
    with ops.use_backend("triton"):
        proc.prior(shape, seed=rng, device=DEVICE)  # compiles the kernel outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # fails if the op synchronizes the host
            x = proc.prior(shape, seed=rng, device=DEVICE)
        for seed, offset in [(0, 0), (2**63 - 1, 2**32 - 1), (SEED, OFFSET)]:
            rng.copy_(torch.tensor([seed, offset]))
            graph.replay()
            want = proc.prior(shape, seed=seed, offset=offset, device=DEVICE)
            _assert_same((x.cpu(),), (want.cpu(),), f"graph replay at ({seed}, {offset})")


@pytest.mark.parametrize("clock", ["t", "t2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_noise_target_equals_cpu(shape, dtype, clock):
    g = _gen(3)
    x0 = torch.randn(shape, generator=g).to(dtype)
    t = T_END * torch.rand(shape[0], generator=g)
    t[0] = T_END
    fn = lambda x0, t: ops.kac_noise_target(x0, t, A, C, T_END, clock=clock, eps=EPS,  # noqa: E731
                                            seed=SEED, offset=OFFSET)
    _assert_same(_on("triton", fn, x0, t), _on("cpu", fn, x0, t), "kac_noise_target")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("guided,with_prev,clamp", [(False, False, False), (True, True, True),
                                                    (True, False, False)])
def test_guided_step_equals_cpu(shape, dtype, guided, with_prev, clamp):
    g = _gen(5)
    x = torch.randn(shape, generator=g).to(dtype)
    v = torch.randn(((2 * shape[0],) + shape[1:]) if guided else shape, generator=g).to(dtype)
    tensors = (x, v) + ((torch.randn(shape, generator=g).to(dtype),) if with_prev else ())

    def fn(x, v, *prev):
        return ops.guided_step(x, v, prev[0] if prev else None, guidance=1.7,
                               h=0.03, alpha=1.25, beta=-0.25, clamp=clamp, return_v=True)
    _assert_same(_on("triton", fn, *tensors), _on("cpu", fn, *tensors), "guided_step")


def test_triton_ops_pass_opcheck_on_cuda():
    from kacfast.ops.triton import kac, step  # noqa: F401  (registers torch.ops.kacfast.triton_*)
    g = _gen(6)
    s = (torch.rand(3, 5, 7, generator=g) + 1e-3).cuda()
    x = ((2 * torch.rand(3, 5, 7, generator=g) - 1) * C * s.cpu()).cuda()
    x0 = torch.randn(3, 5, 7, generator=g).to(torch.bfloat16).cuda()
    t = torch.rand(3, generator=g).cuda()
    v = torch.randn(6, 5, 7, generator=g).cuda()
    torch.library.opcheck(torch.ops.kacfast.triton_kac_velocity, (x, s, A, C, EPS))
    torch.library.opcheck(torch.ops.kacfast.triton_kac_noise, (s, A, C, SEED, 1, torch.float16))
    torch.library.opcheck(torch.ops.kacfast.triton_kac_noise_seeded,
                          (s, torch.tensor([SEED, 1], device=DEVICE), A, C, torch.float16))
    torch.library.opcheck(torch.ops.kacfast.triton_kac_noise_target,
                          (x0, t, A, C, T_END, 1, EPS, SEED, 0))
    torch.library.opcheck(torch.ops.kacfast.triton_kac_guided_step,
                          (x, v, None, 1.5, 0.01, 1.0, 0.0, True, True))


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_compile_fullgraph_on_gpu(backend):
    if backend not in ops.available_backends("cuda"):
        pytest.skip(f"backend {backend} not available on CUDA here")
    g = _gen(7)
    x0 = torch.randn(4, 3, 9, 9, generator=g).cuda()
    t = torch.rand(4, generator=g).cuda()

    def train_pair_and_step(x0, t):
        x_t, u = ops.kac_noise_target(x0, t, 9.0, 3.0, seed=11)
        v = torch.cat([u, 0.5 * u])
        return ops.guided_step(x_t, v, guidance=1.5, h=0.1)[0] + ops.kac_velocity(x_t, t.view(-1, 1, 1, 1), 9.0, 3.0)

    with ops.use_backend(backend):
        want = train_pair_and_step(x0, t)
        got = torch.compile(train_pair_and_step, fullgraph=True)(x0, t)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
