"""Image input and output at the library's edge: safe decoding, conversions, PNGs with provenance."""
from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
from PIL import Image

# Refuse anything larger before decoding: a decompression bomb is a tiny file that claims a huge canvas.
MAX_PIXELS = 8192 * 8192
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageLoadError(ValueError):
    """An input that is not a usable radiograph image; the message says why."""



def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any], make_parents: bool = False) -> Path:
    """Write through a temporary file beside `path`, fsync, then `os.replace`.

    The one way files are written in this project: a crash, a full disk or a kill mid-write
    leaves the previous file intact, never half of a new one.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise FileNotFoundError(f"folder does not exist: {path.parent}")
    # Beside the target so the replace is a rename within one file system; created with open(),
    # unlike mkstemp, so the file gets the user's usual permissions.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes, make_parents: bool = True) -> Path:
    return atomic_write(path, lambda handle: handle.write(data), make_parents=make_parents)


def atomic_write_text(path: str | Path, text: str, make_parents: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), make_parents=make_parents)


def atomic_save_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Save torch tensors as a safetensors file atomically (a temporary file beside `path`, fsync, replace).

    safetensors writes to a file name, not a handle, so this cannot go through `atomic_write`; it
    streams to disk instead of holding a second copy of a large latent cache in memory.
    """
    from safetensors.torch import save_file  # here, not at the top: reading an image should not import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def to_float_gray(array: np.ndarray) -> np.ndarray:
    """Any 2-D/3-D image array -> float32 (H, W) in [0, 1]. uint16 keeps its precision."""
    arr = np.asarray(array)
    if arr.ndim == 3:
        if arr.shape[2] == 4:  # RGBA: the radiograph is in the colour channels
            arr = arr[..., :3]
        if arr.shape[2] == 3:
            arr = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            source_dtype = np.asarray(array).dtype
            if source_dtype == np.uint16:
                arr = arr / 65535.0
            elif source_dtype == np.uint8:
                arr = arr / 255.0  # float RGB is taken to be in [0, 1] already
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


PNG_METADATA_KEY = "cxr_studio"
SYNTHETIC_NOTICE = "SYNTHETIC chest X-ray generated by CXR Studio. Research use only. Not for clinical use."


def png_bytes_with_metadata(image: np.ndarray, metadata: dict) -> bytes:
    """8-bit grayscale PNG bytes with the generation parameters as JSON in a tEXt chunk."""
    import io as _io
    import json

    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_METADATA_KEY, json.dumps(metadata, sort_keys=True))
    info.add_text("Description", SYNTHETIC_NOTICE)
    info.add_text("Software", "CXR Studio")
    buffer = _io.BytesIO()
    Image.fromarray(to_uint8(image), mode="L").save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png_with_metadata(image: np.ndarray, path: str | Path, metadata: dict) -> Path:
    """Write the PNG atomically, so an interrupted run never leaves a half-written file."""
    atomic_write_bytes(path, png_bytes_with_metadata(image, metadata))
    return Path(path)


def read_png_metadata(path_or_bytes: str | Path | bytes) -> dict:
    """The generation parameters embedded by `save_png_with_metadata` ({} if there are none)."""
    import io as _io
    import json

    source = _io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
    with Image.open(source) as im:
        text = im.info.get(PNG_METADATA_KEY)
    return json.loads(text) if text else {}


# ------------------------------------------------------------------ uploads
# A chest radiograph is roughly square; a strip or a thumbnail is a wrong file, not an image to enhance.
MIN_UPLOAD_SIDE = 16
MAX_UPLOAD_ASPECT = 8.0
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
UPLOAD_TYPES = ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "webp", "dcm")
# The Pillow decoders an upload may reach. Naming them keeps untrusted bytes away from the rest
# (EPS would hand them to Ghostscript; rarely used plugins are less hardened).
UPLOAD_PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")


def check_image_dimensions(width: int, height: int, name: str = "image") -> None:
    """Refuse sizes no radiograph has, before any pixel is decoded; ImageLoadError says why."""
    if width < 1 or height < 1:
        raise ImageLoadError(f"{name} has no pixels ({width} x {height})")
    if width * height > MAX_PIXELS:
        raise ImageLoadError(f"{name} is {width} x {height} pixels, over the limit of {MAX_PIXELS:,} pixels (possible decompression bomb)")
    if min(width, height) < MIN_UPLOAD_SIDE:
        raise ImageLoadError(f"{name} is only {width} x {height} pixels; a radiograph needs at least {MIN_UPLOAD_SIDE} pixels on each side")
    aspect = max(width, height) / min(width, height)
    if aspect > MAX_UPLOAD_ASPECT:
        raise ImageLoadError(f"{name} is {width} x {height} pixels, {aspect:.0f} times longer than wide; a chest radiograph is close to square")


def decode_upload(data: bytes, name: str = "upload") -> np.ndarray:
    """Decode uploaded bytes (PNG, JPEG, TIFF, BMP, WebP or DICOM) to float32 (H, W) in [0, 1].

    The size in the header is checked before the pixels are decoded, so a decompression bomb costs
    nothing. 16-bit greyscale keeps its precision; RGBA, palette and other colour modes become grey
    (alpha is ignored); EXIF rotation is applied; a multi-frame file gives its first frame. DICOM
    (by the .dcm suffix or the DICM marker) goes to `xray_generator.dicom.read_dicom_bytes`. Other
    formats Pillow knows (GIF, EPS, ICO ...) are refused: untrusted bytes reach only these decoders.

    Raises
    ------
    ImageLoadError
        Empty or oversized input, bytes that are no image, truncated or damaged files, and sizes no
        radiograph has (see `check_image_dimensions`); the message names the file and the problem.
        The built-in errors Pillow's and pydicom's parsers raise on damaged bytes become ImageLoadError
        too (tests/test_input_validation.py fuzzes this).
    """
    import io as _io
    import struct
    import warnings

    from PIL import ImageOps, UnidentifiedImageError

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageLoadError(f"{name}: expected the file's bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ImageLoadError(f"{name} is empty (0 bytes)")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageLoadError(f"{name} is {len(data) / 2**20:.0f} MB; the limit is {MAX_UPLOAD_BYTES / 2**20:.0f} MB")
    from xray_generator.dicom import looks_like_dicom, read_dicom_bytes

    if str(name).lower().endswith((".dcm", ".dicom")) or looks_like_dicom(data):
        return read_dicom_bytes(data, name)
    try:
        with warnings.catch_warnings():
            # Damaged files make the decoders warn (corrupt EXIF, short tags); the outcome is what counts.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(_io.BytesIO(data), formats=UPLOAD_PIL_FORMATS) as im:
                check_image_dimensions(*im.size, name)  # the header only: nothing decoded yet
                im.seek(0)
                im.load()
                im = ImageOps.exif_transpose(im)
                return _pil_to_float_gray(im, name)
    except ImageLoadError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"{name} is not an image file this studio can read (PNG, JPEG, TIFF, BMP, WebP or DICOM)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"{name} claims more pixels than the limit of {MAX_PIXELS:,} (possible decompression bomb)") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, LookupError, TypeError, AttributeError,
            ArithmeticError, MemoryError) as exc:
        # Pillow's format plugins let built-in errors through on damaged headers and pixel streams.
        text = str(exc)
        damaged = any(word in text.lower() for word in ("truncated", "broken", "crc", "corrupt"))
        reason = "the file is truncated or damaged" if damaged or not isinstance(exc, (OSError, ValueError)) else text
        raise ImageLoadError(f"{name} could not be decoded: {reason}") from exc


def _pil_to_float_gray(im: Image.Image, name: str) -> np.ndarray:
    """A decoded PIL image of any mode -> float32 (H, W) in [0, 1]."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return to_float_gray(np.asarray(im, dtype=np.uint16))
    if im.mode in ("I", "F"):
        # 32-bit integer or float files (scientific TIFFs) have no fixed range: stretch what is there.
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ImageLoadError(f"{name} contains NaN or infinite values")
        if im.mode == "I" and arr.min() >= 0 and arr.max() <= 65535:
            return (arr / (65535.0 if arr.max() > 255 else 255.0)).astype(np.float32)
        low, high = float(arr.min()), float(arr.max())
        return ((arr - low) / (high - low) if high > low else np.zeros_like(arr)).astype(np.float32)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "RGB", "LA", "L"):
        return to_float_gray(np.asarray(im if im.mode != "LA" else im.getchannel("L")))
    return to_float_gray(np.asarray(im.convert("L")))
