"""Fleet launcher: runs the sirens of a site file as simulated controllers, with a control API.

    python -m simulators.fleet --config siren_gateway/data/demo.yaml --control-port 8081 [--shard 1/4]

The control API (HTTP on 127.0.0.1) reports each simulated siren's physical truth and injects
faults, so tests and benchmarks can compare what the gateway believes with what is real.
When ready it prints one line `READY {json}` on stdout, for the process that started it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict
from pymodbus.framer import FramerType

from simulators.modbus_sim import SimulatedEndpoint, SimulatedUnit
from simulators.mqtt_sim import SimulatedMqttSiren
from simulators.physics import SimulatedSiren
from siren_gateway.config.links import ModbusRtuOverTcpLink, ModbusTcpLink, MqttLink, endpoint_key
from siren_gateway.config.loading import load_site
from siren_gateway.config.site import SirenConfig, Site
from siren_gateway.live.fleet import reporting_interval
from siren_gateway.profiles.mqtt import MqttProfile

log = logging.getLogger("simulators.fleet")


class SimulatorFleet:
    """Every simulated siren of a site (or a shard of it) with its protocol endpoints."""

    def __init__(self, site: Site, shard: tuple[int, int] = (1, 1),
                 clock: Callable[[], float] = time.time) -> None:
        self.site = site
        self.clock = clock
        self.sirens: dict[str, SimulatedSiren] = {}
        self.units: dict[str, SimulatedUnit] = {}
        self.endpoints: list[SimulatedEndpoint] = []
        self.skipped: list[str] = []
        index, count = shard
        by_endpoint: dict[str, list[SimulatedUnit]] = defaultdict(list)
        links: dict[str, ModbusTcpLink | ModbusRtuOverTcpLink] = {}
        self.mqtt: dict[str, SimulatedMqttSiren] = {}
        keys = sorted({endpoint_key(s.link) for s in site.config.sirens
                       if not isinstance(s.link, MqttLink)})
        mine = {k for i, k in enumerate(keys) if i % count == index - 1}
        now = clock()
        mqtt_index = 0
        for siren_cfg in site.config.sirens:
            link = siren_cfg.link
            if isinstance(link, MqttLink):
                # MQTT controllers are independent clients: dealt round-robin over the shards.
                mqtt_index += 1
                if (mqtt_index - 1) % count == index - 1:
                    self._add_mqtt(siren_cfg, link, now)
                continue
            key = endpoint_key(link)
            if key not in mine:
                continue
            if not isinstance(link, ModbusTcpLink | ModbusRtuOverTcpLink):
                self.skipped.append(siren_cfg.id)  # a local serial port cannot be simulated here
                continue
            siren = SimulatedSiren(siren_cfg.id, site.signals, now)
            unit = SimulatedUnit(siren, site.modbus_profile(siren_cfg.profile), link.unit_id, clock)
            self.sirens[siren_cfg.id] = siren
            self.units[siren_cfg.id] = unit
            by_endpoint[key].append(unit)
            links[key] = link
        for key, units in by_endpoint.items():
            link = links[key]
            framer = FramerType.SOCKET if link.type == "modbus_tcp" else FramerType.RTU
            self.endpoints.append(SimulatedEndpoint(link.host, link.port, framer, units))

    def _add_mqtt(self, siren_cfg: SirenConfig, link: MqttLink, now: float) -> None:
        broker = self.site.config.mqtt
        profile = self.site.profiles[siren_cfg.profile]
        assert broker is not None and isinstance(profile, MqttProfile)  # load_site checked both
        siren = SimulatedSiren(siren_cfg.id, self.site.signals, now)
        self.sirens[siren_cfg.id] = siren
        self.mqtt[siren_cfg.id] = SimulatedMqttSiren(
            siren, profile, link.device_id or siren_cfg.id, broker,
            reporting_interval(self.site.profiles, siren_cfg), self.clock)

    async def start(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.start()
        for device in self.mqtt.values():
            device.start()

    async def wait_mqtt_connected(self, within_s: float) -> int:
        """How many MQTT controllers are connected, once all are or the time is up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while loop.time() < deadline:  # polled once, at start-up
            if all(d.connected for d in self.mqtt.values()):
                break
            await asyncio.sleep(0.05)
        return sum(d.connected for d in self.mqtt.values())

    async def stop(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.stop()
        for device in self.mqtt.values():
            await device.stop()

    def siren(self, siren_id: str) -> SimulatedSiren:
        try:
            return self.sirens[siren_id]
        except KeyError:
            raise HTTPException(404, f"no simulated siren {siren_id!r}") from None


class FaultRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    active: bool = True
    amplifier: int | None = None
    delay_s: float | None = None
    code: int | None = None
    signal: str | None = None


class ClockRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    offset_s: float = 0.0
    drift_ppm: float = 0.0


class BatteryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voltage: float


def create_control_app(fleet: SimulatorFleet) -> FastAPI:
    app = FastAPI(title="Siren simulator control")

    @app.get("/sirens")
    def list_truth() -> list[dict[str, Any]]:
        now = fleet.clock()
        return [siren.truth(now) for siren in fleet.sirens.values()]

    @app.get("/sirens/{siren_id}")
    def get_truth(siren_id: str) -> dict[str, Any]:
        return fleet.siren(siren_id).truth(fleet.clock())

    @app.post("/sirens/{siren_id}/faults/{fault}")
    def inject(siren_id: str, fault: str, request: FaultRequest) -> dict[str, Any]:
        siren = fleet.siren(siren_id)
        options = request.model_dump(exclude_none=True, exclude={"active"})
        try:
            siren.inject(fault, request.active, fleet.clock(), **options)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        return siren.truth(fleet.clock())

    @app.post("/sirens/{siren_id}/clock")
    def set_clock(siren_id: str, request: ClockRequest) -> dict[str, Any]:
        siren = fleet.siren(siren_id)
        siren.set_clock_error(request.offset_s, request.drift_ppm, fleet.clock())
        return siren.truth(fleet.clock())

    @app.post("/sirens/{siren_id}/battery")
    def set_battery(siren_id: str, request: BatteryRequest) -> dict[str, Any]:
        siren = fleet.siren(siren_id)
        siren.set_battery(request.voltage, fleet.clock())
        return siren.truth(fleet.clock())

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        return {
            "sirens": len(fleet.sirens),
            "endpoints": len(fleet.endpoints),
            "requests": {sid: unit.requests for sid, unit in fleet.units.items()},
            "total_requests": sum(unit.requests for unit in fleet.units.values()),
            "mqtt": {sid: {"connected": d.connected} | asdict(d.stats)
                     for sid, d in fleet.mqtt.items()},
        }

    return app


def raise_file_limit() -> None:
    """Thousands of simulated endpoints need thousands of sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(config: Path, host: str, control_port: int, shard: tuple[int, int]) -> None:
    raise_file_limit()
    site = load_site(config)
    fleet = SimulatorFleet(site, shard)
    await fleet.start()
    mqtt_connected = await fleet.wait_mqtt_connected(30.0) if fleet.mqtt else 0
    server = uvicorn.Server(uvicorn.Config(create_control_app(fleet), host=host,
                                           port=control_port, log_level="warning",
                                           lifespan="off"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            await fleet.stop()
            raise SystemExit(f"control API could not listen on {host}:{control_port}")
        await asyncio.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else control_port
    print("READY " + json.dumps({"pid": os.getpid(), "control_url": f"http://{host}:{bound}",
                                 "sirens": len(fleet.sirens), "endpoints": len(fleet.endpoints),
                                 "mqtt": len(fleet.mqtt), "mqtt_connected": mqtt_connected,
                                 "skipped": fleet.skipped}), flush=True)
    try:
        await serving
    finally:
        await fleet.stop()


def parse_shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    i, n = int(index), int(count or 1)
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError("shard is I/N with 1 <= I <= N")
    return i, n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulators.fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="control API address")
    parser.add_argument("--control-port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument("--shard", type=parse_shard, default=(1, 1),
                        help="run only endpoints I of N (to spread a large fleet over processes)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # injected faults are expected
    logging.getLogger("simulators.mqtt_sim").setLevel(logging.CRITICAL)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.config, args.host, args.control_port, args.shard))


if __name__ == "__main__":
    main()
