"""CUDA backend: the kernels compile with nvcc (any machine with a toolkit), and on a GPU the ops
match the CPU backend bit for bit, pass torch.library.opcheck and honour the current stream; the
noise op with a seed tensor replays new seeds from a captured CUDA graph."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch

import kacfast
from kacfast import ops  # the import registers the fake kernels opcheck needs
from kacfast.ops import _ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS_CU = os.path.join(ROOT, "csrc", "cuda", "kac_kernels.cu")
# The flags setup.py gives nvcc (--fmad=false: no FMA contraction, so CUDA rounds like the CPU).
NVCC_FLAGS = ["-O3", "--fmad=false", "-std=c++17",
              "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]


def _find_nvcc() -> str | None:
    for candidate in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def test_cuda_kernels_compile_with_nvcc(tmp_path):
    nvcc = _find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (neither on PATH nor at /usr/local/cuda/bin/nvcc)")
    cmd = [nvcc, "-c", KERNELS_CU, "-o", str(tmp_path / "kac_kernels.o")] + NVCC_FLAGS
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nfailed with:\n{proc.stderr}"


def test_cuda_glue_parses_against_torch_headers(tmp_path):
    """The torch glue needs a CUDA build of torch to compile; on a CPU torch, check its syntax with
    a stand-in for the one generated header such builds lack (c10/cuda/impl/cuda_cmake_macros.h)."""
    from torch.utils.cpp_extension import include_paths
    import sysconfig

    cuda_include = "/usr/local/cuda/include"
    if _find_nvcc() is None or not os.path.isdir(cuda_include) or shutil.which("g++") is None:
        pytest.skip("needs g++ and a CUDA toolkit's headers")
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    cmd = (["g++", "-std=c++20", "-fsyntax-only", "-w", f"-I{tmp_path}", f"-I{cuda_include}",
            f"-I{sysconfig.get_paths()['include']}", "-DTORCH_EXTENSION_NAME=_C"]
           + [f"-I{p}" for p in include_paths()]
           + [os.path.join(ROOT, "csrc", "cuda", "kac_cuda_glue.cpp")])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


# ------------------------------------------------------------------------------------------------
# GPU tests
# ------------------------------------------------------------------------------------------------
def _why_no_cuda_backend() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU visible"
    if not _ext.available():
        return f"the kacfast extension did not load ({_ext.why_unavailable()})"
    if not _ext.has_cuda():
        return "the kacfast extension was built without its CUDA kernels"
    return None


requires_cuda_backend = pytest.mark.skipif(_why_no_cuda_backend() is not None,
                                           reason=str(_why_no_cuda_backend()))

SHAPES = [(1,), (1023,), (3, 5, 7, 11)]
SHAPE_IDS = ["1", "1023", "3x5x7x11"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
DTYPE_IDS = ["f32", "f16", "bf16", "f64"]
A, C, EPS = 8.0, 1.5, 1e-4  # a * s reaches 48 > 32: exercises the second Poisson chunk
SEED, OFFSET = 2**40 + 12345, 2**32 - 1  # both words of the seed, the largest offset
T_END = 1.5


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _velocity_inputs(shape, dtype, lead: bool):
    """x around the light cone of c s (some beyond it); s full-shaped or a leading block."""
    g = _gen(1)
    s_shape = (shape[:2] if len(shape) > 2 else (1,)) if lead else shape
    s = 6.0 * torch.rand(s_shape, generator=g)
    s.view(-1)[0] = 0.0
    s_full = s.reshape(s_shape + (1,) * (len(shape) - len(s_shape))).expand(shape)
    x = (2.0 * torch.rand(shape, generator=g) - 1.0) * 1.1 * C * s_full
    x.view(-1)[-1] = C * s_full.reshape(-1)[-1]  # exactly on the cone
    return x.to(dtype).contiguous(), s.contiguous()


def _noise_inputs(shape):
    s = 6.0 * torch.rand(shape, generator=_gen(2))
    s.view(-1)[0] = 0.0
    return s


def _noise_target_inputs(shape, dtype):
    g = _gen(3)
    x0 = torch.randn(shape, generator=g).to(dtype)
    t = T_END * torch.rand(shape[0], generator=g)
    t[0] = T_END if shape[0] > 1 else t[0]
    return x0, t


def _cuda(*tensors, device="cuda"):
    return tuple(t.to(device) for t in tensors)


def _assert_bitwise(cuda_out: torch.Tensor, cpu_out: torch.Tensor, what: str) -> None:
    got = cuda_out.cpu()
    assert got.dtype == cpu_out.dtype and got.shape == cpu_out.shape, what
    if not torch.equal(got, cpu_out):
        diff = got.double() != cpu_out.double()
        worst = (got.double() - cpu_out.double()).abs().max().item()
        first = diff.reshape(-1).nonzero()[0].item()
        raise AssertionError(f"{what}: {int(diff.sum())} of {diff.numel()} elements differ from "
                             f"the CPU backend (first at flat index {first}, max |diff| {worst}).")


@requires_cuda_backend
@pytest.mark.parametrize("lead", [False, True], ids=["s_full", "s_leading_block"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_cuda_kac_velocity_bitwise_equals_cpu(shape, dtype, lead):
    x, s = _velocity_inputs(shape, dtype, lead)
    expected = torch.ops.kacfast.kac_velocity(x, s, A, C, EPS)
    got = torch.ops.kacfast.kac_velocity(*_cuda(x, s), A, C, EPS)
    _assert_bitwise(got, expected, "kac_velocity")


@requires_cuda_backend
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_cuda_kac_noise_bitwise_equals_cpu(shape, dtype):
    s = _noise_inputs(shape)
    expected = torch.ops.kacfast.kac_noise(s, A, C, SEED, OFFSET, dtype)
    got = torch.ops.kacfast.kac_noise(s.cuda(), A, C, SEED, OFFSET, dtype)
    _assert_bitwise(got, expected, "kac_noise")


# (seed, offset) pairs: zeros, both seed words, both range ends.
SEED_TENSOR_CASES = [(0, 0), (SEED, 2**31), (2**63 - 1, 2**32 - 1)]


@requires_cuda_backend
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_cuda_kac_noise_seed_tensor_bitwise_equals_cpu(shape, dtype):
    s = _noise_inputs(shape)
    for seed, offset in SEED_TENSOR_CASES:
        expected = torch.ops.kacfast.kac_noise(s, A, C, seed, offset, dtype)
        rng = torch.tensor([seed, offset], device="cuda")
        _assert_bitwise(torch.ops.kacfast.kac_noise_seeded(s.cuda(), rng, A, C, dtype), expected,
                        f"kac_noise_seeded at ({seed}, {offset})")
        with ops.use_backend("cuda"):
            got = ops.kac_noise(s.cuda(), A, C, seed=rng, dtype=dtype)
        _assert_bitwise(got, expected, f"ops.kac_noise with a seed tensor at ({seed}, {offset})")


@requires_cuda_backend
def test_cuda_prior_replays_new_seeds_from_a_graph():
    """The CUDA-graph sampler's pattern: capture the prior once with a seed tensor, then copy new
    [seed, offset] values into it before each replay (no recapture)."""
    proc = kacfast.KacProcess(a=A, c=C, T=T_END)
    shape = (3, 5, 7, 11)
    rng = torch.tensor([SEED, OFFSET], device="cuda")
    with ops.use_backend("cuda"):
        proc.prior(shape, seed=rng, device="cuda")  # warm-up outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # fails if the op synchronizes the host
            x = proc.prior(shape, seed=rng, device="cuda")
        for seed, offset in SEED_TENSOR_CASES + [(SEED, OFFSET)]:
            rng.copy_(torch.tensor([seed, offset]))
            graph.replay()
            eager = proc.prior(shape, seed=seed, offset=offset, device="cuda")
            _assert_bitwise(x, eager.cpu(), f"graph replay at ({seed}, {offset})")


@requires_cuda_backend
def test_cuda_seed_tensor_on_another_device_is_rejected():
    s = torch.rand(4, device="cuda")
    with pytest.raises(ValueError, match="seed tensor is on cpu but s is on cuda"):
        ops.kac_noise(s, A, C, seed=torch.tensor([1, 0]))
    with pytest.raises(RuntimeError, match="rng is on cpu but s is on cuda"):
        torch.ops.kacfast.kac_noise_seeded(s, torch.tensor([1, 0]), A, C, torch.float32)


@requires_cuda_backend
@pytest.mark.parametrize("clock", [0, 1], ids=["clock_t", "clock_t2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_cuda_kac_noise_target_bitwise_equals_cpu(shape, dtype, clock):
    x0, t = _noise_target_inputs(shape, dtype)
    args = (A, C, T_END, clock, EPS, SEED, OFFSET)
    expected = torch.ops.kacfast.kac_noise_target(x0, t, *args)
    got = torch.ops.kacfast.kac_noise_target(*_cuda(x0, t), *args)
    _assert_bitwise(got[0], expected[0], "kac_noise_target x_t")
    _assert_bitwise(got[1], expected[1], "kac_noise_target u")


def _opcheck_cases(device):
    x, s = _cuda(*_velocity_inputs((3, 5, 7, 11), torch.float32, lead=True), device=device)
    x0, t = _cuda(*_noise_target_inputs((3, 5, 7, 11), torch.bfloat16), device=device)
    s_noise = _noise_inputs((4, 9)).to(device)
    rng = torch.tensor([SEED, OFFSET], device=device)
    return [
        (torch.ops.kacfast.kac_velocity.default, (x, s, A, C, EPS)),
        (torch.ops.kacfast.kac_noise.default, (s_noise, A, C, SEED, OFFSET, torch.float16)),
        (torch.ops.kacfast.kac_noise_seeded.default, (s_noise, rng, A, C, torch.float16)),
        (torch.ops.kacfast.kac_noise_target.default, (x0, t, A, C, T_END, 1, EPS, SEED, OFFSET)),
    ]


@requires_cuda_backend
@pytest.mark.parametrize("case", range(4), ids=["kac_velocity", "kac_noise", "kac_noise_seeded",
                                                "kac_noise_target"])
def test_cuda_ops_pass_opcheck(case):
    op, args = _opcheck_cases("cuda")[case]
    torch.library.opcheck(op, args)


def _all_ops_inputs(device):
    x, s = _velocity_inputs((3, 5, 7, 11), torch.float16, lead=True)
    x0, t = _noise_target_inputs((3, 5, 7, 11), torch.float32)
    return _cuda(x, s, _noise_inputs((1023,)), x0, t, device=device)


def _all_ops(x, s, s_noise, x0, t):
    """The three ops on fixed inputs (see _all_ops_inputs): velocity, noise, x_t, u."""
    return (torch.ops.kacfast.kac_velocity(x, s, A, C, EPS),
            torch.ops.kacfast.kac_noise(s_noise, A, C, SEED, OFFSET, torch.bfloat16),
            *torch.ops.kacfast.kac_noise_target(x0, t, A, C, T_END, 0, EPS, SEED, OFFSET))


@requires_cuda_backend
def test_cuda_ops_on_non_default_stream_equal_cpu():
    expected = _all_ops(*_all_ops_inputs("cpu"))
    inputs = _all_ops_inputs("cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = [g.cpu() for g in _all_ops(*inputs)]  # the copies queue on `stream` after the ops
    for g, e in zip(got, expected):
        _assert_bitwise(g, e, "ops on a side stream")


@requires_cuda_backend
def test_cuda_ops_launch_on_current_stream_under_graph_capture():
    # A launch on any stream but the capturing one invalidates the capture, so this passes only
    # when the kernels go to the current stream; replay must then give the CPU results.
    expected = _all_ops(*_all_ops_inputs("cpu"))
    inputs = _all_ops_inputs("cuda")
    _all_ops(*inputs)  # warm-up outside the capture (lazy module loading)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = _all_ops(*inputs)
    graph.replay()
    torch.cuda.synchronize()
    for g, e in zip(got, expected):
        _assert_bitwise(g, e, "ops replayed from a CUDA graph")


@requires_cuda_backend
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_cuda_ops_on_second_gpu_use_its_device():
    expected = _all_ops(*_all_ops_inputs("cpu"))
    inputs = _all_ops_inputs("cuda:1")
    with torch.cuda.device(0):
        got = _all_ops(*inputs)
    for g, e in zip(got, expected):
        assert g.device == torch.device("cuda:1")
        _assert_bitwise(g, e, "ops on cuda:1")


@requires_cuda_backend
def test_cuda_ops_accept_zero_size_tensors():
    x = torch.empty(0, 3, device="cuda", dtype=torch.float16)
    s = torch.empty(0, device="cuda")
    assert torch.ops.kacfast.kac_velocity(x, s, A, C, EPS).shape == (0, 3)
    assert torch.ops.kacfast.kac_noise(s, A, C, SEED, 0, torch.float64).dtype == torch.float64
    rng = torch.zeros(2, dtype=torch.int64, device="cuda")
    assert torch.ops.kacfast.kac_noise_seeded(s, rng, A, C, torch.float16).dtype == torch.float16
    x_t, u = torch.ops.kacfast.kac_noise_target(x, s, A, C, T_END, 0, EPS, SEED, 0)
    assert x_t.shape == u.shape == (0, 3) and x_t.dtype == torch.float16


@requires_cuda_backend
def test_cuda_ops_reject_times_on_another_device():
    x = torch.zeros(4, device="cuda")
    with pytest.raises(RuntimeError, match="s is on cpu"):
        torch.ops.kacfast.kac_velocity(x, torch.zeros(4), A, C, EPS)


@requires_cuda_backend
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("guided,with_prev,clamp,return_v",
                         [(False, False, False, False), (True, True, True, True),
                          (True, False, False, True), (False, True, True, False)])
def test_cuda_guided_step_bitwise_equals_cpu(shape, dtype, guided, with_prev, clamp, return_v):
    g = _gen(5)
    x = torch.randn(shape, generator=g).to(dtype)
    v = torch.randn(((2 * shape[0],) + shape[1:]) if guided else shape, generator=g).to(dtype)
    v_prev = torch.randn(shape, generator=g).to(dtype) if with_prev else None
    args = (1.7, 0.03, 1.25, -0.25, clamp, return_v)
    cpu = torch.ops.kacfast.kac_guided_step(x, v, v_prev, *args)
    gpu = torch.ops.kacfast.kac_guided_step(x.cuda(), v.cuda(), None if v_prev is None else v_prev.cuda(), *args)
    _assert_bitwise(gpu[0], cpu[0], "guided_step x")
    _assert_bitwise(gpu[1], cpu[1], "guided_step v_mix")



@requires_cuda_backend
def test_step_by_step_sampling_does_not_synchronize():
    """The loop a diffusers user writes (KacFlowScheduler.step, one_call_step underneath) reads no
    device value on the host: step sizes are host floats, the timestep tensor is not read."""
    from kacfast.sampling import one_call_step
    x = torch.zeros(8, 1, 4, 4, device="cuda")
    v = torch.ones(16, 1, 4, 4, device="cuda")
    scheduler = None
    try:
        from kacfast.integrations.diffusers import KacFlowScheduler
        scheduler = KacFlowScheduler(solver="ab2")
        scheduler.set_begin_index(2)  # left from an earlier loop: set_timesteps must clear it
        scheduler.set_timesteps(4, device="cuda")
    except ImportError:  # the GPU machine may lack diffusers: the step underneath is still checked
        pass
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        history, y = None, x
        for _ in range(4):
            y, history = one_call_step("ab2", y, v, 0.25, history, guidance=1.5)
        if scheduler is not None:
            for t in scheduler.timesteps:
                x = scheduler.step(v, t, x, guidance_scale=1.5).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode(0)
    if scheduler is not None:
        assert torch.equal(x, y.clamp(-1, 1))
