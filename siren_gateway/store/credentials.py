"""Password hashes upgraded at login (to argon2id), kept beside the site file's own."""

from __future__ import annotations

from siren_gateway.store.database import Connection, Database


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

        def store(conn: Connection) -> None:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO password_upgrades (username, replaces_sha256, password_hash, "
                    "upgraded_at) VALUES (?, ?, ?, ?) ON CONFLICT (username) DO UPDATE SET "
                    "replaces_sha256 = excluded.replaces_sha256, password_hash = "
                    "excluded.password_hash, upgraded_at = excluded.upgraded_at",
                    (username, replaces_sha256, password_hash, at))

        await self.db.run(store)
