"""Writing sample sets to disk chunk by chunk: peak memory independent of their size, and atomic
(a run killed half way leaves no file under the final name).

Formats, by the output's extension:
    .npz  `arr_0`: (N, H, W, C) uint8 images, round((x + 1) * 127.5) (the layout ADM's and EDM's
          FID tools read), or (N, D) float32 for non-image samples; `labels`: (N,) int64 when
          the samples are class-conditional.
    .npy  (N, *shape) float32 in [-1, 1] (a memory-mapped file filled in place).
    .png  one grid of all N images (held in memory: for looking at, not for large N).
"""
from __future__ import annotations

import os
import zipfile

import numpy as np
import torch

from kacfast.checkpoints import move_into_place
from kacfast.images import make_grid, save_png, to_uint8

__all__ = ["SampleWriter", "FORMATS"]

FORMATS = (".npz", ".npy", ".png")


class SampleWriter:
    """`with SampleWriter(path, n, sample_shape) as w: w.write(chunk, labels)` for chunks that add
    up to n samples in order. The file appears under `path` only when all n were written.

    Args:
        path: output file; its extension picks the format (FORMATS).
        n: number of samples that will be written (>= 1).
        sample_shape: per-sample shape, e.g. (1, 16, 16) or (2,).
        nrow: images per grid row (.png).
    """

    def __init__(self, path: str, n: int, sample_shape, *, nrow: int = 10):
        self.ext = os.path.splitext(path)[1].lower()
        if self.ext not in FORMATS:
            raise ValueError(f"the output must end in {', '.join(FORMATS)}, got {path!r}.")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"the number of samples must be an int >= 1, got {n!r}.")
        if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
            raise ValueError(f"nrow (images per grid row) must be an int >= 1, got {nrow!r}.")
        self.images = len(sample_shape) == 3
        if self.ext == ".png" and not self.images:
            raise ValueError("PNG output needs image samples (C, H, W); use .npz or .npy for "
                             f"samples of shape {tuple(sample_shape)}.")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"the output folder {folder} does not exist.")
        self.path, self.n, self.shape, self.nrow = path, n, tuple(sample_shape), nrow
        self.tmp = os.path.join(folder, f".{os.path.basename(path)}.partial-{os.getpid()}")
        self.written = 0
        self._labels: list[np.ndarray] = []
        self._pngs: list[torch.Tensor] = []

    def __enter__(self) -> "SampleWriter":
        if self.ext == ".npy":
            self._array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32,
                                                    shape=(self.n,) + self.shape)
        elif self.ext == ".npz":
            if self.images:
                c, h, w = self.shape
                dtype, shape = np.uint8, (self.n, h, w, c)
            else:
                dtype, shape = np.float32, (self.n,) + self.shape
            self._zip = zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED, allowZip64=True)
            self._member = self._zip.open("arr_0.npy", "w", force_zip64=True)
            np.lib.format.write_array_header_2_0(self._member, {
                "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                "shape": shape})
        return self

    def write(self, samples: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Append samples (k, *sample_shape) in [-1, 1] and their labels (k,) or None."""
        k = samples.shape[0]
        if tuple(samples.shape[1:]) != self.shape or self.written + k > self.n:
            raise ValueError(f"expected up to {self.n - self.written} samples of shape "
                             f"{self.shape}, got {tuple(samples.shape)}.")
        if labels is not None:
            if labels.shape != (k,):
                raise ValueError(f"expected {k} labels for {k} samples, got shape "
                                 f"{tuple(labels.shape)}.")
            self._labels.append(labels.detach().cpu().numpy().astype(np.int64))
        if self.ext == ".npy":
            self._array[self.written:self.written + k] = samples.detach().float().cpu().numpy()
        elif self.ext == ".npz":
            block = to_uint8(samples) if self.images else samples.detach().float().cpu().numpy()
            self._member.write(np.ascontiguousarray(block).tobytes())
        else:
            self._pngs.append(samples.detach().cpu())
        self.written += k

    def __exit__(self, kind, error, trace) -> None:
        complete = kind is None and self.written == self.n
        try:
            if self.ext == ".npy":
                self._array.flush()
                del self._array
            elif self.ext == ".npz":
                self._member.close()
                if complete and self._labels:
                    with self._zip.open("labels.npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, np.concatenate(self._labels))
                self._zip.close()
            elif complete:
                save_png(make_grid(torch.cat(self._pngs), nrow=self.nrow), self.tmp)
            if complete:
                move_into_place(self.tmp, self.path)
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)
        if kind is None and not complete:
            raise ValueError(f"{self.written} of {self.n} samples were written; {self.path} "
                             "was not created.")
