"""The honest vocabulary: training-image counts beside the weights, and notices for findings the model saw rarely or never."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from xray_generator.__main__ import main
from xray_generator.model_vocabulary import (
    TRAINING_VOCABULARY_FILE,
    load_training_vocabulary,
    prompt_notices,
    training_label_counts,
)
from xray_generator.weights import verify_manifest

REPO = Path(__file__).resolve().parent.parent
VOCABULARY = {"n_images": 100, "rare_below": 100, "description": "test",
              "label_counts": {"Normal": 500, "Pneumonia": 900, "Pneumothorax": 10, "Cardiomegaly": 0, "Pleural effusion": 0}}


def test_counts_are_per_image_and_cover_every_label():
    table = pd.DataFrame({"labels": ["Pneumonia; Viral pneumonia", "Normal", None, "Pneumonia"]})
    counts = training_label_counts(table)
    assert counts["Pneumonia"] == 2 and counts["Viral pneumonia"] == 1 and counts["Normal"] == 1
    assert counts["Pneumothorax"] == 0
    with pytest.raises(ValueError, match="not in the vocabulary"):
        training_label_counts(pd.DataFrame({"labels": ["Broken leg"]}))


def test_rare_and_unknown_findings_are_named_and_negated_ones_are_not():
    notices = prompt_notices("Moderate cardiomegaly with small bilateral pleural effusions. Small pneumothorax.", VOCABULARY)
    assert any(n.startswith("cardiomegaly") and "not in the training data: expect it to be ignored" in n for n in notices)
    assert any(n.startswith("pleural effusion") and "not in the training data" in n for n in notices)
    assert any(n.startswith("pneumothorax") and "10 training films" in n for n in notices)
    assert prompt_notices("Moderate pneumonia. No pneumothorax, no effusion, heart not enlarged.", VOCABULARY) == []
    assert prompt_notices("Normal heart size. Clear lungs.", VOCABULARY) == []
    assert prompt_notices("cardiomegaly", None) == []  # weights without a vocabulary: nothing claimed


@pytest.fixture
def weights_with_vocabulary(tiny_weights_root, tmp_path) -> Path:
    from xray_generator.training.train_ldm import ship_training_vocabulary

    root = tmp_path / "weights"
    shutil.copytree(tiny_weights_root, root)
    ship_training_vocabulary(root / "ldm", data_dir=REPO / "dataset")
    return root


def test_written_vocabulary_is_in_the_manifest_and_counts_the_train_split(weights_with_vocabulary):
    folder = weights_with_vocabulary / "ldm"
    verify_manifest(folder)  # the new file is listed, every hash checks
    assert TRAINING_VOCABULARY_FILE in json.loads((folder / "MANIFEST.json").read_text())["files"]
    vocabulary = load_training_vocabulary(folder)
    sample = pd.read_csv(REPO / "dataset" / "metadata.csv")
    assert vocabulary["n_images"] == int((sample["split"] == "train").sum())


def test_shipped_vocabulary_counts_what_the_shipped_unet_saw():
    vocabulary = load_training_vocabulary(REPO / "weights" / "ldm")
    # The UNet fine-tuned on 2026-12-06 saw the whole train split, NIH ChestX-ray14 and Hannover films included.
    assert vocabulary["n_images"] == 6287  # the model card's train images
    assert vocabulary["label_counts"]["Pneumothorax"] == 10 and vocabulary["label_counts"]["Pneumonia"] > 1000
    assert vocabulary["label_counts"]["Herpes"] == 0  # a finding it never saw stays listed, with 0


def test_cli_vocabulary_prints_counts(weights_with_vocabulary, capsys):
    assert main(["vocabulary", "--weights", str(weights_with_vocabulary / "ldm")]) == 0
    out = capsys.readouterr().out
    assert "training images" in out and "Pneumothorax" in out and "not in the training data" in out


def test_cli_vocabulary_without_the_file_says_how_to_write_it(tiny_pipeline_dir, capsys):
    assert main(["vocabulary", "--weights", str(tiny_pipeline_dir)]) == 2
    assert "write-vocabulary" in capsys.readouterr().err


def _sample_train_count(label: str) -> int:
    from xray_generator.data.manifest import load_manifest

    return len(load_manifest(REPO / "dataset").query(label=label, split="train"))


def test_cli_generate_names_findings_the_model_never_saw(weights_with_vocabulary, tmp_path, capsys):
    folder = weights_with_vocabulary / "ldm"
    # The sample's train split has NIH cardiomegaly films but no emphysema.
    assert _sample_train_count("Emphysema") == 0 and 0 < _sample_train_count("Cardiomegaly") < 100
    assert main(["generate", "--weights", str(folder), "--prompt", "Moderate emphysema and cardiomegaly. No pneumothorax.",
                 "--steps", "2", "-o", str(tmp_path / "a.png")]) == 0
    err = capsys.readouterr().err
    assert "emphysema" in err and "not in the training data" in err
    assert "cardiomegaly" in err and "training film" in err  # rare: named with its count
    assert "pneumothorax" not in err.lower()  # negated: not a request


def test_generate_page_warns_about_unseen_findings_but_not_negated_ones(weights_with_vocabulary, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    outputs = tmp_path / "outputs"
    outputs.mkdir()
    for name, value in {"CXR_WEIGHTS_DIR": weights_with_vocabulary, "CXR_OUTPUTS_DIR": outputs, "CXR_DATA_DIR": REPO / "dataset",
                        "CXR_SAMPLE_DIR": REPO / "dataset", "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, str(value))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    assert _sample_train_count("Emphysema") == 0
    # The prompt is in the Generate form (Ctrl+Enter generates): its value, and so the notice, arrives with the submit.
    at.text_area(key="prompt").set_value("Moderate emphysema with small bilateral pleural effusions. No pneumothorax.")
    at.button(key="generate").click().run()
    warnings = " ".join(str(w.value) for w in at.warning)
    assert "emphysema" in warnings and "not in the training data" in warnings
    assert "pneumothorax" not in warnings.lower()
    at.text_area(key="prompt").set_value("Right lower lobe pneumonia. No pneumothorax.")
    at.button(key="generate").click().run()
    assert not any("Training data" in str(w.value) for w in at.warning)
