"""REST API: a thin FastAPI surface over `Recommender`, for shops (run it with `fashionrec serve`).

Everything CPU-bound (decoding, embedding, searching, reloading) runs in worker threads, never on
the event loop, in one thread per core for searches and one per core for image work: more threads
only fight over the cores and the GIL, and a burst of uploads cannot pile up decoded images in
memory. Each process holds its own in-memory index and reloads it when another process (another
worker, a rebuild) commits to the index's SQLite database.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import Annotated, TypeVar
from urllib.parse import quote, unquote

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, StringConstraints, TypeAdapter, ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fashionrec import __version__
from fashionrec.garment import Method
from fashionrec.images import ImageError, ImageTooLarge, parse_box, web_image
from fashionrec.index import DuplicateItemError, StorageFullError
from fashionrec.search import Match, Recommender, UnknownItemError

INDEX_ENV = "FASHIONREC_INDEX"
WRITE_KEY_ENV = "FASHIONREC_API_KEY"
READ_KEY_ENV = "FASHIONREC_READ_KEY"
MAX_UPLOAD_BYTES = 10 * 2**20
MAX_BODY_BYTES = MAX_UPLOAD_BYTES + 2**20  # the image plus multipart framing and the metadata field
MAX_K = 100
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ITEM_PATH = re.compile(r"(/v1/items/)([^/]+)(/image|/similar)?")  # on the raw path: an id's %2F is no '/'
DOCS_ASSETS = "/docs-assets"  # Swagger UI from the fastapi-offline package: /docs works offline

T = TypeVar("T")


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


ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid_image",
    500: "internal_error",
    507: "insufficient_storage",
}
USER_ERRORS: dict[type[Exception], int] = {
    UnknownItemError: 404,
    DuplicateItemError: 409,
    ImageTooLarge: 413,
    ImageError: 422,
    StorageFullError: 507,
    ValueError: 400,  # what the core raises for bad arguments: unknown filter column, k < 1
}
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorOut} for status in (400, 401, 403, 404, 409, 413, 422, 507)
}
Metadata = TypeAdapter(
    Annotated[
        dict[
            Annotated[str, StringConstraints(min_length=1, max_length=100)],
            Annotated[str, StringConstraints(max_length=2000)],
        ],
        Field(max_length=64),  # columns: every new one widens every product's row (search.MAX_COLUMNS)
    ]
)


def error_response(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"error": ERROR_CODES.get(status, "error"), "detail": detail}, status_code=status)


def read_secret(name: str) -> str | None:
    """A key from $NAME, or from the file named by $NAME_FILE (e.g. a Docker or systemd secret)."""
    value = os.environ.get(name)
    if not value and os.environ.get(f"{name}_FILE"):
        value = Path(os.environ[f"{name}_FILE"]).read_text().strip()
    return value or None


@dataclass(frozen=True)
class Keys:
    """API keys: `write` enables POST/DELETE /v1/items; `read`, if set, is required by the read endpoints too."""

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


def require_write_key(request: Request, given: ApiKey) -> None:
    if error := write_key_error(request.app.state.keys, given):
        raise error


def require_read_key(request: Request, given: ApiKey) -> None:
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
CropQuery = Annotated[
    str | None,
    Query(
        description="Search only this part of the photo: `left,top,right,bottom` as fractions of its width and "
        "height, e.g. `0,0.45,1,1` for the lower half.",
        examples=["0.1,0.2,0.9,0.8"],
    ),
]
FilterQuery = Annotated[
    list[str],
    Query(
        description="Metadata filter `column:value`; repeat it. Several values of one column mean any of them, "
        "different columns must all match.",
        examples=[["gender:Men", "articleType:Shirts", "articleType:Tshirts"]],
    ),
]


def parse_filters(raw: list[str]) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for entry in raw:
        column, sep, value = entry.partition(":")
        if not sep or not column:
            raise ValueError(f"filter {entry!r} is not column:value")
        filters.setdefault(column, []).append(value)
    return filters


async def read_upload(upload: UploadFile) -> bytes:
    """The uploaded file's bytes, refused past the size limit (its name and content type are ignored)."""
    data = await upload.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageTooLarge("uploaded image", f"file too large (limit {MAX_UPLOAD_BYTES // 2**20} MiB)")
    return data


async def run_image_work(request: Request, work: Callable[..., T], *args: object) -> T:
    """Run decoding and embedding in a thread, at most one per core at a time (searches are not limited)."""
    return await anyio.to_thread.run_sync(lambda: work(*args), limiter=request.app.state.image_threads)


def image_url(item_id: str) -> str:
    return f"/v1/items/{quote(item_id, safe='')}/image"


def match_out(match: Match) -> MatchOut:
    return MatchOut(
        id=match.id,
        rank=match.rank,
        score=round(match.score, 6),
        metadata=match.metadata,
        image_url=image_url(match.id),
        variants=list(match.variants),
    )


reads = APIRouter(prefix="/v1", dependencies=[Depends(require_read_key)], responses=ERROR_RESPONSES)
writes = APIRouter(prefix="/v1", dependencies=[Depends(require_write_key)], responses=ERROR_RESPONSES)
public = APIRouter(prefix="/v1")


@reads.post("/search", tags=["search"])
async def search(
    request: Request,
    recommender: Rec,
    image: Annotated[UploadFile, File(description="Any photo of a garment (JPEG, PNG, WebP, GIF, BMP, TIFF).")],
    k: TopK = 10,
    filter: FilterQuery = [],  # noqa: B006 (FastAPI copies defaults)
    colour_weight: ColourWeight = 0.0,
    crop: CropQuery = None,
    isolate: Annotated[
        Method,
        Query(
            description="Cut the garment out of a busy photo first: `border` (cheap, helps colour) or `u2netp` "
            "(a segmentation model: best on scenes, about 60 ms more per photo; worse on plain product shots)."
        ),
    ] = "none",
    collapse: CollapseQuery = True,
    diversity: DiversityQuery = 0.0,
) -> MatchesOut:
    """The k catalog products most similar to an uploaded photo, or to the `crop` part of it."""
    filters = parse_filters(filter)
    box = parse_box(crop) if crop is not None else None
    query = await run_image_work(request, recommender.embed_image, await read_upload(image), box, isolate)
    query = replace(query, colour_weight=colour_weight)
    found = await run_in_threadpool(recommender.similar, query, k, filters, None, collapse, diversity)
    return MatchesOut(results=[match_out(m) for m in found])


def path_item_id(item_id: str) -> str:
    """The item id of the path: RawItemIds left it percent-encoded, so an id may hold any character."""
    return unquote(item_id)


ItemId = Annotated[str, Depends(path_item_id)]


@reads.get("/items/{item_id}", tags=["items"])
async def get_item(item_id: ItemId, recommender: Rec) -> ItemOut:
    """One product's metadata."""
    item = recommender.item(item_id)
    return ItemOut(id=item.id, metadata=item.metadata, image_url=image_url(item.id))


@reads.get(
    "/items/{item_id}/image",
    tags=["items"],
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}}, "description": "The image bytes."}},
)
def get_item_image(item_id: ItemId, recommender: Rec) -> Response:
    """A product's image, as stored in the catalog (or uploaded); as 8-bit PNG if browsers could not show it."""
    try:
        data, media_type = web_image(recommender.image_bytes(item_id), f"item {item_id!r}")
    except FileNotFoundError:
        raise HTTPException(404, f"the image of item {item_id!r} is missing from the catalog") from None
    except ImageError as error:
        raise HTTPException(404, f"the image of item {item_id!r} cannot be shown: {error.reason}") from None
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=300"}
    return Response(data, media_type=media_type, headers=headers)


@reads.get("/items/{item_id}/similar", tags=["search"])
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
    found = recommender.similar_to_item(item_id, k, parse_filters(filter), colour_weight, collapse, diversity)
    return MatchesOut(results=[match_out(m) for m in found])


@writes.post("/items", tags=["catalog updates"], status_code=201)
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
        raise HTTPException(400, f"metadata must be a JSON object of text values: {_first_error(error)}") from None
    data = await read_upload(image)
    item = await run_image_work(request, recommender.add_item, id, data, columns)
    response.headers["Location"] = f"/v1/items/{quote(item.id, safe='')}"
    return ItemOut(id=item.id, metadata=item.metadata, image_url=image_url(item.id))


@writes.delete("/items/{item_id}", tags=["catalog updates"], status_code=204, response_class=Response)
def delete_item(item_id: ItemId, recommender: Rec) -> Response:
    """Remove a product from the index (and its image, if it was uploaded)."""
    recommender.remove_item(item_id)
    return Response(status_code=204)


@public.get("/health", tags=["service"])
def health(recommender: Rec) -> HealthOut:
    """Liveness and the number of products served; never needs a key."""
    return HealthOut(status="ok", items=len(recommender))


@reads.get("/info", tags=["service"])
def info(recommender: Rec) -> InfoOut:
    """What the index is: encoder, counts, format (no server paths)."""
    return InfoOut.model_validate(recommender.info() | {"version": __version__})


class BodySizeLimit:
    """Refuse request bodies over `limit` bytes with a JSON 413 before they are buffered or spooled to disk.

    A declared Content-Length is refused unread; a body sent without one (chunked) is cut off as soon
    as it passes the limit. (FastAPI's own `max_body_size` answers in plain text, not our error format.)
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            await error_response(413, self.detail)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, self.detail)  # reaches the error handlers like any other
            return message

        await self.app(scope, limited_receive, send)

    @property
    def detail(self) -> str:
        return f"request body too large (limit {self.limit // 2**20} MiB)"


class KeysFirst:
    """Check the API key of a write (or of a search, where reading needs a key) on the headers, before the body
    is read: an unauthorised client cannot make the server take in 10 MB first. The routes check again."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            keys: Keys = scope["app"].state.keys
            given = Headers(scope=scope).get("x-api-key")
            check = {"/v1/items": write_key_error, "/v1/search": read_key_error}.get(scope["path"].rstrip("/"))
            if check and (error := check(keys, given)):
                await error_response(error.status_code, str(error.detail))(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RawItemIds:
    """Route /v1/items/ID[/image|/similar] on the raw path, so an id holding '/', '?' or '%' (percent-encoded
    by the client) is one path segment; the routes decode it (path_item_id)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (raw := scope.get("raw_path")):
            match = ITEM_PATH.fullmatch(raw.decode("latin-1").partition("?")[0])
            if match:
                scope = scope | {"path": "".join(part or "" for part in match.groups())}
        await self.app(scope, receive, send)


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def _install_error_handlers(app: FastAPI) -> None:
    """Every error is JSON `{"error", "detail"}`; the catch-all only guards against bugs."""

    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        response = error_response(error.status_code, str(error.detail))
        response.headers.update(error.headers or {})
        return response

    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in error.errors())
        return error_response(400, problems)

    async def user_error(_: Request, error: Exception) -> JSONResponse:
        status = next(s for kind, s in USER_ERRORS.items() if isinstance(error, kind))
        return error_response(status, str(error))

    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        return error_response(500, f"unexpected {type(error).__name__}; the server log has the details")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    for kind in USER_ERRORS:
        app.add_exception_handler(kind, user_error)
    app.add_exception_handler(Exception, unexpected)


def create_app(index_dir: str | Path, keys: Keys | None = None) -> FastAPI:
    """The API over one index directory; the model is loaded now, so the first upload does not wait."""
    # Concurrent requests already use every core: more threads per search or embedding would only
    # oversubscribe them (a single search on the full catalog under load: 45 ms with 2 threads, 18 ms with 1).
    recommender = Recommender.open(index_dir, threads=1)  # requests embed and search side by side, one core each
    recommender.encoder  # noqa: B018 (loads it)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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
        docs_url=None,
        redoc_url=None,  # ReDoc shows a logo from cdn.redoc.ly: offline, /docs is the one documentation page
    )
    app.add_middleware(BodySizeLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(KeysFirst)
    app.add_middleware(RawItemIds)
    app.state.recommender = recommender
    app.state.keys = keys or Keys()
    for router in (reads, writes, public):
        app.include_router(router)
    _install_docs(app)
    _install_error_handlers(app)
    return app


def _install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) with its script and style served from this server: no CDN, works offline."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")
    title = f"{app.title} API"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=title,
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
        )


def app_from_env() -> FastAPI:
    """Factory for uvicorn (each worker process calls it): the index and keys come from the environment."""
    return create_app(os.environ[INDEX_ENV], Keys.from_env())
