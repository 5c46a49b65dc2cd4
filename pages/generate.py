"""Generate: synthetic chest X-rays from every registry family, with provenance-carrying downloads.

Latent diffusion: text to image with progress and cancel. Noise families (GANs, VAE family): a class,
a seed and a count. The CVAE: a real Normal film (dataset or upload) translated to a target finding,
beside a difference map. Families without weights say how to train them.
"""
from __future__ import annotations

import streamlit as st
import streamlit.components.v1 as components

from pages import _ui
from post_process import BUILTIN_PRESETS
from xray_generator import generation_history, studio
from xray_generator.dicom import dicom_bytes
from xray_generator.image_views import pixel_view_html, pixel_view_height
from xray_generator.pipelines.editing import DIFFERENCE_GAIN, difference_image
from xray_generator.pipelines.latent_diffusion import MAX_GUIDANCE, SAMPLERS, GenerationCancelled
from xray_generator.pipelines.runtime import BACKENDS, default_backend
from xray_generator.precision import precision_label

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


def preset_selector(container, key: str, help: str) -> tuple[str, tuple]:
    """The enhancement preset widget (built-in and saved presets); returns (name, steps of a saved preset or ())."""
    custom_presets, preset_problems = studio.saved_presets()
    preset_names = list(BUILTIN_PRESETS) + [name for name in custom_presets if name not in BUILTIN_PRESETS]
    if st.session_state.get(key) not in preset_names:
        st.session_state[key] = "None"
    container.selectbox("Enhancement preset", preset_names, key=key, help=help)
    for problem in preset_problems:
        st.warning(f"A saved preset could not be read: {problem}")
    preset = st.session_state[key]
    return preset, (tuple(custom_presets.get(preset, ())) if preset not in BUILTIN_PRESETS else ())


def show_image(item: studio.GeneratedImage, view: str | None) -> None:
    """One generated image: fitted to its column's width, at 1:1 pixels in a scroll box, or (view None) at 256-512 px."""
    if view == "fit":
        _ui.show_synthetic(item.image, item.caption, width="stretch")
    elif view == "pixels":
        caption = f"{item.caption} · 1:1 pixels"
        components.html(pixel_view_html(item.image, caption=caption), height=pixel_view_height(item.image.shape))
    else:
        # Shown at 256 to 512 px: small native outputs (a tiny model) are displayed larger, the files keep their size.
        _ui.show_synthetic(item.image, item.caption, width=min(max(item.image.shape[1], 256), 512))


def show_generation(result: studio.GenerationResult, downloads: dict, summary: str, prefix: str = "", view: str | None = None):
    """Every image with its SYNTHETIC caption, PNG and DICOM downloads, and the batch ZIP; returns the actions row.

    With a `view` ("fit" or "pixels", the Generate page's right column) the images come first, one
    or two per row, and the summary follows; without, they are a grid of up to four under it.
    """
    if view is None:
        st.success(summary)
    columns = st.columns(1 if view is not None and len(result.images) == 1 else 2 if view is not None else
                         max(2, min(4, len(result.images))))
    for index, item in enumerate(result.images):
        with columns[index % len(columns)]:
            show_image(item, view)
    if view is not None:
        st.success(summary)
    for notice in result.notices:
        st.info(notice)
    burn_in = st.toggle("Burn 'SYNTHETIC' into the DICOM pixels", key=f"{prefix}dicom_burn_in",
                        help="The DICOM header marks the image as synthetic either way; BurnedInAnnotation records this choice.")
    for index, item in enumerate(result.images):
        with columns[index % len(columns)]:
            stem = studio.image_file_stem(item.metadata)
            st.download_button("PNG (with metadata)", downloads["png"][index], f"{stem}.png", "image/png",
                               key=f"{prefix}png_{index}", on_click="ignore", icon=":material/download:")
            st.download_button("DICOM (marked synthetic)", dicom_bytes(item.image, item.metadata, burn_in_label=burn_in),
                               f"{stem}.dcm", "application/dicom", key=f"{prefix}dcm_{index}", on_click="ignore",
                               icon=":material/download:")
    actions = st.container(horizontal=True)
    actions.download_button(f"Batch ZIP ({len(result.images)} PNG + manifest CSV/JSON)", downloads["zip"],
                            "synthetic_cxr_batch.zip", "application/zip", key=f"{prefix}zip", on_click="ignore",
                            icon=":material/folder_zip:")
    return actions


def family_label(status: studio.GeneratorStatus) -> str:
    if status.available:
        return status.title
    if status.damaged:
        return f"{status.title} — weights failed the sha256 check"
    return f"{status.title} — {studio.status_label(status)}"


def main() -> None:
    st.title("Generate")
    st.caption("Synthetic chest radiographs: text to image with latent diffusion, or an alternative model family as each "
               "becomes available. Every image is SYNTHETIC and carries how it was made.")

    statuses = _ui.generator_statuses()
    available = [s for s in statuses if s.available]
    with st.expander("Model families", expanded=not available):
        st.dataframe(
            [{"family": s.title, "name": s.name, "status": studio.status_label(s), "weights": s.weights_hash or "",
              "why not": s.reason, "train and export": "" if s.available else " && ".join(s.train_commands),
              "about": s.description} for s in statuses],
            hide_index=True,
        )
    _ui.damaged_weights_banners(statuses)
    if not available:
        _ui.model_unavailable_notice(statuses)
        return

    by_name = {s.name: s for s in statuses}
    if st.session_state.get("model_family") not in by_name:
        st.session_state["model_family"] = available[0].name
    st.selectbox(
        "Model family",
        [s.name for s in statuses],
        key="model_family",
        format_func=lambda name: family_label(by_name[name]),
        help="Every family in the model registry; those without usable weights say why and how to train them.",
    )
    status = by_name[st.session_state["model_family"]]
    if not status.available:
        _ui.not_trained_notice(status)
        return

    try:
        pipe = _ui.pipeline(status)
    except Exception as exc:  # noqa: BLE001 - corrupt or missing weights: say so, do not crash
        st.error(f"Could not load {status.title}: {exc}")
        return
    if status.kind == "translation":
        translation_form(status, pipe)
    elif status.kind == "noise":
        noise_family_form(status, pipe)
    else:
        latent_diffusion_form(pipe, status)


IMAGE_VIEWS = {"fit": "Fit to width", "pixels": "1:1 pixels"}


def latent_diffusion_form(pipe, status: studio.GeneratorStatus) -> None:
    """Controls on the left, the result on the right (both in view at 1400 x 1000), the tab's history below."""
    defaults = pipe.generation_defaults

    # Defaults go into session_state once, so widgets never get both a default and a state value.
    for key, value in {"prompt": "PA chest radiograph: no acute cardiopulmonary abnormality.", "negative_prompt": "",
                       "sampler": defaults["sampler"], "steps": int(defaults["num_inference_steps"]),
                       "guidance": float(defaults["guidance_scale"]),
                       "guidance_fraction": float(defaults.get("guidance_fraction", 1.0)), "seed_mode": "Random", "seed": 0, "num_images": 1,
                       "resolution": studio.NATIVE_RESOLUTION, "preset": "None", "image_view": "fit",
                       "backend": default_backend()}.items():
        st.session_state.setdefault(key, value)

    controls, output = st.columns([5, 6], gap="large")
    with controls:
        submitted = prompt_form(pipe)
        prompt_assist(status)
        preset, preset_steps = generation_settings(defaults)
    with output:
        if submitted:
            run_generation(pipe, preset, preset_steps)
        if st.session_state.pop("generation_cancelled", False):
            st.warning("Generation cancelled; no new images were kept.")
        show_latest_generation()
    show_history()


def prompt_form(pipe) -> bool:
    """Example picker, prompt, negative prompt and the Generate button; True when the form was submitted.

    A form, so that Ctrl+Enter (Cmd+Enter on a Mac) in the prompt submits it, i.e. generates.
    """
    examples = dict(studio.example_prompts())
    st.selectbox("Example prompts", list(examples), index=None, key="example_prompt", on_change=use_example, args=(examples,),
                 placeholder="Pick an example (finding vocabulary, or real IU report text) to fill the prompt",
                 help="IU report examples are verbatim report text (licence not stated; research use only).")
    with st.form("prompt_form", border=False):
        st.text_area("Prompt", key="prompt", height=90, max_chars=2000,
                     help="Ctrl+Enter (Cmd+Enter on a Mac) generates.")
        # Findings the model saw rarely or never (issue 18): a self-contained block under the prompt.
        from xray_generator.model_vocabulary import load_training_vocabulary, prompt_notices
        for notice in prompt_notices(st.session_state["prompt"], load_training_vocabulary(getattr(pipe, "weights_folder", "."))):
            st.warning(f"Training data: {notice}", icon="⚠️")
        st.text_input("Negative prompt (optional)", key="negative_prompt", help="What to steer away from, e.g. 'lateral view, text'.")
        return st.form_submit_button("Generate", type="primary", key="generate", help="Ctrl+Enter in the prompt does the same.")


def add_finding(chips: dict[str, studio.FindingChip]) -> None:
    chosen = st.session_state.get("finding_chip")
    if chosen in chips:
        st.session_state["prompt"] = studio.prompt_with_finding(st.session_state.get("prompt", ""), chips[chosen].phrase)
    st.session_state["finding_chip"] = None  # a chip is an action, not a state


def prompt_assist(status: studio.GeneratorStatus) -> None:
    """Chips that add a finding to the prompt: the findings the model was trained on, with counts when recorded."""
    chip_list, note = studio.finding_chips(status.folder)
    chips = {chip.text: chip for chip in chip_list}
    st.pills("Add a finding", list(chips), key="finding_chip", on_change=add_finding, args=(chips,), width="stretch",
             help="Appends the finding's radiology phrase to the prompt as a sentence of its own.")
    st.caption(note)


def generation_settings(defaults: dict) -> tuple[str, tuple]:
    left, middle, right = st.columns(3)
    left.selectbox("Sampler", sorted(SAMPLERS), key="sampler")
    middle.slider("Steps", 1, 100, key="steps", help="Time grows linearly with steps.")
    right.slider("Guidance", 0.0, float(min(MAX_GUIDANCE, 15.0)), step=0.5, key="guidance",
                 help="Classifier-free guidance; 1 or less turns it off (one network pass per step).")
    st.slider("Guided share of the steps", 0.05, 1.0, step=0.01, key="guidance_fraction",
              help="Guidance runs on this share of the steps, noisiest first (rounded up to whole steps); the rest take "
                   f"one network pass each. The model's default is {defaults.get('guidance_fraction', 1.0):.2f}: guiding the "
                   "late, low-noise steps over-contrasts the films (see the README's sampler comparison).")
    left, middle, right = st.columns(3)
    left.radio("Seed", ["Random", "Fixed"], key="seed_mode", horizontal=True)
    middle.number_input("Seed value", min_value=0, max_value=2**31 - 1, step=1, key="seed",
                        disabled=st.session_state["seed_mode"] == "Random",
                        help="Image i of a batch uses seed + i; the same seed and settings give the same image.")
    right.number_input("Number of images", 1, studio.MAX_IMAGES_PER_REQUEST, key="num_images")
    st.radio("Resolution", list(RESOLUTION_LABELS), key="resolution", format_func=RESOLUTION_LABELS.get)
    st.selectbox("Backend", BACKENDS, key="backend",
                 help=f"What runs the network (default in the app: {default_backend()}). On a 2-core AVX2 CPU OpenVINO is about 1.2x faster per image in a "
                      "plain process (the command line's default there), but in the app its first image took 3.2 s against PyTorch's 1.9 s. Backends differ by float rounding "
                      "(within 2 grey levels); each image's metadata records its backend. A runtime's first use on new "
                      "weights exports them once (tens of seconds) unless `python -m xray_generator export-runtime` ran.")
    return preset_selector(
        st, "preset", "Display enhancement from post_process.py, applied to the 256 px output before any upscaling.")


def run_generation(pipe, preset: str, preset_steps: tuple) -> None:
    """Generate with the current settings; progress and Cancel show here, the result goes to the session and history."""
    st.session_state.pop("generation_cancelled", None)
    seed = studio.random_seed() if st.session_state["seed_mode"] == "Random" else int(st.session_state["seed"])
    request = studio.GenerationRequest(
        prompt=st.session_state["prompt"],
        negative_prompt=st.session_state["negative_prompt"],
        sampler=st.session_state["sampler"],
        steps=int(st.session_state["steps"]),
        guidance=float(st.session_state["guidance"]),
        guidance_fraction=float(st.session_state["guidance_fraction"]),
        backend=st.session_state["backend"],
        seed=seed,
        num_images=int(st.session_state["num_images"]),
        resolution=int(st.session_state["resolution"]),
        preset=preset,
        preset_steps=preset_steps,
    )
    waiting = st.empty()
    preparing = hasattr(pipe, "runtime_loaded") and not pipe.runtime_loaded(request.backend, studio.NATIVE_RESOLUTION, studio.NATIVE_RESOLUTION)
    progress = st.progress(0.0, text=f"Preparing {request.backend} for these weights: about 1 s from its cache, about 20 s the first "
                                     "time (an export, once per weights version)…" if preparing else "Starting…")
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
        st.session_state["generation_downloads"] = studio.generation_downloads(result)
        record_in_history(request, result)
    finally:
        progress.empty()
        cancel_slot.empty()


def record_in_history(request: studio.GenerationRequest, result: studio.GenerationResult) -> None:
    history = st.session_state.get("generation_history", [])
    entry = generation_history.entry_from_result(request, result, generation_history.next_number(history))
    same = generation_history.matching_entry(history, entry.fingerprints)
    st.session_state["generation_history"] = generation_history.add_entry(history, entry)
    st.session_state["generation_entry"] = entry.number
    st.session_state["generation_reproduces"] = same.number if same is not None else None


def show_latest_generation() -> None:
    result: studio.GenerationResult | None = st.session_state.get("generation")
    if result is None:
        st.info("The image appears here. Write a prompt and click Generate (or press Ctrl+Enter in the prompt).")
        return
    view = st.segmented_control("View", list(IMAGE_VIEWS), key="image_view", format_func=IMAGE_VIEWS.get,
                                help="Fit to width: scaled to this column. 1:1 pixels: one image pixel per screen pixel, "
                                     "unsmoothed, scrolling if larger.")
    actions = show_generation(result, st.session_state["generation_downloads"],
                              f"{len(result.images)} image(s) in {result.seconds:.1f} s · {result.total_steps} steps · "
                              f"{result.steps_per_second:.2f} steps/s · {precision_label(result.images[0].metadata.get('precision'))} · "
                              f"{result.images[0].metadata.get('backend', 'torch')}",
                              view=view or "fit")
    seeds = sorted({item.metadata["seed"] for item in result.images})
    if st.session_state["seed_mode"] == "Random" or int(st.session_state["seed"]) != seeds[0]:
        actions.button(f"Reuse seed {seeds[0]}", key="keep_seed", on_click=keep_seed, args=(seeds[0],),
                       help="Switch to a fixed seed so the next run reproduces these images.")
    same = st.session_state.get("generation_reproduces")
    if same is not None:
        st.info(f"Byte-identical to history #{same}: the same settings and seed reproduce the same image.",
                icon=":material/verified:")
    with st.expander("Generation metadata"):
        st.json([item.metadata for item in result.images], expanded=False)


def restore_from_history(number: int) -> None:
    entry = next((e for e in st.session_state.get("generation_history", []) if e.number == number), None)
    if entry is None:
        return
    custom_presets, _ = studio.saved_presets()
    values, notices = generation_history.restored_widget_values(entry, [*BUILTIN_PRESETS, *custom_presets])
    st.session_state.update(values)
    st.session_state["history_restored"] = (number, notices)


def show_history() -> None:
    """This tab's last results, newest first; Restore puts an entry's settings and seed back into the controls."""
    history = st.session_state.get("generation_history", [])
    restored = st.session_state.pop("history_restored", None)
    if restored is not None:
        number, notices = restored
        st.toast(f"Settings and seed of #{number} restored: Generate reproduces it.", icon=":material/history:")
        for notice in notices:
            st.warning(notice)
    if not history:
        return
    st.subheader(f"History of this tab ({len(history)} of the last {generation_history.HISTORY_LIMIT})")
    per_row = 8
    for start in range(0, len(history), per_row):
        columns = st.columns(per_row)
        for column, entry in zip(columns, history[start:start + per_row]):
            with column:
                _ui.show_synthetic(entry.thumbnail, entry.caption, width="stretch")
                st.button(f"Restore #{entry.number}", key=f"history_restore_{entry.number}", on_click=restore_from_history,
                          args=(entry.number,), help=f"{entry.label}\n\n{entry.describe()}", width="stretch")


def noise_family_form(status: studio.GeneratorStatus, generator) -> None:
    """A GAN or VAE-family model: class (if conditional), seed, number of images, enhancement preset."""
    st.caption(f"{status.description} Images are {generator.image_size} px, the model's native size; "
               f"{generator.parameters:,} generating parameters.")
    for key, value in {"family_seed": 0, "family_num_images": 1, "family_preset": "None"}.items():
        st.session_state.setdefault(key, value)
    left, middle, right = st.columns(3)
    condition = None
    if generator.conditions:
        condition_key = f"family_condition_{status.name}"  # per family: the class lists differ
        if st.session_state.get(condition_key) not in generator.conditions:
            st.session_state[condition_key] = generator.default_condition
        condition = left.selectbox("Condition", list(generator.conditions), key=condition_key,
                                   help="The class the conditional model draws from.")
    else:
        left.markdown("**Condition**")
        left.caption("Unconditional model: it draws from the whole training distribution, so there is no class to pick.")
    middle.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key="family_seed",
                        help="Image i of a batch uses seed + i; the same seed gives the same image.")
    right.number_input("Number of images", 1, studio.MAX_IMAGES_PER_REQUEST, key="family_num_images")
    preset, preset_steps = preset_selector(st, "family_preset", "Display enhancement from post_process.py, applied to the model's output.")

    if st.button("Generate", type="primary", key="family_generate"):
        request = studio.FamilyRequest(condition=condition, seed=int(st.session_state["family_seed"]),
                                       num_images=int(st.session_state["family_num_images"]), preset=preset,
                                       preset_steps=preset_steps)
        progress = st.progress(0.0, text="Starting…")
        try:
            request.check(generator)
            with studio.generation_lock(on_wait=lambda: progress.progress(0.0, text="Waiting for another generation to finish…")):
                result = studio.generate_family_images(
                    generator, request, status.weights_hash,
                    on_image=lambda done, total: progress.progress(done / total, text=f"Image {done} of {total}"))
        except (ValueError, TimeoutError) as exc:
            st.error(f"Cannot generate: {exc}")
        else:
            st.session_state["family_generation"] = {"family": status.name, "weights": status.weights_hash, "result": result,
                                                     "downloads": studio.generation_downloads(result)}
        finally:
            progress.empty()

    stored = st.session_state.get("family_generation")
    if stored is not None and stored["family"] == status.name and stored["weights"] == status.weights_hash:
        result = stored["result"]
        count = len(result.images)
        show_generation(result, stored["downloads"], f"{count} image(s) from {status.title} in {result.seconds:.2f} s · "
                        f"{result.seconds / count:.3f} s per image", prefix="family_")
        with st.expander("Generation metadata"):
            st.json([item.metadata for item in result.images], expanded=False)


def translation_form(status: studio.GeneratorStatus, generator) -> None:
    """The CVAE: a Normal film from the dataset or an upload, a target condition and a seed; input | translation | difference."""
    size = int(generator.image_size)
    st.caption(f"{status.description} It works at {size} × {size} px: the input is resized (and centre-cropped if it "
               "is not square) to that size, and the difference map compares at that size.")
    trained_on = tuple(generator.config.get("data", {}).get("sources") or ())
    source, source_id, description = _ui.choose_radiograph("cvae", label="Normal", prefer_sources=trained_on)
    if trained_on:
        st.caption(f"Trained on Normal and pneumonia films from {', '.join(trained_on)}: its held-out (test, val) Normal "
                   "films are listed first; films from other sources or uploads are outside what it learned.")
    conditions = list(generator.conditions)
    if st.session_state.get("cvae_condition") not in conditions:
        st.session_state["cvae_condition"] = generator.default_condition
    st.session_state.setdefault("cvae_seed", 0)
    left, right = st.columns(2)
    left.selectbox("Target condition", conditions, key="cvae_condition",
                   help="The finding the output should show; Normal reconstructs the film (what the model keeps).")
    right.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key="cvae_seed",
                       help="Seeds the latent draw; the same film, condition and seed give the same output.")

    if st.button("Translate", type="primary", key="cvae_translate", disabled=source is None):
        request = studio.TranslationRequest(condition=st.session_state["cvae_condition"], seed=int(st.session_state["cvae_seed"]),
                                            source_id=source_id, source_description=description)
        try:
            with studio.generation_lock(on_wait=lambda: st.info("Waiting for another generation to finish…")):
                result, seconds = studio.translate_radiograph(generator, source, request, status.weights_hash)
        except (ValueError, TimeoutError) as exc:
            st.error(f"Cannot translate this image: {exc}")
        else:
            st.session_state["cvae_result"] = {"family": status.name, "weights": status.weights_hash, "result": result,
                                               "seconds": seconds, "downloads": studio.edit_downloads(result)}

    stored = st.session_state.get("cvae_result")
    if stored is None or stored["family"] != status.name or stored["weights"] != status.weights_hash:
        return
    result, meta = stored["result"], stored["result"].metadata
    st.success(f"Translated to {meta['condition']} in {stored['seconds']:.2f} s · seed {meta['seed']} · {meta['source']}")
    for notice in result.notices:
        st.info(f"Input: {notice}.")
    columns = st.columns(3)
    with columns[0]:
        _ui.show_real(result.source, f"input · {meta['source']} · as the model sees it ({size} px)", width="stretch")
    with columns[1]:
        _ui.show_synthetic(result.image, f"{studio.family_caption(meta)} · translation of the input", width="stretch")
    with columns[2]:
        st.image(difference_image(result), caption=f"SYNTHETIC · difference map |translation − input| × {DIFFERENCE_GAIN:g}",
                 clamp=True, width="stretch")
    stem = studio.translation_file_stem(meta)
    actions = st.container(horizontal=True)
    actions.download_button("Translation PNG (with metadata)", stored["downloads"]["png"], f"{stem}.png", "image/png",
                            key="cvae_png", on_click="ignore", icon=":material/download:")
    actions.download_button("Difference PNG", stored["downloads"]["diff"], f"{stem}_diff.png", "image/png",
                            key="cvae_diff_png", on_click="ignore", icon=":material/download:")
    actions.download_button("DICOM (marked synthetic)", dicom_bytes(result.image, meta), f"{stem}.dcm", "application/dicom",
                            key="cvae_dcm", on_click="ignore", icon=":material/download:")
    with st.expander("Translation metadata"):
        st.json(meta, expanded=False)


main()
