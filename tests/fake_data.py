"""Test helper: a tiny CIFAR-10 in the python-batches layout (no download)."""
import pickle

import numpy as np


def fake_cifar(root, per_batch=4):
    """Write root/cifar-10-batches-py with `per_batch` random images in each of the six batches."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        batch = {"batch_label": name, "labels": [(k + j) % 10 for j in range(per_batch)],
                 "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "filenames": [f"{name}_{j}.png" for j in range(per_batch)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    return folder
