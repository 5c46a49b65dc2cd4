"""What the Streamlit studio needs from the library, as plain functions (this module never imports Streamlit).

The pages in `pages/` are thin: they lay out widgets and call these functions. Everything here can be
called from a test or a notebook. Heavy objects (pipelines, the manifest) are built by the plain
loaders below; the app wraps them in `st.cache_resource` so each loads once per process.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import threading
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from xray_generator.io import atomic_write, png_bytes_with_metadata, read_gray, read_png_metadata, to_uint8
from xray_generator.paths import outputs_dir, weights_dir

DISCLAIMER = "Synthetic images for research use only. Not for clinical use."
SYNTHETIC_CAPTION = "SYNTHETIC"
NATIVE_RESOLUTION = 256
# 512 and 768 are a plain resize of the 256 px output; they add pixels, never anatomical detail.
UPSCALED_RESOLUTIONS = (512, 768)
UPSCALE_METHOD = "bicubic resize of the 256 px output (no detail added)"
MAX_IMAGES_PER_REQUEST = 8

# ---------------------------------------------------------------------------------------------------
# Model families and loading
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilyInfo:
    """How the studio presents a registry family: title, what it does, how it is driven and trained.

    kind: "text" (prompted latent diffusion), "noise" (noise [+ class] to image: GANs, VAE family)
    or "translation" (a source radiograph to a target condition: the CVAE).
    """

    title: str
    kind: str
    description: str
    trainer: str  # module under xray_generator.training
    config: str  # file under configs/


# Titles and descriptions of the alternative families; latent diffusion's come from the registry's
# GENERATORS. Every registry family must have an entry (tests check it).
FAMILY_INFO: dict[str, FamilyInfo] = {
    "ldm": FamilyInfo("", "text", "", "train_ldm", "ldm.json"),
    "cvae": FamilyInfo(
        "CVAE (healthy → pneumonia translation)", "translation",
        "U-Net conditional VAE: encodes a normal film (skips keep the anatomy) and decodes it under a target label "
        "with FiLM conditioning; trained with a label-conditioned PatchGAN and a classifier perceptual loss.",
        "train_cvae", "cvae.json"),
    "dcgan": FamilyInfo(
        "DCGAN", "noise",
        "Unconditional DCGAN: z ∈ R^100 → dense → transposed convolutions with BatchNorm and ReLU → tanh.",
        "train_gan", "dcgan.json"),
    "dcgan_conditional": FamilyInfo(
        "Conditional DCGAN", "noise",
        "Class-conditional DCGAN: a label embedding joins z; one image per requested class.",
        "train_gan", "dcgan_conditional.json"),
    "lsgan": FamilyInfo(
        "LSGAN", "noise",
        "The DCGAN backbone trained with the least-squares objective.",
        "train_gan", "lsgan.json"),
    "vae": FamilyInfo(
        "VAE (baseline)", "noise",
        "Convolutional VAE with a transposed-convolution decoder and an N(0, I) prior; samples decode prior draws.",
        "train_vae_family", "vae_baseline.json"),
    "gmvae": FamilyInfo(
        "GMVAE", "noise",
        "VAE with a learnable mixture-of-Gaussians prior (K components).",
        "train_vae_family", "gmvae.json"),
    "gmvae_supervised": FamilyInfo(
        "Supervised GMVAE", "noise",
        "GMVAE with one prior component per class and label conditioning, for class-specific sampling.",
        "train_vae_family", "gmvae_supervised.json"),
}


@dataclass(frozen=True)
class GeneratorStatus:
    """A model family as the pages list it: usable or not, and why not."""

    name: str
    title: str
    description: str
    folder: Path
    available: bool
    reason: str
    weights_hash: str | None
    kind: str = "text"
    train_commands: tuple[str, ...] = ()
    damaged: bool = False  # the folder is complete but its files fail the sha256 check

    @property
    def trained(self) -> bool:
        """Whether exported weights exist (available, or present but damaged)."""
        return self.available or self.damaged


def family_info(name: str) -> FamilyInfo:
    """Title, kind and description of registry family `name` (latent diffusion's from the registry)."""
    from xray_generator.pipelines.registry import GENERATORS

    info = FAMILY_INFO.get(name) or FamilyInfo(name, "noise", "", "", "")
    if name in GENERATORS:
        spec = GENERATORS[name]
        info = FamilyInfo(spec.title, info.kind, spec.description, info.trainer, info.config)
    return info


def _shown_path(path: Path) -> str:
    from xray_generator.paths import REPO_ROOT

    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def train_commands(name: str, folder: str | Path | None = None) -> tuple[str, ...]:
    """The commands that train family `name` and export it to its weights folder."""
    from xray_generator.pipelines.registry import generator_folder

    out = _shown_path(Path(folder) if folder is not None else generator_folder(name))
    info = FAMILY_INFO[name]
    if name == "ldm":  # the autoencoder first, then the UNet on its latents (README: Training)
        return (
            "python -m xray_generator.training.train_vae train --config configs/vae.json --run outputs/runs/vae --resume",
            "python -m xray_generator.training.train_vae export --run outputs/runs/vae --out outputs/runs/vae/autoencoder",
            "python -m xray_generator.training.train_ldm train --config configs/ldm.json --run outputs/runs/ldm --resume",
            f"python -m xray_generator.training.train_ldm export --run outputs/runs/ldm --out {out} --autoencoder outputs/runs/vae/autoencoder",
        )
    module = f"python -m xray_generator.training.{info.trainer}"
    return (f"{module} train --config configs/{info.config} --run outputs/runs/{name} --resume",
            f"{module} export --run outputs/runs/{name} --out {out}")


def generator_statuses(root: str | Path | None = None) -> list[GeneratorStatus]:
    """Every registry family, with its weights hash when its folder is complete, else the reason it is not.

    Cheap (no hashing): a complete folder is one with a MANIFEST.json; `check_weights` verifies the
    files, and `mark_damaged` turns the families that fail into unavailable ones.
    """
    from xray_generator.pipelines.registry import GENERATOR_FAMILIES, generator_folder
    from xray_generator.weights import MANIFEST_NAME, weights_hash

    root = Path(root) if root is not None else weights_dir()
    statuses = []
    for name in GENERATOR_FAMILIES:
        info = family_info(name)
        folder = generator_folder(name, root)
        common = dict(name=name, title=info.title, description=info.description, folder=folder, kind=info.kind,
                      train_commands=train_commands(name, folder))
        if (folder / MANIFEST_NAME).is_file():
            statuses.append(GeneratorStatus(**common, available=True, reason="", weights_hash=weights_hash(folder)))
            continue
        if folder.is_dir():
            reason = f"weights folder {folder} has no {MANIFEST_NAME} (export unfinished or files copied by hand)"
        elif (outputs_dir() / "runs" / name).is_dir():
            reason = f"being trained (run in outputs/runs/{name}); no exported weights in {folder} yet"
        else:
            reason = f"not trained yet: no weights in {folder}"
        statuses.append(GeneratorStatus(**common, available=False, reason=reason, weights_hash=None))
    return statuses


def weights_fingerprint(folder: str | Path) -> tuple:
    """(file, size, mtime) of every file in a weights folder: changes whenever a file is replaced or edited."""
    folder = Path(folder)
    if not folder.is_dir():
        return ()
    return tuple((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file())


def check_weights(folder: str | Path) -> str | None:
    """None when every file matches MANIFEST.json, else the problem (the sha256 check every loader runs)."""
    from xray_generator.weights import WeightsError, verify_manifest

    try:
        verify_manifest(folder)
    except WeightsError as exc:
        return str(exc)
    return None


def mark_damaged(statuses: Sequence[GeneratorStatus], check: Callable[[Path], str | None] = check_weights) -> list[GeneratorStatus]:
    """The statuses with every available family whose weights fail `check` made unavailable, saying why."""
    from dataclasses import replace

    marked = []
    for status in statuses:
        problem = check(status.folder) if status.available else None
        if problem:
            status = replace(status, available=False, damaged=True, weights_hash=None,
                             reason=f"its weights failed the sha256 check: {problem.rstrip('.')}. Re-export or restore {status.folder}")
        marked.append(status)
    return marked


def status_label(status: GeneratorStatus) -> str:
    """A short state for tables and selectors."""
    if status.available:
        return "available"
    if status.damaged:
        return "weights failed the sha256 check"
    return "not trained yet" if "not trained yet" in status.reason else status.reason.split(";")[0].split(" (")[0]


def load_pipeline(name: str, root: str | Path | None = None):
    """Load (and verify) a family's generator. The app caches the result per (name, root, weights hash)."""
    from xray_generator.pipelines.registry import load_generator

    return load_generator(name, root)


THREADS_ENV = "CXR_NUM_THREADS"


def apply_thread_setting() -> int:
    """Set torch's intra-op threads from CXR_NUM_THREADS (if set); return the count in use.

    On a small machine that is also training, fewer threads than cores avoids oversubscription,
    which can make each step many times slower than with one thread.
    """
    import torch

    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        try:
            threads = int(value)
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}") from None
        if threads < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def runtime_info() -> dict[str, Any]:
    """Device, threads and memory, for the sidebar."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "device": device,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "rss_mb": process_memory_mb(),
    }


def process_memory_mb() -> float | None:
    """Resident memory of this process in MB (Linux /proc; None elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------

# One generation at a time per process: the machine has few cores, and two runs sharing them would
# each take twice as long. Each call seeds its own generator, so the lock is for speed, not results.
GENERATION_LOCK = threading.Lock()


@contextmanager
def generation_lock(on_wait: Callable[[], None] | None = None, timeout: float | None = None) -> Iterator[None]:
    """Hold the process-wide generation lock; call `on_wait` once if another generation holds it."""
    if not GENERATION_LOCK.acquire(blocking=False):
        if on_wait is not None:
            on_wait()
        if not GENERATION_LOCK.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError("another generation is still running; try again in a moment")
    try:
        yield
    finally:
        GENERATION_LOCK.release()


@dataclass(frozen=True)
class GenerationRequest:
    """What the user asked for on the Generate page."""

    prompt: str
    negative_prompt: str = ""
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    guidance_fraction: float | None = None
    backend: str | None = None  # None: this CPU's fastest (pipelines/runtime.py)
    seed: int = 0
    num_images: int = 1
    resolution: int = NATIVE_RESOLUTION
    preset: str = "None"
    preset_steps: tuple = ()

    def check(self) -> None:
        """ValueError with a message a user can act on, before the generation lock is taken.

        Wrong types (a seed of "7" or 1.5, steps of "10", a NaN guidance) are refused here rather
        than coerced; the prompt rules (length, control characters) are the pipeline's
        `check_prompt_text`, and the pipeline checks the ranges of steps and guidance again.
        """
        from xray_generator.pipelines.latent_diffusion import MAX_GUIDANCE, MAX_STEPS, check_prompt_text

        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("the prompt is empty; describe the radiograph, e.g. 'PA chest radiograph, right lower lobe pneumonia'")
        check_prompt_text(self.prompt, "the prompt")
        if not isinstance(self.negative_prompt, str):
            raise ValueError("the negative prompt must be text")
        check_prompt_text(self.negative_prompt, "the negative prompt")
        if self.resolution != NATIVE_RESOLUTION and self.resolution not in UPSCALED_RESOLUTIONS:
            raise ValueError(f"resolution must be {NATIVE_RESOLUTION} (native) or one of {UPSCALED_RESOLUTIONS} (upscaled)")
        if not _is_integer(self.num_images) or not 1 <= self.num_images <= MAX_IMAGES_PER_REQUEST:
            raise ValueError(f"number of images must be an integer from 1 to {MAX_IMAGES_PER_REQUEST}, got {self.num_images!r}")
        if not _is_integer(self.seed) or not 0 <= self.seed < 2**63 - MAX_IMAGES_PER_REQUEST:
            raise ValueError(f"seed must be a non-negative integer below 2**63, got {self.seed!r}")
        if self.steps is not None and (not _is_integer(self.steps) or not 1 <= self.steps <= MAX_STEPS):
            raise ValueError(f"steps must be an integer from 1 to {MAX_STEPS}, got {self.steps!r}")
        if self.guidance is not None and not (_is_finite_number(self.guidance) and 0 <= self.guidance <= MAX_GUIDANCE):
            raise ValueError(f"guidance must be a number from 0 to {MAX_GUIDANCE}, got {self.guidance!r}")
        if self.guidance_fraction is not None and not (_is_finite_number(self.guidance_fraction) and 0 < self.guidance_fraction <= 1):
            raise ValueError(f"the guided share of the steps must be a number above 0 and at most 1, got {self.guidance_fraction!r}")
        if self.sampler is not None and not isinstance(self.sampler, str):
            raise ValueError(f"sampler must be a name such as 'dpm++', got {self.sampler!r}")
        if self.backend is not None:
            from xray_generator.pipelines.runtime import check_backend

            check_backend(self.backend)


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and bool(np.isfinite(value))


@dataclass
class GeneratedImage:
    image: np.ndarray  # what is shown and downloaded: enhanced and, if asked, upscaled
    native: np.ndarray  # the pipeline's 256 px output, untouched
    metadata: dict[str, Any]

    @property
    def caption(self) -> str:
        m = self.metadata
        size = f"{m['resolution']} px upscaled from {m['native_resolution']}" if m.get("upscaled") else f"{m['resolution']} px native"
        preset = f" · {m['enhancement_preset']}" if m.get("enhancement_preset", "None") != "None" else ""
        if "family" in m:
            return family_caption(m)
        return f"{SYNTHETIC_CAPTION} · seed {m['seed']} · {size}{preset}"


def family_caption(metadata: dict) -> str:
    """Caption of an image from an alternative family: SYNTHETIC, which family and weights, the class, seed and size."""
    m = metadata
    condition = f" · {m['condition']}" if m.get("condition") else ""
    preset = f" · {m['enhancement_preset']}" if m.get("enhancement_preset", "None") != "None" else ""
    weights = m.get("weights_hash") or str(m.get("weights_sha256", ""))[:16]
    return f"{SYNTHETIC_CAPTION} · {m['family']} · weights {weights}{condition} · seed {m['seed']} · {m['resolution']} px native{preset}"


@dataclass
class GenerationResult:
    images: list[GeneratedImage]
    seconds: float
    total_steps: int
    notices: list[str] = field(default_factory=list)

    @property
    def steps_per_second(self) -> float:
        return self.total_steps / self.seconds if self.seconds > 0 else float("nan")


def random_seed() -> int:
    """A fresh seed the user can read and reuse (31 bits, easy to type)."""
    return int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF


def upscale(image: np.ndarray, size: int) -> np.ndarray:
    """Plain bicubic resize to size × size: more pixels, no new detail."""
    from PIL import Image

    if image.shape == (size, size):
        return image.copy()
    resized = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def enhance(image: np.ndarray, preset: str, preset_steps: Sequence = ()) -> np.ndarray:
    """Apply a built-in preset by name, or the given steps for a custom one."""
    if preset == "None" and not preset_steps:
        return image
    from post_process import apply_preset

    return apply_preset(image, list(preset_steps) if preset_steps else preset)


def generate_images(
    pipe,
    request: GenerationRequest,
    on_step: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> GenerationResult:
    """Generate `request.num_images` images, image i with seed `request.seed + i`.

    One pipeline call per image, so each image's metadata alone reproduces it (same seed, same
    settings, batch of one). `on_step(done, total)` reports progress across all images;
    `should_cancel()` returning True stops at the next step (GenerationCancelled).
    """
    request.check()
    steps = int(pipe.resolve_settings(num_inference_steps=request.steps)["num_inference_steps"])
    total = steps * request.num_images
    images: list[GeneratedImage] = []
    notices: list[str] = []
    started = time.perf_counter()
    for index in range(request.num_images):
        def callback(_pipe, step_index, _timestep, _kwargs, offset=index * steps):
            if on_step is not None:
                on_step(offset + step_index + 1, total)
            if should_cancel is not None and should_cancel():
                return {"interrupt": True}
            return None

        output = pipe(
            request.prompt,
            negative_prompt=request.negative_prompt or None,
            num_inference_steps=steps,
            guidance_scale=request.guidance,
            guidance_fraction=request.guidance_fraction,
            seed=int(request.seed) + index,
            sampler=request.sampler,
            height=NATIVE_RESOLUTION,
            width=NATIVE_RESOLUTION,
            callback_on_step_end=callback,
            backend=request.backend,
        )
        notices.extend(n for n in output.notices if n not in notices)
        native = output.images[0]
        shown = enhance(native, request.preset, request.preset_steps)
        upscaled = request.resolution != NATIVE_RESOLUTION
        if upscaled:
            shown = upscale(shown, request.resolution)
        metadata = dict(output.metadata[0])
        metadata.pop("index_in_batch", None)
        metadata.update(
            native_resolution=NATIVE_RESOLUTION,
            resolution=request.resolution,
            upscaled=upscaled,
            upscale_method=UPSCALE_METHOD if upscaled else None,
            enhancement_preset=request.preset,
            enhancement_steps=_preset_steps_json(request.preset, request.preset_steps),
            generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            software="CXR Studio",
        )
        images.append(GeneratedImage(shown, native, metadata))
    return GenerationResult(images, time.perf_counter() - started, total, notices)


@dataclass(frozen=True)
class FamilyRequest:
    """What the user asked of a noise-to-image family (GAN, VAE family) on the Generate page."""

    condition: str | None = None
    seed: int = 0
    num_images: int = 1
    preset: str = "None"
    preset_steps: tuple = ()

    def check(self, generator) -> None:
        """ValueError with a message a user can act on, before the generation lock is taken."""
        from xray_generator.pipelines.registry import check_condition

        if not _is_integer(self.num_images) or not 1 <= self.num_images <= MAX_IMAGES_PER_REQUEST:
            raise ValueError(f"number of images must be an integer from 1 to {MAX_IMAGES_PER_REQUEST}, got {self.num_images!r}")
        if not _is_integer(self.seed) or not 0 <= self.seed < 2**63 - MAX_IMAGES_PER_REQUEST:
            raise ValueError(f"seed must be a non-negative integer below 2**63, got {self.seed!r}")
        check_condition(self.condition, tuple(generator.conditions))


def family_metadata(generator, weights_hash: str | None, condition: str | None, seed: int, kind: str = "noise") -> dict[str, Any]:
    """Provenance of one image from an alternative family: enough to make it again with `load_generator`."""
    return {
        "model": generator.family,
        "family": generator.family,
        "kind": kind,
        # sha256 of the family's model.safetensors (verified against MANIFEST.json at load) and the
        # short hash of the whole folder's manifest (shown in the sidebar and on Model analysis).
        "weights_sha256": generator.weights_sha256,
        "weights_hash": weights_hash or "",
        "condition": condition,
        "seed": int(seed),
        "image_size": int(generator.image_size),
        "synthetic": True,
        "notice": DISCLAIMER,
    }


def generate_family_images(
    generator,
    request: FamilyRequest,
    weights_hash: str | None = None,
    on_image: Callable[[int, int], None] | None = None,
) -> GenerationResult:
    """`request.num_images` images from a noise-to-image family, image i with seed `request.seed + i`.

    One `generate(1, condition, seed)` call per image, so each image's metadata alone reproduces it.
    `on_image(done, total)` reports progress. The result has the same shape as `generate_images`'
    (its steps are images), so the same downloads (PNG, batch ZIP, DICOM) serve both.
    """
    request.check(generator)
    condition = request.condition if request.condition is not None else getattr(generator, "default_condition", None)
    size = int(generator.image_size)
    images: list[GeneratedImage] = []
    started = time.perf_counter()
    for index in range(request.num_images):
        seed = int(request.seed) + index
        native = np.asarray(generator.generate(1, condition=condition, seed=seed)[0], dtype=np.float32)
        shown = enhance(native, request.preset, request.preset_steps)
        metadata = family_metadata(generator, weights_hash, condition, seed)
        metadata.update(
            native_resolution=size,
            resolution=size,
            upscaled=False,
            enhancement_preset=request.preset,
            enhancement_steps=_preset_steps_json(request.preset, request.preset_steps),
            generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            software="CXR Studio",
        )
        images.append(GeneratedImage(shown, native, metadata))
        if on_image is not None:
            on_image(index + 1, request.num_images)
    notices = [] if size == NATIVE_RESOLUTION else [
        f"{generator.family} generates {size} px images natively: the files keep {size} px; the page may display them larger."]
    return GenerationResult(images, time.perf_counter() - started, request.num_images, notices)


def generation_downloads(result: GenerationResult) -> dict[str, Any]:
    """PNG bytes (metadata embedded) of every image and the batch ZIP, for the download buttons."""
    return {"png": [png_bytes_with_metadata(item.image, item.metadata) for item in result.images],
            "zip": batch_zip_bytes(result.images)}


@dataclass(frozen=True)
class TranslationRequest:
    """What the user asked of an image-to-image family (the CVAE): a source film, a target condition, a seed."""

    condition: str | None = None
    seed: int = 0
    source_id: str | None = None
    source_description: str = ""


def translate_radiograph(generator, source: np.ndarray, request: TranslationRequest, weights_hash: str | None = None):
    """The source as the model sees it, its translation and their difference, as an `EditResult`; and the seconds taken.

    The result is the Edit page's type, so the same difference map, overlay and downloads serve
    both. Its notices say how the source was resized to the model's size.
    """
    from xray_generator.pipelines.cvae import prepare_source
    from xray_generator.pipelines.editing import build_result
    from xray_generator.pipelines.registry import check_condition, check_seed

    seed = check_seed(request.seed)
    condition = check_condition(request.condition, tuple(generator.conditions), getattr(generator, "default_condition", None))
    started = time.perf_counter()
    prepared, notices = prepare_source(source, int(generator.image_size))
    translated = np.asarray(generator.generate(1, condition=condition, seed=seed, source=source)[0], dtype=np.float32)
    metadata = family_metadata(generator, weights_hash, condition, seed, kind="translation")
    metadata.update(
        source_image_id=request.source_id,
        source=request.source_description,
        source_shape=list(np.shape(source)),
        resolution=int(generator.image_size),
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        software="CXR Studio",
    )
    return build_result(prepared, translated, None, metadata, notices), time.perf_counter() - started


def translation_file_stem(metadata: dict) -> str:
    source = slug(str(metadata.get("source_image_id") or "source"))[:40]
    return f"synthetic_cxr_{metadata.get('family', 'cvae')}_{slug(str(metadata.get('condition') or ''))}_{source}_seed{metadata.get('seed', 'x')}"


def _preset_steps_json(preset: str, steps: Sequence) -> list:
    if not steps and preset == "None":
        return []
    from post_process import BUILTIN_PRESETS

    chosen = steps if steps else BUILTIN_PRESETS.get(preset, ())
    return [{"operation": name, "parameters": {k: list(v) if isinstance(v, tuple) else v for k, v in dict(params).items()}} for name, params in chosen]


def image_file_stem(metadata: dict, index: int | None = None) -> str:
    stem = f"synthetic_cxr_{metadata.get('model', 'model')}_seed{metadata.get('seed', 'x')}"
    return stem if index is None else f"{index:02d}_{stem}"


MANIFEST_FIELDS = ("file", "model", "weights_sha256", "prompt", "negative_prompt", "sampler", "steps", "guidance", "guidance_fraction", "seed",
                   "precision", "backend", "native_resolution", "resolution", "upscaled", "enhancement_preset", "synthetic", "generated_at")


FAMILY_MANIFEST_FIELDS = ("family", "condition", "weights_hash")


def batch_zip_bytes(images: Sequence[GeneratedImage]) -> bytes:
    """A ZIP of PNGs (each with its metadata embedded) plus manifest.csv and manifest.json."""
    buffer = io.BytesIO()
    rows = []
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for index, item in enumerate(images):
            name = f"{image_file_stem(item.metadata, index)}.png"
            archive.writestr(name, png_bytes_with_metadata(item.image, item.metadata))
            rows.append({"file": name, **item.metadata})
        text = io.StringIO()
        # Alternative families add their family and condition columns; prompted batches keep the original columns.
        fields = list(MANIFEST_FIELDS) + [f for f in FAMILY_MANIFEST_FIELDS if any(f in row for row in rows)]
        writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        archive.writestr("manifest.csv", text.getvalue())
        archive.writestr("manifest.json", json.dumps({"notice": DISCLAIMER, "images": rows}, indent=2, sort_keys=True) + "\n")
        archive.writestr("README.txt", f"{DISCLAIMER}\nEvery PNG here is SYNTHETIC; manifest.csv/json list how each was made.\n")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# Example prompts
# ---------------------------------------------------------------------------------------------------


def example_prompts(limit: int | None = None) -> list[tuple[str, str]]:
    """(label, prompt) pairs: findings phrased from the label vocabulary, then the IU report library."""
    from xray_generator.data.prompt_library import load_prompt_library
    from xray_generator.vocabulary import LABELS, phrases_for

    examples = [(f"{label} (vocabulary)", f"PA chest radiograph: {phrases_for(label)[0]}.") for label in LABELS[:8]]
    library = load_prompt_library()
    for row in library.itertuples(index=False):
        short = row.prompt if len(row.prompt) <= 70 else row.prompt[:67] + "..."
        examples.append((f"IU report {row.uid}: {short}", row.prompt))
    return examples[:limit] if limit else examples


def prompt_for_label(label: str) -> str:
    from xray_generator.vocabulary import phrases_for

    return f"Frontal chest radiograph: {phrases_for(label)[0]}."


def chip_phrase(label: str) -> str:
    """The words a chip adds: the label's first radiology phrase; a thoracic finding (NIH/IU set) by its own name.

    `vocabulary.phrases_for` reads unlisted labels as organisms ("<label> pneumonia"), which is
    right for the curated labels and wrong for e.g. "Cardiomegaly".
    """
    from xray_generator.vocabulary import THORACIC_FINDINGS, phrases_for

    return label.lower() if label in THORACIC_FINDINGS else phrases_for(label)[0]


@dataclass(frozen=True)
class FindingChip:
    """A finding the user can add to the prompt with one click; `count` is None when not recorded."""

    label: str
    phrase: str
    count: int | None

    @property
    def text(self) -> str:
        return self.label if self.count is None else f"{self.label} · {self.count:,}"


def finding_chips(weights_folder: str | Path | None) -> tuple[list[FindingChip], str]:
    """(chips, a sentence saying where they come from) for the prompt-assist row.

    With the weights' training vocabulary (`model_vocabulary.load_training_vocabulary`, written at
    export), the chips are the findings the model was trained on, most images first, with their
    counts; findings it never saw are not offered (the page's notice names them if a prompt asks for
    one). Without it, the chips are the label vocabulary and the sentence says that no counts were
    recorded for these weights; counts are never estimated.
    """
    from xray_generator.model_vocabulary import TRAINING_VOCABULARY_FILE, load_training_vocabulary
    from xray_generator.vocabulary import LABELS

    unrecorded = [FindingChip(label, chip_phrase(label), None) for label in LABELS]
    if weights_folder is None:
        return unrecorded, "The label vocabulary; counts not recorded for these weights."
    path = Path(weights_folder) / TRAINING_VOCABULARY_FILE
    try:
        vocabulary = load_training_vocabulary(weights_folder)
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        return unrecorded, f"{_shown_path(path)} could not be read ({exc}); the label vocabulary, without counts."
    if vocabulary is None:
        return unrecorded, "The label vocabulary; counts not recorded for these weights (no training_vocabulary.json beside them)."
    counts = {label: int(n) for label, n in vocabulary["label_counts"].items() if _is_integer(n)}
    trained = sorted(((label, n) for label, n in counts.items() if n > 0), key=lambda item: (-item[1], item[0]))
    unseen = sum(1 for n in counts.values() if n == 0)
    chips = [FindingChip(label, chip_phrase(label), n) for label, n in trained]
    total = vocabulary.get("n_images")
    images = f" of {total:,} training images" if _is_integer(total) else ""
    return chips, (f"Findings these weights were trained on, with their image counts{images} ({_shown_path(path)}); "
                   f"{unseen} vocabulary finding{'s' if unseen != 1 else ''} never seen in training {'are' if unseen != 1 else 'is'} not offered.")


def prompt_with_finding(prompt: str, phrase: str) -> str:
    """`prompt` with `phrase` appended as a sentence of its own; unchanged if the phrase is already in it.

    A new sentence (not a clause after a comma) so that a negation earlier in the prompt ("no
    effusion, ...") does not reach the added finding.
    """
    text = prompt.strip()
    if phrase.lower() in text.lower():
        return prompt
    if not text:
        return f"PA chest radiograph: {phrase}."
    sentence = phrase[:1].upper() + phrase[1:]
    return f"{text} {sentence}." if text.endswith((".", "!", "?")) else f"{text}. {sentence}."


# ---------------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------------


def load_dataset(path: str | Path | None = None):
    """(manifest, None) or (None, message saying what is missing and that generation still works)."""
    from xray_generator.data.manifest import ManifestError, load_manifest
    from xray_generator.paths import default_data_dir

    where = Path(path) if path is not None else default_data_dir()
    try:
        return load_manifest(where), None
    except FileNotFoundError:
        return None, (f"No dataset found at {where} (no metadata.csv). Set CXR_DATA_DIR to the curated set or "
                      "CXR_SAMPLE_DIR to the shipped sample. Generation still works without it.")
    except ManifestError as exc:
        return None, f"The dataset at {where} has a broken manifest: {exc}. Generation still works without it."


INDEX_URL_ENV = "CXR_INDEX_URL"


def index_url() -> str | None:
    """The shared index database the lab registers generated films in (CXR_INDEX_URL), if any."""
    return os.environ.get(INDEX_URL_ENV, "").strip() or None


def with_generated_films(manifest, url: str):
    """The real manifest plus the generated films registered at `url` (source synthetic:<model>, split synthetic).

    Raises `IndexConnectionError` (from xray_generator.data.index) when the database cannot be reached.
    """
    from xray_generator.data.index import generated_films
    from xray_generator.data.manifest import Manifest

    generated = generated_films(url)
    if generated.empty:
        return manifest
    return Manifest(pd.concat([manifest.table, generated], ignore_index=True), manifest.root)


def is_synthetic_row(row) -> bool:
    from xray_generator.data.index import SYNTHETIC_SPLIT

    return str(row["split"]) == SYNTHETIC_SPLIT


def source_licence_table(manifest) -> pd.DataFrame:
    """Images per (source, source_repo, licence): the 'about this data' table."""
    table = manifest.table
    grouped = table.groupby(["source", "source_repo", "license"], dropna=False).size().rename("images").reset_index()
    return grouped.sort_values(["source", "images"], ascending=[True, False]).reset_index(drop=True)


def source_summary(manifest) -> pd.DataFrame:
    """One row per source: images, patients, images per split, and whom to credit (`SOURCE_CREDITS`)."""
    from xray_generator.data.manifest import SOURCE_CREDITS

    table = manifest.table
    splits = pd.crosstab(table["source"], table["split"]).reindex(columns=["train", "val", "test"], fill_value=0)
    summary = pd.DataFrame({
        "images": table.groupby("source").size(),
        "patients": table.groupby("source")["patient_id"].nunique(),
    }).join(splits)
    summary["credit"] = [SOURCE_CREDITS.get(source, "see the dataset card") for source in summary.index]
    return summary.rename_axis("source").reset_index()


def label_source_table(manifest) -> pd.DataFrame:
    """Images per label (rows, most common first) and source (columns), plus an 'all' column."""
    from xray_generator.data.manifest import split_labels

    table = manifest.table[["source", "labels"]].assign(label=manifest.table["labels"].map(split_labels)).explode("label")
    table = table.dropna(subset=["label"])
    if table.empty:
        return pd.DataFrame(columns=["label", "all"])
    counts = pd.crosstab(table["label"], table["source"])
    counts["all"] = counts.sum(axis=1)
    return counts.sort_values("all", ascending=False, kind="stable").rename_axis("label").rename_axis(None, axis=1).reset_index()


def finding_caption(labels: str | None) -> str:
    """A short label for a thumbnail: the most specific label, and how many more the film carries.

    The curated pneumonia sources list labels general to specific ("Pneumonia; Viral pneumonia;
    COVID-19": the last one says most); NIH lists its findings in its own order, so the first of its
    thoracic findings is shown ("Cardiomegaly; Pleural effusion; Pneumonia" -> "Cardiomegaly +2").
    """
    from xray_generator.data.manifest import split_labels
    from xray_generator.vocabulary import THORACIC_FINDINGS

    found = split_labels(labels)
    if not found:
        return "no label"
    thoracic = [label for label in found if label in THORACIC_FINDINGS]
    if thoracic:
        return thoracic[0] + (f" +{len(found) - 1}" if len(found) > 1 else "")
    return found[-1]


def filter_options(manifest) -> dict[str, list]:
    """The values each explorer filter can take, from the manifest itself."""
    table = manifest.table
    ages = table["age"].dropna()
    return {
        "label": list(manifest.label_counts().index),
        "source": sorted(table["source"].dropna().unique()),
        "view": sorted(table["view"].dropna().unique()),
        "split": [s for s in ("train", "val", "test", "synthetic") if s in set(table["split"].dropna())],
        "sex": sorted(table["sex"].dropna().unique()),
        "age": (int(ages.min()), int(np.ceil(ages.max()))) if len(ages) else (0, 100),
    }


def filter_manifest(manifest, labels=(), sources=(), views=(), splits=(), sexes=(), age_range=None, include_unknown_age=True):
    """Rows matching every non-empty filter; a label filter matches any chosen label."""
    result = manifest.query(
        label=list(labels) or None,
        source=list(sources) or None,
        view=list(views) or None,
        split=list(splits) or None,
        sex=list(sexes) or None,
    )
    if age_range is not None:
        low, high = age_range
        age = result.table["age"]
        keep = ((age >= low) & (age <= high)).fillna(False).astype(bool)
        if include_unknown_age:
            keep |= age.isna()
        result = type(result)(result.table.loc[keep].reset_index(drop=True), result.root)
    return result


def thumbnail(path: str | Path, size: int = 128) -> np.ndarray:
    """uint8 (size, size)-bounded thumbnail of an image file, for the explorer grid."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L")
        im.thumbnail((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def read_resized(path: str | Path, size: int = NATIVE_RESOLUTION) -> np.ndarray:
    """A dataset image as float (size, size), so real and generated images compare at one size."""
    return upscale(read_gray(path), size)


def label_distribution(manifest) -> pd.DataFrame:
    """Long table: (source, split, label, images)."""
    from xray_generator.data.manifest import split_labels

    table = manifest.table[["source", "split", "labels"]].copy()
    table["label"] = table["labels"].map(lambda s: split_labels(s) or ["(no label)"])
    exploded = table.explode("label")
    return exploded.groupby(["source", "split", "label"]).size().rename("images").reset_index()


def label_cooccurrence(manifest) -> pd.DataFrame:
    """Square table: images carrying both the row label and the column label (diagonal: label count)."""
    from xray_generator.data.manifest import split_labels

    label_sets = manifest.table["labels"].map(split_labels)
    labels = list(manifest.label_counts().index)
    position = {label: i for i, label in enumerate(labels)}
    counts = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for found in label_sets:
        idx = [position[label] for label in found if label in position]
        for i in idx:
            for j in idx:
                counts[i, j] += 1
    return pd.DataFrame(counts, index=labels, columns=labels)


def mean_intensity_histograms(manifest, per_source: int = 40, bins: int = 64, seed: int = 0) -> pd.DataFrame:
    """Mean normalised intensity histogram per source over a seeded sample of its images.

    Long table (source, intensity, density, images). Sampling keeps the chart fast on the full set.
    """
    from xray_generator.evaluation.descriptors import intensity_histogram

    rows = []
    rng = np.random.default_rng(seed)
    for source, group in manifest.table.groupby("source"):
        files = group["file"].tolist()
        chosen = rng.choice(len(files), size=min(per_source, len(files)), replace=False)
        total = np.zeros(bins)
        used = 0
        for i in chosen:
            try:
                counts, edges = intensity_histogram(read_gray(manifest.root / files[i]), bins)
            except (OSError, ValueError):
                continue
            total += counts / max(1, counts.sum())
            used += 1
        if used:
            centres = (edges[:-1] + edges[1:]) / 2
            for c, d in zip(centres, total / used):
                rows.append({"source": source, "intensity": float(c), "density": float(d) * bins, "images": used})
    return pd.DataFrame(rows, columns=["source", "intensity", "density", "images"])


# ---------------------------------------------------------------------------------------------------
# Enhancement presets saved by users
# ---------------------------------------------------------------------------------------------------


def presets_dir() -> Path:
    return outputs_dir() / "presets"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.strip()).strip("_.") or "preset"


def saved_presets(folder: str | Path | None = None) -> tuple[dict[str, tuple], list[str]]:
    """Custom presets from outputs/presets/*.json, and one message per file that could not be read."""
    from post_process import load_presets

    folder = Path(folder) if folder is not None else presets_dir()
    presets, problems = {}, []
    if not folder.is_dir():
        return presets, problems
    for path in sorted(folder.glob("*.json")):
        try:
            presets.update(load_presets(path))
        except (OSError, ValueError) as exc:
            problems.append(str(exc) if path.name in str(exc) else f"{path.name}: {exc}")
    return presets, problems


def save_custom_preset(name: str, steps: Sequence, folder: str | Path | None = None) -> Path:
    """Write one preset to outputs/presets/<name>.json (validated first; atomic)."""
    from post_process import save_presets

    if not name or not name.strip():
        raise ValueError("give the preset a name before saving it")
    folder = Path(folder) if folder is not None else presets_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{slug(name)}.json"
    save_presets({name.strip(): list(steps)}, path)
    return path


def preset_json_bytes(name: str, steps: Sequence) -> bytes:
    """The same file `save_custom_preset` writes, as bytes for a download button."""
    import tempfile

    from post_process import save_presets

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "preset.json"
        save_presets({name.strip() or "Custom": list(steps)}, path)
        return path.read_bytes()


def custom_preset_steps(controls: dict[str, Any]) -> list[tuple[str, dict]]:
    """Slider values -> preset steps, in the built-in presets' order (see post_process._preset_from_row).

    An operation whose control is at its neutral value is left out, so a custom preset only holds
    what the user changed.
    """
    steps: list[tuple[str, dict]] = []
    if controls.get("window_width", 1.0) < 1.0 or controls.get("window_center", 0.5) != 0.5:
        steps.append(("window", {"center": float(controls["window_center"]), "width": float(controls["window_width"])}))
    if int(controls.get("median_kernel", 1)) > 1:
        steps.append(("median", {"kernel_size": int(controls["median_kernel"])}))
    if controls.get("denoise_sigma", 0.0) > 0:
        steps.append(("denoise", {"method": "bilateral", "noise_sigma": float(controls["denoise_sigma"]), "spatial_sigma": 2.0}))
    if controls.get("clahe_clip", 0.0) > 0:
        tiles = int(controls.get("clahe_tiles", 8))
        steps.append(("clahe", {"clip_limit": float(controls["clahe_clip"]), "tile_grid": (tiles, tiles)}))
    if controls.get("equalize_strength", 0.0) > 0:
        steps.append(("equalize_histogram", {"strength": float(controls["equalize_strength"])}))
    if controls.get("gamma", 1.0) != 1.0:
        steps.append(("gamma", {"gamma": float(controls["gamma"])}))
    if controls.get("unsharp_amount", 0.0) > 0:
        steps.append(("unsharp_mask", {"amount": float(controls["unsharp_amount"]), "radius": float(controls.get("unsharp_radius", 1.5))}))
    if controls.get("vignette", 0.0) > 0:
        steps.append(("vignette", {"amount": float(controls["vignette"])}))
    return steps


# ---------------------------------------------------------------------------------------------------
# Metrics and training logs
# ---------------------------------------------------------------------------------------------------

METRICS_COMMAND = "python -m xray_generator evaluate --model {model}"


def metrics_dir() -> Path:
    return outputs_dir() / "metrics"


def load_metrics_files(folder: str | Path | None = None) -> tuple[list[dict], list[str]]:
    """Valid metrics documents from outputs/metrics/*.json, and one message per file that is not."""
    from xray_generator.evaluation.report import read_metrics_json

    folder = Path(folder) if folder is not None else metrics_dir()
    documents, problems = [], []
    if not folder.is_dir():
        return documents, problems
    for path in sorted(folder.glob("*.json")):
        try:
            document = read_metrics_json(path)
        except (OSError, ValueError) as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        document["_file"] = path.name
        documents.append(document)
    return documents, problems


def metrics_table(documents: Sequence[dict]) -> pd.DataFrame:
    """One row per (model, metric): value, n, CI and the real-vs-real floor, for tables and charts."""
    rows = []
    for doc in documents:
        for metric in doc["metrics"]:
            ci, floor = metric.get("ci"), metric.get("floor")
            rows.append({
                "model": doc["model"],
                "metric": metric["name"],
                "value": metric["value"],
                "n": _format_n(metric["n"]),
                "ci_low": ci["low"] if ci else None,
                "ci_high": ci["high"] if ci else None,
                "ci": f"{ci['low']:.4g} – {ci['high']:.4g} ({ci['level']:.0%}, {ci['method']})" if ci else "not computed",
                "floor": floor["value"] if floor else None,
                "floor_n": _format_n(floor["n"]) if floor else "",
                "floor_method": floor["method"] if floor else "no floor",
                "weights_sha256": doc.get("weights_sha256"),
                "date": doc.get("date"),
            })
    return pd.DataFrame(rows, columns=["model", "metric", "value", "n", "ci_low", "ci_high", "ci", "floor", "floor_n",
                                       "floor_method", "weights_sha256", "date"])


def _format_n(n: Any) -> str:
    if isinstance(n, dict):
        return ", ".join(f"{k} {v:,}" for k, v in n.items())
    return f"{int(n):,}"


METRIC_FAMILIES = {
    "FID": ("fid",),
    "KID": ("kid",),
    "PRDC": ("prdc", "precision", "recall", "density", "coverage"),
    "Diversity": ("diversity", "ms_ssim", "lpips", "vendi"),
    "Fidelity": ("fidelity", "condition", "clip", "classifier"),
    "Memorisation": ("memorisation", "memorization", "nearest"),
    "Realism": ("realism",),
}


def power_spectra(documents: Sequence[dict]) -> pd.DataFrame:
    """Long table (frequency, set, mean log10 power) of the power spectra recorded in realism metrics files.

    Read from the files as the realism test wrote them; nothing is recomputed. The real films
    appear once per image size.
    """
    rows, real_sizes = [], set()
    for doc in documents:
        spectra = doc.get("settings", {}).get("power_spectrum")
        if not spectra:
            continue
        frequency = spectra["frequency_cycles_per_pixel"]
        size = 2 * len(frequency)
        series = [(f"{doc['model']} (n={doc['settings'].get('n_other', '?')})", spectra["other_mean_log10_power"])]
        if size not in real_sizes:
            real_sizes.add(size)
            series.insert(0, (f"real held-out films ({size} px)", spectra["real_mean_log10_power"]))
        for name, values in series:
            rows += [{"frequency": f, "set": name, "log10_power": v} for f, v in zip(frequency, values)]
    return pd.DataFrame(rows, columns=["frequency", "set", "log10_power"])


def realism_cues(documents: Sequence[dict]) -> pd.DataFrame:
    """Long table (set, cue, accuracy, CI, floor, n) of the realism test run on each feature kind alone,
    as recorded in the realism metrics files (nothing is recomputed): which cue gives a set away."""
    rows = []
    for doc in documents:
        for metric in doc.get("metrics", []):
            groups = metric.get("extra", {}).get("per_feature_group") if metric.get("name") == "realism_c2st_accuracy" else None
            if not groups:
                continue
            n = metric.get("n")
            n = n.get("other") if isinstance(n, dict) else n  # images per set
            for cue, result in groups.items():
                rows.append({"set": doc["model"], "cue": cue, "accuracy": result["value"], "ci_low": result["ci_low"],
                             "ci_high": result["ci_high"], "floor": result["floor"], "n": n})
            rows.append({"set": doc["model"], "cue": "all features (the test)", "accuracy": metric["value"],
                         "ci_low": metric["ci"]["low"], "ci_high": metric["ci"]["high"], "floor": (metric.get("floor") or {}).get("value"), "n": n})
    return pd.DataFrame(rows, columns=["set", "cue", "accuracy", "ci_low", "ci_high", "floor", "n"])


def metric_family(name: str) -> str:
    """Which dashboard group a metric name belongs to ('Other' when none matches)."""
    # A prefix or a whole "_"-separated word: "fid" must not catch "condition_fidelity_auroc".
    words = set(name.split("_"))
    for family, prefixes in METRIC_FAMILIES.items():
        if any(name.startswith(p) or p in words for p in prefixes):
            return family
    return "Other"


@dataclass(frozen=True)
class TrainingLog:
    model: str
    path: Path
    table: pd.DataFrame


def find_training_logs(model_names: Sequence[str] = ()) -> list[TrainingLog]:
    """Loss logs wherever they are: outputs/metrics/*log*.csv, weights/<model>/training_log.csv, outputs/runs/<model>/log.csv."""
    candidates: list[tuple[str, Path]] = []
    folder = metrics_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*.csv")):
            if "log" in path.stem or "loss" in path.stem:
                model = re.sub(r"[_-]?(training[_-]?)?(log|loss)s?$", "", path.stem) or path.stem
                candidates.append((model, path))
    wroot = weights_dir()
    if wroot.is_dir():
        for path in sorted(wroot.glob("*/training_log.csv")):
            candidates.append((path.parent.name, path))
    runs = outputs_dir() / "runs"
    if runs.is_dir():
        for path in sorted(runs.glob("*/log.csv")):
            candidates.append((path.parent.name, path))
    logs, seen = [], set()
    for model, path in candidates:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        try:
            table = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.EmptyDataError):
            continue
        if "step" in table.columns and len(table):
            logs.append(TrainingLog(model, path, table))
    if model_names:
        logs.sort(key=lambda log: (log.model not in model_names, log.model))
    return logs


def loss_columns(table: pd.DataFrame) -> list[str]:
    """Numeric columns worth plotting against step (not counters, time or learning rate)."""
    skip = {"step", "samples_seen", "wall_seconds", "lr", "epoch"}
    return [c for c in table.columns if c not in skip and pd.api.types.is_numeric_dtype(table[c]) and table[c].notna().any()]


# ---------------------------------------------------------------------------------------------------
# Model analysis
# ---------------------------------------------------------------------------------------------------


def count_parameters(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def module_bytes(module) -> int:
    return int(sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers())))


def is_prompted_pipeline(pipe) -> bool:
    """True for the latent diffusion pipeline (diffusers components), False for an alternative family's `Generator`."""
    return hasattr(pipe, "components") and not hasattr(pipe, "generate")


def pipeline_modules(pipe) -> dict[str, Any]:
    """The torch modules by component name: a pipeline's (the scheduler is configuration, not a module),
    or an alternative family's one network under its role ("generator", "vae" or "cvae")."""
    import torch

    if not is_prompted_pipeline(pipe):
        return {family_component(pipe.family): pipe.model}
    return {name: part for name, part in pipe.components.items() if isinstance(part, torch.nn.Module)}


def family_component(family: str) -> str:
    """The component name an alternative family's network is listed under."""
    if family == "cvae":
        return "cvae"
    return "vae" if family in ("vae", "gmvae", "gmvae_supervised") else "generator"


def components_table(pipe) -> pd.DataFrame:
    rows = []
    for name, module in pipeline_modules(pipe).items():
        trainable = name != "text_encoder"
        rows.append({
            "component": name,
            "class": type(module).__name__,
            "parameters": count_parameters(module),
            "memory_mb": module_bytes(module) / 2**20,
            "dtype": str(next(module.parameters()).dtype).replace("torch.", "") if count_parameters(module) else "",
            "role": "trained here" if trainable else "frozen (pretrained, not trained here)",
        })
    return pd.DataFrame(rows)


def plain_config(config: Any) -> dict:
    """A diffusers FrozenDict / config mapping as JSON-ready data."""
    return json.loads(json.dumps(dict(config), default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


def weights_files_table(folder: str | Path) -> pd.DataFrame:
    """The MANIFEST.json of a weights folder as a table (file, bytes, sha256)."""
    from xray_generator.weights import MANIFEST_NAME

    manifest = json.loads((Path(folder) / MANIFEST_NAME).read_text())
    return pd.DataFrame(
        [{"file": name, "megabytes": info["bytes"] / 2**20, "sha256": info["sha256"]} for name, info in manifest["files"].items()],
        columns=["file", "megabytes", "sha256"],
    )


def model_card(folder: str | Path) -> str | None:
    path = Path(folder) / "README.md"
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _output_shape(output: Any) -> str:
    import torch

    if isinstance(output, torch.Tensor):
        return "×".join(str(d) for d in output.shape)
    if isinstance(output, (tuple, list)) and output:
        return _output_shape(output[0])
    if isinstance(output, dict) and output:
        return _output_shape(next(iter(output.values())))
    for attribute in ("sample", "last_hidden_state", "latent_dist"):
        value = getattr(output, attribute, None)
        if value is not None:
            if attribute == "latent_dist":
                return _output_shape(value.mean)
            return _output_shape(value)
    return ""


def layer_table(module, run: Callable[[], Any], max_depth: int | None = None) -> pd.DataFrame:
    """Every sub-module: name, class, depth, own and total parameters, and the output shape of `run()`.

    Shapes are measured: forward hooks record each module's output while `run()` pushes a dummy
    input through. Modules that `run()` does not reach show an empty shape.
    """
    import torch

    shapes: dict[str, str] = {}
    handles = []
    named = list(module.named_modules())
    for name, sub in named:
        def hook(_module, _inputs, output, key=name):
            shapes.setdefault(key, _output_shape(output))
        handles.append(sub.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for name, sub in named:
        depth = 0 if not name else name.count(".") + 1
        if max_depth is not None and depth > max_depth:
            continue
        rows.append({
            "layer": name or "(whole)",
            "class": type(sub).__name__,
            "depth": depth,
            "own_params": int(sum(p.numel() for p in sub.parameters(recurse=False))),
            "total_params": count_parameters(sub),
            "output_shape": shapes.get(name, ""),
        })
    return pd.DataFrame(rows)


def family_dummy_runs(generator) -> dict[str, Callable[[], Any]]:
    """For an alternative family's network, a call that pushes a dummy input through its forward pass.

    GANs: a z vector (and class 0 when conditional) to an image; VAE family: an image (and class)
    through encoder and decoder; CVAE: an image encoded and decoded under the last label.
    """
    import torch

    model = generator.model
    name = family_component(generator.family)
    rng = torch.Generator().manual_seed(0)
    dtype = next(model.parameters()).dtype
    size = int(generator.image_size)
    image = (torch.rand(1, 1, size, size, generator=rng) * 2 - 1).to(dtype)
    labels = torch.zeros(1, dtype=torch.long) if generator.conditions else None
    if name == "generator":
        z = torch.randn(1, int(model.z_dim), generator=rng).to(dtype)
        return {name: lambda: model(z, labels)}
    if name == "vae":
        return {name: lambda: model(image, labels, generator=torch.Generator().manual_seed(0))}
    target = torch.tensor([len(generator.conditions) - 1])
    return {name: lambda: model(image, target, generator=torch.Generator().manual_seed(0))}


def dummy_runs(pipe) -> dict[str, Callable[[], Any]]:
    """For each network of a latent diffusion pipeline (or an alternative family), a call that pushes a dummy input through it."""
    import torch

    if not is_prompted_pipeline(pipe):
        return family_dummy_runs(pipe)
    modules = pipeline_modules(pipe)
    runs: dict[str, Callable[[], Any]] = {}
    generator = torch.Generator().manual_seed(0)
    if "unet" in modules:
        unet = modules["unet"]
        size = int(unet.config.sample_size)
        length = int(getattr(getattr(pipe, "text_encoder", None), "max_length", 16))
        # Inputs follow each network's dtype: the pipeline may hold its weights in bf16 for speed.
        dtype = next(unet.parameters()).dtype
        sample = torch.randn(1, unet.config.in_channels, size, size, generator=generator).to(dtype)
        context = torch.randn(1, length, unet.config.cross_attention_dim, generator=generator).to(dtype)
        runs["unet"] = lambda: unet(sample, torch.tensor([500]), encoder_hidden_states=context)
    if "vae" in modules:
        vae = modules["vae"]
        size = int(getattr(vae.config, "sample_size", NATIVE_RESOLUTION) or NATIVE_RESOLUTION)
        image = (torch.rand(1, vae.config.in_channels, size, size, generator=generator) * 2 - 1).to(next(vae.parameters()).dtype)
        runs["vae"] = lambda: vae.decode(vae.encode(image).latent_dist.mode())
    if "text_projection" in modules:
        projection = modules["text_projection"]
        states = torch.randn(1, 8, projection.config.encoder_hidden_size, generator=generator).to(next(projection.parameters()).dtype)
        runs["text_projection"] = lambda: projection(states)
    if "text_encoder" in modules:
        encoder = modules["text_encoder"]
        runs["text_encoder"] = lambda: encoder.encode(["PA chest radiograph, no acute cardiopulmonary abnormality."])
    return runs


# ---------------------------------------------------------------------------------------------------
# Research console: real vs generated
# ---------------------------------------------------------------------------------------------------


def console_labels(manifest) -> list[str]:
    """Findings with at least one held-out real image, most common first."""
    counts = manifest.query(split=["val", "test"]).label_counts()
    return [label for label in counts.index if counts[label] > 0]


def real_examples(manifest, label: str, n: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """n held-out (val/test) real images with `label`, seeded; (image_id, float 256 px image).

    Held-out, so the comparison is with images the models never trained on.
    """
    subset = manifest.query(label=label, split=["val", "test"]).table
    if subset.empty:
        return []
    chosen = subset.sample(n=min(n, len(subset)), random_state=seed)
    return [(row.image_id, read_resized(manifest.root / row.file)) for row in chosen.itertuples(index=False)]


def training_reference(manifest, size: int = 64, cache_folder: str | Path | None = None) -> tuple[list[str], np.ndarray]:
    """Image ids and correlation vectors of the training split, cached on disk by manifest content.

    The first call reads every training image (a second for the sample, about ten seconds for the
    5,400 training images of the full set on two cores); later calls read one .npz.
    """
    from xray_generator.evaluation.memorisation import correlation_vectors

    train = manifest.query(split="train").table
    if train.empty:
        raise ValueError("the dataset has no training images to compare against")
    key = hashlib.sha256((str(manifest.root) + "|" + "|".join(train["image_id"]) + f"|{size}").encode()).hexdigest()[:16]
    folder = Path(cache_folder) if cache_folder is not None else outputs_dir() / "cache" / "studio"
    path = folder / f"training_vectors_{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                return [str(i) for i in data["ids"]], data["vectors"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    ids, vectors = [], []
    chunk = 256
    files = train[["image_id", "file"]].to_numpy()
    for start in range(0, len(files), chunk):
        batch = [(image_id, read_gray(manifest.root / f)) for image_id, f in files[start:start + chunk]]
        ids.extend(image_id for image_id, _ in batch)
        vectors.append(correlation_vectors([image for _, image in batch], size))
    stacked = np.concatenate(vectors)
    atomic_write(path, lambda handle: np.savez(handle, ids=np.array(ids), vectors=stacked), make_parents=True)
    return ids, stacked


def nearest_training(images: Sequence[np.ndarray], ids: Sequence[str], vectors: np.ndarray, size: int = 64) -> list[tuple[str, float]]:
    """(image_id, correlation) of the nearest training image of each image (Pearson, on 64×64 pixels)."""
    from xray_generator.evaluation.memorisation import correlation_vectors, nearest_by_correlation

    result = nearest_by_correlation(correlation_vectors(list(images), size), vectors)
    return [(ids[int(i)], float(c)) for i, c in zip(result["index"], result["correlation"])]


def difference_map(generated: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Signed difference generated − real at the generated image's size, in [-1, 1]."""
    real = upscale(real, generated.shape[0]) if real.shape != generated.shape else real
    return np.asarray(generated, np.float32) - np.asarray(real, np.float32)


def descriptor_rows(images: Sequence[np.ndarray], kind: str, names: Sequence[str]) -> list[dict]:
    from xray_generator.evaluation.descriptors import describe_image

    return [{"kind": kind, "image": name, **describe_image(np.asarray(image, np.float32))} for image, name in zip(images, names)]


def classifier_folder(root: str | Path | None = None) -> Path:
    return (Path(root) if root is not None else weights_dir()) / "classifier"


def classifier_status(root: str | Path | None = None) -> tuple[bool, str]:
    """Whether a trained finding classifier exists; the console shows no scores without one."""
    folder = classifier_folder(root)
    if (folder / "MANIFEST.json").is_file():
        return True, (f"Scores from our chest X-ray classifier ({folder}), trained on real images only. Its per-label test "
                      "AUROC is in its model card; source and label are entangled in the training data, so a score partly "
                      "reflects what a source's films look like.")
    return False, ("Classifier not trained yet, so no scores or Grad-CAM overlays can be shown. Train it with "
                   "`python -m xray_generator.training.train_classifier train --config configs/classifier.json --run outputs/runs/classifier` "
                   "and export it to weights/classifier.")


def load_finding_classifier(root: str | Path | None = None):
    """The verified classifier (raises WeightsError on a hash mismatch)."""
    from xray_generator.models.classifier import load_classifier

    return load_classifier(classifier_folder(root))


def classifier_score_table(classifier, images: Sequence[np.ndarray], kinds: Sequence[str], names: Sequence[str]) -> pd.DataFrame:
    """One row per image: its kind (real/synthetic), name and the classifier's probability per label."""
    if not images:
        return pd.DataFrame(columns=["kind", "image", *classifier.labels])
    probabilities = classifier.predict_proba([np.asarray(image, dtype=np.float32) for image in images])
    table = pd.DataFrame(probabilities, columns=list(classifier.labels))
    table.insert(0, "image", list(names))
    table.insert(0, "kind", list(kinds))
    return table


def grad_cam_overlay(classifier, image: np.ndarray, label: str, opacity: float = 0.45) -> np.ndarray:
    """RGB uint8: the radiograph in grey with the label's Grad-CAM heat map over it."""
    import cv2

    from xray_generator.models.classifier import grad_cam

    image = np.asarray(image, dtype=np.float32)
    heat = grad_cam(classifier, image, label)
    grey = np.repeat(to_uint8(image)[..., None], 3, axis=2)
    colour = cv2.applyColorMap(to_uint8(heat), cv2.COLORMAP_JET)[..., ::-1]
    alpha = (opacity * heat)[..., None]
    return (grey * (1.0 - alpha) + colour * alpha + 0.5).astype(np.uint8)


def samples_cache_dir(model: str, weights_hash: str, label: str) -> Path:
    return outputs_dir() / "samples" / f"{model}-{weights_hash}" / slug(label)


def save_cached_samples(items: Sequence[GeneratedImage], folder: Path) -> None:
    from xray_generator.io import save_png_with_metadata

    folder.mkdir(parents=True, exist_ok=True)
    for item in items:
        save_png_with_metadata(item.native, folder / f"seed{item.metadata['seed']}.png", item.metadata)


def load_cached_samples(folder: Path, limit: int) -> list[GeneratedImage]:
    """Generated images saved earlier for this model, weights and finding (PNG + embedded metadata)."""
    if not folder.is_dir():
        return []
    items = []
    for path in sorted(folder.glob("seed*.png"))[:limit]:
        try:
            image = read_gray(path)
            items.append(GeneratedImage(image, image, read_png_metadata(path)))
        except (OSError, ValueError):
            continue
    return items


@dataclass(frozen=True)
class QuizItem:
    image: np.ndarray
    synthetic: bool
    source: str  # image id or generation seed, revealed after the answer


def build_quiz(real: Sequence[tuple[str, np.ndarray]], synthetic: Sequence[GeneratedImage], rounds: int = 10, seed: int = 0) -> list[QuizItem]:
    """A shuffled, roughly balanced set of real and synthetic images, all at 256 px so size gives nothing away."""
    rng = np.random.default_rng(seed)
    real_items = [QuizItem(upscale(img, NATIVE_RESOLUTION), False, image_id) for image_id, img in real]
    fake_items = [QuizItem(upscale(g.native, NATIVE_RESOLUTION), True, f"{g.metadata.get('model', 'model')} seed {g.metadata.get('seed')}") for g in synthetic]
    if not real_items or not fake_items:
        return []
    half = max(1, rounds // 2)
    picks = [real_items[i] for i in rng.choice(len(real_items), size=min(half, len(real_items)), replace=False)]
    picks += [fake_items[i] for i in rng.choice(len(fake_items), size=min(rounds - len(picks), len(fake_items)), replace=False)]
    order = rng.permutation(len(picks))
    return [picks[i] for i in order]


# ------------------------------------------------------------------ editing a real radiograph
# The test split holds 160 Normal-only films, so 200 edits draw on validation films too (neither is trained on).
EDIT_MEASUREMENT_COMMAND = "python -m xray_generator.evaluation.editing --n 200 --splits test val --strengths 0.3 0.5 0.7"


def edit_source_table(manifest) -> pd.DataFrame:
    """The dataset images an edit can start from, with the source and licence shown next to each."""
    columns = ["image_id", "labels", "view", "split", "source", "source_repo", "license"]
    return manifest.table[[c for c in columns if c in manifest.table.columns]].reset_index(drop=True)


def radiograph_choices(manifest, label: str | None = None, prefer_sources: Sequence[str] = ()) -> pd.DataFrame:
    """`edit_source_table` of the films with `label`, best candidates first.

    Films from `prefer_sources` (what a model was trained on, e.g. the CVAE's Kermany films) come
    first, and within each group the held-out ones (test, val) before the training split, so the
    default choice is a film the model has not seen but whose kind it knows.
    """
    table = edit_source_table(manifest.query(label=label) if label is not None else manifest)
    if table.empty:
        return table
    split_rank = table["split"].map({"test": 0, "val": 1}).fillna(2) if "split" in table else 0
    source_rank = (~table["source"].isin(list(prefer_sources))).astype(int) if prefer_sources and "source" in table else 0
    order = pd.DataFrame({"source": source_rank, "split": split_rank, "row": range(len(table))}).sort_values(["source", "split", "row"])
    return table.iloc[order.index].reset_index(drop=True)


def edit_radiograph(
    pipe,
    source: np.ndarray,
    prompt: str,
    *,
    strength: float = 0.5,
    mask: np.ndarray | str | None = None,
    seed: int = 0,
    negative_prompt: str = "",
    steps: int | None = None,
    guidance: float | None = None,
    sampler: str | None = None,
    source_id: str | None = None,
    on_step: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
):
    """`pipe.edit` with progress reporting and the studio's provenance fields; returns (EditResult, seconds).

    `on_step(done, total)` counts the denoising steps that actually run (strength x steps);
    `should_cancel()` returning True stops at the next step (GenerationCancelled).
    """
    from xray_generator.pipelines.editing import check_strength

    schedule = int(pipe.resolve_settings(num_inference_steps=steps)["num_inference_steps"])
    total = max(1, int(schedule * check_strength(strength)))

    def callback(_pipe, step_index, _timestep, _kwargs):
        if on_step is not None:
            on_step(step_index + 1, total)
        if should_cancel is not None and should_cancel():
            return {"interrupt": True}
        return None

    started = time.perf_counter()
    result = pipe.edit(
        source, prompt, strength=strength, negative_prompt=negative_prompt or None, num_inference_steps=steps,
        guidance_scale=guidance, seed=seed, sampler=sampler, mask=mask, source_id=source_id, callback_on_step_end=callback,
    )
    result.metadata.update(edited_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), software="CXR Studio")
    return result, time.perf_counter() - started


def edit_file_stem(metadata: dict) -> str:
    source = slug(str(metadata.get("source_image_id") or "source"))[:40]
    return f"edited_cxr_{source}_s{metadata.get('strength', 0):.2f}_seed{metadata.get('seed', 'x')}"


def edit_downloads(result) -> dict[str, bytes]:
    """PNG bytes of the edited image, its difference map and (masked edits) the mask, each with provenance."""
    from xray_generator.pipelines.editing import difference_image, difference_metadata

    downloads = {
        "png": png_bytes_with_metadata(result.image, result.metadata),
        "diff": png_bytes_with_metadata(difference_image(result), difference_metadata(result)),
    }
    if result.mask is not None:  # the mask as used (working size, white = edited), reusable as an upload
        downloads["mask"] = png_bytes_with_metadata(result.mask, {"image": "edit mask, white = edited (before feathering)",
                                                                  "mask": result.metadata.get("mask"),
                                                                  "source_image_id": result.metadata.get("source_image_id")})
    return downloads


def editing_measurement(folder: str | Path | None = None) -> tuple[pd.DataFrame | None, Path | None, str]:
    """(summary table or None, curve PNG or None, a sentence about it) from outputs/metrics/editing.json."""
    from xray_generator.evaluation.editing import CURVE_FILE, METRICS_FILE
    from xray_generator.evaluation.report import read_metrics_json

    folder = Path(folder) if folder is not None else metrics_dir()
    curve = folder / CURVE_FILE
    curve = curve if curve.is_file() else None
    path = folder / METRICS_FILE
    if not path.is_file():
        return None, curve, f"Not measured yet. Run `{EDIT_MEASUREMENT_COMMAND}` (needs weights/classifier)."
    try:
        document = read_metrics_json(path)
    except (OSError, ValueError) as exc:
        return None, curve, f"{path.name} could not be read: {exc}. Rerun `{EDIT_MEASUREMENT_COMMAND}`."
    settings = document["settings"]
    table = pd.DataFrame(settings.get("summary", []))
    splits = " + ".join(settings.get("splits", ["test"]))
    return table, curve, (f"{settings.get('n_images', '?')} real Normal films from the held-out {splits} split(s), measured {document['date'][:10]} with "
                          f"classifier {str(settings.get('classifier_weights', ''))[:12]}; strength 0 is the VAE round trip.")
