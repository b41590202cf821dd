"""Sessions shared by the nodes of a cluster (security/sessions.py): each by the SHA-256 of its
token, never the token itself, so the table grants nothing to whoever reads it."""

from __future__ import annotations

from siren_gateway.store.database import Connection, Database

# token sha256, username, role name, issued at, expires at, last used
SessionRow = tuple[str, str, str, float, float, float]


class SessionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def put(self, row: SessionRow, now: float) -> None:
        def write(conn: Connection) -> None:
            with conn.transaction():
                conn.execute("INSERT INTO sessions (token_sha256, username, role, issued_at, "
                             "expires_at, last_used) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT "
                             "(token_sha256) DO NOTHING", row)
                conn.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))

        await self.db.run(write)

    async def get(self, token_sha256: str) -> SessionRow | None:
        def read(conn: Connection) -> SessionRow | None:
            found = conn.execute("SELECT token_sha256, username, role, issued_at, expires_at, "
                                 "last_used FROM sessions WHERE token_sha256 = ?",
                                 (token_sha256,)).fetchone()
            return tuple(found) if found else None

        return await self.db.run(read)

    async def touch(self, token_sha256: str, at: float) -> bool:
        """Record a use; False when the session is gone (revoked on another node)."""
        def write(conn: Connection) -> bool:
            return conn.execute(
                "UPDATE sessions SET last_used = CASE WHEN last_used < ? THEN ? ELSE last_used "
                "END WHERE token_sha256 = ?", (at, at, token_sha256)).rowcount > 0

        return await self.db.run(write)

    async def delete(self, token_sha256: str) -> None:
        await self.db.run(lambda conn: conn.execute(
            "DELETE FROM sessions WHERE token_sha256 = ?", (token_sha256,)))

    async def delete_user(self, username: str) -> None:
        await self.db.run(lambda conn: conn.execute(
            "DELETE FROM sessions WHERE username = ?", (username,)))
