"""The append-only audit log: who asked for what, when, and what came of it.

SQLite triggers refuse UPDATE and DELETE on the table, so not even a bug in this process can
rewrite history.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

from siren_gateway.auth import Principal
from siren_gateway.storage import Database


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, who: Principal | str, action: str, outcome: str,
                     target: str | None = None, **details: Any) -> int:
        username = who.username if isinstance(who, Principal) else who
        role = who.role.name.lower() if isinstance(who, Principal) else None
        row = (time.time(), username, role, action, target,
               json.dumps(details, default=str, ensure_ascii=False), outcome)

        def insert(conn: sqlite3.Connection) -> int:
            with conn:
                cursor = conn.execute(
                    "INSERT INTO audit (at, username, role, action, target, details, outcome)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)", row)
                return int(cursor.lastrowid or 0)

        return await self.db.run(insert)

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
