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
