"""The domain classifier: labels from metadata, never-flipping augmentation, a resumable trainer,
an export that refuses tampering on load, and inference/feature/Grad-CAM shapes."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from tests.conftest import REPO, flip_one_byte
from xray_generator.data.datasets import augment_batch
from xray_generator.data.manifest import load_manifest
from xray_generator.evaluation.features import TorchFeatureExtractor
from xray_generator.models.classifier import (
    build_classifier,
    check_labels,
    grad_cam,
    annotating_sources,
    label_targets,
    load_classifier,
    supported_labels,
)
from xray_generator.paths import shared_data_dir
from xray_generator.training import train_classifier as tc
from xray_generator.training.checkpointing import CheckpointDir
from xray_generator.weights import WeightsError, verify_manifest

SAMPLE = REPO / "dataset"
LABELS = ("Normal", "Pneumonia", "Bacterial pneumonia", "Viral pneumonia", "COVID-19", "Pediatric")


def tiny_config(tmp_path, **train_overrides) -> dict:
    config = tc.load_config(REPO / "configs" / "classifier_tiny.json")
    config["train"].update(train_overrides)
    config["cache_dir"] = str(tmp_path / "cache")  # never the repo's outputs/cache
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifier")
    state = tc.train_classifier(tiny_config(root, max_steps=2), root / "run", data_dir=SAMPLE)
    assert state["step"] == 2
    return root


@pytest.fixture(scope="module")
def exported(run):
    return tc.export_classifier(run / "run", run / "classifier", data_dir=SAMPLE)


def test_configs_name_the_same_heads_and_only_known_labels():
    for name in ("classifier.json", "classifier_tiny.json"):
        config = json.loads((REPO / "configs" / name).read_text())
        assert tuple(config["model"]["labels"]) == LABELS
        assert check_labels(config["model"]["labels"]) == LABELS
    with pytest.raises(ValueError, match="unknown classifier labels"):
        check_labels(["Normal", "Dragon pox"])
    with pytest.raises(ValueError, match="unknown classifier arch"):
        build_classifier({"arch": "vgg11", "labels": ["Normal"]})


@pytest.mark.needs(shared_data_dir() / "metadata.csv", "The full curated set belongs in ../shared/data/cxr beside the repo (or set CXR_DATA_DIR)")
def test_every_finding_head_has_enough_training_support():
    train = load_manifest(shared_data_dir()).query(split="train")
    supported = supported_labels(train, min_positives=40)
    assert set(LABELS) - {"Pediatric"} <= set(supported)
    # The NIH films (DATASET_CARD.md) give four of NIH's findings enough support for a head of their own
    # (a retrain with label_scope "annotating_sources" can add them; the shipped heads are unchanged).
    assert {"Infiltration", "Atelectasis", "Edema", "Pleural effusion"} <= set(supported)


def test_targets_mask_unlabelled_images_and_derive_pediatric():
    manifest = load_manifest(SAMPLE)
    targets, known = label_targets(manifest, LABELS)
    table = manifest.table
    unlabelled = table["labels"].isna().to_numpy()
    assert unlabelled.any()
    assert not known[unlabelled, :5].any() and known[:, 5].all()
    kermany = (table["source"] == "pneumonia_kermany").to_numpy()
    assert targets[kermany, 5].all()
    adults = (table["age"] >= 18).fillna(False).to_numpy(dtype=bool)
    assert not targets[adults, 5].any()
    covid = table["labels"].fillna("").str.contains("COVID-19").to_numpy(dtype=bool)
    assert np.array_equal(targets[:, 4].astype(bool), covid)


def test_augmentation_never_flips_left_and_right():
    config = json.loads((REPO / "configs" / "classifier.json").read_text())
    image = torch.zeros(64, 1, 48, 48)
    image[:, :, 8:40, 4:16] = 1.0  # a bright block on the image's left only
    rng = np.random.default_rng(0)
    for _ in range(5):
        out = augment_batch(image, rng, config["augment"])
        left, right = out[..., :24].sum(dim=(1, 2, 3)), out[..., 24:].sum(dim=(1, 2, 3))
        assert (left > 4 * right).all()
    # Zero-strength settings are the identity, so the map itself adds no mirroring or shift.
    identity = augment_batch(image, rng, {})
    torch.testing.assert_close(identity, image)


@pytest.mark.precision
def test_trainer_checkpoints_resumes_and_logs_val_auroc(run):
    latest = CheckpointDir(run / "run").latest()
    assert latest.name == "step-00000002"
    assert {p.name for p in latest.iterdir()} >= {"model.safetensors", "ema.safetensors", "best.safetensors", "optimizer.safetensors", "state.json"}
    assert list((run / "cache").glob("images-32px-*.safetensors"))
    state = tc.train_classifier(tiny_config(run, max_steps=3), run / "run", resume=True, data_dir=SAMPLE)
    assert state["step"] == 3 and state["samples_seen"] == 12
    with open(run / "run" / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert {"val_auroc_mean", "val_auroc_covid_19", "val_auroc_pediatric"} <= set(rows[0])
    assert float(rows[-1]["val_loss"]) > 0


def test_export_writes_a_verified_folder_with_a_model_card(exported):
    assert {p.name for p in exported.iterdir()} == {"config.json", "model.safetensors", "MANIFEST.json", "README.md", "test_metrics.json"}
    verify_manifest(exported)
    metrics = json.loads((exported / "test_metrics.json").read_text())
    assert metrics["split"] == "test" and set(metrics["labels"]) == set(LABELS)
    covid = metrics["labels"]["COVID-19"]
    assert covid["n_pos"] > 0 and covid["n_neg"] > 0 and covid["ci_low"] <= covid["auroc"] <= covid["ci_high"]
    card = (exported / "README.md").read_text()
    assert "source and label are entangled" in card and "| COVID-19 |" in card
    # The evaluate subcommand rewrites the card and keeps the folder verifiable.
    tc.main(["evaluate", "--weights", str(exported), "--data-dir", str(SAMPLE), "--n-boot", "20"])
    verify_manifest(exported)
    assert json.loads((exported / "test_metrics.json").read_text())["n_boot"] == 20


def test_loaded_classifier_predicts_probabilities_and_features(exported):
    loaded = load_classifier(exported)
    assert loaded.labels == LABELS and loaded.input_size == (32, 32)
    assert not loaded.model.training
    rng = np.random.default_rng(0)
    images = [rng.random((40, 40), dtype=np.float32), rng.random((256, 256), dtype=np.float32), np.zeros((224, 224), np.float32)]
    probs = loaded.predict_proba(images)
    assert probs.shape == (3, len(LABELS)) and probs.dtype == np.float32
    assert ((probs >= 0) & (probs <= 1)).all()
    extractor = loaded.feature_extractor
    assert isinstance(extractor, TorchFeatureExtractor) and extractor.channels == 1
    features = extractor(np.stack([images[1], images[1]]))
    assert features.shape == (2, loaded.model.feature_dim) == (2, 512)
    assert "resnet18" in extractor.settings["network"] and len(extractor.settings["weights_sha256"]) == 64
    assert extractor.settings["mean"] == [0.51]
    # Features are the penultimate layer: the head applied to them gives the logits.
    logits = loaded.model.head(torch.from_numpy(features))
    np.testing.assert_allclose(torch.sigmoid(logits).detach().numpy()[0], loaded.predict_proba([images[1]])[0], atol=1e-5)


def test_tampered_weights_are_refused(exported, tmp_path):
    copy = shutil.copytree(exported, tmp_path / "tampered")
    weights = copy / "model.safetensors"
    flip_one_byte(weights, -10)
    with pytest.raises(WeightsError, match="does not match its sha256"):
        load_classifier(copy)


def test_grad_cam_is_an_image_sized_heatmap(exported):
    loaded = load_classifier(exported)
    image = np.random.default_rng(1).random((64, 48), dtype=np.float32)
    heatmap = grad_cam(loaded, image, "COVID-19")
    assert heatmap.shape == (64, 48) and heatmap.dtype == np.float32
    assert heatmap.min() >= 0 and heatmap.max() <= 1
    assert all(p.grad is None for p in loaded.model.parameters())
    with pytest.raises(ValueError, match="not one of the classifier's labels"):
        grad_cam(loaded, image, "Cardiomegaly")


def test_annotating_sources_scope_masks_findings_a_source_does_not_record(tmp_path):
    labels = ["Normal", "Pneumonia", "COVID-19", "Cardiomegaly", "Pleural effusion", "Atelectasis", "Pediatric"]
    sample = load_manifest(SAMPLE)
    scope = annotating_sources(sample, labels)
    assert scope["Cardiomegaly"] == ["nih_cxr14"] and "Pediatric" not in scope
    assert scope["COVID-19"] == ["covid_ieee8023", "covid_mhh"]
    targets, known = label_targets(sample, labels, scope)
    nih = (sample.table["source"] == "nih_cxr14").to_numpy()
    assert known[nih, 3].all() and not known[~nih, 3].any()  # a Kermany film is not a cardiomegaly negative
    assert targets[nih, 3].sum() == sample.label_counts()["Cardiomegaly"]
    with pytest.raises(ValueError, match="names no sources"):
        label_targets(sample, labels, {"Normal": ["nih_cxr14"]})

    config = tiny_config(tmp_path, max_steps=1)
    config["model"].update(labels=labels, label_scope="annotating_sources")
    tc.train_classifier(config, tmp_path / "run", data_dir=SAMPLE)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    train_scope = annotating_sources(sample.query(split="train"), labels)
    assert saved["annotated_sources"] == train_scope
    folder = tc.export_classifier(tmp_path / "run", tmp_path / "classifier", data_dir=SAMPLE)
    assert json.loads((folder / "config.json").read_text())["model"]["annotated_sources"] == train_scope
    assert "Label scope" in (folder / "README.md").read_text() and load_classifier(folder).labels == tuple(labels)
    metrics = json.loads((folder / tc.METRICS_NAME).read_text())["labels"]["Cardiomegaly"]
    test_nih = sample.query(split="test", source="nih_cxr14")
    assert metrics["n_pos"] + metrics["n_neg"] == len(test_nih)  # only NIH test films count
    config["model"]["label_scope"] = "some_sources"
    with pytest.raises(ValueError, match="label_scope"):
        tc.train_classifier(config, tmp_path / "run2", data_dir=SAMPLE)
