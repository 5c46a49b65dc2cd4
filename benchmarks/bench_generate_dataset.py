"""Throughput of `generate-dataset`: images per second with 1 and 2 processes and batch sizes 1, 4 and 8, in one run.

Each configuration runs the real command in a fresh output folder (one process: plain
`python -m xray_generator`; two: `accelerate launch --multi_gpu --num_processes 2`, which on a
machine without CUDA starts two CPU processes with gloo), with the cores shared out: 1 process x 2
threads, or 2 processes x 1 thread. Reported per configuration:
  - end to end: images / wall time of the whole command (start-up, model load, rendering, manifest);
  - rendering: images / rendering time of the main process's shard x processes (the steady rate a
    long run approaches, since start-up is paid once).
Configurations run in the order given, one at a time.

    python benchmarks/bench_generate_dataset.py --images 16 --json outputs/benchmarks/generate_dataset.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xray_generator.io import atomic_write_text  # noqa: E402

PROMPTS = ("Adult PA chest radiograph: right lower lobe pneumonia.", "Normal pediatric chest radiograph.",
           "Adult AP chest film with bilateral COVID-19 opacities.", "Normal adult PA chest radiograph.")


def run_configuration(processes: int, batch_size: int, images: int, weights: str | None, cores: int, folder: Path, steps: int | None) -> dict:
    prompts = folder / "prompts.csv"
    per_prompt = images // len(PROMPTS)
    prompts.write_text("prompt\n" + "".join(f"{p}\n" for p in PROMPTS))
    out = folder / f"p{processes}_b{batch_size}"
    threads = max(1, cores // processes)
    command = ["-m", "xray_generator", "generate-dataset", "--prompts", str(prompts), "--per-prompt", str(per_prompt), "--seed", "0",
               "--out", str(out), "--batch-size", str(batch_size), "--threads", str(threads), "--quiet"]
    if weights:
        command += ["--weights", weights]
    if steps:
        command += ["--steps", str(steps)]
    if processes > 1:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        command = [*launch, *command]
    else:
        command = [sys.executable, *command]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    last_run = json.loads((out / "run.json").read_text())["last_run"]
    rendering = last_run["rendered"] / last_run["seconds"] * processes
    return {"processes": processes, "threads_per_process": threads, "batch_size": batch_size, "images": per_prompt * len(PROMPTS),
            "wall_seconds": round(wall, 2), "images_per_second_end_to_end": round(per_prompt * len(PROMPTS) / wall, 3),
            "images_per_second_rendering": round(rendering, 3)}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="images per configuration (a multiple of 4; default 16)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--weights", default=None, help="pipeline folder (default weights/ldm)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's); fewer for a quick run on a loaded machine")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores to share out between the processes")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.images < 4 or args.images % 4:
        parser.error("--images must be a multiple of 4")
    results = []
    before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench_generate_dataset_") as folder:
        for processes in args.processes:
            for batch_size in args.batch_sizes:
                if processes * batch_size > args.images:
                    print(f"skipped {processes} processes x batch {batch_size}: fewer than one batch per process in {args.images} images", flush=True)
                    continue
                row = run_configuration(processes, batch_size, args.images, args.weights, args.cores, Path(folder), args.steps)
                row["load_average_after"] = load_average()
                results.append(row)
                print(json.dumps(row), flush=True)
    fastest = max(results, key=lambda r: r["images_per_second_rendering"])
    print(f"\nfastest rendering: {fastest['processes']} process(es) x {fastest['threads_per_process']} threads, batch {fastest['batch_size']}: "
          f"{fastest['images_per_second_rendering']} images/s")
    print("\n| processes x threads | batch | end to end, images/s | rendering, images/s |\n|---|--:|--:|--:|")
    for r in results:
        print(f"| {r['processes']} x {r['threads_per_process']} | {r['batch_size']} | {r['images_per_second_end_to_end']} | {r['images_per_second_rendering']} |")
    if args.json:
        document = {"results": results, "fastest": fastest, "cpu": platform.processor() or platform.machine(), "cores": args.cores,
                    "load_average_before": before, "date": time.strftime("%Y-%m-%d %H:%M"), "images": args.images,
                    "steps": args.steps or "model default"}
        atomic_write_text(Path(args.json), json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
