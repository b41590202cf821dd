"""Every repository on one database: the Store the engines are given, whichever database
(store/sqlite.py, store/postgres.py) is behind it."""

from __future__ import annotations

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
    SessionRepository,
    WorkOrderRepository,
)
from siren_gateway.store.credentials import PasswordUpgradeStore
from siren_gateway.store.database import Database
from siren_gateway.store.inspections import InspectionStore
from siren_gateway.store.outbox import OutboxStore
from siren_gateway.store.schedules import ScheduleStore
from siren_gateway.store.sessions import SessionStore
from siren_gateway.store.workorders import WorkOrderStore


class RepositoryStore:
    def __init__(self, database: Database) -> None:
        self.database = database
        self.health = database.health
        # Typed as the protocols: mypy checks each class implements its own.
        self.activations: ActivationRepository = ActivationStore(database)
        self.alerts: AlertRepository = AlertStore(database)
        self.audit: AuditRepository = AuditStore(database)
        self.password_upgrades: PasswordUpgradeRepository = PasswordUpgradeStore(database)
        self.outbox: OutboxRepository = OutboxStore(database)
        self.schedules: ScheduleRepository = ScheduleStore(database)
        self.work_orders: WorkOrderRepository = WorkOrderStore(database)
        self.inspections: InspectionRepository = InspectionStore(database)
        self.assets: AssetRepository = AssetStore(database)
        self.sessions: SessionRepository = SessionStore(database)

    async def start(self) -> None:
        await self.database.start()

    async def stop(self) -> None:
        await self.database.stop()
