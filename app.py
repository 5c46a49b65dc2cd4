"""CXR Studio: `streamlit run app.py`.

Registers the pages, draws the shared sidebar (active model, weights hash, device, threads, data
link) and the research-use disclaimer. The pages are thin files in pages/; the work is in
xray_generator/ (see xray_generator/studio.py).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # pages import `pages._ui`, `post_process` and `xray_generator` from here
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from pages import _ui  # noqa: E402
from xray_generator import studio  # noqa: E402

# An emoji favicon is drawn locally (an inline SVG); a ":material/…:" page icon makes the browser fetch the
# favicon from fonts.gstatic.com, and the studio must not touch the network.
st.set_page_config(page_title="CXR Studio", page_icon="🩻", layout="wide")
_ui.keep_widget_state()
_ui.configure_runtime()

PAGES = {
    "Create": [
        st.Page("pages/generate.py", title="Generate", icon=":material/auto_awesome:", default=True),
        st.Page("pages/edit.py", title="Edit a radiograph", icon=":material/healing:"),
        st.Page("pages/enhance.py", title="Enhancement comparison", icon=":material/tune:"),
    ],
    "Explore": [
        st.Page("pages/dataset.py", title="Dataset explorer", icon=":material/photo_library:"),
        st.Page("pages/console.py", title="Research console", icon=":material/compare:"),
    ],
    "Evaluate": [
        st.Page("pages/metrics.py", title="Metrics dashboard", icon=":material/monitoring:"),
        st.Page("pages/models.py", title="Model analysis", icon=":material/account_tree:"),
    ],
    "About": [
        st.Page("pages/about_data.py", title="About this data", icon=":material/info:"),
    ],
}
page = st.navigation(PAGES)


def draw_sidebar() -> None:
    sidebar = st.sidebar
    sidebar.markdown("### CXR Studio")
    statuses = _ui.generator_statuses()
    by_name = {s.name: s for s in statuses}
    available = [s for s in statuses if s.available]
    active = by_name.get(st.session_state.get("model_family"))
    if active is None or not active.available:  # the Generate page may show a family that is not trained yet
        active = available[0] if available else None
    if active is not None:
        sidebar.markdown(f"**Model:** {active.title}")
        sidebar.caption(f"`{active.name}` · weights `{active.weights_hash}`")
    else:
        sidebar.markdown("**Model:** none available")
        sidebar.caption(statuses[0].reason if statuses else "no model families registered")
    try:
        info = studio.runtime_info()
        memory = f" · {info['rss_mb']:.0f} MB in use" if info["rss_mb"] else ""
        threads = f"{info['threads']} thread{'s' if info['threads'] != 1 else ''}"
        sidebar.caption(f"Device **{info['device']}** · {threads} of {info['cpu_count']} cores{memory}")
    except Exception as exc:  # noqa: BLE001 - the sidebar must never take the page down
        sidebar.caption(f"Device information unavailable: {exc}")
    sidebar.divider()
    sidebar.caption(studio.DISCLAIMER)


draw_sidebar()
try:
    page.run()
except Exception as exc:  # noqa: BLE001 - one page failing must not break the app; details go to the log
    logging.getLogger("cxr_studio").exception("page %s failed", page.title)
    st.error(f"This page failed: {exc}. The other pages still work.")
st.divider()
st.caption(f"**{studio.DISCLAIMER}**")
