"""Faults and load: a killed training run or CLI batch resumes cleanly, a failed write keeps the old file,
damaged weights give a one-line CLI error naming the file, and concurrent generation is deterministic."""
from __future__ import annotations

import csv
import errno
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, flip_one_byte
from xray_generator.__main__ import main as cli
from xray_generator.io import atomic_write, atomic_write_text, read_gray, read_png_metadata
from xray_generator.training.checkpointing import CheckpointDir
from xray_generator.weights import write_manifest


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


# ------------------------------------------------------------------ CLI batch interrupted, then rerun


def read_manifest(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_cli_batch_resumes_and_its_manifest_is_complete(tiny_pipeline_dir, tmp_path, capsys, stop):
    """Stop `generate --n 4` once the first image is on disk; the rerun skips it and finishes the batch."""
    out = tmp_path / "batch"
    args = ["generate", "--prompt", "left lower lobe pneumonia", "--n", "4", "--seed", "20", "--steps", "50",
            "--weights", str(tiny_pipeline_dir), "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CXR_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    # A suite started in the background by a non-interactive shell inherits SIGINT ignored, and so
    # would the CLI: give it the default disposition, as a terminal user's process has.
    process = subprocess.Popen([sys.executable, "-m", "xray_generator", *args], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 180
        while not (out / "xray_0000.png").exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert (out / "xray_0000.png").exists(), "the first image never appeared"
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    done = sorted(p.name for p in out.glob("xray_*.png"))
    assert 1 <= len(done) < 4, f"the batch was not interrupted mid-way: {done}"
    if stop == signal.SIGINT:
        assert process.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr
        assert not list(out.glob(".*.tmp")), "an interrupted write left a temporary file"
    for name in done:  # whatever is on disk under its final name is a whole image
        assert read_gray(out / name).shape == (256, 256)
    if (out / "xray_manifest.csv").exists():  # the manifest on disk is valid and lists only finished images
        assert {row["file"] for row in read_manifest(out / "xray_manifest.csv")} <= set(done)
    first = (out / "xray_0000.png").read_bytes()

    capsys.readouterr()
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert "xray_0000.png" not in printed  # skipped, not made again
    assert (out / "xray_0000.png").read_bytes() == first
    rows = read_manifest(out / "xray_manifest.csv")
    assert [row["file"] for row in rows] == [f"xray_{i:04d}.png" for i in range(4)]
    assert [row["seed"] for row in rows] == ["20", "21", "22", "23"]
    for row in rows:
        meta = read_png_metadata(out / row["file"])
        assert meta["seed"] == int(row["seed"]) and meta["prompt"] == row["prompt"] == "left lower lobe pneumonia"
        assert meta["weights_sha256"] == row["weights_sha256"] and row["synthetic"] == "True"


def test_rerun_of_a_finished_batch_rewrites_a_missing_manifest(tiny_pipeline_dir, tmp_path, capsys):
    args = ["generate", "--prompt", "normal chest", "--n", "2", "--steps", "2", "--weights", str(tiny_pipeline_dir), "-o", str(tmp_path)]
    assert cli(args) == 0
    (tmp_path / "xray_manifest.csv").unlink()
    assert cli(args) == 0
    assert len(read_manifest(tmp_path / "xray_manifest.csv")) == 2


# ------------------------------------------------------------------ damaged weights through the CLI


def damage(folder, case: str):
    """Damage a copy of a weights folder; return the file the error message must name."""
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if case == "truncated":
        unet.write_bytes(unet.read_bytes()[:-100])
    elif case == "corrupt":
        flip_one_byte(unet, None)  # the middle byte
    elif case == "missing":
        unet.unlink()
    elif case == "manifest-missing":
        (folder / "MANIFEST.json").unlink()
        return folder
    elif case == "manifest-garbage":
        (folder / "MANIFEST.json").write_text('{"files": ')
        return folder / "MANIFEST.json"
    elif case == "bad-export":  # not safetensors at all, yet listed with its true hash: a broken export, not tampering
        unet.write_bytes(b"this is not a safetensors file")
        write_manifest(folder)
        return folder / "unet"
    elif case == "pipeline-json":
        (folder / "pipeline.json").write_text("{not json")
        write_manifest(folder)
        return folder / "pipeline.json"
    return unet


@pytest.mark.parametrize("case", ["truncated", "corrupt", "missing", "manifest-missing", "manifest-garbage", "bad-export", "pipeline-json"])
def test_damaged_weights_give_one_line_naming_the_file_and_exit_2(tiny_pipeline_dir, tmp_path, capsys, case):
    folder = tmp_path / "ldm"
    shutil.copytree(tiny_pipeline_dir, folder)
    named = damage(folder, case)
    capsys.readouterr()
    code = cli(["generate", "--prompt", "normal chest", "--steps", "2", "--weights", str(folder), "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(named) in err
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------ concurrency: benchmarks/stress_generate.py


def load_stress_script():
    spec = importlib.util.spec_from_file_location("stress_generate", REPO / "benchmarks" / "stress_generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("lock", [True, False], ids=["app-lock", "no-lock"])
def test_concurrent_requests_match_the_sequential_outputs(tiny_pipeline_dir, tmp_path, capsys, lock):
    stress = load_stress_script()
    report = tmp_path / "stress.json"
    argv = ["--weights", str(tiny_pipeline_dir), "--requests", "4", "--steps", "2", "--json", str(report)]
    results = stress.main(argv + ([] if lock else ["--no-lock"]))
    assert results["errors"] == 0, results["error_messages"]
    assert results["identical"] == 4 and results["mismatched_seeds"] == [] and results["max_abs_diff"] == 0.0
    assert 0 < results["p50_s"] <= results["p95_s"] and results["peak_rss_mb"] > 0
    assert json.loads(report.read_text())["identical"] == 4
    assert "| outputs identical to the sequential run | 4 / 4 |" in capsys.readouterr().out
