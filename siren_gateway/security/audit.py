"""The append-only audit log: who asked for what, from where, when, and what came of it.

SQLite triggers refuse UPDATE and DELETE on the table, so not even a bug in this process can
rewrite history; and each entry carries a SHA-256 over its own content and the previous
entry's hash, so a copy edited with the triggers dropped is caught by `verify_chain`
(`siren-gateway audit-verify`): the first entry that does not verify is named.

A failing disk must never stop an alarm because its audit line cannot be written: entries that
cannot be stored wait in a bounded journal, in order, and are written when storage returns.
The request's source address and user agent come from the request context (set at the API's
edge), so every engine's entries carry them without passing them along.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import json
import logging
import sqlite3
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from siren_gateway.runtime.tasks import cancel_and_wait
from siren_gateway.security.auth import Principal
from siren_gateway.store.database import Database

log = logging.getLogger(__name__)
# (at, username, role, action, target, details, outcome, source, user_agent)
AuditRow = tuple[float, str, str | None, str, str | None, str, str, str, str]
JOURNAL_MAX = 10_000
RETRY_S = 1.0
MAX_DETAILS = 8192  # characters of JSON kept per entry; longer details are cut (and say so)
MAX_FIELD = 200
GENESIS = "0" * 64


@dataclass(frozen=True)
class RequestOrigin:
    source: str
    user_agent: str


# Set by the API's edge for each request; actions of the gateway itself have none.
request_origin: contextvars.ContextVar[RequestOrigin | None] = contextvars.ContextVar(
    "request_origin", default=None)


def entry_hash(prev_hash: str, row: AuditRow) -> str:
    canonical = json.dumps([prev_hash, *row], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class AuditLog:
    def __init__(self, db: Database, journal_max: int = JOURNAL_MAX) -> None:
        self.db = db
        self.journal: deque[AuditRow] = deque()
        self.journal_max = journal_max
        self.journal_dropped = 0
        self._retrier: asyncio.Task[None] | None = None
        self._last_hash: str | None = None  # only touched on the database thread

    async def record(self, who: Principal | str, action: str, outcome: str,
                     target: str | None = None, *, source: str | None = None,
                     user_agent: str | None = None, **details: Any) -> int:
        """Store an entry; its id, or 0 when storage fails and it waits in the journal."""
        username = who.username if isinstance(who, Principal) else who
        role = who.role.name.lower() if isinstance(who, Principal) else None
        origin = request_origin.get()
        text = json.dumps(details, default=str, ensure_ascii=False)
        if len(text) > MAX_DETAILS:
            text = json.dumps({"truncated": True, "start": text[:MAX_DETAILS]},
                              ensure_ascii=False)
        row: AuditRow = (
            time.time(), username[:MAX_FIELD], role, action[:MAX_FIELD],
            target[:MAX_FIELD] if target else None, text, outcome[:500],
            (source or (origin.source if origin else "gateway"))[:MAX_FIELD],
            (user_agent if user_agent is not None else (origin.user_agent if origin else ""))
            [:MAX_FIELD])
        if self.journal:  # keep the order: nothing overtakes what waits
            self._hold(row)
            return 0
        try:
            ids = await self.db.run(functools.partial(self._insert, rows=[row]))
        except sqlite3.Error as exc:
            self.db.health.failed(exc)
            self._hold(row)
            return 0
        self.db.health.succeeded()
        return ids

    def _insert(self, conn: sqlite3.Connection, rows: list[AuditRow]) -> int:
        """On the database thread: append rows to the chain in one transaction."""
        prev = self._last_hash
        if prev is None:
            found = conn.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
            prev = (found[0] if found else None) or GENESIS
        last = 0
        try:
            with conn:
                for row in rows:
                    digest = entry_hash(prev, row)
                    cursor = conn.execute(
                        "INSERT INTO audit (at, username, role, action, target, details, "
                        "outcome, source, user_agent, prev_hash, hash) VALUES "
                        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row, prev, digest))
                    last = int(cursor.lastrowid or 0)
                    prev = digest
        except sqlite3.Error:
            self._last_hash = None  # rolled back: read the chain's end again next time
            raise
        self._last_hash = prev
        return last

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
                await self.db.run(functools.partial(self._insert, rows=batch))
            except sqlite3.Error as exc:
                self.db.health.failed(exc)
                continue
            except RuntimeError:  # the database was closed under us: nothing more to do
                return
            for _ in batch:
                self.journal.popleft()
            self.db.health.succeeded()
            log.info("audit journal: %d held entries written", len(batch))

    async def start(self) -> None:
        """Entries are written as they come; nothing to start."""

    async def stop(self) -> None:
        """Write what the journal holds, if storage lets us, and stop retrying."""
        if self._retrier is not None:
            await cancel_and_wait([self._retrier])
        if self.journal:
            batch = list(self.journal)
            try:
                await self.db.run(functools.partial(self._insert, rows=batch))
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
        sql = ("SELECT id, at, username, role, action, target, details, outcome, source, "
               "user_agent, hash FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY id DESC LIMIT ?")

        def query(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(sql, (*params, limit)).fetchall()

        return [{"id": r[0], "at": datetime.fromtimestamp(r[1], UTC).isoformat(),
                 "username": r[2], "role": r[3], "action": r[4], "target": r[5],
                 "details": json.loads(r[6]), "outcome": r[7], "source": r[8],
                 "user_agent": r[9], "hash": r[10]} for r in await self.db.run(query)]


@dataclass(frozen=True)
class ChainReport:
    entries: int  # entries checked
    unchained: int  # older entries from before the chain existed (no hash)
    first_bad_id: int | None
    problem: str

    @property
    def ok(self) -> bool:
        return self.first_bad_id is None


def verify_chain(conn: sqlite3.Connection) -> ChainReport:
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
