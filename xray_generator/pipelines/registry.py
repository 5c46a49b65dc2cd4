"""One registry from a model family name to its loader: `load_generator("ldm")`.

Each family's weights live in `weights/<folder>/` with a MANIFEST.json; loading verifies it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from xray_generator.paths import weights_dir


@dataclass(frozen=True)
class GeneratorSpec:
    name: str
    title: str
    folder: str
    loader: Callable[[Path], object]
    description: str


def _load_ldm(folder: Path):
    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

    return XRayDiffusionPipeline.from_pretrained(folder)


GENERATORS: dict[str, GeneratorSpec] = {
    "ldm": GeneratorSpec(
        name="ldm",
        title="Latent diffusion (text to X-ray)",
        folder="ldm",
        loader=_load_ldm,
        description="AutoencoderKL + cross-attention UNet conditioned on a frozen MiniLM text encoder, with classifier-free guidance.",
    ),
}


class UnknownGeneratorError(KeyError):
    def __str__(self) -> str:
        return f"unknown model family {self.args[0]!r}; available: {', '.join(sorted(GENERATORS))}"


def generator_folder(name: str, root: str | Path | None = None) -> Path:
    if name not in GENERATORS:
        raise UnknownGeneratorError(name)
    return Path(root or weights_dir()) / GENERATORS[name].folder


def available_generators(root: str | Path | None = None) -> list[str]:
    """Families whose weights folder exists (its integrity is checked at load)."""
    return [name for name in GENERATORS if (generator_folder(name, root) / "MANIFEST.json").is_file()]


def load_generator(name: str, root: str | Path | None = None):
    """Load a family's generator from its verified weights folder."""
    return GENERATORS[name].loader(generator_folder(name, root)) if name in GENERATORS else _raise_unknown(name)


def _raise_unknown(name: str):
    raise UnknownGeneratorError(name)
