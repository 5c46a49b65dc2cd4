"""Inference backends for the latent diffusion pipeline's two expensive parts: the UNet and the VAE decoder.

    "torch"        the PyTorch modules themselves (bf16 autocast where the CPU runs bf16 natively)
    "onnxruntime"  ONNX Runtime's CPU provider, fp32
    "openvino"     OpenVINO's CPU plugin, fp32 (bf16 where the CPU runs bf16 natively); the default
                   outside the app (`default_backend`)

Both runtimes run the same artifact: an ONNX export of our own UNet and decoder, made from the
loaded weights on first use (or ahead of time with ``python -m xray_generator export-runtime``)
and cached under ``<cache dir>/runtime/<key>/``. The key is the sha256 of the modules' tensors
plus the export recipe, so changed weights get a new export and a stale one is never used.
Files are written atomically; an ONNX file is a protobuf graph (no pickle), read only from the
cache this module wrote.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from xray_generator.models.autoencoder import decoder_noise_inputs, decoder_noise_modules, draw_decoder_noise, latent_channels, latent_packing

BACKENDS = ("torch", "onnxruntime", "openvino")
# The packages each runtime backend needs (import name, pip requirement).
BACKEND_PACKAGES = {"onnxruntime": ("onnxruntime", "onnxruntime==1.31.1"), "openvino": ("openvino", "openvino==2026.4.1")}
# Bump when the export (inputs, opset, wrappers) changes, so old cached exports are not reused.
EXPORT_RECIPE = "onnx-opset17-v1"
OPSET = 17
UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states", "encoder_attention_mask")


OVERRIDE_VARIABLE = "CXR_BACKEND"


def default_backend() -> str:
    """The backend generation uses unless told otherwise: ``CXR_BACKEND`` if set, else OpenVINO where installed.

    Measured on both CPU kinds seen here (README "Speed"), each against PyTorch in the same conditions:
    without native bf16 (2-core AMD EPYC Zen 3, AVX2, fp32) a default image took 0.837 s against 1.036 s,
    within 1 grey level of PyTorch; with native bf16 (2-core AMD EPYC Zen 4, AVX-512 BF16, 2026-12-07) it
    took 0.404 s against PyTorch bf16's 0.525 s, and at n = 200 FID was 18.52 against 18.27 (intervals
    [0, 22.79] and [0, 22.47]) with the same condition-fidelity AUROCs within 0.0003, so its larger pixel
    differences in bf16 (max 24 grey levels against fp32, where PyTorch bf16 moves 3) are within the
    metrics' noise. With its compiled-model cache a process's first use costs about 0.3 s. The app keeps
    PyTorch (`APP_BACKEND`). Without the openvino package it is PyTorch everywhere.
    """
    override = os.environ.get(OVERRIDE_VARIABLE, "").strip()
    if override:
        return override
    if importlib.util.find_spec("openvino") is None:
        return "torch"
    return "openvino"


# The studio app generates with PyTorch unless CXR_BACKEND names another backend. Measured in the
# browser (benchmarks/bench_app.py, 3 runs each): on a 2-core AVX2 EPYC (2026-12-06) OpenVINO's first image
# after start took 3.2-3.3 s against PyTorch's 1.9 s (it loads and warms up on first use) and later images
# 2.6 s against 2.3 s, because the browser and the server share the two cores; on a 2-core Zen 4 EPYC with
# native bf16 (2026-12-07) its first image took 2.47 s against 1.25 s (over the 2 s budget) and later ones
# 1.11 s against 1.50 s. In a plain process (the command line, batch jobs, evaluation) OpenVINO is the
# faster one (`default_backend`).
APP_BACKEND = "torch"


def use_app_backend() -> str:
    """Make this process's default backend the app's (`APP_BACKEND`) unless CXR_BACKEND is set; return it."""
    os.environ.setdefault(OVERRIDE_VARIABLE, APP_BACKEND)
    return os.environ[OVERRIDE_VARIABLE]


class BackendError(ValueError):
    """An unknown backend name, or a runtime backend whose package is not installed."""


def check_backend(name: str) -> str:
    """`name` if it is a known backend whose package is importable; BackendError saying what to do otherwise."""
    if name not in BACKENDS:
        raise BackendError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    if name in BACKEND_PACKAGES:
        module, requirement = BACKEND_PACKAGES[name]
        try:
            __import__(module)
        except ImportError as exc:
            raise BackendError(f"backend {name!r} needs the {module} package: pip install {requirement}") from exc
    return name


def tensors_sha256(*modules: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer of `modules` (names, dtypes, shapes and bytes).

    Each tensor is read in its memory order (channels-last weights too), without a copy: hashing
    the shipped UNet and decoder takes about 0.1 s, so it can sit on the first generation's path.
    """
    digest = hashlib.sha256()
    for index, module in enumerate(modules):
        for name, tensor in sorted(module.state_dict().items()):
            data = tensor.detach().to("cpu")
            order = sorted(range(data.dim()), key=lambda d: -data.stride(d))
            data = data.permute(*order)
            if not data.is_contiguous():
                data = data.contiguous()
            digest.update(f"{index}.{name}:{data.dtype}:{tuple(tensor.shape)}:{order}".encode())
            digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class _UNetGraph(torch.nn.Module):
    """The UNet with plain tensor inputs and output, as the exporter wants it."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, encoder_attention_mask):
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask).sample


class _DecoderGraph(torch.nn.Module):
    """The VAE's decode (post-quant conv + decoder) on unscaled latents; a decoder with noise inputs
    takes its noise as further inputs, so the exported graph holds no random draw."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latents, *noise):
        decoder_noise_inputs(self.vae, noise if noise else None)
        try:
            return self.vae.decode(latents).sample
        finally:
            decoder_noise_inputs(self.vae, None)


def export_key(unet: torch.nn.Module, vae: torch.nn.Module, text_length: int, latent_size: tuple[int, int]) -> str:
    """The cache key of an export: the weights' sha256 and everything else the graph depends on."""
    graph = {"recipe": EXPORT_RECIPE, "torch": torch.__version__, "text_length": text_length, "latent_size": list(latent_size)}
    if latent_packing(vae) != 1:  # packing changes the decoder's graph, not its tensors
        graph["latent_packing"] = latent_packing(vae)
    if decoder_noise_modules(vae):  # so do noise inputs
        graph["decoder_noise_inputs"] = len(decoder_noise_modules(vae))
    recipe = json.dumps(graph)
    weights = tensors_sha256(unet, vae.post_quant_conv if vae.post_quant_conv is not None else torch.nn.Identity(), vae.decoder)
    return hashlib.sha256(f"{weights}|{recipe}".encode()).hexdigest()[:24]


def _export_onnx(graph: torch.nn.Module, inputs: tuple, names: tuple[str, ...], output: str, target: Path) -> None:
    """Trace `graph` on fp32 copies of `inputs` and write it as ONNX with a dynamic batch axis, atomically."""
    from xray_generator.io import atomic_write

    dynamic = {name: {0: "batch"} for name in names if name != "timestep"}
    dynamic[output] = {0: "batch"}

    def write(handle) -> None:
        # The TorchScript exporter: it needs no extra package, and its trace of diffusers' UNet runs
        # unchanged in both runtimes (max difference to PyTorch about 4e-6).
        torch.onnx.export(graph, inputs, handle, input_names=list(names), output_names=[output], dynamic_axes=dynamic,
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)

    atomic_write(target, write, make_parents=True)


def export_onnx_models(unet: torch.nn.Module, vae: torch.nn.Module, folder: Path, text_length: int, text_width: int,
                       latent_size: tuple[int, int]) -> Path:
    """Export fp32 copies of the UNet and decoder to `folder`/unet.onnx and decoder.onnx (skipping files already there)."""
    import copy
    import warnings

    folder.mkdir(parents=True, exist_ok=True)
    channels = unet.config.in_channels
    height, width = latent_size
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python branch on a shape; the parity tests check the result instead.
        warnings.simplefilter("ignore")
        if not (folder / "unet.onnx").is_file():
            graph = _UNetGraph(copy.deepcopy(unet).float().to(memory_format=torch.contiguous_format)).eval()
            example = (torch.randn(2, channels, height, width), torch.tensor(500.0), torch.randn(2, text_length, text_width),
                       torch.ones(2, text_length, dtype=torch.bool))
            _export_onnx(graph, example, UNET_INPUTS, "noise_prediction", folder / "unet.onnx")
            del graph
        if not (folder / "decoder.onnx").is_file():
            graph = _DecoderGraph(copy.deepcopy(vae).float().to(memory_format=torch.contiguous_format)).eval()
            latents = torch.randn(1, latent_channels(vae), height, width)
            noise = tuple(draw_decoder_noise(vae, tuple(latents.shape), None))
            _export_onnx(graph, (latents, *noise), ("latents", *(f"noise_{i}" for i in range(len(noise)))), "image", folder / "decoder.onnx")
            del graph
    return folder


@dataclass
class RuntimeModels:
    """A backend's UNet and decoder as plain functions on torch tensors, and the precision they run in."""

    backend: str
    precision: str
    unet: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]  # latents, the generator of the decoder's noise (if it has any)
    folder: Path | None = None


def _onnxruntime_session(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [item.name for item in session.get_inputs()]

    def run(*arrays: np.ndarray) -> np.ndarray:
        return session.run(None, dict(zip(names, arrays)))[0]

    return run


def _openvino_model(path: Path, threads: int, precision: str) -> tuple[Callable[..., np.ndarray], str]:
    import openvino

    core = openvino.Core()
    # OpenVINO's own cache of the compiled model, beside the export it was compiled from: compiling
    # the shipped UNet and decoder from ONNX takes about 1.1 s, loading them from this cache 0.3 s
    # (2-core AVX2 EPYC), once per process. The plugin keys each blob by the model, the compile
    # config and its own version, and compiles afresh on a miss.
    core.set_property({"CACHE_DIR": str(path.parent / "openvino_compiled")})
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
              "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    # By path, not a read model: with the cache warm the plugin then never parses the ONNX file.
    compiled = core.compile_model(str(path), "CPU", config)
    # What the plugin actually runs: a bf16 hint on a CPU without bf16 falls back to f32.
    actual = "bf16" if str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower().endswith("bf16") else "fp32"
    lock = threading.Lock()
    request = compiled.create_infer_request()

    def run(*arrays: np.ndarray) -> np.ndarray:
        # One request is reused (its buffers are allocated once); the lock keeps concurrent app sessions apart.
        with lock:
            return request.infer(list(arrays))[0].copy()

    return run, actual


def load_runtime(backend: str, unet: torch.nn.Module, vae: torch.nn.Module, text_length: int, text_width: int,
                 latent_size: tuple[int, int], precision: str, cache_root: Path | None = None) -> RuntimeModels:
    """The UNet and decoder of `backend`, exported to (or read from) the cache for a runtime backend.

    `precision` is the pipeline's ("bf16" where the CPU runs it natively); ONNX Runtime always runs fp32.
    """
    check_backend(backend)
    if backend == "torch":
        raise BackendError("the torch backend runs the pipeline's own modules; load_runtime is for onnxruntime and openvino")
    from xray_generator.paths import cache_dir

    root = Path(cache_root) if cache_root is not None else cache_dir() / "runtime"
    folder = root / export_key(unet, vae, text_length, latent_size)
    export_onnx_models(unet, vae, folder, text_length, text_width, latent_size)
    threads = torch.get_num_threads()
    if backend == "onnxruntime":
        run_unet, run_decoder = _onnxruntime_session(folder / "unet.onnx", threads), _onnxruntime_session(folder / "decoder.onnx", threads)
        actual = "fp32"
    else:
        (run_unet, actual), (run_decoder, _) = (_openvino_model(folder / name, threads, precision) for name in ("unet.onnx", "decoder.onnx"))

    def unet_call(sample: torch.Tensor, timestep: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        arrays = (sample.float().contiguous().numpy(), np.asarray(float(timestep), dtype=np.float32),
                  states.float().contiguous().numpy(), mask.bool().contiguous().numpy())
        return torch.from_numpy(run_unet(*arrays))

    def decode_call(latents: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # The same draws, in the same order, as PyTorch's decoder makes from this generator.
        noise = [n.numpy() for n in draw_decoder_noise(vae, tuple(latents.shape), generator)]
        return torch.from_numpy(run_decoder(latents.float().contiguous().numpy(), *noise))

    return RuntimeModels(backend=backend, precision=actual, unet=unet_call, decode=decode_call, folder=folder)
