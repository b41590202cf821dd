"""Bounds for every value a request can carry, so no input is too big to handle or to store.

Numbers outside what the store can hold, or strings and lists longer than any real use, are
refused with 422 before any route runs (an id past 2^53 would otherwise overflow SQLite).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import Field

MAX_ID = 2**53  # JSON's safe integers, and well inside SQLite's 64 bits
MAX_SIRENS = 50_000  # sirens named in one request (a province has tens of thousands)
MAX_ZONES = 1_000

RowId = Annotated[int, Path(ge=1, le=MAX_ID, description="a positive id")]
Name = Annotated[str, Path(min_length=1, max_length=64)]
OccurrenceKey = Annotated[str, Path(min_length=1, max_length=64,
                                    description="an occurrence id, or its ISO start time")]
SirenId = Annotated[str, Field(min_length=1, max_length=64)]
ZoneId = Annotated[str, Field(min_length=1, max_length=64)]
QueryText = Annotated[str | None, Query(max_length=64)]
BeforeId = Annotated[int | None, Query(ge=1, le=MAX_ID)]
