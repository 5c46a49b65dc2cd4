"""Streamlit glue shared by the pages: cached loaders, error containment, image display.

Not a page itself (st.navigation registers only the pages app.py lists). The work happens in
`xray_generator.studio`; this module only adds Streamlit's caching and widgets around it.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import streamlit as st

from xray_generator import studio
from xray_generator.io import UPLOAD_TYPES, ImageLoadError, decode_upload, read_gray, to_uint8
from xray_generator.paths import default_data_dir, weights_dir

log = logging.getLogger("cxr_studio")

# Widget values that should survive a switch to another page and back (Streamlit drops the state
# of widgets that are not drawn in a run; re-assigning the key keeps it).
PERSISTENT_KEYS = ("model_family", "prompt", "negative_prompt", "sampler", "steps", "guidance", "seed_mode", "seed",
                   "num_images", "resolution", "preset", "guidance_fraction", "image_view", "family_seed", "family_num_images", "family_preset",
                   "cvae_source", "cvae_condition", "cvae_seed")


def keep_widget_state() -> None:
    for key in PERSISTENT_KEYS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


@contextmanager
def section(title: str):
    """Show an error message instead of a traceback if this part of a page fails; the rest still renders.

    Streamlit's own rerun/stop signals are BaseExceptions and pass through untouched.
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - the point is to contain any failure to its section
        log.exception("section %r failed", title)
        st.error(f"{title} failed: {exc}")


# ------------------------------------------------------------------ cached heavy objects


@st.cache_resource(show_spinner=False)
def configure_runtime() -> int:
    """Once per process: the app's backend (runtime.APP_BACKEND unless CXR_BACKEND is set) and the torch
    thread count (CXR_NUM_THREADS overrides torch's default)."""
    from xray_generator.pipelines.runtime import use_app_backend

    use_app_backend()
    return studio.apply_thread_setting()


@st.cache_resource(show_spinner="Loading the model and verifying its weights…", max_entries=8)
def _cached_pipeline(name: str, root: str, weights_hash: str):
    # weights_hash is part of the key: new weights in the same folder load afresh.
    return studio.load_pipeline(name, root)


def pipeline(status: studio.GeneratorStatus):
    return _cached_pipeline(status.name, str(status.folder.parent), status.weights_hash or "")


@st.cache_resource(show_spinner="Loading the classifier and verifying its weights…", max_entries=2)
def _cached_classifier(folder: str, manifest_mtime: float):
    return studio.load_finding_classifier(Path(folder).parent)


def finding_classifier():
    """The verified finding classifier, cached per weights folder and manifest version."""
    folder = studio.classifier_folder()
    return _cached_classifier(str(folder), (folder / "MANIFEST.json").stat().st_mtime)


@st.cache_resource(show_spinner="Reading the dataset manifest…", max_entries=4)
def _cached_dataset(path: str, modified: float):
    return studio.load_dataset(path)


def dataset():
    """(manifest, None) or (None, message). Reloads when metadata.csv changes."""
    path = default_data_dir()
    csv_path = path / "metadata.csv"
    modified = csv_path.stat().st_mtime if csv_path.is_file() else 0.0
    return _cached_dataset(str(path), modified)


@st.cache_data(show_spinner="Verifying weights (sha256)…", max_entries=64)
def _weights_problem(folder: str, fingerprint: tuple) -> str | None:
    # Keyed by every file's size and mtime: hashed once per version of the folder, not on every rerun.
    return studio.check_weights(folder)


def generator_statuses() -> list[studio.GeneratorStatus]:
    """Every registry family; one whose weights fail the sha256 check is unavailable and says so."""
    return studio.mark_damaged(studio.generator_statuses(weights_dir()),
                               check=lambda folder: _weights_problem(str(folder), studio.weights_fingerprint(folder)))


@st.cache_data(show_spinner=False, max_entries=4096)
def thumbnail(path: str, size: int = 128) -> np.ndarray:
    return studio.thumbnail(path, size)


@st.cache_resource(show_spinner="Indexing training images for the nearest-neighbour search (once)…", max_entries=2)
def _cached_training_reference(path: str, modified: float, _manifest):
    return studio.training_reference(_manifest)


def training_reference(manifest):
    csv_path = Path(manifest.root) / "metadata.csv"
    modified = csv_path.stat().st_mtime if csv_path.is_file() else 0.0
    return _cached_training_reference(str(manifest.root), modified, manifest)


# ------------------------------------------------------------------ display


def show_synthetic(image: np.ndarray, caption: str, width: int | str = "content") -> None:
    """Every generated image on screen goes through here, so it always carries the SYNTHETIC caption."""
    text = caption if caption.startswith(studio.SYNTHETIC_CAPTION) else f"{studio.SYNTHETIC_CAPTION} · {caption}"
    st.image(to_uint8(image), caption=text, width=width)


def show_real(image: np.ndarray, caption: str, width: int | str = "content") -> None:
    st.image(to_uint8(image), caption=f"REAL · {caption}", width=width)


def model_unavailable_notice(statuses: list[studio.GeneratorStatus], needs: str | None = None) -> None:
    """Why nothing can be generated; with `needs` (e.g. "Editing"), only the prompted text families are meant."""
    if needs is not None:
        text = [s for s in statuses if s.kind == "text"]
        st.warning(f"{needs} needs the prompted latent diffusion model, which is unavailable. " +
                   " ".join(f"**{s.title}**: {s.reason}." for s in text))
        return
    st.warning(f"No generator has weights yet, so nothing can be generated ({len(statuses)} families registered, "
               f"none exported to {statuses[0].folder.parent if statuses else 'weights/'}). "
               "Each family's training and export commands are listed with it.")


def damaged_weights_banners(statuses: list[studio.GeneratorStatus]) -> None:
    """One error banner per family whose weights fail the sha256 check; the others keep working."""
    for status in statuses:
        if status.damaged:
            st.error(f"**{status.title}** is disabled: {status.reason}. The other model families keep working.",
                     icon=":material/gpp_bad:")


def not_trained_notice(status: studio.GeneratorStatus) -> None:
    """"Not trained yet — train with `…`": never a placeholder image."""
    if status.damaged:
        st.error(f"{status.title} cannot be used: {status.reason}.")
        return
    if "not trained yet" in status.reason:
        st.info(f"**{status.title}** is not trained yet — train with `{status.train_commands[0]}`, then export it to "
                f"`{status.folder}` with the second command below.")
    else:
        st.info(f"**{status.title}** is unavailable: {status.reason}. To train and export it:")
    st.code("\n".join(status.train_commands), language="bash")


# ------------------------------------------------------------------ picking a real radiograph


def choose_radiograph(prefix: str, label: str | None = None, prefer_sources=()):
    """(image, source id, description) of a real film from the dataset or an upload; (None, None, None) with a message if none.

    Widget keys are `<prefix>_source`, `<prefix>_upload`, `<prefix>_label` and `<prefix>_image_id`.
    With `label`, only dataset images carrying that finding are offered (the CVAE translates Normal films);
    with `prefer_sources`, held-out films of those sources are offered first (`studio.radiograph_choices`).
    Uploads go through the safe decoder (`xray_generator.io.decode_upload`).
    """
    dataset_choice = "Dataset image" if label is None else f"Dataset image ({label})"
    kind = st.radio("Source", [dataset_choice, "Upload"], key=f"{prefix}_source", horizontal=True)
    if kind == "Upload":
        upload = st.file_uploader("Upload a radiograph (PNG, JPEG, TIFF, BMP, WebP or DICOM)", type=list(UPLOAD_TYPES),
                                  key=f"{prefix}_upload")
        if upload is None:
            st.info("Upload a frontal chest radiograph" + (f" ({label.lower()} film)." if label else "."))
            return None, None, None
        try:
            return decode_upload(upload.getvalue(), upload.name), upload.name, f"upload {upload.name}"
        except ImageLoadError as exc:
            st.error(f"Cannot use this upload: {exc}")
            return None, None, None
    manifest, message = dataset()
    if manifest is None:
        st.warning(message)
        return None, None, None
    labels = list(manifest.label_counts().index)
    if label is not None and label not in labels:
        st.warning(f"The dataset has no {label} image; upload one instead.")
        return None, None, None
    left, right = st.columns(2)
    if label is None:
        st.session_state.setdefault(f"{prefix}_label", "Normal" if "Normal" in labels else labels[0])
        label = left.selectbox("Finding", labels, key=f"{prefix}_label")
        picker = right
    else:
        picker = left
    table = studio.radiograph_choices(manifest, label, prefer_sources) if prefer_sources else \
        studio.edit_source_table(manifest.query(label=label))
    rows = {row.image_id: row for row in table.itertuples(index=False)}
    image_id = picker.selectbox("Dataset image", list(rows), key=f"{prefix}_image_id")
    if image_id is None:
        return None, None, None
    row = rows[image_id]
    st.caption(f"Source: **{row.source}** ({row.source_repo}) · licence **{row.license}** · {row.view} · {row.split} split · "
               f"labels: {row.labels}")
    return read_gray(manifest.path_of(image_id)), image_id, f"dataset image {image_id}"


# ------------------------------------------------------------------ comparison slider and mask painting


def comparison_slider(before: np.ndarray, after: np.ndarray, before_label: str, after_label: str,
                      display_width: int = 512, caption: str = "") -> None:
    """A before/after slider (`xray_generator.image_views`): self-contained HTML, nothing loaded from the network."""
    import streamlit.components.v1 as components

    from xray_generator.image_views import comparison_slider_html, slider_frame_height

    components.html(comparison_slider_html(before, after, before_label, after_label, display_width, caption),
                    height=slider_frame_height(display_width, np.asarray(before).shape))


def mask_canvas(background_rgb: np.ndarray, stroke_rgba: str, stroke_width: int, key: str) -> np.ndarray | None:
    """A drawing canvas over `background_rgb` (streamlit-drawable-canvas; its frontend is bundled in the wheel).

    Returns the strokes as an RGBA (H, W, 4) array, or None before anything is drawn. The canvas's
    own toolbar has undo, redo and clear. Needs a `streamlit run` server: the component's assets are
    registered when the server starts, so under AppTest it is unavailable and says so.
    """
    from PIL import Image
    from streamlit.errors import StreamlitAPIException

    try:
        from streamlit_drawable_canvas import st_canvas
    except StreamlitAPIException as exc:
        st.info(f"The paint canvas is unavailable in this runtime ({exc}); the starting zone is the mask.")
        return None
    height, width = background_rgb.shape[:2]
    result = st_canvas(fill_color="rgba(0, 0, 0, 0)", stroke_width=int(stroke_width), stroke_color=stroke_rgba,
                       background_image=Image.fromarray(background_rgb), width=width, height=height,
                       drawing_mode="freedraw", return_image_data=True, key=key)
    return result.image_data
