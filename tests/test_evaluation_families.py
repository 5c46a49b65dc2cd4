"""`evaluate --model <family>` for the alternative families, and the comparison table built from the metrics files."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.conftest import REPO, write_tiny_family
from xray_generator.evaluation import comparison
from xray_generator.evaluation.report import build_metric, read_metrics_json, write_metrics_json
from xray_generator.evaluation.run import EvaluationSettings, evaluate
from xray_generator.pipelines.registry import GENERATOR_FAMILIES, load_generator

SAMPLE = REPO / "dataset"
# The metric names every family's file shares with ldm.json.
SHARED_METRICS = ("fid", "kid", "prdc_precision", "prdc_recall", "prdc_density", "prdc_coverage",
                  "diversity_intra_prompt_ms_ssim", "memorisation_rate")
SIZES = {"dcgan": 10, "dcgan_conditional": 24, "cvae": 10}  # 24 requests give the conditional GAN enough Normal ones to rank


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def evaluated(tiny_families_root, tiny_classifier_dir, tmp_path_factory, monkeypatch_module):
    """Each tiny family evaluated once on the sample dataset (2 bootstrap resamples: FID bootstraps dominate the time)."""
    root = tmp_path_factory.mktemp("weights_with_dcgan")
    for family in SIZES:
        source = tiny_families_root / family
        if source.is_dir():
            shutil.copytree(source, root / family)
        else:
            write_tiny_family(root / family, family)
    monkeypatch_module.setenv("CXR_WEIGHTS_DIR", str(root))
    monkeypatch_module.setenv("CXR_OUTPUTS_DIR", str(tmp_path_factory.mktemp("outputs")))
    out = tmp_path_factory.mktemp("metrics")
    documents = {}
    for family, n in SIZES.items():
        settings = EvaluationSettings(n=n, n_boot=2, kid_subsets=2, diversity_prompts=2)
        documents[family] = evaluate(family, settings, classifier_folder=tiny_classifier_dir, out_dir=out, data_dir=SAMPLE)
    return documents, out, root, tiny_classifier_dir


@pytest.mark.parametrize("family", sorted(SIZES))
def test_every_family_writes_a_valid_file_with_the_ldm_metric_names(evaluated, family):
    documents, out, root, _ = evaluated
    document = documents[family]
    assert read_metrics_json(out / f"{family}.json") == json.loads((out / f"{family}.json").read_text())
    metrics = {m["name"]: m for m in document["metrics"]}
    assert set(SHARED_METRICS) <= set(metrics)
    assert metrics["fid"]["floor"] is not None and metrics["fid"]["n"]["generated"] == metrics["fid"]["n"]["real"]
    # 2 prompt slots x 4 samples = 12 pairs, as ldm's 8 slots give 48.
    assert metrics["diversity_intra_prompt_ms_ssim"]["n"] == {"prompts": 2, "pairs": 12}
    generator = load_generator(family, root)
    settings = document["settings"]
    assert document["weights_sha256"] == generator.weights_sha256
    assert settings["parameters"] == generator.parameters and settings["image_size"] == generator.image_size
    assert settings["seconds_per_image"] > 0 and settings["time_per_image"]["repeats"] == 5
    assert settings["n_generated"] == SIZES[family] == metrics["memorisation_rate"]["n"]["generated"]
    # Its floor: the held-out real films scored by the same nearest-training-film test.
    memorisation_floor = metrics["memorisation_rate"]["floor"]
    assert memorisation_floor["n"]["training"] == metrics["memorisation_rate"]["n"]["training"] and memorisation_floor["n"]["real"] > 0
    assert 0.0 <= memorisation_floor["value"] <= 1.0 and "patient-disjoint" in memorisation_floor["method"]
    for image in settings["images"].values():
        assert (out / image).stat().st_size > 0


def test_an_unconditional_family_has_no_condition_fidelity(evaluated):
    document = evaluated[0]["dcgan"]
    assert document["settings"]["conditions"] == [] and document["settings"]["family_kind"] == "noise-to-image"
    assert not [m for m in document["metrics"] if m["name"].startswith("condition_fidelity")]
    assert document["metrics"][-1]["name"] == "memorisation_rate"


def test_a_conditional_family_is_asked_for_classes_and_scored_against_the_real_auroc(evaluated):
    metrics = {m["name"]: m for m in evaluated[0]["dcgan_conditional"]["metrics"]}
    fidelity = metrics["condition_fidelity_auroc_pneumonia_vs_normal"]
    assert fidelity["n"]["generated_positive"] >= 2 and fidelity["n"]["generated_negative"] >= 2
    assert fidelity["floor"]["n"]["real_test_positive"] > 0 and "class names" in fidelity["extra"]["requested"]
    assert metrics["diversity_intra_prompt_ms_ssim"]["extra"]["prompts"] == ["condition: Normal", "condition: Normal"]


def test_the_cvae_translates_held_out_normal_films_and_reports_paired_metrics(evaluated):
    document = evaluated[0]["cvae"]
    settings, metrics = document["settings"], {m["name"]: m for m in document["metrics"]}
    # The sample holds 8 test and 8 val Kermany Normal films: the test split comes first.
    assert settings["n_sources"] == {"test": 8, "val": 2} and settings["family_kind"] == "image-to-image"
    for name in ("paired_reconstruction_ssim", "paired_reconstruction_psnr_db", "translation_ssim_to_source",
                 "translation_share_score_rising", "translation_share_rising_with_ssim_at_least_0.6"):
        assert metrics[name]["n"] == {"images": 10} and metrics[name]["ci"] is not None, name
    assert 0 <= metrics["translation_share_score_rising"]["value"] <= 1
    # Translations (asked for Pneumonia) against reconstructions (asked for Normal) of the same films.
    fidelity = metrics["condition_fidelity_auroc_pneumonia_vs_normal"]
    assert fidelity["n"] == {"generated_positive": 10, "generated_negative": 10}
    # Held against the held-out Kermany pneumonia films only, at the CVAE's size.
    assert settings["n_real_reference"] < settings["n_real_held_out"] and settings["image_size"] == 32
    assert (evaluated[1] / settings["images"]["translation_examples"]).is_file()
    # The source films themselves go through the memorisation test, so an inherited likeness shows.
    sources = metrics["memorisation_rate"]["extra"]["sources"]
    assert sources["n"] == 10 and 0 <= sources["rate"] <= 1 and sources["ci_low"] <= sources["rate"] <= sources["ci_high"]
    assert sources["translations_flagged_whose_source_is_flagged"] <= sources["translations_flagged"] == metrics["memorisation_rate"]["extra"]["n_flagged"]


def test_a_rerun_reads_every_image_from_the_cache(evaluated):
    documents, out, root, classifier = evaluated

    class Forbidden:
        def __init__(self, generator):
            self.generator = generator

        def __getattr__(self, name):
            return getattr(self.generator, name)

        def generate(self, *args, **kwargs):
            raise AssertionError("a rerun generated an image that was cached")

    settings = EvaluationSettings(n=SIZES["cvae"], n_boot=2, kid_subsets=2, diversity_prompts=2)
    again = evaluate("cvae", settings, classifier_folder=classifier, out_dir=out, data_dir=SAMPLE, pipe=Forbidden(load_generator("cvae", root)))
    assert [m["value"] for m in again["metrics"]] == [m["value"] for m in documents["cvae"]["metrics"]]
    assert again["settings"]["time_per_image"] == documents["cvae"]["settings"]["time_per_image"]


def test_bad_family_arguments_are_refused_before_anything_loads(tmp_path):
    with pytest.raises(ValueError, match="unknown model family 'nope'"):
        evaluate("nope", EvaluationSettings(n=10), out_dir=tmp_path)
    with pytest.raises(ValueError, match="no sampler"):
        evaluate("dcgan", EvaluationSettings(n=10, steps=4), out_dir=tmp_path)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------- the comparison table
def constructed_document(tmp_path, family: str, fid: float, conditions: list[str], n: int = 1000, seconds: float | None = 0.25) -> None:
    """A minimal metrics file for `family` with known numbers."""
    half = {"generated": 500, "real": 500}
    floor = {"value": 2.0, "n": {"a": 500, "b": 500}, "method": "real vs real"}
    metrics = [
        build_metric("fid", fid, half, floor=floor),
        build_metric("prdc_precision", 0.812, half, floor={**floor, "value": 0.97}),
        build_metric("prdc_recall", 0.456, half, floor={**floor, "value": 0.95}),
        build_metric("diversity_intra_prompt_ms_ssim", 0.333, {"prompts": 8, "pairs": 48}, floor={**floor, "value": 0.4, "n": {"real_pairs": 600}}),
        build_metric("memorisation_rate", 0.002, {"generated": n, "training": 5000}, extra={"max_pixel_correlation": 0.96}),
    ]
    if conditions:
        metrics.append(build_metric("condition_fidelity_auroc_pneumonia_vs_normal", 0.9123, {"generated_positive": 600, "generated_negative": 300},
                                    floor={"value": 0.988, "n": {"real_test_positive": 400, "real_test_negative": 150}, "method": "real test"}))
    settings = {"n_generated": n, "conditions": conditions, "parameters": 12_345_678}
    if seconds is not None:
        settings["seconds_per_image"] = seconds
    write_metrics_json(tmp_path / f"{family}.json", family, settings, "a" * 64, metrics)


def test_the_table_is_built_from_the_files_and_lists_missing_families(tmp_path):
    constructed_document(tmp_path, "ldm", fid=59.2, conditions=["Normal", "Pneumonia"], seconds=None)
    constructed_document(tmp_path, "dcgan", fid=120.0, conditions=[])
    (tmp_path / "vae.json").write_text("{not json")
    table = comparison.comparison_markdown(comparison.load_family_metrics(tmp_path))
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| `")}
    assert list(rows) == [f"`{family}`" for family in GENERATOR_FAMILIES]  # every family, in registry order
    assert "59.2 (2, 29.6×)" in rows["`ldm`"] and "0.9123 (0.988)" in rows["`ldm`"] and "not recorded" in rows["`ldm`"]
    assert "0.812 / 0.456 (0.970 / 0.950)" in rows["`dcgan`"] and "0.25 s" in rows["`dcgan`"] and "12.3 M" in rows["`dcgan`"]
    assert "n/a (unconditional)" in rows["`dcgan`"] and "0.333 (0.400; 48 pairs)" in rows["`dcgan`"]
    assert "0.2 % (max corr. 0.960)" in rows["`dcgan`"] and "1,000 (FID 500 vs 500)" in rows["`dcgan`"]
    assert "not evaluated yet: `python -m xray_generator evaluate --model gmvae --n 1000`" in rows["`gmvae`"]
    assert "could not be read" in rows["`vae`"]
    assert "every evaluated family generated 1,000 images" in table


def test_write_readme_replaces_only_the_marked_block(tmp_path, capsys):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    constructed_document(metrics, "dcgan", fid=120.0, conditions=[])
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n## Comparing the generators\n\n{comparison.START_MARKER}\nold table\n{comparison.END_MARKER}\n\n## Training (CPU)\n")
    assert comparison.main(["--write-readme", "--metrics-dir", str(metrics), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# Title\n") and text.endswith(f"{comparison.END_MARKER}\n\n## Training (CPU)\n")
    assert "| `dcgan` |" in text and "not evaluated yet" in text
    assert comparison.main(["--write-readme", "--metrics-dir", str(metrics), "--readme", str(readme)]) == 0
    assert readme.read_text() == text  # idempotent
    readme.write_text("# no markers\n")
    assert comparison.main(["--write-readme", "--metrics-dir", str(metrics), "--readme", str(readme)]) == 2
    assert "no <!-- comparison:start -->" in capsys.readouterr().err and readme.read_text() == "# no markers\n"


def test_the_repository_readme_has_the_comparison_block():
    text = (REPO / "README.md").read_text()
    assert text.index("## Comparing the generators") < text.index(comparison.START_MARKER) < text.index(comparison.END_MARKER) < text.index("## Training (CPU)")


def test_ms_ssim_window_fits_small_families():
    from xray_generator.evaluation.samples import ms_ssim_window

    assert [ms_ssim_window(s) for s in (256, 176, 128, 32)] == [11, 11, 7, 1]
    assert np.all([ms_ssim_window(s) % 2 == 1 for s in range(16, 300)])
