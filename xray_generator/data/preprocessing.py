"""Radiograph preprocessing with OpenCV: pure functions on arrays.

Every function takes an array and returns a new one; the input is never modified. Inside the
library an image is float32 (H, W) in [0, 1]. `to_grayscale` is the one entry point for raw
decoder output (uint8, uint16, signed or float, 2-D or with 1/3/4 channels) and `to_uint8` the exit.

The steps of `prepare_radiograph` follow the curated set (see the dataset card, *Conversion*):
grayscale, 16-bit percentile window, resize so the shorter side is `size`, centre crop. Images are
never upsampled unless the caller passes ``allow_upsample=True``: an upsampled film looks sharp
but holds no more detail, and a generator trained on it learns the interpolation.
"""
from __future__ import annotations

import cv2
import numpy as np

DEFAULT_SIZE = 256
DEFAULT_WINDOW = (0.5, 99.5)  # percentiles; the curated set scales 16-bit images on this window

_INTERPOLATION = {
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
    "cubic": cv2.INTER_CUBIC,
    "linear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
}


class UpsampleError(ValueError):
    """Preprocessing would enlarge an image and the caller did not allow it."""


def _check_gray(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"expected a grayscale image of shape (H, W), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("expected a non-empty image")
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return arr


def percentile_window(image: np.ndarray, low: float = DEFAULT_WINDOW[0], high: float = DEFAULT_WINDOW[1]) -> np.ndarray:
    """Linearly map the [low, high] percentile range of `image` to [0, 1], clipping outside it.

    Parameters
    ----------
    image : (H, W) array of any real dtype (typically 12/16-bit detector values).
    low, high : float, default 0.5 and 99.5, percentiles in [0, 100] with low < high.

    Returns
    -------
    float32 (H, W) in [0, 1]. A constant image maps to zeros.
    """
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"need 0 <= low < high <= 100, got low={low}, high={high}")
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"expected a grayscale image of shape (H, W), got shape {arr.shape}")
    values = arr.astype(np.float64)
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def to_grayscale(image: np.ndarray, *, window: tuple[float, float] = DEFAULT_WINDOW) -> np.ndarray:
    """Raw decoder output -> float32 (H, W) in [0, 1].

    - uint8 is divided by 255 (no windowing: 8-bit files are already display images).
    - uint16, signed integers and floats outside [0, 1] are scaled on the `window` percentiles.
    - float input already in [0, 1] is kept as is.
    - (H, W, 3) and (H, W, 4) are converted with the ITU-R 601 luma weights (alpha is ignored);
      (H, W, 1) is squeezed.
    """
    arr = np.asarray(image)
    if arr.ndim == 3:
        if arr.shape[2] == 1:
            arr = arr[..., 0]
        elif arr.shape[2] in (3, 4):
            dtype = arr.dtype
            arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
            # keep the integer range so the rules below still apply to it
            arr = np.rint(arr).astype(dtype) if np.issubdtype(dtype, np.integer) else arr
        else:
            raise ValueError(f"expected 1, 3 or 4 channels, got shape {arr.shape}")
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image or (H, W, C), got shape {np.asarray(image).shape}")
    if arr.size == 0:
        raise ValueError("expected a non-empty image")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating) and np.nanmin(arr) >= 0.0 and np.nanmax(arr) <= 1.0:
        return np.nan_to_num(arr.astype(np.float32))
    return percentile_window(np.nan_to_num(arr.astype(np.float64)), *window)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float [0, 1] (H, W) -> uint8, rounding to nearest."""
    return (np.clip(_check_gray(image), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def resize_shorter_side(
    image: np.ndarray,
    size: int = DEFAULT_SIZE,
    *,
    allow_upsample: bool = False,
    interpolation: str | None = None,
) -> np.ndarray:
    """Resize so the shorter side is `size` pixels, keeping the aspect ratio.

    Parameters
    ----------
    image : float32 (H, W).
    size : int, default 256, target length of the shorter side.
    allow_upsample : bool, default False. If the shorter side is below `size`, raise `UpsampleError`
        unless this is True.
    interpolation : 'area' (default when shrinking: no aliasing), 'lanczos' (default when enlarging),
        'cubic', 'linear' or 'nearest'.
    """
    arr = _check_gray(image)
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    h, w = arr.shape
    short = min(h, w)
    if short == size:
        return arr.copy()
    if short < size and not allow_upsample:
        raise UpsampleError(f"shorter side is {short} px, below {size} px; pass allow_upsample=True to enlarge it")
    scale = size / short
    new_h, new_w = (size, max(1, round(w * scale))) if h <= w else (max(1, round(h * scale)), size)
    method = interpolation or ("area" if scale < 1 else "lanczos")
    if method not in _INTERPOLATION:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATION)}, got {method!r}")
    out = cv2.resize(arr, (new_w, new_h), interpolation=_INTERPOLATION[method])
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """A stored film to `size` x `size` (area when shrinking, linear when enlarging), aspect not kept.

    The one resize that real films get on their way to the generator's size: the evaluation's real side
    (`evaluation.samples.load_real`) and, with `data.resize_to`, the UNet's training latents, so the model
    learns the films as they are judged (the 224-px Kermany re-encodes enlarged to 256).
    """
    if image.shape == (size, size):
        return image
    shrinking = max(image.shape) > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def centre_crop(image: np.ndarray, size: int | tuple[int, int] = DEFAULT_SIZE) -> np.ndarray:
    """The central (size, size) or (height, width) window; odd margins drop the extra pixel at the end."""
    arr = _check_gray(image)
    height, width = (size, size) if isinstance(size, int) else size
    h, w = arr.shape
    if height > h or width > w:
        raise ValueError(f"crop {height}x{width} is larger than the image {h}x{w}")
    top = (h - height) // 2
    left = (w - width) // 2
    return arr[top : top + height, left : left + width].copy()


def denoise(image: np.ndarray, strength: float = 0.03, *, method: str = "nlm") -> np.ndarray:
    """Reduce noise while keeping edges.

    Parameters
    ----------
    strength : float, default 0.03, filter strength in intensity units of [0, 1]
        ('nlm': the filter parameter h; 'bilateral': the range sigma).
    method : 'nlm' (non-local means, cv2.fastNlMeansDenoising on a 16-bit copy) or
        'bilateral' (cv2.bilateralFilter, 5-px neighbourhood).
    """
    arr = np.clip(_check_gray(image), 0.0, 1.0)
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if strength == 0:
        return arr.copy()
    if method == "nlm":
        # 16-bit keeps the precision of float input; OpenCV needs the L1 norm for 16-bit NLM
        as16 = np.rint(arr * 65535.0).astype(np.uint16)
        out = cv2.fastNlMeansDenoising(as16, [float(strength * 65535.0)], None, 7, 21, cv2.NORM_L1)
        return out.astype(np.float32) / 65535.0
    if method == "bilateral":
        out = cv2.bilateralFilter(arr, d=5, sigmaColor=float(strength), sigmaSpace=2.0)
        return np.clip(out, 0.0, 1.0).astype(np.float32)
    raise ValueError(f"method must be 'nlm' or 'bilateral', got {method!r}")


def equalize_histogram(image: np.ndarray, *, clip_limit: float | None = 2.0, tile_grid: int = 8, bins: int = 4096) -> np.ndarray:
    """Histogram equalisation.

    Parameters
    ----------
    clip_limit : float or None, default 2.0. A number gives CLAHE (contrast-limited, adaptive, on
        `tile_grid` x `tile_grid` tiles; cv2.createCLAHE on a 16-bit copy). None gives global
        equalisation over `bins` intensity bins.
    """
    arr = np.clip(_check_gray(image), 0.0, 1.0)
    if clip_limit is not None:
        if clip_limit <= 0 or tile_grid < 1:
            raise ValueError(f"need clip_limit > 0 and tile_grid >= 1, got {clip_limit}, {tile_grid}")
        clahe = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(tile_grid, tile_grid))
        out = clahe.apply(np.rint(arr * 65535.0).astype(np.uint16))
        return out.astype(np.float32) / 65535.0
    counts, edges = np.histogram(arr, bins=bins, range=(0.0, 1.0))
    cdf = np.cumsum(counts).astype(np.float64)
    first = cdf[counts > 0][0] if counts.any() else 0.0
    if cdf[-1] == first:  # a constant image has nothing to spread
        return arr.copy()
    cdf = np.clip((cdf - first) / (cdf[-1] - first), 0.0, 1.0)
    index = np.minimum((arr * bins).astype(np.int64), bins - 1)
    return cdf[index].astype(np.float32)


def prepare_radiograph(
    image: np.ndarray,
    size: int = DEFAULT_SIZE,
    *,
    window: tuple[float, float] = DEFAULT_WINDOW,
    crop: bool = True,
    allow_upsample: bool = False,
    denoise_strength: float | None = None,
    equalize: bool = False,
    clip_limit: float | None = 2.0,
) -> np.ndarray:
    """Raw decoder output -> float32 model input, in the order of the curated set.

    1. `to_grayscale` (16-bit and float data on the `window` percentiles);
    2. optional `denoise` with `denoise_strength` (before resizing, where the noise is still fine-grained);
    3. `resize_shorter_side` to `size` (raises `UpsampleError` unless `allow_upsample`);
    4. `centre_crop` to (size, size) when `crop` is True;
    5. optional `equalize_histogram` (CLAHE with `clip_limit`, or global when `clip_limit` is None).
    """
    gray = to_grayscale(image, window=window)
    if denoise_strength:
        gray = denoise(gray, denoise_strength)
    gray = resize_shorter_side(gray, size, allow_upsample=allow_upsample)
    if crop:
        gray = centre_crop(gray, size)
    if equalize:
        gray = equalize_histogram(gray, clip_limit=clip_limit)
    return gray
