"""Stage 2: train the text-conditioned UNet on cached VAE latents and cached text embeddings.

Images are never resized: 256-px frames give 32x32 latents and the 224-px Kermany copies 28x28;
each batch comes from one size bucket (the UNet is convolutional, so both teach it).

    python -m xray_generator.training.train_ldm train --config configs/ldm.json --run outputs/runs/ldm --resume
    python -m xray_generator.training.train_ldm export --run outputs/runs/ldm --out weights/ldm
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDPMScheduler
from safetensors.torch import load_file
from tqdm import tqdm

from xray_generator.data.datasets import load_images_uint8
from xray_generator.data.manifest import Manifest, load_manifest, sampling_weights
from xray_generator.data.preprocessing import resize_square
from xray_generator.data.prompts import prompt_variants
from xray_generator.distributed import check_launch
from xray_generator.io import atomic_save_safetensors, atomic_write_text
from xray_generator.model_vocabulary import TRAINING_VOCABULARY_FILE, training_vocabulary, write_training_vocabulary
from xray_generator.models.autoencoder import LATENT_PACKING_KEY, latent_normalisation_fields, load_autoencoder, normalise_latents
from xray_generator.models.text_encoder import FrozenTextEncoder, TextProjection
from xray_generator.models.unet import build_unet, copy_matching_tensors
from xray_generator.pipelines.latent_diffusion import DEFAULT_GENERATION, PIPELINE_FILE, SAMPLERS, XRayDiffusionPipeline
from xray_generator.precision import cpu_bf16_autocast, note_training_precision, training_mixed_precision
from xray_generator.training.checkpointing import EMA, CheckpointDir, CheckpointSchedule, LossLog, agreed, check_ranks_agree, process_slice
from xray_generator.weights import MANIFEST_NAME, replace_folder_atomically, verify_manifest, write_manifest

LOG_FIELDS = ["step", "samples_seen", "wall_seconds", "loss", "lr", "val_loss"]
# Prompts shown in the sample grid written at every checkpoint (also used by the model card).
MONITOR_PROMPTS = (
    "Normal pediatric chest radiograph, clear lungs.",
    "Adult PA chest radiograph: right lower lobe pneumonia.",
    "Bilateral peripheral ground-glass opacities consistent with COVID-19.",
    "Pediatric AP chest radiograph: viral pneumonia.",
)


def load_config(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


# ---------------------------------------------------------------------------- caches
def _manifest_digest(manifest: Manifest) -> str:
    return hashlib.sha256(manifest.table.to_csv(index=False).encode()).hexdigest()[:12]


def latent_cache_dir(base: str | Path, autoencoder_dir: str | Path, train_manifest: Manifest) -> Path:
    """Where the latents of `train_manifest` under the autoencoder in `autoencoder_dir` are cached.

    Keyed by the encoder's weights and the train table, so the UNet trainer and a frozen-encoder
    decoder fine-tune share one cache (a fine-tuned decoder exported beside the same encoder finds it too),
    and any change to either encodes anew.
    """
    vae_digest = encoder_digest(Path(autoencoder_dir) / "diffusion_pytorch_model.safetensors")[:12]
    # Packing lays the same weights' latents out differently (models/autoencoder.py), so it is part of the key.
    packing = json.loads((Path(autoencoder_dir) / "config.json").read_text()).get(LATENT_PACKING_KEY, 1)
    packed = f"_packed{packing}" if packing != 1 else ""
    return Path(base) / f"encoder-{vae_digest}{packed}_data-{_manifest_digest(train_manifest)}"


def encoder_digest(weights_file: str | Path) -> str:
    """sha256 over the encoder half's tensors (`encoder.*`, `quant_conv.*`) of an autoencoder file: all a latent depends on."""
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(weights_file), framework="pt") as handle:
        for key in sorted(key for key in handle.keys() if key.startswith(("encoder.", "quant_conv."))):
            tensor = handle.get_tensor(key).contiguous()
            digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@torch.no_grad()
def cache_latents(autoencoder: AutoencoderKL, manifest: Manifest, cache_file: Path, batch_size: int = 16,
                  resize_to: int | None = None) -> dict[str, torch.Tensor]:
    """Posterior mean and std of every image, grouped by latent size; cached as safetensors.

    `resize_to` first brings every film to that square size (`resize_square`, as the evaluation's real
    side gets it); the cache file's name then carries the size.
    """
    if resize_to:
        cache_file = cache_file.with_name(f"{cache_file.stem}_{resize_to}px{cache_file.suffix}")
    if cache_file.is_file():
        return load_file(str(cache_file))
    images = load_images_uint8(manifest)
    if resize_to:
        images = [resize_square(image, resize_to) for image in images]
    buckets: dict[int, list[int]] = {}
    for row, image in enumerate(images):
        buckets.setdefault(image.shape[0], []).append(row)
    tensors: dict[str, torch.Tensor] = {}
    autoencoder.eval()
    for size, rows in tqdm(sorted(buckets.items()), desc="encode latents"):
        means, stds = [], []
        for start in range(0, len(rows), batch_size):
            chunk = np.stack([images[r] for r in rows[start : start + batch_size]]).astype(np.float32) / 127.5 - 1.0
            with cpu_bf16_autocast():
                dist = autoencoder.encode(torch.from_numpy(chunk)[:, None]).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
        tensors[f"mean_{size}"] = torch.cat(means).half()
        tensors[f"std_{size}"] = torch.cat(stds).half()
        tensors[f"rows_{size}"] = torch.tensor(rows, dtype=torch.int64)
    atomic_save_safetensors(tensors, cache_file)
    return tensors


@torch.no_grad()
def cache_text(encoder: FrozenTextEncoder, manifest: Manifest, variants: int, cache_file: Path) -> dict[str, torch.Tensor]:
    """Unique prompts' encoder states (bf16) and masks, plus each image's variant -> prompt index table.

    The cache file's name carries a digest of the prompts, so a change to the prompt builder (or its
    report table) re-encodes instead of silently training on the old prompts.
    """
    per_image = [prompt_variants(row, variants) for _, row in manifest.table.iterrows()]
    digest = hashlib.sha256(json.dumps(per_image).encode()).hexdigest()[:12]
    cache_file = cache_file.with_name(f"{cache_file.stem}_prompts-{digest}{cache_file.suffix}")
    if cache_file.is_file():
        return load_file(str(cache_file))
    unique = sorted({p for prompts in per_image for p in prompts} | {""})
    index = {p: i for i, p in enumerate(unique)}
    states, masks = [], []
    for start in tqdm(range(0, len(unique), 64), desc="encode prompts"):
        s, m = encoder.encode(unique[start : start + 64])
        states.append(s.bfloat16())
        masks.append(m)
    tensors = {
        "states": torch.cat(states),
        "masks": torch.cat(masks).to(torch.uint8),
        "variant_index": torch.tensor([[index[p] for p in prompts] for prompts in per_image], dtype=torch.int64),
        "empty_index": torch.tensor([index[""]]),
    }
    atomic_save_safetensors(tensors, cache_file, metadata={"prompts": json.dumps(unique)})
    return tensors


def latent_statistics(latents: dict[str, torch.Tensor], per_channel: bool = False) -> dict:
    """The autoencoder config fields that give the latents zero mean and unit spread over the train set.

    One shift and scale for all channels (`shift_factor`, `scaling_factor`), or with `per_channel` a mean and
    spread per channel (`latents_mean`, `latents_std`; `scaling_factor` 1): see `models.autoencoder.normalise_latents`.
    """
    means = [v.float() for k, v in latents.items() if k.startswith("mean_")]
    if per_channel:
        channels = torch.cat([m.transpose(0, 1).reshape(m.shape[1], -1) for m in means], dim=1)
        return {"scaling_factor": 1.0, "shift_factor": 0.0,
                "latents_mean": [float(v) for v in channels.mean(dim=1)], "latents_std": [float(v) for v in channels.std(dim=1)]}
    flat = torch.cat([m.flatten() for m in means])
    return {"scaling_factor": float(1.0 / flat.std()), "shift_factor": float(flat.mean()), "latents_mean": None, "latents_std": None}


# ---------------------------------------------------------------------------- training
def train_ldm(config: dict, run_dir: str | Path, resume: bool = False, max_minutes: float | None = None, data_dir: str | Path | None = None) -> dict:
    train_cfg, data_cfg = config["train"], config["data"]
    torch.set_num_threads(train_cfg.get("num_threads", torch.get_num_threads()))
    check_launch()
    accelerator = Accelerator(mixed_precision=training_mixed_precision(train_cfg.get("mixed_precision", "bf16")), cpu=not torch.cuda.is_available())
    # The same seed on every process: each draws the same global batch and trains on its slice (process_slice).
    torch.manual_seed(train_cfg.get("seed", 0))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))

    manifest = load_manifest(data_dir)
    train_manifest = manifest.query(split="train")
    val_manifest = manifest.query(split="val", native_px=256)
    if data_cfg.get("max_images"):
        train_manifest.table = train_manifest.table.iloc[: data_cfg["max_images"]]
        val_manifest.table = val_manifest.table.iloc[: data_cfg["max_images"]]
    # What the model learns from, per finding: exported beside the weights (the honest vocabulary).
    if accelerator.is_main_process:
        write_training_vocabulary(run_dir, training_vocabulary(train_manifest.table, f"The train split of {manifest.root}."))

    autoencoder_dir = Path(config["autoencoder"])
    autoencoder = load_autoencoder(autoencoder_dir)
    cache_dir = latent_cache_dir(config.get("cache_dir", "outputs/cache/ldm"), autoencoder_dir, train_manifest)
    encoder = FrozenTextEncoder(config["text_encoder"], max_length=config.get("text_max_length", 64))
    with accelerator.main_process_first():  # the main process fills the caches; the others then read them
        # data.resize_to: every film at the generation size. Without it the 224-px Kermany re-encodes (full films,
        # squashed) train only 28x28 latents, so at 256 px the model draws only the 256-px centre crops, while
        # the evaluation's real side holds both kinds (README, "The framing gap").
        train_latents = cache_latents(autoencoder, train_manifest, cache_dir / "train_latents.safetensors", resize_to=data_cfg.get("resize_to"))
        val_latents = cache_latents(autoencoder, val_manifest, cache_dir / "val_latents.safetensors")
        text = cache_text(encoder, train_manifest, data_cfg["prompt_variants"], cache_dir / f"train_text_{encoder.name}.safetensors")
        val_text = cache_text(encoder, val_manifest, 1, cache_dir / f"val_text_{encoder.name}.safetensors")
    normalisation = latent_statistics(train_latents, per_channel=config.get("latent_normalisation", "global") == "per_channel")
    ckpt = CheckpointDir(run_dir)
    # `--resume` on a run with no checkpoint yet is a first start (the README's commands always pass it),
    # so what a first start does (the warm start below) must depend on the checkpoint, not on the flag.
    latest = ckpt.latest() if resume else None
    shipped = None
    if config.get("init_from") and config.get("warm_start_from"):
        raise ValueError("init_from (same autoencoder) and warm_start_from (a new one) exclude each other")
    if config.get("init_from"):
        # Fine-tuning a shipped pipeline (verified against its MANIFEST) on this data: its UNet learned
        # latents of exactly this encoder, normalised by its own statistics. New statistics (the data
        # changed) would shift every input it sees, so the shipped ones are kept.
        shipped = XRayDiffusionPipeline.from_pretrained(config["init_from"], text_encoder=encoder, torch_dtype=torch.float32)
        check_same_encoder(autoencoder, shipped.vae, str(autoencoder_dir))
        normalisation = latent_normalisation_fields(shipped.vae.config)
    autoencoder.register_to_config(**normalisation)

    unet = build_unet(config["unet"])
    projection = TextProjection(encoder.name, encoder.hidden_size, config["unet"]["cross_attention_dim"])
    if shipped is not None:
        unet.load_state_dict(shipped.unet.float().state_dict(), strict=True)
        projection.load_state_dict(shipped.text_projection.float().state_dict(), strict=True)
        del shipped
    elif config.get("warm_start_from") and latest is None:
        # A new autoencoder: its own latent statistics (above), and the UNet's inner layers and the text
        # projection from a trained pipeline, which already know anatomy and the prompts' words.
        source = XRayDiffusionPipeline.from_pretrained(config["warm_start_from"], text_encoder=encoder, torch_dtype=torch.float32)
        fresh = copy_matching_tensors(unet, source.unet.float().state_dict())
        projection.load_state_dict(source.text_projection.float().state_dict(), strict=True)
        del source
        print(f"warm start from {config['warm_start_from']}: all but {len(fresh)} UNet tensors ({', '.join(fresh)})", flush=True)
    noise_scheduler = DDPMScheduler(**config["scheduler"])
    params = list(unet.parameters()) + list(projection.parameters())
    opt = torch.optim.AdamW(params, lr=train_cfg["lr"], betas=(0.9, 0.999), weight_decay=train_cfg.get("weight_decay", 0.01))
    ema_unet = EMA(unet, train_cfg["ema_decay"])
    ema_projection = EMA(projection, train_cfg["ema_decay"])

    log = LossLog(run_dir / "log.csv", LOG_FIELDS)
    state = {"step": 0, "samples_seen": 0, "wall_seconds": 0.0}
    if latest is not None:
        modules, state = ckpt.load(latest, {"optimizer": opt})
        unet.load_state_dict(modules["unet"])
        projection.load_state_dict(modules["text_projection"])
        ema_unet.load_state_dict(modules["ema_unet"])
        ema_projection.load_state_dict(modules["ema_text_projection"])
        if accelerator.is_main_process:
            log.truncate_after(state["step"])
        print(f"resumed from {latest.name}: step {state['step']}, {state['samples_seen']} samples", flush=True)
    unet.to(memory_format=torch.channels_last)
    unet, projection, opt = accelerator.prepare(unet, projection, opt)
    device = accelerator.device

    alphas_cumprod = noise_scheduler.alphas_cumprod
    buckets = sorted(int(k.split("_")[1]) for k in train_latents if k.startswith("mean_"))
    # Draw weights per image (data.label_weights), grouped like the latents; all 1 is the plain mix.
    image_weights = sampling_weights(train_manifest.table["labels"], data_cfg.get("label_weights", {}))
    row_weights = [image_weights[train_latents[f"rows_{b}"].numpy()] for b in buckets]
    weighted = bool(data_cfg.get("label_weights"))
    rng = np.random.default_rng(train_cfg.get("seed", 0) + state["step"])  # the same on every process (global batch)
    mine = process_slice(accelerator, train_cfg["batch_size"])
    # An explicit generator, so what the caches or model building drew on one process cannot shift another's noise.
    noise_generator = torch.Generator().manual_seed(train_cfg.get("seed", 0) + state["step"])
    states_table, masks_table = text["states"], text["masks"].bool()
    empty_index = int(text["empty_index"][0])

    def text_batch(prompt_indices: torch.Tensor, proj) -> tuple[torch.Tensor, torch.Tensor]:
        return proj(states_table[prompt_indices].float().to(device)), masks_table[prompt_indices].to(device)

    # A fixed validation set: same images, timesteps and noise every time, so the curve is comparable.
    val_gen = torch.Generator().manual_seed(1234)
    val_size = max(int(k.split("_")[1]) for k in val_latents if k.startswith("mean_"))
    val_mean = val_latents[f"mean_{val_size}"].float()[: train_cfg.get("val_images", 64)]
    val_rows = val_latents[f"rows_{val_size}"][: len(val_mean)]
    val_z = normalise_latents(val_mean, autoencoder.config)
    val_noise = torch.randn(val_z.shape, generator=val_gen)
    val_t = torch.linspace(20, noise_scheduler.config.num_train_timesteps - 20, len(val_z)).long()
    val_prompts = val_text["variant_index"][val_rows, 0]

    def loss_for(model, proj, z: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        noisy = noise_scheduler.add_noise(z, noise, t)
        target = noise_scheduler.get_velocity(z, noise, t) if noise_scheduler.config.prediction_type == "v_prediction" else noise
        hidden, mask = text_batch(prompts, proj)
        with accelerator.autocast():
            prediction = model(noisy.to(memory_format=torch.channels_last), t.to(device), encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        per_sample = ((prediction.float() - target) ** 2).mean(dim=(1, 2, 3))
        snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
        gamma = train_cfg.get("min_snr_gamma")
        if gamma:  # min-SNR weighting (Hang et al. 2023), in its v-prediction form
            weight = torch.clamp(snr, max=gamma) / (snr + 1) if noise_scheduler.config.prediction_type == "v_prediction" else torch.clamp(snr, max=gamma) / snr
            per_sample = per_sample * weight.to(device)
        return per_sample.mean()

    @torch.no_grad()
    def validation_loss() -> float:
        shadow_unet, shadow_proj = build_unet(config["unet"]), TextProjection(encoder.name, encoder.hidden_size, config["unet"]["cross_attention_dim"])
        ema_unet.copy_to(shadow_unet)
        ema_projection.copy_to(shadow_proj)
        shadow_unet.eval()
        losses = []
        for start in range(0, len(val_z), 16):
            sl = slice(start, start + 16)
            hidden, mask = shadow_proj(val_text["states"][val_prompts[sl]].float()), val_text["masks"][val_prompts[sl]].bool()
            noisy = noise_scheduler.add_noise(val_z[sl], val_noise[sl], val_t[sl])
            target = noise_scheduler.get_velocity(val_z[sl], val_noise[sl], val_t[sl]) if noise_scheduler.config.prediction_type == "v_prediction" else val_noise[sl]
            with cpu_bf16_autocast():
                prediction = shadow_unet(noisy, val_t[sl], encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
            losses.append(((prediction.float() - target) ** 2).mean().item())
        return float(np.mean(losses))

    def build_ema_pipeline() -> XRayDiffusionPipeline:
        shadow_unet, shadow_proj = build_unet(config["unet"]), TextProjection(encoder.name, encoder.hidden_size, config["unet"]["cross_attention_dim"])
        ema_unet.copy_to(shadow_unet)
        ema_projection.copy_to(shadow_proj)
        pipe = XRayDiffusionPipeline(autoencoder, shadow_unet.eval(), shadow_proj.eval(), noise_scheduler, encoder)
        pipe.generation_defaults.update(config.get("generation_defaults", {}))
        return pipe

    max_steps = train_cfg["max_steps"]
    schedule = CheckpointSchedule(train_cfg["checkpoint_minutes"], max_minutes, state["wall_seconds"])
    bar = tqdm(total=max_steps, initial=state["step"], desc="ldm", dynamic_ncols=True, mininterval=10, disable=not accelerator.is_main_process)
    while state["step"] < max_steps:
        step = state["step"]
        b, rows = draw_batch(rng, row_weights, train_cfg["batch_size"] * accelerator.num_processes, weighted)
        bucket = buckets[b]
        mean = train_latents[f"mean_{bucket}"][rows].float()
        std = train_latents[f"std_{bucket}"][rows].float()
        z = normalise_latents(mean + std * torch.randn(mean.shape, generator=noise_generator), autoencoder.config)
        image_rows = train_latents[f"rows_{bucket}"][rows]
        variant = torch.from_numpy(rng.integers(0, text["variant_index"].shape[1], len(rows)))
        prompts = text["variant_index"][image_rows, variant]
        drop = torch.from_numpy(rng.random(len(rows)) < data_cfg["prompt_dropout"])
        prompts = torch.where(drop, torch.full_like(prompts, empty_index), prompts)
        noise = torch.randn(z.shape, generator=noise_generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(rows),), generator=noise_generator)
        lr = train_cfg["lr"] * min(1.0, (step + 1) / train_cfg.get("warmup_steps", 1))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = loss_for(unet, projection, z[mine].to(device), noise[mine].to(device), t[mine], prompts[mine])
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        opt.step()
        # The EMA warm-up exists to forget a random start. A fine-tune (init_from) starts from the
        # shipped model, so `ema_warmup: false` keeps it in the average: a constant decay from step 0.
        ema_step = step if train_cfg.get("ema_warmup", True) else None
        ema_unet.update(accelerator.unwrap_model(unet), ema_step)
        ema_projection.update(accelerator.unwrap_model(projection), ema_step)
        state["step"] += 1
        state["samples_seen"] += len(rows)  # the global batch
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")

        out_of_time = agreed(accelerator, schedule.out_of_time())
        val = None
        if schedule.due(finished=state["step"] >= max_steps) and accelerator.is_main_process:
            val = validation_loss()
            state["wall_seconds"] = schedule.wall_seconds()
            note_training_precision(state, accelerator.mixed_precision)
            ckpt.save(
                state["step"],
                {
                    "unet": accelerator.unwrap_model(unet).state_dict(),
                    "text_projection": accelerator.unwrap_model(projection).state_dict(),
                    "ema_unet": ema_unet.state_dict(),
                    "ema_text_projection": ema_projection.state_dict(),
                },
                {**state, "val_loss": val, "latent_shift": normalisation["shift_factor"], "latent_scale": normalisation["scaling_factor"],
                 "latents_mean": normalisation["latents_mean"], "latents_std": normalisation["latents_std"], "autoencoder": str(autoencoder_dir)},
                {"optimizer": opt},
            )
            if train_cfg.get("sample_grid", True):
                write_sample_grid(build_ema_pipeline(), run_dir / "samples" / f"step-{state['step']:08d}.png")
            schedule.saved()
            print(f"\nstep {state['step']}: val loss {val:.4f} (EMA), {state['samples_seen']} samples, {state['wall_seconds'] / 3600:.2f} h", flush=True)
        if accelerator.is_main_process and (state["step"] % train_cfg.get("log_every", 10) == 0 or val is not None):
            log.append({
                "step": state["step"], "samples_seen": state["samples_seen"],
                "wall_seconds": round(schedule.wall_seconds(), 1),
                "loss": loss.item(), "lr": lr, "val_loss": val if val is not None else "",
            })
        if out_of_time:
            break
    bar.close()
    check_ranks_agree(accelerator, {"unet": accelerator.unwrap_model(unet), "text_projection": accelerator.unwrap_model(projection)}, run_dir)
    accelerator.wait_for_everyone()  # the main process's last checkpoint is complete when any process returns
    return state


def draw_batch(rng: np.random.Generator, row_weights: list[np.ndarray], batch_size: int, weighted: bool) -> tuple[int, np.ndarray]:
    """One training batch: a latent-size bucket (by its share of the weight), then `batch_size` rows of it.

    `row_weights` holds each bucket's per-image draw weights. Unweighted (all 1) makes exactly the draws
    runs made before weights existed, so those runs resume and reproduce as they did.
    """
    bucket_weights = np.array([w.sum() for w in row_weights], dtype=np.float64)
    b = int(rng.choice(len(row_weights), p=bucket_weights / bucket_weights.sum()))
    if weighted:
        return b, rng.choice(len(row_weights[b]), batch_size, p=row_weights[b] / row_weights[b].sum())
    return b, rng.integers(0, len(row_weights[b]), batch_size)


def write_sample_grid(pipe: XRayDiffusionPipeline, path: Path, prompts: tuple[str, ...] = MONITOR_PROMPTS, seeds: tuple[int, ...] = (0, 1)) -> None:
    """A grid: one row per seed, one column per prompt (same seed across a row)."""
    from PIL import Image

    tiles = [[pipe(p, seed=s).pil_images[0] for p in prompts] for s in seeds]
    size = tiles[0][0].size[0]
    grid = Image.new("L", (size * len(prompts), size * len(seeds)))
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            grid.paste(tile, (c * size, r * size))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def export_pipeline(run_dir: str | Path, out_dir: str | Path, text_encoder: str | None = None, autoencoder_dir: str | Path | None = None) -> Path:
    """Write the latest checkpoint's EMA weights as a shippable pipeline folder (safetensors + MANIFEST).

    `autoencoder_dir` ships a decoder fine-tuned after the UNet was trained; its encoder must be
    the one the UNet's latents came from, which is checked tensor by tensor.
    """
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    latest = CheckpointDir(run_dir).latest()
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    state = json.loads((latest / "state.json").read_text())
    autoencoder = load_autoencoder(autoencoder_dir or config["autoencoder"])
    if autoencoder_dir is not None:
        check_same_encoder(autoencoder, load_autoencoder(config["autoencoder"]), str(autoencoder_dir))
    autoencoder.register_to_config(scaling_factor=state["latent_scale"], shift_factor=state["latent_shift"],
                                   latents_mean=state.get("latents_mean"), latents_std=state.get("latents_std"))
    encoder = FrozenTextEncoder(text_encoder or config["text_encoder"], max_length=config.get("text_max_length", 64))
    unet = build_unet(config["unet"])
    unet.load_state_dict({k: v for k, v in load_file(str(latest / "ema_unet.safetensors")).items()}, strict=False)
    projection = TextProjection(encoder.name, encoder.hidden_size, config["unet"]["cross_attention_dim"])
    projection.load_state_dict(load_file(str(latest / "ema_text_projection.safetensors")), strict=False)
    pipe = XRayDiffusionPipeline(autoencoder, unet, projection, DDPMScheduler(**config["scheduler"]), encoder)
    pipe.generation_defaults.update(config.get("generation_defaults", {}))
    pipe.model_name = config.get("model_name", "ldm")
    pipe.save_pretrained(out_dir)
    if (run_dir / TRAINING_VOCABULARY_FILE).is_file():
        vocabulary = json.loads((run_dir / TRAINING_VOCABULARY_FILE).read_text())
        rewrite_shipped(out_dir, lambda staging: write_training_vocabulary(staging, vocabulary))
    return Path(out_dir)


def ship_training_vocabulary(weights: str | Path, data_dir: str | Path | None = None, exclude_sources: tuple[str, ...] = ()) -> Path:
    """Write a shipped pipeline folder's training_vocabulary.json from the train split it was trained on.

    For weights trained before the file existed: `exclude_sources` names the sources added to the
    data since (the first UNet saw neither nih_cxr14 nor covid_mhh). Weights are untouched; the
    MANIFEST is rewritten, so the folder's weights hash changes.
    """
    manifest = load_manifest(data_dir)
    table = manifest.query(split="train").table
    unknown = set(exclude_sources) - set(manifest.table["source"])
    if unknown:
        raise ValueError(f"no source {sorted(unknown)} in {manifest.root}")
    table = table[~table["source"].isin(exclude_sources)]
    description = f"The train split of {manifest.root.name}" + (f" without {', '.join(exclude_sources)}" if exclude_sources else "") + "."
    document = training_vocabulary(table, description)
    return rewrite_shipped(weights, lambda staging: write_training_vocabulary(staging, document))


ENCODER_PARTS = ("encoder.", "quant_conv.")
DECODER_PARTS = ("decoder.", "post_quant_conv.")


def same_part(candidate: AutoencoderKL, reference: AutoencoderKL, prefixes: tuple[str, ...]) -> bool:
    """Whether the two autoencoders hold identical tensors (and architecture) in the parts named by `prefixes`."""
    ours = {k: v for k, v in candidate.state_dict().items() if k.startswith(prefixes)}
    theirs = {k: v for k, v in reference.state_dict().items() if k.startswith(prefixes)}
    return ours.keys() == theirs.keys() and all(
        ours[k].shape == theirs[k].shape and torch.equal(ours[k], theirs[k].to(ours[k].dtype)) for k in ours
    )


def check_same_encoder(candidate: AutoencoderKL, reference: AutoencoderKL, name: str) -> None:
    """A new decoder can only ship with the encoder the UNet's latents came from."""
    if not same_part(candidate, reference, ENCODER_PARTS):
        raise ValueError(f"{name} has a different encoder from the one the UNet was trained on")


def rewrite_shipped(weights: str | Path, change: Callable[[Path], None]) -> Path:
    """Apply `change` to a staging copy of a verified shipped folder, then swap it in whole with a new MANIFEST."""
    weights = Path(weights)
    verify_manifest(weights)
    staging = weights.with_name(f".{weights.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(weights, staging)
    change(staging)
    write_manifest(staging)
    replace_folder_atomically(staging, weights)
    return weights


def ship_autoencoder(autoencoder_dir: str | Path, weights: str | Path) -> Path:
    """Swap a fine-tuned half of the autoencoder into a shipped pipeline folder, without the UNet's run folder.

    Either the encoder is identical (a decoder fine-tune: the UNet's latents are unchanged) or the
    decoder is (an encoder fine-tune with its latents anchored to the old ones: what the UNet
    generates decodes exactly as before). The latent normalisation is kept; the UNet is untouched.
    """
    verify_manifest(weights)
    shipped = load_autoencoder(Path(weights) / "vae")
    candidate = load_autoencoder(autoencoder_dir)
    if not (same_part(candidate, shipped, ENCODER_PARTS) or same_part(candidate, shipped, DECODER_PARTS)):
        raise ValueError(f"{autoencoder_dir} differs from the shipped autoencoder in both encoder and decoder: "
                         "the UNet was trained on the shipped latents, so only one half may change")
    candidate.register_to_config(**latent_normalisation_fields(shipped.config))

    def swap_vae(staging: Path) -> None:
        shutil.rmtree(staging / "vae")
        candidate.save_pretrained(staging / "vae", safe_serialization=True)

    return rewrite_shipped(weights, swap_vae)


def ship_unet(candidate: str | Path, weights: str | Path) -> Path:
    """Swap a further-trained UNet and text projection (an exported pipeline folder) into a shipped pipeline folder.

    For runs that continued the shipped weights (`init_from`): the UNet learned exactly the shipped
    autoencoder's latents, so the candidate must hold that autoencoder, tensor for tensor, with the
    same latent normalisation and text encoder. The UNet's noise schedule (`scheduler/`) comes with
    it: a UNet fine-tuned on another schedule (e.g. zero terminal SNR) samples correctly only with
    that one. Everything else in the shipped folder (card, loss logs, stage records, sampling
    defaults) stays; the model card is rewritten afterwards.
    """
    candidate, weights = Path(candidate), Path(weights)
    verify_manifest(candidate)
    verify_manifest(weights)
    shipped_vae, candidate_vae = load_autoencoder(weights / "vae"), load_autoencoder(candidate / "vae")
    if not (same_part(candidate_vae, shipped_vae, ENCODER_PARTS + DECODER_PARTS)
            and latent_normalisation_fields(candidate_vae.config) == latent_normalisation_fields(shipped_vae.config)):
        raise ValueError(f"{candidate} holds a different autoencoder or latent normalisation from {weights}: "
                         "its UNet was not trained on the shipped latents")
    text_encoders = [json.loads((folder / PIPELINE_FILE).read_text())["text_encoder"] for folder in (candidate, weights)]
    if text_encoders[0] != text_encoders[1]:
        raise ValueError(f"{candidate} was trained with the text encoder {text_encoders[0]!r}, {weights} ships {text_encoders[1]!r}")

    def swap_unet(staging: Path) -> None:
        for part in ("unet", "text_projection", "scheduler"):
            shutil.rmtree(staging / part)
            shutil.copytree(candidate / part, staging / part)
        if (candidate / TRAINING_VOCABULARY_FILE).is_file():  # the vocabulary of the data the UNet was trained on
            shutil.copyfile(candidate / TRAINING_VOCABULARY_FILE, staging / TRAINING_VOCABULARY_FILE)

    return rewrite_shipped(weights, swap_unet)


AVERAGED_PARTS = ("unet", "text_projection")
AVERAGED_FROM_FILE = "averaged_from.json"


def average_exports(exports: list[str | Path], out_dir: str | Path) -> Path:
    """Write the mean of several exports of one run (its UNet and text projection) as a pipeline folder.

    Why: on 2 CPU cores the EMA spans only ~1,000 steps; the mean of exports along the trajectory is a
    longer, post-hoc average (Karras et al. 2024). Measured on the zero-SNR framing run, it landed between
    its members (README, "Averaging exports"): there the exports differed by a drift, not by noise. Every other file must be the same in all of them (autoencoder,
    schedule, configs, vocabulary), or the average would mix models trained on different things.
    The mean is taken in float32 and stored in each tensor's exported dtype.
    """
    from safetensors import safe_open

    folders = [Path(e) for e in exports]
    if len(folders) < 2:
        raise ValueError("averaging needs at least two exports")
    hashes = [verify_manifest(folder) for folder in folders]
    listings = [json.loads((folder / MANIFEST_NAME).read_text())["files"] for folder in folders]
    averaged = sorted(name for name in listings[0] if name.split("/")[0] in AVERAGED_PARTS and name.endswith(".safetensors"))
    for folder, listing in zip(folders[1:], listings[1:]):
        if sorted(listing) != sorted(listings[0]):
            raise ValueError(f"{folder} holds other files than {folders[0]}: not exports of one model")
        differing = [name for name in listing if name not in averaged and listing[name]["sha256"] != listings[0][name]["sha256"]]
        if differing:
            raise ValueError(f"{folder} differs from {folders[0]} in {', '.join(differing)}: only the UNet and text projection weights may differ")
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(folders[0], staging)
    for name in averaged:
        handles = [safe_open(str(folder / name), "pt") for folder in folders]
        metadata = handles[0].metadata()
        tensors = {}
        for key in handles[0].keys():
            first = handles[0].get_tensor(key)
            tensors[key] = (sum(h.get_tensor(key).float() for h in handles) / len(handles)).to(first.dtype)
        atomic_save_safetensors(tensors, staging / name, metadata=metadata)
    atomic_write_text(staging / AVERAGED_FROM_FILE, json.dumps(
        {"exports": [{"folder": str(folder), "weights_sha256": digest} for folder, digest in zip(folders, hashes)]}, indent=2) + "\n")
    write_manifest(staging)
    replace_folder_atomically(staging, out_dir)
    return out_dir


def set_generation_defaults(weights: str | Path, **changes: Any) -> Path:
    """Change the sampling defaults a shipped pipeline folder gives its users (pipeline.json), weights untouched.

    The new defaults are checked by a real call of the pipeline before anything is written.
    """
    changes = {key: value for key, value in changes.items() if value is not None}
    unknown = set(changes) - set(DEFAULT_GENERATION)
    if unknown:
        raise ValueError(f"unknown generation defaults {sorted(unknown)}; known: {sorted(DEFAULT_GENERATION)}")
    pipe = XRayDiffusionPipeline.from_pretrained(weights)
    pipe.generation_defaults.update(changes)
    pipe("normal chest radiograph", seed=0)  # raises on an out-of-range default

    def write_defaults(staging: Path) -> None:
        info = json.loads((staging / PIPELINE_FILE).read_text())
        info["generation_defaults"] = pipe.generation_defaults
        (staging / PIPELINE_FILE).write_text(json.dumps(info, indent=2) + "\n")

    return rewrite_shipped(weights, write_defaults)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (or resume) the UNet")
    train.add_argument("--config", required=True)
    train.add_argument("--run", required=True)
    train.add_argument("--resume", action="store_true")
    train.add_argument("--max-minutes", type=float, default=None)
    train.add_argument("--data-dir", default=None)
    export = sub.add_parser("export", help="write the latest EMA weights as a pipeline folder")
    export.add_argument("--run", required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--autoencoder", default=None, help="a fine-tuned autoencoder folder to ship (same encoder as in training)")
    ship = sub.add_parser("ship-autoencoder", help="swap a fine-tuned decoder or encoder into a shipped pipeline folder (UNet untouched)")
    ship.add_argument("--autoencoder", required=True, help="exported autoencoder folder (train_vae export)")
    ship.add_argument("--weights", required=True, help="shipped pipeline folder, e.g. weights/ldm")
    ship_unet_parser = sub.add_parser("ship-unet", help="swap a further-trained UNet and text projection into a shipped pipeline folder (autoencoder untouched)")
    ship_unet_parser.add_argument("--candidate", required=True, help="exported pipeline folder (train_ldm export) of a run with init_from the shipped folder")
    ship_unet_parser.add_argument("--weights", required=True, help="shipped pipeline folder, e.g. weights/ldm")
    defaults = sub.add_parser("set-defaults", help="change a shipped pipeline folder's sampling defaults (pipeline.json)")
    defaults.add_argument("--weights", required=True, help="shipped pipeline folder, e.g. weights/ldm")
    defaults.add_argument("--sampler", choices=sorted(SAMPLERS), default=None)
    defaults.add_argument("--steps", type=int, default=None)
    defaults.add_argument("--guidance", type=float, default=None)
    defaults.add_argument("--guidance-fraction", type=float, default=None)
    average = sub.add_parser("average", help="write the mean of several exports of one run (UNet and text projection) as a pipeline folder")
    average.add_argument("--exports", nargs="+", required=True, help="exported pipeline folders of one run (train_ldm export)")
    average.add_argument("--out", required=True)
    vocab = sub.add_parser("write-vocabulary", help="write a shipped pipeline folder's training_vocabulary.json (weights untouched)")
    vocab.add_argument("--weights", required=True, help="shipped pipeline folder, e.g. weights/ldm")
    vocab.add_argument("--data-dir", default=None)
    vocab.add_argument("--exclude-source", nargs="*", default=[], help="sources the weights were not trained on")
    args = parser.parse_args(argv)
    if args.command == "write-vocabulary":
        print(ship_training_vocabulary(args.weights, args.data_dir, tuple(args.exclude_source)))
    elif args.command == "train":
        train_ldm(load_config(args.config), args.run, resume=args.resume, max_minutes=args.max_minutes, data_dir=args.data_dir)
    elif args.command == "ship-autoencoder":
        print(ship_autoencoder(args.autoencoder, args.weights))
    elif args.command == "ship-unet":
        print(ship_unet(args.candidate, args.weights))
    elif args.command == "average":
        print(average_exports(args.exports, args.out))
    elif args.command == "set-defaults":
        print(set_generation_defaults(args.weights, sampler=args.sampler, num_inference_steps=args.steps,
                                      guidance_scale=args.guidance, guidance_fraction=args.guidance_fraction))
    else:
        print(export_pipeline(args.run, args.out, autoencoder_dir=args.autoencoder))


if __name__ == "__main__":
    main()
