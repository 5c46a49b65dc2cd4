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
from xray_generator.io import to_uint8
from xray_generator.paths import default_data_dir, weights_dir

log = logging.getLogger("cxr_studio")

# Widget values that should survive a switch to another page and back (Streamlit drops the state
# of widgets that are not drawn in a run; re-assigning the key keeps it).
PERSISTENT_KEYS = ("model_family", "prompt", "negative_prompt", "sampler", "steps", "guidance", "seed_mode", "seed",
                   "num_images", "resolution", "preset")


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
    """Once per process: the torch thread count (CXR_NUM_THREADS overrides torch's default)."""
    return studio.apply_thread_setting()


@st.cache_resource(show_spinner="Loading the model and verifying its weights…", max_entries=4)
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


def generator_statuses() -> list[studio.GeneratorStatus]:
    return studio.generator_statuses(weights_dir())


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


def model_unavailable_notice(statuses: list[studio.GeneratorStatus]) -> None:
    st.warning("No generator has weights yet, so nothing can be generated. " +
               " ".join(f"**{s.title}**: {s.reason}." for s in statuses))
