"""Smoke tests of the weights a fresh clone ships with: they verify, load offline and generate."""
from __future__ import annotations

import numpy as np
import pytest

from xray_generator.paths import REPO_ROOT
from xray_generator.pipelines.registry import available_generators, load_generator
from xray_generator.weights import verify_manifest

LDM = REPO_ROOT / "weights" / "ldm"


def test_shipped_ldm_weights_verify_against_their_manifest():
    assert (LDM / "MANIFEST.json").is_file(), "weights/ldm must ship with the repo"
    assert len(verify_manifest(LDM)) == 16
    assert "ldm" in available_generators(REPO_ROOT / "weights")
    assert (LDM / "README.md").is_file()


@pytest.fixture(scope="module")
def shipped():
    return load_generator("ldm", REPO_ROOT / "weights")


def test_shipped_model_generates_a_plausible_radiograph(shipped):
    out = shipped("Adult PA chest radiograph: right lower lobe pneumonia.", seed=0)
    image = out.images[0]
    assert image.shape == (256, 256) and np.isfinite(image).all()
    # A radiograph uses the grey range: neither blank nor noise-flat.
    assert 0.1 < image.mean() < 0.9 and image.std() > 0.08
    again = shipped("Adult PA chest radiograph: right lower lobe pneumonia.", seed=0).images[0]
    assert np.array_equal(image, again)


def test_prompts_change_the_shipped_output(shipped):
    a = shipped("normal pediatric chest", seed=0).images[0]
    b = shipped("bilateral COVID-19 opacities", seed=0).images[0]
    assert np.abs(a - b).mean() > 0.01


def test_shipped_classifier_verifies_and_tells_sample_findings_apart():
    """On the sample's held-out films the shipped classifier ranks Normal films above pneumonia films for 'Normal'."""
    from sklearn.metrics import roc_auc_score

    from xray_generator.data.datasets import load_images_uint8
    from xray_generator.data.manifest import load_manifest, split_labels
    from xray_generator.models.classifier import load_classifier

    classifier = load_classifier(REPO_ROOT / "weights" / "classifier")
    sample = load_manifest(REPO_ROOT / "dataset")
    sample.table = sample.table[sample.table["split"].isin(["val", "test"])].reset_index(drop=True)
    labels = [split_labels(value) for value in sample.table["labels"]]
    keep = [i for i, found in enumerate(labels) if "Normal" in found or "Pneumonia" in found]
    images = load_images_uint8(sample)
    scores = classifier.predict_proba([images[i].astype(np.float32) / 255.0 for i in keep])
    is_normal = ["Normal" in labels[i] for i in keep]
    assert 0 < sum(is_normal) < len(keep)
    assert roc_auc_score(is_normal, scores[:, classifier.labels.index("Normal")]) > 0.8


SHIPPED_FAMILIES = [name for name in available_generators(REPO_ROOT / "weights") if name != "ldm"]


@pytest.mark.parametrize("family", SHIPPED_FAMILIES)
def test_each_shipped_alternative_family_generates_deterministic_radiograph_range_images(family):
    generator = load_generator(family, REPO_ROOT / "weights")
    condition = generator.conditions[0] if generator.conditions else None
    source = None
    if family == "cvae":
        from xray_generator.io import read_gray

        source = read_gray(REPO_ROOT / "dataset" / "images" / "pneumonia_kermany_224" / "kermany224_IM-0644-0001.jpeg")
    images = generator.generate(4, condition=condition, seed=3, source=source)
    assert images.shape == (4, generator.image_size, generator.image_size) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.05
    assert np.array_equal(images, generator.generate(4, condition=condition, seed=3, source=source))


@pytest.mark.parametrize("family", [f for f in SHIPPED_FAMILIES if f in ("dcgan_conditional", "gmvae_supervised")])
def test_shipped_class_conditional_families_raise_the_score_of_the_requested_class(family):
    """Our classifier ranks a class's images above the others' for that class's label: pneumonia for
    Pneumonia against Normal requests, COVID-19 for COVID-19 against the rest (condition-fidelity AUROC,
    the evaluation's measure, on 64 images per class; 0.5 would mean the class is ignored)."""
    from sklearn.metrics import roc_auc_score

    from xray_generator.models.classifier import load_classifier

    classifier = load_classifier(REPO_ROOT / "weights" / "classifier")
    generator = load_generator(family, REPO_ROOT / "weights")
    scores = {c: classifier.predict_proba(list(generator.generate(64, condition=c, seed=0))) for c in generator.conditions}

    def auroc(label: str, asked: str, others: tuple[str, ...]) -> float:
        column = classifier.labels.index(label)
        negatives = np.concatenate([scores[o][:, column] for o in others])
        return roc_auc_score(np.r_[np.ones(64), np.zeros(len(negatives))], np.r_[scores[asked][:, column], negatives])

    assert auroc("Pneumonia", "Pneumonia", ("Normal",)) >= 0.7
    assert auroc("COVID-19", "COVID-19", tuple(c for c in generator.conditions if c != "COVID-19")) >= 0.7


def test_the_route_b_autoencoder_verifies_and_round_trips_sample_films():
    """weights/autoencoder_f8c16 (not the app's default; the UNet run on its latents needs it): verified against
    its manifest, 16 latent channels at 1/8, and its round trip of real sample films near its card's PSNR."""
    from xray_generator.data.manifest import load_manifest
    from xray_generator.evaluation.paired import psnr
    from xray_generator.evaluation.realism import roundtrip_images
    from xray_generator.evaluation.samples import load_real
    from xray_generator.models.autoencoder import downsampling_factor, latent_channels, load_autoencoder

    folder = REPO_ROOT / "weights" / "autoencoder_f8c16"
    verify_manifest(folder)
    autoencoder = load_autoencoder(folder)
    assert latent_channels(autoencoder) == 16 and downsampling_factor(autoencoder) == 8
    assert (folder / "discriminator.safetensors").is_file() and "Research use only" in (folder / "README.md").read_text()
    table = load_manifest(REPO_ROOT / "dataset").table
    films = load_real(table[table["split"] == "test"].head(4).reset_index(drop=True), REPO_ROOT / "dataset")  # squared to 256 px
    back = roundtrip_images(autoencoder, films)
    scores = [psnr(f.astype(np.float64), b.astype(np.float64)) for f, b in zip(films, back)]
    assert min(scores) > 24.0, scores  # the card: 32.1 dB mean on the test split
