"""The studio's page logic without Streamlit: generation history, painted masks, HTML image views, finding chips."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from xray_generator import generation_history, painted_mask, studio
from xray_generator.image_views import comparison_slider_html, pixel_view_html, slider_frame_height
from xray_generator.pipelines.editing import prepare_mask, region_mask


# ------------------------------------------------------------------ history


def fake_result(image: np.ndarray, seed: int, n: int = 1) -> studio.GenerationResult:
    images = [studio.GeneratedImage(image, image, {"seed": seed + i, "resolution": image.shape[0], "native_resolution": 256,
                                                   "upscaled": False, "sampler": "dpm++", "steps": 7, "guidance": 4.0,
                                                   "guidance_fraction": 0.28}) for i in range(n)]
    return studio.GenerationResult(images, seconds=0.5, total_steps=7 * n)


def request(seed: int, **changes) -> studio.GenerationRequest:
    fields = dict(prompt="left basilar atelectasis", sampler="dpm++", steps=7, guidance=4.0, guidance_fraction=0.28,
                  seed=seed, num_images=1, resolution=256, preset="None")
    return studio.GenerationRequest(**{**fields, **changes})


def test_history_keeps_the_newest_24_with_their_settings():
    rng = np.random.default_rng(0)
    history: list = []
    for number in range(1, 31):
        entry = generation_history.entry_from_result(request(number), fake_result(rng.random((256, 256), np.float32), number),
                                                     generation_history.next_number(history))
        history = generation_history.add_entry(history, entry)
    assert len(history) == generation_history.HISTORY_LIMIT == 24
    assert [e.number for e in history[:2]] == [30, 29] and history[-1].number == 7  # newest first, oldest dropped
    assert history[0].settings["seed"] == 30 and history[0].settings["prompt"] == "left basilar atelectasis"
    assert history[0].thumbnail.dtype == np.float32 and max(history[0].thumbnail.shape) == generation_history.THUMBNAIL_SIDE
    assert history[0].caption.startswith("SYNTHETIC")


def test_restoring_an_entry_fixes_its_seed_and_drops_a_vanished_preset():
    image = np.full((256, 256), 0.5, np.float32)
    entry = generation_history.entry_from_result(request(41, preset="My preset (saved)"), fake_result(image, 41), 1)
    values, notices = generation_history.restored_widget_values(entry, allowed_presets=["None", "Balanced"])
    assert values["seed_mode"] == "Fixed" and values["seed"] == 41 and values["steps"] == 7
    assert values["preset"] == "None" and "no longer available" in notices[0]
    values, notices = generation_history.restored_widget_values(entry)
    assert values["preset"] == "My preset (saved)" and not notices


def test_unset_settings_are_filled_from_the_image_metadata():
    entry = generation_history.entry_from_result(request(3, sampler=None, steps=None, guidance=None, guidance_fraction=None),
                                                 fake_result(np.zeros((256, 256), np.float32), 3), 1)
    assert (entry.settings["sampler"], entry.settings["steps"], entry.settings["guidance"]) == ("dpm++", 7, 4.0)


def test_a_byte_identical_result_is_matched_to_its_entry_and_a_one_level_change_is_not():
    image = np.random.default_rng(1).random((256, 256)).astype(np.float32)
    first = generation_history.entry_from_result(request(5), fake_result(image, 5), 1)
    other = generation_history.entry_from_result(request(6), fake_result(image[::-1].copy(), 6), 2)
    history = generation_history.add_entry([first], other)
    assert generation_history.matching_entry(history, first.fingerprints).number == 1
    changed = image.copy()
    changed[0, 0] = (round(changed[0, 0] * 255) + 1) / 255 if changed[0, 0] < 0.99 else 0.0
    assert generation_history.matching_entry(history, (generation_history.image_fingerprint(changed),)) is None
    assert generation_history.matching_entry(history, first.fingerprints, exclude=1) is None


def test_history_refuses_an_empty_result_and_a_zero_limit():
    with pytest.raises(ValueError, match="without images"):
        generation_history.entry_from_result(request(1), studio.GenerationResult([], 0.0, 0), 1)
    with pytest.raises(ValueError, match="at least 1"):
        generation_history.add_entry([], None, limit=0)


# ------------------------------------------------------------------ painted masks


def canvas_with(strokes, side: int = 512) -> np.ndarray:
    """An RGBA canvas as the browser returns it: translucent strokes composited in order (later on top)."""
    import cv2

    rgb = np.zeros((side, side, 3), np.float32)
    alpha = np.zeros((side, side), np.float32)
    for colour, start, end, width in strokes:
        layer = np.zeros((side, side), np.uint8)
        cv2.line(layer, start, end, 255, width)
        a = (layer > 0) * colour[3]
        out_alpha = a + alpha * (1 - a)
        rgb = np.where(out_alpha[..., None] > 0,
                       (np.array(colour[:3], np.float32) * a[..., None] + rgb * (alpha * (1 - a))[..., None])
                       / np.maximum(out_alpha, 1e-6)[..., None], rgb)
        alpha = out_alpha
    return np.dstack([rgb, alpha * 255]).round().astype(np.uint8)


def test_brush_adds_eraser_removes_and_the_top_stroke_wins():
    canvas = canvas_with([(painted_mask.PAINT_RGBA, (100, 250), (400, 250), 40),
                          (painted_mask.ERASE_RGBA, (250, 100), (250, 400), 40),
                          (painted_mask.PAINT_RGBA, (240, 150), (260, 150), 20)])
    mask = painted_mask.painted_mask(canvas, 256)
    assert mask.dtype == np.float32 and mask.shape == (256, 256)
    assert mask[125, 60] == 1 and mask[125, 190] == 1  # the brush stroke
    assert mask[125, 125] == 0  # erased where the eraser crossed it
    assert mask[75, 125] == 1  # painted again on top of the eraser
    assert mask[20, 20] == 0
    assert prepare_mask(mask, (256, 256), 256)[0].sum() == mask.sum()  # what the masked edit accepts, unchanged


def test_a_zone_is_the_starting_mask_and_the_eraser_takes_from_it():
    zone = region_mask("right-lower", 256)
    assert np.array_equal(painted_mask.painted_mask(None, 256, zone), zone)
    ys, xs = np.nonzero(zone)
    cy, cx = int(ys.mean()), int(xs.mean())
    canvas = canvas_with([(painted_mask.ERASE_RGBA, (2 * cx - 30, 2 * cy), (2 * cx + 30, 2 * cy), 30)])
    mask = painted_mask.painted_mask(canvas, 256, zone)
    assert mask[cy, cx] == 0 and mask.sum() < zone.sum() and not (mask > zone).any()


def test_bad_canvas_input_is_refused_with_a_message():
    with pytest.raises(ValueError, match="RGBA"):
        painted_mask.painted_mask(np.zeros((512, 512, 3), np.uint8), 256)
    with pytest.raises(ValueError, match="square"):
        painted_mask.painted_mask(np.zeros((512, 300, 4), np.uint8), 256)
    with pytest.raises(ValueError, match="256 x 256"):
        painted_mask.painted_mask(None, 256, np.zeros((128, 128), np.float32))


def test_canvas_background_tints_only_the_zone():
    film = np.full((256, 256), 0.5, np.float32)
    background = painted_mask.canvas_background(film, region_mask("left", 256), 512)
    assert background.shape == (512, 512, 3) and background.dtype == np.uint8
    assert tuple(background[0, 0]) == (128, 128, 128)  # outside: the film in grey
    ys, xs = np.nonzero(region_mask("left", 256))
    inside = background[2 * int(ys.mean()), 2 * int(xs.mean())]
    assert inside[0] > inside[2]  # inside: tinted red


# ------------------------------------------------------------------ HTML views


def test_comparison_slider_is_self_contained_and_escapes_labels():
    before = np.zeros((64, 96), np.float32)
    after = np.ones((64, 96), np.float32)
    page = comparison_slider_html(before, after, "before <REAL>", "after", display_width=480, caption="a & b")
    assert page.count("data:image/png;base64,") == 2
    urls = re.findall(r"(?:src|href)=\"(?!data:)([^\"]+)\"", page)
    assert not urls and "http" not in page.replace("http://www.w3.org", "")  # nothing to fetch
    assert "before &lt;REAL&gt;" in page and "a &amp; b" in page and "<REAL>" not in page
    assert 'type="range"' in page and "aspect-ratio: 96 / 64" in page
    assert slider_frame_height(480, before.shape) == 320 + 34
    with pytest.raises(ValueError, match="same size"):
        comparison_slider_html(before, np.zeros((64, 64), np.float32), "a", "b")


def test_pixel_view_shows_the_image_at_its_own_size():
    image = np.random.default_rng(0).random((300, 200)).astype(np.float32)
    page = pixel_view_html(image, caption="SYNTHETIC · seed 1")
    assert "width: 200px; height: 300px" in page and "image-rendering: pixelated" in page
    assert "SYNTHETIC · seed 1" in page and "http" not in page.replace("http://www.w3.org", "")


# ------------------------------------------------------------------ finding chips


def test_chips_show_the_vocabulary_without_counts_when_none_were_recorded(tmp_path):
    from xray_generator.vocabulary import LABELS

    chips, note = studio.finding_chips(tmp_path)
    assert [c.label for c in chips] == list(LABELS)
    assert all(c.count is None and c.text == c.label for c in chips)
    assert "counts not recorded for these weights" in note


def test_chips_are_the_findings_the_weights_were_trained_on_with_their_counts(tmp_path):
    from xray_generator.model_vocabulary import TRAINING_VOCABULARY_FILE

    document = {"n_images": 3010, "label_counts": {"Normal": 3000, "Pneumothorax": 10, "Cardiomegaly": 0, "Herpes": 0}}
    (tmp_path / TRAINING_VOCABULARY_FILE).write_text(json.dumps(document))
    chips, note = studio.finding_chips(tmp_path)
    assert [(c.label, c.count) for c in chips] == [("Normal", 3000), ("Pneumothorax", 10)]  # never-seen ones not offered
    assert chips[0].text == "Normal · 3,000" and chips[1].phrase == "pneumothorax"
    assert "trained on" in note and "3,010" in note and "2 vocabulary findings never seen" in note


def test_the_shipped_weights_offer_their_recorded_findings():
    from xray_generator.model_vocabulary import load_training_vocabulary
    from xray_generator.paths import weights_dir

    vocabulary = load_training_vocabulary(weights_dir() / "ldm")
    if vocabulary is None:
        pytest.skip("the shipped weights have no training_vocabulary.json")
    chips, _ = studio.finding_chips(weights_dir() / "ldm")
    assert {c.label: c.count for c in chips} == {k: v for k, v in vocabulary["label_counts"].items() if v > 0}


def test_a_broken_vocabulary_file_is_reported_and_no_counts_are_invented(tmp_path):
    from xray_generator.model_vocabulary import TRAINING_VOCABULARY_FILE

    (tmp_path / TRAINING_VOCABULARY_FILE).write_text("{not json")
    chips, note = studio.finding_chips(tmp_path)
    assert "could not be read" in note and all(c.count is None for c in chips)


def test_a_finding_is_added_as_its_own_sentence_once():
    assert studio.prompt_with_finding("PA chest radiograph: no effusion.", "cardiomegaly") == \
        "PA chest radiograph: no effusion. Cardiomegaly."
    assert studio.prompt_with_finding("PA chest radiograph", "pneumonia") == "PA chest radiograph. Pneumonia."
    assert studio.prompt_with_finding("   ", "pneumonia") == "PA chest radiograph: pneumonia."
    assert studio.prompt_with_finding("Right pneumonia.", "pneumonia") == "Right pneumonia."
