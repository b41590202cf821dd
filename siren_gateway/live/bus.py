"""In-process publish/subscribe of typed events with bounded queues.

Publishing never blocks and never fails: a subscriber that falls behind loses its own oldest
events (counted), so a slow dashboard or database can never stall the pollers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from siren_gateway.model import Sample


class SampleReceived(msgspec.Struct, frozen=True, gc=False):
    """One per poll and per telemetry message: a Struct for the reason Sample is one."""

    sample: Sample
    # Another cluster node's sample, as mirrored here (cluster/live.py): seen by the rules,
    # never stored again (its owner stored it).
    mirrored: bool = False


@dataclass(frozen=True, slots=True)
class StatusChanged:
    siren_id: str
    old: str
    new: str
    at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class FaultsChanged:
    siren_id: str
    raised: frozenset[str]
    cleared: frozenset[str]
    active: frozenset[str]
    at: datetime


@dataclass(frozen=True, slots=True)
class SpoolOverflow:
    """A telemetry sink had to throw data away: alert-worthy."""

    sink: str
    dropped_now: int
    dropped_total: int
    at: datetime


@dataclass(frozen=True, slots=True)
class SirenResultFinal:
    """One siren's result in an activation is decided."""

    activation_id: int
    klass: str
    siren_id: str
    status: str
    reason: str
    at: datetime


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """Something an attacker does: for now, failed logins past a threshold."""

    kind: str  # login_attack
    subject: str  # "address 10.1.2.3" or "user operator"
    message: str
    at: datetime


@dataclass(frozen=True, slots=True)
class AlertChanged:
    """An alert was raised, acknowledged or cleared; `alert` is its full public form."""

    change: str
    alert: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ScheduleEvent:
    """A scheduled occurrence was announced (notice), started, ended, skipped or missed."""

    kind: str  # notice, running, done, missed, skipped, cancelled
    plan_id: str
    plan_name: str
    occurrence_id: int
    scheduled_at: datetime
    zones: tuple[str, ...]
    lead_s: float | None  # for a notice: how long before the start it was meant to go out
    message: str
    at: datetime


@dataclass(frozen=True, slots=True)
class CoverageChanged:
    """A zone's audible coverage is under its target (or has just come back to it)."""

    zone_id: str
    zone_name: str
    share: float
    target: float
    below: bool
    repair: tuple[str, ...]  # sirens whose repair would bring it back to target


@dataclass(frozen=True, slots=True)
class InspectionOverdue:
    """A siren's inspection task passed its due time unfinished (or, overdue=False, is done)."""

    task_id: int
    plan_name: str
    siren_id: str
    due_at: datetime
    overdue: bool
    severity: str  # the maintenance section's choice


@dataclass(frozen=True, slots=True)
class MaintenanceChanged:
    """A work order or an inspection task changed (by a person, the siren, or the clock)."""

    kind: str  # "work_order" or "inspection"
    id: int
    siren_id: str
    state: str


Event = (SampleReceived | StatusChanged | FaultsChanged | SpoolOverflow | SirenResultFinal
         | AlertChanged | ScheduleEvent | SecurityEvent | CoverageChanged | InspectionOverdue
         | MaintenanceChanged)


class EventQueue:
    """A subscriber's FIFO: asyncio.Queue's API as used here, without its task accounting,
    which cost more than the event itself on the per-sample path. One consumer per queue."""

    __slots__ = ("_items", "_waiter", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self._items: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.maxsize = maxsize

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    def get_nowait(self) -> Event:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    def put_nowait(self, item: Event) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Event:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class Subscription:
    def __init__(self, bus: Bus, name: str, maxsize: int,
                 kinds: tuple[type[Event], ...] | None) -> None:
        self.name = name
        self.kinds = kinds
        self.queue = EventQueue(maxsize)
        self.dropped = 0
        self.delivered = 0
        self._bus = bus

    def offer(self, event: Event) -> None:
        if self.kinds is not None and not isinstance(event, self.kinds):
            return
        # EventQueue.put_nowait written out: this runs for every sample and subscriber.
        queue = self.queue
        items = queue._items
        if len(items) >= queue.maxsize:
            items.popleft()  # the oldest goes: live views care about the newest
            self.dropped += 1
        items.append(event)
        waiter = queue._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.delivered += 1

    async def get(self) -> Event:
        return await self.queue.get()

    def close(self) -> None:
        self._bus.unsubscribe(self)


class Bus:
    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self.published = 0

    def subscribe(self, name: str, maxsize: int = 1000,
                  kinds: tuple[type[Event], ...] | None = None) -> Subscription:
        subscription = Subscription(self, name, maxsize, kinds)
        self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def publish(self, event: Event) -> None:
        self.published += 1
        for subscription in self._subscriptions:
            subscription.offer(event)

    def stats(self) -> dict[str, dict[str, int]]:
        return {s.name: {"queued": s.queue.qsize(), "delivered": s.delivered, "dropped": s.dropped}
                for s in self._subscriptions}
