"""Command line for CXR Studio. Research use only; every generated image is marked synthetic.

    python -m xray_generator generate --prompt "right lower lobe pneumonia" --seed 0 -o out.png
    python -m xray_generator generate --prompt "normal pediatric chest" --n 8 -o batch/
    python -m xray_generator edit --image IN.png --prompt "right lower lobe pneumonia" --strength 0.5 --region right-lower -o OUT.png
    python -m xray_generator verify-weights
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


def _batch_paths(output: Path, n: int) -> tuple[list[Path], Path]:
    folder = output if output.suffix.lower() != ".png" else output.parent
    stem = "xray" if output.suffix.lower() != ".png" else output.stem
    return [folder / f"{stem}_{i:04d}.png" for i in range(n)], folder / f"{stem}_manifest.csv"


def command_generate(args) -> int:
    from xray_generator.io import read_png_metadata, save_png_with_metadata
    from xray_generator.io import atomic_write_text

    pipe = _load_pipeline(args)
    output = Path(args.output)
    settings = dict(
        negative_prompt=args.negative_prompt, num_inference_steps=args.steps, guidance_scale=args.guidance, sampler=args.sampler
    )
    if args.n == 1 and output.suffix.lower() == ".png":
        targets, manifest_path = [output], None
    else:
        targets, manifest_path = _batch_paths(output, args.n)
        # Temporary files of a run killed mid-write (atomic_write names them ".<file>.<pid>.<id>.tmp").
        for stale in targets[0].parent.glob(f".{targets[0].stem.rsplit('_', 1)[0]}_*.png.*.tmp"):
            stale.unlink(missing_ok=True)
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
    defaults = pipe.generation_defaults
    wanted = {
        "prompt": args.prompt, "seed": seed, "weights_sha256": pipe.weights_hash,
        "steps": args.steps or defaults["num_inference_steps"],
        "guidance": float(args.guidance if args.guidance is not None else defaults["guidance_scale"]),
        "sampler": args.sampler or defaults["sampler"], "negative_prompt": args.negative_prompt or "",
    }
    return all(existing.get(key) == value for key, value in wanted.items())


def _write_manifest(path: Path, rows: list[dict], atomic_write_text) -> None:
    fields = ["file", "model", "weights_sha256", "prompt", "negative_prompt", "sampler", "steps", "guidance", "seed", "height", "width", "precision", "synthetic"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


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


def command_evaluate(args) -> int:
    from xray_generator.evaluation.run import run_from_args
    from xray_generator.weights import WeightsError

    try:
        run_from_args(args)
    except (WeightsError, FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    return 0


def command_verify(args) -> int:
    from xray_generator.pipelines.registry import GENERATORS, generator_folder
    from xray_generator.weights import WeightsError, verify_manifest

    failures = 0
    for name in GENERATORS:
        folder = generator_folder(name)
        try:
            print(f"{name}: ok  {verify_manifest(folder)}  ({folder})")
        except WeightsError as exc:
            failures += 1
            print(f"{name}: FAILED  {exc}")
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m xray_generator", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate chest X-rays from a text prompt")
    gen.add_argument("--prompt", required=True, help="radiology-style description")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--seed", type=int, default=0, help="seed of the first image; batch image i uses seed+i")
    gen.add_argument("--steps", type=int, default=None, help="sampler steps (default from the model: 8 for the shipped weights)")
    gen.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default from the model)")
    gen.add_argument("--sampler", choices=["dpm++", "ddim", "unipc"], default=None)
    gen.add_argument("--n", type=int, default=1, help="number of images; with more than 1, -o is a folder or a stem")
    gen.add_argument("-o", "--output", required=True, help="output PNG, or a folder for a batch")
    gen.add_argument("--model", default="ldm", help="model family in weights/ (default ldm)")
    gen.add_argument("--weights", default=None, help="a pipeline folder to use instead of weights/<model>")
    gen.add_argument("--text-encoder", default=None, help="override the text encoder (alias or local BERT folder)")
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
    ed.add_argument("--steps", type=int, default=None, help="length of the full sampler schedule; strength x steps run")
    ed.add_argument("--guidance", type=float, default=None)
    ed.add_argument("--sampler", choices=["dpm++", "ddim", "unipc"], default=None)
    ed.add_argument("-o", "--output", required=True, help="output PNG; the difference map goes to <stem>_diff.png")
    ed.add_argument("--model", default="ldm", help="model family in weights/ (default ldm)")
    ed.add_argument("--weights", default=None, help="a pipeline folder to use instead of weights/<model>")
    ed.add_argument("--text-encoder", default=None, help="override the text encoder (alias or local BERT folder)")
    ed.set_defaults(func=command_edit)
    ev = sub.add_parser("evaluate", help="fidelity, diversity and memorisation metrics of a shipped generator -> outputs/metrics/<model>.json")
    from xray_generator.evaluation.run import add_arguments

    add_arguments(ev)
    ev.set_defaults(func=command_evaluate)
    ver = sub.add_parser("verify-weights", help="check every shipped weights folder against its MANIFEST.json")
    ver.set_defaults(func=command_verify)
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
