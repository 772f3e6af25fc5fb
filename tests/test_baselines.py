"""DDPM / DDIM / EDM baselines on models with known answers.

Gaussian data N(mu, s^2) per coordinate (2-D, mu = (1, -0.5), s = (0.5, 2)) has closed-form optimal
networks: the EDM denoiser D(x; sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2) and the DDPM noise
predictor eps(x_t, t) = sqrt(1 - ab_t) (x_t - sqrt(ab_t) mu) / (ab_t s^2 + 1 - ab_t). With them
every sampler is an affine map of its Gaussian inputs, so the exact law of its output is computed
below by an independent float64 recursion (`*_law`). For each sampler we assert:
  1. the samples follow that law (deterministic samplers: sample by sample, to 1e-9; DDPM: sample
     mean and variance within 5 standard errors);
  2. that law is within the sampler's discretization bias of the data: |var / s^2 - 1| <= VAR_TOL
     (the bias values are the exact ones of the recursion, listed in CASES), |mean - mu| <= MEAN_TOL;
  3. directly: sample mean and variance vs N(mu, s^2) within the same bias + 5 standard errors.
The cross-checks against diffusers (optional dependency) run our samplers and diffusers'
schedulers on the same analytic model and the same latents (and, for DDPM, the same noise).
"""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kacfast.baselines import (DDPMSchedule, EDMPrecond, ddim_sample, ddpm_loss, ddpm_sample, edm_loss,
                               edm_nfe, edm_sample, edm_sigmas)

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
S = torch.tensor([0.5, 2.0], dtype=torch.float64)
N_SAMPLES = 16000


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Step loops on tiny tensors: intra-op threads only add barrier waits (badly so on a loaded
    2-core machine). Restored after this module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# independent copy of the DDPM schedule (numpy, float64): linear betas 1e-4..0.02 over 1000 steps
BETAS = np.linspace(1e-4, 0.02, 1000)
AB = np.cumprod(1.0 - BETAS)


def leading(n):
    return list(range(0, 1000, 1000 // n))[:n][::-1]


def linspace(n):
    return [int(t) for t in np.linspace(0, 999, n).round()[::-1]]


class Gaussian:
    """Optimal networks for data N(mu, s^2 I) (mu, s: per-coordinate tensors, last dim)."""

    def __init__(self, mu=MU, s=S, num_classes=None):
        self.mu, self.s, self.num_classes = mu, s, num_classes
        self.ab = torch.from_numpy(AB)
        self.calls = 0

    def eps(self, x, t, y=None):
        self.calls += 1
        mu, s = self.mu.to(x.dtype), self.s.to(x.dtype)
        ab = self.ab[t.long().cpu()].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return (x - ab.sqrt() * mu) * (1 - ab).sqrt() / (ab * s ** 2 + 1 - ab)

    def v(self, x, t, y=None):
        """The exact v = (eps - sqrt(1 - ab_t) x_t) / sqrt(ab_t) (eps = sqrt(1 - ab_t) x_t + sqrt(ab_t) v)."""
        ab = self.ab[t.long().cpu()].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return (self.eps(x, t, y) - (1 - ab).sqrt() * x) / ab.sqrt()

    def denoiser(self, x, sigma, y=None):
        self.calls += 1
        mu, s = self.mu.to(x.dtype), self.s.to(x.dtype)
        sg = sigma.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return (s ** 2 * x + sg ** 2 * mu) / (s ** 2 + sg ** 2)


def latents(n=N_SAMPLES, dim=2, seed=0, dtype=torch.float64):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- exact law of each sampler's output on Gaussian data, one coordinate (x = A z + b + noise) ---

def karras(n, smin=0.002, smax=80.0, rho=7.0):
    """k-diffusion's get_sigmas_karras, written out independently."""
    ramp = np.linspace(0, 1, n)
    sig = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return np.append(sig, 0.0)


def edm_law(mu, s, n_steps):
    """x = A z + b for EDM Heun from x = sigma_max z (deterministic)."""
    sig = karras(n_steps)
    A, b = sig[0], 0.0

    def slope(A, b, sg):  # (x - D(x)) / sg = (x - mu) sg / (s^2 + sg^2)
        k = sg / (s * s + sg * sg)
        return k * A, k * (b - mu)

    for i in range(n_steps):
        c, nx = sig[i], sig[i + 1]
        dA, db = slope(A, b, c)
        A1, b1 = A + (nx - c) * dA, b + (nx - c) * db
        if i < n_steps - 1:
            eA, eb = slope(A1, b1, nx)
            A1, b1 = A + (nx - c) * (dA + eA) / 2, b + (nx - c) * (db + eb) / 2
        A, b = A1, b1
    return A, b


def chain_law(mu, s, ts, ddim):
    """(mean, var, A, b) of DDPM ancestral (ddim=False) / DDIM eta=0 from x = z ~ N(0, 1)."""
    A, b, noise_var = 1.0, 0.0, 0.0
    for k, t in enumerate(ts):
        abt = AB[t]
        abp = AB[ts[k + 1]] if k + 1 < len(ts) else 1.0
        g = math.sqrt(1 - abt) / (abt * s * s + 1 - abt)          # eps = g (x - sqrt(abt) mu)
        p, q = (1 - math.sqrt(1 - abt) * g) / math.sqrt(abt), math.sqrt(1 - abt) * g * mu  # x0 = p x + q
        if ddim:
            a = math.sqrt(abp) * p + math.sqrt(1 - abp) * g
            c, var = math.sqrt(abp) * q - math.sqrt(1 - abp) * g * math.sqrt(abt) * mu, 0.0
        else:
            alpha = abt / abp
            c0, ct = math.sqrt(abp) * (1 - alpha) / (1 - abt), math.sqrt(alpha) * (1 - abp) / (1 - abt)
            a, c, var = c0 * p + ct, c0 * q, (1 - abp) / (1 - abt) * (1 - alpha)
        A, b, noise_var = a * A, a * b + c, a * a * noise_var + var
    return b, A * A + noise_var, A, b


def law(case, mu, s):
    kind, n = case
    if kind == "edm":
        A, b = edm_law(mu, s, n)
        return b, A * A, A, b
    return chain_law(mu, s, linspace(n) if kind == "ddpm" else leading(n), ddim=kind == "ddim")


def run(case, model, z, **kw):
    kind, n = case
    if kind == "edm":
        return edm_sample(model.denoiser, z, num_steps=n, **kw)
    if kind == "ddpm":
        return ddpm_sample(model.eps, z, num_steps=n, seed=kw.pop("seed", 1), **kw)
    return ddim_sample(model.eps, z, num_steps=n, **kw)


# (sampler, steps): (VAR_TOL, MEAN_TOL). Exact biases of the law (var/s^2 - 1 for s = 0.5, 2):
# EDM 18 Heun +0.114, +0.073 | EDM 100 +0.003, +0.001 | DDPM 1000 -0.016, -0.006 (fixed-small
# variance drops the E[x0|x_t] uncertainty) | DDPM 100 respaced -0.124, -0.059 | DDIM 1000 -0.006,
# -0.003 | DDIM 100 -0.055, -0.030 | DDIM 20 -0.248, -0.140 (few-step DDIM under-disperses).
# Mean biases come from starting at latents with mean 0 instead of the data's residual mean
# (sqrt(ab_999) mu for DDIM, mu for EDM), which the deterministic samplers carry to the end scaled
# by about s / (starting noise scale): EDM 18 -0.0066, +0.0130; DDIM 20 -0.0045, +0.0096. The
# stochastic DDPM chain forgets it (1e-4).
CASES = {
    ("edm", 18): (0.12, 0.015), ("edm", 100): (0.005, 0.015),
    ("ddpm", 1000): (0.02, 1e-3), ("ddpm", 100): (0.13, 1e-3),
    ("ddim", 1000): (0.01, 0.01), ("ddim", 100): (0.06, 0.01), ("ddim", 20): (0.25, 0.015),
}


@pytest.mark.parametrize("case", list(CASES), ids=lambda c: f"{c[0]}{c[1]}")
def test_gaussian_data_lands_on_the_right_distribution(case):
    var_tol, mean_tol = CASES[case]
    z = latents()
    x = run(case, Gaussian(), z)
    assert x.shape == z.shape and x.dtype == z.dtype and torch.isfinite(x).all()
    n = z.shape[0]
    for d in range(2):
        mu, s = MU[d].item(), S[d].item()
        m_law, v_law, A, b = law(case, mu, s)
        # 2. the sampler's exact law vs the data
        assert abs(m_law - mu) <= mean_tol, f"dim {d}: law mean bias {m_law - mu:.3g}"
        assert abs(v_law / s ** 2 - 1) <= var_tol, f"dim {d}: law variance bias {v_law / s ** 2 - 1:.3g}"
        # 1. samples vs the exact law
        col = x[:, d]
        if case[0] == "ddpm":
            assert abs(col.mean().item() - m_law) <= 5 * math.sqrt(v_law / n)
            assert abs(col.var().item() / v_law - 1) <= 5 * math.sqrt(2 / n)
        else:
            torch.testing.assert_close(col, A * z[:, d] + b, rtol=1e-9, atol=1e-9 * max(1.0, abs(A)))
        # 3. samples vs the data, directly
        assert abs(col.mean().item() - mu) <= mean_tol + 5 * s * math.sqrt((1 + var_tol) / n)
        assert abs(col.var().item() / s ** 2 - 1) <= var_tol + 5 * (1 + var_tol) * math.sqrt(2 / n)


@pytest.mark.parametrize("case", [("edm", 18), ("ddim", 20), ("ddim", 100), ("ddpm", 100)],
                         ids=lambda c: f"{c[0]}{c[1]}")
def test_dirac_data_lands_on_the_point(case):
    s = 1e-3
    model = Gaussian(s=torch.full((2,), s, dtype=torch.float64))
    x = run(case, model, latents(4000))
    assert (x - MU).abs().max().item() < 10 * s
    assert (x.mean(0) - MU).abs().max().item() < s / 4


def test_float32_latents_give_float32_samples_close_to_float64():
    z = latents(256)
    for case in [("edm", 18), ("ddim", 50)]:
        x64 = run(case, Gaussian(), z)
        x32 = run(case, Gaussian(), z.float())
        assert x32.dtype == torch.float32
        torch.testing.assert_close(x32.double(), x64, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------
# EDM: grid, NFE, callback, preconditioning, loss
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,smin,smax,rho", [(18, 0.002, 80.0, 7.0), (5, 0.01, 157.4, 7.0), (40, 0.1, 10.0, 3.0)])
def test_edm_sigmas_match_k_diffusion_formula(n, smin, smax, rho):
    sig = edm_sigmas(n, smin, smax, rho)
    assert sig.dtype == torch.float64 and sig.shape == (n + 1,)
    np.testing.assert_allclose(sig.numpy(), karras(n, smin, smax, rho), rtol=1e-13, atol=0)
    assert sig[0].item() == pytest.approx(smax, rel=1e-14) and sig[-2].item() == pytest.approx(smin, rel=1e-13)
    assert sig[-1].item() == 0.0 and (sig[1:] < sig[:-1]).all()
    one = edm_sigmas(1, smin, smax, rho)
    assert one[0].item() == pytest.approx(smax, rel=1e-14) and one[1].item() == 0.0 and one.shape == (2,)


@pytest.mark.parametrize("n", [1, 2, 18])
def test_edm_nfe_and_callback(n):
    model = Gaussian()
    seen = []
    edm_sample(model.denoiser, latents(8), num_steps=n, callback=seen.append)
    assert model.calls == edm_nfe(n) == 2 * n - 1
    assert [d["i"] for d in seen] == list(range(n))
    assert set(seen[0]) == {"x", "i", "sigma", "denoised"}
    np.testing.assert_allclose([d["sigma"] for d in seen], edm_sigmas(n)[:-1].numpy())
    torch.testing.assert_close(seen[0]["x"], latents(8) * 80.0)


class InverseDenoiserNet(nn.Module):
    """Raw network F such that EDMPrecond(F) is the exact Gaussian denoiser (inverts the c_* maps)."""

    def __init__(self, mu, s, sigma_data=0.5, num_classes=None):
        super().__init__()
        self.mu, self.s, self.sd = mu, s, sigma_data
        if num_classes is not None:
            self.num_classes = num_classes
        self.seen_t = None

    def forward(self, x_in, t, y=None):
        self.seen_t = t
        sigma = (4 * t).exp().reshape(-1, *([1] * (x_in.dim() - 1)))
        x = x_in * (sigma ** 2 + self.sd ** 2).sqrt()
        denoised = (self.s ** 2 * x + sigma ** 2 * self.mu) / (self.s ** 2 + sigma ** 2)
        c_skip = self.sd ** 2 / (sigma ** 2 + self.sd ** 2)
        c_out = sigma * self.sd / (sigma ** 2 + self.sd ** 2).sqrt()
        return (denoised - c_skip * x) / c_out


def test_edm_precond_coefficients():
    class Const(nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value, self.num_classes = value, 7

        def forward(self, x, t, y=None):
            self.t = t
            return torch.full_like(x, self.value)

    x = torch.randn(3, 4, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.5, 20.0], dtype=torch.float64)
    sd = 0.5
    s = sigma[:, None]
    for value in (0.0, 1.0):
        inner = Const(value)
        p = EDMPrecond(inner, sigma_data=sd)
        out = p(x, sigma)
        expected = sd ** 2 / (s ** 2 + sd ** 2) * x + value * s * sd / (s ** 2 + sd ** 2).sqrt()
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(inner.t, sigma.log() / 4)
    assert p.num_classes == 7 and EDMPrecond(nn.Identity()).num_classes is None
    torch.testing.assert_close(p(x, 0.5), p(x, torch.full((3,), 0.5, dtype=torch.float64)))
    # c_in: the exact-denoiser net sees x / sqrt(sigma^2 + sd^2)
    net = EDMPrecond(InverseDenoiserNet(MU[0], S[0]))
    model = Gaussian(mu=MU[0], s=S[0])
    torch.testing.assert_close(net(x, sigma), model.denoiser(x, sigma), rtol=1e-10, atol=1e-10)


def test_edm_loss_known_values():
    # exact denoiser on data with s = sigma_data: each weighted term is chi^2_1, so loss ~ chi^2_n / n
    mu, s = torch.tensor([0.3, -1.0], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)
    x0 = mu + s * torch.randn(20000, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    precond = EDMPrecond(InverseDenoiserNet(mu, s))
    loss = edm_loss(precond, x0, generator=torch.Generator().manual_seed(4))
    assert loss.dim() == 0 and abs(loss.item() - 1) <= 5 * math.sqrt(2 / x0.numel())
    # zero raw network, x0 = 0: loss = E[sd^2 / (sigma^2 + sd^2) n^2], ln sigma ~ N(P_mean, P_std^2)
    sd, P_mean, P_std = 0.5, -0.4, 0.8
    u, w = np.polynomial.hermite_e.hermegauss(80)
    expected = float(np.sum(w * sd ** 2 / (np.exp(2 * (P_mean + P_std * u)) + sd ** 2)) / np.sqrt(2 * np.pi))
    zero = EDMPrecond(lambda x, t, y: torch.zeros_like(x), sigma_data=sd)
    x0 = torch.zeros(200000, 1, dtype=torch.float64)
    loss = edm_loss(zero, x0, P_mean=P_mean, P_std=P_std, sigma_data=sd, generator=torch.Generator().manual_seed(5))
    assert abs(loss.item() - expected) <= 5 * math.sqrt(3 / x0.numel())
    # differentiable, reproducible with a generator
    net = nn.Linear(2, 2)
    p = EDMPrecond(lambda x, t, y: net(x))
    x0 = torch.randn(16, 2)
    l1 = edm_loss(p, x0, generator=torch.Generator().manual_seed(0))
    l1.backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()
    assert edm_loss(p, x0, generator=torch.Generator().manual_seed(0)).item() == l1.item()


# ------------------------------------------------------------------------------------------
# DDPM: schedule, loss
# ------------------------------------------------------------------------------------------

def test_ddpm_schedule():
    sch = DDPMSchedule()
    assert sch.alphas_cumprod.dtype == torch.float64 and len(sch) == 1000
    np.testing.assert_allclose(sch.alphas_cumprod.numpy(), AB, rtol=1e-12)
    assert sch.timesteps(20, "leading").tolist() == leading(20)
    assert sch.timesteps(100).tolist() == linspace(100)
    assert sch.timesteps(1000).tolist() == list(range(999, -1, -1))
    assert sch.timesteps(10, "trailing").tolist() == list(range(999, 0, -100))
    # respacing: the restricted chain has the same cumulative products at the kept steps
    ts = sch.timesteps(37)
    torch.testing.assert_close(torch.cumprod(1 - sch.respaced_betas(ts), 0), sch.alphas_cumprod[ts.flip(0)])
    torch.testing.assert_close(sch.respaced_betas(range(1000)), sch.betas)
    # posterior of the full chain at t: c_x0 = sqrt(ab_{t-1}) beta_t / (1 - ab_t), ...
    c_x0, c_xt, var = sch.posterior(500, 499)
    assert c_x0 == pytest.approx(math.sqrt(AB[499]) * BETAS[500] / (1 - AB[500]), rel=1e-9)
    assert c_xt == pytest.approx(math.sqrt(1 - BETAS[500]) * (1 - AB[499]) / (1 - AB[500]), rel=1e-9)
    assert var == pytest.approx((1 - AB[499]) / (1 - AB[500]) * BETAS[500], rel=1e-9)
    x0, noise, t = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64), torch.arange(5) * 200
    torch.testing.assert_close(sch.predict_x0(sch.add_noise(x0, noise, t), noise, t), x0)
    assert DDPMSchedule.from_dict(sch.to_dict()) == sch


def test_ddpm_loss_known_value():
    # exact eps on Gaussian data: E loss = mean_t mean_dim ab_t s^2 / (ab_t s^2 + 1 - ab_t)
    model = Gaussian()
    x0 = MU + S * torch.randn(30000, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    loss = ddpm_loss(model.eps, x0, generator=torch.Generator().manual_seed(7))
    post = np.stack([AB * s ** 2 / (AB * s ** 2 + 1 - AB) for s in S.tolist()])
    expected, spread = post.mean(), math.sqrt(3 * (post ** 2).mean() - post.mean() ** 2)
    assert loss.dim() == 0 and abs(loss.item() - expected) <= 5 * spread / math.sqrt(x0.numel())
    zero = ddpm_loss(lambda x, t, y: torch.zeros_like(x), x0, generator=torch.Generator().manual_seed(7))
    assert abs(zero.item() - 1) <= 5 * math.sqrt(2 / x0.numel())
    net = nn.Linear(2, 2)
    ddpm_loss(lambda x, t, y: net(x), torch.randn(8, 2)).backward()
    assert net.weight.grad is not None


@pytest.mark.parametrize("fn, kw", [(ddim_sample, {}), (ddim_sample, dict(timestep_spacing="trailing")),
                                     (ddpm_sample, dict(seed=3))], ids=["ddim", "ddim-trailing", "ddpm"])
def test_v_prediction_samples_as_the_same_eps(fn, kw):
    # the exact v and the exact eps describe one model: every sampler gives the same samples
    model, z = Gaussian(), latents(256)
    torch.testing.assert_close(fn(model.v, z, num_steps=20, prediction="v_prediction", **kw),
                               fn(model.eps, z, num_steps=20, **kw), rtol=1e-9, atol=1e-9)


def test_v_prediction_loss_target():
    # the loss is zero exactly at v = sqrt(ab) eps - sqrt(1 - ab) x0 of the drawn (t, eps), and the
    # exact-eps network scores the eps loss, not the v one
    x0 = MU + S * torch.randn(4096, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    schedule, seen = DDPMSchedule(), {}

    def oracle(x_t, t, y):  # recovers (eps, x0) from x_t only through what the loss drew
        ab = torch.from_numpy(AB)[t.long()].reshape(-1, 1)
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        seen["t"] = t
        return schedule.velocity(x0, eps, t.long())

    loss = ddpm_loss(oracle, x0, generator=torch.Generator().manual_seed(7), prediction="v_prediction")
    assert loss.item() < 1e-20
    ab = torch.from_numpy(AB)[seen["t"].long()].reshape(-1, 1)
    zero = ddpm_loss(lambda x, t, y: torch.zeros_like(x), x0, generator=torch.Generator().manual_seed(7),
                     prediction="v_prediction")
    # E|v|^2 = ab + (1 - ab) E[x0^2] per coordinate (eps independent of x0)
    expected = (ab + (1 - ab) * (x0 ** 2)).mean().item()
    assert abs(zero.item() - expected) < 0.05 * expected
    with pytest.raises(ValueError, match="prediction must be one of"):
        ddpm_loss(oracle, x0, prediction="sample")
    with pytest.raises(ValueError, match="prediction must be one of"):
        ddim_sample(Gaussian().eps, latents(4), num_steps=2, prediction="v")


def test_ddpm_seed_reproducible():
    z = latents(64)
    a = ddpm_sample(Gaussian().eps, z, num_steps=50, seed=3)
    assert torch.equal(a, ddpm_sample(Gaussian().eps, z, num_steps=50, seed=3))
    assert not torch.equal(a, ddpm_sample(Gaussian().eps, z, num_steps=50, seed=4))


# ------------------------------------------------------------------------------------------
# guidance wiring
# ------------------------------------------------------------------------------------------

class LabelNet(nn.Module):
    """Output depends on the label only: float(y) for y < num_classes, -1 for the null label."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.calls = []
        self.modes = []

    def forward(self, x, t, y=None):
        self.calls.append((x.clone(), t.clone(), None if y is None else y.clone()))
        self.modes.append(self.training)
        value = torch.where(y == self.num_classes, torch.full_like(y, -1), y).to(x.dtype)
        return value.reshape(-1, *([1] * (x.dim() - 1))).expand_as(x).clone()


@pytest.mark.parametrize("sampler", ["edm", "ddim", "ddpm"])
@pytest.mark.parametrize("w", [1.0, 0.0, 2.5])
def test_guidance_mix_and_single_batched_call(sampler, w):
    net = LabelNet().train()
    y = torch.tensor([0, 2, 1, 2])
    z = latents(4, dim=3)
    if sampler == "edm":
        x = edm_sample(net, z, y, num_steps=3, guidance=w)
        out = y.double() if w == 1 else -1 + w * (y.double() + 1)  # a constant denoiser is reached exactly
        expected = out[:, None].expand(4, 3)
        nfe = edm_nfe(3)
    else:
        fn = ddim_sample if sampler == "ddim" else ddpm_sample
        x = fn(net, z, y, num_steps=1, guidance=w)  # one step at t = 0, no noise: x = x0_hat
        eps = y.double() if w == 1 else -1 + w * (y.double() + 1)
        expected = (z - math.sqrt(1 - AB[0]) * eps[:, None]) / math.sqrt(AB[0])
        nfe = 1
    torch.testing.assert_close(x, expected, rtol=1e-12, atol=1e-12)
    assert len(net.calls) == nfe and not any(net.modes) and net.training
    for xs, ts, labels in net.calls:
        if w == 1:
            assert xs.shape[0] == 4 and torch.equal(labels, y)
        else:
            assert xs.shape[0] == 8 and torch.equal(labels, torch.cat([y, torch.full_like(y, 3)]))
            assert torch.equal(xs[:4], xs[4:]) and torch.equal(ts[:4], ts[4:])


def test_guidance_through_edm_precond():
    mu, s = MU, S
    inner = InverseDenoiserNet(mu, s, num_classes=5)
    net = EDMPrecond(inner)
    y = torch.tensor([1, 4])
    # both branches equal (label-free denoiser): any guidance gives the unguided result
    z = latents(2)
    torch.testing.assert_close(edm_sample(net, z, y, num_steps=4, guidance=3.0), edm_sample(net, z, y, num_steps=4))


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------

def test_bad_input_errors():
    g, z, y = Gaussian(), latents(4), torch.tensor([0, 1, 2, 0])
    for fn, model in [(edm_sample, g.denoiser), (ddpm_sample, g.eps), (ddim_sample, g.eps)]:
        with pytest.raises(ValueError, match="num_steps"):
            fn(model, z, num_steps=0)
        with pytest.raises(ValueError, match="num_steps"):
            fn(model, z, num_steps=2.0)
        with pytest.raises(ValueError, match="num_classes"):
            fn(model, z, y, num_steps=2, guidance=2.0)  # model has no num_classes
        with pytest.raises(ValueError, match="class_labels"):
            fn(LabelNet(), z, None, num_steps=2, guidance=2.0)
        with pytest.raises(ValueError, match="class_labels"):
            fn(model, z, y[:3], num_steps=2)
        with pytest.raises(ValueError, match="class_labels"):
            fn(model, z, y[:, None], num_steps=2)
        with pytest.raises(ValueError, match="class_labels"):
            fn(model, z, y.float(), num_steps=2)
        with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 3\)"):
            fn(LabelNet(), z, torch.tensor([0, 1, 3, 0]), num_steps=2)
        with pytest.raises(ValueError, match="latents"):
            fn(model, z.long(), num_steps=2)
        with pytest.raises(ValueError, match="guidance"):
            fn(LabelNet(), z, y, num_steps=2, guidance=float("nan"))
    for fn in (ddpm_sample, ddim_sample):
        with pytest.raises(ValueError, match="num_steps"):
            fn(g.eps, z, num_steps=1001)
        with pytest.raises(ValueError, match="timestep_spacing"):
            fn(g.eps, z, num_steps=10, timestep_spacing="uniform")
    with pytest.raises(ValueError, match="seed"):
        ddpm_sample(g.eps, z, num_steps=2, seed=1.5)
    for kw in [dict(sigma_min=80.0), dict(sigma_min=1.0, sigma_max=0.5)]:
        with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
            edm_sample(g.denoiser, z, **kw)
    with pytest.raises(ValueError, match="sigma_min"):
        edm_sigmas(18, sigma_min=0.0)
    with pytest.raises(ValueError, match="num_steps"):
        edm_sigmas(0)
    with pytest.raises(ValueError, match="num_steps"):
        edm_nfe(0)
    with pytest.raises(ValueError, match="sigma_data"):
        EDMPrecond(nn.Identity(), sigma_data=0.0)
    with pytest.raises(ValueError, match="sigma"):
        EDMPrecond(nn.Identity())(z, torch.ones(3))
    with pytest.raises(ValueError, match="beta_end"):
        DDPMSchedule(beta_end=1.5)
    with pytest.raises(ValueError, match="class_labels"):
        ddpm_loss(g.eps, z, y[:2])
    with pytest.raises(ValueError, match="P_std"):
        edm_loss(EDMPrecond(nn.Identity()), z, P_std=0.0)


# ------------------------------------------------------------------------------------------
# cross-checks against diffusers (optional)
# ------------------------------------------------------------------------------------------

DIFFUSERS_BETAS = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def _f32_model():
    return Gaussian(mu=MU.float(), s=S.float())


@pytest.mark.parametrize("clip", [False, True], ids=["unclipped", "clip_sample"])
@pytest.mark.parametrize("n", [100, 50, 30, 20, 7])
def test_ddim_matches_diffusers_ddim_scheduler(n, clip):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(**DIFFUSERS_BETAS, clip_sample=clip, set_alpha_to_one=True, steps_offset=0,
                                    timestep_spacing="leading", prediction_type="epsilon")
    sched.set_timesteps(n)
    assert sched.timesteps.tolist() == DDPMSchedule().timesteps(n, "leading").tolist()
    model, z = _f32_model(), latents(512, dtype=torch.float32)
    x = z.clone()
    for t in sched.timesteps:
        x = sched.step(model.eps(x, torch.full((512,), float(t))), t, x, eta=0.0).prev_sample
    ours = ddim_sample(model.eps, z, num_steps=n, clip_sample=clip)
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)
    # the data N(mu, s^2) reaches beyond [-1, 1]: clipping must have changed the samples
    assert clip == ((ours - ddim_sample(model.eps, z, num_steps=n)).abs().max().item() > 1e-2)


@pytest.mark.parametrize("clip", [False, True], ids=["unclipped", "clip_sample"])
def test_ddim_v_prediction_matches_diffusers(clip):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(**DIFFUSERS_BETAS, clip_sample=clip, set_alpha_to_one=True, steps_offset=0,
                                    timestep_spacing="leading", prediction_type="v_prediction")
    sched.set_timesteps(20)
    model, z = _f32_model(), latents(512, dtype=torch.float32)
    x = z.clone()
    for t in sched.timesteps:
        x = sched.step(model.v(x, torch.full((512,), float(t))), t, x, eta=0.0).prev_sample
    torch.testing.assert_close(ddim_sample(model.v, z, num_steps=20, clip_sample=clip, prediction="v_prediction"),
                               x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("clip", [False, True], ids=["unclipped", "clip_sample"])
@pytest.mark.parametrize("n", [1000, 100, 37])
def test_ddpm_matches_diffusers_ddpm_scheduler_same_noise(n, clip):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(**DIFFUSERS_BETAS, variance_type="fixed_small", clip_sample=clip,
                                    timestep_spacing="linspace", prediction_type="epsilon")
    sched.set_timesteps(n)
    assert sched.timesteps.tolist() == DDPMSchedule().timesteps(n).tolist()
    model, z = _f32_model(), latents(512, dtype=torch.float32)
    generator, x = torch.Generator().manual_seed(11), z.clone()
    for t in sched.timesteps:
        x = sched.step(model.eps(x, torch.full((512,), float(t))), t, x, generator=generator).prev_sample
    torch.testing.assert_close(ddpm_sample(model.eps, z, num_steps=n, seed=11, clip_sample=clip), x,
                               rtol=2e-4, atol=2e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' own numpy-2 warning
@pytest.mark.parametrize("n", [18, 5])
def test_edm_heun_matches_diffusers_heun_karras(n):
    diffusers = pytest.importorskip("diffusers")
    # HeunDiscreteScheduler with Karras sigmas between the VP schedule's sigma(0) and sigma(999);
    # prediction_type="sample" lets the analytic denoiser be the model output
    sched = diffusers.HeunDiscreteScheduler(**DIFFUSERS_BETAS, prediction_type="sample", use_karras_sigmas=True,
                                            timestep_spacing="linspace")
    sched.set_timesteps(n)
    smax, smin = sched.sigmas[0].item(), sched.sigmas[-2].item()
    model, z = _f32_model(), latents(512, dtype=torch.float32)
    x = z * smax
    for t in sched.timesteps:
        sched.scale_model_input(x, t)  # sets step_index
        sigma = sched.sigmas[sched.step_index]
        x = sched.step(model.denoiser(x, sigma.expand(512)), t, x).prev_sample
    assert model.calls == edm_nfe(n)
    ours = edm_sigmas(n, smin, smax)
    np.testing.assert_allclose(torch.unique_consecutive(sched.sigmas).double().numpy(), ours.numpy(), rtol=1e-5)
    torch.testing.assert_close(edm_sample(model.denoiser, z, num_steps=n, sigma_min=smin, sigma_max=smax), x,
                               rtol=1e-4, atol=1e-4)


def test_edm_grid_and_precond_match_diffusers_edm_euler():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, rho=7.0,
                                        sigma_schedule="karras", prediction_type="epsilon", final_sigmas_type="zero")
    sched.set_timesteps(18)
    np.testing.assert_allclose(sched.sigmas.double().numpy(), edm_sigmas(18).numpy(), rtol=1e-6)
    raw = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    precond = EDMPrecond(lambda x, t, y: raw(x) * (1 + t[:, None]))
    x = torch.randn(4, 3, dtype=torch.float64)
    for sigma in (0.002, 0.3, 5.0, 80.0):
        sg = torch.tensor(sigma, dtype=torch.float64)
        c_noise = sched.precondition_noise(sg)
        expected = sched.precondition_outputs(x, raw(sched.precondition_inputs(x, sg)) * (1 + c_noise), sg)
        torch.testing.assert_close(precond(x, sigma), expected, rtol=1e-12, atol=1e-12)


def test_ddpm_error_diagnostic_matches_the_optimal_networks_closed_form():
    # benchmarks/experiments/ddpm_error.py on the Bayes-optimal eps network of Gaussian data: its
    # errors are the posterior variances, eps | x_t: ab s^2 / (ab s^2 + 1 - ab), x0 | x_t: that
    # times (1 - ab) / ab; the class mean (here mu) errs by s^2
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "experiments" / "ddpm_error.py"
    spec = importlib.util.spec_from_file_location("ddpm_error", path)
    ddpm_error = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ddpm_error)
    x0 = MU + S * latents(seed=3)
    y = torch.zeros(x0.shape[0], dtype=torch.long)
    for t in (999, 750, 100, 0):
        out = ddpm_error.timestep_errors(Gaussian().eps, x0, y, MU[None], t, DDPMSchedule(), seed=0)
        ab = DDPMSchedule().alpha_bar(t)
        eps_var = ab * S ** 2 / (ab * S ** 2 + 1 - ab)
        assert out["t"] == t and out["alpha_bar"] == ab
        assert out["eps_mse"] == pytest.approx(eps_var.mean().item(), rel=0.05)
        assert out["x0_mse"] == pytest.approx((eps_var * (1 - ab) / ab).mean().item(), rel=0.05)
        assert out["class_mean_mse"] == pytest.approx((S ** 2).mean().item(), rel=0.05)
        # the same network written as v: the same errors
        as_v = ddpm_error.timestep_errors(Gaussian().v, x0, y, MU[None], t, DDPMSchedule(), seed=0,
                                          prediction="v_prediction")
        assert as_v == pytest.approx(out, rel=1e-6)
