"""Fit the finding head (`weights/finding_head`): one logistic regression per NIH finding on the frozen classifier's features.

    python -m xray_generator findings --train-head                     # the full data -> weights/finding_head
    python -m xray_generator findings --train-head --head OUT/ --data-dir dataset/

Training films: the train split films of the sources that annotate each finding (the classifier's
``label_scope = "annotating_sources"``: NIH for its 14 findings; a Kermany film without a
"Cardiomegaly" label is unread, not negative). A finding gets a head when it has at least
`MIN_TRAIN_POSITIVES` positive training films. Each head is an L2-regularised logistic regression
on the standardised 512-d penultimate features of `weights/classifier`, with balanced class
weights; its regularisation strength is chosen from `C_GRID` by AUROC in cross-validation with
folds grouped by patient (the held-out splits are never looked at to fit or choose anything).
The held-out (val + test) AUROCs and the qualifying rule of `xray_generator.evaluation.findings`
go into the folder's README.md, written from the numbers.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from xray_generator.data.manifest import Manifest, load_manifest
from xray_generator.evaluation.findings import (QUALIFYING_MIN_AUROC_CI_LOW, QUALIFYING_MIN_NEGATIVES, QUALIFYING_MIN_POSITIVES,
                                                finding_auroc_report)
from xray_generator.evaluation.run import single_threaded_blas
from xray_generator.evaluation.samples import held_out_real, load_real
from xray_generator.models.classifier import annotating_sources, label_targets, load_classifier
from xray_generator.models.finding_head import FindingHead, save_finding_head
from xray_generator.paths import weights_dir
from xray_generator.vocabulary import THORACIC_FINDINGS
from xray_generator.weights import fresh_staging_folder, replace_folder_atomically

MIN_TRAIN_POSITIVES = 10
C_GRID = tuple(float(c) for c in np.logspace(-4, 1, 11))
CV_FOLDS = 5
N_BOOT = 1000


def standardisation(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale of each feature; a constant feature gets scale 1 (it is then 0 everywhere, not NaN)."""
    mean = features.mean(axis=0)
    std = features.std(axis=0)
    return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


def fit_finding_head(features: np.ndarray, targets: np.ndarray, known: np.ndarray, groups: Sequence[str], labels: Sequence[str],
                     classifier_sha256: str, seed: int = 0) -> FindingHead:
    """One logistic regression per label on the rows where that label is known.

    Parameters
    ----------
    features : (N, D) classifier features of the training films
    targets, known : (N, L)
        From `label_targets` (1 / 0 targets, and whether each is recorded).
    groups : (N,) patient ids; cross-validation folds never split a patient.
    labels : the L labels.

    Returns
    -------
    FindingHead
        With ``config["per_label"]``: training counts, the chosen C and its cross-validated AUROC.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedGroupKFold

    features = np.asarray(features, dtype=np.float64)
    groups = np.asarray(groups, dtype=object)
    used = known.any(axis=1)
    mean, scale = standardisation(features[used])
    x_all = (features - mean) / scale
    weight = np.zeros((len(labels), features.shape[1]), np.float32)
    bias = np.zeros(len(labels), np.float32)
    per_label = {}
    for j, label in enumerate(labels):
        rows = known[:, j]
        x, y, g = x_all[rows], targets[rows, j].astype(int), groups[rows]
        positive_patients = len(set(g[y == 1]))
        if min(y.sum(), (1 - y).sum()) < 2 or positive_patients < 2:
            raise ValueError(f"{label}: too few training films to fit ({y.sum()} positive, {(1 - y).sum()} negative)")
        folds = list(StratifiedGroupKFold(n_splits=min(CV_FOLDS, positive_patients), shuffle=True, random_state=seed).split(x, y, g))
        # l1_ratios=(0,): a pure L2 penalty, said explicitly as scikit-learn 1.9 asks.
        model = LogisticRegressionCV(Cs=list(C_GRID), cv=folds, scoring="roc_auc", class_weight="balanced", max_iter=5000,
                                     l1_ratios=(0,), use_legacy_attributes=False).fit(x, y)
        weight[j], bias[j] = model.coef_[0], model.intercept_[0]
        cv_auroc = model.scores_[:, 0, :].mean(axis=0)  # (folds, l1 ratios, Cs) -> per C
        per_label[label] = {"n_train_positive": int(y.sum()), "n_train_negative": int((1 - y).sum()),
                            "n_train_positive_patients": positive_patients, "C": float(model.C_),
                            "cv_auroc": float(cv_auroc.max()), "cv_folds": len(folds)}
    config = {
        "fitting": {"model": "logistic regression per label, L2, balanced class weights, on standardised features",
                    "C_grid": list(C_GRID), "selection": "mean AUROC over folds grouped by patient (StratifiedGroupKFold)",
                    "seed": seed, "n_train_films": int(used.sum())},
        "per_label": per_label,
    }
    return FindingHead(tuple(labels), mean, scale, weight, bias, classifier_sha256, config)


def trainable_findings(manifest: Manifest, candidates: Sequence[str] = THORACIC_FINDINGS, min_positives: int = MIN_TRAIN_POSITIVES) -> tuple[list[str], dict[str, int]]:
    """The findings with at least `min_positives` train-split films (of their annotating sources), and every candidate's count."""
    train = manifest.table[manifest.table["split"] == "train"].reset_index(drop=True)
    annotated = annotating_sources(manifest, candidates)
    targets, known = label_targets(Manifest(train, manifest.root), candidates, annotated)
    counts = {label: int((known[:, j] & (targets[:, j] == 1)).sum()) for j, label in enumerate(candidates)}
    return [label for label in candidates if counts[label] >= min_positives], counts


def train_finding_head(data_dir: str | Path | None = None, classifier_folder: str | Path | None = None, out: str | Path | None = None,
                       n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Fit, report on the held-out films and write the head folder (atomically); return the held-out report and the head."""
    started = time.time()
    classifier_folder = Path(classifier_folder) if classifier_folder else weights_dir() / "classifier"
    out = Path(out) if out else weights_dir() / "finding_head"
    classifier = load_classifier(classifier_folder)
    classifier_sha256 = classifier.feature_extractor.settings["weights_sha256"]
    manifest = load_manifest(data_dir)
    labels, train_counts = trainable_findings(manifest)
    if not labels:
        raise ValueError(f"no finding has {MIN_TRAIN_POSITIVES} positive training films in {manifest.root}: {train_counts}")
    annotated = annotating_sources(manifest, labels)
    sources = sorted({source for names in annotated.values() for source in names})

    table = manifest.table
    train = table[(table["split"] == "train") & table["source"].isin(sources)].reset_index(drop=True)
    targets, known = label_targets(Manifest(train, manifest.root), labels, annotated)
    keep = known.any(axis=1)
    train = train[keep].reset_index(drop=True)
    print(f"finding head: features of {len(train)} training films ({', '.join(sources)})", file=sys.stderr)
    train_features = classifier.feature_extractor(load_real(train, data_dir))
    held_out = held_out_real(manifest)
    held_out = held_out[held_out["source"].isin(sources)].reset_index(drop=True)
    print(f"finding head: features of {len(held_out)} held-out films", file=sys.stderr)
    held_out_features = classifier.feature_extractor(load_real(held_out, data_dir))

    with single_threaded_blas():
        head = fit_finding_head(train_features, targets[keep], known[keep], train["patient_id"].astype(str).tolist(), labels, classifier_sha256, seed)
        report = finding_auroc_report(head, held_out_features, held_out, annotated, n_boot=n_boot, seed=seed)
    skipped = {label: count for label, count in train_counts.items() if label not in labels}
    config = {
        **head.config, "annotated_sources": annotated, "label_scope": "annotating_sources",
        "classifier": {"folder": classifier_folder.name, "weights_hash": classifier.weights_hash, "features": classifier.feature_extractor.settings},
        "training_data": {"split": "train", "sources": sources, "n_films": len(train), "n_patients": int(train["patient_id"].nunique()),
                          "data": manifest.root.name, "min_train_positives": MIN_TRAIN_POSITIVES, "no_head": skipped},
        "held_out": {label: {"n_positive": entry["n_positive"], "n_negative": entry["n_negative"],
                             "auroc": _plain(entry["auroc"]), "auroc_vs_normal": _plain(entry["auroc_vs_normal"]),
                             "auroc_vs_pneumonia": _plain(entry["auroc_vs_pneumonia"]),
                             "qualifies": entry["qualifies"], "reason": entry["reason"]} for label, entry in report.items()},
        "held_out_n_films": len(held_out), "held_out_n_patients": int(held_out["patient_id"].nunique()), "n_boot": n_boot,
        "wall_seconds": round(time.time() - started, 1), "torch_threads": torch.get_num_threads(),
    }
    head = FindingHead(head.labels, head.mean, head.scale, head.weight, head.bias, head.classifier_sha256, config)
    staging = fresh_staging_folder(out)
    save_finding_head(head, staging, finding_head_card(head, report))
    replace_folder_atomically(staging, out)
    return {"folder": out, "report": report, "head": head}


def _plain(result: dict | None) -> dict | None:
    if result is None:
        return None
    return {key: result[key] for key in ("value", "ci_low", "ci_high", "ci_method", "n_boot", "n_positive", "n_negative")}


def _auroc_cell(result: dict | None) -> str:
    if result is None:
        return "–"
    return f"{result['value']:.3f} [{result['ci_low']:.3f}, {result['ci_high']:.3f}] ({result['n_positive']} / {result['n_negative']})"


def finding_head_card(head: FindingHead, report: dict) -> str:
    """README.md of the head folder, from the config and the held-out report; nothing in it is typed by hand."""
    config = head.config
    data = config["training_data"]
    fitting = config["fitting"]
    lines = [
        "# finding_head: NIH findings on the classifier's features",
        "",
        "**Research use only. Not for clinical use.** An evaluation instrument: it scores how much a film (real or generated) "
        "looks like it carries each NIH ChestX-ray14 finding, so that condition fidelity can be measured per finding "
        "(`python -m xray_generator findings`).",
        "",
        "## Model",
        "",
        f"- One logistic regression per finding (L2, balanced class weights) on the {head.feature_dim}-d penultimate features of "
        f"`weights/{config['classifier']['folder']}` (model.safetensors sha256 `{head.classifier_sha256}`), standardised with the "
        "training films' mean and standard deviation. The classifier is frozen: nothing of it changed.",
        f"- `model.safetensors`: `mean`, `scale` ({head.feature_dim},), `weight` ({len(head.labels)}, {head.feature_dim}), "
        f"`bias` ({len(head.labels)},). Score = logit. Loading checks MANIFEST.json and refuses a head fitted on another classifier's features.",
        f"- Regularisation: C from {len(fitting['C_grid'])} values ({fitting['C_grid'][0]:g} to {fitting['C_grid'][-1]:g}), chosen per finding by "
        "mean AUROC in cross-validation on the training films with folds grouped by patient.",
        "",
        "## Training data",
        "",
        f"- The `{data['split']}` split of `{data['data']}`, films of the sources that annotate the findings ({', '.join(data['sources'])}): "
        f"{data['n_films']} films of {data['n_patients']} patients. Splits are per patient (the dataset card's rule), so no "
        "patient of the held-out films below was trained on.",
        f"- A finding gets a head with at least {data['min_train_positives']} positive training films. Without a head: "
        + (", ".join(f"{label} ({n})" for label, n in data["no_head"].items()) or "none") + ".",
        "- NIH labels were text-mined from reports (noisy). In this draw every NIH film with a finding is also labelled "
        "Pneumonia, and the negatives are NIH No Finding films plus pneumonia films without that finding.",
        "",
        "| finding | train + / − (patients +) | C | CV AUROC |",
        "|:--|--:|--:|--:|",
    ]
    for label in head.labels:
        entry = config["per_label"][label]
        lines.append(f"| {label} | {entry['n_train_positive']} / {entry['n_train_negative']} ({entry['n_train_positive_patients']}) | "
                     f"{entry['C']:.3g} | {entry['cv_auroc']:.3f} |")
    lines += [
        "",
        f"## Held-out AUROC (val + test: {config['held_out_n_films']} films of {config['held_out_n_patients']} patients; 95 % CI, "
        f"percentile bootstrap of films with their labels, {config['n_boot']} resamples)",
        "",
        "Cells: AUROC [95 % CI] (positives / negatives).",
        "",
        "- **against all**: positives against every negative of the annotating sources (the qualifying AUROC);",
        "- **vs Normal (adult)**: adult positives against adult Normal films: the reference for generated images of adult prompts "
        "naming the finding against adult Normal prompts;",
        "- **vs pneumonia (adult)**: adult positives against adult pneumonia films without the finding: whether the head tells "
        "the finding itself, not pneumonia.",
        "",
        "| finding | held-out + / − | against all | vs Normal (adult) | vs pneumonia (adult) | qualifies |",
        "|:--|--:|--:|--:|--:|:--|",
    ]
    for label in head.labels:
        entry = report[label]
        verdict = "**yes**" if entry["qualifies"] else f"no: {entry['reason']}"
        lines.append(f"| {label} | {entry['n_positive']} / {entry['n_negative']} | {_auroc_cell(entry['auroc'])} | "
                     f"{_auroc_cell(entry['auroc_vs_normal'])} | {_auroc_cell(entry['auroc_vs_pneumonia'])} | {verdict} |")
    qualifying = [label for label in head.labels if report[label]["qualifies"]]
    lines += [
        "",
        f"**Qualifying rule.** A finding's condition fidelity on generated images is measured when its held-out films of the annotating "
        f"sources hold at least {QUALIFYING_MIN_POSITIVES} positives and {QUALIFYING_MIN_NEGATIVES} negatives, and the head's held-out "
        f"AUROC against all of them has a 95 % CI lower bound above {QUALIFYING_MIN_AUROC_CI_LOW}. Fewer films make the AUROC too "
        "uncertain to compare with, and a head that cannot tell the finding on real films makes any AUROC on generated ones meaningless. "
        f"Qualifying: {', '.join(qualifying) if qualifying else 'none'}.",
        "",
        f"The CIs resample films, not patients: the {config['held_out_n_films']} held-out films come from "
        f"{config['held_out_n_patients']} patients, and films of one patient count as independent.",
        "",
        f"Refit with `python -m xray_generator findings --train-head` ({config['wall_seconds'] / 60:.1f} min with "
        f"{config['torch_threads']} torch thread(s), most of it the classifier's features).",
        "",
    ]
    return "\n".join(lines)


def run_from_args(args: argparse.Namespace) -> dict:
    result = train_finding_head(args.data_dir, args.classifier, args.head, n_boot=args.n_boot, seed=args.seed)
    print(f"wrote {result['folder']}")
    for label, entry in result["report"].items():
        print(f"{label:<20} held-out {entry['n_positive']:>3}+ / {entry['n_negative']:>3}-  AUROC {_auroc_cell(entry['auroc'])}  "
              f"vs Normal {_auroc_cell(entry['auroc_vs_normal'])}  {'qualifies' if entry['qualifies'] else 'no: ' + entry['reason']}")
    return result
