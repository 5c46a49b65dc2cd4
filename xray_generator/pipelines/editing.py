"""Text-guided editing of a real radiograph (SDEdit) and masked editing: the pieces around `XRayDiffusionPipeline.edit`.

    pipe = XRayDiffusionPipeline.from_pretrained("weights/ldm")
    result = pipe.edit(source, "right lower lobe pneumonia", strength=0.5, mask="right-lower", seed=0)
    result.image, result.difference, result.overlay, result.metadata

The denoising itself is the pipeline's (`XRayDiffusionPipeline.edit`); this module holds what is
specific to editing and has no model in it: preparing the source and the mask, the named lung
zones, the truncated timestep schedule (`edit_timesteps`, as diffusers' img2img `get_timesteps`),
compositing, the difference map and its overlay, and the result type.

Radiological convention
-----------------------
A frontal (PA or AP) chest film is viewed as if facing the patient, so **the patient's right
lung is on the image's LEFT** and the patient's left lung on the image's right. The region names
are anatomical: ``"right-lower"`` is the lower half of the lung on the left half of the image.

The zones are a fixed geometric template (one ellipse per lung, split at its centre into upper
and lower), sized for a centred adult or paediatric frontal film cropped to a square, not a lung
segmentation; on an off-centre or rotated film they are approximate. Use an explicit mask when
the anatomy matters.

Pixels outside the mask
-----------------------
Outside the mask the latents are replaced at every step by the source latents noised to that
step, so the edit cannot spread there. The VAE still changes a reconstruction slightly
everywhere, so after decoding the *source pixels* are put back outside the mask, joined to the
edit with a Gaussian feather of `FEATHER_SIGMA` px centred on the mask edge: pixels farther than
about 3 sigma outside the mask are exactly the source, and inside the mask the decoded edit is
kept. This compositing is recorded in the metadata (`outside_mask`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from xray_generator.data.preprocessing import UpsampleError, prepare_radiograph

# Lung zones: (centre x, centre y, semi-axis x, semi-axis y) of each lung's ellipse as fractions
# of the square film. "right" lung = patient's right = image LEFT (radiological convention).
_LUNG_ELLIPSES = {"right": (0.29, 0.47, 0.19, 0.35), "left": (0.71, 0.47, 0.19, 0.35)}
REGIONS: dict[str, str] = {
    "right-upper": "patient's right upper zone (image left, upper half of the lung)",
    "right-lower": "patient's right lower zone (image left, lower half of the lung)",
    "left-upper": "patient's left upper zone (image right, upper half of the lung)",
    "left-lower": "patient's left lower zone (image right, lower half of the lung)",
    "right": "patient's right lung (image left)",
    "left": "patient's left lung (image right)",
}
FEATHER_SIGMA = 2.0  # px at the working size; the seam between edit and source
DIFFERENCE_GAIN = 4.0  # difference PNGs and overlays show |edit - source| x 4 (a 64-grey-level change is white)
MIN_SOURCE_SIDE = 64


class EditInputError(ValueError):
    """An edit input (source, mask, region, strength) that cannot be used; the message says why."""


@dataclass
class EditResult:
    """One edited radiograph, all arrays at the model's working size (256 x 256 for the shipped model).

    image : float32 (H, W) in [0, 1]      the edited, SYNTHETIC image
    source : float32 (H, W) in [0, 1]     the source after the same resize / centre crop
    difference : float32 (H, W) in [0, 1] |image - source|
    overlay : uint8 (H, W, 3)             the source in grey with the difference in colour
    mask : float32 (H, W) in [0, 1] or None   the edit mask (1 = edit) at the working size
    metadata : dict                        provenance (prompt, strength, seed, ..., synthetic=True)
    notices : list of str                  things the user should know (resizing, no step ran)
    """

    image: np.ndarray
    source: np.ndarray
    difference: np.ndarray
    overlay: np.ndarray
    mask: np.ndarray | None
    metadata: dict[str, Any]
    notices: list[str] = field(default_factory=list)

    @property
    def pil_image(self):
        from PIL import Image

        return Image.fromarray(to_uint8(self.image), mode="L")


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def check_strength(strength: Any) -> float:
    """`strength` as a float in [0, 1]; EditInputError otherwise."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.integer, np.floating)) or not np.isfinite(strength) \
            or not 0.0 <= float(strength) <= 1.0:
        raise EditInputError(f"strength must be a number from 0 (keep the source) to 1 (ignore it), got {strength!r}")
    return float(strength)


def _as_array(image: Any, what: str) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise EditInputError(f"{what} must be a numeric array, got {type(image).__name__} of {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        pass  # colour / single-channel files: to_grayscale handles them
    elif arr.ndim != 2:
        raise EditInputError(f"{what} must be a 2-D (H, W) image, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise EditInputError(f"{what} contains NaN or infinite values")
    return arr


def prepare_source(image: Any, size: int) -> tuple[np.ndarray, list[str]]:
    """The source radiograph as float32 (size, size) in [0, 1], with notices about what was done.

    Uses the data layer's `prepare_radiograph` (grayscale, percentile window for 16-bit data,
    shorter side to `size`, centre crop), so an edit sees its source as training saw real films.
    Smaller sources are enlarged (with a notice): editing needs the model's size.
    """
    arr = _as_array(image, "the source image")
    height, width = arr.shape[:2]
    if min(height, width) < MIN_SOURCE_SIDE:
        raise EditInputError(f"the source image is {width} x {height} pixels; editing needs at least {MIN_SOURCE_SIDE} on each side")
    notices = []
    try:
        prepared = prepare_radiograph(arr, size, allow_upsample=True)
    except UpsampleError as exc:  # not raised with allow_upsample, kept for clarity of intent
        raise EditInputError(str(exc)) from exc
    if (height, width) != (size, size):
        change = "enlarged" if min(height, width) < size else "resized"
        crop = " and centre-cropped" if height != width else ""
        notices.append(f"the {width} x {height} source was {change}{crop} to {size} x {size}, the model's size")
    return prepared, notices


def region_mask(name: str, size: int) -> np.ndarray:
    """The named lung zone as a float32 (size, size) mask of 0 and 1 (see the module docstring)."""
    if not isinstance(name, str) or name not in REGIONS:
        raise EditInputError(f"unknown region {name!r}; choose one of {', '.join(REGIONS)}")
    side, _, zone = name.partition("-")
    cx, cy, ax, ay = _LUNG_ELLIPSES[side]
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size
    inside = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0
    if zone == "upper":
        inside &= y < cy
    elif zone == "lower":
        inside &= y >= cy
    return inside.astype(np.float32)


def prepare_mask(mask: Any, source_shape: tuple[int, int], size: int) -> tuple[np.ndarray | None, str]:
    """(float32 (size, size) mask of 0/1 or None, description for the metadata).

    `mask` is None (edit everywhere), a region name from `REGIONS`, or an array (H, W) of bool or
    numbers in [0, 1] (1 = edit; values are thresholded at 0.5) with the source image's (H, W) or
    the working (size, size); it goes through the same resize and centre crop as the source.
    """
    if mask is None:
        return None, "none (whole image)"
    if isinstance(mask, str):
        return region_mask(mask, size), f"region {mask}: {REGIONS[mask]}"
    arr = _as_array(mask, "the mask")
    if arr.ndim == 3:
        raise EditInputError(f"the mask must be a 2-D (H, W) array, got shape {arr.shape}")
    if arr.shape not in (tuple(source_shape), (size, size)):
        raise EditInputError(
            f"the mask is {arr.shape[1]} x {arr.shape[0]} pixels but the source image is {source_shape[1]} x {source_shape[0]}; "
            f"they must match (or the mask must be {size} x {size})"
        )
    values = arr.astype(np.float32)
    if arr.dtype != np.bool_ and (values.min() < 0.0 or values.max() > 1.0):
        if np.issubdtype(arr.dtype, np.integer) and values.max() <= 255:
            values = values / 255.0  # an 8-bit mask image
        else:
            raise EditInputError("mask values must be booleans or numbers in [0, 1] (1 = edit)")
    if values.shape != (size, size):
        values = prepare_radiograph(values, size, allow_upsample=True)
    binary = (values >= 0.5).astype(np.float32)
    if not binary.any():
        raise EditInputError("the mask selects no pixels; mark the area to edit with 1 (white)")
    digest = hashlib.sha256(np.packbits(binary.astype(bool)).tobytes()).hexdigest()[:16]
    return binary, f"mask ({binary.mean():.1%} of the image, sha256 {digest})"


def edit_timesteps(scheduler, num_inference_steps: int, strength: float) -> torch.Tensor:
    """The last `strength` fraction of the scheduler's timesteps, as diffusers' img2img `get_timesteps`.

    Calls `scheduler.set_timesteps(num_inference_steps)` first. `int(num_inference_steps * strength)`
    steps run: strength 0 runs none (the source comes back through the VAE), strength 1 runs all.
    """
    scheduler.set_timesteps(num_inference_steps)
    kept = min(int(num_inference_steps * strength), num_inference_steps)
    start = max(num_inference_steps - kept, 0) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


def latent_mask(mask: np.ndarray, latent_shape: tuple[int, int]) -> torch.Tensor:
    """(1, 1, h, w) float mask at latent resolution: a latent cell is edited if any of its pixels is."""
    height, width = mask.shape
    h, w = latent_shape
    cells = mask.reshape(h, height // h, w, width // w).max(axis=(1, 3))
    return torch.from_numpy(np.ascontiguousarray(cells, dtype=np.float32))[None, None]


def feather(mask: np.ndarray, sigma: float = FEATHER_SIGMA) -> np.ndarray:
    """Soft compositing weights: the mask blurred by a Gaussian of `sigma` px, in [0, 1]."""
    return np.clip(cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma), 0.0, 1.0)


def composite(edited: np.ndarray, source: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The edit inside the (feathered) mask, the source pixels outside it."""
    if mask is None:
        return edited
    alpha = feather(mask)
    return (alpha * edited + (1.0 - alpha) * source).astype(np.float32)


def difference_overlay(source: np.ndarray, difference: np.ndarray, gain: float = DIFFERENCE_GAIN) -> np.ndarray:
    """RGB uint8: the source in grey with |difference| x `gain` in colour (fixed scale, so overlays compare)."""
    strength = np.clip(difference * gain, 0.0, 1.0)
    grey = np.repeat(to_uint8(source)[..., None], 3, axis=2).astype(np.float32)
    colour = cv2.applyColorMap(to_uint8(strength), cv2.COLORMAP_INFERNO)[..., ::-1].astype(np.float32)
    alpha = (0.85 * np.sqrt(strength))[..., None]
    return (grey * (1.0 - alpha) + colour * alpha + 0.5).astype(np.uint8)


def mean_change_outside(source: np.ndarray, edited: np.ndarray, mask: np.ndarray) -> float:
    """Mean |edited - source| over the pixels outside `mask`, in 8-bit grey levels."""
    outside = np.asarray(mask) < 0.5
    if not outside.any():
        return 0.0
    return float(np.abs(to_uint8(edited).astype(np.int16) - to_uint8(source).astype(np.int16))[outside].mean())


def build_result(source: np.ndarray, edited: np.ndarray, mask: np.ndarray | None, metadata: dict, notices: list[str]) -> EditResult:
    difference = np.abs(edited - source).astype(np.float32)
    return EditResult(edited, source, difference, difference_overlay(source, difference), mask, metadata, notices)


def mask_from_upload(data: bytes, name: str = "mask") -> np.ndarray:
    """A mask image file (PNG, ...) as a bool (H, W) array: white (>= 50 % grey) = edit."""
    from xray_generator.io import decode_upload

    return decode_upload(data, name) >= 0.5


def difference_image(result: EditResult, gain: float = DIFFERENCE_GAIN) -> np.ndarray:
    """|edit - source| x `gain` as a float (H, W) image in [0, 1], for saving and display."""
    return np.clip(result.difference * gain, 0.0, 1.0).astype(np.float32)


def difference_metadata(result: EditResult, gain: float = DIFFERENCE_GAIN) -> dict:
    """Metadata of the difference PNG: the edit's provenance plus what the pixels mean."""
    return {**result.metadata, "image": f"absolute difference |edited - source| x {gain:g} (grey level = change x {gain:g})",
            "difference_gain": gain}
