"""POST /api/apv/validate: run the validation patterns on a payload, store nothing."""

from __future__ import annotations

from aiohttp import web

from ..auth import require
from ..domain.validation import Result
from ..keys import REVIEWS
from . import schemas
from .bodies import json_response, read_json

routes = web.RouteTableDef()


@routes.post("/api/apv/validate", name="validate_apv")
async def validate_apv(request: web.Request) -> web.Response:
    require(request, "producer")
    body = await read_json(request)
    schemas.validate(schemas.APV_VALIDATION_VALIDATOR, body)
    results = request.app[REVIEWS].validate(body)
    return json_response(
        {
            "valid": all(r.result is Result.VALID for r in results),
            "results": [r.as_json() for r in results],
        }
    )
