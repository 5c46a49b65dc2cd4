"""The denoiser: a compact diffusers `UNet2DConditionModel` with cross-attention at 16x16 and 8x8."""
from __future__ import annotations

from diffusers import UNet2DConditionModel

# About 25M parameters. No attention at the 32x32 level: 1024-token self-attention costs more CPU
# time than it buys at this size; global context comes from the two lower levels and the mid block.
DEFAULT_UNET_CONFIG: dict = {
    "sample_size": 32,
    "in_channels": 8,
    "out_channels": 8,
    "block_out_channels": [96, 192, 288],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "cross_attention_dim": 384,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}


def build_unet(config: dict | None = None) -> UNet2DConditionModel:
    return UNet2DConditionModel(**(config or DEFAULT_UNET_CONFIG))
