"""All-call fan-out: one activation to every simulated siren, measured against the truth.

    python -m bench.activation_fanout --sirens 1000

Simulators run in separate processes; the gateway runs here. Reports the time until every
siren accepted its command and until every siren confirmed sounding (p50 / p99 / max), the onset
spread measured from the simulators' own record of when each horn started, and, as the
baseline, the round trip of a single command to a single siren.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from simulators.launcher import start_fleet
from simulators.sitegen import assign_free_ports, generate_site, write_site
from siren_gateway.activation.model import ActivationRequest, Status, Targets
from siren_gateway.config.loading import load_site
from siren_gateway.gateway import Gateway
from siren_gateway.model import Command, CommandKind
from siren_gateway.security.auth import Principal, Role


def percentiles(values: list[float]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (f"p50 {1000 * statistics.median(ordered):7.1f} ms  p99 {1000 * p99:7.1f} ms  "
            f"max {1000 * ordered[-1]:7.1f} ms")


async def run(sirens: int, processes: int, lead_s: float, skewed: int) -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    work = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    site_dict = assign_free_ports(generate_site(sirens, poll_interval_s=10.0, timeout_s=2.0))
    site_dict["activation"] = {"sync_lead_s": lead_s, "confirm_timeout_s": 20,
                               "confirm_poll_interval_s": 0.5}
    config = write_site(site_dict, work / "site.yaml", database=work / "bench.db")
    fleets = [await asyncio.to_thread(start_fleet, config, 0, (i + 1, processes))
              for i in range(processes)]
    gateway = Gateway(load_site(config))
    skewed_ids = {f"s{i:05d}" for i in range(1, sirens + 1, max(1, sirens // skewed))} if skewed else set()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            for fleet in fleets:  # clocks 20 s off: the gateway must start these itself
                for truth in (await http.get(f"{fleet.control_url}/sirens")).json():
                    if truth["siren_id"] in skewed_ids:
                        await http.post(f"{fleet.control_url}/sirens/{truth['siren_id']}/clock",
                                        json={"offset_s": 20.0})
        await gateway.start()
        deadline = time.monotonic() + 60
        # observing state owned by the gateway; a short poll is the honest way to watch it
        while gateway.fleet.counts()["online"] < sirens and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        print(f"{sirens} sirens online: {gateway.fleet.counts()['online']}; "
              f"{processes} simulator processes; start lead {lead_s} s; "
              f"{len(skewed_ids)} with clocks 20 s off")
        link = gateway.links["s00001"]
        round_trips = []
        for _ in range(50):
            t0 = time.perf_counter()
            await link.send(Command(CommandKind.ARM))
            round_trips.append(time.perf_counter() - t0)
        print(f"baseline: one command to one siren:  {percentiles(round_trips)}")

        who = Principal("bench", Role.OPERATOR)
        t0 = time.time()
        activation = await gateway.activations.activate(
            who, ActivationRequest(Targets(all=True), "test", "sound", "growl_test"))
        while activation.state == "running":  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        results = list(activation.results.values())
        accepted = [r.accepted_at - t0 for r in results
                    if r.accepted_at and not r.started_by_gateway]
        at_start = [r.accepted_at - activation.start_at for r in results
                    if r.accepted_at and r.started_by_gateway]
        confirmed = [r.confirmed_at - activation.start_at for r in results if r.confirmed_at]
        counts = activation.counts()
        print(f"accepted, sent at once:    {percentiles(accepted)}   "
              f"({len(accepted)} sirens, from the request)")
        if at_start:
            print(f"accepted, sent at start:   {percentiles(at_start)}   "
                  f"({len(at_start)} sirens with bad clocks, from the planned start)")
        print(f"confirmed after the start: {percentiles(confirmed)}   "
              f"({counts[Status.SOUNDED]} sounded, {counts[Status.FAILED]} failed, "
              f"{counts[Status.NO_FEEDBACK]} no feedback)")
        onsets: list[float] = []
        gateway_started: list[float] = []
        async with httpx.AsyncClient(timeout=30) as http:
            for fleet in fleets:
                for truth in (await http.get(f"{fleet.control_url}/sirens")).json():
                    starts = [o["started_at"] for o in truth["onsets"]]
                    (gateway_started if truth["siren_id"] in skewed_ids else onsets).extend(starts)
        flagged = sum(r.started_by_gateway for r in results)
        for name, group in (("on their own clocks", onsets),
                            (f"started by the gateway ({flagged} flagged)", gateway_started)):
            if group:
                print(f"onset spread, {name}, {len(group)} horns (simulators' truth): "
                      f"{1000 * (max(group) - min(group)):.1f} ms; onsets "
                      f"{1000 * (min(group) - activation.start_at):+.1f} to "
                      f"{1000 * (max(group) - activation.start_at):+.1f} ms from the planned start")
        onsets += gateway_started
        worst_accept = max(accepted) if accepted else float("nan")
        print(f"RATIO all-accepted / single round trip: "
              f"{worst_accept / statistics.median(round_trips):.1f}")
        print(f"TARGETS all accepted within 1 s: {'met' if worst_accept < 1 else 'MISSED'}; "
              f"onset spread < 100 ms (all {len(onsets)} horns): "
              f"{'met' if onsets and max(onsets) - min(onsets) < 0.1 else 'MISSED'}")
    finally:
        await gateway.stop()
        for fleet in fleets:
            await asyncio.to_thread(fleet.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sirens", type=int, default=1000)
    parser.add_argument("--sim-processes", type=int, default=2)
    parser.add_argument("--lead", type=float, default=2.0, help="start-time lead, seconds")
    parser.add_argument("--skewed", type=int, default=50,
                        help="sirens whose clock is 20 s off (started by the gateway)")
    args = parser.parse_args()
    asyncio.run(run(args.sirens, args.sim_processes, args.lead, args.skewed))


if __name__ == "__main__":
    main()
