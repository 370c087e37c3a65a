"""The find page: ask (upload, camera, catalog product, surprise), set the search, see the look-alikes."""

from __future__ import annotations

import random
import time

import streamlit as st
from streamlit.navigation.page import StreamlitPage

from fashionrec.app.state import (
    FACETS,
    Query,
    clear_refinements,
    colours,
    facet_choices,
    go_back,
    init_state,
    keep_details,
    query_image,
    query_random_item,
    query_typed_product,
    recommender,
    refine_photo_query,
    restore_from_url,
    search,
    search_region,
    share_in_url,
    show_details,
)
from fashionrec.app.widgets import GRID_COLUMNS, framed, product_grid, product_image, with_regions
from fashionrec.filters import FilterError
from fashionrec.images import ImageError
from fashionrec.terms import TermError
from fashionrec.text import MAX_QUERY_CHARS

UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"]
MODES = {
    "upload": ":material/upload: Upload a photo",
    "camera": ":material/photo_camera: Take a photo",
    "catalog": ":material/search: Search the catalog",
    "random": ":material/casino: Surprise me",
}


def show_query(query: Query) -> None:
    if query.text is not None:
        st.caption("Products described by")
        st.subheader(f"“{query.title}”", anchor=False)
        back_button()
        return
    picture, details = st.columns([1, 3], vertical_alignment="center")
    with picture, st.container(key="query-picture"):
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
            st.markdown(" ".join(badges) + (f" :gray-badge[#{query.item_id}]" if show_details() else ""))
        if query.upload is not None and len(query.regions) > 1:  # several garments: each one click away
            show_regions(query)
        if query.upload is not None:
            refined = query.crop is not None or not query.cut_out  # changed from the defaults
            with st.expander("Search part of the photo", icon=":material/crop:", expanded=refined):
                left, top, right, bottom = (round(100 * v) for v in query.crop or (0, 0, 1, 1))
                st.slider("Left to right (%)", 0, 100, (left, right), key="crop_across", on_change=refine_photo_query)
                st.slider("Top to bottom (%)", 0, 100, (top, bottom), key="crop_down", on_change=refine_photo_query)
                st.checkbox(
                    "Cut the garment out of the scene",
                    value=query.cut_out,
                    key="cut_out",
                    on_change=refine_photo_query,
                    help="For a garment worn, on a bed or on the floor (a person: their top). Product shots framed "
                    "like the catalog's and a part of the photo you framed are searched as they are.",
                )
        back_button()


def back_button() -> None:
    st.button("Back", icon=":material/arrow_back:", disabled=not st.session_state.history, on_click=go_back, key="back")


def show_regions(query: Query) -> None:
    """The garments found in the photo, outlined and numbered, each searched with one click (its box)."""
    with st.expander("Garments in the photo", icon=":material/checkroom:", expanded=query.crop is None):
        shown, buttons = st.columns([1, 2])
        with shown:
            st.image(with_regions(query.image, query.regions), width="stretch")
        with buttons:
            for number, region in enumerate(query.regions, 1):
                st.button(
                    f"{number}. Search the {region.kind}",
                    key=f"region_{number}",
                    on_click=search_region,
                    args=(region,),
                    type="primary" if query.crop == tuple(round(100 * v) / 100 for v in region.box) else "secondary",
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
        st.sidebar.text_input(
            "Product id, or describe it",
            placeholder="15970, or: blue denim jacket",
            key="product_text",
            on_change=query_typed_product,
            max_chars=MAX_QUERY_CHARS,
            help="Words find products by their names and details, and (with a text bridge) by their look.",
        )
    else:
        st.sidebar.button("Show me a random product", icon=":material/casino:", on_click=query_random_item)


def sidebar_search_settings() -> tuple[int, dict[str, list[str]], float, float]:
    """How many results, the filters applied inside the search, how much colour counts, and how varied."""
    k = st.sidebar.slider("Number of results", 1, 20, key="k")
    chosen = {column: st.session_state.get(f"filter-{column}") or [] for column in FACETS}
    filters: dict[str, list[str]] = {}
    with st.sidebar.expander("Filters", icon=":material/filter_list:", expanded=any(chosen.values())):
        for column, values in facet_choices(chosen).items():
            if picked := st.multiselect(FACETS[column], values, key=f"filter-{column}", placeholder="Any"):
                filters[column] = picked
    colour_weight = st.sidebar.slider(
        "Colour weight", 0.0, 1.0, step=0.05, key="colour_weight",
        help="0: shape only. Higher: products of the same colours come first (among the 100 closest shapes).",
    )  # fmt: skip
    diversity = st.sidebar.slider(
        "Variety", 0.0, 1.0, step=0.05, key="diversity",
        help="0: the closest products. Higher: results that differ more from each other (among the 50 closest).",
    )  # fmt: skip
    st.session_state.details = show_details()
    st.sidebar.toggle(
        "Show ids and scores", key="details", on_change=keep_details, help="Product ids and raw similarity scores."
    )
    return k, filters, colour_weight, diversity


def refine_controls() -> None:
    """ "In another colour", and what the thumbs on the results have refined so far (with a way to undo it)."""
    choices = colours()
    picker, status = st.columns([1, 2], vertical_alignment="bottom")
    if choices:
        picker.selectbox(
            "In another colour", choices, key="other_colour", placeholder="Any colour",
            help="Like this, but in that colour: products of the same kind whose catalog colour is this one.",
        )  # fmt: skip
    liked, disliked = len(st.session_state.liked), len(st.session_state.disliked)
    if liked or disliked or st.session_state.other_colour:
        with status:
            st.caption(f"Refined by {liked} :material/thumb_up: and {disliked} :material/thumb_down:")
            st.button("Clear refinements", icon=":material/restart_alt:", on_click=clear_refinements, key="clear")


def render() -> None:
    init_state()
    restore_from_url()
    sidebar_query_controls()
    k, filters, colour_weight, diversity = sidebar_search_settings()
    share_in_url(st.session_state.query, k, filters, colour_weight, diversity)
    if st.session_state.notice:
        st.error(st.session_state.notice, icon=":material/error:")

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
        product_grid([(item.id, item.metadata, None, (), (0, 1)) for item in picks], key="pick")
        return

    show_query(query)
    started = time.perf_counter()
    try:
        matches = search(query, k, filters, colour_weight, diversity)
    except (FilterError, ImageError, TermError) as error:  # a shared URL naming an unknown filter value, a colour
        st.error(f"We couldn't search: {error}", icon=":material/error:")
        return
    took_ms = (time.perf_counter() - started) * 1000
    st.subheader("Matching products" if query.text is not None else "Similar products", anchor=False)
    refine_controls()
    shown_filters = "; ".join(f"{FACETS[c]}: {', '.join(v)}" for c, v in filters.items())
    st.caption(f"{len(matches)} results in {took_ms:.0f} ms" + (f" · {shown_filters}" if shown_filters else ""))
    if not matches and query.text is not None and not filters:
        st.info("No product matches these words. Try other words.", icon=":material/search_off:")
    elif not matches:
        st.info("No product matches these filters. Remove a filter to see more.", icon=":material/filter_alt_off:")
    cards = [(m.id, m.metadata, m.score, m.variants, (m.photo, len(m.photos) or 1)) for m in matches]
    product_grid(cards, key="result", rating=True)


def page() -> StreamlitPage:
    """This page for st.navigation and st.switch_page (made on each run: a page made at import is bound to the
    runtime of that moment)."""
    return st.Page(render, title="Find similar", icon=":material/search:", url_path="find", default=True)
