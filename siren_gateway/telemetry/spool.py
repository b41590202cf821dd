"""A bounded, ordered, on-disk spool of line-protocol batches waiting for the server.

One file per batch, named by a growing sequence number, so order survives restarts and a
crash can at worst lose the batch being written. When the spool is over its size limit the
oldest batches go (counted): the newest telemetry is the most useful to a maintainer.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SpooledBatch:
    path: Path
    lines: int

    def read(self) -> str:
        return self.path.read_text(encoding="utf-8")


class DiskSpool:
    SUFFIX = ".lp"

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.dropped_lines = 0
        self.dropped_batches = 0
        self._batches: list[SpooledBatch] = []
        self._bytes = 0
        self._next = 0

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob("*.tmp"):
            leftover.unlink()  # a batch interrupted while being written: it was never spooled
        for path in sorted(self.directory.glob(f"*{self.SUFFIX}")):
            seq, _, lines = path.stem.partition("-")
            self._batches.append(SpooledBatch(path, int(lines or 0)))
            self._bytes += path.stat().st_size
            self._next = max(self._next, int(seq) + 1)

    @property
    def empty(self) -> bool:
        return not self._batches

    @property
    def batches(self) -> int:
        return len(self._batches)

    @property
    def lines(self) -> int:
        return sum(b.lines for b in self._batches)

    @property
    def bytes(self) -> int:
        return self._bytes

    async def append(self, text: str, lines: int) -> int:
        """Spool a batch; returns how many lines were dropped to stay under the limit."""
        path = self.directory / f"{self._next:012d}-{lines}{self.SUFFIX}"
        self._next += 1
        size = await asyncio.to_thread(_write_atomically, path, text)
        self._batches.append(SpooledBatch(path, lines))
        self._bytes += size
        dropped = 0
        while self._bytes > self.max_bytes and len(self._batches) > 1:
            oldest = self._batches[0]
            dropped += oldest.lines
            await self.remove(oldest)
            self.dropped_lines += oldest.lines
            self.dropped_batches += 1
        return dropped

    def oldest(self) -> SpooledBatch | None:
        return self._batches[0] if self._batches else None

    async def remove(self, batch: SpooledBatch) -> None:
        """Remove a batch; a no-op for one already dropped (the replayer and an overflow may
        both reach for the oldest batch)."""
        if batch not in self._batches:
            return
        self._batches.remove(batch)
        self._bytes -= await asyncio.to_thread(_unlink, batch.path)


def _write_atomically(path: Path, text: str) -> int:
    data = text.encode("utf-8")
    temporary = path.with_suffix(".tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.rename(path)
    return len(data)


def _unlink(path: Path) -> int:
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size
