"""The judges' feature spaces: small image classifiers trained on the same data (the judges of
mnist5k and mnist5k16 ship with kacfast; others are trained here and cached to disk).

:class:`Classifier` has two architectures: ``"cnn"`` (conv3x3-BatchNorm-ReLU blocks with max-pooling,
the project's original judge) and ``"strided"`` (5x5 and strided 4x4 convolutions, GroupNorm,
GELU, no pooling). A pixel MLP was tried as the second judge and dropped: it barely tells the
blurred averages of a 1-step teacher from digits (classifier FD 7x the real-vs-real floor with
LayerNorm, 20x without; the two conv nets put them 50x and 1000x above it).

:data:`JUDGES` names the two judges every quality report uses: each its own architecture, seed
(initialisation, batch order, augmentation draws) and optimiser settings, so neither shares
weights, data order or architecture with the other. Their penultimate layers
(:func:`classifier_features`) are the feature spaces of the distances in
:mod:`kacfast.metrics.distances`; their logits give :func:`conditional_accuracy`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kacfast import data as _data

_ARCH_VERSION = 1


class Classifier(nn.Module):
    """Small image classifier for (C, H, W) images in [-1, 1]; two architectures.

    ``arch="cnn"`` (any H, W >= 4): three conv3x3-BatchNorm-ReLU blocks of widths (w, 2w, 4w),
    each of the first two followed by a 2x2 max-pool while the map is >= 8 pixels, then adaptive
    average pooling to 3x3, flatten, linear(36 w -> feature_dim) - ReLU. With w = 16: about
    0.1 M parameters and 2 M multiply-adds per 28x28 image.

    ``arch="strided"`` (any H, W >= 4): conv5x5 (2w) - GroupNorm - GELU, then two strided conv4x4
    (4w, 8w; stride 2, the second without normalization) with GroupNorm / GELU, flatten the
    (H/4, W/4) map, linear -> feature_dim - GELU: other kernel sizes, downsampling, normalization
    and activation than the CNN, and no pooling. About 0.9 M parameters at 28x28.

    Either way that is ``features(x)`` (the penultimate layer); dropout and linear(feature_dim ->
    num_classes) give the logits.

    Args:
        in_shape: (C, H, W) of one image.
        num_classes: number of labels.
        width: the first block's channels (w; the strided net's first conv has 2 w).
        feature_dim: size of the penultimate layer returned by :meth:`features`.
        dropout: dropout before the last layer (training only).
        arch: ``"cnn"`` (default) or ``"strided"``.
    """

    ARCHS = ("cnn", "strided")

    def __init__(self, in_shape=(1, 28, 28), num_classes: int = 10, width: int = 16,
                 feature_dim: int = 128, dropout: float = 0.3, arch: str = "cnn"):
        super().__init__()
        if arch not in self.ARCHS:
            raise ValueError(f"arch must be one of {self.ARCHS}, got {arch!r}.")
        c, h, w = (int(v) for v in in_shape)
        self.config = {"in_shape": [c, h, w], "num_classes": int(num_classes), "width": int(width),
                       "feature_dim": int(feature_dim), "dropout": float(dropout),
                       "arch_version": _ARCH_VERSION, "arch": arch}
        self.in_shape, self.num_classes, self.feature_dim = (c, h, w), int(num_classes), int(feature_dim)
        self.meta = dict(self.config)  # + training settings and test accuracy after train/load
        if arch == "strided":
            if min(h, w) < 4:
                raise ValueError(f"the strided classifier needs H, W >= 4, got {h}x{w}.")
            c1, c2, c3 = 2 * width, 4 * width, 8 * width
            self.body = nn.Sequential(
                nn.Conv2d(c, c1, 5, padding=2), nn.GroupNorm(8, c1), nn.GELU(),
                nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.GroupNorm(8, c2), nn.GELU(),
                nn.Conv2d(c2, c3, 4, stride=2, padding=1), nn.GELU(), nn.Flatten(),
                nn.Linear(c3 * (h // 4) * (w // 4), feature_dim), nn.GELU())
        else:
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
        """Write ``path`` (safetensors weights), then ``path`` with suffix ``.json`` (config + extra
        + the weights' digest), each atomically; a writer killed between the two leaves a pair
        whose digests disagree, which `load` refuses and the judge cache trains over."""
        from kacfast.checkpoints import replace_atomically, save_file_atomically
        path = Path(path)
        save_file_atomically({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(path))
        text = json.dumps({**self.config, **extra, "weights_digest": self.weights_digest()}, indent=2)
        replace_atomically(str(path.with_suffix(".json")), lambda tmp: Path(tmp).write_text(text))

    def weights_digest(self) -> str:
        """The first 16 hex digits of the SHA-256 of the weights: two scores are comparable only
        when their judges' digests agree (a judge retrained on another CPU differs in its last bits)."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Classifier":
        """Load a classifier written by :meth:`save` (eval mode, CPU)."""
        from safetensors.torch import load_file
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        model = cls(meta["in_shape"], meta["num_classes"], meta["width"], meta["feature_dim"],
                    meta.get("dropout", 0.3), meta.get("arch", "cnn"))
        model.load_state_dict(load_file(str(path)))
        recorded = meta.get("weights_digest")  # absent from files written before 2026-12-08
        if recorded is not None and recorded != model.weights_digest():
            raise ValueError(f"{path}: its weights (digest {model.weights_digest()}) are not the ones "
                             f"its .json describes ({recorded}): a half-finished save.")
        meta.setdefault("arch", "cnn")  # files written before the second judge existed
        model.meta = meta
        return model.eval()


def load_classifier(path: str | os.PathLike) -> Classifier:
    """Same as :meth:`Classifier.load`."""
    return Classifier.load(path)


#: Judges shipped with kacfast (the cache's file names): trained once, so that every machine scores
#: with the same weights. Retrained on another CPU, the `cnn` judge of mnist5k16 moved a student's
#: FD by 6-11% per seed (the `strided` judges came out bit-identical).
SHIPPED_JUDGES_DIR = Path(__file__).resolve().parents[1] / "pretrained" / "judges"


def _load_if_settings_match(path: Path, settings: dict, *, shipped: bool = False) -> Classifier | None:
    """The classifier at ``path`` (+ .json) if it was trained with ``settings``, else None. A cache
    entry that does not load is None (retrained over); a shipped one that does not load warns, since
    the judge trained instead differs from the shipped one in its last bits."""
    files = (path, path.with_suffix(".json"))
    if not all(f.is_file() for f in files):
        if shipped and any(f.is_file() for f in files):
            _warn_shipped(path, "half of its pair of files is missing")
        return None
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        meta.setdefault("arch", "cnn")  # files written before the second judge existed
        if any(meta.get(k) != v for k, v in settings.items()):
            return None
        return Classifier.load(path)
    except Exception as error:
        if shipped:
            _warn_shipped(path, error)
        return None


def _warn_shipped(path: Path, why) -> None:
    warnings.warn(f"the shipped judge {path.name} did not load ({why}); using this machine's cached "
                  "or newly trained judge instead: its scores will not match other machines'.")


def _cache_path(dataset_name: str, seed: int, cache_dir, arch: str = "cnn") -> Path:
    cache_dir = Path(cache_dir) if cache_dir is not None else (
        Path.home() / ".cache" / "kacfast" / "classifiers")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_name)
    if dataset_name.startswith("folder:"):  # the path may be long or odd: keep it short and unique
        stem = "folder_" + hashlib.sha256(dataset_name.encode()).hexdigest()[:16]
    if arch != "cnn":  # the CNN keeps its original file name
        stem = f"{stem}-{arch}"
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
                     lr: float = 2e-3, width: int = 16, feature_dim: int = 128, arch: str = "cnn",
                     threads: int | None = 1, device: str | torch.device = "cpu",
                     retrain: bool = False, verbose: bool = False, **data_kwargs) -> Classifier:
    """Train (or load the shipped copy, or the cached one) the metric classifier of an image dataset.

    Trains on the dataset's ``"train"`` split with Adam + one-cycle learning rate, label smoothing
    0.1 and random +-2 pixel shifts (+-1 for images under 16 pixels), then measures accuracy on the
    ``"test"`` split. Seeded and deterministic (same weights for the same seed, settings and thread
    count). The result is cached at ``<cache_dir>/<dataset>-<seed>.safetensors`` (+ ``.json`` with
    the config, settings, test accuracy and training time); an entry trained with other settings is
    retrained and overwritten. The judges of ``mnist5k`` and ``mnist5k16`` ship with kacfast
    (:data:`SHIPPED_JUDGES_DIR`) and are used whenever the settings match, so scores agree across
    machines; ``retrain=True`` trains anyway.

    Args:
        dataset_name: an image dataset of :func:`kacfast.data.load_dataset`.
        steps: optimisation steps (batch 64); default the dataset's ``classifier_steps`` in
            :data:`kacfast.data.DATASETS` (digits 600, mnist5k 1000: measured 9 s / 61 s on one
            busy CPU core, 100 % / 99.2 % test accuracy).
        seed: seeds initialisation, batch order, dropout and augmentation.
        cache_dir: default ``~/.cache/kacfast/classifiers``; ``False`` disables caching.
        arch: ``"cnn"`` or ``"strided"`` (:class:`Classifier`); the strided net caches under
            ``<dataset>-strided-<seed>``.
        threads: CPU threads while training (default 1: a model this small gains little from more,
            loses a lot on a shared machine, and one thread makes the weights reproducible across
            machines with the same CPU kernels); None keeps torch's setting.
        device: where to train (the returned model is on the CPU).
        retrain: ignore the shipped judge and an existing cache entry (the new judge overwrites
            the cache entry, but later calls without ``retrain`` still return the shipped one).
        **data_kwargs: passed to ``load_dataset`` (e.g. ``root=...``, ``image_size=...``).

    Returns:
        The classifier in eval mode; ``model.meta`` holds ``test_accuracy`` and ``train_seconds``.
    """
    info = _data.dataset_info(dataset_name, **{k: v for k, v in data_kwargs.items()
                                               if k in ("image_size", "channels")})
    if info["kind"] == "points":
        raise ValueError(f"{dataset_name} is a 2-D point set: use energy_distance / sliced_w2 / "
                         "mode_coverage, not a classifier.")
    steps = int(steps if steps is not None else info["classifier_steps"])
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    settings = {"dataset": dataset_name, "seed": int(seed), "steps": steps, "batch_size": batch_size,
                "lr": lr, "width": width, "feature_dim": feature_dim, "arch_version": _ARCH_VERSION,
                "arch": arch,
                "data_kwargs": {k: (list(v) if isinstance(v, tuple) else v)
                                for k, v in data_kwargs.items() if k != "root"}}
    path = None if cache_dir is False else _cache_path(dataset_name, seed, cache_dir, arch)
    if not retrain:
        model = _load_if_settings_match(_cache_path(dataset_name, seed, SHIPPED_JUDGES_DIR, arch),
                                        settings, shipped=True)
        if model is None and path is not None:
            model = _load_if_settings_match(path, settings)
        if model is not None:
            return model

    x, y = _data.load_dataset(dataset_name, "train", seed=0, **data_kwargs)
    x_test, y_test = _data.load_dataset(dataset_name, "test", seed=0, **data_kwargs)
    num_classes = max(int(info["num_classes"]), int(y.max()) + 1)

    used_threads = torch.get_num_threads() if threads is None else int(threads)
    start = time.perf_counter()
    with _num_threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Classifier(tuple(x.shape[1:]), num_classes, width, feature_dim, arch=arch).to(device)
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


@dataclass(frozen=True)
class JudgeSpec:
    """How one judge is trained: architecture, seed (initialisation, batch order, augmentation)
    and learning rate; everything else is :func:`train_classifier`'s default."""
    arch: str
    seed: int
    lr: float


#: The judges of every quality report: no shared weights, data order or architecture.
JUDGES = {"cnn": JudgeSpec(arch="cnn", seed=0, lr=2e-3),
          "strided": JudgeSpec(arch="strided", seed=1, lr=1e-3)}


def load_judges(dataset_name: str, names=None, *, steps: int | None = None,
                cache_dir: str | os.PathLike | None = None, **data_kwargs) -> dict[str, Classifier]:
    """Load the shipped judges ``names`` (default: all of :data:`JUDGES`) of an image dataset, or
    train (or load from the cache) those not shipped; returns {name: classifier in eval mode}.
    Each judge sees the dataset at its own resolution: a model trained at 16x16 is judged at 16x16."""
    names = list(JUDGES) if names is None else list(names)
    unknown = [n for n in names if n not in JUDGES]
    if unknown or not names:
        raise ValueError(f"unknown judges {unknown}; choose from {', '.join(JUDGES)}.")
    return {n: train_classifier(dataset_name, steps, JUDGES[n].seed, cache_dir, lr=JUDGES[n].lr,
                                arch=JUDGES[n].arch, **data_kwargs) for n in names}
