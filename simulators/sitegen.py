"""Build site files for simulated fleets: scaled-up districts and free loopback ports."""

from __future__ import annotations

import math
import os
import random
import socket
from collections.abc import Collection
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from siren_gateway.data import DEFAULT_PROFILES_DIR

PROFILE = "generic_siren_controller"
MQTT_PROFILE = "generic_mqtt_siren"


def _ephemeral_low(default: int = 32768) -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii")
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return default


def free_ports(count: int, host: str = "127.0.0.1", avoid: Collection[int] = ()) -> list[int]:
    """Ports free right now on `host`, all distinct, none of them in `avoid` (ports chosen
    already but not yet bound by whoever will listen on them).

    They are taken from below the kernel's ephemeral range: ports the kernel hands to outgoing
    connections (thousands of them, with a large simulated fleet) can never collide with them.
    Under pytest-xdist each worker (and what it starts) takes its own slice of that range: a
    port found free and then bound a moment later by another worker's simulator was a clash.
    """
    if count == 0:
        return []
    low, high = 10000, _ephemeral_low() - 1
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get(
        "PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and workers.isdigit():
        size = (high - low) // int(workers)
        low += size * (int(worker[2:]) % int(workers))
        high = low + size
    candidates = random.sample(range(low, high), k=min(high - low, count * 4 + 64))
    ports: list[int] = []
    with ExitStack() as stack:
        for port in candidates:
            if port in avoid:
                continue
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind((host, port))
            except OSError:
                continue
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"could not find {count} free ports on {host} between {low} and {high}")


def generate_site(
    sirens: int,
    units_per_line: int = 1,
    poll_interval_s: float = 2.0,
    timeout_s: float = 1.0,
    center: tuple[float, float] = (32.06, 118.82),
    zones: list[dict[str, str]] | None = None,
    name: str = "Simulated district",
    mqtt_sirens: int = 0,
    mqtt_broker: dict[str, Any] | None = None,
    telemetry_interval_s: float | None = None,
) -> dict[str, Any]:
    """A site of `sirens` controllers on a spiral around `center`.

    With units_per_line > 1, controllers share RS-485 lines behind serial device servers
    (Modbus RTU over TCP), `units_per_line` unit ids per port; otherwise each has its own port.
    The last `mqtt_sirens` of them report over MQTT to `mqtt_broker` (the site's `mqtt` section)
    every `telemetry_interval_s` instead. Ports are placeholders: call assign_free_ports.
    """
    zones = zones or [{"id": f"zone-{i + 1}", "name": f"Zone {i + 1}"} for i in range(6)]
    entries = []
    for i in range(sirens):
        angle, radius = i * 2.399963, 0.004 * math.sqrt(i + 1)  # golden-angle spiral
        profile = PROFILE
        if i >= sirens - mqtt_sirens:
            profile = MQTT_PROFILE
            link: dict[str, Any] = {"type": "mqtt"}
            if telemetry_interval_s is not None:
                link["telemetry_interval_s"] = telemetry_interval_s
        elif units_per_line > 1:
            link = {"type": "modbus_rtu_over_tcp", "host": "127.0.0.1",
                    "port": 1 + i // units_per_line, "unit_id": 1 + i % units_per_line,
                    "timeout_s": timeout_s}
        else:
            link = {"type": "modbus_tcp", "host": "127.0.0.1", "port": 1 + i, "unit_id": 1,
                    "timeout_s": timeout_s}
        entries.append({
            "id": f"s{i + 1:05d}",
            "name": f"Siren {i + 1}",
            "location": {"lat": round(center[0] + radius * math.sin(angle), 5),
                         "lon": round(center[1] + radius * math.cos(angle), 5)},
            "zones": [zones[i % len(zones)]["id"]],
            "profile": profile,
            "link": link,
            "poll_interval_s": poll_interval_s,
        })
    site: dict[str, Any] = {"site": {"name": name, "timezone": "Asia/Shanghai"}, "zones": zones,
                            "sirens": entries}
    if mqtt_sirens:
        site["mqtt"] = dict(mqtt_broker or {"host": "127.0.0.1", "port": 1883})
    return site


def assign_free_ports(site: dict[str, Any], host: str = "127.0.0.1",
                      avoid: Collection[int] = ()) -> dict[str, Any]:
    """Move every TCP endpoint of the site to a free port, keeping which sirens share one."""
    old_ports = sorted({(s["link"]["type"], s["link"]["port"]) for s in site["sirens"]
                        if "port" in s["link"]})
    mapping = dict(zip(old_ports, free_ports(len(old_ports), host, avoid), strict=True))
    for siren in site["sirens"]:
        link = siren["link"]
        if "port" in link:
            link["port"] = mapping[(link["type"], link["port"])]
            link["host"] = host
    return site


def write_site(site: dict[str, Any], path: Path, database: Path | None = None,
               profiles_dir: Path = DEFAULT_PROFILES_DIR) -> Path:
    """Write a site file that works from any folder (absolute profile and database paths)."""
    site = dict(site)
    site["profiles_dir"] = str(profiles_dir)
    if database is not None:
        site["storage"] = dict(site.get("storage", {})) | {"path": str(database)}
    path.write_text(yaml.safe_dump(site, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path
