"""The subset check: a 200-image rerun is compared with the committed metrics, metric by metric,
only where the comparison means something (tiny constructed metrics documents)."""
from __future__ import annotations

import pytest

from tests.conftest import REPO
from xray_generator.evaluation.report import build_metric, write_metrics_json
from xray_generator.evaluation.subset_check import compare_documents, format_comparison, main, rerun_subset

SAMPLE = REPO / "dataset"


def ci(low: float, high: float, method: str = "percentile bootstrap") -> dict:
    return {"low": low, "high": high, "level": 0.95, "method": method}


def document(path, n: int, metrics: list[dict]) -> dict:
    return write_metrics_json(path, model="ldm", settings={"n_generated": n, "seed": 0}, weights_sha256="a" * 64, metrics=metrics)


@pytest.fixture
def committed(tmp_path):
    pair = {"generated": 600, "real": 600}
    return document(tmp_path / "committed.json", 1000, [
        build_metric("fid", 59.2, pair, ci=ci(36.0, 76.8, "basic bootstrap"), floor={"value": 1.16, "n": {"a": 600, "b": 600}},
                     extra={"value_bias_corrected": 55.0}),
        build_metric("kid", 2.66, pair),
        build_metric("prdc_precision", 0.918, pair),
        build_metric("condition_fidelity_auroc_pneumonia_vs_normal", 0.9998, 981, ci=ci(0.9995, 1.0),
                     floor={"value": 0.988, "n": 300, "method": "real test images"}),
        build_metric("condition_fidelity_auroc_covid19_vs_rest", 0.992, 1000, ci=ci(0.988, 0.996)),
        build_metric("memorisation_rate", 0.0, 1000, ci=ci(0.0, 0.0038, "Wilson score")),
        build_metric("diversity_intra_prompt_ms_ssim", 0.418, 48, ci=ci(0.337, 0.497)),
    ])


def subset_metrics(**overrides) -> list[dict]:
    pair = {"generated": 200, "real": 200}
    values = {
        # Plain FID at n=200 is far above the committed CI; the bias-corrected value is inside it.
        "fid": build_metric("fid", 120.0, pair, ci=ci(30.0, 90.0, "basic bootstrap"), floor={"value": 3.5, "n": {"a": 200, "b": 200}},
                            extra={"value_bias_corrected": 60.0}),
        "kid": build_metric("kid", 2.9, pair),
        "prdc_precision": build_metric("prdc_precision", 0.85, pair),
        # Outside the narrow committed CI, but the committed value is inside the subset's wider CI.
        "condition_fidelity_auroc_pneumonia_vs_normal": build_metric(
            "condition_fidelity_auroc_pneumonia_vs_normal", 0.9990, 195, ci=ci(0.997, 1.0),
            floor={"value": 0.988, "n": 300, "method": "real test images"}),
        "memorisation_rate": build_metric("memorisation_rate", 0.0, 200, ci=ci(0.0, 0.0188, "Wilson score")),
        "diversity_intra_prompt_ms_ssim": build_metric("diversity_intra_prompt_ms_ssim", 0.418, 48, ci=ci(0.337, 0.497)),
    }
    values.update(overrides)
    return [metric for metric in values.values() if metric is not None]


def test_each_metric_is_compared_the_way_its_n_dependence_allows(committed, tmp_path):
    subset = document(tmp_path / "subset.json", 200, subset_metrics())
    rows = {row["name"]: row for row in compare_documents(committed, subset)}
    fid = rows["fid"]
    assert fid["kind"] == "bias_corrected" and fid["subset"] == 60.0 and fid["subset_plain"] == 120.0
    assert fid["subset_in_committed_ci"] and fid["committed_in_subset_ci"] and fid["agrees"]
    assert fid["floor_committed"] == 1.16 and fid["floor_subset"] == 3.5
    for name in ("kid", "prdc_precision"):
        assert rows[name]["kind"] == "not_checked" and rows[name]["agrees"] is None
    auroc = rows["condition_fidelity_auroc_pneumonia_vs_normal"]
    assert auroc["subset_in_committed_ci"] is False and auroc["committed_in_subset_ci"] is True and auroc["agrees"]
    assert rows["memorisation_rate"]["agrees"] and rows["diversity_intra_prompt_ms_ssim"]["subset_in_committed_ci"]
    # Not computed at n=200 (e.g. too few COVID-19 prompts): said so, not failed.
    covid = rows["condition_fidelity_auroc_covid19_vs_rest"]
    assert covid["kind"] == "not_checked" and "not computed" in covid["why"]

    text = format_comparison(list(rows.values()), 1000, 200)
    assert "plain FID at n=200: 120, not comparable" in text
    assert "4 of 4 checked metrics agree; 3 not checked." in text
    assert "DISAGREES" not in text


def test_a_subset_value_outside_both_intervals_disagrees_and_the_script_exits_1(committed, tmp_path, capsys):
    off = build_metric("diversity_intra_prompt_ms_ssim", 0.80, 48, ci=ci(0.75, 0.85))
    subset = document(tmp_path / "subset.json", 200, subset_metrics(diversity_intra_prompt_ms_ssim=off))
    row = {r["name"]: r for r in compare_documents(committed, subset)}["diversity_intra_prompt_ms_ssim"]
    assert row["agrees"] is False
    # --out keeps the test's comparison out of the repository's committed outputs/metrics/subset_check.
    assert main(["--metrics", str(tmp_path / "committed.json"), "--subset-metrics", str(tmp_path / "subset.json"), "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "DISAGREES" in out and "diversity_intra_prompt_ms_ssim" in out

    document(tmp_path / "subset_ok.json", 200, subset_metrics())
    assert main(["--metrics", str(tmp_path / "committed.json"), "--subset-metrics", str(tmp_path / "subset_ok.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "ldm_subset_comparison.txt").is_file()


def test_a_bias_corrected_fid_far_from_the_committed_interval_disagrees(committed, tmp_path):
    pair = {"generated": 200, "real": 200}
    bad_fid = build_metric("fid", 300.0, pair, ci=ci(200.0, 280.0, "basic bootstrap"), extra={"value_bias_corrected": 240.0})
    subset = document(tmp_path / "subset.json", 200, subset_metrics(fid=bad_fid))
    fid = {r["name"]: r for r in compare_documents(committed, subset)}["fid"]
    assert fid["agrees"] is False and fid["committed_in_subset_ci"] is False


def test_the_rerun_refuses_weights_other_than_the_committed_ones(committed, tiny_pipeline_dir, tmp_path):
    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

    pipe = XRayDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    with pytest.raises(ValueError, match="not the ones the committed file judged"):
        rerun_subset(committed, 200, tmp_path, data_dir=SAMPLE, pipe=pipe)
    with pytest.raises(ValueError, match="must not exceed"):
        rerun_subset(committed, 2000, tmp_path, data_dir=SAMPLE, pipe=pipe)


def test_a_smaller_evaluation_uses_the_first_prompts_and_seeds_of_the_committed_one():
    from xray_generator.data.manifest import load_manifest
    from xray_generator.evaluation.run import evaluation_prompts, held_out_real

    held_out = held_out_real(load_manifest(SAMPLE))
    full = evaluation_prompts(held_out, len(held_out), seed=0)
    subset = evaluation_prompts(held_out, 20, seed=0)
    assert subset.equals(full.iloc[:20])


def test_every_prefix_of_the_plan_keeps_the_held_out_label_mix():
    from xray_generator.data.manifest import load_manifest
    from xray_generator.evaluation.run import evaluation_prompts, held_out_real
    from xray_generator.evaluation.samples import evaluation_stratum

    held_out = held_out_real(load_manifest(SAMPLE))
    strata = [evaluation_stratum(row) for _, row in held_out.iterrows()]
    shares = {key: strata.count(key) / len(strata) for key in set(strata)}
    plan = evaluation_prompts(held_out, len(held_out), seed=0)
    by_id = dict(zip(held_out["image_id"], strata))
    planned = [by_id[image_id] for image_id in plan["source_image_id"]]
    for m in (10, 25, len(planned) // 2):
        for key, share in shares.items():
            assert abs(planned[:m].count(key) - m * share) <= 1.0 + 1e-9, (m, key)


def test_the_stratified_order_keeps_each_keys_items_in_order_and_interleaves_them():
    from xray_generator.evaluation.samples import prefix_stratified_order

    keys = ["a"] * 6 + ["b"] * 3 + ["c"]
    order = prefix_stratified_order(keys)
    assert sorted(order.tolist()) == list(range(10))
    assert [i for i in order if keys[i] == "a"] == [0, 1, 2, 3, 4, 5]
    assert [keys[i] for i in order[:5]].count("a") == 3 and [keys[i] for i in order[:5]].count("b") in (1, 2)
    assert prefix_stratified_order([]).tolist() == []


def test_fid_is_compared_at_matched_n_when_the_committed_run_stores_it(tmp_path, committed):
    pair = {"generated": 600, "real": 600}
    with_matched = document(tmp_path / "matched.json", 1000, committed["metrics"] + [
        build_metric("fid_at_200", 80.0, {"generated": 200, "real": 200}, ci=ci(70.0, 95.0, "central interval over subsets"),
                     floor={"value": 4.0, "n": {"a": 200, "b": 200}}, extra={"drawn_from": pair}),
    ])
    subset = document(tmp_path / "subset.json", 200, subset_metrics())
    rows = {row["name"]: row for row in compare_documents(with_matched, subset)}
    assert rows["fid"]["kind"] == "not_checked" and "fid_at_200" in rows["fid"]["why"]
    matched = rows["fid_at_200"]
    assert matched["kind"] == "direct" and matched["subset"] == 120.0  # the rerun's plain FID at n = 200
    assert matched["subset_in_committed_ci"] is False


def test_a_perfect_auroc_in_the_rerun_gets_the_rule_of_three_interval_not_a_collapsed_one():
    from xray_generator.evaluation.subset_check import boundary_interval

    perfect = build_metric("condition_fidelity_auroc_pneumonia_vs_normal", 1.0, {"generated_positive": 143, "generated_negative": 52},
                           ci=ci(1.0, 1.0, "percentile bootstrap"))
    interval = boundary_interval(perfect)
    assert interval["high"] == 1.0 and interval["low"] == pytest.approx(1.0 - 3.0 / 52)
    assert boundary_interval({**perfect, "ci": ci(0.99, 1.0, "percentile bootstrap")}) is None  # not collapsed
    assert boundary_interval(build_metric("memorisation_rate", 0.0, {"generated": 200}, ci=ci(0.0, 0.0, "x"))) is None  # not an AUROC
    committed = {"metrics": [build_metric("condition_fidelity_auroc_pneumonia_vs_normal", 0.99988, {"generated_positive": 724, "generated_negative": 257},
                                          ci=ci(0.99966, 0.999985, "percentile bootstrap"))]}
    row = compare_documents(committed, {"metrics": [perfect]})[0]
    assert row["agrees"] and row["committed_in_subset_ci"]
