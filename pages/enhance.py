"""Enhancement comparison: every preset side by side on one image, plus a custom preset built with sliders."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages import _ui
from post_process import BUILTIN_PRESETS, compare_presets
from xray_generator import studio
from xray_generator.evaluation.descriptors import DESCRIPTOR_NAMES
from xray_generator.io import UPLOAD_TYPES, ImageLoadError, decode_upload, read_gray, to_uint8

SOURCES = ("Last generated image", "Dataset image", "Upload")
# Comparisons run at most at this size: presets are display enhancements, and a 4k upload would
# make every slider move take seconds on two cores.
MAX_COMPARE_SIDE = 1024


def choose_image() -> tuple[np.ndarray | None, str, bool]:
    """(image, description, synthetic?) from the source the user picks; None with a message shown if unavailable."""
    source = st.radio("Image", SOURCES, key="enhance_source", horizontal=True)
    if source == "Last generated image":
        result = st.session_state.get("generation")
        if result is None or not result.images:
            st.info("No image generated in this session yet: generate one on the Generate page, or pick a dataset image or upload.")
            return None, "", False
        index = 0
        if len(result.images) > 1:
            index = st.selectbox("Which generated image", range(len(result.images)), key="enhance_generated_index",
                                 format_func=lambda i: result.images[i].caption)
        item = result.images[index]
        return item.native, f"generated, seed {item.metadata['seed']} (256 px native, before any preset)", True
    if source == "Dataset image":
        manifest, message = _ui.dataset()
        if manifest is None:
            st.warning(message)
            return None, "", False
        labels = ["(any)"] + list(manifest.label_counts().index)
        label = st.selectbox("Finding", labels, key="enhance_dataset_label")
        subset = manifest if label == "(any)" else manifest.query(label=label)
        image_id = st.selectbox("Dataset image", subset.table["image_id"].tolist(), key="enhance_dataset_id")
        if image_id is None:
            return None, "", False
        return read_gray(manifest.path_of(image_id)), f"dataset image {image_id}", False
    upload = st.file_uploader("Upload a radiograph (PNG, JPEG, TIFF, BMP, WebP or DICOM)", type=list(UPLOAD_TYPES), key="enhance_upload")
    if upload is None:
        st.info("Upload an image to compare the presets on it.")
        return None, "", False
    try:
        image = decode_upload(upload.getvalue(), upload.name)
    except ImageLoadError as exc:
        st.error(f"Cannot use this upload: {exc}")
        return None, "", False
    return image, f"upload {upload.name}", False


def fit_for_comparison(image: np.ndarray) -> np.ndarray:
    longest = max(image.shape)
    if longest <= MAX_COMPARE_SIDE:
        return image
    from PIL import Image

    height, width = image.shape
    scale = MAX_COMPARE_SIDE / longest
    resized = Image.fromarray(image.astype(np.float32), mode="F").resize((round(width * scale), round(height * scale)), Image.Resampling.BOX)
    return np.clip(np.asarray(resized, dtype=np.float32), 0, 1)


def show_panel(image: np.ndarray, caption: str, synthetic: bool) -> None:
    if synthetic:
        _ui.show_synthetic(image, caption, width="stretch")
    else:
        st.image(to_uint8(image), caption=caption, width="stretch")


def histogram_figure(results) -> go.Figure:
    figure = go.Figure()
    for result in results:
        centres = (result.histogram_edges[:-1] + result.histogram_edges[1:]) / 2
        density = result.histogram_counts / max(1, result.histogram_counts.sum())
        figure.add_trace(go.Scatter(x=centres, y=density, mode="lines", name=result.name))
    figure.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="intensity", yaxis_title="fraction of pixels",
                         title="Intensity histograms")
    return figure


def custom_preset_builder(image: np.ndarray, synthetic: bool) -> None:
    st.subheader("Custom preset")
    st.caption("Operations left at their neutral value are not part of the preset. Order follows the built-in presets.")
    columns = st.columns(4)
    controls = {
        "window_center": columns[0].slider("Window centre", 0.0, 1.0, 0.5, 0.01, key="c_window_center"),
        "window_width": columns[0].slider("Window width", 0.05, 1.0, 1.0, 0.01, key="c_window_width"),
        "median_kernel": columns[1].select_slider("Median kernel", [1, 3, 5, 7], 1, key="c_median"),
        "denoise_sigma": columns[1].slider("Bilateral denoise σ", 0.0, 0.2, 0.0, 0.01, key="c_denoise"),
        "clahe_clip": columns[2].slider("CLAHE clip limit (0 = off)", 0.0, 6.0, 0.0, 0.1, key="c_clahe_clip"),
        "clahe_tiles": columns[2].slider("CLAHE tiles per side", 2, 16, 8, key="c_clahe_tiles"),
        "equalize_strength": columns[2].slider("Global equalisation", 0.0, 1.0, 0.0, 0.05, key="c_equalize"),
        "gamma": columns[3].slider("Gamma", 0.3, 3.0, 1.0, 0.05, key="c_gamma"),
        "unsharp_amount": columns[3].slider("Unsharp amount", 0.0, 3.0, 0.0, 0.1, key="c_unsharp"),
        "unsharp_radius": columns[3].slider("Unsharp radius (px)", 0.5, 5.0, 1.5, 0.1, key="c_unsharp_radius"),
        "vignette": columns[1].slider("Vignette", 0.0, 0.6, 0.0, 0.05, key="c_vignette"),
    }
    steps = studio.custom_preset_steps(controls)
    name = st.text_input("Preset name", value="My preset", key="c_name")
    results = compare_presets(image, {"Input": "None", name or "Custom": steps})
    left, right, table = st.columns([1, 1, 2])
    with left:
        show_panel(results[0].image, "input", synthetic)
    with right:
        show_panel(results[1].image, name or "Custom", synthetic)
    table.dataframe(pd.DataFrame([r.row() for r in results]).set_index("preset"), width="stretch")
    if steps:
        table.json([{"operation": op, "parameters": {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}} for op, params in steps],
                   expanded=False)
    save, download = st.columns(2)
    if save.button("Save under outputs/presets/", key="c_save", disabled=not steps):
        try:
            path = studio.save_custom_preset(name, steps)
            st.success(f"Saved {path}. It now appears in the Generate page's preset list.")
        except (OSError, ValueError) as exc:
            st.error(f"Could not save the preset: {exc}")
    if steps:
        try:
            download.download_button("Download preset JSON", studio.preset_json_bytes(name, steps), f"{studio.slug(name)}.json",
                                     "application/json", key="c_download", on_click="ignore")
        except ValueError as exc:
            download.error(str(exc))
    else:
        st.caption("Move a slider away from its neutral value to build a preset.")


def preset_slider(image: np.ndarray, available: dict, synthetic: bool) -> None:
    """Any two presets (or the unenhanced input, preset "None") on one image, under a before/after slider."""
    names = list(available)
    st.session_state.setdefault("enhance_slider_left", "None" if "None" in names else names[0])
    st.session_state.setdefault("enhance_slider_right", next((n for n in names if n != "None"), names[0]))
    for key in ("enhance_slider_left", "enhance_slider_right"):
        if st.session_state[key] not in names:  # a saved preset deleted since
            st.session_state[key] = names[0]
    left, right = st.columns(2)
    left_name = left.selectbox("Left of the handle", names, key="enhance_slider_left")
    right_name = right.selectbox("Right of the handle", names, key="enhance_slider_right")
    # Keys name the side, so the same preset can sit on both sides (a check that the slider shows no difference).
    results = compare_presets(image, {f"left: {left_name}": available[left_name], f"right: {right_name}": available[right_name]})
    kind = "SYNTHETIC" if synthetic else "input"
    view, table = st.columns([3, 2])
    with view:
        _ui.comparison_slider(results[0].image, results[1].image, left_name, right_name, display_width=min(640, image.shape[1] * 2),
                              caption=f"{kind} · drag across to compare {left_name} | {right_name}")
    table.dataframe(pd.DataFrame([r.row() for r in results]).set_index("preset")[list(DESCRIPTOR_NAMES)].style.format("{:.4g}"),
                    width="stretch")


def main() -> None:
    st.title("Enhancement comparison")
    st.caption("Display enhancements from post_process.py. They change how an image looks, not what it shows.")
    image, description, synthetic = choose_image()
    if image is None:
        return
    image = fit_for_comparison(image)
    saved, problems = studio.saved_presets()
    for problem in problems:
        st.warning(f"A saved preset could not be read: {problem}")
    available = {**{name: name for name in BUILTIN_PRESETS}, **{f"{name} (saved)": steps for name, steps in saved.items()}}
    chosen = st.multiselect("Presets to compare", list(available), default=list(available), key="enhance_presets")
    if not chosen:
        st.info("Choose at least one preset.")
        return
    st.caption(f"Comparing on {description}, {image.shape[1]} × {image.shape[0]} px.")
    with _ui.section("Before/after slider"):
        preset_slider(image, available, synthetic)
    with _ui.section("Preset comparison"):
        results = compare_presets(image, {name: available[name] for name in chosen})
        for start in range(0, len(results), 5):
            columns = st.columns(5)
            for column, result in zip(columns, results[start:start + 5]):
                with column:
                    show_panel(result.image, result.name, synthetic)
        st.plotly_chart(histogram_figure(results), key="enhance_histograms")
        table = pd.DataFrame([r.row() for r in results]).set_index("preset")[list(DESCRIPTOR_NAMES)]
        st.dataframe(table.style.format("{:.4g}"), width="stretch")
        st.caption("mean/std: brightness and spread; contrast_ratio: std/mean; entropy: bits; sharpness: variance of the Laplacian.")
    with _ui.section("Custom preset"):
        custom_preset_builder(image, synthetic)


main()
