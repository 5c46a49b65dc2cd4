"""DICOM at the library's edge: export a generated image marked as synthetic, and read uploads safely.

Export writes a Secondary Capture object, the IOD DICOM defines for images that no modality
acquired. Everything a viewer or PACS shows says the image is synthetic:

* ImageType ``DERIVED\\SECONDARY\\SYNTHETIC`` and ConversionType ``SYN`` (synthetic image);
* SeriesDescription and StudyDescription begin with ``SYNTHETIC``; PatientName is ``SYNTHETIC^IMAGE``;
* ImageComments hold the notice and the generation parameters (model, weights hash, prompt, seed ...)
  as JSON, so the file carries what made it, as the PNG export does;
* BurnedInAnnotation says whether the word SYNTHETIC is drawn into the pixels (optional).

No pixel spacing is written: the image has no physical geometry, and a viewer should not offer
measurements in millimetres.
"""
from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import numpy as np

from xray_generator.io import MAX_PIXELS, SYNTHETIC_NOTICE, ImageLoadError, check_image_dimensions

MODALITIES = ("OT", "DX")
# DICOM value length limits (PS3.5 table 6.2-1) for the VRs written below.
_LO_MAX, _ST_MAX, _LT_MAX = 64, 1024, 10240


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _image_comments(metadata: dict) -> str:
    """The notice plus the parameters as JSON, with the prompt shortened if the LT limit needs it."""
    params = dict(metadata)
    text = f"{SYNTHETIC_NOTICE} Generation parameters: {json.dumps(params, sort_keys=True)}"
    if len(text) > _LT_MAX and isinstance(params.get("prompt"), str):
        overflow = len(text) - _LT_MAX + 3
        params["prompt"] = params["prompt"][: max(0, len(params["prompt"]) - overflow - 3)] + "..."
        text = f"{SYNTHETIC_NOTICE} Generation parameters: {json.dumps(params, sort_keys=True)}"
    return _fit(text, _LT_MAX)


def burn_in_synthetic_label(image: np.ndarray, text: str = "SYNTHETIC") -> np.ndarray:
    """A copy of `image` with `text` drawn in its top-left corner, white on a dark outline."""
    import cv2

    out = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    height, width = out.shape
    scale = max(0.3, width / 640.0)
    thickness = max(1, round(scale * 2))
    origin = (max(2, width // 64), max(12, int(28 * scale)))
    # OpenCV draws text only into 8-bit images: draw a mask, then paint the float image through it.
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.putText(mask, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, 1, thickness + 2, cv2.LINE_AA)
    outline = mask > 0
    mask[:] = 0
    cv2.putText(mask, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, 1, thickness, cv2.LINE_AA)
    out[outline] = 0.0
    out[mask > 0] = 1.0
    return out


def synthetic_dicom_dataset(image: np.ndarray, metadata: dict, *, modality: str = "OT", burn_in_label: bool = False):
    """A pydicom FileDataset (Secondary Capture, 16-bit MONOCHROME2) for one generated image.

    Parameters
    ----------
    image : float (H, W) in [0, 1]
        Stored as 16-bit so the decoder's precision beyond 8 bits is kept.
    metadata : dict
        Generation parameters (the pipeline's per-image metadata); written to ImageComments.
    modality : "OT" (default) or "DX"
        OT (other) is the honest default for an image no modality acquired; DX lets viewers apply
        their radiograph hanging protocols. Either way the object is a Secondary Capture.
    burn_in_label : bool, default False
        Draw "SYNTHETIC" into the pixels; BurnedInAnnotation records the choice.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, SecondaryCaptureImageStorage, generate_uid

    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 2 or arr.size == 0 or not np.isfinite(arr).all():
        raise ValueError(f"expected a finite float image of shape (H, W), got shape {arr.shape}")
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if burn_in_label:
        arr = burn_in_synthetic_label(arr)
    pixels = (np.clip(arr, 0.0, 1.0) * 65535.0 + 0.5).astype("<u2")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)

    now = datetime.now(timezone.utc)
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    model = str(metadata.get("model", "unknown"))
    weights = str(metadata.get("weights_sha256", "unknown"))

    # SOP common, patient and study: there is no patient, and the names say so.
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: prompts may hold any character
    ds.PatientName = "SYNTHETIC^IMAGE"
    ds.PatientID = "SYNTHETIC"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = generate_uid()
    ds.StudyDate, ds.StudyTime = date, time
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = _fit("SYNTHETIC chest X-ray - research use only, not for clinical use", _LO_MAX)
    # Series and equipment.
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDescription = _fit(f"SYNTHETIC CXR Studio {model} - not for clinical use", _LO_MAX)
    ds.BodyPartExamined = "CHEST"
    ds.ConversionType = "SYN"
    ds.Manufacturer = "CXR Studio"
    ds.ManufacturerModelName = _fit(model, _LO_MAX)
    ds.SoftwareVersions = _fit(f"weights {weights}", _LO_MAX)
    # Image.
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = date, time
    ds.ImageType = ["DERIVED", "SECONDARY", "SYNTHETIC"]
    ds.BurnedInAnnotation = "YES" if burn_in_label else "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    # What the image was made from: a prompt (latent diffusion), a real film (the CVAE's translation) or noise.
    origin = ("a text prompt" if "prompt" in metadata else
              "a source radiograph translated to a target condition" if metadata.get("kind") == "translation" else "random noise")
    ds.DerivationDescription = _fit(
        f"Synthetic image generated by CXR Studio model {model} (weights sha256 {weights}) from {origin}; "
        "not acquired from a patient.",
        _ST_MAX,
    )
    ds.ImageComments = _image_comments(metadata)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.WindowCenter = 32768
    ds.WindowWidth = 65536
    ds.PixelData = pixels.tobytes()
    return ds


def dicom_bytes(image: np.ndarray, metadata: dict, *, modality: str = "OT", burn_in_label: bool = False) -> bytes:
    """The DICOM Part 10 file for `synthetic_dicom_dataset`, as bytes."""
    from pydicom import dcmwrite

    buffer = io.BytesIO()
    dcmwrite(buffer, synthetic_dicom_dataset(image, metadata, modality=modality, burn_in_label=burn_in_label), enforce_file_format=True)
    return buffer.getvalue()


def looks_like_dicom(data: bytes) -> bool:
    """True when the bytes carry the Part 10 'DICM' marker after the 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def read_dicom_bytes(data: bytes, name: str = "upload.dcm") -> np.ndarray:
    """Decode an uploaded DICOM file to float32 (H, W) in [0, 1] for display and enhancement.

    The header is read first and the pixel count checked against `MAX_PIXELS` before any pixel
    data is decoded. The modality LUT (rescale) and the first VOI window are applied, MONOCHROME1 is
    inverted so that bone is bright, and the result is stretched to [0, 1]. Multi-frame objects give
    their first frame; colour ones are converted to grey.

    Raises
    ------
    ImageLoadError
        For bytes that are not DICOM, objects without an image, images over the size limit or of
        unusable shape, and compressed pixel data this installation cannot decode; the message says which.
    """
    import warnings

    with warnings.catch_warnings():
        # pydicom warns about every non-conformant detail it reads past; the outcome is what counts.
        warnings.simplefilter("ignore")
        return _read_dicom_bytes(data, name)


def _read_dicom_bytes(data: bytes, name: str) -> np.ndarray:
    from pydicom import dcmread

    if not data:
        raise ImageLoadError(f"{name} is empty")
    errors = _parse_errors()
    try:
        header = dcmread(io.BytesIO(data), stop_before_pixels=True, force=not looks_like_dicom(data))
        has_size = "Rows" in header and "Columns" in header
    except errors as exc:
        raise ImageLoadError(f"{name} is not a readable DICOM file: {exc}") from exc
    if not has_size and not looks_like_dicom(data):
        raise ImageLoadError(f"{name} is not a DICOM file (no DICM marker and no image attributes)")
    if not has_size:
        raise ImageLoadError(f"{name} is a DICOM file without an image (no Rows/Columns), e.g. a report or structured document")
    try:
        # pydicom converts an element's value when it is first read, so a damaged header fails here.
        rows, columns = int(header.Rows), int(header.Columns)
        frames = int(header.get("NumberOfFrames", 1) or 1)
        samples = int(header.get("SamplesPerPixel", 1) or 1)
    except errors as exc:
        raise ImageLoadError(f"{name} has an unreadable image size: {exc}") from exc
    if rows * columns > MAX_PIXELS:
        raise ImageLoadError(f"{name} is {columns} x {rows} pixels, over the limit of {MAX_PIXELS:,} pixels")
    check_image_dimensions(columns, rows, name)
    if frames < 1 or (frames > 1 and rows * columns * frames > 4 * MAX_PIXELS):
        raise ImageLoadError(f"{name} has {frames} frames of {columns} x {rows} pixels, too much to decode")
    if samples not in (1, 3):
        raise ImageLoadError(f"{name} has {samples} samples per pixel; expected 1 (grey) or 3 (colour)")

    try:
        ds = dcmread(io.BytesIO(data), force=not looks_like_dicom(data))
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise ImageLoadError(f"{name} has image attributes but no pixel data")
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    except ImageLoadError:
        raise
    except errors as exc:
        raise ImageLoadError(f"{name} is not a readable DICOM file: {exc}") from exc
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        if _is_compressed(syntax):
            raise ImageLoadError(
                f"{name} uses the compressed transfer syntax {getattr(syntax, 'name', str(syntax))!r}, which this installation "
                "cannot decode; export it uncompressed (explicit VR little endian) or as PNG"
            ) from exc
        raise ImageLoadError(f"{name}: the pixel data could not be decoded ({exc})") from exc
    except errors as exc:
        raise ImageLoadError(f"{name}: the pixel data could not be decoded ({exc})") from exc
    try:
        return _dicom_pixels_to_float(ds, pixels, frames, samples, name)
    except ImageLoadError:
        raise
    except errors as exc:
        raise ImageLoadError(f"{name}: the image attributes could not be applied ({exc})") from exc


def _is_compressed(syntax) -> bool:
    try:
        return bool(syntax is not None and syntax.is_compressed)
    except (ValueError, AttributeError):  # not a known transfer syntax UID
        return False


def _parse_errors() -> tuple[type[BaseException], ...]:
    """What pydicom raises on damaged bytes: its own errors plus the built-ins its parsers let through."""
    import struct

    from pydicom.errors import BytesLengthException, InvalidDicomError

    return (InvalidDicomError, BytesLengthException, NotImplementedError, EOFError, ValueError, TypeError, OSError,
            LookupError, AttributeError, OverflowError, ArithmeticError, struct.error, MemoryError)


def _dicom_pixels_to_float(ds, pixels: np.ndarray, frames: int, samples: int, name: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = np.asarray(pixels)
    if frames > 1:
        arr = arr[0]
    if samples == 3:
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    else:
        try:
            arr = apply_modality_lut(arr, ds)
            if "WindowCenter" in ds or "VOILUTSequence" in ds:
                arr = apply_voi_lut(arr, ds, index=0)
        except (ValueError, TypeError, LookupError, AttributeError, NotImplementedError, ArithmeticError):
            pass  # a malformed LUT: fall back to the stored values, stretched below
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2:
        raise ImageLoadError(f"{name}: expected a 2-D image, got pixel data of shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ImageLoadError(f"{name}: the pixel data contains NaN or infinite values")
    low, high = float(arr.min()), float(arr.max())
    out = (arr - low) / (high - low) if high > low else np.zeros_like(arr)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 1.0 - out  # MONOCHROME1 stores bone dark; the library's convention is bone bright
    return np.ascontiguousarray(out, dtype=np.float32)


def read_dicom_comments(data: bytes) -> str:
    """ImageComments of a DICOM file ('' if absent); handy to check an export's provenance."""
    from pydicom import dcmread

    return str(dcmread(io.BytesIO(data), stop_before_pixels=True).get("ImageComments", ""))
