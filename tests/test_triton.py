"""Triton backend (kacfast/ops/triton/kac.py) against the PyTorch reference, on CPU tensors through
the Triton interpreter. Sizes stay small: the interpreter runs every block operation in numpy."""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton / the kernels are imported

import pytest  # noqa: E402

pytest.importorskip("triton")

import torch  # noqa: E402

import kacfast.ops as ko  # noqa: E402
from kacfast.ops import _ext, reference  # noqa: E402
from kacfast.formulas import CLOCKS  # noqa: E402
from kacfast.ops.triton import kac as tk  # noqa: E402  (registers torch.ops.kacfast.triton_*)

SHAPES = [(1,), (1023,), (3, 5, 7)]
# bfloat16 runs in the interpreter of Triton 3.7 (older interpreters could not hold it).
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Half types: kernel (float32 math, one rounding) and reference (float64, one rounding) may land
# one ulp of the half type apart.
HALF_TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}
SEED = 0x1234_5678_9ABC  # > 2^32: both key words non-zero
needs_cpp = pytest.mark.skipif(not _ext.available(), reason="C++ extension not built")


def _velocity_inputs(shape, a, c, dtype, seed=0):
    """s in (0, 1.2], x spread over the whole cone [-c s, c s] plus a few exact cone points."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(shape, generator=g) * 1.2 + 1e-3
    x = (2 * torch.rand(shape, generator=g) - 1) * c * s
    flat = x.view(-1)
    if flat.numel() >= 4:
        flat[:2] = c * s.view(-1)[:2] * torch.tensor([1.0, -1.0])
    return x.to(dtype), s


# ------------------------------------------------------------------------------------------------
# velocity
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_velocity_matches_reference(shape, dtype):
    a, c = 9.0, 3.0
    x, s = _velocity_inputs(shape, a, c, dtype)
    with ko.use_backend("triton"):
        v = ko.kac_velocity(x, s, a, c)
    v_op = torch.ops.kacfast.triton_kac_velocity(x, s, a, c, 1e-4)
    ref = reference.kac_velocity(x, s, a, c)
    assert v.dtype == dtype and v.shape == x.shape
    torch.testing.assert_close(v, v_op, rtol=0, atol=0)
    if dtype == torch.float32:
        assert (v - ref).abs().max().item() <= 2e-5
    else:
        tol = HALF_TOL[dtype]
        torch.testing.assert_close(v.float(), ref.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("a,s_val", [(9.0, 1e-6), (9.0, 1.0), (50.0, 1.0), (40.0, 1.0)])
def test_velocity_edges(a, s_val):
    """s near 0, large a s (deep continued fraction), |x| on / just inside the cone."""
    c, eps = 3.0, 1e-4
    reach = c * s_val
    inner = torch.linspace(-1, 1, 101) * reach * 0.999
    cone = torch.tensor([reach, -reach, reach * (1 - 3 * eps), -reach * (1 - 3 * eps),
                         reach * (1 - eps / 2), reach * 1.5, -reach * 2, 0.0])
    x = torch.cat([inner, cone]).float()
    s = torch.full_like(x, s_val)
    with ko.use_backend("triton"):
        v = ko.kac_velocity(x, s, a, c, eps)
    ref = reference.kac_velocity(x, s, a, c, eps)
    assert (v - ref).abs().max().item() <= 2e-5
    # On or beyond the cone band: exactly c sign(x); inside it: strictly slower than c.
    assert v[101] == c and v[102] == -c and v[105] == c and v[106] == c and v[107] == -c
    assert v[108] == 0
    assert v[103].abs() < c and v[104].abs() < c
    # eps = 0: the band shrinks to the cone itself.
    x0 = torch.tensor([reach * (1 - 1e-5), reach])
    s0 = torch.full_like(x0, s_val)
    v0 = tk.kac_velocity(x0, s0, a, c, 0.0)
    assert (v0 - reference.kac_velocity(x0, s0, a, c, 0.0)).abs().max().item() <= 2e-5
    assert v0[0] < c and v0[1] == c


def test_velocity_s_zero_and_leading_block():
    a, c = 9.0, 3.0
    x = torch.tensor([0.0, 0.5, -0.5])
    v = tk.kac_velocity(x, torch.zeros(3), a, c)
    assert v.tolist() == [0.0, c, -c]
    # s covering a leading block of x (one time per sample), and a plain float s.
    x, _ = _velocity_inputs((3, 5, 7), a, c, torch.float32, seed=1)
    x = x * 0.3
    s = torch.tensor([0.4, 0.9, 1.1]).view(3, 1, 1)
    with ko.use_backend("triton"):
        v = ko.kac_velocity(x, s, a, c)
        v_scalar = ko.kac_velocity(x, 1.1, a, c)
    assert (v - reference.kac_velocity(x, s, a, c)).abs().max().item() <= 2e-5
    assert (v_scalar - reference.kac_velocity(x, 1.1, a, c)).abs().max().item() <= 2e-5


# ------------------------------------------------------------------------------------------------
# noise
# ------------------------------------------------------------------------------------------------
def _assert_noise_close(out, ref, s, c):
    """Allclose to atol 1e-5 * c s, except for a tiny fraction of elements.

    The Triton kernel (like the C++ one) evaluates exp with the header's polynomial and sums the
    spacings as float32 logs of products of uniforms; the reference uses torch.exp and float64 logs.
    Both draw the same Philox words, so the switch count n agrees unless a comparison u >= cdf of
    the Poisson inverse CDF lands within an ulp of a cdf value (probability ~1e-7 per comparison);
    then n differs by one and that element's displacement is a different (equally valid) sample.
    """
    out, ref = out.double().reshape(-1), ref.double().reshape(-1)
    tol = 1e-5 * c * s.double().reshape(-1) + 1e-7
    bad = ((out - ref).abs() > tol).sum().item()
    assert bad <= max(0, int(1e-3 * out.numel())), f"{bad} of {out.numel()} elements differ"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_noise_matches_reference(shape, dtype):
    a, c = 9.0, 3.0
    s = torch.rand(shape, generator=torch.Generator().manual_seed(2)) * 1.5
    with ko.use_backend("triton"):
        out = ko.kac_noise(s, a, c, seed=SEED, offset=3, dtype=dtype)
    out_op = torch.ops.kacfast.triton_kac_noise(s, a, c, SEED, 3, dtype)
    ref = reference.kac_noise(s, a, c, SEED, 3, torch.float32)
    assert out.dtype == dtype and out.shape == s.shape
    torch.testing.assert_close(out, out_op, rtol=0, atol=0)
    assert bool((out.float().abs() <= (c * s).to(dtype).float()).all())
    if dtype == torch.float32:
        _assert_noise_close(out, ref, s, c)
    else:
        tol = HALF_TOL[dtype]
        torch.testing.assert_close(out.float(), ref.to(dtype).float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("a,s_val", [(9.0, 1e-6), (50.0, 1.0), (40.0, 1.0), (9.0, 0.0)])
def test_noise_edges(a, s_val):
    """Tiny s, and a s > 32: Poisson chunks after the first draw from the side stream."""
    c = 3.0
    s = torch.full((300,), s_val)
    out = tk.kac_noise(s, a, c, SEED, 11)
    ref = reference.kac_noise(s, a, c, SEED, 11)
    assert bool((out.abs() <= c * s).all())
    _assert_noise_close(out, ref, s, c)
    if s_val == 0.0:
        assert bool((out == 0).all())


def test_noise_infinite_time_terminates():
    """The header's chunk loop never ends for s = inf; the kernel stops such lanes instead, and
    the other lanes of the block are unchanged."""
    s = torch.tensor([float("inf"), 1.0, 0.7])
    out = tk.kac_noise(s, 9.0, 3.0, SEED, 0)
    want = tk.kac_noise(torch.tensor([0.0, 1.0, 0.7]), 9.0, 3.0, SEED, 0)
    assert torch.equal(out[1:], want[1:])


def test_noise_deterministic_and_streams():
    s = torch.rand(257, generator=torch.Generator().manual_seed(3)) + 0.2
    a, c = 9.0, 3.0
    first = tk.kac_noise(s, a, c, 7, 5)
    assert torch.equal(first, tk.kac_noise(s, a, c, 7, 5))
    other_offset = tk.kac_noise(s, a, c, 7, 6)
    other_seed = tk.kac_noise(s, a, c, 8, 5)
    assert (first != other_offset).float().mean() > 0.9
    assert (first != other_seed).float().mean() > 0.9
    # Offsets >= 2^31 and seeds >= 2^32 reach the kernel as different integer types.
    big = tk.kac_noise(s, a, c, 2**62 + 12345, 2**32 - 1)
    _assert_noise_close(big, reference.kac_noise(s, a, c, 2**62 + 12345, 2**32 - 1), s, c)


@needs_cpp
@pytest.mark.parametrize("a", [9.0, 40.0])
def test_bit_identical_to_cpu_kernels(a):
    """Same header algorithm, same float operations (header exp/log, IEEE div/sqrt, no FMA)."""
    c = 3.0
    s = torch.rand(300, generator=torch.Generator().manual_seed(4)) * 1.2
    assert torch.equal(tk.kac_noise(s, a, c, SEED, 9),
                       torch.ops.kacfast.kac_noise(s, a, c, SEED, 9, torch.float32))
    x = (2 * torch.rand(300, generator=torch.Generator().manual_seed(5)) - 1) * c * s
    assert torch.equal(tk.kac_velocity(x, s, a, c, 1e-4),
                       torch.ops.kacfast.kac_velocity(x, s, a, c, 1e-4))
    x0 = torch.randn(6, 50, generator=torch.Generator().manual_seed(6))
    t = torch.rand(6, generator=torch.Generator().manual_seed(7))
    for clock in (0, 1):
        got = tk.kac_noise_target(x0, t, a, c, 1.0, clock, 1e-4, SEED, 2)
        want = torch.ops.kacfast.kac_noise_target(x0, t, a, c, 1.0, clock, 1e-4, SEED, 2)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ------------------------------------------------------------------------------------------------
# noise + target
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("clock", ["t", "t2"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (3, 5, 7), (4, 255)])
def test_noise_target_matches_reference(shape, dtype, clock):
    a, c, T = 9.0, 3.0, 1.0
    g = torch.Generator().manual_seed(8)
    x0 = torch.randn(shape, generator=g).to(dtype)
    t = torch.rand(shape[0], generator=g) * T
    with ko.use_backend("triton"):
        x_t, u = ko.kac_noise_target(x0, t, a, c, T, clock, seed=SEED, offset=4)
    x_op, u_op = torch.ops.kacfast.triton_kac_noise_target(
        x0, t, a, c, T, CLOCKS.index(clock), 1e-4, SEED, 4)
    x_ref, u_ref = reference.kac_noise_target(x0, t, a, c, T, clock, 1e-4, SEED, 4)
    assert x_t.dtype == dtype and u.dtype == dtype and x_t.shape == x0.shape
    torch.testing.assert_close(x_t, x_op, rtol=0, atol=0)
    torch.testing.assert_close(u, u_op, rtol=0, atol=0)
    tol = 2e-5 if dtype == torch.float32 else 2 * HALF_TOL[dtype]
    torch.testing.assert_close(x_t.float(), x_ref.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(u.float(), u_ref.float(), rtol=tol, atol=tol * 4)


# ------------------------------------------------------------------------------------------------
# empty inputs, registration, torch.compile
# ------------------------------------------------------------------------------------------------
def test_zero_elements():
    x = torch.empty(0, 4)
    assert tk.kac_velocity(x, torch.empty(0, 4), 9.0, 3.0).shape == (0, 4)
    n = tk.kac_noise(torch.empty(2, 0), 9.0, 3.0, 1, 0, torch.float16)
    assert n.shape == (2, 0) and n.dtype == torch.float16
    x_t, u = tk.kac_noise_target(torch.empty(0, 3), torch.empty(0), 9.0, 3.0, 1.0, 0, 1e-4, 1, 0)
    assert x_t.shape == u.shape == (0, 3)


def test_opcheck():
    g = torch.Generator().manual_seed(9)
    s = torch.rand(3, 5, generator=g) + 0.1
    x = (2 * torch.rand(3, 5, generator=g) - 1) * 3.0 * s
    torch.library.opcheck(torch.ops.kacfast.triton_kac_velocity, (x, s, 9.0, 3.0, 1e-4))
    torch.library.opcheck(torch.ops.kacfast.triton_kac_noise, (s, 9.0, 3.0, SEED, 1, torch.float16))
    torch.library.opcheck(torch.ops.kacfast.triton_kac_noise_target,
                          (x, torch.rand(3, generator=g), 9.0, 3.0, 1.0, 1, 1e-4, SEED, 1))


def test_torch_compile_fullgraph():
    # The custom ops are opaque to torch.compile: Inductor calls them as extern kernels, and their
    # bodies (which run the interpreter here) execute at run time, outside the traced graph, so the
    # default backend works. Cost: about 4 s with a warm Inductor cache, about 20 s cold (it builds
    # its C++ wrapper on 2 cores).
    def step(x, s):
        with ko.use_backend("triton"):
            v = ko.kac_velocity(x, s, 9.0, 3.0)
        k = torch.ops.kacfast.triton_kac_noise(s, 9.0, 3.0, SEED, 0, torch.float32)
        return x - 0.1 * v, k * 2

    s = torch.rand(4, 6, generator=torch.Generator().manual_seed(10)) + 0.1
    x = s * 0.5
    compiled = torch.compile(step, fullgraph=True)
    got, want = compiled(x, s), step(x, s)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
