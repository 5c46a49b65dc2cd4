"""The alternative model families in the studio (issues 5 and 6), driven by AppTest on tiny untrained weights.

The weights root holds the tiny ldm plus tiny dcgan_conditional and cvae folders (tests/conftest.py
`tiny_families_root`); every other family is missing, as before it is trained.
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streamlit.testing.v1 import AppTest

from tests.conftest import flip_one_byte
from xray_generator.io import read_png_metadata
from xray_generator.weights import weights_hash

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "app.py")
TIMEOUT = 120


@pytest.fixture
def families_env(monkeypatch, tiny_families_root, tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tiny_families_root))
    monkeypatch.setenv("CXR_OUTPUTS_DIR", str(outputs))
    monkeypatch.setenv("CXR_DATA_DIR", str(REPO / "dataset"))
    monkeypatch.setenv("CXR_SAMPLE_DIR", str(REPO / "dataset"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return outputs


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def assert_clean(at: AppTest) -> None:
    assert not at.exception, texts(at.exception)
    assert not at.error, texts(at.error)


def captions(at: AppTest) -> list[str]:
    return [c for image in at.image for c in image.captions]


def open_family(family: str, page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    if page is not None:
        at.switch_page(f"pages/{page}.py").run()
    at.selectbox(key="model_family").set_value(family).run()
    return at


def test_every_family_is_offered_on_the_generate_page(families_env):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert_clean(at)
    from xray_generator.pipelines.registry import GENERATOR_FAMILIES

    selector = at.selectbox(key="model_family")
    assert selector.options and len(selector.options) == len(GENERATOR_FAMILIES)
    assert selector.value == "ldm"  # latent diffusion stays the default, with its prompt UI
    assert at.text_area(key="prompt") is not None
    # Trained families by title alone; the others say why they cannot be used.
    assert {"Conditional DCGAN", "CVAE (healthy → pneumonia translation)", "LSGAN — not trained yet"} <= set(selector.options)


def test_noise_family_generates_synthetic_images_with_provenance(families_env, tiny_families_root):
    at = open_family("dcgan_conditional")
    assert_clean(at)
    assert at.selectbox(key="family_condition_dcgan_conditional").options == ["Normal", "Pneumonia", "COVID-19"]
    at.selectbox(key="family_condition_dcgan_conditional").set_value("Pneumonia")
    at.number_input(key="family_seed").set_value(4)
    at.number_input(key="family_num_images").set_value(2)
    at.button(key="family_generate").click().run()
    assert_clean(at)
    shown = captions(at)
    folder_hash = weights_hash(tiny_families_root / "dcgan_conditional")
    assert len(shown) == 2 and all(c.startswith("SYNTHETIC · dcgan_conditional") and folder_hash in c and "Pneumonia" in c for c in shown)
    stored = at.session_state["family_generation"]
    assert [item.metadata["seed"] for item in stored["result"].images] == [4, 5]
    metadata = read_png_metadata(stored["downloads"]["png"][1])
    assert metadata["family"] == "dcgan_conditional" and metadata["condition"] == "Pneumonia" and metadata["seed"] == 5
    assert metadata["synthetic"] is True and len(metadata["weights_sha256"]) == 64
    labels = [b.label for b in at.get("download_button")]
    assert labels.count("PNG (with metadata)") == 2 and labels.count("DICOM (marked synthetic)") == 2
    assert any("ZIP" in label for label in labels)
    # Switching to latent diffusion shows its own UI and none of these images.
    at.selectbox(key="model_family").set_value("ldm").run()
    assert_clean(at)
    assert not at.image and at.text_area(key="prompt").value


def test_cvae_translates_a_dataset_normal_film_beside_a_difference_map(families_env):
    at = open_family("cvae")
    assert_clean(at)
    assert at.radio(key="cvae_source").value == "Dataset image (Normal)"
    assert any("licence" in c for c in texts(at.caption))  # the source and licence of the chosen film
    assert at.selectbox(key="cvae_condition").value == "Pneumonia"
    at.button(key="cvae_translate").click().run()
    assert_clean(at)
    shown = captions(at)
    assert len(at.image) == 3, shown
    assert shown[0].startswith("REAL · input") and shown[1].startswith("SYNTHETIC") and "cvae" in shown[1]
    assert shown[2].startswith("SYNTHETIC · difference map")
    assert any("reduced" in i and "32 x 32" in i for i in texts(at.info))  # the resize notice
    result = at.session_state["cvae_result"]["result"]
    assert result.metadata["condition"] == "Pneumonia"
    # The default film is a held-out Normal film of the source the CVAE was trained on (Kermany).
    assert "pneumonia_kermany" in " ".join(texts(at.caption)) and "test split" in " ".join(texts(at.caption))
    assert result.metadata["source"] == f"dataset image {result.metadata['source_image_id']}"
    assert np.allclose(result.difference, np.abs(result.image - result.source))


def test_cvae_translates_an_upload_and_refuses_a_bad_one(families_env):
    at = open_family("cvae")
    at.radio(key="cvae_source").set_value("Upload").run()
    at.file_uploader(key="cvae_upload").set_value(("broken.png", b"not an image", "image/png")).run()
    assert not at.exception
    assert any("Cannot use this upload" in e for e in texts(at.error))
    buffer = io.BytesIO()
    yy, xx = np.mgrid[0:120, 0:100]
    Image.fromarray(((np.sin(xx / 9) * np.cos(yy / 11) * 0.4 + 0.5) * 65535).astype(np.uint16)).save(buffer, "PNG")
    at.file_uploader(key="cvae_upload").set_value(("film16.png", buffer.getvalue(), "image/png")).run()
    at.button(key="cvae_translate").click().run()
    assert_clean(at)
    assert len(at.image) == 3
    assert at.session_state["cvae_result"]["result"].metadata["source_image_id"] == "film16.png"
    assert any("100 x 120" in i for i in texts(at.info))


def test_missing_family_says_not_trained_yet_and_shows_no_image(families_env):
    at = open_family("lsgan")
    assert not at.exception
    notice = " ".join(texts(at.info))
    assert "not trained yet — train with `python -m xray_generator.training.train_gan train --config configs/lsgan.json" in notice
    assert any("train_gan export --run outputs/runs/lsgan --out" in c for c in texts(at.code))
    assert not at.image and not at.get("download_button")


def test_tampered_family_shows_a_banner_and_ldm_still_generates(families_env, tiny_families_root, tmp_path, monkeypatch):
    root = shutil.copytree(tiny_families_root, tmp_path / "weights")
    weights = root / "dcgan_conditional" / "model.safetensors"
    flip_one_byte(weights, -5)
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(root))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    banners = texts(at.error)
    assert len(banners) == 1 and "Conditional DCGAN" in banners[0] and "sha256" in banners[0] and "keep working" in banners[0]
    at.text_area(key="prompt").set_value("left lower lobe pneumonia")
    at.button(key="generate").click().run()
    assert not at.exception
    assert at.session_state["generation"].images[0].image.shape == (256, 256)
    assert all(c.startswith("SYNTHETIC") for c in captions(at))
    at.selectbox(key="model_family").set_value("cvae").run()  # an intact family still works too
    at.button(key="cvae_translate").click().run()
    assert not at.exception and len(at.image) == 3
    at.selectbox(key="model_family").set_value("dcgan_conditional").run()
    assert not at.exception and not at.image
    assert any("cannot be used" in e for e in texts(at.error))


def test_model_analysis_lists_every_family_and_measures_the_new_networks(families_env):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/models.py").run()
    assert_clean(at)
    overview = at.table[0].value
    assert len(overview) == 8 and set(overview.loc[overview["name"] == "lsgan", "status"]) == {"not trained yet"}
    assert any("train_vae_family train --config configs/gmvae.json" in c for c in texts(at.code))
    assert at.selectbox(key="models_model").options == ["Latent diffusion (text to X-ray)", "CVAE (healthy → pneumonia translation)",
                                                        "Conditional DCGAN"]
    for family, component in (("dcgan_conditional", "generator"), ("cvae", "cvae")):
        at.selectbox(key="models_model").set_value(family).run()
        assert_clean(at)
        components = at.dataframe[0].value
        assert list(components["component"]) == [component]
        layers = at.dataframe[1].value
        assert layers.iloc[0]["total_params"] == components.iloc[0]["parameters"]
        assert layers.iloc[0]["output_shape"] == "1×1×32×32"
        for tab in ("Configuration", "Weights files", "Model card", "Sample grid"):
            at.session_state[f"models_tab_{family}"] = tab
            at.run()
            assert_clean(at)
        at.session_state[f"models_tab_{family}"] = "Weights files"
        at.run()
        files = at.dataframe[1].value
        assert "model.safetensors" in set(files["file"]) and files["sha256"].str.len().eq(64).all()


def test_family_metrics_join_the_comparison_and_missing_ones_are_named(families_env):
    from xray_generator.evaluation.report import build_metric, write_metrics_json

    folder = families_env / "metrics"
    for model, fid in (("ldm", 59.2), ("dcgan_conditional", 140.0)):
        write_metrics_json(folder / f"{model}.json", model, {"n_generated": 100}, "a" * 64,
                           [build_metric("fid", fid, {"real": 100, "generated": 100}, floor={"value": 1.2, "n": {"a": 50, "b": 50}}),
                            build_metric("prdc_precision", 0.5, {"real": 100, "generated": 100})])
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/metrics.py").run()
    assert_clean(at)
    expanders = [e.label for e in at.expander]
    assert any(label.startswith("ldm ·") for label in expanders) and any(label.startswith("dcgan_conditional ·") for label in expanders)
    chart_models = {trace["name"] for chart in at.get("plotly_chart") for trace in __import__("json").loads(chart.proto.spec)["data"]}
    assert {"ldm", "dcgan_conditional"} <= chart_models
    notes = " ".join(texts(at.caption))
    assert "cvae: metrics not yet produced" in notes and "python -m xray_generator evaluate --model cvae" in notes
    assert "Not trained yet, so no metrics: dcgan, lsgan, vae, gmvae, gmvae_supervised" in notes
