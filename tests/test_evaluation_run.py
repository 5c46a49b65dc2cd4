"""The evaluation run end to end on a tiny generator and a tiny classifier, on the sample dataset."""
from __future__ import annotations

import json

import pytest
from tests.conftest import REPO
from xray_generator.evaluation.report import read_metrics_json
from xray_generator.evaluation.run import EvaluationSettings, evaluate, evaluation_prompts, held_out_real

SAMPLE = REPO / "dataset"


@pytest.fixture(scope="module")
def evaluated(tiny_pipeline_dir, tiny_classifier_dir, tmp_path_factory, monkeypatch_module):
    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

    monkeypatch_module.setenv("CXR_OUTPUTS_DIR", str(tmp_path_factory.mktemp("outputs")))
    pipe = XRayDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    out = tmp_path_factory.mktemp("metrics")
    settings = EvaluationSettings(n=12, steps=2, n_boot=20, kid_subsets=5, diversity_prompts=2)
    document = evaluate("ldm", settings, classifier_folder=tiny_classifier_dir, out_dir=out, data_dir=SAMPLE, pipe=pipe)
    return document, out, pipe, settings, tiny_classifier_dir


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_every_metric_is_written_with_n_and_its_reference(evaluated):
    document, out, *_ = evaluated
    assert read_metrics_json(out / "ldm.json") == json.loads((out / "ldm.json").read_text())
    metrics = {m["name"]: m for m in document["metrics"]}
    for name in ("fid", "kid", "prdc_precision", "prdc_recall", "prdc_density", "prdc_coverage",
                 "diversity_intra_prompt_ms_ssim", "memorisation_rate"):
        assert name in metrics, name
    assert metrics["fid"]["ci"] is not None and metrics["fid"]["floor"] is not None
    assert metrics["fid"]["n"]["generated"] == metrics["fid"]["n"]["real"]  # model and floor at equal N
    assert metrics["diversity_intra_prompt_ms_ssim"]["n"] == {"prompts": 2, "pairs": 12}
    assert metrics["memorisation_rate"]["n"]["generated"] == 12
    assert document["weights_sha256"] is not None and len(document["weights_sha256"]) == 64
    assert document["settings"]["steps"] == 2 and document["settings"]["n_generated"] == 12
    for image in document["settings"]["images"].values():
        assert (out / image).stat().st_size > 0


def test_a_rerun_reuses_the_cached_images_and_reproduces_the_numbers(evaluated):
    document, out, pipe, settings, classifier = evaluated

    def must_not_generate(*args, **kwargs):
        raise AssertionError("a rerun generated an image that was cached")

    again = evaluate("ldm", settings, classifier_folder=classifier, out_dir=out, data_dir=SAMPLE, pipe=_Forbidden(pipe, must_not_generate))
    assert [m["value"] for m in again["metrics"]] == [m["value"] for m in document["metrics"]]


class _Forbidden:
    """The pipeline's attributes, but calling it fails."""

    def __init__(self, pipe, call):
        self._pipe, self._call = pipe, call

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)


def test_prompts_follow_held_out_metadata_and_never_quote_notes():
    from xray_generator.data.manifest import load_manifest

    held_out = held_out_real(load_manifest(SAMPLE))
    assert set(held_out["split"]) <= {"val", "test"}
    plan = evaluation_prompts(held_out, 2 * len(held_out) + 3, seed=5)
    # Every request has its own seed, from the seeded walk over the held-out films.
    assert plan["seed"].is_unique and plan["seed"].between(5, 5 + 3 * len(held_out) - 1).all()
    assert set(plan["seed"][:2 * len(held_out)]) == set(range(5, 5 + 2 * len(held_out)))  # two whole cycles
    assert plan["source_image_id"].isin(held_out["image_id"]).all()
    notes = {str(r) for r in held_out["report"].dropna() if str(r).strip()}
    assert not any(note[:40] in prompt for note in notes for prompt in plan["prompt"])
