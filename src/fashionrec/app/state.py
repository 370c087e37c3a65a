"""The app's state: the index opened once per process, the shopper's query and the way back.

Every page reads and changes the query through these functions (widget callbacks), so the pages stay
layout only; the searches themselves are `Recommender` calls, as in the CLI and the API.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, replace

import numpy as np
import streamlit as st

from fashionrec.garment import Region
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
FOUND_LIMIT = 100  # products listed for a name search
HISTORY = 50  # queries the back button remembers


@dataclass(frozen=True)
class Query:
    """What the shopper wants look-alikes of: a catalog product, or an image of their own."""

    title: str
    item_id: str | None = None
    image: bytes | None = None  # what the page shows of a shopper's photo (8-bit, at most 1024 px)
    upload: bytes | None = None  # the photo as sent, embedded again when the shopper frames a part of it
    crop: Box | None = None
    cut_out: bool = False  # the garment cut out of the scene (garment.py) before searching
    regions: tuple[Region, ...] = ()  # the garments found in the photo (garment.regions), each one click away
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
        regions = tuple(recommender().regions(data))
        shown, _ = web_image(data, file.name)  # 8-bit RGB, whatever was uploaded: a 16-bit PNG would crash st.image
    except ImageError as error:
        st.session_state.image_error = (
            f"We couldn't use **{file.name}**: {error.reason}. Try a JPEG, PNG or WebP photo."
        )
        return
    set_query(Query(title="Your photo", image=shown, upload=data, regions=regions, embedding=embedding))


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


def search_region(region: Region) -> None:
    """Search one garment found in the photo: the sliders frame its region, as if the shopper had set them."""
    left, top, right, bottom = (round(100 * v) for v in region.box)
    st.session_state.crop_across, st.session_state.crop_down = (left, right), (top, bottom)
    refine_photo_query()


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


def init_state() -> None:
    """The session's query state, before any widget callback of either page can use it."""
    st.session_state.setdefault("query", None)
    st.session_state.setdefault("history", [])
    st.session_state.setdefault("image_error", None)
