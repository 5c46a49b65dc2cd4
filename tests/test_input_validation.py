"""Input validation at every boundary: the pipeline call, the studio's request, uploads and DICOM.

Extends test_pipeline.py, test_app_studio.py and test_dicom.py (which hold the basic cases) with
wrong types, NumPy scalars, control characters, other scripts, lying headers, odd image modes and a
fuzz test: decode_upload returns a float (H, W) image in [0, 1] or raises ImageLoadError, never
anything else.
"""
from __future__ import annotations

import io
import json
import os
import re
import struct
import zlib

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from xray_generator import studio
from xray_generator.dicom import dicom_bytes
from xray_generator.io import MAX_PIXELS, ImageLoadError, decode_upload, png_bytes_with_metadata, read_png_metadata
from xray_generator.pipelines.latent_diffusion import MAX_PROMPT_CHARS, XRayDiffusionPipeline

FAST = {"num_inference_steps": 2}


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return XRayDiffusionPipeline.from_pretrained(tiny_pipeline_dir)


# ------------------------------------------------------------------ pipeline: numbers and types

@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"num_inference_steps": "10"}, ValueError, "num_inference_steps must be an integer"),
        ({"num_inference_steps": True}, ValueError, "num_inference_steps"),
        ({"num_inference_steps": 201}, ValueError, "from 1 to 200"),
        ({"num_inference_steps": float("nan")}, ValueError, "num_inference_steps"),
        ({"guidance_scale": float("inf")}, ValueError, "guidance_scale"),
        ({"guidance_scale": "4"}, ValueError, "guidance_scale"),
        ({"guidance_scale": 30.5}, ValueError, "from 0 to 30"),
        ({"guidance_fraction": 0.0}, ValueError, "guidance_fraction must be a number above 0"),
        ({"guidance_fraction": 1.5}, ValueError, "at most 1"),
        ({"guidance_fraction": float("nan")}, ValueError, "guidance_fraction"),
        ({"guidance_fraction": "0.5"}, ValueError, "guidance_fraction"),
        ({"seed": -1}, ValueError, "seed must be an integer from 0"),
        ({"seed": 2**63}, ValueError, "seed"),
        ({"seed": 2**70}, ValueError, "seed"),
        ({"seed": 1.5}, ValueError, "seed"),
        ({"seed": True}, ValueError, "seed"),
        ({"num_images_per_prompt": "2"}, ValueError, "num_images_per_prompt"),
        ({"num_images_per_prompt": 65}, ValueError, "at most 64"),
        ({"height": 2048}, ValueError, "height"),
        ({"width": 0}, ValueError, "width"),
        ({"prompt": None}, ValueError, "prompt must be"),
        ({"prompt": 5}, ValueError, "prompt must be"),
        ({"prompt": b"pneumonia"}, ValueError, "prompt must be"),
        ({"prompt": []}, ValueError, "prompt must be"),
        ({"prompt": ["pneumonia", " "]}, ValueError, "prompt is empty"),
        ({"negative_prompt": [1]}, ValueError, "negative_prompt must be"),
        ({"negative_prompt": ["a", "b"]}, ValueError, "2 negative prompts for 1 prompts"),
        ({"negative_prompt": "x" * (MAX_PROMPT_CHARS + 1)}, ValueError, "negative_prompt has 10,001 characters"),
        ({"generator": 5}, TypeError, "generator must be a torch.Generator"),
        ({"latents": np.zeros((1, 4, 32, 32))}, TypeError, "latents must be a torch.Tensor"),
        ({"callback_on_step_end": "print"}, TypeError, "callback_on_step_end must be callable"),
    ],
)
def test_bad_arguments_are_refused_before_any_model_runs(pipe, kwargs, error, message):
    with pytest.raises(error, match=message) as info:
        pipe(**{"prompt": "normal chest", **kwargs})
    # Raised by the pipeline's own checks, not from deep inside torch or the tokenizer.
    assert info.traceback[-1].path.name == "latent_diffusion.py"
    assert info.traceback[-1].name in ("check_inputs", "check_prompt_text")


def test_nan_latents_are_refused(pipe):
    import torch

    with pytest.raises(ValueError, match="NaN"):
        pipe("normal chest", latents=torch.full((1, 4, 32, 32), float("nan")), **FAST)


def test_numpy_scalars_count_as_the_numbers_they_hold(pipe):
    plain = pipe("normal chest", seed=3, guidance_scale=2.0, **FAST)
    numpy = pipe("normal chest", seed=np.int64(3), guidance_scale=np.float32(2.0), num_inference_steps=np.int32(2))
    np.testing.assert_array_equal(plain.images[0], numpy.images[0])
    meta = numpy.metadata[0]
    assert type(meta["seed"]) is int and type(meta["steps"]) is int and type(meta["guidance"]) is float
    json.dumps(meta)  # provenance stays plain JSON


# ------------------------------------------------------------------ pipeline: prompt text

@pytest.mark.parametrize(
    "prompt, code, position",
    [
        ("normal\x00chest", "U+0000", 7),
        ("\x1b[31mpneumonia", "U+001B", 1),
        ("pneumonia\x7f", "U+007F", 10),
        ("pneu\x9bmonia", "U+009B", 5),  # a C1 control (CSI)
        ("normal \ud800 chest", "U+D800", 8),  # an unpaired surrogate the tokenizer cannot take
    ],
)
def test_control_characters_are_refused_with_their_position(pipe, prompt, code, position):
    with pytest.raises(ValueError, match=rf"contains .*\({re.escape(code)}\) at position {position}"):
        pipe(prompt, **FAST)
    with pytest.raises(ValueError, match=re.escape(code)):
        pipe("normal chest", negative_prompt=prompt, **FAST)
    with pytest.raises(ValueError, match=re.escape(code)):
        studio.GenerationRequest(prompt).check()


def test_whitespace_controls_are_kept_and_recorded_as_given(pipe):
    prompt = "PA chest radiograph:\r\n\tright lower lobe pneumonia\x0c"
    out = pipe(prompt, seed=1, **FAST)
    assert out.metadata[0]["prompt"] == prompt


@pytest.mark.parametrize(
    "prompt",
    ["Pneumonie du lobe inférieur droit", "правосторонняя пневмония", "右下葉肺炎", "التهاب رئوي", "pneumonia 🫁 😷", "e\u0301dème, zero\u200bwidth"],
)
def test_any_script_and_emoji_generate_and_survive_the_png_metadata(pipe, prompt):
    out = pipe(prompt, seed=0, **FAST)
    assert out.metadata[0]["prompt"] == prompt and np.isfinite(out.images[0]).all()
    assert read_png_metadata(png_bytes_with_metadata(out.images[0], out.metadata[0]))["prompt"] == prompt


def test_prompt_at_the_character_limit_is_truncated_with_a_notice_and_one_over_is_refused(pipe):
    at_limit = ("bilateral opacities " * MAX_PROMPT_CHARS)[:MAX_PROMPT_CHARS]
    out = pipe(at_limit, seed=0, **FAST)
    assert out.notices == [f"prompt truncated to the text encoder's {pipe.text_encoder.max_length} tokens"]
    with pytest.raises(ValueError, match="prompt has 50,000 characters; the limit is 10,000"):
        pipe("x" * 50_000, **FAST)


# ------------------------------------------------------------------ the studio's request (what the Generate page sends)

@pytest.mark.parametrize(
    "change, message",
    [
        ({"seed": "7"}, "seed must be a non-negative integer"),
        ({"seed": 1.5}, "seed"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**70}, "seed"),
        ({"num_images": "2"}, "number of images"),
        ({"num_images": 9}, "number of images"),
        ({"steps": "10"}, "steps must be an integer"),
        ({"steps": 0}, "steps"),
        ({"guidance": float("nan")}, "guidance must be a number"),
        ({"guidance": "4"}, "guidance"),
        ({"sampler": 3}, "sampler"),
        ({"prompt": None}, "prompt is empty"),
        ({"prompt": "x" * 10_001}, "the prompt has 10,001 characters"),
        ({"negative_prompt": None}, "negative prompt must be text"),
        ({"negative_prompt": "no\x00de"}, "the negative prompt contains a control character"),
    ],
)
def test_bad_requests_are_refused_before_the_pipeline_is_touched(change, message):
    request = studio.GenerationRequest(**{"prompt": "pneumonia", **change})
    with pytest.raises(ValueError, match=message):
        studio.generate_images(None, request)  # no pipeline: the request must fail its own check first


def test_a_request_with_numpy_numbers_generates(pipe):
    request = studio.GenerationRequest("pneumonia", seed=np.int64(4), steps=np.int64(2), guidance=np.float32(3.0), num_images=np.int64(1))
    result = studio.generate_images(pipe, request)
    assert result.images[0].metadata["seed"] == 4 and result.total_steps == 2


# ------------------------------------------------------------------ uploads: what is not an image

def encode(array: np.ndarray | Image.Image, fmt: str = "PNG", **options) -> bytes:
    image = array if isinstance(array, Image.Image) else Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


NOISE = (np.random.default_rng(1).random((96, 96)) * 255).astype(np.uint8)
GRADIENT = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("report.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF", "not an image file"),
        ("page.html", b"<!doctype html><html><body><img src=x></body></html>", "not an image file"),
        ("archive.zip", b"PK\x03\x04" + bytes(200), "not an image file"),
        ("script.png", b"#!/bin/sh\nrm -rf /\n", "not an image file"),
        ("zeros.png", bytes(4096), "not an image file"),
        ("film.gif", encode(GRADIENT, "GIF"), "not an image file"),  # a format uploads do not accept
        ("figure.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n", "not an image file"),  # never reaches Ghostscript
        ("text.png", "pneumonia".encode("utf-16"), "not an image file"),
    ],
)
def test_bytes_that_are_no_image_say_so(name, data, message):
    with pytest.raises(ImageLoadError, match=message):
        decode_upload(data, name)


def test_an_upload_that_is_not_bytes_says_so():
    with pytest.raises(ImageLoadError, match="expected the file's bytes, got str"):
        decode_upload("not bytes", "x.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("keep", [8, 30, 0.5, 0.9])
def test_truncated_png_and_jpeg_at_any_point_are_refused(fmt, keep):
    data = encode(NOISE, fmt)
    cut = data[:keep] if isinstance(keep, int) else data[: int(len(data) * keep)]
    with pytest.raises(ImageLoadError, match="truncated or damaged|not an image file|could not be decoded"):
        decode_upload(cut, f"cut.{fmt.lower()}")


def test_png_with_a_damaged_pixel_stream_is_refused():
    data = bytearray(encode(NOISE))
    start = data.index(b"IDAT") + 4
    data[start + 10:start + 40] = bytes(30)  # zlib stream and CRC no longer match
    with pytest.raises(ImageLoadError, match="truncated or damaged|could not be decoded"):
        decode_upload(bytes(data), "damaged.png")


# ------------------------------------------------------------------ uploads: sizes, checked from the header alone

def png_header_only(width: int, height: int, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    """A PNG that claims width x height but holds one tiny IDAT: what a decompression bomb looks like to a header reader."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [(8193, 8192), (20_000, 20_000), (2**31 - 1, 2**31 - 1)])
def test_pixel_cap_refuses_a_bomb_before_any_pixel_is_decoded(monkeypatch, width, height):
    assert width * height > MAX_PIXELS
    decoded = []
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", lambda self: decoded.append(self) or None)
    with pytest.raises(ImageLoadError, match="limit of 67,108,864"):
        decode_upload(png_header_only(width, height), "bomb.png")
    assert not decoded, "pixels were decoded before the size was checked"


@pytest.mark.parametrize(
    "width, height, message",
    [
        (1, 1, "only 1 x 1 pixels"),
        (10_000, 3, "only 10000 x 3 pixels"),
        (3, 10_000, "only 3 x 10000 pixels"),
        (2000, 100, "20 times longer than wide"),
        (100, 2000, "20 times longer than wide"),
    ],
)
def test_sizes_no_radiograph_has_are_refused_with_the_size(width, height, message):
    with pytest.raises(ImageLoadError, match=message):
        decode_upload(encode(np.zeros((height, width), np.uint8)), "odd.png")


@pytest.mark.parametrize("width, height", [(16, 16), (16, 128), (128, 16)])
def test_sizes_at_the_limits_are_accepted(width, height):
    out = decode_upload(encode(np.full((height, width), 128, np.uint8)), "edge.png")
    assert out.shape == (height, width)


# ------------------------------------------------------------------ uploads: modes that are converted

def test_16_bit_png_keeps_every_level():
    deep = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    out = decode_upload(encode(Image.fromarray(deep)), "deep.png")
    np.testing.assert_allclose(out, deep / 65535.0, atol=1e-6)
    assert out.dtype == np.float32 and len(np.unique(out)) == 4096


def test_palette_with_transparency_la_and_cmyk_become_grey():
    palette = Image.fromarray(GRADIENT).convert("P")
    palette.info["transparency"] = 0
    out = decode_upload(encode(palette, transparency=0), "palette_alpha.png")
    np.testing.assert_allclose(out, GRADIENT / 255.0, atol=2 / 255)
    la = Image.merge("LA", [Image.fromarray(GRADIENT), Image.new("L", (64, 64), 0)])  # fully transparent: alpha ignored
    np.testing.assert_allclose(decode_upload(encode(la), "la.png"), GRADIENT / 255.0, atol=1 / 255)
    cmyk = Image.fromarray(GRADIENT).convert("CMYK")
    out = decode_upload(encode(cmyk, "JPEG", quality=95), "cmyk.jpg")
    assert out.shape == (64, 64) and abs(out[:, -1].mean() - 1.0) < 0.05 and out[:, 0].mean() < 0.05


def test_exif_rotation_is_applied():
    tall = np.zeros((80, 40), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    out = decode_upload(encode(Image.fromarray(tall), "JPEG", exif=exif), "rotated.jpg")
    assert out.shape == (40, 80)


# ------------------------------------------------------------------ DICOM uploads built from scratch

def plain_dicom(pixels: np.ndarray, **attributes) -> bytes:
    """A minimal CT-style DICOM written with pydicom alone (not the studio's exporter)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype("<u2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_small_valid_dicom_decodes_to_a_stretched_grey_image():
    pixels = np.tile(np.linspace(0, 4095, 32).astype(np.uint16), (32, 1))
    out = decode_upload(plain_dicom(pixels), "ct.dcm")
    assert out.shape == (32, 32) and out.dtype == np.float32
    assert out[:, 0].max() == 0.0 and out[:, -1].min() == 1.0 and np.all(np.diff(out[0]) > 0)


def test_dicom_whose_pixel_data_is_shorter_than_its_header_says_is_refused():
    data = plain_dicom(np.zeros((32, 32), np.uint16))
    with pytest.raises(ImageLoadError, match="pixel data could not be decoded|not a readable DICOM"):
        decode_upload(data[:-600], "short.dcm")


def test_dicom_marker_followed_by_garbage_is_refused():
    with pytest.raises(ImageLoadError, match="DICOM"):
        decode_upload(b"\0" * 128 + b"DICM" + os.urandom(300), "noise")


@pytest.mark.parametrize(
    "offset, replacement",
    [
        (136, b"U%"),  # the VR of the first meta element: an unknown Value Representation
        (138, b"\x05\x00"),  # its length: 5 bytes for a 4-byte UL
    ],
)
def test_dicom_with_a_damaged_meta_header_is_refused(offset, replacement):
    data = bytearray(plain_dicom(np.zeros((32, 32), np.uint16)))
    assert data[132:136] == b"\x02\x00\x00\x00"  # (0002,0000) FileMetaInformationGroupLength comes first
    data[offset:offset + len(replacement)] = replacement
    with pytest.raises(ImageLoadError, match="DICOM|could not"):
        decode_upload(bytes(data), "damaged.dcm")


def test_dicom_with_a_zero_window_width_still_decodes():
    pixels = np.tile(np.linspace(0, 4095, 32).astype(np.uint16), (32, 1))
    out = decode_upload(plain_dicom(pixels, WindowCenter=2048, WindowWidth=0), "nowindow.dcm")
    assert out.shape == (32, 32) and np.isfinite(out).all()


# ------------------------------------------------------------------ fuzz: any bytes give an image or ImageLoadError

FUZZ = settings(
    max_examples=int(os.environ.get("CXR_FUZZ_EXAMPLES", "250")),
    deadline=None,
    derandomize=True,  # reproducible in CI; raise CXR_FUZZ_EXAMPLES to search further
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def assert_valid_or_image_load_error(data: bytes, name: str) -> None:
    try:
        out = decode_upload(data, name)
    except ImageLoadError:
        return
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.ndim == 2
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


SEED_FILES = {
    "png": encode(NOISE[:40, :48]),
    "png16": encode(Image.fromarray(NOISE[:40, :48].astype(np.uint16) * 257)),
    "jpg": encode(NOISE[:40, :48], "JPEG"),
    "tiff": encode(NOISE[:40, :48], "TIFF", compression="tiff_deflate"),
    "webp": encode(NOISE[:40, :48], "WEBP"),
    "bmp": encode(NOISE[:40, :48], "BMP"),
    "dcm": dicom_bytes(NOISE[:40, :48] / 255.0, {"model": "fuzz", "prompt": "x"}),
}


@FUZZ
@given(data=st.binary(max_size=4096), name=st.sampled_from(["upload.png", "upload.dcm", "upload"]))
def test_fuzz_random_bytes(data, name):
    assert_valid_or_image_load_error(data, name)


@FUZZ
@given(
    kind=st.sampled_from(sorted(SEED_FILES)),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=12),
    insert=st.binary(max_size=24),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_fuzz_corrupted_valid_files(kind, edits, insert, cut):
    data = bytearray(SEED_FILES[kind])
    # Most edits land in the first 300 bytes, where the headers are and where parsers are weakest.
    for where, value in edits:
        span = len(data) if where > 0.5 else min(len(data), 300)
        data[int(where * span) % len(data)] = value
    if insert:
        at = len(data) // 3
        data[at:at] = insert
    if cut is not None:
        data = data[: int(cut * len(data))]
    assert_valid_or_image_load_error(bytes(data), f"fuzz.{kind}")
