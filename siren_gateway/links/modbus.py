"""Modbus links on pymodbus: one client per endpoint, requests serialised, commands first.

An endpoint is one connection: a controller's own TCP port, or a serial device server with an
RS-485 line of several controllers behind it. Modbus allows one request in flight per connection,
so each endpoint owns a priority queue drained by one worker task; a command waiting behind
polls goes to the front. Each request has a hard deadline, so one dead device costs at most its
timeout on a shared line and nothing at all on the others' connections.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.decoders import DecodePDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
)

from siren_gateway.config.links import ModbusRtuOverTcpLink, ModbusRtuSerialLink, ModbusTcpLink, endpoint_key
from siren_gateway.links.base import SirenLink
from siren_gateway.model import NUMBER_TYPES, Command, LinkError, Sample, utc_now
from siren_gateway.profiles.modbus import ModbusProfile, ReadBlock
from siren_gateway.runtime.process_stats import raise_descriptor_limit

log = logging.getLogger(__name__)

T = TypeVar("T")
ModbusLinkConfig = ModbusTcpLink | ModbusRtuOverTcpLink | ModbusRtuSerialLink
ModbusClient = AsyncModbusTcpClient | AsyncModbusSerialClient

COMMAND_PRIORITY = 0
POLL_PRIORITY = 1
# pymodbus drops a connection after a few unanswered requests by design; on a shared line that
# would cut off the healthy devices because of one dead one, so the endpoint decides instead.
_NEVER_DISCONNECT = 1 << 30


@dataclass(slots=True)
class EndpointStats:
    requests: int = 0
    failures: int = 0
    connects: int = 0
    connect_failures: int = 0
    rejected_queue_full: int = 0
    failures_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(order=True)
class _Job:
    priority: int
    order: int
    run: Callable[[ModbusClient], Awaitable[Any]] = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)


_PYMODBUS_LOG = logging.getLogger("pymodbus")


def _text_if_debugging(pdu: ModbusPDU) -> str:
    """pymodbus 3.16 formats every decoded response as text for a debug line (`str(pdu)` is
    an argument of Log.debug, so it is built whether or not debug is on): 22k instructions
    per poll saved, 5 % of the gateway's (bench/poll_throughput.py --callgrind). The full text
    is kept for when pymodbus debug logging is on."""
    return ModbusPDU.__str__(pdu) if _PYMODBUS_LOG.isEnabledFor(logging.DEBUG) else ""


class _QuietHoldingRegisters(ReadHoldingRegistersResponse):
    __str__ = _text_if_debugging


class _QuietInputRegisters(ReadInputRegistersResponse):
    __str__ = _text_if_debugging


# Register reads decode to the quiet classes; one table shared by every client (pymodbus's
# own register() would copy its table into each of thousands of clients).
_RESPONSE_TABLE: dict[int, tuple[type[ModbusPDU], type[ModbusPDU]]] = {
    **DecodePDU.pdu_table,
    3: (ReadHoldingRegistersRequest, _QuietHoldingRegisters),
    4: (ReadInputRegistersRequest, _QuietInputRegisters)}


def _make_client(link: ModbusLinkConfig, timeout_s: float) -> ModbusClient:
    # retries=0 and no automatic reconnect: timing and back-off are ours to decide.
    client: ModbusClient
    if isinstance(link, ModbusRtuSerialLink):
        client = AsyncModbusSerialClient(
            link.device, framer=FramerType.RTU, baudrate=link.baudrate, parity=link.parity,
            stopbits=link.stopbits, timeout=timeout_s, retries=0, reconnect_delay=0,
        )
    else:
        framer = FramerType.SOCKET if isinstance(link, ModbusTcpLink) else FramerType.RTU
        client = AsyncModbusTcpClient(
            link.host, port=link.port, framer=framer, timeout=timeout_s, retries=0,
            reconnect_delay=0,
        )
    client.ctx.framer.decoder.pdu_table = _RESPONSE_TABLE
    return client


class ModbusEndpoint:
    """One Modbus connection and the queue of requests waiting for it."""

    # Thousands of endpoints on a large site: slots save a dict on each.
    __slots__ = ("_busy", "_client", "_closed", "_connect_backoff_max_s", "_connect_backoff_s",
                 "_drainer", "_max_waiting", "_next_connect_at", "_order", "_waiting", "key",
                 "shared", "stats", "timeout_s")

    def __init__(self, link: ModbusLinkConfig, timeout_s: float, units: int,
                 connect_backoff_max_s: float = 30.0) -> None:
        self.key = endpoint_key(link)
        self.timeout_s = timeout_s
        self.shared = units > 1
        self.stats = EndpointStats()
        self._client = _make_client(link, timeout_s)
        self._client.set_max_no_responses(_NEVER_DISCONNECT)
        # A plain heap, not an asyncio.PriorityQueue: only put/get without waiting are needed,
        # and the queue's own futures and events cost ~1 KB on each of thousands of endpoints.
        self._waiting: list[_Job] = []
        self._max_waiting = 4 * units + 16
        self._order = itertools.count()
        self._drainer: asyncio.Task[None] | None = None
        self._busy = False  # a request is on the wire
        self._closed = False
        self._connect_backoff_max_s = connect_backoff_max_s
        self._connect_backoff_s = 0.0
        self._next_connect_at = 0.0

    async def submit(self, priority: int, run: Callable[[ModbusClient], Awaitable[T]]) -> T:
        """Run a request on this connection, in priority order; wait for its result.

        Uncontended (the usual case for a controller with its own connection) the request runs
        in the caller's task; otherwise it waits in the priority queue, where commands go ahead
        of polls, and the drainer task works through it. Raises LinkError.
        """
        if self._closed:
            raise LinkError("closed", self.key)
        if not self._busy and not self._waiting:
            self._busy = True
            try:
                return cast(T, await self._run_job(run))
            finally:
                self._busy = False
                self._start_drainer()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if len(self._waiting) >= self._max_waiting:
            self.stats.rejected_queue_full += 1
            raise LinkError("queue_full", self.key)
        heapq.heappush(self._waiting, _Job(priority, next(self._order), run, future))
        self._start_drainer()
        return await future

    def _start_drainer(self) -> None:
        if not self._waiting or self._busy or self._closed:
            return
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name=f"modbus {self.key}")

    async def _drain(self) -> None:
        try:
            while self._waiting and not self._busy:
                job = heapq.heappop(self._waiting)
                if job.future.done():  # the caller gave up (cancelled)
                    continue
                self._busy = True
                try:
                    result = await self._run_job(job.run)
                except LinkError as exc:
                    if not job.future.done():
                        job.future.set_exception(exc)
                else:
                    if not job.future.done():
                        job.future.set_result(result)
                finally:
                    self._busy = False
        finally:
            # Let go of the finished task: held, it is ~0.3 kB on every connection that
            # was ever contended, and an all-siren test contends a few more each time
            # (tracemalloc in a soak of 2,000 sirens: ~2,000 blocks, 0.3 MiB, after three).
            if self._drainer is asyncio.current_task():
                self._drainer = None

    async def _run_job(self, run: Callable[[ModbusClient], Awaitable[Any]]) -> Any:
        """Execute one request on the connection; every failure becomes a counted LinkError."""
        self.stats.requests += 1
        try:
            if not self._client.connected:
                await self._connect()
            # pymodbus bounds every request by the client's timeout (no second timer here: it
            # would cost a heap entry per poll); a request that hangs anyway shows as stale.
            return await run(self._client)
        except LinkError as exc:
            raise self._failed(exc) from None
        except TimeoutError:
            self._after_timeout()
            raise self._failed(LinkError("timeout", self.key)) from None
        except ModbusIOException as exc:
            if not self._client.connected:
                raise self._failed(LinkError("disconnected", "the device closed the connection")
                                   ) from None
            self._after_timeout()
            reason = "timeout" if "No response" in str(exc) else "protocol"
            raise self._failed(LinkError(reason, str(exc))) from None
        except (ConnectionException, OSError) as exc:
            self._client.close()
            raise self._failed(LinkError("disconnected", str(exc))) from None
        except ModbusException as exc:
            raise self._failed(LinkError("protocol", str(exc))) from None
        except Exception as exc:  # a bug or a library surprise must not kill the endpoint
            log.exception("unexpected error on %s", self.key)
            raise self._failed(LinkError("internal", repr(exc))) from exc

    def _failed(self, error: LinkError) -> LinkError:
        self.stats.failures += 1
        reasons = self.stats.failures_by_reason
        reasons[error.reason] = reasons.get(error.reason, 0) + 1
        return error

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_connect_at:
            raise LinkError("unreachable", f"{self.key}: waiting before reconnecting")
        self.stats.connects += 1
        try:
            async with asyncio.timeout(self.timeout_s + 1.0):
                ok = await self._client.connect()
        except (TimeoutError, OSError, ModbusException):
            ok = False
        if ok:
            self._connect_backoff_s = 0.0
            return
        self.stats.connect_failures += 1
        self._connect_backoff_s = min(self._connect_backoff_max_s,
                                      max(0.25, self._connect_backoff_s * 2))
        self._next_connect_at = loop.time() + self._connect_backoff_s
        self._client.close()
        raise LinkError("connect_failed", self.key)

    def _after_timeout(self) -> None:
        # A controller with its own connection that stops answering is usually wedged; a fresh
        # connection also discards any late reply. On a shared line the others still answer.
        if not self.shared:
            self._client.close()

    async def close(self) -> None:
        self._closed = True
        if self._drainer is not None:
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)
        while self._waiting:
            job = heapq.heappop(self._waiting)
            if not job.future.done():
                job.future.set_exception(LinkError("closed", self.key))
        self._client.close()


def _registers(response: Any, block: ReadBlock) -> list[int]:
    """The block's registers from a response, or a LinkError that says what was wrong (the
    text is only made then: this runs on every poll)."""
    if response.isError():
        raise LinkError("exception", f"{block.table} {block.address}: Modbus exception code "
                        f"{response.exception_code}")
    registers = getattr(response, "registers", None)
    if registers.__class__ is not list or len(registers) != block.count:
        got = len(registers) if isinstance(registers, list | tuple) else 0
        raise LinkError("malformed", f"{block.table} {block.address}: {got} registers, "
                        f"expected {block.count}")
    return registers


class ModbusSirenLink:
    """One siren controller: a unit id on an endpoint, spoken to through its profile."""

    polled = True
    # A Modbus write carries no id: sent twice, it is carried out twice.
    idempotent_resend = False
    __slots__ = ("endpoint", "profile", "sequence_readback", "siren_id", "unit_id")

    def __init__(self, siren_id: str, endpoint: ModbusEndpoint, unit_id: int,
                 profile: ModbusProfile) -> None:
        self.siren_id = siren_id
        self.endpoint = endpoint
        self.unit_id = unit_id
        self.profile = profile
        self.sequence_readback = profile.spec.sequence_readback is not False

    @property
    def timeout_s(self) -> float:
        return self.endpoint.timeout_s

    def progress(self, command_id: str) -> str | None:
        return None  # a Modbus controller only answers when asked

    async def _read_all(self, client: ModbusClient) -> list[list[int]]:
        blocks = []
        for block in self.profile.blocks:
            read = (client.read_input_registers if block.table == "input"
                    else client.read_holding_registers)
            response = await read(block.address, count=block.count, device_id=self.unit_id)
            blocks.append(_registers(response, block))
        return blocks

    async def poll(self) -> Sample:
        # All blocks of one poll go as one job, so a sample is never stitched from two moments.
        blocks = await self.endpoint.submit(POLL_PRIORITY, self._read_all)
        received_at = utc_now()
        try:
            values, faults = self.profile.decode_status(blocks)
        except (ValueError, IndexError, UnicodeError) as exc:
            raise LinkError("malformed", f"cannot decode: {exc}") from None
        clock = values.get("device_clock")
        device_time = None
        if isinstance(clock, NUMBER_TYPES) and clock.__class__ is not bool and clock > 0:
            device_time = datetime.fromtimestamp(clock, UTC)
        return Sample(self.siren_id, received_at, values, faults, device_time)

    async def send(self, command: Command) -> None:
        address, words = self.profile.encode_command(command)

        async def write(client: ModbusClient) -> None:
            response = await client.write_registers(address, words, device_id=self.unit_id)
            if response.isError():
                raise LinkError("rejected", f"Modbus exception code {response.exception_code}")

        await self.endpoint.submit(COMMAND_PRIORITY, write)


def build_modbus_links(
    sirens: list[tuple[str, ModbusLinkConfig, ModbusProfile]],
) -> tuple[dict[str, ModbusSirenLink], list[ModbusEndpoint]]:
    """Group sirens by endpoint and give each its link; returns links by siren id, endpoints."""
    grouped: dict[str, list[tuple[str, ModbusLinkConfig, ModbusProfile]]] = {}
    for entry in sirens:
        grouped.setdefault(endpoint_key(entry[1]), []).append(entry)
    links: dict[str, ModbusSirenLink] = {}
    endpoints: list[ModbusEndpoint] = []
    for members in grouped.values():
        timeout_s = max(link.timeout_s for _, link, _ in members)
        endpoint = ModbusEndpoint(members[0][1], timeout_s, units=len(members))
        endpoints.append(endpoint)
        for siren_id, link, profile in members:
            links[siren_id] = ModbusSirenLink(siren_id, endpoint, link.unit_id, profile)
    return links, endpoints


class ModbusLinks:
    """The site's Modbus sirens as one long-lived part: their links are made at start (pymodbus
    binds a client to the running loop) and put into the shared registry; stop closes every
    endpoint and takes the links out again."""

    def __init__(self, sirens: list[tuple[str, ModbusLinkConfig, ModbusProfile]],
                 registry: dict[str, SirenLink],
                 wrap: Callable[[SirenLink], SirenLink] | None = None) -> None:
        self._sirens = sirens
        self._registry = registry
        self._wrap = wrap  # (a cluster node's ClusterLink, cluster/remote.py)
        self.endpoints: list[ModbusEndpoint] = []

    async def start(self) -> None:
        links, self.endpoints = build_modbus_links(self._sirens)
        wrap = self._wrap
        self._registry.update(links if wrap is None else
                              {siren: wrap(link) for siren, link in links.items()})
        # One socket per endpoint, plus the database, the broker, the API's clients.
        needed = len(self.endpoints) + 512
        if raise_descriptor_limit(needed) < needed:
            log.warning("open-file limit is below the %d this site needs (%d Modbus "
                        "endpoints): raise it (ulimit -n, LimitNOFILE=)", needed,
                        len(self.endpoints))

    async def stop(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.close()
        for siren_id, _link, _profile in self._sirens:
            self._registry.pop(siren_id, None)
