"""The embedded database: SQLite, owned by one worker thread so the event loop never waits on
disk. Repositories (one module each in this package) run their queries through it; the schema
is store/schema.py.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from siren_gateway.config.site import Site
from siren_gateway.store.errors import DatabaseClosed, StorageError
from siren_gateway.store.schema import migrate

log = logging.getLogger(__name__)
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


class StorageHealth:
    """Whether the state database takes writes now (disk full, read-only, locked...).

    Every writer that must not lose its data (audit, activations) reports each outcome here;
    alarms go out regardless, and the alert rules raise `storage_failing` from this.
    """

    def __init__(self) -> None:
        self.failing = False
        self.since: float | None = None
        self.last_error: str | None = None
        self.failures = 0

    def failed(self, error: BaseException) -> None:
        self.failures += 1
        self.last_error = str(error)[:200]
        if not self.failing:
            self.failing, self.since = True, time.time()
            log.error("storage is failing: %s; alarms still go out, their records are held "
                      "until it works again", self.last_error)

    def succeeded(self) -> None:
        if self.failing:
            log.warning("storage works again after %.0f s", time.time() - (self.since or 0))
            self.failing, self.since = False, None

    def as_dict(self) -> dict[str, Any]:
        return {"failing": self.failing, "failures": self.failures,
                "last_error": self.last_error,
                "since": datetime.fromtimestamp(self.since, UTC).isoformat()
                if self.since else None}


class Database:
    """One SQLite connection, used only from its own thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.health = StorageHealth()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None

    async def start(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        migrate(conn)
        self._conn = conn

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` on the database thread. What the database refuses (disk full,
        read-only, locked, not open) is raised as StorageError, whatever the backend."""

        def call() -> T:
            if self._conn is None:
                raise DatabaseClosed("database is not open")
            try:
                return fn(self._conn)
            except sqlite3.Error as exc:
                raise StorageError(str(exc)) from exc

        return await self._call(call)

    async def stop(self) -> None:
        if self._conn is not None:
            await self._call(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)
