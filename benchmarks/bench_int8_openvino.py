"""Would 8-bit OpenVINO models make generation fast enough (issue 21)? Speed and error, measured; nothing shipped.

Post-training quantization (NNCF, the MIXED preset: symmetric weights, asymmetric activations) of the
OpenVINO export of our UNet and decoder, calibrated on the inputs those two parts receive while the
shipped pipeline generates `--calibration` images (prompts of the diversity set, seeds from 10,000,
disjoint from the comparison's). Then, on this CPU:

  - per part (UNet batch 1, UNet batch 2 = a guided step, decoder): median time fp32 vs int8,
    interleaved call by call, and the int8 output's error against fp32 on the calibration inputs;
  - whole default images (`--parity` prompt/seed pairs): 8-bit pixel differences against the fp32
    OpenVINO image and the time per image, with the decoder alone in int8 and with both parts.

NNCF is not a dependency of the project (`pip install nncf==3.4.0` to run this). The quantized models
are written under the export's cache folder (`int8/`), never into weights/.

    python benchmarks/bench_int8_openvino.py [--calibration 24] [--repeats 9] [--parity 8] [--json out.json]
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_cost_model import cpu_peak  # noqa: E402
from xray_generator.io import atomic_write_text  # noqa: E402
from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline  # noqa: E402
from xray_generator.pipelines.runtime import RuntimeModels  # noqa: E402


def diversity_prompts():
    from xray_generator.evaluation.samples import DIVERSITY_PROMPTS

    return itertools.cycle(prompt for _, prompt in DIVERSITY_PROMPTS)


def calibration_inputs(pipe, n: int) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
    """The UNet's and the decoder's inputs (one image per item) while `pipe` makes n default images with PyTorch."""
    unet_items, decoder_items = [], []

    def on_unet(_module, args, kwargs):
        sample, timestep = args[0], args[1]
        states, mask = kwargs["encoder_hidden_states"], kwargs["encoder_attention_mask"]
        for i in range(sample.shape[0]):
            unet_items.append([sample[i:i + 1].float().numpy().copy(), np.asarray(float(timestep), np.float32),
                               states[i:i + 1].float().numpy().copy(), mask[i:i + 1].bool().numpy().copy()])

    def on_decoder(_module, args):
        decoder_items.append([args[0].float().numpy().copy()])

    # The exported decoder's input is what the post-quant convolution receives (vae.decode's argument).
    hooks = [pipe.unet.register_forward_pre_hook(on_unet, with_kwargs=True), pipe.vae.post_quant_conv.register_forward_pre_hook(on_decoder)]
    try:
        prompts = diversity_prompts()
        for i in range(n):
            pipe(next(prompts), seed=10_000 + i, backend="torch")
    finally:
        for hook in hooks:
            hook.remove()
    return unet_items, decoder_items


def quantize(folder: Path, unet_items, decoder_items) -> dict[str, Path]:
    import nncf
    import openvino

    core = openvino.Core()
    out = folder / "int8"
    out.mkdir(exist_ok=True)
    paths = {"unet": out / "unet.xml", "decoder": out / "decoder.xml"}
    for name, items, model_type in (("unet", unet_items, nncf.ModelType.TRANSFORMER), ("decoder", decoder_items, None)):
        quantized = nncf.quantize(core.read_model(str(folder / f"{name}.onnx")), nncf.Dataset(items), preset=nncf.QuantizationPreset.MIXED,
                                  model_type=model_type, subset_size=len(items))
        openvino.save_model(quantized, str(paths[name]))
    return paths


def compiled(path: Path, threads: int):
    import openvino

    request = openvino.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                                                               "INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    return lambda *arrays: request.infer(list(arrays))[0].copy()


def runtime_models(unet, decoder) -> RuntimeModels:
    def unet_call(sample, timestep, states, mask):
        return torch.from_numpy(unet(sample.float().numpy(), np.asarray(float(timestep), np.float32), states.float().numpy(), mask.bool().numpy()))

    return RuntimeModels(backend="openvino", precision="fp32", unet=unet_call, decode=lambda latents, generator=None: torch.from_numpy(decoder(latents.float().numpy())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(Path(__file__).resolve().parent.parent / "weights" / "ldm"))
    parser.add_argument("--calibration", type=int, default=24, help="default images whose UNet and decoder inputs calibrate the quantization")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--parity", type=int, default=8, help="prompt/seed pairs of whole images compared with the fp32 runtime")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    try:
        import nncf  # noqa: F401
    except ImportError:
        sys.exit("this benchmark needs NNCF, which the project does not depend on: pip install nncf==3.4.0")

    threads = torch.get_num_threads()
    pipe = XRayDiffusionPipeline.from_pretrained(args.weights, torch_dtype=torch.float32)
    fp32_runtime = pipe.runtime_models("openvino")  # exports (or finds) the fp32 ONNX models
    folder = fp32_runtime.folder
    unet_items, decoder_items = calibration_inputs(pipe, args.calibration)
    start = time.perf_counter()
    paths = quantize(folder, unet_items, decoder_items)
    print(f"quantized in {time.perf_counter() - start:.0f} s on {len(unet_items)} UNet and {len(decoder_items)} decoder inputs -> {paths['unet'].parent}")

    parts = {precision: {"unet": compiled(folder / "unet.onnx" if precision == "fp32" else paths["unet"], threads),
                         "decoder": compiled(folder / "decoder.onnx" if precision == "fp32" else paths["decoder"], threads)}
             for precision in ("fp32", "int8")}
    guided = [np.concatenate([unet_items[0][i], unet_items[1][i]]) if i != 1 else unet_items[0][1] for i in range(4)]
    calls = {"unet batch 1": ("unet", unet_items[2]), "unet batch 2 (guided step)": ("unet", guided), "decoder": ("decoder", decoder_items[0])}
    times = {(precision, call): [] for precision in parts for call in calls}
    for _ in range(args.repeats + 1):  # the first round warms up and is dropped
        for call, (part, inputs) in calls.items():
            for precision in parts:
                begin = time.perf_counter()
                parts[precision][part](*inputs)
                times[(precision, call)].append(time.perf_counter() - begin)
    results: dict = {"cpu": cpu_peak(), "threads": threads, "calibration_images": args.calibration, "parts": {}, "images": {}}
    for call, (part, _) in calls.items():
        fp32_ms, int8_ms = (1000 * statistics.median(times[(precision, call)][1:]) for precision in ("fp32", "int8"))
        results["parts"][call] = {"fp32_ms": round(fp32_ms, 1), "int8_ms": round(int8_ms, 1), "speed_up": round(fp32_ms / int8_ms, 2)}
        print(f"{call:<28} fp32 {fp32_ms:7.1f} ms   int8 {int8_ms:7.1f} ms   {fp32_ms / int8_ms:.2f}x")
    errors = [np.abs(parts["fp32"]["unet"](*item) - parts["int8"]["unet"](*item)).mean() / np.abs(parts["fp32"]["unet"](*item)).mean()
              for item in unet_items[::4]]
    decoder_errors = [127.5 * np.abs(parts["fp32"]["decoder"](*item) - parts["int8"]["decoder"](*item)) for item in decoder_items]
    results["unet_relative_error"] = {"n": len(errors), "mean": round(float(np.mean(errors)), 4), "max": round(float(np.max(errors)), 4)}
    results["decoder_error_grey_levels"] = {"n": len(decoder_errors), "mean": round(float(np.mean([e.mean() for e in decoder_errors])), 2),
                                           "max": round(float(max(e.max() for e in decoder_errors)), 1)}
    print(f"UNet int8 output, mean |error| / mean |output| over {len(errors)} calibration inputs: mean {np.mean(errors):.3f}, max {np.max(errors):.3f}")
    print(f"decoder int8 output in grey levels (0-255) over {len(decoder_errors)} latents: mean {results['decoder_error_grey_levels']['mean']}, "
          f"max {results['decoder_error_grey_levels']['max']}")

    # Whole images. The pipeline keeps one runtime per (backend, latent size); swapping that entry is how
    # this script runs its variants through the unchanged sampling loop.
    key = ("openvino", (256 // pipe.vae_scale_factor, 256 // pipe.vae_scale_factor))
    variants = {"fp32": runtime_models(parts["fp32"]["unet"], parts["fp32"]["decoder"]),
                "int8 decoder": runtime_models(parts["fp32"]["unet"], parts["int8"]["decoder"]),
                "int8 UNet + decoder": runtime_models(parts["int8"]["unet"], parts["int8"]["decoder"])}
    prompts = diversity_prompts()
    pairs = [(next(prompts), seed) for seed in range(args.parity)]
    pixels = {name: [] for name in variants}
    image_times = {name: [] for name in variants}
    for prompt, seed in pairs:
        for name, models in variants.items():
            pipe._runtimes[key] = models
            begin = time.perf_counter()
            pixels[name].append(np.asarray(pipe(prompt, seed=seed, backend="openvino").pil_images[0], dtype=np.int16))
            image_times[name].append(time.perf_counter() - begin)
    for name in variants:
        differences = [np.abs(a - b) for a, b in zip(pixels[name], pixels["fp32"])]
        results["images"][name] = {"n": len(pairs), "median_s": round(statistics.median(image_times[name][1:] or image_times[name]), 3),
                                   "max_abs_8bit": int(max(d.max() for d in differences)),
                                   "mean_abs_8bit": round(float(np.mean([d.mean() for d in differences])), 3)}
        print(f"images, {name:<20} median {results['images'][name]['median_s']:.3f} s   vs fp32: max {results['images'][name]['max_abs_8bit']} "
              f"grey levels, mean {results['images'][name]['mean_abs_8bit']}")
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
