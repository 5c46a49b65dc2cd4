"""Train the VAE family at 256×256: baseline VAE, GMVAE, fully supervised GMVAE (the config decides).

Loss per image, averaged over the batch and divided by the pixel count so learning rates carry
over between sizes:

    SSE(x, x̂) / (2 σ²)  +  β_t · KL(q(z|x[,y]) ‖ p(z[|y]))

σ (`likelihood_std`, in units of the [-1, 1] image range) sets how much the reconstruction
weighs against the prior; β_t rises linearly from 0 to `kl_weight` over `kl_warmup_steps`
(KL annealing, Bowman et al. 2016) so the decoder learns to use z before the prior pulls it in.
The GMVAE's KL is a one-sample Monte Carlo estimate (see `models/vae_family.py`).

    python -m xray_generator.training.train_vae_family train --config configs/gmvae.json --run outputs/runs/gmvae --resume --max-minutes 60
    python -m xray_generator.training.train_vae_family export --run outputs/runs/gmvae --out weights/gmvae
"""
from __future__ import annotations

from pathlib import Path

import torch

from xray_generator.models.vae_family import FAMILY_PRIOR, VAE_FAMILIES, build_vae_family
from xray_generator.training.checkpointing import EMA
from xray_generator.training.generator_training import GeneratorTrainer, TrainingRun

LOSS_COLUMNS = ("loss", "recon_mse", "kl")
LOG_FIELDS = ["step", "samples_seen", "wall_seconds", *LOSS_COLUMNS, "kl_weight", "lr"]


def check_vae_family_config(config: dict) -> None:
    family, prior = config.get("family"), config["model"].get("prior")
    if family not in VAE_FAMILIES:
        raise ValueError(f"family must be one of {VAE_FAMILIES}, got {family!r}")
    if FAMILY_PRIOR[family] != prior:
        raise ValueError(f"family {family!r} uses model.prior {FAMILY_PRIOR[family]!r}, got {prior!r}")


def train_vae_family(config: dict, run_dir: str | Path, resume: bool = False, max_minutes: float | None = None, data_dir: str | Path | None = None) -> dict:
    check_vae_family_config(config)
    model_cfg, train_cfg = config["model"], config["train"]
    run = TrainingRun(config, run_dir, LOG_FIELDS, max_minutes, desc=config["family"])
    data = run.load_train_images(data_dir)
    model = build_vae_family(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg["lr"], weight_decay=train_cfg.get("weight_decay", 0.0))
    ema = EMA(model, train_cfg.get("ema_decay", 0.999))
    run.start(resume, {"model": model, "ema": ema}, {"optimizer": opt})
    accelerator = run.accelerator
    model, opt = accelerator.prepare(model, opt)
    batch_size = train_cfg["batch_size"]
    pixels = model_cfg["image_size"] ** 2
    inverse_two_variance = 1.0 / (2.0 * train_cfg["likelihood_std"] ** 2)

    while not run.finished:
        step = run.state["step"]
        x, labels = data.random_batch(batch_size)
        labels = labels if data.classes else None
        kl_weight = train_cfg["kl_weight"] * min(1.0, step / max(1, train_cfg.get("kl_warmup_steps", 0)))
        lr = train_cfg["lr"] * min(1.0, (step + 1) / train_cfg.get("warmup_steps", 1))
        for group in opt.param_groups:
            group["lr"] = lr
        with accelerator.autocast():
            reconstruction, mean, logvar, z = model(x, labels)
        # Loss terms in fp32: the KL's exp(logvar) and the mixture's logsumexp are unstable in bf16.
        sse = (reconstruction.float() - x).pow(2).sum(dim=(1, 2, 3))
        kl = accelerator.unwrap_model(model).kl(mean, logvar, z, labels)
        loss = (sse * inverse_two_variance + kl_weight * kl).mean() / pixels
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), train_cfg.get("grad_clip", 1.0))
        opt.step()
        ema.update(accelerator.unwrap_model(model), step)

        checkpoint_due = run.advance(batch_size, loss=loss.item())
        run.append_log({"loss": loss.item(), "recon_mse": (sse.mean() / pixels).item(), "kl": kl.mean().item(),
                        "kl_weight": kl_weight, "lr": lr}, force=checkpoint_due)
        if checkpoint_due and run.checkpoint({"model": accelerator.unwrap_model(model).state_dict(), "ema": ema.state_dict()}, {"optimizer": opt}, build_vae_family, ema):
            break
    run.close()
    return run.state


def describe_vae_family(config: dict) -> str:
    model, train = config["model"], config["train"]
    prior = {
        "standard": "N(0, I) prior (baseline VAE)",
        "mixture": f"mixture-of-Gaussians prior with {model.get('components')} learnable components (GMVAE; Monte Carlo KL)",
        "class_mixture": "one Gaussian prior component per class, label one-hot into encoder and decoder (supervised GMVAE)",
    }[model["prior"]]
    return (f"Convolutional encoder (stride-2 convolutions {model['channels']}, BatchNorm, LeakyReLU) to a {model['latent_dim']}-d "
            f"Gaussian posterior; transposed-convolution decoder (the mirror, BatchNorm, ReLU, tanh) decoding natively at "
            f"{model['image_size']} px; {prior}. Loss: SSE/(2σ²) + β·KL with σ = {train['likelihood_std']} (on the [-1, 1] range), "
            f"β = {train['kl_weight']} reached after {train.get('kl_warmup_steps', 0)} warm-up steps. Generation decodes prior draws. "
            f"Shipped: EMA (decay {train.get('ema_decay', 0.999)}) of the whole model (encoder included).")


TRAINER = GeneratorTrainer("VAE-family model", train_vae_family, build_vae_family, LOSS_COLUMNS, describe_vae_family, __doc__)
export_vae_family = TRAINER.export

main = TRAINER.main

if __name__ == "__main__":
    main()
