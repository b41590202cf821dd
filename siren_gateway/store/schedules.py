"""Test plans and their occurrences on disk.

An occurrence moves between states by conditional updates (`transition`): the row changes only
if it is still in one of the expected states, so a fired occurrence is claimed exactly once,
even when two paths (the timer and an operator's skip) race for it.
"""

from __future__ import annotations

import json
from typing import Any

from siren_gateway.scheduling.model import PENDING, Occurrence
from siren_gateway.store.database import Connection, Database

_COLUMNS = ("id, plan_id, kind, scheduled_at, local_date, state, notices, fired_at, base_at, "
            "steps, ended_at, note")
_SETTABLE = frozenset({"state", "notices", "fired_at", "base_at", "steps", "ended_at", "note"})
_PENDING_SQL = "(" + ", ".join(f"'{state}'" for state in PENDING) + ")"
_PUT_PLAN = ("INSERT INTO schedules (id, source, data, updated_at) VALUES (?, ?, ?, ?) "
             "ON CONFLICT (id) DO UPDATE SET source = excluded.source, data = excluded.data, "
             "updated_at = excluded.updated_at")


class ScheduleStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- plans ----------------------------------------------------------------------------

    async def replace_config_plans(self, plans: dict[str, str], now: float
                                   ) -> list[tuple[str, str, str, float]]:
        """Make the site file's plans (id -> JSON) the stored ones; every stored plan as
        (id, source, JSON, in force since). An unchanged plan keeps its date, so an outage's
        missed occurrences are still found; API plans are left alone."""

        def load(conn: Connection) -> list[tuple[str, str, str, float]]:
            stored = {r[0]: (r[1], r[2]) for r in conn.execute(
                "SELECT id, data, updated_at FROM schedules WHERE source = 'config'")}
            with conn.transaction():
                conn.execute("DELETE FROM schedules WHERE source = 'config'")
                for plan_id, data in plans.items():
                    old = stored.get(plan_id)
                    since = old[1] if old is not None and old[0] == data else now
                    conn.execute(_PUT_PLAN, (plan_id, "config", data, since))
            return [tuple(r) for r in conn.execute(
                "SELECT id, source, data, updated_at FROM schedules")]

        return await self.db.run(load)

    async def save_api_plan(self, plan_id: str, data: str, now: float) -> None:
        """Store a plan made through the API; its future occurrences computed from the old
        version are dropped (they follow the new one)."""

        def write(conn: Connection) -> None:
            with conn.transaction():
                conn.execute(_PUT_PLAN, (plan_id, "api", data, now))
                conn.execute("DELETE FROM schedule_occurrences WHERE plan_id = ? AND kind = "
                             f"'planned' AND state IN {_PENDING_SQL}", (plan_id,))

        await self.db.run(write)

    async def delete_plan(self, plan_id: str) -> None:
        """Delete a plan; its pending occurrences are cancelled (kept as history)."""

        def write(conn: Connection) -> None:
            with conn.transaction():
                conn.execute("DELETE FROM schedules WHERE id = ?", (plan_id,))
                conn.execute("UPDATE schedule_occurrences SET state = 'cancelled', note = "
                             f"'schedule deleted' WHERE plan_id = ? AND state IN {_PENDING_SQL}",
                             (plan_id,))

        await self.db.run(write)

    # -- occurrences ----------------------------------------------------------------------

    async def planned_around(self, plan_id: str, now: float
                             ) -> tuple[float | None, int, set[float]]:
        """For a plan's planned occurrences: the latest at or before `now`, how many are
        pending, and the times of those after `now`."""

        def query(conn: Connection) -> tuple[float | None, int, set[float]]:
            past = conn.execute("SELECT max(scheduled_at) FROM schedule_occurrences WHERE "
                                "plan_id = ? AND kind = 'planned' AND scheduled_at <= ?",
                                (plan_id, now)).fetchone()[0]
            pending = conn.execute("SELECT count(*) FROM schedule_occurrences WHERE plan_id = ? "
                                   f"AND kind = 'planned' AND state IN {_PENDING_SQL}",
                                   (plan_id,)).fetchone()[0]
            ahead = {r[0] for r in conn.execute(
                "SELECT scheduled_at FROM schedule_occurrences WHERE plan_id = ? AND kind = "
                "'planned' AND scheduled_at > ?", (plan_id, now))}
            return past, int(pending), ahead

        return await self.db.run(query)

    async def add_planned(self, rows: list[tuple[str, float, str, str, str]]) -> None:
        """(plan id, at, local date, state, note) each; one already there is left alone."""

        def insert(conn: Connection) -> None:
            with conn.transaction():
                conn.executemany(
                    "INSERT INTO schedule_occurrences (plan_id, kind, scheduled_at, local_date, "
                    "state, note) VALUES (?, 'planned', ?, ?, ?, ?) ON CONFLICT DO NOTHING", rows)

        await self.db.run(insert)

    async def add_run_now(self, plan_id: str, at: float, local_date: str, note: str) -> int:
        def insert(conn: Connection) -> int:
            with conn.transaction():
                return int(conn.execute(
                    "INSERT INTO schedule_occurrences (plan_id, kind, scheduled_at, local_date, "
                    "state, note) VALUES (?, 'run_now', ?, ?, 'scheduled', ?) RETURNING id",
                    (plan_id, at, local_date, note)).fetchone()[0])

        return await self.db.run(insert)

    async def transition(self, occurrence_id: int, only_from: tuple[str, ...] | None,
                         **values: Any) -> bool:
        """Set columns of an occurrence if it is still in one of the states `only_from` (any
        state with None); True if it was (one atomic statement)."""
        unknown = set(values) - _SETTABLE
        if unknown:
            raise ValueError(f"not occurrence columns: {sorted(unknown)}")
        for name in ("notices", "steps"):
            if name in values and not isinstance(values[name], str):
                values[name] = json.dumps(values[name])
        columns = ", ".join(f"{name} = ?" for name in values)
        sql = f"UPDATE schedule_occurrences SET {columns} WHERE id = ?"
        params: tuple[Any, ...] = (*values.values(), occurrence_id)
        if only_from is not None:
            sql += f" AND state IN ({', '.join('?' * len(only_from))})"
            params += only_from

        def write(conn: Connection) -> int:
            with conn.transaction():
                return int(conn.execute(sql, params).rowcount)

        return await self.db.run(write) == 1

    async def get(self, occurrence_id: int) -> Occurrence | None:
        found = await self._select("id = ?", (occurrence_id,))
        return found[0] if found else None

    async def planned_at(self, plan_id: str, at: float) -> Occurrence | None:
        found = await self._select("plan_id = ? AND kind = 'planned' AND scheduled_at = ?",
                                   (plan_id, at))
        return found[0] if found else None

    async def unfinished(self, limit: int = 1000) -> list[Occurrence]:
        """Pending and running occurrences, soonest first."""
        return await self._select(f"state IN ({', '.join('?' * (len(PENDING) + 1))})",
                                  (*PENDING, "running"), limit)

    async def newest(self, plan_id: str | None, limit: int) -> list[Occurrence]:
        """The last `limit` occurrences (of one plan, or of all), in time order."""
        where, params = ("plan_id = ?", (plan_id,)) if plan_id else ("TRUE", ())
        return (await self._select(where, params, limit, newest=True))[::-1]

    async def _select(self, where: str, params: tuple[Any, ...], limit: int = 1000,
                      newest: bool = False) -> list[Occurrence]:
        order = "scheduled_at DESC, id DESC" if newest else "scheduled_at, id"
        sql = (f"SELECT {_COLUMNS} FROM schedule_occurrences WHERE {where} "
               f"ORDER BY {order} LIMIT ?")
        rows = await self.db.run(lambda conn: conn.execute(sql, (*params, limit)).fetchall())
        return [Occurrence.from_row(row) for row in rows]
