"""How alike are samples of one prompt? Intra-prompt MS-SSIM of a pipeline folder on more seeds than `evaluate` draws.

    python docs/diversity_probe.py --weights weights/ldm
    python docs/diversity_probe.py --weights outputs/candidates/ldm_zsf_s1129 --defaults-from weights/ldm
    python docs/diversity_probe.py --weights weights/ldm --scales 1,3,1,1,1,1,1

`evaluate` scores diversity on 4 samples of each of its 8 diversity prompts (48 pairs), too few to
rank two close candidates. This draws `--seeds-per-prompt` samples (default 8, so 224 pairs) of the
same 8 prompts on seeds `evaluate` never uses (50000 + 100 x prompt + sample), with the folder's own
sampling defaults (or another folder's, `--defaults-from`: an export carries its training config's
defaults, not the shipped ones), or one guidance scale per step (`--scales`, as in
docs/guidance_schedule_experiment.py). Scored by the evaluation's own `intra_prompt_ms_ssim`; lower is
more diverse (real held-out pairs sharing a label: 0.397). About 1 min on 2 cores. Prints one JSON line
and writes it to `--json` when given.
"""
from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np

from xray_generator.evaluation.diversity import intra_prompt_ms_ssim
from xray_generator.evaluation.samples import DIVERSITY_PROMPTS, IMAGE_SIZE, ms_ssim_window
from xray_generator.io import atomic_write_text
from xray_generator.pipelines.latent_diffusion import PIPELINE_FILE, XRayDiffusionPipeline

SEED_BASE = 50000  # far from evaluate's seeds, so the probe is a second draw


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="a pipeline folder (weights/ldm or a train_ldm export)")
    parser.add_argument("--defaults-from", default=None, help="take the sampling defaults from this pipeline folder's pipeline.json")
    parser.add_argument("--scales", default=None, help="comma-separated guidance scale per step, e.g. 3,3,1,1,1,1,1")
    parser.add_argument("--seeds-per-prompt", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.seeds_per_prompt < 2:
        parser.error("--seeds-per-prompt must be at least 2 (a pair)")
    pipe = XRayDiffusionPipeline.from_pretrained(args.weights)
    if args.defaults_from:
        pipe.generation_defaults.update(json.loads((Path(args.defaults_from) / PIPELINE_FILE).read_text())["generation_defaults"])
    call = {}
    if args.scales:
        scales = [float(token) for token in args.scales.split(",")]
        pipe.denoise = functools.partial(XRayDiffusionPipeline.denoise, pipe, scale_per_step=scales)
        # guidance_scale > 1 so the text states are the (uncond, cond) pair the per-step scales choose from.
        call = {"num_inference_steps": len(scales), "guidance_scale": max(max(scales), 1.5), "guidance_fraction": 1.0}
    groups = [[np.asarray(pipe(prompt, seed=SEED_BASE + 100 * slot + sample, backend="torch", **call).pil_images[0], dtype=np.float32) / 255.0
               for sample in range(args.seeds_per_prompt)] for slot, (_, prompt) in enumerate(DIVERSITY_PROMPTS)]
    window = ms_ssim_window(IMAGE_SIZE)
    overall = intra_prompt_ms_ssim(groups, win_size=window, n_boot=1000, seed=0)
    result = {
        "weights": args.weights, "defaults": pipe.generation_defaults if not args.scales else None, "scales": args.scales,
        "intra_prompt_ms_ssim": overall["value"], "ci": [overall["ci_low"], overall["ci_high"]], "pairs": overall["n_pairs"],
        "per_prompt": {prompt: round(intra_prompt_ms_ssim([group], win_size=window, n_boot=10, seed=0)["value"], 4)
                       for (_, prompt), group in zip(DIVERSITY_PROMPTS, groups)},
    }
    line = json.dumps(result)
    print(line)
    if args.json:
        atomic_write_text(Path(args.json), line + "\n")
    return result


if __name__ == "__main__":
    main()
