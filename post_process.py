"""Radiological enhancement of chest X-rays: pure functions on arrays, presets as data, and a CLI.

Research use only: these are display enhancements for synthetic and public research images, not a
diagnostic tool.

Every operation takes a float32 image of shape (H, W) with values in [0, 1] and returns a new one;
nothing is changed in place and nothing is remembered between calls. A preset is an ordered list of
``(operation, parameters)`` pairs, so presets can be stored as JSON, compared side by side and edited
without touching code. Inputs in other forms (uint8, uint16, RGB/RGBA, float64) are converted once,
by ``validate_image``, at the boundary: ``apply_preset`` and ``compare_presets``.

Command line (run ``python post_process.py --help``)::

    python post_process.py IN.png --preset "High Contrast" -o OUT.png   # 16-bit in -> 16-bit out
    python post_process.py IN.png --all -o grid.png                     # labelled grid of every preset
    python post_process.py --preset Balanced --save-preset mine.json    # a starting point to edit
    python post_process.py IN.png --preset-file mine.json --preset Mine -o OUT.png
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import cv2
import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from xray_generator.evaluation.descriptors import describe_image, intensity_histogram
from xray_generator.io import MAX_PIXELS, ImageLoadError, atomic_write

__all__ = [
    "BUILTIN_PRESETS",
    "apply_presets",
    "OPERATIONS",
    "Operation",
    "PresetError",
    "PresetResult",
    "ValidatedImage",
    "adjust_gamma",
    "apply_preset",
    "apply_window",
    "clahe",
    "compare_presets",
    "comparison_grid",
    "denoise",
    "equalize_histogram",
    "load_presets",
    "main",
    "median_filter",
    "preset_to_json",
    "save_presets",
    "unsharp_mask",
    "validate_image",
    "validate_preset",
    "vignette",
]

# ---------------------------------------------------------------------------------------------------
# The boundary: one function turns whatever the caller has into the library's image format.
# ---------------------------------------------------------------------------------------------------

# ITU-R BT.601 luma weights, the same ones xray_generator.io uses for RGB radiographs.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_UINT8_TO_FLOAT = (np.arange(256) / 255.0).astype(np.float32)


class ValidatedImage(NamedTuple):
    """An image ready for the operations, and the precision it carries."""

    pixels: np.ndarray
    """float32 (H, W), values in [0, 1]."""
    bit_depth: int
    """8 or 16: the grey-level precision of the content, used by the operations that quantise."""


def validate_image(image: np.ndarray) -> ValidatedImage:
    """Check an input image and convert it to float32 (H, W) in [0, 1]; the pipeline's only entry check.

    Accepted
    --------
    * dtype uint8 (divided by 255), uint16 (divided by 65535, keeping its 16-bit precision in float32),
      or floating point with finite values in [0, 1];
    * shape (H, W), (H, W, 1), or colour (H, W, 3) RGB / (H, W, 4) RGBA, converted to grey with the
      BT.601 luma weights (alpha is ignored);
    * any size from 1 x 1 up to ``xray_generator.io.MAX_PIXELS`` (8192 x 8192) pixels.

    Returns
    -------
    ValidatedImage(pixels, bit_depth)
        ``bit_depth`` is 16 for uint16 input with genuinely 16-bit content, and 8 otherwise (uint8,
        floats, and uint16 whose values are all multiples of 257, i.e. 8-bit data stored as 16-bit).
        Floats count as 8-bit because library floats come from 8-bit files or generators; pass
        ``bit_depth=16`` to ``apply_preset`` to override.

    Raises
    ------
    ValueError
        For empty arrays, 3-D volumes such as (10, 64, 64), other dtypes (int32, bool, complex ...),
        NaN or infinite values, floats outside [0, 1] and images over the size limit; the message
        says what was expected.
    """
    arr = np.asarray(image)
    if arr.size == 0:
        raise ValueError(f"image is empty (shape {arr.shape})")
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        channels = arr.shape[2]
    elif arr.ndim == 2:
        channels = 0
    elif arr.ndim == 3:
        raise ValueError(
            f"expected a 2-D image (H, W) or a colour image (H, W, 3|4), got shape {arr.shape}; "
            "this looks like a 3-D volume: pass one slice at a time"
        )
    else:
        raise ValueError(f"expected a 2-D image (H, W) or a colour image (H, W, 3|4), got shape {arr.shape}")
    height, width = arr.shape[:2]
    if height * width > MAX_PIXELS:
        raise ValueError(f"image of {height} x {width} pixels is larger than the limit of {MAX_PIXELS} pixels")

    if arr.dtype == np.uint8:
        scale, bit_depth = 255.0, 8
    elif arr.dtype == np.uint16:
        scale = 65535.0
        # 8-bit data saved as 16-bit (k * 257) holds nothing the faster 8-bit path would lose.
        bit_depth = 8 if not np.any(arr % 257) else 16
    elif np.issubdtype(arr.dtype, np.floating):
        scale, bit_depth = 1.0, 8
        if not np.isfinite(arr).all():
            raise ValueError("image contains NaN or infinite values")
        low, high = float(arr.min()), float(arr.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"float images must have values in [0, 1], got range [{low:.6g}, {high:.6g}]; "
                "rescale first (for example divide 8-bit values by 255)"
            )
    else:
        raise ValueError(f"unsupported dtype {arr.dtype}: expected uint8, uint16 or float in [0, 1]")

    if channels in (3, 4):
        gray = arr[..., :3].astype(np.float32) @ _LUMA_WEIGHTS
        gray *= np.float32(1.0 / scale)
        np.clip(gray, 0.0, 1.0, out=gray)  # luma weights sum to 1 only up to rounding
    elif channels == 0 and arr.dtype == np.uint8:
        gray = cv2.LUT(arr, _UINT8_TO_FLOAT)  # one pass instead of convert-then-scale
    else:
        # astype copies, so the caller's array is never written through.
        gray = (arr[..., 0] if channels == 1 else arr).astype(np.float32)
        if scale != 1.0:
            gray *= np.float32(1.0 / scale)
    return ValidatedImage(np.ascontiguousarray(gray), bit_depth)


# ---------------------------------------------------------------------------------------------------
# Operations. Each takes float32 (H, W) in [0, 1] and returns a new float32 array in [0, 1].
# ---------------------------------------------------------------------------------------------------


def _check_bit_depth(bit_depth: int) -> None:
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")


def _to_uint(image: np.ndarray, bit_depth: int) -> np.ndarray:
    if bit_depth == 8:
        return cv2.convertScaleAbs(image, alpha=255.0)  # rounds and saturates in one pass
    return (image * np.float32(65535.0) + np.float32(0.5)).astype(np.uint16)


def _from_uint(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return cv2.LUT(image, _UINT8_TO_FLOAT)  # a table lookup is about twice as fast as the multiply
    return np.multiply(image, np.float32(1.0 / np.iinfo(image.dtype).max), dtype=np.float32)


def _clip_unit(image: np.ndarray) -> np.ndarray:
    """Clip float32 values to [0, 1] in place. OpenCV's thresholds are ~5x faster than np.clip here."""
    cv2.threshold(image, 1.0, 1.0, cv2.THRESH_TRUNC, dst=image)
    cv2.threshold(image, 0.0, 0.0, cv2.THRESH_TOZERO, dst=image)
    return image


def apply_window(image: np.ndarray, center: float = 0.5, width: float = 1.0) -> np.ndarray:
    """Window/level: choose which band of intensities fills the display, as on a PACS viewer.

    The window spans ``center - width / 2`` (mapped to black, 0) to ``center + width / 2`` (mapped to
    white, 1); intensities in between are stretched linearly and those outside are clipped. A narrow
    window raises contrast inside the band (for example the lung fields) at the cost of saturating
    everything else.

    Parameters
    ----------
    image : float32 (H, W) in [0, 1]
    center : window level as a fraction of the full intensity range; default 0.5.
    width : window width as a fraction of the full intensity range, > 0; default 1.0 (identity).
    """
    if not width > 0:
        raise ValueError(f"window width must be > 0, got {width!r}")
    lower = center - width / 2.0
    out = cv2.addWeighted(image, 1.0 / width, image, 0.0, -lower / width)  # one pass: (image - lower) / width
    return _clip_unit(out)


def clahe(
    image: np.ndarray, clip_limit: float = 2.0, tile_grid: tuple[int, int] = (8, 8), bit_depth: int = 8
) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (CLAHE; Zuiderveld 1994), as in OpenCV.

    Equalises each tile of the image separately and blends neighbouring tiles bilinearly, so faint
    structures (vessels behind the heart, the retrocardiac and subdiaphragmatic lung) gain contrast
    relative to their surroundings rather than to the whole film. The clip limit caps how steeply a
    tile's histogram may be stretched, which keeps quantum noise in flat regions from being amplified.

    Parameters
    ----------
    image : float32 (H, W) in [0, 1]
    clip_limit : cap on each of the 256 histogram bins as a multiple of the mean bin count, > 0;
        default 2.0. 1 means almost no enhancement, 2-4 is typical for radiographs.
    tile_grid : (rows, columns) of tiles; default (8, 8). Fewer, larger tiles give a gentler, more
        global result. The grid is reduced to the image size for images smaller than it.
    bit_depth : 8 or 16, the precision of the result; default 8. Both use OpenCV's 256-bin tile
        histograms and clipping, so they look the same. At 8 OpenCV's CLAHE runs on 8-bit pixels and
        the result has 256 grey levels. At 16 the tile mappings are interpolated between grey levels
        instead, so differences finer than 1/255 survive (about 4x slower).
    """
    _check_bit_depth(bit_depth)
    rows, columns = int(tile_grid[0]), int(tile_grid[1])
    if not clip_limit > 0 or rows < 1 or columns < 1:
        raise ValueError(f"need clip_limit > 0 and a tile grid of at least 1 x 1, got {clip_limit}, {tile_grid}")
    height, width = image.shape
    rows, columns = min(rows, height), min(columns, width)
    if bit_depth == 8:
        # OpenCV sizes are (width, height), i.e. (columns, rows).
        equaliser = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(columns, rows))
        return _from_uint(equaliser.apply(_to_uint(image, 8)))
    # OpenCV's own 16-bit CLAHE uses 65536-bin histograms: on tiles of a few thousand pixels the bins
    # hold 0 or 1 counts, the clip limit stops acting and the result depends on image size and on how
    # many grey levels the file really uses. Hence 256-bin histograms here too, with finer mapping.
    return _clahe_interpolated(image, float(clip_limit), rows, columns)


def _clahe_tile_mappings(levels: np.ndarray, clip_limit: float, rows: int, columns: int) -> tuple[np.ndarray, int, int]:
    """Per-tile CLAHE mappings of the 256 grey levels to [0, 1], exactly as OpenCV's 8-bit CLAHE builds them."""
    height, width = levels.shape
    if height % rows or width % columns:
        # OpenCV pads both directions whenever either does not divide (a whole extra band of tiles'
        # rows if the height did divide); copied so that both precisions tile the image the same way.
        levels = cv2.copyMakeBorder(
            levels, 0, rows - height % rows, 0, columns - width % columns, cv2.BORDER_REFLECT_101
        )
    tile_height, tile_width = levels.shape[0] // rows, levels.shape[1] // columns
    counts = np.empty((rows, columns, 256), np.int64)
    for r in range(rows):
        for c in range(columns):
            tile = levels[r * tile_height : (r + 1) * tile_height, c * tile_width : (c + 1) * tile_width]
            counts[r, c] = cv2.calcHist([tile], [0], None, [256], [0, 256]).ravel()
    tile_pixels = tile_height * tile_width
    limit = max(int(clip_limit * tile_pixels / 256), 1)
    clipped = np.maximum(counts - limit, 0).sum(axis=-1, keepdims=True)
    counts = np.minimum(counts, limit) + clipped // 256
    # OpenCV hands the remainder out one count at a time, every (256 // remainder)-th bin from bin 0.
    remainder = clipped % 256
    step = np.maximum(256 // np.maximum(remainder, 1), 1)
    level = np.arange(256)
    counts += (level % step == 0) & (level // step < remainder)
    return np.cumsum(counts, axis=-1) / tile_pixels, tile_height, tile_width


def _clahe_interpolated(image: np.ndarray, clip_limit: float, rows: int, columns: int) -> np.ndarray:
    mappings, tile_height, tile_width = _clahe_tile_mappings(_to_uint(image, 8), clip_limit, rows, columns)
    mappings = mappings.astype(np.float32)
    slopes = np.zeros_like(mappings)
    slopes[..., :-1] = np.diff(mappings, axis=-1)
    scaled = image * np.float32(255.0)
    lower = scaled.astype(np.uint8)  # floor: the grey level just below each pixel
    fraction = scaled - lower
    height, width = image.shape
    # Tile coordinates of each row and column, as OpenCV computes them: centres at half a tile.
    row_position = np.arange(height, dtype=np.float32) * np.float32(1.0 / tile_height) - np.float32(0.5)
    column_position = np.arange(width, dtype=np.float32) * np.float32(1.0 / tile_width) - np.float32(0.5)
    row_tile, column_tile = np.floor(row_position).astype(int), np.floor(column_position).astype(int)
    row_weight, column_weight = row_position - row_tile, column_position - column_tile
    out = np.empty_like(image)
    # Between four tile centres the same four mappings apply, so each such block is a few lookups.
    row_starts = [0, *(np.flatnonzero(np.diff(row_tile)) + 1), height]
    column_starts = [0, *(np.flatnonzero(np.diff(column_tile)) + 1), width]
    for r0, r1 in zip(row_starts[:-1], row_starts[1:]):
        top, bottom = min(max(row_tile[r0], 0), rows - 1), min(max(row_tile[r0] + 1, 0), rows - 1)
        for c0, c1 in zip(column_starts[:-1], column_starts[1:]):
            left, right = min(max(column_tile[c0], 0), columns - 1), min(max(column_tile[c0] + 1, 0), columns - 1)
            block, block_fraction = lower[r0:r1, c0:c1], fraction[r0:r1, c0:c1]

            def mapped(tile_row: int, tile_column: int) -> np.ndarray:
                # The mapping at the grey level below, plus the fraction of the step to the next level.
                value = cv2.LUT(block, slopes[tile_row, tile_column])
                value *= block_fraction
                value += cv2.LUT(block, mappings[tile_row, tile_column])
                return value

            def across(tile_row: int) -> np.ndarray:
                value = mapped(tile_row, left)
                if right != left:
                    change = mapped(tile_row, right)
                    change -= value
                    change *= column_weight[None, c0:c1]
                    value += change
                return value

            value = across(top)
            if bottom != top:
                change = across(bottom)
                change -= value
                change *= row_weight[r0:r1, None]
                value += change
            out[r0:r1, c0:c1] = value
    return _clip_unit(out)


def median_filter(image: np.ndarray, kernel_size: int = 3, bit_depth: int = 8) -> np.ndarray:
    """Median filter over a square neighbourhood: removes impulse ("salt-and-pepper") noise.

    Dead or hot detector pixels and dust specks are replaced by the median of their neighbours,
    while edges such as rib margins and the heart border stay sharp, unlike with a blur.

    Parameters
    ----------
    image : float32 (H, W) in [0, 1]
    kernel_size : odd side length of the neighbourhood in pixels; default 3. 1 leaves the image as is.
        A speck is removed when it covers less than half the neighbourhood.
    bit_depth : 8 or 16; only used for kernels larger than 5, which OpenCV filters only at 8 bits:
        at 8 the result then has 256 grey levels, at 16 scipy filters the float image exactly (slower).
    """
    _check_bit_depth(bit_depth)
    if isinstance(kernel_size, bool) or int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    kernel_size = int(kernel_size)
    if kernel_size == 1:
        return image.copy()
    if kernel_size <= 5:  # OpenCV filters float32 exactly for 3 and 5
        return cv2.medianBlur(image, kernel_size)
    if bit_depth == 8:
        return _from_uint(cv2.medianBlur(_to_uint(image, 8), kernel_size))
    from scipy import ndimage  # only this rare path needs scipy

    return ndimage.median_filter(image, size=kernel_size, mode="nearest")  # nearest = OpenCV's replicate


def unsharp_mask(image: np.ndarray, amount: float = 1.0, radius: float = 1.5) -> np.ndarray:
    """Unsharp masking: adds back ``amount`` times the fine detail, sharpening lung markings and edges.

    ``result = image + amount * (image - gaussian_blur(image, radius))``, clipped to [0, 1]. Detail finer
    than about ``radius`` pixels (vessel and interstitial markings, fissures, rib cortex) is boosted;
    noise is boosted too, so denoise or median-filter first.

    Parameters
    ----------
    image : float32 (H, W) in [0, 1]
    amount : gain applied to the detail, >= 0; default 1.0 (detail contrast doubled). 0 is identity.
    radius : standard deviation of the Gaussian blur in pixels, > 0; default 1.5.
    """
    if amount < 0 or not radius > 0:
        raise ValueError(f"need amount >= 0 and radius > 0, got amount={amount!r}, radius={radius!r}")
    size = 2 * math.ceil(3.0 * radius) + 1  # +-3 sigma holds 99.7 % of the kernel; OpenCV's default is 4
    blurred = cv2.GaussianBlur(image, (size, size), float(radius), sigmaY=float(radius), borderType=cv2.BORDER_REFLECT)
    # Written over the blur: a second fresh full-size buffer costs more than the arithmetic.
    out = cv2.addWeighted(image, 1.0 + float(amount), blurred, -float(amount), 0.0, dst=blurred)
    return _clip_unit(out)


def equalize_histogram(image: np.ndarray, strength: float = 1.0, bit_depth: int = 8) -> np.ndarray:
    """Global histogram equalisation, optionally blended with the input.

    Remaps grey levels so that they are used about equally often across the whole image, which
    spreads the crowded mid-greys of soft tissue and mediastinum over the full range. On its own it is
    harsh (it ignores anatomy and can wash out the lungs), hence ``strength``:
    ``result = (1 - strength) * image + strength * equalised``.

    Parameters
    ----------
    image : float32 (H, W) in [0, 1]
    strength : blend weight of the equalised image in [0, 1]; default 1.0 (plain equalisation).
    bit_depth : 8 or 16; default 8. The image is quantised to 2**bit_depth grey levels, which are
        also the histogram bins, so at 8 bits the result has 256 levels.
    """
    _check_bit_depth(bit_depth)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength!r}")
    levels = _to_uint(image, bit_depth)
    if bit_depth == 8:
        counts = cv2.calcHist([levels], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    else:
        counts = np.bincount(levels.ravel(), minlength=65536)
    cdf = np.cumsum(counts)
    darkest = cdf[np.flatnonzero(counts)[0]]
    if cdf[-1] == darkest:  # a flat image has nothing to spread
        return image.copy()
    # As OpenCV's equalizeHist: the darkest level present maps to 0 and the brightest to 1. The blend
    # is folded into the same lookup table, so the whole operation is one pass over the pixels.
    equalised = (cdf - darkest) / (cdf[-1] - darkest)
    identity = np.arange(counts.size) / (counts.size - 1)
    lookup = ((1.0 - strength) * identity + strength * equalised).astype(np.float32)
    return cv2.LUT(levels, lookup) if bit_depth == 8 else lookup[levels]


def vignette(image: np.ndarray, amount: float = 0.25) -> np.ndarray:
    """Radial fall-off of intensity towards the edges, mimicking the uneven beam of an X-ray tube.

    Away from the central ray the beam is weaker (inverse-square distance and obliquity, the heel
    effect), so films are often darker at the periphery; a gentle fall-off also draws the eye to the
    chest rather than the collimation edges. The profile is a Gaussian in the distance from the image
    centre: 1 at the centre, ``1 - amount`` at the corners.

    Parameters
    ----------
    image : float32 (H, W) in [0, 1]
    amount : fraction of intensity lost at the corners, in [0, 0.95]; default 0.25. 0 is identity.
    """
    if not 0.0 <= amount <= 0.95:
        raise ValueError(f"vignette amount must be in [0, 0.95], got {amount!r}")
    return cv2.multiply(image, _vignette_map(image.shape, float(amount)))


@functools.lru_cache(maxsize=4)
def _vignette_map(shape: tuple[int, int], amount: float) -> np.ndarray:
    """The fall-off map, cached: a preset comparison applies the same map to every output."""
    height, width = shape
    half_diagonal_sq = (height / 2.0) ** 2 + (width / 2.0) ** 2
    # exp(-k r^2) factorises into a row profile times a column profile.
    k = -math.log(1.0 - amount) / half_diagonal_sq
    dy = np.arange(height, dtype=np.float64) + 0.5 - height / 2.0
    dx = np.arange(width, dtype=np.float64) + 0.5 - width / 2.0
    profile = np.exp(-k * dy**2).astype(np.float32)[:, None] * np.exp(-k * dx**2).astype(np.float32)[None, :]
    profile.setflags(write=False)  # shared between calls
    return profile


def denoise(
    image: np.ndarray,
    method: str = "bilateral",
    noise_sigma: float = 0.02,
    spatial_sigma: float = 2.0,
    bit_depth: int = 8,
) -> np.ndarray:
    """Edge-preserving noise reduction: bilateral filter or non-local means (OpenCV).

    Reduces quantum mottle in low-dose films while keeping edges such as pleural lines and rib
    margins. Non-local means (Buades et al. 2005) averages similar 7 x 7 patches within a 21 x 21
    window and keeps texture better, but is much slower than the bilateral filter.

    Parameters
    ----------
    image : float32 (H, W) in [0, 1]
    method : "bilateral" (default) or "nl_means".
    noise_sigma : expected noise standard deviation as a fraction of the range, > 0; default 0.02.
        The bilateral filter averages across intensity steps smaller than about 2 x this; for
        non-local means it is the filter strength h.
    spatial_sigma : bilateral only: standard deviation of the spatial weights in pixels; default 2.0.
    bit_depth : 8 or 16, the precision non-local means works at; the bilateral filter works in float.
    """
    _check_bit_depth(bit_depth)
    if not noise_sigma > 0 or not spatial_sigma > 0:
        raise ValueError(f"need noise_sigma > 0 and spatial_sigma > 0, got {noise_sigma!r}, {spatial_sigma!r}")
    if method == "bilateral":
        out = cv2.bilateralFilter(
            image, -1, 2.0 * float(noise_sigma), float(spatial_sigma), borderType=cv2.BORDER_REFLECT
        )
        return _clip_unit(out)
    if method == "nl_means":
        levels = _to_uint(image, bit_depth)
        if bit_depth == 8:
            filtered = cv2.fastNlMeansDenoising(
                levels, h=float(noise_sigma) * 255.0, templateWindowSize=7, searchWindowSize=21
            )
        else:  # OpenCV's 16-bit path needs the L1 norm
            filtered = cv2.fastNlMeansDenoising(
                levels, h=[float(noise_sigma) * 65535.0], templateWindowSize=7, searchWindowSize=21,
                normType=cv2.NORM_L1,
            )
        return _from_uint(filtered)
    raise ValueError(f"unknown denoise method {method!r}; expected 'bilateral' or 'nl_means'")


def adjust_gamma(image: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """Power-law tone curve ``image ** gamma``; black and white stay fixed.

    gamma < 1 lifts the dark greys (more visible detail in the dense mediastinum and behind the
    diaphragm); gamma > 1 deepens them (darker, more contrasted lung fields).

    Parameters
    ----------
    image : float32 (H, W) in [0, 1]
    gamma : exponent, > 0; default 1.0 (identity).
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma!r}")
    return cv2.pow(image, float(gamma))


# ---------------------------------------------------------------------------------------------------
# Operations as data: the names presets use, and the values each parameter may take.
# ---------------------------------------------------------------------------------------------------


class PresetError(ValueError):
    """A preset or preset file that cannot be used.

    ``field`` locates the problem, e.g. ``Mine[2].parameters.clip_limit``; ``problem`` says what is wrong.
    """

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class _Number:
    low: float
    high: float
    integer: bool = False
    odd: bool = False

    def check(self, value: Any, field: str) -> int | float:
        kind = "an odd integer" if self.odd else "an integer" if self.integer else "a number"
        ok_type = isinstance(value, (int, np.integer)) or (not self.integer and isinstance(value, (float, np.floating)))
        if isinstance(value, (bool, np.bool_)) or not ok_type:
            raise PresetError(field, f"expected {kind}, got {type(value).__name__} {value!r}")
        in_range = self.low <= value <= self.high  # False for NaN; compares huge integers exactly
        if not in_range or (self.odd and value % 2 == 0):
            raise PresetError(field, f"must be {kind} between {self.low} and {self.high}, got {value!r}")
        return int(value) if self.integer else float(value)


@dataclass(frozen=True)
class _TileGrid:
    low: int
    high: int

    def check(self, value: Any, field: str) -> tuple[int, int]:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise PresetError(field, f"expected [rows, columns], got {value!r}")
        cell = _Number(self.low, self.high, integer=True)
        return (cell.check(value[0], f"{field}[0]"), cell.check(value[1], f"{field}[1]"))


@dataclass(frozen=True)
class _Choice:
    choices: tuple[str, ...]

    def check(self, value: Any, field: str) -> str:
        if value not in self.choices:
            raise PresetError(field, f"expected one of {', '.join(map(repr, self.choices))}, got {value!r}")
        return value


@dataclass(frozen=True)
class Operation:
    """One enhancement a preset step can name: the function and the accepted range of each parameter."""

    function: Callable[..., np.ndarray]
    parameters: Mapping[str, _Number | _TileGrid | _Choice]
    uses_bit_depth: bool = False  # the pipeline passes the input's bit depth; presets never store it


OPERATIONS: Mapping[str, Operation] = MappingProxyType({
    "window": Operation(apply_window, {"center": _Number(0.0, 1.0), "width": _Number(0.001, 2.0)}),
    "median": Operation(median_filter, {"kernel_size": _Number(1, 31, integer=True, odd=True)}, uses_bit_depth=True),
    "clahe": Operation(clahe, {"clip_limit": _Number(0.01, 100.0), "tile_grid": _TileGrid(1, 64)}, uses_bit_depth=True),
    "equalize_histogram": Operation(equalize_histogram, {"strength": _Number(0.0, 1.0)}, uses_bit_depth=True),
    "unsharp_mask": Operation(unsharp_mask, {"amount": _Number(0.0, 10.0), "radius": _Number(0.1, 50.0)}),
    "vignette": Operation(vignette, {"amount": _Number(0.0, 0.95)}),
    "denoise": Operation(
        denoise,
        {
            "method": _Choice(("bilateral", "nl_means")),
            "noise_sigma": _Number(0.0001, 1.0),
            "spatial_sigma": _Number(0.1, 50.0),
        },
        uses_bit_depth=True,
    ),
    "gamma": Operation(adjust_gamma, {"gamma": _Number(0.05, 20.0)}),
})

Step = tuple[str, Mapping[str, Any]]
Preset = tuple[Step, ...]


def validate_preset(steps: Iterable[Any], name: str = "preset") -> Preset:
    """Check a preset and return it in canonical, read-only form.

    A step is either a pair ``(operation, parameters)`` or a mapping ``{"operation": ...,
    "parameters": {...}}`` (the JSON form). Parameters left out take the operation's defaults.

    Raises
    ------
    PresetError (a ValueError)
        Naming the offending field, e.g. ``Mine[1].operation`` for an unknown operation or
        ``Mine[2].parameters.clip_limit`` for a value out of range or of the wrong type.
    """
    if isinstance(steps, (str, bytes, Mapping)) or not isinstance(steps, Iterable):
        raise PresetError(name, f"a preset is a list of steps, got {type(steps).__name__}")
    canonical = []
    for index, step in enumerate(steps):
        where = f"{name}[{index}]"
        if isinstance(step, Mapping):
            unknown = set(step) - {"operation", "parameters"}
            if unknown:
                raise PresetError(
                    f"{where}.{sorted(unknown)[0]}", 'unknown key; a step has "operation" and "parameters"'
                )
            if "operation" not in step:
                raise PresetError(f"{where}.operation", "missing")
            operation_name, parameters = step["operation"], step.get("parameters", {})
        elif isinstance(step, (tuple, list)) and len(step) == 2:
            operation_name, parameters = step
        else:
            raise PresetError(
                where, f'expected (operation, parameters) or {{"operation": ..., "parameters": ...}}, got {step!r}'
            )
        if not isinstance(operation_name, str) or operation_name not in OPERATIONS:
            raise PresetError(
                f"{where}.operation", f"unknown operation {operation_name!r}; known: {', '.join(OPERATIONS)}"
            )
        if not isinstance(parameters, Mapping):
            raise PresetError(
                f"{where}.parameters", f"expected a mapping of parameter names to values, got {parameters!r}"
            )
        specs = OPERATIONS[operation_name].parameters
        checked = {}
        for key, value in parameters.items():
            field = f"{where}.parameters.{key}"
            if key not in specs:
                hint = " (bit_depth follows the input image and is not stored in presets)" if key == "bit_depth" else ""
                raise PresetError(
                    field, f"unknown parameter for {operation_name!r}; expected one of {', '.join(specs)}{hint}"
                )
            checked[key] = specs[key].check(value, field)
        canonical.append((operation_name, MappingProxyType(checked)))
    return tuple(canonical)


# ---------------------------------------------------------------------------------------------------
# Built-in presets: the one table, and the order in which every preset applies its operations.
# ---------------------------------------------------------------------------------------------------

# name: (window centre, window width, unsharp amount ("Edge"), median kernel, CLAHE clip limit,
#        CLAHE tile grid (rows, columns), vignette amount, global histogram equalisation)
_PRESET_TABLE = {
    "Balanced": (0.50, 0.80, 1.3, 3, 2.5, (8, 8), 0.25, True),
    "High Contrast": (0.45, 0.70, 1.5, 3, 3.0, (8, 8), 0.30, True),
    "Sharp Detail": (0.55, 0.85, 1.8, 3, 2.0, (6, 6), 0.20, False),
    "Radiographic Film": (0.48, 0.75, 1.4, 3, 2.8, (7, 7), 0.35, True),
}

# Global equalisation after CLAHE re-stretches an image that is already equalised locally and washes
# out the lung fields; a half-strength blend keeps its global lift without the harshness.
PRESET_EQUALIZATION_STRENGTH = 0.5
# Lung markings in a 256-1024 px chest film are a few pixels wide.
PRESET_UNSHARP_RADIUS = 1.5


def _preset_from_row(
    center: float,
    width: float,
    edge: float,
    median: int,
    clip: float,
    grid: tuple[int, int],
    vignette_amount: float,
    equalize: bool,
) -> Preset:
    # Why this order:
    # 1. window first, like a viewer's VOI LUT: every later step then works on the displayed band only;
    # 2. median before anything that amplifies noise, so impulse noise is gone before contrast is raised
    #    (a median commutes with the window, so doing it second loses nothing);
    # 3. CLAHE for local contrast, then 4. the global equalisation (blended), which before CLAHE would
    #    be mostly undone, since CLAHE re-ranks grey levels tile by tile;
    # 5. unsharp masking after the contrast steps, so their stretching does not magnify its halos;
    # 6. vignette last: any equalisation after it would flatten the fall-off again.
    steps: list[tuple[str, dict]] = [
        ("window", {"center": center, "width": width}),
        ("median", {"kernel_size": median}),
        ("clahe", {"clip_limit": clip, "tile_grid": grid}),
    ]
    if equalize:
        steps.append(("equalize_histogram", {"strength": PRESET_EQUALIZATION_STRENGTH}))
    steps.append(("unsharp_mask", {"amount": edge, "radius": PRESET_UNSHARP_RADIUS}))
    steps.append(("vignette", {"amount": vignette_amount}))
    return validate_preset(steps)


BUILTIN_PRESETS: Mapping[str, Preset] = MappingProxyType(
    {"None": (), **{name: _preset_from_row(*row) for name, row in _PRESET_TABLE.items()}}
)


# ---------------------------------------------------------------------------------------------------
# Applying and comparing presets.
# ---------------------------------------------------------------------------------------------------


def _resolve_preset(preset: str | Iterable[Any]) -> Preset:
    if isinstance(preset, str):
        if preset not in BUILTIN_PRESETS:
            raise PresetError(repr(preset), f"unknown preset; built-in presets are {', '.join(BUILTIN_PRESETS)}")
        return BUILTIN_PRESETS[preset]
    return validate_preset(preset)


def _run_steps(pixels: np.ndarray, steps: Preset, bit_depth: int) -> np.ndarray:
    if not steps:
        return pixels.copy()  # even the empty preset hands back a new array
    out = pixels
    for operation_name, parameters in steps:
        operation = OPERATIONS[operation_name]
        extra = {"bit_depth": bit_depth} if operation.uses_bit_depth else {}
        out = operation.function(out, **parameters, **extra)
    return out


def apply_preset(image: np.ndarray, preset: str | Iterable[Any], *, bit_depth: int | None = None) -> np.ndarray:
    """Apply a preset's operations in order.

    Parameters
    ----------
    image : any input ``validate_image`` accepts (uint8, uint16, float in [0, 1]; grey, RGB or RGBA).
    preset : the name of a built-in preset (see ``BUILTIN_PRESETS``) or a list of steps, each
        ``(operation, parameters)``; see ``validate_preset``.
    bit_depth : 8 or 16 to override the precision inferred from the input; default None (inferred).

    Returns
    -------
    float32 array (H, W) with values in [0, 1], a new array; the "None" preset returns a copy of the
    validated input.
    """
    steps = _resolve_preset(preset)
    pixels, inferred = validate_image(image)
    if bit_depth is not None:
        _check_bit_depth(bit_depth)
    return _run_steps(pixels, steps, bit_depth or inferred)


@dataclass(frozen=True)
class PresetResult:
    """One preset's output, ready for a comparison table, an image grid and a histogram plot."""

    name: str
    image: np.ndarray
    """float32 (H, W) in [0, 1]."""
    descriptors: dict[str, float]
    """mean, std, contrast_ratio, entropy, sharpness; see xray_generator.evaluation.descriptors."""
    histogram_counts: np.ndarray
    """Pixel counts per intensity bin."""
    histogram_edges: np.ndarray
    """Bin edges from 0 to 1, one more than the counts."""

    def row(self) -> dict[str, str | float]:
        """The preset name and its descriptors as one flat table row."""
        return {"preset": self.name, **self.descriptors}


def compare_presets(
    image: np.ndarray,
    presets: Mapping[str, Iterable[Any]] | Iterable[str] | None = None,
    *,
    histogram_bins: int = 64,
    bit_depth: int | None = None,
) -> list[PresetResult]:
    """Apply several presets to one image and describe each output.

    Parameters
    ----------
    image : any input ``validate_image`` accepts; validated once for all presets.
    presets : names of built-in presets, or a mapping from a display name to a preset (a built-in
        name or a list of steps); default None: every built-in, starting with "None" (the input).
    histogram_bins : number of equal-width intensity bins for each histogram; default 64.
    bit_depth : as in ``apply_preset``.

    Returns
    -------
    list of PresetResult, in the order given. ``[r.row() for r in results]`` is a descriptor table.
    """
    if presets is None:
        presets = BUILTIN_PRESETS
    results = []
    for name, output in apply_presets(image, presets, bit_depth=bit_depth).items():
        counts, edges = intensity_histogram(output, histogram_bins)
        results.append(PresetResult(name, output, describe_image(output), counts, edges))
    return results


def apply_presets(
    image: np.ndarray, presets: Mapping[str, Iterable[Any]] | Iterable[str], *, bit_depth: int | None = None
) -> dict[str, np.ndarray]:
    """Apply several presets to one image, two at a time; ``{display name: output}`` in the order given.

    The image is validated once. OpenCV releases the GIL, and several steps (lookup tables, CLAHE
    tile histograms) run on one core only, so two presets side by side keep both cores busy.
    """
    if isinstance(presets, str):  # one name, not a sequence of one-letter names
        presets = [presets]
    named = dict(presets) if isinstance(presets, Mapping) else {name: name for name in presets}
    resolved = {name: _resolve_preset(preset) for name, preset in named.items()}  # fail before any work
    pixels, inferred = validate_image(image)
    if bit_depth is not None:
        _check_bit_depth(bit_depth)
    depth = bit_depth or inferred
    if len(resolved) < 2:
        return {name: _run_steps(pixels, steps, depth) for name, steps in resolved.items()}
    # One OpenCV thread per preset while two presets run: two presets x two OpenCV threads would
    # oversubscribe the cores. The setting is process-wide but only changes speed, never results.
    with _PARALLEL_PRESETS:  # one comparison at a time owns the thread setting
        cv2.setNumThreads(1)
        try:
            outputs = list(_preset_pool().map(lambda steps: _run_steps(pixels, steps, depth), resolved.values()))
        finally:
            cv2.setNumThreads(_OPENCV_THREADS)
    return dict(zip(resolved, outputs))


_OPENCV_THREADS = cv2.getNumThreads()
_PARALLEL_PRESETS = threading.Lock()


@functools.lru_cache(maxsize=1)
def _preset_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="post_process")


def comparison_grid(images: Mapping[str, np.ndarray], columns: int | None = None) -> np.ndarray:
    """Lay images out side by side, each under a band with its name (drawn with ``cv2.putText``).

    Parameters
    ----------
    images : mapping from label to a float image (H, W) in [0, 1]; all of the same shape, e.g.
        ``{r.name: r.image for r in compare_presets(image)}``.
    columns : panels per row; default None: all in one row up to 5 panels, else a near-square grid.

    Returns
    -------
    uint8 array: an 8-bit picture for viewing, whatever the input precision.
    """
    if not images:
        raise ValueError("no images to lay out")
    shapes = {np.shape(image) for image in images.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"all panels must be 2-D images of one shape, got {sorted(shapes)}")
    height, width = next(iter(shapes))
    count = len(images)
    if columns is not None and columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    columns = columns or (count if count <= 5 else math.ceil(math.sqrt(count)))
    rows = math.ceil(count / columns)
    gap = max(2, width // 128)
    band = max(16, round(0.09 * width))
    font = cv2.FONT_HERSHEY_SIMPLEX
    grid = np.zeros((rows * (band + height) + (rows - 1) * gap, columns * width + (columns - 1) * gap), np.uint8)
    for index, (label, image) in enumerate(images.items()):
        top = (index // columns) * (band + height + gap)
        left = (index % columns) * (width + gap)
        panel = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
        grid[top + band : top + band + height, left : left + width] = _to_uint(panel, 8)
        # Text about 55% of the band high, shrunk if the label is wider than the panel.
        (text_width, text_height), _ = cv2.getTextSize(label, font, 1.0, 1)
        scale = min(0.55 * band / max(text_height, 1), 0.94 * width / max(text_width, 1))
        thickness = max(1, round(scale * 1.6))
        (text_width, text_height), _ = cv2.getTextSize(label, font, scale, thickness)
        origin = (left + (width - text_width) // 2, top + (band + text_height) // 2)
        cv2.putText(grid, label, origin, font, scale, 255, thickness, cv2.LINE_AA)
    return grid


# ---------------------------------------------------------------------------------------------------
# Preset files.
# ---------------------------------------------------------------------------------------------------

PRESET_FILE_FORMAT = "cxr-studio-presets"
PRESET_FILE_VERSION = 1


def preset_to_json(steps: Iterable[Any]) -> list[dict[str, Any]]:
    """A preset in the JSON form that preset files and PNG provenance chunks store.

    ``[{"operation": "clahe", "parameters": {"clip_limit": 2.5, "tile_grid": [8, 8]}}, ...]``; the
    preset is validated first, so the result always loads back.
    """
    steps = validate_preset(steps)

    def plain(value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value  # JSON has no tuples

    return [{"operation": name, "parameters": {k: plain(v) for k, v in params.items()}} for name, params in steps]


def save_presets(presets: Mapping[str, Iterable[Any]], path: str | Path) -> None:
    """Write presets to a JSON file, atomically: a crash never leaves a half-written file behind.

    The file looks like::

        {"format": "cxr-studio-presets", "version": 1,
         "presets": {"Mine": [{"operation": "window", "parameters": {"center": 0.5, "width": 0.8}}, ...]}}

    Parameters
    ----------
    presets : mapping from preset name to preset (list of steps); validated before anything is written.
    path : the file to create or replace.
    """
    document = {
        "format": PRESET_FILE_FORMAT,
        "version": PRESET_FILE_VERSION,
        "presets": {},
    }
    for name, steps in presets.items():
        if not isinstance(name, str) or not name.strip():
            raise PresetError(f"presets[{name!r}]", "preset names must be non-empty strings")
        document["presets"][name] = preset_to_json(validate_preset(steps, f"presets[{name!r}]"))
    text = json.dumps(document, indent=2) + "\n"
    atomic_write(Path(path), lambda file: file.write(text.encode("utf-8")))


def load_presets(path: str | Path) -> dict[str, Preset]:
    """Read presets written by ``save_presets`` (or by hand in the same format).

    Returns
    -------
    dict from preset name to preset, in file order. A name may repeat a built-in one; which wins is
    the caller's choice (the CLI lets the file's preset replace the built-in).

    Raises
    ------
    PresetError (a ValueError)
        If the file is not valid JSON or anything in it is wrong; the message starts with the file
        name and names the field, e.g. ``mine.json: presets['Mine'][1].parameters.clip_limit: ...``.
    OSError
        If the file cannot be read.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")

    def fail(field: str, problem: str) -> PresetError:
        return PresetError(f"{path.name}: {field}", problem)

    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail("(file)", f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    if not isinstance(document, dict):
        raise fail("(file)", "expected a JSON object with a \"presets\" key")
    unknown = set(document) - {"format", "version", "presets"}
    if unknown:
        raise fail(sorted(unknown)[0], 'unknown key; expected "format", "version" and "presets"')
    if document.get("format", PRESET_FILE_FORMAT) != PRESET_FILE_FORMAT:
        raise fail("format", f"expected {PRESET_FILE_FORMAT!r}, got {document['format']!r}")
    if document.get("version", PRESET_FILE_VERSION) != PRESET_FILE_VERSION:
        raise fail("version", f"this CXR Studio reads version {PRESET_FILE_VERSION}, got {document['version']!r}")
    if not isinstance(document.get("presets"), dict):
        raise fail("presets", "expected an object mapping preset names to lists of steps")
    presets = {}
    for name, steps in document["presets"].items():
        if not name.strip():
            raise fail(f"presets[{name!r}]", "preset names must not be empty")
        if not isinstance(steps, list):
            raise fail(f"presets[{name!r}]", f"expected a list of steps, got {type(steps).__name__}")
        try:
            presets[name] = validate_preset(steps, f"presets[{name!r}]")
        except PresetError as exc:
            raise fail(exc.field, exc.problem) from None
    return presets


# ---------------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------------

_PROVENANCE_KEY = "cxr-studio:post-process"


def _read_image(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    """The pixels of an image file in their stored dtype (uint8/uint16/float32) and its PNG text chunks."""
    try:
        with Image.open(path) as im:
            im.load()
            text = {key: value for key, value in getattr(im, "text", {}).items() if isinstance(value, str)}
            if im.mode.startswith("I;16"):
                return np.asarray(im).astype(np.uint16), text
            if im.mode == "I":  # some decoders widen 16-bit grey to 32-bit
                pixels = np.asarray(im)
                if pixels.min() < 0 or pixels.max() > 65535:
                    raise ImageLoadError(f"{path.name}: 32-bit integer pixels outside the 16-bit range")
                return pixels.astype(np.uint16), text
            if im.mode == "F":
                return np.asarray(im, dtype=np.float32), text
            if im.mode in ("L", "RGB", "RGBA"):
                return np.asarray(im), text
            return np.asarray(im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")), text
    except (UnidentifiedImageError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ImageLoadError(f"cannot read {path.name}: not an image this tool can decode ({exc})") from None
    except OSError as exc:
        raise ImageLoadError(f"cannot read {path.name}: {exc.strerror or exc}") from None


def _write_png(path: Path, pixels: np.ndarray, text: Mapping[str, str]) -> None:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    atomic_write(path, lambda file: Image.fromarray(pixels).save(file, format="PNG", pnginfo=info))


def _slug(name: str) -> str:
    return "".join(c.lower() if c.isalnum() else "_" for c in name).strip("_") or "preset"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="post_process.py",
        description="Enhance a chest X-ray with a preset, or compare every preset in one labelled grid.",
        epilog="Research use only; not for diagnosis. 8-bit input gives 8-bit output and 16-bit input "
        "16-bit output; --all grids are 8-bit.",
    )
    parser.add_argument("input", nargs="?", type=Path, help="input image (PNG, or anything Pillow reads)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--preset", help='preset to apply (default "Balanced"); see --list-presets')
    choice.add_argument("--all", action="store_true", help="write a labelled grid of every preset instead")
    parser.add_argument("-o", "--output", type=Path, help="output PNG (default: next to the input)")
    parser.add_argument("--preset-file", type=Path, metavar="FILE", help="JSON file of custom presets to offer as well")
    parser.add_argument(
        "--save-preset",
        type=Path,
        metavar="FILE",
        help="add the chosen preset (every preset with --all) to FILE, creating it if needed; "
        "edit it and load it back with --preset-file",
    )
    parser.add_argument("--list-presets", action="store_true", help="print the available presets and exit")
    return parser


def _run_cli(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    presets: dict[str, Preset] = dict(BUILTIN_PRESETS)
    if args.preset_file is not None:
        presets.update(load_presets(args.preset_file))  # a file's preset replaces a built-in of the same name

    if args.list_presets:
        for name, steps in presets.items():
            described = [f"{op}({', '.join(f'{k}={v}' for k, v in params.items())})" for op, params in steps]
            print(f"{name}: {' -> '.join(described) or 'no change'}")
        return 0

    names = list(presets) if args.all else [args.preset or "Balanced"]
    for name in names:
        if name not in presets:
            raise PresetError(repr(name), f"unknown preset; available: {', '.join(presets)}")

    if args.save_preset is not None:
        stored = load_presets(args.save_preset) if args.save_preset.exists() else {}
        stored.update({name: presets[name] for name in names})
        save_presets(stored, args.save_preset)
        print(f"saved {', '.join(names)} to {args.save_preset}")
    if args.input is None:
        if args.save_preset is not None:
            return 0
        parser.error("an input image is required (or use --save-preset / --list-presets)")

    if not args.input.is_file():
        raise ImageLoadError(f"input file not found: {args.input}")
    raw, text = _read_image(args.input)
    stem = args.input.stem
    output = args.output or args.input.with_name(f"{stem}_{'presets' if args.all else _slug(names[0])}.png")
    if output.suffix.lower() != ".png":
        raise ValueError(f"output must be a .png file, got {output.name}")
    if output.resolve() == args.input.resolve():
        raise ValueError("refusing to overwrite the input image; choose another --output")

    if args.all:
        results = compare_presets(raw, {name: presets[name] for name in names})
        pixels = comparison_grid({r.name: r.image for r in results})
        provenance = {"presets": names}
    else:
        enhanced = apply_preset(raw, presets[names[0]])
        pixels = _to_uint(enhanced, 8 if raw.dtype == np.uint8 else 16)
        provenance = {"preset": names[0], "steps": preset_to_json(presets[names[0]])}
    # Every output says what made it; generation metadata of the input travels along.
    _write_png(output, pixels, {**text, _PROVENANCE_KEY: json.dumps({"source": args.input.name, **provenance})})
    print(output)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 success, 2 bad input or usage)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return _run_cli(args, parser)
    except (ValueError, OSError) as exc:  # PresetError and ImageLoadError are ValueErrors
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
