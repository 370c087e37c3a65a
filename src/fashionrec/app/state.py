"""The app's state: the index opened once per process, the shopper's query and the way back.

Every page reads and changes the query through these functions (widget callbacks), so the pages stay
layout only; the searches themselves are `Recommender` calls, as in the CLI and the API.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, replace

import streamlit as st

from fashionrec.filters import FilterError, parse_filters
from fashionrec.garment import Method, Region
from fashionrec.images import Box, ImageError, web_image
from fashionrec.search import Match, Recommender
from fashionrec.terms import COLOUR_COLUMN, MAX_TERMS
from fashionrec.text import MAX_QUERY_CHARS

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
HISTORY = 50  # queries the back button remembers
URL_SETTINGS = (("k", "k", 1, 20), ("colour", "colour_weight", 0.0, 1.0), ("variety", "diversity", 0.0, 1.0))
SETTING_DEFAULTS = {"k": 5, "colour_weight": 0.0, "diversity": 0.0}


@dataclass(frozen=True)
class Query:
    """What the shopper wants look-alikes of: a catalog product, an image of their own, or words."""

    title: str
    item_id: str | None = None
    image: bytes | None = None  # what the page shows of a shopper's photo (8-bit, at most 1024 px)
    upload: bytes | None = None  # the photo as sent, embedded again when the shopper frames a part of it
    crop: Box | None = None
    cut_out: bool = True  # the garment cut out of the scene (garment.py's `auto`, the default) before searching
    text: str | None = None  # words describing the product ("blue denim jacket"): Recommender.similar_to_text
    regions: tuple[Region, ...] = ()  # the garments found in the photo (garment.regions), each one click away

    @property
    def isolate(self) -> Method:
        return "auto" if self.cut_out else "none"


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
    text = params.get("q", "").strip()
    if text and item is None:
        if len(text) <= MAX_QUERY_CHARS:
            set_query(Query(title=text, text=text))
        else:
            problems.append(f"the search words are too long ({len(text):,} characters, limit {MAX_QUERY_CHARS})")
    if problems:
        st.session_state.notice = f"This link could not be opened in full: {'; '.join(problems)}."


def share_in_url(query: Query | None, k: int, filters: dict[str, list[str]], colour: float, variety: float) -> None:
    """Keep the query and settings in the address bar, so copying it shares them: ?item=ID&k=8&colour=0.3&
    variety=0.2&filter=gender=Men&details=1, or ?q=WORDS (defaults left out; a shopper's own photo cannot be in a
    URL)."""
    params: dict[str, str | list[str]] = {}
    if query is not None and query.item_id is not None:
        params["item"] = query.item_id
    elif query is not None and query.text is not None:
        params["q"] = query.text
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
    clear_refinements()


def go_back() -> None:
    st.session_state.query = st.session_state.history.pop()
    clear_refinements()


def clear_refinements() -> None:
    """Forget the likes, dislikes and other colour of the current results (a new query starts afresh)."""
    st.session_state.liked, st.session_state.disliked = [], []
    st.session_state.other_colour = None


def rate(item_id: str, liked: bool) -> None:
    """ "More like this" / "less like this" on a result: refines the current results (the query stays)."""
    mine, other = ("liked", "disliked") if liked else ("disliked", "liked")
    st.session_state[other] = [i for i in st.session_state[other] if i != item_id]
    st.session_state[mine] = [*(i for i in st.session_state[mine] if i != item_id), item_id][-(MAX_TERMS // 2) :]


def colours() -> list[str]:
    """The catalog's colours, for "in another colour" (none if the index has no colour labels)."""
    index = recommender()
    return index.column_values(COLOUR_COLUMN) if COLOUR_COLUMN in index.metadata_columns else []


def refined_search(query: Query, k: int, filters: dict[str, list[str]], diversity: float) -> list[Match]:
    """Recommender.recommend, as the API's /v1/recommend: the query (a product, a photo, or words read by the text
    bridge: without one, a TermError says so) and the liked results as liked examples, the disliked ones as
    disliked, in the other colour if one was asked."""
    first = query.item_id if query.item_id is not None else query.upload
    liked = [first, *st.session_state.liked] if first is not None else st.session_state.liked
    return recommender().recommend(
        liked, st.session_state.disliked, k, filters, diversity=diversity,
        colour=st.session_state.other_colour, text=query.text,
    )  # fmt: skip


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
        regions = tuple(recommender().regions(data))
        shown, _ = web_image(data, file.name)  # 8-bit RGB, whatever was uploaded: a 16-bit PNG would crash st.image
    except ImageError as error:
        st.session_state.notice = f"We couldn't use **{file.name}**: {error.reason}. Try a JPEG, PNG or WebP photo."
        return
    set_query(Query(title="Your photo", image=shown, upload=data, regions=regions))


def refine_photo_query() -> None:
    """Search the part of the shopper's photo that the two sliders frame (the whole photo: no crop), with its
    garment cut out of the scene when the shopper asks for it."""
    query = st.session_state.query
    (left, right), (top, bottom) = st.session_state.crop_across, st.session_state.crop_down
    box = (left / 100, top / 100, right / 100, bottom / 100)
    crop = None if box == (0.0, 0.0, 1.0, 1.0) else box
    isolate = "auto" if st.session_state.cut_out else "none"
    try:
        recommender().embed_image(query.upload, crop, isolate)  # checks the frame now; cached for the search
    except (ImageError, ValueError) as error:
        st.session_state.notice = f"We couldn't search that part of the photo: {error}."
        return
    st.session_state.notice = None
    st.session_state.query = replace(query, crop=crop, cut_out=isolate != "none")


def search_region(region: Region) -> None:
    """Search one garment found in the photo: the sliders frame its region, as if the shopper had set them."""
    left, top, right, bottom = (round(100 * v) for v in region.box)
    st.session_state.crop_across, st.session_state.crop_down = (left, right), (top, bottom)
    refine_photo_query()


def query_typed_product() -> None:
    """A product's exact id shows its look-alikes; other words search the catalog by words (similar_to_text)."""
    text = st.session_state.product_text.strip()
    if not text:
        return
    if text in recommender().positions:
        query_item(text)
    else:
        set_query(Query(title=text, text=text))


def search(query: Query, k: int, filters: dict[str, list[str]], colour_weight: float, diversity: float) -> list[Match]:
    """The same Recommender calls as the CLI's `similar` and `search` (a photo's embedding is cached), or, once
    the shopper rated results or asked for another colour, its `recommend` (as POST /v1/recommend); colour
    weight applies to photos and products, not to words."""
    if st.session_state.liked or st.session_state.disliked or st.session_state.other_colour:
        return refined_search(query, k, filters, diversity)
    if query.text is not None:
        return recommender().similar_to_text(query.text, k, filters, diversity=diversity)
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
    for key in ("liked", "disliked"):
        st.session_state.setdefault(key, [])
    st.session_state.setdefault("other_colour", None)
    for key, default in SETTING_DEFAULTS.items():  # the sliders' values, before a shared URL may set them
        st.session_state.setdefault(key, default)
