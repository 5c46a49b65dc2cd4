"""Inference for the generators that map noise (and optionally a class) to an image: GANs, VAE family.

A weights folder holds `config.json` (its `family` and `model` settings), `model.safetensors`
and `MANIFEST.json`. Loading verifies every sha256 before any tensor is read, and only
safetensors are read.

    generator = load_gan(Path("weights/dcgan_conditional"))
    generator.conditions                          # ("Normal", "Pneumonia", "COVID-19")
    images = generator.generate(4, condition="Pneumonia", seed=0)   # float32 (4, 256, 256) in [0, 1]
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from xray_generator.models.generator_parts import check_classes
from xray_generator.pipelines.registry import check_condition, check_count, check_seed, refuse_source
from xray_generator.weights import MANIFEST_NAME, WeightsError, verify_manifest

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Images decoded per forward pass: fixed, so the same (n, seed) always splits the same way.
GENERATE_BATCH = 16


@dataclass
class NoiseToImageGenerator:
    """A loaded generator: `generate(n, condition, seed)` → float32 (n, H, W) in [0, 1].

    `model` is a module with `sample(n, class_indices, generator)` returning (n, 1, H, W) in [-1, 1]
    and `sampling_parameter_count()`. The argument checks are the registry's, shared by all families.
    """

    family: str
    conditions: tuple[str, ...]
    image_size: int
    weights_sha256: str
    parameters: int
    model: nn.Module
    weights_hash: str = ""
    config: dict = field(default_factory=dict)

    def generate(self, n: int = 1, condition: str | None = None, seed: int = 0, source: np.ndarray | None = None) -> np.ndarray:
        """Draw `n` images.

        Parameters
        ----------
        n : int, default 1, how many images (1 to 10,000).
        condition : str or None, default None. For a conditional family, one of `conditions`;
            None means `default_condition`, the first class (Normal in the shipped configs). An
            unconditional family takes only None.
        seed : int, default 0, seeds the explicit torch.Generator that draws all the noise: the
            same (n, condition, seed) gives identical images.
        source : must be None: these families generate from noise, not from an input image.

        Returns
        -------
        float32 array (n, image_size, image_size) in [0, 1].
        """
        refuse_source(source, self.family)
        n, seed = check_count(n), check_seed(seed)
        condition = check_condition(condition, self.conditions, self.default_condition)
        generator = torch.Generator().manual_seed(seed)
        images = []
        with torch.no_grad():
            for start in range(0, n, GENERATE_BATCH):
                count = min(GENERATE_BATCH, n - start)
                labels = None if condition is None else torch.full((count,), self.conditions.index(condition), dtype=torch.long)
                images.append(self.model.sample(count, labels, generator).float())
        out = torch.cat(images)[:, 0]
        return ((out.clamp(-1.0, 1.0) + 1.0) * 0.5).numpy().astype(np.float32)

    @property
    def default_condition(self) -> str | None:
        """What condition=None means: a conditional family's first class, None for an unconditional one."""
        return self.conditions[0] if self.conditions else None


def wrap_model(family: str, model: nn.Module, model_config: dict, weights_sha256: str = "", weights_hash: str = "", config: dict | None = None) -> NoiseToImageGenerator:
    """A NoiseToImageGenerator around an in-memory model (trainers use it for sample grids)."""
    return NoiseToImageGenerator(
        family=family,
        conditions=check_classes(model_config.get("classes", [])),
        image_size=int(model_config["image_size"]),
        weights_sha256=weights_sha256,
        parameters=model.sampling_parameter_count(),
        model=model.eval(),
        weights_hash=weights_hash,
        config=config or {},
    )


def load_noise_generator(folder: str | Path, families: tuple[str, ...], build_model: Callable[[dict], nn.Module]) -> NoiseToImageGenerator:
    """Verify `folder` against its MANIFEST.json, then build and load the model its config names.

    Raises WeightsError for a missing, altered or unlisted file or weights that do not fit the
    config, and ValueError when the folder holds a family this loader does not serve.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    weights_hash = verify_manifest(folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    family = config.get("family")
    if family not in families:
        raise ValueError(f"{folder} holds family {family!r}; this loader serves {list(families)}")
    model = build_model(config["model"])
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
    except RuntimeError as error:
        raise WeightsError(f"{folder / WEIGHTS_NAME} does not fit the {family} model in {CONFIG_NAME}: {error}") from error
    # The manifest already holds the verified sha256 of the weights file; no second pass over it.
    weights_sha256 = json.loads((folder / MANIFEST_NAME).read_text())["files"][WEIGHTS_NAME]["sha256"]
    return wrap_model(family, model, config["model"], weights_sha256=weights_sha256, weights_hash=weights_hash, config=config)
