"""Time the enhancement presets and the same chains built from scikit-image; print a markdown table.

    python benchmarks/bench_post_process.py                 # 256, 1024 and 2048 pixels square
    python benchmarks/bench_post_process.py --sizes 512     # other sizes
    python benchmarks/bench_post_process.py --quick         # a few seconds, to check the script runs

Each row is one image size and input depth. The preset columns are the median time of
``apply_preset(image, name)`` (validation included); "all four" is the median time of
``apply_presets(image, the four enhancing presets)``, which the comparison page uses (two presets at a time). The scikit-image column runs the same
steps with exposure.rescale_intensity, filters.median, exposure.equalize_adapthist,
exposure.equalize_hist and filters.unsharp_mask (vignette in numpy, as it has no scikit-image
counterpart), with parameters translated to mean the same thing.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import post_process as pp  # noqa: E402
from xray_generator.io import read_gray  # noqa: E402

ENHANCING_PRESETS = [name for name in pp.BUILTIN_PRESETS if name != "None"]
SAMPLE_DIRS = (REPO / "dataset" / "images", REPO.parent / "shared" / "data" / "cxr" / "images" / "pneumonia_kermany")


def load_radiograph() -> np.ndarray:
    """A real radiograph as float32 in [0, 1]; a synthetic chest-like image if none is available."""
    for directory in SAMPLE_DIRS:
        first = next(iter(sorted(directory.rglob("*.png"))), None) if directory.is_dir() else None
        if first is not None:
            return read_gray(first)
    yy, xx = np.mgrid[-1:1:256j, -1:1:256j]
    lungs = np.exp(-((np.abs(xx) - 0.45) ** 2 / 0.05 + yy**2 / 0.4))
    return np.clip(0.7 - 0.4 * lungs + 0.02 * np.sin(40 * yy), 0, 1).astype(np.float32)


def test_image(radiograph: np.ndarray, size: int, bit_depth: int) -> np.ndarray:
    """The radiograph resized to size x size, stored as 8-bit or as genuinely 16-bit data."""
    resized = np.clip(cv2.resize(radiograph, (size, size), interpolation=cv2.INTER_CUBIC), 0, 1)
    if bit_depth == 8:
        return (resized * 255 + 0.5).astype(np.uint8)
    return (resized * 65535 + 0.5).astype(np.uint16)


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: first calls pay for allocation and OpenCV's thread start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def skimage_chain(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The preset's steps with scikit-image equivalents, parameters translated to the same meaning."""
    from skimage import exposure, filters

    steps = pp.BUILTIN_PRESETS[name]

    def run(image: np.ndarray) -> np.ndarray:
        out = pp.validate_image(image).pixels
        for operation, params in steps:
            if operation == "window":
                lower = params["center"] - params["width"] / 2
                out = exposure.rescale_intensity(out, in_range=(lower, lower + params["width"]), out_range=(0.0, 1.0))
            elif operation == "median":
                out = filters.median(out, footprint=np.ones((params["kernel_size"],) * 2, bool))
            elif operation == "clahe":
                rows, columns = params["tile_grid"]
                # OpenCV's clip limit is a multiple of the mean count of 256 bins; scikit-image's is a
                # fraction of the tile's pixels, so divide by 256.
                out = exposure.equalize_adapthist(
                    out,
                    kernel_size=(max(out.shape[0] // rows, 1), max(out.shape[1] // columns, 1)),
                    clip_limit=params["clip_limit"] / 256,
                    nbins=256,
                )
            elif operation == "equalize_histogram":
                strength = params["strength"]
                out = (1 - strength) * out + strength * exposure.equalize_hist(out, nbins=256)
            elif operation == "unsharp_mask":
                out = filters.unsharp_mask(out, radius=params["radius"], amount=params["amount"])
            elif operation == "vignette":
                out = pp.vignette(out.astype(np.float32), params["amount"])
            else:
                raise ValueError(f"no scikit-image equivalent registered for {operation!r}")
        return out

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048], help="square image sides")
    parser.add_argument(
        "--sixteen-bit-size", type=int, default=1024, help="also time 16-bit input at this size (0: skip)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one repeat, to check the script")
    args = parser.parse_args(argv)
    sizes, sixteen = (args.sizes, args.sixteen_bit_size) if not args.quick else ([64], 64)

    radiograph = load_radiograph()
    rows = [(size, 8) for size in sizes] + ([(sixteen, 16)] if sixteen else [])
    load_before = os.getloadavg()
    print(
        f"# post_process benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"OpenCV {cv2.__version__} with {cv2.getNumThreads()} threads, numpy {np.__version__}; "
        f"load average {load_before[0]:.1f} at start",
        flush=True,
    )
    header = ["image", *ENHANCING_PRESETS, "all four", "scikit-image, all four", "speed-up"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for size, bit_depth in rows:
        image = test_image(radiograph, size, bit_depth)
        pixels = size * size
        repeats = 1 if args.quick else max(5, min(41, int(2e7 / pixels)))  # about 41 at 256, 19 at 1024, 5 at 2048
        slow_repeats = 1 if args.quick else (3 if pixels <= 1024 * 1024 else 1)
        per_preset = [median_ms(lambda n=name: pp.apply_preset(image, n), repeats) for name in ENHANCING_PRESETS]
        all_four = median_ms(lambda: pp.apply_presets(image, ENHANCING_PRESETS), repeats)
        chains = [skimage_chain(name) for name in ENHANCING_PRESETS]
        reference = median_ms(lambda: [chain(image) for chain in chains], slow_repeats)
        cells = [
            f"{size}² {bit_depth}-bit",
            *(f"{ms:.1f}" for ms in per_preset),
            f"**{all_four:.1f}**",
            f"{reference:.0f}",
            f"{reference / all_four:.0f}×",
        ]
        lines.append("| " + " | ".join(cells) + " |")
        print(lines[-1] if len(lines) > 3 else "\n".join(lines), flush=True)
    print(f"\n(milliseconds, median of repeated runs; load average {os.getloadavg()[0]:.1f} at the end)\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
