"""Sample diversity by multi-scale structural similarity (MS-SSIM) between images.

High MS-SSIM between samples drawn for one prompt means the generator repeats itself (mode
collapse). The number only means something next to its reference: the MS-SSIM of random pairs
of real images carrying the same label (`random_pair_ms_ssim`), which is how alike two
different patients with that finding already are.
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np
from scipy.ndimage import correlate1d

from xray_generator.evaluation.fidelity import bootstrap_ci

# Wang, Simoncelli and Bovik (2003), table 1: exponents of scales 1 (finest) to 5 (coarsest).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# SSIM stabilising constants (Wang et al. 2004).
_K1, _K2 = 0.01, 0.03
# Pairs per vectorised block: 32 pairs of 256 × 256 float64 images keep each temporary near 16 MB.
_PAIRS_PER_BLOCK = 32


def _check_image(image: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) image, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf")
    if array.min() < 0.0 or array.max() > 1.0:
        raise ValueError(
            f"{name} has values in [{array.min():.4g}, {array.max():.4g}]; expected [0, 1] (clip generator output first)"
        )
    return array


def _check_window(shape: tuple[int, int], win_size: int, n_scales: int) -> None:
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size must be a positive odd integer, got {win_size}")
    coarsest = min(shape) // 2 ** (n_scales - 1)
    if coarsest < win_size:
        largest = coarsest if coarsest % 2 else coarsest - 1
        raise ValueError(
            f"images of shape {shape} are {coarsest} pixels across at the coarsest of {n_scales} scales, "
            f"smaller than win_size={win_size}; use win_size <= {max(largest, 1)} or images of at least "
            f"{win_size * 2 ** (n_scales - 1)} pixels"
        )


def _gaussian_window(win_size: int, sigma: float) -> np.ndarray:
    offsets = np.arange(win_size) - (win_size - 1) / 2.0
    window = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return window / window.sum()


def _filter_valid(stack: np.ndarray, window: np.ndarray) -> np.ndarray:
    # Keep only positions where the whole window lies inside the image, as Wang et al. do;
    # the padding mode then never touches the result.
    radius = len(window) // 2
    filtered = correlate1d(correlate1d(stack, window, axis=1, mode="nearest"), window, axis=2, mode="nearest")
    return filtered[:, radius:stack.shape[1] - radius, radius:stack.shape[2] - radius]


def _halve(stack: np.ndarray) -> np.ndarray:
    # 2 × 2 box filter then decimation, as in the reference MATLAB code; an odd last row or
    # column is dropped.
    height, width = stack.shape[1] // 2 * 2, stack.shape[2] // 2 * 2
    s = stack[:, :height, :width]
    return 0.25 * (s[:, 0::2, 0::2] + s[:, 1::2, 0::2] + s[:, 0::2, 1::2] + s[:, 1::2, 1::2])


def _ms_ssim_stack(
    a: np.ndarray, b: np.ndarray, data_range: float, win_size: int, sigma: float, weights: Sequence[float]
) -> np.ndarray:
    """MS-SSIM of each pair (a[i], b[i]) of an (N, H, W) float64 stack; no validation."""
    window = _gaussian_window(win_size, sigma)
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    result = np.ones(a.shape[0])
    for scale, weight in enumerate(weights):
        mu_a = _filter_valid(a, window)
        mu_b = _filter_valid(b, window)
        var_a = _filter_valid(a * a, window) - mu_a * mu_a
        var_b = _filter_valid(b * b, window) - mu_b * mu_b
        cov_ab = _filter_valid(a * b, window) - mu_a * mu_b
        contrast_structure = (2.0 * cov_ab + c2) / (var_a + var_b + c2)
        if scale < len(weights) - 1:
            term = contrast_structure.mean(axis=(1, 2))
            a, b = _halve(a), _halve(b)
        else:
            luminance = (2.0 * mu_a * mu_b + c1) / (mu_a * mu_a + mu_b * mu_b + c1)
            term = (luminance * contrast_structure).mean(axis=(1, 2))
        # A negative contrast-structure term has no real fractional power; clamping at 0, as
        # the TensorFlow and pytorch-msssim implementations do, scores anti-correlated pairs 0.
        result *= np.maximum(term, 0.0) ** weight
    return result


def ms_ssim(
    image_a: np.ndarray,
    image_b: np.ndarray,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
) -> float:
    """Multi-scale structural similarity between two 2-D images.

    Parameters
    ----------
    image_a, image_b : (H, W) ndarray
        Float images in [0, 1] of equal shape.
    data_range : float, optional
        Dynamic range of the pixel values (default 1.0).
    win_size : int, optional
        Side of the Gaussian window, odd (default 11, as in Wang et al.). The window must fit
        the coarsest scale, which is ``min(H, W) // 16`` pixels across with five scales: a
        256 × 256 image is 16 × 16 there, so the standard 11-pixel window fits and leaves a
        6 × 6 map of local SSIM values. Images smaller than 176 pixels need a smaller window,
        and MS-SSIM values computed with different windows are not comparable.
    sigma : float, optional
        Standard deviation of the Gaussian window in pixels (default 1.5).
    weights : sequence of float, optional
        Exponent of each scale, finest first (default `MS_SSIM_WEIGHTS`); its length sets
        the number of scales.

    Returns
    -------
    similarity : float
        MS-SSIM in [0, 1]; 1 for identical images.

    Notes
    -----
    Each scale filters with the window over "valid" positions only, and the next scale is a
    2 × 2 average followed by decimation. Contrast-structure terms of the four finer scales and
    the full SSIM of the coarsest scale are raised to their weights and multiplied.

    References
    ----------
    .. [1] Wang, Z., Simoncelli, E. P. and Bovik, A. C. (2003). Multiscale structural similarity
           for image quality assessment. Asilomar Conference on Signals, Systems and Computers.
    """
    a = _check_image(image_a, "image_a")
    b = _check_image(image_b, "image_b")
    if a.shape != b.shape:
        raise ValueError(f"image_a and image_b must have equal shapes, got {a.shape} and {b.shape}")
    _check_window(a.shape, win_size, len(weights))
    return float(_ms_ssim_stack(a[None], b[None], data_range, win_size, sigma, weights)[0])


def _ms_ssim_of_pairs(
    images: Sequence[np.ndarray], pairs: Sequence[tuple[int, int]], win_size: int, where: str
) -> np.ndarray:
    """MS-SSIM of each (i, j) in `pairs`, indexing `images`, in vectorised blocks."""
    values = np.empty(len(pairs))
    checked: dict[int, np.ndarray] = {}

    def image(index: int) -> np.ndarray:
        if index not in checked:
            checked[index] = _check_image(images[index], f"{where}[{index}]")
        return checked[index]

    for start in range(0, len(pairs), _PAIRS_PER_BLOCK):
        block = pairs[start:start + _PAIRS_PER_BLOCK]
        firsts = [image(i) for i, _ in block]
        seconds = [image(j) for _, j in block]
        shapes = {x.shape for x in firsts + seconds}
        if len(shapes) != 1:
            raise ValueError(f"{where} holds images of different shapes {sorted(shapes)}; MS-SSIM needs equal shapes")
        _check_window(firsts[0].shape, win_size, len(MS_SSIM_WEIGHTS))
        values[start:start + len(block)] = _ms_ssim_stack(
            np.stack(firsts), np.stack(seconds), 1.0, win_size, 1.5, MS_SSIM_WEIGHTS
        )
        # Keep memory bounded for large image sets: drop images no later pair needs.
        needed = {index for pair in pairs[start + _PAIRS_PER_BLOCK:start + 2 * _PAIRS_PER_BLOCK] for index in pair}
        for index in list(checked):
            if index not in needed:
                del checked[index]
    return values


def _interval(values: np.ndarray, n_boot: int, seed: int, ci: float) -> dict:
    if len(values) < 2:
        return {"ci_low": None, "ci_high": None, "ci_level": float(ci), "ci_method": None}
    result = bootstrap_ci(np.mean, [values], n_boot=n_boot, seed=seed, ci=ci)
    return {key: result[key] for key in ("ci_low", "ci_high", "ci_level", "ci_method", "n_boot")}


def intra_prompt_ms_ssim(
    groups: Sequence[Sequence[np.ndarray]],
    win_size: int = 11,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict:
    """Mean MS-SSIM between samples generated for the same prompt.

    Parameters
    ----------
    groups : sequence of sequences of (H, W) ndarray
        One entry per prompt, each holding at least two samples (a (k, H, W) array or a list of
        2-D arrays) in [0, 1].
    win_size : int, optional
        MS-SSIM window (default 11, see `ms_ssim`).
    n_boot, seed, ci
        Bootstrap over prompts for the interval of the mean (see `bootstrap_ci`).

    Returns
    -------
    result : dict
        ``value`` (mean over prompts of each prompt's mean over all its ``k (k - 1) / 2``
        pairs), ``std`` (spread of the per-prompt means), ``per_group`` (list of per-prompt
        means), ``ci_low``, ``ci_high`` (None with one prompt), ``ci_level``, ``ci_method``,
        ``n_groups``, ``n_pairs``.

    Notes
    -----
    Higher means less diverse: 1 is a generator that ignores its seed. Every prompt weighs
    the same whatever its number of samples.
    """
    if len(groups) == 0:
        raise ValueError("groups is empty; pass one sequence of samples per prompt")
    group_means = np.empty(len(groups))
    n_pairs = 0
    for g, samples in enumerate(groups):
        if len(samples) < 2:
            raise ValueError(f"groups[{g}] holds {len(samples)} sample(s); a prompt needs at least 2 to form a pair")
        pairs = list(combinations(range(len(samples)), 2))
        group_means[g] = _ms_ssim_of_pairs(samples, pairs, win_size, f"groups[{g}]").mean()
        n_pairs += len(pairs)
    result = {
        "value": float(group_means.mean()),
        "std": float(group_means.std(ddof=1)) if len(groups) > 1 else 0.0,
        "per_group": group_means.tolist(),
        "n_groups": len(groups),
        "n_pairs": n_pairs,
        "win_size": int(win_size),
    }
    result.update(_interval(group_means, n_boot, seed, ci))
    return result


def _distinct_random_pairs(n_images: int, n_pairs: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    total = n_images * (n_images - 1) // 2
    if n_pairs >= total:
        return list(combinations(range(n_images), 2))
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < n_pairs:
        needed = n_pairs - len(chosen)
        first = rng.integers(0, n_images, size=needed)
        second = rng.integers(0, n_images - 1, size=needed)
        second = second + (second >= first)  # uniform over the other images, never i itself
        for i, j in zip(first.tolist(), second.tolist()):
            if len(chosen) < n_pairs:
                chosen.add((min(i, j), max(i, j)))
    return sorted(chosen)


def random_pair_ms_ssim(
    images: Sequence[np.ndarray],
    n_pairs: int = 1000,
    seed: int = 0,
    win_size: int = 11,
    n_boot: int = 1000,
    ci: float = 0.95,
) -> dict:
    """Mean MS-SSIM of random distinct pairs from one image set: the reference for diversity.

    Parameters
    ----------
    images : sequence of (H, W) ndarray
        E.g. real images sharing one label, in [0, 1], equal shapes; an (N, H, W) array or a
        list. Images are read only when a pair needs them.
    n_pairs : int, optional
        Number of distinct unordered pairs ``(i, j), i != j`` (default 1000). If the set has
        fewer pairs, all of them are used.
    seed : int, optional
        Seed of the pair draw and of the bootstrap (default 0).
    win_size : int, optional
        MS-SSIM window (default 11, see `ms_ssim`).
    n_boot, ci
        Bootstrap over pairs for the interval of the mean (see `bootstrap_ci`).

    Returns
    -------
    result : dict
        ``value`` (mean MS-SSIM), ``std`` (spread over pairs), ``ci_low``, ``ci_high``,
        ``ci_level``, ``ci_method``, ``n_images``, ``n_pairs`` (used), ``seed``.

    Notes
    -----
    The interval resamples pairs as if independent. Pairs share images, so when ``n_pairs``
    is large next to the number of images the interval is too narrow; it is meant for the
    usual case of a few hundred pairs drawn from thousands of images.
    """
    if int(n_pairs) != n_pairs or n_pairs < 1:
        raise ValueError(f"n_pairs must be a positive integer, got {n_pairs}")
    if len(images) < 2:
        raise ValueError(f"need at least 2 images to form a pair, got {len(images)}")
    pairs = _distinct_random_pairs(len(images), int(n_pairs), np.random.default_rng(seed))
    values = _ms_ssim_of_pairs(images, pairs, win_size, "images")
    result = {
        "value": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "n_images": len(images),
        "n_pairs": len(pairs),
        "seed": int(seed),
        "win_size": int(win_size),
    }
    result.update(_interval(values, n_boot, seed, ci))
    return result
