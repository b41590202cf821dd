"""The asset register on disk: each siren's current record, what the site file said of it last
(so a later edit of the file is told from an older one), and every change with who made it."""

from __future__ import annotations

import json
from typing import Any

from siren_gateway.store.database import Connection, Database

AssetChange = tuple[str, float, str, dict[str, Any]]  # siren, at, by, {field: [old, new]}


class AssetStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def all(self) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        """Every stored siren's (record, the site file's values last seen)."""
        def read(conn: Connection) -> list[tuple[str, str, str]]:
            return conn.execute("SELECT siren_id, record, seed FROM assets").fetchall()

        return {siren: (json.loads(record), json.loads(seed))
                for siren, record, seed in await self.db.run(read)}

    async def put(self, rows: list[tuple[str, dict[str, Any], dict[str, Any]]],
                  changes: list[AssetChange]) -> None:
        """Records (siren, record, seed) and their changes, together or not at all."""
        records = [(siren, json.dumps(record, ensure_ascii=False, default=str),
                    json.dumps(seed, ensure_ascii=False, default=str))
                   for siren, record, seed in rows]
        logged = [(siren, at, by, json.dumps(diff, ensure_ascii=False, default=str))
                  for siren, at, by, diff in changes]

        def write(conn: Connection) -> None:
            with conn.transaction():
                conn.executemany("INSERT INTO assets (siren_id, record, seed) VALUES (?, ?, ?) "
                                 "ON CONFLICT (siren_id) DO UPDATE SET record = "
                                 "excluded.record, seed = excluded.seed", records)
                conn.executemany("INSERT INTO asset_changes (siren_id, at, \"by\", changes) "
                                 "VALUES (?, ?, ?, ?)", logged)

        await self.db.run(write)

    async def changes(self, siren_id: str, limit: int) -> list[AssetChange]:
        """Newest first."""
        def read(conn: Connection) -> list[tuple[str, float, str, str]]:
            return conn.execute(
                "SELECT siren_id, at, \"by\", changes FROM asset_changes WHERE siren_id = ? "
                "ORDER BY id DESC LIMIT ?", (siren_id, limit)).fetchall()

        return [(siren, at, by, json.loads(diff))
                for siren, at, by, diff in await self.db.run(read)]
