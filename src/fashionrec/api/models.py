"""The API's request and response bodies (pydantic): what the OpenAPI schema shows a shop."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

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
    image_url: str = Field(description="Path of the item's image on this server (for a match: the photo that matched).")
    photo_urls: list[str] = Field(
        default_factory=list, description="Paths of all the product's photos, its main one first (`?photo=N`)."
    )


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
    text_search: str  # "words + text bridge", or words only


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


def image_url(item_id: str, photo: int = 0) -> str:
    """Where this server shows a product's photo (0: its main one)."""
    return f"/v1/items/{quote(item_id, safe='')}/image" + (f"?photo={photo}" if photo else "")


def photo_urls(item_id: str, count: int) -> list[str]:
    return [image_url(item_id, photo) for photo in range(count)]


def item_out(item: StoredItem, photos: int = 1) -> ItemOut:
    """A product as the API shows it; `photos` is how many photos it has."""
    return ItemOut(
        id=item.id, metadata=item.metadata, image_url=image_url(item.id), photo_urls=photo_urls(item.id, photos)
    )


def matches_out(matches: list[Match]) -> MatchesOut:
    """Matches as the API shows them: Match.to_dict (as the CLI's JSON) with the URLs of the matched photo and
    of all the product's photos on this server."""
    return MatchesOut(
        results=[
            MatchOut.model_validate(
                m.to_dict()
                | {"image_url": image_url(m.id, m.photo), "photo_urls": photo_urls(m.id, len(m.photos) or 1)}
            )
            for m in matches
        ]
    )


def region_out(region: Region) -> RegionOut:
    return RegionOut(box=[round(v, 4) for v in region.box], kind=region.kind, score=round(region.score, 4))
