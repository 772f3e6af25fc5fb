"""Exactness of the Kac noise: every backend against the exact law and against the reference."""
import math

import numpy as np
import pytest
import torch

import kacfast
from kacfast import ops
from kacfast.ops import reference

from kac_exact import continuous_cdf, moment, variance

CPU_BACKENDS = [b for b in ops.available_backends("cpu") if b != "triton"]
# (a, c, s): a s small, moderate, large, and above one Poisson chunk (a s > 32)
LAWS = [(9.0, 3.0, 0.05), (9.0, 3.0, 1.0), (25.0, 2.0, 1.0), (2.0, 1.0, 0.3), (40.0, 1.0, 1.0)]
N = 200_000


def draw(backend, s, a, c, n=N, seed=0, offset=0):
    with ops.use_backend(backend):
        return ops.kac_noise(torch.full((n,), s), a, c, seed=seed, offset=offset).double().numpy()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("a,c,s", LAWS)
def test_noise_matches_exact_law(backend, a, c, s):
    n = N if backend != "torch" else 40_000
    x = draw(backend, s, a, c, n=n)
    reach = c * s
    assert np.all(np.abs(x) <= reach * (1 + 1e-6))
    # atoms: mass e^{-as}, split evenly
    on_atom = np.abs(x) >= reach * (1 - 1e-6)
    p_atom = math.exp(-a * s)
    sd = math.sqrt(p_atom * (1 - p_atom) / n)
    assert abs(on_atom.mean() - p_atom) <= 5 * sd + 1e-9
    # continuous part: Kolmogorov-Smirnov distance to the exact conditional CDF
    inside = x[~on_atom]
    grid, cdf, mass = continuous_cdf(s, a, c)
    assert mass == pytest.approx(1 - p_atom, rel=1e-4)
    inside.sort()
    model = np.interp(inside, grid, cdf)
    ecdf_hi = np.arange(1, inside.size + 1) / inside.size
    ecdf_lo = np.arange(0, inside.size) / inside.size
    ks = max(np.max(ecdf_hi - model), np.max(model - ecdf_lo))
    assert ks < 1.95 / math.sqrt(inside.size), f"KS distance {ks:.4g} with {inside.size} samples"
    # second and fourth moments
    var = variance(s, a, c)
    assert moment(2, s, a, c) == pytest.approx(var, rel=1e-6)
    m2, m4 = np.mean(x**2), np.mean(x**4)
    assert m2 == pytest.approx(var, rel=6 * math.sqrt(2.0 / n) + 1e-3)
    assert m4 == pytest.approx(moment(4, s, a, c), rel=10 * math.sqrt(8.0 / n) + 1e-3)


@pytest.mark.parametrize("a,c,s", [(9.0, 3.0, 0.5), (25.0, 2.0, 0.4)])
def test_conditional_mean_of_final_velocity_is_kac_velocity(a, c, s):
    """E[V(s) | X(s) = x] by Monte Carlo binning equals the closed-form v_K(s, x)."""
    x, v = reference.kac_noise_and_velocity(torch.full((300_000,), s, dtype=torch.float64), a, c, 3)
    inside = x.abs() < c * s * (1 - 1e-6)
    x, v = x[inside], v[inside]
    edges = torch.linspace(-c * s, c * s, 21, dtype=torch.float64)
    idx = torch.bucketize(x, edges) - 1
    for b in range(20):
        sel = idx == b
        if sel.sum() < 2000:
            continue
        mc = v[sel].mean().item()
        stderr = v[sel].std().item() / math.sqrt(sel.sum().item())
        bin_mean = reference.kac_velocity(x[sel], s, a, c).mean().item()
        assert abs(mc - bin_mean) < 5 * stderr + 1e-3, (b, mc, bin_mean)


@pytest.mark.parametrize("shape", [(1,), (1023,), (3, 5, 7), (2, 4097)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_cpu_noise_equals_reference(shape, dtype):
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("C++ extension not built")
    gen = torch.Generator().manual_seed(1)
    s = torch.rand(shape, generator=gen) * 1.5
    s.view(-1)[0] = 0.0  # s = 0: the atom at 0
    ref = reference.kac_noise(s, 9.0, 3.0, seed=11, offset=7, dtype=torch.float32)
    with ops.use_backend("cpu"):
        out = ops.kac_noise(s, 9.0, 3.0, seed=11, offset=7, dtype=dtype)
    assert out.dtype == dtype and out.shape == s.shape
    tol = {torch.float32: 2e-6, torch.float64: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(out.float(), ref.to(dtype).float(), atol=tol * 4.5, rtol=tol)


def test_cpu_noise_large_a_s_equals_reference():
    """a s = 100 needs four Poisson chunks and the 2^64 product renormalization."""
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("C++ extension not built")
    s = torch.full((3000,), 2.0)
    ref = reference.kac_noise(s, 50.0, 1.0, seed=2)
    with ops.use_backend("cpu"):
        out = ops.kac_noise(s, 50.0, 1.0, seed=2)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_noise_is_deterministic_in_seed_and_offset(backend):
    s = 0.5 + 0.5 * torch.rand(5000)  # atoms (which can repeat by chance) have mass < e^-4.5
    with ops.use_backend(backend):
        x1 = ops.kac_noise(s, 9.0, 3.0, seed=42, offset=3)
        x2 = ops.kac_noise(s, 9.0, 3.0, seed=42, offset=3)
        x3 = ops.kac_noise(s, 9.0, 3.0, seed=42, offset=4)
        x4 = ops.kac_noise(s, 9.0, 3.0, seed=43, offset=3)
    assert torch.equal(x1, x2)
    assert (x1 != x3).float().mean() > 0.99
    assert (x1 != x4).float().mean() > 0.99


def test_prior_has_the_kac_law_at_T():
    proc = kacfast.KacProcess(a=9.0, c=3.0, T=1.0)
    x = proc.prior((4000, 3, 4), seed=0)
    assert x.shape == (4000, 3, 4) and x.dtype == torch.float32
    assert x.abs().max() <= 3.0
    assert x.var().item() == pytest.approx(variance(1.0, 9.0, 3.0), rel=0.02)


_PHILOX_PROBE = """
import sys, torch
from kacfast import ops
g = torch.Generator().manual_seed(5)
s = torch.rand(4099, generator=g) * 3.0            # a s up to 150: several Poisson chunks
x0, t = torch.rand(7, 3, 101, generator=g), torch.rand(7, generator=g)
with ops.use_backend("cpu"):
    out = [ops.kac_noise(s, 50.0, 2.0, seed=2**40 + 9, offset=5),
           *ops.kac_noise_target(x0, t, 9.0, 3.0, seed=3, offset=2**32 - 1)]
torch.save(out, sys.argv[1])
"""


def test_cpu_avx512_philox_equals_portable_loop(tmp_path):
    """The AVX-512 Philox of the CPU kernels (used where the processor has it) and the portable
    loop (every other processor; forced by KACFAST_PORTABLE_PHILOX=1) give the same numbers."""
    import os
    import subprocess
    import sys

    if "cpu" not in CPU_BACKENDS:
        pytest.skip("C++ extension not built")
    outs = []
    for portable in ("", "1"):
        path = tmp_path / f"out{portable}.pt"
        env = {**os.environ, "KACFAST_PORTABLE_PHILOX": portable or "0"}
        subprocess.run([sys.executable, "-c", _PHILOX_PROBE, str(path)], check=True, env=env,
                       timeout=300)
        outs.append(torch.load(path))
    for fast, portable in zip(*outs):
        assert torch.equal(fast, portable)
