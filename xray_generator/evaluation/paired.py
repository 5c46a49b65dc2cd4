"""Paired metrics. Only meaningful where a true pair exists (a reconstruction and its input)."""
from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"paired metrics need equal shapes, got {a.shape} and {b.shape}")


def psnr(reference: np.ndarray, test: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB for float images in [0, data_range]."""
    _check_pair(reference, test)
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


def ssim(reference: np.ndarray, test: np.ndarray, data_range: float = 1.0) -> float:
    """Structural similarity (Gaussian-weighted, as in Wang et al. 2004) for 2-D float images."""
    _check_pair(reference, test)
    return float(
        structural_similarity(
            reference.astype(np.float64), test.astype(np.float64), data_range=data_range,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )
    )
