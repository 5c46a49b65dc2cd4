"""Nearest-training-image search flags copies of training images and nothing else."""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from xray_generator.evaluation.memorisation import (
    correlation_vectors,
    memorisation_rate,
    nearest_by_correlation,
    nearest_training_images,
)


def training_set(n=40, size=128, seed=0):
    rng = np.random.default_rng(seed)
    fields = gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 4, 4))
    fields -= fields.min(axis=(1, 2), keepdims=True)
    fields /= fields.max(axis=(1, 2), keepdims=True)
    return fields.astype(np.float32)


def test_exact_and_noisy_copies_are_flagged_and_an_unrelated_image_is_not():
    training = training_set()
    rng = np.random.default_rng(1)
    exact_copy = training[5].copy()
    noisy_copy = np.clip(training[17] + rng.normal(0, 0.05, training[17].shape), 0, 1)
    unrelated = training_set(n=1, seed=99)[0]
    result = nearest_training_images([exact_copy, noisy_copy, unrelated], training)

    assert result["index"][:2].tolist() == [5, 17]
    assert result["correlation"][0] == pytest.approx(1.0, abs=1e-5)
    assert result["correlation"][1] > 0.95
    assert result["correlation"][2] < 0.5
    assert (result["n_generated"], result["n_training"], result["size"]) == (3, 40, 64)
    rate = memorisation_rate(result["correlation"], threshold=0.95)
    assert (rate["n_flagged"], rate["n"]) == (2, 3)
    assert rate["value"] == pytest.approx(2 / 3)


def test_a_copy_with_changed_brightness_and_contrast_still_matches():
    training = training_set()
    adjusted = 0.2 + 0.6 * training[3]  # Pearson correlation ignores gain and offset
    result = nearest_training_images([adjusted], training)
    assert result["index"][0] == 3 and result["correlation"][0] > 0.999


def test_training_images_may_differ_in_size():
    training = list(training_set(n=6))
    training[2] = np.kron(training[2], np.ones((2, 2), dtype=np.float32))  # same picture, 256 x 256
    result = nearest_training_images([training_set(n=6)[2]], training)
    assert result["index"][0] == 2 and result["correlation"][0] > 0.999


def test_chunked_search_equals_one_block():
    training, queries = correlation_vectors(training_set(n=30)), correlation_vectors(training_set(n=8, seed=3))
    whole = nearest_by_correlation(queries, training, chunk_size=1000)
    chunked = nearest_by_correlation(queries, training, chunk_size=7)
    np.testing.assert_array_equal(whole["index"], chunked["index"])
    np.testing.assert_allclose(whole["correlation"], chunked["correlation"], atol=1e-6)


def test_a_constant_image_correlates_zero_not_nan():
    result = nearest_training_images([np.full((64, 64), 0.5)], training_set(n=4))
    assert result["correlation"][0] == 0.0


def test_no_flagged_image_still_has_an_upper_bound_above_zero():
    rate = memorisation_rate(np.full(200, 0.4))
    assert rate["value"] == 0.0 and rate["ci_low"] == 0.0
    assert 0.0 < rate["ci_high"] < 0.03


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="NaN"):
        memorisation_rate(np.array([0.5, np.nan]))
    with pytest.raises(ValueError, match="2-D"):
        nearest_training_images([np.zeros((4, 4, 3))], training_set(n=2))
