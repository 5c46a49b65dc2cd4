"""The images an evaluation judges: what each generator family is asked for, the real films it is held against, and the disk cache.

`xray_generator.evaluation.run.evaluate` computes the same metrics for every family; this module
decides, per kind of family, which images those metrics see (`draw_samples` returns them as
`DrawnSamples`):

- **text to image** (latent diffusion, ``ldm``): one prompt per held-out film's metadata (val +
  test, never trained on), so generated and real sets share their label, age and view mix.
- **noise to image** (GANs, VAE family): a conditional family is asked, per held-out film, for
  the class that film has in the family's own class list (the most specific one it carries, as
  its trainer assigns classes), so the requests follow the held-out label mix; films carrying none
  of its classes are left out. An unconditional family draws ``n`` samples.
- **image to image** (the CVAE): held-out films of the CVAE's own source (Kermany) that carry its
  first label (Normal), test split first, are translated to its last label (Pneumonia). The
  distribution metrics hold the translations against the held-out films of that source carrying
  the target label; the paired metrics of `xray_generator.evaluation.translation` are added.

All of them are held against real films resized to the family's own image size (the CVAE's way of
resizing a source for the CVAE), so pixel metrics compare like with like.

Every generated image comes from its own seed and is cached as a PNG whose metadata records the
request (prompt; or condition, seed and source digest), under a folder named by the weights and
the sampler settings: an interrupted run resumes, and a rerun reads what it judged before.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from xray_generator.data.datasets import load_images_uint8
from xray_generator.data.manifest import Manifest, class_of, label_index, load_manifest, split_labels
from xray_generator.data.preprocessing import resize_square
from xray_generator.data.prompts import age_group, prompt_variants
from xray_generator.io import atomic_write_text, read_gray, read_png_metadata, save_png_with_metadata
from xray_generator.paths import cache_dir
from xray_generator.pipelines.registry import FAMILY_KINDS, GENERATOR_FAMILIES, UnknownGeneratorError

IMAGE_SIZE = 256  # the latent diffusion model's output size
# Prompts for the diversity check: one per common finding, with and without an age group.
DIVERSITY_PROMPTS = (
    ("Normal", "Normal pediatric chest radiograph, clear lungs."),
    ("Normal", "Adult PA chest radiograph, no acute cardiopulmonary abnormality."),
    ("Pneumonia", "Adult PA chest radiograph: right lower lobe pneumonia."),
    ("Bacterial pneumonia", "Pediatric AP chest radiograph: lobar consolidation consistent with bacterial pneumonia."),
    ("Viral pneumonia", "Pediatric AP chest radiograph: diffuse interstitial opacities consistent with viral pneumonia."),
    ("COVID-19", "Bilateral peripheral ground-glass opacities consistent with COVID-19."),
    ("COVID-19", "Adult AP chest radiograph, multifocal patchy opacities, COVID-19."),
    ("Normal", "Normal chest radiograph."),
)
SAMPLES_PER_DIVERSITY_PROMPT = 4
# Diversity samples use seeds far above any distribution sample's (all below seed + n + the number of held-out films), so the two never share a cache file.
DIVERSITY_SEED_OFFSET = 10_000_000
TIMING_SEED_OFFSET = 20_000_000
TIMING_REPEATS = 5
TIMING_FILE = "timing.json"


# ---------------------------------------------------------------------------- real held-out films
def held_out_real(manifest: Manifest) -> pd.DataFrame:
    """The real images the generator never trained on: val and test splits."""
    table = manifest.table
    return table[table["split"].isin(["val", "test"])].reset_index(drop=True)


def evaluation_stratum(row: pd.Series) -> tuple[str, str]:
    """(age group, main finding) of a held-out film: the strata every prefix of an evaluation plan keeps in proportion."""
    labels = set(split_labels(row["labels"]))
    if "Normal" in labels:
        finding = "Normal"
    elif "COVID-19" in labels:
        finding = "COVID-19"
    elif any("pneumonia" in label.lower() for label in labels):
        finding = "Pneumonia"
    else:
        finding = "other"
    return age_group(row)[0], finding


def prefix_stratified_order(keys: Sequence) -> np.ndarray:
    """An order of ``range(len(keys))`` in which every prefix holds each key in about its overall share.

    Items of one key keep their relative order. At each position the key furthest behind its
    share of the prefix goes next (largest remainder), so a prefix of length m holds each key's
    count to within one of ``m * share``.
    """
    keys = list(keys)
    groups: dict = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    total = len(keys)
    taken = {key: 0 for key in groups}
    order = []
    for position in range(1, total + 1):
        open_keys = [key for key in groups if taken[key] < len(groups[key])]
        # The largest deficit goes next; ties go to the key whose next item came first in the input.
        key = max(open_keys, key=lambda k: (position * len(groups[k]) / total - taken[k], -groups[k][taken[k]]))
        order.append(groups[key][taken[key]])
        taken[key] += 1
    return np.asarray(order, dtype=int)


def evaluation_prompts(rows: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """`n` (prompt, labels, seed) rows drawn from held-out metadata; prompts without note text.

    The held-out rows are walked in a seeded random order, re-ordered so that every prefix of
    the plan holds each (age group, main finding) stratum in its share of the held-out films:
    a smaller run (the 200-image reproducibility check) then sees the same label mix as the
    full one. Without it, the first 200 of 1,000 prompts held 20 % Normal pediatric prompts
    against 27 % in the rest, and FID at 200 images swung with that share (the model's Normal
    pediatric samples are where most of its off-distribution images are). Rows are cycled, so
    n > len(rows) repeats metadata with a different wording. Film k of the seeded walk is
    always drawn with seed ``seed + cycle * len(rows) + k``, whatever its place in the plan.
    """
    walk = np.random.default_rng(seed).permutation(len(rows))
    strata = prefix_stratified_order([evaluation_stratum(rows.iloc[index]) for index in walk])
    records = []
    for i in range(n):
        cycle, position = divmod(i, len(rows))
        k = int(strata[position])
        row = rows.iloc[walk[k]]
        # Variants 0 and 1 never quote the clinical note: a generator should not need a real report.
        variant = cycle % 2
        records.append({
            "seed": seed + cycle * len(rows) + k, "prompt": prompt_variants(row, count=2)[variant], "labels": row["labels"],
            "source_image_id": row["image_id"], "age_group": age_group(row)[0],
        })
    return pd.DataFrame(records)


def load_real(table: pd.DataFrame, data_dir: Path | None = None, size: int = IMAGE_SIZE,
              to_model: Callable[[np.ndarray], np.ndarray] | None = None) -> list[np.ndarray]:
    """The films of `table` as float32 in [0, 1]: squared to `size` (8-bit), or through `to_model` (float in, float out)."""
    manifest = load_manifest(data_dir)
    manifest.table = table
    if to_model is not None:
        return [to_model(im.astype(np.float32) / 255.0).astype(np.float32) for im in load_images_uint8(manifest)]
    return [resize_square(im, size).astype(np.float32) / 255.0 for im in load_images_uint8(manifest)]


# ---------------------------------------------------------------------------- the disk cache
def read_cached_image(path: Path, request: dict) -> np.ndarray | None:
    """The image at `path` if its PNG metadata records `request`; None when absent, damaged or made for another request."""
    if not path.is_file():
        return None
    try:
        metadata = read_png_metadata(path)
        if all(metadata.get(key) == value for key, value in request.items()):
            return read_gray(path)
    except (OSError, ValueError):
        pass  # a damaged cache file is regenerated
    return None


def save_cached_image(image: np.ndarray, path: Path, metadata: dict) -> np.ndarray:
    """Write the PNG atomically and return it as read back: the 8-bit image a user would get, on the first run as on a rerun."""
    save_png_with_metadata(image, path, metadata)
    return read_gray(path)


def resolved_sampler_settings(pipe, settings) -> dict:
    """The sampler settings an evaluation runs with: those given, else the model's defaults."""
    resolved = pipe.resolve_settings(sampler=settings.sampler, num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                                     guidance_fraction=settings.guidance_fraction, backend=getattr(settings, "backend", None))
    return {"sampler": resolved["sampler"], "steps": resolved["num_inference_steps"], "guidance": resolved["guidance_scale"],
            "guidance_fraction": resolved["guidance_fraction"], "backend": resolved["backend"]}


def sampler_arguments(pipe, settings) -> dict:
    """`resolved_sampler_settings` as keyword arguments of the pipeline's `__call__`."""
    resolved = resolved_sampler_settings(pipe, settings)
    return {"sampler": resolved["sampler"], "num_inference_steps": resolved["steps"], "guidance_scale": resolved["guidance"],
            "guidance_fraction": resolved["guidance_fraction"], "backend": resolved["backend"]}


def settings_key(pipe, settings) -> str:
    """The latent diffusion cache folder's name: weights hash and a digest of the sampler settings."""
    sampler_settings = resolved_sampler_settings(pipe, settings)
    if sampler_settings["guidance_fraction"] == 1.0:
        del sampler_settings["guidance_fraction"]  # caches made before the setting existed guided every step
    if sampler_settings["backend"] == "torch":
        del sampler_settings["backend"]  # caches made before backends existed ran PyTorch; other backends' pixels differ by rounding
    if getattr(pipe, "precision", "bf16") != "bf16":
        # fp32 images (a CPU without native bf16) differ from bf16 ones by rounding: never mix them in one cache.
        sampler_settings["precision"] = pipe.precision
    digest = hashlib.sha256(json.dumps(sampler_settings, sort_keys=True).encode()).hexdigest()[:10]
    return f"{pipe.weights_hash}_{digest}"


def generate_cached(pipe, prompts: Sequence[str], seeds: Sequence[int], folder: Path, settings, desc: str) -> list[np.ndarray]:
    """Generate one image per (prompt, seed) with the latent diffusion pipeline, reusing images already on disk with the same prompt.

    Each image's initial noise comes from its own seed, so an image does not depend on which
    others share its batch (up to bf16 rounding of batched matrix products).
    """
    from xray_generator.pipelines.latent_diffusion import seeded_latents

    folder.mkdir(parents=True, exist_ok=True)
    images: list[np.ndarray | None] = [read_cached_image(folder / f"{seed:06d}.png", {"prompt": prompt}) for prompt, seed in zip(prompts, seeds)]
    todo = [i for i, image in enumerate(images) if image is None]
    with tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=desc, mininterval=10, file=sys.stderr) as bar:
        for start in range(0, len(todo), settings.batch_size):
            batch = todo[start:start + settings.batch_size]
            latents = seeded_latents(pipe, [seeds[i] for i in batch], IMAGE_SIZE, IMAGE_SIZE)
            result = pipe([prompts[i] for i in batch], latents=latents, seed=seeds[batch[0]], **sampler_arguments(pipe, settings))
            for i, image, metadata in zip(batch, result.images, result.metadata):
                metadata = {**metadata, "seed": seeds[i], "index_in_batch": 0, "evaluation_batch": len(batch)}
                images[i] = save_cached_image(image, folder / f"{seeds[i]:06d}.png", metadata)
            bar.update(len(batch))
    return images  # type: ignore[return-value]


def source_digest(source: np.ndarray | None) -> str:
    """sha256 of a source image's shape and float32 pixels ("" for none): names a translation's input in the cache."""
    if source is None:
        return ""
    array = np.ascontiguousarray(source, dtype=np.float32)
    return hashlib.sha256(f"{array.shape}".encode() + array.tobytes()).hexdigest()


class CachedGenerator:
    """A `Generator` (registry protocol) whose one-image calls are read from, or saved to, a cache folder.

    Every other attribute (family, conditions, image_size, prepare ...) is the wrapped generator's,
    so code written for a generator, such as `translate_sources`, runs on it unchanged. Calls for
    more than one image are not cached: the evaluation asks for each image with its own seed.
    """

    def __init__(self, generator, folder: Path):
        self.generator = generator
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def __getattr__(self, name: str):
        return getattr(self.generator, name)

    def generate(self, n: int = 1, condition: str | None = None, seed: int = 0, source: np.ndarray | None = None) -> np.ndarray:
        if n != 1:
            return self.generator.generate(n, condition=condition, seed=seed, source=source)
        condition = condition if condition is not None else getattr(self.generator, "default_condition", None)
        request = {"condition": condition or "", "seed": int(seed), "source_sha256": source_digest(source)}
        name = re.sub(r"[^A-Za-z0-9]+", "-", condition or "any")
        path = self.folder / f"{int(seed):06d}_{name}_{request['source_sha256'][:12] or 'noise'}.png"
        image = read_cached_image(path, request)
        if image is None:
            out = self.generator.generate(1, condition=condition, seed=seed, source=source)[0]
            metadata = {"model": self.generator.family, "weights_sha256": self.generator.weights_sha256, **request, "synthetic": True}
            image = save_cached_image(out, path, metadata)
        return image[None]


def time_per_image(folder: Path, generate_one: Callable[[int], object], repeats: int = TIMING_REPEATS) -> dict:
    """Median wall seconds to make one image (a batch of one), after one warm-up call; kept in the cache folder.

    Measured once per cache folder (weights and settings) and read back on a rerun, so a resumed
    evaluation reports the time of a real generation, never of a cache read. `generate_one(seed)`
    makes one image with the evaluation's settings.
    """
    path = Path(folder) / TIMING_FILE
    if path.is_file():
        try:
            timing = json.loads(path.read_text())
            if timing.get("repeats") == repeats:
                return timing
        except (OSError, ValueError):
            pass  # measured again below
    generate_one(TIMING_SEED_OFFSET)  # warm-up: first-call allocations and kernel choice
    seconds = []
    for r in range(repeats):
        started = time.perf_counter()
        generate_one(TIMING_SEED_OFFSET + 1 + r)
        seconds.append(time.perf_counter() - started)
    timing = {
        "median_seconds": float(np.median(seconds)), "seconds": [round(s, 4) for s in seconds], "repeats": repeats,
        "batch": 1, "torch_threads": torch.get_num_threads(),
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": f"median of {repeats} single-image calls after one warm-up, on this machine's CPU",
    }
    atomic_write_text(path, json.dumps(timing, indent=2) + "\n")
    return timing


# ---------------------------------------------------------------------------- what the metrics see
@dataclass
class DrawnSamples:
    """Everything `evaluate` judges for one generator. `requests` has one row per generated image."""

    kind: str  # "text-to-image", "noise-to-image" or "image-to-image"
    generated: list[np.ndarray]
    requests: pd.DataFrame  # seed, request (text), requested (labels the image was asked for; "" when none), source_image_id
    real: list[np.ndarray]  # the real held-out films of the family's data, at the family's size
    real_rows: pd.DataFrame  # their metadata (split, labels, ...)
    reference: np.ndarray  # bool over `real`: the films the distribution metrics compare with
    fidelity_images: list[np.ndarray]  # images scored for condition fidelity (none for an unconditional family)
    fidelity_requested: list[str]  # the labels each of them was asked for
    diversity_groups: list[list[np.ndarray]]  # samples of one prompt slot each
    diversity_requests: list[str]
    diversity_reference: list[tuple[str, list[int]]]  # (label, indices into `real`): real pairs sharing the slots' labels
    ms_ssim_window: int
    weights_sha256: str | None
    settings: dict  # family-specific settings for the metrics file (parameters, seconds per image, requests ...)
    extra_metrics: list[dict] = field(default_factory=list)
    extra_images: dict[str, Callable[[Path], None]] = field(default_factory=dict)  # name -> writer of <model>_<name>.png


def ms_ssim_window(image_size: int) -> int:
    """The standard 11-pixel MS-SSIM window, or the largest odd one that fits the coarsest of 5 scales of a smaller image."""
    coarsest = image_size // 16
    return 11 if coarsest >= 11 else max(1, coarsest if coarsest % 2 else coarsest - 1)


def pipe_weights_sha256(pipe) -> str | None:
    """SHA-256 of the generator's MANIFEST.json: one hash that pins every weights file."""
    from xray_generator.weights import sha256_file

    folder = getattr(pipe, "weights_folder", None)
    if folder is None or not (Path(folder) / "MANIFEST.json").is_file():
        return None
    return sha256_file(Path(folder) / "MANIFEST.json")


def pipeline_parameters(pipe) -> dict[str, int]:
    """Parameters of every part of the latent diffusion pipeline that runs to make an image."""
    parts = {name: getattr(pipe, name, None) for name in ("vae", "unet", "text_projection")}
    parts["text_encoder (frozen)"] = getattr(getattr(pipe, "text_encoder", None), "model", None)
    return {name: int(sum(p.numel() for p in part.parameters())) for name, part in parts.items() if part is not None}


def diversity_seeds(settings, slot: int) -> list[int]:
    return [settings.seed + DIVERSITY_SEED_OFFSET + slot * 100 + s for s in range(SAMPLES_PER_DIVERSITY_PROMPT)]


def check_family_settings(model: str, settings) -> None:
    """ValueError for an unknown family, or for sampler settings given to a family without a sampler."""
    if model not in GENERATOR_FAMILIES:
        raise UnknownGeneratorError(model)
    if FAMILY_KINDS[model] != "text-to-image" and (
        settings.sampler or settings.steps or settings.guidance is not None or settings.guidance_fraction is not None
        or getattr(settings, "backend", None) is not None
    ):
        raise ValueError(f"the {model} model has no sampler: --sampler, --steps, --guidance, --guidance-fraction and --backend apply to ldm only")


def draw_samples(model: str, generator, held_out: pd.DataFrame, settings, data_dir=None, classifier=None) -> DrawnSamples:
    """The images `evaluate` judges for family `model` (its kind decides how, see the module docstring)."""
    kind = FAMILY_KINDS[model]
    if kind == "text-to-image":
        return draw_text_to_image(model, generator, held_out, settings, data_dir)
    if kind == "image-to-image":
        return draw_translations(model, generator, held_out, settings, data_dir, classifier)
    return draw_noise_to_image(model, generator, held_out, settings, data_dir)


def draw_text_to_image(model: str, pipe, held_out: pd.DataFrame, settings, data_dir=None) -> DrawnSamples:
    real = load_real(held_out, data_dir)
    plan = evaluation_prompts(held_out, settings.n, settings.seed)
    cache = cache_dir() / "evaluation" / model / settings_key(pipe, settings)
    generated = generate_cached(pipe, plan["prompt"].tolist(), plan["seed"].tolist(), cache, settings, f"{model}: generating")

    # Diversity: samples of one prompt should differ about as much as real images sharing a label.
    prompts = DIVERSITY_PROMPTS[:settings.diversity_prompts]
    groups = [
        generate_cached(pipe, [prompt] * SAMPLES_PER_DIVERSITY_PROMPT, diversity_seeds(settings, p), cache, settings, f"{model}: diversity {p + 1}/{len(prompts)}")
        for p, (_, prompt) in enumerate(prompts)
    ]
    reference = [(label, [i for i in range(len(real)) if label in split_labels(held_out["labels"].iloc[i])])
                 for label in sorted({label for label, _ in prompts})]

    timing = time_per_image(cache, lambda seed: pipe(prompts[0][1], seed=seed, **sampler_arguments(pipe, settings)))
    parameters = pipeline_parameters(pipe)
    return DrawnSamples(
        kind="text-to-image", generated=generated,
        requests=pd.DataFrame({"seed": plan["seed"], "request": plan["prompt"], "requested": plan["labels"], "source_image_id": plan["source_image_id"]}),
        real=real, real_rows=held_out, reference=np.ones(len(real), bool),
        fidelity_images=generated, fidelity_requested=plan["labels"].tolist(),
        diversity_groups=groups, diversity_requests=[p for _, p in prompts], diversity_reference=reference,
        ms_ssim_window=ms_ssim_window(IMAGE_SIZE), weights_sha256=pipe_weights_sha256(pipe),
        settings={
            **resolved_sampler_settings(pipe, settings),
            "prompts": "one per held-out image's metadata (val + test), prompt variants 0/1, no clinical-note text",
            "family_kind": "text-to-image", "conditions": "free text", "image_size": IMAGE_SIZE,
            "parameters": sum(parameters.values()), "parameters_by_part": parameters,
            "seconds_per_image": timing["median_seconds"], "time_per_image": timing,
            "weights_sha256_of": "MANIFEST.json (pins every file of the pipeline)",
            "precision": getattr(pipe, "precision", "bf16"),
        },
    )


def slot_condition(label: str, conditions: tuple[str, ...]) -> str:
    """The class of a conditional family that stands for a diversity prompt's label: itself, or Pneumonia for a pneumonia subtype."""
    if label in conditions:
        return label
    if "pneumonia" in label.lower() and "Pneumonia" in conditions:
        return "Pneumonia"
    return conditions[0]


def family_settings(generator, timing: dict, requests: str) -> dict:
    """The settings every alternative family records: what it is, its size and parameters, its speed, what it was asked."""
    return {
        "family_kind": FAMILY_KINDS[generator.family], "conditions": list(generator.conditions),
        "image_size": int(generator.image_size), "parameters": int(generator.parameters),
        "seconds_per_image": timing["median_seconds"], "time_per_image": timing, "requests": requests,
        "weights_sha256_of": "model.safetensors (the Generator protocol's weights_sha256)",
        "generation": "one image per call, each from its own seed (the plan's seeds: seed + k for film k of the seeded walk, or seed + i for an unconditional family)",
    }


def draw_noise_to_image(model: str, generator, held_out: pd.DataFrame, settings, data_dir=None) -> DrawnSamples:
    conditions = tuple(generator.conditions)
    size = int(generator.image_size)
    real = load_real(held_out, data_dir, size=size)
    cached = CachedGenerator(generator, cache_dir() / "evaluation" / model / generator.weights_sha256[:16])
    if conditions:
        real_class = np.array([class_of(value, conditions) for value in held_out["labels"].astype(object)])
        eligible = held_out.loc[real_class >= 0].reset_index(drop=True)
        if eligible.empty:
            raise ValueError(f"no held-out film carries any of the {model} classes {list(conditions)}")
        plan = evaluation_prompts(eligible, settings.n, settings.seed)  # the seeded walk over held-out metadata
        plan["condition"] = [conditions[class_of(value, conditions)] for value in plan["labels"]]
        requests = pd.DataFrame({"seed": plan["seed"], "request": "condition: " + plan["condition"],
                                 "requested": plan["condition"], "source_image_id": plan["source_image_id"]})
        described = (f"per held-out film (val + test) carrying one of {list(conditions)}: its class (the most specific it carries), "
                     "so the class mix follows the held-out films")
    else:
        requests = pd.DataFrame({"seed": settings.seed + np.arange(settings.n), "request": "unconditional sample", "requested": "", "source_image_id": ""})
        described = f"{settings.n} unconditional samples"
    conditions_asked = [c or None for c in requests["requested"]]
    generated = [cached.generate(1, condition=c, seed=int(s))[0]
                 for c, s in tqdm(list(zip(conditions_asked, requests["seed"])), desc=f"{model}: generating", mininterval=10, file=sys.stderr)]

    # Diversity: 4 samples per prompt slot, as for ldm; a conditional family's slots ask for the classes of ldm's diversity prompts.
    slots = [slot_condition(label, conditions) if conditions else None for label, _ in DIVERSITY_PROMPTS[:settings.diversity_prompts]]
    groups = [[cached.generate(1, condition=c, seed=s)[0] for s in diversity_seeds(settings, p)] for p, c in enumerate(slots)]
    if conditions:
        reference = [(c, np.flatnonzero(real_class == conditions.index(c)).tolist()) for c in sorted(set(slots))]
    else:
        reference = [("any label", list(range(len(real))))]

    timing = time_per_image(cached.folder, lambda seed: generator.generate(1, condition=slots[0], seed=seed))
    return DrawnSamples(
        kind="noise-to-image", generated=generated, requests=requests,
        real=real, real_rows=held_out, reference=np.ones(len(real), bool),
        fidelity_images=generated if conditions else [], fidelity_requested=requests["requested"].tolist() if conditions else [],
        diversity_groups=groups, diversity_requests=[f"condition: {c}" if c else "unconditional" for c in slots],
        diversity_reference=reference, ms_ssim_window=ms_ssim_window(size), weights_sha256=generator.weights_sha256,
        settings=family_settings(generator, timing, described),
    )


def draw_translations(model: str, generator, held_out: pd.DataFrame, settings, data_dir=None, classifier=None) -> DrawnSamples:
    from xray_generator.evaluation.translation import SSIM_TARGET, example_grid, summarise_translation, translate_sources

    labels = tuple(generator.conditions)
    source_label, target = labels[0], labels[-1]
    sources = generator.config.get("data", {}).get("sources")
    domain = held_out[held_out["source"].isin(sources)] if sources else held_out
    label_of = np.array([label_index(str(value), labels) for value in domain["labels"].fillna("")], dtype=object)
    domain = domain.loc[[i is not None for i in label_of]].reset_index(drop=True)
    label_of = np.array([i for i in label_of if i is not None], dtype=np.int64)
    real = load_real(domain, data_dir, to_model=generator.prepare)
    source_text = ", ".join(sources) if sources else "every source"

    # Sources: the held-out films of the first label, test split first (the "held-out normal test images"), then val.
    split_rank = domain["split"].map({"test": 0, "val": 1}).to_numpy()
    candidates = np.flatnonzero(label_of == 0)
    candidates = candidates[np.argsort(split_rank[candidates], kind="stable")]
    chosen = candidates[:settings.n]
    if len(chosen) == 0:
        raise ValueError(f"no held-out {source_label} films of {source_text} to translate")
    cached = CachedGenerator(generator, cache_dir() / "evaluation" / model / generator.weights_sha256[:16])
    per_image = translate_sources(cached, [real[i] for i in chosen], classifier, target=target, reference=source_label, seed=settings.seed)
    ids = domain["image_id"].iloc[chosen].tolist()
    requests = pd.DataFrame({"seed": settings.seed + np.arange(len(chosen)), "request": [f"{i}: {source_label} -> {target}" for i in ids],
                             "requested": target, "source_image_id": ids})

    # Diversity: 4 translations (latent draws) of one source film per prompt slot.
    slots = chosen[:settings.diversity_prompts]
    groups = [[cached.generate(1, condition=target, seed=s, source=real[i])[0] for s in diversity_seeds(settings, p)] for p, i in enumerate(slots)]
    timing = time_per_image(cached.folder, lambda seed: generator.generate(1, condition=target, seed=seed, source=real[chosen[0]]))
    is_test = domain["split"].iloc[chosen].to_numpy() == "test"
    summary = summarise_translation(per_image, n_boot=settings.n_boot)
    test_summary = summarise_translation(per_image, rows=np.flatnonzero(is_test), n_boot=settings.n_boot) if is_test.any() else None
    extra_metrics = translation_metrics(summary, test_summary, source_label, target, SSIM_TARGET)

    return DrawnSamples(
        kind="image-to-image", generated=per_image["translations"], requests=requests,
        real=real, real_rows=domain, reference=label_of == len(labels) - 1,
        fidelity_images=per_image["translations"] + per_image["reconstructions"],
        fidelity_requested=[target] * len(chosen) + [source_label] * len(chosen),
        diversity_groups=groups, diversity_requests=[f"{ids[p]}: {source_label} -> {target}" for p in range(len(slots))],
        diversity_reference=[(target, np.flatnonzero(label_of == len(labels) - 1).tolist())],
        ms_ssim_window=ms_ssim_window(int(generator.image_size)), weights_sha256=generator.weights_sha256,
        settings={
            **family_settings(generator, timing, (
                f"each held-out {source_label} film of {source_text} (test split first, then val; {len(chosen)} of "
                f"{len(candidates)} available) translated to {target} (seed + i) and reconstructed as {source_label} (same seed)")),
            "source_label": source_label, "target_label": target, "data_sources": sources,
            "n_sources": {"test": int(is_test.sum()), "val": int((~is_test).sum())},
            "real_reference": f"the held-out (val + test) {target} films of {source_text}, resized as the model resizes a source",
        },
        extra_metrics=extra_metrics,
        extra_images={"translation_examples": lambda path: example_grid(per_image, path, {
            "model": model, "weights_sha256": generator.weights_sha256, "synthetic": True, "seed": "seed + row index",
            "columns": f"input, reconstruction ({source_label}), translation ({target}), |translation - input| x 4"})},
    )


def translation_metrics(summary: dict, test_summary: dict | None, source_label: str, target: str, ssim_target: float) -> list[dict]:
    """The CVAE's paired metrics (`summarise_translation` output) as metrics-file entries; the test split alone in `extra`."""
    from xray_generator.evaluation.report import build_metric

    def entry(name: str, path: tuple[str, str], what: str, target_text: str | None = None, **extra) -> dict | None:
        value = summary[path[0]].get(path[1])
        if value is None:
            return None  # the scores need a classifier with a head for the target
        test_value = test_summary[path[0]].get(path[1]) if test_summary else None
        return build_metric(
            name, value["mean"], {"images": value["n"]},
            ci={"low": value["ci_low"], "high": value["ci_high"], "level": 0.95, "method": summary["ci"]},
            extra={"what": what, "target": target_text, "test_split_only": test_value, **extra},
        )

    scores = {key: summary["translation"][key] for key in ("score_before", "score_reconstruction", "score_after") if key in summary["translation"]}

    rows = [
        entry("paired_reconstruction_ssim", ("reconstruction", "ssim"), f"SSIM of each {source_label} -> {source_label} reconstruction with its input (a valid pair)"),
        entry("paired_reconstruction_psnr_db", ("reconstruction", "psnr_db"), f"PSNR (dB) of each {source_label} -> {source_label} reconstruction with its input"),
        entry("translation_ssim_to_source", ("translation", "ssim"), f"SSIM of each {target} translation with its input: anatomy kept", f">= {ssim_target}"),
        entry(f"translation_share_ssim_at_least_{ssim_target}", ("translation", f"share_ssim_at_least_{ssim_target}"), f"share of translations with SSIM >= {ssim_target} to the input"),
        entry("translation_share_score_rising", ("translation", "share_rising"), f"share of films whose classifier {target} score rises from input to translation", ">= 0.8",
              mean_scores=scores),
        entry(f"translation_share_rising_with_ssim_at_least_{ssim_target}", ("translation", f"share_rising_with_ssim_at_least_{ssim_target}"),
              f"share of films whose {target} score rises while SSIM to the input stays >= {ssim_target}", f">= 0.8 with SSIM >= {ssim_target}"),
        entry("translation_share_above_reconstruction", ("translation", "share_above_reconstruction"),
              "share of films whose translation scores above their own reconstruction (same latent draw, only the label differs)"),
    ]
    return [row for row in rows if row is not None]
