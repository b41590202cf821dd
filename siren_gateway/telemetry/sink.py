"""Telemetry sinks: where every sample goes besides the live state.

The embedded SQLite store (storage.TelemetryStore) is always there: the API's history comes
from it whatever else is configured. InfluxSink adds a time-series server over the InfluxDB
v2 write API (InfluxDB 2.x/3.x/1.8+, VictoriaMetrics):

- every sample becomes one line (lineprotocol.py), batched by size and by time;
- while the server answers, batches go straight to it;
- a 5xx, 429, timeout or refused connection sends the batch to the on-disk spool, and from then
  on new batches queue behind it, so the replay keeps the order; a replayer retries the oldest
  batch with back-off (or the server's Retry-After) until the spool is empty again;
- a 4xx data error is logged with the offending line and the batch dropped (counted): it
  would never be accepted, and retrying it forever would block everything behind it;
- a full spool drops its oldest batches (counted) and says so on the bus.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any, Protocol

from siren_gateway.config.site import SirenConfig
from siren_gateway.config.telemetry import InfluxConfig
from siren_gateway.live.bus import Bus, SampleReceived, SpoolOverflow, Subscription
from siren_gateway.model import utc_now
from siren_gateway.telemetry.influx import InfluxWriter, WriteDeferred, WriteRejected
from siren_gateway.telemetry.lineprotocol import LineEncoder
from siren_gateway.telemetry.spool import DiskSpool

log = logging.getLogger(__name__)


class TelemetrySink(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class Writer(Protocol):
    """What InfluxSink needs from a server: InfluxWriter, or a stand-in in tests."""

    async def write(self, lines: str) -> None: ...

    async def close(self) -> None: ...


def offending_line(body: str, lines: str) -> str:
    """The line a server complained about, if its message lets us find it."""
    match = re.search(r"line (\d+)", body)
    if match:
        rows = lines.split("\n")
        index = int(match.group(1)) - 1
        if 0 <= index < len(rows):
            return rows[index][:1000]
    return lines.split("\n", 1)[0][:1000]


BATCH_TASK, REPLAY_TASK = "influx batches", "influx replay"


class InfluxSink:
    name = "influx"

    def __init__(self, sirens: list[SirenConfig], bus: Bus, config: InfluxConfig, spool_dir: Path,
                 writer: Writer | None = None) -> None:
        self.config = config
        self.bus = bus
        self.encoder = LineEncoder(sirens, config.measurement, config.string_fields)
        self._writer = writer  # made in open(): influxdb-client binds to the running loop
        self.spool = DiskSpool(spool_dir, int(config.spool_max_mb * 1024 * 1024))
        self._subscription: Subscription = bus.subscribe(
            "influx-sink", maxsize=config.queue_size, kinds=(SampleReceived,))
        self._tasks: list[asyncio.Task[None]] = []
        self._spooled = asyncio.Event()
        self._running = False
        self._idle: set[str] = set()  # names of tasks that hold no data right now
        self._held: list[str] = []  # lines taken off the queue and not yet written or spooled
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._in_flight: dict[asyncio.Task[None], list[str]] = {}
        self.written_lines = 0
        self.written_batches = 0
        self.rejected_lines = 0
        self.replayed_lines = 0
        self.last_error: str | None = None
        self.last_write_at: float | None = None

    @property
    def writer(self) -> Writer:
        if self._writer is None:
            raise RuntimeError("InfluxSink.start() has not run")
        return self._writer

    async def start(self) -> None:
        if self._writer is None:
            config = self.config
            self._writer = InfluxWriter(config.url, config.token, config.org, config.bucket,
                                        config.timeout_s)
        await self.spool.open()
        if not self.spool.empty:
            log.info("telemetry spool holds %d lines from before the restart", self.spool.lines)
        self._running = True
        self._tasks = [asyncio.create_task(self._batch_forever(), name=BATCH_TASK),
                       asyncio.create_task(self._replay_forever(), name=REPLAY_TASK)]
        if not self.spool.empty:
            self._spooled.set()

    async def stop(self) -> None:
        """Stop without losing a line: what cannot be written now is spooled for next time.

        A task is cancelled only where it holds nothing (waiting for data or for the server);
        a batch being collected or written is allowed to finish, within the write timeout.
        """
        self._running = False
        grace = self.config.timeout_s + 2.0
        deadline = time.monotonic() + grace
        pending = {t for t in self._tasks if not t.done()}
        while pending:
            for task in pending:
                if task.get_name() in self._idle or time.monotonic() > deadline:
                    task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        writes = set(self._in_flight)
        if writes:  # let started writes finish (or spool themselves) within the grace
            _, late = await asyncio.wait(writes, timeout=max(0.0, deadline - time.monotonic()))
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        unsent = [line for lines in self._in_flight.values() for line in lines]
        self._in_flight.clear()
        held, self._held = self._held, []
        lines = unsent + held + self._drain(10**9)
        for start in range(0, len(lines), self.config.batch_size):
            chunk = lines[start:start + self.config.batch_size]
            # one last try at the server; what it cannot take is spooled for the next start
            await (self._spool(chunk) if not self.spool.empty else self._write(chunk))
        self._subscription.close()
        await self.writer.close()

    def _drain(self, limit: int) -> list[str]:
        queue = self._subscription.queue
        lines: list[str] = []
        encode = self.encoder.encode
        while len(lines) < limit and not queue.empty():
            event = queue.get_nowait()
            if isinstance(event, SampleReceived) and not event.mirrored:
                line = encode(event.sample)
                if line is not None:
                    lines.append(line)
        return lines

    async def _batch_forever(self) -> None:
        name = BATCH_TASK
        size, interval = self.config.batch_size, self.config.flush_interval_s
        while self._running:
            self._idle.add(name)
            first = await self._subscription.get()
            self._idle.discard(name)
            lines = self._held = self._drain(size - 1)
            if (isinstance(first, SampleReceived) and not first.mirrored
                    and (line := self.encoder.encode(first.sample))):
                lines.insert(0, line)
            deadline = time.monotonic() + interval
            while len(lines) < size and time.monotonic() < deadline and self._running:
                await asyncio.sleep(min(0.05, interval))
                lines += self._drain(size - len(lines))
            await self._deliver(lines)
            self._held = []

    async def _deliver(self, lines: list[str]) -> None:
        """Start writing a batch and return; at most max_in_flight writes run at once, so the
        next batch is encoded while the server digests this one."""
        if not lines:
            return
        if not self.spool.empty:  # the server is (or was just) away: keep the order
            await self._spool(lines)
            return
        await self._slots.acquire()
        task = asyncio.create_task(self._write(lines), name="influx write")
        self._in_flight[task] = lines
        task.add_done_callback(self._write_done)

    def _write_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            self._in_flight.pop(task, None)  # a cancelled write keeps its lines for stop()
        self._slots.release()

    async def _write(self, lines: list[str]) -> None:
        text = "\n".join(lines)
        try:
            await self.writer.write(text)
        except WriteRejected as exc:
            self._rejected(exc, text, len(lines))
        except WriteDeferred as exc:
            self.last_error = exc.reason
            log.warning("telemetry server unavailable (%s): spooling", exc.reason)
            await self._spool(lines)
        else:
            self._written(len(lines))

    def _written(self, count: int) -> None:
        self.written_lines += count
        self.written_batches += 1
        self.last_write_at = time.time()

    def _rejected(self, exc: WriteRejected, text: str, count: int) -> None:
        self.rejected_lines += count
        self.last_error = str(exc)
        log.error("telemetry server rejected %d lines (%s); dropped. Offending line: %s",
                  count, exc, offending_line(exc.body, text))

    async def _spool(self, lines: list[str]) -> None:
        dropped = await self.spool.append("\n".join(lines), len(lines))
        self._spooled.set()
        if dropped:
            log.error("telemetry spool full: dropped the %d oldest lines", dropped)
            self.bus.publish(SpoolOverflow("influx", dropped, self.spool.dropped_lines,
                                           utc_now()))

    async def _replay_forever(self) -> None:
        backoff = self.config.retry_initial_s
        idle = self._idle
        while self._running:
            batch = self.spool.oldest()
            if batch is None:
                self._spooled.clear()
                idle.add(REPLAY_TASK)
                await self._spooled.wait()
                idle.discard(REPLAY_TASK)
                continue
            try:
                text = await asyncio.to_thread(batch.read)
            except FileNotFoundError:
                await self.spool.remove(batch)  # dropped as the oldest while we read it
                continue
            try:
                await self.writer.write(text)
            except WriteRejected as exc:
                self._rejected(exc, text, batch.lines)
                await self.spool.remove(batch)
            except WriteDeferred as exc:
                self.last_error = exc.reason
                wait = exc.retry_after_s if exc.retry_after_s is not None else backoff
                backoff = min(self.config.retry_max_s, backoff * 2)
                idle.add(REPLAY_TASK)  # the batch stays spooled: safe to stop while waiting
                await asyncio.sleep(wait)
                idle.discard(REPLAY_TASK)
            except Exception:  # the replayer must outlive any surprise, or the spool never drains
                log.exception("telemetry replay failed; retrying")
                idle.add(REPLAY_TASK)
                await asyncio.sleep(backoff)
                idle.discard(REPLAY_TASK)
            else:
                await self.spool.remove(batch)
                self._written(batch.lines)
                self.replayed_lines += batch.lines
                backoff = self.config.retry_initial_s

    def stats(self) -> dict[str, Any]:
        return {
            "written_lines": self.written_lines,
            "written_batches": self.written_batches,
            "replayed_lines": self.replayed_lines,
            "rejected_lines": self.rejected_lines,
            "spool": {"batches": self.spool.batches, "lines": self.spool.lines,
                      "bytes": self.spool.bytes, "dropped_lines": self.spool.dropped_lines},
            "queued": self._subscription.queue.qsize(),
            "queue_dropped": self._subscription.dropped,
            "last_error": self.last_error,
        }
