"""Cursor pagination: opaque cursors over a keyset, so pages stay stable while rows are added."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Annotated, Generic, TypeVar

import msgspec
from litestar.params import QueryParameter

from dropsim.errors import InvalidRequest

T = TypeVar("T")

PageSize = Annotated[int, QueryParameter(ge=1, le=1000, description="items per page")]
"""The `limit` query parameter of every listing."""


class Page(msgspec.Struct, Generic[T]):
    """One page of items; pass `next_cursor` back as `cursor` for the next page (null: the end)."""

    items: list[T]
    next_cursor: str | None


def encode_cursor(last_key: str) -> str:
    return base64.urlsafe_b64encode(last_key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str:
    """The key after which the page starts ('' for the first page)."""
    if not cursor:
        return ""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("cursor is not one this server issued", code="bad_cursor") from None


def page_of(items: list[T], limit: int, key: Callable[[T], str]) -> Page[T]:
    """A page from up to `limit + 1` fetched items: the extra one only says whether more exist."""
    more = len(items) > limit
    items = items[:limit]
    next_cursor = encode_cursor(key(items[-1])) if more and items else None
    return Page(items=items, next_cursor=next_cursor)
