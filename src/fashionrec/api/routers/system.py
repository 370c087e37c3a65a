"""The service itself: health (no key, for load balancers) and what the index is."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from fashionrec import __version__
from fashionrec.api.dependencies import READS, Rec
from fashionrec.api.errors import ERROR_RESPONSES
from fashionrec.api.models import HealthOut, InfoOut

router = APIRouter(prefix="/v1", tags=["service"])


@router.get("/health")
async def health(recommender: Rec) -> HealthOut:
    """Liveness and the number of products served; never needs a key."""
    return HealthOut(status="ok", items=len(recommender))


@router.get("/info", dependencies=READS, responses=ERROR_RESPONSES)
async def info(recommender: Rec) -> InfoOut:
    """What the index is: encoder, counts, format (no server paths)."""
    return InfoOut.model_validate(await run_in_threadpool(recommender.info) | {"version": __version__})
