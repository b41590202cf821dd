"""Time: the clock the engines read and sleep on (injectable, so tests move time instead of
waiting for it), and the one way a moment is written out."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def iso_utc(moment: float | None) -> str | None:
    """A Unix time as ISO 8601 in UTC; None (and 0, "never") as None."""
    return datetime.fromtimestamp(moment, UTC).isoformat() if moment else None
