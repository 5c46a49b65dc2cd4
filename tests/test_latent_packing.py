"""Latent packing (models/autoencoder.py): a 4x autoencoder's latent handed to the UNet as 16 x 32 x 32."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from xray_generator.models.autoencoder import (build_autoencoder, downsampling_factor, latent_channels, load_autoencoder,
                                               pack_latents)

F4C4 = {"in_channels": 1, "out_channels": 1, "latent_channels": 4, "block_out_channels": [8, 16, 16],
        "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
        "layers_per_block": 1, "norm_num_groups": 8, "mid_block_add_attention": False, "sample_size": 64}


def test_packed_latent_is_a_permutation_of_the_plain_one():
    torch.manual_seed(0)
    plain = build_autoencoder(F4C4).eval()
    packed = build_autoencoder({**F4C4, "latent_packing": 2}).eval()
    packed.load_state_dict(plain.state_dict())  # same parameter names: plain checkpoints load
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        plain_dist, packed_dist = plain.encode(x).latent_dist, packed.encode(x).latent_dist
        assert plain_dist.mean.shape == (2, 4, 16, 16) and packed_dist.mean.shape == (2, 16, 8, 8)
        # mean and variance split correctly after the unshuffle, and the KL is the same number
        assert torch.equal(F.pixel_unshuffle(plain_dist.mean, 2), packed_dist.mean)
        assert torch.equal(F.pixel_unshuffle(plain_dist.var, 2), packed_dist.var)
        assert torch.allclose(plain_dist.kl().sum(), packed_dist.kl().sum(), rtol=1e-5)
        z = plain_dist.mode()
        assert torch.allclose(plain.decode(z).sample, packed.decode(F.pixel_unshuffle(z, 2)).sample, atol=1e-6)
    assert (downsampling_factor(plain), latent_channels(plain)) == (4, 4)
    assert (downsampling_factor(packed), latent_channels(packed)) == (8, 16)


def test_packing_survives_save_and_load(tmp_path):
    model = pack_latents(build_autoencoder(F4C4), 2)
    model.save_pretrained(tmp_path / "vae", safe_serialization=True)
    loaded = load_autoencoder(tmp_path / "vae")
    assert (downsampling_factor(loaded), latent_channels(loaded)) == (8, 16)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval().encode(x).latent_dist.mode(), loaded.encode(x).latent_dist.mode())


def _packed_tiny_pipeline():
    """The tiny pipeline with a 4x, 1-channel autoencoder packed 2x: the tiny UNet's own 4 x 8 x 8 latent."""
    from conftest import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    config = {**F4C4, "latent_channels": 1, "block_out_channels": [8, 8, 8], "norm_num_groups": 4, "latent_packing": 2}
    torch.manual_seed(1)
    pipe.register_modules(vae=build_autoencoder(config).eval())
    return pipe


def test_a_packed_pipeline_generates_saves_loads_and_edits(tmp_path):
    import numpy as np

    from xray_generator.pipelines.editing import mean_change_outside
    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

    pipe = _packed_tiny_pipeline()
    assert pipe.vae_scale_factor == 8 and latent_channels(pipe.vae) == pipe.unet.config.in_channels
    image = pipe("right lower lobe pneumonia", seed=0, height=64, width=64).images[0]
    assert image.shape == (64, 64) and np.isfinite(image).all()
    pipe.save_pretrained(tmp_path / "ldm")
    loaded = XRayDiffusionPipeline.from_pretrained(tmp_path / "ldm", torch_dtype=torch.float32)
    assert loaded.vae.config.latent_packing == 2
    assert all(torch.equal(a, b) for a, b in zip(pipe.vae.state_dict().values(), loaded.vae.state_dict().values()))
    latents = torch.randn(1, 4, 8, 8)
    pipe.precision = "fp32"  # as the loaded one: on a CPU with native bf16 the in-memory pipeline would decode in bf16
    with torch.no_grad():  # the loaded pipeline runs channels-last: equal up to float rounding
        assert torch.allclose(pipe.decode_latents(latents), loaded.decode_latents(latents), atol=1e-5)

    source = np.linspace(0, 1, 256 * 256, dtype=np.float32).reshape(256, 256)
    mask = np.zeros((256, 256), dtype=bool)
    mask[:, 128:] = True
    edited = loaded.edit(source, "right lower lobe pneumonia", seed=1, mask=mask, strength=1.0, num_inference_steps=3)
    assert edited.image.shape == (256, 256)
    # the mask reaches the latent grid through the packed scale factor: the edit stays inside it
    assert mean_change_outside(edited.source, edited.image, edited.mask) <= 2.0
    assert edited.difference[edited.mask > 0.5].mean() * 255 > 2.0


def test_the_onnx_decoder_unpacks_like_pytorch(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path))
    pipe = _packed_tiny_pipeline()
    pipe.precision = "fp32"  # ONNX Runtime runs fp32; on a CPU with native bf16, PyTorch would otherwise run bf16
    reference = pipe("right lower lobe pneumonia", seed=2, height=64, width=64, backend="torch").pil_images[0]
    exported = pipe("right lower lobe pneumonia", seed=2, height=64, width=64, backend="onnxruntime").pil_images[0]
    difference = np.abs(np.asarray(reference, dtype=np.int16) - np.asarray(exported, dtype=np.int16))
    assert difference.max() <= 2
