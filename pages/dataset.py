"""Dataset explorer: filter the real images, browse thumbnails, read a case, see the distributions and licences."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from pages import _ui
from xray_generator import studio
from xray_generator.io import read_gray, to_uint8

PAGE_SIZE = 24


@st.cache_data(show_spinner="Computing intensity histograms…", max_entries=16)
def cached_histograms(key: str, _manifest):
    # `key` identifies the filtered rows; the manifest itself is not hashed (it is large).
    return studio.mean_intensity_histograms(_manifest)


def filters(manifest):
    options = studio.filter_options(manifest)
    with st.container(border=True):
        first = st.columns(3)
        labels = first[0].multiselect("Finding (any of)", options["label"], key="ds_labels")
        sources = first[1].multiselect("Source", options["source"], key="ds_sources")
        splits = first[2].multiselect("Split", options["split"], key="ds_splits")
        second = st.columns([1, 1, 2, 1])
        views = second[0].multiselect("View", options["view"], key="ds_views")
        sexes = second[1].multiselect("Sex", options["sex"], key="ds_sexes")
        low, high = options["age"]
        ages = second[2].slider("Age", low, max(high, low + 1), (low, max(high, low + 1)), key="ds_age")
        unknown_age = second[3].checkbox("Include unknown age", value=True, key="ds_unknown_age")
    age_range = None if ages == (low, max(high, low + 1)) and unknown_age else ages
    return studio.filter_manifest(manifest, labels, sources, views, splits, sexes, age_range, unknown_age)


def thumbnail_grid(filtered) -> None:
    table = filtered.table
    pages = max(1, -(-len(table) // PAGE_SIZE))
    signature = hashlib.sha1("|".join(table["image_id"]).encode()).hexdigest()[:8]
    # A new key per result set, so changing a filter starts again at page 1.
    page = st.pagination(pages, key=f"ds_page_{signature}") if pages > 1 else 1
    rows = table.iloc[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    st.caption(f"Page {page} of {pages} · images {(page - 1) * PAGE_SIZE + 1}–{(page - 1) * PAGE_SIZE + len(rows)} of {len(table)}")
    thumbs, captions = [], []
    for row in rows.itertuples(index=False):
        try:
            thumbs.append(_ui.thumbnail(str(filtered.root / row.file)))
        except OSError:
            thumbs.append(np.zeros((128, 128), np.uint8))
        if row.split == "synthetic":  # a generated film registered by generate-dataset --index-url
            captions.append(f"SYNTHETIC · {row.source.removeprefix('synthetic:')}")
            continue
        captions.append(f"{row.image_id[:20]} · {studio.finding_caption(row.labels)}")
    st.image(thumbs, caption=captions, width=128)

    st.subheader("Case detail")
    image_id = st.selectbox("Image on this page", rows["image_id"].tolist(), key=f"ds_detail_{signature}_{page}")
    if image_id is None:
        return
    row = rows.loc[rows["image_id"] == image_id].iloc[0]
    left, right = st.columns([1, 2])
    with left:
        try:
            image = read_gray(filtered.root / row["file"])
            kind = "SYNTHETIC (generated; research use only)" if studio.is_synthetic_row(row) else "REAL"
            st.image(to_uint8(image), caption=f"{kind} · {image_id} · {image.shape[1]}×{image.shape[0]} px", width="stretch")
        except (OSError, ValueError) as exc:
            st.error(f"Cannot read {row['file']}: {exc}")
    with right:
        st.markdown(f"**Findings:** {row['labels'] if isinstance(row['labels'], str) else '(no label)'}")
        note = row["report"] if isinstance(row["report"], str) and row["report"].strip() else "(no clinical note)"
        st.markdown(f"**Clinical note** ({row['report_kind'] if isinstance(row['report_kind'], str) else 'unknown kind'}):")
        st.text(note)
        fields = {k: ("unknown" if pd.isna(row[k]) else str(row[k]))
                  for k in ("source", "source_repo", "license", "patient_id", "view", "sex", "age", "split", "native_px", "file")}
        st.dataframe([{"field": k, "value": v} for k, v in fields.items()], hide_index=True, width="stretch")


def charts(filtered) -> None:
    distribution = studio.label_distribution(filtered)
    order = distribution.groupby("label")["images"].sum().sort_values(ascending=False).index.tolist()
    figure = px.bar(distribution, x="label", y="images", color="split", facet_col="source", barmode="group",
                    category_orders={"split": ["train", "val", "test"], "label": order}, height=440,
                    title="Findings per source and split", color_discrete_sequence=px.colors.qualitative.Set2)
    # Each source gets its own x axis: the sources share few labels, and a shared axis would be mostly empty.
    figure.update_xaxes(matches=None, tickangle=45, title=None)
    figure.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    st.plotly_chart(figure, key="ds_label_distribution")

    scope = st.columns(2)
    scope_source = scope[0].selectbox("Co-occurrence for source", ["(all)"] + sorted(filtered.table["source"].unique()), key="ds_co_source")
    scope_split = scope[1].selectbox("and split", ["(all)", "train", "val", "test"], key="ds_co_split")
    scoped = filtered.query(source=None if scope_source == "(all)" else scope_source,
                            split=None if scope_split == "(all)" else scope_split)
    matrix = studio.label_cooccurrence(scoped)
    if matrix.empty:
        st.info("No labelled images in this selection.")
    else:
        heat = px.imshow(matrix, text_auto=True, aspect="auto", color_continuous_scale="Blues",
                         title="Label co-occurrence (images carrying both labels; diagonal: images with the label)",
                         height=180 + 28 * len(matrix))
        st.plotly_chart(heat, key="ds_cooccurrence")

    key = hashlib.sha1(("|".join(filtered.table["image_id"]) + str(filtered.root)).encode()).hexdigest()
    histograms = cached_histograms(key, filtered)
    if histograms.empty:
        st.info("No readable images for histograms.")
    else:
        counts = histograms.groupby("source")["images"].first()
        histograms = histograms.assign(source=histograms["source"].map(lambda s: f"{s} (n={counts[s]})"))
        line = px.line(histograms, x="intensity", y="density", color="source", height=380,
                       title="Mean intensity histogram per source", color_discrete_sequence=px.colors.qualitative.Set2)
        st.plotly_chart(line, key="ds_histograms")
        st.caption("Each curve averages the normalised histograms of a seeded sample of up to 40 images of that source.")


def main() -> None:
    st.title("Dataset explorer")
    manifest, message = _ui.dataset()
    if manifest is None:
        st.warning(message)
        return
    st.caption(f"{len(manifest):,} real, de-identified images from {manifest.root}. Research use only.")
    if (url := studio.index_url()) and st.checkbox("Also show the generated films registered in the index", key="ds_generated",
                                                   help=f"{studio.INDEX_URL_ENV}: films registered by generate-dataset --index-url; "
                                                        "filter them by split 'synthetic' or source 'synthetic:<model>'."):
        try:
            manifest = studio.with_generated_films(manifest, url)
        except RuntimeError as exc:  # IndexConnectionError: the message says what is wrong
            st.warning(str(exc))
    filtered = filters(manifest)
    counts = st.columns(4)
    counts[0].metric("Images", f"{len(filtered):,}")
    counts[1].metric("Patients", f"{filtered.table['patient_id'].nunique():,}")
    counts[2].metric("Sources", filtered.table["source"].nunique())
    counts[3].metric("With clinical note", f"{int(filtered.table['report'].notna().sum()):,}")
    if len(filtered) == 0:
        st.info("No image matches these filters.")
        return
    # Tabs that track state run only the open one: the charts cost seconds that a thumbnail browse should not pay.
    grid, distributions, licences = st.tabs(["Thumbnails", "Distributions", "Licences"], key="ds_tab", on_change="rerun")
    if grid.open:
        with grid, _ui.section("Thumbnail grid"):
            thumbnail_grid(filtered)
    if distributions.open:
        with distributions, _ui.section("Distributions"):
            charts(filtered)
    if licences.open:
        with licences, _ui.section("Licences"):
            st.dataframe(studio.source_licence_table(filtered), hide_index=True, width="stretch")
            st.dataframe(studio.source_summary(filtered), hide_index=True, width="stretch")
            st.caption("Each image keeps the licence of its source; credit each source as its row says. "
                       "See the dataset card and the About this data page.")

main()
