"""Cost model of one default 256x256 image: FLOPs, bytes and measured time of each part, against the CPU's peak.

For the text encoder, one UNet pass at batch 1 (an unguided step) and at batch 2 (a guided step:
unconditional and conditional together) and the VAE decode, this prints
  - FLOPs, counted by torch.utils.flop_counter.FlopCounterMode (a multiply-add counts 2);
  - bytes: the fp32 weights, plus twice every leaf module's output (each activation written once
    and read at least once), an estimate of the memory traffic a pass cannot avoid;
  - the median time of each backend, measured interleaved (round robin) in the same run, and the
    share of the CPU's peak it reaches (fp32, or bf16 with --precision bf16 / auto on a CPU with native bf16);
and the per-image total for the shipped settings with its lower bound at 100 % of peak.

The peak is cores x SIMD lanes x FMA units x 2 x clock, from /proc/cpuinfo (see `cpu_peak`); bf16 is
twice that with AVX-512 BF16, and AMX's tile rate where AMX is present.

    python benchmarks/bench_cost_model.py [--repeats 9] [--backends torch onnxruntime openvino] [--precision auto] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench_generate import PROMPT, peak_rss_mb  # noqa: E402
from xray_generator.io import atomic_write_text  # noqa: E402
from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline  # noqa: E402
from xray_generator.precision import cpu_flags  # noqa: E402

def fma_units(vendor: str, family: int, flags: set[str]) -> int:
    """Full-width FMAs per core per cycle (an assumption, stated in the output).

    Intel server cores since Skylake-SP (Gold/Platinum) issue two 512-bit FMAs per cycle, AMD Zen 2-4 two
    256-bit ones. Zen 4 (family 25 with AVX-512) runs a 512-bit FMA as two 256-bit halves, so at 16 lanes it
    issues one per cycle: counting two would double its peak.
    """
    if vendor == "AuthenticAMD" and "avx512f" in flags and family <= 25:
        return 1
    return 2


def cpu_peak() -> dict:
    """fp32 and bf16 peak FLOP/s (AVX-512 BF16 or AMX, where present) of the cores this process may use."""
    flags = cpu_flags()
    text = Path("/proc/cpuinfo").read_text(errors="replace") if Path("/proc/cpuinfo").is_file() else ""

    def field(name: str, default: str = "unknown") -> str:
        return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.split(":", 1)[0].strip() == name), default)

    model, vendor, family = field("model name"), field("vendor_id"), int(field("cpu family", "0") or 0)
    mhz = [float(line.split(":", 1)[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    clock_ghz = (max(mhz) if mhz else float("nan")) / 1000.0
    cores = len(os.sched_getaffinity(0))
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    units = fma_units(vendor, family, flags)
    fp32_peak = cores * lanes * units * 2 * clock_ghz * 1e9
    peak = {
        "model": model, "vendor": vendor, "family": family, "cores": cores, "clock_ghz": round(clock_ghz, 3), "fp32_lanes": lanes,
        "fma_units_assumed": units, "fp32_peak_gflops": round(fp32_peak / 1e9, 1),
        "clock_note": "the clock /proc/cpuinfo reports (a VM reports the nominal TSC rate; boost can be higher)",
        "amx": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
    }
    if peak["amx"]:
        # AMX TMUL: 1024 bf16 multiply-adds per cycle per core (Sapphire Rapids).
        peak["bf16_peak_gflops"] = round(cores * 1024 * 2 * clock_ghz, 1)
    elif peak["avx512_bf16"]:
        # VDPBF16PS: each fp32 lane accumulates two bf16 products per instruction, twice fp32's rate.
        peak["bf16_peak_gflops"] = round(2 * fp32_peak / 1e9, 1)
    return peak


def count_flops(run) -> float:
    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def activation_bytes(module: torch.nn.Module, run) -> int:
    """Bytes of every leaf module's output in one call (as fp32)."""
    total = [0]

    def hook(_module, _inputs, output):
        tensors = output if isinstance(output, (tuple, list)) else (output,)
        total[0] += sum(t.numel() * 4 for t in tensors if isinstance(t, torch.Tensor))

    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


def weight_bytes(*modules: torch.nn.Module) -> int:
    return sum(p.numel() * 4 for m in modules for p in m.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(Path(__file__).resolve().parent.parent / "weights" / "ldm"))
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime", "openvino"])
    parser.add_argument("--json", default=None)
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                        help="fp32 (default), bf16, or auto: what generation uses on this CPU (bf16 where it is native)")
    args = parser.parse_args()

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "auto": None}[args.precision]
    pipe = XRayDiffusionPipeline.from_pretrained(args.weights, torch_dtype=dtype)
    settings = pipe.resolve_settings()
    latent = (pipe.unet.config.in_channels, settings["height"] // pipe.vae_scale_factor, settings["width"] // pipe.vae_scale_factor)
    states, mask = pipe.encode_prompt([PROMPT])
    timestep = torch.tensor(500)
    generator = torch.Generator().manual_seed(0)
    inputs = {b: (torch.randn((b, *latent), generator=generator), timestep, states.expand(b, -1, -1), mask.expand(b, -1)) for b in (1, 2)}
    latents = torch.randn((1, *latent), generator=generator)
    runtimes = {name: pipe.runtime_models(name, settings["height"], settings["width"]) for name in args.backends}

    parts = {
        "text encoder (1 prompt)": {"flop_run": lambda: pipe.encode_prompt([PROMPT]), "modules": (pipe.text_encoder.model, pipe.text_projection),
                                    "runs": {name: (lambda: pipe.encode_prompt([PROMPT])) for name in args.backends}},
    }
    for b, label in ((1, "UNet pass, batch 1 (unguided step)"), (2, "UNet pass, batch 2 (guided step)")):
        parts[label] = {"flop_run": lambda b=b: pipe._torch_unet(*inputs[b]), "modules": (pipe.unet,),
                        "runs": {name: (lambda rt=rt, b=b: rt.unet(*inputs[b])) for name, rt in runtimes.items()}}
    parts["VAE decode"] = {"flop_run": lambda: pipe._torch_decode(latents), "modules": (pipe.vae.post_quant_conv, pipe.vae.decoder),
                           "runs": {name: (lambda rt=rt: rt.decode(latents)) for name, rt in runtimes.items()}}

    peak = cpu_peak()
    if pipe.precision == "bf16" and "bf16_peak_gflops" not in peak:
        print("note: bf16 is emulated on this CPU; shares below are of its fp32 peak")
    peak_flops = peak.get("bf16_peak_gflops" if pipe.precision == "bf16" else "fp32_peak_gflops", peak["fp32_peak_gflops"]) * 1e9
    times: dict[tuple[str, str], list[float]] = {}
    with torch.no_grad():
        for part in parts.values():
            part["flops"] = count_flops(part["flop_run"])
            part["bytes"] = weight_bytes(*part["modules"]) + 2 * sum(activation_bytes(m, part["flop_run"]) for m in part["modules"])
            for run in part["runs"].values():
                run()  # warm-up
        for _ in range(args.repeats):
            # Round robin: every backend sees the same load on a shared machine.
            for label, part in parts.items():
                for name, run in part["runs"].items():
                    start = time.perf_counter()
                    run()
                    times.setdefault((label, name), []).append(time.perf_counter() - start)

    steps = settings["num_inference_steps"]
    guided = math.ceil(round(settings["guidance_fraction"] * steps, 9)) if settings["guidance_scale"] > 1 else 0
    per_image = {"text encoder (1 prompt)": 1, "UNet pass, batch 1 (unguided step)": steps - guided,
                 "UNet pass, batch 2 (guided step)": guided, "VAE decode": 1}
    rows = []
    for label, part in parts.items():
        row = {"part": label, "per_image": per_image[label], "gflop": round(part["flops"] / 1e9, 3), "mbytes": round(part["bytes"] / 1e6, 1),
               "flop_per_byte": round(part["flops"] / part["bytes"], 1), "backends": {}}
        for name in part["runs"]:
            median = statistics.median(times[(label, name)])
            row["backends"][name] = {"median_ms": round(median * 1000, 2), "share_of_peak": round(part["flops"] / median / peak_flops, 3)}
        rows.append(row)
    totals = {}
    for name in args.backends:
        seconds = sum(r["per_image"] * r["backends"][name]["median_ms"] / 1000 for r in rows)
        totals[name] = round(seconds, 3)
    total_flops = sum(r["per_image"] * r["gflop"] for r in rows) * 1e9
    result = {"cpu": peak, "precision": pipe.precision, "peak_gflops_used": round(peak_flops / 1e9, 1),
              "threads": torch.get_num_threads(), "settings": settings, "guided_steps": guided, "parts": rows,
              "per_image_gflop": round(total_flops / 1e9, 2), "per_image_seconds_at_peak": round(total_flops / peak_flops, 3),
              "per_image_seconds_sum_of_parts": totals, "peak_rss_mb": round(peak_rss_mb(), 1), "repeats": args.repeats}

    print(f"CPU: {peak['model']} ({peak['vendor']} family {peak['family']}), {peak['cores']} cores usable, {peak['clock_ghz']} GHz reported, "
          f"{peak['fp32_lanes']} fp32 lanes x {peak['fma_units_assumed']} FMA units (assumed) -> fp32 peak {peak['fp32_peak_gflops']} GFLOP/s"
          + (f", bf16 peak {peak['bf16_peak_gflops']} GFLOP/s" if "bf16_peak_gflops" in peak else "")
          + f"; AMX: {peak['amx']}; threads {result['threads']}; precision {pipe.precision}, shares of {result['peak_gflops_used']} GFLOP/s")
    header = "| part | per image | GFLOP | MB moved (est.) | FLOP/byte | " + " | ".join(f"{n} ms (share of peak)" for n in args.backends) + " |"
    print(header)
    print("|" + "---|" * (5 + len(args.backends)))
    for r in rows:
        cells = " | ".join(f"{r['backends'][n]['median_ms']:.1f} ({r['backends'][n]['share_of_peak']:.0%})" for n in args.backends)
        print(f"| {r['part']} | {r['per_image']} | {r['gflop']:.2f} | {r['mbytes']:.0f} | {r['flop_per_byte']:.0f} | {cells} |")
    print(f"per image ({steps} steps, {guided} guided): {result['per_image_gflop']} GFLOP; at 100 % of peak {result['per_image_seconds_at_peak']} s; "
          "sum of parts: " + ", ".join(f"{n} {s:.3f} s" for n, s in totals.items()))
    print(f"peak RSS {result['peak_rss_mb']:.0f} MB (all backends loaded)")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
