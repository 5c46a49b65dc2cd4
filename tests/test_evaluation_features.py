"""Feature extractors: the torch adapter and the InceptionV3 plumbing (random weights, no download)."""
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from xray_generator.evaluation.features import (
    FeatureExtractor,
    TorchFeatureExtractor,
    inception_feature_extractor,
)
from xray_generator.weights import sha256_file



class MeanPerChannel(nn.Module):
    """Returns (B, C, 1, 1) maps, the shape of a conv backbone's pooled output."""

    def forward(self, x):
        return x.mean(dim=(2, 3), keepdim=True)


class ShapeProbe(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return x.flatten(1)[:, :5]


def test_torch_extractor_resizes_repeats_normalises_and_batches():
    probe = ShapeProbe()
    extractor = TorchFeatureExtractor(probe, input_size=(20, 24), mean=(0.5, 0.5), std=(0.25, 0.25), channels=2, batch_size=3)
    images = np.full((7, 40, 40), 0.75, dtype=np.float32)
    features = extractor(images)
    assert features.shape == (7, 5) and features.dtype == np.float32
    np.testing.assert_allclose(features, (0.75 - 0.5) / 0.25, rtol=1e-5)
    assert probe.seen == [(3, 2, 20, 24), (3, 2, 20, 24), (1, 2, 20, 24)]
    assert isinstance(extractor, FeatureExtractor)


def test_spatial_outputs_are_averaged_and_mixed_sizes_are_allowed():
    extractor = TorchFeatureExtractor(MeanPerChannel(), input_size=16, mean=(0.0,), std=(1.0,), channels=1)
    features = extractor([np.zeros((10, 10)), np.ones((30, 20))])
    np.testing.assert_allclose(features, [[0.0], [1.0]], atol=1e-6)


@pytest.mark.parametrize(
    "images, message",
    [(np.zeros((2, 8, 8, 3)), r"\(N, H, W\)"), (np.full((1, 8, 8), 2.0), r"\[0, 1\]"), (np.full((1, 8, 8), np.nan), "NaN")],
)
def test_torch_extractor_rejects_bad_images(images, message):
    with pytest.raises(ValueError, match=message):
        TorchFeatureExtractor(MeanPerChannel(), input_size=8, mean=(0.0,), std=(1.0,), channels=1)(images)


def test_inception_with_random_weights_returns_2048_features():
    extractor = inception_feature_extractor(None, batch_size=4)
    images = np.random.default_rng(0).random((4, 32, 32), dtype=np.float32)
    features = extractor(images)
    assert features.shape == (4, 2048)
    assert features.dtype == np.float32 and np.all(np.isfinite(features))
    assert extractor.settings["weights_sha256"] is None
    assert extractor.settings["input_size"] == [299, 299]


def test_inception_loads_a_local_safetensors_state_dict_and_records_its_hash(tmp_path):
    torch.manual_seed(0)
    source = inception_feature_extractor(None).module
    state = {key: value for key, value in source.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 2048)  # a classifier head, as in ImageNet weights, is ignored
    path = tmp_path / "inception.safetensors"
    save_file(state, str(path))

    extractor = inception_feature_extractor(path)
    loaded = extractor.module.state_dict()
    assert torch.equal(loaded["Mixed_7c.branch_pool.conv.weight"], state["Mixed_7c.branch_pool.conv.weight"])
    assert extractor.settings["weights_sha256"] == sha256_file(path)


def test_inception_rejects_weights_of_another_network(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(ValueError, match="inception_v3"):
        inception_feature_extractor(path)
    with pytest.raises(ValueError, match="no Inception weights"):
        inception_feature_extractor(tmp_path / "missing.safetensors")
