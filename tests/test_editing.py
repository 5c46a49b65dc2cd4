"""Text-guided editing of a real radiograph: pipeline, masks and zones, CLI, measurement script and page (tiny models)."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO
from xray_generator.io import read_gray, read_png_metadata
from xray_generator.pipelines.editing import EditInputError, edit_timesteps, mean_change_outside, region_mask

SAMPLE = REPO / "dataset"
PROMPT = "Chest radiograph: right lower lobe pneumonia."


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

    return XRayDiffusionPipeline.from_pretrained(tiny_pipeline_dir)


@pytest.fixture(scope="module")
def source_path():
    from xray_generator.data.manifest import load_manifest

    manifest = load_manifest(SAMPLE)
    row = manifest.query(label="Normal", split="test").table.iloc[0]
    return manifest.root / row.file


@pytest.fixture(scope="module")
def source(source_path):
    return read_gray(source_path)


@pytest.mark.precision
def test_strength_zero_returns_the_vae_round_trip(pipe, source):
    result = pipe.edit(source, PROMPT, strength=0.0, seed=0)
    with torch.no_grad():
        expected = pipe.decode_latents(pipe.encode_images(torch.from_numpy(result.source)[None, None]))[0, 0].numpy()
    assert result.metadata["denoising_steps"] == 0
    np.testing.assert_allclose(result.image, expected, atol=1e-6)
    assert result.image.shape == (256, 256) and result.image.dtype == np.float32


@pytest.mark.precision
def test_same_seed_same_edit_and_provenance(pipe, source):
    a = pipe.edit(source, PROMPT, strength=0.7, seed=3, num_inference_steps=4, source_id="src-1")
    b = pipe.edit(source, PROMPT, strength=0.7, seed=3, num_inference_steps=4, source_id="src-1")
    c = pipe.edit(source, PROMPT, strength=0.7, seed=4, num_inference_steps=4, source_id="src-1")
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    meta = a.metadata
    assert meta["synthetic"] is True and meta["source_image_id"] == "src-1" and meta["prompt"] == PROMPT
    assert (meta["strength"], meta["seed"], meta["steps"], meta["denoising_steps"]) == (0.7, 3, 4, 2)
    assert meta["weights_sha256"] == pipe.weights_hash and meta["sampler"] and meta["guidance"] > 0
    np.testing.assert_allclose(a.difference, np.abs(a.image - a.source))
    assert a.overlay.shape == (256, 256, 3) and a.overlay.dtype == np.uint8


@pytest.mark.parametrize("strength,steps,expected", [(0.5, 8, 4), (0.3, 10, 3), (1.0, 5, 5), (0.1, 8, 0)])
def test_timesteps_are_the_last_strength_fraction(pipe, strength, steps, expected):
    scheduler = pipe.make_scheduler("dpm++")
    kept = edit_timesteps(scheduler, steps, strength)
    assert len(kept) == expected
    if expected:
        assert torch.equal(kept, scheduler.timesteps[steps - expected:])


@pytest.mark.precision
def test_pixels_outside_the_mask_barely_change(pipe, source):
    array_mask = np.zeros(source.shape, dtype=bool)
    array_mask[source.shape[0] // 3: source.shape[0] // 2, source.shape[1] // 4: source.shape[1] // 2] = True
    for mask in ("right-lower", array_mask):
        result = pipe.edit(source, PROMPT, strength=1.0, seed=1, num_inference_steps=3, mask=mask)
        assert mean_change_outside(result.source, result.image, result.mask) <= 2.0
        assert result.difference[result.mask > 0.5].mean() * 255 > 2.0  # the edit did happen inside
        assert result.metadata["mask"].startswith("region right-lower" if isinstance(mask, str) else "mask (")


def test_zones_follow_the_radiological_convention():
    right, left = region_mask("right", 256), region_mask("left", 256)
    assert right[:, :128].sum() > 0 and right[:, 128:].sum() == 0  # patient's right = image left
    assert left[:, 128:].sum() > 0 and left[:, :128].sum() == 0
    upper, lower = region_mask("right-upper", 256), region_mask("right-lower", 256)
    assert np.array_equal(upper + lower, right) and upper.nonzero()[0].mean() < lower.nonzero()[0].mean()


@pytest.mark.parametrize("kwargs,message", [
    ({"mask": np.ones((10, 10), bool)}, "mask is 10 x 10"),
    ({"strength": 1.5}, "strength must be a number from 0"),
    ({"strength": -0.1}, "strength must be a number from 0"),
    ({"mask": "middle-lobe"}, "unknown region"),
    ({"mask": np.zeros((256, 256))}, "selects no pixels"),
    ({"image": np.full((32, 32), 0.5, np.float32)}, "at least 64"),
    ({"image": "not an image"}, "numeric array"),
])
def test_bad_inputs_are_refused_clearly(pipe, source, kwargs, message):
    arguments = {"image": source, "prompt": PROMPT, **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe.edit(**arguments)


def test_non_image_upload_is_refused():
    from xray_generator.io import ImageLoadError
    from xray_generator.pipelines.editing import mask_from_upload

    with pytest.raises(ImageLoadError, match="not an image"):
        mask_from_upload(b"plain text, no pixels", "mask.png")
    assert issubclass(EditInputError, ValueError)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def test_cli_writes_the_edit_and_its_difference_with_metadata(tiny_pipeline_dir, source_path, tmp_path, capsys):
    from xray_generator.__main__ import main

    out = tmp_path / "edited.png"
    mask = tmp_path / "mask.png"
    height, width = read_gray(source_path).shape
    marked = np.zeros((height, width), np.uint8)
    marked[height // 2:, : width // 2] = 255
    mask.write_bytes(_png(marked))
    code = main(["edit", "--image", str(source_path), "--prompt", PROMPT, "--strength", "0.5", "--mask", str(mask),
                 "--seed", "2", "--steps", "2", "--weights", str(tiny_pipeline_dir), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    meta = read_png_metadata(out)
    assert meta["synthetic"] is True and meta["strength"] == 0.5 and meta["seed"] == 2 and meta["prompt"] == PROMPT
    assert meta["source_image_id"] == source_path.name and meta["mask"].startswith("mask (")
    diff = read_png_metadata(tmp_path / "edited_diff.png")
    assert diff["difference_gain"] == 4.0 and "absolute difference" in diff["image"]


@pytest.mark.parametrize("extra,message", [
    (["--strength", "1.5"], "strength must be a number from 0"),
    (["--region", "middle-lobe"], "unknown region"),
    (["--mask", "{small_mask}"], "mask is 20 x 20"),
    (["--image", "{not_image}"], "not an image file"),
])
def test_cli_errors_are_one_line_and_exit_2(tiny_pipeline_dir, source_path, tmp_path, capsys, extra, message):
    from xray_generator.__main__ import main

    (tmp_path / "small.png").write_bytes(_png(np.full((20, 20), 255, np.uint8)))
    (tmp_path / "notes.png").write_bytes(b"these are notes, not pixels")
    extra = [e.format(small_mask=tmp_path / "small.png", not_image=tmp_path / "notes.png") for e in extra]
    args = ["edit", "--image", str(source_path), "--prompt", PROMPT, "--steps", "1", "--weights", str(tiny_pipeline_dir),
            "-o", str(tmp_path / "o.png"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "o.png").exists()


def test_measurement_runs_on_a_tiny_setup_and_writes_json_and_curve(pipe, tiny_classifier_dir, tmp_path):
    from xray_generator.data.manifest import load_manifest
    from xray_generator.evaluation.editing import load_measurement_classifier, measure
    from xray_generator.evaluation.report import read_metrics_json

    classifier = load_measurement_classifier(tiny_classifier_dir)
    document = measure(pipe, classifier, load_manifest(SAMPLE), n=3, strengths=[0.5], steps=2, n_boot=20, out_dir=tmp_path)
    assert read_metrics_json(tmp_path / "editing.json") == json.loads((tmp_path / "editing.json").read_text())
    summary = document["settings"]["summary"]
    assert {(e["mode"], e["strength"]) for e in summary} == {(m, s) for m in ("whole", "zone") for s in (0.0, 0.5)}
    assert all(e["n"] == 3 and 0 <= e["score_rise_fraction"] <= 1 for e in summary)
    assert all(e["outside_zone_change_grey_levels_mean"] <= 2.0 for e in summary if e["mode"] == "zone")
    assert all(m["ci"] is not None for m in document["metrics"])
    assert (tmp_path / "editing_curve.png").stat().st_size > 0


def test_measurement_without_classifier_says_so_and_exits_2(tmp_path, capsys):
    from xray_generator.evaluation.editing import main

    assert main(["--n", "2", "--classifier", str(tmp_path / "classifier"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no trained classifier" in err and not (tmp_path / "editing.json").exists()


def test_edit_page_edits_a_dataset_image(monkeypatch, tiny_weights_root, tmp_path):
    from streamlit.testing.v1 import AppTest

    for name, value in {"CXR_WEIGHTS_DIR": tiny_weights_root, "CXR_OUTPUTS_DIR": tmp_path, "CXR_DATA_DIR": SAMPLE,
                        "CXR_SAMPLE_DIR": SAMPLE, "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, str(value))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    at.switch_page("pages/edit.py").run()
    assert not at.exception and at.title[0].value == "Edit a radiograph"
    assert any("evaluation.editing" in str(i.value) for i in at.info)  # says how to produce the curve
    at.selectbox(key="edit_region").set_value("right-lower")
    at.button(key="edit_button").click().run()
    assert not at.exception and not at.error, [str(e.value) for e in at.error]
    captions = [c for image in at.image for c in image.captions]
    assert any(c.startswith("REAL · before") for c in captions) and any(c.startswith("SYNTHETIC · after") for c in captions)
    assert len(at.image) >= 4
    result = at.session_state["edit_result"][0]
    assert result.metadata["region"] == "right-lower" and result.metadata["synthetic"] is True
    assert "research use only" in " ".join(str(c.value) for c in at.caption).lower()


def test_edit_page_paint_mode_starts_from_a_zone(monkeypatch, tiny_weights_root, tmp_path):
    """Under AppTest the canvas (a browser component) draws nothing, so the starting zone is the mask.
    Painting itself is exercised in Chromium (tests/test_browser_e2e.py)."""
    from streamlit.testing.v1 import AppTest

    from xray_generator.pipelines.editing import region_mask

    for name, value in {"CXR_WEIGHTS_DIR": tiny_weights_root, "CXR_OUTPUTS_DIR": tmp_path, "CXR_DATA_DIR": SAMPLE,
                        "CXR_SAMPLE_DIR": SAMPLE, "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, str(value))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    at.switch_page("pages/edit.py").run()
    at.selectbox(key="edit_region").set_value("Paint on the film").run()
    assert any("Paint where the film may change" in str(i.value) for i in at.info)
    assert at.button(key="edit_button").disabled  # an empty start and nothing painted: nothing to edit
    at.selectbox(key="edit_paint_start").set_value("right-lower").run()
    assert not at.button(key="edit_button").disabled
    at.button(key="edit_button").click().run()
    assert not at.exception and not at.error, [str(e.value) for e in at.error]
    result = at.session_state["edit_result"][0]
    assert np.array_equal(result.mask, region_mask("right-lower", result.mask.shape[0]))
    assert result.metadata["mask"].startswith("mask (")
    downloads = at.session_state["edit_result"][3]
    assert {"png", "diff", "mask"} <= set(downloads)
