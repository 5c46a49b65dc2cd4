"""Torch datasets over a manifest. Images are held in memory as uint8 to keep epochs fast on CPU.

No augmentation flips images left-right: that would teach the model dextrocardia.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from xray_generator.data.manifest import Manifest
from xray_generator.io import read_gray_uint8


def load_images_uint8(manifest: Manifest, workers: int = 4) -> list[np.ndarray]:
    """Decode every image of a manifest into uint8 (H, W) arrays, in manifest order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(read_gray_uint8, manifest.paths()))


class RandomCropDataset(Dataset):
    """Random square crops in [-1, 1], shape (1, S, S); images smaller than S are used whole (never upscaled)."""

    def __init__(self, images: list[np.ndarray], crop_size: int, length: int | None = None, seed: int = 0):
        self.images = images
        self.crop_size = crop_size
        self.length = length or len(images)
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng((self.seed, index, torch.randint(0, 2**31 - 1, (1,)).item()))
        image = self.images[int(rng.integers(len(self.images)))]
        h, w = image.shape
        size = min(self.crop_size, h, w)
        top = int(rng.integers(0, h - size + 1))
        left = int(rng.integers(0, w - size + 1))
        crop = image[top : top + size, left : left + size].astype(np.float32) / 127.5 - 1.0
        return torch.from_numpy(crop)[None]


class LatentCropDataset(Dataset):
    """Aligned pairs of (latent crop, image crop) cut from whole films and their cached latents.

    A decoder fine-tune with the encoder frozen learns from the latents the encoder gives the whole
    film (what the UNet is trained on and generation decodes), not from re-encoded crops; a latent
    crop of `crop_latent` cells is the image crop `factor` times larger at the same place. Each item
    draws a posterior sample (mean + std * noise), as the UNet's training latents are.
    """

    def __init__(self, images: list[np.ndarray], means: list[torch.Tensor], stds: list[torch.Tensor], crop_latent: int, factor: int,
                 length: int | None = None, seed: int = 0):
        if not len(images) == len(means) == len(stds):
            raise ValueError(f"{len(images)} images but {len(means)} latent means and {len(stds)} stds")
        for image, mean in zip(images, means):
            if image.shape[0] != mean.shape[-2] * factor or image.shape[1] != mean.shape[-1] * factor:
                raise ValueError(f"an image of {image.shape} does not match its latent of {tuple(mean.shape)} at {factor}x")
        self.images, self.means, self.stds = images, means, stds
        self.crop_latent, self.factor = crop_latent, factor
        self.length = length or len(images)
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index, torch.randint(0, 2**31 - 1, (1,)).item()))
        row = int(rng.integers(len(self.images)))
        mean, std = self.means[row], self.stds[row]
        cells = min(self.crop_latent, mean.shape[-2], mean.shape[-1])
        top = int(rng.integers(0, mean.shape[-2] - cells + 1))
        left = int(rng.integers(0, mean.shape[-1] - cells + 1))
        window = (slice(None), slice(top, top + cells), slice(left, left + cells))
        noise = torch.from_numpy(rng.standard_normal((mean.shape[0], cells, cells)).astype(np.float32))
        latent = mean[window].float() + std[window].float() * noise
        f = self.factor
        crop = self.images[row][top * f : (top + cells) * f, left * f : (left + cells) * f].astype(np.float32) / 127.5 - 1.0
        return latent, torch.from_numpy(crop)[None]


def augment_batch(images: torch.Tensor, rng: np.random.Generator, settings: dict) -> torch.Tensor:
    """Mild radiograph augmentation of a float batch (B, 1, H, W) in [0, 1]; returns a new batch.

    A random rotation (± ``rotation_degrees``), zoom (``scale`` range, a zoom in is a random
    crop), shift (± ``translate`` of the side) and intensity jitter: gamma (± ``log_gamma``),
    contrast (× 1 ± ``contrast``) and brightness (± ``brightness``). Never a flip: the affine
    map is a rotation times a positive scale, whose determinant is positive, because a mirrored
    chest shows dextrocardia, a real finding. Areas moved in from outside the film are black.
    """
    b = images.shape[0]
    angle = np.deg2rad(rng.uniform(-1, 1, b) * settings.get("rotation_degrees", 0.0))
    low, high = settings.get("scale", (1.0, 1.0))
    scale = rng.uniform(low, high, b)
    shift = rng.uniform(-1, 1, (b, 2)) * 2.0 * settings.get("translate", 0.0)  # grid coordinates span 2
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    theta = np.stack([np.stack([cos, -sin, shift[:, 0]], 1), np.stack([sin, cos, shift[:, 1]], 1)], 1)
    theta = torch.from_numpy(theta.astype(np.float32))
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)

    def per_image(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(values.astype(np.float32)).view(b, 1, 1, 1)

    gamma = per_image(np.exp(rng.uniform(-1, 1, b) * settings.get("log_gamma", 0.0)))
    contrast = per_image(1.0 + rng.uniform(-1, 1, b) * settings.get("contrast", 0.0))
    brightness = per_image(rng.uniform(-1, 1, b) * settings.get("brightness", 0.0))
    out = out.pow(gamma)
    centre = out.mean(dim=(2, 3), keepdim=True)
    return ((out - centre) * contrast + centre + brightness).clamp(0, 1)
