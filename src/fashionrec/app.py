"""The web app: find look-alikes of a photo, a camera shot or a catalog product (Streamlit).

Started by `fashionrec app INDEX_DIR`, which runs `streamlit run app.py -- INDEX_DIR`. The page is a
thin surface over `Recommender`: the index is opened once per process and shared by every session;
catalog images are read from the catalog's zip or folder on demand, never unpacked.
"""

from __future__ import annotations

import io
import random
import sys
import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st
from PIL import Image, ImageColor, ImageDraw
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from wordcloud import STOPWORDS, WordCloud

from fashionrec.images import Box, ImageError, web_image
from fashionrec.search import Match, Recommender
from fashionrec.search import Query as SearchQuery

# Metadata columns offered as filters, with the labels a shopper reads; only those in the index are shown.
FACETS = {
    "gender": "Gender",
    "masterCategory": "Category",
    "subCategory": "Subcategory",
    "articleType": "Type",
    "baseColour": "Colour",
    "season": "Season",
    "usage": "Usage",
}
NAME = "productDisplayName"
CARD_FACETS = ("articleType", "baseColour", "gender")
UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"]
GRID_COLUMNS = 5
FOUND_LIMIT = 100  # products listed for a name search
HISTORY = 50  # queries the back button remembers
MAP_SAMPLE = 3000  # t-SNE of 3000 items takes ~20 s on 2 busy cores, once per index and process
MODES = {
    "upload": ":material/upload: Upload a photo",
    "camera": ":material/photo_camera: Take a photo",
    "catalog": ":material/search: Catalog product",
    "random": ":material/casino: Surprise me",
}


@dataclass(frozen=True)
class Query:
    """What the shopper wants look-alikes of: a catalog product, or an image of their own."""

    title: str
    item_id: str | None = None
    image: bytes | None = None  # what the page shows of a shopper's photo (8-bit, at most 1024 px)
    upload: bytes | None = None  # the photo as sent, embedded again when the shopper frames a part of it
    crop: Box | None = None
    cut_out: bool = False  # the garment cut out of the scene (garment.py) before searching
    embedding: SearchQuery | None = None  # an image's vector and colour; None for a catalog product


def index_dir() -> str:
    """The index directory, passed after `--` on the `streamlit run` command line."""
    if len(sys.argv) < 2:
        st.error("Start the app with `fashionrec app INDEX_DIR`.")
        st.stop()
    return sys.argv[1]


@st.cache_resource(show_spinner="Opening the index...")
def open_recommender(path: str) -> Recommender:
    """One Recommender per process, its encoder loaded up front so the first upload is fast too."""
    recommender = Recommender.open(path)
    _ = recommender.encoder
    return recommender


def recommender() -> Recommender:
    return open_recommender(index_dir())


@st.cache_data(show_spinner=False)
def facet_values(path: str) -> dict[str, list[str]]:
    """The values of each filter column present in the index, sorted."""
    metadata = open_recommender(path).metadata
    return {
        column: sorted(v for v in metadata[column].dropna().unique() if v)
        for column in FACETS
        if column in metadata.columns
    }


# ---- session state: the current query and the way back -------------------------------------------


def set_query(query: Query) -> None:
    """Make `query` current; the previous one goes on the history for the back button."""
    if st.session_state.query is not None:
        st.session_state.history = [*st.session_state.history, st.session_state.query][-HISTORY:]
    st.session_state.query = query
    st.session_state.image_error = None


def go_back() -> None:
    st.session_state.query = st.session_state.history.pop()


def query_item(item_id: str) -> None:
    set_query(Query(title=recommender().item(item_id).metadata.get(NAME, item_id), item_id=item_id))


def query_random_item() -> None:
    items = recommender().items
    query_item(random.choice(items).id)


def query_image(widget_key: str) -> None:
    """Embed an uploaded or camera image once; a bad file becomes a message in the page, not a traceback."""
    file = st.session_state[widget_key]
    if file is None:
        return
    data = file.getvalue()
    try:
        embedding = recommender().embed_image(data)
        shown, _ = web_image(data, file.name)  # 8-bit RGB, whatever was uploaded: a 16-bit PNG would crash st.image
    except ImageError as error:
        st.session_state.image_error = (
            f"We couldn't use **{file.name}**: {error.reason}. Try a JPEG, PNG or WebP photo."
        )
        return
    set_query(Query(title="Your photo", image=shown, upload=data, embedding=embedding))


def refine_photo_query() -> None:
    """Search the part of the shopper's photo that the two sliders frame (the whole photo: no crop), with its
    garment cut out of the scene when the shopper asks for it."""
    query = st.session_state.query
    (left, right), (top, bottom) = st.session_state.crop_across, st.session_state.crop_down
    box = (left / 100, top / 100, right / 100, bottom / 100)
    crop = None if box == (0.0, 0.0, 1.0, 1.0) else box
    isolate = "u2netp" if st.session_state.cut_out else "none"
    try:
        embedding = recommender().embed_image(query.upload, crop, isolate)
    except (ImageError, ValueError) as error:
        st.session_state.image_error = f"We couldn't search that part of the photo: {error}."
        return
    st.session_state.image_error = None
    st.session_state.query = replace(query, crop=crop, cut_out=isolate != "none", embedding=embedding)


def framed(image: bytes, crop: Box | None) -> bytes | Image.Image:
    """The shown photo with the searched part outlined (the photo itself when all of it is searched)."""
    if crop is None:
        return image
    picture = Image.open(io.BytesIO(image)).convert("RGB")
    box = [crop[0] * picture.width, crop[1] * picture.height, crop[2] * picture.width, crop[3] * picture.height]
    ImageDraw.Draw(picture).rectangle(box, outline=(230, 30, 90), width=max(2, max(picture.size) // 150))
    return picture


def query_typed_product() -> None:
    """An exact id, or a name matching one product only, becomes the query at once."""
    found = find_products(recommender(), st.session_state.product_text)
    if len(found) == 1:
        query_item(found[0])


def query_picked_product() -> None:
    if st.session_state.picked_product is not None:
        query_item(st.session_state.picked_product)


def find_products(recommender: Recommender, text: str, limit: int = FOUND_LIMIT) -> list[str]:
    """Ids of the products whose id is `text`, or whose name holds every word of it."""
    text = text.strip()
    if not text:
        return []
    if text in recommender.positions:
        return [text]
    if NAME not in recommender.metadata.columns:
        return []
    names = recommender.metadata[NAME].str.lower()
    mask = np.ones(len(names), dtype=bool)
    for word in text.lower().split():
        mask &= names.str.contains(word, regex=False).to_numpy(dtype=bool, na_value=False)
    return [recommender.items[p].id for p in np.flatnonzero(mask)[:limit]]


def search(query: Query, k: int, filters: dict[str, list[str]], colour_weight: float, diversity: float) -> list[Match]:
    if query.item_id is not None:
        return recommender().similar_to_item(query.item_id, k, filters, colour_weight, diversity=diversity)
    assert query.embedding is not None
    embedding = replace(query.embedding, colour_weight=colour_weight)
    return recommender().similar(embedding, k, filters, diversity=diversity)


# ---- page pieces ---------------------------------------------------------------------------------


def product_image(item_id: str) -> None:
    """The product's picture as a browser shows it (see images.web_image), or a line saying it is missing."""
    try:
        shown, _ = web_image(recommender().image_bytes(item_id), f"item {item_id}")
    except (FileNotFoundError, ImageError):
        st.caption(":material/image_not_supported: image not available")
        return
    st.image(shown, width="stretch")


Card = tuple[str, dict[str, str], float | None, tuple[str, ...]]  # id, metadata, score, variant ids


def product_card(
    item_id: str, metadata: dict[str, str], score: float | None, variants: tuple[str, ...], key: str
) -> bool:
    """A product as a shop shows it: picture, name, main attributes, its other listings, and a way to see more
    like it.

    Returns whether "More like this" was clicked (the click has already made it the query).
    """
    with st.container(border=True, height="stretch"):
        product_image(item_id)
        st.markdown(f"**{metadata.get(NAME, item_id)}**")
        attributes = " · ".join(metadata[c] for c in CARD_FACETS if metadata.get(c))
        st.caption(attributes if score is None else f"{attributes}  \nSimilarity **{score:.2f}** · #{item_id}")
        if variants:  # the same product under other ids: shown once (search collapse)
            more = f"{len(variants)} more listing{'s' if len(variants) > 1 else ''}"
            st.caption(f":material/layers: {more}: #{', #'.join(variants)}")
        return st.button(
            "More like this",
            key=f"{key}-{item_id}",
            icon=":material/auto_awesome:",
            on_click=query_item,
            args=(item_id,),
            width="stretch",
        )


def product_grid(cards: list[Card], key: str) -> None:
    for start in range(0, len(cards), GRID_COLUMNS):
        for column, (item_id, metadata, score, variants) in zip(
            st.columns(GRID_COLUMNS), cards[start : start + GRID_COLUMNS], strict=False
        ):
            with column:
                product_card(item_id, metadata, score, variants, key)


def show_query(query: Query) -> None:
    picture, details = st.columns([1, 3], vertical_alignment="center")
    with picture:
        if query.item_id is None:
            st.image(framed(query.image, query.crop), width="stretch")
        else:
            product_image(query.item_id)
    with details:
        st.caption("Looking for products like")
        st.subheader(query.title, anchor=False)
        if query.item_id is not None:
            metadata = recommender().item(query.item_id).metadata
            badges = [f":gray-badge[{FACETS[c]}: {metadata[c]}]" for c in FACETS if metadata.get(c)]
            st.markdown(" ".join(badges) + f" :gray-badge[#{query.item_id}]")
        if query.upload is not None:
            refined = query.crop is not None or query.cut_out
            with st.expander("Search part of the photo", icon=":material/crop:", expanded=refined):
                left, top, right, bottom = (round(100 * v) for v in query.crop or (0, 0, 1, 1))
                st.slider("Left to right (%)", 0, 100, (left, right), key="crop_across", on_change=refine_photo_query)
                st.slider("Top to bottom (%)", 0, 100, (top, bottom), key="crop_down", on_change=refine_photo_query)
                st.checkbox(
                    "Cut the garment out of a busy scene",
                    value=query.cut_out,
                    key="cut_out",
                    on_change=refine_photo_query,
                    help="For a garment worn, on a bed or on the floor. Not for product shots on a plain background.",
                )
        st.button(
            "Back",
            icon=":material/arrow_back:",
            disabled=not st.session_state.history,
            on_click=go_back,
            key="back",
        )


def sidebar_query_controls() -> None:
    """The ways to ask: upload, camera, catalog search, random product."""
    st.sidebar.title(":material/apparel: fashionrec", anchor=False)
    st.sidebar.caption(f"Visual search over {len(recommender()):,} products")
    mode = st.sidebar.radio("Find look-alikes of", list(MODES), format_func=MODES.get, key="mode")
    if mode == "upload":
        st.sidebar.file_uploader(
            "A photo of a garment", type=UPLOAD_TYPES, key="upload", on_change=query_image, args=("upload",)
        )
    elif mode == "camera":
        st.sidebar.camera_input("Take a photo", key="camera", on_change=query_image, args=("camera",))
    elif mode == "catalog":
        text = st.sidebar.text_input(
            "Product id or name",
            placeholder="15970, or: blue denim jacket",
            key="product_text",
            on_change=query_typed_product,
        )
        found = find_products(recommender(), text)
        if text.strip() and not found:
            st.sidebar.caption("No product matches.")
        elif len(found) > 1:
            st.sidebar.selectbox(
                f"{len(found)}{'+' if len(found) == FOUND_LIMIT else ''} matching products",
                found,
                index=None,
                format_func=lambda i: f"{recommender().item(i).metadata.get(NAME, i)} · #{i}",
                placeholder="Choose a product",
                key="picked_product",
                on_change=query_picked_product,
            )
    else:
        st.sidebar.button("Show me a random product", icon=":material/casino:", on_click=query_random_item)


def sidebar_search_settings() -> tuple[int, dict[str, list[str]], float, float]:
    """How many results, the filters applied inside the search, how much colour counts, and how varied."""
    k = st.sidebar.slider("Number of results", 1, 20, 5, key="k")
    filters: dict[str, list[str]] = {}
    with st.sidebar.expander("Filters", icon=":material/filter_list:", expanded=False):
        for column, values in facet_values(index_dir()).items():
            chosen = st.multiselect(FACETS[column], values, key=f"filter-{column}", placeholder="Any")
            if chosen:
                filters[column] = chosen
    colour_weight = st.sidebar.slider(
        "Colour weight", 0.0, 1.0, 0.0, 0.05, key="colour_weight",
        help="0: shape only. Higher: products of the same colours come first (among the 100 closest shapes).",
    )  # fmt: skip
    diversity = st.sidebar.slider(
        "Variety", 0.0, 1.0, 0.0, 0.05, key="diversity",
        help="0: the closest products. Higher: results that differ more from each other (among the 50 closest).",
    )  # fmt: skip
    return k, filters, colour_weight, diversity


def init_state() -> None:
    """The session's query state, before any widget callback of either page can use it."""
    st.session_state.setdefault("query", None)
    st.session_state.setdefault("history", [])
    st.session_state.setdefault("image_error", None)


def find_page() -> None:
    init_state()
    sidebar_query_controls()
    k, filters, colour_weight, diversity = sidebar_search_settings()
    if st.session_state.image_error:
        st.error(st.session_state.image_error, icon=":material/error:")

    query = st.session_state.query
    if query is None:
        st.title("Find your look-alike", anchor=False)
        st.write(
            "Upload a photo of a garment, take one with your camera, or pick a product of the catalog: "
            "we show you the most similar products. Or start from one of these:"
        )
        picks = st.session_state.setdefault(
            "picks", random.sample(recommender().items, min(GRID_COLUMNS, len(recommender())))
        )
        product_grid([(item.id, item.metadata, None, ()) for item in picks], key="pick")
        return

    show_query(query)
    started = time.perf_counter()
    matches = search(query, k, filters, colour_weight, diversity)
    took_ms = (time.perf_counter() - started) * 1000
    st.subheader("Similar products", anchor=False)
    shown_filters = "; ".join(f"{FACETS[c]}: {', '.join(v)}" for c, v in filters.items())
    st.caption(f"{len(matches)} results in {took_ms:.0f} ms" + (f" · {shown_filters}" if shown_filters else ""))
    if not matches:
        st.info("No product matches these filters. Remove a filter to see more.", icon=":material/filter_alt_off:")
    product_grid([(m.id, m.metadata, m.score, m.variants) for m in matches], key="result")


# ---- explore page --------------------------------------------------------------------------------


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


@st.cache_data(show_spinner="Mapping the catalog (t-SNE, once per index; about 20 s)...")
def embedding_map(path: str, sample: int = MAP_SAMPLE) -> pd.DataFrame:
    """2-D t-SNE positions of a fixed sample of items (after PCA to 50), with their metadata."""
    recommender = open_recommender(path)
    positions = np.sort(np.random.default_rng(0).permutation(len(recommender))[:sample])
    vectors = recommender.store.vectors([recommender.items[p].id for p in positions])
    reduced = PCA(n_components=min(50, *vectors.shape), random_state=0).fit_transform(vectors)
    xy = TSNE(
        n_components=2, init="pca", perplexity=min(30.0, len(positions) / 4), max_iter=500, random_state=0
    ).fit_transform(reduced)
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


def explore_page() -> None:
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
    st.caption(
        f"Each dot is a product (a sample of up to {MAP_SAMPLE:,}); products that look alike sit together. "
        "Hover a dot to see it, click it to open it."
    )
    points = embedding_map(path)
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
                st.switch_page(PAGES["find"])


def page_icon() -> Image.Image:
    """A T-shirt, drawn here: a `:material/...:` page icon makes the browser fetch it from fonts.gstatic.com."""
    icon = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    shirt = [(20, 8), (44, 8), (62, 22), (54, 32), (48, 28), (48, 60), (16, 60), (16, 28), (10, 32), (2, 22)]
    ImageDraw.Draw(icon).polygon(shirt, fill="#d6336c")
    return icon


def main() -> None:
    st.set_page_config(page_title="fashionrec: find similar products", page_icon=page_icon(), layout="wide")
    st.navigation(list(PAGES.values()), position="top").run()


PAGES = {
    "find": st.Page(find_page, title="Find similar", icon=":material/search:", default=True),
    "explore": st.Page(explore_page, title="Explore the catalog", icon=":material/insights:"),
}

if __name__ == "__main__":
    main()
