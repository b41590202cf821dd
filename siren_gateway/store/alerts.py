"""Alerts on disk: every alert as it changes; the ones not cleared reloaded at start."""

from __future__ import annotations

import json
from dataclasses import asdict

from siren_gateway.alerts.model import Alert
from siren_gateway.store.database import Connection, Database


class AlertStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def not_cleared(self) -> tuple[list[Alert], int]:
        """The alerts still active or acknowledged, and the highest id ever given."""

        def load(conn: Connection) -> tuple[list[str], int]:
            rows = conn.execute("SELECT data FROM alerts WHERE state != 'cleared'").fetchall()
            top = conn.execute("SELECT max(id) FROM alerts").fetchone()[0] or 0
            return [r[0] for r in rows], int(top)

        rows, top = await self.db.run(load)
        return [Alert(**json.loads(data)) for data in rows], top

    async def for_siren(self, siren_id: str, limit: int) -> list[Alert]:
        """The siren's newest alerts, newest first."""
        return await self._select("WHERE siren_id = ? ORDER BY raised_at DESC LIMIT ?",
                                  (siren_id, limit))

    async def overlapping(self, since: float, until: float) -> list[Alert]:
        """Siren alerts active at some moment of [since, until)."""
        return await self._select(
            "WHERE siren_id IS NOT NULL AND raised_at < ? AND (cleared_at IS NULL "
            "OR cleared_at >= ?)",
            (until, since))

    async def _select(self, clause: str, params: tuple[object, ...]) -> list[Alert]:
        # Decoded on the database's thread: a month of a large fleet's alerts is tens of
        # thousands of records, seconds of work the event loop must not do in one go.
        def read(conn: Connection) -> list[Alert]:
            return [Alert(**json.loads(r[0]))
                    for r in conn.execute(f"SELECT data FROM alerts {clause}", params)]

        return await self.db.run(read)

    async def write(self, alerts: list[Alert]) -> None:
        """Nothing is written when it raises (StorageError)."""
        rows = [(a.id, a.state, json.dumps(asdict(a), ensure_ascii=False)) for a in alerts]

        def write(conn: Connection) -> None:
            with conn.transaction():
                conn.executemany("INSERT INTO alerts (id, state, data) VALUES (?, ?, ?) ON CONFLICT "
                                 "(id) DO UPDATE SET state = excluded.state, "
                                 "data = excluded.data", rows)

        await self.db.run(write)
