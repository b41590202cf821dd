"""PostgreSQL: the store shared by several gateways (docs/cluster.md).

Driver: psycopg 3, PostgreSQL's maintained Python driver, chosen over asyncpg because it has
both a blocking and an asyncio API over one libpq: the repositories run the same blocking
functions on this database's own thread as on SQLite's (one SQL code path, checked by one test
suite on both), and its asyncio connection serves LISTEN/NOTIFY where the event loop must wait
on the server. Its binary build needs no compiler.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

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

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)
T = TypeVar("T")

# A dead server or a cut network is noticed in seconds, not after the kernel's two hours, and a
# statement cannot hold the database's thread (and every write queued behind it) for ever.
CONNECT_OPTIONS: dict[str, Any] = {
    "connect_timeout": 5, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
    "keepalives_count": 3, "tcp_user_timeout": 10_000, "application_name": "siren-gateway",
    "options": "-c statement_timeout=30000 -c idle_in_transaction_session_timeout=60000",
}


@functools.lru_cache(maxsize=1024)
def _format_style(sql: str) -> str:
    """The repositories' qmark SQL in psycopg's format style (a literal % doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresConnection:
    dialect: Dialect = "postgres"

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        if not params:  # unparametrised: % is literal, and a script may hold several statements
            return self.raw.execute(sql.encode())
        return self.raw.execute(_format_style(sql).encode(), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with self.raw.cursor() as cursor:
                cursor.executemany(_format_style(sql).encode(), rows)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.raw.transaction():
            yield

    def lock(self, name: str) -> None:
        self.raw.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (name,))


def describe_url(url: str) -> str:
    """host:port/database of a connection URL, without user or password."""
    import psycopg  # (loaded by PostgreSQL sites only: ~8 MiB resident, see _connect)
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error:
        return "PostgreSQL (unparsable URL)"
    return (f"PostgreSQL {parts.get('host') or 'local socket'}:{parts.get('port') or 5432}"
            f"/{parts.get('dbname') or '?'}")


class PostgresDatabase:
    """One connection to PostgreSQL, used only from its own thread; opened again when lost."""

    dialect: Dialect = "postgres"

    def __init__(self, url: str, name: str = "state") -> None:
        self.url = url
        self.name = name  # which of a node's connections (state, cluster, live) in the server
        self.health = StorageHealth()
        self._thread = DatabaseThread(f"postgres-{name}")
        self._conn: PostgresConnection | None = None
        self._open = False

    def describe(self) -> str:
        return describe_url(self.url)

    def _connect(self) -> PostgresConnection:
        # Imported here, not at the top: the driver costs a SQLite site ~8 MiB resident and
        # ~80 ms of start-up for nothing (bench/memory.py).
        import psycopg

        try:
            raw = psycopg.connect(self.url, autocommit=True, **(
                CONNECT_OPTIONS | {"application_name": f"siren-gateway {self.name}"}))
        except psycopg.Error as exc:
            raise StorageError(f"cannot reach {self.describe()}: {exc}") from exc
        return PostgresConnection(raw)

    async def start(self) -> None:
        def open_and_migrate() -> None:
            conn = self._connect()
            try:
                migrate(conn)
            except BaseException:
                conn.raw.close()
                raise
            self._conn, self._open = conn, True

        await self._thread.call(open_and_migrate)
        log.info("%s database: %s", self.name, self.describe())

    async def run(self, fn: Callable[[Connection], T]) -> T:
        def call() -> T:
            if not self._open:
                raise DatabaseClosed("database is not open")
            if self._conn is None or self._conn.raw.closed:
                self._conn = self._connect()
            import psycopg  # (loaded already by _connect)

            try:
                return fn(self._conn)
            except psycopg.Error as exc:
                if self._conn.raw.broken:
                    self._conn.raw.close()
                    self._conn = None  # the next call connects again
                raise StorageError(str(exc).strip()) from exc

        return await self._thread.call(call)

    async def stop(self) -> None:
        if self._thread.stopped:
            return

        def close() -> None:
            self._open = False
            if self._conn is not None:
                self._conn.raw.close()
                self._conn = None

        await self._thread.call(close)
        self._thread.shutdown()


class PostgresStore(RepositoryStore):
    """Every repository on one PostgreSQL database."""

    database: PostgresDatabase

    def __init__(self, url: str) -> None:
        super().__init__(PostgresDatabase(url))
