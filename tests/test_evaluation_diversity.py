"""MS-SSIM and the diversity summaries built on it."""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from xray_generator.evaluation.diversity import intra_prompt_ms_ssim, ms_ssim, random_pair_ms_ssim


def smooth_image(seed, size=256):
    """A random image with structure at several scales, in [0, 1]."""
    rng = np.random.default_rng(seed)
    field = sum(gaussian_filter(rng.normal(size=(size, size)), sigma) * sigma for sigma in (2, 8, 24))
    field = (field - field.min()) / (field.max() - field.min())
    return field.astype(np.float32)


def add_noise(image, sigma, seed=0):
    return np.clip(image + np.random.default_rng(seed).normal(0, sigma, image.shape), 0, 1)


def test_ms_ssim_of_an_image_with_itself_is_one():
    image = smooth_image(0)
    assert ms_ssim(image, image.copy()) == pytest.approx(1.0, abs=1e-12)


def test_ms_ssim_decreases_as_noise_grows():
    image = smooth_image(1)
    values = [ms_ssim(image, add_noise(image, sigma)) for sigma in (0.02, 0.1, 0.3)]
    assert 1.0 > values[0] > values[1] > values[2] > 0.0


def test_one_scale_equals_gaussian_ssim_of_scikit_image():
    image = smooth_image(2)
    noisy = add_noise(image, 0.1)
    expected = structural_similarity(
        image.astype(np.float64), noisy, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ms_ssim(image, noisy, weights=(1.0,)) == pytest.approx(expected, rel=1e-9)


def test_small_images_need_a_smaller_window():
    image = smooth_image(3, size=100)
    with pytest.raises(ValueError, match="win_size"):
        ms_ssim(image, image)
    assert ms_ssim(image, image, win_size=5) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "bad, message", [(np.zeros((8, 8, 3)), "2-D"), (np.full((256, 256), 1.5), r"\[0, 1\]"), (np.zeros((128, 128)), "equal shapes")]
)
def test_ms_ssim_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        ms_ssim(smooth_image(4), bad)


def test_intra_prompt_ms_ssim_of_identical_samples_is_one_over_all_pairs():
    image = smooth_image(5, size=192)
    result = intra_prompt_ms_ssim([np.stack([image] * 4), [image, image, image]])
    assert result["value"] == pytest.approx(1.0)
    assert result["per_group"] == pytest.approx([1.0, 1.0])
    assert result["n_groups"] == 2
    assert result["n_pairs"] == 6 + 3  # 4 samples give 6 pairs, 3 give 3


def test_intra_prompt_ms_ssim_is_lower_for_diverse_samples():
    base = smooth_image(6, size=192)
    repeated = [add_noise(base, 0.01, seed) for seed in range(3)]
    diverse = [smooth_image(seed, size=192) for seed in (7, 8, 9)]
    result = intra_prompt_ms_ssim([repeated, diverse])
    assert result["per_group"][0] > 0.95 > result["per_group"][1]
    assert result["ci_low"] <= result["value"] <= result["ci_high"]


def test_a_prompt_with_one_sample_is_rejected():
    with pytest.raises(ValueError, match=r"groups\[1\]"):
        intra_prompt_ms_ssim([[smooth_image(0), smooth_image(1)], [smooth_image(2)]])


def test_random_pair_ms_ssim_draws_distinct_pairs_and_reports_n():
    images = [smooth_image(seed, size=192) for seed in range(5)]
    result = random_pair_ms_ssim(images, n_pairs=6, seed=0)
    assert result["n_pairs"] == 6 and result["n_images"] == 5
    assert 0.0 < result["value"] < 1.0
    assert result["ci_low"] <= result["value"] <= result["ci_high"]
    assert random_pair_ms_ssim(images, n_pairs=6, seed=0) == result
    # Asking for more pairs than exist uses each of the 10 once.
    assert random_pair_ms_ssim(images, n_pairs=50, seed=0)["n_pairs"] == 10
