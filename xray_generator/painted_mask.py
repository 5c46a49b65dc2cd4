"""Edit masks painted in the browser: the canvas's RGBA strokes (and a lung zone to start from) to a 0/1 mask.

The Edit page draws the film (as the model sees it, at its working size) behind a drawing canvas.
The brush paints translucent `PAINT_RGBA`, the eraser translucent `ERASE_RGBA`; the canvas sends
back only its strokes as an RGBA image (the film is behind the canvas, not in it). Where strokes
overlap, the later one is on top and its colour dominates the blend, so a pixel is

* edited if its top stroke is the brush,
* kept if its top stroke is the eraser,
* otherwise edited exactly where the starting lung zone is (none: nowhere).

The mask is then area-averaged to the working size and thresholded at half a pixel, which is what
`pipelines.editing.prepare_mask` expects. No Streamlit here; the page calls these functions.
"""
from __future__ import annotations

import numpy as np

PAINT_RGBA = (255, 64, 64, 0.5)
ERASE_RGBA = (64, 160, 255, 0.5)
ZONE_TINT = (255, 64, 64)
ZONE_OPACITY = 0.35
# Canvas alpha below this is anti-aliasing fringe, not a stroke (8-bit alpha).
MIN_STROKE_ALPHA = 32


def css_rgba(rgba: tuple[int, int, int, float]) -> str:
    r, g, b, a = rgba
    return f"rgba({r}, {g}, {b}, {a})"


def stroke_masks(canvas_rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(painted, erased) bool masks at the canvas's size from its RGBA strokes.

    A stroke pixel is brush where red outweighs blue (the brush is red, the eraser blue), eraser
    otherwise; translucent strokes over each other keep the top colour dominant.
    """
    rgba = np.asarray(canvas_rgba)
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"the canvas image must be (H, W, 4) RGBA, got shape {rgba.shape}")
    stroke = rgba[..., 3] >= MIN_STROKE_ALPHA
    red = rgba[..., 0].astype(np.int16)
    blue = rgba[..., 2].astype(np.int16)
    painted = stroke & (red > blue)
    return painted, stroke & ~painted


def mask_at_size(mask: np.ndarray, size: int) -> np.ndarray:
    """A (H, W) 0/1 mask area-averaged to (size, size) and thresholded at 0.5, as float32 0/1."""
    import cv2

    values = np.asarray(mask, dtype=np.float32)
    if values.shape != (size, size):
        values = cv2.resize(values, (size, size), interpolation=cv2.INTER_AREA)
    return (values >= 0.5).astype(np.float32)


def painted_mask(canvas_rgba: np.ndarray | None, size: int, start: np.ndarray | None = None) -> np.ndarray:
    """The edit mask at (size, size), float32 0/1: `start` (a zone at working size, or None) plus brush minus eraser.

    `canvas_rgba` is the canvas's stroke image at any square size (None: nothing painted yet).
    """
    base = np.zeros((size, size), np.float32) if start is None else np.asarray(start, np.float32)
    if base.shape != (size, size):
        raise ValueError(f"the starting mask must be {size} x {size}, got {base.shape}")
    if canvas_rgba is None:
        return (base >= 0.5).astype(np.float32)
    painted, erased = stroke_masks(canvas_rgba)
    if painted.shape[0] != painted.shape[1]:
        raise ValueError(f"the canvas must be square, got {painted.shape[1]} x {painted.shape[0]}")
    import cv2

    upscaled_base = cv2.resize(base, painted.shape[::-1], interpolation=cv2.INTER_NEAREST) >= 0.5
    combined = painted | (upscaled_base & ~erased)
    return mask_at_size(combined, size)


def canvas_background(film: np.ndarray, start: np.ndarray | None, side: int) -> np.ndarray:
    """RGB uint8 (side, side): the film as the model sees it, enlarged for painting, the starting zone tinted."""
    import cv2

    from xray_generator.io import to_uint8

    grey = cv2.resize(to_uint8(film), (side, side), interpolation=cv2.INTER_LINEAR)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    if start is not None:
        zone = cv2.resize(np.asarray(start, np.float32), (side, side), interpolation=cv2.INTER_NEAREST)[..., None] >= 0.5
        tinted = rgb * (1 - ZONE_OPACITY) + np.array(ZONE_TINT, np.float32) * ZONE_OPACITY
        rgb = np.where(zone, tinted, rgb)
    return (rgb + 0.5).astype(np.uint8)
