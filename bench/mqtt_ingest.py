"""MQTT ingest: the gateway against a bare aiomqtt subscriber, same broker, same load.

    python -m bench.mqtt_ingest --mode fleet --sirens 2000 --interval 5 --duration 30
    python -m bench.mqtt_ingest --mode flood --sirens 2000 --rate 25000 --duration 10 --repeat 3

A private mosquitto runs on a free loopback port. Then, one after the other and each in its
own process, (1) the real gateway (validation at the edge, live state, bus, alerts, SQLite
telemetry store) and (2) a bare aiomqtt subscriber that only counts the same telemetry topics,
receive the load. Each child measures its own CPU time (getrusage) over the same window after
warm-up.

fleet: simulated MQTT controllers (one MQTT client each, in several processes) report every
       --interval seconds and on change: does the gateway keep up, at what share of a core?
flood: publisher processes write pre-encoded telemetry for --sirens devices at --rate msg/s
       over raw sockets (cheaper than any client library, so the subscriber is what limits):
       the sustained messages/s each side handles, and CPU per message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import REPO, cpu_seconds, gateway_figures, run_child
from simulators.fleet import raise_file_limit

PREFIX = "bench/sirens"


async def measure(counter: Callable[[], int], warmup_s: float, duration_s: float
                  ) -> dict[str, float]:
    await asyncio.sleep(warmup_s)
    n0, cpu0, wall0 = counter(), cpu_seconds(), time.monotonic()
    await asyncio.sleep(duration_s)
    n1, cpu1, wall1 = counter(), cpu_seconds(), time.monotonic()
    return {"messages": n1 - n0, "cpu_s": cpu1 - cpu0, "wall_s": wall1 - wall0}


async def run_gateway(config: Path, warmup_s: float, duration_s: float) -> dict[str, float]:
    from siren_gateway.config.loading import load_site
    from siren_gateway.gateway import Gateway

    gateway = Gateway(load_site(config))
    await gateway.start()
    try:
        hub = gateway.mqtt
        assert hub is not None
        result = await measure(lambda: hub.stats.messages, warmup_s, duration_s)
        result["accepted"] = hub.stats.telemetry
        result["rejected"] = sum(hub.stats.rejected_by_reason.values())
        result["dropped_queue_full"] = hub.stats.dropped_queue_full
        return result | gateway_figures(gateway)
    finally:
        await gateway.stop()


async def run_bare(port: int, warmup_s: float, duration_s: float) -> dict[str, float]:
    """The baseline: one aiomqtt client on the same subscription, counting what arrives."""
    import aiomqtt

    count = 0
    async with aiomqtt.Client("127.0.0.1", port, clean_session=True) as client:
        await client.subscribe(f"{PREFIX}/+/telemetry", qos=1)

        async def consume() -> None:
            nonlocal count
            async for _ in client.messages:
                count += 1

        consumer = asyncio.create_task(consume())
        try:
            return await measure(lambda: count, warmup_s, duration_s)
        finally:
            consumer.cancel()


# -- the flood publisher: MQTT 3.1.1 over a raw socket ---------------------------------------

def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    body = (struct.pack("!H", 4) + b"MQTT" + bytes([4, 0x02]) + struct.pack("!H", 60)
            + struct.pack("!H", len(cid)) + cid)
    return b"\x10" + _remaining_length(len(body)) + body


def _publish_packet(topic: bytes, payload: bytes) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + payload
    return b"\x30" + _remaining_length(len(body)) + body


def run_publisher(config: Path, port: int, rate: float, index: int, count: int) -> None:
    """Publish telemetry for this shard of the site's devices at `rate` msg/s until killed."""
    from simulators.physics import SimulatedSiren
    from siren_gateway.config.links import MqttLink
    from siren_gateway.config.loading import load_site
    from siren_gateway.profiles.mqtt import MqttProfile

    site = load_site(config)
    sirens = [s for i, s in enumerate(site.config.sirens) if i % count == index]
    profile = site.profiles[sirens[0].profile]
    assert isinstance(profile, MqttProfile)
    now = time.time()
    values = SimulatedSiren("x", site.signals, now).status_values(now)
    body = profile.encode_telemetry(values, now)
    head = b'{"ts":'
    assert body.startswith(head)
    rest = body[body.index(b",") :]  # everything after the timestamp
    topics = [profile.topics(PREFIX, s.link.device_id or s.id if isinstance(s.link, MqttLink)
                             else s.id).telemetry.encode() for s in sirens]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(_connect_packet(f"bench-pub-{index}"))
    sock.recv(4)  # CONNACK
    tick = 0.01
    per_tick = rate * tick
    sent, owed, i = 0, 0.0, 0
    next_tick = time.monotonic()
    while True:
        owed += per_tick
        batch = []
        ts = f"{time.time():.3f}".encode()
        while owed >= 1:
            batch.append(_publish_packet(topics[i % len(topics)], head + ts + rest))
            i += 1
            owed -= 1
        sock.sendall(b"".join(batch))
        sent += len(batch)
        next_tick += tick
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_tick = time.monotonic()  # cannot keep up: don't burst


# -- orchestration -----------------------------------------------------------------------------

def child(role: str, config: Path, port: int, warmup_s: float, duration_s: float
          ) -> dict[str, float]:
    return run_child("bench.mqtt_ingest", ["--role", role, "--config", str(config), "--port",
                                           str(port), "--warmup", str(warmup_s), "--duration",
                                           str(duration_s)])


def per_message(r: dict[str, float]) -> float:
    return r["cpu_s"] / max(r["messages"], 1)


def report(name: str, r: dict[str, float], offered: float) -> str:
    rate = r["messages"] / r["wall_s"]
    return (f"  {name:<8} {rate:9.1f} msg/s ({100 * rate / offered:5.1f} % of offered)  CPU "
            f"{r['cpu_s']:6.2f} s = {100 * r['cpu_s'] / r['wall_s']:5.1f} % of a core  "
            f"{1e6 * per_message(r):6.1f} CPU-us per message")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["fleet", "flood", "both"], default="both")
    parser.add_argument("--sirens", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=5.0, help="fleet: report interval, s")
    parser.add_argument("--rate", type=float, default=25000.0, help="flood: offered msg/s")
    parser.add_argument("--publishers", type=int, default=2, help="flood: publisher processes")
    parser.add_argument("--sim-processes", type=int, default=4, help="fleet: simulator processes")
    parser.add_argument("--duration", type=float, default=20.0, help="measured window, seconds")
    parser.add_argument("--warmup", type=float, default=None)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--role", choices=["gateway", "bare", "publisher"], help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--shard", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_file_limit()

    if args.role == "publisher":
        run_publisher(args.config, args.port, args.rate, args.shard, args.publishers)
        return
    if args.role:
        import logging
        logging.basicConfig(level=logging.ERROR)
        result = (asyncio.run(run_gateway(args.config, args.warmup, args.duration))
                  if args.role == "gateway" else
                  asyncio.run(run_bare(args.port, args.warmup, args.duration)))
        print(json.dumps(result), flush=True)
        return

    from simulators.broker import start_broker

    work = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    # Unbounded queues and connections: the bench measures the subscribers, not the broker.
    broker = start_broker(work, "mosquitto", extra_conf="max_queued_messages 0\n"
                          "max_connections -1\n")
    try:
        modes = ["fleet", "flood"] if args.mode == "both" else [args.mode]
        for mode in modes:
            run_mode(mode, args, work, broker.port)
    finally:
        broker.stop()


def run_mode(mode: str, args: argparse.Namespace, work: Path, port: int) -> None:
    from simulators.launcher import start_fleet
    from simulators.sitegen import generate_site, write_site

    site: dict[str, Any] = generate_site(
        args.sirens, mqtt_sirens=args.sirens, telemetry_interval_s=args.interval,
        mqtt_broker={"host": "127.0.0.1", "port": port, "topic_prefix": PREFIX})
    config = write_site(site, work / f"{mode}.yaml", database=work / f"{mode}.db")
    warmup = args.warmup if args.warmup is not None else (
        2 * args.interval + 5 if mode == "fleet" else 3.0)
    loads: list[Any] = []
    if mode == "fleet":
        offered = args.sirens / args.interval
        print(f"fleet: {args.sirens} simulated MQTT sirens reporting every {args.interval} s "
              f"({offered:.0f} msg/s), {args.sim_processes} simulator processes, window "
              f"{args.duration} s after {warmup} s", flush=True)
        loads = [start_fleet(config, 0, (i + 1, args.sim_processes))
                 for i in range(args.sim_processes)]
    else:
        offered = args.rate
        print(f"flood: {args.rate:.0f} msg/s offered for {args.sirens} devices by "
              f"{args.publishers} raw publishers, window {args.duration} s after {warmup} s",
              flush=True)
        loads = [subprocess.Popen(
            [sys.executable, "-m", "bench.mqtt_ingest", "--role", "publisher", "--config",
             str(config), "--port", str(port), "--rate", str(args.rate / args.publishers),
             "--shard", str(i), "--publishers", str(args.publishers)], cwd=REPO)
            for i in range(args.publishers)]
    gateways, bares = [], []
    try:
        for round_ in range(args.repeat):
            gateways.append(child("gateway", config, port, warmup, args.duration))
            bares.append(child("bare", config, port, min(warmup, 3.0), args.duration))
            if args.repeat > 1:
                g, b = gateways[-1], bares[-1]
                print(f"  round {round_ + 1}: rate ratio {g['messages'] / max(b['messages'], 1):.3f}"
                      f", CPU/message ratio {per_message(g) / per_message(b):.2f}", flush=True)
    finally:
        for load in loads:
            if isinstance(load, subprocess.Popen):
                load.terminate()
                load.wait(10)
            else:
                load.stop()
    gateway = sorted(gateways, key=lambda r: r["messages"])[len(gateways) // 2]
    bare = sorted(bares, key=lambda r: r["messages"])[len(bares) // 2]
    print(report("gateway", gateway, offered))
    print(report("bare", bare, offered))
    print(f"  gateway: accepted {int(gateway['accepted'])}, rejected {int(gateway['rejected'])}, "
          f"dropped (queue full) {int(gateway['dropped_queue_full'])}, online at end "
          f"{int(gateway['online'])}/{args.sirens}, stored {int(gateway['stored'])}, bus drops "
          f"{int(gateway['bus_dropped'])}")
    # The ratios are each round's gateway over the bare run beside it (same minute, same
    # machine state), and their median: steadier than a ratio of two separate medians.
    rates = [g["messages"] / max(b["messages"], 1) for g, b in zip(gateways, bares, strict=True)]
    costs = [per_message(g) / per_message(b) for g, b in zip(gateways, bares, strict=True)]
    saturated = bare["messages"] / bare["wall_s"] < 0.97 * offered
    print(f"RATIO {mode} gateway/bare messages per second: {statistics.median(rates):.3f}  "
          "(target >= 0.8)")
    print(f"RATIO {mode} gateway/bare CPU per message: {statistics.median(costs):.2f}  "
          "(target <= 1.3)" + ("  [the bare subscriber could not keep up: its CPU per message "
                               "is its saturated cost; compare at a rate both keep up with]"
                               if saturated else ""))
    if mode == "fleet":
        print(f"  gateway share of a core at {offered:.0f} msg/s: "
              f"{100 * gateway['cpu_s'] / gateway['wall_s']:.1f} %  (target < 50 %)")


if __name__ == "__main__":
    main()
