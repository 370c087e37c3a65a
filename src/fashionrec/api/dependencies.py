"""What the routes depend on: API keys, the current recommender, the shared query parameters, uploads."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TypeVar
from urllib.parse import unquote

import anyio
import anyio.to_thread
from fastapi import Depends, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader

from fashionrec.images import ImageTooLarge
from fashionrec.search import Recommender

WRITE_KEY_ENV = "FASHIONREC_API_KEY"
READ_KEY_ENV = "FASHIONREC_READ_KEY"
MAX_UPLOAD_BYTES = 10 * 2**20
MAX_K = 100
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

T = TypeVar("T")


def read_secret(name: str) -> str | None:
    """A key from $NAME, or from the file named by $NAME_FILE (e.g. a Docker or systemd secret)."""
    value = os.environ.get(name)
    if not value and os.environ.get(f"{name}_FILE"):
        value = Path(os.environ[f"{name}_FILE"]).read_text().strip()
    return value or None


@dataclass(frozen=True)
class Keys:
    """API keys: `write` enables POST/PATCH/DELETE /v1/items; `read`, if set, is required by the read endpoints too."""

    write: str | None = None
    read: str | None = None

    @classmethod
    def from_env(cls) -> Keys:
        return cls(write=read_secret(WRITE_KEY_ENV), read=read_secret(READ_KEY_ENV))


def _matches(key: str | None, given: str) -> bool:
    return key is not None and hmac.compare_digest(key.encode(), given.encode())  # constant time


api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The server's API key.")
ApiKey = Annotated[str | None, Depends(api_key)]


def write_key_error(keys: Keys, given: str | None) -> HTTPException | None:
    """Why a write with this key is refused, or None if it is allowed."""
    if keys.write is None:
        return HTTPException(
            403,
            f"catalog updates are disabled: set {WRITE_KEY_ENV} (or {WRITE_KEY_ENV}_FILE) on the server to enable them",
        )
    if given is None:
        return HTTPException(401, "missing API key: send it in the X-API-Key header")
    if not _matches(keys.write, given):
        return HTTPException(403, "wrong API key")
    return None


def read_key_error(keys: Keys, given: str | None) -> HTTPException | None:
    """Why a read with this key is refused, or None if it is allowed."""
    if keys.read is None:
        return None
    if given is None:
        return HTTPException(401, "missing API key: this server requires one to read (X-API-Key header)")
    if not (_matches(keys.read, given) or _matches(keys.write, given)):
        return HTTPException(403, "wrong API key")
    return None


# Dependencies are `async def` (see the package docstring): FastAPI runs each plain `def` in a thread of its own.


async def require_write_key(request: Request, given: ApiKey) -> None:
    if error := write_key_error(request.app.state.keys, given):
        raise error


async def require_read_key(request: Request, given: ApiKey) -> None:
    if error := read_key_error(request.app.state.keys, given):
        raise error


async def current_recommender(request: Request) -> Recommender:
    """The recommender, first reloaded if another process changed the index.

    The check takes microseconds and runs on the event loop (no thread hop per request); a reload,
    which takes seconds, runs in a thread so it never blocks the event loop.
    """
    recommender: Recommender = request.app.state.recommender
    if recommender.is_stale():
        await run_in_threadpool(recommender.refresh)
    return recommender


Rec = Annotated[Recommender, Depends(current_recommender)]
TopK = Annotated[int, Query(ge=1, le=MAX_K, description="How many products to return.")]
ColourWeight = Annotated[
    float,
    Query(ge=0.0, le=1.0, description="How much colour counts in the ranking: 0 shape only (default), 1 colour only."),
]
CollapseQuery = Annotated[
    bool,
    Query(description="Show a product listed under several ids (same image) once, the other ids as its `variants`."),
]
DiversityQuery = Annotated[
    float,
    Query(ge=0.0, le=1.0, description="Spread the results (maximal marginal relevance): 0 pure similarity, 1 most."),
]
FilterQuery = Annotated[
    list[str],
    Query(
        description="Metadata filter `column=value`, as in the CLI; repeat it. Several values of one column mean "
        "any of them, different columns must all match. Names and values match case-insensitively; one the index "
        "does not hold is a 422 naming the closest known ones. (`column:value` is still accepted: deprecated.)",
        examples=[["gender=Men", "articleType=Shirts", "articleType=Tshirts"]],
    ),
]


async def path_item_id(item_id: str) -> str:
    """The item id of the path: RawItemIds left it percent-encoded, so an id may hold any character."""
    return unquote(item_id)


ItemId = Annotated[str, Depends(path_item_id)]


async def read_upload(upload: UploadFile) -> bytes:
    """The uploaded file's bytes, refused past the size limit (its name and content type are ignored)."""
    data = await upload.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageTooLarge("uploaded image", f"file too large (limit {MAX_UPLOAD_BYTES // 2**20} MiB)")
    return data


async def run_image_work(request: Request, work: Callable[..., T], *args: object) -> T:
    """Run decoding and embedding in a thread, at most one per core at a time (searches are not limited)."""
    return await anyio.to_thread.run_sync(lambda: work(*args), limiter=request.app.state.image_threads)


READS = [Depends(require_read_key)]
WRITES = [Depends(require_write_key)]
