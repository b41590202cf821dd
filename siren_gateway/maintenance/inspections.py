"""Seasonal inspections: each plan's occurrence (local time, like test plans) makes one task per
target siren, once, even across restarts (the store's unique key); a task not completed by its
due time raises an `inspection_overdue` alert, which completing it clears. Completing records
each checklist item's result and note, who and when, and the siren's own evidence at that
moment: its reachability, faults, battery voltage, link quality, and its latest silent test.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any, Literal

from siren_gateway.activation.engine import ActivationEngine
from siren_gateway.config.maintenance import InspectionPlanConfig, MaintenanceConfig
from siren_gateway.config.plans import compile_rule
from siren_gateway.config.site import Catalogue
from siren_gateway.errors import Conflict, Invalid, NotFound, StorageUnavailable
from siren_gateway.live.bus import Bus, InspectionOverdue
from siren_gateway.live.fleet import Fleet
from siren_gateway.maintenance.engine import siren_evidence
from siren_gateway.maintenance.model import InspectionTask
from siren_gateway.maintenance.pending import WriteBehind
from siren_gateway.runtime.clock import Clock, iso_utc
from siren_gateway.runtime.tasks import cancel_and_wait
from siren_gateway.scheduling.recurrence import occurrences
from siren_gateway.security.audit import AuditLog
from siren_gateway.security.auth import Principal
from siren_gateway.store.base import Store
from siren_gateway.store.errors import StorageError

log = logging.getLogger(__name__)

TICK_S = 1.0
ItemResult = Literal["ok", "fault", "not_applicable"]


class Inspections:
    def __init__(self, config: MaintenanceConfig, catalogue: Catalogue, fleet: Fleet, bus: Bus,
                 store: Store, audit: AuditLog, activations: ActivationEngine,
                 clock: Clock | None = None) -> None:
        self.config = config
        self.plans = {plan.id: plan for plan in config.inspection_plans}
        self._rules = {plan.id: compile_rule(plan.recurrence) for plan in self.plans.values()}
        self.fleet = fleet
        self.bus = bus
        self.store = store.inspections
        self.audit = audit
        self.activations = activations
        self.clock = clock or fleet.clock
        self.tasks: dict[int, InspectionTask] = {}
        self._next_id = 1
        self._last: dict[str, float] = {}  # each plan's latest occurrence that made tasks
        # Sirens of one zone list share one set (a set each cost ~0.25 kB a siren).
        shared: dict[frozenset[str], frozenset[str]] = {}
        self._zones_of = {siren.id: shared.setdefault(frozenset(siren.zones),
                                                      frozenset(siren.zones))
                          for siren in catalogue.sirens}
        self._pending = WriteBehind("inspection", self.tasks, self.store.write, bus)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        tasks, top = await self.store.open_and_recent(self.config.keep_closed)
        self.tasks.update((task.id, task) for task in tasks)
        self._next_id = top + 1
        now = self.clock.now()
        last = await self.store.last_occurrences()
        # A plan new to this database starts from now: no backlog of tasks for seasons past.
        self._last = {plan_id: last.get(plan_id, now) for plan_id in self.plans}
        self._task = asyncio.create_task(self._run(), name="inspections")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        await self._pending.flush()

    # -- reading -------------------------------------------------------------------------------

    def plan_list(self) -> list[dict[str, Any]]:
        now = datetime.fromtimestamp(self.clock.now(), UTC)
        out = []
        for plan in self.plans.values():
            upcoming = next(occurrences(self._rules[plan.id], plan.zone, now), None)
            out.append(plan.model_dump(mode="json") | {
                "next": upcoming[1].astimezone(plan.zone).isoformat() if upcoming else None,
                "sirens": len(self._targets(plan))})
        return out

    def query(self, state: str | None = None, siren_id: str | None = None,
              plan_id: str | None = None, overdue: bool | None = None) -> list[dict[str, Any]]:
        """Open tasks first (earliest due first), then the latest done ones."""
        chosen = [t for t in self.tasks.values()
                  if (state is None or t.state == state)
                  and (siren_id is None or t.siren_id == siren_id)
                  and (plan_id is None or t.plan_id == plan_id)
                  and (overdue is None or t.overdue == overdue)]
        chosen.sort(key=lambda t: (t.state != "open", t.due_at if t.state == "open" else -t.id))
        return [t.public() for t in chosen]

    def open_sirens(self) -> set[str]:
        """Sirens with an inspection task open (a technician may silent-test them)."""
        return {t.siren_id for t in self.tasks.values() if t.state == "open"}

    # -- completing ----------------------------------------------------------------------------

    async def complete(self, who: Principal, task_id: int,
                       results: dict[str, tuple[ItemResult, str]], notes: str) -> InspectionTask:
        task = self.tasks.get(task_id) or await self.store.get(task_id)
        if task is None:
            raise NotFound(f"no inspection task {task_id}")
        if task.state != "open" or task.id not in self.tasks:
            raise Conflict(f"inspection task {task_id} is already done")
        wanted = [item["id"] for item in task.checklist]
        missing = [item for item in wanted if item not in results]
        unknown = sorted(set(results) - set(wanted))
        if missing or unknown:
            raise Invalid("answer every checklist item, and only those"
                          + (f"; missing: {', '.join(missing)}" if missing else "")
                          + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
        async with self._lock:
            now = self.clock.now()
            task.results = {item: {"result": results[item][0], "note": results[item][1]}
                            for item in wanted}
            task.state, task.completed_at, task.completed_by = "done", now, who.username
            task.notes = notes
            task.evidence = self._evidence(task.siren_id, task.scheduled_at)
            if task.overdue:
                self._publish(task, overdue=False)
            self._pending.changed(task.id)
        faults = sorted(i for i, (result, _) in results.items() if result == "fault")
        await self.audit.record(who, "inspection.complete", "ok",
                                target=f"inspection:{task.id}", siren=task.siren_id,
                                plan=task.plan_id, faults=faults)
        await self._pending.flush()
        return task

    def _evidence(self, siren_id: str, since: float) -> dict[str, Any]:
        return siren_evidence(self.fleet, siren_id, self.clock.now()) | {
            "silent_test": self._latest_silent_test(siren_id, since)}

    def _latest_silent_test(self, siren_id: str, since: float) -> dict[str, Any] | None:
        """The newest silent test of this siren since the task was made (in memory: recent)."""
        for activation in sorted(self.activations.activations.values(), key=lambda a: -a.id):
            result = activation.results.get(siren_id)
            if activation.action == "silent_test" and result is not None \
                    and activation.created_at >= since:
                return {"activation_id": activation.id, "status": result.status.value,
                        "reason": result.reason, "at": iso_utc(activation.start_at)}
        return None

    # -- making tasks, and overdue -------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._make_due_tasks()
                self._mark_overdue()
            except StorageError as exc:
                log.warning("inspection tasks not stored (%s); trying again", exc)
            await self._pending.flush()
            self._pending.prune([t.id for t in self.tasks.values() if t.state == "done"],
                                self.config.keep_closed)
            await self.clock.sleep(TICK_S)

    def _targets(self, plan: InspectionPlanConfig) -> list[str]:
        targets = plan.targets
        return [siren_id for siren_id, zones in self._zones_of.items()
                if targets.all or siren_id in targets.sirens or zones & set(targets.zones)]

    async def _make_due_tasks(self) -> None:
        now = self.clock.now()
        for plan in self.plans.values():
            after = datetime.fromtimestamp(self._last[plan.id], UTC)
            upcoming = next(occurrences(self._rules[plan.id], plan.zone, after), None)
            if upcoming is None or upcoming[1].timestamp() > now:
                continue
            at = upcoming[1].timestamp()
            async with self._lock:
                made = await self._make_tasks(plan, at)
                self._last[plan.id] = at
            log.info("inspection plan %s: %d tasks for the occurrence of %s", plan.id,
                     len(made), upcoming[1].astimezone(plan.zone).isoformat())

    async def _make_tasks(self, plan: InspectionPlanConfig, at: float) -> list[InspectionTask]:
        """One task per target siren for the occurrence at `at` (those made before: left out)."""
        checklist = [item.model_dump() for item in plan.checklist]
        fresh = [InspectionTask(self._next_id + i, plan.id, siren_id, at,
                                at + plan.due_after_days * 86400, list(checklist))
                 for i, siren_id in enumerate(self._targets(plan))]
        made = await self.store.create(fresh)
        self._next_id += len(fresh)
        for task in made:
            self.tasks[task.id] = task
            self._pending.changed(task.id, stored=True)
        return made

    async def run_now(self, who: Principal, plan_id: str) -> list[InspectionTask]:
        """An extra round of a plan now (before a typhoon, after a storm): its tasks are due
        like the season's. Refused while a round of the plan is open and not yet overdue."""
        plan = self.plans.get(plan_id)
        if plan is None:
            raise NotFound(f"no inspection plan {plan_id!r}")
        async with self._lock:
            running = [t for t in self.tasks.values()
                       if t.plan_id == plan_id and t.state == "open" and not t.overdue]
            if running:
                raise Conflict(f"a round of {plan_id} is under way ({len(running)} tasks open, "
                               "not yet due): finish it first")
            try:
                made = await self._make_tasks(plan, self.clock.now())
            except StorageError as exc:
                raise StorageUnavailable("the tasks could not be stored; nothing was made, "
                                         "try again") from exc
        await self.audit.record(who, "inspection.run_now", "ok", target=f"plan:{plan_id}",
                                tasks=len(made))
        await self._pending.flush()
        return made

    def _mark_overdue(self) -> None:
        now = self.clock.now()
        for task in self.tasks.values():
            if task.state == "open" and not task.overdue and now > task.due_at:
                task.overdue = True
                self._pending.changed(task.id)
                self._publish(task, overdue=True)

    def _publish(self, task: InspectionTask, overdue: bool) -> None:
        plan = self.plans.get(task.plan_id)
        self.bus.publish(InspectionOverdue(
            task.id, plan.name if plan else task.plan_id, task.siren_id,
            datetime.fromtimestamp(task.due_at, UTC), overdue,
            self.config.inspection_overdue_severity))
