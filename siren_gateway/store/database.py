"""What a repository needs from a database, whichever it is: run a function on the database's
own thread with a connection that speaks one SQL (qmark parameters, `transaction()`), and say
whether the database takes writes now. SQLite (store/sqlite.py) is the embedded default;
PostgreSQL (store/postgres.py) serves several gateways. The schema is store/schema.py.

The repositories' SQL is the subset both databases run alike: `?` parameters, upserts with
`ON CONFLICT`, `RETURNING`, explicit column lists. What differs is answered by the connection
(its `dialect`, `lock`) and by the migrations, never by a repository's own branching.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar

from siren_gateway.store.errors import DatabaseClosed

log = logging.getLogger(__name__)
T = TypeVar("T")
Dialect = Literal["sqlite", "postgres"]


class StorageHealth:
    """Whether the state database takes writes now (disk full, read-only, locked, unreachable).

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


class Rows(Protocol):
    """A statement's result: what both drivers' cursors offer."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """One database connection, used only on its database's thread."""

    dialect: Dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def transaction(self) -> AbstractContextManager[None]:
        """All statements inside commit together or not at all (an exception rolls back)."""
        ...

    def lock(self, name: str) -> None:
        """Inside a transaction: wait until no other writer holds `name`, and hold it to the
        transaction's end (SQLite's one writer already is such a lock)."""
        ...


class DatabaseThread:
    """The one worker thread a database's connection lives on: the event loop hands it work and
    never waits on the disk or the network itself."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.stopped = False

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        if self.stopped:  # its thread is gone
            raise DatabaseClosed("database is stopped")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        self.stopped = True
        self._executor.shutdown(wait=True)


class Database(Protocol):
    dialect: Dialect
    health: StorageHealth

    async def start(self) -> None:
        """Open the database and bring it to the current schema."""
        ...

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn(connection)` on the database's thread. What the database refuses (disk full,
        read-only, locked, unreachable, not open) is raised as StorageError."""
        ...

    async def stop(self) -> None: ...

    def describe(self) -> str:
        """Where the database is, for logs (no password)."""
        ...
