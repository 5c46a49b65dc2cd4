"""Healthy -> pneumonia translation with the shipped CVAE (`weights/cvae`).

    gen = load_cvae("weights/cvae")                            # verifies MANIFEST.json first
    out = gen.generate(n=1, condition="Pneumonia", seed=0, source=image)   # (1, S, S) in [0, 1]
    recon = gen.generate(condition="Normal", source=image)     # normal -> normal reconstruction

The source is encoded once; each of the `n` outputs decodes a different draw of the latent
(z = mu + sigma * eps, eps from a generator seeded with `seed`) with the skips and the target
label. The condition names the label the output should show; "Normal" gives a reconstruction.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from xray_generator.data.preprocessing import prepare_radiograph
from xray_generator.models.cvae import CVAE, build_cvae, count_parameters
from xray_generator.pipelines.registry import check_condition, check_count, check_seed, check_source
from xray_generator.weights import MANIFEST_NAME, WeightsError, verify_manifest

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FAMILY = "cvae"
DEFAULT_CONDITION = "Pneumonia"  # what the family is for; "Normal" reconstructs
BATCH = 16  # outputs decoded at a time


def resize_to_model(image: np.ndarray, size: int) -> np.ndarray:
    """float32 (H, W) in [0, 1] -> (size, size): shorter side to `size`, centre crop.

    The data layer's `prepare_radiograph` (area resize when shrinking, Lanczos when enlarging), the
    same function the trainer uses on the training films, so a user's film is seen as training
    saw a film.
    """
    return prepare_radiograph(image, size, allow_upsample=True)


def prepare_source(image: np.ndarray, size: int) -> tuple[np.ndarray, list[str]]:
    """The validated, resized source the model sees, and notices of what was done (for display).

    `generate` does the same silently; a page calls this to show the user the exact input beside
    the output and the difference map.
    """
    arr = check_source(image)
    notices = []
    if arr.shape != (size, size):
        height, width = arr.shape
        change = "enlarged" if min(height, width) < size else "reduced"
        crop = " and centre-cropped" if height != width else ""
        notices.append(f"the {width} x {height} source was {change}{crop} to {size} x {size}, the model's size")
    return resize_to_model(arr, size), notices


class CVAEGenerator:
    """A loaded CVAE following `xray_generator.pipelines.registry.Generator` (float32, eval mode).

    Attributes: family ("cvae"), conditions (the labels, e.g. ("Normal", "Pneumonia")),
    image_size, weights_sha256 (of model.safetensors), parameters, config (config.json), model,
    weights_hash (the folder's short manifest hash, as the other families give for provenance).
    """

    family = FAMILY

    def __init__(self, model: CVAE, config: dict, weights_sha256: str, weights_hash: str = ""):
        self.model = model.eval()
        self.config = config
        self.weights_hash = weights_hash
        self.conditions: tuple[str, ...] = tuple(model.labels)
        self.image_size: int = model.image_size
        self.weights_sha256 = weights_sha256
        self.parameters: int = count_parameters(model)
        self.default_condition = DEFAULT_CONDITION if DEFAULT_CONDITION in self.conditions else self.conditions[-1]

    def prepare(self, source: np.ndarray) -> np.ndarray:
        """The (image_size, image_size) input the model sees for `source` (validated, resized)."""
        return resize_to_model(check_source(source), self.image_size)

    def generate(self, n: int = 1, condition: str | None = None, seed: int = 0, source: np.ndarray | None = None) -> np.ndarray:
        """`n` versions of `source` showing `condition`.

        Parameters
        ----------
        n : int, default 1
            Number of outputs; each decodes a different latent draw (they differ subtly: the skips
            carry the anatomy).
        condition : str, optional
            One of `conditions`; default "Pneumonia". "Normal" gives a reconstruction.
        seed : int, default 0
            Seeds the latent draws; the same seed and source give identical output.
        source : (H, W) float array in [0, 1]
            Required: the radiograph to translate, any size (shorter side resized to
            `image_size`, centre-cropped). ValueError if missing, not 2-D, NaN or out of range.

        Returns
        -------
        float32 (n, image_size, image_size) in [0, 1]
        """
        n, seed = check_count(n), check_seed(seed)
        condition = check_condition(condition, self.conditions, self.default_condition)
        image = self.prepare(source)
        x = torch.from_numpy(image * 2.0 - 1.0)[None, None]
        generator = torch.Generator().manual_seed(seed)
        label = self.conditions.index(condition)
        out = []
        with torch.no_grad():
            mu, logvar, skips = self.model.encode(x)
            for start in range(0, n, BATCH):
                count = min(BATCH, n - start)
                eps = torch.randn((count, *mu.shape[1:]), generator=generator)
                z = mu + eps * torch.exp(0.5 * logvar)
                batch_skips = [s.expand(count, -1, -1, -1) for s in skips]
                decoded = self.model.decode(z, batch_skips, torch.full((count,), label, dtype=torch.long))
                out.append(((decoded[:, 0].clamp(-1.0, 1.0) + 1.0) / 2.0).numpy())
        return np.concatenate(out).astype(np.float32, copy=False)


def load_cvae(folder: str | Path) -> CVAEGenerator:
    """Load `config.json` and `model.safetensors` from `folder` after checking MANIFEST.json.

    Raises `WeightsError` if the folder is missing, a file is altered, truncated or unlisted, or
    the weights do not fit the architecture in config.json. Never unpickles anything.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    weights_hash = verify_manifest(folder)
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
        model = build_cvae(config)
        model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, RuntimeError) as error:
        raise WeightsError(f"{folder} does not hold a loadable CVAE ({CONFIG_NAME} + {WEIGHTS_NAME}): {error}") from error
    # The file's sha256 as listed in the manifest verify_manifest has just checked.
    sha256 = json.loads((folder / MANIFEST_NAME).read_text())["files"][WEIGHTS_NAME]["sha256"]
    return CVAEGenerator(model, config, sha256, weights_hash)
