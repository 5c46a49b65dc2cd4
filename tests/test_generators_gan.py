"""GANs (DCGAN, class-conditional DCGAN, LSGAN): the trainer resumes and exports, the loader
verifies the weights and generates to the protocol the registry relies on."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from tests.noise_generator_checks import CLASSES, check_exported_folder, tiny_config, train_resume_export
from xray_generator.pipelines.gan import load_gan
from xray_generator.pipelines.vae_family import load_vae_family
from xray_generator.training import train_gan

VARIANTS = {
    "dcgan": {},
    "dcgan_conditional": {"classes": CLASSES, "auxiliary_classifier": True, "projection": False},
    "lsgan": {},
}


def gan_config(family: str) -> dict:
    config = tiny_config("gan_tiny.json", family, **VARIANTS[family])
    if family == "lsgan":
        config["train"]["objective"] = "least_squares"
    if family == "dcgan_conditional":
        config["train"]["auxiliary_class_weight"] = 1.0
    return config


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def exported(request, tmp_path_factory):
    family = request.param
    folder = train_resume_export(train_gan.train_gan, train_gan.export_gan, gan_config(family), tmp_path_factory.mktemp(family),
                                 note=EXPORT_NOTE)
    return family, folder


EXPORT_NOTE = "Shipped from the last checkpoint before the discriminator collapsed."


def test_the_export_note_reaches_the_card_and_the_config(exported):
    _, folder = exported
    assert f"Note: {EXPORT_NOTE}" in (folder / "README.md").read_text()
    assert json.loads((folder / "config.json").read_text())["training"]["note"] == EXPORT_NOTE


def test_exported_gan_loads_to_the_protocol_and_refuses_damage(exported, tmp_path):
    family, folder = exported
    check_exported_folder(load_gan, load_vae_family, family, folder, tuple(VARIANTS[family].get("classes", ())), tmp_path)


def test_gan_config_must_match_its_family():
    with pytest.raises(ValueError, match="model.classes"):
        train_gan.check_gan_config(tiny_config("gan_tiny.json", "dcgan", classes=CLASSES))
    with pytest.raises(ValueError, match="model.classes"):
        train_gan.check_gan_config(tiny_config("gan_tiny.json", "dcgan_conditional"))
    with pytest.raises(ValueError, match="least_squares"):
        train_gan.check_gan_config(tiny_config("gan_tiny.json", "lsgan"))
    with pytest.raises(ValueError, match="unknown class names"):
        train_gan.check_gan_config(tiny_config("gan_tiny.json", "dcgan_conditional", classes=["Normal", "Dragon pox"]))
    with pytest.raises(ValueError, match="auxiliary_classifier needs model.classes"):
        train_gan.check_gan_config(tiny_config("gan_tiny.json", "dcgan", auxiliary_classifier=True))
    with pytest.raises(ValueError, match="auxiliary_class_weight > 0"):
        train_gan.check_gan_config(tiny_config("gan_tiny.json", "dcgan_conditional", classes=CLASSES, auxiliary_classifier=True))
    with pytest.raises(ValueError, match="never sees the class"):
        train_gan.check_gan_config(tiny_config("gan_tiny.json", "dcgan_conditional", classes=CLASSES, projection=False))


def test_the_conditional_gan_logs_its_auxiliary_class_losses(exported):
    family, folder = exported
    with open(folder / "training_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    logged = [row["loss_class_real"] != "" and row["loss_class_fake"] != "" for row in rows]
    assert all(logged) if family == "dcgan_conditional" else not any(logged)
    if family == "dcgan_conditional":
        assert all(float(row["loss_class_real"]) > 0 for row in rows)


def test_discriminator_targets_are_smoothed_and_flipped():
    torch.manual_seed(0)
    real, fake = train_gan.discriminator_targets(20_000, 0.9, 0.1)
    assert real.unique().tolist() == [0.0, pytest.approx(0.9)] and fake.unique().tolist() == [0.0, pytest.approx(0.9)]
    assert (real == 0).float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert (fake > 0).float().mean().item() == pytest.approx(0.1, abs=0.01)
    config = {"instance_noise_std": 0.1, "instance_noise_decay_fraction": 0.5}
    assert [train_gan.instance_noise_std(s, 100, config) for s in (0, 25, 50, 99)] == [0.1, pytest.approx(0.05), 0.0, 0.0]
