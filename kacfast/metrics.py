"""Offline quality metrics.

Images (no network, no Inception weights needed):
    * :class:`Classifier` / :func:`train_classifier`: a small CNN trained in the project on the same
      data, cached to disk (safetensors + JSON config). Its penultimate layer
      (:func:`classifier_features`) is the feature space of the next two metrics.
    * :func:`classifier_fd`: "classifier FD", the Frechet distance between Gaussian fits of
      classifier features. It is **not** FID: its values are not comparable with Inception FID.
    * :func:`kid`: "classifier KID", the unbiased polynomial-kernel MMD^2 of Binkowski et al. on
      the same features (not the Inception KID either).
    * :func:`conditional_accuracy`: classifier accuracy on class-conditional samples.
    * :func:`image_metrics`: all of the above in one dict.
    * :func:`inception_fid`: the real FID, opt-in: needs torch-fidelity (``pip install
      'kacfast[fid]'``) and a local Inception weights file; nothing is downloaded.

2-D point sets (exact, no learned features): :func:`energy_distance`, :func:`sliced_w2`,
:func:`mode_coverage`, and :func:`point_metrics` for all of them.

Every statistic is computed in float64 and returned as Python floats.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kacfast import data as _data

__all__ = [
    "Classifier", "train_classifier", "load_classifier", "classifier_features", "evaluate_classifier",
    "gaussian_stats", "frechet_distance", "classifier_fd", "sqrtm_psd", "trace_sqrtm_product", "kid",
    "conditional_accuracy", "image_metrics", "energy_distance", "sliced_w2", "mode_coverage",
    "point_metrics", "inception_fid", "inception_features", "DEFAULT_CLASSIFIER_STEPS",
]

# ----------------------------------------------------------------------------------------------
# classifier
# ----------------------------------------------------------------------------------------------
#: default training steps (batch 64) per dataset; other datasets use 3000.
DEFAULT_CLASSIFIER_STEPS = {"digits": 600, "mnist5k": 1000, "mnist5k16": 1000, "cifar10": 8000}
_ARCH_VERSION = 1


class Classifier(nn.Module):
    """Small CNN for (C, H, W) images in [-1, 1] (any H, W >= 4).

    Three conv3x3-BatchNorm-ReLU blocks of widths (w, 2w, 4w), each of the first two followed by a
    2x2 max-pool while the map is >= 8 pixels, then adaptive average pooling to 3x3, flatten,
    linear(36 w -> feature_dim) - ReLU: that is ``features(x)`` (the penultimate layer, default 128
    dims); dropout and linear(feature_dim -> num_classes) give the logits. With w = 16: about 0.1 M
    parameters and 2 M multiply-adds per 28x28 image.

    Args:
        in_shape: (C, H, W) of one image.
        num_classes: number of labels.
        width: channels of the first block (w).
        feature_dim: size of the penultimate layer returned by :meth:`features`.
        dropout: dropout before the last layer (training only).
    """

    def __init__(self, in_shape=(1, 28, 28), num_classes: int = 10, width: int = 16,
                 feature_dim: int = 128, dropout: float = 0.3):
        super().__init__()
        c, h, w = (int(v) for v in in_shape)
        self.config = {"in_shape": [c, h, w], "num_classes": int(num_classes), "width": int(width),
                       "feature_dim": int(feature_dim), "dropout": float(dropout),
                       "arch_version": _ARCH_VERSION}
        self.in_shape, self.num_classes, self.feature_dim = (c, h, w), int(num_classes), int(feature_dim)
        self.meta = dict(self.config)  # + training settings and test accuracy after train/load
        layers, cin, size = [], c, min(h, w)
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            if i < 2 and size >= 8:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            cin = cout
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(3), nn.Flatten(),
                                  nn.Linear(9 * cin, feature_dim), nn.ReLU())
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.in_shape:
            shape = ", ".join(map(str, self.in_shape))
            raise ValueError(f"Classifier expects images of shape (B, {shape}), got {tuple(x.shape)}.")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, feature_dim) penultimate activations."""
        self._check(x)
        return self.body(x.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, num_classes) logits."""
        return self.head(self.drop(self.features(x)))

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, **extra) -> None:
        """Write ``path`` (safetensors weights) and ``path`` with suffix ``.json`` (config + extra)."""
        from safetensors.torch import save_file
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
        os.close(fd)  # a unique temporary name: concurrent writers never clobber each other's file
        save_file(tensors, tmp)
        os.replace(tmp, path)
        path.with_suffix(".json").write_text(json.dumps({**self.config, **extra}, indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Classifier":
        """Load a classifier written by :meth:`save` (eval mode, CPU)."""
        from safetensors.torch import load_file
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        model = cls(meta["in_shape"], meta["num_classes"], meta["width"], meta["feature_dim"],
                    meta.get("dropout", 0.3))
        model.load_state_dict(load_file(str(path)))
        model.meta = meta
        return model.eval()


def load_classifier(path: str | os.PathLike) -> Classifier:
    """Same as :meth:`Classifier.load`."""
    return Classifier.load(path)


def _cache_path(dataset_name: str, seed: int, cache_dir) -> Path:
    cache_dir = Path(cache_dir) if cache_dir is not None else (
        Path.home() / ".cache" / "kacfast" / "classifiers")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_name)
    if dataset_name.startswith("folder:"):  # the path may be long or odd: keep it short and unique
        stem = "folder_" + hashlib.sha256(dataset_name.encode()).hexdigest()[:16]
    return cache_dir / f"{stem}-{int(seed)}.safetensors"


def _shift_augment(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random integer translation by up to max_shift pixels (zero = -1 padding), one per image."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(b, x.shape[1], h, w + 2 * max_shift)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(b, x.shape[1], h, w)
    return out.gather(3, cols)


def train_classifier(dataset_name: str, steps: int | None = None, seed: int = 0,
                     cache_dir: str | os.PathLike | None = None, *, batch_size: int = 64,
                     lr: float = 2e-3, width: int = 16, feature_dim: int = 128,
                     threads: int | None = 1, device: str | torch.device = "cpu",
                     retrain: bool = False, verbose: bool = False, **data_kwargs) -> Classifier:
    """Train (or load from cache) the metric classifier of an image dataset.

    Trains on the dataset's ``"train"`` split with Adam + one-cycle learning rate, label smoothing
    0.1 and random +-2 pixel shifts (+-1 for images under 16 pixels), then measures accuracy on the
    ``"test"`` split. Seeded and deterministic (same weights for the same seed, settings and thread
    count). The result is cached at ``<cache_dir>/<dataset>-<seed>.safetensors`` (+ ``.json`` with
    the config, settings, test accuracy and training time); an entry trained with other settings is
    retrained and overwritten.

    Args:
        dataset_name: an image dataset of :func:`kacfast.data.load_dataset`.
        steps: optimisation steps; default :data:`DEFAULT_CLASSIFIER_STEPS` (digits 600, mnist5k
            1000: measured 9 s / 61 s on one busy CPU core, 100 % / 99.2 % test accuracy).
        seed: seeds initialisation, batch order, dropout and augmentation.
        cache_dir: default ``~/.cache/kacfast/classifiers``; ``False`` disables caching.
        threads: CPU threads while training (default 1: a model this small gains little from more,
            loses a lot on a shared machine, and one thread makes the weights reproducible across
            machines with the same CPU kernels); None keeps torch's setting.
        device: where to train (the returned model is on the CPU).
        retrain: ignore an existing cache entry.
        **data_kwargs: passed to ``load_dataset`` (e.g. ``root=...``, ``image_size=...``).

    Returns:
        The classifier in eval mode; ``model.meta`` holds ``test_accuracy`` and ``train_seconds``.
    """
    kind = "folder" if dataset_name.startswith("folder:") else dataset_name
    if dataset_name in _data.TOY_DATASETS:
        raise ValueError(f"{dataset_name} is a 2-D point set: use energy_distance / sliced_w2 / "
                         "mode_coverage, not a classifier.")
    steps = int(steps if steps is not None else DEFAULT_CLASSIFIER_STEPS.get(kind, 3000))
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    settings = {"dataset": dataset_name, "seed": int(seed), "steps": steps, "batch_size": batch_size,
                "lr": lr, "width": width, "feature_dim": feature_dim, "arch_version": _ARCH_VERSION,
                "data_kwargs": {k: (list(v) if isinstance(v, tuple) else v)
                                for k, v in data_kwargs.items() if k != "root"}}
    path = None if cache_dir is False else _cache_path(dataset_name, seed, cache_dir)
    if path is not None and path.is_file() and path.with_suffix(".json").is_file() and not retrain:
        try:
            model = Classifier.load(path)
            if all(model.meta.get(k) == v for k, v in settings.items()):
                return model
        except Exception:  # a corrupt / stale cache entry: retrain over it
            pass

    x, y = _data.load_dataset(dataset_name, "train", seed=0, **data_kwargs)
    x_test, y_test = _data.load_dataset(dataset_name, "test", seed=0, **data_kwargs)
    num_classes = int(_data.dataset_info(dataset_name, **{k: v for k, v in data_kwargs.items()
                                                          if k in ("image_size", "channels")})
                      ["num_classes"])
    num_classes = max(num_classes, int(y.max()) + 1)

    used_threads = torch.get_num_threads() if threads is None else int(threads)
    start = time.perf_counter()
    with _num_threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Classifier(tuple(x.shape[1:]), num_classes, width, feature_dim).to(device)
        gen = torch.Generator().manual_seed(seed + 1)
        max_shift = 2 if min(x.shape[-2:]) >= 16 else 1
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
        sampler = _data.BatchSampler(len(x), min(batch_size, len(x)), seed=seed)
        model.train()
        for step in range(steps):
            idx = next(sampler)
            xb = _shift_augment(x[idx], max_shift, gen).to(device)
            loss = F.cross_entropy(model(xb), y[idx].to(device), label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if verbose and (step % 100 == 0 or step == steps - 1):
                print(f"[classifier {dataset_name}] step {step}/{steps} loss {loss.item():.4f}")
    model = model.cpu().eval()
    seconds = time.perf_counter() - start
    acc = evaluate_classifier(model, x_test, y_test) if len(x_test) else None
    model.meta = {**model.config, **settings, "test_accuracy": acc, "train_seconds": seconds,
                  "threads": used_threads, "test_size": len(x_test)}
    if verbose:
        print(f"[classifier {dataset_name}] test accuracy {acc} in {seconds:.1f} s")
    if path is not None:
        model.save(path, **{k: v for k, v in model.meta.items() if k not in model.config})
    return model


@contextlib.contextmanager
def _num_threads(n: int | None):
    """Temporarily run torch's CPU ops on ``n`` threads (None: leave as is)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@torch.no_grad()
def _batched(fn: Callable, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def classifier_features(classifier: Classifier, images: torch.Tensor, batch_size: int = 500
                        ) -> torch.Tensor:
    """Penultimate-layer features of ``images`` ((N, C, H, W) in [-1, 1]) -> (N, feature_dim)."""
    was_training = classifier.training
    classifier.eval()
    try:
        device = next(classifier.parameters()).device
        return _batched(lambda b: classifier.features(b.to(device)).cpu(), images, batch_size)
    finally:
        classifier.train(was_training)


@torch.no_grad()
def evaluate_classifier(classifier: Classifier, images: torch.Tensor, labels: torch.Tensor,
                        batch_size: int = 500) -> float:
    """Top-1 accuracy of ``classifier`` on labelled images, in [0, 1]."""
    return conditional_accuracy(classifier, images, labels, batch_size)


@torch.no_grad()
def conditional_accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                         batch_size: int = 500) -> float:
    """Fraction of class-conditional samples that the classifier assigns to the class they were
    generated for (top-1), in [0, 1].

    Args:
        classifier: maps (B, C, H, W) images in [-1, 1] to (B, num_classes) logits.
        images: (N, C, H, W) samples, values in [-1, 1].
        labels: (N,) int64 conditioning labels used to generate them.
    """
    labels = torch.as_tensor(labels).reshape(-1)
    if len(images) != len(labels):
        raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) differ in length.")
    if len(labels) == 0:
        raise ValueError("need at least one image.")
    was_training = classifier.training
    classifier.eval()
    try:
        device = next(classifier.parameters()).device
        pred = _batched(lambda b: classifier(b.to(device)).argmax(1).cpu(), images, batch_size)
    finally:
        classifier.train(was_training)
    return float((pred == labels.cpu()).double().mean())


# ----------------------------------------------------------------------------------------------
# Frechet distance and KID on features
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# 2-D point-set distances
# ----------------------------------------------------------------------------------------------
_EXACT = "donot_use_mm_for_euclid_dist"  # |x - y| directly: no cancellation for close points


def _mean_pairwise(a: torch.Tensor, b: torch.Tensor, exclude_diagonal: bool, block: int = 2048
                   ) -> float:
    """Mean Euclidean distance over pairs (a_i, b_j), in row blocks (memory O(block * M))."""
    total = 0.0
    for i in range(0, a.shape[0], block):
        total += float(torch.cdist(a[i:i + block], b, compute_mode=_EXACT).sum())
    n, m = a.shape[0], b.shape[0]
    return total / (n * (n - 1) if exclude_diagonal else n * m)


def energy_distance(a, b) -> float:
    """Energy distance between two samples (Szekely & Rizzo):
    ``2 E|X - Y| - E|X - X'| - E|Y - Y'|``.

    The within-sample terms are U-statistics (pairs i != j, divided by n (n - 1)), so the estimate is
    unbiased for the population energy distance (it can dip slightly below 0 when both samples come
    from the same law) and consistent. It is the squared-distance-like quantity (not its square
    root); 0 iff the laws are equal. Cost O(N M) distances, float64, computed in blocks.

    Args:
        a: (N, D), b: (M, D) tensors or arrays, N, M >= 2.
    """
    a, b = _as64(a, "a"), _as64(b, "b")
    if a.shape[1] != b.shape[1] or a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"need (N, D), (M, D) with N, M >= 2, got {tuple(a.shape)}, {tuple(b.shape)}.")
    return (2 * _mean_pairwise(a, b, False) - _mean_pairwise(a, a, True)
            - _mean_pairwise(b, b, True))


def _w2sq_1d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact W2^2 between 1-D empirical laws, batched over rows: a (P, N), b (P, M), uniform weights.

    Both quantile functions are step functions; integrate (F_a^-1(u) - F_b^-1(u))^2 over the merged
    breakpoints {i/N} U {j/M}.
    """
    a, _ = a.sort(dim=1)
    b, _ = b.sort(dim=1)
    n, m = a.shape[1], b.shape[1]
    if n == m:
        return ((a - b) ** 2).mean(1)
    u = torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,
                   torch.arange(1, m + 1, dtype=torch.float64) / m]).unique()  # sorted, ends at 1
    lo = torch.cat([torch.zeros(1, dtype=torch.float64), u[:-1]])
    mid, width = (lo + u) / 2, u - lo
    ia = (mid * n).floor().long().clamp_max(n - 1)
    ib = (mid * m).floor().long().clamp_max(m - 1)
    return ((a[:, ia] - b[:, ib]) ** 2 * width).sum(1)


def sliced_w2(a, b, projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance ``(E_theta W2^2(theta.a, theta.b))^{1/2}``, theta uniform on the
    unit sphere, estimated with ``projections`` random directions (seeded). Each 1-D W2^2 is exact for
    the empirical laws (sizes may differ). Float64.

    Args:
        a: (N, D), b: (M, D) tensors or arrays.
    """
    a, b = _as64(a, "a"), _as64(b, "b")
    if a.shape[1] != b.shape[1] or a.shape[0] < 1 or b.shape[0] < 1:
        raise ValueError(f"need (N, D), (M, D) with N, M >= 1, got {tuple(a.shape)}, {tuple(b.shape)}.")
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(int(projections), a.shape[1], generator=gen, dtype=torch.float64)
    theta = theta / theta.norm(dim=1, keepdim=True)
    total, chunk = 0.0, max(1, 2 ** 22 // (a.shape[0] + b.shape[0]))
    for i in range(0, theta.shape[0], chunk):
        t = theta[i:i + chunk]
        total += float(_w2sq_1d(t @ a.T, t @ b.T).sum())
    return math.sqrt(max(total / theta.shape[0], 0.0))


def mode_coverage(samples, centers=None, radius: float | None = None, min_count: int = 1
                  ) -> tuple[int, float]:
    """Mode coverage of a mixture: ``(modes_covered, fraction_near_a_mode)``.

    A sample is *near* a mode when its distance to the centre is <= ``radius``; a mode is covered when
    at least ``min_count`` samples are near it. Defaults: the ``gmm9`` centres
    (:func:`kacfast.data.gmm9_centers`) and ``radius = 3 * GMM9_STD`` (0.15; the true gmm9 law puts
    98.9 % of its mass within it).

    Args:
        samples: (N, D) points; centers: (K, D); radius > 0.
    """
    x = _as64(samples, "samples")
    c = _as64(_data.gmm9_centers() if centers is None else centers, "centers")
    radius = 3 * _data.GMM9_STD if radius is None else float(radius)
    if radius <= 0 or x.shape[1] != c.shape[1]:
        raise ValueError(f"need radius > 0 and matching dimensions, got radius={radius}, "
                         f"samples {tuple(x.shape)}, centers {tuple(c.shape)}.")
    if x.shape[0] == 0:
        return 0, 0.0
    near = torch.cdist(x, c, compute_mode=_EXACT) <= radius
    counts = near.sum(0)
    return int((counts >= min_count).sum()), float(near.any(1).double().mean())


def point_metrics(samples, reference, *, centers=None, radius: float | None = None,
                  projections: int = 256, seed: int = 0, max_points: int | None = 10_000) -> dict:
    """2-D (or any low-D) metrics of ``samples`` against ``reference`` points.

    Returns ``energy_distance``, ``sliced_w2`` and, when ``centers`` is given (``"gmm9"`` for the
    gmm9 centres and radius defaults), ``modes_covered`` / ``mode_fraction`` from :func:`mode_coverage`.
    ``max_points`` caps each set (first rows) for the O(N M) energy distance; None uses all.
    """
    a, b = _as64(samples, "samples"), _as64(reference, "reference")
    ea, eb = (a, b) if max_points is None else (a[:max_points], b[:max_points])
    out = {"energy_distance": energy_distance(ea, eb),
           "sliced_w2": sliced_w2(a, b, projections=projections, seed=seed)}
    if centers is not None:
        modes, frac = mode_coverage(a, None if isinstance(centers, str) and centers == "gmm9"
                                    else centers, radius)
        out.update(modes_covered=modes, mode_fraction=frac)
    return out


# ----------------------------------------------------------------------------------------------
# Inception FID (opt-in)
# ----------------------------------------------------------------------------------------------
def _to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(images)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(x.shape)}.")
    if x.dtype != torch.uint8:
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def inception_features(images: torch.Tensor, weights_path: str | os.PathLike,
                       batch_size: int = 100, device: str | torch.device | None = None) -> torch.Tensor:
    """2048-d Inception-v3 pool features (torch-fidelity's ``inception-v3-compat``) from a local
    weights file; images (N, 1|3, H, W) in [-1, 1] (or uint8). Nothing is downloaded."""
    weights_path = Path(weights_path).expanduser()
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"Inception weights file {str(weights_path)!r} not found. Inception FID is opt-in: give a "
            "local copy of torch-fidelity's 'weights-inception-2015-12-05-6726825d.pth' (kacfast never "
            "downloads it); offline, use classifier_fd / kid instead.")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as e:
        raise ImportError("inception_fid needs torch-fidelity: pip install 'kacfast[fid]'") from e
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                      feature_extractor_weights_path=str(weights_path))
    net = net.to(device).eval()
    x = _to_uint8_rgb(images)
    return _batched(lambda b: net(b.to(device))[0].reshape(len(b), -1).double().cpu(), x, batch_size)


def inception_fid(images_a: torch.Tensor, images_b: torch.Tensor, weights_path: str | os.PathLike,
                  batch_size: int = 100, device: str | torch.device | None = None) -> float:
    """Frechet Inception Distance (the real FID) between two image sets, opt-in.

    Needs torch-fidelity (``pip install 'kacfast[fid]'``) and a local Inception weights file; raises
    FileNotFoundError / ImportError otherwise and never downloads. Images: (N, 1|3, H, W) in [-1, 1]
    (or uint8); greyscale is repeated to RGB; the extractor resizes to 299x299 itself. The Frechet
    distance is computed in float64 by :func:`frechet_distance`. Use >= 10k images per set for numbers
    that mean anything (50k for papers).
    """
    fa = inception_features(images_a, weights_path, batch_size, device)
    fb = inception_features(images_b, weights_path, batch_size, device)
    return classifier_fd(fa, fb)
