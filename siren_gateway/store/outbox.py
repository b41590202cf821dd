"""The notification outbox on disk: pending notifications per channel, oldest first, and what
became of each (delivered, retried, given up). Finished ones are deleted after a week."""

from __future__ import annotations

from siren_gateway.store.database import Connection, Database

KEEP_FINISHED_S = 7 * 86400


class OutboxStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, rows: list[tuple[str, str, str, float]]) -> None:
        """(id, channel, JSON body, created_at) each; an id already present is left alone."""

        def insert(conn: Connection) -> None:
            with conn.transaction():
                conn.executemany("INSERT INTO outbox (id, channel, body, created_at, next_at, "
                                 "state) VALUES (?, ?, ?, ?, ?, 'pending') "
                                 "ON CONFLICT (id) DO NOTHING",
                                 [(*row, row[3]) for row in rows])

        await self.db.run(insert)

    async def oldest_pending(self, channel: str) -> tuple[int, str, str, str, int, float] | None:
        """(seq, id, channel, JSON body, attempts, next_at) of the channel's oldest pending."""

        def query(conn: Connection) -> tuple[int, str, str, str, int, float] | None:
            row = conn.execute(
                "SELECT seq, id, channel, body, attempts, next_at FROM outbox WHERE channel = ? "
                "AND state = 'pending' ORDER BY seq LIMIT 1", (channel,)).fetchone()
            return None if row is None else (row[0], row[1], row[2], row[3], row[4], row[5])

        return await self.db.run(query)

    async def attempted(self, seq: int, now: float, state: str = "pending",
                        next_at: float | None = None) -> None:
        """Count an attempt; set the state (delivered, failed) or when to try again; and delete
        what finished more than a week ago."""
        cutoff = now - KEEP_FINISHED_S

        def update(conn: Connection) -> None:
            with conn.transaction():
                if next_at is None:
                    conn.execute("UPDATE outbox SET state = ?, attempts = attempts + 1 "
                                 "WHERE seq = ?", (state, seq))
                else:
                    conn.execute("UPDATE outbox SET state = ?, attempts = attempts + 1, "
                                 "next_at = ? WHERE seq = ?", (state, next_at, seq))
                conn.execute("DELETE FROM outbox WHERE state != 'pending' AND created_at < ?",
                             (cutoff,))

        await self.db.run(update)

    async def counts(self) -> dict[str, int]:
        return await self.db.run(lambda conn: dict(conn.execute(
            "SELECT state, count(*) FROM outbox GROUP BY state")))

