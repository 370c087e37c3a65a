"""Parts every page shows: a product's picture, its card, a grid of cards, the page icon."""

from __future__ import annotations

import io

import streamlit as st
from PIL import Image, ImageDraw

from fashionrec.app.state import NAME, query_item, rate, recommender, show_details
from fashionrec.garment import Region
from fashionrec.images import Box, ImageError, web_image

CARD_FACETS = ("articleType", "baseColour", "gender")
GRID_COLUMNS = 5
PHONE_CSS = """
@media (max-width: 640px) {
  [class*="st-key-grid-"] [data-testid="stHorizontalBlock"] { flex-wrap: wrap; gap: 0.5rem; }
  [class*="st-key-grid-"] [data-testid="stColumn"] {
    min-width: calc(50% - 0.25rem) !important; max-width: calc(50% - 0.25rem); flex: 1 1 calc(50% - 0.25rem);
  }
  [class*="st-key-grid-"] [data-testid="stColumn"]:empty { display: none; }
  .st-key-query-picture img { height: 30vh; width: auto !important; margin: 0 auto; display: block; }
}
"""


def framed(image: bytes, crop: Box | None) -> bytes | Image.Image:
    """The shown photo with the searched part outlined (the photo itself when all of it is searched)."""
    if crop is None:
        return image
    picture = Image.open(io.BytesIO(image)).convert("RGB")
    box = [crop[0] * picture.width, crop[1] * picture.height, crop[2] * picture.width, crop[3] * picture.height]
    ImageDraw.Draw(picture).rectangle(box, outline=(230, 30, 90), width=max(2, max(picture.size) // 150))
    return picture


REGION_COLOURS = ((230, 30, 90), (30, 110, 230), (20, 160, 70), (240, 150, 20))


def with_regions(image: bytes, regions: tuple[Region, ...]) -> Image.Image:
    """The shown photo with each garment found outlined and numbered, in the colour of its button."""
    picture = Image.open(io.BytesIO(image)).convert("RGB")
    draw, width = ImageDraw.Draw(picture), max(2, max(picture.size) // 150)
    for number, region in enumerate(regions, 1):
        colour = REGION_COLOURS[(number - 1) % len(REGION_COLOURS)]
        box = [v * side for v, side in zip(region.box, picture.size * 2, strict=True)]
        draw.rectangle(box, outline=colour, width=width)
        draw.text((box[0] + 2 * width, box[1] + width), str(number), fill=colour)
    return picture


def product_image(item_id: str, photo: int = 0) -> None:
    """The product's picture (its `photo`-th) as a browser shows it (see images.web_image), or a line saying it
    is missing."""
    try:
        shown, _ = web_image(recommender().image_bytes(item_id, photo), f"item {item_id}")
    except (FileNotFoundError, ImageError):
        st.caption(":material/image_not_supported: image not available")
        return
    st.image(shown, width="stretch")


Card = tuple[str, dict[str, str], float | None, tuple[str, ...], tuple[int, int]]  # id, metadata, score,
# variant ids, and (the number of the photo shown, how many the product has)


def product_card(
    item_id: str,
    metadata: dict[str, str],
    score: float | None,
    variants: tuple[str, ...],
    key: str,
    rating: bool = False,
    photo: tuple[int, int] = (0, 1),
) -> bool:
    """A product as a shop shows it: picture, name, main attributes, its other listings, and a way to see more
    like it.

    `photo` is the number of the photo shown (the one that matched) and how many the product has.
    Returns whether "More like this" was clicked (the click has already made it the query).
    """
    with st.container(border=True, height="stretch"):
        product_image(item_id, photo[0])
        if photo[1] > 1:
            st.caption(f":material/photo_library: photo {photo[0] + 1} of {photo[1]}")
        st.markdown(f"**{metadata.get(NAME, item_id)}**")
        attributes = " · ".join(metadata[c] for c in CARD_FACETS if metadata.get(c))
        if show_details():  # ids and raw scores: for the shop's staff, on request
            attributes += f"  \n#{item_id}" if score is None else f"  \nSimilarity **{score:.2f}** · #{item_id}"
        st.caption(attributes)
        if variants:  # the same product under other ids: shown once (search collapse)
            more = f"{len(variants)} more listing{'s' if len(variants) > 1 else ''}"
            st.caption(f":material/layers: {more}" + (f": #{', #'.join(variants)}" if show_details() else ""))
        if rating:  # refine the current results with this one as a liked or disliked example
            liked = item_id in st.session_state.liked
            disliked = item_id in st.session_state.disliked
            up, down = st.columns(2)
            up.button(
                "", key=f"like-{key}-{item_id}", icon=":material/thumb_up:", on_click=rate, args=(item_id, True),
                help="Refine: more like this", type="primary" if liked else "secondary", width="stretch",
            )  # fmt: skip
            down.button(
                "", key=f"dislike-{key}-{item_id}", icon=":material/thumb_down:", on_click=rate, args=(item_id, False),
                help="Refine: less like this", type="primary" if disliked else "secondary", width="stretch",
            )  # fmt: skip
        return st.button(
            "More like this",
            key=f"{key}-{item_id}",
            icon=":material/auto_awesome:",
            on_click=query_item,
            args=(item_id,),
            width="stretch",
        )


def product_grid(cards: list[Card], key: str, rating: bool = False) -> None:
    """Cards five to a row; two to a row on a phone (PHONE_CSS); `rating` adds more/less like this buttons."""
    with st.container(key=f"grid-{key}"):
        for start in range(0, len(cards), GRID_COLUMNS):
            for column, (item_id, metadata, score, variants, photo) in zip(
                st.columns(GRID_COLUMNS), cards[start : start + GRID_COLUMNS], strict=False
            ):
                with column:
                    product_card(item_id, metadata, score, variants, key, rating, photo)


def phone_layout() -> None:
    """Streamlit stacks columns one under the other below 640 px: a phone would show one tall card per screen.
    Cards go two to a row there instead, and the query's picture is kept to a third of the screen."""
    st.html(f"<style>{PHONE_CSS}</style>")


def page_icon() -> Image.Image:
    """A T-shirt, drawn here: a `:material/...:` page icon makes the browser fetch it from fonts.gstatic.com."""
    icon = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    shirt = [(20, 8), (44, 8), (62, 22), (54, 32), (48, 28), (48, 60), (16, 60), (16, 28), (10, 32), (2, 22)]
    ImageDraw.Draw(icon).polygon(shirt, fill="#d6336c")
    return icon
