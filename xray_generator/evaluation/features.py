"""Image features for the distribution metrics, from any torch network held locally.

A feature extractor is any callable that maps a batch of grayscale float images (N, H, W) in
[0, 1] to an (N, D) float array. `TorchFeatureExtractor` adapts a torch module to that shape;
`inception_feature_extractor` builds the InceptionV3 pool features FID is defined on.

Nothing here downloads weights. FID values are only comparable when computed with the same
weights, so every extractor carries a ``settings`` dict (network, input size, normalisation,
weights SHA-256) to store next to the numbers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xray_generator.weights import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class FeatureExtractor(Protocol):
    """A callable from images (N, H, W) float in [0, 1] to features (N, D) float."""

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


class TorchFeatureExtractor:
    """Wrap a torch module that returns features so it takes grayscale images in [0, 1].

    Each batch is resized to `input_size` (bilinear, antialiased when shrinking), repeated to
    `channels`, normalised per channel with `mean` and `std`, and run under ``torch.no_grad``
    with the module in eval mode.

    Parameters
    ----------
    module : torch.nn.Module
        Returns (B, D) features, or (B, C, h, w) maps that are averaged over space to (B, C).
        A tuple output (e.g. logits with auxiliary outputs) contributes its first element.
        The module is switched to eval mode and moved to `device`.
    input_size : int or (int, int), optional
        Height and width the module expects (default 299).
    mean, std : sequence of float, optional
        Per-channel normalisation after scaling to [0, 1] (default ImageNet statistics).
    channels : int, optional
        Input channels; the grayscale image is repeated (default 3).
    batch_size : int, optional
        Images per forward pass (default 32).
    device : str or torch.device, optional
        Where the module runs (default "cpu").
    bf16_autocast : bool, optional
        Run the forward pass under bfloat16 autocast (default False). Faster on recent CPUs and
        GPUs; features then differ from float32 ones in the third significant digit, so do not
        mix the two within one comparison.
    settings : dict, optional
        Description stored as the ``settings`` attribute (network name, weights hash); the
        preprocessing settings are added to it.

    Examples
    --------
    >>> extractor = TorchFeatureExtractor(my_encoder, input_size=224, channels=1, mean=(0.5,), std=(0.5,))
    >>> features = extractor(images)  # (N, D) float32
    """

    def __init__(
        self,
        module: nn.Module,
        input_size: int | tuple[int, int] = 299,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        channels: int = 3,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
        bf16_autocast: bool = False,
        settings: dict | None = None,
    ) -> None:
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"input_size must be a positive int or (height, width), got {input_size}")
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need one value per channel ({channels}), got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {tuple(std)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = torch.device(device)
        self.module = module.eval().to(self.device)
        self.input_size = size
        self.channels = channels
        self.batch_size = batch_size
        self.bf16_autocast = bf16_autocast
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, channels, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, channels, 1, 1)
        self.settings = dict(settings or {})
        self.settings.update(
            input_size=list(size), channels=channels, mean=list(mean), std=list(std),
            resize="bilinear, antialiased", bf16_autocast=bf16_autocast,
        )

    def _prepare(self, batch: list[np.ndarray], first_index: int) -> torch.Tensor:
        for offset, image in enumerate(batch):
            if image.ndim != 2:
                raise ValueError(f"images[{first_index + offset}] must be 2-D (H, W), got shape {image.shape}")
            if not np.all(np.isfinite(image)):
                raise ValueError(f"images[{first_index + offset}] contains NaN or inf")
            if image.min() < 0.0 or image.max() > 1.0:
                raise ValueError(f"images[{first_index + offset}] has values outside [0, 1]")
        if len({image.shape for image in batch}) != 1:
            # Resize one at a time so a batch may mix sizes.
            tensors = [self._prepare([image], first_index + i) for i, image in enumerate(batch)]
            return torch.cat(tensors)
        x = torch.from_numpy(np.stack(batch).astype(np.float32)).to(self.device)[:, None]
        if tuple(x.shape[-2:]) != self.input_size:
            shrinking = x.shape[-2] > self.input_size[0] or x.shape[-1] > self.input_size[1]
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=shrinking)
        x = x.expand(-1, self.channels, -1, -1)
        return (x - self._mean) / self._std

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16_autocast):
            out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.ndim == 4:
            out = out.mean(dim=(2, 3))
        if out.ndim != 2:
            raise ValueError(f"the module returned shape {tuple(out.shape)}; expected (B, D) or (B, C, h, w)")
        return out.float()

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Features of `images`, an (N, H, W) array or a list of 2-D arrays in [0, 1]."""
        if isinstance(images, np.ndarray) and images.ndim != 3:
            raise ValueError(f"images must be (N, H, W), got shape {images.shape}")
        if len(images) == 0:
            raise ValueError("images is empty")
        chunks = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                batch = [np.asarray(images[i]) for i in range(start, min(start + self.batch_size, len(images)))]
                chunks.append(self._features(self._prepare(batch, start)).cpu().numpy())
        return np.concatenate(chunks).astype(np.float32, copy=False)


def inception_feature_extractor(
    weights_path: str | Path | None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    bf16_autocast: bool = False,
) -> TorchFeatureExtractor:
    """InceptionV3 pool features (2048-d), the space FID and KID are defined in.

    Parameters
    ----------
    weights_path : str, Path or None
        A local safetensors file with a torchvision ``inception_v3`` state dict (ImageNet
        weights converted from ``Inception_V3_Weights.IMAGENET1K_V1``). Keys of the classifier
        (``fc.*``) and auxiliary head (``AuxLogits.*``) are ignored; any other missing or
        unexpected key is an error. None builds a randomly initialised network: it tests the
        plumbing and nothing else.
    batch_size, device, bf16_autocast
        See `TorchFeatureExtractor`.

    Returns
    -------
    extractor : TorchFeatureExtractor
        Maps (N, H, W) images in [0, 1] to (N, 2048) float32 features. Images are resized to
        299 × 299, repeated to 3 channels and normalised with ImageNet statistics; the network
        runs with ``transform_input=True``, the setting torchvision's ImageNet weights were
        trained with. Its ``settings`` record the weights' SHA-256.

    Notes
    -----
    Published FIDs use the TensorFlow Inception graph (``pt_inception-2015-12-05``), whose
    weights and some pooling layers differ from torchvision's. FIDs from this extractor are
    comparable with each other at equal N and equal weights hash, not with published numbers.
    """
    from safetensors.torch import load_file
    from torchvision.models import inception_v3

    # init_weights=False skips torchvision's slow truncated-normal initialisation, which loaded
    # weights overwrite anyway.
    network = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=True)
    network.fc = nn.Identity()  # the 2048-d average-pooled features, before the classifier
    settings: dict = {"network": "torchvision inception_v3 pool (2048-d)"}
    if weights_path is None:
        settings.update(weights="random initialisation", weights_sha256=None)
    else:
        path = Path(weights_path)
        if not path.is_file():
            raise ValueError(f"no Inception weights file at {path}")
        state = {
            key: tensor for key, tensor in load_file(str(path)).items()
            if not key.startswith(("fc.", "AuxLogits."))
        }
        try:
            missing, unexpected = network.load_state_dict(state, strict=False)
        except RuntimeError as error:  # a tensor of the wrong shape
            raise ValueError(f"{path} does not fit torchvision's inception_v3: {error}") from error
        if missing or unexpected:
            raise ValueError(
                f"{path} is not a torchvision inception_v3 state dict: missing {missing[:5]}"
                f"{'…' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}"
            )
        settings.update(weights=path.name, weights_sha256=sha256_file(path))
    return TorchFeatureExtractor(
        network, input_size=299, mean=IMAGENET_MEAN, std=IMAGENET_STD, channels=3,
        batch_size=batch_size, device=device, bf16_autocast=bf16_autocast, settings=settings,
    )
