"""Simulated Modbus siren controllers served by pymodbus, registers computed from the physics.

One pymodbus server per endpoint: a single unit behind a TCP port (a controller with Ethernet) or
several units behind one port speaking RTU framing (an RS-485 line behind a serial device server).
pymodbus calls our `action` on every access; there we refresh the registers from the physics
model, carry out written commands and apply the injected communication faults.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.physics import SimulatedSiren
from siren_gateway.profiles.modbus import ModbusProfile, Table

log = logging.getLogger(__name__)

FC_READ_HOLDING, FC_READ_INPUT = 3, 4
GARBAGE = bytes.fromhex("dead beef 0bad f00d cafe 5a5a a5a5 ffff 0000 1234")


class SimulatedUnit:
    """One siren controller at one unit id, presenting a SimulatedSiren through a profile."""

    def __init__(self, siren: SimulatedSiren, profile: ModbusProfile, unit_id: int,
                 clock: Callable[[], float]) -> None:
        self.siren = siren
        self.profile = profile
        self.unit_id = unit_id
        self.clock = clock
        self.requests = 0
        self.endpoint: SimulatedEndpoint | None = None
        spec = profile.spec
        self.input_size = max([p.address + p.register_count for p in spec.points
                               if p.table == "input"] or [1])
        cmd = spec.commands
        self.holding_size = max([p.address + p.register_count for p in spec.points
                                 if p.table == "holding"] + [cmd.address + cmd.length])

    def sim_device(self) -> SimDevice:
        registers = functools.partial(SimData, datatype=DataType.REGISTERS, values=0)
        return SimDevice(
            id=self.unit_id,
            simdata=(
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],  # unused coils
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],  # unused inputs
                [registers(0, count=self.holding_size)],
                [registers(0, count=self.input_size)],
            ),
            action=self.action,
        )

    async def action(self, function_code: int, start_address: int, address: int, count: int,
                     current_registers: list[int], set_values: list[int] | list[bool] | None
                     ) -> ExcCodes | None:
        self.requests += 1
        comms = self.siren.comms
        if comms.drop_connection and self.endpoint is not None:
            self.endpoint.drop_connections()
            raise NoSuchIdException("connection dropped")
        if comms.no_response:
            raise NoSuchIdException("not answering")  # the server then sends nothing
        if comms.slow_s > 0:
            await asyncio.sleep(comms.slow_s)
        if comms.exception_code:
            return ExcCodes(comms.exception_code)
        if comms.garbage and self.endpoint is not None:
            self.endpoint.garble_next += 1
        now = self.clock()
        if set_values is not None:
            outcome = self._write(address, [int(v) for v in set_values], now)
            if comms.lost_reply:
                raise NoSuchIdException("write carried out, reply lost")
            return outcome
        if function_code in (FC_READ_INPUT, FC_READ_HOLDING):
            table: Table = "input" if function_code == FC_READ_INPUT else "holding"
            fresh = self.profile.encode_status(self.siren.status_values(now))[table]
            for addr, word in fresh.items():
                current_registers[addr - start_address] = word
        return None

    def _write(self, address: int, values: list[int], now: float) -> ExcCodes | None:
        block = self.profile.spec.commands
        if address != block.address or len(values) != block.length:
            return ExcCodes.ILLEGAL_ADDRESS  # only whole command blocks are writable
        command = self.profile.decode_command(values)
        if command is None or not self.siren.apply(command, now):
            return ExcCodes.ILLEGAL_VALUE
        return None


class SimulatedEndpoint:
    """One listening TCP port with one or more units behind it."""

    def __init__(self, host: str, port: int, framer: FramerType, units: list[SimulatedUnit]):
        self.host, self.port, self.framer, self.units = host, port, framer, units
        self.garble_next = 0
        self.server: ModbusTcpServer | None = None
        for unit in units:
            unit.endpoint = self

    async def _silent(self, *_args: Any) -> ExcCodes | None:
        raise NoSuchIdException("no such unit on this line")

    async def start(self) -> None:
        devices = [unit.sim_device() for unit in self.units]
        if all(unit.unit_id != 0 for unit in self.units):
            # pymodbus answers unknown unit ids through id 0; a real RS-485 line stays silent.
            devices.append(SimDevice(id=0, simdata=[SimData(0, count=1, datatype=DataType.INVALID)],
                                     action=self._silent))
        self.server = ModbusTcpServer(
            devices,
            framer=self.framer,
            address=(self.host, self.port),
            ignore_missing_devices=True,
            trace_packet=self._trace_packet,
        )
        await self.server.serve_forever(background=True)

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending and self.garble_next > 0:
            self.garble_next -= 1
            return (GARBAGE * (len(data) // len(GARBAGE) + 1))[: max(len(data), 8)]
        return data

    def drop_connections(self) -> None:
        if self.server is None:
            return
        for connection in list(self.server.active_connections.values()):
            connection.close()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()  # type: ignore[no-untyped-call]
            self.server = None
