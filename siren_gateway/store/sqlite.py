"""The embedded database: one SQLite file, owned by one worker thread so the event loop never
waits on disk."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from siren_gateway.config.site import Site
from siren_gateway.store.database import (
    Connection,
    DatabaseThread,
    Dialect,
    Rows,
    StorageHealth,
)
from siren_gateway.store.errors import DatabaseClosed, StorageError
from siren_gateway.store.repositories import RepositoryStore
from siren_gateway.store.schema import migrate

T = TypeVar("T")


def database_path(site: Site, override: str | Path | None = None) -> Path:
    """The site's SQLite file: `override` as given, else storage.path, which is relative to
    the site file's folder when not absolute."""
    if override:
        return Path(override)
    path = Path(site.config.storage.path)
    if site.source is not None and not path.is_absolute():
        path = site.source.parent / path
    return path


class SqliteConnection:
    """sqlite3's connection in autocommit mode, with transactions made explicit: in that mode
    `with connection:` does not begin one, so each statement of a batch committed alone."""

    dialect: Dialect = "sqlite"

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        return self.raw.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.raw.executemany(sql, rows)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self.raw.in_transaction:  # inside another: that one commits or rolls back
            yield
            return
        # IMMEDIATE takes the write lock now, so a transaction that read first cannot fail
        # later because another writer came between.
        self.raw.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.raw.execute("ROLLBACK")
            raise
        self.raw.execute("COMMIT")

    def lock(self, name: str) -> None:
        """Nothing to do: BEGIN IMMEDIATE already holds the database's only write lock."""


class SqliteDatabase:
    """One SQLite connection, used only from its own thread."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.health = StorageHealth()
        self._thread = DatabaseThread("sqlite")
        self._conn: SqliteConnection | None = None

    def describe(self) -> str:
        return f"SQLite {self.path}"

    async def start(self) -> None:
        await self._thread.call(self._open)

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        raw = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                              timeout=10.0)
        # Switching the journal mode does not wait for another connection's lock (a gateway
        # and the command line starting on one file): try again for a while.
        for attempt in range(50):
            try:
                raw.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if attempt == 49:
                    raw.close()
                    raise
                time.sleep(0.1)
        raw.execute("PRAGMA synchronous=NORMAL")
        conn = SqliteConnection(raw)
        try:
            migrate(conn)
        except BaseException:
            raw.close()
            raise
        self._conn = conn

    async def run(self, fn: Callable[[Connection], T]) -> T:
        def call() -> T:
            if self._conn is None:
                raise DatabaseClosed("database is not open")
            try:
                return fn(self._conn)
            except sqlite3.Error as exc:
                raise StorageError(str(exc)) from exc

        return await self._thread.call(call)

    async def stop(self) -> None:
        if self._conn is not None:
            await self._thread.call(self._conn.raw.close)
            self._conn = None
        self._thread.shutdown()


class SqliteStore(RepositoryStore):
    """Every repository on one SQLite file."""

    database: SqliteDatabase

    def __init__(self, path: str | Path) -> None:
        super().__init__(SqliteDatabase(path))
