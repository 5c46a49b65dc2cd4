"""Realism test: can a plain classifier tell real held-out films from another set of images?

    python -m xray_generator realism --model ldm --n 600              # generated (shipped defaults) vs real
    python -m xray_generator realism --model ldm --roundtrip          # the ldm autoencoder's round trip vs real
    python -m xray_generator realism --autoencoder FOLDER --no-cnn    # a candidate autoencoder's round trip vs real
    python -m xray_generator realism --model dcgan                    # any family of the registry

FID in our classifier's feature space is blind to film texture: that classifier was trained to
find pneumonia, not grain. This is a classifier two-sample test (C2ST; Lopez-Paz & Oquab 2017)
in features that owe nothing to it:

- the radially averaged power spectrum, as log10 band energies (`SPECTRUM_BAND_EDGES`);
- gradient-magnitude statistics (Sobel and Laplacian);
- the intensity histogram and its quantiles.

A logistic regression and a gradient-boosted classifier are cross-validated (folds grouped by
patient, so two films of one patient never sit on both sides of a fold), and the higher held-out
accuracy is reported with a 95 % Wilson interval. 0.5 means the classifier cannot tell the sets
apart; its floor is real against real with disjoint patients. A small CNN trained from scratch
on the pixels (held-out folds) is reported beside it, with no target.

Every set is judged as the generator returns it, 8-bit as a saved PNG: nothing is added after
decoding (no noise, grain, sharpening or filtering). The enhancement presets of `post_process`
are a user's choice, never the generator's output, and this module never calls them.

The real side is the held-out (val + test) films stored at 256 px. The 224-px Kermany
re-encodes are left out: scaling them up to the generator's size would itself be a cue.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pandas as pd

from xray_generator.evaluation.memorisation import wilson_interval
from xray_generator.evaluation.report import build_metric, read_metrics_json, write_metrics_json
from xray_generator.paths import outputs_dir

# Radial band edges in cycles per pixel: octaves up to 1/4, then the top octave in two halves,
# since what an autoencoder loses (trabeculae, vessel edges, grain) sits at the highest frequencies.
SPECTRUM_BAND_EDGES: tuple[float, ...] = (1 / 256, 2 / 256, 4 / 256, 8 / 256, 16 / 256, 32 / 256, 64 / 256, 96 / 256, 128 / 256)
HISTOGRAM_BINS = 32
CV_FOLDS = 5
CNN_FOLDS = 3
CNN_EPOCHS = 6
CNN_CROP = 64
CNN_HIGH_PASS_GAIN = 8.0  # a film's Laplacian is about 1/8 of its pixel range; scaled to a similar spread
# The power-spectrum target of the realism issue: every band's mean log10 power within this of the real films'.
SPECTRUM_GAP_TARGET = 0.15
# The feature kinds, each also tested alone, so a report says which cue gives a set away.
FEATURE_GROUPS: tuple[str, ...] = ("spectrum bands", "gradient statistics", "intensity statistics")


# ---------------------------------------------------------------------------- features
def _as_stack(images: Sequence[np.ndarray]) -> np.ndarray:
    stack = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    if stack.ndim != 3 or stack.shape[1] != stack.shape[2]:
        raise ValueError(f"images must be square (H, W) arrays of one size, got stack shape {stack.shape}")
    if not np.all(np.isfinite(stack)) or stack.min() < 0.0 or stack.max() > 1.0:
        raise ValueError("images must be finite floats in [0, 1]")
    return stack


def radial_power_spectrum(images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of each image.

    Each image has its mean removed and a 2-D Hann window applied (so the image border adds no
    spurious high frequencies), then ``|FFT|^2`` is averaged over rings of integer radius
    1 .. size/2.

    Returns
    -------
    frequency : (R,) ndarray
        Ring radius in cycles per pixel (radius / size).
    log_power : (N, R) ndarray
        log10 of each image's mean power per ring.
    """
    stack = _as_stack(images).astype(np.float64)
    size = stack.shape[1]
    window = np.outer(np.hanning(size), np.hanning(size))
    yy, xx = np.indices((size, size))
    radius = np.rint(np.hypot(yy - size // 2, xx - size // 2)).astype(int)
    rings = np.arange(1, size // 2 + 1)
    ring_of = radius.ravel()
    counts = np.bincount(ring_of, minlength=size)[rings]
    out = np.empty((len(stack), len(rings)))
    for start in range(0, len(stack), 64):  # chunks bound the complex FFT's memory
        chunk = stack[start:start + 64]
        chunk = (chunk - chunk.mean(axis=(1, 2), keepdims=True)) * window
        power = np.abs(np.fft.fftshift(np.fft.fft2(chunk), axes=(1, 2))) ** 2 / (window ** 2).sum()
        for i, p in enumerate(power):
            out[start + i] = np.bincount(ring_of, weights=p.ravel(), minlength=size)[rings] / counts
    return rings / size, np.log10(np.maximum(out, 1e-30))


def band_log_power(frequency: np.ndarray, log_power: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Mean log10 ring power within each band of `SPECTRUM_BAND_EDGES` that holds at least one ring at this size."""
    names, columns = [], []
    for low, high in zip(SPECTRUM_BAND_EDGES[:-1], SPECTRUM_BAND_EDGES[1:]):
        in_band = (frequency >= low) & (frequency < high) if high < 0.5 else (frequency >= low) & (frequency <= high)
        if in_band.any():
            names.append(f"{low:.4f}-{high:.4f}")
            columns.append(log_power[:, in_band].mean(axis=1))
    return names, np.stack(columns, axis=1)


def gradient_statistics(images: Sequence[np.ndarray]) -> np.ndarray:
    """Per image: mean, std and 50/90/99th percentiles of the Sobel gradient magnitude; mean |Laplacian| and its std."""
    rows = []
    for image in _as_stack(images):
        gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3)
        magnitude = np.hypot(gx, gy)
        laplacian = np.abs(cv2.Laplacian(image, cv2.CV_32F, ksize=1))
        rows.append([magnitude.mean(), magnitude.std(), *np.percentile(magnitude, [50, 90, 99]), laplacian.mean(), laplacian.std()])
    return np.asarray(rows, dtype=np.float64)


def intensity_statistics(images: Sequence[np.ndarray]) -> np.ndarray:
    """Per image: the normalised `HISTOGRAM_BINS`-bin histogram, the mean, std and 1/5/50/95/99th percentiles."""
    rows = []
    for image in _as_stack(images):
        histogram = np.histogram(image, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0] / image.size
        rows.append([*histogram, image.mean(), image.std(), *np.percentile(image, [1, 5, 50, 95, 99])])
    return np.asarray(rows, dtype=np.float64)


def realism_feature_groups(images: Sequence[np.ndarray], spectrum: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The C2ST's features by kind, one row per image (keys are `FEATURE_GROUPS`).

    `spectrum` is the images' `radial_power_spectrum` where the caller has it already (it is the costly part).
    """
    frequency, log_power = spectrum if spectrum is not None else radial_power_spectrum(images)
    _, bands = band_log_power(frequency, log_power)
    return dict(zip(FEATURE_GROUPS, (bands, gradient_statistics(images), intensity_statistics(images))))


def realism_features(images: Sequence[np.ndarray], spectrum: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The C2ST's features, one row per image: spectrum bands, gradient statistics, intensity statistics."""
    return np.concatenate(list(realism_feature_groups(images, spectrum).values()), axis=1)


# ---------------------------------------------------------------------------- the two-sample tests
def _balanced(n_a: int, n_b: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices cutting the larger set to the smaller one's size (seeded), so chance accuracy is 0.5."""
    rng = np.random.default_rng(seed)
    n = min(n_a, n_b)
    pick = lambda total: np.sort(rng.permutation(total)[:n]) if total > n else np.arange(total)  # noqa: E731
    return pick(n_a), pick(n_b)


def _folds(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int):
    from sklearn.model_selection import StratifiedGroupKFold

    return list(StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels, groups))


def _group_ids(groups: Sequence | None, prefix: str, n: int) -> np.ndarray:
    if groups is None:
        return np.array([f"{prefix}{i}" for i in range(n)], dtype=object)
    if len(groups) != n:
        raise ValueError(f"{prefix} groups: {len(groups)} for {n} images")
    return np.array([f"{prefix}{g}" for g in groups], dtype=object)


def classifier_two_sample_test(real_features: np.ndarray, other_features: np.ndarray, real_groups: Sequence | None = None,
                               other_groups: Sequence | None = None, folds: int = CV_FOLDS, seed: int = 0) -> dict:
    """Cross-validated accuracy of telling `real_features` rows from `other_features` rows.

    The larger set is cut (seeded) to the smaller one's size. Folds keep each group (patient) on
    one side. Both a logistic regression (standardised features) and a histogram gradient-boosted
    classifier are fitted; the higher accuracy is the value, with the 95 % Wilson interval of its
    held-out predictions. Reporting the better of two adds a little optimism, which the real-vs-real
    floor, computed the same way, shares.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    real_features, other_features = np.asarray(real_features, np.float64), np.asarray(other_features, np.float64)
    if real_features.ndim != 2 or other_features.ndim != 2 or real_features.shape[1] != other_features.shape[1]:
        raise ValueError(f"feature arrays must be 2-D with equal widths, got {real_features.shape} and {other_features.shape}")
    keep_real, keep_other = _balanced(len(real_features), len(other_features), seed)
    n = len(keep_real)
    if n < 2 * folds:
        raise ValueError(f"a {folds}-fold test needs at least {2 * folds} images per set, got {n}")
    x = np.concatenate([real_features[keep_real], other_features[keep_other]])
    y = np.concatenate([np.zeros(n, int), np.ones(n, int)])
    groups = np.concatenate([_group_ids(real_groups, "real:", len(real_features))[keep_real],
                             _group_ids(other_groups, "other:", len(other_features))[keep_other]])
    splits = _folds(y, groups, folds, seed)
    classifiers = {
        "logistic": lambda: make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)),
        "boosted": lambda: HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, random_state=seed),
    }
    per_classifier = {}
    for name, make in classifiers.items():
        predicted = np.empty(len(y), int)
        for train, test in splits:
            predicted[test] = make().fit(x[train], y[train]).predict(x[test])
        correct = int((predicted == y).sum())
        low, high = wilson_interval(correct, len(y))
        per_classifier[name] = {"accuracy": correct / len(y), "ci_low": low, "ci_high": high}
    best = max(per_classifier, key=lambda name: per_classifier[name]["accuracy"])
    return {"value": per_classifier[best]["accuracy"], "ci_low": per_classifier[best]["ci_low"], "ci_high": per_classifier[best]["ci_high"],
            "ci_level": 0.95, "ci_method": "Wilson score over the held-out predictions of the better classifier",
            "classifier": best, "per_classifier": per_classifier, "n_per_set": n, "folds": folds}


def _crop_grid(size: int, crop: int) -> list[tuple[int, int]]:
    steps = np.linspace(0, size - crop, 4).astype(int)
    return [(int(top), int(left)) for top in steps for left in steps]


def cnn_detector_accuracy(real_images: Sequence[np.ndarray], other_images: Sequence[np.ndarray], real_groups: Sequence | None = None,
                          other_groups: Sequence | None = None, folds: int = CNN_FOLDS, epochs: int = CNN_EPOCHS, seed: int = 0,
                          crop: int = CNN_CROP) -> dict:
    """Held-out accuracy of a small CNN trained from scratch to tell the sets apart (reported only; it has no target).

    It learns on random `crop`-pixel patches at full resolution (4 per image per epoch), so it
    looks at texture rather than anatomy, at a sixteenth of a whole film's cost; an image is
    judged by its mean logit over a fixed 4 x 4 grid of patches. Each fold trains a fresh network.
    """
    import torch
    from torch import nn

    real, other = _as_stack(real_images), _as_stack(other_images)
    keep_real, keep_other = _balanced(len(real), len(other), seed)
    n = len(keep_real)
    pixels = np.concatenate([real[keep_real], other[keep_other]])
    # A fixed high-pass channel beside the pixels: texture is faint next to anatomy, and a network
    # that has to find it on its own takes many more epochs than a CPU budget allows.
    high_pass = np.stack([cv2.Laplacian(image, cv2.CV_32F, ksize=1) for image in pixels]) * CNN_HIGH_PASS_GAIN
    x = torch.from_numpy(np.stack([pixels * 2.0 - 1.0, high_pass], axis=1).astype(np.float32))
    y = np.concatenate([np.zeros(n, int), np.ones(n, int)])
    targets = torch.from_numpy(y.astype(np.float32))
    groups = np.concatenate([_group_ids(real_groups, "real:", len(real))[keep_real], _group_ids(other_groups, "other:", len(other))[keep_other]])
    size = x.shape[-1]
    crop = min(crop, size)
    grid = _crop_grid(size, crop)
    predicted = np.empty(len(y), int)
    for fold, (train, test) in enumerate(_folds(y, groups, folds, seed)):
        torch.manual_seed(seed + fold)
        rng = np.random.default_rng(seed + fold)
        network = nn.Sequential(
            nn.Conv2d(2, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1),
        )
        optimiser = torch.optim.Adam(network.parameters(), lr=1e-3)
        network.train()
        for _ in range(epochs):
            images = np.repeat(train, 4)[rng.permutation(4 * len(train))]
            corners = rng.integers(0, size - crop + 1, size=(len(images), 2))
            for start in range(0, len(images), 64):
                index = images[start:start + 64]
                patches = torch.stack([x[i, :, t:t + crop, l:l + crop] for i, (t, l) in zip(index, corners[start:start + 64])])
                loss = nn.functional.binary_cross_entropy_with_logits(network(patches).squeeze(1), targets[index])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        network.eval()
        with torch.no_grad():
            for i in test:
                patches = torch.stack([x[i, :, t:t + crop, l:l + crop] for t, l in grid])
                predicted[i] = int(network(patches).mean() > 0)
    correct = int((predicted == y).sum())
    low, high = wilson_interval(correct, len(y))
    return {"value": correct / len(y), "ci_low": low, "ci_high": high, "ci_level": 0.95, "ci_method": "Wilson score over held-out predictions",
            "n_per_set": n, "folds": folds, "epochs": epochs, "crop": crop}


def spectrum_band_gaps(real_log_power: np.ndarray, other_log_power: np.ndarray, frequency: np.ndarray) -> dict:
    """Per band: the other set's mean log10 power minus the real films'; the largest gap in absolute value and its band."""
    names, real_bands = band_log_power(frequency, real_log_power)
    _, other_bands = band_log_power(frequency, other_log_power)
    gaps = other_bands.mean(axis=0) - real_bands.mean(axis=0)
    worst = int(np.argmax(np.abs(gaps)))
    return {"value": float(np.abs(gaps).max()), "worst_band": names[worst], "worst_gap": float(gaps[worst]),
            "bands_cycles_per_pixel": names, "gaps": [float(g) for g in gaps]}


# ---------------------------------------------------------------------------- the sets judged
@dataclass
class RealismSets:
    """Real held-out films split by patient into halves A and B, and the set under test."""

    real: list[np.ndarray]  # every 256-px held-out film, at the judged size
    real_patients: np.ndarray
    in_half_a: np.ndarray  # bool over `real`
    other: list[np.ndarray]
    other_groups: np.ndarray | None  # patients of the other set where it derives from real films (round trip), else None
    other_against: str  # "all" (generated: judged against every real film) or "a" (round trip of half B: judged against half A)
    description: str
    # A round trip only: the split ("val"/"test") of the film each `other` image was made from, for its PSNR/SSIM.
    other_splits: np.ndarray | None = None


def real_films(held_out: pd.DataFrame) -> pd.DataFrame:
    """The held-out films judged as real: those stored at 256 px (no resampling of 224-px re-encodes)."""
    native = pd.to_numeric(held_out.get("native_px", pd.Series(256, index=held_out.index)), errors="coerce").fillna(256)
    rows = held_out[native.to_numpy() == 256].reset_index(drop=True)
    if rows.empty:
        raise ValueError("no held-out film stored at 256 px to judge against")
    return rows


def patient_halves(patients: Sequence[str], seed: int) -> np.ndarray:
    """True for the films whose patient falls in half A of a seeded shuffle of the patients."""
    unique = np.array(sorted(set(patients)), dtype=object)
    shuffled = unique[np.random.default_rng(seed).permutation(len(unique))]
    half_a = set(shuffled[: len(unique) // 2])
    return np.array([p in half_a for p in patients])


def roundtrip_images(pipe, images: Sequence[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
    """Encode (posterior mean) and decode with the pipeline's autoencoder, 8-bit as a saved PNG would be; nothing else.

    `pipe` is a latent diffusion pipeline, or a bare AutoencoderKL (a candidate not yet paired with a UNet).
    """
    import torch

    from xray_generator.models.autoencoder import set_decoder_noise_generator

    # A decoder with noise inputs draws from a fixed generator, so a round trip's metrics repeat exactly.
    noise = torch.Generator().manual_seed(0)
    bare = not hasattr(pipe, "decode_latents")
    if bare:
        set_decoder_noise_generator(pipe, noise)
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(np.stack(images[start:start + batch_size])[:, None].astype(np.float32))
                if not bare:
                    decoded = pipe.decode_latents(pipe.encode_images(batch), generator=noise)
                else:  # the pipeline's own scaling cancels in a round trip, so a bare autoencoder skips it
                    mean = pipe.encode(batch * 2.0 - 1.0).latent_dist.mode()
                    decoded = ((pipe.decode(mean).sample + 1.0) / 2.0).clamp(0.0, 1.0)
                out.extend(np.round(decoded[:, 0].float().numpy() * 255.0).astype(np.float32) / 255.0)
    finally:
        if bare:  # the caller's autoencoder draws from torch's global generator again
            set_decoder_noise_generator(pipe, None)
    return out


def roundtrip_fidelity_metrics(sets: RealismSets) -> list[dict]:
    """PSNR (dB) and SSIM of a round trip against the films it was made from: over the test split's films
    (the value) and over every judged held-out film (beside it), each with a 95 % bootstrap CI of the mean."""
    from xray_generator.evaluation.fidelity import bootstrap_ci
    from xray_generator.evaluation.paired import psnr, ssim

    originals = [sets.real[i] for i in np.flatnonzero(~sets.in_half_a)]
    per_film = {
        "roundtrip_psnr_db": np.array([psnr(o.astype(np.float64), r.astype(np.float64)) for o, r in zip(originals, sets.other)]),
        "roundtrip_ssim": np.array([ssim(o.astype(np.float64), r.astype(np.float64)) for o, r in zip(originals, sets.other)]),
    }
    test = sets.other_splits == "test"
    if not test.any():
        test = np.ones(len(sets.other), bool)  # a data set without a test split: every held-out film
    metrics = []
    for name, values in per_film.items():
        chosen = values[test]
        metrics.append(build_metric(
            name, float(chosen.mean()), int(test.sum()), ci=bootstrap_ci(np.mean, [chosen]),
            extra={"films": "test-split films of half B (8-bit round trip against the 8-bit original)",
                   "all_held_out_value": float(values.mean()), "all_held_out_n": len(values)},
        ))
    return metrics


# ---------------------------------------------------------------------------- one run
def realism_metrics(sets: RealismSets, seed: int = 0, cnn: bool = True) -> tuple[list[dict], dict]:
    """C2ST (with its real-vs-real floor), the CNN detector and the power-spectrum gaps, as metrics-file entries; and the mean spectra."""
    frequency, real_power = radial_power_spectrum(sets.real)
    _, other_power = radial_power_spectrum(sets.other)
    real_groups = realism_feature_groups(sets.real, (frequency, real_power))
    other_groups = realism_feature_groups(sets.other, (frequency, other_power))
    a, b = sets.in_half_a, ~sets.in_half_a
    against = a if sets.other_against == "a" else np.ones(len(sets.real), bool)

    def tests(kinds: Sequence[str]) -> tuple[dict, dict]:
        real_features = np.concatenate([real_groups[k] for k in kinds], axis=1)
        other_features = np.concatenate([other_groups[k] for k in kinds], axis=1)
        floor = classifier_two_sample_test(real_features[a], real_features[b], sets.real_patients[a], sets.real_patients[b], seed=seed)
        test = classifier_two_sample_test(real_features[against], other_features, sets.real_patients[against], sets.other_groups, seed=seed)
        return test, floor

    test, floor = tests(FEATURE_GROUPS)
    per_group = {}
    for kind in FEATURE_GROUPS:
        group_test, group_floor = tests([kind])
        per_group[kind] = {"value": group_test["value"], "ci_low": group_test["ci_low"], "ci_high": group_test["ci_high"],
                           "classifier": group_test["classifier"], "floor": group_floor["value"]}
    floor_method = "real vs real: held-out 256-px films, patients split into disjoint halves A and B (seeded)"
    n_test = {"real": test["n_per_set"], "other": test["n_per_set"]}
    metrics = [build_metric(
        "realism_c2st_accuracy", test["value"], n_test, ci=test,
        floor={"value": floor["value"], "n": {"a": floor["n_per_set"], "b": floor["n_per_set"]}, "ci": floor, "method": floor_method},
        extra={"classifier": test["classifier"], "per_classifier": test["per_classifier"], "floor_per_classifier": floor["per_classifier"],
               "folds": test["folds"], "features": "radial power-spectrum bands, gradient-magnitude statistics, intensity histogram",
               "against": "real half A" if sets.other_against == "a" else "all real held-out 256-px films",
               "chance": 0.5, "per_feature_group": per_group},
    )]
    gaps = spectrum_band_gaps(real_power[against], other_power, frequency)
    floor_gaps = spectrum_band_gaps(real_power[a], real_power[b], frequency)
    metrics.append(build_metric(
        "realism_spectrum_max_band_gap", gaps["value"], {"real": int(against.sum()), "other": len(sets.other)},
        floor={"value": floor_gaps["value"], "n": {"a": int(a.sum()), "b": int(b.sum())}, "method": floor_method},
        extra={**gaps, "target": SPECTRUM_GAP_TARGET, "unit": "log10 power", "floor_gaps": floor_gaps["gaps"]},
    ))
    if cnn:
        detector = cnn_detector_accuracy([sets.real[i] for i in np.flatnonzero(against)], sets.other,
                                         sets.real_patients[against], sets.other_groups, seed=seed)
        detector_floor = cnn_detector_accuracy([sets.real[i] for i in np.flatnonzero(a)], [sets.real[i] for i in np.flatnonzero(b)],
                                               sets.real_patients[a], sets.real_patients[b], seed=seed)
        metrics.append(build_metric(
            "realism_cnn_detector_accuracy", detector["value"], {"real": detector["n_per_set"], "other": detector["n_per_set"]}, ci=detector,
            floor={"value": detector_floor["value"], "n": {"a": detector_floor["n_per_set"], "b": detector_floor["n_per_set"]},
                   "ci": detector_floor, "method": floor_method},
            extra={"folds": detector["folds"], "epochs": detector["epochs"], "target": "none (reported only)",
                   "crop": detector["crop"],
                   "network": "4 convolutions (16-32-64-64, three strided) + linear head on 64-px patches of the pixels and their Laplacian, trained from scratch per fold"},
        ))
    if sets.other_splits is not None:
        metrics.extend(roundtrip_fidelity_metrics(sets))
    spectra = {"frequency_cycles_per_pixel": [float(f) for f in frequency],
               "real_mean_log10_power": [float(v) for v in real_power[against].mean(axis=0)],
               "other_mean_log10_power": [float(v) for v in other_power.mean(axis=0)]}
    return metrics, spectra


def judged_sets(model: str, roundtrip: bool, n: int, seed: int, data_dir=None, batch_size: int = 8, generator=None,
                steps: int | None = None, autoencoder: str | Path | None = None) -> tuple[RealismSets, dict, str | None]:
    """Build the sets for one run: the real films, and the model's generated images or its autoencoder's round trip.

    `generator` is an already loaded generator of family `model` (default: `load_generator(model)`);
    `steps` overrides a text-to-image model's sampler steps (default: the model's); `autoencoder`, an
    AutoencoderKL folder, judges that autoencoder's round trip instead of the model's (a candidate).
    """
    from xray_generator.data.manifest import load_manifest
    from xray_generator.evaluation.run import EvaluationSettings
    from xray_generator.evaluation.samples import draw_samples, held_out_real, load_real, pipe_weights_sha256
    from xray_generator.pipelines.registry import FAMILY_KINDS, load_generator

    manifest = load_manifest(data_dir)
    held_out = held_out_real(manifest)
    rows = real_films(held_out)
    patients = rows["patient_id"].astype(str).to_numpy()
    in_half_a = patient_halves(patients, seed)
    if autoencoder is not None:
        from xray_generator.models.autoencoder import load_autoencoder
        from xray_generator.weights import sha256_file

        source, what = load_autoencoder(autoencoder), f"the autoencoder in {autoencoder} (fp32)"
        run_settings = {"precision": "fp32", "autoencoder": str(autoencoder)}
        weights_sha256 = sha256_file(Path(autoencoder) / "diffusion_pytorch_model.safetensors")
    else:
        generator = generator if generator is not None else load_generator(model)
    if roundtrip and autoencoder is None:
        if FAMILY_KINDS.get(model) != "text-to-image":
            raise ValueError(f"--roundtrip applies to the latent diffusion model's autoencoder, not to {model}")
        source, what = generator, f"the {model} autoencoder"
        run_settings = {"precision": getattr(generator, "precision", None)}
        weights_sha256 = pipe_weights_sha256(generator)
    if roundtrip or autoencoder is not None:
        real = load_real(rows, data_dir)
        b_index = np.flatnonzero(~in_half_a)
        other = roundtrip_images(source, [real[i] for i in b_index])
        sets = RealismSets(real, patients, in_half_a, other, patients[b_index], "a",
                           f"round trip through {what} (posterior mean, 8-bit) of the real films of half B",
                           rows["split"].to_numpy()[b_index])
        return sets, {"image_size": real[0].shape[0], **run_settings}, weights_sha256
    settings = EvaluationSettings(n=n, seed=seed, batch_size=batch_size, steps=steps)
    drawn = draw_samples(model, generator, held_out, settings, data_dir)
    size = drawn.generated[0].shape[0]
    real = load_real(rows, data_dir, size=size)
    sets = RealismSets(real, patients, in_half_a, list(drawn.generated), None, "all",
                       f"{model} generated images, as the generator returns them ({drawn.settings.get('prompts') or drawn.settings.get('requests')})")
    run_settings = {key: drawn.settings[key] for key in ("sampler", "steps", "guidance", "guidance_fraction", "precision", "image_size") if key in drawn.settings}
    return sets, run_settings, drawn.weights_sha256


def realism_file_name(model: str, roundtrip: bool) -> str:
    return f"realism_{model}{'_roundtrip' if roundtrip else ''}.json"


def run_realism(model: str = "ldm", roundtrip: bool = False, n: int = 600, seed: int = 0, cnn: bool = True,
                out_dir: str | Path | None = None, data_dir=None, generator=None, steps: int | None = None,
                autoencoder: str | Path | None = None) -> dict:
    """Judge one set against the real held-out films; write `outputs/metrics/realism_<model>[_roundtrip].json`.

    With `autoencoder` (a folder), the file is `realism_<folder name>_roundtrip.json`.
    """
    started = time.time()
    out_dir = Path(out_dir) if out_dir is not None else outputs_dir() / "metrics"
    sets, run_settings, weights_sha256 = judged_sets(model, roundtrip, n, seed, data_dir, generator=generator, steps=steps,
                                                     autoencoder=autoencoder)
    if autoencoder is not None:
        model, roundtrip = Path(autoencoder).name, True
    metrics, spectra = realism_metrics(sets, seed=seed, cnn=cnn)
    name = f"{model} round trip" if roundtrip else model
    return write_metrics_json(
        out_dir / realism_file_name(model, roundtrip), model=name,
        settings={**run_settings, "judged": sets.description, "n_real_256px_held_out": len(sets.real), "n_other": len(sets.other),
                  "seed": seed, "post_processing": "none: the raw generator output, 8-bit", "power_spectrum": spectra,
                  "wall_seconds": round(time.time() - started, 1)},
        weights_sha256=weights_sha256, metrics=metrics,
    )


def plot_power_spectra(documents: Sequence[dict], path: str | Path) -> Path:
    """Mean log10 radial power of the real films and of each judged set, from realism metrics files (nothing recomputed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xray_generator.evaluation.run import save_plot

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 6.0), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    real_drawn = set()
    for doc in documents:
        spectra = doc["settings"]["power_spectrum"]
        frequency = np.asarray(spectra["frequency_cycles_per_pixel"])
        real, other = np.asarray(spectra["real_mean_log10_power"]), np.asarray(spectra["other_mean_log10_power"])
        size = len(frequency) * 2
        if size not in real_drawn:
            top.plot(frequency, real, color="black", lw=2, label=f"real held-out films ({size} px)")
            real_drawn.add(size)
        n_other = doc["settings"].get("n_other")
        top.plot(frequency, other, lw=1.2, label=f"{doc['model']} (n={n_other})")
        bottom.plot(frequency, other - real, lw=1.2, label=doc["model"])
    for edge in SPECTRUM_BAND_EDGES:
        bottom.axvline(edge, color="#cccccc", lw=0.6)
    bottom.axhspan(-SPECTRUM_GAP_TARGET, SPECTRUM_GAP_TARGET, color="#dddddd", alpha=0.6, label=f"±{SPECTRUM_GAP_TARGET} (target, per band)")
    bottom.axhline(0, color="black", lw=0.8)
    top.set_xscale("log")
    top.set_ylabel("mean log10 power")
    bottom.set_ylabel("minus real")
    bottom.set_xlabel("spatial frequency (cycles per pixel)")
    top.legend(fontsize=7)
    top.set_title("Radially averaged power spectrum: real vs synthetic (synthetic images, raw generator output)", fontsize=8)
    fig.tight_layout()
    save_plot(fig, Path(path))
    plt.close(fig)
    return Path(path)


def load_realism_documents(folder: str | Path | None = None) -> list[dict]:
    folder = Path(folder) if folder is not None else outputs_dir() / "metrics"
    return [read_metrics_json(path) for path in sorted(folder.glob("realism_*.json"))]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from xray_generator.pipelines.registry import GENERATOR_FAMILIES

    parser.add_argument("--model", default="ldm", help=f"generator family: {', '.join(GENERATOR_FAMILIES)} (default ldm)")
    parser.add_argument("--roundtrip", action="store_true", help="judge the model's autoencoder round trip of real films instead (ldm only)")
    parser.add_argument("--autoencoder", default=None, help="an AutoencoderKL folder (config.json + safetensors): judge its round trip instead")
    parser.add_argument("--n", type=int, default=600, help="generated images (default 600; the same plan and cache as `evaluate`)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cnn", action="store_true", help="skip the CNN detector (it trains 2 x 3 small networks)")
    parser.add_argument("--out", default=None, help="output folder (default outputs/metrics)")
    parser.add_argument("--data-dir", default=None, help="folder with metadata.csv (default: the full set, else the sample)")


def run_from_args(args: argparse.Namespace) -> dict:
    if not 20 <= args.n <= 100_000:
        raise ValueError(f"--n must be between 20 and 100000, got {args.n}")
    document = run_realism(args.model, roundtrip=args.roundtrip, n=args.n, seed=args.seed, cnn=not args.no_cnn,
                           out_dir=args.out, data_dir=args.data_dir, autoencoder=args.autoencoder)
    folder = Path(args.out) if args.out else outputs_dir() / "metrics"
    plot_power_spectra(load_realism_documents(folder), folder / "realism_spectrum.png")
    for metric in document["metrics"]:
        ci = f"  [{metric['ci']['low']:.3f}, {metric['ci']['high']:.3f}]" if metric["ci"] else ""
        floor = f"  floor {metric['floor']['value']:.3f}" if metric["floor"] else ""
        print(f"{metric['name']:<36} {metric['value']:.3f}{ci}{floor}  n={metric['n']}")
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xray_generator realism", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run_from_args(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
