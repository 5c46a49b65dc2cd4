"""The image autoencoder: a 1-channel diffusers `AutoencoderKL` (the shipped one compresses 8x per side)."""
from __future__ import annotations

import re
from pathlib import Path

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
    (a resnet adds its residual branch to its input), so fine-tuning starts from the trained autoencoder.
    """
    target_state = target.state_dict()
    source_state = source.state_dict()
    missing = sorted(set(target_state) - set(source_state))
    unexpected = sorted(set(source_state) - set(target_state))
    reshaped = sorted(key for key in set(source_state) & set(target_state) if source_state[key].shape != target_state[key].shape)
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
