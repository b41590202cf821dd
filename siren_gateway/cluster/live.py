"""One picture from any node: each owner publishes its sirens' live state to PostgreSQL, every
node mirrors the rest into its own fleet.

Every `live_interval_s` the owner writes the sirens it owns whose state changed since it last
wrote them (a new answer, a failed poll, a change of reachability), in one statement, each row
stamped from one rising sequence; then it reads every row newer than the last it saw and applies
those of sirens it does not own. A row is written only while its writer holds the siren's lease
(checked in the statement), so a fenced node's late write cannot overwrite the new owner's.
The view of a siren owned elsewhere is at most about two intervals old (bench/failover.py
measures it); when its owner dies, its sirens go stale on every node until the new owner's
answers arrive, which is the truth.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from siren_gateway.cluster.membership import Membership
from siren_gateway.cluster.remote import decode_sample, encode_sample
from siren_gateway.config.cluster import ClusterConfig
from siren_gateway.live.fleet import Fleet, Reachability, SirenState
from siren_gateway.runtime.tasks import cancel_and_wait
from siren_gateway.store.database import Connection
from siren_gateway.store.errors import StorageError
from siren_gateway.store.postgres import PostgresDatabase

log = logging.getLogger(__name__)
READ_BATCH = 5000


def _epoch(at: datetime | None) -> float | None:
    return at.timestamp() if at is not None else None


def _when(at: float | None) -> datetime | None:
    return datetime.fromtimestamp(at, UTC) if at is not None else None


def snapshot(state: SirenState) -> dict[str, Any]:
    """What another node needs to show this siren as its owner sees it."""
    sample = state.sample
    return {
        "reachability": state.reachability.value, "since": state.since.timestamp(),
        "last_seen": _epoch(state.last_seen), "last_attempt": _epoch(state.last_attempt),
        "last_error": state.last_error, "failures": state.consecutive_failures,
        "polls_ok": state.polls_ok, "polls_failed": state.polls_failed,
        "sample": None if sample is None else encode_sample(sample),
    }


def _version(state: SirenState) -> tuple[Any, ...]:
    """Changes whenever the owner learns anything new of the siren."""
    return (id(state.sample), state.reachability, state.polls_failed, state.polls_ok)


class LiveExchange:
    def __init__(self, url: str, membership: Membership, fleet: Fleet,
                 config: ClusterConfig) -> None:
        self.membership = membership
        self.fleet = fleet
        self.config = config
        self.database = PostgresDatabase(url, name="live")
        self._published: dict[str, tuple[Any, ...]] = {}
        self._last_seq = 0
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.applied = 0
        self.failures = 0
        # How old a mirrored siren's newest answer was when it was applied here (seconds).
        self.last_lag_s: float | None = None
        self.max_lag_s = 0.0
        membership.on_ownership(self._ownership_changed)

    def _ownership_changed(self, gained: set[str], lost: set[str]) -> None:
        for siren_id in gained | lost:
            self._published.pop(siren_id, None)  # a new owner writes its view at once

    async def start(self) -> None:
        await self.database.start()
        await self.exchange()  # the others' sirens, before the API answers
        self._task = asyncio.create_task(self._run(), name="cluster live exchange")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        await self.database.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.live_interval_s)
            await self.exchange()

    async def exchange(self) -> None:
        me = self.membership.node.id
        rows, versions = [], {}
        for siren_id in self.membership.owned:
            state = self.fleet.states[siren_id]
            version = _version(state)
            if self._published.get(siren_id) != version:
                versions[siren_id] = version
                rows.append((siren_id, me, json.dumps(snapshot(state), separators=(",", ":"))))
        after = self._last_seq

        def write_and_read(conn: Connection) -> list[tuple[str, str, int, str]]:
            if rows:
                with conn.transaction():
                    conn.executemany(
                        "INSERT INTO siren_live (siren_id, node_id, seq, data) VALUES "
                        "(?, ?, nextval('siren_live_counter'), ?) ON CONFLICT (siren_id) DO "
                        "UPDATE SET node_id = excluded.node_id, seq = excluded.seq, "
                        "data = excluded.data WHERE EXISTS (SELECT 1 FROM siren_leases l "
                        "WHERE l.siren_id = excluded.siren_id AND l.node_id = excluded.node_id)",
                        rows)
            # (A row whose transaction commits after a higher-numbered one was read is skipped;
            # its siren's next answer, one poll later, is read: its owner writes every one.)
            return [tuple(r) for r in conn.execute(
                "SELECT siren_id, node_id, seq, data FROM siren_live WHERE seq > ? AND "
                "node_id != ? ORDER BY seq LIMIT ?", (after, me, READ_BATCH))]

        try:
            found = await self.database.run(write_and_read)
        except StorageError as exc:
            self.failures += 1
            if self.failures == 1 or self.failures % 60 == 0:
                log.warning("live state exchange failed (%d in all): %s", self.failures, exc)
            return
        self._published.update(versions)
        self.written += len(rows)
        for siren_id, node_id, seq, data in found:
            self._last_seq = max(self._last_seq, seq)
            if self.membership.owns(siren_id):  # (another's row from before it was handed over)
                continue
            if siren_id in self.fleet.states:
                self._apply(siren_id, node_id, json.loads(data))

    def _apply(self, siren_id: str, node_id: str, view: dict[str, Any]) -> None:
        raw = view["sample"]
        sample = None if raw is None else decode_sample(siren_id, raw)
        last_seen = view["last_seen"]
        if last_seen is not None:
            lag = max(0.0, time.time() - last_seen)
            self.last_lag_s = lag
            self.max_lag_s = max(self.max_lag_s, lag)
        self.fleet.mirror(siren_id, Reachability(view["reachability"]), _when(view["since"]),
                          sample, _when(last_seen), _when(view["last_attempt"]),
                          view["last_error"], view["failures"], view["polls_ok"],
                          view["polls_failed"], f"as node {node_id} sees it")
        self.applied += 1

    def stats(self) -> dict[str, Any]:
        return {"written": self.written, "applied": self.applied, "failures": self.failures,
                "last_lag_s": round(self.last_lag_s, 3) if self.last_lag_s is not None
                else None, "max_lag_s": round(self.max_lag_s, 3)}
