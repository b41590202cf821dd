"""The append-only audit log: who asked for what, when, and what came of it.

SQLite triggers refuse UPDATE and DELETE on the table, so not even a bug in this process can
rewrite history.

A failing disk must never stop an alarm because its audit line cannot be written: entries that
cannot be stored wait in a bounded journal, in order, and are written when storage returns.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from siren_gateway.auth import Principal
from siren_gateway.storage import Database
from siren_gateway.tasks import cancel_and_wait

log = logging.getLogger(__name__)
AuditRow = tuple[float, str, str | None, str, str | None, str, str]
JOURNAL_MAX = 10_000
RETRY_S = 1.0


class AuditLog:
    def __init__(self, db: Database, journal_max: int = JOURNAL_MAX) -> None:
        self.db = db
        self.journal: deque[AuditRow] = deque()
        self.journal_max = journal_max
        self.journal_dropped = 0
        self._retrier: asyncio.Task[None] | None = None

    async def record(self, who: Principal | str, action: str, outcome: str,
                     target: str | None = None, **details: Any) -> int:
        """Store an entry; its id, or 0 when storage fails and it waits in the journal."""
        username = who.username if isinstance(who, Principal) else who
        role = who.role.name.lower() if isinstance(who, Principal) else None
        row: AuditRow = (time.time(), username, role, action, target,
                         json.dumps(details, default=str, ensure_ascii=False), outcome)
        if self.journal:  # keep the order: nothing overtakes what waits
            self._hold(row)
            return 0
        try:
            ids = await self.db.run(lambda conn: _insert(conn, [row]))
        except sqlite3.Error as exc:
            self.db.health.failed(exc)
            self._hold(row)
            return 0
        self.db.health.succeeded()
        return ids

    def _hold(self, row: AuditRow) -> None:
        if len(self.journal) >= self.journal_max:
            self.journal.popleft()
            self.journal_dropped += 1
        self.journal.append(row)
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.create_task(self._retry(), name="audit journal")

    async def _retry(self) -> None:
        while self.journal:
            await asyncio.sleep(RETRY_S)
            batch = list(self.journal)
            try:
                await self.db.run(functools.partial(_insert, rows=batch))
            except sqlite3.Error as exc:
                self.db.health.failed(exc)
                continue
            except RuntimeError:  # the database was closed under us: nothing more to do
                return
            for _ in batch:
                self.journal.popleft()
            self.db.health.succeeded()
            log.info("audit journal: %d held entries written", len(batch))

    async def close(self) -> None:
        """Write what the journal holds, if storage lets us, and stop retrying."""
        if self._retrier is not None:
            await cancel_and_wait([self._retrier])
        if self.journal:
            batch = list(self.journal)
            try:
                await self.db.run(lambda conn: _insert(conn, batch))
                self.journal.clear()
            except (sqlite3.Error, RuntimeError):
                log.error("audit journal: %d entries could not be written before stopping",
                          len(self.journal))

    def stats(self) -> dict[str, int]:
        return {"journal": len(self.journal), "journal_dropped": self.journal_dropped}

    async def entries(self, limit: int = 100, before_id: int | None = None,
                      action: str | None = None) -> list[dict[str, Any]]:
        where: list[str] = []
        params: list[int | str] = []
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        if action is not None:
            where.append("action = ?")
            params.append(action)
        sql = ("SELECT id, at, username, role, action, target, details, outcome FROM audit"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?")

        def query(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(sql, (*params, limit)).fetchall()

        return [{"id": r[0], "at": datetime.fromtimestamp(r[1], UTC).isoformat(),
                 "username": r[2], "role": r[3], "action": r[4], "target": r[5],
                 "details": json.loads(r[6]), "outcome": r[7]} for r in await self.db.run(query)]


def _insert(conn: sqlite3.Connection, rows: list[AuditRow]) -> int:
    with conn:
        last = 0
        for row in rows:
            cursor = conn.execute(
                "INSERT INTO audit (at, username, role, action, target, details, outcome)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)", row)
            last = int(cursor.lastrowid or 0)
        return last
