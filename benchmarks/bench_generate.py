"""Benchmark one 256x256 image at the default settings against a seed-style reference, same weights, same run.

Prints median latency, steps/s, model load time and peak RSS for:
  - default: the shipped settings (DPM-Solver++, pipeline.json steps/guidance; bf16 autocast where the
    CPU has native bf16, else fp32: see xray_generator/precision.py)
  - reference: the seed design's setting (DDIM, 50 steps, guidance 10, fp32)
  - edit: one text-guided edit of a real radiograph at the default strength (0.5) and settings
and the ratio of their medians.

With --backends, the default settings are also timed on each backend (torch, onnxruntime,
openvino), interleaved call by call so every backend sees the same load on a shared machine, and
--parity N compares N prompt/seed pairs on each backend with PyTorch (8-bit pixels: max and mean
absolute difference); where the default precision is bf16, also each backend (PyTorch's bf16 included)
with PyTorch in fp32.

    python benchmarks/bench_generate.py [--weights weights/ldm] [--repeats 7] [--backends torch onnxruntime] [--parity 50]
"""
from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from xray_generator.io import atomic_write_text, read_gray  # noqa: E402
from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline  # noqa: E402
from xray_generator.precision import cpu_has_native_bf16  # noqa: E402

PROMPT = "Adult PA chest radiograph: right lower lobe pneumonia."
# A normal test-split film from the shipped sample, so the edit runs on a real radiograph.
EDIT_SOURCE = Path(__file__).resolve().parent.parent / "dataset" / "images" / "pneumonia_kermany_224" / "kermany224_IM-0644-0001.jpeg"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_calls(pipe, repeats: int, **kwargs) -> list[float]:
    pipe(PROMPT, seed=0, **kwargs)  # warm-up: first call pays one-off allocator and kernel set-up costs
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        pipe(PROMPT, seed=i, **kwargs)
        times.append(time.perf_counter() - start)
    return times


def time_backends(pipe, backends: list[str], repeats: int) -> dict[str, list[float]]:
    """Default-settings calls on each backend, round robin (call i of every backend uses seed i)."""
    for backend in backends:
        pipe(PROMPT, seed=0, backend=backend)  # warm-up, and the one-off export/compile of a runtime
    times: dict[str, list[float]] = {backend: [] for backend in backends}
    for i in range(repeats):
        for backend in backends:
            start = time.perf_counter()
            pipe(PROMPT, seed=i, backend=backend)
            times[backend].append(time.perf_counter() - start)
    return times


def pixel_parity(pipe, backends: list[str], n: int, reference_pipe=None) -> dict[str, dict]:
    """Max and mean |difference| of 8-bit pixels between each backend and torch over n prompt/seed pairs.

    With `reference_pipe` (an fp32 copy, for a bf16 run) every backend, torch in bf16 included, is
    compared with PyTorch in fp32 instead: the path the bf16 images are an approximation of.
    """
    from xray_generator.evaluation.samples import DIVERSITY_PROMPTS

    prompts = itertools.cycle(prompt for _, prompt in DIVERSITY_PROMPTS)
    pairs = [(next(prompts), seed) for seed in range(n)]
    stats: dict[str, dict] = {backend: {"max": 0, "means": []} for backend in backends if backend != "torch" or reference_pipe is not None}
    for prompt, seed in pairs:
        reference = np.asarray((reference_pipe or pipe)(prompt, seed=seed, backend="torch").pil_images[0], dtype=np.int16)
        for backend in stats:
            other = np.asarray(pipe(prompt, seed=seed, backend=backend).pil_images[0], dtype=np.int16)
            difference = np.abs(other - reference)
            stats[backend]["max"] = max(stats[backend]["max"], int(difference.max()))
            stats[backend]["means"].append(float(difference.mean()))
    return {backend: {"n": n, "max_abs_8bit": s["max"], "mean_abs_8bit": round(float(np.mean(s["means"])), 4),
                      "largest_image_mean_abs_8bit": round(max(s["means"]), 4)} for backend, s in stats.items()}


def time_edits(pipe, source, repeats: int) -> list[float]:
    pipe.edit(source, PROMPT, seed=0)  # warm-up, as for generation
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        pipe.edit(source, PROMPT, seed=i)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(Path(__file__).resolve().parent.parent / "weights" / "ldm"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--reference-repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--backends", nargs="*", default=[], help="also time the default settings on these backends, interleaved")
    parser.add_argument("--parity", type=int, default=0, metavar="N", help="compare N prompt/seed pairs on each --backends with torch")
    parser.add_argument("--also", nargs="*", default=[], metavar="STEPS:FRACTION",
                        help="also time these sampler settings (steps, guided share of them), same run, same repeats")
    args = parser.parse_args()
    try:
        alternatives = [(int(steps), float(fraction)) for steps, fraction in (item.split(":") for item in args.also)]
    except ValueError:
        parser.error("--also takes STEPS:FRACTION pairs, e.g. 7:0.28")

    start = time.perf_counter()
    pipe = XRayDiffusionPipeline.from_pretrained(args.weights)
    load_seconds = time.perf_counter() - start
    defaults = pipe.resolve_settings()
    start = time.perf_counter()
    pipe(PROMPT, seed=0)  # the first image after loading: for a runtime backend, reading (or making) its cached export
    first_call_seconds = time.perf_counter() - start
    default_times = time_calls(pipe, args.repeats)
    rss_default = peak_rss_mb()
    backend_times = time_backends(pipe, args.backends, args.repeats) if args.backends else {}
    parity = pixel_parity(pipe, args.backends, args.parity) if args.parity and args.backends else {}
    edit_times = time_edits(pipe, read_gray(EDIT_SOURCE), args.repeats)
    alternative_times = {
        (steps, fraction): time_calls(pipe, args.repeats, num_inference_steps=steps, guidance_fraction=fraction)
        for steps, fraction in alternatives
    }

    default_precision = pipe.precision
    # The reference loads its own fp32 copy: flipping `precision` on a pipeline whose modules were
    # already cast to bf16 would run bf16 weights without autocast, not fp32.
    reference_pipe = XRayDiffusionPipeline.from_pretrained(args.weights, torch_dtype=torch.float32)
    reference = dict(sampler="ddim", num_inference_steps=50, guidance_scale=10.0, backend="torch")
    reference_times = time_calls(reference_pipe, args.reference_repeats, **reference)
    parity_fp32 = (pixel_parity(pipe, args.backends, args.parity, reference_pipe)
                   if args.parity and args.backends and default_precision == "bf16" else {})
    del reference_pipe

    d_med, r_med = statistics.median(default_times), statistics.median(reference_times)
    steps = defaults["num_inference_steps"]
    results = {
        "threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "weights_sha256": pipe.weights_hash,
        "load_seconds": round(load_seconds, 3),
        "first_image_seconds": round(first_call_seconds, 3),
        "default": {"settings": {**defaults, "precision": default_precision}, "n": len(default_times), "median_s": round(d_med, 4), "steps_per_s": round(steps / d_med, 2), "all_s": [round(t, 4) for t in default_times]},
        "reference": {"settings": {**reference, "precision": "fp32"}, "n": len(reference_times), "median_s": round(r_med, 4), "steps_per_s": round(50 / r_med, 2), "all_s": [round(t, 4) for t in reference_times]},
        "speedup": round(r_med / d_med, 2),
        "edit": {"settings": {**defaults, "strength": 0.5, "precision": default_precision}, "n": len(edit_times), "median_s": round(statistics.median(edit_times), 4), "all_s": [round(t, 4) for t in edit_times]},
        "alternatives": {
            f"{steps}:{fraction}": {"settings": pipe.resolve_settings(num_inference_steps=steps, guidance_fraction=fraction),
                                    "n": len(times), "median_s": round(statistics.median(times), 4), "all_s": [round(t, 4) for t in times]}
            for (steps, fraction), times in alternative_times.items()
        },
        "backends_interleaved": {backend: {"n": len(times), "median_s": round(statistics.median(times), 4), "all_s": [round(t, 4) for t in times]}
                                 for backend, times in backend_times.items()},
        "pixel_parity_vs_torch": parity,
        "pixel_parity_vs_torch_fp32": parity_fp32,
        "peak_rss_mb_after_default": round(rss_default, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    print(f"threads: {results['threads']}   native bf16: {results['cpu_native_bf16']}   weights: {pipe.weights_hash}")
    print(f"model load:              {load_seconds:.2f} s; first image after it {first_call_seconds:.2f} s (backend {defaults['backend']})")
    print(f"default   ({defaults['sampler']}, {steps} steps, cfg {defaults['guidance_scale']} on {defaults.get('guidance_fraction', 1.0):.0%} of steps, {default_precision}, {defaults['backend']}): median {d_med:.3f} s over {len(default_times)}, {steps / d_med:.1f} steps/s")
    print(f"reference (ddim, 50 steps, cfg 10, fp32):  median {r_med:.3f} s over {len(reference_times)}, {50 / r_med:.1f} steps/s")
    print(f"speed-up: {r_med / d_med:.1f}x")
    for backend, times in backend_times.items():
        print(f"backend   {backend:<12} (default settings, interleaved): median {statistics.median(times):.3f} s over {len(times)}, "
              f"{r_med / statistics.median(times):.1f}x faster than the reference")
    for backend, s in parity.items():
        print(f"pixels    {backend} vs torch over {s['n']} prompt/seed pairs: max |diff| {s['max_abs_8bit']} grey levels, mean {s['mean_abs_8bit']}")
    for backend, s in parity_fp32.items():
        print(f"pixels    {backend} ({default_precision}) vs torch fp32 over {s['n']} prompt/seed pairs: max |diff| {s['max_abs_8bit']} grey levels, mean {s['mean_abs_8bit']}")
    print(f"edit      (strength 0.5, default settings): median {statistics.median(edit_times):.3f} s over {len(edit_times)}, {statistics.median(edit_times) / d_med:.2f}x the generation time")
    for (steps_alt, fraction), times in alternative_times.items():
        print(f"also      ({steps_alt} steps, guided share {fraction}): median {statistics.median(times):.3f} s over {len(times)}, {statistics.median(times) / d_med:.2f}x the default")
    print(f"peak RSS: {rss_default:.0f} MB after the default runs, {peak_rss_mb():.0f} MB overall")
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
