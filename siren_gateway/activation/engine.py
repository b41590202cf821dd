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
to start "now" by the gateway at the start moment, and flagged.

Exactly once: every command carries the activation's sequence and the device reports the last
sequence it carried out. After an ambiguous write (timeout, garbled reply, dropped connection)
the sequence is read back before anything else, and the command is sent again only when the
device shows it did not get it; a link whose device cannot report it never repeats a sound
command. MQTT commands keep their id across re-sends and restarts, so a device acts on one once.
After a restart, a siren of an unfinished activation whose device does not report the command
is sent it while its start is ahead or within the late-start allowance; one that does is watched.

This module is larger than the others on purpose: admission (the safety rules), delivery and
recovery share one lock and one picture of which siren is busy with what, and splitting them
would spread that state across modules. What has no such state lives apart: the types
(model.py), what counts as proof (proof.py), the rows on disk (store/activations.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import secrets
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from siren_gateway.activation.model import (
    ALWAYS_ALLOWED_SIGNALS,
    EXCLUSION_REASONS,
    FINAL,
    MAX_START_AHEAD_S,
    Activation,
    ActivationClass,
    ActivationRequest,
    Delivery,
    SirenResult,
    Status,
    Targets,
    describe_request,
    sequence_of,
)
from siren_gateway.activation.proof import command_for, judge_progress, judge_sample
from siren_gateway.config.activation import ActivationConfig
from siren_gateway.config.site import Catalogue
from siren_gateway.errors import (
    ConfirmationRequired,
    Conflict,
    Invalid,
    NotFound,
    Refused,
    StorageUnavailable,
)
from siren_gateway.links.base import SirenLink
from siren_gateway.links.status import StatusReader
from siren_gateway.live.bus import Bus, SirenResultFinal
from siren_gateway.live.fleet import Fleet, Reachability
from siren_gateway.metrics import Instruments
from siren_gateway.model import (
    CERTAINLY_NOT_DELIVERED,
    SEQUENCE_POINT,
    Command,
    CommandKind,
    LinkError,
    new_command_id,
)
from siren_gateway.runtime.clock import Clock, iso_utc, utc
from siren_gateway.runtime.failpoints import failpoint
from siren_gateway.runtime.tasks import cancel_and_wait
from siren_gateway.security.audit import AuditLog
from siren_gateway.security.auth import Principal
from siren_gateway.store.base import Store
from siren_gateway.store.errors import StorageError

log = logging.getLogger(__name__)


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


_SOUNDING_STATES = frozenset({"sounding", "start_pending"})
_RESEND_PAUSE_S = 0.25


class ActivationEngine:
    def __init__(self, catalogue: Catalogue, config: ActivationConfig, fleet: Fleet,
                 links: dict[str, SirenLink], status: StatusReader, store: Store,
                 audit: AuditLog, bus: Bus | None = None,
                 siren_locks: dict[str, asyncio.Lock] | None = None,
                 instruments: Instruments | None = None, clock: Clock | None = None) -> None:
        self.catalogue = catalogue
        self.clock = clock or fleet.clock  # one clock with the fleet's staleness
        self.instruments = instruments or Instruments()
        self.bus = bus
        self.fleet = fleet
        self.links = links
        self.status = status  # fresh answers come from the poller, never from a poll of ours
        self.health = store.health  # whether storage takes writes now
        self.store = store.activations
        self.audit = audit
        self.config = config
        self.activations: dict[int, Activation] = {}
        self._next_id = 1
        self._confirmations: dict[str, _PendingConfirmation] = {}
        self._recent: dict[tuple[Any, ...], tuple[int, float]] = {}  # duplicate suppression
        self._occupied: dict[str, _Occupation] = {}
        # One command exchange (send, and the read-back after a lost reply) per siren at a
        # time, shared with operator commands: another command's sequence must never land
        # between our write and its read-back.
        self.siren_locks = siren_locks if siren_locks is not None else {}
        self._dirty: set[int] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one request decides at a time: no races between rules
        self._closers: set[asyncio.Task[None]] = set()
        self._stopping = False

    def siren_lock(self, siren_id: str) -> asyncio.Lock:
        lock = self.siren_locks.get(siren_id)
        if lock is None:
            lock = self.siren_locks[siren_id] = asyncio.Lock()
        return lock

    def _proof_pending(self, siren_id: str) -> tuple[int, asyncio.Task[None]] | None:
        """The activation whose command this siren has (or may have) been sent and whose
        result is not decided yet, with the task deciding it."""
        occupation = self._occupied.get(siren_id)
        activation = self.activations.get(occupation.activation_id) if occupation else None
        if activation is None:
            return None
        result = activation.results.get(siren_id)
        task = activation.tasks.get(siren_id)
        if result is None or result.sent_at is None or result.status in FINAL or task is None \
                or task.done():
            return None
        return activation.id, task

    async def _wait_for_proof(self, siren_id: str) -> int | None:
        """Wait until no activation awaits this siren's proof; the last one waited for."""
        waited_for = None
        while (pending := self._proof_pending(siren_id)) is not None:
            waited_for, task = pending
            await asyncio.wait({task})  # bounded by the activation's own deadlines
        return waited_for

    @contextlib.asynccontextmanager
    async def between_proofs(self, siren_id: str) -> AsyncIterator[int | None]:
        """The siren's command lock, taken when no activation awaits the siren's proof; yields
        the activation waited for, if any.

        For every command that is not an activation's own (reset, arm, disarm, clock). The
        controller reports the sequence of the *last* command it carried out, and that is what
        proves an activation's command was taken: a reset landing between a sound command and
        its confirmation replaced it, and a siren that sounded was reported without feedback
        (the soak's all-siren reset every minute did this to every Modbus siren of five
        activations in an hour, 424 of 2,000 in a scheduled test). Such a command waits for
        the proof instead; proofs end by their own deadlines, so the wait is bounded."""
        lock = self.siren_lock(siren_id)
        waited_for = None
        while True:
            waited_for = await self._wait_for_proof(siren_id) or waited_for
            await lock.acquire()
            if self._proof_pending(siren_id) is None:
                break
            lock.release()  # an activation's command went out while we waited for the lock
        try:
            yield waited_for
        finally:
            lock.release()

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

        found, top = await self.store.recent_and_running(self.config.keep_in_memory)
        self._next_id = top + 1
        now = self.clock.now()
        for activation in reversed(found):
            self.activations[activation.id] = activation
            if activation.state != "running":
                continue
            activation.interrupted_at = now
            for siren_id in activation.sirens:
                result = activation.results.setdefault(
                    siren_id, SirenResult(siren_id, activation_id=activation.id,
                                          klass=activation.klass,
                                          planned_start=activation.start_at))
                if result.status in FINAL:
                    continue
                link = self.links.get(siren_id)
                if link is None:
                    self._finish(result, Status.NO_FEEDBACK, "gateway restarted; the siren is "
                                 "no longer configured")
                    continue
                # Resume from the record: a siren that may have the command is read back and
                # watched; one that shows it did not is sent it (while its start allows).
                activation.tasks[siren_id] = asyncio.create_task(
                    self._drive(activation, result, link, resumed=True),
                    name=f"act {siren_id}")
                self._occupy(activation, siren_id)
            if not activation.tasks:
                activation.state, activation.ended_at = "interrupted", now
            else:
                self._watch(activation, "completed")
            self._dirty.add(activation.id)
        await self._flush()

    # -- requests --------------------------------------------------------------------------

    def resolve(self, targets: Targets) -> tuple[list[str], dict[str, str]]:
        """(sirens that will be commanded, {excluded siren: why}), in configuration order.

        Excluded: inhibited in the site file, or disarmed (maintenance) as its controller
        reports now. Nobody is sounded next to a technician working at the pole."""
        known = {s.id: s for s in self.catalogue.sirens}
        unknown = [s for s in targets.sirens if s not in known]
        if unknown:
            raise NotFound(f"unknown siren(s): {', '.join(unknown[:20])}")
        zones = {z.id for z in self.catalogue.zones}
        bad_zones = [z for z in targets.zones if z not in zones]
        if bad_zones:
            raise NotFound(f"unknown zone(s): {', '.join(bad_zones[:20])}")
        if not (targets.all or targets.sirens or targets.zones):
            raise Invalid("no targets: name sirens, zones, or all")
        wanted = set(targets.sirens)
        chosen = [s for s in self.catalogue.sirens if targets.all or s.id in wanted
                  or any(z in targets.zones for z in s.zones)]
        sirens: list[str] = []
        excluded: dict[str, str] = {}
        for siren in chosen:
            if siren.inhibited:
                excluded[siren.id] = "inhibited"
            elif self._disarmed(siren.id):
                excluded[siren.id] = "disarmed"
            else:
                sirens.append(siren.id)
        return sirens, excluded

    def _disarmed(self, siren_id: str) -> bool:
        state = self.fleet.states.get(siren_id)
        return (state is not None and state.reachability is Reachability.ONLINE
                and state.sample is not None and state.sample.values.get("armed") is False)

    def _validate(self, request: ActivationRequest) -> None:
        if request.action == "sound":
            if request.signal not in self.catalogue.signals:
                raise Invalid(f"unknown signal {str(request.signal)[:40]!r}; "
                                      f"known: {', '.join(sorted(self.catalogue.signals))}")
        elif request.signal is not None:
            raise Invalid("a silent test has no signal")
        if request.start_at is not None:
            ahead = request.start_at.timestamp() - self.clock.now()
            if ahead < -1:
                raise Invalid("start_at is in the past")
            if ahead > MAX_START_AHEAD_S:
                raise Invalid("start_at is more than 24 hours ahead")

    @staticmethod
    def _key(request: ActivationRequest, sirens: list[str]) -> tuple[Any, ...]:
        start = request.start_at.timestamp() if request.start_at else None
        return (request.klass, request.action, request.signal, tuple(sirens), start)

    @staticmethod
    def _critical(request: ActivationRequest) -> bool:
        """An emergency or an all-clear: goes out whatever else fails (storage included)."""
        return request.klass == "emergency" or (request.action == "sound"
                                                and request.signal in ALWAYS_ALLOWED_SIGNALS)

    def _storage_refusal(self) -> StorageUnavailable:
        health = self.health
        return StorageUnavailable("the state database cannot be written "
                               f"({health.last_error}); tests and exercises wait until it "
                               "works again, emergencies and all-clear still go out")

    async def preview(self, who: Principal, request: ActivationRequest) -> dict[str, Any]:
        """Exactly which sirens would sound; for an emergency, a short-lived confirmation token."""
        try:
            self._validate(request)
            sirens, excluded = self.resolve(request.targets)
        except Refused as exc:
            await self.audit.record(who, "activation.preview", f"refused: {exc.message}",
                                    request=describe_request(request))
            raise
        now = self.clock.now()
        self._confirmations = {k: v for k, v in self._confirmations.items() if v.expires_at > now}
        key = self._key(request, sirens)
        out: dict[str, Any] = {
            "class": request.klass, "action": request.action, "signal": request.signal,
            "sirens": [self._describe_siren(s) for s in sirens],
            "excluded": [{"id": s, "reason": why} for s, why in excluded.items()],
            "conflicts": self._conflicts(sirens),
            "duplicate_of": self._blocking_twin(key, now),
        }
        if request.klass == "emergency":
            token = secrets.token_urlsafe(24)
            self._confirmations[token] = _PendingConfirmation(
                who.username, key, now + self.config.confirmation_ttl_s)
            out["confirmation_token"] = token
            out["confirmation_expires_at"] = datetime.fromtimestamp(
                now + self.config.confirmation_ttl_s, UTC).isoformat()
        await self.audit.record(who, "activation.preview", "ok", request=describe_request(request),
                                sirens=len(sirens), excluded=len(excluded))
        return out

    def _describe_siren(self, siren_id: str) -> dict[str, Any]:
        state = self.fleet.states[siren_id]
        return {"id": siren_id, "name": state.config.name, "zones": list(state.config.zones),
                "reachability": state.reachability.value, "faults": sorted(state.faults)}

    def _busy_with(self, siren_id: str, now: float) -> _Occupation | None:
        """The activation a siren is busy with: its command is in flight, or the device
        reports it sounding (or about to) for that activation. A refusal, a failure or an
        idle report frees it at once."""
        occupation = self._occupied.get(siren_id)
        if occupation is None:
            return None
        activation = self.activations.get(occupation.activation_id)
        result = activation.results.get(siren_id) if activation else None
        if occupation.until <= now or result is None:
            del self._occupied[siren_id]
            return None
        if result.status not in FINAL:
            return occupation  # in flight
        state = self.fleet.states.get(siren_id)
        reported = state.last_known_state if state is not None else "unknown"
        if result.status in (Status.SOUNDED, Status.NO_FEEDBACK) and reported in _SOUNDING_STATES:
            return occupation
        del self._occupied[siren_id]
        return None

    def _conflicts(self, sirens: list[str]) -> list[dict[str, Any]]:
        """Sirens busy with another activation (in flight, or reported sounding)."""
        now = self.clock.now()
        out = []
        for siren_id in sirens:
            occupation = self._busy_with(siren_id, now)
            if occupation is not None:
                out.append({"siren": siren_id, "activation": occupation.activation_id,
                            "class": occupation.klass})
        return out

    def _blocking_twin(self, key: tuple[Any, ...], now: float) -> dict[str, Any] | None:
        """An identical earlier request that still runs or has sounded: repeating it would
        sound sirens twice. One that ended failed, without feedback, cancelled or pre-empted
        blocks nothing: the alarm it did not give is still needed."""
        recent = self._recent.get(key)
        if recent is None or now - recent[1] >= self.config.duplicate_window_s:
            return None
        earlier = self.activations.get(recent[0])
        if earlier is None:
            return None
        statuses = {r.status for r in earlier.results.values()}
        if statuses - FINAL:
            why = "still running"
        elif statuses & {Status.SOUNDED, Status.PASSED}:
            why = "sounded"
        else:
            return None
        return {"activation": earlier.id, "state": earlier.state, "why": why,
                "age_s": round(now - recent[1], 1)}

    async def activate(self, who: Principal, request: ActivationRequest) -> Activation:
        critical = self._critical(request)
        async with self._lock:
            try:
                if not critical and self.health.failing:
                    raise self._storage_refusal()
                activation, preempted = self._admit(who, request)
            except Refused as exc:
                await self.audit.record(who, "activation.create", f"refused: {exc.message}",
                                        request=describe_request(request))
                raise
            # On disk before a single command leaves: a crash mid-send leaves a record. If
            # the disk refuses, an emergency goes out anyway (the record waits in memory and
            # is written when storage returns); a test or exercise is taken back, leaving
            # nothing behind.
            self._dirty.add(activation.id)
            if not await self._flush() and not critical:
                self._take_back(activation)
                error = self._storage_refusal()
                await self.audit.record(who, "activation.create", f"refused: {error.message}",
                                        request=describe_request(request))
                raise error
            failpoint("activation.recorded")
            await self.audit.record(who, "activation.create", "accepted",
                                    target=f"activation {activation.id}",
                                    request=describe_request(request), sirens=len(activation.sirens),
                                    preempted=sorted(preempted), repeat_of=activation.repeat_of)
            for siren_id, result in activation.results.items():
                if result.status is Status.EXCLUDED:
                    continue
                activation.tasks[siren_id] = asyncio.create_task(
                    self._drive(activation, result, self.links[siren_id]),
                    name=f"act {siren_id}")
            self._watch(activation, "completed")
        log.info("activation %d started: %s %s %s on %d sirens at %s by %s%s", activation.id,
                 activation.klass, activation.action, activation.signal or "",
                 len(activation.tasks), iso_utc(activation.start_at), who.username,
                 f" (repeat of {activation.repeat_of})" if activation.repeat_of else "")
        return activation

    def _take_back(self, activation: Activation) -> None:
        """Undo `_admit` for a request that could not be recorded (no phantom activation)."""
        self.activations.pop(activation.id, None)
        self._dirty.discard(activation.id)
        self._recent = {k: v for k, v in self._recent.items() if v[0] != activation.id}
        for siren_id, occupation in list(self._occupied.items()):
            if occupation.activation_id == activation.id:
                del self._occupied[siren_id]

    def _admit(self, who: Principal, request: ActivationRequest) -> tuple[Activation, set[int]]:
        """Apply every safety rule; on success register the activation (no I/O yet)."""
        self._validate(request)
        sirens, excluded = self.resolve(request.targets)
        if not sirens:
            raise Conflict("every targeted siren is inhibited or disarmed: "
                                  "nothing to sound")
        now = self.clock.now()
        key = self._key(request, sirens)
        if request.klass == "emergency":
            token = request.confirmation_token
            pending = self._confirmations.get(token or "")
            if pending is None or pending.expires_at <= now:
                raise ConfirmationRequired("an emergency needs the confirmation token from a "
                                      "preview of the same request (missing, wrong or expired)")
            if pending.key != key or pending.principal != who.username:
                raise ConfirmationRequired("the confirmation token was issued for a different "
                                      "request or user; preview this request again")
            del self._confirmations[token or ""]  # single use
        twin = self._blocking_twin(key, now)
        repeat_of = None
        if twin is not None:
            if request.klass == "emergency":
                # A fresh confirmation is the operator's explicit decision: never refused.
                repeat_of = twin["activation"]
            else:
                raise Conflict(
                    f"duplicate of activation {twin['activation']} from {twin['age_s']:.0f}"
                    f" s ago, which {'is ' if twin['why'] == 'still running' else 'has '}"
                    f"{twin['why']} ({twin['state']}); not sent again",
                    activation_id=twin["activation"], activation_state=twin["state"])
        always = request.action == "sound" and request.signal in ALWAYS_ALLOWED_SIGNALS
        preempt: set[int] = set()
        busy: dict[str, str] = {}  # siren: why it is left out (a scheduled step's busy sirens)
        for conflict in self._conflicts(sirens):
            if request.klass == "emergency" or always:
                preempt.add(conflict["activation"])
            elif request.busy_sirens == "skip":
                busy[conflict["siren"]] = (f"busy with {conflict['class']} activation "
                                           f"{conflict['activation']}; not commanded")
            elif conflict["class"] == "emergency":
                raise Conflict(f"siren {conflict['siren']} is sounding emergency "
                                      f"activation {conflict['activation']}; a {request.klass} "
                                      "never pre-empts an emergency")
            else:
                raise Conflict(f"siren {conflict['siren']} is busy with "
                                      f"{conflict['class']} activation {conflict['activation']}")
        if busy:
            sirens = [siren_id for siren_id in sirens if siren_id not in busy]
            if not sirens:
                raise Conflict("every targeted siren is busy with another activation: "
                               + "; ".join(sorted(set(busy.values()))))
        lead = self.config.sync_lead_s
        start_at = (request.start_at.timestamp() if request.start_at
                    else math.ceil(now + lead))  # whole seconds: device clocks count seconds
        activation = Activation(
            id=self._next_id, created_at=now, requested_by=who.username, klass=request.klass,
            action=request.action, signal=request.signal, start_at=start_at,
            sirens=[*sirens, *busy, *excluded], results={}, repeat_of=repeat_of)
        self._next_id += 1
        for siren_id in sirens:
            activation.results[siren_id] = SirenResult(
                siren_id, planned_start=start_at, activation_id=activation.id,
                klass=request.klass, command_id=new_command_id())
        for siren_id, reason in [*busy.items(),
                                 *((s, EXCLUSION_REASONS[why]) for s, why in excluded.items())]:
            activation.results[siren_id] = SirenResult(siren_id, Status.EXCLUDED, reason,
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
        """The longest the siren can belong to this activation: until its signal (or test)
        could have played out. `_busy_with` frees it earlier on the device's own word."""
        duration = (self.catalogue.signals[activation.signal].duration_s if activation.signal
                    else 30.0)
        until = max(activation.start_at + duration,
                    activation.start_at + self.config.confirm_timeout_s) + 1.0
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
        activation = await self.get(activation_id)
        if activation is None:
            await self.audit.record(who, "activation.cancel", "refused: not found",
                                    target=f"activation {activation_id}")
            raise NotFound(f"no activation {activation_id}")
        now = self.clock.now()
        owned = [s for s, o in self._occupied.items()
                 if o.activation_id == activation_id and o.until > now]
        if activation.state != "running" and not owned:
            await self.audit.record(who, "activation.cancel", f"refused: {activation.state}",
                                    target=f"activation {activation_id}")
            raise Conflict(f"activation {activation_id} is {activation.state} and "
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
        activation.state, activation.ended_at = "cancelled", self.clock.now()
        self._dirty.add(activation.id)
        await self._flush()
        failed = [siren for siren, error in outcomes if error]
        await self.audit.record(who, "activation.cancel", "accepted",
                                target=f"activation {activation_id}", stop_failed=failed)
        log.info("activation %d cancelled by %s (%d stop commands, %d failed)", activation_id,
                 who.username, len(outcomes), len(failed))
        return activation

    async def set_clocks(self, who: Principal, targets: Targets) -> dict[str, Any]:
        """Set the targeted controllers' clocks to the gateway's (UTC).

        Controllers count whole seconds, so the command is sent just as a second begins and
        carries that second: what remains is the link latency.
        """
        active, excluded = self.resolve(targets)
        sirens = active + list(excluded)  # setting a clock makes no sound: maintenance too
        moment = math.floor(self.clock.now()) + 1
        deferred: dict[str, int] = {}  # siren: the activation whose proof it waited for

        async def one(siren_id: str) -> tuple[str, str | None]:
            planned = moment
            try:
                while True:
                    await self._sleep_until(planned)
                    async with self.between_proofs(siren_id) as waited_for:
                        if waited_for is None:
                            await self.links[siren_id].send(Command(
                                CommandKind.SET_CLOCK, clock=datetime.fromtimestamp(planned, UTC)))
                            return siren_id, None
                    # It waited for an activation's proof, so the second has passed: realign.
                    deferred[siren_id] = waited_for
                    planned = math.floor(self.clock.now()) + 1
            except LinkError as exc:
                return siren_id, str(exc)

        outcomes = await asyncio.gather(*(one(s) for s in sirens))
        failed = {siren: error for siren, error in outcomes if error}
        result = {"set": [s for s, error in outcomes if not error], "failed": failed,
                  "clock": datetime.fromtimestamp(moment, UTC).isoformat(),
                  "after_activation": deferred}
        await self.audit.record(who, "sirens.set_clock", "failed for some" if failed else "ok",
                                targets=asdict(targets), set=len(result["set"]), failed=failed,
                                after_activation=deferred)
        return result

    async def _stop_siren(self, siren_id: str) -> tuple[str, str | None]:
        # Not behind the siren's lock: a stop must go out at once, and it is safe to repeat.
        try:
            await self.links[siren_id].send(Command(CommandKind.STOP))
        except LinkError as exc:
            return siren_id, str(exc)
        return siren_id, None

    # -- per-siren work --------------------------------------------------------------------

    async def _drive(self, activation: Activation, result: SirenResult, link: SirenLink,
                     resumed: bool = False) -> None:
        try:
            note = "; the gateway restarted during the activation" if resumed else ""
            taken = resumed and result.status is Status.ACCEPTED  # watched, never re-sent
            if taken or await self._deliver(activation, result, link, resumed):
                await self._confirm(activation, result, link, note=note)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must end in a truthful record, not a silent task
            log.exception("activation %s, siren %s", activation.id, result.siren_id)
            if result.status not in FINAL:
                self._finish(result, Status.NO_FEEDBACK, f"internal error: {exc!r}")
        finally:
            self._dirty.add(activation.id)

    async def _deliver(self, activation: Activation, result: SirenResult, link: SirenLink,
                       resumed: bool = False) -> bool:
        """Get the command carried out exactly once; False once the result is final.

        Sent again only when the device shows it did not get it (or, for MQTT, under the
        same command id, which the device takes once)."""
        sequence = sequence_of(activation.id)
        start = activation.start_at
        deadline = start + self.config.delivery_grace_s  # the late-start allowance
        siren_id = result.siren_id
        if resumed and not link.idempotent_resend:
            # After a restart the command may have gone out just before: ask the device first
            # (at least once, even past the allowance: a siren that has it is watched).
            # Only a status taken from now on counts. A cluster's new leader already holds its
            # predecessor's mirrored statuses, maybe from before that one's command reached the
            # siren: read as "not taken", such a status sent the command a second time (three
            # sirens sounded twice in a clean-clone run of test_cluster.py).
            async with self.siren_lock(siren_id):
                now = self.clock.now()
                seen = await self._read_back(link, sequence, max(deadline, now + 2 * link.timeout_s),
                                             since=now)
            if seen is Delivery.TAKEN:
                self._accepted(activation, result)
                return True
            if seen is Delivery.UNKNOWN:
                result.reason = "the gateway restarted and the siren did not answer a " \
                                "read-back; the command is never sent blind"
                return True  # watch: its own status decides (sounding, or no feedback)
            if self.clock.now() > deadline:
                self._finish(result, Status.FAILED, "command never delivered: the gateway "
                             "restarted after the late-start allowance, and the siren reports "
                             "it never received it")
                return False
        elif resumed and self.clock.now() > deadline:
            # Past the allowance nothing is sent late; a device that took it before the
            # restart still reports it, so watch.
            result.reason = "the gateway restarted after the late-start allowance; not sent late"
            return True
        command = command_for(activation, result, self.fleet.states[siren_id].sample,
                              self.config.clock_tolerance_s)
        if result.started_by_gateway:
            await self._sleep_until(start)
        last_error = "not attempted"
        while True:
            async with self.siren_lock(siren_id):
                sent_at = self.clock.now()
                result.sent_at = result.sent_at or sent_at
                result.sends += 1
                try:
                    with self.instruments.command(command.kind.value):
                        await link.send(command)
                except LinkError as exc:
                    if exc.reason == "rejected":
                        self._finish(result, Status.FAILED, "controller refused the command: "
                                     f"{exc.detail}")
                        return False
                    last_error = str(exc)
                    if exc.reason in CERTAINLY_NOT_DELIVERED:
                        outcome = Delivery.NOT_TAKEN
                    elif link.idempotent_resend:
                        outcome = Delivery.UNKNOWN  # safe to send again under the same id
                    elif not link.sequence_readback:
                        # Nothing can tell a lost reply from a lost command: never repeat a
                        # sound command; the status alone decides (sounding, or no feedback).
                        result.reason = (f"reply lost ({last_error}); not repeated: this model "
                                         "cannot report which command it carried out")
                        return True
                    else:
                        if exc.reason == "timeout":
                            # A slow device may still be carrying the write out.
                            await self.clock.sleep(min(link.timeout_s,
                                                    max(0.0, deadline - self.clock.now())))
                        outcome = await self._read_back(link, sequence, deadline, sent_at)
                        if outcome is Delivery.UNKNOWN:
                            self._finish(result, Status.NO_FEEDBACK,
                                         f"reply lost ({last_error}) and the siren did not "
                                         "answer a read-back; not repeated")
                            return False
                else:
                    outcome = Delivery.TAKEN
            if outcome is Delivery.TAKEN:
                self._accepted(activation, result)
                return True
            if self.clock.now() >= deadline:
                if outcome is Delivery.NOT_TAKEN:
                    # Known, not unknown: the device never got it, so it cannot sound.
                    self._finish(result, Status.FAILED, f"command never delivered: {last_error}")
                else:
                    self._finish(result, Status.NO_FEEDBACK, f"command not acknowledged: "
                                 f"{last_error}")
                return False
            await self.fleet.wait_for_news(siren_id, _RESEND_PAUSE_S)
            if link.idempotent_resend and self._reports_sequence(siren_id, sequence, sent_at):
                self._accepted(activation, result)
                return True

    def _accepted(self, activation: Activation, result: SirenResult) -> None:
        result.status, result.accepted_at = Status.ACCEPTED, self.clock.now()
        self._dirty.add(activation.id)
        self._note_accepted(activation)

    def _reports_sequence(self, siren_id: str, sequence: int, since: float) -> bool:
        sample = self.fleet.states[siren_id].sample
        return (sample is not None and sample.received_at.timestamp() >= since
                and sample.values.get(SEQUENCE_POINT) == sequence)

    async def _read_back(self, link: SirenLink, sequence: int, deadline: float,
                         since: float) -> Delivery:
        """Ask the device which command it carried out last, until `deadline`."""
        while True:
            sample, _ = await self.status.read_back(link, since)
            if sample is not None:
                seen = sample.values.get(SEQUENCE_POINT)
                return Delivery.TAKEN if seen == sequence else Delivery.NOT_TAKEN
            remaining = deadline - self.clock.now()
            if remaining <= 0:
                return Delivery.UNKNOWN
            await self.status.pause(link, _RESEND_PAUSE_S, remaining, read_back=True)

    def _note_accepted(self, activation: Activation) -> None:
        if activation.all_accepted_at is None and all(
                r.status is not Status.PENDING for r in activation.results.values()):
            activation.all_accepted_at = self.clock.now()

    async def _confirm(self, activation: Activation, result: SirenResult, link: SirenLink,
                       note: str = "") -> None:
        """Watch the siren from its start until its own feedback decides the result.

        Whatever shows the command's sequence with sounding and current first decides: a
        poll, a telemetry report or a progress acknowledgement; reporting links are not
        waited on at fixed intervals."""
        siren_id = result.siren_id
        state = self.fleet.states[siren_id]
        threshold = state.sounding_current_threshold
        signal = self.catalogue.signals.get(activation.signal or "")
        first_on_s = signal.steps[0].on_s if signal else 0.0
        sequence = sequence_of(activation.id)
        deadline = activation.start_at + self.config.confirm_timeout_s
        if activation.interrupted_at is not None:
            # Resumed after a restart, maybe past the window: the device's own record (its
            # sequence and how the signal ended) still tells; give it one more window to say.
            deadline = max(deadline, activation.interrupted_at + max(
                self.config.confirm_timeout_s, state.stale_after_s))
        failing = set(self.config.failing_faults)
        since = result.sent_at or activation.created_at
        last_note = "no answer since the start"
        if link.polled:
            # Nothing can be confirmed at the very instant of the start, and that instant
            # belongs to the "start now" commands of sirens with bad clocks: begin polling a
            # moment later, spread over one poll interval so a thousand sirens are not polled
            # at once.
            await self._sleep_until(activation.start_at + 0.2
                               + random.uniform(0, self.config.confirm_poll_interval_s))
        while True:
            verdict: tuple[Status, str] | None = None
            sample, why_not = await self.status.look(link, since)
            if sample is not None:
                verdict = judge_sample(activation, sample, sequence, threshold, first_on_s,
                                       failing, self.clock.now())
                last_note = f"controller state {sample.values.get('state')!r}"
            elif link.polled:
                last_note = why_not
            progress = link.progress(result.command_id)
            if verdict is None and progress is not None:
                verdict = judge_progress(activation, progress,
                                               set(state.faults & failing))
            if verdict is not None:
                self._finish(result, *verdict)
                return
            if self.clock.now() >= deadline:
                self._finish(result, Status.NO_FEEDBACK, f"no confirmation within "
                             f"{self.config.confirm_timeout_s:g} s ({last_note}){note}")
                return
            # (a reporting link looks again at least every second: "no current yet" becomes
            # "no current" by the clock, not by a new report)
            await self.status.pause(link, self.config.confirm_poll_interval_s,
                               min(1.0, deadline - self.clock.now()) if not link.polled
                               else deadline - self.clock.now())

    async def _sleep_until(self, moment: float) -> None:
        delay = moment - self.clock.now()
        if delay > 0:
            await self.clock.sleep(delay)

    def _finish(self, result: SirenResult, status: Status, reason: str) -> None:
        result.status, result.reason = status, reason
        if status in (Status.SOUNDED, Status.PASSED):
            result.confirmed_at = self.clock.now()
        if self.bus is not None:
            self.bus.publish(SirenResultFinal(result.activation_id, result.klass,
                                              result.siren_id, status.value, reason,
                                              utc(self.clock)))

    def _watch(self, activation: Activation, final_state: str) -> None:
        task = asyncio.create_task(self._close_when_done(activation, final_state),
                                   name=f"activation {activation.id}")
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _close_when_done(self, activation: Activation, final_state: str) -> None:
        tasks = list(activation.tasks.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        # A finished task is not held with its activation: ~0.8 kB each (its result, name,
        # callbacks), 1.6 MB for an all-siren test of 2,000 kept in memory afterwards (the
        # soak's RSS climbed with every one held). Nothing reads a finished task.
        for siren_id in [s for s, t in activation.tasks.items() if t.done()]:
            del activation.tasks[siren_id]
        if self._stopping:
            return
        if activation.state == "running":
            activation.state, activation.ended_at = final_state, self.clock.now()
            counts = activation.counts()
            log.info("activation %d %s: %s", activation.id, activation.state,
                     ", ".join(f"{n} {k}" for k, n in counts.items() if n))
        self._dirty.add(activation.id)
        await self._flush()

    # -- persistence -----------------------------------------------------------------------

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            await self._flush()
            self._prune()

    async def _flush(self) -> bool:
        """Write what changed; False (and kept for the next flush) when storage fails."""
        if not self._dirty:
            return True
        dirty, self._dirty = self._dirty, set()
        changed = [self.activations[activation_id] for activation_id in dirty]
        records: list[tuple[int, str, dict[str, Any]]] = []
        written: list[tuple[SirenResult, tuple[Any, ...]]] = []
        for a in changed:
            for r in a.results.values():
                # Only what changed: a 1,000-siren activation is otherwise serialised whole
                # every half second, which showed as a 100 ms stall in the fan-out bench.
                raw = r.record()
                key = tuple(raw.values())
                if key != r.written:
                    records.append((a.id, r.siren_id, raw))
                    written.append((r, key))
        try:
            await self.store.write(changed, records)
        except StorageError as exc:
            self.health.failed(exc)
            log.warning("activations %s held in memory until storage works: %s",
                        sorted(dirty)[:10], exc)
            self._dirty |= dirty  # try again at the next flush
            return False
        self.health.succeeded()
        for result, key in written:
            result.written = key
        return True

    async def find_by_requester(self, requested_by: str) -> int | None:
        """The activation a requester (a schedule step's tag) made, in memory or on disk."""
        for activation in self.activations.values():
            if activation.requested_by == requested_by:
                return activation.id
        return await self.store.find_by_requester(requested_by)

    async def get(self, activation_id: int) -> Activation | None:
        """An activation, from memory or (finished long ago, pruned) from the database."""
        activation = self.activations.get(activation_id)
        if activation is not None:
            return activation
        return await self.store.get(activation_id)

    async def list(self, limit: int = 100) -> list[dict[str, Any]]:
        newest = sorted(self.activations.values(), key=lambda a: a.id, reverse=True)[:limit]
        if len(newest) < limit:  # older ones were pruned from memory: read them back
            below = newest[-1].id if newest else self._next_id
            older = await self.store.older(below, limit - len(newest))
            newest += [a for a in older if a.id not in self.activations]
        return [a.report(with_sirens=False) for a in newest]

    def _prune(self) -> None:
        """Forget the oldest finished activations (they are on disk) while more than
        `keep_in_memory` are held or their results together exceed `keep_results_in_memory`.

        Kept whatever its age: the newest finished one, one still running, one with unwritten
        changes, one a siren is still busy with, and one a duplicate request could still be
        measured against.
        """
        keep, budget = self.config.keep_in_memory, self.config.keep_results_in_memory
        held = sum(len(a.results) for a in self.activations.values())
        if len(self.activations) <= keep and held <= budget:
            return
        now = self.clock.now()
        protected = set(self._dirty)
        protected.update(o.activation_id for o in self._occupied.values() if o.until > now)
        window = self.config.duplicate_window_s
        protected.update(activation_id for activation_id, at in self._recent.values()
                         if now - at < window)
        finished = sorted(a.id for a in self.activations.values()
                          if a.state != "running" and a.id not in protected
                          and all(t.done() for t in a.tasks.values()))
        for activation_id in finished[:-1]:  # oldest first; the newest one is always held
            if len(self.activations) <= keep and held <= budget:
                break
            held -= len(self.activations.pop(activation_id).results)


