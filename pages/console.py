"""Research console: generated vs real images of one finding, memorisation check, and a blind quiz."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from pages import _ui
from xray_generator import studio
from xray_generator.evaluation.descriptors import DESCRIPTOR_NAMES, intensity_histogram
from xray_generator.io import to_uint8
from xray_generator.pipelines.latent_diffusion import GenerationCancelled
from xray_generator.weights import WeightsError


def gather(manifest, status, label: str, n: int, seed: int, use_cache: bool) -> dict:
    """Real held-out images and generated ones for `label`; generated ones come from the disk cache when asked."""
    real = studio.real_examples(manifest, label, n, seed)
    folder = studio.samples_cache_dir(status.name, status.weights_hash, label)
    generated = studio.load_cached_samples(folder, n) if use_cache else []
    missing = n - len(generated)
    if missing > 0:
        pipe = _ui.pipeline(status)
        progress = st.progress(0.0, text=f"Generating {missing} image(s)…")
        # New seeds continue after the cached ones, so no image appears twice.
        used = [int(item.metadata["seed"]) for item in generated if isinstance(item.metadata.get("seed"), int)]
        start = max(used) + 1 if used else seed
        request = studio.GenerationRequest(prompt=studio.prompt_for_label(label), seed=start, num_images=missing)
        with studio.generation_lock(on_wait=lambda: progress.progress(0.0, text="Waiting for another generation to finish…")):
            result = studio.generate_images(pipe, request, on_step=lambda d, t: progress.progress(d / t, text=f"Step {d} of {t}"))
        progress.empty()
        studio.save_cached_samples(result.images, folder)
        generated += result.images
    return {"label": label, "real": real, "generated": generated, "model": status.name, "weights": status.weights_hash}


def grids(state: dict) -> None:
    left, right = st.columns(2)
    with left:
        st.markdown(f"**Real** (held-out val/test) · {len(state['real'])}")
        if state["real"]:
            st.image([to_uint8(img) for _, img in state["real"]], caption=[f"REAL · {image_id[:24]}" for image_id, _ in state["real"]], width=150)
        else:
            st.info("No held-out real image has this finding.")
    with right:
        st.markdown(f"**Generated** ({state['model']}, weights {state['weights']}) · {len(state['generated'])}")
        st.image([to_uint8(g.native) for g in state["generated"]],
                 caption=[f"SYNTHETIC · seed {g.metadata.get('seed')}" for g in state["generated"]], width=150)


def descriptors(state: dict) -> None:
    rows = studio.descriptor_rows([img for _, img in state["real"]], "real", [i for i, _ in state["real"]])
    rows += studio.descriptor_rows([g.native for g in state["generated"]], "synthetic", [f"seed {g.metadata.get('seed')}" for g in state["generated"]])
    table = pd.DataFrame(rows)
    summary = table.groupby("kind")[list(DESCRIPTOR_NAMES)].agg(["mean", "std"]).T.unstack()
    summary.columns = [f"{kind} {stat}" for kind, stat in summary.columns]
    st.dataframe(summary.style.format("{:.4g}"), width="stretch")
    with st.expander("Per-image descriptors"):
        st.dataframe(table.style.format({name: "{:.4g}" for name in DESCRIPTOR_NAMES}), hide_index=True, width="stretch")
    figure = go.Figure()
    colours = {"real": "#9aa5b1", "synthetic": "#f28e2b"}
    for kind, images in (("real", [img for _, img in state["real"]]), ("synthetic", [g.native for g in state["generated"]])):
        if not images:
            continue
        counts = sum(intensity_histogram(img, 64)[0] for img in images)
        edges = np.linspace(0, 1, 65)
        figure.add_trace(go.Scatter(x=(edges[:-1] + edges[1:]) / 2, y=counts / counts.sum(), mode="lines", name=f"{kind} (n={len(images)})",
                                    fill="tozeroy", opacity=0.5, line=dict(color=colours[kind])))
    figure.update_layout(height=300, title="Pooled intensity histograms", xaxis_title="intensity", yaxis_title="fraction of pixels",
                         margin=dict(l=10, r=10, t=40, b=10))
    st.plotly_chart(figure, key="console_histograms")


def memorisation(state: dict, manifest) -> None:
    ids, vectors = _ui.training_reference(manifest)
    generated = [g.native for g in state["generated"]]
    nearest = studio.nearest_training(generated, ids, vectors)
    reference = studio.nearest_training([img for _, img in state["real"]], ids, vectors) if state["real"] else []
    table = pd.DataFrame([{"generated": f"seed {g.metadata.get('seed')}", "nearest training image": image_id, "correlation": corr}
                          for g, (image_id, corr) in zip(state["generated"], nearest)])
    left, right = st.columns([3, 2])
    left.dataframe(table.style.format({"correlation": "{:.3f}"}), hide_index=True, width="stretch")
    if reference:
        ref = np.array([c for _, c in reference])
        right.metric("Held-out real → nearest training (reference)", f"{np.median(ref):.3f} median",
                     help="Real radiographs all look alike: read the generated correlations against this, not against 0.")
    gen = np.array([c for _, c in nearest])
    right.metric("Generated → nearest training", f"{np.median(gen):.3f} median", help="Pearson correlation of 64×64 pixels.")
    right.caption(f"Searched {len(ids):,} training images. Correlations ≥ 0.95 would suggest a near-copy.")

    index = st.selectbox("Difference map for", range(len(state["generated"])), key="console_diff_index",
                         format_func=lambda i: f"seed {state['generated'][i].metadata.get('seed')} (r = {nearest[i][1]:.3f})")
    item = state["generated"][index]
    image_id, corr = nearest[index]
    real = studio.read_resized(manifest.path_of(image_id))
    difference = studio.difference_map(item.native, real)
    columns = st.columns(3)
    with columns[0]:
        _ui.show_synthetic(item.native, f"seed {item.metadata.get('seed')}", width="stretch")
    with columns[1]:
        _ui.show_real(real, f"nearest training image {image_id} (r = {corr:.3f})", width="stretch")
    with columns[2]:
        heat = px.imshow(difference, zmin=-1, zmax=1, color_continuous_scale="RdBu_r", height=300,
                         title="generated − real")
        heat.update_layout(margin=dict(l=0, r=0, t=30, b=0))
        heat.update_xaxes(showticklabels=False)
        heat.update_yaxes(showticklabels=False)
        st.plotly_chart(heat, key="console_difference")


def classifier_section(state: dict) -> None:
    try:
        classifier = _ui.finding_classifier()
    except WeightsError as exc:
        st.error(f"The classifier's weights failed verification, so no scores are shown: {exc}")
        return
    images = [img for _, img in state["real"]] + [g.native for g in state["generated"]]
    kinds = ["real"] * len(state["real"]) + ["synthetic"] * len(state["generated"])
    names = [i for i, _ in state["real"]] + [f"seed {g.metadata.get('seed')}" for g in state["generated"]]
    table = studio.classifier_score_table(classifier, images, kinds, names)
    labels = list(classifier.labels)
    summary = table.groupby("kind")[labels].agg(["mean", "count"])
    st.dataframe(summary.style.format("{:.3f}"), width="stretch")
    st.caption("Mean predicted probability per label (count = images). Compare synthetic with real of the same finding.")
    with st.expander("Per-image scores"):
        st.dataframe(table.style.format({label: "{:.3f}" for label in labels}), hide_index=True, width="stretch")
    left, right = st.columns(2)
    index = left.selectbox("Grad-CAM for", range(len(images)), key="console_cam_image",
                           format_func=lambda i: f"{kinds[i].upper()} · {names[i]}")
    default = labels.index(state["label"]) if state["label"] in labels else 0
    label = right.selectbox("Label", labels, index=default, key="console_cam_label")
    overlay = studio.grad_cam_overlay(classifier, images[index], label)
    caption = f"{'SYNTHETIC' if kinds[index] == 'synthetic' else 'REAL'} · {names[index]} · Grad-CAM for {label} (p = {table[label].iloc[index]:.3f})"
    st.image(overlay, caption=caption, width=320)


def quiz(state: dict | None, manifest) -> None:
    st.subheader("Blind quiz: real or synthetic?")
    pool = list(state["generated"]) if state else []
    last = st.session_state.get("generation")
    if last is not None:
        pool += last.images
    quiz_state = st.session_state.get("quiz")
    if st.button("Start a new quiz", key="quiz_start", disabled=not pool):
        real = studio.real_examples(manifest, label=state["label"], n=10, seed=int(np.random.default_rng().integers(1 << 30))) if state else []
        if len(real) < 5:
            extra = manifest.query(split=["val", "test"]).table.sample(n=min(10, len(manifest)), random_state=int(np.random.default_rng().integers(1 << 30)))
            real += [(row.image_id, studio.read_resized(manifest.root / row.file)) for row in extra.itertuples(index=False)]
        # As many synthetic as real images, so guessing "synthetic" every time scores 50%.
        items = studio.build_quiz(real, pool, rounds=min(10, 2 * len(pool)), seed=int(np.random.default_rng().integers(1 << 30)))
        quiz_state = {"items": items, "position": 0, "answers": []}
        st.session_state["quiz"] = quiz_state
    if not pool:
        st.caption("Generate images above (or on the Generate page) first; the quiz mixes them with held-out real images.")
        return
    if not quiz_state or not quiz_state["items"]:
        return
    items, position, answers = quiz_state["items"], quiz_state["position"], quiz_state["answers"]
    correct = sum(answer == item.synthetic for answer, item in zip(answers, items))
    st.progress(len(answers) / len(items), text=f"Score {correct} / {len(answers)} · image {min(position + 1, len(items))} of {len(items)}")
    if position >= len(items):
        st.success(f"Quiz finished: {correct} of {len(items)} correct ({correct / len(items):.0%}). Chance is 50%.")
        return
    item = items[position]
    answered = len(answers) > position
    left, right = st.columns([1, 2])
    with left:
        caption = "Quiz image: real or SYNTHETIC?" if not answered else ("SYNTHETIC" if item.synthetic else "REAL") + f" · {item.source}"
        st.image(to_uint8(item.image), caption=caption, width=256)
    with right:
        if not answered:
            real_col, fake_col = st.columns(2)
            if real_col.button("Real", key=f"quiz_real_{position}"):
                answers.append(False)
                st.rerun()
            if fake_col.button("Synthetic", key=f"quiz_fake_{position}"):
                answers.append(True)
                st.rerun()
        else:
            right_answer = answers[position] == item.synthetic
            (st.success if right_answer else st.error)(
                f"{'Correct' if right_answer else 'Not quite'}: this image is {'SYNTHETIC' if item.synthetic else 'real'} ({item.source}).")
            if st.button("Next image", key=f"quiz_next_{position}"):
                quiz_state["position"] += 1
                st.rerun()


def main() -> None:
    st.title("Research console: real vs generated")
    manifest, message = _ui.dataset()
    if manifest is None:
        st.warning(f"{message} The console compares with real images, so it needs the dataset.")
        return
    # The console prompts for a finding, so it compares the prompted (text) families.
    statuses = [s for s in _ui.generator_statuses() if s.available and s.kind == "text"]
    if not statuses:
        _ui.model_unavailable_notice(_ui.generator_statuses(), needs="The console")
        return
    labels = studio.console_labels(manifest)
    if not labels:
        st.warning("No held-out (val/test) real image carries a finding label, so there is nothing to compare with.")
        return
    controls = st.columns([2, 2, 1, 1, 2])
    names = [s.name for s in statuses]
    active = st.session_state.get("model_family")
    model = controls[0].selectbox("Model", names, index=names.index(active) if active in names else 0, key="console_model")
    status = next(s for s in statuses if s.name == model)
    label = controls[1].selectbox("Finding", labels, key="console_label")
    n = controls[2].number_input("N", 1, 12, 4, key="console_n")
    seed = controls[3].number_input("Seed", 0, 2**31 - 1, 0, key="console_seed")
    cached = len(studio.load_cached_samples(studio.samples_cache_dir(status.name, status.weights_hash, label), int(n)))
    use_cache = controls[4].toggle(f"Cached samples ({cached})", value=True, key="console_use_cache",
                                   help="Generated images are saved per model, weights and finding, so a comparison can be reopened without waiting.")
    st.caption(f"Prompt for generation: “{studio.prompt_for_label(label)}”")
    if st.button("Compare", type="primary", key="console_run"):
        try:
            st.session_state["console"] = gather(manifest, status, label, int(n), int(seed), use_cache)
        except GenerationCancelled:
            st.warning("Generation cancelled.")
        except (ValueError, TimeoutError) as exc:
            st.error(f"Cannot compare: {exc}")
    state = st.session_state.get("console")
    if state is not None:
        st.caption(f"Showing {state['label']} · model {state['model']} (weights {state['weights']}).")
        with _ui.section("Image grids"):
            grids(state)
        with _ui.section("Descriptors"):
            st.subheader("Descriptors and histograms")
            descriptors(state)
        with _ui.section("Memorisation check"):
            st.subheader("Memorisation check: nearest training image")
            if state["generated"]:
                memorisation(state, manifest)
        with _ui.section("Classifier"):
            st.subheader("Classifier scores and Grad-CAM")
            trained, text = studio.classifier_status()
            if not trained:
                st.info(text)
            else:
                st.caption(text)
                classifier_section(state)
    else:
        st.info("Choose a finding and press Compare.")
    with _ui.section("Quiz"):
        quiz(state, manifest)


main()
