"""A durable outbox for notifications: written to disk before any attempt to send them.

A gateway killed while a webhook is being retried delivers it after the restart. Each
notification has an id (sent with it) so a receiver can drop the repeats that at-least-once
delivery implies. If the disk refuses the write, the notification waits in memory (bounded,
counted) and is put on disk when storage returns.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from siren_gateway.store.base import Store
from siren_gateway.store.errors import StorageError

log = logging.getLogger(__name__)

MEMORY_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Notification:
    seq: int
    id: str
    channel: str
    body: dict[str, Any]
    attempts: int


def new_notification_id() -> str:
    return "n-" + secrets.token_hex(8)


class Outbox:
    def __init__(self, store: Store) -> None:
        self.health = store.health  # whether storage takes writes now
        self.store = store.outbox
        self._held: deque[tuple[str, str, str, float]] = deque()  # not yet on disk
        self.held_dropped = 0
        self._writing = asyncio.Lock()  # one writer of the held rows at a time

    async def start(self) -> None:
        """Its table is made by the store's migrations; nothing to load."""

    async def stop(self) -> None:
        """Nothing to release: what is undelivered stays on disk for the next start."""

    async def put(self, channel: str, body: dict[str, Any], key: str | None = None) -> str:
        """Store a notification for delivery; its id (also placed in the body).

        With a `key`, the id is derived from channel and key, and a second put of the same
        key is dropped: an alert raised again after a crash lost its unwritten record (same
        id, same rule, same siren) must not be announced twice."""
        notification_id = (new_notification_id() if key is None else
                           "n-" + hashlib.sha256(f"{channel}\n{key}".encode()).hexdigest()[:16])
        body = {"notification_id": notification_id, **body}
        row = (notification_id, channel, json.dumps(body, ensure_ascii=False, default=str),
               time.time())
        self._held.append(row)
        while len(self._held) > MEMORY_MAX:
            self._held.popleft()
            self.held_dropped += 1
        await self._write_held()
        return notification_id

    async def _write_held(self) -> bool:
        async with self._writing:
            return await self._write_held_locked()

    async def _write_held_locked(self) -> bool:
        if not self._held:
            return True
        rows = list(self._held)
        try:
            await self.store.add(rows)
        except StorageError as exc:
            self.health.failed(exc)
            return False
        written = {row[0] for row in rows}  # by id: put() may have trimmed meanwhile
        self._held = deque(row for row in self._held if row[0] not in written)
        return True

    async def next_due(self, channel: str) -> tuple[Notification | None, float]:
        """The oldest pending notification of a channel if it is due, and when to look again.

        Oldest first and one at a time: a receiver sees notifications in the order they
        happened, even across retries and restarts."""
        await self._write_held()
        now = time.time()
        try:
            row = await self.store.oldest_pending(channel)
        except StorageError as exc:
            self.health.failed(exc)
            return None, now + 1.0
        if row is None:
            return None, now + 1.0
        seq, notification_id, chan, body, attempts, next_at = row
        if next_at > now:
            return None, next_at
        return Notification(seq, notification_id, chan, json.loads(body), attempts), now

    async def delivered(self, notification: Notification) -> None:
        await self._set(notification, "delivered")

    async def retry(self, notification: Notification, delay_s: float) -> None:
        await self._set(notification, "pending", time.time() + delay_s)

    async def give_up(self, notification: Notification) -> None:
        await self._set(notification, "failed")

    async def _set(self, notification: Notification, state: str,
                   next_at: float | None = None) -> None:
        try:
            await self.store.attempted(notification.seq, time.time(), state, next_at)
        except StorageError as exc:
            # Delivered but not marked: it may be sent again, which its id makes harmless.
            self.health.failed(exc)
            log.warning("outbox: could not record notification %s: %s", notification.id, exc)

    async def counts(self) -> dict[str, int]:
        try:
            out = await self.store.counts()
        except StorageError:
            out = {}
        return out | {"held_in_memory": len(self._held), "held_dropped": self.held_dropped}
