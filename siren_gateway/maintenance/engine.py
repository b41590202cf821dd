"""Work orders: opened by hand or from alerts, moved by people up to `resolved`, and then
verified (or reopened, with the evidence) by the siren itself.

Verification asks nothing of a person: once an order is resolved, the first status the siren
reports afterwards must no longer show the order's faults (else it is reopened at once, with
that status as evidence); they must then stay gone for `settle_s`; an order about the audio
chain then needs a passing silent test on that siren, which the verifier asks for itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from siren_gateway.activation.engine import ActivationEngine
from siren_gateway.activation.model import ActivationRequest, Status, Targets
from siren_gateway.config.common import SEVERITY_RANK
from siren_gateway.config.maintenance import MaintenanceConfig
from siren_gateway.config.site import Catalogue
from siren_gateway.errors import Conflict, Forbidden, Invalid, NotFound, Refused
from siren_gateway.live.bus import AlertChanged, Bus, Subscription
from siren_gateway.live.fleet import Fleet, Reachability
from siren_gateway.maintenance.model import (
    CLOSED,
    MANUAL_MOVES,
    PRIORITY_OF_SEVERITY,
    OrderState,
    Priority,
    WorkOrder,
)
from siren_gateway.maintenance.pending import WriteBehind
from siren_gateway.runtime.clock import Clock, iso_utc
from siren_gateway.runtime.tasks import cancel_and_wait
from siren_gateway.security.audit import AuditLog
from siren_gateway.security.auth import Principal, Role
from siren_gateway.store.base import Store

log = logging.getLogger(__name__)

TICK_S = 1.0
# Values of the siren's status kept as evidence (those a profile does not report are left out).
EVIDENCE_POINTS = ("state", "armed", "battery_voltage", "mains_ok", "sounding_current",
                   "rssi_dbm", "link_quality", "cabinet_temperature", "firmware")
_NOT_JUDGED = {Status.EXCLUDED, Status.CANCELLED, Status.PREEMPTED}
_VERIFIER = Principal("work-order verifier", Role.OPERATOR)


def siren_evidence(fleet: Fleet, siren_id: str, now: float) -> dict[str, Any]:
    """What the siren itself shows at this moment, kept with a verdict or an inspection."""
    state = fleet.states[siren_id]
    values = state.sample.values if state.sample else {}
    return {"at": iso_utc(now), "reachability": state.reachability.value,
            "faults": sorted(state.faults),
            "last_seen": state.last_seen.isoformat() if state.last_seen else None,
            "values": {k: values[k] for k in EVIDENCE_POINTS if k in values}}


class WorkOrders:
    def __init__(self, config: MaintenanceConfig, catalogue: Catalogue, fleet: Fleet, bus: Bus,
                 store: Store, audit: AuditLog, activations: ActivationEngine,
                 clock: Clock | None = None) -> None:
        self.config = config
        self.fleet = fleet
        self.bus = bus
        self.store = store.work_orders
        self.audit = audit
        self.activations = activations
        self.clock = clock or fleet.clock
        self.orders: dict[int, WorkOrder] = {}
        self._next_id = 1
        self._pending = WriteBehind("work_order", self.orders, self.store.write, bus)
        # One set per profile, shared by its sirens (a set each cost ~0.5 kB a siren).
        by_profile = {name: frozenset(config.audio_faults) | frozenset(profile.spec.silencing_faults)
                      for name, profile in catalogue.profiles.items()}
        self.audio_faults = {siren.id: by_profile[siren.profile] for siren in catalogue.sirens}
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one change of an order at a time

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        orders, top = await self.store.open_and_recent(self.config.keep_closed)
        self.orders.update((order.id, order) for order in orders)
        self._next_id = top + 1
        self._subscription = self.bus.subscribe("work orders", maxsize=10_000,
                                                kinds=(AlertChanged,))
        self._task = asyncio.create_task(self._run(), name="work orders")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        if self._subscription is not None:
            self.bus.unsubscribe(self._subscription)
            self._subscription = None
        await self._pending.flush()

    # -- reading -------------------------------------------------------------------------------

    def query(self, state: str | None = None, siren_id: str | None = None,
              assignee: str | None = None) -> list[dict[str, Any]]:
        """Orders not closed first (most urgent, then oldest), then the latest closed ones."""
        rank = {"urgent": 0, "high": 1, "normal": 2, "low": 3}
        chosen = [o for o in self.orders.values()
                  if (state is None or o.state.value == state)
                  and (siren_id is None or o.siren_id == siren_id)
                  and (assignee is None or o.assignee == assignee)]
        chosen.sort(key=lambda o: (o.closed, rank[o.priority] if not o.closed else 0,
                                   o.id if not o.closed else -o.id))
        return [o.public() for o in chosen]

    async def get(self, order_id: int) -> WorkOrder:
        order = self.orders.get(order_id) or await self.store.get(order_id)
        if order is None:
            raise NotFound(f"no work order {order_id}")
        return order

    async def check_technician_request(self, who: Principal, request: ActivationRequest,
                                       inspecting: set[str]) -> None:
        """A technician may ask for one thing only: a silent test of sirens it has an open work
        order for, or that have an inspection task open (`inspecting`). Anything else is
        refused (Forbidden) and audited."""
        if who.role >= Role.OPERATOR:
            return
        mine = inspecting | {o.siren_id for o in self.orders.values()
                             if not o.closed and o.assignee == who.username}
        targets = request.targets
        why = None
        if request.action != "silent_test":
            why = "a technician may run silent tests only, never an audible signal"
        elif targets.zones or targets.all or not targets.sirens:
            why = "a technician names the sirens to test, not zones or all"
        elif not_mine := sorted(set(targets.sirens) - mine):
            why = (f"no open work order assigned to {who.username} and no open inspection "
                   f"for {', '.join(not_mine)}")
        if why is not None:
            await self.audit.record(who, "activation.request", f"refused: {why}",
                                    requested=request.action, signal=request.signal,
                                    klass=request.klass, sirens=list(targets.sirens),
                                    zones=list(targets.zones), all=targets.all)
            raise Forbidden(why)

    # -- changes by people ---------------------------------------------------------------------

    async def open(self, who: Principal | str, siren_id: str, cause: str, *,
                   priority: Priority = "normal", assignee: str | None = None,
                   due_at: float | None = None, faults: list[str] | None = None,
                   silent_test: bool = False, alert: dict[str, Any] | None = None
                   ) -> WorkOrder:
        state = self.fleet.get(siren_id)
        if state is None:
            raise NotFound(f"no siren {siren_id!r}")
        now = self.clock.now()
        wanted = sorted(faults if faults is not None else state.faults)
        by = who.username if isinstance(who, Principal) else who
        async with self._lock:
            order = WorkOrder(
                self._next_id, siren_id, cause, priority,
                OrderState.ASSIGNED if assignee else OrderState.OPEN, now, by, wanted,
                silent_test or bool(set(wanted) & self.audio_faults[siren_id]),
                alert_id=alert["id"] if alert else None, rule=alert["rule"] if alert else None,
                assignee=assignee, due_at=due_at)
            self._next_id += 1
            order.history.append({"at": iso_utc(now), "by": by, "to": order.state.value,
                                  "note": cause})
            self.orders[order.id] = order
            self._pending.changed(order.id)
        await self.audit.record(who, "workorder.open", "ok", target=f"workorder:{order.id}",
                                siren=siren_id, cause=cause, priority=priority,
                                assignee=assignee, faults=wanted)
        await self._pending.flush()
        return order

    async def update(self, who: Principal, order_id: int, *, state: str | None = None,
                     assignee: str | None = None, priority: Priority | None = None,
                     due_at: float | None = None, note: str | None = None) -> WorkOrder:
        order = await self.get(order_id)
        if order.id not in self.orders:
            raise Conflict(f"work order {order_id} is closed and archived; open a new one")
        async with self._lock:
            now = self.clock.now()
            if who.role < Role.OPERATOR and order.assignee not in (None, who.username):
                raise Conflict(f"work order {order_id} is assigned to {order.assignee}")
            if who.role < Role.OPERATOR and assignee not in (None, who.username):
                raise Forbidden("a technician may take an order, not give it to someone else")
            # The move is checked before anything changes: a refused request changes nothing.
            will_assign = state is None and assignee is not None and (
                order.state is OrderState.OPEN and assignee != order.assignee)
            target = self._check_move(order, OrderState.ASSIGNED.value if will_assign else state,
                                      assignee or order.assignee)
            if assignee is not None and assignee != order.assignee:
                order.assignee = assignee
                order.history.append({"at": iso_utc(now), "by": who.username,
                                      "assignee": assignee})

            if priority is not None:
                order.priority = priority
            if due_at is not None:
                order.due_at = due_at
            if note:
                order.notes.append({"at": iso_utc(now), "by": who.username, "text": note})
            if target is not None:
                self._move_by_hand(who, order, target, note, now)
            self._pending.changed(order.id)
        await self.audit.record(who, "workorder.update", "ok", target=f"workorder:{order.id}",
                                state=state, assignee=assignee, priority=priority, note=note)
        await self._pending.flush()
        return order

    @staticmethod
    def _check_move(order: WorkOrder, to: str | None, assignee: str | None
                    ) -> OrderState | None:
        """The state a person may move the order to (None: no move), or the refusal."""
        if to is None or to == order.state.value:
            return None
        try:
            target = OrderState(to)
        except ValueError:
            raise Invalid(f"unknown state {to!r}") from None
        if target is OrderState.VERIFIED:
            raise Conflict("only the siren verifies a repair: mark it resolved, and it is "
                           "verified when the siren shows the fault gone (and a silent test "
                           "passes, for the audio chain)")
        if target not in MANUAL_MOVES[order.state]:
            raise Conflict(f"a {order.state.value} work order cannot move to {to}; it can "
                           f"move to {', '.join(sorted(MANUAL_MOVES[order.state])) or 'nothing'}")
        if target is OrderState.ASSIGNED and not assignee:
            raise Invalid("name the assignee")
        return target

    def _move_by_hand(self, who: Principal, order: WorkOrder, target: OrderState,
                      note: str | None, now: float) -> None:
        if target is OrderState.RESOLVED:
            order.resolved_at = now
            order.verification.clear_since = None
            order.verification.test_activation_id = None
        self._set_state(order, target, who.username, note or "", now)

    def _set_state(self, order: WorkOrder, to: OrderState, by: str, note: str, now: float,
                   evidence: dict[str, Any] | None = None) -> None:
        entry: dict[str, Any] = {"at": iso_utc(now), "by": by, "from": order.state.value,
                                 "to": to.value, "note": note}
        if evidence is not None:
            entry["evidence"] = evidence
            order.evidence = evidence
        order.history.append(entry)
        order.state = to
        if to is OrderState.VERIFIED:
            order.verified_at = now
        self._pending.changed(order.id)
        log.info("work order %d (%s): %s -> %s (%s)", order.id, order.siren_id,
                 entry["from"], to.value, note)

    # -- alerts and the verifier ---------------------------------------------------------------

    async def _run(self) -> None:
        assert self._subscription is not None
        while True:
            event = None
            try:
                async with asyncio.timeout(TICK_S):
                    event = await self._subscription.get()
            except TimeoutError:
                pass
            if isinstance(event, AlertChanged) and event.change == "raised":
                await self._from_alert(event.alert)
            try:
                await self._verify_all()
            except Exception:  # never let one order's surprise end verification
                log.exception("work order verification failed")
            await self._pending.flush()
            self._pending.prune([o.id for o in self.orders.values() if o.state in CLOSED],
                                self.config.keep_closed)

    async def _from_alert(self, alert: dict[str, Any]) -> None:
        siren_id = alert.get("siren_id")
        if not siren_id or self.fleet.get(siren_id) is None:
            return
        rule, severity = str(alert["rule"]), str(alert["severity"])
        if not any((not r.rules or rule in r.rules)
                   and SEVERITY_RANK[severity] >= SEVERITY_RANK[r.min_severity]
                   for r in self.config.auto_open):
            return
        # One order per siren and rule at a time: a flapping fault adds to the open one.
        for order in self.orders.values():
            if order.siren_id == siren_id and order.rule == rule and not order.closed:
                order.notes.append({"at": iso_utc(self.clock.now()), "by": "alerts",
                                    "text": f"raised again: {alert['message']}"})
                self._pending.changed(order.id)
                return
        state = self.fleet.states[siren_id]
        faults = [rule] if rule in state.faults else sorted(state.faults)
        await self.open(f"alert:{alert['id']}", siren_id, str(alert["message"]),
                        priority=PRIORITY_OF_SEVERITY.get(severity, "normal"),
                        faults=faults, alert=alert)

    async def _verify_all(self) -> None:
        for order in [o for o in self.orders.values() if o.state is OrderState.RESOLVED]:
            async with self._lock:
                if order.state is OrderState.RESOLVED:
                    await self._verify(order)

    async def _verify(self, order: WorkOrder) -> None:
        state = self.fleet.states[order.siren_id]
        sample = state.sample
        resolved_at = order.resolved_at or 0.0
        now = self.clock.now()
        check = order.verification
        if (state.reachability is not Reachability.ONLINE or sample is None
                or sample.received_at.timestamp() < resolved_at):
            return  # nothing new from the siren yet: its word is awaited, not assumed
        present = sorted(set(order.faults) & state.faults)
        if present:
            self._set_state(order, OrderState.REOPENED, "siren",
                            f"the siren still reports {', '.join(present)}", now,
                            self._evidence(order))
            return
        if check.clear_since is None:
            check.clear_since = now
            self._pending.changed(order.id)
        if now - check.clear_since < self.config.settle_s:
            return
        if not order.audio:
            self._set_state(order, OrderState.VERIFIED, "siren",
                            f"fault gone for {self.config.settle_s:g} s", now,
                            self._evidence(order))
            return
        if check.test_activation_id is None:
            await self._ask_for_silent_test(order)
            return
        activation = await self.activations.get(check.test_activation_id)
        result = activation.results.get(order.siren_id) if activation else None
        if result is None or result.status in (Status.PENDING, Status.ACCEPTED):
            return
        evidence = self._evidence(order) | {"silent_test": {
            "activation_id": check.test_activation_id, "status": result.status.value,
            "reason": result.reason}}
        if result.status is Status.PASSED:
            self._set_state(order, OrderState.VERIFIED, "siren",
                            f"fault gone for {self.config.settle_s:g} s and silent test "
                            f"{check.test_activation_id} passed", now, evidence)
        elif result.status in _NOT_JUDGED:
            check.test_activation_id = None  # not a verdict on the siren: ask again later
            check.clear_since = now
            order.evidence = evidence
            self._pending.changed(order.id)
        else:
            self._set_state(order, OrderState.REOPENED, "siren",
                            f"silent test {check.test_activation_id} {result.status.value}: "
                            f"{result.reason}", now, evidence)

    async def _ask_for_silent_test(self, order: WorkOrder) -> None:
        request = ActivationRequest(Targets(sirens=(order.siren_id,)), "test",
                                    action="silent_test")
        try:
            activation = await self.activations.activate(
                Principal(f"workorder:{order.id}", _VERIFIER.role), request)
            order.verification.test_activation_id = int(activation.id)
        except Conflict as exc:
            twin = exc.details.get("activation_id")
            if twin is None:  # busy (an emergency, say): try again at the next tick
                return
            order.verification.test_activation_id = int(twin)  # the same test, just run
        except Refused as exc:
            log.warning("work order %d: silent test refused: %s", order.id, exc.message)
            return
        self._pending.changed(order.id)

    def _evidence(self, order: WorkOrder) -> dict[str, Any]:
        return siren_evidence(self.fleet, order.siren_id, self.clock.now())
