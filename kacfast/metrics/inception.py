"""Inception FID, opt-in: torch-fidelity's extractor from a local weights file, never downloaded."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from kacfast.metrics.classifier import _batched
from kacfast.metrics.distances import classifier_fd

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
