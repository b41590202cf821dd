"""Poll throughput: the gateway against a bare pymodbus loop, same simulators, same registers.

    python -m bench.poll_throughput --sirens 1000 --interval 10 --duration 30
    python -m bench.poll_throughput --sirens 200 --interval 0.05 --duration 20   # saturation

A simulated fleet runs in separate processes. Then, one after the other and each in its own
process, (1) the real gateway (links, decoding, live state, bus, SQLite telemetry store) and
(2) a bare loop that only calls pymodbus's read_input_registers on the same schedule, poll the
fleet. Each child measures its own CPU time (getrusage) over the same window after warm-up.
The figure is the ratio of CPU seconds per 1,000 polls; the sustained poll rate is reported next
to the rate the schedule asks for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import cpu_seconds, gateway_figures, run_child, run_child_counted


async def measure(counter: Callable[[], tuple[int, int]], warmup_s: float, duration_s: float
                  ) -> dict[str, float]:
    """Sample a poll counter and this process's CPU over a window after warm-up."""
    await asyncio.sleep(warmup_s)
    (polls0, failed0), cpu0, wall0 = counter(), cpu_seconds(), time.monotonic()
    await asyncio.sleep(duration_s)
    (polls1, failed1), cpu1, wall1 = counter(), cpu_seconds(), time.monotonic()
    return {"polls": polls1 - polls0, "failed": failed1 - failed0, "cpu_s": cpu1 - cpu0,
            "wall_s": wall1 - wall0}


async def run_gateway(config: Path, warmup_s: float, duration_s: float) -> dict[str, float]:
    import logging

    from siren_gateway.config.loading import load_site
    from siren_gateway.gateway import Gateway

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    gateway = Gateway(load_site(config))
    await gateway.start()
    states = gateway.fleet.states.values()
    try:
        result = await measure(lambda: (sum(s.polls_ok for s in states),
                                        sum(s.polls_failed for s in states)), warmup_s, duration_s)
        return result | gateway_figures(gateway)
    finally:
        await gateway.stop()


async def run_bare(config: Path, warmup_s: float, duration_s: float) -> dict[str, float]:
    """The baseline: pymodbus clients reading the same block on the same schedule, nothing else."""
    import logging

    from pymodbus.client import AsyncModbusTcpClient
    from pymodbus.framer import FramerType

    from siren_gateway.config.links import ModbusRtuOverTcpLink, ModbusTcpLink, endpoint_key
    from siren_gateway.config.loading import load_site

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    site = load_site(config)
    block = site.modbus_profile(site.config.sirens[0].profile).blocks[0]
    clients: dict[str, AsyncModbusTcpClient] = {}
    locks: dict[str, asyncio.Lock] = {}
    counts = [0, 0]
    rng = random.Random(1)
    running = [True]

    async def poll_forever(siren_id: str, key: str, unit: int, interval: float) -> None:
        client, lock = clients[key], locks[key]
        await asyncio.sleep(rng.uniform(0, min(interval, 5.0)))
        loop = asyncio.get_running_loop()
        due = loop.time()
        first = True
        while running[0]:
            try:
                async with lock:
                    if not client.connected:
                        await client.connect()
                    response = await client.read_input_registers(
                        block.address, count=block.count, device_id=unit)
                counts[0 if not response.isError() else 1] += 1
            except Exception:
                counts[1] += 1
            if first:  # the same phase spreading as the gateway's poller
                due += rng.uniform(0, interval)
                first = False
            due = max(due + interval, loop.time())
            await asyncio.sleep(due - loop.time())

    tasks = []
    for siren in site.config.sirens:
        link = siren.link
        assert isinstance(link, ModbusTcpLink | ModbusRtuOverTcpLink)
        key = endpoint_key(link)
        if key not in clients:
            framer = FramerType.SOCKET if link.type == "modbus_tcp" else FramerType.RTU
            clients[key] = AsyncModbusTcpClient(link.host, port=link.port,
                                                framer=framer, timeout=link.timeout_s, retries=0,
                                                reconnect_delay=0)
            locks[key] = asyncio.Lock()
        tasks.append(asyncio.create_task(
            poll_forever(siren.id, key, link.unit_id, siren.poll_interval_s)))
    try:
        return await measure(lambda: (counts[0], counts[1]), warmup_s, duration_s)
    finally:
        # Python 3.11's wait_for inside pymodbus can swallow a cancel: flag, then cancel again.
        running[0] = False
        pending = set(tasks)
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        for client in clients.values():
            client.close()


def child(role: str, config: Path, warmup_s: float, duration_s: float) -> dict[str, float]:
    return run_child("bench.poll_throughput", ["--role", role, "--config", str(config),
                                               "--warmup", str(warmup_s), "--duration",
                                               str(duration_s)])


def counted(role: str, config: Path, warmup_s: float, duration_s: float) -> dict[str, float]:
    """The child under callgrind: its result with `instructions` in the window added."""
    result, instructions = run_child_counted(
        "bench.poll_throughput", ["--role", role, "--config", str(config), "--warmup",
                                  str(warmup_s), "--duration", str(duration_s)],
        warmup_s, duration_s)
    return result | {"instructions": float(instructions)}


def per_poll(result: dict[str, float]) -> float:
    return result["cpu_s"] / max(result["polls"], 1)


def report(name: str, r: dict[str, float], target_rate: float) -> str:
    rate = r["polls"] / r["wall_s"]
    per_k = 1000 * r["cpu_s"] / max(r["polls"], 1)
    return (f"  {name:<8} {rate:9.1f} polls/s ({100 * rate / target_rate:5.1f} % of schedule)  "
            f"failed {int(r['failed']):5d}  CPU {r['cpu_s']:6.2f} s = {100 * r['cpu_s'] / r['wall_s']:5.1f}"
            f" % of a core  {per_k:6.3f} CPU-s per 1,000 polls")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sirens", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=10.0, help="poll interval, seconds")
    parser.add_argument("--duration", type=float, default=30.0, help="measured window, seconds")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before measuring (default: 2 intervals + 5)")
    parser.add_argument("--units-per-line", type=int, default=1,
                        help="sirens per endpoint (>1: RS-485 lines, RTU over TCP)")
    parser.add_argument("--sim-processes", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1,
                        help="alternate gateway and bare runs N times; report medians")
    parser.add_argument("--store-every-poll", action="store_true",
                        help="store every sample in SQLite (default: the shipped thinning)")
    parser.add_argument("--pin", action="store_true",
                        help="simulators on the last CPU, the measured process on the others "
                             "(Linux): neither side shares a core with the load it measures")
    parser.add_argument("--callgrind", action="store_true",
                        help="also count each side's instructions per poll under valgrind's "
                             "callgrind (repeatable whatever the machine does; ~50x slower, "
                             "so for up to ~1,000 sirens at a 10 s interval)")
    parser.add_argument("--role", choices=["gateway", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Two intervals: the first polls come within 5 s, then each siren settles on its own phase.
    warmup = args.warmup if args.warmup is not None else 2 * args.interval + 5.0

    if args.role:
        runner = run_gateway if args.role == "gateway" else run_bare
        print(json.dumps(asyncio.run(runner(args.config, warmup, args.duration))), flush=True)
        return

    from simulators.launcher import start_fleet
    from simulators.sitegen import assign_free_ports, generate_site, write_site

    work = Path(tempfile.mkdtemp(prefix="bench-poll-"))
    site = assign_free_ports(generate_site(args.sirens, units_per_line=args.units_per_line,
                                           poll_interval_s=args.interval, timeout_s=2.0))
    site["storage"] = {"telemetry_min_interval_s": 0 if args.store_every_poll else 60}
    config = write_site(site, work / "site.yaml", database=work / "bench.db")
    print(f"{args.sirens} sirens ({args.units_per_line} per endpoint), poll every {args.interval} s, "
          f"{args.sim_processes} simulator processes, window {args.duration} s after {warmup} s")
    cpus = sorted(os.sched_getaffinity(0)) if args.pin else []
    if len(cpus) >= 2:  # the fleet inherits the last CPU, the children started later the rest
        os.sched_setaffinity(0, cpus[-1:])
        print(f"pinned: simulators on CPU {cpus[-1]}, measured processes on {cpus[:-1]}")
    fleets = [start_fleet(config, 0, (i + 1, args.sim_processes))
              for i in range(args.sim_processes)]
    if len(cpus) >= 2:
        os.sched_setaffinity(0, cpus[:-1])
    target = args.sirens / args.interval
    gateways, bares = [], []
    counts: list[dict[str, float]] = []
    try:
        for round_ in range(args.repeat):
            gateways.append(child("gateway", config, warmup, args.duration))
            bares.append(child("bare", config, warmup, args.duration))
            if args.repeat > 1:
                print(f"round {round_ + 1}: ratio {per_poll(gateways[-1]) / per_poll(bares[-1]):.2f}",
                      flush=True)
        if args.callgrind:  # one round is enough: the count repeats
            counts = [counted(role, config, max(warmup, 40.0), args.duration)
                      for role in ("gateway", "bare")]
    finally:
        for fleet in fleets:
            fleet.stop()
    gateway = sorted(gateways, key=per_poll)[len(gateways) // 2]  # the median run of each
    bare = sorted(bares, key=per_poll)[len(bares) // 2]
    print(f"schedule asks for {target:.1f} polls/s" + (f"; median of {args.repeat} runs each"
                                                        if args.repeat > 1 else ""))
    print(report("gateway", gateway, target))
    print(report("bare", bare, target))
    # Each round's gateway over the bare run beside it, then the median of those ratios.
    ratio = statistics.median(per_poll(g) / per_poll(b) for g, b in zip(gateways, bares, strict=True))
    print(f"  gateway online at end: {int(gateway['online'])}/{args.sirens}, samples stored: "
          f"{int(gateway['stored'])}, bus drops: {int(gateway['bus_dropped'])}")
    print(f"RATIO gateway/bare CPU per poll: {ratio:.2f}  (target <= 1.2)")
    print(f"RATIO gateway/bare poll rate: {gateway['polls'] / max(bare['polls'], 1):.3f}")
    if counts:
        per = [r["instructions"] / max(r["polls"], 1) for r in counts]
        rates = [r["polls"] / r["wall_s"] / target for r in counts]
        print(f"  callgrind: gateway {per[0] / 1000:.0f}k, bare {per[1] / 1000:.0f}k instructions "
              f"per poll (at {100 * rates[0]:.0f} % / {100 * rates[1]:.0f} % of the schedule "
              "under valgrind)")
        print(f"RATIO gateway/bare instructions per poll (callgrind): {per[0] / per[1]:.2f}")


if __name__ == "__main__":
    main()
