"""The audit log on disk: an append-only table (triggers refuse UPDATE and DELETE) in which each
entry carries a SHA-256 over its content and the previous entry's hash, so a copy edited with
the triggers dropped is caught by `verify_chain` (`siren-gateway audit-verify`)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from siren_gateway.store.database import Connection, Database

# (at, username, role, action, target, details JSON, outcome, source, user_agent)
AuditRow = tuple[float, str, str | None, str, str | None, str, str, str, str]
GENESIS = "0" * 64


def entry_hash(prev_hash: str, row: AuditRow) -> str:
    canonical = json.dumps([prev_hash, *row], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class AuditStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def append(self, rows: list[AuditRow]) -> int:
        """Append rows to the chain in one transaction; the last one's id. Raises StorageError
        (nothing is written then)."""
        return await self.db.run(lambda conn: _append(conn, rows))

    async def newest(self, limit: int, before_id: int | None = None,
                     action: str | None = None) -> list[tuple[Any, ...]]:
        """(id, at, username, role, action, target, details JSON, outcome, source, user_agent,
        hash), newest first."""
        where: list[str] = []
        params: list[int | str] = []
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        if action is not None:
            where.append("action = ?")
            params.append(action)
        sql = ("SELECT id, at, username, role, action, target, details, outcome, source, "
               "user_agent, hash FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY id DESC LIMIT ?")
        return await self.db.run(lambda conn: conn.execute(sql, (*params, limit)).fetchall())


def _append(conn: Connection, rows: list[AuditRow]) -> int:
    # The chain's end is read inside the transaction, under the audit lock: another gateway on
    # the same database may have appended since (a cached end would fork the chain).
    last = 0
    with conn.transaction():
        conn.lock("audit")
        found = conn.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        prev = (found[0] if found else None) or GENESIS
        for row in rows:
            digest = entry_hash(prev, row)
            last = int(conn.execute(
                "INSERT INTO audit (at, username, role, action, target, details, outcome, "
                "source, user_agent, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "RETURNING id", (*row, prev, digest)).fetchone()[0])
            prev = digest
    return last


@dataclass(frozen=True)
class ChainReport:
    entries: int  # entries checked
    unchained: int  # older entries from before the chain existed (no hash)
    first_bad_id: int | None
    problem: str

    @property
    def ok(self) -> bool:
        return self.first_bad_id is None


def verify_chain(conn: Connection) -> ChainReport:
    """Recompute every entry's hash in order; name the first one that does not verify."""
    prev: str | None = None
    checked = unchained = 0
    rows = conn.execute("SELECT id, at, username, role, action, target, details, outcome, "
                        "source, user_agent, prev_hash, hash FROM audit ORDER BY id")
    for entry_id, *content, prev_hash, digest in rows:
        if digest is None:
            if prev is not None:
                return ChainReport(checked, unchained, entry_id, "entry has no hash after "
                                   "the chain began (inserted by hand?)")
            unchained += 1
            continue
        expected_prev = prev if prev is not None else GENESIS
        row: AuditRow = tuple(content)
        if prev_hash != expected_prev:
            return ChainReport(checked, unchained, entry_id, "does not follow the previous "
                               "entry (an entry before it was removed or changed)")
        if entry_hash(expected_prev, row) != digest:
            return ChainReport(checked, unchained, entry_id, "content does not match its hash "
                               "(edited)")
        prev = digest
        checked += 1
    return ChainReport(checked, unchained, None, "")


def verify_file(path: Path) -> ChainReport:
    """verify_chain on a SQLite file, opened read-only (a running gateway may hold it)."""
    from siren_gateway.store.sqlite import SqliteConnection  # sqlite.py builds on this module

    raw = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return verify_chain(SqliteConnection(raw))
    finally:
        raw.close()
