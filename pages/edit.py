"""Edit a radiograph: text-guided (counterfactual) edits of a real film, whole, inside a lung zone, or inside a mask
painted on the film in the browser; the result as a before/after slider beside the difference map."""
from __future__ import annotations

import streamlit as st

from pages import _ui
from xray_generator import studio
from xray_generator.io import ImageLoadError
from xray_generator import painted_mask
from xray_generator.pipelines.editing import DIFFERENCE_GAIN, FEATHER_SIGMA, REGIONS, difference_image, mask_from_upload
from xray_generator.pipelines.editing import prepare_source, region_mask
from xray_generator.pipelines.latent_diffusion import GenerationCancelled

WHOLE_IMAGE = "Whole image"
PAINT = "Paint on the film"
MASK_UPLOAD = "Upload a mask"
REGION_CHOICES = [WHOLE_IMAGE, PAINT, *REGIONS, MASK_UPLOAD]
NO_ZONE = "Empty"
CANVAS_SCALE = 2  # the film is painted at twice the model's size (512 px for 256)
BRUSH, ERASER = "Brush", "Eraser"


def mark_cancelled() -> None:
    st.session_state["edit_cancelled"] = True


def choose_source():
    """(image, source id, description) of the film to edit; (None, None, None) with a message if there is none."""
    return _ui.choose_radiograph("edit")


def clear_strokes() -> None:
    st.session_state["edit_canvas_version"] = st.session_state.get("edit_canvas_version", 0) + 1


def paint_mask(source, source_id, size: int, canvas_slot):
    """The painted mask at the model's size (float 0/1), or False with a message while nothing is painted.

    Brush size, brush/eraser and the starting zone are here; the canvas goes into `canvas_slot`.
    """
    left, right = st.columns(2)
    start_name = left.selectbox("Start from", [NO_ZONE, *REGIONS], key="edit_paint_start",
                                help="A lung zone as the starting mask; paint to add to it, erase to take from it.")
    tool = right.segmented_control("Tool", [BRUSH, ERASER], key="edit_paint_tool", default=BRUSH)
    brush = st.slider("Brush size (px on the film)", 1, 64, 12, key="edit_brush_size",
                      help=f"Diameter at the model's {size} px; the canvas shows the film at {CANVAS_SCALE}x.")
    st.button("Clear strokes", key="edit_clear_strokes", on_click=clear_strokes, icon=":material/ink_eraser:")
    if source is None:
        return False
    start = None if start_name == NO_ZONE else region_mask(start_name, size)
    film, _ = prepare_source(source, size)
    colour = painted_mask.PAINT_RGBA if (tool or BRUSH) == BRUSH else painted_mask.ERASE_RGBA
    version = st.session_state.get("edit_canvas_version", 0)
    with canvas_slot:
        strokes = _ui.mask_canvas(painted_mask.canvas_background(film, start, size * CANVAS_SCALE), painted_mask.css_rgba(colour),
                                  brush * CANVAS_SCALE, key=f"edit_canvas_{studio.slug(str(source_id))}_{start_name}_{version}")
        st.caption("Red: edited (brush and starting zone) · blue: erased. Undo, redo and clear are on the canvas's toolbar. "
                   f"The seam is feathered by a {FEATHER_SIGMA:g} px Gaussian.")
    mask = painted_mask.painted_mask(strokes, size, start)
    if not mask.any():
        st.info("Paint where the film may change (or start from a lung zone).")
        return False
    st.caption(f"Mask: {mask.mean():.1%} of the film.")
    return mask


def choose_mask(source=None, source_id=None, size: int = 256, canvas_slot=None):
    """None (whole image), a region name or a float mask array; False if the mask is missing or broken."""
    region = st.selectbox("Where to edit", REGION_CHOICES, key="edit_region",
                          format_func=lambda r: f"{r}: {REGIONS[r]}" if r in REGIONS else r,
                          help="Zones name the PATIENT's side: on a frontal (PA/AP) film the patient's right lung is on the "
                               "image's LEFT. Zones are a fixed template for a centred film, not a segmentation.")
    if region == WHOLE_IMAGE:
        return None
    if region == PAINT:
        return paint_mask(source, source_id, size, canvas_slot if canvas_slot is not None else st.container())
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


def run_edit(pipe, source, source_id, description, mask) -> None:
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


def show_edit(result, seconds: float, shown_source: str, downloads: dict) -> None:
    """The edit as a before/after slider beside the difference map and its overlay; side by side on request."""
    meta = result.metadata
    st.success(f"Edited in {seconds:.1f} s · {meta['denoising_steps']} of {meta['steps']} steps (strength {meta['strength']:g}) · "
               f"where: {meta['mask']}")
    for notice in result.notices:
        st.info(notice)
    slider, difference, overlay = st.columns([2, 1, 1])
    with slider:
        _ui.comparison_slider(result.source, result.image, "before · REAL", "after · SYNTHETIC", display_width=512,
                              caption=f"Drag across: REAL {shown_source} | SYNTHETIC edit, seed {meta['seed']}")
    with difference:
        st.image(difference_image(result), caption=f"SYNTHETIC · |after − before| × {DIFFERENCE_GAIN:g}", clamp=True,
                 width="stretch")
    with overlay:
        st.image(result.overlay, caption=f"SYNTHETIC · difference in colour over the source (× {DIFFERENCE_GAIN:g})",
                 width="stretch")
    with st.expander("Before and after side by side"):
        columns = st.columns(2)
        with columns[0]:
            _ui.show_real(result.source, f"before · {shown_source}")
        with columns[1]:
            _ui.show_synthetic(result.image, f"after · edited, seed {meta['seed']}")
    stem = studio.edit_file_stem(meta)
    actions = st.container(horizontal=True)
    actions.download_button("Edited PNG (with metadata)", downloads["png"], f"{stem}.png", "image/png", key="edit_png",
                            on_click="ignore", icon=":material/download:")
    actions.download_button("Difference PNG", downloads["diff"], f"{stem}_diff.png", "image/png", key="edit_diff_png",
                            on_click="ignore", icon=":material/download:")
    if "mask" in downloads:
        actions.download_button("Mask PNG", downloads["mask"], f"{stem}_mask.png", "image/png", key="edit_mask_png",
                                on_click="ignore", icon=":material/download:")
    with st.expander("Edit metadata"):
        st.json(meta, expanded=False)


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
    size = int(pipe.generation_defaults["height"])
    controls, canvas = st.columns([5, 6], gap="large")
    with controls:
        st.text_area("Edit prompt", key="edit_prompt", height=70, max_chars=2000, help="What the edited film should show.")
        left, middle = st.columns(2)
        left.slider("Strength", 0.0, 1.0, step=0.05, key="edit_strength",
                    help=f"0 keeps the source (through the autoencoder), 1 ignores it. Runs strength × "
                         f"{pipe.generation_defaults['num_inference_steps']} denoising steps.")
        middle.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key="edit_seed",
                            help="The same source, seed and settings give the same edit.")
        mask = choose_mask(source, source_id, size, canvas)
        clicked = st.button("Edit", type="primary", key="edit_button", disabled=source is None or mask is False)
    if source is not None and st.session_state.get("edit_region") != PAINT:
        with canvas:  # what will change, on the film as the model sees it
            zone = region_mask(mask, size) if isinstance(mask, str) else None  # an uploaded mask is at the source's size
            film, _ = prepare_source(source, size)
            st.image(painted_mask.canvas_background(film, zone, size * CANVAS_SCALE), width=size * CANVAS_SCALE,
                     caption=f"REAL · {description} as the model sees it ({size} px)" + (" · the edited area in red" if zone is not None else ""))

    if clicked:
        run_edit(pipe, source, source_id, description, mask)
    if st.session_state.pop("edit_cancelled", False):
        st.warning("Edit cancelled; nothing was kept.")
    stored = st.session_state.get("edit_result")
    if stored is not None:
        show_edit(*stored)
    show_measurement()


main()
