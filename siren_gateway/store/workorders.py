"""Work orders on disk: every order as it changes; the open ones and the latest closed reloaded."""

from __future__ import annotations

import json

from siren_gateway.maintenance.model import CLOSED, WorkOrder
from siren_gateway.store.database import Connection, Database

_CLOSED = tuple(state.value for state in CLOSED)


class WorkOrderStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def open_and_recent(self, keep_closed: int) -> tuple[list[WorkOrder], int]:
        """Every order not closed, the newest `keep_closed` closed ones, and the top id."""

        def load(conn: Connection) -> tuple[list[str], int]:
            rows = conn.execute(
                "SELECT data FROM work_orders WHERE state NOT IN (?, ?) "
                "UNION ALL SELECT data FROM (SELECT data FROM work_orders "
                "WHERE state IN (?, ?) ORDER BY id DESC LIMIT ?) AS recent",
                (*_CLOSED, *_CLOSED, keep_closed)).fetchall()
            top = conn.execute("SELECT max(id) FROM work_orders").fetchone()[0] or 0
            return [r[0] for r in rows], int(top)

        rows, top = await self.db.run(load)
        orders = sorted((WorkOrder.from_record(json.loads(data)) for data in rows),
                        key=lambda order: order.id)
        return orders, top

    async def get(self, order_id: int) -> WorkOrder | None:
        def read(conn: Connection) -> str | None:
            row = conn.execute("SELECT data FROM work_orders WHERE id = ?",
                               (order_id,)).fetchone()
            return str(row[0]) if row else None

        data = await self.db.run(read)
        return WorkOrder.from_record(json.loads(data)) if data else None

    async def for_siren(self, siren_id: str, limit: int) -> list[WorkOrder]:
        def read(conn: Connection) -> list[str]:
            rows = conn.execute("SELECT data FROM work_orders WHERE siren_id = ? "
                                "ORDER BY id DESC LIMIT ?", (siren_id, limit)).fetchall()
            return [r[0] for r in rows]

        return [WorkOrder.from_record(json.loads(d)) for d in await self.db.run(read)]

    async def created_between(self, since: float, until: float) -> list[WorkOrder]:
        def read(conn: Connection) -> list[str]:
            return [r[0] for r in conn.execute(
                "SELECT data FROM work_orders WHERE created_at >= ? AND created_at < ? "
                "ORDER BY id", (since, until))]

        return [WorkOrder.from_record(json.loads(d)) for d in await self.db.run(read)]

    async def write(self, orders: list[WorkOrder]) -> None:
        """Nothing is written when it raises (StorageError)."""
        rows = [(o.id, o.siren_id, o.state.value, o.created_at,
                 json.dumps(o.record(), ensure_ascii=False)) for o in orders]

        def write(conn: Connection) -> None:
            with conn.transaction():
                conn.executemany(
                    "INSERT INTO work_orders (id, siren_id, state, created_at, data) VALUES "
                    "(?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET siren_id = excluded.siren_id, "
                    "state = excluded.state, created_at = excluded.created_at, "
                    "data = excluded.data", rows)

        await self.db.run(write)
