"""fp32 against bf16 autocast on this CPU, same run: the measurement behind `xray_generator/precision.py`.

Times a training step (forward and backward) of a two-layer 64-channel convolution block on a
batch of 8 at 64x64: enough to show whether bf16 is native (faster) or emulated (many times slower).

    python benchmarks/bench_precision.py [--threads 1] [--repeats 7] [--json outputs/benchmarks/precision.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from xray_generator.io import atomic_write_text  # noqa: E402
from xray_generator.precision import NATIVE_BF16_FLAGS, cpu_flags, cpu_has_native_bf16  # noqa: E402


def time_step(block: torch.nn.Module, x: torch.Tensor, bf16: bool, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats + 1):  # the first call warms oneDNN's kernel cache and is dropped
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = block(x)
        out.float().square().mean().backward()
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(64, 64, 3, padding=1))
    x = torch.randn(8, 32, 64, 64)
    fp32 = statistics.median(time_step(block, x, False, args.repeats))
    bf16 = statistics.median(time_step(block, x, True, args.repeats))
    flags = cpu_flags()
    results = {
        "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16_flags": sorted(flag for flag in NATIVE_BF16_FLAGS if flag in flags),
        "cpu_has_native_bf16": cpu_has_native_bf16(),
        "fp32_median_s": round(fp32, 4), "bf16_autocast_median_s": round(bf16, 4), "bf16_over_fp32": round(bf16 / fp32, 2),
    }
    print(f"torch {torch.__version__}, {args.threads} thread(s), capability {results['cpu_capability']}, native bf16 flags: {results['native_bf16_flags'] or 'none'}")
    print(f"conv block step, median of {args.repeats}: fp32 {fp32 * 1e3:.1f} ms, bf16 autocast {bf16 * 1e3:.1f} ms ({bf16 / fp32:.2f}x fp32)")
    print(f"the code runs bf16 here: {cpu_has_native_bf16()}")
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
