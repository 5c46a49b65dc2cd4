"""The latent diffusion pipeline on a tiny untrained config: shapes, determinism, CFG, samplers, persistence."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.conftest import flip_one_byte
from xray_generator.pipelines.latent_diffusion import GenerationCancelled, XRayDiffusionPipeline
from xray_generator.weights import WeightsError


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return XRayDiffusionPipeline.from_pretrained(tiny_pipeline_dir)


@pytest.mark.precision
def test_output_shapes_range_and_provenance(pipe):
    out = pipe(["normal chest", "pneumonia"], num_images_per_prompt=2, seed=1)
    assert len(out.images) == 4 and len(out.pil_images) == 4
    for image in out.images:
        assert image.shape == (256, 256) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
    assert out.pil_images[0].mode == "L" and out.pil_images[0].size == (256, 256)
    meta = out.metadata[3]
    assert meta["prompt"] == "pneumonia" and meta["seed"] == 1 and meta["synthetic"] is True
    assert meta["weights_sha256"] == pipe.weights_hash and meta["sampler"] == "dpm++"


@pytest.mark.precision
def test_same_seed_same_image_and_different_seed_differs(pipe):
    a = pipe("right lower lobe pneumonia", seed=7).images[0]
    b = pipe("right lower lobe pneumonia", seed=7).images[0]
    c = pipe("right lower lobe pneumonia", seed=8).images[0]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.precision
def test_batch_image_zero_matches_single_generation(pipe):
    single = pipe("normal chest", seed=3).images[0]
    batch = pipe("normal chest", seed=3, num_images_per_prompt=2).images[0]
    if pipe.precision == "fp32":
        np.testing.assert_allclose(single, batch, atol=2e-2)
    else:
        # bf16 keeps 8 significant bits: a pixel in [0.5, 1) is a multiple of 2^-8 = 0.0039. A batch
        # of two blocks the kernels differently, so every denoising step rounds a little
        # differently and a few pixels of this untrained tiny model end up several steps apart
        # (measured: 2 of 65,536 pixels off by 0.0215, emulated bf16 on AVX2). The image is still
        # the same one: at most 16 such steps anywhere, and on average under one.
        difference = np.abs(single - batch)
        assert difference.max() <= 16 * 2**-8 and difference.mean() <= 2**-8


@pytest.mark.precision
def test_guidance_on_and_off_and_negative_prompt(pipe):
    guided = pipe("pneumonia", seed=2, guidance_scale=5.0).images[0]
    unguided = pipe("pneumonia", seed=2, guidance_scale=1.0).images[0]
    negative = pipe("pneumonia", seed=2, guidance_scale=5.0, negative_prompt="normal").images[0]
    assert not np.array_equal(guided, unguided)
    assert not np.array_equal(guided, negative)


@pytest.mark.precision
def test_guidance_fraction_guides_only_the_leading_steps(pipe):
    """Guiding every step is the default; a fraction guides ceil(fraction x steps) noisiest steps, then one UNet pass each."""
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        full = pipe("pneumonia", seed=2, guidance_scale=5.0, num_inference_steps=4)
        assert calls == [2, 2, 2, 2]
        calls.clear()
        partial = pipe("pneumonia", seed=2, guidance_scale=5.0, num_inference_steps=4, guidance_fraction=0.5)
        assert calls == [2, 2, 1, 1]
        calls.clear()
        pipe("pneumonia", seed=2, guidance_scale=5.0, num_inference_steps=100, guidance_fraction=0.07)
        assert calls == [2] * 7 + [1] * 93  # 0.07 x 100 is 7.000000000000001 in floating point
    finally:
        hook.remove()
    explicit = pipe("pneumonia", seed=2, guidance_scale=5.0, num_inference_steps=4, guidance_fraction=1.0)
    unguided = pipe("pneumonia", seed=2, guidance_scale=1.0, num_inference_steps=4)
    assert np.array_equal(full.images[0], explicit.images[0])
    assert not np.array_equal(partial.images[0], full.images[0]) and not np.array_equal(partial.images[0], unguided.images[0])
    assert partial.metadata[0]["guidance_fraction"] == 0.5 and full.metadata[0]["guidance_fraction"] == 1.0


@pytest.mark.precision
def test_a_scale_per_step_guides_exactly_the_steps_it_names(pipe, monkeypatch):
    """The guidance-schedule experiment's hook: [5, 5, 1, 1] is guidance 5 on the first half, pixel for pixel."""
    import functools

    reference = pipe("pneumonia", seed=2, guidance_scale=5.0, num_inference_steps=4, guidance_fraction=0.5).images[0]
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        for scales, expected_calls in (([5.0, 5.0, 1.0, 1.0], [2, 2, 1, 1]), ([1.0, 5.0, 1.0, 3.0], [1, 2, 1, 2])):
            calls.clear()
            monkeypatch.setattr(pipe, "denoise", functools.partial(XRayDiffusionPipeline.denoise, pipe, scale_per_step=scales))
            image = pipe("pneumonia", seed=2, guidance_scale=5.0, num_inference_steps=4).images[0]
            assert calls == expected_calls
            assert np.array_equal(image, reference) == (scales[1] == 5.0 and scales[0] == 5.0)
        monkeypatch.setattr(pipe, "denoise", functools.partial(XRayDiffusionPipeline.denoise, pipe, scale_per_step=[5.0]))
        with pytest.raises(ValueError, match="one scale per step"):
            pipe("pneumonia", seed=2, num_inference_steps=4)
    finally:
        hook.remove()


def test_settings_resolve_to_the_given_value_else_the_models_default(pipe):
    defaults = pipe.generation_defaults
    resolved = pipe.resolve_settings(num_inference_steps=5, guidance_scale=None)
    assert resolved["num_inference_steps"] == 5 and resolved["guidance_scale"] == defaults["guidance_scale"]
    assert resolved["sampler"] == defaults["sampler"] and resolved["guidance_fraction"] == defaults["guidance_fraction"]
    assert pipe.resolve_settings(guidance_scale=0.0)["guidance_scale"] == 0.0  # a falsy value is a value, not "unset"
    with pytest.raises(ValueError, match="unknown generation settings"):
        pipe.resolve_settings(strength=0.5)


@pytest.mark.precision
@pytest.mark.parametrize("sampler", ["dpm++", "ddim", "unipc"])
def test_each_sampler_runs_and_reports_steps(pipe, sampler):
    seen = []
    out = pipe("normal chest", seed=0, sampler=sampler, num_inference_steps=4, callback_on_step_end=lambda p, i, t, kw: seen.append(i))
    assert seen == [0, 1, 2, 3]
    assert out.metadata[0]["sampler"] == sampler and np.isfinite(out.images[0]).all()


@pytest.mark.precision
def test_callback_can_cancel(pipe):
    with pytest.raises(GenerationCancelled):
        pipe("normal chest", seed=0, callback_on_step_end=lambda p, i, t, kw: {"interrupt": True})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "   \n\t"}, "prompt is empty"),
        ({"prompt": "x" * 10_001}, "limit is"),
        ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps"),
        ({"prompt": "x", "num_inference_steps": 2.5}, "num_inference_steps"),
        ({"prompt": "x", "guidance_scale": float("nan")}, "guidance_scale"),
        ({"prompt": "x", "guidance_scale": -1}, "guidance_scale"),
        ({"prompt": "x", "seed": -5}, "seed"),
        ({"prompt": "x", "seed": "abc"}, "seed"),
        ({"prompt": "x", "sampler": "euler-magic"}, "sampler"),
        ({"prompt": "x", "height": 250}, "height"),
        ({"prompt": "x", "num_images_per_prompt": 0}, "num_images_per_prompt"),
    ],
)
def test_bad_input_gets_a_clear_value_error(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)


@pytest.mark.precision
def test_long_prompt_is_truncated_with_a_notice(pipe):
    out = pipe("bilateral opacities " * 200, seed=0)
    assert out.notices and "truncated" in out.notices[0]


@pytest.mark.precision
def test_save_load_round_trip_gives_identical_images(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "copy")
    again = XRayDiffusionPipeline.from_pretrained(tmp_path / "copy")
    assert again.weights_hash == XRayDiffusionPipeline.from_pretrained(tmp_path / "copy").weights_hash
    np.testing.assert_array_equal(pipe("normal chest", seed=5).images[0], again("normal chest", seed=5).images[0])
    manifest = json.loads((tmp_path / "copy" / "MANIFEST.json").read_text())
    assert "unet/diffusion_pytorch_model.safetensors" in manifest["files"]
    assert not list((tmp_path / "copy").rglob("*.bin"))


def test_tampered_truncated_or_missing_weights_are_refused(tiny_pipeline_dir, tmp_path):
    for case in ("tampered", "truncated", "missing", "no-manifest", "pickle"):
        folder = tmp_path / case
        shutil.copytree(tiny_pipeline_dir, folder)
        unet_file = folder / "unet" / "diffusion_pytorch_model.safetensors"
        if case == "tampered":
            flip_one_byte(unet_file, -10)
        elif case == "truncated":
            unet_file.write_bytes(unet_file.read_bytes()[:-100])
        elif case == "missing":
            unet_file.unlink()
        elif case == "no-manifest":
            (folder / "MANIFEST.json").unlink()
        else:
            (folder / "unet" / "extra.bin").write_bytes(b"\x80\x04pickle")
        with pytest.raises(WeightsError):
            XRayDiffusionPipeline.from_pretrained(folder)
