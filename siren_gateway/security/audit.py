"""The append-only audit log: who asked for what, from where, when, and what came of it.

The store keeps it append-only and hash-chained (store/audit.py): not even a bug in this
process can rewrite history, and an edited copy is caught by `siren-gateway audit-verify`.

A failing disk must never stop an alarm because its audit line cannot be written: entries that
cannot be stored wait in a bounded journal, in order, and are written when storage returns.
The request's source address and user agent come from the request context (set at the API's
edge), so every engine's entries carry them without passing them along.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from siren_gateway.runtime.tasks import cancel_and_wait
from siren_gateway.security.auth import Principal
from siren_gateway.store.audit import AuditRow
from siren_gateway.store.base import Store
from siren_gateway.store.errors import DatabaseClosed, StorageError

log = logging.getLogger(__name__)
JOURNAL_MAX = 10_000
RETRY_S = 1.0
MAX_DETAILS = 8192  # characters of JSON kept per entry; longer details are cut (and say so)
MAX_FIELD = 200


@dataclass(frozen=True)
class RequestOrigin:
    source: str
    user_agent: str


# Set by the API's edge for each request; actions of the gateway itself have none.
request_origin: contextvars.ContextVar[RequestOrigin | None] = contextvars.ContextVar(
    "request_origin", default=None)


class AuditLog:
    def __init__(self, store: Store, journal_max: int = JOURNAL_MAX) -> None:
        self.health = store.health  # whether storage takes writes now
        self.journal: deque[AuditRow] = deque()
        self.journal_max = journal_max
        self.journal_dropped = 0
        self._retrier: asyncio.Task[None] | None = None
        self.store = store.audit

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
            ids = await self.store.append([row])
        except StorageError as exc:
            self.health.failed(exc)
            self._hold(row)
            return 0
        self.health.succeeded()
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
                await self.store.append(batch)
            except DatabaseClosed:  # stopped under us: the journal is written at our stop
                return
            except StorageError as exc:
                self.health.failed(exc)
                continue
            for _ in batch:
                self.journal.popleft()
            self.health.succeeded()
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
                await self.store.append(batch)
                self.journal.clear()
            except StorageError:
                log.error("audit journal: %d entries could not be written before stopping",
                          len(self.journal))

    def stats(self) -> dict[str, int]:
        return {"journal": len(self.journal), "journal_dropped": self.journal_dropped}

    async def entries(self, limit: int = 100, before_id: int | None = None,
                      action: str | None = None) -> list[dict[str, Any]]:
        rows = await self.store.newest(limit, before_id, action)
        return [{"id": r[0], "at": datetime.fromtimestamp(r[1], UTC).isoformat(),
                 "username": r[2], "role": r[3], "action": r[4], "target": r[5],
                 "details": json.loads(r[6]), "outcome": r[7], "source": r[8],
                 "user_agent": r[9], "hash": r[10]} for r in rows]
