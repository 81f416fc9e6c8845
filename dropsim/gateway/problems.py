"""Every error leaves the gateway as an RFC 9457 problem body with a stable `code`."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from dropsim.errors import DomainError

PROBLEM_JSON = "application/problem+json"
INTERNAL_ERROR_DETAIL = "something went wrong on our side; it has been logged"
logger = logging.getLogger("dropsim.errors")

_CODES = {
    400: "invalid_request",
    401: "authentication_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


def problem_body(
    status: int, code: str, detail: str, *, title: str | None = None, **extra: Any
) -> bytes:
    """The JSON of a problem (for the routes that answer without a Litestar `Response`)."""
    return msgspec.json.encode(
        {
            "type": f"https://dropsim.dev/problems/{code.replace('_', '-')}",
            "title": title or HTTPStatus(status).phrase,
            "status": status,
            "code": code,
            "detail": detail,
            **extra,
        },
        enc_hook=str,  # (a validation error's extra may hold any value: its text will do)
    )


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[bytes]:
    """A problem+json response."""
    return Response(
        problem_body(status, code, detail, title=title, **extra),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _domain(_: Request[Any, Any, Any], exc: DomainError) -> Response[bytes]:
    return problem(exc.status, exc.code, exc.detail, title=exc.title)


def _validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    errors = exc.extra if isinstance(exc.extra, list) else []
    detail = str(exc.detail)
    if errors:
        first = errors[0]
        where = first.get("key") if isinstance(first, dict) else None
        message = first.get("message") if isinstance(first, dict) else None
        if message:
            detail = f"{where}: {message}" if where else str(message)
    return problem(400, "invalid_request", detail, title="Invalid request", errors=errors)


def _http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    code = _CODES.get(status, "error")
    detail = str(exc.detail) if exc.detail else HTTPStatus(status).phrase
    if status == 400 and "JSON" in detail:
        code = "malformed_json"
    return problem(status, code, detail, headers=exc.headers)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "internal_error", INTERNAL_ERROR_DETAIL)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    DomainError: _domain,
    ValidationException: _validation,
    HTTPException: _http,
    Exception: _unexpected,
}

__all__ = [
    "EXCEPTION_HANDLERS",
    "INTERNAL_ERROR_DETAIL",
    "PROBLEM_JSON",
    "MediaType",
    "problem",
    "problem_body",
]
