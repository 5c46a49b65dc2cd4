"""Decoder noise inputs (models/autoencoder.py `decoder_noise_blocks`): zero at the start, repeatable from a generator, saved and loaded."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xray_generator.models.autoencoder import (add_decoder_noise, build_autoencoder, decoder_noise_modules, load_autoencoder,
                                               set_decoder_noise_generator, warm_start_autoencoder)

F4 = {"in_channels": 1, "out_channels": 1, "latent_channels": 4, "block_out_channels": [8, 16, 16],
      "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
      "layers_per_block": 1, "norm_num_groups": 8, "mid_block_add_attention": False, "sample_size": 64}


def _latent(autoencoder) -> torch.Tensor:
    with torch.no_grad():
        return autoencoder.encode(torch.rand(2, 1, 64, 64) * 2 - 1).latent_dist.mode()


def test_a_warm_started_noisy_decoder_decodes_exactly_as_its_source():
    torch.manual_seed(0)
    source = build_autoencoder(F4).eval()
    noisy = build_autoencoder({**F4, "decoder_noise_blocks": 2}).eval()
    warm_start_autoencoder(noisy, source)
    # the last two up-blocks' resnets (layers_per_block + 1 each) carry a strength per output channel
    assert len(decoder_noise_modules(noisy)) == 4 and not decoder_noise_modules(source)
    z = _latent(source)
    with torch.no_grad():
        assert torch.equal(source.decode(z).sample, noisy.decode(z).sample)


def test_noise_is_repeatable_from_a_generator_and_differs_between_seeds():
    torch.manual_seed(0)
    noisy = build_autoencoder({**F4, "decoder_noise_blocks": 1}).eval()
    for module in decoder_noise_modules(noisy):
        torch.nn.init.constant_(module.noise_strength, 0.3)
    z = _latent(noisy)

    def decode(seed: int) -> torch.Tensor:
        set_decoder_noise_generator(noisy, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            return noisy.decode(z).sample

    assert torch.equal(decode(3), decode(3))
    assert (decode(3) - decode(4)).abs().mean() > 1e-3
    set_decoder_noise_generator(noisy, None)  # back to torch's global generator
    torch.manual_seed(5)
    with torch.no_grad():
        first = noisy.decode(z).sample
    torch.manual_seed(5)
    with torch.no_grad():
        assert torch.equal(first, noisy.decode(z).sample)


def test_noise_strengths_are_trained_saved_and_loaded(tmp_path):
    torch.manual_seed(0)
    noisy = build_autoencoder({**F4, "decoder_noise_blocks": 1})
    z = _latent(noisy).detach()
    noisy.decode(z).sample.pow(2).mean().backward()
    assert all(module.noise_strength.grad is not None for module in decoder_noise_modules(noisy))
    for module in decoder_noise_modules(noisy):
        torch.nn.init.constant_(module.noise_strength, 0.25)
    noisy.save_pretrained(tmp_path / "vae", safe_serialization=True)
    loaded = load_autoencoder(tmp_path / "vae")
    assert loaded.config.decoder_noise_blocks == 1
    assert [m.noise_strength.tolist() for m in decoder_noise_modules(loaded)] == [m.noise_strength.tolist() for m in decoder_noise_modules(noisy)]


def test_more_noise_blocks_than_the_decoder_has_is_refused():
    with pytest.raises(ValueError, match="up-blocks"):
        add_decoder_noise(build_autoencoder(F4), 4)


def _noisy_tiny_pipeline():
    """The tiny pipeline with a decoder that adds noise at its last up-block (strength 0.3, so it shows)."""
    from conftest import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    config = json.loads((Path(__file__).resolve().parent.parent / "configs" / "vae_tiny.json").read_text())["model"]
    vae = build_autoencoder({**config, "decoder_noise_blocks": 1})
    warm_start_autoencoder(vae, pipe.vae)
    for module in decoder_noise_modules(vae):
        torch.nn.init.constant_(module.noise_strength, 0.3)
    vae.register_to_config(scaling_factor=pipe.vae.config.scaling_factor, shift_factor=pipe.vae.config.shift_factor)
    pipe.register_modules(vae=vae.eval())
    return pipe


def test_a_seed_fixes_the_decoders_noise_too():
    import numpy as np

    pipe = _noisy_tiny_pipeline()
    first = pipe("right lower lobe pneumonia", seed=4, height=64, width=64, backend="torch").images[0]
    assert np.array_equal(first, pipe("right lower lobe pneumonia", seed=4, height=64, width=64, backend="torch").images[0])
    torch.manual_seed(123)  # the global generator plays no part
    assert np.array_equal(first, pipe("right lower lobe pneumonia", seed=4, height=64, width=64, backend="torch").images[0])
    # the noise matters: the same latents decoded with other noise differ
    latents = torch.randn(1, pipe.unet.config.in_channels, 64 // pipe.vae_scale_factor, 64 // pipe.vae_scale_factor)
    a = pipe.decode_latents(latents, "torch", torch.Generator().manual_seed(0))
    b = pipe.decode_latents(latents, "torch", torch.Generator().manual_seed(1))
    assert (a - b).abs().mean() > 1e-3


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_runtimes_take_the_same_decoder_noise_as_pytorch(backend, tmp_path, monkeypatch):
    import numpy as np

    pytest.importorskip(backend)
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path))
    pipe = _noisy_tiny_pipeline()
    pipe.precision = "fp32"  # the noise is what is compared: on a CPU with native bf16 the paths would also differ in precision
    reference = pipe("right lower lobe pneumonia", seed=2, height=64, width=64, backend="torch").pil_images[0]
    exported = pipe("right lower lobe pneumonia", seed=2, height=64, width=64, backend=backend).pil_images[0]
    difference = np.abs(np.asarray(reference, dtype=np.int16) - np.asarray(exported, dtype=np.int16))
    assert difference.max() <= 2
