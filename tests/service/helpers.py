"""Payload builders shared by the service tests."""

from __future__ import annotations

import copy
import uuid
from typing import Any

from service.api.openapi import EXAMPLE_SUBMISSION


def submission(**changes: Any) -> dict[str, Any]:
    """A valid APV submission with a fresh apv_id; keyword arguments replace fields."""
    body = copy.deepcopy(EXAMPLE_SUBMISSION)
    body["apv_id"] = f"apv-{uuid.uuid4().hex[:12]}"
    body.update(changes)
    return body
