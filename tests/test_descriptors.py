"""Per-image descriptors: each number means what its docstring says, on images where the answer is known."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # lets `pytest` run from any directory without installing the package
    sys.path.insert(0, str(REPO))

from xray_generator.evaluation.descriptors import (  # noqa: E402
    DESCRIPTOR_NAMES,
    contrast_ratio,
    describe_image,
    intensity_histogram,
    laplacian_variance,
    shannon_entropy,
)


def test_flat_image_has_no_spread_contrast_entropy_or_sharpness():
    flat = np.full((32, 48), 0.3, np.float32)
    d = describe_image(flat)
    assert d["mean"] == pytest.approx(0.3)
    assert d["std"] == pytest.approx(0.0, abs=1e-7)
    assert d["contrast_ratio"] == pytest.approx(0.0, abs=1e-6)
    assert d["entropy"] == 0.0
    assert d["sharpness"] == pytest.approx(0.0, abs=1e-12)


def test_black_image_has_zero_contrast_ratio_rather_than_nan():
    assert contrast_ratio(np.zeros((8, 8), np.float32)) == 0.0


def test_two_equal_halves_give_one_bit_and_known_moments():
    image = np.zeros((20, 20), np.float32)
    image[:, 10:] = 0.8
    d = describe_image(image)
    assert d["entropy"] == pytest.approx(1.0)
    assert d["mean"] == pytest.approx(0.4)
    assert d["std"] == pytest.approx(0.4, rel=1e-5)
    assert d["contrast_ratio"] == pytest.approx(1.0, rel=1e-5)


def test_every_grey_level_equally_often_gives_eight_bits():
    ramp = np.tile((np.arange(256, dtype=np.float32) + 0.5) / 256, (4, 1))
    assert shannon_entropy(ramp) == pytest.approx(8.0)
    assert shannon_entropy(ramp, bins=16) == pytest.approx(4.0)


def test_contrast_ratio_ignores_overall_brightness():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.1, 0.9, (64, 64)).astype(np.float32)
    assert contrast_ratio(image * 0.5) == pytest.approx(contrast_ratio(image), rel=1e-5)


def test_sharpness_of_a_checkerboard_is_the_known_laplacian_variance():
    # Every pixel differs from its four neighbours by 1, so the 4-neighbour Laplacian is +-4 everywhere.
    board = (np.indices((16, 16)).sum(axis=0) % 2).astype(np.float32)
    assert laplacian_variance(board) == pytest.approx(16.0)


def test_blurring_lowers_sharpness():
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 1, (64, 64)).astype(np.float32)
    blurred = cv2.GaussianBlur(image, (0, 0), 2.0)
    assert laplacian_variance(blurred) < 0.1 * laplacian_variance(image)


def test_histogram_counts_every_pixel_once_with_one_in_the_last_bin():
    image = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)
    counts, edges = intensity_histogram(image, bins=4)
    assert counts.tolist() == [1, 1, 1, 1]
    assert edges.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert counts.dtype == np.int64


def test_describe_image_lists_the_descriptors_in_the_documented_order_and_agrees_with_the_parts():
    rng = np.random.default_rng(2)
    image = rng.uniform(0, 1, (40, 30)).astype(np.float32)
    d = describe_image(image)
    assert tuple(d) == DESCRIPTOR_NAMES
    assert all(isinstance(v, float) for v in d.values())
    assert d["entropy"] == pytest.approx(shannon_entropy(image))
    assert d["contrast_ratio"] == pytest.approx(contrast_ratio(image))
    assert d["sharpness"] == pytest.approx(laplacian_variance(image))
    assert d["mean"] == pytest.approx(float(image.mean()), rel=1e-5)
    assert d["std"] == pytest.approx(float(image.std()), rel=1e-4)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((8, 8), np.uint8), np.zeros((4, 8, 8), np.float32), np.zeros((0, 5), np.float32), np.zeros(5, np.float32)],
    ids=["uint8", "volume", "empty", "1-d"],
)
def test_non_library_images_are_refused_with_a_hint(bad):
    with pytest.raises(ValueError, match="float image of shape"):
        describe_image(bad)


def test_histogram_bins_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="bins"):
        intensity_histogram(np.zeros((2, 2), np.float32), bins=0)


@settings(max_examples=30, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 24), st.integers(1, 24)),
        elements=st.floats(0, 1, width=32),
    ),
    st.integers(1, 300),
)
def test_descriptors_stay_in_their_ranges_for_any_image(image, bins):
    d = describe_image(image)
    assert 0.0 <= d["mean"] <= 1.0 + 1e-6
    assert d["std"] >= 0.0 and d["contrast_ratio"] >= 0.0 and d["sharpness"] >= 0.0
    assert 0.0 <= d["entropy"] <= np.log2(min(image.size, 256)) + 1e-9
    counts, edges = intensity_histogram(image, bins)
    assert counts.sum() == image.size and len(counts) == bins and len(edges) == bins + 1
