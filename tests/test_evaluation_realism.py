"""The realism test (C2ST): its features, its classifiers, its floor, and that it judges the raw generator output."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image
from tests.conftest import REPO
from xray_generator.evaluation import realism
from xray_generator.evaluation.report import read_metrics_json

SAMPLE = REPO / "dataset"


def textured_films(n: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Smooth 'anatomy' plus fine-grained texture: stand-ins for films, in [0, 1]."""
    rng = np.random.default_rng(seed)
    films = []
    for _ in range(n):
        coarse = cv2.resize(rng.random((8, 8)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        texture = rng.normal(0, 0.08, (size, size)).astype(np.float32)
        films.append(np.clip(0.2 + 0.6 * coarse + texture, 0, 1))
    return films


def blurred(films: list[np.ndarray], sigma: float) -> list[np.ndarray]:
    return [np.round(np.clip(cv2.GaussianBlur(f, (0, 0), sigma), 0, 1) * 255) / 255 for f in films]


def test_power_spectrum_finds_a_sinusoid_at_its_frequency_and_white_noise_is_flat():
    size = 64
    x = np.arange(size)
    wave = 0.5 + 0.4 * np.sin(2 * np.pi * 8 * x / size)[None, :].repeat(size, 0)
    frequency, log_power = realism.radial_power_spectrum([wave.astype(np.float32)])
    assert frequency[np.argmax(log_power[0])] == pytest.approx(8 / size)
    noise = np.clip(np.random.default_rng(0).normal(0.5, 0.1, (200, size, size)), 0, 1).astype(np.float32)
    _, noise_power = realism.radial_power_spectrum(list(noise))
    mean = noise_power.mean(axis=0)[2:-2]  # the Hann window colours the lowest rings
    assert mean.max() - mean.min() < 0.15


def test_blur_is_found_and_two_halves_of_one_distribution_are_not():
    films = textured_films(80)
    features = realism.realism_features(films)
    assert features.shape == (80, realism.realism_features(films[:1]).shape[1])
    same = realism.classifier_two_sample_test(features[:40], features[40:], seed=0)
    assert same["value"] < 0.7  # chance is 0.5; 80 images leave some noise
    soft = realism.realism_features(blurred(films[40:], 1.0))
    found = realism.classifier_two_sample_test(features[:40], soft, seed=0)
    assert found["value"] > 0.95
    assert found["ci_low"] <= found["value"] <= found["ci_high"]
    assert set(found["per_classifier"]) == {"logistic", "boosted"}
    assert found["n_per_set"] == 40


def test_spectrum_gaps_are_zero_for_the_same_set_and_negative_for_a_blurred_one():
    films = textured_films(20)
    frequency, power = realism.radial_power_spectrum(films)
    assert realism.spectrum_band_gaps(power, power, frequency)["value"] == 0.0
    _, soft_power = realism.radial_power_spectrum(blurred(films, 1.0))
    gaps = realism.spectrum_band_gaps(power, soft_power, frequency)
    assert gaps["worst_gap"] < -0.5 and gaps["worst_band"] == gaps["bands_cycles_per_pixel"][-1]


def test_folds_keep_each_patient_on_one_side():
    labels = np.array([0] * 20 + [1] * 20)
    groups = np.array([f"p{i // 2}" for i in range(40)], dtype=object)  # two films per patient
    for train, test in realism._folds(labels, groups, 5, seed=0):
        assert not set(groups[train]) & set(groups[test])


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="equal widths"):
        realism.classifier_two_sample_test(np.zeros((20, 3)), np.zeros((20, 4)))
    with pytest.raises(ValueError, match="at least 10 images per set"):
        realism.classifier_two_sample_test(np.zeros((4, 3)), np.zeros((9, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        realism.realism_features([np.full((8, 8), 2.0, np.float32)])
    with pytest.raises(ValueError, match="square"):
        realism.realism_features([np.zeros((8, 6), np.float32)])


def test_cnn_detector_tells_texture_from_blur_on_held_out_folds():
    films = textured_films(48, size=32, seed=1)
    result = realism.cnn_detector_accuracy(films[:24], blurred(films[24:], 1.5), folds=3, epochs=30, seed=0, crop=32)
    assert result["value"] >= 0.8 and result["n_per_set"] == 24 and result["crop"] == 32


def test_patient_halves_split_patients_not_films():
    patients = ["a", "a", "b", "c", "c", "c", "d"]
    in_a = realism.patient_halves(patients, seed=0)
    for patient in set(patients):
        assert len({in_a[i] for i, p in enumerate(patients) if p == patient}) == 1
    assert 0 < in_a.sum() < len(patients)


@pytest.fixture(scope="module")
def tiny_pipe(tiny_pipeline_dir):
    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

    return XRayDiffusionPipeline.from_pretrained(tiny_pipeline_dir)


@pytest.mark.precision
def test_realism_judges_the_raw_generator_output_and_writes_a_metrics_file(tiny_pipe, tmp_path, monkeypatch):
    import post_process

    monkeypatch.setenv("CXR_OUTPUTS_DIR", str(tmp_path / "outputs"))
    # Nothing may be applied after decoding: any enhancement call fails the run.
    for name in dir(post_process):
        if callable(getattr(post_process, name)) and not name.startswith("_") and getattr(getattr(post_process, name), "__module__", "") == "post_process":
            monkeypatch.setattr(post_process, name, lambda *a, _name=name, **k: pytest.fail(f"post_process.{_name} was called"))
    judged = {}
    original = realism.realism_metrics

    def keep_sets(sets, **kwargs):
        judged["sets"] = sets
        return original(sets, **kwargs)

    monkeypatch.setattr(realism, "realism_metrics", keep_sets)
    document = realism.run_realism("ldm", n=20, seed=0, cnn=False, out_dir=tmp_path / "metrics", data_dir=SAMPLE, generator=tiny_pipe, steps=2)
    path = tmp_path / "metrics" / "realism_ldm.json"
    assert read_metrics_json(path) == json.loads(path.read_text())
    metrics = {m["name"]: m for m in document["metrics"]}
    c2st = metrics["realism_c2st_accuracy"]
    assert 0.0 <= c2st["value"] <= 1.0 and c2st["floor"] is not None and c2st["ci"] is not None
    assert document["settings"]["post_processing"].startswith("none")
    assert len(document["settings"]["power_spectrum"]["frequency_cycles_per_pixel"]) == 128

    # The judged images are exactly what the pipeline returns for the evaluation plan's prompts and seeds.
    from xray_generator.data.manifest import load_manifest
    from xray_generator.evaluation.samples import evaluation_prompts, held_out_real

    plan = evaluation_prompts(held_out_real(load_manifest(SAMPLE)), 20, 0)
    from xray_generator.io import to_uint8

    judged_first = np.round(judged["sets"].other[0] * 255).astype(np.int16)
    seed = int(plan["seed"].iloc[0])
    cached = list((tmp_path / "outputs").rglob(f"{seed:06d}.png"))
    assert len(cached) == 1 and np.array_equal(judged_first, np.asarray(Image.open(cached[0]), dtype=np.int16))
    # A fresh one-image call: equal up to the rounding of the evaluation's batched matrix products,
    # which in bf16 (8 mantissa bits) moves a few pixels by several grey levels, as in test_pipeline's
    # batch test: there at most 16 * 2**-8 of the range and 2**-8 on average.
    first = to_uint8(np.asarray(tiny_pipe(plan["prompt"].iloc[0], seed=seed, num_inference_steps=2).images[0])).astype(np.int16)
    difference = np.abs(judged_first - first)
    if tiny_pipe.precision == "fp32":
        assert difference.max() <= 1
    else:
        assert difference.max() <= 16 and difference.mean() <= 1


def test_roundtrip_is_judged_against_the_other_patients(tiny_pipe, tmp_path):
    document = realism.run_realism("ldm", roundtrip=True, seed=0, cnn=False, out_dir=tmp_path, data_dir=SAMPLE, generator=tiny_pipe)
    assert (tmp_path / "realism_ldm_roundtrip.json").is_file()
    c2st = {m["name"]: m for m in document["metrics"]}["realism_c2st_accuracy"]
    assert c2st["extra"]["against"] == "real half A"
    documents = realism.load_realism_documents(tmp_path)
    path = realism.plot_power_spectra(documents, tmp_path / "spectrum.png")
    assert path.stat().st_size > 0


def test_a_candidate_autoencoder_is_judged_like_the_pipelines_own_and_reports_its_psnr(tiny_pipe, tiny_pipeline_dir, tmp_path):
    own = realism.run_realism("ldm", roundtrip=True, seed=0, cnn=False, out_dir=tmp_path / "own", data_dir=SAMPLE, generator=tiny_pipe)
    candidate = realism.run_realism("ldm", seed=0, cnn=False, out_dir=tmp_path / "candidate", data_dir=SAMPLE,
                                    autoencoder=tiny_pipeline_dir / "vae")
    assert (tmp_path / "candidate" / "realism_vae_roundtrip.json").is_file()
    own_metrics, candidate_metrics = ({m["name"]: m for m in d["metrics"]} for d in (own, candidate))
    # The same autoencoder as a bare folder: the pipeline's latent scaling cancels up to float rounding,
    # which may move a rare pixel by one grey level.
    for name, tolerance in (("realism_c2st_accuracy", 0.02), ("roundtrip_psnr_db", 0.01), ("roundtrip_ssim", 1e-3)):
        assert candidate_metrics[name]["value"] == pytest.approx(own_metrics[name]["value"], abs=tolerance)
    psnr = candidate_metrics["roundtrip_psnr_db"]
    assert 5 < psnr["value"] < 60 and psnr["ci"]["low"] <= psnr["value"] <= psnr["ci"]["high"]
    assert psnr["n"] <= psnr["extra"]["all_held_out_n"] == candidate["settings"]["n_other"]
    assert 0 < candidate_metrics["roundtrip_ssim"]["value"] <= 1
    assert candidate["settings"]["autoencoder"] == str(tiny_pipeline_dir / "vae")


def test_the_comparison_table_and_the_dashboard_read_the_realism_files(tiny_pipe, tmp_path):
    from xray_generator import studio
    from xray_generator.evaluation.comparison import realism_markdown

    realism.run_realism("ldm", roundtrip=True, seed=0, cnn=False, out_dir=tmp_path, data_dir=SAMPLE, generator=tiny_pipe)
    documents = realism.load_realism_documents(tmp_path)
    c2st = documents[0]["metrics"][0]
    table = realism_markdown(documents)
    assert "| ldm round trip | " in table and f"{c2st['value']:.3f} [" in table
    assert "not measured yet" in realism_markdown([])
    spectra = studio.power_spectra(documents)
    assert set(spectra["set"]) == {"real held-out films (256 px)", f"ldm round trip (n={documents[0]['settings']['n_other']})"}
    assert len(spectra) == 2 * 128 and studio.metric_family("realism_c2st_accuracy") == "Realism"
    # Each feature kind judged alone, beside the whole test, read back as the dashboard's cue chart.
    groups = c2st["extra"]["per_feature_group"]
    assert set(groups) == set(realism.FEATURE_GROUPS)
    assert all(0.0 <= g["ci_low"] <= g["value"] <= g["ci_high"] <= 1.0 and 0.0 <= g["floor"] <= 1.0 for g in groups.values())
    cues = studio.realism_cues(documents)
    assert set(cues["cue"]) == {*realism.FEATURE_GROUPS, "all features (the test)"}
    assert cues.loc[cues["cue"] == "all features (the test)", "accuracy"].item() == c2st["value"]
    assert cues.loc[cues["cue"] == "gradient statistics", "accuracy"].item() == groups["gradient statistics"]["value"]


def test_a_set_told_apart_by_one_feature_kind_alone_is_told_apart_by_that_kind(monkeypatch):
    """Films with their intensities shifted differ only in the histogram: the intensity statistics alone find
    them, the spectrum bands alone (blind to a constant offset) do not."""
    rng = np.random.default_rng(0)
    films = [np.clip(rng.normal(0.5, 0.08, (32, 32)), 0, 1).astype(np.float32) for _ in range(120)]
    real, shifted = films[:60], [np.clip(f + 0.15, 0, 1).astype(np.float32) for f in films[60:]]
    sets = realism.RealismSets(real + films[60:], np.array([f"p{i}" for i in range(120)]), np.arange(120) < 60, shifted, None, "all", "shifted")
    metrics, _ = realism.realism_metrics(sets, seed=0, cnn=False)
    groups = {m["name"]: m for m in metrics}["realism_c2st_accuracy"]["extra"]["per_feature_group"]
    assert groups["intensity statistics"]["value"] > 0.95
    assert groups["spectrum bands"]["value"] < 0.75


def test_roundtrip_is_refused_for_a_family_without_an_autoencoder():
    with pytest.raises(ValueError, match="--roundtrip"):
        realism.judged_sets("dcgan", True, 20, 0, SAMPLE, generator=object())


def test_the_model_card_gets_a_realism_section_with_the_spectrum_and_the_grid(tiny_pipeline_dir, tmp_path):
    import shutil

    from PIL import Image as PILImage

    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline
    from xray_generator.training import model_card
    from xray_generator.weights import verify_manifest

    weights = tmp_path / "ldm"
    shutil.copytree(tiny_pipeline_dir, weights)
    (weights / "README.md").write_text("# card\n")
    from xray_generator.weights import write_manifest

    write_manifest(weights)
    pipe = XRayDiffusionPipeline.from_pretrained(weights)
    realism.run_realism("ldm", roundtrip=True, seed=0, cnn=False, out_dir=tmp_path / "metrics", data_dir=SAMPLE, generator=pipe)
    model_card.write_realism_section(weights, tmp_path / "metrics", data_dir=SAMPLE)
    model_card.write_realism_section(weights, tmp_path / "metrics", data_dir=SAMPLE)  # replaces, never duplicates
    card = (weights / "README.md").read_text()
    assert card.startswith("# card") and card.count(model_card.REALISM_START) == 1
    assert "round trip |" in card and (weights / "card" / "power_spectrum.png").is_file()
    grid = PILImage.open(weights / "card" / "realism_grid.png")
    assert grid.width == 3 * 256 and grid.height % 512 == 0
    verify_manifest(weights)  # the card and its assets are covered by the rewritten manifest
