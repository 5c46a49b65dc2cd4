"""The image autoencoder: a 1-channel diffusers `AutoencoderKL` (the shipped one compresses 8x per side)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import Decoder
from safetensors.torch import load_file

from xray_generator.weights import MANIFEST_NAME, verify_manifest

# The shipped architecture. Convolution-only (no mid-block attention) so that training on crops
# transfers to full frames: every output pixel sees the same receptive field wherever it is.
DEFAULT_AUTOENCODER_CONFIG: dict = {
    "in_channels": 1,
    "out_channels": 1,
    "latent_channels": 8,
    "block_out_channels": [32, 64, 96, 128],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "mid_block_add_attention": False,
    "sample_size": 256,
}


# diffusers' AutoencoderKL builds its encoder with `layers_per_block` resnets per block and its
# decoder one deeper. Our one extension is `decoder_layers_per_block`, which sets the decoder's
# depth on its own. With it either half can grow while the other stays exactly as it was: a
# deeper decoder keeps the latent space a trained UNet depends on, and a deeper encoder
# (`layers_per_block` raised, `decoder_layers_per_block` kept) keeps generation unchanged.
DECODER_DEPTH_KEY = "decoder_layers_per_block"
# The second extension, `latent_packing` r: the latent the rest of the project sees is the
# autoencoder's own latent pixel-unshuffled by r, (C, H, W) -> (C r², H/r, W/r). A 4x autoencoder
# with 4 channels at 64x64 then hands the UNet 16 channels at 32x32: the UNet costs what it does on
# an 8x latent, while the autoencoder keeps 4x spatial detail. It is a fixed permutation of the
# same numbers, so the KL term and the posterior are unchanged, and a model trained without
# packing gets it by `pack_latents` with the same weights.
LATENT_PACKING_KEY = "latent_packing"
# The third, `decoder_noise_blocks` n: the resnets of the decoder's last n up-blocks (the finest
# scales) add per-pixel Gaussian noise times a learned per-channel strength to their output, as
# StyleGAN's generator does. Why: a film's finest detail (grain, trabecular texture) is not in a
# compressed latent, so a deterministic decoder trained on pixel losses draws its blurred mean, and
# an adversarial term on such a decoder drew worm-like false texture (realism issue). With a noise
# source the decoder can draw texture of the right statistics that the latent does not fix. The
# strengths start at zero, so a warm-started decoder starts exactly as its source. The noise is drawn
# from `set_decoder_noise_generator`'s generator (seeded per image for repeatable output) or, if
# none is set, from torch's global generator.
DECODER_NOISE_KEY = "decoder_noise_blocks"
NOISE_STRENGTH = "noise_strength"


class _LatentPackingConv(torch.nn.Conv2d):
    """A copy of one of the autoencoder's 1x1 convolutions (same parameter names) with a fixed packing factor."""

    def __init__(self, conv: torch.nn.Conv2d, factor: int):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding)
        self.load_state_dict(conv.state_dict())
        self.factor = factor


class _PackingQuantConv(_LatentPackingConv):
    """quant_conv, then pixel-unshuffle of its moments.

    The moments are [mean (C), log-variance (C)]; pixel-unshuffle keeps each channel's r² offsets
    together (channel c -> c r² ... c r² + r² - 1), so the mean still comes first and diffusers'
    `DiagonalGaussianDistribution` splits the packed moments correctly.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(super().forward(x), self.factor)


class _UnpackingPostQuantConv(_LatentPackingConv):
    """Pixel-shuffle of a packed latent back to the autoencoder's own grid, then post_quant_conv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pixel_shuffle(x, self.factor))


def _add_noise(resnet: torch.nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    noise = getattr(resnet, "noise_input", None)  # given, as in an exported graph (`decoder_noise_inputs`)
    if noise is None:
        noise = torch.randn(output.shape, generator=getattr(resnet, "noise_generator", None), dtype=torch.float32, device=output.device)
    return output + resnet.noise_strength.view(1, -1, 1, 1).to(output.dtype) * noise.to(output.dtype)


def add_decoder_noise(autoencoder: AutoencoderKL, blocks: int) -> AutoencoderKL:
    """Give the resnets of the decoder's last `blocks` up-blocks a zero-initialised noise input, in place."""
    if blocks <= 0:
        return autoencoder
    up_blocks = autoencoder.decoder.up_blocks
    if blocks > len(up_blocks):
        raise ValueError(f"{DECODER_NOISE_KEY} is {blocks} but the decoder has {len(up_blocks)} up-blocks")
    for block in up_blocks[len(up_blocks) - blocks:]:
        for resnet in block.resnets:
            resnet.register_parameter(NOISE_STRENGTH, torch.nn.Parameter(torch.zeros(resnet.conv2.out_channels)))
            resnet.register_forward_hook(_add_noise)
    autoencoder.register_to_config(**{DECODER_NOISE_KEY: blocks})
    return autoencoder


def decoder_noise_modules(autoencoder: AutoencoderKL) -> list[torch.nn.Module]:
    """The decoder's resnets that add noise (none for a deterministic decoder)."""
    return [module for module in autoencoder.decoder.modules() if hasattr(module, NOISE_STRENGTH)]


def set_decoder_noise_generator(autoencoder: AutoencoderKL, generator: torch.Generator | None) -> None:
    """Draw the decoder's noise from `generator` (None: torch's global generator)."""
    for module in decoder_noise_modules(autoencoder):
        module.noise_generator = generator


def decoder_noise_shapes(autoencoder: AutoencoderKL, latent_shape: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """The shape of each noise draw when decoding latents of `latent_shape` (as the UNet sees them), in the order drawn."""
    batch, _, height, width = latent_shape
    packing = latent_packing(autoencoder)
    height, width = height * packing, width * packing  # the autoencoder's own grid
    shapes = []
    for index, block in enumerate(autoencoder.decoder.up_blocks):
        scale = 2 ** sum(1 for earlier in autoencoder.decoder.up_blocks[:index] if earlier.upsamplers)
        shapes += [(batch, resnet.conv2.out_channels, height * scale, width * scale) for resnet in block.resnets if hasattr(resnet, NOISE_STRENGTH)]
    return shapes


def draw_decoder_noise(autoencoder: AutoencoderKL, latent_shape: tuple[int, ...], generator: torch.Generator | None) -> list[torch.Tensor]:
    """The noise a decoding of `latent_shape` draws from `generator`: the same numbers the decoder's own draws would be."""
    return [torch.randn(shape, generator=generator, dtype=torch.float32) for shape in decoder_noise_shapes(autoencoder, latent_shape)]


def decoder_noise_inputs(autoencoder: AutoencoderKL, noise: Sequence[torch.Tensor] | None) -> None:
    """Make the decoder add these tensors (one per noisy resnet, `decoder_noise_shapes` order) instead of drawing; None draws again."""
    modules = decoder_noise_modules(autoencoder)
    if noise is not None and len(noise) != len(modules):
        raise ValueError(f"the decoder has {len(modules)} noise inputs, got {len(noise)} tensors")
    for index, module in enumerate(modules):
        module.noise_input = None if noise is None else noise[index]


def latent_packing(autoencoder: AutoencoderKL) -> int:
    """The autoencoder's packing factor (1: its latent is handed on as it is)."""
    return getattr(autoencoder.config, LATENT_PACKING_KEY, 1)


def pack_latents(autoencoder: AutoencoderKL, factor: int) -> AutoencoderKL:
    """Make `autoencoder` encode to (and decode from) latents pixel-unshuffled by `factor`, in place.

    The weights are untouched (the convolutions keep their parameter names), so a checkpoint
    trained without packing loads into a packed model and the reverse.
    """
    if factor == 1 or latent_packing(autoencoder) == factor:
        return autoencoder
    if latent_packing(autoencoder) != 1:
        raise ValueError("this autoencoder's latents are packed already")
    if autoencoder.quant_conv is None or autoencoder.post_quant_conv is None:
        raise ValueError("latent packing needs the autoencoder's quant_conv and post_quant_conv")
    autoencoder.quant_conv = _PackingQuantConv(autoencoder.quant_conv, factor)
    autoencoder.post_quant_conv = _UnpackingPostQuantConv(autoencoder.post_quant_conv, factor)
    autoencoder.register_to_config(**{LATENT_PACKING_KEY: factor})
    return autoencoder


def build_autoencoder(config: dict | None = None) -> AutoencoderKL:
    """An untrained autoencoder from an architecture dict (defaults to the shipped one)."""
    config = dict(config or DEFAULT_AUTOENCODER_CONFIG)
    decoder_layers = config.pop(DECODER_DEPTH_KEY, None)
    packing = config.pop(LATENT_PACKING_KEY, 1)
    noise_blocks = config.pop(DECODER_NOISE_KEY, 0)
    autoencoder = AutoencoderKL(**config)
    if decoder_layers is not None and decoder_layers != autoencoder.config.layers_per_block:
        cfg = autoencoder.config
        autoencoder.decoder = Decoder(
            in_channels=cfg.latent_channels,
            out_channels=cfg.out_channels,
            up_block_types=cfg.up_block_types,
            block_out_channels=cfg.block_out_channels,
            layers_per_block=decoder_layers,
            norm_num_groups=cfg.norm_num_groups,
            act_fn=cfg.act_fn,
            mid_block_add_attention=cfg.mid_block_add_attention,
        )
        autoencoder.register_to_config(**{DECODER_DEPTH_KEY: decoder_layers})
    add_decoder_noise(autoencoder, noise_blocks)
    return pack_latents(autoencoder, packing)


def load_autoencoder(folder: str | Path) -> AutoencoderKL:
    """Load a saved autoencoder folder (config.json + safetensors), deeper decoders included.

    `AutoencoderKL.from_pretrained` would drop a deeper decoder's extra layers with only a warning,
    so every loader in the project goes through here and loads the weights strictly.
    """
    folder = Path(folder)
    if (folder / MANIFEST_NAME).is_file():  # an exported folder (train_vae export): its files must match their sha256
        verify_manifest(folder)
    config = {key: value for key, value in AutoencoderKL.load_config(folder).items() if not key.startswith("_")}
    autoencoder = build_autoencoder(config)
    autoencoder.load_state_dict(load_file(str(folder / "diffusion_pytorch_model.safetensors")), strict=True)
    return autoencoder.eval()


def warm_start_autoencoder(target: AutoencoderKL, source: AutoencoderKL) -> None:
    """Copy `source` into `target`, whose encoder or decoder may be deeper; the result encodes and
    decodes exactly as `source`.

    Each extra resnet has its last convolution zeroed, which makes it the identity
    (a resnet adds its residual branch to its input), and noise strengths the source lacks stay zero,
    so fine-tuning starts from the trained autoencoder.
    """
    target_state = target.state_dict()
    source_state = source.state_dict()
    missing = sorted(set(target_state) - set(source_state))
    unexpected = sorted(set(source_state) - set(target_state))
    reshaped = sorted(key for key in set(source_state) & set(target_state) if source_state[key].shape != target_state[key].shape)
    missing = [key for key in missing if not key.endswith("." + NOISE_STRENGTH)]
    extra = {key.rsplit(".", 2)[0] for key in missing}
    if unexpected or reshaped or any(not re.fullmatch(r"encoder\.down_blocks\.\d+\.resnets\.\d+|decoder\.up_blocks\.\d+\.resnets\.\d+", prefix) for prefix in extra):
        raise ValueError(
            "cannot warm-start: the architectures differ beyond encoder or decoder depth "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, other shapes {reshaped[:3]})"
        )
    target.load_state_dict(source_state, strict=False)
    with torch.no_grad():
        for prefix in extra:
            resnet = target.get_submodule(prefix)
            resnet.conv2.weight.zero_()
            resnet.conv2.bias.zero_()


def downsampling_factor(autoencoder: AutoencoderKL) -> int:
    """Image pixels per latent pixel along each side, as the UNet sees the latent (packing included)."""
    return 2 ** (len(autoencoder.config.block_out_channels) - 1) * latent_packing(autoencoder)


def latent_channels(autoencoder: AutoencoderKL) -> int:
    """Channels of the latent the UNet sees (packing included)."""
    return autoencoder.config.latent_channels * latent_packing(autoencoder) ** 2


def latent_description(autoencoder: AutoencoderKL) -> str:
    """e.g. "8x compression, 8 latent channels" or "4x compression, 4 latent channels packed 2x2 into 16 at 8x"."""
    config = autoencoder.config
    own = f"{2 ** (len(config.block_out_channels) - 1)}x compression, {config.latent_channels} latent channels"
    packing = latent_packing(autoencoder)
    if packing == 1:
        return own
    return f"{own} packed {packing}x{packing} into {latent_channels(autoencoder)} at {downsampling_factor(autoencoder)}x"


# ---------------------------------------------------------------------------- latent normalisation
# The UNet sees z' = (z - shift) * scale. Either one number each (`shift_factor`, `scaling_factor`, as Stable
# Diffusion) or one per latent channel (`latents_mean`, `latents_std`, as SD3; `scaling_factor` then 1). Why
# per channel: the f8c16 latent's channels differ 6x in spread (0.24-1.49 on a test film), and with one global
# scale the UNet's errors, about equal in every channel of z', are large against the quiet channels, which the
# decoder draws as bubbles; noise in proportion to each channel's spread decodes almost clean. Tried on the f8c16
# UNet (2026-12-07): crisper ribs, the same FID after 600 steps (README, realism); the shipped model uses one scale.
def latent_normalisation_fields(autoencoder_config: dict) -> dict:
    """The four config fields (of an autoencoder's config, a dict) that say how its latents are normalised for the UNet."""
    get = autoencoder_config.get
    return {"scaling_factor": float(get("scaling_factor", 1.0)), "shift_factor": float(get("shift_factor", 0.0) or 0.0),
            "latents_mean": get("latents_mean"), "latents_std": get("latents_std")}


def _per_channel(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    if len(values) != like.shape[1]:
        raise ValueError(f"per-channel latent statistics have {len(values)} channels, the latents {like.shape[1]}")
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, *([1] * (like.dim() - 2)))


def normalise_latents(latents: torch.Tensor, autoencoder_config) -> torch.Tensor:
    """Autoencoder latents -> the UNet's (zero mean, unit spread over the train set)."""
    fields = latent_normalisation_fields(autoencoder_config)
    if fields["latents_mean"] is not None:
        return (latents - _per_channel(fields["latents_mean"], latents)) / _per_channel(fields["latents_std"], latents) * fields["scaling_factor"]
    return (latents - fields["shift_factor"]) * fields["scaling_factor"]


def denormalise_latents(latents: torch.Tensor, autoencoder_config) -> torch.Tensor:
    """The UNet's latents -> the autoencoder's (the inverse of `normalise_latents`)."""
    fields = latent_normalisation_fields(autoencoder_config)
    if fields["latents_mean"] is not None:
        return latents / fields["scaling_factor"] * _per_channel(fields["latents_std"], latents) + _per_channel(fields["latents_mean"], latents)
    return latents / fields["scaling_factor"] + fields["shift_factor"]


def describe_latent_normalisation(autoencoder_config) -> str:
    fields = latent_normalisation_fields(autoencoder_config)
    if fields["latents_mean"] is not None:
        spread = fields["latents_std"]
        return f"normalised per channel ({len(spread)} means and spreads; spreads {min(spread):.3f}-{max(spread):.3f})"
    return f"scaling {fields['scaling_factor']:.4f}, shift {fields['shift_factor']:.4f}"
