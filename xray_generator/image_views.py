"""Self-contained HTML views of images: a before/after slider and a 1:1-pixel scroll view.

Both are plain HTML strings with the images inlined as PNG data URIs and a few lines of inline
JavaScript, for `st.components.v1.html`. They load nothing from the network: the studio must work
offline, and the ready-made slider component on PyPI (`streamlit-image-comparison`) loads its
script and stylesheet from a CDN at run time, so it is not used. No Streamlit here.
"""
from __future__ import annotations

import base64
import html
import io

import numpy as np

SLIDER_LABEL_ROOM = 34  # px under the images for the caption line


def png_data_uri(image: np.ndarray) -> str:
    """A float (H, W) in [0, 1], uint8 (H, W) or uint8 (H, W, 3) image as a data:image/png URI."""
    from PIL import Image

    from xray_generator.io import to_uint8

    array = np.asarray(image)
    if array.dtype != np.uint8:
        if array.ndim != 2:
            raise ValueError(f"a float image must be 2-D (H, W), got shape {array.shape}")
        array = to_uint8(array)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected a (H, W) or (H, W, 3) image, got shape {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def comparison_slider_html(before: np.ndarray, after: np.ndarray, before_label: str, after_label: str,
                           display_width: int = 512, caption: str = "") -> str:
    """A before/after slider: `after` covers `before` to the right of a handle the user drags.

    Both images must have the same shape (they are compared pixel for pixel). The view is
    `display_width` px wide at most and shrinks with its frame; pixels are not smoothed.
    """
    if np.asarray(before).shape[:2] != np.asarray(after).shape[:2]:
        raise ValueError(f"before and after must have the same size, got {np.asarray(before).shape[:2]} and "
                         f"{np.asarray(after).shape[:2]}")
    height, width = np.asarray(before).shape[:2]
    left, right, note = (html.escape(text) for text in (before_label, after_label, caption))
    return f"""<!doctype html><html><head><meta charset="utf-8"><style>
body {{ margin: 0; font: 13px 'Source Sans Pro', sans-serif; color: #31333f; }}
.cmp {{ position: relative; width: 100%; max-width: {int(display_width)}px; aspect-ratio: {width} / {height};
        user-select: none; overflow: hidden; background: #000; }}
.cmp img {{ position: absolute; inset: 0; width: 100%; height: 100%; image-rendering: pixelated; pointer-events: none; }}
.cmp .after {{ clip-path: inset(0 0 0 50%); }}
.cmp .line {{ position: absolute; top: 0; bottom: 0; left: 50%; width: 2px; margin-left: -1px; background: #ffd33d; pointer-events: none; }}
.cmp .tag {{ position: absolute; top: 6px; padding: 1px 6px; background: rgba(0,0,0,.6); color: #fff; border-radius: 3px; pointer-events: none; }}
.cmp .tag.l {{ left: 6px; }} .cmp .tag.r {{ right: 6px; }}
.cmp input {{ position: absolute; inset: 0; width: 100%; height: 100%; margin: 0; opacity: 0; cursor: ew-resize; }}
.caption {{ margin-top: 4px; color: #808495; }}
</style></head><body>
<div class="cmp" data-testid="comparison-slider">
  <img class="before" alt="{left}" src="{png_data_uri(before)}">
  <img class="after" alt="{right}" src="{png_data_uri(after)}">
  <div class="line"></div><span class="tag l">{left}</span><span class="tag r">{right}</span>
  <input type="range" min="0" max="100" step="0.5" value="50" aria-label="Slide between {left} and {right}">
</div>
<div class="caption">{note}</div>
<script>
  const root = document.querySelector('.cmp');
  const range = root.querySelector('input');
  const show = () => {{ root.querySelector('.after').style.clipPath = `inset(0 0 0 ${{range.value}}%)`;
                        root.querySelector('.line').style.left = `${{range.value}}%`; }};
  range.addEventListener('input', show);
  show();
</script></body></html>"""


def slider_frame_height(display_width: int, shape: tuple[int, int]) -> int:
    """Height in px of the frame `comparison_slider_html` needs at `display_width` (images plus the caption line)."""
    height, width = shape[:2]
    return int(round(display_width * height / width)) + SLIDER_LABEL_ROOM


def pixel_view_html(image: np.ndarray, max_height: int = 720, caption: str = "") -> str:
    """The image at 1:1 (one image pixel per CSS pixel, unsmoothed) in a box that scrolls when it is larger."""
    height, width = np.asarray(image).shape[:2]
    return f"""<!doctype html><html><head><meta charset="utf-8"><style>
body {{ margin: 0; font: 13px 'Source Sans Pro', sans-serif; color: #808495; }}
.box {{ max-height: {int(max_height)}px; overflow: auto; border: 1px solid #ddd; }}
.box img {{ display: block; width: {width}px; height: {height}px; max-width: none; image-rendering: pixelated; }}
</style></head><body>
<div class="box"><img data-testid="pixel-view" alt="{html.escape(caption)}" src="{png_data_uri(image)}"></div>
<div>{html.escape(caption)}</div></body></html>"""


def pixel_view_height(shape: tuple[int, int], max_height: int = 720) -> int:
    """Frame height for `pixel_view_html`: the image (up to `max_height`), a scrollbar and the caption line."""
    return min(int(shape[0]), int(max_height)) + 2 + 16 + 24
