"""ASGI middleware that must act before a route reads the body: size limit, keys first, raw item ids."""

from __future__ import annotations

import re

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fashionrec.api.dependencies import Keys, read_key_error, write_key_error
from fashionrec.api.errors import error_response

ITEM_PATH = re.compile(r"(/v1/items/)([^/]+)(/image|/similar)?")  # on the raw path: an id's %2F is no '/'


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
    by the client) is one path segment; the routes decode it (dependencies.path_item_id)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (raw := scope.get("raw_path")):
            match = ITEM_PATH.fullmatch(raw.decode("latin-1").partition("?")[0])
            if match:
                scope = scope | {"path": "".join(part or "" for part in match.groups())}
        await self.app(scope, receive, send)
