"""Pieces the noise-to-image generators (GANs, VAE family) share: class names, stage arithmetic, init."""
from __future__ import annotations

import math

from torch import nn

from xray_generator.vocabulary import LABELS


def check_classes(classes: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Class names of a conditional model: vocabulary labels, each once (empty = unconditional)."""
    classes = tuple(classes)
    unknown = [c for c in classes if c not in LABELS]
    if unknown:
        raise ValueError(f"unknown class names {unknown}; use labels from xray_generator.vocabulary.LABELS")
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names repeat: {classes}")
    if len(classes) == 1:
        raise ValueError("a conditional model needs at least two classes")
    return classes


def check_stages(image_size: int, base_size: int, stages: int) -> None:
    """`stages` stride-2 layers must take `base_size` exactly to `image_size` (and back)."""
    if base_size < 1 or base_size * 2**stages != image_size:
        raise ValueError(f"{stages} stride-2 stages from {base_size} px give {base_size * 2**stages} px, not image_size {image_size}")


def dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) weights and BatchNorm scales around 1 (Radford et al. 2016); embeddings at unit scale."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, 0.0, 1.0 / math.sqrt(module.embedding_dim))


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
