"""Inspection tasks on disk: each occurrence's tasks made once (the unique key), every change
kept; the open ones and the latest done ones reloaded at start."""

from __future__ import annotations

import json

from siren_gateway.maintenance.model import InspectionTask
from siren_gateway.store.database import Connection, Database


class InspectionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def open_and_recent(self, keep_done: int) -> tuple[list[InspectionTask], int]:
        def load(conn: Connection) -> tuple[list[str], int]:
            rows = conn.execute(
                "SELECT data FROM inspection_tasks WHERE state = 'open' UNION ALL "
                "SELECT data FROM (SELECT data FROM inspection_tasks WHERE state = 'done' "
                "ORDER BY id DESC LIMIT ?) AS recent", (keep_done,)).fetchall()
            top = conn.execute("SELECT max(id) FROM inspection_tasks").fetchone()[0] or 0
            return [r[0] for r in rows], int(top)

        rows, top = await self.db.run(load)
        tasks = sorted((InspectionTask(**json.loads(d)) for d in rows), key=lambda t: t.id)
        return tasks, top

    async def last_occurrences(self) -> dict[str, float]:
        """Each plan's latest occurrence that made tasks."""
        def read(conn: Connection) -> dict[str, float]:
            return {str(plan): float(at) for plan, at in conn.execute(
                "SELECT plan_id, max(scheduled_at) FROM inspection_tasks GROUP BY plan_id")}

        return await self.db.run(read)

    async def get(self, task_id: int) -> InspectionTask | None:
        def read(conn: Connection) -> str | None:
            row = conn.execute("SELECT data FROM inspection_tasks WHERE id = ?",
                               (task_id,)).fetchone()
            return str(row[0]) if row else None

        data = await self.db.run(read)
        return InspectionTask(**json.loads(data)) if data else None

    async def create(self, tasks: list[InspectionTask]) -> list[InspectionTask]:
        """Store new tasks; those whose (plan, occurrence, siren) exists already are left out
        of the result (an occurrence makes each siren's task once, across restarts)."""

        def insert(conn: Connection) -> list[int]:
            made = []
            with conn.transaction():
                for t in tasks:
                    cursor = conn.execute(
                        "INSERT INTO inspection_tasks (id, plan_id, siren_id, scheduled_at, state, "
                        "data) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (t.id, t.plan_id, t.siren_id, t.scheduled_at, t.state,
                         json.dumps(t.record(), ensure_ascii=False)))
                    if cursor.rowcount:
                        made.append(t.id)
            return made

        made = set(await self.db.run(insert))
        return [t for t in tasks if t.id in made]

    async def for_siren(self, siren_id: str, limit: int) -> list[InspectionTask]:
        return await self._select("WHERE siren_id = ? ORDER BY scheduled_at DESC LIMIT ?",
                                  (siren_id, limit))

    async def scheduled_between(self, since: float, until: float) -> list[InspectionTask]:
        return await self._select("WHERE scheduled_at >= ? AND scheduled_at < ? ORDER BY id",
                                  (since, until))

    async def _select(self, clause: str, params: tuple[object, ...]) -> list[InspectionTask]:
        def read(conn: Connection) -> list[str]:
            return [r[0] for r in conn.execute(f"SELECT data FROM inspection_tasks {clause}",
                                               params)]

        return [InspectionTask(**json.loads(d)) for d in await self.db.run(read)]

    async def write(self, tasks: list[InspectionTask]) -> None:
        rows = [(t.state, json.dumps(t.record(), ensure_ascii=False), t.id) for t in tasks]

        def write(conn: Connection) -> None:
            with conn.transaction():
                conn.executemany("UPDATE inspection_tasks SET state = ?, data = ? WHERE id = ?",
                                 rows)

        await self.db.run(write)
