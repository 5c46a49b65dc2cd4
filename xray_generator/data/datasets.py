"""Torch datasets over a manifest. Images are held in memory as uint8 to keep epochs fast on CPU.

No augmentation flips images left-right: that would teach the model dextrocardia.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
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
