"""REST API: a thin FastAPI surface over `Recommender`, for shops (run it with `fashionrec serve`).

Layout (FastAPI's "bigger applications"): `routers/` holds one router per area (search, items, system,
docs), `dependencies.py` the keys and the recommender every route depends on, `models.py` the bodies,
`middleware.py` what must act before a body is read, `errors.py` the one error format. A new area is a
new router module added to ROUTERS.

Everything CPU-bound (decoding, embedding, searching, reloading) runs in worker threads, never on
the event loop, in one thread per core for searches and one per core for image work: more threads
only fight over the cores and the GIL, and a burst of uploads cannot pile up decoded images in
memory. Routes and dependencies are `async def`, and a route hands its blocking work to a thread in
exactly one hop (`run_in_threadpool`, or `run_image_work` for images): FastAPI runs each plain `def`
dependency, route and response validation in a thread of its own, and with one thread per core each
hop waits in the queue again (a similar-items request made four; bench/api_load.py --baseline-src).
Each process holds its own in-memory index and reloads it when another process (another worker, a
rebuild) commits to the index's SQLite database.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from fashionrec import __version__
from fashionrec.api.dependencies import MAX_UPLOAD_BYTES, READ_KEY_ENV, WRITE_KEY_ENV, Keys
from fashionrec.api.errors import install_error_handlers
from fashionrec.api.middleware import BodySizeLimit, KeysFirst, RawItemIds
from fashionrec.api.routers import docs, items, search, system, terms
from fashionrec.search import Recommender

__all__ = [
    "CORS_ENV",
    "INDEX_ENV",
    "READ_KEY_ENV",
    "WRITE_KEY_ENV",
    "Keys",
    "app_from_env",
    "cors_origins_from_env",
    "create_app",
]

INDEX_ENV = "FASHIONREC_INDEX"
CORS_ENV = "FASHIONREC_CORS_ORIGINS"  # comma-separated origins allowed to call from a browser, or *; unset: none
MAX_BODY_BYTES = MAX_UPLOAD_BYTES + 2**20  # the image plus multipart framing and the metadata field
ROUTERS = (search.router, terms.reads, terms.writes, items.router, system.router, docs.router)


def create_app(index_dir: str | Path, keys: Keys | None = None, cors_origins: Sequence[str] = ()) -> FastAPI:
    """The API over one index directory; the index and the model are loaded at startup (lifespan), so the
    first request does not wait. `cors_origins` lets web pages of those origins call it (off by default)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Requests are served side by side, one core each: one thread per embedding and per search.
        recommender = Recommender.open(index_dir, threads=1)
        recommender.encoder  # noqa: B018 (loads it)
        app.state.recommender = recommender
        # One thread per core (see the module docstring). Measured with bench/api_load.py: p99 124 ms
        # with anyio's default of 40 search threads, 57 ms with one per core, as uploads no longer starve.
        cores = os.cpu_count() or 1
        anyio.to_thread.current_default_thread_limiter().total_tokens = cores
        app.state.image_threads = anyio.CapacityLimiter(cores)
        yield

    app = FastAPI(
        title="fashionrec",
        version=__version__,
        description="Similar products for a photo or a catalog item, and live catalog updates. "
        'Errors are JSON `{"error": code, "detail": sentence}`.',
        lifespan=lifespan,
        docs_url=None,  # routers/docs.py serves it offline
        redoc_url=None,  # ReDoc shows a logo from cdn.redoc.ly: offline, /docs is the one documentation page
    )
    app.add_middleware(BodySizeLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(KeysFirst)
    app.add_middleware(RawItemIds)
    if cors_origins:  # added last, so outermost: preflights and error answers get the headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["X-API-Key", "Content-Type"],
            max_age=600,
        )
    app.state.keys = keys or Keys()
    for router in ROUTERS:
        app.include_router(router)
    docs.mount_assets(app)
    install_error_handlers(app)
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn (each worker process calls it): the index and keys come from the environment."""
    return create_app(os.environ[INDEX_ENV], Keys.from_env(), cors_origins_from_env())


def cors_origins_from_env() -> list[str]:
    """The origins of $FASHIONREC_CORS_ORIGINS (comma-separated; `*` for any); none when unset."""
    return [origin.strip() for origin in os.environ.get(CORS_ENV, "").split(",") if origin.strip()]
