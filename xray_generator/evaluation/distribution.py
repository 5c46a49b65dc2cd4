"""Distribution metrics on image features: FID, KID, precision/recall/density/coverage.

Every function takes features as float arrays of shape (N, D), one row per image, as produced
by `xray_generator.evaluation.features`. None of them looks at pixels, so the numbers are only
as meaningful as the feature extractor; record its weights hash next to them.

A distribution metric means little without two more numbers: how many images it used (FID is
biased upwards at small N, and with N below D the covariance is rank-deficient) and what it
gives between two halves of the real set (`real_vs_real_floor`). Apart from the two primitives
`frechet_distance` and `fid_from_features`, results therefore come back as dicts that carry
the numbers of images.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from xray_generator.evaluation.fidelity import bootstrap_ci

# Cap on the elements of one distance block in PRDC (float64): about 160 MB.
_MAX_BLOCK_ELEMENTS = 20_000_000


def _check_features(features: np.ndarray, name: str, min_rows: int = 2) -> np.ndarray:
    array = np.asarray(features)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D) of features, got shape {array.shape}")
    if array.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows (images), got {array.shape[0]}")
    if array.shape[1] < 1:
        raise ValueError(f"{name} has no feature columns")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf")
    return array


def _check_pair_of_feature_sets(a: np.ndarray, b: np.ndarray, names: tuple[str, str], min_rows: int = 2):
    a = _check_features(a, names[0], min_rows)
    b = _check_features(b, names[1], min_rows)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} differ in feature dimension: {a.shape[1]} vs {b.shape[1]}")
    return a, b


def _symmetric_factor(covariance: np.ndarray) -> np.ndarray:
    """A matrix F with F Fᵀ = covariance: Cholesky when positive definite, else the PSD square root."""
    try:
        # Cholesky costs a fraction of an eigendecomposition with vectors (seconds at D = 2048).
        return np.linalg.cholesky(covariance)
    except np.linalg.LinAlgError:
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        # Singular (N <= D) or rounding below zero: the covariance is PSD, so clip at 0.
        return eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between two Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    ``d² = ||mu1 - mu2||² + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^½)``

    Parameters
    ----------
    mu1, mu2 : (D,) ndarray
        Means.
    sigma1, sigma2 : (D, D) ndarray
        Symmetric positive semi-definite covariances.

    Returns
    -------
    distance : float
        The squared Fréchet distance (what the FID literature calls FID), never negative.

    Notes
    -----
    The trace of the matrix square root is computed from eigenvalues rather than with
    ``scipy.linalg.sqrtm``. With any factor ``sigma1 = F Fᵀ`` (Cholesky, or the PSD square root
    when sigma1 is singular), ``sigma1 sigma2`` has the same eigenvalues as the symmetric PSD
    matrix ``Fᵀ sigma2 F``, so ``tr((sigma1 sigma2)^½)`` is the sum of the square roots of its
    eigenvalues. This is faster than a Schur-based ``sqrtm`` of a 2048 × 2048 matrix and never
    produces the complex parts or singular-matrix failures that the usual ``eps * I`` offset
    works around.

    References
    ----------
    .. [1] Dowson, D. C. and Landau, B. V. (1982). The Fréchet distance between multivariate
           normal distributions. J. Multivariate Anal. 12(3), 450-455.
    .. [2] Heusel, M. et al. (2017). GANs trained by a two time-scale update rule converge to a
           local Nash equilibrium. NeurIPS.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"means must be 1-D of equal length, got {mu1.shape} and {mu2.shape}")
    dim = mu1.shape[0]
    for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
        if sigma.shape != (dim, dim):
            raise ValueError(f"{name} must have shape ({dim}, {dim}) to match the means, got {sigma.shape}")
    for name, array in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contains NaN or inf")
    # Covariances from np.cov are symmetric only up to rounding; eigh needs exact symmetry.
    sigma1 = 0.5 * (sigma1 + sigma1.T)
    sigma2 = 0.5 * (sigma2 + sigma2.T)

    factor1 = _symmetric_factor(sigma1)
    product = factor1.T @ sigma2 @ factor1
    product_eigenvalues = np.linalg.eigvalsh(0.5 * (product + product.T))
    trace_sqrt = float(np.sum(np.sqrt(np.clip(product_eigenvalues, 0.0, None))))
    diff = mu1 - mu2
    distance = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    # The true value is >= 0; identical inputs leave rounding residue of either sign.
    return max(distance, 0.0)


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet Inception Distance between two sets of features.

    Parameters
    ----------
    feats_a, feats_b : (N_a, D), (N_b, D) ndarray
        Features of the two image sets (real and generated), at least 2 rows each.

    Returns
    -------
    fid : float
        `frechet_distance` between Gaussians fitted to each set (sample covariance, N - 1).

    Notes
    -----
    FID is biased upwards at small N and its value depends on N, so compare only FIDs computed
    with the same N and the same feature extractor. With N below D (e.g. 100 images and 2048
    Inception features) the covariance has rank N - 1 and the number says little.
    """
    a, b = _check_pair_of_feature_sets(feats_a, feats_b, ("feats_a", "feats_b"))
    return frechet_distance(a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False))


def fid_terms(feats_a: np.ndarray, feats_b: np.ndarray) -> dict:
    """`fid_from_features` split into its two terms: where the distance is.

    Returns ``{"fid", "mean_term", "covariance_term"}``: ``mean_term`` is ``||mu_a - mu_b||²`` (the
    sets differ on average, e.g. one class drawn too strongly) and ``covariance_term`` the rest (they
    spread differently around their means). The two add up to ``fid``.
    """
    a, b = _check_pair_of_feature_sets(feats_a, feats_b, ("feats_a", "feats_b"))
    fid = fid_from_features(a, b)
    diff = a.mean(axis=0).astype(np.float64) - b.mean(axis=0).astype(np.float64)
    mean_term = float(diff @ diff)
    return {"fid": fid, "mean_term": mean_term, "covariance_term": fid - mean_term}


def fid_with_bootstrap(
    feats_a: np.ndarray, feats_b: np.ndarray, n_boot: int = 100, seed: int = 0, ci: float = 0.95
) -> dict:
    """FID with a bias-corrected (basic) bootstrap confidence interval.

    Parameters
    ----------
    feats_a, feats_b : (N_a, D), (N_b, D) ndarray
        Features of the two image sets; each is resampled independently.
    n_boot : int, optional
        Bootstrap resamples (default 100). Each costs two covariances, a Cholesky factorisation
        and an eigenvalue decomposition of D × D: a few seconds for D = 2048 on two CPU cores.
    seed : int, optional
        Seed of the resampling (default 0).
    ci : float, optional
        Interval coverage (default 0.95).

    Returns
    -------
    result : dict
        ``value`` (the plain FID), ``value_bias_corrected`` (``2 value - bootstrap_mean``,
        clipped at 0), ``ci_low``, ``ci_high``, ``ci_level``, ``ci_method``, ``n_boot``,
        ``n_boot_valid``, ``bootstrap_mean``, ``n_a``, ``n_b``, ``feature_dim``.

    Notes
    -----
    A resample with replacement holds about 63 % distinct images and FID grows as the distinct
    N shrinks, so percentile intervals lie wholly above the estimate and miss the true FID. The
    basic interval (``2 value - q_hi, 2 value - q_lo``, see `bootstrap_ci`) subtracts that
    bias; its lower end is clipped at 0 because FID cannot be negative. The point estimate
    itself keeps its small-N bias, so the interval, which targets the FID of the distributions,
    can lie below it; ``value_bias_corrected`` lies inside it unless the resampled FIDs are
    strongly skewed. Compare plain values
    only at equal N.
    """
    a, b = _check_pair_of_feature_sets(feats_a, feats_b, ("feats_a", "feats_b"))
    result = bootstrap_ci(fid_from_features, [a, b], n_boot=n_boot, seed=seed, ci=ci, paired=False, method="basic")
    result["ci_low"] = max(result["ci_low"], 0.0)
    result["value_bias_corrected"] = max(2.0 * result["value"] - result["bootstrap_mean"], 0.0)
    result.update(n_a=a.shape[0], n_b=b.shape[0], feature_dim=a.shape[1])
    return result



def fid_at_fixed_size(feats_a: np.ndarray, feats_b: np.ndarray, size: int, n_subsets: int = 50, seed: int = 0, ci: float = 0.95) -> dict:
    """FID between random subsets of `size` images from each set, drawn without replacement.

    FID depends on N (its bias shrinks as N grows), so two runs can only be compared at the same
    N. This gives the distribution of FID at a fixed N from a larger run: its mean and the
    central `ci` interval of the subset values, i.e. where one run of `size` images would land.

    Returns
    -------
    result : dict
        ``value`` (mean over subsets), ``std``, ``ci_low``, ``ci_high``, ``ci_level``,
        ``ci_method``, ``size``, ``n_subsets``.
    """
    a, b = _check_pair_of_feature_sets(feats_a, feats_b, ("feats_a", "feats_b"))
    if not 2 <= size <= min(len(a), len(b)):
        raise ValueError(f"size must be between 2 and the smaller set ({min(len(a), len(b))}), got {size}")
    rng = np.random.default_rng(seed)
    values = np.array([
        fid_from_features(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
        for _ in range(n_subsets)
    ])
    tail = (1.0 - ci) / 2.0 * 100.0
    return {
        "value": float(values.mean()), "std": float(values.std(ddof=1)) if n_subsets > 1 else 0.0,
        "ci_low": float(np.percentile(values, tail)), "ci_high": float(np.percentile(values, 100.0 - tail)),
        "ci_level": ci, "ci_method": f"central interval of FID over {n_subsets} random subsets of {size} per set",
        "size": size, "n_subsets": n_subsets,
    }


def beyond_real_radius(real_reference: np.ndarray, real_other: np.ndarray, generated: np.ndarray, quantile: float = 0.99) -> dict:
    """Which generated images lie further from the real mean than nearly every real image does.

    The radius is the `quantile` of the distances of `real_other` (images not used for the mean)
    to the mean of `real_reference`; a real image lands beyond it with probability about
    ``1 - quantile``. A generated set with many more images beyond it has a tail of
    off-distribution samples, and such a tail dominates FID at small N: how many of them a subset
    holds moves its FID more than anything else.

    Returns
    -------
    result : dict
        ``beyond`` (bool array, one per generated image), ``share`` (their mean), ``radius``,
        ``quantile``, ``expected_share`` (``1 - quantile``).
    """
    ref, other = _check_pair_of_feature_sets(real_reference, real_other, ("real_reference", "real_other"))
    gen = _check_features(generated, "generated", min_rows=1)
    if gen.shape[1] != ref.shape[1]:
        raise ValueError(f"generated has {gen.shape[1]} feature columns, the real sets {ref.shape[1]}")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    centre = ref.mean(axis=0)
    radius = float(np.quantile(np.linalg.norm(other - centre, axis=1), quantile))
    beyond = np.linalg.norm(gen - centre, axis=1) > radius
    return {"beyond": beyond, "share": float(beyond.mean()), "radius": radius, "quantile": quantile, "expected_share": 1.0 - quantile}


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kernel_inception_distance(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    subset_size: int | None = None,
    n_subsets: int = 100,
    seed: int = 0,
) -> dict:
    """Kernel Inception Distance: unbiased MMD² with a cubic polynomial kernel, over subsets.

    Parameters
    ----------
    feats_a, feats_b : (N_a, D), (N_b, D) ndarray
        Features of the two image sets.
    subset_size : int or None, optional
        Images drawn (without replacement) from each set per subset. None (default) uses
        ``min(1000, N_a, N_b)``, the reference implementation's size when the sets allow it.
    n_subsets : int, optional
        Number of subsets (default 100).
    seed : int, optional
        Seed of the subset draws (default 0).

    Returns
    -------
    result : dict
        ``value`` (mean MMD² over subsets), ``std`` (its standard deviation over subsets),
        ``subset_size``, ``n_subsets``, ``n_a``, ``n_b``.

    Notes
    -----
    The kernel is ``k(x, y) = (x·y / D + 1)³``. The estimator is unbiased, so for two samples
    of the same distribution it scatters around zero and can be slightly negative; unlike FID,
    its expectation does not depend on the subset size.

    References
    ----------
    .. [1] Bińkowski, M., Sutherland, D. J., Arbel, M. and Gretton, A. (2018). Demystifying MMD
           GANs. ICLR.
    """
    a, b = _check_pair_of_feature_sets(feats_a, feats_b, ("feats_a", "feats_b"))
    largest = min(a.shape[0], b.shape[0])
    if subset_size is None:
        subset_size = min(1000, largest)
    if not 2 <= subset_size <= largest:
        raise ValueError(f"subset_size must be in [2, {largest}] (the smaller set's size), got {subset_size}")
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be at least 1, got {n_subsets}")
    rng = np.random.default_rng(seed)
    m = subset_size
    estimates = np.empty(n_subsets)
    for i in range(n_subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        k_xx = _polynomial_kernel(x, x)
        k_yy = _polynomial_kernel(y, y)
        k_xy = _polynomial_kernel(x, y)
        # Unbiased: the diagonal k(x_i, x_i) pairs a sample with itself and is left out.
        within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
        within_y = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        estimates[i] = within_x + within_y - 2.0 * k_xy.mean()
    return {
        "value": float(estimates.mean()),
        "std": float(estimates.std(ddof=1)) if n_subsets > 1 else 0.0,
        "subset_size": int(m),
        "n_subsets": int(n_subsets),
        "n_a": a.shape[0],
        "n_b": b.shape[0],
    }


def _row_block(n_rows_other: int) -> int:
    return max(1, _MAX_BLOCK_ELEMENTS // max(1, n_rows_other))


def _euclidean_distances(x: np.ndarray, y: np.ndarray, x_sq: np.ndarray, y_sq: np.ndarray) -> np.ndarray:
    squared = x_sq[:, None] + y_sq[None, :] - 2.0 * (x @ y.T)
    return np.sqrt(np.clip(squared, 0.0, None))


def _kth_neighbour_radii(points: np.ndarray, k: int) -> np.ndarray:
    sq = np.einsum("ij,ij->i", points, points)
    radii = np.empty(points.shape[0])
    step = _row_block(points.shape[0])
    for start in range(0, points.shape[0], step):
        block = _euclidean_distances(points[start:start + step], points, sq[start:start + step], sq)
        # Column 0 of the sorted row is the point itself (distance 0), so index k is the k-th neighbour.
        radii[start:start + step] = np.partition(block, k, axis=1)[:, k]
    return radii


def prdc(real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 5) -> dict:
    """Precision, recall, density and coverage of generated features against real ones.

    Parameters
    ----------
    real_feats : (N_real, D) ndarray
        Features of real images.
    fake_feats : (N_fake, D) ndarray
        Features of generated images.
    k : int, optional
        Neighbourhood size (default 5, as recommended by Naeem et al.). Each sample's ball has
        the radius of its k-th nearest neighbour within its own set.

    Returns
    -------
    result : dict
        ``precision`` (share of fakes inside some real ball: fidelity), ``recall`` (share of
        reals inside some fake ball: diversity), ``density`` (mean number of real balls holding
        a fake, divided by k; about 1 when the sets match, above 1 when fakes crowd where reals
        are dense), ``coverage`` (share of real balls that hold at least one fake), plus ``k``,
        ``n_real``, ``n_fake``.

    Notes
    -----
    Distances are Euclidean and computed in blocks, so memory stays bounded for tens of
    thousands of images. Membership is strict (``distance < radius``), as in the reference code.

    References
    ----------
    .. [1] Kynkäänniemi, T., Karras, T., Laine, S., Lehtinen, J. and Aila, T. (2019). Improved
           precision and recall metric for assessing generative models. NeurIPS.
    .. [2] Naeem, M. F., Oh, S. J., Uh, Y., Choi, Y. and Yoo, J. (2020). Reliable fidelity and
           diversity metrics for generative models. ICML.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    k = int(k)
    real, fake = _check_pair_of_feature_sets(real_feats, fake_feats, ("real_feats", "fake_feats"), min_rows=k + 1)
    real_radii = _kth_neighbour_radii(real, k)
    fake_radii = _kth_neighbour_radii(fake, k)

    real_sq = np.einsum("ij,ij->i", real, real)
    fake_sq = np.einsum("ij,ij->i", fake, fake)
    fake_in_real_ball = np.zeros(fake.shape[0], dtype=bool)
    real_balls_per_fake = np.zeros(fake.shape[0])
    real_in_fake_ball = np.zeros(real.shape[0], dtype=bool)
    nearest_fake_distance = np.full(real.shape[0], np.inf)
    step = _row_block(real.shape[0])
    for start in range(0, fake.shape[0], step):
        stop = start + step
        distances = _euclidean_distances(real, fake[start:stop], real_sq, fake_sq[start:stop])  # (N_real, block)
        inside_real = distances < real_radii[:, None]
        fake_in_real_ball[start:stop] = inside_real.any(axis=0)
        real_balls_per_fake[start:stop] = inside_real.sum(axis=0)
        real_in_fake_ball |= (distances < fake_radii[None, start:stop]).any(axis=1)
        nearest_fake_distance = np.minimum(nearest_fake_distance, distances.min(axis=1))
    return {
        "precision": float(fake_in_real_ball.mean()),
        "recall": float(real_in_fake_ball.mean()),
        "density": float(real_balls_per_fake.mean() / k),
        "coverage": float((nearest_fake_distance < real_radii).mean()),
        "k": k,
        "n_real": real.shape[0],
        "n_fake": fake.shape[0],
    }


def real_vs_real_floor(
    real_feats: np.ndarray, metric_fn: Callable[[np.ndarray, np.ndarray], float | dict], seed: int = 0
) -> dict:
    """A metric between two disjoint random halves of the real set: what "as good as real" scores.

    Parameters
    ----------
    real_feats : (N, D) ndarray
        Features of real images, at least 4 rows.
    metric_fn : callable
        ``metric_fn(half_a, half_b)`` returning a float or a dict, e.g. `fid_from_features` or
        ``lambda a, b: kernel_inception_distance(a, b, seed=0)``.
    seed : int, optional
        Seed of the random split (default 0).

    Returns
    -------
    result : dict
        If `metric_fn` returns a float: ``value``. If it returns a dict: that dict's entries.
        Either way also ``n_a``, ``n_b`` (the half sizes, N // 2 each) and ``seed``.

    Notes
    -----
    The floor is measured at N / 2 per side. For size-biased metrics (FID) compare it with the
    model's number at the same N, e.g. N / 2 generated images against the other real half.
    """
    real = _check_features(real_feats, "real_feats", min_rows=4)
    half = real.shape[0] // 2
    order = np.random.default_rng(seed).permutation(real.shape[0])
    half_a, half_b = real[order[:half]], real[order[half:2 * half]]
    result = metric_fn(half_a, half_b)
    floor = dict(result) if isinstance(result, dict) else {"value": float(result)}
    floor.update(n_a=half, n_b=half, seed=int(seed))
    return floor
