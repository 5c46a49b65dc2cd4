"""Metrics dashboard: reads outputs/metrics/*.json only, and training loss logs; computes nothing itself."""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from pages import _ui
from xray_generator import studio

FLOOR = "real vs real (floor)"


def comparison_chart(table: pd.DataFrame, family: str):
    """One panel per metric; every model on the same axes with its CI, and the real-vs-real floor beside them."""
    rows = []
    for row in table.itertuples(index=False):
        rows.append({"metric": row.metric, "who": row.model, "value": row.value,
                     "plus": (row.ci_high - row.value) if pd.notna(row.ci_high) else None,
                     "minus": (row.value - row.ci_low) if pd.notna(row.ci_low) else None, "n": row.n})
        if pd.notna(row.floor):
            rows.append({"metric": row.metric, "who": FLOOR, "value": row.floor, "plus": None, "minus": None, "n": row.floor_n})
    long = pd.DataFrame(rows).drop_duplicates(subset=["metric", "who"])
    figure = px.scatter(long, x="who", y="value", color="who", error_y="plus", error_y_minus="minus", facet_col="metric",
                        facet_col_wrap=4, hover_data=["n"], height=340 if long["metric"].nunique() <= 4 else 620,
                        title=f"{family}: models on the same axes (bars: CI; grey: real-vs-real floor)",
                        color_discrete_map={FLOOR: "grey"})
    figure.update_yaxes(matches=None, showticklabels=True)
    figure.update_xaxes(title=None, tickangle=-30)  # several models per panel: slanted names do not overlap
    figure.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    figure.update_traces(marker=dict(size=11))
    return figure


def metrics_section(statuses) -> None:
    documents, problems = studio.load_metrics_files()
    for problem in problems:
        st.warning(f"Metrics file skipped, it does not follow the schema: {problem}")
    folder = studio.metrics_dir()
    have = {doc["model"] for doc in documents}
    # Metrics can be produced for the families with weights; the others need training first.
    trained = [s for s in statuses if s.available]
    untrained = [s.name for s in statuses if not s.available and not s.damaged and s.name not in have]
    if not documents:
        commands = "\n".join(studio.METRICS_COMMAND.format(model=s.name) for s in trained) or studio.METRICS_COMMAND.format(model="ldm")
        st.info(f"Metrics not yet produced: there is no metrics file in `{folder}`. Produce them with:")
        st.code(commands, language="bash")
        if untrained:
            st.caption(f"Not trained yet, so no metrics: {', '.join(untrained)} (Model analysis lists how to train each).")
        return
    for status in trained:
        if status.name not in have:
            st.caption(f"{status.name}: metrics not yet produced (`{studio.METRICS_COMMAND.format(model=status.name)}`).")
    if untrained:
        st.caption(f"Not trained yet, so no metrics: {', '.join(untrained)} (Model analysis lists how to train each).")
    table = studio.metrics_table(documents)
    table["family"] = table["metric"].map(studio.metric_family)
    st.subheader("Models compared")
    for family in [f for f in list(studio.METRIC_FAMILIES) + ["Other"] if f in set(table["family"])]:
        with _ui.section(f"{family} chart"):
            st.plotly_chart(comparison_chart(table[table["family"] == family], family), key=f"metrics_{family}")
    spectra = studio.power_spectra(documents)
    if not spectra.empty:
        with _ui.section("Power spectrum"):
            figure = px.line(spectra, x="frequency", y="log10_power", color="set", log_x=True, height=380,
                             labels={"frequency": "spatial frequency (cycles per pixel)", "log10_power": "mean log10 power"},
                             title="Radially averaged power spectrum, real vs synthetic (from the realism files)")
            st.plotly_chart(figure, key="metrics_spectrum")
            st.caption("Synthetic images are the raw generator output. A set below the real curve at high frequencies "
                       "lacks fine structure (film texture, vessel edges, trabeculae).")
    cues = studio.realism_cues(documents)
    if not cues.empty:
        with _ui.section("What gives a set away"):
            cues = cues.assign(plus=cues["ci_high"] - cues["accuracy"], minus=cues["accuracy"] - cues["ci_low"])
            figure = px.bar(cues, x="cue", y="accuracy", color="set", barmode="group", error_y="plus", error_y_minus="minus",
                            hover_data=["n", "floor"], height=380, range_y=[0.4, 1.0],
                            title="Realism test on each feature kind alone (0.5: indistinguishable; bars: 95 % CI)")
            st.plotly_chart(figure, key="metrics_realism_cues")
            st.caption("Each kind of feature judged alone, with the same classifiers and folds as the test. The real-vs-real "
                       "floor of each is in the hover. The kind nearest 1.0 is what a generator must fix first.")
    st.subheader("Per model")
    for doc in documents:
        rows = table[table["model"] == doc["model"]]
        with st.expander(f"{doc['model']} · weights {doc.get('weights_sha256') or 'none (real-data baseline)'} · {doc['date']}", expanded=len(documents) == 1):
            st.dataframe(rows[["family", "metric", "value", "n", "ci", "floor", "floor_n", "floor_method"]],
                         hide_index=True, width="stretch",
                         column_config={"value": st.column_config.NumberColumn(format="%.4g"),
                                        "floor": st.column_config.NumberColumn("real-vs-real floor", format="%.4g")})
            st.caption(f"File {doc['_file']} · git commit {doc.get('git_commit') or 'unknown'}")
            st.json(doc.get("settings", {}), expanded=False)


def training_section(statuses) -> None:
    st.subheader("Training loss curves")
    logs = studio.find_training_logs([s.name for s in statuses])
    if not logs:
        st.info("No training logs found. Looked in `outputs/metrics/*log*.csv`, `weights/<model>/training_log.csv` and "
                "`outputs/runs/<model>/log.csv`.")
        return
    choice = st.selectbox("Log", range(len(logs)), key="metrics_log",
                          format_func=lambda i: f"{logs[i].model} · {logs[i].path} ({len(logs[i].table)} rows)")
    log = logs[choice]
    columns = studio.loss_columns(log.table)
    default = [c for c in columns if c == "loss" or c.startswith("val")] or columns[:1]
    chosen = st.multiselect("Series", columns, default=default, key=f"metrics_series_{choice}")
    log_y = st.toggle("Logarithmic y axis", key="metrics_log_y")
    if chosen:
        long = log.table[["step", *chosen]].melt(id_vars="step", var_name="series", value_name="value").dropna()
        figure = px.line(long, x="step", y="value", color="series", markers=len(log.table) < 50, log_y=log_y, height=380,
                         title=f"{log.model}: {', '.join(chosen)} by step")
        st.plotly_chart(figure, key="metrics_loss")
    last = log.table.iloc[-1]
    st.caption(f"Last logged step {int(last['step'])}" + (f" after {last['wall_seconds'] / 3600:.2f} h" if "wall_seconds" in log.table else ""))


def main() -> None:
    st.title("Metrics dashboard")
    st.caption("Every number comes from outputs/metrics/<model>.json with its n, confidence interval and the real-vs-real floor.")
    statuses = _ui.generator_statuses()
    with _ui.section("Metrics"):
        metrics_section(statuses)
    with _ui.section("Training logs"):
        training_section(statuses)


main()
