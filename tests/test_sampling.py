"""kacfast.sample / integrate and the fused guided step."""
import pytest
import torch
from torch import nn

import kacfast
from kacfast import ops
from kacfast.facts import attach_facts
from kacfast.ops import _ext, reference
from kacfast.sampling import SOLVERS

FAST = [b for b in ops.available_backends("cpu") if b not in ("torch", "triton")]


class DiracModel(nn.Module):
    """Exact marginal velocity of a Kac flow whose data is a Dirac at `point`."""

    def __init__(self, point: torch.Tensor, process: kacfast.KacProcess):
        super().__init__()
        self.register_buffer("point", point)
        self.process = process
        attach_facts(self, process=process)
        self.sample_shape = tuple(point.shape)

    def forward(self, x, t, y=None):
        return self.process.velocity(x, t, self.point.expand_as(x))


class LabelShiftModel(nn.Module):
    """v = x + (label + 1), with the null label (num_classes) giving v = x."""

    num_classes = 3
    sample_shape = (2,)

    def forward(self, x, t, y=None):
        shift = torch.where(y == self.num_classes, 0.0, y.float() + 1.0)
        return x + shift[:, None]


# ----------------------------------------------------------------------------------------------
# fused step op
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", [(1,), (1023,), (3, 5, 7), (2, 3, 17, 19)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("guided,with_prev,clamp,return_v",
                         [(False, False, False, False), (True, False, True, False),
                          (False, True, False, True), (True, True, True, True)])
def test_guided_step_equals_reference(backend, shape, dtype, guided, with_prev, clamp, return_v):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen)).to(dtype)
    v = torch.randn((2 * shape[0],) + shape[1:] if guided else shape, generator=gen).to(dtype)
    v_prev = torch.randn(shape, generator=gen).to(dtype) if with_prev else None
    args = dict(guidance=1.7, h=0.03, alpha=1.25, beta=-0.25, clamp=clamp, return_v=return_v)
    ref_x, ref_v = reference.guided_step(x, v, v_prev, **args)
    with ops.use_backend(backend):
        out_x, out_v = ops.guided_step(x, v, v_prev, **args)
    tol = {torch.float32: 1e-6, torch.float64: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(out_x, ref_x, atol=tol, rtol=tol)
    assert out_v.numel() == (x.numel() if return_v else 0)
    if return_v:
        torch.testing.assert_close(out_v, ref_v, atol=tol, rtol=tol)
    if clamp:
        assert out_x.abs().max() <= 1


@pytest.mark.skipif(not _ext.available(), reason="C++ extension not built")
def test_guided_step_opcheck():
    x = torch.randn(3, 4)
    for v, v_prev in ((torch.randn(6, 4), None), (torch.randn(3, 4), torch.randn(3, 4))):
        torch.library.opcheck(torch.ops.kacfast.kac_guided_step.default,
                              (x, v, v_prev, 1.5, 0.1, 1.0, 0.0, True, True))


def test_guided_step_bad_inputs():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="twice its batch"):
        ops.guided_step(x, torch.randn(4, 4), h=0.1)
    with pytest.raises(ValueError, match="twice its batch"):  # right size, wrong shape
        ops.guided_step(x, torch.randn(3, 8), h=0.1)
    with pytest.raises(TypeError, match="dtype"):
        ops.guided_step(x, torch.randn(3, 4).double(), h=0.1)
    with pytest.raises(ValueError, match="step size h"):
        ops.guided_step(x, torch.randn(3, 4), h=0.0)
    with pytest.raises(ValueError, match="v_prev"):
        ops.guided_step(x, torch.randn(3, 4), torch.randn(2, 4), h=0.1)


# ----------------------------------------------------------------------------------------------
# samplers on models with known answers
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("clock", ["t", "t2"])
def test_samplers_land_on_the_dirac(solver, clock):
    point = torch.tensor([0.5, -0.25, 0.0, 0.9])
    model = DiracModel(point, kacfast.KacProcess(a=9.0, c=3.0, clock=clock))
    errors = []
    for steps in (100, 400):
        x = kacfast.sample(model, steps, batch_size=256, solver=solver, seed=0, clamp=False)
        errors.append((x - point).abs().max().item())
    # the Kac field is discontinuous at the light cone: every solver converges at first order
    assert errors[1] < 0.015, errors
    assert errors[1] < 0.6 * errors[0], f"no convergence with more steps: {errors}"


def test_one_step_prior_map_is_exact_for_f_x0_term():
    """With x0 at 0 and clock t, one Euler step moves x_T by T v_K(T, x_T) exactly."""
    proc = kacfast.KacProcess()
    model = DiracModel(torch.zeros(3), proc)
    x = kacfast.sample(model, 1, batch_size=8, seed=3, clamp=False)
    prior = proc.prior((8, 3), seed=3)
    expected = prior - ops.kac_velocity(prior, 1.0, 9.0, 3.0)
    torch.testing.assert_close(x, expected)


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_guidance_mixes_velocities_in_one_batched_call(solver):
    model = LabelShiftModel()
    calls = []
    model.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    labels = torch.tensor([0, 2])
    out = kacfast.sample(model, 3, labels=labels, guidance=2.0, solver=solver, seed=1,
                         clamp=False, process=kacfast.KacProcess())
    assert calls and all(b == 4 for b in calls)  # cat([x, x]) once per NFE
    assert len(calls) == kacfast.nfe(solver, 3)
    # reference: same solver on v = x + w (label + 1)
    shift = 2.0 * (labels.float() + 1.0)[:, None]
    ref = kacfast.integrate(lambda x, t: x + shift, kacfast.KacProcess().prior((2, 2), seed=1),
                            kacfast.uniform_grid(3), solver=solver, clamp=False)
    torch.testing.assert_close(out, ref)
    calls.clear()
    kacfast.sample(model, 2, labels=labels, guidance=1.0, seed=1, process=kacfast.KacProcess())
    assert calls == [2, 2]  # guidance 1: one unbatched call per step


def test_ab2_matches_its_formula_on_a_linear_field():
    """dx/dt = x on a non-uniform grid: AB-2 update by hand."""
    grid = [1.0, 0.7, 0.3, 0.0]
    x0 = torch.tensor([[0.2, -0.4]])
    out = kacfast.integrate(lambda x, t: x.clone(), x0, grid, solver="ab2", clamp=False)
    x, v_prev, h_prev = x0.clone(), None, None
    for t, tn in zip(grid, grid[1:]):
        h = t - tn
        v = x.clone()
        x = x - h * v if v_prev is None else x - h * ((1 + h / (2 * h_prev)) * v - h / (2 * h_prev) * v_prev)
        v_prev, h_prev = v, h
    torch.testing.assert_close(out, x)


def test_sample_reads_model_attributes_and_is_reproducible():
    proc = kacfast.KacProcess(a=25.0, c=2.0, clock="t2")
    model = DiracModel(torch.zeros(2, 3), proc)
    attach_facts(model, grid=[1.0, 0.25, 0.0])  # a distilled student's own 2-step grid
    seen = []
    x1 = kacfast.sample(model, 2, batch_size=5, seed=7, callback=lambda d: seen.append(d["t"]))
    x2 = kacfast.sample(model, 2, batch_size=5, seed=7)
    assert x1.shape == (5, 2, 3) and torch.equal(x1, x2)
    assert seen == [1.0, 0.25]
    assert x1.abs().max() <= 2.0 * 1.0 + 1e-6  # prior support of this process: c g(T)
    x3 = kacfast.sample(model, 2, batch_size=5, seed=8)
    assert not torch.equal(x1, x3)


def test_sample_bad_arguments():
    model = LabelShiftModel()
    with pytest.raises(ValueError, match="steps must be"):
        kacfast.sample(model, 0)
    with pytest.raises(ValueError, match="solver must be"):
        kacfast.sample(model, 1, solver="rk45")
    with pytest.raises(ValueError, match="labels must lie"):
        kacfast.sample(model, 1, labels=[3])
    with pytest.raises(ValueError, match="batch_size=3 but 2 labels"):
        kacfast.sample(model, 1, labels=[0, 1], batch_size=3)
    with pytest.raises(ValueError, match="needs labels"):
        kacfast.sample(model, 1, batch_size=2, guidance=2.0)
    with pytest.raises(ValueError, match="shape is required"):
        kacfast.sample(lambda x, t, y=None: x, 1)
    with pytest.raises(ValueError, match="strictly decreasing"):
        kacfast.sample(model, grid=[1.0, 1.0, 0.0])


def test_progress_bar_runs(capsys):
    kacfast.sample(LabelShiftModel(), 3, labels=[0, 1], progress=True, seed=0)
    assert "kacfast euler" in capsys.readouterr().err


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_integrate_compiles_fullgraph(solver):
    net = nn.Sequential(nn.Linear(3, 16), nn.SiLU(), nn.Linear(16, 2))
    model = lambda x, t, y=None: net(torch.cat([x, t[:, None]], 1))  # noqa: E731
    proc = kacfast.KacProcess()
    labels = None

    def run(seed_x):
        v = kacfast.sampling.guided_velocity_fn(model, labels, 1.0, None)
        return kacfast.integrate(v, seed_x, kacfast.uniform_grid(4), solver=solver)

    x = proc.prior((6, 2), seed=0)
    with torch.no_grad():
        eager = run(x)
        compiled = torch.compile(run, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(eager, compiled)


class AverageVelocityModel(nn.Module):
    """A stand-in flow map: u(x, t, y, h) = x + t + 10 h + label (2-D, 3 classes)."""
    interval_conditioned = True
    num_classes = 3
    sample_shape = (2,)

    def forward(self, x, t, y=None, interval=None):
        h = torch.zeros_like(t) if interval is None else interval
        return x + (t + 10 * h + y.float())[:, None]


@pytest.mark.parametrize("guidance", [1.0, 1.5])
def test_flow_map_steps_by_its_average_velocity_over_each_interval(guidance):
    """Each Euler step of a flow map is x - h u(x, t, h) with h that step's own length, on any grid
    (guided: u_null + w (u_cond - u_null) of one batched call)."""
    model, labels = AverageVelocityModel(), torch.tensor([0, 2])
    grid = [1.0, 0.6, 0.5, 0.0]
    out = kacfast.sample(model, grid=grid, labels=labels, guidance=guidance, seed=2, clamp=False,
                         process=kacfast.KacProcess())
    x = kacfast.KacProcess().prior((2, 2), seed=2)
    for t, t_next in zip(grid, grid[1:]):
        h = t - t_next
        null = x + t + 10 * h + 3.0  # the null label is num_classes
        cond = x + (t + 10 * h + labels.float())[:, None]
        x = x - h * (null + guidance * (cond - null))
    torch.testing.assert_close(out, x)
    with pytest.raises(ValueError, match="solver must be 'euler'"):
        kacfast.sample(model, 2, labels=labels, solver="ab2")
    velocity = kacfast.sampling.guided_velocity_fn(model, labels, 1.0, 3)
    with pytest.raises(ValueError, match="solver must be 'euler'"):
        kacfast.integrate(velocity, x, grid, solver="heun")
