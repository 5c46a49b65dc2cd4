"""generate-dataset: the job list, byte-identical output for 1 and 2 processes, resume after SIGKILL."""
from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from xray_generator import synthetic_dataset as sd
from xray_generator.distributed import LaunchError, check_launch

REPO = Path(__file__).resolve().parent.parent
PROMPTS = "prompt,negative_prompt,n\nnormal adult chest radiograph,,3\nright lower lobe pneumonia,blurry,\n"


def dataset_command(weights: Path, out: Path, prompts: Path, *extra: str) -> list[str]:
    # One thread per process: a PNG's bytes are stable for a fixed thread count (oneDNN's reductions
    # split by thread), and the tests share two cores with other work.
    return ["-m", "xray_generator", "generate-dataset", "--prompts", str(prompts), "--per-prompt", "2", "--seed", "5",
            "--weights", str(weights), "--out", str(out), "--threads", "1", "--steps", "1", "--quiet", *extra]


def child_env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU"):
        env.pop(name, None)
    return env


def read_manifest(folder: Path) -> list[dict]:
    with open(folder / sd.MANIFEST_NAME, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.csv"
    path.write_text(PROMPTS)
    return path


@pytest.fixture(scope="module")
def one_process_run(tiny_pipeline_dir, prompts_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "set"
    subprocess.run([sys.executable, *dataset_command(tiny_pipeline_dir, out, prompts_file)], cwd=REPO, env=child_env(), check=True, timeout=600)
    return out


# ------------------------------------------------------------------------------------------ job list
def test_job_list_gives_each_image_its_own_seed_and_file_from_the_request_alone(prompts_file):
    jobs = sd.build_jobs(sd.read_prompt_file(prompts_file), per_prompt=2, seed=5)
    assert [(j.prompt[:6], j.negative_prompt, j.seed, j.file) for j in jobs] == [
        ("normal", "", 5, "xray_000000.png"), ("normal", "", 6, "xray_000001.png"), ("normal", "", 7, "xray_000002.png"),
        ("right ", "blurry", 8, "xray_000003.png"), ("right ", "blurry", 9, "xray_000004.png"),
    ]
    batches = sd.batches_of(jobs, 2)
    # Two processes split the fixed batches between them; together they hold every batch exactly once.
    assert sd.shard(batches, 0, 2) + sd.shard(batches, 1, 2) == [batches[0], batches[2], batches[1]]


@pytest.mark.parametrize("text, message", [
    ("text\nhello\n", "needs a header row with a 'prompt' column"),
    ("prompt,n\n,2\n", "line 2: the prompt is empty"),
    ("prompt,n\nnormal chest,two\n", "line 2: n must be a whole number"),
    ("prompt,label\nnormal chest,x\n", "unknown columns ['label']"),
    ("prompt\n", "holds no prompts"),
    ("prompt\nnormal\x00chest\n", "line 2: prompt contains"),
])
def test_bad_prompt_files_are_refused_with_the_line(tmp_path, text, message):
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(sd.DatasetRequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        sd.read_prompt_file(path)


def test_prompts_from_metadata_follow_the_split():
    rows = sd.prompts_from_metadata("test", max_prompts=5, seed=0)
    assert len(rows) == 5 and all(row["prompt"] and row["negative_prompt"] == "" for row in rows)
    with pytest.raises(sd.DatasetRequestError, match="split 'nosuch' has no films"):
        sd.prompts_from_metadata("nosuch")


def test_plain_cpu_launch_with_several_processes_is_refused():
    # accelerate 1.15's `launch --cpu --num_processes 2` starts one process and sets only MASTER_ADDR.
    with pytest.raises(LaunchError, match="--multi_gpu --num_processes N"):
        check_launch({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"})
    check_launch({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "2"})
    check_launch({"ACCELERATE_USE_CPU": "True"})


# ------------------------------------------------------------------------------------------ runs
def test_one_process_run_writes_pngs_with_provenance_and_a_manifest_with_their_sha256(one_process_run):
    rows = read_manifest(one_process_run)
    assert [row["file"] for row in rows] == [f"xray_{i:06d}.png" for i in range(5)]
    assert [int(row["seed"]) for row in rows] == [5, 6, 7, 8, 9]
    for row in rows:
        data = (one_process_run / row["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["png_sha256"]
        assert row["steps"] == "1" and row["batch_size"] == str(sd.DEFAULT_BATCH_SIZE) and row["synthetic"] == "True" and row["weights_sha256"]
    from xray_generator.io import read_png_metadata

    assert read_png_metadata(one_process_run / "xray_000003.png")["negative_prompt"] == "blurry"
    assert not list(one_process_run.glob(".*.tmp"))


def test_two_processes_under_accelerate_give_the_same_manifest_and_png_bytes(one_process_run, tiny_pipeline_dir, prompts_file, tmp_path):
    out = tmp_path / "two"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(29500 + os.getpid() % 1000)]
    result = subprocess.run([*launch, *dataset_command(tiny_pipeline_dir, out, prompts_file)], cwd=REPO, env=child_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "by process 0 of 2" in result.stdout  # two processes really ran
    # The manifest holds no timing column (timing goes to run.json), so the files must match byte for byte.
    assert (out / sd.MANIFEST_NAME).read_bytes() == (one_process_run / sd.MANIFEST_NAME).read_bytes()
    for row in read_manifest(out):
        assert (out / row["file"]).read_bytes() == (one_process_run / row["file"]).read_bytes()


def test_sigkill_mid_run_then_rerun_gives_every_image_once_and_none_corrupt(one_process_run, tiny_pipeline_dir, prompts_file, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, *dataset_command(tiny_pipeline_dir, out, prompts_file)]
    process = subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(out.glob("xray_*.png"))) < 2 and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = sorted(out.glob("xray_*.png"))
    assert 2 <= len(finished) < 5, "the run must be killed part-way"
    assert not (out / sd.MANIFEST_NAME).exists()
    # What a kill at a worse moment, or a failing disk, leaves: a truncated PNG and a temporary file.
    finished[0].write_bytes(finished[0].read_bytes()[:300])
    (out / ".xray_000004.png.123.abcd.tmp").write_bytes(b"partial")
    kept = finished[1]
    kept_mtime = kept.stat().st_mtime_ns

    subprocess.run(command, cwd=REPO, env=child_env(), check=True, timeout=600)
    rows = read_manifest(out)
    assert sorted(row["file"] for row in rows) == [f"xray_{i:06d}.png" for i in range(5)]  # each exactly once
    assert sorted(p.name for p in out.iterdir()) == sorted([row["file"] for row in rows] + [sd.MANIFEST_NAME, sd.SPEC_NAME])
    for row in rows:
        data = (out / row["file"]).read_bytes()
        with Image.open(out / row["file"]) as image:
            image.load()  # decodes fully: not corrupt
        assert hashlib.sha256(data).hexdigest() == row["png_sha256"]
        assert data == (one_process_run / row["file"]).read_bytes()  # the same image an uninterrupted run made
    assert kept.stat().st_mtime_ns == kept_mtime, "a finished image is verified and kept, not made again"


def test_a_rerun_with_other_settings_into_the_same_folder_is_refused(one_process_run, tiny_pipeline_dir, prompts_file, tmp_path, capsys):
    import shutil

    from xray_generator.__main__ import main

    out = tmp_path / "copy"
    shutil.copytree(one_process_run, out)
    threads = torch.get_num_threads()
    try:
        code = main(["generate-dataset", "--prompts", str(prompts_file), "--per-prompt", "2", "--seed", "5", "--weights", str(tiny_pipeline_dir),
                     "--out", str(out), "--threads", "1", "--steps", "2", "--quiet"])
    finally:
        torch.set_num_threads(threads)
    assert code == 2
    assert "holds a data set made with other settings" in capsys.readouterr().err


def test_index_url_registers_the_manifest_rows_and_an_unreachable_server_fails_before_generating(one_process_run, tiny_pipeline_dir,
                                                                                               prompts_file, tmp_path, capsys):
    import shutil

    from xray_generator.__main__ import main
    from xray_generator.data.index import generated_films

    out = tmp_path / "registered"
    shutil.copytree(one_process_run, out)  # every image is there: the run only verifies them, then registers
    url = f"sqlite:///{tmp_path / 'lab.sqlite'}"
    base = ["generate-dataset", "--prompts", str(prompts_file), "--per-prompt", "2", "--seed", "5", "--weights", str(tiny_pipeline_dir),
            "--threads", "1", "--steps", "1", "--quiet"]
    threads = torch.get_num_threads()
    try:
        assert main([*base, "--out", str(out), "--index-url", url]) == 0
        assert "registered 5 generated films" in capsys.readouterr().out
        films = generated_films(url)
        assert sorted(Path(f).name for f in films["file"]) == [row["file"] for row in read_manifest(out)]
        nowhere = f"postgresql+psycopg://nobody@/cxr?host={tmp_path}"
        assert main([*base, "--out", str(tmp_path / "never"), "--index-url", nowhere]) == 2
    finally:
        torch.set_num_threads(threads)
    assert "cannot reach the index database" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
