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


# ------------------------------------------------------------------ the studio as people use image generators


def is_local(url: str) -> bool:
    return url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:", "about:"))


def image_bytes(page, locator) -> bytes:
    """The bytes the browser shows for an <img> (Streamlit serves them from /media/, content-addressed)."""
    src = locator.evaluate("img => img.src")
    response = page.request.get(src)
    assert response.ok, src
    return response.body()


def first_synthetic_image(page):
    return page.locator('[data-testid="stImage"]').filter(has_text="SYNTHETIC · seed").first.locator("img")


def shown_seed(page) -> int:
    caption = page.locator('[data-testid="stImage"]').filter(has_text="SYNTHETIC · seed").first.inner_text()
    return int(caption.split("seed ")[1].split(" ")[0])


def assert_image_beside_controls_in_view(page) -> None:
    """Done means: after Generate, the image lies fully inside the 1400 x 1000 viewport, right of the prompt box."""
    image_box = first_synthetic_image(page).bounding_box()
    prompt_box = page.get_by_label("Prompt", exact=True).bounding_box()
    assert page.evaluate("() => (document.querySelector('[data-testid=\"stMain\"]') || document.scrollingElement).scrollTop") == 0
    assert image_box["x"] >= 0 and image_box["y"] >= 0, image_box
    assert image_box["x"] + image_box["width"] <= VIEWPORT["width"], image_box
    assert image_box["y"] + image_box["height"] <= VIEWPORT["height"], image_box
    assert image_box["x"] >= prompt_box["x"] + prompt_box["width"], (image_box, prompt_box)


def wait_for_new_image(page, before: bytes | None) -> bytes:
    """Until the first generated image is shown and differs from `before` (None: any image); its bytes."""
    first_synthetic_image(page).wait_for(timeout=120_000)
    wait_until_idle(page)
    shown = image_bytes(page, first_synthetic_image(page))
    return shown


def download(page, button: str) -> bytes:
    with page.expect_download() as info:
        page.get_by_role("button", name=button).first.click()
    return Path(info.value.path()).read_bytes()


def gray_png(data: bytes):
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32)


def test_generate_history_restore_paint_and_edit_in_chromium(tiny_weights_root, tmp_path):
    """Generate twice (the second with Ctrl+Enter), restore the first from the history and reproduce it byte for byte;
    paint a mask stroke on the Edit page and edit: pixels change only inside the stroke and its feather."""
    import cv2
    import numpy as np
    from playwright import sync_api

    from xray_generator.pipelines.editing import DIFFERENCE_GAIN, FEATHER_SIGMA

    outputs = tmp_path / "outputs"
    outputs.mkdir()
    requests: list[str] = []
    with streamlit_server(studio_env(tiny_weights_root, outputs)) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
            page.on("request", lambda request: requests.append(request.url))
            page.goto(url)
            page.get_by_role("heading", name="Generate").wait_for(timeout=120_000)
            wait_until_idle(page)

            # 1. Generate with the button (random seed).
            page.get_by_label("Prompt", exact=True).fill("PA chest radiograph: right lower lobe consolidation")
            page.get_by_role("button", name="Generate", exact=True).click()
            first = wait_for_new_image(page, None)
            first_seed = shown_seed(page)
            assert_image_beside_controls_in_view(page)
            page.screenshot(path=str(SCREENSHOTS / "8_generate_viewport.png"))  # the viewport only: what is seen unscrolled

            # 2. Generate again with Ctrl+Enter in the prompt (another random seed).
            prompt = page.get_by_label("Prompt", exact=True)
            prompt.fill("PA chest radiograph: left upper lobe mass")
            prompt.press("Control+Enter")
            page.wait_for_function("(seed) => [...document.querySelectorAll('[data-testid=\"stImage\"]')]"
                                   ".some(e => e.innerText.includes('SYNTHETIC · seed') && !e.innerText.includes('seed ' + seed + ' '))",
                                   arg=first_seed, timeout=120_000)
            second = wait_for_new_image(page, first)
            assert shown_seed(page) != first_seed and second != first
            assert page.get_by_role("button", name="Restore #1").is_visible()
            assert page.get_by_role("button", name="Restore #2").is_visible()

            # 3. Restore #1 and generate: the same settings and seed give the same bytes.
            page.get_by_role("button", name="Restore #1").click()
            wait_until_idle(page)
            assert prompt.input_value() == "PA chest radiograph: right lower lobe consolidation"
            assert page.get_by_role("spinbutton", name="Seed value").input_value() == str(first_seed)
            page.get_by_role("button", name="Generate", exact=True).click()
            page.get_by_text("Byte-identical to history #1").wait_for(timeout=120_000)
            wait_until_idle(page)
            assert image_bytes(page, first_synthetic_image(page)) == first
            save_screenshot(page, "8b_generate_history")

            # 4. Edit: paint a stroke on the film, edit, measure where pixels changed.
            page.get_by_role("link", name="Edit a radiograph").first.click()
            page.get_by_role("heading", name="Edit a radiograph").first.wait_for(timeout=120_000)
            wait_until_idle(page)
            pick_option(page, "Where to edit", "Paint on the film")
            canvas = page.locator("canvas.upper-canvas").first
            canvas.wait_for(timeout=60_000)
            canvas.scroll_into_view_if_needed()
            box = canvas.bounding_box()
            scale = 256 / box["width"]  # canvas px -> film px at the model's size
            start, end = (box["x"] + 0.25 * box["width"], box["y"] + 0.55 * box["height"]), \
                         (box["x"] + 0.40 * box["width"], box["y"] + 0.70 * box["height"])
            page.mouse.move(*start)
            page.mouse.down()
            page.mouse.move(*end, steps=12)
            page.mouse.up()
            page.get_by_text("of the film.").first.wait_for(timeout=60_000)  # "Mask: x% of the film."
            wait_until_idle(page)
            painted_share = page.get_by_text("of the film.").first.inner_text()
            # The eraser across the stroke's end takes that end out of the mask; the rest of the stroke stays.
            page.get_by_text("Eraser", exact=True).click()
            wait_until_idle(page)
            across = 0.04 * box["width"]
            page.mouse.move(end[0] - across, end[1] + across)
            page.mouse.down()
            page.mouse.move(end[0] + across, end[1] - across, steps=8)
            page.mouse.up()
            page.wait_for_function("(before) => [...document.querySelectorAll('p')].some(p => p.innerText.includes('of the film.')"
                                   " && p.innerText !== before)", arg=painted_share, timeout=60_000)
            wait_until_idle(page)
            # (the canvas's toolbar has an "Edit" toggle of its own)
            page.get_by_test_id("stBaseButton-primary").filter(has_text="Edit").click()
            page.get_by_text("Edited in").first.wait_for(timeout=120_000)
            wait_until_idle(page)
            save_screenshot(page, "9_edit_painted")
            mask = gray_png(download(page, "Mask PNG")) >= 128
            difference = gray_png(download(page, "Difference PNG")) / DIFFERENCE_GAIN  # |after - before| in grey levels

            # The mask is the stroke: on the line between the two points, nowhere far from it.
            film = lambda point: (round((point[0] - box["x"]) * scale), round((point[1] - box["y"]) * scale))  # noqa: E731
            (x0, y0), (x1, y1) = film(start), film(end)
            assert mask[(y0 + y1) // 2, (x0 + x1) // 2] and mask[y0, x0]
            assert not mask[y1, x1], "the eraser stroke did not take the stroke's end out of the mask"
            assert 0.002 < mask.mean() < 0.1, mask.mean()
            # Inside the stroke and its feather (3 sigma) pixels may change; outside, the mean change is at most 2 grey levels.
            radius = int(np.ceil(3 * FEATHER_SIGMA))
            near = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)) > 0
            outside_change = float(difference[~near].mean())
            inside_change = float(difference[mask].mean())
            print(f"mean change outside the stroke and feather: {outside_change:.3f} grey levels; inside: {inside_change:.2f}")
            assert outside_change <= 2.0
            assert inside_change > outside_change

            # 5. The enhancement comparison's slider between two presets moves.
            page.get_by_role("link", name="Enhancement comparison").first.click()
            page.get_by_role("heading", name="Enhancement comparison").first.wait_for(timeout=120_000)
            wait_until_idle(page)
            frame = page.frame_locator("iframe[title='st.iframe']").first if page.locator("iframe[title='st.iframe']").count() \
                else page.frame_locator("iframe").first
            slider = frame.locator("input[type=range]")
            slider.fill("20")
            assert "20%" in frame.locator("img.after").evaluate("img => img.style.clipPath")
            save_screenshot(page, "10_enhance_slider")
        finally:
            browser.close()
    remote = sorted({u for u in requests if not is_local(u)})
    assert not remote, f"the studio fetched from the network: {remote}"
