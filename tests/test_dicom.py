"""DICOM export marks a generated image as synthetic; uploads (DICOM and image files) decode safely or say why not."""
from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest
from PIL import Image

from xray_generator.dicom import dicom_bytes, read_dicom_bytes, synthetic_dicom_dataset
from xray_generator.io import MAX_PIXELS, ImageLoadError, decode_upload

METADATA = {"model": "ldm", "weights_sha256": "abc123", "prompt": "left lower lobe pneumonia", "sampler": "dpm++",
            "steps": 14, "guidance": 4.0, "seed": 42, "synthetic": True}


NOISE = (np.random.default_rng(0).random((128, 128)) * 255).astype(np.uint8)  # incompressible, so cutting it truncates pixels


def gradient(height=64, width=64) -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))


def png(array: np.ndarray, mode: str | None = None, **save) -> bytes:
    buffer = io.BytesIO()
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(buffer, save.pop("format", "PNG"), **save)
    return buffer.getvalue()


# ------------------------------------------------------------------ export


def test_export_is_marked_derived_secondary_and_synthetic():
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(gradient(), METADATA)))
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "SYNTHETIC" in ds.SeriesDescription and "SYNTHETIC" in ds.StudyDescription
    assert ds.Modality == "OT"
    assert ds.BurnedInAnnotation == "NO"
    assert ds.ConversionType == "SYN"
    assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert str(ds.PatientName) == "SYNTHETIC^IMAGE"
    assert "PixelSpacing" not in ds  # no physical geometry to measure
    assert len(ds.SeriesDescription) <= 64


def test_export_carries_the_generation_parameters():
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(gradient(), METADATA)))
    comments = str(ds.ImageComments)
    assert "Not for clinical use" in comments
    parameters = json.loads(comments.split("Generation parameters: ", 1)[1])
    assert parameters["seed"] == 42 and parameters["prompt"] == METADATA["prompt"] and parameters["weights_sha256"] == "abc123"
    assert "abc123" in ds.SoftwareVersions


def test_export_keeps_16_bit_precision_and_round_trips():
    image = gradient()
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(image, METADATA)))
    assert ds.BitsStored == 16 and ds.PhotometricInterpretation == "MONOCHROME2"
    assert np.abs(ds.pixel_array / 65535.0 - image).max() < 1e-4
    assert np.abs(read_dicom_bytes(dicom_bytes(image, METADATA)) - image).max() < 1e-3


def test_dx_modality_and_burned_in_label_are_recorded():
    plain = gradient(128, 128) * 0.5
    ds = synthetic_dicom_dataset(plain, METADATA, modality="DX", burn_in_label=True)
    assert ds.Modality == "DX" and ds.BurnedInAnnotation == "YES"
    assert not np.array_equal(ds.pixel_array, (plain * 65535 + 0.5).astype(np.uint16))  # the label is in the pixels


def test_a_very_long_prompt_still_fits_image_comments():
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(gradient(), {**METADATA, "prompt": "opacity " * 3000})))
    assert len(ds.ImageComments) <= 10240


@pytest.mark.parametrize("bad, message", [(np.zeros((2, 4, 4), np.float32), "shape"), (np.full((8, 8), np.nan, np.float32), "finite")])
def test_export_refuses_bad_images(bad, message):
    with pytest.raises(ValueError, match=message):
        dicom_bytes(bad, METADATA)


# ------------------------------------------------------------------ DICOM uploads


def dicom_with(pixels: np.ndarray, **attributes) -> bytes:
    ds = synthetic_dicom_dataset(gradient(*pixels.shape[-2:]), METADATA)
    ds.PixelData = pixels.astype("<u2").tobytes()
    for key, value in attributes.items():
        setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_monochrome1_is_inverted_so_bone_is_bright():
    pixels = (gradient() * 4095).astype(np.uint16)
    image = read_dicom_bytes(dicom_with(pixels, PhotometricInterpretation="MONOCHROME1", WindowCenter=2048, WindowWidth=4096))
    assert image[0, 0] > 0.9 and image[0, -1] < 0.1


def test_dicom_without_pixels_and_non_dicom_bytes_say_why():
    ds = synthetic_dicom_dataset(gradient(), METADATA)
    del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(ImageLoadError, match="no pixel data"):
        read_dicom_bytes(buffer.getvalue(), "nopixels.dcm")
    with pytest.raises(ImageLoadError, match="not a DICOM file"):
        read_dicom_bytes(b"definitely not dicom" * 20, "fake.dcm")
    with pytest.raises(ImageLoadError, match="empty"):
        read_dicom_bytes(b"", "empty.dcm")


def test_dicom_over_the_pixel_cap_is_refused_before_decoding():
    ds = synthetic_dicom_dataset(gradient(), METADATA)
    ds.Rows, ds.Columns = 20000, 20000  # the header lies; PixelData is still small
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(ImageLoadError, match="over the limit"):
        read_dicom_bytes(buffer.getvalue(), "huge.dcm")


# ------------------------------------------------------------------ image uploads (io.decode_upload)


def test_upload_decodes_8_bit_16_bit_rgba_and_palette():
    gray = (gradient() * 255).astype(np.uint8)
    assert decode_upload(png(gray), "g.png").max() == pytest.approx(1.0)
    deep = (gradient() * 65535).astype(np.uint16)
    out16 = decode_upload(png(deep), "g16.png")
    assert len(np.unique(out16)) == 64 and out16.dtype == np.float32
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 7)])
    assert np.allclose(decode_upload(png(rgba), "a.png"), gray / 255.0, atol=1 / 255)
    palette = Image.fromarray(gray).convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, "PNG")
    assert decode_upload(buffer.getvalue(), "p.png").shape == (64, 64)


def test_upload_routes_dicom_by_suffix_or_marker():
    data = dicom_bytes(gradient(), METADATA)
    assert decode_upload(data, "scan.dcm").shape == (64, 64)
    assert decode_upload(data, "no_suffix").shape == (64, 64)


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("empty.png", b"", "empty"),
        ("notes.png", b"patient notes, not pixels", "not an image file"),
        ("tiny.png", png(np.zeros((1, 1), np.uint8)), "only 1 x 1 pixels"),
        ("strip.png", png(np.zeros((20, 400), np.uint8)), "times longer than wide"),
        ("cut.png", png(NOISE)[:2000], "truncated or damaged"),
        ("cut.jpg", png(NOISE, format="JPEG")[:2000], "truncated or damaged"),
    ],
)
def test_bad_uploads_raise_a_clear_image_load_error(name, data, message):
    with pytest.raises(ImageLoadError, match=message):
        decode_upload(data, name)


def test_decompression_bomb_is_refused_from_its_header():
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, "PNG")  # 81 Mpx > MAX_PIXELS, a few kB on disk
    assert 9000 * 9000 > MAX_PIXELS and len(buffer.getvalue()) < 200_000
    with pytest.raises(ImageLoadError, match="limit"):
        decode_upload(buffer.getvalue(), "bomb.png")
