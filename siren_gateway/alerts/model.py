"""An alert (one rule on one siren, or site-wide) and its lifecycle: active, acknowledged, cleared."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from siren_gateway.runtime.clock import iso_utc


@dataclass(slots=True)  # hundreds held (every active one and the recent cleared ones)
class Alert:
    id: int
    rule: str
    siren_id: str | None
    zones: list[str]
    severity: str
    message: str
    state: str = "active"  # active, acknowledged, cleared
    raised_at: float = 0.0
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    comment: str | None = None
    cleared_at: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    subject: str | None = None  # what a siren-less alert is about (schedule:<plan id>)

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "rule": self.rule, "siren_id": self.siren_id, "zones": self.zones,
                "severity": self.severity, "message": self.message, "state": self.state,
                "raised_at": iso_utc(self.raised_at), "acknowledged_at": iso_utc(self.acknowledged_at),
                "acknowledged_by": self.acknowledged_by, "comment": self.comment,
                "cleared_at": iso_utc(self.cleared_at), "history": list(self.history),
                "subject": self.subject}


