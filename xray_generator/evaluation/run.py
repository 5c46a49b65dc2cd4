"""Evaluate a shipped generator against real held-out radiographs and write `outputs/metrics/<model>.json`.

    python -m xray_generator evaluate --model ldm --n 1000

What it measures (all in the domain feature space of our chest X-ray classifier, `weights/classifier`):

- FID and KID between generated images and one half of the real held-out images, next to the
  same metric between the two real halves (the real-vs-real floor), at equal sample sizes;
- precision, recall, density and coverage (k = 5), with the same floor;
- condition fidelity: the classifier's AUROC for a finding on images generated for prompts that
  name it, next to its AUROC on real test images;
- diversity: intra-prompt MS-SSIM (4 samples per prompt, 6 pairs) next to random real pairs
  sharing a label;
- memorisation: each generated image's nearest training image (in feature space and by pixel
  correlation); the share above 0.95 pixel correlation, and the worst pairs as an image.

Prompts come from the metadata of the real held-out images (val + test splits, never trained
on by the generator), so generated and real sets share their label, age and view mix.
Generated images are cached on disk by (weights hash, sampler settings, seed): an interrupted
run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from xray_generator.data.datasets import load_images_uint8
from xray_generator.data.manifest import Manifest, load_manifest, split_labels
from xray_generator.data.prompts import age_group, prompt_variants
from xray_generator.evaluation.distribution import fid_with_bootstrap, kernel_inception_distance, prdc
from xray_generator.evaluation.diversity import intra_prompt_ms_ssim, random_pair_ms_ssim
from xray_generator.evaluation.fidelity import condition_fidelity_auroc
from xray_generator.evaluation.memorisation import correlation_vectors, memorisation_rate, nearest_training_images
from xray_generator.evaluation.report import build_metric, write_metrics_json
from xray_generator.io import read_png_metadata, read_gray, save_png_with_metadata
from xray_generator.paths import cache_dir, outputs_dir, weights_dir

IMAGE_SIZE = 256
# Findings whose condition fidelity is measured: (metric name, positive labels, negative labels).
# Pneumonia counts every pneumonia subtype; the negatives are images labelled Normal.
FIDELITY_TASKS = (
    ("pneumonia_vs_normal", ("Pneumonia", "Bacterial pneumonia", "Viral pneumonia"), ("Normal",)),
    ("covid19_vs_rest", ("COVID-19",), None),
)
# Prompts for the diversity check: one per common finding, with and without an age group.
DIVERSITY_PROMPTS = (
    ("Normal", "Normal pediatric chest radiograph, clear lungs."),
    ("Normal", "Adult PA chest radiograph, no acute cardiopulmonary abnormality."),
    ("Pneumonia", "Adult PA chest radiograph: right lower lobe pneumonia."),
    ("Bacterial pneumonia", "Pediatric AP chest radiograph: lobar consolidation consistent with bacterial pneumonia."),
    ("Viral pneumonia", "Pediatric AP chest radiograph: diffuse interstitial opacities consistent with viral pneumonia."),
    ("COVID-19", "Bilateral peripheral ground-glass opacities consistent with COVID-19."),
    ("COVID-19", "Adult AP chest radiograph, multifocal patchy opacities, COVID-19."),
    ("Normal", "Normal chest radiograph."),
)
SAMPLES_PER_DIVERSITY_PROMPT = 4


@dataclass(frozen=True)
class EvaluationSettings:
    n: int = 1000
    seed: int = 0
    sampler: str | None = None  # None: the model's defaults
    steps: int | None = None
    guidance: float | None = None
    batch_size: int = 8
    n_boot: int = 200
    kid_subsets: int = 100
    memorisation_threshold: float = 0.95
    diversity_prompts: int = len(DIVERSITY_PROMPTS)
    inception_weights: str | None = None  # a local safetensors InceptionV3 state dict, for Inception FID


def held_out_real(manifest: Manifest) -> pd.DataFrame:
    """The real images the generator never trained on: val and test splits."""
    table = manifest.table
    return table[table["split"].isin(["val", "test"])].reset_index(drop=True)


def evaluation_prompts(rows: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """`n` (prompt, labels, seed) rows drawn from held-out metadata; prompts without note text.

    Rows are cycled in a seeded order, so n > len(rows) repeats metadata with new seeds and a
    different wording.
    """
    order = np.random.default_rng(seed).permutation(len(rows))
    records = []
    for i in range(n):
        row = rows.iloc[order[i % len(rows)]]
        # Variants 0 and 1 never quote the clinical note: a generator should not need a real report.
        variant = (i // len(rows)) % 2
        records.append({
            "seed": seed + i, "prompt": prompt_variants(row, count=2)[variant], "labels": row["labels"],
            "source_image_id": row["image_id"], "age_group": age_group(row)[0],
        })
    return pd.DataFrame(records)


def resize_square(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Real images to the generator's size, so pixel metrics compare like with like."""
    if image.shape == (size, size):
        return image
    shrinking = max(image.shape) > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def load_real(table: pd.DataFrame, data_dir: Path | None = None) -> list[np.ndarray]:
    manifest = load_manifest(data_dir)
    manifest.table = table
    return [resize_square(im).astype(np.float32) / 255.0 for im in load_images_uint8(manifest)]


def settings_key(pipe, settings: EvaluationSettings) -> str:
    defaults = pipe.generation_defaults
    sampler_settings = {
        "sampler": settings.sampler or defaults["sampler"],
        "steps": settings.steps or defaults["num_inference_steps"],
        "guidance": settings.guidance if settings.guidance is not None else defaults["guidance_scale"],
    }
    digest = hashlib.sha256(json.dumps(sampler_settings, sort_keys=True).encode()).hexdigest()[:10]
    return f"{pipe.weights_hash}_{digest}"


def generate_cached(pipe, prompts: Sequence[str], seeds: Sequence[int], folder: Path, settings: EvaluationSettings, desc: str) -> list[np.ndarray]:
    """Generate one image per (prompt, seed), reusing images already on disk with the same prompt.

    Each image's initial noise comes from its own seed, so an image does not depend on which
    others share its batch (up to bf16 rounding of batched matrix products).
    """
    folder.mkdir(parents=True, exist_ok=True)
    images: list[np.ndarray | None] = [None] * len(prompts)
    todo = []
    for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
        path = folder / f"{seed:06d}.png"
        if path.is_file():
            try:
                if read_png_metadata(path).get("prompt") == prompt:
                    images[i] = read_gray(path)
                    continue
            except (OSError, ValueError):
                pass  # a damaged cache file is regenerated
        todo.append(i)
    shape = (1, pipe.unet.config.in_channels, IMAGE_SIZE // 8, IMAGE_SIZE // 8)
    with tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=desc, mininterval=10, file=sys.stderr) as bar:
        for start in range(0, len(todo), settings.batch_size):
            batch = todo[start:start + settings.batch_size]
            latents = torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seeds[i])) for i in batch])
            result = pipe(
                [prompts[i] for i in batch], latents=latents, seed=seeds[batch[0]],
                num_inference_steps=settings.steps, guidance_scale=settings.guidance, sampler=settings.sampler,
            )
            for i, image, metadata in zip(batch, result.images, result.metadata):
                metadata = {**metadata, "seed": seeds[i], "index_in_batch": 0, "evaluation_batch": len(batch)}
                save_png_with_metadata(image, folder / f"{seeds[i]:06d}.png", metadata)
                images[i] = read_gray(folder / f"{seeds[i]:06d}.png")  # the 8-bit PNG, as a user would get it
            bar.update(len(batch))
    return images  # type: ignore[return-value]


def has_any(labels: str, wanted: Sequence[str]) -> bool:
    return bool(set(split_labels(labels)) & set(wanted))


def fidelity_labels(labels: Sequence[str], positives: Sequence[str], negatives: Sequence[str] | None) -> np.ndarray:
    """1 positive, 0 negative, -1 neither (left out)."""
    out = []
    for value in labels:
        if has_any(value, positives):
            out.append(1)
        elif negatives is None or has_any(value, negatives):
            out.append(0)
        else:
            out.append(-1)
    return np.asarray(out)


def classifier_score(classifier, probabilities: np.ndarray, positives: Sequence[str]) -> np.ndarray:
    """The classifier's probability for the finding: the highest of its heads for the positive labels."""
    columns = [classifier.labels.index(label) for label in positives if label in classifier.labels]
    if not columns:
        raise ValueError(f"the classifier has no head for any of {positives}; its labels are {classifier.labels}")
    return probabilities[:, columns].max(axis=1)


def image_grid(images: Sequence[np.ndarray], columns: int, size: int = 128) -> np.ndarray:
    tiles = [cv2.resize(np.asarray(im, dtype=np.float32), (size, size), interpolation=cv2.INTER_AREA) for im in images]
    while len(tiles) % columns:
        tiles.append(np.zeros((size, size), np.float32))
    rows = [np.concatenate(tiles[r:r + columns], axis=1) for r in range(0, len(tiles), columns)]
    return (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255 + 0.5).astype(np.uint8)


def save_plot(figure, path: Path) -> None:
    import io as _io

    from xray_generator.io import atomic_write_bytes

    buffer = _io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def plot_against_floor(metrics: list[dict], path: Path, model: str) -> None:
    """One panel per metric: the model's value with its CI next to the real-vs-real floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in metrics if m["floor"] is not None]
    fig, axes = plt.subplots(1, len(shown), figsize=(2.1 * len(shown), 3.0), squeeze=False)
    for ax, metric in zip(axes[0], shown):
        values = [metric["value"], metric["floor"]["value"]]
        errors = [[0, 0], [0, 0]]
        if metric["ci"]:
            errors = [[metric["value"] - metric["ci"]["low"], 0], [metric["ci"]["high"] - metric["value"], 0]]
        ax.bar([0, 1], values, color=["#4c72b0", "#999999"], yerr=errors, capsize=3)
        ax.set_xticks([0, 1], [model, "real vs real"], fontsize=7)
        ax.set_title(textwrap.fill(metric["name"].replace("_", " "), 22), fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"{model}: generated vs real held-out, next to the real-vs-real floor (synthetic images)", fontsize=8)
    fig.tight_layout()
    save_plot(fig, path)
    plt.close(fig)


def evaluate(
    model: str = "ldm",
    settings: EvaluationSettings = EvaluationSettings(),
    classifier_folder: str | Path | None = None,
    out_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    pipe=None,
) -> dict:
    """Run every metric for one generator; write the metrics JSON, plots and example images."""
    from xray_generator.models.classifier import load_classifier
    from xray_generator.pipelines.registry import load_generator

    started = time.time()
    out_dir = Path(out_dir) if out_dir is not None else outputs_dir() / "metrics"
    pipe = pipe if pipe is not None else load_generator(model)
    classifier = load_classifier(Path(classifier_folder) if classifier_folder else weights_dir() / "classifier")
    extract = classifier.feature_extractor
    manifest = load_manifest(data_dir)

    # Real held-out images, and the prompts built from their metadata.
    held_out = held_out_real(manifest)
    real = load_real(held_out, data_dir)
    plan = evaluation_prompts(held_out, settings.n, settings.seed)
    cache = cache_dir() / "evaluation" / model / settings_key(pipe, settings)
    generated = generate_cached(pipe, plan["prompt"].tolist(), plan["seed"].tolist(), cache, settings, f"{model}: generating")

    real_features, generated_features = extract(real), extract(generated)
    # Disjoint real halves: A is the floor's reference, B is the reference for the model, so the
    # model and the floor are measured at the same N against the same images.
    # With fewer generated images than half the real set, every set is cut to the same N.
    order = np.random.default_rng(settings.seed).permutation(len(real))
    half = min(len(real) // 2, len(generated))
    real_a, real_b = real_features[order[:half]], real_features[order[len(real) // 2:len(real) // 2 + half]]
    gen_half = generated_features[:half]
    n_pair = {"generated": half, "real": half}
    floor_n = {"a": half, "b": half}
    floor_method = f"real vs real: disjoint random halves of the held-out images (seed {settings.seed})"
    metrics = []

    fid = fid_with_bootstrap(gen_half, real_b, n_boot=settings.n_boot, seed=settings.seed)
    fid_floor = fid_with_bootstrap(real_a, real_b, n_boot=settings.n_boot, seed=settings.seed)
    metrics.append(build_metric(
        "fid", fid["value"], n_pair, ci=fid,
        floor={"value": fid_floor["value"], "n": floor_n, "ci": fid_floor, "method": floor_method},
        extra={"feature_space": "classifier penultimate", "ratio_to_floor": fid["value"] / max(fid_floor["value"], 1e-12),
               "value_bias_corrected": fid["value_bias_corrected"], "n_boot": settings.n_boot},
    ))
    kid = kernel_inception_distance(gen_half, real_b, n_subsets=settings.kid_subsets, seed=settings.seed)
    kid_floor = kernel_inception_distance(real_a, real_b, n_subsets=settings.kid_subsets, seed=settings.seed)
    metrics.append(build_metric(
        "kid", kid["value"], n_pair,
        floor={"value": kid_floor["value"], "n": floor_n, "method": floor_method},
        extra={"std_over_subsets": kid["std"], "floor_std_over_subsets": kid_floor["std"], "subset_size": kid["subset_size"], "n_subsets": kid["n_subsets"]},
    ))
    pr = prdc(real_b, gen_half, k=5)
    pr_floor = prdc(real_b, real_a, k=5)
    for name in ("precision", "recall", "density", "coverage"):
        metrics.append(build_metric(
            f"prdc_{name}", pr[name], n_pair,
            floor={"value": pr_floor[name], "n": floor_n, "method": floor_method + "; half A scored as if generated"},
            extra={"k": 5},
        ))

    if settings.inception_weights:
        # Inception FID makes our numbers comparable with the literature; only with local weights.
        from xray_generator.evaluation.features import inception_feature_extractor

        inception = inception_feature_extractor(settings.inception_weights)
        inc_real, inc_gen = inception(real), inception(generated[:half])
        inc_b = inc_real[order[len(real) // 2:len(real) // 2 + half]]
        inc_fid = fid_with_bootstrap(inc_gen, inc_b, n_boot=settings.n_boot, seed=settings.seed)
        inc_floor = fid_with_bootstrap(inc_real[order[:half]], inc_b, n_boot=settings.n_boot, seed=settings.seed)
        metrics.append(build_metric(
            "fid_inception", inc_fid["value"], n_pair, ci=inc_fid,
            floor={"value": inc_floor["value"], "n": floor_n, "ci": inc_floor, "method": floor_method},
            extra={"feature_space": "InceptionV3 pool (2048-d)", "features": inception.settings},
        ))

    # Condition fidelity: generated images scored by the classifier trained on real images only.
    generated_probs = classifier.predict_proba(generated)
    test_rows = held_out[held_out["split"] == "test"].reset_index(drop=True)
    test_index = np.flatnonzero(held_out["split"].to_numpy() == "test")
    real_test_probs = classifier.predict_proba([real[i] for i in test_index])
    for name, positives, negatives in FIDELITY_TASKS:
        gen_y = fidelity_labels(plan["labels"].tolist(), positives, negatives)
        real_y = fidelity_labels(test_rows["labels"].tolist(), positives, negatives)
        gen_keep, real_keep = gen_y >= 0, real_y >= 0
        if min(gen_y[gen_keep].sum(), (gen_y[gen_keep] == 0).sum(), real_y[real_keep].sum(), (real_y[real_keep] == 0).sum()) < 2:
            continue  # too few of one class to rank
        gen_auc = condition_fidelity_auroc(classifier_score(classifier, generated_probs, positives)[gen_keep], gen_y[gen_keep], n_boot=settings.n_boot, seed=settings.seed)
        real_auc = condition_fidelity_auroc(classifier_score(classifier, real_test_probs, positives)[real_keep], real_y[real_keep], n_boot=settings.n_boot, seed=settings.seed)
        metrics.append(build_metric(
            f"condition_fidelity_auroc_{name}", gen_auc["value"],
            {"generated_positive": gen_auc["n_positive"], "generated_negative": gen_auc["n_negative"]}, ci=gen_auc,
            floor={"value": real_auc["value"], "n": {"real_test_positive": real_auc["n_positive"], "real_test_negative": real_auc["n_negative"]},
                   "ci": real_auc, "method": "the same classifier's AUROC on real test images (the reference, not a lower bound)"},
            extra={"positives": list(positives), "negatives": list(negatives) if negatives else "all other labels",
                   "gap_to_real": real_auc["value"] - gen_auc["value"]},
        ))

    # Diversity: samples of one prompt should differ about as much as real images sharing a label.
    diversity_groups = []
    diversity_prompts = DIVERSITY_PROMPTS[:settings.diversity_prompts]
    for p, (label, prompt) in enumerate(diversity_prompts):
        seeds = [settings.seed + 10_000_000 + p * 100 + s for s in range(SAMPLES_PER_DIVERSITY_PROMPT)]
        diversity_groups.append(generate_cached(pipe, [prompt] * len(seeds), seeds, cache, settings, f"{model}: diversity {p + 1}/{len(diversity_prompts)}"))
    intra = intra_prompt_ms_ssim(diversity_groups, n_boot=settings.n_boot, seed=settings.seed)
    reference_values, reference_pairs = [], 0
    for label in sorted({label for label, _ in diversity_prompts}):
        same_label = [real[i] for i in range(len(real)) if label in split_labels(held_out["labels"].iloc[i])]
        if len(same_label) >= 2:
            ref = random_pair_ms_ssim(same_label, n_pairs=200, seed=settings.seed, n_boot=settings.n_boot)
            reference_values.append(ref["value"] * ref["n_pairs"])
            reference_pairs += ref["n_pairs"]
    reference = sum(reference_values) / reference_pairs
    metrics.append(build_metric(
        "diversity_intra_prompt_ms_ssim", intra["value"], {"prompts": intra["n_groups"], "pairs": intra["n_pairs"]}, ci=intra,
        floor={"value": reference, "n": {"real_pairs": reference_pairs},
               "method": "MS-SSIM of random real held-out pairs sharing a label (pair-weighted over the prompts' labels); lower means more diverse"},
        extra={"samples_per_prompt": SAMPLES_PER_DIVERSITY_PROMPT, "prompts": [p for _, p in diversity_prompts]},
    ))

    # Memorisation: nearest training image by pixel correlation, and by classifier features.
    train = manifest.query(split="train")
    train_images = load_images_uint8(train)
    nearest = nearest_training_images(generated, train_images)
    train_features = np.concatenate([
        extract([im.astype(np.float32) / 255.0 for im in train_images[s:s + 256]]) for s in range(0, len(train_images), 256)
    ])
    feature_nn = feature_nearest(generated_features, train_features)
    gen_vectors = correlation_vectors(generated)
    train_vectors = correlation_vectors([train_images[i] for i in feature_nn])
    feature_nn_corr = np.einsum("ij,ij->i", gen_vectors, train_vectors)
    rate = memorisation_rate(nearest["correlation"], settings.memorisation_threshold)
    worst = np.argsort(-nearest["correlation"])[:8]
    train_table = train.table.reset_index(drop=True)
    worst_pairs = [{
        "generated_seed": int(plan["seed"].iloc[i]), "prompt": plan["prompt"].iloc[i],
        "train_image_id": train_table["image_id"].iloc[nearest["index"][i]], "source": train_table["source"].iloc[nearest["index"][i]],
        "license": train_table["license"].iloc[nearest["index"][i]], "pixel_correlation": float(nearest["correlation"][i]),
    } for i in worst]
    metrics.append(build_metric(
        "memorisation_rate", rate["value"], {"generated": len(generated), "training": len(train_images)}, ci=rate,
        extra={"threshold": settings.memorisation_threshold, "n_flagged": rate["n_flagged"],
               "max_pixel_correlation": float(nearest["correlation"].max()),
               "median_pixel_correlation": float(np.median(nearest["correlation"])),
               "feature_nearest_rate": float((feature_nn_corr >= settings.memorisation_threshold).mean()),
               "feature_nearest_median_correlation": float(np.median(feature_nn_corr)),
               "worst_pairs": worst_pairs},
    ))

    # Plots and example images for the dashboards.
    from PIL import Image

    from xray_generator.io import atomic_write

    def write_png(array: np.ndarray, path: Path) -> None:
        atomic_write(path, lambda handle: Image.fromarray(array, mode="L").save(handle, format="PNG"), make_parents=True)

    write_png(image_grid(generated[:32], columns=8), out_dir / f"{model}_samples.png")
    pairs = [im for i in worst for im in (generated[i], train_images[nearest["index"][i]].astype(np.float32) / 255.0)]
    write_png(image_grid(pairs, columns=4), out_dir / f"{model}_memorisation_pairs.png")
    write_png(image_grid([im for group in diversity_groups for im in group], columns=SAMPLES_PER_DIVERSITY_PROMPT), out_dir / f"{model}_diversity.png")
    plot_against_floor(metrics, out_dir / f"{model}_vs_floor.png", model)

    defaults = pipe.generation_defaults
    document = write_metrics_json(
        out_dir / f"{model}.json", model=model,
        settings={
            **asdict(settings),
            "sampler": settings.sampler or defaults["sampler"], "steps": settings.steps or defaults["num_inference_steps"],
            "guidance": settings.guidance if settings.guidance is not None else defaults["guidance_scale"],
            "features": extract.settings, "classifier_labels": list(classifier.labels),
            "n_generated": len(generated), "n_real_held_out": len(real), "n_real_test": len(test_index),
            "prompts": "one per held-out image's metadata (val + test), prompt variants 0/1, no clinical-note text",
            "images": {"samples": f"{model}_samples.png", "memorisation_pairs": f"{model}_memorisation_pairs.png",
                       "diversity": f"{model}_diversity.png", "vs_floor": f"{model}_vs_floor.png"},
            "wall_seconds": round(time.time() - started, 1),
            "inception": "computed (fid_inception)" if settings.inception_weights else "not computed: no local InceptionV3 weights (pass --inception-weights to add Inception FID)",
        },
        weights_sha256=pipe_weights_sha256(pipe), metrics=metrics,
    )
    return document


def feature_nearest(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Index of each query row's nearest reference row (Euclidean), in chunks to bound memory."""
    ref_sq = (reference.astype(np.float64) ** 2).sum(1)
    out = np.empty(len(query), dtype=np.int64)
    for s in range(0, len(query), 512):
        q = query[s:s + 512].astype(np.float64)
        d = ref_sq[None, :] - 2.0 * q @ reference.T.astype(np.float64)
        out[s:s + 512] = d.argmin(1)
    return out


def pipe_weights_sha256(pipe) -> str | None:
    """SHA-256 of the generator's MANIFEST.json: one hash that pins every weights file."""
    from xray_generator.weights import sha256_file

    folder = getattr(pipe, "weights_folder", None)
    if folder is None or not (Path(folder) / "MANIFEST.json").is_file():
        return None
    return sha256_file(Path(folder) / "MANIFEST.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="ldm", help="generator family in weights/ (default ldm)")
    parser.add_argument("--n", type=int, default=1000, help="generated images for the distribution metrics (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    parser.add_argument("--sampler", choices=["dpm++", "ddim", "unipc"], default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for the CIs (default 200)")
    parser.add_argument("--classifier", default=None, help="classifier weights folder (default weights/classifier)")
    parser.add_argument("--inception-weights", default=None, help="local InceptionV3 safetensors, adds Inception FID")
    parser.add_argument("--out", default=None, help="output folder (default outputs/metrics)")
    parser.add_argument("--data-dir", default=None, help="folder with metadata.csv (default: the full set, else the sample)")


def run_from_args(args: argparse.Namespace) -> dict:
    if not 10 <= args.n <= 100_000:
        raise ValueError(f"--n must be between 10 and 100000, got {args.n}")
    settings = EvaluationSettings(
        n=args.n, seed=args.seed, sampler=args.sampler, steps=args.steps, guidance=args.guidance,
        batch_size=args.batch_size, n_boot=args.n_boot, inception_weights=args.inception_weights,
    )
    document = evaluate(args.model, settings, classifier_folder=args.classifier, out_dir=args.out, data_dir=args.data_dir)
    for metric in document["metrics"]:
        floor = f"  floor {metric['floor']['value']:.4g}" if metric["floor"] else ""
        ci = f"  [{metric['ci']['low']:.4g}, {metric['ci']['high']:.4g}]" if metric["ci"] else ""
        print(f"{metric['name']:<45} {metric['value']:.4g}{ci}{floor}  n={metric['n']}")
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xray_generator evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run_from_args(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
