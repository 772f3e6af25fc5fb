"""kac_noise with its (seed, offset) in an int64 tensor (the form a CUDA graph replays with new
seeds, see kacfast.ops.kac_noise): bit-identical to the int-seed call on the cpu, torch and triton
backends (triton through the interpreter), registered for opcheck and torch.compile, and checked
with one-sentence errors. The CUDA versions live in test_cuda.py and test_triton_gpu.py."""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton / the kernels are imported, as test_triton.py

import pytest  # noqa: E402
import torch  # noqa: E402

import kacfast  # noqa: E402
from kacfast import ops  # noqa: E402
from kacfast.ops import _ext  # noqa: E402

A, C = 8.0, 1.5  # a s up to 48 > 32: the Poisson side stream runs
# Both seed words, the extremes of both ranges, an offset >= 2^31 (a different integer type in
# Triton), and zeros.
SEEDS = [(0, 0), (11, 7), (2**40 + 12345, 2**31), (2**63 - 1, 2**32 - 1)]
SHAPES = [(1,), (3, 5, 7), (1023,)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
needs_ext = pytest.mark.skipif(not _ext.available(), reason="C++ extension not built")


def _require(backend):
    if backend not in ops.available_backends("cpu"):
        pytest.skip(f"backend {backend} is not available on CPU here")


def _times(shape):
    s = 6.0 * torch.rand(shape, generator=torch.Generator().manual_seed(2))
    s.view(-1)[0] = 0.0  # the atom at 0
    return s


@pytest.mark.parametrize("seed,offset", SEEDS, ids=[f"{s:#x}-{o:#x}" for s, o in SEEDS])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16", "bf16", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=["1", "3x5x7", "1023"])
@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])
def test_seed_tensor_equals_int_seed(backend, shape, dtype, seed, offset):
    _require(backend)
    s = _times(shape)
    with ops.use_backend(backend):
        want = ops.kac_noise(s, A, C, seed=seed, offset=offset, dtype=dtype)
        got = ops.kac_noise(s, A, C, seed=torch.tensor([seed, offset]), dtype=dtype)
    assert got.dtype == dtype and got.shape == s.shape
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])
def test_seed_tensor_with_zero_elements(backend):
    _require(backend)
    with ops.use_backend(backend):
        out = ops.kac_noise(torch.empty(2, 0), A, C, seed=torch.tensor([3, 1]), dtype=torch.float16)
    assert out.shape == (2, 0) and out.dtype == torch.float16


def test_prior_accepts_seed_tensor():
    proc = kacfast.KacProcess(a=A, c=C)
    want = proc.prior((4, 3, 5), seed=2**63 - 1, offset=9)
    assert torch.equal(proc.prior((4, 3, 5), seed=torch.tensor([2**63 - 1, 9])), want)


def test_non_contiguous_seed_tensor():
    s = _times((2, 9))
    rng = torch.tensor([[11, -5], [7, -5]])[:, 0]  # [11, 7] with stride 2
    assert not rng.is_contiguous()
    assert torch.equal(ops.kac_noise(s, A, C, seed=rng), ops.kac_noise(s, A, C, seed=11, offset=7))


def _opcheck_args():
    s = _times((4, 9))
    return s, torch.tensor([2**40 + 12345, 2**32 - 1]), A, C, torch.float16


@needs_ext
def test_cpp_op_passes_opcheck():
    torch.library.opcheck(torch.ops.kacfast.kac_noise_seeded.default, _opcheck_args())


@pytest.mark.parametrize("backend,name", [("torch", "reference_kac_noise_seeded"),
                                          ("triton", "triton_kac_noise_seeded")])
def test_python_ops_pass_opcheck(backend, name):
    _require(backend)
    if backend == "triton":
        from kacfast.ops.triton import kac  # noqa: F401  (registers torch.ops.kacfast.triton_*)
    torch.library.opcheck(getattr(torch.ops.kacfast, name), _opcheck_args())


@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])
def test_compile_fullgraph_with_seed_tensor(backend):
    """One compiled graph serves every seed: new values in the seed tensor need no recompile."""
    from torch._dynamo.testing import CompileCounterWithBackend

    _require(backend)

    def prior_step(s, rng):
        return 0.5 * ops.kac_noise(s, A, C, seed=rng) + s

    s = _times((5, 7))
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(prior_step, fullgraph=True, backend=counter)
    with ops.use_backend(backend):
        for seed, offset in SEEDS:
            want = 0.5 * ops.kac_noise(s, A, C, seed=seed, offset=offset) + s
            assert torch.equal(compiled(s, torch.tensor([seed, offset])), want)
    assert counter.frame_count == 1


@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])
def test_seed_tensor_errors(backend):
    _require(backend)
    s = torch.rand(3)
    cases = [
        (torch.tensor([1.0, 0.0]), {}, TypeError, "seed tensor must be int64"),
        (torch.tensor([1, 0], dtype=torch.int32), {}, TypeError, "seed tensor must be int64"),
        (torch.tensor([1, 0, 0]), {}, ValueError, r"shape \(2,\)"),
        (torch.tensor([[1, 0]]), {}, ValueError, r"shape \(2,\)"),
        (torch.tensor([-1, 0]), {}, ValueError, r"seed must be an int in \[0, 2\^63\)"),
        (torch.tensor([0, 2**32]), {}, ValueError, r"offset must be an int in \[0, 2\^32\)"),
        (torch.tensor([0, -1]), {}, ValueError, r"offset must be an int in \[0, 2\^32\)"),
        (torch.tensor([1, 0]), {"offset": 5}, ValueError, "offset must be left at 0"),
        (torch.tensor([1, 0], device="meta"), {}, ValueError, "seed tensor is on meta but s is on"),
    ]
    with ops.use_backend(backend):
        for rng, extra, exc, msg in cases:
            with pytest.raises(exc, match=msg):
                ops.kac_noise(s, A, C, seed=rng, **extra)


@needs_ext
def test_cpp_op_checks_its_seed_tensor():
    """The C++ op checks the tensor (on CPU its values too) for callers that skip Python."""
    s = torch.rand(3)
    cases = [(torch.tensor([1.0, 0.0]), "rng must be an int64 tensor"),
             (torch.tensor([1, 0, 0]), r"rng must have shape \(2,\)"),
             (torch.tensor([1, 0, 0, 0])[::2], "rng must be contiguous"),
             (torch.tensor([-1, 0]), "seed must be >= 0"),
             (torch.tensor([0, 2**32]), r"offset must lie in \[0, 2\^32\)")]
    for rng, msg in cases:
        with pytest.raises(RuntimeError, match=msg):
            torch.ops.kacfast.kac_noise_seeded(s, rng, A, C, torch.float32)
