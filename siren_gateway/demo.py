"""`siren-gateway demo`: a simulated district, the gateway and its API, in one command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvicorn
import yaml

from simulators.broker import BrokerKind, BrokerProcess, start_broker
from simulators.launcher import FleetProcess, start_fleet
from simulators.sitegen import assign_free_ports, generate_site, write_site
from siren_gateway.api.app import create_app
from siren_gateway.config.loading import load_site
from siren_gateway.data import DEMO_CONFIG
from siren_gateway.gateway import Gateway
from siren_gateway.store.postgres import describe_url

log = logging.getLogger(__name__)
SIRENS_PER_SIMULATOR_PROCESS = 1000


def demo_site(sirens: int | None, base: Path) -> dict[str, Any]:
    """The demo district as a dict, or a generated district of `sirens` around the same centre
    (a fifth of them reporting over MQTT, like the base district)."""
    data = yaml.safe_load(base.read_text(encoding="utf-8"))
    if sirens is None:
        return dict(data)
    generated = generate_site(sirens, poll_interval_s=5.0 if sirens > 200 else 2.0,
                              zones=data["zones"], name=data["site"]["name"],
                              mqtt_sirens=sirens // 5, mqtt_broker=data.get("mqtt"),
                              telemetry_interval_s=5.0 if sirens > 200 else 2.0)
    generated["site"] = data["site"]
    generated["polling"] = data.get("polling", {})
    for section in ("storage", "users", "activation"):
        if section in data:
            generated[section] = data[section]
    return generated


def run_nodes(config: Path, port: int, nodes: int, secret: str, work: Path) -> None:
    """`siren-gateway run --node-id nodeK` on ports port..port+nodes-1, until Ctrl-C."""
    env = dict(os.environ, SIREN_CLUSTER_SECRET=secret, PYTHONUNBUFFERED="1")
    processes = []

    def terminated(*_: object) -> None:
        raise KeyboardInterrupt  # SIGTERM ends the nodes as Ctrl-C does

    signal.signal(signal.SIGTERM, terminated)
    try:
        for index in range(nodes):
            log_file = (work / f"node{index + 1}.log").open("ab")
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "siren_gateway", "run", "--config", str(config),
                 "--host", "127.0.0.1", "--port", str(port + index),
                 "--node-id", f"node{index + 1}"], stdout=log_file, stderr=log_file, env=env))
            log_file.close()
        print(f"  node logs:          {work}/node*.log", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while all(p.poll() is None for p in processes):
                time.sleep(0.5)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def run_demo(port: int, sim_port: int, sirens: int | None, data_dir: Path | None,
             influx: dict[str, object] | None = None, base: Path = DEMO_CONFIG,
             broker_kind: BrokerKind = "auto", nodes: int = 1,
             database_url: str | None = None) -> None:
    """Run until interrupted. The simulator processes are started and stopped outside the event
    loop, so an interrupt at any moment still ends them."""
    work = data_dir or Path(tempfile.mkdtemp(prefix="siren-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    # The API and simulator-control ports are the caller's, bound only later: a siren or the
    # broker given one of them by chance kept the demo from starting (seen in a CI run, where
    # the test had picked its two ports from the same range).
    reserved = {port + index for index in range(nodes)} | {sim_port}
    site_dict = assign_free_ports(demo_site(sirens, base), avoid=reserved)
    reserved |= {s["link"]["port"] for s in site_dict["sirens"] if "port" in s["link"]}
    if influx:
        site_dict["influx"] = influx
    broker: BrokerProcess | None = None
    fleets: list[FleetProcess] = []
    try:
        if "mqtt" in site_dict:
            # The demo brings its own broker on a free port; nothing needs to be installed.
            broker = start_broker(work, broker_kind, avoid=reserved)
            site_dict["mqtt"] = dict(site_dict["mqtt"]) | {"host": "127.0.0.1",
                                                           "port": broker.port}
        secret = secrets.token_urlsafe(24)
        if database_url:
            site_dict["database"] = {"url": database_url}
        config = write_site(site_dict, work / "demo-site.yaml", database=work / "demo.db")
        site = load_site(config)
        count = len(site.config.sirens)
        processes = max(1, min(os.cpu_count() or 1, -(-count // SIRENS_PER_SIMULATOR_PROCESS)))
        for index in range(processes):
            fleets.append(start_fleet(config, sim_port if index == 0 else 0,
                                      (index + 1, processes)))
        print(f"Siren Gateway demo: {count} simulated sirens ({site.config.site.name})")
        if nodes > 1:
            for index in range(nodes):
                print(f"  gateway node{index + 1}:      http://127.0.0.1:{port + index}/ "
                      f"({describe_url(database_url or '')})")
        else:
            print(f"  gateway API:        http://127.0.0.1:{port}/api/sirens")
            print(f"  API docs:           http://127.0.0.1:{port}/docs")
        print(f"  simulator control:  {fleets[0].control_url}/sirens"
              + (f" (+{processes - 1} more processes)" if processes > 1 else ""))
        if broker is not None:
            print(f"  MQTT broker:        127.0.0.1:{broker.port} ({broker.kind}, embedded)")
        print(f"  data and config:    {work}")
        if influx:
            print(f"  telemetry also to:  {influx['url']} (bucket {influx['bucket']})")
        print("Press Ctrl-C to stop.", flush=True)
        if nodes > 1:
            run_nodes(config, port, nodes, secret, work)
            return
        app = create_app(Gateway(site))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="warning"))
        # uvicorn re-raises the Ctrl-C it handled; by then the gateway has already stopped.
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(server.serve())
    finally:
        for fleet in fleets:
            fleet.stop()
        if broker is not None:
            broker.stop()
