""" "Like this, but ...": weighted multi-term search, recommend from liked/disliked items, and durable likes."""

from __future__ import annotations

import base64
import binascii
import sqlite3
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, StringConstraints

from fashionrec.api.dependencies import MAX_K, MAX_UPLOAD_BYTES, READS, WRITES, Rec, run_image_work
from fashionrec.api.errors import ERROR_RESPONSES
from fashionrec.api.models import MatchesOut, matches_out
from fashionrec.feedback import MAX_EXAMPLES, FeedbackStore
from fashionrec.filters import parse_filters
from fashionrec.search import Match, Recommender
from fashionrec.terms import FEEDBACK_COLOUR, MAX_TERMS, MAX_VALUE_CHARS, MAX_WEIGHT, ColourStrategy, Term

reads = APIRouter(prefix="/v1", dependencies=READS, responses=ERROR_RESPONSES)
writes = APIRouter(prefix="/v1", dependencies=WRITES, responses=ERROR_RESPONSES)


class TermIn(BaseModel):
    """One weighted part of a query."""

    kind: Literal["item", "image", "text", "colour"]
    value: str = Field(
        min_length=1,
        max_length=2 * MAX_UPLOAD_BYTES,
        description="An item id, a colour name (the catalog's baseColour values, any case), a text, or for "
        "`image` the photo's bytes in base64.",
        examples=["15970"],
    )
    weight: float = Field(1.0, ge=-MAX_WEIGHT, le=MAX_WEIGHT, description="Negative: steer away. Not 0.")

    def term(self) -> Term:
        """The library's term; an image's base64 decoded (a clear 400 if it is not base64)."""
        if self.kind != "image":
            if len(self.value) > MAX_VALUE_CHARS:
                raise ValueError(f"{self.kind} term: the value is longer than {MAX_VALUE_CHARS:,} characters")
            return Term(self.kind, self.value, self.weight)
        try:
            return Term("image", base64.b64decode(self.value, validate=True), self.weight)
        except binascii.Error:
            raise ValueError("image term: the value must be the image's bytes in base64") from None


Ids = Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=200)]], Field(max_length=MAX_EXAMPLES)]
FilterBody = Annotated[
    list[str], Field(max_length=100, description="Metadata filters `column=value`, as the `filter` query parameter.")
]


class TermsIn(BaseModel):
    terms: list[TermIn] = Field(
        min_length=1,
        max_length=MAX_TERMS,
        examples=[[{"kind": "item", "value": "15970"}, {"kind": "colour", "value": "Red", "weight": 0.5}]],
    )
    k: int = Field(10, ge=1, le=MAX_K)
    filter: FilterBody = []
    colour: ColourStrategy = Field(
        "label",
        description="What a colour term does beyond moving the query: `direction` nothing, `rerank` re-ranks by "
        "colour histogram, `label` keeps only items whose catalog colour is asked (drops refused ones).",
    )
    collapse: bool = True
    diversity: float = Field(0.0, ge=0.0, le=1.0)


class RecommendIn(BaseModel):
    positive: Ids = Field(default_factory=list, description="Liked item ids.")
    negative: Ids = Field(default_factory=list, description="Disliked item ids.")
    session: str | None = Field(None, description="Add the likes stored for this session (PUT /v1/sessions/...).")
    k: int = Field(10, ge=1, le=MAX_K)
    filter: FilterBody = []
    colour_weight: float = Field(FEEDBACK_COLOUR, ge=0.0, le=1.0, description="Re-rank by the liked items' colours.")
    colour: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_VALUE_CHARS,
        description="In another colour: only products whose catalog colour (baseColour, any case) is this one.",
        examples=["Red"],
    )
    collapse: bool = True
    diversity: float = Field(0.0, ge=0.0, le=1.0)


class LikesIn(BaseModel):
    liked: Ids = Field(default_factory=list)
    disliked: Ids = Field(default_factory=list)


class LikesOut(LikesIn):
    session: str


def feedback_store(recommender: Recommender) -> FeedbackStore:
    """The likes beside the index; a 503 saying why when the index directory cannot hold them."""
    try:
        return FeedbackStore.for_index(recommender.records.directory)
    except sqlite3.Error as error:
        raise HTTPException(503, f"likes cannot be stored beside this index: {error}") from None


@reads.post("/search/terms", tags=["search"])
async def search_terms(request: Request, body: TermsIn, recommender: Rec) -> MatchesOut:
    """Products close to a query of weighted terms: "like item 15970, in red, not like item 123"."""
    terms = [term.term() for term in body.terms]
    filters = parse_filters(body.filter)
    found = await run_image_work(
        request, recommender.similar_to_terms, terms, body.k, filters, body.colour, body.collapse, body.diversity
    )
    return matches_out(found)


@reads.post("/recommend", tags=["search"])
async def recommend(body: RecommendIn, recommender: Rec) -> MatchesOut:
    """Products like the liked items and unlike the disliked ones (plus a session's stored likes)."""
    return matches_out(await run_in_threadpool(_recommend, body, recommender))


def _recommend(body: RecommendIn, recommender: Recommender) -> list[Match]:
    """POST /v1/recommend's blocking work: the stored likes (SQLite) and the search."""
    positive, negative = list(body.positive), list(body.negative)
    if body.session is not None:
        stored = feedback_store(recommender).get(body.session)
        positive += [i for i in stored.liked if i not in positive]
        negative += [i for i in stored.disliked if i not in negative]
    filters = parse_filters(body.filter)
    return recommender.recommend(
        positive, negative, body.k, filters, body.colour_weight, body.collapse, body.diversity, body.colour
    )


@reads.get("/sessions/{name}/likes", tags=["feedback"])
async def get_likes(name: str, recommender: Rec) -> LikesOut:
    """A session's stored likes and dislikes (none for an unknown session)."""
    stored = await run_in_threadpool(lambda: feedback_store(recommender).get(name))
    return LikesOut(session=name, **stored.to_dict())


@writes.put("/sessions/{name}/likes", tags=["feedback"])
async def put_likes(name: str, body: LikesIn, recommender: Rec) -> LikesOut:
    """Replace a session's likes and dislikes; every id must be in the index."""
    for item_id in [*body.liked, *body.disliked]:
        recommender.item(item_id)  # 404 naming an unknown id
    stored = await run_in_threadpool(lambda: feedback_store(recommender).put(name, body.liked, body.disliked))
    return LikesOut(session=name, **stored.to_dict())


@writes.delete("/sessions/{name}/likes", tags=["feedback"], status_code=204, response_class=Response)
async def delete_likes(name: str, recommender: Rec) -> Response:
    """Forget a session's likes."""
    await run_in_threadpool(lambda: feedback_store(recommender).delete(name))
    return Response(status_code=204)
