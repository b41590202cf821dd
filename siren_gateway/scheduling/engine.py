"""Scheduled test soundings: each occurrence of a plan fires exactly once, on time, or is missed.

Every occurrence is a row in SQLite before anything happens to it, and moves through

    scheduled -> notified -> running -> done        (or missed, skipped, cancelled)

Firing is a compare-and-set on that row (scheduled/notified -> running) committed before the
first activation is created, and each step's activation is tagged with the occurrence and step
and is itself on disk before its first command. So after a crash or SIGKILL at any moment:

- an occurrence not yet claimed is claimed once: on time, late within its plan's grace period,
  or, past it, recorded as *missed* (and an alert raised): never sounded hours late;
- a claimed occurrence resumes: steps whose activation exists are never created again; steps
  not yet due are fired on time; a step whose moment passed beyond the grace period is recorded
  as missed, not sounded late.

Time comes from an injectable clock, so tests can run occurrences without waiting for real time.
One module, a little past 400 lines: the firing loop and the operator's actions (skip, cancel,
run now, edit) race for the same occurrences; rows are in store/schedules.py, reports apart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from datetime import UTC, datetime
from typing import Any

from siren_gateway.config.plans import PlanConfig, compile_rule
from siren_gateway.config.site import SirenConfig
from siren_gateway.errors import Conflict, Invalid, NotFound
from siren_gateway.live.bus import Bus, ScheduleEvent
from siren_gateway.runtime.clock import Clock, SystemClock, iso_utc
from siren_gateway.runtime.tasks import cancel_and_wait
from siren_gateway.scheduling.model import (
    PENDING,
    Occurrence,
    StepExecutor,
    StepRefused,
    spoken_duration,
    step_tag,
)
from siren_gateway.scheduling.recurrence import occurrences
from siren_gateway.scheduling.reports import build_report
from siren_gateway.security.audit import AuditLog
from siren_gateway.security.auth import Principal
from siren_gateway.store.base import Store

log = logging.getLogger(__name__)

MAX_CATCH_UP = 20  # past occurrences recorded as missed after a long outage, per plan
IDLE_WAKE_S = 30.0




class Scheduler:
    def __init__(self, plans: list[PlanConfig], sirens: list[SirenConfig], store: Store,
                 bus: Bus, audit: AuditLog, executor: StepExecutor, prepare_s: float,
                 clock: Clock | None = None) -> None:
        self.config_plans = plans  # the site file's; the API adds its own in the store
        self.sirens = sirens
        self.store = store.schedules
        self.bus = bus
        self.audit = audit
        self.executor = executor
        self.clock: Clock = clock or SystemClock()
        # Activations are created this long before a step's start, so commands (which carry
        # the start time) are on the sirens before the second they sound on.
        self.prepare_s = prepare_s
        self.plans: dict[str, PlanConfig] = {}
        self.sources: dict[str, str] = {}
        self.baselines: dict[str, float] = {}  # since when each plan has its present form
        self._runners: dict[int, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._running = False
        # The latest firings (occurrence, step, planned, created), to see how late they were.

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        config_plans = {p.id: p for p in self.config_plans}
        now = self.clock.now()

        # The site file is the truth for its own plans; API plans live only in the store.
        stored = await self.store.replace_config_plans(
            {plan.id: plan.model_dump_json(by_alias=True) for plan in config_plans.values()}, now)
        for plan_id, source, data, since in stored:
            try:
                self.plans[plan_id] = PlanConfig.model_validate_json(data)
                self.sources[plan_id] = source
                self.baselines[plan_id] = since
            except ValueError:
                log.exception("stored plan %s no longer validates; ignored", plan_id)
        self._running = True
        self._task = asyncio.create_task(self._loop(), name="scheduler")

    async def stop(self) -> None:
        self._running = False
        tasks = [t for t in [self._task, *self._runners.values()] if t is not None]
        await cancel_and_wait(tasks)
        self._runners.clear()

    def wake(self) -> None:
        self._wake.set()

    # -- the loop ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        while self._running:
            self._wake.clear()  # before the pass: a wake() during it starts another at once
            try:
                next_due = await self._tick()
            except Exception:  # a bug in one pass must not end scheduling for good
                log.exception("scheduler pass failed")
                next_due = self.clock.now() + 5.0
            delay = min(IDLE_WAKE_S, max(0.0, next_due - self.clock.now()))
            sleeper = asyncio.create_task(self.clock.sleep(delay))
            waker = asyncio.create_task(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()

    async def _tick(self) -> float:
        """One pass: materialize, notify, fire, resume. Returns when the next thing is due."""
        now = self.clock.now()
        next_due = now + IDLE_WAKE_S
        for plan in list(self.plans.values()):
            if plan.enabled:
                await self._materialize(plan, now)
        for occ in await self.store.unfinished():
            owner = self.plans.get(occ.plan_id)
            if owner is None:
                continue
            if occ.state == "running":
                if occ.id not in self._runners:
                    self._run(occ, owner)  # claimed before a restart: resume, never re-fire
                continue
            if not owner.enabled and occ.kind == "planned":
                continue
            fire_at = occ.scheduled_at - self.prepare_s
            if now >= fire_at:
                await self._fire(occ, owner, now)
                continue
            next_due = min(next_due, fire_at, await self._notify(occ, owner, now))
        return next_due

    async def _materialize(self, plan: PlanConfig, now: float) -> None:
        """Keep the plan's next occurrence on disk (and record what an outage made us miss)."""

        past, pending, ahead = await self.store.planned_around(plan.id, now)
        if pending:
            return
        # Catch up from the last occurrence we knew of, but never from before the plan took its
        # present form: an edited plan has no "missed" occurrences under its new rule.
        since = self.baselines.get(plan.id, now)
        after = datetime.fromtimestamp(max(past, since) if past is not None else since, UTC)
        rows: list[tuple[str, float, str, str, str]] = []
        missed = 0
        exclusions = set(plan.exclusions)
        for local_date, instant in occurrences(compile_rule(plan.recurrence), plan.zone, after):
            at = instant.timestamp()
            if at in ahead:
                continue  # already decided (skipped ahead of time)
            if local_date in exclusions:
                rows.append((plan.id, at, local_date.isoformat(), "skipped", "excluded date"))
                continue
            if at + plan.grace_s < now:
                missed += 1
                if missed <= MAX_CATCH_UP:
                    rows.append((plan.id, at, local_date.isoformat(), "missed",
                                 "the gateway was not running at the time"))
                continue
            rows.append((plan.id, at, local_date.isoformat(), "scheduled", ""))
            break

        if rows:
            await self.store.add_planned(rows)
            for plan_id, at, _, state, note in rows:
                if state == "missed":
                    occ = await self.store.planned_at(plan_id, at)
                    if occ is not None:
                        self._publish(occ, "missed", note)

    async def _notify(self, occ: Occurrence, plan: PlanConfig, now: float) -> float:
        """Send the notices that are due; returns when the next one is."""
        due = [lead for lead in plan.notice_lead_s
               if now >= occ.scheduled_at - lead and lead not in occ.notices]
        next_due = min((occ.scheduled_at - lead for lead in plan.notice_lead_s
                        if occ.scheduled_at - lead > now and lead not in occ.notices),
                       default=math.inf)
        if not due:
            return next_due
        # After an outage several may be due at once: announce the nearest only.
        send = min(due)
        notices = sorted({*occ.notices, *due}, reverse=True)
        await self.store.transition(occ.id, PENDING,
                           state="notified", notices=json.dumps(notices))
        occ.notices, occ.state = notices, "notified"
        self._publish(occ, "notice", f"{plan.name} in {spoken_duration(occ.scheduled_at - now)}",
                      lead_s=send)
        return next_due

    async def _fire(self, occ: Occurrence, plan: PlanConfig, now: float) -> None:
        if now > occ.scheduled_at + plan.grace_s:
            note = f"not started within the grace period ({plan.grace_s:g} s); not sounded late"
            if await self.store.transition(occ.id, PENDING, state="missed",
                                  ended_at=now, note=note):
                occ.state, occ.note = "missed", note
                self._publish(occ, "missed", occ.note)
                self.wake()  # put the next one on disk now
            return
        # Late (the gateway was down or busy at the time): the whole sequence moves, keeping
        # its step spacing, to the next whole second the sirens can still be commanded for.
        base = occ.scheduled_at
        if now > base - self.prepare_s + 1.0:
            base = math.ceil(now + self.prepare_s)
        claimed = await self.store.transition(occ.id, PENDING,
                                     state="running", fired_at=now, base_at=base)
        if not claimed:
            return  # someone (a previous pass) already did: exactly once
        occ.state, occ.fired_at, occ.base_at = "running", now, base
        self._publish(occ, "running", "late by %.1f s" % (base - occ.scheduled_at)
                      if base > occ.scheduled_at else "on time")
        self._run(occ, plan)

    def _run(self, occ: Occurrence, plan: PlanConfig) -> None:
        task = asyncio.create_task(self._execute(occ, plan), name=f"occurrence {occ.id}")
        self._runners[occ.id] = task
        task.add_done_callback(lambda _: self._runners.pop(occ.id, None))

    async def _execute(self, occ: Occurrence, plan: PlanConfig) -> None:
        base = occ.base_at if occ.base_at is not None else occ.scheduled_at
        for index, step in enumerate(plan.steps):
            key = str(index)
            if key in occ.steps:
                continue
            tag = step_tag(occ.id, index)
            found = await self.executor.find(tag)
            if found is not None:  # created just before a crash: never again
                await self._record_step(occ, index, {"activation_id": found,
                                                     "start_at": iso_utc(base + step.offset_s)})
                continue
            start_at = base + step.offset_s
            now = self.clock.now()
            if now > start_at + plan.grace_s:
                await self._record_step(occ, index, {"error": "missed: its moment passed while "
                                                     "the gateway was down; not sounded late"})
                continue
            await self.clock.sleep(start_at - self.prepare_s - now)
            now = self.clock.now()
            if start_at < now + 1.0:  # resumed late: start as soon as commands can be out
                start_at = math.ceil(now + 1.0)
            try:
                activation_id = await self.executor.start(plan, occ.id, index, start_at, tag)
            except StepRefused as exc:
                await self._record_step(occ, index, {"error": f"refused: {exc}"})
                continue
            await self._record_step(occ, index, {"activation_id": activation_id,
                                                 "start_at": iso_utc(start_at)})
        ids = [int(s["activation_id"]) for s in occ.steps.values() if "activation_id" in s]
        while not await self.executor.finished(ids):
            await self.clock.sleep(0.5)
        failed_steps = [s for s in occ.steps.values() if "error" in s]
        note = f"{len(failed_steps)} step(s) not sounded" if failed_steps else ""
        if await self.store.transition(occ.id, ("running",), state="done",
                              ended_at=self.clock.now(), note=note):
            occ.state = "done"
            self._publish(occ, "done", note)
            self.wake()

    async def _record_step(self, occ: Occurrence, index: int, record: dict[str, Any]) -> None:
        occ.steps[str(index)] = {"step": index} | record
        await self.store.transition(occ.id, None, steps=json.dumps(occ.steps))

    def _publish(self, occ: Occurrence, kind: str, message: str, lead_s: float | None = None
                 ) -> None:
        plan = self.plans.get(occ.plan_id)
        self.bus.publish(ScheduleEvent(
            kind=kind, plan_id=occ.plan_id, plan_name=plan.name if plan else occ.plan_id,
            occurrence_id=occ.id, scheduled_at=datetime.fromtimestamp(occ.scheduled_at, UTC),
            zones=tuple(plan.targets.zones) if plan else (), lead_s=lead_s, message=message,
            at=datetime.fromtimestamp(self.clock.now(), UTC)))

    # -- queries and control (the API's side) -----------------------------------------------

    def all_plans(self) -> list[PlanConfig]:
        return list(self.plans.values())

    def source(self, plan_id: str) -> str:
        """Where a plan is defined: "config" (the site file) or "api"."""
        return self.sources.get(plan_id, "api")

    def plan(self, plan_id: str) -> PlanConfig:
        plan = self.plans.get(plan_id)
        if plan is None:
            raise NotFound(f"no schedule {plan_id!r}")
        return plan

    def preview(self, plan_id: str, count: int) -> list[dict[str, Any]]:
        plan = self.plan(plan_id)
        out: list[dict[str, Any]] = []
        after = datetime.fromtimestamp(self.clock.now(), UTC)
        exclusions = set(plan.exclusions)
        for local_date, instant in occurrences(compile_rule(plan.recurrence), plan.zone, after):
            out.append({"scheduled_at": instant.isoformat(),
                        "scheduled_local": instant.astimezone(plan.zone).isoformat(),
                        "local_date": local_date.isoformat(),
                        "excluded": local_date in exclusions})
            if len(out) >= count:
                break
        return out

    async def occurrences(self, plan_id: str | None = None, limit: int = 100
                          ) -> list[dict[str, Any]]:
        rows = await self.store.newest(plan_id, limit)
        return [o.public(self.plans.get(o.plan_id)) for o in rows]

    async def occurrence(self, occurrence_id: int) -> Occurrence:
        found = await self.store.get(occurrence_id)
        if found is None:
            raise NotFound(f"no occurrence {occurrence_id}")
        return found

    async def save_plan(self, who: Principal, plan: PlanConfig, create: bool) -> PlanConfig:
        if create and plan.id in self.plans:
            raise Conflict(f"schedule {plan.id!r} exists; PUT to change it")
        if not create and plan.id not in self.plans:
            raise NotFound(f"no schedule {plan.id!r}")
        if self.sources.get(plan.id) == "config":
            raise Conflict(f"schedule {plan.id!r} is defined in the site file; "
                                "change it there")
        now = self.clock.now()

        await self.store.save_api_plan(plan.id, plan.model_dump_json(by_alias=True), now)
        self.plans[plan.id], self.sources[plan.id], self.baselines[plan.id] = plan, "api", now
        await self.audit.record(who, "schedule.create" if create else "schedule.update",
                                "accepted", target=f"schedule {plan.id}",
                                plan=json.loads(plan.model_dump_json(by_alias=True)))
        self.wake()
        return plan

    async def delete_plan(self, who: Principal, plan_id: str) -> None:
        self.plan(plan_id)
        if self.sources.get(plan_id) == "config":
            raise Conflict(f"schedule {plan_id!r} is defined in the site file")

        plan = self.plans[plan_id]
        await self.store.delete_plan(plan_id)
        del self.plans[plan_id]
        self.sources.pop(plan_id, None)
        # The deleted plan's content stays in the audit log: what was planned is history too.
        await self.audit.record(who, "schedule.delete", "accepted", target=f"schedule {plan_id}",
                                plan=plan.model_dump(mode="json", by_alias=True))

    async def skip(self, who: Principal, plan_id: str, key: str) -> dict[str, Any]:
        """Skip a coming occurrence (by id, or by its start time), or cancel a running one."""
        plan = self.plan(plan_id)
        occ = await self._find_occurrence(plan, key)
        now = self.clock.now()
        if occ.state in PENDING and occ.scheduled_at < now - plan.grace_s:
            raise Conflict(f"occurrence {occ.id} is in the past: history is not "
                                "rewritten")
        if occ.state in PENDING:
            changed = await self.store.transition(occ.id, PENDING,
                                         state="skipped", ended_at=now,
                                         note=f"skipped by {who.username}")
            new_state = "skipped"
        elif occ.state == "running":
            changed = await self.store.transition(occ.id, ("running",), state="cancelled",
                                         ended_at=now, note=f"cancelled by {who.username}")
            new_state = "cancelled"
            runner = self._runners.pop(occ.id, None)
            if runner is not None:
                await cancel_and_wait([runner])
            ids = [int(s["activation_id"]) for s in occ.steps.values() if "activation_id" in s]
            await self.executor.cancel(ids)
        else:
            raise Conflict(f"occurrence {occ.id} is {occ.state}; nothing to skip")
        if not changed:
            raise Conflict(f"occurrence {occ.id} changed meanwhile; look again")
        occ.state = new_state
        await self.audit.record(who, f"schedule.{'skip' if new_state == 'skipped' else 'cancel'}",
                                "accepted", target=f"occurrence {occ.id}", plan=plan_id,
                                scheduled_at=iso_utc(occ.scheduled_at))
        self._publish(occ, new_state, f"by {who.username}")
        self.wake()
        return occ.public(plan)

    async def _find_occurrence(self, plan: PlanConfig, key: str) -> Occurrence:
        if key.isdigit():
            if len(key) > 15:
                raise NotFound(f"no occurrence {key[:20]}…")
            occ = await self.occurrence(int(key))
            if occ.plan_id != plan.id:
                raise NotFound(f"occurrence {key} is not one of {plan.id!r}")
            return occ
        try:
            moment = datetime.fromisoformat(key.replace("Z", "+00:00"))
        except ValueError:
            raise Invalid("give an occurrence id or its ISO start time") from None
        if moment.tzinfo is None:
            raise Invalid("the start time needs a UTC offset")
        try:
            at = moment.timestamp()
            datetime.fromtimestamp(at + 366 * 86400, UTC)  # room to look one year ahead
        except (OverflowError, OSError, ValueError):
            raise Invalid("that start time is out of range") from None
        if at < self.clock.now():
            raise Conflict("that occurrence is in the past: history is not rewritten")
        found = await self.store.planned_at(plan.id, at)
        if found is not None:
            return found
        # Not on disk yet (further ahead than the next one): it must be a real occurrence.
        for local_date, instant in occurrences(compile_rule(plan.recurrence), plan.zone,
                                               datetime.fromtimestamp(at - 1, UTC)):
            if instant.timestamp() != at:
                break
            await self.store.add_planned([(plan.id, at, local_date.isoformat(), "scheduled", "")])
            added = await self.store.planned_at(plan.id, at)
            if added is not None:
                return added
        raise NotFound(f"{key} is not an occurrence of {plan.id!r}")

    async def run_now(self, who: Principal, plan_id: str) -> dict[str, Any]:
        plan = self.plan(plan_id)
        now = self.clock.now()
        at = math.ceil(now + self.prepare_s)
        local = datetime.fromtimestamp(at, plan.zone).date().isoformat()

        occurrence_id = await self.store.add_run_now(plan.id, at, local,
                                                     f"run now by {who.username}")
        await self.audit.record(who, "schedule.run_now", "accepted",
                                target=f"occurrence {occurrence_id}", plan=plan_id)
        self.wake()
        return (await self.occurrence(occurrence_id)).public(plan)

    async def report(self, occurrence_id: int) -> dict[str, Any]:
        occ = await self.occurrence(occurrence_id)
        plan = self.plans.get(occ.plan_id)
        ids = [int(s["activation_id"]) for s in occ.steps.values() if "activation_id" in s]
        reports = await self.executor.reports(ids)
        return build_report(occ, plan, reports, self.sirens)

    def stats(self) -> dict[str, Any]:
        return {"plans": len(self.plans), "running": len(self._runners)}
