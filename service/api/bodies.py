"""Reading request bodies: content type, size limit, read deadline and JSON, each with
its own error."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from ..domain.errors import (
    BadRequest,
    BodyReadTimeout,
    BodyTooLarge,
    FieldError,
    UnsupportedMediaType,
    ValidationFailed,
)
from ..keys import SETTINGS
from .schemas import MAX_INTEGER_DIGITS, NUMBER_BOUND


async def read_json(request: web.Request) -> Any:
    content_type = request.content_type
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"expected Content-Type: application/json, got {content_type or 'none'}"
        )
    limit = request.client_max_size
    # A declared length over the limit is refused before a byte of the body is read;
    # a chunked body is cut off by aiohttp once it passes the limit.
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(
            f"the declared body of {declared} bytes is larger than the limit of {limit} bytes"
        )
    # One deadline for the whole body: a client trickling it (or never sending it)
    # would otherwise hold the connection and its handler for as long as it likes.
    deadline = request.app[SETTINGS].body_read_timeout_seconds
    try:
        async with asyncio.timeout(deadline):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"the body is larger than the limit of {limit} bytes") from None
    except TimeoutError:
        raise BodyReadTimeout(f"the body did not arrive within {deadline:g} s") from None
    try:
        body = json.loads(
            raw, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int
        )
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("the body is not valid JSON: nested too deeply") from None
    errors = list(unstorable_text(body))
    if errors:
        raise ValidationFailed(errors)
    return body


def storable(text: str) -> bool:
    """False for text PostgreSQL cannot store: NUL (see schemas.STORABLE_PATTERN), or
    lone UTF-16 surrogates (not Unicode text at all)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


UNSTORABLE = "contains a character that cannot be stored (NUL or an unpaired surrogate)"


def unstorable_text(value: Any, pointer: str = "") -> Iterator[FieldError]:
    """Every string (value or key) in a parsed body that PostgreSQL cannot store."""
    if isinstance(value, str):
        if not storable(value):
            yield FieldError(pointer or "/", UNSTORABLE)
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{pointer}/{key}"
            if not storable(key):
                yield FieldError(pointer or "/", f"a key {UNSTORABLE}")
                continue
            yield from unstorable_text(item, child)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from unstorable_text(item, f"{pointer}/{index}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    # Numbers beyond schemas.NUMBER_BOUND are no identifier, score or count of ours (the
    # document says so); refusing them while parsing also keeps PostgreSQL's numeric
    # overflow from turning into a 500.
    value = float(text)
    if not math.isfinite(value) or abs(value) >= NUMBER_BOUND:
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits is out of range")
    return int(text)


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        text=json.dumps(data, separators=(",", ":")),
        status=status,
        content_type="application/json",
        headers=headers,
    )
