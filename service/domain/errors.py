"""Domain exceptions. They say what went wrong in the domain's words; the API layer
(service/api/problems.py) decides how each one looks over HTTP."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str  # JSON pointer into the request body, e.g. "/package/name"
    message: str


class ValidationFailed(DomainError):
    """Input that was read but is not acceptable. ``location`` says where it came from:
    the request ``body`` (fields are JSON pointers) or the ``query`` (parameter names)."""

    def __init__(self, errors: Sequence[FieldError], *, location: str = "body") -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = list(errors)
        self.location = location


class BadRequest(DomainError):
    """The request could not be read at all (malformed JSON, wrong content type)."""

    def __init__(self, detail: str, *, status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class UnsupportedMediaType(BadRequest):
    def __init__(self, detail: str) -> None:
        super().__init__(detail, status=415)


class BodyTooLarge(BadRequest):
    def __init__(self, detail: str) -> None:
        super().__init__(detail, status=413)


class BodyReadTimeout(BadRequest):
    """The client did not send the body it announced within the read deadline."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, status=408)


class ReviewNotFound(DomainError):
    def __init__(self, review_id: str) -> None:
        super().__init__(f"no review with id {review_id}")
        self.review_id = review_id


class AlreadyDecided(DomainError):
    def __init__(self, review_id: str, status: str, decision: str) -> None:
        super().__init__(f"review {review_id} is {status}; '{decision}' is not allowed from there")
        self.review_id = review_id
        self.status = status
        self.decision = decision


class IdempotencyKeyReused(DomainError):
    """An Idempotency-Key already stored with a different decision on this review."""

    def __init__(self, review_id: str) -> None:
        super().__init__(
            f"this Idempotency-Key was already used for a different decision on review "
            f"{review_id}; send a new key for a new request"
        )
        self.review_id = review_id


class ApvConflict(DomainError):
    def __init__(self, apv_id: str, review_id: str) -> None:
        super().__init__(
            f"apv_id {apv_id} was already submitted with a different payload (review {review_id})"
        )
        self.apv_id = apv_id
        self.review_id = review_id


class Unauthenticated(DomainError):
    pass


class Forbidden(DomainError):
    def __init__(self, role: str) -> None:
        super().__init__(f"this API key lacks the '{role}' role")
        self.role = role
