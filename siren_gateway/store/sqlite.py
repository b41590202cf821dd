"""The embedded store: every repository on one SQLite file (store/database.py owns the
connection and its thread; store/schema.py brings the file to the current schema at start)."""

from __future__ import annotations

from pathlib import Path

from siren_gateway.store.activations import ActivationStore
from siren_gateway.store.alerts import AlertStore
from siren_gateway.store.assets import AssetStore
from siren_gateway.store.audit import AuditStore
from siren_gateway.store.base import (
    ActivationRepository,
    AlertRepository,
    AssetRepository,
    AuditRepository,
    InspectionRepository,
    OutboxRepository,
    PasswordUpgradeRepository,
    ScheduleRepository,
    WorkOrderRepository,
)
from siren_gateway.store.credentials import PasswordUpgradeStore
from siren_gateway.store.database import Database
from siren_gateway.store.inspections import InspectionStore
from siren_gateway.store.outbox import OutboxStore
from siren_gateway.store.schedules import ScheduleStore
from siren_gateway.store.workorders import WorkOrderStore


class SqliteStore:
    def __init__(self, path: str | Path) -> None:
        self.database = Database(path)
        self.health = self.database.health
        # Typed as the protocols: mypy checks each class implements its own.
        self.activations: ActivationRepository = ActivationStore(self.database)
        self.alerts: AlertRepository = AlertStore(self.database)
        self.audit: AuditRepository = AuditStore(self.database)
        self.password_upgrades: PasswordUpgradeRepository = PasswordUpgradeStore(self.database)
        self.outbox: OutboxRepository = OutboxStore(self.database)
        self.schedules: ScheduleRepository = ScheduleStore(self.database)
        self.work_orders: WorkOrderRepository = WorkOrderStore(self.database)
        self.inspections: InspectionRepository = InspectionStore(self.database)
        self.assets: AssetRepository = AssetStore(self.database)

    async def start(self) -> None:
        await self.database.start()

    async def stop(self) -> None:
        await self.database.stop()
