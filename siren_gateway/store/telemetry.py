"""Telemetry history in the embedded database, written in batches by a bus subscriber.

To keep a year of a large fleet in a file, a sample is stored when something discrete changed
(state, faults, flags, labels) or when the configured minimum interval has passed since that
siren's last stored sample. History is read back raw or in time buckets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import operator
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from siren_gateway.config.telemetry import StorageConfig
from siren_gateway.live.bus import Bus, SampleReceived, Subscription
from siren_gateway.model import Sample, Value
from siren_gateway.store.database import Connection, Database
from siren_gateway.store.errors import StorageError

log = logging.getLogger(__name__)

# msgspec, not json.dumps: 1.5 us against 9.9 us for a sample's values (json.dumps with
# options makes a new encoder on every call). Same JSON for these values, except that a
# non-finite float is stored as null (json.dumps wrote NaN, which is not JSON).
_encode_json = msgspec.json.Encoder().encode


class _DiscreteSignature:
    """What must never be thinned out: labels, flags and faults (numbers may be).

    The discrete point names of each siren are found once; after that the signature is one
    C-level itemgetter call per sample instead of a type check per value.
    """

    def __init__(self) -> None:
        self._getters: dict[str, Callable[[dict[str, Value]], Any]] = {}
        self._by_keys: dict[tuple[str, ...], Callable[[dict[str, Value]], Any]] = {}

    def __call__(self, sample: Sample) -> tuple[Any, ...]:
        values = sample.values
        getter = self._getters.get(sample.siren_id)
        if getter is not None:
            try:
                return (getter(values), sample.faults)
            except KeyError:
                pass  # this siren's points changed shape: learn them again
        keys = tuple(k for k, v in values.items() if isinstance(v, bool | str))
        getter = self._by_keys.get(keys)
        if getter is None:  # one per shape (profile), shared by its thousands of sirens
            getter = operator.itemgetter(*keys) if keys else (lambda _: ())
            self._by_keys[keys] = getter
        self._getters[sample.siren_id] = getter
        return (getter(values), sample.faults)


def _row(ts: float, device_ts: float | None, faults: str, data: str) -> dict[str, Any]:
    return {"time": datetime.fromtimestamp(ts, UTC).isoformat(),
            "device_time": datetime.fromtimestamp(device_ts, UTC).isoformat()
            if device_ts is not None else None,
            "faults": json.loads(faults), "values": json.loads(data)}


def _aggregate(bucket_start: float, width: float, members: list[tuple[float, str, str]]
               ) -> dict[str, Any]:
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    last: dict[str, Value] = {}
    faults: set[str] = set()
    for _, fault_text, data in members:
        faults.update(json.loads(fault_text))
        for name, value in json.loads(data).items():
            if isinstance(value, bool | str):
                last[name] = value
            elif value is not None:  # (null: a non-finite reading, see _encode_json)
                sums[name] = sums.get(name, 0.0) + value
                counts[name] = counts.get(name, 0) + 1
    values: dict[str, Value] = {n: round(sums[n] / counts[n], 4) for n in sums}
    values.update(last)
    return {"time": datetime.fromtimestamp(bucket_start, UTC).isoformat(), "device_time": None,
            "bucket_s": round(width, 3), "samples": len(members), "faults": sorted(faults),
            "values": values}


class TelemetryStore:
    """Writes samples from the bus into SQLite in batches; answers history queries."""

    def __init__(self, db: Database, bus: Bus, config: StorageConfig,
                 batch_size: int = 1000, flush_interval_s: float = 0.5) -> None:
        self.db = db
        self.config = config
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self._subscription: Subscription = bus.subscribe(
            "telemetry-store", maxsize=50_000, kinds=(SampleReceived,))
        self._last_stored: dict[str, tuple[float, tuple[Any, ...]]] = {}
        self._signatures: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._signature = _DiscreteSignature()
        self._fault_texts: dict[frozenset[str], str] = {}
        self._task: asyncio.Task[None] | None = None
        self._held: list[Sample] = []  # taken off the queue, not yet written
        self.written = 0
        self.thinned = 0
        self.write_errors = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="telemetry store")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        # What was held by the cancelled batch or still queued at shutdown reaches disk too.
        held, self._held = self._held, []
        await self._flush(held + self._drain())
        self._subscription.close()

    def _keep(self, sample: Sample) -> bool:
        ts = sample.received_at.timestamp()
        signature = self._signature(sample)
        last = self._last_stored.get(sample.siren_id)
        if (last is not None and last[1] == signature
                and ts - last[0] < self.config.telemetry_min_interval_s):
            self.thinned += 1
            return False
        # Held per siren until its next stored sample: most sirens show one of a few
        # signatures (idle, healthy), so equal ones share one tuple (~0.25 kB a siren each).
        shared = self._signatures.get(signature)
        if shared is None and len(self._signatures) < 4096:  # bounded whatever devices say
            shared = self._signatures[signature] = signature
        self._last_stored[sample.siren_id] = (ts, signature if shared is None else shared)
        return True

    def _drain(self) -> list[Sample]:
        samples: list[Sample] = []
        while len(samples) < self.batch_size and not self._subscription.queue.empty():
            event = self._subscription.queue.get_nowait()
            if (isinstance(event, SampleReceived) and not event.mirrored
                    and self._keep(event.sample)):
                samples.append(event.sample)
        return samples

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_retention = 0.0
        while True:
            event = await self._subscription.get()
            self._held = [event.sample] if (isinstance(event, SampleReceived)
                                            and not event.mirrored
                                            and self._keep(event.sample)) else []
            await asyncio.sleep(self.flush_interval_s)  # let a batch gather
            self._held += self._drain()
            batch, self._held = self._held, []
            await self._flush(batch)
            if loop.time() >= next_retention:
                await self.apply_retention()
                next_retention = loop.time() + 600

    async def _flush(self, samples: list[Sample]) -> None:
        if not samples:
            return
        fault_texts = self._fault_texts
        rows = []
        for s in samples:
            faults = fault_texts.get(s.faults)
            if faults is None:  # a fleet shows a few distinct fault sets: each encoded once
                faults = _encode_json(sorted(s.faults)).decode()
                if len(fault_texts) < 4096:
                    fault_texts[s.faults] = faults
            rows.append((s.siren_id, s.received_at.timestamp(),
                         s.device_time.timestamp() if s.device_time else None,
                         faults, _encode_json(s.values).decode()))

        def insert(conn: Connection) -> None:
            with conn.transaction():
                conn.executemany("INSERT INTO telemetry (siren_id, ts, device_ts, faults, data) "
                                 "VALUES (?, ?, ?, ?, ?)", rows)

        try:
            await self.db.run(insert)
            self.written += len(rows)
        except StorageError:
            self.write_errors += 1
            log.exception("could not store %d telemetry samples", len(rows))

    async def apply_retention(self) -> int:
        cutoff = time.time() - self.config.telemetry_retention_days * 86400

        def delete(conn: Connection) -> int:
            with conn.transaction():
                return conn.execute("DELETE FROM telemetry WHERE ts < ?", (cutoff,)).rowcount

        return await self.db.run(delete)

    async def history(self, siren_id: str, since: datetime, limit: int,
                      resolution_s: float | None = None) -> list[dict[str, Any]]:
        """Stored samples of one siren since a moment, oldest first.

        A long range is downsampled rather than cut: when more than `limit` samples fall in it
        (or a `resolution_s` is asked for), samples are grouped into equal time buckets with
        numbers averaged, labels and flags taken from the bucket's last sample and faults
        united, so a month of battery voltage still shows its trend in `limit` points.
        """
        start = since.timestamp()

        def query(conn: Connection) -> list[dict[str, Any]]:
            count = conn.execute("SELECT count(*) FROM telemetry WHERE siren_id = ? AND ts >= ?",
                                 (siren_id, start)).fetchone()[0]
            if resolution_s is None and count <= limit:
                rows = conn.execute(
                    "SELECT ts, device_ts, faults, data FROM telemetry WHERE siren_id = ? AND "
                    "ts >= ? ORDER BY ts", (siren_id, start)).fetchall()
                return [_row(ts, device_ts, faults, data) for ts, device_ts, faults, data in rows]
            span = max(1.0, time.time() - start)
            bucket = resolution_s or span / max(1, limit)
            buckets: dict[int, list[tuple[float, str, str]]] = {}
            for ts, faults, data in conn.execute(
                    "SELECT ts, faults, data FROM telemetry WHERE siren_id = ? AND ts >= ? "
                    "ORDER BY ts", (siren_id, start)):
                buckets.setdefault(int((ts - start) // bucket), []).append((ts, faults, data))
            return [_aggregate(start + index * bucket, bucket, members)
                    for index, members in sorted(buckets.items())][-limit:]

        return await self.db.run(query)

    def stats(self) -> dict[str, int]:
        return {"written": self.written, "thinned": self.thinned, "write_errors": self.write_errors,
                "queued": self._subscription.queue.qsize(), "dropped": self._subscription.dropped}
