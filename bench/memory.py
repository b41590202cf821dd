"""Memory at fleet size: the gateway process's resident memory with thousands of sirens.

    python -m bench.memory                                  # the record: 5,000 Modbus + 1,000 MQTT
    python -m bench.memory --modbus 500 --mqtt 100 --settle 20   # a quick look

A real `siren-gateway run` process (API, links, live state, alerts, coverage, SQLite store)
polls simulated Modbus TCP controllers (each on its own port: one connection per siren, the
costliest case) and receives simulated MQTT controllers through a private mosquitto. Once
every siren is online and a few intervals more have passed, its RSS is sampled from /proc.
A second, small site (--base-modbus / --base-mqtt sirens) run the same way gives the fixed
cost, so the difference divided by the sirens added is the memory each siren costs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import parse_metrics
from simulators.launcher import FleetProcess, start_fleet
from simulators.processes import GatewayProcess, Mosquitto
from simulators.sitegen import assign_free_ports, generate_site, write_site

MiB = 1024 * 1024


def measure_site(work: Path, broker: Mosquitto, modbus: int, mqtt: int, interval_s: float,
                 settle_s: float, sim_processes: int, online_within_s: float) -> dict[str, Any]:
    """Run simulators and a gateway for one site; RSS once all are online and settled."""
    total = modbus + mqtt
    site = generate_site(total, poll_interval_s=interval_s, timeout_s=2.0, mqtt_sirens=mqtt,
                         telemetry_interval_s=interval_s,
                         mqtt_broker={"host": "127.0.0.1", "port": broker.port,
                                      "topic_prefix": f"mem{total}"})
    assign_free_ports(site)
    path = write_site(site, work / f"site-{total}.yaml", database=work / f"gateway-{total}.db")
    fleets: list[FleetProcess] = []
    gateway: GatewayProcess | None = None
    try:
        processes = max(1, min(sim_processes, total // 200 or 1))
        fleets = [start_fleet(path, 0, (i + 1, processes), timeout_s=300)
                  for i in range(processes)]
        # Its port is chosen only now: chosen earlier, it could be one that the site's
        # simulators were about to listen on (one in five at 5,000 ports).
        gateway = GatewayProcess(path, work / f"gateway-{total}.log")
        gateway.start()
        assert gateway.process is not None
        process = psutil.Process(gateway.process.pid)
        started = time.monotonic()
        figures: dict[str, float] = {}
        with httpx.Client(base_url=gateway.url, timeout=10) as http:
            while True:
                if gateway.process.poll() is not None:
                    tail = gateway.log_path.read_text(errors="replace")[-3000:] \
                        if gateway.log_path and gateway.log_path.exists() else ""
                    raise SystemExit(f"the gateway exited; its log ends:\n{tail}")
                try:
                    figures = parse_metrics(http.get("/metrics").text)
                except httpx.HTTPError:
                    figures = {}
                online = figures.get('siren_gateway_sirens{reachability="online"}', 0)
                if online >= total:
                    break
                if time.monotonic() - started > online_within_s:
                    raise SystemExit(f"only {online:.0f}/{total} sirens online after "
                                     f"{online_within_s:.0f} s")
                time.sleep(1.0)
            all_online_s = time.monotonic() - started
            samples = []
            settle_until = time.monotonic() + settle_s
            while True:
                samples.append(process.memory_info().rss)
                if time.monotonic() >= settle_until:
                    break
                time.sleep(min(5.0, max(0.0, settle_until - time.monotonic())))
            figures = parse_metrics(http.get("/metrics").text)
        return {"sirens": total, "modbus": modbus, "mqtt": mqtt, "all_online_s": all_online_s,
                "rss_bytes": samples[-1], "rss_peak_bytes": max(samples),
                "fds": process.num_fds(),
                "tasks": figures.get("siren_gateway_asyncio_tasks", 0.0),
                "online": figures.get('siren_gateway_sirens{reachability="online"}', 0.0)}
    finally:
        if gateway is not None:
            gateway.stop()
        for fleet in fleets:
            fleet.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modbus", type=int, default=5000)
    parser.add_argument("--mqtt", type=int, default=1000)
    parser.add_argument("--base-modbus", type=int, default=50)
    parser.add_argument("--base-mqtt", type=int, default=10)
    parser.add_argument("--interval", type=float, default=10.0,
                        help="poll and report interval, seconds")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="seconds to keep running after every siren is online")
    parser.add_argument("--sim-processes", type=int, default=4)
    parser.add_argument("--target-mb", type=float, default=150.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work)
        broker.start()
        try:
            runs = []
            for modbus, mqtt in ((args.base_modbus, args.base_mqtt), (args.modbus, args.mqtt)):
                result = measure_site(work, broker, modbus, mqtt, args.interval, args.settle,
                                      args.sim_processes, online_within_s=120 + 0.05 * modbus)
                runs.append(result)
                print(f"  {modbus:5d} Modbus + {mqtt:4d} MQTT: all online in "
                      f"{result['all_online_s']:5.1f} s; RSS {result['rss_bytes'] / MiB:6.1f} MiB "
                      f"(peak {result['rss_peak_bytes'] / MiB:6.1f}), {result['fds']} fds, "
                      f"{result['tasks']:.0f} tasks", flush=True)
        finally:
            broker.stop()
    base, full = runs
    per_siren = (full["rss_bytes"] - base["rss_bytes"]) / max(1, full["sirens"] - base["sirens"])
    rss_mb = full["rss_bytes"] / 1e6
    print(f"RATIO gateway RSS MB at {full['modbus']} Modbus + {full['mqtt']} MQTT: {rss_mb:.1f}"
          f"  (target < {args.target_mb:.0f})")
    print(f"RATIO bytes per siren: {per_siren:.0f}")
    print(json.dumps({"rss_bytes": full["rss_bytes"], "per_siren_bytes": per_siren,
                      "base": base, "full": full}))
    return 0 if rss_mb < args.target_mb else 1


if __name__ == "__main__":
    sys.exit(main())
