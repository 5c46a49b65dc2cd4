"""Trainers run a few steps on the shipped sample, checkpoint atomically, resume, and export."""
from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import REPO, flip_one_byte
from xray_generator.precision import cpu_precision
from xray_generator.training import train_ldm, train_vae
from xray_generator.training.checkpointing import CheckpointDir, CheckpointSchedule

SAMPLE = REPO / "dataset"


def tiny_config(name: str, **train_overrides) -> dict:
    config = json.loads((REPO / "configs" / name).read_text())
    config["train"].update(train_overrides)
    return config


def log_steps(run_dir) -> list[int]:
    with open(run_dir / "log.csv") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


def latest_state(run_dir) -> dict:
    return json.loads((CheckpointDir(run_dir).latest() / "state.json").read_text())


def card_rows(card: str) -> dict[str, list[str]]:
    """The cells of every table row in a model card, by its first cell."""
    rows = [line.strip("| ").split(" | ") for line in card.splitlines() if line.startswith("| ")]
    return {cells[0]: cells for cells in rows}


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("vae_run")
    state = train_vae.train_vae(tiny_config("vae_tiny.json", max_steps=2), run, data_dir=SAMPLE)
    assert state["step"] == 2
    return run


@pytest.mark.precision
def test_vae_trainer_checkpoints_and_resumes(vae_run):
    latest = CheckpointDir(vae_run).latest()
    assert latest.name == "step-00000002"
    assert {p.name for p in latest.iterdir()} >= {"autoencoder.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json"}
    before = latest_state(vae_run)
    state = train_vae.train_vae(tiny_config("vae_tiny.json", max_steps=4), vae_run, resume=True, data_dir=SAMPLE)
    assert state["step"] == 4 and state["samples_seen"] > 2
    after = latest_state(vae_run)  # the run's first start survives the resume; each checkpoint says when it was written
    assert after["started"] == before["started"] <= before["updated"] <= after["updated"]
    assert log_steps(vae_run) == [1, 2, 3, 4]
    assert not list(vae_run.glob(".step-*.partial"))


def test_vae_trainer_refuses_a_crop_larger_than_the_smallest_film_before_training(tmp_path):
    config = tiny_config("vae_tiny.json", max_steps=1)
    config["data"]["full_crop_size"] = 4096
    with pytest.raises(ValueError, match="full_crop_size is 4096 px but the smallest training film is"):
        train_vae.train_vae(config, tmp_path / "run", data_dir=SAMPLE)
    assert CheckpointDir(tmp_path / "run").latest() is None


@pytest.mark.precision
def test_vae_export_is_a_diffusers_folder(vae_run, tmp_path):
    from diffusers import AutoencoderKL

    out = train_vae.export_autoencoder(vae_run, tmp_path / "autoencoder")
    assert AutoencoderKL.from_pretrained(out, use_safetensors=True).config.latent_channels == 4


def test_an_exported_autoencoder_carries_its_card_log_and_manifest_and_refuses_tampering(vae_run, tmp_path):
    from xray_generator.models.autoencoder import load_autoencoder
    from xray_generator.weights import WeightsError

    latest = int(CheckpointDir(vae_run).latest().name.split("-")[1])
    out = train_vae.export_autoencoder(vae_run, tmp_path / "autoencoder", step=latest)
    card = (out / "README.md").read_text()
    assert "Research use only, not for clinical use" in card and f"step {latest:,}" in card and "4 latent channels" in card
    with open(out / "training_log.csv") as handle:
        assert max(int(row["step"]) for row in csv.DictReader(handle)) <= latest
    load_autoencoder(out)  # verified against MANIFEST.json
    with pytest.raises(FileNotFoundError, match="no checkpoint for step 999999 .*kept: step-"):
        train_vae.export_autoencoder(vae_run, tmp_path / "other", step=999999)
    assert not (tmp_path / "other").exists()
    weights = out / "diffusion_pytorch_model.safetensors"
    flip_one_byte(weights)
    with pytest.raises(WeightsError, match="does not match its sha256"):
        load_autoencoder(out)


@pytest.mark.precision
def test_ldm_trainer_runs_resumes_and_exports(vae_run, tmp_path):
    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

    autoencoder = train_vae.export_autoencoder(vae_run, tmp_path / "autoencoder")
    config = tiny_config("ldm_tiny.json", max_steps=2)
    config["autoencoder"] = str(autoencoder)
    config["cache_dir"] = str(tmp_path / "cache")
    run = tmp_path / "ldm_run"
    assert train_ldm.train_ldm(config, run, data_dir=SAMPLE)["step"] == 2
    assert list((tmp_path / "cache").rglob("train_latents.safetensors"))
    config["train"]["max_steps"] = 3
    state = train_ldm.train_ldm(config, run, resume=True, data_dir=SAMPLE)
    assert state["step"] == 3 and log_steps(run) == [1, 2, 3]
    pipe = XRayDiffusionPipeline.from_pretrained(train_ldm.export_pipeline(run, tmp_path / "exported"))
    assert pipe("normal chest", seed=0).images[0].shape == (256, 256)
    assert abs(pipe.vae.config.scaling_factor - json.loads((CheckpointDir(run).latest() / "state.json").read_text())["latent_scale"]) < 1e-6


def test_per_channel_latent_normalisation_round_trips_and_gives_each_channel_unit_spread():
    """`latent_normalisation: per_channel`: each channel of the train latents gets mean 0 and spread 1 (one global
    scale leaves a quiet channel far below 1), and denormalising gives the autoencoder's latents back."""
    import torch

    from xray_generator.models.autoencoder import denormalise_latents, normalise_latents

    generator = torch.Generator().manual_seed(0)
    spreads = torch.tensor([0.2, 1.0, 3.0, 0.5]).view(1, 4, 1, 1)
    latents = {"mean_32": torch.randn(40, 4, 8, 8, generator=generator) * spreads + 0.7, "std_32": torch.zeros(40, 4, 8, 8)}
    per_channel = train_ldm.latent_statistics(latents, per_channel=True)
    normalised = normalise_latents(latents["mean_32"], per_channel)
    assert torch.allclose(normalised.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(normalised.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-3)
    assert torch.allclose(denormalise_latents(normalised, per_channel), latents["mean_32"], atol=1e-5)
    global_fields = train_ldm.latent_statistics(latents)
    assert global_fields["latents_mean"] is None
    assert normalise_latents(latents["mean_32"], global_fields).std(dim=(0, 2, 3)).min() < 0.2
    with pytest.raises(ValueError, match="channels"):
        normalise_latents(torch.zeros(1, 3, 8, 8), per_channel)


@pytest.mark.precision
def test_the_ldm_trainer_exports_per_channel_normalisation_that_generation_uses(vae_run, tmp_path):
    import numpy as np
    import torch

    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

    autoencoder = train_vae.export_autoencoder(vae_run, tmp_path / "autoencoder")
    config = tiny_config("ldm_tiny.json", max_steps=1)
    config.update(autoencoder=str(autoencoder), cache_dir=str(tmp_path / "cache"), latent_normalisation="per_channel")
    run = tmp_path / "ldm_run"
    train_ldm.train_ldm(config, run, data_dir=SAMPLE)
    state = latest_state(run)
    pipe = XRayDiffusionPipeline.from_pretrained(train_ldm.export_pipeline(run, tmp_path / "exported"))
    assert pipe.vae.config.latents_std == pytest.approx(state["latents_std"]) and len(state["latents_std"]) == pipe.unet.config.in_channels
    assert pipe.vae.config.scaling_factor == 1.0
    image = pipe("normal chest", seed=0).images[0]
    assert image.shape == (256, 256) and image.std() > 0
    # The encode path normalises the same way: a film's latents come back centred per channel.
    latents = pipe.encode_images(torch.as_tensor(np.asarray(image, dtype=np.float32) / (255.0 if image.dtype == np.uint8 else 1.0))[None, None])
    assert latents.shape[1] == len(state["latents_mean"]) and bool((latents.mean(dim=(0, 2, 3)).abs() < 5).all())


@pytest.mark.precision
def test_the_model_card_records_every_stage_with_its_dates_and_refuses_unknown_ones(vae_run, tmp_path):
    from xray_generator.training import model_card
    from xray_generator.weights import sha256_file, verify_manifest

    autoencoder = train_vae.export_autoencoder(vae_run, tmp_path / "autoencoder")
    config = tiny_config("ldm_tiny.json", max_steps=1)
    config["autoencoder"], config["cache_dir"] = str(autoencoder), str(tmp_path / "cache")
    ldm_run = tmp_path / "ldm_run"
    train_ldm.train_ldm(config, ldm_run, data_dir=SAMPLE)
    weights = train_ldm.export_pipeline(ldm_run, tmp_path / "weights")
    # One tiny run standing in for each stage, the adversarial decoder and the UNet fine-tune on the expanded data included.
    finetunes = [vae_run] * len(model_card.FINETUNE_STAGES)
    ldm_finetunes = [ldm_run] * len(model_card.LDM_FINETUNE_STAGES)
    assert {"vae_decoder_gan", "ldm_finetune_expanded", "ldm_expanded_low_lr"} <= set(model_card.FINETUNE_STAGES + model_card.LDM_FINETUNE_STAGES)

    card = model_card.write_card(weights, vae_run, ldm_run, n_recon=2, vae_finetune_runs=finetunes, ldm_finetune_runs=ldm_finetunes).read_text()
    rows = card_rows(card)
    recorded = json.loads((weights / model_card.STAGES_FILE).read_text())
    assert list(recorded) == list(model_card.STAGE_TITLES)
    for name, title in model_card.STAGE_TITLES.items():
        state = latest_state(ldm_run if name in model_card.UNET_STAGES else vae_run)
        # Dated by the run itself: its first start and its last checkpoint, as the trainer wrote them.
        assert (recorded[name]["started"], recorded[name]["finished"], recorded[name]["dates_from"]) == (state["started"], state["updated"], "run")
        started, finished = state["started"][:10], state["updated"][:10]
        assert rows[title][4] == (finished if started == finished else f"{started} → {finished}")
        assert rows[title][1] == f"{state['step']:,}" and (weights / f"training_log_{name}.csv").is_file()
    assert "the UNet `ldm` → `ldm_finetune_expanded` → `ldm_expanded_low_lr` → `ldm_zero_snr` → `ldm_distil_4`" in card and "the autoencoder `vae` → `vae_decoder_finetune` →" in card
    assert "n = 2" in card and (weights / "card" / "samples.png").is_file()
    digest = verify_manifest(weights)  # the card and its assets are covered by the regenerated manifest
    # The card names its model files' hashes, never a stale folder hash (the manifest it is part of
    # is written after it, so it cannot name the final one).
    assert sha256_file(weights / "vae" / "diffusion_pytorch_model.safetensors")[:16] in card and digest not in card
    with pytest.raises(ValueError, match="stages"):
        model_card.write_card(weights, vae_run, ldm_run, n_recon=2, vae_finetune_runs=finetunes + [vae_run])
    with pytest.raises(ValueError, match="stages"):
        model_card.write_card(weights, vae_run, ldm_run, n_recon=2, ldm_finetune_runs=ldm_finetunes + [ldm_run])
    # `-` on the command line: a stage whose run folder has trained past the shipped step keeps its record.
    first = model_card.LDM_FINETUNE_STAGES[0]
    stages_file = weights / model_card.STAGES_FILE
    stages_file.write_text(json.dumps(recorded | {first: recorded[first] | {"step": 123456}}))
    model_card.write_manifest(weights)
    model_card.main(["--weights", str(weights), "--vae-run", str(vae_run), "--ldm-run", str(ldm_run), "--n-recon", "2",
                     "--vae-finetune-run", *map(str, finetunes), "--ldm-finetune-run", "-", *map(str, ldm_finetunes[1:])])
    assert json.loads(stages_file.read_text())[first]["step"] == 123456
    assert card_rows((weights / "README.md").read_text())[model_card.STAGE_TITLES[first]][1] == "123,456"


def test_a_stage_without_dated_checkpoints_is_dated_by_its_checkpoint_file_or_the_commit_of_its_loss_log(tmp_path):
    import os
    import subprocess
    from datetime import datetime, timezone

    from xray_generator.training import model_card

    weights = tmp_path / "weights"
    weights.mkdir()
    # A run trained before checkpoints were dated: the time its last checkpoint was written dates the end; the start is unknown.
    run = tmp_path / "old_run"
    CheckpointDir(run).save(3, {}, {"step": 3, "samples_seen": 12, "wall_seconds": 7200.0, "val_psnr": 30.0, "val_ssim": 0.8}, {})
    state_file = CheckpointDir(run).latest() / "state.json"
    undated = {key: value for key, value in json.loads(state_file.read_text()).items() if key not in ("started", "updated")}
    state_file.write_text(json.dumps(undated))
    written = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc).timestamp()
    os.utime(state_file, (written, written))
    old = model_card.training_stage("vae_decoder_gan", run, {}, weights)
    assert (old["started"], old["finished"], old["dates_from"]) == (None, "2026-03-04T05:06:07+00:00", "checkpoint mtime")
    assert (old["step"], old["wall_seconds"]) == (3, 7200.0)

    # A stage whose run folder is gone: the record the last card wrote, dated by the commit that first added its loss log.
    def git(*args, date="2026-01-02T03:04:05+00:00"):
        env = {**os.environ, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
        subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.org", *args], cwd=weights, env=env, check=True, capture_output=True)

    (weights / "training_log_vae.csv").write_text("step,loss\n1,0.5\n")
    git("init", "-q")
    git("add", "training_log_vae.csv")
    git("commit", "-q", "-m", "the log lands")
    (weights / "training_log_vae.csv").write_text("step,loss\n1,0.5\n2,0.4\n")
    git("commit", "-q", "-am", "a later edit", date="2026-02-01T00:00:00+00:00")  # does not move the date
    recorded = {"vae": {"step": 2, "samples_seen": 8, "wall_seconds": 3600.0, "val_psnr": 29.0, "val_ssim": 0.82, "run": "not kept"}}
    vae = model_card.training_stage("vae", tmp_path / "gone", recorded, weights)
    assert (vae["finished"], vae["dates_from"], vae["step"]) == ("2026-01-02T03:04:05+00:00", "log commit", 2)
    assert model_card.training_stage("vae", None, {"vae": vae}, weights) == vae  # a dated record is kept as it is

    # Neither a run nor a record: the stage is left out (not trained or not shipped yet). A named run that is missing is an error.
    assert model_card.training_stage("ldm_finetune_expanded", None, recorded, weights) is None
    with pytest.raises(FileNotFoundError, match="ldm"):
        model_card.training_stage("ldm", tmp_path / "gone", recorded, weights)

    rows = card_rows(model_card.training_table({"vae": vae, "vae_decoder_gan": old}, weights))
    assert rows["VAE"][3:5] == ["1.00 h", "by 2026-01-02 (log committed)"]
    assert rows[model_card.STAGE_TITLES["vae_decoder_gan"]][3:5] == ["2.00 h", "2026-03-04 (checkpoint written)"]


def test_checkpoints_carry_the_run_start_through_resumes_and_date_each_save(tmp_path, monkeypatch):
    import xray_generator.training.checkpointing as checkpointing

    monkeypatch.setattr(checkpointing, "utc_timestamp", lambda: "2026-01-01T00:00:00+00:00")
    CheckpointDir(tmp_path).save(1, {}, {"step": 1}, {})
    monkeypatch.setattr(checkpointing, "utc_timestamp", lambda: "2026-01-03T00:00:00+00:00")
    resumed = CheckpointDir(tmp_path)  # a later session
    _, state = resumed.load(resumed.latest(), {})
    resumed.save(2, {}, {**state, "step": 2}, {})
    assert (latest_state(tmp_path)["started"], latest_state(tmp_path)["updated"]) == ("2026-01-01T00:00:00+00:00", "2026-01-03T00:00:00+00:00")

    # A checkpoint written before checkpoints were dated: resuming it leaves the start unknown instead of dating it by the resume.
    (resumed.latest() / "state.json").write_text(json.dumps({"step": 2}))
    _, state = resumed.load(resumed.latest(), {})
    resumed.save(3, {}, {**state, "step": 3}, {})
    assert (latest_state(tmp_path)["started"], latest_state(tmp_path)["updated"]) == (None, "2026-01-03T00:00:00+00:00")


@pytest.mark.precision
def test_ship_autoencoder_swaps_one_half_and_refuses_both_changed(vae_run, tmp_path):
    import torch

    from xray_generator.models.autoencoder import load_autoencoder
    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

    autoencoder = train_vae.export_autoencoder(vae_run, tmp_path / "autoencoder")
    config = tiny_config("ldm_tiny.json", max_steps=1)
    config["autoencoder"] = str(autoencoder)
    config["cache_dir"] = str(tmp_path / "cache")
    train_ldm.train_ldm(config, tmp_path / "ldm_run", data_dir=SAMPLE)
    shipped = train_ldm.export_pipeline(tmp_path / "ldm_run", tmp_path / "shipped")
    before = XRayDiffusionPipeline.from_pretrained(shipped)

    # A "fine-tuned" decoder: same encoder, changed decoder.
    tuned = load_autoencoder(autoencoder)
    with torch.no_grad():
        tuned.decoder.conv_out.bias.add_(0.25)
    tuned.save_pretrained(tmp_path / "tuned", safe_serialization=True)
    train_ldm.ship_autoencoder(tmp_path / "tuned", shipped)
    after = XRayDiffusionPipeline.from_pretrained(shipped)  # verifies the rewritten MANIFEST
    assert after.vae.config.scaling_factor == before.vae.config.scaling_factor
    assert torch.allclose(after.vae.decoder.conv_out.bias.float(), before.vae.decoder.conv_out.bias.float() + 0.25, atol=1e-2)
    assert all(torch.equal(a, b) for a, b in zip(after.unet.state_dict().values(), before.unet.state_dict().values()))

    # A "fine-tuned" encoder on the decoder now shipped: accepted, and generation is unchanged.
    generated = after("normal chest", seed=0).images[0]
    with torch.no_grad():
        tuned.encoder.conv_in.weight.mul_(1.01)
    tuned.save_pretrained(tmp_path / "tuned_encoder", safe_serialization=True)
    train_ldm.ship_autoencoder(tmp_path / "tuned_encoder", shipped)
    encoder_tuned = XRayDiffusionPipeline.from_pretrained(shipped)
    # The loaded pipeline holds its modules in the dtype it runs in (bf16 where bf16 is native or
    # CXR_BF16=1 forces it), so the shipped weight is the saved fp32 one after that same cast.
    assert torch.equal(encoder_tuned.vae.encoder.conv_in.weight, tuned.encoder.conv_in.weight.to(encoder_tuned.vae.dtype))
    assert (encoder_tuned("normal chest", seed=0).images[0] == generated).all()

    # Both halves changed would invalidate the UNet's latents: refused, and the shipped folder is untouched.
    with torch.no_grad():
        tuned.decoder.conv_out.bias.add_(0.25)
        tuned.encoder.conv_in.weight.mul_(1.5)
    tuned.save_pretrained(tmp_path / "both_changed", safe_serialization=True)
    manifest = (shipped / "MANIFEST.json").read_text()
    with pytest.raises(ValueError, match="both encoder and decoder"):
        train_ldm.ship_autoencoder(tmp_path / "both_changed", shipped)
    assert (shipped / "MANIFEST.json").read_text() == manifest


@pytest.mark.precision
def test_ship_unet_swaps_a_continued_unet_in_and_refuses_other_latents(vae_run, tmp_path):
    import torch

    from xray_generator.models.autoencoder import load_autoencoder
    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

    autoencoder = train_vae.export_autoencoder(vae_run, tmp_path / "autoencoder")
    config = tiny_config("ldm_tiny.json", max_steps=1)
    config["autoencoder"], config["cache_dir"] = str(autoencoder), str(tmp_path / "cache")
    train_ldm.train_ldm(config, tmp_path / "ldm_run", data_dir=SAMPLE)
    shipped = train_ldm.export_pipeline(tmp_path / "ldm_run", tmp_path / "shipped")
    train_ldm.rewrite_shipped(shipped, lambda staging: (staging / "README.md").write_text("the card\n"))
    before = XRayDiffusionPipeline.from_pretrained(shipped)

    # The shipped UNet trained on for a step (init_from keeps the shipped autoencoder and its normalisation),
    # on a zero-terminal-SNR schedule: the schedule it was trained on must ship with it.
    continued = dict(config, init_from=str(shipped), train=dict(config["train"], max_steps=1, lr=0.01),
                     scheduler=dict(config["scheduler"], rescale_betas_zero_snr=True))
    continued["autoencoder"] = str(shipped / "vae")
    train_ldm.train_ldm(continued, tmp_path / "continued_run", data_dir=SAMPLE)
    candidate = train_ldm.export_pipeline(tmp_path / "continued_run", tmp_path / "candidate")
    train_ldm.ship_unet(candidate, shipped)
    after = XRayDiffusionPipeline.from_pretrained(shipped)  # verifies the rewritten MANIFEST
    expected = XRayDiffusionPipeline.from_pretrained(candidate)
    assert all(torch.equal(a, b) for a, b in zip(after.unet.state_dict().values(), expected.unet.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(after.unet.state_dict().values(), before.unet.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(after.vae.state_dict().values(), before.vae.state_dict().values()))
    assert after.scheduler.config.rescale_betas_zero_snr and not before.scheduler.config.rescale_betas_zero_snr
    assert (shipped / "README.md").read_text() == "the card\n" and "README.md" in json.loads((shipped / "MANIFEST.json").read_text())["files"]
    assert (after("normal chest", seed=0).images[0] == expected("normal chest", seed=0).images[0]).all()

    # A UNet trained on other latents (here: a changed decoder) is refused, and the shipped folder is untouched.
    def change_decoder(staging):
        vae = load_autoencoder(staging / "vae")
        with torch.no_grad():
            vae.decoder.conv_out.bias.add_(0.25)
        vae.save_pretrained(staging / "vae", safe_serialization=True)

    train_ldm.rewrite_shipped(candidate, change_decoder)
    manifest = (shipped / "MANIFEST.json").read_text()
    with pytest.raises(ValueError, match="different autoencoder"):
        train_ldm.ship_unet(candidate, shipped)
    assert (shipped / "MANIFEST.json").read_text() == manifest


def test_an_encoder_fine_tune_keeps_the_decoder_and_logs_latent_drift(vae_run, tmp_path):
    from xray_generator.models.autoencoder import load_autoencoder

    source_dir = train_vae.export_autoencoder(vae_run, tmp_path / "autoencoder")
    config = tiny_config("vae_tiny.json", max_steps=2, freeze_decoder=True, latent_anchor_weight=1.0)
    config["init_from"] = str(source_dir)
    train_vae.train_vae(config, tmp_path / "encoder_run", data_dir=SAMPLE)
    tuned, source = load_autoencoder(train_vae.export_autoencoder(tmp_path / "encoder_run", tmp_path / "tuned")), load_autoencoder(source_dir)
    assert train_ldm.same_part(tuned, source, train_ldm.DECODER_PARTS)
    assert not train_ldm.same_part(tuned, source, train_ldm.ENCODER_PARTS)
    with open(tmp_path / "encoder_run" / "log.csv") as handle:
        drifts = [float(row["latent_drift"]) for row in csv.DictReader(handle)]
    if cpu_precision("bf16") == "fp32":
        assert drifts[0] == 0.0  # starts at the anchor, bit for bit
    else:
        # In bf16 the trained encoder runs under autocast while the anchor runs in fp32, so step 1
        # shows rounding, not movement. This tiny VAE's latent means have a mean square of about
        # 0.1; autocast rounds the inputs of each of the encoder's 17 convolutions to bf16 (relative
        # 2^-9), which adds up like a random walk to about sqrt(17) x 2^-9 = 0.8% rms, a drift of
        # 0.1 x 0.008^2 = 6e-6: measured 6.6e-6 on an AMX CPU, 1.0e-5 to 1.2e-5 emulated on AVX2.
        # 5e-5 allows 3x that error (2.2% rms) and is still 20x below one step's real movement (1e-3).
        assert drifts[0] <= 5e-5
    assert drifts[-1] > drifts[0]  # then moves
    with pytest.raises(ValueError, match="nothing to train"):
        train_vae.train_vae(dict(config, train=dict(config["train"], freeze_encoder=True)), tmp_path / "frozen", data_dir=SAMPLE)


@pytest.mark.precision
def test_a_deeper_encoder_warm_starts_exactly_and_ships_with_the_decoder_untouched(vae_run, tmp_path):
    import torch

    from xray_generator.models.autoencoder import build_autoencoder, load_autoencoder, warm_start_autoencoder

    source_dir = train_vae.export_autoencoder(vae_run, tmp_path / "autoencoder")
    source = load_autoencoder(source_dir)
    depth = source.config.layers_per_block
    deep_config = dict(tiny_config("vae_tiny.json")["model"], layers_per_block=depth + 1, decoder_layers_per_block=depth)

    # The extra encoder resnets start as identities: same latents, and the decoder is the source's.
    deep = build_autoencoder(deep_config)
    warm_start_autoencoder(deep, source)
    assert len(deep.encoder.down_blocks[0].resnets) == depth + 1
    assert len(deep.decoder.up_blocks[0].resnets) == len(source.decoder.up_blocks[0].resnets)
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(deep.eval().encode(x).latent_dist.mean, source.encode(x).latent_dist.mean)

    # Fine-tuned with the decoder frozen and the latents anchored, it exports, loads strictly and
    # ships: ship-autoencoder sees an unchanged decoder.
    config = tiny_config("vae_tiny.json", max_steps=1, freeze_decoder=True, latent_anchor_weight=1.0)
    config["model"], config["init_from"] = deep_config, str(source_dir)
    train_vae.train_vae(config, tmp_path / "deep_encoder_run", data_dir=SAMPLE)
    tuned = load_autoencoder(train_vae.export_autoencoder(tmp_path / "deep_encoder_run", tmp_path / "deep_encoder"))
    assert len(tuned.encoder.down_blocks[0].resnets) == depth + 1
    assert train_ldm.same_part(tuned, source, train_ldm.DECODER_PARTS)


def test_the_checkpoint_schedule_saves_on_interval_budget_and_last_step(monkeypatch):
    import xray_generator.training.checkpointing as checkpointing

    clock = [1000.0]
    monkeypatch.setattr(checkpointing.time, "time", lambda: clock[0])
    schedule = CheckpointSchedule(interval_minutes=5, max_minutes=12, wall_seconds_before=600.0)
    assert not schedule.due() and schedule.due(finished=True)
    clock[0] += 299
    assert not schedule.due()
    clock[0] += 1  # five minutes since the start: the interval is up
    assert schedule.due() and not schedule.out_of_time()
    schedule.saved()
    clock[0] += 60
    assert not schedule.due()
    clock[0] += 360  # twelve minutes in: the budget is spent, whatever the interval says
    assert schedule.out_of_time() and schedule.due()
    assert schedule.wall_seconds() == 600.0 + 720.0  # the resumed run's time plus this session's
    assert not CheckpointSchedule(5, None).out_of_time()


@pytest.mark.precision
def test_set_defaults_rewrites_pipeline_json_and_refuses_bad_values(tiny_pipeline_dir, tmp_path):
    import shutil

    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

    shipped = tmp_path / "shipped"
    shutil.copytree(tiny_pipeline_dir, shipped)
    unet_before = sorted(p.read_bytes() for p in (shipped / "unet").iterdir())
    train_ldm.main(["set-defaults", "--weights", str(shipped), "--steps", "3", "--guidance-fraction", "0.5"])
    pipe = XRayDiffusionPipeline.from_pretrained(shipped)  # verifies the rewritten MANIFEST
    assert pipe.generation_defaults["num_inference_steps"] == 3 and pipe.generation_defaults["guidance_fraction"] == 0.5
    assert pipe("normal chest", seed=0).metadata[0]["guidance_fraction"] == 0.5
    assert sorted(p.read_bytes() for p in (shipped / "unet").iterdir()) == unet_before

    manifest = (shipped / "MANIFEST.json").read_text()
    with pytest.raises(ValueError, match="guidance_fraction"):
        train_ldm.set_generation_defaults(shipped, guidance_fraction=1.5)
    with pytest.raises(ValueError, match="unknown generation defaults"):
        train_ldm.set_generation_defaults(shipped, strength=0.5)
    assert (shipped / "MANIFEST.json").read_text() == manifest


@pytest.mark.precision
def test_a_deeper_decoder_warm_starts_trains_and_ships_with_the_encoder_untouched(vae_run, tmp_path):
    import torch

    from xray_generator.models.autoencoder import build_autoencoder, load_autoencoder, warm_start_autoencoder
    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

    source_dir = train_vae.export_autoencoder(vae_run, tmp_path / "autoencoder")
    source = load_autoencoder(source_dir)
    deep_config = dict(tiny_config("vae_tiny.json")["model"], decoder_layers_per_block=2)

    # Warm start: the extra resnets are identities, so the deeper decoder decodes exactly as the source.
    deep = build_autoencoder(deep_config)
    warm_start_autoencoder(deep, source)
    assert len(deep.decoder.up_blocks[0].resnets) == len(source.decoder.up_blocks[0].resnets) + 1
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(deep.eval().decode(z).sample, source.decode(z).sample)
    with pytest.raises(ValueError, match="beyond encoder or decoder depth"):
        warm_start_autoencoder(build_autoencoder(dict(deep_config, latent_channels=8)), source)

    # Fine-tune it with the encoder frozen; the exported folder round-trips through load_autoencoder.
    config = tiny_config("vae_tiny.json", max_steps=1, freeze_encoder=True)
    config["model"], config["init_from"] = deep_config, str(source_dir)
    train_vae.train_vae(config, tmp_path / "deep_run", data_dir=SAMPLE)
    tuned_dir = train_vae.export_autoencoder(tmp_path / "deep_run", tmp_path / "deep")
    tuned = load_autoencoder(tuned_dir)
    assert tuned.config.decoder_layers_per_block == 2 and len(tuned.decoder.up_blocks[0].resnets) == 3
    assert all(torch.equal(tensor, source.state_dict()[key]) for key, tensor in tuned.state_dict().items() if key.startswith(("encoder.", "quant_conv.")))

    # It ships into a pipeline folder (same encoder), which then loads and generates.
    ldm_config = tiny_config("ldm_tiny.json", max_steps=1)
    ldm_config["autoencoder"], ldm_config["cache_dir"] = str(source_dir), str(tmp_path / "cache")
    train_ldm.train_ldm(ldm_config, tmp_path / "ldm_run", data_dir=SAMPLE)
    shipped = train_ldm.export_pipeline(tmp_path / "ldm_run", tmp_path / "shipped")
    train_ldm.ship_autoencoder(tuned_dir, shipped)
    pipe = XRayDiffusionPipeline.from_pretrained(shipped)
    assert len(pipe.vae.decoder.up_blocks[0].resnets) == 3
    assert pipe("normal chest", seed=0).images[0].shape == (256, 256)


def test_the_adversarial_decoder_recipe_trains_on_cached_latent_crops_with_the_encoder_frozen(vae_run, tmp_path):
    """Perceptual + high-pass patch discriminator (adaptive weight, after a warm-up) on crops of the
    whole films' cached latents: the encoder stays the source's, the discriminator starts first, the
    adaptive weight is logged, and validation reports the spectrum band gap."""
    import torch

    from xray_generator.models.autoencoder import load_autoencoder
    from xray_generator.weights import WeightsError

    source_dir = train_vae.export_autoencoder(vae_run, tmp_path / "autoencoder")
    config = tiny_config("vae_tiny.json", max_steps=3, freeze_encoder=True, latent_crops=True, perceptual_weight=0.5,
                         ssim_weight=0.0, gradient_weight=0.0, kl_weight=0.0, adversarial_weight=0.5,
                         adaptive_adversarial_weight=True, discriminator_highpass=True, amplitude_weight=0.5,
                         discriminator_from_step=0, adversarial_from_step=1, reconstruction_blur_sigma=1.5)
    config["init_from"], config["cache_dir"] = str(source_dir), str(tmp_path / "cache")
    state = train_vae.train_vae(config, tmp_path / "gan_run", data_dir=SAMPLE)
    assert state["step"] == 3
    assert list((tmp_path / "cache").glob("*/train_latents.safetensors"))  # the cache the UNet trainer shares
    with open(tmp_path / "gan_run" / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[0]["adv_weight"]) == 0.0 and float(rows[0]["adv_d"]) > 0.0  # discriminator warms up alone
    assert all(float(row["adv_weight"]) > 0.0 for row in rows[1:])  # then the adaptive weight enters
    assert float(rows[-1]["perc_term"]) > 0.0 and float(rows[-1]["amp_term"]) > 0.0
    assert float(rows[-1]["val_band_gap"]) >= 0.0
    tuned_dir = train_vae.export_autoencoder(tmp_path / "gan_run", tmp_path / "tuned")
    tuned, source = load_autoencoder(tuned_dir), load_autoencoder(source_dir)
    assert train_ldm.same_part(tuned, source, train_ldm.ENCODER_PARTS)
    assert not train_ldm.same_part(tuned, source, train_ldm.DECODER_PARTS)
    # A further fine-tune starts from the discriminator the export kept (verified by its manifest).
    from safetensors.torch import load_file

    again = dict(config, init_from=str(tuned_dir), discriminator_init_from=str(tuned_dir), train=dict(config["train"], max_steps=1, lr=0.0))
    train_vae.train_vae(again, tmp_path / "again_run", data_dir=SAMPLE)
    kept = load_file(str(tuned_dir / "discriminator.safetensors"))
    started = load_file(str(CheckpointDir(tmp_path / "again_run").latest() / "discriminator.safetensors"))
    assert kept.keys() == started.keys() and all(torch.equal(kept[k], started[k]) for k in kept)  # lr 0: unchanged
    (tuned_dir / "discriminator.safetensors").write_bytes(b"not the exported file")
    with pytest.raises(WeightsError):
        train_vae.train_vae(again, tmp_path / "tampered_run", data_dir=SAMPLE)
    with pytest.raises(ValueError, match="latent_crops needs freeze_encoder"):
        train_vae.train_vae(dict(config, train=dict(config["train"], freeze_encoder=False)), tmp_path / "bad", data_dir=SAMPLE)


def test_the_high_pass_discriminator_sees_the_laplacian_and_the_adaptive_weight_balances_gradients():
    import torch

    from xray_generator.training.losses import PatchDiscriminator, adaptive_adversarial_weight, laplacian

    flat = torch.full((1, 1, 8, 8), 0.3)
    assert torch.equal(laplacian(flat), torch.zeros_like(flat))  # no texture, no high-pass
    ramp = torch.arange(8.0).expand(1, 1, 8, 8).clone()
    assert torch.allclose(laplacian(ramp)[..., 1:-1], torch.zeros(1, 1, 8, 6))  # linear: zero away from the border
    d = PatchDiscriminator(width=8, highpass=True)
    assert d.net[0].in_channels == 2 and d(torch.rand(2, 1, 32, 32)).shape[1] == 1
    layer = torch.nn.Parameter(torch.ones(3))
    rec, gen = (layer * 2.0).sum(), (layer * 0.5).sum()  # gradients of norm 2*sqrt(3) and 0.5*sqrt(3)
    assert adaptive_adversarial_weight(rec, gen, layer).item() == pytest.approx(4.0, rel=1e-3)


def test_the_local_amplitude_loss_asks_for_detail_energy_but_not_its_exact_position():
    """Phase-free: a film's texture shifted by a few pixels costs far less than the same film blurred,
    while pixel L1 prefers the blur (the reason pixel losses give blurry reconstructions)."""
    import torch
    import torch.nn.functional as F

    from xray_generator.training.losses import local_amplitude_loss

    generator = torch.Generator().manual_seed(0)
    texture = torch.rand(2, 1, 72, 72, generator=generator) * 2.0 - 1.0
    film = texture[..., 4:68, 4:68]
    shifted = texture[..., 1:65, 2:66]  # the same texture, 3 px up and 2 px left
    kernel = torch.ones(1, 1, 3, 3) / 9.0
    blurred = F.conv2d(F.pad(film, (1, 1, 1, 1), mode="replicate"), kernel)
    assert local_amplitude_loss(film, film).item() == 0.0
    assert (blurred - film).abs().mean() < (shifted - film).abs().mean()  # L1 prefers the blur
    assert local_amplitude_loss(shifted, film) < 0.5 * local_amplitude_loss(blurred, film)  # this loss does not
    prediction = blurred.clone().requires_grad_(True)
    local_amplitude_loss(prediction, film).backward()
    assert torch.isfinite(prediction.grad).all() and prediction.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="differ"):
        local_amplitude_loss(film, film[..., :32])


def test_blurred_pixel_terms_keep_the_coarse_image_and_leave_the_finest_bands_free():
    """`reconstruction_blur_sigma`: a 1.5-px Gaussian passes half the amplitude at 1/8 cycle per pixel and
    almost none at 1/2, so an independent draw of fine texture over the same anatomy costs a fraction of its
    plain L1, while a shifted coarse image still costs as much as before."""
    import math

    import torch

    from xray_generator.training.losses import gaussian_blur

    size = 128
    columns = torch.arange(size, dtype=torch.float32)
    for cycles_per_px, expected in ((1 / 8, math.exp(-2 * (math.pi * 1.5 / 8) ** 2)), (1 / 2, 0.0)):
        wave = torch.cos(2 * math.pi * cycles_per_px * columns).expand(1, 1, size, size)
        kept = gaussian_blur(wave, 1.5)[..., 16:-16, 16:-16].abs().amax().item()
        assert kept == pytest.approx(expected, abs=0.01)
    generator = torch.Generator().manual_seed(0)
    anatomy = gaussian_blur(torch.randn(1, 1, size, size, generator=generator), 4.0) * 4
    texture, other_texture = (torch.randn(1, 1, size, size, generator=generator) * 0.05 for _ in range(2))
    film, redraw, shifted = anatomy + texture, anatomy + other_texture, torch.roll(anatomy, 3, dims=-1) + texture
    plain = lambda a, b: (a - b).abs().mean().item()  # noqa: E731
    blurred = lambda a, b: plain(gaussian_blur(a, 1.5), gaussian_blur(b, 1.5))  # noqa: E731
    assert blurred(redraw, film) < 0.25 * plain(redraw, film)
    assert blurred(shifted, film) > 0.8 * plain(shifted, film)
    assert torch.allclose(gaussian_blur(torch.full((2, 1, 16, 16), 0.3), 1.5), torch.full((2, 1, 16, 16), 0.3))


def test_the_band_power_loss_is_met_by_other_noise_of_the_same_power_but_not_by_a_blur():
    """Why a decoder with noise inputs trains on band power rather than per-frequency amplitude: an independent
    draw of the same texture costs 6 % of a blur's loss on whole bands (the blur removes the power), while the
    local amplitude term charges it over 40 % of a blur's."""
    import torch
    import torch.nn.functional as F

    from xray_generator.evaluation.realism import SPECTRUM_BAND_EDGES
    from xray_generator.training.losses import band_power_loss, local_amplitude_loss

    generator = torch.Generator().manual_seed(0)
    film, other_draw = (torch.randn(2, 1, 128, 128, generator=generator) * 0.1 for _ in range(2))
    blurred = F.avg_pool2d(F.pad(film, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    assert band_power_loss(film, film, SPECTRUM_BAND_EDGES).item() == 0.0
    assert band_power_loss(other_draw, film, SPECTRUM_BAND_EDGES) < 0.1 * band_power_loss(blurred, film, SPECTRUM_BAND_EDGES)
    assert local_amplitude_loss(other_draw, film) > 0.3 * local_amplitude_loss(blurred, film)
    prediction = blurred.clone().requires_grad_(True)
    band_power_loss(prediction, film, SPECTRUM_BAND_EDGES).backward()
    assert torch.isfinite(prediction.grad).all() and prediction.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="square"):
        band_power_loss(film, film[..., :64], SPECTRUM_BAND_EDGES)


def test_weighted_draws_follow_the_label_weights_and_unweighted_ones_are_the_old_draws():
    import numpy as np

    from xray_generator.training.train_ldm import draw_batch

    row_weights = [np.array([1.0, 1.0, 4.0]), np.array([2.0])]  # two latent-size buckets
    rng = np.random.default_rng(0)
    counts = np.zeros(3)
    picks = [draw_batch(rng, row_weights, 16, weighted=True) for _ in range(2000)]
    for b, rows in picks:
        if b == 0:
            np.add.at(counts, rows, 1)
    assert np.mean([b == 0 for b, _ in picks]) == pytest.approx(6 / 8, abs=0.03)  # buckets by their weight
    np.testing.assert_allclose(counts / counts.sum(), [1 / 6, 1 / 6, 4 / 6], atol=0.01)
    # Unweighted: the bucket by its size, then uniform rows, drawn exactly as before weights existed.
    ones = [np.ones(3), np.ones(1)]
    ours, old = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(20):
        b, rows = draw_batch(ours, ones, 4, weighted=False)
        old_b = old.choice(2, p=np.array([3.0, 1.0]) / 4)
        assert b == old_b and rows.tolist() == old.integers(0, [3, 1][old_b], 4).tolist()
