"""Search: look-alikes of an uploaded photo or of a catalog product."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, Request, UploadFile

from fashionrec.api.dependencies import (
    READS,
    CollapseQuery,
    ColourWeight,
    DiversityQuery,
    FilterQuery,
    ItemId,
    Rec,
    TopK,
    read_upload,
    run_image_work,
)
from fashionrec.api.errors import ERROR_RESPONSES
from fashionrec.api.models import MatchesOut, matches_out
from fashionrec.filters import parse_filters
from fashionrec.garment import Method
from fashionrec.images import parse_box

router = APIRouter(prefix="/v1", tags=["search"], dependencies=READS, responses=ERROR_RESPONSES)

CropQuery = Annotated[
    str | None,
    Query(
        description="Search only this part of the photo: `left,top,right,bottom` as fractions of its width and "
        "height, e.g. `0,0.45,1,1` for the lower half.",
        examples=["0.1,0.2,0.9,0.8"],
    ),
]
IsolateQuery = Annotated[
    Method,
    Query(
        description="Cut the garment out of a busy photo first: `border` (cheap, helps colour) or `u2netp` "
        "(a segmentation model: best on scenes, about 60 ms more per photo; worse on plain product shots)."
    ),
]


@router.post("/search")
async def search(
    request: Request,
    recommender: Rec,
    image: Annotated[UploadFile, File(description="Any photo of a garment (JPEG, PNG, WebP, GIF, BMP, TIFF).")],
    k: TopK = 10,
    filter: FilterQuery = [],  # noqa: B006 (FastAPI copies defaults)
    colour_weight: ColourWeight = 0.0,
    crop: CropQuery = None,
    isolate: IsolateQuery = "none",
    collapse: CollapseQuery = True,
    diversity: DiversityQuery = 0.0,
) -> MatchesOut:
    """The k catalog products most similar to an uploaded photo, or to the `crop` part of it."""
    filters = recommender.resolve_filters(parse_filters(filter))  # a wrong filter fails before the embedding
    box = parse_box(crop) if crop is not None else None
    data = await read_upload(image)
    found = await run_image_work(
        request, recommender.similar_to_image, data, k, filters, colour_weight, box, isolate, collapse, diversity
    )
    return matches_out(found)


@router.get("/items/{item_id}/similar")
def similar_items(
    item_id: ItemId,
    recommender: Rec,
    k: TopK = 10,
    filter: FilterQuery = [],  # noqa: B006 (FastAPI copies defaults)
    colour_weight: ColourWeight = 0.0,
    collapse: CollapseQuery = True,
    diversity: DiversityQuery = 0.0,
) -> MatchesOut:
    """The k products most similar to a catalog product (from its stored vectors; never the product itself)."""
    return matches_out(
        recommender.similar_to_item(item_id, k, parse_filters(filter), colour_weight, collapse, diversity)
    )
