"""How fast the studio feels: cold start, one 256 px image from the click, and each page's render time.

    python benchmarks/bench_app.py                      # shipped weights (weights/), 3 runs
    python benchmarks/bench_app.py --weights-dir /tmp/tiny --runs 3 --threads 1

Each run starts `streamlit run app.py` afresh and drives it with headless Chromium (Playwright):

* cold start: from starting the server process to the Generate page fully rendered (model loaded);
* first image: from the click on Generate to the 256 px image shown (the first call warms up torch);
* warm image: a second click in the same session;
* page render: from the click on a page's navigation link until the page has finished running and
  every chart has drawn, with the shipped sample dataset (dataset/).

Each run's outputs (samples, search index, caches) start empty, except the runtime export of the
weights (`outputs/cache/runtime`): with CXR_BACKEND=onnxruntime or openvino the benchmark first runs
`python -m xray_generator export-runtime` (instant when the export exists) and links that cache into
each run, so the first image measures a start of the app after the one-off export, not the export.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PAGES = [
    ("Enhancement comparison", "Enhancement comparison"),
    ("Dataset explorer", "Dataset explorer"),
    ("Research console", "Research console: real vs generated"),
    ("Metrics dashboard", "Metrics dashboard"),
    ("Model analysis", "Model analysis"),
    ("About this data", "About this data"),
    ("Generate", "Generate"),
]
IDLE_SCRIPT = """() => !document.querySelector('[data-testid="stStatusWidget"]') &&
    [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].every(c => c.querySelector('.main-svg'))"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server(env: dict[str, str], log_path: Path):
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"streamlit exited with code {process.returncode}; see {log_path}")
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                        if response.read().strip() == b"ok":
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("streamlit did not become healthy within 180 s")
                time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_idle(page, timeout_ms: int = 600_000) -> None:
    # The status widget appears a moment after a rerun starts; give it that moment.
    page.wait_for_timeout(150)
    page.wait_for_function(IDLE_SCRIPT, timeout=timeout_ms)


def caption_of_first_image(page) -> str:
    captions = page.get_by_text("SYNTHETIC · seed")
    return captions.first.inner_text() if captions.count() else ""


def click_generate_and_wait(page, timeout_ms: int = 600_000) -> float:
    before = caption_of_first_image(page)
    start = time.perf_counter()
    page.get_by_role("button", name="Generate", exact=True).click()
    page.wait_for_function(
        """(before) => { const el = [...document.querySelectorAll('[data-testid="stImage"]')]
                          .find(e => e.innerText.includes('SYNTHETIC · seed'));
                          if (!el || el.innerText === before) return false;
                          const img = el.querySelector('img'); return img && img.complete && img.naturalWidth > 0; }""",
        arg=before, timeout=timeout_ms)
    return time.perf_counter() - start


def generation_seconds_shown(page) -> float:
    """The server's own time for the last generation, from the result's summary ("1 image(s) in 0.9 s · …"):
    the click-to-image time minus it is what the browser, the websocket and the page's rerun add."""
    text = page.get_by_text(re.compile(r"image\(s\) in [0-9.]+ s")).first.inner_text()
    return float(re.search(r"image\(s\) in ([0-9.]+) s", text).group(1))


def one_run(browser, env: dict[str, str], log_path: Path, prompt: str, pages: bool = True) -> dict[str, float]:
    """One cold run. `env` must name a fresh CXR_OUTPUTS_DIR, so no run reuses another's caches."""
    timings: dict[str, float] = {}
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        start = time.perf_counter()
        with server(env, log_path) as url:
            page.goto(url)
            page.get_by_role("heading", name="Generate").wait_for(timeout=600_000)
            page.get_by_role("button", name="Generate", exact=True).wait_for(timeout=600_000)
            wait_idle(page)
            timings["cold start to Generate page"] = time.perf_counter() - start
            page.get_by_label("Prompt", exact=True).fill(prompt)
            page.get_by_label("Prompt", exact=True).blur()
            wait_idle(page)
            timings["256 px image from click (first)"] = click_generate_and_wait(page)
            wait_idle(page)
            timings["  of which generating on the server (first)"] = generation_seconds_shown(page)
            timings["256 px image from click (warm)"] = click_generate_and_wait(page)
            wait_idle(page)
            timings["  of which generating on the server (warm)"] = generation_seconds_shown(page)
            for link, heading in PAGES if pages else ():
                start = time.perf_counter()
                page.get_by_role("link", name=link).first.click()
                page.get_by_role("heading", name=heading).first.wait_for(timeout=600_000)
                wait_idle(page)
                timings[f"page: {link}"] = time.perf_counter() - start
                if link == "Research console":
                    start = time.perf_counter()
                    page.get_by_role("button", name="Compare", exact=True).click()
                    page.get_by_text("Memorisation check").first.wait_for(timeout=600_000)
                    wait_idle(page)
                    timings["console: Compare (N=4, generates + indexes)"] = time.perf_counter() - start
    finally:
        page.close()
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--weights-dir", default=None, help="weights root (default: CXR_WEIGHTS_DIR or weights/)")
    parser.add_argument("--data-dir", default=str(REPO / "dataset"), help="dataset for the page timings (default: the shipped sample)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the server (CXR_NUM_THREADS)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--prompt", default="PA chest radiograph: right lower lobe consolidation.")
    parser.add_argument("--json", default=None, help="also write the raw timings here")
    parser.add_argument("--no-pages", action="store_true", help="only cold start and the two images (skip the page timings)")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    outputs = Path(tempfile.mkdtemp(prefix="bench_app_"))
    env = dict(os.environ, CXR_DATA_DIR=args.data_dir, CXR_SAMPLE_DIR=args.data_dir,
               HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    if args.weights_dir:
        env["CXR_WEIGHTS_DIR"] = str(Path(args.weights_dir).resolve())
    if args.threads:
        env["CXR_NUM_THREADS"] = str(args.threads)
    weights = env.get("CXR_WEIGHTS_DIR", str(REPO / "weights"))
    print(f"weights: {weights} · data: {args.data_dir} · threads: {args.threads or 'torch default'} · runs: {args.runs}")
    print(f"server logs: {outputs / 'streamlit.log'}")

    runtime_cache = REPO / "outputs" / "cache" / "runtime"
    backend = env.get("CXR_BACKEND", "torch")
    if backend != "torch":
        subprocess.run([sys.executable, "-m", "xray_generator", "export-runtime", "--backend", backend], check=True,
                       env={**env, "CXR_CACHE_DIR": str(runtime_cache.parent)})
    runtime_cache.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, float]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        try:
            for index in range(args.runs):
                run_outputs = outputs / f"run{index + 1}"  # cold: no cached samples or search index from earlier runs
                run_outputs.mkdir()
                (run_outputs / "cache").mkdir()
                (run_outputs / "cache" / "runtime").symlink_to(runtime_cache, target_is_directory=True)
                timings = one_run(browser, {**env, "CXR_OUTPUTS_DIR": str(run_outputs)}, outputs / "streamlit.log", args.prompt,
                                  pages=not args.no_pages)
                runs.append(timings)
                print(f"run {index + 1}: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()), flush=True)
        finally:
            browser.close()

    names = list(runs[0])
    width = max(len(name) for name in names)
    print()
    print(f"{'measure':<{width}}  {'median':>8}  {'min':>8}  {'max':>8}")
    print(f"{'-' * width}  {'-' * 8}  {'-' * 8}  {'-' * 8}")
    for name in names:
        values = [run[name] for run in runs if name in run]
        print(f"{name:<{width}}  {statistics.median(values):>7.2f}s  {min(values):>7.2f}s  {max(values):>7.2f}s")
    if args.json:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from xray_generator.io import atomic_write_text

        atomic_write_text(args.json, json.dumps({"weights": weights, "threads": args.threads, "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
