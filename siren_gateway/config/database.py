"""Which database holds the gateway's state: the embedded SQLite file (storage.path) unless a
PostgreSQL server is named here (several gateways share one: docs/cluster.md)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from siren_gateway.config.common import StrictModel


class DatabaseConfig(StrictModel):
    # postgresql://user:password@host:port/database?sslmode=... (libpq's URL form)
    url: Annotated[str, Field(pattern=r"^postgres(ql)?://", max_length=2000)]
