"""A multi-label head for the NIH findings, on the frozen classifier's penultimate features.

The shipped classifier (`weights/classifier`) has no heads for the 14 NIH findings, and
retraining it would change every committed metric that is measured in its feature space. This
head leaves it as it is: one L2-regularised logistic regression per finding reads the 512-d
features the classifier already produces. It is only valid on the features of the classifier
it was fitted on, so its config names that classifier's weights sha256 and loading checks it.

    head = load_finding_head("weights/finding_head", classifier)   # verifies MANIFEST.json and the classifier
    head.logits(classifier.feature_extractor(images))               # (N, L) log-odds, one column per finding

The folder holds `model.safetensors` (``mean``, ``scale``: (D,) feature standardisation;
``weight``: (L, D); ``bias``: (L,)), `config.json` (labels, the classifier's sha256, how each
head was fitted) and `README.md`, all pinned by `MANIFEST.json`. Fitting is in
`xray_generator.training.train_finding_head`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import torch
from safetensors.torch import load_file

from xray_generator.io import atomic_save_safetensors, atomic_write_text
from xray_generator.models.classifier import check_labels
from xray_generator.weights import WeightsError, verify_manifest, write_manifest

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TENSOR_NAMES = ("mean", "scale", "weight", "bias")


@dataclass(frozen=True)
class FindingHead:
    """Per-finding logistic regressions on standardised classifier features.

    Attributes
    ----------
    labels : tuple of str
        The findings, in column order of `logits`.
    mean, scale : (D,) float32
        Feature standardisation fitted on the training films: ``(features - mean) / scale``.
    weight : (L, D) float32
    bias : (L,) float32
    classifier_sha256 : str
        sha256 of the classifier's model.safetensors whose features the head reads.
    config : dict
        The folder's config.json (or the config a freshly fitted head will be saved with).
    weights_hash : str or None
        `xray_generator.weights.weights_hash` of the folder; None for a head not saved yet.
    """

    labels: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    classifier_sha256: str
    config: dict
    weights_hash: str | None = None

    def __post_init__(self):
        check_labels(self.labels)
        d = self.mean.shape[0]
        if self.mean.shape != (d,) or self.scale.shape != (d,) or self.weight.shape != (len(self.labels), d) or self.bias.shape != (len(self.labels),):
            raise ValueError(f"finding head shapes do not fit {len(self.labels)} labels: mean {self.mean.shape}, scale {self.scale.shape}, "
                             f"weight {self.weight.shape}, bias {self.bias.shape}")
        if not np.all(self.scale > 0):
            raise ValueError("finding head scale must be positive")

    @property
    def feature_dim(self) -> int:
        return int(self.mean.shape[0])

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, L) log-odds of each finding for (N, D) classifier features."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"expected (N, {self.feature_dim}) classifier features, got {features.shape}")
        return ((features - self.mean) / self.scale) @ self.weight.T.astype(np.float64) + self.bias

    def score(self, features: np.ndarray, label: str) -> np.ndarray:
        """(N,) log-odds of one finding: the score whose AUROC the evaluation reports."""
        if label not in self.labels:
            raise ValueError(f"the finding head has no head for {label!r}; its labels are {list(self.labels)}")
        return self.logits(features)[:, self.labels.index(label)]


def save_finding_head(head: FindingHead, folder: str | Path, readme: str) -> str:
    """Write model.safetensors, config.json, README.md and MANIFEST.json into `folder`; return the weights hash."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: torch.from_numpy(np.ascontiguousarray(getattr(head, name), dtype=np.float32)) for name in TENSOR_NAMES}
    atomic_save_safetensors(tensors, folder / WEIGHTS_NAME)
    config = {**head.config, "labels": list(head.labels), "classifier_weights_sha256": head.classifier_sha256, "feature_dim": head.feature_dim}
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    atomic_write_text(folder / "README.md", readme)
    write_manifest(folder)
    return verify_manifest(folder)


def load_finding_head(folder: str | Path, classifier_sha256: str | None = None) -> FindingHead:
    """Load a finding head from its safetensors after checking MANIFEST.json.

    Parameters
    ----------
    folder : str or Path
        The head's folder (e.g. ``weights/finding_head``).
    classifier_sha256 : str, optional
        sha256 of the classifier whose features will be scored (``classifier.feature_extractor.settings["weights_sha256"]``).
        Given, a head fitted on another classifier's features is refused.

    Raises
    ------
    WeightsError
        A missing, altered or unlisted file, tensors that do not fit the config, or a head fitted
        on another classifier's features.
    """
    folder = Path(folder)
    weights_hash = verify_manifest(folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    tensors = load_file(str(folder / WEIGHTS_NAME))
    missing = [name for name in TENSOR_NAMES if name not in tensors]
    if missing:
        raise WeightsError(f"{folder / WEIGHTS_NAME} lacks {missing}")
    try:
        head = FindingHead(
            labels=tuple(config["labels"]), **{name: tensors[name].numpy().astype(np.float32) for name in TENSOR_NAMES},
            classifier_sha256=str(config["classifier_weights_sha256"]), config=config, weights_hash=weights_hash,
        )
    except (KeyError, ValueError) as error:
        raise WeightsError(f"{folder} does not hold a finding head that fits its {CONFIG_NAME}: {error}") from error
    if classifier_sha256 is not None and classifier_sha256 != head.classifier_sha256:
        raise WeightsError(f"{folder} was fitted on the features of classifier {head.classifier_sha256[:16]}, "
                           f"not of the classifier given ({classifier_sha256[:16]}); retrain it with "
                           "`python -m xray_generator findings --train-head`")
    return head

