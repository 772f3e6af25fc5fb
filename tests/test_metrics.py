"""kacfast.metrics: classifier FD / KID, matrix square roots, 2-D distances, the metric classifier."""
import math
import sys
import time
import warnings

import pytest
import torch

from kacfast import metrics
from kacfast.data import GMM9_STD, gmm9_centers, load_dataset
from kacfast.metrics import (classifier_fd, conditional_accuracy, energy_distance, frechet_distance,
                             kid, mode_coverage, sliced_w2, sqrtm_psd, trace_sqrtm_product)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: one thread avoids oversubscription slowdowns (10x measured) on
    shared CI machines. Restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _random_psd(d, rank=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, rank or d, generator=g, dtype=torch.float64)
    return a @ a.T


# ----------------------------------------------------------------------------------------------
# matrix square root and Frechet distance
# ----------------------------------------------------------------------------------------------
def test_sqrtm_psd_known_cases():
    s = sqrtm_psd(torch.tensor([[2.0, 1.0], [1.0, 2.0]]))  # eigenvalues 3 and 1
    r3 = math.sqrt(3)
    expected = 0.5 * torch.tensor([[r3 + 1, r3 - 1], [r3 - 1, r3 + 1]], dtype=torch.float64)
    torch.testing.assert_close(s, expected, rtol=0, atol=1e-14)
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=g))
    lam = torch.tensor([9.0, 4.0, 1.0, 0.25, 1e-6, 0.0], dtype=torch.float64)
    # a zero eigenvalue comes back as +-1e-16: its square root, ~1e-8, bounds the accuracy
    torch.testing.assert_close(sqrtm_psd(q @ torch.diag(lam) @ q.T), q @ torch.diag(lam.sqrt()) @ q.T,
                               rtol=0, atol=1e-7)
    for a in (_random_psd(32), _random_psd(32, rank=5)):  # full rank and rank-deficient: no NaN
        s = sqrtm_psd(a)
        assert torch.isfinite(s).all()
        torch.testing.assert_close(s @ s, a, rtol=0, atol=1e-9 * a.abs().max().item())
        torch.testing.assert_close(s, s.T)


def test_trace_sqrtm_product():
    # commuting (diagonal) case: tr((AB)^1/2) = sum sqrt(a_i b_i)
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 0.0])
    assert trace_sqrtm_product(torch.diag(a), torch.diag(b)) == pytest.approx(2 + 2 + 0, abs=1e-12)
    # non-commuting: (A B)^{1/2} squared must give A B, and its trace must match
    A, B = _random_psd(16, seed=2), _random_psd(16, seed=3)
    w = torch.linalg.eigvals(A @ B)  # real positive up to round-off
    assert trace_sqrtm_product(A, B) == pytest.approx(float(w.real.clamp_min(0).sqrt().sum()), rel=1e-9)
    scipy_linalg = pytest.importorskip("scipy.linalg")
    ref = scipy_linalg.sqrtm((A @ B).numpy())
    assert trace_sqrtm_product(A, B) == pytest.approx(float(ref.real.trace()), rel=1e-9)


def test_frechet_distance_closed_form_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0]), torch.tensor([3.0, -1.0])
    c1, c2 = torch.tensor([1.0, 4.0]), torch.tensor([9.0, 1.0])
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(c1) - sqrt(c2))^2
    expected = 9 + 4 + (1 - 3) ** 2 + (2 - 1) ** 2
    fd = frechet_distance(mu1, torch.diag(c1), mu2, torch.diag(c2))
    assert fd == pytest.approx(expected, abs=1e-12)
    assert frechet_distance(mu1, torch.diag(c1), mu1, torch.diag(c1)) == pytest.approx(0, abs=1e-12)


def test_classifier_fd_identical_sets_is_zero():
    f = torch.randn(500, 64, generator=torch.Generator().manual_seed(0))
    assert classifier_fd(f, f) == pytest.approx(0.0, abs=1e-9)
    assert classifier_fd(f.numpy(), f.clone()) == pytest.approx(0.0, abs=1e-9)  # numpy accepted


def test_classifier_fd_mean_shift():
    g = torch.Generator().manual_seed(0)
    d = 8
    mu = torch.linspace(-1, 1, d, dtype=torch.float64)
    a = torch.randn(20_000, d, generator=g, dtype=torch.float64)
    # a translated copy has exactly the same covariance: FD = |mu|^2 up to round-off
    assert classifier_fd(a, a + mu) == pytest.approx(float(mu.pow(2).sum()), rel=1e-9)
    # independent samples: FD ~ |mu|^2; the mean term fluctuates by ~2 |mu| sqrt(2 / N) ~ 0.04,
    # the covariance term is O(d^2 / N) ~ 0.003
    b = torch.randn(20_000, d, generator=g, dtype=torch.float64) + mu
    fd = classifier_fd(a, b)
    assert fd == pytest.approx(float(mu.pow(2).sum()), abs=0.15)
    assert fd - float((a.mean(0) - b.mean(0)).pow(2).sum()) == pytest.approx(0.0, abs=0.01)
    with pytest.raises(ValueError, match="feature sizes"):
        classifier_fd(a, b[:, :4])


# ----------------------------------------------------------------------------------------------
# KID
# ----------------------------------------------------------------------------------------------
def test_kid_same_vs_different():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3000, 32, generator=g)
    b = torch.randn(3000, 32, generator=g)
    c = torch.randn(3000, 32, generator=g) * 1.3 + 0.3
    same_mean, same_std = kid(a, b, subsets=50, subset_size=500)
    diff_mean, diff_std = kid(a, c, subsets=50, subset_size=500)
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert diff_mean > 10 * max(abs(same_mean), diff_std / math.sqrt(50))
    assert kid(a, c, subsets=5, subset_size=500, seed=1) == kid(a, c, subsets=5, subset_size=500, seed=1)


def test_kid_unbiased_estimator_matches_definition():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 5, generator=g, dtype=torch.float64), torch.randn(40, 5, generator=g,
                                                                              dtype=torch.float64) + 0.5
    k = lambda x, y: (x @ y.T / 5 + 1) ** 3  # noqa: E731
    m = 40
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    expected = ((kaa.sum() - kaa.trace()) / (m * (m - 1)) + (kbb.sum() - kbb.trace()) / (m * (m - 1))
                - 2 * kab.mean())
    mean, std = kid(a, b, subsets=3, subset_size=100)  # subset = whole sets: every subset identical
    assert mean == pytest.approx(float(expected), rel=1e-12) and std == pytest.approx(0, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# 2-D distances
# ----------------------------------------------------------------------------------------------
def _normal_abs_mean(m, s):
    """E|Z| for Z ~ N(m, s^2)."""
    return (s * math.sqrt(2 / math.pi) * math.exp(-m * m / (2 * s * s))
            + m * math.erf(m / (s * math.sqrt(2))))


def test_energy_distance_gaussian_shift_closed_form():
    # X ~ N(0, 1), Y ~ N(delta, 1): 2 E|X - Y| - E|X - X'| - E|Y - Y'| in closed form
    g = torch.Generator().manual_seed(0)
    delta = 1.0
    expected = 2 * _normal_abs_mean(delta, math.sqrt(2)) - 2 * _normal_abs_mean(0.0, math.sqrt(2))
    vals = []
    for _ in range(16):
        a = torch.randn(1000, 1, generator=g, dtype=torch.float64)
        b = torch.randn(1000, 1, generator=g, dtype=torch.float64) + delta
        vals.append(energy_distance(a, b))
    vals = torch.tensor(vals)
    assert abs(vals.mean() - expected) < 4 * vals.std() / math.sqrt(len(vals))
    assert energy_distance(a, b) == pytest.approx(energy_distance(b, a), rel=1e-12)


def test_energy_distance_is_unbiased_for_equal_laws():
    g = torch.Generator().manual_seed(0)
    vals = torch.tensor([energy_distance(torch.randn(20, 2, generator=g),
                                         torch.randn(25, 2, generator=g)) for _ in range(400)])
    # the V-statistic would be biased upwards by about E|X - X'| (1/20 + 1/25) ~ 0.15
    assert abs(vals.mean()) < 4 * vals.std() / math.sqrt(len(vals))
    assert (vals < 0).any()  # an unbiased estimate of 0 goes both ways
    a = torch.randn(500, 2, generator=g)
    assert energy_distance(a, a + 0.5) > 0.1


def test_sliced_w2_properties():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 2, generator=g, dtype=torch.float64)
    assert sliced_w2(a, a) == 0.0
    # same empirical law with a different sample size: exactly 0
    assert sliced_w2(a, torch.cat([a, a]), projections=16) == pytest.approx(0.0, abs=1e-12)
    # translation by v: W2 along theta is |theta . v|, E (theta . v)^2 = |v|^2 / 2 in 2-D
    v = torch.tensor([0.6, -0.8], dtype=torch.float64)
    assert sliced_w2(a, a + v, projections=4000) == pytest.approx(1 / math.sqrt(2), rel=0.03)
    assert sliced_w2(a, a + v, seed=3) == sliced_w2(a, a + v, seed=3)
    # 1-D exact value for unequal sizes: W2^2({0, 1}, {0, 0.5, 1}) = 1/12
    one = sliced_w2(torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [0.5], [1.0]]), projections=3)
    assert one == pytest.approx(math.sqrt(1 / 12), rel=1e-12)


def test_mode_coverage_on_gmm9():
    x, y = load_dataset("gmm9", n=20_000)
    covered, frac = mode_coverage(x)  # defaults: gmm9 centres, radius 3 std
    assert covered == 9
    assert frac == pytest.approx(1 - math.exp(-4.5), abs=0.005)  # P(chi2_2 <= 9)
    covered, frac = mode_coverage(x[y < 4], gmm9_centers(), 3 * GMM9_STD)
    assert covered == 4 and frac > 0.98
    far = torch.full((100, 2), 0.4)  # between modes
    assert mode_coverage(far) == (0, 0.0)
    mixed = torch.cat([x[:100], far])
    covered, frac = mode_coverage(mixed, min_count=1)
    assert covered == 9 and frac == pytest.approx(mode_coverage(x[:100])[1] / 2)
    assert mode_coverage(x[y == 0][:3], min_count=5)[0] == 0


def test_point_metrics_dict():
    x, _ = load_dataset("gmm9", n=3000)
    ref, _ = load_dataset("gmm9", split="test", n=3000)
    good = metrics.point_metrics(x, ref, centers="gmm9")
    bad = metrics.point_metrics(x * 0.5, ref, centers="gmm9")
    assert set(good) == {"energy_distance", "sliced_w2", "modes_covered", "mode_fraction"}
    assert good["modes_covered"] == 9 and good["mode_fraction"] > 0.97
    assert bad["mode_fraction"] < 0.2
    assert bad["energy_distance"] > 10 * abs(good["energy_distance"])
    assert bad["sliced_w2"] > 5 * good["sliced_w2"]
    assert set(metrics.point_metrics(x, ref, max_points=500)) == {"energy_distance", "sliced_w2"}


# ----------------------------------------------------------------------------------------------
# the metric classifier (digits: small and fast)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    pytest.importorskip("sklearn")
    cache = tmp_path_factory.mktemp("classifiers")
    model = metrics.train_classifier("digits", steps=150, seed=0, cache_dir=cache)
    return model, cache


def test_classifier_trains_on_digits(digits_classifier):
    model, cache = digits_classifier
    x, y = load_dataset("digits", split="test")
    acc = conditional_accuracy(model, x, y)
    assert acc > 0.85  # chance is 0.1; the default 600 steps reach ~1.0
    assert model.meta["test_accuracy"] == pytest.approx(acc)
    feats = metrics.classifier_features(model, x)
    assert feats.shape == (len(x), model.feature_dim) and feats.shape[1] == 128
    assert model(x[:7]).shape == (7, 10)
    with pytest.raises(ValueError, match="expects images"):
        model(torch.zeros(2, 1, 28, 28))


def test_classifier_cache_roundtrip(digits_classifier):
    model, cache = digits_classifier
    path = cache / "digits-0.safetensors"
    assert path.is_file() and path.with_suffix(".json").is_file()
    t = time.perf_counter()
    again = metrics.train_classifier("digits", steps=150, seed=0, cache_dir=cache)
    assert time.perf_counter() - t < 5  # loaded, not retrained
    assert again.meta["train_seconds"] == pytest.approx(model.meta["train_seconds"])
    x, _ = load_dataset("digits", split="test")
    torch.testing.assert_close(again.features(x), model.features(x), rtol=0, atol=0)


@pytest.mark.parametrize("dataset", ["mnist5k16", "mnist5k"])
def test_shipped_judges_load_instead_of_training(dataset, tmp_path):
    from kacfast.metrics.classifier import SHIPPED_JUDGES_DIR
    judges = metrics.load_judges(dataset, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # loaded: nothing trained or cached
    for name, judge in judges.items():
        spec = metrics.JUDGES[name]
        assert (judge.meta["arch"], judge.meta["seed"], judge.meta["lr"]) == (spec.arch, spec.seed, spec.lr)
        assert judge.meta["trained_on"] and judge.meta["test_accuracy"] > 0.97
        assert judge.meta["weights_digest"] == judge.weights_digest()  # the pair of files agrees
    stems = sorted(p.stem for p in SHIPPED_JUDGES_DIR.glob(f"{dataset}-*.safetensors"))
    assert stems == [f"{dataset}-0", f"{dataset}-strided-1"]
    assert sum(p.stat().st_size for p in SHIPPED_JUDGES_DIR.iterdir()) <= 8 * 2**20  # the wheel's budget


@pytest.fixture
def shipped_digits_judge(tmp_path, monkeypatch):
    """A 5-step digits judge as the only shipped judge (kacfast's own are 1,000-step MNIST ones)."""
    pytest.importorskip("sklearn")
    from kacfast.metrics import classifier
    shipped_dir = tmp_path / "shipped"
    monkeypatch.setattr(classifier, "SHIPPED_JUDGES_DIR", shipped_dir)
    judge = metrics.train_classifier("digits", steps=5, seed=0, cache_dir=False)
    judge.save(shipped_dir / "digits-0.safetensors", trained_on="a test",
               **{k: v for k, v in judge.meta.items() if k not in judge.config})
    return judge, shipped_dir


def test_the_shipped_judge_shadows_the_cache_and_retrain_bypasses_it(shipped_digits_judge, tmp_path):
    judge, _ = shipped_digits_judge
    cache = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # other settings: no warning, just training
        other = metrics.train_classifier("digits", steps=6, seed=0, cache_dir=cache)
    assert "trained_on" not in other.meta and (cache / "digits-0.safetensors").is_file()
    retrained = metrics.train_classifier("digits", steps=5, seed=0, cache_dir=cache, retrain=True)
    assert "trained_on" not in retrained.meta and retrained.meta["steps"] == 5
    again = metrics.train_classifier("digits", steps=5, seed=0, cache_dir=cache)
    assert again.meta["trained_on"] == "a test" and again.weights_digest() == judge.weights_digest()


@pytest.mark.parametrize("broken", ["weights", "json missing"])
def test_a_shipped_judge_that_does_not_load_warns_and_trains(shipped_digits_judge, broken):
    judge, shipped_dir = shipped_digits_judge
    if broken == "weights":
        (shipped_dir / "digits-0.safetensors").write_bytes(b"not a safetensors file")
    else:
        (shipped_dir / "digits-0.json").unlink()
    with pytest.warns(UserWarning, match="did not load"):
        trained = metrics.train_classifier("digits", steps=5, seed=0, cache_dir=False)
    assert "trained_on" not in trained.meta
    assert trained.weights_digest() == judge.weights_digest()  # trained here, deterministically


def test_classifier_is_deterministic():
    pytest.importorskip("sklearn")
    a = metrics.train_classifier("digits", steps=20, seed=3, cache_dir=False)
    b = metrics.train_classifier("digits", steps=20, seed=3, cache_dir=False)
    c = metrics.train_classifier("digits", steps=20, seed=4, cache_dir=False)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_classifier_fd_and_kid_rank_real_above_noise(digits_classifier):
    model, _ = digits_classifier
    x_train, _ = load_dataset("digits", split="train")
    x_test, _ = load_dataset("digits", split="test")
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(len(x_test), *x_test.shape[1:], generator=g) * 2 - 1
    f_train, f_test, f_noise = (metrics.classifier_features(model, v) for v in (x_train, x_test, noise))
    assert classifier_fd(f_train, f_test) * 5 < classifier_fd(f_train, f_noise)
    kid_real, _ = kid(f_train, f_test, subsets=20, subset_size=150)
    kid_noise, _ = kid(f_train, f_noise, subsets=20, subset_size=150)
    assert kid_real * 5 < kid_noise


def test_image_metrics_dict(digits_classifier):
    model, _ = digits_classifier
    x_test, y_test = load_dataset("digits", split="test")
    x_train, _ = load_dataset("digits", split="train")
    out = metrics.image_metrics(model, x_test, x_train, y_test, kid_subsets=5, kid_subset_size=100)
    assert set(out) == {"classifier_fd", "classifier_kid", "classifier_kid_std",
                        "conditional_accuracy", "num_images", "num_reference"}
    assert not any("fid" in k.lower() for k in out)  # never called FID
    assert out["conditional_accuracy"] == pytest.approx(model.meta["test_accuracy"])
    assert out["num_images"] == len(x_test) and out["classifier_fd"] >= 0


def test_train_classifier_rejects_point_sets():
    with pytest.raises(ValueError, match="2-D point set"):
        metrics.train_classifier("gmm9")


# ----------------------------------------------------------------------------------------------
# Inception FID: opt-in, never downloads
# ----------------------------------------------------------------------------------------------
def test_inception_fid_needs_local_weights_and_torch_fidelity(tmp_path, monkeypatch):
    x = torch.zeros(2, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        metrics.inception_fid(x, x, tmp_path / "missing.pth")
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(ImportError, match=r"kacfast\[fid\]"):
        metrics.inception_fid(x, x, weights)
