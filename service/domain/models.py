"""The review lifecycle: severities, states, decisions and which decision may follow
which state. The one source of these names: the JSON schemas, the OpenAPI document,
the query filters and the statistics all read them from here."""

from __future__ import annotations

from enum import StrEnum


class Severity(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class Status(StrEnum):
    PENDING = "pending"
    ESCALATED = "escalated"
    APPROVED = "approved"
    REJECTED = "rejected"
    MODIFIED = "modified"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


class Decision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    MODIFY = "modify"
    ESCALATE = "escalate"

    @property
    def target(self) -> Status:
        return _TARGET[self]

    @property
    def allowed_from(self) -> tuple[Status, ...]:
        # An escalation is a hand-over to a senior reviewer: only once, from pending.
        if self is Decision.ESCALATE:
            return (Status.PENDING,)
        return (Status.PENDING, Status.ESCALATED)

    # The decision request's JSON schema is built from these two (api/schemas.py), so
    # the rule is stated once, here, and enforced before a request reaches the domain.
    @property
    def needs_justification(self) -> bool:
        return self is not Decision.APPROVE

    @property
    def needs_modifications(self) -> bool:
        return self is Decision.MODIFY


FINAL_STATUSES = frozenset({Status.APPROVED, Status.REJECTED, Status.MODIFIED})
# The states a review waits in for a human, in the order a decision moves through them.
OPEN_STATUSES = (Status.PENDING, Status.ESCALATED)

_TARGET = {
    Decision.APPROVE: Status.APPROVED,
    Decision.REJECT: Status.REJECTED,
    Decision.MODIFY: Status.MODIFIED,
    Decision.ESCALATE: Status.ESCALATED,
}
