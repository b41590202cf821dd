"""Write-behind for the maintenance records held in memory (work orders, inspection tasks): a
change is announced on the bus once and written at the next flush; a write the database refuses
is kept and tried again at the next one; a record still waiting to be written is never pruned."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, Protocol, TypeVar

from siren_gateway.live.bus import Bus, MaintenanceChanged
from siren_gateway.store.errors import StorageError

log = logging.getLogger(__name__)


class Record(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def siren_id(self) -> str: ...

    @property
    def state(self) -> str: ...


R = TypeVar("R", bound=Record)


class WriteBehind(Generic[R]):
    def __init__(self, kind: str, records: dict[int, R],
                 write: Callable[[list[R]], Awaitable[None]], bus: Bus) -> None:
        self.kind = kind  # "work_order" or "inspection", as the stream names it
        self.records = records  # the engine's own dict, shared (never replaced)
        self.write = write
        self.bus = bus
        self._unwritten: set[int] = set()
        self._unannounced: set[int] = set()

    def changed(self, record_id: int, *, stored: bool = False) -> None:
        """`stored`: already on disk (just made by the store): only announced."""
        self._unannounced.add(record_id)
        if not stored:
            self._unwritten.add(record_id)

    async def flush(self) -> None:
        # Announced as they are now, once per change (not again at each retry of a write).
        for record_id in sorted(self._unannounced):
            if (record := self.records.get(record_id)) is not None:
                self.bus.publish(MaintenanceChanged(self.kind, record.id, record.siren_id,
                                                    str(record.state)))
        self._unannounced.clear()
        if not self._unwritten:
            return
        unwritten, self._unwritten = self._unwritten, set()
        try:
            await self.write([self.records[i] for i in sorted(unwritten) if i in self.records])
        except StorageError as exc:
            self._unwritten |= unwritten
            log.warning("%s records not stored yet (%s); kept for the next try", self.kind, exc)

    def prune(self, closed: Iterable[int], keep: int) -> None:
        """Forget all but the newest `keep` of the `closed` records (they stay on disk)."""
        for record_id in sorted(closed)[:-keep or None]:
            if record_id not in self._unwritten:
                del self.records[record_id]
