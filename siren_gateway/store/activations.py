"""Activations and each siren's result, on disk: written as they change, read back after a
restart (to recover the ones that were running) and when pruned from memory."""

from __future__ import annotations

import json
from typing import Any

from siren_gateway.activation.model import Activation, SirenResult, Status
from siren_gateway.store.database import Connection, Database

# The activation's own fields kept on disk (its results are rows of their own).
_FIELDS = ("id", "created_at", "requested_by", "klass", "action", "signal", "start_at", "sirens",
           "state", "ended_at", "interrupted_at", "all_accepted_at", "preempted_by", "repeat_of")
_IDS_PER_QUERY = 500  # below SQLite's limit on bound parameters


class ActivationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def recent_and_running(self, keep: int) -> tuple[list[Activation], int]:
        """Every running activation and the `keep` newest, newest first; and the highest id."""

        def load(conn: Connection) -> tuple[list[Activation], int]:
            found = _select(conn, "WHERE state = 'running' OR id IN (SELECT id FROM activations "
                                  "ORDER BY id DESC LIMIT ?) ORDER BY id DESC", (keep,))
            top = conn.execute("SELECT max(id) FROM activations").fetchone()[0] or 0
            return found, int(top)

        return await self.db.run(load)

    async def write(self, activations: list[Activation],
                    results: list[tuple[int, str, dict[str, Any]]]) -> None:
        """Activations (whole) and the given results (activation id, siren id, its record),
        in one transaction. Raises StorageError; nothing is written then."""
        rows = [(a.id, json.dumps({k: getattr(a, k) for k in _FIELDS}), a.state, a.created_at)
                for a in activations]
        result_rows = [(activation_id, siren_id, json.dumps(record))
                       for activation_id, siren_id, record in results]

        def write(conn: Connection) -> None:
            with conn.transaction():
                conn.executemany(
                    "INSERT INTO activations (id, data, state, created_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET data = excluded.data, state = excluded.state, "
                    "created_at = excluded.created_at", rows)
                conn.executemany(
                    "INSERT INTO activation_results (activation_id, siren_id, data) VALUES "
                    "(?, ?, ?) ON CONFLICT (activation_id, siren_id) DO UPDATE SET "
                    "data = excluded.data", result_rows)

        await self.db.run(write)

    async def find_by_requester(self, requested_by: str) -> int | None:
        def lookup(conn: Connection) -> int | None:
            row = conn.execute("SELECT id FROM activations WHERE requested_by = ? "
                               "ORDER BY id DESC LIMIT 1", (requested_by,)).fetchone()
            return int(row[0]) if row else None

        return await self.db.run(lookup)

    async def get(self, activation_id: int) -> Activation | None:
        found = await self.db.run(lambda conn: _select(conn, "WHERE id = ?", (activation_id,)))
        return found[0] if found else None

    async def for_siren(self, siren_id: str, limit: int) -> list[dict[str, Any]]:
        """The siren's newest activations with its own result in each, newest first."""

        def read(conn: Connection) -> list[tuple[str, str]]:
            return conn.execute(
                "SELECT a.data, r.data FROM activation_results r JOIN activations a "
                "ON a.id = r.activation_id WHERE r.siren_id = ? ORDER BY r.activation_id DESC "
                "LIMIT ?", (siren_id, limit)).fetchall()

        out = []
        for activation, result in await self.db.run(read):
            a, r = json.loads(activation), json.loads(result)
            out.append({"id": a["id"], "created_at": a["created_at"], "class": a["klass"],
                        "action": a["action"], "signal": a["signal"],
                        "start_at": a["start_at"], "requested_by": a["requested_by"],
                        "status": r.get("status"), "reason": r.get("reason", "")})
        return out

    async def older(self, below: int, limit: int) -> list[Activation]:
        """Up to `limit` activations with ids below `below`, newest first."""
        return await self.db.run(lambda conn: _select(
            conn, "WHERE id < ? ORDER BY id DESC LIMIT ?", (below, limit)))


def _select(conn: Connection, clause: str, params: tuple[Any, ...]) -> list[Activation]:
    """Activations (with their per-siren results), in `clause`'s order."""
    rows = conn.execute(f"SELECT id, data FROM activations {clause}", params).fetchall()
    ids = [r[0] for r in rows]
    by_activation: dict[int, dict[str, SirenResult]] = {}
    for start in range(0, len(ids), _IDS_PER_QUERY):
        chunk = ids[start:start + _IDS_PER_QUERY]
        for activation_id, data in conn.execute(
                f"SELECT activation_id, data FROM activation_results WHERE activation_id IN "
                f"({','.join('?' * len(chunk))})", chunk):
            raw = json.loads(data)
            raw["status"] = Status(raw["status"])
            result = SirenResult(**raw)
            result.written = tuple(result.record().values())  # as on disk
            by_activation.setdefault(activation_id, {})[raw["siren_id"]] = result
    return [Activation(results=by_activation.get(activation_id, {}), **json.loads(data))
            for activation_id, data in rows]
