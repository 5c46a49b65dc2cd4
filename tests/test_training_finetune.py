"""Fine-tuning a shipped latent diffusion pipeline on new data (`init_from`): it starts from the
shipped UNet and text projection, keeps the shipped latent statistics, and refuses another encoder."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from tests.conftest import REPO
from xray_generator.training import train_ldm, train_vae
from xray_generator.training.checkpointing import CheckpointDir

SAMPLE = REPO / "dataset"


def tiny_config(name: str, **train_overrides) -> dict:
    config = json.loads((REPO / "configs" / name).read_text())
    config["train"].update(train_overrides)
    return config


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A tiny pipeline trained for 2 steps and exported like weights/ldm, and the config that made it."""
    root = tmp_path_factory.mktemp("finetune")
    vae_run = root / "vae_run"
    train_vae.train_vae(tiny_config("vae_tiny.json", max_steps=1), vae_run, data_dir=SAMPLE)
    config = tiny_config("ldm_tiny.json", max_steps=2)
    config["autoencoder"] = str(train_vae.export_autoencoder(vae_run, root / "autoencoder"))
    config["cache_dir"] = str(root / "cache")
    train_ldm.train_ldm(config, root / "ldm_run", data_dir=SAMPLE)
    return train_ldm.export_pipeline(root / "ldm_run", root / "weights"), config, root


@pytest.mark.precision
def test_a_fine_tune_starts_from_the_shipped_weights_and_keeps_their_latent_statistics(shipped, tmp_path):
    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

    weights, config, _ = shipped
    original = XRayDiffusionPipeline.from_pretrained(weights, torch_dtype=torch.float32)
    finetune = json.loads(json.dumps(config))
    finetune.update(init_from=str(weights), autoencoder=str(weights / "vae"), cache_dir=str(tmp_path / "cache"))
    # Another share of the data: its own latent statistics differ from the shipped ones.
    finetune["data"]["max_images"] = 8
    finetune["train"].update(lr=0.0, max_steps=1)  # no update: the exported weights must be the shipped ones
    train_ldm.train_ldm(finetune, tmp_path / "run", data_dir=SAMPLE)
    state = json.loads((CheckpointDir(tmp_path / "run").latest() / "state.json").read_text())
    assert state["latent_scale"] == pytest.approx(original.vae.config.scaling_factor, abs=1e-7)
    assert state["latent_shift"] == pytest.approx(original.vae.config.shift_factor, abs=1e-7)
    tuned = XRayDiffusionPipeline.from_pretrained(train_ldm.export_pipeline(tmp_path / "run", tmp_path / "exported"), torch_dtype=torch.float32)
    for ours, theirs in ((tuned.unet, original.unet), (tuned.text_projection, original.text_projection)):
        theirs_state = theirs.state_dict()
        for name, tensor in ours.state_dict().items():
            assert torch.equal(tensor, theirs_state[name]), name


@pytest.mark.precision
def test_a_fine_tune_refuses_an_autoencoder_whose_encoder_is_not_the_shipped_one(shipped, tmp_path):
    weights, config, root = shipped
    other_run = root / "other_vae"
    train_vae.train_vae(tiny_config("vae_tiny.json", max_steps=1, seed=5), other_run, data_dir=SAMPLE)
    finetune = json.loads(json.dumps(config))
    finetune.update(init_from=str(weights), autoencoder=str(train_vae.export_autoencoder(other_run, tmp_path / "other")),
                    cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="different encoder"):
        train_ldm.train_ldm(finetune, tmp_path / "run", data_dir=SAMPLE)


@pytest.mark.parametrize("latent", ["wider", "packed"])
def test_a_unet_for_a_new_autoencoder_with_more_latent_channels_warm_starts_all_but_its_first_and_last_convolution(shipped, tmp_path, latent):
    """`wider`: twice the latent channels at the same grid (vae_f8c16). `packed`: a 4x autoencoder whose
    latent is pixel-unshuffled 2x2 (vae_f4c4), so the UNet sees the same grid with 4x its channels."""
    from xray_generator.models.autoencoder import latent_channels
    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

    weights, config, root = shipped
    wider = tiny_config("vae_tiny.json", max_steps=1)
    if latent == "wider":
        wider["model"]["latent_channels"] *= 2
    else:
        levels = len(wider["model"]["block_out_channels"]) - 1
        for key in ("block_out_channels", "down_block_types", "up_block_types"):
            wider["model"][key] = wider["model"][key][:levels]
        wider["model"]["latent_channels"] //= 2
        wider["model"]["latent_packing"] = 2
    channels = wider["model"]["latent_channels"] * wider["model"].get("latent_packing", 1) ** 2
    train_vae.train_vae(wider, tmp_path / "vae_run", data_dir=SAMPLE)
    new = json.loads(json.dumps(config))
    new["unet"].update(in_channels=channels, out_channels=channels)
    new.update(warm_start_from=str(weights), autoencoder=str(train_vae.export_autoencoder(tmp_path / "vae_run", tmp_path / "autoencoder")),
               cache_dir=str(tmp_path / "cache"))
    new["train"].update(lr=0.0, max_steps=1)  # no update: what was exported is what the warm start made
    # Started as the README starts every run, with --resume: no checkpoint yet, so it must still warm-start.
    train_ldm.train_ldm(new, tmp_path / "run", resume=True, data_dir=SAMPLE)
    tuned = XRayDiffusionPipeline.from_pretrained(train_ldm.export_pipeline(tmp_path / "run", tmp_path / "exported"), torch_dtype=torch.float32)
    original = XRayDiffusionPipeline.from_pretrained(weights, torch_dtype=torch.float32)
    assert tuned.unet.config.in_channels == channels and latent_channels(tuned.vae) == channels
    assert tuned.vae_scale_factor == 8
    # the same weights packed or not give differently laid-out latents: never one cache for both
    caches = [folder.name for folder in (tmp_path / "cache").iterdir() if folder.name.startswith("encoder-")]
    assert caches and all(("_packed2_" in name) == (latent == "packed") for name in caches)
    theirs = original.unet.state_dict()
    fresh = {name for name, tensor in tuned.unet.state_dict().items() if not (name in theirs and torch.equal(tensor, theirs[name]))}
    assert fresh == {"conv_in.weight", "conv_out.weight", "conv_out.bias"}  # conv_in.bias keeps its shape
    assert tuned("normal chest", seed=0).images[0].shape == (256, 256)
    new["init_from"] = str(weights)
    with pytest.raises(ValueError, match="exclude each other"):
        train_ldm.train_ldm(new, tmp_path / "run2", data_dir=SAMPLE)


def test_a_decoder_fine_tune_shares_its_encoders_latent_cache(tmp_path):
    """The latent cache is keyed by the encoder half alone: an export with a fine-tuned decoder (or decoder
    noise inputs) beside the same encoder reuses the latents; another encoder does not."""
    from xray_generator.data.manifest import load_manifest
    from xray_generator.models.autoencoder import build_autoencoder, warm_start_autoencoder
    from xray_generator.training.train_ldm import latent_cache_dir

    config = json.loads((REPO / "configs" / "vae_tiny.json").read_text())["model"]
    torch.manual_seed(0)
    source = build_autoencoder(config)
    tuned = build_autoencoder({**config, "decoder_noise_blocks": 1})
    warm_start_autoencoder(tuned, source)
    with torch.no_grad():
        tuned.decoder.conv_out.weight.mul_(0.5)
    other = build_autoencoder(config)
    for name, model in (("source", source), ("tuned", tuned), ("other", other)):
        model.save_pretrained(tmp_path / name, safe_serialization=True)
    manifest = load_manifest(SAMPLE).query(split="train")
    source_dir, tuned_dir, other_dir = (latent_cache_dir(tmp_path / "cache", tmp_path / name, manifest) for name in ("source", "tuned", "other"))
    assert source_dir == tuned_dir and source_dir != other_dir and source_dir.name.startswith("encoder-")


@pytest.mark.precision
@pytest.mark.parametrize("ema_warmup", [True, False])
def test_a_fine_tunes_ema_keeps_the_shipped_weights_in_its_average_unless_it_warms_up(shipped, tmp_path, ema_warmup):
    """`ema_warmup: false`: the EMA starts at the shipped weights and moves at the configured decay from step 0."""
    from safetensors.torch import load_file

    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

    weights, config, _ = shipped
    original = XRayDiffusionPipeline.from_pretrained(weights, torch_dtype=torch.float32).unet.state_dict()
    finetune = json.loads(json.dumps(config))
    finetune.update(init_from=str(weights), autoencoder=str(weights / "vae"), cache_dir=str(tmp_path / "cache"))
    finetune["train"].update(lr=1e-2, warmup_steps=1, max_steps=1, ema_decay=0.75, ema_warmup=ema_warmup)
    train_ldm.train_ldm(finetune, tmp_path / "run", data_dir=SAMPLE)
    latest = CheckpointDir(tmp_path / "run").latest()
    trained, ema = load_file(str(latest / "unet.safetensors")), load_file(str(latest / "ema_unet.safetensors"))
    # After one step the EMA is decay x start + (1 - decay) x trained; the warm-up's decay at step 0 is 1/10.
    decay = 0.1 if ema_warmup else 0.75
    name = "conv_in.weight"
    assert not torch.equal(trained[name].float(), original[name])  # the step moved the weights
    torch.testing.assert_close(ema[name].float(), decay * original[name] + (1 - decay) * trained[name].float(), rtol=1e-5, atol=1e-6)


@pytest.mark.precision
def test_resize_to_trains_every_film_at_the_generation_size_and_keeps_its_own_cache(shipped, tmp_path):
    """`data.resize_to`: 224-px films join the 256-px latents, enlarged as the evaluation enlarges real films."""
    from xray_generator.data.manifest import load_manifest
    from xray_generator.models.autoencoder import load_autoencoder
    from xray_generator.training.train_ldm import cache_latents

    _, _, root = shipped
    autoencoder = load_autoencoder(root / "autoencoder")
    manifest = load_manifest(SAMPLE)
    table = manifest.table
    manifest.table = pd.concat([table[table["native_px"] == px].head(3) for px in (256, 224)])
    native = cache_latents(autoencoder, manifest, tmp_path / "latents.safetensors")
    resized = cache_latents(autoencoder, manifest, tmp_path / "latents.safetensors", resize_to=256)
    factor = 256 // native["mean_256"].shape[-1]
    assert sorted(k for k in native if k.startswith("rows_")) == ["rows_224", "rows_256"]
    assert sorted(k for k in resized if k.startswith("rows_")) == ["rows_256"]
    assert resized["mean_256"].shape[0] == len(manifest.table) and resized["mean_256"].shape[-1] == 256 // factor
    assert (tmp_path / "latents.safetensors").is_file() and (tmp_path / "latents_256px.safetensors").is_file()
    # The 256-px films are encoded as before; only the 224-px ones are new.
    rows = resized["rows_256"].tolist()
    for position, row in enumerate(native["rows_256"].tolist()):
        assert torch.equal(resized["mean_256"][rows.index(row)], native["mean_256"][position])


@pytest.mark.precision
def test_a_zero_terminal_snr_fine_tune_exports_a_schedule_every_sampler_runs(shipped, tmp_path):
    """`rescale_betas_zero_snr` (configs/ldm_zero_snr.json): the export carries it, and every sampler starts from pure noise with it."""
    import numpy as np

    from xray_generator.pipelines.latent_diffusion import SAMPLERS, XRayDiffusionPipeline

    weights, config, _ = shipped
    finetune = json.loads(json.dumps(config))
    finetune.update(init_from=str(weights), autoencoder=str(weights / "vae"), cache_dir=str(tmp_path / "cache"))
    finetune["scheduler"]["rescale_betas_zero_snr"] = True
    finetune["train"].update(max_steps=1, min_snr_gamma=0)
    train_ldm.train_ldm(finetune, tmp_path / "run", data_dir=SAMPLE)
    pipe = XRayDiffusionPipeline.from_pretrained(train_ldm.export_pipeline(tmp_path / "run", tmp_path / "exported"))
    assert pipe.scheduler.config.rescale_betas_zero_snr and float(pipe.scheduler.alphas_cumprod[-1]) == 0.0
    for sampler in SAMPLERS:
        assert pipe.make_scheduler(sampler).config.rescale_betas_zero_snr, sampler
        image = np.asarray(pipe("normal chest radiograph", seed=0, num_inference_steps=3, sampler=sampler, backend="torch").pil_images[0])
        assert np.isfinite(image).all() and image.std() > 0, sampler


def test_averaging_exports_takes_the_mean_of_the_unet_and_refuses_exports_of_different_models(shipped, tmp_path):
    """`train_ldm average`: the mean of several exports of one run, stored in the exported dtype, with a new MANIFEST."""
    import shutil

    from safetensors.torch import load_file, save_file

    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline
    from xray_generator.weights import verify_manifest, write_manifest

    weights, _, _ = shipped
    other = tmp_path / "other"
    shutil.copytree(weights, other)
    shards = sorted(p.relative_to(other) for p in other.glob("*/*.safetensors") if p.parts[-2] in train_ldm.AVERAGED_PARTS)
    assert shards and {p.parts[0] for p in shards} == set(train_ldm.AVERAGED_PARTS)
    for shard in shards:  # another export of the same model: the same files, other weights
        save_file({k: v * 2 + 1 for k, v in load_file(other / shard).items()}, other / shard, metadata={"format": "pt"})
    write_manifest(other)

    averaged = train_ldm.average_exports([weights, other], tmp_path / "averaged")
    verify_manifest(averaged)
    for shard in shards:
        first, second, mean = load_file(weights / shard), load_file(other / shard), load_file(averaged / shard)
        for key, tensor in first.items():
            assert mean[key].dtype == tensor.dtype
            assert torch.equal(mean[key], ((tensor.float() + second[key].float()) / 2).to(tensor.dtype)), key
    sources = json.loads((averaged / train_ldm.AVERAGED_FROM_FILE).read_text())["exports"]
    assert [s["weights_sha256"] for s in sources] == [verify_manifest(weights), verify_manifest(other)]
    XRayDiffusionPipeline.from_pretrained(averaged)  # loads like any export

    pipeline_file = other / "pipeline.json"
    pipeline_file.write_text(pipeline_file.read_text().replace("}", ', "note": "another model"}', 1))
    write_manifest(other)
    with pytest.raises(ValueError, match="pipeline.json"):
        train_ldm.average_exports([weights, other], tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    with pytest.raises(ValueError, match="at least two"):
        train_ldm.average_exports([weights], tmp_path / "refused")
