"""Search: look-alikes of an uploaded photo or of a catalog product, and the products that words describe."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

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
from fashionrec.api.models import (
    MatchesOut,
    RegionMatchesOut,
    RegionsMatchesOut,
    RegionsOut,
    matches_out,
    region_out,
)
from fashionrec.filters import parse_filters
from fashionrec.garment import DEFAULT as DEFAULT_ISOLATION
from fashionrec.garment import Method
from fashionrec.images import parse_box
from fashionrec.search import TextMode
from fashionrec.text import MAX_QUERY_CHARS

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
        description="Cut the garment out of the photo first. `auto` (the default): U2-Net-p, a segmentation model "
        "(for a photo of a person, their upper body or the person cut out, whichever the catalog matches more "
        "closely), and nothing for a product shot framed like the catalog's, a catalog image or a `crop`; or "
        "`u2netp`, `border`, `none` (the photo as sent)."
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
    isolate: IsolateQuery = DEFAULT_ISOLATION,
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


@router.get("/search")
async def search_text(
    recommender: Rec,
    q: Annotated[
        str,
        Query(
            min_length=1,
            max_length=MAX_QUERY_CHARS,
            description="What the shopper looks for, in words: a product name, or words like `red tshirt for men` "
            "(misspelt words and other word forms are matched too).",
            examples=["blue denim jacket"],
        ),
    ],
    k: TopK = 10,
    filter: FilterQuery = [],  # noqa: B006 (FastAPI copies defaults)
    mode: Annotated[
        TextMode,
        Query(
            description="`fused`: the catalog's words (names, metadata) and the text bridge (the look a text "
            "describes) together; `words` or `bridge`: one of them only. Without a bridge, `fused` is words only."
        ),
    ] = "fused",
    collapse: CollapseQuery = True,
    diversity: DiversityQuery = 0.0,
) -> MatchesOut:
    """The k catalog products that a text describes (GET /v1/info `text_search` says whether a bridge is used)."""
    found = await run_in_threadpool(recommender.similar_to_text, q, k, parse_filters(filter), mode, collapse, diversity)
    return matches_out(found)


@router.post("/regions")
async def regions(
    request: Request,
    recommender: Rec,
    image: Annotated[UploadFile, File(description="A shopper's photo: a person in an outfit, a garment on a bed.")],
) -> RegionsOut:
    """The garments found in a photo (a worn top, trousers, shoes; else the salient object), each as a crop box."""
    found = await run_image_work(request, recommender.regions, await read_upload(image))
    return RegionsOut(regions=[region_out(region) for region in found])


@router.post("/search/regions")
async def search_regions(
    request: Request,
    recommender: Rec,
    image: Annotated[UploadFile, File(description="A shopper's photo: a person in an outfit, a garment on a bed.")],
    k: TopK = 10,
    filter: FilterQuery = [],  # noqa: B006 (FastAPI copies defaults)
    colour_weight: ColourWeight = 0.0,
    isolate: IsolateQuery = DEFAULT_ISOLATION,
    collapse: CollapseQuery = True,
    diversity: DiversityQuery = 0.0,
) -> RegionsMatchesOut:
    """The k products most similar to each garment found in the photo (see /v1/regions): one query per region."""
    filters = recommender.resolve_filters(parse_filters(filter))  # a wrong filter fails before the embedding
    found = await run_image_work(
        request,
        recommender.similar_per_region,
        await read_upload(image),
        k,
        filters,
        colour_weight,
        isolate,
        collapse,
        diversity,
    )
    return RegionsMatchesOut(
        regions=[
            RegionMatchesOut(**region_out(region).model_dump(), results=matches_out(matches).results)
            for region, matches in found
        ]
    )


@router.get("/items/{item_id}/similar")
async def similar_items(
    item_id: ItemId,
    recommender: Rec,
    k: TopK = 10,
    filter: FilterQuery = [],  # noqa: B006 (FastAPI copies defaults)
    colour_weight: ColourWeight = 0.0,
    collapse: CollapseQuery = True,
    diversity: DiversityQuery = 0.0,
) -> MatchesOut:
    """The k products most similar to a catalog product (from its stored vectors; never the product itself)."""
    found = await run_in_threadpool(
        recommender.similar_to_item, item_id, k, parse_filters(filter), colour_weight, collapse, diversity
    )
    return matches_out(found)
