"""Password hashes upgraded at login (to argon2id), kept beside the site file's own."""

from __future__ import annotations

import sqlite3

from siren_gateway.store.database import Database


class PasswordUpgradeStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def all(self) -> list[tuple[str, str, str]]:
        """(username, sha256 of the site file's hash it replaces, new hash) for every user."""
        return await self.db.run(lambda conn: [tuple(row) for row in conn.execute(
            "SELECT username, replaces_sha256, password_hash FROM password_upgrades")])

    async def put(self, username: str, replaces_sha256: str, password_hash: str,
                  at: float) -> None:
        """Nothing is written when it raises (StorageError)."""

        def store(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("INSERT OR REPLACE INTO password_upgrades VALUES (?, ?, ?, ?)",
                             (username, replaces_sha256, password_hash, at))

        await self.db.run(store)
