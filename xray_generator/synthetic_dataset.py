"""Synthetic data sets at scale: a job list of (prompt, seed), rendered in fixed batches, sharded over processes.

    python -m xray_generator generate-dataset --prompts prompts.csv --per-prompt 4 --seed 0 --out synth/
    accelerate launch --cpu --num_processes 2 -m xray_generator generate-dataset --from-metadata test --per-prompt 2 --out synth/

What makes the output the same for any number of processes:
- the job list is a pure function of the inputs: job j (in prompt-file order, each prompt repeated
  `n` times) has seed `seed + j` and file `xray_<j>.png`;
- jobs are cut into batches of `batch_size` consecutive jobs, and a batch is always rendered whole,
  each image from its own seeded noise (`render_batch`). Batched matrix products round differently
  from single ones (one grey level on up to 3 of 65,536 pixels at batch 4, shipped weights), so
  the batch size is a setting recorded with every image, and a batch's makeup never depends on
  the process count or on what a killed run already finished;
- process p of N renders batches p, p + N, p + 2N, ... and writes only its own PNGs; the main
  process alone writes `run.json` and `manifest.csv`, after every process has finished.

A rerun (after a kill, or with more processes) keeps every PNG that decodes fully and carries the
provenance this job asks for, and renders the batches of the others again. Run `--threads` so that
processes x threads do not exceed the cores: results are bitwise stable only for a fixed thread count.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

MANIFEST_NAME = "manifest.csv"
SPEC_NAME = "run.json"
# Settings first, then the file's own sha256: one row says everything that made the image.
MANIFEST_FIELDS = [
    "file", "prompt", "negative_prompt", "seed", "model", "weights_sha256", "sampler", "steps", "guidance", "guidance_fraction",
    "height", "width", "precision", "batch_size", "synthetic", "png_sha256",
]
MAX_JOBS = 1_000_000
# Images per pipeline call: 4 was the fastest measured on the 2-core AVX2 CPU (benchmarks/bench_generate_dataset.py;
# the README's "Scaling out" table). --batch-size 1 makes each image independent of every other job too.
DEFAULT_BATCH_SIZE = 4


class DatasetRequestError(ValueError):
    """A generate-dataset request that cannot run as given; the message says what to change."""


@dataclass(frozen=True)
class Job:
    index: int
    prompt: str
    negative_prompt: str
    seed: int

    @property
    def file(self) -> str:
        return f"xray_{self.index:06d}.png"


# ---------------------------------------------------------------------------------------- the job list
def read_prompt_file(path: str | Path) -> list[dict]:
    """Rows of a prompts CSV: `prompt` (required), `negative_prompt` and `n` (optional); DatasetRequestError naming the line otherwise."""
    from xray_generator.pipelines.latent_diffusion import check_prompt_text

    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetRequestError(f"cannot read the prompts file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetRequestError(f"the prompts file {path} is not UTF-8 text") from exc
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in reader.fieldnames or []]
    if "prompt" not in columns:
        raise DatasetRequestError(f"{path} needs a header row with a 'prompt' column (optional: negative_prompt, n); got {columns or 'no header'}")
    unknown = sorted(set(columns) - {"prompt", "negative_prompt", "n"})
    if unknown:
        raise DatasetRequestError(f"{path}: unknown columns {unknown}; the columns are prompt, negative_prompt, n")
    rows = []
    for line, raw in enumerate(reader, start=2):
        row = {key.strip(): (value or "").strip() for key, value in raw.items() if key is not None}
        if not row.get("prompt"):
            raise DatasetRequestError(f"{path} line {line}: the prompt is empty")
        try:
            check_prompt_text(row["prompt"], "prompt")
            check_prompt_text(row.get("negative_prompt", ""), "negative_prompt")
        except ValueError as exc:
            raise DatasetRequestError(f"{path} line {line}: {exc}") from exc
        n = row.get("n", "")
        if n:
            if not n.isdigit() or int(n) < 1:
                raise DatasetRequestError(f"{path} line {line}: n must be a whole number of images of at least 1, got {n!r}")
        rows.append({"prompt": row["prompt"], "negative_prompt": row.get("negative_prompt", ""), "n": int(n) if n else None})
    if not rows:
        raise DatasetRequestError(f"{path} holds no prompts (only a header)")
    return rows


def prompts_from_metadata(split: str, max_prompts: int | None = None, seed: int = 0, data_dir: str | Path | None = None) -> list[dict]:
    """One prompt per real film of `split`, so the generated set has that split's label, age and view mix.

    With `max_prompts`, a seeded random subset of the films (the mix holds in expectation).
    Prompts are variant 0 of `prompt_variants`, which never quotes a clinical note.
    """
    from xray_generator.data.manifest import ManifestError, load_manifest
    from xray_generator.data.prompts import prompt_variants
    from xray_generator.paths import default_data_dir

    where = Path(data_dir) if data_dir is not None else default_data_dir()
    try:
        table = load_manifest(where).table
    except (FileNotFoundError, ManifestError) as exc:
        raise DatasetRequestError(f"--from-metadata needs a dataset manifest (metadata.csv) at {where}: {exc}") from exc
    splits = sorted(table["split"].dropna().unique())
    rows = table[table["split"] == split]
    if rows.empty:
        raise DatasetRequestError(f"split {split!r} has no films in {where}; splits there: {', '.join(splits)}")
    order = np.arange(len(rows)) if max_prompts is None else np.random.default_rng(seed).permutation(len(rows))[:max_prompts]
    return [{"prompt": prompt_variants(rows.iloc[int(i)], count=1)[0], "negative_prompt": "", "n": None}
            for i in sorted(order)]


def build_jobs(prompt_rows: Sequence[dict], per_prompt: int, seed: int) -> list[Job]:
    """Every image of the request in order; job j has seed `seed + j` (a pure function of the request)."""
    if per_prompt < 1:
        raise DatasetRequestError(f"--per-prompt must be at least 1, got {per_prompt}")
    jobs: list[Job] = []
    for row in prompt_rows:
        for _ in range(row.get("n") or per_prompt):
            jobs.append(Job(index=len(jobs), prompt=row["prompt"], negative_prompt=row.get("negative_prompt", ""), seed=seed + len(jobs)))
            if len(jobs) > MAX_JOBS:
                raise DatasetRequestError(f"the request asks for more than {MAX_JOBS:,} images; split it into several output folders")
    if seed + len(jobs) >= 2**63:
        raise DatasetRequestError("--seed plus the number of images must stay below 2**63")
    return jobs


def batches_of(jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
    return [list(jobs[start:start + batch_size]) for start in range(0, len(jobs), batch_size)]


def shard(batches: Sequence[list[Job]], process_index: int, num_processes: int) -> list[list[Job]]:
    """Process p takes batches p, p + N, ...: neighbouring batches (often one prompt) spread over processes."""
    return list(batches[process_index::num_processes])


# ---------------------------------------------------------------------------------------- rendering
def expected_metadata(pipe, settings: dict, job: Job, batch_size: int) -> dict:
    """The provenance a job's PNG carries: the pipeline's per-image metadata, with this job's seed and batch size."""
    return {
        "model": pipe.model_name, "weights_sha256": pipe.weights_hash, "prompt": job.prompt, "negative_prompt": job.negative_prompt,
        "sampler": settings["sampler"], "steps": settings["num_inference_steps"], "guidance": float(settings["guidance_scale"]),
        "guidance_fraction": float(settings["guidance_fraction"]), "seed": job.seed, "height": settings["height"],
        "width": settings["width"], "precision": pipe.precision, "batch_size": batch_size, "synthetic": True,
    }


def render_batch(pipe, settings: dict, batch: Sequence[Job], batch_size: int) -> list[bytes]:
    """PNG bytes (with provenance) of every job of one batch, in one pipeline call.

    `batch_size` is the run's setting, recorded in every PNG; the last batch of a job list may hold fewer jobs.
    """
    from xray_generator.io import png_bytes_with_metadata
    from xray_generator.pipelines.latent_diffusion import seeded_latents

    negatives = [job.negative_prompt for job in batch]
    result = pipe(
        [job.prompt for job in batch], negative_prompt=negatives if any(negatives) else None,
        latents=seeded_latents(pipe, [job.seed for job in batch], settings["height"], settings["width"]), seed=batch[0].seed,
        sampler=settings["sampler"], num_inference_steps=settings["num_inference_steps"], guidance_scale=settings["guidance_scale"],
        guidance_fraction=settings["guidance_fraction"], height=settings["height"], width=settings["width"],
    )
    return [png_bytes_with_metadata(image, expected_metadata(pipe, settings, job, batch_size)) for job, image in zip(batch, result.images)]


def finished_file(path: Path, wanted: dict) -> bool:
    """Whether `path` is a complete PNG (every chunk and CRC read, pixels decoded) made for exactly `wanted`."""
    from PIL import Image

    from xray_generator.io import PNG_METADATA_KEY

    try:
        with Image.open(path) as image:
            image.load()  # decodes every pixel: a truncated or damaged file raises here
            text = image.info.get(PNG_METADATA_KEY)
        return text is not None and json.loads(text) == wanted
    except (OSError, ValueError, SyntaxError, EOFError):
        return False


# ---------------------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class DatasetSpec:
    """What a folder holds; a rerun into the same folder must ask for the same thing."""

    model: str
    weights_sha256: str
    settings: dict
    batch_size: int
    seed: int
    jobs: int
    jobs_sha256: str

    @classmethod
    def of(cls, pipe, settings: dict, jobs: Sequence[Job], batch_size: int, seed: int) -> "DatasetSpec":
        listing = json.dumps([(job.prompt, job.negative_prompt, job.seed) for job in jobs]).encode()
        return cls(pipe.model_name, pipe.weights_hash, {**settings, "precision": pipe.precision}, batch_size, seed, len(jobs),
                   hashlib.sha256(listing).hexdigest())


def check_spec(out: Path, spec: DatasetSpec) -> None:
    """DatasetRequestError when `out` already holds another request's images (resuming needs the same request)."""
    path = out / SPEC_NAME
    if not path.is_file():
        return
    try:
        existing = json.loads(path.read_text())["spec"]
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetRequestError(f"{path} is unreadable ({exc}); remove it or use another --out") from exc
    mine = json.loads(json.dumps(asdict(spec)))
    differ = sorted(key for key in mine if existing.get(key) != mine[key])
    if differ:
        raise DatasetRequestError(f"{out} holds a data set made with other {', '.join(differ)}; resume with the same request or use another --out")


def remove_stale_temporaries(out: Path) -> int:
    """Temporary files of writes a kill interrupted (atomic_write names them '.<file>.<pid>.<id>.tmp')."""
    stale = list(out.glob(".xray_*.png.*.tmp")) + list(out.glob(f".{MANIFEST_NAME}.*.tmp")) + list(out.glob(f".{SPEC_NAME}.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def manifest_rows(out: Path, pipe, settings: dict, jobs: Sequence[Job], batch_size: int) -> list[dict]:
    """One row per job, with the sha256 of the PNG as it is on disk; DatasetRequestError if any is missing or wrong."""
    rows = []
    for job in jobs:
        wanted = expected_metadata(pipe, settings, job, batch_size)
        path = out / job.file
        if not finished_file(path, wanted):
            raise DatasetRequestError(f"{path} is missing or damaged after the run; rerun the same command to make it again")
        rows.append({"file": job.file, **wanted, "png_sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    return rows


def write_manifest(path: Path, rows: Sequence[dict]) -> Path:
    from xray_generator.io import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


@dataclass
class ShardReport:
    rendered: int
    kept: int
    seconds: float


def render_shard(pipe, settings: dict, out: Path, batches: Sequence[list[Job]], batch_size: int,
                 progress: bool = True, on_batch: Callable[[int], None] | None = None) -> ShardReport:
    """Render this process's batches; a batch whose every PNG is already finished is kept, any other is rendered whole."""
    from tqdm import tqdm

    from xray_generator.io import atomic_write_bytes

    start = time.perf_counter()
    todo = [batch for batch in batches
            if not all(finished_file(out / job.file, expected_metadata(pipe, settings, job, batch_size)) for job in batch)]
    total = sum(len(batch) for batch in batches)
    kept = total - sum(len(batch) for batch in todo)
    rendered = 0
    # Rate and ETA count only the images made in this run (initial images are excluded from the rate by tqdm).
    with tqdm(total=total, initial=kept, unit="img", desc="generate-dataset", disable=not progress, file=sys.stderr,
              mininterval=2, smoothing=0.1, dynamic_ncols=True) as bar:
        for batch in todo:
            for job, data in zip(batch, render_batch(pipe, settings, batch, batch_size)):
                # A finished batch-mate's file is left alone: its bytes would be the same, and it keeps its date.
                if not finished_file(out / job.file, expected_metadata(pipe, settings, job, batch_size)):
                    atomic_write_bytes(out / job.file, data)
            rendered += len(batch)
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(rendered)
    return ShardReport(rendered=rendered, kept=kept, seconds=time.perf_counter() - start)


def resolve_settings(pipe, steps=None, guidance=None, guidance_fraction=None, sampler=None) -> dict:
    """The pipeline's own defaults for whatever is not given (one place resolves them: `resolve_settings`)."""
    resolved = pipe.resolve_settings(num_inference_steps=steps, guidance_scale=guidance, guidance_fraction=guidance_fraction, sampler=sampler)
    return {key: resolved[key] for key in ("sampler", "num_inference_steps", "guidance_scale", "guidance_fraction", "height", "width")}


def threads_per_process(num_local_processes: int) -> int:
    """CXR_NUM_THREADS if set, else the cores shared out between this machine's processes (oversubscription slows every one)."""
    if os.environ.get("CXR_NUM_THREADS", "").strip():
        from xray_generator.studio import apply_thread_setting

        return apply_thread_setting()
    return max(1, (os.cpu_count() or 1) // max(1, num_local_processes))


def generate_dataset(
    pipe, jobs: Sequence[Job], out: str | Path, settings: dict, batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0,
    process_index: int = 0, num_processes: int = 1, barrier: Callable[[], None] = lambda: None, progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Render `jobs` into `out` (this process's shard), then, on the main process, write manifest.csv and run.json.

    `barrier` blocks until every process reaches it (accelerate's `wait_for_everyone`). Returns the
    run's summary (on the main process: images kept and rendered, seconds, images per second).
    """
    if not isinstance(batch_size, int) or not 1 <= batch_size <= 64:
        raise DatasetRequestError(f"--batch-size must be a whole number from 1 to 64, got {batch_size!r}")
    out = Path(out)
    main = process_index == 0
    spec = DatasetSpec.of(pipe, settings, jobs, batch_size, seed)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        check_spec(out, spec)
        remove_stale_temporaries(out)  # before the barrier: no process is writing yet
    barrier()
    if not main:
        check_spec(out, spec)
    start = time.perf_counter()
    report = render_shard(pipe, settings, out, shard(batches_of(jobs, batch_size), process_index, num_processes), batch_size,
                          progress=progress and main, on_batch=on_batch)
    barrier()  # every shard finished: only now can the main process see the whole set
    summary = {"process_index": process_index, "rendered": report.rendered, "kept": report.kept, "seconds": round(report.seconds, 3)}
    if not main:
        return summary
    from xray_generator.io import atomic_write_text

    rows = manifest_rows(out, pipe, settings, jobs, batch_size)
    write_manifest(out / MANIFEST_NAME, rows)
    elapsed = time.perf_counter() - start
    # Timing lives here, not in the manifest, so manifests of runs with any process count compare equal.
    summary.update(images=len(rows), processes=num_processes, wall_seconds=round(elapsed, 3),
                   images_per_second_main_process=round(report.rendered / report.seconds, 4) if report.rendered else None)
    atomic_write_text(out / SPEC_NAME, json.dumps({"spec": asdict(spec), "last_run": summary}, indent=2, sort_keys=True) + "\n")
    return summary


def load_text_to_image(model: str, weights: str | Path | None = None, text_encoder: str | None = None):
    """The family's verified pipeline; generate-dataset drives prompted (text-to-image) families."""
    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline
    from xray_generator.pipelines.registry import FAMILY_KINDS, UnknownGeneratorError, generator_folder

    if model not in FAMILY_KINDS:
        raise DatasetRequestError(str(UnknownGeneratorError(model)))
    if FAMILY_KINDS[model] != "text-to-image":
        raise DatasetRequestError(f"generate-dataset renders prompts with a text-to-image family (ldm); for {model} use "
                                  f"`python -m xray_generator generate --model {model} --n N -o DIR`")
    folder = Path(weights) if weights else generator_folder(model)
    return XRayDiffusionPipeline.from_pretrained(folder, text_encoder=text_encoder)
