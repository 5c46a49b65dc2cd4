"""Load a VAE-family generator (VAE, GMVAE or supervised GMVAE) from its verified weights folder.

Generation decodes draws from the prior (the supervised GMVAE: from the requested class's component).

    generator = load_vae_family(Path("weights/gmvae_supervised"))
    generator.generate(4, condition="Normal", seed=0)   # float32 (4, 256, 256) in [0, 1]
"""
from __future__ import annotations

from pathlib import Path

from xray_generator.models.vae_family import VAE_FAMILIES, build_vae_family
from xray_generator.pipelines.noise_generators import NoiseToImageGenerator, load_noise_generator


def load_vae_family(folder: Path) -> NoiseToImageGenerator:
    """The EMA weights of a VAE-family run exported by `train_vae_family export` (encoder included)."""
    return load_noise_generator(folder, VAE_FAMILIES, build_vae_family)
