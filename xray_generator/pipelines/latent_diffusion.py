"""Text-to-X-ray latent diffusion as a diffusers `DiffusionPipeline`.

    pipe = XRayDiffusionPipeline.from_pretrained("weights/ldm")
    out = pipe("right lower lobe pneumonia, adult PA film", seed=0)
    out.images[0]        # float32 (256, 256) in [0, 1]
    out.pil_images[0]    # 8-bit grayscale PIL image
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)
from PIL import Image

from xray_generator.models.autoencoder import denormalise_latents, downsampling_factor, load_autoencoder, normalise_latents, set_decoder_noise_generator
from xray_generator.models.text_encoder import FrozenTextEncoder, TextProjection, check_encoder_matches
from xray_generator.pipelines.runtime import RuntimeModels, check_backend, default_backend, load_runtime
from xray_generator.precision import cpu_precision
from xray_generator.weights import WeightsError, replace_folder_atomically, verify_manifest, weights_hash, write_manifest

# Sampler name -> (scheduler class, extra config). Each call builds its own scheduler from the
# training noise schedule, so concurrent calls on one pipeline never share solver state.
SAMPLERS: dict[str, tuple[type, dict]] = {
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"}),
    "ddim": (DDIMScheduler, {"set_alpha_to_one": True}),
    "unipc": (UniPCMultistepScheduler, {"solver_order": 2}),
}
# The defaults a user gets; the shipped pipeline.json can override them. A backend of None is
# `runtime.default_backend()`: CXR_BACKEND if set, else OpenVINO where it is installed (PyTorch in the app).
DEFAULT_GENERATION = {"sampler": "dpm++", "num_inference_steps": 14, "guidance_scale": 4.0, "guidance_fraction": 1.0, "height": 256, "width": 256,
                      "backend": None}
MAX_STEPS = 200
MAX_GUIDANCE = 30.0
MAX_IMAGES_PER_CALL = 64
MAX_PROMPT_CHARS = 10_000
PIPELINE_FILE = "pipeline.json"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain_number(value: Any) -> Any:
    """A NumPy integer or float scalar as the Python number it holds; anything else unchanged."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _read_pipeline_info(path: Path) -> dict:
    info = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(info, dict) or not isinstance(info.get("text_encoder"), str):
        raise ValueError("expected a JSON object with a 'text_encoder' name")
    return info


def _load_part(path: Path, load: Callable[[], Any]) -> Any:
    """Run `load`; any failure becomes a WeightsError that names the file or folder that failed."""
    try:
        return load()
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError) as exc:
        if isinstance(exc, WeightsError):
            raise
        raise WeightsError(f"could not load {path}: {type(exc).__name__}: {exc}".strip()) from exc


def check_prompt_text(text: str, what: str = "prompt") -> None:
    """ValueError if `text` is over MAX_PROMPT_CHARS or holds a control character that is not whitespace.

    Tab, newline and other whitespace are fine (the tokenizer treats them as spaces). NUL, escape
    sequences, DEL, C1 controls and unpaired surrogates are refused with their position, so the
    user can find them; nothing is stripped silently, so the recorded prompt is the prompt used.
    """
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"{what} has {len(text):,} characters; the limit is {MAX_PROMPT_CHARS:,}")
    for position, char in enumerate(text):
        category = unicodedata.category(char)
        if (category == "Cc" and not char.isspace()) or category == "Cs":
            kind = "an unpaired surrogate" if category == "Cs" else "a control character"
            raise ValueError(
                f"{what} contains {kind} (U+{ord(char):04X}) at position {position + 1}; "
                "remove it (only printable text, tabs and line breaks are accepted)"
            )


def seeded_latents(pipe, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
    """Initial noise of a batch, each image's drawn from its own seed, so an image's noise never depends on its batch-mates."""
    shape = (1, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    return torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(seed))) for seed in seeds])


class GenerationCancelled(RuntimeError):
    """Raised when `callback_on_step_end` asks to stop (returns {"interrupt": True})."""


@dataclass
class XRayPipelineOutput:
    images: list[np.ndarray]
    pil_images: list[Image.Image]
    metadata: list[dict[str, Any]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


class XRayDiffusionPipeline(DiffusionPipeline):
    """VAE + cross-attention UNet + frozen text encoder (+ trainable projection), with CFG.

    Parameters
    ----------
    vae : AutoencoderKL
        1-channel autoencoder; `scaling_factor`/`shift_factor` (or per channel `latents_mean`/`latents_std`) normalise its latents.
    unet : UNet2DConditionModel
        The denoiser, predicting what the training scheduler's `prediction_type` says.
    text_projection : TextProjection
        Maps text-encoder states to the UNet's cross-attention width; records the encoder it was trained with.
    scheduler : DDPMScheduler
        The training noise schedule. Samplers are built from its config at call time.
    text_encoder : FrozenTextEncoder
        Tokeniser + frozen BERT-family model.
    """

    model_cpu_offload_seq = "text_encoder->text_projection->unet->vae"

    def __init__(self, vae: AutoencoderKL, unet: UNet2DConditionModel, text_projection: TextProjection, scheduler: DDPMScheduler, text_encoder: FrozenTextEncoder):
        super().__init__()
        check_encoder_matches(text_projection, text_encoder)
        self.register_modules(vae=vae, unet=unet, text_projection=text_projection, scheduler=scheduler, text_encoder=text_encoder)
        self.generation_defaults = dict(DEFAULT_GENERATION)
        self.model_name = "ldm"
        self.weights_hash = "untrained"
        # bf16 where the CPU runs it natively; fp32 elsewhere, where emulated bf16 is many times slower.
        self.precision = cpu_precision("bf16")
        # Exported runtimes, loaded on first use of a backend: (backend, latent size) -> RuntimeModels.
        self._runtimes: dict[tuple[str, tuple[int, int]], RuntimeModels] = {}
        self._runtimes_lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel along each side (8 for the shipped autoencoder)."""
        return downsampling_factor(self.vae)

    def resolve_settings(self, **given: Any) -> dict:
        """The generation settings a call runs with: each value given, else this model's default (pipeline.json).

        Keys are those of DEFAULT_GENERATION. The one place that resolves defaults, so generation,
        editing, evaluation caches and the CLI's skip-existing check can never disagree.
        """
        unknown = set(given) - set(DEFAULT_GENERATION)
        if unknown:
            raise ValueError(f"unknown generation settings {sorted(unknown)}; known: {sorted(DEFAULT_GENERATION)}")
        defaults = {**DEFAULT_GENERATION, **self.generation_defaults}
        settings = {key: default if given.get(key) is None else given[key] for key, default in defaults.items()}
        settings["backend"] = check_backend(settings["backend"] or default_backend())
        return settings

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, save_directory: str | Path, **_: Any) -> None:
        """Write every trained part as safetensors plus configs and a sha256 MANIFEST.json, atomically.

        The frozen text encoder is not copied: its identity and width are recorded, and the pinned
        package (or the user's local folder) provides it at load time.
        """
        target = Path(save_directory)
        staging = target.with_name(f".{target.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        self.vae.save_pretrained(staging / "vae", safe_serialization=True)
        # The UNet is stored in bf16 (it runs under bf16 autocast anyway) and sharded, which halves
        # what a clone downloads and keeps every file small enough for plain git.
        unet_bf16 = copy.deepcopy(self.unet).to(torch.bfloat16)
        unet_bf16.save_pretrained(staging / "unet", safe_serialization=True, max_shard_size="20MB")
        del unet_bf16
        self.text_projection.save_pretrained(staging / "text_projection", safe_serialization=True)
        self.scheduler.save_pretrained(staging / "scheduler")
        info = {
            "_class_name": type(self).__name__,
            "model_name": self.model_name,
            "text_encoder": self.text_encoder.name,
            "text_encoder_hidden_size": self.text_encoder.hidden_size,
            "text_max_length": self.text_encoder.max_length,
            "generation_defaults": self.generation_defaults,
        }
        (staging / PIPELINE_FILE).write_text(json.dumps(info, indent=2) + "\n")
        write_manifest(staging)
        replace_folder_atomically(staging, target)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        text_encoder: str | Path | FrozenTextEncoder | None = None,
        torch_dtype: torch.dtype | None = None,
        verify: bool = True,
        **_: Any,
    ) -> "XRayDiffusionPipeline":
        """Load a folder written by `save_pretrained`, verifying every file against MANIFEST.json.

        `text_encoder` overrides the recorded encoder (an alias, a local BERT folder, or an instance);
        a width that does not match the trained projection raises a clear error. `torch_dtype`
        (``torch.float32`` or ``torch.bfloat16``) fixes the precision; by default it is bf16 where
        the CPU runs bf16 natively and fp32 elsewhere (`xray_generator.precision`).
        """
        folder = Path(pretrained_model_name_or_path)
        digest = verify_manifest(folder) if verify else weights_hash(folder)
        info = _load_part(folder / PIPELINE_FILE, lambda: _read_pipeline_info(folder / PIPELINE_FILE))
        if not isinstance(text_encoder, FrozenTextEncoder):
            text_encoder = FrozenTextEncoder(text_encoder or info["text_encoder"], max_length=info.get("text_max_length", 64))
        # The manifest proves the files are the ones exported; these catch an export that was itself broken.
        vae = _load_part(folder / "vae", lambda: load_autoencoder(folder / "vae"))
        unet = _load_part(folder / "unet", lambda: UNet2DConditionModel.from_pretrained(folder / "unet", use_safetensors=True).float())
        projection = _load_part(folder / "text_projection", lambda: TextProjection.from_pretrained(folder / "text_projection", use_safetensors=True))
        scheduler = _load_part(folder / "scheduler", lambda: DDPMScheduler.from_pretrained(folder / "scheduler"))
        pipe = cls(vae=vae, unet=unet, text_projection=projection, scheduler=scheduler, text_encoder=text_encoder)
        pipe.generation_defaults.update(info.get("generation_defaults", {}))
        pipe.model_name = info.get("model_name", folder.name)
        pipe.weights_hash = digest
        pipe.weights_folder = folder
        if torch_dtype is not None:
            if torch_dtype not in (torch.float32, torch.bfloat16):
                raise ValueError(f"torch_dtype must be torch.float32 or torch.bfloat16, got {torch_dtype}")
            # An explicit dtype is honoured even where bf16 is emulated (e.g. to reproduce a bf16 run).
            pipe.precision = "fp32" if torch_dtype == torch.float32 else "bf16"
        for module in (vae, unet, projection):
            module.eval().requires_grad_(False)
        # Channels-last is oneDNN's fast convolution layout (fp32 too: a guided UNet step took 12 % less
        # on 2 AVX2 threads). In bf16, bf16 weights spare autocast a cast of every weight on every call.
        for module in (vae, unet):
            module.to(memory_format=torch.channels_last)
            if pipe.precision == "bf16":
                module.to(dtype=torch.bfloat16)
        return pipe

    # ------------------------------------------------------------------ helpers
    def make_scheduler(self, sampler: str):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
        scheduler_class, extra = SAMPLERS[sampler]
        return scheduler_class.from_config(self.scheduler.config, **extra)

    def _autocast(self):
        enabled = self.precision == "bf16" and self.unet.device.type == "cpu"
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)

    def runtime_models(self, backend: str, height: int = 256, width: int = 256) -> RuntimeModels:
        """The UNet and decoder that `backend` runs, for images of `height` x `width`.

        "torch" is the pipeline's own modules. "onnxruntime" and "openvino" run an ONNX export of
        them, made on the first call for these weights (tens of seconds; or beforehand with
        ``python -m xray_generator export-runtime``) and cached by the weights' sha256; later calls
        and later processes read the cache (`runtime.load_runtime`).
        """
        check_backend(backend)
        if backend == "torch":
            return RuntimeModels(backend="torch", precision=self.precision, unet=self._torch_unet, decode=self._torch_decode)
        key = (backend, (height // self.vae_scale_factor, width // self.vae_scale_factor))
        with self._runtimes_lock:
            if key not in self._runtimes:
                self._runtimes[key] = load_runtime(
                    backend, self.unet, self.vae, self.text_encoder.max_length, self.unet.config.cross_attention_dim, key[1], self.precision)
            return self._runtimes[key]

    def runtime_loaded(self, backend: str, height: int = 256, width: int = 256) -> bool:
        """Whether `runtime_models(backend, height, width)` returns at once: PyTorch, or a runtime this pipeline has loaded."""
        return backend == "torch" or (backend, (height // self.vae_scale_factor, width // self.vae_scale_factor)) in self._runtimes

    def _torch_unet(self, sample: torch.Tensor, timestep: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.unet(sample.to(self.unet.dtype), timestep, encoder_hidden_states=states.to(self.unet.dtype),
                             encoder_attention_mask=mask).sample.float()

    def _torch_decode(self, latents: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        set_decoder_noise_generator(self.vae, generator)
        try:
            with self._autocast():
                return self.vae.decode(latents.to(self.vae.dtype)).sample.float()
        finally:
            set_decoder_noise_generator(self.vae, None)

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        states, mask = self.text_encoder.encode(prompts)
        with self._autocast():
            projected = self.text_projection(states)
        return projected.float(), mask

    def empty_prompt_embedding(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The unconditional ("") text states of classifier-free guidance, (1, L, D) and (1, L).

        Cached once the projection is frozen (loaded pipelines): it saves a text-encoder pass per image.
        """
        frozen = not any(p.requires_grad for p in self.text_projection.parameters())
        cached = getattr(self, "_empty_prompt_cache", None)
        if frozen and cached is not None:
            return cached
        embedding = self.encode_prompt([""])
        if frozen:
            self._empty_prompt_cache = embedding
        return embedding

    def decode_latents(self, latents: torch.Tensor, backend: str = "torch", generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents -> images (N, 1, H, W) in [0, 1], decoded by `backend`'s decoder.

        A decoder with noise inputs draws its noise from `generator` (generation passes the one its
        initial noise came from, so a seed fixes the whole image), else from torch's global generator.
        """
        runtime = self.runtime_models(backend, latents.shape[-2] * self.vae_scale_factor, latents.shape[-1] * self.vae_scale_factor)
        decoded = runtime.decode(denormalise_latents(latents, self.vae.config), generator)
        return ((decoded + 1.0) / 2.0).clamp(0.0, 1.0)

    def encode_images(self, images: torch.Tensor, sample_generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (N, 1, H, W) in [0, 1] -> scaled latents (posterior mean unless a generator is given)."""
        with self._autocast():
            posterior = self.vae.encode((images * 2.0 - 1.0).to(self.vae.dtype)).latent_dist
        latents = posterior.sample(sample_generator) if sample_generator is not None else posterior.mode()
        return normalise_latents(latents.float(), self.vae.config)

    def guidance_text_states(self, prompts: list[str], negatives: list[str] | None, use_guidance: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Text states and attention mask for the UNet: (uncond, cond) stacked when guiding, else cond alone.

        `negatives` (one per prompt) replace the empty unconditional prompt; None uses "".
        """
        cond, cond_mask = self.encode_prompt(prompts)
        if not use_guidance:
            return cond, cond_mask
        if negatives is None:
            uncond, uncond_mask = self.empty_prompt_embedding()
            uncond, uncond_mask = uncond.expand(len(prompts), -1, -1), uncond_mask.expand(len(prompts), -1)
        else:
            uncond, uncond_mask = self.encode_prompt(negatives)
        return torch.cat([uncond, cond]), torch.cat([uncond_mask, cond_mask])

    def denoise(
        self, scheduler, latents: torch.Tensor, timesteps: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor,
        guidance_scale: float, callback_on_step_end: Callable | None = None,
        after_step: Callable[[int, torch.Tensor], torch.Tensor] | None = None, guided_steps: int | None = None,
        backend: str = "torch", scale_per_step: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """The sampling loop over `timesteps`, with classifier-free guidance when `guidance_scale` > 1.

        `guided_steps` limits guidance to that many leading (noisiest) steps; the later steps run the
        conditional branch alone, one UNet pass instead of two. None guides every step.
        `scale_per_step` (one scale per timestep; 1 or less is unguided) replaces both, for experiments
        on which steps to guide (docs/guidance_schedule_experiment.py); `text_states` must then be the
        guided (uncond, cond) pair.
        `after_step(index, latents)` may replace the latents after each step (masked editing
        re-imposes the source outside the mask); then `callback_on_step_end` sees them.
        `backend` names the UNet's runtime (`runtime_models`).
        """
        n = latents.shape[0]
        unet = self.runtime_models(backend, latents.shape[-2] * self.vae_scale_factor, latents.shape[-1] * self.vae_scale_factor).unet
        if scale_per_step is not None and len(scale_per_step) != len(timesteps):
            raise ValueError(f"scale_per_step needs one scale per step ({len(timesteps)}), got {len(scale_per_step)}")
        for index, t in enumerate(timesteps):
            if scale_per_step is not None:
                guidance_scale = float(scale_per_step[index])
            use_guidance = guidance_scale > 1.0 and (scale_per_step is not None or guided_steps is None or index < guided_steps)
            # Guided text states are (uncond, cond) stacked; an unguided step takes the cond half.
            states, mask = (text_states, text_mask) if use_guidance or text_states.shape[0] == n else (text_states[n:], text_mask[n:])
            model_input = torch.cat([latents] * 2) if use_guidance else latents
            model_input = scheduler.scale_model_input(model_input, t)
            prediction = unet(model_input, t, states, mask)
            if use_guidance:
                uncond_pred, cond_pred = prediction.chunk(2)
                prediction = uncond_pred + guidance_scale * (cond_pred - uncond_pred)
            latents = scheduler.step(prediction, t, latents).prev_sample
            if after_step is not None:
                latents = after_step(index, latents)
            if callback_on_step_end is not None:
                result = callback_on_step_end(self, index, int(t), {"latents": latents})
                if result and result.get("interrupt"):
                    raise GenerationCancelled(f"generation cancelled after step {index + 1} of {len(timesteps)}")
        return latents

    def check_inputs(
        self, prompt, negative_prompt, num_inference_steps, guidance_scale, num_images_per_prompt, height, width, seed,
        generator=None, latents=None, callback_on_step_end=None, guidance_fraction=1.0,
    ) -> list[str]:
        """Validate every argument of `__call__` before any model runs; ValueError/TypeError say what was expected.

        Prompts are refused, never silently changed, when they are empty, longer than
        MAX_PROMPT_CHARS, or hold control characters other than whitespace (tab, newline ...) or
        unpaired surrogates: a NUL or an ANSI escape sequence in a prompt is a pasting accident or
        an injection attempt, and the prompt recorded in the image metadata must be the one used.
        Any script and emoji are accepted (the tokenizer maps what it does not know to [UNK]).
        """
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a non-empty string or a list of strings")
        for p in prompts:
            if not p.strip():
                raise ValueError("prompt is empty; describe the radiograph, e.g. 'normal adult PA chest radiograph'")
            check_prompt_text(p, "prompt")
        if negative_prompt is not None:
            negatives = [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
            if not isinstance(negatives, (list, tuple)) or not all(isinstance(n, str) for n in negatives):
                raise ValueError("negative_prompt must be a string or a list of strings")
            if not isinstance(negative_prompt, str) and len(negatives) != len(prompts):
                raise ValueError(f"got {len(negatives)} negative prompts for {len(prompts)} prompts")
            for n in negatives:
                check_prompt_text(n, "negative_prompt")
        if not _is_int(num_inference_steps) or not 1 <= num_inference_steps <= MAX_STEPS:
            raise ValueError(f"num_inference_steps must be an integer from 1 to {MAX_STEPS}, got {num_inference_steps!r}")
        if not _is_real(guidance_scale) or not math.isfinite(guidance_scale) or not 0.0 <= guidance_scale <= MAX_GUIDANCE:
            raise ValueError(f"guidance_scale must be a number from 0 to {MAX_GUIDANCE}, got {guidance_scale!r}")
        if not _is_real(guidance_fraction) or not math.isfinite(guidance_fraction) or not 0.0 < guidance_fraction <= 1.0:
            raise ValueError(f"guidance_fraction must be a number above 0 and at most 1, got {guidance_fraction!r}")
        if not _is_int(num_images_per_prompt) or not 1 <= num_images_per_prompt * len(prompts) <= MAX_IMAGES_PER_CALL:
            raise ValueError(f"num_images_per_prompt must be a positive integer, at most {MAX_IMAGES_PER_CALL} images per call")
        factor = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        for name, value in (("height", height), ("width", width)):
            if not _is_int(value) or value < factor or value % factor or value > 1024:
                raise ValueError(f"{name} must be a multiple of {factor} between {factor} and 1024, got {value!r}")
        if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**63):
            raise ValueError(f"seed must be an integer from 0 to 2**63-1, got {seed!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}; pass seed=... for a seeded run")
        if latents is not None and not isinstance(latents, torch.Tensor):
            raise TypeError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
        if latents is not None and not torch.isfinite(latents).all():
            raise ValueError("latents contain NaN or infinite values")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise TypeError(f"callback_on_step_end must be callable, got {type(callback_on_step_end).__name__}")
        return list(prompts)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_fraction: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        sampler: str | None = None,
        height: int | None = None,
        width: int | None = None,
        latents: torch.Tensor | None = None,
        callback_on_step_end: Callable[["XRayDiffusionPipeline", int, int, dict], dict | None] | None = None,
        backend: str | None = None,
    ) -> XRayPipelineOutput:
        """Generate radiographs from text.

        Parameters
        ----------
        prompt : str or list of str
            Radiology-style description, e.g. "right lower lobe pneumonia, adult PA film".
            Text beyond the encoder's token limit is truncated (a notice says so). Any script and emoji
            are accepted; empty prompts, more than 10,000 characters and control characters other
            than whitespace are refused with a ValueError (see `check_prompt_text`).
        negative_prompt : str or list of str, optional
            What to steer away from; replaces the empty unconditional prompt in guidance.
        num_inference_steps : int, default from the model (its pipeline.json ``generation_defaults``)
            Sampler steps, 1-200. More steps cost time linearly.
        guidance_scale : float, default from the model
            Classifier-free guidance weight, 0-30. 1 or less disables guidance (one UNet pass per step).
        guidance_fraction : float, default from the model (1.0, every step, when its pipeline.json names none)
            Share of the steps, noisiest first, that are guided: ceil(fraction x steps) of them. The
            prompt's effect is set in the noisy steps; the later ones refine texture, and unguided
            they cost one UNet pass instead of two.
        num_images_per_prompt : int, default 1
        generator : torch.Generator, optional
            Source of the initial noise. Overrides `seed`.
        seed : int, optional
            Seed for a CPU generator; the same seed and settings give the same image.
        sampler : {"dpm++", "ddim", "unipc"}, default from the model
        height, width : int, default from the model
            Multiples of 32. 256 is the native training size.
        latents : torch.Tensor, optional
            Initial noise of shape (N, C, H/8, W/8), instead of drawing it.
        callback_on_step_end : callable, optional
            Called as `callback(pipe, step_index, timestep, {"latents": ...})` after each step. Return
            {"interrupt": True} to cancel (raises GenerationCancelled).
        backend : {"torch", "onnxruntime", "openvino"}, default ``CXR_BACKEND`` if set, else OpenVINO where installed (`runtime.default_backend`)
            What runs the UNet and the decoder. The runtimes run an ONNX export of these weights,
            made and cached on their first use (`runtime_models`). Within one backend the same seed
            gives the same image; between backends pixels differ by float rounding (README, Speed).
            The backend used is recorded in each image's metadata.

        Returns
        -------
        XRayPipelineOutput with float32 (H, W) images in [0, 1], PIL images and per-image provenance.
        """
        settings = self.resolve_settings(sampler=sampler, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                         guidance_fraction=guidance_fraction, height=height, width=width, backend=backend)
        sampler, num_inference_steps, guidance_scale, guidance_fraction, height, width, backend = (
            settings[key] for key in ("sampler", "num_inference_steps", "guidance_scale", "guidance_fraction", "height", "width", "backend")
        )
        # NumPy scalars (a seed from np.random, steps from a config array) count as the plain numbers they hold.
        num_inference_steps, guidance_scale, guidance_fraction, num_images_per_prompt, height, width, seed = (
            _plain_number(v) for v in (num_inference_steps, guidance_scale, guidance_fraction, num_images_per_prompt, height, width, seed)
        )
        prompts = self.check_inputs(
            prompt, negative_prompt, num_inference_steps, guidance_scale, num_images_per_prompt, height, width, seed,
            generator=generator, latents=latents, callback_on_step_end=callback_on_step_end, guidance_fraction=guidance_fraction,
        )
        scheduler = self.make_scheduler(sampler)
        if generator is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if seed is None else seed
            generator = torch.Generator("cpu").manual_seed(seed)
        notices = [
            f"prompt truncated to the text encoder's {self.text_encoder.max_length} tokens"
            for p in prompts
            if self.text_encoder.token_count(p) > self.text_encoder.max_length
        ][:1]

        # 1. Encode the prompt (and the negative or empty prompt for classifier-free guidance).
        batch_prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        use_guidance = guidance_scale > 1.0
        negatives = None
        if negative_prompt is not None:
            if isinstance(negative_prompt, str):
                negatives = [negative_prompt] * len(batch_prompts)
            else:
                negatives = [n for n in negative_prompt for _ in range(num_images_per_prompt)]
        text_states, text_mask = self.guidance_text_states(batch_prompts, negatives, use_guidance)

        # 2. Prepare the initial noise.
        shape = (len(batch_prompts), self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        scheduler.set_timesteps(num_inference_steps)
        latents = latents * scheduler.init_noise_sigma

        # 3. Denoise.
        # Rounded before ceil: 0.07 x 100 is 7.000000000000001 in floating point, which must guide 7 steps, not 8.
        guided_steps = math.ceil(round(guidance_fraction * num_inference_steps, 9))
        latents = self.denoise(scheduler, latents, scheduler.timesteps, text_states, text_mask, guidance_scale, callback_on_step_end,
                               guided_steps=guided_steps, backend=backend)

        # 4. Decode.
        images = self.decode_latents(latents, backend, generator)[:, 0].numpy()
        runtime = self.runtime_models(backend, height, width)
        arrays = [np.ascontiguousarray(img, dtype=np.float32) for img in images]
        pils = [Image.fromarray((np.clip(a, 0, 1) * 255.0 + 0.5).astype(np.uint8), mode="L") for a in arrays]
        metadata = [
            {
                "model": self.model_name,
                "weights_sha256": self.weights_hash,
                "prompt": batch_prompts[i],
                "negative_prompt": negatives[i] if use_guidance and negatives is not None else "",
                "sampler": sampler,
                "steps": num_inference_steps,
                "guidance": float(guidance_scale),
                "guidance_fraction": float(guidance_fraction),
                "seed": seed,
                "index_in_batch": i,
                "height": height,
                "width": width,
                "precision": runtime.precision,
                "backend": backend,
                "synthetic": True,
            }
            for i in range(len(batch_prompts))
        ]
        return XRayPipelineOutput(images=arrays, pil_images=pils, metadata=metadata, notices=notices)

    # ------------------------------------------------------------------ editing a real radiograph
    @torch.no_grad()
    def edit(
        self,
        image: np.ndarray,
        prompt: str,
        strength: float = 0.5,
        negative_prompt: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        sampler: str | None = None,
        mask: np.ndarray | str | None = None,
        source_id: str | None = None,
        callback_on_step_end: Callable[["XRayDiffusionPipeline", int, int, dict], dict | None] | None = None,
        backend: str | None = None,
    ):
        """Edit a real radiograph under a text prompt (SDEdit), optionally only inside a mask.

        The source is encoded by the VAE, noised with the seed's noise to the timestep at which
        the last `strength` fraction of the sampler's schedule begins (diffusers' img2img
        convention, `editing.edit_timesteps`), and denoised from there under `prompt` with
        classifier-free guidance. Only `int(strength * num_inference_steps)` denoising steps run,
        plus one VAE encode, so at the default strength 0.5 an edit takes about half the time of
        generating an image with the same settings.

        Parameters
        ----------
        image : array (H, W)
            The source radiograph: float in [0, 1], uint8 or uint16 (16-bit data is windowed on the
            0.5-99.5 percentiles); RGB is converted to grey. It is resized so its shorter side is
            the model's size (256) and centre-cropped (`editing.prepare_source`).
        prompt : str
            What the edited film should show, e.g. "right lower lobe pneumonia, adult PA film".
        strength : float in [0, 1], default 0.5
            How far from the source the edit may go: 0 returns the source through the VAE
            (no denoising step), 1 discards it (plain generation, but still inside the mask).
        negative_prompt : str, optional
            Replaces the empty unconditional prompt in guidance.
        num_inference_steps, guidance_scale, sampler : as in `__call__`, defaults from pipeline.json
            `num_inference_steps` is the length of the full schedule, of which the last
            `strength` fraction runs. Every step that runs is guided (`guidance_fraction` does not
            apply): an edit starts part-way down the schedule, so all its steps are where the
            prompt has to act.
        seed : int, optional
            Seed of the noise; the same source, seed and settings give the same edit.
        mask : array (H, W), region name or None, default None (edit everywhere)
            1 = edit. An array must have the source's (H, W) (or the model's 256 x 256); a name is
            one of `editing.REGIONS` ("right-lower", ...: the PATIENT's side, which is the image's
            left for "right" on a frontal film). Outside the mask the latents are reset to the
            noised source after every step, and the source pixels are composited back after
            decoding (feathered edge, `editing.FEATHER_SIGMA` px).
        source_id : str, optional
            Identifier of the source (dataset image id or file name), recorded in the metadata.
        callback_on_step_end : callable, optional
            As in `__call__`; return {"interrupt": True} to cancel (raises GenerationCancelled).
        backend : as in `__call__`
            Runs the UNet and the decoder; the source is encoded by the PyTorch encoder.

        Returns
        -------
        editing.EditResult: edited image, source, absolute difference, colour overlay, mask,
        provenance metadata (synthetic=True) and notices.

        Raises
        ------
        ValueError (editing.EditInputError for the source, mask, region and strength) before any model runs.
        """
        from xray_generator.pipelines import editing

        settings = self.resolve_settings(sampler=sampler, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, backend=backend)
        sampler, num_inference_steps, guidance_scale, size, backend = (
            settings[key] for key in ("sampler", "num_inference_steps", "guidance_scale", "height", "backend"))
        num_inference_steps, guidance_scale, seed = (_plain_number(v) for v in (num_inference_steps, guidance_scale, seed))
        if not isinstance(prompt, str):
            raise ValueError("prompt must be a string: one edit at a time")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise ValueError("negative_prompt must be a string")
        self.check_inputs(prompt, negative_prompt, num_inference_steps, guidance_scale, 1, size, size, seed,
                          callback_on_step_end=callback_on_step_end)
        strength = editing.check_strength(strength)
        source_array = editing._as_array(image, "the source image")
        source, notices = editing.prepare_source(source_array, size)
        mask_array, mask_description = editing.prepare_mask(mask, source_array.shape[:2], size)
        scheduler = self.make_scheduler(sampler)
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if seed is None else seed
        generator = torch.Generator("cpu").manual_seed(seed)
        if self.text_encoder.token_count(prompt) > self.text_encoder.max_length:
            notices.append(f"prompt truncated to the text encoder's {self.text_encoder.max_length} tokens")

        # 1. Encode the prompt.
        use_guidance = guidance_scale > 1.0
        negatives = [negative_prompt] if negative_prompt is not None else None
        text_states, text_mask = self.guidance_text_states([prompt], negatives, use_guidance)

        # 2. Encode the source and noise it to where the truncated schedule starts.
        source_latents = self.encode_images(torch.from_numpy(source)[None, None])
        timesteps = editing.edit_timesteps(scheduler, num_inference_steps, strength)
        noise = torch.randn(source_latents.shape, generator=generator, dtype=torch.float32)
        latents = scheduler.add_noise(source_latents, noise, timesteps[:1]) if len(timesteps) else source_latents
        if strength > 0 and not len(timesteps):
            notices.append(f"strength {strength:g} of {num_inference_steps} steps rounds to no denoising step: the source came back through the VAE")

        # 3. Denoise; outside the mask the source, noised to the next step, replaces the latents.
        after_step = None
        if mask_array is not None:
            keep = editing.latent_mask(mask_array, tuple(source_latents.shape[-2:]))

            def after_step(index: int, current: torch.Tensor) -> torch.Tensor:
                target = source_latents
                if index + 1 < len(timesteps):
                    target = scheduler.add_noise(source_latents, noise, timesteps[index + 1:index + 2])
                return keep * current + (1.0 - keep) * target

        latents = self.denoise(scheduler, latents, timesteps, text_states, text_mask, guidance_scale, callback_on_step_end, after_step,
                               backend=backend)

        # 4. Decode, and put the source pixels back outside the mask.
        decoded = np.ascontiguousarray(self.decode_latents(latents, backend, generator)[0, 0].numpy(), dtype=np.float32)
        edited = editing.composite(decoded, source, mask_array)
        metadata = {
            "model": self.model_name,
            "weights_sha256": self.weights_hash,
            "kind": "edited real radiograph (text-guided, SDEdit)",
            "source_image_id": source_id or "",
            "mask": mask_description,
            "region": mask if isinstance(mask, str) else "",
            "outside_mask": "source pixels composited back (Gaussian feather, sigma "
                            f"{editing.FEATHER_SIGMA:g} px)" if mask_array is not None else "",
            "prompt": prompt,
            "negative_prompt": negative_prompt if use_guidance and negative_prompt is not None else "",
            "strength": strength,
            "sampler": sampler,
            "steps": num_inference_steps,
            "denoising_steps": int(len(timesteps)),
            "guidance": float(guidance_scale),
            "seed": seed,
            "height": size,
            "width": size,
            "precision": self.runtime_models(backend, size, size).precision,
            "backend": backend,
            "synthetic": True,
        }
        return editing.build_result(source, edited, mask_array, metadata, notices)
