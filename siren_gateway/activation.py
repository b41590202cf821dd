"""Activations: sound a signal (or run a silent test) on many sirens and prove what happened.

An activation resolves its targets, applies the safety rules, then gives every siren its own
task that delivers the command and watches the siren's own feedback until it reaches one of:

    sounded      the controller reports sounding *and* sounding current above the threshold
    passed       (silent test) the controller reports its audio chain checked out
    failed       the controller refused, reported a failure, an audio fault, or no current
    no_feedback  no confirmation in time (unreachable, silent, or the gateway restarted)
    excluded     inhibited (in maintenance): never commanded
    preempted    an emergency took the siren over before this activation was confirmed
    cancelled    the operator cancelled before confirmation

Commands carry a start time a little ahead (sync_lead_s) so that all sirens start together on
their own clocks; a siren whose clock is off by more than the tolerance is instead commanded
to start "now" by the gateway at the start moment, and flagged. Nothing is ever re-sent after
a restart: a siren that may have sounded is never sounded twice by mistake.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import math
import random
import secrets
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from siren_gateway.audit import AuditLog
from siren_gateway.auth import Principal
from siren_gateway.bus import Bus, SirenResultFinal
from siren_gateway.config import ActivationConfig, Site
from siren_gateway.fleet import Fleet
from siren_gateway.links.base import SirenLink
from siren_gateway.model import CERTAINLY_NOT_DELIVERED, Command, CommandKind, LinkError, Sample
from siren_gateway.storage import Database
from siren_gateway.tasks import cancel_and_wait

log = logging.getLogger(__name__)

ActivationClass = Literal["emergency", "exercise", "test"]
Action = Literal["sound", "silent_test"]
ALWAYS_ALLOWED_SIGNALS = frozenset({"all_clear"})
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


class ActivationError(Exception):
    """A refused request: the HTTP status and a sentence that says why."""

    def __init__(self, status_code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.extra = extra


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


@dataclass
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

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status.value
        for key in ("planned_start", "sent_at", "accepted_at", "confirmed_at"):
            value = out[key]
            out[key] = datetime.fromtimestamp(value, UTC).isoformat() if value else None
        if self.confirmed_at and self.planned_start:
            out["confirm_latency_s"] = round(self.confirmed_at - self.planned_start, 3)
        return out


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
        iso = _iso
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
            "counts": counts,
            "targeted": len(self.results),
            "commanded": commanded,
            # The share of commanded sirens that proved they sounded (鸣响率).
            "sounding_rate": round(confirmed / commanded, 4) if commanded else None,
        }
        if with_sirens:
            out["sirens"] = [self.results[s].as_dict() for s in self.sirens]
        return out


@dataclass
class _PendingConfirmation:
    principal: str
    key: tuple[Any, ...]
    expires_at: float


@dataclass
class _Occupation:
    activation_id: int
    klass: ActivationClass
    until: float


def _clock_skew(sample: Sample | None) -> float | None:
    if sample is None or sample.device_time is None:
        return None
    return sample.device_time.timestamp() - sample.received_at.timestamp()


class ActivationEngine:
    def __init__(self, site: Site, fleet: Fleet, links: dict[str, SirenLink], db: Database,
                 audit: AuditLog, bus: Bus | None = None) -> None:
        self.site = site
        self.bus = bus
        self.fleet = fleet
        self.links = links
        self.db = db
        self.audit = audit
        self.config: ActivationConfig = site.config.activation
        self.activations: dict[int, Activation] = {}
        self._next_id = 1
        self._confirmations: dict[str, _PendingConfirmation] = {}
        self._recent: dict[tuple[Any, ...], tuple[int, float]] = {}  # duplicate suppression
        self._occupied: dict[str, _Occupation] = {}
        self._dirty: set[int] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one request decides at a time: no races between rules
        self._closers: set[asyncio.Task[None]] = set()
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._recover()
        self._flusher = asyncio.create_task(self._flush_forever(), name="activation store")

    async def stop(self) -> None:
        self._stopping = True  # cancelled trackers must not be mistaken for finished ones
        tasks = [t for a in self.activations.values() for t in a.tasks.values() if not t.done()]
        tasks += self._closers
        if self._flusher is not None:
            tasks.append(self._flusher)
        await cancel_and_wait(tasks)
        self._flusher = None
        await self._flush()  # whatever is running stays "running" on disk: recovery decides

    async def _recover(self) -> None:
        """Bring activations that were running when the gateway stopped to a truthful state."""

        def load(conn: sqlite3.Connection) -> tuple[list[Any], list[Any], int]:
            rows = conn.execute("SELECT id, data FROM activations ORDER BY id DESC LIMIT 500"
                                ).fetchall()
            ids = [r[0] for r in rows]
            results = conn.execute(
                f"SELECT activation_id, data FROM activation_results WHERE activation_id IN "
                f"({','.join('?' * len(ids))})", ids).fetchall() if ids else []
            top = conn.execute("SELECT max(id) FROM activations").fetchone()[0] or 0
            return rows, results, int(top)

        rows, result_rows, top = await self.db.run(load)
        self._next_id = top + 1
        by_activation: dict[int, dict[str, SirenResult]] = {}
        for activation_id, data in result_rows:
            raw = json.loads(data)
            raw["status"] = Status(raw["status"])
            by_activation.setdefault(activation_id, {})[raw["siren_id"]] = SirenResult(**raw)
        now = time.time()
        for activation_id, data in reversed(rows):
            raw = json.loads(data)
            activation = Activation(results=by_activation.get(activation_id, {}), **raw)
            self.activations[activation.id] = activation
            if activation.state != "running":
                continue
            activation.interrupted_at = now
            deadline = activation.start_at + self.config.confirm_timeout_s
            for siren_id in activation.sirens:
                result = activation.results.setdefault(
                    siren_id, SirenResult(siren_id, activation_id=activation.id,
                                          klass=activation.klass))
                if result.status in FINAL:
                    continue
                link = self.links.get(siren_id)
                if now < deadline and link is not None:
                    # Never send again. Watch instead: a siren recorded as pending may have
                    # taken the command in the last moments before the restart; only one that
                    # reports this activation's sequence number can be confirmed.
                    activation.tasks[siren_id] = asyncio.create_task(
                        self._confirm_only(activation, result, link))
                    self._occupy(activation, siren_id)
                else:
                    self._finish(result, Status.NO_FEEDBACK, "gateway restarted before the "
                                 "siren confirmed; the command is never re-sent")
            if not activation.tasks:
                activation.state, activation.ended_at = "interrupted", now
            else:
                self._watch(activation, "interrupted")
            self._dirty.add(activation.id)
        await self._flush()

    # -- requests --------------------------------------------------------------------------

    def resolve(self, targets: Targets) -> tuple[list[str], list[str]]:
        """(sirens that will be commanded, inhibited sirens excluded), in configuration order."""
        known = {s.id: s for s in self.site.config.sirens}
        unknown = [s for s in targets.sirens if s not in known]
        if unknown:
            raise ActivationError(404, f"unknown siren(s): {', '.join(unknown)}")
        zones = {z.id for z in self.site.config.zones}
        bad_zones = [z for z in targets.zones if z not in zones]
        if bad_zones:
            raise ActivationError(404, f"unknown zone(s): {', '.join(bad_zones)}")
        if not (targets.all or targets.sirens or targets.zones):
            raise ActivationError(422, "no targets: name sirens, zones, or all")
        wanted = set(targets.sirens)
        chosen = [s for s in self.site.config.sirens if targets.all or s.id in wanted
                  or any(z in targets.zones for z in s.zones)]
        return ([s.id for s in chosen if not s.inhibited], [s.id for s in chosen if s.inhibited])

    def _validate(self, request: ActivationRequest) -> None:
        if request.action == "sound":
            if request.signal not in self.site.signals:
                raise ActivationError(422, f"unknown signal {request.signal!r}; known: "
                                      f"{', '.join(sorted(self.site.signals))}")
        elif request.signal is not None:
            raise ActivationError(422, "a silent test has no signal")
        if request.start_at is not None:
            ahead = request.start_at.timestamp() - time.time()
            if ahead < -1:
                raise ActivationError(422, "start_at is in the past")
            if ahead > MAX_START_AHEAD_S:
                raise ActivationError(422, "start_at is more than 24 hours ahead")

    @staticmethod
    def _key(request: ActivationRequest, sirens: list[str]) -> tuple[Any, ...]:
        start = request.start_at.timestamp() if request.start_at else None
        return (request.klass, request.action, request.signal, tuple(sirens), start)

    async def preview(self, who: Principal, request: ActivationRequest) -> dict[str, Any]:
        """Exactly which sirens would sound; for an emergency, a short-lived confirmation token."""
        try:
            self._validate(request)
            sirens, excluded = self.resolve(request.targets)
        except ActivationError as exc:
            await self.audit.record(who, "activation.preview", f"refused: {exc.message}",
                                    request=_describe(request))
            raise
        now = time.time()
        self._confirmations = {k: v for k, v in self._confirmations.items() if v.expires_at > now}
        out: dict[str, Any] = {
            "class": request.klass, "action": request.action, "signal": request.signal,
            "sirens": [self._describe_siren(s) for s in sirens],
            "excluded": [{"id": s, "reason": "inhibited"} for s in excluded],
            "conflicts": self._conflicts(sirens),
        }
        if request.klass == "emergency":
            token = secrets.token_urlsafe(24)
            self._confirmations[token] = _PendingConfirmation(
                who.username, self._key(request, sirens), now + self.config.confirmation_ttl_s)
            out["confirmation_token"] = token
            out["confirmation_expires_at"] = datetime.fromtimestamp(
                now + self.config.confirmation_ttl_s, UTC).isoformat()
        await self.audit.record(who, "activation.preview", "ok", request=_describe(request),
                                sirens=len(sirens), excluded=len(excluded))
        return out

    def _describe_siren(self, siren_id: str) -> dict[str, Any]:
        state = self.fleet.states[siren_id]
        return {"id": siren_id, "name": state.config.name, "zones": list(state.config.zones),
                "reachability": state.reachability.value, "faults": sorted(state.faults)}

    def _conflicts(self, sirens: list[str]) -> list[dict[str, Any]]:
        """Sirens still playing another activation's signal (confirmed or not)."""
        now = time.time()
        out = []
        for siren_id in sirens:
            occupation = self._occupied.get(siren_id)
            if occupation is None or occupation.until <= now:
                continue
            out.append({"siren": siren_id, "activation": occupation.activation_id,
                        "class": occupation.klass})
        return out

    async def activate(self, who: Principal, request: ActivationRequest) -> Activation:
        async with self._lock:
            try:
                activation, preempted = self._admit(who, request)
            except ActivationError as exc:
                await self.audit.record(who, "activation.create", f"refused: {exc.message}",
                                        request=_describe(request))
                raise
            # On disk before a single command leaves: a crash mid-send leaves a record.
            self._dirty.add(activation.id)
            await self._flush()
            await self.audit.record(who, "activation.create", "accepted",
                                    target=f"activation {activation.id}",
                                    request=_describe(request), sirens=len(activation.sirens),
                                    preempted=sorted(preempted))
        for siren_id, result in activation.results.items():
            if result.status is Status.EXCLUDED:
                continue
            activation.tasks[siren_id] = asyncio.create_task(
                self._drive(activation, result, self.links[siren_id]), name=f"act {siren_id}")
        self._watch(activation, "completed")
        return activation

    def _admit(self, who: Principal, request: ActivationRequest) -> tuple[Activation, set[int]]:
        """Apply every safety rule; on success register the activation (no I/O yet)."""
        self._validate(request)
        sirens, excluded = self.resolve(request.targets)
        if not sirens:
            raise ActivationError(409, "every targeted siren is inhibited: nothing to sound")
        now = time.time()
        key = self._key(request, sirens)
        if request.klass == "emergency":
            token = request.confirmation_token
            pending = self._confirmations.get(token or "")
            if pending is None or pending.expires_at <= now:
                raise ActivationError(403, "an emergency needs the confirmation token from a "
                                      "preview of the same request (missing, wrong or expired)")
            if pending.key != key or pending.principal != who.username:
                raise ActivationError(403, "the confirmation token was issued for a different "
                                      "request or user; preview this request again")
            del self._confirmations[token or ""]  # single use
        duplicate = self._recent.get(key)
        if duplicate and now - duplicate[1] < self.config.duplicate_window_s:
            raise ActivationError(409, f"duplicate of activation {duplicate[0]} from "
                                  f"{now - duplicate[1]:.0f} s ago; not sent again",
                                  activation_id=duplicate[0])
        always = request.action == "sound" and request.signal in ALWAYS_ALLOWED_SIGNALS
        preempt: set[int] = set()
        for conflict in self._conflicts(sirens):
            if request.klass == "emergency" or always:
                preempt.add(conflict["activation"])
            elif conflict["class"] == "emergency":
                raise ActivationError(409, f"siren {conflict['siren']} is sounding emergency "
                                      f"activation {conflict['activation']}; a {request.klass} "
                                      "never pre-empts an emergency")
            else:
                raise ActivationError(409, f"siren {conflict['siren']} is busy with "
                                      f"{conflict['class']} activation {conflict['activation']}")
        lead = self.config.sync_lead_s
        start_at = (request.start_at.timestamp() if request.start_at
                    else math.ceil(now + lead))  # whole seconds: device clocks count seconds
        activation = Activation(
            id=self._next_id, created_at=now, requested_by=who.username, klass=request.klass,
            action=request.action, signal=request.signal, start_at=start_at,
            sirens=[*sirens, *excluded], results={})
        self._next_id += 1
        for siren_id in sirens:
            activation.results[siren_id] = SirenResult(siren_id, planned_start=start_at,
                                                       activation_id=activation.id,
                                                       klass=request.klass)
        for siren_id in excluded:
            activation.results[siren_id] = SirenResult(siren_id, Status.EXCLUDED,
                                                       "inhibited (maintenance)",
                                                       activation_id=activation.id,
                                                       klass=request.klass)
        for other_id in preempt:
            self._preempt(self.activations[other_id], set(sirens), activation.id)
        self.activations[activation.id] = activation
        self._recent[key] = (activation.id, now)
        self._recent = {k: v for k, v in self._recent.items()
                        if now - v[1] < self.config.duplicate_window_s}
        for siren_id in sirens:
            self._occupy(activation, siren_id)
        return activation, preempt

    def _occupy(self, activation: Activation, siren_id: str) -> None:
        """The siren belongs to this activation until its signal (or test) has played out."""
        duration = (self.site.signals[activation.signal].duration_s if activation.signal
                    else 30.0)
        until = activation.start_at + duration + 1.0
        self._occupied[siren_id] = _Occupation(activation.id, activation.klass, until)

    def _preempt(self, activation: Activation, sirens: set[str], by: int) -> None:
        activation.preempted_by.append(by)
        for siren_id in sirens & set(activation.results):
            task = activation.tasks.get(siren_id)
            if task is not None:
                task.cancel()
            result = activation.results[siren_id]
            if result.status not in FINAL:
                self._finish(result, Status.PREEMPTED, f"taken over by activation {by}")
        self._dirty.add(activation.id)

    async def cancel(self, who: Principal, activation_id: int) -> Activation:
        activation = self.activations.get(activation_id)
        if activation is None:
            await self.audit.record(who, "activation.cancel", "refused: not found",
                                    target=f"activation {activation_id}")
            raise ActivationError(404, f"no activation {activation_id}")
        now = time.time()
        owned = [s for s, o in self._occupied.items()
                 if o.activation_id == activation_id and o.until > now]
        if activation.state != "running" and not owned:
            await self.audit.record(who, "activation.cancel", f"refused: {activation.state}",
                                    target=f"activation {activation_id}")
            raise ActivationError(409, f"activation {activation_id} is {activation.state} and "
                                  "none of its sirens is sounding")
        for task in activation.tasks.values():
            task.cancel()
        stops = []
        for siren_id, result in activation.results.items():
            if result.status is Status.EXCLUDED:
                continue
            if siren_id in owned:
                del self._occupied[siren_id]
                stops.append(self._stop_siren(siren_id))
            if result.status not in FINAL:
                self._finish(result, Status.CANCELLED, f"cancelled by {who.username}")
        outcomes = await asyncio.gather(*stops)
        activation.state, activation.ended_at = "cancelled", time.time()
        self._dirty.add(activation.id)
        await self._flush()
        failed = [siren for siren, error in outcomes if error]
        await self.audit.record(who, "activation.cancel", "accepted",
                                target=f"activation {activation_id}", stop_failed=failed)
        return activation

    async def set_clocks(self, who: Principal, targets: Targets) -> dict[str, Any]:
        """Set the targeted controllers' clocks to the gateway's (UTC).

        Controllers count whole seconds, so the command is sent just as a second begins and
        carries that second: what remains is the link latency.
        """
        active, inhibited = self.resolve(targets)
        sirens = active + inhibited  # setting a clock makes no sound: maintenance sirens too
        moment = math.floor(time.time()) + 1
        await _sleep_until(moment)
        command = Command(CommandKind.SET_CLOCK, clock=datetime.fromtimestamp(moment, UTC))

        async def one(siren_id: str) -> tuple[str, str | None]:
            try:
                await self.links[siren_id].send(command)
            except LinkError as exc:
                return siren_id, str(exc)
            return siren_id, None

        outcomes = await asyncio.gather(*(one(s) for s in sirens))
        failed = {siren: error for siren, error in outcomes if error}
        result = {"set": [s for s, error in outcomes if not error], "failed": failed,
                  "clock": datetime.fromtimestamp(moment, UTC).isoformat()}
        await self.audit.record(who, "sirens.set_clock", "failed for some" if failed else "ok",
                                targets=asdict(targets), set=len(result["set"]), failed=failed)
        return result

    async def _stop_siren(self, siren_id: str) -> tuple[str, str | None]:
        try:
            await self.links[siren_id].send(Command(CommandKind.STOP))
        except LinkError as exc:
            return siren_id, str(exc)
        return siren_id, None

    # -- per-siren work --------------------------------------------------------------------

    async def _drive(self, activation: Activation, result: SirenResult, link: SirenLink) -> None:
        try:
            if await self._deliver(activation, result, link):
                await self._confirm(activation, result, link)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must end in a truthful record, not a silent task
            log.exception("activation %s, siren %s", activation.id, result.siren_id)
            if result.status not in FINAL:
                self._finish(result, Status.NO_FEEDBACK, f"internal error: {exc!r}")
        finally:
            self._dirty.add(activation.id)

    async def _confirm_only(self, activation: Activation, result: SirenResult,
                            link: SirenLink) -> None:
        try:
            await self._confirm(activation, result, link,
                                note="; the gateway restarted during the activation")
        finally:
            self._dirty.add(activation.id)

    async def _deliver(self, activation: Activation, result: SirenResult,
                       link: SirenLink) -> bool:
        """Get the command accepted; False once the result is final."""
        sequence = activation.id & 0xFFFF or 1
        skew = _clock_skew(self.fleet.states[result.siren_id].sample)
        result.clock_skew_s = round(skew, 3) if skew is not None else None
        start = activation.start_at
        if activation.action == "silent_test":
            command = Command(CommandKind.SILENT_TEST, sequence=sequence)
            result.started_by_gateway = True
        elif skew is None or abs(skew) > self.config.clock_tolerance_s:
            # The siren's clock cannot be trusted to start it: start it ourselves, on time.
            command = Command(CommandKind.SOUND, signal=activation.signal, sequence=sequence)
            result.started_by_gateway = True
        else:
            command = Command(CommandKind.SOUND, signal=activation.signal,
                              start_at=datetime.fromtimestamp(start, UTC), sequence=sequence)
        if result.started_by_gateway:
            await _sleep_until(start)
        deadline = start + self.config.delivery_grace_s
        last_error = "not attempted"
        undelivered = False
        while True:
            result.sent_at = result.sent_at or time.time()
            try:
                await link.send(command)
            except LinkError as exc:
                if exc.reason == "rejected":
                    self._finish(result, Status.FAILED, f"controller refused the command: "
                                 f"{exc.detail}")
                    return False
                last_error = str(exc)
                undelivered = exc.reason in CERTAINLY_NOT_DELIVERED
            else:
                result.status, result.accepted_at = Status.ACCEPTED, time.time()
                self._dirty.add(activation.id)
                self._note_accepted(activation)
                return True
            if time.time() >= deadline:
                if undelivered:
                    # Known, not unknown: the command never left the gateway, so it cannot sound.
                    self._finish(result, Status.FAILED, f"command never delivered: {last_error}")
                else:
                    self._finish(result, Status.NO_FEEDBACK, f"command not delivered: {last_error}")
                return False
            await asyncio.sleep(0.25)

    def _note_accepted(self, activation: Activation) -> None:
        if activation.all_accepted_at is None and all(
                r.status is not Status.PENDING for r in activation.results.values()):
            activation.all_accepted_at = time.time()

    async def _confirm(self, activation: Activation, result: SirenResult, link: SirenLink,
                       note: str = "") -> None:
        """Poll the siren from its start moment until its own feedback decides the result."""
        state = self.fleet.states[result.siren_id]
        threshold = state.sounding_current_threshold
        signal = self.site.signals.get(activation.signal or "")
        first_on_s = signal.steps[0].on_s if signal else 0.0
        sequence = activation.id & 0xFFFF or 1
        # Nothing can be confirmed at the very instant of the start, and that instant belongs
        # to the "start now" commands of sirens with bad clocks: begin polling a moment later,
        # spread over one poll interval so a thousand sirens are not polled at once.
        await _sleep_until(activation.start_at + 0.2
                           + random.uniform(0, self.config.confirm_poll_interval_s))
        deadline = activation.start_at + self.config.confirm_timeout_s
        failing = set(self.config.failing_faults)
        last_note = "no answer since the start"
        while True:
            try:
                sample = await link.poll()
            except LinkError as exc:
                if link.polled:
                    self.fleet.record_failure(result.siren_id, exc)
                last_note = f"siren not answering ({exc.reason})"
            else:
                if link.polled:
                    self.fleet.record_sample(sample)
                verdict = self._judge(activation, sample, sequence, threshold, first_on_s,
                                      failing)
                if verdict is not None:
                    self._finish(result, *verdict)
                    return
                last_note = f"controller state {sample.values.get('state')!r}"
            if time.time() >= deadline:
                self._finish(result, Status.NO_FEEDBACK, f"no confirmation within "
                             f"{self.config.confirm_timeout_s:g} s ({last_note}){note}")
                return
            await asyncio.sleep(self.config.confirm_poll_interval_s)

    def _judge(self, activation: Activation, sample: Sample, sequence: int,
               threshold: float | None, first_on_s: float, failing: set[str]
               ) -> tuple[Status, str] | None:
        values = sample.values
        seen_sequence = values.get("last_command_sequence")
        if seen_sequence is not None and seen_sequence != sequence:
            return None  # the controller has not (yet) taken our command
        state = values.get("state")
        result = values.get("last_activation_result")
        faults = sample.faults & failing
        if activation.action == "silent_test":
            if state == "silent_test":
                return None
            if faults:
                return Status.FAILED, f"silent test found {', '.join(sorted(faults))}"
            if result == "completed":
                return Status.PASSED, "controller reports the audio chain checked out"
            if result == "failed":
                return Status.FAILED, "controller reports the silent test failed"
            return None
        if state in ("sounding", "start_pending") and faults:
            return Status.FAILED, f"{', '.join(sorted(faults))} reported during sounding"
        if state == "sounding":
            current = values.get("sounding_current")
            if threshold is None:
                return Status.SOUNDED, "controller reports sounding (no current sensing)"
            if isinstance(current, int | float) and current >= threshold:
                return Status.SOUNDED, f"sounding with {current} A"
            if time.time() > activation.start_at + first_on_s + 1.0:
                return Status.FAILED, "controller reports sounding but no sounding current"
            return None
        if state == "idle" and result == "failed":
            return Status.FAILED, "controller reports the activation failed"
        if state == "idle" and result == "completed" and time.time() > activation.start_at:
            return Status.SOUNDED, "controller reports the signal completed"
        return None

    def _finish(self, result: SirenResult, status: Status, reason: str) -> None:
        result.status, result.reason = status, reason
        if status in (Status.SOUNDED, Status.PASSED):
            result.confirmed_at = time.time()
        if self.bus is not None:
            self.bus.publish(SirenResultFinal(result.activation_id, result.klass,
                                              result.siren_id, status.value, reason,
                                              datetime.now(UTC)))

    def _watch(self, activation: Activation, final_state: str) -> None:
        task = asyncio.create_task(self._close_when_done(activation, final_state),
                                   name=f"activation {activation.id}")
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _close_when_done(self, activation: Activation, final_state: str) -> None:
        tasks = list(activation.tasks.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._stopping:
            return
        if activation.state == "running":
            activation.state, activation.ended_at = final_state, time.time()
        self._dirty.add(activation.id)
        await self._flush()

    # -- persistence -----------------------------------------------------------------------

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            await self._flush()

    async def _flush(self) -> None:
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        rows, results = [], []
        for activation_id in dirty:
            a = self.activations[activation_id]
            data = {k: getattr(a, k) for k in ("id", "created_at", "requested_by", "klass",
                                                "action", "signal", "start_at", "sirens", "state",
                                                "ended_at", "interrupted_at", "all_accepted_at",
                                                "preempted_by")}
            rows.append((a.id, json.dumps(data), a.state, a.created_at))
            for r in a.results.values():
                raw = asdict(r) | {"status": r.status.value}
                results.append((a.id, r.siren_id, json.dumps(raw)))

        def write(conn: sqlite3.Connection) -> None:
            with conn:
                conn.executemany("INSERT OR REPLACE INTO activations VALUES (?, ?, ?, ?)", rows)
                conn.executemany("INSERT OR REPLACE INTO activation_results VALUES (?, ?, ?)",
                                 results)

        try:
            await self.db.run(write)
        except sqlite3.Error:
            log.exception("could not store activations %s", sorted(dirty))
            self._dirty |= dirty  # try again at the next flush

    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        newest = sorted(self.activations.values(), key=lambda a: a.id, reverse=True)[:limit]
        return [a.report(with_sirens=False) for a in newest]


def _iso(moment: float | None) -> str | None:
    return datetime.fromtimestamp(moment, UTC).isoformat() if moment else None


async def _sleep_until(moment: float) -> None:
    delay = moment - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def _describe(request: ActivationRequest) -> dict[str, Any]:
    return {"class": request.klass, "action": request.action, "signal": request.signal,
            "targets": asdict(request.targets),
            "start_at": request.start_at.isoformat() if request.start_at else None,
            "with_confirmation_token": request.confirmation_token is not None}
