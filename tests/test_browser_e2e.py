"""End to end in a real browser: `streamlit run app.py` + headless Chromium via Playwright.

Types a prompt, clicks Generate, checks the image really rendered and that the PNG download carries
its generation metadata; generates with a tiny conditional DCGAN and translates a film with a tiny
CVAE (the other alternative families are missing and say so); then visits every page and saves a screenshot of each under
outputs/screenshots/ (for a person to look at; the test only checks that each page renders).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 1000}
SCREENSHOTS = REPO / "outputs" / "screenshots"
# (navigation title, heading on the page, screenshot name)
PAGES = [
    ("Enhancement comparison", "Enhancement comparison", "2_enhance"),
    ("Dataset explorer", "Dataset explorer", "3_dataset"),
    ("Research console", "Research console: real vs generated", "4_console"),
    ("Metrics dashboard", "Metrics dashboard", "5_metrics"),
    ("Model analysis", "Model analysis", "6_models"),
    ("About this data", "About this data", "7_about_data"),
]

pytestmark = pytest.mark.needs(CHROMIUM, "Install Debian's chromium: apt-get install chromium (.ci/run does)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def streamlit_server(env: dict[str, str], timeout: float = 90.0):
    """Start `streamlit run app.py` on a free localhost port; yield its URL; stop it (and only it)."""
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    log = open(env["CXR_OUTPUTS_DIR"] + "/streamlit.log", "wb")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {process.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"streamlit did not become healthy within {timeout} s")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def studio_env(weights_root: Path, outputs: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CXR_WEIGHTS_DIR=str(weights_root), CXR_OUTPUTS_DIR=str(outputs), CXR_DATA_DIR=str(REPO / "dataset"),
               CXR_SAMPLE_DIR=str(REPO / "dataset"), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO),
               # One torch thread: the test shares two cores with background training (see studio.apply_thread_setting).
               CXR_NUM_THREADS="1")
    return env


def wait_until_idle(page, timeout_ms: int = 120_000) -> None:
    """Until the script has finished running and every plotly chart has drawn."""
    page.wait_for_timeout(300)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')].every(c => c.querySelector('.main-svg'))",
        timeout=timeout_ms,
    )
    page.wait_for_timeout(500)


def save_screenshot(page, name: str) -> Path:
    """The whole page: the viewport is stretched to the main area's height, then restored."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = page.evaluate("() => (document.querySelector('[data-testid=\"stMain\"]') || document.body).scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": min(max(VIEWPORT["height"], height), 6000)})
    page.wait_for_timeout(400)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    page.set_viewport_size(VIEWPORT)
    return path


def generate_in_browser(page, prompt: str) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Prompt", exact=True).blur()  # commit the text area before the click
    page.get_by_role("button", name="Generate", exact=True).click()
    page.locator('[data-testid="stImage"] img').first.wait_for(timeout=120_000)
    wait_until_idle(page)


def pick_option(page, box: str, option: str) -> None:
    page.get_by_role("combobox", name=box, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()
    wait_until_idle(page)


def alternative_families_in_browser(page) -> None:
    """A noise family generates a captioned image; the CVAE shows input | translation | difference map."""
    pick_option(page, "Model family", "Conditional DCGAN")
    pick_option(page, "Condition", "Pneumonia")
    page.get_by_role("button", name="Generate", exact=True).click()
    page.get_by_text("SYNTHETIC · dcgan_conditional").first.wait_for(timeout=60_000)
    wait_until_idle(page)
    assert page.locator('[data-testid="stImage"] img').first.evaluate("img => img.complete && img.naturalWidth") > 0
    save_screenshot(page, "1b_generate_dcgan_conditional")
    pick_option(page, "Model family", "CVAE (healthy → pneumonia translation)")
    page.get_by_role("button", name="Translate", exact=True).click()
    page.get_by_text("SYNTHETIC · difference map").first.wait_for(timeout=60_000)
    wait_until_idle(page)
    assert page.locator('[data-testid="stImage"] img').count() == 3
    save_screenshot(page, "1c_generate_cvae")
    pick_option(page, "Model family", "LSGAN — not trained yet")
    # wait_for, not is_visible: on a loaded CPU the rerun can start after wait_until_idle's first look.
    page.get_by_text("is not trained yet — train with").first.wait_for(timeout=60_000)
    pick_option(page, "Model family", "Latent diffusion (text to X-ray)")


def test_generate_download_and_every_page_in_chromium(tiny_families_root, tmp_path):
    from playwright import sync_api

    from xray_generator.io import read_png_metadata

    outputs = tmp_path / "outputs"
    outputs.mkdir()
    prompt = "PA chest radiograph: right lower lobe consolidation"
    with streamlit_server(studio_env(tiny_families_root, outputs)) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
            page.goto(url)
            page.get_by_role("heading", name="Generate").wait_for(timeout=120_000)
            generate_in_browser(page, prompt)

            image = page.locator('[data-testid="stImage"] img').first
            assert image.evaluate("img => img.complete && img.naturalWidth") > 0
            assert page.get_by_text("SYNTHETIC · seed").first.is_visible()
            assert page.get_by_text("steps/s").first.is_visible()

            with page.expect_download() as download_info:
                page.get_by_role("button", name="PNG (with metadata)").first.click()
            png = Path(download_info.value.path()).read_bytes()
            metadata = read_png_metadata(png)
            assert metadata["prompt"] == prompt
            assert metadata["synthetic"] is True and metadata["weights_sha256"]
            save_screenshot(page, "1_generate")
            alternative_families_in_browser(page)

            for nav_title, heading, name in PAGES:
                page.get_by_role("link", name=nav_title).first.click()
                page.get_by_role("heading", name=heading).first.wait_for(timeout=120_000)
                wait_until_idle(page)
                if name == "4_console":
                    page.get_by_role("button", name="Compare", exact=True).click()
                    page.get_by_text("Memorisation check").first.wait_for(timeout=120_000)
                    wait_until_idle(page)
                    page.get_by_role("button", name="Start a new quiz").click()
                    page.get_by_text("Quiz image: real or SYNTHETIC?").wait_for(timeout=60_000)
                    wait_until_idle(page)
                assert page.locator('[data-testid="stException"]').count() == 0, f"{heading} shows a traceback"
                assert page.locator('[data-testid="stAlertContentError"]').count() == 0, f"{heading} shows an error"
                save_screenshot(page, name)
                if name == "3_dataset":
                    page.get_by_role("tab", name="Distributions").click()
                    wait_until_idle(page)
                    save_screenshot(page, "3_dataset_distributions")
        finally:
            browser.close()
