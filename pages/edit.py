"""Edit a radiograph: text-guided (counterfactual) edits of a real film, whole or inside a lung zone or mask."""
from __future__ import annotations

import streamlit as st

from pages import _ui
from xray_generator import studio
from xray_generator.io import ImageLoadError
from xray_generator.pipelines.editing import DIFFERENCE_GAIN, REGIONS, difference_image, mask_from_upload
from xray_generator.pipelines.latent_diffusion import GenerationCancelled

WHOLE_IMAGE = "Whole image"
MASK_UPLOAD = "Upload a mask"
REGION_CHOICES = [WHOLE_IMAGE, *REGIONS, MASK_UPLOAD]


def mark_cancelled() -> None:
    st.session_state["edit_cancelled"] = True


def choose_source():
    """(image, source id, description) of the film to edit; (None, None, None) with a message if there is none."""
    return _ui.choose_radiograph("edit")


def choose_mask():
    """None (whole image), a region name or a bool mask array; False if a mask upload is missing or broken."""
    region = st.selectbox("Where to edit", REGION_CHOICES, key="edit_region",
                          format_func=lambda r: f"{r}: {REGIONS[r]}" if r in REGIONS else r,
                          help="Zones name the PATIENT's side: on a frontal (PA/AP) film the patient's right lung is on the "
                               "image's LEFT. Zones are a fixed template for a centred film, not a segmentation.")
    if region == WHOLE_IMAGE:
        return None
    if region in REGIONS:
        return region
    upload = st.file_uploader("Mask image, same size as the source: white = edit", type=["png", "bmp", "tif", "tiff"], key="edit_mask_upload")
    if upload is None:
        st.info("Upload a mask (white where the film may change) or pick a zone.")
        return False
    try:
        return mask_from_upload(upload.getvalue(), upload.name)
    except ImageLoadError as exc:
        st.error(f"Cannot use this mask: {exc}")
        return False


def show_measurement() -> None:
    with st.expander("How well do edits work? (strength against pneumonia score and fidelity)"):
        table, curve, note = studio.editing_measurement()
        if curve is not None:
            st.image(str(curve), caption="From outputs/metrics/editing_curve.png (edited images are synthetic)")
        if table is not None:
            st.caption(note)
            st.dataframe(table, hide_index=True)
        else:
            st.info(note)


def main() -> None:
    st.title("Edit a radiograph")
    st.caption("Text-guided edits of a real chest film: the result is a SYNTHETIC counterfactual image. "
               "Research use only, not for clinical use.")
    statuses = _ui.generator_statuses()
    # Text-guided edits need the prompted latent diffusion model; the CVAE's translation is on the Generate page.
    available = [s for s in statuses if s.available and s.kind == "text"]
    if not available:
        _ui.model_unavailable_notice(statuses, needs="Editing")
        return
    by_name = {s.name: s for s in available}
    status = by_name.get(st.session_state.get("model_family"), available[0])
    try:
        pipe = _ui.pipeline(status)
    except Exception as exc:  # noqa: BLE001 - corrupt or missing weights: say so, do not crash
        st.error(f"Could not load {status.title}: {exc}")
        return

    source, source_id, description = choose_source()
    for key, value in {"edit_prompt": "Chest radiograph: right lower lobe pneumonia with airspace consolidation.",
                       "edit_strength": 0.5, "edit_seed": 0}.items():
        st.session_state.setdefault(key, value)
    st.text_area("Edit prompt", key="edit_prompt", height=70, max_chars=2000, help="What the edited film should show.")
    left, middle = st.columns(2)
    left.slider("Strength", 0.0, 1.0, step=0.05, key="edit_strength",
                help=f"0 keeps the source (through the autoencoder), 1 ignores it. Runs strength × "
                     f"{pipe.generation_defaults['num_inference_steps']} denoising steps.")
    middle.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key="edit_seed",
                        help="The same source, seed and settings give the same edit.")
    mask = choose_mask()

    if st.button("Edit", type="primary", key="edit_button", disabled=source is None or mask is False):
        st.session_state.pop("edit_cancelled", None)
        progress = st.progress(0.0, text="Starting…")
        cancel_slot = st.empty()
        cancel_slot.button("Cancel", key="cancel_edit", on_click=mark_cancelled)
        try:
            with studio.generation_lock(on_wait=lambda: progress.progress(0.0, text="Waiting for another generation to finish…")):
                result, seconds = studio.edit_radiograph(
                    pipe, source, st.session_state["edit_prompt"], strength=float(st.session_state["edit_strength"]),
                    mask=mask, seed=int(st.session_state["edit_seed"]), source_id=source_id,
                    on_step=lambda done, total: progress.progress(min(done / total, 1.0), text=f"Step {done} of {total}"),
                )
        except GenerationCancelled as exc:
            st.warning(f"Edit cancelled: {exc}.")
        except (ValueError, TimeoutError) as exc:
            st.error(f"Cannot edit: {exc}")
        else:
            st.session_state["edit_result"] = (result, seconds, description, studio.edit_downloads(result))
        finally:
            progress.empty()
            cancel_slot.empty()

    if st.session_state.pop("edit_cancelled", False):
        st.warning("Edit cancelled; nothing was kept.")
    stored = st.session_state.get("edit_result")
    if stored is not None:
        result, seconds, shown_source, downloads = stored
        meta = result.metadata
        st.success(f"Edited in {seconds:.1f} s · {meta['denoising_steps']} of {meta['steps']} steps (strength {meta['strength']:g}) · "
                   f"where: {meta['mask']}")
        for notice in result.notices:
            st.info(notice)
        columns = st.columns(4)
        with columns[0]:
            _ui.show_real(result.source, f"before · {shown_source}")
        with columns[1]:
            _ui.show_synthetic(result.image, f"after · edited, seed {meta['seed']}")
        with columns[2]:
            st.image(difference_image(result), caption=f"SYNTHETIC · |after − before| × {DIFFERENCE_GAIN:g}", clamp=True)
        with columns[3]:
            st.image(result.overlay, caption=f"SYNTHETIC · difference in colour over the source (× {DIFFERENCE_GAIN:g})")
        stem = studio.edit_file_stem(meta)
        actions = st.container(horizontal=True)
        actions.download_button("Edited PNG (with metadata)", downloads["png"], f"{stem}.png", "image/png", key="edit_png",
                                on_click="ignore", icon=":material/download:")
        actions.download_button("Difference PNG", downloads["diff"], f"{stem}_diff.png", "image/png", key="edit_diff_png",
                                on_click="ignore", icon=":material/download:")
        with st.expander("Edit metadata"):
            st.json(meta, expanded=False)
    show_measurement()


main()
