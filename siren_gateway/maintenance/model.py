"""A work order: one repair job on one siren, from the fault to the siren's own proof it is fixed.

    open -> assigned -> in_progress -> resolved -> verified
                 \\___________\\____________\\-> (reopened -> assigned / in_progress / resolved)

People move an order up to `resolved`; only the siren moves it to `verified` (its faults gone for
the settling time and, for the audio chain, a passing silent test) or back to `reopened` with the
evidence. A person may reopen a resolved or verified order, or cancel one that is not resolved.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from siren_gateway.runtime.clock import iso_utc

Priority = Literal["low", "normal", "high", "urgent"]
PRIORITY_OF_SEVERITY: dict[str, Priority] = {"info": "low", "minor": "normal", "major": "high",
                                             "critical": "urgent"}


class OrderState(enum.StrEnum):
    OPEN = "open"
    ASSIGNED = "assigned"
    IN_PROGRESS = "in_progress"
    RESOLVED = "resolved"
    VERIFIED = "verified"
    REOPENED = "reopened"
    CANCELLED = "cancelled"


CLOSED = frozenset({OrderState.VERIFIED, OrderState.CANCELLED})
_WORKING = {OrderState.ASSIGNED, OrderState.IN_PROGRESS, OrderState.RESOLVED,
            OrderState.CANCELLED}
# The moves a person may make; `verified` and the automatic reopen belong to the verifier.
MANUAL_MOVES: dict[OrderState, frozenset[OrderState]] = {
    OrderState.OPEN: frozenset(_WORKING),
    OrderState.ASSIGNED: frozenset(_WORKING | {OrderState.OPEN}) - {OrderState.ASSIGNED},
    OrderState.IN_PROGRESS: frozenset({OrderState.ASSIGNED, OrderState.RESOLVED,
                                       OrderState.CANCELLED}),
    OrderState.REOPENED: frozenset(_WORKING),
    OrderState.RESOLVED: frozenset({OrderState.REOPENED}),
    OrderState.VERIFIED: frozenset({OrderState.REOPENED}),
    OrderState.CANCELLED: frozenset(),
}


@dataclass(slots=True)
class Verification:
    """Where the verifier stands with a resolved order (kept, so a restart goes on from it)."""

    clear_since: float | None = None  # the order's faults last seen gone from this moment
    test_activation_id: int | None = None  # the silent test asked of the siren


@dataclass(slots=True)
class WorkOrder:
    id: int
    siren_id: str
    cause: str
    priority: Priority
    state: OrderState
    created_at: float
    created_by: str
    faults: list[str] = field(default_factory=list)  # what the siren must stop reporting
    audio: bool = False  # touches the audio chain: a silent test must pass
    alert_id: int | None = None
    rule: str | None = None
    assignee: str | None = None
    due_at: float | None = None
    resolved_at: float | None = None
    verified_at: float | None = None
    evidence: dict[str, Any] | None = None  # what the siren showed at the last verdict
    notes: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    verification: Verification = field(default_factory=Verification)

    @property
    def closed(self) -> bool:
        return self.state in CLOSED

    def record(self) -> dict[str, Any]:
        """The stored form; `from_record` reads it back."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["state"] = self.state.value
        out["verification"] = {"clear_since": self.verification.clear_since,
                               "test_activation_id": self.verification.test_activation_id}
        return out

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> WorkOrder:
        data = dict(data)
        data["state"] = OrderState(data["state"])
        data["verification"] = Verification(**data.get("verification") or {})
        return cls(**data)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id, "siren_id": self.siren_id, "cause": self.cause,
            "priority": self.priority, "state": self.state.value,
            "created_at": iso_utc(self.created_at), "created_by": self.created_by,
            "faults": list(self.faults), "audio": self.audio, "alert_id": self.alert_id,
            "rule": self.rule, "assignee": self.assignee, "due_at": iso_utc(self.due_at),
            "resolved_at": iso_utc(self.resolved_at), "verified_at": iso_utc(self.verified_at),
            "evidence": self.evidence, "notes": list(self.notes), "history": list(self.history),
            "moves": sorted(state.value for state in MANUAL_MOVES[self.state]),
            "verification": {
                "clear_since": iso_utc(self.verification.clear_since),
                "test_activation_id": self.verification.test_activation_id},
        }


@dataclass(slots=True)
class InspectionTask:
    """One siren's part of one occurrence of an inspection plan."""

    id: int
    plan_id: str
    siren_id: str
    scheduled_at: float  # the occurrence's instant
    due_at: float
    checklist: list[dict[str, Any]]  # the plan's items when the task was made: id, text, text_zh
    state: Literal["open", "done"] = "open"
    overdue: bool = False
    completed_at: float | None = None
    completed_by: str | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # item id -> result, note
    notes: str = ""
    evidence: dict[str, Any] | None = None  # what the siren showed at completion

    def record(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def public(self) -> dict[str, Any]:
        return self.record() | {
            "scheduled_at": iso_utc(self.scheduled_at), "due_at": iso_utc(self.due_at),
            "completed_at": iso_utc(self.completed_at)}
