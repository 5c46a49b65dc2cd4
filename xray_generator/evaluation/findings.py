"""Condition fidelity per NIH finding and for adults, written to `outputs/metrics/findings_<model>.json`.

    python -m xray_generator findings --model ldm --n 200     # measure (text-to-image families)
    python -m xray_generator findings --train-head            # refit weights/finding_head first

Two questions of issue #18, both in the feature space of our classifier (`weights/classifier`):

**Per NIH finding.** The finding head (`weights/finding_head`, logistic regressions on the
classifier's penultimate features, fitted on the NIH train films) scores each finding. A finding
qualifies (`qualification`) when the held-out (val + test) films of the sources that annotate it
hold at least `QUALIFYING_MIN_POSITIVES` positives and `QUALIFYING_MIN_NEGATIVES` negatives, and
the head's AUROC on them has a 95 % CI whose lower bound is above `QUALIFYING_MIN_AUROC_CI_LOW`:
below that the head cannot tell the finding on real films, and its AUROC on generated ones would
mean nothing. For each qualifying finding, ``n`` images are generated from adult prompts naming
it and ``n`` from adult Normal prompts; the head's AUROC between the two sets is reported next to
its AUROC on real held-out adult films with the finding against adult Normal films.

Every NIH film with a finding in this data is also labelled Pneumonia (the 500 + 500 draw of
Pneumonia and No Finding films), so a finding prompt names pneumonia too, as the training prompts
of those films do, and "finding vs Normal" partly measures pneumonia. The `extra` of each
finding therefore also holds its AUROC against adult Pneumonia prompts (and, on real films,
against NIH pneumonia films without the finding): that one isolates the finding.

**Adults.** Real held-out films are grouped by (age group, main finding) as the evaluation's
strata are (`evaluation_stratum`; elderly counts as adult), and each group's mean feature vector
is a centroid. Of ``n`` images generated from adult Normal prompts, the share whose nearest
centroid is an adult one is reported with a Wilson interval (target at least
`ADULT_SHARE_TARGET`), next to the same share for the real adult Normal films (each left out of
its own centroid). The classifier's pneumonia AUROC between adult Pneumonia and adult Normal
prompts is reported next to its AUROC on real held-out adult films, with the bootstrap CI of the
difference (target within `ADULT_AUROC_GAP_TARGET`).

Prompts come from the training prompt builder (`prompt_variants`) on made-up adult metadata rows
(PA view, alternating sex), so they are worded as training prompts are. Each set has its own
seeds and the images go to the evaluation's cache (named by weights hash and sampler settings;
a cached image is reused only for the same prompt), so a rerun generates nothing.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from xray_generator.data.manifest import Manifest, load_manifest, split_labels
from xray_generator.data.prompts import NORMAL_VARIANT, age_group, prompt_variants
from xray_generator.evaluation.fidelity import bootstrap_ci, condition_fidelity_auroc
from xray_generator.evaluation.memorisation import wilson_interval
from xray_generator.evaluation.report import build_metric, write_metrics_json
from xray_generator.paths import cache_dir, outputs_dir, weights_dir
from xray_generator.vocabulary import KNOWN_LABELS

# The qualifying rule for a finding (see the module docstring).
QUALIFYING_MIN_POSITIVES = 20
QUALIFYING_MIN_NEGATIVES = 20
QUALIFYING_MIN_AUROC_CI_LOW = 0.6
# The adults done-means of issue #18.
ADULT_SHARE_TARGET = 0.8
ADULT_AUROC_GAP_TARGET = 0.05
# A (age group, finding) group of real held-out films needs this many films to be a centroid.
CENTROID_MIN_FILMS = 5
# Any age from 18 to 69 reads "adult" in the prompt builder; the age itself is not in the prompt.
PROMPT_AGE = 45
# Seeds of prompt set `label`: seed + FINDINGS_SEED_OFFSET + KNOWN_LABELS.index(label) * SEEDS_PER_SET + i.
# Far above the evaluation's plan, diversity and timing seeds, so no two requests share a cache file.
FINDINGS_SEED_OFFSET = 30_000_000
SEEDS_PER_SET = 100_000
PNEUMONIA_LABELS = ("Pneumonia", "Bacterial pneumonia", "Viral pneumonia")  # as the evaluation's pneumonia_vs_normal task
WILSON_METHOD = "Wilson score interval"


# ---------------------------------------------------------------------------- real films
def label_sets(rows: pd.DataFrame) -> list[set[str]]:
    return [set(split_labels(None if pd.isna(value) else str(value))) for value in rows["labels"]]


def adult_mask(rows: pd.DataFrame) -> np.ndarray:
    """True for films the prompt builder calls adult or elderly (Kermany and recorded ages under 18 are paediatric)."""
    return np.array([age_group(row)[0] != "pediatric" for _, row in rows.iterrows()], dtype=bool)


def qualification(n_positive: int, n_negative: int, auroc_ci_low: float | None) -> tuple[bool, str]:
    """Whether a finding's generated fidelity can be measured, and why (not)."""
    reasons = []
    if n_positive < QUALIFYING_MIN_POSITIVES:
        reasons.append(f"{n_positive} held-out positives < {QUALIFYING_MIN_POSITIVES}")
    if n_negative < QUALIFYING_MIN_NEGATIVES:
        reasons.append(f"{n_negative} held-out negatives < {QUALIFYING_MIN_NEGATIVES}")
    if not reasons:
        if auroc_ci_low is None:
            reasons.append("no held-out AUROC")
        elif auroc_ci_low <= QUALIFYING_MIN_AUROC_CI_LOW:
            reasons.append(f"held-out AUROC CI lower bound {auroc_ci_low:.3f} <= {QUALIFYING_MIN_AUROC_CI_LOW}")
    if reasons:
        return False, "; ".join(reasons)
    return True, (f">= {QUALIFYING_MIN_POSITIVES} positives and >= {QUALIFYING_MIN_NEGATIVES} negatives held out, "
                  f"AUROC CI lower bound {auroc_ci_low:.3f} > {QUALIFYING_MIN_AUROC_CI_LOW}")


def _auroc_or_none(scores: np.ndarray, positive: np.ndarray, negative: np.ndarray, n_boot: int, seed: int) -> dict | None:
    """AUROC of `scores` for positive against negative films (CI by `condition_fidelity_auroc`); None with fewer than 2 of either."""
    if positive.sum() < 2 or negative.sum() < 2:
        return None
    keep = positive | negative
    return condition_fidelity_auroc(scores[keep], positive[keep].astype(int), n_boot=n_boot, seed=seed)


def finding_auroc_report(head, features: np.ndarray, rows: pd.DataFrame, annotated: dict[str, Sequence[str]],
                         n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Per finding of `head`: counts, AUROCs on real films, and whether it qualifies.

    Parameters
    ----------
    head : FindingHead
    features : (N, D) classifier features of the films of `rows`
    rows : DataFrame
        Manifest rows of the films judged (the held-out split).
    annotated : dict
        Finding -> sources that annotate it (`xray_generator.models.classifier.annotating_sources`);
        films of other sources, and films with no label at all, are neither positive nor negative.

    Returns
    -------
    report : dict
        Finding -> ``n_positive``, ``n_negative``, ``n_positive_patients`` (annotating films),
        ``auroc`` (positives against every annotating negative: the qualifying AUROC),
        ``auroc_vs_normal`` (adult positives against adult Normal films: the reference of the
        generated fidelity), ``auroc_vs_pneumonia`` (adult positives against adult pneumonia
        films without the finding), each a `condition_fidelity_auroc` result or None, and
        ``qualifies`` with its ``reason``.
    """
    from xray_generator.models.classifier import label_targets

    rows = rows.reset_index(drop=True)
    targets, known = label_targets(Manifest(rows, Path(".")), head.labels, annotated)
    found = label_sets(rows)
    adult = adult_mask(rows)
    normal = np.array(["Normal" in names for names in found])
    pneumonia = np.array([bool(names & set(PNEUMONIA_LABELS)) and "Normal" not in names for names in found])
    logits = head.logits(features)
    report = {}
    for j, label in enumerate(head.labels):
        positive, negative = known[:, j] & (targets[:, j] == 1), known[:, j] & (targets[:, j] == 0)
        overall = _auroc_or_none(logits[:, j], positive, negative, n_boot, seed)
        qualifies, reason = qualification(int(positive.sum()), int(negative.sum()), overall["ci_low"] if overall else None)
        report[label] = {
            "n_positive": int(positive.sum()), "n_negative": int(negative.sum()),
            "n_positive_patients": int(rows.loc[positive, "patient_id"].nunique()),
            "auroc": overall,
            "auroc_vs_normal": _auroc_or_none(logits[:, j], positive & adult, negative & adult & normal, n_boot, seed),
            "auroc_vs_pneumonia": _auroc_or_none(logits[:, j], positive & adult, negative & adult & pneumonia, n_boot, seed),
            "qualifies": qualifies, "reason": reason,
        }
    return report


# ---------------------------------------------------------------------------- centroids
def age_class(row: pd.Series) -> str | None:
    """'adult Normal', 'pediatric Pneumonia', ...: the film's evaluation stratum with elderly as adult; None for 'other'."""
    from xray_generator.evaluation.samples import evaluation_stratum

    age, finding = evaluation_stratum(row)
    if finding == "other":
        return None
    return f"{'pediatric' if age == 'pediatric' else 'adult'} {finding}"


def class_centroids(features: np.ndarray, classes: Sequence[str | None], min_films: int = CENTROID_MIN_FILMS) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, (K, D) mean features, (K,) film counts) of every class with at least `min_films` films, sorted by name."""
    classes = np.asarray([c if c is not None else "" for c in classes], dtype=object)
    names = sorted(c for c in set(classes) if c and (classes == c).sum() >= min_films)
    if not names:
        raise ValueError(f"no (age group, finding) class has {min_films} real films for a centroid")
    features = np.asarray(features, dtype=np.float64)
    centroids = np.stack([features[classes == name].mean(axis=0) for name in names])
    counts = np.array([(classes == name).sum() for name in names])
    return names, centroids, counts


def squared_distances(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    return (features ** 2).sum(1)[:, None] - 2.0 * features @ centroids.T + (centroids ** 2).sum(1)[None, :]


def nearest_centroid(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of each feature row's nearest centroid (Euclidean)."""
    return squared_distances(features, centroids).argmin(axis=1)


def nearest_centroid_leaving_out(features: np.ndarray, own: np.ndarray, centroids: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Nearest centroid of real films that are members of centroid `own[i]`, that centroid recomputed without film i.

    Without this a film would be measured against a mean it is part of, which favours its own class.
    """
    features = np.asarray(features, dtype=np.float64)
    distances = squared_distances(features, centroids)
    for i, k in enumerate(own):
        if counts[k] > 1:
            without = (centroids[k] * counts[k] - features[i]) / (counts[k] - 1)
            distances[i, k] = ((features[i] - without) ** 2).sum()
    return distances.argmin(axis=1)


def share_with_wilson(hits: np.ndarray) -> dict:
    """Share of True in `hits` with its 95 % Wilson interval."""
    hits = np.asarray(hits, dtype=bool)
    low, high = wilson_interval(int(hits.sum()), len(hits))
    return {"value": float(hits.mean()), "successes": int(hits.sum()), "n": len(hits),
            "ci_low": low, "ci_high": high, "ci_level": 0.95, "ci_method": WILSON_METHOD}


def auroc_difference(generated_scores: np.ndarray, generated_labels: np.ndarray, real_scores: np.ndarray, real_labels: np.ndarray,
                     n_boot: int = 1000, seed: int = 0) -> dict:
    """Generated AUROC minus real AUROC, with a bootstrap CI that resamples each set on its own (films with their labels)."""
    from sklearn.metrics import roc_auc_score

    def auroc(table: np.ndarray) -> float:
        if table[:, 1].min() == table[:, 1].max():
            raise ValueError("one class only")
        return float(roc_auc_score(table[:, 1], table[:, 0]))

    generated = np.column_stack([np.asarray(generated_scores, float), np.asarray(generated_labels, float)])
    real = np.column_stack([np.asarray(real_scores, float), np.asarray(real_labels, float)])
    return bootstrap_ci(lambda g, r: auroc(g) - auroc(r), [generated, real], n_boot=n_boot, seed=seed)


# ---------------------------------------------------------------------------- prompts
def prompt_set_labels(name: str) -> str:
    """The metadata labels of prompt set `name`: 'Normal', 'Pneumonia', or 'Pneumonia; <finding>' for an NIH finding.

    Every NIH film with a finding here is also a Pneumonia film, so its training prompts name both.
    """
    return name if name in ("Normal", "Pneumonia") else f"Pneumonia; {name}"


def prompt_plan(name: str, n: int, seed: int = 0) -> pd.DataFrame:
    """`n` (prompt, seed) rows of adult PA prompts for prompt set `name`, written by the training prompt builder.

    Candidate k is a made-up adult PA film (sex alternating M/F) captioned by `prompt_variants`
    in the slots that name the findings (0 and 1, as the evaluation's prompts; Normal sets also
    the "Normal adult PA chest radiograph" slot, `NORMAL_VARIANT`), taken in turn. Only prompts
    that say "adult" and "PA" are kept: some templates name neither ("Findings: ..."), and the
    question is what the model draws when asked for an adult film. A smaller plan is a prefix of
    a larger one.
    """
    if name not in KNOWN_LABELS:
        raise ValueError(f"unknown prompt set {name!r}; expected a label of xray_generator.vocabulary")
    if not 1 <= n <= SEEDS_PER_SET:
        raise ValueError(f"n must be between 1 and {SEEDS_PER_SET}, got {n}")
    labels = prompt_set_labels(name)
    variants = (0, 1, NORMAL_VARIANT) if name == "Normal" else (0, 1)
    first_seed = seed + FINDINGS_SEED_OFFSET + KNOWN_LABELS.index(name) * SEEDS_PER_SET
    records, candidate = [], 0
    while len(records) < n:
        if candidate > 50 * n + 100:
            raise ValueError(f"the prompt builder wrote no adult PA prompts for {labels!r}")
        row = pd.Series({"image_id": f"findings-{name}-{candidate}", "labels": labels, "age": PROMPT_AGE, "source": "prompt",
                         "view": "PA", "sex": "MF"[candidate % 2], "report": None})
        variant = variants[candidate % len(variants)]
        prompt = prompt_variants(row, count=variant + 1)[variant]
        if re.search(r"\badult\b", prompt, re.IGNORECASE) and re.search(r"\bPA\b", prompt):
            records.append({"prompt": prompt, "seed": first_seed + len(records), "labels": labels})
        candidate += 1
    return pd.DataFrame(records)


# ---------------------------------------------------------------------------- the run
def _ci(result: dict) -> dict:
    return {"low": result["ci_low"], "high": result["ci_high"], "level": result["ci_level"], "method": result["ci_method"]}


def _summary(result: dict | None) -> dict | None:
    """An AUROC result as it is kept in `extra` and settings: value, CI and n."""
    if result is None:
        return None
    return {"value": result["value"], "ci_low": result["ci_low"], "ci_high": result["ci_high"],
            "n_positive": result["n_positive"], "n_negative": result["n_negative"]}


def finding_metrics(head, report: dict, generated_features: dict[str, np.ndarray], prompts: dict[str, pd.DataFrame], n_boot: int, seed: int) -> list[dict]:
    """One metric per qualifying finding: the head's AUROC between its prompts' images and adult Normal prompts' images."""
    from xray_generator.models.classifier import label_slug

    metrics = []
    for label, entry in report.items():
        if not entry["qualifies"]:
            continue
        score = {name: head.score(features, label) for name, features in generated_features.items()}
        against_normal = condition_fidelity_auroc(
            np.concatenate([score[label], score["Normal"]]),
            np.r_[np.ones(len(score[label]), int), np.zeros(len(score["Normal"]), int)], n_boot=n_boot, seed=seed)
        against_pneumonia = condition_fidelity_auroc(
            np.concatenate([score[label], score["Pneumonia"]]),
            np.r_[np.ones(len(score[label]), int), np.zeros(len(score["Pneumonia"]), int)], n_boot=n_boot, seed=seed)
        real = entry["auroc_vs_normal"]
        floor = None if real is None else {
            "value": real["value"], "n": {"real_adult_positive": real["n_positive"], "real_adult_normal": real["n_negative"]}, "ci": real,
            "method": (f"the finding head's AUROC on real held-out (val + test) adult films with {label} against adult Normal films "
                       "of the sources annotating it (the reference, not a lower bound)")}
        metrics.append(build_metric(
            f"condition_fidelity_auroc_finding_{label_slug(label)}", against_normal["value"],
            {"generated_finding": against_normal["n_positive"], "generated_normal": against_normal["n_negative"]}, ci=against_normal,
            floor=floor,
            extra={
                "finding": label, "score": f"finding head logit for {label} (weights/finding_head)",
                "prompts": f"adult PA prompts for '{prompt_set_labels(label)}' against adult PA Normal prompts",
                "example_prompts": prompts[label]["prompt"].head(3).tolist(),
                "gap_to_real": None if real is None else real["value"] - against_normal["value"],
                "against_adult_pneumonia_prompts": _summary(against_pneumonia),
                "real_against_adult_pneumonia_without_finding": _summary(entry["auroc_vs_pneumonia"]),
                "head_held_out_auroc": _summary(entry["auroc"]), "qualification": entry["reason"],
            },
        ))
    return metrics


def adult_metrics(classifier, real_features: np.ndarray, real_probabilities: np.ndarray, held_out: pd.DataFrame,
                  generated_features: dict[str, np.ndarray], generated_probabilities: dict[str, np.ndarray],
                  n_boot: int, seed: int) -> tuple[list[dict], dict]:
    """The adults done-means: nearest-centroid share of adult Normal prompts, and adult pneumonia vs Normal AUROC against real."""
    from xray_generator.evaluation.run import classifier_score, fidelity_labels

    classes = [age_class(row) for _, row in held_out.iterrows()]
    names, centroids, counts = class_centroids(real_features, classes, CENTROID_MIN_FILMS)
    is_adult_centroid = np.array([name.startswith("adult") for name in names])
    if "adult Normal" not in names or is_adult_centroid.all():
        raise ValueError(f"the real held-out films give centroids {names} (classes of at least {CENTROID_MIN_FILMS} films); "
                         "the adult share needs an adult Normal one and a paediatric one")

    generated_nearest = nearest_centroid(generated_features["Normal"], centroids)
    generated_share = share_with_wilson(is_adult_centroid[generated_nearest])
    pneumonia_share = share_with_wilson(is_adult_centroid[nearest_centroid(generated_features["Pneumonia"], centroids)])
    members = np.flatnonzero([c == "adult Normal" for c in classes])
    real_nearest = nearest_centroid_leaving_out(real_features[members], np.full(len(members), names.index("adult Normal")), centroids, counts)
    real_share = share_with_wilson(is_adult_centroid[real_nearest])
    share_metric = build_metric(
        "condition_fidelity_adult_centroid_share", generated_share["value"], {"generated_adult_normal": generated_share["n"]},
        ci=generated_share,
        floor={"value": real_share["value"], "n": {"real_adult_normal": real_share["n"]}, "ci": real_share,
               "method": "real held-out adult Normal films, each left out of its own centroid (the reference, not a lower bound)"},
        extra={"what": "share of images generated from adult Normal prompts whose nearest real held-out (age group, finding) centroid, "
                       "in classifier features, is an adult one",
               "target": f">= {ADULT_SHARE_TARGET}", "meets_target": generated_share["value"] >= ADULT_SHARE_TARGET,
               "nearest_centroid_counts": {name: int((generated_nearest == k).sum()) for k, name in enumerate(names)},
               "centroids": {name: int(count) for name, count in zip(names, counts)},
               "adult_pneumonia_prompts_share": {k: pneumonia_share[k] for k in ("value", "ci_low", "ci_high", "n")}},
    )

    # Adult pneumonia vs adult Normal: the classifier's pneumonia score, generated sets against real held-out adult films.
    adult = adult_mask(held_out)
    real_y = fidelity_labels(held_out["labels"].fillna("").tolist(), PNEUMONIA_LABELS, ("Normal",))
    keep = adult & (real_y >= 0)
    real_scores = classifier_score(classifier, real_probabilities, PNEUMONIA_LABELS)[keep]
    real_auc = condition_fidelity_auroc(real_scores, real_y[keep], n_boot=n_boot, seed=seed)
    test_only = keep & (held_out["split"].to_numpy() == "test")
    real_test = _auroc_or_none(classifier_score(classifier, real_probabilities, PNEUMONIA_LABELS),
                               test_only & (real_y == 1), test_only & (real_y == 0), n_boot, seed)
    gen_scores = np.concatenate([classifier_score(classifier, generated_probabilities["Pneumonia"], PNEUMONIA_LABELS),
                                 classifier_score(classifier, generated_probabilities["Normal"], PNEUMONIA_LABELS)])
    gen_y = np.r_[np.ones(len(generated_probabilities["Pneumonia"]), int), np.zeros(len(generated_probabilities["Normal"]), int)]
    gen_auc = condition_fidelity_auroc(gen_scores, gen_y, n_boot=n_boot, seed=seed)
    gap = auroc_difference(gen_scores, gen_y, real_scores, real_y[keep], n_boot=n_boot, seed=seed)
    real_n = {"real_adult_pneumonia": real_auc["n_positive"], "real_adult_normal": real_auc["n_negative"]}
    gen_n = {"generated_adult_pneumonia": gen_auc["n_positive"], "generated_adult_normal": gen_auc["n_negative"]}
    real_method = ("the classifier's pneumonia AUROC on real held-out (val + test) adult films: any pneumonia label against Normal "
                   "(the reference, not a lower bound)")
    auroc_metric = build_metric(
        "condition_fidelity_auroc_adult_pneumonia_vs_adult_normal", gen_auc["value"], gen_n, ci=gen_auc,
        floor={"value": real_auc["value"], "n": real_n, "ci": real_auc, "method": real_method},
        extra={"score": "classifier probability, the highest of its Pneumonia, Bacterial and Viral pneumonia heads",
               "prompts": "adult PA Pneumonia prompts against adult PA Normal prompts", "gap_to_real": real_auc["value"] - gen_auc["value"],
               "real_test_split_only": _summary(real_test),
               "note": "the classifier chose its checkpoint on the val split of an earlier build (no NIH films then); the test split alone is in real_test_split_only"},
    )
    gap_metric = build_metric(
        "condition_fidelity_auroc_gap_adult_pneumonia", gap["value"], {**gen_n, **real_n}, ci=gap,
        extra={"what": "generated AUROC minus real AUROC, adult pneumonia vs adult Normal (condition_fidelity_auroc_adult_pneumonia_vs_adult_normal)",
               "target": f"|gap| <= {ADULT_AUROC_GAP_TARGET}", "meets_target": abs(gap["value"]) <= ADULT_AUROC_GAP_TARGET,
               "ci_resampling": "each set (generated, real) resampled on its own, films with their labels"},
    )
    return [share_metric, auroc_metric, gap_metric], {"centroids": dict(zip(names, counts.tolist())), "centroid_rule": (
        f"real held-out films grouped by (age group, main finding) as evaluation_stratum does, elderly as adult, 'other' left out; "
        f"groups of at least {CENTROID_MIN_FILMS} films")}


def run_findings(model: str = "ldm", settings=None, classifier_folder: str | Path | None = None, head_folder: str | Path | None = None,
                 out_dir: str | Path | None = None, data_dir: str | Path | None = None, pipe=None) -> dict:
    """Measure both questions for a text-to-image family and write `findings_<model>.json`; return the document.

    `settings` is an `EvaluationSettings` (n per prompt set, seed, sampler settings, batch size,
    n_boot); `pipe` an already loaded generator of family `model` (default: `load_generator(model)`).
    """
    from xray_generator.evaluation.run import EvaluationSettings, single_threaded_blas
    from xray_generator.evaluation.samples import (check_family_settings, generate_cached, held_out_real, load_real,
                                                   pipe_weights_sha256, resolved_sampler_settings, settings_key)
    from xray_generator.models.classifier import load_classifier
    from xray_generator.models.finding_head import load_finding_head
    from xray_generator.pipelines.registry import FAMILY_KINDS, load_generator

    started = time.time()
    settings = settings if settings is not None else EvaluationSettings(n=200, n_boot=1000)
    check_family_settings(model, settings)
    if FAMILY_KINDS[model] != "text-to-image":
        raise ValueError(f"findings asks for prompts naming a finding and an age: text-to-image families only (ldm), not {model}")
    out_dir = Path(out_dir) if out_dir is not None else outputs_dir() / "metrics"
    classifier = load_classifier(Path(classifier_folder) if classifier_folder else weights_dir() / "classifier")
    head_folder = Path(head_folder) if head_folder else weights_dir() / "finding_head"
    head = load_finding_head(head_folder, classifier.feature_extractor.settings["weights_sha256"])
    manifest = load_manifest(data_dir)
    held_out = held_out_real(manifest)
    annotated = head.config["annotated_sources"]  # the sources whose films the head was fitted on

    # Real held-out films: what the head can tell, and the centroids.
    real = load_real(held_out, data_dir)
    real_features = classifier.feature_extractor(real)
    real_probabilities = classifier.predict_proba(real)
    with single_threaded_blas():
        report = finding_auroc_report(head, real_features, held_out, annotated, n_boot=settings.n_boot, seed=settings.seed)
    qualifying = [label for label, entry in report.items() if entry["qualifies"]]

    # Generated sets: adult Normal, adult Pneumonia, and each qualifying finding.
    pipe = pipe if pipe is not None else load_generator(model)
    cache = cache_dir() / "evaluation" / model / settings_key(pipe, settings)
    prompts = {name: prompt_plan(name, settings.n, settings.seed) for name in ["Normal", "Pneumonia", *qualifying]}
    generated_features, generated_probabilities = {}, {}
    for name, plan in prompts.items():
        images = generate_cached(pipe, plan["prompt"].tolist(), plan["seed"].tolist(), cache, settings, f"{model}: adult {name}")
        generated_features[name] = classifier.feature_extractor(images)
        if name in ("Normal", "Pneumonia"):
            generated_probabilities[name] = classifier.predict_proba(images)

    with single_threaded_blas():
        metrics = finding_metrics(head, report, generated_features, prompts, settings.n_boot, settings.seed)
        adult, centroid_settings = adult_metrics(classifier, real_features, real_probabilities, held_out, generated_features,
                                                 generated_probabilities, settings.n_boot, settings.seed)
    metrics += adult
    return write_metrics_json(
        out_dir / f"findings_{model}.json", model=model,
        settings={
            **resolved_sampler_settings(pipe, settings), "n_per_prompt_set": settings.n, "seed": settings.seed,
            "batch_size": settings.batch_size, "n_boot": settings.n_boot, "precision": getattr(pipe, "precision", "bf16"),
            "prompt_sets": {name: {"labels": prompt_set_labels(name), "first_seed": int(plan["seed"].iloc[0]),
                                   "examples": plan["prompt"].head(3).tolist()} for name, plan in prompts.items()},
            "prompts": ("the training prompt builder (prompt_variants) on made-up adult PA metadata rows, sex alternating; "
                        "slots 0/1 (and 3 for Normal), keeping prompts that say 'adult' and 'PA'; "
                        f"image i of a set has seed seed + {FINDINGS_SEED_OFFSET} + label index x {SEEDS_PER_SET} + i"),
            "qualifying_rule": (f"held-out (val + test) films of the annotating sources: >= {QUALIFYING_MIN_POSITIVES} positives, "
                                f">= {QUALIFYING_MIN_NEGATIVES} negatives, and the head's AUROC (positives against every annotating "
                                f"negative) with a 95 % CI lower bound above {QUALIFYING_MIN_AUROC_CI_LOW}"),
            "findings": {label: {"n_positive": entry["n_positive"], "n_negative": entry["n_negative"],
                                 "n_positive_patients": entry["n_positive_patients"], "auroc": _summary(entry["auroc"]),
                                 "auroc_vs_normal": _summary(entry["auroc_vs_normal"]),
                                 "auroc_vs_pneumonia": _summary(entry["auroc_vs_pneumonia"]),
                                 "qualifies": entry["qualifies"], "reason": entry["reason"]} for label, entry in report.items()},
            "qualifying_findings": qualifying, "annotating_sources": annotated,
            "finding_head": {"folder": str(head_folder), "weights_hash": head.weights_hash},
            "features": classifier.feature_extractor.settings, **centroid_settings,
            "n_real_held_out": len(held_out), "cache_folder": cache.name, "wall_seconds": round(time.time() - started, 1),
        },
        weights_sha256=pipe_weights_sha256(pipe), metrics=metrics,
    )


def load_findings_documents(folder: str | Path | None = None) -> list[dict]:
    """Every `findings_<model>.json` in `folder` (default outputs/metrics), validated."""
    from xray_generator.evaluation.report import read_metrics_json

    folder = Path(folder) if folder is not None else outputs_dir() / "metrics"
    return [read_metrics_json(path) for path in sorted(folder.glob("findings_*.json"))]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="ldm", help="text-to-image family in weights/ (default ldm)")
    parser.add_argument("--n", type=int, default=200, help="generated images per prompt set: adult Normal, adult Pneumonia and each qualifying finding (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    parser.add_argument("--guidance-fraction", type=float, default=None, help="share of the steps, noisiest first, that are guided (default: the model's)")
    parser.add_argument("--sampler", choices=["dpm++", "ddim", "unipc"], default=None)
    parser.add_argument("--backend", default=None, help="what runs the UNet and decoder: torch, onnxruntime or openvino (default: this CPU's)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per sampler call")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the AUROC CIs (default 1000)")
    parser.add_argument("--classifier", default=None, help="classifier weights folder (default weights/classifier)")
    parser.add_argument("--head", default=None, help="finding head folder (default weights/finding_head)")
    parser.add_argument("--out", default=None, help="output folder (default outputs/metrics)")
    parser.add_argument("--data-dir", default=None, help="folder with metadata.csv (default: the full set, else the sample)")


def print_metrics(document: dict) -> None:
    for metric in document["metrics"]:
        ci = f"  [{metric['ci']['low']:.3f}, {metric['ci']['high']:.3f}]" if metric["ci"] else ""
        floor = f"  real {metric['floor']['value']:.3f}" if metric["floor"] else ""
        print(f"{metric['name']:<58} {metric['value']:.3f}{ci}{floor}  n={metric['n']}")


def run_from_args(args: argparse.Namespace) -> dict:
    from xray_generator.evaluation.run import EvaluationSettings

    if not 10 <= args.n <= SEEDS_PER_SET:
        raise ValueError(f"--n must be between 10 and {SEEDS_PER_SET}, got {args.n}")
    settings = EvaluationSettings(n=args.n, seed=args.seed, sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                                  guidance_fraction=args.guidance_fraction, backend=args.backend, batch_size=args.batch_size, n_boot=args.n_boot)
    if args.backend is not None:
        from xray_generator.pipelines.runtime import check_backend

        check_backend(args.backend)
    document = run_findings(args.model, settings, classifier_folder=args.classifier, head_folder=args.head, out_dir=args.out, data_dir=args.data_dir)
    print_metrics(document)
    findings = document["settings"]["findings"]
    print("findings (held-out annotating films): " + "; ".join(
        f"{label} {entry['n_positive']}+/{entry['n_negative']}- {'qualifies' if entry['qualifies'] else 'no: ' + entry['reason']}"
        for label, entry in findings.items()))
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xray_generator findings", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run_from_args(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
