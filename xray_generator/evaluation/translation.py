"""Paired metrics of an image-to-image generator (the CVAE): does the finding appear, does the anatomy stay?

For each held-out source film (normally a Normal one):

- reconstruction under its own label (``reference``): SSIM and PSNR against the source, the
  valid paired metrics of a VAE;
- translation to ``target``: SSIM against the source (anatomy kept) and, with the classifier,
  the target's probability before and after (the finding appears: the share of films whose
  score rises).

A blurred or hazy film already scores higher for pneumonia, so a rise from the input can come
from the autoencoder's loss of detail alone. The label's own effect is measured against the
reconstruction: the share of films whose translation scores above their reconstruction (same
latent draw, only the label differs).

Sources are compared at the model's size (the resized input the model saw), so a change of
resolution never counts as a change of finding.

    per_image = translate_sources(generator, sources, classifier)
    summary = summarise_translation(per_image)              # means with 95% bootstrap CIs
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from xray_generator.evaluation.fidelity import bootstrap_ci
from xray_generator.evaluation.paired import psnr, ssim
from xray_generator.io import save_png_with_metadata

SSIM_TARGET = 0.6  # the bar for "anatomy preserved"


def translate_sources(generator, sources: Sequence[np.ndarray], classifier=None, target: str = "Pneumonia", reference: str = "Normal", seed: int = 0) -> dict:
    """Translate and reconstruct every source; per-image metrics and the images themselves.

    Parameters
    ----------
    generator : a Generator taking ``source`` (the CVAE), with ``prepare(source)`` giving the
        resized input the model sees
    sources : float (H, W) images in [0, 1]
    classifier : LoadedClassifier, optional
        Scores ``target`` before and after; without it the score arrays are absent.
    target, reference : str
        The labels to translate to and to reconstruct with.
    seed : int
        Image i is generated with seed + i (both calls).

    Returns
    -------
    dict of arrays (one entry per source): ``reconstruction_ssim``, ``reconstruction_psnr_db``,
    ``translation_ssim``, ``seconds`` (the translate call), with a classifier ``score_before``
    (input), ``score_reconstruction`` and ``score_after`` (translation); and ``inputs``, ``reconstructions``, ``translations`` (lists of images).
    """
    if len(sources) == 0:
        raise ValueError("translate_sources needs at least one source image")
    inputs, recs, outs, seconds = [], [], [], []
    for i, image in enumerate(sources):
        inputs.append(generator.prepare(image))
        started = time.perf_counter()
        outs.append(generator.generate(1, condition=target, seed=seed + i, source=image)[0])
        seconds.append(time.perf_counter() - started)
        recs.append(generator.generate(1, condition=reference, seed=seed + i, source=image)[0])
    result = {
        "reconstruction_ssim": np.array([ssim(a, b) for a, b in zip(inputs, recs)]),
        "reconstruction_psnr_db": np.array([psnr(a, b) for a, b in zip(inputs, recs)]),
        "translation_ssim": np.array([ssim(a, b) for a, b in zip(inputs, outs)]),
        "seconds": np.array(seconds),
        "inputs": inputs,
        "reconstructions": recs,
        "translations": outs,
    }
    if classifier is not None:
        column = list(classifier.labels).index(target)
        result["score_before"] = classifier.predict_proba(inputs)[:, column].astype(np.float64)
        result["score_reconstruction"] = classifier.predict_proba(recs)[:, column].astype(np.float64)
        result["score_after"] = classifier.predict_proba(outs)[:, column].astype(np.float64)
    return result


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values))


def _with_ci(values: np.ndarray, n_boot: int, seed: int) -> dict:
    values = np.asarray(values, dtype=np.float64)
    ci = bootstrap_ci(_mean, [values], n_boot=n_boot, seed=seed)
    return {"mean": float(values.mean()), "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "n": int(len(values))}


def summarise_translation(per_image: dict, rows: np.ndarray | None = None, n_boot: int = 1000) -> dict:
    """Means with 95% percentile-bootstrap CIs of `translate_sources` output (optionally a subset of `rows`).

    ``share_rising`` is the share of sources whose target score rises from the input (the issue's
    target: at least 0.8); ``share_above_reconstruction`` the share whose translation scores above
    the reconstruction (the label's own effect); ``share_ssim_at_least_0.6`` the share whose
    translation keeps SSIM >= 0.6; ``share_rising_with_ssim_at_least_0.6`` the share where both hold.
    """
    pick = (lambda a: np.asarray(a)[rows]) if rows is not None else np.asarray
    translation_ssim = pick(per_image["translation_ssim"])
    summary = {
        "n": int(len(translation_ssim)),
        "ci": f"95% percentile bootstrap over images, {n_boot} resamples",
        "seconds_per_image": float(np.median(pick(per_image["seconds"]))),
        "reconstruction": {
            "ssim": _with_ci(pick(per_image["reconstruction_ssim"]), n_boot, 0),
            "psnr_db": _with_ci(pick(per_image["reconstruction_psnr_db"]), n_boot, 1),
        },
        "translation": {
            "ssim": _with_ci(translation_ssim, n_boot, 2),
            f"share_ssim_at_least_{SSIM_TARGET}": _with_ci(translation_ssim >= SSIM_TARGET, n_boot, 3),
        },
    }
    if "score_before" in per_image:
        before, after = pick(per_image["score_before"]), pick(per_image["score_after"])
        reconstruction = pick(per_image["score_reconstruction"])
        summary["translation"].update(
            score_before=_with_ci(before, n_boot, 4),
            score_reconstruction=_with_ci(reconstruction, n_boot, 5),
            score_after=_with_ci(after, n_boot, 6),
            score_rise=_with_ci(after - before, n_boot, 7),
            share_rising=_with_ci(after > before, n_boot, 8),
            share_above_reconstruction=_with_ci(after > reconstruction, n_boot, 9),
        )
        # The target counts a film only when both hold: the finding appears and the anatomy stays.
        summary["translation"][f"share_rising_with_ssim_at_least_{SSIM_TARGET}"] = _with_ci((after > before) & (translation_ssim >= SSIM_TARGET), n_boot, 10)
    return summary


def example_grid(per_image: dict, path: Path, metadata: dict, count: int = 6) -> None:
    """Rows of: input, reconstruction (Normal), translation (Pneumonia), |translation - input| x 4."""
    rows = []
    for inp, rec, out in list(zip(per_image["inputs"], per_image["reconstructions"], per_image["translations"]))[:count]:
        rows.append(np.concatenate([inp, rec, out, np.clip(np.abs(out - inp) * 4.0, 0, 1)], axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png_with_metadata(np.concatenate(rows, axis=0), path, metadata)
