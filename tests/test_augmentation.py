"""The augmentation experiment end to end on the sample dataset with a tiny generator, its
curriculum schedule parser and the weighted-precision sanity check."""
from __future__ import annotations

import copy
import json
import time

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO, bf16_is_emulated
from xray_generator.data.manifest import load_manifest
from xray_generator.data.prompts import prompt_variants
from xray_generator.evaluation import augmentation as aug
from xray_generator.evaluation.report import read_metrics_json

SAMPLE = REPO / "dataset"
TINY_CONFIG = REPO / "configs" / "augmentation_tiny.json"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("cache")
    mp.setenv("CXR_CACHE_DIR", str(folder))  # never the repo's outputs/cache
    yield folder
    mp.undo()


@pytest.fixture(scope="module")
def experiment(cache, tiny_pipeline_dir, tmp_path_factory):
    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

    pipe = XRayDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    config = aug.load_config(TINY_CONFIG)
    out = tmp_path_factory.mktemp("augmentation")
    messages: list[str] = []
    started = time.perf_counter()
    document = aug.run_experiment(config, out_dir=out, data_dir=SAMPLE, pipe=pipe, command="pytest tiny run", progress=messages.append)
    return {"document": document, "out": out, "pipe": pipe, "config": config, "seconds": time.perf_counter() - started, "messages": messages}


# ---------------------------------------------------------------------------- end to end
def test_the_experiment_runs_end_to_end_in_seconds_and_writes_report_json_and_plots(experiment):
    document, out, config = experiment["document"], experiment["out"], experiment["config"]
    if not bf16_is_emulated():  # forced bf16 without AMX / AVX-512 BF16 runs ~40x slower by design: no time bound there
        assert experiment["seconds"] < 120
    assert read_metrics_json(out / "augmentation.json") == json.loads((out / "augmentation.json").read_text())
    names = {m["name"] for m in document["metrics"]}
    for regime in config["regimes"]:
        for split in ("val", "test"):
            for measure in aug.MEASURES:
                assert f"{regime}.{split}.{measure}" in names
    for regime in ("augmented", "curriculum"):
        assert f"{regime}.test.auroc_minus_baseline" in names
    for image in document["settings"]["images"].values():
        assert (out / image).stat().st_size > 1000, image
    report = (out / "report.md").read_text()
    assert "ResNet-18" in report and "pytest tiny run" in report
    for image in document["settings"]["images"].values():
        assert f"({image})" in report
    for regime in config["regimes"]:
        assert f"| {regime} |" in report
    assert '"schedule": "0:0.0, 1:0.5"' in report  # the exact configuration is in the report
    prompts = pd.read_csv(out / "synthetic_prompts.csv")
    assert len(prompts) == config["synthetic"]["n_images"]


def test_folds_use_only_kermany_train_images_and_every_fold_model_meets_the_test_split(experiment):
    document, config = experiment["document"], experiment["config"]
    settings = document["settings"]
    kermany = load_manifest(SAMPLE).table
    kermany = kermany[kermany["source"].str.contains("kermany")]
    assert settings["data"]["train_split_images"] == int((kermany["split"] == "train").sum())
    assert settings["data"]["train_images_used"] == config["data"]["max_train_images"]
    assert settings["data"]["test_images"] == int((kermany["split"] == "test").sum())
    assert sum(settings["data"]["fold_sizes"]) == settings["data"]["train_images_used"]
    folds = config["cv"]["folds"]
    test_auroc = {m["name"]: m for m in document["metrics"]}["baseline.test.auroc"]
    assert test_auroc["n"] == {"folds": folds, "images": settings["data"]["test_images"]}
    assert len(test_auroc["extra"]["per_fold"]) == folds
    # The regimes add synthetic images on their schedules: none for the baseline.
    history = settings["training_history"]
    assert all(epoch["synthetic_images"] == 0 for fold in history["baseline"] for epoch in fold)
    assert [epoch["synthetic_share"] for epoch in history["curriculum"][0]] == [0.0, 0.5]
    n_real = history["curriculum"][0][1]["real_images"]
    assert history["curriculum"][0][1]["synthetic_images"] == n_real
    assert history["augmented"][0][0]["synthetic_images"] == aug.synthetic_count(n_real, 0.25)


def test_a_rerun_reuses_the_cached_synthetic_images_and_reproduces_every_number(experiment, tmp_path):
    class NoGeneration:
        """The pipeline's attributes, but generating fails."""

        def __init__(self, pipe):
            self._pipe = pipe

        def __getattr__(self, name):
            return getattr(self._pipe, name)

        def __call__(self, *args, **kwargs):
            raise AssertionError("a rerun generated a synthetic image that was cached")

    again = aug.run_experiment(copy.deepcopy(experiment["config"]), out_dir=tmp_path, data_dir=SAMPLE,
                               pipe=NoGeneration(experiment["pipe"]), progress=lambda message: None)
    first = {m["name"]: (m["value"], m["extra"].get("per_fold")) for m in experiment["document"]["metrics"]}
    second = {m["name"]: (m["value"], m["extra"].get("per_fold")) for m in again["metrics"]}
    assert second == first


def test_synthetic_prompts_are_the_training_templates_of_kermany_rows_labelled_by_the_prompt():
    train = aug.kermany_rows(load_manifest(SAMPLE), "train")
    plan = aug.synthetic_prompt_plan(train.table, 20, None, first_seed=100, seed=0)
    assert plan["seed"].tolist() == list(range(100, 120))
    rows = train.table.set_index("image_id")
    for _, item in plan.iterrows():
        row = rows.loc[item["source_image_id"]].copy()
        row["image_id"] = item["source_image_id"]
        assert item["prompt"] in prompt_variants(row, count=6)
        assert item["label"] == int("Pneumonia" in str(item["labels"]))
        assert "pediatric" in item["prompt"].lower() or "child" in item["prompt"].lower()
    # The real class balance of the train split is kept.
    assert plan["label"].sum() == round(20 * aug.binary_labels(train.table).mean())


def test_folds_keep_patients_whole_and_classes_balanced():
    labels = np.array([0, 1, 1, 1] * 30)
    patients = [f"p{i // 2}" for i in range(len(labels))]  # two images per patient
    folds = aug.assign_folds(labels, patients, 3, seed=0)
    assert set(folds) == {0, 1, 2}
    for patient in set(patients):
        assert len({folds[i] for i, p in enumerate(patients) if p == patient}) == 1
    for fold in range(3):
        assert 0.6 < labels[folds == fold].mean() < 0.9


def test_synthetic_images_are_all_used_once_before_any_is_reused():
    draws = aug.SyntheticDraws(5, np.random.default_rng(0))
    first, second = draws.take(3), draws.take(4)
    assert sorted(np.concatenate([first, second[:2]]).tolist()) == [0, 1, 2, 3, 4]
    assert aug.synthetic_count(800, 0.25) == 267 and aug.synthetic_count(800, 0.5) == 800 and aug.synthetic_count(800, 0.0) == 0


# ---------------------------------------------------------------------------- the schedule
def test_a_schedule_gives_each_epoch_the_share_of_its_last_entry():
    schedule = aug.parse_schedule("0:0.0, 5:0.25, 10:0.5")
    assert schedule == [(0, 0.0), (5, 0.25), (10, 0.5)]
    assert [aug.share_at(schedule, e) for e in (0, 4, 5, 9, 10, 30)] == [0.0, 0.0, 0.25, 0.25, 0.5, 0.5]
    assert aug.parse_schedule("0:0.1") == [(0, 0.1)]
    assert aug.parse_schedule(" 0 : 0 ,2:0.3 ") == [(0, 0.0), (2, 0.3)]
    assert aug.regime_shares({"schedule": "0:0.0, 2:0.5"}, 4) == [0.0, 0.0, 0.5, 0.5]
    assert aug.regime_shares({"synthetic_share": 0.25}, 3) == [0.25] * 3


@pytest.mark.parametrize("text, message", [
    ("", "epoch:share"),
    ("   ", "epoch:share"),
    (None, "epoch:share"),
    ("0-0.5", "is not 'epoch:share'"),
    ("0:0.1:0.2", "is not 'epoch:share'"),
    ("0:0.0,", "is not 'epoch:share'"),
    ("0:", "is not 'epoch:share'"),
    ("x:0.1", "not a whole number"),
    ("-1:0.1", "not a whole number"),
    ("0:0.0, 1.5:0.2", "not a whole number"),
    ("0:lots", "is not a number"),
    ("0:1.0", "below 1"),
    ("0:-0.1", "at least 0"),
    ("0:nan", "below 1"),
    ("0:0.0, 5:0.25, 5:0.5", "epochs must increase"),
    ("0:0.0, 5:0.25, 3:0.5", "epochs must increase"),
    ("0:0.5, 5:0.25", "must not decrease"),
    ("2:0.25", "must start at epoch 0"),
])
def test_bad_schedules_are_refused_with_a_clear_message(text, message):
    with pytest.raises(ValueError, match=message):
        aug.parse_schedule(text)


def test_bad_configs_are_refused_before_anything_runs():
    config = json.loads(TINY_CONFIG.read_text())
    unreached = copy.deepcopy(config)
    unreached["regimes"]["curriculum"]["schedule"] = "0:0.0, 5:0.5"
    with pytest.raises(ValueError, match="regime 'curriculum'.*epoch 5 is never reached in 2 epochs"):
        aug.check_config(unreached)
    no_baseline = copy.deepcopy(config)
    del no_baseline["regimes"]["baseline"]
    with pytest.raises(ValueError, match="need a 'baseline'"):
        aug.check_config(no_baseline)
    synthetic_baseline = copy.deepcopy(config)
    synthetic_baseline["regimes"]["baseline"] = {"synthetic_share": 0.2}
    with pytest.raises(ValueError, match="real images only"):
        aug.check_config(synthetic_baseline)
    both = copy.deepcopy(config)
    both["regimes"]["augmented"]["schedule"] = "0:0.1"
    with pytest.raises(ValueError, match="either 'synthetic_share' or 'schedule'"):
        aug.check_config(both)
    whole = copy.deepcopy(config)
    whole["regimes"]["augmented"]["synthetic_share"] = 1.0
    with pytest.raises(ValueError, match="below 1"):
        aug.check_config(whole)
    assert aug.check_config(json.loads((REPO / "configs" / "augmentation.json").read_text()))


def test_the_reduced_configuration_is_planned_to_fit_35_minutes():
    config = aug.load_config(REPO / "configs" / "augmentation.json")
    assert config["model"]["arch"] == "resnet18"
    plan = aug.plan_experiment(config, n_train=config["data"]["max_train_images"], n_test=552)
    assert plan["estimated_seconds"]["total"] < 30 * 60  # 35 minutes with a margin for a slower run
    assert plan["regimes"]["baseline"]["synthetic_per_epoch"] == [0] * config["train"]["epochs"]


# ---------------------------------------------------------------------------- the weighted-precision check
def test_the_sanity_check_flags_the_seed_projects_perfect_weighted_precision():
    bug = {"precision_weighted": 1.0, "accuracy": 0.84, "n_positive": 30, "n_negative": 20}
    assert "impossible" in aug.weighted_precision_problem(bug)
    assert aug.weighted_precision_problem({**bug, "accuracy": 1.0}) is None  # perfect and right
    assert aug.weighted_precision_problem({**bug, "precision_weighted": 0.999}) is None
    # With one class present the absent class weighs 0, so a precision of 1 is possible.
    assert aug.weighted_precision_problem({**bug, "n_negative": 0}) is None


def test_real_metrics_never_trip_the_check_even_when_the_model_predicts_one_class():
    labels = np.array([1] * 30 + [0] * 20)
    always_pneumonia = aug.classification_metrics(labels, np.full(50, 0.9))
    assert always_pneumonia["accuracy"] == 0.6
    # Normal is never predicted: its precision counts as 0, not 1 (sklearn's zero_division=1 would say 1).
    assert always_pneumonia["precision_weighted"] == pytest.approx(0.6 * 0.6)
    assert aug.weighted_precision_problem(always_pneumonia) is None
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = np.clip(labels * 0.3 + rng.uniform(0, 0.7, 50), 0, 1)
        metrics = aug.classification_metrics(labels, scores)
        assert aug.weighted_precision_problem(metrics) is None
        if metrics["accuracy"] < 1:
            assert metrics["precision_weighted"] < 1
    perfect = aug.classification_metrics(labels, labels.astype(float))
    assert perfect["accuracy"] == perfect["precision_weighted"] == perfect["auroc"] == 1.0


def test_a_failed_sanity_check_is_shown_in_the_report(experiment):
    document = copy.deepcopy(experiment["document"])
    assert document["settings"]["sanity_check"]["weighted_precision"]["problems"] == []
    assert "Passed on all" in aug.augmentation_report(document)
    document["settings"]["sanity_check"]["weighted_precision"]["problems"] = ["baseline, fold 0, test: weighted precision is exactly 1.000 ..."]
    report = aug.augmentation_report(document)
    assert "**FAILED.**" in report and "baseline, fold 0, test" in report
