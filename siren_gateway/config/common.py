"""Shared pieces of the site file's models: strict base model, identifiers, ports, problems.

A problem is reported with the file, the path of the bad key (``sirens[3].link.port``) and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
MAX_LIST = 50_000  # sirens named in one request or plan (a province has tens of thousands)
Port = Annotated[int, Field(ge=1, le=65535)]


def _known_time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None
    return name


TimeZoneName = Annotated[str, Field(max_length=64), AfterValidator(_known_time_zone)]
UnitId = Annotated[int, Field(ge=0, le=247)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Severity = Literal["info", "minor", "major", "critical"]
SEVERITY_RANK = {"info": 0, "minor": 1, "major": 2, "critical": 3}


@dataclass(frozen=True)
class ConfigProblem:
    path: str  # e.g. sirens[3].link.port; empty for the whole file
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    def __init__(self, file: Path, problems: list[ConfigProblem]):
        self.file = file
        self.problems = problems
        lines = "\n".join(f"{file}: {p}" for p in problems)
        super().__init__(lines)
