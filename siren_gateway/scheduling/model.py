"""What the scheduler keeps: occurrences of a plan and their states; what a step executor must do."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from siren_gateway.config.plans import PlanConfig
from siren_gateway.runtime.clock import iso_utc

PENDING = ("scheduled", "notified")
FINAL = ("done", "missed", "skipped", "cancelled")


class StepRefused(Exception):
    """The activation engine would not start a step (an emergency holds the sirens, ...)."""


class StepExecutor(Protocol):
    """What the scheduler needs from activations; the real one wraps the ActivationEngine."""

    async def start(self, plan: PlanConfig, occurrence_id: int, step: int, start_at: float,
                    tag: str) -> int: ...

    async def find(self, tag: str) -> int | None: ...

    async def finished(self, activation_ids: list[int]) -> bool: ...

    async def cancel(self, activation_ids: list[int]) -> None: ...

    async def reports(self, activation_ids: list[int]) -> dict[int, dict[str, Any]]: ...


@dataclass
class Occurrence:
    id: int
    plan_id: str
    kind: str
    scheduled_at: float
    local_date: str
    state: str
    notices: list[float] = field(default_factory=list)
    fired_at: float | None = None
    base_at: float | None = None
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    ended_at: float | None = None
    note: str = ""

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Occurrence:
        (id_, plan_id, kind, scheduled_at, local_date, state, notices, fired_at, base_at, steps,
         ended_at, note) = row
        return cls(id_, plan_id, kind, scheduled_at, local_date, state, json.loads(notices),
                   fired_at, base_at, json.loads(steps), ended_at, note)

    def public(self, plan: PlanConfig | None) -> dict[str, Any]:
        zone = plan.zone if plan else UTC
        return {
            "id": self.id, "plan_id": self.plan_id, "kind": self.kind, "state": self.state,
            "scheduled_at": iso_utc(self.scheduled_at),
            "scheduled_local": datetime.fromtimestamp(self.scheduled_at, zone).isoformat(),
            "local_date": self.local_date, "notices_sent_s": self.notices,
            "fired_at": iso_utc(self.fired_at), "started_at": iso_utc(self.base_at),
            "late_s": round(self.base_at - self.scheduled_at, 3) if self.base_at else None,
            "steps": [self.steps[k] for k in sorted(self.steps, key=int)],
            "ended_at": iso_utc(self.ended_at), "note": self.note,
        }




def step_tag(occurrence_id: int, step: int) -> str:
    """Written on the step's activation (as its requester): how a restart finds it again."""
    return f"schedule:occurrence-{occurrence_id}:step-{step}"


def spoken_duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{max(0.0, seconds) / 60:.0f} minutes"
