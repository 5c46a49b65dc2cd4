"""Generate: text to synthetic chest X-ray, with progress, cancel and provenance-carrying downloads."""
from __future__ import annotations

import streamlit as st

from pages import _ui
from post_process import BUILTIN_PRESETS
from xray_generator import studio
from xray_generator.dicom import dicom_bytes
from xray_generator.io import png_bytes_with_metadata
from xray_generator.pipelines.latent_diffusion import MAX_GUIDANCE, SAMPLERS, GenerationCancelled

RESOLUTION_LABELS = {
    studio.NATIVE_RESOLUTION: f"{studio.NATIVE_RESOLUTION} px (native)",
    **{r: f"{r} px (upscaled: plain resize of the 256 px output, no added detail)" for r in studio.UPSCALED_RESOLUTIONS},
}


def use_example(examples: dict[str, str]) -> None:
    choice = st.session_state.get("example_prompt")
    if choice in examples:
        st.session_state["prompt"] = examples[choice]


def mark_cancelled() -> None:
    st.session_state["generation_cancelled"] = True


def keep_seed(seed: int) -> None:
    st.session_state["seed_mode"] = "Fixed"
    st.session_state["seed"] = int(seed)


def main() -> None:
    st.title("Generate")
    st.caption("Text to synthetic chest radiograph. Every image is SYNTHETIC and carries how it was made.")

    statuses = _ui.generator_statuses()
    available = [s for s in statuses if s.available]
    with st.expander("Model families", expanded=not available):
        st.dataframe(
            [{"family": s.title, "name": s.name, "status": "available" if s.available else "unavailable",
              "weights": s.weights_hash or "", "why not": s.reason, "about": s.description} for s in statuses],
            hide_index=True,
        )
    if not available:
        _ui.model_unavailable_notice(statuses)
        return

    by_name = {s.name: s for s in statuses}
    if st.session_state.get("model_family") not in {s.name for s in available}:
        st.session_state["model_family"] = available[0].name
    st.selectbox(
        "Model family",
        [s.name for s in statuses],
        key="model_family",
        format_func=lambda name: by_name[name].title + ("" if by_name[name].available else f" (unavailable: {by_name[name].reason})"),
        help="Families come from the model registry; unavailable ones say why.",
    )
    status = by_name[st.session_state["model_family"]]
    if not status.available:
        st.error(f"{status.title} is unavailable: {status.reason}.")
        return

    try:
        pipe = _ui.pipeline(status)
    except Exception as exc:  # noqa: BLE001 - corrupt or missing weights: say so, do not crash
        st.error(f"Could not load {status.title}: {exc}")
        return
    defaults = pipe.generation_defaults

    # Defaults go into session_state once, so widgets never get both a default and a state value.
    for key, value in {"prompt": "PA chest radiograph: no acute cardiopulmonary abnormality.", "negative_prompt": "",
                       "sampler": defaults["sampler"], "steps": int(defaults["num_inference_steps"]),
                       "guidance": float(defaults["guidance_scale"]), "seed_mode": "Random", "seed": 0, "num_images": 1,
                       "resolution": studio.NATIVE_RESOLUTION, "preset": "None"}.items():
        st.session_state.setdefault(key, value)

    examples = dict(studio.example_prompts())
    st.selectbox("Example prompts", list(examples), index=None, key="example_prompt", on_change=use_example, args=(examples,),
                 placeholder="Pick an example (finding vocabulary, or real IU report text) to fill the prompt",
                 help="IU report examples are verbatim report text (licence not stated; research use only).")
    st.text_area("Prompt", key="prompt", height=90, max_chars=2000)
    st.text_input("Negative prompt (optional)", key="negative_prompt", help="What to steer away from, e.g. 'lateral view, text'.")

    left, middle, right = st.columns(3)
    left.selectbox("Sampler", sorted(SAMPLERS), key="sampler")
    middle.slider("Steps", 1, 100, key="steps", help="Time grows linearly with steps.")
    right.slider("Guidance", 0.0, float(min(MAX_GUIDANCE, 15.0)), step=0.5, key="guidance",
                 help="Classifier-free guidance; 1 or less turns it off (one network pass per step).")
    left, middle, right = st.columns(3)
    left.radio("Seed", ["Random", "Fixed"], key="seed_mode", horizontal=True)
    middle.number_input("Seed value", min_value=0, max_value=2**31 - 1, step=1, key="seed",
                        disabled=st.session_state["seed_mode"] == "Random",
                        help="Image i of a batch uses seed + i; the same seed and settings give the same image.")
    right.number_input("Number of images", 1, studio.MAX_IMAGES_PER_REQUEST, key="num_images")

    left, right = st.columns(2)
    left.radio("Resolution", list(RESOLUTION_LABELS), key="resolution", format_func=RESOLUTION_LABELS.get)

    custom_presets, preset_problems = studio.saved_presets()
    preset_names = list(BUILTIN_PRESETS) + [name for name in custom_presets if name not in BUILTIN_PRESETS]
    if st.session_state["preset"] not in preset_names:
        st.session_state["preset"] = "None"
    right.selectbox("Enhancement preset", preset_names, key="preset",
                    help="Display enhancement from post_process.py, applied to the 256 px output before any upscaling.")
    for problem in preset_problems:
        st.warning(f"A saved preset could not be read: {problem}")

    if st.button("Generate", type="primary", key="generate"):
        st.session_state.pop("generation_cancelled", None)
        seed = studio.random_seed() if st.session_state["seed_mode"] == "Random" else int(st.session_state["seed"])
        preset = st.session_state["preset"]
        request = studio.GenerationRequest(
            prompt=st.session_state["prompt"],
            negative_prompt=st.session_state["negative_prompt"],
            sampler=st.session_state["sampler"],
            steps=int(st.session_state["steps"]),
            guidance=float(st.session_state["guidance"]),
            seed=seed,
            num_images=int(st.session_state["num_images"]),
            resolution=int(st.session_state["resolution"]),
            preset=preset,
            preset_steps=tuple(custom_presets.get(preset, ())) if preset not in BUILTIN_PRESETS else (),
        )
        waiting = st.empty()
        progress = st.progress(0.0, text="Starting…")
        # Clicking Cancel reruns the script, which stops this run at its next progress update.
        cancel_slot = st.empty()
        cancel_slot.button("Cancel", key="cancel_generation", on_click=mark_cancelled)

        def report(done: int, total: int) -> None:
            progress.progress(done / total, text=f"Step {done} of {total}")

        try:
            request.check()
            with studio.generation_lock(on_wait=lambda: waiting.info("Waiting for another generation to finish…")):
                waiting.empty()
                result = studio.generate_images(pipe, request, on_step=report)
        except GenerationCancelled as exc:
            st.warning(f"Generation cancelled: {exc}.")
        except (ValueError, TimeoutError) as exc:
            st.error(f"Cannot generate: {exc}")
        else:
            st.session_state["generation"] = result
            st.session_state["generation_downloads"] = {
                "png": [png_bytes_with_metadata(item.image, item.metadata) for item in result.images],
                "zip": studio.batch_zip_bytes(result.images),
            }
        finally:
            progress.empty()
            cancel_slot.empty()

    if st.session_state.pop("generation_cancelled", False):
        st.warning("Generation cancelled; no new images were kept.")

    result: studio.GenerationResult | None = st.session_state.get("generation")
    if result is not None:
        downloads = st.session_state["generation_downloads"]
        st.success(f"{len(result.images)} image(s) in {result.seconds:.1f} s · {result.total_steps} steps · "
                   f"{result.steps_per_second:.2f} steps/s")
        for notice in result.notices:
            st.info(notice)
        burn_in = st.toggle("Burn 'SYNTHETIC' into the DICOM pixels", key="dicom_burn_in",
                            help="The DICOM header marks the image as synthetic either way; BurnedInAnnotation records this choice.")
        columns = st.columns(max(2, min(4, len(result.images))))
        for index, item in enumerate(result.images):
            with columns[index % len(columns)]:
                _ui.show_synthetic(item.image, item.caption, width=min(item.image.shape[1], 512))
                stem = studio.image_file_stem(item.metadata)
                st.download_button("PNG (with metadata)", downloads["png"][index], f"{stem}.png", "image/png",
                                   key=f"png_{index}", on_click="ignore", icon=":material/download:")
                st.download_button("DICOM (marked synthetic)", dicom_bytes(item.image, item.metadata, burn_in_label=burn_in),
                                   f"{stem}.dcm", "application/dicom", key=f"dcm_{index}", on_click="ignore",
                                   icon=":material/download:")
        seeds = sorted({item.metadata["seed"] for item in result.images})
        actions = st.container(horizontal=True)
        actions.download_button(f"Batch ZIP ({len(result.images)} PNG + manifest CSV/JSON)", downloads["zip"],
                                "synthetic_cxr_batch.zip", "application/zip", key="zip", on_click="ignore", icon=":material/folder_zip:")
        if st.session_state["seed_mode"] == "Random" or int(st.session_state["seed"]) != seeds[0]:
            actions.button(f"Reuse seed {seeds[0]}", key="keep_seed", on_click=keep_seed, args=(seeds[0],),
                           help="Switch to a fixed seed so the next run reproduces these images.")
        with st.expander("Generation metadata"):
            st.json([item.metadata for item in result.images], expanded=False)


main()
