"""Model analysis: components, parameters, memory, configs, weights files and measured layer tables."""
from __future__ import annotations

import json

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
    components = studio.components_table(pipe)
    trained = components.loc[components["role"] == "trained here", "parameters"].sum()
    columns = st.columns(4)
    columns[0].metric("Parameters (all)", f"{components['parameters'].sum() / 1e6:.2f} M")
    columns[1].metric("Trained here", f"{trained / 1e6:.2f} M")
    columns[2].metric("Weights in memory", f"{components['memory_mb'].sum():.0f} MB")
    rss = studio.process_memory_mb()
    columns[3].metric("Process memory", f"{rss:.0f} MB" if rss else "n/a", help="Resident memory of the whole studio process.")
    st.dataframe(components, hide_index=True, width="stretch",
                 column_config={"parameters": st.column_config.NumberColumn(format="localized"),
                                "memory_mb": st.column_config.NumberColumn("memory (MB)", format="%.1f")})
    layers, config, scheduler, files, card = st.tabs(["Layers", "Configuration", "Scheduler", "Weights files", "Model card"],
                                                     key=f"models_tab_{status.name}", on_change="rerun")
    if layers.open:
        layer_section(status, pipe, layers)
    if config.open:
        config_section(status, pipe, config)
    if scheduler.open:
        scheduler_section(pipe, scheduler)
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


def scheduler_section(pipe, tab) -> None:
    with tab, _ui.section("Scheduler"):
        st.markdown(f"Training noise schedule: **{type(pipe.scheduler).__name__}**; samplers built from it at call time: "
                    + ", ".join(f"`{name}` ({cls.__name__})" for name, (cls, _) in SAMPLERS.items()))
        st.json(studio.plain_config(pipe.scheduler.config))

def main() -> None:
    st.title("Model analysis")
    statuses = _ui.generator_statuses()
    available = [s for s in statuses if s.available]
    for status in statuses:
        if not status.available:
            st.caption(f"**{status.title}** ({status.name}): unavailable, {status.reason}.")
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
