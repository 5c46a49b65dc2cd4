"""Differentiable losses used by the trainers."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_loss(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """1 - mean SSIM (Gaussian window 11, sigma 1.5) for (N, 1, H, W) tensors."""
    window = _gaussian_window(11, 1.5, prediction.device, prediction.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x = F.conv2d(prediction, window)
    mu_y = F.conv2d(target, window)
    sigma_x = F.conv2d(prediction * prediction, window) - mu_x**2
    sigma_y = F.conv2d(target * target, window) - mu_y**2
    sigma_xy = F.conv2d(prediction * target, window) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2))
    return 1.0 - ssim.mean()


def gradient_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between image gradients: penalises blurred edges (ribs, vessel markings) that plain L1 tolerates."""
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(prediction) - dx(target)).abs().mean() + (dy(prediction) - dy(target)).abs().mean()


class PatchDiscriminator(torch.nn.Module):
    """A small PatchGAN: each output logit judges one overlapping patch as real or reconstructed."""

    def __init__(self, in_channels: int = 1, width: int = 32, layers: int = 3):
        super().__init__()
        blocks: list[torch.nn.Module] = [torch.nn.Conv2d(in_channels, width, 4, 2, 1), torch.nn.LeakyReLU(0.2, True)]
        channels = width
        for _ in range(1, layers):
            blocks += [
                torch.nn.Conv2d(channels, channels * 2, 4, 2, 1),
                torch.nn.GroupNorm(8, channels * 2),
                torch.nn.LeakyReLU(0.2, True),
            ]
            channels *= 2
        blocks.append(torch.nn.Conv2d(channels, 1, 4, 1, 1))
        self.net = torch.nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
