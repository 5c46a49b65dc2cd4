"""A perceptual loss on the features of our own chest X-ray classifier (`weights/classifier`).

ImageNet VGG features know nothing of radiographs and cannot be fetched here; the classifier's
ResNet stages were trained on these films. The loss compares channel-normalised activations of
chosen stages (LPIPS without the learned weights, Zhang et al. 2018): differences in texture
and structure count, a uniform brightness shift counts little.

    classifier = load_optional_classifier()          # None, with a warning, when no classifier is shipped
    loss_fn = classifier_perceptual_loss(classifier)
    loss = loss_fn(prediction, target)               # (B, 1, H, W) in [-1, 1]
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from xray_generator.paths import weights_dir

log = logging.getLogger(__name__)

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


class ClassifierPerceptualLoss(nn.Module):
    """Mean over `layers` of the squared distance of unit-normalised channel vectors, per position.

    The classifier is frozen and kept in eval mode (its BatchNorm uses running statistics), so the
    loss never changes it. Inputs in [-1, 1] are mapped to the classifier's normalisation; they
    are not resized (the stages are convolutional; at the model's size they see the same film).
    """

    def __init__(self, backbone: nn.Module, mean: float, std: float, layers: Sequence[str] = ("layer1", "layer2", "layer3")):
        super().__init__()
        unknown = [layer for layer in layers if layer not in RESNET_STAGES]
        if unknown or not layers:
            raise ValueError(f"perceptual layers must be a non-empty subset of {RESNET_STAGES}, got {list(layers)}")
        self.backbone = backbone.eval().requires_grad_(False)
        self.mean, self.std = float(mean), float(std)
        self.layers = tuple(layers)
        self.depth = max(RESNET_STAGES.index(layer) for layer in self.layers)

    def train(self, mode: bool = True) -> "ClassifierPerceptualLoss":
        # Stays in eval mode whatever the trainer asks: BatchNorm statistics are the classifier's.
        return super().train(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        net = self.backbone
        h = ((x + 1.0) / 2.0 - self.mean) / self.std
        h = net.maxpool(net.relu(net.bn1(net.conv1(h))))
        out = []
        for name in RESNET_STAGES[: self.depth + 1]:
            h = getattr(net, name)(h)
            if name in self.layers:
                out.append(h.float())
        return out

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            wanted = self.features(target)
        total = prediction.new_zeros((), dtype=torch.float32)
        for got, ref in zip(self.features(prediction), wanted):
            got = got / (got.norm(dim=1, keepdim=True) + 1e-8)
            ref = ref / (ref.norm(dim=1, keepdim=True) + 1e-8)
            total = total + (got - ref).pow(2).sum(dim=1).mean()
        return total / len(self.layers)


def load_optional_classifier(folder: str | Path | None = None):
    """The verified classifier in `folder` (default weights/classifier), or None with a logged warning.

    Trainers use it for the perceptual term and for validation scores, and carry on without both
    when no classifier has been shipped yet.
    """
    from xray_generator.models.classifier import load_classifier
    from xray_generator.weights import WeightsError

    folder = Path(folder) if folder is not None else weights_dir() / "classifier"
    if not (folder / "MANIFEST.json").is_file():
        log.warning("no chest X-ray classifier in %s: training without the perceptual loss term and classifier scores", folder)
        return None
    try:
        return load_classifier(folder)
    except WeightsError as error:
        log.warning("the classifier in %s did not load (%s): training without the perceptual loss term and classifier scores", folder, error)
        return None


def classifier_perceptual_loss(loaded, layers: Sequence[str] = ("layer1", "layer2", "layer3")) -> ClassifierPerceptualLoss | None:
    """The perceptual loss on a `LoadedClassifier`, or None (with a warning) when there is none or it is not a ResNet."""
    if loaded is None:
        return None
    model_cfg = loaded.config["model"]
    if not str(model_cfg.get("arch", "resnet18")).startswith("resnet"):
        log.warning("the classifier is a %s, not a ResNet: training without the perceptual loss term", model_cfg.get("arch"))
        return None
    return ClassifierPerceptualLoss(loaded.model.backbone, model_cfg["mean"], model_cfg["std"], layers)
