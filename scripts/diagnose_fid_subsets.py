"""Where a committed run's FID comes from: its two terms, off-distribution samples, and labels drawn too strongly.

    python scripts/diagnose_fid_subsets.py                       # outputs/metrics/ldm.json's run
    python scripts/diagnose_fid_subsets.py --metrics outputs/metrics/ldm.json --block 200
    python scripts/diagnose_fid_subsets.py --roundtrip           # + the autoencoder's round trip (ldm; ~4 min)

Re-reads the committed run's images from the evaluation cache (run `python -m xray_generator
evaluate` first: it regenerates what is missing), then reports, with the run's real halves:

- the share of generated images beyond the real films' 99th-percentile feature radius, overall
  and per (age group, main finding) stratum of the prompts (a real film lands there 1 % of the time);
- FID of consecutive disjoint blocks of `--block` images against the first `--block` of real half
  B, next to each block's share beyond the radius and its Normal share;
- FID split into its mean term (the sets differ on average) and covariance term, next to the floor's;
- per label set asked for, the classifier's mean probability of each label on the generated images
  against the real held-out films with those labels: a label drawn more strongly than real films
  show it is a caricature, which the mean term sees;
- per-image descriptors (brightness, contrast as the pixel std, entropy, sharpness) of the generated
  images, real half B and the round trip: whether the films are as contrasty and sharp as film;
- framing: FID between the two kinds of Kermany film in real half B (224-px whole films, squashed,
  enlarged to 256; 256-px centre crops), and of the images generated for Kermany prompts against each;
- with `--roundtrip` (latent diffusion only): real half A encoded and decoded by the autoencoder,
  against half B. What the autoencoder alone costs in this feature space, a bound on what UNet
  training can reach.

Writes the text to `outputs/metrics/subset_check/<model>_fid_diagnosis.txt`.
"""
import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

MIN_PER_LABEL_SET = 20  # fewer images make a mean probability too noisy to read


def main(argv: list[str] | None = None) -> int:
    from xray_generator.data.manifest import load_manifest
    from xray_generator.evaluation.descriptors import DESCRIPTOR_NAMES, describe_image
    from xray_generator.evaluation.distribution import beyond_real_radius, fid_from_features, fid_terms
    from xray_generator.evaluation.report import read_metrics_json
    from xray_generator.evaluation.run import EvaluationSettings, real_halves, single_threaded_blas
    from xray_generator.evaluation.samples import draw_samples, evaluation_stratum, held_out_real
    from xray_generator.evaluation.subset_check import RERUN_SETTINGS
    from xray_generator.io import atomic_write_text
    from xray_generator.models.classifier import load_classifier
    from xray_generator.paths import outputs_dir, weights_dir
    from xray_generator.pipelines.registry import load_generator

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", default=None, help="committed metrics file (default outputs/metrics/ldm.json)")
    parser.add_argument("--block", type=int, default=200, help="images per disjoint block (default 200)")
    parser.add_argument("--roundtrip", action="store_true", help="also the autoencoder round trip of real half A (latent diffusion)")
    args = parser.parse_args(argv)
    committed = read_metrics_json(args.metrics or outputs_dir() / "metrics" / "ldm.json")
    model, saved = committed["model"], committed["settings"]
    settings = replace(EvaluationSettings(), n=saved["n_generated"], **{key: saved[key] for key in RERUN_SETTINGS if key in saved})

    manifest = load_manifest()
    held_out = held_out_real(manifest)
    generator = load_generator(model)
    drawn = draw_samples(model, generator, held_out, settings)
    classifier = load_classifier(weights_dir() / "classifier")
    extract = classifier.feature_extractor
    reference_images = [drawn.real[i] for i in np.flatnonzero(drawn.reference)]
    real = extract(reference_images)
    generated = extract(drawn.generated)
    index_a, index_b = real_halves(len(real), len(generated), settings.seed)
    real_a, real_b, gen_half = real[index_a], real[index_b], generated[:len(index_a)]

    rows = held_out.set_index("image_id").loc[drawn.requests["source_image_id"]].reset_index()
    strata = [" / ".join(evaluation_stratum(row)) for _, row in rows.iterrows()]
    tail = beyond_real_radius(real_b, real_a, generated)
    lines = [f"{model}: {len(generated)} generated images (weights {committed['weights_sha256'][:12]}), real halves of {len(index_a)}",
             f"beyond the real 99th-percentile feature radius ({tail['radius']:.2f}): {tail['beyond'].sum()} of {len(generated)} "
             f"({tail['share']:.1%}; a real film: 1%)", "", f"{'stratum (age group / finding)':<34} {'n':>5} {'beyond':>7} {'share':>7}"]
    for stratum in sorted(set(strata), key=lambda s: -strata.count(s)):
        mask = np.array([s == stratum for s in strata])
        lines.append(f"{stratum:<34} {mask.sum():>5} {tail['beyond'][mask].sum():>7} {tail['beyond'][mask].mean():>7.1%}")
    normal = np.array([s.endswith("/ Normal") for s in strata])
    lines += ["", f"FID of disjoint blocks of {args.block} (of the {len(gen_half)} the committed FID uses) against real half B's first {args.block}:"]
    with single_threaded_blas():
        for start in range(0, len(gen_half) - args.block + 1, args.block):
            block = slice(start, start + args.block)
            lines.append(f"  images {start:>4}-{start + args.block - 1:<4}: FID {fid_from_features(gen_half[block], real_b[:args.block]):6.2f}, "
                         f"beyond the radius {tail['beyond'][block].mean():5.1%}, Normal prompts {normal[block].mean():5.1%}")
        floor = fid_from_features(real_a[:args.block], real_b[:args.block])
    lines.append(f"  real half A's first {args.block} against the same: FID {floor:.2f} (the floor at this N)")

    with single_threaded_blas():
        terms = {"generated": fid_terms(gen_half, real_b), "real half A (the floor)": fid_terms(real_a, real_b)}
        if args.roundtrip:
            from xray_generator.evaluation.realism import roundtrip_images

            roundtrip = roundtrip_images(generator, [reference_images[i] for i in index_a])
            terms["round trip of real half A"] = fid_terms(extract(roundtrip), real_b)
    lines += ["", f"FID against real half B ({len(index_b)} films), split into its terms:"]
    for name, term in terms.items():
        lines.append(f"  {name:<28}: FID {term['fid']:6.2f} = mean term {term['mean_term']:6.2f} + covariance term {term['covariance_term']:6.2f}")

    # Contrast and sharpness in pixels (evaluation.descriptors, averaged per image): a UNet whose films are flatter
    # than film shows it here even where the classifier's features blur the cause.
    pixel_sets = {"generated (the FID's half)": drawn.generated[:len(index_a)], "real half B": [reference_images[i] for i in index_b]}
    if args.roundtrip:
        pixel_sets["round trip of real half A"] = roundtrip
    lines += ["", "Per-image descriptors, mean over each set: " + ", ".join(DESCRIPTOR_NAMES)]
    for name, images in pixel_sets.items():
        described = [describe_image(np.asarray(image, dtype=np.float32)) for image in images]
        lines.append(f"  {name:<28}: " + "  ".join(f"{key} {np.mean([d[key] for d in described]):.4g}" for key in DESCRIPTOR_NAMES))

    # Framing: Kermany films are stored two ways (DATASET_CARD.md): 224-px re-encodes of the whole film, squashed,
    # which the real side enlarges to 256, and 256-px centre crops. A generator that draws one kind at 256 px
    # is far from the other in this feature space; the real kinds' distance says how far.
    real_rows_b = drawn.real_rows.iloc[np.flatnonzero(drawn.reference)].iloc[index_b]
    kermany = (real_rows_b["source"].astype(str) == "pneumonia_kermany").to_numpy()
    native = real_rows_b["native_px"].to_numpy()
    squashed, cropped = real_b[kermany & (native == 224)], real_b[kermany & (native == 256)]
    asked_kermany = (rows["source"].astype(str) == "pneumonia_kermany").to_numpy()[:len(gen_half)]
    if len(squashed) >= 20 and len(cropped) >= 20:
        with single_threaded_blas():
            framing = {
                f"real 224-px (squashed) vs 256-px (cropped), {len(squashed)} vs {len(cropped)}": fid_terms(squashed, cropped),
                f"real 224-px, one half vs the other, {len(squashed) // 2} vs {len(squashed) - len(squashed) // 2}":
                    fid_terms(squashed[: len(squashed) // 2], squashed[len(squashed) // 2:]),
                f"generated for Kermany prompts ({asked_kermany.sum()}) vs real 224-px": fid_terms(gen_half[asked_kermany], squashed),
                f"generated for Kermany prompts ({asked_kermany.sum()}) vs real 256-px": fid_terms(gen_half[asked_kermany], cropped),
            }
        lines += ["", "Framing: the Kermany films of real half B by how they are stored (224-px whole films enlarged, 256-px centre crops):"]
        for name, term in framing.items():
            lines.append(f"  {name:<58}: FID {term['fid']:6.2f} = {term['mean_term']:6.2f} + {term['covariance_term']:6.2f}")

    # Which labels the generated images carry more (or less) strongly than real films asked for with the same labels.
    generated_probability, real_probability = classifier.predict_proba(drawn.generated), classifier.predict_proba(drawn.real)
    asked = rows["labels"].fillna("").to_numpy()
    real_labels = drawn.real_rows["labels"].fillna("").to_numpy()
    short = [label[:10] for label in classifier.labels]
    lines += ["", f"Classifier probability per label, mean over the images asked for each label set (>= {MIN_PER_LABEL_SET} images): "
              "generated (real held-out films with those labels)",
              f"{'labels asked for':<38} {'n gen':>5} {'n real':>6}  " + "  ".join(f"{label:>13}" for label in short)]
    for label_set in sorted(set(asked), key=lambda s: -(asked == s).sum()):
        mine, theirs = asked == label_set, real_labels == label_set
        if mine.sum() < MIN_PER_LABEL_SET or not theirs.any():
            continue
        cells = [f"{g:.2f} ({r:.2f})" for g, r in zip(generated_probability[mine].mean(0), real_probability[theirs].mean(0))]
        lines.append(f"{(label_set or '(none)')[:38]:<38} {mine.sum():>5} {theirs.sum():>6}  " + "  ".join(f"{cell:>13}" for cell in cells))
    cells = [f"{g:.2f} ({r:.2f})" for g, r in zip(generated_probability.mean(0), real_probability.mean(0))]
    lines.append(f"{'all':<38} {len(asked):>5} {len(real_labels):>6}  " + "  ".join(f"{cell:>13}" for cell in cells))
    text = "\n".join(lines)
    print(text)
    atomic_write_text(outputs_dir() / "metrics" / "subset_check" / f"{model}_fid_diagnosis.txt", text + "\n", make_parents=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
