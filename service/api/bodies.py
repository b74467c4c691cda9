"""Reading request bodies: content type, size limit and JSON, each with its own error."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..domain.errors import BadRequest


async def read_json(request: web.Request) -> Any:
    content_type = request.content_type
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise BadRequest(
            f"expected Content-Type: application/json, got {content_type or 'none'}", status=415
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest(
            f"the body is larger than the limit of {request.client_max_size} bytes", status=413
        ) from None
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        text=json.dumps(data, separators=(",", ":")),
        status=status,
        content_type="application/json",
        headers=headers,
    )
