"""What the engines need from durable state, whatever the database: one protocol per kind of
record, and the Store that holds them all with the database's health. The SQLite store
(store/sqlite.py) is the embedded default; another database implements these same protocols.

Every method either does all it says or raises StorageError (DatabaseClosed when the store is
not running); callers keep what they could not write and try again.
"""

from __future__ import annotations

from typing import Any, Protocol

from siren_gateway.activation.model import Activation
from siren_gateway.alerts.model import Alert
from siren_gateway.maintenance.model import InspectionTask, WorkOrder
from siren_gateway.scheduling.model import Occurrence
from siren_gateway.store.audit import AuditRow
from siren_gateway.store.database import StorageHealth


class ActivationRepository(Protocol):
    async def recent_and_running(self, keep: int) -> tuple[list[Activation], int]: ...

    async def write(self, activations: list[Activation],
                    results: list[tuple[int, str, dict[str, Any]]]) -> None: ...

    async def find_by_requester(self, requested_by: str) -> int | None: ...

    async def get(self, activation_id: int) -> Activation | None: ...

    async def older(self, below: int, limit: int) -> list[Activation]: ...


class AlertRepository(Protocol):
    async def not_cleared(self) -> tuple[list[Alert], int]: ...

    async def write(self, alerts: list[Alert]) -> None: ...


class AuditRepository(Protocol):
    async def append(self, rows: list[AuditRow]) -> int: ...

    async def newest(self, limit: int, before_id: int | None = None,
                     action: str | None = None) -> list[tuple[Any, ...]]: ...


class PasswordUpgradeRepository(Protocol):
    async def all(self) -> list[tuple[str, str, str]]: ...

    async def put(self, username: str, replaces_sha256: str, password_hash: str,
                  at: float) -> None: ...


class OutboxRepository(Protocol):
    async def add(self, rows: list[tuple[str, str, str, float]]) -> None: ...

    async def oldest_pending(self, channel: str
                             ) -> tuple[int, str, str, str, int, float] | None: ...

    async def attempted(self, seq: int, now: float, state: str = "pending",
                        next_at: float | None = None) -> None: ...

    async def counts(self) -> dict[str, int]: ...


class ScheduleRepository(Protocol):
    async def replace_config_plans(self, plans: dict[str, str], now: float
                                   ) -> list[tuple[str, str, str, float]]: ...

    async def save_api_plan(self, plan_id: str, data: str, now: float) -> None: ...

    async def delete_plan(self, plan_id: str) -> None: ...

    async def planned_around(self, plan_id: str, now: float
                             ) -> tuple[float | None, int, set[float]]: ...

    async def add_planned(self, rows: list[tuple[str, float, str, str, str]]) -> None: ...

    async def add_run_now(self, plan_id: str, at: float, local_date: str, note: str) -> int: ...

    async def transition(self, occurrence_id: int, only_from: tuple[str, ...] | None,
                         **values: Any) -> bool: ...

    async def get(self, occurrence_id: int) -> Occurrence | None: ...

    async def planned_at(self, plan_id: str, at: float) -> Occurrence | None: ...

    async def unfinished(self, limit: int = 1000) -> list[Occurrence]: ...

    async def newest(self, plan_id: str | None, limit: int) -> list[Occurrence]: ...


class WorkOrderRepository(Protocol):
    async def open_and_recent(self, keep_closed: int) -> tuple[list[WorkOrder], int]: ...

    async def get(self, order_id: int) -> WorkOrder | None: ...

    async def for_siren(self, siren_id: str, limit: int) -> list[WorkOrder]: ...

    async def write(self, orders: list[WorkOrder]) -> None: ...


class InspectionRepository(Protocol):
    async def open_and_recent(self, keep_done: int) -> tuple[list[InspectionTask], int]: ...

    async def last_occurrences(self) -> dict[str, float]: ...

    async def get(self, task_id: int) -> InspectionTask | None: ...

    async def create(self, tasks: list[InspectionTask]) -> list[InspectionTask]: ...

    async def write(self, tasks: list[InspectionTask]) -> None: ...


class Store(Protocol):
    """All durable state of one gateway, and whether the database takes writes now."""

    health: StorageHealth
    activations: ActivationRepository
    alerts: AlertRepository
    audit: AuditRepository
    password_upgrades: PasswordUpgradeRepository
    outbox: OutboxRepository
    schedules: ScheduleRepository
    work_orders: WorkOrderRepository
    inspections: InspectionRepository

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
