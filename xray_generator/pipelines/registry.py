"""One registry from a model family name to its loader: `load_generator("ldm")`, `load_generator("cvae")`.

Each family's weights live in `weights/<name>/` with a MANIFEST.json; every loader verifies it
(sha256 of each file) before reading a safetensors file, and nothing is ever unpickled.

`GENERATOR_FAMILIES` maps every family name to its loader as a "module:function" path, imported
only when that family is loaded, so listing the families never imports torch models or diffusers.
The alternative families (CVAE, GANs, VAE family) return an object following `Generator`; latent
diffusion returns its diffusers pipeline (prompted, see `XRayDiffusionPipeline.__call__`).

`GENERATORS` holds the text-to-image families the app's Generate page and the `generate` CLI
drive with a prompt; it is the subset of `GENERATOR_FAMILIES` with a title and description.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from xray_generator.paths import weights_dir
from xray_generator.weights import MANIFEST_NAME, WeightsError


@runtime_checkable
class Generator(Protocol):
    """What every alternative generator family returns from its loader.

    Attributes
    ----------
    family : str
        The registry name, e.g. "cvae" or "dcgan_conditional".
    conditions : tuple of str
        The labels `generate` accepts as ``condition`` (vocabulary names such as "Normal",
        "Pneumonia"); empty for an unconditional family.
    image_size : int
        Side of the square images `generate` returns, in pixels.
    weights_sha256 : str
        sha256 of the weights safetensors file, checked against MANIFEST.json at load; goes into
        the provenance of every generated image.
    parameters : int
        Number of parameters of the network that generates (discriminators are not shipped).

    Methods
    -------
    generate(n=1, condition=None, seed=0, source=None) -> float32 (n, image_size, image_size) in [0, 1]
        ``n`` images; the same arguments give identical output (randomness comes only from a
        `torch.Generator` seeded with ``seed``). ``condition`` must be one of ``conditions``
        (ValueError listing them otherwise); None means the family's documented default, and is the
        only value an unconditional family takes. ``source`` is a 2-D float image in [0, 1] of any
        size, resized to the model's size: required by image-to-image families (the CVAE), refused
        with a ValueError by the others; a non-2-D, NaN or out-of-range source is a ValueError.
    """

    family: str
    conditions: tuple[str, ...]
    image_size: int
    weights_sha256: str
    parameters: int

    def generate(self, n: int = 1, condition: str | None = None, seed: int = 0, source: np.ndarray | None = None) -> np.ndarray: ...


# ---------------------------------------------------------------------------- argument checks
# Shared by the families, so every generator refuses bad input with the same words.
MAX_IMAGES_PER_CALL = 10_000  # as the noise-to-image families
MIN_SOURCE_SIDE = 32  # px; below this there is no radiograph left to translate
MAX_SOURCE_ASPECT = 3.0  # radiographs are near-square; a 10000 x 40 strip is not one


def check_count(n: object) -> int:
    """`n` as an int in [1, MAX_IMAGES_PER_CALL]; ValueError otherwise."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= int(n) <= MAX_IMAGES_PER_CALL:
        raise ValueError(f"n must be a whole number of images from 1 to {MAX_IMAGES_PER_CALL}, got {n!r}")
    return int(n)


def check_seed(seed: object) -> int:
    """`seed` as an int in [0, 2**63); ValueError otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed must be a whole number from 0 to 2**63 - 1, got {seed!r}")
    return int(seed)


def check_condition(condition: object, conditions: tuple[str, ...], default: str | None = None) -> str | None:
    """The condition to use: `default` for None, else one of `conditions`; ValueError listing them otherwise."""
    if condition is None:
        return default
    if not conditions:
        raise ValueError(f"this model is unconditional and takes no condition, got {condition!r}")
    if not isinstance(condition, str) or condition not in conditions:
        raise ValueError(f"unknown condition {condition!r}; choose one of: {', '.join(conditions)}")
    return condition


def check_source(source: object) -> np.ndarray:
    """A source radiograph as float32 (H, W) in [0, 1], unchanged; ValueError saying what is wrong.

    Accepts a 2-D float numpy array or torch tensor of any size whose shorter side is at least
    `MIN_SOURCE_SIDE` and whose sides differ by at most `MAX_SOURCE_ASPECT`. Integer images are
    refused rather than guessed at (convert uint8 with `xray_generator.io.to_float_gray` or / 255).
    """
    if source is None:
        raise ValueError("a source radiograph is required: pass source=<2-D float image in [0, 1]>")
    if hasattr(source, "detach"):  # a torch tensor
        source = source.detach().cpu().numpy()
    arr = np.asarray(source)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"the source must be a float image in [0, 1], got an array of {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"the source must be a 2-D (H, W) grayscale image, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("the source contains NaN or infinite values")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(f"the source must lie in [0, 1], got values from {arr.min():.3g} to {arr.max():.3g}")
    height, width = arr.shape
    if min(height, width) < MIN_SOURCE_SIDE:
        raise ValueError(f"the source is {width} x {height} pixels; it needs at least {MIN_SOURCE_SIDE} on each side")
    if max(height, width) / min(height, width) > MAX_SOURCE_ASPECT:
        raise ValueError(f"the source is {width} x {height} pixels; a chest radiograph is near-square (sides within {MAX_SOURCE_ASPECT:g}x)")
    return arr.astype(np.float32, copy=False)


def refuse_source(source: object, family: str) -> None:
    """ValueError when a family that draws from noise is given a source image."""
    if source is not None:
        raise ValueError(f"the {family} model generates from noise and takes no source image; only the CVAE translates a radiograph")


# Name -> "module:function"; the function takes the weights folder (a Path) and returns the
# family's generator. The folder is weights/<name>, one per family.
GENERATOR_FAMILIES: dict[str, str] = {
    "ldm": "xray_generator.pipelines.registry:load_latent_diffusion",
    "cvae": "xray_generator.pipelines.cvae:load_cvae",
    "dcgan": "xray_generator.pipelines.gan:load_gan",
    "dcgan_conditional": "xray_generator.pipelines.gan:load_gan",
    "lsgan": "xray_generator.pipelines.gan:load_gan",
    "vae": "xray_generator.pipelines.vae_family:load_vae_family",
    "gmvae": "xray_generator.pipelines.vae_family:load_vae_family",
    "gmvae_supervised": "xray_generator.pipelines.vae_family:load_vae_family",
}

# What each family makes its image from: a prompt (text-to-image), a source radiograph and a
# label (image-to-image), or noise and optionally a class (noise-to-image). The CLI and the
# evaluation ask each family for what it takes.
FAMILY_KINDS: dict[str, str] = {
    name: {"ldm": "text-to-image", "cvae": "image-to-image"}.get(name, "noise-to-image") for name in GENERATOR_FAMILIES
}


def load_latent_diffusion(folder: Path):
    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

    return XRayDiffusionPipeline.from_pretrained(folder)


@dataclass(frozen=True)
class GeneratorSpec:
    name: str
    title: str
    folder: str
    loader: Callable[[Path], object]
    description: str


GENERATORS: dict[str, GeneratorSpec] = {
    "ldm": GeneratorSpec(
        name="ldm",
        title="Latent diffusion (text to X-ray)",
        folder="ldm",
        loader=load_latent_diffusion,
        description="AutoencoderKL + cross-attention UNet conditioned on a frozen MiniLM text encoder, with classifier-free guidance.",
    ),
}


class UnknownGeneratorError(ValueError, KeyError):
    """A family name the registry does not know. A ValueError (bad argument) and, for older callers, a KeyError."""

    def __str__(self) -> str:
        return f"unknown model family {self.args[0]!r}; known families: {', '.join(sorted(GENERATOR_FAMILIES))}"


def _check_name(name: object) -> str:
    if not isinstance(name, str) or name not in GENERATOR_FAMILIES:
        raise UnknownGeneratorError(name)
    return name


def generator_folder(name: str, root: str | Path | None = None) -> Path:
    """Where family `name` keeps its weights: `<root or weights/>/<name>`."""
    _check_name(name)
    folder = GENERATORS[name].folder if name in GENERATORS else name
    return Path(root or weights_dir()) / folder


def available_generators(root: str | Path | None = None) -> list[str]:
    """Families whose weights folder has a manifest (its integrity is checked at load)."""
    return [name for name in GENERATOR_FAMILIES if (generator_folder(name, root) / MANIFEST_NAME).is_file()]


def family_loader(name: str) -> Callable[[Path], object]:
    """Import and return the loader function of family `name`."""
    module_name, function_name = GENERATOR_FAMILIES[_check_name(name)].split(":")
    return getattr(importlib.import_module(module_name), function_name)


def load_generator(name: str, weights_dir: str | Path | None = None):
    """Load a family's generator from its verified weights folder.

    Parameters
    ----------
    name : str
        One of `GENERATOR_FAMILIES`; anything else raises `UnknownGeneratorError` (a ValueError)
        naming the known families.
    weights_dir : str or Path, optional
        The weights root holding `<name>/`; default `xray_generator.paths.weights_dir()`
        (`weights/`, or `$CXR_WEIGHTS_DIR`).

    Raises
    ------
    WeightsError
        The family's folder is missing (it has not been trained and exported yet) or does not
        match its MANIFEST.json.
    """
    folder = generator_folder(name, weights_dir)
    if not folder.is_dir():
        raise WeightsError(f"no weights for model family {name!r}: {folder} does not exist (train and export it first)")
    return family_loader(name)(folder)
