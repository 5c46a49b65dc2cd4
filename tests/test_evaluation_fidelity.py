"""The shared bootstrap and the condition-fidelity AUROC."""
import numpy as np
import pytest

from xray_generator.evaluation.fidelity import bootstrap_ci, condition_fidelity_auroc


def test_bootstrap_interval_of_a_mean_brackets_it_and_is_seeded():
    values = np.random.default_rng(0).normal(loc=3.0, size=400)
    result = bootstrap_ci(np.mean, [values], n_boot=500, seed=1)
    assert result["ci_low"] < result["value"] < result["ci_high"]
    # The standard error is 1/sqrt(400) = 0.05, so a 95 % interval is about 0.2 wide.
    assert 0.14 < result["ci_high"] - result["ci_low"] < 0.26
    assert bootstrap_ci(np.mean, [values], n_boot=500, seed=1) == result
    assert bootstrap_ci(np.mean, [values], n_boot=500, seed=2) != result


def test_paired_resampling_needs_equal_lengths():
    with pytest.raises(ValueError, match="equal length"):
        bootstrap_ci(lambda a, b: 0.0, [np.zeros(3), np.zeros(4)], paired=True)


def test_auroc_of_perfectly_separated_scores_is_one():
    labels = np.array([0] * 50 + [1] * 50)
    result = condition_fidelity_auroc(labels + 0.1, labels, n_boot=200)
    assert result["value"] == result["ci_low"] == result["ci_high"] == 1.0
    assert (result["n"], result["n_positive"], result["n_negative"]) == (100, 50, 50)


def test_auroc_of_uninformative_scores_is_near_chance():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=400)
    result = condition_fidelity_auroc(rng.random(400), labels, n_boot=300, seed=0)
    assert result["ci_low"] < 0.5 < result["ci_high"]


def test_resamples_with_one_class_are_skipped_not_fatal():
    labels = np.array([1] + [0] * 9)  # many resamples miss the single positive
    result = condition_fidelity_auroc(np.linspace(1, 0, 10), labels, n_boot=200, seed=0)
    assert 0 < result["n_boot_valid"] < 200


@pytest.mark.parametrize(
    "scores, labels, message",
    [
        (np.ones(4), np.array([1, 1, 1, 1]), "both classes"),
        (np.ones(4), np.array([0, 1, 2, 1]), "0 or 1"),
        (np.array([0.1, np.nan, 0.3, 0.4]), np.array([0, 1, 0, 1]), "NaN"),
        (np.ones(3), np.array([0, 1, 0, 1]), "equal length"),
    ],
)
def test_auroc_input_is_validated(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        condition_fidelity_auroc(scores, labels)
