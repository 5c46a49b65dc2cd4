"""About this data: where the real images and example prompts come from, under which licences."""
from __future__ import annotations

import streamlit as st

from pages import _ui
from xray_generator import studio
from xray_generator.data.prompt_library import LICENSE as PROMPT_LICENSE
from xray_generator.data.prompt_library import SOURCE as PROMPT_SOURCE
from xray_generator.data.prompt_library import load_prompt_library


def main() -> None:
    st.title("About this data")
    st.markdown(f"**{studio.DISCLAIMER}** Generated images are SYNTHETIC: they show no real patient, and no "
                "diagnosis may be drawn from them.")
    manifest, message = _ui.dataset()
    st.subheader("Real images (training and comparison)")
    if manifest is None:
        st.warning(message)
    else:
        st.caption(f"{len(manifest):,} images from {manifest.root}. Counts and licences below are computed from its metadata.csv.")
        st.dataframe(studio.source_licence_table(manifest), hide_index=True, width="stretch")
        st.markdown("**Sources**: images, patients and splits, and whom to credit.")
        st.dataframe(studio.source_summary(manifest), hide_index=True, width="stretch")
        st.markdown("**Findings** per source (an image can carry several).")
        st.dataframe(studio.label_source_table(manifest), hide_index=True, width="stretch")
        for card_name in ("DATASET_CARD.md", "README.md"):
            card = manifest.root / card_name
            if card.is_file():
                with st.expander(f"{card_name} (dataset card)"):
                    st.markdown(card.read_text(encoding="utf-8"))
                break
    st.subheader("Example prompts")
    library = load_prompt_library()
    st.markdown(f"{len(library)} example prompts are verbatim report text from the {PROMPT_SOURCE}. "
                f"Licence: **{PROMPT_LICENSE}** (treat as non-commercial, research use only; cite Demner-Fushman et al. 2016). "
                "Reports with de-identification gaps (XXXX) were left out, not repaired. No training image belongs to these reports.")


main()
