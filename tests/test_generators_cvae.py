"""The healthy -> pneumonia CVAE: trainer (tiny config, resume), export, loading and translation behaviour."""
from __future__ import annotations

import csv
import json
import logging
import shutil

import numpy as np
import pytest
import torch

from tests.conftest import flip_one_byte
from xray_generator.models.cvae import ConditionalPatchDiscriminator, build_cvae
from xray_generator.paths import REPO_ROOT, sample_data_dir
from xray_generator.pipelines.cvae import prepare_source
from xray_generator.pipelines.registry import Generator, load_generator
from xray_generator.training.train_cvae import export_cvae, train_cvae
from xray_generator.weights import WeightsError, sha256_file


def tiny_config(tmp_path, classifier_dir) -> dict:
    config = json.loads((REPO_ROOT / "configs" / "cvae_tiny.json").read_text())
    config["classifier"] = str(classifier_dir)
    config["cache_dir"] = str(tmp_path / "cache")
    return config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_classifier_dir):
    root = tmp_path_factory.mktemp("cvae_run")
    config = tiny_config(root, tiny_classifier_dir)
    state = train_cvae(config, root / "run", data_dir=sample_data_dir())
    return root / "run", config, state


@pytest.fixture(scope="module")
def weights_root(tiny_run, tmp_path_factory, tiny_classifier_dir):
    root = tmp_path_factory.mktemp("cvae_weights")
    export_cvae(tiny_run[0], root / "cvae", data_dir=sample_data_dir(), classifier_folder=tiny_classifier_dir, n_boot=20)
    return root


@pytest.fixture(scope="module")
def generator(weights_root):
    return load_generator("cvae", weights_root)


@pytest.fixture
def film() -> np.ndarray:
    """A radiograph-like float image (not square, larger than the model) in [0, 1]."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:90, 0:70] / 90.0
    return np.clip(0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy) + 0.05 * rng.standard_normal((90, 70)), 0, 1).astype(np.float32)


# ---------------------------------------------------------------------------- model
def test_cvae_encodes_to_a_bottleneck_and_decodes_per_label():
    model = build_cvae({"image_size": 32, "channels": [8, 16], "latent_channels": 4, "label_dim": 8, "norm_groups": 4}).eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    mu, logvar, skips = model.encode(x)
    assert mu.shape == logvar.shape == (2, 4, 8, 8) and [s.shape[-1] for s in skips] == [32, 16]
    rec, cf, _, _ = model(x, torch.tensor([0, 1]), torch.tensor([1, 0]))
    assert rec.shape == cf.shape == x.shape
    disc = ConditionalPatchDiscriminator(2, width=8, layers=2)
    real = disc(x, torch.tensor([0, 1]))
    assert real.ndim == 4 and real.shape[:2] == (2, 1)
    # The projection term makes the verdict depend on the label.
    assert not torch.allclose(real, disc(x, torch.tensor([1, 0])))
    with pytest.raises(ValueError, match="divisible"):
        build_cvae({"image_size": 30, "channels": [8, 16]})


def test_perceptual_loss_on_the_classifier_is_zero_for_equal_images_and_frozen(tiny_classifier_dir):
    from xray_generator.training.perceptual import classifier_perceptual_loss, load_optional_classifier

    loss_fn = classifier_perceptual_loss(load_optional_classifier(tiny_classifier_dir), ("layer1", "layer2"))
    loss_fn.train()  # a trainer's .train() must not switch the classifier's BatchNorm to batch statistics
    assert not loss_fn.training and not loss_fn.backbone.training
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert loss_fn(x, x).item() < 1e-6
    prediction = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    loss = loss_fn(prediction, x)
    loss.backward()
    assert loss.item() > 0 and prediction.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss_fn.parameters())
    with pytest.raises(ValueError, match="perceptual layers"):
        classifier_perceptual_loss(load_optional_classifier(tiny_classifier_dir), ("fc",))


# ---------------------------------------------------------------------------- training
@pytest.mark.precision
def test_tiny_config_trains_two_steps_with_checkpoint_and_log(tiny_run):
    run, _, state = tiny_run
    assert state["step"] == 2 and state["samples_seen"] == 8
    assert (run / "LATEST").read_text().strip() == "step-00000002"
    files = {p.name for p in (run / "step-00000002").iterdir()}
    assert {"model.safetensors", "ema.safetensors", "discriminator.safetensors", "optimizer.safetensors", "optimizer_d.safetensors"} <= files
    assert not any(name.endswith((".pt", ".pth", ".bin", ".pkl")) for name in files)
    with open(run / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    # The tiny classifier is present, so the perceptual term and the val scores are live.
    assert float(rows[-1]["perc"]) > 0 and rows[-1]["val_share_rising"] != ""
    assert float(rows[-1]["adv_d"]) > 0  # the conditional discriminator trained from step 0


def test_training_resumes_from_the_latest_checkpoint(tiny_run, tmp_path, capsys):
    run, config, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = {**config, "train": {**config["train"], "max_steps": 3}}
    state = train_cvae(config, copy, resume=True, data_dir=sample_data_dir())
    assert "resumed from step-00000002" in capsys.readouterr().out
    assert state["step"] == 3 and state["samples_seen"] == 12
    with open(copy / "log.csv") as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [1, 2, 3]


def test_training_without_a_classifier_warns_and_drops_the_perceptual_term(tmp_path, caplog):
    config = tiny_config(tmp_path, tmp_path / "no_classifier")
    config["train"] = {**config["train"], "max_steps": 1, "val_images": 2}
    with caplog.at_level(logging.WARNING):
        state = train_cvae(config, tmp_path / "run", data_dir=sample_data_dir())
    assert state["step"] == 1
    assert json.loads((tmp_path / "run" / "step-00000001" / "state.json").read_text())["perceptual"] is False
    assert any("without the perceptual loss term" in record.getMessage() for record in caplog.records)
    with open(tmp_path / "run" / "log.csv") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["perc"]) == 0.0 and row["val_share_rising"] == ""


# ---------------------------------------------------------------------------- export and loading
def test_export_writes_a_verified_folder_with_a_model_card(weights_root):
    folder = weights_root / "cvae"
    names = {p.name for p in folder.iterdir()}
    assert {"MANIFEST.json", "model.safetensors", "config.json", "README.md", "translation_metrics.json", "training_log.csv", "card"} <= names
    manifest = json.loads((folder / "MANIFEST.json").read_text())["files"]
    assert {"model.safetensors", "config.json", "README.md", "card/examples.png"} <= set(manifest)
    card = (folder / "README.md").read_text()
    assert "Steps: 2" in card and "wall time" in card and "Not for clinical use" in card and "share with rising score" in card
    metrics = json.loads((folder / "translation_metrics.json").read_text())
    assert metrics["all_held_out"]["n"] == 16 and metrics["test_only"]["n"] == 8  # sample: 8 val + 8 test Kermany normals
    translation = metrics["all_held_out"]["translation"]
    assert 0 <= translation["share_rising"]["mean"] <= 1 and 0 <= translation["share_above_reconstruction"]["mean"] <= 1
    assert translation["ssim"]["ci_low"] <= translation["ssim"]["mean"] <= translation["ssim"]["ci_high"]
    config = json.loads((folder / "config.json").read_text())
    assert config["family"] == "cvae" and config["loss"]["l1_weight"] == 10.0 and config["training"]["steps"] == 2


def test_loads_through_the_registry_as_a_generator(generator, weights_root):
    assert isinstance(generator, Generator)
    assert generator.family == "cvae"
    assert generator.conditions == ("Normal", "Pneumonia")
    assert generator.image_size == 32
    assert generator.parameters == sum(p.numel() for p in generator.model.parameters()) > 0
    assert generator.weights_sha256 == sha256_file(weights_root / "cvae" / "model.safetensors")


def test_generate_shape_range_and_seed_determinism(generator, film):
    out = generator.generate(n=3, condition="Pneumonia", seed=7, source=film)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    assert np.array_equal(out, generator.generate(n=3, condition="Pneumonia", seed=7, source=film))
    assert not np.array_equal(out, generator.generate(n=3, condition="Pneumonia", seed=8, source=film))
    # Each of the n outputs decodes its own latent draw.
    assert not np.array_equal(out[0], out[1])
    # Default condition: the translation the family exists for (the first draw of a batch is the
    # same draw; batched convolutions may round differently in the last bit).
    np.testing.assert_allclose(generator.generate(seed=7, source=film)[0], out[0], atol=1e-5)


def test_the_condition_changes_the_output(generator, film):
    normal = generator.generate(condition="Normal", seed=0, source=film)
    pneumonia = generator.generate(condition="Pneumonia", seed=0, source=film)
    assert not np.array_equal(normal, pneumonia)


def test_wrong_label_is_refused_with_the_valid_ones(generator, film):
    for bad in ("COVID-19", "pneumonia", "", 1):
        with pytest.raises(ValueError, match="Normal, Pneumonia"):
            generator.generate(condition=bad, source=film)


@pytest.mark.parametrize(
    "source, message",
    [
        (None, "source radiograph is required"),
        (np.zeros((40, 40, 3), np.float32), "2-D"),
        (np.zeros((4, 40, 40), np.float32), "2-D"),
        (np.full((40, 40), np.nan, np.float32), "NaN"),
        (np.full((40, 40), np.inf, np.float32), "NaN or infinite"),
        (np.full((40, 40), 2.0, np.float32), r"\[0, 1\]"),
        (np.zeros((40, 40), np.uint8), "float image"),
        (np.array([["a"] * 40] * 40), "float image"),
        (np.zeros((10, 10), np.float32), "at least"),
        (np.zeros((40, 400), np.float32), "near-square"),
    ],
)
def test_bad_sources_are_refused_with_a_message(generator, source, message):
    with pytest.raises(ValueError, match=message):
        generator.generate(condition="Pneumonia", source=source)


def test_any_size_source_is_resized_to_the_model(generator, film):
    large = np.kron(film, np.ones((5, 5), np.float32))  # 450 x 350
    assert generator.generate(source=large).shape == (1, 32, 32)
    assert generator.generate(source=torch.from_numpy(film)).shape == (1, 32, 32)
    prepared, notices = prepare_source(film, 32)
    assert prepared.shape == (32, 32) and "70 x 90" in notices[0] and "centre-cropped" in notices[0]
    assert prepare_source(prepared, 32)[1] == []


@pytest.mark.parametrize("n, seed", [(0, 0), (1.5, 0), (True, 0), (1, -1), (1, "0")])
def test_bad_count_or_seed_is_refused(generator, film, n, seed):
    with pytest.raises(ValueError, match="n must|seed must"):
        generator.generate(n=n, seed=seed, source=film)


def test_a_tampered_weights_file_fails_the_sha256_check(weights_root, tmp_path):
    root = tmp_path / "weights"
    shutil.copytree(weights_root / "cvae", root / "cvae")
    weights = root / "cvae" / "model.safetensors"
    flip_one_byte(weights)  # same size, one flipped byte in the tensor data
    with pytest.raises(WeightsError, match="sha256"):
        load_generator("cvae", root)


def test_a_pickle_beside_the_weights_is_refused(weights_root, tmp_path):
    root = tmp_path / "weights"
    shutil.copytree(weights_root / "cvae", root / "cvae")
    (root / "cvae" / "model.pt").write_bytes(b"not loaded")
    with pytest.raises(WeightsError, match="pickle"):
        load_generator("cvae", root)
