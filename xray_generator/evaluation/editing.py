"""Does a text-guided edit move a real Normal film towards pneumonia, and what does it cost in fidelity?

    python -m xray_generator.evaluation.editing --n 200 --strengths 0.3 0.5 0.7

For n real Normal films of the test split (labelled Normal and nothing else), and for each
strength, the film is edited twice with a pneumonia prompt and its own seed: over the whole
image, and inside one lung zone (`--region`, default right-lower). The finding classifier
(`weights/classifier`, trained on real images only) scores every source and every edit; the
pneumonia score is the highest of its Pneumonia, Bacterial pneumonia and Viral pneumonia heads.

Reported per strength and mode, with percentile-bootstrap 95 % CIs over images:

- the fraction of films whose pneumonia score rises, and the median change of the score;
- the median SSIM between the edit and its source (fidelity to the source);
- for the zone edits, the mean absolute change outside the zone in 8-bit grey levels.

Strength 0 (the source through the VAE, no denoising step) is always included as the control:
it shows what the autoencoder alone does to the score and the SSIM.

Writes `outputs/metrics/editing.json` (the metrics-file schema of `evaluation.report`, so the
metrics dashboard lists it; `settings.summary` holds the same numbers as one plain table) and
`outputs/metrics/editing_curve.png` (strength against score rise and SSIM). Edited images are
synthetic; the measurement is about the generator, not about any patient.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from xray_generator.evaluation.fidelity import bootstrap_ci
from xray_generator.evaluation.paired import ssim
from xray_generator.evaluation.report import build_metric, write_metrics_json
from xray_generator.evaluation.run import classifier_score, save_plot
from xray_generator.io import read_gray
from xray_generator.paths import outputs_dir, weights_dir

PNEUMONIA_HEADS = ("Pneumonia", "Bacterial pneumonia", "Viral pneumonia")
# Whole-image edits cycle through these; zone edits name the zone (see ZONE_PROMPT).
EDIT_PROMPTS = (
    "Chest radiograph: pneumonia.",
    "Pediatric AP chest radiograph: lobar consolidation consistent with bacterial pneumonia.",
    "Pediatric AP chest radiograph: diffuse interstitial opacities consistent with viral pneumonia.",
    "Adult PA chest radiograph: patchy airspace opacities consistent with pneumonia.",
)
ZONE_PROMPT = "Chest radiograph: {zone} lobe pneumonia with airspace consolidation."
DEFAULT_STRENGTHS = (0.3, 0.5, 0.7)
METRICS_FILE = "editing.json"
CURVE_FILE = "editing_curve.png"
COMMAND = "python -m xray_generator.evaluation.editing --n 200 --strengths 0.3 0.5 0.7"


class MissingClassifierError(FileNotFoundError):
    """The measurement needs the trained finding classifier."""


def normal_test_images(manifest, n: int, seed: int = 0, splits: Sequence[str] = ("test",)):
    """Up to n rows labelled Normal and nothing else from `splits`, in a seeded order."""
    from xray_generator.data.manifest import split_labels

    table = manifest.query(split=list(splits)).table
    table = table[table["labels"].fillna("").map(lambda s: split_labels(s) == ["Normal"])]
    if table.empty:
        raise ValueError(f"no images labelled only Normal in the {'/'.join(splits)} split of {manifest.root}")
    return table.sample(n=min(n, len(table)), random_state=seed).reset_index(drop=True)


def zone_prompt(region: str) -> str:
    side, _, zone = region.partition("-")
    return ZONE_PROMPT.format(zone=f"{side} {zone}" if zone else side)


def _ci_metric(name: str, values: np.ndarray, statistic, n_boot: int, seed: int, extra: dict) -> dict:
    result = bootstrap_ci(statistic, [values], n_boot=n_boot, seed=seed)
    return build_metric(name, result["value"], len(values), ci=result, extra=extra)


def measure(
    pipe,
    classifier,
    manifest,
    n: int = 200,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    region: str = "right-lower",
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    sampler: str | None = None,
    n_boot: int = 1000,
    splits: Sequence[str] = ("test",),
    out_dir: str | Path | None = None,
) -> dict:
    """Run the edits, score them and write editing.json and editing_curve.png to `out_dir`."""
    from xray_generator.pipelines.editing import check_strength, mean_change_outside, region_mask

    strengths = sorted({0.0, *(check_strength(s) for s in strengths)})
    region_mask(region, 8)  # fail on an unknown zone before any edit runs
    rows = normal_test_images(manifest, n, seed, splits)
    out = Path(out_dir) if out_dir is not None else outputs_dir() / "metrics"
    modes = ("whole", "zone")
    after = {(mode, s): [] for mode in modes for s in strengths}  # pneumonia scores of the edits
    similarity = {(mode, s): [] for mode in modes for s in strengths}
    outside = {s: [] for s in strengths}
    before = []
    settings_used = {}

    def pneumonia(images: list[np.ndarray]) -> np.ndarray:
        return classifier_score(classifier, classifier.predict_proba(images), PNEUMONIA_HEADS)

    with tqdm(total=len(rows) * len(strengths) * 2, desc="editing", mininterval=10, file=sys.stderr) as bar:
        for i, row in enumerate(rows.itertuples(index=False)):
            image = read_gray(manifest.root / row.file)
            edits, keys = [], []
            for s in strengths:
                for mode in modes:
                    prompt = EDIT_PROMPTS[i % len(EDIT_PROMPTS)] if mode == "whole" else zone_prompt(region)
                    result = pipe.edit(
                        image, prompt, strength=s, seed=seed + i, num_inference_steps=steps, guidance_scale=guidance,
                        sampler=sampler, mask=region if mode == "zone" else None, source_id=row.image_id,
                    )
                    edits.append(result.image)
                    keys.append((mode, s))
                    similarity[(mode, s)].append(ssim(result.source, result.image))
                    if mode == "zone":
                        outside[s].append(mean_change_outside(result.source, result.image, result.mask))
                    settings_used = {k: result.metadata[k] for k in ("sampler", "steps", "guidance")}
                    bar.update(1)
            # Scored per film, so memory stays flat; the source is scored after the same resize and crop.
            film_scores = pneumonia([result.source, *edits])
            before.append(film_scores[0])
            for key, score in zip(keys, film_scores[1:]):
                after[key].append(score)

    score_before = np.asarray(before)
    metrics, summary = [], []
    for mode in modes:
        for s in strengths:
            score_after = np.asarray(after[(mode, s)])
            change = score_after - score_before
            rises = (change > 0).astype(np.float64)
            ssims = np.asarray(similarity[(mode, s)])
            tag = f"editing_{mode}_s{s:.2f}"
            extra = {"mode": mode, "strength": s, "region": region if mode == "zone" else None}
            metrics += [
                _ci_metric(f"{tag}_classifier_score_rise_fraction", rises, np.mean, n_boot, seed, extra),
                _ci_metric(f"{tag}_classifier_score_change_median", change, np.median, n_boot, seed, extra),
                _ci_metric(f"{tag}_ssim_median", ssims, np.median, n_boot, seed, extra),
            ]
            entry = {"mode": mode, "strength": s, "n": len(change), "score_rise_fraction": metrics[-3]["value"],
                     "score_rise_fraction_ci": [metrics[-3]["ci"]["low"], metrics[-3]["ci"]["high"]],
                     "score_change_median": metrics[-2]["value"], "score_before_median": float(np.median(score_before)),
                     "score_after_median": float(np.median(score_after)), "ssim_median": metrics[-1]["value"],
                     "ssim_median_ci": [metrics[-1]["ci"]["low"], metrics[-1]["ci"]["high"]]}
            if mode == "zone":
                grey = np.asarray(outside[s])
                metrics.append(_ci_metric(f"{tag}_outside_zone_change_grey_levels_mean", grey, np.mean, n_boot, seed, extra))
                entry["outside_zone_change_grey_levels_mean"] = metrics[-1]["value"]
            summary.append(entry)
    settings = {
        "n_images": len(rows), "n_requested": n, "splits": list(splits), "strengths": strengths, "region": region,
        "seed": seed, **settings_used, "whole_image_prompts": list(EDIT_PROMPTS), "zone_prompt": zone_prompt(region),
        "pneumonia_score": f"max of the classifier heads {', '.join(PNEUMONIA_HEADS)}",
        "classifier_weights": classifier.weights_hash, "n_boot": n_boot,
        "source_images": rows["image_id"].tolist(), "summary": summary,
        "note": "strength 0 is the VAE round trip of the source (control). Edited images are synthetic.",
    }
    from xray_generator.evaluation.run import pipe_weights_sha256

    document = write_metrics_json(out / METRICS_FILE, f"{pipe.model_name}-editing", settings, pipe_weights_sha256(pipe), metrics)
    plot_curve(summary, out / CURVE_FILE, len(rows), region)
    return document


def plot_curve(summary: list[dict], path: Path, n: int, region: str) -> None:
    """Strength against the fraction of rising pneumonia scores and against SSIM to the source, with 95 % CIs,
    and the trade-off itself: score rise against SSIM, one point per strength."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.3))
    for mode, colour, label in (("whole", "#c44e52", "whole image"), ("zone", "#4c72b0", f"zone {region}")):
        entries = [e for e in summary if e["mode"] == mode]
        x = [e["strength"] for e in entries]
        for ax, key in ((axes[0], "score_rise_fraction"), (axes[1], "ssim_median")):
            y = np.array([e[key] for e in entries])
            ci = np.array([e[f"{key}_ci"] for e in entries])
            ax.errorbar(x, y, yerr=[y - ci[:, 0], ci[:, 1] - y], marker="o", capsize=3, color=colour, label=label)
        ssim_values = [e["ssim_median"] for e in entries]
        rise = [e["score_rise_fraction"] for e in entries]
        axes[2].plot(ssim_values, rise, marker="o", color=colour, label=label)
        for strength, sx, ry in zip(x, ssim_values, rise):
            axes[2].annotate(f"{strength:g}", (sx, ry), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes[0].set(xlabel="strength", ylabel="fraction with higher pneumonia score", ylim=(-0.02, 1.02))
    axes[0].axhline(0.5, color="#999999", lw=0.8, ls="--")
    axes[1].set(xlabel="strength", ylabel="median SSIM to the source", ylim=(0, 1.02))
    axes[2].set(xlabel="median SSIM to the source (fidelity)", ylabel="fraction with higher pneumonia score",
                xlim=(0.5, 1.0), ylim=(-0.02, 1.02), title="trade-off (labels: strength)")
    axes[2].title.set_fontsize(8)
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Editing {n} real Normal films towards pneumonia (edits are synthetic; strength 0 = VAE round trip)", fontsize=8)
    fig.tight_layout()
    save_plot(fig, path)
    plt.close(fig)


def load_measurement_classifier(folder: str | Path | None = None):
    """The verified finding classifier, or MissingClassifierError saying how to get one."""
    from xray_generator.models.classifier import load_classifier

    folder = Path(folder) if folder is not None else weights_dir() / "classifier"
    if not (folder / "MANIFEST.json").is_file():
        raise MissingClassifierError(
            f"no trained classifier in {folder} (no MANIFEST.json); the editing measurement scores edits with it. Train and "
            "export it first (python -m xray_generator.training.train_classifier ...), or pass --classifier FOLDER"
        )
    return load_classifier(folder)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m xray_generator.evaluation.editing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="Normal test films to edit (default 200; fewer if the split has fewer)")
    parser.add_argument("--strengths", type=float, nargs="+", default=list(DEFAULT_STRENGTHS), help="edit strengths in [0, 1]; 0 is always added")
    parser.add_argument("--region", default="right-lower", help="lung zone of the zone edits (patient's side; default right-lower)")
    parser.add_argument("--seed", type=int, default=0, help="image i is edited with seed + i")
    parser.add_argument("--steps", type=int, default=None, help="sampler schedule length (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--sampler", choices=["dpm++", "ddim", "unipc"], default=None)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--splits", nargs="+", default=["test"], help="splits to draw Normal films from (default test)")
    parser.add_argument("--model", default="ldm")
    parser.add_argument("--weights", default=None, help="pipeline folder (default weights/<model>)")
    parser.add_argument("--classifier", default=None, help="classifier folder (default weights/classifier)")
    parser.add_argument("--data-dir", default=None, help="folder with metadata.csv (default: the full set, else the sample)")
    parser.add_argument("--out", default=None, help="output folder (default outputs/metrics)")
    parser.add_argument("--replot", action="store_true", help="only redraw the curve from an existing editing.json (no edits run)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from xray_generator.data.manifest import ManifestError, load_manifest
    from xray_generator.pipelines.editing import EditInputError
    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline
    from xray_generator.pipelines.registry import generator_folder
    from xray_generator.weights import WeightsError

    args = build_parser().parse_args(argv)
    if args.replot:
        from xray_generator.evaluation.report import read_metrics_json

        out = Path(args.out) if args.out else outputs_dir() / "metrics"
        try:
            settings = read_metrics_json(out / METRICS_FILE)["settings"]
        except (OSError, ValueError) as exc:
            print(f"error: cannot replot: {exc}", file=sys.stderr)
            return 2
        plot_curve(settings["summary"], out / CURVE_FILE, settings["n_images"], settings["region"])
        print(f"wrote {out / CURVE_FILE}")
        return 0
    try:
        if not 1 <= args.n <= 100_000:
            raise ValueError(f"--n must be between 1 and 100000, got {args.n}")
        classifier = load_measurement_classifier(args.classifier)
        manifest = load_manifest(args.data_dir)
        pipe = XRayDiffusionPipeline.from_pretrained(Path(args.weights) if args.weights else generator_folder(args.model))
        document = measure(pipe, classifier, manifest, n=args.n, strengths=args.strengths, region=args.region, seed=args.seed,
                           steps=args.steps, guidance=args.guidance, sampler=args.sampler, n_boot=args.n_boot,
                           splits=args.splits, out_dir=args.out)
    except (MissingClassifierError, WeightsError, ManifestError, EditInputError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for entry in document["settings"]["summary"]:
        outside = entry.get("outside_zone_change_grey_levels_mean")
        print(f"{entry['mode']:<5} strength {entry['strength']:.2f}: score rises in {entry['score_rise_fraction']:.0%} "
              f"[{entry['score_rise_fraction_ci'][0]:.0%}, {entry['score_rise_fraction_ci'][1]:.0%}], median SSIM "
              f"{entry['ssim_median']:.3f}" + (f", outside the zone {outside:.2f} grey levels" if outside is not None else "")
              + f"  (n={entry['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
