"""Distances between feature sets: Frechet distance, KID, k-NN precision and recall.

Feature-space agnostic: give them the features of one judge (:mod:`kacfast.metrics.classifier`)
or of Inception. Every statistic is computed in float64 and returned as Python floats.
"""
from __future__ import annotations

import numpy as np
import torch

from kacfast.metrics.classifier import Classifier, classifier_features, conditional_accuracy

def _as64(a, name: str = "features", dim: int = 2) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
    t = t.detach().cpu().to(torch.float64)
    if t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}.")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf.")
    return t


def gaussian_stats(feats) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D), float64, of (N, D) features (N >= 2)."""
    f = _as64(feats)
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors, got {f.shape[0]}.")
    mu = f.mean(0)
    c = f - mu
    cov = c.T @ c / (f.shape[0] - 1)
    return mu, (cov + cov.T) / 2


def sqrtm_psd(a) -> torch.Tensor:
    """Principal square root of a symmetric positive semi-definite matrix (float64), via ``eigh``;
    eigenvalues below zero (round-off) are clamped to 0."""
    a = _as64(a, "matrix")
    a = (a + a.T) / 2
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def trace_sqrtm_product(a, b) -> float:
    """tr((A B)^{1/2}) for symmetric PSD A, B, in float64.

    A B is not symmetric, but it is similar to S = A^{1/2} B A^{1/2}, which is symmetric PSD:
    (A B)^{1/2} and S^{1/2} have the same eigenvalues, so tr((A B)^{1/2}) = sum sqrt(eig(S)), computed
    with two symmetric eigendecompositions (no complex arithmetic, no scipy ``sqrtm`` iterations).
    """
    ra = sqrtm_psd(a)
    s = ra @ _as64(b, "matrix") @ ra
    w = torch.linalg.eigvalsh((s + s.T) / 2)
    return float(w.clamp_min(0).sqrt().sum())


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + tr(C1) + tr(C2) - 2 tr((C1 C2)^{1/2}) between two Gaussians (float64),
    clamped at 0."""
    mu1, mu2 = _as64(mu1, "mean", 1), _as64(mu2, "mean", 1)
    cov1, cov2 = _as64(cov1, "covariance"), _as64(cov2, "covariance")
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.numel(),) * 2:
        raise ValueError(f"shape mismatch: means {tuple(mu1.shape)}, {tuple(mu2.shape)}; covariances "
                         f"{tuple(cov1.shape)}, {tuple(cov2.shape)}.")
    d = float(((mu1 - mu2) ** 2).sum()) + float(torch.trace(cov1) + torch.trace(cov2)) \
        - 2.0 * trace_sqrtm_product(cov1, cov2)
    return max(d, 0.0)


def classifier_fd(feats_a, feats_b) -> float:
    """Classifier FD: the Frechet distance between Gaussian fits of two feature sets.

    Use features from :func:`classifier_features` (a project classifier, not Inception): this is
    *not* FID, and its values are only comparable with other classifier FDs computed with the same
    classifier. Float64 throughout; matrix square root via symmetric eigendecompositions
    (:func:`trace_sqrtm_product`).

    Args:
        feats_a, feats_b: (N, D) and (M, D) tensors or arrays, N, M >= 2.
    """
    fa, fb = _as64(feats_a), _as64(feats_b)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"feature sizes differ: {fa.shape[1]} vs {fb.shape[1]}.")
    return frechet_distance(*gaussian_stats(fa), *gaussian_stats(fb))


def kid(feats_a, feats_b, subsets: int = 100, subset_size: int = 1000, seed: int = 0,
        degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> tuple[float, float]:
    """Classifier KID: unbiased MMD^2 with the polynomial kernel k(x, y) = (gamma x.y + coef0)^degree
    (gamma = 1 / D), averaged over random subsets (Binkowski et al., 2018).

    For each of ``subsets`` draws, ``m = min(subset_size, N, M)`` rows of each set are picked without
    replacement and the unbiased estimator ::

        sum_{i != j} k(a_i, a_j) / (m (m-1)) + sum_{i != j} k(b_i, b_j) / (m (m-1))
            - 2 sum_{i, j} k(a_i, b_j) / m^2

    is computed. On classifier features this is *not* the Inception KID.

    Returns:
        (mean, std) over subsets (std is the population std of the subset values; 0 for one subset).
        The mean is unbiased: it can be slightly negative for identical distributions.
    """
    fa, fb = _as64(feats_a), _as64(feats_b)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"feature sizes differ: {fa.shape[1]} vs {fb.shape[1]}.")
    m = min(int(subset_size), fa.shape[0], fb.shape[0])
    if m < 2 or subsets < 1:
        raise ValueError(f"need subset_size >= 2 and subsets >= 1 (effective subset size {m}).")
    gamma = 1.0 / fa.shape[1] if gamma is None else float(gamma)
    gen = torch.Generator().manual_seed(seed)
    values = torch.empty(int(subsets), dtype=torch.float64)
    for s in range(int(subsets)):
        a = fa[torch.randperm(fa.shape[0], generator=gen)[:m]]
        b = fb[torch.randperm(fb.shape[0], generator=gen)[:m]]
        kaa = (gamma * a @ a.T + coef0) ** degree
        kbb = (gamma * b @ b.T + coef0) ** degree
        kab = (gamma * a @ b.T + coef0) ** degree
        values[s] = ((kaa.sum() - kaa.diagonal().sum()) / (m * (m - 1))
                     + (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
                     - 2 * kab.sum() / (m * m))
    return float(values.mean()), float(values.std(unbiased=False))


def _knn_radii(f: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Distance from each row of f to its k-th nearest other row."""
    radii = torch.empty(f.shape[0], dtype=torch.float64)
    for i in range(0, f.shape[0], block):
        d = torch.cdist(f[i:i + block], f)
        radii[i:i + block] = d.kthvalue(k + 1, dim=1).values  # the 1st is the row itself (0)
    return radii


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int
             ) -> torch.Tensor:
    """For each point: does it lie in at least one ball (centre, radius)?"""
    out = torch.empty(points.shape[0], dtype=torch.bool)
    for i in range(0, points.shape[0], block):
        d = torch.cdist(points[i:i + block], centres)
        out[i:i + block] = (d <= radii[None, :]).any(1)
    return out


def precision_recall(real_feats, fake_feats, k: int = 3, seed: int = 0, block: int = 1024
                     ) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019): k-NN estimates of each manifold.

    The real manifold is the union of balls around each real feature with radius its distance to
    its k-th nearest real neighbour; precision is the fraction of fake features inside it. Recall
    swaps the roles. Both sets are cut to the smaller size (a seeded random subset of the larger),
    since the k-NN radii shrink as a set grows. Float64.

    Args:
        real_feats: (N, D); fake_feats: (M, D); N, M > k.
        k: neighbours (3, as in the paper).
        seed: seeds the subset of the larger set.

    Returns:
        (precision, recall), each in [0, 1].
    """
    real, fake = _as64(real_feats, "real_feats"), _as64(fake_feats, "fake_feats")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: {real.shape[1]} vs {fake.shape[1]}.")
    n = min(real.shape[0], fake.shape[0])
    if n <= k or k < 1:
        raise ValueError(f"need k >= 1 and more than k = {k} features per set, got {n}.")
    gen = torch.Generator().manual_seed(seed)
    if real.shape[0] > n:
        real = real[torch.randperm(real.shape[0], generator=gen)[:n]]
    if fake.shape[0] > n:
        fake = fake[torch.randperm(fake.shape[0], generator=gen)[:n]]
    precision = _covered(fake, real, _knn_radii(real, k, block), block).double().mean()
    recall = _covered(real, fake, _knn_radii(fake, k, block), block).double().mean()
    return float(precision), float(recall)


def image_metrics(classifier: Classifier, images: torch.Tensor, reference: torch.Tensor,
                  labels: torch.Tensor | None = None, *, kid_subsets: int = 100,
                  kid_subset_size: int = 1000, seed: int = 0) -> dict:
    """Classifier-feature metrics of generated ``images`` against ``reference`` images.

    Returns a dict with ``classifier_fd``, ``classifier_kid`` and ``classifier_kid_std`` (and
    ``conditional_accuracy`` when ``labels``, the conditioning labels of ``images``, are given),
    plus ``num_images`` / ``num_reference``. Named after the classifier on purpose: these are not
    Inception FID / KID.
    """
    fa = classifier_features(classifier, images)
    fb = classifier_features(classifier, reference)
    kid_mean, kid_std = kid(fa, fb, kid_subsets, kid_subset_size, seed=seed)
    out = {"classifier_fd": classifier_fd(fa, fb), "classifier_kid": kid_mean,
           "classifier_kid_std": kid_std, "num_images": len(images), "num_reference": len(reference)}
    if labels is not None:
        out["conditional_accuracy"] = conditional_accuracy(classifier, images, labels)
    return out
