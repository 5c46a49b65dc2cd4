"""Condition fidelity and the one bootstrap every evaluation module uses.

A confidence interval that no code produced is worse than none, so every interval in
`outputs/metrics/` comes from `bootstrap_ci` here: one seeded resampling scheme, one
percentile rule, one place to change either.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score


def bootstrap_ci(
    statistic: Callable[..., float],
    samples: Sequence[np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    paired: bool = False,
    method: str = "percentile",
) -> dict:
    """Bootstrap confidence interval of a statistic of one or more samples.

    Parameters
    ----------
    statistic : callable
        ``statistic(*samples) -> float``. Resamples where it raises ``ValueError`` or returns a
        non-finite number are skipped and counted (e.g. an AUROC resample holding one class only).
    samples : sequence of ndarray
        The observations; the first axis of each array indexes observations.
    n_boot : int, optional
        Number of bootstrap resamples (default 1000).
    seed : int, optional
        Seed of the numpy ``Generator`` that draws the resamples (default 0).
    ci : float, optional
        Coverage of the interval, in (0, 1) (default 0.95).
    paired : bool, optional
        If True, all samples have the same length and one index draw resamples them together
        (scores with their labels). If False (default), each sample is resampled on its own
        (two independent sets of images, as for FID).
    method : {"percentile", "basic"}, optional
        ``"percentile"`` (default): the ``(1 - ci) / 2`` and ``(1 + ci) / 2`` quantiles
        ``q_lo, q_hi`` of the resampled statistic. ``"basic"``: ``2 value - q_hi, 2 value - q_lo``,
        which subtracts the bootstrap's estimate of the estimator's bias; use it for statistics
        that drift with the number of distinct observations (FID).

    Returns
    -------
    result : dict
        ``value`` (statistic on the full samples), ``ci_low``, ``ci_high``, ``ci_level``,
        ``n_boot`` (requested), ``n_boot_valid`` (resamples that gave a finite value),
        ``bootstrap_mean`` (mean of the resampled statistic) and ``ci_method`` (``"percentile bootstrap"`` or ``"basic bootstrap"``).

    Notes
    -----
    A resample with replacement holds about 63 % distinct observations. For a statistic that
    grows as the distinct N shrinks (FID) the whole percentile interval lies above the point
    estimate and, in a simulation with a known FID, covered it 0 times in 60; the basic
    interval covered it 57 times in 60.

    References
    ----------
    .. [1] Efron, B. and Tibshirani, R. J. (1993). An Introduction to the Bootstrap. Chapman & Hall.
    .. [2] Davison, A. C. and Hinkley, D. V. (1997). Bootstrap Methods and their Application,
           section 5.2 (basic bootstrap interval). Cambridge University Press.
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if method not in ("percentile", "basic"):
        raise ValueError(f"method must be 'percentile' or 'basic', got {method!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    samples = [np.asarray(s) for s in samples]
    if not samples:
        raise ValueError("bootstrap_ci needs at least one sample")
    lengths = [len(s) for s in samples]
    if min(lengths) < 1:
        raise ValueError(f"every sample needs at least one observation, got lengths {lengths}")
    if paired and len(set(lengths)) != 1:
        raise ValueError(f"paired resampling needs samples of equal length, got {lengths}")

    value = float(statistic(*samples))
    rng = np.random.default_rng(seed)
    resampled = []
    for _ in range(n_boot):
        if paired:
            index = rng.integers(0, lengths[0], size=lengths[0])
            draw = [s[index] for s in samples]
        else:
            draw = [s[rng.integers(0, len(s), size=len(s))] for s in samples]
        try:
            stat = float(statistic(*draw))
        except ValueError:
            continue
        if np.isfinite(stat):
            resampled.append(stat)
    if not resampled:
        raise ValueError("the statistic was undefined on every bootstrap resample")
    tail = (1.0 - ci) / 2.0
    low, high = np.quantile(np.asarray(resampled), [tail, 1.0 - tail])
    if method == "basic":
        low, high = 2.0 * value - high, 2.0 * value - low
    return {
        "value": value,
        "ci_low": float(low),
        "ci_high": float(high),
        "ci_level": float(ci),
        "ci_method": f"{method} bootstrap",
        "n_boot": int(n_boot),
        "n_boot_valid": len(resampled),
        "bootstrap_mean": float(np.mean(resampled)),
    }


def condition_fidelity_auroc(
    scores: np.ndarray, labels: np.ndarray, n_boot: int = 1000, seed: int = 0, ci: float = 0.95
) -> dict:
    """AUROC of a classifier telling generated images of a condition from the rest, with a CI.

    A conditional generator is faithful to a condition when an independent classifier, trained
    on real images only, ranks images generated for that condition above images generated for
    other conditions.

    Parameters
    ----------
    scores : (N,) ndarray
        Classifier score (probability or logit) for the condition, one per generated image.
    labels : (N,) ndarray
        1 where the image was generated for the condition, 0 otherwise.
    n_boot, seed, ci
        Passed to `bootstrap_ci`; images are resampled with their labels.

    Returns
    -------
    result : dict
        The `bootstrap_ci` keys plus ``n``, ``n_positive`` and ``n_negative``.

    Notes
    -----
    Report it next to the same classifier's AUROC on held-out real images: that is the ceiling
    the generator can reach, and 0.5 is chance.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 1 or labels.ndim != 1 or len(scores) != len(labels):
        raise ValueError(f"scores and labels must be 1-D of equal length, got {scores.shape} and {labels.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or inf")
    if not np.all(np.isin(labels, [0, 1])):
        raise ValueError("labels must be 0 or 1")
    labels = labels.astype(np.int64)
    n_positive = int(labels.sum())
    n_negative = len(labels) - n_positive
    if n_positive == 0 or n_negative == 0:
        raise ValueError(f"AUROC needs both classes, got {n_positive} positive and {n_negative} negative")

    def auroc(s: np.ndarray, y: np.ndarray) -> float:
        if y.min() == y.max():
            raise ValueError("one class only")
        return float(roc_auc_score(y, s))

    result = bootstrap_ci(auroc, [scores, labels], n_boot=n_boot, seed=seed, ci=ci, paired=True)
    result.update(n=len(labels), n_positive=n_positive, n_negative=n_negative)
    return result
