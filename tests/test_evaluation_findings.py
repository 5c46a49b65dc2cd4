"""Condition fidelity per NIH finding (the finding head) and for adults (age centroids), and `findings` end to end."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from tests.conftest import REPO, flip_one_byte
from xray_generator.evaluation import findings
from xray_generator.evaluation.memorisation import wilson_interval
from xray_generator.evaluation.report import read_metrics_json
from xray_generator.models.finding_head import FindingHead, load_finding_head, save_finding_head
from xray_generator.training.train_finding_head import fit_finding_head
from xray_generator.weights import WeightsError

SAMPLE = REPO / "dataset"
CLASSIFIER_SHA = "ab" * 32


def separable_features(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, patients): label 1 shifts feature 0 by 2 standard deviations; two films per patient."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    y[:4], y[4:8] = 1, 0  # both classes, whatever the draw
    features = rng.normal(size=(n, 16)).astype(np.float32)
    features[:, 0] += 2.0 * y
    return features, y, np.array([f"p{i // 2}" for i in range(n)], dtype=object)


# ---------------------------------------------------------------------------- the head
def test_the_fitted_head_tells_a_separable_finding_on_new_films():
    from sklearn.metrics import roc_auc_score

    features, y, patients = separable_features(200)
    patients[y == 1] = [f"q{i}" for i in range((y == 1).sum())]  # a patient carries one label, as films of one study do
    known = np.ones((200, 1), bool)
    known[::10] = False  # unread films take no part in fitting the head
    head = fit_finding_head(features, y[:, None].astype(np.float32), known, patients, ["Edema"], CLASSIFIER_SHA)
    fresh, fresh_y, _ = separable_features(200, seed=1)
    assert roc_auc_score(fresh_y, head.score(fresh, "Edema")) > 0.9
    entry = head.config["per_label"]["Edema"]
    assert entry["n_train_positive"] + entry["n_train_negative"] == known.sum()
    assert entry["C"] in [float(c) for c in head.config["fitting"]["C_grid"]] and entry["cv_auroc"] > 0.8
    # Standardisation uses the training films: the head reads raw features.
    assert np.allclose(head.mean, features[known[:, 0]].mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="no head for 'Mass'"):
        head.score(fresh, "Mass")


def small_head(labels=("Edema", "Infiltration"), sha=CLASSIFIER_SHA, seed=0) -> FindingHead:
    rng = np.random.default_rng(seed)
    d = 8
    return FindingHead(tuple(labels), rng.normal(size=d).astype(np.float32), rng.uniform(0.5, 2, d).astype(np.float32),
                       rng.normal(size=(len(labels), d)).astype(np.float32), rng.normal(size=len(labels)).astype(np.float32),
                       sha, {"annotated_sources": {label: ["nih_cxr14"] for label in labels}})


def test_the_head_loads_only_from_verified_safetensors_fitted_on_the_same_classifier(tmp_path):
    head = small_head()
    save_finding_head(head, tmp_path / "head", "# test head\n")
    assert {p.name for p in (tmp_path / "head").iterdir()} == {"model.safetensors", "config.json", "README.md", "MANIFEST.json"}
    loaded = load_finding_head(tmp_path / "head", CLASSIFIER_SHA)
    features = np.random.default_rng(1).normal(size=(5, 8))
    assert np.allclose(loaded.logits(features), head.logits(features), atol=1e-5) and loaded.weights_hash

    with pytest.raises(WeightsError, match="fitted on the features of classifier"):
        load_finding_head(tmp_path / "head", "cd" * 32)
    flip_one_byte(tmp_path / "head" / "model.safetensors")  # one flipped bit of a weight
    with pytest.raises(WeightsError, match="does not match its sha256"):
        load_finding_head(tmp_path / "head")
    save_finding_head(head, tmp_path / "other", "# test head\n")
    (tmp_path / "other" / "extra.safetensors").write_bytes(b"x")
    with pytest.raises(WeightsError, match="not listed"):
        load_finding_head(tmp_path / "other")
    with pytest.raises(ValueError, match="shapes"):
        FindingHead(("Edema",), head.mean, head.scale, head.weight, head.bias[:1], CLASSIFIER_SHA, {})


# ---------------------------------------------------------------------------- the qualifying rule
@pytest.mark.parametrize("n_pos, n_neg, ci_low, qualifies, why", [
    (20, 20, 0.61, True, "AUROC CI lower bound 0.610 > 0.6"),
    (35, 142, 0.9, True, ">= 20 positives"),
    (19, 500, 0.95, False, "19 held-out positives < 20"),
    (60, 19, 0.95, False, "19 held-out negatives < 20"),
    (23, 154, 0.6, False, "lower bound 0.600 <= 0.6"),  # above 0.6, not at it
    (23, 154, None, False, "no held-out AUROC"),
])
def test_the_qualifying_rule(n_pos, n_neg, ci_low, qualifies, why):
    verdict, reason = findings.qualification(n_pos, n_neg, ci_low)
    assert verdict is qualifies and why in reason


def held_out_rows() -> pd.DataFrame:
    """NIH films (adults, one child) and Kermany films, which do not annotate NIH findings."""
    rows = [
        ("nih_cxr14", 40, "Pneumonia; Edema"), ("nih_cxr14", 50, "Pneumonia; Edema"), ("nih_cxr14", 60, "Pneumonia; Edema"),
        ("nih_cxr14", 10, "Pneumonia; Edema"),  # a child: counted for qualifying, not in the adult comparisons
        ("nih_cxr14", 30, "Normal"), ("nih_cxr14", 35, "Normal"), ("nih_cxr14", 45, "Normal"),
        ("nih_cxr14", 55, "Pneumonia"), ("nih_cxr14", 65, "Pneumonia; Infiltration"),
        ("pneumonia_kermany", None, "Normal"), ("pneumonia_kermany", None, "Pneumonia; Bacterial pneumonia"),
    ]
    return pd.DataFrame([{"image_id": f"f{i}", "source": s, "age": a, "labels": l, "patient_id": f"p{i}", "split": "test",
                          "view": "PA", "sex": "F"} for i, (s, a, l) in enumerate(rows)])


def test_finding_report_counts_annotating_films_and_splits_normal_from_pneumonia_negatives():
    rows = held_out_rows()
    # The head's Edema logit is feature 0 (identity standardisation): Edema films score 1, the rest 0.
    edema = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0.5, 0.5])
    features = np.column_stack([edema, np.zeros(len(rows))])
    head = FindingHead(("Edema",), np.zeros(2, np.float32), np.ones(2, np.float32), np.array([[1.0, 0.0]], np.float32),
                       np.zeros(1, np.float32), CLASSIFIER_SHA, {})
    report = findings.finding_auroc_report(head, features, rows, {"Edema": ["nih_cxr14"]}, n_boot=50)["Edema"]
    assert (report["n_positive"], report["n_negative"]) == (4, 5)  # Kermany films are unread for Edema, not negative
    assert report["auroc"]["value"] == 1.0 and report["auroc"]["n_positive"] == 4
    assert (report["auroc_vs_normal"]["n_positive"], report["auroc_vs_normal"]["n_negative"]) == (3, 3)
    assert (report["auroc_vs_pneumonia"]["n_positive"], report["auroc_vs_pneumonia"]["n_negative"]) == (3, 2)
    assert report["qualifies"] is False and "4 held-out positives < 20" in report["reason"]


# ---------------------------------------------------------------------------- centroids and AUROC maths
def test_adult_share_is_the_share_nearest_an_adult_centroid_with_a_wilson_interval():
    features = np.array([[0, 0], [0, 1], [10, 0], [10, 1], [0, 10], [1, 10], [5, 5]], float)
    classes = ["adult Normal", "adult Normal", "pediatric Normal", "pediatric Normal", "adult COVID-19", "adult COVID-19"]
    names, centroids, counts = findings.class_centroids(features, classes + [None], min_films=2)  # None: a film of no class
    assert names == ["adult COVID-19", "adult Normal", "pediatric Normal"] and counts.tolist() == [2, 2, 2]
    generated = np.array([[0.2, 0.4]] * 7 + [[9.5, 0.5]] * 3)  # 7 near the adult Normal centroid, 3 near the paediatric one
    nearest = findings.nearest_centroid(generated, centroids)
    is_adult = np.array([name.startswith("adult") for name in names])
    share = findings.share_with_wilson(is_adult[nearest])
    assert share["value"] == pytest.approx(0.7) and share["n"] == 10
    assert (share["ci_low"], share["ci_high"]) == pytest.approx(wilson_interval(7, 10))
    with pytest.raises(ValueError, match="no \\(age group, finding\\) class"):
        findings.class_centroids(features, classes, min_films=3)


def test_a_real_film_is_not_measured_against_a_centroid_it_is_part_of():
    # Class A: a film at 6 and one at 0; class B's centroid sits at 10. With itself in A's mean (3), the film
    # at 6 is nearest A (3 against 4); left out, A's centroid is 0 and B is nearer (6 against 4).
    features = np.array([[6.0], [0.0], [10.0], [10.0]])
    names, centroids, counts = findings.class_centroids(features, ["a", "a", "b", "b"], min_films=2)
    assert findings.nearest_centroid(features[:1], centroids).tolist() == [0]
    assert findings.nearest_centroid_leaving_out(features[:1], np.array([0]), centroids, counts).tolist() == [1]


def test_auroc_difference_is_generated_minus_real_with_a_ci():
    y = np.r_[np.ones(30), np.zeros(30)]
    perfect = np.r_[np.linspace(1, 2, 30), np.linspace(0, 0.9, 30)]
    tied = np.zeros(60)  # an AUROC of exactly 0.5
    same = findings.auroc_difference(perfect, y, perfect, y, n_boot=50)
    assert same["value"] == 0.0 and same["ci_low"] == pytest.approx(0.0) and same["ci_high"] == pytest.approx(0.0)
    worse = findings.auroc_difference(tied, y, perfect, y, n_boot=50)
    assert worse["value"] == pytest.approx(-0.5) and worse["ci_low"] == pytest.approx(-0.5)  # every resample: 0.5 - 1
    # Noisy scores: the interval has width and holds the value; the real set alone resampled would not give it.
    noisy = perfect + np.random.default_rng(0).normal(0, 0.6, 60)
    wide = findings.auroc_difference(noisy, y, perfect, y, n_boot=200)
    assert wide["ci_low"] < wide["value"] < 0 and wide["ci_high"] - wide["ci_low"] > 0.05


def test_prompts_are_adult_training_style_prompts_naming_the_finding_with_their_own_seeds():
    edema = findings.prompt_plan("Edema", 6, seed=0)
    normal = findings.prompt_plan("Normal", 6, seed=0)
    assert all("adult" in p.lower() and "pediatric" not in p.lower() for p in pd.concat([edema, normal])["prompt"])
    assert all("edema" in p.lower() and "pneumonia" in p.lower() for p in edema["prompt"])
    assert any(p.startswith("Normal adult PA chest radiograph") for p in normal["prompt"])
    assert not set(edema["seed"]) & set(normal["seed"]) and edema["seed"].is_unique
    assert edema.equals(findings.prompt_plan("Edema", 6, seed=0))  # the same prompts and seeds every run
    assert findings.prompt_plan("Edema", 3, seed=0).equals(edema.head(3))  # a smaller run is a prefix of a larger one


# ---------------------------------------------------------------------------- end to end
def relabelled_sample(folder):
    """The sample dataset with every other train/held-out pneumonia film also labelled Edema, so a head can be fitted."""
    table = pd.read_csv(SAMPLE / "metadata.csv", dtype=str, keep_default_na=False)
    pneumonia = table["labels"].str.contains("Pneumonia") & table["source"].isin(["pneumonia_kermany", "nih_cxr14"])
    chosen = pneumonia & (np.arange(len(table)) % 2 == 0) & ~table["labels"].str.contains("Edema")
    table.loc[chosen, "labels"] = table.loc[chosen, "labels"] + "; Edema"
    folder.mkdir()
    table.to_csv(folder / "metadata.csv", index=False)
    os.symlink(SAMPLE / "images", folder / "images")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_classifier_dir, tiny_weights_root):
    from xray_generator.__main__ import main

    root = tmp_path_factory.mktemp("findings")
    data = relabelled_sample(root / "data")
    head = root / "finding_head"
    assert main(["findings", "--train-head", "--data-dir", str(data), "--classifier", str(tiny_classifier_dir),
                 "--head", str(head), "--n-boot", "20"]) == 0
    return root, data, head


def test_train_head_writes_a_verified_head_with_a_card_of_held_out_figures(trained, tiny_classifier_dir):
    from xray_generator.models.classifier import load_classifier

    _, _, head_folder = trained
    classifier = load_classifier(tiny_classifier_dir)
    head = load_finding_head(head_folder, classifier.feature_extractor.settings["weights_sha256"])
    assert head.labels == ("Edema",) and head.config["annotated_sources"]["Edema"] == ["nih_cxr14", "pneumonia_kermany"]
    card = (head_folder / "README.md").read_text()
    held_out = head.config["held_out"]["Edema"]
    assert f"| Edema | {held_out['n_positive']} / {held_out['n_negative']} |" in card and "Qualifying rule" in card
    assert f"{held_out['auroc']['value']:.3f} [" in card


def test_findings_measures_qualifying_findings_and_adults_and_a_rerun_generates_nothing(trained, tiny_classifier_dir, tiny_weights_root,
                                                                                      monkeypatch, capsys):
    from xray_generator import studio
    from xray_generator.__main__ import main

    root, data, head = trained
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tiny_weights_root))
    monkeypatch.setenv("CXR_OUTPUTS_DIR", str(root / "outputs"))
    # The tiny classifier is untrained: loosen the rule so that Edema qualifies and its path runs.
    monkeypatch.setattr(findings, "QUALIFYING_MIN_POSITIVES", 2)
    monkeypatch.setattr(findings, "QUALIFYING_MIN_NEGATIVES", 2)
    monkeypatch.setattr(findings, "QUALIFYING_MIN_AUROC_CI_LOW", -1.0)
    monkeypatch.setattr(findings, "CENTROID_MIN_FILMS", 2)  # the sample holds few held-out adult Normal films
    out = root / "metrics"
    args = ["findings", "--model", "ldm", "--n", "10", "--steps", "2", "--n-boot", "20", "--data-dir", str(data),
            "--classifier", str(tiny_classifier_dir), "--head", str(head), "--out", str(out)]
    assert main(args) == 0
    path = out / "findings_ldm.json"
    document = read_metrics_json(path)
    metrics = {m["name"]: m for m in document["metrics"]}
    edema = metrics["condition_fidelity_auroc_finding_edema"]
    assert edema["n"] == {"generated_finding": 10, "generated_normal": 10} and edema["ci"] is not None
    assert edema["floor"]["n"]["real_adult_positive"] >= 2 and "adult Normal" in edema["floor"]["method"]
    share = metrics["condition_fidelity_adult_centroid_share"]
    assert share["n"] == {"generated_adult_normal": 10} and share["ci"]["method"] == findings.WILSON_METHOD
    assert 0 <= share["value"] <= 1 and share["floor"]["n"]["real_adult_normal"] >= 1
    assert set(share["extra"]["centroids"]) <= {"adult Normal", "adult Pneumonia", "adult COVID-19", "pediatric Normal", "pediatric Pneumonia"}
    pneumonia = metrics["condition_fidelity_auroc_adult_pneumonia_vs_adult_normal"]
    gap = metrics["condition_fidelity_auroc_gap_adult_pneumonia"]
    assert gap["value"] == pytest.approx(pneumonia["value"] - pneumonia["floor"]["value"])
    assert document["settings"]["findings"]["Edema"]["qualifies"] and document["settings"]["qualifying_findings"] == ["Edema"]
    assert "condition_fidelity_auroc_finding_edema" in capsys.readouterr().out

    # The dashboard reads the file, groups its metrics under Fidelity and shows n.
    documents, problems = studio.load_metrics_files(out)
    assert not problems and [d["_file"] for d in documents] == ["findings_ldm.json"]
    table = studio.metrics_table(documents)
    assert set(table["metric"].map(studio.metric_family)) == {"Fidelity"}
    assert "generated_finding 10" in table.set_index("metric").loc["condition_fidelity_auroc_finding_edema", "n"]

    # So does the comparison table, with the values, CIs and n of the file.
    from xray_generator.evaluation.comparison import findings_markdown

    markdown = findings_markdown(findings.load_findings_documents(out))
    assert f"| ldm | Edema: adult prompts vs adult Normal prompts (finding head AUROC) | {edema['value']:.3f} [" in markdown
    assert "10 generated finding, 10 generated normal" in markdown and "condition fidelity" in markdown
    assert "not measured yet" in findings_markdown([])

    # A rerun reads every image from the evaluation's cache.
    from xray_generator.evaluation.run import EvaluationSettings
    from xray_generator.pipelines.registry import load_generator

    forbidden = _Forbidden(load_generator("ldm"))
    again = findings.run_findings("ldm", EvaluationSettings(n=10, steps=2, n_boot=20), classifier_folder=tiny_classifier_dir,
                                  head_folder=head, out_dir=root / "again", data_dir=data, pipe=forbidden)
    assert [m["value"] for m in again["metrics"]] == [m["value"] for m in document["metrics"]]


class _Forbidden:
    """The pipeline's attributes, but calling it fails."""

    def __init__(self, pipe):
        self._pipe = pipe

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, *args, **kwargs):
        raise AssertionError("a rerun generated an image that was cached")


def test_findings_refuses_a_family_without_prompts(tiny_classifier_dir):
    with pytest.raises(ValueError, match="text-to-image families only"):
        findings.run_findings("dcgan_conditional", classifier_folder=tiny_classifier_dir)
