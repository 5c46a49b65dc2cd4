"""Stress test: N concurrent generation requests through one cached pipeline, as the app makes them.

Thread mode (default) loads the pipeline once, like the app's `st.cache_resource`, then
  1. runs the N requests one after another for reference outputs (request i uses seed i);
  2. fires the same N requests at once from N threads, each taking the path of the Generate page:
     `GenerationRequest.check()`, `studio.generation_lock(...)`, `studio.generate_images(pipe, ...)`;
  3. checks every concurrent output against the sequential one for its seed (8-bit PNG bytes and
     the float image, max abs diff must be 0), and reports p50/p95 latency (from the moment all
     requests are fired, so the wait for the lock is included), peak RSS and the errors.
`--no-lock` skips the generation lock, so the threads share the pipeline object truly concurrently
(the library's own thread safety rather than the app's serialisation).

Browser mode (`--browser-users K`) has K headless Chromium users click Generate on the Generate
page of a running studio (`--url`, or one started here on `--weights`) at the same time, and
reports their latency, errors and whether every user got an image.

    python benchmarks/stress_generate.py --weights weights/ldm --requests 8 --steps 14 --json outputs/benchmarks/stress.json
    python benchmarks/stress_generate.py --browser-users 4 --url http://localhost:8501
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_PROMPT = "PA chest radiograph: right lower lobe pneumonia."


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def image_png(image) -> bytes:
    """The 8-bit PNG of an image's pixels alone (metadata holds a timestamp, so it is left out)."""
    from PIL import Image

    from xray_generator.io import to_uint8

    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# Thread mode
# ---------------------------------------------------------------------------------------------------


def run_request(pipe, request, use_lock: bool, started: float, waits: list[int]) -> dict:
    """One user's Generate click, as pages/generate.py makes it; latency counts from `started`."""
    from xray_generator import studio

    try:
        request.check()
        if use_lock:
            with studio.generation_lock(on_wait=lambda: waits.append(1)):
                result = studio.generate_images(pipe, request)
        else:
            result = studio.generate_images(pipe, request)
        return {"seed": request.seed, "latency_s": time.perf_counter() - started, "image": result.images[0].image, "error": None}
    except Exception as exc:  # noqa: BLE001 - every failure is counted and reported, none may stop the others
        return {"seed": request.seed, "latency_s": time.perf_counter() - started, "image": None,
                "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def stress_threads(pipe, requests: int, steps: int | None, prompt: str, use_lock: bool = True) -> dict:
    """Sequential reference outputs, then the same requests from `requests` threads at once; compared and timed."""
    import numpy as np

    from xray_generator import studio

    make = lambda seed: studio.GenerationRequest(prompt=prompt, seed=seed, steps=steps)  # noqa: E731

    sequential, sequential_latency = {}, []
    for seed in range(requests):
        start = time.perf_counter()
        sequential[seed] = studio.generate_images(pipe, make(seed)).images[0].image
        sequential_latency.append(time.perf_counter() - start)
    rss_after_sequential = peak_rss_mb()

    waits: list[int] = []
    started = [0.0]
    # Every thread waits at the barrier, so all requests reach the lock (or the pipeline) together;
    # the clock starts as they are released.
    barrier = threading.Barrier(requests, action=lambda: started.__setitem__(0, time.perf_counter()))

    def user(seed: int) -> dict:
        barrier.wait()
        return run_request(pipe, make(seed), use_lock, started[0], waits)

    wall = time.perf_counter()
    with ThreadPoolExecutor(max_workers=requests) as pool:
        outcomes = list(pool.map(user, range(requests)))
    wall = time.perf_counter() - wall

    errors = [o for o in outcomes if o["error"] is not None]
    mismatched, max_abs_diff = [], 0.0
    for outcome in outcomes:
        if outcome["image"] is None:
            continue
        reference = sequential[outcome["seed"]]
        diff = float(np.max(np.abs(outcome["image"].astype(np.float64) - reference.astype(np.float64))))
        max_abs_diff = max(max_abs_diff, diff)
        if diff != 0.0 or image_png(outcome["image"]) != image_png(reference):
            mismatched.append(outcome["seed"])
    latencies = [o["latency_s"] for o in outcomes]
    effective_steps = steps if steps is not None else pipe.generation_defaults["num_inference_steps"]
    return {
        "mode": "threads" + ("" if use_lock else " (no lock)"),
        "requests": requests,
        "steps": effective_steps,
        "lock": use_lock,
        "errors": len(errors),
        "error_messages": sorted({e["error"] for e in errors}),
        "identical": len(outcomes) - len(errors) - len(mismatched),
        "mismatched_seeds": mismatched,
        "max_abs_diff": max_abs_diff,
        "waited_for_lock": len(waits),
        "sequential_p50_s": round(percentile(sequential_latency, 50), 4),
        "p50_s": round(percentile(latencies, 50), 4),
        "p95_s": round(percentile(latencies, 95), 4),
        "max_s": round(max(latencies), 4),
        "wall_s": round(wall, 4),
        "throughput_per_s": round(requests / wall, 3) if wall > 0 else None,
        "peak_rss_mb_after_sequential": round(rss_after_sequential, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


# ---------------------------------------------------------------------------------------------------
# Browser mode
# ---------------------------------------------------------------------------------------------------


def browser_user(url: str, prompt: str, start_gate: threading.Barrier, timeout_ms: int) -> dict:
    """One Chromium user: open the Generate page, wait for every other user, click Generate, time it."""
    from playwright import sync_api

    from tests.test_browser_e2e import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, generate_in_browser

    # One Playwright instance per thread: the sync API must not be shared across threads.
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(url, timeout=timeout_ms)
            page.get_by_role("heading", name="Generate").first.wait_for(timeout=timeout_ms)
            start_gate.wait(timeout=timeout_ms / 1000)
            start = time.perf_counter()
            try:
                generate_in_browser(page, prompt)
                error = None
            except Exception as exc:  # noqa: BLE001 - a timeout or a crash counts as this user's error
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            latency = time.perf_counter() - start
            images = page.locator('[data-testid="stImage"] img').count()
            tracebacks = page.locator('[data-testid="stException"]').count()
            alerts = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
            if error is None and (tracebacks or alerts or not images):
                error = f"page shows {tracebacks} traceback(s), errors {alerts}, {images} image(s)"
            return {"latency_s": latency, "images": images, "error": error}
        finally:
            browser.close()


def stress_browser(url: str | None, users: int, prompt: str, weights: Path, timeout_s: float = 600.0) -> dict:
    """K concurrent browser users on the Generate page; starts a studio server on `weights` if no URL is given."""
    import contextlib
    import tempfile

    from tests.test_browser_e2e import streamlit_server, studio_env

    with contextlib.ExitStack() as stack:
        if url is None:
            outputs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cxr_stress_")))
            url = stack.enter_context(streamlit_server(studio_env(weights.parent, outputs), timeout=180))
        gate = threading.Barrier(users)
        wall = time.perf_counter()
        with ThreadPoolExecutor(max_workers=users) as pool:
            futures = [pool.submit(browser_user, url, prompt, gate, int(timeout_s * 1000)) for _ in range(users)]
            outcomes = []
            for future in futures:
                try:
                    outcomes.append(future.result())
                except Exception as exc:  # noqa: BLE001 - e.g. the page never loaded
                    outcomes.append({"latency_s": float("nan"), "images": 0, "error": f"{type(exc).__name__}: {exc}"})
        wall = time.perf_counter() - wall
    latencies = [o["latency_s"] for o in outcomes if o["error"] is None]
    errors = [o["error"] for o in outcomes if o["error"] is not None]
    return {
        "mode": "browser",
        "url": url,
        "requests": users,
        "errors": len(errors),
        "error_messages": sorted(set(errors)),
        "with_image": sum(1 for o in outcomes if o["images"] > 0),
        "p50_s": round(percentile(latencies, 50), 3) if latencies else None,
        "p95_s": round(percentile(latencies, 95), 3) if latencies else None,
        "max_s": round(max(latencies), 3) if latencies else None,
        "wall_s": round(wall, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),  # this driver only; the server's memory is its own
    }


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def markdown_table(results: dict) -> str:
    rows = [("mode", results["mode"]), ("requests", results["requests"])]
    if results["mode"].startswith("threads"):
        rows += [
            ("steps per image", results["steps"]),
            ("generation lock (app path)", "yes" if results["lock"] else "no"),
            ("errors", results["errors"]),
            ("outputs identical to the sequential run", f"{results['identical']} / {results['requests']}"),
            ("max abs pixel difference", results["max_abs_diff"]),
            ("requests that waited for the lock", results["waited_for_lock"]),
            ("sequential latency p50", f"{results['sequential_p50_s']:.3f} s"),
            ("concurrent latency p50", f"{results['p50_s']:.3f} s"),
            ("concurrent latency p95", f"{results['p95_s']:.3f} s"),
            ("concurrent wall time", f"{results['wall_s']:.3f} s"),
            ("peak RSS", f"{results['peak_rss_mb']:.0f} MB"),
        ]
    else:
        rows += [
            ("errors", results["errors"]),
            ("users who got an image", f"{results['with_image']} / {results['requests']}"),
            ("latency p50", "n/a" if results["p50_s"] is None else f"{results['p50_s']:.2f} s"),
            ("latency p95", "n/a" if results["p95_s"] is None else f"{results['p95_s']:.2f} s"),
            ("wall time", f"{results['wall_s']:.2f} s"),
        ]
    lines = ["| measure | value |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    for message in results.get("error_messages", []):
        lines.append(f"\nerror: {message}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(REPO / "weights" / "ldm"), help="pipeline folder (default weights/ldm)")
    parser.add_argument("--requests", type=int, default=8, help="concurrent requests in thread mode (default 8)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps per image (default: the model's)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--no-lock", action="store_true", help="bypass the app's generation lock (library thread safety)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: CXR_NUM_THREADS or torch's)")
    parser.add_argument("--browser-users", type=int, default=0, help="instead of threads: this many concurrent Chromium users")
    parser.add_argument("--url", default=None, help="studio URL for --browser-users (default: start one on --weights)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.requests < 1 or args.browser_users < 0:
        raise SystemExit("--requests must be at least 1 and --browser-users at least 0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    weights = Path(args.weights)
    if args.browser_users:
        results = stress_browser(args.url, args.browser_users, args.prompt, weights)
    else:
        import torch

        from xray_generator import studio
        from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

        if args.threads is not None:
            torch.set_num_threads(args.threads)
        else:
            studio.apply_thread_setting()
        start = time.perf_counter()
        pipe = XRayDiffusionPipeline.from_pretrained(weights)  # one object shared by every request, as the app caches it
        load_s = time.perf_counter() - start
        results = stress_threads(pipe, args.requests, args.steps, args.prompt, use_lock=not args.no_lock)
        results.update(load_s=round(load_s, 3), weights=str(weights), weights_sha256=pipe.weights_hash, torch_threads=torch.get_num_threads())
    print(markdown_table(results))
    if args.json:
        from xray_generator.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    outcome = main()
    sys.exit(1 if outcome["errors"] or outcome.get("mismatched_seeds") else 0)
