"""kac_velocity and the fused noise+target op: every CPU backend against the float64 reference."""
import math

import numpy as np
import pytest
import torch
from scipy.special import iv

from kacfast import ops
from kacfast.ops import reference

CPU_BACKENDS = [b for b in ops.available_backends("cpu") if b != "triton"]
FAST = [b for b in CPU_BACKENDS if b != "torch"]


def velocity_grid(a, c, s_values):
    """(x, s) pairs covering the cone, just inside it, the centre, and s near 0."""
    xs, ss = [], []
    for s in s_values:
        reach = c * s
        frac = torch.cat([torch.linspace(-1, 1, 401), torch.tensor([1 - 1e-3, 1 - 1e-5, 1.0, -1.0])])
        xs.append((frac * reach).float())
        ss.append(torch.full_like(frac, s))
    return torch.cat(xs), torch.cat(ss).float()


def test_reference_h_matches_unscaled_bessel_ratio():
    z = np.array([1e-3, 0.5, 3.0, 20.0, 80.0])
    expected = z * iv(0, z) / iv(1, z)
    got = reference.kac_h(torch.tensor(z)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_reference_velocity_limits():
    # s -> 0: v -> a x / 2 (h(0) = 2) stays bounded; at the cone: c sign(x)
    x = torch.tensor([1e-7, -1e-7], dtype=torch.float64)
    v = reference.kac_velocity(x, 1e-6, 9.0, 3.0)
    torch.testing.assert_close(v, 9.0 * x / (9.0 * 1e-6 + 2.0), rtol=1e-6, atol=0)
    v = reference.kac_velocity(torch.tensor([3.0, -3.0], dtype=torch.float64), 1.0, 9.0, 3.0)
    torch.testing.assert_close(v, torch.tensor([3.0, -3.0], dtype=torch.float64))
    # diffusion limit: a, c -> inf with c^2/a = 1: v -> x / (2 s)
    a = 1e4
    v = reference.kac_velocity(torch.tensor([0.3], dtype=torch.float64), 0.5, a, math.sqrt(a))
    assert v.item() == pytest.approx(0.3 / (2 * 0.5), rel=2e-2)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("a,c", [(0.5, 0.5), (9.0, 3.0), (25.0, 2.0), (50.0, 5.0), (50.0, 0.5)])
def test_velocity_accuracy_fp32(backend, a, c):
    x, s = velocity_grid(a, c, [1e-4, 1e-3, 0.05, 0.3, 1.0])
    ref = reference.kac_velocity(x.double(), s.double(), a, c)
    with ops.use_backend(backend):
        out = ops.kac_velocity(x, s, a, c)
    assert torch.isfinite(out).all()
    err = (out.double() - ref).abs().max().item()
    assert err <= 1e-6, f"max abs error {err:.3g}"
    assert out.abs().max() <= c


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", [(1,), (1023,), (3, 5, 7), (2, 3, 33, 31)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_velocity_shapes_dtypes_broadcast(backend, shape, dtype):
    gen = torch.Generator().manual_seed(0)
    s_full = torch.rand(shape, generator=gen) + 0.01
    x = ((torch.rand(shape, generator=gen) * 2 - 1) * 3.0 * s_full).to(dtype)
    per_sample = s_full.reshape(shape[0], -1)[:, :1].reshape((shape[0],) + (1,) * (len(shape) - 1))
    tol = {torch.float32: 2e-5, torch.float64: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    for s in (s_full, per_sample, 0.7):
        ref = reference.kac_velocity(x.double(), torch.as_tensor(s).double(), 9.0, 3.0)
        with ops.use_backend(backend):
            out = ops.kac_velocity(x, s, 9.0, 3.0)
        assert out.dtype == dtype and out.shape == x.shape
        torch.testing.assert_close(out.double(), ref.to(dtype).double(), atol=tol * 3, rtol=tol)


@pytest.mark.parametrize("backend", FAST)
def test_velocity_general_broadcast_and_noncontiguous(backend):
    x = (torch.rand(4, 6) * 2 - 1).t()  # non-contiguous
    s = torch.rand(4) + 0.5  # broadcasts along the last dim: not a leading block
    ref = reference.kac_velocity(x.double(), s.double(), 9.0, 3.0)
    with ops.use_backend(backend):
        out = ops.kac_velocity(x, s, 9.0, 3.0)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("clock", ["t", "t2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_noise_target_equals_reference(backend, clock, dtype):
    gen = torch.Generator().manual_seed(3)
    x0 = (torch.rand(5, 3, 7, 9, generator=gen) * 2 - 1).to(dtype)
    t = torch.rand(5, generator=gen)
    t[0], t[1] = 0.0, 1.0  # both ends of [0, T]
    ref_xt, ref_u = reference.kac_noise_target(x0.float(), t, 9.0, 3.0, 1.0, clock, seed=4, offset=1)
    with ops.use_backend(backend):
        xt, u = ops.kac_noise_target(x0, t, 9.0, 3.0, 1.0, clock, seed=4, offset=1)
    assert xt.dtype == u.dtype == dtype and xt.shape == u.shape == x0.shape
    tol = {torch.float32: 1e-5, torch.float64: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(xt.float(), ref_xt.to(dtype).float(), atol=tol * 3, rtol=tol)
    torch.testing.assert_close(u.float(), ref_u.to(dtype).float(), atol=tol * 3, rtol=tol)
    # t = 0: x_t = x0, and the noise is exactly 0
    torch.testing.assert_close(xt[0].float(), x0[0].float(), atol=0, rtol=0)


def test_noise_target_is_consistent_with_noise_and_velocity():
    """u = f' x0 + g' v_K(g, x_t - f x0): the fused op agrees with the unfused ops."""
    x0 = torch.rand(6, 50) * 2 - 1
    t = torch.rand(6) * 0.9 + 0.05
    xt, u = ops.kac_noise_target(x0, t, 9.0, 3.0, seed=9)
    f, df, g, dg = (v[:, None] for v in reference.schedule(t, 1.0))
    k = xt - f * x0
    assert (k.abs() <= 3.0 * g + 1e-5).all()
    expected = df * x0 + dg * ops.kac_velocity(k, g, 9.0, 3.0)
    torch.testing.assert_close(u, expected, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("a, c", [(9.0, 3.0), (25.0, 2.0)])
def test_velocity_second_moment_and_preconditioning_match_monte_carlo(a, c):
    """E[v_K(s, X(s))^2] by quadrature against 400k exact Kac samples through the float32 velocity
    op (c^2 at s = 0, the atoms' share e^{-as} c^2 near it, c^2/(4as) far out), and the teacher's
    scales c_in = 1/sqrt(E[x_t^2]), c_out = sqrt(E[u^2]) against samples of (x_t, u)."""
    from kacfast.formulas import kac_preconditioning, kac_velocity_second_moment
    from kacfast.process import KacProcess

    s = torch.tensor([0.0, 1e-3, 0.05, 0.3, 1.0])
    moment = kac_velocity_second_moment(s, a, c)
    assert moment.dtype == torch.float64 and moment[0] == c * c
    for value, si in zip(moment.tolist(), s.tolist()):
        if si == 0:
            continue
        times = torch.full((400_000,), si)
        v = ops.kac_velocity(ops.kac_noise(times, a, c, seed=1), times, a, c, 1e-4)
        assert value == pytest.approx(v.double().square().mean().item(), rel=0.01)
    assert kac_velocity_second_moment(torch.tensor(20.0), a, c).item() == pytest.approx(c * c / (4 * a * 20.0), rel=0.02)
    assert torch.allclose(kac_velocity_second_moment(s, a, c, nodes=512), moment, rtol=1e-9)

    gen = torch.Generator().manual_seed(0)
    x0 = (torch.rand(400_000, generator=gen) < 0.2).float() * 2 - 1   # rms 1, mean -0.6
    for t in (0.02, 0.4, 1.0):
        times = torch.full_like(x0, t)
        x_t, u = KacProcess(a=a, c=c).noise_target(x0, times, seed=2)
        c_in, c_out = kac_preconditioning(torch.tensor(t), a, c, 1.0, "t", rms_data=1.0)
        assert c_in.item() ** -2 == pytest.approx(x_t.double().square().mean().item(), rel=0.01)
        assert c_out.item() ** 2 == pytest.approx(u.double().square().mean().item(), rel=0.01)
