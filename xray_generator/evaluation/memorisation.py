"""Memorisation: does a generated image copy one of the training images?

Each generated image is compared with every training image by Pearson correlation of their
downsampled pixels, and its best match is kept. Downsampling to 64 × 64 removes the fine noise
in which a copy would differ from its source while keeping the anatomy that makes one patient's
radiograph different from another's.

The correlation of a generated image with its nearest training image means little alone: real
chest radiographs all look alike. Run `nearest_training_images` with held-out real images in
place of generated ones to get the reference distribution, and read the rate against it.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# Images per downsampling batch: 256 images of 512 × 512 float32 are 256 MB.
_IMAGES_PER_BATCH = 256


def _downsample(images: Sequence[np.ndarray], size: int, name: str) -> np.ndarray:
    vectors = np.empty((len(images), size * size), dtype=np.float32)
    for start in range(0, len(images), _IMAGES_PER_BATCH):
        batch = [np.asarray(images[i]) for i in range(start, min(start + _IMAGES_PER_BATCH, len(images)))]
        for offset, image in enumerate(batch):
            if image.ndim != 2:
                raise ValueError(f"{name}[{start + offset}] must be a 2-D (H, W) image, got shape {image.shape}")
            if not np.all(np.isfinite(image)):
                raise ValueError(f"{name}[{start + offset}] contains NaN or inf")
        same_shape = len({image.shape for image in batch}) == 1
        groups = [batch] if same_shape else [[image] for image in batch]
        row = start
        for group in groups:
            stack = torch.from_numpy(np.stack(group).astype(np.float32))[:, None]
            # Area averaging: every source pixel counts once, so no detail aliases into the result.
            small = F.adaptive_avg_pool2d(stack, (size, size))
            vectors[row:row + len(group)] = small.reshape(len(group), -1).numpy()
            row += len(group)
    return vectors


def correlation_vectors(images: Sequence[np.ndarray], size: int = 64) -> np.ndarray:
    """Downsampled, centred, unit-length pixel vectors whose dot products are Pearson correlations.

    Parameters
    ----------
    images : sequence of (H, W) ndarray
        An (N, H, W) array or a list of 2-D arrays (shapes may differ).
    size : int, optional
        Side of the square each image is area-averaged to (default 64).

    Returns
    -------
    vectors : (N, size * size) ndarray of float32
        Row ``i`` is image ``i`` minus its mean, divided by its norm. A constant image becomes
        a zero row: it has no defined correlation and is reported as correlating 0 with all.

    Notes
    -----
    Computing the training vectors once and passing them to `nearest_by_correlation` for
    each model saves downsampling the training set again.
    """
    if int(size) != size or size < 2:
        raise ValueError(f"size must be an integer of at least 2, got {size}")
    if len(images) == 0:
        raise ValueError("images is empty")
    vectors = _downsample(images, int(size), "images").astype(np.float64)
    vectors -= vectors.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 1e-12)
    return vectors.astype(np.float32)


def nearest_by_correlation(
    query_vectors: np.ndarray, reference_vectors: np.ndarray, chunk_size: int = 2048
) -> dict:
    """For each query vector, the reference vector with the highest dot product.

    Parameters
    ----------
    query_vectors : (M, D) ndarray
        Output of `correlation_vectors` for the generated images.
    reference_vectors : (N, D) ndarray
        Output of `correlation_vectors` for the training images.
    chunk_size : int, optional
        Reference rows per matrix multiply (default 2048), bounding memory at M × chunk_size.

    Returns
    -------
    result : dict
        ``index`` ((M,) int64, row of the best reference) and ``correlation`` ((M,) float32).
    """
    query = np.asarray(query_vectors, dtype=np.float32)
    reference = np.asarray(reference_vectors, dtype=np.float32)
    if query.ndim != 2 or reference.ndim != 2 or query.shape[1] != reference.shape[1]:
        raise ValueError(
            f"need 2-D vectors of equal width, got query {query.shape} and reference {reference.shape}"
        )
    if query.shape[0] == 0 or reference.shape[0] == 0:
        raise ValueError(f"need at least one query and one reference vector, got {query.shape[0]} and {reference.shape[0]}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    best_correlation = np.full(query.shape[0], -np.inf, dtype=np.float32)
    best_index = np.zeros(query.shape[0], dtype=np.int64)
    for start in range(0, reference.shape[0], chunk_size):
        similarity = query @ reference[start:start + chunk_size].T
        chunk_best = similarity.argmax(axis=1)
        chunk_correlation = similarity[np.arange(query.shape[0]), chunk_best]
        better = chunk_correlation > best_correlation
        best_correlation[better] = chunk_correlation[better]
        best_index[better] = chunk_best[better] + start
    # float32 rounding can put an exact copy a hair above 1.
    return {"index": best_index, "correlation": np.clip(best_correlation, -1.0, 1.0)}


def nearest_training_images(
    generated: Sequence[np.ndarray], training: Sequence[np.ndarray], size: int = 64, chunk_size: int = 2048
) -> dict:
    """Nearest training image of every generated image by Pearson correlation of pixels.

    Parameters
    ----------
    generated : sequence of (H, W) ndarray
        Generated images, an (M, H, W) array or a list.
    training : sequence of (H, W) ndarray
        The model's training images, an (N, H, W) array or a list.
    size : int, optional
        Side of the downsampled comparison grid (default 64).
    chunk_size : int, optional
        Training images per matrix multiply (default 2048).

    Returns
    -------
    result : dict
        ``index`` ((M,) int64, position in `training`), ``correlation`` ((M,) float32, in
        [-1, 1]), ``size``, ``n_generated``, ``n_training``.

    Notes
    -----
    Pixel correlation finds copies in register with their source, including copies with
    noise, contrast or brightness changes. It misses shifted, flipped or cropped copies.
    5,000 training × 1,000 generated images take a few seconds, most of it downsampling.
    """
    result = nearest_by_correlation(
        correlation_vectors(generated, size), correlation_vectors(training, size), chunk_size
    )
    result.update(size=int(size), n_generated=len(generated), n_training=len(training))
    return result


def memorisation_rate(correlations: np.ndarray, threshold: float = 0.95) -> dict:
    """Share of generated images whose nearest training image correlates at least `threshold`.

    Parameters
    ----------
    correlations : (M,) ndarray
        Nearest-neighbour correlations from `nearest_training_images`.
    threshold : float, optional
        Correlation at or above which an image counts as a copy (default 0.95).

    Returns
    -------
    result : dict
        ``value`` (the rate), ``n_flagged``, ``n``, ``threshold``, and ``ci_low``, ``ci_high``,
        ``ci_level`` (0.95), ``ci_method``: a Wilson score interval, which unlike a bootstrap
        gives a non-zero upper bound when no image is flagged.

    References
    ----------
    .. [1] Wilson, E. B. (1927). Probable inference, the law of succession, and statistical
           inference. J. Am. Stat. Assoc. 22(158), 209-212.
    """
    values = np.asarray(correlations, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"correlations must be a non-empty 1-D array, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("correlations contain NaN or inf")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a correlation in [-1, 1], got {threshold}")
    n = values.size
    flagged = int(np.count_nonzero(values >= threshold))
    low, high = wilson_interval(flagged, n)
    return {
        "value": flagged / n,
        "n_flagged": flagged,
        "n": n,
        "threshold": float(threshold),
        "ci_low": low,
        "ci_high": high,
        "ci_level": 0.95,
        "ci_method": "Wilson score",
    }


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion `successes / n` (Wilson 1927)."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    rate = successes / n
    z = 1.959963984540054  # two-sided 95 % normal quantile
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half_width = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At 0 or n successes the bound is exactly 0 or 1; the formula leaves rounding residue.
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == n else min(1.0, centre + half_width)
    return low, high
