"""The API's request and response bodies (pydantic): what the OpenAPI schema shows a shop."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from pydantic import BaseModel, Field, StringConstraints, TypeAdapter

from fashionrec.garment import Region
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
    score: float = Field(description="Similarity, at most 1: the cosine for a base encoder (1 = identical).")
    variants: list[str] = Field(
        default_factory=list, description="Ids of the same product listed again (same image, or nearly)."
    )


class MatchesOut(BaseModel):
    results: list[MatchOut]


class RegionOut(BaseModel):
    box: list[float] = Field(
        description="The region as a crop box: left, top, right, bottom fractions (pass it as `crop` to /v1/search).",
        examples=[[0.2, 0.15, 0.8, 0.55]],
    )
    kind: str = Field(description="upper body, lower body, feet (a person's garments), object or whole")
    score: float = Field(description="How sure the finding is, 0-1.")


class RegionsOut(BaseModel):
    regions: list[RegionOut]


class RegionMatchesOut(RegionOut):
    results: list[MatchOut]


class RegionsMatchesOut(BaseModel):
    regions: list[RegionMatchesOut]


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


Metadata = TypeAdapter(
    Annotated[
        dict[
            Annotated[str, StringConstraints(min_length=1, max_length=100)],
            Annotated[str, StringConstraints(max_length=2000)],
        ],
        Field(max_length=64),  # columns: every new one widens every product's row (search.MAX_COLUMNS)
    ]
)


def image_url(item_id: str) -> str:
    return f"/v1/items/{quote(item_id, safe='')}/image"


def item_out(item: StoredItem) -> ItemOut:
    return ItemOut(id=item.id, metadata=item.metadata, image_url=image_url(item.id))


def matches_out(matches: list[Match]) -> MatchesOut:
    return MatchesOut(
        results=[
            MatchOut(
                id=m.id,
                rank=m.rank,
                score=round(m.score, 6),
                metadata=m.metadata,
                image_url=image_url(m.id),
                variants=list(m.variants),
            )
            for m in matches
        ]
    )


def region_out(region: Region) -> RegionOut:
    return RegionOut(box=[round(v, 4) for v in region.box], kind=region.kind, score=round(region.score, 4))
