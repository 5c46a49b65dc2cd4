"""Preprocessing: pure array functions, float32 [0, 1] (H, W) inside, never upsampling by default."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xray_generator.data.preprocessing import (
    UpsampleError,
    centre_crop,
    denoise,
    equalize_histogram,
    percentile_window,
    prepare_radiograph,
    resize_shorter_side,
    to_grayscale,
    to_uint8,
)


def _ramp(h: int, w: int) -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, w, dtype=np.float32), (h, 1))


def _noisy(h: int = 96, w: int = 96, sigma: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    clean = _ramp(h, w) * 0.8 + 0.1
    noise = np.random.default_rng(seed).normal(0, sigma, clean.shape).astype(np.float32)
    return clean, np.clip(clean + noise, 0, 1)


# --- conversions at the edge ----------------------------------------------------------------


def test_uint8_is_scaled_not_windowed():
    image = np.array([[0, 128], [200, 255]], dtype=np.uint8)
    out = to_grayscale(image)
    assert out.dtype == np.float32 and out.shape == (2, 2)
    np.testing.assert_allclose(out, image / 255.0, atol=1e-6)


def test_rgb_rgba_and_single_channel_become_luma():
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 1] = 255  # pure green
    np.testing.assert_allclose(to_grayscale(rgb), np.full((4, 5), round(0.587 * 255) / 255), atol=1e-6)
    rgba = np.concatenate([rgb, np.zeros((4, 5, 1), dtype=np.uint8)], axis=2)
    np.testing.assert_array_equal(to_grayscale(rgba), to_grayscale(rgb))
    np.testing.assert_array_equal(to_grayscale(rgb[..., :1]), np.zeros((4, 5), dtype=np.float32))


def test_16_bit_uses_the_percentile_window():
    rng = np.random.default_rng(0)
    image = rng.integers(1000, 4000, (64, 64)).astype(np.uint16)
    image[0, 0], image[0, 1] = 0, 65535  # outliers must not set the range
    out = to_grayscale(image)
    assert out.min() == 0.0 and out.max() == 1.0
    lo, hi = np.percentile(image, [0.5, 99.5])
    inside = (image > lo) & (image < hi)
    np.testing.assert_allclose(out[inside], (image[inside] - lo) / (hi - lo), atol=1e-5)
    assert 0.3 < out.mean() < 0.7


def test_float_in_unit_range_is_kept_and_other_floats_are_windowed():
    image = _ramp(8, 8)
    np.testing.assert_array_equal(to_grayscale(image), image)
    out = to_grayscale(image * 1000.0 - 200.0)
    assert out.min() == 0.0 and out.max() == 1.0


def test_percentile_window_edge_cases():
    assert not percentile_window(np.full((4, 4), 7.0)).any()
    with pytest.raises(ValueError):
        percentile_window(np.zeros((4, 4)), 60, 40)
    with pytest.raises(ValueError):
        percentile_window(np.zeros((4, 4, 3)))


@pytest.mark.parametrize("shape", [(5,), (2, 3, 2), (2, 2, 5), (0, 4)])
def test_bad_shapes_are_refused(shape):
    with pytest.raises(ValueError):
        to_grayscale(np.zeros(shape, dtype=np.uint8))


def test_to_uint8_rounds_and_clips():
    np.testing.assert_array_equal(to_uint8(np.array([[-0.5, 0.5, 1.0, 2.0]])), [[0, 128, 255, 255]])


# --- geometry -------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "expected"), [((300, 500), (256, 427)), ((600, 400), (384, 256)), ((256, 300), (256, 300))])
def test_resize_sets_the_shorter_side_and_keeps_the_aspect(shape, expected):
    out = resize_shorter_side(_ramp(*shape), 256)
    assert out.shape == expected and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_resize_never_upsamples_unless_asked():
    small = _ramp(200, 300)
    with pytest.raises(UpsampleError, match="allow_upsample=True"):
        resize_shorter_side(small, 256)
    assert resize_shorter_side(small, 256, allow_upsample=True).shape == (256, 384)
    with pytest.raises(ValueError):
        resize_shorter_side(small, 128, interpolation="bogus")


def test_area_downsampling_keeps_the_mean():
    image = _noisy(512, 512)[1]
    assert resize_shorter_side(image, 128).mean() == pytest.approx(image.mean(), abs=1e-3)


def test_centre_crop_takes_the_middle():
    image = np.arange(6 * 8, dtype=np.float32).reshape(6, 8) / 48
    np.testing.assert_array_equal(centre_crop(image, 4), image[1:5, 2:6])
    np.testing.assert_array_equal(centre_crop(image, (2, 8)), image[2:4, :])
    with pytest.raises(ValueError, match="larger than the image"):
        centre_crop(image, 7)


def test_functions_do_not_modify_their_input():
    _, image = _noisy()
    before = image.copy()
    for function in (
        lambda x: resize_shorter_side(x, 64),
        lambda x: centre_crop(x, 32),
        lambda x: denoise(x, 0.05),
        lambda x: equalize_histogram(x),
        lambda x: equalize_histogram(x, clip_limit=None),
    ):
        function(image)
        np.testing.assert_array_equal(image, before)


# --- intensity ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["nlm", "bilateral"])
def test_denoise_reduces_noise(method):
    clean, noisy = _noisy()
    out = denoise(noisy, 0.08, method=method)
    assert out.dtype == np.float32 and out.shape == noisy.shape
    assert np.abs(out - clean).mean() < 0.7 * np.abs(noisy - clean).mean()


def test_denoise_options():
    _, noisy = _noisy()
    np.testing.assert_array_equal(denoise(noisy, 0), noisy)
    with pytest.raises(ValueError):
        denoise(noisy, 0.1, method="median")
    with pytest.raises(ValueError):
        denoise(noisy, -1)


def test_global_equalisation_flattens_the_histogram():
    image = _noisy(128, 128)[1] ** 3  # crowded into the dark end
    out = equalize_histogram(image, clip_limit=None)
    counts, _ = np.histogram(out, bins=4, range=(0, 1))
    assert counts.min() > 0.15 * out.size
    assert out.min() >= 0.0 and out.max() == pytest.approx(1.0)


def test_clahe_stretches_local_contrast():
    image = 0.4 + 0.1 * _noisy(128, 128)[1]  # low contrast
    out = equalize_histogram(image, clip_limit=2.0)
    assert out.dtype == np.float32 and out.std() > image.std()
    with pytest.raises(ValueError):
        equalize_histogram(image, clip_limit=0)


def test_equalisation_leaves_a_constant_image_alone():
    flat = np.full((16, 16), 0.3, dtype=np.float32)
    np.testing.assert_array_equal(equalize_histogram(flat, clip_limit=None), flat)


# --- the pipeline ---------------------------------------------------------------------------


def test_prepare_radiograph_from_16_bit():
    raw = (np.random.default_rng(1).random((300, 420)) * 4095).astype(np.uint16)
    out = prepare_radiograph(raw, 256)
    assert out.shape == (256, 256) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_prepare_radiograph_options():
    raw = (np.clip(_noisy(300, 280)[1], 0, 1) * 255).astype(np.uint8)
    assert prepare_radiograph(raw, 128, crop=False).shape == (137, 128)
    out = prepare_radiograph(raw, 128, denoise_strength=0.05, equalize=True)
    assert out.shape == (128, 128)
    with pytest.raises(UpsampleError):
        prepare_radiograph(raw, 512)
    assert prepare_radiograph(raw, 512, allow_upsample=True).shape == (512, 512)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(32, 200), w=st.integers(32, 200), size=st.integers(8, 32))
def test_resize_then_crop_always_gives_a_square(h, w, size):
    out = centre_crop(resize_shorter_side(_ramp(h, w), size), size)
    assert out.shape == (size, size) and out.dtype == np.float32
