"""Distribution metrics: FID, KID, PRDC and the real-vs-real floor on constructed feature sets."""
import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from xray_generator.evaluation.distribution import (
    fid_from_features,
    fid_terms,
    fid_with_bootstrap,
    frechet_distance,
    kernel_inception_distance,
    prdc,
    real_vs_real_floor,
)


@pytest.fixture(autouse=True)
def one_blas_thread():
    # A training job shares the machine; the matrices here are small anyway.
    with threadpool_limits(limits=1):
        yield


def random_covariance(rng, dim, rank=None):
    factor = rng.normal(size=(dim, rank or dim))
    return factor @ factor.T / dim


def test_fid_of_a_set_with_itself_is_zero():
    feats = np.random.default_rng(0).normal(size=(500, 32))
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("rank", [None, 5])  # full rank, and singular as with N < D
def test_equal_covariances_leave_the_squared_mean_shift(rank):
    rng = np.random.default_rng(1)
    sigma = random_covariance(rng, 16, rank)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-6)


def test_frechet_distance_matches_the_sqrtm_formula():
    rng = np.random.default_rng(2)
    s1, s2 = random_covariance(rng, 12), random_covariance(rng, 12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_fid_of_shifted_gaussian_samples_approaches_the_closed_form():
    rng = np.random.default_rng(3)
    shift = np.array([1.0, -0.5, 0.0, 2.0])
    a = rng.normal(size=(20000, 4))
    b = rng.normal(size=(20000, 4)) + shift
    assert fid_from_features(a, b) == pytest.approx(shift @ shift, rel=0.02)


def test_fid_terms_put_a_pure_shift_in_the_mean_term_and_a_pure_spread_in_the_covariance_term():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(20000, 4))
    shifted = fid_terms(a, a + np.array([1.0, 0.0, -1.0, 0.0]))
    assert shifted["mean_term"] == pytest.approx(2.0, rel=1e-9)
    assert shifted["covariance_term"] == pytest.approx(0.0, abs=1e-6)
    spread = fid_terms(a, a * 2.0)  # same mean, each variance x4: per dimension (2 - 1)^2 = 1
    assert spread["mean_term"] == pytest.approx(0.0, abs=1e-3)
    assert spread["covariance_term"] == pytest.approx(4.0, rel=0.05)
    assert spread["fid"] == pytest.approx(spread["mean_term"] + spread["covariance_term"])


def test_fid_bootstrap_interval_covers_the_true_value_and_reports_n():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(300, 8))
    b = rng.normal(size=(200, 8)) + 0.3
    true_fid = 8 * 0.3**2
    result = fid_with_bootstrap(a, b, n_boot=100, seed=0)
    assert result["ci_low"] <= true_fid <= result["ci_high"]
    assert result["ci_low"] <= result["value_bias_corrected"] <= result["ci_high"]
    assert (result["n_a"], result["n_b"], result["feature_dim"]) == (300, 200, 8)
    assert fid_with_bootstrap(a, b, n_boot=100, seed=0) == result  # seeded


def test_kid_is_near_zero_for_one_distribution_and_positive_for_shifted():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same = kernel_inception_distance(a, b, subset_size=200, n_subsets=20, seed=0)
    shifted = kernel_inception_distance(a, b + 1.0, subset_size=200, n_subsets=20, seed=0)
    assert abs(same["value"]) < 0.01
    assert shifted["value"] > 0.1
    assert shifted["value"] > 10 * shifted["std"]
    assert (same["subset_size"], same["n_subsets"], same["n_a"], same["n_b"]) == (200, 20, 400, 400)


def test_kid_rejects_a_subset_larger_than_a_set():
    feats = np.zeros((10, 4))
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(feats, feats, subset_size=11)


def test_prdc_of_identical_sets_is_one():
    feats = np.random.default_rng(6).normal(size=(300, 8))
    result = prdc(feats, feats.copy(), k=5)
    for key in ("precision", "recall", "coverage"):
        assert result[key] == pytest.approx(1.0)
    # Each real ball holds its k nearest fakes; a k-th neighbour exactly on the boundary may
    # fall either side through rounding, so density is 1 only to within a few of N * k.
    assert result["density"] == pytest.approx(1.0, abs=0.01)
    assert (result["n_real"], result["n_fake"], result["k"]) == (300, 300, 5)


def test_prdc_of_far_apart_sets_is_zero():
    rng = np.random.default_rng(7)
    result = prdc(rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) + 100.0)
    assert result == pytest.approx({"precision": 0, "recall": 0, "density": 0, "coverage": 0, "k": 5, "n_real": 200, "n_fake": 200})


def test_prdc_sees_a_dropped_mode_as_lost_recall_not_lost_precision():
    rng = np.random.default_rng(8)
    real = np.concatenate([rng.normal(size=(300, 4)), rng.normal(size=(300, 4)) + 50.0])
    fake = rng.normal(size=(300, 4))  # only the first mode
    result = prdc(real, fake)
    assert result["precision"] > 0.95
    assert result["recall"] == pytest.approx(0.5, abs=0.05)
    assert result["coverage"] == pytest.approx(0.5, abs=0.05)


def test_real_vs_real_floor_uses_two_disjoint_halves():
    feats = np.arange(21 * 3, dtype=float).reshape(21, 3)
    seen = {}

    def record(a, b):
        seen["a"], seen["b"] = a, b
        return 1.5

    floor = real_vs_real_floor(feats, record, seed=0)
    assert floor == {"value": 1.5, "n_a": 10, "n_b": 10, "seed": 0}
    rows_a, rows_b = {tuple(r) for r in seen["a"]}, {tuple(r) for r in seen["b"]}
    assert not rows_a & rows_b


def test_real_vs_real_floor_keeps_the_entries_of_a_dict_metric():
    feats = np.random.default_rng(9).normal(size=(100, 4))
    floor = real_vs_real_floor(feats, lambda a, b: prdc(a, b), seed=1)
    assert floor["n_a"] == floor["n_b"] == 50
    assert 0.5 < floor["precision"] <= 1.0 and floor["n_real"] == 50


@pytest.mark.parametrize(
    "feats_b, message",
    [
        (np.full((10, 4), np.nan), "NaN"),
        (np.zeros(10), "2-D"),
        (np.zeros((10, 5)), "feature dimension"),
        (np.zeros((1, 4)), "at least 2"),
    ],
)
def test_bad_features_are_rejected_with_a_clear_message(feats_b, message):
    with pytest.raises(ValueError, match=message):
        fid_from_features(np.zeros((10, 4)), feats_b)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dim=st.integers(1, 12), rank=st.integers(1, 12))
def test_frechet_distance_is_symmetric_and_never_negative(seed, dim, rank):
    rng = np.random.default_rng(seed)
    s1, s2 = random_covariance(rng, dim, min(rank, dim)), random_covariance(rng, dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    forward = frechet_distance(mu1, s1, mu2, s2)
    assert forward >= 0.0
    assert forward == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-6, abs=1e-9)


def test_fid_at_fixed_size_matches_plain_fid_at_full_size_and_grows_as_n_shrinks():
    from xray_generator.evaluation.distribution import fid_at_fixed_size, fid_from_features

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    full = fid_at_fixed_size(a, b, 300, n_subsets=3)
    assert full["value"] == pytest.approx(fid_from_features(a, b)) and full["std"] == pytest.approx(0.0, abs=1e-9)
    small = fid_at_fixed_size(a, b, 30, n_subsets=40, seed=1)
    assert small["ci_low"] <= small["value"] <= small["ci_high"]
    assert small["value"] > full["value"]  # the small-N bias FID is known for
    with pytest.raises(ValueError, match="size"):
        fid_at_fixed_size(a, b, 301)


def test_beyond_real_radius_finds_an_off_distribution_tail():
    from xray_generator.evaluation.distribution import beyond_real_radius

    rng = np.random.default_rng(0)
    real_a, real_b = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))
    same = beyond_real_radius(real_a, real_b, rng.normal(size=(2000, 8)))
    assert abs(same["share"] - 0.01) < 0.01  # a sample of the real distribution: about 1 %
    tail = np.concatenate([rng.normal(size=(900, 8)), rng.normal(size=(100, 8)) + 8.0])
    result = beyond_real_radius(real_a, real_b, tail)
    assert result["beyond"][900:].all() and result["beyond"][:900].mean() < 0.03
    with pytest.raises(ValueError, match="quantile"):
        beyond_real_radius(real_a, real_b, tail, quantile=1.0)
    with pytest.raises(ValueError, match="feature columns"):
        beyond_real_radius(real_a, real_b, tail[:, :4])
