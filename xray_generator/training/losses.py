"""Differentiable losses used by the trainers."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian_kernel(size: int, sigma: float, device, dtype) -> torch.Tensor:
    """A normalised 1-D Gaussian of `size` taps."""
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    g = _gaussian_kernel(size, sigma, device, dtype)
    return (g[:, None] * g[None, :])[None, None]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, C, H, W) images blurred by a Gaussian of `sigma` px (window 6 sigma + 1, reflect padding)."""
    radius = max(1, int(round(3 * sigma)))
    kernel = _gaussian_kernel(2 * radius + 1, sigma, x.device, x.dtype).expand(x.shape[1], 1, -1)
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel[:, :, None, :], groups=x.shape[1])
    return F.conv2d(x, kernel[:, :, :, None], groups=x.shape[1])


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


def local_amplitude_loss(prediction: torch.Tensor, target: torch.Tensor, patch: int = 16, floor: float = 0.01) -> torch.Tensor:
    """L1 between the log Fourier amplitudes of overlapping, Hann-windowed `patch`-px patches.

    Pixel losses pay a decoder to blur any detail the latent leaves uncertain (the mean of the
    possible textures is smooth), which is why an L1/SSIM-trained round trip lacks a film's fine
    structure. This term is blind to phase: it asks for as much energy at each frequency, in each
    patch, as the film has there, not for its exact position. `floor` (in [-1, 1] pixel units, about
    the amplitude of 8-bit quantisation noise in one windowed patch) keeps the log from chasing noise.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
    window = torch.hann_window(patch, periodic=False, device=prediction.device, dtype=prediction.dtype)
    window = window[:, None] * window[None, :]

    def log_amplitude(x: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(x, patch, stride=patch // 2).transpose(1, 2).reshape(-1, patch, patch)
        patches = (patches - patches.mean(dim=(-2, -1), keepdim=True)) * window
        return torch.log(torch.fft.rfft2(patches).abs() + floor)

    return (log_amplitude(prediction) - log_amplitude(target)).abs().mean()


def band_power_loss(prediction: torch.Tensor, target: torch.Tensor, edges: tuple[float, ...], min_radius: float = 4.0) -> torch.Tensor:
    """L1 between each image's log10 mean power in radial frequency bands (`edges` in cycles per pixel).

    Unlike the local amplitude term, which compares each frequency of each small patch and so pays for the
    expected amplitude there, this compares the power of whole bands of each image: many frequencies
    averaged, so a decoder that draws texture from noise can meet it with texture of the right power
    (a random texture's amplitude at any one frequency is itself random). Bands whose upper edge lies
    within `min_radius` frequency steps of zero are skipped: a crop has too few frequencies there.
    Images are mean-removed and Hann-windowed, as the realism test's spectrum is.
    """
    if prediction.shape != target.shape or prediction.shape[-1] != prediction.shape[-2]:
        raise ValueError(f"need square images of one shape, got {tuple(prediction.shape)} and {tuple(target.shape)}")
    size = prediction.shape[-1]
    window = torch.hann_window(size, periodic=False, device=prediction.device, dtype=prediction.dtype)
    window = window[:, None] * window[None, :]
    radius = torch.hypot(torch.fft.fftfreq(size, device=prediction.device)[:, None], torch.fft.rfftfreq(size, device=prediction.device)[None, :])
    masks = [(radius >= low) & (radius < high + 1e-9) for low, high in zip(edges[:-1], edges[1:]) if high * size > min_radius]

    def band_log_power(x: torch.Tensor) -> torch.Tensor:
        power = torch.fft.rfft2((x - x.mean(dim=(-2, -1), keepdim=True)) * window).abs().pow(2)
        return torch.log10(torch.stack([power[..., mask].mean(dim=-1) for mask in masks], dim=-1) + 1e-10)

    return (band_log_power(prediction) - band_log_power(target)).abs().mean()


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """The 4-neighbour Laplacian of (N, C, H, W) images (replicate padding): the high-pass a film's texture lives in."""
    kernel = x.new_tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])


class PatchDiscriminator(torch.nn.Module):
    """A small PatchGAN: each output logit judges one overlapping patch as real or reconstructed.

    With `highpass`, it also sees the image's Laplacian (times `highpass_gain`; a film's Laplacian in
    [-1, 1] units is about 1/4 of the pixel range, so the gain gives both channels a similar spread).
    Texture is small next to anatomy in the pixels; given the high-pass directly, a discriminator
    learns to tell missing fine structure in tens of steps instead of hundreds.
    """

    def __init__(self, in_channels: int = 1, width: int = 32, layers: int = 3, highpass: bool = False, highpass_gain: float = 4.0):
        super().__init__()
        self.highpass, self.highpass_gain = highpass, float(highpass_gain)
        first_in = in_channels * (2 if highpass else 1)
        blocks: list[torch.nn.Module] = [torch.nn.Conv2d(first_in, width, 4, 2, 1), torch.nn.LeakyReLU(0.2, True)]
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
        if self.highpass:
            x = torch.cat([x, self.highpass_gain * laplacian(x)], dim=1)
        return self.net(x)


def adaptive_adversarial_weight(reconstruction_loss: torch.Tensor, generator_loss: torch.Tensor, last_layer: torch.Tensor,
                                max_weight: float = 1e4) -> torch.Tensor:
    """Esser et al. (2021)'s balance: the ratio of the two losses' gradient norms at the decoder's last layer.

    Scaling the adversarial term by it gives both terms the same pull on the output, whatever their
    magnitudes; detached, so the weight itself is not trained.
    """
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gen_grad = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gen_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
