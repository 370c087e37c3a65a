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

from fashionrec.filters import FilterError, parse_filters
from fashionrec.garment import Method
from fashionrec.images import Box, ImageError, web_image
from fashionrec.search import Match, Recommender

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
URL_SETTINGS = (("k", "k", 1, 20), ("colour", "colour_weight", 0.0, 1.0), ("variety", "diversity", 0.0, 1.0))
SETTING_DEFAULTS = {"k": 5, "colour_weight": 0.0, "diversity": 0.0}


@dataclass(frozen=True)
class Query:
    """What the shopper wants look-alikes of: a catalog product, or an image of their own."""

    title: str
    item_id: str | None = None
    image: bytes | None = None  # what the page shows of a shopper's photo (8-bit, at most 1024 px)
    upload: bytes | None = None  # the photo as sent, embedded again when the shopper frames a part of it
    crop: Box | None = None
    cut_out: bool = False  # the garment cut out of the scene (garment.py) before searching

    @property
    def isolate(self) -> Method:
        return "u2netp" if self.cut_out else "none"


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


def facet_choices(chosen: dict[str, list[str]]) -> dict[str, list[str]]:
    """The values each filter column offers, narrowed by the other filters chosen (its own chosen values stay
    offered, so a choice never vanishes from its box)."""
    columns = recommender().metadata_columns
    choices = {}
    for column in (c for c in FACETS if c in columns):
        others = {c: values for c, values in chosen.items() if values and c != column}
        choices[column] = sorted({*recommender().column_values(column, others), *chosen.get(column, [])})
    return choices


def show_details() -> bool:
    """Whether product ids and raw similarity scores are shown (a toggle: shoppers do not need them)."""
    return bool(st.session_state.get("show_details", False))


def keep_details() -> None:
    """The toggle's value, kept beyond its widget: Streamlit forgets a widget's state on a page without it."""
    st.session_state.show_details = st.session_state.details


def restore_from_url() -> None:
    """Once per session, the query and settings of a shared URL (see `share_in_url`); a value this index or
    the page cannot take becomes a message, not a traceback."""
    if st.session_state.get("url_restored"):
        return
    st.session_state.url_restored = True
    params = st.query_params
    problems = []
    for name, key, low, high in URL_SETTINGS:
        if name in params:
            try:
                value = float(params[name])
                if not low <= value <= high:
                    raise ValueError(f"not between {low} and {high}")
            except ValueError as error:
                problems.append(f"{name}={params[name]!r}: {error}")
                continue
            st.session_state[key] = int(value) if key == "k" else round(value * 20) / 20  # the sliders' steps
    st.session_state.show_details = params.get("details") == "1"
    try:
        for column, values in recommender().resolve_filters(parse_filters(params.get_all("filter"))).items():
            if column in FACETS:
                st.session_state[f"filter-{column}"] = sorted(set(values))
    except FilterError as error:
        problems.append(str(error))
    item = params.get("item")
    if item is not None:
        if item in recommender().positions:
            query_item(item)
        else:
            problems.append(f"item {item!r} is not in this catalog")
    if problems:
        st.session_state.notice = f"This link could not be opened in full: {'; '.join(problems)}."


def share_in_url(query: Query | None, k: int, filters: dict[str, list[str]], colour: float, variety: float) -> None:
    """Keep the query and settings in the address bar, so copying it shares them: ?item=ID&k=8&colour=0.3&
    variety=0.2&filter=gender=Men&details=1 (defaults left out; a shopper's own photo cannot be in a URL)."""
    params: dict[str, str | list[str]] = {}
    if query is not None and query.item_id is not None:
        params["item"] = query.item_id
    for (name, key, _, _), value in zip(URL_SETTINGS, (k, colour, variety), strict=True):
        if value != SETTING_DEFAULTS[key]:
            params[name] = str(value)
    if filters:
        params["filter"] = [f"{column}={value}" for column, values in filters.items() for value in values]
    if show_details():
        params["details"] = "1"
    st.query_params.from_dict(params)


def set_query(query: Query) -> None:
    """Make `query` current; the previous one goes on the history for the back button."""
    if st.session_state.query is not None:
        st.session_state.history = [*st.session_state.history, st.session_state.query][-HISTORY:]
    st.session_state.query = query
    st.session_state.notice = None


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
        recommender().embed_image(data)  # a photo that cannot be searched is refused now (the result is cached)
        shown, _ = web_image(data, file.name)  # 8-bit RGB, whatever was uploaded: a 16-bit PNG would crash st.image
    except ImageError as error:
        st.session_state.notice = f"We couldn't use **{file.name}**: {error.reason}. Try a JPEG, PNG or WebP photo."
        return
    set_query(Query(title="Your photo", image=shown, upload=data))


def refine_photo_query() -> None:
    """Search the part of the shopper's photo that the two sliders frame (the whole photo: no crop), with its
    garment cut out of the scene when the shopper asks for it."""
    query = st.session_state.query
    (left, right), (top, bottom) = st.session_state.crop_across, st.session_state.crop_down
    box = (left / 100, top / 100, right / 100, bottom / 100)
    crop = None if box == (0.0, 0.0, 1.0, 1.0) else box
    isolate = "u2netp" if st.session_state.cut_out else "none"
    try:
        recommender().embed_image(query.upload, crop, isolate)  # checks the frame now; cached for the search
    except (ImageError, ValueError) as error:
        st.session_state.notice = f"We couldn't search that part of the photo: {error}."
        return
    st.session_state.notice = None
    st.session_state.query = replace(query, crop=crop, cut_out=isolate != "none")


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
    """The same Recommender calls as the CLI's `similar` and `search` (a photo's embedding is cached)."""
    if query.item_id is not None:
        return recommender().similar_to_item(query.item_id, k, filters, colour_weight, diversity=diversity)
    assert query.upload is not None
    return recommender().similar_to_image(
        query.upload, k, filters, colour_weight, query.crop, query.isolate, diversity=diversity
    )


def init_state() -> None:
    """The session's query state, before any widget callback of either page can use it."""
    st.session_state.setdefault("query", None)
    st.session_state.setdefault("history", [])
    st.session_state.setdefault("notice", None)
    for key, default in SETTING_DEFAULTS.items():  # the sliders' values, before a shared URL may set them
        st.session_state.setdefault(key, default)
