"""What an activation is: the request, its targets, each siren's result and the statuses
that prove (or fail to prove) a siren sounded; the refusal with its reason.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal

from siren_gateway.runtime.clock import iso_utc

ActivationClass = Literal["emergency", "exercise", "test"]
Action = Literal["sound", "silent_test"]
ALWAYS_ALLOWED_SIGNALS = frozenset({"all_clear"})
EXCLUSION_REASONS = {"inhibited": "inhibited (maintenance)",
                     "disarmed": "disarmed by an operator (maintenance)"}
MAX_START_AHEAD_S = 24 * 3600


class Status(enum.StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    SOUNDED = "sounded"
    PASSED = "passed"
    FAILED = "failed"
    NO_FEEDBACK = "no_feedback"
    EXCLUDED = "excluded"
    PREEMPTED = "preempted"
    CANCELLED = "cancelled"


FINAL = frozenset({Status.SOUNDED, Status.PASSED, Status.FAILED, Status.NO_FEEDBACK,
                   Status.EXCLUDED, Status.PREEMPTED, Status.CANCELLED})




@dataclass(frozen=True)
class Targets:
    sirens: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()
    all: bool = False


@dataclass(frozen=True)
class ActivationRequest:
    targets: Targets
    klass: ActivationClass
    action: Action = "sound"
    signal: str | None = None
    start_at: datetime | None = None
    confirmation_token: str | None = None
    # A siren busy with another activation refuses the whole request (an operator hears 409
    # and decides), or, for a scheduled step, is left out and reported: one siren sounding
    # someone's growl test must not stop a district's 9·18 test everywhere else.
    busy_sirens: Literal["refuse", "skip"] = "refuse"


@dataclass(slots=True)  # one per siren and activation: thousands held at once
class SirenResult:
    siren_id: str
    status: Status = Status.PENDING
    reason: str = ""
    planned_start: float | None = None  # epoch seconds, the moment it should sound
    sent_at: float | None = None
    accepted_at: float | None = None
    confirmed_at: float | None = None
    clock_skew_s: float | None = None
    started_by_gateway: bool = False  # clock out of tolerance: commanded at the moment
    activation_id: int = 0
    klass: str = ""
    # Kept across re-sends and restarts: an MQTT device acts on one id once.
    command_id: str = ""
    sends: int = 0  # how often the command was put on the wire (re-sends after read-back)
    # What was last written to disk, so a flush writes only the results that changed.
    written: tuple[Any, ...] | None = field(default=None, repr=False, compare=False)

    def record(self) -> dict[str, Any]:
        """The stored form (also what `SirenResult(**record)` reads back)."""
        out = {name: getattr(self, name) for name in RESULT_FIELDS}
        out["status"] = self.status.value
        return out

    def as_dict(self) -> dict[str, Any]:
        out = self.record()
        for key in ("planned_start", "sent_at", "accepted_at", "confirmed_at"):
            value = out[key]
            out[key] = datetime.fromtimestamp(value, UTC).isoformat() if value else None
        if self.confirmed_at and self.planned_start:
            out["confirm_latency_s"] = round(self.confirmed_at - self.planned_start, 3)
        return out


RESULT_FIELDS = tuple(f.name for f in fields(SirenResult) if f.name != "written")


@dataclass
class Activation:
    id: int
    created_at: float
    requested_by: str
    klass: ActivationClass
    action: Action
    signal: str | None
    start_at: float
    sirens: list[str]
    results: dict[str, SirenResult]
    state: str = "running"  # running, completed, cancelled, interrupted
    ended_at: float | None = None
    interrupted_at: float | None = None
    all_accepted_at: float | None = None
    preempted_by: list[int] = field(default_factory=list)
    repeat_of: int | None = None  # an emergency sent again on purpose while its twin ran
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict, repr=False)

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in Status}
        for result in self.results.values():
            out[result.status.value] += 1
        return out

    def report(self, with_sirens: bool = True) -> dict[str, Any]:
        counts = self.counts()
        commanded = len(self.results) - counts[Status.EXCLUDED]
        confirmed = counts[Status.SOUNDED] + counts[Status.PASSED]
        iso = iso_utc
        out: dict[str, Any] = {
            "id": self.id,
            "class": self.klass,
            "action": self.action,
            "signal": self.signal,
            "requested_by": self.requested_by,
            "created_at": iso(self.created_at),
            "start_at": iso(self.start_at),
            "state": self.state,
            "ended_at": iso(self.ended_at),
            "interrupted_at": iso(self.interrupted_at),
            "all_accepted_at": iso(self.all_accepted_at),
            "preempted_by": list(self.preempted_by),
            "repeat_of": self.repeat_of,
            "counts": counts,
            "targeted": len(self.results),
            "commanded": commanded,
            # The share of commanded sirens that proved they sounded (鸣响率).
            "sounding_rate": round(confirmed / commanded, 4) if commanded else None,
        }
        if with_sirens:
            out["sirens"] = [self.results[s].as_dict() for s in self.sirens]
        return out


class Delivery(enum.Enum):
    """What a read-back says about a command whose reply was lost."""

    TAKEN = "taken"  # the device reports the command's sequence
    NOT_TAKEN = "not taken"  # the device answered with another sequence: it never got it
    UNKNOWN = "unknown"  # no answer: it may or may not have it


def sequence_of(activation_id: int) -> int:
    """The 16-bit sequence an activation's commands carry (never 0, which means none)."""
    return activation_id & 0xFFFF or 1


def describe_request(request: ActivationRequest) -> dict[str, Any]:
    return {"class": request.klass, "action": request.action, "signal": request.signal,
            "targets": asdict(request.targets),
            "start_at": request.start_at.isoformat() if request.start_at else None,
            "with_confirmation_token": request.confirmation_token is not None}
