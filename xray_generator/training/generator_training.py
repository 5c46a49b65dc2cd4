"""What the noise-to-image trainers (GANs, VAE family) share: data, the run loop's bookkeeping, export.

- `load_training_images`: the train split at the model's size with a class index per image.
- `TrainingRun`: the train images, run folder, resumable atomic checkpoints, loss log, time
  budget and fixed-seed sample grids.
- `GeneratorTrainer`: a trainer's `export` (a shippable weights folder: config, safetensors,
  sample grid, loss log, model card, MANIFEST.json, swapped into place only when complete) and
  its `train` / `export` command line.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image
from torch import nn
from tqdm import tqdm

from xray_generator.data.datasets import load_images_uint8
from xray_generator.data.manifest import Manifest, class_of, load_manifest
from xray_generator.data.preprocessing import prepare_radiograph
from xray_generator.evaluation.descriptors import laplacian_variance
from xray_generator.io import atomic_save_safetensors, atomic_write, atomic_write_text
from xray_generator.models.generator_parts import check_classes, parameter_count
from xray_generator.pipelines.noise_generators import CONFIG_NAME, WEIGHTS_NAME, NoiseToImageGenerator, wrap_model
from xray_generator.precision import note_training_precision, training_mixed_precision, training_precision_text
from xray_generator.training.checkpointing import EMA, CheckpointDir, CheckpointSchedule, LossLog, add_train_command, latest_ema_model
from xray_generator.weights import fresh_staging_folder, replace_folder_atomically, write_manifest

GRID_COLUMNS = 8
GRID_SEEDS = (0, 1)  # rows of an unconditional grid; a conditional grid has one row per class, seed 0


def load_config(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


# ---------------------------------------------------------------------------- data
@dataclass
class TrainingImages:
    """uint8 images (N, S, S) in memory and their class indices (N,) (all 0 when unconditional)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)

    def counts(self) -> dict[str, int]:
        if not self.classes:
            return {"all": len(self)}
        return {name: int((self.labels == i).sum()) for i, name in enumerate(self.classes)}

    def random_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch in [-1, 1], (B, 1, S, S), drawn with the global torch RNG (checkpointed with the run)."""
        rows = torch.randint(0, len(self), (batch_size,))
        return self.images[rows, None].float() / 127.5 - 1.0, self.labels[rows]


def load_training_images(manifest: Manifest, image_size: int, classes: tuple[str, ...] = (), allow_upsample: bool = False,
                         max_images: int | None = None) -> TrainingImages:
    """The manifest's images as (N, S, S) uint8 via `prepare_radiograph`, never flipped.

    Images smaller than `image_size` are left out unless `allow_upsample` (the 224-px Kermany
    JPEGs at 256 px: an upsampled film only teaches the generator the interpolation). With
    `classes`, images carrying none of them are left out.
    """
    table = manifest.table
    keep = (table["native_px"] >= image_size).fillna(False).to_numpy(bool) if not allow_upsample else np.ones(len(table), bool)
    labels = np.array([class_of(value, classes) if classes else 0 for value in table["labels"].astype(object)], dtype=np.int64)
    keep &= labels >= 0
    chosen = Manifest(table.loc[keep].reset_index(drop=True), manifest.root)
    if max_images:
        chosen.table = chosen.table.iloc[:max_images]
    if len(chosen) == 0:
        raise ValueError(f"no training images of at least {image_size} px with classes {list(classes) or 'any'} in {manifest.root}")
    frames = [prepare_radiograph(image, image_size, allow_upsample=allow_upsample) for image in load_images_uint8(chosen)]
    images = torch.from_numpy(np.stack([np.rint(f * 255.0).astype(np.uint8) for f in frames]))
    return TrainingImages(images, torch.from_numpy(labels[keep][: len(chosen)]), classes)


# ---------------------------------------------------------------------------- the run
class TrainingRun:
    """Bookkeeping of one trainer run: config, checkpoints, resume, loss log, time budget, grids.

    The trainer owns the models and the step; this class owns everything that must survive a kill.
    """

    def __init__(self, config: dict, run_dir: str | Path, log_fields: list[str], max_minutes: float | None, desc: str):
        train_cfg = config["train"]
        torch.set_num_threads(train_cfg.get("num_threads", torch.get_num_threads()))
        torch.manual_seed(train_cfg.get("seed", 0))
        self.config, self.train_cfg = config, train_cfg
        self.accelerator = Accelerator(mixed_precision=training_mixed_precision(train_cfg.get("mixed_precision", "bf16")), cpu=not torch.cuda.is_available())
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoints = CheckpointDir(self.run_dir)
        self.log = LossLog(self.run_dir / "log.csv", log_fields)
        self.max_steps = train_cfg["max_steps"]
        self.state = {"step": 0, "samples_seen": 0, "wall_seconds": 0.0}
        self.desc = desc
        self.schedule = CheckpointSchedule(train_cfg["checkpoint_minutes"], max_minutes)
        self.bar: tqdm | None = None
        self.data_summary: dict = {}

    def load_train_images(self, data_dir: str | Path | None) -> TrainingImages:
        """The train split at the model's size (with class indices for a conditional model); counts go into the state."""
        model_cfg, data_cfg = self.config["model"], self.config.get("data", {})
        manifest = load_manifest(data_dir)
        data = load_training_images(manifest.query(split="train"), model_cfg["image_size"], check_classes(model_cfg.get("classes", [])),
                                    allow_upsample=data_cfg.get("allow_upsample", False), max_images=data_cfg.get("max_images"))
        self.data_summary = {"train_images": data.counts(), "data": manifest.root.name}
        return data

    def start(self, resume: bool, modules: dict[str, nn.Module | EMA], optimizers: dict[str, torch.optim.Optimizer]) -> bool:
        """With `resume`, load the latest checkpoint (if any) into `modules`, `optimizers` and the torch
        RNG and return True. A fresh start refuses a folder that holds checkpoints, so two runs
        never mix their checkpoints and loss logs."""
        latest = self.checkpoints.latest()
        if latest is not None and not resume:
            raise FileExistsError(f"{self.run_dir} already holds a run ({latest.name}); pass --resume to continue it, or choose a new run folder")
        atomic_write_text(self.run_dir / "config.json", json.dumps(self.config, indent=2))
        if latest is None:
            self.log.truncate_after(0)  # rows of a run killed before its first checkpoint
            return False
        tensors, self.state = self.checkpoints.load(latest, optimizers)
        for name, module in modules.items():
            module.load_state_dict(tensors[name])
        self.log.truncate_after(self.state["step"])
        self.schedule.wall_seconds_before = self.state["wall_seconds"]
        print(f"resumed from {latest.name}: step {self.state['step']}, {self.state['samples_seen']} samples", flush=True)
        return True

    @property
    def finished(self) -> bool:
        return self.state["step"] >= self.max_steps

    def wall_seconds(self) -> float:
        return self.schedule.wall_seconds()

    def out_of_time(self) -> bool:
        return self.schedule.out_of_time()

    def advance(self, samples: int, **postfix: float) -> bool:
        """Count one finished step; True when a checkpoint is due (interval, time budget or the end)."""
        if self.bar is None:
            self.bar = tqdm(total=self.max_steps, initial=self.state["step"], desc=self.desc, dynamic_ncols=True, mininterval=5)
        self.state["step"] += 1
        self.state["samples_seen"] += samples
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in postfix.items()})
        return self.schedule.due(finished=self.finished)

    def checkpoint(self, modules: dict[str, dict[str, torch.Tensor]], optimizers: dict[str, torch.optim.Optimizer],
                   build_model: Callable[[dict], nn.Module], ema: EMA) -> bool:
        """Save a checkpoint and the EMA model's sample grid; True when the time budget is spent."""
        self.state.update(self.data_summary, wall_seconds=self.wall_seconds())
        note_training_precision(self.state, self.accelerator.mixed_precision)
        self.checkpoints.save(self.state["step"], modules, self.state, optimizers)
        self.schedule.saved()
        shadow = build_model(self.config["model"])
        ema.copy_to(shadow)
        write_sample_grid(wrap_model(self.config["family"], shadow, self.config["model"]),
                          self.run_dir / "samples" / f"step-{self.state['step']:08d}.png")
        return self.out_of_time()

    def append_log(self, row: dict, force: bool = False) -> None:
        if force or self.state["step"] % self.train_cfg.get("log_every", 10) == 0:
            self.log.append({"step": self.state["step"], "samples_seen": self.state["samples_seen"], "wall_seconds": round(self.wall_seconds(), 1), **row})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def sample_grid(generator: NoiseToImageGenerator) -> np.ndarray:
    """float (rows·S, 8·S): one row per class at seed 0, or rows for seeds 0 and 1 when unconditional."""
    if generator.conditions:
        rows = [generator.generate(GRID_COLUMNS, condition=c, seed=0) for c in generator.conditions]
    else:
        rows = [generator.generate(GRID_COLUMNS, seed=s) for s in GRID_SEEDS]
    return np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)


def write_sample_grid(generator: NoiseToImageGenerator, path: Path) -> Path:
    grid = Image.fromarray((sample_grid(generator) * 255.0 + 0.5).astype(np.uint8), mode="L")
    return atomic_write(path, lambda handle: grid.save(handle, format="PNG"), make_parents=True)


# ---------------------------------------------------------------------------- export
def mean_last_logged(log_path: Path, columns: list[str], rows: int = 50) -> dict[str, float | None]:
    """Mean of each column over the last `rows` logged rows (noisy per-step losses settle)."""
    with open(log_path, newline="") as handle:
        table = list(csv.DictReader(handle))
    out = {}
    for column in columns:
        values = [float(r[column]) for r in table if r.get(column) not in (None, "")]
        out[column] = float(np.mean(values[-rows:])) if values else None
    return out


def measure_generation(generator: NoiseToImageGenerator, real: torch.Tensor, n: int = 16) -> dict:
    """Seconds per image (fp32, one batch of n after a warm-up) and Laplacian-variance sharpness.

    Sharpness is the median over n samples (of the first class, for a conditional model) and over
    n real val films at the same size, so the card can say whether samples are blurrier than films.
    """
    condition = generator.conditions[0] if generator.conditions else None
    generator.generate(1, condition=condition, seed=0)
    started = time.perf_counter()
    samples = generator.generate(n, condition=condition, seed=1)
    seconds = (time.perf_counter() - started) / n
    real_float = real[:n].float().numpy() / 255.0
    return {
        "seconds_per_image": round(seconds, 4),
        "threads": torch.get_num_threads(),
        "sharpness_samples_median": float(np.median([laplacian_variance(s) for s in samples])),
        "sharpness_real_median": float(np.median([laplacian_variance(r) for r in real_float])),
        "sharpness_n": n,
    }


@dataclass(frozen=True)
class GeneratorTrainer:
    """One family group's trainer: its train function, the shipped model's builder, its loss columns,
    the model paragraph of its card and its module docstring. Gives `export` and the command line."""

    title: str
    train: Callable[..., dict]
    build_model: Callable[[dict], nn.Module]
    loss_columns: tuple[str, ...]
    describe: Callable[[dict], str]
    doc: str = ""

    def export(self, run_dir: str | Path, out_dir: str | Path, data_dir: str | Path | None = None, note: str = "") -> Path:
        """Write the latest checkpoint's EMA weights as a verified weights folder with a model card.

        The folder (config.json, model.safetensors, samples.png, training_log.csv, README.md,
        MANIFEST.json) is written beside `out_dir` and swapped into place only when complete.
        `note` goes into the card and the config as it is: what the numbers cannot say (why this
        checkpoint, what went wrong in the run).
        """
        run_dir, out_dir = Path(run_dir), Path(out_dir)
        model, state, config = latest_ema_model(run_dir, lambda c: self.build_model(c["model"]))
        staging = fresh_staging_folder(out_dir)
        atomic_save_safetensors(model.state_dict(), staging / WEIGHTS_NAME)
        shutil.copyfile(run_dir / "log.csv", staging / "training_log.csv")
        generator = wrap_model(config["family"], model, config["model"])
        real = load_training_images(load_manifest(data_dir).query(split="val"), config["model"]["image_size"], max_images=16).images
        training = {
            "weights": "EMA of the latest checkpoint",
            "steps": state["step"],
            "samples_seen": state["samples_seen"],
            "wall_seconds": round(state["wall_seconds"], 1),
            "mixed_precision_used": state.get("mixed_precision_used"),
            "data": state.get("data"),
            "train_images": state.get("train_images"),
            "final_losses_mean_last_50_logged": mean_last_logged(run_dir / "log.csv", list(self.loss_columns)),
            "parameters": parameter_count(model),
            "sampling_parameters": generator.parameters,
            "weights_bytes": (staging / WEIGHTS_NAME).stat().st_size,
            **measure_generation(generator, real),
            **({"note": note} if note else {}),
        }
        exported = {**config, "training": training}
        atomic_write_text(staging / CONFIG_NAME, json.dumps(exported, indent=2) + "\n")
        write_sample_grid(generator, staging / "samples.png")
        atomic_write_text(staging / "README.md", generator_card(exported, self.describe(config)))
        write_manifest(staging)
        replace_folder_atomically(staging, out_dir)
        return out_dir

    def main(self, argv: list[str] | None = None) -> None:
        parser = argparse.ArgumentParser(description=self.doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        sub = parser.add_subparsers(dest="command", required=True)
        add_train_command(sub, help=f"train (or resume) a {self.title}", run_help="run folder for checkpoints, sample grids and the loss log")
        export = sub.add_parser("export", help="write the latest EMA weights as a verified weights folder with a model card")
        export.add_argument("--run", required=True)
        export.add_argument("--out", required=True)
        export.add_argument("--data-dir", default=None, help="where the real val films for the sharpness reference come from")
        export.add_argument("--note", default="", help="a paragraph for the model card: why this checkpoint, what went wrong in the run")
        args = parser.parse_args(argv)
        if args.command == "train":
            self.train(load_config(args.config), args.run, resume=args.resume, max_minutes=args.max_minutes, data_dir=args.data_dir)
        else:
            print(self.export(args.run, args.out, data_dir=args.data_dir, note=args.note))


def generator_card(config: dict, model_text: str) -> str:
    """README.md of an exported generator from its config and measured training numbers."""
    training, train_cfg = config["training"], config["train"]
    classes = config["model"].get("classes") or []
    losses = ", ".join(f"{k} {v:.4f}" for k, v in training["final_losses_mean_last_50_logged"].items() if v is not None)
    counts = ", ".join(f"{k} {v:,}" for k, v in (training.get("train_images") or {}).items())
    rows = f"one row per class ({', '.join(classes)}), seed 0" if classes else f"seeds {', '.join(map(str, GRID_SEEDS))}"
    size = config["model"]["image_size"]
    note = f"\nNote: {training['note']}\n" if training.get("note") else ""
    return f"""# {config['family']}: chest X-ray generator

**Synthetic images for research use only. Not for clinical use.**

## Model
{model_text}

Parameters: {training['parameters']:,} shipped ({training['weights_bytes'] / 1e6:.1f} MB of fp32 safetensors), {training['sampling_parameters']:,} of them used to generate. Output: {size}×{size}, one channel, in [0, 1].
{"Conditions: " + ", ".join(classes) + "." if classes else "Unconditional."}

## Data
The train split of `{training.get('data')}` at {size} px ({counts} images).
{f"Images smaller than {size} px{' (the 224-px Kermany JPEGs)' if size > 224 else ''} are left out, never upscaled." if not config.get('data', {}).get('allow_upsample') else f"Images smaller than {size} px are upscaled (Lanczos)."}
No image is flipped left-right (a mirrored chest shows dextrocardia).
{"An image takes the most specific class it carries (COVID-19 films are also labelled Pneumonia)." if classes else ""}

## Training (CPU, {training_precision_text(training, train_cfg.get('mixed_precision', 'bf16'))})
Steps: {training['steps']:,} (batch {train_cfg['batch_size']}), samples seen: {training['samples_seen']:,}, wall time: {training['wall_seconds'] / 60:.1f} min.
Final losses (mean over the last 50 logged rows): {losses}. Loss log: `training_log.csv`. Exported weights: {training['weights']}.
{note}
## Generation
{training['seconds_per_image'] * 1000:.1f} ms per image (fp32, a batch of {training['sharpness_n']}, {training['threads']} CPU thread(s)).
Sharpness (variance of the Laplacian, median of {training['sharpness_n']}): samples {training['sharpness_samples_median']:.5f},
real val films {training['sharpness_real_median']:.5f}; a lower value for samples means they are blurrier than real films.

![samples](samples.png)

Rows: {rows}; 8 images per row (`generate(8, condition, seed)`).
"""
