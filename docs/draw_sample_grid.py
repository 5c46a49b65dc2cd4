"""Draw generated films to look at: the same prompts and seeds through each pipeline folder, at 1:1 pixels.

    python docs/draw_sample_grid.py OUT.png weights/ldm outputs/candidates/ldm_f8c16_s1122 [--seeds 0 1] [--crop-zoom 2]

Each row is one prompt and seed at the pipeline's own defaults (raw output, nothing applied after
decoding); each column one pipeline folder, labelled with its name. With --crop-zoom Z, every tile is
followed by a 96-px crop of the right lung at Z x (nearest), where texture shows.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from xray_generator.io import atomic_write
from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

PROMPTS = (
    "Normal adult PA chest radiograph.",
    "PA chest radiograph: right lower lobe pneumonia.",
    "Chest radiograph of a child with bilateral viral pneumonia.",
    "Adult chest radiograph: COVID-19, bilateral peripheral ground-glass opacities.",
    "Moderate cardiomegaly with small bilateral pleural effusions.",
)
CROP, LABEL, SIZE = 96, 18, 256
CROP_TOP, CROP_LEFT = 70, 24  # the right lung of a PA film sits left of centre, above the middle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("pipelines", nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--crop-zoom", type=int, default=0)
    parser.add_argument("--backend", default="torch")
    args = parser.parse_args()

    rows = [(prompt, seed) for prompt in PROMPTS for seed in args.seeds]
    columns = []
    for folder in args.pipelines:
        pipe = XRayDiffusionPipeline.from_pretrained(folder)
        columns.append((Path(folder).name, [np.asarray(pipe(prompt, seed=seed, backend=args.backend).pil_images[0]) for prompt, seed in rows]))
        del pipe
    crop_px = CROP * args.crop_zoom
    tile = SIZE + (crop_px + 2 if args.crop_zoom else 0)
    canvas = Image.new("L", (len(columns) * (tile + 6), LABEL + len(rows) * (SIZE + LABEL + 4)), 255)
    draw = ImageDraw.Draw(canvas)
    for c, (name, _) in enumerate(columns):
        draw.text((c * (tile + 6), 2), name, fill=0)
    for r, (prompt, seed) in enumerate(rows):
        y = LABEL + r * (SIZE + LABEL + 4)
        draw.text((0, y), f"seed {seed}: {prompt}", fill=0)
        for c, (_, images) in enumerate(columns):
            x = c * (tile + 6)
            canvas.paste(Image.fromarray(images[r]), (x, y + LABEL))
            if args.crop_zoom:
                crop = images[r][CROP_TOP:CROP_TOP + CROP, CROP_LEFT:CROP_LEFT + CROP]
                zoomed = np.kron(crop, np.ones((args.crop_zoom, args.crop_zoom), np.uint8))[:SIZE, :SIZE]
                canvas.paste(Image.fromarray(zoomed), (x + SIZE + 2, y + LABEL))
    atomic_write(args.out, lambda handle: canvas.save(handle, format="PNG"))
    print(f"{args.out}: {len(rows)} prompt/seed rows x {len(columns)} pipelines ({', '.join(n for n, _ in columns)})")


if __name__ == "__main__":
    main()
