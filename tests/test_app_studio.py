"""xray_generator.studio: the plain functions behind the studio's pages, tested without Streamlit."""
from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from xray_generator import studio
from xray_generator.io import read_png_metadata

REPO = Path(__file__).resolve().parent.parent



@pytest.fixture(scope="module")
def pipe(tiny_weights_root):
    return studio.load_pipeline("ldm", tiny_weights_root)


@pytest.fixture
def outputs(monkeypatch, tmp_path):
    monkeypatch.setenv("CXR_OUTPUTS_DIR", str(tmp_path / "outputs"))
    return tmp_path / "outputs"


def test_studio_never_imports_streamlit():
    code = "import sys, xray_generator.studio, xray_generator.dicom; sys.exit('streamlit' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_each_image_of_a_batch_has_its_own_reproducible_seed(pipe):
    steps = []
    result = studio.generate_images(pipe, studio.GenerationRequest("pneumonia", seed=7, num_images=2, steps=2),
                                    on_step=lambda done, total: steps.append((done, total)))
    assert [item.metadata["seed"] for item in result.images] == [7, 8]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert result.total_steps == 4 and result.steps_per_second > 0
    again = studio.generate_images(pipe, studio.GenerationRequest("pneumonia", seed=8, steps=2))
    assert np.array_equal(again.images[0].native, result.images[1].native)
    metadata = result.images[0].metadata
    assert metadata["synthetic"] is True and metadata["weights_sha256"] == pipe.weights_hash
    assert metadata["resolution"] == 256 and metadata["upscaled"] is False


def test_same_seed_gives_the_same_image_while_another_generation_runs(pipe):
    request = studio.GenerationRequest("cardiomegaly", seed=123, steps=3)
    with studio.generation_lock():
        alone = studio.generate_images(pipe, request).images[0].native
    other = threading.Thread(target=lambda: [studio.generate_images(pipe, studio.GenerationRequest("effusion", seed=s, steps=3))
                                             for s in range(3)])
    other.start()
    waited = []
    with studio.generation_lock(on_wait=lambda: waited.append(True)):
        busy = studio.generate_images(pipe, request).images[0].native
    other.join()
    assert np.array_equal(alone, busy)


def test_lock_reports_waiting_when_held():
    calls = []

    def try_to_generate():
        try:
            with studio.generation_lock(on_wait=lambda: calls.append("waiting"), timeout=0.05):
                calls.append("ran")
        except TimeoutError:
            calls.append("timed out")

    with studio.generation_lock():
        waiter = threading.Thread(target=try_to_generate)
        waiter.start()
        waiter.join()
    assert calls == ["waiting", "timed out"]


def test_cancel_stops_generation(pipe):
    from xray_generator.pipelines.latent_diffusion import GenerationCancelled

    with pytest.raises(GenerationCancelled):
        studio.generate_images(pipe, studio.GenerationRequest("pneumonia", seed=1, steps=3), should_cancel=lambda: True)


def test_upscaled_and_enhanced_output_is_labelled(pipe):
    result = studio.generate_images(pipe, studio.GenerationRequest("pneumonia", seed=1, steps=2, resolution=768, preset="High Contrast"))
    item = result.images[0]
    assert item.image.shape == (768, 768) and item.native.shape == (256, 256)
    assert item.metadata["upscaled"] is True and "no detail added" in item.metadata["upscale_method"]
    assert item.metadata["enhancement_steps"][0]["operation"] == "window"
    assert item.caption.startswith("SYNTHETIC") and "upscaled from 256" in item.caption


def test_the_guided_share_reaches_the_pipeline_and_its_metadata(pipe):
    result = studio.generate_images(pipe, studio.GenerationRequest("pneumonia", seed=1, steps=4, guidance_fraction=0.5))
    assert result.images[0].metadata["guidance_fraction"] == 0.5
    default = studio.generate_images(pipe, studio.GenerationRequest("pneumonia", seed=1, steps=4))
    assert default.images[0].metadata["guidance_fraction"] == pipe.generation_defaults["guidance_fraction"]


@pytest.mark.parametrize("change, message", [({"prompt": " "}, "prompt is empty"), ({"resolution": 300}, "resolution"),
                                             ({"num_images": 0}, "number of images"), ({"guidance_fraction": 0.0}, "guided share"),
                                             ({"guidance_fraction": float("nan")}, "guided share")])
def test_bad_requests_raise_value_errors_with_a_message(pipe, change, message):
    with pytest.raises(ValueError, match=message):
        studio.generate_images(pipe, studio.GenerationRequest(**{"prompt": "pneumonia", **change}))


def test_batch_zip_holds_pngs_and_a_manifest(pipe):
    result = studio.generate_images(pipe, studio.GenerationRequest("viral pneumonia", seed=3, num_images=2, steps=2))
    archive = zipfile.ZipFile(io.BytesIO(studio.batch_zip_bytes(result.images)))
    pngs = [name for name in archive.namelist() if name.endswith(".png")]
    assert len(pngs) == 2 and {"manifest.csv", "manifest.json"} <= set(archive.namelist())
    rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    assert [row["seed"] for row in rows] == ["3", "4"]
    assert all(row["prompt"] == "viral pneumonia" and row["weights_sha256"] == pipe.weights_hash for row in rows)
    assert {"sampler", "steps", "guidance"} <= set(rows[0])
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["images"][0]["file"] == pngs[0]
    assert read_png_metadata(archive.read(pngs[1]))["seed"] == 4


def test_generator_statuses_say_why_a_family_is_unavailable(tmp_path, tiny_weights_root, monkeypatch):
    # Isolated from the real outputs/: a training run in outputs/runs/ldm changes the reason given.
    monkeypatch.setenv("CXR_OUTPUTS_DIR", str(tmp_path / "outputs"))
    assert studio.generator_statuses(tiny_weights_root)[0].available
    missing = studio.generator_statuses(tmp_path)[0]
    assert not missing.available and "no weights" in missing.reason
    (tmp_path / "ldm").mkdir()
    assert "MANIFEST.json" in studio.generator_statuses(tmp_path)[0].reason
    (tmp_path / "ldm").rmdir()
    (tmp_path / "outputs" / "runs" / "ldm").mkdir(parents=True)
    assert "being trained" in studio.generator_statuses(tmp_path)[0].reason


def test_custom_preset_holds_only_changed_operations_and_round_trips(outputs):
    from post_process import validate_preset

    neutral = {"window_center": 0.5, "window_width": 1.0, "median_kernel": 1, "clahe_clip": 0.0, "gamma": 1.0}
    assert studio.custom_preset_steps(neutral) == []
    steps = studio.custom_preset_steps({**neutral, "clahe_clip": 2.0, "clahe_tiles": 6, "unsharp_amount": 1.0, "vignette": 0.2})
    assert [name for name, _ in validate_preset(steps)] == ["clahe", "unsharp_mask", "vignette"]
    path = studio.save_custom_preset("Lung detail", steps)
    assert path.parent == outputs / "presets"
    (outputs / "presets" / "broken.json").write_text("{not json")
    presets, problems = studio.saved_presets()
    assert list(presets) == ["Lung detail"] and len(problems) == 1 and "broken.json" in problems[0]
    assert json.loads(studio.preset_json_bytes("Lung detail", steps))["presets"]["Lung detail"][0]["operation"] == "clahe"


def test_metrics_files_and_training_logs_are_found(outputs, monkeypatch, tmp_path):
    from xray_generator.evaluation.report import build_metric, write_metrics_json

    assert studio.load_metrics_files() == ([], [])
    write_metrics_json(outputs / "metrics" / "ldm.json", "ldm", {}, "f" * 64,
                       [build_metric("fid", 30.0, 100, floor={"value": 2.0, "n": 50}), build_metric("memorisation_rate", 0.0, 100)])
    documents, problems = studio.load_metrics_files()
    table = studio.metrics_table(documents)
    assert list(table["metric"]) == ["fid", "memorisation_rate"] and table.loc[0, "floor"] == 2.0
    assert table.loc[1, "ci"] == "not computed"
    assert [studio.metric_family(m) for m in ("fid", "kid", "prdc_recall", "memorisation_rate", "ms_ssim_diversity")] == \
        ["FID", "KID", "PRDC", "Memorisation", "Diversity"]
    weights = tmp_path / "weights"
    (weights / "cvae").mkdir(parents=True)
    (weights / "cvae" / "training_log.csv").write_text("step,loss\n1,2.0\n")
    (outputs / "metrics" / "ldm_training_log.csv").write_text("step,loss,lr\n1,1.0,0.1\n2,0.5,0.1\n")
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(weights))
    logs = studio.find_training_logs()
    assert {(log.model, len(log.table)) for log in logs} == {("ldm", 2), ("cvae", 1)}
    assert studio.loss_columns(logs[0].table) == ["loss"]


def test_layer_table_is_measured_from_the_modules(pipe):
    runs = studio.dummy_runs(pipe)
    assert set(runs) == {"unet", "vae", "text_projection", "text_encoder"}
    unet = studio.layer_table(pipe.unet, runs["unet"])
    assert unet.iloc[0]["total_params"] == studio.count_parameters(pipe.unet)
    assert unet.iloc[0]["output_shape"].startswith("1×4×")
    assert unet["own_params"].sum() == studio.count_parameters(pipe.unet)
    assert set(studio.components_table(pipe)["component"]) == set(runs)


def test_nearest_training_image_finds_an_exact_copy(outputs, monkeypatch):
    from xray_generator.data.manifest import load_manifest

    manifest = load_manifest(REPO / "dataset")
    ids, vectors = studio.training_reference(manifest)
    assert len(ids) == len(manifest.query(split="train")) and list((outputs / "cache" / "studio").glob("*.npz"))
    copy = studio.read_resized(manifest.path_of(ids[5]))
    [(nearest, correlation)] = studio.nearest_training([copy], ids, vectors)
    assert nearest == ids[5] and correlation > 0.99
    assert studio.training_reference(manifest)[0] == ids  # from the disk cache


def test_quiz_is_balanced_and_gives_nothing_away_by_size(pipe):
    generated = studio.generate_images(pipe, studio.GenerationRequest("pneumonia", seed=1, num_images=3, steps=1)).images
    real = [(f"r{i}", np.full((224, 224), 0.5, np.float32)) for i in range(6)]
    quiz = studio.build_quiz(real, generated, rounds=6, seed=0)
    assert sum(item.synthetic for item in quiz) == 3 and len(quiz) == 6
    assert {item.image.shape for item in quiz} == {(256, 256)}
    assert studio.build_quiz([], generated) == []


def test_missing_dataset_gives_a_message_not_an_exception(tmp_path):
    manifest, message = studio.load_dataset(tmp_path)
    assert manifest is None and "No dataset found" in message and "Generation still works" in message


def test_classifier_is_reported_as_not_trained(tmp_path):
    trained, message = studio.classifier_status(tmp_path)
    assert not trained and message.startswith("Classifier not trained yet")


def test_classifier_scores_and_grad_cam_overlay(tiny_classifier_dir):
    classifier = studio.load_finding_classifier(tiny_classifier_dir.parent)
    assert studio.classifier_status(tiny_classifier_dir.parent)[0]
    rng = np.random.default_rng(0)
    images = [rng.random((256, 256), dtype=np.float32), rng.random((224, 224), dtype=np.float32)]
    table = studio.classifier_score_table(classifier, images, ["real", "synthetic"], ["a", "seed 1"])
    assert list(table.columns) == ["kind", "image", *classifier.labels] and len(table) == 2
    assert ((table[list(classifier.labels)] >= 0) & (table[list(classifier.labels)] <= 1)).all().all()
    overlay = studio.grad_cam_overlay(classifier, images[0], classifier.labels[0])
    assert overlay.shape == (256, 256, 3) and overlay.dtype == np.uint8


SHIPPED = REPO / "weights" / "ldm" / "MANIFEST.json"


@pytest.mark.needs(SHIPPED, "The shipped weights belong in weights/ldm (they are committed to the repo)")
def test_shipped_weights_generate_a_radiograph():
    shipped = studio.load_pipeline("ldm", REPO / "weights")
    result = studio.generate_images(shipped, studio.GenerationRequest("PA chest radiograph, no acute abnormality", seed=0, steps=4))
    image = result.images[0].native
    assert image.shape == (256, 256) and np.isfinite(image).all() and image.std() > 0.02
    assert result.images[0].metadata["weights_sha256"] == shipped.weights_hash


# ------------------------------------------------------------------ alternative model families


@pytest.fixture(scope="module")
def family_generators(tiny_families_root):
    from xray_generator.pipelines.registry import load_generator

    return {name: load_generator(name, tiny_families_root) for name in ("dcgan_conditional", "cvae")}


def test_every_registry_family_is_listed_with_its_kind_and_train_commands(tiny_families_root, tmp_path, monkeypatch):
    from xray_generator.pipelines.registry import GENERATOR_FAMILIES

    monkeypatch.setenv("CXR_OUTPUTS_DIR", str(tmp_path / "outputs"))
    assert set(studio.FAMILY_INFO) == set(GENERATOR_FAMILIES)
    statuses = studio.generator_statuses(tiny_families_root)
    assert [s.name for s in statuses] == list(GENERATOR_FAMILIES)
    assert {s.name for s in statuses if s.available} == {"ldm", "dcgan_conditional", "cvae"}
    kinds = {s.name: s.kind for s in statuses}
    assert kinds["ldm"] == "text" and kinds["cvae"] == "translation" and kinds["gmvae"] == kinds["lsgan"] == "noise"
    lsgan = next(s for s in statuses if s.name == "lsgan")
    assert "not trained yet" in lsgan.reason and studio.status_label(lsgan) == "not trained yet"
    assert lsgan.train_commands[0].startswith("python -m xray_generator.training.train_gan train --config configs/lsgan.json")
    assert lsgan.train_commands[1].endswith(f"--out {tiny_families_root / 'lsgan'}")
    assert "configs/vae_baseline.json" in next(s for s in statuses if s.name == "vae").train_commands[0]
    assert all(s.title and s.description for s in statuses)


def test_damaged_weights_make_only_that_family_unavailable(tiny_families_root, tmp_path):
    root = shutil.copytree(tiny_families_root, tmp_path / "weights")
    before = studio.weights_fingerprint(root / "cvae")
    (root / "cvae" / "model.safetensors").write_bytes(b"\0" * 10)
    assert studio.weights_fingerprint(root / "cvae") != before
    statuses = {s.name: s for s in studio.mark_damaged(studio.generator_statuses(root))}
    assert statuses["cvae"].damaged and not statuses["cvae"].available and statuses["cvae"].trained
    assert "sha256" in statuses["cvae"].reason and studio.status_label(statuses["cvae"]) == "weights failed the sha256 check"
    assert statuses["ldm"].available and statuses["dcgan_conditional"].available
    assert studio.check_weights(root / "ldm") is None


def test_family_images_are_reproducible_and_carry_provenance(family_generators):
    from pydicom import dcmread

    from xray_generator.dicom import dicom_bytes

    generator = family_generators["dcgan_conditional"]
    result = studio.generate_family_images(generator, studio.FamilyRequest("COVID-19", seed=5, num_images=2, preset="High Contrast"), "abcd")
    assert [item.metadata["seed"] for item in result.images] == [5, 6]
    np.testing.assert_array_equal(result.images[1].native, generator.generate(1, condition="COVID-19", seed=6)[0])
    item = result.images[0]
    assert item.metadata["weights_sha256"] == generator.weights_sha256 and item.metadata["synthetic"] is True
    assert item.metadata["enhancement_steps"][0]["operation"] == "window" and not np.array_equal(item.image, item.native)
    assert item.caption == "SYNTHETIC · dcgan_conditional · weights abcd · COVID-19 · seed 5 · 32 px native · High Contrast"
    # The same downloads as latent diffusion: PNG with metadata, batch ZIP with a manifest, DICOM marked synthetic.
    downloads = studio.generation_downloads(result)
    assert read_png_metadata(downloads["png"][1])["condition"] == "COVID-19"
    archive = zipfile.ZipFile(io.BytesIO(downloads["zip"]))
    rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    assert [(row["family"], row["condition"], row["seed"]) for row in rows] == [("dcgan_conditional", "COVID-19", "5"), ("dcgan_conditional", "COVID-19", "6")]
    dataset = dcmread(io.BytesIO(dicom_bytes(item.image, item.metadata)))
    assert "SYNTHETIC" in dataset.SeriesDescription and "random noise" in dataset.DerivationDescription
    # The default condition is the family's first class, and recorded as such.
    assert studio.generate_family_images(generator, studio.FamilyRequest(seed=1)).images[0].metadata["condition"] == "Normal"


@pytest.mark.parametrize("change, message", [({"condition": "Tuberculosis"}, "choose one of: Normal, Pneumonia, COVID-19"),
                                             ({"num_images": 0}, "number of images"), ({"seed": -1}, "seed")])
def test_bad_family_requests_raise_value_errors(family_generators, change, message):
    with pytest.raises(ValueError, match=message):
        studio.generate_family_images(family_generators["dcgan_conditional"], studio.FamilyRequest(**change))


def test_translation_shows_the_model_input_output_and_difference(family_generators):
    generator = family_generators["cvae"]
    rng = np.random.default_rng(0)
    film = rng.random((90, 70), dtype=np.float32)
    request = studio.TranslationRequest("Pneumonia", seed=3, source_id="img-1", source_description="dataset image img-1")
    result, seconds = studio.translate_radiograph(generator, film, request, "abcd")
    assert result.source.shape == result.image.shape == (32, 32) and seconds >= 0
    assert any("70 x 90" in n and "32 x 32" in n for n in result.notices)
    np.testing.assert_array_equal(result.image, generator.generate(1, condition="Pneumonia", seed=3, source=film)[0])
    assert np.allclose(result.difference, np.abs(result.image - result.source))
    assert result.metadata["source_image_id"] == "img-1" and result.metadata["kind"] == "translation"
    assert studio.family_caption(result.metadata).startswith("SYNTHETIC · cvae · weights abcd · Pneumonia · seed 3")
    downloads = studio.edit_downloads(result)
    assert read_png_metadata(downloads["png"])["condition"] == "Pneumonia" and read_png_metadata(downloads["diff"])["difference_gain"]
    with pytest.raises(ValueError, match="at least 32"):
        studio.translate_radiograph(generator, np.zeros((10, 10), np.float32), request)
    with pytest.raises(ValueError, match="choose one of"):
        studio.translate_radiograph(generator, film, studio.TranslationRequest("COVID-19"))


@pytest.mark.parametrize("family", ["dcgan", "dcgan_conditional", "lsgan", "vae", "gmvae", "gmvae_supervised", "cvae"])
def test_layer_table_is_measured_for_every_family(family, tmp_path):
    from tests.conftest import write_tiny_family
    from xray_generator.pipelines.registry import load_generator

    generator = load_generator(family, write_tiny_family(tmp_path / family, family).parent)
    runs = studio.dummy_runs(generator)
    [(component, run)] = runs.items()
    module = studio.pipeline_modules(generator)[component]
    table = studio.layer_table(module, run)
    assert table.iloc[0]["total_params"] == studio.count_parameters(module) == table["own_params"].sum()
    assert table.iloc[0]["output_shape"] == "1×1×32×32"
    assert list(studio.components_table(generator)["component"]) == [component]


def test_translation_sources_offer_held_out_films_of_the_training_source_first():
    from xray_generator.data.manifest import load_manifest

    manifest = load_manifest(REPO / "dataset")
    table = studio.radiograph_choices(manifest, "Normal", prefer_sources=["pneumonia_kermany"])
    assert len(table) == len(manifest.query(label="Normal")) and {"source", "license", "split"} <= set(table.columns)
    first = table.iloc[0]
    assert first["source"] == "pneumonia_kermany" and first["split"] == "test"
    kermany = table[table["source"] == "pneumonia_kermany"]
    assert list(kermany.index) == list(range(len(kermany)))  # every Kermany film before any other source
    assert studio.radiograph_choices(manifest, "Normal").iloc[0]["split"] == "test"  # held-out first even without a preference


def test_fidelity_metrics_are_not_grouped_with_fid():
    # "fid" is a prefix of "fidelity": the dashboard must not put condition fidelity on the FID axes.
    assert studio.metric_family("condition_fidelity_auroc_pneumonia_vs_normal") == "Fidelity"
    assert studio.metric_family("fid_inception") == "FID" and studio.metric_family("diversity_intra_prompt_ms_ssim") == "Diversity"


def test_source_summary_and_findings_per_source_are_counted_from_the_metadata():
    from xray_generator.data.manifest import load_manifest

    sample = load_manifest(REPO / "dataset")
    summary = studio.source_summary(sample).set_index("source")
    assert summary["images"].sum() == len(sample)
    assert (summary[["train", "val", "test"]].sum(axis=1) == summary["images"]).all()
    assert summary.loc["nih_cxr14", "patients"] == sample.query(source="nih_cxr14").table["patient_id"].nunique()
    assert "CVPR 2017" in summary.loc["nih_cxr14", "credit"]
    findings = studio.label_source_table(sample).set_index("label")
    assert findings["all"].to_dict() == sample.label_counts().to_dict()
    assert findings.loc["Pleural effusion", "covid_ieee8023"] == 0 and findings.loc["Pleural effusion", "nih_cxr14"] > 0


def test_thumbnail_caption_names_the_most_specific_finding():
    assert studio.finding_caption("Pneumonia; Viral pneumonia; COVID-19") == "COVID-19"
    assert studio.finding_caption("Cardiomegaly; Edema; Pleural effusion; Pneumonia") == "Cardiomegaly +3"
    assert studio.finding_caption("Pneumonia") == "Pneumonia"
    assert studio.finding_caption(None) == "no label"
