"""Faults: a training run killed at a random moment resumes cleanly; a failed write keeps the old file."""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from xray_generator.io import atomic_write, atomic_write_text
from xray_generator.training.checkpointing import CheckpointDir


def test_failed_write_leaves_the_previous_file_intact(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, '{"ok": true}')

    def write_half_then_fill_the_disk(handle):
        handle.write(b'{"ok": fal')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, write_half_then_fill_the_disk)
    assert json.loads(target.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind


def test_training_killed_at_a_random_moment_resumes_from_an_intact_checkpoint(tmp_path):
    """SIGKILL the VAE trainer mid-run, then resume: the checkpoint on disk loads, and at most one interval is lost."""
    config = json.loads((REPO / "configs" / "vae_tiny.json").read_text())
    config["train"].update(max_steps=400, checkpoint_minutes=0.02)  # a checkpoint about every second
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "xray_generator.training.train_vae", "train", "--config", str(config_path), "--run", str(run), "--resume", "--data-dir", str(REPO / "dataset")]
    env = {**os.environ, "CXR_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while CheckpointDir(run).latest() is None and time.time() < deadline:
            time.sleep(0.2)
        assert CheckpointDir(run).latest() is not None, "the trainer wrote no checkpoint"
        time.sleep(random.uniform(0.5, 3.0))  # kill at an arbitrary point, possibly mid-checkpoint
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    latest = CheckpointDir(run).latest()
    killed_at = json.loads((latest / "state.json").read_text())["step"]
    config["train"]["max_steps"] = killed_at + 2
    config_path.write_text(json.dumps(config))
    resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from step-{killed_at:08d}" in resumed.stdout
    assert json.loads((CheckpointDir(run).latest() / "state.json").read_text())["step"] == killed_at + 2
