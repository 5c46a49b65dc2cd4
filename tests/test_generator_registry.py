"""The model registry: one name -> loader map, clear errors for unknown names and missing weights."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from xray_generator.pipelines import registry
from xray_generator.pipelines.registry import (
    GENERATOR_FAMILIES,
    UnknownGeneratorError,
    available_generators,
    check_condition,
    check_count,
    check_seed,
    check_source,
    generator_folder,
    load_generator,
    refuse_source,
)
from xray_generator.weights import WeightsError

ALTERNATIVE_FAMILIES = ("cvae", "dcgan", "dcgan_conditional", "lsgan", "vae", "gmvae", "gmvae_supervised")


def test_every_family_is_registered_with_an_importable_loader():
    assert set(ALTERNATIVE_FAMILIES) | {"ldm"} == set(GENERATOR_FAMILIES)
    for name, path in GENERATOR_FAMILIES.items():
        module_name, function_name = path.split(":")
        assert callable(getattr(importlib.import_module(module_name), function_name)), name


def test_listing_families_does_not_import_their_models():
    # The loaders are strings until a family is loaded: the registry stays cheap to import.
    assert all(isinstance(path, str) for path in GENERATOR_FAMILIES.values())


@pytest.mark.parametrize("name", ["nope", "CVAE", "", None, 3])
def test_unknown_family_is_a_value_error_naming_the_known_ones(name, tmp_path):
    with pytest.raises(ValueError) as info:
        load_generator(name, tmp_path)
    message = str(info.value)
    assert "unknown model family" in message and all(family in message for family in ALTERNATIVE_FAMILIES)
    # Older callers catch KeyError.
    assert isinstance(info.value, KeyError) and isinstance(info.value, UnknownGeneratorError)


@pytest.mark.parametrize("name", ALTERNATIVE_FAMILIES)
def test_missing_weights_folder_is_a_clear_weights_error(name, tmp_path):
    with pytest.raises(WeightsError, match=f"no weights for model family '{name}'.*does not exist"):
        load_generator(name, tmp_path)


def test_weights_folder_defaults_to_weights_dir_and_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tmp_path))
    assert generator_folder("cvae") == tmp_path / "cvae"
    assert generator_folder("ldm", tmp_path / "other") == tmp_path / "other" / "ldm"
    assert available_generators() == []
    (tmp_path / "cvae").mkdir()
    assert available_generators() == []  # a folder without a manifest is not a model
    (tmp_path / "cvae" / "MANIFEST.json").write_text('{"files": {}}')
    assert available_generators() == ["cvae"]


def test_a_folder_without_a_manifest_is_refused(tmp_path):
    (tmp_path / "cvae").mkdir()
    with pytest.raises(WeightsError, match="MANIFEST.json"):
        load_generator("cvae", tmp_path)


@pytest.mark.parametrize("n", [0, -1, 1.0, True, "2", registry.MAX_IMAGES_PER_CALL + 1])
def test_check_count_refuses_bad_counts(n):
    with pytest.raises(ValueError, match="n must"):
        check_count(n)


def test_check_count_and_seed_accept_numpy_integers():
    assert check_count(np.int64(4)) == 4 and check_seed(np.uint32(5)) == 5 and check_seed(0) == 0


@pytest.mark.parametrize("seed", [-1, 2**63, 0.5, None, False])
def test_check_seed_refuses_bad_seeds(seed):
    with pytest.raises(ValueError, match="seed must"):
        check_seed(seed)


def test_check_condition():
    assert check_condition(None, ("Normal", "Pneumonia"), "Pneumonia") == "Pneumonia"
    assert check_condition("Normal", ("Normal", "Pneumonia")) == "Normal"
    with pytest.raises(ValueError, match="choose one of: Normal, Pneumonia"):
        check_condition("Covid", ("Normal", "Pneumonia"))
    with pytest.raises(ValueError, match="unconditional"):
        check_condition("Normal", ())
    assert check_condition(None, ()) is None


def test_check_source_and_refuse_source():
    image = np.random.default_rng(0).random((48, 40), dtype=np.float32)
    assert check_source(image) is image or np.array_equal(check_source(image), image)
    assert check_source(image.astype(np.float64)).dtype == np.float32
    with pytest.raises(ValueError, match="required"):
        check_source(None)
    with pytest.raises(ValueError, match="takes no source"):
        refuse_source(image, "dcgan")
    refuse_source(None, "dcgan")
