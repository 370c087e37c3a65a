"""The explore page: what the catalog holds, in counts, words and a map of look-alikes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st
from PIL import Image, ImageColor
from streamlit.navigation.page import StreamlitPage
from wordcloud import STOPWORDS, WordCloud

from fashionrec.app import find_page
from fashionrec.app.state import FACETS, NAME, index_dir, init_state, open_recommender, recommender
from fashionrec.app.widgets import CARD_FACETS, product_card
from fashionrec.explore import MAP_SAMPLE, layout, read_map, sample_positions


def css_colour(name: str) -> str:
    """The CSS colour of a catalog colour name: 'Sea Green' -> seagreen, 'Navy Blue' -> navy, else grey."""
    words = name.lower().split()
    for candidate in ("".join(words), *words[:1], *words[-1:]):
        try:
            ImageColor.getrgb(candidate)
        except ValueError:
            continue
        return candidate
    return "#b0b0b0"


@st.cache_data(show_spinner="Drawing the word cloud...")
def name_cloud(path: str) -> Image.Image:
    metadata = open_recommender(path).metadata
    genders = set(metadata["gender"].dropna().str.lower()) if "gender" in metadata.columns else set()
    cloud = WordCloud(
        width=1400,
        height=420,
        background_color="white",
        colormap="tab20b",
        collocations=False,
        stopwords=STOPWORDS | genders | {"men", "women"},  # every name says its gender: it would fill the cloud
    )
    names = metadata[NAME].dropna()
    return cloud.generate(" ".join(names)).to_image()


@st.cache_data(show_spinner="Opening the map of the catalog...")
def embedding_map(path: str) -> pd.DataFrame:
    """2-D t-SNE positions of a fixed sample of items, with their metadata: the map `fashionrec index` stored
    (its products still in the index), else computed now (explore.layout, ~40 s for 3,000 products)."""
    recommender = open_recommender(path)
    stored = read_map(path)
    if stored is not None:
        known = recommender.positions
        kept = [(known[i], x, y) for i, x, y in zip(stored["ids"], stored["x"], stored["y"], strict=True) if i in known]
        positions = np.array([p for p, _, _ in kept], dtype=np.int64)
        xy = np.array([(x, y) for _, x, y in kept]).reshape(-1, 2)
    else:
        positions = sample_positions(len(recommender))
        with st.spinner(f"Mapping the catalog (t-SNE of {len(positions):,} products, once per process)..."):
            xy = layout(recommender.store.vectors([recommender.items[p].id for p in positions]))
    frame = recommender.metadata.iloc[positions].reset_index(drop=True).fillna("")
    frame.insert(0, "id", [recommender.items[p].id for p in positions])
    frame["x"], frame["y"] = xy[:, 0], xy[:, 1]
    return frame


def bar_chart(counts: pd.Series, title: str, colours: list[str] | None = None) -> None:
    figure = px.bar(x=counts.to_numpy(), y=counts.index, orientation="h", title=title)
    figure.update_traces(marker_color=colours or "#d6336c", marker_line_color="#888", marker_line_width=0.5)
    figure.update_layout(
        yaxis={"autorange": "reversed", "title": None}, xaxis_title="products", height=460, margin={"l": 0, "r": 0}
    )
    st.plotly_chart(figure, width="stretch")


def render() -> None:
    init_state()
    path = index_dir()
    metadata = recommender().metadata
    st.title("Explore the catalog", anchor=False)
    present = [c for c in FACETS if c in metadata.columns]
    metrics = st.columns(1 + len(present[:4]))
    metrics[0].metric("Products", f"{len(metadata):,}")
    for column, facet in zip(metrics[1:], present[:4], strict=False):
        column.metric(f"{FACETS[facet]} values", metadata[facet].nunique())

    left, right = st.columns(2)
    with left:
        if "articleType" in metadata.columns:
            bar_chart(metadata["articleType"].value_counts().head(20), "Top 20 product types")
    with right:
        if "baseColour" in metadata.columns:
            counts = metadata["baseColour"].value_counts().head(20)
            bar_chart(counts, "Top 20 colours", [css_colour(c) for c in counts.index])

    if NAME in metadata.columns:
        st.subheader("What the products are called", anchor=False)
        st.image(name_cloud(path), width="stretch")

    st.subheader("The map of the catalog", anchor=False)
    points = embedding_map(path)
    st.caption(
        f"Each dot is a product ({len(points):,} of them, a sample of up to {MAP_SAMPLE:,}); products that look "
        "alike sit together. Hover a dot to see it, click it to open it."
    )
    colour_by = None
    if present:
        default = present.index("masterCategory") if "masterCategory" in present else 0
        colour_by = st.selectbox("Colour by", present, default, format_func=FACETS.get, key="map_colour", width=320)
    figure = px.scatter(
        points,
        x="x",
        y="y",
        color=colour_by,
        hover_name=NAME if NAME in points else "id",
        hover_data={c: True for c in ("id", *CARD_FACETS) if c in points} | {"x": False, "y": False},
        custom_data=["id"],
        labels=FACETS | {"id": "Id"},
        height=640,
    )
    figure.update_traces(marker={"size": 6, "opacity": 0.8})
    figure.update_layout(xaxis={"visible": False}, yaxis={"visible": False}, legend_title_text=None)
    chart, side = st.columns([4, 1])
    with chart:
        event = st.plotly_chart(figure, width="stretch", on_select="rerun", selection_mode="points", key="map")
    selected = [p["customdata"][0] for p in event.selection.points] if event else []
    with side:
        if not selected:
            st.info("Click a dot to see its product here.", icon=":material/touch_app:")
        else:
            item = recommender().item(selected[0])
            if product_card(item.id, item.metadata, None, (), key="map"):
                st.switch_page(find_page.page())


def page() -> StreamlitPage:
    """This page for st.navigation (see find_page.page)."""
    return st.Page(render, title="Explore the catalog", icon=":material/insights:", url_path="explore")
