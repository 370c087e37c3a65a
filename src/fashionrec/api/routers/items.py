"""Catalog items: read one, its image; add and delete (with the write key)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from fashionrec.api.dependencies import ID_PATTERN, READS, WRITES, ItemId, Rec, read_upload, run_image_work
from fashionrec.api.errors import ERROR_RESPONSES, first_error
from fashionrec.api.models import ItemOut, ItemPatch, ItemsOut, Metadata, item_out
from fashionrec.images import ImageError, web_image

MAX_PAGE = 1000

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)


@router.get("/items", tags=["items"], dependencies=READS)
async def list_items(
    recommender: Rec,
    offset: Annotated[int, Query(ge=0, description="Products to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Products to return.")] = 50,
) -> ItemsOut:
    """The catalog, a page at a time: `total` says how many there are."""
    total, items = await run_in_threadpool(recommender.items_page, offset, limit)
    counts = recommender.photo_counts([item.id for item in items])  # the snapshot, in memory: no thread hop
    return ItemsOut(
        total=total, offset=offset, limit=limit, items=[item_out(i, n) for i, n in zip(items, counts, strict=True)]
    )


@router.get("/items/{item_id}", tags=["items"], dependencies=READS)
async def get_item(item_id: ItemId, recommender: Rec) -> ItemOut:
    """One product's metadata."""
    return item_out(recommender.item(item_id), len(recommender.photos(item_id)))


@router.get(
    "/items/{item_id}/image",
    tags=["items"],
    dependencies=READS,
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}}, "description": "The image bytes."}},
)
async def get_item_image(
    item_id: ItemId,
    recommender: Rec,
    photo: Annotated[int, Query(ge=0, le=10_000, description="Which photo: 0 the main one (see `photo_urls`).")] = 0,
) -> Response:
    """A product's image, as stored in the catalog (or uploaded); as 8-bit PNG if browsers could not show it.
    A product with several photos shows its `photo`-th (404 if it has fewer)."""
    try:
        data, media_type = await run_in_threadpool(
            lambda: web_image(recommender.image_bytes(item_id, photo), f"item {item_id!r}")
        )
    except FileNotFoundError:
        raise HTTPException(404, f"the image of item {item_id!r} is missing from the catalog") from None
    except ImageError as error:
        raise HTTPException(404, f"the image of item {item_id!r} cannot be shown: {error.reason}") from None
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=300"}
    return Response(data, media_type=media_type, headers=headers)


@router.post("/items", tags=["catalog updates"], dependencies=WRITES, status_code=201)
async def add_item(
    request: Request,
    response: Response,
    recommender: Rec,
    id: Annotated[str, Form(pattern=ID_PATTERN, description="New product id: letters, digits, '.', '_', '-'.")],
    image: Annotated[UploadFile, File(description="The product's image.")],
    metadata: Annotated[str, Form(description='JSON object of text columns, e.g. {"gender": "Men"}.')] = "{}",
) -> ItemOut:
    """Add a product: its image is embedded and stored in the index; the next search can return it."""
    try:
        columns = Metadata.validate_json(metadata)
    except ValidationError as error:
        raise HTTPException(400, f"metadata must be a JSON object of text values: {first_error(error)}") from None
    data = await read_upload(image)
    item = await run_image_work(request, recommender.add_item, id, data, columns)
    response.headers["Location"] = f"/v1/items/{quote(item.id, safe='')}"
    return item_out(item)


@router.patch("/items/{item_id}", tags=["catalog updates"], dependencies=WRITES)
async def update_item(item_id: ItemId, change: ItemPatch, recommender: Rec) -> ItemOut:
    """Change a product's metadata (its image and vectors stay); the next search filters on the new values."""
    stored = await run_in_threadpool(recommender.update_item, item_id, change.metadata)
    return item_out(stored, len(recommender.photos(item_id)))


@router.delete(
    "/items/{item_id}", tags=["catalog updates"], dependencies=WRITES, status_code=204, response_class=Response
)
async def delete_item(item_id: ItemId, recommender: Rec) -> Response:
    """Remove a product from the index (and its image, if it was uploaded)."""
    await run_in_threadpool(recommender.remove_item, item_id)
    return Response(status_code=204)
