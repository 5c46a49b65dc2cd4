"""Evaluate a generator family against real held-out radiographs and write `outputs/metrics/<model>.json`.

    python -m xray_generator evaluate --model ldm --n 1000
    python -m xray_generator evaluate --model dcgan_conditional --n 1000      # any family in the registry

What it measures (all in the domain feature space of our chest X-ray classifier, `weights/classifier`):

- FID and KID between generated images and one half of the real held-out images, next to the
  same metric between the two real halves (the real-vs-real floor), at equal sample sizes;
- precision, recall, density and coverage (k = 5), with the same floor;
- condition fidelity (families with conditions): the classifier's AUROC for a finding on images
  generated for requests that name it, next to its AUROC on real test images;
- diversity: intra-prompt MS-SSIM (8 prompt slots x 4 samples = 48 pairs) next to random real
  pairs sharing a label;
- memorisation: each generated image's nearest training image (in feature space and by pixel
  correlation); the share above 0.95 pixel correlation, and the worst pairs as an image;
- for the image-to-image CVAE also its paired metrics (`xray_generator.evaluation.translation`).

Which images each family is asked for, and the disk cache that makes a rerun resume, are in
`xray_generator.evaluation.samples`; the metrics here are the same for every family. The settings
record each family's parameter count and time per image.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from xray_generator.data.datasets import load_images_uint8
from xray_generator.data.manifest import load_manifest, split_labels
from xray_generator.evaluation.distribution import fid_at_fixed_size, fid_with_bootstrap, kernel_inception_distance, prdc
from xray_generator.evaluation.diversity import intra_prompt_ms_ssim, random_pair_ms_ssim
from xray_generator.evaluation.fidelity import condition_fidelity_auroc
from xray_generator.evaluation.memorisation import correlation_vectors, memorisation_rate, nearest_training_images
from xray_generator.evaluation.report import build_metric, write_metrics_json
from xray_generator.evaluation.samples import (  # noqa: F401  (generate_cached, settings_key, load_real ... are imported from here by other modules)
    DIVERSITY_PROMPTS,
    IMAGE_SIZE,
    SAMPLES_PER_DIVERSITY_PROMPT,
    DrawnSamples,
    check_family_settings,
    draw_samples,
    evaluation_prompts,
    generate_cached,
    held_out_real,
    load_real,
    pipe_weights_sha256,
    settings_key,
)
from xray_generator.paths import outputs_dir, weights_dir

# FID is also reported at this N (subsets of a larger run), so a quick rerun of this many images can be checked against it.
FID_MATCHED_N = 200

# Findings whose condition fidelity is measured: (metric name, positive labels, negative labels).
# Pneumonia counts every pneumonia subtype; the negatives are images labelled Normal.
FIDELITY_TASKS = (
    ("pneumonia_vs_normal", ("Pneumonia", "Bacterial pneumonia", "Viral pneumonia"), ("Normal",)),
    ("covid19_vs_rest", ("COVID-19",), None),
)


@dataclass(frozen=True)
class EvaluationSettings:
    n: int = 1000  # generated images (the CVAE: source films translated, at most the held-out ones there are)
    seed: int = 0
    sampler: str | None = None  # None: the model's defaults; sampler, steps, guidance and batch_size apply to ldm only
    steps: int | None = None
    guidance: float | None = None
    guidance_fraction: float | None = None
    backend: str | None = None  # None: this CPU's default (pipelines/runtime.py); ldm only
    batch_size: int = 8
    n_boot: int = 200
    kid_subsets: int = 100
    memorisation_threshold: float = 0.95
    diversity_prompts: int = len(DIVERSITY_PROMPTS)
    inception_weights: str | None = None  # a local safetensors InceptionV3 state dict, for Inception FID


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
            # A basic-bootstrap interval (FID) need not contain its value on small samples: no negative bar then.
            errors = [[max(metric["value"] - metric["ci"]["low"], 0.0), 0], [max(metric["ci"]["high"] - metric["value"], 0.0), 0]]
        ax.bar([0, 1], values, color=["#4c72b0", "#999999"], yerr=errors, capsize=3)
        ax.set_xticks([0, 1], [model, "real vs real"], fontsize=7)
        ax.set_title(textwrap.fill(metric["name"].replace("_", " "), 22), fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"{model}: generated vs real held-out, next to the real-vs-real floor (synthetic images)", fontsize=8)
    fig.tight_layout()
    save_plot(fig, path)
    plt.close(fig)


def single_threaded_blas():
    """A context in which numpy's OpenBLAS runs one thread.

    Once torch has run its OpenMP pool, a two-thread OpenBLAS `eigh` of a 512-d covariance took
    3.8 s instead of 0.05 s on our 2-core machine (the two pools oversubscribe the cores), and the
    FID bootstraps make hundreds of them. torch's own threads are not affected.
    """
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    return threadpool_limits(limits=1, user_api="blas")


def real_halves(n_real: int, n_generated: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint real halves A and B, each cut to the number of generated images if that is smaller.

    A is the floor's reference and B the model's, so the model and the floor are measured at
    the same N against the same images.
    """
    order = np.random.default_rng(seed).permutation(n_real)
    half = min(n_real // 2, n_generated)
    return order[:half], order[n_real // 2:n_real // 2 + half]


def distribution_metrics(real_features: np.ndarray, generated_features: np.ndarray, settings: EvaluationSettings) -> list[dict]:
    """FID (bootstrap CI), KID and PRDC of the generated images against real half B, each next to A vs B (the floor)."""
    index_a, index_b = real_halves(len(real_features), len(generated_features), settings.seed)
    half = len(index_a)
    real_a, real_b, gen_half = real_features[index_a], real_features[index_b], generated_features[:half]
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
    if half > FID_MATCHED_N:
        # FID at a fixed, smaller N: the yardstick a quick rerun (scripts/check_metrics_subset.py) is held to.
        matched = fid_at_fixed_size(gen_half, real_b, FID_MATCHED_N, seed=settings.seed)
        matched_floor = fid_at_fixed_size(real_a, real_b, FID_MATCHED_N, seed=settings.seed)
        metrics.append(build_metric(
            f"fid_at_{FID_MATCHED_N}", matched["value"], {"generated": FID_MATCHED_N, "real": FID_MATCHED_N}, ci=matched,
            floor={"value": matched_floor["value"], "n": {"a": FID_MATCHED_N, "b": FID_MATCHED_N}, "ci": matched_floor, "method": floor_method},
            extra={"feature_space": "classifier penultimate", "std_over_subsets": matched["std"], "n_subsets": matched["n_subsets"],
                   "drawn_from": n_pair},
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
    return metrics


def inception_fid_metric(real: Sequence[np.ndarray], generated: Sequence[np.ndarray], settings: EvaluationSettings) -> dict:
    """FID in InceptionV3 features (comparable with the literature), on the same halves; only with local weights."""
    from xray_generator.evaluation.features import inception_feature_extractor

    inception = inception_feature_extractor(settings.inception_weights)
    index_a, index_b = real_halves(len(real), len(generated), settings.seed)
    half = len(index_a)
    inc_real, inc_gen = inception(real), inception(generated[:half])
    inc_fid = fid_with_bootstrap(inc_gen, inc_real[index_b], n_boot=settings.n_boot, seed=settings.seed)
    inc_floor = fid_with_bootstrap(inc_real[index_a], inc_real[index_b], n_boot=settings.n_boot, seed=settings.seed)
    return build_metric(
        "fid_inception", inc_fid["value"], {"generated": half, "real": half}, ci=inc_fid,
        floor={"value": inc_floor["value"], "n": {"a": half, "b": half}, "ci": inc_floor,
               "method": f"real vs real: disjoint random halves of the held-out images (seed {settings.seed})"},
        extra={"feature_space": "InceptionV3 pool (2048-d)", "features": inception.settings},
    )


def fidelity_metrics(classifier, drawn: DrawnSamples, settings: EvaluationSettings) -> list[dict]:
    """Condition fidelity: images generated for a finding, scored by the classifier trained on real images only, next to real test films."""
    if not drawn.fidelity_images:
        return []  # an unconditional family: nothing was asked for
    generated_probs = classifier.predict_proba(drawn.fidelity_images)
    test_index = np.flatnonzero(drawn.real_rows["split"].to_numpy() == "test")
    test_labels = drawn.real_rows["labels"].iloc[test_index].tolist()
    real_test_probs = classifier.predict_proba([drawn.real[i] for i in test_index]) if len(test_index) else None
    metrics = []
    for name, positives, negatives in FIDELITY_TASKS:
        gen_y = fidelity_labels(drawn.fidelity_requested, positives, negatives)
        real_y = fidelity_labels(test_labels, positives, negatives)
        gen_keep, real_keep = gen_y >= 0, real_y >= 0
        if min(gen_y[gen_keep].sum(), (gen_y[gen_keep] == 0).sum(), real_y[real_keep].sum(), (real_y[real_keep] == 0).sum()) < 2:
            continue  # too few of one class to rank
        gen_auc = condition_fidelity_auroc(classifier_score(classifier, generated_probs, positives)[gen_keep], gen_y[gen_keep], n_boot=settings.n_boot, seed=settings.seed)
        real_auc = condition_fidelity_auroc(classifier_score(classifier, real_test_probs, positives)[real_keep], real_y[real_keep], n_boot=settings.n_boot, seed=settings.seed)
        extra = {"positives": list(positives), "negatives": list(negatives) if negatives else "all other labels",
                 "gap_to_real": real_auc["value"] - gen_auc["value"]}
        if drawn.kind != "text-to-image":
            extra["requested"] = ("the class names asked for; a request is positive or negative by that name alone"
                                  if drawn.kind == "noise-to-image" else
                                  "each source film translated (positive) and reconstructed (negative): pairs share the anatomy, only the label differs")
        metrics.append(build_metric(
            f"condition_fidelity_auroc_{name}", gen_auc["value"],
            {"generated_positive": gen_auc["n_positive"], "generated_negative": gen_auc["n_negative"]}, ci=gen_auc,
            floor={"value": real_auc["value"], "n": {"real_test_positive": real_auc["n_positive"], "real_test_negative": real_auc["n_negative"]},
                   "ci": real_auc, "method": "the same classifier's AUROC on real test images (the reference, not a lower bound)"},
            extra=extra,
        ))
    return metrics


def diversity_metric(drawn: DrawnSamples, settings: EvaluationSettings) -> dict:
    """Samples of one prompt slot should differ about as much as real images sharing a label."""
    window = drawn.ms_ssim_window
    intra = intra_prompt_ms_ssim(drawn.diversity_groups, win_size=window, n_boot=settings.n_boot, seed=settings.seed)
    reference_values, reference_pairs = [], 0
    for _, indices in drawn.diversity_reference:
        if len(indices) >= 2:
            ref = random_pair_ms_ssim([drawn.real[i] for i in indices], n_pairs=200, seed=settings.seed, n_boot=settings.n_boot, win_size=window)
            reference_values.append(ref["value"] * ref["n_pairs"])
            reference_pairs += ref["n_pairs"]
    floor = None
    if reference_pairs:
        floor = {"value": sum(reference_values) / reference_pairs, "n": {"real_pairs": reference_pairs},
                 "method": "MS-SSIM of random real held-out pairs sharing a label (pair-weighted over the prompts' labels); lower means more diverse"}
    extra = {"samples_per_prompt": SAMPLES_PER_DIVERSITY_PROMPT, "prompts": drawn.diversity_requests}
    if drawn.kind != "text-to-image":
        extra["reference_labels"] = [label for label, _ in drawn.diversity_reference]
        extra["win_size"] = window
        if drawn.kind == "image-to-image":
            extra["note"] = ("a prompt slot is one source film: its samples are latent draws that share the source's anatomy "
                             "by design, so this measures how much the latent varies, not mode collapse")
    return build_metric(
        "diversity_intra_prompt_ms_ssim", intra["value"], {"prompts": intra["n_groups"], "pairs": intra["n_pairs"]}, ci=intra,
        floor=floor, extra=extra,
    )


def memorisation_metric(drawn: DrawnSamples, generated_features: np.ndarray, train, extract, settings: EvaluationSettings) -> tuple[dict, list[np.ndarray]]:
    """Nearest training image by pixel correlation and by classifier features: the metric, and the 8 worst pairs as images (generated, training)."""
    generated = drawn.generated
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
    # The floor: real held-out films of other patients reach the threshold too (several films of one child,
    # the same positioning), so a rate is a copy signal only above what they give.
    real_nearest = nearest_training_images(drawn.real, train_images)["correlation"]
    real_rate = memorisation_rate(real_nearest, settings.memorisation_threshold)
    worst = np.argsort(-nearest["correlation"])[:8]
    train_table = train.table.reset_index(drop=True)
    worst_pairs = [{
        "generated_seed": int(drawn.requests["seed"].iloc[i]), "prompt": drawn.requests["request"].iloc[i],
        "train_image_id": train_table["image_id"].iloc[nearest["index"][i]], "source": train_table["source"].iloc[nearest["index"][i]],
        "license": train_table["license"].iloc[nearest["index"][i]], "pixel_correlation": float(nearest["correlation"][i]),
    } for i in worst]
    metric = build_metric(
        "memorisation_rate", rate["value"], {"generated": len(generated), "training": len(train_images)}, ci=rate,
        floor={"value": real_rate["value"], "n": {"real": len(drawn.real), "training": len(train_images)}, "ci": real_rate,
               "method": "real held-out films (patient-disjoint from the training split) against the training films, same threshold"},
        extra={"threshold": settings.memorisation_threshold, "n_flagged": rate["n_flagged"],
               "max_pixel_correlation": float(nearest["correlation"].max()),
               "median_pixel_correlation": float(np.median(nearest["correlation"])),
               "real_median_pixel_correlation": float(np.median(real_nearest)),
               "feature_nearest_rate": float((feature_nn_corr >= settings.memorisation_threshold).mean()),
               "feature_nearest_median_correlation": float(np.median(feature_nn_corr)),
               "worst_pairs": worst_pairs,
               **({"sources": source_memorisation(drawn, real_nearest, nearest["correlation"], settings.memorisation_threshold)}
                  if drawn.kind == "image-to-image" else {})},
    )
    pairs = [im for i in worst for im in (generated[i], train_images[nearest["index"][i]].astype(np.float32) / 255.0)]
    return metric, pairs


def source_memorisation(drawn: DrawnSamples, real_correlation: np.ndarray, translation_correlation: np.ndarray, threshold: float) -> dict:
    """For a translation: do its source films already sit that close to a training film?

    A translation keeps its source's anatomy, so a flagged translation may only inherit its source's
    likeness to a training film (several films of one child, the same positioning) rather than copy
    anything. The same nearest-training-image test on the sources tells the two apart; `real_correlation`
    is that test's result for every real held-out film (the memorisation floor), so the sources' are looked up.
    """
    position = {image_id: i for i, image_id in enumerate(drawn.real_rows["image_id"])}
    source_correlation = real_correlation[[position[image_id] for image_id in drawn.requests["source_image_id"]]]
    source_rate = memorisation_rate(source_correlation, threshold)
    flagged = translation_correlation >= threshold
    return {
        "n": len(source_correlation), "rate": float(source_rate["value"]), "n_flagged": int(source_rate["n_flagged"]),
        "ci_low": float(source_rate["ci_low"]), "ci_high": float(source_rate["ci_high"]),
        "max_pixel_correlation": float(source_correlation.max()),
        "translations_flagged_whose_source_is_flagged": int((flagged & (source_correlation >= threshold)).sum()),
        "translations_flagged": int(flagged.sum()),
        "note": "the source films (real, held out) against the training films, by the same test",
    }


def evaluate(
    model: str = "ldm",
    settings: EvaluationSettings = EvaluationSettings(),
    classifier_folder: str | Path | None = None,
    out_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    pipe=None,
) -> dict:
    """Run every metric for one generator family; write the metrics JSON, plots and example images.

    `pipe` is an already loaded generator of family `model` (default: `load_generator(model)`).
    """
    from xray_generator.models.classifier import load_classifier
    from xray_generator.pipelines.registry import load_generator

    started = time.time()
    check_family_settings(model, settings)
    out_dir = Path(out_dir) if out_dir is not None else outputs_dir() / "metrics"
    generator = pipe if pipe is not None else load_generator(model)
    classifier = load_classifier(Path(classifier_folder) if classifier_folder else weights_dir() / "classifier")
    extract = classifier.feature_extractor
    manifest = load_manifest(data_dir)

    # The images judged: generated ones, and the real held-out films of the family's data at its size.
    drawn = draw_samples(model, generator, held_out_real(manifest), settings, data_dir, classifier)
    real, generated = drawn.real, drawn.generated
    reference = [real[i] for i in np.flatnonzero(drawn.reference)]
    real_features, generated_features = extract(reference), extract(generated)

    with single_threaded_blas():
        metrics = distribution_metrics(real_features, generated_features, settings)
        if settings.inception_weights:
            metrics.append(inception_fid_metric(reference, generated, settings))
        metrics += fidelity_metrics(classifier, drawn, settings)
        metrics.append(diversity_metric(drawn, settings))
        memorisation, worst_pairs = memorisation_metric(drawn, generated_features, manifest.query(split="train"), extract, settings)
        metrics.append(memorisation)
    metrics += drawn.extra_metrics

    # Plots and example images for the dashboards.
    from PIL import Image

    from xray_generator.io import atomic_write

    def write_png(array: np.ndarray, path: Path) -> None:
        atomic_write(path, lambda handle: Image.fromarray(array, mode="L").save(handle, format="PNG"), make_parents=True)

    images = {"samples": f"{model}_samples.png", "memorisation_pairs": f"{model}_memorisation_pairs.png",
              "diversity": f"{model}_diversity.png", "vs_floor": f"{model}_vs_floor.png"}
    write_png(image_grid(generated[:32], columns=8), out_dir / images["samples"])
    write_png(image_grid(worst_pairs, columns=4), out_dir / images["memorisation_pairs"])
    write_png(image_grid([im for group in drawn.diversity_groups for im in group], columns=SAMPLES_PER_DIVERSITY_PROMPT), out_dir / images["diversity"])
    plot_against_floor(metrics, out_dir / images["vs_floor"], model)
    for name, write in drawn.extra_images.items():
        images[name] = f"{model}_{name}.png"
        write(out_dir / images[name])

    document = write_metrics_json(
        out_dir / f"{model}.json", model=model,
        settings={
            **asdict(settings), **drawn.settings,
            "features": extract.settings, "classifier_labels": list(classifier.labels),
            "n_generated": len(generated), "n_real_held_out": len(real), "n_real_reference": len(reference),
            "n_real_test": int((drawn.real_rows["split"] == "test").sum()),
            "images": images,
            "wall_seconds": round(time.time() - started, 1),
            "inception": "computed (fid_inception)" if settings.inception_weights else "not computed: no local InceptionV3 weights (pass --inception-weights to add Inception FID)",
        },
        weights_sha256=drawn.weights_sha256, metrics=metrics,
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from xray_generator.pipelines.registry import GENERATOR_FAMILIES

    parser.add_argument("--model", default="ldm", help=f"generator family in weights/: {', '.join(GENERATOR_FAMILIES)} (default ldm)")
    parser.add_argument("--n", type=int, default=1000,
                        help="generated images for the distribution metrics (default 1000; the CVAE translates at most the held-out Normal films there are)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (ldm only; default: the model's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (ldm only; default: the model's)")
    parser.add_argument("--guidance-fraction", type=float, default=None,
                        help="share of the steps, noisiest first, that are guided (ldm only; default: the model's)")
    parser.add_argument("--sampler", choices=["dpm++", "ddim", "unipc"], default=None, help="ldm only")
    parser.add_argument("--backend", default=None,
                        help="what runs the UNet and decoder: torch, onnxruntime or openvino (ldm only; default: this CPU's fastest)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per sampler call (ldm only)")
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
        guidance_fraction=args.guidance_fraction, backend=args.backend, batch_size=args.batch_size, n_boot=args.n_boot, inception_weights=args.inception_weights,
    )
    check_family_settings(args.model, settings)  # before any weights load
    if args.backend is not None:
        from xray_generator.pipelines.runtime import check_backend

        check_backend(args.backend)
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
