"""Image input and output at the library's edge: safe decoding, conversions, PNGs with provenance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Refuse anything larger before decoding: a decompression bomb is a tiny file that claims a huge canvas.
MAX_PIXELS = 8192 * 8192
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageLoadError(ValueError):
    """An input that is not a usable radiograph image; the message says why."""


def to_float_gray(array: np.ndarray) -> np.ndarray:
    """Any 2-D/3-D image array -> float32 (H, W) in [0, 1]. uint16 keeps its precision."""
    arr = np.asarray(array)
    if arr.ndim == 3:
        if arr.shape[2] == 4:  # RGBA: the radiograph is in the colour channels
            arr = arr[..., :3]
        if arr.shape[2] == 3:
            arr = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            arr = arr / (65535.0 if np.asarray(array).dtype == np.uint16 else 255.0)
            return np.clip(arr, 0.0, 1.0).astype(np.float32)
        if arr.shape[2] == 1:
            arr = arr[..., 0]
    if arr.ndim != 2:
        raise ImageLoadError(f"expected a 2-D grayscale image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    out = arr.astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def read_gray(path: str | Path) -> np.ndarray:
    """Read an image file as float32 (H, W) in [0, 1]."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.uint16) if im.mode != "I" else np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
                return to_float_gray(arr)
            return to_float_gray(np.asarray(im.convert("L")))
    except (OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ImageLoadError(f"could not read {Path(path).name}: {exc}") from exc


def read_gray_uint8(path: str | Path) -> np.ndarray:
    """Read an 8-bit radiograph as uint8 (H, W); used to keep training sets compact in memory."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
