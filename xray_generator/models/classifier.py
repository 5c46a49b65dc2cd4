"""A multi-label chest X-ray classifier trained from random initialisation on our data.

Its penultimate features are the project's domain feature space: pretrained Inception or
torchxrayvision weights cannot be fetched here, and ImageNet features know nothing of radiographs.
The label heads are data (the config's ``labels``): vocabulary findings with enough training
support, plus attributes derived from the metadata (``Pediatric``).

    loaded = load_classifier("weights/classifier")   # verifies sha256 against MANIFEST.json
    loaded.predict_proba(images)                     # (N, L) probabilities
    loaded.feature_extractor(images)                 # (N, D) penultimate features
    grad_cam(loaded, image, "COVID-19")              # (H, W) heatmap in [0, 1]
    classifier_for_inference(model, config, "fold-0")  # the same wrapper for a network trained in memory
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from xray_generator.data.datasets import load_images_uint8
from xray_generator.data.manifest import Manifest, split_labels
from xray_generator.data.prompts import age_group
from xray_generator.evaluation.features import TorchFeatureExtractor
from xray_generator.io import atomic_save_safetensors
from xray_generator.precision import cpu_bf16_autocast
from xray_generator.vocabulary import KNOWN_LABELS
from xray_generator.weights import WeightsError, sha256_file, verify_manifest

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# Heads that are not findings but attributes of the patient, read from other metadata columns.
# "Pediatric" follows the prompt builder's age groups: every Kermany image (children aged 1-5)
# and any image with a recorded age under 18. It is always known, unlike the findings.
DERIVED_LABELS: dict[str, Callable[[pd.Series], bool]] = {
    "Pediatric": lambda row: age_group(row)[0] == "pediatric",
}

# Which images a finding head learns from (config ``model.label_scope``). "all_sources": every
# labelled image, an absent label being a negative (the shipped classifier). "annotating_sources":
# only images of sources that record that finding (`annotating_sources`), for heads of findings
# that one source annotates, such as NIH's 14.
LABEL_SCOPES = ("all_sources", "annotating_sources")

# Penultimate feature width of each supported torchvision architecture.
ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "densenet121")


# ---------------------------------------------------------------------------- labels
def check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    """Every head must be a vocabulary label or a derived attribute, each named once."""
    labels = tuple(labels)
    if not labels:
        raise ValueError("the classifier needs at least one label")
    unknown = [label for label in labels if label not in KNOWN_LABELS and label not in DERIVED_LABELS]
    if unknown:
        raise ValueError(f"unknown classifier labels {unknown}; use names from xray_generator.vocabulary or {sorted(DERIVED_LABELS)}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"classifier labels repeat: {labels}")
    return labels


def annotating_sources(manifest: Manifest, labels: Sequence[str]) -> dict[str, list[str]]:
    """For each finding head, the sources of `manifest` that record it (at least one image carries it).

    The multi-label option ``model.label_scope = "annotating_sources"`` uses this: NIH records
    its 14 findings and the COVID / pneumonia collections do not, so a Kermany film without a
    'Cardiomegaly' label is not a cardiomegaly negative, only unread. Derived heads are left out
    (they are known for every image).
    """
    labels = check_labels(labels)
    table = manifest.table
    found = table["labels"].map(lambda value: set(split_labels(None if pd.isna(value) else str(value))))
    return {
        label: sorted(table.loc[found.map(lambda names, label=label: label in names).astype(bool), "source"].astype(str).unique())
        for label in labels
        if label not in DERIVED_LABELS
    }


def label_targets(
    manifest: Manifest, labels: Sequence[str], annotated_sources: dict[str, Sequence[str]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Targets (N, L) float32 in {0, 1} and a mask (N, L) bool of which targets are known.

    An image with an empty `labels` field has no finding recorded in its source ("todo",
    "Unknown", "Inconclusive"); it is neither positive nor negative for any finding, so its
    finding targets are masked out. Derived attributes are known for every image.
    With `annotated_sources` (label -> sources, see `annotating_sources`), a finding is also
    unknown on every image of a source not listed for it.
    """
    labels = check_labels(labels)
    if annotated_sources is not None:
        missing = [label for label in labels if label not in DERIVED_LABELS and label not in annotated_sources]
        if missing:
            raise ValueError(f"annotated_sources names no sources for {missing}")
    table = manifest.table
    found = [set(split_labels(None if pd.isna(value) else str(value))) for value in table["labels"]]
    has_finding = np.array([bool(names) for names in found])
    targets = np.zeros((len(table), len(labels)), dtype=np.float32)
    known = np.zeros((len(table), len(labels)), dtype=bool)
    for j, label in enumerate(labels):
        if label in DERIVED_LABELS:
            rule = DERIVED_LABELS[label]
            targets[:, j] = [rule(row) for _, row in table.iterrows()]
            known[:, j] = True
        else:
            targets[:, j] = [label in names for names in found]
            known[:, j] = has_finding
            if annotated_sources is not None:
                known[:, j] &= table["source"].astype(str).isin(set(annotated_sources[label])).to_numpy()
    return targets, known


def head_targets(manifest: Manifest, model_config: dict) -> tuple[np.ndarray, np.ndarray]:
    """`label_targets` for a classifier's ``model`` config, with its ``annotated_sources`` when it has them."""
    return label_targets(manifest, model_config["labels"], model_config.get("annotated_sources"))


def supported_labels(manifest: Manifest, min_positives: int = 40) -> list[str]:
    """Vocabulary findings with at least `min_positives` images in `manifest`, most common first.

    How the config's label list was chosen (on the train split); derived heads are added by hand.
    """
    counts = manifest.label_counts()
    return [label for label, n in counts.items() if n >= min_positives and label in KNOWN_LABELS]


def label_slug(label: str) -> str:
    """'Bacterial pneumonia' -> 'bacterial_pneumonia', for CSV column names."""
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")


# ---------------------------------------------------------------------------- network
class ChestXrayClassifier(nn.Module):
    """A 1-channel torchvision backbone, pooled to (B, D), and one linear head of L logits.

    `features(x)` is the penultimate (pooled, pre-logit) representation; `forward(x)` the logits.
    `cam_layer` is the last convolutional block, the layer Grad-CAM reads.
    """

    def __init__(self, backbone: nn.Module, cam_layer_name: str, feature_dim: int, labels: Sequence[str]):
        super().__init__()
        self.backbone = backbone
        # A name, not a second reference: a submodule held twice would be saved twice.
        self.cam_layer_name = cam_layer_name
        self.feature_dim = feature_dim
        self.labels = check_labels(labels)
        self.head = nn.Linear(feature_dim, len(self.labels))

    @property
    def cam_layer(self) -> nn.Module:
        return self.backbone.get_submodule(self.cam_layer_name)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _one_channel_conv(conv: nn.Conv2d) -> nn.Conv2d:
    return nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)


def build_classifier(config: dict) -> ChestXrayClassifier:
    """A randomly initialised classifier from the config's ``model`` section (or the section itself).

    Keys: ``arch`` (one of `ARCHITECTURES`, default "resnet18") and ``labels``. ResNet-18 is the
    default because DenseNet-121 runs several times slower per image on a 2-core CPU.
    """
    from torchvision import models

    model_cfg = config.get("model", config)
    arch = model_cfg.get("arch", "resnet18")
    labels = model_cfg["labels"]
    if arch.startswith("resnet") and arch in ARCHITECTURES:
        net = getattr(models, arch)(weights=None)
        net.conv1 = _one_channel_conv(net.conv1)
        feature_dim = net.fc.in_features
        net.fc = nn.Identity()  # the network now ends at the global average pool: (B, D)
        cam_layer = "layer4"
    elif arch == "densenet121":
        net = models.densenet121(weights=None)
        net.features.conv0 = _one_channel_conv(net.features.conv0)
        feature_dim = net.classifier.in_features
        net.classifier = nn.Identity()
        cam_layer = "features"
    else:
        raise ValueError(f"unknown classifier arch {arch!r}; expected one of {ARCHITECTURES}")
    return ChestXrayClassifier(net, cam_layer, feature_dim, labels)


# ---------------------------------------------------------------------------- preprocessing
def preprocessor(input_size: int | tuple[int, int]) -> TorchFeatureExtractor:
    """The classifier's resize (TorchFeatureExtractor's), with no normalisation.

    Training caches images through this, so a cached training image and an image given to
    `predict_proba` or the feature extractor are resized by the same code.
    """
    return TorchFeatureExtractor(nn.Identity(), input_size=input_size, mean=(0.0,), std=(1.0,), channels=1)


def resize_images(images: Sequence[np.ndarray], input_size: int | tuple[int, int], batch_size: int = 64) -> np.ndarray:
    """Float (H, W) images in [0, 1] of any sizes -> uint8 (N, h, w) at the classifier's input size."""
    prep = preprocessor(input_size)
    out = np.empty((len(images), *prep.input_size), dtype=np.uint8)
    for start in range(0, len(images), batch_size):
        batch = [np.asarray(images[i]) for i in range(start, min(start + batch_size, len(images)))]
        x = prep._prepare(batch, start)[:, 0]
        out[start : start + len(batch)] = (x.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
    return out


# ---------------------------------------------------------------------------- cached training-size images
def cached_split_images(manifest: Manifest, input_size: int, cache_root: Path) -> torch.Tensor:
    """uint8 (N, S, S) images of `manifest` at the training size, decoded and resized once.

    The cache file is named by a digest of the rows and the size, so a changed manifest or
    resolution never reads a stale cache.
    """
    digest = hashlib.sha256((manifest.table.to_csv(index=False) + f"|{input_size}").encode()).hexdigest()[:12]
    cache_file = cache_root / f"images-{input_size}px-{digest}.safetensors"
    if cache_file.is_file():
        return load_file(str(cache_file))["images"]
    images = load_images_uint8(manifest)
    # The classifier's own resize (TorchFeatureExtractor's), so inference sees images resized alike.
    resized = resize_images([image.astype(np.float32) / 255.0 for image in images], input_size)
    tensor = torch.from_numpy(resized)
    atomic_save_safetensors({"images": tensor}, cache_file)
    return tensor


@torch.no_grad()
def predict_cached(model, images: torch.Tensor, mean: float, std: float, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities) of cached uint8 images, bf16 autocast as in training."""
    model.eval()
    logits = []
    for start in range(0, len(images), batch_size):
        x = (images[start : start + batch_size, None].float() / 255.0 - mean) / std
        with cpu_bf16_autocast():
            logits.append(model(x).float())
    out = torch.cat(logits)
    return out.numpy(), torch.sigmoid(out).numpy()


# ---------------------------------------------------------------------------- loading
@dataclass
class LoadedClassifier:
    """A verified classifier folder, ready for inference (all in float32, eval mode).

    Attributes
    ----------
    model : ChestXrayClassifier
        The network in eval mode (for Grad-CAM).
    labels : tuple of str
        Head names, in logit order.
    input_size : (int, int)
        Height and width every image is resized to.
    feature_extractor : TorchFeatureExtractor
        Images (N, H, W) in [0, 1] -> (N, D) penultimate features; ``settings`` name the
        network and the weights hash, for storing next to any metric computed on them.
    config : dict
        The folder's config.json.
    weights_hash : str
        `xray_generator.weights.weights_hash` of the folder.
    """

    model: ChestXrayClassifier
    labels: tuple[str, ...]
    input_size: tuple[int, int]
    feature_extractor: TorchFeatureExtractor
    config: dict
    weights_hash: str
    _probabilities: TorchFeatureExtractor = field(repr=False)

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities (N, L) float32 for float grayscale images (H, W) in [0, 1], any size."""
        return self._probabilities(images)

    def normalise(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """The exact network input (N, 1, h, w) for `images`: resized and normalised."""
        return self.feature_extractor._prepare([np.asarray(image) for image in images], 0)


def load_classifier(folder: str | Path, batch_size: int = 32) -> LoadedClassifier:
    """Load `config.json` and `model.safetensors` from `folder` after checking MANIFEST.json.

    Raises `xray_generator.weights.WeightsError` if a file is missing, altered or unlisted.
    """
    folder = Path(folder)
    weights_hash = verify_manifest(folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    model = build_classifier(config)
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
    except RuntimeError as error:
        raise WeightsError(f"{folder / WEIGHTS_NAME} does not fit the classifier in {CONFIG_NAME}: {error}") from error
    # The model file's sha256, not the manifest hash: rewriting the model card changes the manifest
    # but not the features, and features are comparable exactly when this hash matches.
    return classifier_for_inference(model, config, weights_hash, sha256_file(folder / WEIGHTS_NAME), batch_size)


def classifier_for_inference(
    model: ChestXrayClassifier, config: dict, weights_hash: str, weights_sha256: str | None = None, batch_size: int = 32
) -> LoadedClassifier:
    """Wrap a classifier for inference (eval mode, float32), as `load_classifier` does a verified folder.

    Also for networks trained in memory (the augmentation experiment's fold models), so that
    `grad_cam` and `predict_proba` need no round trip through disk. ``config["model"]`` (or
    `config` itself) gives ``input_size``, ``mean`` and ``std``; `weights_hash` and
    `weights_sha256` only label the result (``weights_sha256`` goes into the feature settings).
    """
    model.eval()
    model_cfg = config.get("model", config)
    size = model_cfg["input_size"]
    mean, std = (float(model_cfg["mean"]),), (float(model_cfg["std"]),)
    arch = model_cfg.get("arch", "resnet18")
    settings = {"network": f"cxr classifier {arch} penultimate ({model.feature_dim}-d)", "weights_sha256": weights_sha256}
    features = TorchFeatureExtractor(model.backbone, input_size=size, mean=mean, std=std, channels=1, batch_size=batch_size, settings=settings)
    probabilities = TorchFeatureExtractor(
        nn.Sequential(model, nn.Sigmoid()), input_size=size, mean=mean, std=std, channels=1, batch_size=batch_size,
        settings={**settings, "network": f"cxr classifier {arch} probabilities"},
    )
    return LoadedClassifier(model, model.labels, features.input_size, features, config, weights_hash, probabilities)


# ---------------------------------------------------------------------------- explanation
def grad_cam(loaded: LoadedClassifier, image: np.ndarray, label: str) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) of one label's logit on the last convolutional block.

    Parameters
    ----------
    loaded : LoadedClassifier
    image : (H, W) float array in [0, 1]
    label : str
        One of ``loaded.labels``.

    Returns
    -------
    heatmap : (H, W) float32 in [0, 1]
        Where evidence for the label lies, upsampled to the image's size; all zeros when no
        region raises the logit.
    """
    if label not in loaded.labels:
        raise ValueError(f"label {label!r} is not one of the classifier's labels {loaded.labels}")
    image = np.asarray(image)
    x = loaded.normalise([image])
    model, index = loaded.model, loaded.labels.index(label)
    captured: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["maps"] = output

    handle = model.cam_layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logit = model(x)[0, index]
            model.zero_grad(set_to_none=True)
            logit.backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    maps, grads = captured["maps"].detach(), captured["maps"].grad
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * maps).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=image.shape, mode="bilinear", align_corners=False)[0, 0]
    peak = cam.max()
    cam = cam / peak if peak > 0 else torch.zeros_like(cam)
    return cam.clamp(0, 1).numpy().astype(np.float32)
