"""Frechet distance between feature sets, and an FID entry point that takes any feature extractor.

The embedded model is judged with a digits classifier's features ("digits-FID"); users with local Inception
weights pass their own extractor to :func:`fid` and get the usual FID.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from scipy import linalg

from brevitas_ldm.errors import BrevitasLDMError


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of an (N, D) feature matrix."""
    x = (features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor)
         else np.asarray(features, np.float64))
    if x.ndim != 2 or x.shape[0] < 2:
        raise BrevitasLDMError(f"Frechet distance needs an (N, D) feature matrix with N >= 2, got shape {x.shape}: "
                               f"generate more samples")
    if not np.isfinite(x).all():
        raise BrevitasLDMError("features contain NaN/Inf: the images fed to the feature extractor are not finite")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance_from_stats(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(cov_a + cov_b - 2 (cov_a cov_b)^{1/2}), with scipy's sqrtm."""
    diff = mu_a - mu_b
    with np.errstate(all="ignore"), warnings.catch_warnings():
        # Feature sets with few distinct images have singular covariances; sqrtm still returns the usable root.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        # Near-singular products (few samples): regularise both covariances slightly, as FID tools do.
        eps = np.eye(cov_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = np.real(covmean)
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def frechet_distance(features_a: np.ndarray | torch.Tensor, features_b: np.ndarray | torch.Tensor) -> float:
    """Frechet distance between two (N, D) feature sets (Gaussian fit of each)."""
    return frechet_distance_from_stats(*feature_statistics(features_a), *feature_statistics(features_b))


@torch.no_grad()
def extract_features(images: torch.Tensor, extractor: Callable[[torch.Tensor], torch.Tensor],
                     batch_size: int = 256) -> torch.Tensor:
    return torch.cat([extractor(chunk).flatten(1).double() for chunk in images.split(batch_size)])


def fid(images_a: torch.Tensor, images_b: torch.Tensor, extractor: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int = 256) -> float:
    """FID between two image sets under any feature extractor (e.g. a local Inception network)."""
    return frechet_distance(extract_features(images_a, extractor, batch_size),
                            extract_features(images_b, extractor, batch_size))
