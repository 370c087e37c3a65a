"""The API's request and response bodies (pydantic): what the OpenAPI schema shows a shop."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

from fashionrec.index import StoredItem
from fashionrec.search import Match


class ErrorOut(BaseModel):
    """Every error: a short code and a sentence saying what is wrong."""

    error: str = Field(examples=["not_found"])
    detail: str = Field(examples=["item '99999' is not in the index"])


class ItemOut(BaseModel):
    id: str
    metadata: dict[str, str]
    image_url: str = Field(description="Path of the item's image on this server.")


class MatchOut(ItemOut):
    rank: int
    score: float = Field(
        ge=-1.0, le=1.0, description="Similarity from -1 to 1: the cosine for a base encoder (1 = identical)."
    )
    variants: list[str] = Field(
        default_factory=list, description="Ids of the same product listed again (same image, or nearly)."
    )


class MatchesOut(BaseModel):
    results: list[MatchOut]


class HealthOut(BaseModel):
    status: str
    items: int


class InfoOut(BaseModel):
    version: str
    encoder: str
    dim: int
    format_version: int
    items: int
    problems: int
    complete: bool
    updated: str | None
    metadata_columns: list[str]


ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=100)]
ColumnValue = Annotated[str, StringConstraints(max_length=2000)]
MAX_ITEM_COLUMNS = 64  # columns: every new one widens every product's row (search.MAX_COLUMNS)
Metadata = TypeAdapter(Annotated[dict[ColumnName, ColumnValue], Field(max_length=MAX_ITEM_COLUMNS)])


class ItemPatch(BaseModel):
    """A change of a product's metadata (PATCH /v1/items/{id}); the same bounds as a new product's."""

    model_config = ConfigDict(extra="forbid")

    metadata: Annotated[
        dict[ColumnName, ColumnValue | None],
        Field(
            max_length=MAX_ITEM_COLUMNS,
            description="Columns to set; `null` removes a column; columns not named stay as they are.",
            examples=[{"baseColour": "Navy Blue", "season": None}],
        ),
    ]


class ItemsOut(BaseModel):
    """One page of the catalog, in index order."""

    total: int = Field(description="Products in the index.")
    offset: int
    limit: int
    items: list[ItemOut]


def image_url(item_id: str) -> str:
    return f"/v1/items/{quote(item_id, safe='')}/image"


def item_out(item: StoredItem) -> ItemOut:
    return ItemOut(id=item.id, metadata=item.metadata, image_url=image_url(item.id))


def matches_out(matches: list[Match]) -> MatchesOut:
    """Matches as the API shows them: Match.to_dict (as the CLI's JSON) with the image's URL on this server."""
    return MatchesOut(results=[MatchOut.model_validate(m.to_dict() | {"image_url": image_url(m.id)}) for m in matches])
