"""Draw round-trip crops to look at: real test films next to their round trip through each autoencoder folder.

    python docs/draw_roundtrip_crops.py OUT.png weights/ldm/vae weights/autoencoder_f8c16 [--films 4] [--seed 0]

Each row is one 256-px test film: the whole film at 1:1, then a 96-px crop of the right lung (the
viewer's left) at 3x (nearest) for the real film and for each round trip (posterior mean, 8-bit).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from xray_generator.data.manifest import load_manifest
from xray_generator.evaluation.realism import roundtrip_images
from xray_generator.evaluation.samples import load_real
from xray_generator.io import atomic_write
from xray_generator.models.autoencoder import load_autoencoder

CROP, ZOOM, LABEL = 96, 3, 18


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("autoencoders", nargs="+")
    parser.add_argument("--films", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    table = load_manifest().table
    test = table[(table["split"] == "test") & (table.get("native_px", 256) == 256)]
    rows = test.sample(args.films, random_state=args.seed).reset_index(drop=True)
    real = load_real(rows)
    columns = [("real", real)] + [(Path(folder).name, roundtrip_images(load_autoencoder(folder), real)) for folder in args.autoencoders]
    top, left = 70, 24  # the right lung of a PA film sits left of centre, above the middle
    tile = CROP * ZOOM
    canvas = Image.new("L", (256 + len(columns) * (tile + 4), LABEL + args.films * (tile + 4)), 255)
    draw = ImageDraw.Draw(canvas)
    for c, (name, _) in enumerate(columns):
        draw.text((256 + 4 + c * (tile + 4), 2), name, fill=0)
    draw.text((2, 2), "film (1:1), crop box", fill=0)
    for r in range(args.films):
        y = LABEL + r * (tile + 4)
        film = Image.fromarray(np.round(real[r] * 255).astype(np.uint8))
        canvas.paste(film, (0, y))
        draw.rectangle([left, y + top, left + CROP, y + top + CROP], outline=255)
        for c, (_, images) in enumerate(columns):
            crop = images[r][top:top + CROP, left:left + CROP]
            zoomed = np.kron(np.round(crop * 255).astype(np.uint8), np.ones((ZOOM, ZOOM), np.uint8))
            canvas.paste(Image.fromarray(zoomed), (256 + 4 + c * (tile + 4), y))
    atomic_write(args.out, lambda handle: canvas.save(handle, format="PNG"))
    print(f"{args.out}: {args.films} test films ({', '.join(rows['image_id'].astype(str))}); columns {', '.join(n for n, _ in columns)}")


if __name__ == "__main__":
    main()
