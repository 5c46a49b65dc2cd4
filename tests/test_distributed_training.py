"""The ldm and classifier trainers under `accelerate launch` with 2 CPU processes (gloo DDP).

Each test trains a tiny config for 2 steps with 2 processes of batch B and, in this process, 2 steps
with 1 process of batch 2B: the same global batch, since every process draws the global batch from
identically seeded generators and trains on its slice (xray_generator/training/checkpointing.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO
from tests.test_training import SAMPLE, log_steps, tiny_config
from xray_generator.training import train_classifier, train_ldm, train_vae
from xray_generator.training.checkpointing import CheckpointDir

PER_PROCESS_BATCH = 2


def launch_two_processes(module: str, config: dict, run: Path, *extra: str) -> None:
    config_path = run.parent / f"{run.name}_config.json"
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU"):
        env.pop(name, None)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(29500 + os.getpid() % 1000 + 1),
               "-m", module, "train", "--config", str(config_path), "--run", str(run), "--data-dir", str(SAMPLE), *extra]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]


def checkpoint(run: Path, step: int, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / f"step-{step:08d}" / f"{name}.safetensors"))


def relative_difference(a: dict, b: dict, reference_step: tuple[dict, dict]) -> float:
    """||a - b|| over the size of one optimiser step of the reference run, ||w2 - w1||."""
    before, after = reference_step
    gap = sum(float(((a[k].float() - b[k].float()) ** 2).sum()) for k in a if a[k].is_floating_point())
    step = sum(float(((after[k].float() - before[k].float()) ** 2).sum()) for k in after if after[k].is_floating_point())
    return (gap / step) ** 0.5


def assert_ranks_agree(run: Path) -> None:
    ranks = json.loads((run / "ranks.json").read_text())
    assert ranks["processes"] == 2
    assert len(set(ranks["weights_sha256_by_rank"])) == 1, "both processes must hold identical weights"


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp_vae")
    train_vae.train_vae(tiny_config("vae_tiny.json", max_steps=1), root / "run", data_dir=SAMPLE)
    return train_vae.export_autoencoder(root / "run", root / "autoencoder")


# Tolerance: the 2-process run must land within a quarter of ONE optimiser step (the reference's second
# update, ||w2 - w1||) of the 1-process weights. With the same global batch the gradients differ only by
# floating-point order (two half-batch means averaged by the all-reduce against one mean; convolutions
# over 2 images against 4). AdamW's first steps are nearly sign(gradient) x lr, so a gradient component
# within rounding of 0 can flip and move its weight by up to 2 lr; rounding is coarser in bf16.
# Measured on the 2-core AVX2 CPU: 1.0e-4 of a step in fp32, 4.4e-2 under CXR_BF16=1, while a run on half
# the global batch (what one process would learn alone) lands 2.4 steps away, so 0.25 separates the two.
TOLERANCE_IN_STEPS = 0.25


def test_ldm_trains_under_two_processes_like_one_with_the_same_global_batch_and_resumes(autoencoder, tmp_path):
    config = tiny_config("ldm_tiny.json", max_steps=2, num_threads=1)
    config["autoencoder"] = str(autoencoder)
    config["cache_dir"] = str(tmp_path / "cache")
    single = dict(config, train=dict(config["train"], batch_size=2 * PER_PROCESS_BATCH))
    train_ldm.train_ldm(single, tmp_path / "one", data_dir=SAMPLE)
    launch_two_processes("xray_generator.training.train_ldm", dict(config, train=dict(config["train"], batch_size=PER_PROCESS_BATCH)), tmp_path / "two")

    assert_ranks_agree(tmp_path / "two")
    one_step = (checkpoint(tmp_path / "one", 1, "unet"), checkpoint(tmp_path / "one", 2, "unet"))
    gap = relative_difference(checkpoint(tmp_path / "two", 2, "unet"), one_step[1], one_step)
    assert gap < TOLERANCE_IN_STEPS, f"2 processes ended {gap:.3f} of a step from 1 process with the same global batch"
    half_batch = dict(config, train=dict(config["train"], batch_size=PER_PROCESS_BATCH))  # what one process learns alone
    train_ldm.train_ldm(half_batch, tmp_path / "control", data_dir=SAMPLE)
    control = relative_difference(checkpoint(tmp_path / "control", 2, "unet"), one_step[1], one_step)
    print(f"ldm: 2 processes {gap:.2e} of a step from 1 process; another batch {control:.3f}")
    assert control > 4 * TOLERANCE_IN_STEPS, f"the tolerance must separate another batch ({control:.3f} of a step)"

    # Checkpoints are written once, by the main process: one folder per step and one log row per step.
    state = json.loads((CheckpointDir(tmp_path / "two").latest() / "state.json").read_text())
    assert state["step"] == 2 and state["samples_seen"] == 2 * 2 * PER_PROCESS_BATCH
    assert log_steps(tmp_path / "two") == [1, 2]
    launch_two_processes("xray_generator.training.train_ldm",
                         dict(config, train=dict(config["train"], batch_size=PER_PROCESS_BATCH, max_steps=3)), tmp_path / "two", "--resume")
    assert CheckpointDir(tmp_path / "two").latest().name == "step-00000003"
    assert log_steps(tmp_path / "two") == [1, 2, 3]
    assert_ranks_agree(tmp_path / "two")


def test_classifier_trains_under_two_processes_with_identical_weights_and_one_checkpoint_writer(tmp_path):
    config = train_classifier.load_config(REPO / "configs" / "classifier_tiny.json")
    config["train"].update(max_steps=2, num_threads=1, batch_size=PER_PROCESS_BATCH)
    config["cache_dir"] = str(tmp_path / "cache")
    launch_two_processes("xray_generator.training.train_classifier", config, tmp_path / "two")
    assert_ranks_agree(tmp_path / "two")
    state = json.loads((CheckpointDir(tmp_path / "two").latest() / "state.json").read_text())
    assert state["step"] == 2 and state["samples_seen"] == 2 * 2 * PER_PROCESS_BATCH
    assert log_steps(tmp_path / "two") == [1, 2]
    # No 1-process comparison here, unlike the ldm: the ResNet's BatchNorm normalises each process's slice by
    # its own statistics (SyncBatchNorm, which the trainer uses on GPUs, refuses CPU tensors), so N processes
    # of batch B are not one process of batch N x B. Measured: after one step, 75 % of the first convolution's
    # weights moved in the other direction; with BatchNorm in eval mode the half-batch gradients averaged
    # match the full batch's to 7e-8 (relative).
