"""Checks every noise-to-image generator (GANs, VAE family) must pass, shared by their test files."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, flip_one_byte
from xray_generator.pipelines.registry import Generator
from xray_generator.training.checkpointing import CheckpointDir
from xray_generator.weights import WeightsError

SAMPLE = REPO / "dataset"
CLASSES = ["Normal", "Pneumonia", "COVID-19"]


def tiny_config(name: str, family: str, **model_overrides) -> dict:
    config = json.loads((REPO / "configs" / name).read_text())
    config["family"] = family
    config["model"].update(model_overrides)
    return config


def train_resume_export(train, export, config: dict, root: Path, **export_options) -> Path:
    """2 steps, resume to 3 (one checkpoint, grid and log row per step), then export; returns the weights folder."""
    run = root / "run"
    assert train(config, run, data_dir=SAMPLE)["step"] == 2
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, run, data_dir=SAMPLE)  # a fresh start never mixes into an existing run
    config["train"]["max_steps"] = 3
    state = train(config, run, resume=True, data_dir=SAMPLE)
    assert state["step"] == 3 and state["samples_seen"] == 3 * config["train"]["batch_size"]
    with open(run / "log.csv") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [1, 2, 3]
    assert CheckpointDir(run).latest().name == "step-00000003"
    assert sorted(p.name for p in (run / "samples").iterdir())[-1] == "step-00000003.png"
    assert not list(run.glob(".step-*.partial"))
    return export(run, root / config["family"], data_dir=SAMPLE, **export_options)


def check_generator(generator, family: str, conditions: tuple[str, ...], size: int) -> None:
    """The protocol: attributes, shape, range, seed determinism, condition and source validation."""
    assert isinstance(generator, Generator)  # the registry's protocol
    assert generator.family == family and generator.conditions == conditions and generator.image_size == size
    assert len(generator.weights_sha256) == 64 and 0 < generator.parameters
    condition = conditions[0] if conditions else None
    images = generator.generate(3, condition=condition, seed=7)
    assert images.shape == (3, size, size) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    np.testing.assert_array_equal(images, generator.generate(3, condition=condition, seed=7))
    assert not np.array_equal(images, generator.generate(3, condition=condition, seed=8))
    assert generator.generate(20, condition=condition, seed=0).shape == (20, size, size)  # more than one batch
    with pytest.raises(ValueError, match="source"):
        generator.generate(1, condition=condition, source=np.zeros((size, size), np.float32))
    for bad_n in (0, -1, 2.5, True, 10_001):
        with pytest.raises(ValueError, match="n must be"):
            generator.generate(bad_n, condition=condition)
    for bad_seed in (-1, 1.5, "0"):
        with pytest.raises(ValueError, match="seed must be"):
            generator.generate(1, condition=condition, seed=bad_seed)
    if conditions:
        per_class = [generator.generate(2, condition=c, seed=0) for c in conditions]
        assert all(not np.array_equal(per_class[0], other) for other in per_class[1:])
        np.testing.assert_array_equal(generator.generate(2, seed=0), per_class[0])  # None: the first class
        for bad in ("Tuberculosis", "normal", 1):
            with pytest.raises(ValueError, match="COVID-19"):  # the message lists the valid conditions
                generator.generate(1, condition=bad)
    else:
        with pytest.raises(ValueError, match="unconditional"):
            generator.generate(1, condition="Pneumonia")


def check_exported_folder(load, other_family_loader, family: str, folder: Path, conditions: tuple[str, ...], tmp_path: Path) -> None:
    """An exported folder is complete, carries the disclaimer, loads to the protocol and is refused when damaged."""
    assert {p.name for p in folder.iterdir()} == {"MANIFEST.json", "config.json", "model.safetensors", "samples.png", "training_log.csv", "README.md"}
    assert "Not for clinical use" in (folder / "README.md").read_text()
    check_generator(load(folder), family, conditions, 32)
    check_refuses_damaged_weights(load, folder, tmp_path)
    with pytest.raises(ValueError, match="this loader serves"):
        other_family_loader(folder)


def check_refuses_damaged_weights(load, folder: Path, tmp_path: Path) -> None:
    """A changed byte, a missing manifest and an unlisted pickle file are refused before loading."""
    tampered = shutil.copytree(folder, tmp_path / "tampered")
    weights = tampered / "model.safetensors"
    flip_one_byte(weights, -5)
    with pytest.raises(WeightsError, match="does not match its sha256"):
        load(tampered)
    unlisted = shutil.copytree(folder, tmp_path / "unlisted")
    (unlisted / "extra.pt").write_bytes(b"\x80\x04")
    with pytest.raises(WeightsError, match="pickle"):
        load(unlisted)
    no_manifest = shutil.copytree(folder, tmp_path / "no_manifest")
    (no_manifest / "MANIFEST.json").unlink()
    with pytest.raises(WeightsError, match="MANIFEST"):
        load(no_manifest)
