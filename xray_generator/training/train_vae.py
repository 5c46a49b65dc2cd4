"""Stage 1: train the 1-channel AutoencoderKL on radiograph crops, then on near-full frames.

Loss = L1 + ssim_weight * (1 - SSIM) + gradient_weight * edge L1 + kl_weight * KL
       (the three pixel terms on images blurred by `reconstruction_blur_sigma` px where it is set)
       + perceptual_weight * classifier-feature distance
       + amplitude_weight * local log-amplitude L1 (phase-free: detail energy without its exact position)
       + band_power_weight * L1 of each image's log power in radial frequency bands (the realism test's spectrum bands)
       (+ adversarial_weight [x adaptive weight] * PatchGAN hinge term after `adversarial_from_step`).

The decoder recipe of the latent-diffusion autoencoder (Esser et al. 2021, Rombach et al. 2022):
reconstruction + perceptual + a hinge patch discriminator that trains from `discriminator_from_step`
and enters the decoder's loss after a warm-up, weighted by the ratio of the two losses' gradients at
the decoder's last layer (`adaptive_adversarial_weight`). `discriminator_highpass` shows it the
Laplacian too. With `latent_crops` (encoder frozen) the decoder learns from crops of the whole
films' cached latents, the latents generation decodes.

    python -m xray_generator.training.train_vae train --config configs/vae.json --run outputs/runs/vae --resume
    python -m xray_generator.training.train_vae export --run outputs/runs/vae --out outputs/runs/vae/autoencoder
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from xray_generator.data.datasets import LatentCropDataset, RandomCropDataset, load_images_uint8
from xray_generator.data.manifest import load_manifest
from xray_generator.evaluation.paired import psnr, ssim
from xray_generator.evaluation.realism import SPECTRUM_BAND_EDGES, radial_power_spectrum, spectrum_band_gaps
from xray_generator.models.autoencoder import (build_autoencoder, decoder_noise_modules, downsampling_factor, latent_description, load_autoencoder,
                                               warm_start_autoencoder)
from xray_generator.precision import cpu_bf16_autocast, training_mixed_precision
from xray_generator.training.checkpointing import EMA, CheckpointDir, CheckpointSchedule, LossLog, add_train_command
from xray_generator.training.losses import (PatchDiscriminator, adaptive_adversarial_weight, band_power_loss, gaussian_blur, gradient_loss,
                                            hinge_discriminator_loss, local_amplitude_loss, ssim_loss)
from xray_generator.training.perceptual import classifier_perceptual_loss, load_optional_classifier

LOG_FIELDS = ["step", "samples_seen", "wall_seconds", "loss", "l1", "ssim_term", "grad_term", "perc_term", "kl", "latent_drift",
              "adv_g", "adv_weight", "adv_d", "lr", "val_psnr", "val_ssim", "val_band_gap", "amp_term", "noise_strength", "band_term"]


DISCRIMINATOR_FILE = "discriminator.safetensors"


def verified_discriminator(folder: str | Path) -> Path:
    """The discriminator file of an exported autoencoder folder, checked against its MANIFEST.json."""
    from xray_generator.weights import verify_manifest

    folder = Path(folder)
    verify_manifest(folder)
    path = folder / DISCRIMINATOR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {DISCRIMINATOR_FILE} (exported before discriminators were kept, or trained without one)")
    return path


def load_config(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


@torch.no_grad()
def evaluate_reconstruction(autoencoder, frames: list[np.ndarray]) -> tuple[float, float, float]:
    """Mean PSNR/SSIM of full-frame reconstructions (posterior mean, 8-bit quantised like a saved PNG),
    and the largest power-spectrum band gap (log10) of the reconstructions against the frames: the
    realism test's texture cue, which PSNR and SSIM do not see."""
    autoencoder.eval()
    psnrs, ssims, recs = [], [], []
    for frame in frames:
        x = torch.from_numpy(frame.astype(np.float32) / 127.5 - 1.0)[None, None]
        with cpu_bf16_autocast():
            z = autoencoder.encode(x).latent_dist.mode()
            rec = autoencoder.decode(z).sample.float()
        rec8 = np.round(((rec[0, 0].clamp(-1, 1) + 1) * 127.5).numpy()) / 255.0
        ref = frame.astype(np.float64) / 255.0
        psnrs.append(psnr(ref, rec8))
        ssims.append(ssim(ref, rec8))
        recs.append(rec8)
    autoencoder.train()
    band_gap = float("nan")
    if len({f.shape for f in frames}) == 1 and frames[0].shape[0] == frames[0].shape[1]:
        frequency, real_power = radial_power_spectrum([f.astype(np.float32) / 255.0 for f in frames])
        _, rec_power = radial_power_spectrum(recs)
        band_gap = spectrum_band_gaps(real_power, rec_power, frequency)["value"]
    return float(np.mean(psnrs)), float(np.mean(ssims)), band_gap


def mean_noise_strength(autoencoder) -> float | str:
    """The decoder's mean absolute noise strength ("" for a deterministic decoder), logged to follow how much texture it draws."""
    strengths = [module.noise_strength.detach().abs().mean().item() for module in decoder_noise_modules(autoencoder)]
    return float(np.mean(strengths)) if strengths else ""


def cached_latents_per_image(config: dict, autoencoder, train_manifest) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each train image's posterior mean and std from the latent cache the UNet trainer shares (filled if missing)."""
    from xray_generator.training.train_ldm import cache_latents, latent_cache_dir

    cache_dir = latent_cache_dir(config.get("cache_dir", "outputs/cache/ldm"), config["init_from"], train_manifest)
    tensors = cache_latents(autoencoder, train_manifest, cache_dir / "train_latents.safetensors")
    means: list[torch.Tensor | None] = [None] * len(train_manifest.table)
    stds: list[torch.Tensor | None] = [None] * len(train_manifest.table)
    for key, rows in tensors.items():
        if key.startswith("rows_"):
            size = key.split("_", 1)[1]
            for i, row in enumerate(rows.tolist()):
                means[row], stds[row] = tensors[f"mean_{size}"][i], tensors[f"std_{size}"][i]
    return means, stds


def train_vae(config: dict, run_dir: str | Path, resume: bool = False, max_minutes: float | None = None, data_dir: str | Path | None = None) -> dict:
    train_cfg, data_cfg = config["train"], config["data"]
    torch.set_num_threads(train_cfg.get("num_threads", torch.get_num_threads()))
    torch.manual_seed(train_cfg.get("seed", 0))
    accelerator = Accelerator(mixed_precision=training_mixed_precision(train_cfg.get("mixed_precision", "bf16")), cpu=not torch.cuda.is_available())
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))

    manifest = load_manifest(data_dir)
    train_manifest = manifest.query(split="train")
    if data_cfg.get("max_images"):
        train_manifest.table = train_manifest.table.iloc[: data_cfg["max_images"]]
    val_manifest = manifest.query(split="val", native_px=256)
    val_frames = load_images_uint8(val_manifest)[: train_cfg.get("val_images", 32)]
    images = load_images_uint8(train_manifest)

    autoencoder = build_autoencoder(config["model"])
    if config.get("init_from"):
        # Decoder fine-tuning (as Stable Diffusion's ft-MSE VAE): start from a trained autoencoder.
        # A deeper decoder than the source's starts as the source's decoder (extra layers are identities).
        warm_start_autoencoder(autoencoder, load_autoencoder(config["init_from"]))
    if train_cfg.get("freeze_encoder") and train_cfg.get("freeze_decoder"):
        raise ValueError("freeze_encoder and freeze_decoder together leave nothing to train")
    if train_cfg.get("freeze_encoder"):
        # A frozen encoder keeps the latent space fixed, so a UNet trained on it stays valid.
        autoencoder.encoder.requires_grad_(False)
        autoencoder.quant_conv.requires_grad_(False)
    anchor = None
    if train_cfg.get("freeze_decoder"):
        # A frozen decoder leaves generation (UNet latents -> decoder) exactly as it was; the encoder
        # learns latents this decoder reconstructs better. The anchor term keeps them near the
        # original encoder's, so the latents the UNet was trained on stay the ones it sees when editing.
        autoencoder.decoder.requires_grad_(False)
        autoencoder.post_quant_conv.requires_grad_(False)
        if train_cfg.get("latent_anchor_weight", 0.0) > 0:
            anchor = build_autoencoder(config["model"])
            anchor.load_state_dict(autoencoder.state_dict())
            anchor.requires_grad_(False).eval()
    latent_crops = bool(train_cfg.get("latent_crops"))
    if latent_crops and not (train_cfg.get("freeze_encoder") and config.get("init_from")):
        raise ValueError("latent_crops needs freeze_encoder and init_from: the cached latents are the source encoder's")
    perceptual = None
    if train_cfg.get("perceptual_weight", 0.0) > 0:
        perceptual = classifier_perceptual_loss(load_optional_classifier(), train_cfg.get("perceptual_layers", ("layer1", "layer2", "layer3")))
    autoencoder = autoencoder.to(memory_format=torch.channels_last)
    discriminator = PatchDiscriminator(width=train_cfg.get("discriminator_width", 32), highpass=train_cfg.get("discriminator_highpass", False))
    if config.get("discriminator_init_from"):
        # A decoder fine-tune may start with the discriminator that trained this decoder (saved by `export`)
        # instead of a fresh one. Measured once on f8c16 (README, realism): the fresh one moved the realism
        # test and this one did not, so the shipped config leaves it out; the option stays for such comparisons.
        discriminator.load_state_dict(load_file(str(verified_discriminator(config["discriminator_init_from"]))), strict=True)
    trainable = [p for p in autoencoder.parameters() if p.requires_grad]
    # Noise strengths start at zero and Adam moves a weight by about lr per step, so at a fine-tune's lr
    # they would stay negligible for thousands of steps; they may learn faster (`noise_lr_scale`; at 20x
    # they reached a mean of 0.05 in about 300 steps, 2026-12-07).
    noise = {id(module.noise_strength) for module in decoder_noise_modules(autoencoder)}
    groups = [{"params": [p for p in trainable if id(p) not in noise], "lr_scale": 1.0}]
    if noise:
        groups.append({"params": [p for p in trainable if id(p) in noise], "lr_scale": train_cfg.get("noise_lr_scale", 1.0)})
    opt = torch.optim.AdamW(groups, lr=train_cfg["lr"], betas=(0.9, 0.99), weight_decay=0.0)
    opt_d = torch.optim.AdamW(discriminator.parameters(), lr=train_cfg["lr"], betas=(0.5, 0.9), weight_decay=0.0)
    ema = EMA(autoencoder, train_cfg.get("ema_decay", 0.999))

    ckpt = CheckpointDir(run_dir)
    log = LossLog(run_dir / "log.csv", LOG_FIELDS)
    state = {"step": 0, "samples_seen": 0, "wall_seconds": 0.0}
    if resume and (latest := ckpt.latest()) is not None:
        modules, state = ckpt.load(latest, {"optimizer": opt, "optimizer_d": opt_d})
        autoencoder.load_state_dict(modules["autoencoder"])
        discriminator.load_state_dict(modules["discriminator"])
        ema.load_state_dict(modules["ema"])
        log.truncate_after(state["step"])
        print(f"resumed from {latest.name}: step {state['step']}, {state['samples_seen']} samples")

    if latent_crops:
        factor = downsampling_factor(autoencoder)
        means, stds = cached_latents_per_image(config, autoencoder, train_manifest)
        crops = LatentCropDataset(images, means, stds, data_cfg["crop_size"] // factor, factor, length=10**9, seed=train_cfg.get("seed", 0))
        frames = LatentCropDataset(images, means, stds, data_cfg["full_crop_size"] // factor, factor, length=10**9, seed=train_cfg.get("seed", 0) + 1)
    else:
        # A crop larger than a film would be the whole (smaller) film, and a batch of unequal films cannot be stacked.
        smallest = min(min(image.shape) for image in images)
        for key in ("crop_size", "full_crop_size"):
            if data_cfg[key] > smallest:
                raise ValueError(f"data.{key} is {data_cfg[key]} px but the smallest training film is {smallest} px: use at most {smallest}")
        crops = RandomCropDataset(images, data_cfg["crop_size"], length=10**9, seed=train_cfg.get("seed", 0))
        frames = RandomCropDataset(images, data_cfg["full_crop_size"], length=10**9, seed=train_cfg.get("seed", 0) + 1)
    crop_loader = DataLoader(crops, batch_size=train_cfg["batch_size"], num_workers=0)
    frame_loader = DataLoader(frames, batch_size=train_cfg["full_batch_size"], num_workers=0)
    autoencoder, discriminator, opt, opt_d, crop_loader, frame_loader = accelerator.prepare(
        autoencoder, discriminator, opt, opt_d, crop_loader, frame_loader
    )
    crop_iter, frame_iter = iter(crop_loader), iter(frame_loader)

    max_steps = train_cfg["max_steps"]
    blur_sigma = float(train_cfg.get("reconstruction_blur_sigma", 0.0))
    full_from = int(train_cfg["full_frame_from_fraction"] * max_steps)
    schedule = CheckpointSchedule(train_cfg["checkpoint_minutes"], max_minutes, state["wall_seconds"])
    bar = tqdm(total=max_steps, initial=state["step"], desc="vae", dynamic_ncols=True, mininterval=5)

    def save(val: tuple[float, float, float] | None) -> None:
        state["wall_seconds"] = schedule.wall_seconds()
        unwrapped = accelerator.unwrap_model(autoencoder)
        ckpt.save(
            state["step"],
            {"autoencoder": unwrapped.state_dict(), "ema": ema.state_dict(), "discriminator": accelerator.unwrap_model(discriminator).state_dict()},
            {**state, "val_psnr": val[0] if val else None, "val_ssim": val[1] if val else None, "val_band_gap": val[2] if val else None},
            {"optimizer": opt, "optimizer_d": opt_d},
        )

    while state["step"] < max_steps:
        step = state["step"]
        batch = next(frame_iter) if step >= full_from else next(crop_iter)
        latent, x = batch if latent_crops else (None, batch)
        x = x.to(memory_format=torch.channels_last)
        lr = train_cfg["lr"] * min(1.0, (step + 1) / train_cfg.get("warmup_steps", 1))
        if train_cfg.get("lr_schedule") == "cosine":
            # Decay to 10% so the last steps of a fixed-length fine-tune settle instead of bouncing.
            lr *= 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * step / max_steps))
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        adversarial_from = train_cfg.get("adversarial_from_step", max_steps)
        train_d = train_cfg.get("adversarial_weight", 0.0) > 0 and step >= train_cfg.get("discriminator_from_step", adversarial_from)
        use_adv = train_cfg.get("adversarial_weight", 0.0) > 0 and step >= adversarial_from
        unwrapped = accelerator.unwrap_model(autoencoder)
        with accelerator.autocast():
            if latent_crops:
                posterior = None
                rec = unwrapped.decode(latent).sample
            else:
                posterior = autoencoder.encode(x).latent_dist
                rec = autoencoder.decode(posterior.sample()).sample
        # Losses in fp32: SSIM's variance terms and the KL's exp(logvar) are unstable in bf16.
        rec = rec.float()
        # The pixel terms may compare blurred images (`reconstruction_blur_sigma`): detail finer than the
        # latent fixes is stochastic, and a pixel loss on it pays the decoder to draw its blurred mean;
        # blurred, they keep the anatomy in place and leave the finest bands to the discriminator.
        rec_px, x_px = (gaussian_blur(rec, blur_sigma), gaussian_blur(x, blur_sigma)) if blur_sigma > 0 else (rec, x)
        l1 = (rec_px - x_px).abs().mean()
        s_term = ssim_loss(rec_px, x_px)
        g_term = gradient_loss(rec_px, x_px)
        a_term = local_amplitude_loss(rec, x) if train_cfg.get("amplitude_weight", 0.0) > 0 else torch.zeros(())
        b_term = band_power_loss(rec, x, SPECTRUM_BAND_EDGES) if train_cfg.get("band_power_weight", 0.0) > 0 else torch.zeros(())
        p_term = torch.zeros(())
        if perceptual is not None:
            with accelerator.autocast():
                p_term = perceptual(rec, x)
        kl = torch.zeros(())
        if posterior is not None:
            mean, logvar = posterior.mean.float(), posterior.logvar.float()
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean() / x[0].numel()
        rec_loss = (l1 + train_cfg["ssim_weight"] * s_term + train_cfg["gradient_weight"] * g_term
                    + train_cfg.get("perceptual_weight", 0.0) * p_term + train_cfg.get("amplitude_weight", 0.0) * a_term
                    + train_cfg.get("band_power_weight", 0.0) * b_term)
        loss = rec_loss + train_cfg["kl_weight"] * kl
        drift = torch.zeros(())
        if anchor is not None:
            with torch.no_grad():
                anchor_mean = anchor.encode(x).latent_dist.mean.float()
            drift = (mean - anchor_mean).pow(2).mean()
            loss = loss + train_cfg["latent_anchor_weight"] * drift
        adv_g, adv_weight = torch.zeros(()), torch.zeros(())
        if use_adv:
            with accelerator.autocast():
                adv_g = -discriminator(rec).float().mean()
            adv_weight = torch.tensor(float(train_cfg["adversarial_weight"]))
            if train_cfg.get("adaptive_adversarial_weight"):
                adv_weight = adv_weight * adaptive_adversarial_weight(rec_loss, adv_g, unwrapped.decoder.conv_out.weight)
            loss = loss + adv_weight * adv_g
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(trainable, 1.0)
        opt.step()
        adv_d = torch.zeros(())
        if train_d:
            with accelerator.autocast():
                adv_d = hinge_discriminator_loss(discriminator(x).float(), discriminator(rec.detach()).float())
            opt_d.zero_grad(set_to_none=True)
            accelerator.backward(adv_d)
            opt_d.step()
        ema.update(accelerator.unwrap_model(autoencoder), step)
        state["step"] += 1
        state["samples_seen"] += x.shape[0]
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", l1=f"{l1.item():.4f}")

        val = None
        out_of_time = schedule.out_of_time()
        if schedule.due(finished=state["step"] >= max_steps):
            shadow = build_autoencoder(config["model"])
            ema.copy_to(shadow)
            val = evaluate_reconstruction(shadow, val_frames)
            save(val)
            schedule.saved()
            print(f"\nstep {state['step']}: val PSNR {val[0]:.2f} dB, SSIM {val[1]:.4f}, worst spectrum band gap {val[2]:.3f} log10 (EMA, n={len(val_frames)})", flush=True)
        if state["step"] % train_cfg.get("log_every", 10) == 0 or val is not None:
            log.append({
                "step": state["step"], "samples_seen": state["samples_seen"],
                "wall_seconds": round(schedule.wall_seconds(), 1),
                "loss": loss.item(), "l1": l1.item(), "ssim_term": s_term.item(), "grad_term": g_term.item(), "perc_term": p_term.item(),
                "kl": kl.item(), "latent_drift": drift.item(), "adv_g": adv_g.item(), "adv_weight": adv_weight.item(), "adv_d": adv_d.item(), "lr": lr,
                "val_psnr": val[0] if val else "", "val_ssim": val[1] if val else "", "val_band_gap": val[2] if val else "",
                "amp_term": a_term.item(),
                "noise_strength": mean_noise_strength(accelerator.unwrap_model(autoencoder)),
                "band_term": b_term.item(),
            })
        if out_of_time:
            break
    bar.close()
    return state


def export_autoencoder(run_dir: str | Path, out_dir: str | Path, step: int | None = None, realism: str | Path | None = None) -> Path:
    """Write a checkpoint's EMA autoencoder as a diffusers folder (safetensors), atomically.

    The latest checkpoint unless `step` names another one still in the run folder. Beside the weights:
    the run's loss log up to that step (`training_log.csv`), the discriminator of that step (a decoder
    fine-tune's `discriminator_init_from`), a card (`README.md`) and `MANIFEST.json`,
    so the folder loads verified wherever it is copied. `realism` is a realism-test metrics file of
    this export's round trip (`python -m xray_generator realism --autoencoder ...`), quoted in the card.
    """
    import shutil

    from xray_generator.weights import fresh_staging_folder, replace_folder_atomically

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config = load_config(run_dir / "config.json")
    checkpoints = CheckpointDir(run_dir)
    chosen = checkpoints.latest() if step is None else run_dir / f"step-{step:08d}"
    if chosen is None or not (chosen / "state.json").is_file():
        kept = sorted(p.name for p in run_dir.glob("step-*"))
        raise FileNotFoundError(f"no checkpoint {'' if step is None else f'for step {step} '}in {run_dir} (kept: {', '.join(kept) or 'none'})")
    state = json.loads((chosen / "state.json").read_text())
    autoencoder = build_autoencoder(config["model"])
    ema = EMA(autoencoder)
    ema.load_state_dict(load_file(str(chosen / "ema.safetensors")))
    ema.copy_to(autoencoder)
    staging = fresh_staging_folder(out_dir)
    try:
        if (chosen / DISCRIMINATOR_FILE).is_file():  # so a later decoder fine-tune can start from it
            shutil.copyfile(chosen / DISCRIMINATOR_FILE, staging / DISCRIMINATOR_FILE)
        _write_autoencoder_folder(staging, autoencoder, config, state, run_dir / "log.csv", realism)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a half-written export never replaces a good one
        raise
    replace_folder_atomically(staging, out_dir)
    return out_dir


def _write_autoencoder_folder(staging: Path, autoencoder, config: dict, state: dict, log_path: Path, realism) -> None:
    import csv

    from xray_generator.weights import write_manifest

    autoencoder.save_pretrained(staging, safe_serialization=True)
    rows = []
    if log_path.is_file():
        with open(log_path, newline="") as handle:
            reader = csv.DictReader(handle)
            rows = [row for row in reader if int(float(row["step"])) <= state["step"]]
            fields = reader.fieldnames or LOG_FIELDS
        with open(staging / "training_log.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    (staging / "README.md").write_text(autoencoder_card(autoencoder, config, state, rows, realism))
    write_manifest(staging)


def autoencoder_card(autoencoder, config: dict, state: dict, log_rows: list[dict], realism: str | Path | None) -> str:
    """The exported autoencoder's README: what it is, how it was trained (from its checkpoint and log) and,
    given a realism metrics file of its round trip, how that round trip measures."""
    from xray_generator.evaluation.report import read_metrics_json

    train_cfg = config["train"]
    params = sum(p.numel() for p in autoencoder.parameters())
    decoder_params = sum(p.numel() for p in autoencoder.decoder.parameters()) + sum(p.numel() for p in autoencoder.post_quant_conv.parameters())
    lines = [
        "# Autoencoder (1-channel `AutoencoderKL`)", "",
        "Research use only, not for clinical use. Everything it decodes is synthetic.", "",
        f"- Latent: {latent_description(autoencoder)}; block widths {list(autoencoder.config.block_out_channels)}.",
        f"- Parameters: {params:,} ({decoder_params:,} in the decoder).",
        *([f"- Decoder noise inputs: {len(decoder_noise_modules(autoencoder))} resnets add Gaussian noise x a learned per-channel strength "
           f"(mean |strength| {mean_noise_strength(autoencoder):.4f}); generation draws it from the image's seed."]
          if decoder_noise_modules(autoencoder) else []),
        f"- Checkpoint: step {state['step']:,}, {state['samples_seen']:,} training crops seen, "
        f"{state['wall_seconds'] / 3600:.2f} wall-hours of CPU training; run started {state.get('started') or 'unknown'}, "
        f"this checkpoint written {state.get('updated') or 'unknown'} (UTC).",
        f"- Validation at that step (EMA weights, {train_cfg.get('val_images', 32)} val films): "
        + (f"PSNR {state['val_psnr']:.2f} dB, SSIM {state['val_ssim']:.4f}, worst spectrum band gap {state['val_band_gap']:.3f} log10."
           if state.get("val_psnr") is not None else "not recorded."),
        "- Loss: L1" + "".join(f" + {weight} x {name}" for name, weight in (
            ("(1 - SSIM)", train_cfg.get("ssim_weight", 0)), ("edge L1", train_cfg.get("gradient_weight", 0)),
            ("classifier-feature perceptual distance", train_cfg.get("perceptual_weight", 0)),
            ("local log-amplitude L1", train_cfg.get("amplitude_weight", 0)),
            ("radial band log-power L1", train_cfg.get("band_power_weight", 0)), ("KL", train_cfg.get("kl_weight", 0))) if weight)
        + (f" (pixel terms on images blurred by a {train_cfg['reconstruction_blur_sigma']} px Gaussian)" if train_cfg.get("reconstruction_blur_sigma") else "")
        + (f" + hinge patch discriminator (weight {train_cfg['adversarial_weight']}"
           f"{' x adaptive' if train_cfg.get('adaptive_adversarial_weight') else ''}, from step {train_cfg.get('adversarial_from_step')})"
           if train_cfg.get("adversarial_weight") else "") + ".",
        f"- Encoder {'frozen (decoder fine-tune of ' + str(config.get('init_from')) + ')' if train_cfg.get('freeze_encoder') else 'trained'}.",
        f"- The loss log to this step is `training_log.csv` ({len(log_rows)} rows).", "",
        "## How it was trained", "", config.get("_comment", "(no comment in the config)"), "",
    ]
    if realism is not None:
        document = read_metrics_json(realism)
        lines += ["## Round trip, measured", "",
                  f"`{Path(realism).name}`, {document.get('date', '')}: {document.get('settings', {}).get('judged', '')}.", "",
                  "| metric | value | 95 % CI | n | floor (real vs real) |", "|---|--:|--|--|--:|"]
        cues = None
        for metric in document.get("metrics", []):
            ci = f"[{metric['ci']['low']:.3f}, {metric['ci']['high']:.3f}]" if metric.get("ci") else ""
            floor = metric.get("floor") or {}
            n = metric.get("n")
            n = ", ".join(f"{side} {count}" for side, count in n.items()) if isinstance(n, dict) else n
            lines.append(f"| {metric['name']} | {metric['value']:.3f} | {ci} | {n} | "
                         f"{'' if floor.get('value') is None else format(floor['value'], '.3f')} |")
            if metric["name"] == "realism_c2st_accuracy" and metric.get("extra", {}).get("per_feature_group"):
                cues = metric["extra"]["per_feature_group"]
                cue_text = "; ".join(f"{cue} {result['value']:.3f} (floor {result['floor']:.3f})" for cue, result in cues.items())
        lines.append("")
        if cues:
            lines += [f"The realism test on each kind of feature alone: {cue_text}.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_command(sub, help="train (or resume) the autoencoder")
    export = sub.add_parser("export", help="write a checkpoint's EMA weights as a verified diffusers AutoencoderKL folder with its card")
    export.add_argument("--run", required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--step", type=int, default=None, help="a checkpoint other than the latest (still in the run folder)")
    export.add_argument("--realism", default=None, help="realism metrics JSON of this export's round trip, quoted in the card")
    args = parser.parse_args(argv)
    if args.command == "train":
        train_vae(load_config(args.config), args.run, resume=args.resume, max_minutes=args.max_minutes, data_dir=args.data_dir)
    else:
        print(export_autoencoder(args.run, args.out, step=args.step, realism=args.realism))


if __name__ == "__main__":
    main()
