"""Load a GAN generator (DCGAN, class-conditional DCGAN or LSGAN) from its verified weights folder.

    generator = load_gan(Path("weights/dcgan_conditional"))
    generator.generate(4, condition="COVID-19", seed=0)   # float32 (4, 256, 256) in [0, 1]
"""
from __future__ import annotations

from pathlib import Path

from xray_generator.models.gan import GAN_FAMILIES, build_gan_generator
from xray_generator.pipelines.noise_generators import NoiseToImageGenerator, load_noise_generator


def load_gan(folder: Path) -> NoiseToImageGenerator:
    """The EMA generator of a GAN run exported by `train_gan export`; the discriminator is not shipped."""
    return load_noise_generator(folder, GAN_FAMILIES, build_gan_generator)
