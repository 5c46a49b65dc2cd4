"""Per-image descriptors: the one place where brightness, spread, contrast, entropy and sharpness are defined.

Every function takes a library image, a float array of shape (H, W) with values in [0, 1], and returns
plain Python numbers or numpy arrays. The enhancement comparison (``post_process.compare_presets``) and the
evaluation code both read these numbers, so a definition changes here or nowhere.

References
----------
Peli, E. (1990). Contrast in complex images. JOSA A 7(10), 2032-2040 (RMS contrast).
Pech-Pacheco, J. L. et al. (2000). Diatom autofocusing in brightfield microscopy: a comparative study.
ICPR 2000 (variance of the Laplacian as a focus/sharpness measure).
"""
from __future__ import annotations

import cv2
import numpy as np

# The order in which tables and dashboards list the descriptors.
DESCRIPTOR_NAMES = ("mean", "std", "contrast_ratio", "entropy", "sharpness")

# 256 bins: entropy then reads in the familiar units of an 8-bit image (0 to 8 bits).
ENTROPY_BINS = 256


def _check_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2 or arr.size == 0 or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            "descriptors expect a non-empty float image of shape (H, W) with values in [0, 1], "
            f"got dtype {arr.dtype} and shape {arr.shape}; convert at the edge first "
            "(post_process.validate_image or xray_generator.io.to_float_gray)"
        )
    return arr.astype(np.float32, copy=False)


def intensity_histogram(image: np.ndarray, bins: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of intensities over [0, 1] in equal-width bins.

    Parameters
    ----------
    image : (H, W) float array in [0, 1]
    bins : number of equal-width bins covering [0, 1]; default 256.

    Returns
    -------
    counts : (bins,) int64 pixel counts. The last bin includes 1.0, as in ``numpy.histogram``;
        values outside [0, 1] are counted in the end bins.
    bin_edges : (bins + 1,) float64 edges from 0 to 1.
    """
    arr = _check_image(image)
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    # Quantising and counting is several times faster than numpy.histogram on megapixel images.
    index = np.clip(arr * np.float32(bins), 0, bins - 1).astype(np.intp)
    counts = np.bincount(index.ravel(), minlength=bins).astype(np.int64)
    return counts, np.linspace(0.0, 1.0, bins + 1)


def _mean_std(arr: np.ndarray) -> tuple[float, float]:
    mean, std = cv2.meanStdDev(arr)  # accumulates in float64
    return float(mean[0, 0]), float(std[0, 0])


def _rms_contrast(mean: float, std: float) -> float:
    return std / mean if mean > 0 else 0.0


def _entropy_from_counts(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 of a flat image into 0.0


def shannon_entropy(image: np.ndarray, bins: int = ENTROPY_BINS) -> float:
    """Shannon entropy of the intensity histogram, in bits.

    0 for a flat image; at most log2(bins) (8 bits for 256 bins) when every bin is equally full.
    Higher entropy means the grey levels are used more evenly, which is what equalisation aims for.
    """
    counts, _ = intensity_histogram(image, bins)
    return _entropy_from_counts(counts)


def contrast_ratio(image: np.ndarray) -> float:
    """RMS contrast ratio: the standard deviation of the intensities divided by their mean (Peli 1990).

    Unitless and independent of overall brightness: doubling every intensity leaves it unchanged.
    0 for a flat image and, by convention, for an all-black one. Unlike a max/min ratio it does not
    saturate when a radiograph has black borders.
    """
    return _rms_contrast(*_mean_std(_check_image(image)))


def laplacian_variance(image: np.ndarray) -> float:
    """Sharpness as the variance of the Laplacian (Pech-Pacheco et al. 2000).

    The Laplacian uses the 4-neighbour 3x3 kernel with reflected borders and is taken on the [0, 1]
    image, so values are 255**2 = 65025 times smaller than the same measure computed on 8-bit pixel
    values. Larger means more fine detail: edges, lung markings, and also noise.
    """
    arr = _check_image(image)
    laplacian = cv2.Laplacian(arr, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT_101)
    return _mean_std(laplacian)[1] ** 2


def describe_image(image: np.ndarray) -> dict[str, float]:
    """All descriptors of one image, keyed in ``DESCRIPTOR_NAMES`` order.

    Returns
    -------
    dict with
        ``mean``: mean intensity in [0, 1] (overall brightness);
        ``std``: standard deviation of the intensities (global contrast);
        ``contrast_ratio``: std / mean, see ``contrast_ratio``;
        ``entropy``: bits, see ``shannon_entropy``;
        ``sharpness``: variance of the Laplacian, see ``laplacian_variance``.
    """
    arr = _check_image(image)
    mean, std = _mean_std(arr)
    counts, _ = intensity_histogram(arr, ENTROPY_BINS)
    return {
        "mean": mean,
        "std": std,
        "contrast_ratio": _rms_contrast(mean, std),
        "entropy": _entropy_from_counts(counts),
        "sharpness": laplacian_variance(arr),
    }
