"""The denoiser: a compact diffusers `UNet2DConditionModel` with cross-attention at 16x16 and 8x8."""
from __future__ import annotations

import torch
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


def copy_matching_tensors(target: torch.nn.Module, source_state: dict[str, torch.Tensor]) -> list[str]:
    """Copy every tensor of `source_state` whose name and shape match one of `target`'s; return the names left as initialised.

    For a UNet on a new autoencoder's latents (another channel count): the inner layers, which see
    features rather than latents, start trained; `conv_in` and `conv_out` start fresh.
    """
    target_state = target.state_dict()
    matching = {key: value for key, value in source_state.items() if key in target_state and value.shape == target_state[key].shape}
    if len(matching) < len(target_state) // 2:
        raise ValueError(f"only {len(matching)} of {len(target_state)} tensors match the source: not the same architecture")
    target.load_state_dict({**target_state, **{key: value.to(target_state[key].dtype) for key, value in matching.items()}}, strict=True)
    return sorted(set(target_state) - set(matching))
