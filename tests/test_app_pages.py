"""The studio's pages, driven by streamlit.testing.v1.AppTest against the tiny untrained pipeline.

Every test points CXR_WEIGHTS_DIR at the tiny weights, CXR_OUTPUTS_DIR at a temporary folder and the
data at the shipped sample, so nothing here touches the real weights, outputs or the full dataset.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streamlit.testing.v1 import AppTest

from xray_generator.data.manifest import load_manifest
from xray_generator.io import read_png_metadata
from xray_generator.precision import precision_label

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "app.py")
PAGES = ("generate", "enhance", "dataset", "console", "metrics", "models", "about_data")
TIMEOUT = 120



@pytest.fixture
def studio_env(monkeypatch, tiny_weights_root, tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tiny_weights_root))
    monkeypatch.setenv("CXR_OUTPUTS_DIR", str(outputs))
    monkeypatch.setenv("CXR_DATA_DIR", str(REPO / "dataset"))
    monkeypatch.setenv("CXR_SAMPLE_DIR", str(REPO / "dataset"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return outputs


def open_app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    if page is not None:
        at.switch_page(f"pages/{page}.py").run()
    return at


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def assert_clean(at: AppTest) -> None:
    assert not at.exception, texts(at.exception)
    assert not at.error, texts(at.error)


def generate(at: AppTest, prompt: str = "right lower lobe pneumonia", seed: int | None = 5, **settings) -> AppTest:
    if seed is not None:
        at.radio(key="seed_mode").set_value("Fixed").run()  # the seed box is disabled until then
        at.number_input(key="seed").set_value(seed)
    # The prompt is in the Generate form: a value typed there is sent with the form's submit, so it is
    # set after the rerun above (AppTest, unlike a browser, drops unsubmitted form values on a rerun).
    at.text_area(key="prompt").set_value(prompt)
    for key, value in settings.items():
        widget = {"resolution": at.radio, "num_images": at.number_input, "preset": at.selectbox, "backend": at.selectbox}[key]
        widget(key=key).set_value(value)
    return at.button(key="generate").click().run()


def test_every_page_renders_without_error(studio_env):
    at = open_app()
    # AppTest.switch_page runs the page file alone, so the app's footer is checked on the first run.
    assert "Synthetic images for research use only. Not for clinical use." in " ".join(texts(at.caption))
    for page in PAGES:
        at.switch_page(f"pages/{page}.py").run()
        assert_clean(at)
        assert at.title, f"{page} shows no title"


def test_sidebar_shows_model_hash_device_and_disclaimer(studio_env, tiny_weights_root):
    from xray_generator.weights import weights_hash

    at = open_app()
    sidebar = " ".join(str(getattr(e, "value", "")) for e in at.sidebar)
    assert weights_hash(tiny_weights_root / "ldm") in sidebar
    assert " thread" in sidebar and "Device" in sidebar
    assert "Not for clinical use" in sidebar


def test_generate_returns_a_synthetic_image_with_provenance(studio_env, tiny_weights_root):
    from xray_generator.weights import weights_hash

    at = generate(open_app(), prompt="left basilar atelectasis", seed=11)
    assert_clean(at)
    captions = [c for image in at.image for c in image.captions]
    assert captions and all(c.startswith("SYNTHETIC") for c in captions)
    assert "steps/s" in " ".join(texts(at.success))
    result = at.session_state["generation"]
    assert result.images[0].image.shape == (256, 256)
    # The summary says how the image was computed (bf16, or fp32 and why).
    assert precision_label(result.images[0].metadata["precision"]) in " ".join(texts(at.success))
    png = at.session_state["generation_downloads"]["png"][0]
    metadata = read_png_metadata(png)
    assert metadata["prompt"] == "left basilar atelectasis"
    assert metadata["seed"] == 11
    assert metadata["weights_sha256"] == weights_hash(tiny_weights_root / "ldm")
    labels = [b.label for b in at.get("download_button")]
    assert any("PNG" in label for label in labels) and any("DICOM" in label for label in labels) and any("ZIP" in label for label in labels)


def test_backend_select_runs_that_backend_and_records_it(studio_env):
    at = open_app("generate")
    assert at.selectbox(key="backend").options == ["torch", "onnxruntime", "openvino"]
    at = generate(at, seed=4, backend="onnxruntime")
    assert_clean(at)
    assert read_png_metadata(at.session_state["generation_downloads"]["png"][0])["backend"] == "onnxruntime"
    assert "onnxruntime" in " ".join(texts(at.success))


def test_same_seed_gives_the_same_image(studio_env):
    at = generate(open_app(), seed=3)
    first = at.session_state["generation"].images[0].image.copy()
    at = generate(at, seed=3)
    assert np.array_equal(first, at.session_state["generation"].images[0].image)


def test_a_random_seed_can_be_kept_to_reproduce_the_image(studio_env):
    at = generate(open_app(), seed=None)
    used = at.session_state["generation"].images[0].metadata["seed"]
    image = at.session_state["generation"].images[0].image.copy()
    at.button(key="keep_seed").click().run()
    assert at.radio(key="seed_mode").value == "Fixed" and at.number_input(key="seed").value == used
    at.button(key="generate").click().run()
    assert np.array_equal(at.session_state["generation"].images[0].image, image)


def test_upscaled_resolution_is_labelled_as_upscaled(studio_env):
    at = generate(open_app(), seed=1, resolution=512, num_images=2)
    assert_clean(at)
    items = at.session_state["generation"].images
    assert [item.metadata["seed"] for item in items] == [1, 2]
    assert items[0].image.shape == (512, 512) and items[0].native.shape == (256, 256)
    assert items[0].metadata["upscaled"] is True
    assert all("upscaled from 256" in c for image in at.image for c in image.captions)


def test_empty_prompt_shows_an_error_not_a_traceback(studio_env):
    at = generate(open_app(), prompt="   ")
    assert not at.exception
    assert any("prompt is empty" in message for message in texts(at.error))


def test_no_weights_says_why_and_other_pages_still_work(studio_env, monkeypatch, tmp_path):
    empty = tmp_path / "no_weights"
    empty.mkdir()
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(empty))
    at = open_app()
    assert not at.exception
    assert any("No generator has weights yet" in w for w in texts(at.warning))
    for page in ("dataset", "metrics", "about_data"):
        at.switch_page(f"pages/{page}.py").run()
        assert_clean(at)


def test_dataset_filter_changes_the_grid(studio_env):
    at = open_app("dataset")
    assert_clean(at)
    before = int(at.metric[0].value.replace(",", ""))
    grid_captions = at.image[0].captions
    assert len(grid_captions) == 24
    at.multiselect(key="ds_labels").set_value(["COVID-19"]).run()
    assert_clean(at)
    after = int(at.metric[0].value.replace(",", ""))
    assert 0 < after < before
    assert all("COVID-19" in caption for caption in at.image[0].captions)
    at.pagination[0].set_value(2).run()
    assert_clean(at)
    assert "Page 2 of" in " ".join(texts(at.caption))


def test_dataset_missing_says_so(studio_env, monkeypatch, tmp_path):
    missing = tmp_path / "no_data"
    missing.mkdir()
    monkeypatch.setenv("CXR_DATA_DIR", str(missing))
    monkeypatch.setenv("CXR_SAMPLE_DIR", str(missing))
    at = open_app("dataset")
    assert not at.exception
    assert any("No dataset found" in w and "Generation still works" in w for w in texts(at.warning))
    at.switch_page("pages/console.py").run()
    assert not at.exception and at.warning


def test_missing_data_folder_is_reported_and_generation_still_works(studio_env, monkeypatch, tmp_path):
    nowhere = tmp_path / "not_mounted"  # the folder does not exist at all
    monkeypatch.setenv("CXR_DATA_DIR", str(nowhere))
    monkeypatch.setenv("CXR_SAMPLE_DIR", str(nowhere))
    at = open_app("dataset")
    assert not at.exception
    assert any("No dataset found" in w and str(nowhere) in w for w in texts(at.warning))
    at.switch_page("app.py").run()
    at = generate(at, prompt="normal chest", seed=2)
    assert_clean(at)
    assert at.session_state["generation"].images[0].image.shape == (256, 256)


@pytest.mark.parametrize("content", [None, "{not json"], ids=["empty-folder", "broken-file"])
def test_empty_or_broken_metrics_folder_says_how_to_produce_metrics(studio_env, content):
    folder = studio_env / "metrics"
    folder.mkdir()
    if content is not None:
        (folder / "ldm.json").write_text(content)
    at = open_app("metrics")
    assert not at.exception and not at.error
    assert any("not yet produced" in i for i in texts(at.info))
    assert any("python -m xray_generator evaluate --model ldm" in c for c in texts(at.code))
    if content is not None:
        assert any("ldm.json" in w for w in texts(at.warning))


def test_missing_metrics_say_how_to_produce_them(studio_env):
    at = open_app("metrics")
    assert_clean(at)
    assert any("not yet produced" in i for i in texts(at.info))
    assert any("python -m xray_generator evaluate --model ldm" in c for c in texts(at.code))


def test_metrics_file_is_shown_with_ci_and_floor(studio_env):
    from xray_generator.evaluation.report import build_metric, write_metrics_json

    metrics = [
        build_metric("fid", 41.5, {"real": 200, "generated": 200}, ci={"low": 39.0, "high": 44.0, "level": 0.95, "method": "bootstrap"},
                     floor={"value": 3.2, "n": {"a": 100, "b": 100}}),
        build_metric("prdc_precision", 0.61, {"real": 200, "generated": 200}),
    ]
    write_metrics_json(studio_env / "metrics" / "ldm.json", "ldm", {"n_generated": 200}, "0" * 64, metrics)
    (studio_env / "metrics" / "broken.json").write_text("{}")
    at = open_app("metrics")
    assert_clean(at)
    assert any("broken.json" in w for w in texts(at.warning))
    table = at.dataframe[0].value
    assert set(table["metric"]) == {"fid", "prdc_precision"}
    fid = table[table["metric"] == "fid"].iloc[0]
    assert fid["floor"] == pytest.approx(3.2) and "39" in fid["ci"]


def test_findings_file_is_shown_under_fidelity_with_n(studio_env):
    from xray_generator.evaluation.report import build_metric, write_metrics_json

    ci = {"low": 0.3, "high": 0.6, "level": 0.95, "method": "percentile bootstrap"}
    metrics = [
        build_metric("condition_fidelity_auroc_finding_edema", 0.45, {"generated_finding": 200, "generated_normal": 200}, ci=ci,
                     floor={"value": 0.88, "n": {"real_adult_positive": 22, "real_adult_normal": 87}, "method": "real held-out"}),
        build_metric("condition_fidelity_adult_centroid_share", 0.75, {"generated_adult_normal": 200}, ci=ci,
                     floor={"value": 1.0, "n": {"real_adult_normal": 98}, "method": "real held-out"}),
    ]
    write_metrics_json(studio_env / "metrics" / "findings_ldm.json", "ldm", {"n_per_prompt_set": 200}, "0" * 64, metrics)
    at = open_app("metrics")
    assert_clean(at)
    table = at.dataframe[0].value.set_index("metric")
    assert set(table["family"]) == {"Fidelity"}
    assert table.loc["condition_fidelity_auroc_finding_edema", "n"] == "generated_finding 200, generated_normal 200"
    assert table.loc["condition_fidelity_adult_centroid_share", "floor_n"] == "real_adult_normal 98"


def test_training_log_is_plotted(studio_env):
    (studio_env / "metrics").mkdir(exist_ok=True)
    (studio_env / "metrics" / "ldm_training_log.csv").write_text("step,loss,lr,val_loss\n10,0.9,1e-4,\n20,0.7,1e-4,0.8\n")
    at = open_app("metrics")
    assert_clean(at)
    assert "ldm" in at.selectbox(key="metrics_log").format_func(0)


def test_bad_upload_shows_an_error(studio_env):
    at = open_app("enhance")
    at.radio(key="enhance_source").set_value("Upload").run()
    at.file_uploader(key="enhance_upload").set_value(("broken.png", b"this is not an image", "image/png")).run()
    assert not at.exception
    assert any("Cannot use this upload" in e for e in texts(at.error))


def test_upload_compares_every_preset(studio_env):
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((96, 96)) * 65535).astype(np.uint16)).save(buffer, "PNG")
    at = open_app("enhance")
    at.radio(key="enhance_source").set_value("Upload").run()
    at.file_uploader(key="enhance_upload").set_value(("scan16.png", buffer.getvalue(), "image/png")).run()
    assert_clean(at)
    from post_process import BUILTIN_PRESETS

    shown = [c for image in at.image for c in image.captions]
    assert all(name in shown for name in BUILTIN_PRESETS)
    assert at.get("plotly_chart")


def test_custom_preset_is_saved_and_offered_for_generation(studio_env):
    at = open_app()
    at = generate(at, seed=2)
    at.switch_page("pages/enhance.py").run()
    assert_clean(at)
    assert all(c.startswith("SYNTHETIC") for image in at.image for c in image.captions)
    at.slider(key="c_clahe_clip").set_value(2.0)
    at.text_input(key="c_name").set_value("Lung window").run()  # Save is enabled once a step exists
    at.button(key="c_save").click().run()
    assert_clean(at)
    saved = json.loads((studio_env / "presets" / "Lung_window.json").read_text())
    assert saved["presets"]["Lung window"][0]["operation"] == "clahe"
    at.switch_page("pages/generate.py").run()
    assert "Lung window" in at.selectbox(key="preset").options
    at = generate(at, seed=2, preset="Lung window")
    assert_clean(at)
    assert at.session_state["generation"].images[0].metadata["enhancement_preset"] == "Lung window"


def test_console_compares_real_and_generated_and_runs_the_quiz(studio_env):
    at = open_app("console")
    assert_clean(at)
    at.number_input(key="console_n").set_value(2)
    at.button(key="console_run").click().run()
    assert_clean(at)
    captions = [c for image in at.image for c in image.captions]
    assert any(c.startswith("REAL") for c in captions) and any(c.startswith("SYNTHETIC") for c in captions)
    assert any("Classifier not trained yet" in i for i in texts(at.info))
    assert any("nearest training image" in c for c in captions)
    at.button(key="quiz_start").click().run()
    assert_clean(at)
    # The quiz order is random on purpose; answer correctly (a wrong answer is shown as an st.error).
    first = at.session_state["quiz"]["items"][0]
    at.button(key="quiz_fake_0" if first.synthetic else "quiz_real_0").click().run()
    assert_clean(at)
    assert "Score" in at.get("progress")[-1].proto.text
    # Cached samples: a second comparison reuses the saved images instead of generating.
    assert list((studio_env / "samples").rglob("seed*.png"))


def test_model_analysis_measures_the_loaded_networks(studio_env):
    at = open_app("models")
    assert_clean(at)
    components = at.dataframe[0].value
    assert {"unet", "vae", "text_projection", "text_encoder"} <= set(components["component"])
    layers = at.dataframe[1].value
    assert (layers["output_shape"] != "").any()
    assert layers.iloc[0]["total_params"] == components.set_index("component").loc["unet", "parameters"]


def test_dataset_distribution_and_licence_tabs(studio_env):
    at = open_app("dataset")
    at.session_state["ds_tab"] = "Distributions"
    at.run()
    assert_clean(at)
    assert len(at.get("plotly_chart")) == 3  # findings per source/split, co-occurrence, intensity histograms
    assert not at.image  # the thumbnail tab is closed, so its images were not loaded
    at.selectbox(key="ds_co_split").set_value("test").run()
    assert_clean(at)
    at.session_state["ds_tab"] = "Licences"
    at.run()
    assert_clean(at)
    licences = at.dataframe[0].value
    sample = load_manifest(REPO / "dataset")
    assert {"source", "license", "images"} <= set(licences.columns) and licences["images"].sum() == len(sample)
    assert {"nih_cxr14", "covid_mhh"} <= set(licences["source"])
    sources = at.dataframe[1].value.set_index("source")
    assert sources["images"].to_dict() == sample.table["source"].value_counts().to_dict()
    assert "doi:10.6084/m9.figshare.12275009" in sources.loc["covid_mhh", "credit"]


def test_dataset_filters_offer_the_nih_findings_and_sources(studio_env):
    at = open_app("dataset")
    assert {"Cardiomegaly", "Pleural effusion", "Atelectasis"} <= set(at.multiselect(key="ds_labels").options)
    assert {"nih_cxr14", "covid_mhh"} <= set(at.multiselect(key="ds_sources").options)
    at.multiselect(key="ds_labels").set_value(["Cardiomegaly"]).run()
    assert_clean(at)
    expected = len(load_manifest(REPO / "dataset").query(label="Cardiomegaly"))
    assert int(at.metric[0].value.replace(",", "")) == expected > 0
    assert all("Cardiomegaly" in caption for caption in at.image[0].captions)


def test_about_data_counts_every_source_and_finding_from_the_metadata(studio_env):
    at = open_app("about_data")
    assert_clean(at)
    sample = load_manifest(REPO / "dataset")
    tables = [frame.value for frame in at.dataframe]
    sources = next(t for t in tables if "credit" in t.columns).set_index("source")
    assert sources["images"].to_dict() == sample.table["source"].value_counts().to_dict()
    assert "Wang et al., CVPR 2017" in sources.loc["nih_cxr14", "credit"]
    findings = next(t for t in tables if "label" in t.columns).set_index("label")
    assert findings.loc["Cardiomegaly", "nih_cxr14"] == sample.label_counts()["Cardiomegaly"]
    assert findings.loc["COVID-19", "covid_mhh"] == len(sample.query(source="covid_mhh"))


def test_model_analysis_tabs_and_every_network(studio_env):
    at = open_app("models")
    for component in at.selectbox(key="models_component_ldm").options:
        at.selectbox(key="models_component_ldm").set_value(component).run()
        assert_clean(at)
    for tab in ("Configuration", "Scheduler", "Weights files", "Model card"):
        at.session_state["models_tab_ldm"] = tab
        at.run()
        assert_clean(at)
    at.session_state["models_tab_ldm"] = "Weights files"
    at.run()
    files = at.dataframe[1].value
    assert "unet/diffusion_pytorch_model.safetensors" in set(files["file"]) and files["sha256"].str.len().eq(64).all()


def test_a_failing_section_shows_its_error_and_the_rest_of_the_page_renders(studio_env, monkeypatch):
    from xray_generator import studio

    def broken(*_args, **_kwargs):
        raise RuntimeError("metrics store unreachable")

    monkeypatch.setattr(studio, "load_metrics_files", broken)
    at = open_app("metrics")
    assert not at.exception
    assert any("metrics store unreachable" in e for e in texts(at.error))
    assert "Training loss curves" in texts(at.subheader)


def test_a_failing_page_shows_an_error_and_the_app_still_renders(studio_env, monkeypatch):
    from xray_generator import studio

    def broken(*_args, **_kwargs):
        raise RuntimeError("prompt library unreadable")

    working = studio.example_prompts
    monkeypatch.setattr(studio, "example_prompts", broken)
    at = open_app()
    assert not at.exception
    assert any("prompt library unreadable" in e and "other pages still work" in e for e in texts(at.error))
    assert "Not for clinical use" in " ".join(texts(at.caption))
    monkeypatch.setattr(studio, "example_prompts", working)
    at.switch_page("pages/dataset.py").run()
    assert_clean(at)


def test_history_restores_settings_and_seed_and_regenerating_reproduces_the_image(studio_env):
    at = generate(open_app(), prompt="right upper lobe mass", seed=5)
    first = at.session_state["generation"].images[0].image.copy()
    at = generate(at, prompt="left lower lobe pneumonia", seed=6, num_images=2)
    history = at.session_state["generation_history"]
    assert [entry.number for entry in history] == [2, 1] and len(history[0].fingerprints) == 2
    assert at.button(key="history_restore_1") and at.button(key="history_restore_2")
    assert all(c.startswith("SYNTHETIC") for image in at.image for c in image.captions)  # thumbnails too

    at.button(key="history_restore_1").click().run()
    assert_clean(at)
    assert at.text_area(key="prompt").value == "right upper lobe mass"
    assert at.radio(key="seed_mode").value == "Fixed" and at.number_input(key="seed").value == 5
    assert at.number_input(key="num_images").value == 1
    at.button(key="generate").click().run()
    assert np.array_equal(at.session_state["generation"].images[0].image, first)
    assert any("Byte-identical to history #1" in message for message in texts(at.info))
    assert [entry.number for entry in at.session_state["generation_history"]] == [3, 2, 1]


def test_one_to_one_view_and_finding_chips(studio_env):
    at = generate(open_app(), prompt="PA chest radiograph: clear lungs.", seed=2)
    at.segmented_control(key="image_view").set_value("pixels").run()
    assert_clean(at)
    assert "counts not recorded for these weights" in " ".join(texts(at.caption))
    chip = next(option for option in at.pills(key="finding_chip").options if option.startswith("Pneumonia"))
    at.pills(key="finding_chip").set_value(chip).run()
    assert_clean(at)
    assert at.text_area(key="prompt").value == "PA chest radiograph: clear lungs. Pneumonia."
    assert at.pills(key="finding_chip").value is None  # a chip adds once, it is not a toggle


def test_enhance_slider_compares_any_two_presets(studio_env):
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((96, 96)) * 255).astype(np.uint8)).save(buffer, "PNG")
    at = open_app("enhance")
    at.radio(key="enhance_source").set_value("Upload").run()
    at.file_uploader(key="enhance_upload").set_value(("film.png", buffer.getvalue(), "image/png")).run()
    at.selectbox(key="enhance_slider_left").set_value("High Contrast")
    at.selectbox(key="enhance_slider_right").set_value("High Contrast").run()  # the same preset on both sides is allowed
    assert_clean(at)
    table = at.dataframe[0].value
    assert list(table.index) == ["left: High Contrast", "right: High Contrast"]
    assert table.iloc[0].equals(table.iloc[1])


def test_dataset_explorer_shows_registered_generated_films_marked_synthetic(studio_env, monkeypatch, tmp_path, tiny_pipeline_dir):
    from tests.test_data_index import write_generated_manifest
    from xray_generator.data.index import register_generated
    from xray_generator.io import save_png_with_metadata

    folder = write_generated_manifest(tmp_path / "synth", n=2)
    for i in range(2):
        save_png_with_metadata(np.full((64, 64), 0.3 + 0.2 * i, np.float32), folder / f"xray_{i:06d}.png", {"synthetic": True})
    url = f"sqlite:///{tmp_path / 'lab_index.sqlite'}"
    register_generated(url, folder)
    monkeypatch.setenv("CXR_INDEX_URL", url)
    at = open_app("dataset")
    assert_clean(at)
    real = int(at.metric[0].value.replace(",", ""))
    at.checkbox(key="ds_generated").check().run()
    assert_clean(at)
    assert int(at.metric[0].value.replace(",", "")) == real + 2
    at.multiselect(key="ds_splits").set_value(["synthetic"]).run()
    assert_clean(at)
    assert at.image[0].captions == ["SYNTHETIC · ldm"] * 2
    assert any("SYNTHETIC" in str(image.captions) for image in at.image[1:])  # the case detail says it too
