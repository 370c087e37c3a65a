"""Every error the API answers is JSON `{"error": code, "detail": sentence}`; bad input is never a 500."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fashionrec.api.models import ErrorOut
from fashionrec.filters import FilterError
from fashionrec.images import ImageError, ImageTooLarge
from fashionrec.index import DuplicateItemError, StorageFullError
from fashionrec.search import UnknownItemError

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
USER_ERRORS: dict[type[Exception], tuple[int, str]] = {  # the first class an error is an instance of wins
    UnknownItemError: (404, "not_found"),
    DuplicateItemError: (409, "conflict"),
    ImageTooLarge: (413, "too_large"),
    ImageError: (422, "invalid_image"),
    FilterError: (422, "invalid_filter"),  # with the closest known names as a hint
    StorageFullError: (507, "insufficient_storage"),
    ValueError: (400, "bad_request"),  # what the core raises for other bad arguments: k < 1
}
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorOut} for status in (400, 401, 403, 404, 409, 413, 422, 507)
}


def error_response(status: int, detail: str, code: str | None = None) -> JSONResponse:
    """The error body; `code` defaults to the status's."""
    return JSONResponse({"error": code or ERROR_CODES.get(status, "error"), "detail": detail}, status_code=status)


def first_error(error: ValidationError) -> str:
    """The first problem pydantic found, as `where: what`."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def install_error_handlers(app: FastAPI) -> None:
    """Every error is JSON `{"error", "detail"}`; the catch-all only guards against bugs."""

    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        response = error_response(error.status_code, str(error.detail))
        response.headers.update(error.headers or {})
        return response

    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in error.errors())
        return error_response(400, problems)

    async def user_error(_: Request, error: Exception) -> JSONResponse:
        status, code = next(answer for kind, answer in USER_ERRORS.items() if isinstance(error, kind))
        return error_response(status, str(error), code)

    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        return error_response(500, f"unexpected {type(error).__name__}; the server log has the details")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    for kind in USER_ERRORS:
        app.add_exception_handler(kind, user_error)
    app.add_exception_handler(Exception, unexpected)
