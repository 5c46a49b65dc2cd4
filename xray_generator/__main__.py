"""Command line for CXR Studio. Research use only; every generated image is marked synthetic.

    python -m xray_generator generate --prompt "right lower lobe pneumonia" --seed 0 -o out.png
    python -m xray_generator generate --prompt "normal pediatric chest" --n 8 -o batch/
    python -m xray_generator generate --model dcgan_conditional --condition Pneumonia --n 4 -o batch/
    python -m xray_generator generate --model cvae --source NORMAL.png --condition Pneumonia -o out.png
    python -m xray_generator edit --image IN.png --prompt "right lower lobe pneumonia" --strength 0.5 --region right-lower -o OUT.png
    python -m xray_generator vocabulary          # findings the shipped model was trained on, with counts
    python -m xray_generator verify-weights
    python -m xray_generator generate-dataset --prompts prompts.csv --per-prompt 4 --seed 0 --out synth/
    accelerate launch --multi_gpu --num_processes 2 -m xray_generator generate-dataset --from-metadata test --out synth/   # 2 CPU processes without CUDA
    python -m xray_generator export-runtime          # export and cache the UNet and decoder for the fast backends
    python -m xray_generator findings --model ldm --n 200   # condition fidelity per NIH finding and for adults
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _load_pipeline(args):
    from xray_generator.models.text_encoder import TextEncoderError
    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline
    from xray_generator.pipelines.registry import UnknownGeneratorError, generator_folder
    from xray_generator.weights import WeightsError

    try:
        folder = Path(args.weights) if args.weights else generator_folder(args.model)
        return XRayDiffusionPipeline.from_pretrained(folder, text_encoder=args.text_encoder)
    except (WeightsError, TextEncoderError, UnknownGeneratorError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from exc


def _model_folder(args) -> Path:
    from xray_generator.pipelines.registry import generator_folder

    return Path(args.weights) if args.weights else generator_folder(args.model)


def _prompt_notices(args) -> list[str]:
    """Findings the prompt asks for that the model saw rarely or never (negated ones are not requests)."""
    from xray_generator.model_vocabulary import load_training_vocabulary, prompt_notices

    return prompt_notices(args.prompt, load_training_vocabulary(_model_folder(args)))


def command_vocabulary(args) -> int:
    from xray_generator.model_vocabulary import format_vocabulary, load_training_vocabulary
    from xray_generator.weights import WeightsError, verify_manifest

    folder = _model_folder(args)
    try:
        verify_manifest(folder)
    except (WeightsError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from exc
    vocabulary = load_training_vocabulary(folder)
    if vocabulary is None:
        raise CliError(f"{folder} has no training_vocabulary.json (weights exported before it existed; "
                       "write it with python -m xray_generator.training.train_ldm write-vocabulary)")
    print(format_vocabulary(vocabulary))
    return 0


def _batch_paths(output: Path, n: int) -> tuple[list[Path], Path]:
    folder = output if output.suffix.lower() != ".png" else output.parent
    stem = "xray" if output.suffix.lower() != ".png" else output.stem
    return [folder / f"{stem}_{i:04d}.png" for i in range(n)], folder / f"{stem}_manifest.csv"


def _output_targets(output: Path, n: int) -> tuple[list[Path], Path | None]:
    """The PNG paths to write (one file, or a batch in a folder) and the batch's manifest path (None for one file)."""
    if n == 1 and output.suffix.lower() == ".png":
        return [output], None
    targets, manifest_path = _batch_paths(output, n)
    # Temporary files of a run killed mid-write (atomic_write names them ".<file>.<pid>.<id>.tmp").
    for stale in targets[0].parent.glob(f".{targets[0].stem.rsplit('_', 1)[0]}_*.png.*.tmp"):
        stale.unlink(missing_ok=True)
    return targets, manifest_path


def command_generate(args) -> int:
    from xray_generator.io import read_png_metadata, save_png_with_metadata
    from xray_generator.io import atomic_write_text
    from xray_generator.pipelines.registry import FAMILY_KINDS, UnknownGeneratorError

    if args.model not in FAMILY_KINDS:
        raise CliError(str(UnknownGeneratorError(args.model)))
    if FAMILY_KINDS[args.model] != "text-to-image":
        return command_generate_family(args)
    given = [flag for flag, value in (("--condition", args.condition), ("--source", args.source)) if value is not None]
    if given:
        raise CliError(f"{' and '.join(given)} {'applies' if len(given) == 1 else 'apply'} to the alternative families (--model cvae, dcgan_conditional, ...); the {args.model} model takes a --prompt")
    if args.prompt is None:
        raise CliError(f"the {args.model} model needs a --prompt (a radiology-style description)")
    pipe = _load_pipeline(args)
    for notice in _prompt_notices(args):
        print(f"note: {notice}", file=sys.stderr)
    output = Path(args.output)
    settings = dict(
        negative_prompt=args.negative_prompt, num_inference_steps=args.steps, guidance_scale=args.guidance,
        guidance_fraction=args.guidance_fraction, sampler=args.sampler, backend=args.backend,
    )
    targets, manifest_path = _output_targets(output, args.n)
    try:
        backend = pipe.resolve_settings(backend=args.backend)["backend"]
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if backend != "torch":
        print(f"note: {backend} runs the UNet and decoder: about 1 s to load from its cache, about 20 s the first time for "
              "these weights (an export, cached; `python -m xray_generator export-runtime` does it ahead)", file=sys.stderr)
    rows = []
    for i, target in enumerate(targets):
        seed = args.seed + i
        if target.is_file():  # a rerun of an interrupted batch skips images already made with the same settings
            existing = read_png_metadata(target)
            if _same_settings(existing, pipe, args, seed):
                rows.append({**existing, "file": target.name})
                continue
        start = time.perf_counter()
        try:
            result = pipe(args.prompt, seed=seed, **settings)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
        elapsed = time.perf_counter() - start
        for notice in result.notices:
            print(f"note: {notice}", file=sys.stderr)
        save_png_with_metadata(result.images[0], target, result.metadata[0])
        rows.append({**result.metadata[0], "file": target.name})
        print(f"{target}  ({elapsed:.2f} s, {result.metadata[0]['steps'] / elapsed:.1f} steps/s)")
        if manifest_path is not None:
            _write_manifest(manifest_path, rows, atomic_write_text)
    if manifest_path is not None:
        # Also when every image was already there: a batch killed before its last manifest write.
        _write_manifest(manifest_path, rows, atomic_write_text)
    return 0


def _same_settings(existing: dict, pipe, args, seed: int) -> bool:
    """Whether an image on disk was made with exactly the settings of this run."""
    resolved = pipe.resolve_settings(sampler=args.sampler, num_inference_steps=args.steps, guidance_scale=args.guidance,
                                     guidance_fraction=args.guidance_fraction, backend=args.backend)
    wanted = {
        "prompt": args.prompt, "seed": seed, "weights_sha256": pipe.weights_hash,
        "steps": resolved["num_inference_steps"], "guidance": float(resolved["guidance_scale"]),
        "guidance_fraction": float(resolved["guidance_fraction"]), "sampler": resolved["sampler"],
        "negative_prompt": args.negative_prompt or "", "backend": resolved["backend"],
    }
    return all(existing.get(key) == value for key, value in wanted.items())


MANIFEST_FIELDS = ["file", "model", "weights_sha256", "prompt", "negative_prompt", "sampler", "steps", "guidance", "guidance_fraction", "seed", "height", "width", "precision", "backend", "synthetic"]
FAMILY_MANIFEST_FIELDS = ["file", "model", "weights_sha256", "kind", "condition", "source_image_id", "source_file_sha256", "seed", "height", "width", "synthetic"]


def _write_manifest(path: Path, rows: list[dict], atomic_write_text, fields: list[str] = MANIFEST_FIELDS) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _load_family(args):
    """The family's generator from weights/<model> (or --weights); one-line errors for unknown or damaged weights."""
    from xray_generator.pipelines.registry import UnknownGeneratorError, family_loader, load_generator
    from xray_generator.weights import WeightsError

    try:
        return family_loader(args.model)(Path(args.weights)) if args.weights else load_generator(args.model)
    except (WeightsError, UnknownGeneratorError, FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc


def _read_source(path: str) -> tuple:
    """A source radiograph for the CVAE: (float image, file name, sha256 of the file); one-line errors."""
    import hashlib

    from xray_generator.io import ImageLoadError, decode_upload

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read the source {path}: {exc.strerror or exc}") from exc
    try:
        return decode_upload(data, Path(path).name), Path(path).name, hashlib.sha256(data).hexdigest()
    except ImageLoadError as exc:
        raise CliError(str(exc)) from exc


def command_generate_family(args) -> int:
    """Images from an alternative family (GAN, VAE family, CVAE): PNGs with provenance, a manifest for a batch.

    Image i of a batch is `generate(1, condition, seed + i, source)`, the same image a single
    call with that seed gives.
    """
    from xray_generator.io import atomic_write_text, read_png_metadata, save_png_with_metadata
    from xray_generator.pipelines.registry import FAMILY_KINDS, check_condition

    translates = FAMILY_KINDS[args.model] == "image-to-image"
    given = [flag for flag, value in (("--prompt", args.prompt), ("--negative-prompt", args.negative_prompt), ("--steps", args.steps),
                                      ("--guidance", args.guidance), ("--guidance-fraction", args.guidance_fraction), ("--sampler", args.sampler),
                                      ("--text-encoder", args.text_encoder), ("--backend", args.backend)) if value is not None]
    if given:
        takes = "--source and --condition" if translates else "--condition (conditional families) and --seed"
        raise CliError(f"the {args.model} model takes no {', '.join(given)} (those drive the text-to-image ldm); it takes {takes}")
    if translates and args.source is None:
        raise CliError(f"the {args.model} model translates a radiograph: pass --source IN.png (a frontal chest film)")
    if not translates and args.source is not None:
        raise CliError(f"the {args.model} model generates from noise and takes no --source; only the cvae translates a radiograph")
    source, source_name, source_sha = _read_source(args.source) if translates else (None, "", "")
    generator = _load_family(args)
    try:  # before any notice or file: a wrong label is the whole answer
        condition = check_condition(args.condition, tuple(generator.conditions), getattr(generator, "default_condition", None))
    except ValueError as exc:
        raise CliError(f"{args.model}: {exc}") from exc
    if translates:
        from xray_generator.pipelines.cvae import prepare_source

        try:
            _, notices = prepare_source(source, generator.image_size)  # refuses what is no radiograph before anything is written
        except ValueError as exc:
            raise CliError(f"{source_name}: {exc}") from exc
        for notice in notices:
            print(f"note: {notice}", file=sys.stderr)
    targets, manifest_path = _output_targets(Path(args.output), args.n)
    kind = (f"translated real radiograph ({args.model}: {source_name} -> {condition})" if translates
            else f"generated from noise ({args.model}{', class ' + condition if condition else ''})")
    rows = []
    for i, target in enumerate(targets):
        seed = args.seed + i
        metadata = {
            "model": generator.family, "weights_sha256": generator.weights_sha256, "kind": kind, "condition": condition or "",
            "source_image_id": source_name, "source_file_sha256": source_sha, "seed": seed,
            "height": generator.image_size, "width": generator.image_size, "synthetic": True,
        }
        if target.is_file():  # a rerun of an interrupted batch skips images already made for the same request
            try:
                existing = read_png_metadata(target)
            except (OSError, ValueError):
                existing = {}  # a damaged file is made again
            if all(existing.get(key) == value for key, value in metadata.items()):
                rows.append({**existing, "file": target.name})
                continue
        start = time.perf_counter()
        try:
            image = generator.generate(1, condition=condition, seed=seed, source=source)[0]
        except ValueError as exc:
            raise CliError(str(exc)) from exc
        elapsed = time.perf_counter() - start
        save_png_with_metadata(image, target, metadata)
        rows.append({**metadata, "file": target.name})
        print(f"{target}  ({elapsed:.2f} s; SYNTHETIC, research use only)")
        if manifest_path is not None:
            _write_manifest(manifest_path, rows, atomic_write_text, FAMILY_MANIFEST_FIELDS)
    if manifest_path is not None:
        _write_manifest(manifest_path, rows, atomic_write_text, FAMILY_MANIFEST_FIELDS)
    return 0


def command_generate_dataset(args) -> int:
    """A synthetic data set: one PNG per (prompt, seed) job, sharded over the processes accelerate launched, plus manifest.csv."""
    import torch
    from accelerate import PartialState

    from xray_generator import synthetic_dataset as sd
    from xray_generator.distributed import LaunchError, check_launch, local_process_count
    from xray_generator.models.text_encoder import TextEncoderError
    from xray_generator.weights import WeightsError

    try:
        rows = sd.read_prompt_file(args.prompts) if args.prompts else sd.prompts_from_metadata(args.from_metadata, args.max_prompts, args.seed)
        jobs = sd.build_jobs(rows, args.per_prompt, args.seed)
    except sd.DatasetRequestError as exc:
        raise CliError(str(exc)) from exc
    if args.index_url:
        from xray_generator.data.index import IndexConnectionError, check_index_url

        try:  # a wrong URL or a server that is down fails now, not after hours of generation
            check_index_url(args.index_url)
        except IndexConnectionError as exc:
            raise CliError(str(exc)) from exc
    try:
        check_launch()
    except LaunchError as exc:
        raise CliError(str(exc)) from exc
    # The pipeline runs on the CPU (it places no tensor on a GPU yet): processes shard the work over the cores.
    state = PartialState(cpu=True)
    threads = args.threads or sd.threads_per_process(local_process_count())
    torch.set_num_threads(threads)
    try:
        pipe = sd.load_text_to_image(args.model, args.weights, args.text_encoder)
        settings = sd.resolve_settings(pipe, args.steps, args.guidance, args.guidance_fraction, args.sampler)
        pipe.check_inputs("x", None, settings["num_inference_steps"], settings["guidance_scale"], 1, settings["height"],
                          settings["width"], args.seed, guidance_fraction=settings["guidance_fraction"])
        summary = sd.generate_dataset(pipe, jobs, args.out, settings, batch_size=args.batch_size or sd.DEFAULT_BATCH_SIZE, seed=args.seed,
                                      process_index=state.process_index, num_processes=state.num_processes,
                                      barrier=state.wait_for_everyone, progress=not args.quiet)
    except (sd.DatasetRequestError, WeightsError, TextEncoderError, FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    if state.is_main_process:
        if args.index_url:
            from xray_generator.data.index import register_generated

            count = register_generated(args.index_url, Path(args.out))
            print(f"registered {count} generated films in the index")
        print(f"{summary['images']} images in {args.out} ({summary['kept']} kept, {summary['rendered']} made here by process 0 of "
              f"{state.num_processes}, {threads} threads each; {summary['wall_seconds']:.1f} s); manifest: {Path(args.out) / sd.MANIFEST_NAME}")
    return 0


def command_edit(args) -> int:
    """Edit a real radiograph under a prompt; writes OUT.png (with provenance) and OUT_diff.png."""
    from xray_generator.io import ImageLoadError, decode_upload, save_png_with_metadata
    from xray_generator.pipelines import editing
    from xray_generator.pipelines.latent_diffusion import GenerationCancelled

    try:
        editing.check_strength(args.strength)
        if args.region is not None:
            editing.region_mask(args.region, 8)  # an unknown name fails here, before the model loads
    except editing.EditInputError as exc:
        raise CliError(str(exc)) from exc
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise CliError(f"-o must name a .png file, got {output}")

    def read_bytes(path: str, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc

    try:
        source = decode_upload(read_bytes(args.image, "image"), Path(args.image).name)
        mask = editing.mask_from_upload(read_bytes(args.mask, "mask"), Path(args.mask).name) if args.mask else args.region
    except ImageLoadError as exc:
        raise CliError(str(exc)) from exc
    pipe = _load_pipeline(args)
    start = time.perf_counter()
    try:
        result = pipe.edit(
            source, args.prompt, strength=args.strength, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
            guidance_scale=args.guidance, seed=args.seed, sampler=args.sampler, mask=mask, source_id=Path(args.image).name,
            backend=args.backend,
        )
    except (ValueError, GenerationCancelled) as exc:
        raise CliError(str(exc)) from exc
    elapsed = time.perf_counter() - start
    for notice in result.notices:
        print(f"note: {notice}", file=sys.stderr)
    diff_path = output.with_name(f"{output.stem}_diff.png")
    save_png_with_metadata(result.image, output, result.metadata)
    save_png_with_metadata(editing.difference_image(result), diff_path, editing.difference_metadata(result))
    print(f"{output}  {diff_path}  ({elapsed:.2f} s, {result.metadata['denoising_steps']} denoising steps; SYNTHETIC, research use only)")
    return 0


def run_metrics_command(run_from_args, args) -> int:
    """Run an evaluation module's `run_from_args`; bad weights, missing files and bad values become clear CLI errors."""
    from xray_generator.weights import WeightsError

    try:
        run_from_args(args)
    except (WeightsError, FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    return 0


def command_evaluate(args) -> int:
    from xray_generator.evaluation.run import run_from_args

    return run_metrics_command(run_from_args, args)


def command_realism(args) -> int:
    from xray_generator.evaluation.realism import run_from_args

    return run_metrics_command(run_from_args, args)


def command_findings(args) -> int:
    if args.train_head:
        from xray_generator.training.train_finding_head import run_from_args
    else:
        from xray_generator.evaluation.findings import run_from_args

    return run_metrics_command(run_from_args, args)


def command_verify(args) -> int:
    """Every family's weights folder against its MANIFEST.json; alternative families not exported yet are listed, not failed."""
    from xray_generator.pipelines.registry import GENERATOR_FAMILIES, GENERATORS, generator_folder
    from xray_generator.weights import WeightsError, verify_manifest

    failures = 0
    for name in GENERATOR_FAMILIES:
        folder = generator_folder(name)
        if name not in GENERATORS and not folder.exists():
            print(f"{name}: not trained yet  ({folder} does not exist; see the README's Training section)")
            continue
        try:
            print(f"{name}: ok  {verify_manifest(folder)}  ({folder})")
        except WeightsError as exc:
            failures += 1
            print(f"{name}: FAILED  {exc}")
    return 1 if failures else 0


def shipped_generation_defaults() -> dict:
    """The shipped ldm's sampling defaults, read from weights/ldm/pipeline.json (empty when there is none).

    Help texts quote these instead of restating numbers that `set-defaults` can change. Read as
    plain JSON: importing the pipeline module (torch, diffusers) would make `--help` take seconds.
    """
    from xray_generator.paths import weights_dir

    try:
        defaults = json.loads((weights_dir() / "ldm" / "pipeline.json").read_text())["generation_defaults"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return defaults if isinstance(defaults, dict) else {}


def _model_default(shipped: dict, key: str) -> str:
    """ "default from the model" plus, when the shipped weights are present, their value."""
    return f"default from the model: {shipped[key]} for the shipped weights" if key in shipped else "default from the model"


def command_export_runtime(args) -> int:
    """Export (or find in the cache) and load the UNet and decoder of each backend asked for."""
    from xray_generator.pipelines.runtime import BackendError, default_backend

    pipe = _load_pipeline(args)
    for backend in args.backend or [default_backend()]:
        start = time.perf_counter()
        try:
            runtime = pipe.runtime_models(backend)
        except BackendError as exc:
            raise CliError(str(exc)) from exc
        if runtime.folder is None:
            print(f"{backend}: runs the PyTorch modules, nothing to export")
            continue
        print(f"{backend}: ready in {time.perf_counter() - start:.1f} s, {runtime.precision}, cache {runtime.folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from xray_generator.pipelines.registry import GENERATOR_FAMILIES

    shipped = shipped_generation_defaults()
    parser = argparse.ArgumentParser(prog="python -m xray_generator", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate chest X-rays: from a text prompt (ldm), a class (GANs, VAE family) or a source film (cvae)")
    gen.add_argument("--prompt", default=None, help="radiology-style description (ldm, required there)")
    gen.add_argument("--condition", default=None,
                     help="class to generate (conditional GANs / VAEs: Normal, Pneumonia, COVID-19) or the target label (cvae; default Pneumonia)")
    gen.add_argument("--source", default=None, help="the radiograph to translate (cvae only): PNG, JPEG, TIFF, BMP, WebP or DICOM")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--seed", type=int, default=0, help="seed of the first image; batch image i uses seed+i")
    gen.add_argument("--steps", type=int, default=None, help=f"sampler steps ({_model_default(shipped, 'num_inference_steps')})")
    gen.add_argument("--guidance", type=float, default=None, help=f"classifier-free guidance scale ({_model_default(shipped, 'guidance_scale')})")
    gen.add_argument("--guidance-fraction", type=float, default=None,
                     help=f"share of the steps, noisiest first, that are guided (0-1; {_model_default(shipped, 'guidance_fraction')})")
    gen.add_argument("--sampler", choices=["dpm++", "ddim", "unipc"], default=None, help=f"sampler ({_model_default(shipped, 'sampler')})")
    gen.add_argument("--n", type=int, default=1, help="number of images; with more than 1, -o is a folder or a stem")
    gen.add_argument("-o", "--output", required=True, help="output PNG, or a folder for a batch")
    gen.add_argument("--model", default="ldm", help=f"model family in weights/: {', '.join(GENERATOR_FAMILIES)} (default ldm)")
    gen.add_argument("--weights", default=None, help="a weights folder of that family to use instead of weights/<model>")
    gen.add_argument("--text-encoder", default=None, help="override the text encoder (alias or local BERT folder)")
    gen.add_argument("--backend", default=None, help="what runs the UNet and the decoder: torch, onnxruntime or openvino (default: CXR_BACKEND if set, else openvino on a CPU without native bf16 and torch on one with it; see the README's Speed section)")
    gen.set_defaults(func=command_generate)
    ed = sub.add_parser("edit", help="text-guided edit of a real radiograph (whole image, a mask or a lung zone)",
                        description="Writes OUT.png (the edited, SYNTHETIC image with provenance) and OUT_diff.png "
                                    "(|edited - source| x 4). Regions name the PATIENT's side: on a frontal film the "
                                    "patient's right is the image's left.")
    ed.add_argument("--image", required=True, help="source radiograph (PNG, JPEG, TIFF, BMP, WebP or DICOM)")
    ed.add_argument("--prompt", required=True, help="what the edited film should show")
    ed.add_argument("--strength", type=float, default=0.5, help="0 keeps the source, 1 ignores it (default 0.5)")
    where = ed.add_mutually_exclusive_group()
    where.add_argument("--mask", default=None, help="mask image of the source's size; white = edit")
    where.add_argument("--region", default=None,
                       help="lung zone to edit: right-upper, right-lower, left-upper, left-lower, right, left (patient's side)")
    ed.add_argument("--negative-prompt", default=None)
    ed.add_argument("--seed", type=int, default=0)
    ed.add_argument("--steps", type=int, default=None,
                    help=f"length of the full sampler schedule; strength x steps run ({_model_default(shipped, 'num_inference_steps')})")
    ed.add_argument("--guidance", type=float, default=None, help=f"classifier-free guidance scale ({_model_default(shipped, 'guidance_scale')})")
    ed.add_argument("--sampler", choices=["dpm++", "ddim", "unipc"], default=None, help=f"sampler ({_model_default(shipped, 'sampler')})")
    ed.add_argument("-o", "--output", required=True, help="output PNG; the difference map goes to <stem>_diff.png")
    ed.add_argument("--model", default="ldm", help="model family in weights/ (default ldm)")
    ed.add_argument("--weights", default=None, help="a pipeline folder to use instead of weights/<model>")
    ed.add_argument("--text-encoder", default=None, help="override the text encoder (alias or local BERT folder)")
    ed.add_argument("--backend", default=None, help="what runs the UNet and the decoder: torch, onnxruntime or openvino (default: CXR_BACKEND if set, else openvino on a CPU without native bf16 and torch on one with it; see the README's Speed section)")
    ed.set_defaults(func=command_edit)
    ev = sub.add_parser("evaluate", help="fidelity, diversity and memorisation metrics of a shipped generator -> outputs/metrics/<model>.json")
    from xray_generator.evaluation.run import add_arguments

    add_arguments(ev)
    ev.set_defaults(func=command_evaluate)
    voc = sub.add_parser("vocabulary", help="the findings a text-to-image model was trained on, with training-image counts")
    voc.add_argument("--model", default="ldm", help="model family in weights/ (default ldm)")
    voc.add_argument("--weights", default=None, help="a pipeline folder to use instead of weights/<model>")
    voc.set_defaults(func=command_vocabulary)
    rea = sub.add_parser("realism", help="realism test (C2ST) of generated images or the autoencoder's round trip against real films "
                                         "-> outputs/metrics/realism_<model>[_roundtrip].json")
    from xray_generator.evaluation.realism import add_arguments as add_realism_arguments

    add_realism_arguments(rea)
    rea.set_defaults(func=command_realism)
    fin = sub.add_parser("findings", help="condition fidelity per NIH finding (finding head) and for adults (age centroids, pneumonia AUROC) "
                                          "-> outputs/metrics/findings_<model>.json")
    from xray_generator.evaluation.findings import add_arguments as add_findings_arguments

    add_findings_arguments(fin)
    fin.add_argument("--train-head", action="store_true",
                     help="instead of measuring: fit the finding head on the train split and write it to --head (default weights/finding_head)")
    fin.set_defaults(func=command_findings)
    ds = sub.add_parser("generate-dataset", help="a synthetic data set: PNGs + manifest.csv, resumable, sharded under `accelerate launch`",
                        description="Job j (prompts in file order, each repeated n times) gets seed SEED + j and file xray_<j>.png; "
                                    "the output is byte-identical for any number of processes (see xray_generator/synthetic_dataset.py).")
    source = ds.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts", default=None, help="CSV with a 'prompt' column and optional 'negative_prompt' and 'n' (images of that prompt)")
    source.add_argument("--from-metadata", default=None, metavar="SPLIT",
                        help="one prompt per real film of this split of the dataset manifest (train, val, test), in its label mix")
    ds.add_argument("--max-prompts", type=int, default=None, help="with --from-metadata: a seeded random subset of that many films")
    ds.add_argument("--per-prompt", type=int, default=1, help="images per prompt where the CSV gives no n (default 1)")
    ds.add_argument("--seed", type=int, default=0, help="seed of job 0; job j uses seed+j")
    ds.add_argument("--out", required=True, help="output folder (PNGs, manifest.csv, run.json); rerun the same command to resume")
    ds.add_argument("--steps", type=int, default=None, help="sampler steps (default from the model)")
    ds.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default from the model)")
    ds.add_argument("--guidance-fraction", type=float, default=None, help="share of the steps, noisiest first, that are guided")
    ds.add_argument("--sampler", choices=["dpm++", "ddim", "unipc"], default=None)
    ds.add_argument("--batch-size", type=int, default=None,
                    help="images per pipeline call (default 4, the fastest measured on a 2-core CPU); part of the settings, recorded per image")
    ds.add_argument("--threads", type=int, default=None, help="torch threads per process (default: CXR_NUM_THREADS, else cores / processes on this machine)")
    ds.add_argument("--model", default="ldm", help="text-to-image model family in weights/ (default ldm)")
    ds.add_argument("--weights", default=None, help="a pipeline folder to use instead of weights/<model>")
    ds.add_argument("--text-encoder", default=None, help="override the text encoder (alias or local BERT folder)")
    ds.add_argument("--index-url", default=None,
                    help="SQLAlchemy URL of the dataset index to register the generated films in (sqlite:///index.db, postgresql+psycopg://...)")
    ds.add_argument("--quiet", action="store_true", help="no progress bar")
    ds.set_defaults(func=command_generate_dataset)
    ver = sub.add_parser("verify-weights", help="check every family's weights folder against its MANIFEST.json")
    ver.set_defaults(func=command_verify)
    exp = sub.add_parser("export-runtime", help="export the ldm UNet and decoder to ONNX for the onnxruntime/openvino backends, cached by the weights' sha256",
                         description="Done on first use otherwise (tens of seconds once per weights); run it after installing "
                                     "or updating weights so the app's first image is fast. Prints the cache folder.")
    exp.add_argument("--backend", nargs="+", default=None, help="backends to prepare (default: this CPU's default backend)")
    exp.add_argument("--model", default="ldm", help="model family in weights/ (default ldm)")
    exp.add_argument("--weights", default=None, help="a pipeline folder to use instead of weights/<model>")
    exp.add_argument("--text-encoder", default=None, help="override the text encoder (alias or local BERT folder)")
    exp.set_defaults(func=command_export_runtime)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "n", 1) < 1 or getattr(args, "n", 1) > 10_000:
        parser.error("--n must be between 1 and 10000")
    try:
        return args.func(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished images and the manifest are complete on disk", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
