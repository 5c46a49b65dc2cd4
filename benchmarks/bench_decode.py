"""Decode (and encode) cost of autoencoder folders, measured interleaved in one run: the realism issue
allows a new autoencoder to decode at most 50 % slower than the shipped one.

For each folder: GFLOP of one 256x256 decode and encode (torch.utils.flop_counter), and the median time
of single-image calls, the folders taking turns call by call so a shared machine loads them alike.

    python benchmarks/bench_decode.py weights/ldm/vae weights/autoencoder_f8c16 [--repeats 15] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_cost_model import count_flops, cpu_peak  # noqa: E402
from xray_generator.io import atomic_write_text  # noqa: E402
from xray_generator.models.autoencoder import load_autoencoder  # noqa: E402
from xray_generator.precision import cpu_bf16_autocast, cpu_precision  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="AutoencoderKL folders (config.json + safetensors); the first is the reference")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    models = {folder: load_autoencoder(folder).to(memory_format=torch.channels_last) for folder in args.folders}
    image = torch.rand(1, 1, args.size, args.size) * 2 - 1
    latents = {folder: model.encode(image).latent_dist.mode() for folder, model in models.items()}
    calls = {}
    for folder, model in models.items():
        calls[(folder, "decode")] = lambda m=model, z=latents[folder]: m.decode(z).sample
        calls[(folder, "encode")] = lambda m=model: m.encode(image).latent_dist.mode()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    with torch.no_grad(), cpu_bf16_autocast():
        flops = {key: count_flops(call) for key, call in calls.items()}
        for call in calls.values():
            call()  # warm-up
        for _ in range(args.repeats):
            for key, call in calls.items():
                start = time.perf_counter()
                call()
                times[key].append(time.perf_counter() - start)

    reference = args.folders[0]
    rows = []
    for folder, model in models.items():
        row = {"folder": folder, "latent_channels": model.config.latent_channels,
               "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
        for part in ("decode", "encode"):
            median = statistics.median(times[(folder, part)])
            row[part] = {"gflop": round(flops[(folder, part)] / 1e9, 2), "median_ms": round(median * 1000, 1),
                         "vs_reference": round(median / statistics.median(times[(reference, part)]), 3)}
        rows.append(row)
    result = {"cpu": cpu_peak(), "precision": cpu_precision(), "threads": torch.get_num_threads(), "repeats": args.repeats,
              "size": args.size, "autoencoders": rows}
    print(f"CPU {result['cpu']['model']}, {result['cpu']['cores']} cores, {result['precision']}, {result['threads']} threads, "
          f"medians of {args.repeats} interleaved single-image calls at {args.size} px")
    print("| autoencoder | latent channels | parameters (M) | decode GFLOP | decode ms (vs first) | encode GFLOP | encode ms (vs first) |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r['folder']} | {r['latent_channels']} | {r['parameters_m']} | {r['decode']['gflop']} | {r['decode']['median_ms']} "
              f"({r['decode']['vs_reference']:.2f}x) | {r['encode']['gflop']} | {r['encode']['median_ms']} ({r['encode']['vs_reference']:.2f}x) |")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
