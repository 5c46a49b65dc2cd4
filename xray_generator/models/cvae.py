"""Conditional VAE for healthy -> pneumonia translation (seed design: Generative Pneumonia X-ray Modeling).

    encoder:        U-Net encoder; its skip connections carry the anatomy, the bottleneck gives mu, log sigma^2
    latent:         z = mu + sigma * eps (reparameterised)
    decoder:        U-Net decoder; every residual block is FiLM-modulated by the target label
    discriminator:  label-conditioned PatchGAN (projection discriminator, Miyato & Koyama 2018)

The encoder never sees a label: a user's film needs no label to be translated, and the decoder
alone decides how the label shows. Images are (B, 1, S, S) in [-1, 1]; the decoder's output is
unbounded and clamped at inference.

    model = build_cvae(config["model"])
    mu, logvar, skips = model.encode(x)
    out = model.decode(model.reparameterise(mu, logvar, generator), skips, labels)
    rec, counterfactual, mu, logvar = model(x, labels, other_labels)      # training: both at once
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_CVAE_CONFIG: dict = {
    "image_size": 128,
    "labels": ["Normal", "Pneumonia"],
    "channels": [16, 32, 64, 128],
    "latent_channels": 8,
    "label_dim": 64,
    "norm_groups": 8,
    "skip_dropout": 0.0,
}


def _groups(channels: int, preferred: int) -> int:
    """The largest group count <= `preferred` that divides `channels` (GroupNorm needs a divisor)."""
    return math.gcd(channels, preferred) or 1


class FiLM(nn.Module):
    """Feature-wise affine modulation from a label embedding: h * (1 + gamma) + beta.

    Initialised to the identity, so an untrained decoder starts as a plain U-Net decoder.
    """

    def __init__(self, label_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(label_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(embedding)[:, :, None, None].chunk(2, dim=1)
        return h * (1 + gamma) + beta


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual path; FiLM after each norm when `label_dim` is given."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, label_dim: int | None = None):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels, groups), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(out_channels, groups), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.film1 = FiLM(label_dim, in_channels) if label_dim else None
        self.film2 = FiLM(label_dim, out_channels) if label_dim else None

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        if self.film1 is not None:
            h = self.film1(h, embedding)
        h = self.conv1(F.silu(h))
        h = self.norm2(h)
        if self.film2 is not None:
            h = self.film2(h, embedding)
        h = self.conv2(F.silu(h))
        return self.shortcut(x) + h


class CVAE(nn.Module):
    """U-Net conditional VAE. `channels[i]` is the width at resolution S / 2**i; the bottleneck is S / 2**len(channels)."""

    def __init__(self, image_size: int, labels, channels, latent_channels: int, label_dim: int, norm_groups: int = 8, skip_dropout: float = 0.0):
        super().__init__()
        channels = list(channels)
        levels = len(channels)
        if image_size % (2**levels):
            raise ValueError(f"image_size {image_size} must be divisible by 2**{levels} (one halving per entry of channels)")
        if not 0.0 <= skip_dropout < 1.0:
            raise ValueError(f"skip_dropout must be in [0, 1), got {skip_dropout}")
        self.image_size = image_size
        self.labels = tuple(labels)
        self.latent_channels = latent_channels
        self.skip_dropout = skip_dropout

        # Encoder: stem, then per level a residual block (its output is the skip) and a 2x average
        # pool. Pooling and nearest upsampling instead of strided / extra convolutions keep the
        # weights small (the budget is a few MB) at little cost: the blocks do the learning.
        self.stem = nn.Conv2d(1, channels[0], 3, padding=1)
        self.enc_blocks = nn.ModuleList()
        previous = channels[0]
        for width in channels:
            self.enc_blocks.append(ResBlock(previous, width, norm_groups))
            previous = width
        self.enc_mid = ResBlock(previous, previous, norm_groups)
        self.to_moments = nn.Sequential(nn.GroupNorm(_groups(previous, norm_groups), previous), nn.SiLU(), nn.Conv2d(previous, 2 * latent_channels, 1))

        # Decoder: from z, per level (deepest first) upsample, concatenate the skip, FiLM residual block.
        self.label_embedding = nn.Embedding(len(self.labels), label_dim)
        self.from_latent = nn.Conv2d(latent_channels, previous, 3, padding=1)
        self.dec_mid = ResBlock(previous, previous, norm_groups, label_dim)
        self.dec_blocks = nn.ModuleList()
        for width in reversed(channels):
            self.dec_blocks.append(ResBlock(previous + width, width, norm_groups, label_dim))
            previous = width
        self.to_image = nn.Sequential(nn.GroupNorm(_groups(previous, norm_groups), previous), nn.SiLU(), nn.Conv2d(previous, 1, 3, padding=1))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(mu, logvar, skips) of images (B, 1, S, S) in [-1, 1]; skips are ordered shallow to deep."""
        h = self.stem(x)
        skips = []
        for block in self.enc_blocks:
            h = block(h)
            skips.append(h)
            h = F.avg_pool2d(h, 2)
        mu, logvar = self.to_moments(self.enc_mid(h)).chunk(2, dim=1)
        # Bounded so exp() stays finite in bf16 early in training.
        return mu, logvar.clamp(-20.0, 10.0), skips

    @staticmethod
    def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return mu + eps * torch.exp(0.5 * logvar)

    def label_indices(self, labels) -> torch.Tensor:
        """Label names or indices -> a long tensor; ValueError naming the valid labels otherwise."""
        if torch.is_tensor(labels):
            return labels.long()
        out = []
        for label in labels:
            if isinstance(label, str):
                if label not in self.labels:
                    raise ValueError(f"unknown label {label!r}; this CVAE knows {', '.join(self.labels)}")
                out.append(self.labels.index(label))
            else:
                out.append(int(label))
        return torch.tensor(out, dtype=torch.long)

    def decode(self, z: torch.Tensor, skips: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, S, S) for latents, encoder skips and target label indices (B,)."""
        embedding = self.label_embedding(labels.to(z.device))
        h = self.dec_mid(self.from_latent(z), embedding)
        for block, skip in zip(self.dec_blocks, reversed(skips)):
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            if self.training and self.skip_dropout > 0:
                # Whole skip maps dropped per image: the decoder must also work from z and the
                # label, so the label keeps a say instead of the skips carrying everything.
                keep = (torch.rand(skip.shape[0], 1, 1, 1, device=skip.device) >= self.skip_dropout).to(skip.dtype)
                skip = skip * keep
            h = block(torch.cat([h, skip], dim=1), embedding)
        return self.to_image(h)

    def forward(self, x: torch.Tensor, labels: torch.Tensor, counterfactual_labels: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(reconstruction under `labels`, the same latent decoded under `counterfactual_labels` or None, mu, logvar).

        One encoder pass; with counterfactual labels the decoder runs once on the doubled batch.
        """
        mu, logvar, skips = self.encode(x)
        z = self.reparameterise(mu, logvar, generator)
        if counterfactual_labels is None:
            return self.decode(z, skips, labels), None, mu, logvar
        decoded = self.decode(torch.cat([z, z]), [torch.cat([s, s]) for s in skips], torch.cat([labels, counterfactual_labels]))
        reconstruction, counterfactual = decoded.chunk(2)
        return reconstruction, counterfactual, mu, logvar


def build_cvae(config: dict | None = None) -> CVAE:
    """An untrained CVAE from the config's ``model`` section (or the section itself); defaults fill gaps."""
    config = config or {}
    model_cfg = {**DEFAULT_CVAE_CONFIG, **config.get("model", config)}
    return CVAE(
        image_size=int(model_cfg["image_size"]),
        labels=model_cfg["labels"],
        channels=model_cfg["channels"],
        latent_channels=int(model_cfg["latent_channels"]),
        label_dim=int(model_cfg["label_dim"]),
        norm_groups=int(model_cfg["norm_groups"]),
        skip_dropout=float(model_cfg.get("skip_dropout", 0.0)),
    )


class ConditionalPatchDiscriminator(nn.Module):
    """A PatchGAN whose patch logits depend on the label: logit = w·h + <embed(y), h> at each patch.

    The projection term (Miyato & Koyama 2018) lets the discriminator judge "a real film of this
    label" rather than just "a real film", which is what makes a translated image change.
    """

    def __init__(self, num_labels: int, width: int = 32, layers: int = 3, norm_groups: int = 8):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        channels = width
        for _ in range(1, layers):
            blocks += [nn.Conv2d(channels, channels * 2, 4, 2, 1), nn.GroupNorm(_groups(channels * 2, norm_groups), channels * 2), nn.LeakyReLU(0.2, True)]
            channels *= 2
        blocks += [nn.Conv2d(channels, channels, 4, 1, 1), nn.GroupNorm(_groups(channels, norm_groups), channels), nn.LeakyReLU(0.2, True)]
        self.trunk = nn.Sequential(*blocks)
        self.out = nn.Conv2d(channels, 1, 1)
        self.embedding = nn.Embedding(num_labels, channels)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        projection = (self.embedding(labels.to(x.device))[:, :, None, None] * h).sum(dim=1, keepdim=True)
        return self.out(h) + projection


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
