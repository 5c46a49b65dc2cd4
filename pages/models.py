"""Model analysis: components, parameters, memory, configs, weights files and measured layer tables."""
from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from pages import _ui
from xray_generator import studio
from xray_generator.pipelines.latent_diffusion import SAMPLERS


@st.cache_data(show_spinner="Measuring layer output shapes with a dummy input…", max_entries=16)
def cached_layer_table(name: str, weights_hash: str, component: str, _pipe):
    # Keyed by model and weights hash; the pipeline object itself is not hashed.
    return studio.layer_table(studio.pipeline_modules(_pipe)[component], studio.dummy_runs(_pipe)[component])


def analyse(status) -> None:
    pipe = _ui.pipeline(status)
    prompted = studio.is_prompted_pipeline(pipe)
    components = studio.components_table(pipe)
    trained = components.loc[components["role"] == "trained here", "parameters"].sum()
    columns = st.columns(4)
    columns[0].metric("Parameters (all)", f"{components['parameters'].sum() / 1e6:.2f} M")
    if prompted:
        columns[1].metric("Trained here", f"{trained / 1e6:.2f} M")
    else:
        columns[1].metric("Generating", f"{pipe.parameters / 1e6:.3f} M",
                          help="Parameters of the network that makes images (a VAE's encoder is shipped but only encodes; "
                               "GAN discriminators are not shipped).")
    columns[2].metric("Weights in memory", f"{components['memory_mb'].sum():.0f} MB")
    rss = studio.process_memory_mb()
    columns[3].metric("Process memory", f"{rss:.0f} MB" if rss else "n/a", help="Resident memory of the whole studio process.")
    st.dataframe(components, hide_index=True, width="stretch",
                 column_config={"parameters": st.column_config.NumberColumn(format="localized"),
                                "memory_mb": st.column_config.NumberColumn("memory (MB)", format="%.1f")})
    if not prompted:
        st.caption(f"Conditions: {', '.join(pipe.conditions) or 'none (unconditional)'} · images {pipe.image_size} px · "
                   f"model.safetensors sha256 `{pipe.weights_sha256}`")
    names = ["Layers", "Configuration", "Scheduler", "Weights files", "Model card"] if prompted else \
        ["Layers", "Configuration", "Weights files", "Model card", "Sample grid"]
    tabs = dict(zip(names, st.tabs(names, key=f"models_tab_{status.name}", on_change="rerun")))
    layers, config, files, card = tabs["Layers"], tabs["Configuration"], tabs["Weights files"], tabs["Model card"]
    if layers.open:
        layer_section(status, pipe, layers)
    if config.open:
        config_section(status, pipe, config) if prompted else family_config_section(status, pipe, config)
    if "Scheduler" in tabs and tabs["Scheduler"].open:
        scheduler_section(pipe, tabs["Scheduler"])
    if "Sample grid" in tabs and tabs["Sample grid"].open:
        with tabs["Sample grid"], _ui.section("Sample grid"):
            grid = status.folder / "samples.png"
            if grid.is_file():
                st.image(str(grid), caption=f"SYNTHETIC · {status.name} · fixed-seed sample grid written at export "
                                            f"(weights {status.weights_hash})")
            else:
                st.info(f"No sample grid in {status.folder} (the export writes samples.png).")
    if files.open:
        with files, _ui.section("Weights files"):
            st.caption(f"{status.folder} · weights hash {status.weights_hash} (sha256 of MANIFEST.json, first 16 hex digits)")
            st.dataframe(studio.weights_files_table(status.folder), hide_index=True, width="stretch",
                         column_config={"megabytes": st.column_config.NumberColumn(format="%.2f")})
    if card.open:
        with card, _ui.section("Model card"):
            text = studio.model_card(status.folder)
            if text:
                st.markdown(text)
            else:
                st.info(f"No model card yet ({status.folder / 'README.md'} is absent).")


def layer_section(status, pipe, tab) -> None:
    with tab, _ui.section("Layer table"):
        runs = studio.dummy_runs(pipe)
        component = st.selectbox("Network", list(runs), key=f"models_component_{status.name}")
        table = cached_layer_table(status.name, status.weights_hash, component, pipe)
        deepest = int(table["depth"].max())
        depth = deepest if deepest <= 1 else st.slider("Show modules down to depth", 1, deepest, min(2, deepest),
                                                       key=f"models_depth_{status.name}_{component}")
        shown = table[table["depth"] <= depth]
        st.caption(f"{len(shown)} of {len(table)} modules. Parameters and output shapes are measured from the loaded "
                   "network (forward hooks on a dummy input), not typed in.")
        st.dataframe(shown, hide_index=True, width="stretch", height=420,
                     column_config={"own_params": st.column_config.NumberColumn(format="localized"),
                                    "total_params": st.column_config.NumberColumn(format="localized")})


def config_section(status, pipe, tab) -> None:
    with tab, _ui.section("Configuration"):
        st.markdown("**Generation defaults**")
        st.json(pipe.generation_defaults)
        for name, module in studio.pipeline_modules(pipe).items():
            module_config = getattr(module, "config", None)
            if module_config is not None and hasattr(module_config, "keys"):
                with st.expander(f"{name} config"):
                    st.json(studio.plain_config(module_config))
        pipeline_file = status.folder / "pipeline.json"
        if pipeline_file.is_file():
            with st.expander("pipeline.json"):
                st.json(json.loads(pipeline_file.read_text()))


def family_config_section(status, generator, tab) -> None:
    with tab, _ui.section("Configuration"):
        st.markdown(f"**Generation:** `load_generator(\"{status.name}\").generate(n, condition, seed"
                    + (", source=<film>" if status.kind == "translation" else "") + ")`")
        st.json({"conditions": list(generator.conditions), "default_condition": getattr(generator, "default_condition", None),
                 "image_size": generator.image_size, "generating_parameters": generator.parameters})
        with st.expander("config.json (model, data, training settings and measured training numbers)", expanded=True):
            st.json(generator.config, expanded=1)


def scheduler_section(pipe, tab) -> None:
    with tab, _ui.section("Scheduler"):
        st.markdown(f"Training noise schedule: **{type(pipe.scheduler).__name__}**; samplers built from it at call time: "
                    + ", ".join(f"`{name}` ({cls.__name__})" for name, (cls, _) in SAMPLERS.items()))
        st.json(studio.plain_config(pipe.scheduler.config))

def main() -> None:
    st.title("Model analysis")
    st.caption("Every model family in the registry: components, parameters, configuration, weights files with their "
               "sha256, model card and a layer table measured from the loaded network.")
    statuses = _ui.generator_statuses()
    # A static overview table (the interactive tables below are the selected model's).
    st.table(pd.DataFrame([{"family": s.title, "name": s.name, "kind": s.kind, "status": studio.status_label(s),
                            "weights hash": s.weights_hash or ""} for s in statuses]).set_index("family"))
    _ui.damaged_weights_banners(statuses)
    missing = [s for s in statuses if not s.available and not s.damaged]
    if missing:
        with st.expander(f"Not trained yet or unavailable ({len(missing)})", expanded=False):
            for status in missing:
                st.markdown(f"**{status.title}** (`{status.name}`): {status.reason} — train with:")
                st.code("\n".join(status.train_commands), language="bash")
    available = [s for s in statuses if s.available]
    if not available:
        _ui.model_unavailable_notice(statuses)
        return
    names = [s.name for s in available]
    active = st.session_state.get("model_family")
    name = st.selectbox("Model", names, index=names.index(active) if active in names else 0, key="models_model",
                        format_func=lambda n: next(s.title for s in available if s.name == n))
    status = next(s for s in available if s.name == name)
    st.caption(status.description)
    with _ui.section(f"Analysis of {status.name}"):
        analyse(status)


main()
