"""The image autoencoder: a 1-channel diffusers `AutoencoderKL` with 8x spatial compression."""
from __future__ import annotations

from diffusers import AutoencoderKL

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


def build_autoencoder(config: dict | None = None) -> AutoencoderKL:
    """An untrained autoencoder from an architecture dict (defaults to the shipped one)."""
    return AutoencoderKL(**(config or DEFAULT_AUTOENCODER_CONFIG))


def downsampling_factor(autoencoder: AutoencoderKL) -> int:
    return 2 ** (len(autoencoder.config.block_out_channels) - 1)
