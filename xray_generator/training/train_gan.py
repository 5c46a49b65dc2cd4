"""Train a DCGAN, a class-conditional DCGAN or an LSGAN at 256×256 (one script; the config decides).

`train.objective` is "bce" (DCGAN: the non-saturating binary cross-entropy game) or
"least_squares" (LSGAN, Mao et al. 2017: real → 1, fake → 0, generator → 1, squared error);
`model.classes` non-empty makes both networks class-conditional; `model.auxiliary_classifier` with
`train.auxiliary_class_weight` adds AC-GAN's class loss (the discriminator classifies real films, the
generator's samples must be classified as the class they were asked for). Measured at 256 px: with
the projection term alone the conditional discriminator collapsed to a constant score by step ~2,000
and its samples scored the same for every class (pneumonia score 0.78 asked for Normal, 0.77 for
Pneumonia); with the projection term and the class loss it collapsed by step ~1,100; the
unconditional discriminators (no projection) did not. So dcgan_conditional.json sets
`model.projection` false and conditions the discriminator through the class loss alone.
Stabilisers, all in the config:

- one-sided label smoothing: real targets `real_label` (0.9);
- label flipping: each discriminator target swaps real ↔ fake with probability `flip_probability` (0.1);
- instance noise (Sønderby et al. 2017): Gaussian noise on every discriminator input, its std
  decaying linearly from `instance_noise_std` to 0 over the first `instance_noise_decay_fraction` of steps;
- `generator_steps` generator updates per discriminator update;
- spectral normalisation of the discriminator (`model.spectral_norm`). Measured at 256 px: without
  it the conditional DCGAN's discriminator fell to a constant score (d_real = d_fake = 0.45, the best
  constant under smoothed, flipped targets) by step 600 and stayed there, so the BCE configs use it;
  with it the LSGAN's discriminator went constant by step 150, so lsgan.json leaves it off.

The shipped generator is an EMA of the generator's weights (and BatchNorm statistics).

    python -m xray_generator.training.train_gan train --config configs/dcgan.json --run outputs/runs/dcgan --resume --max-minutes 60
    python -m xray_generator.training.train_gan export --run outputs/runs/dcgan --out weights/dcgan
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from xray_generator.models.gan import GAN_FAMILIES, build_gan_discriminator, build_gan_generator
from xray_generator.models.generator_parts import check_classes
from xray_generator.training.checkpointing import EMA
from xray_generator.training.generator_training import GeneratorTrainer, TrainingRun

LOSS_COLUMNS = ("loss_d", "loss_g", "d_real", "d_fake", "loss_class_real", "loss_class_fake")
LOG_FIELDS = ["step", "samples_seen", "wall_seconds", *LOSS_COLUMNS, "instance_noise", "lr_g", "lr_d"]
OBJECTIVES = ("bce", "least_squares")


def check_gan_config(config: dict) -> None:
    family, objective = config.get("family"), config["train"]["objective"]
    if family not in GAN_FAMILIES:
        raise ValueError(f"family must be one of {GAN_FAMILIES}, got {family!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"train.objective must be one of {OBJECTIVES}, got {objective!r}")
    conditional = bool(check_classes(config["model"].get("classes", [])))
    if conditional != (family == "dcgan_conditional"):
        raise ValueError(f"family {family!r} {'needs' if family == 'dcgan_conditional' else 'takes no'} model.classes")
    if config["model"].get("auxiliary_classifier") and not conditional:
        raise ValueError("model.auxiliary_classifier needs model.classes (an unconditional GAN has no class to predict)")
    if config["model"].get("auxiliary_classifier") and not config["train"].get("auxiliary_class_weight", 0.0) > 0:
        raise ValueError("model.auxiliary_classifier needs train.auxiliary_class_weight > 0, or its class head is never trained")
    if conditional and not config["model"].get("projection", True) and not config["model"].get("auxiliary_classifier"):
        raise ValueError("a conditional discriminator needs model.projection or model.auxiliary_classifier, or it never sees the class")
    if (objective == "least_squares") != (family == "lsgan"):
        raise ValueError(f"family {family!r} does not match train.objective {objective!r} (lsgan ⇔ least_squares)")


def adversarial_loss(scores: torch.Tensor, targets: torch.Tensor, objective: str) -> torch.Tensor:
    """Mean loss of raw discriminator scores against (soft) targets, in fp32."""
    scores = scores.float()
    if objective == "least_squares":
        return 0.5 * (scores - targets).pow(2).mean()
    return F.binary_cross_entropy_with_logits(scores, targets)


def discriminator_targets(batch: int, real_label: float, flip_probability: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Smoothed real targets and zero fake targets, a random `flip_probability` of each swapped."""
    real = torch.full((batch,), real_label)
    fake = torch.zeros(batch)
    flip_real = torch.rand(batch) < flip_probability
    flip_fake = torch.rand(batch) < flip_probability
    return torch.where(flip_real, 0.0, real), torch.where(flip_fake, real_label, fake)


def instance_noise_std(step: int, max_steps: int, train_cfg: dict) -> float:
    start = train_cfg.get("instance_noise_std", 0.0)
    decay_steps = max(1, int(train_cfg.get("instance_noise_decay_fraction", 0.5) * max_steps))
    return start * max(0.0, 1.0 - step / decay_steps)


def with_noise(x: torch.Tensor, std: float) -> torch.Tensor:
    return x + std * torch.randn_like(x) if std > 0 else x


def discriminator_outputs(discriminator, x: torch.Tensor, labels: torch.Tensor | None, class_weight: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(score, class logits), the logits only when the auxiliary class loss is on."""
    if class_weight:
        return discriminator(x, labels, with_class_logits=True)
    return discriminator(x, labels), None


def train_gan(config: dict, run_dir: str | Path, resume: bool = False, max_minutes: float | None = None, data_dir: str | Path | None = None) -> dict:
    check_gan_config(config)
    model_cfg, train_cfg = config["model"], config["train"]
    run = TrainingRun(config, run_dir, LOG_FIELDS, max_minutes, desc=config["family"])
    data = run.load_train_images(data_dir)
    conditional = bool(data.classes)
    # channels-last: oneDNN's convolutions and the element-wise layers on the thin 128²/256² maps run
    # faster on CPU in this layout; with spatial dropout a step is 1.5x faster (benchmarks/bench_gan_step.py).
    generator = build_gan_generator(model_cfg).to(memory_format=torch.channels_last)
    discriminator = build_gan_discriminator(model_cfg).to(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(generator.parameters(), lr=train_cfg["lr_g"], betas=tuple(train_cfg.get("betas", (0.5, 0.999))))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=train_cfg["lr_d"], betas=tuple(train_cfg.get("betas", (0.5, 0.999))))
    ema = EMA(generator, train_cfg.get("ema_decay", 0.999))
    optimizers = {"optimizer_g": opt_g, "optimizer_d": opt_d}
    run.start(resume, {"generator": generator, "discriminator": discriminator, "ema": ema}, optimizers)
    accelerator = run.accelerator
    generator, discriminator, opt_g, opt_d = accelerator.prepare(generator, discriminator, opt_g, opt_d)
    objective, batch_size, z_dim = train_cfg["objective"], train_cfg["batch_size"], model_cfg["z_dim"]
    class_weight = train_cfg.get("auxiliary_class_weight", 0.0) if model_cfg.get("auxiliary_classifier") else 0.0

    while not run.finished:
        step = run.state["step"]
        real, labels = data.random_batch(batch_size)
        real = real.contiguous(memory_format=torch.channels_last)
        labels = labels if conditional else None
        noise = instance_noise_std(step, run.max_steps, train_cfg)

        # 1. Discriminator: real vs fake, soft and sometimes flipped targets, noisy inputs; with an
        # auxiliary classifier it also learns each real film's class (never the fakes': AC-GAN's
        # fake-class term lets the discriminator reward class-typical failures).
        with torch.no_grad(), accelerator.autocast():
            fake = generator(torch.randn(batch_size, z_dim), labels).float()
        target_real, target_fake = discriminator_targets(batch_size, train_cfg.get("real_label", 0.9), train_cfg.get("flip_probability", 0.0))
        with accelerator.autocast():
            score_real, logits_real = discriminator_outputs(discriminator, with_noise(real, noise), labels, class_weight)
            score_fake = discriminator(with_noise(fake, noise), labels)
        loss_d = adversarial_loss(score_real, target_real, objective) + adversarial_loss(score_fake, target_fake, objective)
        if class_weight:
            loss_class_real = F.cross_entropy(logits_real.float(), labels)
            loss_d = loss_d + class_weight * loss_class_real
        opt_d.zero_grad(set_to_none=True)
        accelerator.backward(loss_d)
        opt_d.step()

        # 2. Generator: `generator_steps` updates towards "real" (target 1, unsmoothed), same labels.
        for _ in range(train_cfg.get("generator_steps", 1)):
            with accelerator.autocast():
                score, logits_fake = discriminator_outputs(discriminator, with_noise(generator(torch.randn(batch_size, z_dim), labels), noise), labels, class_weight)
            loss_g = adversarial_loss(score, torch.ones(batch_size), objective)
            if class_weight:
                loss_class_fake = F.cross_entropy(logits_fake.float(), labels)
                loss_g = loss_g + class_weight * loss_class_fake
            opt_g.zero_grad(set_to_none=True)
            accelerator.backward(loss_g)
            opt_g.step()
        ema.update(accelerator.unwrap_model(generator), step)

        # Scores as probabilities for BCE; raw least-squares scores otherwise.
        as_score = torch.sigmoid if objective == "bce" else (lambda t: t)
        d_real, d_fake = as_score(score_real.detach().float()).mean().item(), as_score(score_fake.detach().float()).mean().item()
        checkpoint_due = run.advance(batch_size, d=loss_d.item(), g=loss_g.item())
        class_losses = {"loss_class_real": loss_class_real.item(), "loss_class_fake": loss_class_fake.item()} if class_weight else {}
        run.append_log({"loss_d": loss_d.item(), "loss_g": loss_g.item(), "d_real": d_real, "d_fake": d_fake, **class_losses,
                        "instance_noise": noise, "lr_g": train_cfg["lr_g"], "lr_d": train_cfg["lr_d"]}, force=checkpoint_due)
        if checkpoint_due:
            modules = {"generator": accelerator.unwrap_model(generator).state_dict(),
                       "discriminator": accelerator.unwrap_model(discriminator).state_dict(), "ema": ema.state_dict()}
            if run.checkpoint(modules, optimizers, build_gan_generator, ema):
                break
    run.close()
    return run.state


def describe_gan(config: dict) -> str:
    model, train = config["model"], config["train"]
    objective = "least-squares (LSGAN)" if train["objective"] == "least_squares" else "binary cross-entropy (non-saturating)"
    conditional = (" Class-conditional: a label embedding joins z in the generator; the discriminator adds"
                   + (" a projection term" if model.get("projection", True) else "")
                   + (" and" if model.get("projection", True) and model.get("auxiliary_classifier") else "")
                   + (f" an auxiliary classifier (AC-GAN, class loss weight {train.get('auxiliary_class_weight', 0.0)}: "
                      "fitted on real films, the generator's samples must satisfy it)." if model.get("auxiliary_classifier") else ".")
                   if model.get("classes") else "")
    return (f"DCGAN generator: z ∈ R^{model['z_dim']} → dense to {model['base_size']}×{model['base_size']}×{model['channels'][0]} → "
            f"{len(model['channels'])} transposed convolutions (channels {model['channels']} → 1) with BatchNorm and ReLU → tanh. "
            f"Discriminator (not shipped): stride-2 convolutions {model['disc_channels']} with LeakyReLU, spatial dropout {model.get('dropout', 0.3)}{' and spectral normalisation' if model.get('spectral_norm') else ''}.{conditional} "
            f"Objective: {objective}. Stabilisers: real label {train.get('real_label', 0.9)}, label flipping {train.get('flip_probability', 0.0):.0%}, "
            f"instance noise std {train.get('instance_noise_std', 0.0)} decaying to 0 over the first {train.get('instance_noise_decay_fraction', 0.5):.0%} of steps, "
            f"{train.get('generator_steps', 1)} generator steps per discriminator step. Shipped: EMA (decay {train.get('ema_decay', 0.999)}) of the generator.")


TRAINER = GeneratorTrainer("GAN", train_gan, build_gan_generator, LOSS_COLUMNS, describe_gan, __doc__)
export_gan = TRAINER.export

main = TRAINER.main

if __name__ == "__main__":
    main()
