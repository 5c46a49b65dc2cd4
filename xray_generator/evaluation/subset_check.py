"""Does a 200-image rerun of the evaluation reproduce the committed metrics within their CIs?

    python scripts/check_metrics_subset.py                       # outputs/metrics/ldm.json, n = 200
    python scripts/check_metrics_subset.py --metrics outputs/metrics/ldm.json --n 200

The rerun uses the committed file's settings (seed, sampler, steps, guidance, bootstrap sizes)
and must use the same generator and classifier weights (their hashes are compared first). With
the same seed, `evaluation_prompts` draws prompt i the same way for any n up to the number of
held-out images, so the n = 200 run generates exactly the first 200 of the committed run's
images (from the disk cache when it is there, else again).

Not every metric can be compared at n = 200 (`comparison_rule` says how each one is):

- direct: AUROCs, the memorisation rate and intra-prompt MS-SSIM estimate the same quantity at
  any n, so the subset value is compared with the committed CI (and the committed value with
  the subset's own, wider CI: a 200-image estimate scatters about twice as far from the
  1,000-image one as the committed CI is wide, so the first check alone fails for about a third
  of correct reruns);
- FID: the plain value grows as n shrinks (bias of order 1/n), so it is shown but not compared;
  the bias-corrected value (2 FID - bootstrap mean) estimates the same FID of the distributions
  as the committed basic-bootstrap CI, and is compared with it. Approximate: 200 images are
  fewer than the 512 feature dimensions, so the covariance is rank-deficient;
- an AUROC at exactly 1 (or 0) in the rerun, where the percentile bootstrap collapses to
  [1, 1]: its interval becomes the rule-of-three one (`boundary_interval`);
- KID and PRDC: the committed file holds no CI for them, and PRDC depends on n (its k-NN radii
  shrink as n grows): shown, not checked.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from xray_generator.evaluation.report import read_metrics_json
from xray_generator.paths import outputs_dir

# The settings of the committed run that the rerun takes over (n is the subset size). The backend too:
# another backend draws other pixels, so its images would miss the evaluation cache and differ.
RERUN_SETTINGS = ("seed", "sampler", "steps", "guidance", "guidance_fraction", "backend", "batch_size", "n_boot", "kid_subsets", "memorisation_threshold", "diversity_prompts")


def comparison_rule(name: str) -> tuple[str, str]:
    """(kind, why) for a metric name; kind is "direct", "bias_corrected" or "not_checked"."""
    if name.startswith("fid_at_"):
        return ("not_checked", "FID at a fixed N: checked only when the rerun has exactly that many images")
    if name in ("fid", "fid_inception"):
        return ("bias_corrected", "plain FID grows as n shrinks; the bias-corrected subset value is compared with the committed "
                                  "basic-bootstrap CI (approximate: n below the feature dimension)")
    if name == "kid":
        return ("not_checked", "no CI committed (KID is unbiased, so the values should be close)")
    if name.startswith("prdc_"):
        return ("not_checked", "no CI committed, and PRDC depends on n (k-NN radii shrink as n grows)")
    if name.startswith("condition_fidelity_auroc") or name in ("memorisation_rate", "diversity_intra_prompt_ms_ssim"):
        return ("direct", "estimates the same quantity at any n")
    return ("direct", "no rule for this metric: compared directly")


def boundary_interval(metric: dict) -> dict | None:
    """A 95 % interval for an AUROC whose percentile bootstrap collapsed at 0 or 1; None when it did not.

    When every resample separates the classes perfectly, the percentile bootstrap returns [1, 1]
    and claims no uncertainty at all, though a true AUROC of 0.9999 gives a perfect 200-image
    sample about as often as not. The rule of three (no error in m trials: the error rate is
    below 3 / m with 95 % confidence), with m the smaller class, gives the conservative interval
    [1 - 3 / m, 1] (and [0, 3 / m] at 0).
    """
    ci, n = metric.get("ci"), metric.get("n")
    if ci is None or not isinstance(n, dict) or "generated_positive" not in n or ci["high"] - ci["low"] > 1e-9:
        return None
    smaller = min(n["generated_positive"], n["generated_negative"])
    if smaller < 1:
        return None
    width = min(1.0, 3.0 / smaller)
    if abs(metric["value"] - 1.0) < 1e-9:
        return {**ci, "low": 1.0 - width, "high": 1.0, "method": f"rule of three on the smaller class ({smaller}); the bootstrap collapsed at 1"}
    if abs(metric["value"]) < 1e-9:
        return {**ci, "low": 0.0, "high": width, "method": f"rule of three on the smaller class ({smaller}); the bootstrap collapsed at 0"}
    return None


def _inside(value: float | None, ci: dict | None, tolerance: float = 1e-9) -> bool | None:
    if value is None or ci is None:
        return None
    return ci["low"] - tolerance <= value <= ci["high"] + tolerance


def compare_documents(committed: dict, subset: dict) -> list[dict]:
    """One row per committed metric: committed value and CI, subset value and CI, and the verdicts.

    Rows carry ``name``, ``kind``, ``why``, ``committed``, ``committed_ci``, ``subset`` (the
    compared subset value), ``subset_plain`` (the subset's plain value), ``subset_ci``,
    ``n_committed``, ``n_subset``, ``subset_in_committed_ci``, ``committed_in_subset_ci``,
    ``agrees`` (None where not checked) and, where both have one, ``floor_committed`` and
    ``floor_subset``. For FID, ``subset`` is the bias-corrected value and the reverse check uses
    the committed bias-corrected value (``committed_bias_corrected``).
    """
    subset_metrics = {metric["name"]: metric for metric in subset["metrics"]}
    committed_names = {metric["name"] for metric in committed["metrics"]}
    subset_fid = subset_metrics.get("fid")
    # The committed run also stores FID at a fixed smaller N (`fid_at_<N>`, subsets of its images):
    # a rerun of exactly N images is compared with that, like with like.
    matched_name = f"fid_at_{subset_fid['n']['generated']}" if subset_fid and isinstance(subset_fid["n"], dict) else None
    rows = []
    for metric in committed["metrics"]:
        name = metric["name"]
        kind, why = comparison_rule(name)
        other = subset_metrics.get(name)
        if name == matched_name:
            kind, why, other = "direct", "FID at the same N: the rerun's plain FID against the committed run's FID over random subsets of that size", subset_fid
        elif name == "fid" and matched_name in committed_names:
            kind, why = "not_checked", f"plain FID depends on n; checked at matched n in the {matched_name} row"
        row = {
            "name": name, "kind": kind, "why": why, "committed": metric["value"], "committed_ci": metric["ci"],
            "n_committed": metric["n"], "subset": None, "subset_plain": None, "subset_ci": None, "n_subset": None,
            "subset_in_committed_ci": None, "committed_in_subset_ci": None, "agrees": None,
        }
        if other is None:
            row.update(kind="not_checked", why="not computed in the subset run (too few images of a class, or not requested)")
            rows.append(row)
            continue
        row.update(subset_plain=other["value"], n_subset=other["n"], subset_ci=boundary_interval(other) or other["ci"], subset=other["value"])
        if metric["floor"] and other["floor"]:
            row.update(floor_committed=metric["floor"]["value"], floor_subset=other["floor"]["value"])
        committed_compared = metric["value"]
        if kind == "bias_corrected":
            corrected = other["extra"].get("value_bias_corrected")
            if corrected is None:
                row.update(kind="not_checked", why="the subset run stored no bias-corrected value")
                rows.append(row)
                continue
            # Both CIs are basic bootstrap intervals, which target the FID of the distributions;
            # so are the bias-corrected values, on both sides.
            row["subset"] = corrected
            committed_compared = metric["extra"].get("value_bias_corrected", metric["value"])
            row["committed_bias_corrected"] = committed_compared
        if kind != "not_checked" and metric["ci"] is None:
            row.update(kind="not_checked", why="no CI committed")
        if row["kind"] != "not_checked":
            row["subset_in_committed_ci"] = _inside(row["subset"], metric["ci"])
            row["committed_in_subset_ci"] = _inside(committed_compared, row["subset_ci"])
            row["agrees"] = bool(row["subset_in_committed_ci"] or row["committed_in_subset_ci"])
        rows.append(row)
    return rows


def _ci_text(ci: dict | None) -> str:
    return "-" if ci is None else f"[{ci['low']:.4g}, {ci['high']:.4g}]"


def _flag(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def format_comparison(rows: list[dict], n_committed: int, n_subset: int) -> str:
    """A plain-text table with one line per metric and the notes on what was compared."""
    header = f"{'metric':<46} {'committed':>10} {'committed CI':>22} {f'n={n_subset}':>10} {'subset CI':>22} {'in CI':>6} {'rev.':>5}  verdict"
    lines = [f"committed run: n = {n_committed} generated images; subset rerun: n = {n_subset} (the first {n_subset} of the same prompts and seeds)", "", header, "-" * len(header)]
    for row in rows:
        subset = "-" if row["subset"] is None else f"{row['subset']:.4g}" + ("*" if row["kind"] == "bias_corrected" else "")
        verdict = "not checked" if row["agrees"] is None else ("agrees" if row["agrees"] else "DISAGREES")
        lines.append(
            f"{row['name']:<46} {row['committed']:>10.4g} {_ci_text(row['committed_ci']):>22} {subset:>10} {_ci_text(row['subset_ci']):>22} "
            f"{_flag(row['subset_in_committed_ci']):>6} {_flag(row['committed_in_subset_ci']):>5}  {verdict}"
        )
    lines += ["", "in CI: the subset value lies inside the committed CI; rev.: the committed value lies inside the subset's own CI;",
              f"a metric agrees when either holds (an n={n_subset} estimate scatters more widely than the committed n={n_committed} CI is wide).",
              "*: bias-corrected FID (see the notes)", "", "notes:"]
    for row in rows:
        note = f"  {row['name']}: {row['why']}"
        if row["kind"] == "bias_corrected" and row["subset_plain"] is not None:
            note += (f"; bias-corrected: committed {row['committed_bias_corrected']:.4g}, subset {row['subset']:.4g} (the compared values); "
                     f"plain FID at n={n_subset}: {row['subset_plain']:.4g}, not comparable with the committed plain {row['committed']:.4g}")
        if "floor_committed" in row:
            note += f"; floor committed {row['floor_committed']:.4g}, at n={n_subset} {row['floor_subset']:.4g}"
        lines.append(note)
    checked = [row for row in rows if row["agrees"] is not None]
    agreeing = sum(row["agrees"] for row in checked)
    lines += ["", f"{agreeing} of {len(checked)} checked metrics agree; {len(rows) - len(checked)} not checked."]
    return "\n".join(lines)


def rerun_subset(committed: dict, n: int, out_dir: Path, classifier_folder=None, data_dir=None, pipe=None) -> dict:
    """Run the evaluation at n images with the committed run's settings; refuse other weights."""
    from xray_generator.evaluation.run import EvaluationSettings, evaluate, pipe_weights_sha256
    from xray_generator.models.classifier import load_classifier
    from xray_generator.paths import weights_dir
    from xray_generator.pipelines.registry import load_generator

    committed_settings = committed["settings"]
    if n > committed_settings["n_generated"]:
        raise ValueError(f"the subset ({n}) must not exceed the committed run's {committed_settings['n_generated']} images")
    pipe = pipe if pipe is not None else load_generator(committed["model"])
    if committed["weights_sha256"] is not None and pipe_weights_sha256(pipe) != committed["weights_sha256"]:
        raise ValueError(f"the generator's weights ({pipe_weights_sha256(pipe)}) are not the ones the committed file judged "
                         f"({committed['weights_sha256']}): the comparison would be meaningless")
    classifier = load_classifier(Path(classifier_folder) if classifier_folder else weights_dir() / "classifier")
    committed_features = committed_settings.get("features", {}).get("weights_sha256")
    if committed_features and classifier.feature_extractor.settings.get("weights_sha256") != committed_features:
        raise ValueError(f"the classifier's weights are not the ones behind the committed features ({committed_features})")
    settings = replace(EvaluationSettings(), n=n, **{key: committed_settings[key] for key in RERUN_SETTINGS if key in committed_settings})
    return evaluate(committed["model"], settings, classifier_folder=classifier_folder, out_dir=out_dir, data_dir=data_dir, pipe=pipe)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/check_metrics_subset.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", default=None, help="committed metrics file (default outputs/metrics/ldm.json)")
    parser.add_argument("--n", type=int, default=200, help="generated images in the rerun (default 200)")
    parser.add_argument("--out", default=None, help="folder for the rerun's files (default outputs/metrics/subset_check)")
    parser.add_argument("--classifier", default=None, help="classifier weights folder (default weights/classifier)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--subset-metrics", default=None, help="compare with this existing rerun file instead of running one")
    args = parser.parse_args(argv)
    committed = read_metrics_json(args.metrics or outputs_dir() / "metrics" / "ldm.json")
    out_dir = Path(args.out) if args.out else outputs_dir() / "metrics" / "subset_check"
    if args.subset_metrics:
        subset = read_metrics_json(args.subset_metrics)
    else:
        subset = rerun_subset(committed, args.n, out_dir, classifier_folder=args.classifier, data_dir=args.data_dir)
    rows = compare_documents(committed, subset)
    text = format_comparison(rows, committed["settings"]["n_generated"], subset["settings"]["n_generated"])
    print(text)
    from xray_generator.io import atomic_write_text

    atomic_write_text(out_dir / f"{committed['model']}_subset_comparison.txt", text + "\n")
    return 0 if all(row["agrees"] is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
