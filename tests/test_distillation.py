"""Distilling the UNet's many-step guided sampling into a few-step DDIM student (`training/distil_ldm.py`)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from tests.conftest import REPO
from xray_generator.pipelines.latent_diffusion import SAMPLERS, XRayDiffusionPipeline
from xray_generator.training import distil_ldm, train_ldm

SAMPLE = REPO / "dataset"
SHIPPED_SCHEDULE = json.loads((REPO / "weights" / "ldm" / "scheduler" / "scheduler_config.json").read_text())


@pytest.mark.parametrize("steps", [4, 7, 8])
def test_the_v_target_is_the_one_whose_ddim_step_lands_on_the_teachers_latent(steps):
    scheduler = DDIMScheduler.from_config(SHIPPED_SCHEDULE, **SAMPLERS["ddim"][1])
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(0)
    for t, t_next in distil_ldm.student_steps(SHIPPED_SCHEDULE, steps):
        x_t, v = torch.randn(2, 8, 16, 16, generator=generator), torch.randn(2, 8, 16, 16, generator=generator)
        landed = scheduler.step(v, t, x_t).prev_sample  # what the pipeline's "ddim" sampler does with v
        target = distil_ldm.ddim_v_target(x_t, landed, distil_ldm.alpha_sigma(scheduler, t), distil_ldm.alpha_sigma(scheduler, t_next))
        assert torch.allclose(target, v, atol=1e-4), (t, t_next)


def test_a_16_step_teacher_holds_the_4_and_8_step_students_timesteps_but_not_the_7_step_ones():
    captured = set(distil_ldm.teacher_capture_timesteps(SHIPPED_SCHEDULE, 16))
    for steps in (4, 8):
        assert {t for pair in distil_ldm.student_steps(SHIPPED_SCHEDULE, steps) for t in pair} <= captured
    assert distil_ldm.student_steps(SHIPPED_SCHEDULE, 4) == [(999, 749), (749, 499), (499, 249), (249, -1)]
    assert not {t for pair in distil_ldm.student_steps(SHIPPED_SCHEDULE, 7) for t in pair} <= captured


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """An untrained tiny pipeline on the shipped model's schedule (trailing timesteps, zero terminal SNR)."""
    from diffusers import DDPMScheduler

    from tests.conftest import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing", rescale_betas_zero_snr=True)
    folder = tmp_path_factory.mktemp("teacher") / "ldm"
    pipe.save_pretrained(folder)
    return folder


def tiny_distil_config(tmp_path, teacher_dir, **train) -> dict:
    config = json.loads((REPO / "configs" / "ldm_distil_4.json").read_text())
    config.update(init_from=str(teacher_dir), trajectories=str(tmp_path / "trajectories"), val_trajectories=4, prompt_variants=2)
    config["teacher"].update(steps=4, scales=[3], chunk=4, size=64)
    config["student_steps"] = 2
    config["train"].update(batch_size=4, lr=1e-3, warmup_steps=1, max_steps=40, checkpoint_minutes=0, log_every=1, num_threads=1, ema_decay=0.8, **train)
    return config


def test_trajectories_resume_by_chunk_and_a_student_learns_to_land_on_its_teacher(tiny_teacher, tmp_path):
    config = tiny_distil_config(tmp_path, tiny_teacher)
    folder = distil_ldm.make_trajectories(config, 8, data_dir=SAMPLE)
    first = (folder / "trajectories-00000.safetensors").read_bytes()
    distil_ldm.make_trajectories(config, 16, data_dir=SAMPLE)  # two chunks more; the first two are kept as they are
    assert (folder / "trajectories-00000.safetensors").read_bytes() == first
    latents, prompts, timesteps = distil_ldm.load_trajectories(folder)
    assert latents.shape == (16, 5, 4, 8, 8) and len(prompts) == 16 and timesteps[-1] == -1

    # The teacher's last captured latent is its sample: decoding it gives the teacher's own image.
    teacher = XRayDiffusionPipeline.from_pretrained(tiny_teacher, torch_dtype=torch.float32)
    seed = 500_000 + 3
    image = teacher(prompts[3], seed=seed, num_inference_steps=4, guidance_scale=3.0, guidance_fraction=0.25, height=64, width=64,
                    backend="torch").pil_images[0]
    decoded = teacher.decode_latents(latents[3:4, -1].float())[0, 0].numpy()
    assert np.abs(np.asarray(image, dtype=np.float32) / 255.0 - decoded).max() < 0.03

    state = distil_ldm.distil(config, tmp_path / "run")
    assert state["step"] == 40
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    header = log[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in log[1:] if line.split(",")[header.index("val_final_mse")]]
    first_mse, last_mse = float(rows[0]["val_final_mse"]), float(rows[-1]["val_final_mse"])
    assert int(rows[0]["step"]) == 0 and int(rows[-1]["step"]) == 40
    # On held-out trajectories, the student's whole 2-step run lands nearer the teacher's 4-step sample than the teacher's own 2 steps did.
    assert last_mse < 0.8 * first_mse, (first_mse, last_mse)

    exported = train_ldm.export_pipeline(tmp_path / "run", tmp_path / "student")
    student = XRayDiffusionPipeline.from_pretrained(exported)
    assert student.generation_defaults["sampler"] == "ddim" and student.generation_defaults["num_inference_steps"] == 4
    assert student.generation_defaults["guidance_scale"] == 1.0
    out = student("normal chest radiograph", seed=1, num_inference_steps=2, height=64, width=64, backend="torch")
    assert np.asarray(out.pil_images[0]).std() > 0


def test_a_student_whose_steps_the_teacher_did_not_visit_is_refused(tiny_teacher, tmp_path):
    config = tiny_distil_config(tmp_path, tiny_teacher)
    distil_ldm.make_trajectories(config, 4, data_dir=SAMPLE)
    config["student_steps"] = 3
    with pytest.raises(ValueError, match="no latents at timesteps"):
        distil_ldm.distil(config, tmp_path / "run")
